//! The device configuration file (`/etc/petrel/device.toml` by default).
//!
//! ```toml
//! state_dir = "/var/lib/petrel"
//! profile = "/etc/petrel/profile.toml"
//! utc_offset = "system"
//!
//! [repository]
//! metadata_url = "https://updates.example.com/metadata"
//! targets_url = "https://updates.example.com/targets"
//! assign_bin_digits = 2
//!
//! [inventory]
//! dir = "/opt/petrel/apps"
//!
//! [hooks]
//! on_apply = ["/usr/libexec/petrel-on-apply"]
//!
//! [health]
//! command = ["/usr/libexec/petrel-health"]
//! timeout_secs = 60
//!
//! [poll]
//! interval = "1h"
//! jitter = "6m"
//!
//! [inhibit]
//! files = ["/run/vending-in-progress"]
//! command = ["/usr/libexec/battery-above-30"]
//!
//! [deltas]
//! mode = "mmap"        # or "streaming" (no memory maps: raw flash, no MMU)
//! max_share = 0.9      # a delta above this share of the full artifact is not used
//! ```
//!
//! Relative paths are relative to the directory of the configuration file, and so are
//! the programs of commands named by a relative path (`hooks/on-apply`); a bare program
//! name is looked up on `PATH`. Every configured program must exist when the file is
//! loaded.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::AgentError;
use super::inventory::InventorySource;
use crate::manifest::{DEFAULT_BIN_DIGITS, MAX_BIN_DIGITS};

/// The default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/petrel/device.toml";
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/petrel";
/// The default time limit of one hook run (`hooks.timeout_secs`).
pub const DEFAULT_HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// The default poll interval of `petrel run` (`poll.interval`).
pub const DEFAULT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
/// The largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The parsed, validated configuration. Paths are absolute or relative to the working
/// directory (relative paths in the file are resolved against the file's directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Where the file was read from.
    pub path: PathBuf,
    /// The repository.
    pub repository: RepositoryConfig,
    /// The state directory (trusted metadata, consent log, state file, staging).
    pub state_dir: PathBuf,
    /// The device profile (TOML, [`crate::decide::DeviceProfile`] without `inventory`).
    pub profile: PathBuf,
    /// Where the installed inventory is read from.
    pub inventory: InventorySource,
    /// Where the device's UTC offset comes from.
    pub utc_offset: UtcOffsetSource,
    /// The installer for a command inventory (`inventory.install_command`): run with the
    /// staged plan's path as its last argument.
    pub install_command: Option<Vec<String>>,
    /// Restores the previous set for a command inventory after a failed health check
    /// (`inventory.rollback_command`): run with the staged plan's path as its last argument
    /// and `PETREL_ROLLBACK=1`.
    pub rollback_command: Option<Vec<String>>,
    /// The per-application hook run after an apply (`hooks.on_apply`).
    pub on_apply: Option<Vec<String>>,
    /// Time limit of one hook or installer run (`hooks.timeout_secs`).
    pub hook_timeout: std::time::Duration,
    /// Where signed reports are sent (`report_url`); without it they wait in the outbox.
    pub report_url: Option<String>,
    /// The health check run after an apply (`[health]`); without one, a completed apply
    /// whose hooks succeeded counts as healthy.
    pub health: Option<HealthConfig>,
    /// How `petrel run` polls (`[poll]`).
    pub poll: PollConfig,
    /// Device-side preconditions checked before downloading and before installing
    /// (`[inhibit]`).
    pub inhibit: InhibitConfig,
    /// Marks the running system good after a command install that needed a reboot passed
    /// its health check (`inventory.confirm_command`, e.g. `rauc status mark-good`).
    pub confirm_command: Option<Vec<String>>,
    /// The two system image slots and their bootloader (`[slots]`), if the device has them.
    pub slots: Option<SlotsConfig>,
    /// How the device reboots into a new system (`[reboot]`).
    pub reboot: RebootConfig,
    /// How deltas are applied and when they are used (`[deltas]`).
    pub deltas: DeltaConfig,
}

/// The two system image slots (`[slots]`, see `docs/images.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotsConfig {
    /// The application id the slots hold (group applications with `install_type = "slot"`).
    pub app: String,
    /// Slot A: a block device or a file.
    pub a: PathBuf,
    /// Slot B.
    pub b: PathBuf,
    /// The bootloader adapter.
    pub bootloader: BootloaderConfig,
    /// Boot tries a new slot gets before the bootloader falls back (`attempts`, default 3).
    pub attempts: u32,
    /// Where the booted slot is read (`cmdline`, default `/proc/cmdline`): `petrel.slot=A`
    /// or `rauc.slot=A`.
    pub cmdline: PathBuf,
    /// The version of a slot Petrel has no record of (a factory image), read from this file
    /// of the running system (`version_file`).
    pub version_file: Option<PathBuf>,
    /// Where an image is downloaded to (`staging`).
    pub staging: SlotStaging,
}

/// Where a system image is downloaded to (`slots.staging`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlotStaging {
    /// Into the staging directory when it has room, else straight into the inactive slot
    /// (`auto`, the default).
    #[default]
    Auto,
    /// Always straight into the inactive slot (`slot`): no second copy, but a download
    /// that is interrupted starts over and deltas are not used.
    Slot,
    /// Always into the staging directory (`file`): resumable, deltas used; needs room for
    /// the whole image.
    File,
}

/// A bootloader adapter (`slots.bootloader`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootloaderConfig {
    /// U-Boot's environment through `fw_printenv` / `fw_setenv`, with RAUC's variables
    /// (`BOOT_ORDER`, `BOOT_<slot>_LEFT`).
    Uboot {
        /// `slots.uboot.printenv`.
        printenv: String,
        /// `slots.uboot.setenv`.
        setenv: String,
    },
    /// GRUB's environment block through `grub-editenv`, with RAUC's variables (`ORDER`,
    /// `<slot>_OK`, `<slot>_TRY`).
    Grub {
        /// `slots.grub.editenv`.
        editenv: String,
        /// `slots.grub.env_file`.
        env_file: PathBuf,
    },
    /// The board's own commands (`[slots.command]`), each given the slot name.
    Command {
        /// Prints the booted slot (`A` or `B`).
        get_active: Option<Vec<String>>,
        /// `… SLOT ATTEMPTS`: boot SLOT next, with ATTEMPTS tries.
        set_next: Vec<String>,
        /// `… SLOT`: the running slot is good.
        mark_good: Vec<String>,
        /// `… SLOT`: never boot SLOT again (until it is written anew).
        mark_bad: Vec<String>,
    },
    /// A JSON state file standing in for the bootloader (simulators and tests).
    File {
        /// `slots.file.path`.
        path: PathBuf,
    },
}

/// How the device reboots (`[reboot]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebootConfig {
    /// The command (`command`, default `systemctl reboot`).
    pub command: Vec<String>,
    /// A file whose content changes at every boot (`boot_id_file`, default
    /// `/proc/sys/kernel/random/boot_id`): how the agent tells "not rebooted yet" from "the
    /// new system did not come up".
    pub boot_id_file: PathBuf,
}

impl Default for RebootConfig {
    fn default() -> Self {
        RebootConfig {
            command: vec!["systemctl".into(), "reboot".into()],
            boot_id_file: PathBuf::from("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// The health check (`[health]`): after an apply and its `on_apply` hooks, the previous
/// set is kept until `command` exits 0; if it fails every try or times out, the previous
/// set is restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Time limit of one try (`timeout_secs`, default 60).
    pub timeout: std::time::Duration,
    /// Further tries after a failed one (`retries`, default 0).
    pub retries: u32,
    /// Pause between tries (`interval_secs`, default 5).
    pub interval: std::time::Duration,
}

/// How deltas are applied and when they are used (`[deltas]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeltaConfig {
    /// `mode`: memory-mapped (default) or streaming; both keep the delta's memory under
    /// [`crate::delta::APPLY_MEMORY`].
    pub mode: crate::delta::ApplyMode,
    /// `max_share`: a delta longer than this share of the full artifact is skipped and the
    /// artifact downloaded instead (default 0.9: the delta must save a tenth).
    pub max_share: f64,
}

// `max_share` is checked to be a finite share when the file is read.
impl Eq for DeltaConfig {}

/// The default [`DeltaConfig::max_share`].
pub const DEFAULT_MAX_DELTA_SHARE: f64 = 0.9;

impl Default for DeltaConfig {
    fn default() -> Self {
        DeltaConfig {
            mode: crate::delta::ApplyMode::Mmap,
            max_share: DEFAULT_MAX_DELTA_SHARE,
        }
    }
}

/// How the resident agent polls (`[poll]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollConfig {
    /// Time between two polls of `timestamp.json` (`interval`, default 1 h).
    pub interval: std::time::Duration,
    /// Random extra delay added to each sleep, at most this much (`jitter`, default 10 %
    /// of the interval), so a fleet does not poll in lockstep.
    pub jitter: std::time::Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval: DEFAULT_POLL_INTERVAL,
            jitter: DEFAULT_POLL_INTERVAL / 10,
        }
    }
}

/// Device-side preconditions (`[inhibit]`): while any holds, the agent neither downloads
/// nor installs ("waiting for the device").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InhibitConfig {
    /// Files whose presence means "wait" (`files`).
    pub files: Vec<PathBuf>,
    /// A command whose non-zero exit means "wait" (`command`); the first line it writes on
    /// standard error is the reason shown.
    pub command: Option<Vec<String>>,
    /// Time limit of the command (`timeout_secs`, default 10); a command that does not
    /// finish in time counts as "wait".
    pub timeout: std::time::Duration,
}

impl InhibitConfig {
    /// Whether anything is configured.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.command.is_none()
    }
}

/// Where the repository is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Base URL of the metadata (`…/metadata`): `http://`, `https://` or `file://`.
    pub metadata_url: String,
    /// Base URL of the targets (`…/targets`).
    pub targets_url: String,
    /// Hex digits of the assignment bin names (1–6); must match the repository.
    #[serde(default = "default_digits")]
    pub assign_bin_digits: usize,
    /// Extra CA certificates (PEM) trusted for `https://`.
    #[serde(default)]
    pub extra_ca: Option<PathBuf>,
}

fn default_digits() -> usize {
    DEFAULT_BIN_DIGITS
}

/// Where the device's UTC offset (for download and apply windows) comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UtcOffsetSource {
    /// `utc_offset_minutes` in the profile (default).
    #[default]
    Profile,
    /// The system's local time zone, read at each run (follows daylight saving time).
    System,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    repository: RepositoryConfig,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    profile: PathBuf,
    inventory: RawInventory,
    #[serde(default)]
    utc_offset: UtcOffsetSource,
    #[serde(default)]
    hooks: RawHooks,
    #[serde(default)]
    report_url: Option<String>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    poll: RawPoll,
    #[serde(default)]
    inhibit: RawInhibit,
    #[serde(default)]
    slots: Option<RawSlots>,
    #[serde(default)]
    reboot: Option<RawReboot>,
    #[serde(default)]
    deltas: RawDeltas,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeltas {
    #[serde(default)]
    mode: Option<crate::delta::ApplyMode>,
    #[serde(default)]
    max_share: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlots {
    app: String,
    a: PathBuf,
    b: PathBuf,
    bootloader: String,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    cmdline: Option<PathBuf>,
    #[serde(default)]
    version_file: Option<PathBuf>,
    #[serde(default)]
    staging: Option<String>,
    #[serde(default)]
    uboot: Option<RawUboot>,
    #[serde(default)]
    grub: Option<RawGrub>,
    #[serde(default)]
    command: Option<RawSlotCommands>,
    #[serde(default)]
    file: Option<RawSlotFile>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUboot {
    #[serde(default)]
    printenv: Option<String>,
    #[serde(default)]
    setenv: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrub {
    #[serde(default)]
    editenv: Option<String>,
    #[serde(default)]
    env_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlotCommands {
    #[serde(default)]
    get_active: Option<Vec<String>>,
    set_next: Vec<String>,
    mark_good: Vec<String>,
    mark_bad: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlotFile {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReboot {
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    boot_id_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    command: Vec<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    interval_secs: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    #[serde(default)]
    interval: Option<RawDuration>,
    #[serde(default)]
    jitter: Option<RawDuration>,
}

/// A duration in the configuration: seconds as a number, or text like `30s`, `15m`, `1h`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(u64),
    Text(String),
}

impl RawDuration {
    fn parse(&self, field: &str) -> Result<std::time::Duration, String> {
        match self {
            RawDuration::Secs(s) if *s <= 366 * 86400 => Ok(std::time::Duration::from_secs(*s)),
            RawDuration::Secs(s) => Err(format!("{field}: {s} s is more than a year")),
            RawDuration::Text(t) => parse_duration(t).map_err(|e| format!("{field}: {e}")),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInhibit {
    #[serde(default)]
    files: Vec<PathBuf>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// Parses a duration like `30s`, `15m`, `1h`, `2d` or `1h30m` (at most a year).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration like 30s, 15m, 1h, 2d or 1h30m");
    let mut total = 0u64;
    let mut num = String::new();
    for ch in text.trim().chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() || total == 0 || total > 366 * 86400 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    install_command: Option<Vec<String>>,
    #[serde(default)]
    rollback_command: Option<Vec<String>>,
    #[serde(default)]
    confirm_command: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    #[serde(default)]
    on_apply: Option<Vec<String>>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// The most a hook may be given (`hooks.timeout_secs`).
const MAX_HOOK_TIMEOUT_SECS: u64 = 24 * 3600;

impl AgentConfig {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let err = |reason: String| AgentError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                "not found (give another file with --config or PETREL_CONFIG)".to_string()
            } else {
                e.to_string()
            })
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(err(format!(
                "{} bytes is more than the {MAX_CONFIG_BYTES}-byte limit",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let config = AgentConfig::parse(&text, path, base)?;
        let missing = config.missing_programs();
        if !missing.is_empty() {
            return Err(err(missing.join("; ")));
        }
        Ok(config)
    }

    /// The configured commands by key, as they will be run (programs resolved).
    fn commands(&self) -> Vec<(&'static str, &[String])> {
        let mut out: Vec<(&'static str, &[String])> = Vec::new();
        if let InventorySource::Command(c) = &self.inventory {
            out.push(("inventory.command", c));
        }
        for (key, argv) in [
            ("inventory.install_command", &self.install_command),
            ("inventory.rollback_command", &self.rollback_command),
            ("inventory.confirm_command", &self.confirm_command),
            ("hooks.on_apply", &self.on_apply),
            ("inhibit.command", &self.inhibit.command),
        ] {
            if let Some(a) = argv {
                out.push((key, a));
            }
        }
        if let Some(h) = &self.health {
            out.push(("health.command", &h.command));
        }
        if self.reboot.command != RebootConfig::default().command {
            out.push(("reboot.command", &self.reboot.command));
        }
        out
    }

    /// One problem per configured command whose program does not exist or cannot be
    /// run: a program named by a path must be an executable file; a bare name must be
    /// found on `PATH`. Checked when the file is loaded, so a mistyped hook is reported
    /// before an install depends on it.
    pub fn missing_programs(&self) -> Vec<String> {
        self.commands()
            .into_iter()
            .filter_map(|(key, argv)| {
                let program = argv.first()?;
                program_problem(program).map(|reason| format!("{key}: {reason}"))
            })
            .collect()
    }

    /// Resolves the program of every configured command that is named by a relative path
    /// (`hooks/on-apply`, `./check`) against `base`; bare names (`systemctl`) are left to
    /// `PATH`, absolute paths as they are.
    fn resolve_programs(&mut self, base: &Path) {
        let fix = |argv: &mut Vec<String>| {
            if let Some(p) = argv.first_mut() {
                if p.contains('/') && !Path::new(p.as_str()).is_absolute() {
                    *p = base.join(p.as_str()).to_string_lossy().into_owned();
                }
            }
        };
        if let InventorySource::Command(c) = &mut self.inventory {
            fix(c);
        }
        for argv in [
            &mut self.install_command,
            &mut self.rollback_command,
            &mut self.confirm_command,
            &mut self.on_apply,
            &mut self.inhibit.command,
        ]
        .into_iter()
        .flatten()
        {
            fix(argv);
        }
        if let Some(h) = &mut self.health {
            fix(&mut h.command);
        }
        fix(&mut self.reboot.command);
    }

    /// Parses configuration text; relative paths are resolved against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<AgentConfig, AgentError> {
        let err = |reason: String| AgentError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut problems = Vec::new();
        for (field, url) in [
            ("repository.metadata_url", &raw.repository.metadata_url),
            ("repository.targets_url", &raw.repository.targets_url),
        ] {
            let lower = url.to_ascii_lowercase();
            if !["http://", "https://", "file://"]
                .iter()
                .any(|s| lower.starts_with(s))
            {
                problems.push(format!(
                    "{field}: {url:?} is not an http://, https:// or file:// URL"
                ));
            }
        }
        let digits = raw.repository.assign_bin_digits;
        if !(1..=MAX_BIN_DIGITS).contains(&digits) {
            problems.push(format!(
                "repository.assign_bin_digits: {digits} is not in 1..={MAX_BIN_DIGITS}"
            ));
        }
        for (field, argv) in [
            ("inventory.install_command", &raw.inventory.install_command),
            (
                "inventory.rollback_command",
                &raw.inventory.rollback_command,
            ),
            ("hooks.on_apply", &raw.hooks.on_apply),
            ("inventory.confirm_command", &raw.inventory.confirm_command),
        ] {
            if argv
                .as_ref()
                .is_some_and(|a| a.is_empty() || a[0].is_empty())
            {
                problems.push(format!("{field}: must name a program"));
            }
        }
        if raw.inventory.rollback_command.is_some() && raw.inventory.install_command.is_none() {
            problems.push("inventory.rollback_command: only with inventory.install_command".into());
        }
        if raw.inventory.install_command.is_some() && raw.inventory.dir.is_some() {
            problems.push(
                "inventory.install_command: only with inventory.command; with inventory.dir the agent installs itself"
                    .into(),
            );
        }
        let timeout = raw
            .hooks
            .timeout_secs
            .unwrap_or(DEFAULT_HOOK_TIMEOUT.as_secs());
        if !(1..=MAX_HOOK_TIMEOUT_SECS).contains(&timeout) {
            problems.push(format!(
                "hooks.timeout_secs: {timeout} is not in 1..={MAX_HOOK_TIMEOUT_SECS}"
            ));
        }
        if let Some(u) = &raw.report_url {
            let lower = u.to_ascii_lowercase();
            if !lower.starts_with("http://") && !lower.starts_with("https://") {
                problems.push(format!(
                    "report_url: {u:?} is not an http:// or https:// URL"
                ));
            }
        }
        let health = match raw.health {
            None => None,
            Some(h) => {
                if h.command.is_empty() || h.command[0].is_empty() {
                    problems.push("health.command: must name a program".into());
                }
                let t = h.timeout_secs.unwrap_or(60);
                if !(1..=MAX_HOOK_TIMEOUT_SECS).contains(&t) {
                    problems.push(format!(
                        "health.timeout_secs: {t} is not in 1..={MAX_HOOK_TIMEOUT_SECS}"
                    ));
                }
                let retries = h.retries.unwrap_or(0);
                if retries > 100 {
                    problems.push(format!("health.retries: {retries} is more than 100"));
                }
                let i = h.interval_secs.unwrap_or(5);
                if i > 3600 {
                    problems.push(format!("health.interval_secs: {i} is more than 3600"));
                }
                Some(HealthConfig {
                    command: h.command,
                    timeout: std::time::Duration::from_secs(t),
                    retries,
                    interval: std::time::Duration::from_secs(i),
                })
            }
        };
        let mut deltas = DeltaConfig::default();
        if let Some(m) = raw.deltas.mode {
            deltas.mode = m;
        }
        match raw.deltas.max_share {
            Some(x) if x > 0.0 && x <= 1.0 => deltas.max_share = x,
            Some(x) => problems.push(format!(
                "deltas.max_share: {x} is not a share above 0 and at most 1 (e.g. 0.9)"
            )),
            None => {}
        }
        let mut poll = PollConfig::default();
        match raw.poll.interval.as_ref().map(|d| d.parse("poll.interval")) {
            Some(Ok(d)) if d >= std::time::Duration::from_secs(1) => {
                poll.interval = d;
                poll.jitter = d / 10;
            }
            Some(Ok(_)) => problems.push("poll.interval: must be at least 1 s".into()),
            Some(Err(e)) => problems.push(e),
            None => {}
        }
        match raw.poll.jitter.as_ref().map(|d| d.parse("poll.jitter")) {
            Some(Ok(d)) if d <= poll.interval => poll.jitter = d,
            Some(Ok(_)) => problems.push("poll.jitter: must not exceed poll.interval".into()),
            Some(Err(e)) => problems.push(e),
            None => {}
        }
        if raw
            .inhibit
            .command
            .as_ref()
            .is_some_and(|a| a.is_empty() || a[0].is_empty())
        {
            problems.push("inhibit.command: must name a program".into());
        }
        let it = raw.inhibit.timeout_secs.unwrap_or(10);
        if !(1..=3600).contains(&it) {
            problems.push(format!("inhibit.timeout_secs: {it} is not in 1..=3600"));
        }
        let inhibit = InhibitConfig {
            files: raw.inhibit.files.iter().map(|f| resolve(base, f)).collect(),
            command: raw.inhibit.command,
            timeout: std::time::Duration::from_secs(it),
        };
        let inventory = match (raw.inventory.dir, raw.inventory.command) {
            (Some(d), None) => Some(InventorySource::Dir(resolve(base, &d))),
            (None, Some(c)) if !c.is_empty() && !c[0].is_empty() => {
                Some(InventorySource::Command(c))
            }
            (None, Some(_)) => {
                problems.push("inventory.command: must name a program".into());
                None
            }
            (Some(_), Some(_)) => {
                problems.push("inventory: give either dir or command, not both".into());
                None
            }
            (None, None) => {
                problems.push(
                    "inventory: give dir (one directory per installed application) or command (prints the inventory as JSON)"
                        .into(),
                );
                None
            }
        };
        if raw.inventory.confirm_command.is_some() && raw.inventory.install_command.is_none() {
            problems.push("inventory.confirm_command: only with inventory.install_command".into());
        }
        let slots = raw.slots.and_then(|s| parse_slots(s, base, &mut problems));
        let mut reboot = RebootConfig::default();
        if let Some(r) = raw.reboot {
            if let Some(c) = r.command {
                if c.is_empty() || c[0].is_empty() {
                    problems.push("reboot.command: must name a program".into());
                }
                reboot.command = c;
            }
            if let Some(f) = r.boot_id_file {
                reboot.boot_id_file = resolve(base, &f);
            }
        }
        if !problems.is_empty() {
            return Err(err(problems.join("; ")));
        }
        let mut repository = raw.repository;
        repository.extra_ca = repository.extra_ca.map(|p| resolve(base, &p));
        let mut config = AgentConfig {
            path: path.to_path_buf(),
            repository,
            state_dir: resolve(
                base,
                &raw.state_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            ),
            profile: resolve(base, &raw.profile),
            inventory: inventory.expect("checked above"),
            utc_offset: raw.utc_offset,
            install_command: raw.inventory.install_command,
            rollback_command: raw.inventory.rollback_command,
            on_apply: raw.hooks.on_apply,
            hook_timeout: std::time::Duration::from_secs(timeout),
            report_url: raw.report_url,
            health,
            poll,
            inhibit,
            confirm_command: raw.inventory.confirm_command,
            slots,
            reboot,
            deltas,
        };
        config.resolve_programs(base);
        Ok(config)
    }
}

/// The most boot tries a new slot may be given (`slots.attempts`): one digit, because
/// U-Boot scripts count with `setexpr`, which reads numbers as hexadecimal.
const MAX_BOOT_ATTEMPTS: u32 = 9;

fn parse_slots(s: RawSlots, base: &Path, problems: &mut Vec<String>) -> Option<SlotsConfig> {
    let start = problems.len();
    if let Err(e) = crate::manifest::check_id(&s.app) {
        problems.push(format!(
            "slots.app: {:?} is not an application id: {e}",
            s.app
        ));
    }
    let (a, b) = (resolve(base, &s.a), resolve(base, &s.b));
    if a == b {
        problems.push(format!(
            "slots.a and slots.b are the same ({}); give the two partitions",
            a.display()
        ));
    }
    let attempts = s.attempts.unwrap_or(3);
    if !(1..=MAX_BOOT_ATTEMPTS).contains(&attempts) {
        problems.push(format!(
            "slots.attempts: {attempts} is not in 1..={MAX_BOOT_ATTEMPTS}"
        ));
    }
    let program = |field: &str, argv: &[String], problems: &mut Vec<String>| {
        if argv.is_empty() || argv[0].is_empty() {
            problems.push(format!("{field}: must name a program"));
        }
    };
    let others = [
        ("uboot", s.uboot.is_some()),
        ("grub", s.grub.is_some()),
        ("command", s.command.is_some()),
        ("file", s.file.is_some()),
    ];
    for (name, given) in others {
        if given && name != s.bootloader {
            problems.push(format!(
                "[slots.{name}] is given but slots.bootloader is {:?}; remove it or set bootloader = {name:?}",
                s.bootloader
            ));
        }
    }
    let bootloader = match s.bootloader.as_str() {
        "uboot" => {
            let u = s.uboot.unwrap_or_default();
            Some(BootloaderConfig::Uboot {
                printenv: u.printenv.unwrap_or_else(|| "fw_printenv".into()),
                setenv: u.setenv.unwrap_or_else(|| "fw_setenv".into()),
            })
        }
        "grub" => {
            let g = s.grub.unwrap_or_default();
            Some(BootloaderConfig::Grub {
                editenv: g.editenv.unwrap_or_else(|| "grub-editenv".into()),
                env_file: resolve(
                    base,
                    &g.env_file
                        .unwrap_or_else(|| PathBuf::from("/boot/grub/grubenv")),
                ),
            })
        }
        "command" => match s.command {
            Some(c) => {
                if let Some(g) = &c.get_active {
                    program("slots.command.get_active", g, problems);
                }
                program("slots.command.set_next", &c.set_next, problems);
                program("slots.command.mark_good", &c.mark_good, problems);
                program("slots.command.mark_bad", &c.mark_bad, problems);
                Some(BootloaderConfig::Command {
                    get_active: c.get_active,
                    set_next: c.set_next,
                    mark_good: c.mark_good,
                    mark_bad: c.mark_bad,
                })
            }
            None => {
                problems.push(
                    "slots.bootloader = \"command\" needs [slots.command] with set_next, mark_good and mark_bad".into(),
                );
                None
            }
        },
        "file" => match s.file {
            Some(f) => Some(BootloaderConfig::File {
                path: resolve(base, &f.path),
            }),
            None => {
                problems.push("slots.bootloader = \"file\" needs [slots.file] with path".into());
                None
            }
        },
        other => {
            problems.push(format!(
                "slots.bootloader: {other:?} is not one of uboot, grub, command, file"
            ));
            None
        }
    };
    let staging = match s.staging.as_deref() {
        None | Some("auto") => SlotStaging::Auto,
        Some("slot") => SlotStaging::Slot,
        Some("file") => SlotStaging::File,
        Some(other) => {
            problems.push(format!(
                "slots.staging: {other:?} is not one of auto, slot, file"
            ));
            SlotStaging::Auto
        }
    };
    if problems.len() > start {
        return None;
    }
    Some(SlotsConfig {
        staging,
        app: s.app,
        a,
        b,
        bootloader: bootloader?,
        attempts,
        cmdline: resolve(
            base,
            &s.cmdline.unwrap_or_else(|| PathBuf::from("/proc/cmdline")),
        ),
        version_file: s.version_file.map(|f| resolve(base, &f)),
    })
}

/// Why `program` cannot be run, if it cannot: a path that is not an executable file, or
/// a bare name that is on no directory of `PATH`.
fn program_problem(program: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return match std::fs::metadata(program) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "{program} does not exist (a relative program path is taken from the configuration file's directory; give the right path)"
            )),
            Err(e) => Some(format!("{program}: {e}")),
            Ok(m) if !m.is_file() => Some(format!("{program} is not a file")),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => Some(format!(
                "{program} is not executable (chmod +x {program})"
            )),
            Ok(_) => None,
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    (!found).then(|| format!("program {program:?} is not on PATH; give its absolute path"))
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, AgentError> {
        AgentConfig::parse(
            text,
            Path::new("/etc/petrel/device.toml"),
            Path::new("/etc/petrel"),
        )
    }

    #[test]
    fn parses_and_resolves_relative_paths() {
        let c = parse(
            r#"
profile = "profile.toml"
[repository]
metadata_url = "file:///srv/tree/metadata"
targets_url = "https://cdn.example/targets"
[inventory]
dir = "/opt/apps"
"#,
        )
        .unwrap();
        assert_eq!(c.profile, Path::new("/etc/petrel/profile.toml"));
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.repository.assign_bin_digits, 2);
        assert_eq!(c.inventory, InventorySource::Dir("/opt/apps".into()));
        assert_eq!(c.utc_offset, UtcOffsetSource::Profile);
    }

    #[test]
    fn relative_program_paths_resolve_against_the_file_and_missing_programs_fail_at_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("hooks");
        std::fs::create_dir(&hooks).unwrap();
        let hook = hooks.join("on-apply");
        std::fs::write(&hook, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("device.toml");
        let write = |on_apply: &str, health: &str| {
            std::fs::write(
                &config,
                format!(
                    "profile = \"p.toml\"\n[repository]\nmetadata_url = \"file:///m\"\ntargets_url = \"file:///t\"\n[inventory]\ndir = \"apps\"\n[hooks]\non_apply = [\"{on_apply}\", \"--flag\"]\n[health]\ncommand = [\"{health}\"]\n"
                ),
            )
            .unwrap();
        };
        // A relative program path is taken from the configuration file's directory, from
        // whatever working directory the agent runs in; a bare name stays for PATH.
        write("hooks/on-apply", "sh");
        let c = AgentConfig::load(&config).unwrap();
        assert_eq!(
            c.on_apply,
            Some(vec![hook.to_string_lossy().into_owned(), "--flag".into()])
        );
        assert_eq!(c.health.unwrap().command, vec!["sh".to_string()]);
        // A hook that does not exist is reported when the file is loaded, naming the key
        // and the resolved path.
        write("hooks/on-aply", "sh");
        let err = AgentConfig::load(&config).unwrap_err().to_string();
        let missing = hooks.join("on-aply");
        assert!(
            err.contains(&format!(
                "hooks.on_apply: {} does not exist",
                missing.display()
            )),
            "{err}"
        );
        // Not executable, and a bare name on no PATH directory.
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o644)).unwrap();
        write("hooks/on-apply", "petrel-no-such-health-check");
        let err = AgentConfig::load(&config).unwrap_err().to_string();
        assert!(err.contains("is not executable (chmod +x"), "{err}");
        assert!(
            err.contains("health.command: program \"petrel-no-such-health-check\" is not on PATH"),
            "{err}"
        );
    }

    #[test]
    fn hooks_installer_and_report_url() {
        let c = parse(
            r#"
profile = "p.toml"
report_url = "https://reports.example/v1/reports"
[repository]
metadata_url = "file:///m"
targets_url = "file:///t"
[inventory]
command = ["inv"]
install_command = ["install", "--quiet"]
[hooks]
on_apply = ["hook"]
timeout_secs = 20
"#,
        )
        .unwrap();
        assert_eq!(
            c.install_command,
            Some(vec!["install".into(), "--quiet".into()])
        );
        assert_eq!(c.on_apply, Some(vec!["hook".into()]));
        assert_eq!(c.hook_timeout, std::time::Duration::from_secs(20));
        assert_eq!(
            c.report_url.as_deref(),
            Some("https://reports.example/v1/reports")
        );
        let e = parse(
            r#"
profile = "p.toml"
report_url = "ftp://x"
[repository]
metadata_url = "file:///m"
targets_url = "file:///t"
[inventory]
dir = "/apps"
install_command = ["x"]
[hooks]
on_apply = []
timeout_secs = 0
"#,
        )
        .unwrap_err()
        .to_string();
        for field in [
            "report_url",
            "inventory.install_command",
            "hooks.on_apply",
            "hooks.timeout_secs",
        ] {
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn health_poll_and_inhibit_sections() {
        let c = parse(
            r#"
profile = "p.toml"
[repository]
metadata_url = "file:///m"
targets_url = "file:///t"
[inventory]
dir = "/apps"
[health]
command = ["check", "--quick"]
timeout_secs = 7
retries = 2
[poll]
interval = "15m"
[inhibit]
files = ["busy.flag"]
command = ["battery-ok"]
"#,
        )
        .unwrap();
        let h = c.health.unwrap();
        assert_eq!(h.command, vec!["check".to_string(), "--quick".into()]);
        assert_eq!(h.timeout, std::time::Duration::from_secs(7));
        assert_eq!(h.retries, 2);
        assert_eq!(c.poll.interval, std::time::Duration::from_secs(900));
        assert_eq!(c.poll.jitter, std::time::Duration::from_secs(90));
        assert_eq!(
            c.inhibit.files,
            vec![PathBuf::from("/etc/petrel/busy.flag")]
        );
        assert_eq!(c.inhibit.command, Some(vec!["battery-ok".to_string()]));
        let d = parse(
            r#"
profile = "p.toml"
[repository]
metadata_url = "file:///m"
targets_url = "file:///t"
[inventory]
dir = "/apps"
"#,
        )
        .unwrap();
        assert_eq!(d.poll, PollConfig::default());
        assert!(d.health.is_none() && d.inhibit.is_empty());
        let e = parse(
            r#"
profile = "p.toml"
[repository]
metadata_url = "file:///m"
targets_url = "file:///t"
[inventory]
dir = "/apps"
[health]
command = []
timeout_secs = 0
[poll]
interval = "soon"
[inhibit]
command = []
"#,
        )
        .unwrap_err()
        .to_string();
        for field in [
            "health.command",
            "health.timeout_secs",
            "poll.interval",
            "inhibit.command",
        ] {
            assert!(e.contains(field), "{field}: {e}");
        }
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert!(parse_duration("0s").is_err() && parse_duration("5").is_err());
    }

    #[test]
    fn reports_every_problem() {
        let e = parse(
            r#"
profile = "p.toml"
[repository]
metadata_url = "ftp://x/metadata"
targets_url = "file:///t"
assign_bin_digits = 9
[inventory]
"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("metadata_url"), "{e}");
        assert!(e.contains("assign_bin_digits"), "{e}");
        assert!(e.contains("inventory: give dir"), "{e}");
        let e = parse("profile = \"p\"\ncolour = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }
}

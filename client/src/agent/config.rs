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
//! ```
//!
//! Relative paths are relative to the directory of the configuration file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::AgentError;
use crate::manifest::{DEFAULT_BIN_DIGITS, MAX_BIN_DIGITS};

/// The default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/petrel/device.toml";
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/petrel";
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
    /// The per-application hook run after an apply (`hooks.on_apply`).
    pub on_apply: Option<Vec<String>>,
    /// Time limit of one hook or installer run (`hooks.timeout_secs`).
    pub hook_timeout: std::time::Duration,
    /// Where signed reports are sent (`report_url`); without it they wait in the outbox.
    pub report_url: Option<String>,
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

/// Where the installed inventory is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InventorySource {
    /// A directory with one subdirectory per installed application (see
    /// [`super::inventory`]).
    Dir(PathBuf),
    /// A command whose standard output is the inventory as JSON.
    Command(Vec<String>),
}

impl std::fmt::Display for InventorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InventorySource::Dir(d) => write!(f, "directory {}", d.display()),
            InventorySource::Command(c) => write!(f, "command {}", c.join(" ")),
        }
    }
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
        AgentConfig::parse(&text, path, base)
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
            ("hooks.on_apply", &raw.hooks.on_apply),
        ] {
            if argv
                .as_ref()
                .is_some_and(|a| a.is_empty() || a[0].is_empty())
            {
                problems.push(format!("{field}: must name a program"));
            }
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
            .unwrap_or(super::apply::DEFAULT_HOOK_TIMEOUT.as_secs());
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
        if !problems.is_empty() {
            return Err(err(problems.join("; ")));
        }
        let mut repository = raw.repository;
        repository.extra_ca = repository.extra_ca.map(|p| resolve(base, &p));
        Ok(AgentConfig {
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
            on_apply: raw.hooks.on_apply,
            hook_timeout: std::time::Duration::from_secs(timeout),
            report_url: raw.report_url,
        })
    }
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

//! Bootloader adapters for A/B slot installs: which slot the running system booted from,
//! "boot this slot next, with N tries", "this slot is good", "never boot this slot".
//!
//! | adapter | variables | tool |
//! |---|---|---|
//! | `uboot` | `BOOT_ORDER="B A"`, `BOOT_A_LEFT`, `BOOT_B_LEFT` (RAUC's) | `fw_printenv`, `fw_setenv -s` |
//! | `grub` | `ORDER="B A"`, `A_OK`, `A_TRY`, `B_OK`, `B_TRY` (RAUC's) | `grub-editenv` |
//! | `command` | the board's own | the configured commands |
//! | `file` | a JSON file (`order`, `left`, `booted`, `boots`) | none: simulators and tests |
//!
//! The bootloader itself (U-Boot's boot script, `grub.cfg`) walks the order, skips slots
//! without tries left, takes one try and boots the slot with `petrel.slot=<slot>` (or
//! `rauc.slot=<slot>`) on the kernel command line; `docs/images.md` shows the scripts.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::config::BootloaderConfig;
use crate::agent::exec::{run_bounded, CommandSpec};
use crate::tuf::updater::write_atomic;

/// How long a bootloader tool may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// The most output read from a bootloader tool or state file.
const MAX_OUTPUT: usize = 256 * 1024;

/// One of the two slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `A` or `B`.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// Reads `A` or `B` (case-insensitive; surrounding whitespace ignored).
    pub fn parse(s: &str) -> Option<Slot> {
        match s.trim() {
            "A" | "a" => Some(Slot::A),
            "B" | "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A bootloader, as the agent drives it. Every call is idempotent.
pub trait Bootloader {
    /// For messages (`U-Boot environment (fw_setenv)`).
    fn name(&self) -> String;
    /// The slot the running system booted from, when the bootloader says so itself (the
    /// `command` and `file` adapters); `None`: read it from the kernel command line.
    fn booted(&self) -> Result<Option<Slot>, String> {
        Ok(None)
    }
    /// Boots `slot` next, with `attempts` tries before falling back to the other one.
    fn set_next(&self, slot: Slot, attempts: u32) -> Result<(), String>;
    /// The running `slot` is good: it keeps booting (its tries are refilled).
    fn mark_good(&self, slot: Slot, attempts: u32) -> Result<(), String>;
    /// Never boots `slot` again (until it is set next anew); the other slot boots first.
    fn mark_bad(&self, slot: Slot) -> Result<(), String>;
    /// The bootloader's variables, for `petrel slots status`.
    fn variables(&self) -> Result<BTreeMap<String, String>, String>;
    /// Whether `slot` still has tries left (`None`: the bootloader cannot say).
    fn tries_left(&self, slot: Slot) -> Result<Option<u32>, String>;
    /// An identifier of the current boot, when the bootloader keeps one (the `file`
    /// adapter's boot counter); `None`: the system's boot id is used.
    fn boot_id(&self) -> Option<String> {
        None
    }
}

/// The adapter for a configuration.
pub fn open(config: &BootloaderConfig) -> Box<dyn Bootloader> {
    match config {
        BootloaderConfig::Uboot { printenv, setenv } => Box::new(Uboot {
            printenv: printenv.clone(),
            setenv: setenv.clone(),
        }),
        BootloaderConfig::Grub { editenv, env_file } => Box::new(Grub {
            editenv: editenv.clone(),
            env_file: env_file.clone(),
        }),
        BootloaderConfig::Command {
            get_active,
            set_next,
            mark_good,
            mark_bad,
        } => Box::new(CommandBootloader {
            get_active: get_active.clone(),
            set_next: set_next.clone(),
            mark_good: mark_good.clone(),
            mark_bad: mark_bad.clone(),
        }),
        BootloaderConfig::File { path } => Box::new(FileBootloader { path: path.clone() }),
    }
}

/// Reads the booted slot from a kernel command line: `petrel.slot=A` or `rauc.slot=A`.
pub fn slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline.split_whitespace().find_map(|w| {
        let v = w
            .strip_prefix("petrel.slot=")
            .or_else(|| w.strip_prefix("rauc.slot="))?;
        Slot::parse(v)
    })
}

fn run(argv: &[String], args: &[String]) -> Result<String, String> {
    let mut spec = CommandSpec::new(argv, TOOL_TIMEOUT).capture_stdout(MAX_OUTPUT);
    for a in args {
        spec = spec.arg(a.as_str());
    }
    let out = run_bounded(&spec).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_assignments(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

fn order_with_first(first: Slot) -> String {
    format!("{} {}", first, first.other())
}

/// U-Boot's environment with RAUC's variables.
struct Uboot {
    printenv: String,
    setenv: String,
}

impl Uboot {
    /// Sets several variables in one environment write (`fw_setenv -s FILE`).
    fn set(&self, vars: &[(String, String)]) -> Result<(), String> {
        let mut script = tempfile::NamedTempFile::new()
            .map_err(|e| format!("a temporary file for {}: {e}", self.setenv))?;
        let text: String = vars.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        std::io::Write::write_all(&mut script, text.as_bytes())
            .map_err(|e| format!("a temporary file for {}: {e}", self.setenv))?;
        run(
            std::slice::from_ref(&self.setenv),
            &["-s".into(), script.path().to_string_lossy().into_owned()],
        )
        .map(|_| ())
        .map_err(|e| {
            format!(
                "setting {} in the U-Boot environment: {e} (check /etc/fw_env.config and that the environment is writable)",
                vars.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
            )
        })
    }
}

impl Bootloader for Uboot {
    fn name(&self) -> String {
        format!("U-Boot environment ({})", self.setenv)
    }

    fn set_next(&self, slot: Slot, attempts: u32) -> Result<(), String> {
        self.set(&[
            (format!("BOOT_{slot}_LEFT"), attempts.to_string()),
            ("BOOT_ORDER".into(), order_with_first(slot)),
        ])
    }

    fn mark_good(&self, slot: Slot, attempts: u32) -> Result<(), String> {
        self.set(&[(format!("BOOT_{slot}_LEFT"), attempts.to_string())])
    }

    fn mark_bad(&self, slot: Slot) -> Result<(), String> {
        self.set(&[
            (format!("BOOT_{slot}_LEFT"), "0".into()),
            ("BOOT_ORDER".into(), order_with_first(slot.other())),
        ])
    }

    fn variables(&self) -> Result<BTreeMap<String, String>, String> {
        let out = run(
            std::slice::from_ref(&self.printenv),
            &[
                "BOOT_ORDER".into(),
                "BOOT_A_LEFT".into(),
                "BOOT_B_LEFT".into(),
            ],
        )
        .map_err(|e| format!("reading the U-Boot environment: {e}"))?;
        Ok(parse_assignments(&out))
    }

    fn tries_left(&self, slot: Slot) -> Result<Option<u32>, String> {
        Ok(self
            .variables()?
            .get(&format!("BOOT_{slot}_LEFT"))
            .and_then(|v| v.parse().ok()))
    }
}

/// GRUB's environment block with RAUC's variables.
struct Grub {
    editenv: String,
    env_file: PathBuf,
}

impl Grub {
    fn set(&self, vars: &[(String, String)]) -> Result<(), String> {
        let mut args = vec![self.env_file.to_string_lossy().into_owned(), "set".into()];
        args.extend(vars.iter().map(|(k, v)| format!("{k}={v}")));
        run(std::slice::from_ref(&self.editenv), &args)
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "setting {} in the GRUB environment {}: {e} (is slots.grub.env_file right and writable?)",
                    vars.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                    self.env_file.display()
                )
            })
    }
}

impl Bootloader for Grub {
    fn name(&self) -> String {
        format!("GRUB environment {}", self.env_file.display())
    }

    fn set_next(&self, slot: Slot, _attempts: u32) -> Result<(), String> {
        self.set(&[
            (format!("{slot}_OK"), "1".into()),
            (format!("{slot}_TRY"), "0".into()),
            ("ORDER".into(), order_with_first(slot)),
        ])
    }

    fn mark_good(&self, slot: Slot, _attempts: u32) -> Result<(), String> {
        self.set(&[
            (format!("{slot}_OK"), "1".into()),
            (format!("{slot}_TRY"), "0".into()),
        ])
    }

    fn mark_bad(&self, slot: Slot) -> Result<(), String> {
        self.set(&[
            (format!("{slot}_OK"), "0".into()),
            (format!("{slot}_TRY"), "0".into()),
            ("ORDER".into(), order_with_first(slot.other())),
        ])
    }

    fn variables(&self) -> Result<BTreeMap<String, String>, String> {
        let out = run(
            std::slice::from_ref(&self.editenv),
            &[self.env_file.to_string_lossy().into_owned(), "list".into()],
        )
        .map_err(|e| format!("reading the GRUB environment: {e}"))?;
        Ok(parse_assignments(&out))
    }

    fn tries_left(&self, slot: Slot) -> Result<Option<u32>, String> {
        let v = self.variables()?;
        let ok = v.get(&format!("{slot}_OK")).is_some_and(|x| x == "1");
        let tried = v.get(&format!("{slot}_TRY")).is_some_and(|x| x == "1");
        Ok(Some(u32::from(ok && !tried)))
    }
}

/// The board's own commands.
struct CommandBootloader {
    get_active: Option<Vec<String>>,
    set_next: Vec<String>,
    mark_good: Vec<String>,
    mark_bad: Vec<String>,
}

impl Bootloader for CommandBootloader {
    fn name(&self) -> String {
        format!("the bootloader commands ({} …)", self.set_next[0])
    }

    fn booted(&self) -> Result<Option<Slot>, String> {
        let Some(argv) = &self.get_active else {
            return Ok(None);
        };
        let out = run(argv, &[]).map_err(|e| format!("slots.command.get_active: {e}"))?;
        Slot::parse(&out).map(Some).ok_or_else(|| {
            format!(
                "slots.command.get_active printed {:?}, not A or B",
                out.trim()
            )
        })
    }

    fn set_next(&self, slot: Slot, attempts: u32) -> Result<(), String> {
        run(&self.set_next, &[slot.to_string(), attempts.to_string()])
            .map(|_| ())
            .map_err(|e| format!("slots.command.set_next: {e}"))
    }

    fn mark_good(&self, slot: Slot, _attempts: u32) -> Result<(), String> {
        run(&self.mark_good, &[slot.to_string()])
            .map(|_| ())
            .map_err(|e| format!("slots.command.mark_good: {e}"))
    }

    fn mark_bad(&self, slot: Slot) -> Result<(), String> {
        run(&self.mark_bad, &[slot.to_string()])
            .map(|_| ())
            .map_err(|e| format!("slots.command.mark_bad: {e}"))
    }

    fn variables(&self) -> Result<BTreeMap<String, String>, String> {
        Ok(BTreeMap::new())
    }

    fn tries_left(&self, _slot: Slot) -> Result<Option<u32>, String> {
        Ok(None)
    }
}

/// The `file` adapter's state: what a bootloader keeps in its environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBootState {
    /// The order slots are tried in.
    pub order: Vec<Slot>,
    /// Tries left per slot.
    pub left: BTreeMap<Slot, u32>,
    /// The slot booted at the last power-on.
    pub booted: Slot,
    /// Power-ons so far (the boot id).
    pub boots: u64,
}

impl FileBootState {
    /// A board that boots slot A, with `attempts` tries on each slot.
    pub fn new(attempts: u32) -> FileBootState {
        FileBootState {
            order: vec![Slot::A, Slot::B],
            left: [(Slot::A, attempts), (Slot::B, attempts)].into(),
            booted: Slot::A,
            boots: 1,
        }
    }

    /// What a bootloader does at power-on: the first slot in the order with tries left
    /// loses one and boots. `None`: no slot has tries left (the board does not boot).
    pub fn power_on(&mut self) -> Option<Slot> {
        let slot = self
            .order
            .iter()
            .copied()
            .find(|s| self.left.get(s).copied().unwrap_or(0) > 0)?;
        *self.left.entry(slot).or_default() -= 1;
        self.booted = slot;
        self.boots += 1;
        Some(slot)
    }
}

/// A JSON state file standing in for the bootloader.
pub struct FileBootloader {
    path: PathBuf,
}

impl FileBootloader {
    /// The adapter for the state file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> FileBootloader {
        FileBootloader { path: path.into() }
    }

    /// Reads the state file.
    pub fn load(&self) -> Result<FileBootState, String> {
        load_file_state(&self.path)
    }

    /// Writes the state file atomically.
    pub fn save(&self, s: &FileBootState) -> Result<(), String> {
        let mut bytes = serde_json::to_vec_pretty(s).expect("boot states serialize");
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn update(&self, f: impl FnOnce(&mut FileBootState)) -> Result<(), String> {
        let mut s = self.load()?;
        f(&mut s);
        self.save(&s)
    }
}

fn load_file_state(path: &Path) -> Result<FileBootState, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_OUTPUT as u64).read_to_end(&mut bytes))
        .map_err(|e| format!("the boot state file {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "the boot state file {} is not a boot state ({e}); create it with `petrel slots boot --init`",
            path.display()
        )
    })
}

impl Bootloader for FileBootloader {
    fn name(&self) -> String {
        format!("the boot state file {}", self.path.display())
    }

    fn booted(&self) -> Result<Option<Slot>, String> {
        Ok(Some(self.load()?.booted))
    }

    fn set_next(&self, slot: Slot, attempts: u32) -> Result<(), String> {
        self.update(|s| {
            s.left.insert(slot, attempts);
            s.order = vec![slot, slot.other()];
        })
    }

    fn mark_good(&self, slot: Slot, attempts: u32) -> Result<(), String> {
        self.update(|s| {
            s.left.insert(slot, attempts);
        })
    }

    fn mark_bad(&self, slot: Slot) -> Result<(), String> {
        self.update(|s| {
            s.left.insert(slot, 0);
            s.order = vec![slot.other(), slot];
        })
    }

    fn variables(&self) -> Result<BTreeMap<String, String>, String> {
        let s = self.load()?;
        let mut v = BTreeMap::new();
        v.insert(
            "order".into(),
            s.order
                .iter()
                .map(|x| x.name())
                .collect::<Vec<_>>()
                .join(" "),
        );
        for (slot, n) in &s.left {
            v.insert(format!("left.{slot}"), n.to_string());
        }
        v.insert("boots".into(), s.boots.to_string());
        Ok(v)
    }

    fn tries_left(&self, slot: Slot) -> Result<Option<u32>, String> {
        Ok(Some(self.load()?.left.get(&slot).copied().unwrap_or(0)))
    }

    fn boot_id(&self) -> Option<String> {
        self.load().ok().map(|s| format!("boot {}", s.boots))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_booted_slot_is_read_from_petrel_or_rauc_kernel_arguments() {
        assert_eq!(
            slot_from_cmdline("console=ttyS0 root=/dev/mmcblk0p3 petrel.slot=B quiet"),
            Some(Slot::B)
        );
        assert_eq!(slot_from_cmdline("rauc.slot=A ro"), Some(Slot::A));
        assert_eq!(slot_from_cmdline("root=/dev/sda2 rauc.slot=C"), None);
        assert_eq!(slot_from_cmdline("xpetrel.slot=A"), None);
    }

    #[test]
    fn a_new_slot_falls_back_once_its_tries_are_used_up() {
        let mut s = FileBootState::new(3);
        // Set B next with 2 tries; it never gets marked good.
        s.left.insert(Slot::B, 2);
        s.order = vec![Slot::B, Slot::A];
        assert_eq!(s.power_on(), Some(Slot::B));
        assert_eq!(s.power_on(), Some(Slot::B));
        assert_eq!(s.power_on(), Some(Slot::A), "fell back after 2 tries");
        assert_eq!(s.left[&Slot::B], 0);
    }

    #[test]
    fn the_file_adapter_keeps_rauc_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.json");
        let b = FileBootloader::new(&path);
        b.save(&FileBootState::new(3)).unwrap();
        let bl: Box<dyn Bootloader> = Box::new(FileBootloader::new(&path));
        assert_eq!(bl.booted().unwrap(), Some(Slot::A));
        bl.set_next(Slot::B, 3).unwrap();
        let mut s = b.load().unwrap();
        assert_eq!(s.power_on(), Some(Slot::B));
        b.save(&s).unwrap();
        assert_eq!(bl.booted().unwrap(), Some(Slot::B));
        assert_eq!(bl.tries_left(Slot::B).unwrap(), Some(2));
        bl.mark_good(Slot::B, 3).unwrap();
        assert_eq!(bl.tries_left(Slot::B).unwrap(), Some(3));
        bl.mark_bad(Slot::B).unwrap();
        let mut s = b.load().unwrap();
        assert_eq!(s.power_on(), Some(Slot::A));
        assert_ne!(bl.boot_id(), None);
    }

    #[cfg(unix)]
    #[test]
    fn uboot_variables_are_written_in_one_fw_setenv_script_with_rauc_names() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let tool = dir.path().join("fw_setenv");
        std::fs::write(
            &tool,
            format!(
                "#!/bin/sh\n[ \"$1\" = -s ] || exit 9\ncat \"$2\" >> {}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let u = Uboot {
            printenv: "false".into(),
            setenv: tool.to_string_lossy().into_owned(),
        };
        u.set_next(Slot::B, 3).unwrap();
        u.mark_bad(Slot::B).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "BOOT_B_LEFT 3\nBOOT_ORDER B A\nBOOT_B_LEFT 0\nBOOT_ORDER A B\n"
        );
        let e = u.variables().unwrap_err();
        assert!(e.contains("reading the U-Boot environment"), "{e}");
    }
}

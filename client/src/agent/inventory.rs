//! The device's **actual** installed inventory, read from the device at every run (never
//! from the last manifest applied), so software installed, removed or swapped by hand shows
//! up in the next plan.
//!
//! Two sources (see `docs/device.md`):
//!
//! * **A directory** with one subdirectory per installed application:
//!
//!   ```text
//!   <dir>/acme.player/VERSION        "2.0.1" (first line; surrounding whitespace ignored)
//!   <dir>/acme.player/player.bin     the installed artifact: its SHA-256 is computed
//!   <dir>/acme.fonts/VERSION         "2024.1"
//!   <dir>/acme.fonts/SHA256          optional: hash of the installed artifact, when it is
//!   <dir>/acme.fonts/fonts/…         not one file (a tree, a package)
//!   ```
//!
//!   The directory name is the application id. Besides `VERSION` and `SHA256`, if the
//!   application directory holds exactly one regular file, that file is the installed
//!   artifact and its SHA-256 is computed from its bytes (a `SHA256` file is then ignored:
//!   the bytes win). Otherwise the `SHA256` file, if any, gives the hash, and without one the
//!   hash is unknown (the version still counts). Names starting with `.` are ignored
//!   everywhere (installers' temporary files).
//! * **A command** whose standard output is a JSON object, application id →
//!   `{"version": "…", "sha256": "…"}` (`sha256` optional), the same shape as a profile's
//!   `inventory`. It runs with no input and must finish within
//!   [`COMMAND_TIMEOUT`] and exit 0.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::AgentError;
use super::exec::{run_bounded, CommandSpec};
use crate::decide::{InstalledApp, Inventory};
use crate::manifest::{check_id, check_sha256_hex, check_version};

/// The version file of an application directory.
pub const VERSION_FILE: &str = "VERSION";
/// The optional hash file of an application directory.
pub const SHA256_FILE: &str = "SHA256";
/// How long an inventory command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest inventory a command may print.
const MAX_COMMAND_OUTPUT: usize = 4 * 1024 * 1024;
/// The largest `VERSION` or `SHA256` file read.
const MAX_SMALL_FILE: u64 = 4096;

/// Where the installed inventory is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InventorySource {
    /// A directory with one subdirectory per installed application (see
    /// this module).
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

/// Reads the inventory from its configured source.
pub fn read_inventory(source: &InventorySource) -> Result<Inventory, AgentError> {
    match source {
        InventorySource::Dir(d) => read_dir_inventory(d),
        InventorySource::Command(c) => read_command_inventory(c),
    }
}

fn inv_err(source: &InventorySource, reason: impl Into<String>) -> AgentError {
    AgentError::Inventory {
        from: source.to_string(),
        reason: reason.into(),
    }
}

/// Reads an inventory directory.
pub fn read_dir_inventory(dir: &Path) -> Result<Inventory, AgentError> {
    let src = InventorySource::Dir(dir.to_path_buf());
    let err = |reason: String| inv_err(&src, reason);
    let entries = fs::read_dir(dir).map_err(|e| {
        err(if e.kind() == io::ErrorKind::NotFound {
            "does not exist (create it, empty, on a device with nothing installed)".into()
        } else {
            e.to_string()
        })
    })?;
    let mut inventory = Inventory::new();
    for entry in entries {
        let entry = entry.map_err(|e| err(e.to_string()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(err(format!(
                "{:?} is not a valid application id (not UTF-8)",
                entry.file_name()
            )));
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = fs::metadata(&path).map_err(|e| err(format!("{name}: {e}")))?;
        if !meta.is_dir() {
            tracing::warn!(
                "inventory: ignoring {} (not an application directory)",
                path.display()
            );
            continue;
        }
        check_id(name).map_err(|e| err(format!("{name}: not a valid application id: {e}")))?;
        let app = read_app_dir(&path).map_err(|e| err(format!("{name}: {e}")))?;
        inventory.insert(name.to_string(), app);
    }
    Ok(inventory)
}

fn read_small(path: &Path) -> Result<Option<String>, String> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut buf = Vec::new();
    f.take(MAX_SMALL_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_SMALL_FILE {
        return Err(format!(
            "{} is larger than {MAX_SMALL_FILE} bytes",
            path.display()
        ));
    }
    let text = String::from_utf8(buf).map_err(|_| format!("{} is not UTF-8", path.display()))?;
    Ok(Some(text.lines().next().unwrap_or("").trim().to_string()))
}

fn read_app_dir(dir: &Path) -> Result<InstalledApp, String> {
    let version = read_small(&dir.join(VERSION_FILE))?.ok_or_else(|| {
        format!(
            "{} is missing: every application directory needs a {VERSION_FILE} file",
            dir.join(VERSION_FILE).display()
        )
    })?;
    check_version(&version).map_err(|e| format!("{VERSION_FILE}: {e}"))?;
    let declared = match read_small(&dir.join(SHA256_FILE))? {
        Some(h) => {
            let h = h.to_ascii_lowercase();
            check_sha256_hex(&h).map_err(|e| format!("{SHA256_FILE}: {e}"))?;
            Some(h)
        }
        None => None,
    };
    let others = artifact_entries(dir).map_err(|e| e.to_string())?;
    let sha256 = match others.as_slice() {
        [one] if fs::metadata(one).is_ok_and(|m| m.is_file()) => {
            Some(sha256_file(one).map_err(|e| format!("{}: {e}", one.display()))?)
        }
        _ => declared,
    };
    Ok(InstalledApp { version, sha256 })
}

/// The entries of an application directory that make up its installed artifact: all but
/// `VERSION`, `SHA256` and names starting with `.`.
fn artifact_entries(app_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(app_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let n = name.to_string_lossy();
        if !(n.starts_with('.') || n == VERSION_FILE || n == SHA256_FILE) {
            entries.push(entry.path());
        }
    }
    Ok(entries)
}

/// The installed artifact file of `app` in an inventory directory: the one entry of
/// `<dir>/<app>/` besides `VERSION`, `SHA256` and hidden names, when it is a regular file
/// (not a symlink); `None` otherwise. Deltas are applied to its bytes.
pub fn installed_artifact_file(inventory_dir: &Path, app: &str) -> Option<PathBuf> {
    match artifact_entries(&inventory_dir.join(app)).ok()?.as_slice() {
        [one] if fs::symlink_metadata(one).is_ok_and(|m| m.is_file()) => Some(one.clone()),
        _ => None,
    }
}

/// An installed tree artifact of `app` in an inventory directory: its root
/// (`<dir>/<app>/tree`) and its manifest's exact bytes (`<dir>/<app>/.petrel-tree.json`,
/// written by the installer after every file was verified). Tree deltas apply to it.
pub fn installed_tree(inventory_dir: &Path, app: &str) -> Option<(PathBuf, Vec<u8>)> {
    let app_dir = inventory_dir.join(app);
    let root = app_dir.join(crate::tree::TREE_DIR);
    if !fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    let f = File::open(app_dir.join(crate::tree::MANIFEST_FILE)).ok()?;
    let mut bytes = Vec::new();
    f.take(crate::tree::MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= crate::tree::MAX_MANIFEST_BYTES).then_some((root, bytes))
}

/// The SHA-256 (lowercase hex) of a file, read in chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish()))
}

/// Runs an inventory command and parses its output.
pub fn read_command_inventory(argv: &[String]) -> Result<Inventory, AgentError> {
    let src = InventorySource::Command(argv.to_vec());
    let err = |reason: String| inv_err(&src, reason);
    let spec = CommandSpec::new(argv, COMMAND_TIMEOUT).capture_stdout(MAX_COMMAND_OUTPUT);
    let out = run_bounded(&spec).map_err(|e| err(e.to_string()))?;
    parse_inventory_json(&out.stdout).map_err(err)
}

/// Parses and validates an inventory in JSON (`{"app": {"version": "1.0", "sha256": "…"}}`).
pub fn parse_inventory_json(bytes: &[u8]) -> Result<Inventory, String> {
    let inv: BTreeMap<String, InstalledApp> = serde_json::from_slice(bytes).map_err(|e| {
        format!("its output is not an inventory (JSON object: application id → {{\"version\", \"sha256\"}}): {e}")
    })?;
    let mut problems = Vec::new();
    let mut out = Inventory::new();
    for (app, mut i) in inv {
        if let Err(e) = check_id(&app) {
            problems.push(format!("{app:?}: not a valid application id: {e}"));
        }
        if let Err(e) = check_version(&i.version) {
            problems.push(format!("{app}.version: {e}"));
        }
        i.sha256 = i.sha256.map(|h| h.to_ascii_lowercase());
        if let Some(h) = &i.sha256 {
            if let Err(e) = check_sha256_hex(h) {
                problems.push(format!("{app}.sha256: {e}"));
            }
        }
        out.insert(app, i);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::sha256_hex;

    #[test]
    fn directory_inventory() {
        let d = tempfile::tempdir().unwrap();
        let app = d.path().join("acme.player");
        fs::create_dir(&app).unwrap();
        fs::write(app.join("VERSION"), "2.0.1\n").unwrap();
        fs::write(app.join("player.bin"), b"bytes").unwrap();
        fs::write(app.join("SHA256"), "00".repeat(32)).unwrap();
        let tree = d.path().join("acme.fonts");
        fs::create_dir_all(tree.join("fonts")).unwrap();
        fs::write(tree.join("VERSION"), " 2024.1 ").unwrap();
        fs::write(tree.join("SHA256"), "AB".repeat(32)).unwrap();
        let bare = d.path().join("acme.tool");
        fs::create_dir(&bare).unwrap();
        fs::write(bare.join("VERSION"), "1").unwrap();
        fs::create_dir(d.path().join(".partial")).unwrap();
        fs::write(d.path().join("README"), "not an app").unwrap();

        let inv = read_dir_inventory(d.path()).unwrap();
        assert_eq!(inv.len(), 3);
        assert_eq!(inv["acme.player"].version, "2.0.1");
        assert_eq!(
            inv["acme.player"].sha256.as_deref(),
            Some(sha256_hex(b"bytes").as_str()),
            "the bytes win over a SHA256 file"
        );
        assert_eq!(inv["acme.fonts"].version, "2024.1");
        assert_eq!(inv["acme.fonts"].sha256, Some("ab".repeat(32)));
        assert_eq!(inv["acme.tool"].sha256, None);

        fs::remove_file(bare.join("VERSION")).unwrap();
        let e = read_dir_inventory(d.path()).unwrap_err().to_string();
        assert!(e.contains("acme.tool") && e.contains("VERSION"), "{e}");
        fs::write(bare.join("VERSION"), "1").unwrap();
        fs::create_dir(d.path().join("bad name")).unwrap();
        let e = read_dir_inventory(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a valid application id"), "{e}");
        let e = read_dir_inventory(&d.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn json_inventory() {
        let inv = parse_inventory_json(
            br#"{"a.b": {"version": "1.0"}, "c": {"version": "2", "sha256": null}}"#,
        )
        .unwrap();
        assert_eq!(inv["a.b"].version, "1.0");
        assert!(parse_inventory_json(br#"{"a": {"version": "1 0"}}"#).is_err());
        assert!(parse_inventory_json(br#"{"a": {"version": "1", "colour": 1}}"#).is_err());
        assert!(parse_inventory_json(b"[]").is_err());
    }

    #[test]
    fn command_inventory() {
        let argv: Vec<String> = [
            "sh",
            "-c",
            r#"echo '{"acme.player": {"version": "2.0.1"}}'"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let inv = read_command_inventory(&argv).unwrap();
        assert_eq!(inv["acme.player"].version, "2.0.1");
        let argv: Vec<String> = ["sh", "-c", "echo broken >&2; exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = read_command_inventory(&argv).unwrap_err().to_string();
        assert!(e.contains("broken"), "{e}");
    }
    #[test]
    fn endless_inventory_output_is_stopped_at_the_cap_quickly_naming_the_cap() {
        let started = std::time::Instant::now();
        let r = read_command_inventory(&["yes".to_string()]);
        let took = started.elapsed();
        let e = r.unwrap_err().to_string();
        assert!(e.contains("more than 4194304 bytes"), "{e}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}

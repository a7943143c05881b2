//! Crash-safe file operations: atomic writes (temp file, fsync, rename) and linking.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// synced, and renamed over `path`. On any error `path` is untouched and the temporary
/// file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, PUBLIC_MODE)
}

/// [`write_atomic`] with the given permission bits, set before the file gets its name.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".petrel-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    set_mode(tmp.as_file(), path, mode)?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Syncs a directory so renames inside it survive power loss (best effort on platforms
/// where directories cannot be opened).
pub fn sync_dir(dir: &Path) -> Result<()> {
    match fs::File::open(dir) {
        Ok(f) => f.sync_all().or(Ok(())),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Test-only: when set, [`link_or_copy`] always copies instead of hard-linking.
#[doc(hidden)]
pub const NO_HARDLINKS_ENV: &str = "PETREL_REPO_TEST_NO_HARDLINKS";

/// Makes everything written so far on the file system holding `path` durable: one
/// `syncfs` on Linux (data and metadata of every file, one journal commit), `sync`
/// elsewhere on Unix. Used to make many new files durable at once.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        let dir = fs::File::open(path).map_err(|e| Error::io(path, e))?;
        rustix::fs::syncfs(&dir).map_err(|e| Error::io(path, e.into()))?;
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        let _ = path;
        rustix::fs::sync();
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        return Err(Error::State(
            "syncing the file system is only implemented on Unix".into(),
        ));
    }
    Ok(())
}

fn hardlinks_disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| std::env::var_os(NO_HARDLINKS_ENV).is_some())
}

/// Places `src` at `dst` without rewriting an existing `dst`: hard-links when possible,
/// copies (atomically) otherwise. Returns whether anything was written. Fails with
/// `NotFound` (naming `src`) when `src` does not exist.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<bool> {
    let dir = dst.parent().unwrap_or(Path::new("."));
    // Test hook: force the copy path (hard links cannot hit a file-size limit, so tests
    // that simulate a full disk with `ulimit -f` set this).
    let link = || {
        if hardlinks_disabled() {
            Err(std::io::Error::other("hard links disabled"))
        } else {
            fs::hard_link(src, dst)
        }
    };
    // One system call in the usual case: no lookup of `dst` or `src` first. An existing
    // `dst` makes the link fail with AlreadyExists; the directory is made only when the
    // link fails with NotFound and `src` exists.
    let mut linked = link();
    if matches!(&linked, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        if !src.exists() {
            return Err(Error::io(
                src,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        linked = link();
    }
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
            if dst.exists() {
                return Ok(false);
            }
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let tmp = tempfile::Builder::new()
                .prefix(".petrel-")
                .suffix(".tmp")
                .tempfile_in(dir)
                .map_err(|e| Error::io(dir, e))?;
            fs::copy(src, tmp.path()).map_err(|e| Error::io(dst, e))?;
            tmp.as_file().sync_all().map_err(|e| Error::io(dst, e))?;
            tmp.persist(dst).map_err(|e| Error::io(dst, e.error))?;
            Ok(true)
        }
    }
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Mode of published and stored files: world-readable, because tree files are served by
/// whatever user runs the web server (temporary files are created 0600).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of private key files.
pub const PRIVATE_MODE: u32 = 0o600;

/// Sets the permission bits of an open file (no-op where there are none).
pub fn set_mode(file: &fs::File, path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (file, path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_or_copy_leaves_an_existing_destination_alone_and_names_a_missing_source() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::write(&src, b"new").unwrap();
        let dst = tmp.path().join("sub/dir/dst");
        assert!(link_or_copy(&src, &dst).unwrap(), "first placement writes");
        assert_eq!(fs::read(&dst).unwrap(), b"new");
        let other = tmp.path().join("other");
        fs::write(&other, b"other").unwrap();
        assert!(
            !link_or_copy(&other, &dst).unwrap(),
            "an existing name is kept"
        );
        assert_eq!(fs::read(&dst).unwrap(), b"new");
        let missing = tmp.path().join("missing");
        let err = link_or_copy(&missing, &tmp.path().join("x/y"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}

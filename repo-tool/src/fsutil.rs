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

/// Places `src` at `dst` without rewriting an existing `dst`: hard-links when possible,
/// copies (atomically) otherwise. Returns whether anything was written.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<bool> {
    if dst.exists() {
        return Ok(false);
    }
    let dir = dst.parent().unwrap_or(Path::new("."));
    // Test hook: force the copy path (hard links cannot hit a file-size limit, so tests
    // that simulate a full disk with `ulimit -f` set this).
    let link = || {
        if std::env::var_os(NO_HARDLINKS_ENV).is_some() {
            Err(std::io::Error::other("hard links disabled"))
        } else {
            fs::hard_link(src, dst)
        }
    };
    // The directory is made only when the link fails for want of it, so placing many
    // files in one directory costs no extra lookup per file.
    let mut linked = link();
    if matches!(&linked, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        linked = link();
    }
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
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

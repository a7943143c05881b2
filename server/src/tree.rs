//! Opening files of the tree without ever leaving it: symlink containment and file types.
//!
//! A request path has already been validated by [`crate::path`] (no `..`, no empty or
//! hidden segments, first segment `metadata` or `targets`). What remains is symlinks:
//!
//! * **Fast path** (no symlink on the way): on Linux ≥ 5.6 a single
//!   `openat2(root_fd, path, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, which the kernel
//!   resolves atomically; elsewhere (or where `openat2` is unavailable, e.g. filtered by
//!   a seccomp profile) an `lstat` of each component below the canonical root.
//! * **Slow path** (a symlink was met): the path is canonicalized, and the result must
//!   lie under `<root>/metadata` or `<root>/targets`, contain no temporary/hidden name,
//!   and be a regular file. On Linux the canonical path is then opened with
//!   `RESOLVE_NO_SYMLINKS`, so a symlink swapped in after the check makes the open fail
//!   instead of escaping.
//!
//! Files are opened non-blocking where supported (opening a FIFO cannot hang a worker),
//! and anything that is not a regular file is reported as not found.

use std::fs::{self, File, Metadata};
use std::io;
use std::path::{Component, Path, PathBuf};
#[cfg(target_os = "linux")]
use std::sync::atomic::{AtomicBool, Ordering};

use crate::path::is_temporary_name;

/// Top-level directories of the tree that are served.
pub const SERVED_DIRS: [&str; 2] = ["metadata", "targets"];

/// Why a file could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Missing, not a regular file, or a temporary/hidden name (answered 404).
    NotFound,
    /// Resolves outside the served part of the tree, or permission denied (answered 403).
    Forbidden,
    /// Unexpected I/O failure (answered 500).
    Internal(io::Error),
}

/// The tree root, resolved once at startup.
#[derive(Debug)]
pub struct TreeRoot {
    path: PathBuf,
    #[cfg(target_os = "linux")]
    dir: Option<std::os::fd::OwnedFd>,
    #[cfg(target_os = "linux")]
    openat2_usable: AtomicBool,
}

impl TreeRoot {
    /// Canonicalize `root` (which must be a directory) and, on Linux, keep a handle on it.
    pub fn open(root: &Path) -> io::Result<Self> {
        let path = fs::canonicalize(root)
            .map_err(|e| io::Error::new(e.kind(), format!("tree root {}: {e}", root.display())))?;
        if !path.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tree root {} is not a directory", path.display()),
            ));
        }
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{Mode, OFlags};
            let dir = rustix::fs::open(
                &path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok();
            let usable = dir.is_some();
            Ok(TreeRoot {
                path,
                dir,
                openat2_usable: AtomicBool::new(usable),
            })
        }
        #[cfg(not(target_os = "linux"))]
        Ok(TreeRoot { path })
    }

    /// The canonical root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the regular file at validated `relative` (`/`-separated, e.g.
    /// `metadata/root.json`) and return it with the metadata of the open handle.
    pub fn open_file(&self, relative: &str) -> Result<(File, Metadata), OpenError> {
        let file = self.open_contained(relative)?;
        let meta = file.metadata().map_err(OpenError::Internal)?;
        if !meta.is_file() {
            return Err(OpenError::NotFound);
        }
        Ok((file, meta))
    }

    fn open_contained(&self, relative: &str) -> Result<File, OpenError> {
        #[cfg(target_os = "linux")]
        if self.openat2_usable.load(Ordering::Relaxed) {
            if let Some(dir) = &self.dir {
                match linux::open_beneath(dir, relative) {
                    linux::Outcome::Opened(f) => return Ok(f),
                    linux::Outcome::Failed(e) => return Err(e),
                    linux::Outcome::MetSymlink => {
                        let inside = self.resolve_through_symlinks(relative)?;
                        return match linux::open_beneath(dir, &inside) {
                            linux::Outcome::Opened(f) => Ok(f),
                            linux::Outcome::Failed(e) => Err(e),
                            // Changed since it was checked: refuse.
                            linux::Outcome::MetSymlink => Err(OpenError::Forbidden),
                            linux::Outcome::Unsupported => Err(OpenError::Forbidden),
                        };
                    }
                    linux::Outcome::Unsupported => {
                        tracing::info!("openat2 unavailable; using the portable open path");
                        self.openat2_usable.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        self.open_portable(relative)
    }

    /// `lstat` every component; any symlink diverts to the slow path.
    fn open_portable(&self, relative: &str) -> Result<File, OpenError> {
        let mut path = PathBuf::with_capacity(self.path.as_os_str().len() + relative.len() + 1);
        path.push(&self.path);
        let mut segments = relative.split('/').peekable();
        while let Some(segment) = segments.next() {
            path.push(segment);
            let file_type = fs::symlink_metadata(&path)
                .map_err(classify_io_error)?
                .file_type();
            if file_type.is_symlink() {
                let inside = self.resolve_through_symlinks(relative)?;
                return File::open(self.path.join(inside)).map_err(classify_io_error);
            }
            let expected = if segments.peek().is_none() {
                file_type.is_file()
            } else {
                file_type.is_dir()
            };
            if !expected {
                return Err(OpenError::NotFound);
            }
        }
        File::open(&path).map_err(classify_io_error)
    }

    /// Canonicalize `relative` and check the result is a servable regular file; returns
    /// it relative to the root.
    fn resolve_through_symlinks(&self, relative: &str) -> Result<String, OpenError> {
        let canonical = fs::canonicalize(self.path.join(relative)).map_err(classify_io_error)?;
        let Ok(inside) = canonical.strip_prefix(&self.path) else {
            tracing::warn!(path = relative, "refused: resolves outside the tree root");
            return Err(OpenError::Forbidden);
        };
        match inside.components().next() {
            Some(Component::Normal(first)) if SERVED_DIRS.iter().any(|d| first == *d) => {}
            _ => {
                tracing::warn!(
                    path = relative,
                    "refused: resolves outside metadata/ and targets/"
                );
                return Err(OpenError::Forbidden);
            }
        }
        let mut names = Vec::new();
        for c in inside.components() {
            match c {
                Component::Normal(name) => match name.to_str() {
                    Some(name) if !is_temporary_name(name) => names.push(name),
                    _ => return Err(OpenError::NotFound),
                },
                _ => return Err(OpenError::Forbidden),
            }
        }
        match fs::metadata(&canonical) {
            Ok(m) if m.is_file() => Ok(names.join("/")),
            Ok(_) => Err(OpenError::NotFound),
            Err(e) => Err(classify_io_error(e)),
        }
    }
}

/// `ELOOP`: too many levels of symbolic links (a symlink loop).
#[cfg(target_os = "linux")]
const ELOOP: i32 = 40;
#[cfg(not(target_os = "linux"))]
const ELOOP: i32 = 62;

fn classify_io_error(e: io::Error) -> OpenError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => OpenError::NotFound,
        io::ErrorKind::PermissionDenied => OpenError::Forbidden,
        // A symlink loop names no file: the same answer as a missing one.
        _ if e.raw_os_error() == Some(ELOOP) => OpenError::NotFound,
        _ => OpenError::Internal(e),
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::os::fd::OwnedFd;

    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;

    use super::{classify_io_error, OpenError};

    pub(super) enum Outcome {
        Opened(File),
        MetSymlink,
        Unsupported,
        Failed(OpenError),
    }

    /// `openat2` below `dir`, refusing every symlink and any escape from `dir`.
    pub(super) fn open_beneath(dir: &OwnedFd, relative: &str) -> Outcome {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN means a concurrent rename raced the lookup; retry a bounded number of times.
        let mut attempts = 0;
        loop {
            attempts += 1;
            return match rustix::fs::openat2(dir, relative, flags, Mode::empty(), resolve) {
                Ok(fd) => Outcome::Opened(File::from(fd)),
                Err(Errno::LOOP) => Outcome::MetSymlink,
                Err(Errno::NOSYS) | Err(Errno::PERM) => Outcome::Unsupported,
                Err(Errno::XDEV) => Outcome::Failed(OpenError::Forbidden),
                // A socket or device node: not a servable file.
                Err(Errno::NXIO) => Outcome::Failed(OpenError::NotFound),
                Err(Errno::AGAIN) if attempts < 4 => continue,
                Err(e) => Outcome::Failed(classify_io_error(e.into())),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir_all(root.join("metadata")).unwrap();
        fs::create_dir_all(root.join("targets/sub")).unwrap();
        fs::create_dir_all(root.join("keys")).unwrap();
        fs::write(root.join("metadata/root.json"), b"{}").unwrap();
        fs::write(root.join("targets/sub/a.bin"), b"a").unwrap();
        fs::write(root.join("keys/k.pem"), b"secret").unwrap();
        fs::write(dir.path().join("outside.txt"), b"secret").unwrap();
        let t = root.join("targets");
        std::os::unix::fs::symlink("../../outside.txt", t.join("escape")).unwrap();
        std::os::unix::fs::symlink("../keys/k.pem", t.join("keys-link")).unwrap();
        std::os::unix::fs::symlink("sub/a.bin", t.join("inner")).unwrap();
        std::os::unix::fs::symlink("sub", t.join("subdir-link")).unwrap();
        (dir, root)
    }

    /// Every open path (openat2 where available, and the portable one) must agree.
    fn roots(root: &Path) -> Vec<TreeRoot> {
        let fast = TreeRoot::open(root).unwrap();
        let portable = TreeRoot::open(root).unwrap();
        #[cfg(target_os = "linux")]
        portable.openat2_usable.store(false, Ordering::Relaxed);
        vec![fast, portable]
    }

    #[test]
    fn contained_files_open_and_escapes_are_refused_on_every_path() {
        let (_dir, root) = fixture();
        for tree in roots(&root) {
            assert!(tree.open_file("metadata/root.json").is_ok());
            assert!(tree.open_file("targets/inner").is_ok());
            assert!(tree.open_file("targets/subdir-link/a.bin").is_ok());
            assert!(matches!(
                tree.open_file("targets/escape"),
                Err(OpenError::Forbidden)
            ));
            assert!(matches!(
                tree.open_file("targets/keys-link"),
                Err(OpenError::Forbidden)
            ));
            assert!(matches!(
                tree.open_file("targets/sub"),
                Err(OpenError::NotFound)
            ));
            assert!(matches!(
                tree.open_file("targets/none"),
                Err(OpenError::NotFound)
            ));
            assert!(matches!(
                tree.open_file("metadata/root.json/x"),
                Err(OpenError::NotFound)
            ));
        }
    }

    #[test]
    fn symlink_loops_are_not_found_on_every_path() {
        let (_dir, root) = fixture();
        let t = root.join("targets");
        std::os::unix::fs::symlink("loop-b", t.join("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", t.join("loop-b")).unwrap();
        std::os::unix::fs::symlink("self", t.join("self")).unwrap();
        for tree in roots(&root) {
            for p in ["targets/loop-a", "targets/self/x"] {
                assert!(matches!(tree.open_file(p), Err(OpenError::NotFound)), "{p}");
            }
        }
    }

    #[test]
    fn fifo_is_not_opened_on_any_path() {
        let (_dir, root) = fixture();
        let fifo = root.join("targets/fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.map(|s| s.success()).unwrap_or(false) {
            return; // no mkfifo on this system
        }
        for tree in roots(&root) {
            assert!(matches!(
                tree.open_file("targets/fifo"),
                Err(OpenError::NotFound)
            ));
        }
    }
}

//! The content store: target files copied in while they are hashed, named by SHA-256.
//!
//! A file gets its hash name only once its bytes are durable, so a crash never leaves an
//! incomplete file under a hash. Adding many files does that in two steps: every file is
//! copied to a temporary name (no sync each), then one file-system sync makes all of them
//! durable, then each is renamed to its hash and the directory is synced
//! ([`store_files`]). Adding one file syncs just that file ([`hash_into_store`]).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use ring::digest;
use tempfile::TempPath;

use crate::error::{Error, Result};
use crate::fsutil;

/// A file now held in the content store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    /// Length in bytes.
    pub length: u64,
    /// Hex SHA-256 (also its name in the store).
    pub sha256: String,
    /// Hex SHA-512.
    pub sha512: String,
}

/// A file copied and hashed, waiting in a temporary file (not yet synced) for its name.
struct Incoming {
    file: StoredFile,
    /// `None` when the store already holds this content.
    tmp: Option<TempPath>,
}

/// Copies `src` into `content_dir/<sha256>`, hashing the bytes as they are copied, so the
/// hashes describe exactly the stored copy. Refuses symlinks and special files, and fails
/// if the source changes (size or modification time) while it is being read.
pub fn hash_into_store(src: &Path, content_dir: &Path) -> Result<StoredFile> {
    hash_into_store_with_hook(src, content_dir, || {})
}

/// [`hash_into_store`] with a hook called after the last byte was read and before the
/// source is checked for changes (lets tests change the file at the worst moment).
#[doc(hidden)]
pub fn hash_into_store_with_hook(
    src: &Path,
    content_dir: &Path,
    after_read: impl FnOnce(),
) -> Result<StoredFile> {
    let incoming = copy_and_hash(src, content_dir, true, after_read)?;
    let file = incoming.file.clone();
    name_synced(content_dir, vec![incoming])?;
    Ok(file)
}

/// Stores many files (in parallel on the current rayon pool): [`hash_into_store`] for each,
/// with one file-system sync for all of them instead of one per file. Results are in the
/// order of `sources`. On error nothing new is named in the store (temporary copies are
/// removed).
pub fn store_files(sources: &[PathBuf], content_dir: &Path) -> Result<Vec<StoredFile>> {
    if sources.len() == 1 {
        return Ok(vec![hash_into_store(&sources[0], content_dir)?]);
    }
    let incoming: Vec<Incoming> = sources
        .par_iter()
        .map(|src| copy_and_hash(src, content_dir, false, || {}))
        .collect::<Result<_>>()?;
    if incoming.iter().any(|i| i.tmp.is_some()) {
        fsutil::sync_filesystem(content_dir)?;
    }
    let files = incoming.iter().map(|i| i.file.clone()).collect();
    name_synced(content_dir, incoming)?;
    Ok(files)
}

/// Copies `src` to a temporary file in `content_dir` while hashing it; syncs the copy only
/// if `sync` (otherwise the caller syncs the file system before naming it).
fn copy_and_hash(
    src: &Path,
    content_dir: &Path,
    sync: bool,
    after_read: impl FnOnce(),
) -> Result<Incoming> {
    let name = src.display().to_string();
    let before = fs::symlink_metadata(src).map_err(|e| Error::io(src, e))?;
    if before.file_type().is_symlink() {
        return Err(Error::target(
            name,
            "is a symbolic link; add the file it points to instead",
        ));
    }
    if !before.is_file() {
        return Err(Error::target(name, "is not a regular file"));
    }
    let mut file = fs::File::open(src).map_err(|e| Error::io(src, e))?;
    // Sizes and times are compared on the open file (no second path lookup); a different
    // file put at the path in between is caught too, as it differs from `before`.
    let opened = file.metadata().map_err(|e| Error::io(src, e))?;
    if !opened.is_file() || !same_file_state(&before, &opened) {
        return Err(changed_while_added(name));
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempfile_in(content_dir)
        .map_err(|e| Error::io(content_dir, e))?;
    let mut s256 = digest::Context::new(&digest::SHA256);
    let mut s512 = digest::Context::new(&digest::SHA512);
    // Small files (the common case) are read in one go into a buffer of their size.
    let mut buf = vec![0u8; (before.len() as usize).clamp(1, 64 * 1024) + 1];
    let mut length = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(src, e))?;
        if n == 0 {
            break;
        }
        s256.update(&buf[..n]);
        s512.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| Error::io(tmp.path(), e))?;
        length += n as u64;
    }
    after_read();
    let after = file.metadata().map_err(|e| Error::io(src, e))?;
    if !same_file_state(&before, &after) || length != after.len() {
        return Err(changed_while_added(name));
    }
    let sha256 = hex::encode(s256.finish());
    let sha512 = hex::encode(s512.finish());
    let dst = content_dir.join(&sha256);
    let stored = StoredFile {
        length,
        sha256,
        sha512,
    };
    if sync && dst.exists() {
        // Same content already stored; the temporary copy is dropped. (Many files at
        // once skip this lookup: naming refuses to replace a stored file.)
        return Ok(Incoming {
            file: stored,
            tmp: None,
        });
    }
    fsutil::set_mode(tmp.as_file(), &dst, fsutil::PUBLIC_MODE)?;
    if sync {
        tmp.as_file()
            .sync_data()
            .map_err(|e| Error::io(tmp.path(), e))?;
    }
    // Closes the file: a large add must not hold one descriptor per file.
    Ok(Incoming {
        file: stored,
        tmp: Some(tmp.into_temp_path()),
    })
}

/// Whether two observations of a file agree on size and modification time (and, on
/// Unix, on which file it is).
fn same_file_state(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return false;
        }
    }
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

fn changed_while_added(name: String) -> Error {
    Error::target(
        name,
        "changed while it was being added (size or modification time differ); add it again once it is stable",
    )
}

/// Renames durable temporary copies to their hash names (never replacing a stored file)
/// and syncs the store directory, so the names are durable before any metadata that
/// lists them is staged.
fn name_synced(content_dir: &Path, incoming: Vec<Incoming>) -> Result<()> {
    let mut renamed = false;
    for i in incoming {
        let Some(tmp) = i.tmp else { continue };
        let dst = content_dir.join(&i.file.sha256);
        match tmp.persist_noclobber(&dst) {
            Ok(()) => renamed = true,
            // Two sources with the same content: the first one named it (the temporary
            // copy is removed when the error is dropped).
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&dst, e.error)),
        }
    }
    if renamed {
        fsutil::sync_dir(content_dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(b: &[u8]) -> String {
        hex::encode(digest::digest(&digest::SHA256, b))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn write_sources(dir: &Path, contents: &[&[u8]]) -> Vec<PathBuf> {
        contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p = dir.join(format!("f{i}"));
                fs::write(&p, c).unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn many_files_are_stored_under_their_hashes_and_no_temporary_copy_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let content = tmp.path().join("content");
        fs::create_dir(&content).unwrap();
        let contents: [&[u8]; 4] = [b"one", b"two", b"one", b""];
        let sources = write_sources(tmp.path(), &contents);
        let stored = store_files(&sources, &content).unwrap();
        assert_eq!(stored.len(), 4);
        for (file, bytes) in stored.iter().zip(contents) {
            assert_eq!(file.sha256, sha256_hex(bytes));
            assert_eq!(file.length, bytes.len() as u64);
            assert_eq!(fs::read(content.join(&file.sha256)).unwrap(), bytes);
        }
        // Three distinct contents, nothing else (the duplicate's copy was dropped).
        let mut want: Vec<String> = [b"one" as &[u8], b"two", b""]
            .iter()
            .map(|b| sha256_hex(b))
            .collect();
        want.sort();
        assert_eq!(names(&content), want);
    }

    #[test]
    fn a_bad_file_among_many_stores_nothing_and_leaves_no_temporary_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let content = tmp.path().join("content");
        fs::create_dir(&content).unwrap();
        let mut sources = write_sources(tmp.path(), &[b"a", b"b", b"c"]);
        let not_a_file = tmp.path().join("a-directory");
        fs::create_dir(&not_a_file).unwrap();
        sources.insert(1, not_a_file.clone());
        let err = store_files(&sources, &content).unwrap_err().to_string();
        assert!(
            err.contains(&not_a_file.display().to_string()) && err.contains("not a regular file"),
            "{err}"
        );
        assert!(names(&content).is_empty(), "{:?}", names(&content));
    }

    /// A file already stored under a hash is never replaced (the published tree may hold
    /// hard links to it), even when many files are stored at once.
    #[test]
    fn a_stored_file_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let content = tmp.path().join("content");
        fs::create_dir(&content).unwrap();
        let sources = write_sources(tmp.path(), &[b"kept", b"new"]);
        let existing = content.join(sha256_hex(b"kept"));
        fs::write(&existing, b"kept").unwrap();
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&existing).unwrap().ino()
        };
        store_files(&sources, &content).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(fs::metadata(&existing).unwrap().ino(), inode);
        }
        assert_eq!(names(&content).len(), 2);
    }
}

//! The content store: target files copied in while they are hashed, named by SHA-256.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use ring::digest;

use crate::error::{Error, Result};

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
    let mut tmp = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempfile_in(content_dir)
        .map_err(|e| Error::io(content_dir, e))?;
    let mut s256 = digest::Context::new(&digest::SHA256);
    let mut s512 = digest::Context::new(&digest::SHA512);
    let mut buf = vec![0u8; 64 * 1024];
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
    let after = fs::metadata(src).map_err(|e| Error::io(src, e))?;
    if after.len() != before.len()
        || after.modified().ok() != before.modified().ok()
        || length != after.len()
    {
        return Err(Error::target(
            name,
            "changed while it was being added (size or modification time differ); add it again once it is stable",
        ));
    }
    let sha256 = hex::encode(s256.finish());
    let sha512 = hex::encode(s512.finish());
    let dst = content_dir.join(&sha256);
    if dst.exists() {
        // Same content already stored; the temporary copy is dropped.
        return Ok(StoredFile {
            length,
            sha256,
            sha512,
        });
    }
    tmp.as_file()
        .sync_data()
        .map_err(|e| Error::io(tmp.path(), e))?;
    crate::fsutil::set_mode(tmp.as_file(), &dst, crate::fsutil::PUBLIC_MODE)?;
    tmp.persist(&dst).map_err(|e| Error::io(&dst, e.error))?;
    Ok(StoredFile {
        length,
        sha256,
        sha512,
    })
}

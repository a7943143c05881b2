//! The content store: target files copied in while they are hashed, kept under
//! `content/<first two hex digits of the SHA-256>/<sha256>`.
//!
//! Nothing lists a stored file until its bytes and its name are durable: adding files
//! copies them all, makes them durable with one file-system sync (one file sync when
//! adding a single file), and only then is metadata listing them staged. A crash before
//! that can leave an incomplete copy under a hash that nothing lists yet, so content found
//! under its name when it is added again is compared with the incoming bytes first and
//! replaced when it differs ([`store_files`], [`hash_into_store`]).
//!
//! Small files are read whole and created directly under their hash; large ones are
//! streamed through a temporary file and renamed. The 256 subdirectories let parallel
//! copies create files without queueing on one directory's lock (on two cores, storing
//! 100 000 small files into one directory was slower than with one thread) and keep every
//! directory small. Stores written by earlier versions kept each file directly in
//! `content/`; [`find_stored`] and [`list_stored`] still see those.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use ring::digest;
use tempfile::{NamedTempFile, TempPath};

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

/// Files up to this size are read whole before they are copied, so the copy is created
/// directly in its hash's subdirectory; larger ones are streamed through a temporary file
/// in the store's top directory.
const READ_WHOLE_UP_TO: u64 = 1 << 20;

/// Above this many directories to sync, one file-system sync makes their names durable
/// instead.
const SYNC_FILESYSTEM_ABOVE: usize = 16;

/// Where the store keeps the content whose SHA-256 is `sha256` (a 64-digit lowercase hex
/// string, as computed by the store).
pub fn store_path(content_dir: &Path, sha256: &str) -> PathBuf {
    content_dir.join(subdir(sha256)).join(sha256)
}

fn subdir(sha256: &str) -> &str {
    sha256.get(..2).unwrap_or("00")
}

/// Whether `s` has the form of a hex SHA-256 as the store names files (so a hash read
/// from metadata can never name a path outside the store).
fn is_sha256_name(s: &str) -> bool {
    petrel_client::manifest::check_sha256_hex(s).is_ok()
}

/// The stored copy of the content whose SHA-256 is `sha256`, if the store holds one (also
/// where stores of earlier versions put it). `None` for anything that is not a hex SHA-256.
pub fn find_stored(content_dir: &Path, sha256: &str) -> Option<PathBuf> {
    if !is_sha256_name(sha256) {
        return None;
    }
    let path = store_path(content_dir, sha256);
    if path.is_file() {
        return Some(path);
    }
    let flat = content_dir.join(sha256);
    flat.is_file().then_some(flat)
}

/// What the store holds, from one listing per subdirectory (instead of one lookup per
/// target when publishing many).
#[derive(Debug, Default)]
pub struct StoreListing {
    /// Hashes stored in their subdirectory.
    sharded: HashSet<String>,
    /// Hashes stored directly in the top directory (stores of earlier versions).
    flat: HashSet<String>,
}

impl StoreListing {
    /// The stored copy of `sha256`, if the listing has it.
    pub fn path(&self, content_dir: &Path, sha256: &str) -> Option<PathBuf> {
        if self.sharded.contains(sha256) {
            Some(store_path(content_dir, sha256))
        } else if self.flat.contains(sha256) {
            Some(content_dir.join(sha256))
        } else {
            None
        }
    }

    /// How many files the store holds.
    pub fn len(&self) -> usize {
        self.sharded.len() + self.flat.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Lists the store (an absent store holds nothing).
pub fn list_stored(content_dir: &Path) -> Result<StoreListing> {
    let mut listing = StoreListing::default();
    let entries = match fs::read_dir(content_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(Error::io(content_dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(content_dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if is_sha256_name(&name) {
            listing.flat.insert(name);
        } else if name.len() == 2 && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let dir = entry.path();
            for e in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                let e = e.map_err(|e| Error::io(&dir, e))?;
                if let Ok(n) = e.file_name().into_string() {
                    if is_sha256_name(&n) && n.starts_with(name.as_str()) {
                        listing.sharded.insert(n);
                    }
                }
            }
        }
    }
    Ok(listing)
}

/// How a copied and hashed file reached the store (not yet synced).
enum Placed {
    /// The store already held exactly these bytes.
    Already,
    /// Created under its hash name by this add; removed if the add fails before the sync.
    Direct(TempPath),
    /// In a temporary file, renamed to its hash name once durable; `replace` when the name
    /// holds different (incomplete) bytes left by a crash.
    Temp { tmp: TempPath, replace: bool },
}

/// A file copied and hashed, waiting for the sync that makes it durable.
struct Incoming {
    file: StoredFile,
    placed: Placed,
    /// Directories this copy created (their own names must be synced too).
    created_dirs: Vec<PathBuf>,
}

/// Copies `src` into the store under its SHA-256, hashing the bytes as they are copied,
/// so the hashes describe exactly the stored copy. Refuses symlinks and special files, and
/// fails if the source changes (size or modification time) while it is being read.
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
    let mut created = Vec::new();
    let stored = copy_and_hash(src, content_dir, true, &mut created, after_read).and_then(|i| {
        let file = i.file.clone();
        name_synced(content_dir, vec![i], false).map(|()| file)
    });
    if stored.is_err() {
        remove_empty_dirs(&created);
    }
    stored
}

/// Stores many files (in parallel on the current rayon pool): [`hash_into_store`] for each,
/// with one file-system sync for all of them instead of one per file. Results are in the
/// order of `sources`. On error nothing new is left in the store (copies made so far, and
/// subdirectories made for them, are removed).
pub fn store_files(sources: &[PathBuf], content_dir: &Path) -> Result<Vec<StoredFile>> {
    if sources.len() == 1 {
        return Ok(vec![hash_into_store(&sources[0], content_dir)?]);
    }
    let created = std::sync::Mutex::new(Vec::new());
    let stored = store_many(sources, content_dir, &created);
    if stored.is_err() {
        // Every copy of this add is gone by now (dropped with the error).
        remove_empty_dirs(&created.into_inner().unwrap_or_else(|e| e.into_inner()));
    }
    stored
}

fn store_many(
    sources: &[PathBuf],
    content_dir: &Path,
    created: &std::sync::Mutex<Vec<PathBuf>>,
) -> Result<Vec<StoredFile>> {
    let incoming: Vec<Incoming> = sources
        .par_iter()
        .map(|src| {
            let mut dirs = Vec::new();
            let r = copy_and_hash(src, content_dir, false, &mut dirs, || {});
            if !dirs.is_empty() {
                created
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(dirs);
            }
            r
        })
        .collect::<Result<_>>()?;
    make_durable(content_dir, incoming)
}

/// Makes copies placed without a sync durable (one file-system sync for all, then their
/// names) and returns what they hold.
fn make_durable(content_dir: &Path, incoming: Vec<Incoming>) -> Result<Vec<StoredFile>> {
    let synced = incoming
        .iter()
        .any(|i| !matches!(i.placed, Placed::Already));
    if synced {
        fsutil::sync_filesystem(content_dir)?;
    }
    let files = incoming.iter().map(|i| i.file.clone()).collect();
    name_synced(content_dir, incoming, synced)?;
    Ok(files)
}

/// Stores contents held in memory (compiled manifests) as [`store_files`] stores files:
/// hashed and placed in parallel, made durable with one sync for all (one file sync when
/// there is one), results in the order given, nothing new left in the store on error.
pub fn store_bytes(contents: &[&[u8]], content_dir: &Path) -> Result<Vec<StoredFile>> {
    let sync = contents.len() == 1;
    let created = std::sync::Mutex::new(Vec::new());
    let stored = contents
        .par_iter()
        .map(|bytes| {
            let stored = StoredFile {
                length: bytes.len() as u64,
                sha256: hex::encode(digest::digest(&digest::SHA256, bytes)),
                sha512: hex::encode(digest::digest(&digest::SHA512, bytes)),
            };
            let mut dirs = Vec::new();
            let placed = place_bytes(content_dir, &stored, bytes, sync, &mut dirs);
            if !dirs.is_empty() {
                created
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(dirs.iter().cloned());
            }
            Ok(Incoming {
                file: stored,
                placed: placed?,
                created_dirs: dirs,
            })
        })
        .collect::<Result<Vec<Incoming>>>()
        .and_then(|incoming| {
            if sync {
                let files = incoming.iter().map(|i| i.file.clone()).collect();
                name_synced(content_dir, incoming, false).map(|()| files)
            } else {
                make_durable(content_dir, incoming)
            }
        });
    if stored.is_err() {
        remove_empty_dirs(&created.into_inner().unwrap_or_else(|e| e.into_inner()));
    }
    stored
}

/// Removes the subdirectories an add made, where they are empty (after a failed add).
fn remove_empty_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

/// Checks that `src` is a regular file and opens it, returning it with its state.
fn open_regular(src: &Path) -> Result<(fs::File, fs::Metadata)> {
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
    let file = fs::File::open(src).map_err(|e| Error::io(src, e))?;
    // Sizes and times are compared on the open file (no second path lookup); a different
    // file put at the path in between is caught too, as it differs from `before`.
    let opened = file.metadata().map_err(|e| Error::io(src, e))?;
    if !opened.is_file() || !same_file_state(&before, &opened) {
        return Err(changed_while_added(name));
    }
    Ok((file, before))
}

/// Runs `make` in `dir`, creating `dir` first when `make` says it is missing (then
/// `created_dirs` gets it, as its own name must be synced too).
fn in_dir<T>(
    dir: &Path,
    created_dirs: &mut Vec<PathBuf>,
    make: impl Fn() -> std::io::Result<T>,
) -> std::io::Result<T> {
    match make() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)?;
            created_dirs.push(dir.to_path_buf());
            make()
        }
        other => other,
    }
}

/// A new temporary file in `dir` (made if missing).
fn temp_in(dir: &Path, created_dirs: &mut Vec<PathBuf>) -> Result<NamedTempFile> {
    in_dir(dir, created_dirs, || {
        tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(dir)
    })
    .map_err(|e| Error::io(dir, e))
}

/// Whether the file at `path` holds exactly `length` bytes hashing to `sha256`.
fn holds(path: &Path, length: u64, sha256: &str) -> Result<bool> {
    match fs::metadata(path) {
        Ok(m) if m.len() == length => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(path, e)),
    }
    let got = petrel_client::agent::inventory::sha256_file(path).map_err(|e| Error::io(path, e))?;
    Ok(got == sha256)
}

/// Copies `src` into the store while hashing it; syncs the copy only if `sync`
/// (otherwise the caller syncs the file system before anything lists it).
fn copy_and_hash(
    src: &Path,
    content_dir: &Path,
    sync: bool,
    created_dirs: &mut Vec<PathBuf>,
    after_read: impl FnOnce(),
) -> Result<Incoming> {
    let (mut file, before) = open_regular(src)?;
    let unchanged = |file: &fs::File, length: u64| -> Result<()> {
        let after = file.metadata().map_err(|e| Error::io(src, e))?;
        if !same_file_state(&before, &after) || length != after.len() {
            return Err(changed_while_added(src.display().to_string()));
        }
        Ok(())
    };
    let (stored, placed) = if before.len() <= READ_WHOLE_UP_TO {
        // Small files (the common case) are read whole and checked first, then created
        // directly under their hash.
        let mut bytes = Vec::with_capacity(before.len() as usize + 1);
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(src, e))?;
        after_read();
        unchanged(&file, bytes.len() as u64)?;
        let stored = StoredFile {
            length: bytes.len() as u64,
            sha256: hex::encode(digest::digest(&digest::SHA256, &bytes)),
            sha512: hex::encode(digest::digest(&digest::SHA512, &bytes)),
        };
        let placed = place_bytes(content_dir, &stored, &bytes, sync, created_dirs)?;
        (stored, placed)
    } else {
        // Large files are streamed through a temporary file in the store's top directory.
        let mut tmp = temp_in(content_dir, created_dirs)?;
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
        unchanged(&file, length)?;
        let stored = StoredFile {
            length,
            sha256: hex::encode(s256.finish()),
            sha512: hex::encode(s512.finish()),
        };
        let placed = if sync
            && find_stored(content_dir, &stored.sha256)
                .map(|p| holds(&p, length, &stored.sha256))
                .transpose()?
                == Some(true)
        {
            Placed::Already
        } else {
            finish_copy(tmp.as_file(), tmp.path(), sync)?;
            Placed::Temp {
                tmp: tmp.into_temp_path(),
                replace: false,
            }
        };
        (stored, placed)
    };
    Ok(Incoming {
        file: stored,
        placed,
        created_dirs: created_dirs.clone(),
    })
}

/// Gives a new copy its public mode and, if `sync`, makes its bytes durable.
fn finish_copy(file: &fs::File, path: &Path, sync: bool) -> Result<()> {
    fsutil::set_mode(file, path, fsutil::PUBLIC_MODE)?;
    if sync {
        file.sync_data().map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Puts the bytes of a small file under their hash name: created there directly, or left
/// alone when the name already holds exactly these bytes, or written to a temporary file
/// that replaces the name when it holds anything else (an incomplete copy from a crash).
fn place_bytes(
    content_dir: &Path,
    stored: &StoredFile,
    bytes: &[u8],
    sync: bool,
    created_dirs: &mut Vec<PathBuf>,
) -> Result<Placed> {
    if sync {
        // One file: content of an earlier version's flat store counts too.
        if let Some(found) = find_stored(content_dir, &stored.sha256) {
            if fs::read(&found).map_err(|e| Error::io(&found, e))? == bytes {
                return Ok(Placed::Already);
            }
        }
    }
    let dst = store_path(content_dir, &stored.sha256);
    let dir = dst.parent().unwrap_or(content_dir);
    let created = in_dir(dir, created_dirs, || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dst)
    });
    let write = |f: &mut fs::File, path: &Path| -> Result<()> {
        f.write_all(bytes).map_err(|e| Error::io(path, e))?;
        finish_copy(f, path, sync)
    };
    match created {
        Ok(mut f) => {
            // Removed again if anything fails before the sync.
            let guard = TempPath::try_from_path(&dst).map_err(|e| Error::io(&dst, e))?;
            write(&mut f, &dst)?;
            Ok(Placed::Direct(guard))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if fs::read(&dst).map_err(|e| Error::io(&dst, e))? == bytes {
                return Ok(Placed::Already);
            }
            let mut tmp = temp_in(dir, created_dirs)?;
            let path = tmp.path().to_path_buf();
            write(tmp.as_file_mut(), &path)?;
            Ok(Placed::Temp {
                tmp: tmp.into_temp_path(),
                replace: true,
            })
        }
        Err(e) => Err(Error::io(&dst, e)),
    }
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

/// Gives durable copies their names: keeps the ones created under their name, renames
/// temporary copies (in parallel: the names are spread over the subdirectories; never
/// replacing a stored file unless it held different bytes), and syncs the directories
/// that changed, so the names are durable before any metadata that lists them is staged.
/// `fs_synced`: the whole file system was synced after the copies were made.
fn name_synced(content_dir: &Path, incoming: Vec<Incoming>, fs_synced: bool) -> Result<()> {
    let changed: Vec<Vec<PathBuf>> = incoming
        .into_par_iter()
        .map(|i| {
            let dst = store_path(content_dir, &i.file.sha256);
            let mut dirs = Vec::new();
            if !fs_synced {
                // New subdirectories: their entries and their own names.
                for d in i.created_dirs {
                    dirs.push(d.parent().unwrap_or(content_dir).to_path_buf());
                    dirs.push(d);
                }
            }
            match i.placed {
                Placed::Already => {}
                Placed::Direct(guard) => {
                    guard.keep().map_err(|e| Error::io(&dst, e.error))?;
                    if !fs_synced {
                        dirs.push(dst.parent().unwrap_or(content_dir).to_path_buf());
                    }
                }
                Placed::Temp { tmp, replace } => {
                    let parent = dst.parent().unwrap_or(content_dir);
                    if tmp.parent() != Some(parent) {
                        // Streamed in the top directory: the subdirectory may be missing.
                        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                        dirs.push(tmp.parent().unwrap_or(content_dir).to_path_buf());
                    }
                    dirs.push(parent.to_path_buf());
                    rename_into(tmp, &dst, replace, i.file.length, &i.file.sha256)?;
                }
            }
            Ok(dirs)
        })
        .collect::<Result<_>>()?;
    let mut dirs: Vec<PathBuf> = changed.into_iter().flatten().collect();
    dirs.sort();
    dirs.dedup();
    if dirs.len() > SYNC_FILESYSTEM_ABOVE {
        return fsutil::sync_filesystem(content_dir);
    }
    for dir in &dirs {
        fsutil::sync_dir(dir)?;
    }
    Ok(())
}

/// Renames a durable temporary copy to `dst`; an existing `dst` is left alone when it holds
/// the same bytes (two sources with the same content) and replaced otherwise.
fn rename_into(tmp: TempPath, dst: &Path, replace: bool, length: u64, sha256: &str) -> Result<()> {
    if replace {
        return tmp.persist(dst).map_err(|e| Error::io(dst, e.error));
    }
    match tmp.persist_noclobber(dst) {
        Ok(()) => Ok(()),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            if holds(dst, length, sha256)? {
                Ok(()) // the temporary copy is removed when `e` is dropped
            } else {
                e.path.persist(dst).map_err(|e| Error::io(dst, e.error))
            }
        }
        Err(e) => Err(Error::io(dst, e.error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use petrel_client::manifest::sha256_hex;

    /// Every file under `dir` (recursively), as paths relative to it.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(dir).unwrap();
                rel.to_str().unwrap().to_string()
            })
            .collect();
        v.sort();
        v
    }

    fn in_store(sha256: &str) -> String {
        format!("{}/{sha256}", &sha256[..2])
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
            assert_eq!(fs::read(store_path(&content, &file.sha256)).unwrap(), bytes);
        }
        // Three distinct contents, nothing else (the duplicate's copy was dropped).
        let mut want: Vec<String> = [b"one" as &[u8], b"two", b""]
            .iter()
            .map(|b| in_store(&sha256_hex(b)))
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
        let existing = store_path(&content, &sha256_hex(b"kept"));
        fs::create_dir_all(existing.parent().unwrap()).unwrap();
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

    /// Files larger than what is read whole are streamed through the top directory and
    /// still end up under their hash, with nothing temporary left.
    #[test]
    fn a_large_file_is_streamed_into_its_subdirectory() {
        let tmp = tempfile::tempdir().unwrap();
        let content = tmp.path().join("content");
        fs::create_dir(&content).unwrap();
        let big: Vec<u8> = (0..READ_WHOLE_UP_TO + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let small = b"small".to_vec();
        let sources = write_sources(tmp.path(), &[&big, &small]);
        let stored = store_files(&sources, &content).unwrap();
        assert_eq!(stored[0].sha256, sha256_hex(&big));
        assert_eq!(stored[0].length, big.len() as u64);
        assert_eq!(
            fs::read(store_path(&content, &stored[0].sha256)).unwrap(),
            big
        );
        let mut want = vec![in_store(&sha256_hex(&big)), in_store(&sha256_hex(&small))];
        want.sort();
        assert_eq!(names(&content), want);
        // One at a time too.
        let one = tmp.path().join("one-big");
        fs::write(&one, [&big[..], b"!"].concat()).unwrap();
        let s = hash_into_store(&one, &content).unwrap();
        assert_eq!(
            fs::read(store_path(&content, &s.sha256)).unwrap().len(),
            big.len() + 1
        );
        assert_eq!(names(&content).len(), 3);
    }

    /// Stores written by earlier versions kept files directly in the top directory: they
    /// are still found and listed, and content they hold is not stored twice.
    #[test]
    fn files_in_the_flat_layout_of_earlier_stores_are_still_found() {
        let tmp = tempfile::tempdir().unwrap();
        let content = tmp.path().join("content");
        fs::create_dir(&content).unwrap();
        let old = sha256_hex(b"old layout");
        fs::write(content.join(&old), b"old layout").unwrap();
        assert_eq!(find_stored(&content, &old), Some(content.join(&old)));
        let src = write_sources(tmp.path(), &[b"old layout"]);
        hash_into_store(&src[0], &content).unwrap();
        assert_eq!(names(&content), vec![old.clone()]);
        let new = hash_into_store(
            &write_sources(&tmp.path().join("."), &[b"new"])[0],
            &content,
        )
        .unwrap();
        let listing = list_stored(&content).unwrap();
        assert_eq!(listing.len(), 2);
        assert_eq!(listing.path(&content, &old), Some(content.join(&old)));
        assert_eq!(
            listing.path(&content, &new.sha256),
            Some(store_path(&content, &new.sha256))
        );
        assert_eq!(listing.path(&content, &sha256_hex(b"absent")), None);
    }

    /// A hash read from metadata never names a path outside the store.
    #[test]
    fn only_hex_sha256_names_are_looked_up() {
        let tmp = tempfile::tempdir().unwrap();
        let content = tmp.path().join("content");
        fs::create_dir(&content).unwrap();
        fs::write(tmp.path().join("secret"), b"x").unwrap();
        assert_eq!(find_stored(&content, "../secret"), None);
        let upper = sha256_hex(b"x").to_uppercase();
        fs::write(content.join(&upper), b"x").unwrap();
        assert_eq!(find_stored(&content, &upper), None);
    }

    /// A crash after a copy got its name but before the sync can leave an incomplete copy
    /// under the hash (nothing lists it yet). Adding that content again must not trust the
    /// name: the copy is compared and replaced, one file at a time and many at once.
    #[test]
    fn an_incomplete_copy_left_by_a_crash_is_replaced_when_the_content_is_added_again() {
        let tmp = tempfile::tempdir().unwrap();
        let content = tmp.path().join("content");
        let small = b"complete small file\n".repeat(10);
        let large: Vec<u8> = (0..READ_WHOLE_UP_TO + 7).map(|i| (i % 253) as u8).collect();
        for (i, bytes) in [&small, &large].into_iter().enumerate() {
            for many in [false, true] {
                let _ = fs::remove_dir_all(&content);
                let dst = store_path(&content, &sha256_hex(bytes));
                fs::create_dir_all(dst.parent().unwrap()).unwrap();
                // What a crash leaves: a prefix of the bytes (here: half), or nothing.
                fs::write(&dst, &bytes[..bytes.len() / 2]).unwrap();
                let dir = tmp.path().join(format!("src-{i}-{many}"));
                fs::create_dir_all(&dir).unwrap();
                let sources = write_sources(&dir, &[bytes, b"other"]);
                if many {
                    store_files(&sources, &content).unwrap();
                } else {
                    hash_into_store(&sources[0], &content).unwrap();
                }
                assert_eq!(fs::read(&dst).unwrap(), *bytes, "file {i}, many: {many}");
                assert!(
                    names(&content).iter().all(|n| !n.contains(".incoming-")),
                    "{:?}",
                    names(&content)
                );
            }
        }
    }
}

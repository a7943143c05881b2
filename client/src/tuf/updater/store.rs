//! Local persistence of trusted metadata: exact verified bytes, atomic replace-by-rename.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::tuf::schema::encode_role_name;

/// The trusted metadata directory.
///
/// Files use non-versioned names: `root.json`, `timestamp.json`, `snapshot.json`,
/// `targets.json` and `<encoded role>.json` for delegated roles (see
/// [`encode_role_name`]). Each holds the exact bytes that were verified. Writes go to a
/// temporary file in the same directory, are fsynced, and are renamed over the old file, so a
/// power cut leaves either the old or the new version, never a torn one.
#[derive(Clone, Debug)]
pub struct MetadataStore {
    dir: PathBuf,
}

/// The file name under which a role's metadata is stored (and, with a version prefix,
/// fetched): `targets.json`, `vendor.json`, `a%2Fb.json`.
pub fn role_file_name(role: &str) -> String {
    format!("{}.json", encode_role_name(role))
}

impl MetadataStore {
    /// Opens (creating if needed) the directory.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(MetadataStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a stored file.
    pub fn path(&self, name: &str) -> PathBuf {
        debug_assert!(!name.contains('/') && !name.starts_with('.'));
        self.dir.join(name)
    }

    /// Reads a stored file; `Ok(None)` if it does not exist. A file longer than `max_len`
    /// is reported as an error rather than read into memory.
    pub fn read(&self, name: &str, max_len: u64) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        file.take(max_len + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > max_len {
            return Err(io::Error::other(format!(
                "{} is larger than {max_len} bytes",
                path.display()
            )));
        }
        Ok(Some(buf))
    }

    /// Atomically replaces a stored file with `bytes`.
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        write_atomic(&self.path(name), bytes)
    }

    /// Deletes a stored file (no error if it is already gone).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.path(name)) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".petrel-tmp-")
        .tempfile_in(parent)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(parent);
    Ok(())
}

/// Makes a rename durable. Best effort: not every platform can fsync a directory.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(d.path().join("md")).unwrap();
        assert_eq!(s.read("root.json", 10).unwrap(), None);
        s.write("root.json", b"abc").unwrap();
        s.write("root.json", b"abcd").unwrap();
        assert_eq!(s.read("root.json", 10).unwrap().unwrap(), b"abcd");
        assert!(s.read("root.json", 3).is_err());
        s.remove("root.json").unwrap();
        s.remove("root.json").unwrap();
        let leftovers: Vec<_> = fs::read_dir(s.dir()).unwrap().collect();
        assert!(leftovers.is_empty(), "no temporary files are left behind");
    }

    #[test]
    fn role_file_names_are_flat() {
        assert_eq!(role_file_name("targets"), "targets.json");
        assert_eq!(role_file_name("../x"), "%2E.%2Fx.json");
    }
}

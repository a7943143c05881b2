//! Target download (spec 5.7): streamed to a temporary file, length and hashes verified, renamed into place.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use tracing::{debug, info};

use super::delegation::TargetInfo;
use super::hashes::HashingWriter;
use super::store::sync_dir;
use super::{UpdateError, Updater};
use crate::fetch::encode_path_segment;
use crate::tuf::schema::{self, encode_role_name, Hashes};

/// Longest local file name produced by [`local_target_file_name`].
const MAX_FILE_NAME: usize = 200;

/// Refuses target paths that could address something other than a file below the targets
/// directory (empty, absolute, `.`/`..`/empty segments, backslashes, control characters,
/// drive letters), using the crate's one definition, [`schema::check_target_path`].
pub(crate) fn check_target_path(path: &str) -> Result<(), UpdateError> {
    schema::check_target_path(path).map_err(|r| UpdateError::Target {
        path: path.to_string(),
        reason: format!("unsafe target path refused: {r}"),
    })
}

/// A flat, safe local file name for a target path: every byte outside `[A-Za-z0-9._~-]`
/// (and a leading `.`) is percent-encoded, so `apps/x/app.bin` becomes `apps%2Fx%2Fapp.bin`
/// and no target path can name a directory, a parent or a hidden file. The same path always
/// gives the same name; very long names are shortened with a SHA-256 suffix.
pub fn local_target_file_name(target_path: &str) -> Result<String, UpdateError> {
    if target_path.is_empty() {
        return Err(UpdateError::Target {
            path: String::new(),
            reason: "empty target path".into(),
        });
    }
    let name = encode_role_name(target_path);
    if name.len() <= MAX_FILE_NAME {
        return Ok(name);
    }
    let digest = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        target_path.as_bytes(),
    ));
    // The encoded name is ASCII; do not split a `%XX` escape.
    let mut cut = MAX_FILE_NAME - digest.len() - 1;
    if let Some(p) = name[..cut].rfind('%') {
        if cut - p < 3 {
            cut = p;
        }
    }
    Ok(format!("{}-{digest}", &name[..cut]))
}

/// The URL of a target: `<base>/<dir>/<hash>.<name>` with hash prefixes (the first hash in
/// the sorted `hashes` map, as python-tuf does), `<base>/<dir>/<name>` without. Each path
/// segment is percent-encoded.
pub(crate) fn target_url(
    base: &str,
    path: &str,
    hashes: &Hashes,
    prefix_with_hash: bool,
) -> Result<String, UpdateError> {
    check_target_path(path)?;
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, path),
    };
    let name = if prefix_with_hash {
        let hash = hashes.values().next().ok_or_else(|| UpdateError::Target {
            path: path.to_string(),
            reason: "no hashes to build a consistent-snapshot URL".into(),
        })?;
        format!("{hash}.{name}")
    } else {
        name.to_string()
    };
    let mut url = base.trim_end_matches('/').to_string();
    for seg in dir.into_iter().flat_map(|d| d.split('/')) {
        url.push('/');
        url.push_str(&encode_path_segment(seg));
    }
    url.push('/');
    url.push_str(&encode_path_segment(&name));
    Ok(url)
}

impl Updater {
    /// Whether `local` already holds the target: same length and every supported hash
    /// matching. Reads the file in chunks.
    pub fn find_cached_target(&self, info: &TargetInfo, local: &Path) -> Result<bool, UpdateError> {
        let io_err = |source: io::Error| UpdateError::TargetIo {
            path: info.path.clone(),
            file: local.to_path_buf(),
            source,
        };
        let file = match File::open(local) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(e)),
        };
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() || meta.len() != info.file.length {
            return Ok(false);
        }
        let mut w = HashingWriter::new(&info.file.hashes, io::sink());
        io::copy(&mut file.take(info.file.length + 1), &mut w).map_err(io_err)?;
        let ok = w.verify(Some(info.file.length), &info.file.hashes).is_ok();
        debug!(
            "{}: cached copy of {:?} {}",
            local.display(),
            info.path,
            if ok { "matches" } else { "does not match" }
        );
        Ok(ok)
    }

    /// Downloads a target from the configured target base URL to `dest` (see
    /// [`Updater::download_target_from`]).
    pub fn download_target(&self, info: &TargetInfo, dest: &Path) -> Result<(), UpdateError> {
        let base = self
            .config
            .target_base_url
            .as_deref()
            .ok_or_else(|| UpdateError::Target {
                path: info.path.clone(),
                reason: "no target base URL configured".into(),
            })?;
        self.download_target_from(info, dest, base)
    }

    /// Downloads a target (spec 5.7.3) from `target_base_url` to `dest`: at most `length`
    /// bytes are accepted, streamed through the hashers into a temporary file beside `dest`;
    /// only when length and every supported hash match is the file fsynced and renamed to
    /// `dest`. On any error `dest` is untouched and the temporary file is removed.
    pub fn download_target_from(
        &self,
        info: &TargetInfo,
        dest: &Path,
        target_base_url: &str,
    ) -> Result<(), UpdateError> {
        let trusted = self.trusted.as_ref().ok_or(UpdateError::NotRefreshed)?;
        let prefix = trusted.consistent_snapshot() && self.config.prefix_targets_with_hash;
        let url = target_url(target_base_url, &info.path, &info.file.hashes, prefix)?;
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let io_err = |file: &Path, source: io::Error| UpdateError::TargetIo {
            path: info.path.clone(),
            file: file.to_path_buf(),
            source,
        };
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".petrel-tmp-")
            .tempfile_in(parent)
            .map_err(|e| io_err(parent, e))?;
        debug!("downloading {:?} from {url}", info.path);
        {
            let buffered = BufWriter::with_capacity(64 * 1024, tmp.as_file_mut());
            let mut sink = HashingWriter::new(&info.file.hashes, buffered);
            self.transport
                .fetch(&url, info.file.length, &mut sink)
                .map_err(|source| UpdateError::TargetFetch {
                    path: info.path.clone(),
                    url: url.clone(),
                    source,
                })?;
            let mut buffered = sink
                .verify(Some(info.file.length), &info.file.hashes)
                .map_err(|reason| UpdateError::LengthOrHash {
                    what: format!("target {:?} from {url}", info.path),
                    reason,
                })?;
            buffered.flush().map_err(|e| io_err(dest, e))?;
        }
        tmp.as_file().sync_all().map_err(|e| io_err(dest, e))?;
        tmp.persist(dest).map_err(|e| io_err(dest, e.error))?;
        sync_dir(parent);
        info!(
            "downloaded {:?} ({} bytes) to {}",
            info.path,
            info.file.length,
            dest.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_target_paths_are_refused() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a\\b",
            "a/",
        ] {
            assert!(check_target_path(p).is_err(), "{p:?} must be refused");
        }
        check_target_path("apps/vendor/app/1.0/app.bin").unwrap();
        check_target_path("..foo").unwrap();
    }

    #[test]
    fn consistent_target_url_uses_first_sorted_hash() {
        let mut h = Hashes::new();
        h.insert("sha512".into(), "bb".into());
        h.insert("sha256".into(), "aa".into());
        assert_eq!(
            target_url("http://x/targets/", "dir/sub/f i.txt", &h, true).unwrap(),
            "http://x/targets/dir/sub/aa.f%20i.txt"
        );
        assert_eq!(
            target_url("http://x/targets", "f.txt", &h, false).unwrap(),
            "http://x/targets/f.txt"
        );
    }

    #[test]
    fn local_names_are_flat_stable_and_bounded() {
        assert_eq!(local_target_file_name("a/b.txt").unwrap(), "a%2Fb.txt");
        assert_eq!(local_target_file_name("../x").unwrap(), "%2E.%2Fx");
        assert!(local_target_file_name("").is_err());
        let long = "é/".repeat(200);
        let n = local_target_file_name(&long).unwrap();
        assert!(n.len() <= MAX_FILE_NAME, "{}", n.len());
        assert_eq!(n, local_target_file_name(&long).unwrap());
        assert!(!n.contains('/'));
        assert_ne!(n, local_target_file_name(&format!("{long}x")).unwrap());
    }
}

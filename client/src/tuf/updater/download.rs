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

    /// A target path with `..` (or otherwise unsafe) is refused before any request and
    /// before anything is written, not even the destination's directory. Uses the committed
    /// good fixture repository for a real trusted set; the path-traversal attack fixture
    /// covers the same end to end (client/tests/attack_fixtures.rs).
    #[test]
    fn dot_dot_target_path_is_refused_before_any_request_or_file() {
        use crate::fetch::{FetchError, FileTransport, Transport};
        use crate::tuf::schema::TargetFile;
        use crate::tuf::updater::UpdaterConfig;
        use std::sync::{Arc, Mutex};

        struct Recording(FileTransport, Arc<Mutex<Vec<String>>>);
        impl Transport for Recording {
            fn fetch(&self, url: &str, max: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
                self.1.lock().unwrap().push(url.to_string());
                self.0.fetch(url, max, sink)
            }
        }

        let good = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/good")
            .canonicalize()
            .unwrap();
        let mut url = "file://".to_string();
        for seg in good.join("repo").iter().skip(1) {
            url.push('/');
            url.push_str(&encode_path_segment(seg.to_str().unwrap()));
        }
        let work = tempfile::tempdir().unwrap();
        let md = work.path().join("metadata");
        let root = fs::read(good.join("trusted/root.json")).unwrap();
        Updater::init_trusted_root(&md, &root).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let config = UpdaterConfig::new(format!("{url}/metadata"))
            .with_target_base_url(format!("{url}/targets"));
        let mut updater =
            Updater::new(config, Recording(FileTransport::new(), log.clone()), &md).unwrap();
        updater.refresh().unwrap();
        let genuine = updater.get_target_info("README.txt").unwrap().unwrap();
        let md_files = |dir: &Path| {
            let mut v: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let md_before = md_files(&md);

        let staging = work.path().join("staging");
        for path in [
            "../../etc/passwd",
            "../x",
            "a/../../x",
            "..",
            "a/..",
            "/etc/passwd",
        ] {
            log.lock().unwrap().clear();
            let info = TargetInfo {
                path: path.to_string(),
                file: TargetFile {
                    length: genuine.file.length,
                    hashes: genuine.file.hashes.clone(),
                    custom: None,
                    unrecognized: Default::default(),
                },
                role: "targets".into(),
                delegation_chain: vec!["targets".into()],
            };
            let dest = staging.join("out").join("f");
            let err = updater.download_target(&info, &dest).unwrap_err();
            assert!(matches!(err, UpdateError::Target { .. }), "{path}: {err}");
            assert!(
                err.to_string().contains("unsafe target path"),
                "{path}: {err}"
            );
            assert!(log.lock().unwrap().is_empty(), "{path}: a request was made");
            assert!(!staging.exists(), "{path}: something was created");
        }
        assert_eq!(md_files(&md), md_before, "trusted metadata untouched");
        let entries: Vec<_> = fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["metadata"], "nothing written beside the metadata");
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

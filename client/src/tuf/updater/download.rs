//! Target download (spec 5.7): streamed into a temporary file, or into a partial file that a later attempt resumes with a ranged request; length and hashes verified; renamed into place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::delegation::TargetInfo;
use super::hashes::{HashingWriter, SUPPORTED_HASHES};
use super::store::sync_dir;
use super::{UpdateError, Updater};
use crate::fetch::{encode_path_segment, FetchError, RangeSink};
use crate::tuf::schema::{self, encode_role_name, Hashes};

/// Longest local file name produced by [`local_target_file_name`].
const MAX_FILE_NAME: usize = 200;

/// The file name prefix of a resumable download's partial file beside its destination.
pub const PARTIAL_PREFIX: &str = ".petrel-part-";
/// How many times one resumable download continues or restarts after an interruption.
const MAX_RESUMPTIONS: u32 = 5;
/// The delay before the first resumption; doubled for each further one.
const RESUME_BACKOFF: Duration = Duration::from_millis(if cfg!(test) { 1 } else { 250 });
/// Upper bound of the resumption delay.
const MAX_RESUME_BACKOFF: Duration = Duration::from_secs(8);
/// A partial file is fsynced after this many new bytes (and at the end of each attempt).
const SYNC_INTERVAL: u64 = 4 * 1024 * 1024;
/// Bytes buffered before they are written to the partial file.
const WRITE_BUFFER: usize = 64 * 1024;

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

/// Where a resumable download of `dest` keeps its partial file: `.petrel-part-<file name>`
/// in the same directory. `None` when `dest` has no file name.
pub fn partial_download_path(dest: &Path) -> Option<PathBuf> {
    let name = dest.file_name()?;
    let mut part = std::ffi::OsString::from(PARTIAL_PREFIX);
    part.push(name);
    Some(dest.with_file_name(part))
}

/// Progress of a resumable target download, reported after every chunk written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownloadProgress<'a> {
    /// The target path.
    pub target: &'a str,
    /// Bytes of the target held so far, including those resumed from a partial file.
    pub bytes: u64,
    /// The signed length.
    pub total: u64,
    /// Bytes of [`DownloadProgress::bytes`] that were kept from an earlier attempt's
    /// partial file (0 once the download started over).
    pub resumed: u64,
}

/// What a resumable target download did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownloadStats {
    /// Bytes received from the transport in this call (including any thrown away).
    pub transferred: u64,
    /// Bytes of the verified target that were kept from an earlier run's partial file.
    pub resumed: u64,
    /// Whether the download started over from byte 0 after it had bytes: the server ignored
    /// the range or could not satisfy it, or the result did not verify.
    pub restarted: bool,
}

/// The sink of a resumable download: the partial file (appended to through a buffer,
/// fsynced every [`SYNC_INTERVAL`] bytes), the hashers, and the progress reports. The
/// first local I/O error (e.g. a full disk) is kept in `error`, so that it is reported as
/// this file's error rather than the transport's.
struct PartialFile<'a> {
    file: File,
    buf: Vec<u8>,
    hashes: &'a Hashes,
    hasher: HashingWriter<io::Sink>,
    /// Bytes of the target held (written to the file or buffered).
    len: u64,
    unsynced: u64,
    resumed: u64,
    received: u64,
    restarts: u32,
    error: Option<io::Error>,
    /// The caller asked to stop.
    stopped: bool,
    target: &'a str,
    total: u64,
    progress: &'a mut dyn FnMut(DownloadProgress<'_>) -> ControlFlow<()>,
}

impl<'a> PartialFile<'a> {
    /// Opens (creating) the partial file at `path`; keeps its bytes when there are fewer
    /// than the signed length, feeding them through the hashers, and discards it otherwise.
    fn open(
        path: &Path,
        info: &'a TargetInfo,
        progress: &'a mut dyn FnMut(DownloadProgress<'_>) -> ControlFlow<()>,
    ) -> io::Result<Self> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        // Readable by the owner only, like the temporary files of `download_target_from`.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        let total = info.file.length;
        let mut existing = file.metadata()?.len();
        if existing > 0 && existing >= total {
            warn!(
                "{}: {existing} bytes, not fewer than the signed {total}; discarding it",
                path.display()
            );
            file.set_len(0)?;
            existing = 0;
        }
        let mut hasher = HashingWriter::new(&info.file.hashes, io::sink());
        if existing > 0 {
            let copied = io::copy(&mut (&file).take(existing), &mut hasher)?;
            if copied != existing {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("read {copied} of its {existing} bytes"),
                ));
            }
            info!(
                "resuming {:?} from {} ({existing} of {total} bytes)",
                info.path,
                path.display()
            );
        }
        file.seek(SeekFrom::Start(existing))?;
        let mut part = PartialFile {
            file,
            buf: Vec::with_capacity(WRITE_BUFFER),
            hashes: &info.file.hashes,
            hasher,
            len: existing,
            unsynced: 0,
            resumed: existing,
            received: 0,
            restarts: 0,
            error: None,
            stopped: false,
            target: &info.path,
            total,
            progress,
        };
        part.report()?;
        Ok(part)
    }

    /// Reports progress; `Err` when the caller asked to stop (the partial file is kept).
    fn report(&mut self) -> io::Result<()> {
        let flow = (self.progress)(DownloadProgress {
            target: self.target,
            bytes: self.len,
            total: self.total,
            resumed: self.resumed,
        });
        if flow.is_break() {
            // Not `ErrorKind::Interrupted`: writers retry on that.
            self.stopped = true;
            return Err(io::Error::other(
                "stopped on request; the partial download is kept and resumed next time",
            ));
        }
        Ok(())
    }

    /// Keeps the first local error and hands a copy to the caller (the transport).
    fn local<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        r.map_err(|e| {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.error.get_or_insert(e);
            copy
        })
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        self.local(r)
    }

    /// Writes the buffer and fsyncs.
    fn sync(&mut self) -> io::Result<()> {
        self.write_buffer()?;
        let r = self.file.sync_data();
        self.unsynced = 0;
        self.local(r)
    }

    /// Throws every byte away: the download starts over from byte 0.
    fn reset(&mut self) -> io::Result<()> {
        self.buf.clear();
        let r = self
            .file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(drop))
            .and_then(|()| self.file.sync_data());
        self.local(r)?;
        self.hasher = HashingWriter::new(self.hashes, io::sink());
        self.len = 0;
        self.unsynced = 0;
        self.resumed = 0;
        self.restarts += 1;
        self.report()
    }

    /// The hashers of what is held, replaced by fresh ones.
    fn take_hasher(&mut self) -> HashingWriter<io::Sink> {
        std::mem::replace(
            &mut self.hasher,
            HashingWriter::new(self.hashes, io::sink()),
        )
    }
}

impl Write for PartialFile<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.error {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        self.buf.extend_from_slice(data);
        self.hasher.write_all(data)?;
        let n = data.len() as u64;
        self.len += n;
        self.received += n;
        self.unsynced += n;
        if self.buf.len() >= WRITE_BUFFER {
            self.write_buffer()?;
        }
        if self.unsynced >= SYNC_INTERVAL {
            self.sync()?;
        }
        self.report()?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffer()
    }
}

impl RangeSink for PartialFile<'_> {
    fn start_at(&mut self, start: u64) -> io::Result<()> {
        if start == self.len {
            Ok(())
        } else if start == 0 {
            info!(
                "{:?}: the source sends the whole target; starting over from byte 0",
                self.target
            );
            self.reset()
        } else {
            Err(io::Error::other(format!(
                "the body starts at byte {start}, not at {} or 0",
                self.len
            )))
        }
    }
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

    /// The URL of a target under the configured target base URL (hash-prefixed when the
    /// trusted root asks for consistent snapshots).
    fn configured_target_url(&self, info: &TargetInfo) -> Result<String, UpdateError> {
        let base = self
            .config
            .target_base_url
            .as_deref()
            .ok_or_else(|| UpdateError::Target {
                path: info.path.clone(),
                reason: "no target base URL configured".into(),
            })?;
        let trusted = self.trusted.as_ref().ok_or(UpdateError::NotRefreshed)?;
        let prefix = trusted.consistent_snapshot() && self.config.prefix_targets_with_hash;
        let url = target_url(base, &info.path, &info.file.hashes, prefix)?;
        Ok(url)
    }

    /// Streams a target from the configured target base URL into `sink` (a device, a
    /// decoder): at most `length` bytes are accepted, hashed on the way, and the result is
    /// `Ok` only when the length and every supported hash match. The sink has then
    /// received exactly the signed bytes; on an error it holds a prefix the caller must
    /// not use. Not resumable: a new call starts from byte 0.
    pub fn download_target_to_writer(
        &self,
        info: &TargetInfo,
        sink: &mut dyn Write,
    ) -> Result<(), UpdateError> {
        let url = self.configured_target_url(info)?;
        debug!("streaming {:?} from {url}", info.path);
        let mut hashing = HashingWriter::new(&info.file.hashes, sink);
        self.transport
            .fetch(&url, info.file.length, &mut hashing)
            .map_err(|source| UpdateError::TargetFetch {
                path: info.path.clone(),
                url: url.clone(),
                source,
            })?;
        hashing
            .verify(Some(info.file.length), &info.file.hashes)
            .map_err(|reason| UpdateError::LengthOrHash {
                what: format!("target {:?} from {url}", info.path),
                reason,
            })?;
        Ok(())
    }

    /// Reads `len` bytes of a target from byte `offset` on (one range request; a source
    /// that ignores the range is read from byte 0 and the bytes before `offset` skipped).
    ///
    /// **The bytes are not verified here**: a part of a target has no signed hash. The
    /// caller must check them against signed data of its own (a tree manifest's per-file
    /// SHA-256) before using them.
    pub fn read_target_range(
        &self,
        info: &TargetInfo,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, UpdateError> {
        let url = self.configured_target_url(info)?;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= info.file.length)
            .ok_or_else(|| UpdateError::Target {
                path: info.path.clone(),
                reason: format!(
                    "bytes {offset}+{len} are past the end of the {}-byte target",
                    info.file.length
                ),
            })?;
        debug!(
            "reading bytes {offset}..{end} of {:?} from {url}",
            info.path
        );
        let mut sink = RangeTake {
            skip: 0,
            offset,
            want: len as usize,
            buf: Vec::with_capacity(len as usize),
        };
        let res = self
            .transport
            .fetch_from(&url, offset, info.file.length, &mut sink);
        // The sink stops the transfer once it has its bytes: that "error" is the success.
        if sink.buf.len() == sink.want {
            return Ok(sink.buf);
        }
        let fail = |source: FetchError| UpdateError::TargetFetch {
            path: info.path.clone(),
            url: url.clone(),
            source,
        };
        match res {
            Err(e) => Err(fail(e)),
            Ok(_) => Err(UpdateError::Target {
                path: info.path.clone(),
                reason: format!(
                    "the source sent {} of the {len} bytes asked for at {offset}",
                    sink.buf.len()
                ),
            }),
        }
    }

    /// Downloads a target from the configured target base URL to `dest`, resuming from
    /// (and leaving, on failure) a partial file beside it ([`partial_download_path`]), so
    /// that neither an interruption within this call nor a crash, reboot or network error
    /// before the next one restarts the download from zero.
    ///
    /// * A partial file shorter than the signed length is hashed again and the rest is
    ///   asked for from its end ([`Transport::fetch_from`](crate::fetch::Transport::fetch_from));
    ///   a longer or equally long one is discarded. When the source sends the whole target
    ///   instead (HTTP 200) or cannot satisfy the range (416), the download starts over
    ///   from byte 0.
    /// * A transient failure, or a body that ends early, after bytes arrived is resumed
    ///   from the new end, up to 5 times with exponential backoff; then the error is
    ///   returned and the partial file is kept for the next call. It is fsynced every
    ///   4 MiB and at the end of each attempt.
    /// * Only when the length and every supported signed hash match is the file fsynced
    ///   and renamed to `dest`. When they do not and the bytes were not all from one
    ///   response from byte 0 (a kept prefix, resumed pieces), the whole target is
    ///   downloaded once more from byte 0; a second mismatch, or a body larger than the
    ///   signed length, is returned as an error and the partial file is deleted.
    /// * A local write error (a full disk) is [`UpdateError::TargetIo`] naming the partial
    ///   file, which is kept.
    ///
    /// `progress` is called once at the start and after every chunk written; when it
    /// returns [`ControlFlow::Break`] the download stops at once with
    /// [`UpdateError::Stopped`], keeping the partial file (a stop requested by SIGTERM).
    pub fn download_target_resumable(
        &self,
        info: &TargetInfo,
        dest: &Path,
        progress: &mut dyn FnMut(DownloadProgress<'_>) -> ControlFlow<()>,
    ) -> Result<DownloadStats, UpdateError> {
        let url = self.configured_target_url(info)?;
        let hashes = &info.file.hashes;
        if !hashes
            .keys()
            .any(|k| SUPPORTED_HASHES.contains(&k.as_str()))
        {
            // Nothing could ever verify: refuse before downloading anything.
            let reason = HashingWriter::new(hashes, io::sink())
                .verify(None, hashes)
                .err()
                .unwrap_or_default();
            return Err(UpdateError::LengthOrHash {
                what: format!("target {:?}", info.path),
                reason,
            });
        }
        let part = partial_download_path(dest).ok_or_else(|| UpdateError::Target {
            path: info.path.clone(),
            reason: format!("destination {} has no file name", dest.display()),
        })?;
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let io_err = |file: &Path, source: io::Error| UpdateError::TargetIo {
            path: info.path.clone(),
            file: file.to_path_buf(),
            source,
        };
        let fetch_err = |source: FetchError| UpdateError::TargetFetch {
            path: info.path.clone(),
            url: url.clone(),
            source,
        };
        let discard = |sink: PartialFile<'_>| {
            drop(sink);
            let _ = fs::remove_file(&part);
            sync_dir(parent);
        };
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        let length = info.file.length;
        let mut sink = PartialFile::open(&part, info, progress).map_err(|e| io_err(&part, e))?;
        let mut resumptions = 0u32;
        let mut backoff = RESUME_BACKOFF;
        let mut downloaded_again = false;
        let mut resume = |resumptions: &mut u32, why: &dyn std::fmt::Display, at: u64| {
            *resumptions += 1;
            warn!(
                "{why}; resuming {:?} at byte {at} of {length} in {backoff:?} ({} of {MAX_RESUMPTIONS})",
                info.path, resumptions
            );
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_RESUME_BACKOFF);
        };
        loop {
            let offset = sink.len;
            let received_before = sink.received;
            let restarts_before = sink.restarts;
            debug!("downloading {:?} from {url} at byte {offset}", info.path);
            let result = self.transport.fetch_from(&url, offset, length, &mut sink);
            let arrived = sink.received - received_before;
            let synced = sink.sync();
            if sink.stopped {
                synced.map_err(|e| io_err(&part, e))?;
                return Err(UpdateError::Stopped {
                    path: info.path.clone(),
                    file: part.clone(),
                });
            }
            if let Some(e) = sink.error.take() {
                return Err(io_err(&part, e));
            }
            synced.map_err(|e| io_err(&part, e))?;
            // Whether everything held came from this one response, from byte 0.
            let fresh = offset == 0 || sink.restarts > restarts_before;
            match result {
                Ok(r) if r.start != offset && sink.restarts == restarts_before => {
                    discard(sink);
                    return Err(UpdateError::Target {
                        path: info.path.clone(),
                        reason: format!(
                            "the transport sent bytes from offset {} for a request from {offset} without announcing it",
                            r.start
                        ),
                    });
                }
                Ok(_) if sink.len < length => {
                    let e = FetchError::Incomplete {
                        url: url.clone(),
                        received: sink.len,
                        expected: length,
                    };
                    if arrived == 0 || resumptions >= MAX_RESUMPTIONS {
                        return Err(fetch_err(e));
                    }
                    resume(&mut resumptions, &e, sink.len);
                }
                Ok(_) => match sink.take_hasher().verify(Some(length), hashes) {
                    Ok(_) => break,
                    Err(reason) => {
                        let e = UpdateError::LengthOrHash {
                            what: format!("target {:?} from {url}", info.path),
                            reason,
                        };
                        if fresh || downloaded_again {
                            discard(sink);
                            return Err(e);
                        }
                        warn!("{e}; downloading the whole target again");
                        downloaded_again = true;
                        sink.reset().map_err(|e| io_err(&part, e))?;
                    }
                },
                Err(e @ (FetchError::RangeNotSatisfiable { .. } | FetchError::BadRange { .. }))
                    if offset > 0 =>
                {
                    // The bytes kept cannot be continued from this source.
                    sink.reset().map_err(|e| io_err(&part, e))?;
                    if resumptions >= MAX_RESUMPTIONS {
                        return Err(fetch_err(e));
                    }
                    resumptions += 1;
                    warn!(
                        "{e}; downloading {:?} from byte 0 ({resumptions} of {MAX_RESUMPTIONS})",
                        info.path
                    );
                }
                Err(e @ FetchError::TooLarge { .. }) => {
                    discard(sink);
                    return Err(fetch_err(e));
                }
                Err(e) if e.is_transient() && arrived > 0 && resumptions < MAX_RESUMPTIONS => {
                    resume(&mut resumptions, &e, sink.len);
                }
                Err(e) => return Err(fetch_err(e)),
            }
        }
        let stats = DownloadStats {
            transferred: sink.received,
            resumed: sink.resumed,
            restarted: sink.restarts > 0,
        };
        let file = sink.file;
        file.sync_all().map_err(|e| io_err(&part, e))?;
        drop(file);
        fs::rename(&part, dest).map_err(|e| io_err(dest, e))?;
        sync_dir(parent);
        info!(
            "downloaded {:?} ({length} bytes, {} resumed, {} transferred) to {}",
            info.path,
            stats.resumed,
            stats.transferred,
            dest.display()
        );
        Ok(stats)
    }
}

/// The sink of [`Updater::read_target_range`]: keeps `want` bytes from `offset` on, then
/// stops the transfer with an error.
struct RangeTake {
    /// Bytes still to skip (a source that sent the target from byte 0).
    skip: u64,
    offset: u64,
    want: usize,
    buf: Vec<u8>,
}

impl Write for RangeTake {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut d = data;
        if self.skip > 0 {
            let k = (self.skip.min(d.len() as u64)) as usize;
            self.skip -= k as u64;
            d = &d[k..];
        }
        let room = self.want - self.buf.len();
        self.buf.extend_from_slice(&d[..d.len().min(room)]);
        if self.buf.len() == self.want {
            return Err(io::Error::other("the range is complete"));
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl RangeSink for RangeTake {
    fn start_at(&mut self, start: u64) -> io::Result<()> {
        self.skip = self.offset.saturating_sub(start);
        self.buf.clear();
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

    /// The resumable download against the committed good fixture repository's trusted
    /// metadata (over `file://`) and a target of our own served by a test transport at
    /// `mem://t/…`.
    mod resumable {
        use super::*;
        use crate::fetch::{
            FetchError, FileTransport, MemoryTransport, PlainSink, RangeSink, Ranged, Transport,
        };
        use crate::tuf::schema::TargetFile;
        use crate::tuf::updater::UpdaterConfig;
        use std::collections::VecDeque;
        use std::sync::{Arc, Mutex};

        const LEN: usize = 300_000;

        /// `file://` to the fixture, everything else to `inner`.
        struct Router<T>(FileTransport, T);
        impl<T: Transport> Transport for Router<T> {
            fn fetch(&self, url: &str, max: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
                if url.starts_with("file://") {
                    self.0.fetch(url, max, sink)
                } else {
                    self.1.fetch(url, max, sink)
                }
            }
            fn fetch_from(
                &self,
                url: &str,
                offset: u64,
                max: u64,
                sink: &mut dyn RangeSink,
            ) -> Result<Ranged, FetchError> {
                if url.starts_with("file://") {
                    self.0.fetch_from(url, offset, max, sink)
                } else {
                    self.1.fetch_from(url, offset, max, sink)
                }
            }
        }

        /// What [`Faulty`] does to one request.
        #[derive(Clone, Copy, Debug)]
        enum Fault {
            /// Passes `n` body bytes, then fails with a (transient) connection reset.
            Reset(u64),
            /// Passes `n` body bytes, then ends the body without an error.
            Truncate(u64),
            /// Fails with a transient error before any byte.
            Refuse,
            /// Answers every ranged request with 416.
            Unsatisfiable,
        }

        /// A memory transport that applies one scripted fault per request, in order (then
        /// passes requests through).
        struct Faulty {
            inner: MemoryTransport,
            script: Mutex<VecDeque<Fault>>,
        }

        impl Faulty {
            fn new(inner: &MemoryTransport, script: &[Fault]) -> Arc<Self> {
                Arc::new(Faulty {
                    inner: inner.clone(),
                    script: Mutex::new(script.iter().copied().collect()),
                })
            }
        }

        /// Passes at most `left` bytes, then refuses.
        struct Cut<'a> {
            sink: &'a mut dyn RangeSink,
            left: u64,
            cut: bool,
        }
        impl Write for Cut<'_> {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                if self.left == 0 {
                    self.cut = true;
                    return Err(io::Error::other("cut"));
                }
                let n = self
                    .sink
                    .write(&data[..data.len().min(self.left as usize)])?;
                self.left -= n as u64;
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.sink.flush()
            }
        }
        impl RangeSink for Cut<'_> {
            fn start_at(&mut self, start: u64) -> io::Result<()> {
                self.sink.start_at(start)
            }
        }

        impl Transport for Faulty {
            fn fetch(&self, url: &str, max: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
                self.fetch_from(url, 0, max, &mut PlainSink(sink))
                    .map(|r| r.written)
            }
            fn fetch_from(
                &self,
                url: &str,
                offset: u64,
                max: u64,
                sink: &mut dyn RangeSink,
            ) -> Result<Ranged, FetchError> {
                let fault = self.script.lock().unwrap().pop_front();
                let reset = || FetchError::Network {
                    url: url.to_string(),
                    reason: "connection reset by peer".into(),
                };
                let n = match fault {
                    None => return self.inner.fetch_from(url, offset, max, sink),
                    Some(Fault::Refuse) => return Err(reset()),
                    Some(Fault::Unsatisfiable) if offset > 0 => {
                        return Err(FetchError::RangeNotSatisfiable {
                            url: url.to_string(),
                            offset,
                            length: None,
                        })
                    }
                    Some(Fault::Unsatisfiable) => u64::MAX,
                    Some(Fault::Reset(n) | Fault::Truncate(n)) => n,
                };
                let mut cut = Cut {
                    sink,
                    left: n,
                    cut: false,
                };
                let r = self.inner.fetch_from(url, offset, max, &mut cut);
                match (cut.cut, fault) {
                    (true, Some(Fault::Truncate(n))) => Ok(Ranged {
                        start: offset,
                        written: n,
                    }),
                    (true, _) => Err(reset()),
                    (false, _) => r,
                }
            }
        }

        /// A transport that cannot seek: it only implements `fetch`, so `fetch_from` is the
        /// default (the whole body from byte 0).
        struct NoRanges(MemoryTransport);
        impl Transport for NoRanges {
            fn fetch(&self, url: &str, max: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
                self.0.fetch(url, max, sink)
            }
        }

        struct Setup {
            _work: tempfile::TempDir,
            out: PathBuf,
            updater: Updater,
            info: TargetInfo,
            data: Vec<u8>,
            url: String,
        }

        impl Setup {
            fn dest(&self) -> PathBuf {
                self.out.join("image.bin")
            }
            fn part(&self) -> PathBuf {
                partial_download_path(&self.dest()).unwrap()
            }
            fn write_partial(&self, bytes: &[u8]) {
                fs::create_dir_all(&self.out).unwrap();
                fs::write(self.part(), bytes).unwrap();
            }
            fn download(&self) -> Result<DownloadStats, UpdateError> {
                self.download_reporting(&mut |_| ControlFlow::Continue(()))
            }
            fn download_reporting(
                &self,
                progress: &mut dyn FnMut(DownloadProgress<'_>) -> ControlFlow<()>,
            ) -> Result<DownloadStats, UpdateError> {
                self.updater
                    .download_target_resumable(&self.info, &self.dest(), progress)
            }
            fn assert_done(&self) {
                assert_eq!(
                    fs::read(self.dest()).unwrap(),
                    self.data,
                    "dest is the target"
                );
                assert!(!self.part().exists(), "the partial file is gone");
            }
        }

        fn data() -> Vec<u8> {
            let mut x = 0x2545_f491_u32;
            (0..LEN)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect()
        }

        fn hashes_of(data: &[u8]) -> Hashes {
            let mut h = Hashes::new();
            for (name, alg) in [
                ("sha256", &ring::digest::SHA256),
                ("sha512", &ring::digest::SHA512),
            ] {
                h.insert(name.into(), hex::encode(ring::digest::digest(alg, data)));
            }
            h
        }

        /// An updater over the fixture, with `served` at the target's URL in `mem` and
        /// every target request going through `transport`.
        fn setup_with(
            mem: &MemoryTransport,
            served: Option<Vec<u8>>,
            transport: impl Transport + 'static,
        ) -> Setup {
            let good = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures/good")
                .canonicalize()
                .unwrap();
            let mut base = "file://".to_string();
            for seg in good.join("repo").iter().skip(1) {
                base.push('/');
                base.push_str(&encode_path_segment(seg.to_str().unwrap()));
            }
            let work = tempfile::tempdir().unwrap();
            let md = work.path().join("metadata");
            Updater::init_trusted_root(&md, &fs::read(good.join("trusted/root.json")).unwrap())
                .unwrap();
            let config =
                UpdaterConfig::new(format!("{base}/metadata")).with_target_base_url("mem://t");
            let mut updater =
                Updater::new(config, Router(FileTransport::new(), transport), &md).unwrap();
            updater.refresh().unwrap();
            let data = data();
            let info = TargetInfo {
                path: "fw/image.bin".into(),
                file: TargetFile {
                    length: data.len() as u64,
                    hashes: hashes_of(&data),
                    custom: None,
                    unrecognized: Default::default(),
                },
                role: "targets".into(),
                delegation_chain: vec!["targets".into()],
            };
            let consistent = updater.trusted.as_ref().unwrap().consistent_snapshot();
            let url = target_url("mem://t", &info.path, &info.file.hashes, consistent).unwrap();
            mem.insert(url.clone(), served.unwrap_or_else(|| data.clone()));
            mem.clear_log();
            Setup {
                out: work.path().join("staging"),
                _work: work,
                updater,
                info,
                data,
                url,
            }
        }

        fn setup(mem: &MemoryTransport) -> Setup {
            setup_with(mem, None, mem.clone())
        }

        #[test]
        fn resume_continues_from_the_partial_and_the_result_verifies() {
            let mem = MemoryTransport::new();
            let s = setup(&mem);
            s.write_partial(&s.data[..120_000]);
            let stats = s.download().unwrap();
            s.assert_done();
            assert_eq!(mem.ranged_requests(), [(s.url.clone(), 120_000)]);
            assert_eq!(mem.request_count(), 1);
            assert_eq!(
                stats,
                DownloadStats {
                    transferred: (LEN - 120_000) as u64,
                    resumed: 120_000,
                    restarted: false
                }
            );
        }

        #[test]
        fn interrupted_download_is_resumed_within_the_same_call() {
            let mem = MemoryTransport::new();
            let faulty = Faulty::new(&mem, &[Fault::Reset(100_000), Fault::Truncate(50_000)]);
            let s = setup_with(&mem, None, faulty);
            let stats = s.download().unwrap();
            s.assert_done();
            assert_eq!(
                mem.ranged_requests(),
                [(s.url.clone(), 100_000), (s.url.clone(), 150_000)]
            );
            assert_eq!(stats.transferred, LEN as u64, "no byte was fetched twice");
            assert!(!stats.restarted);
        }

        #[test]
        fn transport_that_ignores_the_offset_still_yields_the_right_file() {
            for prefix_is_right in [true, false] {
                let mem = MemoryTransport::new();
                let s = setup_with(&mem, None, NoRanges(mem.clone()));
                if prefix_is_right {
                    s.write_partial(&s.data[..100_000]);
                } else {
                    s.write_partial(&[0xAA; 100_000]);
                }
                let stats = s.download().unwrap();
                s.assert_done();
                assert_eq!(mem.request_count(), 1, "the whole body was used once");
                assert!(stats.restarted);
                assert_eq!(stats.resumed, 0);
                assert_eq!(stats.transferred, LEN as u64);
            }
        }

        #[test]
        fn corrupt_prefix_is_detected_at_the_end_and_the_whole_target_downloaded_again() {
            let mem = MemoryTransport::new();
            let s = setup(&mem);
            let mut wrong = s.data[..100_000].to_vec();
            wrong[4_242] ^= 0x01;
            s.write_partial(&wrong);
            let stats = s.download().unwrap();
            s.assert_done();
            assert_eq!(mem.requests(), [s.url.clone(), s.url.clone()]);
            assert_eq!(mem.ranged_requests(), [(s.url.clone(), 100_000)]);
            assert!(stats.restarted);
            assert_eq!(stats.resumed, 0);
            assert_eq!(stats.transferred, (2 * LEN - 100_000) as u64);
        }

        #[test]
        fn a_second_mismatch_is_a_hash_error_and_leaves_no_partial() {
            let mem = MemoryTransport::new();
            let mut bad = data();
            bad[LEN - 1] ^= 0x01;
            let s = setup_with(&mem, Some(bad.clone()), mem.clone());
            s.write_partial(&bad[..1000]);
            let err = s.download().unwrap_err();
            assert!(matches!(err, UpdateError::LengthOrHash { .. }), "{err}");
            assert_eq!(
                mem.request_count(),
                2,
                "downloaded once more from 0, not again"
            );
            assert!(!s.part().exists() && !s.dest().exists());
        }

        #[test]
        fn mismatch_of_one_whole_response_is_not_downloaded_again() {
            let mem = MemoryTransport::new();
            let mut bad = data();
            bad[7] ^= 0x01;
            let s = setup_with(&mem, Some(bad), mem.clone());
            let err = s.download().unwrap_err();
            assert!(matches!(err, UpdateError::LengthOrHash { .. }), "{err}");
            assert_eq!(
                mem.request_count(),
                1,
                "a verification error is not retried"
            );
            assert!(!s.part().exists() && !s.dest().exists());
        }

        #[test]
        fn partial_longer_than_or_as_long_as_the_signed_length_is_discarded() {
            for extra in [0usize, 10] {
                let mem = MemoryTransport::new();
                let s = setup(&mem);
                let mut long = vec![0x55; LEN + extra];
                long[..1000].copy_from_slice(&s.data[..1000]);
                s.write_partial(&long);
                let stats = s.download().unwrap();
                s.assert_done();
                assert!(mem.ranged_requests().is_empty(), "asked from 0");
                assert_eq!(stats.resumed, 0);
                assert_eq!(stats.transferred, LEN as u64);
            }
        }

        #[test]
        fn partial_survives_an_error_and_is_used_by_the_next_call() {
            let mem = MemoryTransport::new();
            let faulty = Faulty::new(&mem, &[Fault::Reset(100_000), Fault::Refuse]);
            let s = setup_with(&mem, None, faulty);
            let err = s.download().unwrap_err();
            assert!(
                matches!(&err, UpdateError::TargetFetch { source, .. } if source.is_transient()),
                "{err}"
            );
            assert!(!s.dest().exists());
            assert_eq!(fs::read(s.part()).unwrap(), s.data[..100_000]);
            // The next call (the script is used up: the network is back) continues it.
            let stats = s.download().unwrap();
            s.assert_done();
            assert_eq!(
                mem.ranged_requests().last(),
                Some(&(s.url.clone(), 100_000))
            );
            assert_eq!(stats.resumed, 100_000);
            assert_eq!(stats.transferred, (LEN - 100_000) as u64);
        }

        #[test]
        fn resumptions_within_one_call_are_bounded_and_keep_the_partial() {
            let mem = MemoryTransport::new();
            let faulty = Faulty::new(&mem, &[Fault::Reset(1000); 20]);
            let s = setup_with(&mem, None, faulty);
            let err = s.download().unwrap_err();
            assert!(matches!(err, UpdateError::TargetFetch { .. }), "{err}");
            assert_eq!(
                mem.request_count(),
                1 + MAX_RESUMPTIONS as usize,
                "one attempt and {MAX_RESUMPTIONS} resumptions"
            );
            let kept = fs::read(s.part()).unwrap();
            assert_eq!(kept, s.data[..kept.len()]);
            assert_eq!(kept.len(), 1000 * (1 + MAX_RESUMPTIONS as usize));
        }

        #[test]
        fn range_not_satisfiable_restarts_from_zero() {
            let mem = MemoryTransport::new();
            let faulty = Faulty::new(&mem, &[Fault::Unsatisfiable]);
            let s = setup_with(&mem, None, faulty);
            s.write_partial(&s.data[..5000]);
            let stats = s.download().unwrap();
            s.assert_done();
            assert!(stats.restarted);
            assert_eq!(stats.resumed, 0);
            assert_eq!(
                mem.requests(),
                std::slice::from_ref(&s.url),
                "then one from 0"
            );
        }

        #[test]
        fn body_larger_than_the_signed_length_is_not_retried_and_leaves_no_partial() {
            let mem = MemoryTransport::new();
            let mut long = data();
            long.push(0);
            let s = setup_with(&mem, Some(long), mem.clone());
            s.write_partial(&s.data[..1000]);
            let err = s.download().unwrap_err();
            assert!(
                matches!(
                    err,
                    UpdateError::TargetFetch {
                        source: FetchError::TooLarge { .. },
                        ..
                    }
                ),
                "{err}"
            );
            assert_eq!(mem.request_count(), 1);
            assert!(!s.part().exists() && !s.dest().exists());
        }

        #[test]
        fn progress_reports_reach_the_total() {
            let mem = MemoryTransport::new();
            let faulty = Faulty::new(&mem, &[Fault::Reset(64 * 1024)]);
            let s = setup_with(&mem, None, faulty);
            s.write_partial(&s.data[..10_000]);
            let mut seen = Vec::new();
            s.download_reporting(&mut |p| {
                seen.push((p.target.to_string(), p.bytes, p.total, p.resumed));
                ControlFlow::Continue(())
            })
            .unwrap();
            s.assert_done();
            let total = LEN as u64;
            assert_eq!(
                seen.first().unwrap(),
                &("fw/image.bin".into(), 10_000, total, 10_000)
            );
            assert_eq!(
                seen.last().unwrap(),
                &("fw/image.bin".into(), total, total, 10_000)
            );
            assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "never backwards");
            assert!(seen.len() > 3, "reported per chunk: {}", seen.len());
        }

        #[test]
        fn a_stop_requested_by_the_caller_ends_the_download_and_keeps_the_partial() {
            let mem = MemoryTransport::new();
            let s = setup(&mem);
            let e = s
                .download_reporting(&mut |p| {
                    if p.bytes > 0 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap_err();
            assert!(matches!(&e, UpdateError::Stopped { .. }), "{e}");
            assert!(!s.dest().exists(), "nothing unverified is in place");
            let kept = fs::metadata(s.part()).unwrap().len();
            assert!(kept > 0, "the partial is kept");
            s.download().unwrap();
            s.assert_done();
        }

        /// A full disk: `/dev/full` as the partial file accepts no byte.
        #[cfg(target_os = "linux")]
        #[test]
        fn disk_full_is_an_error_naming_the_partial_file_which_is_kept() {
            let mem = MemoryTransport::new();
            let s = setup(&mem);
            fs::create_dir_all(&s.out).unwrap();
            std::os::unix::fs::symlink("/dev/full", s.part()).unwrap();
            let err = s.download().unwrap_err();
            match &err {
                UpdateError::TargetIo { file, source, .. } => {
                    assert_eq!(file, &s.part());
                    assert_eq!(source.raw_os_error(), Some(28), "{err}");
                }
                other => panic!("{other}"),
            }
            assert!(err.to_string().contains(".petrel-part-image.bin"), "{err}");
            assert!(
                fs::symlink_metadata(s.part()).is_ok(),
                "the partial is kept"
            );
            assert_eq!(mem.request_count(), 1, "not retried");
        }

        #[test]
        fn partial_file_is_named_after_the_destination() {
            assert_eq!(
                partial_download_path(Path::new("/s/c-1/a%2Fb.bin")).unwrap(),
                Path::new("/s/c-1/.petrel-part-a%2Fb.bin")
            );
            assert!(partial_download_path(Path::new("/")).is_none());
        }
    }
}

//! Owns the delta formats and the choice between them: zstd patch-from deltas (here),
//! chunked deltas for images ([`chunked`]), bsdiff and executable-aware bsdiff deltas
//! ([`bsdiff`], [`exec`]), and [`make_best`], which builds every format that fits a pair
//! and keeps the smallest.
//!
//! A delta turns the exact bytes with SHA-256 `B` (the *base*, what a device has installed)
//! into the bytes with SHA-256 `R` (the *result*, a signed artifact). It is published as the
//! TUF target `deltas/<R>/<B>.zst` ([`target_path`]) and its bytes are one zstd frame
//! compressed with the base as reference prefix (zstd's "patch-from"), with a window large
//! enough to reach from the end of the result back to the start of the base. Its target
//! custom metadata is `{"delta": DeltaMeta}` ([`DeltaMeta`], [`DeltaMeta::to_custom`]).
//!
//! Applying is bounded: the output is capped at the caller's `max_len` (the artifact's
//! signed length), and the decoder refuses frames that need a window larger than base plus
//! result (rounded up to a power of two) or [`MAX_WINDOW_LOG`]. A delta is never trusted
//! for the result: the caller checks the output against the artifact's own signed length
//! and hash.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zstd::zstd_safe::{self, CParameter};

pub mod bsdiff;
pub mod chunked;
pub mod exec;
mod map;
mod packed;

/// The `format` of a zstd patch-from delta.
pub const FORMAT: &str = "zstd-patch";
/// The target path prefix of deltas.
pub const PREFIX: &str = "deltas/";
/// The largest zstd window (log2) a delta may need: base plus result of at most 2 GiB.
pub const MAX_WINDOW_LOG: u32 = 31;
/// The smallest zstd window (log2).
const MIN_WINDOW_LOG: u32 = 10;
/// The compression level deltas are built with.
pub const LEVEL: i32 = 19;
/// The level of the zstd patch-from candidate of a pair that gets an executable-aware
/// delta (two ELF files of one architecture). There zstd wins only when almost nothing
/// changed, and a fast level finds those matches as well: on the 96 changed ELF files of
/// a PostgreSQL package tree, the best deltas summed 341,466 bytes with this level and
/// 341,209 with [`LEVEL`], whose candidates took 15 s instead of 0.12 s to build.
pub const EXEC_PAIR_LEVEL: i32 = 3;

/// Why a delta could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Base plus result are larger than any window a delta may use.
    #[error("base ({base} bytes) and result (up to {result} bytes) together exceed the 2^{MAX_WINDOW_LOG}-byte limit for deltas")]
    TooLarge {
        /// Base length.
        base: u64,
        /// The largest result length.
        result: u64,
    },
    /// The delta is not a valid zstd frame for this base (truncated, corrupt, needs a
    /// larger window, trailing bytes, …).
    #[error("the delta cannot be decoded: {0}")]
    Decode(String),
    /// The delta produces more bytes than allowed.
    #[error("the delta produces more than the allowed {max_len} bytes")]
    TooLong {
        /// The cap.
        max_len: u64,
    },
    /// Writing the output failed.
    #[error("writing the result: {0}")]
    Write(#[source] io::Error),
}

/// The custom metadata of a delta target (under the key `delta`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaMeta {
    /// [`FORMAT`].
    pub format: String,
    /// SHA-256 (lowercase hex) of the exact base bytes.
    pub base_sha256: String,
    /// Length of the base.
    pub base_length: u64,
    /// SHA-256 (lowercase hex) of the result.
    pub result_sha256: String,
    /// Length of the result.
    pub result_length: u64,
}

/// Every delta format this version builds and applies.
pub const FORMATS: [&str; 4] = [FORMAT, chunked::FORMAT, bsdiff::FORMAT, bsdiff::EXEC_FORMAT];

/// Up to this size (of the larger of old and new), [`make_best`] also builds the bsdiff
/// candidates. Matching holds both files and a 4-byte suffix array entry per old byte
/// (the packed diff stream is small): a pair of two 200 MiB images is built in about
/// 1.2 GiB; larger pairs get the zstd formats only.
pub const BSDIFF_UP_TO: u64 = 256 * 1024 * 1024;
/// From this size of the new bytes on, [`make_best`] also builds a chunked candidate.
pub const CHUNKED_FROM: u64 = 16 * 1024 * 1024;

/// One delta built for a pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// Its format.
    pub format: &'static str,
    /// Its length.
    pub length: u64,
}

/// The smallest delta for a pair, and every candidate that was built and checked.
#[derive(Clone, Debug)]
pub struct Best {
    /// The chosen format.
    pub format: &'static str,
    /// The delta.
    pub bytes: Vec<u8>,
    /// Every candidate (the chosen one included), in the order they were built.
    pub candidates: Vec<Candidate>,
}

/// Which formats [`make_best`] may build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The formats allowed (default: all of [`FORMATS`]).
    pub formats: Vec<&'static str>,
    /// See [`BSDIFF_UP_TO`].
    pub bsdiff_up_to: u64,
    /// See [`CHUNKED_FROM`].
    pub chunked_from: u64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            formats: FORMATS.to_vec(),
            bsdiff_up_to: BSDIFF_UP_TO,
            chunked_from: CHUNKED_FROM,
        }
    }
}

/// Builds the allowed formats that fit the pair, checks that each rebuilds `new` exactly,
/// and keeps the smallest. A pair whose new bytes are under [`BuildOptions::chunked_from`]
/// gets zstd patch-from and (up to [`BuildOptions::bsdiff_up_to`]) bsdiff and, for two
/// ELF files, executable-aware bsdiff, built side by side (zstd at [`EXEC_PAIR_LEVEL`]
/// then, else at [`LEVEL`]). A larger pair gets the bsdiff
/// family, on every core; the chunked format only when no bsdiff delta fits (a pair over
/// `bsdiff_up_to`, or one with more than [`bsdiff::MAX_ENTRIES`] matches), and zstd
/// patch-from only when neither does. On every large real pair measured, the bsdiff family
/// was 13–63 % smaller than chunked and chunked smaller than zstd patch-from, and each
/// of those two took longer to build than the whole bsdiff family.
/// Fails only when no allowed format fits (an error of kind
/// [`io::ErrorKind::Unsupported`]) or a candidate does not rebuild `new` (a bug).
pub fn make_best(old: &[u8], new: &[u8], opts: &BuildOptions) -> io::Result<Best> {
    let allowed = |f: &str| opts.formats.contains(&f);
    let big = old.len().max(new.len()) as u64;
    let want_bsd = big <= opts.bsdiff_up_to && allowed(bsdiff::FORMAT);
    let want_exec = big <= opts.bsdiff_up_to && allowed(bsdiff::EXEC_FORMAT);
    let want_zstd =
        allowed(FORMAT) && window_log_for(old.len() as u64 + new.len() as u64).is_some();
    let large = new.len() as u64 >= opts.chunked_from;
    let zstd_level = if want_exec && bsdiff::is_exec_pair(old, new) {
        EXEC_PAIR_LEVEL
    } else {
        LEVEL
    };
    let want_chunked = large && allowed(chunked::FORMAT);
    let bsdiffs = || {
        if want_bsd || want_exec {
            bsdiff::make_both(old, new, want_bsd, want_exec)
        } else {
            Ok((None, None))
        }
    };
    let mut built: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let push_bsdiffs = |built: &mut Vec<(&'static str, Vec<u8>)>, (plain, exec): bsdiff::Both| {
        built.extend(plain.map(|b| (bsdiff::FORMAT, b)));
        built.extend(exec.map(|e| (bsdiff::EXEC_FORMAT, e)));
    };
    if !large {
        let (zstd, bsd) = rayon::join(|| want_zstd.then(|| make_at(old, new, zstd_level)), bsdiffs);
        if let Some(z) = zstd {
            built.push((FORMAT, z?));
        }
        push_bsdiffs(&mut built, bsd?);
    } else {
        push_bsdiffs(&mut built, bsdiffs()?);
        if want_chunked && built.is_empty() {
            built.push((
                chunked::FORMAT,
                chunked::make_with(old, new, chunked::CHUNK_SIZE, |n, f| par_map(n, f))?,
            ));
        }
        if built.is_empty() && want_zstd {
            built.push((FORMAT, make_at(old, new, zstd_level)?));
        }
    }
    if built.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "no allowed delta format ({}) fits a {}-byte base and a {}-byte result",
                opts.formats.join(", "),
                old.len(),
                new.len()
            ),
        ));
    }
    let candidates = built
        .iter()
        .map(|(f, b)| Candidate {
            format: f,
            length: b.len() as u64,
        })
        .collect();
    // Smallest first; among equals, the earlier (simpler) format.
    built.sort_by_key(|(_, b)| b.len());
    for (format, bytes) in &built {
        let mut check = Vec::with_capacity(new.len());
        apply_format(format, old, &bytes[..], new.len() as u64, &mut check).map_err(|e| {
            io::Error::other(format!("the {format} delta just built does not apply: {e}"))
        })?;
        if check != new {
            return Err(io::Error::other(format!(
                "the {format} delta just built does not rebuild the new bytes"
            )));
        }
    }
    let (format, bytes) = built.swap_remove(0);
    Ok(Best {
        format,
        bytes,
        candidates,
    })
}

/// `(0..n).map(f)` on every core, in order.
fn par_map<T: Send>(n: usize, f: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .clamp(1, n.max(1));
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || (t * per..((t + 1) * per).min(n)).map(f).collect::<Vec<T>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("a delta thread does not panic"))
            .collect()
    })
}

/// Applies a delta of `format` (one of [`FORMATS`]) to `base`, writing at most `max_len`
/// bytes to `out`; returns the result's length. `base` is read where the delta says (a
/// memory map or a buffer: the zstd patch-from format references it whole).
pub fn apply_format(
    format: &str,
    base: &[u8],
    delta: &[u8],
    max_len: u64,
    out: impl Write,
) -> Result<u64, DeltaError> {
    match format {
        FORMAT => apply(base, delta, max_len, out),
        chunked::FORMAT => chunked::apply(
            io::Cursor::new(base),
            base.len() as u64,
            delta,
            max_len,
            out,
        ),
        bsdiff::FORMAT | bsdiff::EXEC_FORMAT => {
            let h = bsdiff::Header::read(delta)?;
            if h.exec != (format == bsdiff::EXEC_FORMAT) {
                return Err(DeltaError::Decode(format!(
                    "the delta's header does not match its format {format:?}"
                )));
            }
            bsdiff::apply(base, delta, max_len, out)
        }
        other => Err(DeltaError::Decode(format!(
            "{other:?} is not a delta format this version reads ({})",
            FORMATS.join(", ")
        ))),
    }
}

/// How a device reads the bytes a delta is applied to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyMode {
    /// The base and the delta are memory-mapped (the output too, for zstd patch-from):
    /// anonymous memory stays under [`APPLY_MEMORY`] whatever the sizes.
    #[default]
    Mmap,
    /// No maps (raw flash, no MMU): positioned reads and bounded buffers, at most
    /// [`APPLY_MEMORY`] too. zstd patch-from deltas need their whole base in memory, so
    /// they are refused here above [`STREAMING_PATCH_LIMIT`] (the device then downloads the
    /// full artifact).
    Streaming,
}

/// The largest result `petrel delta-apply` writes (the agent uses the artifact's signed
/// length instead).
pub const MAX_APPLY_OUTPUT: u64 = 1 << 40;

/// The memory a device's delta application holds at most (besides mapped file pages).
pub const APPLY_MEMORY: u64 = 8 * 1024 * 1024;
/// In [`ApplyMode::Streaming`], the largest base plus result of a zstd patch-from delta.
pub const STREAMING_PATCH_LIMIT: u64 = 4 * 1024 * 1024;

/// Applies the delta file `delta` of `format` to the first `base_len` bytes of `base`,
/// writing the result to `out` (truncated first); returns the result's length, at most
/// `max_len`. Memory is bounded by [`APPLY_MEMORY`] in both modes. The caller checks the
/// result against the artifact's signed hash.
pub fn apply_file(
    format: &str,
    base: &std::fs::File,
    base_len: u64,
    delta: &std::fs::File,
    max_len: u64,
    mode: ApplyMode,
    out: &std::fs::File,
) -> Result<u64, DeltaError> {
    let io_err = DeltaError::Write;
    out.set_len(0).map_err(io_err)?;
    // The result is written, and the delta and base read, from their start whatever the
    // files' offsets were (a scratch file used before is at the end of what it holds).
    for f in [out, delta, base] {
        io::Seek::seek(&mut &*f, io::SeekFrom::Start(0)).map_err(io_err)?;
    }
    let writer = || io::BufWriter::with_capacity(64 * 1024, Writeback::new(out));
    let delta_len = delta.metadata().map_err(io_err)?.len();
    match (format, mode) {
        (FORMAT, ApplyMode::Mmap) => {
            let b = map::Map::read(base, base_len).map_err(io_err)?;
            let d = map::Map::read(delta, delta_len).map_err(io_err)?;
            apply_patch_mapped(b.bytes(), d.bytes(), max_len, out)
        }
        (FORMAT, ApplyMode::Streaming) => {
            // The result's length, from the frame header when it states one.
            let mut head = [0u8; 18];
            let n = read_at_most(delta, &mut head).map_err(io_err)?;
            let max_len = match zstd_safe::get_frame_content_size(&head[..n]) {
                Ok(Some(len)) if len <= max_len => len,
                _ => max_len,
            };
            if base_len.saturating_add(max_len) > STREAMING_PATCH_LIMIT {
                return Err(DeltaError::Decode(format!(
                    "a {FORMAT} delta holds its whole {base_len}-byte base in memory; in streaming mode only up to {STREAMING_PATCH_LIMIT} bytes of base and result"
                )));
            }
            let mut b = Vec::new();
            io::Read::read_to_end(&mut io::Read::take(base, base_len), &mut b).map_err(io_err)?;
            apply(&b, io::BufReader::new(delta), max_len, writer())
        }
        (chunked::FORMAT, ApplyMode::Mmap) => {
            let b = map::Map::read(base, base_len).map_err(io_err)?;
            let d = map::Map::read(delta, delta_len).map_err(io_err)?;
            chunked::apply_mapped(b.bytes(), d.bytes(), max_len, out)
        }
        (chunked::FORMAT, ApplyMode::Streaming) => {
            let b = io::BufReader::new(base);
            chunked::apply(b, base_len, io::BufReader::new(delta), max_len, writer())
        }
        (bsdiff::FORMAT | bsdiff::EXEC_FORMAT, m) => {
            let check = |h: bsdiff::Header| {
                if h.exec != (format == bsdiff::EXEC_FORMAT) {
                    return Err(DeltaError::Decode(format!(
                        "the delta's header does not match its format {format:?}"
                    )));
                }
                Ok(())
            };
            if m == ApplyMode::Mmap {
                let b = map::Map::read(base, base_len).map_err(io_err)?;
                let d = map::Map::read(delta, delta_len).map_err(io_err)?;
                check(bsdiff::Header::read(d.bytes())?)?;
                bsdiff::apply(b.bytes(), d.bytes(), max_len, writer())
            } else {
                let b = exec::Prefix {
                    file: base,
                    len: base_len,
                };
                check(bsdiff::Header::read(delta)?)?;
                bsdiff::apply(&b, delta, max_len, writer())
            }
        }
        (other, _) => Err(DeltaError::Decode(format!(
            "{other:?} is not a delta format this version reads ({})",
            FORMATS.join(", ")
        ))),
    }
}

/// Bytes of a result written between two starts of its writeback ([`Writeback`]).
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// Writes to a file from its start, and every [`WRITEBACK_STEP`] bytes starts the disk
/// writes of what it just wrote ([`map::start_writeback`]): the sync that makes the
/// result durable then waits for the last step only, not for the whole file.
struct Writeback<'a> {
    file: &'a std::fs::File,
    written: u64,
    started: u64,
}

impl<'a> Writeback<'a> {
    fn new(file: &'a std::fs::File) -> Self {
        Writeback {
            file,
            written: 0,
            started: 0,
        }
    }
}

impl Write for Writeback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&mut &*self.file).write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            map::start_writeback(self.file, self.started, self.written - self.started);
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&mut &*self.file).flush()
    }
}

/// Reads up to `buf.len()` bytes from the start of `f`.
fn read_at_most(f: &std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    let mut r = f;
    io::Seek::seek(&mut r, io::SeekFrom::Start(0))?;
    while n < buf.len() {
        match io::Read::read(&mut r, &mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    io::Seek::seek(&mut r, io::SeekFrom::Start(0))?;
    Ok(n)
}

/// zstd patch-from with the base and delta mapped, decoded in one pass straight into the
/// mapped output: zstd keeps no window of its own.
fn apply_patch_mapped(
    base: &[u8],
    delta: &[u8],
    max_len: u64,
    out: &std::fs::File,
) -> Result<u64, DeltaError> {
    let decode = |what: &str, c: usize| {
        DeltaError::Decode(format!("{what}: {}", zstd_safe::get_error_name(c)))
    };
    if delta.is_empty() {
        return Err(DeltaError::Decode("the delta is empty".into()));
    }
    let frame = zstd_safe::find_frame_compressed_size(delta)
        .map_err(|c| decode("reading the delta's frame", c))?;
    if frame != delta.len() {
        return Err(DeltaError::Decode(
            "bytes follow the delta's zstd frame".into(),
        ));
    }
    let len = match zstd_safe::get_frame_content_size(delta) {
        Ok(Some(n)) => n,
        _ => {
            return Err(DeltaError::Decode(
                "the delta's frame does not state the result's length".into(),
            ))
        }
    };
    if len > max_len {
        return Err(DeltaError::TooLong { max_len });
    }
    let mut dctx = zstd_safe::DCtx::create();
    dctx.ref_prefix(base)
        .map_err(|c| decode("referencing the base", c))?;
    let mut m = map::write(out, len).map_err(DeltaError::Write)?;
    let n = match m.as_deref_mut() {
        Some(dst) => dctx
            .decompress(dst, delta)
            .map_err(|c| decode("the delta cannot be decoded", c))?,
        None => {
            let mut empty: [u8; 0] = [];
            dctx.decompress(&mut empty[..], delta)
                .map_err(|c| decode("the delta cannot be decoded", c))?
        }
    };
    if n as u64 != len {
        return Err(DeltaError::Decode(format!(
            "the delta produced {n} bytes, its frame says {len}"
        )));
    }
    // No msync: the pages are the file's page cache, and whoever needs them durable
    // syncs the file (an fsync covers pages written through a mapping).
    drop(m);
    Ok(len)
}

/// The format a delta's first bytes name (zstd frame magic, `PTRLCHK1`, `PTRLBSD1` and its
/// exec flag), for tools given a delta file without its signed metadata.
pub fn sniff_format(delta: &[u8]) -> Option<&'static str> {
    if delta.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Some(FORMAT)
    } else if delta.starts_with(chunked::MAGIC) {
        Some(chunked::FORMAT)
    } else if delta.starts_with(bsdiff::MAGIC) {
        Some(
            if delta.get(9).is_some_and(|f| f & bsdiff::FLAG_EXEC != 0) {
                bsdiff::EXEC_FORMAT
            } else {
                bsdiff::FORMAT
            },
        )
    } else {
        None
    }
}

/// The target path of the delta from the bytes with hash `base_sha256` to those with hash
/// `result_sha256`: `deltas/<result>/<base>.zst` (lowercase hex).
pub fn target_path(result_sha256: &str, base_sha256: &str) -> String {
    format!(
        "{PREFIX}{}/{}.zst",
        result_sha256.to_ascii_lowercase(),
        base_sha256.to_ascii_lowercase()
    )
}

impl DeltaMeta {
    /// Reads the delta metadata from a target's custom metadata (`{"delta": {…}}`).
    pub fn from_custom(custom: Option<&Value>) -> Result<DeltaMeta, String> {
        let v = custom
            .and_then(|c| c.get("delta"))
            .ok_or("its custom metadata has no \"delta\" object")?;
        let m: DeltaMeta = serde_json::from_value(v.clone())
            .map_err(|e| format!("custom metadata \"delta\": {e}"))?;
        if !FORMATS.contains(&m.format.as_str()) && m.format != crate::tree::delta::FORMAT {
            return Err(format!(
                "custom metadata \"delta\".format is {:?}; this version reads {} and {}",
                m.format,
                FORMATS.join(", "),
                crate::tree::delta::FORMAT
            ));
        }
        for (field, h) in [
            ("base_sha256", &m.base_sha256),
            ("result_sha256", &m.result_sha256),
        ] {
            if crate::manifest::check_sha256_hex(h).is_err() {
                return Err(format!(
                    "custom metadata \"delta\".{field} is not 64 lowercase hex digits"
                ));
            }
        }
        Ok(m)
    }

    /// The custom metadata object of a delta target: `{"delta": {…}}`.
    pub fn to_custom(&self) -> Value {
        serde_json::json!({ "delta": self })
    }

    /// Checks that the metadata agrees with the target path it is listed under
    /// ([`target_path`] of its result and base hashes).
    pub fn check_path(&self, path: &str) -> Result<(), String> {
        let want = target_path(&self.result_sha256, &self.base_sha256);
        if path != want {
            return Err(format!(
                "the name {path:?} does not match its custom metadata (base {}, result {}: {want:?})",
                self.base_sha256, self.result_sha256
            ));
        }
        Ok(())
    }
}

/// The window (log2) that covers `total` bytes of base plus result, or `None` above
/// [`MAX_WINDOW_LOG`].
pub fn window_log_for(total: u64) -> Option<u32> {
    let log = match total {
        0 | 1 => 0,
        n => 64 - (n - 1).leading_zeros(),
    };
    (log <= MAX_WINDOW_LOG).then_some(log.max(MIN_WINDOW_LOG))
}

fn zstd_err(what: &str, code: usize) -> io::Error {
    io::Error::other(format!("{what}: {}", zstd_safe::get_error_name(code)))
}

/// Builds the delta that turns `base` into `result`: one zstd frame with `base` as
/// reference prefix, long-distance matching on, a window covering base and result, the
/// result's length in the frame header and a checksum.
pub fn make(base: &[u8], result: &[u8]) -> io::Result<Vec<u8>> {
    make_at(base, result, LEVEL)
}

/// [`make`] at compression `level` (the device decodes every level alike).
pub fn make_at(base: &[u8], result: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let total = base.len() as u64 + result.len() as u64;
    let wlog = window_log_for(total).ok_or_else(|| {
        io::Error::other(format!(
            "base ({} bytes) and result ({} bytes) together exceed the 2^{MAX_WINDOW_LOG}-byte limit for deltas",
            base.len(),
            result.len()
        ))
    })?;
    let mut cctx = zstd_safe::CCtx::create();
    for p in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(wlog),
        CParameter::EnableLongDistanceMatching(true),
        CParameter::ChecksumFlag(true),
        CParameter::ContentSizeFlag(true),
    ] {
        cctx.set_parameter(p)
            .map_err(|c| zstd_err("setting a zstd parameter", c))?;
    }
    cctx.set_pledged_src_size(Some(result.len() as u64))
        .map_err(|c| zstd_err("setting the result size", c))?;
    cctx.ref_prefix(base)
        .map_err(|c| zstd_err("referencing the base", c))?;
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(result.len()));
    cctx.compress2(&mut out, result)
        .map_err(|c| zstd_err("compressing", c))?;
    Ok(out)
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Applies `delta` to `base`, writing the result to `out`; returns its length. At most
/// `max_len` bytes are written: a delta producing more is refused ([`DeltaError::TooLong`]).
/// The decoder refuses frames needing a window above base plus `max_len` (rounded up to a
/// power of two) or [`MAX_WINDOW_LOG`]. The delta must be exactly one frame (trailing bytes
/// are refused). Output written before an error is garbage: the caller discards it, and in
/// any case checks the result against the signed hash.
pub fn apply(
    base: &[u8],
    delta: impl Read,
    max_len: u64,
    mut out: impl Write,
) -> Result<u64, DeltaError> {
    let base_len = base.len() as u64;
    let wlog = base_len
        .checked_add(max_len)
        .and_then(window_log_for)
        .ok_or(DeltaError::TooLarge {
            base: base_len,
            result: max_len,
        })?;
    let decode = |e: io::Error| DeltaError::Decode(e.to_string());
    let reader = BufReader::new(Counting { inner: delta, n: 0 });
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(reader, base)
        .map_err(decode)?
        .single_frame();
    dec.window_log_max(wlog).map_err(decode)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = dec.read(&mut buf).map_err(decode)?;
        if n == 0 {
            break;
        }
        if total + n as u64 > max_len {
            return Err(DeltaError::TooLong { max_len });
        }
        out.write_all(&buf[..n]).map_err(DeltaError::Write)?;
        total += n as u64;
    }
    let rest = dec.get_mut();
    let trailing = !rest.fill_buf().map_err(decode)?.is_empty();
    if rest.get_ref().n == 0 {
        return Err(DeltaError::Decode("the delta is empty".into()));
    }
    if trailing {
        return Err(DeltaError::Decode(
            "bytes follow the delta's zstd frame".into(),
        ));
    }
    out.flush().map_err(DeltaError::Write)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
    }

    /// A pseudo-random (incompressible on its own) buffer.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// A new version: the old one with a few local edits.
    fn edited(old: &[u8]) -> Vec<u8> {
        let mut new = old.to_vec();
        new[100..140].copy_from_slice(&noise(9, 40));
        new.splice(5000..5000, noise(10, 300));
        new.truncate(new.len() - 1000);
        new
    }

    fn apply_vec(base: &[u8], delta: &[u8], max_len: u64) -> Result<Vec<u8>, DeltaError> {
        let mut out = Vec::new();
        let n = apply(base, delta, max_len, &mut out)?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    #[test]
    fn a_delta_applied_to_its_base_gives_the_result_and_is_small() {
        let old = noise(1, 64 * 1024);
        let new = edited(&old);
        let d = make(&old, &new).unwrap();
        assert!(
            d.len() * 20 < new.len(),
            "delta {} bytes for a {}-byte result with few edits",
            d.len(),
            new.len()
        );
        assert_eq!(apply_vec(&old, &d, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn a_delta_applied_to_another_base_never_yields_the_result() {
        let old = noise(1, 64 * 1024);
        let new = edited(&old);
        let d = make(&old, &new).unwrap();
        let mut other = old.clone();
        other[20_000] ^= 0xff;
        match apply_vec(&other, &d, new.len() as u64) {
            Err(_) => {}
            Ok(out) => assert_ne!(sha(&out), sha(&new), "the caller's hash check rejects it"),
        }
        // With no base at all, the frame's checksum or its references fail.
        assert!(apply_vec(&[], &d, new.len() as u64).is_err());
    }

    #[test]
    fn output_beyond_the_cap_is_refused() {
        let old = noise(1, 64 * 1024);
        let new = edited(&old);
        let d = make(&old, &new).unwrap();
        let cap = new.len() as u64 - 1;
        let mut out = Vec::new();
        let e = apply(&old, &d[..], cap, &mut out).unwrap_err();
        assert!(matches!(e, DeltaError::TooLong { .. }), "{e}");
        assert!(out.len() as u64 <= cap, "never more than the cap written");
    }

    #[test]
    fn a_frame_needing_a_larger_window_than_base_and_result_is_refused() {
        // 64 KiB of base: the delta declares a 128 KiB+ window; a caller capping the
        // result at 1 byte allows only 2^17 for base plus result, so a frame built for a
        // 1 MiB result (window 2^21) is refused before it is decoded.
        let old = noise(1, 64 * 1024);
        let big: Vec<u8> = noise(2, 1024 * 1024);
        let d = make(&old, &big).unwrap();
        let e = apply_vec(&old, &d, 1).unwrap_err();
        assert!(matches!(e, DeltaError::Decode(_)), "{e}");
        assert_eq!(window_log_for(1 << 31), Some(31));
        assert_eq!(window_log_for((1 << 31) + 1), None);
        assert_eq!(window_log_for(5), Some(MIN_WINDOW_LOG));
    }

    #[test]
    fn truncated_garbage_empty_or_padded_deltas_are_errors_not_panics() {
        let old = noise(1, 16 * 1024);
        let new = edited(&old);
        let d = make(&old, &new).unwrap();
        let max = new.len() as u64;
        for cut in [0, 1, 4, 10, d.len() / 2, d.len() - 1] {
            assert!(
                apply_vec(&old, &d[..cut], max).is_err(),
                "truncated at {cut}"
            );
        }
        assert!(apply_vec(&old, &noise(3, 500), max).is_err(), "garbage");
        let mut padded = d.clone();
        padded.extend_from_slice(b"junk");
        assert!(apply_vec(&old, &padded, max).is_err(), "trailing bytes");
        for i in (0..d.len()).step_by(7) {
            let mut flipped = d.clone();
            flipped[i] ^= 0x5a;
            if let Ok(out) = apply_vec(&old, &flipped, max) {
                assert_ne!(
                    sha(&out),
                    sha(&new),
                    "a flipped byte at {i} gave the result"
                );
            }
        }
    }

    #[test]
    fn metadata_must_name_the_format_and_agree_with_the_path() {
        let m = DeltaMeta {
            format: FORMAT.into(),
            base_sha256: "b".repeat(64),
            base_length: 3,
            result_sha256: "a".repeat(64),
            result_length: 4,
        };
        let custom = m.to_custom();
        assert_eq!(DeltaMeta::from_custom(Some(&custom)).unwrap(), m);
        let path = target_path(&m.result_sha256, &m.base_sha256);
        assert_eq!(
            path,
            format!("deltas/{}/{}.zst", "a".repeat(64), "b".repeat(64))
        );
        m.check_path(&path).unwrap();
        assert!(m
            .check_path(&target_path(&m.base_sha256, &m.result_sha256))
            .is_err());
        let mut other = custom.clone();
        other["delta"]["format"] = "bsdiff".into();
        assert!(DeltaMeta::from_custom(Some(&other)).is_err());
        let mut other = custom.clone();
        other["delta"]["base_sha256"] = "B".repeat(64).into();
        assert!(DeltaMeta::from_custom(Some(&other)).is_err());
        assert!(DeltaMeta::from_custom(None).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn any_base_and_result_round_trip(
            base in proptest::collection::vec(any::<u8>(), 0..3000),
            result in proptest::collection::vec(any::<u8>(), 0..3000),
            shared in 0usize..2000,
        ) {
            // Results that share a run with the base, and unrelated ones.
            let mut result = result;
            let k = shared.min(base.len());
            result.splice(0..0, base[..k].iter().copied());
            let d = make(&base, &result).unwrap();
            prop_assert_eq!(apply_vec(&base, &d, result.len() as u64).unwrap(), result);
        }
    }
}

#[cfg(test)]
mod level_tests {
    use super::*;

    /// Text-like bytes zstd's levels compress differently: words from a small vocabulary.
    fn text(seed: u64, n: usize) -> Vec<u8> {
        const WORDS: [&str; 12] = [
            "delta ", "tree ", "frame ", "base ", "petrel ", "slot ", "wave ", "group ", "signed ",
            "device ", "bytes ", "\n",
        ];
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(WORDS[(x % 12) as usize].as_bytes());
        }
        out.truncate(n);
        out
    }

    /// The zstd patch-from candidate of two ELF files is built at the fast level, that of
    /// any other pair at the full level; both rebuild the new bytes (checked by make_best).
    #[test]
    fn the_zstd_candidate_of_an_exec_pair_is_built_at_the_fast_level() {
        let (old_code, new_code) = (text(1, 60_000), {
            let mut c = text(1, 60_000);
            c.splice(30_000..30_000, text(2, 5_000));
            c
        });
        let data = text(3, 4096);
        let old = exec::tests::tiny_elf(&old_code, &data);
        let new = exec::tests::tiny_elf(&new_code, &data);
        assert!(bsdiff::is_exec_pair(&old, &new));
        let zstd_len = |b: &Best| {
            b.candidates
                .iter()
                .find(|c| c.format == FORMAT)
                .expect("a zstd candidate")
                .length
        };
        let fast = make_at(&old, &new, EXEC_PAIR_LEVEL).unwrap().len() as u64;
        let full = make_at(&old, &new, LEVEL).unwrap().len() as u64;
        assert_ne!(fast, full, "the two levels differ on this pair");
        let best = make_best(&old, &new, &BuildOptions::default()).unwrap();
        assert_eq!(zstd_len(&best), fast);
        // The same bytes without the ELF headers: the full level.
        let (o, n) = (&old[200..], &new[200..]);
        assert!(!bsdiff::is_exec_pair(o, n));
        let best = make_best(o, n, &BuildOptions::default()).unwrap();
        assert_eq!(zstd_len(&best), make_at(o, n, LEVEL).unwrap().len() as u64);
    }
}

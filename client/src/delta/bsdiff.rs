//! Owns the bsdiff-family delta formats: `bsdiff-zstd` (bsdiff's suffix-array matching,
//! its control, diff and extra streams each compressed with zstd) and `exec-bsdiff` (the
//! same, with the diff taken against the executable-aware prediction of [`super::exec`]).
//!
//! ```text
//! 0   "PTRLBSD1"
//! 8   u8 version (1, or 2 for exec)  u8 flags (bit 0: exec, bit 1: packed)  u8 arch  u8 segments
//! 12  u8 old coded  u8 new coded  u8 old self-relative  u8 zero   (version 2; else zero)
//! 16  u64 result_length   24 u64 entries
//! 32  u64 ctrl_length     40 u64 diff_length   48 u64 extra_length   56 u64 zero
//! 64  segments × (u64 offset, u64 vaddr, u64 filesz, u64 memsz, u64 flags)   (exec only)
//!     old coded, new coded, old self-relative ranges × (u64 start, u64 end)
//!     ctrl frame: entries × (u32 mix, u32 copy, i32 seek), or packed: LEB128 columns (zstd)
//!     diff frame  (zstd; packed: zero runs counted)     extra frame  (zstd)
//! ```
//!
//! Entry `i` says: add the next `mix` diff bytes to the old bytes at the current old
//! position (predicted, for `exec`), write them; write the next `copy` extra bytes; move the
//! old position by `mix + seek`. For `exec`, the version names the prediction rules
//! ([`Rules`]); the builder writes [`BUILD_RULES`], a device applies either. Version 2
//! also names word tables ([`WordTables`]): in a *coded* range each 32-bit word stands
//! for its difference from the word before it (the first for itself), on both sides —
//! the matcher and the diff see the old file's coded ranges coded, the diff and extra
//! streams carry the new file's coded ranges coded, and the device undoes that as it
//! writes. Sorted address tables then match across versions although every address in
//! them moved. Applying streams: the old bytes are read where the entries
//! say (from a memory map or with positioned reads), the diff and extra frames are decoded
//! with a window of at most 2^[`WINDOW_LOG`] bytes each, and the output is written in
//! order; the entries (at most [`MAX_ENTRIES`]) are the only thing held whole
//! ([`apply_memory`]).

use std::io::{self, BufRead, BufReader, Read, Write};

use zstd::zstd_safe::{self, CParameter};

use super::exec::{
    Arch, Layout, Predictor, ReadAt, Region, Rules, Segment, WordTables, LOOKAHEAD, MAX_SEGMENTS,
    MAX_WORD_TABLES,
};
use super::packed;
use super::DeltaError;
use petrel_match as matcher;

/// The `format` of a plain bsdiff delta.
pub const FORMAT: &str = "bsdiff-zstd";
/// The `format` of an executable-aware bsdiff delta.
pub const EXEC_FORMAT: &str = "exec-bsdiff";
/// The magic at the start of both.
pub const MAGIC: &[u8; 8] = b"PTRLBSD1";
/// The window (log2) of the diff and extra frames: what a device's decoder holds per frame.
pub const WINDOW_LOG: u32 = 20;
/// The zstd level of the three streams: the highest, since the diff stream is mostly
/// zeros and compresses fast at any level.
pub const LEVEL: i32 = 22;
/// The prediction rules executable-aware deltas are built with.
pub const BUILD_RULES: Rules = Rules::V2;
/// The most entries a device accepts (they are held while applying).
pub const MAX_ENTRIES: u64 = 65_536;
/// The largest old or new file these formats take (positions are 32-bit).
pub const MAX_LEN: u64 = (1 << 31) - 1;
const HEADER: usize = 64;
/// Header flag: the diff is taken against the executable-aware prediction.
pub(crate) const FLAG_EXEC: u8 = 1;
/// Header flag: the entries and the diff stream are packed ([`super::packed`]).
const FLAG_PACKED: u8 = 2;
const SEGMENT: usize = 40;
const ENTRY: usize = 12;
/// How many old bytes are read, predicted and patched at once.
const CHUNK: usize = 64 * 1024;
/// The buffer of a packed diff stream's decoder.
const PACKED_BUFFER: usize = 64 * 1024;
/// The buffer of a packed control stream's decoder.
const CTRL_BUFFER: usize = 16 * 1024;

/// The memory applying a delta holds at most besides the output: the entries (with the
/// predictor's sorted copy), two decoders with their windows, and the chunk buffers
/// (about 6 MiB at the limits, far less for most deltas).
pub fn apply_memory() -> u64 {
    MAX_ENTRIES * 2 * std::mem::size_of::<Region>() as u64
        + MAX_ENTRIES * ENTRY as u64
        + Layout::max_held()
        + PACKED_BUFFER as u64
        + CTRL_BUFFER as u64
        + 2 * ((1u64 << WINDOW_LOG) + 2 * 128 * 1024)
        + 4 * CHUNK as u64
}

/// Builds the bsdiff delta from `old` to `new` (`exec`: with the executable-aware
/// prediction). `Ok(None)` when this format does not fit the pair: a file over
/// [`MAX_LEN`], more than [`MAX_ENTRIES`] entries, or (for `exec`) a file that is not a
/// supported ELF, or two of different architectures.
pub fn make(old: &[u8], new: &[u8], exec: bool) -> io::Result<Option<Vec<u8>>> {
    let (plain, ex) = make_both(old, new, !exec, exec)?;
    Ok(if exec { ex } else { plain })
}

/// The `bsdiff-zstd` and `exec-bsdiff` deltas of one pair, each when built.
pub type Both = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Builds the plain and (for two ELF files of one supported architecture) the
/// executable-aware delta from one matching pass ([`Both`]), each `None` when not asked
/// for or when it does not fit ([`make`]).
pub fn make_both(old: &[u8], new: &[u8], plain: bool, exec: bool) -> io::Result<Both> {
    make_both_by(old, new, plain, exec, BUILD_RULES, true)
}

/// The layouts of two ELF files the executable-aware delta fits: one supported
/// architecture, at most [`MAX_SEGMENTS`] segments in the new one.
fn exec_layouts(old: &[u8], new: &[u8]) -> Option<(Layout, Layout)> {
    match (Layout::read(old), Layout::read(new)) {
        (Some(o), Some(n)) if o.arch == n.arch && n.segments.len() <= MAX_SEGMENTS => Some((o, n)),
        _ => None,
    }
}

/// Whether [`make_both`] builds an executable-aware delta for the pair (when asked to
/// and within [`MAX_LEN`]).
pub fn is_exec_pair(old: &[u8], new: &[u8]) -> bool {
    old.len() as u64 <= MAX_LEN && new.len() as u64 <= MAX_LEN && exec_layouts(old, new).is_some()
}

/// [`make_both`], with the executable-aware delta built by `rules`, and the streams
/// packed ([`super::packed`]) or, as the first devices read them, not.
pub fn make_both_by(
    old: &[u8],
    new: &[u8],
    plain: bool,
    exec: bool,
    rules: Rules,
    packed: bool,
) -> io::Result<Both> {
    if old.len() as u64 > MAX_LEN || new.len() as u64 > MAX_LEN {
        return Ok((None, None));
    }
    let layouts = exec.then(|| exec_layouts(old, new)).flatten();
    if !plain && layouts.is_none() {
        return Ok((None, None));
    }
    // The old file's word tables, and the new file's coded ranges (a new file's
    // self-relative ranges mean nothing: only old bytes are predicted).
    let (old_tables, coded_new) = match (&layouts, rules) {
        (Some((o, n)), Rules::V2) => (o.word_tables(old), n.word_tables(new).coded),
        _ => (WordTables::default(), Vec::new()),
    };
    let (old_t, new_t);
    let (old_m, new_m): (&[u8], &[u8]) = if old_tables.coded.is_empty() && coded_new.is_empty() {
        (old, new)
    } else {
        let mut o = old.to_vec();
        code_words(old, &old_tables.coded, 0, &mut o, &mut Vec::new())?;
        let mut n = new.to_vec();
        code_words(new, &coded_new, 0, &mut n, &mut Vec::new())?;
        (old_t, new_t) = (o, n);
        (&old_t, &new_t)
    };
    // bsdiff's matching (suffix array of the old bytes, then its scan of the new bytes)
    // yields a series of matches that tile the new bytes: `add_length` bytes added to the
    // old bytes at `add_old_start`, then literal bytes up to `copy_end`.
    let matches = if old.is_empty() {
        // Nothing to match against: the new bytes are all literal.
        let all = matcher::Match {
            add_old_start: 0,
            add_new_start: 0,
            add_length: 0,
            copy_end: new.len(),
        };
        if new.is_empty() {
            Vec::new()
        } else {
            vec![all]
        }
    } else {
        matcher::matches(&matcher::Index::new(old_m)?, new_m)
    };
    if matches.len() as u64 > MAX_ENTRIES {
        return Ok((None, None));
    }
    let bad = || io::Error::other("the matcher produced matches that do not tile the new bytes");
    let mut entries: Vec<(u32, u32, i32)> = Vec::with_capacity(matches.len());
    let mut regions = Vec::with_capacity(matches.len());
    let mut copies = Vec::with_capacity(matches.len());
    let (mut old_pos, mut new_pos) = (0usize, 0usize);
    for (i, m) in matches.iter().enumerate() {
        let copy_start = m.add_new_start + m.add_length;
        if m.add_new_start != new_pos
            || m.add_old_start != old_pos
            || copy_start > m.copy_end
            || m.copy_end > new.len()
            || m.add_old_start + m.add_length > old.len()
        {
            return Err(bad());
        }
        let next_old = matches
            .get(i + 1)
            .map_or(m.add_old_start + m.add_length, |n| n.add_old_start);
        let seek = next_old as i64 - (m.add_old_start + m.add_length) as i64;
        regions.push(Region {
            old_pos: m.add_old_start as u64,
            new_pos: m.add_new_start as u64,
            len: m.add_length as u64,
        });
        copies.push(copy_start..m.copy_end);
        entries.push((
            u32::try_from(m.add_length).map_err(|_| bad())?,
            u32::try_from(m.copy_end - copy_start).map_err(|_| bad())?,
            i32::try_from(seek).map_err(|_| bad())?,
        ));
        new_pos = m.copy_end;
        old_pos = next_old;
    }
    drop(matches);
    if new_pos != new.len() {
        return Err(bad());
    }
    let ctrl = if packed {
        packed::pack_entries(&entries)
    } else {
        let mut ctrl = Vec::with_capacity(entries.len() * ENTRY);
        for (m, c, s) in &entries {
            ctrl.extend_from_slice(&m.to_le_bytes());
            ctrl.extend_from_slice(&c.to_le_bytes());
            ctrl.extend_from_slice(&s.to_le_bytes());
        }
        ctrl
    };
    let ctrl = compress(&ctrl)?;
    let build = |layouts: Option<&(Layout, Layout)>| -> io::Result<Vec<u8>> {
        // The plain delta is taken between the raw files; the executable-aware one
        // against the prediction, with the coded ranges coded.
        let none: &[(u64, u64)] = &[];
        let (new, coded_old, coded_new, self_rel) = match layouts {
            Some(_) => (
                new_m,
                &old_tables.coded[..],
                &coded_new[..],
                &old_tables.self_relative[..],
            ),
            None => (new, none, none, none),
        };
        let predictor =
            layouts.map(|(o, n)| Predictor::new(o, n, regions.clone(), rules, self_rel.to_vec()));
        let extra: Vec<u8> = copies
            .iter()
            .flat_map(|c| &new[c.clone()])
            .copied()
            .collect();
        let mixed: usize = regions.iter().map(|r| r.len as usize).sum();
        let mut diff = packed::ZeroRuns::new(packed, if packed { mixed / 16 } else { mixed });
        let mut piece = Vec::with_capacity(CHUNK + LOOKAHEAD);
        for r in &regions {
            let mut at_new = r.new_pos as usize;
            effective_old(old, predictor.as_ref(), coded_old, r, |e| {
                piece.clear();
                piece.extend(
                    new[at_new..at_new + e.len()]
                        .iter()
                        .zip(e)
                        .map(|(n, o)| n.wrapping_sub(*o)),
                );
                diff.extend(&piece);
                at_new += e.len();
                Ok(())
            })?;
        }
        let diff = diff.finish();
        let (diff, extra) = rayon::join(|| compress(&diff), || compress(&extra));
        let (diff, extra) = (diff?, extra?);
        let mut out =
            Vec::with_capacity(HEADER + ctrl.len() + diff.len() + extra.len() + 64 * SEGMENT);
        out.extend_from_slice(MAGIC);
        let (version, flags, arch, segs): (u8, u8, u8, &[Segment]) = match layouts {
            Some((_, n)) => (rules.version(), FLAG_EXEC, n.arch.code(), &n.segments),
            None => (1, 0, 0, &[]),
        };
        let flags = flags | if packed { FLAG_PACKED } else { 0 };
        let lists = [coded_old, coded_new, self_rel];
        out.extend_from_slice(&[version, flags, arch, segs.len() as u8]);
        out.extend(lists.map(|l| l.len() as u8));
        out.push(0);
        for v in [
            new.len() as u64,
            entries.len() as u64,
            ctrl.len() as u64,
            diff.len() as u64,
            extra.len() as u64,
            0,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for s in segs {
            for v in [s.offset, s.vaddr, s.filesz, s.memsz, u64::from(s.exec)] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        for &(a, b) in lists.iter().flat_map(|l| l.iter()) {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
        }
        out.extend_from_slice(&ctrl);
        out.extend_from_slice(&diff);
        out.extend_from_slice(&extra);
        Ok(out)
    };
    // The two deltas side by side (each compresses its streams side by side too).
    let (p, e) = rayon::join(
        || plain.then(|| build(None)).transpose(),
        || layouts.as_ref().map(|l| build(Some(l))).transpose(),
    );
    Ok((p?, e?))
}

fn compress(data: &[u8]) -> io::Result<Vec<u8>> {
    let err = |what: &str, c: usize| {
        io::Error::other(format!("{what}: {}", zstd_safe::get_error_name(c)))
    };
    let mut cctx = zstd_safe::CCtx::create();
    for p in [
        CParameter::CompressionLevel(LEVEL),
        CParameter::WindowLog(WINDOW_LOG),
        CParameter::ChecksumFlag(false),
        CParameter::ContentSizeFlag(true),
    ] {
        cctx.set_parameter(p)
            .map_err(|c| err("setting a zstd parameter", c))?;
    }
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data)
        .map_err(|c| err("compressing", c))?;
    Ok(out)
}

/// Calls `f` with the old bytes of region `r`, in order and chunk by chunk, as the diff is
/// taken against them: with the prediction applied when there is a predictor. The builder
/// and the device both go through here, so they agree byte for byte.
fn effective_old(
    old: &(impl ReadAt + ?Sized),
    predictor: Option<&Predictor<'_>>,
    coded: &[(u64, u64)],
    r: &Region,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let end = r.old_pos + r.len;
    let (mut pos, mut scan) = (r.old_pos, r.old_pos);
    let mut buf = vec![0u8; (CHUNK + LOOKAHEAD).min(r.len as usize)];
    let mut tmp = Vec::new();
    while pos < end {
        let chunk_end = (pos + CHUNK as u64).min(end);
        let have = (chunk_end + LOOKAHEAD as u64).min(end) - pos;
        let b = &mut buf[..have as usize];
        old.read_exact_at(pos, b)?;
        let done = match predictor {
            Some(p) => {
                let (done, next) = p.predict(r, pos, chunk_end, b, scan);
                scan = next;
                done
            }
            None => chunk_end,
        };
        let b = &mut b[..(done - pos) as usize];
        code_words(old, coded, pos, b, &mut tmp)?;
        f(b)?;
        pos = done;
    }
    Ok(())
}

/// Replaces the bytes of `b` (the bytes of `src` from offset `pos`, or their prediction)
/// that lie in the coded ranges `coded` (sorted) by the coded words: each raw 32-bit
/// word of `src` minus the raw word before it in its range (the first word as it is).
/// `tmp` is scratch space.
fn code_words(
    src: &(impl ReadAt + ?Sized),
    coded: &[(u64, u64)],
    pos: u64,
    b: &mut [u8],
    tmp: &mut Vec<u8>,
) -> io::Result<()> {
    let end = pos + b.len() as u64;
    let first = coded.partition_point(|r| r.1 <= pos);
    for &(rs, re) in coded[first..].iter().take_while(|r| r.0 < end) {
        let (lo, hi) = (rs.max(pos), re.min(end));
        let (k0, k1) = ((lo - rs) / 4, (hi - rs).div_ceil(4));
        let from = k0.saturating_sub(1);
        tmp.resize(((k1 - from) * 4) as usize, 0);
        src.read_exact_at(rs + 4 * from, tmp)?;
        let word = |k: u64| {
            let i = ((k - from) * 4) as usize;
            u32::from_le_bytes(tmp[i..i + 4].try_into().expect("4 bytes"))
        };
        for k in k0..k1 {
            let prev = if k == 0 { 0 } else { word(k - 1) };
            let c = word(k).wrapping_sub(prev).to_le_bytes();
            let at = rs + 4 * k;
            for (j, &byte) in c.iter().enumerate() {
                let o = at + j as u64;
                if o >= lo && o < hi {
                    b[(o - pos) as usize] = byte;
                }
            }
        }
    }
    Ok(())
}

/// A writer that undoes the coding of the coded ranges ([`code_words`]) of what it is
/// given, in order from offset 0, before passing it on.
struct Uncode<'a, W> {
    out: W,
    coded: &'a [(u64, u64)],
    pos: u64,
    word: [u8; 4],
    have: usize,
    prev: u32,
}

impl<'a, W> Uncode<'a, W> {
    /// Passes what it is given on to `out`, undoing the coding of the ranges `coded`.
    fn new(out: W, coded: &'a [(u64, u64)]) -> Self {
        Uncode {
            out,
            coded,
            pos: 0,
            word: [0; 4],
            have: 0,
            prev: 0,
        }
    }
}

impl<W: Write> Write for Uncode<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut b = buf;
        while !b.is_empty() {
            let i = self.coded.partition_point(|r| r.1 <= self.pos);
            match self.coded.get(i) {
                Some(&(rs, re)) if rs <= self.pos => {
                    let n = (re - self.pos).min(b.len() as u64) as usize;
                    for &x in &b[..n] {
                        if self.have == 0 && self.pos == rs {
                            self.prev = 0;
                        }
                        self.word[self.have] = x;
                        self.have += 1;
                        self.pos += 1;
                        if self.have == 4 {
                            let raw = u32::from_le_bytes(self.word).wrapping_add(self.prev);
                            self.out.write_all(&raw.to_le_bytes())?;
                            self.prev = raw;
                            self.have = 0;
                        }
                    }
                    b = &b[n..];
                }
                next => {
                    let lim = next.map_or(u64::MAX, |r| r.0);
                    let n = (lim - self.pos).min(b.len() as u64) as usize;
                    self.out.write_all(&b[..n])?;
                    self.pos += n as u64;
                    b = &b[n..];
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A section of a [`ReadAt`] read in order.
struct Section<'a, R: ?Sized> {
    src: &'a R,
    pos: u64,
    end: u64,
}

impl<R: ReadAt + ?Sized> Read for Section<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        self.src.read_exact_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn decode(e: impl std::fmt::Display) -> DeltaError {
    DeltaError::Decode(e.to_string())
}

/// A zstd frame decoder over one section, refusing windows above [`WINDOW_LOG`].
fn frame<'a, R: ReadAt + ?Sized>(
    src: &'a R,
    pos: u64,
    len: u64,
) -> Result<zstd::stream::read::Decoder<'static, BufReader<Section<'a, R>>>, DeltaError> {
    let sec = Section {
        src,
        pos,
        end: pos + len,
    };
    let mut d = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(32 * 1024, sec))
        .map_err(decode)?
        .single_frame();
    d.window_log_max(WINDOW_LOG).map_err(decode)?;
    Ok(d)
}

/// Checks that a frame decoder has reached the end of its frame and of its section.
fn finished<R: ReadAt + ?Sized>(
    mut d: zstd::stream::read::Decoder<'static, BufReader<Section<'_, R>>>,
    what: &str,
) -> Result<(), DeltaError> {
    let mut one = [0u8; 1];
    if d.read(&mut one).map_err(decode)? != 0 {
        return Err(DeltaError::Decode(format!(
            "the {what} stream is longer than its entries say"
        )));
    }
    let rest = d.get_mut();
    let left =
        !rest.fill_buf().map_err(decode)?.is_empty() || rest.get_ref().pos != rest.get_ref().end;
    if left {
        return Err(DeltaError::Decode(format!("bytes follow the {what} frame")));
    }
    Ok(())
}

/// The diff stream being read: plain, or packed.
enum Diff<'a, R: ReadAt + ?Sized> {
    Plain(zstd::stream::read::Decoder<'static, BufReader<Section<'a, R>>>),
    Packed(
        packed::Unpack<BufReader<zstd::stream::read::Decoder<'static, BufReader<Section<'a, R>>>>>,
    ),
}

impl<'a, R: ReadAt + ?Sized> Diff<'a, R> {
    fn new(
        d: zstd::stream::read::Decoder<'static, BufReader<Section<'a, R>>>,
        packed: bool,
    ) -> Self {
        if packed {
            Diff::Packed(packed::Unpack::new(BufReader::with_capacity(
                PACKED_BUFFER,
                d,
            )))
        } else {
            Diff::Plain(d)
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Diff::Plain(d) => d.read_exact(buf),
            Diff::Packed(d) => d.read_exact(buf),
        }
    }

    /// The frame, once every diff byte has been read.
    fn into_frame(
        self,
    ) -> Result<zstd::stream::read::Decoder<'static, BufReader<Section<'a, R>>>, DeltaError> {
        match self {
            Diff::Plain(d) => Ok(d),
            Diff::Packed(d) => {
                let r = d.into_inner().map_err(decode)?;
                if !r.buffer().is_empty() {
                    return Err(DeltaError::Decode(
                        "the diff stream goes on past its entries".into(),
                    ));
                }
                Ok(r.into_inner())
            }
        }
    }
}

/// What the header of a bsdiff-family delta says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The prediction rules its version names (used when `exec`).
    pub rules: Rules,
    /// The old file's word tables it names.
    pub old_tables: WordTables,
    /// The new file's coded ranges.
    pub coded_new: Vec<(u64, u64)>,
    /// Whether the diff is taken against the executable-aware prediction.
    pub exec: bool,
    /// Whether the entries and the diff stream are packed ([`super::packed`]).
    pub packed: bool,
    /// The result's length.
    pub result_length: u64,
    /// The number of entries.
    pub entries: u64,
    arch: u8,
    segments: Vec<Segment>,
    sections: [u64; 3],
}

impl Header {
    /// Reads and checks the header of `delta`.
    pub fn read(delta: &(impl ReadAt + ?Sized)) -> Result<Header, DeltaError> {
        let mut h = [0u8; HEADER];
        delta
            .read_exact_at(0, &mut h)
            .map_err(|_| DeltaError::Decode("shorter than a bsdiff delta's header".into()))?;
        if &h[..8] != MAGIC {
            return Err(DeltaError::Decode("not a bsdiff delta (bad magic)".into()));
        }
        let w = |i: usize| u64::from_le_bytes(h[16 + 8 * i..24 + 8 * i].try_into().unwrap());
        let rules = Rules::from_version(h[8]);
        let counts = [h[12], h[13], h[14]].map(usize::from);
        let lists_ok = match rules {
            Some(Rules::V2) => h[15] == 0 && counts.iter().all(|&c| c <= MAX_WORD_TABLES),
            _ => h[12..16] == [0; 4],
        };
        if rules.is_none() || !lists_ok || h[9] & !(FLAG_EXEC | FLAG_PACKED) != 0 || w(5) != 0 {
            return Err(DeltaError::Decode(format!(
                "bsdiff delta version {} flags {}: this version reads versions 1 and 2, flags exec and packed",
                h[8], h[9]
            )));
        }
        let rules = rules.expect("checked");
        let exec = h[9] & FLAG_EXEC != 0;
        let packed = h[9] & FLAG_PACKED != 0;
        let nsegs = h[11] as usize;
        if exec != (nsegs > 0) || nsegs > MAX_SEGMENTS || (exec && Arch::from_code(h[10]).is_none())
        {
            return Err(DeltaError::Decode(
                "bad segment table or architecture".into(),
            ));
        }
        if w(1) > MAX_ENTRIES {
            return Err(DeltaError::Decode(format!(
                "{} entries, more than the {MAX_ENTRIES} a device holds",
                w(1)
            )));
        }
        let mut segments = Vec::with_capacity(nsegs);
        let mut s = [0u8; SEGMENT];
        for i in 0..nsegs {
            delta
                .read_exact_at((HEADER + i * SEGMENT) as u64, &mut s)
                .map_err(|_| DeltaError::Decode("truncated segment table".into()))?;
            let v = |k: usize| u64::from_le_bytes(s[8 * k..8 * k + 8].try_into().unwrap());
            segments.push(Segment {
                offset: v(0),
                vaddr: v(1),
                filesz: v(2),
                memsz: v(3),
                exec: v(4) & 1 == 1,
            });
        }
        let mut at = (HEADER + nsegs * SEGMENT) as u64;
        let mut lists: [Vec<(u64, u64)>; 3] = Default::default();
        for (list, &count) in lists.iter_mut().zip(&counts) {
            let mut r = [0u8; 16];
            for _ in 0..count {
                delta
                    .read_exact_at(at, &mut r)
                    .map_err(|_| DeltaError::Decode("truncated word table list".into()))?;
                at += 16;
                let a = u64::from_le_bytes(r[..8].try_into().unwrap());
                let b = u64::from_le_bytes(r[8..].try_into().unwrap());
                if a >= b || list.last().is_some_and(|l| l.1 > a) {
                    return Err(DeltaError::Decode(format!(
                        "word table {a}..{b} is empty, or out of order"
                    )));
                }
                list.push((a, b));
            }
        }
        let [coded_old, coded_new, self_relative] = lists;
        if coded_old
            .iter()
            .chain(&coded_new)
            .any(|r| (r.1 - r.0) % 4 != 0)
        {
            return Err(DeltaError::Decode(
                "a coded word table is not a whole number of words".into(),
            ));
        }
        if coded_new.last().is_some_and(|r| r.1 > w(0)) {
            return Err(DeltaError::Decode(format!(
                "a coded word table ends past the result's {} bytes",
                w(0)
            )));
        }
        let start = at;
        let total = [w(2), w(3), w(4)]
            .iter()
            .try_fold(start, |a, b| a.checked_add(*b));
        if total != Some(delta.len()) {
            return Err(DeltaError::Decode(format!(
                "the delta is {} bytes, its header says {}",
                delta.len(),
                total.map_or("more than 2^64".into(), |t| t.to_string())
            )));
        }
        Ok(Header {
            rules,
            old_tables: WordTables {
                coded: coded_old,
                self_relative,
            },
            coded_new,
            exec,
            packed,
            result_length: w(0),
            entries: w(1),
            arch: h[10],
            segments,
            sections: [w(2), w(3), w(4)],
        })
    }
}

/// Applies a bsdiff-family delta to `base`, writing the result to `out`; returns its
/// length. At most `max_len` bytes are written. The output before an error is garbage:
/// the caller checks the result against the signed hash in any case.
pub fn apply(
    base: &(impl ReadAt + ?Sized),
    delta: &(impl ReadAt + ?Sized),
    max_len: u64,
    out: impl Write,
) -> Result<u64, DeltaError> {
    let h = Header::read(delta)?;
    if h.result_length > max_len {
        return Err(DeltaError::TooLong { max_len });
    }
    let lists = h.old_tables.coded.len() + h.coded_new.len() + h.old_tables.self_relative.len();
    let mut at = (HEADER + h.segments.len() * SEGMENT + lists * 16) as u64;
    if h.old_tables.coded.last().is_some_and(|r| r.1 > base.len()) {
        return Err(DeltaError::Decode(format!(
            "a coded word table ends past the {}-byte base",
            base.len()
        )));
    }
    let mut out = Uncode::new(out, &h.coded_new);
    // The entries, whole: checked against the base and the result's length.
    let mut ctrl = frame(delta, at, h.sections[0])?;
    at += h.sections[0];
    let entries = if h.packed {
        let mut r = BufReader::with_capacity(CTRL_BUFFER, ctrl);
        let e = packed::unpack_entries(&mut r, h.entries as usize).map_err(decode)?;
        if !r.buffer().is_empty() {
            return Err(DeltaError::Decode(
                "the control stream is longer than its entries say".into(),
            ));
        }
        ctrl = r.into_inner();
        e
    } else {
        let mut e = [0u8; ENTRY];
        let mut entries = Vec::with_capacity(h.entries as usize);
        for i in 0..h.entries {
            ctrl.read_exact(&mut e).map_err(|_| {
                DeltaError::Decode(format!(
                    "the control stream ends at entry {i} of {}",
                    h.entries
                ))
            })?;
            entries.push((
                u32::from_le_bytes(e[0..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..8].try_into().unwrap()),
                i32::from_le_bytes(e[8..12].try_into().unwrap()),
            ));
        }
        entries
    };
    let base_len = base.len();
    let mut regions = Vec::with_capacity(h.entries as usize);
    let mut copies = Vec::with_capacity(h.entries as usize);
    let (mut old_pos, mut new_pos) = (0i64, 0u64);
    for (i, &(mix, copy, seek)) in entries.iter().enumerate() {
        let (mix, copy, seek) = (u64::from(mix), u64::from(copy), i64::from(seek));
        let op = u64::try_from(old_pos)
            .ok()
            .filter(|p| p.saturating_add(mix) <= base_len)
            .ok_or_else(|| {
                DeltaError::Decode(format!("entry {i} reads outside the {base_len}-byte base"))
            })?;
        if new_pos + mix + copy > h.result_length {
            return Err(DeltaError::Decode(format!(
                "entry {i} writes past the result's {} bytes",
                h.result_length
            )));
        }
        regions.push(Region {
            old_pos: op,
            new_pos,
            len: mix,
        });
        copies.push(copy as u32);
        new_pos += mix + copy;
        old_pos += mix as i64 + seek;
    }
    if new_pos != h.result_length {
        return Err(DeltaError::Decode(format!(
            "the entries build {new_pos} bytes, the header says {}",
            h.result_length
        )));
    }
    drop(entries);
    finished(ctrl, "control")?;
    let layouts = if h.exec {
        let old = Layout::read(base).ok_or_else(|| {
            DeltaError::Decode("the base is not an ELF file this version reads".into())
        })?;
        let arch = Arch::from_code(h.arch).expect("checked in the header");
        if old.arch != arch {
            return Err(DeltaError::Decode(
                "the base is of another architecture".into(),
            ));
        }
        Some((old, Layout::from_segments(arch, h.segments.clone())))
    } else {
        None
    };
    let predictor = layouts.as_ref().map(|(o, n)| {
        let rel = h.old_tables.self_relative.clone();
        Predictor::new(o, n, regions.clone(), h.rules, rel)
    });
    let mut diff = Diff::new(frame(delta, at, h.sections[1])?, h.packed);
    at += h.sections[1];
    let mut extra = frame(delta, at, h.sections[2])?;
    let mut d = vec![0u8; CHUNK + LOOKAHEAD];
    let mut total = 0u64;
    let w = |e: io::Error| DeltaError::Write(e);
    for (r, copy) in regions.iter().zip(copies) {
        let mut failed = None;
        effective_old(base, predictor.as_ref(), &h.old_tables.coded, r, |e| {
            let d = &mut d[..e.len()];
            if let Err(x) = diff.read_exact(d) {
                failed = Some(decode(format!("the diff stream ends early: {x}")));
                return Err(io::Error::other("diff"));
            }
            for (n, o) in d.iter_mut().zip(e) {
                *n = n.wrapping_add(*o);
            }
            out.write_all(d).map_err(|x| {
                failed = Some(DeltaError::Write(x));
                io::Error::other("write")
            })
        })
        .map_err(|e| {
            failed
                .take()
                .unwrap_or_else(|| decode(format!("reading the base: {e}")))
        })?;
        let mut left = u64::from(copy);
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            extra
                .read_exact(&mut d[..n])
                .map_err(|x| decode(format!("the extra stream ends early: {x}")))?;
            out.write_all(&d[..n]).map_err(w)?;
            left -= n as u64;
        }
        total += r.len + u64::from(copy);
    }
    finished(diff.into_frame()?, "diff")?;
    finished(extra, "extra")?;
    out.flush().map_err(w)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn apply_vec(base: &[u8], delta: &[u8], max: u64) -> Result<Vec<u8>, DeltaError> {
        let mut out = Vec::new();
        let n = apply(base, delta, max, &mut out)?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    #[test]
    fn a_bsdiff_delta_rebuilds_the_new_bytes_and_is_small() {
        let old = noise(1, 200_000);
        let mut new = old.clone();
        new.splice(1000..1000, noise(2, 500));
        new[50_000..50_040].copy_from_slice(&noise(3, 40));
        let d = make(&old, &new, false).unwrap().unwrap();
        assert!(d.len() < 2_000, "{} bytes", d.len());
        assert_eq!(apply_vec(&old, &d, new.len() as u64).unwrap(), new);
        assert!(
            make(&old, &new, true).unwrap().is_none(),
            "not ELF: no exec delta"
        );
    }

    #[test]
    fn packed_and_plain_streams_rebuild_the_same_bytes_and_packed_is_smaller() {
        // Mostly equal bytes with scattered small edits: a diff stream of zero runs.
        let old = noise(4, 300_000);
        let mut new = old.clone();
        for i in (0..new.len()).step_by(997) {
            new[i] = new[i].wrapping_add(3);
        }
        new.splice(150_000..150_000, noise(5, 2_000));
        let (Some(p), _) = make_both_by(&old, &new, true, false, BUILD_RULES, true).unwrap() else {
            panic!("built")
        };
        let (Some(u), _) = make_both_by(&old, &new, true, false, BUILD_RULES, false).unwrap()
        else {
            panic!("built")
        };
        assert!(Header::read(&p[..]).unwrap().packed);
        assert!(!Header::read(&u[..]).unwrap().packed);
        assert_eq!(apply_vec(&old, &p, new.len() as u64).unwrap(), new);
        assert_eq!(apply_vec(&old, &u, new.len() as u64).unwrap(), new);
        assert!(p.len() < u.len(), "packed {} plain {}", p.len(), u.len());
        // A flag this version does not know is refused, naming what it reads.
        let mut f = p.clone();
        f[9] |= 4;
        let e = apply_vec(&old, &f, new.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("flags"), "{e}");
        // Packed streams read as plain ones do not fit their entries: an error.
        let mut plain = p.clone();
        plain[9] &= !FLAG_PACKED;
        assert!(apply_vec(&old, &plain, new.len() as u64).is_err());
    }

    /// Code with calls at irregular places to functions scattered over it, as compilers
    /// lay it out: `calls` (position, target) pairs.
    /// (position, target) of references spread over `n` bytes of code: at irregular gaps
    /// of `gap` to `gap + spread` bytes, each to one of `targets`, both drawn from `r`.
    fn references(
        n: usize,
        targets: &[usize],
        r: &[u8],
        gap: usize,
        spread: usize,
    ) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let (mut at, mut k) = (100usize, 0usize);
        while at + 10 < n - 100 {
            out.push((at, targets[usize::from(r[k % r.len()]) % targets.len()]));
            at += gap + usize::from(r[(k + 1) % r.len()]) % spread;
            k += 2;
        }
        out
    }

    fn code_with_calls(n: usize, calls: &[(usize, usize)]) -> Vec<u8> {
        let mut code = noise(5, n);
        for &(at, target) in calls {
            code[at] = 0xE8;
            code[at + 1..at + 5].copy_from_slice(&(target as i32 - (at as i32 + 5)).to_le_bytes());
        }
        code
    }

    #[test]
    fn an_exec_delta_of_shifted_calls_is_smaller_than_plain_bsdiff() {
        // A new version inserts 64 bytes of code in the middle: every call crossing the
        // insert changes its rel32, by the same amount but at irregular places.
        let n = 60_000usize;
        let r = noise(11, 4000);
        let funcs: Vec<usize> = (0..60)
            .map(|k| 200 + k * 990 + usize::from(r[k]) % 100)
            .collect();
        let calls = references(n, &funcs, &r, 7, 40);
        let insert = n / 2;
        let old_code = code_with_calls(n, &calls);
        let moved = |p: usize| if p >= insert { p + 64 } else { p };
        let new_calls: Vec<(usize, usize)> =
            calls.iter().map(|&(a, t)| (moved(a), moved(t))).collect();
        let mut new_code = old_code.clone();
        new_code.splice(insert..insert, noise(7, 64));
        for &(a, t) in &new_calls {
            new_code[a + 1..a + 5].copy_from_slice(&(t as i32 - (a as i32 + 5)).to_le_bytes());
        }
        let data = noise(6, 4096);
        let old = super::super::exec::tests::tiny_elf(&old_code, &data);
        let new = super::super::exec::tests::tiny_elf(&new_code, &data);
        let plain = make(&old, &new, false).unwrap().unwrap();
        let exec = make(&old, &new, true).unwrap().unwrap();
        assert_eq!(apply_vec(&old, &plain, new.len() as u64).unwrap(), new);
        assert_eq!(apply_vec(&old, &exec, new.len() as u64).unwrap(), new);
        // Tools given the bare file tell the two apart by the header's flags.
        assert_eq!(super::super::sniff_format(&plain), Some(FORMAT));
        assert_eq!(super::super::sniff_format(&exec), Some(EXEC_FORMAT));
        assert!(
            exec.len() * 2 < plain.len(),
            "exec {} bytes, plain {} bytes",
            exec.len(),
            plain.len()
        );
    }

    /// A kernel-like pair: code loading absolute addresses of functions
    /// (`mov $imm32, %rdi`), data holding 64-bit addresses of them, and an appended
    /// relocation table listing both; the new version inserts 64 bytes of code.
    fn kernel_like_pair() -> (Vec<u8>, Vec<u8>) {
        const CODE_VA: usize = 0x1000 + 64 + 2 * 56;
        let n = 60_000usize;
        let r = noise(21, 8000);
        let funcs: Vec<usize> = (0..80).map(|k| 300 + k * 740 + usize::from(r[k])).collect();
        let insert = n / 2;
        let moved = |p: usize| if p >= insert { p + 64 } else { p };
        let loads = references(n, &funcs, &r, 9, 50);
        let build = |moved: &dyn Fn(usize) -> usize, extra: Option<Vec<u8>>| {
            let mut code = noise(22, n);
            for &(a, _) in &loads {
                code[a..a + 7].fill(0x90);
            }
            if let Some(e) = extra {
                code.splice(insert..insert, e);
            }
            let mut sites32 = Vec::new();
            for &(a, t) in &loads {
                let a = moved(a);
                code[a..a + 3].copy_from_slice(&[0x48, 0xC7, 0xC7]);
                let v = (CODE_VA + moved(t)) as u32;
                code[a + 3..a + 7].copy_from_slice(&v.to_le_bytes());
                sites32.push((CODE_VA + a + 3) as u32);
            }
            let data_va = 0x1000 + (64 + 2 * 56 + code.len()) + 0x1000;
            let mut data = Vec::new();
            let mut sites64 = Vec::new();
            for k in 0..512 {
                sites64.push((data_va + data.len()) as u32);
                let t = funcs[usize::from(r[4000 + k]) % funcs.len()];
                data.extend_from_slice(&((CODE_VA + moved(t)) as u64).to_le_bytes());
            }
            let mut f = super::super::exec::tests::tiny_elf(&code, &data);
            for part in [vec![0u32], sites64, vec![0, 0], sites32] {
                for w in part {
                    f.extend_from_slice(&w.to_le_bytes());
                }
            }
            f
        };
        let old = build(&|p| p, None);
        let new = build(&moved, Some(noise(23, 64)));
        (old, new)
    }

    #[test]
    fn an_appended_relocation_table_makes_absolute_addresses_and_itself_predicted() {
        let (old, new) = kernel_like_pair();
        let (_, v1) = make_both_by(&old, &new, false, true, Rules::V1, true).unwrap();
        let (_, v2) = make_both_by(&old, &new, false, true, Rules::V2, true).unwrap();
        let (v1, v2) = (v1.unwrap(), v2.unwrap());
        assert_eq!((v1[8], v2[8]), (1, 2), "each delta names its rules");
        assert_eq!(apply_vec(&old, &v1, new.len() as u64).unwrap(), new);
        assert_eq!(apply_vec(&old, &v2, new.len() as u64).unwrap(), new);
        assert!(
            v2.len() * 2 < v1.len(),
            "by the extended rules {} bytes, by the first {} bytes",
            v2.len(),
            v1.len()
        );
    }

    #[test]
    fn coded_words_come_back_whatever_the_pieces_they_are_written_in() {
        let raw = noise(31, 10_000);
        let coded = [(100u64, 1100u64), (1100, 1500), (4000, 9996)];
        let mut c = raw.clone();
        code_words(&raw[..], &coded, 0, &mut c, &mut Vec::new()).unwrap();
        assert_ne!(c, raw);
        // Coding a piece gives the same bytes as coding the whole.
        let mut piece = raw[1050..4100].to_vec();
        code_words(&raw[..], &coded, 1050, &mut piece, &mut Vec::new()).unwrap();
        assert_eq!(piece, c[1050..4100]);
        for step in [1usize, 3, 7, 4096] {
            let mut out = Vec::new();
            let mut w = Uncode::new(&mut out, &coded);
            for part in c.chunks(step) {
                w.write_all(part).unwrap();
            }
            assert_eq!(out, raw, "written {step} bytes at a time");
        }
    }

    #[test]
    fn word_tables_outside_the_files_or_out_of_order_are_refused() {
        let (old, new) = kernel_like_pair();
        let (_, d) = make_both_by(&old, &new, false, true, Rules::V2, true).unwrap();
        let d = d.unwrap();
        let (n_old, n_new) = (usize::from(d[12]), usize::from(d[13]));
        assert!(n_old == 1 && n_new == 1, "the relocation tables are coded");
        let lists = HEADER + usize::from(d[11]) * SEGMENT;
        let set =
            |d: &mut Vec<u8>, at: usize, v: u64| d[at..at + 8].copy_from_slice(&v.to_le_bytes());
        let mut past_result = d.clone();
        set(&mut past_result, lists + 16 + 8, new.len() as u64 + 4);
        let e = apply_vec(&old, &past_result, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("past the result"), "{e}");
        let mut past_base = d.clone();
        set(&mut past_base, lists + 8, old.len() as u64 + 4);
        let e = apply_vec(&old, &past_base, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("past the"), "{e}");
        let mut ragged = d.clone();
        set(
            &mut ragged,
            lists,
            u64::from_le_bytes(d[lists..lists + 8].try_into().unwrap()) + 1,
        );
        let e = apply_vec(&old, &ragged, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("whole number of words"), "{e}");
        let mut empty = d.clone();
        set(&mut empty, lists + 8, 0);
        let e = apply_vec(&old, &empty, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
        let mut v1 = d.clone();
        v1[8] = 1;
        let e = apply_vec(&old, &v1, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("version 1"), "{e}");
    }

    #[test]
    fn corrupt_truncated_or_oversized_bsdiff_deltas_are_errors() {
        let old = noise(1, 50_000);
        let mut new = old.clone();
        new.splice(100..100, noise(2, 300));
        let d = make(&old, &new, false).unwrap().unwrap();
        let max = new.len() as u64;
        for cut in [0, 8, 63, 64, d.len() / 2, d.len() - 1] {
            assert!(
                apply_vec(&old, &d[..cut], max).is_err(),
                "truncated at {cut}"
            );
        }
        let mut padded = d.clone();
        padded.push(0);
        assert!(apply_vec(&old, &padded, max).is_err(), "trailing byte");
        assert!(matches!(
            apply_vec(&old, &d, max - 1),
            Err(DeltaError::TooLong { .. })
        ));
        assert!(apply_vec(&old[..1000], &d, max).is_err(), "a shorter base");
        for i in (0..d.len()).step_by(3) {
            let mut f = d.clone();
            f[i] ^= 0x41;
            if let Ok(out) = apply_vec(&old, &f, max) {
                // Diff and extra bytes carry no checksum: the caller's hash check catches
                // these; what matters is no panic and no output past the cap.
                assert!(out.len() as u64 <= max);
            }
        }
        // Too many entries is refused before anything is decoded.
        let mut many = d.clone();
        many[24..32].copy_from_slice(&(MAX_ENTRIES + 1).to_le_bytes());
        assert!(apply_vec(&old, &many, max)
            .unwrap_err()
            .to_string()
            .contains("entries"));
    }
}

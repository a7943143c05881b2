//! Owns the chunked delta format (`zstd-chunked`): a delta applied with bounded memory,
//! for system images and other large artifacts.
//!
//! The result is cut into chunks of `chunk_size` bytes. Each chunk is one zstd frame
//! compressed with a *window of the base* as reference prefix: `ref_length` bytes from
//! `ref_offset`, chosen by the builder where the chunk's blocks are found in the base (file
//! system images mostly keep data in place, or move it by whole blocks). Applying reads one
//! window and decodes one chunk at a time, so memory is one window plus one chunk plus the
//! decoder's state, whatever the size of the image ([`apply_memory`]); with the files
//! mapped ([`apply_mapped`]), the decoder's state alone.
//!
//! ```text
//! "PTRLCHK1"  u32 chunk_size  u64 result_length  u32 chunks     (little-endian)
//! per chunk:  u64 ref_offset  u32 ref_length  u32 frame_length  frame bytes
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use zstd::zstd_safe::{self, DParameter};

use super::DeltaError;

/// The `format` of a chunked delta.
pub const FORMAT: &str = "zstd-chunked";
/// The magic at the start of a chunked delta.
pub const MAGIC: &[u8; 8] = b"PTRLCHK1";
/// The chunk size the builder uses: small enough that a streaming apply holds about
/// 6 MiB ([`apply_memory`]). On a kernel image 1.5 MiB chunks make the delta 1.3 % larger
/// than 4 MiB chunks, and it is built faster.
pub const CHUNK_SIZE: u32 = 1536 * 1024;
/// The largest chunk a device accepts.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// The largest base window of one chunk a device accepts (two chunks of the largest size).
pub const MAX_REF_LENGTH: u32 = 2 * MAX_CHUNK_SIZE;
/// The window of the builder's rolling hash.
const ANCHOR_WINDOW: usize = 64;

/// The buffers [`apply`] (streaming) holds at most for `chunk_size` chunks: the base window
/// (refused above two chunks), the frame (refused above a chunk and an eighth) and the
/// chunk decoded in one call (so zstd keeps no window of its own): about 6 MiB for
/// [`CHUNK_SIZE`], at most about 64 MiB for any delta a device accepts.
pub fn apply_memory(chunk_size: u32) -> u64 {
    4 * u64::from(chunk_size)
}

/// Calls `f(offset, hash)` at the content-defined anchors of `data`: the 64-byte windows
/// whose rolling hash has its top byte zero (about one in 256 positions). Both versions
/// pick the same anchors in the same content wherever it sits, aligned or not.
fn anchors(data: &[u8], mut f: impl FnMut(usize, u64)) {
    const B: u64 = 0x0100_0000_01b3;
    if data.len() < ANCHOR_WINDOW {
        return;
    }
    let bw = B.wrapping_pow(ANCHOR_WINDOW as u32);
    let mut h = 0u64;
    for (i, &x) in data.iter().enumerate() {
        h = h.wrapping_mul(B).wrapping_add(u64::from(x) + 1);
        if i >= ANCHOR_WINDOW {
            h = h.wrapping_sub((u64::from(data[i - ANCHOR_WINDOW]) + 1).wrapping_mul(bw));
        }
        if i + 1 >= ANCHOR_WINDOW && h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56 == 0 {
            f(i + 1 - ANCHOR_WINDOW, h);
        }
    }
}

/// The anchors of the base: hash → offset, without hashes seen more than a few times
/// (runs of one byte, repeated padding: no clue where a chunk came from).
fn index_base(base: &[u8]) -> HashMap<u64, usize> {
    let mut seen: HashMap<u64, (usize, u32)> = HashMap::new();
    anchors(base, |off, h| {
        let e = seen.entry(h).or_insert((off, 0));
        e.1 += 1;
    });
    seen.into_iter()
        .filter(|(_, (_, n))| *n <= 4)
        .map(|(h, (off, _))| (h, off))
        .collect()
}

/// Where in `base` the chunk `[start, start+len)` of `result` should take its reference
/// window from: around the offset its anchors most often sit at in the base (relative to
/// the chunk), else the same offset.
fn window_for(
    index: &HashMap<u64, usize>,
    base_len: usize,
    result: &[u8],
    start: usize,
    len: usize,
    chunk: usize,
) -> (usize, usize) {
    let mut votes: HashMap<i64, u32> = HashMap::new();
    anchors(&result[start..start + len], |off, h| {
        if let Some(&b) = index.get(&h) {
            *votes.entry(b as i64 - (start + off) as i64).or_default() += 1;
        }
    });
    let shift = votes
        .into_iter()
        .max_by_key(|(s, n)| (*n, -s.abs()))
        .map_or(0, |(s, _)| s);
    let margin = chunk / 2;
    let center = (start as i64 + shift).max(0) as usize;
    let from = center.saturating_sub(margin).min(base_len);
    let to = (center + len + margin).min(base_len);
    (from, to - from)
}

/// Compresses `chunk` with `reference` as prefix: one frame of the whole-file format
/// ([`super::make`]), its window covering both.
fn compress_chunk(reference: &[u8], chunk: &[u8]) -> io::Result<Vec<u8>> {
    super::make(reference, chunk)
}

/// Builds the chunked delta that turns `base` into `result`, chunks compressed in parallel
/// by `map` (give `|n, f| (0..n).map(f).collect()` for one thread).
pub fn make_with(
    base: &[u8],
    result: &[u8],
    chunk_size: u32,
    map: impl FnOnce(
        usize,
        &(dyn Fn(usize) -> io::Result<(u64, u32, Vec<u8>)> + Sync),
    ) -> Vec<io::Result<(u64, u32, Vec<u8>)>>,
) -> io::Result<Vec<u8>> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(io::Error::other(format!(
            "chunk size {chunk_size} is not in 1..={MAX_CHUNK_SIZE}"
        )));
    }
    let chunk = chunk_size as usize;
    let index = index_base(base);
    let n = result.len().div_ceil(chunk);
    let one = |i: usize| -> io::Result<(u64, u32, Vec<u8>)> {
        let start = i * chunk;
        let len = chunk.min(result.len() - start);
        let (from, rlen) = window_for(&index, base.len(), result, start, len, chunk);
        let frame = compress_chunk(&base[from..from + rlen], &result[start..start + len])?;
        Ok((from as u64, rlen as u32, frame))
    };
    let frames = map(n, &one);
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&chunk_size.to_le_bytes());
    out.extend_from_slice(&(result.len() as u64).to_le_bytes());
    out.extend_from_slice(&u32::try_from(n).map_err(io::Error::other)?.to_le_bytes());
    for f in frames {
        let (from, rlen, frame) = f?;
        out.extend_from_slice(&from.to_le_bytes());
        out.extend_from_slice(&rlen.to_le_bytes());
        out.extend_from_slice(
            &u32::try_from(frame.len())
                .map_err(io::Error::other)?
                .to_le_bytes(),
        );
        out.extend_from_slice(&frame);
    }
    Ok(out)
}

/// [`make_with`] on one thread, with [`CHUNK_SIZE`].
pub fn make(base: &[u8], result: &[u8]) -> io::Result<Vec<u8>> {
    make_with(base, result, CHUNK_SIZE, |n, f| (0..n).map(f).collect())
}

fn decode(msg: impl Into<String>) -> DeltaError {
    DeltaError::Decode(msg.into())
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), DeltaError> {
    r.read_exact(buf)
        .map_err(|e| decode(format!("reading {what}: {e}")))
}

fn u32_of(r: &mut impl Read, what: &str) -> Result<u32, DeltaError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b, what)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_of(r: &mut impl Read, what: &str) -> Result<u64, DeltaError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b, what)?;
    Ok(u64::from_le_bytes(b))
}

/// A chunked delta's header, checked against the result's limit.
struct Head {
    chunk_size: u32,
    result_len: u64,
    chunks: u32,
}

fn read_head(delta: &mut impl Read, max_len: u64) -> Result<Head, DeltaError> {
    let mut magic = [0u8; 8];
    read_exact(delta, &mut magic, "the header")?;
    if &magic != MAGIC {
        return Err(decode("not a chunked delta (wrong magic)"));
    }
    let chunk_size = u32_of(delta, "the header")?;
    let result_len = u64_of(delta, "the header")?;
    let chunks = u32_of(delta, "the header")?;
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(decode(format!("chunk size {chunk_size} is out of range")));
    }
    if result_len > max_len {
        return Err(DeltaError::TooLong { max_len });
    }
    if u64::from(chunks) != result_len.div_ceil(u64::from(chunk_size)) {
        return Err(decode(format!(
            "{chunks} chunks do not make {result_len} bytes of {chunk_size}-byte chunks"
        )));
    }
    Ok(Head {
        chunk_size,
        result_len,
        chunks,
    })
}

/// One chunk's header, checked against the base and the format's limits.
struct ChunkHead {
    ref_offset: u64,
    ref_len: usize,
    frame_len: usize,
    /// The chunk's length in the result.
    want: usize,
}

fn read_chunk_head(
    delta: &mut impl Read,
    i: u32,
    head: &Head,
    base_len: u64,
    done: u64,
) -> Result<ChunkHead, DeltaError> {
    let chunk_size = head.chunk_size;
    let ref_offset = u64_of(delta, "a chunk header")?;
    let ref_len = u32_of(delta, "a chunk header")?;
    let frame_len = u32_of(delta, "a chunk header")?;
    if ref_len > MAX_REF_LENGTH.min(2 * chunk_size)
        || ref_offset.saturating_add(u64::from(ref_len)) > base_len
    {
        return Err(decode(format!(
            "chunk {i}: base window {ref_offset}+{ref_len} is outside the {base_len}-byte base or too large"
        )));
    }
    if frame_len > chunk_size + chunk_size / 8 + 1024 {
        return Err(decode(format!(
            "chunk {i}: a {frame_len}-byte frame is too large"
        )));
    }
    Ok(ChunkHead {
        ref_offset,
        ref_len: ref_len as usize,
        frame_len: frame_len as usize,
        want: (head.result_len - done).min(u64::from(chunk_size)) as usize,
    })
}

/// Decodes chunk `i` from `frame` with `window` as reference prefix into all of `dst`,
/// in one call (so zstd keeps no window of its own).
fn decode_chunk(i: u32, window: &[u8], frame: &[u8], dst: &mut [u8]) -> Result<(), DeltaError> {
    let want = dst.len();
    let wlog = super::window_log_for((window.len() + want) as u64)
        .ok_or_else(|| decode("window too large"))?;
    let mut dctx = zstd_safe::DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(wlog))
        .map_err(|c| decode(zstd_safe::get_error_name(c)))?;
    dctx.ref_prefix(window)
        .map_err(|c| decode(zstd_safe::get_error_name(c)))?;
    let n = dctx
        .decompress(dst, frame)
        .map_err(|c| decode(format!("chunk {i}: {}", zstd_safe::get_error_name(c))))?;
    if n != want {
        return Err(decode(format!("chunk {i}: {n} bytes, not {want}")));
    }
    Ok(())
}

fn expect_end(delta: &mut impl Read) -> Result<(), DeltaError> {
    let mut rest = [0u8; 1];
    if delta.read(&mut rest).map_err(|e| decode(e.to_string()))? != 0 {
        return Err(decode("bytes follow the last chunk"));
    }
    Ok(())
}

/// Applies a chunked `delta` to the first `base_len` bytes of `base` (read window by
/// window), writing the result to `out`; returns its length. At most `max_len` bytes are
/// written; chunks, windows and frames larger than the format's limits are refused, as is
/// anything after the last chunk. Output written before an error is garbage: the caller
/// checks the result against the signed hash in any case.
pub fn apply(
    mut base: impl Read + Seek,
    base_len: u64,
    mut delta: impl Read,
    max_len: u64,
    mut out: impl Write,
) -> Result<u64, DeltaError> {
    let head = read_head(&mut delta, max_len)?;
    let mut window = Vec::new();
    let mut frame = Vec::new();
    let mut chunk = vec![0u8; head.chunk_size as usize];
    let mut total = 0u64;
    for i in 0..head.chunks {
        let c = read_chunk_head(&mut delta, i, &head, base_len, total)?;
        window.resize(c.ref_len, 0);
        base.seek(SeekFrom::Start(c.ref_offset))
            .and_then(|_| base.read_exact(&mut window))
            .map_err(|e| decode(format!("reading the base at {}: {e}", c.ref_offset)))?;
        frame.resize(c.frame_len, 0);
        read_exact(&mut delta, &mut frame, "a chunk")?;
        decode_chunk(i, &window, &frame, &mut chunk[..c.want])?;
        out.write_all(&chunk[..c.want]).map_err(DeltaError::Write)?;
        total += c.want as u64;
    }
    expect_end(&mut delta)?;
    out.flush().map_err(DeltaError::Write)?;
    Ok(total)
}

/// [`apply`] with the base and the delta mapped and the result written through a map of
/// `out` (sized to the result first): each chunk is decoded straight from the mapped
/// delta, against its window of the mapped base, into its place in the output, so no
/// buffer is held but the decoder's state. The same checks as [`apply`].
pub fn apply_mapped(
    base: &[u8],
    delta: &[u8],
    max_len: u64,
    out: &std::fs::File,
) -> Result<u64, DeltaError> {
    let mut r = delta;
    let head = read_head(&mut r, max_len)?;
    let mut m = super::map::write(out, head.result_len).map_err(DeltaError::Write)?;
    // An empty result has no map, and no chunks.
    let result: &mut [u8] = m.as_deref_mut().unwrap_or_default();
    let mut total = 0u64;
    for i in 0..head.chunks {
        let c = read_chunk_head(&mut r, i, &head, base.len() as u64, total)?;
        if r.len() < c.frame_len {
            return Err(decode(format!(
                "reading a chunk: chunk {i} needs {} bytes, the delta ends after {}",
                c.frame_len,
                r.len()
            )));
        }
        let (frame, rest) = r.split_at(c.frame_len);
        r = rest;
        let window = &base[c.ref_offset as usize..c.ref_offset as usize + c.ref_len];
        let at = total as usize;
        decode_chunk(i, window, frame, &mut result[at..at + c.want])?;
        total += c.want as u64;
    }
    expect_end(&mut r)?;
    // No msync: whoever needs the result durable syncs the file.
    drop(m);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

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

    /// An "image": blocks of noise; the new one moves a region by whole blocks, edits a
    /// few bytes and grows.
    fn images() -> (Vec<u8>, Vec<u8>) {
        let old = noise(1, 3 * 1024 * 1024 + 100);
        let mut new = old.clone();
        new[5000..5100].copy_from_slice(&noise(2, 100));
        let moved: Vec<u8> = old[1_000_000..1_400_000].to_vec();
        new[2_200_000..2_600_000].copy_from_slice(&moved);
        new.extend_from_slice(&noise(3, 70_000));
        (old, new)
    }

    #[test]
    fn a_chunked_delta_rebuilds_the_result_in_small_chunks_and_is_small() {
        let (old, new) = images();
        let d = make_with(&old, &new, 512 * 1024, |n, f| (0..n).map(f).collect()).unwrap();
        assert!(d.len() < 200_000, "{} bytes for few edits", d.len());
        let mut out = Vec::new();
        let n = apply(
            Cursor::new(&old),
            old.len() as u64,
            &d[..],
            new.len() as u64,
            &mut out,
        )
        .unwrap();
        assert_eq!(n, new.len() as u64);
        assert!(out == new, "rebuilt bytes differ");
    }

    #[test]
    fn a_chunked_delta_applied_through_maps_rebuilds_the_same_bytes() {
        let (old, new) = images();
        let d = make_with(&old, &new, 512 * 1024, |n, f| (0..n).map(f).collect()).unwrap();
        let out = tempfile::tempfile().unwrap();
        // A longer file before: the result replaces it whole.
        std::fs::File::set_len(&out, 9 * 1024 * 1024).unwrap();
        let n = apply_mapped(&old, &d, new.len() as u64, &out).unwrap();
        assert_eq!(n, new.len() as u64);
        let mut got = Vec::new();
        let mut f = &out;
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut got).unwrap();
        assert!(got == new, "rebuilt bytes differ");
    }

    #[test]
    fn a_chunked_delta_refuses_a_short_base_a_cap_truncation_and_trailing_bytes() {
        let (old, new) = images();
        let d = make_with(&old, &new, 512 * 1024, |n, f| (0..n).map(f).collect()).unwrap();
        // Streamed, and mapped: the same refusals.
        let apply_to = |base: &[u8], delta: &[u8], max: u64| {
            let out = tempfile::tempfile().unwrap();
            let mapped = apply_mapped(base, delta, max, &out);
            let streamed = apply(
                Cursor::new(base),
                base.len() as u64,
                delta,
                max,
                &mut Vec::new(),
            );
            assert_eq!(
                mapped.as_ref().map_err(std::mem::discriminant),
                streamed.as_ref().map_err(std::mem::discriminant),
                "mapped {mapped:?}, streamed {streamed:?}"
            );
            streamed
        };
        assert!(apply_to(&old[..1_000_000], &d, new.len() as u64).is_err());
        assert!(matches!(
            apply_to(&old, &d, new.len() as u64 - 1),
            Err(DeltaError::TooLong { .. })
        ));
        assert!(apply_to(&old, &d[..d.len() - 10], new.len() as u64).is_err());
        let mut long = d.clone();
        long.push(0);
        assert!(apply_to(&old, &long, new.len() as u64).is_err());
        let mut bad = d.clone();
        bad[0] = b'X';
        assert!(apply_to(&old, &bad, new.len() as u64).is_err());
    }
}

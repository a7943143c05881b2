//! Owns the delta formats: building and applying zstd patch-from deltas, bounded, and
//! (in [`chunked`]) chunked deltas applied with bounded memory.
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

pub mod chunked;

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
        if m.format != FORMAT && m.format != chunked::FORMAT {
            return Err(format!(
                "custom metadata \"delta\".format is {:?}; this version reads {FORMAT:?} and {:?}",
                m.format,
                chunked::FORMAT
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
        CParameter::CompressionLevel(LEVEL),
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

//! Delta apply (`delta::apply`, zstd patch-from, and `delta::chunked::apply`, the chunked
//! format) of arbitrary bytes against a fixed 16 KiB base. Mode byte: bit 0 the format;
//! bits 1-3 the output cap (`max_len`); bit 4 (chunked) whether the base handed over is
//! only its first half; bits 5-7 all set: a round trip instead (the input is a result,
//! delta built by `make`, applied, compared). Bit 0 and bit 5 set (bits 5-7 not all set):
//! the bsdiff family (`delta::bsdiff::apply`) instead of the chunked format.
//!
//! Properties: never a panic; never more than `max_len` bytes written, and the returned
//! length is what was written; the chunked format reads nothing of the base beyond the
//! `base_len` it is given.
#![no_main]

use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use petrel_client::delta::{self, chunked};
use petrel_fuzz::mode;

const CAPS: [u64; 8] = [0, 1, 100, 4096, 16 * 1024, 64 * 1024, 1 << 20, 16 << 20];

/// The fixed base: text-like lines and pseudo-random blocks (deterministic).
pub fn base() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(petrel_fuzz::delta_base)
}

/// Counts what is written and checks the cap as it goes.
struct Sink {
    max: u64,
    written: u64,
    keep: Option<Vec<u8>>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len() as u64;
        assert!(
            self.written <= self.max,
            "{} bytes written, cap {}",
            self.written,
            self.max
        );
        if let Some(k) = &mut self.keep {
            k.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The base as `Read + Seek`, recording the furthest byte read.
struct Base<'a> {
    inner: Cursor<&'a [u8]>,
    furthest: u64,
}

impl Read for Base<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.furthest = self.furthest.max(self.inner.position());
        Ok(n)
    }
}

impl Seek for Base<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

fn patch(data: &[u8], max: u64, keep: bool) -> Option<Vec<u8>> {
    let mut sink = Sink {
        max,
        written: 0,
        keep: keep.then(Vec::new),
    };
    let r = delta::apply(base(), data, max, &mut sink);
    if let Ok(n) = r {
        assert_eq!(
            n, sink.written,
            "returned length differs from bytes written"
        );
    }
    r.ok().and(sink.keep)
}

fn chunks(data: &[u8], max: u64, base_len: u64, keep: bool) -> Option<Vec<u8>> {
    let mut sink = Sink {
        max,
        written: 0,
        keep: keep.then(Vec::new),
    };
    let mut b = Base {
        inner: Cursor::new(base()),
        furthest: 0,
    };
    let r = chunked::apply(&mut b, base_len, data, max, &mut sink);
    assert!(
        b.furthest <= base_len,
        "read base byte {} beyond base_len {base_len}",
        b.furthest
    );
    if let Ok(n) = r {
        assert_eq!(
            n, sink.written,
            "returned length differs from bytes written"
        );
    }
    r.ok().and(sink.keep)
}

fn bsd(data: &[u8], max: u64) {
    let mut sink = Sink {
        max,
        written: 0,
        keep: None,
    };
    if let Ok(n) = delta::bsdiff::apply(base(), data, max, &mut sink) {
        assert_eq!(
            n, sink.written,
            "returned length differs from bytes written"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (m, rest) = mode(data);
    if m >> 5 == 7 {
        // Round trip on a small result (building is slow at level 19).
        let result = &rest[..rest.len().min(2048)];
        let d = delta::make(base(), result).expect("make");
        assert_eq!(
            patch(&d, result.len() as u64, true).as_deref(),
            Some(result)
        );
        let c = chunked::make_with(base(), result, 1024, |n, f| (0..n).map(f).collect())
            .expect("chunked make");
        let full = base().len() as u64;
        assert_eq!(
            chunks(&c, result.len() as u64, full, true).as_deref(),
            Some(result)
        );
        return;
    }
    let max = CAPS[usize::from((m >> 1) & 7)];
    if m & 1 == 0 {
        patch(rest, max, false);
    } else if m & 32 != 0 {
        bsd(rest, max);
    } else {
        let full = base().len() as u64;
        let base_len = if m & 16 != 0 { full / 2 } else { full };
        chunks(rest, max, base_len, false);
    }
});

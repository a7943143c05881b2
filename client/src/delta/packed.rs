//! Owns the packed codings of the bsdiff-family streams: the entries as three LEB128
//! columns, and the diff stream with its zero runs counted.
//!
//! A bsdiff diff stream is mostly zero bytes (an old byte that matched its new byte);
//! written as is, zstd's strongest levels spend most of a build parsing them. Packed, a
//! byte `b != 0` stands for itself and a `0` is followed by the LEB128 number `n`,
//! standing for `n + 1` zero bytes: a 53 MB diff stream of a 55 MB tar becomes 2 MB before
//! zstd, which then compresses it ten times faster and a little smaller. The entries are
//! written as every `mix` length, then every `copy` length, then every seek (zigzag), each
//! in LEB128: like values beside like values, which compresses a fifth smaller than the
//! fixed-width triples.

use std::io::{self, BufRead, Read};

/// The longest LEB128 number read (a u64).
const MAX_LEB: usize = 10;

/// Appends `v` in LEB128.
pub fn put_leb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Reads one LEB128 number of at most [`MAX_LEB`] bytes; `None` at a clean end of input.
pub fn read_leb(r: &mut impl BufRead) -> io::Result<Option<u64>> {
    let mut v = 0u64;
    for i in 0..MAX_LEB {
        let b = match r.fill_buf()?.first() {
            Some(&b) => b,
            None if i == 0 => return Ok(None),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ends inside a number",
                ))
            }
        };
        r.consume(1);
        let part = u64::from(b & 0x7f);
        if i == MAX_LEB - 1 && part > 1 {
            break;
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(v));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "a number longer than 64 bits",
    ))
}

/// The entries `(mix, copy, seek)` as three LEB128 columns.
pub fn pack_entries(entries: &[(u32, u32, i32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 6);
    for (m, _, _) in entries {
        put_leb(&mut out, u64::from(*m));
    }
    for (_, c, _) in entries {
        put_leb(&mut out, u64::from(*c));
    }
    for (_, _, s) in entries {
        put_leb(&mut out, u64::from(zigzag(*s)));
    }
    out
}

/// Reads `n` entries written by [`pack_entries`] into `(mix, copy, seek)` triples; an
/// error names the column and entry where the stream ends or holds a value out of range.
pub fn unpack_entries(r: &mut impl BufRead, n: usize) -> io::Result<Vec<(u32, u32, i32)>> {
    let mut entries = vec![(0u32, 0u32, 0i32); n];
    for column in 0..3 {
        for (i, e) in entries.iter_mut().enumerate() {
            let name = ["mix", "copy", "seek"][column];
            let bad = |why: &str| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the {name} length of entry {i} {why}"),
                )
            };
            let v = read_leb(r)
                .map_err(|x| bad(&format!("cannot be read: {x}")))?
                .ok_or_else(|| bad("is missing: the control stream ends early"))?;
            let v = u32::try_from(v).map_err(|_| bad("is larger than 32 bits"))?;
            match column {
                0 => e.0 = v,
                1 => e.1 = v,
                _ => e.2 = unzigzag(v),
            }
        }
    }
    Ok(entries)
}

fn zigzag(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

fn unzigzag(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

/// Writes a diff stream as it is produced: packed (zero runs counted, other bytes as they
/// are) or, for the first form of the format, plain.
pub struct ZeroRuns {
    out: Vec<u8>,
    run: u64,
    plain: bool,
}

impl ZeroRuns {
    /// An empty stream, packed or not, with room for `capacity` bytes.
    pub fn new(packed: bool, capacity: usize) -> Self {
        ZeroRuns {
            out: Vec::with_capacity(capacity),
            run: 0,
            plain: !packed,
        }
    }

    /// Appends diff bytes.
    pub fn extend(&mut self, mut bytes: &[u8]) {
        if self.plain {
            self.out.extend_from_slice(bytes);
            return;
        }
        while !bytes.is_empty() {
            if self.run > 0 || bytes[0] == 0 {
                let zeros = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
                self.run += zeros as u64;
                bytes = &bytes[zeros..];
                if bytes.is_empty() {
                    return;
                }
                self.end_run();
            }
            let lit = memchr::memchr(0, bytes).unwrap_or(bytes.len());
            self.out.extend_from_slice(&bytes[..lit]);
            bytes = &bytes[lit..];
        }
    }

    fn end_run(&mut self) {
        if self.run > 0 {
            self.out.push(0);
            put_leb(&mut self.out, self.run - 1);
            self.run = 0;
        }
    }

    /// The stream.
    pub fn finish(mut self) -> Vec<u8> {
        self.end_run();
        self.out
    }
}

/// Reads a packed diff stream back as the diff bytes.
pub struct Unpack<R> {
    inner: R,
    zeros: u64,
}

impl<R: BufRead> Unpack<R> {
    /// Unpacks `inner`.
    pub fn new(inner: R) -> Self {
        Unpack { inner, zeros: 0 }
    }

    /// The packed stream, once every diff byte it holds has been read; an error when a
    /// zero run goes on past the last byte read.
    pub fn into_inner(self) -> io::Result<R> {
        if self.zeros > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a run of zeros goes {} bytes past its entries", self.zeros),
            ));
        }
        Ok(self.inner)
    }
}

impl<R: BufRead> Read for Unpack<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.zeros == 0 {
            let avail = self.inner.fill_buf()?;
            match avail.first() {
                None => return Ok(0),
                Some(0) => {
                    self.inner.consume(1);
                    let n = read_leb(&mut self.inner)?.ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the diff stream ends inside a run of zeros",
                        )
                    })?;
                    self.zeros = n.checked_add(1).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "a run of zeros too long")
                    })?;
                }
                Some(_) => {
                    let n = buf.len().min(avail.len());
                    let lit = memchr::memchr(0, &avail[..n]).unwrap_or(n);
                    buf[..lit].copy_from_slice(&avail[..lit]);
                    self.inner.consume(lit);
                    return Ok(lit);
                }
            }
        }
        let n = (buf.len() as u64).min(self.zeros) as usize;
        buf[..n].fill(0);
        self.zeros -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unpack_all(packed: &[u8], buf: usize) -> io::Result<Vec<u8>> {
        let mut u = Unpack::new(io::BufReader::with_capacity(7, packed));
        let mut out = Vec::new();
        let mut b = vec![0u8; buf];
        loop {
            let n = u.read(&mut b)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[..n]);
        }
        u.into_inner()?;
        Ok(out)
    }

    proptest! {
        #[test]
        fn zero_runs_come_back_byte_for_byte(
            pieces in proptest::collection::vec(
                (0u8..3, 0usize..300, any::<u8>()), 0..40),
            split in 1usize..97,
            buf in 1usize..50,
        ) {
            // Runs of zeros and of other bytes, fed in pieces of any size.
            let mut diff = Vec::new();
            for (kind, len, b) in pieces {
                let b = if kind == 0 { 0 } else { b.max(1) };
                diff.extend(std::iter::repeat_n(b, len));
            }
            let mut z = ZeroRuns::new(true, 0);
            for c in diff.chunks(split) {
                z.extend(c);
            }
            let packed = z.finish();
            prop_assert!(packed.len() <= diff.len() + diff.len() / 2 + 1);
            prop_assert_eq!(unpack_all(&packed, buf).unwrap(), diff);
        }

        #[test]
        fn entries_come_back(entries in proptest::collection::vec(
            (any::<u32>(), any::<u32>(), any::<i32>()), 0..50)) {
            let p = pack_entries(&entries);
            let back = unpack_entries(&mut &p[..], entries.len()).unwrap();
            prop_assert_eq!(back, entries);
        }
    }

    #[test]
    fn a_long_zero_run_is_a_few_bytes() {
        let mut z = ZeroRuns::new(true, 0);
        z.extend(&vec![0u8; 1 << 20]);
        z.extend(&[5]);
        assert_eq!(z.finish(), [0, 0xff, 0xff, 0x3f, 5]);
    }

    #[test]
    fn a_run_or_number_cut_short_or_too_long_is_an_error() {
        // A zero with no count after it.
        assert!(unpack_all(&[7, 0], 8).is_err());
        // A count that does not end.
        assert!(unpack_all(&[0, 0x80, 0x80], 8).is_err());
        // A count over 64 bits.
        assert!(unpack_all(
            &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            8
        )
        .is_err());
        // A run longer than what is read: into_inner says so.
        let mut u = Unpack::new(&[0u8, 9][..]);
        let mut b = [1u8; 4];
        assert_eq!(u.read(&mut b).unwrap(), 4);
        assert_eq!(b, [0; 4]);
        assert!(u.into_inner().is_err());
        // Entries: a missing column, a value over 32 bits.
        assert!(unpack_entries(&mut &[1u8, 2][..], 1).is_err());
        let mut over = Vec::new();
        put_leb(&mut over, 1 << 32);
        over.extend([0, 0]);
        assert!(unpack_entries(&mut &over[..], 1).is_err());
    }
}

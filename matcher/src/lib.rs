//! Owns bsdiff's matching: the suffix array of the old bytes (built by libsais on every
//! core) and bsdiff's scan of the new bytes, in pieces scanned side by side.
//!
//! The scan is Colin Percival's: at each new position, the longest match anywhere in the
//! old bytes (a binary search of the suffix array) is taken when it is clearly better than
//! continuing the current alignment, and each alignment is extended forwards and backwards
//! while more than half of its bytes agree, so that nearly equal regions (code whose
//! addresses changed) become one approximate match whose differences go to the diff
//! stream. The new bytes are cut into [`pieces`] of equal length, fixed by the length
//! alone (so a delta does not depend on the machine that builds it), and the pieces are
//! scanned in parallel; each piece starts a fresh alignment, which costs a few bytes.

use std::io;

/// The longest piece of new bytes one scan covers.
pub const PIECE: usize = 16 * 1024 * 1024;

/// One match of the scan: the `add_length` new bytes from `add_new_start` are the old
/// bytes from `add_old_start` plus diff bytes, then the new bytes up to `copy_end` are
/// literal. The matches of a scan tile the new bytes in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// Where the approximate match starts in the old bytes.
    pub add_old_start: usize,
    /// Where it starts in the new bytes.
    pub add_new_start: usize,
    /// Its length.
    pub add_length: usize,
    /// Where the literal bytes after it end in the new bytes.
    pub copy_end: usize,
}

/// How many pieces [`matches`] cuts `len` new bytes into.
pub fn pieces(len: usize) -> usize {
    len.div_ceil(PIECE).max(1)
}

/// From this many old bytes on, the suffix array is sorted on every core. Smaller ones
/// are sorted on one: there the threads' start and their waiting for work cost more than
/// they save (a tree's small files are matched side by side anyway).
pub const PARALLEL_SORT_FROM: usize = 4 << 20;

/// From this many old bytes on, [`Index`] also holds where each two-byte prefix's
/// suffixes start (256 KiB), so that a search starts among the suffixes sharing the
/// needle's first two bytes instead of among all of them: ten or so steps of the binary
/// search fewer, each two cache misses.
pub const BUCKETS_FROM: usize = 16 << 20;

/// The suffix array of the old bytes.
pub struct Index<'a> {
    old: &'a [u8],
    sa: Vec<i32>,
    /// `buckets[v]`: how many suffixes sort before the two bytes `v >> 8, v & 0xFF` (as
    /// a needle; [`sorts_before`]), 65,537 entries; empty under [`BUCKETS_FROM`].
    buckets: Vec<u32>,
}

/// Whether `suffix` sorts before `needle` in the search: it is a proper prefix of it, or
/// its first byte that differs is smaller. `l` is their common prefix's length.
fn sorts_before(suffix: &[u8], needle: &[u8], l: usize) -> bool {
    l < needle.len() && (l == suffix.len() || suffix[l] < needle[l])
}

impl<'a> Index<'a> {
    /// Sorts the suffixes of `old` (at most `i32::MAX` bytes), on every core from
    /// [`PARALLEL_SORT_FROM`] bytes on.
    pub fn new(old: &'a [u8]) -> io::Result<Index<'a>> {
        Index::build(old, old.len() >= BUCKETS_FROM)
    }

    /// [`Index::new`], with the two-byte buckets or without.
    fn build(old: &'a [u8], with_buckets: bool) -> io::Result<Index<'a>> {
        if old.len() > i32::MAX as usize {
            return Err(io::Error::other(format!(
                "{} old bytes are more than a suffix array of 32-bit positions holds",
                old.len()
            )));
        }
        let mut sa = vec![0i32; old.len()];
        if !old.is_empty() {
            let threads = if old.len() < PARALLEL_SORT_FROM {
                1
            } else {
                std::thread::available_parallelism()
                    .map_or(1, |t| t.get())
                    .clamp(1, 64) as u16
            };
            libsais::SuffixArrayConstruction::for_text(old)
                .in_borrowed_buffer(&mut sa)
                .multi_threaded(libsais::ThreadCount::fixed(threads))
                .run()
                .map_err(|e| io::Error::other(format!("sorting the old bytes: {e:?}")))?;
        }
        let buckets = if with_buckets {
            use rayon::prelude::*;
            let mut b: Vec<u32> = (0..1usize << 16)
                .into_par_iter()
                .map(|v| {
                    let two = [(v >> 8) as u8, v as u8];
                    sa.partition_point(|&p| {
                        let s = &old[p as usize..];
                        sorts_before(s, &two, common_prefix(s, &two))
                    }) as u32
                })
                .collect();
            b.push(sa.len() as u32);
            b
        } else {
            Vec::new()
        };
        Ok(Index { old, sa, buckets })
    }

    fn suffix(&self, i: usize) -> &'a [u8] {
        &self.old[self.sa[i] as usize..]
    }

    /// The old position and length of the longest prefix of `needle` found in the old
    /// bytes: a binary search of the suffix array; of the two suffixes around the
    /// needle, the one sharing more with it (the later on a tie).
    fn longest(&self, needle: &[u8]) -> (usize, usize) {
        if self.sa.is_empty() || needle.is_empty() {
            return (0, 0);
        }
        let n = self.sa.len();
        let (mut lo, mut hi) = (0usize, n - 1);
        if needle.len() >= 2 && !self.buckets.is_empty() && n >= 2 {
            // The needle's place lies in [a, b], its two bytes' bucket. The search ends
            // on the same two neighbours from any bounds that hold it (the first or a
            // suffix before the needle; the last or one not before it).
            let v = usize::from(needle[0]) << 8 | usize::from(needle[1]);
            let (a, b) = (self.buckets[v] as usize, self.buckets[v + 1] as usize);
            lo = a.saturating_sub(1).min(n - 2);
            hi = b.min(n - 1).max(lo + 1);
        }
        let mut l_lo = common_prefix(self.suffix(lo), needle);
        let mut l_hi = common_prefix(self.suffix(hi), needle);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let s = self.suffix(mid);
            // From the start: skipping the prefix both bounds share with the needle
            // measured a third slower on real pairs.
            let l = common_prefix(s, needle);
            if sorts_before(s, needle, l) {
                lo = mid;
                l_lo = l;
            } else {
                hi = mid;
                l_hi = l;
            }
        }
        if l_lo > l_hi {
            (self.sa[lo] as usize, l_lo)
        } else {
            (self.sa[hi] as usize, l_hi)
        }
    }
}

/// The length of the common prefix of `a` and `b`, eight bytes at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 32 <= n && a[i..i + 32] == b[i..i + 32] {
        i += 32;
    }
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap())
            ^ u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if x != 0 {
            return i + (x.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// The matches of `new` against the old bytes of `index`, tiling `new` in order: the
/// [`pieces`] are scanned in parallel and their matches joined.
pub fn matches(index: &Index<'_>, new: &[u8]) -> Vec<Match> {
    use rayon::prelude::*;
    if new.is_empty() {
        return Vec::new();
    }
    let k = pieces(new.len());
    let size = new.len().div_ceil(k);
    let parts: Vec<Vec<Match>> = (0..k)
        .into_par_iter()
        .map(|p| {
            let start = p * size;
            let end = (start + size).min(new.len());
            let mut v = scan(index, &new[start..end]);
            for m in &mut v {
                m.add_new_start += start;
                m.copy_end += start;
            }
            v
        })
        .collect();
    parts.into_iter().flatten().collect()
}

/// bsdiff's scan of one piece of new bytes (positions relative to the piece).
fn scan(index: &Index<'_>, new: &[u8]) -> Vec<Match> {
    let old = index.old;
    let (olen, nlen) = (old.len(), new.len());
    let mut out = Vec::new();
    let (mut scan, mut pos, mut len) = (0usize, 0usize, 0usize);
    let (mut lastscan, mut lastpos, mut lastoffset) = (0usize, 0usize, 0isize);
    // Whether the old byte at `i + lastoffset` equals the new byte at `i`.
    let agrees = |i: usize, lastoffset: isize| {
        let o = i as isize + lastoffset;
        o >= 0 && (o as usize) < olen && old[o as usize] == new[i]
    };
    while scan < nlen {
        let mut oldscore = 0usize;
        scan += len;
        let mut scsc = scan;
        while scan < nlen {
            (pos, len) = index.longest(&new[scan..]);
            while scsc < scan + len {
                oldscore += usize::from(agrees(scsc, lastoffset));
                scsc += 1;
            }
            if (len == oldscore && len != 0) || len > oldscore + 8 {
                break;
            }
            if agrees(scan, lastoffset) {
                oldscore -= 1;
            }
            scan += 1;
        }
        if len == oldscore && scan != nlen {
            continue;
        }
        // How far the last alignment reaches forwards: the prefix where more than half
        // the bytes agree, scored as bsdiff does.
        let mut lenf = {
            let (mut s, mut best, mut lenf) = (0isize, 0isize, 0usize);
            for i in 0..(scan - lastscan).min(olen - lastpos) {
                s += isize::from(old[lastpos + i] == new[lastscan + i]);
                if s * 2 - (i as isize + 1) > best * 2 - lenf as isize {
                    best = s;
                    lenf = i + 1;
                }
            }
            lenf
        };
        // How far the new alignment reaches backwards.
        let mut lenb = 0usize;
        if scan < nlen {
            let (mut s, mut best) = (0isize, 0isize);
            for i in 1..=(scan - lastscan).min(pos) {
                s += isize::from(old[pos - i] == new[scan - i]);
                if s * 2 - i as isize > best * 2 - lenb as isize {
                    best = s;
                    lenb = i;
                }
            }
        }
        // Where the two overlap, the split that agrees best.
        if lastscan + lenf > scan - lenb {
            let overlap = (lastscan + lenf) - (scan - lenb);
            let (mut s, mut best, mut lens) = (0isize, 0isize, 0usize);
            for i in 0..overlap {
                s += isize::from(
                    new[lastscan + lenf - overlap + i] == old[lastpos + lenf - overlap + i],
                );
                s -= isize::from(new[scan - lenb + i] == old[pos - lenb + i]);
                if s > best {
                    best = s;
                    lens = i + 1;
                }
            }
            lenf = lenf + lens - overlap;
            lenb -= lens;
        }
        out.push(Match {
            add_old_start: lastpos,
            add_new_start: lastscan,
            add_length: lenf,
            copy_end: scan - lenb,
        });
        lastscan = scan - lenb;
        lastpos = pos - lenb;
        lastoffset = pos as isize - scan as isize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_longest(old: &[u8], needle: &[u8]) -> usize {
        (0..old.len())
            .map(|i| common_prefix(&old[i..], needle))
            .max()
            .unwrap_or(0)
    }

    fn check_tiling(old: &[u8], new: &[u8], ms: &[Match]) {
        let mut at = 0;
        for m in ms {
            assert_eq!(m.add_new_start, at);
            assert!(m.add_new_start + m.add_length <= m.copy_end);
            assert!(m.add_old_start + m.add_length <= old.len());
            at = m.copy_end;
        }
        assert_eq!(at, new.len());
    }

    proptest! {
        #[test]
        fn the_search_finds_the_longest_match(
            old in proptest::collection::vec(0u8..4, 1..300),
            needle in proptest::collection::vec(0u8..4, 1..40),
        ) {
            let idx = Index::new(&old).unwrap();
            let (pos, len) = idx.longest(&needle);
            prop_assert_eq!(len, naive_longest(&old, &needle));
            prop_assert_eq!(&old[pos..pos + len], &needle[..len]);
        }

        #[test]
        fn the_buckets_change_no_search_result(
            old in proptest::collection::vec(0u8..3, 1..600),
            needles in proptest::collection::vec(proptest::collection::vec(0u8..4, 1..12), 1..40),
        ) {
            let (plain, bucketed) = (Index::build(&old, false).unwrap(), Index::build(&old, true).unwrap());
            prop_assert_eq!(bucketed.buckets.len(), (1 << 16) + 1);
            for needle in needles.iter().chain([old.clone(), old[old.len() / 2..].to_vec()].iter()) {
                prop_assert_eq!(bucketed.longest(needle), plain.longest(needle), "needle {:?}", needle);
            }
        }

        #[test]
        fn the_matches_tile_the_new_bytes(
            old in proptest::collection::vec(0u8..8, 0..2000),
            edits in proptest::collection::vec((0usize..2000, any::<u8>()), 0..30),
        ) {
            let mut new = old.clone();
            for (at, b) in edits {
                if new.is_empty() { new.push(b); continue; }
                let at = at % new.len();
                if b % 2 == 0 { new[at] = b; } else { new.insert(at, b); }
            }
            let idx = Index::new(&old).unwrap();
            check_tiling(&old, &new, &matches(&idx, &new));
        }
    }

    #[test]
    fn common_prefix_counts_across_words() {
        let a = b"0123456789abcdefXYZ";
        let mut b = *a;
        for i in 0..a.len() {
            b[i] ^= 1;
            assert_eq!(common_prefix(a, &b), i);
            b[i] ^= 1;
        }
        assert_eq!(common_prefix(a, &b), a.len());
        assert_eq!(common_prefix(&a[..3], &b), 3);
    }

    #[test]
    fn a_nearly_equal_file_is_a_few_long_matches() {
        let old: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut new = old.clone();
        for i in (500..new.len()).step_by(5_000) {
            new[i] ^= 0x55;
        }
        let idx = Index::new(&old).unwrap();
        let ms = matches(&idx, &new);
        check_tiling(&old, &new, &ms);
        let literal: usize = ms
            .iter()
            .map(|m| m.copy_end - m.add_new_start - m.add_length)
            .sum();
        assert!(
            ms.len() < 25 && literal < 100,
            "{} matches, {literal} literal bytes",
            ms.len()
        );
    }
}

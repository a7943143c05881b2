//! Owns the executable-aware step of `exec-bsdiff` deltas: reading an ELF file's layout and
//! predicting, for code and tables copied from the old version, the addresses the new
//! version holds after its code and data moved.
//!
//! When a new version of a program inserts or removes code, every relative call, jump and
//! PC-relative reference that crosses the change, and every address in the relocation and
//! symbol tables, changes value although the instruction is "the same". bsdiff then
//! carries those changes as diff bytes. Here both sides (the builder and the device) derive
//! the same prediction from what they both have — the old bytes, the delta's control
//! entries (which say where each old region went) and the new file's segment table carried
//! in the delta — and the diff is taken against the *predicted* bytes instead of the old
//! ones: a reference whose target moved with its region becomes a zero diff byte.
//!
//! The prediction is never trusted: it only changes which bytes the diff is added to, and
//! the device checks the whole result against the artifact's signed hash. A wrong guess
//! (data that looks like an instruction) costs a few diff bytes, nothing else.
//!
//! Supported: 64-bit little-endian ELF for x86-64 (`call`/`jmp`/`jcc` rel32, RIP-relative
//! `mov`/`lea`/ALU operands, indirect `call`/`jmp` through the GOT) and AArch64 (`b`/`bl`,
//! `adrp`); the tables `SHT_RELA` (offsets and addends), `SHT_SYMTAB`/`SHT_DYNSYM`
//! (symbol values) and `.eh_frame_hdr` (its search table); and the words the relocations
//! say hold addresses (`.data.rel.ro`, `.init_array`, …).

/// The instruction set whose references are predicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86-64 (`EM_X86_64`).
    X86_64,
    /// AArch64 (`EM_AARCH64`).
    Aarch64,
}

impl Arch {
    /// The code used in the delta header.
    pub fn code(self) -> u8 {
        match self {
            Arch::X86_64 => 1,
            Arch::Aarch64 => 2,
        }
    }

    /// The architecture of a delta header code.
    pub fn from_code(c: u8) -> Option<Arch> {
        match c {
            1 => Some(Arch::X86_64),
            2 => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

/// A loadable segment: where its bytes are in the file and in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// File offset.
    pub offset: u64,
    /// Virtual address.
    pub vaddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero-filled, `.bss`).
    pub memsz: u64,
    /// Whether it is executable (code is scanned only there).
    pub exec: bool,
}

/// The kind of a table of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TableKind {
    /// `Elf64_Rela`: `r_offset` at 0 and `r_addend` at 16, 24-byte entries.
    Rela,
    /// `Elf64_Sym`: `st_value` at 8, 24-byte entries.
    Sym,
    /// The binary search table of `.eh_frame_hdr` (`PT_GNU_EH_FRAME`, encoding
    /// `DW_EH_PE_datarel | DW_EH_PE_sdata4`): pairs of 32-bit offsets from the header's
    /// address, 8-byte entries.
    EhHdr {
        /// The header's virtual address in the old file.
        base: u64,
    },
}

impl TableKind {
    /// Entry size, and the (offset, width) of each address field in an entry.
    fn fields(self) -> (u64, &'static [(u64, u64)]) {
        match self {
            TableKind::Rela => (24, &[(0, 8), (16, 8)]),
            TableKind::Sym => (24, &[(8, 8)]),
            TableKind::EhHdr { .. } => (8, &[(0, 4), (4, 4)]),
        }
    }
}

/// The most pointer locations (from relocations) the predictor keeps.
const MAX_POINTERS: usize = 131_072;

/// A table of 64-bit addresses in the old file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Table {
    offset: u64,
    size: u64,
    kind: TableKind,
}

/// The most segments and tables read from one file.
pub const MAX_SEGMENTS: usize = 64;
const MAX_TABLES: usize = 64;

/// What the predictor knows of one ELF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The instruction set.
    pub arch: Arch,
    /// `PT_LOAD` segments, in header order.
    pub segments: Vec<Segment>,
    tables: Vec<Table>,
    /// File offsets of 8-byte words that relocations say hold an address (sorted).
    pointers: Vec<u64>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Random access to the bytes of a file (a memory map, a buffer, positioned reads).
pub trait ReadAt {
    /// The file's length.
    fn len(&self) -> u64;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; fails past the end.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ReadAt for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(unix)]
impl ReadAt for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// The first `len` bytes of a file, read with positioned reads (a slot holds an image
/// shorter than the partition).
pub struct Prefix<'a> {
    /// The file.
    pub file: &'a std::fs::File,
    /// How many of its bytes count.
    pub len: u64,
}

#[cfg(unix)]
impl ReadAt for Prefix<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(eof());
        }
        std::os::unix::fs::FileExt::read_exact_at(self.file, buf, offset)
    }
}

fn eof() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end")
}

impl Layout {
    /// Reads the layout of a 64-bit little-endian x86-64 or AArch64 ELF file; `None` for
    /// anything else (or a header that does not fit in the file).
    pub fn read(file: &(impl ReadAt + ?Sized)) -> Option<Layout> {
        let len = file.len();
        let mut h = [0u8; 64];
        file.read_exact_at(0, &mut h).ok()?;
        if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
            return None;
        }
        let arch = match u16_at(&h, 18)? {
            62 => Arch::X86_64,
            183 => Arch::Aarch64,
            _ => return None,
        };
        let (phoff, shoff) = (u64_at(&h, 32)?, u64_at(&h, 40)?);
        let (phentsize, phnum) = (u16_at(&h, 54)? as u64, u16_at(&h, 56)? as usize);
        let (shentsize, shnum) = (u16_at(&h, 58)? as u64, u16_at(&h, 60)? as usize);
        if phentsize < 56 || phnum == 0 || phnum > 256 {
            return None;
        }
        let mut segments = Vec::new();
        let mut eh_hdr = None;
        let mut ph = [0u8; 56];
        for i in 0..phnum as u64 {
            file.read_exact_at(phoff.checked_add(i * phentsize)?, &mut ph)
                .ok()?;
            let p_type = u32_at(&ph, 0)?;
            if p_type == 0x6474_e550 {
                // PT_GNU_EH_FRAME: offset, address, size.
                eh_hdr = Some((u64_at(&ph, 8)?, u64_at(&ph, 16)?, u64_at(&ph, 32)?));
            }
            if p_type != 1 {
                continue; // not PT_LOAD
            }
            let s = Segment {
                offset: u64_at(&ph, 8)?,
                vaddr: u64_at(&ph, 16)?,
                filesz: u64_at(&ph, 32)?,
                memsz: u64_at(&ph, 40)?,
                exec: u32_at(&ph, 4)? & 1 != 0,
            };
            if s.offset.checked_add(s.filesz)? > len || s.memsz < s.filesz {
                return None;
            }
            segments.push(s);
            if segments.len() > MAX_SEGMENTS {
                return None;
            }
        }
        if segments.is_empty() {
            return None;
        }
        let mut tables = Vec::new();
        if shoff != 0 && shentsize >= 64 && shnum <= 4096 {
            let mut sh = [0u8; 64];
            for i in 0..shnum as u64 {
                let Some(at) = shoff.checked_add(i * shentsize) else {
                    break;
                };
                if file.read_exact_at(at, &mut sh).is_err() {
                    break;
                }
                let kind = match u32_at(&sh, 4)? {
                    4 => TableKind::Rela,
                    2 | 11 => TableKind::Sym,
                    _ => continue,
                };
                let (offset, size, entsize) =
                    (u64_at(&sh, 24)?, u64_at(&sh, 32)?, u64_at(&sh, 56)?);
                if entsize != 24 || offset.checked_add(size).is_none_or(|e| e > len) {
                    continue;
                }
                tables.push(Table { offset, size, kind });
                if tables.len() == MAX_TABLES {
                    break;
                }
            }
        }
        if let Some((off, va, size)) = eh_hdr {
            let mut h = [0u8; 4];
            // Version 1, table encoding datarel|sdata4: the table follows 12 bytes in.
            if size >= 12
                && off.checked_add(size).is_some_and(|e| e <= len)
                && file.read_exact_at(off, &mut h).is_ok()
                && h[0] == 1
                && h[3] == 0x3b
                && tables.len() < MAX_TABLES
            {
                tables.push(Table {
                    offset: off + 12,
                    size: (size - 12) / 8 * 8,
                    kind: TableKind::EhHdr { base: va },
                });
            }
        }
        let mut layout = Layout {
            arch,
            segments,
            tables,
            pointers: Vec::new(),
        };
        layout.pointers = layout.relocated_words(file);
        Some(layout)
    }

    /// The file offsets of the words the old file's `RELA` tables relocate as plain
    /// addresses (x86-64 `R_X86_64_RELATIVE`/`R_X86_64_64`, AArch64
    /// `R_AARCH64_RELATIVE`/`R_AARCH64_ABS64`), outside code and the tables, at most
    /// [`MAX_POINTERS`].
    fn relocated_words(&self, file: &(impl ReadAt + ?Sized)) -> Vec<u64> {
        let types: [u32; 2] = match self.arch {
            Arch::X86_64 => [8, 1],
            Arch::Aarch64 => [1027, 257],
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 24 * 1024];
        for t in self.tables.iter().filter(|t| t.kind == TableKind::Rela) {
            let mut at = t.offset;
            let end = t.offset + t.size / 24 * 24;
            while at < end {
                let n = (end - at).min(buf.len() as u64) as usize;
                if file.read_exact_at(at, &mut buf[..n]).is_err() {
                    break;
                }
                for e in buf[..n].chunks_exact(24) {
                    let r_offset = u64::from_le_bytes(e[0..8].try_into().expect("8 bytes"));
                    let r_type = u32::from_le_bytes(e[8..12].try_into().expect("4 bytes"));
                    if !types.contains(&r_type) {
                        continue;
                    }
                    let Some(off) = self.offset_of(r_offset) else {
                        continue;
                    };
                    let (code, _) = self.code_span(off);
                    if !code && !self.in_exec_segment(off) && !self.overlaps_table(off, 8) {
                        out.push(off);
                    }
                    if out.len() == MAX_POINTERS {
                        break;
                    }
                }
                at += n as u64;
            }
        }
        out.sort_unstable();
        out.dedup();
        // Overlapping words: keep the first of each overlap.
        let mut last = None;
        out.retain(|&o| {
            let keep = last.is_none_or(|l: u64| o >= l + 8);
            if keep {
                last = Some(o);
            }
            keep
        });
        out
    }

    /// The file offset of virtual address `va`, if a segment's file bytes hold it.
    fn offset_of(&self, va: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| va >= s.vaddr && va - s.vaddr < s.filesz)
            .map(|s| s.offset + (va - s.vaddr))
    }

    fn in_exec_segment(&self, off: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.exec && off >= s.offset && off - s.offset < s.filesz)
    }

    /// A layout with only segments (what the delta carries of the new file).
    pub fn from_segments(arch: Arch, segments: Vec<Segment>) -> Layout {
        Layout {
            arch,
            segments,
            tables: Vec::new(),
            pointers: Vec::new(),
        }
    }

    /// The virtual address of file offset `off`, if a segment maps it.
    fn vaddr_of(&self, off: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| off >= s.offset && off - s.offset < s.filesz)
            .map(|s| s.vaddr + (off - s.offset))
    }

    /// Whether `off` is code (in an executable segment and in none of the tables) and the
    /// offset up to which that answer stays the same (at least `off + 1`).
    fn code_span(&self, off: u64) -> (bool, u64) {
        let mut until = u64::MAX;
        let mut code = false;
        for s in &self.segments {
            let end = s.offset + s.filesz;
            if off >= s.offset && off < end {
                if s.exec {
                    code = true;
                    until = until.min(end);
                }
            } else if s.offset > off {
                until = until.min(s.offset);
            }
        }
        for t in &self.tables {
            let end = t.offset + t.size;
            if off >= t.offset && off < end {
                return (false, end);
            }
            if t.offset > off {
                until = until.min(t.offset);
            }
        }
        (code, until.max(off + 1))
    }

    /// Whether `[off, off+n)` overlaps a table (code fields never do, so the two kinds of
    /// fields are disjoint and the result does not depend on where chunks end).
    fn overlaps_table(&self, off: u64, n: u64) -> bool {
        self.tables
            .iter()
            .any(|t| off < t.offset + t.size && t.offset < off + n)
    }
}

/// One region of the new file built from the old: `len` bytes at `new_pos` from the old
/// bytes at `old_pos` (plus the diff).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Where the region starts in the old file.
    pub old_pos: u64,
    /// Where it starts in the new file.
    pub new_pos: u64,
    /// Its length.
    pub len: u64,
}

/// Where the old file's regions went: the map from old offsets to new ones that the
/// prediction uses, built from every region of the delta.
pub struct Predictor<'a> {
    old: &'a Layout,
    new: &'a Layout,
    /// The regions, sorted by `old_pos`.
    by_old: Vec<Region>,
}

/// The first bytes of the x86-64 instructions whose references are predicted.
const X86_LEAD: [bool; 256] = {
    let mut t = [false; 256];
    t[0xE8] = true;
    t[0xE9] = true;
    t[0x0F] = true;
    t[0xFF] = true;
    t[0x48] = true;
    t[0x4C] = true;
    t
};

/// Bytes past a chunk's end a caller must supply for the scan ([`Predictor::predict`]).
pub const LOOKAHEAD: usize = 16;

impl<'a> Predictor<'a> {
    /// A predictor for the old and new layouts (their architectures must agree) and the
    /// delta's regions (in any order).
    pub fn new(old: &'a Layout, new: &'a Layout, mut regions: Vec<Region>) -> Predictor<'a> {
        regions.retain(|r| r.len > 0);
        regions.sort_by_key(|r| (r.old_pos, r.new_pos));
        Predictor {
            old,
            new,
            by_old: regions,
        }
    }

    /// The new file offset the old file offset `t` moved to, if a region carries it.
    fn map_offset(&self, t: u64) -> Option<u64> {
        let i = self.by_old.partition_point(|r| r.old_pos <= t);
        // The nearest regions starting at or before `t`; the first containing it wins.
        for r in self.by_old[..i].iter().rev().take(4) {
            if t - r.old_pos < r.len {
                return Some(r.new_pos + (t - r.old_pos));
            }
        }
        None
    }

    /// The new virtual address of the old virtual address `a`.
    fn map_vaddr(&self, a: u64) -> Option<u64> {
        for (i, s) in self.old.segments.iter().enumerate() {
            if a < s.vaddr || a - s.vaddr >= s.memsz {
                continue;
            }
            if a - s.vaddr < s.filesz {
                let t = self.map_offset(s.offset + (a - s.vaddr))?;
                return self.new.vaddr_of(t);
            }
            // Zero-filled memory: moves with the end of its segment's file bytes.
            let n = self.new.segments.get(i)?;
            return (a - (s.vaddr + s.filesz)).checked_add(n.vaddr + n.filesz);
        }
        None
    }

    /// Replaces, in `buf` (the old bytes of `region` from old offset `start`, with up to
    /// [`LOOKAHEAD`] more bytes after `end` when the region has them), every reference
    /// found from scan position `scan` that starts before `end` by its predicted new value.
    /// Returns (the offset up to which `buf` is final, the next scan position): a
    /// reference crossing `end` is completed from the lookahead, so the first value can
    /// exceed `end`. The result depends only on the old bytes and the positions, never on
    /// how a region is cut into chunks.
    pub fn predict(
        &self,
        region: &Region,
        start: u64,
        end: u64,
        buf: &mut [u8],
        mut scan: u64,
    ) -> (u64, u64) {
        let region_end = region.old_pos + region.len;
        let buf_end = start + buf.len() as u64;
        let mut done = end;
        let fits =
            |at: u64, n: u64| at >= region.old_pos && at + n <= region_end && at + n <= buf_end;
        // Code.
        let mut span = (false, 0u64);
        while scan < end {
            if scan >= span.1 {
                span = self.old.code_span(scan);
            }
            if !span.0 {
                scan = span.1.min(end);
                continue;
            }
            let at = (scan - start) as usize;
            let b = |k: usize| buf.get(at + k).copied();
            match self.old.arch {
                Arch::X86_64 => {
                    // Most bytes start no reference: skip them in a tight loop.
                    let lim = span.1.min(end);
                    let mut i = at;
                    let stop = (lim - start) as usize;
                    while i < stop && !X86_LEAD[buf[i] as usize] {
                        i += 1;
                    }
                    if i > at {
                        scan = start + i as u64;
                        continue;
                    }
                    let field = match (b(0), b(1), b(2)) {
                        (Some(0xE8 | 0xE9), _, _) => Some(1),
                        (Some(0x0F), Some(0x80..=0x8F), _) => Some(2),
                        (Some(0xFF), Some(0x15 | 0x25), _) => Some(2),
                        (
                            Some(0x48 | 0x4C),
                            Some(
                                0x8B | 0x8D | 0x89 | 0x3B | 0x39 | 0x03 | 0x2B | 0x33 | 0x85 | 0x63,
                            ),
                            Some(m),
                        ) if m & 0xC7 == 0x05 => Some(3),
                        _ => None,
                    };
                    let Some(k) = field else {
                        scan += 1;
                        continue;
                    };
                    let f = scan + k;
                    if !fits(f, 4) || self.old.overlaps_table(f, 4) {
                        scan += 1;
                        continue;
                    }
                    let fi = (f - start) as usize;
                    let rel = i32::from_le_bytes(buf[fi..fi + 4].try_into().expect("4 bytes"));
                    if let Some(v) = self.predict_rel32(region, f, rel) {
                        buf[fi..fi + 4].copy_from_slice(&v.to_le_bytes());
                        done = done.max(f + 4);
                        scan = f + 4;
                    } else {
                        scan += 1;
                    }
                }
                Arch::Aarch64 => {
                    let Some(va) = self.old.vaddr_of(scan) else {
                        scan += 1;
                        continue;
                    };
                    if va % 4 != 0 {
                        scan += 4 - va % 4;
                        continue;
                    }
                    if !fits(scan, 4) || self.old.overlaps_table(scan, 4) {
                        scan += 4;
                        continue;
                    }
                    let insn = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
                    if let Some(v) = self.predict_a64(region, scan, va, insn) {
                        buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    done = done.max(scan + 4);
                    scan += 4;
                }
            }
        }
        // Tables of addresses.
        for t in &self.old.tables {
            let (lo, hi) = (t.offset.max(start), (t.offset + t.size).min(end));
            if lo >= hi {
                continue;
            }
            let (entsize, fields) = t.kind.fields();
            let first = (lo - t.offset) / entsize;
            let last = (hi - t.offset).div_ceil(entsize);
            for e in first..last {
                let base = t.offset + e * entsize;
                for &(fo, width) in fields {
                    let f = base + fo;
                    if f < start || f >= end || !fits(f, width) {
                        continue;
                    }
                    let fi = (f - start) as usize;
                    if width == 8 {
                        let v = u64::from_le_bytes(buf[fi..fi + 8].try_into().expect("8 bytes"));
                        if v == 0 {
                            continue;
                        }
                        if let Some(p) = self.map_vaddr(v) {
                            buf[fi..fi + 8].copy_from_slice(&p.to_le_bytes());
                            done = done.max(f + 8);
                        }
                    } else if let TableKind::EhHdr { base } = t.kind {
                        let v = i32::from_le_bytes(buf[fi..fi + 4].try_into().expect("4 bytes"));
                        let p = base.checked_add_signed(i64::from(v)).and_then(|a| {
                            let nb = self.map_vaddr(base)?;
                            let na = self.map_vaddr(a)?;
                            i32::try_from((na as i64).wrapping_sub(nb as i64)).ok()
                        });
                        if let Some(p) = p {
                            buf[fi..fi + 4].copy_from_slice(&p.to_le_bytes());
                            done = done.max(f + 4);
                        }
                    }
                }
            }
        }
        // Words that relocations say hold addresses.
        let ptrs = &self.old.pointers;
        let from = ptrs.partition_point(|&o| o < start);
        for &f in ptrs[from..].iter().take_while(|&&o| o < end) {
            if !fits(f, 8) {
                continue;
            }
            let fi = (f - start) as usize;
            let v = u64::from_le_bytes(buf[fi..fi + 8].try_into().expect("8 bytes"));
            if v == 0 {
                continue;
            }
            if let Some(p) = self.map_vaddr(v) {
                buf[fi..fi + 8].copy_from_slice(&p.to_le_bytes());
                done = done.max(f + 8);
            }
        }
        (done.min(region_end), scan.max(done))
    }

    /// The predicted rel32 at old offset `f` (in `region`) whose old value is `rel`.
    fn predict_rel32(&self, region: &Region, f: u64, rel: i32) -> Option<i32> {
        let fva = self.old.vaddr_of(f)?;
        let target = fva.checked_add(4)?.checked_add_signed(i64::from(rel))?;
        let nt = self.map_vaddr(target)?;
        let nf = self.new.vaddr_of(region.new_pos + (f - region.old_pos))?;
        let v = (nt as i64).wrapping_sub(nf as i64).wrapping_sub(4);
        i32::try_from(v).ok()
    }

    /// The predicted AArch64 instruction at old offset `at` (virtual address `va`).
    fn predict_a64(&self, region: &Region, at: u64, va: u64, insn: u32) -> Option<u32> {
        let nva = self.new.vaddr_of(region.new_pos + (at - region.old_pos))?;
        if insn & 0x7C00_0000 == 0x1400_0000 {
            // b / bl: imm26 words from the instruction.
            let imm = ((insn & 0x03FF_FFFF) as i32) << 6 >> 6;
            let target = va.checked_add_signed(i64::from(imm) * 4)?;
            let nt = self.map_vaddr(target)?;
            let d = (nt as i64).wrapping_sub(nva as i64);
            if d % 4 != 0 || !(-(1 << 27)..(1 << 27)).contains(&d) {
                return None;
            }
            return Some((insn & 0xFC00_0000) | ((d / 4) as u32 & 0x03FF_FFFF));
        }
        if insn & 0x9F00_0000 == 0x9000_0000 {
            // adrp: a 4 KiB page, imm21 pages from the instruction's page.
            let immlo = (insn >> 29) & 3;
            let immhi = (insn >> 5) & 0x7_FFFF;
            let imm = (((immhi << 2) | immlo) as i32) << 11 >> 11;
            let target = (va & !0xFFF).checked_add_signed(i64::from(imm) << 12)?;
            let nt = self.map_vaddr(target)? & !0xFFF;
            let d = ((nt as i64).wrapping_sub((nva & !0xFFF) as i64)) >> 12;
            if !(-(1 << 20)..(1 << 20)).contains(&d) {
                return None;
            }
            let d = d as u32 & 0x1F_FFFF;
            return Some((insn & 0x9F00_001F) | ((d & 3) << 29) | ((d >> 2) << 5));
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal x86-64 ELF: one executable segment at offset 0 mapped at 0x1000 holding
    /// `code`, and a data segment after it.
    pub(crate) fn tiny_elf(code: &[u8], data: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 2 * 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let code_off = f.len() as u64;
        let data_off = code_off + code.len() as u64;
        for (i, (off, len, flags, va)) in [
            (0u64, data_off, 5u32, 0x1000u64),
            (data_off, data.len() as u64, 6, 0x1000 + data_off + 0x1000),
        ]
        .into_iter()
        .enumerate()
        {
            let p = 64 + i * 56;
            f[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
            f[p + 4..p + 8].copy_from_slice(&flags.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            f[p + 16..p + 24].copy_from_slice(&va.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&len.to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&(len + 64).to_le_bytes());
        }
        f.extend_from_slice(code);
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn the_layout_of_an_elf_file_is_read_and_other_files_are_not_elf() {
        let f = tiny_elf(&[0x90; 100], &[1; 50]);
        let l = Layout::read(&f[..]).unwrap();
        assert_eq!(l.arch, Arch::X86_64);
        assert_eq!(l.segments.len(), 2);
        assert!(l.segments[0].exec && !l.segments[1].exec);
        assert!(Layout::read(&b"not an elf file at all, just text"[..]).is_none());
        let mut truncated = f.clone();
        truncated.truncate(100);
        assert!(Layout::read(&truncated[..]).is_none());
    }

    #[test]
    fn a_call_across_inserted_code_is_predicted_to_its_moved_target() {
        // Old: a call at code offset 0 to a function at code offset 1000. New: 16 bytes
        // inserted between them, so the call's rel32 grows by 16.
        let mut code = vec![0x90u8; 1100];
        code[0] = 0xE8;
        code[1..5].copy_from_slice(&(1000i32 - 5).to_le_bytes());
        let old = tiny_elf(&code, &[7; 64]);
        let mut ncode = code.clone();
        ncode.splice(500..500, [0xCCu8; 16]);
        ncode[1..5].copy_from_slice(&(1016i32 - 5).to_le_bytes());
        let new = tiny_elf(&ncode, &[7; 64]);
        let (lo, ln) = (
            Layout::read(&old[..]).unwrap(),
            Layout::read(&new[..]).unwrap(),
        );
        let h = 64 + 2 * 56;
        // The regions as a matcher finds them: the head, then the rest after the insert.
        let regions = vec![
            Region {
                old_pos: 0,
                new_pos: 0,
                len: h + 500,
            },
            Region {
                old_pos: h + 500,
                new_pos: h + 516,
                len: old.len() as u64 - h - 500,
            },
        ];
        let p = Predictor::new(&lo, &ln, regions.clone());
        let r = regions[0];
        let mut buf = old[..(r.len as usize + LOOKAHEAD)].to_vec();
        let (done, _) = p.predict(&r, 0, r.len, &mut buf, 0);
        assert!(done >= h + 5);
        let at = h as usize + 1;
        assert_eq!(
            &buf[at..at + 4],
            &new[at..at + 4],
            "the predicted rel32 is the new one"
        );
        // Without the moved region the target is unknown: the old bytes stay.
        let p = Predictor::new(&lo, &ln, vec![regions[0]]);
        let mut buf = old[..(r.len as usize + LOOKAHEAD)].to_vec();
        p.predict(&r, 0, r.len, &mut buf, 0);
        assert_eq!(&buf[at..at + 4], &old[at..at + 4]);
    }

    #[test]
    fn aarch64_branches_are_predicted() {
        let p_old = Layout::from_segments(
            Arch::Aarch64,
            vec![Segment {
                offset: 0,
                vaddr: 0x10000,
                filesz: 0x1000,
                memsz: 0x1000,
                exec: true,
            }],
        );
        let r = [
            Region {
                old_pos: 0,
                new_pos: 0,
                len: 0x100,
            },
            Region {
                old_pos: 0x100,
                new_pos: 0x140,
                len: 0xF00 - 0x40,
            },
        ];
        let p = Predictor::new(&p_old, &p_old, r.to_vec());
        // bl +0x200 from 0x10000 → target moved by 0x40.
        let insn = 0x9400_0000u32 | (0x200 / 4);
        assert_eq!(
            p.predict_a64(&r[0], 0, 0x10000, insn),
            Some(0x9400_0000 | (0x240 / 4))
        );
    }
}

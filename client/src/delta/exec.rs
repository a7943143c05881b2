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
//! say hold addresses (`.data.rel.ro`, `.init_array`, …). A delta names the rules it was
//! built with ([`Rules`]); the second adds what an image without relocations needs (a Linux
//! kernel): code from the executable sections, the sites of an appended kernel relocation
//! table, self-relative words in the tables the delta names ([`WordTables`]), and address
//! words in data.

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

/// A site's file offset and width.
fn site(s: u32) -> (u64, u64) {
    (u64::from(s & !WIDE), if s & WIDE != 0 { 8 } else { 4 })
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
    /// File ranges of the executable sections (`SHF_EXECINSTR`), sorted and disjoint;
    /// empty when the file has no section table (then executable segments are the code).
    code: Vec<(u64, u64)>,
    /// File ranges of the allocated data sections (what [`Layout::word_tables`] looks at).
    data: Vec<(u64, u64)>,
    /// The sites an appended kernel relocation table lists ([`Layout::kernel_sites`]):
    /// file offsets, bit 31 set for a 64-bit address, clear for a 32-bit sign-extended
    /// one (sorted, disjoint).
    sites: Vec<u32>,
    /// The file range of that appended table, whose words are sign-extended addresses.
    site_table: Option<(u64, u64)>,
    /// Whether aligned 8-byte data words whose value falls in a segment mapped above
    /// 4 GiB are taken as addresses: a file with no relocation table of any kind.
    high_words: bool,
}

/// The most data sections read from one file.
const MAX_DATA_SECTIONS: usize = 256;
/// The most word tables of each kind a delta names ([`Layout::word_tables`]).
pub const MAX_WORD_TABLES: usize = 32;

/// The ranges of a file whose 32-bit words the builder asks to be treated specially
/// ([`Layout::word_tables`]); a delta carries them, so a device never guesses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WordTables {
    /// Ranges coded as the differences of consecutive little-endian 32-bit words
    /// (sorted, disjoint, lengths a multiple of 4): sorted address tables, whose
    /// differences stay the same when the code they point into moves.
    pub coded: Vec<(u64, u64)>,
    /// Ranges whose aligned 32-bit words are predicted as self-relative pointers into
    /// code (sorted, disjoint; only in the old file).
    pub self_relative: Vec<(u64, u64)>,
}

/// The most sites an appended kernel relocation table may list (4 bytes each are held).
pub const MAX_SITES: usize = 262_144;
/// Bit 31 of a site: a 64-bit address (else 32-bit, sign-extended).
const WIDE: u32 = 1 << 31;
/// The largest appended relocation table read.
const MAX_SITE_TABLE: u64 = 4 * (MAX_SITES as u64 + 3);

/// What a byte of the old file is to the extended rules ([`Rules::V2`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// In an executable section.
    Code,
    /// In a table of addresses ([`TableKind`]).
    Table,
    /// In a segment's file bytes, neither code nor a table.
    Data,
    /// In no segment.
    Other,
}

/// Which prediction rules a delta was built with: the version in its header. A device
/// applies a delta with the rules it names, so older deltas keep applying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rules {
    /// Branches, RIP- and PC-relative operands and the relocation, symbol and
    /// `.eh_frame_hdr` tables; code is every executable segment.
    V1,
    /// [`Rules::V1`], with code taken from the executable sections, plus: the sites an
    /// appended kernel relocation table lists (and the table's own entries), 32-bit
    /// self-relative words pointing into code in the ranges the delta names
    /// ([`WordTables::self_relative`]; exception, export and patch-site tables), and, in
    /// a file without relocations, 8-byte data words holding an address above 4 GiB.
    /// (The coded ranges a delta names are undone whatever its rules.)
    V2,
}

impl Rules {
    /// The rules of a header version, if this version knows them.
    pub fn from_version(v: u8) -> Option<Rules> {
        match v {
            1 => Some(Rules::V1),
            2 => Some(Rules::V2),
            _ => None,
        }
    }

    /// The header version of these rules.
    pub fn version(self) -> u8 {
        match self {
            Rules::V1 => 1,
            Rules::V2 => 2,
        }
    }
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
        let mut code = Vec::new();
        let mut data = Vec::new();
        let mut any_rela = false;
        // Where the ELF file's own bytes end (an appended table starts there).
        let mut elf_end = segments
            .iter()
            .map(|s| s.offset + s.filesz)
            .chain([phoff.saturating_add(phnum as u64 * phentsize)])
            .max()
            .unwrap_or(0);
        if shoff != 0 && shentsize >= 64 && shnum <= 4096 {
            let mut sh = [0u8; 64];
            for i in 0..shnum as u64 {
                let Some(at) = shoff.checked_add(i * shentsize) else {
                    break;
                };
                if file.read_exact_at(at, &mut sh).is_err() {
                    break;
                }
                elf_end = elf_end.max(at + shentsize);
                let (sh_type, sh_flags) = (u32_at(&sh, 4)?, u64_at(&sh, 8)?);
                let (offset, size, entsize) =
                    (u64_at(&sh, 24)?, u64_at(&sh, 32)?, u64_at(&sh, 56)?);
                let in_file = offset.checked_add(size).is_some_and(|e| e <= len);
                if sh_type != 8 && in_file {
                    // Not SHT_NOBITS: its bytes are the file's.
                    elf_end = elf_end.max(offset + size);
                }
                // SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR.
                if sh_type == 1 && sh_flags & 6 == 6 && size > 0 && in_file {
                    code.push((offset, offset + size));
                }
                // SHT_PROGBITS, SHF_ALLOC without SHF_EXECINSTR.
                if sh_type == 1
                    && sh_flags & 6 == 2
                    && size >= 16
                    && in_file
                    && data.len() < MAX_DATA_SECTIONS
                {
                    data.push((offset, offset + size));
                }
                let kind = match sh_type {
                    4 => TableKind::Rela,
                    9 => {
                        any_rela = true; // SHT_REL
                        continue;
                    }
                    2 | 11 => TableKind::Sym,
                    _ => continue,
                };
                if kind == TableKind::Rela {
                    any_rela = true;
                }
                if entsize != 24 || !in_file {
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
        code.sort_unstable();
        // Overlapping sections (not in a well-formed file): merged.
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(code.len());
        for (a, b) in code {
            match merged.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let mut layout = Layout {
            arch,
            segments,
            tables,
            pointers: Vec::new(),
            code: merged,
            data,
            sites: Vec::new(),
            site_table: None,
            high_words: false,
        };
        layout.pointers = layout.relocated_words(file);
        if let Some((sites, range)) = layout.kernel_sites(file, elf_end) {
            layout.sites = sites;
            layout.site_table = Some(range);
        }
        layout.high_words = !any_rela && layout.site_table.is_none();

        Some(layout)
    }

    /// The sites listed by the relocation table the x86-64 Linux build appends to the
    /// kernel's ELF image (`vmlinux.relocs`, in the image a boot loader decompresses),
    /// and the table's file range; `None` when the bytes after the ELF file are not
    /// such a table.
    ///
    /// The table is 32-bit little-endian words: `0`, the addresses of 64-bit absolute
    /// addresses, `0`, the addresses of inverse 32-bit ones (per-CPU), `0`, the
    /// addresses of 32-bit sign-extended ones. An entry, sign-extended, is an address
    /// in a segment's file bytes; if more than 1 % are not, the table is ignored. The
    /// inverse sites are not kept: their words are not addresses.
    fn kernel_sites(
        &self,
        file: &(impl ReadAt + ?Sized),
        elf_end: u64,
    ) -> Option<(Vec<u32>, (u64, u64))> {
        let len = file.len();
        let n = len.checked_sub(elf_end)?;
        if self.arch != Arch::X86_64 || n < 12 || n % 4 != 0 || n > MAX_SITE_TABLE {
            return None;
        }
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(elf_end, &mut buf).ok()?;
        let mut part = 0usize; // separators seen
        let mut missing = 0u64;
        let mut sites = Vec::new();
        for w in buf.chunks_exact(4) {
            let v = u32::from_le_bytes(w.try_into().expect("4 bytes"));
            if v == 0 {
                part += 1;
                if part > 3 {
                    return None;
                }
                continue;
            }
            if part == 0 {
                return None; // the table starts with a separator
            }
            let Some(off) = self.offset_of(i64::from(v as i32) as u64) else {
                // An address no segment's file bytes hold (the per-CPU data at its load
                // address): a few are expected, many say this is not such a table.
                missing += 1;
                continue;
            };
            let wide = part == 1;
            if off + if wide { 8 } else { 4 } > len || off >= u64::from(WIDE) {
                return None;
            }
            if part != 2 {
                sites.push(off as u32 | if wide { WIDE } else { 0 });
                if sites.len() > MAX_SITES {
                    return None;
                }
            }
        }
        if part != 3 || missing * 100 > n / 4 {
            return None;
        }
        sites.sort_unstable_by_key(|s| s & !WIDE);
        let mut end = 0u64;
        sites.retain(|&s| {
            let (o, w) = site(s);
            let keep = o >= end && !self.overlaps_table(o, w);
            if keep {
                end = o + w;
            }
            keep
        });
        Some((sites, (elf_end, len)))
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

    /// The most bytes a layout holds: its pointer and site lists at their limits (and
    /// the page index of the predictor built on it).
    pub fn max_held() -> u64 {
        (MAX_POINTERS * 8 + MAX_SITES * 4) as u64 + ((1u64 << PAGES_LOG) + 2) * 4
    }

    /// A layout with only segments (what the delta carries of the new file).
    pub fn from_segments(arch: Arch, segments: Vec<Segment>) -> Layout {
        Layout {
            arch,
            segments,
            tables: Vec::new(),
            pointers: Vec::new(),
            code: Vec::new(),
            data: Vec::new(),
            sites: Vec::new(),
            site_table: None,
            high_words: false,
        }
    }

    /// What `off` is to the extended rules, and the offset up to which that answer stays
    /// the same (at least `off + 1`).
    fn kind_at(&self, off: u64) -> (Kind, u64) {
        let mut until = u64::MAX;
        let mut bound = |b: u64| {
            if b > off {
                until = until.min(b);
            }
        };
        let mut table = false;
        for t in &self.tables {
            bound(t.offset);
            bound(t.offset + t.size);
            table |= off >= t.offset && off < t.offset + t.size;
        }
        let mut code = false;
        for &(a, b) in &self.code {
            bound(a);
            bound(b);
            code |= off >= a && off < b;
        }
        let mut in_seg = false;
        for s in &self.segments {
            bound(s.offset);
            bound(s.offset + s.filesz);
            if off >= s.offset && off - s.offset < s.filesz {
                in_seg = true;
                code |= s.exec && self.code.is_empty();
            }
        }
        let kind = match (table, code, in_seg) {
            (true, _, _) => Kind::Table,
            (_, true, _) => Kind::Code,
            (_, _, true) => Kind::Data,
            _ => Kind::Other,
        };
        (kind, until.max(off + 1))
    }

    /// The word tables of `file` (whose layout this is) worth naming in a delta: the
    /// appended kernel relocation table and the data sections whose aligned words, taken
    /// as self-relative pointers, nearly all point into code in ascending order (unwind
    /// tables such as `.orc_unwind_ip`) are coded; the data sections where at least a
    /// quarter of the words point into code that way (patch-site, exception and export
    /// tables) are self-relative. At most [`MAX_WORD_TABLES`] of each.
    pub fn word_tables(&self, file: &[u8]) -> WordTables {
        let code_va = self.code_vaddrs();
        let in_code = |a: u64| in_ranges(&code_va, a);
        let mut t = WordTables::default();
        for &(a, b) in &self.data {
            let Some(va) = self.vaddr_of(a) else {
                continue;
            };
            let skip = (4 - va % 4) % 4;
            let (a4, n) = (a + skip, (b - a).saturating_sub(skip) / 4);
            if n < 4 || b as usize > file.len() {
                continue;
            }
            let (mut pointing, mut ascending, mut last) = (0u64, 0u64, None);
            for k in 0..n {
                let at = (a4 + 4 * k) as usize;
                let v = i32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes"));
                let target = (va + skip + 4 * k).wrapping_add_signed(i64::from(v));
                if v != 0 && in_code(target) {
                    pointing += 1;
                    if last.is_some_and(|l| target >= l) {
                        ascending += 1;
                    }
                    last = Some(target);
                }
            }
            if n >= 256 && pointing * 10 >= n * 9 && ascending * 10 >= n * 9 {
                if t.coded.len() < MAX_WORD_TABLES {
                    t.coded.push((a4, a4 + 4 * n));
                }
            } else if pointing * 4 >= n && t.self_relative.len() < MAX_WORD_TABLES {
                t.self_relative.push((a, b));
            }
        }
        if let Some((a, b)) = self.site_table {
            if t.coded.len() < MAX_WORD_TABLES {
                t.coded.push((a, b));
            }
        }
        t.coded.sort_unstable();
        t.self_relative.sort_unstable();
        t
    }

    /// The virtual address ranges of the code (sorted).
    fn code_vaddrs(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = if self.code.is_empty() {
            self.segments
                .iter()
                .filter(|s| s.exec)
                .map(|s| (s.vaddr, s.vaddr + s.filesz))
                .collect()
        } else {
            self.code
                .iter()
                .filter_map(|&(a, b)| {
                    let va = self.vaddr_of(a)?;
                    Some((va, va + (b - a)))
                })
                .collect()
        };
        out.sort_unstable();
        out
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
    /// `pages[p]`: how many regions of `by_old` start before old offset `p << shift`
    /// (where a search for an offset starts and ends).
    pages: Vec<u32>,
    /// log2 of the old bytes one entry of `pages` covers.
    shift: u32,
    rules: Rules,
    /// The old file's code, as virtual address ranges (sorted; [`Rules::V2`]).
    code_va: Vec<(u64, u64)>,
    /// The old file's ranges of self-relative words ([`WordTables::self_relative`]).
    self_relative: Vec<(u64, u64)>,
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

/// log2 of the most entries of a predictor's page index (4 bytes each, plus two).
const PAGES_LOG: u32 = 16;

/// Bytes past a chunk's end a caller must supply for the scan ([`Predictor::predict`]).
pub const LOOKAHEAD: usize = 16;

impl<'a> Predictor<'a> {
    /// A predictor for the old and new layouts (their architectures must agree), the
    /// delta's regions (in any order), the rules the delta names and the old file's
    /// ranges of self-relative words it names (sorted).
    pub fn new(
        old: &'a Layout,
        new: &'a Layout,
        mut regions: Vec<Region>,
        rules: Rules,
        self_relative: Vec<(u64, u64)>,
    ) -> Predictor<'a> {
        regions.retain(|r| r.len > 0);
        regions.sort_by_key(|r| (r.old_pos, r.new_pos));
        let max = regions.last().map_or(0, |r| r.old_pos);
        let shift = (u64::BITS - max.leading_zeros())
            .saturating_sub(PAGES_LOG)
            .max(16);
        let mut pages = Vec::with_capacity(((max >> shift) + 2) as usize);
        let mut i = 0;
        for p in 0..=max >> shift {
            while regions.get(i).is_some_and(|r| r.old_pos < p << shift) {
                i += 1;
            }
            pages.push(i as u32);
        }
        // Past `max`: every region.
        pages.push(regions.len() as u32);
        let code_va = match rules {
            Rules::V1 => Vec::new(),
            Rules::V2 => old.code_vaddrs(),
        };
        Predictor {
            old,
            new,
            by_old: regions,
            pages,
            shift,
            rules,
            code_va,
            self_relative,
        }
    }

    /// Whether old virtual address `a` is in the old file's code ([`Rules::V2`]).
    fn is_code_va(&self, a: u64) -> bool {
        in_ranges(&self.code_va, a)
    }

    /// The new file offset the old file offset `t` moved to, if a region carries it.
    fn map_offset(&self, t: u64) -> Option<u64> {
        let p = (t >> self.shift) as usize;
        let i = match (self.pages.get(p), self.pages.get(p + 1)) {
            (Some(&lo), Some(&hi)) => {
                let (lo, hi) = (lo as usize, hi as usize);
                lo + self.by_old[lo..hi].partition_point(|r| r.old_pos <= t)
            }
            // Past the last region's start.
            _ => self.by_old.len(),
        };
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
        scan: u64,
    ) -> (u64, u64) {
        let v2 = self.rules == Rules::V2;
        let blen = buf.len();
        let fits = |at: u64, n: u64| fits(region, start, blen, at, n);
        let mut done = end;
        if v2 {
            // The sites an appended relocation table lists, first: the code scan then
            // starts no reference inside one.
            let sites = &self.old.sites;
            let first = sites.partition_point(|&s| site(s).0 < start);
            for &s in sites[first..].iter().take_while(|&&s| site(s).0 < end) {
                let (f, w) = site(s);
                if fits(f, w) && self.absolute(buf, (f - start) as usize, w) {
                    done = done.max(f + w);
                }
            }
        }
        let scan = self.code(region, start, end, buf, scan, &mut done);
        self.tables(region, start, end, buf, &mut done);
        self.pointers(region, start, end, buf, &mut done);
        if v2 {
            self.data_words(region, start, end, buf, &mut done);
            if let Some((lo, hi)) = self.old.site_table {
                let mut f = lo + (start.max(lo) - lo).div_ceil(4) * 4;
                while f < end.min(hi) {
                    if fits(f, 4) && self.absolute(buf, (f - start) as usize, 4) {
                        done = done.max(f + 4);
                    }
                    f += 4;
                }
            }
        }
        (done.min(region_end(region)), scan.max(done))
    }

    /// Predicts the references in code from scan position `scan` up to `end` (see
    /// [`Predictor::predict`]); returns the next scan position. Code is the executable
    /// segments by [`Rules::V1`]; by [`Rules::V2`] the executable sections, where a field
    /// never crosses the end of its code span or into a site.
    fn code(
        &self,
        region: &Region,
        start: u64,
        end: u64,
        buf: &mut [u8],
        mut scan: u64,
        done: &mut u64,
    ) -> u64 {
        let v2 = self.rules == Rules::V2;
        let blen = buf.len();
        let fits = |at: u64, n: u64| fits(region, start, blen, at, n);
        let sites: &[u32] = if v2 { &self.old.sites } else { &[] };
        // The first site at or after `at` (`at` only grows).
        let mut si = sites.partition_point(|&s| site(s).0 < scan);
        let mut next_site = |at: u64| {
            while sites.get(si).is_some_and(|&s| site(s).0 < at) {
                si += 1;
            }
            sites.get(si).map_or((u64::MAX, 0), |&s| site(s))
        };
        let mut span = (false, 0u64);
        while scan < end {
            if scan >= span.1 {
                span = if v2 {
                    let (kind, until) = self.old.kind_at(scan);
                    (kind == Kind::Code, until)
                } else {
                    self.old.code_span(scan)
                };
            }
            if !span.0 {
                scan = span.1.min(end);
                continue;
            }
            let (ns, w) = next_site(scan);
            if ns == scan {
                // A site: predicted before; no reference starts inside it.
                *done = (*done).max(scan + w);
                scan += w;
                continue;
            }
            // Where a predicted field must end.
            let field_end = if v2 { span.1.min(ns) } else { u64::MAX };
            let at = (scan - start) as usize;
            match self.old.arch {
                Arch::X86_64 => {
                    // Most bytes start no reference: skip them in a tight loop.
                    let stop = (span.1.min(end).min(ns) - start) as usize;
                    let i = buf[at..stop.min(blen)]
                        .iter()
                        .position(|&b| X86_LEAD[b as usize])
                        .map_or(stop, |k| at + k);
                    if i > at {
                        scan = start + i as u64;
                        continue;
                    }
                    let b = |k: usize| buf.get(at + k).copied();
                    let Some(k) = x86_field(b(0), b(1), b(2)) else {
                        scan += 1;
                        continue;
                    };
                    let f = scan + k;
                    // By the extended rules a field within the code span overlaps no
                    // table (the span ends before the next one), so only the first
                    // rules look.
                    if !fits(f, 4) || f + 4 > field_end || (!v2 && self.old.overlaps_table(f, 4)) {
                        scan += 1;
                        continue;
                    }
                    let fi = (f - start) as usize;
                    let rel = i32::from_le_bytes(buf[fi..fi + 4].try_into().expect("4 bytes"));
                    if let Some(v) = self.predict_rel32(region, f, rel) {
                        buf[fi..fi + 4].copy_from_slice(&v.to_le_bytes());
                        *done = (*done).max(f + 4);
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
                    if !fits(scan, 4)
                        || scan + 4 > field_end
                        || (!v2 && self.old.overlaps_table(scan, 4))
                    {
                        scan += 4;
                        continue;
                    }
                    let insn = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
                    if let Some(v) = self.predict_a64(region, scan, va, insn) {
                        buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    *done = (*done).max(scan + 4);
                    scan += 4;
                }
            }
        }
        scan
    }

    /// Predicts the address fields of the old file's tables that start in `[start, end)`.
    fn tables(&self, region: &Region, start: u64, end: u64, buf: &mut [u8], done: &mut u64) {
        let blen = buf.len();
        let fits = |at: u64, n: u64| fits(region, start, blen, at, n);
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
                            *done = (*done).max(f + 8);
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
                            *done = (*done).max(f + 4);
                        }
                    }
                }
            }
        }
    }

    /// Predicts the words that relocations say hold addresses, starting in `[start, end)`.
    fn pointers(&self, region: &Region, start: u64, end: u64, buf: &mut [u8], done: &mut u64) {
        let blen = buf.len();
        let fits = |at: u64, n: u64| fits(region, start, blen, at, n);
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
                *done = (*done).max(f + 8);
            }
        }
    }

    /// Replaces the absolute address of width `w` (8, or 4 sign-extended) at `buf[i..]`
    /// by its new value; whether it did.
    fn absolute(&self, buf: &mut [u8], i: usize, w: u64) -> bool {
        if w == 8 {
            let v = u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
            match self.map_vaddr(v) {
                Some(p) if v != 0 => {
                    buf[i..i + 8].copy_from_slice(&p.to_le_bytes());
                    true
                }
                _ => false,
            }
        } else {
            let v = i32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
            let p = self
                .map_vaddr(i64::from(v) as u64)
                .and_then(|p| i32::try_from(p as i64).ok());
            match p {
                Some(p) if v != 0 => {
                    buf[i..i + 4].copy_from_slice(&p.to_le_bytes());
                    true
                }
                _ => false,
            }
        }
    }

    /// Predicts, in the data bytes (neither code nor a table) of `[start, end)` that no
    /// relocation or site covers, the aligned 32-bit words of the self-relative ranges
    /// that, added to their own address, point into code, and (for a file without relocations) the aligned 8-byte
    /// words holding an address in a segment above 4 GiB.
    fn data_words(&self, region: &Region, start: u64, end: u64, buf: &mut [u8], done: &mut u64) {
        let blen = buf.len();
        let fits = |at: u64, n: u64| fits(region, start, blen, at, n);
        let ptrs = &self.old.pointers;
        let sites = &self.old.sites;
        let mut pi = ptrs.partition_point(|&o| o + 8 <= start);
        let mut si = sites.partition_point(|&s| site(s).0 + site(s).1 <= start);
        // Whether `[f, f + w)` overlaps a relocated word or a site (`f` only grows).
        let mut covered = |f: u64, w: u64| {
            while ptrs.get(pi).is_some_and(|&o| o + 8 <= f) {
                pi += 1;
            }
            while sites.get(si).is_some_and(|&s| site(s).0 + site(s).1 <= f) {
                si += 1;
            }
            ptrs.get(pi).is_some_and(|&o| o < f + w)
                || sites.get(si).is_some_and(|&s| site(s).0 < f + w)
        };
        let rel = &self.self_relative;
        let in_self_relative = |f: u64| {
            let i = rel.partition_point(|r| r.1 <= f);
            rel.get(i).is_some_and(|r| r.0 <= f && f + 4 <= r.1)
        };
        let high = |v: u64| {
            self.old
                .segments
                .iter()
                .any(|s| s.vaddr >= 1 << 32 && v >= s.vaddr && v - s.vaddr < s.memsz)
        };
        // Without high words, only the self-relative ranges hold words to predict.
        let mut at = if self.old.high_words {
            start
        } else {
            match rel.get(rel.partition_point(|r| r.1 <= start)) {
                Some(r) => r.0.max(start),
                None => end,
            }
        };
        while at < end {
            let (kind, until) = self.old.kind_at(at);
            let mut lim = until.min(end);
            if !self.old.high_words {
                // Up to the end of the self-relative range `at` is in, if it is in one.
                match rel.get(rel.partition_point(|r| r.1 <= at)) {
                    Some(r) if r.0 <= at => lim = lim.min(r.1),
                    Some(r) => {
                        at = r.0.min(end);
                        continue;
                    }
                    None => break,
                }
            }
            if kind != Kind::Data {
                at = lim;
                continue;
            }
            let Some(va) = self.old.vaddr_of(at) else {
                at = lim;
                continue;
            };
            let mut f = at + (4 - va % 4) % 4;
            while f < lim {
                let fva = va + (f - at);
                let fi = (f - start) as usize;
                if self.old.high_words && fva % 8 == 0 && fits(f, 8) && !covered(f, 8) {
                    let v = u64::from_le_bytes(buf[fi..fi + 8].try_into().expect("8 bytes"));
                    if high(v) && self.absolute(buf, fi, 8) {
                        *done = (*done).max(f + 8);
                        f += 8;
                        continue;
                    }
                }
                if fits(f, 4) && in_self_relative(f) && !covered(f, 4) {
                    let v = i32::from_le_bytes(buf[fi..fi + 4].try_into().expect("4 bytes"));
                    let target = fva.checked_add_signed(i64::from(v));
                    let p = target
                        .filter(|&t| v != 0 && self.is_code_va(t))
                        .and_then(|t| {
                            let nt = self.map_vaddr(t)?;
                            let nf = self.new.vaddr_of(region.new_pos + (f - region.old_pos))?;
                            i32::try_from((nt as i64).wrapping_sub(nf as i64)).ok()
                        });
                    if let Some(p) = p {
                        buf[fi..fi + 4].copy_from_slice(&p.to_le_bytes());
                        *done = (*done).max(f + 4);
                    }
                }
                f += 4;
            }
            at = lim;
        }
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

/// The offset, from an x86-64 instruction's first byte, of the rel32 field of the
/// instructions whose references are predicted (`b0..b2` are its first bytes).
fn x86_field(b0: Option<u8>, b1: Option<u8>, b2: Option<u8>) -> Option<u64> {
    match (b0, b1, b2) {
        (Some(0xE8 | 0xE9), _, _) => Some(1),
        (Some(0x0F), Some(0x80..=0x8F), _) => Some(2),
        (Some(0xFF), Some(0x15 | 0x25), _) => Some(2),
        (
            Some(0x48 | 0x4C),
            Some(0x8B | 0x8D | 0x89 | 0x3B | 0x39 | 0x03 | 0x2B | 0x33 | 0x85 | 0x63),
            Some(m),
        ) if m & 0xC7 == 0x05 => Some(3),
        _ => None,
    }
}

/// Whether `a` lies in one of `ranges` (sorted, disjoint, end exclusive).
fn in_ranges(ranges: &[(u64, u64)], a: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= a);
    ranges.get(i).is_some_and(|r| r.0 <= a)
}

/// Where `region` ends in the old file.
fn region_end(region: &Region) -> u64 {
    region.old_pos + region.len
}

/// Whether the `n` bytes at old offset `at` lie in `region` and in the chunk buffer of
/// `len` bytes that starts at old offset `start`.
fn fits(region: &Region, start: u64, len: usize, at: u64, n: u64) -> bool {
    at >= region.old_pos && at + n <= region_end(region) && at + n <= start + len as u64
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
        let p = Predictor::new(&lo, &ln, regions.clone(), Rules::V1, Vec::new());
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
        let p = Predictor::new(&lo, &ln, vec![regions[0]], Rules::V1, Vec::new());
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
        let p = Predictor::new(&p_old, &p_old, r.to_vec(), Rules::V1, Vec::new());
        // bl +0x200 from 0x10000 → target moved by 0x40.
        let insn = 0x9400_0000u32 | (0x200 / 4);
        assert_eq!(
            p.predict_a64(&r[0], 0, 0x10000, insn),
            Some(0x9400_0000 | (0x240 / 4))
        );
    }

    proptest::proptest! {
        /// The page index finds the region carrying an old offset exactly as a search of
        /// every region does, whatever the regions' spread (up to 2^64) and overlaps.
        #[test]
        fn the_page_index_maps_offsets_as_a_full_search_does(
            starts in proptest::collection::vec((0u64..40, 0u64..3, 1u64..5000), 0..200),
            probes in proptest::collection::vec((0u64..64, 0u64..70_000), 1..64),
        ) {
            let layout = Layout::from_segments(Arch::X86_64, Vec::new());
            // Offsets spread over every scale: 2^e plus a little.
            let regions: Vec<Region> = starts
                .iter()
                .enumerate()
                .map(|(k, &(e, m, len))| Region {
                    old_pos: (1u64 << (e + 24 * m).min(63)).saturating_add(len * k as u64),
                    new_pos: k as u64 * 7,
                    len,
                })
                .collect();
            let p = Predictor::new(&layout, &layout, regions.clone(), Rules::V2, Vec::new());
            let mut sorted = regions;
            sorted.retain(|r| r.len > 0);
            sorted.sort_by_key(|r| (r.old_pos, r.new_pos));
            let naive = |t: u64| {
                let i = sorted.partition_point(|r| r.old_pos <= t);
                sorted[..i]
                    .iter()
                    .rev()
                    .take(4)
                    .find(|r| t - r.old_pos < r.len)
                    .map(|r| r.new_pos + (t - r.old_pos))
            };
            for &(e, d) in &probes {
                for t in [(1u64 << e).saturating_add(d), (1u64 << e).saturating_sub(d), u64::MAX - d] {
                    proptest::prop_assert_eq!(p.map_offset(t), naive(t), "offset {}", t);
                }
            }
            for r in &sorted {
                proptest::prop_assert_eq!(p.map_offset(r.old_pos), naive(r.old_pos));
            }
        }
    }
}

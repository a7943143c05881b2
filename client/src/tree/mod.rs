//! Tree artifacts: a directory shipped as one target — the signed manifest of its files,
//! the container (`PTRLTRE1`) that carries them, and unpacking it verified file by file.
//!
//! A tree target's custom metadata names the SHA-256 of its manifest ([`TreeMeta`]); the
//! manifest names every entry's path, type and mode, and every file's size and SHA-256. So
//! a device verifies a tree it unpacks or rebuilds from a [`delta`] file by file against
//! the manifest and the manifest against the signed hash, without trusting the container's
//! own bytes. See `docs/formats.md` (Tree artifacts).

pub mod delta;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The install type of a tree artifact in a group manifest.
pub const INSTALL_TYPE: &str = "tree";
/// The first bytes of a tree container.
pub const MAGIC: &[u8; 8] = b"PTRLTRE1";
/// The manifest's schema version.
pub const SCHEMA_VERSION: u32 = 1;
/// The most entries a manifest may list.
pub const MAX_ENTRIES: usize = 200_000;
/// The largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// The longest entry path or link target, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// The mode bits a manifest may set (permissions only: no set-user-ID, set-group-ID or
/// sticky bit).
pub const MODE_MASK: u32 = 0o777;
/// The installed manifest, beside `VERSION` in an application directory.
pub const MANIFEST_FILE: &str = ".petrel-tree.json";
/// The directory an installed tree's entries live in, inside its application directory.
pub const TREE_DIR: &str = "tree";

/// Frame encoding: the file's bytes as they are.
pub(crate) const STORED: u8 = 0;
/// Frame encoding: one zstd frame of the file's bytes.
pub(crate) const ZSTD: u8 = 1;

/// What a manifest entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A directory (`mode`).
    Dir,
    /// A regular file (`mode`, `size`, `sha256`).
    File,
    /// A symbolic link (`link`, relative, resolving inside the tree).
    Symlink,
}

/// One entry of a tree manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative path, `/`-separated, no `.` or `..` components.
    pub path: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits (directories and files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Length in bytes (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256, lowercase hex (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The link's target (symbolic links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl Entry {
    /// The file's size and SHA-256 (`(0, "")` for other kinds; checked by validation).
    pub fn file(&self) -> (u64, &str) {
        (self.size.unwrap_or(0), self.sha256.as_deref().unwrap_or(""))
    }
}

/// The signed list of a tree's entries, sorted by path (bytewise), each directory listed
/// before what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeManifest {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The entries.
    pub entries: Vec<Entry>,
}

/// The custom metadata of a tree target (under the key `tree`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeMeta {
    /// SHA-256 (lowercase hex) of the exact manifest bytes in the container.
    pub manifest_sha256: String,
    /// Regular files in the tree.
    pub files: u64,
    /// Their total size.
    pub size: u64,
}

impl TreeMeta {
    /// The tree metadata of a target's custom metadata, if it has a `tree` object.
    pub fn from_custom(custom: Option<&Value>) -> Result<Option<TreeMeta>, String> {
        let Some(v) = custom.and_then(|c| c.get("tree")) else {
            return Ok(None);
        };
        let m: TreeMeta = serde_json::from_value(v.clone())
            .map_err(|e| format!("custom metadata \"tree\": {e}"))?;
        crate::manifest::check_sha256_hex(&m.manifest_sha256).map_err(|_| {
            "custom metadata \"tree\".manifest_sha256 is not 64 lowercase hex digits".to_string()
        })?;
        Ok(Some(m))
    }

    /// `{"tree": {…}}`.
    pub fn to_custom(&self) -> Value {
        serde_json::json!({ "tree": self })
    }
}

/// Why a tree could not be packed, read, verified or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The manifest is malformed or unsafe (a path with `..`, a link leaving the tree, …).
    #[error("tree manifest: {0}")]
    Manifest(String),
    /// The container is malformed (truncated, trailing bytes, a bad frame).
    #[error("tree container: {0}")]
    Container(String),
    /// A file's bytes are not those the manifest names.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The entry path.
        path: String,
        /// What differs.
        reason: String,
    },
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |e| TreeError::Io(p.to_path_buf(), e)
}

/// The SHA-256 (lowercase hex) of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Checks one entry path: relative, `/`-separated normal components.
fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("an empty path".into());
    }
    if p.len() > MAX_PATH_BYTES {
        return Err(format!("a path longer than {MAX_PATH_BYTES} bytes"));
    }
    if p.starts_with('/') {
        return Err(format!("{p:?} is absolute"));
    }
    if p.contains('\0') {
        return Err(format!("{p:?} holds a NUL byte"));
    }
    for c in p.split('/') {
        match c {
            "" => return Err(format!("{p:?} has an empty component")),
            "." | ".." => return Err(format!("{p:?} has a {c:?} component")),
            _ if c.len() > 255 => return Err(format!("{p:?} has a component over 255 bytes")),
            _ => {}
        }
    }
    Ok(())
}

impl TreeManifest {
    /// Checks every rule of the format; the first problem names the entry. A manifest that
    /// passes can be unpacked into an empty directory without writing or reading outside
    /// it, and its links resolve inside it.
    pub fn validate(&self) -> Result<(), TreeError> {
        let bad = |path: &str, why: String| TreeError::Manifest(format!("entry {path:?}: {why}"));
        if self.schema_version != SCHEMA_VERSION {
            return Err(TreeError::Manifest(format!(
                "schema_version {} is unknown; this version reads {SCHEMA_VERSION}",
                self.schema_version
            )));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(TreeError::Manifest(format!(
                "{} entries, more than {MAX_ENTRIES}",
                self.entries.len()
            )));
        }
        let mut kinds: BTreeMap<&str, Kind> = BTreeMap::new();
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            check_path(&e.path).map_err(TreeError::Manifest)?;
            if prev.is_some_and(|p| p >= e.path.as_str()) {
                return Err(bad(
                    &e.path,
                    "out of order or listed twice (entries are sorted by path)".into(),
                ));
            }
            prev = Some(&e.path);
            // Every ancestor is a directory listed before it: unpacking never goes through
            // a link or a file.
            let mut at = 0;
            while let Some(i) = e.path[at..].find('/') {
                let parent = &e.path[..at + i];
                match kinds.get(parent) {
                    Some(Kind::Dir) => {}
                    Some(k) => {
                        return Err(bad(
                            &e.path,
                            format!("its parent {parent:?} is a {k:?}, not a directory"),
                        ))
                    }
                    None => {
                        return Err(bad(
                            &e.path,
                            format!("its parent directory {parent:?} is not listed"),
                        ))
                    }
                }
                at += i + 1;
            }
            let mode_ok = |m: Option<u32>| {
                match m {
                Some(m) if m & !MODE_MASK == 0 => Ok(()),
                Some(m) => Err(bad(
                    &e.path,
                    format!("mode {m:o} sets bits beyond {MODE_MASK:o} (set-user-ID, set-group-ID or sticky)"),
                )),
                None => Err(bad(&e.path, "has no mode".into())),
            }
            };
            match e.kind {
                Kind::Dir => {
                    mode_ok(e.mode)?;
                    if e.size.is_some() || e.sha256.is_some() || e.link.is_some() {
                        return Err(bad(&e.path, "a directory has only a mode".into()));
                    }
                }
                Kind::File => {
                    mode_ok(e.mode)?;
                    if e.size.is_none() || e.link.is_some() {
                        return Err(bad(
                            &e.path,
                            "a file has a mode, a size and a sha256".into(),
                        ));
                    }
                    let h = e.sha256.as_deref().unwrap_or("");
                    if crate::manifest::check_sha256_hex(h).is_err() {
                        return Err(bad(&e.path, "sha256 is not 64 lowercase hex digits".into()));
                    }
                }
                Kind::Symlink => {
                    if e.mode.is_some() || e.size.is_some() || e.sha256.is_some() {
                        return Err(bad(&e.path, "a symbolic link has only a link".into()));
                    }
                    let link = e
                        .link
                        .as_deref()
                        .ok_or_else(|| bad(&e.path, "a symbolic link without a link".into()))?;
                    self.check_link(&e.path, link, &kinds)
                        .map_err(|w| bad(&e.path, w))?;
                }
            }
            kinds.insert(&e.path, e.kind);
        }
        // Links may name entries listed after them: check those links again with all
        // entries known.
        for e in self.entries.iter().filter(|e| e.kind == Kind::Symlink) {
            self.check_link(&e.path, e.link.as_deref().unwrap_or(""), &kinds)
                .map_err(|w| bad(&e.path, w))?;
        }
        Ok(())
    }

    /// A link's target, resolved from the link's directory, must stay inside the tree and
    /// must not go through another link of the tree (so the resolution the kernel does is
    /// the one checked here).
    fn check_link(
        &self,
        path: &str,
        link: &str,
        kinds: &BTreeMap<&str, Kind>,
    ) -> Result<(), String> {
        if link.is_empty() {
            return Err("an empty link".into());
        }
        if link.len() > MAX_PATH_BYTES || link.contains('\0') {
            return Err("the link is too long or holds a NUL byte".into());
        }
        if link.starts_with('/') {
            return Err(format!(
                "the link {link:?} is absolute; links must stay inside the tree"
            ));
        }
        let mut at: Vec<&str> = path.split('/').collect();
        at.pop();
        let parts: Vec<&str> = link
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        for (i, c) in parts.iter().enumerate() {
            if *c == ".." {
                if at.pop().is_none() {
                    return Err(format!("the link {link:?} leaves the tree"));
                }
            } else {
                at.push(c);
            }
            let here = at.join("/");
            if i + 1 < parts.len() && kinds.get(here.as_str()) == Some(&Kind::Symlink) {
                return Err(format!(
                    "the link {link:?} goes through the symbolic link {here:?}"
                ));
            }
        }
        Ok(())
    }

    /// The manifest's bytes as they are written into a container.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifests serialize")
    }

    /// Parses and validates manifest bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<TreeManifest, TreeError> {
        let m: TreeManifest = serde_json::from_slice(bytes)
            .map_err(|e| TreeError::Manifest(format!("not a tree manifest: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    /// The regular files, in order.
    pub fn files(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind == Kind::File)
    }

    /// The number of regular files and their total size.
    pub fn totals(&self) -> (u64, u64) {
        self.files()
            .fold((0, 0), |(n, s), e| (n + 1, s + e.size.unwrap_or(0)))
    }
}

/// A directory scanned into a manifest, and where each file's bytes are.
#[derive(Clone, Debug)]
pub struct Scanned {
    /// The manifest.
    pub manifest: TreeManifest,
    /// The source of each manifest entry (same order).
    pub sources: Vec<PathBuf>,
}

/// Scans `dir` into a manifest: directories, regular files and symbolic links (which must
/// stay inside the tree); anything else, and names that are not UTF-8, are refused.
pub fn scan(dir: &Path) -> Result<Scanned, TreeError> {
    let mut found: Vec<(Entry, PathBuf)> = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let entry = entry.map_err(|e| {
            let p = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.to_path_buf());
            TreeError::Io(
                p,
                e.into_io_error()
                    .unwrap_or_else(|| io::Error::other("walk failed")),
            )
        })?;
        let p = entry.path();
        let rel = p.strip_prefix(dir).expect("walk stays below its root");
        let rel = rel
            .to_str()
            .ok_or_else(|| TreeError::Manifest(format!("{}: the name is not UTF-8", p.display())))?
            .to_string();
        let meta = fs::symlink_metadata(p).map_err(io_at(p))?;
        let ft = meta.file_type();
        let e = if ft.is_dir() {
            Entry {
                path: rel,
                kind: Kind::Dir,
                mode: Some(meta.permissions().mode() & MODE_MASK),
                size: None,
                sha256: None,
                link: None,
            }
        } else if ft.is_file() {
            let (sha, size) = hash_file(p)?;
            Entry {
                path: rel,
                kind: Kind::File,
                mode: Some(meta.permissions().mode() & MODE_MASK),
                size: Some(size),
                sha256: Some(sha),
                link: None,
            }
        } else if ft.is_symlink() {
            let t = fs::read_link(p).map_err(io_at(p))?;
            let t = t.to_str().ok_or_else(|| {
                TreeError::Manifest(format!("{}: the link target is not UTF-8", p.display()))
            })?;
            Entry {
                path: rel,
                kind: Kind::Symlink,
                mode: None,
                size: None,
                sha256: None,
                link: Some(t.to_string()),
            }
        } else {
            return Err(TreeError::Manifest(format!(
                "{} is not a regular file, directory or symbolic link (a device, socket or pipe)",
                p.display()
            )));
        };
        found.push((e, p.to_path_buf()));
    }
    found.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let (entries, sources) = found.into_iter().unzip();
    let manifest = TreeManifest {
        schema_version: SCHEMA_VERSION,
        entries,
    };
    manifest
        .validate()
        .map_err(|e| TreeError::Manifest(format!("{} cannot be a tree: {e}", dir.display())))?;
    Ok(Scanned { manifest, sources })
}

fn hash_file(p: &Path) -> Result<(String, u64), TreeError> {
    let f = File::open(p).map_err(io_at(p))?;
    hash_read(f).map_err(io_at(p))
}

fn hash_read(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        ctx.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(ctx.finish()), n))
}

/// Where one file's frame is in a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameAt {
    /// Offset of the frame's first byte (its encoding byte).
    pub offset: u64,
    /// The frame's length, header included.
    pub length: u64,
}

/// Files up to this size are compressed in memory, several at once (one per core).
const IN_MEMORY_UP_TO: u64 = 16 << 20;
/// Source bytes compressed together in one parallel batch (bounds the memory held).
const BATCH_BYTES: u64 = 64 << 20;

/// Writes a container: [`MAGIC`], the manifest, then one frame per file in manifest order,
/// zstd at `level` when that is smaller, else stored. Each source is hashed again as it is
/// written and must still be what the manifest says. Files up to 16 MiB are compressed
/// on every core, in batches of at most 64 MiB of source; larger ones are streamed.
/// Returns where each frame is.
pub fn write_container(
    scanned: &Scanned,
    level: Option<i32>,
    out: &mut File,
) -> Result<Vec<FrameAt>, TreeError> {
    use rayon::prelude::*;
    let mbytes = scanned.manifest.to_bytes();
    let out_path = PathBuf::from("the container");
    let w = |r: io::Result<()>| r.map_err(io_at(&out_path));
    w(out.write_all(MAGIC))?;
    w(out.write_all(&(mbytes.len() as u64).to_le_bytes()))?;
    w(out.write_all(&mbytes))?;
    let files: Vec<(&Entry, &PathBuf)> = scanned
        .manifest
        .entries
        .iter()
        .zip(&scanned.sources)
        .filter(|(e, _)| e.kind == Kind::File)
        .collect();
    let mut frames = Vec::with_capacity(files.len());
    let mut i = 0;
    while i < files.len() {
        let in_memory = |k: usize| level.is_some() && files[k].0.file().0 <= IN_MEMORY_UP_TO;
        if !in_memory(i) {
            let (e, src) = files[i];
            frames.push(stream_frame(e, src, level, out)?);
            i += 1;
            continue;
        }
        let mut j = i;
        let mut batch = 0u64;
        while j < files.len() && in_memory(j) {
            let size = files[j].0.file().0;
            if j > i && batch + size > BATCH_BYTES {
                break;
            }
            batch += size;
            j += 1;
        }
        let level = level.expect("only files with a level are compressed in memory");
        let bodies: Vec<Result<(u8, Vec<u8>), TreeError>> = files[i..j]
            .par_iter()
            .map(|(e, src)| compress_frame(e, src, level))
            .collect();
        for body in bodies {
            let (enc, body) = body?;
            let start = out.stream_position().map_err(io_at(&out_path))?;
            w(out.write_all(&[enc]))?;
            w(out.write_all(&(body.len() as u64).to_le_bytes()))?;
            w(out.write_all(&body))?;
            frames.push(FrameAt {
                offset: start,
                length: 9 + body.len() as u64,
            });
        }
        i = j;
    }
    w(out.flush())?;
    Ok(frames)
}

/// The error for a source that is no longer what it was when it was scanned.
fn changed_while_packed(e: &Entry, src: &Path) -> TreeError {
    TreeError::Mismatch {
        path: e.path.clone(),
        reason: format!("{} changed while it was packed", src.display()),
    }
}

/// One file's frame body, compressed in memory: zstd at `level` when that is smaller,
/// else the bytes stored.
fn compress_frame(e: &Entry, src: &Path, level: i32) -> Result<(u8, Vec<u8>), TreeError> {
    let (size, sha) = e.file();
    let f = File::open(src).map_err(io_at(src))?;
    let mut data = Vec::with_capacity(size as usize);
    f.take(size + 1)
        .read_to_end(&mut data)
        .map_err(io_at(src))?;
    if data.len() as u64 != size || sha256_hex(&data) != sha {
        return Err(changed_while_packed(e, src));
    }
    let z = zstd::bulk::compress(&data, level).map_err(io_at(src))?;
    Ok(if (z.len() as u64) < size {
        (ZSTD, z)
    } else {
        (STORED, data)
    })
}

/// Streams one file's frame to `out` at its end: zstd at `level` when that is smaller,
/// else stored (and always stored without a level).
fn stream_frame(
    e: &Entry,
    src: &Path,
    level: Option<i32>,
    out: &mut File,
) -> Result<FrameAt, TreeError> {
    let out_path = PathBuf::from("the container");
    let w = |r: io::Result<()>| r.map_err(io_at(&out_path));
    let (size, sha) = e.file();
    let start = out.stream_position().map_err(io_at(&out_path))?;
    let put = |enc: u8, out: &mut File| -> Result<(), TreeError> {
        w(out.write_all(&[enc]))?;
        w(out.write_all(&0u64.to_le_bytes()))?;
        let f = File::open(src).map_err(io_at(src))?;
        let mut hr = HashRead::new(f.take(size + 1));
        let body_start = start + 9;
        if enc == ZSTD {
            let mut enc =
                zstd::stream::write::Encoder::new(BufWriter::new(&mut *out), level.unwrap_or(19))
                    .map_err(io_at(&out_path))?;
            let _ = enc.include_checksum(false);
            // The size is known: zstd sizes its tables to it.
            enc.set_pledged_src_size(Some(size))
                .map_err(io_at(&out_path))?;
            let done = match io::copy(&mut hr, &mut enc).map_err(io_at(src)) {
                Ok(_) => enc
                    .finish()
                    .and_then(|mut bw| bw.flush())
                    .map_err(io_at(&out_path)),
                Err(e) => Err(e),
            };
            if done.is_err() && hr.count() != size {
                // More or fewer bytes than pledged: the file changed.
                return Err(changed_while_packed(e, src));
            }
            done?;
        } else {
            let mut bw = BufWriter::new(&mut *out);
            io::copy(&mut hr, &mut bw).map_err(io_at(src))?;
            w(bw.flush())?;
        }
        let (got, n) = hr.finish();
        if n != size || got != sha {
            return Err(changed_while_packed(e, src));
        }
        let end = out.stream_position().map_err(io_at(&out_path))?;
        out.seek(SeekFrom::Start(start + 1))
            .map_err(io_at(&out_path))?;
        w(out.write_all(&(end - body_start).to_le_bytes()))?;
        out.seek(SeekFrom::Start(end)).map_err(io_at(&out_path))?;
        Ok(())
    };
    put(if level.is_some() { ZSTD } else { STORED }, out)?;
    let end = out.stream_position().map_err(io_at(&out_path))?;
    if level.is_some() && end - start - 9 >= size {
        // Compression did not help: store the bytes instead.
        out.set_len(start).map_err(io_at(&out_path))?;
        out.seek(SeekFrom::Start(start)).map_err(io_at(&out_path))?;
        put(STORED, out)?;
    }
    let end = out.stream_position().map_err(io_at(&out_path))?;
    Ok(FrameAt {
        offset: start,
        length: end - start,
    })
}

/// A reader that hashes what passes through it.
pub(crate) struct HashRead<R> {
    inner: R,
    ctx: ring::digest::Context,
    n: u64,
}

impl<R: Read> HashRead<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashRead {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            n: 0,
        }
    }
    /// Bytes read so far.
    pub(crate) fn count(&self) -> u64 {
        self.n
    }

    pub(crate) fn finish(self) -> (String, u64) {
        (hex::encode(self.ctx.finish()), self.n)
    }
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.ctx.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

/// Reads a container's header: the manifest's exact bytes, parsed and validated. With
/// `want`, the bytes must have that SHA-256 (the signed [`TreeMeta::manifest_sha256`]).
pub fn read_manifest(
    r: &mut impl Read,
    want: Option<&str>,
) -> Result<(Vec<u8>, TreeManifest), TreeError> {
    let trunc = |what: &str| TreeError::Container(format!("truncated in its {what}"));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| trunc("header"))?;
    if &magic != MAGIC {
        return Err(TreeError::Container(
            "does not start with PTRLTRE1: not a tree container".into(),
        ));
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|_| trunc("header"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_MANIFEST_BYTES {
        return Err(TreeError::Container(format!(
            "its manifest is {len} bytes, more than {MAX_MANIFEST_BYTES}"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    r.take(len)
        .read_to_end(&mut bytes)
        .map_err(|_| trunc("manifest"))?;
    if bytes.len() as u64 != len {
        return Err(trunc("manifest"));
    }
    if let Some(want) = want {
        let got = sha256_hex(&bytes);
        if !got.eq_ignore_ascii_case(want) {
            return Err(TreeError::Manifest(format!(
                "its SHA-256 is {got}, the signed one is {want}: not the signed tree"
            )));
        }
    }
    let m = TreeManifest::from_bytes(&bytes)?;
    Ok((bytes, m))
}

/// Reads the next file frame of a container, passing the decoded bytes to `out`, and
/// checks them against `e`'s size and SHA-256.
pub(crate) fn read_frame(
    r: &mut impl Read,
    e: &Entry,
    out: &mut dyn Write,
) -> Result<(), TreeError> {
    let (size, sha) = e.file();
    let mut head = [0u8; 9];
    r.read_exact(&mut head)
        .map_err(|_| TreeError::Container(format!("truncated before the frame of {:?}", e.path)))?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
    let mut body = r.take(len);
    let mismatch = |reason: String| TreeError::Mismatch {
        path: e.path.clone(),
        reason,
    };
    let mut sink = WriteErr { out, failed: false };
    let (res, (got, n)) = match head[0] {
        STORED => {
            let mut hr = HashRead::new((&mut body).take(size + 1));
            (io::copy(&mut hr, &mut sink), hr.finish())
        }
        ZSTD => {
            let dec = zstd::stream::read::Decoder::new(&mut body)
                .map_err(|err| mismatch(format!("its frame does not decode: {err}")))?;
            let mut hr = HashRead::new(dec.take(size + 1));
            (io::copy(&mut hr, &mut sink), hr.finish())
        }
        b => return Err(mismatch(format!("its frame has the unknown encoding {b}"))),
    };
    if let Err(err) = res {
        return Err(if sink.failed {
            TreeError::Io(PathBuf::from(&e.path), err)
        } else {
            mismatch(format!("its frame does not decode: {err}"))
        });
    }
    if n != size || got != sha {
        return Err(mismatch(format!(
            "the bytes are not the manifest's ({} bytes with sha256 {got}; the manifest: {size} bytes, sha256 {sha})",
            if n > size { format!("more than {size}") } else { n.to_string() }
        )));
    }
    // The frame must end exactly where its length says.
    let mut rest = [0u8; 1];
    if body
        .read(&mut rest)
        .map_err(|err| mismatch(err.to_string()))?
        != 0
    {
        return Err(mismatch("its frame is longer than its bytes".into()));
    }
    if body.limit() != 0 {
        return Err(TreeError::Container(format!(
            "truncated in the frame of {:?}",
            e.path
        )));
    }
    Ok(())
}

/// Records write errors so [`read_frame`] tells them from decoding errors.
struct WriteErr<'a> {
    out: &'a mut dyn Write,
    failed: bool,
}

impl Write for WriteErr<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf).inspect_err(|_| self.failed = true)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush().inspect_err(|_| self.failed = true)
    }
}

/// Reads a whole container, checking every file against its manifest (whose SHA-256 must
/// be `want`) and that nothing follows the last frame, writing nothing.
pub fn verify_container(path: &Path, want: &str) -> Result<TreeManifest, TreeError> {
    let mut r = BufReader::new(File::open(path).map_err(io_at(path))?);
    let (_, m) = read_manifest(&mut r, Some(want))?;
    for e in m.files() {
        read_frame(&mut r, e, &mut io::sink())?;
    }
    expect_end(&mut r)?;
    Ok(m)
}

fn expect_end(r: &mut impl Read) -> Result<(), TreeError> {
    let mut one = [0u8; 1];
    match r.read(&mut one) {
        Ok(0) => Ok(()),
        Ok(_) => Err(TreeError::Container("bytes follow its last frame".into())),
        Err(e) => Err(TreeError::Container(e.to_string())),
    }
}

/// Files [`unpack`] writes before it syncs them (and holds open meanwhile).
const SYNC_BATCH: usize = 128;

/// Unpacks the container at `path` into `dest` (which must not exist): every file is
/// checked against the manifest, whose SHA-256 must be `want`, and every file and
/// directory is made durable. On error `dest` is removed. Returns the manifest's bytes.
pub fn unpack(path: &Path, want: &str, dest: &Path) -> Result<Vec<u8>, TreeError> {
    unpack_with(path, want, dest, Durable::Yes)
}

/// Whether [`unpack_with`] makes what it writes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durable {
    /// Every file and directory is synced (an install).
    Yes,
    /// Nothing is synced: a scratch copy that is checked and removed (the repo tool
    /// verifying a tree delta it built).
    No,
}

/// [`unpack`], syncing what it writes or not.
pub fn unpack_with(
    path: &Path,
    want: &str,
    dest: &Path,
    durable: Durable,
) -> Result<Vec<u8>, TreeError> {
    let mut r = BufReader::new(File::open(path).map_err(io_at(path))?);
    let (bytes, m) = read_manifest(&mut r, Some(want))?;
    fs::create_dir(dest).map_err(io_at(dest))?;
    let done = (|| {
        // Files are synced in batches after they are written, not one by one as each is
        // closed: a sync between two creations makes the next one wait for the journal.
        let mut unsynced: Vec<(File, PathBuf)> = Vec::new();
        let sync = |files: &mut Vec<(File, PathBuf)>| -> Result<(), TreeError> {
            for (f, p) in files.drain(..) {
                if durable == Durable::Yes {
                    f.sync_all().map_err(io_at(&p))?;
                }
            }
            Ok(())
        };
        let mut it = m.entries.iter();
        for e in it.by_ref() {
            let p = dest.join(&e.path);
            match e.kind {
                Kind::Dir => fs::create_dir(&p).map_err(io_at(&p))?,
                Kind::Symlink => std::os::unix::fs::symlink(e.link.as_deref().unwrap_or(""), &p)
                    .map_err(io_at(&p))?,
                Kind::File => {
                    let f = create_file(&p, e.mode.unwrap_or(0o644))?;
                    let mut bw = BufWriter::with_capacity(64 * 1024, &f);
                    read_frame(&mut r, e, &mut bw)?;
                    bw.flush().map_err(io_at(&p))?;
                    drop(bw);
                    unsynced.push((f, p));
                    if unsynced.len() >= SYNC_BATCH {
                        sync(&mut unsynced)?;
                    }
                }
            }
        }
        sync(&mut unsynced)?;
        expect_end(&mut r)?;
        finish_dirs(dest, &m, durable)
    })();
    if done.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    done.map(|()| bytes)
}

/// Creates a new file with `mode` (`create_new`: never through a link, never replacing
/// anything).
pub(crate) fn create_file(p: &Path, mode: u32) -> Result<File, TreeError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(io_at(p))?;
    f.set_permissions(fs::Permissions::from_mode(mode & MODE_MASK))
        .map_err(io_at(p))?;
    Ok(f)
}

/// Gives directories their modes (deepest first, so a read-only directory is filled
/// before it becomes read-only) and makes each durable.
pub(crate) fn finish_dirs(
    dest: &Path,
    m: &TreeManifest,
    durable: Durable,
) -> Result<(), TreeError> {
    let sync = |p: &Path| match durable {
        Durable::Yes => File::open(p).and_then(|d| d.sync_all()).map_err(io_at(p)),
        Durable::No => Ok(()),
    };
    for e in m.entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        let p = dest.join(&e.path);
        sync(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode.unwrap_or(0o755)))
            .map_err(io_at(&p))?;
    }
    sync(dest)
}

#[cfg(test)]
mod tests;

//! Tree deltas (`petrel-tree`): a new tree described against an installed one — unchanged
//! files referenced by hash, changed (or renamed) files as file deltas of the best engine,
//! added files compressed, removed files listed.
//!
//! ```text
//! "PTRLTDL1" | u64 LE length | header (JSON, zstd) | u64 LE length | manifest (zstd)
//!            | payloads (one per `delta` or `add` operation, in order)
//! ```
//! The device rebuilds the new tree as a container with stored frames, each file checked
//! against the new manifest, whose SHA-256 must be the signed one. A file whose installed
//! copy is not the one referenced (edited by hand) is read alone from the full container,
//! whose frame positions the header lists, and checked the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    read_frame, read_manifest, sha256_hex, FrameAt, HashRead, TreeError, TreeManifest, MAGIC,
    MAX_MANIFEST_BYTES, STORED,
};
use crate::delta::{ApplyMode, BuildOptions};

/// The delta format name recorded in a tree delta target's custom metadata.
pub const FORMAT: &str = "petrel-tree";
/// The first bytes of a tree delta.
pub const DELTA_MAGIC: &[u8; 8] = b"PTRLTDL1";

/// How one file of the new tree is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// From the installed file with the same SHA-256 (whatever its path).
    Copy,
    /// A file delta (`format`) applied to the installed file with SHA-256 `base_sha256`.
    Delta,
    /// The bytes, zstd-compressed, in the payload.
    Add,
}

/// One file of the new tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    /// Its path in the new manifest.
    pub path: String,
    /// How it is obtained.
    pub how: How,
    /// The base file's SHA-256 (`delta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sha256: Option<String>,
    /// The file delta's format (`delta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The payload's length (`delta`, `add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Where the file's frame is in the full container, for a device whose base copy was
    /// edited.
    pub frame: FrameAt,
}

/// The header of a tree delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// SHA-256 of the base tree's manifest bytes.
    pub base_manifest_sha256: String,
    /// SHA-256 of the new tree's manifest bytes (carried after the header).
    pub manifest_sha256: String,
    /// Entries of the base tree the new one no longer has.
    pub removed: Vec<String>,
    /// One operation per file of the new manifest, in its order.
    pub ops: Vec<Op>,
}

/// What [`make`] built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Made {
    /// Files referenced by hash.
    pub copied: usize,
    /// Files sent as file deltas (renamed ones included).
    pub deltas: usize,
    /// Of those, files whose base had another path.
    pub renamed: usize,
    /// Files sent whole, compressed.
    pub added: usize,
    /// Entries removed.
    pub removed: usize,
    /// The delta's length.
    pub length: u64,
}

/// A path with its digits removed: `libfoo.so.1.2` and `libfoo.so.1.3` (or
/// `python3.11/x.py` and `python3.12/x.py`) have the same stem.
fn stem(path: &str) -> String {
    path.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// A container read whole: manifest bytes, manifest, each file's bytes and frame.
type Unpacked = (Vec<u8>, TreeManifest, Vec<(Vec<u8>, FrameAt)>);

/// Reads a container whole: its manifest bytes, manifest, each file's bytes and where its
/// frame is.
fn read_all(path: &Path) -> Result<Unpacked, TreeError> {
    let f = File::open(path).map_err(|e| TreeError::Io(path.to_path_buf(), e))?;
    let mut r = CountRead {
        inner: BufReader::new(f),
        n: 0,
    };
    let (bytes, m) = read_manifest(&mut r, None)?;
    let mut files = Vec::new();
    for e in m.files() {
        let start = r.n;
        let mut buf = Vec::with_capacity(e.size.unwrap_or(0) as usize);
        read_frame(&mut r, e, &mut buf)?;
        files.push((
            buf,
            FrameAt {
                offset: start,
                length: r.n - start,
            },
        ));
    }
    super::expect_end(&mut r)?;
    Ok((bytes, m, files))
}

struct CountRead<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// One changed file's payload: its index, the bytes, the base's SHA-256 and the file
/// delta's format (`None`: sent whole), and whether the base had another path.
type Built<'a> = (usize, Vec<u8>, Option<(&'a str, &'static str)>, bool);

/// Builds the tree delta from the container `old` to the container `new` into `out`.
/// Each changed file gets the smallest of its file delta ([`crate::delta::make_best`],
/// against the file at the same path, else a removed file with the same [`stem`]) and
/// its zstd-compressed bytes, built on every core.
pub fn make(
    old: &Path,
    new: &Path,
    opts: &BuildOptions,
    out: &mut impl Write,
) -> Result<Made, TreeError> {
    let (o, n) = rayon::join(|| read_all(old), || read_all(new));
    let ((old_bytes, old_m, old_files), (new_bytes, new_m, new_files)) = (o?, n?);
    let mut by_sha: BTreeMap<&str, &[u8]> = BTreeMap::new();
    let mut by_path: BTreeMap<&str, (&str, &[u8])> = BTreeMap::new();
    for (e, (b, _)) in old_m.files().zip(&old_files) {
        let sha = e.file().1;
        by_sha.insert(sha, b);
        by_path.insert(&e.path, (sha, b));
    }
    let new_paths: BTreeSet<&str> = new_m.entries.iter().map(|e| e.path.as_str()).collect();
    let mut by_stem: BTreeMap<String, Vec<(&str, &[u8])>> = BTreeMap::new();
    for e in old_m
        .files()
        .filter(|e| !new_paths.contains(e.path.as_str()))
    {
        let (sha, b) = by_path[e.path.as_str()];
        by_stem.entry(stem(&e.path)).or_default().push((sha, b));
    }
    let mut made = Made::default();
    let mut ops = Vec::new();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let io_err = |e: io::Error| TreeError::Io(PathBuf::from("the tree delta"), e);
    // Every file the base lacks, with the base file its delta is made against (the file
    // at the same path, else the removed file with the same stem closest in size).
    let mut jobs = Vec::new();
    for (i, (e, (bytes, _))) in new_m.files().zip(&new_files).enumerate() {
        if by_sha.contains_key(e.file().1) {
            continue;
        }
        let (base, renamed) = match by_path.get(e.path.as_str()) {
            Some(b) => (Some(*b), false),
            None => (
                by_stem.get(&stem(&e.path)).and_then(|c| {
                    c.iter()
                        .min_by_key(|(_, b)| (b.len() as i64 - bytes.len() as i64).unsigned_abs())
                        .copied()
                }),
                true,
            ),
        };
        jobs.push((i, &bytes[..], base, renamed));
    }
    // A file sent whole is its frame in the new container when that is compressed
    // already (zstd at the container's level), else compressed here.
    let mut newf = File::open(new).map_err(|e| TreeError::Io(new.to_path_buf(), e))?;
    let mut wholes: Vec<Option<Vec<u8>>> = Vec::with_capacity(jobs.len());
    for &(i, ..) in &jobs {
        let frame = new_files[i].1;
        let mut raw = vec![0u8; frame.length as usize];
        newf.seek(SeekFrom::Start(frame.offset))
            .and_then(|_| newf.read_exact(&mut raw))
            .map_err(|e| TreeError::Io(new.to_path_buf(), e))?;
        wholes.push((raw.first() == Some(&super::ZSTD)).then(|| raw.split_off(9)));
    }
    // The payloads are built on every core (the result does not depend on the order).
    let built: Vec<io::Result<Built<'_>>> = {
        use rayon::prelude::*;
        jobs.par_iter()
            .zip(wholes)
            .map(|(&(i, bytes, base, renamed), whole)| {
                let whole = match whole {
                    Some(w) => w,
                    None => zstd::bulk::compress(bytes, 19)?,
                };
                if let Some((base_sha, base)) = base {
                    // A file no allowed format fits (`--format exec-bsdiff` and a text
                    // file) is sent whole.
                    match crate::delta::make_best(base, bytes, opts) {
                        Ok(best) if best.bytes.len() < whole.len() => {
                            return Ok((i, best.bytes, Some((base_sha, best.format)), renamed));
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((i, whole, None, false))
            })
            .collect()
    };
    let mut built = built.into_iter();
    let mut next = built.next().transpose().map_err(io_err)?;
    for (i, (e, (_, frame))) in new_m.files().zip(&new_files).enumerate() {
        let mut op = Op {
            path: e.path.clone(),
            how: How::Copy,
            base_sha256: None,
            format: None,
            length: None,
            frame: *frame,
        };
        let Some((_, payload, delta, renamed)) = next.take_if(|(j, ..)| *j == i) else {
            made.copied += 1;
            ops.push(op);
            continue;
        };
        next = built.next().transpose().map_err(io_err)?;
        match delta {
            Some((base_sha, format)) => {
                op.how = How::Delta;
                op.base_sha256 = Some(base_sha.to_string());
                op.format = Some(format.to_string());
                made.deltas += 1;
                made.renamed += usize::from(renamed);
            }
            None => {
                op.how = How::Add;
                made.added += 1;
            }
        }
        op.length = Some(payload.len() as u64);
        payloads.push(payload);
        ops.push(op);
    }
    let removed: Vec<String> = old_m
        .entries
        .iter()
        .filter(|e| !new_paths.contains(e.path.as_str()))
        .map(|e| e.path.clone())
        .collect();
    made.removed = removed.len();
    let header = Header {
        base_manifest_sha256: sha256_hex(&old_bytes),
        manifest_sha256: sha256_hex(&new_bytes),
        removed,
        ops,
    };
    let hbytes = serde_json::to_vec(&header).expect("headers serialize");
    let mut n = 0u64;
    let mut put = |b: &[u8]| -> Result<(), TreeError> {
        n += b.len() as u64;
        out.write_all(b).map_err(io_err)
    };
    // The header and the manifest are JSON naming every path: compressed, they cost a
    // fifth as much (for a tree of a few thousand files, hundreds of kilobytes).
    let (hz, mz) = rayon::join(
        || zstd::bulk::compress(&hbytes, 19),
        || zstd::bulk::compress(&new_bytes, 19),
    );
    let (hz, mz) = (hz.map_err(io_err)?, mz.map_err(io_err)?);
    put(DELTA_MAGIC)?;
    put(&(hz.len() as u64).to_le_bytes())?;
    put(&hz)?;
    put(&(mz.len() as u64).to_le_bytes())?;
    put(&mz)?;
    for p in &payloads {
        put(p)?;
    }
    made.length = n;
    Ok(made)
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Files taken from the installed tree.
    pub copied: usize,
    /// Files rebuilt from file deltas.
    pub deltas: usize,
    /// Files sent whole in the delta.
    pub added: usize,
    /// Files whose installed base was not the one referenced (edited by hand) and were
    /// read alone from the full container.
    pub fetched: Vec<String>,
    /// Bytes read from the full container for them.
    pub fetched_bytes: u64,
}

/// Reads the frame of one file from the full container (`offset`, `length`): the
/// updater's range read. The bytes are checked by [`apply`].
pub type FetchFrame<'a> = &'a mut dyn FnMut(FrameAt) -> Result<Vec<u8>, String>;

/// The installed tree a delta applies to.
pub struct Base<'a> {
    /// Its root (the application directory's `tree/`).
    pub root: &'a Path,
    /// Its manifest's exact bytes (as installed beside it).
    pub manifest: &'a [u8],
}

/// The new manifest's SHA-256 a tree delta names in its header, **unverified**: for trying
/// a delta offline (`petrel delta-apply`), where no signed tree says what to expect.
pub fn named_manifest_sha256(delta: &Path) -> Result<String, TreeError> {
    let mut r =
        BufReader::new(File::open(delta).map_err(|e| TreeError::Io(delta.to_path_buf(), e))?);
    let bad = |w: &str| TreeError::Container(format!("tree delta: {w}"));
    let mut head = [0u8; 16];
    r.read_exact(&mut head)
        .map_err(|_| bad("truncated in its header"))?;
    if &head[..8] != DELTA_MAGIC {
        return Err(bad("does not start with PTRLTDL1"));
    }
    let len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if len > MAX_MANIFEST_BYTES {
        return Err(bad("its header is too large"));
    }
    let mut z = Vec::new();
    r.take(len)
        .read_to_end(&mut z)
        .map_err(|e| bad(&e.to_string()))?;
    let h = unzstd(&z).map_err(|e| bad(&format!("its header: {e}")))?;
    let header: Header =
        serde_json::from_slice(&h).map_err(|e| bad(&format!("its header: {e}")))?;
    Ok(header.manifest_sha256)
}

/// Decodes one zstd-compressed section of a tree delta, at most [`MAX_MANIFEST_BYTES`].
fn unzstd(z: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(z)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(io::Error::other(format!(
            "more than {MAX_MANIFEST_BYTES} bytes decoded"
        )));
    }
    Ok(out)
}

/// Reads a tree delta's header and new manifest: the manifest's SHA-256 must be `want`.
pub fn read_header(
    r: &mut impl Read,
    want: &str,
) -> Result<(Header, Vec<u8>, TreeManifest), TreeError> {
    let bad = |w: String| TreeError::Container(format!("tree delta: {w}"));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| bad("truncated in its header".into()))?;
    if &magic != DELTA_MAGIC {
        return Err(bad("does not start with PTRLTDL1".into()));
    }
    let mut read_part = |what: &str| -> Result<Vec<u8>, TreeError> {
        let mut len = [0u8; 8];
        r.read_exact(&mut len)
            .map_err(|_| bad(format!("truncated in its {what}")))?;
        let len = u64::from_le_bytes(len);
        if len > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "its {what} is {len} bytes, more than {MAX_MANIFEST_BYTES}"
            )));
        }
        let mut b = Vec::with_capacity(len as usize);
        r.take(len)
            .read_to_end(&mut b)
            .map_err(|e| bad(e.to_string()))?;
        if b.len() as u64 != len {
            return Err(bad(format!("truncated in its {what}")));
        }
        unzstd(&b).map_err(|e| bad(format!("its {what}: {e}")))
    };
    let hbytes = read_part("header")?;
    let mbytes = read_part("manifest")?;
    let header: Header =
        serde_json::from_slice(&hbytes).map_err(|e| bad(format!("its header: {e}")))?;
    let got = sha256_hex(&mbytes);
    if got != want || header.manifest_sha256 != want {
        return Err(TreeError::Manifest(format!(
            "the tree delta's manifest has SHA-256 {got}, the signed tree's is {want}"
        )));
    }
    let m = TreeManifest::from_bytes(&mbytes)?;
    let files: Vec<_> = m.files().collect();
    if files.len() != header.ops.len()
        || files.iter().zip(&header.ops).any(|(e, o)| e.path != o.path)
    {
        return Err(bad(
            "its operations are not one per file of the manifest, in order".into(),
        ));
    }
    for o in &header.ops {
        let ok = match o.how {
            How::Copy => o.length.is_none() && o.base_sha256.is_none() && o.format.is_none(),
            How::Add => o.length.is_some() && o.base_sha256.is_none() && o.format.is_none(),
            How::Delta => {
                o.length.is_some()
                    && o.base_sha256
                        .as_deref()
                        .is_some_and(|h| crate::manifest::check_sha256_hex(h).is_ok())
                    && o.format
                        .as_deref()
                        .is_some_and(|f| crate::delta::FORMATS.contains(&f))
            }
        };
        if !ok {
            return Err(bad(format!("the operation for {:?} is malformed", o.path)));
        }
    }
    Ok((header, mbytes, m))
}

/// Rebuilds the new tree from the tree delta at `delta` and the installed tree `base` into
/// `out` (a container with stored frames, which [`super::unpack`] installs). The new
/// manifest's SHA-256 must be `want` (the signed one); every file is checked against it.
/// A file whose installed base is missing or edited is read with `fetch` when given, else
/// the delta fails. `tmp` holds the temporary files of file deltas.
pub fn apply(
    delta: &Path,
    base: &Base<'_>,
    want: &str,
    mode: ApplyMode,
    tmp: &Path,
    mut fetch: Option<FetchFrame<'_>>,
    out: &mut File,
) -> Result<Applied, TreeError> {
    let mut r =
        BufReader::new(File::open(delta).map_err(|e| TreeError::Io(delta.to_path_buf(), e))?);
    let (header, mbytes, m) = read_header(&mut r, want)?;
    let base_sha = sha256_hex(base.manifest);
    if base_sha != header.base_manifest_sha256 {
        return Err(TreeError::Manifest(format!(
            "the installed tree's manifest has SHA-256 {base_sha}, the delta's base is {}: not the delta's base",
            header.base_manifest_sha256
        )));
    }
    let base_m = TreeManifest::from_bytes(base.manifest)?;
    let mut paths_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in base_m.files() {
        paths_of.entry(e.file().1).or_default().push(&e.path);
    }
    let out_path = PathBuf::from("the rebuilt tree");
    let oerr = |e: io::Error| TreeError::Io(out_path.clone(), e);
    out.set_len(0).map_err(oerr)?;
    out.seek(SeekFrom::Start(0)).map_err(oerr)?;
    out.write_all(MAGIC).map_err(oerr)?;
    out.write_all(&(mbytes.len() as u64).to_le_bytes())
        .map_err(oerr)?;
    out.write_all(&mbytes).map_err(oerr)?;
    let mut done = Applied::default();
    // Two scratch files, emptied for each file: its payload, and a file delta's result.
    let scratch = || tempfile::tempfile_in(tmp).map_err(|e| TreeError::Io(tmp.to_path_buf(), e));
    let (mut p, mut res) = (scratch()?, scratch()?);
    for (e, op) in m.files().zip(&header.ops) {
        let (size, sha) = e.file();
        let start = out.stream_position().map_err(oerr)?;
        // The payload is read whatever happens, so the next one starts where it should.
        let payload = match op.length {
            Some(n) => {
                p.set_len(0).map_err(oerr)?;
                p.seek(SeekFrom::Start(0)).map_err(oerr)?;
                let k = io::copy(&mut (&mut r).take(n), &mut p).map_err(oerr)?;
                if k != n {
                    return Err(TreeError::Container(format!(
                        "tree delta: truncated in the payload of {:?}",
                        e.path
                    )));
                }
                Some(&mut p)
            }
            None => None,
        };
        let built = match op.how {
            How::Copy => copy_installed(base, paths_of.get(sha), e, out),
            How::Add => {
                let p = payload.expect("checked");
                p.seek(SeekFrom::Start(0)).map_err(oerr)?;
                let dec = zstd::stream::read::Decoder::new(BufReader::new(&*p)).map_err(|err| {
                    TreeError::Mismatch {
                        path: e.path.clone(),
                        reason: err.to_string(),
                    }
                })?;
                put_stored(e, dec, out)
            }
            How::Delta => {
                let want_base = op.base_sha256.as_deref().unwrap_or("");
                match find_installed(base, paths_of.get(want_base), want_base) {
                    None => Err(TreeError::Mismatch {
                        path: e.path.clone(),
                        reason: format!("no installed file has the base's SHA-256 {want_base}"),
                    }),
                    Some((bf, blen)) => {
                        let p = payload.expect("checked");
                        crate::delta::apply_file(
                            op.format.as_deref().unwrap_or(""),
                            &bf,
                            blen,
                            p,
                            size,
                            mode,
                            &res,
                        )
                        .map_err(|err| TreeError::Mismatch {
                            path: e.path.clone(),
                            reason: format!("its file delta: {err}"),
                        })?;
                        res.seek(SeekFrom::Start(0)).map_err(oerr)?;
                        put_stored(e, BufReader::new(&res), out)
                    }
                }
            }
        };
        match built {
            Ok(()) => match op.how {
                How::Copy => done.copied += 1,
                How::Add => done.added += 1,
                How::Delta => done.deltas += 1,
            },
            Err(TreeError::Io(p, err)) if p == out_path => return Err(TreeError::Io(p, err)),
            Err(why) => {
                // Undo the partial frame, then read this one file from the full container.
                out.set_len(start).map_err(oerr)?;
                out.seek(SeekFrom::Start(start)).map_err(oerr)?;
                let Some(fetch) = fetch.as_mut() else {
                    return Err(why);
                };
                tracing::warn!("tree delta: {why}; reading {:?} from the full tree", e.path);
                let frame = fetch(op.frame).map_err(|w| TreeError::Mismatch {
                    path: e.path.clone(),
                    reason: format!("{why}; reading it from the full tree failed: {w}"),
                })?;
                done.fetched_bytes += frame.len() as u64;
                let mut decoded =
                    tempfile::tempfile_in(tmp).map_err(|e| TreeError::Io(tmp.to_path_buf(), e))?;
                {
                    let mut bw = BufWriter::new(&mut decoded);
                    read_frame(&mut &frame[..], e, &mut bw)?;
                    bw.flush().map_err(oerr)?;
                }
                decoded.seek(SeekFrom::Start(0)).map_err(oerr)?;
                put_stored(e, BufReader::new(decoded), out)?;
                done.fetched.push(e.path.clone());
            }
        }
    }
    super::expect_end(&mut r)
        .map_err(|_| TreeError::Container("tree delta: bytes follow its last payload".into()))?;
    out.flush().map_err(oerr)?;
    out.sync_all().map_err(oerr)?;
    Ok(done)
}

/// Writes a stored frame of `e` from `src`, checking size and SHA-256 as it goes.
fn put_stored(e: &super::Entry, src: impl Read, out: &mut File) -> Result<(), TreeError> {
    let (size, sha) = e.file();
    let oerr = |err: io::Error| TreeError::Io(PathBuf::from("the rebuilt tree"), err);
    out.write_all(&[STORED]).map_err(oerr)?;
    out.write_all(&size.to_le_bytes()).map_err(oerr)?;
    let mut hr = HashRead::new(src.take(size + 1));
    let mut bw = BufWriter::with_capacity(64 * 1024, &mut *out);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let k = hr.read(&mut buf).map_err(|err| TreeError::Mismatch {
            path: e.path.clone(),
            reason: format!("reading its bytes: {err}"),
        })?;
        if k == 0 {
            break;
        }
        bw.write_all(&buf[..k]).map_err(oerr)?;
    }
    bw.flush().map_err(oerr)?;
    drop(bw);
    let (got, n) = hr.finish();
    if n != size || got != sha {
        return Err(TreeError::Mismatch {
            path: e.path.clone(),
            reason: format!(
                "the rebuilt bytes are not the manifest's ({size} bytes, sha256 {sha})"
            ),
        });
    }
    Ok(())
}

/// Opens an installed regular file (never a link) among `paths`.
fn open_installed(base: &Base<'_>, p: &str) -> Option<File> {
    let full = base.root.join(p);
    let meta = std::fs::symlink_metadata(&full).ok()?;
    if !meta.is_file() {
        return None;
    }
    File::open(&full).ok()
}

/// The first installed file among `paths` whose bytes have SHA-256 `sha`, and its length.
fn find_installed(base: &Base<'_>, paths: Option<&Vec<&str>>, sha: &str) -> Option<(File, u64)> {
    for p in paths.into_iter().flatten() {
        let Some(mut f) = open_installed(base, p) else {
            continue;
        };
        let mut hr = HashRead::new(BufReader::new(&mut f));
        if io::copy(&mut hr, &mut io::sink()).is_err() {
            continue;
        }
        let (got, n) = hr.finish();
        if got == sha && f.seek(SeekFrom::Start(0)).is_ok() {
            return Some((f, n));
        }
        tracing::warn!(
            "tree delta: the installed {p:?} is not the file the manifest names (edited?)"
        );
    }
    None
}

/// Copies the installed file with `e`'s SHA-256 into `out` as a stored frame.
fn copy_installed(
    base: &Base<'_>,
    paths: Option<&Vec<&str>>,
    e: &super::Entry,
    out: &mut File,
) -> Result<(), TreeError> {
    let start = out
        .stream_position()
        .map_err(|err| TreeError::Io(PathBuf::from("the rebuilt tree"), err))?;
    for p in paths.into_iter().flatten() {
        let Some(f) = open_installed(base, p) else {
            continue;
        };
        match put_stored(e, BufReader::new(f), out) {
            Ok(()) => return Ok(()),
            Err(TreeError::Mismatch { .. }) => {
                tracing::warn!(
                    "tree delta: the installed {p:?} is not the file the manifest names (edited?)"
                );
                out.set_len(start)
                    .map_err(|err| TreeError::Io(PathBuf::from("the rebuilt tree"), err))?;
                out.seek(SeekFrom::Start(start))
                    .map_err(|err| TreeError::Io(PathBuf::from("the rebuilt tree"), err))?;
            }
            Err(other) => return Err(other),
        }
    }
    Err(TreeError::Mismatch {
        path: e.path.clone(),
        reason: "no installed file has its bytes (removed or edited)".into(),
    })
}

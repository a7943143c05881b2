//! Tree artifacts in the repository: packing a directory into one signed target, and the
//! tree deltas between two of them.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use petrel_client::tree::{self, TreeMeta};
use serde_json::Value;

use crate::editor::{AddOptions, AddedTarget, Editor, SourceFile};
use crate::error::{Error, Result};

/// The extension of a tree artifact's target name.
pub const EXTENSION: &str = "ptree";

/// zstd level of the files in a tree container.
pub const LEVEL: i32 = 19;

/// Packs `dir` into a container at `out` (zstd level 19 per file, stored when that is not
/// smaller) and returns its custom metadata.
pub fn pack_dir(dir: &Path, out: &mut std::fs::File) -> Result<TreeMeta> {
    pack_dir_at(dir, out, Some(LEVEL))
}

/// Packs `dir` into a container at `out`, its files zstd-compressed at `level` (when
/// that is smaller) or, without one, stored; returns its custom metadata.
pub fn pack_dir_at(dir: &Path, out: &mut std::fs::File, level: Option<i32>) -> Result<TreeMeta> {
    let scanned =
        tree::scan(dir).map_err(|e| Error::target(dir.display().to_string(), e.to_string()))?;
    out.set_len(0).map_err(|e| Error::io(dir, e))?;
    out.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(dir, e))?;
    tree::write_container(&scanned, level, out)
        .map_err(|e| Error::target(dir.display().to_string(), e.to_string()))?;
    out.flush().map_err(|e| Error::io(dir, e))?;
    let (files, size) = scanned.manifest.totals();
    Ok(TreeMeta {
        manifest_sha256: tree::sha256_hex(&scanned.manifest.to_bytes()),
        files,
        size,
    })
}

/// Adds each directory of `dirs` as one tree target, `<prefix>/<directory name>.ptree`
/// (or `name`, for one directory), with its [`TreeMeta`] merged into `custom`.
pub fn add_trees(
    ed: &mut Editor<'_>,
    dirs: &[PathBuf],
    prefix: Option<&str>,
    name: Option<&str>,
    role: &str,
    custom: Option<Value>,
) -> Result<Vec<AddedTarget>> {
    if name.is_some() && dirs.len() != 1 {
        return Err(Error::Usage("--name needs exactly one directory".into()));
    }
    if let Some(c) = &custom {
        if !c.is_object() {
            return Err(Error::Usage("--custom must be a JSON object".into()));
        }
    }
    let prefix = prefix
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| !p.is_empty());
    let work = ed.workspace().dir().to_path_buf();
    let mut added = Vec::new();
    for dir in dirs {
        let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::target(
                dir.display().to_string(),
                "is not a directory; --tree adds directories (leave it out for files)",
            ));
        }
        let base = match name {
            Some(n) => n.to_string(),
            None => {
                let d = dir
                    .canonicalize()
                    .map_err(|e| Error::io(dir, e))?
                    .file_name()
                    .and_then(|f| f.to_str())
                    .map(str::to_string)
                    .ok_or_else(|| Error::target(dir.display().to_string(), "has no UTF-8 name"))?;
                format!("{d}.{EXTENSION}")
            }
        };
        let target = match prefix {
            Some(p) => format!("{p}/{base}"),
            None => base,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".petrel-tree-")
            .tempfile_in(&work)
            .map_err(|e| Error::io(&work, e))?;
        let tmeta = pack_dir(dir, tmp.as_file_mut())?;
        let mut c = custom
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        c.as_object_mut().expect("checked").insert(
            "tree".into(),
            serde_json::to_value(&tmeta).expect("serializes"),
        );
        added.extend(ed.add_targets(
            &[SourceFile {
                path: tmp.path().to_path_buf(),
                name: target,
            }],
            &AddOptions {
                role: Some(role.to_string()),
                custom: Some(c),
            },
        )?);
    }
    Ok(added)
}

/// Whether `bytes` are a tree container.
pub fn is_tree(bytes: &[u8]) -> bool {
    bytes.starts_with(tree::MAGIC)
}

/// The tree delta from the container `old` to `new` (both in memory), verified by applying
/// it to `old` unpacked (which is unpacked while the delta is built).
pub fn make_tree_delta(
    old: &[u8],
    new: &[u8],
    opts: &petrel_client::delta::BuildOptions,
) -> std::io::Result<(Vec<u8>, tree::delta::Made)> {
    let t = tempfile::tempdir()?;
    let (po, pn) = (t.path().join("old"), t.path().join("new"));
    std::fs::write(&po, old)?;
    std::fs::write(&pn, new)?;
    let to_io = |e: tree::TreeError| std::io::Error::other(e.to_string());
    let (old_manifest, _) = tree::read_manifest(&mut &old[..], None).map_err(to_io)?;
    let (new_manifest, _) = tree::read_manifest(&mut &new[..], None).map_err(to_io)?;
    let root = t.path().join("installed");
    // Unpacking the base is mostly waiting for the disk; the delta is built meanwhile.
    let want = tree::sha256_hex(&old_manifest);
    let (made, unpacked) = std::thread::scope(|s| {
        // A scratch copy, checked and removed: nothing is synced.
        let unpacking = s.spawn(|| tree::unpack_with(&po, &want, &root, tree::Durable::No));
        let mut d = Vec::new();
        let made = tree::delta::make(&po, &pn, opts, &mut d).map(|m| (d, m));
        let unpacked = unpacking.join().expect("unpacking does not panic");
        (made, unpacked)
    });
    let (d, made) = made.map_err(to_io)?;
    unpacked.map_err(to_io)?;
    // Checked as a device would: rebuilt from the unpacked old tree, against the new manifest.
    let dp = t.path().join("delta");
    std::fs::write(&dp, &d)?;
    let mut out = tempfile::tempfile_in(t.path())?;
    tree::delta::apply(
        &dp,
        &tree::delta::Base {
            root: &root,
            manifest: &old_manifest,
        },
        &tree::sha256_hex(&new_manifest),
        petrel_client::delta::ApplyMode::Mmap,
        t.path(),
        None,
        &mut out,
    )
    .map_err(to_io)?;
    Ok((d, made))
}

//! `petrel-repo delta`: whole-file binary deltas from earlier artifact versions to a new one,
//! added as targets `deltas/<new sha256>/<old sha256>.zst` with their custom metadata (the
//! format is [`petrel_client::delta`]).

use std::io::Write;

use petrel_client::delta::{self, DeltaMeta};

use crate::editor::{AddOptions, Editor, SourceFile};
use crate::error::{Error, Result};
use crate::manifests::lookup;
use crate::workspace::Workspace;

/// The role deltas go to by default when the repository has it (`docs/repository.md`).
pub const DEFAULT_ROLE: &str = "deltas";

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct DeltaOptions {
    /// Target paths of the earlier versions (the bases devices have installed).
    pub from: Vec<String>,
    /// Target path of the new version.
    pub to: String,
    /// The role to list the deltas in (default: `deltas` if the repository has that role,
    /// else `targets`; a role delegating to hashed bins places each delta in its bin).
    pub role: Option<String>,
    /// The format (default: [`DeltaFormat::Auto`]).
    pub format: DeltaFormat,
}

/// Which delta formats to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeltaFormat {
    /// Every format that fits the pair, the smallest kept ([`delta::make_best`]).
    #[default]
    Auto,
    /// Whole-file zstd patch-from ([`delta::FORMAT`]).
    Patch,
    /// Chunked ([`delta::chunked::FORMAT`]).
    Chunked,
    /// bsdiff ([`delta::bsdiff::FORMAT`]).
    Bsdiff,
    /// Executable-aware bsdiff ([`delta::bsdiff::EXEC_FORMAT`]; ELF files only).
    Exec,
}

impl DeltaFormat {
    /// The build options of this choice: one format, or all of them.
    pub fn build_options(self) -> delta::BuildOptions {
        let only = |f: &'static str| delta::BuildOptions {
            formats: vec![f],
            bsdiff_up_to: delta::bsdiff::MAX_LEN,
            chunked_from: 0,
        };
        match self {
            DeltaFormat::Auto => delta::BuildOptions::default(),
            DeltaFormat::Patch => only(delta::FORMAT),
            DeltaFormat::Chunked => only(delta::chunked::FORMAT),
            DeltaFormat::Bsdiff => only(delta::bsdiff::FORMAT),
            DeltaFormat::Exec => only(delta::bsdiff::EXEC_FORMAT),
        }
    }
}

impl std::str::FromStr for DeltaFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeltaFormat::Auto),
            "zstd-patch" | "patch" => Ok(DeltaFormat::Patch),
            "zstd-chunked" | "chunked" => Ok(DeltaFormat::Chunked),
            "bsdiff-zstd" | "bsdiff" => Ok(DeltaFormat::Bsdiff),
            "exec-bsdiff" | "exec" => Ok(DeltaFormat::Exec),
            other => Err(format!(
                "{other:?} is not a delta format (auto, zstd-patch, zstd-chunked, bsdiff-zstd, exec-bsdiff)"
            )),
        }
    }
}

/// What happened to one `--from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// The delta was added (or replaced) as a target.
    Added {
        /// The base target path.
        from: String,
        /// The delta's target path.
        name: String,
        /// The role listing it.
        role: String,
        /// The delta's length.
        length: u64,
        /// The new artifact's length.
        result_length: u64,
    },
    /// The delta is not smaller than the new artifact: not added.
    Skipped {
        /// The base target path.
        from: String,
        /// The delta's length.
        length: u64,
        /// The new artifact's length.
        result_length: u64,
    },
}

/// Builds the delta from each `from` target to the `to` target (bytes read from the
/// content store or the tree and checked against their signed length and SHA-256), checks
/// that it reproduces the new bytes, and adds it as a target with its custom metadata.
/// Deltas not smaller than the new artifact are skipped. Refused: targets no role lists,
/// and a `from` with the same bytes as `to`. Nothing is staged until every delta is built.
pub fn make_deltas(ws: &Workspace, opts: &DeltaOptions) -> Result<Vec<DeltaOutcome>> {
    if opts.from.is_empty() {
        return Err(Error::Usage("give at least one --from target".into()));
    }
    let mut ed = Editor::new(ws);
    let new_bytes = read_target(&mut ed, &opts.to)?;
    let result_sha256 = petrel_client::manifest::sha256_hex(&new_bytes);
    let role = match &opts.role {
        Some(r) => r.clone(),
        None if ed.has_role(DEFAULT_ROLE)? => DEFAULT_ROLE.to_string(),
        None => "targets".to_string(),
    };
    let mut out = Vec::new();
    let mut built = Vec::new();
    for from in &opts.from {
        let old = read_target(&mut ed, from)?;
        let base_sha256 = petrel_client::manifest::sha256_hex(&old);
        if base_sha256 == result_sha256 {
            return Err(Error::target(
                from,
                format!(
                    "has the same bytes as {} (sha256 {result_sha256}); there is nothing to delta",
                    opts.to
                ),
            ));
        }
        // Every candidate is checked to rebuild the new bytes before the smallest is kept.
        let (format, bytes) = if crate::trees::is_tree(&old) && crate::trees::is_tree(&new_bytes) {
            let (d, _) =
                crate::trees::make_tree_delta(&old, &new_bytes, &opts.format.build_options())
                    .map_err(|e| Error::target(from, format!("building the tree delta: {e}")))?;
            (petrel_client::tree::delta::FORMAT, d)
        } else {
            let best = delta::make_best(&old, &new_bytes, &opts.format.build_options())
                .map_err(|e| Error::target(from, format!("building the delta: {e}")))?;
            (best.format, best.bytes)
        };
        if bytes.len() >= new_bytes.len() {
            out.push(DeltaOutcome::Skipped {
                from: from.clone(),
                length: bytes.len() as u64,
                result_length: new_bytes.len() as u64,
            });
            continue;
        }
        let meta = DeltaMeta {
            format: format.into(),
            base_sha256,
            base_length: old.len() as u64,
            result_sha256: result_sha256.clone(),
            result_length: new_bytes.len() as u64,
        };
        built.push((from.clone(), meta, bytes));
    }
    let dir = ws.dir();
    for (from, meta, bytes) in built {
        let name = delta::target_path(&meta.result_sha256, &meta.base_sha256);
        let mut tmp = tempfile::Builder::new()
            .prefix(".petrel-delta-")
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.flush())
            .map_err(|e| Error::io(tmp.path(), e))?;
        let added = ed.add_targets(
            &[SourceFile {
                path: tmp.path().to_path_buf(),
                name: name.clone(),
            }],
            &AddOptions {
                role: Some(role.clone()),
                custom: Some(meta.to_custom()),
            },
        )?;
        let t = added.into_iter().next().expect("one target added");
        out.push(DeltaOutcome::Added {
            from,
            name,
            role: t.role,
            length: t.file.length,
            result_length: meta.result_length,
        });
    }
    ed.save()?;
    Ok(out)
}

/// The verified bytes of a target some role lists.
fn read_target(ed: &mut Editor<'_>, name: &str) -> Result<Vec<u8>> {
    let listing = lookup::find(ed, name)?
        .ok_or_else(|| Error::target(name, "no role of this repository lists it"))?;
    lookup::read_listed(ed, &listing)
}

//! Adding and removing targets: name checks, destination roles, path authorization.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use petrel_client::tuf::schema::{check_target_path, Hashes, TargetFile, Unrecognized};
use serde_json::Value;

use super::content::{store_bytes, store_files, StoredFile};
use super::{Editor, RoleLocation};
use crate::error::{Error, Result};

/// A file to add and the target name it will have.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The file on disk.
    pub path: PathBuf,
    /// The target path in the repository.
    pub name: String,
}

/// Options for [`Editor::add_targets`].
#[derive(Clone, Debug, Default)]
pub struct AddOptions {
    /// The role to add to (`targets` by default). A role that delegates to hashed bins
    /// sends each target to its bin.
    pub role: Option<String>,
    /// Custom metadata (a JSON object) recorded for every added target.
    pub custom: Option<Value>,
}

/// A target that was added, and the role that now lists it.
#[derive(Clone, Debug)]
pub struct AddedTarget {
    /// Target path.
    pub name: String,
    /// The role listing it.
    pub role: String,
    /// Length and hashes.
    pub file: StoredFile,
    /// Whether the name was already listed (and is now updated).
    pub replaced: bool,
}

/// Resolves command-line paths into target names. A file becomes `<prefix>/<file name>`
/// (or `name` if given); a directory contributes every regular file below it as
/// `<prefix>/<path relative to the directory>`. Symlinks, special files and names that
/// would escape the tree are refused.
pub fn collect_sources(
    paths: &[PathBuf],
    prefix: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<SourceFile>> {
    let prefix = match prefix.map(|p| p.trim_end_matches('/')) {
        Some("") | None => None,
        Some(p) => {
            check_target_path(p).map_err(|r| Error::Usage(format!("--prefix {p:?}: {r}")))?;
            Some(p.to_string())
        }
    };
    if name.is_some() && (paths.len() != 1 || paths[0].is_dir()) {
        return Err(Error::Usage("--name needs exactly one file".into()));
    }
    let join = |rel: &str| match &prefix {
        Some(p) => format!("{p}/{rel}"),
        None => rel.to_string(),
    };
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::symlink_metadata(p).map_err(|e| Error::io(p, e))?;
        if meta.file_type().is_symlink() {
            return Err(Error::target(
                p.display().to_string(),
                "is a symbolic link; refusing to follow it",
            ));
        }
        if meta.is_dir() {
            for entry in walkdir::WalkDir::new(p)
                .follow_links(false)
                .sort_by_file_name()
            {
                let entry = entry.map_err(|e| {
                    let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| p.clone());
                    Error::io(
                        path,
                        e.into_io_error()
                            .unwrap_or_else(|| std::io::Error::other("walk failed")),
                    )
                })?;
                let ft = entry.file_type();
                if ft.is_dir() {
                    continue;
                }
                let shown = entry.path().display().to_string();
                if ft.is_symlink() {
                    return Err(Error::target(
                        shown,
                        "is a symbolic link; refusing to follow it",
                    ));
                }
                if !ft.is_file() {
                    return Err(Error::target(
                        shown,
                        "is not a regular file (device, socket or pipe)",
                    ));
                }
                let rel = entry
                    .path()
                    .strip_prefix(p)
                    .expect("walk stays below its root");
                let rel = path_to_name(rel)
                    .ok_or_else(|| Error::target(shown.clone(), "name is not valid UTF-8"))?;
                out.push(SourceFile {
                    path: entry.path().to_path_buf(),
                    name: join(&rel),
                });
            }
        } else if meta.is_file() {
            let base = match name {
                Some(n) => n.to_string(),
                None => p
                    .file_name()
                    .and_then(|f| f.to_str())
                    .ok_or_else(|| {
                        Error::target(p.display().to_string(), "name is not valid UTF-8")
                    })?
                    .to_string(),
            };
            out.push(SourceFile {
                path: p.clone(),
                name: join(&base),
            });
        } else {
            return Err(Error::target(
                p.display().to_string(),
                "is not a regular file (device, socket or pipe)",
            ));
        }
    }
    Ok(out)
}

/// Checks that every delegation on the chain to a role allows `name`, so clients will
/// accept the target from that role.
pub fn check_path_authorized(loc: &RoleLocation, name: &str) -> Result<()> {
    for (link_role, link) in loc.chain.iter().zip(&loc.links) {
        if let Some(d) = link {
            if !d.matches(name) {
                let allowed = match (&d.paths, &d.path_hash_prefixes) {
                    (Some(p), _) => format!("paths {p:?}"),
                    (_, Some(h)) => format!("path_hash_prefixes {h:?}"),
                    _ => "no paths".into(),
                };
                return Err(Error::target(
                    name,
                    format!("outside what role {link_role:?} is trusted for ({allowed}); clients would ignore it"),
                ));
            }
        }
    }
    Ok(())
}

fn path_to_name(rel: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

impl Editor<'_> {
    /// The role that will list `name` when adding to `role`: `role` itself, or the
    /// hashed bin it delegates `name` to.
    pub fn destination_role(&mut self, role: &str, name: &str) -> Result<String> {
        let t = self.targets(role)?;
        match t
            .delegations
            .as_ref()
            .and_then(|d| d.succinct_roles.as_ref())
        {
            Some(s) => Ok(s.bin_for_target(name)),
            None => Ok(role.to_string()),
        }
    }

    /// Adds (or updates) targets: checks every name and destination first, then copies and
    /// hashes the files (in parallel) into the content store, then records them in their
    /// roles. Nothing is staged until [`Editor::save`]; on error no role is changed.
    pub fn add_targets(
        &mut self,
        sources: &[SourceFile],
        opts: &AddOptions,
    ) -> Result<Vec<AddedTarget>> {
        let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        let dests = self.plan_adds(&names, opts)?;
        let content_dir = self.workspace().content_dir();
        std::fs::create_dir_all(&content_dir).map_err(|e| Error::io(&content_dir, e))?;
        // Copying and hashing runs on rayon's pool (one thread per core: the files are
        // small and the work is CPU and directory-lock bound); durability costs one
        // file-system sync for all files, not one per file (see `store_files`).
        let paths: Vec<PathBuf> = sources.iter().map(|s| s.path.clone()).collect();
        let stored: Vec<StoredFile> = store_files(&paths, &content_dir)?;
        self.record_adds(&names, dests, stored, opts)
    }

    /// [`Editor::add_targets`] for contents held in memory (compiled manifests), named
    /// `(target name, bytes)`: the same checks, stored without a copy on disk first.
    pub fn add_target_bytes(
        &mut self,
        contents: &[(String, Vec<u8>)],
        opts: &AddOptions,
    ) -> Result<Vec<AddedTarget>> {
        let names: Vec<&str> = contents.iter().map(|(n, _)| n.as_str()).collect();
        let dests = self.plan_adds(&names, opts)?;
        let content_dir = self.workspace().content_dir();
        std::fs::create_dir_all(&content_dir).map_err(|e| Error::io(&content_dir, e))?;
        let bytes: Vec<&[u8]> = contents.iter().map(|(_, b)| b.as_slice()).collect();
        let stored = store_bytes(&bytes, &content_dir)?;
        self.record_adds(&names, dests, stored, opts)
    }

    /// Checks every name, its destination role and that clients would accept it from
    /// there; returns the destination of each.
    fn plan_adds(&mut self, names: &[&str], opts: &AddOptions) -> Result<Vec<String>> {
        let role = opts.role.clone().unwrap_or_else(|| "targets".into());
        if let Some(c) = &opts.custom {
            if !c.is_object() {
                return Err(Error::Usage("custom metadata must be a JSON object".into()));
            }
        }
        let mut seen = BTreeSet::new();
        let mut dests = Vec::with_capacity(names.len());
        for &name in names {
            check_target_path(name).map_err(|r| Error::target(name, r))?;
            if !seen.insert(name) {
                return Err(Error::target(
                    name,
                    "duplicate target name: two of the given files map to it",
                ));
            }
            let dest = self.destination_role(&role, name)?;
            dests.push(dest);
        }
        // Clients accept a target from `role` (or its bins) only if every delegation on
        // the chain to `role` matches the name.
        let loc = self.locate(&role)?;
        for &name in names {
            check_path_authorized(&loc, name)?;
            self.check_bins_authorized(&loc, name)?;
        }
        Ok(dests)
    }

    /// Lists stored contents in their destination roles.
    fn record_adds(
        &mut self,
        names: &[&str],
        dests: Vec<String>,
        stored: Vec<StoredFile>,
        opts: &AddOptions,
    ) -> Result<Vec<AddedTarget>> {
        let mut added = Vec::with_capacity(names.len());
        for ((&name, dest), file) in names.iter().zip(dests).zip(stored) {
            let mut hashes = Hashes::new();
            hashes.insert("sha256".into(), file.sha256.clone());
            hashes.insert("sha512".into(), file.sha512.clone());
            let tf = TargetFile {
                length: file.length,
                hashes,
                custom: opts.custom.clone(),
                unrecognized: Unrecognized::new(),
            };
            let t = self.targets_mut(&dest)?;
            let replaced = t.targets.insert(name.to_string(), tf).is_some();
            added.push(AddedTarget {
                name: name.to_string(),
                role: dest,
                file,
                replaced,
            });
        }
        Ok(added)
    }

    /// Checks that every hashed bin on the chain to a role is the bin `name` hashes to:
    /// clients look for a target only in its own bin.
    fn check_bins_authorized(&mut self, loc: &RoleLocation, name: &str) -> Result<()> {
        for (i, link) in loc.links.iter().enumerate() {
            if link.is_some() {
                continue;
            }
            let bin = &loc.chain[i];
            let delegator = if i == 0 { "targets" } else { &loc.chain[i - 1] };
            let succinct = self
                .targets(delegator)?
                .delegations
                .as_ref()
                .and_then(|d| d.succinct_roles.clone());
            if let Some(s) = succinct {
                let want = s.bin_for_target(name);
                if &want != bin {
                    return Err(Error::target(
                        name,
                        format!(
                            "belongs in hashed bin {want:?} by its path hash, not {bin:?}; clients \
                             would never look for it there (add it with --role {delegator} instead)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Removes targets from `role` (or from the hashed bins it delegates to).
    pub fn remove_targets(&mut self, role: &str, names: &[String]) -> Result<()> {
        for name in names {
            let dest = self.destination_role(role, name)?;
            if !self.targets(&dest)?.targets.contains_key(name) {
                return Err(Error::target(
                    name,
                    format!("is not listed in role {dest:?}"),
                ));
            }
        }
        for name in names {
            let dest = self.destination_role(role, name)?;
            self.targets_mut(&dest)?.targets.remove(name);
        }
        Ok(())
    }
}

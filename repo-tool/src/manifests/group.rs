//! `petrel-repo group set FILE|DIR`: group manifests as `groups/<group>.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use petrel_client::manifest::{GroupManifest, Manifest, ManifestHash, Problems};

use super::{batch_errors, invalid, lookup, read_text, Session, GROUPS};
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// What `group set` did.
#[derive(Clone, Debug)]
pub struct GroupReport {
    /// The group id.
    pub id: String,
    /// The target path.
    pub target: String,
    /// The role that lists and signs it.
    pub role: String,
    /// The new revision.
    pub revision: u64,
    /// The revision it replaces, if the group existed.
    pub previous: Option<u64>,
    /// SHA-256 of the compiled manifest.
    pub sha256: ManifestHash,
    /// Whether the compiled manifest is byte-identical to the current one (nothing staged).
    pub unchanged: bool,
    /// Roles created on the way, and similar notes.
    pub notes: Vec<String>,
}

/// What `group set` did with a directory (or list) of group manifests.
#[derive(Clone, Debug, Default)]
pub struct GroupBatchReport {
    /// One report per file, in the order given.
    pub groups: Vec<GroupReport>,
    /// Groups that did not exist.
    pub created: usize,
    /// Groups given a new revision.
    pub revised: usize,
    /// Groups whose compiled manifest is identical to the current one (not staged).
    pub unchanged: usize,
    /// Roles created on the way, and similar notes.
    pub notes: Vec<String>,
}

/// Validates the group manifest in `file` and stages it as `groups/<id>.json` in `role`
/// (default: where it is listed, else `groups`). The revision must be greater than the
/// current one, every artifact it names must be a target of the repository (with a
/// sha256, and content the workspace holds), and the signing role's capabilities must
/// allow it.
pub fn set_group(ws: &Workspace, file: &Path, role: Option<&str>) -> Result<GroupReport> {
    let mut batch = set_groups(ws, &[file.to_path_buf()], role)?;
    let mut r = batch.groups.remove(0);
    r.notes = batch.notes;
    Ok(r)
}

/// [`set_group`] for many files in one change: every file is validated and checked
/// first (an error names the file; with several errors, all are listed), and only if
/// all pass are the changed manifests staged, together. Two files for the same group are
/// refused; a manifest identical to the current one is counted as unchanged.
pub fn set_groups(
    ws: &Workspace,
    files: &[PathBuf],
    role: Option<&str>,
) -> Result<GroupBatchReport> {
    let mut s = Session::new(ws);
    let mut out = GroupBatchReport::default();
    let mut errors = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    let mut artifacts = ArtifactCache::default();
    for file in files {
        match prepare_group(&mut s, ws, file, role, &mut seen, &mut artifacts) {
            Ok(r) => {
                match (r.unchanged, r.previous) {
                    (true, _) => out.unchanged += 1,
                    (false, Some(_)) => out.revised += 1,
                    (false, None) => out.created += 1,
                }
                out.groups.push(r);
            }
            Err(e) => errors.push(in_file(files.len(), file, e)),
        }
    }
    if !errors.is_empty() {
        return Err(batch_errors("group manifests", files.len(), errors));
    }
    if s.staged_count() > 0 {
        out.notes = s.notes().to_vec();
        s.commit()?;
    }
    Ok(out)
}

/// An error of one file of a batch, naming the file (errors of single files are kept as
/// they are).
pub(crate) fn in_file(batch: usize, file: &Path, e: Error) -> Error {
    match e {
        Error::Manifest { .. } => e,
        e if batch > 1 => Error::manifest(file, e.to_string()),
        e => e,
    }
}

/// What is known about an artifact target: `Ok` when devices will find it with a
/// sha256 and the workspace holds its content, else the problem (read once per change).
#[derive(Default)]
struct ArtifactCache(HashMap<String, std::result::Result<(), String>>);

impl ArtifactCache {
    fn check(
        &mut self,
        s: &mut Session<'_>,
        target: &str,
    ) -> Result<std::result::Result<(), String>> {
        if let Some(v) = self.0.get(target) {
            return Ok(v.clone());
        }
        let v = match lookup::find(s.editor(), target)? {
            None => Err(format!(
                "{target:?} is not a target of this repository; add the artifact first (petrel-repo add … --name/--prefix)"
            )),
            Some(l) if !l.file.hashes.contains_key("sha256") => Err(format!(
                "{target:?} (role {:?}) has no sha256; devices need one to verify the artifact",
                l.role
            )),
            Some(l) if !lookup::content_available(s.editor(), &l)? => Err(format!(
                "{target:?} is listed by role {:?} but its content is neither in the content store nor in the tree",
                l.role
            )),
            Some(_) => Ok(()),
        };
        self.0.insert(target.to_string(), v.clone());
        Ok(v)
    }
}

/// Validates and checks one group manifest and, unless it is unchanged, stages it in `s`.
fn prepare_group(
    s: &mut Session<'_>,
    ws: &Workspace,
    file: &Path,
    role: Option<&str>,
    seen: &mut HashMap<String, PathBuf>,
    artifacts: &mut ArtifactCache,
) -> Result<GroupReport> {
    let text = read_text(file)?;
    let g = GroupManifest::from_toml(&text).map_err(|e| invalid(file, e))?;
    if let Some(other) = seen.get(&g.id) {
        return Err(Error::manifest(
            file,
            format!(
                "id: group {:?} is also set by {}; give each group once",
                g.id,
                other.display()
            ),
        ));
    }
    seen.insert(g.id.clone(), file.to_path_buf());
    let bytes = g.to_canonical_json().map_err(|e| invalid(file, e))?;
    let dest = s.destination(&g.target_path(), role, GROUPS)?;
    let mut previous = None;
    if let Some(cur) = &dest.current {
        let (old, old_bytes) = s.read_current::<GroupManifest>(cur)?;
        if old_bytes == bytes {
            return Ok(GroupReport {
                id: g.id.clone(),
                target: dest.name,
                role: dest.signer,
                revision: g.revision,
                previous: Some(old.revision),
                sha256: ManifestHash::of(&bytes),
                unchanged: true,
                notes: Vec::new(),
            });
        }
        check_revision_grows(ws, file, cur, old.revision, g.revision)?;
        previous = Some(old.revision);
    }
    // Every artifact must be a target devices will find, with a sha256 to verify it.
    let mut p = Problems::new();
    for (app, a) in &g.apps {
        if let Err(why) = artifacts.check(s, &a.target)? {
            p.push(
                format!("apps.{}.target", petrel_client::manifest::key(app)),
                why,
            );
        }
    }
    p.finish("group manifest").map_err(|e| invalid(file, e))?;
    let chain = s.chain(&dest)?;
    chain.check_group(&g, ws.now()).map_err(|v| {
        Error::manifest(
            file,
            format!(
                "group {:?} may not be signed by role {:?}: {v}",
                g.id, dest.signer
            ),
        )
    })?;
    s.stage(&dest, &bytes)?;
    Ok(GroupReport {
        id: g.id.clone(),
        target: dest.name,
        role: dest.signer,
        revision: g.revision,
        previous,
        sha256: ManifestHash::of(&bytes),
        unchanged: false,
        notes: Vec::new(),
    })
}

/// Refuses a revision that does not grow, saying whether the current one is published or
/// only staged.
pub(crate) fn check_revision_grows(
    ws: &Workspace,
    file: &Path,
    current: &lookup::Listing,
    current_revision: u64,
    new: u64,
) -> Result<()> {
    if new > current_revision {
        return Ok(());
    }
    Err(Error::manifest(
        file,
        format!(
            "revision: {new} is not greater than the current revision {current_revision} of {} ({}); revisions only grow, and devices refuse a lower one: use {}",
            current.name,
            super::publication(ws, current)?,
            current_revision + 1
        ),
    ))
}

/// One group of `group list`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupSummary {
    /// The group id.
    pub id: String,
    /// Its revision.
    pub revision: u64,
    /// Application id → version and artifact target.
    pub apps: std::collections::BTreeMap<String, GroupAppSummary>,
    /// The role that lists and signs it.
    pub role: String,
    /// `published` (the tree has this revision) or `staged` (publish has yet to write it).
    pub publication: &'static str,
}

/// One application of a group, for `group list`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupAppSummary {
    /// The version the group runs.
    pub version: String,
    /// The artifact's target path.
    pub target: String,
}

/// A `groups/*.json` target that is not a usable group manifest.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnusableGroup {
    /// The target path.
    pub target: String,
    /// Why devices cannot use it.
    pub reason: String,
}

/// What `group list` shows.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GroupList {
    /// Every group devices will find (staged changes included), by id.
    pub groups: Vec<GroupSummary>,
    /// `groups/*.json` targets that are not usable group manifests.
    pub unusable: Vec<UnusableGroup>,
}

/// Every group devices will find in the workspace (staged changes included), and the
/// `groups/*.json` targets that are not usable group manifests.
pub fn list_groups(ws: &Workspace) -> Result<GroupList> {
    let mut ed = crate::editor::Editor::new(ws);
    let mut out = GroupList::default();
    for name in lookup::names_under(&mut ed, "groups")? {
        let Some(l) = lookup::find(&mut ed, &name)? else {
            continue;
        };
        let parsed = lookup::read_listed(&mut ed, &l)
            .map_err(|e| e.to_string())
            .and_then(|b| GroupManifest::from_json(&b).map_err(|e| e.to_string()));
        let g = match parsed {
            Ok(g) if g.target_path() == l.name => g,
            Ok(g) => {
                out.unusable.push(UnusableGroup {
                    target: name,
                    reason: format!(
                        "its content is group {:?}, which belongs in {}; devices refuse it",
                        g.id,
                        g.target_path()
                    ),
                });
                continue;
            }
            Err(reason) => {
                out.unusable.push(UnusableGroup {
                    target: name,
                    reason,
                });
                continue;
            }
        };
        let publication = match super::publication(ws, &l)? {
            super::Publication::Published => "published",
            super::Publication::Staged => "staged",
        };
        out.groups.push(GroupSummary {
            id: g.id.clone(),
            revision: g.revision,
            apps: g
                .apps
                .iter()
                .map(|(app, a)| {
                    (
                        app.clone(),
                        GroupAppSummary {
                            version: a.version.clone(),
                            target: a.target.clone(),
                        },
                    )
                })
                .collect(),
            role: l.role.clone(),
            publication,
        });
    }
    Ok(out)
}

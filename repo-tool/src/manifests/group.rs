//! `petrel-repo group set FILE`: a group manifest as `groups/<group>.json`.

use std::path::Path;

use petrel_client::manifest::{GroupManifest, Manifest, ManifestHash, Problems};

use super::{invalid, lookup, read_text, Session, GROUPS};
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

/// Validates the group manifest in `file` and stages it as `groups/<id>.json` in `role`
/// (default: where it is listed, else `groups`). The revision must be greater than the
/// current one, every artifact it names must be a target of the repository (with a
/// sha256, and content the workspace holds), and the signing role's capabilities must
/// allow it.
pub fn set_group(ws: &Workspace, file: &Path, role: Option<&str>) -> Result<GroupReport> {
    let text = read_text(file)?;
    let g = GroupManifest::from_toml(&text).map_err(|e| invalid(file, e))?;
    let bytes = g.to_canonical_json().map_err(|e| invalid(file, e))?;
    let mut s = Session::new(ws);
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
        let field = format!("apps.{}.target", petrel_client::manifest::key(app));
        match lookup::find(s.editor(), &a.target)? {
            None => p.push(
                field,
                format!(
                    "{:?} is not a target of this repository; add the artifact first (petrel-repo add … --name/--prefix)",
                    a.target
                ),
            ),
            Some(l) if !l.file.hashes.contains_key("sha256") => p.push(
                field,
                format!(
                    "{:?} (role {:?}) has no sha256; devices need one to verify the artifact",
                    a.target, l.role
                ),
            ),
            Some(l) if !lookup::content_available(s.editor(), &l)? => p.push(
                field,
                format!(
                    "{:?} is listed by role {:?} but its content is neither in the content store nor in the tree",
                    a.target, l.role
                ),
            ),
            Some(_) => {}
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
    let notes = s.notes().to_vec();
    s.commit()?;
    Ok(GroupReport {
        id: g.id.clone(),
        target: dest.name,
        role: dest.signer,
        revision: g.revision,
        previous,
        sha256: ManifestHash::of(&bytes),
        unchanged: false,
        notes,
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

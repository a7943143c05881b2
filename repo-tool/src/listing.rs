//! `petrel-repo targets list`: every target of the workspace (staged changes included), with the role that signs it.

use std::collections::BTreeSet;

use petrel_client::tuf::schema::Targets;
use serde::Serialize;

use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// One target as the workspace lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetEntry {
    /// The target path.
    pub path: String,
    /// Its length in bytes.
    pub length: u64,
    /// Its SHA-256 (hex), if the role lists one.
    pub sha256: Option<String>,
    /// The role that lists and signs it.
    pub role: String,
    /// `published` (the published role lists the same length and hashes) or `staged`.
    pub publication: &'static str,
}

/// Every targets role reachable from `targets` by delegation, in the order devices search
/// them (pre-order, delegations in their listed order, hashed bins in bin order). Roles
/// delegated but without metadata are skipped.
pub fn roles_in_search_order(ed: &mut Editor<'_>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec!["targets".to_string()];
    while let Some(role) = stack.pop() {
        if !seen.insert(role.clone()) || !ed.has_role(&role)? {
            continue;
        }
        let children = ed
            .targets(&role)?
            .delegations
            .as_ref()
            .map(|d| d.role_names())
            .unwrap_or_default();
        out.push(role);
        stack.extend(children.into_iter().rev());
    }
    Ok(out)
}

/// Every target of the workspace's newest metadata (staged, else published), role by role
/// in search order, each role's targets by path. With `role`, only the targets that role
/// signs, or, for a role that delegates to hashed bins, that its bins sign.
pub fn list_targets(ws: &Workspace, role: Option<&str>) -> Result<Vec<TargetEntry>> {
    let mut ed = Editor::new(ws);
    let mut roles = roles_in_search_order(&mut ed)?;
    if let Some(wanted) = role {
        if !roles.iter().any(|r| r == wanted) {
            return Err(Error::role(
                wanted,
                format!(
                    "is not a targets role of this repository; roles: {}",
                    roles.join(", ")
                ),
            ));
        }
        let bins = ed
            .targets(wanted)?
            .delegations
            .as_ref()
            .filter(|d| d.succinct_roles.is_some())
            .map(|d| d.role_names())
            .unwrap_or_default();
        roles.retain(|r| r == wanted || bins.contains(r));
    }
    let mut out = Vec::new();
    for r in roles {
        let published: Option<Targets> = ws.published::<Targets>(&r)?.map(|s| s.signed);
        for (path, file) in &ed.targets(&r)?.targets {
            let same = published
                .as_ref()
                .and_then(|p| p.targets.get(path))
                .is_some_and(|p| p.length == file.length && p.hashes == file.hashes);
            out.push(TargetEntry {
                path: path.clone(),
                length: file.length,
                sha256: file.hashes.get("sha256").cloned(),
                role: r.clone(),
                publication: if same { "published" } else { "staged" },
            });
        }
    }
    Ok(out)
}

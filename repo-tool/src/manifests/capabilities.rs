//! `petrel-repo delegate … --capabilities FILE`: scoped keys, stored as
//! `petrel_capabilities` in the delegated role object (or the succinct bins object).

use std::path::Path;

use chrono::{DateTime, Utc};
use petrel_client::manifest::{
    AssignmentBin, CampaignManifest, Capabilities, GroupManifest, Manifest, RoleCapabilities,
};
use petrel_client::tuf::schema::DelegatedRole;

use super::{invalid, lookup, read_text};
use crate::editor::Editor;
use crate::error::{Error, Result};

/// Reads capabilities authored as TOML (`docs/formats.md`). Errors name the file and the
/// line or field.
pub fn read_capabilities(path: &Path) -> Result<Capabilities> {
    let text = read_text(path)?;
    let caps: Capabilities = toml::from_str(&text).map_err(|e| {
        let mut at = String::new();
        if let Some(span) = e.span() {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            at = format!("line {line}, column {col}");
            if let Some(src) = text.lines().nth(line - 1) {
                at.push_str(&format!(" (`{}`)", src.trim()));
            }
            at.push_str(": ");
        }
        Error::manifest(
            path,
            format!(
                "invalid capabilities: {at}{}",
                e.message().trim().trim_end_matches('.').replace('\n', " ")
            ),
        )
    })?;
    caps.validate().map_err(|e| invalid(path, e))?;
    Ok(caps)
}

/// The delegation from `from` to the named role `name`, if `from` delegates it.
pub fn existing_delegation(
    ed: &mut Editor<'_>,
    from: &str,
    name: &str,
) -> Result<Option<DelegatedRole>> {
    if !ed.has_role(from)? {
        return Ok(None);
    }
    Ok(ed
        .targets(from)?
        .delegations
        .as_ref()
        .and_then(|d| d.roles.as_ref())
        .and_then(|roles| roles.iter().find(|r| r.name == name))
        .cloned())
}

/// Sets (or with `None` removes) the capabilities of the delegation from `from` to `name`,
/// or, with `bins`, of the hashed bins `from` delegates to. Stages `from`.
pub fn set_delegation_capabilities(
    ed: &mut Editor<'_>,
    from: &str,
    name: &str,
    bins: bool,
    caps: Option<&Capabilities>,
) -> Result<()> {
    let d = ed
        .targets_mut(from)?
        .delegations
        .as_mut()
        .ok_or_else(|| Error::role(from, "delegates nothing"))?;
    if bins {
        d.succinct_roles
            .as_mut()
            .ok_or_else(|| Error::role(from, "does not delegate to hashed bins"))?
            .set_capabilities(caps);
    } else {
        d.roles
            .iter_mut()
            .flatten()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::role(name, format!("is not delegated by {from:?}")))?
            .set_capabilities(caps);
    }
    Ok(())
}

/// The manifests `role` lists itself that devices would reject under the capabilities now
/// in the editor (e.g. after narrowing them): one message per manifest.
pub fn check_role_manifests(
    ed: &mut Editor<'_>,
    role: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    if !ed.has_role(role)? {
        return Ok(Vec::new());
    }
    let names: Vec<String> = ed
        .targets(role)?
        .targets
        .keys()
        .filter(|n| {
            n.ends_with(".json")
                && ["groups/", "campaigns/", "assign/"]
                    .iter()
                    .any(|p| n.starts_with(p))
        })
        .cloned()
        .collect();
    let mut out = Vec::new();
    for name in names {
        let Some(l) = lookup::find(ed, &name)? else {
            continue;
        };
        if l.role != role {
            continue;
        }
        let chain = lookup::capability_chain(ed, &l.chain)?;
        let Ok(bytes) = lookup::read_listed(ed, &l) else {
            continue;
        };
        let verdict = if name.starts_with("campaigns/") {
            CampaignManifest::from_json(&bytes)
                .ok()
                .map(|m| chain.check_campaign(&m, now))
        } else if name.starts_with("groups/") {
            GroupManifest::from_json(&bytes)
                .ok()
                .map(|m| chain.check_group(&m, now))
        } else {
            AssignmentBin::from_json(&bytes)
                .ok()
                .map(|m| chain.check_assignment(&m, now))
        };
        if let Some(Err(v)) = verdict {
            out.push(format!("{name}: {v}"));
        }
    }
    Ok(out)
}

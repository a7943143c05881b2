//! The campaign index (`index/fleet.json`, `index/group-<group>.json`): rebuilt from every
//! campaign manifest before a publish, so a device reads only the campaigns that can
//! concern its group (docs/scale.md). Only indexes whose content changed are staged.

use std::collections::{BTreeMap, BTreeSet};

use petrel_client::manifest::{CampaignIndex, CampaignManifest, Manifest};

use super::{lookup, Session, INDEX};
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// What a refresh of the campaign index did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexReport {
    /// Index targets staged (new or changed), by path.
    pub staged: Vec<String>,
    /// Campaigns read.
    pub campaigns: usize,
}

/// Rebuilds the campaign index when the repository's `[layout] campaign_index` is on:
/// every campaign manifest (staged view) goes into the fleet-wide index when it can reach
/// every group ([`CampaignManifest::target_groups`] is `None`), else into the index of
/// each group it can reach. A group whose campaigns are all gone gets an empty index.
/// Indexes are signed by the role `index` (created on first use).
pub fn refresh_campaign_index(ws: &Workspace) -> Result<IndexReport> {
    if !ws.settings.layout.campaign_index {
        return Ok(IndexReport::default());
    }
    let mut s = Session::new(ws);
    let names = lookup::names_under(s.editor(), "campaigns")?;
    let mut want: BTreeMap<Option<String>, BTreeSet<String>> = BTreeMap::new();
    want.insert(None, BTreeSet::new());
    let mut report = IndexReport::default();
    for name in &names {
        let Some(l) = lookup::find(s.editor(), name)? else {
            continue;
        };
        let (c, _) = s.read_current::<CampaignManifest>(&l)?;
        report.campaigns += 1;
        match c.target_groups() {
            None => {
                want.entry(None).or_default().insert(c.id.clone());
            }
            Some(groups) => {
                for g in groups {
                    want.entry(Some(g)).or_default().insert(c.id.clone());
                }
            }
        }
    }
    // Indexes published before for groups that no longer have a campaign become empty.
    for name in lookup::names_under(s.editor(), "index")? {
        if let Some(g) = name
            .strip_prefix("index/group-")
            .and_then(|n| n.strip_suffix(".json"))
        {
            want.entry(Some(g.to_string())).or_default();
        }
    }
    for (group, ids) in want {
        let index = CampaignIndex::new(group, ids);
        let path = index.target_path();
        let bytes = index
            .to_canonical_json()
            .map_err(|e| Error::target(&path, e.to_string()))?;
        if let Some(l) = lookup::find(s.editor(), &path)? {
            if lookup::read_listed(s.editor(), &l).ok().as_deref() == Some(&bytes[..]) {
                continue;
            }
        }
        let dest = s.destination(&path, None, INDEX)?;
        s.stage(&dest, &bytes)?;
        report.staged.push(path);
    }
    if !report.staged.is_empty() {
        s.commit()?;
    }
    Ok(report)
}

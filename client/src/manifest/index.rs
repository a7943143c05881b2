//! The campaign index: which campaigns can concern a group, so a device reads only those
//! (`index/group-<group>.json`, plus `index/fleet.json` for campaigns that reach every
//! group) instead of every campaign in the repository.
//!
//! The index only *proposes* campaign ids: each campaign manifest is still found through
//! the TUF search and checked by the decision engine, so an index listing too much costs a
//! download and nothing else. An index is a signed target like any manifest: a copy with
//! an id removed does not match its signed hashes and is refused.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::common::*;
use super::{Manifest, ManifestKind, Problems, ValidationError};

/// The most campaign ids one index lists.
pub const MAX_INDEX_CAMPAIGNS: usize = 10_000;

/// `index/fleet.json`: the campaigns that reach every group.
pub const FLEET_INDEX_PATH: &str = "index/fleet.json";

/// `index/group-<group>.json`.
pub fn group_index_path(group: &str) -> String {
    format!("index/group-{group}.json")
}

/// The campaigns that can concern one group, or every group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignIndex {
    /// Always [`ManifestKind::Index`].
    pub kind: ManifestKind,
    /// Always [`super::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The group this index is for; absent for the fleet-wide index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Campaign ids (`campaigns/<id>.json`).
    #[serde(default)]
    pub campaigns: BTreeSet<String>,
}

impl CampaignIndex {
    /// An index for `group` (`None`: fleet-wide).
    pub fn new(group: Option<String>, campaigns: BTreeSet<String>) -> Self {
        CampaignIndex {
            kind: ManifestKind::Index,
            schema_version: super::SCHEMA_VERSION,
            group,
            campaigns,
        }
    }

    /// The target path of this index.
    pub fn target_path(&self) -> String {
        match &self.group {
            Some(g) => group_index_path(g),
            None => FLEET_INDEX_PATH.to_string(),
        }
    }
}

impl Manifest for CampaignIndex {
    const KIND: ManifestKind = ManifestKind::Index;

    fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems::new();
        p.check_header(Self::KIND, self.kind, self.schema_version);
        if let Some(g) = &self.group {
            p.check("group", check_id(g));
        }
        if self.campaigns.len() > MAX_INDEX_CAMPAIGNS {
            p.push(
                "campaigns",
                format!(
                    "{} ids is more than {MAX_INDEX_CAMPAIGNS}",
                    self.campaigns.len()
                ),
            );
        }
        for c in &self.campaigns {
            p.check(format!("campaigns.{c:?}"), check_id(c));
        }
        p.finish(Self::KIND.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_round_trips_and_names_its_path() {
        let i = CampaignIndex::new(Some("kiosk-eu".into()), BTreeSet::from(["a".into()]));
        let json = i.to_canonical_json().unwrap();
        assert_eq!(CampaignIndex::from_json(&json).unwrap(), i);
        assert_eq!(i.target_path(), "index/group-kiosk-eu.json");
        assert_eq!(
            CampaignIndex::new(None, BTreeSet::new()).target_path(),
            FLEET_INDEX_PATH
        );
    }

    #[test]
    fn bad_ids_and_unknown_fields_are_refused() {
        let bad = r#"{"kind":"index","schema_version":1,"campaigns":["../x"]}"#;
        assert!(CampaignIndex::from_json(bad.as_bytes()).is_err());
        let extra = r#"{"kind":"index","schema_version":1,"campaigns":[],"more":1}"#;
        assert!(CampaignIndex::from_json(extra.as_bytes()).is_err());
        let kind = r#"{"kind":"group","schema_version":1,"campaigns":[]}"#;
        assert!(CampaignIndex::from_json(kind.as_bytes()).is_err());
    }
}

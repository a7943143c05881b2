//! `root.json`: the keys and thresholds of the four top-level roles.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::common::*;

/// The keys and threshold for one role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Key ids allowed to sign for the role.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must sign.
    pub threshold: u32,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl RoleKeys {
    /// A role with these keys and threshold.
    pub fn new(keyids: Vec<KeyId>, threshold: u32) -> Self {
        RoleKeys {
            keyids,
            threshold,
            unrecognized: Unrecognized::new(),
        }
    }
}

/// Checks a role's key list and threshold: threshold ≥ 1, no duplicate key ids.
pub(crate) fn validate_role_keys(
    what: &str,
    keyids: &[KeyId],
    threshold: u32,
) -> Result<(), SchemaError> {
    if threshold == 0 {
        return Err(SchemaError::invalid(what, "threshold must be at least 1"));
    }
    let unique: BTreeSet<&KeyId> = keyids.iter().collect();
    if unique.len() != keyids.len() {
        return Err(SchemaError::invalid(what, "duplicate key ids"));
    }
    Ok(())
}

/// The signed part of `root.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Always `"root"`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// The specification version the writer followed.
    pub spec_version: String,
    /// Whether the repository uses consistent snapshots (absent is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_snapshot: Option<bool>,
    /// Monotonic version number.
    pub version: u64,
    /// When this root stops being trusted.
    pub expires: Expires,
    /// All keys used by top-level roles.
    pub keys: BTreeMap<KeyId, Key>,
    /// Keys and threshold per top-level role.
    pub roles: BTreeMap<String, RoleKeys>,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl Root {
    /// Whether consistent snapshots are on.
    pub fn consistent_snapshot(&self) -> bool {
        self.consistent_snapshot.unwrap_or(false)
    }

    /// The keys and threshold of a top-level role.
    pub fn role(&self, name: &str) -> Option<&RoleKeys> {
        self.roles.get(name)
    }
}

impl Metadata for Root {
    const TYPE: &'static str = "root";
    impl_metadata_accessors!();

    fn validate(&self) -> Result<(), SchemaError> {
        validate_common(self)?;
        for name in TOP_LEVEL_ROLES {
            let Some(r) = self.roles.get(name) else {
                return Err(SchemaError::invalid(
                    "root metadata",
                    format!("role {name:?} is missing"),
                ));
            };
            validate_role_keys(
                &format!("root metadata, role {name:?}"),
                &r.keyids,
                r.threshold,
            )?;
        }
        if let Some(extra) = self
            .roles
            .keys()
            .find(|k| !TOP_LEVEL_ROLES.contains(&k.as_str()))
        {
            return Err(SchemaError::invalid(
                "root metadata",
                format!("unknown top-level role {extra:?}"),
            ));
        }
        Ok(())
    }
}

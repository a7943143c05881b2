//! `snapshot.json`: the versions of every targets metadata file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::*;
use super::timestamp::validate_meta_file;

/// The signed part of `snapshot.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always `"snapshot"`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// The specification version the writer followed.
    pub spec_version: String,
    /// Monotonic version number.
    pub version: u64,
    /// When this snapshot stops being trusted.
    pub expires: Expires,
    /// `<role>.json` → reference, for `targets.json` and every delegated role.
    pub meta: BTreeMap<String, MetaFile>,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl Snapshot {
    /// The reference to a targets role's metadata (`targets` or a delegated role).
    pub fn role_meta(&self, role: &str) -> Option<&MetaFile> {
        self.meta.get(&format!("{role}.json"))
    }
}

impl Metadata for Snapshot {
    const TYPE: &'static str = "snapshot";
    impl_metadata_accessors!();

    fn validate(&self) -> Result<(), SchemaError> {
        validate_common(self)?;
        if !self.meta.contains_key("targets.json") {
            return Err(SchemaError::invalid(
                "snapshot metadata",
                "meta must contain \"targets.json\"",
            ));
        }
        for (name, m) in &self.meta {
            validate_meta_file("snapshot metadata", name, m)?;
        }
        Ok(())
    }
}

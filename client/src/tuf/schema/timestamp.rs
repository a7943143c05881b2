//! `timestamp.json`: the current snapshot version, re-signed often.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::*;

/// The signed part of `timestamp.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Always `"timestamp"`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// The specification version the writer followed.
    pub spec_version: String,
    /// Monotonic version number.
    pub version: u64,
    /// When this timestamp stops being trusted.
    pub expires: Expires,
    /// Exactly one entry, `snapshot.json`.
    pub meta: BTreeMap<String, MetaFile>,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl Timestamp {
    /// The reference to `snapshot.json`.
    pub fn snapshot_meta(&self) -> &MetaFile {
        // validate() guarantees presence.
        &self.meta["snapshot.json"]
    }

    /// The reference to the snapshot tree's head ([`super::tree`]), if the timestamp pins
    /// one; an error if the field is there but is not a valid reference.
    pub fn snapshot_tree_meta(&self) -> Option<Result<MetaFile, SchemaError>> {
        let v = self.unrecognized.get(super::tree::TIMESTAMP_FIELD)?;
        Some(
            serde_json::from_value::<MetaFile>(v.clone())
                .map_err(|e| {
                    SchemaError::invalid(
                        "timestamp metadata",
                        format!("{}: {e}", super::tree::TIMESTAMP_FIELD),
                    )
                })
                .and_then(|m| {
                    validate_meta_file("timestamp metadata", super::tree::TIMESTAMP_FIELD, &m)?;
                    if m.length.is_none()
                        || !m.hashes.as_ref().is_some_and(|h| h.contains_key("sha256"))
                    {
                        return Err(SchemaError::invalid(
                            "timestamp metadata",
                            format!(
                                "{} must pin the length and sha256 of the head",
                                super::tree::TIMESTAMP_FIELD
                            ),
                        ));
                    }
                    Ok(m)
                }),
        )
    }
}

impl Metadata for Timestamp {
    const TYPE: &'static str = "timestamp";
    impl_metadata_accessors!();

    fn validate(&self) -> Result<(), SchemaError> {
        validate_common(self)?;
        if self.meta.len() != 1 || !self.meta.contains_key("snapshot.json") {
            return Err(SchemaError::invalid(
                "timestamp metadata",
                "meta must contain exactly one entry, \"snapshot.json\"",
            ));
        }
        validate_meta_file("timestamp metadata", "snapshot.json", self.snapshot_meta())
    }
}

/// Checks a metadata reference: version ≥ 1, non-empty well-formed hashes if present.
pub(crate) fn validate_meta_file(what: &str, name: &str, m: &MetaFile) -> Result<(), SchemaError> {
    if m.version == 0 {
        return Err(SchemaError::invalid(
            what,
            format!("{name}: version must be at least 1"),
        ));
    }
    if let Some(h) = &m.hashes {
        validate_hashes(what, name, h)?;
    }
    Ok(())
}

/// Checks that a hash map is non-empty and every digest is hex.
pub(crate) fn validate_hashes(what: &str, name: &str, h: &Hashes) -> Result<(), SchemaError> {
    if h.is_empty() {
        return Err(SchemaError::invalid(
            what,
            format!("{name}: hashes must not be empty"),
        ));
    }
    for (alg, digest) in h {
        if hex::decode(digest).is_err() {
            return Err(SchemaError::invalid(
                what,
                format!("{name}: {alg} digest is not hex"),
            ));
        }
    }
    Ok(())
}

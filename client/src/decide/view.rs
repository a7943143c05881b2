//! The repository as the decision engine sees it: manifests that TUF has already verified,
//! each with its exact-bytes hash and the capabilities of the chain that signed it, plus
//! the signed length and hashes of the artifacts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::{
    AssignmentBin, CampaignManifest, CapabilityChain, GroupManifest, Manifest, ManifestHash,
};
use crate::tuf::updater::{TargetInfo, TrustedMetadata};

/// Everything the engine needs from the repository, already verified.
#[derive(Clone, Debug, Default)]
pub struct RepositoryView {
    /// Campaign manifests (normally every `campaigns/*.json` target).
    pub campaigns: Vec<CampaignEntry>,
    /// Manifests that could not be used at all (not parseable, wrong name, …): target path
    /// and reason. They are shown by [`super::Decision::explain`] and otherwise ignored.
    pub unusable: Vec<(String, String)>,
    /// What could not be fetched or verified this time (a network or server problem, not
    /// the manifests' content): target path or role, and reason. While it is not empty,
    /// errors are not reported as the campaign's failures.
    pub incomplete: Vec<(String, String)>,
    /// The device's assignment bin, if it could be fetched.
    pub assignment: Option<AssignmentEntry>,
    /// The manifest of the device's group, if it could be fetched.
    pub group: Option<GroupEntry>,
    /// Target path → signed length and hashes, for the artifacts the group names.
    pub artifacts: BTreeMap<String, ArtifactInfo>,
}

/// A verified manifest with its provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<T> {
    /// The TUF target path it was published under.
    pub target_path: String,
    /// SHA-256 of its exact bytes (TUF signs it; consent is bound to a campaign's offer,
    /// [`CampaignManifest::offer_sha256`], and names this hash too).
    pub sha256: ManifestHash,
    /// The parsed manifest.
    pub manifest: T,
    /// The capabilities of the delegation chain that signed it.
    pub chain: CapabilityChain,
}

/// A verified campaign manifest.
pub type CampaignEntry = Entry<CampaignManifest>;
/// A verified group manifest.
pub type GroupEntry = Entry<GroupManifest>;
/// A verified assignment bin.
pub type AssignmentEntry = Entry<AssignmentBin>;

impl<T: Manifest> Entry<T> {
    /// An entry from manifest bytes (already verified by TUF) and the chain that signed
    /// them. Checks that the manifest is published under its own name.
    pub fn from_bytes(
        target_path: &str,
        bytes: &[u8],
        chain: CapabilityChain,
    ) -> Result<Entry<T>, String>
    where
        T: Named,
    {
        let manifest = T::from_json(bytes).map_err(|e| e.to_string())?;
        let expected = manifest.expected_path();
        if expected != target_path {
            return Err(format!(
                "published as {target_path:?}, but its content names {expected:?}; refusing a manifest under another name"
            ));
        }
        Ok(Entry {
            target_path: target_path.to_string(),
            sha256: ManifestHash::of(bytes),
            manifest,
            chain,
        })
    }

    /// An entry from a target found by the updater and its downloaded bytes: checks the
    /// bytes against the signed length and hashes (again: the agent may have kept them
    /// anywhere since), parses them, and reads the capabilities of the delegation chain
    /// from the trusted metadata.
    pub fn from_target(
        info: &TargetInfo,
        bytes: &[u8],
        trusted: &TrustedMetadata,
    ) -> Result<Entry<T>, String>
    where
        T: Named,
    {
        crate::tuf::updater::hashes::verify_bytes(bytes, Some(info.length()), Some(info.hashes()))
            .map_err(|e| format!("the bytes are not the signed target: {e}"))?;
        let chain = CapabilityChain::from_trusted(trusted, &info.delegation_chain)?;
        Entry::from_bytes(&info.path, bytes, chain)
    }
}

/// Manifests published under a path derived from their content.
pub trait Named {
    /// The target path the manifest must be published under.
    fn expected_path(&self) -> String;
}

impl Named for CampaignManifest {
    fn expected_path(&self) -> String {
        self.target_path()
    }
}
impl Named for GroupManifest {
    fn expected_path(&self) -> String {
        self.target_path()
    }
}
impl Named for AssignmentBin {
    fn expected_path(&self) -> String {
        self.target_path()
    }
}

/// The signed description of an artifact target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    /// Exact length in bytes.
    pub length: u64,
    /// Signed SHA-256 (hex).
    pub sha256: String,
    /// Deltas that produce this artifact from a known base.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<DeltaInfo>,
    /// For a tree artifact: the signed SHA-256 of its file manifest
    /// ([`crate::tree::TreeMeta`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
}

/// A delta target that turns the bytes with hash `base_sha256` into the artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaInfo {
    /// The delta's target path (under `deltas/`).
    pub target: String,
    /// Its length in bytes.
    pub length: u64,
    /// SHA-256 of the exact base bytes it applies to.
    pub base_sha256: String,
}

impl ArtifactInfo {
    /// The artifact description of a target found by the updater (no deltas).
    pub fn from_target(info: &TargetInfo) -> Option<ArtifactInfo> {
        Some(ArtifactInfo {
            length: info.length(),
            sha256: info.hashes().get("sha256")?.to_ascii_lowercase(),
            deltas: Vec::new(),
            tree: crate::tree::TreeMeta::from_custom(info.file.custom.as_ref())
                .ok()
                .flatten()
                .map(|m| m.manifest_sha256),
        })
    }
}

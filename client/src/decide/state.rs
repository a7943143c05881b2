//! What the device remembers between decisions. The agent builds it from its own files
//! (the consent log, the staging directory, its report journal); the engine only reads it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::consent::ConsentRecords;
use crate::manifest::ManifestHash;

/// The device's memory, as input to [`super::decide`].
#[derive(Clone, Debug, Default)]
pub struct LocalState {
    /// Consent decisions, postponements and administrator tokens (from the consent log).
    pub consent: ConsentRecords,
    /// Target path → a copy already downloaded and verified into staging.
    pub staged: BTreeMap<String, StagedItem>,
    /// Campaign id → failed install attempts.
    pub attempts: BTreeMap<String, InstallAttempt>,
    /// Highest revisions seen so far, to refuse rollbacks.
    pub seen: SeenRevisions,
    /// Campaign id → the last status reported for it.
    pub reports: BTreeMap<String, LastReport>,
    /// A device-side precondition that holds downloads and installs back, in words
    /// (`[inhibit]` in the agent's configuration), if one holds now.
    pub inhibit: Option<String>,
}

/// A verified copy in staging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedItem {
    /// SHA-256 (hex) of the staged bytes, as verified when staging.
    pub sha256: String,
    /// Their length.
    pub length: u64,
}

/// Failed install attempts for one campaign manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallAttempt {
    /// The manifest the attempts were for; a new manifest starts the count again.
    pub manifest_sha256: ManifestHash,
    /// How many attempts failed.
    pub failures: u32,
    /// The last failure.
    pub last_error: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The manifest was installed and failed after its commit point (a hook or the health
    /// check; the previous set restored where it could be): it is not tried again,
    /// whatever `failures` says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_commit: bool,
    /// [`crate::manifest::CampaignManifest::attempt_sha256`] of the manifest: a later
    /// revision that changes only the revision number and the gates' bookkeeping is the
    /// same attempt. Absent in state written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_sha256: Option<ManifestHash>,
}

impl InstallAttempt {
    /// Whether the attempts were for the manifest with these hashes (its exact bytes, or
    /// its [`crate::manifest::CampaignManifest::attempt_sha256`]).
    pub fn is_for(&self, manifest_sha256: &ManifestHash, attempt_sha256: &ManifestHash) -> bool {
        self.manifest_sha256 == *manifest_sha256
            || self.attempt_sha256.as_ref() == Some(attempt_sha256)
    }
}

/// After this many failed installs of the same campaign manifest the device stops trying
/// (until the manifest changes) and reports an error.
pub const MAX_INSTALL_ATTEMPTS: u32 = 3;

/// Highest revisions seen. A manifest with a lower revision is a rollback and is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenRevisions {
    /// Campaign id → revision.
    #[serde(default)]
    pub campaigns: BTreeMap<String, u64>,
    /// Group id → revision.
    #[serde(default)]
    pub groups: BTreeMap<String, u64>,
    /// Assignment bin → revision.
    #[serde(default)]
    pub assign_bins: BTreeMap<String, u64>,
}

impl SeenRevisions {
    /// Records `rev` for `id` in `map` if higher than what is there.
    pub(crate) fn raise(map: &mut BTreeMap<String, u64>, id: &str, rev: u64) {
        let e = map.entry(id.to_string()).or_insert(rev);
        *e = (*e).max(rev);
    }
}

/// The last status the device reported for a campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReport {
    /// The manifest the report was about.
    pub manifest_sha256: ManifestHash,
    /// [`super::Status::kind`] of the reported status.
    pub status: String,
    /// When it was sent.
    pub at: DateTime<Utc>,
}

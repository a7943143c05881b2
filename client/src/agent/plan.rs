//! The staged plan (`staging/<campaign>-<revision>/plan.json`): a plan whose every
//! artifact is downloaded and verified, the hand-over from staging to the installers.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::AgentError;
use super::state::StatePaths;
use crate::decide::{Plan, Step};
use crate::manifest::ManifestHash;
use crate::tuf::updater::write_atomic;

/// The staged plan's file name inside a campaign's staging directory.
pub const PLAN_FILE: &str = "plan.json";
/// The schema version of `plan.json`.
pub const PLAN_SCHEMA_VERSION: u32 = 1;
/// The largest `plan.json` read.
const MAX_PLAN_BYTES: u64 = 4 * 1024 * 1024;

/// The staging directory of one campaign revision: `staging/<campaign>-<revision>`.
pub fn campaign_dir(paths: &StatePaths, campaign: &str, revision: u64) -> PathBuf {
    paths.staging().join(format!("{campaign}-{revision}"))
}

/// A plan whose every artifact is staged and verified: what the apply step installs.
/// Written atomically as `plan.json` in the campaign's staging directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedPlan {
    /// [`PLAN_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The campaign that authorises the plan.
    pub campaign: String,
    /// Its revision.
    pub revision: u64,
    /// SHA-256 of the exact campaign manifest bytes.
    pub manifest_sha256: ManifestHash,
    /// What a failed install of it is bound to (`CampaignManifest::attempt_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_sha256: Option<ManifestHash>,
    /// The group the plan converges to.
    pub group: String,
    /// Its revision.
    pub group_revision: u64,
    /// When the plan was recorded.
    pub staged_at: DateTime<Utc>,
    /// The changes, by application id: add / update / reinstall / remove.
    pub steps: Vec<StagedStep>,
    /// The device's rollout wave in the campaign (1-based), when it has waves; set when
    /// the plan is installed, so a report after an interrupted apply still names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
}

/// One change of a staged plan, with its verified artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedStep {
    /// The change (application, action, versions, target path, post-install state).
    #[serde(flatten)]
    pub step: Step,
    /// The staged artifact (`None` for a removal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<StagedArtifact>,
}

/// A verified artifact in a staging directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedArtifact {
    /// Signed SHA-256 (hex).
    pub sha256: String,
    /// Signed length.
    pub length: u64,
    /// The file name inside the staging directory.
    pub file: String,
    /// The artifact was streamed straight into the inactive slot (a system image, when the
    /// staging directory has no room for it): there is no file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_slot: bool,
    /// For a tree artifact: the signed SHA-256 of its manifest. The staged container may
    /// then also be one rebuilt from a tree delta (stored frames), verified file by file
    /// against that manifest rather than by its own hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
}

impl StagedPlan {
    /// Reads `plan.json` from `dir`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<StagedPlan>, AgentError> {
        let path = dir.join(PLAN_FILE);
        let err = |reason: String| AgentError::State {
            path: path.clone(),
            reason,
        };
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut buf = Vec::new();
        f.take(MAX_PLAN_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        if buf.len() as u64 > MAX_PLAN_BYTES {
            return Err(err(format!("larger than {MAX_PLAN_BYTES} bytes")));
        }
        let p: StagedPlan =
            serde_json::from_slice(&buf).map_err(|e| err(format!("damaged: {e}")))?;
        if p.schema_version != PLAN_SCHEMA_VERSION {
            return Err(err(format!(
                "schema_version {} is unknown; this agent reads {PLAN_SCHEMA_VERSION}",
                p.schema_version
            )));
        }
        Ok(Some(p))
    }

    /// Writes `plan.json` into `dir` atomically (temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<PathBuf, AgentError> {
        let path = dir.join(PLAN_FILE);
        let mut bytes = serde_json::to_vec_pretty(self).expect("plans serialize");
        bytes.push(b'\n');
        write_atomic(&path, &bytes).map_err(|e| AgentError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(path)
    }

    /// The plan without its staging details.
    pub fn plan(&self) -> Plan {
        Plan {
            group: self.group.clone(),
            revision: self.group_revision,
            steps: self.steps.iter().map(|s| s.step.clone()).collect(),
        }
    }
}

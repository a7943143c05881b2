//! The write-ahead journal of an install (`<state_dir>/apply.journal.json`): which phase
//! the install reached and every change it makes, so any interruption is completed or
//! undone at the next start.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ApplyError;
use crate::agent::error::AgentError;
use crate::manifest::{ManifestHash, PostInstall};
use crate::tuf::updater::write_atomic;

/// The schema version of the journal.
pub const JOURNAL_SCHEMA_VERSION: u32 = 1;
/// The largest journal read.
const MAX_JOURNAL_BYTES: u64 = 4 * 1024 * 1024;

/// How far an install got. Each phase is durable (the journal is rewritten atomically
/// when it changes) and says what the next start does after an interruption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The changes are named; the new set may be partly prepared beside the live one.
    /// Undone on recovery: the old set stays.
    Prepared,
    /// The new set is complete and durable beside the live one: the switch will complete.
    Committed,
    /// The new set is live and the previous set is kept aside; the `on_apply` hooks, then
    /// the health check decide between [`Phase::Confirmed`] and [`Phase::RollingBack`].
    Switched,
    /// The health check passed: the previous set is being deleted.
    Confirmed,
    /// A hook or the health check failed: the previous set is being restored.
    RollingBack,
}

impl Phase {
    /// A short name for logs and kill-point records.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prepared => "prepared",
            Phase::Committed => "committed",
            Phase::Switched => "switched",
            Phase::Confirmed => "confirmed",
            Phase::RollingBack => "rolling_back",
        }
    }
}

/// One application change in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalOp {
    /// The application id (its directory name).
    pub app: String,
    /// The version installed (`None`: the application is removed).
    pub version: Option<String>,
    /// The version it replaces or removes, if any.
    pub from_version: Option<String>,
    /// The artifact file name inside the application directory.
    pub artifact_file: Option<String>,
    /// Post-install state.
    pub post_install: PostInstall,
}

impl JournalOp {
    /// `add acme.player 2.1.0`, `update acme.player 2.0 -> 2.1`, `remove acme.clock 1.0`.
    pub fn describe(&self) -> String {
        match (&self.from_version, &self.version) {
            (None, Some(v)) => format!("add {} {v}", self.app),
            (Some(f), Some(v)) if f == v => format!("reinstall {} {v}", self.app),
            (Some(f), Some(v)) => format!("update {} {f} -> {v}", self.app),
            (f, None) => format!("remove {} {}", self.app, f.as_deref().unwrap_or_default()),
        }
    }
}

/// The write-ahead journal of one install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// [`JOURNAL_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// How far the install got.
    pub phase: Phase,
    /// The install handler ([`super::Installer::kind`]); absent in journals of agents
    /// that knew only directories and commands (told apart by `inventory_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer: Option<String>,
    /// The inventory directory changed (installs into a directory), or `None` (an
    /// installer command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_dir: Option<PathBuf>,
    /// The campaign applied.
    pub campaign: String,
    /// Its revision.
    pub revision: u64,
    /// Its manifest hash.
    pub manifest_sha256: ManifestHash,
    /// What a failed install is bound to (`CampaignManifest::attempt_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_sha256: Option<ManifestHash>,
    /// The group converged to, and its revision.
    pub group: (String, u64),
    /// When the install started.
    pub started_at: DateTime<Utc>,
    /// The changes, in order.
    pub ops: Vec<JournalOp>,
    /// How many `on_apply` hook runs are done (in `ops` order).
    #[serde(default)]
    pub hooks_done: usize,
    /// Hook failures so far.
    #[serde(default)]
    pub hook_errors: Vec<String>,
    /// The device's rollout wave in the campaign, if it has waves (for the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// Why the new set is being rolled back ([`Phase::RollingBack`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// How many `on_apply` hook runs for the restored versions are done.
    #[serde(default)]
    pub restore_hooks_done: usize,
    /// The install waited for a reboot (a new system image, an installer that exited 3).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaited_reboot: bool,
}

impl Journal {
    /// Reads the journal; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Journal>, AgentError> {
        let err = |reason: String| AgentError::State {
            path: path.to_path_buf(),
            reason,
        };
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut buf = Vec::new();
        f.take(MAX_JOURNAL_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        let j: Journal = serde_json::from_slice(&buf).map_err(|e| {
            err(format!(
                "damaged ({e}); the inventory directory may hold a half-applied change: inspect its .petrel-new-* and .petrel-old-* directories"
            ))
        })?;
        if j.schema_version != JOURNAL_SCHEMA_VERSION {
            return Err(err(format!(
                "schema_version {} is unknown; this agent reads {JOURNAL_SCHEMA_VERSION}",
                j.schema_version
            )));
        }
        Ok(Some(j))
    }

    /// Writes the journal atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), ApplyError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("journals serialize");
        bytes.push(b'\n');
        write_atomic(path, &bytes).map_err(|e| ApplyError::Io(path.to_path_buf(), e))
    }

    /// Moves to `phase` and saves.
    pub fn enter(&mut self, phase: Phase, path: &Path) -> Result<(), ApplyError> {
        self.phase = phase;
        self.save(path)
    }

    /// The changes in words.
    pub fn changes(&self) -> Vec<String> {
        self.ops.iter().map(JournalOp::describe).collect()
    }
}

/// Deletes the journal and makes the deletion durable.
pub fn remove(path: &Path) -> Result<(), ApplyError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApplyError::Io(path.to_path_buf(), e)),
    }
    if let Some(p) = path.parent() {
        let _ = File::open(p).and_then(|d| d.sync_all());
    }
    Ok(())
}

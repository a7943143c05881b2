//! The state directory and the agent's state file.
//!
//! ```text
//! <state_dir>/metadata/      TUF trusted metadata (root.json, timestamp.json, …)
//! <state_dir>/consent.log    the consent store (hash-chained JSON lines)
//! <state_dir>/state.json     revisions seen, staged items, failed attempts, reports, last check
//! <state_dir>/staging/       verified downloads waiting to be installed, per campaign revision
//! <state_dir>/manifests/     cache of the verified manifest bytes last fetched
//! <state_dir>/apply.journal.json  the write-ahead journal of an apply in progress
//! <state_dir>/device.key     the device's report signing key (PKCS#8 PEM)
//! <state_dir>/outbox/        signed reports waiting to be sent
//! <state_dir>/agent.lock     held while a command runs
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::AgentError;
use crate::decide::{InstallAttempt, LastReport, LocalState, SeenRevisions, StagedItem};
use crate::tuf::updater::write_atomic;

/// The apply journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "apply.journal.json";
/// The schema version of `state.json`.
pub const STATE_SCHEMA_VERSION: u32 = 1;
/// The largest `state.json` read.
const MAX_STATE_BYTES: u64 = 16 * 1024 * 1024;
/// How long a command waits for the agent lock (held while a command or one cycle of
/// `petrel run` works) before it says another one is running.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The paths inside the state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatePaths {
    /// The state directory.
    pub root: PathBuf,
}

impl StatePaths {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> StatePaths {
        StatePaths { root: root.into() }
    }
    /// `metadata/`: the TUF trusted metadata.
    pub fn metadata(&self) -> PathBuf {
        self.root.join("metadata")
    }
    /// `consent.log`.
    pub fn consent_log(&self) -> PathBuf {
        self.root.join("consent.log")
    }
    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// `staging/`.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    /// `manifests/`: the verified manifest bytes of the last run.
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    /// `apply.journal.json`: the write-ahead journal of an apply in progress.
    pub fn journal(&self) -> PathBuf {
        self.root.join(JOURNAL_FILE)
    }
    /// `slots.json`: what the system image slots hold ([`super::install::slot::SlotsState`]).
    pub fn slots_file(&self) -> PathBuf {
        self.root.join("slots.json")
    }
    /// `device.key`: the device's report signing key.
    pub fn device_key(&self) -> PathBuf {
        self.root.join("device.key")
    }
    /// `outbox/`: signed reports waiting to be sent.
    pub fn outbox(&self) -> PathBuf {
        self.root.join("outbox")
    }
    /// `agent.lock`: held while a command, or one cycle of `petrel run`, works.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("agent.lock")
    }
    /// `run.lock`: held by `petrel run` for its whole life and by `petrel update`.
    pub fn run_lock_file(&self) -> PathBuf {
        self.root.join("run.lock")
    }
    /// Whether a trusted root has been provisioned.
    pub fn is_provisioned(&self) -> bool {
        self.metadata().join("root.json").is_file()
    }

    /// Creates the directories (not the files).
    pub fn create_dirs(&self) -> Result<(), AgentError> {
        for d in [
            self.root.clone(),
            self.metadata(),
            self.staging(),
            self.manifests(),
        ] {
            fs::create_dir_all(&d).map_err(|e| AgentError::State {
                path: d.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Takes the agent lock, waiting up to [`LOCK_WAIT`] for another command (or a cycle
    /// of `petrel run`) to finish; then [`AgentError::Busy`] names the other command (its
    /// pid and command line, which the holder writes into the lock file).
    pub fn lock(&self) -> Result<File, AgentError> {
        lock_file(&self.root, &self.lock_file(), LOCK_WAIT)
    }

    /// Takes the runner lock (`run.lock`) without waiting: only one `petrel run` or
    /// `petrel update` works on a state directory at a time; another gets
    /// [`AgentError::Busy`] at once, naming the holder. Short commands (`check`, `status`,
    /// `consent`) do not take it, so they work while the resident agent sleeps.
    pub fn lock_runner(&self) -> Result<File, AgentError> {
        fs::create_dir_all(&self.root).map_err(|e| AgentError::State {
            path: self.root.clone(),
            reason: e.to_string(),
        })?;
        lock_file(&self.root, &self.run_lock_file(), Duration::ZERO)
    }
}

/// Locks `path` (waiting up to `wait`), then writes the holder's pid and command line
/// into it.
fn lock_file(root: &Path, path: &Path, wait: Duration) -> Result<File, AgentError> {
    let path = path.to_path_buf();
    let err = |reason: String| AgentError::State {
        path: path.clone(),
        reason,
    };
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| err(e.to_string()))?;
    let start = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = (&f).take(4096).read_to_string(&mut holder);
                return Err(AgentError::Busy {
                    state_dir: root.to_path_buf(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(err(e.to_string())),
        }
    }
    // Say who holds it (best effort: the lock is what counts, not this text).
    let me = format!(
        "pid {} ({})\n",
        std::process::id(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    use std::io::{Seek, Write};
    let mut held = String::new();
    let _ = (&f).take(4096).read_to_string(&mut held);
    if held != me {
        let _ = f
            .set_len(0)
            .and_then(|()| f.seek(io::SeekFrom::Start(0)))
            .and_then(|_| f.write_all(me.as_bytes()));
    }
    Ok(f)
}

/// What the agent remembers between runs (`state.json`). Written atomically (temporary
/// file, fsync, rename), so a power cut leaves the old or the new file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// [`STATE_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Highest revisions accepted so far (rollback protection); only grows.
    #[serde(default)]
    pub seen: SeenRevisions,
    /// Target path → verified copy in `staging/` (written by the staging step).
    #[serde(default)]
    pub staged: BTreeMap<String, StagedItem>,
    /// Campaign id → failed install attempts (written by the apply step).
    #[serde(default)]
    pub attempts: BTreeMap<String, InstallAttempt>,
    /// Campaign id → the last status reported (written by the report step).
    #[serde(default)]
    pub reports: BTreeMap<String, LastReport>,
    /// The last evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<LastCheck>,
}

/// A summary of the last evaluation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastCheck {
    /// When.
    pub at: DateTime<Utc>,
    /// The instant decided at (differs from `at` with `--at`).
    pub decided_at: DateTime<Utc>,
    /// The device's group and revision, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<(String, u64)>,
    /// Campaign id → status kind.
    #[serde(default)]
    pub campaigns: BTreeMap<String, String>,
    /// When to decide again at the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<DateTime<Utc>>,
}

impl AgentState {
    /// Reads `state.json`; a missing file is an empty state. A damaged file is an error,
    /// never silently reset (that would forget the revisions seen).
    pub fn load(path: &Path) -> Result<AgentState, AgentError> {
        let err = |reason: String| AgentError::State {
            path: path.to_path_buf(),
            reason,
        };
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(AgentState {
                    schema_version: STATE_SCHEMA_VERSION,
                    ..AgentState::default()
                })
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let mut buf = Vec::new();
        f.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        if buf.len() as u64 > MAX_STATE_BYTES {
            return Err(err(format!("larger than {MAX_STATE_BYTES} bytes")));
        }
        let s: AgentState = serde_json::from_slice(&buf).map_err(|e| {
            err(format!(
                "damaged ({e}); move it aside to start over (rollback protection then restarts from the repository's current revisions)"
            ))
        })?;
        if s.schema_version != STATE_SCHEMA_VERSION {
            return Err(err(format!(
                "schema_version {} is unknown; this agent reads {STATE_SCHEMA_VERSION}",
                s.schema_version
            )));
        }
        Ok(s)
    }

    /// Writes `state.json` atomically, unless it already holds exactly these bytes (a
    /// poll that changes nothing writes nothing: no fsync, no flash wear).
    pub fn save(&self, path: &Path) -> Result<(), AgentError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        bytes.push(b'\n');
        if fs::read(path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        write_atomic(path, &bytes).map_err(|e| AgentError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The engine's [`LocalState`] (consent records come from the consent store).
    pub fn local_state(&self, consent: crate::consent::ConsentRecords) -> LocalState {
        LocalState {
            consent,
            staged: self.staged.clone(),
            attempts: self.attempts.clone(),
            seen: self.seen.clone(),
            reports: self.reports.clone(),
            inhibit: None,
        }
    }

    /// Raises the remembered revisions to `observed` (they never go down).
    pub fn remember(&mut self, observed: &SeenRevisions) {
        for (mine, theirs) in [
            (&mut self.seen.campaigns, &observed.campaigns),
            (&mut self.seen.groups, &observed.groups),
            (&mut self.seen.assign_bins, &observed.assign_bins),
        ] {
            for (k, v) in theirs {
                let e = mine.entry(k.clone()).or_insert(*v);
                *e = (*e).max(*v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let mut s = AgentState::load(&p).unwrap();
        assert_eq!(s.schema_version, STATE_SCHEMA_VERSION);
        let mut seen = SeenRevisions::default();
        seen.campaigns.insert("c".into(), 3);
        s.remember(&seen);
        seen.campaigns.insert("c".into(), 2);
        s.remember(&seen);
        assert_eq!(s.seen.campaigns["c"], 3, "revisions never go down");
        s.save(&p).unwrap();
        assert_eq!(AgentState::load(&p).unwrap(), s);
        fs::write(&p, b"{not json").unwrap();
        let e = AgentState::load(&p).unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("move it aside"), "{e}");
    }
}

//! The consent log: append-only, hash-chained JSON lines, written with fsync.
//!
//! Each line is the canonical JSON ([`crate::manifest::canonical_json`]) of a [`LogEntry`]: a sequence number (1, 2, …), the
//! SHA-256 of the previous line's bytes (`prev`; 64 zeros for the first line) and the
//! [`ConsentEvent`]. Opening the log re-verifies every line — canonical form, sequence,
//! chain — and names the first line where the chain breaks. A last line without its
//! newline is an append that never completed (power loss mid-write; the caller never got
//! `Ok`), so it is cut off and reported, never silently kept.
//!
//! The chain makes edits, insertions, deletions and reordering inside the log evident. It
//! cannot, by itself, reveal that the newest entries were cut off; the agent can include
//! [`ConsentStore::head`] in its signed reports to anchor the chain outside the device.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AdminConsentToken, ConsentAction, ConsentEvent, ConsentRecords};
use crate::decide::{CampaignEntry, DeviceProfile};
use crate::manifest::{
    canonical_json, canonical_json_value, sha256_hex, Assignment, CampaignState, ConsentPolicy,
};

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Largest consent log read (64 MiB).
pub const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// One line of the consent log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// 1 for the first line, then +1.
    pub seq: u64,
    /// SHA-256 (hex) of the previous line's bytes, or [`GENESIS`].
    pub prev: String,
    /// The record.
    pub event: ConsentEvent,
}

/// Where and why a consent log's chain breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ChainError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// A verified log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedLog {
    /// The entries.
    pub entries: Vec<LogEntry>,
    /// SHA-256 of the last line ([`GENESIS`] if empty).
    pub head: String,
    /// Bytes of the complete lines (where the next entry goes).
    pub valid_len: u64,
    /// Length of an incomplete last line, if there was one.
    pub torn_tail: Option<usize>,
}

/// Verifies the bytes of a consent log. Pure.
pub fn verify_log(bytes: &[u8]) -> Result<VerifiedLog, ChainError> {
    let mut entries = Vec::new();
    let mut head = GENESIS.to_string();
    let mut pos = 0usize;
    let mut torn_tail = None;
    let mut line_no = 0usize;
    while pos < bytes.len() {
        line_no += 1;
        let Some(nl) = bytes[pos..].iter().position(|b| *b == b'\n') else {
            torn_tail = Some(bytes.len() - pos);
            break;
        };
        let line = &bytes[pos..pos + nl];
        let bad = |reason: String| ChainError {
            line: line_no,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let canon = canonical_json_value(&value).map_err(|e| bad(e.to_string()))?;
        if canon != line {
            return Err(bad("not in canonical form: the line was edited".into()));
        }
        let entry: LogEntry =
            serde_json::from_value(value).map_err(|e| bad(format!("not a consent record: {e}")))?;
        if entry.seq != line_no as u64 {
            return Err(bad(format!(
                "sequence number {} where {line_no} was expected: a line was removed or inserted",
                entry.seq
            )));
        }
        if entry.prev != head {
            return Err(bad(format!(
                "prev {} does not match the hash of line {} ({}): an earlier line was changed, removed or reordered",
                short(&entry.prev),
                line_no - 1,
                short(&head)
            )));
        }
        head = sha256_hex(line);
        entries.push(entry);
        pos += nl + 1;
    }
    Ok(VerifiedLog {
        entries,
        head,
        valid_len: pos as u64,
        torn_tail,
    })
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// A consent store problem.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// Reading, writing or syncing failed.
    #[error("consent log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The chain is broken: the log was tampered with or damaged. Nothing was changed.
    #[error("consent log {path}: the hash chain breaks at {error}")]
    Chain {
        /// The log file.
        path: PathBuf,
        /// Where and why.
        error: ChainError,
    },
    /// Another process holds the log.
    #[error("consent log {path} is in use by another process")]
    Locked {
        /// The log file.
        path: PathBuf,
    },
    /// The record is not allowed (policy, bound, deadline, invalid token, …).
    #[error("consent not recorded: {0}")]
    Refused(String),
    /// An earlier write failed and could not be undone; reopen the store.
    #[error("consent log {path} is in an unknown state after a failed write; reopen it")]
    Poisoned {
        /// The log file.
        path: PathBuf,
    },
}

/// What opening the log found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries verified.
    pub entries: usize,
    /// Bytes of an incomplete last line that were cut off.
    pub dropped_torn_tail: Option<usize>,
}

/// The consent log on disk, held exclusively (file lock) while open.
#[derive(Debug)]
pub struct ConsentStore {
    path: PathBuf,
    file: File,
    records: ConsentRecords,
    head: String,
    seq: u64,
    len: u64,
    poisoned: bool,
}

impl ConsentStore {
    /// Opens (or creates) the log at `path`, takes an exclusive lock, and verifies the
    /// whole chain. A broken chain is an error naming the line; nothing is modified then.
    pub fn open(path: impl Into<PathBuf>) -> Result<(ConsentStore, OpenReport), ConsentError> {
        let path = path.into();
        let io_err = |source| ConsentError::Io {
            path: path.clone(),
            source,
        };
        let existed = path.exists();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(ConsentError::Locked { path }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        if !existed {
            sync_parent(&path);
        }
        let size = file.metadata().map_err(io_err)?.len();
        if size > MAX_LOG_BYTES {
            return Err(io_err(io::Error::other(format!(
                "{size} bytes is more than the {MAX_LOG_BYTES}-byte limit"
            ))));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let verified = verify_log(&bytes).map_err(|error| ConsentError::Chain {
            path: path.clone(),
            error,
        })?;
        if verified.torn_tail.is_some() {
            file.set_len(verified.valid_len).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        let report = OpenReport {
            entries: verified.entries.len(),
            dropped_torn_tail: verified.torn_tail,
        };
        let seq = verified.entries.len() as u64;
        let store = ConsentStore {
            path,
            file,
            records: verified.entries.into_iter().map(|e| e.event).collect(),
            head: verified.head,
            seq,
            len: verified.valid_len,
            poisoned: false,
        };
        Ok((store, report))
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records, for [`crate::decide::LocalState::consent`].
    pub fn records(&self) -> &ConsentRecords {
        &self.records
    }

    /// The number of entries and the SHA-256 of the last line (anchor it in reports).
    pub fn head(&self) -> (u64, &str) {
        (self.seq, &self.head)
    }

    /// Records explicit agreement to the campaign manifest shown (policies `required`
    /// and `acknowledge`). Every checked record names both the exact manifest
    /// (`manifest_sha256`) and the offer it is bound to (`offer_sha256`).
    pub fn accept(
        &mut self,
        c: &CampaignEntry,
        now: DateTime<Utc>,
        locale: Option<&str>,
    ) -> Result<&ConsentEvent, ConsentError> {
        self.answer(c, ConsentAction::Accept, now, locale)
    }

    /// Records an acknowledgement (policy `acknowledge`).
    pub fn acknowledge(
        &mut self,
        c: &CampaignEntry,
        now: DateTime<Utc>,
        locale: Option<&str>,
    ) -> Result<&ConsentEvent, ConsentError> {
        self.answer(c, ConsentAction::Acknowledge, now, locale)
    }

    /// Records a refusal (policy `required`); final for this offer.
    pub fn decline(
        &mut self,
        c: &CampaignEntry,
        now: DateTime<Utc>,
        locale: Option<&str>,
    ) -> Result<&ConsentEvent, ConsentError> {
        self.answer(c, ConsentAction::Decline, now, locale)
    }

    /// Records a postponement until `until`, within the campaign's bound and deadline.
    pub fn postpone(
        &mut self,
        c: &CampaignEntry,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<&ConsentEvent, ConsentError> {
        self.answer(
            c,
            ConsentAction::Postpone {
                until: until.into(),
            },
            now,
            None,
        )
    }

    /// Verifies an administrator consent token for this device and records it.
    pub fn add_admin_token(
        &mut self,
        c: &CampaignEntry,
        token: AdminConsentToken,
        profile: &DeviceProfile,
        assignment: Option<&Assignment>,
        now: DateTime<Utc>,
    ) -> Result<&ConsentEvent, ConsentError> {
        token
            .verify(&c.manifest, &c.sha256, profile, assignment, now)
            .map_err(ConsentError::Refused)?;
        self.answer(
            c,
            ConsentAction::Administrator {
                token: Box::new(token),
            },
            now,
            None,
        )
    }

    fn answer(
        &mut self,
        c: &CampaignEntry,
        action: ConsentAction,
        now: DateTime<Utc>,
        locale: Option<&str>,
    ) -> Result<&ConsentEvent, ConsentError> {
        check_allowed(&self.records, c, &action, now).map_err(ConsentError::Refused)?;
        self.append(ConsentEvent {
            campaign: c.manifest.id.clone(),
            revision: c.manifest.revision,
            manifest_sha256: c.sha256.clone(),
            offer_sha256: Some(c.manifest.offer_sha256()),
            at: now.into(),
            action,
            locale: locale.map(str::to_string),
        })
    }

    /// Appends a record without policy checks (for tools and tests; the device agent uses
    /// the checked methods). Written and fsynced before it returns.
    pub fn append(&mut self, event: ConsentEvent) -> Result<&ConsentEvent, ConsentError> {
        if self.poisoned {
            return Err(ConsentError::Poisoned {
                path: self.path.clone(),
            });
        }
        let entry = LogEntry {
            seq: self.seq + 1,
            prev: self.head.clone(),
            event,
        };
        let mut line = canonical_json(&entry)
            .map_err(|e| ConsentError::Refused(format!("record has no canonical form: {e}")))?;
        let hash = sha256_hex(&line);
        line.push(b'\n');
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Cut a partial line off so the chain stays intact; if that fails too, refuse
            // further writes until the store is reopened (which cuts it off then).
            if self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(ConsentError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += line.len() as u64;
        self.seq += 1;
        self.head = hash;
        self.records.push(entry.event);
        Ok(self.records.events().last().expect("just pushed"))
    }
}

/// Whether the user may give `action` for campaign `c` now. The same rules as
/// [`super::evaluate`].
pub fn check_allowed(
    records: &ConsentRecords,
    c: &CampaignEntry,
    action: &ConsentAction,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let m = &c.manifest;
    let rule = &m.consent;
    if m.state != CampaignState::Active {
        return Err(format!("campaign {} is {}", m.id, m.state));
    }
    if let Some(d) = rule.deadline.filter(|d| now >= d.0) {
        return Err(format!("the consent deadline {d} has passed"));
    }
    let policy = rule.policy;
    match action {
        ConsentAction::Accept if policy.asks_user() => Ok(()),
        ConsentAction::Acknowledge if policy == ConsentPolicy::Acknowledge => Ok(()),
        ConsentAction::Decline if policy == ConsentPolicy::Required => Ok(()),
        ConsentAction::Decline if policy == ConsentPolicy::Acknowledge => {
            Err(format!("campaign {} only asks for acknowledgement; it cannot be declined (it can be postponed)", m.id))
        }
        ConsentAction::Postpone { until } if policy.asks_user() => {
            let used = records.postpones_used(&m.id);
            if used >= rule.max_postpones {
                return Err(if rule.max_postpones == 0 {
                    format!("campaign {} cannot be postponed", m.id)
                } else {
                    format!("the {} postponement(s) campaign {} allows are used up", rule.max_postpones, m.id)
                });
            }
            if until.0 <= now {
                return Err(format!("postponing until {until}, which is not in the future"));
            }
            if let Some(d) = rule.deadline.filter(|d| until.0 > d.0) {
                return Err(format!("postponing until {until} goes past the consent deadline {d}"));
            }
            Ok(())
        }
        ConsentAction::Administrator { .. } if policy == ConsentPolicy::Administrator => Ok(()),
        a => Err(format!(
            "campaign {} uses consent policy {:?}, which takes no {}",
            m.id,
            policy.as_str(),
            a.name()
        )),
    }
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

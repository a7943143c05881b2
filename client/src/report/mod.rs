//! Device status reports: the signed report format, the device's signing key, and the
//! outbox that queues reports on disk until the report endpoint has acknowledged them.
//!
//! A [`Report`] says what happened to one campaign on one device (result, reason,
//! inventory after, the consent log entries behind it). It is wrapped in the TUF envelope
//! shape, [`SignedReport`] = `{"signed": <report>, "signatures": [{"keyid", "sig"}]}`,
//! signed with ed25519 over the OLPC canonical JSON of `signed` by the device's
//! [`DeviceKey`]. `report_id` is the SHA-256 of the canonical JSON of every other field,
//! so a retried report carries the same id and the server stores it once.
//!
//! The wire format is described in `docs/formats.md` ("Device reports").

mod key;
mod outbox;

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::consent::LogEntry;
use crate::decide::InstalledApp;
use crate::tuf::canonical;
use crate::tuf::keys::KeySource;
use crate::tuf::schema::{Key, KeyId, Signature, Unrecognized};

pub use key::{public_key_from_pem, DeviceKey};
pub use outbox::{
    Outbox, OutboxEntry, OutboxSummary, Rejected, SendSummary, Stopped, MALFORMED_CODES,
};

/// The only report schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Default upper bound of one signed report's size in bytes (also the server's default
/// body limit).
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// The outcome a report states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportResult {
    /// The campaign's change was applied (final).
    Succeeded,
    /// The campaign's change failed (final); `reason` says why.
    Failed,
    /// The device's user declined (pending: a later revision may ask again).
    Declined,
    /// Downloaded and verified into staging, waiting for the apply window (pending).
    Staged,
    /// A new system is written and set to boot next; it counts as succeeded only after the
    /// reboot, once its health check passed (pending).
    InstalledPendingReboot,
}

impl ReportResult {
    /// Whether the result is final (`succeeded`, `failed`) rather than pending.
    pub fn is_final(self) -> bool {
        matches!(self, ReportResult::Succeeded | ReportResult::Failed)
    }

    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportResult::Succeeded => "succeeded",
            ReportResult::Failed => "failed",
            ReportResult::Declined => "declined",
            ReportResult::Staged => "staged",
            ReportResult::InstalledPendingReboot => "installed_pending_reboot",
        }
    }
}

impl std::fmt::Display for ReportResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ReportResult {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "succeeded" => Ok(ReportResult::Succeeded),
            "failed" => Ok(ReportResult::Failed),
            "declined" => Ok(ReportResult::Declined),
            "staged" => Ok(ReportResult::Staged),
            "installed_pending_reboot" => Ok(ReportResult::InstalledPendingReboot),
            other => Err(format!(
                "unknown report result {other:?} (expected succeeded, failed, declined, staged or installed_pending_reboot)"
            )),
        }
    }
}

/// One device's status report about one campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// 64 lowercase hex: SHA-256 of the canonical JSON of every other field.
    pub report_id: String,
    /// The device's id (as enrolled at the report endpoint).
    pub device_id: String,
    /// The campaign id.
    pub campaign: String,
    /// The campaign revision the report is about.
    pub revision: u64,
    /// The rollout wave the device computed for itself (`None`: no waves, or canary).
    pub wave: Option<u32>,
    /// What happened.
    pub result: ReportResult,
    /// Why (free text; empty when there is nothing to say).
    pub reason: String,
    /// The device's inventory after the attempt: application → installed version.
    pub inventory_after: BTreeMap<String, InstalledApp>,
    /// The consent log entries behind the decision (may be empty).
    pub consent_log: Vec<LogEntry>,
    /// When the device wrote the report (UTC, whole seconds).
    pub time: DateTime<Utc>,
    /// The new set was installed, failed its health check or a hook, and the previous set
    /// was restored (only with `result: failed`; absent when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
}

/// The fields of a new report; [`Report::new`] adds the schema version and the id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFields {
    /// The device's id.
    pub device_id: String,
    /// The campaign id.
    pub campaign: String,
    /// The campaign revision.
    pub revision: u64,
    /// The device's rollout wave, if any.
    pub wave: Option<u32>,
    /// What happened.
    pub result: ReportResult,
    /// Why.
    pub reason: String,
    /// Inventory after the attempt.
    pub inventory_after: BTreeMap<String, InstalledApp>,
    /// Consent log entries behind the decision.
    pub consent_log: Vec<LogEntry>,
    /// When (sub-second digits are dropped).
    pub time: DateTime<Utc>,
    /// Whether the previous set was restored after the install.
    pub rolled_back: bool,
}

/// Why a report cannot be parsed, verified, queued or sent.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The input is larger than the limit.
    #[error("report is {len} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is not a well-formed signed report.
    #[error("malformed report: {0}")]
    Malformed(String),
    /// The report is of a schema version this code does not know.
    #[error("unsupported report schema_version {found} (this version reads {SCHEMA_VERSION})")]
    SchemaVersion {
        /// The version found.
        found: u64,
    },
    /// `report_id` is not the hash of the report's other fields.
    #[error("report_id {found} does not match the report's content (expected {expected})")]
    IdMismatch {
        /// The id in the report.
        found: String,
        /// The id computed from the content.
        expected: String,
    },
    /// The report carries no signature at all.
    #[error("report is not signed")]
    Unsigned,
    /// No signature was made by the expected key.
    #[error("report has no signature by key {keyid} (signed by: {found})")]
    WrongKey {
        /// The expected key id.
        keyid: KeyId,
        /// The key ids that did sign, comma-separated.
        found: String,
    },
    /// A signature by the expected key does not verify.
    #[error("report signature by key {keyid} does not verify")]
    BadSignature {
        /// The key id.
        keyid: KeyId,
    },
    /// A device key file cannot be read, created or used.
    #[error("device key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A public key given for enrollment cannot be used.
    #[error("public key: {0}")]
    PublicKey(String),
    /// Reading or writing the outbox failed.
    #[error("outbox {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Report {
    /// A new report: fills in `schema_version`, drops sub-second digits from `time`, and
    /// computes `report_id` from the content (so re-creating the same report for a retry
    /// yields the same id).
    pub fn new(fields: ReportFields) -> Report {
        let ReportFields {
            device_id,
            campaign,
            revision,
            wave,
            result,
            reason,
            inventory_after,
            consent_log,
            time,
            rolled_back,
        } = fields;
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            report_id: String::new(),
            device_id,
            campaign,
            revision,
            wave,
            result,
            reason,
            inventory_after,
            consent_log,
            time: time.trunc_subsecs(0),
            rolled_back,
        };
        report.report_id = report.compute_id();
        report
    }

    /// SHA-256 (lowercase hex) of the canonical JSON of every field but `report_id`.
    pub fn compute_id(&self) -> String {
        let mut value = serde_json::to_value(self).expect("reports serialize");
        if let Value::Object(map) = &mut value {
            map.remove("report_id");
        }
        id_of_value(&value).expect("reports hold no floats")
    }

    /// Signs the report with the device key.
    pub fn sign(&self, key: &DeviceKey) -> SignedReport {
        let canonical = canonical::to_canonical(self).expect("reports hold no floats");
        let sig = key
            .private()
            .sign(&canonical)
            .expect("ed25519 signing cannot fail");
        SignedReport {
            signed: self.clone(),
            signatures: vec![Signature {
                keyid: key.keyid().clone(),
                sig: hex::encode(sig),
                unrecognized: Unrecognized::new(),
            }],
        }
    }
}

/// SHA-256 of the canonical form of a report object without its `report_id`.
fn id_of_value(value: &Value) -> Result<String, canonical::CanonicalError> {
    let bytes = canonical::canonicalize(value)?;
    Ok(hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &bytes,
    )))
}

/// A report in the TUF envelope: `{"signed": …, "signatures": […]}`.
///
/// Parse with [`SignedReport::from_slice`], check with [`SignedReport::verify`]. Parsing
/// requires `signed` to be in its one canonical form (re-serializing the parsed report
/// gives the same canonical bytes), so the bytes verified are exactly the report
/// interpreted and stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignedReport {
    /// The report.
    pub signed: Report,
    /// Signatures over the canonical JSON of `signed`.
    pub signatures: Vec<Signature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    signed: Value,
    signatures: Vec<Signature>,
}

impl SignedReport {
    /// Parses a signed report of at most `max_len` bytes: JSON envelope, known schema
    /// version, every field well-formed, `report_id` matching the content. Signatures are
    /// *not* checked here; call [`SignedReport::verify`].
    pub fn from_slice(bytes: &[u8], max_len: usize) -> Result<SignedReport, ReportError> {
        if bytes.len() > max_len {
            return Err(ReportError::TooLarge {
                len: bytes.len(),
                max: max_len,
            });
        }
        let env: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| ReportError::Malformed(format!("not a signed report envelope: {e}")))?;
        let Value::Object(fields) = &env.signed else {
            return Err(ReportError::Malformed("\"signed\" is not an object".into()));
        };
        match fields.get("schema_version").map(Value::as_u64) {
            None => {
                return Err(ReportError::Malformed(
                    "\"signed\" has no schema_version".into(),
                ))
            }
            Some(Some(v)) if v == u64::from(SCHEMA_VERSION) => {}
            Some(Some(v)) => return Err(ReportError::SchemaVersion { found: v }),
            Some(None) => {
                return Err(ReportError::Malformed(
                    "schema_version is not a non-negative integer".into(),
                ))
            }
        }
        let received = canonical::canonicalize(&env.signed)
            .map_err(|e| ReportError::Malformed(format!("\"signed\": {e}")))?;
        let report: Report = serde_json::from_value(env.signed)
            .map_err(|e| ReportError::Malformed(format!("\"signed\": {e}")))?;
        check_fields(&report)?;
        let ours = canonical::to_canonical(&report)
            .map_err(|e| ReportError::Malformed(format!("\"signed\": {e}")))?;
        if ours != received {
            return Err(ReportError::Malformed(
                "\"signed\" is not in canonical form (time must be YYYY-MM-DDTHH:MM:SSZ; \
                 wave must be present, null or an integer; absent optional fields must be left out)"
                    .into(),
            ));
        }
        let expected = report.compute_id();
        if report.report_id != expected {
            return Err(ReportError::IdMismatch {
                found: report.report_id,
                expected,
            });
        }
        Ok(SignedReport {
            signed: report,
            signatures: env.signatures,
        })
    }

    /// Checks that `key` signed the report (over the canonical bytes of `signed`) and
    /// returns the report.
    pub fn verify(&self, key: &Key) -> Result<&Report, ReportError> {
        if self.signatures.is_empty() {
            return Err(ReportError::Unsigned);
        }
        let keyid = key.key_id();
        let mut by_key = self
            .signatures
            .iter()
            .filter(|s| s.keyid == keyid)
            .peekable();
        if by_key.peek().is_none() {
            let found: Vec<&str> = self.signatures.iter().map(|s| s.keyid.short()).collect();
            return Err(ReportError::WrongKey {
                keyid,
                found: found.join(", "),
            });
        }
        let message = canonical::to_canonical(&self.signed)
            .map_err(|e| ReportError::Malformed(e.to_string()))?;
        if by_key.any(|s| key.verify_hex(&message, &s.sig).is_ok()) {
            Ok(&self.signed)
        } else {
            Err(ReportError::BadSignature { keyid })
        }
    }

    /// The report's id (also the outbox file name and the server's idempotency key).
    pub fn report_id(&self) -> &str {
        &self.signed.report_id
    }

    /// The JSON bytes to send.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("signed reports serialize")
    }
}

/// Length limits and shapes of report fields that serde cannot express.
fn check_fields(r: &Report) -> Result<(), ReportError> {
    let bad = |m: String| Err(ReportError::Malformed(m));
    if r.report_id.len() != 64
        || !r
            .report_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return bad(format!(
            "report_id {:?} is not 64 lowercase hex digits",
            r.report_id
        ));
    }
    for (name, value) in [("device_id", &r.device_id), ("campaign", &r.campaign)] {
        if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
            return bad(format!(
                "{name} must be 1 to 256 characters without control characters"
            ));
        }
    }
    // RFC 3339 has four-digit years only: a time outside them would be stored in a form
    // the report endpoint cannot read back (chrono writes `-0060-…` or `+10000-…`).
    if !(0..=9999).contains(&r.time.year()) {
        return bad(format!(
            "time {} is outside the years 0000 to 9999",
            r.time.to_rfc3339()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

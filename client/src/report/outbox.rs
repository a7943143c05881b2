//! The report outbox: a directory of signed reports waiting for the report endpoint.
//!
//! Each report is one file `<seq>-<report_id>.json`, written atomically: `seq` (a growing
//! number) keeps the order reports were queued in, which is the order they are sent in, so
//! the endpoint sees a device's "staged" before its "succeeded" even when both carry the
//! same second; the id makes queueing the same report twice a no-op, and the atomic write
//! means a crash never leaves half a report.
//!
//! A report is never lost: its file is deleted only after the endpoint answered 2xx, and
//! it is set aside (moved to `rejected/` with the server's answer in
//! `rejected/<id>.reason.txt`) only when the endpoint rejects **the report itself** as
//! malformed: HTTP 400 with the code `malformed`, `schema_version` or
//! `report_id_mismatch`, or 413 `too_large` (see `server/src/reports`). Every other answer
//! keeps it queued and stops the run, because it says the endpoint is not taking this
//! device's reports *now*: 401/403 (the device is not enrolled yet, the endpoint holds
//! another key, the signature does not verify: the operator may enroll the device or fix
//! its key later), 404/405 (wrong `report_url`, or reports not switched on yet), 408, 429,
//! 5xx, a network error, or any answer without one of those codes (a proxy's page).
//! [`SendSummary::stopped`] says why, for the caller to back off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{CONTENT_TYPE, RETRY_AFTER};

use super::{ReportError, SignedReport, MAX_REPORT_BYTES};
use crate::fetch::{HttpConfig, HttpTransport};
use crate::tuf::updater::write_atomic;

/// Most bytes read from a server's answer to a report.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// A directory queue of signed reports.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

/// The error codes of the report endpoint that reject a report itself as malformed (HTTP
/// 400): only these, and 413 `too_large`, set a report aside.
pub const MALFORMED_CODES: [&str; 3] = ["malformed", "schema_version", "report_id_mismatch"];

/// A report the endpoint rejected as malformed, moved to `rejected/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The report's id.
    pub report_id: String,
    /// The HTTP status (400 or 413).
    pub status: u16,
    /// The endpoint's error code (`malformed`, `schema_version`, `report_id_mismatch`,
    /// `too_large`).
    pub code: String,
    /// The server's message (its JSON `error`, else its body cut to 64 KiB).
    pub message: String,
}

/// Why a send run stopped with reports kept: the endpoint is not taking reports now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The report being sent when the run stopped (`None`: none could be tried).
    pub report_id: Option<String>,
    /// The HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// The endpoint's error code, when it gave one (`unknown_device`, `unavailable`, …).
    pub code: Option<String>,
    /// The server's message, or the network error.
    pub message: String,
    /// The server's `Retry-After`, in seconds, when it sent one.
    pub retry_after: Option<Duration>,
    /// One line for people, e.g. `device not enrolled at the report endpoint (HTTP 403
    /// unknown_device): kept, retried later`.
    pub reason: String,
}

/// What [`Outbox::send_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Reports the endpoint acknowledged (2xx) and that were removed from the queue.
    pub sent: usize,
    /// Reports still queued for the next run (the one that stopped the run and those after
    /// it).
    pub kept: usize,
    /// Reports the endpoint rejected as malformed, now in `rejected/`.
    pub rejected: Vec<Rejected>,
    /// Why the run stopped early, keeping reports: the endpoint is not taking reports now.
    /// A caller should back off (at least `retry_after`, when given) and send again later;
    /// `None` when every queued report was tried.
    pub stopped: Option<Stopped>,
    /// Problems met (one line each): the `stopped` reason, unreadable queue files (moved
    /// to `rejected/`), files that cannot be moved or removed.
    pub errors: Vec<String>,
}

impl SendSummary {
    /// Whether reports were kept because the endpoint is not taking them now: send again
    /// later, after backing off.
    pub fn retry(&self) -> bool {
        self.stopped.is_some()
    }
}

/// What the outbox holds, for `petrel status` ([`Outbox::summary`]); read from file names
/// and times only (nothing is parsed, moved or sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxSummary {
    /// The queued reports, in the order they will be sent (oldest first).
    pub queued: Vec<OutboxEntry>,
    /// The reports set aside in `rejected/`, oldest first.
    pub set_aside: Vec<OutboxEntry>,
}

/// One file of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The report's id (from the file name).
    pub report_id: String,
    /// When it was queued (queued reports) or set aside (the `.reason.txt`'s time); `None`
    /// if the file system cannot tell.
    pub at: Option<DateTime<Utc>>,
    /// Why it was set aside (the first line of its `.reason.txt`, at most 1 KiB); `None`
    /// for queued reports.
    pub reason: Option<String>,
    /// The report's file.
    pub path: PathBuf,
}

impl OutboxSummary {
    /// When the oldest queued report was queued.
    pub fn oldest_queued(&self) -> Option<DateTime<Utc>> {
        self.queued.iter().filter_map(|e| e.at).min()
    }

    /// When the oldest set-aside report was set aside.
    pub fn oldest_set_aside(&self) -> Option<DateTime<Utc>> {
        self.set_aside.iter().filter_map(|e| e.at).min()
    }
}

impl Outbox {
    /// Opens (creating if needed) the outbox directory and its `rejected/` directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Outbox, ReportError> {
        let dir = dir.into();
        let rejected = dir.join("rejected");
        std::fs::create_dir_all(&rejected).map_err(|e| io_err(&rejected, e))?;
        Ok(Outbox { dir })
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The queue files: `(seq, report_id, path)` for every `<seq>-<id>.json`.
    fn entries(&self) -> Result<Vec<(u64, String, PathBuf)>, ReportError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            // A name without a sequence number sorts first (and is checked like any other).
            let (seq, id) = match stem.split_once('-') {
                Some((n, id)) => match n.parse::<u64>() {
                    Ok(n) => (n, id),
                    Err(_) => (0, stem),
                },
                None => (0, stem),
            };
            out.push((seq, id.to_string(), entry.path()));
        }
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(out)
    }

    /// Queues a report (atomic write, fsync). Queueing a report already queued (same
    /// `report_id`) changes nothing and returns the same path.
    pub fn queue(&self, report: &SignedReport) -> Result<PathBuf, ReportError> {
        super::check_fields(&report.signed)?;
        let entries = self.entries()?;
        if let Some((_, _, path)) = entries.iter().find(|e| e.1 == report.report_id()) {
            return Ok(path.clone());
        }
        let seq = entries.iter().map(|e| e.0).max().unwrap_or(0) + 1;
        let path = self
            .dir
            .join(format!("{seq:016}-{}.json", report.report_id()));
        write_atomic(&path, &report.to_vec()).map_err(|e| io_err(&path, e))?;
        Ok(path)
    }

    /// The queued reports, in the order they were queued. Files that are not valid signed
    /// reports are moved to `rejected/` (with a `.reason.txt`) so they do not block the
    /// queue; an error is returned only if the directory cannot be read.
    pub fn pending(&self) -> Result<Vec<SignedReport>, ReportError> {
        Ok(self.scan()?.0.into_iter().map(|q| q.report).collect())
    }

    fn scan(&self) -> Result<(Vec<QueuedReport>, Vec<String>), ReportError> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (_, id, path) in self.entries()? {
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    SignedReport::from_slice(&b, MAX_REPORT_BYTES).map_err(|e| e.to_string())
                })
                .and_then(|r| {
                    if r.report_id() == id {
                        Ok(r)
                    } else {
                        Err(format!(
                            "file name does not match report_id {}",
                            r.report_id()
                        ))
                    }
                });
            match parsed {
                Ok(report) => out.push(QueuedReport { report, path }),
                Err(why) => {
                    problems.push(format!("{}: {why}; moved to rejected/", path.display()));
                    self.reject(&id, &path, &format!("unreadable queue file: {why}"))?;
                }
            }
        }
        Ok((out, problems))
    }

    /// Moves `path` to `rejected/<id>.json` and writes `rejected/<id>.reason.txt`.
    fn reject(&self, id: &str, path: &Path, why: &str) -> Result<(), ReportError> {
        let rejected = self.dir.join("rejected");
        let reason = rejected.join(format!("{id}.reason.txt"));
        write_atomic(&reason, why.as_bytes()).map_err(|e| io_err(&reason, e))?;
        let dest = rejected.join(format!("{id}.json"));
        std::fs::rename(path, &dest).map_err(|e| io_err(path, e))?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// POSTs every queued report to `url` (the full endpoint URL, e.g.
    /// `https://reports.example.com/v1/reports`) with a default HTTP configuration.
    /// Must not be called from inside a tokio runtime.
    pub fn send_all(&self, url: &str) -> SendSummary {
        match HttpTransport::new(HttpConfig::default()) {
            Ok(t) => self.send_all_with(&t, url),
            Err(e) => {
                let kept = self.pending().map(|p| p.len()).unwrap_or(0);
                let reason = format!("cannot set up HTTP: {e}: kept, retried later");
                SendSummary {
                    kept,
                    errors: vec![reason.clone()],
                    stopped: Some(Stopped {
                        report_id: None,
                        status: None,
                        code: None,
                        message: e.to_string(),
                        retry_after: None,
                        reason,
                    }),
                    ..SendSummary::default()
                }
            }
        }
    }

    /// [`Outbox::send_all`] through a given transport. Reports are sent oldest first; a
    /// report rejected as malformed is set aside and the run goes on; any other failure
    /// (see the module documentation) stops the run, keeps that report and the rest
    /// queued, and says why in [`SendSummary::stopped`].
    pub fn send_all_with(&self, transport: &HttpTransport, url: &str) -> SendSummary {
        let mut summary = SendSummary::default();
        let pending = match self.scan() {
            Ok((p, problems)) => {
                summary.errors.extend(problems);
                p
            }
            Err(e) => {
                summary.errors.push(e.to_string());
                return summary;
            }
        };
        let total = pending.len();
        for (i, QueuedReport { report, path }) in pending.iter().enumerate() {
            let id = report.report_id().to_string();
            let headers = [(CONTENT_TYPE, "application/json".to_string())];
            let answer = transport.request_once(
                http::Method::POST,
                url,
                &headers,
                Bytes::from(report.to_vec()),
                MAX_ANSWER_BYTES,
            );
            let stop = match answer {
                Err(e) => Stopped {
                    report_id: Some(id),
                    status: None,
                    code: None,
                    message: e.to_string(),
                    retry_after: None,
                    reason: format!("cannot reach the report endpoint ({e}): kept, retried later"),
                },
                Ok(resp) if resp.status.is_success() => {
                    if let Err(e) = std::fs::remove_file(path) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            summary.errors.push(format!(
                                "report {id} was acknowledged but {} cannot be removed: {e}",
                                path.display()
                            ));
                        }
                    }
                    sync_dir(&self.dir);
                    summary.sent += 1;
                    continue;
                }
                Ok(resp) => {
                    let status = resp.status.as_u16();
                    let (code, message) = error_answer(&resp.body);
                    if is_malformed(status, code.as_deref()) {
                        let code = code.unwrap_or_default();
                        let why = format!("HTTP {status} {code}: {message}");
                        if let Err(e) = self.reject(&id, path, &why) {
                            summary.errors.push(e.to_string());
                        }
                        summary.rejected.push(Rejected {
                            report_id: id,
                            status,
                            code,
                            message,
                        });
                        continue;
                    }
                    let retry_after = resp
                        .headers
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let reason = keep_reason(status, code.as_deref(), &message);
                    Stopped {
                        report_id: Some(id),
                        status: Some(status),
                        code,
                        message,
                        retry_after,
                        reason,
                    }
                }
            };
            summary.kept += total - i;
            summary.errors.push(stop.reason.clone());
            summary.stopped = Some(stop);
            return summary;
        }
        summary
    }

    /// What is queued and what was set aside (ids, times, reasons), cheaply: from the file
    /// names and their times; nothing is parsed, moved or sent.
    pub fn summary(&self) -> Result<OutboxSummary, ReportError> {
        let queued = self
            .entries()?
            .into_iter()
            .map(|(_, report_id, path)| OutboxEntry {
                report_id,
                at: modified(&path),
                reason: None,
                path,
            })
            .collect();
        let rejected = self.dir.join("rejected");
        let mut set_aside = Vec::new();
        let entries = std::fs::read_dir(&rejected).map_err(|e| io_err(&rejected, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&rejected, e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if id.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let reason_file = rejected.join(format!("{id}.reason.txt"));
            set_aside.push(OutboxEntry {
                report_id: id.to_string(),
                at: modified(&reason_file).or_else(|| modified(&entry.path())),
                reason: first_line(&reason_file),
                path: entry.path(),
            });
        }
        set_aside.sort_by(|a, b| (a.at, &a.report_id).cmp(&(b.at, &b.report_id)));
        Ok(OutboxSummary { queued, set_aside })
    }
}

/// Whether the endpoint rejected the report itself as malformed (set it aside).
fn is_malformed(status: u16, code: Option<&str>) -> bool {
    match (status, code) {
        (400, Some(c)) => MALFORMED_CODES.contains(&c),
        (413, Some(c)) => c == "too_large",
        _ => false,
    }
}

/// The endpoint's error code and message (`{"error": "…", "code": "…"}`), else no code and
/// the body as text.
fn error_answer(body: &[u8]) -> (Option<String>, String) {
    let text = String::from_utf8_lossy(body).trim().to_string();
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let code = v.get("code").and_then(|c| c.as_str()).map(str::to_string);
            let message = v
                .get("error")
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .unwrap_or(text);
            (code, message)
        }
        Err(_) => (None, text),
    }
}

/// The one line saying why a report was kept.
fn keep_reason(status: u16, code: Option<&str>, message: &str) -> String {
    let what = match (status, code) {
        (401 | 403, Some("unknown_device")) => "device not enrolled at the report endpoint",
        (403, Some("wrong_key")) => {
            "the report endpoint holds another key for this device (enroll its current key)"
        }
        (403, Some("bad_signature" | "unsigned")) => {
            "the report endpoint cannot verify the device's signature"
        }
        (401, _) => "the report endpoint asks for authentication",
        (403, _) => "the report endpoint refuses this device",
        (404 | 405, _) => {
            "no report endpoint at report_url (check the URL, and that the server takes reports)"
        }
        (408, _) => "the report endpoint timed out reading the report",
        (429, _) => "the report endpoint is busy",
        (500..=599, _) => "the report endpoint is unavailable",
        _ => "unexpected answer from the report endpoint",
    };
    let detail = match code {
        Some(c) => format!("HTTP {status} {c}"),
        None if message.is_empty() => format!("HTTP {status}"),
        None => format!("HTTP {status}: {}", cut(message, 200)),
    };
    format!("{what} ({detail}): kept, retried later")
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn modified(path: &Path) -> Option<DateTime<Utc>> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(DateTime::<Utc>::from(t))
}

/// The first line of a small text file (at most 1 KiB read).
fn first_line(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(1024)
        .read_to_end(&mut buf)
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    Some(text.lines().next().unwrap_or("").trim().to_string())
}

/// A queued report and its file.
struct QueuedReport {
    report: SignedReport,
    path: PathBuf,
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn io_err(path: &Path, source: std::io::Error) -> ReportError {
    ReportError::Io {
        path: path.display().to_string(),
        source,
    }
}

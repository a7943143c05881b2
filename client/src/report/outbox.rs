//! The report outbox: a directory of signed reports waiting for the report endpoint.
//!
//! Each report is one file `<seq>-<report_id>.json`, written atomically: `seq` (a growing
//! number) keeps the order reports were queued in, which is the order they are sent in, so
//! the endpoint sees a device's "staged" before its "succeeded" even when both carry the
//! same second; the id makes queueing the same report twice a no-op, and the atomic write
//! means a crash never leaves half a report. A file is deleted only
//! after the endpoint answered 2xx; a report the endpoint refuses (4xx other than 408/429)
//! is moved to `rejected/` with the server's answer next to it; anything else (network
//! error, timeout, 5xx, 408, 429) leaves it queued for the next run.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::CONTENT_TYPE;

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

/// A report the endpoint refused, moved to `rejected/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The report's id.
    pub report_id: String,
    /// The HTTP status.
    pub status: u16,
    /// The server's message (its body, cut to 64 KiB).
    pub message: String,
}

/// What [`Outbox::send_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Reports the endpoint acknowledged (2xx) and that were removed from the queue.
    pub sent: usize,
    /// Reports still queued for the next run (network error, 5xx, 408, 429, not tried).
    pub kept: usize,
    /// Reports the endpoint refused, now in `rejected/`.
    pub rejected: Vec<Rejected>,
    /// Problems met (one line each): why reports were kept, unreadable queue files.
    pub errors: Vec<String>,
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
                SendSummary {
                    kept,
                    errors: vec![format!("cannot set up HTTP: {e}")],
                    ..SendSummary::default()
                }
            }
        }
    }

    /// [`Outbox::send_all`] through a given transport. Reports are sent oldest first; a
    /// network error or a 5xx/408/429 stops the run (the server is unavailable) and keeps
    /// the rest queued.
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
            let resp = match answer {
                Ok(r) => r,
                Err(e) => {
                    summary
                        .errors
                        .push(format!("report {id}: {e}; kept for the next run"));
                    summary.kept += total - i;
                    return summary;
                }
            };
            let status = resp.status.as_u16();
            let message = String::from_utf8_lossy(&resp.body).trim().to_string();
            if resp.status.is_success() {
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
            } else if resp.status.is_client_error() && status != 408 && status != 429 {
                let why = format!("HTTP {status}: {message}");
                if let Err(e) = self.reject(&id, path, &why) {
                    summary.errors.push(e.to_string());
                }
                summary.rejected.push(Rejected {
                    report_id: id,
                    status,
                    message,
                });
            } else {
                summary.errors.push(format!(
                    "report {id}: HTTP {status}: {message}; kept for the next run"
                ));
                summary.kept += total - i;
                return summary;
            }
        }
        summary
    }
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

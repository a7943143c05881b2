//! Device reports: `POST /v1/reports` (signed reports into SQLite), and the views of them:
//! `GET /v1/reports/summary` (rollout status), `GET /v1/reports/fleet` (the fleet view as
//! JSON) and `GET /dashboard` (the same as an HTML page), enabled with `--reports-db`.
//!
//! One writer thread owns the read-write database connection and handles every report
//! in turn: parse, look up the device's enrolled key, verify, insert and commit
//! (`synchronous=FULL`). The HTTP answer is sent only after that commit returned, so a
//! 2xx always means the report is on disk; a locked database (busy timeout), a full disk
//! (or size cap) or a full write queue answers 503 with `Retry-After`, and the device
//! keeps the report in its outbox. Summaries are read on tokio's blocking pool through
//! short-lived read-only connections (at most [`SUMMARY_READERS`] at once, shared with
//! the fleet view and the dashboard); with WAL they never block the writer. See
//! `docs/server.md`, "Reports".

pub mod filter;
pub mod fleet;
pub mod published;
pub mod store;
pub mod summary;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, LOCATION,
    SET_COOKIE,
};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use petrel_client::report::{ReportError, SignedReport};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::body::ResponseBody;
pub use store::{Enrolled, EnrolledDevice, Inserted, ReportStore, StoreError, StoreOptions};
pub use summary::{summarize, CampaignStatus, Counts, ReportRow, RolloutSummary, WaveStatus};

/// Where devices POST reports.
pub const REPORTS_PATH: &str = "/v1/reports";
/// Where the rollout summary is read (GET).
pub const SUMMARY_PATH: &str = "/v1/reports/summary";
/// Where the fleet view is read as JSON (GET).
pub const FLEET_PATH: &str = "/v1/reports/fleet";
/// The dashboard page (GET; also answered with a trailing slash).
pub const DASHBOARD_PATH: &str = "/dashboard";
/// The cookie that holds the read token for the dashboard (`Path=/dashboard`).
pub const DASHBOARD_COOKIE: &str = "petrel_dashboard";
/// Default body limit of a report (1 MiB).
pub const DEFAULT_MAX_BODY: usize = petrel_client::report::MAX_REPORT_BYTES;
/// Summary reads running at once.
pub const SUMMARY_READERS: usize = 2;
/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 30;

/// Settings of the report endpoint.
#[derive(Clone)]
pub struct ReportsConfig {
    /// The SQLite database (created if missing).
    pub db: PathBuf,
    /// Largest accepted report body in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Time allowed to receive a report body once the headers arrived; slower gets 408.
    pub body_timeout: Duration,
    /// How long a write waits for another process's lock on the database before the
    /// report is answered 503.
    pub busy_timeout: Duration,
    /// Cap of the database size in bytes (reaching it answers 503 like a full disk).
    pub max_db_bytes: Option<u64>,
    /// Reports waiting for the writer; when full, further reports get 503.
    pub queue: usize,
    /// If set, `GET /v1/reports/summary` and `/v1/reports/fleet` require
    /// `Authorization: Bearer <token>`, and the dashboard the token (header, cookie, or
    /// once in `?token=`).
    pub read_token: Option<String>,
}

impl std::fmt::Debug for ReportsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportsConfig")
            .field("db", &self.db)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("body_timeout", &self.body_timeout)
            .field("busy_timeout", &self.busy_timeout)
            .field("max_db_bytes", &self.max_db_bytes)
            .field("queue", &self.queue)
            .field("read_token", &self.read_token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ReportsConfig {
    /// Defaults: 1 MiB bodies, 30 s body timeout, 5 s busy timeout, no size cap, a queue
    /// of 64 reports, summary readable without a token.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        ReportsConfig {
            db: db.into(),
            max_body_bytes: DEFAULT_MAX_BODY,
            body_timeout: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(5),
            max_db_bytes: None,
            queue: 64,
            read_token: None,
        }
    }

    fn store_options(&self) -> StoreOptions {
        StoreOptions {
            busy_timeout: self.busy_timeout,
            max_db_bytes: self.max_db_bytes,
        }
    }
}

/// The result of handling one report body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Verified and committed.
    Stored {
        /// The report's id.
        report_id: String,
    },
    /// Verified; a report with this id was already stored.
    Duplicate {
        /// The report's id.
        report_id: String,
    },
    /// Refused for good (4xx): the device should not send it again.
    Rejected {
        /// The HTTP status.
        status: StatusCode,
        /// A stable machine-readable code (`malformed`, `bad_signature`, …).
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Not stored now; try again later (503).
    Unavailable {
        /// Why.
        message: String,
    },
}

impl Outcome {
    fn rejected(status: StatusCode, code: &'static str, message: impl Into<String>) -> Outcome {
        Outcome::Rejected {
            status,
            code,
            message: message.into(),
        }
    }
}

/// Checks and stores one report body with `store` (what the writer thread runs).
pub fn process(store: &ReportStore, body: &[u8], max_len: usize) -> Outcome {
    let report = match SignedReport::from_slice(body, max_len) {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = match &e {
                ReportError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                ReportError::SchemaVersion { .. } => (StatusCode::BAD_REQUEST, "schema_version"),
                ReportError::IdMismatch { .. } => (StatusCode::BAD_REQUEST, "report_id_mismatch"),
                _ => (StatusCode::BAD_REQUEST, "malformed"),
            };
            return Outcome::rejected(status, code, e.to_string());
        }
    };
    let device = &report.signed.device_id;
    let key = match store.device_key(device) {
        Ok(Some(k)) => k,
        Ok(None) => {
            return Outcome::rejected(
                StatusCode::FORBIDDEN,
                "unknown_device",
                format!("device {device:?} is not enrolled at this report endpoint"),
            )
        }
        Err(e) => {
            return Outcome::Unavailable {
                message: e.to_string(),
            }
        }
    };
    if let Err(e) = report.verify(&key) {
        let code = match e {
            ReportError::Unsigned => "unsigned",
            ReportError::WrongKey { .. } => "wrong_key",
            _ => "bad_signature",
        };
        return Outcome::rejected(
            StatusCode::FORBIDDEN,
            code,
            format!("device {device:?}: {e}"),
        );
    }
    match store.insert(&report, body) {
        Ok(Inserted::Stored) => Outcome::Stored {
            report_id: report.signed.report_id.clone(),
        },
        Ok(Inserted::Duplicate) => Outcome::Duplicate {
            report_id: report.signed.report_id.clone(),
        },
        Err(e) => Outcome::Unavailable {
            message: format!("report not stored: {e}"),
        },
    }
}

struct Job {
    body: Bytes,
    reply: oneshot::Sender<Outcome>,
}

/// The running report endpoint: configuration, the writer thread's queue, and the
/// summary readers' slots.
pub struct Reports {
    config: ReportsConfig,
    jobs: mpsc::Sender<Job>,
    readers: Arc<Semaphore>,
    tree_root: Option<PathBuf>,
}

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reports")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Reports {
    /// Opens (creating and migrating if needed) the database and starts the writer
    /// thread. The thread ends when the `Reports` is dropped.
    pub fn start(config: ReportsConfig) -> Result<Reports, StoreError> {
        let store = ReportStore::open(&config.db, &config.store_options())?;
        let (jobs, mut rx) = mpsc::channel::<Job>(config.queue.max(1));
        let max = config.max_body_bytes;
        std::thread::Builder::new()
            .name("petrel-reports-writer".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let outcome = process(&store, &job.body, max);
                    let _ = job.reply.send(outcome);
                }
            })
            .map_err(|e| StoreError::Schema {
                path: config.db.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Reports {
            config,
            jobs,
            readers: Arc::new(Semaphore::new(SUMMARY_READERS)),
            tree_root: None,
        })
    }

    /// Reads published campaigns and assignments for the fleet view and the dashboard
    /// from the tree at `root` (the server's `--root`). Without it they answer 503.
    pub fn with_tree_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.tree_root = Some(root.into());
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ReportsConfig {
        &self.config
    }

    /// Answers `POST /v1/reports`.
    pub async fn post<B>(&self, headers: &HeaderMap, body: B) -> Response<ResponseBody>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let max = self.config.max_body_bytes;
        if !is_json(headers) {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "reports must be sent with Content-Type: application/json",
            );
        }
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return too_large(max);
        }
        let limited = http_body_util::Limited::new(body, max);
        let bytes = match tokio::time::timeout(self.config.body_timeout, limited.collect()).await {
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the report body did not arrive in time",
                )
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(max),
            Ok(Err(e)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("cannot read the request body: {e}"),
                )
            }
            Ok(Ok(c)) => c.to_bytes(),
        };
        let (reply, answer) = oneshot::channel();
        if let Err(e) = self.jobs.try_send(Job { body: bytes, reply }) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "too many reports waiting to be stored",
                mpsc::error::TrySendError::Closed(_) => "the report writer has stopped",
            };
            return unavailable(why);
        }
        let Ok(outcome) = answer.await else {
            return unavailable("the report writer has stopped");
        };
        match outcome {
            Outcome::Stored { report_id } => {
                tracing::info!(%report_id, "report stored");
                json_response(
                    StatusCode::CREATED,
                    &json!({"stored": true, "duplicate": false, "report_id": report_id}),
                )
            }
            Outcome::Duplicate { report_id } => json_response(
                StatusCode::OK,
                &json!({"stored": false, "duplicate": true, "report_id": report_id}),
            ),
            Outcome::Rejected {
                status,
                code,
                message,
            } => {
                tracing::warn!(status = status.as_u16(), code, "report rejected: {message}");
                error(status, code, message)
            }
            Outcome::Unavailable { message } => {
                tracing::warn!("report not stored: {message}");
                unavailable(&message)
            }
        }
    }

    /// Answers `GET /v1/reports/summary[?campaign=ID]`.
    pub async fn summary(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Response<ResponseBody> {
        if !self.bearer_ok(headers) {
            return unauthorized("the rollout summary");
        }
        let campaign = match query.map(campaign_param).transpose() {
            Ok(c) => c.flatten(),
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_query", e),
        };
        let Ok(_slot) = Arc::clone(&self.readers).acquire_owned().await else {
            return unavailable("shutting down");
        };
        let db = self.config.db.clone();
        let read = tokio::task::spawn_blocking(move || {
            ReportStore::open_read_only(&db)?.summary(campaign.as_deref())
        })
        .await;
        match read {
            Ok(Ok(summary)) => json_response(StatusCode::OK, &summary),
            Ok(Err(e)) => unavailable(&e.to_string()),
            Err(e) => unavailable(&format!("summary task failed: {e}")),
        }
    }
}

impl Reports {
    /// Whether the request may read: no read token is configured, or it carries
    /// `Authorization: Bearer <token>`.
    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.config.read_token else {
            return true;
        };
        headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|g| constant_time_eq(g.trim().as_bytes(), token.as_bytes()))
    }

    /// Whether the request carries the read token in the dashboard's cookie.
    fn cookie_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.config.read_token else {
            return true;
        };
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(name, _)| *name == DASHBOARD_COOKIE)
            .filter_map(|(_, value)| percent_decode(value).ok())
            .any(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
    }

    /// Reads the fleet view on the blocking pool (one of the [`SUMMARY_READERS`] slots).
    async fn read_fleet(&self) -> Result<fleet::FleetView, String> {
        let Some(root) = self.tree_root.clone() else {
            return Err("the fleet view needs the published tree, and none is configured".into());
        };
        let Ok(_slot) = Arc::clone(&self.readers).acquire_owned().await else {
            return Err("shutting down".into());
        };
        let db = self.config.db.clone();
        let now = chrono::Utc::now();
        tokio::task::spawn_blocking(move || published::load_fleet(&db, &root, now))
            .await
            .map_err(|e| format!("fleet task failed: {e}"))?
    }

    /// Answers `GET /v1/reports/fleet[?campaign=ID&state=S&wave=N]`.
    pub async fn fleet(&self, headers: &HeaderMap, query: Option<&str>) -> Response<ResponseBody> {
        if !self.bearer_ok(headers) {
            return unauthorized("the fleet view");
        }
        let filter = match filter::FleetQuery::parse(query) {
            Ok(f) => f,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_query", e),
        };
        let view = match self.read_fleet().await {
            Ok(v) => v,
            Err(e) => return unavailable(&e),
        };
        match filter.apply(view) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e @ filter::FilterError::UnknownCampaign(_)) => {
                error(StatusCode::NOT_FOUND, "unknown_campaign", e.to_string())
            }
            Err(e) => error(StatusCode::BAD_REQUEST, "bad_query", e.to_string()),
        }
    }

    /// Answers `GET /dashboard` (`path` is the request's path: with or without the
    /// trailing slash). With a read token configured, a correct `?token=` is answered
    /// 303 to the same address without it, setting the [`DASHBOARD_COOKIE`]; the page
    /// itself needs the cookie or `Authorization: Bearer <token>`.
    pub async fn dashboard(
        &self,
        headers: &HeaderMap,
        path: &str,
        query: Option<&str>,
    ) -> Response<ResponseBody> {
        let pairs = match filter::params(query.unwrap_or("")) {
            Ok(p) => p,
            Err(e) => return html_error(StatusCode::BAD_REQUEST, "Bad query", &e),
        };
        if let Some((_, given)) = pairs.iter().find(|(k, _)| k == "token") {
            let correct = self
                .config
                .read_token
                .as_ref()
                .is_none_or(|t| constant_time_eq(given.as_bytes(), t.as_bytes()));
            if !correct {
                return html_unauthorized("The token in this link is not the reports read token.");
            }
            let rest: Vec<&str> = query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    percent_decode(p.split_once('=').map_or(p, |(k, _)| k))
                        .ok()
                        .as_deref()
                        != Some("token")
                })
                .collect();
            let location = if rest.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", rest.join("&"))
            };
            let mut resp = html_response(
                StatusCode::SEE_OTHER,
                "<!DOCTYPE html><title>Petrel fleet dashboard</title><p>Signed in; \
                 <a href=\"/dashboard\">open the dashboard</a>.</p>\n"
                    .to_string(),
            );
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(LOCATION, v);
            } else {
                h.insert(LOCATION, HeaderValue::from_static(DASHBOARD_PATH));
            }
            if let Some(token) = &self.config.read_token {
                let cookie = format!(
                    "{DASHBOARD_COOKIE}={}; Path={DASHBOARD_PATH}; HttpOnly; SameSite=Strict",
                    percent_encode(token)
                );
                h.insert(
                    SET_COOKIE,
                    HeaderValue::from_str(&cookie).expect("encoded cookie"),
                );
            }
            return resp;
        }
        if !(self.bearer_ok(headers) || self.cookie_ok(headers)) {
            return html_unauthorized(
                "The dashboard needs the reports read token: open it once as \
                 /dashboard?token=TOKEN (the server then keeps it in a cookie for this \
                 browser session), or send Authorization: Bearer TOKEN.",
            );
        }
        let search = pairs
            .iter()
            .find(|(k, _)| k == "q")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let filter = match filter::FleetQuery::from_params(&pairs, &["q"]) {
            Ok(f) => f,
            Err(e) => return html_error(StatusCode::BAD_REQUEST, "Bad query", &e),
        };
        let view = match self.read_fleet().await {
            Ok(v) => v,
            Err(e) => {
                let mut resp = html_error(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", &e);
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(RETRY_AFTER_SECS),
                );
                return resp;
            }
        };
        match filter.apply(view) {
            Ok(v) => html_response(StatusCode::OK, crate::dashboard::render(&v, &search)),
            Err(e @ filter::FilterError::UnknownCampaign(_)) => {
                html_error(StatusCode::NOT_FOUND, "Unknown campaign", &e.to_string())
            }
            Err(e) => html_error(StatusCode::BAD_REQUEST, "Bad query", &e.to_string()),
        }
    }
}

/// 401 for a read without the token (`what` names the resource).
fn unauthorized(what: &str) -> Response<ResponseBody> {
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("{what} needs Authorization: Bearer <reports read token>"),
    );
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"petrel-reports\""),
    );
    resp
}

/// An HTML answer with the dashboard's headers: no caching, no sniffing, no framing,
/// no referrer, and the dashboard's Content-Security-Policy.
fn html_response(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::bytes(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::dashboard::content_security_policy()),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// A small HTML error page.
fn html_error(status: StatusCode, title: &str, message: &str) -> Response<ResponseBody> {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t} — Petrel fleet dashboard</title></head>\n<body><h1>{t}</h1>\
         <p id=\"error\">{m}</p></body></html>\n",
        t = crate::dashboard::escape(title),
        m = crate::dashboard::escape(message)
    );
    html_response(status, body)
}

fn html_unauthorized(message: &str) -> Response<ResponseBody> {
    let mut resp = html_error(StatusCode::UNAUTHORIZED, "Read token needed", message);
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"petrel-reports\""),
    );
    resp
}

/// Percent-encodes everything but unreserved characters (RFC 3986), so any token is a
/// valid cookie value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request target with the value of every `token` query parameter replaced by
/// `REDACTED`, for logs.
pub fn redact_target(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|p| {
            let key = p.split_once('=').map_or(p, |(k, _)| k);
            let decoded = percent_decode(key).unwrap_or_default();
            if decoded.eq_ignore_ascii_case("token") {
                format!("{key}=REDACTED")
            } else {
                p.to_string()
            }
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The `campaign` parameter of a summary query string (`a=1&campaign=ID`), percent-decoded
/// as `GET /v1/reports/summary` reads it. An entry point for the fuzz targets.
#[doc(hidden)]
pub fn summary_campaign_param(query: &str) -> Result<Option<String>, String> {
    campaign_param(query)
}

/// The `campaign` query parameter, percent-decoded.
fn campaign_param(query: &str) -> Result<Option<String>, String> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "campaign" {
            return percent_decode(v).map(Some);
        }
    }
    Ok(None)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Exactly two hex digits: `u8::from_str_radix` alone also takes a sign
                // (`%+1`).
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
                    .ok_or_else(|| format!("bad percent-escape in query {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("query {s:?} is not UTF-8"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec(value).expect("JSON answers serialize");
    body.push(b'\n');
    let mut resp = Response::new(ResponseBody::bytes(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<ResponseBody> {
    json_response(status, &json!({"error": message.into(), "code": code}))
}

fn too_large(max: usize) -> Response<ResponseBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("report body is larger than the limit of {max} bytes"),
    )
}

fn unavailable(message: &str) -> Response<ResponseBody> {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER_SECS),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_targets_never_show_a_token() {
        assert_eq!(
            redact_target("/dashboard?q=a&token=s3cret&x=1"),
            "/dashboard?q=a&token=REDACTED&x=1"
        );
        assert_eq!(
            redact_target("http://other.example/dashboard?%74oken=s3cret"),
            "http://other.example/dashboard?%74oken=REDACTED"
        );
        assert_eq!(
            redact_target("/dashboard?TOKEN=s3cret"),
            "/dashboard?TOKEN=REDACTED"
        );
        assert_eq!(redact_target("/dashboard"), "/dashboard");
    }

    #[test]
    fn a_cookie_value_holds_any_token() {
        let token = "a b;c=d,\"e\"+%\u{e9}";
        let encoded = percent_encode(token);
        assert!(HeaderValue::from_str(&encoded).is_ok());
        assert!(encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
        assert_eq!(percent_decode(&encoded).unwrap(), token);
    }

    #[test]
    fn summary_token_comparison_needs_exact_match() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn campaign_query_is_percent_decoded() {
        assert_eq!(
            campaign_param("x=1&campaign=player%2D2.1").unwrap(),
            Some("player-2.1".into())
        );
        assert_eq!(campaign_param("x=1").unwrap(), None);
        assert!(campaign_param("campaign=%zz").is_err());
    }

    #[test]
    fn a_percent_escape_decodes_only_from_two_hex_digits() {
        for bad in ["%+1", "%+f", "%-1", "% 1", "%1", "%", "%g0", "%\u{e9}"] {
            assert!(
                campaign_param(&format!("campaign=a{bad}")).is_err(),
                "{bad:?} was decoded"
            );
        }
        assert_eq!(
            campaign_param("campaign=%41%7a%2B+").unwrap(),
            Some("Az+ ".into())
        );
    }
}

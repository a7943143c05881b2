//! Request routing: decides which handler answers a request, and wraps access logging.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL};
use http::{Method, Request, Response, StatusCode};

use crate::body::{AccessRecord, ResponseBody};
use crate::config::ServerConfig;
use crate::reports::{Reports, DASHBOARD_PATH, FLEET_PATH, REPORTS_PATH, SUMMARY_PATH};
use crate::static_files::{error_response, StaticFiles, CACHE_REVALIDATE};

/// Methods the static tree answers; sent in `Allow` with every 405.
pub const ALLOWED_METHODS: &str = "GET, HEAD";

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// GET or HEAD of a file in the static tree.
    StaticFile,
    /// `POST /v1/reports`: a device report (405 when reports are not enabled).
    Reports,
    /// Any other method: 405 with `Allow: GET, HEAD`.
    MethodNotAllowed,
}

/// Pick the route for a request. `GET /v1/reports/summary`, `GET /v1/reports/fleet` and
/// `GET /dashboard` are recognised inside [`App::handle`], and only when reports are
/// enabled, so static serving pays nothing for them otherwise.
pub fn route(method: &Method, path: &str) -> Route {
    match *method {
        Method::GET | Method::HEAD => Route::StaticFile,
        Method::POST if path == REPORTS_PATH => Route::Reports,
        _ => Route::MethodNotAllowed,
    }
}

/// The request handler shared by all connections.
#[derive(Debug)]
pub struct App {
    static_files: StaticFiles,
    access_log: bool,
    reports: Option<Reports>,
}

impl App {
    /// A handler serving `static_files`, optionally logging every request.
    pub fn new(static_files: StaticFiles, access_log: bool) -> Self {
        App {
            static_files,
            access_log,
            reports: None,
        }
    }

    /// A handler for `config`: static files, plus the report endpoint when
    /// `config.reports` is set (its database is opened here, so problems show at start).
    pub fn from_config(static_files: StaticFiles, config: &ServerConfig) -> std::io::Result<Self> {
        let mut app = App::new(static_files, config.access_log);
        if let Some(rc) = &config.reports {
            let reports = Reports::start(rc.clone()).map_err(std::io::Error::other)?;
            app.reports = Some(reports.with_tree_root(&config.root));
        }
        Ok(app)
    }

    /// The report endpoint, if enabled.
    pub fn reports(&self) -> Option<&Reports> {
        self.reports.as_ref()
    }

    /// The static-file handler.
    pub fn static_files(&self) -> &StaticFiles {
        &self.static_files
    }

    /// Answer one request. Never fails: every problem becomes an HTTP status.
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<ResponseBody>, Infallible>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let method = parts.method.clone();
        let path = parts.uri.path();
        let response = if names_another_host(&parts.uri, &parts.headers) {
            // The target may carry a dashboard `?token=`: never log it.
            tracing::debug!(
                uri = %crate::reports::redact_target(&parts.uri.to_string()),
                "refused: absolute-form target for another host"
            );
            error_response(StatusCode::BAD_REQUEST)
        } else {
            self.route(&method, path, &parts, body).await
        };
        if !self.access_log {
            return Ok(response);
        }
        let range = parts
            .headers
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok());
        let record = AccessRecord::new(method, path.to_owned(), response.status(), started)
            .with_range(range);
        Ok(response.map(|body| body.with_access_log(record)))
    }

    async fn route<B>(
        &self,
        method: &Method,
        path: &str,
        parts: &http::request::Parts,
        body: B,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match route(method, path) {
            Route::StaticFile => match &self.reports {
                Some(reports) if method == Method::GET => match path {
                    SUMMARY_PATH => reports.summary(&parts.headers, parts.uri.query()).await,
                    FLEET_PATH => reports.fleet(&parts.headers, parts.uri.query()).await,
                    DASHBOARD_PATH | "/dashboard/" => {
                        reports
                            .dashboard(&parts.headers, path, parts.uri.query())
                            .await
                    }
                    _ => self.static_files.serve(method, path, &parts.headers).await,
                },
                _ => self.static_files.serve(method, path, &parts.headers).await,
            },
            Route::Reports => match &self.reports {
                Some(reports) => reports.post(&parts.headers, body).await,
                None => method_not_allowed(),
            },
            Route::MethodNotAllowed => method_not_allowed(),
        }
    }
}

/// True for an absolute-form request target (`GET http://host/path`) whose host is not
/// the one in the `Host` header. The server has no list of its own names, so the
/// `Host` header (which the client wrote for this connection) is the reference; a
/// target naming any other host is a proxy request, which this origin server does not
/// serve (RFC 9112 §3.2.2).
fn names_another_host(uri: &http::Uri, headers: &http::HeaderMap) -> bool {
    let Some(authority) = uri.authority() else {
        return false;
    };
    if uri
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
    {
        return true;
    }
    let host_header = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    match host_header {
        Some(h) => {
            !h.host().eq_ignore_ascii_case(authority.host())
                || h.port_u16().unwrap_or(80) != authority.port_u16().unwrap_or(80)
        }
        // No (usable) Host header: the target alone names the host; nothing to compare.
        None => false,
    }
}

/// 405 with the `Allow` header listing [`ALLOWED_METHODS`].
pub fn method_not_allowed() -> Response<ResponseBody> {
    let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED);
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_REVALIDATE));
    resp
}

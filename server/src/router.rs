//! Request routing: decides which handler answers a request, and wraps access logging.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL};
use http::{Method, Request, Response, StatusCode};

use crate::body::{AccessRecord, ResponseBody};
use crate::static_files::{error_response, StaticFiles, CACHE_REVALIDATE};

/// Methods the static tree answers; sent in `Allow` with every 405.
pub const ALLOWED_METHODS: &str = "GET, HEAD";

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// GET or HEAD of a file in the static tree.
    StaticFile,
    /// Any other method: 405 with `Allow: GET, HEAD`.
    MethodNotAllowed,
}

/// Pick the route for a request.
///
/// Hook for device reports (DESIGN.md, "Reports"): `POST /v1/reports` will get its own
/// `Route::Reports` variant, matched here *before* the catch-all 405 arm, with its
/// handler added to [`App::handle`]. It is not implemented yet, so such a request
/// currently gets 405 like every other non-GET/HEAD request.
pub fn route(method: &Method, _path: &str) -> Route {
    match *method {
        Method::GET | Method::HEAD => Route::StaticFile,
        // Future: `Method::POST if _path == "/v1/reports" => Route::Reports,`
        _ => Route::MethodNotAllowed,
    }
}

/// The request handler shared by all connections.
#[derive(Debug)]
pub struct App {
    static_files: StaticFiles,
    access_log: bool,
}

impl App {
    /// A handler serving `static_files`, optionally logging every request.
    pub fn new(static_files: StaticFiles, access_log: bool) -> Self {
        App {
            static_files,
            access_log,
        }
    }

    /// The static-file handler.
    pub fn static_files(&self) -> &StaticFiles {
        &self.static_files
    }

    /// Answer one request. Never fails: every problem becomes an HTTP status.
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path();
        let response = match route(&method, path) {
            Route::StaticFile => self.static_files.serve(&method, path, req.headers()).await,
            Route::MethodNotAllowed => method_not_allowed(),
        };
        if !self.access_log {
            return Ok(response);
        }
        let record = AccessRecord::new(method, path.to_owned(), response.status(), started);
        Ok(response.map(|body| body.with_access_log(record)))
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

//! GET/HEAD of files in the Petrel tree: safe open, validators, ranges, cache headers.
//!
//! Each request opens its file exactly once (after resolving symlinks and checking the
//! result is still inside the tree) and serves everything — length, validators and
//! bytes — from that one handle. `petrel-repo publish` replaces files by atomic rename,
//! so a response always carries one consistent version of a file.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE, X_CONTENT_TYPE_OPTIONS,
};
use http::{Method, Response, StatusCode};

use crate::body::{read_exact_at, ResponseBody, StreamBudget, MIN_CHUNK_SIZE};
use crate::conditional::{
    evaluate_preconditions, if_range_allows_partial, Precondition, Validators,
};
use crate::path::{parse_request_path, FileKind, PathError};
use crate::range::{resolve_range, RangeDecision};
use crate::tree::{OpenError, TreeRoot};

/// Files up to this size are read whole into memory in one go; larger files stream.
pub const SMALL_FILE_MAX: u64 = 64 * 1024;

/// `Cache-Control` for names whose bytes never change (consistent-snapshot names).
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` for names whose content changes (`timestamp.json`, `root.json`, …)
/// and for every error response (a missing `N+1.root.json` must not be cached).
pub const CACHE_REVALIDATE: &str = "no-cache";

/// Serves the files of one tree.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    root: Arc<TreeRoot>,
    budget: Option<StreamBudget>,
}

/// A file opened for one request.
struct OpenedFile {
    file: File,
    len: u64,
    validators: Validators,
    /// The whole content, when it was small enough to read eagerly.
    small: Option<Bytes>,
}

impl StaticFiles {
    /// Serve the tree at `root`, which must be an existing directory. The root is
    /// resolved once here; every served file must resolve to a path beneath it.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        Ok(StaticFiles {
            root: Arc::new(TreeRoot::open(root.as_ref())?),
            budget: None,
        })
    }

    /// Pay every file buffer larger than [`crate::body::MIN_CHUNK_SIZE`] from a budget
    /// of `bytes` shared by all responses (see [`StreamBudget`]).
    pub fn with_stream_budget(mut self, bytes: usize) -> Self {
        self.budget = Some(StreamBudget::new(bytes));
        self
    }

    /// The canonical tree root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Answer a GET or HEAD for the (raw, still percent-encoded) request `path`.
    pub async fn serve(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Response<ResponseBody> {
        let tree_path = match parse_request_path(path) {
            Ok(p) => p,
            Err(PathError::Invalid(why)) => {
                tracing::debug!(path, why, "refused request path");
                return error_response(StatusCode::BAD_REQUEST);
            }
            Err(PathError::NotServed) => return error_response(StatusCode::NOT_FOUND),
        };
        let is_head = method == Method::HEAD;
        // Eagerly read small files unless the request is likely to end in 304.
        let read_small = !is_head
            && !headers.contains_key(http::header::IF_NONE_MATCH)
            && !headers.contains_key(http::header::IF_MODIFIED_SINCE);

        // Opening, `stat` and reading a small file run inline on the runtime thread:
        // they are page-cache hits taking microseconds, and handing each request to the
        // blocking pool cost ~40% of small-file throughput (the same trade nginx makes).
        // Large files are streamed with reads on the blocking pool (see `body.rs`).
        let opened = match open_and_read(
            &self.root,
            tree_path.relative(),
            read_small,
            self.budget.as_ref(),
        ) {
            Ok(f) => f,
            Err(OpenError::NotFound) => return error_response(StatusCode::NOT_FOUND),
            Err(OpenError::Forbidden) => return error_response(StatusCode::FORBIDDEN),
            Err(OpenError::Internal(e)) => {
                tracing::warn!(path, error = %e, "cannot open file");
                return error_response(StatusCode::INTERNAL_SERVER_ERROR);
            }
        };

        let mut response = Response::new(ResponseBody::empty());
        let h = response.headers_mut();
        h.reserve(10);
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static(cache_control_for(tree_path.kind())),
        );
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        insert_validators(h, &opened.validators);

        match evaluate_preconditions(headers, &opened.validators) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                return response;
            }
            Precondition::Failed => {
                *response.status_mut() = StatusCode::PRECONDITION_FAILED;
                return response;
            }
        }

        let len = opened.len;
        let range_header = headers.get(RANGE).and_then(|v| v.to_str().ok());
        let decision =
            if range_header.is_some() && if_range_allows_partial(headers, &opened.validators) {
                resolve_range(range_header, len)
            } else {
                RangeDecision::Full
            };

        let h = response.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(tree_path.content_type()),
        );
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        let (status, start, count) = match decision {
            RangeDecision::Full => (StatusCode::OK, 0, len),
            RangeDecision::Partial { start, end } => {
                h.insert(
                    CONTENT_RANGE,
                    header_value(format!("bytes {start}-{end}/{len}")),
                );
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeDecision::Unsatisfiable => {
                h.insert(CONTENT_RANGE, header_value(format!("bytes */{len}")));
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                return response;
            }
        };
        h.insert(CONTENT_LENGTH, HeaderValue::from(count));
        *response.status_mut() = status;
        if !is_head && count > 0 {
            *response.body_mut() = match opened.small {
                Some(all) => {
                    ResponseBody::bytes(all.slice(start as usize..(start + count) as usize))
                }
                None => ResponseBody::file_range(
                    Arc::new(opened.file),
                    start,
                    count,
                    self.budget.clone(),
                ),
            };
        }
        response
    }
}

/// ETag and Last-Modified.
fn insert_validators(h: &mut HeaderMap, v: &Validators) {
    h.insert(ETAG, header_value(v.etag.clone()));
    if let Some(lm) = v.last_modified_header() {
        h.insert(LAST_MODIFIED, header_value(lm));
    }
}

/// A header value from text this module generated (always visible ASCII).
fn header_value(s: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(s))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A small plain-text error response that caches must revalidate.
pub fn error_response(status: StatusCode) -> Response<ResponseBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(ResponseBody::bytes(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_REVALIDATE));
    resp
}

/// The `Cache-Control` value for a file kind.
pub fn cache_control_for(kind: FileKind) -> &'static str {
    if kind.is_immutable() {
        CACHE_IMMUTABLE
    } else {
        CACHE_REVALIDATE
    }
}

/// Open `relative` once and take everything from the handle: length, validators and,
/// for small files when wanted, the whole content. A small file larger than
/// [`MIN_CHUNK_SIZE`] is read whole only if the budget has room for it; otherwise it is
/// streamed like a large one.
fn open_and_read(
    root: &TreeRoot,
    relative: &str,
    read_small: bool,
    budget: Option<&StreamBudget>,
) -> Result<OpenedFile, OpenError> {
    let (file, meta) = root.open_file(relative)?;
    let len = meta.len();
    let validators = Validators::new(len, meta.modified().ok(), meta.ino());
    let small = if read_small && len <= SMALL_FILE_MAX {
        let n = len as usize;
        match budget {
            Some(b) if n > MIN_CHUNK_SIZE => b.try_take(n).map(Some),
            _ => Some(None),
        }
        .map(|permit| read_exact_at(&file, 0, n, permit).map_err(OpenError::Internal))
        .transpose()?
    } else {
        None
    };
    Ok(OpenedFile {
        file,
        len,
        validators,
        small,
    })
}

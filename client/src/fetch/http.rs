//! HTTP(S) transport: hyper 1 on a current-thread tokio runtime owned by the transport.
//!
//! HTTPS goes through rustls with the `ring` provider, trusting the operating system's
//! roots and optionally an extra CA bundle (PEM). Bodies are streamed frame by frame into the
//! caller's sink with the size limit enforced as they arrive, and must keep up a minimum
//! average speed (slow retrieval). Transient failures (connect errors, timeouts,
//! 408/429/5xx) are retried with exponential backoff, but only while no byte has reached the
//! sink; "not found" and anything the caller rejects are never retried.
//!
//! A fetch from an offset sends `Range: bytes=<offset>-` and accepts 206 only with a
//! `Content-Range` starting at that offset; a 200 means the server ignored the range and is
//! sending the whole resource, and 416 means the offset is past its end.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, LOCATION, RANGE, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tracing::{debug, warn};

use super::{error_chain, FetchError, PlainSink, RangeSink, Ranged, StartsOnFirstWrite, Transport};

/// Settings of the HTTP(S) transport.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Deadline for establishing a TCP connection (default 10 s).
    pub connect_timeout: Duration,
    /// Deadline for the response headers and then for each body chunk (default 30 s).
    pub read_timeout: Duration,
    /// Slowest accepted average body speed, in bytes per second (default 1024; 0 turns the
    /// check off). Once `read_timeout` has passed since the response headers arrived, the
    /// body must have arrived at this average rate, which is measured from the headers on.
    /// This is the defence against slow retrieval: a server that drips bytes just often
    /// enough to beat `read_timeout` is cut off instead of holding the update indefinitely.
    pub min_average_speed: u64,
    /// How many times a transient failure is retried (default 3, so up to 4 attempts).
    pub retries: u32,
    /// Delay before the first retry; doubled for each further retry (default 250 ms).
    pub initial_backoff: Duration,
    /// Upper bound of the retry delay (default 8 s).
    pub max_backoff: Duration,
    /// Whether to trust the operating system's root certificates (default true).
    pub native_roots: bool,
    /// An extra PEM file of CA certificates to trust (e.g. a private fleet CA).
    pub extra_ca_pem: Option<PathBuf>,
    /// How many redirects to follow (default 5). An `https` → `http` redirect is refused.
    pub max_redirects: u32,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            min_average_speed: 1024,
            retries: 3,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            native_roots: true,
            extra_ca_pem: None,
            max_redirects: 5,
            user_agent: concat!("petrel/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Why the HTTP transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// The tokio runtime could not be created.
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The extra CA file cannot be read or holds no usable certificate.
    #[error("extra CA file {path}: {reason}")]
    ExtraCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Both pools carry in-memory bodies: empty for the fetches, the report for a POST.
type PlainClient = Client<HttpConnector, Full<Bytes>>;
type TlsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A blocking HTTP(S) transport. It owns a current-thread tokio runtime, so it must not be
/// called from inside another tokio runtime (use `spawn_blocking` there).
///
/// `http://` and `https://` URLs use separate connection pools. The TLS client (and with it
/// the operating system's root certificates, whose loading reads and parses every file in
/// the certificate directory: about 2 ms and a few hundred KiB) is set up on the first
/// `https://` request, so plain-HTTP clients never pay for it; with `extra_ca_pem` it is set
/// up in [`HttpTransport::new`] so that a bad CA file is reported there.
pub struct HttpTransport {
    runtime: tokio::runtime::Runtime,
    connector: HttpConnector,
    http: PlainClient,
    https: OnceLock<Result<TlsClient, String>>,
    config: HttpConfig,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn tls_config(config: &HttpConfig) -> Result<rustls::ClientConfig, HttpSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    if config.native_roots {
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            debug!("skipping a native root certificate: {e}");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        debug!("trusting {added} native root certificates ({ignored} unusable)");
    }
    if let Some(path) = &config.extra_ca_pem {
        let extra = |reason: String| HttpSetupError::ExtraCa {
            path: path.clone(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| extra(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| extra(e.to_string()))?;
        if certs.is_empty() {
            return Err(extra("no CERTIFICATE block found".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| extra(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The connection-pool settings shared by the plain and the TLS client.
fn client_builder() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2);
    builder
}

fn tls_client(config: &HttpConfig, connector: HttpConnector) -> Result<TlsClient, HttpSetupError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(config)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(client_builder().build(https))
}

impl HttpTransport {
    /// Creates the runtime and the plain-HTTP connection pool; the TLS configuration is
    /// made on the first `https://` request (at once when `extra_ca_pem` is set).
    pub fn new(config: HttpConfig) -> Result<Self, HttpSetupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(HttpSetupError::Runtime)?;
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let http = client_builder().build(connector.clone());
        let https = OnceLock::new();
        if config.extra_ca_pem.is_some() {
            let _ = https.set(Ok(tls_client(&config, connector.clone())?));
        }
        Ok(HttpTransport {
            runtime,
            connector,
            http,
            https,
            config,
        })
    }

    /// The TLS client, set up on first use.
    fn tls(&self) -> Result<&TlsClient, String> {
        self.https
            .get_or_init(|| {
                tls_client(&self.config, self.connector.clone()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The configuration in use.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// When the body, `received` bytes into it, falls below `min_average_speed`: after a
    /// grace of `read_timeout`, `received` bytes buy `received / min_average_speed` seconds.
    /// `None` when the check is off.
    fn speed_deadline(
        &self,
        body_start: tokio::time::Instant,
        received: u64,
    ) -> Option<tokio::time::Instant> {
        let speed = self.config.min_average_speed;
        if speed == 0 {
            return None;
        }
        let nanos = u128::from(received) * 1_000_000_000 / u128::from(speed);
        let earned = Duration::from_nanos(u64::try_from(nanos).ok()?);
        body_start.checked_add(self.config.read_timeout.checked_add(earned)?)
    }

    /// One request (following redirects) for `url` from `offset`; `written` counts the bytes
    /// that reached the sink, so that the caller retries only while it is 0.
    async fn fetch_once(
        &self,
        url: &str,
        offset: u64,
        max_len: u64,
        sink: &mut dyn RangeSink,
        written: &mut u64,
    ) -> Result<Ranged, FetchError> {
        let mut current = url.to_string();
        let mut redirects = 0;
        loop {
            let uri: Uri = current.parse().map_err(|e| FetchError::BadUrl {
                url: current.clone(),
                reason: format!("invalid URL: {e}"),
            })?;
            let tls = match uri.scheme_str() {
                Some("http") => false,
                Some("https") => true,
                _ => {
                    return Err(FetchError::BadUrl {
                        url: current,
                        reason: "not an http:// or https:// URL".into(),
                    })
                }
            };
            let mut req = Request::get(uri).header(USER_AGENT, &self.config.user_agent);
            if offset > 0 {
                req = req.header(RANGE, format!("bytes={offset}-"));
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| FetchError::BadUrl {
                    url: current.clone(),
                    reason: e.to_string(),
                })?;
            let response = if tls {
                self.tls()
                    .map_err(|e| FetchError::BadUrl {
                        url: current.clone(),
                        reason: format!("HTTPS unavailable: {e}"),
                    })?
                    .request(req)
            } else {
                self.http.request(req)
            };
            let resp = tokio::time::timeout(self.config.read_timeout, response)
                .await
                .map_err(|_| FetchError::Timeout {
                    url: current.clone(),
                    during: "waiting for response headers",
                })?
                .map_err(|e| FetchError::Network {
                    url: current.clone(),
                    reason: network_reason(&e),
                })?;
            let status = resp.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let location = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| FetchError::Status {
                        url: current.clone(),
                        status: status.as_u16(),
                    })?;
                let next = url::Url::parse(&current)
                    .and_then(|base| base.join(location))
                    .map_err(|e| FetchError::BadUrl {
                        url: current.clone(),
                        reason: format!("bad redirect location {location:?}: {e}"),
                    })?;
                if current.starts_with("https:") && next.scheme() != "https" {
                    return Err(FetchError::BadUrl {
                        url: current,
                        reason: format!("refusing redirect from https to {next}"),
                    });
                }
                redirects += 1;
                if redirects > self.config.max_redirects {
                    return Err(FetchError::BadUrl {
                        url: url.to_string(),
                        reason: format!("more than {} redirects", self.config.max_redirects),
                    });
                }
                debug!("{current} redirects to {next}");
                current = next.to_string();
                continue;
            }
            let too_large = || FetchError::TooLarge {
                url: current.clone(),
                max_len,
            };
            // Where the body starts, and how many bytes of it are acceptable.
            let (start, limit) = match status.as_u16() {
                200 => (0, max_len),
                206 => {
                    let bad = |reason: String| FetchError::BadRange {
                        url: current.clone(),
                        reason,
                    };
                    if offset == 0 {
                        return Err(bad("206 Partial Content to a request without Range".into()));
                    }
                    let value = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok());
                    let Some((first, last, complete)) = value.and_then(parse_content_range) else {
                        return Err(bad(format!(
                            "206 Partial Content without a usable Content-Range ({value:?})"
                        )));
                    };
                    if first != offset {
                        return Err(bad(format!(
                            "Content-Range {:?} does not start at the requested offset {offset}",
                            value.unwrap_or_default()
                        )));
                    }
                    if last >= max_len || complete.is_some_and(|c| c > max_len) {
                        return Err(too_large());
                    }
                    (offset, max_len - offset)
                }
                416 if offset > 0 => {
                    let length = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().strip_prefix("bytes */"))
                        .and_then(|n| n.trim().parse().ok());
                    return Err(FetchError::RangeNotSatisfiable {
                        url: current,
                        offset,
                        length,
                    });
                }
                403 | 404 | 410 => return Err(FetchError::NotFound { url: current }),
                s => {
                    return Err(FetchError::Status {
                        url: current,
                        status: s,
                    })
                }
            };
            if let Some(len) = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                if len > limit {
                    return Err(too_large());
                }
            }
            let mut body = resp.into_body();
            let mut sink = StartsOnFirstWrite::new(&mut *sink, start);
            let body_start = tokio::time::Instant::now();
            let mut body_bytes = 0u64;
            loop {
                let chunk_deadline = tokio::time::Instant::now() + self.config.read_timeout;
                let speed_deadline = self.speed_deadline(body_start, body_bytes);
                let (deadline, during) = match speed_deadline {
                    Some(d) if d < chunk_deadline => {
                        (d, "reading the body: slower than the minimum average speed")
                    }
                    _ => (chunk_deadline, "reading the body"),
                };
                let frame = tokio::time::timeout_at(deadline, body.frame())
                    .await
                    .map_err(|_| FetchError::Timeout {
                        url: current.clone(),
                        during,
                    })?;
                let Some(frame) = frame else { break };
                let frame = frame.map_err(|e| FetchError::Network {
                    url: current.clone(),
                    reason: network_reason(&e),
                })?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                if body_bytes + data.len() as u64 > limit {
                    return Err(too_large());
                }
                sink.write_all(&data).map_err(|source| FetchError::Io {
                    url: current.clone(),
                    source,
                })?;
                *written += data.len() as u64;
                body_bytes += data.len() as u64;
            }
            sink.started(&current)?;
            return Ok(Ranged {
                start,
                written: *written,
            });
        }
    }
}

/// Parses `bytes <first>-<last>/<complete or *>` (RFC 9110 §14.4): the first and last
/// byte positions and, when given, the complete length.
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let rest = value.trim();
    let rest = rest
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes "))
        .map(|_| &rest[6..])?;
    let (range, complete) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last) = (number(first)?, number(last)?);
    if last < first {
        return None;
    }
    let complete = match complete.trim() {
        "*" => None,
        c => {
            let c = number(c)?;
            if last >= c {
                return None;
            }
            Some(c)
        }
    };
    Some((first, last, complete))
}

/// A complete HTTP response held in memory (see [`HttpTransport::request_once`]).
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: http::HeaderMap,
    /// The body (at most the caller's limit).
    pub body: Bytes,
}

impl HttpTransport {
    /// Sends one request with an in-memory body and returns the whole response, whatever
    /// its status. One attempt only (no retries, redirects are returned, not followed):
    /// callers that send data decide themselves what a failure means. `headers` are added
    /// as given; the response body may be at most `max_response` bytes. Must not be called
    /// from inside another tokio runtime.
    pub fn request_once(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(http::header::HeaderName, String)],
        body: Bytes,
        max_response: u64,
    ) -> Result<HttpResponse, FetchError> {
        let bad = |reason: String| FetchError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| bad(format!("invalid URL: {e}")))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri.clone())
            .header(USER_AGENT, &self.config.user_agent);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| bad(e.to_string()))?;
        // The same connection pools (and the same lazily made TLS setup) as the fetches.
        let client_for_https = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => Some(
                self.tls()
                    .map_err(|e| bad(format!("HTTPS unavailable: {e}")))?,
            ),
            _ => return Err(bad("not an http:// or https:// URL".into())),
        };
        self.runtime.block_on(async {
            let sent = match client_for_https {
                None => self.http.request(req),
                Some(tls) => tls.request(req),
            };
            self.exchange(sent, url, max_response).await
        })
    }

    async fn exchange(
        &self,
        sent: hyper_util::client::legacy::ResponseFuture,
        url: &str,
        max_response: u64,
    ) -> Result<HttpResponse, FetchError> {
        let resp = tokio::time::timeout(self.config.read_timeout, sent)
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_string(),
                during: "waiting for response headers",
            })?
            .map_err(|e| FetchError::Network {
                url: url.to_string(),
                reason: network_reason(&e),
            })?;
        let (parts, body) = resp.into_parts();
        let limited =
            http_body_util::Limited::new(body, usize::try_from(max_response).unwrap_or(usize::MAX));
        let collected = tokio::time::timeout(self.config.read_timeout, limited.collect())
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_string(),
                during: "reading the body",
            })?;
        let body = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                    max_len: max_response,
                })
            }
            Err(e) => {
                return Err(FetchError::Network {
                    url: url.to_string(),
                    reason: e.to_string(),
                })
            }
        };
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// [`error_chain`] of a request error, with the likely fix when the cause is known: an
/// `https://` URL answered by a server that does not speak TLS (usually a plain-HTTP
/// server) makes rustls read a garbled record.
fn network_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = error_chain(e);
    if speaks_no_tls(e) {
        reason.push_str(
            " (the server answered without TLS: it is probably a plain-HTTP server; use an http:// URL, or the port where it serves HTTPS)",
        );
    }
    reason
}

/// Whether a cause of `e` is rustls finding that the peer's first record is not TLS.
fn speaks_no_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // Bounded: error chains are short; stop after 16 causes whatever happens.
    for _ in 0..16 {
        let Some(c) = cur else { return false };
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType
                        | rustls::InvalidMessage::UnknownProtocolVersion
                        | rustls::InvalidMessage::MessageTooLarge
                )
            );
        }
        // An `io::Error` wrapping another error reports the wrapped one's cause as its
        // source, skipping the wrapped error itself: look inside instead.
        cur = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

impl Transport for HttpTransport {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        self.fetch_from(url, 0, max_len, &mut PlainSink(sink))
            .map(|r| r.written)
    }

    /// Sends `Range: bytes=<offset>-` when `offset` is not 0. Transient failures are retried
    /// (with the same offset) only while no byte has reached the sink.
    fn fetch_from(
        &self,
        url: &str,
        offset: u64,
        max_len: u64,
        sink: &mut dyn RangeSink,
    ) -> Result<Ranged, FetchError> {
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 0u32;
        loop {
            let mut written = 0u64;
            let result =
                self.runtime
                    .block_on(self.fetch_once(url, offset, max_len, sink, &mut written));
            match result {
                Err(e) if e.is_transient() && written == 0 && attempt < self.config.retries => {
                    attempt += 1;
                    warn!(
                        "{e}; retrying in {:?} (attempt {} of {})",
                        backoff,
                        attempt + 1,
                        self.config.retries + 1
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_deadline_grants_a_grace_then_time_in_proportion_to_the_bytes() {
        let t = HttpTransport::new(HttpConfig {
            read_timeout: Duration::from_secs(2),
            min_average_speed: 100,
            native_roots: false,
            ..HttpConfig::default()
        })
        .unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(
            t.speed_deadline(start, 0),
            Some(start + Duration::from_secs(2))
        );
        assert_eq!(
            t.speed_deadline(start, 150),
            Some(start + Duration::from_millis(3500))
        );
        // No overflow for absurd byte counts: the deadline is just very far away or absent.
        let _ = t.speed_deadline(start, u64::MAX);
        let off = HttpTransport::new(HttpConfig {
            min_average_speed: 0,
            native_roots: false,
            ..HttpConfig::default()
        })
        .unwrap();
        assert_eq!(off.speed_deadline(start, 0), None);
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, 199, Some(200)))
        );
        assert_eq!(parse_content_range("Bytes 5-9/*"), Some((5, 9, None)));
        for bad in [
            "bytes */200",
            "bytes 9-5/200",
            "bytes 100-200/200",
            "items 0-1/2",
            "bytes -1-5/9",
            "bytes 1-5",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }
}

//! Transports: how the updater gets bytes (HTTP(S), `file://`, in memory), behind one blocking trait.
//!
//! The TUF updater is synchronous and knows nothing about networks: it asks a [`Transport`]
//! for a URL, says how many bytes it is prepared to accept, and gives it a sink to stream
//! the body into. Every transport enforces the size limit *while* streaming, so an endless
//! response never costs more than `max_len` bytes of memory or disk.

pub mod file;
pub mod http;
pub mod memory;

use std::io::{self, Write};
use std::sync::OnceLock;

pub use file::FileTransport;
pub use http::{HttpConfig, HttpSetupError, HttpTransport};
pub use memory::MemoryTransport;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The resource does not exist (HTTP 404, 403 or 410; a missing file). This ends the
    /// root rotation chain and is never retried.
    #[error("{url}: not found")]
    NotFound {
        /// The URL asked for.
        url: String,
    },
    /// The resource is larger than the caller's limit.
    #[error("{url}: larger than the limit of {max_len} bytes")]
    TooLarge {
        /// The URL asked for.
        url: String,
        /// The limit that was exceeded.
        max_len: u64,
    },
    /// A connect or read deadline passed.
    #[error("{url}: timed out {during}")]
    Timeout {
        /// The URL asked for.
        url: String,
        /// What was being waited for (e.g. "waiting for response headers").
        during: &'static str,
    },
    /// The server answered with an unexpected HTTP status.
    #[error("{url}: HTTP status {status}")]
    Status {
        /// The URL asked for.
        url: String,
        /// The status code.
        status: u16,
    },
    /// A network problem: connection refused or reset, TLS failure, protocol error.
    #[error("{url}: {reason}")]
    Network {
        /// The URL asked for.
        url: String,
        /// What went wrong, with the underlying causes.
        reason: String,
    },
    /// Reading the source or writing the sink failed (e.g. disk full).
    #[error("{url}: I/O error: {source}")]
    Io {
        /// The URL asked for.
        url: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The URL cannot be fetched by this transport (unknown scheme, path traversal…).
    #[error("{url}: refused: {reason}")]
    BadUrl {
        /// The URL asked for.
        url: String,
        /// Why it was refused.
        reason: String,
    },
}

impl FetchError {
    /// Whether trying again later could help: network errors, timeouts and server-side
    /// statuses (408, 429, 5xx). Never true for "not found", size or I/O problems.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Network { .. } | FetchError::Timeout { .. } => true,
            FetchError::Status { status, .. } => {
                *status == 408 || *status == 429 || (500..600).contains(status)
            }
            _ => false,
        }
    }
}

/// A blocking source of bytes addressed by URL.
///
/// Contract for implementations:
/// * write at most `max_len` bytes to `sink`, and return [`FetchError::TooLarge`] as soon as
///   it is known that the resource is longer (the sink may then hold a prefix);
/// * return [`FetchError::NotFound`] only when the resource does not exist;
/// * on success return the number of bytes written to `sink`.
pub trait Transport: Send + Sync {
    /// Streams the resource at `url` into `sink`, accepting at most `max_len` bytes.
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError>;
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        (**self).fetch(url, max_len, sink)
    }
}

impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        (**self).fetch(url, max_len, sink)
    }
}

impl<T: Transport + ?Sized> Transport for &T {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        (**self).fetch(url, max_len, sink)
    }
}

/// Fetches a small resource (metadata) into memory, never holding more than `max_len` bytes
/// even if the transport misbehaves.
pub fn fetch_to_vec(
    transport: &dyn Transport,
    url: &str,
    max_len: u64,
) -> Result<Vec<u8>, FetchError> {
    let mut sink = LimitedSink {
        buf: Vec::new(),
        max_len,
        overflow: false,
    };
    let result = transport.fetch(url, max_len, &mut sink);
    if sink.overflow {
        return Err(FetchError::TooLarge {
            url: url.to_string(),
            max_len,
        });
    }
    result?;
    Ok(sink.buf)
}

/// A `Vec` sink that refuses to grow past a limit.
struct LimitedSink {
    buf: Vec<u8>,
    max_len: u64,
    overflow: bool,
}

impl Write for LimitedSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() as u64 + data.len() as u64 > self.max_len {
            self.overflow = true;
            return Err(io::Error::other("size limit exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Chooses a transport by URL scheme: `file://` → [`FileTransport`], `http://` and
/// `https://` → [`HttpTransport`] (created on first use, so a device that only reads a USB
/// stick never starts a network runtime).
pub struct AutoTransport {
    file: FileTransport,
    http_config: HttpConfig,
    http: OnceLock<Result<HttpTransport, String>>,
}

impl AutoTransport {
    /// A transport that will use `http_config` for HTTP(S) URLs.
    pub fn new(http_config: HttpConfig) -> Self {
        AutoTransport {
            file: FileTransport::new(),
            http_config,
            http: OnceLock::new(),
        }
    }
}

impl Default for AutoTransport {
    fn default() -> Self {
        AutoTransport::new(HttpConfig::default())
    }
}

impl Transport for AutoTransport {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        if lower.starts_with("file://") {
            return self.file.fetch(url, max_len, sink);
        }
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let http = self.http.get_or_init(|| {
                HttpTransport::new(self.http_config.clone()).map_err(|e| e.to_string())
            });
            return match http {
                Ok(h) => h.fetch(url, max_len, sink),
                Err(e) => Err(FetchError::BadUrl {
                    url: url.to_string(),
                    reason: format!("HTTP transport unavailable: {e}"),
                }),
            };
        }
        Err(FetchError::BadUrl {
            url: url.to_string(),
            reason: "unsupported URL scheme (use http://, https:// or file://)".into(),
        })
    }
}

/// Percent-encodes one URL path segment: every byte outside `[A-Za-z0-9._~-]` becomes `%XX`.
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes in one URL path segment; `None` if an escape is malformed.
pub fn decode_path_segment(segment: &str) -> Option<Vec<u8>> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The message of an error followed by the messages of its causes, `: `-separated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_slash_is_escaped() {
        let e = encode_path_segment("a b/c%");
        assert_eq!(e, "a%20b%2Fc%25");
        assert_eq!(decode_path_segment(&e).unwrap(), b"a b/c%");
        assert!(decode_path_segment("%4").is_none());
        assert!(decode_path_segment("%zz").is_none());
    }

    #[test]
    fn fetch_to_vec_bounds_a_misbehaving_transport() {
        struct Liar;
        impl Transport for Liar {
            fn fetch(&self, _: &str, _: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
                let chunk = [0u8; 1024];
                for _ in 0..1024 {
                    if sink.write_all(&chunk).is_err() {
                        return Ok(0);
                    }
                }
                Ok(1024 * 1024)
            }
        }
        let err = fetch_to_vec(&Liar, "mem://x", 4096).unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { max_len: 4096, .. }),
            "{err}"
        );
    }

    #[test]
    fn unknown_scheme_is_refused() {
        let t = AutoTransport::default();
        let err = t.fetch("ftp://x/y", 10, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FetchError::BadUrl { .. }), "{err}");
    }
}

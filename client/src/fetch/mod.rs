//! Transports: how the updater gets bytes (HTTP(S), `file://`, in memory), behind one blocking trait.
//!
//! The TUF updater is synchronous and knows nothing about networks: it asks a [`Transport`]
//! for a URL, says how many bytes it is prepared to accept, and gives it a sink to stream
//! the body into. Every transport enforces the size limit *while* streaming, so an endless
//! response never costs more than `max_len` bytes of memory or disk.
//!
//! [`Transport::fetch_from`] asks for the rest of a resource from an offset (an HTTP
//! `Range` request), so an interrupted download can resume instead of starting over. A
//! source that cannot or will not honour the offset sends the whole resource instead, and
//! says so (before the first byte through [`RangeSink::start_at`], and in [`Ranged`]).

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
    /// The requested offset is not inside the resource (HTTP 416): what was kept of it
    /// locally is unusable, and the caller starts over from byte 0. Never retried.
    #[error("{url}: offset {offset} is not inside the resource{}", of_length(.length))]
    RangeNotSatisfiable {
        /// The URL asked for.
        url: String,
        /// The offset asked for.
        offset: u64,
        /// The resource's length, when the source said.
        length: Option<u64>,
    },
    /// The body ended before the expected length (the connection was closed cleanly
    /// mid-body, or the source holds a shorter resource). What arrived may be resumed from.
    #[error("{url}: the body ended after {received} of {expected} bytes")]
    Incomplete {
        /// The URL asked for.
        url: String,
        /// Bytes of the resource held so far.
        received: u64,
        /// The expected length.
        expected: u64,
    },
    /// The source answered a ranged request with a partial body that is not the one asked
    /// for (HTTP 206 without a `Content-Range` starting at the requested offset). Nothing was
    /// written to the sink. Never retried.
    #[error("{url}: bad partial response: {reason}")]
    BadRange {
        /// The URL asked for.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// ` of N bytes` when the length is known.
fn of_length(length: &Option<u64>) -> String {
    length.map(|l| format!(" of {l} bytes")).unwrap_or_default()
}

impl FetchError {
    /// Whether trying again later could help: network errors, timeouts, incomplete bodies and
    /// server-side statuses (408, 429, 5xx). Never true for "not found", size, range or I/O
    /// problems.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Network { .. }
            | FetchError::Timeout { .. }
            | FetchError::Incomplete { .. } => true,
            FetchError::Status { status, .. } => {
                *status == 408 || *status == 429 || (500..600).contains(status)
            }
            _ => false,
        }
    }
}

/// What a [`Transport::fetch_from`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranged {
    /// Where in the resource the body written to the sink begins: the requested offset when
    /// the source honoured it, 0 when it sent the whole resource instead.
    pub start: u64,
    /// Bytes written to the sink.
    pub written: u64,
}

impl Ranged {
    /// Whether the body continues the resource at `offset` (rather than starting over).
    pub fn continues_at(&self, offset: u64) -> bool {
        self.start == offset
    }
}

/// The sink of a [`Transport::fetch_from`]: a writer that is told where the body begins
/// before its first byte arrives, so that it can start over when the source ignores the
/// requested offset.
pub trait RangeSink: Write {
    /// Called before the first byte of the body is written (for an empty body, before the
    /// fetch returns successfully), with the offset in the resource the body begins at: the
    /// requested offset, or 0. An error aborts the fetch with [`FetchError::Io`]. The default
    /// does nothing; the caller then learns the same from [`Ranged::start`].
    fn start_at(&mut self, start: u64) -> io::Result<()> {
        let _ = start;
        Ok(())
    }
}

impl RangeSink for Vec<u8> {}

impl RangeSink for io::Sink {}

impl<W: RangeSink + ?Sized> RangeSink for &mut W {
    fn start_at(&mut self, start: u64) -> io::Result<()> {
        (**self).start_at(start)
    }
}

/// A blocking source of bytes addressed by URL.
///
/// Contract for implementations:
/// * write at most `max_len` bytes to `sink`, and return [`FetchError::TooLarge`] as soon as
///   it is known that the resource is longer (the sink may then hold a prefix);
/// * return [`FetchError::NotFound`] only when the resource does not exist;
/// * on success return the number of bytes written to `sink`;
/// * in [`Transport::fetch_from`], call [`RangeSink::start_at`] before writing the body,
///   and accept at most `max_len - offset` bytes when the offset is honoured.
pub trait Transport: Send + Sync {
    /// Streams the resource at `url` into `sink`, accepting at most `max_len` bytes.
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError>;

    /// Streams the resource at `url` from byte `offset` on into `sink`. `max_len` bounds the
    /// whole resource, so at most `max_len - offset` bytes are accepted when the offset is
    /// honoured. A source that does not honour it sends the whole resource from byte 0
    /// (at most `max_len` bytes); the result and [`RangeSink::start_at`] say which happened.
    /// [`FetchError::RangeNotSatisfiable`] means the offset is past the resource's end.
    ///
    /// The default, for transports that cannot seek, fetches the whole resource.
    fn fetch_from(
        &self,
        url: &str,
        offset: u64,
        max_len: u64,
        sink: &mut dyn RangeSink,
    ) -> Result<Ranged, FetchError> {
        let _ = offset;
        let mut sink = StartsOnFirstWrite::new(sink, 0);
        let written = self.fetch(url, max_len, &mut sink)?;
        sink.started(url)?;
        Ok(Ranged { start: 0, written })
    }
}

/// A plain writer as a [`RangeSink`] that needs no notice (a fetch from offset 0).
pub(crate) struct PlainSink<'a>(pub(crate) &'a mut dyn Write);

impl Write for PlainSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.write(data)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl RangeSink for PlainSink<'_> {}

/// Calls [`RangeSink::start_at`] just before the first byte reaches the sink (or, for an
/// empty body, through [`StartsOnFirstWrite::started`]).
pub(crate) struct StartsOnFirstWrite<'a> {
    sink: &'a mut dyn RangeSink,
    start: u64,
    announced: bool,
}

impl<'a> StartsOnFirstWrite<'a> {
    pub(crate) fn new(sink: &'a mut dyn RangeSink, start: u64) -> Self {
        StartsOnFirstWrite {
            sink,
            start,
            announced: false,
        }
    }

    fn announce(&mut self) -> io::Result<()> {
        if !self.announced {
            self.announced = true;
            self.sink.start_at(self.start)?;
        }
        Ok(())
    }

    /// Announces the start if no byte was written (an empty body).
    pub(crate) fn started(&mut self, url: &str) -> Result<(), FetchError> {
        self.announce().map_err(|source| FetchError::Io {
            url: url.to_string(),
            source,
        })
    }
}

impl Write for StartsOnFirstWrite<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        self.announce()?;
        self.sink.write(data)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        (**self).fetch(url, max_len, sink)
    }
    fn fetch_from(
        &self,
        url: &str,
        offset: u64,
        max_len: u64,
        sink: &mut dyn RangeSink,
    ) -> Result<Ranged, FetchError> {
        (**self).fetch_from(url, offset, max_len, sink)
    }
}

impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        (**self).fetch(url, max_len, sink)
    }
    fn fetch_from(
        &self,
        url: &str,
        offset: u64,
        max_len: u64,
        sink: &mut dyn RangeSink,
    ) -> Result<Ranged, FetchError> {
        (**self).fetch_from(url, offset, max_len, sink)
    }
}

impl<T: Transport + ?Sized> Transport for &T {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        (**self).fetch(url, max_len, sink)
    }
    fn fetch_from(
        &self,
        url: &str,
        offset: u64,
        max_len: u64,
        sink: &mut dyn RangeSink,
    ) -> Result<Ranged, FetchError> {
        (**self).fetch_from(url, offset, max_len, sink)
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

impl AutoTransport {
    /// The transport for `url`'s scheme.
    fn pick(&self, url: &str) -> Result<&dyn Transport, FetchError> {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        if lower.starts_with("file://") {
            return Ok(&self.file);
        }
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let http = self.http.get_or_init(|| {
                HttpTransport::new(self.http_config.clone()).map_err(|e| e.to_string())
            });
            return match http {
                Ok(h) => Ok(h),
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

impl Transport for AutoTransport {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        self.pick(url)?.fetch(url, max_len, sink)
    }
    fn fetch_from(
        &self,
        url: &str,
        offset: u64,
        max_len: u64,
        sink: &mut dyn RangeSink,
    ) -> Result<Ranged, FetchError> {
        self.pick(url)?.fetch_from(url, offset, max_len, sink)
    }
}

/// Percent-encodes one URL path segment (RFC 3986): the unreserved characters
/// `A–Z a–z 0–9 - . _ ~` stay as they are, wherever they stand; every other byte of the
/// UTF-8 form, `/` and `%` included, becomes `%XX` with uppercase hex digits.
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

/// Decodes `%XX` escapes in one URL path segment (and in other percent-encoded values, such
/// as a PKCS#11 URI's); `None` if an escape is not `%` and two hex digits.
pub fn decode_path_segment(segment: &str) -> Option<Vec<u8>> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Exactly two hex digits: `u8::from_str_radix` alone also takes a sign (`%+1`).
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
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
        assert!(decode_path_segment("%+1").is_none());
        assert!(decode_path_segment("%-0").is_none());
    }

    #[test]
    fn path_segments_keep_exactly_the_rfc3986_unreserved_characters() {
        for b in 0u8..0x80 {
            let c = b as char;
            let unreserved = c.is_ascii_alphanumeric() || "-._~".contains(c);
            let expected = if unreserved {
                c.to_string()
            } else {
                format!("%{b:02X}")
            };
            assert_eq!(encode_path_segment(&c.to_string()), expected, "{b:#04x}");
        }
        assert_eq!(encode_path_segment(".hidden/bin"), ".hidden%2Fbin");
        assert_eq!(encode_path_segment("..~x"), "..~x");
        assert_eq!(encode_path_segment("é"), "%C3%A9");
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
    fn default_fetch_from_sends_the_whole_resource_and_announces_byte_0_first() {
        struct Whole;
        impl Transport for Whole {
            fn fetch(&self, _: &str, _: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
                sink.write_all(b"0123456789").unwrap();
                Ok(10)
            }
        }
        /// Records what it is told, in order.
        #[derive(Default)]
        struct Log(Vec<String>);
        impl Write for Log {
            fn write(&mut self, d: &[u8]) -> io::Result<usize> {
                self.0.push(String::from_utf8_lossy(d).into_owned());
                Ok(d.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl RangeSink for Log {
            fn start_at(&mut self, start: u64) -> io::Result<()> {
                self.0.push(format!("start {start}"));
                Ok(())
            }
        }
        let mut log = Log::default();
        let r = Whole.fetch_from("x://y", 4, 10, &mut log).unwrap();
        assert_eq!(
            r,
            Ranged {
                start: 0,
                written: 10
            }
        );
        assert!(!r.continues_at(4));
        assert_eq!(log.0, ["start 0", "0123456789"]);
    }

    #[test]
    fn auto_transport_forwards_ranged_fetches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let mut out = Vec::new();
        let r = AutoTransport::default()
            .fetch_from(&format!("file://{}", p.display()), 6, 11, &mut out)
            .unwrap();
        assert_eq!((r.start, out.as_slice()), (6, &b"world"[..]));
    }

    #[test]
    fn unknown_scheme_is_refused() {
        let t = AutoTransport::default();
        let err = t.fetch("ftp://x/y", 10, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FetchError::BadUrl { .. }), "{err}");
    }
}

//! In-memory transport for tests: a URL → bytes map that records every request (and every offset asked for).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FetchError, PlainSink, RangeSink, Ranged, Transport};

/// A transport serving bytes from a map, counting requests and bytes served.
///
/// Clones share the same map and counters, so a test can keep one handle while the
/// updater owns another.
#[derive(Clone, Debug, Default)]
pub struct MemoryTransport {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    files: BTreeMap<String, Arc<Vec<u8>>>,
    requests: Vec<String>,
    offsets: Vec<(String, u64)>,
    bytes_served: u64,
}

impl MemoryTransport {
    /// An empty transport.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in another test thread must not hide this test's result.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `bytes` at `url` (replacing what was there).
    pub fn insert(&self, url: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.lock().files.insert(url.into(), Arc::new(bytes.into()));
    }

    /// Stops serving `url`; returns whether it was served.
    pub fn remove(&self, url: &str) -> bool {
        self.lock().files.remove(url).is_some()
    }

    /// Removes every URL starting with `prefix`.
    pub fn remove_prefix(&self, prefix: &str) {
        self.lock().files.retain(|k, _| !k.starts_with(prefix));
    }

    /// The bytes served at `url`, if any.
    pub fn get(&self, url: &str) -> Option<Vec<u8>> {
        self.lock().files.get(url).map(|b| b.as_ref().clone())
    }

    /// Every URL currently served, sorted.
    pub fn urls(&self) -> Vec<String> {
        self.lock().files.keys().cloned().collect()
    }

    /// Every URL requested so far, in order (including ones that were not found).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Every request with a non-zero offset ([`Transport::fetch_from`]), in order: URL and
    /// offset.
    pub fn ranged_requests(&self) -> Vec<(String, u64)> {
        self.lock().offsets.clone()
    }

    /// The number of requests so far.
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// The number of body bytes handed to sinks so far.
    pub fn bytes_served(&self) -> u64 {
        self.lock().bytes_served
    }

    /// Forgets the request log and the byte counter (the served files stay).
    pub fn clear_log(&self) {
        let mut g = self.lock();
        g.requests.clear();
        g.offsets.clear();
        g.bytes_served = 0;
    }
}

impl Transport for MemoryTransport {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        self.fetch_from(url, 0, max_len, &mut PlainSink(sink))
            .map(|r| r.written)
    }

    /// Honours the offset by slicing; an offset at or past the end (other than 0) is
    /// [`FetchError::RangeNotSatisfiable`], as an HTTP server answers 416.
    fn fetch_from(
        &self,
        url: &str,
        offset: u64,
        max_len: u64,
        sink: &mut dyn RangeSink,
    ) -> Result<Ranged, FetchError> {
        let body = {
            let mut g = self.lock();
            g.requests.push(url.to_string());
            if offset > 0 {
                g.offsets.push((url.to_string(), offset));
            }
            g.files.get(url).cloned()
        };
        let Some(body) = body else {
            return Err(FetchError::NotFound {
                url: url.to_string(),
            });
        };
        let len = body.len() as u64;
        if len > max_len {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                max_len,
            });
        }
        if offset > 0 && offset >= len {
            return Err(FetchError::RangeNotSatisfiable {
                url: url.to_string(),
                offset,
                length: Some(len),
            });
        }
        let io_err = |source| FetchError::Io {
            url: url.to_string(),
            source,
        };
        sink.start_at(offset).map_err(io_err)?;
        let rest = &body[offset as usize..];
        for chunk in rest.chunks(16 * 1024) {
            sink.write_all(chunk).map_err(io_err)?;
            self.lock().bytes_served += chunk.len() as u64;
        }
        Ok(Ranged {
            start: offset,
            written: rest.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_counts_and_limits() {
        let t = MemoryTransport::new();
        t.insert("mem://a", b"hello".to_vec());
        let mut out = Vec::new();
        assert_eq!(t.fetch("mem://a", 5, &mut out).unwrap(), 5);
        assert_eq!(out, b"hello");
        assert!(matches!(
            t.fetch("mem://a", 4, &mut Vec::new()),
            Err(FetchError::TooLarge { .. })
        ));
        assert!(matches!(
            t.fetch("mem://b", 4, &mut Vec::new()),
            Err(FetchError::NotFound { .. })
        ));
        assert_eq!(t.requests(), ["mem://a", "mem://a", "mem://b"]);
        assert_eq!(t.bytes_served(), 5);
    }

    #[test]
    fn fetch_from_slices_at_the_offset_and_refuses_offsets_past_the_end() {
        let t = MemoryTransport::new();
        t.insert("mem://a", b"hello world".to_vec());
        let mut out = Vec::new();
        let r = t.fetch_from("mem://a", 6, 11, &mut out).unwrap();
        assert_eq!(
            r,
            Ranged {
                start: 6,
                written: 5
            }
        );
        assert!(r.continues_at(6));
        assert_eq!(out, b"world");
        assert!(matches!(
            t.fetch_from("mem://a", 11, 11, &mut Vec::new()),
            Err(FetchError::RangeNotSatisfiable {
                offset: 11,
                length: Some(11),
                ..
            })
        ));
        // The limit is the whole resource's, not the rest's.
        assert!(matches!(
            t.fetch_from("mem://a", 6, 10, &mut Vec::new()),
            Err(FetchError::TooLarge { .. })
        ));
        assert_eq!(
            t.ranged_requests(),
            [
                ("mem://a".to_string(), 6),
                ("mem://a".to_string(), 11),
                ("mem://a".to_string(), 6)
            ]
        );
    }
}

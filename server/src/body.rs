//! Response bodies: in-memory bytes, or a byte range streamed from an already-open file,
//! plus the access-log record written when a response body is finished or dropped.
//!
//! A streamed file is read with positional reads (`pread`) on the one handle that was
//! opened for the request, one chunk ahead of the socket. A chunk already in the page
//! cache is read in place on the runtime thread (Linux `preadv2(RWF_NOWAIT)`, which
//! fails instead of waiting for the disk); any other chunk is read on tokio's blocking
//! pool. The path is never re-opened, so a file replaced by atomic rename mid-download
//! keeps streaming the old, consistent content.
//!
//! Chunks start at [`MIN_CHUNK_SIZE`] and double, up to [`CHUNK_SIZE`], while the
//! client takes each chunk quickly; they halve again when it slows down. Every chunk
//! larger than the minimum is paid for from a [`StreamBudget`] shared by all responses
//! and given back when the chunk's memory is freed (after the socket took its last
//! byte). Without budget a download goes on in minimum-size chunks: a slow reader can
//! hold a few minimum-size chunks at most, whatever the size of the file.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::conns::ConnState;

/// Largest read when streaming a file.
pub const CHUNK_SIZE: usize = 1024 * 1024;
/// Smallest read when streaming a file; chunks up to this size need no budget.
pub const MIN_CHUNK_SIZE: usize = 16 * 1024;
/// A chunk taken faster than this lets the next chunk double.
const FAST_DRAIN: Duration = Duration::from_millis(20);
/// A chunk taken slower than this halves the next chunk.
const SLOW_DRAIN: Duration = Duration::from_millis(200);

/// Bytes of file content that all responses together may hold in chunks larger than
/// [`MIN_CHUNK_SIZE`].
#[derive(Debug, Clone)]
pub struct StreamBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl StreamBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let total = bytes.min(Semaphore::MAX_PERMITS);
        StreamBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Take `len` bytes of budget if they are free now (never waits).
    pub fn try_take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(len).ok()?;
        Arc::clone(&self.bytes).try_acquire_many_owned(n).ok()
    }

    /// Budget not taken at the moment.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// The whole budget.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// A buffer that gives its budget back when freed.
struct Budgeted {
    buf: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// `buf` as `Bytes`, holding `permit` (if any) until the last reference is dropped.
pub(crate) fn budgeted_bytes(buf: Vec<u8>, permit: Option<OwnedSemaphorePermit>) -> Bytes {
    match permit {
        Some(permit) => Bytes::from_owner(Budgeted {
            buf,
            _permit: permit,
        }),
        None => Bytes::from(buf),
    }
}

/// The body type of every response this server sends.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Inner,
    sent: u64,
    log: Option<AccessRecord>,
    request_end: Option<Arc<ConnState>>,
}

#[derive(Debug)]
enum Inner {
    Bytes(Option<Bytes>),
    File(FileChunks),
}

impl ResponseBody {
    /// An empty body (HEAD, 304, 416 …).
    pub fn empty() -> Self {
        Self::bytes(Bytes::new())
    }

    /// A body held fully in memory.
    pub fn bytes(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ResponseBody {
            inner: Inner::Bytes((!b.is_empty()).then_some(b)),
            sent: 0,
            log: None,
            request_end: None,
        }
    }

    /// A body streaming bytes `start..start+len` of `file`, with chunks above the
    /// minimum size paid from `budget` (`None`: no limit).
    pub fn file_range(file: Arc<File>, start: u64, len: u64, budget: Option<StreamBudget>) -> Self {
        ResponseBody {
            inner: Inner::File(FileChunks::new(file, start, start + len, budget)),
            sent: 0,
            log: None,
            request_end: None,
        }
    }

    /// Mark the connection's request as answered when this body is dropped (hyper
    /// drops it once the last frame was taken, or when the connection goes away).
    pub fn with_request_end(mut self, conn: Arc<ConnState>) -> Self {
        self.request_end = Some(conn);
        self
    }

    /// Attach an access-log record, emitted when this body is dropped.
    pub fn with_access_log(mut self, record: AccessRecord) -> Self {
        self.log = Some(record);
        self
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(rec) = self.log.take() {
            rec.emit(self.sent);
        }
        if let Some(conn) = self.request_end.take() {
            conn.end_request();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let res = match &mut this.inner {
            Inner::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::File(f) => f.poll_chunk(cx).map(|o| o.map(|r| r.map(Frame::data))),
        };
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let Some(d) = frame.data_ref() {
                this.sent += d.len() as u64;
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Bytes(b) => b.is_none(),
            Inner::File(f) => f.remaining() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::File(f) => SizeHint::with_exact(f.remaining()),
        }
    }
}

/// Streams a byte range of an open file with one read in flight ahead of the consumer.
#[derive(Debug)]
struct FileChunks {
    file: Arc<File>,
    /// Offset of the next byte to hand to hyper.
    next_yield: u64,
    /// Offset where the next read starts (ahead of `next_yield` while a read is in flight).
    next_read: u64,
    /// End of the range (exclusive).
    end: u64,
    /// The read in flight, covering `next_yield..next_read`.
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    /// A chunk read in place (from the page cache), covering `next_yield..next_read`.
    ready: Option<Bytes>,
    /// Size of the next read, between [`MIN_CHUNK_SIZE`] and [`CHUNK_SIZE`].
    chunk: usize,
    /// When the last chunk was handed to hyper.
    yielded_at: Option<Instant>,
    budget: Option<StreamBudget>,
}

impl FileChunks {
    fn new(file: Arc<File>, start: u64, end: u64, budget: Option<StreamBudget>) -> Self {
        FileChunks {
            file,
            next_yield: start,
            next_read: start,
            end,
            pending: None,
            ready: None,
            chunk: MIN_CHUNK_SIZE,
            yielded_at: None,
            budget,
        }
    }

    /// Adapt the chunk size to how fast the client took the last chunk (hyper asks
    /// for the next one when the previous one is almost written).
    fn adapt(&mut self, now: Instant) {
        if let Some(at) = self.yielded_at {
            let drain = now.saturating_duration_since(at);
            if drain < FAST_DRAIN {
                self.chunk = (self.chunk * 2).min(CHUNK_SIZE);
            } else if drain > SLOW_DRAIN {
                self.chunk = (self.chunk / 2).max(MIN_CHUNK_SIZE);
            }
        }
    }

    /// Size and budget of the next read.
    fn next_len(&self) -> (usize, Option<OwnedSemaphorePermit>) {
        let want = (self.end - self.next_read).min(self.chunk as u64) as usize;
        if want <= MIN_CHUNK_SIZE {
            return (want, None);
        }
        match &self.budget {
            None => (want, None),
            Some(budget) => match budget.try_take(want) {
                Some(permit) => (want, Some(permit)),
                None => (MIN_CHUNK_SIZE, None),
            },
        }
    }

    /// Bytes not yet handed to hyper.
    fn remaining(&self) -> u64 {
        self.end - self.next_yield
    }

    fn start_read(&mut self) {
        if self.next_read >= self.end {
            return;
        }
        let (len, permit) = self.next_len();
        let offset = self.next_read;
        if let Some(chunk) = read_cached(&self.file, offset, len) {
            self.ready = Some(budgeted_bytes(chunk, permit));
            self.next_read += len as u64;
            return;
        }
        let file = Arc::clone(&self.file);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            read_exact_at(&file, offset, len, permit)
        }));
        self.next_read += len as u64;
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<io::Result<Bytes>>> {
        self.next_yield = self.end;
        self.next_read = self.end;
        Poll::Ready(Some(Err(e)))
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let now = Instant::now();
        self.adapt(now);
        self.yielded_at = None;
        if self.ready.is_none() && self.pending.is_none() {
            if self.next_yield >= self.end {
                return Poll::Ready(None);
            }
            self.start_read();
        }
        if let Some(chunk) = self.ready.take() {
            self.next_yield += chunk.len() as u64;
            // Read ahead while hyper writes this chunk to the socket.
            self.start_read();
            self.yielded_at = Some(now);
            return Poll::Ready(Some(Ok(chunk)));
        }
        let Some(handle) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let joined = match Pin::new(handle).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(j) => j,
        };
        self.pending = None;
        let chunk = match joined {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return self.fail(e),
            Err(join_err) => return self.fail(io::Error::other(join_err)),
        };
        self.next_yield += chunk.len() as u64;
        // Read ahead while hyper writes this chunk to the socket.
        self.start_read();
        self.yielded_at = Some(Instant::now());
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Drop for FileChunks {
    fn drop(&mut self) {
        if let Some(h) = self.pending.take() {
            h.abort();
        }
    }
}

/// Read exactly `len` bytes at `offset` if they are all in the page cache, without
/// blocking on the disk (`preadv2` with `RWF_NOWAIT`). `None` when any part is not
/// cached, the file ends early, or the system does not support it: the caller then
/// reads on the blocking pool, where every error is reported.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
fn read_cached(file: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
    use rustix::io::{preadv2, ReadWriteFlags};
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    // Bounded: every iteration reads at least one byte or returns.
    while filled < len {
        let mut slices = [io::IoSliceMut::new(&mut buf[filled..])];
        match preadv2(
            file,
            &mut slices,
            offset + filled as u64,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) | Err(_) => return None,
            Ok(n) => filled += n,
        }
    }
    Some(buf)
}

#[cfg(not(all(target_os = "linux", not(target_env = "musl"))))]
fn read_cached(_file: &File, _offset: u64, _len: usize) -> Option<Vec<u8>> {
    None
}

/// Read exactly `len` bytes at `offset`. A file that became shorter than the length
/// announced in `Content-Length` is an error (the response is then cut off, which the
/// client detects), never silently short or padded data. `permit` is the budget paid
/// for the buffer, given back when the returned bytes are freed.
pub(crate) fn read_exact_at(
    file: &File,
    offset: u64,
    len: usize,
    permit: Option<OwnedSemaphorePermit>,
) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being served",
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(budgeted_bytes(buf, permit))
}

/// One request's access-log data; logged (target `petrel_server::access`) on drop of the
/// response body, i.e. when the response finished or the connection went away.
#[derive(Debug)]
pub struct AccessRecord {
    method: Method,
    path: String,
    status: StatusCode,
    started: Instant,
    range: Option<String>,
}

impl AccessRecord {
    /// Start a record for a request received at `started`.
    pub fn new(method: Method, path: String, status: StatusCode, started: Instant) -> Self {
        AccessRecord {
            method,
            path,
            status,
            started,
            range: None,
        }
    }

    /// Records the request's `Range` header (logged as `range=…`, so a resumed download
    /// shows in the access log).
    pub fn with_range(mut self, range: Option<&str>) -> Self {
        self.range = range.map(|r| r.chars().take(100).collect());
        self
    }

    fn emit(self, bytes: u64) {
        let micros = self.started.elapsed().as_micros();
        tracing::info!(
            target: "petrel_server::access",
            "{} {} {} {} {}.{:03}ms{}",
            self.method,
            self.path,
            self.status.as_u16(),
            bytes,
            micros / 1000,
            micros % 1000,
            self.range
                .as_ref()
                .map(|r| format!(" range={r}"))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[cfg(all(target_os = "linux", not(target_env = "musl")))]
    #[test]
    fn cached_read_returns_exactly_the_requested_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = sample(3 * CHUNK_SIZE + 17);
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        // Just written, so in the page cache.
        let got = read_cached(&file, 5, CHUNK_SIZE).expect("cached pages read in place");
        assert_eq!(&got[..], &data[5..5 + CHUNK_SIZE]);
        // Past the end of the file: never padded, left to the blocking path.
        assert!(read_cached(&file, data.len() as u64 - 3, 10).is_none());
    }

    #[tokio::test]
    async fn streamed_range_has_every_byte_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = sample(2 * CHUNK_SIZE + 1234);
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let (start, len) = (100u64, data.len() as u64 - 200);
        let body = ResponseBody::file_range(file, start, len, None);
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], &data[100..data.len() - 100]);
    }

    /// Pulls every frame of `body`, keeping up to `keep` of the latest frames alive
    /// (as a socket writer would), and returns the bytes and the largest frame.
    async fn pull(mut body: ResponseBody, keep: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut held = std::collections::VecDeque::new();
        let mut largest = 0;
        // Bounded: the body is finite and every frame is at least one byte.
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            largest = largest.max(data.len());
            out.extend_from_slice(&data);
            held.push_back(data);
            if held.len() > keep {
                held.pop_front();
            }
        }
        (out, largest)
    }

    #[tokio::test]
    async fn streaming_chunks_grow_for_a_fast_reader_and_never_exceed_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = sample(8 * CHUNK_SIZE);
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(File::open(&path).unwrap());

        // Plenty of budget: a fast reader gets full-size chunks.
        let budget = StreamBudget::new(64 * CHUNK_SIZE);
        let body = ResponseBody::file_range(
            Arc::clone(&file),
            0,
            data.len() as u64,
            Some(budget.clone()),
        );
        let (got, largest) = pull(body, 2).await;
        assert_eq!(got, data);
        assert_eq!(largest, CHUNK_SIZE);
        assert_eq!(budget.available(), budget.total(), "all budget given back");

        // No budget: every chunk stays at the minimum, and the bytes are all there.
        let none = StreamBudget::new(0);
        let body = ResponseBody::file_range(file, 0, data.len() as u64, Some(none));
        let (got, largest) = pull(body, 2).await;
        assert_eq!(got, data);
        assert_eq!(largest, MIN_CHUNK_SIZE);
    }

    #[tokio::test]
    async fn a_slow_reader_falls_back_to_minimum_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = sample(CHUNK_SIZE);
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let mut body = ResponseBody::file_range(file, 0, data.len() as u64, None);
        let mut sizes = Vec::new();
        // Bounded: at most a handful of frames are pulled.
        for _ in 0..4 {
            let frame = body.frame().await.unwrap().unwrap();
            sizes.push(frame.into_data().unwrap().len());
            tokio::time::sleep(SLOW_DRAIN + Duration::from_millis(20)).await;
        }
        assert!(
            sizes.iter().all(|&n| n == MIN_CHUNK_SIZE),
            "chunks grew for a slow reader: {sizes:?}"
        );
    }
}

//! Per-connection activity tracking used to enforce the idle timeout and to pick which
//! connection to shed.
//!
//! hyper bounds how large a request head may be (`max_header_size`); the connection
//! caps and the header deadlines live in `conns.rs` and `server.rs`. What they do not
//! cover is a connection on which nothing moves, such as a client that stopped reading
//! a large download: [`TrackedIo`] records the time of the last byte read or written so
//! the connection task can close such a connection, and counts the bytes written, from
//! which the slowest download is found when a connection has to be shed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared record of the last time bytes moved on a connection.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    last_millis: AtomicU64,
    written: AtomicU64,
}

impl Activity {
    /// A tracker whose last activity is now.
    pub fn new() -> Arc<Self> {
        Self::starting_at(Instant::now())
    }

    /// A tracker whose last activity is `base`.
    pub(crate) fn starting_at(base: Instant) -> Arc<Self> {
        Arc::new(Activity {
            base,
            last_millis: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    /// Record `n` bytes written now.
    pub fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// When this tracker was created (the connection was accepted).
    pub fn started(&self) -> Instant {
        self.base
    }

    /// Record activity now.
    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_millis.store(ms, Ordering::Relaxed);
    }

    /// The instant of the last recorded activity (millisecond resolution).
    pub fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_millis.load(Ordering::Relaxed))
    }
}

/// An I/O object that reports every successful read or write to an [`Activity`].
#[derive(Debug)]
pub struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> TrackedIo<T> {
    /// Wrap `inner`, reporting to `activity`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        TrackedIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.activity.wrote(n);
            }
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.activity.wrote(n);
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

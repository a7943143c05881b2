//! The listener: accept loop, connection cap, per-connection timeouts, graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Limits, ServerConfig};
use crate::limits::{Activity, TrackedIo};
use crate::router::App;
use crate::static_files::StaticFiles;

/// hyper's smallest allowed read buffer.
const HYPER_MIN_BUF: usize = 8192;

/// A bound, not yet running, server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    app: Arc<App>,
    limits: Limits,
}

impl Server {
    /// Validate `config`, open the tree root and bind the listening socket.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        config
            .limits
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let static_files = StaticFiles::new(&config.root)?;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let local_addr = listener.local_addr()?;
        Ok(Server {
            listener,
            local_addr,
            app: Arc::new(App::from_config(static_files, &config)?),
            limits: config.limits,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until `shutdown` completes, then shut down gracefully: stop accepting,
    /// let in-flight requests finish for up to [`Limits::shutdown_grace`], and drop
    /// whatever is still running after that.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            listener,
            app,
            limits,
            ..
        } = self;
        let builder = http1_builder(&limits);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut permit: Option<OwnedSemaphorePermit> = None;
        tokio::pin!(shutdown);

        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            tracing::error!(error = %e, "connection task panicked");
                        }
                    }
                }
                // Take a connection slot first, then accept: when all slots are busy,
                // new connections wait in the kernel's listen backlog.
                p = Arc::clone(&slots).acquire_owned(), if permit.is_none() => {
                    permit = p.ok();
                }
                accepted = listener.accept(), if permit.is_some() => match accepted {
                    Ok((stream, peer)) => {
                        let Some(slot) = permit.take() else { continue };
                        connections.spawn(serve_connection(
                            builder.clone(),
                            stream,
                            peer,
                            Arc::clone(&app),
                            limits.idle_timeout,
                            stop_rx.clone(),
                            slot,
                        ));
                    }
                    Err(e) => {
                        // E.g. EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }

        drop(listener);
        let in_flight = connections.len();
        tracing::info!(in_flight, "shutting down: no longer accepting connections");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(limits.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = connections.len(),
                "shutdown grace period over; dropping remaining connections"
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUF));
    builder
}

/// Serve one connection until it ends, its idle timeout fires, or shutdown is
/// requested (then the request in progress, if any, is finished first).
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set_nodelay failed");
    }
    let activity = Activity::new();
    let io = TokioIo::new(TrackedIo::new(stream, Arc::clone(&activity)));
    let service = service_fn(move |req| Arc::clone(&app).handle(req));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);

    let mut stopping = false;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    // Bounded: every iteration either ends the connection, sets `stopping` (at most
    // once), or moves the idle deadline forward past the last activity.
    loop {
        if !stopping && *stop.borrow() {
            stopping = true;
            conn.as_mut().graceful_shutdown();
        }
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                return;
            }
            () = idle.as_mut() => {
                let deadline = activity.last() + idle_timeout;
                if Instant::now() >= deadline {
                    tracing::debug!(%peer, "closing idle connection");
                    return;
                }
                idle.as_mut().reset(deadline.into());
            }
            changed = stop.changed(), if !stopping => {
                if changed.is_err() {
                    // The server is gone: treat as shutdown.
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

//! The listener: accept loop, connection caps and shedding (`conns.rs`), per-connection
//! timeouts, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Limits, ServerConfig};
use crate::conns::{ConnGuard, Conns};
use crate::limits::TrackedIo;
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
        let static_files =
            StaticFiles::new(&config.root)?.with_stream_budget(config.limits.stream_buffer_bytes);
        let listener = listen(config.listen).map_err(|e| {
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
        let conns = Conns::new(limits.max_connections, limits.max_connections_per_ip);
        // Shed connections stay in the table until their tasks end (at their next
        // poll); past this many the loop waits for one to end before accepting more.
        let table_cap = limits.max_connections + (limits.max_connections / 8).max(8);
        let timeouts = Timeouts {
            idle: limits.idle_timeout,
            header: limits.header_read_timeout,
            busy_header: limits
                .busy_header_read_timeout
                .min(limits.header_read_timeout),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);

        loop {
            let room = conns.open() < table_cap;
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                // Accept at once, even at the connection cap: admitting sheds the open
                // connection least likely to be a working client (see `conns.rs`), so
                // nobody waits in the listen backlog behind hostile connections.
                accepted = listener.accept(), if room => match accepted {
                    Ok((stream, peer)) => {
                        let guard = conns.admit(peer.ip());
                        connections.spawn(serve_connection(
                            builder.clone(),
                            stream,
                            peer,
                            Arc::clone(&app),
                            timeouts,
                            stop_rx.clone(),
                            conns.busy(),
                            guard,
                        ));
                        // Collect finished connections without ever delaying an accept
                        // by more than a bounded amount of bookkeeping.
                        for _ in 0..64 {
                            match connections.try_join_next() {
                                Some(done) => report_panic(done),
                                None => break,
                            }
                        }
                    }
                    Err(e) if is_out_of_descriptors(&e) => {
                        // Free a descriptor the way the connection cap would.
                        let shed = conns.shed_one();
                        tracing::warn!(error = %e, shed, "accept failed: out of file descriptors");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    report_panic(done);
                }
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

/// Connections the kernel may queue before the accept loop takes them (capped by the
/// system's `net.core.somaxconn`). The loop accepts at once, even at the connection cap,
/// so the queue only absorbs bursts, such as many clients reconnecting together.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn report_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "connection task panicked");
        }
    }
}

/// Unsent bytes a connection's kernel send queue may hold before the socket stops
/// taking more (`TCP_NOTSENT_LOWAT`). Bytes in flight are not counted, so a fast
/// client keeps its full window; a slow reader can no longer make the server copy
/// megabytes into a send buffer that it then drains a few bytes at a time (with the
/// default, each of 800 slow readers took up to 4 MiB of kernel memory, and filling
/// them stalled the server for seconds).
pub const UNSENT_LOWAT: u32 = 128 * 1024;

#[cfg(target_os = "linux")]
fn limit_unsent_bytes(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LOWAT)
}

#[cfg(not(target_os = "linux"))]
fn limit_unsent_bytes(_stream: &TcpStream) -> io::Result<()> {
    Ok(())
}

/// EMFILE or ENFILE.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// The per-connection deadlines.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    idle: Duration,
    header: Duration,
    busy_header: Duration,
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

/// Serve one connection until it ends, its idle timeout or header deadline passes, it
/// is shed, or shutdown is requested (then the request in progress, if any, is
/// finished first).
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    mut busy: watch::Receiver<bool>,
    guard: ConnGuard,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set_nodelay failed");
    }
    if let Err(e) = limit_unsent_bytes(&stream) {
        tracing::debug!(%peer, error = %e, "TCP_NOTSENT_LOWAT failed");
    }
    let state = Arc::clone(guard.state());
    let activity = Arc::clone(state.activity());
    let io = TokioIo::new(TrackedIo::new(stream, Arc::clone(&activity)));
    let svc_state = Arc::clone(&state);
    let service = service_fn(move |req| {
        svc_state.begin_request();
        let app = Arc::clone(&app);
        let ended = Arc::clone(&svc_state);
        async move {
            let response = app.handle(req).await?;
            Ok::<_, Infallible>(response.map(|body| body.with_request_end(ended)))
        }
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);

    let mut stopping = false;
    let mut busy_open = true;
    let header_limit = |busy: bool| {
        if busy {
            timeouts.busy_header
        } else {
            timeouts.header
        }
    };
    let timer = tokio::time::sleep(header_limit(*busy.borrow()).min(timeouts.idle));
    tokio::pin!(timer);
    // Bounded: every iteration ends the connection, sets `stopping` (at most once),
    // moves the timer forward, or follows a change of the busy state (which needs the
    // connection count to cross a threshold).
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
            () = state.shed_signal() => {
                tracing::debug!(%peer, "connection shed to make room");
                return;
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                let limit = header_limit(*busy.borrow());
                let idle_deadline = activity.last() + timeouts.idle;
                if now >= idle_deadline {
                    tracing::debug!(%peer, "closing idle connection");
                    return;
                }
                let next = if state.in_request() {
                    // Look again when the response may have ended.
                    idle_deadline.min(now + limit)
                } else {
                    let head_deadline = state.phase_since() + limit;
                    if now >= head_deadline {
                        tracing::debug!(%peer, "no complete request head in time");
                        return;
                    }
                    idle_deadline.min(head_deadline)
                };
                timer.as_mut().reset(next.into());
            }
            changed = busy.changed(), if busy_open => {
                if changed.is_err() {
                    busy_open = false;
                }
                // Re-check the deadlines under the new state right away.
                timer.as_mut().reset(tokio::time::Instant::now());
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

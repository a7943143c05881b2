//! A tiny hyper HTTP/1 test server on 127.0.0.1 (port 0) with scripted routes and a static directory.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What the server does for a path.
#[derive(Clone, Debug)]
pub enum Route {
    /// 200 with this body and a Content-Length.
    Ok(Vec<u8>),
    /// 200 with this body, chunked (no Content-Length).
    Chunked(Vec<u8>),
    /// 200 with a never-ending chunked body.
    Endless,
    /// This status, empty body.
    Status(u16),
    /// Waits before answering 200 with this body.
    Delay(Duration, Vec<u8>),
    /// Answers `status` for the first `failures` requests, then 200 with `body`.
    FailThenOk {
        /// Failures left.
        failures: u32,
        /// Failure status.
        status: u16,
        /// Eventual body.
        body: Vec<u8>,
    },
    /// 302 to this location.
    Redirect(String),
}

struct State {
    routes: Mutex<HashMap<String, Route>>,
    hits: Mutex<Vec<String>>,
    dir: Option<PathBuf>,
}

/// A running server; stops when dropped.
pub struct TestServer {
    /// Where it listens (always 127.0.0.1).
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

type ResBody = BoxBody<Bytes, Infallible>;

/// A body made of chunks (no size hint, so hyper sends it chunked), or endless.
struct Chunks {
    chunks: VecDeque<Bytes>,
    endless: bool,
}

static CHUNK: [u8; 16384] = [b'x'; 16384];

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.endless {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))));
        }
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

fn full(status: u16, body: Vec<u8>) -> Response<ResBody> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

fn decode(path: &str) -> Option<String> {
    let bytes = petrel_client::fetch::decode_path_segment(path)?;
    String::from_utf8(bytes).ok()
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    let path = req.uri().path().to_string();
    state.hits.lock().unwrap().push(path.clone());
    let route = {
        let mut routes = state.routes.lock().unwrap();
        match routes.get_mut(&path) {
            Some(Route::FailThenOk {
                failures,
                status,
                body,
            }) => {
                if *failures > 0 {
                    *failures -= 1;
                    Some(Route::Status(*status))
                } else {
                    Some(Route::Ok(body.clone()))
                }
            }
            Some(r) => Some(r.clone()),
            None => None,
        }
    };
    let resp = match route {
        Some(Route::Ok(b)) => full(200, b),
        Some(Route::Status(s)) => full(s, Vec::new()),
        Some(Route::Delay(d, b)) => {
            tokio::time::sleep(d).await;
            full(200, b)
        }
        Some(Route::Chunked(b)) => {
            let chunks = b.chunks(1000).map(Bytes::copy_from_slice).collect();
            Response::new(
                Chunks {
                    chunks,
                    endless: false,
                }
                .boxed(),
            )
        }
        Some(Route::Endless) => Response::new(
            Chunks {
                chunks: VecDeque::new(),
                endless: true,
            }
            .boxed(),
        ),
        Some(Route::Redirect(loc)) => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", loc)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        Some(Route::FailThenOk { .. }) => unreachable!(),
        None => match (&state.dir, decode(&path)) {
            (Some(dir), Some(p)) if !p.split('/').any(|s| s == "..") => {
                match std::fs::read(dir.join(p.trim_start_matches('/'))) {
                    Ok(b) => full(200, b),
                    Err(_) => full(404, Vec::new()),
                }
            }
            _ => full(404, Vec::new()),
        },
    };
    Ok(resp)
}

impl TestServer {
    /// A server with scripted routes only.
    pub fn start() -> Self {
        Self::start_with_dir(None)
    }

    /// A server that also serves files under `dir` for unscripted paths.
    pub fn serve_dir(dir: PathBuf) -> Self {
        Self::start_with_dir(Some(dir))
    }

    fn start_with_dir(dir: Option<PathBuf>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            routes: Mutex::new(HashMap::new()),
            hits: Mutex::new(Vec::new()),
            dir,
        });
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let st = st.clone();
                            tokio::spawn(async move {
                                let svc = service_fn(move |req| handle(st.clone(), req));
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        TestServer {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Scripts a path.
    pub fn route(&self, path: &str, route: Route) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), route);
    }

    /// How many requests `path` received.
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }

    /// Every requested path, in order.
    pub fn all_hits(&self) -> Vec<String> {
        self.state.hits.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

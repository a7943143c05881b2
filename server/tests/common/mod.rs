//! Shared test harness: a fixture tree, an in-process server on 127.0.0.1:0, and a
//! minimal raw HTTP/1.1 client (raw, so tests can send targets no URI type would build).
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use petrel_server::{Limits, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single network step in a test.
pub const STEP: Duration = Duration::from_secs(10);

/// A sha256-looking prefix for consistent-snapshot target names.
pub const HASH: &str = "5f3c1a0e9b7d2c4f6a8e0b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a";

/// Marker placed in files that must never be served.
pub const SECRET: &str = "TOP-SECRET-DO-NOT-SERVE";

/// Size of the large (streamed) target.
pub const LARGE_LEN: usize = 300_000;

/// Deterministic content of `len` bytes, different per `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Paths of interesting fixture files, relative to the tree root.
pub fn large_target() -> String {
    format!("targets/apps/acme/app/1.0/{HASH}.app.bin")
}

/// A small consistent-snapshot JSON target.
pub fn small_target() -> String {
    format!("targets/groups/{HASH}.g1.json")
}

/// A running in-process server with its fixture tree.
pub struct TestServer {
    /// Bound address (always on 127.0.0.1).
    pub addr: SocketAddr,
    /// The tree root.
    pub root: PathBuf,
    /// Holds the temp dir (tree + "outside" files) alive.
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl TestServer {
    /// Start a server with default limits.
    pub async fn start() -> TestServer {
        Self::start_with(Limits::default()).await
    }

    /// Start a server with the given limits on a fresh fixture tree.
    pub async fn start_with(limits: Limits) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tree");
        build_fixture_tree(dir.path(), &root);
        let mut config = ServerConfig::new(&root, "127.0.0.1:0".parse().unwrap());
        config.limits = limits;
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback());
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            root,
            dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Ask the server to shut down (returns immediately).
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Wait (bounded by `limit`) for the server task to finish; true if it did.
    pub async fn wait_stopped(&mut self, limit: Duration) -> bool {
        let Some(handle) = self.handle.as_mut() else {
            return true;
        };
        match tokio::time::timeout(limit, handle).await {
            Ok(res) => {
                res.expect("server task").expect("serve result");
                self.handle = None;
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger_shutdown();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Build the fixture tree at `root` plus files outside it under `base`.
pub fn build_fixture_tree(base: &Path, root: &Path) {
    let m = root.join("metadata");
    write(
        &m.join("1.root.json"),
        br#"{"signed":{"_type":"root","version":1}}"#,
    );
    write(
        &m.join("2.root.json"),
        br#"{"signed":{"_type":"root","version":2}}"#,
    );
    write(
        &m.join("root.json"),
        br#"{"signed":{"_type":"root","version":2}}"#,
    );
    write(
        &m.join("timestamp.json"),
        br#"{"signed":{"_type":"timestamp","version":7}}"#,
    );
    write(
        &m.join("7.snapshot.json"),
        br#"{"signed":{"_type":"snapshot","version":7}}"#,
    );
    write(
        &m.join("5.targets.json"),
        br#"{"signed":{"_type":"targets","version":5}}"#,
    );
    write(
        &m.join("3.apps.json"),
        br#"{"signed":{"_type":"targets","version":3}}"#,
    );
    // Files `petrel-repo publish` is in the middle of writing.
    write(&m.join("timestamp.json.tmp"), SECRET.as_bytes());
    write(&m.join(".timestamp.json.partial"), SECRET.as_bytes());
    write(&root.join("targets/apps/.staging/x.bin"), SECRET.as_bytes());

    write(&root.join(large_target()), &pattern(LARGE_LEN, 1));
    write(
        &root.join(small_target()),
        br#"{"group":"g1","apps":{"app":"1.0"}}"#,
    );
    write(
        &root.join("targets/plain.bin"),
        b"plain target without hash prefix",
    );

    // Inside the root but outside the served directories.
    write(&root.join("keys/root.pem"), SECRET.as_bytes());
    // Outside the root entirely.
    write(&base.join("outside/secret.txt"), SECRET.as_bytes());

    let t = root.join("targets");
    std::os::unix::fs::symlink("../../outside/secret.txt", t.join("escape.bin")).unwrap();
    std::os::unix::fs::symlink(base.join("outside"), t.join("outside-dir")).unwrap();
    std::os::unix::fs::symlink("../keys/root.pem", t.join("keys-link.pem")).unwrap();
    std::os::unix::fs::symlink("../metadata/timestamp.json.tmp", t.join("tmp-link.json")).unwrap();
    std::os::unix::fs::symlink("plain.bin", t.join("inner-link.bin")).unwrap();
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header (lower-cased name, value) pairs in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Body as lossy UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connect to the test server.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// Build a request head for `method path` with extra headers.
pub fn request_head(method: &str, path: &str, headers: &[(&str, &str)], close: bool) -> String {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    if close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s
}

/// Read only the response head (status + headers) from `stream`; returns it and any
/// body bytes already read past it.
pub async fn read_head(stream: &mut TcpStream) -> io::Result<(RawResponse, Vec<u8>)> {
    // One deadline for the whole head: bounded in time, and in size below.
    let deadline = tokio::time::Instant::now() + STEP;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 256 * 1024 {
            return Err(io::Error::other("response head too large"));
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read head timed out"))??;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = buf[end + 4..].to_vec();
    Ok((
        RawResponse {
            status,
            headers,
            body: Vec::new(),
        },
        rest,
    ))
}

/// Read one full response (head + Content-Length body) from `stream`.
pub async fn read_response(stream: &mut TcpStream, is_head: bool) -> io::Result<RawResponse> {
    let (mut resp, mut body) = read_head(stream).await?;
    let len: usize = if is_head || resp.status == 304 || resp.status == 204 {
        0
    } else {
        resp.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + STEP;
    let mut chunk = vec![0u8; 64 * 1024];
    while body.len() < len {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read body timed out"))??;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    resp.body = body;
    Ok(resp)
}

/// Send raw bytes on a new connection and read one response.
pub async fn send_raw(addr: SocketAddr, raw: &[u8], is_head: bool) -> io::Result<RawResponse> {
    let mut s = connect(addr).await;
    tokio::time::timeout(STEP, s.write_all(raw))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
    read_response(&mut s, is_head).await
}

/// One request on a fresh connection (`Connection: close`).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let raw = request_head(method, path, headers, true);
    send_raw(addr, raw.as_bytes(), method == "HEAD")
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// GET with extra headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    request(addr, "GET", path, headers).await
}

/// Read until EOF or error, bounded by `limit`; returns bytes read and whether the peer
/// closed (EOF or reset) within the limit.
pub async fn drain_until_closed(stream: &mut TcpStream, limit: Duration) -> (usize, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut total = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (total, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
            Ok(Ok(n)) => total += n,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

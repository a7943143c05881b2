//! A fault-injecting HTTP/1.1 proxy for end-to-end tests: it forwards to an upstream server
//! on loopback (`petrel-server`, nginx, [`crate::StaticServer`]…) and, for requests whose
//! path matches a pattern (or for the next N requests), cuts bodies short, resets or stalls
//! connections, answers errors or corrupts bytes.
//!
//! ```no_run
//! use petrel_tests::fault_proxy::{Fault, FaultProxy};
//! # let upstream = "http://127.0.0.1:8080";
//! let proxy = FaultProxy::start(upstream).unwrap();
//! // The first request for a target gets 100 KiB and then a clean close.
//! proxy.inject_times("/targets/*", Fault::Truncate { after: 100 * 1024 }, 1);
//! // … point the client at proxy.url("/metadata") and proxy.url("/targets") …
//! assert!(proxy.requests().iter().any(|r| r.range.is_some()), "the client resumed");
//! ```
//!
//! * Everything else passes through unchanged, including `Range` headers and 206 answers
//!   (`Content-Range` is forwarded).
//! * Every request is recorded ([`FaultProxy::requests`]): its request line, its `Range`
//!   header, the status sent back and the fault applied.
//! * One request per connection (`Connection: close`). Bodies of known length are streamed;
//!   chunked or unframed upstream bodies are read whole first (at most 256 MiB).
//! * It listens on `127.0.0.1:0`, serves at most 64 connections at once, bounds every read
//!   and write with a 10 s timeout, and stops (waiting for its connections) when dropped.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to a request instead of passing it through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Sends the response headers (with the full `Content-Length`) and `after` body bytes,
    /// then closes the connection cleanly: the client sees a truncated body. (Here and in
    /// `Reset` and `Stall`, a body no longer than `after` is sent whole.)
    Truncate {
        /// Body bytes sent.
        after: u64,
    },
    /// Sends the response headers and `after` body bytes, then resets the connection (TCP
    /// RST).
    Reset {
        /// Body bytes sent.
        after: u64,
    },
    /// Sends the response headers and `after` body bytes, then sends nothing for
    /// `duration`, then the rest.
    Stall {
        /// Body bytes sent before the stall.
        after: u64,
        /// How long the stall lasts.
        duration: Duration,
    },
    /// Answers with this status (e.g. 500, 404) and a short body, without asking upstream.
    Status(u16),
    /// Replaces the resource's bytes at offset `at` with `bytes` wherever a response body
    /// covers them (offsets are positions in the resource, so a 206 answer is corrupted
    /// consistently with a 200).
    Corrupt {
        /// The first resource offset replaced.
        at: u64,
        /// The replacement bytes.
        bytes: Vec<u8>,
    },
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::Truncate { .. } => "truncate",
            Fault::Reset { .. } => "reset",
            Fault::Stall { .. } => "stall",
            Fault::Status(_) => "status",
            Fault::Corrupt { .. } => "corrupt",
        }
    }
}

/// One request the proxy received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedRequest {
    /// The request line, e.g. `GET /targets/a.bin HTTP/1.1`.
    pub request_line: String,
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// The `Range` header, if any, e.g. `bytes=1000-`.
    pub range: Option<String>,
    /// The status sent back (`None` when the connection failed before).
    pub status: Option<u16>,
    /// The fault applied ([`Fault`]'s kind: `truncate`, `reset`, `stall`, `status`,
    /// `corrupt`), if any.
    pub fault: Option<&'static str>,
}

struct Rule {
    pattern: String,
    fault: Fault,
    /// How many more requests it applies to (`None`: every one).
    remaining: Option<u32>,
}

struct Upstream {
    addr: SocketAddr,
    host: String,
    prefix: String,
}

struct State {
    upstream: Upstream,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<ProxiedRequest>>,
    stop: AtomicBool,
    active: AtomicUsize,
}

/// A running fault-injecting proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

const MAX_CONNECTIONS: usize = 64;
const MAX_HEAD: usize = 16 * 1024;
const MAX_BUFFERED_BODY: u64 = 256 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream`, an `http://host:port`
    /// base URL (with an optional path prefix, prepended to every forwarded path) of a
    /// server on loopback.
    pub fn start(upstream: &str) -> io::Result<FaultProxy> {
        let upstream = parse_upstream(upstream)?;
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream,
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        });
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, st))?;
        Ok(FaultProxy {
            addr,
            state,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Applies `fault` to every request from now on whose path (without the query) matches
    /// `pattern`, where `*` matches any run of characters (including `/`).
    pub fn inject(&self, pattern: &str, fault: Fault) {
        self.add_rule(pattern, fault, None);
    }

    /// Applies `fault` to the next `times` requests whose path matches `pattern`.
    pub fn inject_times(&self, pattern: &str, fault: Fault, times: u32) {
        self.add_rule(pattern, fault, Some(times));
    }

    /// Applies `fault` to the next `times` requests, whatever their path.
    pub fn inject_next(&self, times: u32, fault: Fault) {
        self.add_rule("*", fault, Some(times));
    }

    /// Removes every fault: from now on everything passes through.
    pub fn clear_faults(&self) {
        self.state.rules.lock().expect("rules lock").clear();
    }

    fn add_rule(&self, pattern: &str, fault: Fault, remaining: Option<u32>) {
        self.state.rules.lock().expect("rules lock").push(Rule {
            pattern: pattern.to_string(),
            fault,
            remaining,
        });
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.state.log.lock().expect("log lock").clone()
    }

    /// The requests received so far that had a `Range` header.
    pub fn range_requests(&self) -> Vec<ProxiedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.range.is_some())
            .collect()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.state.log.lock().expect("log lock").clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_upstream(url: &str) -> io::Result<Upstream> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {why}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// upstreams are supported"))?;
    let (host, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| bad("host does not resolve"))?;
    if !addr.ip().is_loopback() {
        return Err(bad("the upstream must be on loopback"));
    }
    Ok(Upstream {
        addr,
        host: host.to_string(),
        prefix: prefix.to_string(),
    })
}

/// Whether `path` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, path: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), path.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == s[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !state.stop.load(Ordering::SeqCst) {
        conns.retain(|c| !c.is_finished());
        match listener.accept() {
            Ok((stream, _)) => {
                if state.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                state.active.fetch_add(1, Ordering::SeqCst);
                let st = Arc::clone(&state);
                let spawned = std::thread::Builder::new()
                    .name("fault-proxy-conn".into())
                    .spawn(move || {
                        let _ = handle(stream, &st);
                        st.active.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(t) => conns.push(t),
                    Err(_) => {
                        state.active.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// The request head, peeked (not consumed), so that a reset can leave it unread: closing a
/// socket with unread received data makes the kernel send RST instead of FIN.
fn peek_head(stream: &TcpStream) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEAD];
    loop {
        let n = stream.peek(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 4);
            return Ok(buf);
        }
        if n == buf.len() || Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long or incomplete",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Headers not forwarded in either direction (hop-by-hop, or replaced by the proxy).
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn handle(client: TcpStream, st: &State) -> io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = peek_head(&client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let range = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.clone());
    let fault = {
        let mut rules = st.rules.lock().expect("rules lock");
        let bare = path.split('?').next().unwrap_or("");
        let found = rules
            .iter_mut()
            .find(|r| r.remaining != Some(0) && glob(&r.pattern, bare));
        let fault = found.map(|r| {
            if let Some(n) = &mut r.remaining {
                *n -= 1;
            }
            r.fault.clone()
        });
        rules.retain(|r| r.remaining != Some(0));
        fault
    };
    let index = {
        let mut log = st.log.lock().expect("log lock");
        log.push(ProxiedRequest {
            request_line: request_line.clone(),
            method: method.clone(),
            path: path.clone(),
            range,
            status: None,
            fault: fault.as_ref().map(Fault::name),
        });
        log.len() - 1
    };
    let record_status = |status: u16| {
        if let Some(r) = st.log.lock().expect("log lock").get_mut(index) {
            r.status = Some(status);
        }
    };
    // Consume the head, except for a reset, which relies on it staying unread.
    if !matches!(fault, Some(Fault::Reset { .. })) {
        (&client).read_exact(&mut vec![0u8; head.len()])?;
    }
    let mut out = &client;
    if let Some(Fault::Status(status)) = fault {
        let body = format!("injected {status}\n");
        write!(
            out,
            "HTTP/1.1 {status} Injected\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        if method != "HEAD" {
            out.write_all(body.as_bytes())?;
        }
        out.flush()?;
        record_status(status);
        let _ = client.shutdown(Shutdown::Write);
        return Ok(());
    }

    // Forward.
    let upstream = match TcpStream::connect_timeout(&st.upstream.addr, IO_TIMEOUT) {
        Ok(u) => u,
        Err(e) => {
            write!(
                out,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            record_status(502);
            return Err(e);
        }
    };
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    upstream.set_write_timeout(Some(IO_TIMEOUT))?;
    {
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            st.upstream.prefix, st.upstream.host
        );
        for (n, v) in &headers {
            if !hop_by_hop(n) {
                req.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        req.push_str("\r\n");
        (&upstream).write_all(req.as_bytes())?;
    }
    let mut up = BufReader::new(upstream);
    let mut status_line = String::new();
    up.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad upstream status line"))?;
    let mut resp_headers = Vec::new();
    for _ in 0..200 {
        let mut line = String::new();
        if up.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            resp_headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        resp_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let declared: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    // Where the body starts in the resource (for corruption at resource offsets).
    let start: u64 = if status == 206 {
        header("content-range")
            .and_then(|v| v.trim().strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    // A body of unknown length is read whole, so the client gets a Content-Length (and can
    // tell a truncated body from a complete one).
    let buffered: Option<Vec<u8>> = if no_body || (declared.is_some() && !chunked) {
        None
    } else if chunked {
        Some(read_chunked(&mut up)?)
    } else {
        let mut b = Vec::new();
        (&mut up).take(MAX_BUFFERED_BODY).read_to_end(&mut b)?;
        Some(b)
    };
    let length = match &buffered {
        Some(b) => b.len() as u64,
        None => declared.unwrap_or(0),
    };
    let mut head = status_line.trim_end().to_string();
    head.push_str("\r\n");
    for (n, v) in &resp_headers {
        if !hop_by_hop(n) {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    if !no_body || declared.is_some() {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    out.write_all(head.as_bytes())?;
    record_status(status);
    if no_body {
        out.flush()?;
        return Ok(());
    }
    let mut body: Box<dyn Read + '_> = match buffered {
        Some(b) => Box::new(io::Cursor::new(b)),
        None => Box::new((&mut up).take(length)),
    };
    let cut_at = match &fault {
        Some(Fault::Truncate { after } | Fault::Reset { after } | Fault::Stall { after, .. }) => {
            Some(*after)
        }
        _ => None,
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut stalled = false;
    loop {
        if !stalled && cut_at.is_some_and(|c| sent >= c) {
            match &fault {
                Some(Fault::Truncate { .. }) => return close_cleanly(&client),
                Some(Fault::Reset { .. }) => return reset(&client),
                Some(Fault::Stall { duration, .. }) => {
                    out.flush()?;
                    stall(st, *duration);
                    stalled = true;
                }
                _ => {}
            }
        }
        let mut want = buf.len() as u64;
        if let Some(c) = cut_at.filter(|_| !stalled) {
            want = want.min(c - sent);
        }
        let n = match body.read(&mut buf[..want as usize]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(Fault::Corrupt { at, bytes }) = &fault {
            corrupt(&mut buf[..n], start + sent, *at, bytes);
        }
        out.write_all(&buf[..n])?;
        sent += n as u64;
    }
    // (A body no longer than a fault's `after` is sent whole.)
    out.flush()?;
    let _ = client.shutdown(Shutdown::Write);
    Ok(())
}

/// Replaces the bytes of `chunk` (which starts at resource offset `chunk_start`) that the
/// range `at..at + bytes.len()` covers.
fn corrupt(chunk: &mut [u8], chunk_start: u64, at: u64, bytes: &[u8]) {
    for (i, b) in chunk.iter_mut().enumerate() {
        let pos = chunk_start + i as u64;
        if pos >= at && pos < at + bytes.len() as u64 {
            *b = bytes[(pos - at) as usize];
        }
    }
}

fn close_cleanly(client: &TcpStream) -> io::Result<()> {
    let mut w = client;
    w.flush()?;
    let _ = client.shutdown(Shutdown::Write);
    Ok(())
}

/// Lets the client read what was sent, then closes with the request head unread: RST.
fn reset(client: &TcpStream) -> io::Result<()> {
    let mut w = client;
    w.flush()?;
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

/// Sleeps for `duration`, waking early when the proxy stops.
fn stall(st: &State, duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until && !st.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
}

/// Reads a chunked body whole (at most [`MAX_BUFFERED_BODY`] bytes).
fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            for _ in 0..100 {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len() as u64 + size > MAX_BUFFERED_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback upstream serving one body at every path, honouring `Range: bytes=N-`
    /// with 206 (and answering chunked at `/chunked`).
    struct Upstream {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Upstream {
        fn start(body: Vec<u8>) -> Upstream {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let s = Arc::clone(&stop);
            let thread = std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = serve_one(stream, &body);
                }
            });
            Upstream {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn serve_one(stream: TcpStream, body: &[u8]) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let mut offset = None;
        for _ in 0..100 {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                offset = v
                    .trim()
                    .strip_suffix('-')
                    .and_then(|n| n.parse::<usize>().ok());
            }
        }
        let mut w = &stream;
        if line.contains("/chunked") {
            write!(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            for c in body.chunks(1000) {
                write!(w, "{:x}\r\n", c.len())?;
                w.write_all(c)?;
                write!(w, "\r\n")?;
            }
            return write!(w, "0\r\n\r\n");
        }
        match offset {
            Some(o) => {
                let rest = &body[o..];
                write!(
                    w,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {o}-{}/{}\r\nContent-Length: {}\r\n\r\n",
                    body.len() - 1,
                    body.len(),
                    rest.len()
                )?;
                w.write_all(rest)
            }
            None => {
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )?;
                w.write_all(body)
            }
        }
    }

    /// What a raw client got: status, headers, body, and the error that ended the read.
    struct Got {
        status: u16,
        head: String,
        body: Vec<u8>,
        error: Option<io::ErrorKind>,
    }

    fn get(proxy: &FaultProxy, path: &str, range: Option<&str>) -> Got {
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{range}\r\n").unwrap();
        let mut resp = Vec::new();
        let mut buf = [0u8; 8192];
        let mut error = None;
        for _ in 0..100_000 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
                Err(e) => {
                    error = Some(e.kind());
                    break;
                }
            }
        }
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&resp[..split]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        Got {
            status,
            head,
            body: resp[split + 4..].to_vec(),
            error,
        }
    }

    fn body() -> Vec<u8> {
        (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn glob_matches_stars_across_slashes() {
        assert!(glob("*", "/a/b"));
        assert!(glob("/targets/*", "/targets/apps/x.bin"));
        assert!(glob("/t/*.bin", "/t/a/b.bin"));
        assert!(!glob("/t/*.bin", "/t/a/b.json"));
        assert!(glob("/exact", "/exact"));
        assert!(!glob("/exact", "/exact/more"));
    }

    #[test]
    fn passes_ranges_and_206_through_and_records_them() {
        let data = body();
        let up = Upstream::start(data.clone());
        let proxy = FaultProxy::start(&format!("http://{}", up.addr)).unwrap();
        let whole = get(&proxy, "/f", None);
        assert_eq!(
            (whole.status, whole.body.as_slice()),
            (200, data.as_slice())
        );
        let part = get(&proxy, "/f", Some("bytes=150000-"));
        assert_eq!(part.status, 206);
        assert!(
            part.head
                .contains("Content-Range: bytes 150000-199999/200000"),
            "{}",
            part.head
        );
        assert_eq!(part.body, data[150_000..]);
        // A chunked upstream body reaches the client with a Content-Length.
        let chunked = get(&proxy, "/chunked", None);
        assert!(
            chunked.head.contains("Content-Length: 200000"),
            "{}",
            chunked.head
        );
        assert_eq!(chunked.body, data);
        let log = proxy.requests();
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].request_line, "GET /f HTTP/1.1");
        assert_eq!(log[1].range.as_deref(), Some("bytes=150000-"));
        assert_eq!(log[1].status, Some(206));
        assert_eq!(proxy.range_requests(), [log[1].clone()]);
    }

    #[test]
    fn injects_each_fault_by_pattern_and_count() {
        let data = body();
        let up = Upstream::start(data.clone());
        let proxy = FaultProxy::start(&format!("http://{}", up.addr)).unwrap();

        proxy.inject_times("/targets/*", Fault::Status(500), 1);
        proxy.inject_next(1, Fault::Status(404));
        assert_eq!(get(&proxy, "/targets/a", None).status, 500);
        assert_eq!(get(&proxy, "/metadata/x", None).status, 404);
        assert_eq!(get(&proxy, "/targets/a", None).status, 200, "both used up");

        proxy.inject_times("/t", Fault::Truncate { after: 1000 }, 1);
        let cut = get(&proxy, "/t", None);
        assert!(cut.head.contains("Content-Length: 200000"), "{}", cut.head);
        assert_eq!(cut.body, data[..1000]);
        assert_eq!(cut.error, None, "closed cleanly");

        proxy.inject_times("/r", Fault::Reset { after: 1000 }, 1);
        let reset = get(&proxy, "/r", None);
        assert_eq!(reset.error, Some(io::ErrorKind::ConnectionReset));
        assert!(reset.body.len() <= 1000);

        proxy.inject_times(
            "/s",
            Fault::Stall {
                after: 10,
                duration: Duration::from_millis(300),
            },
            1,
        );
        let started = Instant::now();
        let stalled = get(&proxy, "/s", None);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(stalled.body, data, "the rest follows the stall");

        // Corruption is at resource offsets, so a ranged answer is corrupted alike.
        proxy.inject(
            "/c",
            Fault::Corrupt {
                at: 150_010,
                bytes: vec![0xEE; 3],
            },
        );
        let mut want = data.clone();
        want[150_010..150_013].copy_from_slice(&[0xEE; 3]);
        assert_eq!(get(&proxy, "/c", None).body, want);
        assert_eq!(
            get(&proxy, "/c", Some("bytes=150000-")).body,
            want[150_000..]
        );
        proxy.clear_faults();
        assert_eq!(get(&proxy, "/c", None).body, data);

        let faults: Vec<_> = proxy.requests().iter().map(|r| r.fault).collect();
        assert_eq!(
            faults,
            [
                Some("status"),
                Some("status"),
                None,
                Some("truncate"),
                Some("reset"),
                Some("stall"),
                Some("corrupt"),
                Some("corrupt"),
                None
            ]
        );
    }

    #[test]
    fn petrel_http_transport_resumes_through_a_truncation() {
        use petrel_client::fetch::{HttpConfig, HttpTransport, Transport};
        let data = body();
        let up = Upstream::start(data.clone());
        let proxy = FaultProxy::start(&format!("http://{}", up.addr)).unwrap();
        proxy.inject_times("/f", Fault::Truncate { after: 70_000 }, 1);
        let t = HttpTransport::new(HttpConfig {
            retries: 0,
            native_roots: false,
            ..HttpConfig::default()
        })
        .unwrap();
        let url = proxy.url("/f");
        let mut got = Vec::new();
        let err = t.fetch(&url, 200_000, &mut got).unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(got.len(), 70_000, "{err}");
        let r = t.fetch_from(&url, 70_000, 200_000, &mut got).unwrap();
        assert_eq!(r.start, 70_000);
        assert_eq!(got, data);
        assert_eq!(
            proxy.range_requests()[0].range.as_deref(),
            Some("bytes=70000-")
        );
    }

    #[test]
    fn refuses_upstreams_off_loopback() {
        assert!(FaultProxy::start("http://192.0.2.1:80").is_err());
        assert!(FaultProxy::start("https://127.0.0.1:80").is_err());
    }
}

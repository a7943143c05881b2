//! The HTTP transport against a local hyper server on 127.0.0.1: streaming, limits, retries, timeouts, and a full update over HTTP.

mod support;

use std::time::{Duration, Instant};

use petrel_client::fetch::{FetchError, HttpConfig, HttpSetupError, HttpTransport, Transport};
use support::server::{Route, TestServer};
use support::*;
use tempfile::TempDir;

fn quick() -> HttpConfig {
    HttpConfig {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        retries: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        native_roots: false,
        ..HttpConfig::default()
    }
}

fn transport() -> HttpTransport {
    HttpTransport::new(quick()).unwrap()
}

#[test]
fn http_fetch_streams_the_body_into_the_sink() {
    let s = TestServer::start();
    let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    s.route("/a", Route::Ok(body.clone()));
    s.route("/chunked", Route::Chunked(body.clone()));
    let t = transport();
    for path in ["/a", "/chunked"] {
        let mut out = Vec::new();
        let n = t.fetch(&s.url(path), body.len() as u64, &mut out).unwrap();
        assert_eq!(n, body.len() as u64);
        assert_eq!(out, body, "{path}");
    }
}

#[test]
fn http_404_403_and_410_mean_not_found_and_are_not_retried() {
    let s = TestServer::start();
    s.route("/gone", Route::Status(410));
    s.route("/forbidden", Route::Status(403));
    let t = transport();
    for path in ["/missing", "/gone", "/forbidden"] {
        let err = t.fetch(&s.url(path), 100, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FetchError::NotFound { .. }), "{path}: {err}");
        assert_eq!(s.hits(path), 1, "{path} was retried");
    }
}

#[test]
fn http_declared_length_over_the_limit_is_refused_before_reading() {
    let s = TestServer::start();
    s.route("/big", Route::Ok(vec![1; 10_000]));
    let mut out = Vec::new();
    let err = transport()
        .fetch(&s.url("/big"), 9_999, &mut out)
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { max_len: 9_999, .. }),
        "{err}"
    );
    assert!(out.is_empty());
    assert_eq!(s.hits("/big"), 1, "size errors are not retried");
}

#[test]
fn http_endless_chunked_body_is_cut_off_at_the_limit() {
    let s = TestServer::start();
    s.route("/endless", Route::Endless);
    let mut out = Vec::new();
    let started = Instant::now();
    let err = transport()
        .fetch(&s.url("/endless"), 100_000, &mut out)
        .unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    assert!(out.len() <= 100_000, "{} bytes reached the sink", out.len());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn http_transient_server_errors_are_retried_with_backoff() {
    let s = TestServer::start();
    s.route(
        "/flaky",
        Route::FailThenOk {
            failures: 2,
            status: 503,
            body: b"finally".to_vec(),
        },
    );
    let mut out = Vec::new();
    transport().fetch(&s.url("/flaky"), 100, &mut out).unwrap();
    assert_eq!(out, b"finally");
    assert_eq!(s.hits("/flaky"), 3);
}

#[test]
fn http_retries_stop_after_the_configured_count() {
    let s = TestServer::start();
    s.route("/down", Route::Status(502));
    let err = transport()
        .fetch(&s.url("/down"), 100, &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 502, .. }),
        "{err}"
    );
    assert_eq!(s.hits("/down"), 3, "one attempt plus two retries");
}

#[test]
fn http_slow_response_times_out() {
    let s = TestServer::start();
    s.route(
        "/slow",
        Route::Delay(Duration::from_secs(3), b"late".to_vec()),
    );
    let t = HttpTransport::new(HttpConfig {
        read_timeout: Duration::from_millis(200),
        retries: 0,
        ..quick()
    })
    .unwrap();
    let started = Instant::now();
    let err = t.fetch(&s.url("/slow"), 100, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn http_connection_refused_is_a_network_error_after_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = transport()
        .fetch(&format!("http://127.0.0.1:{port}/x"), 100, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, FetchError::Network { .. }), "{err}");
    assert!(err.is_transient());
}

#[test]
fn https_url_to_a_plain_http_server_says_the_server_speaks_no_tls() {
    let s = TestServer::start();
    s.route("/timestamp.json", Route::Ok(b"{}".to_vec()));
    let url = s.url("/timestamp.json").replacen("http://", "https://", 1);
    let err = transport().fetch(&url, 100, &mut Vec::new()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Network { .. }), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(
        msg.contains("probably a plain-HTTP server; use an http:// URL"),
        "{msg}"
    );
    // Over plain HTTP the same server answers: the hint is not a blanket suffix.
    let err = transport()
        .fetch(&s.url("/missing"), 100, &mut Vec::new())
        .unwrap_err();
    assert!(!err.to_string().contains("plain-HTTP"), "{err}");
}

#[test]
fn http_redirects_are_followed() {
    let s = TestServer::start();
    s.route("/old", Route::Redirect("/new".into()));
    s.route("/new", Route::Ok(b"moved".to_vec()));
    let mut out = Vec::new();
    transport().fetch(&s.url("/old"), 100, &mut out).unwrap();
    assert_eq!(out, b"moved");
}

#[test]
fn http_redirect_loops_are_bounded() {
    let s = TestServer::start();
    s.route("/loop", Route::Redirect("/loop".into()));
    let err = transport()
        .fetch(&s.url("/loop"), 100, &mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains("redirects"), "{err}");
    assert_eq!(
        s.hits("/loop"),
        6,
        "five redirects followed, and not retried"
    );
}

#[test]
fn extra_ca_file_without_certificates_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("ca.pem");
    std::fs::write(&p, "not a certificate\n").unwrap();
    let err = HttpTransport::new(HttpConfig {
        extra_ca_pem: Some(p),
        ..quick()
    })
    .unwrap_err();
    assert!(matches!(err, HttpSetupError::ExtraCa { .. }), "{err}");
}

#[test]
fn updater_refreshes_searches_and_downloads_over_http() {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "vendor", &["apps/*"], false);
    sim.add_target("vendor", "apps/app.bin", b"application bytes");
    sim.role_mut("vendor").version += 1;
    sim.targets.version += 1;
    sim.commit();
    let tree = TempDir::new().unwrap();
    sim.write_tree(tree.path());
    let server = TestServer::serve_dir(tree.path().to_path_buf());
    let md = TempDir::new().unwrap();
    petrel_client::tuf::updater::Updater::init_trusted_root(md.path(), &sim.initial_root())
        .unwrap();
    let config = petrel_client::tuf::updater::UpdaterConfig::new(server.url("/metadata"))
        .with_target_base_url(server.url("/targets"));
    let mut u = petrel_client::tuf::updater::Updater::new(config, transport(), md.path()).unwrap();
    u.refresh().unwrap();
    let info = u.get_target_info("apps/app.bin").unwrap().unwrap();
    let out = TempDir::new().unwrap();
    let dest = out.path().join("app.bin");
    u.download_target(&info, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"application bytes");
    let sha = &hashes_of(b"application bytes")["sha256"];
    assert_eq!(
        server.all_hits(),
        [
            "/metadata/2.root.json".to_string(),
            "/metadata/timestamp.json".into(),
            "/metadata/2.snapshot.json".into(),
            "/metadata/2.targets.json".into(),
            "/metadata/2.vendor.json".into(),
            format!("/targets/apps/{sha}.app.bin"),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Ranged fetches and resumable downloads, against a raw HTTP/1.1 server whose answers to
// target requests are scripted (honour Range, ignore it, cut the body off, 416, …).
// ---------------------------------------------------------------------------------------

mod raw {
    use std::collections::VecDeque;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::Duration;

    /// How the server answers one request below `/targets/` (others are always honoured).
    #[derive(Clone, Copy, Debug)]
    pub enum Answer {
        /// `Range: bytes=N-` gets 206 with `Content-Range`; no Range gets 200.
        Honour,
        /// Always 200 with the whole file.
        IgnoreRange,
        /// Like `Honour`, but the connection is closed after this many body bytes (the
        /// declared `Content-Length` is the full one).
        CutAfter(usize),
        /// A ranged request gets 416 with `Content-Range: bytes */LEN`.
        Unsatisfiable,
        /// A ranged request gets 206 whose `Content-Range` starts one byte later.
        WrongContentRange,
    }

    /// One request the server saw.
    #[derive(Clone, Debug)]
    pub struct Seen {
        /// The request target.
        pub path: String,
        /// The `Range` header, if any.
        pub range: Option<String>,
    }

    #[derive(Default)]
    struct State {
        script: Mutex<VecDeque<Answer>>,
        seen: Mutex<Vec<Seen>>,
        stop: AtomicBool,
    }

    /// Serves the files of a directory on 127.0.0.1 (one request per connection); stops
    /// when dropped.
    pub struct RawServer {
        addr: SocketAddr,
        state: Arc<State>,
        thread: Option<JoinHandle<()>>,
    }

    impl RawServer {
        pub fn serve_dir(root: PathBuf) -> RawServer {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(State::default());
            let st = state.clone();
            let thread = std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !st.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) if conns.len() < 256 => {
                            let (st, root) = (st.clone(), root.clone());
                            conns.push(std::thread::spawn(move || {
                                let _ = handle(stream, &root, &st);
                            }));
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            });
            RawServer {
                addr,
                state,
                thread: Some(thread),
            }
        }

        pub fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        /// The answers to the next requests below `/targets/`, in order.
        pub fn script(&self, answers: &[Answer]) {
            self.state
                .script
                .lock()
                .unwrap()
                .extend(answers.iter().copied());
        }

        /// Every request below `/targets/` so far.
        pub fn target_requests(&self) -> Vec<Seen> {
            let seen = self.state.seen.lock().unwrap();
            seen.iter()
                .filter(|s| s.path.starts_with("/targets/"))
                .cloned()
                .collect()
        }

        /// The Range headers of the requests below `/targets/`.
        pub fn target_ranges(&self) -> Vec<Option<String>> {
            self.target_requests()
                .into_iter()
                .map(|s| s.range)
                .collect()
        }
    }

    impl Drop for RawServer {
        fn drop(&mut self) {
            self.state.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn handle(stream: TcpStream, root: &std::path::Path, st: &State) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?).take(16 * 1024);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut range = None;
        for _ in 0..100 {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.trim().eq_ignore_ascii_case("range") {
                    range = Some(value.trim().to_string());
                }
            }
        }
        st.seen.lock().unwrap().push(Seen {
            path: path.clone(),
            range: range.clone(),
        });
        let answer = if path.starts_with("/targets/") {
            st.script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Answer::Honour)
        } else {
            Answer::Honour
        };
        let mut w = &stream;
        let file = petrel_client::fetch::decode_path_segment(&path)
            .and_then(|p| String::from_utf8(p).ok())
            .filter(|p| !p.split('/').any(|s| s == ".."))
            .and_then(|p| std::fs::read(root.join(p.trim_start_matches('/'))).ok());
        let Some(body) = file else {
            write!(
                w,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        };
        let len = body.len();
        let offset = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok());
        let (status, start, extra) = match (answer, offset) {
            (Answer::IgnoreRange, _) | (_, None) => ("200 OK", 0, String::new()),
            (Answer::Unsatisfiable, Some(_)) => {
                write!(
                    w,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                return Ok(());
            }
            (Answer::WrongContentRange, Some(o)) => (
                "206 Partial Content",
                o,
                format!("Content-Range: bytes {}-{}/{len}\r\n", o + 1, len - 1),
            ),
            (_, Some(o)) if o >= len => {
                write!(
                    w,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                return Ok(());
            }
            (_, Some(o)) => (
                "206 Partial Content",
                o,
                format!("Content-Range: bytes {o}-{}/{len}\r\n", len - 1),
            ),
        };
        let rest = &body[start..];
        write!(
            w,
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            rest.len()
        )?;
        match answer {
            Answer::CutAfter(n) => {
                w.write_all(&rest[..n.min(rest.len())])?;
                w.flush()?;
                let _ = stream.shutdown(Shutdown::Both);
            }
            _ => w.write_all(rest)?,
        }
        w.flush()
    }
}

use petrel_client::fetch::Ranged;
use petrel_client::tuf::updater::{partial_download_path, DownloadStats, Updater, UpdaterConfig};
use raw::{Answer, RawServer};

/// 300 000 bytes that no shift or truncation of themselves matches.
fn big_body() -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32;
    (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A repository with `apps/big.bin` (`big_body`) served by a raw server, and an updater
/// over HTTP that has refreshed.
struct Resumable {
    server: RawServer,
    updater: Updater,
    info: petrel_client::tuf::updater::TargetInfo,
    body: Vec<u8>,
    _dirs: (TempDir, TempDir),
    out: TempDir,
}

impl Resumable {
    fn new() -> Self {
        let body = big_body();
        let mut sim = RepoSim::new();
        sim.add_target("targets", "apps/big.bin", &body);
        sim.targets.version += 1;
        sim.commit();
        let tree = TempDir::new().unwrap();
        sim.write_tree(tree.path());
        let server = RawServer::serve_dir(tree.path().to_path_buf());
        let md = TempDir::new().unwrap();
        Updater::init_trusted_root(md.path(), &sim.initial_root()).unwrap();
        let config = UpdaterConfig::new(server.url("/metadata"))
            .with_target_base_url(server.url("/targets"));
        let mut updater = Updater::new(config, transport(), md.path()).unwrap();
        updater.refresh().unwrap();
        let info = updater.get_target_info("apps/big.bin").unwrap().unwrap();
        Resumable {
            server,
            updater,
            info,
            body,
            _dirs: (tree, md),
            out: TempDir::new().unwrap(),
        }
    }

    fn dest(&self) -> std::path::PathBuf {
        self.out.path().join("big.bin")
    }

    fn write_partial(&self, bytes: &[u8]) {
        std::fs::write(partial_download_path(&self.dest()).unwrap(), bytes).unwrap();
    }

    fn download(&self) -> DownloadStats {
        let mut last = None;
        let stats = self
            .updater
            .download_target_resumable(&self.info, &self.dest(), &mut |p| {
                last = Some(p.bytes);
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(
            last,
            Some(self.body.len() as u64),
            "progress reached the total"
        );
        assert_eq!(std::fs::read(self.dest()).unwrap(), self.body);
        assert!(!partial_download_path(&self.dest()).unwrap().exists());
        stats
    }
}

#[test]
fn http_fetch_from_sends_range_and_accepts_only_a_matching_206() {
    let dir = TempDir::new().unwrap();
    let body = big_body();
    std::fs::create_dir(dir.path().join("targets")).unwrap();
    std::fs::write(dir.path().join("targets/f"), &body).unwrap();
    let s = RawServer::serve_dir(dir.path().to_path_buf());
    let t = transport();
    let url = s.url("/targets/f");
    let mut out = Vec::new();
    let r = t.fetch_from(&url, 100_000, 300_000, &mut out).unwrap();
    assert_eq!(
        r,
        Ranged {
            start: 100_000,
            written: 200_000
        }
    );
    assert_eq!(out, body[100_000..]);
    // Offset 0 sends no Range header.
    t.fetch_from(&url, 0, 300_000, &mut Vec::new()).unwrap();
    // The limit is the whole resource's.
    let err = t
        .fetch_from(&url, 100_000, 299_999, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    // A 206 that is not the range asked for is refused, and nothing is written.
    s.script(&[Answer::WrongContentRange]);
    let mut out = Vec::new();
    let err = t.fetch_from(&url, 100_000, 300_000, &mut out).unwrap_err();
    assert!(matches!(err, FetchError::BadRange { .. }), "{err}");
    assert!(!err.is_transient());
    assert!(out.is_empty());
    // 416 is its own error, not retried.
    s.script(&[Answer::Unsatisfiable]);
    let err = t.fetch_from(&url, 5, 300_000, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::RangeNotSatisfiable {
                offset: 5,
                length: Some(300_000),
                ..
            }
        ),
        "{err}"
    );
    // A server that ignores Range sends the whole body, and the result says so.
    s.script(&[Answer::IgnoreRange]);
    let mut out = Vec::new();
    let r = t.fetch_from(&url, 100_000, 300_000, &mut out).unwrap();
    assert_eq!(r.start, 0);
    assert_eq!(out, body);
    assert_eq!(
        s.target_ranges(),
        [
            Some("bytes=100000-".to_string()),
            None,
            Some("bytes=100000-".into()),
            Some("bytes=100000-".into()),
            Some("bytes=5-".into()),
            Some("bytes=100000-".into()),
        ]
    );
}

#[test]
fn http_resume_sends_range_from_the_partial_and_appends() {
    let r = Resumable::new();
    r.write_partial(&r.body[..123_456]);
    let stats = r.download();
    assert_eq!(
        r.server.target_ranges(),
        [Some("bytes=123456-".to_string())]
    );
    assert_eq!(
        stats,
        DownloadStats {
            transferred: 300_000 - 123_456,
            resumed: 123_456,
            restarted: false
        }
    );
}

#[test]
fn http_server_ignoring_range_restarts_from_zero_with_its_whole_body() {
    let r = Resumable::new();
    // Not even the right bytes: starting over must not keep any of them.
    r.write_partial(&[0x5a; 50_000]);
    r.server.script(&[Answer::IgnoreRange]);
    let stats = r.download();
    assert_eq!(r.server.target_ranges(), [Some("bytes=50000-".to_string())]);
    assert!(stats.restarted);
    assert_eq!((stats.resumed, stats.transferred), (0, 300_000));
}

#[test]
fn http_body_cut_off_midway_is_resumed_within_the_same_call() {
    let r = Resumable::new();
    r.server
        .script(&[Answer::CutAfter(100_000), Answer::CutAfter(50_000)]);
    let stats = r.download();
    assert_eq!(
        r.server.target_ranges(),
        [
            None,
            Some("bytes=100000-".to_string()),
            Some("bytes=150000-".to_string())
        ]
    );
    assert_eq!(stats.transferred, 300_000, "no byte fetched twice");
    assert!(!stats.restarted);
}

#[test]
fn http_416_restarts_from_zero() {
    let r = Resumable::new();
    r.write_partial(&r.body[..1000]);
    r.server.script(&[Answer::Unsatisfiable]);
    let stats = r.download();
    assert_eq!(
        r.server.target_ranges(),
        [Some("bytes=1000-".to_string()), None]
    );
    assert!(stats.restarted);
    assert_eq!((stats.resumed, stats.transferred), (0, 300_000));
}

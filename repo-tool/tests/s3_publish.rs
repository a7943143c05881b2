//! `petrel-repo publish --to s3://…` against a real S3-compatible server (moto in server
//! mode, which each test starts on 127.0.0.1 and a free port): the bucket ends up with every
//! file of the tree, byte for byte, with petrel-server's `Cache-Control` and `Content-Type`;
//! a second run uploads nothing, a change uploads only what changed; an upload interrupted
//! (by a proxy that stops forwarding after some requests) leaves the old `timestamp.json`
//! in the bucket, and the next run uploads only what is missing; the `[publish]` settings,
//! a tree without consistent snapshots, multipart uploads of large files, and errors that
//! name the object, the bucket and the fix.
//!
//! Needs moto: `PETREL_MOTO` names its `moto_server`, as printed by `scripts/ensure-s3.sh`
//! (which `./test.sh` runs). Without it these tests fail, never skip, and install nothing.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, ObjectStore, ObjectStoreExt};

const MOTO_VAR: &str = "PETREL_MOTO";
/// moto's server imports a lot of Python: allow it this long to answer.
const STARTUP: Duration = Duration::from_secs(60);
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The `moto_server` executable; fails (never skips) when it is not configured.
fn moto_bin() -> PathBuf {
    let hint = "run ./test.sh, or `export PETREL_MOTO=\"$(scripts/ensure-s3.sh)\"` from the \
                workspace root first (it installs moto[server] into .venv-s3)";
    match std::env::var_os(MOTO_VAR) {
        Some(m) if !m.is_empty() => {
            let m = PathBuf::from(m);
            assert!(
                m.is_file(),
                "{MOTO_VAR}={} is not a file: {hint}",
                m.display()
            );
            m
        }
        _ => panic!(
            "{MOTO_VAR} is not set, and these tests need a local S3-compatible server \
             (moto): {hint}"
        ),
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One plain HTTP/1.1 request (`Connection: close`); returns the status and the body.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&loopback(port), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// moto's S3 server, on 127.0.0.1 and a port of its own; killed when dropped.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    fn start() -> Moto {
        Moto::start_with(&[])
    }

    /// Starts moto with extra environment variables (e.g. to enforce credentials).
    fn start_with(env: &[(&str, &str)]) -> Moto {
        let bin = moto_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        // The port is chosen by binding port 0 and released before moto binds it: another
        // process may take it in between, so a moto that exits at once is tried again.
        for attempt in 0..3 {
            let port = free_port();
            let log = dir.path().join(format!("moto-{attempt}.log"));
            let out = std::fs::File::create(&log).expect("log file");
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup"))
                .stderr(out);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let start = Instant::now();
            loop {
                if child.try_wait().expect("wait").is_some() {
                    break; // exited: the port was taken, try another
                }
                if http(port, "GET", "/").is_ok() {
                    return Moto {
                        child,
                        port,
                        log,
                        _dir: dir,
                    };
                }
                if start.elapsed() > STARTUP {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "moto_server did not answer on 127.0.0.1:{port} within {STARTUP:?}; \
                         its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!(
            "moto_server exited right after starting, three times; its last log:\n{}",
            std::fs::read_to_string(dir.path().join("moto-2.log")).unwrap_or_default()
        );
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn create_bucket(&self, name: &str) {
        let (status, body) = http(self.port, "PUT", &format!("/{name}")).expect("create bucket");
        assert_eq!(status, 200, "creating bucket {name}: {body}");
    }

    /// The bucket's objects under `prefix`, read with the test's own S3 client.
    fn bucket(&self, bucket: &str, prefix: &str) -> Bucket {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("test S3 client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Bucket {
            store,
            rt,
            prefix: prefix.to_string(),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "moto log ({}):\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A bucket prefix as the test sees it.
struct Bucket {
    store: AmazonS3,
    rt: tokio::runtime::Runtime,
    prefix: String,
}

/// What a GET returned: the bytes and the headers that matter here.
struct Object {
    bytes: Vec<u8>,
    cache_control: Option<String>,
    content_type: Option<String>,
}

impl Bucket {
    fn key(&self, rel: &str) -> ObjectPath {
        ObjectPath::parse(format!("{}/{rel}", self.prefix)).expect("key")
    }

    /// Every object under the prefix: tree path → bytes.
    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let prefix = ObjectPath::parse(&self.prefix).expect("prefix");
        let listed: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(Some(&prefix)).try_collect())
            .expect("list");
        listed
            .into_iter()
            .map(|m| {
                let rel = m
                    .location
                    .as_ref()
                    .strip_prefix(&format!("{}/", self.prefix))
                    .expect("under the prefix")
                    .to_string();
                let bytes = self.get(&rel).expect("listed").bytes;
                (rel, bytes)
            })
            .collect()
    }

    /// The object's ETag, from a HEAD request.
    fn e_tag(&self, rel: &str) -> String {
        let key = self.key(rel);
        let meta = self.rt.block_on(self.store.head(&key)).expect("HEAD");
        meta.e_tag.unwrap_or_else(|| panic!("{key} has no ETag"))
    }

    fn get(&self, rel: &str) -> Option<Object> {
        let key = self.key(rel);
        self.rt.block_on(async {
            let r = match self.store.get(&key).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return None,
                Err(e) => panic!("GET {key}: {e}"),
            };
            let attr = |a: Attribute| r.attributes.get(&a).map(|v| v.to_string());
            let cache_control = attr(Attribute::CacheControl);
            let content_type = attr(Attribute::ContentType);
            let bytes = r.bytes().await.expect("body").to_vec();
            Some(Object {
                bytes,
                cache_control,
                content_type,
            })
        })
    }
}

/// Every file of the tree's `metadata/` and `targets/`: path → bytes.
fn tree_files(tree: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for top in ["metadata", "targets"] {
        for e in walkdir::WalkDir::new(tree.join(top)) {
            let e = e.expect("walk");
            if e.file_type().is_file() {
                let rel = e.path().strip_prefix(tree).expect("below");
                let rel = rel.to_str().expect("utf-8").to_string();
                out.insert(rel, std::fs::read(e.path()).expect("read"));
            }
        }
    }
    out
}

/// The tree files the bucket does not have with the same bytes.
fn missing(tree: &Path, bucket: &Bucket) -> Vec<String> {
    let have = bucket.objects();
    tree_files(tree)
        .into_iter()
        .filter(|(p, b)| have.get(p) != Some(b))
        .map(|(p, _)| p)
        .collect()
}

/// Asserts the bucket holds exactly the tree, byte for byte.
fn assert_bucket_is_tree(tree: &Path, bucket: &Bucket) {
    let want = tree_files(tree);
    let have = bucket.objects();
    let want_names: Vec<&String> = want.keys().collect();
    let have_names: Vec<&String> = have.keys().collect();
    assert_eq!(
        want_names, have_names,
        "the bucket's objects are not the tree's files"
    );
    for (p, b) in &want {
        assert!(
            have[p] == *b,
            "{p}: the bucket's bytes differ from the tree's"
        );
    }
}

/// The headers petrel-server sends for a tree path (docs/server.md, Cache-Control).
fn expected_headers(rel: &str) -> (&'static str, &'static str) {
    let name = rel.rsplit('/').next().unwrap();
    let ctype = if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let hex =
        |s: &str| (s.len() == 64 || s.len() == 128) && s.bytes().all(|b| b.is_ascii_hexdigit());
    let versioned = |s: &str| {
        s.split_once('.').is_some_and(|(v, rest)| {
            !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_digit())
                && rest.len() > 5
                && rest.ends_with(".json")
        })
    };
    let cache = if rel.starts_with("targets/") {
        if name
            .split_once('.')
            .is_some_and(|(h, rest)| hex(h) && !rest.is_empty())
        {
            IMMUTABLE
        } else {
            "no-cache"
        }
    } else if versioned(name) {
        IMMUTABLE
    } else if rel.starts_with("metadata/snapshot-tree/")
        && name
            .strip_suffix(".json")
            .is_some_and(|h| h.len() == 64 && hex(h))
    {
        // A snapshot tree node, named by its hash.
        IMMUTABLE
    } else {
        "no-cache"
    };
    (cache, ctype)
}

fn assert_headers(tree: &Path, bucket: &Bucket) -> usize {
    let mut immutable = 0;
    for rel in tree_files(tree).keys() {
        let o = bucket
            .get(rel)
            .unwrap_or_else(|| panic!("{rel} is not in the bucket"));
        let (cache, ctype) = expected_headers(rel);
        assert_eq!(
            o.cache_control.as_deref(),
            Some(cache),
            "Cache-Control of {rel}"
        );
        assert_eq!(
            o.content_type.as_deref(),
            Some(ctype),
            "Content-Type of {rel}"
        );
        immutable += usize::from(cache == IMMUTABLE);
    }
    immutable
}

/// `petrel-repo` with test credentials and nothing else of the caller's `AWS_*`.
fn with_aws(mut c: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    c
}

/// `publish --to URL --endpoint ENDPOINT` plus `extra`.
fn publish_to(r: &Repo, to: &str, endpoint: &str, extra: &[&str]) -> Command {
    with_aws(r.cmd(&[&["publish", "--to", to, "--endpoint", endpoint], extra].concat()))
}

/// (uploaded, skipped, bytes) from publish's upload line.
fn counts(stdout: &str) -> (usize, usize, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("uploaded "))
        .unwrap_or_else(|| panic!("no upload line in:\n{stdout}"));
    let num = |after: &str| -> u64 {
        let rest = &line[line.find(after).unwrap_or_else(|| panic!("{line}")) + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {after:?} in {line}"))
    };
    (
        num("uploaded ") as usize,
        num("skipped ") as usize,
        num("object(s), "),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command that must fail with exit status 1; returns stdout and stderr.
fn expect_fail_output(cmd: Command) -> (String, String) {
    let shown = format!("{cmd:?}");
    let o: Output = run(cmd);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{shown} should fail\nstdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    (text(&o.stdout), text(&o.stderr))
}

/// Deterministic bytes that are not all alike (so parts differ).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn uploads_the_tree_then_only_what_changed() {
    let moto = Moto::start();
    moto.create_bucket("fleet");
    let bucket = moto.bucket("fleet", "updates/prod");
    let to = "s3://fleet/updates/prod";
    let r = Repo::init(&[]);
    let small = r.src("hello.txt", b"hello\n");
    // Above the single-request limit: uploaded in parts.
    let big = r.src("image.bin", &pseudo_random(20 * 1024 * 1024 + 123, 7));
    r.ok(&["add", path(&small), "--prefix", "apps/acme/hello/1.0"]);
    r.ok(&["add", path(&big), "--prefix", "apps/acme/image/1.0"]);

    let out = expect_ok(publish_to(&r, to, &moto.endpoint(), &[]));
    assert!(out.contains("published "), "{out}");
    let files = tree_files(&r.tree());
    let total_bytes: u64 = files.values().map(|b| b.len() as u64).sum();
    assert_eq!(counts(&out), (files.len(), 0, total_bytes), "{out}");
    assert_bucket_is_tree(&r.tree(), &bucket);
    // The large file went up in parts (8 + 8 + 4 MiB): S3 tags such objects `…-3`.
    let image = files
        .keys()
        .find(|p| p.starts_with("targets/apps/acme/image/1.0/"))
        .expect("image in the tree");
    assert!(
        bucket.e_tag(image).trim_matches('"').ends_with("-3"),
        "{image}"
    );
    let immutable = assert_headers(&r.tree(), &bucket);
    // Targets (two names each), versioned metadata and the snapshot tree's head.
    assert!(immutable >= 4 + 4, "{immutable} immutable objects");
    assert!(
        files
            .keys()
            .any(|p| p.starts_with("metadata/snapshot-tree/")),
        "expected a snapshot tree in {:?}",
        files.keys()
    );

    // Nothing changed: nothing uploaded, even the mutable names (same MD5).
    let out = expect_ok(publish_to(&r, to, &moto.endpoint(), &[]));
    assert!(out.contains("nothing staged"), "{out}");
    assert_eq!(counts(&out), (0, files.len(), 0), "{out}");

    // One new target: only the new and changed files go up.
    let before = tree_files(&r.tree());
    let more = r.src("notes.txt", b"release notes\n");
    r.ok(&["add", path(&more), "--prefix", "apps/acme/hello/1.1"]);
    let out = expect_ok(publish_to(&r, to, &moto.endpoint(), &[]));
    let after = tree_files(&r.tree());
    let changed: Vec<&String> = after
        .iter()
        .filter(|(p, b)| before.get(*p) != Some(*b))
        .map(|(p, _)| p)
        .collect();
    assert!(changed
        .iter()
        .any(|p| p.as_str() == "metadata/timestamp.json"));
    assert!(!changed.iter().any(|p| p.as_str() == "metadata/root.json"));
    let (uploaded, skipped, _) = counts(&out);
    assert_eq!(uploaded, changed.len(), "uploaded {changed:?}?\n{out}");
    assert_eq!(skipped, after.len() - changed.len(), "{out}");
    assert_bucket_is_tree(&r.tree(), &bucket);
    assert_headers(&r.tree(), &bucket);

    // The cron job: `refresh --to` re-signs the timestamp and uploads it (last).
    let before = tree_files(&r.tree());
    let out = expect_ok(with_aws(r.cmd(&[
        "refresh",
        "--to",
        to,
        "--endpoint",
        &moto.endpoint(),
    ])));
    let after = tree_files(&r.tree());
    let changed: Vec<&String> = after
        .iter()
        .filter(|(p, b)| before.get(*p) != Some(*b))
        .map(|(p, _)| p)
        .collect();
    assert!(
        changed
            .iter()
            .any(|p| p.as_str() == "metadata/timestamp.json"),
        "{changed:?}"
    );
    assert_eq!(counts(&out).0, changed.len(), "{out}");
    assert_bucket_is_tree(&r.tree(), &bucket);
    // The local tree is still what `verify` accepts.
    r.verify_ok();
}

/// A TCP proxy to 127.0.0.1:`upstream` that forwards the first `limit` HTTP requests and
/// then closes every connection, as a store that goes away part-way would.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: u16, limit: usize) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            // Bounded: the proxy never outlives a test's commands.
            while !stop2.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(300) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let seen = seen2.clone();
                        std::thread::spawn(move || {
                            let _ = proxy_connection(client, upstream, limit, &seen);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                }
            }
        });
        Proxy {
            port,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Forwards one client connection request by request (heads parsed, bodies by
/// Content-Length); closes both sides instead of forwarding request number `limit + 1`.
fn proxy_connection(
    mut client: TcpStream,
    upstream: u16,
    limit: usize,
    seen: &AtomicUsize,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let timeout = Some(Duration::from_secs(30));
    client.set_read_timeout(timeout)?;
    if seen.load(Ordering::SeqCst) >= limit {
        // A connection opened after the store went away: refused, and counted as a refused
        // request (the client would have sent one on it).
        seen.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let mut server = TcpStream::connect_timeout(&loopback(upstream), Duration::from_secs(5))?;
    server.set_read_timeout(timeout)?;
    let (mut from_server, mut to_client) = (server.try_clone()?, client.try_clone()?);
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    'requests: loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = client.read(&mut chunk)?;
            if n == 0 {
                break 'requests;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if seen.fetch_add(1, Ordering::SeqCst) >= limit {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            break;
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        assert!(
            !head.contains("transfer-encoding: chunked"),
            "the proxy forwards bodies by Content-Length only: {head}"
        );
        let mut left: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("Content-Length"));
        server.write_all(&buf[..head_end])?;
        buf.drain(..head_end);
        let take = left.min(buf.len());
        server.write_all(&buf[..take])?;
        buf.drain(..take);
        left -= take;
        while left > 0 {
            let n = client.read(&mut chunk)?;
            if n == 0 {
                break 'requests;
            }
            let t = n.min(left);
            server.write_all(&chunk[..t])?;
            buf.extend_from_slice(&chunk[t..n]);
            left -= t;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}

#[test]
fn an_interrupted_upload_keeps_the_old_timestamp_and_resumes() {
    let moto = Moto::start();
    moto.create_bucket("fleet");
    let bucket = moto.bucket("fleet", "prod");
    let to = "s3://fleet/prod";
    let r = Repo::init(&[]);
    let a = r.src("a.txt", b"version one\n");
    r.ok(&["add", path(&a), "--prefix", "apps/acme/a/1.0"]);
    expect_ok(publish_to(&r, to, &moto.endpoint(), &[]));
    assert_bucket_is_tree(&r.tree(), &bucket);
    let old = bucket.objects();
    let old_timestamp = old["metadata/timestamp.json"].clone();

    // A new release: three targets, two names each, then new metadata.
    for (i, name) in ["b.txt", "c.txt", "d.txt"].iter().enumerate() {
        let f = r.src(name, format!("file {i}\n").as_bytes());
        r.ok(&["add", path(&f), "--prefix", "apps/acme/b/2.0"]);
    }
    // The listing and four uploads get through; then the store goes away.
    let proxy = Proxy::start(moto.port, 1 + 4);
    let (stdout, stderr) = expect_fail_output(publish_to(&r, to, &proxy.endpoint(), &[]));
    assert!(stdout.contains("published "), "{stdout}");
    assert!(
        proxy.seen.load(Ordering::SeqCst) > 5,
        "the proxy refused nothing"
    );
    drop(proxy);
    for want in [
        "uploading object prod/targets/",
        "in bucket fleet",
        "hint: ",
        "4 object(s) were uploaded before the failure",
        "run `petrel-repo publish` again",
    ] {
        assert!(stderr.contains(want), "{want:?} not in:\n{stderr}");
    }
    // Devices polling the bucket still see the previous repository, unchanged.
    let now = bucket.objects();
    assert!(
        now["metadata/timestamp.json"] == old_timestamp,
        "timestamp.json replaced"
    );
    for (p, b) in &old {
        assert!(
            now.get(p) == Some(b),
            "{p} changed by the interrupted upload"
        );
    }
    let left = missing(&r.tree(), &bucket);
    assert!(left.len() > 3, "{left:?}");
    assert!(left.iter().any(|p| p == "metadata/timestamp.json"));

    // Interrupted again, this time when everything but the timestamp is up.
    let proxy = Proxy::start(moto.port, 1 + left.len() - 1);
    let (stdout, stderr) = expect_fail_output(publish_to(&r, to, &proxy.endpoint(), &[]));
    drop(proxy);
    assert!(stdout.contains("nothing staged"), "{stdout}");
    assert!(
        stderr.contains("uploading object prod/metadata/timestamp.json in bucket fleet"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{} object(s) were uploaded", left.len() - 1)),
        "{stderr}"
    );
    assert!(
        bucket.get("metadata/timestamp.json").expect("there").bytes == old_timestamp,
        "timestamp.json replaced before the rest was up"
    );
    assert_eq!(missing(&r.tree(), &bucket), ["metadata/timestamp.json"]);

    // The next run finishes it: one object.
    let out = expect_ok(publish_to(&r, to, &moto.endpoint(), &[]));
    let files = tree_files(&r.tree());
    let (uploaded, skipped, bytes) = counts(&out);
    assert_eq!((uploaded, skipped), (1, files.len() - 1), "{out}");
    assert_eq!(bytes, files["metadata/timestamp.json"].len() as u64);
    assert_bucket_is_tree(&r.tree(), &bucket);
    assert_headers(&r.tree(), &bucket);
}

#[test]
fn settings_and_a_tree_without_consistent_snapshots() {
    let moto = Moto::start();
    moto.create_bucket("plain");
    moto.create_bucket("other");
    let r = Repo::init(&["--no-consistent-snapshot"]);
    let settings = r.dir.join("petrel-repo.toml");
    let mut text = std::fs::read_to_string(&settings).expect("settings");
    text.push_str(&format!(
        "\n[publish]\nto = \"s3://plain/repo\"\nendpoint = \"{}\"\n",
        moto.endpoint()
    ));
    std::fs::write(&settings, text).expect("write settings");
    let f = r.src("app.bin", b"first build\n");
    r.ok(&["add", path(&f), "--prefix", "apps/acme/app"]);

    // A plain `publish` uploads where the settings say.
    let out = expect_ok(with_aws(r.cmd(&["publish"])));
    let bucket = moto.bucket("plain", "repo");
    let files = tree_files(&r.tree());
    assert!(
        files.contains_key("targets/apps/acme/app/app.bin"),
        "{files:?}"
    );
    assert!(files.contains_key("metadata/targets.json"), "{files:?}");
    assert_eq!(counts(&out).0, files.len(), "{out}");
    assert_bucket_is_tree(&r.tree(), &bucket);
    // Names reused for new content: revalidated every time.
    let immutable = assert_headers(&r.tree(), &bucket);
    // Only the versioned and content-addressed names: 1.root.json, the snapshot tree's
    // 1.head.json and its one node (a leaf: the repository has two roles).
    assert_eq!(immutable, 3);

    // Mutable names are compared by content: nothing changed, nothing uploaded.
    let out = expect_ok(with_aws(r.cmd(&["publish"])));
    assert_eq!(counts(&out).0, 0, "{out}");

    // New content under the same name (same length): uploaded, like the metadata.
    let before = tree_files(&r.tree());
    std::fs::write(&f, b"other build\n").expect("rewrite");
    r.ok(&["add", path(&f), "--prefix", "apps/acme/app"]);
    let out = expect_ok(with_aws(r.cmd(&["publish"])));
    let after = tree_files(&r.tree());
    let changed = after
        .iter()
        .filter(|(p, b)| before.get(*p) != Some(*b))
        .count();
    assert!(before["targets/apps/acme/app/app.bin"] != after["targets/apps/acme/app/app.bin"]);
    assert_eq!(counts(&out).0, changed, "{out}");
    assert_bucket_is_tree(&r.tree(), &bucket);

    // The flag overrides the setting.
    let out = expect_ok(publish_to(&r, "s3://other/copy", &moto.endpoint(), &[]));
    assert!(out.contains("to s3://other/copy;"), "{out}");
    assert_bucket_is_tree(&r.tree(), &moto.bucket("other", "copy"));
}

#[test]
fn errors_name_the_object_the_bucket_and_the_fix() {
    let moto = Moto::start();
    let r = Repo::published();

    let (_, err) = expect_fail_output(publish_to(
        &r,
        "s3://no-such-bucket/x",
        &moto.endpoint(),
        &[],
    ));
    for want in [
        "bucket no-such-bucket",
        "under x/",
        "may not exist: create it",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }

    let closed = free_port();
    let (_, err) = expect_fail_output(publish_to(
        &r,
        "s3://fleet/x",
        &format!("http://127.0.0.1:{closed}"),
        &[],
    ));
    for want in ["bucket fleet", "cannot reach the store", "--endpoint"] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }

    // A plain-HTTP endpoint off the loopback interface is refused before anything is sent.
    let err = expect_fail(with_aws(r.cmd(&[
        "publish",
        "--to",
        "s3://fleet/x",
        "--endpoint",
        "http://192.0.2.1:9000",
    ])));
    assert!(err.contains("--allow-http"), "{err}");
    let err = expect_fail(with_aws(r.cmd(&["publish", "--to", "https://fleet/x"])));
    assert!(err.contains("s3://BUCKET/PREFIX"), "{err}");
    let err = expect_fail(with_aws(r.cmd(&[
        "publish",
        "--endpoint",
        &moto.endpoint(),
    ])));
    assert!(err.contains("need --to"), "{err}");

    // Another repository's files under the prefix are not overwritten.
    moto.create_bucket("shared");
    let bucket = moto.bucket("shared", "x");
    expect_ok(publish_to(&r, "s3://shared/x", &moto.endpoint(), &[]));
    let before = bucket.objects();
    let other = Repo::published();
    let (_, err) = expect_fail_output(publish_to(&other, "s3://shared/x", &moto.endpoint(), &[]));
    for want in [
        "bucket shared already holds other bytes",
        "x/metadata/1.root.json",
        "nothing was uploaded",
        "empty prefix",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    assert!(bucket.objects() == before, "the bucket changed");

    // A store that checks credentials, with a key it does not know.
    let strict = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let (_, err) = expect_fail_output(publish_to(&r, "s3://fleet/x", &strict.endpoint(), &[]));
    for want in ["bucket fleet", "check the credentials", "AWS_ACCESS_KEY_ID"] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
}

//! Starvation resistance: a normal client keeps getting `timestamp.json` quickly while
//! hundreds of hostile connections (slowloris, slow readers of a large file, clients
//! that reconnect all the time) are open, and the server's memory stays bounded.
//!
//! The server runs as a child process (the real binary), so its peak memory can be read
//! from `/proc/PID/status`. The hostile connections come from 127.0.0.2–127.0.0.9 and
//! the normal client from 127.0.0.1 (all on loopback), and their number is well above
//! the server's connection cap, so the cap, shedding and busy header deadline are what
//! keeps the normal client served, not the per-peer cap.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The server's connection cap in this test.
const CAP: usize = 128;
const SLOWLORIS: usize = 150;
const SLOW_READERS: usize = 150;
const RECONNECTERS: usize = 100;
/// Size of the file the slow readers ask for.
const BIG: usize = 24 * 1024 * 1024;
/// Budget for file chunks above the minimum size.
const STREAM_BUDGET: usize = 16 * 1024 * 1024;
/// Bound on the server's peak resident memory under the attack: the budget, plus about
/// 100 KiB per connection slot, plus the process itself.
const RSS_BOUND_KIB: u64 = 64 * 1024;
/// Requests the normal client makes, one fresh connection each.
const PROBES: usize = 200;
/// The goal: 99th percentile latency of the normal client.
const P99_GOAL: Duration = Duration::from_millis(100);

struct Child_(Child);

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(root: &std::path::Path) -> (Child_, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_petrel-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .arg("--root")
        .arg(root)
        .args(["--max-connections", &CAP.to_string()])
        .args(["--stream-buffer-bytes", &STREAM_BUDGET.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start petrel-server");
    let stdout = child.stdout.take().unwrap();
    let child = Child_(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// `VmHWM` (peak resident set) of `pid` in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn hostile_source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8))
}

async fn connect_from(src: IpAddr, to: SocketAddr, rcvbuf: Option<u32>) -> Option<TcpStream> {
    let sock = TcpSocket::new_v4().ok()?;
    if let Some(n) = rcvbuf {
        let _ = sock.set_recv_buffer_size(n);
    }
    sock.bind(SocketAddr::new(src, 0)).ok()?;
    let s = tokio::time::timeout(Duration::from_secs(2), sock.connect(to))
        .await
        .ok()?
        .ok()?;
    Some(s)
}

/// Close with a reset, so the attacker's side leaves no TIME_WAIT behind.
fn abort(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Connects, sends a request head one header line at a time, forever; reconnects when
/// the server closes.
async fn slowloris(i: usize, to: SocketAddr, until: Instant, opened: Arc<AtomicU64>) {
    // Bounded by `until`, which every inner wait respects.
    while Instant::now() < until {
        let Some(mut s) = connect_from(hostile_source(i), to, None).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let mut ok = s
            .write_all(b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_ok();
        while ok && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(300)).await;
            ok = s.write_all(b"X-Slow: 1\r\n").await.is_ok();
        }
        abort(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks for the large file and reads it a few hundred bytes at a time.
async fn slow_reader(i: usize, to: SocketAddr, until: Instant, opened: Arc<AtomicU64>) {
    let mut buf = [0u8; 256];
    while Instant::now() < until {
        let Some(mut s) = connect_from(hostile_source(i), to, Some(4096)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let mut ok = s
            .write_all(b"GET /targets/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_ok();
        while ok && Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            ok = matches!(
                tokio::time::timeout(left, s.read(&mut buf)).await,
                Ok(Ok(n)) if n > 0
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        abort(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects, sends half a request line, hangs up, and does it again.
async fn reconnecter(i: usize, to: SocketAddr, until: Instant, opened: Arc<AtomicU64>) {
    while Instant::now() < until {
        if let Some(mut s) = connect_from(hostile_source(i), to, None).await {
            opened.fetch_add(1, Ordering::Relaxed);
            let _ = s.write_all(b"GET /meta").await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            abort(s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One normal request on a fresh connection; its latency, or `None` on any failure.
async fn probe(to: SocketAddr) -> Option<Duration> {
    let t0 = Instant::now();
    let work = async {
        let mut s = TcpStream::connect(to).await.ok()?;
        s.write_all(
            b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .await
        .ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.ok()?;
        let ok = resp.starts_with(b"HTTP/1.1 200") && resp.ends_with(b"\"version\":7}}");
        ok.then_some(())
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .ok()??;
    Some(t0.elapsed())
}

#[test]
fn normal_client_keeps_fast_answers_and_memory_stays_bounded_under_hostile_connections() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("metadata")).unwrap();
    std::fs::create_dir_all(root.join("targets")).unwrap();
    std::fs::write(
        root.join("metadata/timestamp.json"),
        br#"{"signed":{"_type":"timestamp","version":7}}"#,
    )
    .unwrap();
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("targets/big.bin"), big).unwrap();

    let (server, addr) = start_server(&root);
    let pid = server.0.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (latencies, opened) = rt.block_on(async move {
        let ramp = Duration::from_secs(3);
        let until = Instant::now() + ramp + Duration::from_secs(12);
        let opened = Arc::new(AtomicU64::new(0));
        let mut attackers = tokio::task::JoinSet::new();
        for i in 0..SLOWLORIS {
            attackers.spawn(slowloris(i, addr, until, Arc::clone(&opened)));
        }
        for i in 0..SLOW_READERS {
            attackers.spawn(slow_reader(i, addr, until, Arc::clone(&opened)));
        }
        for i in 0..RECONNECTERS {
            attackers.spawn(reconnecter(i, addr, until, Arc::clone(&opened)));
        }
        tokio::time::sleep(ramp).await;
        let mut latencies = Vec::with_capacity(PROBES);
        // Bounded: PROBES requests of at most 2 s each, and the attack's deadline.
        for _ in 0..PROBES {
            if Instant::now() >= until {
                break;
            }
            latencies.push(probe(addr).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while attackers.join_next().await.is_some() {}
        })
        .await;
        attackers.abort_all();
        (latencies, opened.load(Ordering::Relaxed))
    });
    let peak_kib = peak_rss_kib(pid);
    drop(server);

    let failures = latencies.iter().filter(|l| l.is_none()).count();
    let mut sorted: Vec<Duration> = latencies
        .iter()
        .map(|l| l.unwrap_or(Duration::MAX))
        .collect();
    sorted.sort();
    assert!(!sorted.is_empty(), "no probe ran");
    let pct = |p: f64| sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let (p50, p99) = (pct(0.50), pct(0.99));
    eprintln!(
        "normal client: {} requests, {failures} failed, p50 {p50:?}, p99 {p99:?}; \
         hostile connections opened: {opened}; server peak RSS {} MiB",
        sorted.len(),
        peak_kib / 1024
    );
    assert!(
        opened as usize > SLOWLORIS + SLOW_READERS + RECONNECTERS,
        "the attack did not run"
    );
    assert!(
        sorted.len() >= PROBES / 2,
        "only {} probes ran in the attack's time: the normal client waited ({failures} failed)",
        sorted.len()
    );
    assert!(
        p99 <= P99_GOAL,
        "normal client p99 {p99:?} (p50 {p50:?}, {failures} failed) under attack"
    );
    assert!(
        peak_kib > 0 && peak_kib < RSS_BOUND_KIB,
        "server peak RSS {peak_kib} KiB, bound {RSS_BOUND_KIB} KiB"
    );
}

//! Limits, timeouts, graceful shutdown, and consistency while the tree is republished.

mod common;

use std::time::{Duration, Instant};

use common::*;
use petrel_server::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of the file used for long downloads: much larger than loopback socket buffers,
/// so the server is still mid-response when the test acts.
const BIG: usize = 48 * 1024 * 1024;

fn write_big(srv: &TestServer, rel: &str, seed: u8) -> Vec<u8> {
    let data = pattern(BIG, seed);
    let path = srv.root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &data).unwrap();
    data
}

/// Read exactly `n` more bytes (bounded by STEP per read).
async fn read_n(s: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    tokio::time::timeout(STEP, s.read_exact(&mut out))
        .await
        .expect("read timed out")
        .expect("read");
    out
}

#[tokio::test]
async fn oversized_request_head_gets_431_or_close() {
    let srv = TestServer::start_with(Limits {
        max_header_bytes: 4096,
        ..Limits::default()
    })
    .await;
    let filler = "a".repeat(20_000);
    let raw = request_head("GET", "/metadata/root.json", &[("X-Filler", &filler)], true);
    match send_raw(srv.addr, raw.as_bytes(), false).await {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
    }
    // A normal request still works afterwards.
    assert_eq!(get(srv.addr, "/metadata/root.json", &[]).await.status, 200);
}

#[tokio::test]
async fn slow_request_head_is_cut_off_by_header_read_timeout() {
    let srv = TestServer::start_with(Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut s = connect(srv.addr).await;
    s.write_all(b"GET /metadata/root.json HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let (_, closed) = drain_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "connection with an incomplete head was not closed");
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let srv = TestServer::start_with(Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut s = connect(srv.addr).await;
    s.write_all(request_head("GET", "/metadata/root.json", &[], false).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, false).await.unwrap().status, 200);
    let t0 = Instant::now();
    let (_, closed) = drain_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "idle keep-alive connection stayed open");
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn client_that_stops_reading_is_disconnected_by_idle_timeout() {
    let srv = TestServer::start_with(Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    write_big(&srv, "targets/big.bin", 3);
    let mut s = connect(srv.addr).await;
    s.write_all(request_head("GET", "/targets/big.bin", &[], true).as_bytes())
        .await
        .unwrap();
    // Stall well past the idle timeout, then see how much arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (received, closed) = drain_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(
        received < BIG,
        "stalled client still received the whole file ({received} bytes)"
    );
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_is_served_and_the_longest_idle_connection_is_shed() {
    let srv = TestServer::start_with(Limits {
        max_connections: 1,
        ..Limits::default()
    })
    .await;
    // A holds the only slot with a kept-alive connection, idle past the grace period.
    let mut a = connect(srv.addr).await;
    a.write_all(request_head("GET", "/metadata/root.json", &[], false).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut a, false).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;

    // B is served at once, not queued behind A.
    let t0 = Instant::now();
    let r = get(srv.addr, "/metadata/timestamp.json", &[]).await;
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // A was closed to make room.
    let (_, closed) = drain_until_closed(&mut a, Duration::from_secs(5)).await;
    assert!(closed, "the idle connection was not shed");
}

#[tokio::test]
async fn busy_server_cuts_slow_request_heads_after_the_busy_header_timeout() {
    let srv = TestServer::start_with(Limits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(10),
        busy_header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    // Two of four slots taken: busy. Each connection sends its head a line at a time.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = connect(srv.addr).await;
        s.write_all(b"GET /metadata/root.json HTTP/1.1\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let t0 = Instant::now();
    for s in &mut slow {
        let mut closed = false;
        // Bounded: 30 rounds of 100 ms.
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                closed = true;
                break;
            }
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        assert!(closed, "slow head still open after {:?}", t0.elapsed());
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn per_peer_cap_sheds_that_peers_own_connection_and_spares_other_peers() {
    let srv = TestServer::start_with(Limits {
        max_connections_per_ip: 2,
        ..Limits::default()
    })
    .await;
    async fn from(src: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
        tokio::time::timeout(STEP, sock.connect(to))
            .await
            .unwrap()
            .unwrap()
    }
    let mut other = from("127.0.0.1", srv.addr).await;
    let mut first = from("127.0.0.2", srv.addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = from("127.0.0.2", srv.addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third from 127.0.0.2 pushes out that peer's longest-waiting connection.
    let mut third = from("127.0.0.2", srv.addr).await;
    let (_, closed) = drain_until_closed(&mut first, Duration::from_secs(5)).await;
    assert!(closed, "the peer's oldest connection was not shed");
    for s in [&mut other, &mut second, &mut third] {
        s.write_all(request_head("GET", "/metadata/root.json", &[], false).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_response(s, false).await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn download_during_atomic_replace_yields_consistent_old_content() {
    let srv = TestServer::start().await;
    let rel = format!("targets/apps/acme/app/2.0/{HASH}.big.bin");
    let old = write_big(&srv, &rel, 7);
    let mut s = connect(srv.addr).await;
    s.write_all(request_head("GET", &format!("/{rel}"), &[], true).as_bytes())
        .await
        .unwrap();
    let (head, mut body) = read_head(&mut s).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(BIG.to_string().as_str())
    );
    let first = (256 * 1024usize).saturating_sub(body.len());
    body.extend(read_n(&mut s, first).await);

    // Publish a new, shorter version under the same name, the way publish does.
    let new = pattern(BIG / 3, 9);
    let dir = srv.root.join(&rel).parent().unwrap().to_path_buf();
    let tmp = dir.join(".big.bin.tmp");
    std::fs::write(&tmp, &new).unwrap();
    std::fs::rename(&tmp, srv.root.join(&rel)).unwrap();

    let rest = BIG - body.len();
    body.extend(read_n(&mut s, rest).await);
    assert!(body == old, "download mixed old and new content");
    let (extra, _) = drain_until_closed(&mut s, STEP).await;
    assert_eq!(extra, 0, "bytes beyond Content-Length");

    let again = get(srv.addr, &format!("/{rel}"), &[]).await;
    assert!(again.body == new, "new request did not see the new file");
}

#[tokio::test]
async fn shutdown_finishes_in_flight_download_and_stops_accepting() {
    let mut srv = TestServer::start().await;
    let data = write_big(&srv, "targets/big.bin", 5);
    let mut s = connect(srv.addr).await;
    s.write_all(request_head("GET", "/targets/big.bin", &[], false).as_bytes())
        .await
        .unwrap();
    let (head, mut body) = read_head(&mut s).await.unwrap();
    assert_eq!(head.status, 200);

    srv.trigger_shutdown();
    // New connections are refused once the listener is closed (bounded poll).
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(srv.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "server still accepts connections after shutdown");

    let rest = BIG - body.len();
    body.extend(read_n(&mut s, rest).await);
    assert!(body == data, "in-flight download was not completed intact");
    // The connection is closed after the in-flight response, and the server stops.
    let (_, closed) = drain_until_closed(&mut s, STEP).await;
    assert!(closed);
    assert!(srv.wait_stopped(STEP).await, "server did not stop");
}

#[tokio::test]
async fn shutdown_drops_stalled_connections_after_grace_period() {
    let mut srv = TestServer::start_with(Limits {
        shutdown_grace: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    write_big(&srv, "targets/big.bin", 5);
    let mut s = connect(srv.addr).await;
    s.write_all(request_head("GET", "/targets/big.bin", &[], false).as_bytes())
        .await
        .unwrap();
    let _ = read_head(&mut s).await.unwrap();
    let t0 = Instant::now();
    srv.trigger_shutdown();
    assert!(srv.wait_stopped(Duration::from_secs(5)).await);
    assert!(t0.elapsed() < Duration::from_secs(3));
    let (received, closed) = drain_until_closed(&mut s, STEP).await;
    assert!(closed && received < BIG);
}

/// Content of version `v` of a republished file; alternates between a small file (read
/// whole) and a large one (streamed), each self-describing so any mix is detectable.
fn version_content(v: usize) -> Vec<u8> {
    let len = if v.is_multiple_of(2) {
        600 + v
    } else {
        300_000 + v
    };
    let mut data = format!("version {v};").into_bytes();
    data.extend(pattern(len, v as u8));
    data
}

#[tokio::test]
async fn responses_during_repeated_republish_are_always_complete_versions() {
    const VERSIONS: usize = 60;
    const READERS: usize = 4;
    const READS_EACH: usize = 40;
    let srv = TestServer::start().await;
    let dir = srv.root.join("metadata");
    std::fs::write(dir.join("timestamp.json"), version_content(0)).unwrap();
    let versions: Vec<Vec<u8>> = (0..VERSIONS).map(version_content).collect();

    let writer_dir = dir.clone();
    let writer = tokio::task::spawn_blocking(move || {
        for v in 1..VERSIONS {
            let tmp = writer_dir.join(format!(".timestamp.json.{v}.tmp"));
            std::fs::write(&tmp, version_content(v)).unwrap();
            std::fs::rename(&tmp, writer_dir.join("timestamp.json")).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let addr = srv.addr;
        readers.push(tokio::spawn(async move {
            let mut bodies = Vec::new();
            for _ in 0..READS_EACH {
                let r = get(addr, "/metadata/timestamp.json", &[]).await;
                assert_eq!(r.status, 200, "file missing during republish");
                bodies.push(r.body);
            }
            bodies
        }));
    }
    for reader in readers {
        for body in reader.await.unwrap() {
            let text = String::from_utf8_lossy(&body[..body.len().min(20)]).into_owned();
            let v: usize = text
                .strip_prefix("version ")
                .and_then(|t| t.split(';').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unrecognisable body start {text:?}"));
            assert!(
                body == versions[v],
                "body of version {v} is not exactly that version"
            );
        }
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn many_concurrent_keep_alive_clients_are_all_served() {
    const CLIENTS: usize = 32;
    const REQUESTS: usize = 10;
    let srv = TestServer::start().await;
    let expected = std::fs::read(srv.root.join("metadata/root.json")).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let addr = srv.addr;
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            for _ in 0..REQUESTS {
                s.write_all(request_head("GET", "/metadata/root.json", &[], false).as_bytes())
                    .await
                    .unwrap();
                let r = read_response(&mut s, false).await.unwrap();
                assert_eq!(r.status, 200);
                assert_eq!(r.body, expected);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(STEP, t)
            .await
            .expect("client timed out")
            .unwrap();
    }
}

//! The report endpoint end to end: signed reports over HTTP into SQLite, every kind of
//! bad input refused and not stored, idempotent retries, and 503 (never 2xx) when the
//! database is locked or full, with the device's outbox keeping the report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use petrel_client::decide::InstalledApp;
use petrel_client::fetch::{HttpConfig, HttpTransport};
use petrel_client::report::{DeviceKey, Outbox, Report, ReportFields, ReportResult, SignedReport};
use petrel_server::reports::{ReportStore, ReportsConfig, RolloutSummary, StoreOptions};
use petrel_server::{Server, ServerConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const STEP: Duration = Duration::from_secs(10);

struct Env {
    dir: tempfile::TempDir,
    db: PathBuf,
    key: DeviceKey,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A server with reports enabled on a fresh database, and one enrolled device
/// ("kiosk-1"); `tune` adjusts the reports configuration.
async fn start(tune: impl FnOnce(&mut ReportsConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("metadata")).unwrap();
    let db = dir.path().join("reports.db");
    let key = DeviceKey::load_or_create(dir.path().join("device.key")).unwrap();
    ReportStore::open(&db, &StoreOptions::default())
        .unwrap()
        .enroll("kiosk-1", key.public_key(), false)
        .unwrap();
    let mut rc = ReportsConfig::new(&db);
    tune(&mut rc);
    let (addr, tx) = serve(&root, Some(rc)).await;
    Env {
        dir,
        db,
        key,
        addr,
        stop: Some(tx),
    }
}

/// Runs a server on 127.0.0.1:0 until the returned sender is used or dropped.
async fn serve(root: &Path, reports: Option<ReportsConfig>) -> (SocketAddr, oneshot::Sender<()>) {
    let mut config = ServerConfig::new(root, "127.0.0.1:0".parse().unwrap());
    config.reports = reports;
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

fn fields(device: &str, result: ReportResult, n: i64) -> ReportFields {
    let mut inventory = BTreeMap::new();
    inventory.insert("player".to_string(), InstalledApp::version("2.1.0"));
    ReportFields {
        device_id: device.into(),
        campaign: "player-2.1".into(),
        revision: 2,
        wave: Some(0),
        result,
        reason: if result == ReportResult::Failed {
            "hook exit 3".into()
        } else {
            String::new()
        },
        inventory_after: inventory,
        consent_log: Vec::new(),
        time: Utc.with_ymd_and_hms(2026, 11, 22, 6, 0, 0).unwrap() + chrono::Duration::seconds(n),
        rolled_back: false,
    }
}

fn signed(env: &Env, n: i64) -> SignedReport {
    Report::new(fields("kiosk-1", ReportResult::Succeeded, n)).sign(&env.key)
}

struct Answer {
    status: u16,
    headers: String,
    body: Value,
}

/// One raw HTTP/1.1 request on a fresh connection; bounded in time.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut s = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    // The server may answer (413) and close before reading everything: ignore write errors.
    let _ = tokio::time::timeout(STEP, s.write_all(&raw)).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body: serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    }
}

async fn post(addr: SocketAddr, body: &[u8]) -> Answer {
    send(
        addr,
        "POST",
        "/v1/reports",
        &[("Content-Type", "application/json")],
        body,
    )
    .await
}

fn stored(db: &Path) -> u64 {
    ReportStore::open_read_only(db)
        .unwrap()
        .report_count()
        .unwrap()
}

#[tokio::test]
async fn valid_report_is_stored_and_answered_201() {
    let env = start(|_| {}).await;
    let r = signed(&env, 0);
    let a = post(env.addr, &r.to_vec()).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["stored"], true);
    assert_eq!(a.body["report_id"], r.report_id());
    assert_eq!(stored(&env.db), 1);
}

#[tokio::test]
async fn retried_report_is_stored_once_and_answered_200_duplicate() {
    let env = start(|_| {}).await;
    let bytes = signed(&env, 0).to_vec();
    assert_eq!(post(env.addr, &bytes).await.status, 201);
    let again = post(env.addr, &bytes).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["stored"], false);
    assert_eq!(stored(&env.db), 1);
}

#[tokio::test]
async fn malformed_truncated_and_mistyped_reports_are_refused_and_not_stored() {
    let env = start(|_| {}).await;
    let bytes = signed(&env, 0).to_vec();
    let a = post(env.addr, b"{not json").await;
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (400, Some("malformed"))
    );
    let a = post(env.addr, &bytes[..bytes.len() / 2]).await;
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"].as_str().unwrap().contains("malformed"),
        "{:?}",
        a.body
    );
    let a = send(
        env.addr,
        "POST",
        "/v1/reports",
        &[("Content-Type", "text/plain")],
        &bytes,
    )
    .await;
    assert_eq!(a.status, 415);
    assert_eq!(stored(&env.db), 0);
}

#[tokio::test]
async fn oversized_report_is_413_by_length_and_by_streamed_body_and_not_stored() {
    let env = start(|rc| rc.max_body_bytes = 4096).await;
    let mut f = fields("kiosk-1", ReportResult::Succeeded, 0);
    f.reason = "x".repeat(8000);
    let big = Report::new(f).sign(&env.key).to_vec();
    let a = post(env.addr, &big).await;
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.body["code"], "too_large");
    // Chunked, so no Content-Length announces the size: the streaming limit catches it.
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let a = send(
        env.addr,
        "POST",
        "/v1/reports",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        &chunked,
    )
    .await;
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(stored(&env.db), 0);
}

#[tokio::test]
async fn unsigned_report_is_403_and_not_stored() {
    let env = start(|_| {}).await;
    let mut v: Value = serde_json::from_slice(&signed(&env, 0).to_vec()).unwrap();
    v["signatures"] = Value::Array(vec![]);
    let a = post(env.addr, &serde_json::to_vec(&v).unwrap()).await;
    assert_eq!((a.status, a.body["code"].as_str()), (403, Some("unsigned")));
    assert_eq!(stored(&env.db), 0);
}

#[tokio::test]
async fn report_signed_by_another_key_is_403_and_not_stored() {
    let env = start(|_| {}).await;
    let thief = DeviceKey::load_or_create(env.dir.path().join("thief.key")).unwrap();
    let forged = Report::new(fields("kiosk-1", ReportResult::Succeeded, 0)).sign(&thief);
    let a = post(env.addr, &forged.to_vec()).await;
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (403, Some("wrong_key"))
    );
    // Labelled with the enrolled key's id: the signature itself fails.
    let mut v: Value = serde_json::from_slice(&forged.to_vec()).unwrap();
    v["signatures"][0]["keyid"] = Value::String(env.key.keyid().0.clone());
    let a = post(env.addr, &serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (403, Some("bad_signature"))
    );
    // A changed field with a recomputed id but the original signature.
    let mut v: Value = serde_json::from_slice(&signed(&env, 0).to_vec()).unwrap();
    v["signed"]["device_id"] = "kiosk-1".into();
    v["signed"]["result"] = "failed".into();
    let id = {
        let mut r: Report = serde_json::from_value(v["signed"].clone()).unwrap();
        r.report_id.clear();
        r.compute_id()
    };
    v["signed"]["report_id"] = Value::String(id);
    let a = post(env.addr, &serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (403, Some("bad_signature"))
    );
    assert_eq!(stored(&env.db), 0);
}

#[tokio::test]
async fn unknown_device_is_403_and_not_stored() {
    let env = start(|_| {}).await;
    let r = Report::new(fields("kiosk-unknown", ReportResult::Succeeded, 0)).sign(&env.key);
    let a = post(env.addr, &r.to_vec()).await;
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (403, Some("unknown_device"))
    );
    assert!(a.body["error"].as_str().unwrap().contains("kiosk-unknown"));
    assert_eq!(stored(&env.db), 0);
}

#[tokio::test]
async fn wrong_schema_version_is_400_and_not_stored() {
    let env = start(|_| {}).await;
    let mut v: Value = serde_json::from_slice(&signed(&env, 0).to_vec()).unwrap();
    v["signed"]["schema_version"] = 9.into();
    let a = post(env.addr, &serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (400, Some("schema_version"))
    );
    assert_eq!(stored(&env.db), 0);
}

fn transport() -> HttpTransport {
    HttpTransport::new(HttpConfig {
        native_roots: false,
        read_timeout: STEP,
        ..HttpConfig::default()
    })
    .unwrap()
}

/// Sends the outbox from a blocking thread (the transport runs its own runtime).
async fn send_outbox(outbox: &Outbox, url: String) -> petrel_client::report::SendSummary {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || outbox.send_all_with(&transport(), &url))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_database_answers_503_and_the_outbox_keeps_the_report_until_it_is_stored() {
    let env = start(|rc| rc.busy_timeout = Duration::from_millis(200)).await;
    let url = format!("http://{}/v1/reports", env.addr);
    let outbox = Outbox::open(env.dir.path().join("outbox")).unwrap();
    outbox.queue(&signed(&env, 0)).unwrap();
    // Another process holds the write lock.
    let locker = rusqlite::Connection::open(&env.db).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let a = post(env.addr, &signed(&env, 0).to_vec()).await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert!(a.headers.contains("retry-after:"), "{}", a.headers);
    assert!(
        a.body["error"].as_str().unwrap().contains("locked"),
        "{:?}",
        a.body
    );
    let s = send_outbox(&outbox, url.clone()).await;
    assert_eq!((s.sent, s.kept), (0, 1), "{s:?}");
    assert_eq!(outbox.pending().unwrap().len(), 1);
    locker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(stored(&env.db), 0);
    // Unlocked: the retry is stored and only then leaves the outbox.
    let s = send_outbox(&outbox, url).await;
    assert_eq!((s.sent, s.kept), (1, 0), "{s:?}");
    assert!(outbox.pending().unwrap().is_empty());
    assert_eq!(stored(&env.db), 1);
}

/// A full disk is simulated with the database size cap (`PRAGMA max_page_count`, the
/// `--reports-max-db-bytes` option): SQLite then fails writes with SQLITE_FULL exactly as
/// on a full disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_database_answers_503_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reports.db");
    let size = {
        let s = ReportStore::open(&db, &StoreOptions::default()).unwrap();
        s.enroll(
            "kiosk-1",
            DeviceKey::load_or_create(dir.path().join("k"))
                .unwrap()
                .public_key(),
            false,
        )
        .unwrap();
        drop(s);
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        std::fs::metadata(&db).unwrap().len()
    };
    std::fs::create_dir_all(dir.path().join("tree")).unwrap();
    let mut rc = ReportsConfig::new(&db);
    rc.max_db_bytes = Some(size);
    let (addr, _stop) = serve(&dir.path().join("tree"), Some(rc)).await;
    let key = DeviceKey::load_or_create(dir.path().join("k")).unwrap();
    let mut f = fields("kiosk-1", ReportResult::Succeeded, 0);
    for i in 0..200 {
        f.inventory_after.insert(
            format!("app-{i:03}"),
            InstalledApp::version(format!("{i}.0.0-{}", "x".repeat(64))),
        );
    }
    let r = Report::new(f).sign(&key);
    let a = post(addr, &r.to_vec()).await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert!(a.headers.contains("retry-after:"), "{}", a.headers);
    assert!(
        a.body["error"].as_str().unwrap().contains("full"),
        "{:?}",
        a.body
    );
    assert_eq!(stored(&db), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_are_all_stored_and_a_concurrent_retry_once() {
    let env = start(|_| {}).await;
    let mut tasks = Vec::new();
    for n in 0..12 {
        let bytes = signed(&env, n).to_vec();
        let addr = env.addr;
        tasks.push(tokio::spawn(async move { post(addr, &bytes).await.status }));
    }
    let same = signed(&env, 100).to_vec();
    for _ in 0..4 {
        let bytes = same.clone();
        let addr = env.addr;
        tasks.push(tokio::spawn(async move { post(addr, &bytes).await.status }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses[..12].iter().all(|s| *s == 201), "{statuses:?}");
    let retry: Vec<u16> = statuses[12..].to_vec();
    assert_eq!(retry.iter().filter(|s| **s == 201).count(), 1, "{retry:?}");
    assert_eq!(retry.iter().filter(|s| **s == 200).count(), 3, "{retry:?}");
    assert_eq!(stored(&env.db), 13);
}

#[tokio::test]
async fn summary_needs_the_read_token_when_one_is_configured() {
    let env = start(|rc| rc.read_token = Some("s3cret".into())).await;
    let failed = Report::new(fields("kiosk-1", ReportResult::Failed, 5)).sign(&env.key);
    assert_eq!(post(env.addr, &failed.to_vec()).await.status, 201);
    let a = send(env.addr, "GET", "/v1/reports/summary", &[], b"").await;
    assert_eq!(a.status, 401);
    let a = send(
        env.addr,
        "GET",
        "/v1/reports/summary",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .await;
    assert_eq!(a.status, 401);
    let a = send(
        env.addr,
        "GET",
        "/v1/reports/summary?campaign=player-2.1",
        &[("Authorization", "Bearer s3cret")],
        b"",
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let s: RolloutSummary = serde_json::from_value(a.body).unwrap();
    let c = s.campaign("player-2.1").unwrap();
    assert_eq!((c.counts.failed, c.counts.succeeded), (1, 0));
    assert_eq!(c.counts.failure_reasons[0].reason, "hook exit 3");
}

#[tokio::test]
async fn without_a_reports_db_post_is_405_and_the_summary_path_is_just_a_file_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("metadata")).unwrap();
    let (addr, _stop) = serve(dir.path(), None).await;
    assert_eq!(post(addr, b"{}").await.status, 405);
    assert_eq!(
        send(addr, "GET", "/v1/reports/summary", &[], b"")
            .await
            .status,
        404
    );
}

#[test]
fn enroll_and_enrolled_commands_manage_device_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let key = DeviceKey::load_or_create(dir.path().join("device.key")).unwrap();
    let pem = dir.path().join("device.pub.pem");
    std::fs::write(&pem, key.public_pem()).unwrap();
    let bin = env!("CARGO_BIN_EXE_petrel-server");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let dbs = db.to_str().unwrap();
    let pems = pem.to_str().unwrap();
    let (ok, out) = run(&[
        "enroll",
        "--reports-db",
        dbs,
        "--device",
        "kiosk-7",
        "--public-key",
        pems,
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("enrolled"), "{out}");
    let (ok, out) = run(&["enrolled", "--reports-db", dbs]);
    assert!(
        ok && out.contains("kiosk-7") && out.contains(&key.keyid().0),
        "{out}"
    );
    // Another key for the same device is refused without --replace.
    let other = DeviceKey::load_or_create(dir.path().join("other.key")).unwrap();
    std::fs::write(&pem, other.public_pem()).unwrap();
    let (ok, out) = run(&[
        "enroll",
        "--reports-db",
        dbs,
        "--device",
        "kiosk-7",
        "--public-key",
        pems,
    ]);
    assert!(!ok && out.contains("--replace"), "{out}");
    let (ok, out) = run(&[
        "enroll",
        "--reports-db",
        dbs,
        "--device",
        "kiosk-7",
        "--public-key",
        pems,
        "--replace",
    ]);
    assert!(ok, "{out}");
    let store = ReportStore::open_read_only(&db).unwrap();
    assert_eq!(
        store.device_key("kiosk-7").unwrap().unwrap(),
        *other.public_key()
    );
    // Not a public key file.
    std::fs::write(&pem, "hello").unwrap();
    let (ok, out) = run(&[
        "enroll",
        "--reports-db",
        dbs,
        "--device",
        "kiosk-8",
        "--public-key",
        pems,
    ]);
    assert!(!ok && out.contains("device.pub.pem"), "{out}");
}

#[tokio::test]
async fn a_report_body_that_stalls_gets_408_and_is_not_stored() {
    let env = start(|rc| rc.body_timeout = Duration::from_millis(300)).await;
    let bytes = signed(&env, 0).to_vec();
    let mut s = tokio::time::timeout(STEP, TcpStream::connect(env.addr))
        .await
        .unwrap()
        .unwrap();
    let head = format!(
        "POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&bytes[..10]).await.unwrap(); // and then nothing
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(STEP, s.read(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(stored(&env.db), 0);
}

#[tokio::test]
async fn a_report_dated_2099_does_not_outrank_later_received_reports_and_is_flagged() {
    let env = start(|_| {}).await;
    let mut future = fields("kiosk-1", ReportResult::Succeeded, 0);
    future.time = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    let future = Report::new(future).sign(&env.key);
    assert_eq!(post(env.addr, &future.to_vec()).await.status, 201);
    let mut now = fields("kiosk-1", ReportResult::Failed, 0);
    now.time = Utc::now();
    let now = Report::new(now).sign(&env.key);
    assert_eq!(post(env.addr, &now.to_vec()).await.status, 201);

    let a = send(env.addr, "GET", "/v1/reports/summary", &[], b"").await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let s: RolloutSummary = serde_json::from_value(a.body.clone()).unwrap();
    let c = s.campaign("player-2.1").unwrap();
    assert_eq!(
        (c.counts.failed, c.counts.succeeded),
        (1, 0),
        "the report received last is the device's latest: {:?}",
        a.body
    );
    assert_eq!(c.counts.clock_skewed, 1, "{:?}", a.body);
    // The receive time and the flag are stored with each report.
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT received_at, clock_skewed FROM reports ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), vec![1, 0]);
    for (received, _) in &rows {
        let t = chrono::DateTime::parse_from_rfc3339(received).unwrap();
        assert!((Utc::now() - t.with_timezone(&Utc)).num_seconds().abs() < 60);
    }
}

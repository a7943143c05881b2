//! Tests of the report format, the device key and the outbox.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::TimeZone;

use super::*;
use crate::consent::{ConsentAction, ConsentEvent, GENESIS};
use crate::manifest::{ManifestHash, UtcTime};

fn fields() -> ReportFields {
    let mut inventory = BTreeMap::new();
    inventory.insert("player".to_string(), InstalledApp::version("2.1.0"));
    ReportFields {
        device_id: "kiosk-0042".into(),
        campaign: "player-2.1".into(),
        revision: 3,
        wave: Some(1),
        result: ReportResult::Failed,
        reason: "post-install check failed: exit 3".into(),
        inventory_after: inventory,
        consent_log: Vec::new(),
        time: Utc.with_ymd_and_hms(2026, 11, 22, 6, 0, 0).unwrap(),
        rolled_back: false,
    }
}

fn key(dir: &Path) -> DeviceKey {
    DeviceKey::load_or_create(dir.join("device.key")).unwrap()
}

use std::path::Path;

#[test]
fn signed_report_round_trips_through_bytes_and_verifies() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let signed = Report::new(fields()).sign(&k);
    let bytes = signed.to_vec();
    let parsed = SignedReport::from_slice(&bytes, MAX_REPORT_BYTES).unwrap();
    let report = parsed.verify(k.public_key()).unwrap();
    assert_eq!(report, &signed.signed);
    assert_eq!(report.schema_version, SCHEMA_VERSION);
    assert_eq!(report.result, ReportResult::Failed);
    // The wire form: lowercase result, TUF envelope.
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["signed"]["result"], "failed");
    assert_eq!(v["signatures"][0]["keyid"], k.keyid().0.as_str());
}

#[test]
fn report_with_consent_log_entries_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let mut f = fields();
    f.consent_log.push(LogEntry {
        seq: 0,
        prev: GENESIS.into(),
        event: ConsentEvent {
            campaign: "player-2.1".into(),
            revision: 3,
            manifest_sha256: ManifestHash::of(b"manifest"),
            offer_sha256: None,
            at: UtcTime::parse("2026-11-21T10:00:00Z").unwrap(),
            action: ConsentAction::Accept,
            locale: None,
        },
    });
    let signed = Report::new(f).sign(&k);
    let parsed = SignedReport::from_slice(&signed.to_vec(), MAX_REPORT_BYTES).unwrap();
    assert_eq!(parsed.verify(k.public_key()).unwrap().consent_log.len(), 1);
}

/// Changes `signed.reason` in the wire bytes; with `fix_id` also recomputes `report_id`
/// so that only the signature can catch the change.
fn tamper(bytes: &[u8], fix_id: bool) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    v["signed"]["reason"] = Value::String("all good".into());
    v["signed"]["result"] = Value::String("succeeded".into());
    if fix_id {
        let mut without = v["signed"].clone();
        without.as_object_mut().unwrap().remove("report_id");
        v["signed"]["report_id"] = Value::String(id_of_value(&without).unwrap());
    }
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn tampered_field_is_rejected_by_id_and_by_signature() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let bytes = Report::new(fields()).sign(&k).to_vec();
    let err = SignedReport::from_slice(&tamper(&bytes, false), MAX_REPORT_BYTES).unwrap_err();
    assert!(matches!(err, ReportError::IdMismatch { .. }), "{err}");
    let parsed = SignedReport::from_slice(&tamper(&bytes, true), MAX_REPORT_BYTES).unwrap();
    let err = parsed.verify(k.public_key()).unwrap_err();
    assert!(matches!(err, ReportError::BadSignature { .. }), "{err}");
}

#[test]
fn report_signed_by_another_key_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let device = key(d.path());
    let other = DeviceKey::load_or_create(d.path().join("other.key")).unwrap();
    let signed = Report::new(fields()).sign(&other);
    let parsed = SignedReport::from_slice(&signed.to_vec(), MAX_REPORT_BYTES).unwrap();
    let err = parsed.verify(device.public_key()).unwrap_err();
    assert!(matches!(err, ReportError::WrongKey { .. }), "{err}");
    // Even when the attacker labels its signature with the device's key id.
    let mut forged = signed.clone();
    forged.signatures[0].keyid = device.keyid().clone();
    let err = forged.verify(device.public_key()).unwrap_err();
    assert!(matches!(err, ReportError::BadSignature { .. }), "{err}");
}

#[test]
fn unsigned_report_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let mut v: Value = serde_json::from_slice(&Report::new(fields()).sign(&k).to_vec()).unwrap();
    v["signatures"] = Value::Array(Vec::new());
    let parsed =
        SignedReport::from_slice(&serde_json::to_vec(&v).unwrap(), MAX_REPORT_BYTES).unwrap();
    assert!(matches!(
        parsed.verify(k.public_key()),
        Err(ReportError::Unsigned)
    ));
}

#[test]
fn report_id_is_stable_for_a_retry_and_changes_with_content() {
    let a = Report::new(fields());
    let mut later = fields();
    later.time += chrono::Duration::milliseconds(300); // same second: same report
    let b = Report::new(later);
    assert_eq!(a.report_id, b.report_id);
    assert_eq!(a.report_id, a.compute_id());
    assert_eq!(a.report_id.len(), 64);
    let mut other = fields();
    other.result = ReportResult::Succeeded;
    assert_ne!(Report::new(other).report_id, a.report_id);
}

#[test]
fn oversized_and_truncated_input_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let bytes = Report::new(fields()).sign(&key(d.path())).to_vec();
    let err = SignedReport::from_slice(&bytes, bytes.len() - 1).unwrap_err();
    assert!(matches!(err, ReportError::TooLarge { .. }), "{err}");
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        let err = SignedReport::from_slice(&bytes[..cut], MAX_REPORT_BYTES).unwrap_err();
        assert!(matches!(err, ReportError::Malformed(_)), "cut {cut}: {err}");
    }
}

#[test]
fn unknown_schema_version_and_unknown_fields_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let bytes = Report::new(fields()).sign(&key(d.path())).to_vec();
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v["signed"]["schema_version"] = 2.into();
    let err =
        SignedReport::from_slice(&serde_json::to_vec(&v).unwrap(), MAX_REPORT_BYTES).unwrap_err();
    assert!(
        matches!(err, ReportError::SchemaVersion { found: 2 }),
        "{err}"
    );
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v["signed"]["extra"] = 1.into();
    let err =
        SignedReport::from_slice(&serde_json::to_vec(&v).unwrap(), MAX_REPORT_BYTES).unwrap_err();
    assert!(err.to_string().contains("extra"), "{err}");
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v["signed"]["result"] = "exploded".into();
    assert!(SignedReport::from_slice(&serde_json::to_vec(&v).unwrap(), MAX_REPORT_BYTES).is_err());
}

#[test]
fn device_key_is_created_once_with_mode_0600_and_its_public_pem_enrolls() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("state/device.key");
    let k = DeviceKey::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = DeviceKey::load_or_create(&path).unwrap();
    assert_eq!(again.keyid(), k.keyid());
    let public = public_key_from_pem(&k.public_pem()).unwrap();
    assert_eq!(&public, k.public_key());
    assert!(k.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(
        public_key_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .is_err()
    );
}

#[test]
fn outbox_queueing_twice_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    let signed = Report::new(fields()).sign(&k);
    let p1 = outbox.queue(&signed).unwrap();
    let p2 = outbox.queue(&Report::new(fields()).sign(&k)).unwrap();
    assert_eq!(p1, p2);
    let pending = outbox.pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].signed, signed.signed);
}

#[test]
fn outbox_sends_in_queue_order_even_within_one_second() {
    // "staged" then "succeeded" in the same second: the endpoint must see them in that
    // order (it keeps a device's latest report), whatever their ids sort like.
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    let mut queued = Vec::new();
    for result in [
        ReportResult::Staged,
        ReportResult::Succeeded,
        ReportResult::Declined,
        ReportResult::Failed,
    ] {
        let mut f = fields();
        f.result = result;
        let r = Report::new(f).sign(&k);
        queued.push(r.report_id().to_string());
        outbox.queue(&r).unwrap();
    }
    let mut sorted = queued.clone();
    sorted.sort();
    assert_ne!(
        sorted, queued,
        "the ids happen to sort in queue order; pick others"
    );
    let pending: Vec<String> = outbox
        .pending()
        .unwrap()
        .iter()
        .map(|r| r.report_id().to_string())
        .collect();
    assert_eq!(pending, queued);
}

#[test]
fn outbox_moves_corrupt_queue_files_aside() {
    let d = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    std::fs::write(outbox.dir().join("junk.json"), b"{not json").unwrap();
    assert!(outbox.pending().unwrap().is_empty());
    assert!(outbox.dir().join("rejected/junk.json").exists());
    assert!(outbox.dir().join("rejected/junk.reason.txt").exists());
}

/// A tiny HTTP server on 127.0.0.1:0 (see [`endpoint_answering`]), recording the bodies it
/// received.
struct TestEndpoint {
    url: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    _thread: std::thread::JoinHandle<()>,
}

/// The report endpoint's error answer: `{"error": message, "code": code}`.
fn json_error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        serde_json::json!({"error": message, "code": code}).to_string(),
    )
}

/// Answers each request with the next (status, body) of `answers` (then 500); 503s carry
/// `Retry-After: 7`.
fn endpoint_answering(answers: Vec<(u16, String)>) -> TestEndpoint {
    use http_body_util::BodyExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/v1/reports", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(answers.into_iter()));
    let seen = Arc::clone(&bodies);
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            // Bounded: at most 16 connections, and the test ends well before the timeout.
            for _ in 0..16 {
                let accepted =
                    tokio::time::timeout(std::time::Duration::from_secs(10), listener.accept())
                        .await;
                let Ok(Ok((stream, _))) = accepted else {
                    return;
                };
                let seen = Arc::clone(&seen);
                let statuses = Arc::clone(&statuses);
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        let statuses = Arc::clone(&statuses);
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            seen.lock().unwrap().push(body.to_vec());
                            let (status, answer) = statuses
                                .lock()
                                .unwrap()
                                .next()
                                .unwrap_or((500, "answer 500".into()));
                            let mut resp = http::Response::builder().status(status);
                            if status == 503 {
                                resp = resp.header("retry-after", "7");
                            }
                            let resp = resp
                                .body(http_body_util::Full::new(Bytes::from(answer)))
                                .unwrap();
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
    });
    TestEndpoint {
        url,
        bodies,
        _thread: thread,
    }
}

use bytes::Bytes;

fn transport() -> HttpTransport {
    HttpTransport::new(HttpConfig {
        native_roots: false,
        read_timeout: std::time::Duration::from_secs(5),
        ..HttpConfig::default()
    })
    .unwrap()
}

use crate::fetch::{HttpConfig, HttpTransport};

#[test]
fn outbox_deletes_only_after_2xx_sets_malformed_aside_and_keeps_the_rest_on_5xx() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    let mut ids = Vec::new();
    for (i, result) in [
        ReportResult::Succeeded,
        ReportResult::Failed,
        ReportResult::Staged,
    ]
    .into_iter()
    .enumerate()
    {
        let mut f = fields();
        f.result = result;
        f.time += chrono::Duration::seconds(i as i64);
        let r = Report::new(f).sign(&k);
        ids.push(r.report_id().to_string());
        outbox.queue(&r).unwrap();
    }
    // 201 for the first, 400 malformed for the second, 503 for the third.
    let server = endpoint_answering(vec![
        (201, "{}".into()),
        json_error(400, "malformed", "not a report"),
        json_error(503, "unavailable", "database is locked"),
    ]);
    let summary = outbox.send_all_with(&transport(), &server.url);
    assert_eq!(summary.sent, 1, "{summary:?}");
    assert_eq!(summary.rejected.len(), 1, "{summary:?}");
    assert_eq!(summary.rejected[0].report_id, ids[1]);
    assert_eq!(summary.rejected[0].code, "malformed");
    assert_eq!(summary.rejected[0].message, "not a report");
    assert_eq!(summary.kept, 1, "{summary:?}");
    let queued: Vec<String> = std::fs::read_dir(outbox.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!queued.iter().any(|n| n.contains(&ids[0])), "{queued:?}");
    assert!(queued.iter().any(|n| n.contains(&ids[2])), "{queued:?}");
    assert!(outbox
        .dir()
        .join(format!("rejected/{}.json", ids[1]))
        .exists());
    let reason =
        std::fs::read_to_string(outbox.dir().join(format!("rejected/{}.reason.txt", ids[1])))
            .unwrap();
    assert!(
        reason.contains("HTTP 400 malformed: not a report"),
        "{reason}"
    );
    let left = outbox.pending().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].report_id(), ids[2]);
    // What the server received is the signed report, byte for byte.
    let bodies = server.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 3);
    let received = SignedReport::from_slice(&bodies[0], MAX_REPORT_BYTES).unwrap();
    assert_eq!(received.report_id(), ids[0]);
    received.verify(k.public_key()).unwrap();
}

#[test]
fn outbox_keeps_reports_when_the_endpoint_is_unreachable() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    outbox.queue(&Report::new(fields()).sign(&k)).unwrap();
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let summary =
        outbox.send_all_with(&transport(), &format!("http://127.0.0.1:{port}/v1/reports"));
    assert_eq!(summary.sent, 0);
    assert_eq!(summary.kept, 1);
    assert!(summary.retry(), "{summary:?}");
    let stopped = summary.stopped.as_ref().unwrap();
    assert_eq!(stopped.status, None);
    assert!(
        stopped
            .reason
            .starts_with("cannot reach the report endpoint"),
        "{stopped:?}"
    );
    assert_eq!(outbox.pending().unwrap().len(), 1);
}

/// Queues `n` distinct reports; returns their ids in queue order.
fn queue_reports(outbox: &Outbox, k: &DeviceKey, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut f = fields();
            f.time += chrono::Duration::seconds(i as i64);
            let r = Report::new(f).sign(k);
            outbox.queue(&r).unwrap();
            r.report_id().to_string()
        })
        .collect()
}

#[test]
fn outbox_keeps_a_report_refused_as_not_enrolled_and_delivers_it_after_enrollment() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    let ids = queue_reports(&outbox, &k, 2);
    let server = endpoint_answering(vec![
        json_error(
            403,
            "unknown_device",
            "device \"kiosk-0042\" is not enrolled at this report endpoint",
        ),
        (201, "{}".into()),
        (201, "{}".into()),
    ]);
    let t = transport();
    let summary = outbox.send_all_with(&t, &server.url);
    assert_eq!((summary.sent, summary.kept), (0, 2), "{summary:?}");
    assert!(summary.rejected.is_empty(), "{summary:?}");
    assert!(summary.retry());
    let stopped = summary.stopped.as_ref().unwrap();
    assert_eq!(stopped.report_id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(
        (stopped.status, stopped.code.as_deref()),
        (Some(403), Some("unknown_device"))
    );
    assert_eq!(
        stopped.reason,
        "device not enrolled at the report endpoint (HTTP 403 unknown_device): kept, retried later"
    );
    assert!(summary.errors.contains(&stopped.reason), "{summary:?}");
    assert_eq!(server.bodies.lock().unwrap().len(), 1, "the run stopped");
    assert_eq!(outbox.pending().unwrap().len(), 2);
    assert!(outbox.summary().unwrap().set_aside.is_empty());
    // The operator enrolls the device: the next run delivers both, in order.
    let summary = outbox.send_all_with(&t, &server.url);
    assert_eq!((summary.sent, summary.kept), (2, 0), "{summary:?}");
    assert!(!summary.retry());
    assert!(outbox.pending().unwrap().is_empty());
    let bodies = server.bodies.lock().unwrap().clone();
    let received: Vec<String> = bodies[1..]
        .iter()
        .map(|b| {
            SignedReport::from_slice(b, MAX_REPORT_BYTES)
                .unwrap()
                .report_id()
                .to_string()
        })
        .collect();
    assert_eq!(received, ids);
}

#[test]
fn outbox_keeps_reports_on_every_answer_that_does_not_say_the_report_is_malformed() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    queue_reports(&outbox, &k, 1);
    let answers = vec![
        json_error(403, "wrong_key", "signed by another key"),
        json_error(403, "bad_signature", "bad signature"),
        json_error(401, "unauthorized", "no"),
        (404, "not found".to_string()),
        (405, "".to_string()),
        json_error(408, "timeout", "too slow"),
        (429, "slow down".to_string()),
        (400, "<html>400 Bad Request</html>".to_string()),
        (413, "<html>413 Request Entity Too Large</html>".to_string()),
        json_error(415, "unsupported_media_type", "json please"),
        json_error(400, "bad_query", "not a report problem"),
    ];
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    let server = endpoint_answering(answers);
    let t = transport();
    for status in statuses {
        let summary = outbox.send_all_with(&t, &server.url);
        assert_eq!(summary.kept, 1, "HTTP {status}: {summary:?}");
        assert!(summary.rejected.is_empty(), "HTTP {status}: {summary:?}");
        let stopped = summary.stopped.unwrap();
        assert_eq!(stopped.status, Some(status));
        assert!(
            stopped.reason.contains(&format!("(HTTP {status}"))
                && stopped.reason.ends_with("kept, retried later"),
            "{}",
            stopped.reason
        );
    }
    assert_eq!(outbox.pending().unwrap().len(), 1);
}

#[test]
fn outbox_sets_a_malformed_report_aside_and_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    let ids = queue_reports(&outbox, &k, 4);
    let server = endpoint_answering(vec![
        json_error(400, "schema_version", "schema_version 2 is not supported"),
        json_error(413, "too_large", "report body is larger than the limit"),
        json_error(400, "report_id_mismatch", "report_id does not match"),
        (201, "{}".into()),
    ]);
    let summary = outbox.send_all_with(&transport(), &server.url);
    assert_eq!((summary.sent, summary.kept), (1, 0), "{summary:?}");
    assert!(!summary.retry(), "{summary:?}");
    let rejected: Vec<(&str, u16, &str)> = summary
        .rejected
        .iter()
        .map(|r| (r.report_id.as_str(), r.status, r.code.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [
            (ids[0].as_str(), 400, "schema_version"),
            (ids[1].as_str(), 413, "too_large"),
            (ids[2].as_str(), 400, "report_id_mismatch"),
        ]
    );
    for id in &ids[..3] {
        assert!(outbox.dir().join(format!("rejected/{id}.json")).exists());
    }
    assert!(outbox.pending().unwrap().is_empty());
}

#[test]
fn outbox_keeps_reports_on_503_and_stops_the_run() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    queue_reports(&outbox, &k, 3);
    let server = endpoint_answering(vec![
        json_error(503, "unavailable", "database is locked"),
        (201, "{}".into()),
        (201, "{}".into()),
    ]);
    let summary = outbox.send_all_with(&transport(), &server.url);
    assert_eq!((summary.sent, summary.kept), (0, 3), "{summary:?}");
    assert!(summary.retry());
    let stopped = summary.stopped.unwrap();
    assert_eq!(stopped.status, Some(503));
    assert_eq!(stopped.message, "database is locked");
    assert_eq!(stopped.retry_after, Some(std::time::Duration::from_secs(7)));
    assert_eq!(
        stopped.reason,
        "the report endpoint is unavailable (HTTP 503 unavailable): kept, retried later"
    );
    assert_eq!(server.bodies.lock().unwrap().len(), 1, "the run stopped");
    assert_eq!(outbox.pending().unwrap().len(), 3);
}

#[test]
fn outbox_summary_lists_queued_and_set_aside_reports() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    assert_eq!(outbox.summary().unwrap(), OutboxSummary::default());
    let before = Utc::now() - chrono::Duration::seconds(5);
    let ids = queue_reports(&outbox, &k, 3);
    let server = endpoint_answering(vec![
        json_error(400, "malformed", "not a report"),
        json_error(503, "unavailable", "later"),
    ]);
    outbox.send_all_with(&transport(), &server.url);
    std::fs::write(outbox.dir().join("junk.json"), b"{not json").unwrap();
    outbox.pending().unwrap(); // moves the junk aside
    let s = outbox.summary().unwrap();
    let queued: Vec<&str> = s.queued.iter().map(|e| e.report_id.as_str()).collect();
    assert_eq!(queued, [ids[1].as_str(), ids[2].as_str()]);
    assert!(s
        .queued
        .iter()
        .all(|e| e.reason.is_none() && e.path.exists()));
    let oldest = s.oldest_queued().unwrap();
    assert!(oldest >= before && oldest <= Utc::now(), "{oldest}");
    let mut aside: Vec<&str> = s.set_aside.iter().map(|e| e.report_id.as_str()).collect();
    aside.sort();
    let mut want = vec![ids[0].as_str(), "junk"];
    want.sort();
    assert_eq!(aside, want);
    let mine = s.set_aside.iter().find(|e| e.report_id == ids[0]).unwrap();
    assert_eq!(
        mine.reason.as_deref(),
        Some("HTTP 400 malformed: not a report")
    );
    assert!(s.oldest_set_aside().is_some());
    assert!(s
        .set_aside
        .iter()
        .find(|e| e.report_id == "junk")
        .and_then(|e| e.reason.as_deref())
        .is_some_and(|r| r.starts_with("unreadable queue file")));
}

#[test]
fn a_report_changed_after_parsing_no_longer_verifies() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    let bytes = Report::new(fields()).sign(&k).to_vec();
    let mut parsed = SignedReport::from_slice(&bytes, MAX_REPORT_BYTES).unwrap();
    parsed.signed.result = ReportResult::Succeeded;
    let err = parsed.verify(k.public_key()).unwrap_err();
    assert!(matches!(err, ReportError::BadSignature { .. }), "{err}");
}

#[test]
fn a_report_not_in_canonical_form_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let bytes = Report::new(fields()).sign(&key(d.path())).to_vec();
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    // The same instant, written another way: what is verified must be what is stored.
    v["signed"]["time"] = "2026-11-22T06:00:00+00:00".into();
    let err =
        SignedReport::from_slice(&serde_json::to_vec(&v).unwrap(), MAX_REPORT_BYTES).unwrap_err();
    assert!(err.to_string().contains("canonical form"), "{err}");
}

#[test]
fn outbox_refuses_a_report_id_that_is_not_a_hash() {
    let d = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(d.path().join("outbox")).unwrap();
    let mut r = Report::new(fields()).sign(&key(d.path()));
    r.signed.report_id = "../../escape".into();
    assert!(outbox.queue(&r).is_err());
    assert!(!d.path().join("escape.json").exists());
}

#[test]
fn a_report_time_outside_rfc_3339_years_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path());
    for (year, ok) in [(-60, false), (10000, false), (0, true), (9999, true)] {
        let mut f = fields();
        f.time = Utc.with_ymd_and_hms(year, 6, 1, 12, 0, 0).unwrap();
        let bytes = Report::new(f).sign(&k).to_vec();
        let parsed = SignedReport::from_slice(&bytes, MAX_REPORT_BYTES);
        assert_eq!(parsed.is_ok(), ok, "year {year}: {parsed:?}");
        if let Ok(r) = parsed {
            // What the endpoint stores, it can read back.
            let text = r
                .signed
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            assert!(DateTime::parse_from_rfc3339(&text).is_ok(), "{text}");
        }
    }
}

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

/// A tiny HTTP server on 127.0.0.1:0 answering each request with the next status from
/// `statuses` (then 500), recording the bodies it received.
struct TestEndpoint {
    url: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    _thread: std::thread::JoinHandle<()>,
}

fn endpoint(statuses: Vec<u16>) -> TestEndpoint {
    use http_body_util::BodyExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/v1/reports", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(statuses.into_iter()));
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
                            let status = statuses.lock().unwrap().next().unwrap_or(500);
                            let resp = http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(Bytes::from(format!(
                                    "answer {status}"
                                ))))
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
fn outbox_deletes_only_after_2xx_sets_4xx_aside_and_keeps_the_rest_on_5xx() {
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
    // 201 for the first, 400 for the second, 503 for the third.
    let server = endpoint(vec![201, 400, 503]);
    let summary = outbox.send_all_with(&transport(), &server.url);
    assert_eq!(summary.sent, 1, "{summary:?}");
    assert_eq!(summary.rejected.len(), 1, "{summary:?}");
    assert_eq!(summary.rejected[0].report_id, ids[1]);
    assert_eq!(summary.rejected[0].message, "answer 400");
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
    assert!(reason.contains("HTTP 400: answer 400"), "{reason}");
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
    assert_eq!(outbox.pending().unwrap().len(), 1);
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

//! Report parsing on the server (`reports::process`: parse, look up the enrolled key,
//! verify, store in SQLite) and the summary query's `campaign` parameter. Mode byte
//! 0: the body as POSTed; 1: the JSON is a report (or an envelope) that is given its
//! content id and signed with the enrolled device's key first, as a device would send it;
//! 2: the rest is a summary query string.
//!
//! Properties: never a panic; a report the device library produced and signed for an
//! enrolled device is stored (or refused only for a field rule), never refused as
//! non-canonical, as having a wrong id or as badly signed; the query decoder decodes an
//! escape only from two hex digits.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use petrel_client::report::{DeviceKey, Report, MAX_REPORT_BYTES};
use petrel_fuzz::{fixture_key_pem, mode, now};
use petrel_server::reports::{process, summary_campaign_param, Outcome, ReportStore, StoreOptions};
use serde_json::Value;

const DEVICE: &str = "device-1";

struct State {
    _dir: tempfile::TempDir,
    key: DeviceKey,
    store: ReportStore,
    stored: u64,
}

fn open() -> State {
    let dir = tempfile::Builder::new()
        .prefix("petrel-fuzz-reports")
        .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .expect("temporary directory");
    let key_path = dir.path().join("device.pem");
    std::fs::write(&key_path, fixture_key_pem("device")).expect("key file");
    let key = DeviceKey::load_or_create(&key_path).expect("device key");
    let store = ReportStore::open(dir.path().join("reports.db"), &StoreOptions::default())
        .expect("report store");
    store
        .enroll(DEVICE, key.public_key(), false)
        .expect("enroll");
    State {
        _dir: dir,
        key,
        store,
        stored: 0,
    }
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// A strict reference decoder for the query value: `%` and exactly two hex digits, `+` is
/// a space.
fn reference_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                if !h.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query(q: &str) {
    let got = summary_campaign_param(q);
    let value = q
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| *k == "campaign");
    match value {
        None => assert_eq!(got, Ok(None)),
        Some((_, v)) => assert_eq!(got.ok().flatten(), reference_decode(v), "query {q:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (m, rest) = mode(data);
    if m % 4 == 2 {
        if let Ok(q) = std::str::from_utf8(rest) {
            query(q);
        }
        return;
    }
    let mut guard = STATE.lock().unwrap();
    // Start a fresh database now and then, so it stays small.
    if guard.as_ref().is_none_or(|s| s.stored >= 20_000) {
        *guard = Some(open());
    }
    let s = guard.as_mut().unwrap();
    if m % 4 == 0 {
        if let Outcome::Stored { .. } = process(&s.store, rest, MAX_REPORT_BYTES) {
            s.stored += 1;
        }
        return;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    if v.get("signed").is_some() {
        v = v["signed"].take();
    }
    let Ok(mut report) = serde_json::from_value::<Report>(v) else {
        return;
    };
    report.report_id = report.compute_id();
    let body = report.sign(&s.key).to_vec();
    let outcome = process(&s.store, &body, MAX_REPORT_BYTES);
    match &outcome {
        Outcome::Stored { report_id } => {
            s.stored += 1;
            assert_eq!(report_id, &report.report_id);
            assert_eq!(
                report.device_id, DEVICE,
                "a report of another device was stored"
            );
            let _ = s.store.summary(Some(&report.campaign)).expect("summary");
        }
        Outcome::Duplicate { .. } => {}
        Outcome::Rejected { code, message, .. } => {
            if report.device_id == DEVICE && body.len() <= MAX_REPORT_BYTES {
                assert!(
                    *code == "malformed" || *code == "schema_version",
                    "a report signed by the device was refused: {code}: {message}"
                );
                assert!(
                    !message.contains("canonical form"),
                    "a report the device wrote was refused as non-canonical: {message}\n{}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        Outcome::Unavailable { message } => panic!("store unavailable: {message}"),
    }
    let _ = now();
});

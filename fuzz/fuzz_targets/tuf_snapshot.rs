//! Snapshot metadata (spec 5.5) against the fixture's trusted root and a timestamp that
//! pins the input (signed per input with the fixture timestamp key, so the length and hash
//! check passes and the snapshot's own checks run), with and without the fixture snapshot
//! as the previously trusted one (rollback checks). Mode byte bit 0: 0 the bytes as served,
//! 1 the JSON re-signed with the fixture snapshot key; bit 1: a previous snapshot; bit 2:
//! the timestamp pins the version only.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use petrel_client::tuf::schema::{Signed, Snapshot};
use petrel_client::tuf::updater::TrustedRoot;
use petrel_fuzz::{
    claimed_version, envelope, mode, modes, now, signed_part, timestamp_pinning, Keys, SNAPSHOT,
    TARGETS, TIMESTAMP, TRUSTED_ROOT,
};
use serde_json::{json, Value};

struct State {
    keys: Keys,
    root: TrustedRoot,
    previous: Signed<Snapshot>,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let root = TrustedRoot::from_trusted_bytes(TRUSTED_ROOT).expect("fixture root loads");
        let (with_ts, _) = root
            .clone()
            .update_timestamp(None, TIMESTAMP, now())
            .expect("fixture timestamp");
        let previous = with_ts
            .verify_local_snapshot(SNAPSHOT)
            .expect("fixture snapshot");
        State {
            keys: Keys::load(),
            root,
            previous,
        }
    })
}

fn check(bytes: &[u8], with_previous: bool, version_only: bool) {
    let s = state();
    let claimed = serde_json::from_slice::<Value>(bytes)
        .ok()
        .map(|v| claimed_version(&v["signed"]))
        .unwrap_or(1)
        .max(1); // the referrer cannot pin version 0 (the role's own check refuses it)
    let ts = if version_only {
        let signed = json!({
            "_type": "timestamp", "spec_version": "1.0.34", "version": 2,
            "expires": "2124-01-01T00:00:00Z",
            "meta": {"snapshot.json": {"version": claimed}}
        });
        envelope(&signed, &[s.keys.get("timestamp")], &[]).expect("canonical")
    } else {
        timestamp_pinning(&s.keys, 2, claimed, bytes)
    };
    let (with_ts, _) = s
        .root
        .clone()
        .update_timestamp(None, &ts, now())
        .expect("the harness's timestamp verifies");
    let _ = with_ts.verify_local_snapshot(bytes);
    let previous = with_previous.then_some(&s.previous);
    let Ok(verified) = with_ts.verify_snapshot(previous, bytes, now()) else {
        return;
    };
    let new = &verified.signed().signed;
    assert_eq!(
        new.version, claimed,
        "snapshot version differs from the timestamp's"
    );
    assert!(new.expires.0 > now(), "an expired snapshot was accepted");
    if let Some(prev) = previous {
        for (name, old) in &prev.signed.meta {
            let m = new.meta.get(name).expect("a role was removed");
            assert!(m.version >= old.version, "{name} rolled back");
        }
    }
    // The next step reads the snapshot's entry for targets.json.
    let with_snapshot = with_ts.with_snapshot(verified);
    let _ = with_snapshot.role_meta("targets");
    let _ = with_snapshot.verify_targets(TARGETS, now());
}

fuzz_target!(|data: &[u8]| {
    let (m, rest) = mode(data);
    let (with_previous, version_only) = (m & 2 != 0, m & 4 != 0);
    match m % 2 {
        modes::RAW => check(rest, with_previous, version_only),
        _ => {
            let Some((signed, extra)) = signed_part(rest) else {
                return;
            };
            if let Some(bytes) = envelope(&signed, &[state().keys.get("snapshot")], &extra) {
                check(&bytes, with_previous, version_only);
            }
        }
    }
});

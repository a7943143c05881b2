//! Timestamp metadata (spec 5.4) against the fixture's trusted root, with and without the
//! fixture's timestamp as the previously trusted one (rollback checks). Mode byte 0: the
//! bytes as served; 1: the JSON is re-signed with the fixture timestamp key first.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use petrel_client::tuf::schema::{Signed, Timestamp};
use petrel_client::tuf::updater::TrustedRoot;
use petrel_fuzz::{envelope, mode, modes, now, signed_part, Keys, TIMESTAMP, TRUSTED_ROOT};

struct State {
    keys: Keys,
    root: TrustedRoot,
    previous: Signed<Timestamp>,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let root = TrustedRoot::from_trusted_bytes(TRUSTED_ROOT).expect("fixture root loads");
        let previous = root
            .verify_local_timestamp(TIMESTAMP)
            .expect("fixture timestamp");
        State {
            keys: Keys::load(),
            root,
            previous,
        }
    })
}

fn check(bytes: &[u8], with_previous: bool) {
    let s = state();
    let _ = s.root.verify_local_timestamp(bytes);
    let previous = with_previous.then(|| s.previous.clone());
    let pv = previous
        .as_ref()
        .map(|p| (p.signed.version, p.signed.snapshot_meta().version));
    if let Ok((with_ts, replaced)) = s.root.clone().update_timestamp(previous, bytes, now()) {
        let ts = &with_ts.timestamp().signed;
        if let Some((v, sv)) = pv {
            assert!(ts.version >= v, "timestamp version rolled back");
            assert!(
                ts.snapshot_meta().version >= sv,
                "snapshot version rolled back"
            );
            assert_eq!(replaced, ts.version > v);
        }
        assert!(ts.expires.0 > now(), "an expired timestamp was accepted");
        let _ = with_ts.snapshot_meta();
    }
}

fuzz_target!(|data: &[u8]| {
    let (m, rest) = mode(data);
    let with_previous = m & 2 != 0;
    match m % 2 {
        modes::RAW => check(rest, with_previous),
        _ => {
            let Some((signed, extra)) = signed_part(rest) else {
                return;
            };
            if let Some(bytes) = envelope(&signed, &[state().keys.get("timestamp")], &extra) {
                check(&bytes, with_previous);
            }
        }
    }
});

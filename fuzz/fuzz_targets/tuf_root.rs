//! Root metadata: loading a trusted root (self-signed, spec 5.2) and updating the trusted
//! fixture root v1 to a new root (spec 5.3: signed by the old and the new root keys,
//! version exactly N+1). Mode byte 0: the bytes as served; 1: the JSON is re-signed with
//! the fixture root keys (`root`, `root-2`) first, so the typed and version checks run.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use petrel_client::tuf::updater::TrustedRoot;
use petrel_fuzz::{envelope, mode, modes, now, signed_part, Keys, TRUSTED_ROOT};

struct State {
    keys: Keys,
    trusted: TrustedRoot,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| State {
        keys: Keys::load(),
        trusted: TrustedRoot::from_trusted_bytes(TRUSTED_ROOT).expect("fixture root loads"),
    })
}

fn check(bytes: &[u8]) {
    let s = state();
    if let Ok(root) = TrustedRoot::from_trusted_bytes(bytes) {
        // A loaded root is usable: every top-level role is there (these look-ups expect).
        for role in ["root", "timestamp", "snapshot", "targets"] {
            let _ = root.role_keys(role);
        }
        let _ = root.check_not_expired(now());
        let _ = root.consistent_snapshot();
    }
    let mut trusted = s.trusted.clone();
    let before = trusted.version();
    match trusted.update(bytes) {
        Ok(()) => {
            assert_eq!(
                trusted.version(),
                before + 1,
                "an accepted root is exactly N+1"
            );
            for role in ["root", "timestamp", "snapshot", "targets"] {
                let _ = trusted.role_keys(role);
            }
        }
        Err(_) => assert_eq!(trusted.version(), before, "a refused root changes nothing"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (m, rest) = mode(data);
    match m % 2 {
        modes::RAW => check(rest),
        _ => {
            let Some((signed, extra)) = signed_part(rest) else {
                return;
            };
            let s = state();
            let keys = [s.keys.get("root"), s.keys.get("root-2")];
            let n = if m & 2 == 0 { 1 } else { 2 };
            if let Some(bytes) = envelope(&signed, &keys[..n], &extra) {
                check(&bytes);
            }
        }
    }
});

//! Targets metadata: the top-level role (spec 5.6) and delegated roles (spec 5.6.x, through
//! the delegator's keys), against the fixture's root and a snapshot and timestamp that pin
//! the input (signed per input with the fixture keys, so the length and hash check passes).
//! Mode byte bit 0: 0 the bytes as served, 1 the JSON re-signed with the role's fixture key;
//! bits 1..: which role the input is: `targets`, `acme`, `globex`, `assign` (delegated by
//! `targets`) or one of the hashed bins `assign-bin-0..7` (delegated by `assign`). A role
//! that verifies is then searched like a client would: delegation look-ups for each of its
//! target paths and the capability chain of each delegation.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use petrel_client::manifest::CapabilityChain;
use petrel_client::tuf::schema::{check_target_path, Targets};
use petrel_client::tuf::updater::{TrustedMetadata, TrustedRoot};
use petrel_fuzz::{
    claimed_version, envelope, mode, modes, now, pin, signed_part, snapshot_with,
    timestamp_pinning, Keys, ASSIGN, TARGETS, TRUSTED_ROOT,
};
use serde_json::Value;

const ROLES: [(&str, &str, &str); 12] = [
    ("targets", "", "targets"),
    ("acme", "targets", "acme"),
    ("globex", "targets", "globex"),
    ("assign", "targets", "assign"),
    ("assign-bin-0", "assign", "assign-bins"),
    ("assign-bin-1", "assign", "assign-bins"),
    ("assign-bin-2", "assign", "assign-bins"),
    ("assign-bin-3", "assign", "assign-bins"),
    ("assign-bin-4", "assign", "assign-bins"),
    ("assign-bin-5", "assign", "assign-bins"),
    ("assign-bin-6", "assign", "assign-bins"),
    ("assign-bin-7", "assign", "assign-bins"),
];

struct State {
    keys: Keys,
    root: TrustedRoot,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| State {
        keys: Keys::load(),
        root: TrustedRoot::from_trusted_bytes(TRUSTED_ROOT).expect("fixture root loads"),
    })
}

/// The trusted set after a refresh whose snapshot pins `bytes` as `role`.
fn refresh(role: &str, bytes: &[u8], claimed: u64) -> Result<TrustedMetadata, ()> {
    let s = state();
    let mut meta = serde_json::Map::new();
    if role == "targets" {
        meta.insert("targets.json".into(), pin(claimed, bytes));
    } else {
        meta.insert("targets.json".into(), pin(1, TARGETS));
        meta.insert("assign.json".into(), pin(1, ASSIGN));
        meta.insert(format!("{role}.json"), pin(claimed, bytes));
    }
    let snapshot = snapshot_with(&s.keys, 1, meta);
    let ts = timestamp_pinning(&s.keys, 1, 1, &snapshot);
    let (with_ts, _) = s
        .root
        .clone()
        .update_timestamp(None, &ts, now())
        .expect("timestamp");
    let verified = with_ts
        .verify_snapshot(None, &snapshot, now())
        .expect("snapshot");
    let with_snapshot = with_ts.with_snapshot(verified);
    let top = if role == "targets" { bytes } else { TARGETS };
    let targets = with_snapshot.verify_targets(top, now()).map_err(|_| ())?;
    Ok(with_snapshot.with_targets(targets, now()))
}

/// What a client does with a verified role: look up delegations for its targets and read
/// the capabilities of each delegation.
fn search(trusted: &TrustedMetadata, role: &str, t: &Targets) {
    for path in t.targets.keys() {
        let _ = check_target_path(path);
        if let Some(d) = &t.delegations {
            for (name, _terminating) in d.roles_for_target(path) {
                assert!(
                    d.role_keys(&name).is_some(),
                    "{name} is delegated but has no keys"
                );
            }
        }
    }
    if let Some(d) = &t.delegations {
        // At most 64 names: 2^32 hashed bins are allowed (the client's search is bounded
        // the same way).
        let names: Vec<String> = match &d.succinct_roles {
            Some(bins) => bins.bin_names().take(64).collect(),
            None => d.role_names().into_iter().take(64).collect(),
        };
        for name in names {
            let _ = d.role_keys(&name);
            let mut chain = vec!["targets".to_string()];
            if role != "targets" {
                chain.push(role.to_string());
            }
            chain.push(name);
            let _ = CapabilityChain::from_trusted(trusted, &chain);
        }
    }
}

fn check(which: usize, bytes: &[u8]) {
    let (role, parent, _) = ROLES[which];
    let claimed = serde_json::from_slice::<Value>(bytes)
        .ok()
        .map(|v| claimed_version(&v["signed"]))
        .unwrap_or(1)
        .max(1); // the referrer cannot pin version 0 (the role's own check refuses it)
    let Ok(mut trusted) = refresh(role, bytes, claimed) else {
        return;
    };
    if role == "targets" {
        let t = trusted.targets().signed.clone();
        assert_eq!(t.version, claimed);
        assert!(t.expires.0 > now());
        search(&trusted, "targets", &t);
        return;
    }
    if parent == "assign" {
        let assign = trusted
            .verify_delegated("assign", "targets", ASSIGN)
            .expect("fixture assign verifies");
        trusted.insert_delegated("assign", "targets", ASSIGN.to_vec(), assign);
    }
    match trusted.verify_delegated(role, parent, bytes) {
        Ok(v) => {
            let t = v.signed().signed.clone();
            assert_eq!(t.version, claimed);
            assert!(t.expires.0 > now());
            trusted.insert_delegated(role, parent, bytes.to_vec(), v);
            assert!(trusted.is_trusted_through(role, parent));
            search(&trusted, role, &t);
        }
        Err(_) => {
            trusted.keep_downloaded(role, bytes.to_vec());
            assert!(!trusted.is_trusted_through(role, parent));
            // Another delegator verifying the kept bytes fails the same way.
            assert!(
                trusted.trust_loaded_through(role, parent).is_err()
                    || trusted.delegated_bytes(role).is_none()
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (m, rest) = mode(data);
    let which = usize::from(m >> 1) % ROLES.len();
    match m % 2 {
        modes::RAW => check(which, rest),
        _ => {
            let Some((signed, extra)) = signed_part(rest) else {
                return;
            };
            let key = state().keys.get(ROLES[which].2);
            if let Some(bytes) = envelope(&signed, &[key], &extra) {
                check(which, &bytes);
            }
        }
    }
});

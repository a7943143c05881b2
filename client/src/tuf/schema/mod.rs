//! The TUF metadata schema: serde types for root, timestamp, snapshot and targets metadata.
//!
//! These types only describe the wire format; signing lives in the repo tool's editor and
//! verification in [`crate::tuf::verify`]. Every object keeps the fields it does not know
//! in `unrecognized`, so a round trip through Petrel never drops another tool's fields.

mod common;
mod root;
mod snapshot;
mod targets;
mod timestamp;
pub mod tree;

pub use common::*;
pub use root::*;
pub use snapshot::*;
pub use targets::*;
pub use timestamp::*;
pub use tree::SnapshotTree;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuf::canonical::canonicalize;
    use serde_json::json;

    /// Other TUF implementations add fields at every level; Petrel must keep them so that a
    /// role it re-signs still carries them, and so that signatures over them still verify.
    #[test]
    fn unrecognized_fields_survive_a_round_trip_at_every_level() {
        let key = json!({"keytype": "ed25519", "scheme": "ed25519",
            "keyval": {"public": "00".repeat(32), "x-keyval": 1}, "x-key": [1, 2]});
        let signed = json!({
            "_type": "targets", "spec_version": "1.0.31", "version": 3,
            "expires": "2030-01-01T00:00:00Z", "x-top": {"nested": true},
            "targets": {"a.txt": {"length": 1, "hashes": {"sha256": "00"},
                "custom": {"c": 1}, "x-target": "kept"}},
            "delegations": {"keys": {"k1": key}, "x-delegations": 7,
                "roles": [{"name": "r", "keyids": ["k1"], "threshold": 1, "terminating": false,
                    "paths": ["a/*"], "x-role": null}]}
        });
        let envelope =
            json!({"signed": signed, "signatures": [{"keyid": "k1", "sig": "00", "x-sig": 1}]});
        let parsed: Signed<Targets> = Signed::from_bytes(envelope.to_string().as_bytes()).unwrap();
        let back: serde_json::Value =
            serde_json::from_slice(&parsed.to_file_bytes().unwrap()).unwrap();
        assert_eq!(
            canonicalize(&back).unwrap(),
            canonicalize(&envelope).unwrap()
        );
        assert_eq!(
            parsed.canonical_signed().unwrap(),
            canonicalize(&signed).unwrap()
        );
    }

    #[test]
    fn unrecognized_fields_survive_in_root_timestamp_and_snapshot() {
        let root = json!({"_type": "root", "spec_version": "1.0.0", "version": 1,
            "expires": "2030-01-01T00:00:00Z", "consistent_snapshot": true, "keys": {},
            "x-root": "kept",
            "roles": {"root": {"keyids": [], "threshold": 1, "x-r": 1},
                "targets": {"keyids": [], "threshold": 1},
                "snapshot": {"keyids": [], "threshold": 1},
                "timestamp": {"keyids": [], "threshold": 1}}});
        let ts = json!({"_type": "timestamp", "spec_version": "1.0.0", "version": 1,
            "expires": "2030-01-01T00:00:00Z", "x-ts": 2,
            "meta": {"snapshot.json": {"version": 1, "x-meta": 3}}});
        let sn = json!({"_type": "snapshot", "spec_version": "1.0.0", "version": 1,
            "expires": "2030-01-01T00:00:00Z",
            "meta": {"targets.json": {"version": 1, "length": 9, "x-m": "y"}}});
        fn check<T: Metadata>(signed: serde_json::Value) {
            let env = json!({"signed": signed, "signatures": []});
            let parsed: Signed<T> = Signed::from_bytes(env.to_string().as_bytes()).unwrap();
            assert_eq!(
                parsed.canonical_signed().unwrap(),
                canonicalize(&signed).unwrap()
            );
        }
        check::<Root>(root);
        check::<Timestamp>(ts);
        check::<Snapshot>(sn);
    }
}

//! Shared support for Petrel's fuzz targets: the committed fixture repository
//! (`fixtures/good`), its deterministic signing keys, and helpers that wrap fuzzer bytes in
//! freshly signed TUF envelopes so that mutated metadata gets past the signature check and
//! exercises the checks behind it.
//!
//! Everything here only *prepares* inputs; every check that is fuzzed is the project's own
//! code in `petrel-client` and `petrel-server`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use petrel_client::tuf::canonical::canonicalize;
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use serde_json::{json, Value};

/// The good fixture's trusted root (version 1), as provisioned on devices.
pub const TRUSTED_ROOT: &[u8] = include_bytes!("../../fixtures/good/trusted/root.json");
/// The good fixture's timestamp.
pub const TIMESTAMP: &[u8] = include_bytes!("../../fixtures/good/repo/metadata/timestamp.json");
/// The good fixture's snapshot (version 1).
pub const SNAPSHOT: &[u8] = include_bytes!("../../fixtures/good/repo/metadata/1.snapshot.json");
/// The good fixture's top-level targets (version 1).
pub const TARGETS: &[u8] = include_bytes!("../../fixtures/good/repo/metadata/1.targets.json");
/// The good fixture's delegated role `assign` (delegates to the succinct hashed bins).
pub const ASSIGN: &[u8] = include_bytes!("../../fixtures/good/repo/metadata/1.assign.json");

/// The fixed clock of every target: after the fixtures were signed (2024-01-01), before
/// they expire (2124-01-01).
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 6, 1, 12, 0, 0).unwrap()
}

// A PKCS#8 v1 ed25519 private key is this DER prefix followed by the 32-byte seed.
const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// PKCS#8 DER of the fixture key `name`: ed25519 from the seed
/// SHA-256("petrel fixture key v1: NAME") (the formula of `fixtures/README.md`).
pub fn fixture_key_der(name: &str) -> Vec<u8> {
    let seed = ring::digest::digest(
        &ring::digest::SHA256,
        format!("petrel fixture key v1: {name}").as_bytes(),
    );
    let mut der = PKCS8_V1_ED25519_PREFIX.to_vec();
    der.extend_from_slice(seed.as_ref());
    der
}

/// The fixture key `name`.
pub fn fixture_key(name: &str) -> PrivateKey {
    PrivateKey::from_pkcs8_der(&fixture_key_der(name)).expect("a PKCS#8 v1 ed25519 key")
}

/// The fixture key `name` as PKCS#8 PEM.
pub fn fixture_key_pem(name: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(fixture_key_der(name));
    format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
}

/// The fixture keys by name, loaded once.
pub struct Keys {
    keys: BTreeMap<&'static str, PrivateKey>,
}

impl Keys {
    /// Loads every key the targets sign with.
    pub fn load() -> Keys {
        let keys = [
            "root",
            "root-2",
            "targets",
            "snapshot",
            "timestamp",
            "acme",
            "globex",
            "assign",
            "assign-bins",
        ]
        .into_iter()
        .map(|n| (n, fixture_key(n)))
        .collect();
        Keys { keys }
    }

    /// The key called `name`.
    pub fn get(&self, name: &str) -> &PrivateKey {
        &self.keys[name]
    }
}

/// One signature object over `canonical` by `key`.
fn signature(key: &PrivateKey, canonical: &[u8]) -> Value {
    json!({
        "keyid": key.key_id().0,
        "sig": hex::encode(key.sign(canonical).expect("ed25519 signs")),
    })
}

/// Wraps `signed` in an envelope signed by `keys` (in order). Returns `None` when `signed`
/// has no canonical form (a float, say): nothing could sign it.
pub fn envelope(signed: &Value, keys: &[&PrivateKey], extra: &[Value]) -> Option<Vec<u8>> {
    let canonical = canonicalize(signed).ok()?;
    let mut sigs: Vec<Value> = keys.iter().map(|k| signature(k, &canonical)).collect();
    sigs.extend_from_slice(extra);
    Some(
        serde_json::to_vec(&json!({"signed": signed, "signatures": sigs}))
            .expect("JSON serializes"),
    )
}

/// The `signed` object and the extra signatures carried by fuzzer bytes: an envelope
/// (`{"signed": …, "signatures": […]}`) gives its parts (its signatures are kept after the
/// valid ones, so malformed or repeated ones are still seen); any other JSON value is the
/// `signed` object itself.
pub fn signed_part(data: &[u8]) -> Option<(Value, Vec<Value>)> {
    let v: Value = serde_json::from_slice(data).ok()?;
    match v {
        Value::Object(mut m) if m.contains_key("signed") => {
            let signed = m.remove("signed")?;
            let extra = match m.remove("signatures") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            Some((signed, extra))
        }
        other => Some((other, Vec::new())),
    }
}

/// The `version` a `signed` object claims, if it is a small non-negative integer.
pub fn claimed_version(signed: &Value) -> u64 {
    signed.get("version").and_then(Value::as_u64).unwrap_or(1)
}

/// SHA-256 (lowercase hex).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// The pinning entry (`version`, `length`, `hashes`) of `bytes` in a timestamp or snapshot.
pub fn pin(version: u64, bytes: &[u8]) -> Value {
    json!({"version": version, "length": bytes.len(), "hashes": {"sha256": sha256_hex(bytes)}})
}

/// A timestamp of version `version` pinning snapshot bytes, signed by the timestamp key.
pub fn timestamp_pinning(
    keys: &Keys,
    version: u64,
    snapshot_version: u64,
    snapshot: &[u8],
) -> Vec<u8> {
    let signed = json!({
        "_type": "timestamp", "spec_version": "1.0.34", "version": version,
        "expires": "2124-01-01T00:00:00Z",
        "meta": {"snapshot.json": pin(snapshot_version, snapshot)}
    });
    envelope(&signed, &[keys.get("timestamp")], &[]).expect("canonical")
}

/// A snapshot of version `version` with `meta` (file name → pinning entry), signed by the
/// snapshot key.
pub fn snapshot_with(keys: &Keys, version: u64, meta: serde_json::Map<String, Value>) -> Vec<u8> {
    let signed = json!({
        "_type": "snapshot", "spec_version": "1.0.34", "version": version,
        "expires": "2124-01-01T00:00:00Z", "meta": meta
    });
    envelope(&signed, &[keys.get("snapshot")], &[]).expect("canonical")
}

/// The `signed` object of committed metadata bytes.
pub fn signed_of(bytes: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(bytes).expect("fixture is JSON");
    v["signed"].take()
}

/// Splits off the first byte as a mode selector.
pub fn mode(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((m, rest)) => (*m, rest),
        None => (0, data),
    }
}

/// Mode bytes of the TUF targets: how the rest of the input is used.
pub mod modes {
    /// The rest is the metadata file exactly as served.
    pub const RAW: u8 = 0;
    /// The rest is JSON (an envelope or a `signed` object): it is signed with the role's
    /// fixture key(s) before verification, so the checks after the signature check run.
    pub const RESIGN: u8 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_client::tuf::updater::TrustedRoot;

    #[test]
    fn fixture_keys_are_the_ones_the_fixture_root_names() {
        let keys = Keys::load();
        let root = TrustedRoot::from_trusted_bytes(TRUSTED_ROOT).unwrap();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            let (ids, _) = root.role_keys(role);
            assert!(ids.contains(keys.get(role).key_id()), "{role}");
        }
    }
}

/// The fixed base of the delta target and its seeds: 16 KiB of text-like lines and
/// pseudo-random blocks (deterministic).
pub fn delta_base() -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut line = 0;
    while out.len() < 16 * 1024 {
        if line % 4 == 3 {
            for _ in 0..256 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push(x as u8);
            }
        } else {
            out.extend_from_slice(format!("firmware block {line:05}: calibration=ok\n").as_bytes());
        }
        line += 1;
    }
    out.truncate(16 * 1024);
    out
}

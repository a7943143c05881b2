//! Canonical JSON (`tuf::canonical`, and the manifests' variant `manifest::canonical_json`):
//! any JSON value, canonicalized through the `Value` writer and through the direct
//! serializer, must give the same bytes; the bytes must parse back to the same value (the
//! OLPC form escapes only `"` and `\`, so that holds for strings without control
//! characters; the manifest form escapes those too and always round-trips); canonicalizing
//! is idempotent. Typed metadata (root, timestamp, snapshot, targets) that parses must
//! serialize canonically the same both ways and survive a file round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_client::manifest::canonical_json_value;
use petrel_client::tuf::canonical::{canonicalize, to_canonical};
use petrel_client::tuf::schema::{Metadata, Root, Signed, Snapshot, Targets, Timestamp};
use serde_json::Value;

fn has_control(v: &Value) -> bool {
    match v {
        Value::String(s) => s.chars().any(|c| c.is_control() && (c as u32) < 0x20),
        Value::Array(a) => a.iter().any(has_control),
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| k.chars().any(|c| (c as u32) < 0x20) || has_control(v)),
        _ => false,
    }
}

fn typed<T: Metadata + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(s) = Signed::<T>::from_bytes(data) else {
        return;
    };
    let direct = to_canonical(&s.signed);
    let via_value = canonicalize(&serde_json::to_value(&s.signed).expect("serializes"));
    assert_eq!(
        direct, via_value,
        "the two canonical writers disagree on typed metadata"
    );
    let file = s.to_file_bytes().expect("parsed metadata writes back");
    let again = Signed::<T>::from_bytes(&file).expect("written metadata parses again");
    assert_eq!(
        again.signed, s.signed,
        "metadata changed in a file round trip"
    );
    // Either both have canonical bytes (the same) or neither does (a float in a field
    // Petrel keeps without interpreting).
    assert_eq!(
        again.canonical_signed().ok(),
        s.canonical_signed().ok(),
        "canonical bytes changed in a file round trip"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let by_value = canonicalize(&v);
    let direct = to_canonical(&v);
    assert_eq!(by_value, direct, "canonicalize and to_canonical disagree");
    let manifest = canonical_json_value(&v);
    assert_eq!(
        by_value.is_ok(),
        manifest.is_ok(),
        "the two canonical forms disagree on floats"
    );
    if let Ok(c) = &by_value {
        if !has_control(&v) {
            let back: Value = serde_json::from_slice(c).expect("canonical JSON parses");
            assert_eq!(back, v, "canonical JSON does not round-trip");
            assert_eq!(
                &canonicalize(&back).unwrap(),
                c,
                "canonicalizing is not idempotent"
            );
            assert_eq!(
                manifest.as_ref().unwrap(),
                c,
                "the forms differ without control characters"
            );
        }
    }
    if let Ok(m) = &manifest {
        let back: Value = serde_json::from_slice(m).expect("manifest canonical JSON parses");
        assert_eq!(back, v, "manifest canonical JSON does not round-trip");
        assert_eq!(&canonical_json_value(&back).unwrap(), m, "not idempotent");
    }
    typed::<Root>(data);
    typed::<Timestamp>(data);
    typed::<Snapshot>(data);
    typed::<Targets>(data);
});

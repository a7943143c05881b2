//! Threshold signature verification: does a role's metadata carry enough valid signatures?

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::tuf::schema::{Key, KeyId, Signature};

/// Why a role's signatures are not accepted: they do not reach its threshold, or the
/// signature list names a key id more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdError {
    /// The role whose metadata was checked.
    pub role: String,
    /// Valid signatures from distinct authorized keys.
    pub valid: usize,
    /// The role's threshold.
    pub threshold: u32,
    /// One line per signature that did not count, and why.
    pub problems: Vec<String>,
    /// A key id that more than one signature names. Key ids must be unique in a signature
    /// list (spec: "multiple signatures with the same keyid are not allowed"), so such a list
    /// is rejected as a whole, before any signature is checked: `valid` is then 0 and
    /// `problems` is empty.
    pub repeated_keyid: Option<KeyId>,
}

impl ThresholdError {
    /// What kind of failure this is, for the start of a message: `signature threshold not
    /// met`, or `signature list repeats a key id`.
    pub fn headline(&self) -> &'static str {
        if self.repeated_keyid.is_some() {
            "signature list repeats a key id"
        } else {
            "signature threshold not met"
        }
    }
}

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(keyid) = &self.repeated_keyid {
            return write!(
                f,
                "{}: key id {keyid} names more than one signature; key ids must be unique in \
                 the signature list",
                self.role
            );
        }
        write!(
            f,
            "{}: {} valid signature(s) from authorized keys, threshold is {}",
            self.role, self.valid, self.threshold
        )?;
        if !self.problems.is_empty() {
            write!(f, " ({})", self.problems.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ThresholdError {}

/// Checks that `signatures` over `message` include at least `threshold` valid signatures
/// from distinct keys among `keyids` (looked up in `keys`).
///
/// A signature list that names a key id more than once is rejected outright, whatever the
/// other signatures are and whether or not that key is authorized
/// ([`ThresholdError::repeated_keyid`]). Two key ids that carry the same public key count
/// once. Signatures by unknown or unauthorized keys are ignored (and reported), never
/// counted. Returns the number of valid signatures.
pub fn verify_threshold(
    role: &str,
    message: &[u8],
    signatures: &[Signature],
    keyids: &[KeyId],
    threshold: u32,
    keys: &BTreeMap<KeyId, Key>,
) -> Result<usize, ThresholdError> {
    let mut listed: BTreeSet<&KeyId> = BTreeSet::new();
    if let Some(sig) = signatures.iter().find(|s| !listed.insert(&s.keyid)) {
        return Err(ThresholdError {
            role: role.to_string(),
            valid: 0,
            threshold,
            problems: Vec::new(),
            repeated_keyid: Some(sig.keyid.clone()),
        });
    }
    let authorized: BTreeSet<&KeyId> = keyids.iter().collect();
    let mut counted_keys: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut problems = Vec::new();
    for sig in signatures {
        if !authorized.contains(&sig.keyid) {
            problems.push(format!(
                "key {} is not authorized for {role}",
                sig.keyid.short()
            ));
            continue;
        }
        let Some(key) = keys.get(&sig.keyid) else {
            problems.push(format!(
                "key {} is listed for {role} but not defined",
                sig.keyid.short()
            ));
            continue;
        };
        match key.verify_hex(message, &sig.sig) {
            Ok(()) => {
                if !counted_keys.insert((key.keytype.as_str(), key.keyval.public.as_str())) {
                    problems.push(format!(
                        "key {} duplicates another counted key",
                        sig.keyid.short()
                    ));
                }
            }
            Err(e) => problems.push(format!("key {}: {e}", sig.keyid.short())),
        }
    }
    let valid = counted_keys.len();
    if valid >= threshold as usize && threshold > 0 {
        Ok(valid)
    } else {
        if signatures.is_empty() {
            problems.push("no signatures".into());
        }
        Err(ThresholdError {
            role: role.to_string(),
            valid,
            threshold,
            problems,
            repeated_keyid: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuf::keys::{KeySource, PrivateKey};
    use crate::tuf::schema::Unrecognized;

    fn sign(k: &PrivateKey, msg: &[u8]) -> Signature {
        Signature {
            keyid: k.key_id().clone(),
            sig: hex::encode(k.sign(msg).unwrap()),
            unrecognized: Unrecognized::new(),
        }
    }

    fn setup(n: usize) -> (Vec<PrivateKey>, BTreeMap<KeyId, Key>, Vec<KeyId>) {
        let ks: Vec<PrivateKey> = (0..n)
            .map(|_| PrivateKey::generate_ed25519().unwrap().0)
            .collect();
        let keys = ks
            .iter()
            .map(|k| (k.key_id().clone(), k.public_key().clone()))
            .collect();
        let ids = ks.iter().map(|k| k.key_id().clone()).collect();
        (ks, keys, ids)
    }

    #[test]
    fn threshold_met_by_distinct_keys() {
        let (ks, keys, ids) = setup(3);
        let sigs = vec![sign(&ks[0], b"m"), sign(&ks[2], b"m")];
        assert_eq!(
            verify_threshold("r", b"m", &sigs, &ids, 2, &keys).unwrap(),
            2
        );
    }

    #[test]
    fn a_signature_list_repeating_a_key_id_is_rejected_even_when_the_threshold_is_met() {
        let (ks, keys, ids) = setup(2);
        // Threshold 1, met by the first signature alone; the repeat makes the list invalid.
        let sigs = vec![sign(&ks[0], b"m"), sign(&ks[0], b"m")];
        let err = verify_threshold("r", b"m", &sigs, &ids, 1, &keys).unwrap_err();
        assert_eq!(err.repeated_keyid.as_ref(), Some(ks[0].key_id()));
        assert_eq!(err.valid, 0);
        let msg = err.to_string();
        assert!(msg.starts_with("r: key id "), "{msg}");
        assert!(msg.contains(&ks[0].key_id().0), "{msg}");
        assert_eq!(err.headline(), "signature list repeats a key id");
        // Also when another, distinct key meets the threshold, and when the repeated key is
        // not authorized for the role at all.
        let sigs = vec![
            sign(&ks[1], b"m"),
            sign(&ks[0], b"m"),
            sign(&ks[0], b"other"),
        ];
        let err = verify_threshold("r", b"m", &sigs, &ids, 1, &keys).unwrap_err();
        assert_eq!(err.repeated_keyid.as_ref(), Some(ks[0].key_id()));
        let err = verify_threshold("r", b"m", &sigs, &ids[1..], 1, &keys).unwrap_err();
        assert_eq!(err.repeated_keyid.as_ref(), Some(ks[0].key_id()));
        // Without the repeat, the same signatures verify.
        assert_eq!(
            verify_threshold("r", b"m", &sigs[..2], &ids, 1, &keys).unwrap(),
            2
        );
    }

    #[test]
    fn same_public_key_under_two_key_ids_counts_once() {
        let (ks, mut keys, mut ids) = setup(1);
        let alias = KeyId("alias".into());
        keys.insert(alias.clone(), ks[0].public_key().clone());
        ids.push(alias.clone());
        let mut s2 = sign(&ks[0], b"m");
        s2.keyid = alias;
        let sigs = vec![sign(&ks[0], b"m"), s2];
        assert!(verify_threshold("r", b"m", &sigs, &ids, 2, &keys).is_err());
    }

    #[test]
    fn unauthorized_key_is_not_counted() {
        let (ks, keys, ids) = setup(2);
        let sigs = vec![sign(&ks[1], b"m")];
        let err = verify_threshold("r", b"m", &sigs, &ids[..1], 1, &keys).unwrap_err();
        assert!(err.to_string().contains("not authorized"), "{err}");
    }

    #[test]
    fn signature_over_other_bytes_is_rejected() {
        let (ks, keys, ids) = setup(1);
        let sigs = vec![sign(&ks[0], b"other")];
        assert!(verify_threshold("r", b"m", &sigs, &ids, 1, &keys).is_err());
    }
}

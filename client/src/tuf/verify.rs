//! Threshold signature verification: does a role's metadata carry enough valid signatures?

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::tuf::schema::{Key, KeyId, Signature};

/// Why a role's signatures do not reach its threshold.
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
}

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
/// Each key id counts once however many signatures name it, and two key ids that carry the
/// same public key count once. Signatures by unknown or unauthorized keys are ignored (and
/// reported), never counted. Returns the number of valid signatures.
pub fn verify_threshold(
    role: &str,
    message: &[u8],
    signatures: &[Signature],
    keyids: &[KeyId],
    threshold: u32,
    keys: &BTreeMap<KeyId, Key>,
) -> Result<usize, ThresholdError> {
    let authorized: BTreeSet<&KeyId> = keyids.iter().collect();
    let mut counted_ids: BTreeSet<&KeyId> = BTreeSet::new();
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
        if counted_ids.contains(&sig.keyid) {
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
                counted_ids.insert(&sig.keyid);
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
    fn repeated_signature_by_one_key_counts_once() {
        let (ks, keys, ids) = setup(2);
        let sigs = vec![sign(&ks[0], b"m"), sign(&ks[0], b"m")];
        let err = verify_threshold("r", b"m", &sigs, &ids, 2, &keys).unwrap_err();
        assert_eq!(err.valid, 1);
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

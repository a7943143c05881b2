//! Signing roles: which keys may sign a role, adding signatures from available keys,
//! threshold checks, and signatures made elsewhere (export → sign → import).

use std::collections::{BTreeMap, BTreeSet};

use petrel_client::tuf::keys::KeySource;
use petrel_client::tuf::schema::{Key, KeyId, Metadata, Root, Signature, Signed, Unrecognized};
use petrel_client::tuf::verify::verify_threshold;

use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// One set of keys that must reach a threshold (root has two: the old and the new root's).
#[derive(Clone, Debug)]
pub struct Authority {
    /// Human label, e.g. `root v3 keys`.
    pub label: String,
    /// Authorized key ids.
    pub keyids: Vec<KeyId>,
    /// Signatures required.
    pub threshold: u32,
    /// Key table containing them.
    pub keys: BTreeMap<KeyId, Key>,
}

/// The authorities whose thresholds a staged role must meet.
pub fn authorities(ed: &mut Editor<'_>, role: &str) -> Result<Vec<Authority>> {
    let (keyids, threshold, keys) = ed.authorization(role)?;
    let mut out = vec![Authority {
        label: format!("{role} keys"),
        keyids,
        threshold,
        keys,
    }];
    if role == "root" {
        if let Some(old) = ed.workspace().published::<Root>("root")? {
            let r = old.signed.role("root").expect("validated root");
            out.insert(
                0,
                Authority {
                    label: format!("previous root v{} keys", old.signed.version),
                    keyids: r.keyids.clone(),
                    threshold: r.threshold,
                    keys: old.signed.keys.clone(),
                },
            );
        }
        out.last_mut().expect("one").label = "new root keys".into();
    }
    Ok(out)
}

/// Key ids whose signatures on `signed` are valid under `auths`.
pub fn valid_signers<T: Metadata>(
    signed: &Signed<T>,
    auths: &[Authority],
) -> Result<BTreeSet<KeyId>> {
    let msg = signed
        .canonical_signed()
        .map_err(|e| Error::State(e.to_string()))?;
    let mut out = BTreeSet::new();
    for sig in &signed.signatures {
        let Some(key) = auths.iter().find_map(|a| {
            a.keyids
                .contains(&sig.keyid)
                .then(|| a.keys.get(&sig.keyid))
                .flatten()
        }) else {
            continue;
        };
        if key.verify_hex(&msg, &sig.sig).is_ok() {
            out.insert(sig.keyid.clone());
        }
    }
    Ok(out)
}

/// Removes invalid or unauthorized signatures and adds one from every available key that
/// has not signed yet. Returns the key ids that signed now.
pub fn sign_with<T: Metadata>(
    signed: &mut Signed<T>,
    auths: &[Authority],
    keys: &[Box<dyn KeySource>],
) -> Result<Vec<KeyId>> {
    sign_with_message(signed, auths, keys).map(|(added, _)| added)
}

/// [`sign_with`], also returning the canonical bytes that were signed (signatures do not
/// change them), so callers need not compute them again for a big role.
fn sign_with_message<T: Metadata>(
    signed: &mut Signed<T>,
    auths: &[Authority],
    keys: &[Box<dyn KeySource>],
) -> Result<(Vec<KeyId>, Vec<u8>)> {
    // (Without signatures there is nothing to check; big roles are costly to canonicalize.)
    let valid = if signed.signatures.is_empty() {
        BTreeSet::new()
    } else {
        valid_signers(signed, auths)?
    };
    signed.signatures.retain(|s| valid.contains(&s.keyid));
    let mut seen: BTreeSet<KeyId> = BTreeSet::new();
    signed.signatures.retain(|s| seen.insert(s.keyid.clone()));
    let msg = signed
        .canonical_signed()
        .map_err(|e| Error::State(e.to_string()))?;
    let mut added = Vec::new();
    for k in keys {
        if valid.contains(k.key_id()) {
            continue;
        }
        let sig = k.sign(&msg).map_err(|e| {
            Error::role(
                T::TYPE,
                format!("signing with key {} failed: {e}", k.key_id()),
            )
        })?;
        signed.signatures.push(Signature {
            keyid: k.key_id().clone(),
            sig: hex::encode(sig),
            unrecognized: Unrecognized::new(),
        });
        added.push(k.key_id().clone());
    }
    Ok((added, msg))
}

/// Checks every authority's threshold; the error lists what is missing and how to fix it.
pub fn check_thresholds<T: Metadata>(
    role: &str,
    signed: &Signed<T>,
    auths: &[Authority],
) -> Result<()> {
    let msg = signed
        .canonical_signed()
        .map_err(|e| Error::State(e.to_string()))?;
    check_thresholds_of(role, &msg, signed, auths)
}

/// [`check_thresholds`] for signatures over `msg`, the canonical bytes of `signed.signed`.
fn check_thresholds_of<T: Metadata>(
    role: &str,
    msg: &[u8],
    signed: &Signed<T>,
    auths: &[Authority],
) -> Result<()> {
    for a in auths {
        if let Err(e) = verify_threshold(
            role,
            msg,
            &signed.signatures,
            &a.keyids,
            a.threshold,
            &a.keys,
        ) {
            let signed_by: BTreeSet<&KeyId> = signed.signatures.iter().map(|s| &s.keyid).collect();
            let missing: Vec<String> = a
                .keyids
                .iter()
                .filter(|k| !signed_by.contains(k))
                .map(|k| k.short().to_string())
                .collect();
            return Err(Error::role(
                role,
                format!(
                    "threshold not met for {}: {} of {} required signature(s); unsigned keys: {}. \
                     Put the private keys in the keys directory or pass --key, or sign offline with \
                     `petrel-repo export {role}`, `petrel-repo sign`, `petrel-repo import-signature {role}`",
                    a.label,
                    e.valid,
                    a.threshold,
                    if missing.is_empty() { "none".into() } else { missing.join(", ") }
                ),
            ));
        }
    }
    Ok(())
}

/// Signs `signed` with every available authorized key and checks all thresholds.
pub fn sign_role<T: Metadata>(
    ed: &mut Editor<'_>,
    role: &str,
    signed: &mut Signed<T>,
) -> Result<()> {
    let auths = authorities(ed, role)?;
    let ids: Vec<KeyId> = auths
        .iter()
        .flat_map(|a| a.keyids.iter().cloned())
        .collect();
    let keys = ed.workspace().signing_keys(&ids)?;
    // The canonical form is computed once, for signing and for the threshold check.
    let (_, msg) = sign_with_message(signed, &auths, &keys)?;
    check_thresholds_of(role, &msg, signed, &auths)
}

/// Signs the `signed` part of a metadata file with one key, for offline signing.
pub fn sign_envelope_bytes(bytes: &[u8], key: &dyn KeySource) -> Result<Signature> {
    let raw = petrel_client::tuf::schema::RawSigned::from_bytes(bytes)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let msg = raw
        .canonical_signed()
        .map_err(|e| Error::Usage(e.to_string()))?;
    let sig = key
        .sign(&msg)
        .map_err(|e| Error::Usage(format!("signing failed: {e}")))?;
    Ok(Signature {
        keyid: key.key_id().clone(),
        sig: hex::encode(sig),
        unrecognized: Unrecognized::new(),
    })
}

/// Adds signatures made elsewhere to a staged role. Each must verify against the staged
/// bytes and come from an authorized key; otherwise the import is refused with the reason.
pub fn import_signatures<T: Metadata>(
    ws: &Workspace,
    role: &str,
    sigs: Vec<Signature>,
) -> Result<usize> {
    let mut ed = Editor::new(ws);
    let mut staged = ws
        .staged::<T>(role)?
        .ok_or_else(|| Error::role(role, "has no staged changes to sign"))?;
    let auths = authorities(&mut ed, role)?;
    let msg = staged
        .canonical_signed()
        .map_err(|e| Error::State(e.to_string()))?;
    let mut added = 0;
    for sig in sigs {
        let Some(key) = auths.iter().find_map(|a| {
            a.keyids
                .contains(&sig.keyid)
                .then(|| a.keys.get(&sig.keyid))
                .flatten()
        }) else {
            return Err(Error::role(
                role,
                format!("key {} is not authorized to sign it", sig.keyid),
            ));
        };
        key.verify_hex(&msg, &sig.sig).map_err(|e| {
            Error::role(
                role,
                format!("signature by key {} does not match the staged metadata ({e}); was it made for another version?", sig.keyid),
            )
        })?;
        if !staged.signatures.iter().any(|s| s.keyid == sig.keyid) {
            staged.signatures.push(sig);
            added += 1;
        }
    }
    ws.stage(role, &staged)?;
    Ok(added)
}

//! Creating a new repository: keys for the four top-level roles, root v1 and empty targets.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::Utc;
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use petrel_client::tuf::schema::{
    Expires, RoleKeys, Root, Unrecognized, SPEC_VERSION, TOP_LEVEL_ROLES,
};

use super::delegate::empty_targets;
use super::Editor;
use crate::error::{Error, Result};
use crate::workspace::{Settings, Workspace};

/// The kind of key to generate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyType {
    /// Ed25519 (the default).
    #[default]
    Ed25519,
    /// ECDSA on NIST P-256.
    EcdsaP256,
}

impl KeyType {
    /// Generates a key; returns it and its PKCS#8 PEM.
    pub fn generate(self) -> Result<(PrivateKey, String)> {
        let r = match self {
            KeyType::Ed25519 => PrivateKey::generate_ed25519(),
            KeyType::EcdsaP256 => PrivateKey::generate_ecdsa_p256(),
        };
        r.map_err(|e| Error::State(format!("key generation failed: {e}")))
    }
}

/// How many keys a role gets and how many must sign.
#[derive(Clone, Copy, Debug)]
pub struct RoleSpec {
    /// Keys to generate.
    pub keys: usize,
    /// Signatures required.
    pub threshold: u32,
}

impl Default for RoleSpec {
    fn default() -> Self {
        RoleSpec {
            keys: 1,
            threshold: 1,
        }
    }
}

/// Options for [`init`].
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Workspace settings.
    pub settings: Settings,
    /// Key type for generated keys.
    pub key_type: KeyType,
    /// Keys and threshold per top-level role, in the order root, targets, snapshot, timestamp.
    pub roles: BTreeMap<String, RoleSpec>,
}

/// Creates a workspace in `dir` with fresh keys, stages root v1 and an empty targets role.
/// The first `publish` writes them (with snapshot and timestamp) to the tree.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<Workspace> {
    for (name, spec) in &opts.roles {
        if spec.threshold == 0 || spec.threshold as usize > spec.keys {
            return Err(Error::role(
                name,
                format!(
                    "threshold {} is impossible with {} key(s)",
                    spec.threshold, spec.keys
                ),
            ));
        }
    }
    let ws = Workspace::create(dir, opts.settings.clone())?;
    let mut keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for role in TOP_LEVEL_ROLES {
        let spec = opts.roles.get(role).copied().unwrap_or_default();
        let mut ids = Vec::new();
        for _ in 0..spec.keys {
            let (k, pem) = opts.key_type.generate()?;
            ws.save_private_key(&k, &pem)?;
            keys.insert(k.key_id().clone(), k.public_key().clone());
            ids.push(k.key_id().clone());
        }
        roles.insert(role.to_string(), RoleKeys::new(ids, spec.threshold));
    }
    let root = Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: Some(opts.settings.consistent_snapshot),
        version: 1,
        expires: Expires(Utc::now()),
        keys,
        roles,
        unrecognized: Unrecognized::new(),
    };
    let mut ed = Editor::new(&ws);
    ed.set_root(root);
    ed.insert_new_role("targets", empty_targets());
    ed.save()?;
    Ok(ws)
}

//! An in-memory TUF repository simulator for the updater tests (like python-tuf's RepositorySimulator).
//!
//! It holds the keys and the metadata objects, signs them with `PrivateKey`, and serves the
//! result through a shared `MemoryTransport`. Tests change the objects (bump versions,
//! rotate keys, expire, delegate), call [`RepoSim::publish`], or tamper with served bytes
//! directly through `sim.transport`.
#![allow(dead_code)]

pub mod server;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{Duration, Utc};
use petrel_client::fetch::MemoryTransport;
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use petrel_client::tuf::schema::{
    encode_role_name, DelegatedRole, Delegations, Expires, Hashes, Key, KeyId, MetaFile, Metadata,
    RoleKeys, Root, Signature, Signed, Snapshot, SuccinctRoles, TargetFile, Targets, Timestamp,
    Unrecognized, SPEC_VERSION,
};
use petrel_client::tuf::updater::{Updater, UpdaterConfig};

/// Base of every URL the simulator serves.
pub const BASE: &str = "mem://repo";

/// A signing key shared between roles and tests.
pub type SimKey = Arc<PrivateKey>;

/// Generates an ed25519 key.
pub fn new_key() -> SimKey {
    Arc::new(PrivateKey::generate_ed25519().unwrap().0)
}

/// An expiry `days` from now (negative: in the past).
pub fn in_days(days: i64) -> Expires {
    let t = Utc::now() + Duration::days(days);
    Expires(chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap())
}

/// sha256 and sha512 of `data`, hex.
pub fn hashes_of(data: &[u8]) -> Hashes {
    let mut h = Hashes::new();
    h.insert(
        "sha256".into(),
        hex::encode(ring::digest::digest(&ring::digest::SHA256, data)),
    );
    h.insert(
        "sha512".into(),
        hex::encode(ring::digest::digest(&ring::digest::SHA512, data)),
    );
    h
}

/// The simulated repository.
pub struct RepoSim {
    /// What the client talks to.
    pub transport: MemoryTransport,
    /// Current root (the last published version is in `root_history`).
    pub root: Root,
    /// Current timestamp.
    pub timestamp: Timestamp,
    /// Current snapshot.
    pub snapshot: Snapshot,
    /// Current top-level targets.
    pub targets: Targets,
    /// Delegated roles by name.
    pub delegated: BTreeMap<String, Targets>,
    /// Keys that sign each role's metadata.
    pub signers: BTreeMap<String, Vec<SimKey>>,
    /// Published root files, index 0 = version 1.
    pub root_history: Vec<Vec<u8>>,
    /// Target contents by path.
    pub target_files: BTreeMap<String, Vec<u8>>,
    /// Put length and hashes of snapshot into timestamp's meta.
    pub pin_snapshot: bool,
    /// Put length and hashes of targets roles into snapshot's meta.
    pub pin_targets: bool,
}

fn root_keys(keys: &[&SimKey], threshold: u32) -> RoleKeys {
    RoleKeys::new(keys.iter().map(|k| k.key_id().clone()).collect(), threshold)
}

fn empty_targets() -> Targets {
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: in_days(30),
        targets: BTreeMap::new(),
        delegations: None,
        unrecognized: Unrecognized::new(),
    }
}

impl Default for RepoSim {
    fn default() -> Self {
        Self::new()
    }
}

impl RepoSim {
    /// A consistent-snapshot repository, everything at version 1, one key per role,
    /// published.
    pub fn new() -> Self {
        let mut signers = BTreeMap::new();
        let mut keys = BTreeMap::new();
        let mut roles = BTreeMap::new();
        for role in ["root", "timestamp", "snapshot", "targets"] {
            let k = new_key();
            keys.insert(k.key_id().clone(), k.public_key().clone());
            roles.insert(role.to_string(), root_keys(&[&k], 1));
            signers.insert(role.to_string(), vec![k]);
        }
        let root = Root {
            type_: "root".into(),
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: Some(true),
            version: 1,
            expires: in_days(365),
            keys,
            roles,
            unrecognized: Unrecognized::new(),
        };
        let timestamp = Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: in_days(1),
            meta: BTreeMap::from([("snapshot.json".to_string(), MetaFile::version_only(1))]),
            unrecognized: Unrecognized::new(),
        };
        let snapshot = Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: in_days(7),
            meta: BTreeMap::from([("targets.json".to_string(), MetaFile::version_only(1))]),
            unrecognized: Unrecognized::new(),
        };
        let mut sim = RepoSim {
            transport: MemoryTransport::new(),
            root,
            timestamp,
            snapshot,
            targets: empty_targets(),
            delegated: BTreeMap::new(),
            signers,
            root_history: Vec::new(),
            target_files: BTreeMap::new(),
            pin_snapshot: false,
            pin_targets: false,
        };
        sim.publish_root();
        sim.publish();
        sim
    }

    /// `mem://repo/metadata`.
    pub fn metadata_url(&self) -> String {
        format!("{BASE}/metadata")
    }

    /// `mem://repo/targets`.
    pub fn targets_url(&self) -> String {
        format!("{BASE}/targets")
    }

    /// URL of a metadata file.
    pub fn md(&self, name: &str) -> String {
        format!("{BASE}/metadata/{name}")
    }

    /// The URL a role's metadata is published at (with the role's current version).
    pub fn role_url(&self, role: &str) -> String {
        let v = self.role_version(role);
        let enc = encode_role_name(role);
        if self.root.consistent_snapshot() {
            self.md(&format!("{v}.{enc}.json"))
        } else {
            self.md(&format!("{enc}.json"))
        }
    }

    /// The URL of the current snapshot.
    pub fn snapshot_url(&self) -> String {
        if self.root.consistent_snapshot() {
            self.md(&format!("{}.snapshot.json", self.snapshot.version))
        } else {
            self.md("snapshot.json")
        }
    }

    /// Signs metadata with the keys in `signers[role]`.
    pub fn sign<T: Metadata>(&self, role: &str, m: &T) -> Vec<u8> {
        let keys: Vec<&SimKey> = self.signers[role].iter().collect();
        sign_with(&keys, m)
    }

    /// The signed bytes of the first published root.
    pub fn initial_root(&self) -> Vec<u8> {
        self.root_history[0].clone()
    }

    /// Signs `self.root` with `signers["root"]` and publishes it as `N.root.json` (and
    /// `root.json`).
    pub fn publish_root(&mut self) {
        let bytes = self.sign("root", &self.root);
        let v = self.root.version as usize;
        assert_eq!(
            self.root_history.len() + 1,
            v,
            "publish root versions in order"
        );
        self.transport
            .insert(self.md(&format!("{v}.root.json")), bytes.clone());
        self.transport.insert(self.md("root.json"), bytes.clone());
        self.root_history.push(bytes);
    }

    /// Bumps the root version and publishes it, signed by `signers["root"]`.
    pub fn bump_root(&mut self) {
        self.root.version += 1;
        self.publish_root();
    }

    /// The current version of a targets role.
    pub fn role_version(&self, role: &str) -> u64 {
        if role == "targets" {
            self.targets.version
        } else {
            self.delegated[role].version
        }
    }

    /// A mutable targets role.
    pub fn role_mut(&mut self, role: &str) -> &mut Targets {
        if role == "targets" {
            &mut self.targets
        } else {
            self.delegated.get_mut(role).expect("no such role")
        }
    }

    /// Signs every targets role, snapshot and timestamp from the current objects and serves
    /// them, plus every target file (under its plain path and under each hash prefix).
    /// Snapshot meta and timestamp meta are recomputed from the current versions.
    pub fn publish(&mut self) {
        let mut roles: Vec<String> = vec!["targets".into()];
        roles.extend(self.delegated.keys().cloned());
        for role in roles {
            let bytes = if role == "targets" {
                self.sign("targets", &self.targets)
            } else {
                self.sign(&role, &self.delegated[&role])
            };
            let mut meta = MetaFile::version_only(self.role_version(&role));
            if self.pin_targets {
                meta.length = Some(bytes.len() as u64);
                meta.hashes = Some(hashes_of(&bytes));
            }
            self.snapshot.meta.insert(format!("{role}.json"), meta);
            self.transport.insert(self.role_url(&role), bytes);
        }
        let snap = self.sign("snapshot", &self.snapshot);
        let mut meta = MetaFile::version_only(self.snapshot.version);
        if self.pin_snapshot {
            meta.length = Some(snap.len() as u64);
            meta.hashes = Some(hashes_of(&snap));
        }
        self.timestamp.meta.insert("snapshot.json".into(), meta);
        self.transport.insert(self.snapshot_url(), snap);
        let ts = self.sign("timestamp", &self.timestamp);
        self.transport.insert(self.md("timestamp.json"), ts);
        for (path, data) in &self.target_files {
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (format!("{d}/"), n),
                None => (String::new(), path.as_str()),
            };
            self.transport
                .insert(format!("{BASE}/targets/{path}"), data.clone());
            for h in hashes_of(data).values() {
                self.transport
                    .insert(format!("{BASE}/targets/{dir}{h}.{name}"), data.clone());
            }
        }
    }

    /// Bumps snapshot and timestamp versions and publishes (a new repository release).
    pub fn commit(&mut self) {
        self.snapshot.version += 1;
        self.timestamp.version += 1;
        self.publish();
    }

    /// Adds a target file to a targets role (no version bump).
    pub fn add_target(&mut self, role: &str, path: &str, data: &[u8]) {
        let file = TargetFile {
            length: data.len() as u64,
            hashes: hashes_of(data),
            custom: None,
            unrecognized: Unrecognized::new(),
        };
        self.role_mut(role).targets.insert(path.to_string(), file);
        self.target_files.insert(path.to_string(), data.to_vec());
    }

    /// Delegates from `parent` to a new role `name` (with a new key and empty metadata at
    /// version 1). `paths` as in TUF; no version bump.
    pub fn delegate(&mut self, parent: &str, name: &str, paths: &[&str], terminating: bool) {
        let role = DelegatedRole {
            name: name.to_string(),
            keyids: Vec::new(),
            threshold: 1,
            terminating,
            paths: Some(paths.iter().map(|p| p.to_string()).collect()),
            path_hash_prefixes: None,
            unrecognized: Unrecognized::new(),
        };
        self.delegate_role(parent, role);
    }

    /// Delegates from `parent` to `role` (its keyids are replaced by a new key's).
    pub fn delegate_role(&mut self, parent: &str, mut role: DelegatedRole) {
        // A role delegated a second time (e.g. a cycle) keeps its key.
        let k = match self.signers.get(&role.name) {
            Some(keys) => keys[0].clone(),
            None => new_key(),
        };
        role.keyids = vec![k.key_id().clone()];
        let name = role.name.clone();
        let d = delegations_mut(self.role_mut(parent));
        d.keys.insert(k.key_id().clone(), k.public_key().clone());
        d.roles.get_or_insert_with(Vec::new).push(role);
        self.signers.entry(name.clone()).or_insert_with(|| vec![k]);
        self.delegated.entry(name).or_insert_with(empty_targets);
    }

    /// Delegates from `parent` to `2^bit_length` succinct hashed bins sharing one new key.
    pub fn delegate_succinct(
        &mut self,
        parent: &str,
        bit_length: u32,
        prefix: &str,
    ) -> SuccinctRoles {
        let k = new_key();
        let s = SuccinctRoles {
            keyids: vec![k.key_id().clone()],
            threshold: 1,
            bit_length,
            name_prefix: prefix.to_string(),
            unrecognized: Unrecognized::new(),
        };
        let d = delegations_mut(self.role_mut(parent));
        d.keys.insert(k.key_id().clone(), k.public_key().clone());
        d.roles = None;
        d.succinct_roles = Some(s.clone());
        for bin in s.bin_names() {
            self.signers.insert(bin.clone(), vec![k.clone()]);
            self.delegated.insert(bin, empty_targets());
        }
        s
    }

    /// Replaces the keys of a top-level role with one new key (for `root`: the new root is
    /// signed by the old and the new key). Bumps and publishes root.
    pub fn rotate_top_level_key(&mut self, role: &str) -> SimKey {
        let k = new_key();
        let old: Vec<KeyId> = self.root.roles[role].keyids.clone();
        self.root
            .keys
            .insert(k.key_id().clone(), k.public_key().clone());
        self.root.roles.get_mut(role).unwrap().keyids = vec![k.key_id().clone()];
        for id in old {
            if !self.root.roles.values().any(|r| r.keyids.contains(&id)) {
                self.root.keys.remove(&id);
            }
        }
        if role == "root" {
            self.signers.get_mut("root").unwrap().push(k.clone());
            self.bump_root();
            self.signers.insert("root".into(), vec![k.clone()]);
        } else {
            self.signers.insert(role.into(), vec![k.clone()]);
            self.bump_root();
        }
        k
    }

    /// Adds a key to a top-level role in root (threshold unchanged) without bumping root.
    pub fn add_top_level_key(&mut self, role: &str, k: &SimKey) {
        self.root
            .keys
            .insert(k.key_id().clone(), k.public_key().clone());
        self.root
            .roles
            .get_mut(role)
            .unwrap()
            .keyids
            .push(k.key_id().clone());
    }

    /// Writes everything served into `dir` as a static tree (`dir/metadata/…`,
    /// `dir/targets/…`) for `file://` and HTTP tests.
    pub fn write_tree(&self, dir: &Path) {
        for url in self.transport.urls() {
            let rel = url.strip_prefix(&format!("{BASE}/")).unwrap();
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, self.transport.get(&url).unwrap()).unwrap();
        }
    }

    /// An updater config for this repository.
    pub fn config(&self) -> UpdaterConfig {
        UpdaterConfig::new(self.metadata_url()).with_target_base_url(self.targets_url())
    }

    /// Installs the initial root in `dir` and returns an updater on the memory transport.
    pub fn updater(&self, dir: &Path) -> Updater {
        self.updater_with(dir, self.config())
    }

    /// Like [`RepoSim::updater`] with a custom config.
    pub fn updater_with(&self, dir: &Path, config: UpdaterConfig) -> Updater {
        if !dir.join("root.json").exists() {
            Updater::init_trusted_root(dir, &self.initial_root()).unwrap();
        }
        Updater::new(config, self.transport.clone(), dir).unwrap()
    }
}

fn delegations_mut(t: &mut Targets) -> &mut Delegations {
    t.delegations.get_or_insert_with(|| Delegations {
        keys: BTreeMap::new(),
        roles: Some(Vec::new()),
        succinct_roles: None,
        unrecognized: Unrecognized::new(),
    })
}

/// Signs metadata with the given keys and returns the file bytes.
pub fn sign_with<T: Metadata>(keys: &[&SimKey], m: &T) -> Vec<u8> {
    let mut s = Signed::unsigned(m.clone());
    let msg = s.canonical_signed().unwrap();
    for k in keys {
        s.signatures.push(Signature {
            keyid: k.key_id().clone(),
            sig: hex::encode(k.sign(&msg).unwrap()),
            unrecognized: Unrecognized::new(),
        });
    }
    s.to_file_bytes().unwrap()
}

/// A public key's id.
pub fn key_id(k: &Key) -> KeyId {
    k.key_id()
}

/// Every file in a metadata directory and its content (to prove failures change nothing).
pub fn dir_state(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned(),
            )
        })
        .collect()
}

/// Requests made since the last `clear_log`, relative to the simulator's base URL.
pub fn requests(sim: &RepoSim) -> Vec<String> {
    sim.transport
        .requests()
        .into_iter()
        .map(|u| {
            u.strip_prefix(&format!("{BASE}/"))
                .unwrap_or(&u)
                .to_string()
        })
        .collect()
}

//! The snapshot tree on the device (docs/scale.md): the head signed by the snapshot keys,
//! and each needed role's reference read from the nodes on its path, which are fetched
//! once and kept by hash.
//!
//! A device that trusts the tree fetches `O(log R)` small nodes per role it uses instead
//! of a `snapshot.json` listing all R roles. The protections of the snapshot stay:
//!
//! * **mix-and-match**: every reference comes from nodes whose hashes chain up to the root
//!   the signed head names, and the head is pinned by the timestamp;
//! * **rollback**: the head's version never goes down, and a role's version never goes
//!   below the version this device trusted for it before (kept in
//!   `snapshot-tree/versions.json` beside the trusted metadata, and forgotten, like the
//!   stored snapshot, when the snapshot keys rotate);
//! * **wrong position**: a node must sit at the prefix its parent puts it, and a leaf may
//!   only list roles whose name hashes to its prefix.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use super::error::describe;
use super::trusted::{TreeView, WithSnapshot, WithTimestamp, TREE_ROLE};
use super::{store, UpdateError, Updater};
use crate::fetch::fetch_to_vec;
use crate::tuf::schema::tree::{
    self, role_digits, sha256_hex, TreeNode, MAX_DEPTH, MAX_HEAD_BYTES, MAX_NODE_BYTES, TREE_DIR,
};
use crate::tuf::schema::MetaFile;

/// The stored head, under [`TREE_DIR`] in the metadata directory.
const HEAD_FILE: &str = "head.json";
/// The versions this device trusted per role, under [`TREE_DIR`].
const VERSIONS_FILE: &str = "versions.json";
/// Above this many cached nodes the cache is emptied (a device uses a few dozen).
const MAX_CACHED_NODES: usize = 4096;

impl Updater {
    fn tree_dir(&self) -> PathBuf {
        self.store.dir().join(TREE_DIR)
    }

    /// Forgets the stored head and the per-role versions (when the snapshot keys rotate, as
    /// the stored snapshot is forgotten: spec 5.3.11).
    pub(super) fn forget_tree(&self) -> Result<(), UpdateError> {
        for name in [HEAD_FILE, VERSIONS_FILE] {
            let path = self.tree_dir().join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(UpdateError::Store { path, source }),
            }
        }
        Ok(())
    }

    /// Spec 5.5 with a snapshot tree: the stored head if it is the one the timestamp pins,
    /// else the head downloaded and verified ([`WithTimestamp::verify_tree_head`]) against
    /// the stored one's version; then the per-role versions trusted before.
    pub(super) fn update_tree(
        &self,
        state: WithTimestamp,
        meta: MetaFile,
        now: DateTime<Utc>,
    ) -> Result<WithSnapshot, UpdateError> {
        let dir = self.tree_dir();
        let head_path = dir.join(HEAD_FILE);
        let store_err = |path: PathBuf| move |source| UpdateError::Store { path, source };
        fs::create_dir_all(&dir).map_err(store_err(dir.clone()))?;
        let stored = read_bounded(&head_path, MAX_HEAD_BYTES);
        let mut previous = None;
        if let Some(bytes) = &stored {
            match state.verify_tree_head(&meta, None, bytes, now) {
                Ok(v) => {
                    debug!("stored {TREE_ROLE} v{} is current", meta.version);
                    let floors = self.read_floors();
                    return Ok(state.with_tree(v, floors));
                }
                Err(e) => {
                    debug!("stored {TREE_ROLE} is not current: {e}");
                    previous = stored_version(bytes);
                }
            }
        }
        let url = self.metadata_url(&format!(
            "{TREE_DIR}/{}",
            tree::head_file_name(meta.version)
        ));
        let max = meta.length.unwrap_or(MAX_HEAD_BYTES).min(MAX_HEAD_BYTES);
        let bytes =
            fetch_to_vec(&*self.transport, &url, max).map_err(|source| UpdateError::Fetch {
                what: describe(TREE_ROLE, Some(meta.version)),
                url: url.clone(),
                source,
            })?;
        let verified = state.verify_tree_head(&meta, previous, &bytes, now)?;
        store::write_atomic(&head_path, &bytes).map_err(store_err(head_path.clone()))?;
        self.bound_node_cache();
        info!("{TREE_ROLE} updated to v{}", meta.version);
        let floors = self.read_floors();
        Ok(state.with_tree(verified, floors))
    }

    /// Reads `role`'s reference from the tree into `tree` unless it was read already: the
    /// nodes on its path from the signed root, each checked against the hash its parent
    /// names and against its position; then the reference's version against the version
    /// this device trusted for the role before (rollback), which is raised and kept.
    pub(super) fn resolve_in_tree(
        &self,
        tree: &mut TreeView,
        role: &str,
    ) -> Result<(), UpdateError> {
        if tree.is_resolved(role) {
            return Ok(());
        }
        let head_v = tree.head().signed.version;
        let what = || describe(TREE_ROLE, Some(head_v));
        let digits = role_digits(role);
        let mut hash = tree.head().signed.root.clone();
        let mut found: Option<MetaFile> = None;
        for depth in 0..=MAX_DEPTH {
            let node = self.tree_node(&hash, head_v)?;
            if node.prefix != digits[..depth] {
                return Err(UpdateError::Invalid {
                    what: what(),
                    reason: format!(
                        "node {hash} says it is at position {:?}, but it is named where {:?} is expected (looking up role {role:?})",
                        node.prefix,
                        &digits[..depth]
                    ),
                });
            }
            match (node.children, node.roles) {
                (Some(children), None) => match children.get(&digits[depth..depth + 1]) {
                    Some(child) => hash = child.clone(),
                    None => break,
                },
                (None, Some(mut roles)) => {
                    found = roles.remove(role);
                    break;
                }
                _ => unreachable!("TreeNode::from_bytes checks the node's shape"),
            }
        }
        if let Some(m) = &found {
            if let Some(floor) = tree.floor(role).filter(|f| m.version < *f) {
                return Err(UpdateError::Rollback {
                    what: describe(role, Some(m.version)),
                    reason: format!(
                        "{} lists version {}, lower than version {floor} this device trusted before",
                        what(),
                        m.version
                    ),
                });
            }
            if tree.raise_floor(role, m.version) {
                self.write_floors(tree);
            }
        }
        debug!(
            "{}: {role:?} {}",
            what(),
            found
                .as_ref()
                .map_or("is not listed".to_string(), |m| format!(
                    "is at v{}",
                    m.version
                ))
        );
        tree.record(role, found);
        Ok(())
    }

    /// A node by its hash: the cached copy if its bytes still hash to it, else downloaded
    /// (`snapshot-tree/<hash>.json`, at most [`MAX_NODE_BYTES`]), checked and cached.
    fn tree_node(&self, hash: &str, head_v: u64) -> Result<TreeNode, UpdateError> {
        let name = tree::node_file_name(hash);
        let cached = self.tree_dir().join(&name);
        let what = || format!("{} node {hash}", describe(TREE_ROLE, Some(head_v)));
        if let Some(bytes) = read_bounded(&cached, MAX_NODE_BYTES) {
            if sha256_hex(&bytes) == hash {
                if let Ok(node) = TreeNode::from_bytes(&bytes) {
                    return Ok(node);
                }
            }
            warn!(
                "{}: the cached copy is damaged; downloading it again",
                cached.display()
            );
            let _ = fs::remove_file(&cached);
        }
        let url = self.metadata_url(&format!("{TREE_DIR}/{name}"));
        let bytes = fetch_to_vec(&*self.transport, &url, MAX_NODE_BYTES).map_err(|source| {
            UpdateError::Fetch {
                what: what(),
                url: url.clone(),
                source,
            }
        })?;
        let got = sha256_hex(&bytes);
        if got != hash {
            return Err(UpdateError::LengthOrHash {
                what: what(),
                reason: format!("its bytes hash to {got} (the node is named by its sha256; a tampered or substituted node)"),
            });
        }
        let node = TreeNode::from_bytes(&bytes).map_err(|source| UpdateError::Schema {
            what: what(),
            source,
        })?;
        self.cache_node(&cached, &bytes);
        Ok(node)
    }

    /// Empties the node cache once it holds more than [`MAX_CACHED_NODES`] files (checked
    /// when a new head arrives, not on every node).
    fn bound_node_cache(&self) {
        let dir = self.tree_dir();
        let count = fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        if count <= MAX_CACHED_NODES {
            return;
        }
        debug!(
            "{} holds {count} files: emptying the node cache",
            dir.display()
        );
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let n = e.file_name();
                if n != HEAD_FILE && n != VERSIONS_FILE {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Keeps a verified node (best effort: a full disk only costs a later download).
    fn cache_node(&self, path: &std::path::Path, bytes: &[u8]) {
        if let Err(e) = store::write_atomic(path, bytes) {
            debug!("cannot cache {}: {e}", path.display());
        }
    }

    fn read_floors(&self) -> BTreeMap<String, u64> {
        let path = self.tree_dir().join(VERSIONS_FILE);
        read_bounded(&path, 4 * 1024 * 1024)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_floors(&self, tree: &TreeView) {
        let path = self.tree_dir().join(VERSIONS_FILE);
        let bytes = serde_json::to_vec(tree.floors()).expect("a map serializes");
        if let Err(e) = store::write_atomic(&path, &bytes) {
            warn!(
                "cannot keep the trusted role versions in {}: {e}",
                path.display()
            );
        }
    }
}

/// Reads a file of at most `max` bytes; `None` if it is missing, unreadable or larger.
fn read_bounded(path: &std::path::Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= max).then_some(buf)
}

/// The version in a stored head's bytes (already verified when it was stored).
fn stored_version(bytes: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("signed")?.get("version")?.as_u64()
}

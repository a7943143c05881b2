//! The snapshot tree: the same role versions as `snapshot.json`, as a hash tree a device
//! walks only along the roles it needs (docs/scale.md).
//!
//! The tree is a trie over the SHA-256 of each role name, read two bits (one base-4 digit)
//! per level. A node holding at most [`BUCKET`] roles is a *leaf* listing them with their
//! version, length and hashes; a larger one is a *branch* naming the SHA-256 of each of its
//! (up to [`FANOUT`]) children. Nodes are compact JSON files named by their own SHA-256
//! (`metadata/snapshot-tree/<sha256>.json`), so they are immutable, cacheable forever, and
//! a change to one role writes only the nodes on its path. The *head*
//! (`metadata/snapshot-tree/<version>.head.json`) is signed by the snapshot role's keys and
//! names the root node; the timestamp pins the head in its `petrel_snapshot_tree` field.
//! The layout is a pure function of the role set, so every writer builds the same tree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::*;
use super::timestamp::validate_meta_file;

/// The `_type` of the signed head.
pub const TREE_TYPE: &str = "petrel-snapshot-tree";
/// The timestamp's field that pins the head (a [`MetaFile`]: version, length, hashes).
pub const TIMESTAMP_FIELD: &str = "petrel_snapshot_tree";
/// Children per branch (one base-4 digit of the role name's SHA-256 per level).
pub const FANOUT: usize = 4;
/// The most roles a leaf lists; a node with more is split.
pub const BUCKET: usize = 4;
/// The deepest a node can be: every digit of a SHA-256.
pub const MAX_DEPTH: usize = 128;
/// The largest node a reader accepts (a leaf of [`BUCKET`] roles is far smaller).
pub const MAX_NODE_BYTES: u64 = 16 * 1024;
/// The largest head a reader accepts.
pub const MAX_HEAD_BYTES: u64 = 16 * 1024;
/// The directory, under the metadata directory, of the head and the nodes.
pub const TREE_DIR: &str = "snapshot-tree";

/// The signed head of a snapshot tree, signed by the snapshot role's keys. Its version is
/// the version of the `snapshot.json` published with it, and it expires with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTree {
    /// Always [`TREE_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// The specification version the writer followed.
    pub spec_version: String,
    /// Monotonic version number (the snapshot's).
    pub version: u64,
    /// When this head stops being trusted.
    pub expires: Expires,
    /// The SHA-256 (hex) of the root node's bytes.
    pub root: String,
    /// How many roles the tree lists.
    pub roles: u64,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl Metadata for SnapshotTree {
    const TYPE: &'static str = TREE_TYPE;
    impl_metadata_accessors!();

    fn validate(&self) -> Result<(), SchemaError> {
        validate_common(self)?;
        if !is_sha256_hex(&self.root) {
            return Err(SchemaError::invalid(
                "snapshot tree head",
                format!("root {:?} is not a SHA-256 in hex", self.root),
            ));
        }
        Ok(())
    }
}

/// One node of the tree, as its file holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeNode {
    /// The node's position: the base-4 digits every role below it starts with.
    pub prefix: String,
    /// A branch: next digit (`"0"`–`"3"`) → SHA-256 of the child node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<BTreeMap<String, String>>,
    /// A leaf: role name → its version, length and hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<BTreeMap<String, MetaFile>>,
}

impl TreeNode {
    /// Parses and checks a node's bytes: well-formed prefix, exactly one of children and
    /// roles, children keyed by one digit with SHA-256 values, every leaf entry a valid
    /// reference whose role name's digits start with the prefix.
    pub fn from_bytes(bytes: &[u8]) -> Result<TreeNode, SchemaError> {
        let node: TreeNode = serde_json::from_slice(bytes).map_err(|e| SchemaError::Malformed {
            what: "snapshot tree node".into(),
            reason: e.to_string(),
        })?;
        node.validate()?;
        Ok(node)
    }

    fn validate(&self) -> Result<(), SchemaError> {
        let what = format!("snapshot tree node {:?}", self.prefix);
        if self.prefix.len() > MAX_DEPTH || !self.prefix.bytes().all(|b| (b'0'..=b'3').contains(&b))
        {
            return Err(SchemaError::invalid(
                what,
                "the prefix must be at most 128 base-4 digits",
            ));
        }
        match (&self.children, &self.roles) {
            (Some(c), None) => {
                if c.is_empty() || self.prefix.len() == MAX_DEPTH {
                    return Err(SchemaError::invalid(what, "a branch needs children"));
                }
                for (digit, hash) in c {
                    if !matches!(digit.as_str(), "0" | "1" | "2" | "3") || !is_sha256_hex(hash) {
                        return Err(SchemaError::invalid(
                            what,
                            format!("child {digit:?} → {hash:?} is not a digit and a SHA-256"),
                        ));
                    }
                }
            }
            (None, Some(r)) => {
                if r.len() > BUCKET * 64 {
                    return Err(SchemaError::invalid(what, "the leaf lists too many roles"));
                }
                for (role, m) in r {
                    if !role_digits(role).starts_with(&self.prefix) {
                        return Err(SchemaError::invalid(
                            what,
                            format!(
                                "it lists role {role:?}, whose position is elsewhere in the tree"
                            ),
                        ));
                    }
                    validate_meta_file("snapshot tree node", role, m)?;
                }
            }
            _ => {
                return Err(SchemaError::invalid(
                    what,
                    "a node has either children or roles",
                ))
            }
        }
        Ok(())
    }

    /// The node's file bytes: compact JSON with sorted keys (the same bytes for the same node).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a tree node serializes")
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The position of a role in the tree: the SHA-256 of its name as 128 base-4 digits.
pub fn role_digits(role: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, role.as_bytes());
    let mut s = String::with_capacity(MAX_DEPTH);
    for b in d.as_ref() {
        for shift in [6, 4, 2, 0] {
            s.push(char::from(b'0' + ((b >> shift) & 3)));
        }
    }
    s
}

/// The SHA-256 (hex) of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// The file name of a node, under [`TREE_DIR`].
pub fn node_file_name(sha256: &str) -> String {
    format!("{sha256}.json")
}

/// The file name of a head, under [`TREE_DIR`].
pub fn head_file_name(version: u64) -> String {
    format!("{version}.head.json")
}

/// A built tree: the root's hash and every node (hash → bytes).
#[derive(Clone, Debug, Default)]
pub struct BuiltTree {
    /// The SHA-256 of the root node.
    pub root: String,
    /// Every node of the tree by its SHA-256.
    pub nodes: BTreeMap<String, Vec<u8>>,
}

/// Builds the tree of `roles` (role name → reference). Deterministic: the same role set
/// gives the same nodes and root. An empty set gives a single empty leaf.
pub fn build(roles: &BTreeMap<String, MetaFile>) -> BuiltTree {
    let mut keyed: Vec<(String, &str, &MetaFile)> = roles
        .iter()
        .map(|(r, m)| (role_digits(r), r.as_str(), m))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = BuiltTree::default();
    out.root = build_node(&keyed, 0, &mut out.nodes);
    out
}

fn build_node(
    roles: &[(String, &str, &MetaFile)],
    depth: usize,
    nodes: &mut BTreeMap<String, Vec<u8>>,
) -> String {
    let prefix = roles
        .first()
        .map(|r| r.0[..depth].to_string())
        .unwrap_or_default();
    let node = if roles.len() <= BUCKET || depth == MAX_DEPTH {
        TreeNode {
            prefix,
            children: None,
            roles: Some(
                roles
                    .iter()
                    .map(|(_, r, m)| (r.to_string(), (*m).clone()))
                    .collect(),
            ),
        }
    } else {
        let mut children = BTreeMap::new();
        let mut start = 0;
        while start < roles.len() {
            let digit = roles[start].0.as_bytes()[depth];
            let end = start
                + roles[start..]
                    .iter()
                    .take_while(|r| r.0.as_bytes()[depth] == digit)
                    .count();
            let child = build_node(&roles[start..end], depth + 1, nodes);
            children.insert(char::from(digit).to_string(), child);
            start = end;
        }
        TreeNode {
            prefix,
            children: Some(children),
            roles: None,
        }
    };
    let bytes = node.to_bytes();
    let hash = sha256_hex(&bytes);
    nodes.insert(hash.clone(), bytes);
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: u64) -> MetaFile {
        let mut h = Hashes::new();
        h.insert("sha256".into(), "ab".repeat(32));
        MetaFile {
            version: v,
            length: Some(100),
            hashes: Some(h),
            unrecognized: Unrecognized::new(),
        }
    }

    #[test]
    fn a_node_with_an_unknown_large_number_round_trips_exactly() {
        // An integer beyond u64 in an unrecognized field is read as a float; the parse must
        // be correctly rounded or writing the node back and reading it again changes it.
        let bytes = br#"{"prefix":"010","roles":{"index-05":{"version":1,"lYength":1033302120002245146054804534206,"hashes":{"":"f54024649e2fdf8b"}}}}"#;
        let node = TreeNode::from_bytes(bytes).unwrap();
        let again = TreeNode::from_bytes(&node.to_bytes()).unwrap();
        assert_eq!(again, node);
    }

    /// Walks the built tree like a reader does.
    fn find(t: &BuiltTree, role: &str) -> Option<MetaFile> {
        let digits = role_digits(role);
        let mut hash = t.root.clone();
        for depth in 0..=MAX_DEPTH {
            let node = TreeNode::from_bytes(&t.nodes[&hash]).unwrap();
            assert_eq!(node.prefix, digits[..depth]);
            match (node.children, node.roles) {
                (Some(c), None) => hash = c.get(&digits[depth..depth + 1])?.clone(),
                (None, Some(r)) => return r.get(role).cloned(),
                _ => unreachable!(),
            }
        }
        None
    }

    #[test]
    fn every_role_is_found_and_absent_roles_are_not() {
        let roles: BTreeMap<String, MetaFile> = (0..2000)
            .map(|i| (format!("bin-{i:04x}"), meta(i + 1)))
            .collect();
        let t = build(&roles);
        for (r, m) in &roles {
            assert_eq!(find(&t, r).as_ref(), Some(m), "{r}");
        }
        assert_eq!(find(&t, "bin-zzzz"), None);
        // Leaves hold at most BUCKET roles: the tree is about log4(2000 / 4) deep.
        assert!(t.nodes.len() > 2000 / BUCKET);
    }

    #[test]
    fn a_change_to_one_role_rewrites_only_its_path() {
        let mut roles: BTreeMap<String, MetaFile> =
            (0..5000).map(|i| (format!("r{i}"), meta(1))).collect();
        let a = build(&roles);
        roles.insert("r42".into(), meta(2));
        let b = build(&roles);
        let new: Vec<_> = b
            .nodes
            .keys()
            .filter(|h| !a.nodes.contains_key(*h))
            .collect();
        assert!(new.len() <= 8, "{} nodes changed", new.len());
        assert_ne!(a.root, b.root);
        assert_eq!(build(&roles).root, b.root, "deterministic");
    }

    #[test]
    fn a_leaf_listing_a_role_outside_its_prefix_is_refused() {
        let role = "groups-3a";
        let wrong = if role_digits(role).starts_with('0') {
            "1"
        } else {
            "0"
        };
        let node = TreeNode {
            prefix: wrong.into(),
            children: None,
            roles: Some(BTreeMap::from([(role.to_string(), meta(1))])),
        };
        let e = TreeNode::from_bytes(&node.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("elsewhere in the tree"), "{e}");
    }

    #[test]
    fn malformed_nodes_are_refused() {
        for bad in [
            r#"{"prefix":"4","roles":{}}"#,
            r#"{"prefix":"","children":{"5":"00"}}"#,
            r#"{"prefix":"","children":{}}"#,
            r#"{"prefix":"","roles":{},"children":{"0":"00"}}"#,
            r#"{"prefix":""}"#,
            r#"{"prefix":"","roles":{},"extra":1}"#,
        ] {
            assert!(TreeNode::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}

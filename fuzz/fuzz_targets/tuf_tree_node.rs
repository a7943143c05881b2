//! Snapshot tree nodes and heads (docs/scale.md), as a device reads them from a mirror:
//! `TreeNode::from_bytes` on the input, and the head parsed as signed metadata. A node that
//! parses must keep its invariants: its prefix is base-4 digits, a branch names children by
//! one digit with SHA-256 values, a leaf lists only roles whose position starts with the
//! prefix; and its bytes round-trip. Building a tree from the leaf's roles finds each again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_client::tuf::schema::tree::{self, TreeNode};
use petrel_client::tuf::schema::{Signed, SnapshotTree};

fuzz_target!(|data: &[u8]| {
    let _ = Signed::<SnapshotTree>::from_bytes(data);
    let Ok(node) = TreeNode::from_bytes(data) else {
        return;
    };
    assert!(node.prefix.bytes().all(|b| (b'0'..=b'3').contains(&b)));
    match (&node.children, &node.roles) {
        (Some(c), None) => {
            assert!(!c.is_empty());
            for (d, h) in c {
                assert!(matches!(d.as_str(), "0" | "1" | "2" | "3"));
                assert!(tree::is_sha256_hex(h));
            }
        }
        (None, Some(roles)) => {
            for r in roles.keys() {
                assert!(
                    tree::role_digits(r).starts_with(&node.prefix),
                    "{r} misplaced"
                );
            }
            let built = tree::build(roles);
            assert!(built.nodes.contains_key(&built.root));
        }
        _ => panic!("a node with both or neither of children and roles was accepted"),
    }
    let again = TreeNode::from_bytes(&node.to_bytes()).expect("a parsed node re-parses");
    assert_eq!(again, node);
});

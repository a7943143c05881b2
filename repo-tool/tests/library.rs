//! Library-level tests where the CLI cannot reach the exact moment or state: a file that
//! changes while it is being added, and a tree the CLI now refuses to produce.

mod common;

use std::io::Write;

use common::*;
use petrel_client::tuf::keys::KeySource;
use petrel_client::tuf::schema::{Hashes, TargetFile, Unrecognized};
use petrel_repo::editor::{
    self, hash_into_store, hash_into_store_with_hook, BinsSpec, Editor, InitOptions, KeyType,
};
use petrel_repo::publish::{self, Refresh};
use petrel_repo::{audit, workspace::Workspace};

/// A workspace created and published through the library, with one target.
fn published_workspace(dir: &std::path::Path) -> Workspace {
    let ws = editor::init(dir, &InitOptions::default()).unwrap();
    let src = dir.join("../hello.txt");
    std::fs::write(&src, b"hello").unwrap();
    let mut ed = Editor::new(&ws);
    let sources = editor::collect_sources(&[src], Some("docs"), None).unwrap();
    ed.add_targets(&sources, &editor::AddOptions::default())
        .unwrap();
    ed.save().unwrap();
    publish::publish(&ws, Refresh::default()).unwrap();
    ws
}

#[test]
fn a_file_that_changes_while_it_is_added_is_refused_and_the_store_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ws");
    let ws = published_workspace(&dir);
    let src = tmp.path().join("growing.log");
    std::fs::write(&src, vec![b'x'; 200_000]).unwrap();
    let before = snapshot(&dir);
    let mut hook_ran = false;
    let err = hash_into_store_with_hook(&src, &ws.content_dir(), || {
        hook_ran = true;
        let mut f = std::fs::OpenOptions::new().append(true).open(&src).unwrap();
        f.write_all(b"one more line\n").unwrap();
    })
    .unwrap_err()
    .to_string();
    assert!(hook_ran);
    assert!(
        err.contains(&src.display().to_string())
            && err.contains("changed while it was being added"),
        "{err}"
    );
    // No partial or temporary copy is left in the content store; nothing else changed.
    assert_same(&before, &snapshot(&dir), "workspace after a refused add");
    // Once the file is stable it is stored, and the hashes describe the stored copy.
    let stored = hash_into_store(&src, &ws.content_dir()).unwrap();
    let bytes = std::fs::read(&src).unwrap();
    assert_eq!(stored.length, bytes.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&bytes));
    assert_eq!(stored.sha512, sha512_hex(&bytes));
    assert_eq!(
        std::fs::read(petrel_repo::editor::store_path(
            &ws.content_dir(),
            &stored.sha256
        ))
        .unwrap(),
        bytes
    );
}

#[test]
fn a_file_rewritten_with_the_same_length_while_added_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    std::fs::create_dir_all(&content).unwrap();
    let src = tmp.path().join("image.bin");
    std::fs::write(&src, vec![b'a'; 4096]).unwrap();
    // Make sure the rewrite gets a different modification time.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let err = hash_into_store_with_hook(&src, &content, || {
        std::fs::write(&src, vec![b'b'; 4096]).unwrap();
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("changed while it was being added"), "{err}");
    assert_eq!(std::fs::read_dir(&content).unwrap().count(), 0);
}

#[test]
fn verify_reports_a_target_listed_in_a_hashed_bin_its_path_does_not_hash_to() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ws");
    let ws = published_workspace(&dir);
    let mut ed = Editor::new(&ws);
    let (k, pem) = KeyType::Ed25519.generate().unwrap();
    ws.save_private_key(&k, &pem).unwrap();
    ed.delegate(editor::DelegationSpec {
        from: "targets".into(),
        name: "assign".into(),
        paths: Some(vec!["assign/*".into()]),
        hash_prefixes: None,
        keys: vec![k.public_key().clone()],
        threshold: 1,
        terminating: false,
        extra: Unrecognized::new(),
    })
    .unwrap();
    ed.delegate_bins(BinsSpec {
        from: "assign".into(),
        bins: 4,
        name_prefix: "ab".into(),
        keys: vec![k.public_key().clone()],
        threshold: 1,
    })
    .unwrap();
    // The editor refuses the misplaced target...
    let name = "assign/device-1.json";
    let right = bin_of(name, "ab", 2);
    let wrong = if right == "ab-0" { "ab-1" } else { "ab-0" };
    let src = tmp.path().join("d.json");
    std::fs::write(&src, b"{}").unwrap();
    let sources = editor::collect_sources(std::slice::from_ref(&src), None, Some(name)).unwrap();
    let err = ed
        .add_targets(
            &sources,
            &editor::AddOptions {
                role: Some(wrong.into()),
                custom: None,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("belongs in hashed bin {right:?}")),
        "{err}"
    );
    // ...so write it in by hand, as a buggy or hostile tool would, and publish.
    let stored = hash_into_store(&src, &ws.content_dir()).unwrap();
    let mut hashes = Hashes::new();
    hashes.insert("sha256".into(), stored.sha256.clone());
    ed.targets_mut(wrong).unwrap().targets.insert(
        name.into(),
        TargetFile {
            length: stored.length,
            hashes,
            custom: None,
            unrecognized: Unrecognized::new(),
        },
    );
    ed.save().unwrap();
    publish::publish(&ws, Refresh::default()).unwrap();
    let report = audit::audit_tree(&ws.tree_dir(), None).unwrap();
    let text = report.to_string();
    assert_eq!(report.problems.len(), 1, "{text}");
    assert!(
        report.problems[0].contains(&format!(
            "target {name:?} in role {wrong:?} is under hashed bin {wrong:?}, but its path hash puts it in bin {right:?}"
        )),
        "{text}"
    );
}

//! Every `petrel-repo` command, run as the real binary in a temporary workspace.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::Value;

fn expires(v: &Value) -> DateTime<Utc> {
    v["signed"]["expires"]
        .as_str()
        .expect("expires")
        .parse()
        .expect("RFC 3339")
}

fn assert_near(t: DateTime<Utc>, want: DateTime<Utc>, what: &str) {
    let d = (t - want).num_seconds().abs();
    assert!(d <= 120, "{what}: expires {t}, expected about {want}");
}

#[test]
fn init_generates_requested_keys_thresholds_and_expiries() {
    let r = Repo::init(&[
        "--keys",
        "root=3",
        "--threshold",
        "root=2",
        "--keys",
        "timestamp=2",
        "--expiry",
        "timestamp=6h",
        "--expiry",
        "targets=30d",
    ]);
    let root = r.json("staged/root.json");
    let roles = &root["signed"]["roles"];
    assert_eq!(roles["root"]["keyids"].as_array().unwrap().len(), 3);
    assert_eq!(roles["root"]["threshold"], 2);
    assert_eq!(roles["timestamp"]["keyids"].as_array().unwrap().len(), 2);
    assert_eq!(roles["timestamp"]["threshold"], 1);
    assert_eq!(roles["targets"]["keyids"].as_array().unwrap().len(), 1);
    assert_eq!(root["signed"]["consistent_snapshot"], true);
    // Every generated private key is in keys/<keyid>.pem with mode 0600.
    let mut all = BTreeSet::new();
    for role in ["root", "targets", "snapshot", "timestamp"] {
        all.extend(r.role_keyids(role));
    }
    assert_eq!(all.len(), 7);
    for id in &all {
        let p = r.dir.join(format!("keys/{id}.pem"));
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", p.display());
    }
    let settings = std::fs::read_to_string(r.dir.join("petrel-repo.toml")).unwrap();
    assert!(settings.contains("timestamp = \"6h\""), "{settings}");
    r.ok(&["publish"]);
    let now = Utc::now();
    assert_near(
        expires(&r.tree_json("metadata/timestamp.json")),
        now + chrono::Duration::hours(6),
        "timestamp",
    );
    assert_near(
        expires(&r.tree_json("metadata/1.targets.json")),
        now + chrono::Duration::days(30),
        "targets",
    );
    // Root was signed by 2 (here: all 3 available) root keys.
    assert_eq!(signers(&r.tree_json("metadata/1.root.json")).len(), 3);
    r.verify_ok();
}

#[test]
fn init_with_ecdsa_key_type_publishes_a_verifiable_tree() {
    let r = Repo::init(&["--key-type", "ecdsa"]);
    let root = r.json("staged/root.json");
    for (_, k) in root["signed"]["keys"].as_object().unwrap() {
        assert_eq!(k["keytype"], "ecdsa", "{k}");
        assert_eq!(k["scheme"], "ecdsa-sha2-nistp256", "{k}");
    }
    r.ok(&["publish"]);
    r.verify_ok();
}

#[test]
fn init_refuses_impossible_thresholds_and_existing_workspaces_without_creating_anything() {
    let r = Repo::empty();
    let err = r.fail(&["init", "--threshold", "root=2"]);
    assert!(
        err.contains("role \"root\"") && err.contains("threshold 2 is impossible with 1 key"),
        "{err}"
    );
    assert!(!r.dir.exists(), "a failed init left {}", r.dir.display());
    let err = r.fail(&["init", "--keys", "bogus=2"]);
    assert!(err.contains("\"bogus\" is not a top-level role"), "{err}");
    // Malformed option values are rejected by the argument parser (exit code 2).
    let o = run(r.cmd(&["init", "--expiry", "snapshot=3y"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid duration \"3y\""));
    assert!(!r.dir.exists(), "a failed init left {}", r.dir.display());

    r.ok(&["init"]);
    let before = r.snapshot();
    let err = r.fail(&["init"]);
    assert!(
        err.contains("already holds a repository workspace"),
        "{err}"
    );
    assert_same(&before, &r.snapshot(), "second init");
}

#[test]
fn add_file_with_prefix_publishes_consistent_target_with_length_sha256_and_sha512() {
    let r = Repo::init(&[]);
    let content = b"firmware image v1\n".repeat(100);
    let f = r.src("fw.bin", &content);
    let out = r.ok(&["add", path(&f), "--prefix", "apps/acme/fw/1.0/"]);
    assert!(
        out.contains("added apps/acme/fw/1.0/fw.bin") && out.contains("in role targets"),
        "{out}"
    );
    r.ok(&["publish"]);
    let name = "apps/acme/fw/1.0/fw.bin";
    let tree_file = r.tree().join(consistent_target_path(name, &content));
    assert_eq!(std::fs::read(&tree_file).unwrap(), content);
    let t = r.tree_json("metadata/1.targets.json");
    let tf = &t["signed"]["targets"][name];
    assert_eq!(tf["length"], content.len());
    assert_eq!(tf["hashes"]["sha256"], sha256_hex(&content));
    assert_eq!(tf["hashes"]["sha512"], sha512_hex(&content));
    assert!(tf.get("custom").is_none());
    r.verify_ok();
}

/// Workspaces made by earlier versions keep the content store flat (`content/<sha256>`);
/// publishing from one still places every target, with no copy stored twice.
#[test]
fn a_content_store_in_the_earlier_flat_layout_still_publishes() {
    let r = Repo::init(&[]);
    let contents: Vec<Vec<u8>> = (0..3).map(|i| format!("file {i}\n").into_bytes()).collect();
    for (i, c) in contents.iter().enumerate() {
        let f = r.src(&format!("d/f{i}.txt"), c);
        r.ok(&["add", path(&f), "--prefix", "docs"]);
    }
    // Move every stored file to where earlier versions kept it.
    let content = r.dir.join("content");
    for c in &contents {
        let sha = sha256_hex(c);
        let sharded = content.join(&sha[..2]).join(&sha);
        assert!(
            sharded.is_file(),
            "{} not stored under its subdirectory",
            sha
        );
        std::fs::rename(&sharded, content.join(&sha)).unwrap();
        std::fs::remove_dir(sharded.parent().unwrap()).unwrap();
    }
    // Content already in the flat store is not stored a second time.
    let again = r.src("again.txt", &contents[0]);
    r.ok(&["add", path(&again), "--prefix", "more"]);
    assert!(!content.join(&sha256_hex(&contents[0])[..2]).exists());
    r.ok(&["publish"]);
    for (i, c) in contents.iter().enumerate() {
        let name = format!("docs/f{i}.txt");
        assert_eq!(
            std::fs::read(r.tree().join(consistent_target_path(&name, c))).unwrap(),
            *c
        );
    }
    r.verify_ok();
}

#[test]
fn add_directory_tree_names_every_regular_file_by_its_relative_path() {
    let r = Repo::init(&[]);
    r.src("suite/bin/app", b"app");
    r.src("suite/lib/libx.so", b"libx");
    r.src("suite/share/doc/README", b"readme");
    let out = r.ok(&[
        "add",
        path(&r.tmp.path().join("src/suite")),
        "--prefix",
        "apps/acme/suite/5.0",
    ]);
    assert!(out.contains("3 target(s) added"), "{out}");
    r.ok(&["publish"]);
    let t = r.tree_json("metadata/1.targets.json");
    let names: BTreeSet<&str> = t["signed"]["targets"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "apps/acme/suite/5.0/bin/app",
            "apps/acme/suite/5.0/lib/libx.so",
            "apps/acme/suite/5.0/share/doc/README",
        ])
    );
    for (name, content) in [
        ("apps/acme/suite/5.0/bin/app", &b"app"[..]),
        ("apps/acme/suite/5.0/lib/libx.so", b"libx"),
        ("apps/acme/suite/5.0/share/doc/README", b"readme"),
    ] {
        assert_eq!(
            std::fs::read(r.tree().join(consistent_target_path(name, content))).unwrap(),
            content
        );
    }
    r.verify_ok();
}

#[test]
fn add_with_name_and_custom_records_exactly_that_name_and_custom_json() {
    let r = Repo::init(&[]);
    let f = r.src("whatever.txt", b"notes");
    r.ok(&[
        "add",
        path(&f),
        "--name",
        "docs/release-notes.txt",
        "--custom",
        r#"{"channel":"beta","min":3}"#,
    ]);
    let staged = r.json("staged/targets.json");
    let targets = staged["signed"]["targets"].as_object().unwrap();
    assert_eq!(
        targets.keys().collect::<Vec<_>>(),
        vec!["docs/release-notes.txt"]
    );
    assert_eq!(
        targets["docs/release-notes.txt"]["custom"],
        serde_json::json!({"channel": "beta", "min": 3})
    );
    let err = r.fail(&["add", path(&f), "--name", "x", "--custom", "[1,2]"]);
    assert!(
        err.contains("custom metadata must be a JSON object"),
        "{err}"
    );
    let err = r.fail(&["add", path(&f), "--name", "x", "--custom", "{oops"]);
    assert!(err.contains("--custom is not JSON"), "{err}");
    r.ok(&["publish"]);
    r.verify_ok();
}

#[test]
fn add_into_a_delegated_role_lists_the_target_there_and_not_in_targets() {
    let r = Repo::init(&[]);
    r.ok(&["delegate", "--to", "acme", "--paths", "apps/acme/*/*/*"]);
    let f = r.src("app.bin", b"acme app");
    let out = r.ok(&[
        "add",
        path(&f),
        "--prefix",
        "apps/acme/app/2.1",
        "--role",
        "acme",
    ]);
    assert!(out.contains("in role acme"), "{out}");
    r.ok(&["publish"]);
    let acme = r.tree_json("metadata/1.acme.json");
    assert!(acme["signed"]["targets"]
        .get("apps/acme/app/2.1/app.bin")
        .is_some());
    let targets = r.tree_json("metadata/1.targets.json");
    assert!(targets["signed"]["targets"].as_object().unwrap().is_empty());
    let out = r.verify_ok();
    assert!(out.contains("2 targets role(s), 1 target file(s)"), "{out}");
}

#[test]
fn add_through_the_bin_delegator_puts_each_target_in_its_hashed_bin() {
    let r = Repo::init(&[]);
    r.ok(&["delegate", "--to", "bin", "--bins", "8"]);
    let names: Vec<String> = (0..12).map(|i| format!("assign/dev{i}.json")).collect();
    for (i, n) in names.iter().enumerate() {
        let f = r.src(&format!("a{i}.json"), format!("{{\"i\":{i}}}").as_bytes());
        r.ok(&["add", path(&f), "--name", n]);
    }
    r.ok(&["publish"]);
    for n in &names {
        let want = bin_of(n, "bin", 3);
        for b in 0..8 {
            let bin = format!("bin-{b}");
            let v = r.tree_json(&format!(
                "metadata/{}.{bin}.json",
                snapshot_version_of(&r, &bin)
            ));
            let listed = v["signed"]["targets"].get(n).is_some();
            assert_eq!(listed, bin == want, "{n} in {bin} (belongs in {want})");
        }
    }
    let t = r.tree_json("metadata/1.targets.json");
    let s = &t["signed"]["delegations"]["succinct_roles"];
    assert_eq!(s["bit_length"], 3);
    assert_eq!(s["name_prefix"], "bin");
    r.verify_ok();
}

#[test]
fn remove_drops_targets_from_roles_and_from_hashed_bins() {
    let r = Repo::init(&[]);
    let a = r.src("a.txt", b"a");
    let b = r.src("b.txt", b"b");
    r.ok(&["add", path(&a), path(&b), "--prefix", "docs"]);
    r.ok(&["delegate", "--to", "assign", "--paths", "assign/*"]);
    r.ok(&["delegate", "--from", "assign", "--to", "ab", "--bins", "4"]);
    r.ok(&[
        "add",
        path(&a),
        "--name",
        "assign/x.json",
        "--role",
        "assign",
    ]);
    r.ok(&["publish"]);
    r.ok(&["remove", "docs/a.txt"]);
    r.ok(&["remove", "--role", "assign", "assign/x.json"]);
    r.ok(&["publish"]);
    let t = r.json("metadata/targets.json");
    let names: Vec<&String> = t["signed"]["targets"].as_object().unwrap().keys().collect();
    assert_eq!(names, vec!["docs/b.txt"]);
    let bin = bin_of("assign/x.json", "ab", 2);
    let b = r.json(&format!("metadata/{bin}.json"));
    assert_eq!(b["signed"]["version"], 2);
    assert!(b["signed"]["targets"].as_object().unwrap().is_empty());
    r.verify_ok();
    let before = r.snapshot();
    let err = r.fail(&["remove", "docs/never.txt"]);
    assert!(
        err.contains("\"docs/never.txt\"") && err.contains("is not listed in role \"targets\""),
        "{err}"
    );
    assert_same(&before, &r.snapshot(), "removing an unknown target");
}

#[test]
fn delegate_records_paths_hash_prefixes_terminating_thresholds_and_given_public_keys() {
    let r = Repo::init(&[]);
    let partner_pem = r.scratch("partner.pem");
    let out = expect_ok({
        let mut c = petrel();
        c.args(["key", "generate", "-o", path(&partner_pem)]);
        c
    });
    assert!(out.contains("generated key"), "{out}");
    let pub_json = expect_ok({
        let mut c = petrel();
        c.args(["key", "public", path(&partner_pem)]);
        c
    });
    let partner_pub = r.scratch("partner.pub.json");
    std::fs::write(&partner_pub, &pub_json).unwrap();
    r.ok(&[
        "delegate",
        "--to",
        "partner",
        "--paths",
        "apps/partner/*",
        "apps/partner/*/*/*",
        "--public-key",
        path(&partner_pub),
    ]);
    r.ok(&["delegate", "--to", "hp", "--hash-prefixes", "0", "8f"]);
    r.ok(&[
        "delegate",
        "--to",
        "acme",
        "--paths",
        "apps/acme/*/*/*",
        "--terminating",
        "--generate",
        "2",
        "--threshold",
        "2",
    ]);
    let t = r.json("staged/targets.json");
    let d = &t["signed"]["delegations"];
    let roles = d["roles"].as_array().unwrap();
    let by_name = |n: &str| roles.iter().find(|r| r["name"] == n).unwrap().clone();
    let partner = by_name("partner");
    let partner_id = partner["keyids"][0].as_str().unwrap().to_string();
    assert_eq!(partner["keyids"].as_array().unwrap().len(), 1);
    let pub_key: Value = serde_json::from_str(&pub_json).unwrap();
    assert_eq!(d["keys"][&partner_id], pub_key);
    assert_eq!(
        partner["paths"],
        serde_json::json!(["apps/partner/*", "apps/partner/*/*/*"])
    );
    assert_eq!(partner["terminating"], false);
    assert!(
        !r.dir.join(format!("keys/{partner_id}.pem")).exists(),
        "a partner's key must not be copied into the workspace"
    );
    let hp = by_name("hp");
    assert_eq!(hp["path_hash_prefixes"], serde_json::json!(["0", "8f"]));
    assert!(hp.get("paths").is_none());
    let acme = by_name("acme");
    assert_eq!(acme["terminating"], true);
    assert_eq!(acme["threshold"], 2);
    for id in acme["keyids"].as_array().unwrap() {
        assert!(r
            .dir
            .join(format!("keys/{}.pem", id.as_str().unwrap()))
            .exists());
    }
    // The partner role cannot be published without the partner's key...
    let before = r.snapshot();
    let err = r.fail(&["publish"]);
    assert!(
        err.contains("role \"partner\"") && err.contains(&partner_id[..8]),
        "{err}"
    );
    assert_same(&before, &r.snapshot(), "publish without the partner key");
    // ...and with it (passed as an extra key file) it can.
    let f = r.src("p.bin", b"partner app");
    r.ok(&[
        "add",
        path(&f),
        "--name",
        "apps/partner/p.bin",
        "--role",
        "partner",
    ]);
    r.ok(&["publish", "--key", path(&partner_pem)]);
    let p = r.tree_json("metadata/1.partner.json");
    assert_eq!(signers(&p), vec![partner_id]);
    r.verify_ok();
}

#[test]
fn publish_after_one_bin_changes_writes_only_that_bin_snapshot_and_timestamp() {
    let r = Repo::init(&[]);
    r.ok(&["delegate", "--to", "bin", "--bins", "16"]);
    for i in 0..6 {
        let f = r.src(&format!("d{i}"), format!("device {i}").as_bytes());
        r.ok(&["add", path(&f), "--name", &format!("assign/d{i}.json")]);
    }
    r.ok(&["publish"]);
    let before = r.tree_metadata();
    let ts_before = r.tree_json("metadata/timestamp.json")["signed"]["version"]
        .as_u64()
        .unwrap();

    let name = "assign/new-device.json";
    let bin = bin_of(name, "bin", 4);
    let f = r.src("new", b"new device");
    r.ok(&["add", path(&f), "--name", name]);
    let staged: Vec<String> = std::fs::read_dir(r.dir.join("staged"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        staged,
        vec![format!("{bin}.json")],
        "only the bin is staged"
    );
    let out = r.ok(&["publish"]);
    assert!(
        out.contains(&format!(
            "published {bin} v2, snapshot v2, timestamp v{}",
            ts_before + 1
        )),
        "{out}"
    );
    let after = r.tree_metadata();
    let added: BTreeSet<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let want_added = [format!("2.{bin}.json"), "2.snapshot.json".to_string()];
    assert_eq!(added, want_added.iter().collect::<BTreeSet<_>>());
    let changed: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        changed,
        vec!["timestamp.json"],
        "only timestamp.json is rewritten"
    );
    // Every other bin keeps version 1 in the new snapshot.
    let snap = r.tree_json("metadata/2.snapshot.json");
    for (k, m) in snap["signed"]["meta"].as_object().unwrap() {
        let want = if *k == format!("{bin}.json") { 2 } else { 1 };
        assert_eq!(m["version"], want, "{k}");
    }
    r.verify_ok();
}

fn target_stats(tree: &Path) -> Vec<(String, u64, i64, i64)> {
    walkdir::WalkDir::new(tree.join("targets"))
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.path().display().to_string(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
            )
        })
        .collect()
}

fn unchanged_targets_are_not_rewritten(init_args: &[&str]) {
    let r = Repo::init(init_args);
    let a = r.src("a.bin", b"aaaa");
    let b = r.src("b.bin", b"bbbb");
    r.ok(&["add", path(&a), path(&b), "--prefix", "apps/x/y/1.0"]);
    r.ok(&["publish"]);
    // Consistent snapshots store one copy per listed hash (sha256 and sha512).
    let copies = if init_args.contains(&"--no-consistent-snapshot") {
        1
    } else {
        2
    };
    let first = target_stats(&r.tree());
    assert_eq!(first.len(), 2 * copies);
    // Re-add the same bytes, add a new file, publish twice more.
    std::thread::sleep(std::time::Duration::from_millis(20));
    r.ok(&["add", path(&a), "--prefix", "apps/x/y/1.0"]);
    let c = r.src("c.bin", b"cccc");
    r.ok(&["add", path(&c), "--prefix", "apps/x/y/1.0"]);
    r.ok(&["publish"]);
    r.ok(&["refresh", "--snapshot"]);
    let later = target_stats(&r.tree());
    assert_eq!(later.len(), 3 * copies);
    for old in &first {
        assert!(
            later.contains(old),
            "{} was rewritten (inode/mtime changed): before {old:?}, after {later:?}",
            old.0
        );
    }
    r.verify_ok();
}

#[test]
fn publish_never_rewrites_unchanged_target_files() {
    unchanged_targets_are_not_rewritten(&[]);
}

#[test]
fn publish_without_consistent_snapshots_never_rewrites_unchanged_target_files() {
    unchanged_targets_are_not_rewritten(&["--no-consistent-snapshot"]);
}

#[test]
fn refresh_resigns_only_the_timestamp_and_with_snapshot_also_the_snapshot() {
    let r = Repo::published();
    let before = r.tree_metadata();
    let ts1 = r.tree_json("metadata/timestamp.json");
    let out = r.ok(&["refresh"]);
    assert!(out.contains("published timestamp v2"), "{out}");
    let after = r.tree_metadata();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "refresh added metadata files"
    );
    for (k, v) in &before {
        assert_eq!(k == "timestamp.json", after[k] != *v, "{k}");
    }
    let ts2 = r.tree_json("metadata/timestamp.json");
    assert_eq!(ts2["signed"]["version"], 2);
    assert_eq!(
        ts2["signed"]["meta"]["snapshot.json"],
        ts1["signed"]["meta"]["snapshot.json"]
    );
    assert!(expires(&ts2) >= expires(&ts1));

    let out = r.ok(&["refresh", "--snapshot"]);
    assert!(out.contains("published snapshot v2, timestamp v3"), "{out}");
    let third = r.tree_metadata();
    let added: Vec<&String> = third.keys().filter(|k| !after.contains_key(*k)).collect();
    assert_eq!(added, vec!["2.snapshot.json"]);
    for (k, v) in &after {
        assert_eq!(k == "timestamp.json", third[k] != *v, "{k}");
    }
    let ts3 = r.tree_json("metadata/timestamp.json");
    assert_eq!(ts3["signed"]["meta"]["snapshot.json"]["version"], 2);
    r.verify_ok();
}

#[test]
fn rotating_the_timestamp_key_replaces_its_signer_and_the_old_key_is_no_longer_trusted() {
    let r = Repo::published();
    let old = r.role_keyids("timestamp");
    assert_eq!(old.len(), 1);
    r.ok(&[
        "rotate",
        "timestamp",
        "--generate",
        "1",
        "--remove-key",
        &old[0],
    ]);
    let new = r.role_keyids("timestamp");
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
    let out = r.ok(&["publish"]);
    assert!(out.contains("root v2"), "{out}");
    let ts = r.tree_json("metadata/timestamp.json");
    assert_eq!(
        signers(&ts),
        new,
        "timestamp must be signed by the new key only"
    );
    assert!(r.dir.join(format!("keys/{}.pem", old[0])).exists());
    r.verify_ok();

    // A timestamp signed with the old key alone is rejected by the rotated root.
    let copy = r.scratch("tampered-tree");
    copy_dir(&r.tree(), &copy);
    let ts_path = copy.join("metadata/timestamp.json");
    let sig_path = r.scratch("old.sig.json");
    expect_ok({
        let mut c = petrel();
        c.args(["sign", "--signing-key"])
            .arg(r.dir.join(format!("keys/{}.pem", old[0])))
            .arg(&ts_path)
            .arg("-o")
            .arg(&sig_path);
        c
    });
    let mut v = read_json(&ts_path);
    v["signatures"] = serde_json::json!([read_json(&sig_path)]);
    std::fs::write(&ts_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = run({
        let mut c = petrel();
        c.args(["verify", "--tree", path(&copy)]);
        c
    });
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("metadata/timestamp.json: signatures"),
        "{text}"
    );
}

#[test]
fn rotating_root_writes_the_next_root_signed_by_old_and_new_key_thresholds() {
    let r = Repo::init(&["--keys", "root=2", "--threshold", "root=2"]);
    r.ok(&["publish"]);
    let old = r.role_keyids("root");
    r.ok(&["rotate", "root", "--generate", "2", "--remove-key", &old[0]]);
    let status = r.ok(&["status"]);
    assert!(
        status.contains("needs 2 of previous root v1 keys and 2 of new root keys"),
        "{status}"
    );
    let new = r.role_keyids("root");
    assert_eq!(new.len(), 3);
    assert!(!new.contains(&old[0]) && new.contains(&old[1]));
    r.ok(&["publish"]);
    let v2 = std::fs::read(r.tree().join("metadata/2.root.json")).unwrap();
    assert_eq!(
        std::fs::read(r.tree().join("metadata/root.json")).unwrap(),
        v2,
        "root.json is the newest root"
    );
    let v2: Value = serde_json::from_slice(&v2).unwrap();
    assert_eq!(v2["signed"]["version"], 2);
    let s = signers(&v2);
    assert!(
        s.contains(&old[0]),
        "the removed old key signs the transition"
    );
    for k in &new {
        assert!(s.contains(k), "new key {k} signs");
    }
    let out = r.verify_ok();
    assert!(out.contains("root v2"), "{out}");

    // Without the old keys' threshold, verify rejects the transition...
    let check = |drop: &[&String], expect: &str| {
        let copy = r.scratch(&format!("tree-{}", drop.len()));
        copy_dir(&r.tree(), &copy);
        let p = copy.join("metadata/2.root.json");
        let mut v = read_json(&p);
        v["signatures"]
            .as_array_mut()
            .unwrap()
            .retain(|s| !drop.iter().any(|d| s["keyid"] == d.as_str()));
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let o = run({
            let mut c = petrel();
            c.args(["verify", "--tree", path(&copy)]);
            c
        });
        assert_eq!(o.status.code(), Some(1), "{drop:?}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(expect), "{drop:?}: {text}");
    };
    check(&[&old[0]], "metadata/2.root.json: signatures");
    // ...and without the new keys' threshold too.
    let added: Vec<&String> = new.iter().filter(|k| !old.contains(k)).collect();
    assert_eq!(added.len(), 2);
    check(&added, "not signed by its own root keys");
}

#[test]
fn offline_threshold_signing_with_a_key_kept_apart_completes_the_publish() {
    let r = Repo::init(&["--keys", "root=2", "--threshold", "root=2"]);
    let ids = r.role_keyids("root");
    let offline = r.scratch("offline");
    std::fs::create_dir_all(&offline).unwrap();
    let away = offline.join(format!("{}.pem", ids[1]));
    std::fs::rename(r.dir.join(format!("keys/{}.pem", ids[1])), &away).unwrap();

    let before = r.snapshot();
    let err = r.fail(&["publish"]);
    assert!(
        err.contains("role \"root\"")
            && err.contains("threshold not met")
            && err.contains(&ids[1][..8]),
        "{err}"
    );
    assert_same(&before, &r.snapshot(), "publish below the root threshold");
    assert!(!r.tree().exists());

    let unsigned = r.scratch("root-v1.json");
    r.ok(&["export", "root", "-o", path(&unsigned)]);
    let sig = r.scratch("root-v1.sig.json");
    let out = expect_ok({
        let mut c = petrel();
        c.args(["sign", "--signing-key", path(&away), path(&unsigned)])
            .args(["-o", path(&sig)]);
        c
    });
    assert!(out.contains(&ids[1]), "{out}");
    let out = r.ok(&["import-signature", "root", path(&sig)]);
    assert!(out.contains("imported 1 signature(s)"), "{out}");
    let status = r.ok(&["status"]);
    assert!(
        status.contains("root v1: 1 valid of 1 signature(s); needs 2 of new root keys"),
        "{status}"
    );
    r.ok(&["publish"]);
    let root = r.tree_json("metadata/1.root.json");
    let mut want = ids.clone();
    want.sort();
    assert_eq!(signers(&root), want);
    r.verify_ok();
}

#[test]
fn status_lists_staged_roles_with_signatures_against_thresholds() {
    let r = Repo::init(&[]);
    let out = r.ok(&["status"]);
    assert!(
        out.contains("root v1: 0 valid of 0 signature(s); needs 1 of new root keys"),
        "{out}"
    );
    assert!(
        out.contains("targets v1: 0 valid of 0 signature(s); needs 1 of targets keys"),
        "{out}"
    );
    r.ok(&["publish"]);
    assert_eq!(r.ok(&["status"]).trim(), "nothing staged");
    let f = r.src("f", b"f");
    r.ok(&["add", path(&f)]);
    let out = r.ok(&["status"]);
    assert!(out.contains("targets v2:"), "{out}");
    assert!(!out.contains("root"), "{out}");
    assert!(r.ok(&["publish"]).contains("targets v2"));
    assert!(r.ok(&["publish"]).contains("nothing staged"));
}

#[test]
fn key_generate_and_key_public_agree_on_the_tuf_key_id() {
    let tmp = tempfile::tempdir().unwrap();
    for (kt, keytype) in [("ed25519", "ed25519"), ("ecdsa", "ecdsa")] {
        let k = tmp.path().join(format!("{kt}.pem"));
        let out = expect_ok({
            let mut c = petrel();
            c.args(["key", "generate", "--type", kt, "-o", path(&k)]);
            c
        });
        let gen_id = out
            .split_whitespace()
            .nth(2)
            .expect("generated key <id> in <file>")
            .to_string();
        let m = std::fs::metadata(&k).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(&k)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        let o = run({
            let mut c = petrel();
            c.args(["key", "public", path(&k)]);
            c
        });
        assert!(o.status.success());
        let key: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(key["keytype"], keytype);
        // The key id is SHA-256 of the key's canonical JSON (computed independently:
        // sorted keys, no whitespace, strings escape only `"` and `\`).
        let q = |v: &Value| {
            let s = v.as_str().expect("string");
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        };
        let canonical = format!(
            r#"{{"keytype":{},"keyval":{{"public":{}}},"scheme":{}}}"#,
            q(&key["keytype"]),
            q(&key["keyval"]["public"]),
            q(&key["scheme"])
        );
        assert_eq!(sha256_hex(canonical.as_bytes()), gen_id);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(&format!("key id: {gen_id}")), "{stderr}");
        // Never overwrites a key.
        let before = std::fs::read(&k).unwrap();
        let err = expect_fail({
            let mut c = petrel();
            c.args(["key", "generate", "-o", path(&k)]);
            c
        });
        assert!(err.contains("refusing to overwrite a key"), "{err}");
        assert_eq!(std::fs::read(&k).unwrap(), before);
    }
}

#[test]
fn petrel_repo_and_petrel_keys_dir_environment_variables_select_workspace_and_keys() {
    let r = Repo::init(&[]);
    let keys = r.scratch("vault");
    std::fs::rename(r.dir.join("keys"), &keys).unwrap();
    std::fs::create_dir(r.dir.join("keys")).unwrap();
    let f = r.src("f.bin", b"f");
    let elsewhere = r.scratch("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let env_cmd = |args: &[&str], keys_dir: bool| {
        let mut c = petrel();
        c.current_dir(&elsewhere)
            .env("PETREL_REPO", &r.dir)
            .args(args);
        if keys_dir {
            c.env("PETREL_KEYS_DIR", &keys);
        }
        c
    };
    expect_ok(env_cmd(&["add", path(&f), "--prefix", "apps/e/f/1"], false));
    // Without the keys directory the workspace's (now empty) keys/ cannot sign.
    let err = expect_fail(env_cmd(&["publish"], false));
    assert!(err.contains("threshold not met"), "{err}");
    expect_ok(env_cmd(&["publish"], true));
    let out = expect_ok(env_cmd(&["verify"], false));
    assert!(out.contains("ok: clients will accept this tree"), "{out}");
    assert!(r.tree().join("metadata/timestamp.json").exists());
    assert!(!elsewhere.join("tree").exists());
}

#[test]
fn verify_with_an_explicit_trusted_root_accepts_its_own_tree_and_rejects_another() {
    let r = Repo::published();
    let root = r.tree().join("metadata/1.root.json");
    r.ok(&["verify", "--root", path(&root)]);
    let stranger = Repo::published();
    let o = run(stranger.cmd(&["verify", "--root", path(&root)]));
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("signatures"), "{text}");
}

#[test]
fn usage_errors_exit_with_code_2() {
    let o = run({
        let mut c = petrel();
        c.args(["publish", "--no-such-flag"]);
        c
    });
    assert_eq!(o.status.code(), Some(2));
    let o = run({
        let mut c = petrel();
        c.args(["delegate", "--to", "x", "--paths", "a/*", "--bins", "4"]);
        c
    });
    assert_eq!(o.status.code(), Some(2), "--paths and --bins conflict");
}

#[test]
fn every_command_has_help_with_an_example() {
    let commands: &[&[&str]] = &[
        &[],
        &["init"],
        &["add"],
        &["remove"],
        &["delegate"],
        &["publish"],
        &["refresh"],
        &["rotate"],
        &["export"],
        &["sign"],
        &["import-signature"],
        &["status"],
        &["verify"],
        &["fixture"],
        &["key", "generate"],
        &["key", "public"],
        &["group"],
        &["group", "set"],
        &["assign"],
        &["campaign"],
        &["campaign", "create"],
        &["campaign", "update"],
        &["campaign", "halt"],
        &["campaign", "resume"],
        &["campaign", "cancel"],
        &["campaign", "list"],
        &["campaign", "show"],
    ];
    for cmd in commands {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_petrel-repo"))
            .args(*cmd)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd:?} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example"),
            "{cmd:?} --help has no example:\n{text}"
        );
    }
}

#[test]
fn published_tree_is_world_readable_and_private_keys_are_not() {
    use std::os::unix::fs::PermissionsExt;
    let r = Repo::init(&[]);
    let a = r.src("a.bin", b"aaaa");
    r.ok(&["add", path(&a), "--prefix", "apps/x/y/1.0"]);
    r.ok(&["publish"]);
    let mut files = 0;
    for e in walkdir::WalkDir::new(r.tree()) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode & 0o044,
                0o044,
                "{} is not readable by the web server: {mode:o}",
                e.path().display()
            );
            files += 1;
        }
    }
    assert!(files > 5);
    for e in std::fs::read_dir(r.dir.join("keys")).unwrap() {
        let p = e.unwrap().path();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
    }
}

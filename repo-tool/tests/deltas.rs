//! `petrel-repo delta`: deltas between artifact versions are added as
//! `deltas/<new sha256>/<old sha256>.zst` with custom metadata a device can check, they turn
//! the old bytes into exactly the new ones, useless deltas are skipped, and the published
//! tree verifies.

mod common;

use common::*;
use petrel_client::delta::{self, DeltaMeta};
use petrel_client::manifest::sha256_hex;

/// Pseudo-random bytes (incompressible on their own).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Version 1.1: version 1.0 with a few local edits.
fn edited(old: &[u8]) -> Vec<u8> {
    let mut new = old.to_vec();
    new[1000..1064].copy_from_slice(&noise(7, 64));
    new.splice(20_000..20_000, noise(8, 500));
    new
}

/// A repository with the recommended `deltas` role and two versions of an app.
fn repo_with(old: &[u8], new: &[u8]) -> Repo {
    let r = Repo::init(&[]);
    r.ok(&[
        "delegate",
        "--to",
        "deltas",
        "--terminating",
        "--paths",
        "deltas/*",
        "deltas/*/*",
    ]);
    let a = r.src("1.0/app.bin", old);
    let b = r.src("1.1/app.bin", new);
    r.ok(&["add", path(&a), "--prefix", "apps/acme/app/1.0"]);
    r.ok(&["add", path(&b), "--prefix", "apps/acme/app/1.1"]);
    r
}

/// The published file of target `name` (consistent snapshots: `<dir>/<sha256>.<file>`).
fn published_target(r: &Repo, name: &str, sha256: &str) -> Vec<u8> {
    let (dir, file) = name.rsplit_once('/').expect("a directory");
    let p = r
        .tree()
        .join("targets")
        .join(dir)
        .join(format!("{sha256}.{file}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_delta_is_listed_under_both_hashes_with_its_metadata_and_rebuilds_the_new_bytes() {
    let old = noise(1, 60_000);
    let new = edited(&old);
    let r = repo_with(&old, &new);
    let out = r.ok(&[
        "delta",
        "--from",
        "apps/acme/app/1.0/app.bin",
        "--to",
        "apps/acme/app/1.1/app.bin",
    ]);
    let name = delta::target_path(&sha256_hex(&new), &sha256_hex(&old));
    assert!(out.contains(&name) && out.contains("role deltas"), "{out}");
    r.ok(&["publish"]);
    r.verify_ok();

    let role = r.json("metadata/deltas.json");
    let t = &role["signed"]["targets"][&name];
    assert!(t.is_object(), "{name} is not listed by role deltas: {role}");
    let meta = DeltaMeta::from_custom(t.get("custom")).expect("delta metadata");
    assert_eq!(
        meta,
        DeltaMeta {
            format: "zstd-patch".into(),
            base_sha256: sha256_hex(&old),
            base_length: old.len() as u64,
            result_sha256: sha256_hex(&new),
            result_length: new.len() as u64,
        }
    );
    meta.check_path(&name).expect("name and metadata agree");

    let sha = t["hashes"]["sha256"].as_str().expect("sha256");
    let bytes = published_target(&r, &name, sha);
    assert_eq!(bytes.len() as u64, t["length"].as_u64().unwrap());
    println!(
        "delta {} bytes for a {}-byte artifact",
        bytes.len(),
        new.len()
    );
    assert!(
        bytes.len() * 10 < new.len(),
        "a delta of a few edits is small"
    );
    let mut rebuilt = Vec::new();
    delta::apply(&old, &bytes[..], new.len() as u64, &mut rebuilt).expect("applies");
    assert_eq!(rebuilt, new, "the delta turns the old bytes into the new");
}

#[test]
fn a_delta_not_smaller_than_the_artifact_is_skipped_and_nothing_is_added() {
    // Unrelated, incompressible versions: no delta can beat the artifact itself.
    let old = noise(1, 400);
    let new = noise(2, 400);
    let r = repo_with(&old, &new);
    let out = r.ok(&[
        "delta",
        "--from",
        "apps/acme/app/1.0/app.bin",
        "--to",
        "apps/acme/app/1.1/app.bin",
    ]);
    assert!(
        out.contains("skipped") && out.contains("not smaller"),
        "{out}"
    );
    r.ok(&["publish"]);
    let role = r.json("metadata/deltas.json");
    assert_eq!(
        role["signed"]["targets"].as_object().map(|m| m.len()),
        Some(0),
        "{role}"
    );
    r.verify_ok();
}

#[test]
fn a_delta_between_identical_bytes_or_from_an_unlisted_target_is_refused() {
    let old = noise(1, 5000);
    let r = repo_with(&old, &old);
    let err = r.fail(&[
        "delta",
        "--from",
        "apps/acme/app/1.0/app.bin",
        "--to",
        "apps/acme/app/1.1/app.bin",
    ]);
    assert!(err.contains("same bytes"), "{err}");
    let err = r.fail(&[
        "delta",
        "--from",
        "apps/acme/app/0.9/app.bin",
        "--to",
        "apps/acme/app/1.1/app.bin",
    ]);
    assert!(
        err.contains("apps/acme/app/0.9/app.bin") && err.contains("no role"),
        "{err}"
    );
    let staged = r.json("staged/deltas.json");
    assert_eq!(
        staged["signed"]["targets"].as_object().map(|m| m.len()),
        Some(0),
        "nothing was added: {staged}"
    );
}

#[test]
fn several_bases_each_get_their_own_delta_in_the_chosen_role() {
    let v1 = noise(1, 30_000);
    let v2 = edited(&v1);
    let mut v3 = v2.clone();
    v3[5000..5010].copy_from_slice(b"0123456789");
    let r = repo_with(&v1, &v2);
    let c = r.src("1.2/app.bin", &v3);
    r.ok(&["add", path(&c), "--prefix", "apps/acme/app/1.2"]);
    r.ok(&[
        "delta",
        "--from",
        "apps/acme/app/1.0/app.bin",
        "--from",
        "apps/acme/app/1.1/app.bin",
        "--to",
        "apps/acme/app/1.2/app.bin",
        "--role",
        "targets",
    ]);
    r.ok(&["publish"]);
    r.verify_ok();
    let top = r.json("metadata/targets.json");
    for base in [&v1, &v2] {
        let name = delta::target_path(&sha256_hex(&v3), &sha256_hex(base));
        assert!(
            top["signed"]["targets"][&name].is_object(),
            "{name} not in role targets"
        );
    }
}

/// `pack-tree` writes the container `add` stores for a directory, and `delta-file` of two
/// such containers is the tree delta `delta-file` builds from the two directories, byte
/// for byte (the base's own frames are not part of a tree delta); a container and a plain
/// file get a plain file delta.
#[test]
fn two_packed_trees_get_the_same_tree_delta_as_their_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    for d in [&old, &new] {
        std::fs::create_dir_all(d.join("lib")).expect("mkdir");
        std::fs::write(d.join("README"), b"the same in both\n").expect("write");
        std::os::unix::fs::symlink("README", d.join("lib/LINK")).expect("symlink");
    }
    let lib = noise(11, 300_000);
    std::fs::write(old.join("lib/libfoo.so.1.2"), &lib).expect("write");
    std::fs::write(new.join("lib/libfoo.so.1.3"), edited(&lib)).expect("write");
    std::fs::write(old.join("gone.txt"), b"removed\n").expect("write");
    std::fs::write(new.join("added.bin"), noise(12, 5000)).expect("write");
    let arg = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let run_ok = |args: &[String]| -> serde_json::Value {
        let mut c = petrel();
        c.args(args);
        let out = expect_ok(c);
        serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON")
    };
    let (po, pn) = (dir.path().join("old.ptree"), dir.path().join("new.ptree"));
    let packed = run_ok(&["pack-tree".into(), arg(&old), "-o".into(), arg(&po)]);
    assert_eq!(packed["files"], 3, "{packed}");
    assert_eq!(packed["length"], std::fs::metadata(&po).expect("po").len());
    run_ok(&["pack-tree".into(), arg(&new), "-o".into(), arg(&pn)]);
    assert!(petrel_repo::trees::is_tree(
        &std::fs::read(&pn).expect("pn")
    ));
    let (dd, dc) = (
        dir.path().join("dirs.delta"),
        dir.path().join("packed.delta"),
    );
    let from_dirs = run_ok(&[
        "delta-file".into(),
        arg(&old),
        arg(&new),
        "-o".into(),
        arg(&dd),
    ]);
    let from_packed = run_ok(&[
        "delta-file".into(),
        arg(&po),
        arg(&pn),
        "-o".into(),
        arg(&dc),
    ]);
    for line in [&from_dirs, &from_packed] {
        assert_eq!(line["engine"], "petrel-tree", "{line}");
        assert_eq!(line["renamed"], 1, "libfoo.so.1.2 -> 1.3: {line}");
        assert_eq!(line["added"], 1, "{line}");
        assert_eq!(
            line["removed"], 2,
            "gone.txt and the old libfoo path: {line}"
        );
    }
    assert_eq!(
        std::fs::read(&dd).expect("dd"),
        std::fs::read(&dc).expect("dc"),
        "the same tree delta from the directories and from their containers"
    );
    // One container and one plain file: no tree delta.
    let plain = dir.path().join("plain.bin");
    std::fs::write(&plain, noise(13, 4000)).expect("write");
    let line = run_ok(&[
        "delta-file".into(),
        arg(&po),
        arg(&plain),
        "-o".into(),
        arg(&dir.path().join("x.delta")),
    ]);
    assert_ne!(line["engine"], "petrel-tree", "{line}");
}

//! `petrel-repo verify` catches a damaged tree: each problem gets a specific message on
//! stdout and the command exits non-zero.

mod common;

use common::*;

/// A published repository with a delegated role, hashed bins below it, and targets in each.
fn repo() -> Repo {
    let r = Repo::init(&[]);
    r.ok(&["delegate", "--to", "acme", "--paths", "apps/acme/*"]);
    r.ok(&["delegate", "--to", "assign", "--paths", "assign/*"]);
    r.ok(&["delegate", "--from", "assign", "--to", "ab", "--bins", "4"]);
    let f = r.src("fw.bin", b"firmware\n");
    r.ok(&[
        "add",
        path(&f),
        "--name",
        "apps/acme/fw.bin",
        "--role",
        "acme",
    ]);
    let g = r.src("g.json", b"{}");
    r.ok(&[
        "add",
        path(&g),
        "--name",
        "assign/dev-7.json",
        "--role",
        "assign",
    ]);
    let t = r.src("top.txt", b"top");
    r.ok(&["add", path(&t), "--prefix", "docs"]);
    r.ok(&["publish"]);
    r.verify_ok();
    r
}

/// Runs verify, expects exit code 1 and every needle on stdout; returns stdout.
fn problems(r: &Repo, needles: &[&str]) -> String {
    let o = run(r.cmd(&["verify"]));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "verify should fail:\n{out}\n{err}"
    );
    assert!(err.contains("problem(s) found in"), "{err}");
    assert!(!out.contains("ok: clients will accept"), "{out}");
    for n in needles {
        assert!(
            out.contains(n),
            "verify output should mention {n:?}:\n{out}"
        );
    }
    out
}

#[test]
fn verify_reports_a_tampered_target_file_with_its_length_and_hashes() {
    let r = repo();
    let rel = consistent_target_path("apps/acme/fw.bin", b"firmware\n");
    let p = r.tree().join(&rel);
    // Replace (not edit in place: the tree file may share its inode with the store).
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, b"FIRMWARE\n").unwrap();
    let out = problems(&r, &[&format!("{rel}: sha256 is "), "metadata says"]);
    assert!(!out.contains("bytes, metadata says"), "same length: {out}");
    std::fs::write(&p, b"firmware, but longer\n").unwrap();
    problems(&r, &[&format!("{rel}: 21 bytes, metadata says 9")]);
    std::fs::remove_file(&p).unwrap();
    problems(&r, &[&format!("{rel}: No such file")]);
}

#[test]
fn verify_reports_a_tampered_signature_on_metadata() {
    let r = repo();
    for file in ["metadata/timestamp.json", "metadata/1.acme.json"] {
        let p = r.tree().join(file);
        let original = std::fs::read(&p).unwrap();
        let mut v = read_json(&p);
        let sig = v["signatures"][0]["sig"].as_str().unwrap().to_string();
        let flipped = format!(
            "{}{}",
            if sig.starts_with('0') { '1' } else { '0' },
            &sig[1..]
        );
        v["signatures"][0]["sig"] = flipped.into();
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        problems(&r, &[&format!("{file}: signatures:"), "does not verify"]);
        std::fs::write(&p, original).unwrap();
        r.verify_ok();
    }
    // Changing signed content breaks both the signature and the snapshot's hash.
    let p = r.tree().join("metadata/1.acme.json");
    let mut v = read_json(&p);
    v["signed"]["targets"]["apps/acme/fw.bin"]["length"] = 10.into();
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    problems(
        &r,
        &[
            "metadata/1.acme.json: signatures:",
            "metadata/1.acme.json: sha256 is",
        ],
    );
}

#[test]
fn verify_reports_a_deleted_delegated_role_file_without_blaming_its_children() {
    let r = repo();
    std::fs::remove_file(r.tree().join("metadata/1.assign.json")).unwrap();
    let out = problems(&r, &["metadata/1.assign.json: No such file"]);
    assert!(
        !out.contains("no role delegates"),
        "the bins below the missing role are not orphans: {out}"
    );
    // A missing bin is reported by name.
    let r = repo();
    let bin = bin_of("assign/dev-7.json", "ab", 2);
    std::fs::remove_file(r.tree().join(format!("metadata/1.{bin}.json"))).unwrap();
    problems(&r, &[&format!("metadata/1.{bin}.json: No such file")]);
}

#[test]
fn verify_reports_an_expired_timestamp() {
    let r = Repo::init(&["--expiry", "timestamp=1s"]);
    r.ok(&["publish"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    problems(&r, &["metadata/timestamp.json: timestamp v1 expired at"]);
    // `refresh` is the cure (with a sane expiry in the settings).
    let settings = r.dir.join("petrel-repo.toml");
    let text = std::fs::read_to_string(&settings).unwrap();
    std::fs::write(
        &settings,
        text.replace("timestamp = \"1s\"", "timestamp = \"1d\""),
    )
    .unwrap();
    r.ok(&["refresh"]);
    r.verify_ok();
}

#[test]
fn verify_reports_a_snapshot_that_does_not_match_the_timestamp() {
    let r = repo();
    let p = r.tree().join("metadata/1.snapshot.json");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.push(b'\n');
    std::fs::write(&p, bytes).unwrap();
    problems(&r, &["metadata/1.snapshot.json: length"]);
}

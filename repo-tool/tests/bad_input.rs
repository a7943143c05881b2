//! Bad input gets a clear error naming the file, role or key, and loses nothing: the
//! workspace (published tree, current and staged metadata, content store, keys) is left
//! byte-for-byte as it was.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// A published repository with one more target staged, so `publish` has work to do.
fn repo_with_staged_change() -> Repo {
    let r = Repo::published();
    let g = r.src("g.txt", b"second\n");
    r.ok(&["add", path(&g), "--prefix", "apps/acme/hello/1.1"]);
    r
}

/// Runs `args`, expects failure whose message contains every one of `needles`, and checks
/// the workspace did not change. Returns the error text.
fn refused(r: &Repo, args: &[&str], needles: &[&str]) -> String {
    let before = r.snapshot();
    let err = r.fail(args);
    for n in needles {
        assert!(
            err.contains(n),
            "{args:?}: error should mention {n:?}: {err}"
        );
    }
    assert_same(&before, &r.snapshot(), &format!("{args:?}"));
    err
}

#[test]
fn unreadable_key_files_fail_naming_the_file_and_change_nothing() {
    let r = repo_with_staged_change();
    let missing = r.scratch("no-such-key.pem");
    refused(
        &r,
        &["publish", "--key", path(&missing)],
        &[path(&missing), "No such file"],
    );
    let binary = r.scratch("key.der");
    std::fs::write(&binary, [0x30u8, 0x82, 0x01, 0xff, 0xfe, 0x00, 0x9c]).unwrap();
    refused(
        &r,
        &["publish", "--key", path(&binary)],
        &[path(&binary), "it is binary", "openssl pkey -inform DER"],
    );
    let dir = r.scratch("a-directory.pem");
    std::fs::create_dir_all(&dir).unwrap();
    refused(
        &r,
        &["publish", "--key", path(&dir)],
        &[path(&dir), "Is a directory"],
    );
    // A key in the keys directory that cannot be read.
    let tid = &r.role_keyids("targets")[0];
    let kp = r.dir.join(format!("keys/{tid}.pem"));
    std::fs::rename(&kp, r.scratch("targets.pem")).unwrap();
    std::fs::create_dir(&kp).unwrap();
    refused(&r, &["publish"], &[path(&kp)]);
    std::fs::remove_dir(&kp).unwrap();
    std::fs::rename(r.scratch("targets.pem"), &kp).unwrap();
    // Permissions (meaningless when the tests run as root, who reads anything).
    let locked = r.scratch("locked.pem");
    std::fs::copy(&kp, &locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&locked).is_err() {
        refused(
            &r,
            &["publish", "--key", path(&locked)],
            &[path(&locked), "Permission denied"],
        );
    }
    // `sign` needs no workspace, and names the key too.
    let err = expect_fail({
        let mut c = petrel();
        c.args(["sign", "--signing-key", path(&missing)])
            .arg(r.tree().join("metadata/1.targets.json"));
        c
    });
    assert!(err.contains(path(&missing)), "{err}");
    // With the key back, the same publish succeeds.
    r.ok(&["publish"]);
    r.verify_ok();
}

#[test]
fn keys_of_the_wrong_type_fail_naming_the_file_and_change_nothing() {
    let r = repo_with_staged_change();
    let cases: [(&str, String, &str); 4] = [
        ("garbage.pem", "this is not a key\n".into(), "not PEM"),
        (
            "pkcs1.pem",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n".into(),
            "PKCS#8",
        ),
        (
            "public.pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
            "PUBLIC KEY",
        ),
        (
            "junk-der.pem",
            "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n".into(),
            "unusable private key",
        ),
    ];
    for (file, text, reason) in &cases {
        let p = r.scratch(file);
        std::fs::write(&p, text).unwrap();
        let err = refused(&r, &["publish", "--key", path(&p)], &[path(&p), reason]);
        assert!(err.contains(&format!("key {}", p.display())), "{err}");
        let err = expect_fail({
            let mut c = petrel();
            c.args(["sign", "--signing-key", path(&p)])
                .arg(r.tree().join("metadata/1.targets.json"));
            c
        });
        assert!(err.contains(path(&p)) && err.contains(reason), "{err}");
    }
    // keys/<id>.pem holding a different (valid) key than its name says.
    let tid = r.role_keyids("targets")[0].clone();
    let kp = r.dir.join(format!("keys/{tid}.pem"));
    let good = std::fs::read(&kp).unwrap();
    let other = r.scratch("other.pem");
    expect_ok({
        let mut c = petrel();
        c.args(["key", "generate", "-o", path(&other)]);
        c
    });
    std::fs::copy(&other, &kp).unwrap();
    refused(
        &r,
        &["publish"],
        &[path(&kp), &format!("named for key {tid} but holds key")],
    );
    std::fs::write(&kp, good).unwrap();
    r.ok(&["publish"]);
    r.verify_ok();
}

#[test]
fn signatures_from_unauthorized_keys_or_for_other_bytes_are_refused_on_import() {
    let r = repo_with_staged_change();
    let exported = r.scratch("targets.unsigned.json");
    r.ok(&["export", "targets", "-o", path(&exported)]);
    let foreign = r.scratch("foreign.pem");
    let out = expect_ok({
        let mut c = petrel();
        c.args(["key", "generate", "-o", path(&foreign)]);
        c
    });
    let foreign_id = out.split_whitespace().nth(2).unwrap().to_string();
    let sign = |key: &Path, file: &Path, out: &Path| {
        expect_ok({
            let mut c = petrel();
            c.args([
                "sign",
                "--signing-key",
                path(key),
                path(file),
                "-o",
                path(out),
            ]);
            c
        })
    };
    let foreign_sig = r.scratch("foreign.sig.json");
    sign(&foreign, &exported, &foreign_sig);
    refused(
        &r,
        &["import-signature", "targets", path(&foreign_sig)],
        &[
            "role \"targets\"",
            &format!("key {foreign_id} is not authorized to sign it"),
        ],
    );
    // An authorized key's signature over bytes that are no longer staged.
    let h = r.src("h.txt", b"third\n");
    r.ok(&["add", path(&h), "--prefix", "apps/acme/hello/1.2"]);
    let tid = r.role_keyids("targets")[0].clone();
    let stale_sig = r.scratch("stale.sig.json");
    sign(
        &r.dir.join(format!("keys/{tid}.pem")),
        &exported,
        &stale_sig,
    );
    refused(
        &r,
        &["import-signature", "targets", path(&stale_sig)],
        &[
            "role \"targets\"",
            &format!("signature by key {tid} does not match the staged metadata"),
        ],
    );
    // Online roles and roles without staged changes.
    refused(
        &r,
        &["import-signature", "timestamp", path(&stale_sig)],
        &["role \"timestamp\"", "signed at publish time"],
    );
    refused(
        &r,
        &["import-signature", "root", path(&stale_sig)],
        &["role \"root\"", "has no staged changes"],
    );
    let not_sig = r.src("not-a-sig.json", b"[1,2,3]");
    refused(
        &r,
        &["import-signature", "targets", path(&not_sig)],
        &[path(&not_sig), "not a signature file"],
    );
}

#[test]
fn threshold_not_met_fails_publish_naming_role_and_missing_key_and_changes_nothing() {
    let r = Repo::init(&[]);
    let partner = r.scratch("partner.pem");
    expect_ok({
        let mut c = petrel();
        c.args(["key", "generate", "-o", path(&partner)]);
        c
    });
    r.ok(&[
        "delegate",
        "--to",
        "partner",
        "--paths",
        "apps/partner/*",
        "--public-key",
        path(&partner),
    ]);
    r.ok(&["delegate", "--to", "acme", "--paths", "apps/acme/*"]);
    r.ok(&["publish", "--key", path(&partner)]);
    // Changes to roles signed before and after the partner role, and to the partner role.
    for (name, role) in [
        ("apps/acme/a.bin", "acme"),
        ("apps/partner/p.bin", "partner"),
        ("docs/t.txt", "targets"),
    ] {
        let f = r.src(name, name.as_bytes());
        r.ok(&["add", path(&f), "--name", name, "--role", role]);
    }
    let partner_id = r.json("metadata/targets.json")["signed"]["delegations"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "partner")
        .unwrap()["keyids"][0]
        .as_str()
        .unwrap()
        .to_string();
    refused(
        &r,
        &["publish"],
        &[
            "role \"partner\"",
            "threshold not met",
            &partner_id[..8],
            "import-signature partner",
        ],
    );
    let out = r.ok(&["publish", "--key", path(&partner)]);
    assert!(out.contains("acme v2, partner v2, targets v2"), "{out}");
    r.verify_ok();
}

#[test]
fn duplicate_target_names_are_refused_before_anything_changes() {
    let r = Repo::published();
    r.src("d1/x.bin", b"one");
    r.src("d2/x.bin", b"two");
    let d1 = r.tmp.path().join("src/d1");
    let d2 = r.tmp.path().join("src/d2");
    refused(
        &r,
        &["add", path(&d1), path(&d2), "--prefix", "apps/p/q/1"],
        &["target \"apps/p/q/1/x.bin\"", "duplicate target name"],
    );
    refused(
        &r,
        &[
            "add",
            path(&d1.join("x.bin")),
            path(&d2.join("x.bin")),
            "--prefix",
            "apps/p/q/1",
        ],
        &["target \"apps/p/q/1/x.bin\"", "duplicate target name"],
    );
}

#[test]
fn forbidden_target_names_are_refused_and_change_nothing() {
    let r = Repo::published();
    let f = r.src("f.bin", b"f");
    for (name, reason) in [
        ("../escape", "\"..\" segment"),
        ("apps/../../etc/passwd", "\"..\" segment"),
        ("/etc/passwd", "absolute target path"),
        ("apps\\win\\x", "backslash"),
        ("apps//x", "empty path segment"),
        ("apps/x/", "empty path segment"),
        ("apps/./x", "\".\" segment"),
        ("C:x", "drive-letter"),
        ("apps/new\nline", "control character"),
    ] {
        refused(
            &r,
            &["add", path(&f), "--name", name],
            &[&format!("target {name:?}"), reason],
        );
    }
    for (prefix, reason) in [
        ("../up", "\"..\" segment"),
        ("/abs", "absolute target path"),
    ] {
        refused(
            &r,
            &["add", path(&f), "--prefix", prefix],
            &[&format!("--prefix {prefix:?}"), reason],
        );
    }
    // A file name in a directory that is not a valid target name.
    r.src("winfiles/a\\b.txt", b"x");
    refused(
        &r,
        &[
            "add",
            path(&r.tmp.path().join("src/winfiles")),
            "--prefix",
            "apps/w/w/1",
        ],
        &["apps/w/w/1/a\\\\b.txt", "backslash"],
    );
    let dir = r.tmp.path().join("src/winfiles");
    refused(
        &r,
        &["add", path(&dir), "--name", "x"],
        &["--name needs exactly one file"],
    );
}

#[test]
fn symlinks_fifos_and_devices_are_refused_naming_the_file() {
    let r = Repo::published();
    r.src("withlink/ok.txt", b"ok");
    let link = r.tmp.path().join("src/withlink/passwd");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    refused(
        &r,
        &[
            "add",
            path(&r.tmp.path().join("src/withlink")),
            "--prefix",
            "apps/l/l/1",
        ],
        &[path(&link), "symbolic link"],
    );
    refused(&r, &["add", path(&link)], &[path(&link), "symbolic link"]);

    r.src("withfifo/ok.txt", b"ok");
    let fifo = r.tmp.path().join("src/withfifo/pipe");
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    refused(
        &r,
        &[
            "add",
            path(&r.tmp.path().join("src/withfifo")),
            "--prefix",
            "apps/f/f/1",
        ],
        &[path(&fifo), "not a regular file"],
    );
    refused(
        &r,
        &["add", path(&fifo)],
        &[path(&fifo), "not a regular file"],
    );
    refused(
        &r,
        &["add", "/dev/null", "--name", "null"],
        &["/dev/null", "not a regular file"],
    );
}

#[test]
fn targets_outside_what_a_role_is_trusted_for_are_refused() {
    let r = Repo::published();
    r.ok(&["delegate", "--to", "acme", "--paths", "apps/acme/*/*/*"]);
    r.ok(&[
        "delegate",
        "--from",
        "acme",
        "--to",
        "acme-sub",
        "--paths",
        "apps/*/x/1/*",
    ]);
    let f = r.src("f.bin", b"f");
    let outside = "outside what role \"acme\" is trusted for";
    refused(
        &r,
        &[
            "add",
            path(&f),
            "--name",
            "apps/other/x/1/f.bin",
            "--role",
            "acme",
        ],
        &["target \"apps/other/x/1/f.bin\"", outside],
    );
    // `*` does not match `/`.
    refused(
        &r,
        &[
            "add",
            path(&f),
            "--name",
            "apps/acme/x/1/deep/f.bin",
            "--role",
            "acme",
        ],
        &[outside],
    );
    // A nested role is limited by every delegation on its chain.
    refused(
        &r,
        &[
            "add",
            path(&f),
            "--name",
            "apps/other/x/1/f.bin",
            "--role",
            "acme-sub",
        ],
        &[outside],
    );
    r.ok(&[
        "add",
        path(&f),
        "--name",
        "apps/acme/x/1/f.bin",
        "--role",
        "acme-sub",
    ]);

    // Hash-prefix delegations.
    let inside = "apps/h/1/in.bin";
    let first_hex = &sha256_hex(inside.as_bytes())[..1];
    let outside_name = (0..64)
        .map(|i| format!("apps/h/1/out{i}.bin"))
        .find(|n| !sha256_hex(n.as_bytes()).starts_with(first_hex))
        .expect("some name hashes elsewhere");
    r.ok(&["delegate", "--to", "hp", "--hash-prefixes", first_hex]);
    refused(
        &r,
        &["add", path(&f), "--name", &outside_name, "--role", "hp"],
        &[
            "outside what role \"hp\" is trusted for",
            "path_hash_prefixes",
        ],
    );
    r.ok(&["add", path(&f), "--name", inside, "--role", "hp"]);

    // Hashed bins: a target can only be listed in the bin its path hash selects.
    r.ok(&["delegate", "--to", "assign", "--paths", "assign/*"]);
    r.ok(&["delegate", "--from", "assign", "--to", "ab", "--bins", "4"]);
    let name = "assign/device-1.json";
    let right = bin_of(name, "ab", 2);
    let wrong = if right == "ab-0" { "ab-1" } else { "ab-0" };
    refused(
        &r,
        &["add", path(&f), "--name", name, "--role", wrong],
        &[
            &format!("target {name:?}"),
            &format!("belongs in hashed bin {right:?}"),
        ],
    );
    r.ok(&["add", path(&f), "--name", name, "--role", &right]);
    r.ok(&["publish"]);
    r.verify_ok();
}

#[test]
fn unknown_roles_are_refused_and_change_nothing() {
    let r = Repo::published();
    let f = r.src("f.bin", b"f");
    refused(
        &r,
        &["add", path(&f), "--role", "nosuch"],
        &["role \"nosuch\"", "no such targets role"],
    );
    refused(
        &r,
        &[
            "delegate", "--from", "nosuch", "--to", "x", "--paths", "a/*",
        ],
        &["role \"nosuch\""],
    );
    refused(
        &r,
        &["rotate", "nosuch", "--generate", "1"],
        &["role \"nosuch\""],
    );
    refused(
        &r,
        &[
            "remove",
            "--role",
            "nosuch",
            "apps/acme/hello/1.0/hello.txt",
        ],
        &["role \"nosuch\""],
    );
    refused(
        &r,
        &["export", "targets"],
        &["role \"targets\"", "no staged changes"],
    );
}

/// `publish` with a file-size limit of `kib` KiB: writes past it fail with EFBIG (SIGXFSZ
/// is ignored), as on a full disk. Target files are copied, not hard-linked, so they count.
fn publish_with_file_size_limit(r: &Repo, kib: u32) -> Output {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {kib} || exit 99; exec \"$0\" --repo \"$1\" publish"
        ))
        .arg(BIN)
        .arg(&r.dir)
        .env(NO_HARDLINKS_ENV, "1")
        .env_remove("PETREL_REPO")
        .env_remove("PETREL_KEYS_DIR");
    run(c)
}

/// A disk that fills while `add` copies many files (a file-size limit, as above): the
/// add fails naming the file, and the workspace is exactly as before: no copy left under
/// a hash (created directly there, so it must be removed again), no temporary file, no
/// staged change. Without the limit the same add succeeds.
#[test]
fn disk_full_during_add_of_many_files_leaves_the_workspace_unchanged() {
    let r = Repo::published();
    let dir = r.scratch("src/many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..20 {
        std::fs::write(
            dir.join(format!("small-{i:02}.txt")),
            format!("small {i}\n"),
        )
        .unwrap();
    }
    let big: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let before = snapshot(&r.dir);
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64 || exit 99; exec \"$0\" --repo \"$1\" add \"$2\" --prefix many")
        .arg(BIN)
        .arg(&r.dir)
        .arg(&dir)
        .env_remove("PETREL_REPO")
        .env_remove("PETREL_KEYS_DIR");
    let o = run(c);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "add under ulimit: {err}");
    assert!(
        err.contains(&sha256_hex(&big)) && err.contains("File too large"),
        "the error names the copy that could not be written: {err}"
    );
    assert_same(&before, &snapshot(&r.dir), "workspace after the failed add");
    let out = r.ok(&["add", path(&dir), "--prefix", "many"]);
    assert!(out.contains("21 target(s) added"), "{out}");
    r.ok(&["publish"]);
    r.verify_ok();
}

/// A published repository with a small and a big (300 KiB) target staged; the small one
/// sorts first, so a 64 KiB limit fails the publish midway through the target files.
fn interrupted_by_full_disk() -> (Repo, Snapshot, String, String) {
    let r = Repo::published();
    let small = r.src("small.bin", b"small\n");
    let big_bytes: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    let big = r.src("big.bin", &big_bytes);
    r.ok(&["add", path(&small), "--prefix", "apps/a/small/1.0"]);
    r.ok(&["add", path(&big), "--prefix", "apps/b/big/1.0"]);
    let small_rel = consistent_target_path("apps/a/small/1.0/small.bin", b"small\n");
    let big_rel = consistent_target_path("apps/b/big/1.0/big.bin", &big_bytes);
    let tree_before = snapshot(&r.tree());
    let o = publish_with_file_size_limit(&r, 64);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "publish under ulimit: {err}");
    assert!(
        err.contains(&big_rel) && err.contains("File too large"),
        "the error names the file that could not be written: {err}"
    );
    // Midway: the small target was written, the big one was not, no temporary files.
    assert!(r.tree().join(&small_rel).exists());
    assert!(!r.tree().join(&big_rel).exists());
    let after = snapshot(&r.tree());
    assert!(
        after
            .keys()
            .all(|p| !p.to_string_lossy().contains(".petrel-")),
        "temporary files left in the tree: {:?}",
        after.keys().collect::<Vec<_>>()
    );
    assert_preserved(&tree_before, &after, "tree after the failed publish");
    assert!(r.dir.join("staged/.publish-journal.json").exists());
    (r, tree_before, small_rel, big_rel)
}

#[test]
fn disk_full_during_publish_keeps_the_old_tree_valid_and_the_next_publish_finishes() {
    let (r, tree_before, small_rel, big_rel) = interrupted_by_full_disk();
    // Clients still see the previous repository, complete and valid.
    assert_eq!(
        std::fs::read(r.tree().join("metadata/timestamp.json")).unwrap(),
        match &tree_before[Path::new("metadata/timestamp.json")] {
            Entry::File(b) => b.clone(),
            e => panic!("{e:?}"),
        }
    );
    let out = r.verify_ok();
    assert!(out.contains("1 target file(s) checked"), "{out}");
    // Without the limit, publish finishes the journal.
    let out = r.ok(&["publish"]);
    assert!(out.contains("finished an interrupted publish"), "{out}");
    assert!(out.contains("targets v2"), "{out}");
    assert!(!r.dir.join("staged/.publish-journal.json").exists());
    let out = r.verify_ok();
    assert!(out.contains("3 target file(s) checked"), "{out}");
    assert!(r.tree().join(small_rel).exists());
    assert_eq!(
        std::fs::metadata(r.tree().join(big_rel)).unwrap().len(),
        300 * 1024
    );
    assert_eq!(r.ok(&["status"]).trim(), "nothing staged");
}

#[test]
fn an_interrupted_publish_blocks_edits_with_a_clear_message() {
    let (r, _, _, _) = interrupted_by_full_disk();
    let f = r.src("f.bin", b"f");
    let msg = "a publish was interrupted; run `petrel-repo publish` to finish it";
    refused(&r, &["add", path(&f)], &[msg]);
    refused(&r, &["remove", "apps/acme/hello/1.0/hello.txt"], &[msg]);
    refused(&r, &["delegate", "--to", "x", "--paths", "x/*"], &[msg]);
    refused(&r, &["rotate", "timestamp", "--generate", "1"], &[msg]);
    refused(&r, &["export", "targets"], &[msg]);
    refused(&r, &["import-signature", "targets", path(&f)], &[msg]);
    let status = r.ok(&["status"]);
    assert!(
        status.contains("a publish was interrupted: run `petrel-repo publish` to finish it"),
        "{status}"
    );
    // `refresh` finishes it as well, then refreshes the timestamp (v2 was signed when the
    // interrupted publish began, and may be stale by now).
    let out = r.ok(&["refresh"]);
    assert!(out.contains("finished an interrupted publish"), "{out}");
    assert!(out.contains("published timestamp v3"), "{out}");
    assert_eq!(
        r.tree_json("metadata/timestamp.json")["signed"]["version"],
        3
    );
    r.ok(&["add", path(&f), "--prefix", "docs"]);
    r.ok(&["publish"]);
    r.verify_ok();
}

//! Interop with python-tuf, the reference TUF implementation, both ways, against its
//! current series 7 (7.0.1, whose `Updater` requires the `bootstrap` trust anchor) and its
//! previous series 6 (6.0.0): each test runs once per series (`…::python_tuf_7`,
//! `…::python_tuf_6`).
//!
//! * Petrel writes, python-tuf reads: `petrel-repo` builds a tree (top-level target,
//!   delegated role with path patterns, succinct hashed bins), the tree is served over HTTP
//!   on 127.0.0.1 and python-tuf's `ngclient` refreshes and downloads from it, also across
//!   a root key rotation, and refuses tampered bytes. A delegated role listing a target
//!   outside its paths does not break the other targets.
//! * python-tuf writes, Petrel reads: `make_repo.py` writes a repository (ed25519, ECDSA,
//!   RSA-PSS keys, succinct hashed bins) and `petrel-repo verify` accepts it, and reports
//!   problems in tampered copies.
//!
//! `petrel_tree_has_a_target_copy_per_listed_hash`: a consistent-snapshot tree holds one
//! copy of each target per listed hash, as the specification asks.
//!
//! The venv comes from `scripts/ensure-venv.sh` (see `petrel_tests::python`); if it cannot
//! be made these tests fail rather than skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use petrel_repo::audit::{audit_tree, AuditReport};
use petrel_tests::{
    describe, petrel_repo, python_script_of, run_ok, run_with_timeout, PetrelRepo, PyTuf,
    StaticServer, CHILD_TIMEOUT,
};

/// Runs the test function `$name(PyTuf)` once per python-tuf series, as
/// `$name::python_tuf_7` and `$name::python_tuf_6`.
macro_rules! per_series {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn python_tuf_7() {
                super::$name(petrel_tests::PyTuf::V7)
            }
            #[test]
            fn python_tuf_6() {
                super::$name(petrel_tests::PyTuf::V6)
            }
        }
    )*};
}

per_series!(
    python_tuf_ngclient_reads_petrel_tree,
    python_tuf_ngclient_reads_petrel_tree_without_consistent_snapshots,
    python_tuf_ngclient_ignores_targets_outside_petrel_delegations,
    petrel_verify_accepts_python_tuf_tree,
    petrel_verify_accepts_python_tuf_tree_without_consistent_snapshots,
);
use serde_json::Value;

/// Bytes that text handling would mangle (NUL, CR/LF, invalid UTF-8).
fn binary_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

/// A Petrel repository exercising each kind of delegation ngclient must walk:
/// * `readme.txt` in top-level `targets`;
/// * role `apps` for `apps/*/*/*/*` (`*` never matches `/`: one `*` per segment), listing
///   `apps/acme/tool/1.0/tool.bin`;
/// * role `assign` for `assign/*`, which delegates to 8 succinct hashed bins
///   `assign-bin-0` … `assign-bin-7` listing `assign/device-N.json`.
fn petrel_sample(dir: &Path, consistent_snapshot: bool) -> PetrelRepo {
    let mut repo = PetrelRepo::init(&dir.join("repo"), consistent_snapshot);
    repo.add("targets", "readme.txt", b"Petrel interop readme\n");
    repo.delegate("targets", "apps", &["apps/*/*/*/*"], true);
    repo.add(
        "apps",
        "apps/acme/tool/1.0/tool.bin",
        &binary_payload(70_000),
    );
    repo.delegate("targets", "assign", &["assign/*"], true);
    repo.delegate_bins("assign", "assign-bin", 8);
    for i in 0..8 {
        let name = format!("assign/device-{i}.json");
        let body = format!("{{\"device\":{i},\"group\":\"g{}\"}}\n", i % 3);
        repo.add("assign", &name, body.as_bytes());
    }
    repo.publish();
    repo
}

/// Two binned targets that live in different bins.
fn two_binned_targets(repo: &PetrelRepo) -> [String; 2] {
    let binned: Vec<&String> = repo
        .files()
        .keys()
        .filter(|n| n.starts_with("assign/"))
        .collect();
    let first = binned[0];
    let second = binned
        .iter()
        .find(|n| repo.role_of(n) != repo.role_of(first))
        .expect("8 targets in 8 bins land in at least two bins");
    for n in [first, *second] {
        assert!(
            repo.role_of(n).starts_with("assign-bin-"),
            "{n} is listed by {}",
            repo.role_of(n)
        );
    }
    [first.clone(), second.to_string()]
}

struct Fetch {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ngclient_fetch.py` against `server`, caching metadata in `metadata_dir`.
fn ngclient_fetch(
    py: PyTuf,
    server: &StaticServer,
    trusted_root: &Path,
    metadata_dir: &Path,
    download_dir: &Path,
    targets: &[&str],
) -> Fetch {
    let mut cmd = python_script_of(py, "ngclient_fetch.py");
    cmd.arg("--metadata-url")
        .arg(server.url("metadata/"))
        .arg("--targets-url")
        .arg(server.url("targets/"))
        .arg("--trusted-root")
        .arg(trusted_root)
        .arg("--metadata-dir")
        .arg(metadata_dir)
        .arg("--download-dir")
        .arg(download_dir)
        .args(targets);
    let out = run_with_timeout(&mut cmd, CHILD_TIMEOUT).expect("ngclient_fetch.py runs");
    Fetch {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Fetch {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Asserts success and that every target was downloaded with exactly `repo`'s bytes.
    fn assert_downloaded(&self, repo: &PetrelRepo, targets: &[&str]) {
        assert_eq!(self.status, Some(0), "ngclient failed: {}", self.describe());
        let lines: Vec<Value> = self
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), targets.len(), "{}", self.describe());
        for (line, target) in lines.iter().zip(targets) {
            assert_eq!(line["path"], **target);
            let file = PathBuf::from(line["file"].as_str().expect("file"));
            let got = std::fs::read(&file).expect("downloaded file");
            assert!(
                got == repo.files()[*target],
                "{target}: downloaded bytes differ from the source ({} vs {} bytes)",
                got.len(),
                repo.files()[*target].len()
            );
            assert_eq!(line["length"], repo.files()[*target].len());
        }
    }
}

fn fetched_paths(server: &StaticServer) -> BTreeMap<String, u16> {
    server
        .requests()
        .into_iter()
        .map(|r| (r.path, r.status))
        .collect()
}

fn python_tuf_ngclient_reads_petrel_tree(py: PyTuf) {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = petrel_sample(tmp.path(), true);
    let server = StaticServer::serve(repo.tree()).unwrap();
    let [bin_a, bin_b] = two_binned_targets(&repo);
    let targets = [
        "readme.txt",
        "apps/acme/tool/1.0/tool.bin",
        bin_a.as_str(),
        bin_b.as_str(),
    ];
    let md = tmp.path().join("client-metadata");

    // 1. First contact: trust 1.root.json, refresh, download from every kind of role.
    let fetch = ngclient_fetch(
        py,
        &server,
        &repo.trusted_root(),
        &md,
        &tmp.path().join("dl-1"),
        &targets,
    );
    fetch.assert_downloaded(&repo, &targets);
    let seen = fetched_paths(&server);
    // Versioned metadata names and hash-prefixed target names all resolved: the only miss
    // is the probe for a next root.
    let misses: Vec<_> = seen.iter().filter(|(_, s)| **s != 200).collect();
    assert_eq!(
        misses,
        vec![(&"/metadata/2.root.json".to_string(), &404)],
        "requests: {seen:#?}"
    );
    for path in [
        "/metadata/timestamp.json",
        "/metadata/1.snapshot.json",
        "/metadata/1.targets.json",
        "/metadata/1.apps.json",
        "/metadata/1.assign.json",
    ] {
        assert!(seen.contains_key(path), "{path} not fetched: {seen:#?}");
    }
    // Lazy search: only the two bins holding the requested targets were fetched.
    let bins: Vec<&String> = seen.keys().filter(|p| p.contains("assign-bin-")).collect();
    assert_eq!(bins.len(), 2, "{bins:?}");
    for t in [&bin_a, &bin_b] {
        let want = format!("/metadata/1.{}.json", repo.role_of(t));
        assert!(seen.contains_key(&want), "{want} not fetched: {bins:?}");
    }
    // Targets were requested by consistent-snapshot name: <dir>/<sha256>.<basename>.
    let tool = seen
        .keys()
        .find(|p| p.starts_with("/targets/apps/acme/tool/1.0/"))
        .expect("tool.bin fetched");
    assert!(tool.ends_with(".tool.bin") && tool.len() > 64, "{tool}");

    // 2. A new release with a root key rotation: ngclient, starting from its cached
    //    metadata, walks root v1 -> v2 and picks up the changed and new targets.
    repo.rotate_root();
    repo.add(
        "targets",
        "readme.txt",
        b"Petrel interop readme, second edition\n",
    );
    repo.add("apps", "apps/acme/tool/1.1/tool.bin", &binary_payload(1234));
    repo.publish();
    server.clear_requests();
    let targets2 = ["readme.txt", "apps/acme/tool/1.1/tool.bin"];
    let fetch = ngclient_fetch(
        py,
        &server,
        &repo.trusted_root(),
        &md,
        &tmp.path().join("dl-2"),
        &targets2,
    );
    fetch.assert_downloaded(&repo, &targets2);
    let seen = fetched_paths(&server);
    assert_eq!(seen.get("/metadata/2.root.json"), Some(&200), "{seen:#?}");
    assert_eq!(seen.get("/metadata/3.root.json"), Some(&404), "{seen:#?}");
    assert!(seen.contains_key("/metadata/2.snapshot.json"), "{seen:#?}");

    // 3. Tampered bytes are refused: serve the new readme with one byte changed.
    let readme_url = seen
        .keys()
        .find(|p| p.starts_with("/targets/") && p.ends_with(".readme.txt"))
        .expect("readme fetched")
        .clone();
    let mut evil = repo.files()["readme.txt"].clone();
    evil[0] ^= 0x20;
    server.respond_with(&readme_url, 200, evil);
    let fetch = ngclient_fetch(
        py,
        &server,
        &repo.trusted_root(),
        &md,
        &tmp.path().join("dl-3"),
        &["readme.txt"],
    );
    assert_eq!(fetch.status, Some(1), "{}", fetch.describe());
    assert!(
        fetch.stderr.contains("LengthOrHashMismatchError"),
        "{}",
        fetch.describe()
    );
}

fn python_tuf_ngclient_reads_petrel_tree_without_consistent_snapshots(py: PyTuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = petrel_sample(tmp.path(), false);
    let server = StaticServer::serve(repo.tree()).unwrap();
    let [bin_a, bin_b] = two_binned_targets(&repo);
    let targets = [
        "readme.txt",
        "apps/acme/tool/1.0/tool.bin",
        bin_a.as_str(),
        bin_b.as_str(),
    ];
    let fetch = ngclient_fetch(
        py,
        &server,
        &repo.trusted_root(),
        &tmp.path().join("md"),
        &tmp.path().join("dl"),
        &targets,
    );
    fetch.assert_downloaded(&repo, &targets);
    let seen = fetched_paths(&server);
    for path in [
        "/metadata/snapshot.json",
        "/metadata/targets.json",
        "/metadata/apps.json",
        "/targets/readme.txt",
        "/targets/apps/acme/tool/1.0/tool.bin",
    ] {
        assert_eq!(seen.get(path), Some(&200), "{path}: {seen:#?}");
    }
}

/// A delegated role that lists a target outside its delegated paths: python-tuf must not
/// find that target (and everything else keeps working); a path inside a delegation that
/// no role lists is simply not found.
fn python_tuf_ngclient_ignores_targets_outside_petrel_delegations(py: PyTuf) {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = petrel_sample(tmp.path(), true);
    repo.add_unchecked("apps", "rogue/evil.bin", b"not for you\n");
    repo.publish();
    // Petrel's own verify flags the stray listing.
    let report = audit_tree(&repo.tree(), Some(&repo.trusted_root())).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("rogue/evil.bin") && p.contains("outside")),
        "{report}"
    );
    let server = StaticServer::serve(repo.tree()).unwrap();
    let md = tmp.path().join("md");
    for missing in ["rogue/evil.bin", "apps/acme/tool/1.0/missing.bin"] {
        let fetch = ngclient_fetch(
            py,
            &server,
            &repo.trusted_root(),
            &md,
            &tmp.path().join("dl"),
            &[missing],
        );
        assert_eq!(fetch.status, Some(3), "{missing}: {}", fetch.describe());
    }
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.path.ends_with(".evil.bin")),
        "the stray target was downloaded"
    );
    let ok = ["readme.txt", "apps/acme/tool/1.0/tool.bin"];
    let fetch = ngclient_fetch(
        py,
        &server,
        &repo.trusted_root(),
        &md,
        &tmp.path().join("dl"),
        &ok,
    );
    fetch.assert_downloaded(&repo, &ok);
}

// -------------------------------------------------------------------------------------
// python-tuf writes, Petrel reads
// -------------------------------------------------------------------------------------

/// Runs make_repo.py into `out` and returns its JSON summary.
fn make_python_repo(py: PyTuf, out: &Path, extra: &[&str]) -> Value {
    let mut cmd = python_script_of(py, "make_repo.py");
    cmd.arg(out).args(extra);
    let output = run_ok(&mut cmd);
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().expect("summary line"))
        .unwrap_or_else(|e| panic!("make_repo.py summary is not JSON ({e}): {stdout}"))
}

fn audit(tree: &Path) -> AuditReport {
    audit_tree(tree, Some(&tree.join("metadata/1.root.json"))).expect("audit runs")
}

/// `petrel-repo verify --tree T --root T/metadata/1.root.json` through the CLI.
fn verify_cli(tree: &Path) -> std::process::Output {
    petrel_repo([
        "verify".as_ref(),
        "--tree".as_ref(),
        tree.as_os_str(),
        "--root".as_ref(),
        tree.join("metadata/1.root.json").as_os_str(),
    ])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// Changes one hex digit of the first signature in a metadata file, leaving the JSON
/// (and the signed part) intact.
fn corrupt_signature(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let key = text.find("\"sig\"").expect("has a signature");
    let open = key + 5 + text[key + 5..].find('"').expect("signature value");
    let i = open + 1;
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    std::fs::write(file, bytes).unwrap();
}

fn flip_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

fn petrel_verify_accepts_python_tuf_tree(py: PyTuf) {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("python-tuf");
    let summary = make_python_repo(py, &good, &[]);
    assert_eq!(summary["consistent_snapshot"], true);
    // The keys make_repo.py promises, so this test covers every scheme.
    let schemes: Vec<&str> = summary["keys"]
        .as_object()
        .unwrap()
        .values()
        .map(|k| k["scheme"].as_str().unwrap())
        .collect();
    for s in ["ed25519", "ecdsa-sha2-nistp256", "rsassa-pss-sha256"] {
        assert!(schemes.contains(&s), "{s} missing from {schemes:?}");
    }

    let report = audit(&good);
    assert!(
        report.problems.is_empty(),
        "petrel-repo verify rejects a python-tuf tree:\n{report}"
    );
    // targets, vendor, bins and its 8 succinct bins; every listed target file.
    assert_eq!(report.roles_checked, 11, "{report}");
    assert_eq!(
        report.targets_checked,
        summary["targets"].as_array().unwrap().len(),
        "{report}"
    );
    let out = verify_cli(&good);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok: clients will accept this tree"),
        "{}",
        describe(&out)
    );

    // Tampered copies, one change each; every one must be reported, naming the file.
    // verify reads each target under its first listed hash (sha256): flip that copy.
    let binned = summary["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .find(|p| p.starts_with("bins/"))
        .expect("a binned target");
    let sha256 = summary["target_hashes"][binned]["sha256"].as_str().unwrap();
    let (dir, base) = binned.rsplit_once('/').unwrap();
    let target_file = format!("targets/{dir}/{sha256}.{base}");
    type Tamper = fn(&Path);
    let cases: [(&str, String, Tamper); 5] = [
        ("target byte", target_file, flip_byte),
        (
            "rsa signature",
            "metadata/1.vendor.json".into(),
            corrupt_signature,
        ),
        (
            "ecdsa signature",
            "metadata/1.targets.json".into(),
            corrupt_signature,
        ),
        (
            "ed25519 bin signature",
            "metadata/1.bins-5.json".into(),
            corrupt_signature,
        ),
        (
            "timestamp signature",
            "metadata/timestamp.json".into(),
            corrupt_signature,
        ),
    ];
    for (i, (what, rel, tamper)) in cases.iter().enumerate() {
        let bad = tmp.path().join(format!("tampered-{i}"));
        copy_dir(&good, &bad);
        tamper(&bad.join(rel));
        let report = audit(&bad);
        assert!(
            !report.problems.is_empty(),
            "{what}: verify found no problem after tampering with {rel}"
        );
        assert!(
            report.problems.iter().any(|p| p.contains(rel.as_str())),
            "{what}: no problem names {rel}:\n{report}"
        );
        let out = verify_cli(&bad);
        assert!(
            !out.status.success(),
            "{what}: CLI exit 0: {}",
            describe(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(rel.as_str()),
            "{what}: {}",
            describe(&out)
        );
    }
}

fn petrel_verify_accepts_python_tuf_tree_without_consistent_snapshots(py: PyTuf) {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("python-tuf");
    let summary = make_python_repo(py, &tree, &["--no-consistent-snapshot"]);
    assert_eq!(summary["consistent_snapshot"], false);
    let report = audit(&tree);
    assert!(report.problems.is_empty(), "{report}");
    assert_eq!(report.roles_checked, 11, "{report}");
    flip_byte(&tree.join("targets/apps/vendor/app/1.0/app.bin"));
    let report = audit(&tree);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("targets/apps/vendor/app/1.0/app.bin")),
        "{report}"
    );
}

/// TUF 1.0.34, "Writing consistent snapshots": a target whose metadata lists N hashes MUST
/// be stored as N identical copies, `<dir>/<HASH>.<name>` for each digest (python-tuf's
/// make_repo.py does this). A client may pick any listed hash to build the URL.
#[test]
fn petrel_tree_has_a_target_copy_per_listed_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = petrel_sample(tmp.path(), true);
    let tree = repo.tree();
    let mut roles = vec!["targets".to_string(), "apps".to_string()];
    roles.extend((0..8).map(|i| format!("assign-bin-{i}")));
    let mut missing = Vec::new();
    for role in roles {
        let md: Value = serde_json::from_slice(
            &std::fs::read(tree.join(format!("metadata/1.{role}.json"))).unwrap(),
        )
        .unwrap();
        for (name, tf) in md["signed"]["targets"].as_object().unwrap() {
            let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
            for (alg, digest) in tf["hashes"].as_object().unwrap() {
                let rel = if dir.is_empty() {
                    format!("targets/{}.{base}", digest.as_str().unwrap())
                } else {
                    format!("targets/{dir}/{}.{base}", digest.as_str().unwrap())
                };
                if !tree.join(&rel).is_file() {
                    missing.push(format!("{name} ({alg}): {rel}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing copies:\n{}",
        missing.join("\n")
    );
}

//! The committed `fixtures/` directory is exactly what the generator writes today, the good
//! fixture verifies, and every `fixture.json` is well-formed.
//!
//! If `committed_fixtures_are_fresh` fails after an intended change, regenerate with
//! `cargo run -p petrel-repo -- fixture --out fixtures --attacks` and commit the result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use petrel_repo::audit::audit_tree;
use petrel_repo::fixtures::{generate, FixtureOptions, EXPECT_KINDS};
use serde_json::Value;

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Every file below `dir`: relative path → bytes.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(dir).unwrap();
            let rel = rel.to_str().unwrap().replace('\\', "/");
            out.insert(rel, std::fs::read(entry.path()).unwrap());
        }
    }
    out
}

fn generate_all(out: &Path) {
    generate(
        out,
        &FixtureOptions {
            content: None,
            attacks: true,
        },
    )
    .unwrap();
}

#[test]
fn committed_fixtures_are_fresh() {
    let tmp = tempfile::tempdir().unwrap();
    generate_all(tmp.path());
    let fresh = read_tree(tmp.path());
    let committed = read_tree(&committed());
    let mut problems = Vec::new();
    for (path, bytes) in &fresh {
        match committed.get(path) {
            None => problems.push(format!("missing from fixtures/: {path}")),
            Some(c) if c != bytes => problems.push(format!("stale: {path}")),
            Some(_) => {}
        }
    }
    // `fixtures/deltas/` is written and checked by client/tests/delta_fixtures.rs.
    for path in committed
        .keys()
        .filter(|p| !fresh.contains_key(*p) && !p.starts_with("deltas/"))
    {
        problems.push(format!("no longer generated: {path}"));
    }
    assert!(
        problems.is_empty(),
        "fixtures/ is not what the generator writes ({} problem(s)); regenerate with \
         `cargo run -p petrel-repo -- fixture --out fixtures --attacks`:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn generation_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    generate_all(a.path());
    generate_all(b.path());
    assert_eq!(read_tree(a.path()), read_tree(b.path()));
}

#[test]
fn good_fixture_passes_audit() {
    let good = committed().join("good");
    let report = audit_tree(&good.join("repo"), Some(&good.join("trusted/root.json"))).unwrap();
    assert!(report.problems.is_empty(), "{report}");
    // targets, acme, globex, assign and its 8 hashed bins; 7 target files.
    assert_eq!(report.roles_checked, 12, "{report}");
    assert_eq!(report.targets_checked, 7, "{report}");
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(good.join("fixture.json")).unwrap()).unwrap();
    assert_eq!(fixture["expect"], "ok");
    assert_eq!(fixture["targets"].as_array().unwrap().len(), 7);
}

#[test]
fn every_fixture_json_is_well_formed_and_documented() {
    let root = committed();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut dirs = vec![root.join("good")];
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("attacks")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    assert!(dirs.len() > 25, "expected one fixture per attack");
    for dir in dirs {
        let shown = dir.display().to_string();
        let f: Value =
            serde_json::from_slice(&std::fs::read(dir.join("fixture.json")).unwrap()).unwrap();
        let name = f["name"].as_str().unwrap();
        assert_eq!(
            Some(name),
            dir.file_name().and_then(|n| n.to_str()),
            "{shown}"
        );
        assert!(names.insert(name.to_string()));
        assert!(!f["description"].as_str().unwrap().is_empty(), "{shown}");
        let expect = f["expect"].as_str().unwrap();
        assert!(EXPECT_KINDS.contains(&expect), "{shown}: expect {expect:?}");
        match f["action"].as_str().unwrap() {
            "refresh" => assert!(f.get("target").is_none(), "{shown}"),
            "download" => assert!(
                f["target"].is_string() || f["targets"].is_array(),
                "{shown}: download without a target"
            ),
            other => panic!("{shown}: unknown action {other:?}"),
        }
        if expect != "ok" && expect != "not-found" && expect != "slow-retrieval" {
            assert!(f["fails_at"].is_string(), "{shown}: no fails_at");
        }
        for step in f["also"].as_array().into_iter().flatten() {
            assert!(EXPECT_KINDS.contains(&step["expect"].as_str().unwrap()));
            assert!(step["target"].is_string());
        }
        assert!(dir.join("trusted/root.json").is_file(), "{shown}");
        assert!(
            dir.join("repo/metadata/timestamp.json").is_file(),
            "{shown}"
        );
        assert!(readme.contains(&format!("`{}`", dir.strip_prefix(&root).unwrap().display())));
        if name != "good" {
            assert_eq!(f["attack"], name, "{shown}");
        }
    }
    for kind in EXPECT_KINDS {
        assert!(
            readme.contains(&format!("| `{kind}` |")),
            "README does not explain {kind}"
        );
    }
}

#[test]
fn every_attack_changes_something() {
    // Only slow-retrieval serves the good tree unchanged (the server makes it an attack).
    let root = committed();
    let good_repo = read_tree(&root.join("good/repo"));
    let good_trusted = read_tree(&root.join("good/trusted"));
    for entry in std::fs::read_dir(root.join("attacks")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let same = read_tree(&dir.join("repo")) == good_repo
            && read_tree(&dir.join("trusted")) == good_trusted;
        let slow = dir.ends_with("slow-retrieval");
        assert_eq!(same, slow, "{}", dir.display());
    }
}

#[test]
fn user_content_makes_a_good_repository_routed_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    let files = [
        "apps/acme/fw/3.0/fw.img",
        "apps/globex/ui/1.2/ui.tar",
        "assign/x.json",
        "docs/notes.txt",
    ];
    for f in files {
        let p = content.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("content of {f}\n")).unwrap();
    }
    let out = tmp.path().join("out");
    generate(
        &out,
        &FixtureOptions {
            content: Some(content),
            attacks: false,
        },
    )
    .unwrap();
    assert!(!out.join("attacks").exists());
    let good = out.join("good");
    let report = audit_tree(&good.join("repo"), Some(&good.join("trusted/root.json"))).unwrap();
    assert!(report.problems.is_empty(), "{report}");
    assert_eq!(report.targets_checked, files.len());
    let f: Value =
        serde_json::from_slice(&std::fs::read(good.join("fixture.json")).unwrap()).unwrap();
    let listed: Vec<&str> = f["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed, files);
    // Each file went to the role trusted for its path.
    let meta = good.join("repo/metadata");
    let acme = std::fs::read_to_string(meta.join("1.acme.json")).unwrap();
    assert!(acme.contains("apps/acme/fw/3.0/fw.img"));
    let globex = std::fs::read_to_string(meta.join("1.globex.json")).unwrap();
    assert!(globex.contains("apps/globex/ui/1.2/ui.tar"));
    let targets = std::fs::read_to_string(meta.join("1.targets.json")).unwrap();
    assert!(targets.contains("docs/notes.txt") && !targets.contains("assign/x.json"));
}

#[test]
fn foreign_directories_are_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let precious = tmp.path().join("good/precious.txt");
    std::fs::create_dir_all(precious.parent().unwrap()).unwrap();
    std::fs::write(&precious, "keep me").unwrap();
    let err = generate(tmp.path(), &FixtureOptions::default()).unwrap_err();
    assert!(err.to_string().contains("refusing to replace"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("README.md"), "# my project\n").unwrap();
    assert!(generate(tmp.path(), &FixtureOptions::default()).is_err());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("README.md")).unwrap(),
        "# my project\n"
    );
}

#[test]
fn the_cli_writes_the_same_good_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_petrel-repo"))
        .args(["fixture", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!out.join("attacks").exists());
    assert_eq!(
        read_tree(&out.join("good")),
        read_tree(&committed().join("good"))
    );
}

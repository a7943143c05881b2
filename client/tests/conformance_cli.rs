//! The `petrel-conformance` binary end to end, on `file://` and `http://` repositories written by the simulator.

mod support;

use std::process::{Command, Output};

use support::server::TestServer;
use support::*;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_petrel-conformance");

/// A repository tree on disk with a delegation and three targets.
struct Repo {
    sim: RepoSim,
    tree: TempDir,
    work: TempDir,
}

impl Repo {
    fn new() -> Self {
        let mut sim = RepoSim::new();
        sim.delegate("targets", "vendor", &["apps/*"], false);
        sim.add_target("targets", "top.txt", b"top level\n");
        sim.add_target("vendor", "apps/app.bin", b"vendor app\n");
        sim.add_target("targets", "../escape.txt", b"escape\n");
        sim.role_mut("vendor").version += 1;
        sim.targets.version += 1;
        sim.commit();
        let repo = Repo {
            sim,
            tree: TempDir::new().unwrap(),
            work: TempDir::new().unwrap(),
        };
        repo.write();
        std::fs::write(repo.work.path().join("root.json"), repo.sim.initial_root()).unwrap();
        repo
    }

    fn write(&self) {
        self.sim.write_tree(self.tree.path());
    }

    fn md(&self) -> std::path::PathBuf {
        self.work.path().join("metadata")
    }

    fn targets(&self) -> std::path::PathBuf {
        self.work.path().join("out").join("targets")
    }

    fn file_url(&self, sub: &str) -> String {
        format!("file://{}/{sub}", self.tree.path().display())
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .arg("--metadata-dir")
            .arg(self.md())
            .args(args)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        eprintln!(
            "$ petrel-conformance {args:?} -> {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn init(&self) {
        let root = self.work.path().join("root.json");
        let out = self.run(&["init", root.to_str().unwrap()]);
        assert!(out.status.success());
    }

    fn download(&self, metadata_url: &str, targets_url: &str, names: &[&str]) -> Output {
        let mut args = vec![
            "--metadata-url",
            metadata_url,
            "--target-base-url",
            targets_url,
        ];
        let dir = self.targets();
        args.extend(["--target-dir", dir.to_str().unwrap()]);
        for n in names {
            args.extend(["--target-name", n]);
        }
        args.push("download");
        self.run(&args)
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

#[test]
fn cli_init_refresh_download_over_file_urls() {
    let repo = Repo::new();
    repo.init();
    assert!(repo.md().join("root.json").exists());
    let md_url = repo.file_url("metadata");
    let out = repo.run(&["--metadata-url", &md_url, "refresh"]);
    assert_eq!(code(&out), 0);
    for f in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        assert!(repo.md().join(f).exists(), "{f}");
    }
    let out = repo.download(
        &md_url,
        &repo.file_url("targets"),
        &["top.txt", "apps/app.bin"],
    );
    assert_eq!(code(&out), 0);
    assert_eq!(
        std::fs::read(repo.targets().join("top.txt")).unwrap(),
        b"top level\n"
    );
    assert_eq!(
        std::fs::read(repo.targets().join("apps%2Fapp.bin")).unwrap(),
        b"vendor app\n"
    );
    assert!(repo.md().join("vendor.json").exists());
}

#[test]
fn cli_download_reuses_a_cached_target() {
    let repo = Repo::new();
    repo.init();
    let (md, tg) = (repo.file_url("metadata"), repo.file_url("targets"));
    assert_eq!(code(&repo.download(&md, &tg, &["top.txt"])), 0);
    // Remove the target from the repository: a cached, verified copy is enough.
    std::fs::remove_dir_all(repo.tree.path().join("targets")).unwrap();
    let out = repo.download(&md, &tg, &["top.txt"]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not downloading"));
    // A corrupted local copy is not a cache hit, and cannot be repaired now.
    std::fs::write(repo.targets().join("top.txt"), b"top levelX").unwrap();
    assert_eq!(code(&repo.download(&md, &tg, &["top.txt"])), 1);
}

#[test]
fn cli_exits_1_for_an_unknown_target_after_downloading_earlier_ones() {
    let repo = Repo::new();
    repo.init();
    let out = repo.download(
        &repo.file_url("metadata"),
        &repo.file_url("targets"),
        &["top.txt", "nope.txt", "apps/app.bin"],
    );
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.txt"));
    assert!(repo.targets().join("top.txt").exists());
    assert!(
        !repo.targets().join("apps%2Fapp.bin").exists(),
        "stops at the first failure"
    );
}

#[test]
fn cli_refuses_a_target_path_that_escapes_the_target_dir() {
    let repo = Repo::new();
    repo.init();
    let out = repo.download(
        &repo.file_url("metadata"),
        &repo.file_url("targets"),
        &["../escape.txt"],
    );
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsafe target path"));
    assert!(!repo.targets().parent().unwrap().join("escape.txt").exists());
    let written: Vec<_> = std::fs::read_dir(repo.targets()).unwrap().collect();
    assert!(written.is_empty());
}

#[test]
fn cli_refresh_exits_1_on_rollback_and_keeps_trusted_metadata() {
    let mut repo = Repo::new();
    repo.init();
    let md = repo.file_url("metadata");
    repo.sim.timestamp.version = 10;
    repo.sim.publish();
    repo.write();
    assert_eq!(code(&repo.run(&["--metadata-url", &md, "refresh"])), 0);
    let before = dir_state(&repo.md());
    repo.sim.timestamp.version = 9;
    repo.sim.publish();
    repo.write();
    let out = repo.run(&["--metadata-url", &md, "refresh"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("rollback"));
    assert_eq!(dir_state(&repo.md()), before);
}

#[test]
fn cli_init_exits_1_for_a_root_that_is_not_self_signed() {
    let repo = Repo::new();
    let bad = repo.work.path().join("bad-root.json");
    let stranger = new_key();
    std::fs::write(&bad, sign_with(&[&stranger], &repo.sim.root)).unwrap();
    let out = repo.run(&["init", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(!repo.md().join("root.json").exists());
}

#[test]
fn cli_refresh_without_init_exits_1() {
    let repo = Repo::new();
    let out = repo.run(&["--metadata-url", &repo.file_url("metadata"), "refresh"]);
    assert_eq!(code(&out), 1);
}

#[test]
fn cli_works_over_http_and_persists_only_unversioned_names() {
    let repo = Repo::new();
    repo.init();
    let server = TestServer::serve_dir(repo.tree.path().to_path_buf());
    let out = repo.download(
        &server.url("/metadata"),
        &server.url("/targets"),
        &["apps/app.bin"],
    );
    assert_eq!(code(&out), 0);
    let mut names: Vec<String> = dir_state(&repo.md()).into_keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json",
            "vendor.json"
        ]
    );
    assert_eq!(
        std::fs::read(repo.targets().join("apps%2Fapp.bin")).unwrap(),
        b"vendor app\n"
    );
}

//! Shared helpers for the `petrel-repo` integration tests: run the real binary (with a
//! deadline) in a temporary workspace, snapshot directories byte-for-byte, read metadata.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_petrel-repo");

/// No single command may take longer than this.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Test hook that makes publish copy target files instead of hard-linking them.
pub const NO_HARDLINKS_ENV: &str = "PETREL_REPO_TEST_NO_HARDLINKS";

/// A `petrel-repo` command isolated from the caller's environment.
pub fn petrel() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("PETREL_REPO")
        .env_remove("PETREL_KEYS_DIR")
        .env_remove("RUST_LOG")
        .env_remove(NO_HARDLINKS_ENV);
    c
}

/// Runs `cmd` to completion, killing it (and failing the test) after [`DEADLINE`].
pub fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().expect("reader"),
        stderr: t_err.join().expect("reader"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success; returns stdout.
pub fn expect_ok(cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{shown} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Asserts failure with exit code 1 (a reported error, not a crash); returns stderr.
pub fn expect_fail(cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let o = run(cmd);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{shown} should fail with exit code 1\nstdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let err = text(&o.stderr);
    assert!(
        err.contains("error: "),
        "{shown}: no error message on stderr: {err}"
    );
    err
}

/// A repository workspace in a temporary directory (`<tmp>/ws`), with a scratch area for
/// source files (`<tmp>/src`).
pub struct Repo {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Repo {
    /// A workspace that does not exist yet.
    pub fn empty() -> Repo {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ws");
        std::fs::create_dir_all(tmp.path().join("src")).expect("mkdir");
        Repo { tmp, dir }
    }

    /// `petrel-repo init` with extra arguments.
    pub fn init(args: &[&str]) -> Repo {
        let r = Repo::empty();
        r.ok(&[&["init"], args].concat());
        r
    }

    /// `init`, one target added and published.
    pub fn published() -> Repo {
        let r = Repo::init(&[]);
        let f = r.src("hello.txt", b"hello\n");
        r.ok(&["add", path(&f), "--prefix", "apps/acme/hello/1.0"]);
        r.ok(&["publish"]);
        r
    }

    /// A `petrel-repo --repo <ws> ARGS` command.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = petrel();
        c.arg("--repo").arg(&self.dir).args(args);
        c
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        expect_ok(self.cmd(args))
    }

    /// Runs and asserts failure (exit code 1); returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        expect_fail(self.cmd(args))
    }

    /// Writes a source file under `<tmp>/src` and returns its path.
    pub fn src(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.tmp.path().join("src").join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, bytes).expect("write");
        p
    }

    /// A path in the scratch area (not created).
    pub fn scratch(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// The published tree.
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    /// Parses a JSON file relative to the workspace.
    pub fn json(&self, rel: &str) -> Value {
        read_json(&self.dir.join(rel))
    }

    /// Parses a JSON file relative to the tree.
    pub fn tree_json(&self, rel: &str) -> Value {
        read_json(&self.tree().join(rel))
    }

    /// The key ids of a top-level role, from the newest root (staged, else published).
    pub fn role_keyids(&self, role: &str) -> Vec<String> {
        let root = if self.dir.join("staged/root.json").exists() {
            self.json("staged/root.json")
        } else {
            self.json("metadata/root.json")
        };
        root["signed"]["roles"][role]["keyids"]
            .as_array()
            .unwrap_or_else(|| panic!("no role {role} in root"))
            .iter()
            .map(|k| k.as_str().expect("string").to_string())
            .collect()
    }

    /// Every file and directory of the workspace (tree included) except the lock file.
    pub fn snapshot(&self) -> Snapshot {
        snapshot(&self.dir)
    }

    /// `verify` on the workspace's tree; asserts it passes.
    pub fn verify_ok(&self) -> String {
        let out = self.ok(&["verify"]);
        assert!(out.contains("ok: clients will accept this tree"), "{out}");
        out
    }

    /// Metadata file name → bytes, for the files of the tree's `metadata/` directory (not
    /// its `snapshot-tree/` subdirectory).
    pub fn tree_metadata(&self) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(self.tree().join("metadata"))
            .expect("tree metadata")
            .map(|e| e.expect("entry"))
            .filter(|e| e.path().is_file())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).expect("read"),
                )
            })
            .collect()
    }
}

/// A path argument as `&str` (test paths are UTF-8).
pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Parses a JSON file.
pub fn read_json(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One entry of a directory snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
    Other,
}

/// Relative path → entry, for every entry below a directory (the workspace lock excluded).
pub type Snapshot = BTreeMap<PathBuf, Entry>;

/// Takes a byte-for-byte snapshot of everything below `dir`.
pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let e = e.expect("walk");
        let rel = e.path().strip_prefix(dir).expect("below").to_path_buf();
        if rel == Path::new(".lock") {
            continue;
        }
        let ft = e.file_type();
        let entry = if ft.is_dir() {
            Entry::Dir
        } else if ft.is_symlink() {
            Entry::Symlink(std::fs::read_link(e.path()).expect("readlink"))
        } else if ft.is_file() {
            Entry::File(std::fs::read(e.path()).expect("read"))
        } else {
            Entry::Other
        };
        out.insert(rel, entry);
    }
    out
}

/// Asserts two snapshots are identical, naming every path that differs.
pub fn assert_same(before: &Snapshot, after: &Snapshot, what: &str) {
    let mut diffs = Vec::new();
    for (p, e) in before {
        match after.get(p) {
            None => diffs.push(format!("removed: {}", p.display())),
            Some(a) if a != e => diffs.push(format!("changed: {}", p.display())),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        diffs.push(format!("added: {}", p.display()));
    }
    assert!(
        diffs.is_empty(),
        "{what}: expected no change, found:\n  {}",
        diffs.join("\n  ")
    );
}

/// Asserts every entry of `before` is still in `after`, unchanged (new entries allowed).
pub fn assert_preserved(before: &Snapshot, after: &Snapshot, what: &str) {
    let diffs: Vec<String> = before
        .iter()
        .filter(|(p, e)| after.get(*p) != Some(*e))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(
        diffs.is_empty(),
        "{what}: these existing entries changed or disappeared: {diffs:?}"
    );
}

/// Copies a directory recursively (for tampering with a copy of a tree).
pub fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.expect("walk");
        let dst = to.join(e.path().strip_prefix(from).expect("below"));
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dst).expect("mkdir");
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Hex SHA-512 of bytes.
pub fn sha512_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA512, bytes))
}

/// The consistent-snapshot tree path of a target, computed independently of the tool.
pub fn consistent_target_path(name: &str, content: &[u8]) -> String {
    let h = sha256_hex(content);
    match name.rsplit_once('/') {
        Some((dir, base)) => format!("targets/{dir}/{h}.{base}"),
        None => format!("targets/{h}.{name}"),
    }
}

/// The TAP 15 bin of `name` among `2^bits` bins named `<prefix>-<hex>`, computed
/// independently of the tool: the first `bits` bits of SHA-256(name).
pub fn bin_of(name: &str, prefix: &str, bits: u32) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let b = d.as_ref();
    let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let n = first >> (32 - bits);
    let width = format!("{:x}", (1u64 << bits) - 1).len();
    format!("{prefix}-{n:0width$x}")
}

/// Version of a role as listed in the tree's current snapshot (via timestamp).
pub fn snapshot_version_of(repo: &Repo, role: &str) -> u64 {
    let ts = repo.tree_json("metadata/timestamp.json");
    let sv = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .expect("snapshot version");
    let snap = repo.tree_json(&format!("metadata/{sv}.snapshot.json"));
    snap["signed"]["meta"][format!("{role}.json")]["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("{role} not in snapshot v{sv}"))
}

/// Key ids that signed a metadata file.
pub fn signers(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .map(|s| s["keyid"].as_str().expect("keyid").to_string())
        .collect();
    out.sort();
    out
}

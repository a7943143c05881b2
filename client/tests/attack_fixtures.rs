//! The committed fixtures (`fixtures/good`, `fixtures/attacks/*`, see fixtures/README.md)
//! against the real updater: `file://` for all but `slow-retrieval`, which a local HTTP
//! server drips byte by byte.
//!
//! For each fixture the harness copies `trusted/` into a fresh metadata directory, runs the
//! fixture's action and its `also` steps with one client, and checks:
//! * the outcome is the one `fixture.json` expects, matched on the `UpdateError` variant the
//!   README maps the kind to (and on `FetchError` inside `Fetch`/`TargetFetch`);
//! * the message starts with the failing role and the version the client knew at that point
//!   (`snapshot v2`, `targets role "acme" v2`, `target "path"`);
//! * the trusted metadata directory obeys the README's rule: after a failed refresh, the
//!   files of the failing step and of every later step are byte-identical to before, earlier
//!   steps may only hold the exact bytes the repository serves (newer verified metadata), and
//!   `root.json` never changes; after a download, everything the refresh stored is unchanged
//!   and only genuine delegated roles were added (never the failing one);
//! * with the snapshot tree (the `tree-*` fixtures), the files below `snapshot-tree/` obey
//!   the README's rules too: cached nodes are served nodes named by their SHA-256, a role's
//!   trusted version only rises to what the served tree lists (never the failing role's),
//!   and the head only moves to the one the served timestamp pins, after that timestamp;
//! * where `fixture.json` has `error_contains`, the message contains it (which check refused);
//! * nothing was written outside the metadata and download directories, nothing is left at
//!   a failed download's destination, and the fixture tree itself is untouched;
//! * the device is not stuck: where the root is the good repository's and no newer version
//!   was (legitimately) stored, a refresh against `good/repo` succeeds and a target that
//!   failed downloads from there; and always, once good's content is re-published above
//!   every version the device holds (signed with the public fixture keys), a refresh
//!   succeeds and every good target downloads.
//!
//! Every directory in `fixtures/attacks` must have its own test below
//! (`every_attack_fixture_has_a_test`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use petrel_client::fetch::{
    decode_path_segment, encode_path_segment, AutoTransport, FetchError, HttpConfig, Transport,
};
use petrel_client::tuf::canonical::canonicalize;
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use petrel_client::tuf::updater::{
    local_target_file_name, role_file_name, UpdateError, Updater, UpdaterConfig,
};
use serde_json::{json, Value};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Fixtures and what their repositories serve
// ---------------------------------------------------------------------------------------

/// The top-level workflow steps, in order; each is stored as `<step>.json`.
const STEPS: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// `fails_at` for a node of the snapshot tree (README); the updater says "snapshot tree".
const TREE: &str = "snapshot-tree";
/// The snapshot tree's directory, in the repository's metadata and in the device's.
const TREE_DIR: &str = "snapshot-tree";
/// The device's trusted snapshot tree head and per-role versions, below [`TREE_DIR`].
const TREE_HEAD: &str = "snapshot-tree/head.json";
const TREE_VERSIONS: &str = "snapshot-tree/versions.json";

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .canonicalize()
        .expect("fixtures/ exists at the workspace root")
}

/// `file:///a/b` with every segment percent-encoded (FileTransport refuses `..`, so the
/// path must be canonical).
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for c in path.components() {
        if let Component::Normal(s) = c {
            url.push('/');
            url.push_str(&encode_path_segment(s.to_str().expect("UTF-8 path")));
        }
    }
    url
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// How the updater names a role in messages (`error::describe`, which is crate-private).
fn describe(role: &str, version: Option<u64>) -> String {
    let base = if STEPS.contains(&role) {
        role.to_string()
    } else if role == TREE {
        "snapshot tree".to_string()
    } else {
        format!("targets role {role:?}")
    };
    match version {
        Some(v) => format!("{base} v{v}"),
        None => base,
    }
}

fn json(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

/// `signed.version` of a metadata file, if it is JSON with one.
fn version_of(bytes: &[u8]) -> Option<u64> {
    json(bytes)?["signed"]["version"].as_u64()
}

/// `signed.meta[file].version` of a timestamp or snapshot.
fn meta_version(bytes: &[u8], file: &str) -> Option<u64> {
    json(bytes)?["signed"]["meta"][file]["version"].as_u64()
}

/// A role's position in the snapshot tree: the SHA-256 of its name as base-4 digits
/// (docs/scale.md).
fn role_digits(role: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, role.as_bytes())
        .as_ref()
        .iter()
        .flat_map(|b| [6, 4, 2, 0].map(|shift| b'0' + ((b >> shift) & 3)))
        .collect()
}

/// The device's `snapshot-tree/versions.json` (absent: none).
fn tree_versions(files: &Files) -> BTreeMap<String, u64> {
    files
        .get(TREE_VERSIONS)
        .map(|b| serde_json::from_slice(b).expect("versions.json is a map of versions"))
        .unwrap_or_default()
}

struct Fixture {
    /// `good` or `attacks/<name>`.
    rel: String,
    dir: PathBuf,
    json: Value,
}

/// One action of a fixture: the main one or an `also` step.
struct Step {
    action: String,
    targets: Vec<String>,
    expect: String,
    fails_at: Option<String>,
    error_contains: Option<String>,
    sha256: BTreeMap<String, String>,
}

impl Fixture {
    fn load(rel: &str) -> Fixture {
        let dir = fixtures_root().join(rel);
        let text = fs::read(dir.join("fixture.json"))
            .unwrap_or_else(|e| panic!("{rel}/fixture.json: {e}"));
        let json: Value = serde_json::from_slice(&text).expect("fixture.json is JSON");
        let name = rel.rsplit('/').next().unwrap();
        assert_eq!(
            json["name"], name,
            "{rel}: fixture.json names another fixture"
        );
        Fixture {
            rel: rel.to_string(),
            dir,
            json,
        }
    }

    fn name(&self) -> &str {
        self.json["name"].as_str().unwrap()
    }

    fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }

    /// The client configuration reading this fixture's repository over `file://`.
    fn file_config(&self) -> UpdaterConfig {
        let repo = file_url(&self.repo());
        UpdaterConfig::new(format!("{repo}/metadata"))
            .with_target_base_url(format!("{repo}/targets"))
    }

    fn served(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.repo().join("metadata").join(name)).ok()
    }

    fn trusted_file(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.dir.join("trusted").join(name)).ok()
    }

    fn consistent_snapshot(&self) -> bool {
        let root = self.served("root.json").expect("repo serves root.json");
        json(&root).expect("root.json is JSON")["signed"]["consistent_snapshot"]
            .as_bool()
            .unwrap_or(false)
    }

    fn versioned(&self, version: u64, file: &str) -> String {
        if self.consistent_snapshot() {
            format!("{version}.{file}")
        } else {
            file.to_string()
        }
    }

    /// The snapshot tree head version the served timestamp pins, if it pins one (the
    /// client then reads role versions from the tree: `use_snapshot_tree` is on by default).
    fn tree_pin(&self) -> Option<u64> {
        json(&self.served("timestamp.json")?)?["signed"]["petrel_snapshot_tree"]["version"].as_u64()
    }

    /// What the served snapshot tree lists for `role`, following the nodes its path names
    /// (without checking them: the client does that).
    fn tree_lookup(&self, role: &str) -> Option<Value> {
        let head = json(&self.served_file(TREE)?)?;
        let mut hash = head["signed"]["root"].as_str()?.to_string();
        let digits = role_digits(role);
        for digit in digits {
            let node = json(&self.served(&format!("{TREE_DIR}/{hash}.json"))?)?;
            match node.get("children") {
                Some(children) => {
                    hash = children[char::from(digit).to_string()]
                        .as_str()?
                        .to_string()
                }
                None => return node["roles"].get(role).cloned(),
            }
        }
        None
    }

    /// The version the referencing metadata names for `role` (what the client knows before
    /// it has parsed the role's own file): root N+1, none for timestamp, the timestamp's
    /// snapshot (or snapshot tree head) version, the snapshot's (or the snapshot tree's)
    /// version for targets and delegated roles.
    fn referenced_version(&self, role: &str) -> Option<u64> {
        match role {
            "root" => {
                let trusted = self.trusted_file("root.json").expect("trusted root");
                Some(version_of(&trusted).expect("trusted root has a version") + 1)
            }
            "timestamp" => None,
            "snapshot" => meta_version(&self.served("timestamp.json")?, "snapshot.json"),
            TREE => self.tree_pin(),
            role if self.tree_pin().is_some() => self.tree_lookup(role)?["version"].as_u64(),
            role => meta_version(&self.served_file("snapshot")?, &role_file_name(role)),
        }
    }

    /// The bytes the repository serves for `role` on the path the client takes (for
    /// [`TREE`]: the head the timestamp pins).
    fn served_file(&self, role: &str) -> Option<Vec<u8>> {
        match role {
            "root" => self.served(&format!("{}.root.json", self.referenced_version("root")?)),
            "timestamp" => self.served("timestamp.json"),
            TREE => self.served(&format!("{TREE_DIR}/{}.head.json", self.tree_pin()?)),
            role => {
                let v = self.referenced_version(role)?;
                self.served(&self.versioned(v, &role_file_name(role)))
            }
        }
    }

    fn steps(&self) -> Vec<Step> {
        let j = &self.json;
        let mut steps = vec![step_of(j, &self.rel)];
        if let Some(Value::Object(map)) = j.get("target_sha256") {
            steps[0].sha256 = map
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
        }
        if let Some(also) = j.get("also") {
            for s in also.as_array().expect("also is a list") {
                steps.push(step_of(s, &self.rel));
            }
        }
        steps
    }
}

fn step_of(j: &Value, rel: &str) -> Step {
    let s = |k: &str| j.get(k).and_then(Value::as_str).map(str::to_string);
    let mut targets: Vec<String> = s("target").into_iter().collect();
    if let Some(list) = j.get("targets").and_then(Value::as_array) {
        targets.extend(list.iter().map(|t| t.as_str().unwrap().to_string()));
    }
    let mut sha256 = BTreeMap::new();
    if let (Some(t), Some(h)) = (s("target"), s("sha256")) {
        sha256.insert(t, h);
    }
    let step = Step {
        action: s("action").unwrap_or_else(|| panic!("{rel}: a step has no action")),
        targets,
        expect: s("expect").unwrap_or_else(|| panic!("{rel}: a step has no expect")),
        fails_at: s("fails_at"),
        error_contains: s("error_contains"),
        sha256,
    };
    assert!(
        step.action == "refresh" || (step.action == "download" && !step.targets.is_empty()),
        "{rel}: unknown action {:?} or download without a target",
        step.action
    );
    step
}

// ---------------------------------------------------------------------------------------
// Expected outcomes
// ---------------------------------------------------------------------------------------

/// The README's table: `expect` kind → `UpdateError` variant.
fn assert_kind(rel: &str, kind: &str, fails_at: Option<&str>, err: &UpdateError) {
    use UpdateError as E;
    let at_target = fails_at == Some("target");
    let ok = match kind {
        "threshold" => matches!(err, E::Signature { .. }),
        "rollback" => matches!(err, E::Rollback { .. }),
        "version-mismatch" => matches!(err, E::Version { .. }),
        "expired" => matches!(err, E::Expired { .. }),
        "too-large" if at_target => matches!(
            err,
            E::TargetFetch {
                source: FetchError::TooLarge { .. },
                ..
            }
        ),
        "too-large" => matches!(
            err,
            E::Fetch {
                source: FetchError::TooLarge { .. },
                ..
            }
        ),
        // One variant for both; the reason tells which check failed.
        "length-mismatch" => {
            matches!(err, E::LengthOrHash { reason, .. } if reason.starts_with("length "))
        }
        "hash-mismatch" if fails_at == Some(TREE) => {
            matches!(err, E::LengthOrHash { reason, .. } if reason.contains(" hash to "))
        }
        "hash-mismatch" => {
            matches!(err, E::LengthOrHash { reason, .. } if reason.contains(" mismatch: expected "))
        }
        "wrong-position" => {
            matches!(err, E::Invalid { reason, .. } if reason.contains("position"))
        }
        "unsafe-target-path" => matches!(err, E::Target { .. }),
        "malformed" => matches!(err, E::Schema { .. }),
        "slow-retrieval" => matches!(
            err,
            E::Fetch {
                source: FetchError::Timeout { .. },
                ..
            }
        ),
        other => panic!("{rel}: unknown expect kind {other:?}: teach the harness about it"),
    };
    assert!(ok, "{rel}: expected {kind}, got {err:?}\n  ({err})");
}

/// `error_contains`: the message tells which check refused.
fn assert_error_contains(rel: &str, step: &Step, err: &UpdateError) {
    if let Some(text) = &step.error_contains {
        let msg = err.to_string();
        assert!(
            msg.contains(text.as_str()),
            "{rel}: the message should contain {text:?}: {msg}"
        );
    }
}

/// The message starts with the failing role and the version known at that point: the
/// referenced one for download, length and hash failures (the file is not parsed yet), the
/// file's own claimed version otherwise; for a target, its path.
fn assert_names_role_and_version(
    f: &Fixture,
    fails_at: &str,
    target: Option<&str>,
    err: &UpdateError,
) {
    let what = if fails_at == "target" {
        format!("target {:?}", target.expect("a target step"))
    } else {
        let version = match err {
            UpdateError::Fetch { .. } | UpdateError::LengthOrHash { .. } => {
                f.referenced_version(fails_at)
            }
            _ => f.served_file(fails_at).as_deref().and_then(version_of),
        };
        describe(fails_at, version)
    };
    let msg = err.to_string();
    let names = |what: &str| msg.starts_with(what) && msg[what.len()..].starts_with([':', ' ']);
    // The updater's `describe` has no case for the snapshot tree and names it like a
    // delegated role; either form names the tree and its version.
    let alias = (fails_at == TREE)
        .then(|| what.replacen("snapshot tree", "targets role \"snapshot tree\"", 1));
    assert!(
        names(&what) || alias.as_deref().is_some_and(names),
        "{}: the message should start with {what:?}: {msg}",
        f.rel
    );
}

// ---------------------------------------------------------------------------------------
// The device: metadata dir, download dir, recording transport
// ---------------------------------------------------------------------------------------

/// Records every URL asked for, then delegates.
struct Recording<T> {
    inner: T,
    log: Arc<Mutex<Vec<String>>>,
}

impl<T: Transport> Transport for Recording<T> {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        self.log.lock().unwrap().push(url.to_string());
        self.inner.fetch(url, max_len, sink)
    }
}

type Files = BTreeMap<String, Vec<u8>>;

/// The files of a metadata directory by relative path (`timestamp.json`,
/// `snapshot-tree/head.json`): files at the top and in [`TREE_DIR`], nothing else.
fn read_files(dir: &Path) -> Files {
    let mut files = Files::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if e.file_type().unwrap().is_dir() {
            assert_eq!(name, TREE_DIR, "{:?} is not a file", e.path());
            for n in fs::read_dir(e.path()).unwrap() {
                let n = n.unwrap();
                assert!(
                    n.file_type().unwrap().is_file(),
                    "{:?} is not a file",
                    n.path()
                );
                let rel = format!("{TREE_DIR}/{}", n.file_name().into_string().unwrap());
                files.insert(rel, fs::read(n.path()).unwrap());
            }
        } else {
            files.insert(name, fs::read(e.path()).unwrap());
        }
    }
    files
}

/// Every entry below `dir` (relative path, is-dir, length), sorted.
fn walk(dir: &Path) -> Vec<(PathBuf, bool, u64)> {
    fn go(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, bool, u64)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(base).unwrap().to_path_buf();
            out.push((rel, meta.is_dir(), meta.len()));
            if meta.is_dir() {
                go(base, &e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

struct Device {
    _tmp: TempDir,
    work: PathBuf,
    md: PathBuf,
    /// Three levels below `work`, so a naive `downloads/../../x` still lands inside it.
    downloads: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    updater: Updater,
    /// File names in `downloads` that verified downloads put there.
    downloaded: BTreeSet<String>,
}

impl Device {
    /// A device holding `f`'s `trusted/` files, talking to `config` through `transport`.
    fn new(f: &Fixture, config: UpdaterConfig, transport: impl Transport + 'static) -> Device {
        let tmp = TempDir::new().unwrap();
        let work = tmp.path().canonicalize().unwrap();
        let md = work.join("metadata");
        fs::create_dir(&md).unwrap();
        let trusted = f.dir.join("trusted");
        for (rel, is_dir, _) in walk(&trusted) {
            if is_dir {
                fs::create_dir(md.join(&rel)).unwrap();
            } else {
                fs::copy(trusted.join(&rel), md.join(&rel)).unwrap();
            }
        }
        let downloads = work.join("device/var/downloads");
        fs::create_dir_all(&downloads).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let updater = Updater::new(
            config,
            Recording {
                inner: transport,
                log: log.clone(),
            },
            &md,
        )
        .unwrap_or_else(|e| panic!("{}: trusted/ is not loadable: {e}", f.rel));
        Device {
            _tmp: tmp,
            work,
            md,
            downloads,
            log,
            updater,
            downloaded: BTreeSet::new(),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Where a target goes: its flat local name, except that an unsafe path is joined naively
    /// (as a careless caller would) when that stays inside the work dir, so that a client
    /// writing anything for it would be caught by [`Device::assert_nothing_escaped`].
    fn dest_for(&self, target: &str, naive: bool) -> PathBuf {
        if naive && !Path::new(target).is_absolute() {
            let mut p = self.downloads.clone();
            for c in Path::new(target).components() {
                match c {
                    Component::ParentDir => {
                        p.pop();
                    }
                    Component::Normal(s) => p.push(s),
                    _ => {}
                }
            }
            if p.starts_with(&self.work) && p != self.work {
                return p;
            }
        }
        self.downloads
            .join(local_target_file_name(target).expect("non-empty target path"))
    }

    /// No temporary file, no stray file and no stray directory anywhere under `work`.
    fn assert_nothing_escaped(&self, rel: &str) {
        let allowed_dirs: BTreeSet<PathBuf> = [
            "metadata",
            "metadata/snapshot-tree",
            "device",
            "device/var",
            "device/var/downloads",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        for (path, is_dir, _) in walk(&self.work) {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                !name.starts_with(".petrel-tmp"),
                "{rel}: temporary file left: {path:?}"
            );
            if is_dir {
                assert!(
                    allowed_dirs.contains(&path),
                    "{rel}: stray directory {path:?}"
                );
            } else if path.parent() == Some(Path::new("device/var/downloads")) {
                assert!(
                    self.downloaded.contains(name),
                    "{rel}: {path:?} is not a verified download"
                );
            } else {
                assert!(
                    path.parent() == Some(Path::new("metadata"))
                        || path.parent() == Some(Path::new("metadata/snapshot-tree")),
                    "{rel}: stray file {path:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The trusted-state rules
// ---------------------------------------------------------------------------------------

fn show(f: Option<&Vec<u8>>) -> String {
    match f {
        None => "absent".into(),
        Some(b) => match version_of(b) {
            Some(v) => format!("v{v} ({} bytes)", b.len()),
            None => format!("{} bytes", b.len()),
        },
    }
}

/// After a refresh that failed at `fails_at` (README, "A failed action must leave the
/// device able to update later").
fn assert_refresh_failure_state(f: &Fixture, fails_at: &str, before: &Files, after: &Files) {
    let rel = &f.rel;
    // A tree node is read in the snapshot step's place: after the head is verified, while
    // `targets` is looked up.
    let step = if fails_at == TREE {
        "snapshot"
    } else {
        fails_at
    };
    let failing = STEPS
        .iter()
        .position(|s| *s == step)
        .unwrap_or_else(|| panic!("{rel}: a refresh cannot fail at {fails_at:?}"));
    assert_eq!(
        after.get("root.json"),
        before.get("root.json"),
        "{rel}: root.json changed although the refresh failed"
    );
    for (i, step) in STEPS.iter().enumerate().skip(1) {
        let file = format!("{step}.json");
        let (was, now) = (before.get(&file), after.get(&file));
        if i >= failing {
            assert!(
                was == now,
                "{rel}: {file} must be byte-identical after failing at {fails_at}: was {}, now {}",
                show(was),
                show(now)
            );
        } else if was != now {
            // An earlier step may only have stored newer metadata it verified: exactly the
            // repository's bytes, at a version not below the one it replaced.
            let now = now.unwrap_or_else(|| panic!("{rel}: {file} was deleted"));
            assert_eq!(
                Some(now),
                f.served_file(step).as_ref(),
                "{rel}: {file} now holds bytes the repository does not serve for {step}"
            );
            if let Some(was) = was {
                assert!(
                    version_of(now) >= version_of(was),
                    "{rel}: {file} went from {} back to {}",
                    show(Some(was)),
                    show(Some(now))
                );
            }
            eprintln!("{rel}: {file} legitimately updated to {}", show(Some(now)));
        }
    }
    let top: BTreeSet<String> = STEPS.iter().map(|s| format!("{s}.json")).collect();
    for name in after.keys() {
        assert!(
            before.contains_key(name) || top.contains(name) || in_tree_dir(name),
            "{rel}: the failed refresh stored {name}"
        );
    }
    let rule = match fails_at {
        "root" | "timestamp" | "snapshot" => TreeRule::Unchanged,
        TREE => TreeRule::Refresh {
            head_required: false,
            versions_frozen: true,
            frozen_role: None,
        },
        role => TreeRule::Refresh {
            head_required: false,
            versions_frozen: false,
            frozen_role: Some(role),
        },
    };
    assert_tree_state(f, before, after, rule);
}

fn in_tree_dir(name: &str) -> bool {
    name.starts_with(TREE_DIR) && name[TREE_DIR.len()..].starts_with('/')
}

/// What an action may do to the device's snapshot tree files (below [`TREE_DIR`]).
enum TreeRule<'a> {
    /// Nothing (a refresh that failed before the snapshot step).
    Unchanged,
    /// A refresh: `head.json` may become the head the served timestamp pins (must, with
    /// `head_required`); `versions.json` may rise unless `versions_frozen`, but never for
    /// `frozen_role`.
    Refresh {
        head_required: bool,
        versions_frozen: bool,
        frozen_role: Option<&'a str>,
    },
    /// A target lookup: `head.json` stays; `versions.json` may rise, never for `frozen_role`.
    Lookup { frozen_role: Option<&'a str> },
}

/// The README's rules for `snapshot-tree/`: see [`TreeRule`]; a role's version only rises,
/// to the version the served tree lists; every cached node is a node the repository serves,
/// named by the SHA-256 of its bytes.
fn assert_tree_state(f: &Fixture, before: &Files, after: &Files, rule: TreeRule) {
    let rel = &f.rel;
    let tree_files = |files: &Files| -> Files {
        files
            .iter()
            .filter(|(name, _)| in_tree_dir(name))
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect()
    };
    let (was, now) = (tree_files(before), tree_files(after));
    let (head_may_move, head_required, versions_frozen, frozen_role) = match rule {
        TreeRule::Unchanged => {
            assert!(
                was == now,
                "{rel}: {TREE_DIR}/ changed although the refresh failed before reading the tree: \
                 was {:?}, now {:?}",
                was.keys().collect::<Vec<_>>(),
                now.keys().collect::<Vec<_>>()
            );
            return;
        }
        TreeRule::Refresh {
            head_required,
            versions_frozen,
            frozen_role,
        } => (true, head_required, versions_frozen, frozen_role),
        TreeRule::Lookup { frozen_role } => (false, false, false, frozen_role),
    };

    let (head_was, head_now) = (was.get(TREE_HEAD), now.get(TREE_HEAD));
    let served_head = f.served_file(TREE);
    if head_required {
        assert!(
            head_now.is_some() && head_now == served_head.as_ref(),
            "{rel}: {TREE_HEAD} is {}, not the head the timestamp pins ({})",
            show(head_now),
            show(served_head.as_ref())
        );
    } else if head_now != head_was {
        assert!(
            head_may_move && head_now.is_some() && head_now == served_head.as_ref(),
            "{rel}: {TREE_HEAD} went from {} to {}, which is not the head the timestamp pins",
            show(head_was),
            show(head_now)
        );
    }
    if let (Some(was), Some(now)) = (head_was, head_now) {
        assert!(
            version_of(now) >= version_of(was),
            "{rel}: {TREE_HEAD} went from {} back to {}",
            show(Some(was)),
            show(Some(now))
        );
    }

    if versions_frozen {
        assert!(
            was.get(TREE_VERSIONS) == now.get(TREE_VERSIONS),
            "{rel}: {TREE_VERSIONS} changed: {:?} → {:?}",
            tree_versions(&was),
            tree_versions(&now)
        );
    }
    let (vw, vn) = (tree_versions(&was), tree_versions(&now));
    for (role, v) in &vw {
        assert!(
            vn.get(role) >= Some(v),
            "{rel}: the version trusted for {role} went from {v} to {:?}",
            vn.get(role)
        );
    }
    for (role, v) in &vn {
        if vw.get(role) == Some(v) {
            continue;
        }
        assert_ne!(
            Some(role.as_str()),
            frozen_role,
            "{rel}: the version trusted for the failing role {role} changed to {v}"
        );
        let listed = f.tree_lookup(role).and_then(|m| m["version"].as_u64());
        assert_eq!(
            listed,
            Some(*v),
            "{rel}: the version trusted for {role} rose to {v}, not to what the served tree lists"
        );
    }

    for (name, bytes) in &now {
        if name == TREE_HEAD || name == TREE_VERSIONS {
            continue;
        }
        assert_eq!(
            name[TREE_DIR.len() + 1..],
            format!("{}.json", sha256_hex(bytes)),
            "{rel}: the cached node {name} is not named by the SHA-256 of its bytes"
        );
        assert!(
            f.served(name).as_ref() == Some(bytes),
            "{rel}: the cached node {name} is not a node the repository serves"
        );
    }
}

/// After a successful refresh every top-level file holds exactly what the repository serves
/// for it (or the unchanged stored copy of the same version), and nothing else was stored.
fn assert_refresh_success_state(f: &Fixture, before: &Files, after: &Files) {
    let rel = &f.rel;
    assert_eq!(
        after.get("root.json"),
        f.served("root.json").as_ref(),
        "{rel}: root.json is not the latest root the repository serves"
    );
    for step in &STEPS[1..] {
        let file = format!("{step}.json");
        if *step == "snapshot" && f.tree_pin().is_some() {
            // Role versions come from the snapshot tree (checked below): no snapshot.json.
            assert!(
                before.get(&file) == after.get(&file),
                "{rel}: {file} changed although the snapshot tree is used"
            );
            continue;
        }
        let now = after
            .get(&file)
            .unwrap_or_else(|| panic!("{rel}: {file} missing after a refresh"));
        let served = f.served_file(step);
        let kept_same_version = before.get(&file) == Some(now)
            && served.as_deref().and_then(version_of) == version_of(now);
        assert!(
            served.as_ref() == Some(now) || kept_same_version,
            "{rel}: {file} is {}, not the repository's {}",
            show(Some(now)),
            show(served.as_ref())
        );
    }
    for (name, bytes) in after {
        assert!(
            STEPS.iter().any(|s| format!("{s}.json") == *name)
                || in_tree_dir(name)
                || before.get(name) == Some(bytes),
            "{rel}: the refresh stored {name}"
        );
    }
    let rule = TreeRule::Refresh {
        head_required: f.tree_pin().is_some(),
        versions_frozen: false,
        frozen_role: None,
    };
    assert_tree_state(f, before, after, rule);
}

/// Around a target lookup and download: everything stored before is unchanged (the
/// snapshot tree's files follow [`assert_tree_state`]), and every new file is a delegated
/// role the trusted snapshot (or snapshot tree) lists, holding exactly the repository's
/// bytes; `forbidden` (the role that failed) is not stored, nor its stored copy changed.
fn assert_only_genuine_roles_added(
    f: &Fixture,
    base: &Files,
    after: &Files,
    forbidden: Option<&str>,
) {
    let rel = &f.rel;
    for (name, bytes) in base {
        assert!(
            in_tree_dir(name) || after.get(name) == Some(bytes),
            "{rel}: {name} changed during a target operation"
        );
    }
    let snapshot = f.served_file("snapshot").expect("served snapshot");
    let listed = json(&snapshot).unwrap()["signed"]["meta"]
        .as_object()
        .unwrap()
        .clone();
    let listed_version = |name: &str| -> Option<u64> {
        if f.tree_pin().is_some() {
            f.tree_lookup(name.strip_suffix(".json")?)?["version"].as_u64()
        } else {
            listed.get(name)?["version"].as_u64()
        }
    };
    for (name, bytes) in after {
        if base.contains_key(name) || in_tree_dir(name) {
            continue;
        }
        let v = listed_version(name)
            .unwrap_or_else(|| panic!("{rel}: stored {name}, which snapshot does not list"));
        assert_eq!(
            Some(bytes),
            f.served(&f.versioned(v, name)).as_ref(),
            "{rel}: stored {name} is not the repository's v{v}"
        );
    }
    if let Some(role) = forbidden {
        let file = role_file_name(role);
        assert!(
            after.get(&file) == base.get(&file),
            "{rel}: the failing role {role} was stored as trusted"
        );
    }
    assert_tree_state(
        f,
        base,
        after,
        TreeRule::Lookup {
            frozen_role: forbidden,
        },
    );
}

// ---------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------

/// What one target lookup and download came to.
enum Outcome {
    Downloaded,
    NotFound,
    Failed(UpdateError),
}

fn run_download(f: &Fixture, dev: &mut Device, step: &Step, target: &str) {
    let rel = &f.rel;
    let naive = step.expect == "unsafe-target-path";
    let dest = dev.dest_for(target, naive);
    let base = read_files(&dev.md);
    let requests_before = dev.requests().len();
    let outcome = match dev.updater.get_target_info(target) {
        Ok(None) => Outcome::NotFound,
        Err(e) => Outcome::Failed(e),
        Ok(Some(info)) => {
            assert_eq!(info.path, target);
            match dev.updater.download_target(&info, &dest) {
                Ok(()) => Outcome::Downloaded,
                Err(e) => Outcome::Failed(e),
            }
        }
    };
    let after = read_files(&dev.md);
    let delegated_failure = step
        .fails_at
        .as_deref()
        .filter(|r| *r != "target" && *r != TREE && !STEPS.contains(r));
    assert_only_genuine_roles_added(f, &base, &after, delegated_failure);
    match (step.expect.as_str(), outcome) {
        ("ok", Outcome::Downloaded) => {
            let want = step
                .sha256
                .get(target)
                .unwrap_or_else(|| panic!("{rel}: no sha256 for {target}"));
            let got = sha256_hex(&fs::read(&dest).unwrap());
            assert_eq!(
                &got, want,
                "{rel}: {target} downloaded with the wrong content"
            );
            dev.downloaded
                .insert(dest.file_name().unwrap().to_str().unwrap().to_string());
        }
        ("not-found", Outcome::NotFound) => {}
        (kind, Outcome::Failed(e)) if kind != "ok" && kind != "not-found" => {
            eprintln!("{rel}: {target}: {e}");
            assert_kind(rel, kind, step.fails_at.as_deref(), &e);
            let fails_at = step
                .fails_at
                .as_deref()
                .unwrap_or_else(|| panic!("{rel}: {kind} without fails_at"));
            assert_names_role_and_version(f, fails_at, Some(target), &e);
            assert_error_contains(rel, step, &e);
            if kind == "unsafe-target-path" {
                let made = &dev.requests()[requests_before..];
                assert!(
                    made.is_empty(),
                    "{rel}: requests for an unsafe path: {made:?}"
                );
            }
        }
        (kind, Outcome::Downloaded) => panic!("{rel}: {target} downloaded, expected {kind}"),
        (kind, Outcome::NotFound) => panic!("{rel}: {target} not found, expected {kind}"),
        (kind, Outcome::Failed(e)) => panic!("{rel}: {target}: expected {kind}, got {e:?} ({e})"),
    }
    if step.expect != "ok" {
        assert!(
            fs::symlink_metadata(&dest).is_err(),
            "{rel}: something was left at {dest:?}"
        );
    }
    dev.assert_nothing_escaped(rel);
}

/// Runs a `file://` fixture end to end; see the module documentation.
fn run_fixture(rel: &str) {
    let f = Fixture::load(rel);
    assert!(
        f.json.get("serve").is_none(),
        "{rel}: served specially; it needs its own runner"
    );
    let fixture_tree = walk(&f.dir);
    let mut dev = Device::new(&f, f.file_config(), AutoTransport::default());
    assert_eq!(
        read_files(&dev.md).len(),
        walk(&f.dir.join("trusted"))
            .iter()
            .filter(|(_, is_dir, _)| !is_dir)
            .count()
    );

    let mut failed_target: Option<String> = None;
    let mut refresh_failed = false;
    for (i, step) in f.steps().iter().enumerate() {
        match step.action.as_str() {
            "refresh" => {
                let before = read_files(&dev.md);
                let result = dev.updater.refresh();
                let after = read_files(&dev.md);
                match (step.expect.as_str(), result) {
                    ("ok", Ok(())) => assert_refresh_success_state(&f, &before, &after),
                    ("ok", Err(e)) => panic!("{rel}: refresh failed: {e}"),
                    (kind, Ok(())) => panic!("{rel}: refresh succeeded, expected {kind}"),
                    (kind, Err(e)) => {
                        eprintln!("{rel}: refresh: {e}");
                        let fails_at = step.fails_at.as_deref().expect("fails_at");
                        assert_kind(rel, kind, Some(fails_at), &e);
                        assert_names_role_and_version(&f, fails_at, None, &e);
                        assert_error_contains(rel, step, &e);
                        assert_refresh_failure_state(&f, fails_at, &before, &after);
                        assert!(dev.updater.trusted().is_none(), "{rel}: still trusted");
                        refresh_failed = true;
                    }
                }
            }
            "download" => {
                if i == 0 {
                    // "refresh, which must succeed, then look up and download".
                    let before = read_files(&dev.md);
                    dev.updater
                        .refresh()
                        .unwrap_or_else(|e| panic!("{rel}: the refresh must succeed: {e}"));
                    assert_refresh_success_state(&f, &before, &read_files(&dev.md));
                }
                for target in &step.targets {
                    run_download(&f, &mut dev, step, target);
                    if step.expect != "ok" && step.expect != "not-found" {
                        failed_target = Some(target.clone());
                    }
                }
            }
            other => unreachable!("{other}"),
        }
        dev.assert_nothing_escaped(rel);
    }
    assert_eq!(
        walk(&f.dir),
        fixture_tree,
        "{rel}: the fixture tree changed"
    );
    if refresh_failed || failed_target.is_some() {
        recover_against_good(&f, &mut dev, failed_target.as_deref());
    }
}

/// Whether the device, as the failure left it, can be expected to accept `good/repo`: same
/// trusted root, no stored top-level version above good's (a legitimately stored newer
/// timestamp would make good's a rollback), and no other timestamp of good's version (the
/// client keeps the one it has when the versions are equal).
fn good_is_acceptable(good: &Fixture, stored: &Files) -> Result<(), String> {
    if stored.get("root.json") != good.trusted_file("root.json").as_ref() {
        return Err("another trusted root".into());
    }
    if let (Some(mine), Some(theirs)) =
        (stored.get("timestamp.json"), good.served("timestamp.json"))
    {
        if *mine != theirs && version_of(mine) == version_of(&theirs) {
            return Err("another timestamp of good's version".into());
        }
    }
    for step in &STEPS[1..] {
        let file = format!("{step}.json");
        let mine = stored.get(&file).and_then(|b| version_of(b));
        let theirs = good.served_file(step).as_deref().and_then(version_of);
        if mine > theirs {
            return Err(format!(
                "stored {file} v{} is newer than good's",
                mine.unwrap()
            ));
        }
    }
    Ok(())
}

/// The device is not stuck.
///
/// 1. Where it can accept `good/repo` as it is (same root, nothing newer stored), a refresh
///    against it succeeds from the same metadata dir, and the target that failed downloads
///    from there.
/// 2. Always: once the repository has moved on (good's content re-published by
///    [`republish_good`] above every version the device holds, signed with the keys its root
///    trusts), a refresh succeeds and every good target downloads and verifies.
fn recover_against_good(f: &Fixture, dev: &mut Device, failed_target: Option<&str>) {
    let rel = &f.rel;
    let good = Fixture::load("good");
    let good_targets = good.steps()[0].sha256.clone();
    match good_is_acceptable(&good, &read_files(&dev.md)) {
        Err(why) => eprintln!("{rel}: good/ as is is not for this device ({why})"),
        Ok(()) => {
            let mut updater = Updater::new(good.file_config(), AutoTransport::default(), &dev.md)
                .expect("the metadata dir is still loadable");
            updater
                .refresh()
                .unwrap_or_else(|e| panic!("{rel}: stuck: refresh against good/ fails: {e}"));
            if let Some(target) = failed_target {
                if let Some(want) = good_targets.get(target) {
                    let info = updater.get_target_info(target).unwrap().expect("listed");
                    let dest = dev.dest_for(target, false);
                    updater.download_target(&info, &dest).unwrap_or_else(|e| {
                        panic!("{rel}: stuck: {target} does not download from good/: {e}")
                    });
                    assert_eq!(&sha256_hex(&fs::read(&dest).unwrap()), want);
                    dev.downloaded
                        .insert(dest.file_name().unwrap().to_str().unwrap().to_string());
                }
            }
            dev.assert_nothing_escaped(rel);
            eprintln!("{rel}: recovered against good/");
        }
    }

    let published = TempDir::new().unwrap();
    let (config, version) = republish_good(&good, &read_files(&dev.md), published.path());
    let mut updater = Updater::new(config, AutoTransport::default(), &dev.md).unwrap();
    updater.refresh().unwrap_or_else(|e| {
        panic!("{rel}: stuck: refresh against good/ re-published at v{version} fails: {e}")
    });
    let scratch = TempDir::new().unwrap();
    for (target, want) in &good_targets {
        let info = updater
            .get_target_info(target)
            .unwrap_or_else(|e| panic!("{rel}: stuck: looking up {target}: {e}"))
            .unwrap_or_else(|| panic!("{rel}: re-published good/ lists {target}"));
        let dest = scratch.path().join(local_target_file_name(target).unwrap());
        updater
            .download_target(&info, &dest)
            .unwrap_or_else(|e| panic!("{rel}: stuck: {target}: {e}"));
        assert_eq!(
            &sha256_hex(&fs::read(&dest).unwrap()),
            want,
            "{rel}: {target}"
        );
    }
    dev.assert_nothing_escaped(rel);
    eprintln!("{rel}: recovered against good/ re-published at v{version}");
}

/// The fixture key names (fixtures/README.md, "Keys").
const KEY_NAMES: [&str; 13] = [
    "root",
    "targets",
    "snapshot",
    "timestamp",
    "acme",
    "globex",
    "assign",
    "assign-bins",
    "root-2",
    "timestamp-2",
    "snapshot-2",
    "timestamp-b",
    "attacker",
];

/// The fixture keys by key id: ed25519 from the seed SHA-256("petrel fixture key v1: NAME"),
/// as fixtures/README.md documents (they are public on purpose).
fn fixture_keys() -> BTreeMap<String, PrivateKey> {
    // PKCS#8 v1 header of a raw ed25519 seed (RFC 8410).
    const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    KEY_NAMES
        .iter()
        .map(|name| {
            let seed = ring::digest::digest(
                &ring::digest::SHA256,
                format!("petrel fixture key v1: {name}").as_bytes(),
            );
            let mut der = PKCS8_V1_ED25519_PREFIX.to_vec();
            der.extend_from_slice(seed.as_ref());
            let key = PrivateKey::from_pkcs8_der(&der).unwrap();
            (key.key_id().0.clone(), key)
        })
        .collect()
}

/// A metadata file: `signed`, signed by every key in `keyids`.
fn sign(signed: Value, keyids: &BTreeSet<String>, keys: &BTreeMap<String, PrivateKey>) -> Vec<u8> {
    let message = canonicalize(&signed).unwrap();
    let signatures: Vec<Value> = keyids
        .iter()
        .map(|id| {
            let key = keys
                .get(id)
                .unwrap_or_else(|| panic!("key {id} is not a fixture key"));
            json!({"keyid": id, "sig": hex::encode(key.sign(&message).unwrap())})
        })
        .collect();
    serde_json::to_vec_pretty(&json!({"signatures": signatures, "signed": signed})).unwrap()
}

/// The key ids that signed a metadata file.
fn signers(file: &Value) -> BTreeSet<String> {
    file["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["keyid"].as_str().unwrap().to_string())
        .collect()
}

/// The key ids a root authorizes for `role`.
fn root_keyids(root: &Value, role: &str) -> BTreeSet<String> {
    root["signed"]["roles"][role]["keyids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

/// A meta entry for `bytes` at `version`, pinning length and hashes where `like` does.
fn meta_entry(version: u64, bytes: &[u8], like: &Value) -> Value {
    let mut m = json!({ "version": version });
    if like.get("length").is_some() {
        m["length"] = json!(bytes.len());
    }
    if let Some(Value::Object(hashes)) = like.get("hashes") {
        let mut h = serde_json::Map::new();
        for alg in hashes.keys() {
            let digest = match alg.as_str() {
                "sha256" => &ring::digest::SHA256,
                "sha512" => &ring::digest::SHA512,
                other => panic!("unexpected hash algorithm {other}"),
            };
            h.insert(
                alg.clone(),
                json!(hex::encode(ring::digest::digest(digest, bytes))),
            );
        }
        m["hashes"] = Value::Object(h);
    }
    m
}

/// Writes into `out/metadata` good/'s metadata as a repository would publish it after an
/// incident: root N+1 (the device's root with a fresh expiry, signed by its root keys), and
/// every targets role, snapshot and timestamp at one version V above anything the device
/// stores, signed by their original keys plus whatever keys the device's root requires.
/// Returns the configuration (targets come from good/repo/targets) and V.
fn republish_good(good: &Fixture, device: &Files, out: &Path) -> (UpdaterConfig, u64) {
    let keys = fixture_keys();
    let root = json(&device["root.json"]).expect("device root is JSON");
    assert!(good.consistent_snapshot());
    let mut highest = 1;
    for bytes in device.values() {
        let Some(doc) = json(bytes) else { continue };
        highest = highest.max(doc["signed"]["version"].as_u64().unwrap_or(0));
        if let Some(Value::Object(meta)) = doc["signed"].get("meta") {
            for m in meta.values() {
                highest = highest.max(m["version"].as_u64().unwrap_or(0));
            }
        }
    }
    let v = highest + 1;
    let dir = out.join("metadata");
    fs::create_dir_all(&dir).unwrap();
    let good_root = json(&good.served("root.json").unwrap()).unwrap();

    let n = root["signed"]["version"].as_u64().unwrap();
    let mut new_root = root["signed"].clone();
    new_root["version"] = json!(n + 1);
    new_root["expires"] = good_root["signed"]["expires"].clone();
    let root_bytes = sign(new_root, &root_keyids(&root, "root"), &keys);
    fs::write(dir.join(format!("{}.root.json", n + 1)), &root_bytes).unwrap();
    fs::write(dir.join("root.json"), &root_bytes).unwrap();

    let good_snapshot = json(&good.served_file("snapshot").unwrap()).unwrap();
    let mut meta = serde_json::Map::new();
    for (file, m) in good_snapshot["signed"]["meta"].as_object().unwrap() {
        let original = good
            .served(&good.versioned(m["version"].as_u64().unwrap(), file))
            .unwrap_or_else(|| panic!("good serves {file}"));
        let original = json(&original).unwrap();
        let mut signed = original["signed"].clone();
        signed["version"] = json!(v);
        let mut by = signers(&original);
        if file == "targets.json" {
            by.extend(root_keyids(&root, "targets"));
        }
        let bytes = sign(signed, &by, &keys);
        fs::write(dir.join(format!("{v}.{file}")), &bytes).unwrap();
        meta.insert(file.clone(), meta_entry(v, &bytes, m));
    }

    let mut signed = good_snapshot["signed"].clone();
    signed["version"] = json!(v);
    signed["meta"] = Value::Object(meta);
    let mut by = signers(&good_snapshot);
    by.extend(root_keyids(&root, "snapshot"));
    let snapshot = sign(signed, &by, &keys);
    fs::write(dir.join(format!("{v}.snapshot.json")), &snapshot).unwrap();

    let good_timestamp = json(&good.served("timestamp.json").unwrap()).unwrap();
    let mut signed = good_timestamp["signed"].clone();
    signed["version"] = json!(v);
    signed["meta"]["snapshot.json"] = meta_entry(
        v,
        &snapshot,
        &good_timestamp["signed"]["meta"]["snapshot.json"],
    );
    let mut by = signers(&good_timestamp);
    by.extend(root_keyids(&root, "timestamp"));
    fs::write(dir.join("timestamp.json"), sign(signed, &by, &keys)).unwrap();

    let config = UpdaterConfig::new(file_url(&dir))
        .with_target_base_url(format!("{}/targets", file_url(&good.repo())));
    (config, v)
}

// ---------------------------------------------------------------------------------------
// Slow retrieval: an HTTP server that drips every body
// ---------------------------------------------------------------------------------------

/// Serves a directory over HTTP/1.1 on 127.0.0.1 (port 0): headers at once, then the body
/// one byte per `interval`. Missing files get an immediate 404. Stops when dropped.
struct DripServer {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl DripServer {
    fn start(root: PathBuf, interval: Duration) -> DripServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let (st, th) = (stop.clone(), threads.clone());
        let acceptor = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (root, st2) = (root.clone(), st.clone());
                        let h = std::thread::spawn(move || drip(stream, &root, interval, &st2));
                        th.lock().unwrap().push(h);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        DripServer {
            addr,
            stop,
            threads,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for DripServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for h in self.threads.lock().unwrap().drain(..) {
            let _ = h.join();
        }
    }
}

fn drip(stream: TcpStream, root: &Path, interval: Duration, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("/");
    let mut file = root.to_path_buf();
    let mut ok = true;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        match decode_path_segment(seg).and_then(|b| String::from_utf8(b).ok()) {
            Some(s) if s != ".." && s != "." && !s.contains('/') => file.push(s),
            _ => ok = false,
        }
    }
    let mut out = &stream;
    let body = if ok { fs::read(&file).ok() } else { None };
    let Some(body) = body else {
        let _ = out
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    for b in body {
        if stop.load(Ordering::SeqCst) || out.write_all(&[b]).is_err() {
            return;
        }
        std::thread::sleep(interval);
    }
}

fn slow_refresh_fails(
    f: &Fixture,
    server: &DripServer,
    dev: &Device,
    http: HttpConfig,
) -> UpdateError {
    let rel = &f.rel;
    let config =
        UpdaterConfig::new(server.url("/metadata")).with_target_base_url(server.url("/targets"));
    let log = dev.log.clone();
    let mut updater = Updater::new(
        config,
        Recording {
            inner: AutoTransport::new(http),
            log,
        },
        &dev.md,
    )
    .unwrap();
    let before = read_files(&dev.md);
    let started = Instant::now();
    let err = updater.refresh().unwrap_err();
    let took = started.elapsed();
    eprintln!("{rel}: refresh gave up after {took:?}: {err}");
    assert!(took < Duration::from_secs(5), "{rel}: took {took:?}");
    assert_kind(rel, "slow-retrieval", None, &err);
    // fails_at is absent (any file can be hit): the step is the one the error names.
    let UpdateError::Fetch { what, .. } = &err else {
        unreachable!()
    };
    let role = what.split(' ').next().unwrap();
    assert!(STEPS.contains(&role), "{rel}: timed out on {what}");
    assert_names_role_and_version(f, role, None, &err);
    assert_refresh_failure_state(f, role, &before, &read_files(&dev.md));
    err
}

/// `slow-retrieval`: the repository is good, but every body drips at one byte per 200 ms.
/// Two deadlines must each end the refresh: the minimum average speed (with a per-chunk
/// read timeout the drip always beats), and the per-chunk read timeout on its own.
fn run_slow_retrieval(rel: &str) {
    let f = Fixture::load(rel);
    assert_eq!(f.json["serve"], "slow", "{rel}: not a slow fixture");
    let main = &f.steps()[0];
    assert_eq!(
        (main.action.as_str(), main.expect.as_str()),
        ("refresh", "slow-retrieval")
    );
    let started = Instant::now();
    let server = DripServer::start(f.repo(), Duration::from_millis(200));
    let mut dev = Device::new(&f, f.file_config(), AutoTransport::default());
    let quick = HttpConfig {
        connect_timeout: Duration::from_secs(2),
        retries: 1,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        native_roots: false,
        ..HttpConfig::default()
    };

    // 1. Each byte beats the 1 s read timeout, but 5 bytes/s is far below 64 bytes/s.
    let err = slow_refresh_fails(
        &f,
        &server,
        &dev,
        HttpConfig {
            read_timeout: Duration::from_secs(1),
            min_average_speed: 64,
            ..quick.clone()
        },
    );
    assert!(
        err.to_string().contains("minimum average speed"),
        "{rel}: cut off by the speed check: {err}"
    );
    // 2. A read timeout shorter than the drip interval, no speed check.
    let err = slow_refresh_fails(
        &f,
        &server,
        &dev,
        HttpConfig {
            read_timeout: Duration::from_millis(100),
            min_average_speed: 0,
            ..quick
        },
    );
    assert!(
        matches!(&err, UpdateError::Fetch { source: FetchError::Timeout { during, .. }, .. } if *during == "reading the body"),
        "{rel}: cut off by the read timeout: {err}"
    );
    // The timestamp was really being served (slowly), not refused.
    assert!(
        dev.requests()
            .iter()
            .any(|u| u.ends_with("/metadata/timestamp.json")),
        "{rel}: {:?}",
        dev.requests()
    );
    drop(server);

    // Not stuck: the same repository read at full speed, and good/, both refresh.
    let mut fast = Updater::new(f.file_config(), AutoTransport::default(), &dev.md).unwrap();
    fast.refresh()
        .unwrap_or_else(|e| panic!("{rel}: the repository itself is good: {e}"));
    recover_against_good(&f, &mut dev, None);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "{rel}: took {took:?}");
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

fn run_attack(name: &str) {
    run_fixture(&format!("attacks/{name}"));
}

fn run_slow_attack(name: &str) {
    run_slow_retrieval(&format!("attacks/{name}"));
}

/// One `#[test]` per fixture in `fixtures/attacks`, and the list of fixtures they cover.
macro_rules! attack_tests {
    ($($test:ident: $runner:ident($name:literal),)*) => {
        $(
            #[test]
            fn $test() {
                $runner($name);
            }
        )*
        const COVERED: &[&str] = &[$($name),*];
    };
}

attack_tests! {
    arbitrary_installation_is_refused_and_trusted_state_is_unchanged: run_attack("arbitrary-installation"),
    bad_signature_snapshot_is_refused_and_trusted_state_is_unchanged: run_attack("bad-signature-snapshot"),
    bad_signature_timestamp_is_refused_and_trusted_state_is_unchanged: run_attack("bad-signature-timestamp"),
    endless_data_is_refused_and_trusted_state_is_unchanged: run_attack("endless-data"),
    endless_data_target_is_refused_and_trusted_state_is_unchanged: run_attack("endless-data-target"),
    extraneous_delegation_is_refused_and_trusted_state_is_unchanged: run_attack("extraneous-delegation"),
    extraneous_delegation_bins_is_refused_and_trusted_state_is_unchanged: run_attack("extraneous-delegation-bins"),
    fast_forward_recovery_succeeds_and_stores_the_recovered_metadata: run_attack("fast-forward-recovery"),
    indefinite_freeze_is_refused_and_trusted_state_is_unchanged: run_attack("indefinite-freeze"),
    indefinite_freeze_delegated_is_refused_and_trusted_state_is_unchanged: run_attack("indefinite-freeze-delegated"),
    indefinite_freeze_root_is_refused_and_trusted_state_is_unchanged: run_attack("indefinite-freeze-root"),
    indefinite_freeze_snapshot_is_refused_and_trusted_state_is_unchanged: run_attack("indefinite-freeze-snapshot"),
    indefinite_freeze_targets_is_refused_and_trusted_state_is_unchanged: run_attack("indefinite-freeze-targets"),
    malformed_metadata_is_refused_and_trusted_state_is_unchanged: run_attack("malformed-metadata"),
    malformed_metadata_fields_is_refused_and_trusted_state_is_unchanged: run_attack("malformed-metadata-fields"),
    mismatched_delegation_keys_is_refused_and_trusted_state_is_unchanged: run_attack("mismatched-delegation-keys"),
    mix_and_match_is_refused_and_trusted_state_is_unchanged: run_attack("mix-and-match"),
    mix_and_match_targets_is_refused_and_trusted_state_is_unchanged: run_attack("mix-and-match-targets"),
    oversized_metadata_is_refused_and_trusted_state_is_unchanged: run_attack("oversized-metadata"),
    path_traversal_is_refused_and_trusted_state_is_unchanged: run_attack("path-traversal"),
    rollback_role_removed_is_refused_and_trusted_state_is_unchanged: run_attack("rollback-role-removed"),
    rollback_snapshot_is_refused_and_trusted_state_is_unchanged: run_attack("rollback-snapshot"),
    rollback_targets_is_refused_and_trusted_state_is_unchanged: run_attack("rollback-targets"),
    rollback_timestamp_is_refused_and_trusted_state_is_unchanged: run_attack("rollback-timestamp"),
    root_rotation_succeeds_and_stores_the_new_root: run_attack("root-rotation"),
    root_rotation_not_cross_signed_is_refused_and_trusted_state_is_unchanged: run_attack("root-rotation-not-cross-signed"),
    root_rotation_not_self_signed_is_refused_and_trusted_state_is_unchanged: run_attack("root-rotation-not-self-signed"),
    root_rotation_wrong_version_is_refused_and_trusted_state_is_unchanged: run_attack("root-rotation-wrong-version"),
    slow_retrieval_is_refused_and_trusted_state_is_unchanged: run_slow_attack("slow-retrieval"),
    threshold_duplicate_signatures_is_refused_and_trusted_state_is_unchanged: run_attack("threshold-duplicate-signatures"),
    threshold_not_met_is_refused_and_trusted_state_is_unchanged: run_attack("threshold-not-met"),
    tree_leaf_for_another_role_is_refused_and_trusted_state_is_unchanged: run_attack("tree-leaf-for-another-role"),
    tree_rollback_head_is_refused_and_trusted_state_is_unchanged: run_attack("tree-rollback-head"),
    tree_rollback_role_is_refused_and_trusted_state_is_unchanged: run_attack("tree-rollback-role"),
    tree_tampered_node_is_refused_and_trusted_state_is_unchanged: run_attack("tree-tampered-node"),
    tree_wrong_position_is_refused_and_trusted_state_is_unchanged: run_attack("tree-wrong-position"),
    wrong_hash_is_refused_and_trusted_state_is_unchanged: run_attack("wrong-hash"),
    wrong_length_is_refused_and_trusted_state_is_unchanged: run_attack("wrong-length"),
}

#[test]
fn good_repository_downloads_every_target_with_the_listed_sha256() {
    let f = Fixture::load("good");
    let main = &f.steps()[0];
    assert_eq!(main.expect, "ok");
    assert_eq!(
        main.targets.iter().collect::<BTreeSet<_>>(),
        main.sha256.keys().collect::<BTreeSet<_>>(),
        "every target has a target_sha256"
    );
    run_fixture("good");
}

#[test]
fn every_attack_fixture_has_a_test() {
    let dirs: BTreeSet<String> = fs::read_dir(fixtures_root().join("attacks"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    let covered: BTreeSet<String> = COVERED.iter().map(|s| s.to_string()).collect();
    assert_eq!(COVERED.len(), covered.len(), "a fixture is listed twice");
    let untested: Vec<_> = dirs.difference(&covered).collect();
    let missing: Vec<_> = covered.difference(&dirs).collect();
    assert!(
        untested.is_empty(),
        "fixtures without a test: add them to attack_tests! in {}: {untested:?}",
        file!()
    );
    assert!(
        missing.is_empty(),
        "tests for fixtures that do not exist: {missing:?}"
    );
    // Each one parses and uses only outcomes the harness knows.
    for name in &dirs {
        let f = Fixture::load(&format!("attacks/{name}"));
        assert_eq!(f.name(), name);
        for step in f.steps() {
            assert!(
                [
                    "ok",
                    "threshold",
                    "rollback",
                    "version-mismatch",
                    "expired",
                    "too-large",
                    "length-mismatch",
                    "hash-mismatch",
                    "wrong-position",
                    "not-found",
                    "unsafe-target-path",
                    "malformed",
                    "slow-retrieval",
                ]
                .contains(&step.expect.as_str()),
                "{name}: unknown expect {:?}",
                step.expect
            );
        }
    }
}

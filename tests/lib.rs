//! Shared helpers for the workspace end-to-end tests (the tests live in `tests/tests/`).
//!
//! * Paths: [`workspace_root`], [`target_dir`], [`interop_script`].
//! * Child processes with a time limit: [`run_with_timeout`], [`run_ok`], [`describe`].
//!   Every child started through them is killed (with its whole process group) when the
//!   limit passes, so a hung client never hangs CI.
//! * The python-tuf venv: [`python`] runs `scripts/ensure-venv.sh` once per test process
//!   and returns the venv's interpreter. It **panics** (the test fails, it is not skipped)
//!   when the venv cannot be made: CI installs it with that same script.
//! * The `petrel-repo` binary: [`petrel_repo_bin`] builds it once per test process and
//!   returns its path; [`petrel_repo`] runs it. Prefer [`PetrelRepo`] (the library) unless
//!   the command-line behaviour itself is under test: it is much faster.
//! * [`PetrelRepo`]: builds and publishes a repository through the `petrel-repo` library
//!   (init, delegate, hashed bins, add, rotate root, publish), remembering every target's
//!   bytes and the role that lists it.
//! * [`StaticServer`]: a tiny static HTTP/1.1 file server on `127.0.0.1:<ephemeral port>`
//!   with a request log and per-path canned responses (for fault injection), stopped on drop.
//! * [`Nginx`]: nginx serving a tree with the configuration `docs/server.md` recommends, on
//!   `127.0.0.1:<ephemeral port>`, stopped on drop; [`nginx_bin`] finds nginx (and decides
//!   whether a test without it fails or skips).
//! * [`scenario`]: end-to-end scenarios: a repository built with petrel-repo's manifest
//!   commands and devices running the real agent against it over `file://`.
//!
//! Everything here binds only to 127.0.0.1 and bounds its work (threads, sizes, time).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use petrel_client::tuf::keys::KeySource;
use petrel_client::tuf::schema::{Hashes, Key, KeyId, TargetFile, Unrecognized};
use petrel_repo::editor::{
    self, AddOptions, BinsSpec, DelegationSpec, Editor, InitOptions, KeyType, RotateSpec,
    SourceFile,
};
use petrel_repo::publish::{self, PublishReport, Refresh};
use petrel_repo::workspace::{Settings, Workspace};

pub mod fault_proxy;
pub mod scenario;

/// A generous limit for one client run (python-tuf, petrel-repo) in a test.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// The Cargo workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent")
            .to_path_buf()
    })
}

/// A script of the python-tuf interop kit, e.g. `interop_script("make_repo.py")`.
pub fn interop_script(name: &str) -> PathBuf {
    workspace_root().join("tests/interop/python").join(name)
}

/// The Cargo target directory this test binary was built in: `CARGO_TARGET_DIR` if set,
/// else found from the test executable (`<target>/<profile>/deps/<test>`).
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        return if d.is_absolute() {
            d
        } else {
            workspace_root().join(d)
        };
    }
    profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `<target>/<profile>`: the directory two levels above the test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target/debug"))
}

// ---------------------------------------------------------------------------------------
// Child processes with a time limit
// ---------------------------------------------------------------------------------------

/// Runs `cmd` to completion, capturing stdout and stderr, with stdin closed. If it has not
/// exited after `timeout`, kills it and its process group and returns an error of kind
/// [`io::ErrorKind::TimedOut`] carrying whatever it printed so far.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, so a timeout kills grandchildren (pip under bash) too.
        cmd.process_group(0);
    }
    let mut child = cmd.spawn()?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{cmd:?} did not finish within {timeout:?}; killed it\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        )),
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

fn kill_group(child: &mut Child) {
    #[cfg(unix)]
    {
        // The child leads its own group (process_group(0)), so -pid names exactly the
        // processes this helper started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Status, stdout and stderr of a finished process, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe_status(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn describe_status(s: ExitStatus) -> String {
    match s.code() {
        Some(c) => format!("exit status {c}"),
        None => format!("{s}"),
    }
}

/// [`run_with_timeout`] with [`CHILD_TIMEOUT`], panicking unless the command exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, CHILD_TIMEOUT).unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(out.status.success(), "{shown} failed: {}", describe(&out));
    out
}

// ---------------------------------------------------------------------------------------
// The python-tuf venv
// ---------------------------------------------------------------------------------------

/// A python-tuf release series the interop tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PyTuf {
    /// python-tuf 7.0.1 (current; `Updater` requires the `bootstrap` trust anchor), in
    /// `<workspace>/.venv`.
    V7,
    /// python-tuf 6.0.0, in `<workspace>/.venv-tuf6`.
    V6,
}

impl PyTuf {
    /// The value of `PETREL_TUF_SERIES` for `scripts/ensure-venv.sh`.
    pub fn series(self) -> &'static str {
        match self {
            PyTuf::V7 => "7",
            PyTuf::V6 => "6",
        }
    }

    /// The venv directory of this series.
    pub fn venv_dir(self) -> PathBuf {
        workspace_root().join(match self {
            PyTuf::V7 => ".venv",
            PyTuf::V6 => ".venv-tuf6",
        })
    }
}

/// The python interpreter of the python-tuf 7 interop venv (`<workspace>/.venv`); see
/// [`python_of`].
pub fn python() -> &'static Path {
    python_of(PyTuf::V7)
}

/// The python interpreter of the interop venv of `series`, created or checked once per
/// test process by `scripts/ensure-venv.sh`.
///
/// # Panics
/// When the venv cannot be made (e.g. no network on first use). The interop tests must
/// fail, not skip, in that case: CI runs the same script to install the venv.
pub fn python_of(series: PyTuf) -> &'static Path {
    static PY7: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static PY6: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = match series {
        PyTuf::V7 => &PY7,
        PyTuf::V6 => &PY6,
    };
    let r = cell.get_or_init(|| {
        let script = workspace_root().join("scripts/ensure-venv.sh");
        let venv = series.venv_dir();
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .env("PETREL_VENV", &venv)
            .env("PETREL_TUF_SERIES", series.series());
        // The first run installs from PyPI; later runs take a fraction of a second.
        let out = run_with_timeout(&mut cmd, Duration::from_secs(900))
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} could not create the python-tuf {} venv in {}: {}",
                script.display(),
                series.series(),
                venv.display(),
                describe(&out)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let py = stdout
            .lines()
            .last()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| format!("{} printed no interpreter path", script.display()))?;
        let py = PathBuf::from(py);
        if !py.exists() {
            return Err(format!(
                "{} printed {}, which does not exist",
                script.display(),
                py.display()
            ));
        }
        Ok(py)
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!(
            "python-tuf interop tests need the venv made by scripts/ensure-venv.sh \
             (PyPI access on first use; CI runs that script): {e}"
        ),
    }
}

/// The venv directory of the python-tuf 7 interop venv: `<workspace>/.venv`.
pub fn venv_dir() -> PathBuf {
    PyTuf::V7.venv_dir()
}

/// A [`Command`] running the python-tuf 7 venv's python on an interop script.
pub fn python_script(script: &str) -> Command {
    python_script_of(PyTuf::V7, script)
}

/// A [`Command`] running the venv's python of `series` on an interop script, with
/// `PETREL_VENV` set.
pub fn python_script_of(series: PyTuf, script: &str) -> Command {
    let mut cmd = Command::new(python_of(series));
    cmd.arg(interop_script(script))
        .env("PETREL_VENV", series.venv_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(workspace_root());
    cmd
}

// ---------------------------------------------------------------------------------------
// The petrel-repo binary
// ---------------------------------------------------------------------------------------

/// The `petrel-repo` binary, built (once per test process) with
/// `cargo test --workspace --all-targets --no-run` into [`target_dir`]: the build the test
/// command runs first, so under it this compiles nothing, and every binary has the
/// workspace's features (a `cargo build -p` would compile the binary and its dependencies
/// again with one package's features).
///
/// A test crate cannot name another package's binary with `env!("CARGO_BIN_EXE_…")`,
/// hence the build. Cargo releases its build lock before it runs test binaries, so this
/// does not deadlock under `cargo test`.
///
/// # Panics
/// If the build fails.
pub fn petrel_repo_bin() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BIN, "petrel-repo")
}

/// The device agent binary `petrel`, built like [`petrel_repo_bin`].
pub fn petrel_bin() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BIN, "petrel")
}

/// The `petrel-server` binary, built like [`petrel_repo_bin`].
pub fn petrel_server_bin() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&BIN, "petrel-server")
}

fn built<'a>(cell: &'a OnceLock<Result<PathBuf, String>>, bin: &str) -> &'a Path {
    let r = cell.get_or_init(|| {
        let cargo: OsString = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let target = target_dir();
        let release = profile_dir().file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args([
                "test",
                "--quiet",
                "--workspace",
                "--all-targets",
                "--no-run",
            ])
            .arg("--target-dir")
            .arg(&target);
        if release {
            cmd.arg("--release");
        }
        let out = run_with_timeout(&mut cmd, Duration::from_secs(1200))
            .map_err(|e| format!("building {bin}: {e}"))?;
        if !out.status.success() {
            return Err(format!("building {bin} failed: {}", describe(&out)));
        }
        let path = target
            .join(if release { "release" } else { "debug" })
            .join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
        if !path.exists() {
            return Err(format!("built {bin} but {} is missing", path.display()));
        }
        Ok(path)
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `petrel-repo ARGS` (with [`CHILD_TIMEOUT`]) and returns its output, whatever its
/// exit status. `RUST_LOG` is cleared so stderr holds only what the tool itself says.
pub fn petrel_repo<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(petrel_repo_bin());
    cmd.args(args).env_remove("RUST_LOG");
    let shown = format!("{cmd:?}");
    run_with_timeout(&mut cmd, CHILD_TIMEOUT).unwrap_or_else(|e| panic!("{shown}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Building repositories with the petrel-repo library
// ---------------------------------------------------------------------------------------

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: impl std::fmt::Display) -> T {
    r.unwrap_or_else(|e| panic!("petrel-repo: {what}: {e}"))
}

/// A repository workspace built through the `petrel-repo` library, plus what the tests
/// need to check clients against it: every target's bytes and the role listing it.
///
/// Every method panics on error (these are test fixtures). Changes are staged; nothing
/// reaches the tree until [`PetrelRepo::publish`].
pub struct PetrelRepo {
    ws: Workspace,
    sources: PathBuf,
    files: BTreeMap<String, Vec<u8>>,
    roles: BTreeMap<String, String>,
}

impl PetrelRepo {
    /// Creates a workspace in `dir` (created if missing) with one fresh ed25519 key per
    /// top-level role and default expiries. Source files are written under
    /// `dir/sources`; the tree is `dir/tree`.
    pub fn init(dir: &Path, consistent_snapshot: bool) -> PetrelRepo {
        PetrelRepo::init_with(
            dir,
            Settings {
                consistent_snapshot,
                ..Settings::default()
            },
        )
    }

    /// [`PetrelRepo::init`] with these settings (a `[layout]`, bin sizes).
    pub fn init_with(dir: &Path, settings: Settings) -> PetrelRepo {
        let opts = InitOptions {
            settings,
            ..InitOptions::default()
        };
        let ws = ok(editor::init(dir, &opts), "init");
        let sources = dir.join("sources");
        ok(std::fs::create_dir_all(&sources), sources.display());
        PetrelRepo {
            ws,
            sources,
            files: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// The published static tree (`<dir>/tree`).
    pub fn tree(&self) -> PathBuf {
        self.ws.tree_dir()
    }

    /// The tree's first root, `tree/metadata/1.root.json`: what a client is shipped with.
    pub fn trusted_root(&self) -> PathBuf {
        self.tree().join("metadata/1.root.json")
    }

    /// Every target added so far: name → content.
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// The role listing `target` (a hashed bin's name for binned targets).
    pub fn role_of(&self, target: &str) -> &str {
        self.roles
            .get(target)
            .unwrap_or_else(|| panic!("{target} was never added"))
    }

    /// A fresh ed25519 key saved in the workspace's key directory; returns its public part.
    pub fn generate_key(&self) -> Key {
        let (k, pem) = ok(KeyType::Ed25519.generate(), "generating a key");
        ok(self.ws.save_private_key(&k, &pem), "saving a key");
        k.public_key().clone()
    }

    /// Delegates `paths` from `from` to a new role `to` with one fresh key.
    pub fn delegate(&mut self, from: &str, to: &str, paths: &[&str], terminating: bool) {
        let key = self.generate_key();
        let mut ed = Editor::new(&self.ws);
        ok(
            ed.delegate(DelegationSpec {
                from: from.into(),
                name: to.into(),
                paths: Some(paths.iter().map(|p| p.to_string()).collect()),
                hash_prefixes: None,
                keys: vec![key],
                threshold: 1,
                terminating,
                extra: Unrecognized::new(),
            }),
            format!("delegate {from} -> {to}"),
        );
        ok(ed.save(), "save");
    }

    /// Delegates everything `from` is trusted for to `bins` succinct hashed bins (TAP 15)
    /// named `<prefix>-<hex>`, sharing one fresh key.
    pub fn delegate_bins(&mut self, from: &str, prefix: &str, bins: u64) {
        let key = self.generate_key();
        let mut ed = Editor::new(&self.ws);
        ok(
            ed.delegate_bins(BinsSpec {
                from: from.into(),
                bins,
                name_prefix: prefix.into(),
                keys: vec![key],
                threshold: 1,
            }),
            format!("delegate {from} -> {bins} bins {prefix}-*"),
        );
        ok(ed.save(), "save");
    }

    /// Adds target `name` with `content` to `role` (or to the hashed bin `role` delegates
    /// it to); returns the role that lists it.
    pub fn add(&mut self, role: &str, name: &str, content: &[u8]) -> String {
        let src = self.sources.join(name);
        ok(
            std::fs::create_dir_all(src.parent().expect("has a parent")),
            src.display(),
        );
        ok(std::fs::write(&src, content), src.display());
        let mut ed = Editor::new(&self.ws);
        let added = ok(
            ed.add_targets(
                &[SourceFile {
                    path: src,
                    name: name.into(),
                }],
                &AddOptions {
                    role: Some(role.into()),
                    custom: None,
                },
            ),
            format!("add {name} to {role}"),
        );
        ok(ed.save(), "save");
        let listed = added[0].role.clone();
        self.files.insert(name.into(), content.to_vec());
        self.roles.insert(name.into(), listed.clone());
        listed
    }

    /// Lists target `name` in `role` **without** the checks `add` makes (that every
    /// delegation on the way allows the name, that it has a valid form), to build hostile
    /// trees: e.g. a delegated role listing a target outside its paths, which clients must
    /// ignore. The content goes to the content store so `publish` places it in the tree.
    pub fn add_unchecked(&mut self, role: &str, name: &str, content: &[u8]) {
        let src = self.sources.join(format!("unchecked-{}", self.files.len()));
        ok(std::fs::write(&src, content), src.display());
        let content_dir = self.ws.content_dir();
        let stored = ok(editor::hash_into_store(&src, &content_dir), "content store");
        let mut hashes = Hashes::new();
        hashes.insert("sha256".into(), stored.sha256);
        hashes.insert("sha512".into(), stored.sha512);
        let mut ed = Editor::new(&self.ws);
        ok(ed.targets_mut(role), role).targets.insert(
            name.into(),
            TargetFile {
                length: stored.length,
                hashes,
                custom: None,
                unrecognized: Unrecognized::new(),
            },
        );
        ok(ed.save(), "save");
        self.files.insert(name.into(), content.to_vec());
        self.roles.insert(name.into(), role.into());
    }

    /// Replaces every root key with one fresh key (root v+1 is signed by the old and the
    /// new key when published). Returns the new key id.
    pub fn rotate_root(&mut self) -> KeyId {
        let mut ed = Editor::new(&self.ws);
        let old: Vec<KeyId> = ok(ed.root(), "root")
            .role("root")
            .expect("root role")
            .keyids
            .clone();
        let new = self.generate_key();
        let id = new.key_id();
        ok(
            ed.rotate(&RotateSpec {
                role: "root".into(),
                add: vec![new],
                remove: old,
                threshold: None,
            }),
            "rotate root",
        );
        ok(ed.save(), "save");
        id
    }

    /// Signs everything staged and writes the tree.
    pub fn publish(&mut self) -> PublishReport {
        ok(publish::publish(&self.ws, Refresh::default()), "publish")
    }
}

// ---------------------------------------------------------------------------------------
// A static HTTP server
// ---------------------------------------------------------------------------------------

/// One request the [`StaticServer`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request target as sent (still percent-encoded).
    pub path: String,
    /// The status code answered.
    pub status: u16,
}

/// A canned answer for one path, set with [`StaticServer::respond_with`].
#[derive(Clone, Debug)]
struct Canned {
    status: u16,
    body: Vec<u8>,
}

#[derive(Default)]
struct ServerState {
    log: Mutex<Vec<RequestRecord>>,
    canned: Mutex<HashMap<String, Canned>>,
    stop: AtomicBool,
    active: AtomicUsize,
}

/// A minimal static file server for tests: HTTP/1.1 `GET`/`HEAD`, one response per
/// connection (`Connection: close`), on `127.0.0.1` and an ephemeral port.
///
/// * `GET /a/b.json` serves `<root>/a/b.json`; directories, missing files and anything that
///   could leave the root (`..`, encoded `/` or `\`, NUL) get 404.
/// * Every request is logged ([`StaticServer::requests`]), e.g. to assert which metadata a
///   client fetched (lazy delegation search) or did not.
/// * [`StaticServer::respond_with`] overrides the answer for one path (a status and body),
///   for fault injection.
/// * At most 32 connections are served at once (more get 503); each has a 10 s read/write
///   timeout. Dropping the server stops it.
pub struct StaticServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    thread: Option<JoinHandle<()>>,
}

const MAX_CONNECTIONS: usize = 32;
const MAX_HEAD: usize = 16 * 1024;

impl StaticServer {
    /// Serves the directory `root` on `127.0.0.1:0`.
    pub fn serve(root: impl Into<PathBuf>) -> io::Result<StaticServer> {
        let root: PathBuf = root.into();
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ServerState::default());
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("static-server-{}", addr.port()))
            .spawn(move || accept_loop(listener, root, st))?;
        Ok(StaticServer {
            addr,
            state,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/` followed by `path` (without a leading `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.log.lock().expect("log lock").clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.state.log.lock().expect("log lock").clear();
    }

    /// From now on answers `path` (e.g. `/metadata/timestamp.json`) with `status` and `body`
    /// instead of the file.
    pub fn respond_with(&self, path: &str, status: u16, body: impl Into<Vec<u8>>) {
        self.state.canned.lock().expect("canned lock").insert(
            path.to_string(),
            Canned {
                status,
                body: body.into(),
            },
        );
    }

    /// Drops every canned answer.
    pub fn clear_responses(&self) {
        self.state.canned.lock().expect("canned lock").clear();
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, root: PathBuf, state: Arc<ServerState>) {
    let root = Arc::new(root);
    while !state.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let busy = state.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS;
                let (root, st) = (Arc::clone(&root), Arc::clone(&state));
                let spawned = std::thread::Builder::new()
                    .name("static-server-conn".into())
                    .spawn(move || {
                        let _ = handle_connection(stream, &root, &st, busy);
                        st.active.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    state.active.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn handle_connection(
    stream: TcpStream,
    root: &Path,
    state: &ServerState,
    busy: bool,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(MAX_HEAD as u64);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers; the body of GET/HEAD is ignored.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (status, body) = if busy {
        (503, b"busy\n".to_vec())
    } else if method != "GET" && method != "HEAD" {
        (405, b"method not allowed\n".to_vec())
    } else if let Some(c) = state
        .canned
        .lock()
        .expect("canned lock")
        .get(target.split('?').next().unwrap_or(""))
        .cloned()
    {
        (c.status, c.body)
    } else {
        match resolve(root, &target).and_then(|p| std::fs::read(p).ok()) {
            Some(bytes) => (200, bytes),
            None => (404, b"not found\n".to_vec()),
        }
    };
    state.log.lock().expect("log lock").push(RequestRecord {
        method: method.clone(),
        path: target,
        status,
    });
    let reason = match status {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut w = &stream;
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        w.write_all(&body)?;
    }
    w.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Maps a request target to a regular file below `root`, refusing anything that could
/// escape it.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let path = path.strip_prefix('/')?;
    let mut out = root.to_path_buf();
    for seg in path.split('/') {
        let seg = percent_decode(seg)?;
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || seg.contains(['/', '\\', '\0'])
            || !matches!(
                Path::new(&seg).components().next(),
                Some(Component::Normal(_))
            )
        {
            return None;
        }
        out.push(seg);
    }
    let meta = std::fs::symlink_metadata(&out).ok()?;
    meta.is_file().then_some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------
// nginx serving a tree
// ---------------------------------------------------------------------------------------

/// The nginx binary for the end-to-end tests against nginx, found once per test process:
/// `PETREL_NGINX` if set (it must then be an executable file), else `nginx` on `PATH`,
/// else `/usr/sbin/nginx`.
///
/// Returns `None`, after printing a notice on stderr, when there is no nginx and the
/// environment variable `CI` is unset or empty: the caller then skips its test.
///
/// # Panics
/// When `PETREL_NGINX` names no executable file, or when there is no nginx and `CI` is
/// set: CI installs nginx with `scripts/ensure-nginx.sh` (run by `test.sh`), so a missing
/// nginx there is a broken setup, never a reason to skip.
pub fn nginx_bin() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("PETREL_NGINX").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "PETREL_NGINX={} is not a file (run scripts/ensure-nginx.sh to install nginx)",
                p.display()
            );
            return Some(p);
        }
        let on_path = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("nginx"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain([PathBuf::from("/usr/sbin/nginx")])
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p.as_path()),
        None if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => panic!(
            "nginx is required in CI but was not found (PETREL_NGINX unset, no nginx on PATH \
             or in /usr/sbin): run scripts/ensure-nginx.sh, as test.sh does"
        ),
        None => {
            eprintln!(
                "NOTICE: skipping an end-to-end test against nginx: no nginx found \
                 (set PETREL_NGINX or run scripts/ensure-nginx.sh; with CI set this fails)"
            );
            None
        }
    }
}

/// `nginx -V` of `bin` (version and configure arguments, which nginx prints on stderr).
fn nginx_build_info(bin: &Path) -> io::Result<String> {
    let out = run_with_timeout(Command::new(bin).arg("-V"), Duration::from_secs(10))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} -V failed: {}",
            bin.display(),
            describe(&out)
        )));
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Ok(text)
}

/// `(major, minor, patch)` from `nginx version: nginx/1.22.1`.
fn nginx_version(build_info: &str) -> Option<(u32, u32, u32)> {
    let v = build_info.split("nginx/").nth(1)?;
    let v: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The recommended nginx configuration for a Petrel tree, as documented in
/// `docs/server.md`: `docs/nginx/petrel-http.conf` (inside `http {}`) and
/// `docs/nginx/petrel-tree.conf` (inside `server {}`). [`Nginx`] includes these files
/// as they are, so the tests check exactly what the documentation recommends.
pub fn nginx_snippets() -> (PathBuf, PathBuf) {
    let dir = workspace_root().join("docs/nginx");
    (dir.join("petrel-http.conf"), dir.join("petrel-tree.conf"))
}

/// nginx serving a Petrel tree on `127.0.0.1:<ephemeral port>` with the configuration
/// `docs/server.md` recommends ([`nginx_snippets`]): no Petrel code on the server side.
///
/// * The port: the test binds a listening socket on `127.0.0.1:0` itself and hands it to
///   nginx as an inherited socket (nginx's `NGINX="<fd>;"` environment variable, the
///   mechanism of its binary upgrade; the socket becomes the child's fd 0), with
///   `listen 127.0.0.1:<that port>` in the configuration. nginx adopts the socket instead
///   of binding a new one, so no other process can take the port in between.
/// * A foreground master with one worker (`daemon off`), in its own process group, with
///   its pid file, error log, access log and temporary directories in a private temporary
///   directory: nothing outside it is written, and it needs no privileges. (With
///   `master_process off` nginx 1.22 dereferences a null pointer when it adopts an
///   inherited socket and dies with SIGSEGV, hence the master.) When started as root the
///   worker runs as root too, to read the test's private (mode 0700) directories.
/// * The access log records `METHOD URI STATUS BYTES` per line ([`Nginx::requests`]).
/// * Startup is awaited with a bounded loop (10 s); dropping the value kills nginx.
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves the tree `root` (the directory holding `metadata/` and `targets/`) with the
    /// nginx binary `bin` (see [`nginx_bin`]).
    pub fn serve(bin: &Path, root: &Path) -> io::Result<Nginx> {
        let root = root
            .canonicalize()
            .map_err(|e| io::Error::new(e.kind(), format!("tree root {}: {e}", root.display())))?;
        let info = nginx_build_info(bin)?;
        let dir = tempfile::Builder::new().prefix("petrel-nginx").tempdir()?;
        let base = dir.path().canonicalize()?;
        for sub in [
            "tmp/body",
            "tmp/proxy",
            "tmp/fastcgi",
            "tmp/uwsgi",
            "tmp/scgi",
        ] {
            std::fs::create_dir_all(base.join(sub))?;
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (http_snippet, tree_snippet) = nginx_snippets();
        let conf = nginx_config(&info, &base, &root, addr, &http_snippet, &tree_snippet)?;
        let conf_path = base.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;

        let mut cmd = Command::new(bin);
        cmd.arg("-p").arg(&base).arg("-c").arg(&conf_path);
        // `-e` (nginx ≥ 1.19.5) keeps even the earliest startup messages out of the
        // system's log directory.
        if nginx_version(&info).is_some_and(|v| v >= (1, 19, 5)) {
            cmd.arg("-e").arg(base.join("error.log"));
        }
        // Its own process group, so that dropping it stops the master and its worker.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.env("NGINX", "0;")
            // The listening socket becomes fd 0: the standard streams are the only
            // descriptors a child inherits (everything else is close-on-exec).
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(base.join("stderr.log"))?);
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", bin.display())))?;
        let mut nginx = Nginx { child, addr, dir };
        nginx.wait_ready()?;
        // The log starts with the requests of the test, not the readiness probe.
        nginx.clear_requests();
        Ok(nginx)
    }

    /// Waits (at most 10 s) until nginx answers `GET /` with its 404.
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "nginx exited at startup ({}): {}",
                    describe_status(status),
                    self.logs()
                )));
            }
            if let Ok(head) = probe(self.addr) {
                if head.starts_with("HTTP/1.1 404") {
                    // nginx logs the probe after it has answered: wait for that line, then
                    // forget it, so `requests()` holds only the test's own requests.
                    let log = self.dir.path().join("access.log");
                    let until = Instant::now() + Duration::from_secs(5);
                    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) == 0
                        && Instant::now() < until
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    self.clear_requests();
                    return Ok(());
                }
                return Err(io::Error::other(format!(
                    "nginx answered GET / with {head:?}, not 404: {}",
                    self.logs()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nginx did not answer within 10 s: {}", self.logs()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/` followed by `path` (without a leading `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Every request in nginx's access log so far, in order (nginx writes a line when a
    /// response is finished).
    pub fn requests(&self) -> Vec<RequestRecord> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                let mut f = line.split(' ');
                let (method, path, status) = (f.next()?, f.next()?, f.next()?);
                Some(RequestRecord {
                    method: method.to_string(),
                    path: path.to_string(),
                    status: status.parse().ok()?,
                })
            })
            .collect()
    }

    /// Forgets the access log so far.
    pub fn clear_requests(&self) {
        // nginx appends (O_APPEND), so truncating in place is safe.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.dir.path().join("access.log"));
    }

    /// nginx's error log and stderr, for assertion messages.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "\n--- nginx error.log ---\n{}\n--- nginx stderr ---\n{}",
            read("error.log"),
            read("stderr.log")
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the group (master and worker: a fast shutdown), SIGKILL after 5 s.
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                // The worker leaves with its master; make sure of it.
                signal("-KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET /` on a fresh connection (2 s timeouts); returns the status line.
fn probe(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut line = String::new();
    BufReader::new(s).take(1024).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// Whether this process runs as root (the owner of `/proc/self`).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The configuration [`Nginx`] runs: the documented snippets plus a private prefix.
fn nginx_config(
    build_info: &str,
    base: &Path,
    root: &Path,
    addr: SocketAddr,
    http_snippet: &Path,
    tree_snippet: &Path,
) -> io::Result<String> {
    let quoted = |p: &Path| -> io::Result<String> {
        let s = p
            .to_str()
            .filter(|s| !s.contains(['"', '\\', '$', '\n']))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "path {} cannot be written into an nginx configuration",
                        p.display()
                    ),
                )
            })?;
        Ok(format!("\"{s}\""))
    };
    let b = |sub: &str| quoted(&base.join(sub));
    // Temporary paths of modules this nginx was built with (nginx-light lacks some).
    let mut temp_paths = format!("    client_body_temp_path {};\n", b("tmp/body")?);
    for module in ["proxy", "fastcgi", "uwsgi", "scgi"] {
        if !build_info.contains(&format!("--without-http_{module}_module")) {
            temp_paths.push_str(&format!(
                "    {module}_temp_path {};\n",
                b(&format!("tmp/{module}"))?
            ));
        }
    }
    // As root the master would run its worker as `nobody`, which cannot read the test's
    // mode-0700 temporary directories.
    let user = if is_root() { "user root;\n" } else { "" };
    Ok(format!(
        "daemon off;
{user}worker_processes 1;
pid {pid};
error_log {error_log} notice;

events {{
    worker_connections 256;
}}

http {{
    include {http_snippet};
{temp_paths}    log_format petrel '$request_method $request_uri $status $body_bytes_sent';
    access_log {access_log} petrel;
    sendfile on;

    server {{
        listen {addr};
        root {root};
        include {tree_snippet};
    }}
}}
",
        pid = b("nginx.pid")?,
        error_log = b("error.log")?,
        access_log = b("access.log")?,
        http_snippet = quoted(http_snippet)?,
        tree_snippet = quoted(tree_snippet)?,
        root = quoted(root)?,
    ))
}

// ---------------------------------------------------------------------------------------
// A small file system (a full disk)
// ---------------------------------------------------------------------------------------

/// A tmpfs mounted on a directory (root only; tests skip without it), unmounted on drop (even on panic).
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`1m`, `4m`) on `dir`. `None` (after printing why) when
    /// it cannot be mounted and this is not root; as root it must work.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            other => {
                assert!(
                    !is_root(),
                    "running as root, but mounting a tmpfs on {} failed: {other:?}",
                    dir.display()
                );
                eprintln!("skipped: cannot mount tmpfs (not root?): {other:?}");
                None
            }
        }
    }

    /// Remounts it with a new size.
    pub fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .output()
            .expect("mount -o remount");
        assert!(out.status.success(), "remount: {out:?}");
    }

    /// The bytes free in it.
    pub fn free(&self) -> u64 {
        petrel_client::agent::stage::free_space(&self.dir).expect("statvfs")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"a").unwrap();
        assert!(resolve(dir.path(), "/a.txt").is_some());
        assert!(resolve(dir.path(), "/a.txt?x=1").is_some());
        for bad in [
            "/../a.txt",
            "/%2e%2e/a.txt",
            "/x%2Fa.txt",
            "//a.txt",
            "/.",
            "a.txt",
            "/%zz",
            "/",
        ] {
            assert!(resolve(dir.path(), bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn server_serves_files_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f.bin"), [0u8, 1, 2, 255]).unwrap();
        let server = StaticServer::serve(dir.path()).unwrap();
        let get = |path: &str| -> (u16, Vec<u8>) {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).unwrap();
            let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8_lossy(&resp[..split]).to_string();
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            (status, resp[split + 4..].to_vec())
        };
        assert_eq!(get("/d/f.bin"), (200, vec![0, 1, 2, 255]));
        assert_eq!(get("/d/missing").0, 404);
        assert_eq!(get("/d").0, 404);
        server.respond_with("/d/f.bin", 500, "boom");
        assert_eq!(get("/d/f.bin"), (500, b"boom".to_vec()));
        let log = server.requests();
        assert_eq!(log.len(), 4);
        assert_eq!(log[0].status, 200);
        assert_eq!(log[3].status, 500);
        assert!(server.url("/metadata/").ends_with("/metadata/"));
    }

    #[test]
    fn timeout_kills_the_child() {
        let start = Instant::now();
        let err = run_with_timeout(
            Command::new("sh").args(["-c", "echo started; sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("started"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}

//! The device agent (`petrel`, over HTTP through a fault-injecting proxy) under a faulty network, server and device installs nothing wrong, keeps its trusted metadata, exits with the status naming the problem, blames no campaign for a hiccup, never hangs on a command, and the next clean run resumes and installs.

// Every test builds a repository with the repo tool's library (the player artifact, 3 MiB,
// signed by the delegated role `vendor`; the campaign by the delegated role `releases`;
// the group manifest and the assignment bins by top-level targets), serves it with the
// real `petrel-server` (which honours `Range`) behind a `FaultProxy`, and runs the real
// `petrel` binary against it on a device with player 1.0 installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use petrel_client::agent::inventory::read_dir_inventory;
use petrel_client::agent::AgentState;
use petrel_client::decide::{human_bytes, InstalledApp, Inventory};
use petrel_client::manifest::{assign_target_path, sha256_hex};
use petrel_client::report::{Outbox, ReportResult};
use petrel_tests::fault_proxy::{Fault, FaultProxy};
use petrel_tests::scenario::{every_file, Scenario};
use petrel_tests::{describe, petrel_bin, petrel_server_bin, run_with_timeout, Tmpfs};

const PLAYER: &str = "acme.player";
const NEW: &str = "apps/acme.player/1.1/acme.player.bin";
const MIB: u64 = 1024 * 1024;
/// The new player: large enough that a cut mid-body leaves a partial download.
const ARTIFACT_LEN: u64 = 3 * MIB;
const KIOSK: &str = "type = \"kiosk\"\nvendor = \"acme\"\nutc_offset_minutes = 0\nlocale = \"en\"";

/// Proxy patterns (request paths; consistent snapshots put versions and hashes in names).
const ARTIFACT: &str = "/targets/apps/*";
const TIMESTAMP: &str = "/metadata/timestamp.json";
/// The snapshot a Petrel device reads: the snapshot tree's head (docs/scale.md).
const SNAPSHOT: &str = "/metadata/snapshot-tree/*.head.json";
const VENDOR_ROLE: &str = "/metadata/*vendor.json";
const RELEASES_ROLE: &str = "/metadata/*releases.json";
const GROUP_MANIFEST: &str = "/targets/groups/*";
const CAMPAIGN_MANIFEST: &str = "/targets/campaigns/*";
const ASSIGN_BIN: &str = "/targets/assign/*";

/// A proxy rule: path pattern, fault, and how many requests it applies to (`None`: every
/// request until the faults are cleared).
type Rule<'a> = (&'a str, Fault, Option<u32>);

/// The HTTP transport retries a transient failure 3 times (4 attempts) while no byte has
/// arrived; a fault injected this many times outlasts those retries.
const OUTLASTS_RETRIES: u32 = 4;

/// Pseudo-random bytes (xorshift), different per seed.
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

// ---------------------------------------------------------------------------------------
// petrel-server as the upstream
// ---------------------------------------------------------------------------------------

/// `petrel-server serve --listen 127.0.0.1:0` on a tree, killed (its process group) on drop.
struct PetrelServer {
    child: Child,
    url: String,
    /// Its access log (stderr lines), as they arrive.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl PetrelServer {
    fn serve(tree: &Path) -> PetrelServer {
        let mut cmd = Command::new(petrel_server_bin());
        cmd.args(["serve", "--root"])
            .arg(tree)
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--access-log"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("start petrel-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut first = String::new();
            let _ = lines.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining (bounded by the server's life).
            let _ = std::io::copy(&mut lines, &mut std::io::sink());
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            // Bounded by the server's life: ends when it is killed.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = PetrelServer {
            child,
            url: String::new(),
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("petrel-server printed its address within 20 s");
        server.url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("petrel-server said {line:?}"))
            .to_string();
        server
    }
}

impl Drop for PetrelServer {
    fn drop(&mut self) {
        // The server leads its own group (process_group(0)): -pid is exactly what we started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The repository, the server, the proxy and the devices
// ---------------------------------------------------------------------------------------

/// A repository served through a fault proxy. Fields drop in order: proxy, server, then the
/// scenario's temporary directory.
struct Fleet {
    proxy: FaultProxy,
    server: PetrelServer,
    s: Scenario,
    old: Vec<u8>,
    new: Vec<u8>,
}

/// Group kiosk-eu revision 1 (player 1.1) with `devices` assigned, campaign `player`
/// (no consent, no windows) signed by the delegated role `releases`, the player signed by
/// the delegated role `vendor`; published, served and proxied.
fn fleet(devices: &[&str]) -> Fleet {
    let mut s = Scenario::new();
    s.repo()
        .delegate("targets", "vendor", &["apps/*/*/*"], true);
    s.repo()
        .delegate("targets", "releases", &["campaigns/*"], true);
    let new = noise(11, ARTIFACT_LEN as usize);
    assert_eq!(s.repo().add("vendor", NEW, &new), "vendor");
    s.group(&format!(
        "kind = \"group\"\nschema_version = 1\nid = \"kiosk-eu\"\nrevision = 1\n\n[apps.{PLAYER:?}]\nversion = \"1.1\"\ntarget = {NEW:?}\n"
    ));
    s.assign("kiosk-eu", devices, false, &[]);
    s.try_create_campaign(
        r#"kind = "campaign"
schema_version = 1
id = "player"
revision = 1
state = "active"

[notice.en]
title = "Player 1.1"
body = "Faster."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = { id = "kiosk-eu", revision = 1 }
"#,
        Some("releases"),
    )
    .unwrap_or_else(|e| panic!("campaign create: {e}"));
    s.publish();
    let server = PetrelServer::serve(&s.tree());
    let proxy = FaultProxy::start(&server.url).expect("fault proxy");
    Fleet {
        proxy,
        server,
        s,
        old: noise(7, 64 * 1024),
        new,
    }
}

/// The default inventory section.
const DIR_INVENTORY: &str = "[inventory]\ndir = \"apps\"\n";

impl Fleet {
    /// A fresh device `id` (trusted root only, nothing fetched yet, player 1.0 installed),
    /// configured to reach the repository through the proxy, with `inventory` as its
    /// inventory section and `extra` appended to its device.toml.
    fn device_with(&self, id: &str, inventory: &str, extra: &str) -> Dev {
        let d = self.s.device(id, KIOSK);
        d.install(PLAYER, "1.0", &self.old);
        let dir = d.dir().to_path_buf();
        let config = dir.join("device.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"state\"\nprofile = \"profile.toml\"\n\n[repository]\nmetadata_url = {:?}\ntargets_url = {:?}\nassign_bin_digits = 2\n\n{inventory}\n{extra}",
                self.proxy.url("/metadata"),
                self.proxy.url("/targets")
            ),
        )
        .expect("device.toml");
        Dev {
            id: id.to_string(),
            apps: dir.join("apps"),
            state: dir.join("state"),
            config,
            dir,
        }
    }

    fn device(&self, id: &str) -> Dev {
        self.device_with(id, DIR_INVENTORY, "")
    }

    /// Applies `rules` (pattern, fault, times; `None`: every request) to the proxy.
    fn inject(&self, rules: &[Rule]) {
        for (pattern, fault, times) in rules {
            match times {
                Some(n) => self.proxy.inject_times(pattern, fault.clone(), *n),
                None => self.proxy.inject(pattern, fault.clone()),
            }
        }
    }

    /// The set installed by hand: player 1.0 with its bytes.
    fn old_set(&self) -> Inventory {
        set("1.0", &self.old)
    }

    /// The set the campaign installs: player 1.1 with the signed bytes.
    fn new_set(&self) -> Inventory {
        set("1.1", &self.new)
    }

    /// The published bytes of metadata file `name` (e.g. `timestamp.json`, `1.vendor.json`).
    fn published(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.s.tree().join("metadata").join(name)).expect("published metadata")
    }

    /// Asserts that every file in the device's trusted metadata store is byte for byte a
    /// file the repository published: nothing a fault produced was kept as trusted.
    fn assert_trusted_metadata_intact(&self, dev: &Dev) {
        let published: Vec<Vec<u8>> = every_file(&self.s.tree().join("metadata"))
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        let stored = every_file(&dev.state.join("metadata"));
        assert!(
            stored.iter().any(|(p, _)| p.ends_with("root.json")),
            "the trusted root is still there: {stored:?}"
        );
        for (path, bytes) in stored {
            // The device's own record of the role versions it trusted (rollback floors).
            if path.ends_with("snapshot-tree/versions.json") {
                continue;
            }
            assert!(
                published.contains(&bytes),
                "{} in the trusted metadata store is not a file the repository published",
                path.display()
            );
        }
    }
}

fn set(version: &str, bytes: &[u8]) -> Inventory {
    [(
        PLAYER.to_string(),
        InstalledApp {
            version: version.into(),
            sha256: Some(sha256_hex(bytes)),
        },
    )]
    .into()
}

/// One device: its directory, configuration, inventory directory and state directory.
struct Dev {
    id: String,
    dir: PathBuf,
    config: PathBuf,
    apps: PathBuf,
    state: PathBuf,
}

/// One finished `petrel` command.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
    shown: String,
}

impl Run {
    /// Stdout and stderr together.
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (took {:?})", self.shown, self.took)
    }
}

impl Dev {
    /// `petrel --config device.toml ARGS`, killed after 60 s.
    fn petrel(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(petrel_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("PETREL_CONFIG")
            .current_dir(&self.dir);
        let started = Instant::now();
        let out = run_with_timeout(&mut cmd, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("petrel {args:?} on {}: {e}", self.id));
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
            shown: format!(
                "petrel {} on {}: {}",
                args.join(" "),
                self.id,
                describe(&out)
            ),
        }
    }

    /// `petrel update --json`, which must exit 0 and install the new set.
    fn update_installs(&self, fl: &Fleet) -> serde_json::Value {
        let r = self.petrel(&["update", "--json"]);
        assert_eq!(r.code, Some(0), "{r}");
        let v: serde_json::Value =
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r}"));
        assert_eq!(v["installs"][0]["result"], "installed", "{r}");
        assert_eq!(self.inventory(), fl.new_set(), "{r}");
        assert!(self.partials().is_empty(), "{:?}", self.partials());
        v
    }

    /// The actual inventory (what is installed, with the hashes of the installed bytes).
    fn inventory(&self) -> Inventory {
        read_dir_inventory(&self.apps).unwrap_or_else(|e| panic!("inventory: {e}"))
    }

    /// `state.json`.
    fn state_file(&self) -> AgentState {
        AgentState::load(&self.state.join("state.json")).expect("state.json")
    }

    /// Partial downloads (`.petrel-part-*`) under `staging/`, with their sizes.
    fn partials(&self) -> Vec<(PathBuf, u64)> {
        files_under(&self.state.join("staging"))
            .into_iter()
            .filter(|(p, _)| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".petrel-part-"))
            })
            .collect()
    }

    /// The reports queued in the outbox: (result, reason).
    fn reports(&self) -> Vec<(ReportResult, String)> {
        Outbox::open(self.state.join("outbox"))
            .expect("outbox")
            .pending()
            .expect("outbox readable")
            .into_iter()
            .map(|r| (r.signed.result, r.signed.reason.clone()))
            .collect()
    }

    fn failed_reports(&self) -> Vec<String> {
        self.reports()
            .into_iter()
            .filter(|(r, _)| *r == ReportResult::Failed)
            .map(|(_, why)| why)
            .collect()
    }
}

/// Every regular file under `dir` (recursively) with its size; empty if `dir` is missing.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    for _ in 0..10_000 {
        let Some(d) = stack.pop() else { break };
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => out.push((p, m.len())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Replaces one hex digit inside the first signature of a metadata file by another:
/// still valid JSON, but the signature no longer verifies.
fn signature_flip(bytes: &[u8]) -> Fault {
    let text = std::str::from_utf8(bytes).expect("metadata is UTF-8");
    let key = text.find("\"sig\"").expect("a signature");
    let open = key + 5 + text[key + 5..].find('"').expect("the signature's value");
    let at = open + 1 + 10;
    let old = bytes[at];
    assert!(old.is_ascii_hexdigit(), "{:?}", &text[open..at + 2]);
    Fault::Corrupt {
        at: at as u64,
        bytes: vec![if old == b'0' { b'1' } else { b'0' }],
    }
}

/// A few bytes of `bytes` at `at`, inverted.
fn flipped(bytes: &[u8], at: u64, n: usize) -> Vec<u8> {
    bytes[at as usize..at as usize + n]
        .iter()
        .map(|b| !b)
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. A faulty network and a faulty server, one fault per test
// ---------------------------------------------------------------------------------------

/// One fault of the network or the server during a device's first `petrel update`.
struct NetFault {
    /// Proxy rules for the faulty run (cleared afterwards).
    rules: Vec<Rule<'static>>,
    /// The exit status of the faulty run.
    exit: i32,
    /// Whether the faulty run leaves a partial download that the next run resumes.
    resumes: bool,
    /// Texts the faulty run must print (stdout or stderr).
    says: Vec<String>,
}

/// Builds a fleet, injects the fault `make` describes into a fresh device's first
/// `petrel update`, and checks, for the faulty run: its exit status, nothing
/// installed (the inventory is exactly the old set by hashes, the inventory directory byte
/// for byte as before), nothing unverified recorded as staged, the trusted metadata store
/// holds only published files; then a clean `petrel check` succeeds and a clean
/// `petrel update` installs the new set, resuming a partial download with
/// `Range: bytes=N-` (N the bytes kept) and transferring only the rest. Catches a fault
/// that ends in exit 0 or the wrong status, installs or stages unverified bytes, leaves
/// the trusted metadata unusable or holding what the fault produced, or counts an
/// install attempt.
fn network_fault(make: impl FnOnce(&Fleet) -> NetFault) {
    let fl = fleet(&["kiosk-1"]);
    let f = make(&fl);
    let dev = fl.device("kiosk-1");
    let before = every_file(&dev.apps);

    fl.inject(&f.rules);
    let r = dev.petrel(&["update"]);
    fl.proxy.clear_faults();
    assert_eq!(r.code, Some(f.exit), "{r}");
    for s in &f.says {
        assert!(r.all().contains(s.as_str()), "{s:?} missing: {r}");
    }
    // A failed download is never introduced as "nothing to download".
    assert!(!r.stdout.contains("nothing to download"), "{r}");
    assert_eq!(dev.inventory(), fl.old_set(), "{r}");
    assert_eq!(
        every_file(&dev.apps),
        before,
        "the inventory directory changed: {r}"
    );
    assert!(
        !dev.state_file().staged.contains_key(NEW),
        "unverified bytes recorded as staged: {r}"
    );
    assert!(dev.state_file().attempts.is_empty(), "{r}");
    fl.assert_trusted_metadata_intact(&dev);
    let resume_at = if f.resumes {
        let partials = dev.partials();
        assert_eq!(
            partials.len(),
            1,
            "one partial download kept: {partials:?}\n{r}"
        );
        let n = partials[0].1;
        assert!(n > 0 && n < ARTIFACT_LEN, "partial of {n} bytes: {r}");
        Some(n)
    } else {
        None
    };

    let check = dev.petrel(&["check"]);
    assert_eq!(
        check.code,
        Some(0),
        "the trusted metadata still verifies: {check}"
    );

    fl.proxy.clear_requests();
    let v = dev.update_installs(&fl);
    if let Some(n) = resume_at {
        let fetched: Vec<_> = fl
            .proxy
            .requests()
            .into_iter()
            .filter(|q| q.path.starts_with("/targets/apps/"))
            .collect();
        assert_eq!(fetched.len(), 1, "{fetched:?}");
        assert_eq!(
            fetched[0].range.as_deref(),
            Some(format!("bytes={n}-").as_str()),
            "the next run resumes from the {n} bytes kept: {fetched:?}"
        );
        assert_eq!(fetched[0].status, Some(206), "{fetched:?}");
        // And the server's own access log shows the ranged request it answered.
        let want = format!(" range=bytes={n}-");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let logged = loop {
            let log = fl.server.log.lock().unwrap().clone();
            if let Some(l) = log.iter().find(|l| {
                l.contains("GET /targets/apps/") && l.contains(" 206 ") && l.ends_with(&want)
            }) {
                break Some(l.clone());
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            logged.is_some(),
            "no `GET /targets/apps/… 206 …{want}` line in the server's access log: {:?}",
            fl.server.log.lock().unwrap()
        );
        assert_eq!(
            v["staged"][0]["bytes"],
            serde_json::json!(ARTIFACT_LEN - n),
            "only the rest is transferred again: {v:#}"
        );
    }
}

fn interrupted() -> Vec<String> {
    vec!["download interrupted".into()]
}

// The truncation, reset and stall cases let the first response carry 1 MiB of the body and
// then keep failing the artifact for the rest of the run (every further response is cut
// before its first byte): a single cut is resumed inside the same run
// (`download_target_resumable` resumes up to 5 times), which would hide the cross-run
// resumption under test. They catch a partial dropped between runs (the next request
// would carry no Range) and a resume that transfers the whole artifact again.

#[test]
fn a_truncated_artifact_body_installs_nothing_exits_3_and_the_next_run_resumes_with_a_range() {
    network_fault(|_| NetFault {
        rules: vec![
            (ARTIFACT, Fault::Truncate { after: MIB }, Some(1)),
            (ARTIFACT, Fault::Truncate { after: 0 }, None),
        ],
        exit: 3,
        resumes: true,
        says: interrupted(),
    });
}

#[test]
fn a_connection_reset_mid_body_installs_nothing_exits_3_and_the_next_run_resumes_with_a_range() {
    network_fault(|_| NetFault {
        rules: vec![
            (ARTIFACT, Fault::Reset { after: MIB }, Some(1)),
            (ARTIFACT, Fault::Reset { after: 0 }, None),
        ],
        exit: 3,
        resumes: true,
        says: interrupted(),
    });
}

/// The agent's HTTP read timeout is 30 s (not configurable in device.toml), so this test
/// takes about 32 s: the stall must outlast it. (A stall shorter than the timeout is
/// waited out: the next test.) Catches a transport without a body read timeout (the run
/// hangs until the 60 s limit) and one that drops the bytes it had when it gives up.
#[test]
fn a_stall_longer_than_the_read_timeout_is_cut_off_exits_3_and_the_next_run_resumes_with_a_range() {
    network_fault(|_| NetFault {
        rules: vec![
            (
                ARTIFACT,
                Fault::Stall {
                    after: MIB,
                    duration: Duration::from_secs(45),
                },
                Some(1),
            ),
            (ARTIFACT, Fault::Truncate { after: 0 }, None),
        ],
        exit: 3,
        resumes: true,
        says: interrupted(),
    });
}

#[test]
fn a_stall_shorter_than_the_read_timeout_is_waited_out_and_the_update_installs() {
    let fl = fleet(&["kiosk-1"]);
    let dev = fl.device("kiosk-1");
    fl.proxy.inject_times(
        ARTIFACT,
        Fault::Stall {
            after: MIB,
            duration: Duration::from_secs(2),
        },
        1,
    );
    let r = dev.petrel(&["update"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.took >= Duration::from_secs(2), "the stall happened: {r}");
    assert_eq!(dev.inventory(), fl.new_set(), "{r}");
    assert!(
        fl.proxy.range_requests().is_empty(),
        "nothing was given up: {:?}",
        fl.proxy.requests()
    );
}

#[test]
fn http_500_on_timestamp_installs_nothing_keeps_trusted_metadata_and_exits_3() {
    network_fault(|_| NetFault {
        rules: vec![(TIMESTAMP, Fault::Status(500), None)],
        exit: 3,
        resumes: false,
        says: vec!["timestamp".into(), "500".into()],
    });
}

#[test]
fn http_500_on_snapshot_installs_nothing_keeps_trusted_metadata_and_exits_3() {
    network_fault(|_| NetFault {
        rules: vec![(SNAPSHOT, Fault::Status(500), None)],
        exit: 3,
        resumes: false,
        says: vec!["snapshot".into(), "500".into()],
    });
}

#[test]
fn http_404_on_snapshot_installs_nothing_keeps_trusted_metadata_and_exits_3() {
    network_fault(|_| NetFault {
        rules: vec![(SNAPSHOT, Fault::Status(404), Some(1))],
        exit: 3,
        resumes: false,
        says: vec!["snapshot".into(), "not found".into()],
    });
}

#[test]
fn http_404_on_timestamp_installs_nothing_keeps_trusted_metadata_and_exits_3() {
    network_fault(|_| NetFault {
        rules: vec![(TIMESTAMP, Fault::Status(404), Some(1))],
        exit: 3,
        resumes: false,
        says: vec!["timestamp".into(), "not found".into()],
    });
}

#[test]
fn http_500_on_the_delegated_role_of_the_artifact_installs_nothing_and_exits_3() {
    network_fault(|_| NetFault {
        rules: vec![(VENDOR_ROLE, Fault::Status(500), None)],
        exit: 3,
        resumes: false,
        says: vec!["vendor".into(), "waiting for the repository".into()],
    });
}

/// Wrong bytes in the artifact, whole and of the right length: the signed hashes do not
/// match. `download_target_resumable` discards them (a fresh download, so nothing to
/// retry from) and returns `LengthOrHash`, which staging (`StageError::download`) counts
/// as not temporary: `RunStatus::Failed`, exit status **1** ("a download was not the
/// signed bytes": an operator should look at the mirror or proxy), not 3. No install
/// attempt is counted, nothing is kept, and the next clean run downloads it again.
#[test]
fn wrong_bytes_in_the_artifact_install_nothing_exit_1_and_the_next_run_installs() {
    let at = 2 * MIB + 12_345;
    network_fault(|fl| NetFault {
        rules: vec![(
            ARTIFACT,
            Fault::Corrupt {
                at,
                bytes: flipped(&fl.new, at, 16),
            },
            None,
        )],
        exit: 1,
        resumes: false,
        says: vec!["download FAILED".into(), "not the signed bytes".into()],
    });
}

/// Wrong bytes in top-level metadata (one hex digit of timestamp.json's signature): the
/// refresh fails verification (`UpdateError::Signature`), which is not a network error
/// (`AgentError::exit_code`): exit status **1**, and the daemon waits for its next poll
/// instead of retrying in a tight loop. The stored timestamp must stay the published one.
/// (Wrong bytes in a delegated role only make the view incomplete: exit 3, see
/// `a_single_hiccup_on_the_role_signing_the_artifact_sends_no_failed_report_and_exits_3`.)
#[test]
fn wrong_bytes_in_timestamp_metadata_install_nothing_keep_trusted_metadata_and_exit_1() {
    network_fault(|fl| NetFault {
        rules: vec![(
            TIMESTAMP,
            signature_flip(&fl.published("timestamp.json")),
            None,
        )],
        exit: 1,
        resumes: false,
        says: vec!["timestamp".into(), "signature".into()],
    });
}

// ---------------------------------------------------------------------------------------
// 2. A hiccup on the role listing the artifact, or on the group manifest, is not the
//    campaign's failure
// ---------------------------------------------------------------------------------------

/// For each case, a fresh device's first `petrel update` meets `rules`: it must exit
/// `exit`, queue no `failed` report and install nothing; the next clean run installs and
/// reports `succeeded`, still with no `failed` report.
fn hiccups(fl: &Fleet, cases: &[(&str, Vec<Rule>, i32)]) {
    for (i, (what, rules, exit)) in cases.iter().enumerate() {
        let dev = fl.device(&format!("kiosk-{}", i + 1));
        fl.inject(rules);
        let r = dev.petrel(&["update"]);
        fl.proxy.clear_faults();
        assert_eq!(r.code, Some(*exit), "{what}: {r}");
        assert_eq!(dev.failed_reports(), Vec::<String>::new(), "{what}: {r}");
        if *exit == 3 {
            assert!(
                r.stdout.contains("waiting for the repository"),
                "{what}: {r}"
            );
            assert_eq!(dev.inventory(), fl.old_set(), "{what}: {r}");
            dev.update_installs(fl);
        } else {
            assert_eq!(dev.inventory(), fl.new_set(), "{what}: {r}");
        }
        let reports = dev.reports();
        assert!(
            reports.iter().any(|(r, _)| *r == ReportResult::Succeeded),
            "{what}: {reports:?}"
        );
        assert_eq!(dev.failed_reports(), Vec::<String>::new(), "{what}");
        fl.assert_trusted_metadata_intact(&dev);
    }
}

const DEVICES: [&str; 6] = [
    "kiosk-1", "kiosk-2", "kiosk-3", "kiosk-4", "kiosk-5", "kiosk-6",
];

/// Catches the old behaviour: a role that could not be fetched or verified made the
/// artifact "not in the repository", a campaign error, and the device sent a final
/// `failed` report for a network hiccup.
#[test]
fn a_single_hiccup_on_the_role_signing_the_artifact_sends_no_failed_report_and_exits_3() {
    let fl = fleet(&DEVICES);
    let flip = signature_flip(&fl.published("1.vendor.json"));
    hiccups(
        &fl,
        &[
            (
                "404 on the vendor role",
                vec![(VENDOR_ROLE, Fault::Status(404), Some(1))],
                3,
            ),
            (
                "a signature flipped in the vendor role",
                vec![(VENDOR_ROLE, flip, Some(1))],
                3,
            ),
            (
                "resets on the vendor role (every attempt of one fetch)",
                vec![(
                    VENDOR_ROLE,
                    Fault::Reset { after: 64 },
                    Some(OUTLASTS_RETRIES),
                )],
                3,
            ),
            (
                "500s on the vendor role (every attempt of one fetch)",
                vec![(VENDOR_ROLE, Fault::Status(500), Some(OUTLASTS_RETRIES))],
                3,
            ),
            // One 500 is retried by the transport: no problem at all.
            (
                "a single 500 on the vendor role",
                vec![(VENDOR_ROLE, Fault::Status(500), Some(1))],
                0,
            ),
        ],
    );
}

#[test]
fn a_single_hiccup_on_the_group_manifest_sends_no_failed_report_and_exits_3() {
    let fl = fleet(&DEVICES);
    hiccups(
        &fl,
        &[
            (
                "404 on the group manifest",
                vec![(GROUP_MANIFEST, Fault::Status(404), Some(1))],
                3,
            ),
            (
                "wrong bytes in the group manifest",
                vec![(
                    GROUP_MANIFEST,
                    Fault::Corrupt {
                        at: 10,
                        bytes: b"XYZ".to_vec(),
                    },
                    Some(1),
                )],
                3,
            ),
            (
                "resets on the group manifest (every attempt of one fetch)",
                vec![(
                    GROUP_MANIFEST,
                    Fault::Reset { after: 16 },
                    Some(OUTLASTS_RETRIES),
                )],
                3,
            ),
            (
                "500s on the group manifest (every attempt of one fetch)",
                vec![(GROUP_MANIFEST, Fault::Status(500), Some(OUTLASTS_RETRIES))],
                3,
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// 3. Campaigns, campaign manifests and assignment bins that cannot be read: exit 3
// ---------------------------------------------------------------------------------------

/// Catches a view that silently drops what it could not read: the device would see
/// nothing to do and `petrel update` would exit 0.
#[test]
fn an_unreadable_campaign_listing_campaign_manifest_or_assignment_bin_is_printed_and_exits_3() {
    let fl = fleet(&DEVICES);
    let bin = assign_target_path("kiosk-3", 2);
    let bin4 = assign_target_path("kiosk-4", 2);
    let cases: Vec<(&str, Vec<Rule>, String)> = vec![
        (
            "the campaigns listing (404 on the releases role)",
            vec![(RELEASES_ROLE, Fault::Status(404), Some(1))],
            "campaigns/*.json".into(),
        ),
        (
            "the campaign manifest (wrong bytes)",
            vec![(
                CAMPAIGN_MANIFEST,
                Fault::Corrupt {
                    at: 20,
                    bytes: b"QQQ".to_vec(),
                },
                Some(1),
            )],
            "campaigns/player.json".into(),
        ),
        (
            "the assignment bin (404)",
            vec![(ASSIGN_BIN, Fault::Status(404), Some(1))],
            bin,
        ),
        (
            "the assignment bin (wrong bytes)",
            vec![(
                ASSIGN_BIN,
                Fault::Corrupt {
                    at: 5,
                    bytes: b"!!".to_vec(),
                },
                Some(1),
            )],
            bin4,
        ),
    ];
    for (i, (what, rules, path)) in cases.iter().enumerate() {
        let dev = fl.device(&format!("kiosk-{}", i + 1));
        fl.inject(rules);
        let r = dev.petrel(&["update"]);
        fl.proxy.clear_faults();
        assert_eq!(r.code, Some(3), "{what}: {r}");
        assert!(r.stdout.contains("Problems"), "{what}: {r}");
        assert!(
            r.stdout.contains(path.as_str()),
            "{what}: the problem names {path}: {r}"
        );
        assert_eq!(dev.inventory(), fl.old_set(), "{what}: {r}");
        assert_eq!(dev.failed_reports(), Vec::<String>::new(), "{what}: {r}");
        dev.update_installs(&fl);
    }
}

// ---------------------------------------------------------------------------------------
// 4.–5. Commands that misbehave
// ---------------------------------------------------------------------------------------

/// Whether process `pid` still runs (gone or a zombie count as stopped).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // `pid (comm) S …`: the state follows the last ')'.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Catches a hook runner that waits for the hook's output pipes to close: the background
/// `sleep 300` holds them, and `petrel update` would hang until the 20 s hook limit (then
/// report the hook as timed out).
#[test]
fn an_on_apply_hook_leaving_a_background_process_does_not_hang_the_update_or_the_next_start() {
    let fl = fleet(&["kiosk-1"]);
    let pid_file = fl.s.tree().parent().expect("repo dir").join("sleep.pid");
    let script = format!("sleep 300 & echo $! > '{}'; exit 0", pid_file.display());
    let hooks = format!("[hooks]\non_apply = [\"sh\", \"-c\", {script:?}]\ntimeout_secs = 20\n");
    let dev = fl.device_with("kiosk-1", DIR_INVENTORY, &hooks);
    let r = dev.petrel(&["update"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.took < Duration::from_secs(10), "{r}");
    assert_eq!(dev.inventory(), fl.new_set(), "{r}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("the hook ran and wrote its pid: {e}: {r}"))
        .trim()
        .parse()
        .expect("a pid");
    // Killed with the hook's process group (allow the kernel a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !running(pid),
        "the hook's background sleep {pid} was left running"
    );

    // The next start neither hangs nor finds the state directory held.
    for args in [&["update"][..], &["check"][..]] {
        let next = dev.petrel(args);
        assert_eq!(next.code, Some(0), "{next}");
        assert!(next.took < Duration::from_secs(10), "{next}");
    }
}

/// Catches an inventory reader that reads all of a command's output (it would grow
/// without bound until the 60 s limit) or gets stuck writing into a full pipe.
#[test]
fn an_endless_inventory_command_is_stopped_at_its_output_cap_quickly() {
    let fl = fleet(&["kiosk-1"]);
    let dev = fl.device_with("kiosk-1", "[inventory]\ncommand = [\"yes\"]\n", "");
    let r = dev.petrel(&["check"]);
    assert_ne!(r.code, Some(0), "{r}");
    assert!(
        r.took < Duration::from_secs(15),
        "well under the 60 s limit: {r}"
    );
    assert!(
        r.stderr.contains("more than 4194304 bytes") && r.stderr.contains("the cap"),
        "names the cap: {r}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. A failed download is not "nothing to download"
// ---------------------------------------------------------------------------------------

/// Catches a staging line that introduces a failed download (an error, no item
/// downloaded) as "nothing to download".
#[test]
fn a_failed_download_says_it_failed_or_was_interrupted_never_nothing_to_download() {
    let fl = fleet(&["kiosk-1", "kiosk-2"]);
    let new = &fl.new;
    let cases = [
        (
            "404 on the artifact",
            (ARTIFACT, Fault::Status(404), None),
            3,
            "download interrupted",
        ),
        (
            "wrong bytes in the artifact",
            (
                ARTIFACT,
                Fault::Corrupt {
                    at: 100,
                    bytes: flipped(new, 100, 4),
                },
                None,
            ),
            1,
            "download FAILED",
        ),
    ];
    for (i, (what, rule, exit, says)) in cases.into_iter().enumerate() {
        let dev = fl.device(&format!("kiosk-{}", i + 1));
        fl.inject(&[rule]);
        let r = dev.petrel(&["update"]);
        fl.proxy.clear_faults();
        assert_eq!(r.code, Some(exit), "{what}: {r}");
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with("Staging player revision 1"))
            .unwrap_or_else(|| panic!("{what}: no staging line: {r}"));
        assert!(line.contains(says), "{what}: {line}");
        assert!(line.contains(NEW), "{what}: names the artifact: {line}");
        assert!(!line.contains("nothing to download"), "{what}: {line}");
        assert_eq!(dev.inventory(), fl.old_set(), "{what}: {r}");
    }
}

// ---------------------------------------------------------------------------------------
// 7. A full disk
// ---------------------------------------------------------------------------------------

/// Catches: downloading into a disk that cannot hold the artifact (a partial that fills it
/// and stays), a full disk counted as a failed install attempt (three in a row would block
/// the campaign), or reported as the campaign's failure.
#[test]
fn a_full_disk_during_staging_is_temporary_leaves_no_partial_and_is_no_install_attempt() {
    let fl = fleet(&["kiosk-1"]);
    let dev = fl.device("kiosk-1");
    let staging = dev.state.join("staging");
    assert!(staging.is_dir(), "petrel init made staging/");
    let Some(fs) = Tmpfs::mount(&staging, "1m") else {
        return;
    };
    for attempt in 1..=3 {
        let r = dev.petrel(&["update"]);
        assert_eq!(r.code, Some(3), "disk-full run {attempt}: {r}");
        let needed = format!(
            "not enough space to stage: {} needed",
            human_bytes(ARTIFACT_LEN)
        );
        assert!(r.all().contains(&needed), "names the space needed: {r}");
        assert_eq!(dev.inventory(), fl.old_set(), "{r}");
        assert!(dev.partials().is_empty(), "{:?}", dev.partials());
        let held: u64 = files_under(&staging).iter().map(|(_, n)| n).sum();
        assert_eq!(
            held,
            0,
            "staging holds nothing: {:?}",
            files_under(&staging)
        );
        assert!(
            dev.state_file().attempts.is_empty(),
            "no install attempt counted: {r}"
        );
        assert_eq!(dev.failed_reports(), Vec::<String>::new(), "{r}");
    }
    fs.resize("8m");
    dev.update_installs(&fl);
    assert_eq!(dev.failed_reports(), Vec::<String>::new());
}

/// The disk fills up while the artifact is downloading (the space check passed): the
/// write fails with ENOSPC, the partial is removed to give the space back, the run exits 3
/// with no attempt counted and no `failed` report, and once there is space again the next
/// run installs.
#[test]
fn a_disk_filling_up_mid_download_removes_the_partial_exits_3_and_the_next_run_installs() {
    let fl = fleet(&["kiosk-1"]);
    let dev = fl.device("kiosk-1");
    let staging = dev.state.join("staging");
    let Some(fs) = Tmpfs::mount(&staging, "5m") else {
        return;
    };
    // 1 MiB arrives, then 5 s of nothing, during which the disk fills up.
    fl.proxy.inject_times(
        ARTIFACT,
        Fault::Stall {
            after: MIB,
            duration: Duration::from_secs(5),
        },
        1,
    );
    let mut cmd = Command::new(petrel_bin());
    cmd.arg("--config")
        .arg(&dev.config)
        .arg("update")
        .env_remove("RUST_LOG")
        .current_dir(&dev.dir);
    let agent = std::thread::spawn(move || {
        let t = Instant::now();
        (
            run_with_timeout(&mut cmd, Duration::from_secs(60)),
            t.elapsed(),
        )
    });
    // The agent writes through a 64 KiB buffer: during the stall the partial on disk holds
    // the last whole buffer before 1 MiB.
    let stalled = || {
        dev.partials()
            .iter()
            .any(|(_, n)| *n + 64 * 1024 >= MIB && *n <= MIB)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stalled() {
        if agent.is_finished() || Instant::now() >= deadline {
            let (out, took) = agent.join().expect("agent thread");
            panic!(
                "the download never stalled at 1 MiB ({:?} after {took:?}): {}",
                dev.partials(),
                out.map(|o| describe(&o)).unwrap_or_else(|e| e.to_string())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Fill what is left (the partial's 1 MiB stays; the rest of the artifact cannot fit).
    let ballast = staging.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).expect("ballast");
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..1000 {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
    }
    assert!(fs.free() < MIB, "the disk is full: {} free", fs.free());
    assert!(
        stalled(),
        "the disk filled up during the stall (the machine is not too slow): {:?}",
        dev.partials()
    );
    let (out, took) = agent.join().expect("agent thread");
    let out = out.expect("petrel update finished");
    let shown = describe(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{shown} (took {took:?})");
    assert!(stdout.contains("download interrupted"), "{shown}");
    assert!(
        stdout.to_ascii_lowercase().contains("no space left"),
        "{shown}"
    );
    assert!(
        dev.partials().is_empty(),
        "the partial was removed: {:?}",
        dev.partials()
    );
    assert_eq!(dev.inventory(), fl.old_set(), "{shown}");
    assert!(dev.state_file().attempts.is_empty(), "{shown}");
    assert_eq!(dev.failed_reports(), Vec::<String>::new(), "{shown}");

    std::fs::remove_file(&ballast).expect("free the space");
    dev.update_installs(&fl);
}

//! The resident agent end to end: `petrel run`, `update` and `recover` apply on their own, honour apply windows, refuse a second instance, roll back unhealthy sets, never lose reports and finish interrupted installs.
//!
//! Each test builds a repository with petrel-repo's library (`Scenario`), provisions a
//! device reading it over `file://`, and drives the `petrel` binary as a child process
//! (hooks and health checks are small `/bin/sh` scripts). Reports go to a real
//! `petrel-server serve --reports-db` on 127.0.0.1 (port 0); what it stored is read back
//! from its SQLite database (python3's `sqlite3` module, read-only). Every wait is bounded
//! in time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use petrel_client::manifest::sha256_hex;
use petrel_tests::scenario::{artifact_bytes, every_file, instant, Device, Scenario};
use petrel_tests::{describe, petrel_bin, petrel_server_bin, run_with_timeout};
use serde_json::Value;

const KIOSK: &str = r#"type = "kiosk"
vendor = "acme"
region = "eu-west"
channel = "stable"
utc_offset_minutes = 0
locale = "en""#;

const PLAYER: &str = "acme.player";
const FONTS: &str = "acme.fonts";
const CAMPAIGN: &str = "player";

/// A limit for one short `petrel` command.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

fn target(app: &str, version: &str) -> String {
    format!("apps/{app}/{version}/{app}.bin")
}

/// Campaign `player` revision 1 delivering group kiosk-eu revision 1; `consent` is the body
/// of `[consent]`, `rest` further tables (e.g. `[schedule]`).
fn campaign_toml(consent: &str, rest: &str) -> String {
    format!(
        r#"kind = "campaign"
schema_version = 1
id = "{CAMPAIGN}"
revision = 1
state = "active"

[notice.en]
title = "Player 2.1"
body = "Starts twice as fast."
severity = "recommended"

[consent]
{consent}

[payload]
group = {{ id = "kiosk-eu", revision = 1 }}

{rest}
"#
    )
}

/// A published repository: group kiosk-eu revision 1 (player 2.1.0, fonts 1.0) with
/// `devices` assigned, and campaign `player` (`consent`, `rest`: see [`campaign_toml`]).
fn fleet(devices: &[&str], consent: &str, rest: &str) -> Scenario {
    let mut s = Scenario::new();
    s.artifact(&target(PLAYER, "2.1.0"));
    s.artifact(&target(FONTS, "1.0"));
    let mut group =
        "kind = \"group\"\nschema_version = 1\nid = \"kiosk-eu\"\nrevision = 1\n".to_string();
    for (app, version) in [(PLAYER, "2.1.0"), (FONTS, "1.0")] {
        group.push_str(&format!(
            "\n[apps.{app:?}]\nversion = {version:?}\ntarget = {:?}\n",
            target(app, version)
        ));
    }
    s.group(&group);
    s.assign("kiosk-eu", devices, false, &[]);
    s.create_campaign(&campaign_toml(consent, rest));
    s.publish();
    s
}

/// A kiosk running player 2.0.1 and fonts 0.9: the campaign updates both.
fn old_kiosk(s: &Scenario, id: &str) -> Device {
    let d = s.device(id, KIOSK);
    d.install(PLAYER, "2.0.1", b"player 2.0.1, installed long ago\n");
    d.install(FONTS, "0.9", b"fonts 0.9, installed long ago\n");
    d
}

fn config_path(d: &Device) -> PathBuf {
    d.dir().join("device.toml")
}

fn apps(d: &Device) -> PathBuf {
    d.dir().join("apps")
}

fn state_dir(d: &Device) -> PathBuf {
    d.dir().join("state")
}

/// Rewrites the device's `device.toml`: `top` (top-level keys such as `report_url`) goes
/// before the first table, `tables` (`[health]`, `[hooks]`, …) at the end.
fn configure(d: &Device, top: &str, tables: &str) {
    let path = config_path(d);
    let text = std::fs::read_to_string(&path).expect("device.toml");
    std::fs::write(&path, format!("{top}\n{text}\n{tables}\n")).expect("device.toml");
}

/// A TOML basic string.
fn toml_str(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

/// Writes a `/bin/sh` script into the device directory and returns its argv for device.toml.
fn script(d: &Device, name: &str, body: &str) -> String {
    let path = d.dir().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    format!("[\"/bin/sh\", {}]", toml_str(path.display().to_string()))
}

/// `petrel --config <device.toml> ARGS`, with `RUST_LOG` and the fault variables cleared.
fn petrel(d: &Device, args: &[&str]) -> Command {
    let mut cmd = Command::new(petrel_bin());
    cmd.arg("--config")
        .arg(config_path(d))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("PETREL_CONFIG")
        .env_remove("PETREL_FAULT_LOG")
        .env_remove("PETREL_FAULT_STOP_AT");
    cmd
}

fn run(mut cmd: Command, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    run_with_timeout(&mut cmd, limit).unwrap_or_else(|e| panic!("{shown}: {e}"))
}

/// Runs `petrel ARGS` (bounded) and returns its output, whatever its exit status.
fn petrel_out(d: &Device, args: &[&str]) -> Output {
    run(petrel(d, args), COMMAND_LIMIT)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// Every file under `dir` (hidden directories included), relative path → SHA-256.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    every_file(dir)
        .into_iter()
        .map(|(p, bytes)| {
            let rel = p
                .strip_prefix(dir)
                .expect("under dir")
                .display()
                .to_string();
            (rel, sha256_hex(&bytes))
        })
        .collect()
}

/// The part of a snapshot the inventory reader sees (no hidden names).
fn visible(s: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    s.iter()
        .filter(|(p, _)| {
            !Path::new(p)
                .components()
                .any(|c| matches!(c, Component::Normal(n) if n.to_string_lossy().starts_with('.')))
        })
        .map(|(p, h)| (p.clone(), h.clone()))
        .collect()
}

/// Hidden entries (`.petrel-new-*`, `.petrel-old-*`) of the inventory directory.
fn hidden_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("inventory dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn installed_version(d: &Device, app: &str) -> Option<String> {
    std::fs::read_to_string(apps(d).join(app).join("VERSION"))
        .ok()
        .map(|v| v.trim().to_string())
}

/// Polls `f` every 100 ms until it holds or `limit` passes; whether it held.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Sends `signal` (`TERM`, `KILL`) to one process, or to a process group with `-pid`.
fn kill(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------
// Long-running children: `petrel run`, a stopped `petrel update`, `petrel-server serve`
// ---------------------------------------------------------------------------------------

/// A child process in its own process group whose stdout and stderr are collected as they
/// come; killed with its group when dropped.
struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn collect<R: Read + Send + 'static>(r: R, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => into.lock().expect("buffer").extend_from_slice(&line),
            }
        }
    })
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let shown = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{shown}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Running {
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("buffer")).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("buffer")).into_owned()
    }

    /// Whether it has exited (remembering the status).
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits (bounded) until stderr contains `needle`; panics if it does not, or if the
    /// process exits first.
    fn wait_for_stderr(&mut self, needle: &str, limit: Duration) {
        let ok = wait_until(limit, || {
            self.stderr().contains(needle) || self.exited().is_some()
        });
        let text = self.stderr();
        assert!(
            ok && text.contains(needle),
            "waited {limit:?} for {needle:?} on stderr (exited: {:?}):\n{text}",
            self.status
        );
    }

    /// Sends SIGTERM to the process and returns its exit status if it exits within `limit`.
    fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exited().is_none() {
            kill("TERM", &self.pid().to_string());
        }
        wait_until(limit, || self.exited().is_some());
        self.status
    }

    /// Kills the whole process group (SIGKILL) and reaps the process.
    fn kill_all(&mut self) {
        kill("KILL", &format!("-{}", self.pid()));
        let _ = self.child.kill();
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `petrel-server serve --root TREE --listen 127.0.0.1:0 --reports-db DB --access-log`.
struct ReportServer {
    proc: Running,
    base: String,
    db: PathBuf,
}

impl ReportServer {
    fn start(tree: &Path, dir: &Path) -> ReportServer {
        let db = dir.join("reports.db");
        let mut cmd = Command::new(petrel_server_bin());
        cmd.arg("serve")
            .arg("--root")
            .arg(tree)
            .args(["--listen", "127.0.0.1:0", "--access-log", "--workers", "1"])
            .arg("--reports-db")
            .arg(&db)
            .env_remove("RUST_LOG")
            .env_remove("PETREL_REPORTS_READ_TOKEN");
        let mut proc = Running::spawn(cmd);
        let mut base = None;
        let up = wait_until(Duration::from_secs(30), || {
            base = proc
                .stdout()
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("listening on "))
                .map(|u| u.trim().to_string());
            base.is_some() || proc.exited().is_some()
        });
        let base = match (up, base) {
            (true, Some(b)) => b,
            _ => panic!(
                "petrel-server did not say where it listens (exited: {:?}):\n{}\n{}",
                proc.status,
                proc.stdout(),
                proc.stderr()
            ),
        };
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        ReportServer { proc, base, db }
    }

    fn reports_url(&self) -> String {
        format!("{}/v1/reports", self.base)
    }

    /// The access log so far (`METHOD PATH STATUS BYTES DURATION` lines).
    fn access_log(&self) -> String {
        self.proc.stderr()
    }

    /// Statuses answered to `POST /v1/reports`, in order.
    fn report_posts(&self) -> Vec<u16> {
        self.access_log()
            .lines()
            .filter_map(|l| {
                let i = l.find("POST /v1/reports ")?;
                l[i + "POST /v1/reports ".len()..]
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Enrolls `d` for reports with the key `petrel device-key` prints.
    fn enroll(&self, d: &Device) {
        let out = petrel_out(d, &["device-key"]);
        assert!(
            out.status.success(),
            "petrel device-key: {}",
            describe(&out)
        );
        let pem = d.dir().join("device-key.pub.pem");
        std::fs::write(&pem, &out.stdout).expect("public key");
        let mut cmd = Command::new(petrel_server_bin());
        cmd.arg("enroll")
            .arg("--reports-db")
            .arg(&self.db)
            .args(["--device", &d.id, "--public-key"])
            .arg(&pem)
            .env_remove("RUST_LOG");
        let out = run(cmd, COMMAND_LIMIT);
        assert!(
            out.status.success(),
            "petrel-server enroll: {}",
            describe(&out)
        );
        assert!(stdout(&out).contains("enrolled"), "{}", describe(&out));
    }

    /// Every report the server stored, as received (the signed envelope), in arrival order.
    fn stored(&self) -> Vec<StoredReport> {
        const READ: &str = r#"
import json, sqlite3, sys
c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
rows = c.execute("SELECT body FROM reports ORDER BY seq").fetchall()
print(json.dumps([b if isinstance(b, str) else bytes(b).decode("utf-8") for (b,) in rows]))
"#;
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(READ).arg(&self.db);
        let out = run_with_timeout(&mut cmd, COMMAND_LIMIT).unwrap_or_else(|e| {
            panic!("reading the report database needs python3 (with its sqlite3 module): {e}")
        });
        assert!(
            out.status.success(),
            "reading {}: {}",
            self.db.display(),
            describe(&out)
        );
        let bodies: Vec<String> = serde_json::from_slice(&out.stdout).expect("JSON list");
        bodies
            .into_iter()
            .map(|raw| StoredReport {
                json: serde_json::from_str(&raw).expect("a stored report is JSON"),
                raw,
            })
            .collect()
    }
}

/// One report as petrel-server stored it.
#[derive(Debug)]
struct StoredReport {
    raw: String,
    json: Value,
}

impl StoredReport {
    fn field(&self, name: &str) -> &Value {
        &self.json["signed"][name]
    }
    fn result(&self) -> &str {
        self.field("result").as_str().unwrap_or("")
    }
    fn rolled_back(&self) -> bool {
        self.field("rolled_back").as_bool().unwrap_or(false)
    }
    fn reason(&self) -> &str {
        self.field("reason").as_str().unwrap_or("")
    }
    fn id(&self) -> &str {
        self.field("report_id").as_str().unwrap_or("")
    }
}

fn show(reports: &[StoredReport]) -> String {
    reports
        .iter()
        .map(|r| format!("{}: {} {}", r.result(), r.rolled_back(), r.reason()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ids of the reports queued in the device's outbox (`<seq>-<id>.json`).
fn outbox_ids(d: &Device) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state_dir(d).join("outbox"))
        .map(|es| {
            es.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let stem = n.strip_suffix(".json")?;
                    Some(stem.split_once('-')?.1.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// petrel run
// ---------------------------------------------------------------------------------------

#[test]
fn petrel_run_applies_a_consented_campaign_by_itself_and_exits_0_on_sigterm() {
    let s = fleet(&["kiosk-1"], "policy = \"required\"", "");
    let d = old_kiosk(&s, "kiosk-1");

    // The campaign waits for the user; the answer is given with the CLI.
    let check = petrel_out(&d, &["check"]);
    assert!(check.status.success(), "{}", describe(&check));
    let accept = petrel_out(&d, &["consent", "accept", CAMPAIGN]);
    assert!(accept.status.success(), "{}", describe(&accept));
    assert!(
        stdout(&accept).contains("Recorded: accept"),
        "{}",
        describe(&accept)
    );
    assert_eq!(installed_version(&d, PLAYER).as_deref(), Some("2.0.1"));

    let mut daemon = Running::spawn(petrel(&d, &["run", "--interval", "1s"]));
    let applied = wait_until(Duration::from_secs(30), || {
        installed_version(&d, PLAYER).as_deref() == Some("2.1.0")
            && installed_version(&d, FONTS).as_deref() == Some("1.0")
    });
    assert!(
        applied,
        "petrel run did not install the consented campaign within 30 s (exited: {:?}):\n{}",
        daemon.exited(),
        daemon.stderr()
    );
    // The inventory is exactly the signed artifacts, nothing kept aside once healthy.
    wait_until(Duration::from_secs(10), || {
        hidden_entries(&apps(&d)).is_empty()
    });
    assert_eq!(hidden_entries(&apps(&d)), Vec::<String>::new());
    let player = std::fs::read(apps(&d).join(PLAYER).join("acme.player.bin")).expect("artifact");
    assert_eq!(player, artifact_bytes(&target(PLAYER, "2.1.0")));

    let status = daemon.terminate(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "petrel run must exit 0 soon after SIGTERM, got {status:?}:\n{}",
        daemon.stderr()
    );
    assert!(
        daemon.stderr().contains("petrel run: stopped"),
        "{}",
        daemon.stderr()
    );
}

/// The next whole minute (UTC) at least 15 s from now (time for the first cycle, even on a
/// busy machine, to end before it).
fn next_minute_at_least_15s_away() -> DateTime<Utc> {
    let now = Utc::now();
    let minute = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a valid instant");
    let mut t = minute + chrono::Duration::minutes(1);
    if t - now < chrono::Duration::seconds(15) {
        t += chrono::Duration::minutes(1);
    }
    t
}

/// The JSON log lines of `petrel run --log-format json`.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

// Named to sort first: libtest starts tests in name order, and this one mostly waits (15 to
// 75 s) for the window, so the others run beside it.
#[test]
fn a_daemon_polling_hourly_wakes_up_for_the_apply_window_and_installs_only_once_it_opens() {
    // The binary first: building it (waiting for cargo's lock) must not eat the window's lead.
    let _ = petrel_bin();
    // A setup slower than the window's lead (an overloaded machine) proves nothing either
    // way; it is set up again once, with the next window.
    let mut attempt = 0;
    let (_s, d, mut daemon, opens, done) = loop {
        attempt += 1;
        let opens = next_minute_at_least_15s_away();
        let closes = opens + chrono::Duration::minutes(10);
        let hhmm = |t: DateTime<Utc>| t.format("%H:%M").to_string();
        let schedule = format!(
            "[schedule]\napply_window = {{ start = {:?}, end = {:?} }}\n",
            hhmm(opens),
            hhmm(closes)
        );
        let s = fleet(&["kiosk-1"], "policy = \"none\"", &schedule);
        let d = old_kiosk(&s, "kiosk-1");
        // A poll interval of an hour: only the decision's wake-up can make it act in time.
        let mut daemon = Running::spawn(petrel(
            &d,
            &["--log-format", "json", "run", "--interval", "1h"],
        ));
        daemon.wait_for_stderr("cycle done", Duration::from_secs(30));
        let done = json_lines(&daemon.stderr())
            .into_iter()
            .find(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("cycle done"))
            })
            .expect("a cycle done line");
        let ended = done["timestamp"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .expect("the log line's timestamp")
            .with_timezone(&Utc);
        if ended < opens - chrono::Duration::seconds(1) {
            break (s, d, daemon, opens, done);
        }
        assert!(
            attempt < 2,
            "twice the first cycle ended only after the window opened (at {ended}, window at {opens}): the machine is too slow for this test"
        );
    };
    assert_eq!(done["cycle"], 1, "{done}");
    assert_eq!(
        done["why"], "wake",
        "the first cycle must sleep until the apply window opens at {opens}, not until the next poll: {done}\n{}",
        daemon.stderr()
    );
    assert_eq!(done["next"], instant(opens).as_str(), "{done}");

    // Nothing is installed before the window opens (the download may happen at once).
    while Utc::now() < opens - chrono::Duration::milliseconds(300) {
        assert_eq!(
            installed_version(&d, PLAYER).as_deref(),
            Some("2.0.1"),
            "installed before the apply window opened at {opens}:\n{}",
            daemon.stderr()
        );
        assert!(daemon.exited().is_none(), "{}", daemon.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = opens + chrono::Duration::seconds(20);
    let installed = wait_until(Duration::from_secs(25), || {
        (installed_version(&d, PLAYER).as_deref() == Some("2.1.0")
            && installed_version(&d, FONTS).as_deref() == Some("1.0"))
            || Utc::now() > deadline
    });
    let at = Utc::now();
    assert!(
        installed && installed_version(&d, PLAYER).as_deref() == Some("2.1.0"),
        "not installed within 20 s after the window opened at {opens} (now {at}):\n{}",
        daemon.stderr()
    );
    assert!(
        at >= opens,
        "installed at {at}, before the window at {opens}"
    );

    let status = daemon.terminate(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "petrel run must exit 0 after SIGTERM, got {status:?}:\n{}",
        daemon.stderr()
    );
    // The install was cycle 2, the wake-up, and no poll came in between.
    let lines = json_lines(&daemon.stderr());
    let install = lines
        .iter()
        .find(|l| l["result"] == "installed")
        .unwrap_or_else(|| panic!("no installed line:\n{}", daemon.stderr()));
    assert_eq!(install["cycle"], 2, "{install}");
    let cycles: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cycle done"))
        })
        .collect();
    assert!(
        cycles.len() == 2 && cycles[1]["why"] == "poll",
        "two cycles, the second then sleeping until the next poll: {cycles:?}"
    );
}

#[test]
fn a_second_petrel_run_or_update_is_refused_with_status_4_while_status_still_works() {
    let s = fleet(&["kiosk-1"], "policy = \"none\"", "");
    let d = old_kiosk(&s, "kiosk-1");
    let mut daemon = Running::spawn(petrel(&d, &["run", "--interval", "1s"]));
    daemon.wait_for_stderr("cycle done", Duration::from_secs(30));
    let holder = format!("pid {}", daemon.pid());

    for args in [&["run", "--interval", "1s"][..], &["update"][..]] {
        let started = Instant::now();
        let out = run(petrel(&d, args), Duration::from_secs(20));
        assert_eq!(
            code(&out),
            Some(4),
            "petrel {args:?} next to a running petrel run: {}",
            describe(&out)
        );
        let err = stderr(&out);
        assert!(err.contains("another petrel command is running"), "{err}");
        assert!(
            err.contains(&holder) && err.contains("run --interval 1s"),
            "the message names the other command ({holder}): {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "refused at once, not after waiting: {:?}",
            started.elapsed()
        );
    }

    // Short commands wait for the cycle lock (at most 30 s) and work between cycles.
    let out = run(petrel(&d, &["status"]), Duration::from_secs(35));
    assert!(out.status.success(), "petrel status: {}", describe(&out));
    assert!(stdout(&out).contains("kiosk-1"), "{}", describe(&out));

    assert!(daemon.exited().is_none(), "{}", daemon.stderr());
    let status = daemon.terminate(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "petrel run must exit 0 after SIGTERM, got {status:?}:\n{}",
        daemon.stderr()
    );
}

// ---------------------------------------------------------------------------------------
// Health checks, hooks, rollback and reports
// ---------------------------------------------------------------------------------------

/// A device with an `on_apply` hook that logs every call (and fails, except for restored
/// versions, when `failing_hook`), a health check with body `health` (its calls logged),
/// and `report_url` set to `server`, where it is enrolled.
struct Rig {
    /// Keeps the repository (and the device's directory) alive.
    _scenario: Scenario,
    d: Device,
    server: ReportServer,
    hook_log: PathBuf,
    health_log: PathBuf,
}

fn rig(failing_hook: bool, health: &str, health_settings: &str) -> Rig {
    let s = fleet(&["kiosk-1"], "policy = \"none\"", "");
    let d = old_kiosk(&s, "kiosk-1");
    let server = ReportServer::start(&s.tree(), d.dir());
    server.enroll(&d);
    let hook_log = d.dir().join("hook.log");
    let health_log = d.dir().join("health.log");
    let fail = if failing_hook {
        "if [ \"$PETREL_STATE\" != restored ]; then echo \"$PETREL_APP refuses to start\" >&2; exit 1; fi\n"
    } else {
        ""
    };
    let hook = script(
        &d,
        "on-apply.sh",
        &format!(
            "echo \"$PETREL_APP $PETREL_VERSION $PETREL_STATE campaign=$PETREL_CAMPAIGN args=$1,$2,$3\" >> '{}'\n{fail}exit 0",
            hook_log.display()
        ),
    );
    let health = script(
        &d,
        "health.sh",
        &format!(
            "echo \"health check of $PETREL_CAMPAIGN\" >> '{}'\n{health}",
            health_log.display()
        ),
    );
    configure(
        &d,
        &format!("report_url = {}", toml_str(server.reports_url())),
        &format!(
            "[hooks]\non_apply = {hook}\ntimeout_secs = 10\n\n[health]\ncommand = {health}\n{health_settings}\n"
        ),
    );
    Rig {
        _scenario: s,
        d,
        server,
        hook_log,
        health_log,
    }
}

/// The property of every failure after the commit point: `petrel update` exits 1, the
/// previous set is back byte for byte, the restored versions were hooked as `restored`, a
/// `failed` report with `rolled_back: true` reached the server, and the next run does not
/// try the revision again.
fn assert_rolled_back_reported_and_not_retried(r: &Rig, why: &str) {
    let d = &r.d;
    let before = snapshot(&apps(d));
    let out = petrel_out(d, &["update"]);
    assert_eq!(code(&out), Some(1), "petrel update: {}", describe(&out));
    assert!(
        stdout(&out).contains(why),
        "the output says why: {}",
        describe(&out)
    );
    assert_eq!(
        snapshot(&apps(d)),
        before,
        "the inventory must be the previous set, byte for byte, with nothing left aside"
    );

    let hooks = read_text(&r.hook_log);
    for (app, version) in [(PLAYER, "2.0.1"), (FONTS, "0.9")] {
        assert!(
            hooks.contains(&format!(
                "{app} {version} restored campaign={CAMPAIGN} args={app},{version},restored"
            )),
            "the hook ran for the restored {app} {version}:\n{hooks}"
        );
    }

    let reports = r.server.stored();
    let failed: Vec<&StoredReport> = reports
        .iter()
        .filter(|x| x.result() == "failed" && x.rolled_back())
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one failed, rolled-back report:\n{}",
        show(&reports)
    );
    let f = failed[0];
    assert_eq!(*f.field("device_id"), "kiosk-1");
    assert_eq!(*f.field("campaign"), CAMPAIGN);
    assert_eq!(*f.field("revision"), 1);
    assert!(f.reason().contains(why), "{}", f.reason());
    assert_eq!(
        f.field("inventory_after")[PLAYER]["version"],
        "2.0.1",
        "the report's inventory is the restored one: {}",
        f.raw
    );
    assert!(
        r.server
            .report_posts()
            .iter()
            .all(|s| (200..300).contains(s)),
        "{}",
        r.server.access_log()
    );
    assert!(outbox_ids(d).is_empty(), "every report was delivered");

    // The next run does not try the same revision again: no install step is reached.
    let hooks_before = read_text(&r.hook_log);
    let health_before = read_text(&r.health_log);
    let fault_log = d.dir().join("second-run.faults");
    let mut cmd = petrel(d, &["update", "--json"]);
    cmd.env("PETREL_FAULT_LOG", &fault_log);
    let again = run(cmd, COMMAND_LIMIT);
    assert_eq!(
        code(&again),
        Some(0),
        "second petrel update: {}",
        describe(&again)
    );
    let v: Value = serde_json::from_slice(&again.stdout).expect("update --json");
    assert_eq!(v["installs"], serde_json::json!([]), "{v:#}");
    let points = read_text(&fault_log);
    assert!(
        !points
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("apply")),
        "no install step may run again:\n{points}"
    );
    assert_eq!(snapshot(&apps(d)), before, "still the previous set");
    assert_eq!(read_text(&r.hook_log), hooks_before, "no hook ran again");
    assert_eq!(
        read_text(&r.health_log),
        health_before,
        "no health check ran again"
    );
    let status = petrel_out(d, &["status"]);
    assert!(status.status.success(), "{}", describe(&status));
}

#[test]
fn a_failing_health_check_rolls_back_reports_failed_and_is_not_retried() {
    let r = rig(
        false,
        "echo 'player does not answer' >&2\nexit 1",
        "retries = 1\ninterval_secs = 0",
    );
    assert_rolled_back_reported_and_not_retried(&r, "health check failed");
    let tries = read_text(&r.health_log).lines().count();
    assert_eq!(tries, 2, "one try and one retry");
    let hooks = read_text(&r.hook_log);
    assert!(
        hooks.contains(&format!("{PLAYER} 2.1.0 ")),
        "the new version was hooked before the health check:\n{hooks}"
    );
}

#[test]
fn a_health_check_that_times_out_rolls_back_reports_failed_and_is_not_retried() {
    let r = rig(false, "exec sleep 30", "timeout_secs = 1");
    let started = Instant::now();
    assert_rolled_back_reported_and_not_retried(&r, "did not finish within");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the health check was cut at its 1 s limit, not waited for: {:?}",
        started.elapsed()
    );
    assert_eq!(read_text(&r.health_log).lines().count(), 1);
}

#[test]
fn a_failing_on_apply_hook_rolls_back_reports_failed_and_is_not_retried() {
    let r = rig(true, "exit 0", "");
    assert_rolled_back_reported_and_not_retried(&r, "on_apply hook failed");
    assert_eq!(
        read_text(&r.health_log),
        "",
        "a failed hook rolls back without a health check"
    );
}

#[test]
fn a_healthy_install_is_reported_succeeded_only_after_its_health_check_passed() {
    let s = fleet(&["kiosk-1"], "policy = \"none\"", "");
    let d = old_kiosk(&s, "kiosk-1");
    let server = ReportServer::start(&s.tree(), d.dir());
    server.enroll(&d);
    let marker = d.dir().join("health.marker");
    // What the health check sees: the live version, what is kept aside, and whether a
    // `succeeded` report is queued already.
    let health = script(
        &d,
        "health.sh",
        &format!(
            "{{ echo \"live $(cat '{apps}/{PLAYER}/VERSION')\"; ls -a '{apps}'; \
             if grep -l '\"result\":\"succeeded\"' '{outbox}'/*.json >/dev/null 2>&1; \
             then echo 'succeeded report queued'; else echo 'no succeeded report yet'; fi; }} > '{marker}'\nexit 0",
            apps = apps(&d).display(),
            outbox = state_dir(&d).join("outbox").display(),
            marker = marker.display()
        ),
    );
    configure(
        &d,
        &format!("report_url = {}", toml_str(server.reports_url())),
        &format!("[health]\ncommand = {health}\ntimeout_secs = 10\n"),
    );

    let out = petrel_out(&d, &["update"]);
    assert!(out.status.success(), "petrel update: {}", describe(&out));
    let seen = read_text(&marker);
    assert!(
        seen.contains("live 2.1.0"),
        "the new set was live during the check:\n{seen}"
    );
    assert!(
        seen.contains(&format!(".petrel-old-{PLAYER}")),
        "the previous set was kept aside until the check passed:\n{seen}"
    );
    assert!(
        seen.contains("no succeeded report yet"),
        "no success may be reported before the health check passed:\n{seen}"
    );
    assert_eq!(
        hidden_entries(&apps(&d)),
        Vec::<String>::new(),
        "kept set deleted after it"
    );
    assert_eq!(installed_version(&d, PLAYER).as_deref(), Some("2.1.0"));

    let reports = server.stored();
    let ok: Vec<&StoredReport> = reports
        .iter()
        .filter(|r| r.result() == "succeeded")
        .collect();
    assert_eq!(ok.len(), 1, "{}", show(&reports));
    assert!(!ok[0].rolled_back());
    // The marker's grep would have found it: this is how it is queued.
    assert!(
        ok[0].raw.contains("\"result\":\"succeeded\""),
        "{}",
        ok[0].raw
    );
    let marked: DateTime<Utc> = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .expect("marker time")
        .into();
    let reported = DateTime::parse_from_rfc3339(ok[0].field("time").as_str().unwrap_or(""))
        .expect("report time")
        .with_timezone(&Utc);
    assert!(
        reported.timestamp() >= marked.timestamp(),
        "reported at {reported}, before the health check ran at {marked}"
    );
    assert_eq!(ok[0].field("inventory_after")[PLAYER]["version"], "2.1.0");
}

#[test]
fn reports_refused_before_enrollment_stay_queued_and_are_delivered_after_it() {
    let s = fleet(&["kiosk-1"], "policy = \"none\"", "");
    let d = old_kiosk(&s, "kiosk-1");
    let server = ReportServer::start(&s.tree(), d.dir());
    configure(
        &d,
        &format!("report_url = {}", toml_str(server.reports_url())),
        "",
    );

    let out = petrel_out(&d, &["update"]);
    assert!(out.status.success(), "petrel update: {}", describe(&out));
    assert_eq!(installed_version(&d, PLAYER).as_deref(), Some("2.1.0"));
    assert!(
        server.report_posts().contains(&403),
        "the endpoint refused the unknown device: {}",
        server.access_log()
    );
    assert!(server.stored().is_empty());
    let queued = outbox_ids(&d);
    assert_eq!(
        queued.len(),
        2,
        "staged and succeeded stay queued: {queued:?}"
    );
    let status = petrel_out(&d, &["status"]);
    assert!(status.status.success(), "{}", describe(&status));
    assert!(
        stdout(&status).contains("2 queued"),
        "petrel status shows the queued reports: {}",
        stdout(&status)
    );

    server.enroll(&d);
    let out = petrel_out(&d, &["update"]);
    assert!(out.status.success(), "petrel update: {}", describe(&out));
    let stored = server.stored();
    let mut ids: Vec<String> = stored.iter().map(|r| r.id().to_string()).collect();
    ids.sort();
    assert_eq!(ids, queued, "exactly the queued reports reached the server");
    let results: Vec<&str> = stored.iter().map(StoredReport::result).collect();
    assert_eq!(
        results,
        ["staged", "succeeded"],
        "in the order they were queued"
    );
    assert!(outbox_ids(&d).is_empty());
    let status = petrel_out(&d, &["status"]);
    assert!(
        stdout(&status).contains("Reports:    none waiting"),
        "{}",
        stdout(&status)
    );
}

// ---------------------------------------------------------------------------------------
// petrel recover
// ---------------------------------------------------------------------------------------

/// `N PHASE WHAT` lines of a fault log.
fn fault_points(log: &Path) -> Vec<(u64, String, String)> {
    read_text(log)
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.to_string(),
                it.next()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn petrel_recover_completes_an_install_interrupted_after_its_commit_point() {
    let s = fleet(&["kiosk-probe", "kiosk-1"], "policy = \"none\"", "");
    let probe = old_kiosk(&s, "kiosk-probe");
    let d = old_kiosk(&s, "kiosk-1");
    let old_set = snapshot(&apps(&d));

    // A twin device numbers the fault points of the same install.
    let probe_log = probe.dir().join("faults.log");
    let mut cmd = petrel(&probe, &["update"]);
    cmd.env("PETREL_FAULT_LOG", &probe_log);
    let out = run(cmd, COMMAND_LIMIT);
    assert!(out.status.success(), "probe update: {}", describe(&out));
    let new_set = snapshot(&apps(&probe));
    assert_ne!(visible(&new_set), visible(&old_set));
    let points = fault_points(&probe_log);
    let committed = points
        .iter()
        .position(|p| p.2 == "write the journal (committed)")
        .unwrap_or_else(|| panic!("no commit point in {points:?}"));
    let switched = points
        .iter()
        .position(|p| p.2 == "write the journal (switched)")
        .unwrap_or_else(|| panic!("no switch in {points:?}"));
    // The last application moved aside: the others are switched already.
    let (stop_at, _, name) = points[committed..switched]
        .iter()
        .rev()
        .find(|p| p.1 == "apply" && p.2.starts_with("move ") && p.2.ends_with(" aside"))
        .cloned()
        .unwrap_or_else(|| panic!("no `move … aside` point after the commit in {points:?}"));

    let mut cmd = petrel(&d, &["update"]);
    cmd.env("PETREL_FAULT_STOP_AT", stop_at.to_string());
    let mut update = Running::spawn(cmd);
    let reached = format!("fault point {stop_at} reached (apply: {name})");
    update.wait_for_stderr(&reached, Duration::from_secs(30));
    update.kill_all(); // the power cut
    drop(update);

    let cut = visible(&snapshot(&apps(&d)));
    assert!(
        cut != visible(&old_set) && cut != visible(&new_set),
        "the cut leaves a half-switched set (that is what recovery is for): {cut:#?}"
    );
    assert!(state_dir(&d).join("apply.journal.json").exists());

    let out = petrel_out(&d, &["recover"]);
    assert!(out.status.success(), "petrel recover: {}", describe(&out));
    let said = stdout(&out);
    assert!(
        said.contains("Recovered:") && said.contains(&format!("campaign {CAMPAIGN} revision 1")),
        "petrel recover says what it did: {said}"
    );
    let now = visible(&snapshot(&apps(&d)));
    assert!(
        now == visible(&new_set) || now == visible(&old_set),
        "after petrel recover the set is whole: {now:#?}"
    );
    assert_eq!(
        now,
        visible(&new_set),
        "interrupted after its commit point, the new set is completed"
    );
    assert!(
        said.contains("is in place"),
        "the hooks and the health check are left for the next start: {said}"
    );

    // The next start settles it: confirmed, the kept set deleted, nothing left over.
    let out = petrel_out(&d, &["update"]);
    assert!(
        out.status.success(),
        "petrel update after recover: {}",
        describe(&out)
    );
    assert_eq!(
        snapshot(&apps(&d)),
        new_set,
        "exactly the set a clean install leaves"
    );
    assert!(!state_dir(&d).join("apply.journal.json").exists());
    let out = petrel_out(&d, &["recover"]);
    assert!(
        stdout(&out).contains("Nothing to recover"),
        "{}",
        describe(&out)
    );
}

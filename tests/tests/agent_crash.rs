//! Proves that a SIGKILL of the real `petrel` agent at any fault point leaves the old or the new set (after `petrel recover`) and that the next run finishes.

#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use petrel_client::manifest::sha256_hex;
use petrel_client::report::{Outbox, ReportResult};
use petrel_tests::scenario::{artifact_bytes, Scenario};
use petrel_tests::{describe, petrel_bin, run_with_timeout};

/// The bound of every wait on the agent (a fault point, a kill, a whole run).
const WAIT: Duration = Duration::from_secs(20);
/// The fewest kills over both scenarios.
const MIN_KILLS: usize = 200;
/// Trials run at once (the machine has two cores).
const WORKERS: usize = 2;
/// A run of trials stops scheduling new ones after this many failures.
const MAX_FAILURES: usize = 8;
/// Fault-point phases, in the order they are reported.
const PHASES: [&str; 7] = [
    "refresh", "download", "stage", "recheck", "apply", "report", "recover",
];

const KIOSK: &str = "type = \"kiosk\"\nvendor = \"acme\"\nregion = \"eu-west\"\nchannel = \"stable\"\nutc_offset_minutes = 0\nlocale = \"en\"";
const DEVICE: &str = "kiosk-1";

const PLAYER: &str = "acme.player";
const FONTS: &str = "acme.fonts";
const CLOCK: &str = "acme.clock";
const WATCHDOG: &str = "acme.watchdog";
const LEGACY: &str = "acme.legacy";

/// What the group runs (application, version): player and fonts updated, clock added,
/// watchdog kept; legacy is not listed, so it is removed.
const GROUP: [(&str, &str); 4] = [
    (PLAYER, "2.1.0"),
    (FONTS, "1.1"),
    (CLOCK, "1.0"),
    (WATCHDOG, "3.0"),
];

const CAMPAIGN: &str = r#"kind = "campaign"
schema_version = 1
id = "converge"
revision = 1
state = "active"

[notice.en]
title = "Kiosk software, spring release"
body = "New player and fonts, a clock; the legacy tool goes."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = { id = "kiosk-eu", revision = 1 }
"#;

fn target(app: &str, version: &str) -> String {
    format!("apps/{app}/{version}/{app}.bin")
}

/// The signed bytes of `app` at `version`: the new player is larger than the transport's
/// 64 KiB chunks, so a kill can stop its download half way (the next run resumes it).
fn signed_bytes(app: &str, version: &str) -> Vec<u8> {
    if app == PLAYER {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..150_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    } else {
        artifact_bytes(&target(app, version))
    }
}

/// An installed set: path relative to the inventory directory → sha256 of the file, or
/// `dir` for a directory. Names starting with `.` are left out at every level.
type Set = BTreeMap<String, String>;

fn installed_set(apps: &Path) -> Set {
    fn walk(root: &Path, dir: &Path, out: &mut Set) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries {
            let e = e.expect("directory entry");
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("under the inventory")
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
                out.insert(rel, sha256_hex(&bytes));
            }
        }
    }
    let mut out = Set::new();
    walk(apps, apps, &mut out);
    out
}

/// How `got` differs from `want`, one line per path.
fn diff(got: &Set, want: &Set) -> String {
    let keys: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let mut lines = Vec::new();
    for k in keys {
        match (got.get(k), want.get(k)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                lines.push(format!("  {k}: {} instead of {}", short(a), short(b)))
            }
            (Some(_), None) => lines.push(format!("  {k}: present, should not be")),
            (None, Some(_)) => lines.push(format!("  {k}: missing")),
            (None, None) => {}
        }
    }
    lines.join("\n")
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// `.petrel-new-*` and `.petrel-old-*` entries of the inventory directory.
fn leftovers(apps: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(apps)
        .expect("inventory directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".petrel-new-") || n.starts_with(".petrel-old-"))
        .collect();
    v.sort();
    v
}

/// Everything on disk that matters after a failed trial: the whole inventory directory
/// (hidden entries too) and the journal.
fn disk(trial: &Path) -> String {
    let apps = trial.join("apps");
    let mut lines = vec![format!("inventory {}:", apps.display())];
    let mut stack = vec![apps.clone()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(es) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in es.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(&apps).unwrap_or(&p).display().to_string();
            if p.is_dir() {
                all.push(format!("  {rel}/"));
                stack.push(p);
            } else {
                let h = std::fs::read(&p)
                    .map(|b| sha256_hex(&b))
                    .unwrap_or_default();
                all.push(format!("  {rel} {}", short(&h)));
            }
        }
    }
    all.sort();
    lines.extend(all);
    let journal = trial.join("state/apply.journal.json");
    match std::fs::read_to_string(&journal) {
        Ok(j) => lines.push(format!("journal {}:\n{j}", journal.display())),
        Err(_) => lines.push("no journal".into()),
    }
    lines.join("\n")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let e = e.expect("entry");
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        }
    }
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("parent directory");
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The two device configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The health check passes: the new set stays.
    Healthy,
    /// The health check fails: the old set is restored.
    FailingHealth,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Healthy => "healthy",
            Kind::FailingHealth => "failing health",
        }
    }
}

/// The repository (kept alive for its tree), a pristine provisioned device, and the two
/// sets a trial may end in.
struct Fleet {
    _scenario: Scenario,
    pristine: PathBuf,
    base_config: String,
    old: Set,
    new: Set,
}

impl Fleet {
    fn new() -> Fleet {
        let mut s = Scenario::new();
        let mut group =
            "kind = \"group\"\nschema_version = 1\nid = \"kiosk-eu\"\nrevision = 1\n".to_string();
        for (app, version) in GROUP {
            s.repo().add(
                "targets",
                &target(app, version),
                &signed_bytes(app, version),
            );
            group.push_str(&format!(
                "\n[apps.{app:?}]\nversion = {version:?}\ntarget = {:?}\n",
                target(app, version)
            ));
        }
        s.group(&group);
        s.assign("kiosk-eu", &[DEVICE], false, &[]);
        s.create_campaign(CAMPAIGN);
        s.publish();

        let d = s.device(DEVICE, KIOSK);
        d.install(PLAYER, "2.0.1", b"player 2.0.1, installed long ago\n");
        d.install(WATCHDOG, "3.0", &signed_bytes(WATCHDOG, "3.0"));
        let apps = d.dir().join("apps");
        // Installed by hand as a tree: the inventory takes its hash from SHA256.
        let fonts = apps.join(FONTS);
        write(&fonts.join("VERSION"), "1.0\n");
        write(&fonts.join("SHA256"), format!("{}\n", "ab".repeat(32)));
        write(
            &fonts.join("fonts/regular/Sans.ttf"),
            b"sans regular glyphs".repeat(40),
        );
        write(
            &fonts.join("fonts/bold/Sans-Bold.ttf"),
            b"sans bold glyphs".repeat(40),
        );
        write(
            &fonts.join("fonts/bold/Serif-Bold.ttf"),
            b"serif bold glyphs".repeat(40),
        );
        write(
            &fonts.join("licenses/OFL.txt"),
            "SIL Open Font License 1.1\n",
        );
        write(&fonts.join("README"), "fonts for the kiosk\n");
        // A tree without SHA256 (its hash is unknown; its version still counts).
        let legacy = apps.join(LEGACY);
        write(&legacy.join("VERSION"), "0.9\n");
        write(&legacy.join("bin/legacy"), "#!/bin/sh\necho legacy\n");
        write(
            &legacy.join("share/data/a.dat"),
            b"legacy data a".repeat(10),
        );
        write(
            &legacy.join("share/data/b.dat"),
            b"legacy data b".repeat(10),
        );
        write(&legacy.join("share/empty/.keep"), "");
        write(&legacy.join("etc/legacy.conf"), "mode = old\n");

        let old = installed_set(&apps);
        let mut new: Set = old
            .iter()
            .filter(|(k, _)| {
                [PLAYER, FONTS, LEGACY]
                    .iter()
                    .all(|a| *k != a && !k.starts_with(&format!("{a}/")))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (app, version) in [(PLAYER, "2.1.0"), (FONTS, "1.1"), (CLOCK, "1.0")] {
            new.insert(app.into(), "dir".into());
            new.insert(
                format!("{app}/VERSION"),
                sha256_hex(format!("{version}\n").as_bytes()),
            );
            new.insert(
                format!("{app}/{app}.bin"),
                sha256_hex(&signed_bytes(app, version)),
            );
        }
        assert!(
            old.len() > 20 && old.contains_key("acme.fonts/fonts/bold/Serif-Bold.ttf"),
            "{old:?}"
        );
        let base_config =
            std::fs::read_to_string(d.dir().join("device.toml")).expect("device.toml");
        Fleet {
            pristine: d.dir().to_path_buf(),
            _scenario: s,
            base_config,
            old,
            new,
        }
    }

    /// The set a scenario must end in.
    fn expected(&self, kind: Kind) -> &Set {
        match kind {
            Kind::Healthy => &self.new,
            Kind::FailingHealth => &self.old,
        }
    }

    /// A fresh copy of the device in `dir`, configured for `kind` (hook log and health
    /// check in `dir`); returns its configuration file.
    fn fresh(&self, kind: Kind, dir: &Path) -> PathBuf {
        copy_tree(&self.pristine, dir);
        let apps = dir.join("apps");
        let log = dir.join("hooks.log");
        let hook = format!(
            "echo \"$PETREL_APP $PETREL_VERSION $PETREL_STATE\" >> '{}'",
            log.display()
        );
        let health = match kind {
            Kind::Healthy => format!(
                "test \"$(cat '{a}/{CLOCK}/VERSION')\" = 1.0 && test -f '{a}/{PLAYER}/{PLAYER}.bin' && test ! -e '{a}/{LEGACY}'",
                a = apps.display()
            ),
            Kind::FailingHealth => "echo 'the new set does not start' >&2; exit 1".to_string(),
        };
        let config = dir.join("device.toml");
        write(
            &config,
            format!(
                "{}\n[hooks]\non_apply = [\"sh\", \"-c\", {hook:?}]\ntimeout_secs = 10\n\n[health]\ncommand = [\"sh\", \"-c\", {health:?}]\ntimeout_secs = 10\n",
                self.base_config
            ),
        );
        config
    }
}

/// `petrel --config CONFIG ARGS…` without fault injection.
fn petrel(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(petrel_bin());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("PETREL_FAULT_STOP_AT")
        .env_remove("PETREL_FAULT_LOG");
    cmd
}

/// One fault point, as `PETREL_FAULT_LOG` records it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Point {
    n: u64,
    phase: String,
    what: String,
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "point {} ({}: {})", self.n, self.phase, self.what)
    }
}

fn read_points(log: &Path) -> Vec<Point> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let n = it.next().and_then(|n| n.parse().ok());
            let (Some(n), Some(phase)) = (n, it.next()) else {
                panic!("{}: not `N PHASE WHAT`: {l:?}", log.display())
            };
            Point {
                n,
                phase: phase.to_string(),
                what: it.next().unwrap_or_default().to_string(),
            }
        })
        .collect()
}

/// The result of every install of a `petrel update --json` run.
fn install_results(stdout: &[u8]) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_slice(stdout)
        .map_err(|e| format!("petrel update --json printed no JSON ({e})"))?;
    Ok(v["installs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["result"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default())
}

/// One clean `petrel update` of a fresh device with `PETREL_FAULT_LOG`: the fault points.
fn learn(fleet: &Fleet, kind: Kind, dir: &Path) -> Vec<Point> {
    let config = fleet.fresh(kind, dir);
    let log = dir.join("faults.log");
    let mut cmd = petrel(&config, &["update", "--json"]);
    cmd.env("PETREL_FAULT_LOG", &log);
    let out = run_with_timeout(&mut cmd, WAIT).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
    let results =
        install_results(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    let (code, result) = match kind {
        Kind::Healthy => (0, "installed"),
        Kind::FailingHealth => (1, "rolled_back"),
    };
    assert_eq!(
        (out.status.code(), results),
        (Some(code), vec![result.to_string()]),
        "the clean run of the {} scenario: {}",
        kind.name(),
        describe(&out)
    );
    let set = installed_set(&dir.join("apps"));
    assert!(
        set == *fleet.expected(kind),
        "the clean run of the {} scenario left another set:\n{}",
        kind.name(),
        diff(&set, fleet.expected(kind))
    );
    assert_eq!(leftovers(&dir.join("apps")), Vec::<String>::new());
    let hooks = std::fs::read_to_string(dir.join("hooks.log")).unwrap_or_default();
    for app in [PLAYER, FONTS, CLOCK, LEGACY] {
        assert!(
            hooks.lines().any(|l| l.starts_with(&format!("{app} "))),
            "no on_apply hook ran for {app}:\n{hooks}"
        );
    }
    if kind == Kind::FailingHealth {
        assert!(
            hooks.contains(&format!("{PLAYER} 2.0.1 restored")),
            "the restored player was not hooked:\n{hooks}"
        );
    }
    let points = read_points(&log);
    assert!(!points.is_empty(), "no fault point was logged");
    for (i, p) in points.iter().enumerate() {
        assert_eq!(
            p.n,
            i as u64 + 1,
            "fault points are numbered 1, 2, …: {points:?}"
        );
    }
    points
}

/// What a trial saw.
struct Seen {
    /// The set right after the kill was neither the old nor the new one (recover repaired
    /// it).
    torn: bool,
    /// What `petrel recover` left: the new set (else the old one).
    recovered_new: bool,
    /// `petrel update` runs needed to finish.
    runs: usize,
    /// Time spent: fresh copy, run to the kill, `petrel recover`, the runs to finish.
    times: [Duration; 4],
}

/// Runs `petrel update` with `PETREL_FAULT_STOP_AT=point.n`, waits for the marker on its
/// stderr (read on a thread) and sends SIGKILL. The trial's own fault log must show the
/// same point there.
fn kill_at(config: &Path, point: &Point, log: &Path) -> Result<(), String> {
    let k = point.n;
    let mut child = petrel(config, &["update"])
        .env("PETREL_FAULT_STOP_AT", k.to_string())
        .env("PETREL_FAULT_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start petrel: {e}"))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let marker = format!("petrel: fault point {k} reached");
    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    let reached = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                let hit = l.starts_with(&marker);
                lines.push(l);
                if hit {
                    break Ok(());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!("fault point {k} was not reached within {WAIT:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(format!(
                    "petrel update ended before fault point {k} was reached"
                ))
            }
        }
    };
    // The real SIGKILL, right where the agent waits: as a power cut there.
    let _ = child.kill();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break None,
        }
    };
    let stderr = lines.join("\n");
    reached.map_err(|e| format!("{e}; status {status:?}; stderr:\n{stderr}"))?;
    {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Some(s) if s.signal() == Some(9) => {}
            other => {
                return Err(format!(
                    "petrel was not killed by SIGKILL at {point}: {other:?}; stderr:\n{stderr}"
                ))
            }
        }
    }
    let logged = read_points(log);
    if logged.last() != Some(point) {
        return Err(format!(
            "the fault points are not the same in every run: this run stopped at {:?}, the clean run had {point} there",
            logged.last()
        ));
    }
    Ok(())
}

/// One trial on a fresh device in `dir`: kill at `point`, recover, finish.
fn trial(fleet: &Fleet, kind: Kind, point: &Point, dir: &Path) -> Result<Seen, String> {
    let mut clock = Instant::now();
    let mut lap = || {
        let t = clock.elapsed();
        clock = Instant::now();
        t
    };
    let config = fleet.fresh(kind, dir);
    let apps = dir.join("apps");
    let t_copy = lap();
    kill_at(&config, point, &dir.join("faults.log"))?;
    let t_kill = lap();
    let killed = installed_set(&apps);
    let torn = killed != fleet.old && killed != fleet.new;

    let out = run_with_timeout(&mut petrel(&config, &["recover"]), WAIT)
        .map_err(|e| format!("petrel recover: {e}"))?;
    if !out.status.success() {
        return Err(format!("petrel recover failed: {}", describe(&out)));
    }
    let t_recover = lap();
    let recovered = installed_set(&apps);
    let recovered_new = recovered == fleet.new;
    if !recovered_new && recovered != fleet.old {
        return Err(format!(
            "after petrel recover the set is neither the old nor the new one.\nagainst the old set:\n{}\nagainst the new set:\n{}\nright after the kill, against the old set:\n{}\npetrel recover said: {}",
            diff(&recovered, &fleet.old),
            diff(&recovered, &fleet.new),
            diff(&killed, &fleet.old),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }

    let mut runs = 0;
    let mut history = Vec::new();
    let finished = loop {
        if runs == 3 {
            break false;
        }
        runs += 1;
        let out = run_with_timeout(&mut petrel(&config, &["update", "--json"]), WAIT)
            .map_err(|e| format!("petrel update (run {runs} after the kill): {e}"))?;
        let results =
            install_results(&out.stdout).map_err(|e| format!("{e}: {}", describe(&out)))?;
        let code = out.status.code();
        let code_ok = match kind {
            Kind::Healthy => code == Some(0),
            Kind::FailingHealth => matches!(code, Some(0 | 1)),
        };
        if !code_ok {
            return Err(format!(
                "petrel update (run {runs} after the kill) failed: {}",
                describe(&out)
            ));
        }
        let settled = match kind {
            Kind::Healthy => "installed",
            Kind::FailingHealth => "rolled_back",
        };
        history.push(format!("run {runs}: exit {code:?}, installs {results:?}"));
        if results.is_empty() || results.iter().any(|r| r == settled) {
            break true;
        }
    };
    if !finished {
        return Err(format!(
            "petrel update did not finish in 3 runs after the kill: {}",
            history.join("; ")
        ));
    }
    let t_finish = lap();
    let last = installed_set(&apps);
    let want = fleet.expected(kind);
    if last != *want {
        return Err(format!(
            "after {} the set is not the {} one:\n{}",
            history.join("; "),
            if kind == Kind::Healthy { "new" } else { "old" },
            diff(&last, want)
        ));
    }
    let left = leftovers(&apps);
    if !left.is_empty() {
        return Err(format!("leftovers after {}: {left:?}", history.join("; ")));
    }
    if dir.join("state/apply.journal.json").exists() {
        return Err(format!(
            "state/apply.journal.json remains after {}",
            history.join("; ")
        ));
    }
    // The outcome is recorded exactly once: one final report (succeeded, or failed and
    // rolled back), never lost to the kill and never a second install of a refused set.
    let finals: Vec<(ReportResult, bool)> = Outbox::open(dir.join("state/outbox"))
        .and_then(|o| o.pending())
        .map_err(|e| format!("the outbox: {e}"))?
        .into_iter()
        .filter(|r| r.signed.campaign == "converge" && r.signed.result.is_final())
        .map(|r| (r.signed.result, r.signed.rolled_back))
        .collect();
    let want_final = match kind {
        Kind::Healthy => (ReportResult::Succeeded, false),
        Kind::FailingHealth => (ReportResult::Failed, true),
    };
    if finals != [want_final] {
        return Err(format!(
            "final reports after {}: {finals:?}, expected exactly [{want_final:?}]",
            history.join("; ")
        ));
    }
    Ok(Seen {
        torn,
        recovered_new,
        runs,
        times: [t_copy, t_kill, t_recover, t_finish],
    })
}

/// Kills per phase, in [`PHASES`] order (then any other phase).
fn by_phase(points: &[&Point]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in points {
        *counts.entry(p.phase.as_str()).or_default() += 1;
    }
    let mut parts: Vec<String> = PHASES
        .iter()
        .map(|ph| format!("{ph} {}", counts.remove(ph).unwrap_or(0)))
        .collect();
    parts.extend(counts.iter().map(|(ph, n)| format!("{ph} {n}")));
    parts.join(", ")
}

/// The device has five applications: `acme.player` (one file) is updated, `acme.fonts` (a
/// tree installed by hand: subdirectories, several files, a `SHA256` file) is updated to a
/// single-file artifact, `acme.clock` is added, `acme.legacy` (a tree without `SHA256`) is
/// removed, and `acme.watchdog` is already what the group wants. A campaign without windows
/// or consent converges the device to the group; an `on_apply` hook appends to a log. In
/// the "healthy" scenario the health check passes (it reads files of the new set); in the
/// "failing" one it fails, so the new set is rolled back and the old one restored.
///
/// First one clean `petrel update` per scenario with `PETREL_FAULT_LOG` learns the fault
/// points (N, and the phase of each). Then, for at least [`MIN_KILLS`] trials spread over
/// every point of both scenarios, each on a fresh copy of the device: `petrel update` with
/// `PETREL_FAULT_STOP_AT=k`, SIGKILL once it says it reached point k, `petrel recover`, the
/// installed set (relative path → sha256 of every file and directory of the inventory,
/// hidden names excluded) must be exactly the old or the new set; then `petrel update`
/// (at most three runs) must finish with the expected set (new when healthy, old when the
/// health check fails), no `.petrel-new-*`/`.petrel-old-*` directory and no journal.
/// The new player spans three transport chunks, so some kills stop its download half way.
#[test]
fn a_sigkill_at_any_point_leaves_the_old_or_the_new_set_and_the_next_run_finishes() {
    let started = Instant::now();
    petrel_bin();
    let built = started.elapsed();
    let fleet = Fleet::new();
    let made = started.elapsed();
    // The devices live in memory when the machine has a tmpfs: a SIGKILL does not lose
    // the page cache, so the agent's fsyncs only cost time here.
    let work = match Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::Builder::new()
            .prefix("petrel-agent-crash-")
            .tempdir_in(shm),
        _ => tempfile::tempdir(),
    }
    .expect("temporary directory");

    let kinds = [Kind::Healthy, Kind::FailingHealth];
    let learned: Vec<Vec<Point>> = kinds
        .iter()
        .map(|&k| learn(&fleet, k, &work.path().join(format!("learn-{k:?}"))))
        .collect();
    let learnt = started.elapsed();

    // Every point of both scenarios, round robin, until there are enough kills.
    let all: Vec<(Kind, &Point)> = kinds
        .iter()
        .zip(&learned)
        .flat_map(|(&k, ps)| ps.iter().map(move |p| (k, p)))
        .collect();
    // Whole passes, then the remainder spread evenly over the list.
    let passes = (MIN_KILLS / all.len()).max(1);
    let extra = MIN_KILLS.saturating_sub(passes * all.len());
    let mut trials: Vec<(Kind, &Point)> = (0..passes).flat_map(|_| all.iter().copied()).collect();
    trials.extend((0..extra).map(|j| all[j * all.len() / extra]));

    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let done: Mutex<Vec<(Kind, &Point, Seen)>> = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..WORKERS {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= trials.len() || failures.lock().unwrap().len() >= MAX_FAILURES {
                    break;
                }
                let (kind, point) = trials[i];
                let dir = work.path().join(format!("trial-{i}"));
                match trial(&fleet, kind, point, &dir) {
                    Ok(seen) => {
                        done.lock().unwrap().push((kind, point, seen));
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    Err(e) => failures.lock().unwrap().push(format!(
                        "trial {i}, {} scenario, kill at {point}: {e}\non disk now:\n{}",
                        kind.name(),
                        disk(&dir)
                    )),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let done = done.into_inner().unwrap();

    let mut summary = Vec::new();
    let total_points: usize = learned.iter().map(Vec::len).sum();
    let killed: Vec<&Point> = done.iter().map(|(_, p, _)| *p).collect();
    summary.push(format!(
        "agent_crash: {} kills over {total_points} points ({} trials, {} failed) in {:.1} s; phases: {}",
        done.len(),
        trials.len(),
        failures.len(),
        (started.elapsed() - built).as_secs_f64(),
        by_phase(&killed)
    ));
    for (kind, points) in kinds.iter().zip(&learned) {
        let mine: Vec<&(Kind, &Point, Seen)> = done.iter().filter(|(k, _, _)| k == kind).collect();
        let ps: Vec<&Point> = mine.iter().map(|(_, p, _)| *p).collect();
        summary.push(format!(
            "agent_crash: {} scenario: N = {} points, {} kills; phases: {}; torn right after the kill {}, recovered to the new set {}, to the old set {}; runs to finish: {}",
            kind.name(),
            points.len(),
            mine.len(),
            by_phase(&ps),
            mine.iter().filter(|(_, _, s)| s.torn).count(),
            mine.iter().filter(|(_, _, s)| s.recovered_new).count(),
            mine.iter().filter(|(_, _, s)| !s.recovered_new).count(),
            (1..=3)
                .map(|r| format!("{r}: {}", mine.iter().filter(|(_, _, s)| s.runs == r).count()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    summary.push(format!(
        "agent_crash: built petrel {:.1} s, repository and device {:.1} s, learnt the points {:.1} s, trials {:.1} s",
        built.as_secs_f64(),
        (made - built).as_secs_f64(),
        (learnt - made).as_secs_f64(),
        (started.elapsed() - learnt).as_secs_f64()
    ));
    if !done.is_empty() {
        let mean = |i: usize| {
            done.iter()
                .map(|(_, _, s)| s.times[i])
                .sum::<Duration>()
                .as_millis() as usize
                / done.len()
        };
        summary.push(format!(
            "agent_crash: per trial, mean ms: copy {}, run to the kill {}, recover {}, runs to finish {}",
            mean(0),
            mean(1),
            mean(2),
            mean(3)
        ));
    }
    let summary = summary.join("\n");
    eprintln!("{summary}");
    for (kind, points) in kinds.iter().zip(&learned) {
        eprintln!("agent_crash: {} scenario points:", kind.name());
        for p in points {
            eprintln!("  {p}");
        }
    }

    assert!(
        failures.is_empty(),
        "{summary}\n{} trial(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(done.len() >= MIN_KILLS, "{summary}");
    for (kind, points) in kinds.iter().zip(&learned) {
        let hit: BTreeSet<u64> = done
            .iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, p, _)| p.n)
            .collect();
        assert_eq!(
            hit.len(),
            points.len(),
            "every point of the {} scenario is killed at least once\n{summary}",
            kind.name()
        );
        let killed: Vec<&Point> = done
            .iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, p, _)| *p)
            .collect();
        for phase in ["refresh", "download", "recheck", "apply"] {
            assert!(
                killed.iter().any(|p| p.phase == phase),
                "no kill in the {phase} phase of the {} scenario\n{summary}",
                kind.name()
            );
        }
        assert!(
            killed
                .iter()
                .any(|p| p.phase == "apply" && p.what == "health check"),
            "no kill at the health check of the {} scenario\n{summary}",
            kind.name()
        );
    }
    let rollback = |p: &Point| {
        p.phase == "apply"
            && (p.what.contains("rolling back")
                || p.what.contains("(refused)")
                || p.what.contains("(previous)")
                || p.what.contains("(restored)"))
    };
    let rollback_kills = done
        .iter()
        .filter(|(k, p, _)| *k == Kind::FailingHealth && rollback(p))
        .count();
    assert!(
        rollback_kills >= 3,
        "the failing scenario kills during the rollback ({rollback_kills} kills)\n{summary}"
    );
    assert!(
        !learned[0].iter().any(rollback),
        "the healthy scenario never rolls back\n{summary}"
    );
}

//! The device agent's staging and all-or-nothing apply, through the library API
//! (`Agent::update`): a repository built with the simulator and written as a static tree,
//! served over `file://`; a device (configuration, profile, inventory directory, state
//! directory) in a temporary directory.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, NaiveTime, Utc};
use petrel_client::agent::install::{self, files::FilesInstaller, ApplyError, Hooks, Recovery};
use petrel_client::agent::stage::StagedPlan;
use petrel_client::agent::{Agent, AgentConfig, InstallResult, UpdateHooks, UpdateOutcome};
use petrel_client::decide::Status;
use petrel_client::manifest::{
    assign_bin_for, Assignment, AssignmentBin, CampaignManifest, GroupManifest, Manifest,
};
use petrel_client::report::{Outbox, ReportResult};
use support::RepoSim;
use tempfile::TempDir;

const DEVICE: &str = "kiosk-0042";
const PLAYER: &str = "apps/acme/player/2.1.0/player.bin";
const FONTS: &str = "apps/acme/fonts/1.0/fonts.bin";
const CLOCK: &str = "apps/acme/clock/1.0/clock.bin";

fn artifact(target: &str) -> Vec<u8> {
    format!("the bytes of {target}\n").repeat(40).into_bytes()
}

/// Tomorrow at `hh:mm` UTC (the device's offset is 0).
fn at(hh: u32, mm: u32) -> DateTime<Utc> {
    let day = (Utc::now() + Duration::days(1)).date_naive();
    day.and_time(NaiveTime::from_hms_opt(hh, mm, 0).unwrap())
        .and_utc()
}

fn group() -> GroupManifest {
    GroupManifest::from_toml(&format!(
        r#"
kind = "group"
schema_version = 1
id = "kiosk-eu"
revision = 1

[apps."acme.player"]
version = "2.1.0"
target = "{PLAYER}"
post_install = "start"

[apps."acme.fonts"]
version = "1.0"
target = "{FONTS}"

[apps."acme.clock"]
version = "1.0"
target = "{CLOCK}"
"#
    ))
    .unwrap()
}

/// A silent campaign delivering the group: downloads 01:00–05:00, installs 02:00–04:00.
fn windowed(revision: u64, state: &str) -> String {
    format!(
        r#"
kind = "campaign"
schema_version = 1
id = "converge"
revision = {revision}
state = "{state}"

[notice.en]
title = "Kiosk set"
body = "Silent."
severity = "info"

[consent]
policy = "none"

[payload]
group = {{ id = "kiosk-eu", revision = 1 }}

[schedule]
download_window = {{ start = "01:00", end = "05:00" }}
apply_window = {{ start = "02:00", end = "04:00" }}
"#
    )
}

/// A forced campaign that may only update player 1.0 or 1.1.
const FORCED: &str = r#"
kind = "campaign"
schema_version = 1
id = "player-fix"
revision = 1
state = "active"
method = "forced"

[notice.en]
title = "Security fix"
body = "Fixes a flaw."
severity = "critical"

[consent]
policy = "none"

[forced_from]
"acme.player" = ["1.0", "1.1"]

[payload]
group = { id = "kiosk-eu", revision = 1 }
"#;

struct Fleet {
    sim: RepoSim,
    tree: TempDir,
}

impl Fleet {
    fn new(campaign: &str) -> Fleet {
        let mut sim = RepoSim::new();
        sim.delegate("targets", "campaigns", &["campaigns/*"], true);
        sim.delegate("targets", "groups", &["groups/*"], true);
        sim.delegate("targets", "assign", &["assign/*"], true);
        let g = group();
        for app in g.apps.values() {
            sim.add_target("targets", &app.target, &artifact(&app.target));
        }
        sim.add_target("groups", &g.target_path(), &g.to_canonical_json().unwrap());
        let mut bin = AssignmentBin::new(assign_bin_for(DEVICE, 2), AssignmentBin::random_salt());
        bin.insert(DEVICE, Assignment::to_group("kiosk-eu"))
            .unwrap();
        sim.add_target(
            "assign",
            &bin.target_path(),
            &bin.to_canonical_json().unwrap(),
        );
        let mut f = Fleet {
            sim,
            tree: tempfile::tempdir().unwrap(),
        };
        f.campaign(campaign);
        f
    }

    /// Signs and publishes a campaign manifest (a new repository release).
    fn campaign(&mut self, toml: &str) {
        let c = CampaignManifest::from_toml(toml).unwrap();
        self.sim.add_target(
            "campaigns",
            &c.target_path(),
            &c.to_canonical_json().unwrap(),
        );
        self.sim.targets.version += 1;
        for t in self.sim.delegated.values_mut() {
            t.version += 1;
        }
        self.sim.commit();
        self.sim.write_tree(self.tree.path());
    }

    fn url(&self, dir: &str) -> String {
        format!("file://{}/{dir}", self.tree.path().display())
    }

    /// Every served copy of a target (plain and hash-prefixed names).
    fn served_copies(&self, target: &str) -> Vec<PathBuf> {
        let (dir, name) = target.rsplit_once('/').unwrap();
        let d = self.tree.path().join("targets").join(dir);
        fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().ends_with(name))
            .collect()
    }
}

struct Device {
    dir: TempDir,
}

const PROFILE: &str = r#"
id = "kiosk-0042"
type = "kiosk"
vendor = "acme"
region = "eu-west"
utc_offset_minutes = 0
locale = "en"
"#;

impl Device {
    /// A provisioned device running player 2.0.1, the group's fonts, and acme.legacy 0.9
    /// (which the group does not list). `extra` is appended to the configuration.
    fn new(fleet: &Fleet, extra: &str) -> Device {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("device.toml"),
            format!(
                r#"
state_dir = "state"
profile = "profile.toml"
{extra}
[repository]
metadata_url = "{}"
targets_url = "{}"

[inventory]
dir = "apps"
"#,
                fleet.url("metadata"),
                fleet.url("targets")
            ),
        )
        .unwrap();
        fs::write(dir.path().join("profile.toml"), PROFILE).unwrap();
        fs::create_dir(dir.path().join("apps")).unwrap();
        let d = Device { dir };
        Agent::init(&d.config(), &fleet.sim.initial_root(), false).unwrap();
        d.install(
            "acme.player",
            "2.0.1",
            &artifact("apps/acme/player/2.0.1/player.bin"),
        );
        d.install("acme.fonts", "1.0", &artifact(FONTS));
        d.install("acme.legacy", "0.9", b"legacy");
        d
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> AgentConfig {
        AgentConfig::load(&self.path("device.toml")).unwrap()
    }

    fn agent(&self) -> Agent {
        Agent::open(self.config()).unwrap()
    }

    fn update(&self, t: DateTime<Utc>) -> UpdateOutcome {
        self.agent().update(Some(t)).unwrap()
    }

    /// Installs an application by hand: `apps/<app>/VERSION` and its artifact file.
    fn install(&self, app: &str, version: &str, bytes: &[u8]) {
        let d = self.path(&format!("apps/{app}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("VERSION"), format!("{version}\n")).unwrap();
        fs::write(d.join("artifact.bin"), bytes).unwrap();
    }

    /// The inventory directory exactly: application → (version, artifact bytes); hidden
    /// entries listed under their own name so leftovers are caught.
    fn apps(&self) -> BTreeMap<String, (String, Vec<u8>)> {
        let mut out = BTreeMap::new();
        for e in fs::read_dir(self.path("apps")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let mut version = String::new();
            let mut bytes = Vec::new();
            for f in fs::read_dir(e.path()).unwrap() {
                let f = f.unwrap();
                if f.file_name() == "VERSION" {
                    version = fs::read_to_string(f.path()).unwrap().trim().to_string();
                } else {
                    bytes = fs::read(f.path()).unwrap();
                }
            }
            out.insert(name, (version, bytes));
        }
        out
    }

    fn reports(&self) -> Vec<(String, ReportResult, String)> {
        let Ok(outbox) = Outbox::open(self.path("state/outbox")) else {
            return Vec::new();
        };
        outbox
            .pending()
            .unwrap()
            .into_iter()
            .map(|r| (r.signed.campaign, r.signed.result, r.signed.reason))
            .collect()
    }
}

/// What the device runs before: player 2.0.1, fonts 1.0, legacy 0.9.
fn old_set() -> BTreeMap<String, (String, Vec<u8>)> {
    BTreeMap::from([
        (
            "acme.player".to_string(),
            (
                "2.0.1".to_string(),
                artifact("apps/acme/player/2.0.1/player.bin"),
            ),
        ),
        (
            "acme.fonts".to_string(),
            ("1.0".to_string(), artifact(FONTS)),
        ),
        (
            "acme.legacy".to_string(),
            ("0.9".to_string(), b"legacy".to_vec()),
        ),
    ])
}

/// Exactly the group: player 2.1.0, fonts 1.0, clock 1.0, with the signed bytes.
fn new_set() -> BTreeMap<String, (String, Vec<u8>)> {
    BTreeMap::from([
        (
            "acme.player".to_string(),
            ("2.1.0".to_string(), artifact(PLAYER)),
        ),
        (
            "acme.fonts".to_string(),
            ("1.0".to_string(), artifact(FONTS)),
        ),
        (
            "acme.clock".to_string(),
            ("1.0".to_string(), artifact(CLOCK)),
        ),
    ])
}

fn status(out: &UpdateOutcome, id: &str) -> Status {
    out.decision
        .as_ref()
        .unwrap()
        .campaign(id)
        .unwrap()
        .status
        .clone()
}

#[test]
fn staged_then_applied_only_in_the_apply_window_converging_a_hand_modified_inventory() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let dev = Device::new(&fleet, "");

    // Outside the download window: nothing happens.
    let out = dev.update(at(0, 30));
    assert!(out.staged.is_empty() && out.installs.is_empty());
    assert!(matches!(
        status(&out, "converge"),
        Status::WaitingForDownloadWindow { .. }
    ));

    // In the download window, outside the apply window: staged and verified, not installed.
    let out = dev.update(at(1, 30));
    assert_eq!(out.staged.len(), 1, "{out:?}");
    let s = &out.staged[0];
    assert_eq!(s.error, None);
    assert_eq!(s.downloaded, [CLOCK, PLAYER]);
    assert!(
        out.installs.is_empty(),
        "nothing is installed outside the apply window"
    );
    assert_eq!(dev.apps(), old_set());
    assert!(matches!(
        status(&out, "converge"),
        Status::WaitingForApplyWindow { .. }
    ));
    let plan = StagedPlan::load(&dev.path("state/staging/converge-1"))
        .unwrap()
        .expect("the staged plan is recorded");
    assert_eq!(plan.campaign, "converge");
    assert_eq!(plan.group, "kiosk-eu");
    let summary: Vec<String> = plan.steps.iter().map(|s| s.step.to_string()).collect();
    assert_eq!(
        summary,
        [
            format!("add acme.clock 1.0 ({CLOCK})"),
            "remove acme.legacy 0.9 (not in the group)".to_string(),
            format!("update acme.player 2.0.1 -> 2.1.0 ({PLAYER}), then start"),
        ]
    );
    let player = plan
        .steps
        .iter()
        .find(|s| s.step.app == "acme.player")
        .unwrap();
    let art = player.artifact.as_ref().unwrap();
    assert_eq!(
        fs::read(dev.path("state/staging/converge-1").join(&art.file)).unwrap(),
        artifact(PLAYER)
    );
    assert!(dev
        .reports()
        .iter()
        .any(|(c, r, _)| c == "converge" && *r == ReportResult::Staged));
    // A second run in the same state downloads nothing and still waits.
    let out = dev.update(at(1, 40));
    assert!(out.staged.is_empty(), "{out:?}");
    assert_eq!(dev.apps(), old_set());

    // In the apply window: installed, exactly the group.
    let out = dev.update(at(2, 30));
    let i = out.installs.first().expect("an install was due");
    assert_eq!(i.result, InstallResult::Installed, "{}", i.reason);
    assert_eq!(dev.apps(), new_set());
    assert_eq!(status(&out, "converge"), Status::UpToDate);
    assert!(
        !dev.path("state/staging/converge-1").exists(),
        "staging is cleaned up"
    );
    assert!(!dev.path("state/apply.journal.json").exists());
    let reports = dev.reports();
    let ok = reports
        .iter()
        .find(|(_, r, _)| *r == ReportResult::Succeeded)
        .expect("a succeeded report is queued");
    assert!(ok.2.contains("update acme.player 2.0.1 -> 2.1.0"), "{ok:?}");

    // Hand changes: an extra application, replaced font bytes, a removed clock.
    dev.install("acme.extra", "3", b"extra");
    fs::write(dev.path("apps/acme.fonts/artifact.bin"), b"swapped by hand").unwrap();
    fs::remove_dir_all(dev.path("apps/acme.clock")).unwrap();
    let out = dev.update(at(2, 40));
    assert_eq!(out.staged.len(), 1);
    let i = out.installs.first().expect("an install was due");
    assert_eq!(i.result, InstallResult::Installed, "{}", i.reason);
    assert_eq!(dev.apps(), new_set(), "converged again: {:?}", i.changes);
    assert!(
        i.changes.iter().any(|c| c == "remove acme.extra 3"),
        "{:?}",
        i.changes
    );
    assert!(
        i.changes.iter().any(|c| c == "reinstall acme.fonts 1.0"),
        "{:?}",
        i.changes
    );
}

#[test]
fn a_tampered_artifact_on_the_server_is_refused_and_nothing_is_staged_or_installed() {
    let fleet = Fleet::new(&windowed(1, "active"));
    for p in fleet.served_copies(PLAYER) {
        let mut bytes = fs::read(&p).unwrap();
        bytes[0] ^= 0x20; // same length, other bytes
        fs::write(&p, bytes).unwrap();
    }
    let dev = Device::new(&fleet, "");
    let out = dev.update(at(2, 30));
    assert!(out.failed());
    let err = out.staged[0].error.as_deref().unwrap();
    assert!(err.contains(PLAYER) && err.contains("mismatch"), "{err}");
    assert!(out.installs.is_empty());
    let st = out.state.as_ref().unwrap();
    assert!(
        !st.staged.contains_key(PLAYER),
        "the refused file is not staged"
    );
    let dir = dev.path("state/staging/converge-1");
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("player")),
        "no copy of the tampered bytes is kept: {names:?}"
    );
    assert!(StagedPlan::load(&dir).unwrap().is_none());
    assert_eq!(dev.apps(), old_set());
}

#[test]
fn staging_resumes_keeping_verified_files_and_redoing_partial_ones() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let dev = Device::new(&fleet, "");
    // The player is missing on the server: the clock is staged, the player fails.
    let hidden: Vec<(PathBuf, Vec<u8>)> = fleet
        .served_copies(PLAYER)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            fs::remove_file(&p).unwrap();
            (p, b)
        })
        .collect();
    let out = dev.update(at(1, 30));
    assert_eq!(out.staged[0].downloaded, [CLOCK]);
    assert!(out.staged[0].error.is_some());
    let dir = dev.path("state/staging/converge-1");
    let clock_file = dir.join("apps%2Facme%2Fclock%2F1.0%2Fclock.bin");
    let clock_inode = fs::metadata(&clock_file).unwrap();
    // A power cut mid-download leaves a temporary file; a damaged copy sits in place.
    fs::write(dir.join(".petrel-tmp-abc"), b"half a download").unwrap();
    fs::write(
        dir.join("apps%2Facme%2Fplayer%2F2.1.0%2Fplayer.bin"),
        &artifact(PLAYER)[..100],
    )
    .unwrap();
    for (p, b) in hidden {
        fs::write(p, b).unwrap();
    }
    let out = dev.update(at(1, 40));
    assert_eq!(out.staged[0].error, None);
    assert_eq!(out.staged[0].downloaded, [PLAYER], "only what was missing");
    assert!(!dir.join(".petrel-tmp-abc").exists());
    assert_eq!(
        fs::read(dir.join("apps%2Facme%2Fplayer%2F2.1.0%2Fplayer.bin")).unwrap(),
        artifact(PLAYER)
    );
    assert_eq!(
        fs::metadata(&clock_file).unwrap().modified().unwrap(),
        clock_inode.modified().unwrap(),
        "the verified clock was kept, not downloaded again"
    );
    assert!(StagedPlan::load(&dir).unwrap().is_some());
}

#[test]
fn a_halt_published_right_before_the_install_installs_nothing() {
    let mut fleet = Fleet::new(&windowed(1, "active"));
    let dev = Device::new(&fleet, "");
    dev.update(at(1, 30));
    assert!(dev.path("state/staging/converge-1/plan.json").exists());

    let tree = fleet.tree.path().to_path_buf();
    let mut halted = None;
    {
        let fleet_ref = &mut fleet;
        let hooks = UpdateHooks {
            before_recheck: Some(Box::new(|| {
                fleet_ref.campaign(&windowed(2, "halted"));
                halted = Some(tree.clone());
            })),
            step: None,
            ..UpdateHooks::default()
        };
        let mut agent = dev.agent();
        let out = agent.update_with(Some(at(2, 30)), hooks).unwrap();
        let i = out
            .installs
            .first()
            .expect("the install was due before the re-check");
        assert_eq!(i.result, InstallResult::NotInstalled);
        assert!(i.reason.contains("was halted"), "{}", i.reason);
        assert!(out
            .reports
            .iter()
            .all(|r| r.result != ReportResult::Succeeded));
    }
    assert!(
        halted.is_some(),
        "the halt was published between decision and install"
    );
    assert_eq!(dev.apps(), old_set());
    assert!(
        dev.path("state/staging")
            .read_dir()
            .unwrap()
            .next()
            .is_some(),
        "the staging is kept while halted"
    );

    // Still halted: nothing; cancelled: the staging is dropped.
    let out = dev.update(at(2, 35));
    assert!(out.installs.is_empty());
    assert_eq!(status(&out, "converge"), Status::Halted);
    fleet.campaign(&windowed(3, "cancelled"));
    let out = dev.update(at(2, 40));
    assert_eq!(status(&out, "converge"), Status::Cancelled);
    assert_eq!(dev.apps(), old_set());
    assert!(
        dev.path("state/staging")
            .read_dir()
            .unwrap()
            .next()
            .is_none(),
        "a cancelled campaign's staging is dropped"
    );
}

#[test]
fn a_forced_campaign_outside_its_set_installs_nothing_and_reports_a_failure() {
    let fleet = Fleet::new(FORCED);
    let dev = Device::new(&fleet, "");
    let out = dev.update(at(2, 30));
    assert!(out.staged.is_empty() && out.installs.is_empty());
    match status(&out, "player-fix") {
        Status::Error { reason } => {
            assert!(
                reason.contains("installed acme.player 2.0.1 is not"),
                "{reason}"
            )
        }
        s => panic!("{s:?}"),
    }
    assert_eq!(dev.apps(), old_set());
    let reports = dev.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].0, "player-fix");
    assert_eq!(reports[0].1, ReportResult::Failed);
    assert!(reports[0].2.contains("forced campaign"), "{:?}", reports[0]);
    // Reported once, not at every run.
    dev.update(at(2, 31));
    assert_eq!(dev.reports().len(), 1);
}

/// Every durable step of an apply, interrupted: after the next start, the inventory is
/// exactly the old set or exactly the new set, with no leftovers; and the next update
/// completes the change.
#[test]
fn an_interruption_at_any_apply_step_leaves_the_old_or_the_new_set() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let (mut saw_old, mut saw_new) = (false, false);
    for n in 0..64 {
        let dev = Device::new(&fleet, "");
        dev.update(at(1, 30));
        let mut fired = false;
        let mut step = |i: usize, _: &str| {
            if i == n {
                fired = true;
                Err(())
            } else {
                Ok(())
            }
        };
        let hooks = UpdateHooks {
            before_recheck: None,
            step: Some(&mut step),
            ..UpdateHooks::default()
        };
        let r = dev.agent().update_with(Some(at(2, 30)), hooks);
        if !fired {
            assert!(r.is_ok(), "{r:?}");
            assert!(n > 5, "the apply has more than {n} steps");
            break;
        }
        assert!(r.is_err(), "step {n}: an interruption is an error");
        // The next start recovers before anything else.
        let agent = dev.agent();
        let recovered = agent.recovered().cloned();
        drop(agent);
        let apps = dev.apps();
        if apps == old_set() {
            saw_old = true;
            assert!(
                matches!(recovered, None | Some(Recovery::RolledBack { .. })),
                "step {n}: {recovered:?}"
            );
        } else {
            assert_eq!(apps, new_set(), "step {n}: neither the old nor the new set");
            assert!(
                matches!(recovered, Some(Recovery::RolledForward(_))),
                "step {n}: {recovered:?}"
            );
            saw_new = true;
        }
        assert!(!dev.path("state/apply.journal.json").exists(), "step {n}");
        let out = dev.update(at(2, 40));
        assert_eq!(dev.apps(), new_set(), "step {n}: {:?}", out.installs);
    }
    assert!(
        saw_old && saw_new,
        "both sides of the commit point were exercised"
    );
}

/// A failing health check restores the previous set exactly, and an interruption at any
/// step of the install or of that rollback still ends, after the next start, in the old
/// set: the new set is never kept, and the journal is gone.
#[test]
fn a_failing_health_check_restores_the_previous_set_even_when_interrupted_at_any_step() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let health = "[health]\ncommand = [\"sh\", \"-c\", \"echo relay self-test failed >&2; exit 1\"]\ntimeout_secs = 5\n";
    // Uninterrupted: rolled back, reported, not tried again.
    let dev = Device::new(&fleet, health);
    dev.update(at(1, 30));
    let out = dev.update(at(2, 30));
    let i = &out.installs[0];
    assert_eq!(i.result, InstallResult::RolledBack, "{}", i.reason);
    assert!(i.reason.contains("relay self-test failed"), "{}", i.reason);
    assert_eq!(dev.apps(), old_set());
    let failed: Vec<_> = Outbox::open(dev.path("state/outbox"))
        .unwrap()
        .pending()
        .unwrap()
        .into_iter()
        .filter(|r| r.signed.result == ReportResult::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].signed.rolled_back,
        "the report says the set was rolled back"
    );
    let again = dev.update(at(2, 40));
    assert!(
        again.installs.is_empty(),
        "the same revision is not tried again"
    );
    assert_eq!(dev.apps(), old_set());

    let mut names = Vec::new();
    for n in 0..80 {
        let dev = Device::new(&fleet, health);
        dev.update(at(1, 30));
        let mut fired = None;
        let mut step = |i: usize, name: &str| {
            if i == n {
                fired = Some(name.to_string());
                Err(())
            } else {
                Ok(())
            }
        };
        let hooks = UpdateHooks {
            step: Some(&mut step),
            ..UpdateHooks::default()
        };
        let r = dev.agent().update_with(Some(at(2, 30)), hooks);
        let Some(name) = fired else {
            assert!(r.is_ok(), "{r:?}");
            break;
        };
        assert!(r.is_err(), "step {n} ({name}): an interruption is an error");
        names.push(name.clone());
        // The next start finishes the job: hooks, health check, rollback.
        drop(dev.agent());
        assert_eq!(dev.apps(), old_set(), "step {n} ({name})");
        assert!(!dev.path("state/apply.journal.json").exists(), "step {n}");
        let leftovers: Vec<_> = fs::read_dir(dev.path("apps"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "step {n} ({name}): {leftovers:?}");
    }
    for phase in [
        "health check",
        "write the journal (rolling back)",
        "(previous) back",
    ] {
        assert!(
            names.iter().any(|n| n.contains(phase)),
            "the interruptions reached {phase:?}: {names:?}"
        );
    }
}

/// Runs the install and stops it right after the commit point (at the first rename);
/// returns the names of the steps reached.
fn interrupt_right_after_the_commit_point(dev: &Device) -> Vec<String> {
    let mut names = Vec::new();
    let mut step = |_: usize, name: &str| {
        names.push(name.to_string());
        if name.starts_with("move ") {
            Err(())
        } else {
            Ok(())
        }
    };
    let hooks = UpdateHooks {
        before_recheck: None,
        step: Some(&mut step),
        ..UpdateHooks::default()
    };
    assert!(dev.agent().update_with(Some(at(2, 30)), hooks).is_err());
    names
}

/// An interruption while a committed apply is being completed is completed at the next
/// start too.
#[test]
fn an_interrupted_recovery_is_completed_at_the_next_start() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let dev = Device::new(&fleet, "");
    dev.update(at(1, 30));
    let names = interrupt_right_after_the_commit_point(&dev);
    assert!(
        names.iter().any(|n| n == "write the journal (committed)"),
        "{names:?}"
    );
    let journal = dev.path("state/apply.journal.json");
    let h = Hooks::default();
    let inv = dev.path("apps");
    let mut files_for = |_: &install::journal::Journal| -> Box<dyn install::Installer> {
        Box::new(FilesInstaller::new(&inv))
    };
    for k in 0..3 {
        let mut fail_at = |i: usize, _: &str| if i == k { Err(()) } else { Ok(()) };
        assert!(install::recover(&journal, &mut files_for, &h, true, &mut fail_at).is_err());
        assert!(journal.exists());
    }
    let r = install::recover(&journal, &mut files_for, &h, true, &mut |_, _| Ok(())).unwrap();
    assert!(matches!(r, Some(Recovery::RolledForward(_))), "{r:?}");
    assert_eq!(dev.apps(), new_set());
}

/// The report queued when the next start completes an interrupted apply names the
/// device's rollout wave, as the report of an uninterrupted install does (rollout status
/// counts it in its wave).
#[test]
fn the_report_of_an_apply_completed_after_an_interruption_names_the_wave() {
    let waved = format!(
        "{}\n[[rollout.waves]]\nshare_bp = 10000\nstart = 2020-01-01T00:00:00Z\n",
        windowed(1, "active")
    );
    let fleet = Fleet::new(&waved);
    let dev = Device::new(&fleet, "");
    dev.update(at(1, 30));
    interrupt_right_after_the_commit_point(&dev);
    // The next start completes the apply and queues the report.
    let agent = dev.agent();
    assert!(
        matches!(agent.recovered(), Some(Recovery::RolledForward(_))),
        "{:?}",
        agent.recovered()
    );
    drop(agent);
    assert_eq!(dev.apps(), new_set());
    let pending = Outbox::open(dev.path("state/outbox"))
        .unwrap()
        .pending()
        .unwrap();
    let done: Vec<_> = pending
        .iter()
        .filter(|r| r.signed.reason.contains("completed after an interruption"))
        .collect();
    assert_eq!(done.len(), 1, "{pending:?}");
    assert_eq!(done[0].signed.result, ReportResult::Succeeded);
    assert_eq!(done[0].signed.wave, Some(1), "{:?}", done[0].signed);
}

#[test]
fn the_on_apply_hook_runs_per_application_with_its_state() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let log = tempfile::tempdir().unwrap();
    let log_file = log.path().join("hook.log");
    let dev = Device::new(
        &fleet,
        &format!(
            "[hooks]\non_apply = [\"sh\", \"-c\", \"echo \\\"$PETREL_CAMPAIGN $1 $2 $3\\\" >> {}\", \"hook\"]\ntimeout_secs = 10\n",
            log_file.display()
        ),
    );
    dev.update(at(1, 30));
    let out = dev.update(at(2, 30));
    assert_eq!(out.installs[0].clone().result, InstallResult::Installed);
    let lines: Vec<String> = fs::read_to_string(&log_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "converge acme.clock 1.0 keep",
            "converge acme.legacy 0.9 removed",
            "converge acme.player 2.1.0 start",
        ]
    );
}

#[test]
fn a_failing_on_apply_hook_restores_the_previous_set_and_is_reported_as_rolled_back() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let dev = Device::new(
        &fleet,
        "[hooks]\non_apply = [\"sh\", \"-c\", \"echo no service >&2; exit 3\"]\n",
    );
    dev.update(at(1, 30));
    let out = dev.update(at(2, 30));
    let i = &out.installs[0];
    assert_eq!(i.result, InstallResult::RolledBack);
    assert!(
        i.reason.contains("on_apply hook failed") && i.reason.contains("no service"),
        "{}",
        i.reason
    );
    assert_eq!(
        dev.apps(),
        old_set(),
        "the previous set is restored byte for byte"
    );
    assert!(dev
        .reports()
        .iter()
        .any(|(_, r, why)| *r == ReportResult::Failed && why.contains("on_apply hook failed")));
    assert!(out.failed(), "a rolled-back install is a failed run");
}

#[test]
fn a_staged_file_damaged_before_the_apply_installs_nothing() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let dev = Device::new(&fleet, "");
    dev.update(at(1, 30));
    let f = dev
        .path("state/staging/converge-1")
        .join("apps%2Facme%2Fplayer%2F2.1.0%2Fplayer.bin");
    let mut b = fs::read(&f).unwrap();
    b[3] ^= 1;
    fs::write(&f, b).unwrap();
    let out = dev.update(at(2, 30));
    let i = out.installs.first().unwrap();
    assert_eq!(i.result, InstallResult::NotInstalled, "{}", i.reason);
    assert!(i.reason.contains(PLAYER), "{}", i.reason);
    assert_eq!(dev.apps(), old_set());
    // The next run downloads it again and installs.
    let out = dev.update(at(2, 40));
    assert_eq!(out.staged[0].downloaded, [PLAYER]);
    assert_eq!(out.installs[0].clone().result, InstallResult::Installed);
    assert_eq!(dev.apps(), new_set());
}

#[test]
fn a_command_inventory_installs_through_the_configured_installer() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let dev = Device::new(&fleet, "");
    let inv = dev.path("inventory.json");
    fs::write(&inv, r#"{"acme.player": {"version": "2.0.1"}}"#).unwrap();
    let seen = dev.path("plan-seen.json");
    let config = fs::read_to_string(dev.path("device.toml"))
        .unwrap()
        .replace(
            "dir = \"apps\"",
            &format!(
                "command = [\"cat\", \"{}\"]\ninstall_command = [\"sh\", \"-c\", \"cp \\\"$1\\\" {} && ls \\\"$PETREL_STAGING\\\" > {}.files && echo '{{\\\"acme.player\\\": {{\\\"version\\\": \\\"2.1.0\\\"}}, \\\"acme.fonts\\\": {{\\\"version\\\": \\\"1.0\\\"}}, \\\"acme.clock\\\": {{\\\"version\\\": \\\"1.0\\\"}}}}' > {}\", \"install\"]",
                inv.display(),
                seen.display(),
                seen.display(),
                inv.display()
            ),
        );
    fs::write(dev.path("device.toml"), config).unwrap();
    dev.update(at(1, 30));
    let out = dev.update(at(2, 30));
    let i = out.installs[0].clone();
    assert_eq!(i.result, InstallResult::Installed, "{}", i.reason);
    let plan: StagedPlan = serde_json::from_slice(&fs::read(&seen).unwrap()).unwrap();
    assert_eq!(plan.campaign, "converge");
    let files = fs::read_to_string(format!("{}.files", seen.display())).unwrap();
    assert!(
        files.contains("player.bin") && files.contains("plan.json"),
        "{files}"
    );
    assert_eq!(i.inventory_after["acme.player"].version, "2.1.0");
}

#[test]
fn device_key_prints_a_stable_public_key() {
    let fleet = Fleet::new(&windowed(1, "active"));
    let dev = Device::new(&fleet, "");
    let a = Agent::device_key_pem(&dev.config()).unwrap();
    assert!(a.starts_with("-----BEGIN PUBLIC KEY-----"), "{a}");
    assert_eq!(a, Agent::device_key_pem(&dev.config()).unwrap());
    assert!(Path::new(&dev.path("state/device.key")).exists());
}

/// `HH:MM` of now + `minutes`, UTC.
fn hhmm(minutes: i64) -> String {
    (Utc::now() + Duration::minutes(minutes))
        .format("%H:%M")
        .to_string()
}

fn petrel_output(dev: &Device, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_petrel"))
        .arg("--config")
        .arg(dev.path("device.toml"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("PETREL_CONFIG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn petrel(dev: &Device, args: &[&str]) -> (bool, String, String) {
    let out = petrel_output(dev, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn petrel_update_stages_in_the_download_window_and_status_shows_the_staged_plan() {
    // The download window is open now; the apply window opens in two hours.
    let campaign = windowed(1, "active")
        .replace("\"01:00\"", &format!("\"{}\"", hhmm(-60)))
        .replace("\"05:00\"", &format!("\"{}\"", hhmm(60)))
        .replace("\"02:00\"", &format!("\"{}\"", hhmm(120)))
        .replace("\"04:00\"", &format!("\"{}\"", hhmm(180)));
    let fleet = Fleet::new(&campaign);
    let dev = Device::new(&fleet, "");
    let (ok, out, err) = petrel(&dev, &["update"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("Staging converge revision 1: downloaded and verified 2 item(s)"),
        "{out}"
    );
    assert!(
        out.contains("Report queued: campaign converge revision 1: staged"),
        "{out}"
    );
    assert!(
        out.contains("converge revision 1: staged; waiting for the apply window"),
        "{out}"
    );
    assert_eq!(dev.apps(), old_set());
    let (ok, status, _) = petrel(&dev, &["status"]);
    assert!(ok);
    assert!(status.contains("Staged (1):"), "{status}");
    assert!(
        status.contains("converge revision 1: 3 change(s) to group kiosk-eu revision 1"),
        "{status}"
    );
    let (ok, json, _) = petrel(&dev, &["update", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["decision"]["campaigns"][0]["status"]["status"],
        "waiting_for_apply_window"
    );
    let (ok, pem, _) = petrel(&dev, &["device-key"]);
    assert!(ok && pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
}

#[test]
fn petrel_update_installs_a_campaign_without_windows_and_fails_loudly_on_a_bad_download() {
    let campaign = windowed(1, "active").replace("[schedule]", "[schedule.unused]");
    let campaign: String = campaign
        .lines()
        .filter(|l| !l.contains("_window") && !l.contains("[schedule"))
        .collect::<Vec<_>>()
        .join("\n");
    let fleet = Fleet::new(&campaign);
    let dev = Device::new(&fleet, "");
    let (ok, out, err) = petrel(&dev, &["update"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("Installed: campaign converge revision 1"),
        "{out}"
    );
    assert_eq!(dev.apps(), new_set());

    // A damaged server copy (the signed length, other bytes): exit status 1 and the reason.
    let fleet = Fleet::new(&campaign);
    for p in fleet.served_copies(CLOCK) {
        let mut bytes = fs::read(&p).unwrap();
        bytes[3] ^= 0x20;
        fs::write(&p, bytes).unwrap();
    }
    let dev = Device::new(&fleet, "");
    let out = petrel_output(&dev, &["update"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("download FAILED"), "{stdout}");
    assert!(
        stderr.contains("a download was not the signed bytes"),
        "{stderr}"
    );
    assert_eq!(dev.apps(), old_set());

    // A server copy cut short looks like an interrupted transfer: a temporary problem
    // (exit status 3), the download is kept to resume, nothing is installed.
    let fleet = Fleet::new(&campaign);
    for p in fleet.served_copies(CLOCK) {
        fs::write(&p, b"short").unwrap();
    }
    let dev = Device::new(&fleet, "");
    let out = petrel_output(&dev, &["update"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("download interrupted"), "{stdout}");
    assert!(!stdout.contains("nothing to download"), "{stdout}");
    assert_eq!(dev.apps(), old_set());
}

/// A silent campaign without windows whose consent policy is `required` at install.
const CONSENT_AT_INSTALL: &str = r#"
kind = "campaign"
schema_version = 1
id = "ask-first"
revision = 1
state = "active"

[notice.en]
title = "Player 2.1"
body = "Restarts the kiosk."
severity = "recommended"

[consent]
policy = "required"
stage = "install"

[payload]
group = { id = "kiosk-eu", revision = 1 }
"#;

#[test]
fn consent_at_install_lets_downloads_go_first_and_installs_only_after_the_answer() {
    let fleet = Fleet::new(CONSENT_AT_INSTALL);
    let dev = Device::new(&fleet, "");
    let out = dev.update(Utc::now());
    assert_eq!(out.staged.len(), 1, "downloads go ahead before consent");
    assert!(out.installs.is_empty());
    assert!(matches!(
        status(&out, "ask-first"),
        Status::WaitingForConsent { .. }
    ));
    assert_eq!(dev.apps(), old_set());

    let agent = dev.agent();
    let mut ev = agent.evaluate(None).unwrap();
    agent
        .answer(
            &mut ev,
            "ask-first",
            None,
            petrel_client::agent::Answer::Accept,
        )
        .unwrap();
    drop(ev);
    drop(agent);
    let out = dev.update(Utc::now());
    assert_eq!(
        out.installs.first().unwrap().result,
        InstallResult::Installed
    );
    assert_eq!(dev.apps(), new_set());
    let outbox = Outbox::open(dev.path("state/outbox")).unwrap();
    let done = outbox
        .pending()
        .unwrap()
        .into_iter()
        .find(|r| r.signed.result == ReportResult::Succeeded)
        .expect("a succeeded report");
    assert_eq!(done.signed.campaign, "ask-first");
    assert_eq!(
        done.signed.consent_log.len(),
        1,
        "the accept is in the report"
    );
    assert_eq!(done.signed.inventory_after["acme.player"].version, "2.1.0");
    assert!(!done.signed.inventory_after.contains_key("acme.legacy"));
}

fn hand_plan(dir: &Path, install_type: Option<&str>) -> StagedPlan {
    use petrel_client::agent::stage::{StagedArtifact, StagedStep};
    use petrel_client::decide::{Change, Step};
    use petrel_client::manifest::{ManifestHash, PostInstall};
    let bytes = artifact(CLOCK);
    fs::write(dir.join("clock.staged"), &bytes).unwrap();
    StagedPlan {
        schema_version: 1,
        campaign: "converge".into(),
        revision: 1,
        manifest_sha256: ManifestHash::of(b"campaign"),
        attempt_sha256: None,
        group: "kiosk-eu".into(),
        group_revision: 1,
        staged_at: Utc::now(),
        wave: None,
        steps: vec![StagedStep {
            step: Step {
                app: "acme.clock".into(),
                change: Change::Add {
                    version: "1.0".into(),
                    target: CLOCK.into(),
                },
                install_type: install_type.map(str::to_string),
                post_install: PostInstall::Keep,
            },
            artifact: Some(StagedArtifact {
                sha256: petrel_client::manifest::sha256_hex(&bytes),
                length: bytes.len() as u64,
                file: "clock.staged".into(),
                in_slot: false,
                tree: None,
            }),
        }],
    }
}

/// The copy into the new application directory is verified against the signed hash, so a
/// staged file changed after every earlier check is still never installed.
#[test]
fn apply_refuses_a_staged_file_that_is_not_the_signed_one_and_leaves_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let inv = work.path().join("apps");
    fs::create_dir(&inv).unwrap();
    let journal = work.path().join("apply.journal.json");
    let plan = hand_plan(work.path(), None);
    let mut bytes = artifact(CLOCK);
    bytes[10] ^= 1;
    fs::write(work.path().join("clock.staged"), &bytes).unwrap();
    let e = install::install(
        &mut FilesInstaller::new(&inv),
        &plan,
        work.path(),
        &journal,
        &Hooks::default(),
        Utc::now(),
        &mut |_, _| Ok(()),
    )
    .unwrap_err();
    assert!(matches!(e, ApplyError::Verify(_)), "{e}");
    assert!(e.to_string().contains("not the signed one"), "{e}");
    assert_eq!(
        fs::read_dir(&inv).unwrap().count(),
        0,
        "nothing left in the inventory"
    );
    assert!(!journal.exists(), "the prepared journal is rolled back");

    // The same plan with the right bytes installs.
    fs::write(work.path().join("clock.staged"), artifact(CLOCK)).unwrap();
    install::install(
        &mut FilesInstaller::new(&inv),
        &plan,
        work.path(),
        &journal,
        &Hooks::default(),
        Utc::now(),
        &mut |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(
        fs::read(inv.join("acme.clock/clock.bin")).unwrap(),
        artifact(CLOCK)
    );
    assert_eq!(
        fs::read_to_string(inv.join("acme.clock/VERSION")).unwrap(),
        "1.0\n"
    );
}

#[test]
fn apply_refuses_an_install_type_it_has_no_installer_for() {
    let work = tempfile::tempdir().unwrap();
    let inv = work.path().join("apps");
    fs::create_dir(&inv).unwrap();
    let journal = work.path().join("apply.journal.json");
    let plan = hand_plan(work.path(), Some("package"));
    let e = install::install(
        &mut FilesInstaller::new(&inv),
        &plan,
        work.path(),
        &journal,
        &Hooks::default(),
        Utc::now(),
        &mut |_, _| Ok(()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("install type \"package\""), "{e}");
    assert_eq!(fs::read_dir(&inv).unwrap().count(), 0);
    assert!(!journal.exists());
}

#[test]
fn a_tree_step_without_signed_tree_metadata_or_with_another_tree_installs_nothing() {
    let work = tempfile::tempdir().unwrap();
    let inv = work.path().join("apps");
    fs::create_dir(&inv).unwrap();
    let journal = work.path().join("apply.journal.json");
    let run = |plan: &StagedPlan| {
        install::install(
            &mut FilesInstaller::new(&inv),
            plan,
            work.path(),
            &journal,
            &Hooks::default(),
            Utc::now(),
            &mut |_, _| Ok(()),
        )
        .unwrap_err()
        .to_string()
    };
    // The staged file is not a tree container, and nothing says which tree is signed.
    let mut plan = hand_plan(work.path(), Some("tree"));
    let e = run(&plan);
    assert!(e.contains("no signed tree metadata"), "{e}");
    assert_eq!(fs::read_dir(&inv).unwrap().count(), 0);
    // A real container, but not the tree the plan's signed manifest hash names.
    let src = work.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"tree file").unwrap();
    let scanned = petrel_client::tree::scan(&src).unwrap();
    let mut c = fs::File::create(work.path().join("clock.staged")).unwrap();
    petrel_client::tree::write_container(&scanned, None, &mut c).unwrap();
    let bytes = fs::read(work.path().join("clock.staged")).unwrap();
    let art = plan.steps[0].artifact.as_mut().unwrap();
    art.sha256 = petrel_client::manifest::sha256_hex(&bytes);
    art.length = bytes.len() as u64;
    art.tree = Some("ab".repeat(32));
    let e = run(&plan);
    assert!(e.contains("not the signed"), "{e}");
    assert_eq!(
        fs::read_dir(&inv)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count(),
        0
    );
}

#[test]
fn an_unreachable_report_endpoint_keeps_the_reports_for_the_next_run() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fleet = Fleet::new(FORCED);
    let dev = Device::new(
        &fleet,
        &format!("report_url = \"http://127.0.0.1:{port}/v1/reports\"\n"),
    );
    let out = dev.update(at(2, 30));
    assert!(!out.failed(), "an unsent report is not a failed update");
    let sent = out.sent.as_deref().unwrap();
    assert!(
        sent.starts_with("0 sent, 1 kept for the next run"),
        "{sent}"
    );
    assert_eq!(dev.reports().len(), 1, "the report stays queued");
}

#[test]
fn a_revision_published_right_before_the_install_waits_for_the_next_run_and_reuses_the_staging() {
    let mut fleet = Fleet::new(&windowed(1, "active"));
    let dev = Device::new(&fleet, "");
    dev.update(at(1, 30));
    {
        let fleet_ref = &mut fleet;
        let hooks = UpdateHooks {
            before_recheck: Some(Box::new(|| {
                fleet_ref.campaign(&windowed(2, "active").replace("Silent.", "Silent, again."))
            })),
            step: None,
            ..UpdateHooks::default()
        };
        let out = dev.agent().update_with(Some(at(2, 30)), hooks).unwrap();
        let i = out.installs.first().unwrap();
        assert_eq!(i.result, InstallResult::NotInstalled);
        assert!(
            i.reason
                .contains("changed right before installing (revision 1 -> 2)"),
            "{}",
            i.reason
        );
    }
    assert_eq!(dev.apps(), old_set());
    let out = dev.update(at(2, 35));
    assert!(
        out.staged.is_empty(),
        "the verified files of revision 1 are reused: {:?}",
        out.staged
    );
    let i = out.installs.first().unwrap();
    assert_eq!(i.result, InstallResult::Installed, "{}", i.reason);
    assert_eq!(i.revision, 2);
    assert_eq!(dev.apps(), new_set());
}

/// A campaign without windows that converges the device to its group.
fn converge(id: &str, revision: u64, state: &str) -> String {
    windowed(revision, state)
        .replace("id = \"converge\"", &format!("id = \"{id}\""))
        .lines()
        .filter(|l| !l.contains("_window") && !l.contains("[schedule"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every campaign that is ready is tried in the same run: when the first is halted right
/// before its install, the next one ready (another campaign for the same group) installs
/// in that same run instead of waiting for the next.
#[test]
fn every_ready_campaign_is_tried_in_one_run() {
    let mut fleet = Fleet::new(&converge("a-first", 1, "active"));
    fleet.campaign(&converge("b-second", 1, "active"));
    let dev = Device::new(&fleet, "");
    let mut halted = false;
    {
        let fleet_ref = std::cell::RefCell::new(&mut fleet);
        let hooks = UpdateHooks {
            before_recheck: Some(Box::new(|| {
                if !halted {
                    fleet_ref
                        .borrow_mut()
                        .campaign(&converge("a-first", 2, "halted"));
                    halted = true;
                }
            })),
            ..UpdateHooks::default()
        };
        let out = dev.agent().update_with(Some(at(2, 30)), hooks).unwrap();
        let tried: Vec<(&str, InstallResult)> = out
            .installs
            .iter()
            .map(|i| (i.campaign.as_str(), i.result))
            .collect();
        assert_eq!(
            tried,
            [
                ("a-first", InstallResult::NotInstalled),
                ("b-second", InstallResult::Installed)
            ],
            "{:?}",
            out.installs
        );
    }
    assert!(halted);
    assert_eq!(dev.apps(), new_set());
}

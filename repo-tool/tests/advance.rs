//! `petrel-repo rollout advance` and `fleet status`: a gated campaign's canaries pass, its
//! next wave opens and a failing wave halts it, each as a signed, published revision read
//! back the way a device reads the tree; runs are idempotent and exit codes documented.

mod common;

use std::path::{Path, PathBuf};

use chrono::Utc;
use common::*;
use petrel_client::manifest::{CampaignManifest, Manifest};
use petrel_client::report::{DeviceKey, Report, ReportFields, ReportResult};
use petrel_server::reports::{ReportStore, StoreOptions};

const PLAYER: &[u8] = b"player 2.1.0\n";

const GROUP: &str = r#"kind = "group"
schema_version = 1
id = "kiosk-eu"
revision = 1

[apps."acme.player"]
version = "2.1.0"
target = "apps/acme/player/2.1.0/player.bin"
"#;

const CAMPAIGN: &str = r#"kind = "campaign"
schema_version = 1
id = "player-2.1"
revision = 1
state = "active"

[notice.en]
title = "Player 2.1"
body = "Starts twice as fast."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = { id = "kiosk-eu", revision = 1 }

[rollout]
canary = true

[[rollout.waves]]
share_bp = 5000
start = 2026-01-01T00:00:00Z

[[rollout.waves]]
start = 2026-01-01T00:00:00Z

[rollout.gates]
canary_min_succeeded = 2
wave_min_succeeded_bp = 10000
wave_max_failed_bp = 0
"#;

/// A published repository with the gated campaign, canaries c-0 and c-1, and devices
/// d-0..d-3 in the group.
fn repo() -> Repo {
    let r = Repo::init(&[]);
    let f = r.src("player.bin", PLAYER);
    r.ok(&["add", path(&f), "--prefix", "apps/acme/player/2.1.0"]);
    let g = r.src("group.toml", GROUP.as_bytes());
    r.ok(&["group", "set", path(&g)]);
    let canaries = r.src("canaries.txt", b"c-0\nc-1\n");
    r.ok(&[
        "assign",
        "--group",
        "kiosk-eu",
        "--devices",
        path(&canaries),
        "--canary",
    ]);
    let devices = r.src("devices.txt", b"d-0\nd-1\nd-2\nd-3\n");
    r.ok(&["assign", "--group", "kiosk-eu", "--devices", path(&devices)]);
    let c = r.src("campaign.toml", CAMPAIGN.as_bytes());
    r.ok(&["campaign", "create", path(&c)]);
    r.ok(&["publish"]);
    r
}

struct Db {
    path: PathBuf,
    dir: PathBuf,
}

impl Db {
    fn new(dir: &Path) -> Db {
        let path = dir.join("reports.db");
        ReportStore::open(&path, &StoreOptions::default()).unwrap();
        Db {
            path,
            dir: dir.to_path_buf(),
        }
    }

    fn report(&self, device: &str, revision: u64, wave: Option<u32>, result: ReportResult) {
        let store = ReportStore::open(&self.path, &StoreOptions::default()).unwrap();
        let key = DeviceKey::load_or_create(self.dir.join(format!("{device}.key"))).unwrap();
        store.enroll(device, key.public_key(), true).unwrap();
        let r = Report::new(ReportFields {
            device_id: device.into(),
            campaign: "player-2.1".into(),
            revision,
            wave,
            result,
            reason: if result == ReportResult::Failed {
                "the health check failed".into()
            } else {
                String::new()
            },
            inventory_after: Default::default(),
            consent_log: Vec::new(),
            time: Utc::now(),
            rolled_back: false,
        })
        .sign(&key);
        store.insert(&r, &r.to_vec()).unwrap();
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// The published campaign manifest.
fn published(r: &Repo) -> CampaignManifest {
    let out = r.ok(&["campaign", "show", "player-2.1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = v.get("manifest").cloned().unwrap_or(v);
    CampaignManifest::from_json(&serde_json::to_vec(&m).unwrap()).unwrap()
}

fn advance(r: &Repo, db: &Db) -> (i32, String) {
    let out = r
        .cmd(&[
            "rollout",
            "advance",
            "--reports",
            db.arg(),
            "--figures-every",
            "0",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

use ReportResult::*;

#[test]
fn canaries_pass_then_the_next_wave_opens_then_a_failing_wave_halts() {
    let r = repo();
    let db = Db::new(r.tmp.path());
    db.report("c-0", 1, None, Succeeded);
    // One canary is not enough.
    let (code, out) = advance(&r, &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("waiting") && out.contains("needs 2"), "{out}");
    let m = published(&r);
    assert!(!m.rollout.canary_passed);
    assert_eq!(
        m.rollout.progress.as_ref().unwrap().succeeded,
        1,
        "figures are signed"
    );

    db.report("c-1", 1, None, Succeeded);
    let (code, out) = advance(&r, &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("CANARIES PASSED"), "{out}");
    let m = published(&r);
    assert!(m.rollout.canary_passed);
    assert_eq!(m.rollout.opened.len(), 1);
    let passed_revision = m.revision;

    // Wave 1 has no device yet: it does not pass, whatever its share.
    let (code, out) = advance(&r, &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("wave 1 counts 0 device(s)"), "{out}");
    // Idempotent: the same reports change nothing.
    let (code, out) = advance(&r, &db);
    assert_eq!(code, 0, "{out}");
    assert_eq!(published(&r).revision, passed_revision, "{out}");

    // Every device of wave 1 succeeds: wave 2 opens.
    for d in ["d-0", "d-1", "d-2", "d-3"] {
        db.report(d, passed_revision, Some(1), Succeeded);
    }
    let (code, out) = advance(&r, &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("WAVE 2 OPENED"), "{out}");
    assert_eq!(published(&r).rollout.opened.len(), 2);

    // A device of the later wave fails: the campaign halts, exit status 3.
    db.report("d-9", published(&r).revision, Some(2), Failed);
    let (code, out) = advance(&r, &db);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("HALTED") && out.contains("wave 2 failed 1"),
        "{out}"
    );
    let m = published(&r);
    assert_eq!(m.state, petrel_client::manifest::CampaignState::Halted);
    assert_eq!(
        m.rollout.progress.as_ref().unwrap().counts_from_revision,
        Some(m.revision + 1)
    );
    // Halted: the gate leaves it alone.
    let (code, out) = advance(&r, &db);
    assert_eq!(code, 0, "{out}");
    assert_eq!(published(&r).revision, m.revision);
}

#[test]
fn a_dry_run_changes_nothing() {
    let r = repo();
    let db = Db::new(r.tmp.path());
    db.report("c-0", 1, None, Succeeded);
    db.report("c-1", 1, None, Succeeded);
    let before = r.snapshot();
    let out = r.ok(&["rollout", "advance", "--reports", db.arg(), "--dry-run"]);
    assert!(
        out.contains("CANARIES PASSED") && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(r.snapshot(), before);
}

#[test]
fn advance_refuses_to_publish_someone_elses_staged_change() {
    let r = repo();
    let db = Db::new(r.tmp.path());
    db.report("c-0", 1, None, Succeeded);
    db.report("c-1", 1, None, Succeeded);
    let f = r.src("other.txt", b"other\n");
    r.ok(&["add", path(&f), "--prefix", "apps/acme/other/1.0"]);
    let err = r.fail(&["rollout", "advance", "--reports", db.arg()]);
    assert!(err.contains("unpublished staged changes"), "{err}");
    assert!(!published(&r).rollout.canary_passed);
}

#[test]
fn fleet_status_lists_each_device_with_group_stage_and_state() {
    let r = repo();
    let db = Db::new(r.tmp.path());
    db.report("c-0", 1, None, Succeeded);
    db.report("c-1", 1, None, Failed);
    let out = r.ok(&["fleet", "status", "--reports", db.arg(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c1 = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "c-1")
        .unwrap();
    assert_eq!(c1["group"], "kiosk-eu");
    assert_eq!(c1["canary"], true);
    assert_eq!(c1["campaigns"][0]["stage"], "canaries");
    assert_eq!(c1["campaigns"][0]["state"], "failed");
    assert_eq!(v["campaigns"][0]["gate"]["action"], "halt");
    // Filters: only failed devices.
    let out = r.ok(&[
        "fleet",
        "status",
        "--reports",
        db.arg(),
        "--state",
        "failed",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c-1"]);
    // Text: the next advance says what it would do.
    let out = r.ok(&["fleet", "status", "--reports", db.arg()]);
    assert!(
        out.contains("next advance: halt: 1 canary device(s) failed"),
        "{out}"
    );
}

//! `petrel-repo rollout status|gate`: rollout status from a report database or a report
//! server, and the gate that halts (re-signs and publishes) a failing campaign, checked the
//! way a device sees the published tree.

mod common;

use std::path::Path;

use chrono::{TimeZone, Utc};
use common::*;
use petrel_client::decide::Entry;
use petrel_client::fetch::FileTransport;
use petrel_client::manifest::{CampaignManifest, CampaignState};
use petrel_client::report::{DeviceKey, Report, ReportFields, ReportResult};
use petrel_client::tuf::updater::{Updater, UpdaterConfig};
use petrel_server::reports::{ReportStore, ReportsConfig, RolloutSummary, StoreOptions};

const PLAYER: &[u8] = b"player 2.1.0\n";

fn group_toml() -> String {
    r#"kind = "group"
schema_version = 1
id = "kiosk-eu"
revision = 1
description = "EU kiosks"

[apps."acme.player"]
version = "2.1.0"
target = "apps/acme/player/2.1.0/player.bin"
post_install = "start"
"#
    .to_string()
}

fn campaign_toml(id: &str) -> String {
    format!(
        r#"kind = "campaign"
schema_version = 1
id = "{id}"
revision = 1
state = "active"

[notice.en]
title = "Player 2.1"
body = "Starts twice as fast."
severity = "recommended"

[consent]
policy = "none"

[applies_to]
vendors = ["acme"]

[payload]
group = {{ id = "kiosk-eu", revision = 1 }}

[[rollout.waves]]
share_bp = 10000
start = 2030-03-03T00:00:00Z
"#
    )
}

/// A published repository with campaigns `bad` and `good` (both active, revision 1).
fn fleet() -> Repo {
    let r = Repo::init(&[]);
    let f = r.src("player.bin", PLAYER);
    r.ok(&["add", path(&f), "--prefix", "apps/acme/player/2.1.0"]);
    let g = r.src("kiosk-eu.toml", group_toml().as_bytes());
    r.ok(&["group", "set", path(&g)]);
    for id in ["bad", "good"] {
        let c = r.src(&format!("{id}.toml"), campaign_toml(id).as_bytes());
        r.ok(&["campaign", "create", path(&c)]);
    }
    r.ok(&["publish"]);
    r
}

/// The campaign's (revision, state) as a TUF client reading the published tree sees it.
fn published_state(r: &Repo, id: &str) -> (u64, CampaignState) {
    let work = tempfile::tempdir().unwrap();
    let md = work.path().join("metadata");
    let root = std::fs::read(r.tree().join("metadata/1.root.json")).unwrap();
    Updater::init_trusted_root(&md, &root).unwrap();
    let base = format!("file://{}", r.tree().display());
    let config = UpdaterConfig::new(format!("{base}/metadata"))
        .with_target_base_url(format!("{base}/targets"));
    let mut u = Updater::new(config, FileTransport::new(), &md).unwrap();
    u.refresh().unwrap();
    let name = format!("campaigns/{id}.json");
    let info = u.get_target_info(&name).unwrap().unwrap();
    let dest = work.path().join("c.json");
    u.download_target(&info, &dest).unwrap();
    let bytes = std::fs::read(&dest).unwrap();
    let e: Entry<CampaignManifest> =
        Entry::from_target(&info, &bytes, u.trusted().unwrap()).unwrap();
    (e.manifest.revision, e.manifest.state)
}

/// A report database with, per campaign, devices reporting the given results (about
/// `revision`), each device's key enrolled.
fn reports_db(dir: &Path, plan: &[(&str, u64, &[ReportResult])]) -> std::path::PathBuf {
    let db = dir.join("reports.db");
    let store = ReportStore::open(&db, &StoreOptions::default()).unwrap();
    for (campaign, revision, results) in plan {
        for (i, result) in results.iter().enumerate() {
            let device = format!("dev-{i}");
            let key = DeviceKey::load_or_create(dir.join(format!("{device}.key"))).unwrap();
            store.enroll(&device, key.public_key(), false).unwrap();
            let r = Report::new(ReportFields {
                device_id: device,
                campaign: campaign.to_string(),
                revision: *revision,
                wave: Some(0),
                result: *result,
                reason: if *result == ReportResult::Failed {
                    "post-install hook exit 3".into()
                } else {
                    String::new()
                },
                inventory_after: Default::default(),
                consent_log: Vec::new(),
                time: Utc.with_ymd_and_hms(2026, 11, 22, 6, 0, 0).unwrap()
                    + chrono::Duration::seconds(*revision as i64),
                rolled_back: false,
            })
            .sign(&key);
            store.insert(&r, &r.to_vec()).unwrap();
        }
    }
    db
}

use ReportResult::*;

fn status_json(r: &Repo, source: &str, extra: &[&str]) -> RolloutSummary {
    let out = r.ok(&[&["rollout", "status", "--reports", source, "--json"], extra].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn status_reads_the_database_and_the_server_alike() {
    let r = Repo::empty();
    let db = reports_db(
        r.tmp.path(),
        &[
            ("bad", 1, &[Failed, Failed, Succeeded, Staged]),
            ("good", 1, &[Succeeded, Declined]),
        ],
    );
    let from_db = status_json(&r, path(&db), &[]);
    let bad = from_db.campaign("bad").unwrap();
    assert_eq!(
        (bad.counts.succeeded, bad.counts.failed, bad.counts.pending),
        (1, 2, 1)
    );
    assert_eq!(
        bad.counts.failure_reasons[0].reason,
        "post-install hook exit 3"
    );
    assert_eq!(bad.counts.failure_reasons[0].count, 2);
    assert_eq!(from_db.campaign("good").unwrap().counts.declined, 1);
    let text = r.ok(&["rollout", "status", "--reports", path(&db)]);
    assert!(
        text.contains("campaign bad: 4 device(s): 1 succeeded, 2 failed, 1 pending"),
        "{text}"
    );
    assert!(text.contains("post-install hook exit 3"), "{text}");
    let only = status_json(&r, path(&db), &["--campaign", "good"]);
    assert_eq!(only.campaigns.len(), 1);

    // The same through a report server that requires a read token.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tree = r.tmp.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut config = petrel_server::ServerConfig::new(&tree, "127.0.0.1:0".parse().unwrap());
    let mut rc = ReportsConfig::new(&db);
    rc.read_token = Some("t0ken".into());
    config.reports = Some(rc);
    let server = rt.block_on(petrel_server::Server::bind(config)).unwrap();
    let url = format!("http://{}", server.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(server.serve(async move {
        let _ = rx.await;
    }));
    let mut cmd = r.cmd(&["rollout", "status", "--reports", &url, "--json"]);
    cmd.env("PETREL_REPORTS_TOKEN", "t0ken");
    let from_url: RolloutSummary = serde_json::from_str(&expect_ok(cmd)).unwrap();
    assert_eq!(from_url, from_db);
    let mut cmd = r.cmd(&[
        "rollout",
        "status",
        "--reports",
        &url,
        "--campaign",
        "good",
        "--json",
    ]);
    cmd.env("PETREL_REPORTS_TOKEN", "t0ken");
    let only_url: RolloutSummary = serde_json::from_str(&expect_ok(cmd)).unwrap();
    assert_eq!(only_url, only);
    let mut cmd = r.cmd(&["rollout", "status", "--reports", &url]);
    cmd.env_remove("PETREL_REPORTS_TOKEN");
    assert!(expect_fail(cmd).contains("401"));
    let _ = tx.send(());
}

#[test]
fn gate_halts_and_publishes_a_failing_campaign_leaves_a_healthy_one_and_reruns_as_a_noop() {
    let r = fleet();
    let db = reports_db(
        r.tmp.path(),
        &[
            ("bad", 1, &[Failed, Failed, Failed, Succeeded]),
            ("good", 1, &[Succeeded, Succeeded, Failed, Succeeded]),
        ],
    );
    let gate = |r: &Repo| {
        r.ok(&[
            "rollout",
            "gate",
            "--reports",
            path(&db),
            "--max-failure-rate",
            "0.5",
            "--min-reports",
            "4",
        ])
    };
    let out = gate(&r);
    assert!(
        out.contains(
            "campaign bad: 3 failed of 4 final (75.0%; threshold 50.0%): HALTED (revision 2)"
        ),
        "{out}"
    );
    assert!(
        out.contains("campaign good: 1 failed of 4 final (25.0%; threshold 50.0%): ok"),
        "{out}"
    );
    assert!(out.contains("published"), "{out}");
    assert_eq!(published_state(&r, "bad"), (2, CampaignState::Halted));
    assert_eq!(published_state(&r, "good"), (1, CampaignState::Active));

    // Cron runs again: the failures were judged already; nothing changes.
    let before = r.tree_metadata();
    let out = gate(&r);
    assert!(out.contains("campaign bad: 0 failed of 0 final"), "{out}");
    assert!(out.contains("nothing to halt"), "{out}");
    assert_eq!(r.tree_metadata(), before);

    // Resumed by a human: the failures it was halted for do not halt it again.
    r.ok(&["campaign", "resume", "bad"]);
    r.ok(&["publish"]);
    let out = gate(&r);
    assert!(out.contains("campaign bad: 0 failed of 0 final"), "{out}");
    assert!(out.contains("too few final reports"), "{out}");
    assert_eq!(published_state(&r, "bad"), (3, CampaignState::Active));
}

#[test]
fn gate_respects_min_reports_and_refuses_to_publish_unrelated_staged_changes() {
    let r = fleet();
    let db = reports_db(r.tmp.path(), &[("bad", 1, &[Failed, Failed])]);
    let args = |min: &'static str| {
        vec![
            "rollout",
            "gate",
            "--reports",
            path(&db),
            "--max-failure-rate",
            "0.1",
            "--min-reports",
            min,
        ]
    };
    let out = r.ok(&args("3"));
    assert!(out.contains("too few final reports"), "{out}");
    assert_eq!(published_state(&r, "bad"), (1, CampaignState::Active));

    // A halt staged but not published (e.g. a publish that failed): devices still see the
    // campaign active, so the gate fails loudly instead of reporting success.
    r.ok(&["campaign", "halt", "bad"]);
    let err = r.fail(&args("2"));
    assert!(err.contains("halt is not published"), "{err}");
    // Halted by hand and published: over the threshold but left alone.
    r.ok(&["publish"]);
    let before = r.tree_metadata();
    let out = r.ok(&args("2"));
    assert!(out.contains("already halted; left alone"), "{out}");
    assert!(out.contains("nothing to halt"), "{out}");
    assert_eq!(r.tree_metadata(), before);
    r.ok(&["campaign", "resume", "bad"]);
    r.ok(&["publish"]);

    // Someone's unpublished edit: the gate changes nothing and fails loudly.
    let f = r.src("notes.txt", b"draft\n");
    r.ok(&["add", path(&f), "--name", "docs/notes.txt"]);
    let err = r.fail(&args("2"));
    assert!(err.contains("unpublished staged changes"), "{err}");
    assert_eq!(published_state(&r, "bad"), (3, CampaignState::Active));
    assert!(r.ok(&["campaign", "list"]).contains("active"));
    // Unreadable reports: an error, not a silent pass.
    let err = r.fail(&[
        "rollout",
        "gate",
        "--reports",
        "/nonexistent/reports.db",
        "--max-failure-rate",
        "0.1",
    ]);
    assert!(err.contains("reports.db"), "{err}");
}

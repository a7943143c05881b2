//! The fleet endpoint (`GET /v1/reports/fleet`) and the dashboard (`GET /dashboard`) end
//! to end: a signed tree published with `petrel-repo` (campaigns, groups, assignments), a
//! report database with enrolled devices and signed reports, the server on 127.0.0.1:0
//! with a read token, and the dashboard rendered by a real headless Chromium.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{get, RawResponse};
use petrel_client::decide::InstalledApp;
use petrel_client::report::{DeviceKey, Report, ReportFields, ReportResult};
use petrel_repo::editor::{self, AddOptions, Editor, InitOptions, SourceFile};
use petrel_repo::manifests::{assign_devices, create_campaign, set_group, AssignOptions};
use petrel_repo::publish::{publish, Refresh};
use petrel_server::reports::{ReportStore, ReportsConfig, StoreOptions};
use petrel_server::{Server, ServerConfig};
use serde_json::Value;
use tokio::sync::oneshot;

const TOKEN: &str = "read-s3cret+token";
/// A device id and a failure reason that would run script if they reached the page raw.
const HOSTILE_ID: &str = "<script>document.title=\"owned-by-id\"</script>";
const HOSTILE_REASON: &str = "<img src=x onerror=alert(1)><script>alert(\"reason\")</script>";
/// Upper bound for one browser run.
const BROWSER_LIMIT: Duration = Duration::from_secs(90);

/// A published tree, a report database, and a server reading both.
struct Env {
    dir: tempfile::TempDir,
    tree: PathBuf,
    db: PathBuf,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn toml_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn group_toml(id: &str) -> String {
    format!(
        r#"kind = "group"
schema_version = 1
id = "{id}"
revision = 1
description = "kiosks"

[apps."acme.player"]
version = "2.1.0"
target = "apps/acme/player/2.1.0/player.bin"
post_install = "start"
"#
    )
}

/// `player-2.1`: gated, canaries passed, wave 1 opened a day ago, wave 2 waiting for
/// the gate. It selects by vendor, so only devices that reported are counted.
fn player_toml(now: DateTime<Utc>) -> String {
    format!(
        r#"kind = "campaign"
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

[applies_to]
vendors = ["acme"]

[payload]
group = {{ id = "kiosk-eu", revision = 1 }}

[rollout]
canary = true
canary_passed = true
opened = [{opened}]

[rollout.gates]
wave_min_succeeded_bp = 4000
wave_max_failed_bp = 5000
overdue_after_secs = 3600

[[rollout.waves]]
share_bp = 5000
start = {w1}

[[rollout.waves]]
share_bp = 10000
start = {w2}
"#,
        opened = toml_time(now - chrono::Duration::days(1)),
        w1 = toml_time(now - chrono::Duration::days(2)),
        w2 = toml_time(now - chrono::Duration::days(1)),
    )
}

/// `firmware-7`: halted, for group `kiosk-us`, everyone at once; it selects by group
/// only, so an assigned device that never reported is counted as `not_reported`.
fn firmware_toml() -> String {
    r#"kind = "campaign"
schema_version = 1
id = "firmware-7"
revision = 1
state = "halted"

[notice.en]
title = "Firmware 7"
body = "New firmware."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = { id = "kiosk-us", revision = 1 }

[rollout.gates]
"#
    .to_string()
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Builds and publishes the tree in `dir/repo` (returns the tree root).
fn publish_tree(dir: &Path, now: DateTime<Utc>) -> PathBuf {
    let ws = ok(
        editor::init(&dir.join("repo"), &InitOptions::default()),
        "init",
    );
    let src = dir.join("sources");
    std::fs::create_dir_all(&src).unwrap();
    let player = src.join("player.bin");
    std::fs::write(&player, b"player 2.1.0\n").unwrap();
    let mut ed = Editor::new(&ws);
    ok(
        ed.add_targets(
            &[SourceFile {
                path: player,
                name: "apps/acme/player/2.1.0/player.bin".into(),
            }],
            &AddOptions::default(),
        ),
        "add player",
    );
    ok(ed.save(), "save");
    for g in ["kiosk-eu", "kiosk-us"] {
        let f = src.join(format!("{g}.toml"));
        std::fs::write(&f, group_toml(g)).unwrap();
        ok(set_group(&ws, &f, None), "group set");
    }
    for (name, text) in [
        ("player.toml", player_toml(now)),
        ("firmware.toml", firmware_toml()),
    ] {
        let f = src.join(name);
        std::fs::write(&f, text).unwrap();
        ok(create_campaign(&ws, &f, None), name);
    }
    for (group, canary, ids) in [
        ("kiosk-eu", true, &["canary-1", "canary-2"][..]),
        (
            "kiosk-eu",
            false,
            &[
                "kiosk-01", "kiosk-02", "kiosk-03", "kiosk-04", "kiosk-05", "kiosk-06",
            ][..],
        ),
        ("kiosk-us", false, &["kiosk-07", "kiosk-08"][..]),
    ] {
        let f = src.join(format!("{group}-{canary}.txt"));
        std::fs::write(&f, ids.join("\n")).unwrap();
        let opts = AssignOptions {
            group: group.into(),
            role: None,
            canary,
            campaigns: Default::default(),
        };
        ok(assign_devices(&ws, &f, &opts), "assign");
    }
    ok(publish(&ws, Refresh::default()), "publish");
    ws.tree_dir()
}

/// (device, campaign, wave, result, reason, hours ago, installed player version)
type Plan = (
    &'static str,
    &'static str,
    Option<u32>,
    ReportResult,
    &'static str,
    i64,
    &'static str,
);

fn plan() -> Vec<Plan> {
    use ReportResult::*;
    vec![
        ("canary-1", "player-2.1", None, Succeeded, "", 20, "2.1.0"),
        ("canary-2", "player-2.1", None, Succeeded, "", 20, "2.1.0"),
        (
            "kiosk-01",
            "player-2.1",
            Some(1),
            Succeeded,
            "",
            10,
            "2.1.0",
        ),
        (
            "kiosk-02",
            "player-2.1",
            Some(1),
            Succeeded,
            "",
            10,
            "2.1.0",
        ),
        (
            "kiosk-05",
            "player-2.1",
            Some(1),
            Succeeded,
            "",
            10,
            "2.1.0",
        ),
        (
            "kiosk-03",
            "player-2.1",
            Some(1),
            Failed,
            "post-install hook exit 3",
            9,
            "2.0.0",
        ),
        (
            "kiosk-04",
            "player-2.1",
            Some(1),
            Failed,
            "post-install hook exit 3",
            9,
            "2.0.0",
        ),
        (
            HOSTILE_ID,
            "player-2.1",
            Some(1),
            Failed,
            HOSTILE_REASON,
            8,
            "2.0.0",
        ),
        ("kiosk-06", "player-2.1", Some(1), Staged, "", 3, "2.0.0"),
        (
            "kiosk-08",
            "firmware-7",
            None,
            Failed,
            "image checksum mismatch",
            5,
            "2.1.0",
        ),
    ]
}

/// The report database: every device enrolled (kiosk-07 never reports), the plan's
/// reports signed by each device's key and stored with their receive times.
fn reports_db(dir: &Path, now: DateTime<Utc>) -> PathBuf {
    let db = dir.join("reports.db");
    let store = ReportStore::open(&db, &StoreOptions::default()).unwrap();
    let keys = dir.join("device-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mut key_of = BTreeMap::new();
    let mut ids: Vec<&str> = plan().iter().map(|p| p.0).collect();
    ids.push("kiosk-07");
    for (i, id) in ids.iter().enumerate() {
        let key = DeviceKey::load_or_create(keys.join(format!("{i}.key"))).unwrap();
        ok(store.enroll(id, key.public_key(), false), "enroll");
        key_of.insert(id.to_string(), key);
    }
    for (device, campaign, wave, result, reason, hours, version) in plan() {
        let at = now - chrono::Duration::hours(hours);
        let mut inventory = BTreeMap::new();
        inventory.insert("acme.player".to_string(), InstalledApp::version(version));
        let report = Report::new(ReportFields {
            device_id: device.into(),
            campaign: campaign.into(),
            revision: 1,
            wave,
            result,
            reason: reason.into(),
            inventory_after: inventory,
            consent_log: Vec::new(),
            time: at,
            rolled_back: false,
        })
        .sign(&key_of[device]);
        ok(
            store.insert_received_at(&report, &report.to_vec(), at),
            "insert",
        );
    }
    db
}

/// A server on 127.0.0.1:0 over a fresh tree and database; `token` is the read token.
async fn start(token: Option<&str>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let (tree, db) = {
        let d = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || (publish_tree(&d, now), reports_db(&d, now)))
            .await
            .unwrap()
    };
    let mut rc = ReportsConfig::new(&db);
    rc.read_token = token.map(str::to_owned);
    let mut config = ServerConfig::new(&tree, "127.0.0.1:0".parse().unwrap());
    config.reports = Some(rc);
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    Env {
        dir,
        tree,
        db,
        addr,
        stop: Some(tx),
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

async fn fleet(env: &Env, query: &str) -> (RawResponse, Value) {
    let auth = bearer();
    let r = get(
        env.addr,
        &format!("/v1/reports/fleet{query}"),
        &[("Authorization", &auth)],
    )
    .await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r, v)
}

fn device<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == id)
        .unwrap_or_else(|| panic!("no device {id} in {v}"))
}

fn device_ids(v: &Value) -> Vec<String> {
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_string())
        .collect()
}

fn stage<'a>(v: &'a Value, campaign: &str, name: &str) -> &'a Value {
    let c = v["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == campaign)
        .unwrap_or_else(|| panic!("no campaign {campaign} in {v}"));
    c["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {c}"))
}

#[tokio::test]
async fn fleet_endpoint_requires_the_read_token() {
    let env = start(Some(TOKEN)).await;
    let none = get(env.addr, "/v1/reports/fleet", &[]).await;
    assert_eq!(none.status, 401, "{}", none.text());
    assert!(none.header("www-authenticate").is_some());
    assert!(!none.text().contains("kiosk-01"));
    let wrong = get(
        env.addr,
        "/v1/reports/fleet",
        &[("Authorization", "Bearer read-s3cret+tokeN")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    // The dashboard's cookie is for the dashboard only.
    let cookie = get(
        env.addr,
        "/v1/reports/fleet",
        &[("Cookie", "petrel_dashboard=read-s3cret%2Btoken")],
    )
    .await;
    assert_eq!(cookie.status, 401);
    let (r, v) = fleet(&env, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(v["campaigns"].is_array());
}

#[tokio::test]
async fn fleet_endpoint_reports_stages_gate_and_devices() {
    let env = start(Some(TOKEN)).await;
    let (r, v) = fleet(&env, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ids: Vec<&str> = v["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["firmware-7", "player-2.1"]);
    let canaries = stage(&v, "player-2.1", "canaries");
    assert_eq!(
        (canaries["devices"].as_u64(), canaries["succeeded"].as_u64()),
        (Some(2), Some(2))
    );
    let w1 = stage(&v, "player-2.1", "wave 1");
    assert_eq!(
        [
            &w1["devices"],
            &w1["succeeded"],
            &w1["failed"],
            &w1["pending"],
            &w1["overdue"]
        ],
        [7, 3, 3, 1, 1]
    );
    assert_eq!(w1["open"], true);
    assert_eq!(stage(&v, "player-2.1", "wave 2")["open"], false);
    let player = &v["campaigns"][1];
    assert_eq!(player["gate"]["action"], "open_wave");
    assert_eq!(player["gate"]["wave"], 2);
    assert_eq!(
        player["failure_reasons"][0]["reason"],
        "post-install hook exit 3"
    );
    assert_eq!(player["failure_reasons"][0]["count"], 2);
    let firmware = &v["campaigns"][0];
    assert_eq!(firmware["state"], "halted");
    assert_eq!(firmware["gate"]["action"], "stopped");
    assert_eq!(v["devices"].as_array().unwrap().len(), 11);
    let k6 = device(&v, "kiosk-06");
    assert_eq!(k6["campaigns"][0]["state"], "overdue");
    assert_eq!(k6["group"], "kiosk-eu");
    let k7 = device(&v, "kiosk-07");
    assert_eq!(k7["campaigns"][0]["campaign"], "firmware-7");
    assert_eq!(k7["campaigns"][0]["state"], "not_reported");
    assert!(k7.get("last_contact").is_none());
    let c1 = device(&v, "canary-1");
    assert_eq!(c1["canary"], true);
    assert_eq!(c1["installed"]["acme.player"], "2.1.0");
    assert_eq!(
        device(&v, HOSTILE_ID)["campaigns"][0]["reason"],
        HOSTILE_REASON
    );
}

#[tokio::test]
async fn fleet_endpoint_filters_by_campaign_state_and_wave() {
    let env = start(Some(TOKEN)).await;
    let (r, v) = fleet(&env, "?campaign=player-2.1&state=failed").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(v["campaigns"].as_array().unwrap().len(), 1);
    assert_eq!(v["campaigns"][0]["id"], "player-2.1");
    let mut ids = device_ids(&v);
    ids.sort();
    assert_eq!(ids, [HOSTILE_ID, "kiosk-03", "kiosk-04"]);
    let (_, v) = fleet(&env, "?state=pending").await;
    let mut ids = device_ids(&v);
    ids.sort();
    assert_eq!(ids, ["kiosk-06", "kiosk-07"]);
    let (_, v) = fleet(&env, "?state=overdue").await;
    assert_eq!(device_ids(&v), ["kiosk-06"]);
    let (_, v) = fleet(&env, "?state=failed").await;
    assert!(device_ids(&v).contains(&"kiosk-08".to_string()));
    let (_, v) = fleet(&env, "?campaign=firmware-7").await;
    let mut ids = device_ids(&v);
    ids.sort();
    assert_eq!(ids, ["kiosk-07", "kiosk-08"]);
    // Devices list only their state in the campaign asked for.
    assert!(v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["campaigns"].as_array().unwrap().len() == 1));
    let (_, v) = fleet(&env, "?wave=1&state=succeeded").await;
    let mut ids = device_ids(&v);
    ids.sort();
    assert_eq!(ids, ["kiosk-01", "kiosk-02", "kiosk-05"]);
    let (_, v) = fleet(&env, "?campaign=player-2.1&wave=2").await;
    assert_eq!(device_ids(&v), Vec::<String>::new());
}

#[tokio::test]
async fn fleet_endpoint_refuses_bad_queries_with_400() {
    let env = start(Some(TOKEN)).await;
    for (query, status, needle) in [
        ("?state=broken", 400, "unknown state \\\"broken\\\""),
        ("?wave=0", 400, "not a wave number"),
        ("?wave=x", 400, "not a wave number"),
        ("?colour=red", 400, "unknown parameter"),
        ("?campaign=", 400, "is empty"),
        ("?campaign=%zz", 400, "bad percent-escape"),
        ("?campaign=player-2.1&wave=3", 400, "has no wave 3"),
        ("?campaign=nope", 404, "no published campaign \\\"nope\\\""),
    ] {
        let (r, v) = fleet(&env, query).await;
        assert_eq!(r.status, status, "{query}: {}", r.text());
        assert!(r.text().contains(needle), "{query}: {}", r.text());
        assert!(v["code"].is_string(), "{query}: {v}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
}

#[tokio::test]
async fn fleet_and_dashboard_are_plain_tree_paths_without_a_reports_db() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("metadata")).unwrap();
    let server = Server::bind(ServerConfig::new(&root, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    for path in ["/v1/reports/fleet", "/dashboard", "/dashboard?token=x"] {
        assert_eq!(get(addr, path, &[]).await.status, 404, "{path}");
    }
    drop(tx);
}

fn set_cookie_pair(r: &RawResponse) -> String {
    let c = r.header("set-cookie").expect("a Set-Cookie header");
    c.split(';').next().unwrap().trim().to_string()
}

#[tokio::test]
async fn dashboard_token_link_sets_a_strict_cookie_and_redirects_without_the_token() {
    let env = start(Some(TOKEN)).await;
    let none = get(env.addr, "/dashboard", &[]).await;
    assert_eq!(none.status, 401);
    assert!(
        none.text().contains("/dashboard?token=TOKEN"),
        "{}",
        none.text()
    );
    assert!(!none.text().contains("kiosk-01"));

    let wrong = get(env.addr, "/dashboard?token=wrong", &[]).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    let link = get(
        env.addr,
        "/dashboard/?q=kiosk&token=read-s3cret%2Btoken",
        &[],
    )
    .await;
    assert_eq!(link.status, 303, "{}", link.text());
    assert_eq!(link.header("location"), Some("/dashboard/?q=kiosk"));
    let cookie = link.header("set-cookie").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(
            cookie.split("; ").any(|a| a == attr),
            "{attr} missing: {cookie}"
        );
    }
    assert!(!link.text().contains(TOKEN));
    let pair = set_cookie_pair(&link);
    assert_eq!(pair, "petrel_dashboard=read-s3cret%2Btoken");

    let page = get(
        env.addr,
        "/dashboard/?q=kiosk",
        &[("Cookie", &format!("a=b; {pair}"))],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("data-device=\"kiosk-01\""));
    let bad_cookie = get(
        env.addr,
        "/dashboard",
        &[("Cookie", "petrel_dashboard=read-s3cret%2BtokeN")],
    )
    .await;
    assert_eq!(bad_cookie.status, 401);
    let by_header = get(env.addr, "/dashboard", &[("Authorization", &bearer())]).await;
    assert_eq!(by_header.status, 200);

    // Only the token leaves the address: everything else stays, in order.
    let link = get(env.addr, "/dashboard?token=read-s3cret%2Btoken", &[]).await;
    assert_eq!(link.header("location"), Some("/dashboard"));
}

#[tokio::test]
async fn dashboard_sends_a_policy_that_forbids_external_resources() {
    let env = start(Some(TOKEN)).await;
    let r = get(env.addr, "/dashboard", &[("Authorization", &bearer())]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let csp = r.header("content-security-policy").expect("a CSP");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = r.text();
    // Nothing on the page names another origin or loads a file.
    for needle in [
        "http://", "https://", "src=\"", "<img", "<link", "@import", "url(",
    ] {
        assert!(!html.contains(needle), "{needle} on the page");
    }
    // The error pages carry the same headers.
    let e = get(env.addr, "/dashboard", &[]).await;
    assert_eq!(e.header("content-security-policy"), Some(csp));
    assert_eq!(e.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn dashboard_escapes_device_supplied_text() {
    let env = start(Some(TOKEN)).await;
    let r = get(env.addr, "/dashboard", &[("Authorization", &bearer())]).await;
    assert_eq!(r.status, 200);
    let html = r.text();
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(!html.contains("<img"));
    assert!(html.contains("&lt;script&gt;document.title=&quot;owned-by-id&quot;&lt;/script&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    // A search text is echoed escaped as well.
    let r = get(
        env.addr,
        "/dashboard?q=%22%3E%3Cscript%3Ex%3C%2Fscript%3E",
        &[("Authorization", &bearer())],
    )
    .await;
    assert_eq!(r.text().matches("<script").count(), 1);
}

// ---------------------------------------------------------------------------------------
// The access log
// ---------------------------------------------------------------------------------------

/// Waits (bounded) for `child` to exit; kills it when the limit passes.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn dashboard_token_never_reaches_the_access_log() {
    let env = start(None).await;
    let secret = "tok-NEVER-LOGGED-7f3a";
    let mut child = Command::new(env!("CARGO_BIN_EXE_petrel-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--access-log", "--root"])
        .arg(&env.tree)
        .arg("--reports-db")
        .arg(&env.db)
        .env("PETREL_REPORTS_READ_TOKEN", secret)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(common::STEP).expect("no listening line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let link = get(addr, &format!("/dashboard?token={secret}"), &[]).await;
    assert_eq!(link.status, 303);
    let pair = set_cookie_pair(&link);
    let page = get(addr, "/dashboard?q=kiosk", &[("Cookie", &pair)]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        get(addr, &format!("/dashboard/?q=a&token={secret}x"), &[])
            .await
            .status,
        401
    );
    assert_eq!(
        get(addr, &format!("/v1/reports/fleet?token={secret}"), &[])
            .await
            .status,
        401
    );
    // An absolute-form target for another host is refused and logged at debug level.
    let raw = format!(
        "GET http://other.example/dashboard?token={secret} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Connection: close\r\n\r\n"
    );
    let refused = common::send_raw(addr, raw.as_bytes(), false).await.unwrap();
    assert_eq!(refused.status, 400);

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = wait_bounded(&mut child, common::STEP).expect("server did not exit on SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.lines().any(|l| l.contains("GET /dashboard 303 ")),
        "no access-log line for the token link in {stderr}"
    );
    assert!(
        stderr.lines().any(|l| l.contains("GET /dashboard 200 ")),
        "no access-log line for the page in {stderr}"
    );
    assert!(
        stderr.contains("token=REDACTED"),
        "the refused target was not logged (redacted) in {stderr}"
    );
    assert!(
        !stderr.contains(secret),
        "the token is in the log:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// A real browser
// ---------------------------------------------------------------------------------------

/// The Chromium binary: `PETREL_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PETREL_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
        .find(|p| p.is_file())
}

/// Runs headless Chromium with a fresh profile on `url` (after `args`), bounded by
/// [`BROWSER_LIMIT`]; returns its output.
fn run_browser(bin: &Path, profile: &Path, args: &[String], url: &str) -> Output {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    // Read both pipes on threads so a chatty browser never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let status = wait_bounded(&mut child, BROWSER_LIMIT).unwrap_or_else(|| {
        panic!(
            "{} did not finish within {BROWSER_LIMIT:?} on {url}",
            bin.display()
        )
    });
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn artifacts_dir() -> PathBuf {
    // CARGO_TARGET_DIR if set, else the workspace's target/ (the package is one below).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts")
}

/// The text between `start` (inclusive) and the next `end` after it.
fn section<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("{start} not in the rendered page:\n{html}"));
    let rest = &html[from..];
    let to = rest[start.len()..]
        .find(end)
        .map_or(rest.len(), |i| i + start.len());
    &rest[..to]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_campaigns_stages_gate_and_devices_in_chromium() {
    let Some(bin) = chromium() else {
        if std::env::var("PETREL_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("skipped: no Chromium found and PETREL_SKIP_BROWSER=1");
            return;
        }
        panic!(
            "no Chromium: set PETREL_CHROMIUM or put chromium on PATH (run \
             scripts/ensure-chromium.sh); PETREL_SKIP_BROWSER=1 skips this test"
        );
    };
    let env = start(Some(TOKEN)).await;
    let url = format!("http://{}/dashboard?token=read-s3cret%2Btoken", env.addr);

    // The DOM after the page loaded (the token link, the 303 and the cookie included).
    let profile = env.dir.path().join("profile-dom");
    let (b, u) = (bin.clone(), url.clone());
    let dom = tokio::task::spawn_blocking(move || {
        run_browser(&b, &profile, &["--dump-dom".to_string()], &u)
    })
    .await
    .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.status.success() && html.contains("</html>"),
        "chromium failed ({:?}): {}\n{}",
        dom.status,
        html,
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        html.contains("<title>Petrel fleet dashboard</title>"),
        "{html}"
    );
    // The hostile strings stayed text: no element was made of them, no script ran.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("owned-by-id</title>"), "{html}");
    assert!(html.contains("&lt;script&gt;document.title=\"owned-by-id\"&lt;/script&gt;"));
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );

    // Campaign blocks.
    let player = section(&html, "data-campaign=\"player-2.1\"", "</article>");
    assert!(player.contains("data-state=\"active\""), "{player}");
    assert!(player.contains("revision 1"), "{player}");
    let firmware = section(&html, "data-campaign=\"firmware-7\"", "</article>");
    assert!(firmware.contains("data-state=\"halted\""), "{firmware}");
    assert!(firmware.contains("data-action=\"stopped\""), "{firmware}");

    // Stage bars with their numbers.
    let w1 = section(player, "data-stage=\"wave 1\"", "class=\"stage\"");
    for attr in [
        "data-devices=\"7\"",
        "data-succeeded=\"3\"",
        "data-failed=\"3\"",
        "data-pending=\"0\"",
        "data-overdue=\"1\"",
        "data-open=\"true\"",
    ] {
        assert!(w1.contains(attr), "{attr} missing in {w1}");
    }
    assert!(
        w1.contains(
            "aria-label=\"wave 1: 3 succeeded, 3 failed, 0 pending, 1 overdue, of 7 device(s)\""
        ),
        "{w1}"
    );
    assert!(
        w1.contains("data-count=\"succeeded\">3</span> succeeded"),
        "{w1}"
    );
    assert!(w1.contains("class=\"seg seg-overdue\""), "{w1}");
    let canaries = section(player, "data-stage=\"canaries\"", "class=\"stage\"");
    assert!(
        canaries.contains("data-devices=\"2\" data-succeeded=\"2\""),
        "{canaries}"
    );
    let w2 = section(player, "data-stage=\"wave 2\"", "class=\"gate\"");
    assert!(
        w2.contains("data-open=\"false\"") && w2.contains("no device"),
        "{w2}"
    );
    let everyone = section(firmware, "data-stage=\"everyone\"", "class=\"gate\"");
    assert!(
        everyone.contains(
            "data-devices=\"2\" data-succeeded=\"0\" data-failed=\"1\" data-pending=\"1\""
        ),
        "{everyone}"
    );

    // The gate: what the next `rollout advance` does.
    let gate = section(player, "class=\"gate\"", "</div>");
    assert!(
        gate.contains("data-action=\"open_wave\" data-wave=\"2\""),
        "{gate}"
    );
    assert!(gate.contains("open wave 2</strong>"), "{gate}");
    assert!(gate.contains("wave 1 has"), "{gate}");

    // Failure reasons, most frequent first.
    let reasons = section(player, "class=\"failure-reasons\"", "</ol>");
    let first = reasons
        .find("post-install hook exit 3")
        .expect("the top reason");
    let second = reasons.find("&lt;img").expect("the hostile reason");
    assert!(first < second, "{reasons}");
    assert!(reasons.contains("data-count=\"2\""), "{reasons}");

    // Device rows.
    assert_eq!(html.matches("<tr class=\"device\"").count(), 11, "{html}");
    assert!(html.contains("Showing 11 of 11 devices"), "{html}");
    let k6 = section(&html, "data-device=\"kiosk-06\"", "</tr>");
    assert!(
        k6.contains("<td class=\"group\">kiosk-eu</td><td class=\"canary\">no</td>"),
        "{k6}"
    );
    assert!(
        k6.contains("data-campaign=\"player-2.1\" data-state=\"overdue\""),
        "{k6}"
    );
    assert!(k6.contains("(3 h ago)"), "{k6}");
    assert!(k6.contains("<code>acme.player</code> 2.0.0"), "{k6}");
    let c1 = section(&html, "data-device=\"canary-1\"", "</tr>");
    assert!(c1.contains("<td class=\"canary\">yes</td>"), "{c1}");
    let k7 = section(&html, "data-device=\"kiosk-07\"", "</tr>");
    assert!(
        k7.contains("data-state=\"not_reported\"") && k7.contains("never"),
        "{k7}"
    );

    // The search box without JavaScript: `?q=` lists matching rows only (the cookie from
    // the first visit is in a fresh profile, so the link is used again).
    let profile = env.dir.path().join("profile-search");
    let (b, u) = (
        bin.clone(),
        format!(
            "http://{}/dashboard?q=hook+exit&token=read-s3cret%2Btoken",
            env.addr
        ),
    );
    let found = tokio::task::spawn_blocking(move || {
        run_browser(&b, &profile, &["--dump-dom".to_string()], &u)
    })
    .await
    .unwrap();
    let found = String::from_utf8_lossy(&found.stdout).into_owned();
    assert_eq!(found.matches("<tr class=\"device\"").count(), 2, "{found}");
    assert!(
        found.contains("data-device=\"kiosk-03\"") && found.contains("data-device=\"kiosk-04\"")
    );
    assert!(found.contains("value=\"hook exit\""), "{found}");

    // A screenshot, kept as a test artifact.
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let profile = env.dir.path().join("profile-shot");
    let args = vec![
        format!("--screenshot={}", png.display()),
        "--window-size=1280,1600".to_string(),
    ];
    let (b, u) = (bin.clone(), url.clone());
    let shot = tokio::task::spawn_blocking(move || run_browser(&b, &profile, &args, &u))
        .await
        .unwrap();
    assert!(
        shot.status.success(),
        "screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {}",
        png.display()
    );
    assert!(
        bytes.len() > 10 * 1024,
        "{} is only {} bytes",
        png.display(),
        bytes.len()
    );
    eprintln!("dashboard screenshot: {}", png.display());
}

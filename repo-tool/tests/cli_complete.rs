//! `--json` on `status`, `campaign list` and `verify`; `targets list`, `group list`,
//! `assign --remove`, `assign show`; the authoring warnings of `campaign create|update`;
//! and `rollout forecast`, checked against the device's own rollout function.

mod common;

use std::collections::BTreeSet;

use common::*;
use petrel_client::decide::rollout::{position, seed_bp, wave_seed, Position};
use petrel_client::decide::DeviceProfile;
use petrel_client::manifest::{assign_bin_for, CampaignManifest, Manifest};
use serde_json::Value;

const PLAYER: &[u8] = b"player 2.1.0\n";
const PLAYER_TARGET: &str = "apps/acme/player/2.1.0/player.bin";

fn group_toml(id: &str, revision: u64) -> String {
    format!(
        r#"kind = "group"
schema_version = 1
id = "{id}"
revision = {revision}

[apps."acme.player"]
version = "2.1.0"
target = "{PLAYER_TARGET}"
"#
    )
}

/// A campaign for group kiosk-eu revision 1. `consent` goes into `[consent]`, `schedule`
/// into `[schedule]`, `rollout` after them (whole tables).
fn campaign_toml(id: &str, revision: u64, consent: &str, schedule: &str, rollout: &str) -> String {
    format!(
        r#"kind = "campaign"
schema_version = 1
id = "{id}"
revision = {revision}
state = "active"

[notice.en]
title = "Player 2.1"
body = "Starts twice as fast."
severity = "recommended"

[consent]
policy = "required"
{consent}

[payload]
group = {{ id = "kiosk-eu", revision = 1 }}

[schedule]
{schedule}

{rollout}
"#
    )
}

const TWO_WAVES: &str = r#"[[rollout.waves]]
share_bp = 100
start = 2030-03-03T00:00:00Z

[[rollout.waves]]
share_bp = 10000
start = 2030-03-10T00:00:00Z
"#;

/// A published repository with the player artifact and groups kiosk-eu and kiosk-us
/// (revision 1 each).
fn fleet() -> Repo {
    let r = Repo::init(&[]);
    let f = r.src("player.bin", PLAYER);
    r.ok(&["add", path(&f), "--prefix", "apps/acme/player/2.1.0"]);
    for g in ["kiosk-eu", "kiosk-us"] {
        let t = r.src(&format!("{g}.toml"), group_toml(g, 1).as_bytes());
        r.ok(&["group", "set", path(&t)]);
    }
    r.ok(&["publish"]);
    r
}

/// `fleet()` plus campaign `id` (consent, schedule and rollout as in `campaign_toml`).
fn fleet_with(id: &str, consent: &str, schedule: &str, rollout: &str) -> Repo {
    let r = fleet();
    let c = r.src(
        &format!("{id}.toml"),
        campaign_toml(id, 1, consent, schedule, rollout).as_bytes(),
    );
    r.ok(&["campaign", "create", path(&c)]);
    r
}

/// Runs a command; returns (exit code, stdout, stderr).
fn outcome(r: &Repo, args: &[&str]) -> (Option<i32>, String, String) {
    let o = run(r.cmd(args));
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json_ok(r: &Repo, args: &[&str]) -> Value {
    let out = r.ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

fn assign(r: &Repo, group: &str, ids: &[&str], extra: &[&str]) {
    let f = r.src(
        &format!("ids-{}.txt", sha256_hex(ids.join(",").as_bytes())),
        ids.join("\n").as_bytes(),
    );
    r.ok(&[&["assign", "--group", group, "--devices", path(&f)], extra].concat());
}

/// The campaign as the workspace has it, parsed like a device parses it.
fn manifest(r: &Repo, id: &str) -> CampaignManifest {
    let out = r.ok(&["campaign", "show", id, "--json"]);
    CampaignManifest::from_json(out.as_bytes()).expect("campaign show --json is the manifest")
}

fn forecast(r: &Repo, id: &str, devices: &str) -> Value {
    let f = r.src(
        &format!("forecast-{}.txt", sha256_hex(devices.as_bytes())),
        devices.as_bytes(),
    );
    json_ok(
        r,
        &["rollout", "forecast", id, "--devices", path(&f), "--json"],
    )
}

fn device<'a>(f: &'a Value, id: &str) -> &'a Value {
    f["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["device_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in the forecast: {f}"))
}

/// Device ids `prefix0`, `prefix1`, … whose seed for `campaign` is at or above `bp`
/// (`above`) or below it.
fn ids_by_seed(prefix: &str, campaign: &str, bp: u32, above: bool, n: usize) -> Vec<String> {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .filter(|id| (seed_bp(wave_seed(id, campaign)) >= bp) == above)
        .take(n)
        .collect()
}

// --- --json on status, campaign list, verify --------------------------------------------

#[test]
fn status_json_lists_each_staged_role_with_version_signatures_and_thresholds() {
    let r = fleet();
    let v = json_ok(&r, &["status", "--json"]);
    assert_eq!(v["interrupted_publish"], false, "{v}");
    assert_eq!(v["staged"], serde_json::json!([]), "{v}");

    let f = r.src("new.txt", b"new\n");
    r.ok(&["add", path(&f), "--prefix", "apps/acme/new/1.0"]);
    let v = json_ok(&r, &["status", "--json"]);
    let staged = v["staged"].as_array().expect("staged");
    assert_eq!(staged.len(), 1, "{v}");
    let t = &staged[0];
    assert_eq!(t["role"], "targets");
    assert_eq!(
        t["version"],
        r.json("metadata/targets.json")["signed"]["version"]
            .as_u64()
            .unwrap()
            + 1
    );
    assert_eq!(t["signatures"], 0);
    assert_eq!(t["valid_signatures"], 0);
    assert_eq!(t["unfinished_publish"], false);
    assert_eq!(
        t["needs"],
        serde_json::json!([{ "threshold": 1, "of": "targets keys" }]),
        "{v}"
    );
}

#[test]
fn campaign_list_json_has_the_fields_of_the_table() {
    let r = fleet_with("player-2.1", "", "", TWO_WAVES);
    let v = json_ok(&r, &["campaign", "list", "--json"]);
    assert_eq!(
        v["campaigns"],
        serde_json::json!([{
            "id": "player-2.1",
            "revision": 1,
            "state": "active",
            "policy": "required",
            "method": "normal",
            "waves": "2 waves to 100%",
            "role": "campaigns",
            "publication": "staged",
            "refused": null,
        }]),
        "{v}"
    );
    assert_eq!(v["unusable"], serde_json::json!([]));
    r.ok(&["publish"]);
    let v = json_ok(&r, &["campaign", "list", "--json"]);
    assert_eq!(v["campaigns"][0]["publication"], "published", "{v}");
}

#[test]
fn verify_json_is_ok_for_a_good_tree() {
    let r = fleet();
    let v = json_ok(&r, &["verify", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["root_version"], 1);
    assert_eq!(v["targets_checked"], 3, "{v}");
    assert!(v["roles_checked"].as_u64().unwrap() >= 2, "{v}");
}

#[test]
fn verify_json_lists_every_problem_and_exits_1_with_a_json_error_on_stderr() {
    let r = fleet();
    let name = consistent_target_path(PLAYER_TARGET, PLAYER);
    std::fs::write(r.tree().join(&name), b"tampered").unwrap();
    let (code, out, err) = outcome(&r, &["verify", "--json"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["ok"], false);
    let problems = v["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p.as_str().unwrap().contains(&name)),
        "{v}"
    );
    let e: Value = serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert!(
        e["error"].as_str().unwrap().contains("problem(s) found in"),
        "{err}"
    );
}

#[test]
fn json_commands_report_errors_as_json_on_stderr_with_exit_code_1() {
    let r = fleet();
    for args in [
        &["campaign", "show", "no-such", "--json"][..],
        &["targets", "list", "--role", "no-such", "--json"][..],
        &["assign", "show", "--device", "", "--json"][..],
    ] {
        let (code, out, err) = outcome(&r, args);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: stdout stays empty: {out}");
        let e: Value =
            serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {err}"));
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    }
    // Without --json the error stays a line of text.
    let err = r.fail(&["targets", "list", "--role", "no-such"]);
    assert!(err.starts_with("error: role \"no-such\""), "{err}");
}

// --- targets list, group list ------------------------------------------------------------

#[test]
fn targets_list_shows_every_target_with_length_sha256_and_signing_role() {
    let r = fleet();
    let v = json_ok(&r, &["targets", "list", "--json"]);
    let list = v["targets"].as_array().expect("targets");
    let player = list
        .iter()
        .find(|t| t["path"] == PLAYER_TARGET)
        .expect("player");
    assert_eq!(player["length"], PLAYER.len());
    assert_eq!(player["sha256"], sha256_hex(PLAYER));
    assert_eq!(player["role"], "targets");
    let group = list
        .iter()
        .find(|t| t["path"] == "groups/kiosk-eu.json")
        .expect("group target");
    assert_eq!(group["role"], "groups");
    // Every target of every role's metadata, each once, nothing else.
    let mut expected = BTreeSet::new();
    for role in ["targets", "groups"] {
        let md = r.json(&format!("metadata/{role}.json"));
        for (name, file) in md["signed"]["targets"].as_object().unwrap() {
            expected.insert((
                name.clone(),
                role.to_string(),
                file["hashes"]["sha256"].as_str().unwrap().to_string(),
            ));
        }
    }
    let listed: BTreeSet<_> = list
        .iter()
        .map(|t| {
            (
                t["path"].as_str().unwrap().to_string(),
                t["role"].as_str().unwrap().to_string(),
                t["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(listed.len(), list.len());
    let text = r.ok(&["targets", "list"]);
    assert!(text.lines().next().unwrap().starts_with("PATH"), "{text}");
    assert!(text.contains(&sha256_hex(PLAYER)), "{text}");
}

#[test]
fn targets_list_shows_staged_targets_as_staged_until_published() {
    let r = fleet();
    let f = r.src("new.bin", b"new\n");
    r.ok(&["add", path(&f), "--prefix", "apps/acme/new/1.0"]);
    let v = json_ok(&r, &["targets", "list", "--json"]);
    let by = |p: &str| {
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["path"] == p)
            .unwrap_or_else(|| panic!("{p}: {v}"))["publication"]
            .clone()
    };
    assert_eq!(by("apps/acme/new/1.0/new.bin"), "staged");
    assert_eq!(by(PLAYER_TARGET), "published");
    r.ok(&["publish"]);
    let v = json_ok(&r, &["targets", "list", "--json"]);
    assert!(
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["publication"] == "published"),
        "{v}"
    );
}

#[test]
fn targets_list_role_filter_includes_the_hashed_bins_of_a_role() {
    let r = fleet();
    r.ok(&[
        "delegate",
        "--to",
        "acme",
        "--paths",
        "apps/acme/*/*/*",
        "--terminating",
    ]);
    r.ok(&[
        "delegate", "--from", "acme", "--to", "acme-bin", "--bins", "4",
    ]);
    let a = r.src("a.bin", b"a\n");
    let b = r.src("b.bin", b"b\n");
    r.ok(&[
        "add",
        path(&a),
        path(&b),
        "--prefix",
        "apps/acme/tool/1.0",
        "--role",
        "acme",
    ]);
    let v = json_ok(&r, &["targets", "list", "--role", "acme", "--json"]);
    let list = v["targets"].as_array().unwrap();
    let paths: BTreeSet<&str> = list.iter().map(|t| t["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        BTreeSet::from(["apps/acme/tool/1.0/a.bin", "apps/acme/tool/1.0/b.bin"]),
        "{v}"
    );
    for t in list {
        let name = t["path"].as_str().unwrap();
        assert_eq!(t["role"], bin_of(name, "acme-bin", 2), "{v}");
    }
    let v = json_ok(&r, &["targets", "list", "--role", "groups", "--json"]);
    assert!(
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["role"] == "groups"),
        "{v}"
    );
}

#[test]
fn group_list_shows_revision_apps_and_publication_state() {
    let r = fleet();
    let t = r.src("kiosk-eu-2.toml", group_toml("kiosk-eu", 2).as_bytes());
    r.ok(&["group", "set", path(&t)]);
    let v = json_ok(&r, &["group", "list", "--json"]);
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");
    let eu = groups.iter().find(|g| g["id"] == "kiosk-eu").unwrap();
    assert_eq!(eu["revision"], 2);
    assert_eq!(eu["publication"], "staged");
    assert_eq!(eu["role"], "groups");
    assert_eq!(
        eu["apps"],
        serde_json::json!({ "acme.player": { "version": "2.1.0", "target": PLAYER_TARGET } })
    );
    let us = groups.iter().find(|g| g["id"] == "kiosk-us").unwrap();
    assert_eq!(us["revision"], 1);
    assert_eq!(us["publication"], "published");
    let text = r.ok(&["group", "list"]);
    let row = text
        .lines()
        .find(|l| l.starts_with("kiosk-eu"))
        .expect("row");
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        cells,
        ["kiosk-eu", "2", "acme.player 2.1.0", "groups", "staged"],
        "{text}"
    );
}

// --- assign --remove, assign show ---------------------------------------------------------

#[test]
fn assign_show_finds_the_group_of_an_assigned_device_without_publishing_ids() {
    let r = fleet_with("player-2.1", "", "", TWO_WAVES);
    assign(&r, "kiosk-eu", &["kiosk-0042", "kiosk-0203"], &[]);
    assign(
        &r,
        "kiosk-us",
        &["lab-7"],
        &["--canary", "--campaign", "player-2.1"],
    );
    r.ok(&["publish"]);
    let v = json_ok(&r, &["assign", "show", "--device", "kiosk-0042", "--json"]);
    let bin = assign_bin_for("kiosk-0042", 2);
    assert_eq!(v["assigned"], true, "{v}");
    assert_eq!(v["bin"], bin);
    assert_eq!(v["target"], format!("assign/{bin}.json"));
    assert_eq!(v["role"], "assign");
    assert_eq!(v["publication"], "published");
    assert_eq!(v["group"], "kiosk-eu");
    assert_eq!(v["canary"], false);
    assert_eq!(v["campaigns"], serde_json::json!([]));
    // The entry key is the salted hash the published bin lists.
    let key = v["entry_key"].as_str().unwrap();
    let bin_file: Value = serde_json::from_str(&files_named(&r, &format!(".{bin}.json"))).unwrap();
    assert_eq!(bin_file["devices"][key]["group"], "kiosk-eu", "{bin_file}");
    let v = json_ok(&r, &["assign", "show", "--device", "lab-7", "--json"]);
    assert_eq!(v["group"], "kiosk-us");
    assert_eq!(v["canary"], true);
    assert_eq!(v["campaigns"], serde_json::json!(["player-2.1"]));
    let text = r.ok(&["assign", "show", "--device", "kiosk-0203"]);
    assert!(text.contains("group:     kiosk-eu"), "{text}");
    assert!(
        !text.contains("kiosk-0203"),
        "the output never echoes the id: {text}"
    );
    // No clear id anywhere in the workspace or the tree.
    for id in ["kiosk-0042", "kiosk-0203", "lab-7"] {
        let hits: Vec<_> = walkdir::WalkDir::new(&r.dir)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .filter(|e| {
                let b = std::fs::read(e.path()).unwrap();
                b.windows(id.len()).any(|w| w == id.as_bytes())
            })
            .map(|e| e.path().display().to_string())
            .collect();
        assert!(hits.is_empty(), "{id} in clear in {hits:?}");
    }
}

/// The text of the published assignment bin whose tree file name ends with `suffix`.
fn files_named(r: &Repo, suffix: &str) -> String {
    walkdir::WalkDir::new(r.tree().join("targets/assign"))
        .into_iter()
        .map(|e| e.unwrap())
        .find(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap_or_else(|| panic!("no published bin *{suffix}"))
}

#[test]
fn assign_show_says_not_assigned_for_a_device_no_bin_lists() {
    let r = fleet();
    assign(&r, "kiosk-eu", &["kiosk-0042"], &[]);
    // A device in the same bin, not listed; and one whose bin does not exist.
    let same_bin = (0..10_000)
        .map(|i| format!("other-{i}"))
        .find(|d| assign_bin_for(d, 2) == assign_bin_for("kiosk-0042", 2))
        .unwrap();
    let v = json_ok(&r, &["assign", "show", "--device", &same_bin, "--json"]);
    assert_eq!(v["assigned"], false, "{v}");
    assert_eq!(v["role"], "assign");
    assert_eq!(v["publication"], "staged");
    assert_eq!(v["group"], Value::Null);
    let text = r.ok(&["assign", "show", "--device", &same_bin]);
    assert!(text.starts_with("not assigned: bin "), "{text}");
    let lonely = (0..10_000)
        .map(|i| format!("lonely-{i}"))
        .find(|d| assign_bin_for(d, 2) != assign_bin_for("kiosk-0042", 2))
        .unwrap();
    let text = r.ok(&["assign", "show", "--device", &lonely]);
    assert!(
        text.contains("not assigned") && text.contains("does not exist yet"),
        "{text}"
    );
}

#[test]
fn assign_with_group_keeps_working_with_canary_and_campaign() {
    let r = fleet_with("player-2.1", "", "", TWO_WAVES);
    let f = r.src("lab.txt", b"# lab\nlab-1\n\nlab-2\n");
    let out = r.ok(&[
        "assign",
        "--group",
        "kiosk-eu",
        "--devices",
        path(&f),
        "--canary",
        "--campaign",
        "player-2.1",
    ]);
    assert!(
        out.contains("2 device(s) for group kiosk-eu: 2 new"),
        "{out}"
    );
    for id in ["lab-1", "lab-2"] {
        let v = json_ok(&r, &["assign", "show", "--device", id, "--json"]);
        assert_eq!(v["group"], "kiosk-eu");
        assert_eq!(v["canary"], true);
        assert_eq!(v["campaigns"], serde_json::json!(["player-2.1"]));
    }
    // Without --group (or --remove) the command line is refused.
    let (code, _, err) = outcome(&r, &["assign", "--devices", path(&f)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--group"), "{err}");
}

#[test]
fn assign_remove_removes_only_the_listed_devices_and_stages_their_bins() {
    let r = fleet();
    assign(&r, "kiosk-eu", &["kiosk-1", "kiosk-2", "kiosk-3"], &[]);
    r.ok(&["publish"]);
    let f = r.src("retired.txt", b"# retired\nkiosk-2\n");
    let out = r.ok(&["assign", "--remove", "--devices", path(&f)]);
    let bin = assign_bin_for("kiosk-2", 2);
    assert!(out.contains("1 device(s) removed"), "{out}");
    assert!(
        out.contains(&format!(
            "staged assign/{bin}.json revision 2 in role assign"
        )),
        "{out}"
    );
    assert!(!out.contains("kiosk-2"), "{out}");
    let status = json_ok(&r, &["status", "--json"]);
    let roles: Vec<&str> = status["staged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["assign"], "only the bin's role is staged: {status}");
    let shown = |id: &str| json_ok(&r, &["assign", "show", "--device", id, "--json"]);
    assert_eq!(shown("kiosk-2")["assigned"], false);
    assert_eq!(shown("kiosk-1")["group"], "kiosk-eu");
    assert_eq!(shown("kiosk-3")["group"], "kiosk-eu");
    r.ok(&["publish"]);
    r.verify_ok();
    assert_eq!(shown("kiosk-2")["publication"], "published");
    assert_eq!(shown("kiosk-2")["bin_revision"], 2);
}

#[test]
fn assign_remove_names_the_ids_not_assigned_and_changes_nothing() {
    let r = fleet();
    assign(&r, "kiosk-eu", &["kiosk-1"], &[]);
    r.ok(&["publish"]);
    let before = r.snapshot();
    let f = r.src("retired.txt", b"kiosk-1\nghost-7\nghost-8\n");
    let err = r.fail(&["assign", "--remove", "--devices", path(&f)]);
    assert!(err.contains("retired.txt"), "{err}");
    assert!(
        err.contains("2 of 3 device id(s) are not assigned"),
        "{err}"
    );
    assert!(err.contains("\"ghost-7\", \"ghost-8\""), "{err}");
    assert!(
        !err.contains("kiosk-1"),
        "only the missing ids are named: {err}"
    );
    assert!(err.contains("nothing was removed"), "{err}");
    assert_same(&before, &r.snapshot(), "a refused removal");
    let (code, _, err) = outcome(
        &r,
        &[
            "assign",
            "--remove",
            "--group",
            "kiosk-eu",
            "--devices",
            path(&f),
        ],
    );
    assert_eq!(
        code,
        Some(2),
        "--remove with --group is a usage error: {err}"
    );
}

// --- authoring warnings ------------------------------------------------------------------

/// Creates campaign `id` in `r`; returns stderr (the command must succeed).
fn create(r: &Repo, id: &str, consent: &str, schedule: &str, rollout: &str) -> String {
    let c = r.src(
        &format!("{id}.toml"),
        campaign_toml(id, 1, consent, schedule, rollout).as_bytes(),
    );
    let (code, out, err) = outcome(r, &["campaign", "create", path(&c)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("created campaign {id}")), "{out}");
    err
}

#[test]
fn campaign_create_does_not_warn_about_a_sound_campaign() {
    let r = fleet();
    assign(&r, "kiosk-eu", &["lab-1"], &["--canary"]);
    let err = create(
        &r,
        "sound",
        "deadline = 2030-04-01T00:00:00Z",
        "not_before = 2030-03-01T00:00:00Z",
        &format!("[rollout]\ncanary = true\n\n{TWO_WAVES}"),
    );
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn campaign_create_warns_when_consent_deadline_is_past() {
    let r = fleet();
    let err = create(&r, "late", "deadline = 2021-01-01T00:00:00Z", "", TWO_WAVES);
    let w = err
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(w.contains("campaign \"late\""), "{w}");
    assert!(
        w.contains("consent deadline 2021-01-01T00:00:00Z is already past"),
        "{w}"
    );
    assert!(w.contains("consent.deadline"), "the fix is named: {w}");
    // Staged all the same.
    assert_eq!(manifest(&r, "late").revision, 1);
}

#[test]
fn campaign_update_warns_when_consent_deadline_is_past() {
    let r = fleet();
    create(&r, "late", "deadline = 2030-01-01T00:00:00Z", "", TWO_WAVES);
    let c = r.src(
        "late-2.toml",
        campaign_toml("late", 2, "deadline = 2022-06-01T00:00:00Z", "", TWO_WAVES).as_bytes(),
    );
    let (code, out, err) = outcome(&r, &["campaign", "update", path(&c)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains(
            "warning: campaign \"late\": the consent deadline 2022-06-01T00:00:00Z is already past"
        ),
        "{err}"
    );
    assert!(!out.contains("warning"), "warnings go to stderr: {out}");
}

#[test]
fn campaign_create_refuses_not_after_before_not_before() {
    let r = fleet();
    let before = r.snapshot();
    let c = r.src(
        "backwards.toml",
        campaign_toml(
            "backwards",
            1,
            "",
            "not_before = 2030-03-01T00:00:00Z\nnot_after = 2030-02-01T00:00:00Z",
            TWO_WAVES,
        )
        .as_bytes(),
    );
    let err = r.fail(&["campaign", "create", path(&c)]);
    assert!(err.contains("backwards.toml"), "{err}");
    assert!(err.contains("schedule.not_after"), "{err}");
    assert!(
        err.contains("is not after not_before 2030-03-01T00:00:00Z"),
        "{err}"
    );
    assert_same(&before, &r.snapshot(), "a refused campaign");
}

#[test]
fn campaign_create_warns_when_a_wave_starts_before_not_before() {
    let r = fleet();
    let err = create(
        &r,
        "early",
        "",
        "not_before = 2030-03-05T00:00:00Z",
        TWO_WAVES,
    );
    let waves: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("before schedule.not_before"))
        .collect();
    assert_eq!(
        waves.len(),
        1,
        "only wave 1 starts before not_before: {err}"
    );
    assert!(
        waves[0].starts_with("warning: campaign \"early\": wave 1 starts at 2030-03-03T00:00:00Z"),
        "{err}"
    );
    assert!(
        waves[0].contains("effectively opens at 2030-03-05T00:00:00Z"),
        "{err}"
    );
    // And the device agrees: wave 1 opens at not_before.
    let c = manifest(&r, "early");
    let id = ids_by_seed("d", "early", 100, false, 1).remove(0);
    let p = DeviceProfile {
        id,
        ..DeviceProfile::default()
    };
    assert_eq!(
        position(&c, &p, false).opens_at().map(|t| t.to_rfc3339()),
        Some("2030-03-05T00:00:00+00:00".to_string())
    );
}

#[test]
fn campaign_create_warns_when_a_canary_stage_has_no_canary_device_in_its_group() {
    let r = fleet();
    // A canary, but in another group: still no canary for kiosk-eu.
    assign(&r, "kiosk-us", &["lab-us"], &["--canary"]);
    assign(&r, "kiosk-eu", &["kiosk-1"], &[]);
    let rollout = format!("[rollout]\ncanary = true\n\n{TWO_WAVES}");
    let err = create(&r, "canaried", "", "", &rollout);
    let w = err
        .lines()
        .find(|l| l.contains("canary stage"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(w.starts_with("warning: campaign \"canaried\""), "{w}");
    assert!(
        w.contains("no device of group kiosk-eu is assigned as a canary"),
        "{w}"
    );
    assert!(w.contains("--canary"), "the fix is named: {w}");
    // With a canary in the group, the next revision does not warn.
    assign(&r, "kiosk-eu", &["lab-eu"], &["--canary"]);
    let c = r.src(
        "canaried-2.toml",
        campaign_toml("canaried", 2, "", "", &rollout).as_bytes(),
    );
    let (code, out, err) = outcome(&r, &["campaign", "update", path(&c)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!err.contains("canary"), "{err}");
}

// --- rollout forecast --------------------------------------------------------------------

const SELECTOR_WAVES: &str = r#"[[rollout.waves]]
regions = ["eu-west"]
share_bp = 5000
start = 2030-03-03T00:00:00Z

[[rollout.waves]]
regions = ["eu-west", "eu-central"]
start = 2030-03-06T00:00:00Z

[[rollout.waves]]
hardware_any = ["modem:em06"]
channels = ["beta"]
start = 2030-03-08T00:00:00Z
"#;

#[test]
fn forecast_uses_the_same_wave_as_the_device() {
    let r = fleet_with(
        "by-region",
        "",
        "not_before = 2030-03-04T00:00:00Z",
        SELECTOR_WAVES,
    );
    let mut csv = String::from("device_id,region,channel,device_type,vendor,hardware,licences\n");
    let mut ids = Vec::new();
    let regions = ["eu-west", "eu-central", "us-east", ""];
    let channels = ["beta", "stable"];
    for i in 0..40 {
        let id = format!("kiosk-{i:03}");
        let hw = if i % 3 == 0 {
            "display:1080p; modem:em06"
        } else {
            "display:1080p"
        };
        csv.push_str(&format!(
            "{id},{},{},kiosk,acme,{hw},player-pro\n",
            regions[i % regions.len()],
            channels[i % channels.len()]
        ));
        ids.push(id);
    }
    assign(
        &r,
        "kiosk-eu",
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    let f = forecast(&r, "by-region", &csv);
    let c = manifest(&r, "by-region");
    let mut kinds = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let region = regions[i % regions.len()];
        let profile = DeviceProfile {
            id: id.clone(),
            device_type: "kiosk".into(),
            vendor: Some("acme".into()),
            region: (!region.is_empty()).then(|| region.to_string()),
            channel: Some(channels[i % channels.len()].into()),
            hardware: if i % 3 == 0 {
                BTreeSet::from(["display:1080p".to_string(), "modem:em06".to_string()])
            } else {
                BTreeSet::from(["display:1080p".to_string()])
            },
            licences: BTreeSet::from(["player-pro".to_string()]),
            ..DeviceProfile::default()
        };
        let d = device(&f, id);
        match position(&c, &profile, false) {
            Position::Wave { index, opens_at } => {
                assert_eq!(d["position"], "wave", "{id}: {d}");
                assert_eq!(d["wave"], index + 1, "{id}: {d}");
                assert_eq!(
                    d["opens_at"],
                    opens_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "{id}: {d}"
                );
                kinds.insert(format!("wave {}", index + 1));
            }
            Position::NoWave { reason } => {
                assert_eq!(d["position"], "no_wave", "{id}: {d}");
                assert!(d["detail"].as_str().unwrap().contains(&reason), "{id}: {d}");
                kinds.insert("no wave".into());
            }
            other => panic!("{id}: unexpected {other:?}"),
        }
    }
    // The list exercises every wave and devices in none.
    assert_eq!(
        kinds,
        BTreeSet::from([
            "wave 1".into(),
            "wave 2".into(),
            "wave 3".into(),
            "no wave".into()
        ]),
        "{f}"
    );
    // Wave 1 starts before not_before: it opens at not_before, as on the device.
    let w1 = f["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["wave"] == 1)
        .unwrap();
    assert_eq!(w1["opens_at"], "2030-03-04T00:00:00Z");
    assert_eq!(w1["open"], false);
}

#[test]
fn forecast_reads_plain_id_lists_like_assign() {
    let r = fleet_with("player-2.1", "", "", TWO_WAVES);
    let inside = ids_by_seed("k", "player-2.1", 100, false, 1).remove(0);
    let outside = ids_by_seed("k", "player-2.1", 100, true, 1).remove(0);
    assign(&r, "kiosk-eu", &[&inside, &outside], &[]);
    let f = forecast(
        &r,
        "player-2.1",
        &format!("# kiosks\n\n  {inside}  \n{outside}\n{inside}\n"),
    );
    let devices = f["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "a repeated id counts once: {f}");
    assert_eq!(device(&f, &inside)["wave"], 1);
    assert_eq!(device(&f, &inside)["line"], 3);
    assert_eq!(device(&f, &outside)["wave"], 2);
    assert_eq!(f["campaign"], "player-2.1");
    assert_eq!(f["publication"], "staged");
    let text = {
        let p = r.src("plain.txt", format!("{inside}\n{outside}\n").as_bytes());
        r.ok(&["rollout", "forecast", "player-2.1", "--devices", path(&p)])
    };
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&inside))
        .expect("a line per device");
    assert!(
        line.ends_with("wave 1 (share 1 %): opens at 2030-03-03T00:00:00Z"),
        "{text}"
    );
    assert!(text.contains("2 device(s): 1 wave 1, 1 wave 2"), "{text}");
}

#[test]
fn forecast_says_when_a_device_is_not_in_the_campaigns_group_or_not_assigned() {
    let r = fleet_with("player-2.1", "", "", TWO_WAVES);
    assign(&r, "kiosk-us", &["us-1"], &[]);
    let f = forecast(&r, "player-2.1", "us-1\nnobody-1\n");
    let us = device(&f, "us-1");
    assert_eq!(us["position"], "not_in_group", "{f}");
    assert_eq!(us["group"], "kiosk-us");
    assert_eq!(us["wave"], Value::Null);
    let detail = us["detail"].as_str().unwrap();
    assert!(
        detail.contains("assigned to group kiosk-us") && detail.contains("for group kiosk-eu"),
        "{detail}"
    );
    let nobody = device(&f, "nobody-1");
    assert_eq!(nobody["position"], "not_assigned", "{f}");
    assert!(
        nobody["detail"]
            .as_str()
            .unwrap()
            .contains("petrel-repo assign --group kiosk-eu"),
        "{f}"
    );
}

#[test]
fn forecast_says_canary_and_waiting_for_canaries() {
    let rollout = format!("[rollout]\ncanary = true\n\n{TWO_WAVES}");
    let r = fleet_with("canaried", "", "", &rollout);
    assign(&r, "kiosk-eu", &["lab-1"], &["--canary"]);
    let late = ids_by_seed("k", "canaried", 100, true, 1).remove(0);
    assign(&r, "kiosk-eu", &[&late], &[]);
    let f = forecast(&r, "canaried", &format!("lab-1\n{late}\n"));
    let lab = device(&f, "lab-1");
    assert_eq!(lab["position"], "canary", "{f}");
    assert_eq!(lab["canary"], true);
    let waiting = device(&f, &late);
    assert_eq!(waiting["position"], "after_canaries", "{f}");
    assert_eq!(waiting["opens_at"], Value::Null);
    assert_eq!(waiting["open"], false);
    // Once the canaries pass it is in wave 2, which the forecast already says.
    assert_eq!(waiting["wave"], 2, "{f}");
    assert!(
        waiting["detail"]
            .as_str()
            .unwrap()
            .contains("waits for the canaries"),
        "{f}"
    );
    let c = manifest(&r, "canaried");
    let p = DeviceProfile {
        id: late.clone(),
        ..DeviceProfile::default()
    };
    assert_eq!(position(&c, &p, false), Position::AfterCanaries);
}

#[test]
fn forecast_says_when_a_device_is_beyond_the_last_wave() {
    let one_wave = "[[rollout.waves]]\nshare_bp = 100\nstart = 2030-03-03T00:00:00Z\n";
    let r = fleet_with("small", "", "", one_wave);
    let beyond = ids_by_seed("k", "small", 100, true, 1).remove(0);
    assign(&r, "kiosk-eu", &[&beyond], &[]);
    let f = forecast(&r, "small", &beyond);
    let d = device(&f, &beyond);
    assert_eq!(d["position"], "beyond", "{f}");
    assert_eq!(d["wave"], Value::Null);
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .contains("beyond the last wave: the waves reach 1 %"),
        "{f}"
    );
}

#[test]
fn forecast_gives_the_no_wave_reason() {
    let r = fleet_with("by-region", "", "", SELECTOR_WAVES);
    assign(&r, "kiosk-eu", &["us-kiosk"], &[]);
    let f = forecast(
        &r,
        "by-region",
        "device_id,region,channel\nus-kiosk,us-east,stable\n",
    );
    let d = device(&f, "us-kiosk");
    assert_eq!(d["position"], "no_wave", "{f}");
    let detail = d["detail"].as_str().unwrap();
    assert!(detail.starts_with("matches no wave: "), "{detail}");
    assert!(detail.contains("us-east"), "{detail}");
}

#[test]
fn forecast_refuses_a_bad_csv_naming_the_file_and_line() {
    let r = fleet_with("player-2.1", "", "", TWO_WAVES);
    for (body, expect) in [
        (
            "device_id,region,colour\nk1,eu-west,red\n",
            "line 1: unknown column \"colour\"",
        ),
        (
            "device_id,region\nk1,eu-west,extra\n",
            "line 2: 3 field(s), but the header on line 1 has 2 column(s)",
        ),
        (
            "# fleet\ndevice_id,region\nk1,eu-west\nk1,eu-central\n",
            "line 4: the device on line 3 is listed again",
        ),
        ("# nothing\n\n", "no device ids"),
    ] {
        let f = r.src("bad.csv", body.as_bytes());
        let err = r.fail(&["rollout", "forecast", "player-2.1", "--devices", path(&f)]);
        assert!(err.contains("bad.csv"), "{err}");
        assert!(err.contains(expect), "{body:?}: {err}");
    }
    let f = r.src("ok.txt", b"k1\n");
    let err = r.fail(&["rollout", "forecast", "no-such", "--devices", path(&f)]);
    assert!(err.contains("no campaign \"no-such\""), "{err}");
}

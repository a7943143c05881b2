//! The `petrel` device agent end to end: a repository built with the simulator and written
//! as a static tree, served over `file://`; a device (configuration, profile, inventory
//! directory, state directory) in a temporary directory; the built binary run on it.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use chrono::{Duration, Utc};
use petrel_client::agent::repo::gather;
use petrel_client::decide::rollout::{seed_bp, wave_seed};
use petrel_client::manifest::{
    assign_bin_for, sha256_hex, Assignment, AssignmentBin, CampaignManifest, GroupManifest,
    Manifest, UtcTime,
};
use support::RepoSim;
use tempfile::TempDir;

const DEVICE: &str = "kiosk-0042";
const PLAYER: &str = "apps/acme/player/2.1.0/player.bin";
const FONTS: &str = "apps/acme/fonts/1.0/fonts.bin";

fn artifact(target: &str) -> Vec<u8> {
    format!("the bytes of {target}\n").repeat(50).into_bytes()
}

fn instant(days_from_now: i64) -> String {
    UtcTime(Utc::now() + Duration::days(days_from_now)).to_string()
}

fn group(revision: u64) -> GroupManifest {
    GroupManifest::from_toml(&format!(
        r#"
kind = "group"
schema_version = 1
id = "kiosk-eu"
revision = {revision}

[apps."acme.player"]
version = "2.1.0"
target = "{PLAYER}"
post_install = "start"

[apps."acme.fonts"]
version = "1.0"
target = "{FONTS}"
"#
    ))
    .unwrap()
}

/// A consent-required campaign delivering group kiosk-eu revision 1, with a notice in
/// English and German.
fn required_campaign(revision: u64, body: &str) -> String {
    format!(
        r#"
kind = "campaign"
schema_version = 1
id = "player-2.1"
revision = {revision}
state = "active"
default_locale = "en"

[notice.en]
title = "Player 2.1"
body = "{body}"
severity = "recommended"

[notice.de]
title = "Player 2.1"
body = "Startet doppelt so schnell."
severity = "recommended"

[consent]
policy = "required"
max_postpones = 2

[applies_to]
device_types = ["kiosk"]

[payload]
group = {{ id = "kiosk-eu", revision = 1 }}
"#
    )
}

/// A campaign for US kiosks only.
const US_CAMPAIGN: &str = r#"
kind = "campaign"
schema_version = 1
id = "us-kiosks"
revision = 1
state = "active"

[notice.en]
title = "US player"
body = "For US kiosks."
severity = "info"

[consent]
policy = "none"

[applies_to]
regions = ["us-east", "us-west"]

[payload]
group = { id = "kiosk-eu", revision = 1 }
"#;

/// A silent campaign (no consent): the plan alone decides.
const SILENT_CAMPAIGN: &str = r#"
kind = "campaign"
schema_version = 1
id = "converge"
revision = 1
state = "active"

[notice.en]
title = "Keep kiosks on the tested set"
body = "Silent."
severity = "info"

[consent]
policy = "none"

[payload]
group = { id = "kiosk-eu", revision = 1 }
"#;

/// The repository: `campaigns/*`, `groups/*` and `assign/*` each delegated to their own
/// role; artifacts signed by top-level targets.
struct Fleet {
    sim: RepoSim,
    tree: TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let mut sim = RepoSim::new();
        sim.delegate("targets", "campaigns", &["campaigns/*"], true);
        sim.delegate("targets", "groups", &["groups/*"], true);
        sim.delegate("targets", "assign", &["assign/*"], true);
        let g = group(1);
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
        f.release();
        f
    }

    /// Signs and publishes a campaign manifest (authored as TOML).
    fn campaign(&mut self, toml: &str) -> CampaignManifest {
        let c = CampaignManifest::from_toml(toml).unwrap();
        self.sim.add_target(
            "campaigns",
            &c.target_path(),
            &c.to_canonical_json().unwrap(),
        );
        c
    }

    /// A new repository release: every role gets a new version, then snapshot and
    /// timestamp; the tree is rewritten.
    fn release(&mut self) {
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
}

/// A device: configuration, profile, inventory directory and state directory.
struct Device {
    dir: TempDir,
}

const PROFILE: &str = r#"
id = "kiosk-0042"
type = "kiosk"
vendor = "acme"
region = "eu-west"
channel = "stable"
utc_offset_minutes = 60
locale = "en"
"#;

impl Device {
    /// A provisioned device running player 2.0.1 and the group's fonts.
    fn new(fleet: &Fleet) -> Device {
        let d = Device::unprovisioned(fleet, PROFILE);
        fs::write(d.path("root.json"), fleet.sim.initial_root()).unwrap();
        let out = d.petrel(&["init", "--root", "root.json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        d.install(
            "acme.player",
            "2.0.1",
            &artifact("apps/acme/player/2.0.1/player.bin"),
        );
        d.install("acme.fonts", "1.0", &artifact(FONTS));
        d
    }

    fn unprovisioned(fleet: &Fleet, profile: &str) -> Device {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("device.toml"),
            format!(
                r#"
state_dir = "state"
profile = "profile.toml"

[repository]
metadata_url = "{}"
targets_url = "{}"
assign_bin_digits = 2

[inventory]
dir = "apps"
"#,
                fleet.url("metadata"),
                fleet.url("targets")
            ),
        )
        .unwrap();
        fs::write(dir.path().join("profile.toml"), profile).unwrap();
        fs::create_dir(dir.path().join("apps")).unwrap();
        Device { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Installs an application by hand: `apps/<app>/VERSION` and its artifact file.
    fn install(&self, app: &str, version: &str, bytes: &[u8]) {
        let d = self.path(&format!("apps/{app}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("VERSION"), format!("{version}\n")).unwrap();
        fs::write(d.join("artifact.bin"), bytes).unwrap();
    }

    fn petrel(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_petrel"))
            .arg("--config")
            .arg(self.path("device.toml"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("PETREL_CONFIG")
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.petrel(args);
        assert!(
            out.status.success(),
            "petrel {args:?} failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command that must fail with exit status 1 and returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.petrel(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "petrel {args:?} should fail:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stderr)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The line of `check` output about one campaign.
fn campaign_line<'a>(out: &'a str, id: &str) -> &'a str {
    let prefix = format!("  {id} revision ");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for {id} in:\n{out}"))
}

fn manifest_hash(show: &str) -> String {
    show.lines()
        .find_map(|l| l.strip_prefix("Manifest sha256 "))
        .unwrap_or_else(|| panic!("no hash in:\n{show}"))
        .trim()
        .to_string()
}

/// The offer hash `consent show` prints (what an answer is bound to).
fn offer_hash(show: &str) -> String {
    show.lines()
        .find_map(|l| l.strip_prefix("Offer sha256 "))
        .unwrap_or_else(|| panic!("no offer hash in:\n{show}"))
        .trim()
        .to_string()
}

#[test]
fn check_shows_why_a_campaign_does_not_apply_and_asks_for_consent() {
    let mut fleet = Fleet::new();
    fleet.campaign(US_CAMPAIGN);
    fleet.campaign(&required_campaign(1, "Starts twice as fast."));
    fleet.release();
    let dev = Device::new(&fleet);

    let out = dev.ok(&["check"]);
    assert!(
        out.contains("Device kiosk-0042: group kiosk-eu revision 1"),
        "{out}"
    );
    assert!(
        out.contains("update acme.player 2.0.1 -> 2.1.0"),
        "the plan is computed against the actual inventory:\n{out}"
    );
    let us = campaign_line(&out, "us-kiosks");
    assert!(us.contains("not applicable because"), "{us}");
    assert!(us.contains("region") && us.contains("eu-west"), "{us}");
    assert!(us.contains("next: none"), "{us}");
    let player = campaign_line(&out, "player-2.1");
    assert!(player.contains("waiting for consent (required"), "{player}");
    assert!(
        player.contains("next: answer it: petrel consent show player-2.1"),
        "{player}"
    );

    // The consent request, in the device's locale and in another one.
    let list = dev.ok(&["consent", "list"]);
    assert!(list.contains("Pending consent requests (1)"), "{list}");
    assert!(
        list.contains("player-2.1 revision 1 \"Player 2.1\" (recommended, notice in en)"),
        "{list}"
    );
    let list_de = dev.ok(&["consent", "list", "--locale", "de"]);
    assert!(list_de.contains("notice in de"), "{list_de}");
    let json: serde_json::Value =
        serde_json::from_str(&dev.ok(&["consent", "list", "--json", "--locale", "de"])).unwrap();
    assert_eq!(json[0]["campaign"], "player-2.1");
    assert_eq!(json[0]["body"], "Startet doppelt so schnell.");
    assert_eq!(json[0]["consent"]["state"], "pending");

    let show = dev.ok(&["consent", "show", "player-2.1", "--locale", "de"]);
    assert!(show.contains("Startet doppelt so schnell."), "{show}");
    assert!(show.contains("update acme.player 2.0.1 -> 2.1.0"), "{show}");
    let hash = offer_hash(&show);
    let manifest = manifest_hash(&show);
    assert_ne!(hash, manifest);
    assert!(
        show.contains(&format!("petrel consent accept player-2.1 --sha256 {hash}")),
        "{show}"
    );

    // Accept, bound to the offer shown; the record names the exact manifest too.
    let accepted = dev.ok(&["consent", "accept", "player-2.1", "--sha256", &hash[..12]]);
    assert!(
        accepted.contains("Recorded: accept of campaign player-2.1 revision 1"),
        "{accepted}"
    );
    assert!(
        accepted.contains("Now: ready to download 1 item(s)"),
        "{accepted}"
    );
    let log = fs::read_to_string(dev.path("state/consent.log")).unwrap();
    assert!(
        log.contains(&format!("\"offer_sha256\":\"{hash}\""))
            && log.contains(&format!("\"manifest_sha256\":\"{manifest}\""))
            && log.contains("\"type\":\"accept\""),
        "{log}"
    );

    let out = dev.ok(&["check"]);
    let player = campaign_line(&out, "player-2.1");
    assert!(player.contains("ready to download 1 item(s)"), "{player}");
    assert!(
        player.contains("next: download and verify 1 item(s)"),
        "{player}"
    );
    assert!(dev
        .ok(&["consent", "list"])
        .contains("No consent requests are pending"));

    // A changed campaign (a new notice text) asks again.
    fleet.campaign(&required_campaign(
        2,
        "Starts twice as fast. Now with a typo fixed.",
    ));
    fleet.release();
    let out = dev.ok(&["check"]);
    let player = campaign_line(&out, "player-2.1");
    assert!(
        player.starts_with("  player-2.1 revision 2: waiting for consent"),
        "{player}"
    );
    let explain = dev.ok(&["check", "--explain"]);
    assert!(
        explain.contains("do not count: its offer changed (notice, payload, consent policy or stage, method or forced set), so consent is asked again"),
        "{explain}"
    );
    // An answer bound to the old manifest is refused.
    let err = dev.fails(&["consent", "accept", "player-2.1", "--sha256", &hash]);
    assert!(err.contains("changed since it was shown"), "{err}");
    assert!(err.contains("nothing recorded"), "{err}");
    let show = dev.ok(&["consent", "show", "player-2.1"]);
    assert_ne!(offer_hash(&show), hash);
    assert!(show.contains("Now with a typo fixed."), "{show}");
    // A hash no offer of the campaign ever had is a typo, not a change.
    let typo: String = offer_hash(&show)
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let err = dev.fails(&["consent", "accept", "player-2.1", "--sha256", &typo]);
    assert!(!err.contains("changed since it was shown"), "{err}");
    assert!(
        err.contains(&format!(
            "--sha256 {typo} is not the hash of campaign player-2.1's offer"
        )),
        "{err}"
    );
    assert!(err.contains("Check the value for a typo"), "{err}");
    assert!(err.contains("nothing recorded"), "{err}");
}

#[test]
fn consent_holds_across_a_halt_and_a_resume_and_a_changed_notice_asks_again() {
    let mut fleet = Fleet::new();
    fleet.campaign(&required_campaign(1, "Faster."));
    fleet.release();
    let dev = Device::new(&fleet);
    let offer = offer_hash(&dev.ok(&["consent", "show", "player-2.1"]));
    dev.ok(&["consent", "accept", "player-2.1", "--sha256", &offer[..12]]);

    // Halted (revision 2), then resumed (revision 3): the same offer.
    fleet.campaign(
        &required_campaign(2, "Faster.").replace("state = \"active\"", "state = \"halted\""),
    );
    fleet.release();
    let out = dev.ok(&["check"]);
    assert!(
        campaign_line(&out, "player-2.1").contains("revision 2: halted"),
        "{out}"
    );
    fleet.campaign(&required_campaign(3, "Faster."));
    fleet.release();
    let out = dev.ok(&["check"]);
    let player = campaign_line(&out, "player-2.1");
    assert!(
        player.starts_with("  player-2.1 revision 3: ready to download 1 item(s)"),
        "no new consent request after the resume:\n{out}"
    );
    assert!(dev
        .ok(&["consent", "list"])
        .contains("No consent requests are pending"));
    let explain = dev.ok(&["check", "--explain"]);
    assert!(
        explain.contains(
            "consent given for revision 1 still holds: revision 3 changes only the rollout state"
        ),
        "{explain}"
    );
    let show = dev.ok(&["consent", "show", "player-2.1"]);
    assert_eq!(offer_hash(&show), offer, "the offer hash stays: {show}");
    assert!(show.contains("still holds"), "{show}");
    // The update proceeds: downloaded, verified and installed.
    let out = dev.ok(&["update"]);
    assert!(
        out.contains("player-2.1 revision 3") && !out.contains("waiting for consent"),
        "{out}"
    );
    let version = fs::read_to_string(dev.path("apps/acme.player/VERSION")).unwrap();
    assert_eq!(version.trim(), "2.1.0", "{out}");

    // A changed notice is another offer: asked again, and the old hash is refused.
    fleet.campaign(&required_campaign(4, "Faster. The kiosk restarts once."));
    fleet.release();
    let out = dev.ok(&["check"]);
    let player = campaign_line(&out, "player-2.1");
    assert!(
        player.starts_with("  player-2.1 revision 4: waiting for consent")
            || player.contains("up to date"),
        "{out}"
    );
    let show = dev.ok(&["consent", "show", "player-2.1"]);
    assert_ne!(offer_hash(&show), offer);
    assert!(show.contains("its offer changed"), "{show}");
    assert!(show.contains("not given yet"), "asked again: {show}");
    let err = dev.fails(&["consent", "accept", "player-2.1", "--sha256", &offer]);
    assert!(err.contains("changed since it was shown"), "{err}");
}

#[test]
fn decline_and_postpone_are_recorded_and_bounded() {
    let mut fleet = Fleet::new();
    fleet.campaign(&required_campaign(1, "Faster."));
    fleet.release();
    let dev = Device::new(&fleet);

    let out = dev.ok(&["consent", "postpone", "player-2.1", "--for", "4h"]);
    assert!(out.contains("Recorded: postpone"), "{out}");
    assert!(out.contains("Now: postponed until"), "{out}");
    assert!(out.contains("(1 postponement(s) left)"), "{out}");
    let status = dev.ok(&["status"]);
    assert!(
        status.contains("consent: required, before download: postponed until"),
        "{status}"
    );
    dev.ok(&["consent", "postpone", "player-2.1", "--for", "1h"]);
    let err = dev.fails(&["consent", "postpone", "player-2.1", "--for", "1h"]);
    assert!(
        err.contains("postponement(s) campaign player-2.1 allows are used up"),
        "{err}"
    );

    let out = dev.ok(&["consent", "decline", "player-2.1"]);
    assert!(out.contains("Now: declined at"), "{out}");
    let check = dev.ok(&["check"]);
    assert!(
        campaign_line(&check, "player-2.1").contains("declined at"),
        "{check}"
    );

    // Usage errors: a bad duration is a usage error (exit 2), an unknown campaign a clear one.
    let out = dev.petrel(&["consent", "postpone", "player-2.1", "--for", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a duration"));
    let err = dev.fails(&["consent", "show", "player-3"]);
    assert!(
        err.contains("no campaign \"player-3\" in the repository (campaigns: player-2.1)"),
        "{err}"
    );
}

#[test]
fn the_actual_inventory_drives_the_plan() {
    let mut fleet = Fleet::new();
    fleet.campaign(SILENT_CAMPAIGN);
    fleet.release();
    let dev = Device::new(&fleet);
    dev.install("acme.player", "2.1.0", &artifact(PLAYER));

    let out = dev.ok(&["check"]);
    assert!(
        out.contains("Plan: the device already runs exactly group kiosk-eu revision 1"),
        "{out}"
    );
    assert!(
        campaign_line(&out, "converge").contains("up to date"),
        "{out}"
    );

    // Swapped by hand: another version.
    fs::write(dev.path("apps/acme.player/VERSION"), "2.0.9\n").unwrap();
    let out = dev.ok(&["check"]);
    assert!(out.contains("update acme.player 2.0.9 -> 2.1.0"), "{out}");
    assert!(
        campaign_line(&out, "converge").contains("ready to download 1 item(s)"),
        "{out}"
    );

    // Deleted by hand: added again.
    fs::write(dev.path("apps/acme.player/VERSION"), "2.1.0\n").unwrap();
    fs::remove_dir_all(dev.path("apps/acme.fonts")).unwrap();
    let out = dev.ok(&["check"]);
    assert!(out.contains("Plan: 1 change(s)"), "{out}");
    assert!(out.contains("add acme.fonts 1.0"), "{out}");

    // Installed by hand: removed.
    dev.install("acme.fonts", "1.0", &artifact(FONTS));
    dev.install("acme.legacy", "0.9", b"old");
    let out = dev.ok(&["check"]);
    assert!(
        out.contains("remove acme.legacy 0.9 (not in the group)"),
        "{out}"
    );

    // Same version, other bytes: reinstalled.
    fs::remove_dir_all(dev.path("apps/acme.legacy")).unwrap();
    fs::write(
        dev.path("apps/acme.player/artifact.bin"),
        b"patched by hand",
    )
    .unwrap();
    let out = dev.ok(&["check"]);
    assert!(out.contains("reinstall acme.player 2.1.0"), "{out}");

    // status lists the inventory with the computed hashes.
    let status = dev.ok(&["status"]);
    let h = sha256_hex(b"patched by hand");
    assert!(
        status.contains(&format!("acme.player 2.1.0 (sha256 {}…)", &h[..12])),
        "{status}"
    );
    assert!(
        status.contains("2 application(s), read from directory"),
        "{status}"
    );

    // A broken inventory is a clear error, not an empty inventory.
    fs::remove_file(dev.path("apps/acme.fonts/VERSION")).unwrap();
    let err = dev.fails(&["check"]);
    assert!(
        err.contains("acme.fonts") && err.contains("VERSION is missing"),
        "{err}"
    );
}

#[test]
fn explain_names_every_rule_and_json_parses() {
    let mut fleet = Fleet::new();
    fleet.campaign(US_CAMPAIGN);
    fleet.campaign(&required_campaign(1, "Faster."));
    fleet.release();
    let dev = Device::new(&fleet);

    let explain = dev.ok(&["check", "--explain"]);
    for needle in [
        "What will happen to device kiosk-0042, and why",
        "device-local time",
        "Assignment: bin ",
        "puts the device in group kiosk-eu",
        "Group: kiosk-eu revision 1.",
        "update acme.player 2.0.1 -> 2.1.0",
        "* player-2.1 revision 1 \"Player 2.1\" (recommended)",
        "=> waiting for consent",
        "ok   capabilities",
        "ok   applies_to",
        "STOP consent",
        "* us-kiosks revision 1",
        "STOP applies_to",
        "region",
        "Next: show the notice of campaign player-2.1 and ask",
    ] {
        assert!(
            explain.contains(needle),
            "{needle:?} missing from:\n{explain}"
        );
    }

    let json: serde_json::Value = serde_json::from_str(&dev.ok(&["check", "--json"])).unwrap();
    assert_eq!(json["device"], DEVICE);
    let campaigns = json["decision"]["campaigns"].as_array().unwrap();
    let player = campaigns.iter().find(|c| c["id"] == "player-2.1").unwrap();
    assert_eq!(player["status"]["status"], "waiting_for_consent");
    assert_eq!(player["status"]["policy"], "required");
    assert!(player["reasons"].as_array().unwrap().len() > 5);
    let us = campaigns.iter().find(|c| c["id"] == "us-kiosks").unwrap();
    assert_eq!(us["status"]["status"], "not_applicable");
    assert_eq!(json["actions"][0]["action"], "ask_consent");
    assert!(json["metadata"]["timestamp"].as_u64().unwrap() >= 1);

    let status: serde_json::Value = serde_json::from_str(&dev.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["device"]["id"], DEVICE);
    assert_eq!(status["inventory"]["acme.player"]["version"], "2.0.1");
    assert_eq!(status["group"]["id"], "kiosk-eu");
}

#[test]
fn status_shows_the_wave_and_when_it_opens() {
    let seed = seed_bp(wave_seed(DEVICE, "player-2.1"));
    assert!(
        seed > 0,
        "the test needs a device that is not in the first 0.01 %"
    );
    let opens = instant(3);
    let mut fleet = Fleet::new();
    fleet.campaign(&format!(
        r#"
kind = "campaign"
schema_version = 1
id = "player-2.1"
revision = 1
state = "active"

[notice.en]
title = "Player 2.1"
body = "Faster."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = {{ id = "kiosk-eu", revision = 1 }}

[[rollout.waves]]
share_bp = {seed}
start = "{}"

[[rollout.waves]]
share_bp = 10000
start = "{opens}"
"#,
        instant(-1)
    ));
    fleet.release();
    let dev = Device::new(&fleet);

    let status = dev.ok(&["status"]);
    assert!(status.contains("Device:     kiosk-0042 (type kiosk, vendor acme, region eu-west, channel stable, locale en, UTC+01:00)"), "{status}");
    assert!(
        status.contains("Assignment: group kiosk-eu revision 1 (assignment bin"),
        "{status}"
    );
    assert!(status.contains("acme.player 2.0.1 (sha256 "), "{status}");
    assert!(
        status.contains(&format!(
            "state:   waiting for wave 2, which opens at {opens}"
        )),
        "{status}"
    );
    assert!(
        status.contains("wave:    wave 2 of 2 (device seed "),
        "{status}"
    );
    assert!(
        status.contains(&format!("opens at {opens} (in 2d 23h)"))
            || status.contains(&format!("opens at {opens} (in 3d 0h)")),
        "{status}"
    );
    assert!(
        status.contains("consent: not needed (policy none)"),
        "{status}"
    );
    let check = dev.ok(&["check"]);
    assert!(
        campaign_line(&check, "player-2.1").contains(&format!("next: wait for wave 2 at {opens}")),
        "{check}"
    );

    // What if it were after the wave opened?
    let later = instant(4);
    let check = dev.ok(&["check", "--at", &later]);
    assert!(
        campaign_line(&check, "player-2.1").contains("ready to download"),
        "{check}"
    );

    let json: serde_json::Value = serde_json::from_str(&dev.ok(&["status", "--json"])).unwrap();
    let wave = &json["campaigns"][0]["wave"];
    assert_eq!(wave["wave"], 2);
    assert_eq!(wave["opens_at"], opens.as_str());
    assert_eq!(wave["open"], false);
}

#[test]
fn revisions_seen_are_remembered_and_a_rollback_is_refused() {
    let mut fleet = Fleet::new();
    fleet.campaign(&required_campaign(2, "Faster."));
    fleet.release();
    let dev = Device::new(&fleet);
    dev.ok(&["check"]);
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dev.path("state/state.json")).unwrap()).unwrap();
    assert_eq!(state["seen"]["campaigns"]["player-2.1"], 2);
    assert_eq!(state["seen"]["groups"]["kiosk-eu"], 1);
    assert_eq!(
        state["last_check"]["campaigns"]["player-2.1"],
        "waiting_for_consent"
    );

    // The campaigns role re-signs an older revision under a newer metadata version.
    fleet.campaign(&required_campaign(1, "Faster."));
    fleet.release();
    let out = dev.ok(&["check"]);
    let line = campaign_line(&out, "player-2.1");
    assert!(
        line.contains(
            "rejected because revision 1 is lower than revision 2 seen before (rollback)"
        ),
        "{line}"
    );
    let err = dev.fails(&["consent", "accept", "player-2.1"]);
    assert!(err.contains("is rejected for this device"), "{err}");
}

#[test]
fn a_tampered_manifest_is_not_used_and_is_reported() {
    let mut fleet = Fleet::new();
    fleet.campaign(&required_campaign(1, "Faster."));
    fleet.release();
    let dir = fleet.tree.path().join("targets/campaigns");
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        fs::write(&p, bytes).unwrap();
    }
    let dev = Device::new(&fleet);
    let out = dev.ok(&["check"]);
    assert!(out.contains("Campaigns: none published"), "{out}");
    assert!(
        out.contains("Problems:\n  campaigns/player-2.1.json: "),
        "{out}"
    );
    assert!(out.contains("sha256 mismatch"), "{out}");
}

#[test]
fn provisioning_and_configuration_errors_are_clear() {
    let mut fleet = Fleet::new();
    fleet.release();
    let dev = Device::unprovisioned(&fleet, PROFILE);
    let err = dev.fails(&["check"]);
    assert!(
        err.contains("not provisioned") && err.contains("petrel init --root ROOT.json"),
        "{err}"
    );
    fs::write(dev.path("root.json"), fleet.sim.initial_root()).unwrap();
    let out = dev.ok(&["init", "--root", "root.json"]);
    assert!(
        out.contains("Installed the trusted root version 1"),
        "{out}"
    );
    assert!(dev.path("state/metadata/root.json").is_file());
    assert!(dev.path("state/staging").is_dir());
    assert!(dev.path("state/state.json").is_file());
    let err = dev.fails(&["init", "--root", "root.json"]);
    assert!(
        err.contains("already holds a trusted root; use --force"),
        "{err}"
    );
    assert!(dev
        .ok(&["init", "--root", "root.json", "--force"])
        .contains("Replaced"));
    fs::write(dev.path("bad-root.json"), b"{}").unwrap();
    let err = dev.fails(&["init", "--root", "bad-root.json", "--force"]);
    assert!(err.contains("petrel: "), "{err}");
    // An unusable root names the file and what to give instead; nothing here is about
    // the network, and the provisioned root stays.
    assert!(
        err.contains("bad-root.json: not a usable trusted root"),
        "{err}"
    );
    assert!(err.contains("metadata/1.root.json"), "{err}");
    assert!(!err.contains("refresh"), "{err}");
    assert_eq!(
        fs::read(dev.path("state/metadata/root.json")).unwrap(),
        fleet.sim.initial_root()
    );

    // An empty inventory directory is a device with nothing installed.
    let out = dev.ok(&["check"]);
    assert!(out.contains("Inventory (directory "), "{out}");
    assert!(out.contains("nothing installed"), "{out}");

    // The profile must not carry an inventory: it is read from the device.
    fs::write(
        dev.path("profile.toml"),
        format!("{PROFILE}\n[inventory.\"acme.player\"]\nversion = \"2.0.1\"\n"),
    )
    .unwrap();
    let err = dev.fails(&["check"]);
    assert!(err.contains("remove the [inventory.*] tables"), "{err}");
    fs::write(dev.path("profile.toml"), "id = \"x\"\n").unwrap();
    let err = dev.fails(&["status"]);
    assert!(
        err.contains("device profile") && err.contains("type"),
        "{err}"
    );

    // Configuration problems name the field.
    fs::write(dev.path("device.toml"), "profile = \"p.toml\"\n[repository]\nmetadata_url = \"ftp://x\"\ntargets_url = \"file:///t\"\n[inventory]\ndir = \"apps\"\n").unwrap();
    let err = dev.fails(&["check"]);
    assert!(err.contains("repository.metadata_url"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["--config", "/nonexistent/device.toml", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("configuration /nonexistent/device.toml: not found"),
        "{err}"
    );

    // A repository that cannot be reached is an error that names it, with the exit status
    // of a temporary problem (3: tried again later), not of a failure.
    let dev = Device::new(&fleet);
    fs::remove_dir_all(fleet.tree.path().join("metadata")).unwrap();
    let out = dev.petrel(&["check"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot refresh the repository's signed metadata"),
        "{err}"
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    let fleet = Fleet::new();
    let dev = Device::unprovisioned(&fleet, PROFILE);
    for args in [
        vec!["--help"],
        vec!["init", "--help"],
        vec!["check", "--help"],
        vec!["status", "--help"],
        vec!["update", "--help"],
        vec!["run", "--help"],
        vec!["recover", "--help"],
        vec!["consent", "--help"],
        vec!["consent", "list", "--help"],
        vec!["consent", "show", "--help"],
        vec!["consent", "accept", "--help"],
        vec!["consent", "acknowledge", "--help"],
        vec!["consent", "decline", "--help"],
        vec!["consent", "postpone", "--help"],
        vec!["consent", "token", "--help"],
    ] {
        let out = dev.ok(&args);
        assert!(
            out.contains("Example"),
            "petrel {args:?} has no example:\n{out}"
        );
        assert!(out.contains("petrel "), "{out}");
    }
}

/// The agent fetches only its own assignment bin (and only the hashed-bin role that lists
/// it), every campaign including those a partner role signs, and never a campaign a role
/// lists outside the paths delegated to it.
#[test]
fn gather_fetches_only_its_own_bin_and_every_trusted_campaign() {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "campaigns", &["campaigns/*"], true);
    sim.delegate("campaigns", "partner-acme", &["campaigns/acme-*"], true);
    sim.delegate("targets", "groups", &["groups/*"], true);
    sim.delegate("targets", "assign", &["assign/*"], true);
    let bins = sim.delegate_succinct("assign", 4, "assign-bin");
    let g = group(1);
    for app in g.apps.values() {
        sim.add_target("targets", &app.target, &artifact(&app.target));
    }
    sim.add_target("groups", &g.target_path(), &g.to_canonical_json().unwrap());
    let mine = assign_bin_for(DEVICE, 2);
    let mut devices = 0;
    for n in 0..400 {
        let id = if n == 0 {
            DEVICE.to_string()
        } else {
            format!("kiosk-{n:04}")
        };
        let bin = assign_bin_for(&id, 2);
        if n > 0 && bin == mine {
            continue;
        }
        let mut b = AssignmentBin::new(&bin, AssignmentBin::random_salt());
        b.insert(&id, Assignment::to_group("kiosk-eu")).unwrap();
        let path = b.target_path();
        sim.add_target(
            &bins.bin_for_target(&path),
            &path,
            &b.to_canonical_json().unwrap(),
        );
        devices += 1;
    }
    assert!(devices > 50);
    let mut add = |role: &str, toml: &str| {
        let c = CampaignManifest::from_toml(toml).unwrap();
        sim.add_target(role, &c.target_path(), &c.to_canonical_json().unwrap());
    };
    add("campaigns", SILENT_CAMPAIGN);
    add(
        "partner-acme",
        &required_campaign(1, "x").replace("player-2.1", "acme-player"),
    );
    // Out of the partner's paths: never trusted.
    add(
        "partner-acme",
        &required_campaign(1, "x").replace("player-2.1", "sneaky"),
    );
    sim.publish();

    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("manifests");
    fs::create_dir(&cache).unwrap();
    let mut up = sim.updater(&dir.path().join("metadata"));
    sim.transport.clear_log();
    let g = gather(&mut up, DEVICE, 2, &cache).unwrap();

    let ids: Vec<&str> = g
        .view
        .campaigns
        .iter()
        .map(|e| e.manifest.id.as_str())
        .collect();
    assert_eq!(ids, ["acme-player", "converge"]);
    assert_eq!(g.view.assignment.as_ref().unwrap().manifest.bin, mine);
    assert_eq!(g.view.group.as_ref().unwrap().manifest.id, "kiosk-eu");
    assert_eq!(g.view.artifacts.len(), 2);
    let reqs = support::requests(&sim);
    let bin_roles: Vec<&String> = reqs.iter().filter(|r| r.contains("assign-bin-")).collect();
    assert_eq!(bin_roles.len(), 1, "one hashed-bin role: {reqs:?}");
    let assign_files: Vec<&String> = reqs
        .iter()
        .filter(|r| r.starts_with("targets/assign/"))
        .collect();
    assert_eq!(assign_files.len(), 1, "only its own bin: {reqs:?}");
    assert!(
        assign_files[0].ends_with(&format!(".{mine}.json")),
        "{assign_files:?}"
    );
    assert!(
        !reqs.iter().any(|r| r.starts_with("targets/apps/")),
        "no artifact is downloaded: {reqs:?}"
    );

    // A second run re-uses the cached manifests: no target is fetched again.
    sim.transport.clear_log();
    gather(&mut up, DEVICE, 2, &cache).unwrap();
    let reqs = support::requests(&sim);
    assert!(!reqs.iter().any(|r| r.starts_with("targets/")), "{reqs:?}");
}

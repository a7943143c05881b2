//! `petrel-repo group set`, `assign`, `campaign …` and `delegate --capabilities`: manifests
//! published as targets of their own roles, checked before signing, and read back the way
//! a device reads them (TUF client over `file://`, then `Entry::from_target`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use petrel_client::decide::Entry;
use petrel_client::fetch::FileTransport;
use petrel_client::manifest::{
    assign_target_path, AssignmentBin, CampaignManifest, CampaignState, Grant, GroupManifest,
    Manifest,
};
use petrel_client::tuf::updater::{Updater, UpdaterConfig};
use serde_json::Value;

const PLAYER: &[u8] = b"player 2.1.0\n";
const PLAYER_TARGET: &str = "apps/acme/player/2.1.0/player.bin";

fn group_toml(revision: u64, description: &str) -> String {
    format!(
        r#"kind = "group"
schema_version = 1
id = "kiosk-eu"
revision = {revision}
description = "{description}"

[apps."acme.player"]
version = "2.1.0"
target = "{PLAYER_TARGET}"
post_install = "start"
"#
    )
}

/// A campaign for group kiosk-eu revision 1, with `consent` and extra top-level lines.
fn campaign_toml(id: &str, revision: u64, state: &str, policy: &str, extra: &str) -> String {
    format!(
        r#"kind = "campaign"
schema_version = 1
id = "{id}"
revision = {revision}
state = "{state}"
{extra}
[notice.en]
title = "Player 2.1"
body = "Starts twice as fast.\nThe kiosk restarts once during the night."
severity = "recommended"

[consent]
policy = "{policy}"

[applies_to]
vendors = ["acme"]

[payload]
group = {{ id = "kiosk-eu", revision = 1 }}

[[rollout.waves]]
share_bp = 100
start = 2030-03-03T00:00:00Z

[[rollout.waves]]
share_bp = 10000
start = 2030-03-10T00:00:00Z
"#
    )
}

const ACME_CAPS: &str = r#"schema_version = 1
kinds = ["campaign"]
consent_policies = ["required", "acknowledge"]
methods = ["normal"]
groups = ["kiosk-eu"]
vendors = ["acme"]
expires = 2031-01-01T00:00:00Z
"#;

/// A published repository with the player artifact, group kiosk-eu revision 1 and
/// campaign player-2.1 (role `campaigns`).
fn fleet() -> Repo {
    let r = Repo::init(&[]);
    let f = r.src("player.bin", PLAYER);
    r.ok(&["add", path(&f), "--prefix", "apps/acme/player/2.1.0"]);
    r.ok(&["publish"]);
    let g = r.src("kiosk-eu.toml", group_toml(1, "EU kiosks").as_bytes());
    r.ok(&["group", "set", path(&g)]);
    let c = r.src(
        "player-2.1.toml",
        campaign_toml("player-2.1", 1, "active", "required", "").as_bytes(),
    );
    r.ok(&["campaign", "create", path(&c)]);
    r.ok(&["publish"]);
    r
}

/// A TUF client for the repository's tree, trusting its first root.
fn device(r: &Repo, work: &Path) -> Updater {
    let md = work.join("metadata");
    let root = std::fs::read(r.tree().join("metadata/1.root.json")).expect("1.root.json");
    Updater::init_trusted_root(&md, &root).expect("trusted root");
    let base = format!("file://{}", r.tree().display());
    let config = UpdaterConfig::new(format!("{base}/metadata"))
        .with_target_base_url(format!("{base}/targets"));
    let mut u = Updater::new(config, FileTransport::new(), &md).expect("updater");
    u.refresh().expect("refresh");
    u
}

/// Finds, downloads and verifies a manifest the way the device agent does.
fn fetch<T: Manifest + petrel_client::decide::Named>(
    u: &mut Updater,
    work: &Path,
    name: &str,
) -> Entry<T> {
    let info = u
        .get_target_info(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name}: no role lists it"));
    let dest = work.join(name.replace('/', "_"));
    u.download_target(&info, &dest)
        .unwrap_or_else(|e| panic!("{name}: download: {e}"));
    let bytes = std::fs::read(&dest).expect("downloaded");
    Entry::from_target(&info, &bytes, u.trusted().expect("refreshed"))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn show_json(r: &Repo, id: &str) -> Value {
    serde_json::from_str(&r.ok(&["campaign", "show", id, "--json"])).expect("show --json")
}

/// Every file below `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.expect("walk"))
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let b = std::fs::read(e.path()).expect("read");
            b.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// Tree paths that were added or changed between two snapshots of the tree.
fn changed(before: &Snapshot, after: &Snapshot) -> BTreeSet<String> {
    let removed: Vec<_> = before.keys().filter(|p| !after.contains_key(*p)).collect();
    assert!(removed.is_empty(), "publish removed {removed:?}");
    after
        .iter()
        .filter(|(p, e)| before.get(*p) != Some(*e) && !matches!(e, Entry_::Dir))
        .map(|(p, _)| p.display().to_string())
        .collect()
}

use common::Entry as Entry_;

#[test]
fn every_command_works_and_devices_find_the_manifests_in_the_published_tree() {
    let r = fleet();
    let ids = r.src("devices.txt", b"kiosk-0042\nkiosk-0203\n");
    let out = r.ok(&["assign", "--group", "kiosk-eu", "--devices", path(&ids)]);
    assert!(out.contains("created role assign"), "{out}");
    assert!(out.contains("2 new"), "{out}");
    let out = r.ok(&["publish"]);
    assert!(out.contains("assign v1"), "{out}");
    r.verify_ok();

    // The conventional roles exist, terminating, each with its own path.
    let targets = r.json("metadata/targets.json");
    let roles = targets["signed"]["delegations"]["roles"]
        .as_array()
        .unwrap();
    for (name, paths) in [
        ("groups", "groups/*"),
        ("campaigns", "campaigns/*"),
        ("assign", "assign/*"),
    ] {
        let role = roles.iter().find(|x| x["name"] == name).expect(name);
        assert_eq!(role["paths"], serde_json::json!([paths]), "{name}");
        assert_eq!(role["terminating"], true, "{name}");
    }

    // A device finds every manifest through TUF, signed by its role.
    let work = tempfile::tempdir().unwrap();
    let mut u = device(&r, work.path());
    let g: Entry<GroupManifest> = fetch(&mut u, work.path(), "groups/kiosk-eu.json");
    assert_eq!(g.manifest.revision, 1);
    assert_eq!(g.manifest.apps["acme.player"].target, PLAYER_TARGET);
    assert_eq!(g.chain.signer(), "groups");
    let c: Entry<CampaignManifest> = fetch(&mut u, work.path(), "campaigns/player-2.1.json");
    assert_eq!(c.manifest.state, CampaignState::Active);
    assert_eq!(c.chain.signer(), "campaigns");
    assert_eq!(c.manifest.rollout.waves.len(), 2);
    for id in ["kiosk-0042", "kiosk-0203"] {
        let bin: Entry<AssignmentBin> = fetch(&mut u, work.path(), &assign_target_path(id, 2));
        assert_eq!(bin.manifest.lookup(id).expect(id).group, "kiosk-eu");
        assert_eq!(bin.chain.signer(), "assign");
    }
    let artifact = u.get_target_info(PLAYER_TARGET).unwrap().unwrap();
    assert_eq!(artifact.length(), PLAYER.len() as u64);

    // list and show.
    let list = r.ok(&["campaign", "list"]);
    let header = list.lines().next().unwrap();
    for col in [
        "ID", "REVISION", "STATE", "POLICY", "METHOD", "WAVES", "ROLE",
    ] {
        assert!(header.contains(col), "{list}");
    }
    let row = list
        .lines()
        .find(|l| l.starts_with("player-2.1"))
        .expect("row");
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        cells,
        [
            "player-2.1",
            "1",
            "active",
            "required",
            "normal",
            "2 waves to 100%",
            "campaigns",
            "published"
        ],
        "{list}"
    );
    let show = r.ok(&["campaign", "show", "player-2.1"]);
    assert!(
        show.contains(&format!("sha256:       {}", c.sha256)),
        "{show}"
    );
    assert!(
        show.contains("wave 1: up to 1% of the fleet from 2030-03-03T00:00:00Z"),
        "{show}"
    );
    assert!(show.contains("\"state\": \"active\""), "{show}");
    assert_eq!(show_json(&r, "player-2.1")["revision"], 1);

    // The published bytes are the canonical compilation of the TOML.
    let toml = campaign_toml("player-2.1", 1, "active", "required", "");
    let canonical = CampaignManifest::from_toml(&toml)
        .unwrap()
        .to_canonical_json()
        .unwrap();
    assert_eq!(c.sha256.0, sha256_hex(&canonical));
    let rel = consistent_target_path("campaigns/player-2.1.json", &canonical);
    assert_eq!(std::fs::read(r.tree().join(rel)).unwrap(), canonical);
}

#[test]
fn bad_input_names_the_file_and_the_field_and_changes_nothing() {
    let r = fleet();
    let before = r.snapshot();

    let bad = group_toml(0, "x").replace("\"2.1.0\"\ntarget", "\"2.1 0\"\ntarget");
    let f = r.src("bad-group.toml", bad.as_bytes());
    let err = r.fail(&["group", "set", path(&f)]);
    assert!(err.contains("bad-group.toml"), "{err}");
    assert!(err.contains("revision: must be at least 1"), "{err}");
    assert!(err.contains("apps.\"acme.player\".version"), "{err}");

    let missing = group_toml(2, "x").replace(PLAYER_TARGET, "apps/acme/player/9.9/player.bin");
    let f = r.src("missing-artifact.toml", missing.as_bytes());
    let err = r.fail(&["group", "set", path(&f)]);
    assert!(err.contains("missing-artifact.toml"), "{err}");
    assert!(err.contains("apps.\"acme.player\".target"), "{err}");
    assert!(err.contains("is not a target of this repository"), "{err}");

    let typo = campaign_toml("c2", 1, "active", "required", "max_postpone = 3");
    let f = r.src("typo.toml", typo.as_bytes());
    let err = r.fail(&["campaign", "create", path(&f)]);
    assert!(err.contains("typo.toml"), "{err}");
    assert!(err.contains("unknown field `max_postpone`"), "{err}");
    assert!(err.contains("line 6, column 1"), "{err}");

    let waves = campaign_toml("c3", 1, "active", "required", "")
        .replace("share_bp = 10000", "share_bp = 50");
    let f = r.src("waves.toml", waves.as_bytes());
    let err = r.fail(&["campaign", "create", path(&f)]);
    assert!(err.contains("waves.toml"), "{err}");
    assert!(err.contains("rollout.waves"), "{err}");

    let stale = campaign_toml("c4", 1, "active", "required", "")
        .replace("revision = 1 }", "revision = 2 }");
    let f = r.src("stale.toml", stale.as_bytes());
    let err = r.fail(&["campaign", "create", path(&f)]);
    assert!(err.contains("stale.toml"), "{err}");
    assert!(err.contains("payload.group.revision"), "{err}");

    let caps = r.src(
        "caps.toml",
        ACME_CAPS.replace("vendors", "vendorz").as_bytes(),
    );
    let err = r.fail(&[
        "delegate",
        "--from",
        "campaigns",
        "--to",
        "partner-acme",
        "--paths",
        "campaigns/acme-*",
        "--capabilities",
        path(&caps),
    ]);
    assert!(err.contains("caps.toml"), "{err}");
    assert!(err.contains("unknown field `vendorz`"), "{err}");
    assert!(err.contains("line 6"), "{err}");

    let ids = r.src("ids.txt", b"kiosk-1\nkiosk\x01-2\n");
    let err = r.fail(&["assign", "--group", "kiosk-eu", "--devices", path(&ids)]);
    assert!(err.contains("ids.txt") && err.contains("line 2"), "{err}");
    assert!(
        !err.contains("kiosk-1"),
        "error messages never echo device ids: {err}"
    );

    let ok_ids = r.src("ok.txt", b"kiosk-1\n");
    let err = r.fail(&["assign", "--group", "kiosk-us", "--devices", path(&ok_ids)]);
    assert!(err.contains("no group \"kiosk-us\""), "{err}");

    let err = r.fail(&["campaign", "halt", "no-such-campaign"]);
    assert!(err.contains("no campaign \"no-such-campaign\""), "{err}");

    assert_same(&before, &r.snapshot(), "refused commands");
}

#[test]
fn revisions_only_grow_and_a_changed_campaign_asks_for_consent_again() {
    let r = fleet();
    // Same bytes: nothing to do.
    let g = r.src("kiosk-eu.toml", group_toml(1, "EU kiosks").as_bytes());
    let out = r.ok(&["group", "set", path(&g)]);
    assert!(out.contains("unchanged"), "{out}");
    // Changed without a new revision: refused, naming the field and the current revision.
    let g = r.src(
        "kiosk-eu.toml",
        group_toml(1, "EU kiosks, typo fixed").as_bytes(),
    );
    let err = r.fail(&["group", "set", path(&g)]);
    assert!(err.contains("kiosk-eu.toml"), "{err}");
    assert!(
        err.contains("revision: 1 is not greater than the current revision 1 of groups/kiosk-eu.json (published)"),
        "{err}"
    );
    let g = r.src(
        "kiosk-eu.toml",
        group_toml(2, "EU kiosks, typo fixed").as_bytes(),
    );
    let out = r.ok(&["group", "set", path(&g)]);
    assert!(out.contains("revision 2 (was 1)"), "{out}");
    // A lower revision than the staged one is refused too.
    let g = r.src("kiosk-eu.toml", group_toml(1, "older").as_bytes());
    let err = r.fail(&["group", "set", path(&g)]);
    assert!(err.contains("staged, not yet published"), "{err}");
    r.ok(&["publish"]);
    assert_eq!(
        GroupManifest::from_json(
            &std::fs::read(
                r.tree().join(consistent_target_path(
                    "groups/kiosk-eu.json",
                    &GroupManifest::from_toml(&group_toml(2, "EU kiosks, typo fixed"))
                        .unwrap()
                        .to_canonical_json()
                        .unwrap()
                ))
            )
            .unwrap()
        )
        .unwrap()
        .revision,
        2
    );

    // Campaigns: update needs a growing revision; the new bytes are a new consent hash.
    let before = show_json(&r, "player-2.1");
    let c = r.src(
        "player-2.1.toml",
        campaign_toml("player-2.1", 1, "active", "required", "")
            .replace("twice as fast", "three times as fast")
            .replace("revision = 1 }", "revision = 2 }")
            .as_bytes(),
    );
    let err = r.fail(&["campaign", "update", path(&c)]);
    assert!(
        err.contains("player-2.1.toml: revision: 1 is not greater"),
        "{err}"
    );
    let c = r.src(
        "player-2.1.toml",
        campaign_toml("player-2.1", 2, "active", "required", "")
            .replace("twice as fast", "three times as fast")
            .replace("revision = 1 }", "revision = 2 }")
            .as_bytes(),
    );
    let out = r.ok(&["campaign", "update", path(&c)]);
    assert!(
        out.contains("the offer changed, so devices ask for consent again"),
        "{out}"
    );
    r.ok(&["publish"]);
    r.verify_ok();
    let after = show_json(&r, "player-2.1");
    assert_eq!(after["revision"], 2);
    assert_ne!(before, after);
    // create refuses an existing campaign; update refuses a missing one.
    let err = r.fail(&["campaign", "create", path(&c)]);
    assert!(err.contains("already exists"), "{err}");
    let other = r.src(
        "other.toml",
        campaign_toml("other", 1, "active", "required", "")
            .replace("revision = 1 }", "revision = 2 }")
            .as_bytes(),
    );
    let err = r.fail(&["campaign", "update", path(&other)]);
    assert!(err.contains("there is no campaign \"other\""), "{err}");
}

#[test]
fn halt_resume_and_cancel_are_signed_revisions_and_cancel_is_final() {
    let r = fleet();
    let tree_state = |r: &Repo| {
        let work = tempfile::tempdir().unwrap();
        let mut u = device(r, work.path());
        let c: Entry<CampaignManifest> = fetch(&mut u, work.path(), "campaigns/player-2.1.json");
        (c.manifest.revision, c.manifest.state)
    };
    let out = r.ok(&["campaign", "halt", "player-2.1"]);
    assert!(
        out.contains("revision 2, halted (was revision 1, active)"),
        "{out}"
    );
    // A halt changes the state, not the offer: consent given holds.
    assert!(
        out.contains("(unchanged): consent already given still holds"),
        "{out}"
    );
    assert!(!out.contains("ask for consent again"), "{out}");
    assert_eq!(
        tree_state(&r),
        (1, CampaignState::Active),
        "not published yet"
    );
    let out = r.ok(&["publish"]);
    assert!(out.contains("campaigns v"), "{out}");
    assert_eq!(tree_state(&r), (2, CampaignState::Halted));
    assert!(r
        .fail(&["campaign", "halt", "player-2.1"])
        .contains("already halted"));

    r.ok(&["campaign", "resume", "player-2.1"]);
    r.ok(&["publish"]);
    assert_eq!(tree_state(&r), (3, CampaignState::Active));
    assert!(r
        .fail(&["campaign", "resume", "player-2.1"])
        .contains("already active"));

    r.ok(&["campaign", "cancel", "player-2.1"]);
    r.ok(&["publish"]);
    assert_eq!(tree_state(&r), (4, CampaignState::Cancelled));
    let before = r.snapshot();
    for cmd in ["resume", "halt", "cancel"] {
        let err = r.fail(&["campaign", cmd, "player-2.1"]);
        assert!(err.contains(&format!("cannot {cmd}")), "{err}");
    }
    let err = r.fail(&["campaign", "resume", "player-2.1"]);
    assert!(err.contains("cancel is final"), "{err}");
    // Nor can an update bring it back.
    let c = r.src(
        "revive.toml",
        campaign_toml("player-2.1", 5, "active", "required", "").as_bytes(),
    );
    let err = r.fail(&["campaign", "update", path(&c)]);
    assert!(
        err.contains("revive.toml: state:") && err.contains("cancel is final"),
        "{err}"
    );
    assert_same(&before, &r.snapshot(), "refused state changes");
    let list = r.ok(&["campaign", "list"]);
    assert!(list.contains("cancelled"), "{list}");
    r.verify_ok();
}

#[test]
fn a_scoped_key_may_sign_only_within_its_capabilities() {
    let r = fleet();
    let caps = r.src("acme.toml", ACME_CAPS.as_bytes());
    let out = r.ok(&[
        "delegate",
        "--from",
        "campaigns",
        "--to",
        "partner-acme",
        "--paths",
        "campaigns/acme-*",
        "--capabilities",
        path(&caps),
    ]);
    assert!(
        out.contains("partner-acme (kinds campaign; consent required, acknowledge"),
        "{out}"
    );
    r.ok(&["publish"]);
    // Stored as petrel_capabilities in the delegated role object, signed by `campaigns`.
    let tree_campaigns = r.json("metadata/campaigns.json");
    let role = &tree_campaigns["signed"]["delegations"]["roles"][0];
    assert_eq!(role["name"], "partner-acme");
    assert_eq!(
        role["petrel_capabilities"],
        serde_json::json!({
            "consent_policies": ["required", "acknowledge"],
            "expires": "2031-01-01T00:00:00Z",
            "groups": ["kiosk-eu"],
            "kinds": ["campaign"],
            "methods": ["normal"],
            "schema_version": 1,
            "vendors": ["acme"]
        })
    );

    let before = r.snapshot();
    let refuse = |file: &str, toml: String, field: &str, reason: &str| {
        let f = r.src(file, toml.as_bytes());
        let err = r.fail(&["campaign", "create", path(&f), "--role", "partner-acme"]);
        assert!(err.contains(file), "{err}");
        assert!(
            err.contains(&format!(
                "refused by the capabilities of role \"partner-acme\" ({field})"
            )),
            "{err}"
        );
        assert!(err.contains(reason), "{err}");
    };
    refuse(
        "silent.toml",
        campaign_toml("acme-silent", 1, "active", "none", ""),
        "consent_policies",
        "the campaign uses \"none\"",
    );
    refuse(
        "forced.toml",
        campaign_toml(
            "acme-forced",
            1,
            "active",
            "required",
            "method = \"forced\"\nforced_from = { \"acme.player\" = [\"2.0\"] }",
        ),
        "methods",
        "the campaign is \"forced\"",
    );
    refuse(
        "every-vendor.toml",
        campaign_toml("acme-all", 1, "active", "required", "").replace("vendors = [\"acme\"]", ""),
        "vendors",
        "targets every one",
    );
    // Outside its paths: refused before capabilities even matter.
    let f = r.src(
        "outside.toml",
        campaign_toml("globex-x", 1, "active", "required", "").as_bytes(),
    );
    let err = r.fail(&["campaign", "create", path(&f), "--role", "partner-acme"]);
    assert!(err.contains("campaigns/globex-x.json"), "{err}");
    assert_same(&before, &r.snapshot(), "refused campaigns");

    // Within them: accepted, published, and accepted by a device checking the chain.
    let f = r.src(
        "acme-ok.toml",
        campaign_toml("acme-kiosk", 1, "active", "acknowledge", "").as_bytes(),
    );
    let out = r.ok(&["campaign", "create", path(&f), "--role", "partner-acme"]);
    assert!(out.contains("in role partner-acme"), "{out}");
    let out = r.ok(&["publish"]);
    assert!(out.starts_with("published partner-acme v"), "{out}");
    r.verify_ok();
    let work = tempfile::tempdir().unwrap();
    let mut u = device(&r, work.path());
    let c: Entry<CampaignManifest> = fetch(&mut u, work.path(), "campaigns/acme-kiosk.json");
    assert_eq!(c.chain.signer(), "partner-acme");
    assert!(matches!(c.chain.links[1].grant, Grant::Restricted(_)));
    let now = chrono::Utc::now();
    c.chain
        .check_campaign(&c.manifest, now)
        .expect("within capabilities");
    let list = r.ok(&["campaign", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("acme-kiosk") && l.contains("partner-acme")),
        "{list}"
    );

    // Re-delegating (new key) keeps the capabilities; --clear-capabilities removes them.
    r.ok(&[
        "delegate",
        "--from",
        "campaigns",
        "--to",
        "partner-acme",
        "--paths",
        "campaigns/acme-*",
    ]);
    let staged = r.json("staged/campaigns.json");
    assert_eq!(
        staged["signed"]["delegations"]["roles"][0]["petrel_capabilities"],
        role["petrel_capabilities"]
    );
    r.ok(&[
        "delegate",
        "--from",
        "campaigns",
        "--to",
        "partner-acme",
        "--paths",
        "campaigns/acme-*",
        "--clear-capabilities",
    ]);
    let staged = r.json("staged/campaigns.json");
    assert!(staged["signed"]["delegations"]["roles"][0]
        .get("petrel_capabilities")
        .is_none());

    // Narrowing them to something the published campaign exceeds warns; expired ones refuse.
    let narrow = r.src(
        "narrow.toml",
        ACME_CAPS
            .replace("\"required\", \"acknowledge\"", "\"required\"")
            .as_bytes(),
    );
    let out = r.ok(&[
        "delegate",
        "--from",
        "campaigns",
        "--to",
        "partner-acme",
        "--paths",
        "campaigns/acme-*",
        "--capabilities",
        path(&narrow),
    ]);
    assert!(
        out.contains("warning: devices will reject campaigns/acme-kiosk.json"),
        "{out}"
    );
    let expired = r.src(
        "expired.toml",
        ACME_CAPS.replace("2031-01-01", "2020-01-01").as_bytes(),
    );
    r.ok(&[
        "delegate",
        "--from",
        "campaigns",
        "--to",
        "partner-acme",
        "--paths",
        "campaigns/acme-*",
        "--capabilities",
        path(&expired),
    ]);
    let err = r.fail(&["campaign", "halt", "acme-kiosk"]);
    assert!(
        err.contains("(expires): its capabilities expired at 2020-01-01T00:00:00Z"),
        "{err}"
    );
}

#[test]
fn publishing_a_campaign_change_touches_only_its_role_snapshot_and_timestamp() {
    let r = fleet();
    let ids = r.src("devices.txt", b"kiosk-0042\nkiosk-0203\n");
    r.ok(&["assign", "--group", "kiosk-eu", "--devices", path(&ids)]);
    let caps = r.src("acme.toml", ACME_CAPS.as_bytes());
    r.ok(&[
        "delegate",
        "--from",
        "campaigns",
        "--to",
        "partner-acme",
        "--paths",
        "campaigns/acme-*",
        "--capabilities",
        path(&caps),
    ]);
    let f = r.src(
        "acme.toml",
        campaign_toml("acme-kiosk", 1, "active", "required", "").as_bytes(),
    );
    r.ok(&["campaign", "create", path(&f), "--role", "partner-acme"]);
    r.ok(&["publish"]);

    for (id, role) in [("player-2.1", "campaigns"), ("acme-kiosk", "partner-acme")] {
        let before = snapshot(&r.tree());
        r.ok(&["campaign", "halt", id]);
        let staged: Vec<String> = std::fs::read_dir(r.dir.join("staged"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(staged, [format!("{role}.json")], "only {role} is staged");
        let out = r.ok(&["publish"]);
        assert!(out.starts_with(&format!("published {role} v")), "{out}");
        assert!(
            out.contains(", snapshot v") && out.contains(", timestamp v"),
            "{out}"
        );
        let json = show_json(&r, id);
        let bytes = petrel_client::manifest::canonical_json_value(&json).unwrap();
        let name = format!("campaigns/{id}.json");
        let v = snapshot_version_of(&r, role);
        let sv = r.tree_json("metadata/timestamp.json")["signed"]["meta"]["snapshot.json"]
            ["version"]
            .as_u64()
            .unwrap();
        let target = consistent_target_path(&name, &bytes);
        let sha512 = target.replace(&sha256_hex(&bytes), &sha512_hex(&bytes));
        let want: BTreeSet<String> = [
            format!("metadata/{v}.{role}.json"),
            format!("metadata/{sv}.snapshot.json"),
            "metadata/timestamp.json".to_string(),
            target,
            sha512,
        ]
        .into_iter()
        .collect();
        let all = changed(&before, &snapshot(&r.tree()));
        // The snapshot tree: its new head and the nodes on the changed role's path (a
        // handful, named by their hash), nothing else.
        let (tree, rest): (BTreeSet<String>, BTreeSet<String>) = all
            .into_iter()
            .partition(|p| p.starts_with("metadata/snapshot-tree/"));
        assert_eq!(rest, want, "halting {id}");
        assert!(
            tree.contains(&format!("metadata/snapshot-tree/{sv}.head.json")),
            "{tree:?}"
        );
        assert!(
            (2..=10).contains(&tree.len()),
            "the head and a few nodes: {tree:?}"
        );
        r.verify_ok();
    }
}

#[test]
fn assignments_are_hashed_preserved_and_only_changed_bins_are_written() {
    let r = fleet();
    // Enough devices to share some bins and leave others alone.
    let first: Vec<String> = (0..40).map(|i| format!("kiosk-{i:04}")).collect();
    let f = r.src("first.txt", (first.join("\n") + "\n").as_bytes());
    let out = r.ok(&["assign", "--group", "kiosk-eu", "--devices", path(&f)]);
    assert!(
        out.contains("40 device(s) for group kiosk-eu: 40 new"),
        "{out}"
    );
    for id in &first {
        assert!(!out.contains(id.as_str()), "output names a device: {out}");
    }
    // Staged only: nothing in clear anywhere in the workspace.
    for id in &first {
        assert_eq!(
            files_containing(&r.dir, id),
            Vec::<PathBuf>::new(),
            "{id} in clear"
        );
    }
    r.ok(&["publish"]);
    let published_assign = r.json("metadata/assign.json");

    // A second group, and a second run: one device moves, one is new, one becomes a canary
    // enrolled in a campaign; every other entry is kept.
    let g2 = group_toml(1, "US").replace("kiosk-eu", "kiosk-us");
    let g2 = r.src("kiosk-us.toml", g2.as_bytes());
    r.ok(&["group", "set", path(&g2)]);
    let f = r.src("move.txt", b"kiosk-0007\n  kiosk-9999  \n# a comment\n\n");
    let out = r.ok(&["assign", "--group", "kiosk-us", "--devices", path(&f)]);
    assert!(out.contains("1 new, 1 moved from another group"), "{out}");
    let f = r.src("canary.txt", b"kiosk-0003\n");
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
    assert!(out.contains("1 updated"), "{out}");
    let out = r.ok(&[
        "assign",
        "--group",
        "kiosk-eu",
        "--devices",
        path(&f),
        "--canary",
    ]);
    assert!(
        out.contains("1 unchanged") && out.contains("nothing staged"),
        "{out}"
    );

    // Only the bins of those three devices changed in the assign role.
    let staged = r.json("staged/assign.json");
    let entries = |v: &Value| -> BTreeMap<String, Value> {
        v["signed"]["targets"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (old, new) = (entries(&published_assign), entries(&staged));
    let changed_bins: BTreeSet<&String> =
        new.keys().filter(|k| old.get(*k) != new.get(*k)).collect();
    let want: BTreeSet<String> = ["kiosk-0007", "kiosk-9999", "kiosk-0003"]
        .iter()
        .map(|id| assign_target_path(id, 2))
        .collect();
    assert_eq!(changed_bins, want.iter().collect());
    r.ok(&["publish"]);
    r.verify_ok();

    // A device finds every assignment, old and new, in its own bin.
    let work = tempfile::tempdir().unwrap();
    let mut u = device(&r, work.path());
    let mut all = first.clone();
    all.push("kiosk-9999".into());
    for id in &all {
        let bin: Entry<AssignmentBin> = fetch(&mut u, work.path(), &assign_target_path(id, 2));
        let a = bin
            .manifest
            .lookup(id)
            .unwrap_or_else(|| panic!("{id} lost"));
        let want = if id == "kiosk-0007" || id == "kiosk-9999" {
            "kiosk-us"
        } else {
            "kiosk-eu"
        };
        assert_eq!(a.group, want, "{id}");
        assert_eq!(a.canary, id == "kiosk-0003", "{id}");
        assert_eq!(
            a.campaigns.contains("player-2.1"),
            id == "kiosk-0003",
            "{id}"
        );
    }

    // No clear device id anywhere: tree, metadata, staged, content store, keys. (The
    // search does find them where they are: in the id files outside the workspace.)
    assert!(!files_containing(&r.tmp.path().join("src"), "kiosk-0003").is_empty());
    for id in &all {
        assert_eq!(
            files_containing(&r.dir, id),
            Vec::<PathBuf>::new(),
            "{id} in clear"
        );
    }
}

#[test]
fn group_and_assignment_roles_are_held_to_their_capabilities_too() {
    let r = fleet();
    let us = r.src(
        "kiosk-us.toml",
        group_toml(1, "US")
            .replace("kiosk-eu", "kiosk-us")
            .as_bytes(),
    );
    r.ok(&["group", "set", path(&us)]);
    let ids = r.src("ids.txt", b"kiosk-0042\n");
    r.ok(&["assign", "--group", "kiosk-eu", "--devices", path(&ids)]);
    r.ok(&["publish"]);

    // The assign role may only assign to kiosk-eu.
    let caps = r.src(
        "assign-caps.toml",
        b"schema_version = 1\nkinds = [\"assign\"]\ngroups = [\"kiosk-eu\"]\n",
    );
    r.ok(&[
        "delegate",
        "--to",
        "assign",
        "--paths",
        "assign/*",
        "--terminating",
        "--capabilities",
        path(&caps),
    ]);
    let before = r.snapshot();
    let err = r.fail(&["assign", "--group", "kiosk-us", "--devices", path(&ids)]);
    assert!(
        err.contains("refused by the capabilities of role \"assign\" (groups)"),
        "{err}"
    );
    assert!(
        err.contains("may assign devices to groups kiosk-eu only"),
        "{err}"
    );
    assert_same(&before, &r.snapshot(), "refused assignment");
    let more = r.src("more.txt", b"kiosk-0043\n");
    r.ok(&["assign", "--group", "kiosk-eu", "--devices", path(&more)]);

    // The groups role may only list acme.fonts.
    let caps = r.src(
        "group-caps.toml",
        b"schema_version = 1\nkinds = [\"group\"]\napps = [\"acme.fonts\"]\n",
    );
    let out = r.ok(&[
        "delegate",
        "--to",
        "groups",
        "--paths",
        "groups/*",
        "--terminating",
        "--capabilities",
        path(&caps),
    ]);
    assert!(
        out.contains("warning: devices will reject groups/kiosk-eu.json"),
        "{out}"
    );
    let g = r.src("kiosk-eu.toml", group_toml(2, "EU").as_bytes());
    let err = r.fail(&["group", "set", path(&g)]);
    assert!(
        err.contains("kiosk-eu.toml: group \"kiosk-eu\" may not be signed by role \"groups\""),
        "{err}"
    );
    assert!(
        err.contains("(apps): may list apps acme.fonts only; the group lists acme.player"),
        "{err}"
    );
    // `publish` refuses to sign the narrowed grant over groups it no longer allows, and
    // changes nothing.
    let before = r.snapshot();
    let err = r.fail(&["publish"]);
    assert!(
        err.contains("groups/kiosk-eu.json")
            && err.contains("(apps): may list apps acme.fonts only"),
        "{err}"
    );
    assert_same(&before, &r.snapshot(), "refused publish");
}

#[test]
fn assignment_bins_go_to_hashed_bins_when_the_assign_role_delegates_to_them() {
    let r = fleet();
    r.ok(&[
        "delegate",
        "--to",
        "assign",
        "--paths",
        "assign/*",
        "--terminating",
    ]);
    r.ok(&[
        "delegate",
        "--from",
        "assign",
        "--to",
        "assign-bin",
        "--bins",
        "4",
    ]);
    let ids: Vec<String> = (0..12).map(|i| format!("dev-{i}")).collect();
    let f = r.src("ids.txt", (ids.join("\n") + "\n").as_bytes());
    let out = r.ok(&["assign", "--group", "kiosk-eu", "--devices", path(&f)]);
    assert!(
        !out.contains("created role"),
        "the existing assign role is used: {out}"
    );
    assert!(out.contains("in role assign-bin-"), "{out}");
    r.ok(&["publish"]);
    r.verify_ok();
    let work = tempfile::tempdir().unwrap();
    let mut u = device(&r, work.path());
    for id in &ids {
        let name = assign_target_path(id, 2);
        let bin: Entry<AssignmentBin> = fetch(&mut u, work.path(), &name);
        assert_eq!(bin.manifest.lookup(id).expect("assigned").group, "kiosk-eu");
        let chain: Vec<&str> = bin.chain.links.iter().map(|l| l.role.as_str()).collect();
        assert_eq!(chain, ["assign", bin_of(&name, "assign-bin", 2).as_str()]);
    }
}

/// A campaign rolled out region by region: the waves of `campaign_toml`, replaced.
fn region_campaign_toml(id: &str, waves: &str) -> String {
    let base = campaign_toml(id, 1, "active", "required", "");
    let at = base.find("[[rollout.waves]]").expect("waves");
    format!("{}{waves}", &base[..at])
}

const REGION_WAVES: &str = r#"[[rollout.waves]]
regions = ["eu-west", "eu-central"]
share_bp = 1000
start = 2030-03-03T00:00:00Z

[[rollout.waves]]
regions = ["eu-west", "eu-central"]
start = 2030-03-06T00:00:00Z

[[rollout.waves]]
channels = ["beta"]
hardware_any = ["modem:em06", "wifi:ax200"]
start = 2030-03-08T00:00:00Z

[[rollout.waves]]
start = 2030-03-10T00:00:00Z
"#;

#[test]
fn selector_waves_compile_publish_and_show_each_waves_selectors() {
    let r = fleet();
    let toml = region_campaign_toml("by-region", REGION_WAVES);
    let f = r.src("by-region.toml", toml.as_bytes());
    r.ok(&["campaign", "create", path(&f)]);
    r.ok(&["publish"]);

    // The device reads back exactly the compiled manifest, selectors included.
    let work = tempfile::tempdir().unwrap();
    let mut u = device(&r, work.path());
    let c: Entry<CampaignManifest> = fetch(&mut u, work.path(), "campaigns/by-region.json");
    let compiled = CampaignManifest::from_toml(&toml).unwrap();
    assert_eq!(c.manifest, compiled);
    assert_eq!(
        c.sha256.0,
        sha256_hex(&compiled.to_canonical_json().unwrap())
    );
    let waves = &c.manifest.rollout.waves;
    assert_eq!(waves.len(), 4);
    assert_eq!(
        waves[0]
            .regions
            .as_ref()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        ["eu-central", "eu-west"]
    );
    assert_eq!(waves[0].share_bp, Some(1000));
    assert_eq!(waves[1].share_bp, None);
    assert!(waves[3].is_catch_all());

    let show = r.ok(&["campaign", "show", "by-region"]);
    for line in [
        "  rollout:      4 waves by regions, hardware_any, channels, share",
        "    wave 1: regions eu-central, eu-west; up to 10% of them by seed, from 2030-03-03T00:00:00Z",
        "    wave 2: regions eu-central, eu-west; every such device not in an earlier wave, from 2030-03-06T00:00:00Z",
        "    wave 3: hardware_any modem:em06, wifi:ax200; channels beta; every such device not in an earlier wave, from 2030-03-08T00:00:00Z",
        "    wave 4: every device not in an earlier wave, from 2030-03-10T00:00:00Z",
    ] {
        assert!(show.lines().any(|l| l == line), "{line}\n{show}");
    }
    let json = show_json(&r, "by-region");
    assert_eq!(
        json["rollout"]["waves"][2],
        serde_json::json!({
            "channels": ["beta"],
            "hardware_any": ["modem:em06", "wifi:ax200"],
            "start": "2030-03-08T00:00:00Z"
        })
    );
    let list = r.ok(&["campaign", "list"]);
    assert!(
        list.lines().any(|l| l.starts_with("by-region")
            && l.contains("4 waves by regions, hardware_any, channels, share")),
        "{list}"
    );

    // Share-only waves still show as they did.
    let show = r.ok(&["campaign", "show", "player-2.1"]);
    assert!(
        show.contains("    wave 2: up to 100% of the fleet from 2030-03-10T00:00:00Z"),
        "{show}"
    );

    // What cannot work is refused with the field and the wave, and nothing changes.
    let before = r.snapshot();
    for (waves, expect) in [
        (
            "[[rollout.waves]]\nstart = 2030-03-03T00:00:00Z\n\n[[rollout.waves]]\nregions = [\"eu-west\"]\nstart = 2030-03-06T00:00:00Z\n",
            "rollout.waves[1]: wave 2 is unreachable: wave 1 has no selectors and no share limit",
        ),
        (
            "[[rollout.waves]]\nregions = []\nstart = 2030-03-03T00:00:00Z\n",
            "rollout.waves[0].regions: an empty list selects no device",
        ),
        (
            "[[rollout.waves]]\nregion = [\"eu-west\"]\nstart = 2030-03-03T00:00:00Z\n",
            "unknown field `region`",
        ),
    ] {
        let f = r.src("bad-waves.toml", region_campaign_toml("bad-waves", waves).as_bytes());
        let err = r.fail(&["campaign", "create", path(&f)]);
        assert!(err.contains("bad-waves.toml"), "{err}");
        assert!(err.contains(expect), "{expect}\n{err}");
    }
    assert_same(&before, &r.snapshot(), "refused wave definitions");
}

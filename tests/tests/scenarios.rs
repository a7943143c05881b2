//! End-to-end scenarios for campaigns, groups, consent and applicability: each test builds a
//! real repository with petrel-repo's manifest commands, publishes it to a temporary
//! directory, and runs the real device agent (refresh, TUF verification, decision) against
//! it over `file://`, with the device's profile, its inventory directory and its consent
//! answers as inputs. Each asserts the decision: status, reason and next action.
//!
//! Times are relative to the real clock (consent answers are recorded at the real time);
//! the instant a device decides at is moved with `check(at)` (`petrel check --at`).

use std::collections::BTreeSet;

use chrono::Duration;
use petrel_client::agent::repo::gather;
use petrel_client::agent::update::{InstallResult, UpdateHooks};
use petrel_client::agent::{AgentError, Answer};
use petrel_client::consent::{AdminConsentToken, ConsentError, ConsentTokenBody};
use petrel_client::decide::rollout::{seed_bp, wave_seed};
use petrel_client::decide::{Action, Change, Status};
use petrel_client::manifest::{
    assign_bin_for, assign_target_path, sha256_hex, ConsentPolicy, ConsentStage,
};
use petrel_client::tuf::keys::KeySource;
use petrel_client::tuf::updater::{Updater, UpdaterConfig};
use petrel_repo::editor::KeyType;
use petrel_repo::manifests::StateChange;
use petrel_tests::scenario::{
    artifact_bytes, days, every_file, instant, now, Check, Device, RecordingTransport, Scenario,
};

const KIOSK: &str = r#"type = "kiosk"
vendor = "acme"
region = "eu-west"
channel = "stable"
utc_offset_minutes = 0
locale = "en""#;

const PLAYER: &str = "acme.player";
const FONTS: &str = "acme.fonts";
const WATCHDOG: &str = "acme.watchdog";

fn target(app: &str, version: &str) -> String {
    format!("apps/{app}/{version}/{app}.bin")
}

fn group_toml(revision: u64, apps: &[(&str, &str)]) -> String {
    let mut t =
        format!("kind = \"group\"\nschema_version = 1\nid = \"kiosk-eu\"\nrevision = {revision}\n");
    for (app, version) in apps {
        t.push_str(&format!(
            "\n[apps.{app:?}]\nversion = {version:?}\ntarget = {:?}\n",
            target(app, version)
        ));
    }
    t
}

/// A campaign: `top` holds extra top-level keys, `consent` the body of `[consent]`, `rest`
/// the other tables (payload included).
fn campaign(id: &str, revision: u64, top: &str, consent: &str, rest: &str) -> String {
    format!(
        r#"kind = "campaign"
schema_version = 1
id = "{id}"
revision = {revision}
state = "active"
{top}

[notice.en]
title = "Player 2.1"
body = "Starts twice as fast (revision {revision})."
severity = "recommended"

[consent]
{consent}

{rest}
"#
    )
}

const PAYLOAD_1: &str = "[payload]\ngroup = { id = \"kiosk-eu\", revision = 1 }\n";

/// A repository with group kiosk-eu revision 1 (player 2.1.0, fonts 1.0, their artifacts)
/// and `devices` assigned to it. Nothing published yet.
fn fleet(devices: &[&str]) -> Scenario {
    let mut s = Scenario::new();
    s.artifact(&target(PLAYER, "2.1.0"));
    s.artifact(&target(FONTS, "1.0"));
    s.group(&group_toml(1, &[(PLAYER, "2.1.0"), (FONTS, "1.0")]));
    s.assign("kiosk-eu", devices, false, &[]);
    s
}

/// A kiosk running player 2.0.1 and the group's fonts: converging means updating the
/// player only.
fn old_kiosk(s: &Scenario, id: &str) -> Device {
    let d = s.device(id, KIOSK);
    d.install(PLAYER, "2.0.1", b"player 2.0.1, installed long ago");
    d.install(FONTS, "1.0", &artifact_bytes(&target(FONTS, "1.0")));
    d
}

fn download_targets(status: &Status) -> Vec<String> {
    match status {
        Status::ReadyToDownload { items, .. } => items.iter().map(|i| i.target.clone()).collect(),
        other => panic!("expected ready_to_download, got {other}"),
    }
}

fn asks_consent_for(actions: &[Action], id: &str) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::AskConsent { campaign, .. } if campaign == id))
}

// ---------------------------------------------------------------------------------------
// Consent policies and stages
// ---------------------------------------------------------------------------------------

#[test]
fn required_consent_before_download_holds_every_download_until_the_user_accepts() {
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign(
        "player",
        1,
        "",
        "policy = \"required\"\nstage = \"download\"",
        PAYLOAD_1,
    ));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");
    let t = now();

    let c = d.check(t);
    assert!(
        matches!(
            c.status("player"),
            Status::WaitingForConsent {
                policy: ConsentPolicy::Required,
                stage: ConsentStage::Download,
                ..
            }
        ),
        "{}",
        c.explain()
    );
    assert!(!c.moves_bytes_for("player"), "{:?}", c.actions());
    assert!(asks_consent_for(&c.actions(), "player"));
    drop(c);

    let (r, c) = d.answer("player", Answer::Accept, t);
    r.expect("accept is recorded");
    assert_eq!(
        download_targets(c.status("player")),
        vec![target(PLAYER, "2.1.0")],
        "only the player differs from the group: {}",
        c.explain()
    );
    assert!(c.moves_bytes_for("player"));
}

#[test]
fn required_consent_before_install_downloads_first_and_asks_before_installing() {
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign(
        "player",
        1,
        "",
        "policy = \"required\"\nstage = \"install\"",
        PAYLOAD_1,
    ));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");
    let t = now();

    let c = d.check(t);
    assert_eq!(
        download_targets(c.status("player")),
        vec![target(PLAYER, "2.1.0")],
        "consent before install lets the download go first: {}",
        c.explain()
    );
    drop(c);

    // Downloaded and verified into staging: now the user is asked, nothing is installed.
    let player = target(PLAYER, "2.1.0");
    d.mark_staged(&[(&player, &artifact_bytes(&player))]);
    let c = d.check(t);
    assert!(
        matches!(
            c.status("player"),
            Status::WaitingForConsent {
                stage: ConsentStage::Install,
                ..
            }
        ),
        "{}",
        c.explain()
    );
    assert!(!c.moves_bytes_for("player"), "{:?}", c.actions());
    drop(c);

    let (r, c) = d.answer("player", Answer::Accept, t);
    r.expect("accept");
    assert!(
        matches!(c.status("player"), Status::ReadyToInstall { .. }),
        "{}",
        c.explain()
    );
    assert!(c
        .actions()
        .iter()
        .any(|a| matches!(a, Action::Install { campaign, .. } if campaign == "player")));
}

#[test]
fn acknowledge_consent_cannot_be_declined_and_proceeds_once_acknowledged() {
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign(
        "player",
        1,
        "",
        "policy = \"acknowledge\"\nmax_postpones = 1",
        PAYLOAD_1,
    ));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");
    let t = now();

    let c = d.check(t);
    assert!(
        matches!(
            c.status("player"),
            Status::WaitingForConsent {
                policy: ConsentPolicy::Acknowledge,
                ..
            }
        ),
        "{}",
        c.explain()
    );
    drop(c);

    let (r, c) = d.answer("player", Answer::Decline, t);
    match r {
        Err(AgentError::Consent(ConsentError::Refused(why))) => {
            assert!(why.contains("acknowledge"), "{why}")
        }
        other => panic!("declining an acknowledge campaign must be refused, got {other:?}"),
    }
    assert!(!c.moves_bytes_for("player"));
    drop(c);

    let (r, c) = d.answer("player", Answer::Acknowledge, t);
    r.expect("acknowledge");
    assert!(c.status("player").allows_download(), "{}", c.explain());
}

#[test]
fn administrator_consent_needs_a_token_signed_by_a_key_the_campaign_names() {
    let (named, _) = KeyType::Ed25519.generate().expect("key");
    let (stranger, _) = KeyType::Ed25519.generate().expect("key");
    let consent = format!(
        "policy = \"administrator\"\n\n[consent.administrator_keys.{}]\nkeytype = \"ed25519\"\nscheme = \"ed25519\"\nkeyval = {{ public = {:?} }}",
        named.key_id(),
        named.public_key().keyval.public
    );
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign("owner", 1, "", &consent, PAYLOAD_1));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");
    let t = now();

    let c = d.check(t);
    assert!(
        matches!(
            c.status("owner"),
            Status::WaitingForConsent {
                policy: ConsentPolicy::Administrator,
                ..
            }
        ),
        "{}",
        c.explain()
    );
    let sha = c.campaign("owner").manifest_sha256.clone();
    drop(c);
    let token = |key: &dyn KeySource| {
        let body = ConsentTokenBody::for_devices(
            "owner",
            sha.clone(),
            ["kiosk-1"],
            t - Duration::hours(1),
            days(t, 10),
        );
        Box::new(AdminConsentToken::sign(body, &[key]).expect("sign"))
    };

    // Signed by a key the campaign does not name: refused, nothing moves.
    let (r, c) = d.answer("owner", Answer::Token(token(&stranger)), t);
    assert!(
        matches!(r, Err(AgentError::Consent(ConsentError::Refused(_)))),
        "{r:?}"
    );
    assert!(
        matches!(c.status("owner"), Status::WaitingForConsent { .. }),
        "{}",
        c.explain()
    );
    assert!(!c.moves_bytes_for("owner"));
    drop(c);

    // Signed by the named key: agreed.
    let (r, c) = d.answer("owner", Answer::Token(token(&named)), t);
    r.expect("a token from the named key is recorded");
    assert_eq!(
        download_targets(c.status("owner")),
        vec![target(PLAYER, "2.1.0")],
        "{}",
        c.explain()
    );
}

#[test]
fn no_consent_policy_downloads_without_asking() {
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign("fix", 1, "", "policy = \"none\"", PAYLOAD_1));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");
    let c = d.check(now());
    assert_eq!(
        download_targets(c.status("fix")),
        vec![target(PLAYER, "2.1.0")],
        "{}",
        c.explain()
    );
    assert!(!asks_consent_for(&c.actions(), "fix"));
    assert!(c.moves_bytes_for("fix"));
}

// ---------------------------------------------------------------------------------------
// Decline, postpone and deadline limits; a changed campaign asks again
// ---------------------------------------------------------------------------------------

#[test]
fn postponing_is_bounded_by_count_and_deadline_and_declining_stops_the_campaign() {
    let t = now();
    let deadline = days(t, 5);
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign(
        "player",
        1,
        "",
        &format!(
            "policy = \"required\"\nmax_postpones = 2\ndeadline = \"{}\"",
            instant(deadline)
        ),
        PAYLOAD_1,
    ));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");

    // Silence until the deadline means no.
    let c = d.check(deadline + Duration::seconds(1));
    assert!(
        matches!(c.status("player"), Status::Expired { .. }),
        "{}",
        c.explain()
    );
    assert!(!c.moves_bytes_for("player"));
    drop(c);

    // A postponement past the deadline is refused.
    let (r, _c) = d.answer(
        "player",
        Answer::Postpone {
            until: deadline + Duration::hours(1),
        },
        t,
    );
    assert!(
        matches!(r, Err(AgentError::Consent(ConsentError::Refused(_)))),
        "{r:?}"
    );
    drop(_c);

    // Two postponements are allowed ...
    for left in [1, 0] {
        let until = now() + Duration::hours(1);
        let (r, c) = d.answer("player", Answer::Postpone { until }, t);
        r.expect("postpone within the bound");
        match c.status("player") {
            Status::Postponed { postpones_left, .. } => assert_eq!(*postpones_left, left),
            other => panic!("expected postponed, got {other}"),
        }
        assert!(!c.moves_bytes_for("player"));
        drop(c);
    }
    // ... and the postponement ends by itself: the user is asked again.
    let c = d.check(now() + Duration::hours(2));
    assert!(
        matches!(
            c.status("player"),
            Status::WaitingForConsent {
                postpones_left: 0,
                ..
            }
        ),
        "{}",
        c.explain()
    );
    drop(c);
    // ... a third is refused.
    let (r, c) = d.answer(
        "player",
        Answer::Postpone {
            until: now() + Duration::hours(1),
        },
        t,
    );
    match r {
        Err(AgentError::Consent(ConsentError::Refused(why))) => {
            assert!(why.contains('2'), "the refusal names the bound: {why}")
        }
        other => panic!("a third postponement must be refused, got {other:?}"),
    }
    drop(c);

    // Declining is final for this manifest: nothing is downloaded, now or later.
    let (r, c) = d.answer("player", Answer::Decline, t);
    r.expect("decline");
    assert!(
        matches!(c.status("player"), Status::Declined { .. }),
        "{}",
        c.explain()
    );
    assert!(!c.moves_bytes_for("player"));
    drop(c);
    let c = d.check(days(t, 1));
    assert!(
        matches!(c.status("player"), Status::Declined { .. }),
        "{}",
        c.explain()
    );
}

#[test]
fn a_changed_campaign_asks_for_consent_again() {
    let mut s = fleet(&["kiosk-1"]);
    let required = "policy = \"required\"";
    let first = s.create_campaign(&campaign("player", 1, "", required, PAYLOAD_1));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");
    let t = now();
    let (r, c) = d.answer("player", Answer::Accept, t);
    r.expect("accept");
    assert!(c.status("player").allows_download(), "{}", c.explain());
    drop(c);

    // Revision 2 changes only the notice text: a new manifest hash, so a new question.
    let second = s.update_campaign(&campaign("player", 2, "", required, PAYLOAD_1));
    assert_ne!(first.sha256, second.sha256);
    s.publish();
    let c = d.check(t);
    assert_eq!(c.campaign("player").manifest_sha256, second.sha256);
    assert!(
        matches!(c.status("player"), Status::WaitingForConsent { .. }),
        "consent given to revision 1 must not count for revision 2: {}",
        c.explain()
    );
    assert!(!c.moves_bytes_for("player"));
    assert!(asks_consent_for(&c.actions(), "player"));
}

// ---------------------------------------------------------------------------------------
// Normal vs forced
// ---------------------------------------------------------------------------------------

#[test]
fn forced_campaign_updates_inside_its_version_set_and_reports_an_error_outside_it() {
    let mut s = fleet(&["kiosk-in", "kiosk-out"]);
    s.create_campaign(&campaign(
        "security-fix",
        1,
        "method = \"forced\"\n\n[forced_from]\n\"acme.player\" = [\"2.0.0\", \"2.0.1\"]",
        "policy = \"none\"",
        "[payload.apps]\n\"acme.player\" = \"2.1.0\"\n",
    ));
    s.publish();
    let inside = old_kiosk(&s, "kiosk-in");
    let outside = s.device("kiosk-out", KIOSK);
    outside.install(PLAYER, "1.9.0", b"player 1.9.0");
    outside.install(FONTS, "1.0", &artifact_bytes(&target(FONTS, "1.0")));
    let t = now();

    let c = inside.check(t);
    assert_eq!(
        download_targets(c.status("security-fix")),
        vec![target(PLAYER, "2.1.0")],
        "{}",
        c.explain()
    );
    drop(c);

    let c = outside.check(t);
    match c.status("security-fix") {
        Status::Error { reason } => assert!(
            reason.contains("1.9.0") && reason.contains("2.0.1"),
            "the error names the installed version and the set: {reason}"
        ),
        other => panic!("expected an error outside the forced set, got {other}"),
    }
    assert!(
        !c.moves_bytes_for("security-fix"),
        "nothing is downloaded or installed outside the set: {:?}",
        c.actions()
    );
    assert!(
        c.actions().iter().any(|a| matches!(
            a,
            Action::Report { campaign, status, .. } if campaign == "security-fix" && *status == "error"
        )),
        "the error is reported: {:?}",
        c.actions()
    );
}

// ---------------------------------------------------------------------------------------
// A group change against a hand-modified inventory
// ---------------------------------------------------------------------------------------

#[test]
fn a_group_change_plans_adds_updates_and_deletes_against_the_actual_inventory() {
    let mut s = fleet(&["kiosk-1"]);
    s.artifact(&target(WATCHDOG, "1.4"));
    s.group(&group_toml(
        2,
        &[(PLAYER, "2.1.0"), (FONTS, "1.0"), (WATCHDOG, "1.4")],
    ));
    let payload =
        |rev: u64| format!("[payload]\ngroup = {{ id = \"kiosk-eu\", revision = {rev} }}\n");
    s.create_campaign(&campaign(
        "converge",
        1,
        "",
        "policy = \"none\"",
        &payload(2),
    ));
    s.publish();

    // The device runs exactly group revision 2.
    let d = s.device("kiosk-1", KIOSK);
    for (app, v) in [(PLAYER, "2.1.0"), (FONTS, "1.0"), (WATCHDOG, "1.4")] {
        d.install(app, v, &artifact_bytes(&target(app, v)));
    }
    let t = now();
    let c = d.check(t);
    assert_eq!(*c.status("converge"), Status::UpToDate, "{}", c.explain());
    drop(c);

    // By hand: fonts removed, the watchdog swapped to another version, an extra app.
    d.uninstall(FONTS);
    d.install(WATCHDOG, "1.3", b"watchdog 1.3 from a USB stick");
    d.install("acme.extra", "0.1", b"something installed by hand");
    // The group moves the player to 2.2.0.
    s.artifact(&target(PLAYER, "2.2.0"));
    s.group(&group_toml(
        3,
        &[(PLAYER, "2.2.0"), (FONTS, "1.0"), (WATCHDOG, "1.4")],
    ));
    s.update_campaign(&campaign(
        "converge",
        2,
        "",
        "policy = \"none\"",
        &payload(3),
    ));
    s.publish();

    let c = d.check(t);
    let plan = c
        .campaign("converge")
        .plan
        .clone()
        .unwrap_or_else(|| panic!("a plan: {}", c.explain()));
    let mut steps: Vec<(String, Change)> = plan
        .steps
        .iter()
        .map(|s| (s.app.clone(), s.change.clone()))
        .collect();
    steps.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        steps,
        vec![
            (
                "acme.extra".into(),
                Change::Remove {
                    version: "0.1".into()
                }
            ),
            (
                FONTS.into(),
                Change::Add {
                    version: "1.0".into(),
                    target: target(FONTS, "1.0")
                }
            ),
            (
                PLAYER.into(),
                Change::Update {
                    from: "2.1.0".into(),
                    to: "2.2.0".into(),
                    target: target(PLAYER, "2.2.0")
                }
            ),
            (
                WATCHDOG.into(),
                Change::Update {
                    from: "1.3".into(),
                    to: "1.4".into(),
                    target: target(WATCHDOG, "1.4")
                }
            ),
        ],
        "{}",
        c.explain()
    );
    let mut downloads = download_targets(c.status("converge"));
    downloads.sort();
    let mut want = vec![
        target(FONTS, "1.0"),
        target(PLAYER, "2.2.0"),
        target(WATCHDOG, "1.4"),
    ];
    want.sort();
    assert_eq!(downloads, want);
    let after = plan.result(&c.agent.profile().inventory);
    assert_eq!(
        after.into_iter().collect::<Vec<_>>(),
        vec![
            (FONTS.to_string(), "1.0".to_string()),
            (PLAYER.to_string(), "2.2.0".to_string()),
            (WATCHDOG.to_string(), "1.4".to_string()),
        ],
        "after the plan the device runs exactly the group"
    );
}

// ---------------------------------------------------------------------------------------
// Halt after download, before apply
// ---------------------------------------------------------------------------------------

#[test]
fn a_campaign_halted_after_download_installs_nothing_until_resumed() {
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign("player", 1, "", "policy = \"none\"", PAYLOAD_1));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");
    let player = target(PLAYER, "2.1.0");
    d.mark_staged(&[(&player, &artifact_bytes(&player))]);
    let t = now();
    let installs = |c: &Check| {
        c.actions()
            .iter()
            .any(|a| matches!(a, Action::Install { campaign, .. } if campaign == "player"))
    };

    let c = d.check(t);
    assert!(
        matches!(c.status("player"), Status::ReadyToInstall { .. }),
        "{}",
        c.explain()
    );
    assert!(installs(&c));
    drop(c);

    // Halted between download and apply: the re-check before installing sees it.
    s.change_state("player", StateChange::Halt);
    s.publish();
    let c = d.check(t);
    assert_eq!(*c.status("player"), Status::Halted, "{}", c.explain());
    assert!(!installs(&c), "{:?}", c.actions());
    assert!(
        c.ev.decision.stale_staged.is_empty(),
        "a halted campaign keeps what is staged"
    );
    drop(c);

    s.change_state("player", StateChange::Resume);
    s.publish();
    let c = d.check(t);
    assert!(installs(&c), "resumed: {}", c.explain());
    drop(c);

    s.change_state("player", StateChange::Cancel);
    s.publish();
    let c = d.check(t);
    assert_eq!(*c.status("player"), Status::Cancelled, "{}", c.explain());
    assert!(!installs(&c));
    assert_eq!(
        c.ev.decision.stale_staged,
        vec![player],
        "a cancelled campaign's staged items may be discarded"
    );
}

// ---------------------------------------------------------------------------------------
// Waves and canaries
// ---------------------------------------------------------------------------------------

#[test]
fn a_device_waits_for_its_wave_and_proceeds_once_it_opens() {
    // A device whose seed is not at the very start of the fleet, so a first wave can stop
    // just before it.
    let id = (1..=50)
        .map(|i| format!("kiosk-w{i}"))
        .find(|id| seed_bp(wave_seed(id, "player")) >= 1)
        .expect("some device seed is above 0");
    let seed = seed_bp(wave_seed(&id, "player"));
    let t = now();
    let opens = days(t, 2);
    let mut s = fleet(&[&id]);
    s.create_campaign(&campaign(
        "player",
        1,
        "",
        "policy = \"none\"",
        &format!(
            "{PAYLOAD_1}\n[[rollout.waves]]\nshare_bp = {seed}\nstart = \"{}\"\n\n[[rollout.waves]]\nshare_bp = 10000\nstart = \"{}\"\n",
            instant(t - Duration::days(1)),
            instant(opens)
        ),
    ));
    s.publish();
    let d = old_kiosk(&s, &id);

    let c = d.check(t);
    assert_eq!(
        *c.status("player"),
        Status::WaitingForWave {
            wave: 2,
            opens_at: opens
        },
        "{}",
        c.explain()
    );
    assert!(!c.moves_bytes_for("player"));
    assert!(c.ev.decision.wake_at.is_some_and(|w| w <= opens));
    drop(c);

    let c = d.check(opens - Duration::seconds(1));
    assert!(matches!(c.status("player"), Status::WaitingForWave { .. }));
    drop(c);
    let c = d.check(opens);
    assert!(
        c.status("player").allows_download(),
        "wave 2 is open: {}",
        c.explain()
    );
}

#[test]
fn canary_devices_go_first_and_the_others_wait_until_the_canaries_pass() {
    let mut s = fleet(&["kiosk-n"]);
    s.assign("kiosk-eu", &["kiosk-c"], true, &[]);
    let rollout =
        |passed: bool| format!("{PAYLOAD_1}\n[rollout]\ncanary = true\ncanary_passed = {passed}\n");
    s.create_campaign(&campaign(
        "player",
        1,
        "",
        "policy = \"none\"",
        &rollout(false),
    ));
    s.publish();
    let canary = old_kiosk(&s, "kiosk-c");
    let other = old_kiosk(&s, "kiosk-n");
    let t = now();

    let c = canary.check(t);
    assert!(c.status("player").allows_download(), "{}", c.explain());
    drop(c);
    let c = other.check(t);
    assert_eq!(
        *c.status("player"),
        Status::WaitingForCanaries,
        "{}",
        c.explain()
    );
    assert!(!c.moves_bytes_for("player"));
    drop(c);

    s.update_campaign(&campaign(
        "player",
        2,
        "",
        "policy = \"none\"",
        &rollout(true),
    ));
    s.publish();
    let c = other.check(t);
    assert!(
        c.status("player").allows_download(),
        "the canaries passed: {}",
        c.explain()
    );
}

// ---------------------------------------------------------------------------------------
// Scoped keys
// ---------------------------------------------------------------------------------------

/// The documented partner grant: required or acknowledge consent, normal method, group
/// kiosk-eu, vendor acme, until `expires`.
fn partner_caps(policies: &str, expires: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "schema_version = 1\nkinds = [\"campaign\"]\nconsent_policies = [{policies}]\nmethods = [\"normal\"]\ngroups = [\"kiosk-eu\"]\nvendors = [\"acme\"]\nexpires = \"{}\"\n",
        instant(expires)
    )
}

fn partner_fleet(caps: &str) -> Scenario {
    let mut s = fleet(&["kiosk-1"]);
    s.repo()
        .delegate("targets", "campaigns", &["campaigns/*"], true);
    s.repo()
        .delegate("campaigns", "partner-acme", &["campaigns/acme-*"], true);
    s.set_capabilities("campaigns", "partner-acme", Some(caps));
    s
}

fn acme_campaign(policy: &str) -> String {
    campaign(
        "acme-player",
        1,
        "",
        &format!("policy = \"{policy}\""),
        &format!("[applies_to]\nvendors = [\"acme\"]\n\n{PAYLOAD_1}"),
    )
}

#[test]
fn a_scoped_key_is_accepted_within_its_capabilities_and_rejected_with_the_reason_beyond_them() {
    let t = now();
    let expires = days(t, 10);
    let mut s = partner_fleet(&partner_caps("\"required\", \"acknowledge\"", expires));
    let r = s
        .try_create_campaign(&acme_campaign("required"), Some("partner-acme"))
        .expect("within its capabilities");
    assert_eq!(r.role, "partner-acme");
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");

    // Within: accepted, the user is asked.
    let c = d.check(t);
    assert!(
        matches!(c.status("acme-player"), Status::WaitingForConsent { .. }),
        "{}",
        c.explain()
    );
    drop(c);

    // Beyond (the grant has expired): rejected, with the role, the field and the reason,
    // in the decision and in `petrel check --explain`.
    let c = d.check(expires + Duration::seconds(1));
    let reason = match c.status("acme-player") {
        Status::Rejected { reason } => reason.clone(),
        other => panic!("expected rejected, got {other}"),
    };
    assert!(
        reason.contains("partner-acme") && reason.contains("expires"),
        "{reason}"
    );
    assert!(!c.moves_bytes_for("acme-player"));
    assert!(!asks_consent_for(&c.actions(), "acme-player"));
    let explain = c.explain();
    assert!(explain.contains(&reason), "{explain}");
}

#[test]
fn a_campaign_beyond_its_scoped_key_is_never_signed() {
    let t = now();
    let mut s = partner_fleet(&partner_caps("\"required\", \"acknowledge\"", days(t, 10)));

    // At authoring time: `campaign create` names the file, the role and the field.
    let e = s
        .try_create_campaign(&acme_campaign("none"), Some("partner-acme"))
        .expect_err("a silent campaign from the partner")
        .to_string();
    assert!(
        e.contains("campaign.toml") && e.contains("partner-acme") && e.contains("consent_policies"),
        "{e}"
    );

    // At publish time: a campaign staged within the grant, then the grant narrowed.
    s.try_create_campaign(&acme_campaign("required"), Some("partner-acme"))
        .expect("within");
    s.publish();
    let before = every_file(&s.tree());
    s.set_capabilities(
        "campaigns",
        "partner-acme",
        Some(&partner_caps("\"acknowledge\"", days(t, 10))),
    );
    let e = s
        .try_publish()
        .expect_err("publishing a grant its own campaign exceeds")
        .to_string();
    assert!(
        e.contains("campaigns/acme-player.json")
            && e.contains("partner-acme")
            && e.contains("consent_policies")
            && e.contains("required"),
        "{e}"
    );
    assert_eq!(
        every_file(&s.tree()),
        before,
        "the tree is left exactly as it was"
    );

    // Widened again: published.
    s.set_capabilities(
        "campaigns",
        "partner-acme",
        Some(&partner_caps("\"required\"", days(t, 10))),
    );
    s.publish();
}

// ---------------------------------------------------------------------------------------
// Assignment bins: only the device's own bin, no clear device ids
// ---------------------------------------------------------------------------------------

fn many_devices(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("fleet-device-{i:04}")).collect()
}

#[test]
fn a_device_finds_its_group_fetching_only_its_own_assignment_bin() {
    let ids = many_devices(40);
    let mut s = Scenario::new();
    s.artifact(&target(PLAYER, "2.1.0"));
    s.group(&group_toml(1, &[(PLAYER, "2.1.0")]));
    s.repo().delegate("targets", "assign", &["assign/*"], true);
    s.repo().delegate_bins("assign", "assign-bin", 16);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let report = s.assign("kiosk-eu", &refs, false, &[]);
    assert!(
        report.bins.len() > 10,
        "the fleet spans many bins: {:?}",
        report.bins
    );
    s.publish();

    let me = &ids[7];
    let d = s.device(me, KIOSK);
    let transport = RecordingTransport::new();
    let agent = d.agent();
    let repo = &d.config().repository;
    let mut updater = Updater::new(
        UpdaterConfig::new(repo.metadata_url.clone())
            .with_target_base_url(repo.targets_url.clone()),
        transport.clone(),
        agent.paths().metadata(),
    )
    .expect("updater");
    let got = gather(&mut updater, me, 2, &agent.paths().manifests()).expect("gather");

    let bin = got.view.assignment.as_ref().expect("its bin");
    assert_eq!(
        bin.manifest.lookup(me).map(|a| a.group.as_str()),
        Some("kiosk-eu")
    );
    assert_eq!(
        got.view.group.as_ref().map(|g| g.manifest.id.as_str()),
        Some("kiosk-eu")
    );
    let bins = transport.requested("/targets/assign/");
    assert_eq!(
        bins.len(),
        1,
        "exactly one assignment bin fetched: {bins:?}"
    );
    let own = assign_target_path(me, 2);
    let own_file = own.rsplit('/').next().expect("file name");
    assert!(
        bins.iter().all(|u| u.ends_with(own_file)),
        "{bins:?} is not {own}"
    );
    let bin_roles: BTreeSet<String> = transport
        .requested("/metadata/")
        .into_iter()
        .filter(|u| u.contains("assign-bin-"))
        .collect();
    assert_eq!(
        bin_roles.len(),
        1,
        "exactly one hashed-bin role's metadata fetched: {bin_roles:?}"
    );
    // Other devices' bins exist in the tree, so fetching one bin is a real restriction.
    let other = ids
        .iter()
        .find(|i| assign_bin_for(i, 2) != assign_bin_for(me, 2))
        .expect("another bin");
    assert!(every_file(&s.tree()).iter().any(|(p, _)| p
        .to_string_lossy()
        .ends_with(&format!("{}.json", assign_bin_for(other, 2)))));
}

#[test]
fn no_clear_device_id_appears_anywhere_in_a_published_tree() {
    let ids = many_devices(60);
    let mut s = fleet(&["kiosk-1"]);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    s.assign("kiosk-eu", &refs[..30], false, &[]);
    s.assign("kiosk-eu", &refs[30..40], true, &[]);
    s.create_campaign(&campaign(
        "enrolled",
        1,
        "",
        "policy = \"none\"",
        &format!("[applies_to]\nassigned_only = true\n\n{PAYLOAD_1}"),
    ));
    s.assign("kiosk-eu", &refs[40..], false, &["enrolled"]);
    s.publish();

    let files = every_file(&s.tree());
    assert!(files.len() > 10, "a real tree: {} files", files.len());
    let all: Vec<&str> = refs.iter().copied().chain(["kiosk-1"]).collect();
    for (path, bytes) in &files {
        for id in &all {
            assert!(
                !contains(bytes, id.as_bytes()),
                "{} holds the clear device id {id}",
                path.display()
            );
        }
    }
    // The same search finds the ids where they are in clear: the authored devices files.
    let authored = every_file(&s.tree().join("../../authored"));
    assert!(authored
        .iter()
        .any(|(_, b)| contains(b, refs[45].as_bytes())));
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_device_configured_with_other_bin_digits_than_the_repository_says_so_and_plans_nothing() {
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign("fix", 1, "", "policy = \"none\"", PAYLOAD_1));
    s.publish();
    let d = s.device_with_digits("kiosk-1", KIOSK, 3);
    d.install(PLAYER, "2.0.1", b"old");
    let c = d.check(now());
    assert!(c.ev.decision.group.is_err(), "{}", c.explain());
    let wrong = assign_target_path("kiosk-1", 3);
    let signed = assign_target_path("kiosk-1", 2);
    let why =
        c.ev.decision
            .unusable
            .iter()
            .find(|(p, _)| *p == wrong)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| panic!("{wrong} not reported: {:?}", c.ev.decision.unusable));
    // The probe names the bin size the repository signs, and the fix; the device does not
    // use that bin (no group, nothing planned): its configuration must be corrected.
    assert_eq!(
        why,
        format!(
            "not in the repository's signed metadata: the repository's assignment bins have 2 hex digits (it signs {signed} for this device) but this device is configured with 3; set repository.assign_bin_digits = 2 in the device configuration"
        )
    );
    assert!(
        c.explain().contains("set repository.assign_bin_digits = 2"),
        "{}",
        c.explain()
    );
    assert!(!c.moves_bytes_for("fix"), "{:?}", c.actions());

    // A device in no bin at any size gets no suggested value.
    let stray = s.device("kiosk-unassigned", KIOSK);
    let c = stray.check(now());
    assert!(c.ev.decision.group.is_err(), "{}", c.explain());
    let mine = assign_target_path("kiosk-unassigned", 2);
    let why =
        c.ev.decision
            .unusable
            .iter()
            .find(|(p, _)| *p == mine)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| panic!("{mine} not reported: {:?}", c.ev.decision.unusable));
    assert!(why.contains("nor at any other bin size"), "{why}");
    assert!(!why.contains("set repository.assign_bin_digits ="), "{why}");
}

// ---------------------------------------------------------------------------------------
// Download and apply with the real staging and apply steps (`petrel update`)
// ---------------------------------------------------------------------------------------

/// The version of `app` in the device's inventory directory, as the agent reads it.
fn installed_version(d: &Device, app: &str) -> Option<String> {
    std::fs::read_to_string(d.dir().join("apps").join(app).join("VERSION"))
        .ok()
        .map(|v| v.trim().to_string())
}

#[test]
fn an_update_downloads_verifies_and_applies_the_group_then_the_device_is_up_to_date() {
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign("player", 1, "", "policy = \"none\"", PAYLOAD_1));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");
    d.install("acme.extra", "0.1", b"installed by hand");
    let t = now();

    let mut agent = d.agent();
    let out = agent.update(Some(t)).expect("update");
    let install = out.installs.first().expect("an install was due");
    assert_eq!(
        install.result,
        InstallResult::Installed,
        "{}",
        install.reason
    );
    assert!(!out.failed());
    drop(agent);

    assert_eq!(installed_version(&d, PLAYER).as_deref(), Some("2.1.0"));
    assert_eq!(installed_version(&d, FONTS).as_deref(), Some("1.0"));
    assert_eq!(
        installed_version(&d, "acme.extra"),
        None,
        "not in the group: removed"
    );
    let c = d.check(t);
    assert_eq!(*c.status("player"), Status::UpToDate, "{}", c.explain());
    let player = &c.agent.profile().inventory[PLAYER];
    assert_eq!(
        player.sha256.as_deref(),
        Some(sha256_hex(&artifact_bytes(&target(PLAYER, "2.1.0"))).as_str()),
        "the installed bytes are the signed artifact"
    );
}

#[test]
fn a_halt_published_after_download_and_before_apply_installs_nothing() {
    let mut s = fleet(&["kiosk-1"]);
    s.create_campaign(&campaign("player", 1, "", "policy = \"none\"", PAYLOAD_1));
    s.publish();
    let d = old_kiosk(&s, "kiosk-1");
    let t = now();

    let mut agent = d.agent();
    let mut halted = false;
    let out = agent
        .update_with(
            Some(t),
            UpdateHooks {
                // Everything is downloaded and verified; the release engineers halt the
                // campaign right before the device re-checks and installs.
                before_recheck: Some(Box::new(|| {
                    s.change_state("player", StateChange::Halt);
                    s.publish();
                    halted = true;
                })),
                ..UpdateHooks::default()
            },
        )
        .expect("update");
    assert!(halted, "the re-check before installing ran");
    assert!(
        out.staged.iter().any(|st| st.error.is_none()),
        "the download into staging happened: {:?}",
        out.staged
    );
    let install = out
        .installs
        .first()
        .expect("an install was due before the halt");
    assert_eq!(install.result, InstallResult::NotInstalled);
    assert!(install.reason.contains("halted"), "{}", install.reason);
    drop(agent);

    assert_eq!(
        installed_version(&d, PLAYER).as_deref(),
        Some("2.0.1"),
        "the old set keeps running"
    );
    let c = d.check(t);
    assert_eq!(*c.status("player"), Status::Halted, "{}", c.explain());
    assert!(!c.moves_bytes_for("player"));
}

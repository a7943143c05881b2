//! The decision engine, one rule at a time.

mod decide_common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use decide_common::*;
use petrel_client::consent::{AdminConsentToken, ConsentAction, ConsentTokenBody};
use petrel_client::decide::{
    decide, Action, Change, DeltaInfo, InstallAttempt, InstalledApp, LastReport, LocalState,
    Status, Verdict, MAX_INSTALL_ATTEMPTS,
};
use petrel_client::manifest::{
    CampaignState, Capabilities, CapabilityChain, ConsentPolicy, ConsentStage, DailyWindow,
    LocalTime, Manifest, ManifestHash, Method, PostInstall, Selectors, UtcTime, Wave,
};
use petrel_client::tuf::keys::{KeySource, PrivateKey};

fn status_of(
    view: &petrel_client::decide::RepositoryView,
    state: &LocalState,
    at: chrono::DateTime<chrono::Utc>,
) -> Status {
    let d = decide(view, &profile(), state, at);
    d.campaigns[0].status.clone()
}

fn status(c: petrel_client::manifest::CampaignManifest) -> Status {
    status_of(&view(vec![c]), &LocalState::default(), now())
}

fn window(a: &str, b: &str) -> DailyWindow {
    DailyWindow {
        start: LocalTime::parse(a).unwrap(),
        end: LocalTime::parse(b).unwrap(),
    }
}

fn reason(s: &Status) -> String {
    s.to_string()
}

// ---- the happy path -------------------------------------------------------------------

#[test]
fn an_applicable_campaign_is_ready_to_download_the_plan() {
    let v = view(vec![campaign()]);
    let d = decide(&v, &profile(), &LocalState::default(), now());
    let c = &d.campaigns[0];
    let Status::ReadyToDownload { items, bytes } = &c.status else {
        panic!("{}", d.explain())
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].target, "apps/acme/player/2.1.0/player.bin");
    assert_eq!(*bytes, artifact("apps/acme/player/2.1.0/player.bin").length);
    let plan = c.plan.as_ref().unwrap();
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].post_install, PostInstall::Start);
    assert!(matches!(d.next_action(), Action::Download { .. }));
}

#[test]
fn once_staged_it_is_ready_to_install() {
    let v = view(vec![campaign()]);
    let mut st = LocalState::default();
    stage_all(&v, &mut st);
    let d = decide(&v, &profile(), &st, now());
    assert_eq!(
        d.campaigns[0].status,
        Status::ReadyToInstall {
            window_closes_at: None
        }
    );
    let Action::Install {
        plan,
        manifest_sha256,
        ..
    } = d.next_action()
    else {
        panic!()
    };
    assert_eq!(manifest_sha256, v.campaigns[0].sha256);
    assert_eq!(plan.result(&profile().inventory), group().versions());
}

#[test]
fn a_staged_copy_with_other_bytes_is_downloaded_again() {
    let v = view(vec![campaign()]);
    let mut st = LocalState::default();
    stage_all(&v, &mut st);
    st.staged
        .get_mut("apps/acme/player/2.1.0/player.bin")
        .unwrap()
        .sha256 = "0".repeat(64);
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToDownload { .. }
    ));
}

#[test]
fn decide_is_deterministic() {
    let v = view(vec![campaign()]);
    let a = decide(&v, &profile(), &LocalState::default(), now());
    let b = decide(&v, &profile(), &LocalState::default(), now());
    assert_eq!(a, b);
    assert_eq!(a.explain(), b.explain());
}

// ---- 1. capabilities ------------------------------------------------------------------

#[test]
fn a_campaign_beyond_its_signers_capabilities_is_rejected_with_the_reason() {
    let mut caps = Capabilities::unrestricted();
    caps.consent_policies = Some(BTreeSet::from([ConsentPolicy::Required]));
    let mut v = view(vec![campaign()]);
    v.campaigns[0].chain = CapabilityChain::single("partner-acme", Some(caps));
    let d = decide(&v, &profile(), &LocalState::default(), now());
    let Status::Rejected { reason } = &d.campaigns[0].status else {
        panic!("{}", d.explain())
    };
    assert!(
        reason.contains("partner-acme") && reason.contains("\"none\""),
        "{reason}"
    );
    assert!(d.campaigns[0].report_due);
    assert!(d.explain().contains("STOP capabilities"), "{}", d.explain());
}

// ---- 2. rollback ----------------------------------------------------------------------

#[test]
fn a_lower_campaign_revision_than_seen_is_a_rollback() {
    let v = view(vec![campaign()]);
    let mut st = LocalState::default();
    st.seen.campaigns.insert("player-2.1".into(), 4);
    let Status::Rejected { reason } = status_of(&v, &st, now()) else {
        panic!()
    };
    assert!(reason.contains("rollback"), "{reason}");
    // An equal revision is fine.
    st.seen.campaigns.insert("player-2.1".into(), 3);
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToDownload { .. }
    ));
}

#[test]
fn a_lower_group_revision_than_seen_is_refused() {
    let v = view(vec![campaign()]);
    let mut st = LocalState::default();
    st.seen.groups.insert("kiosk-eu".into(), 9);
    let d = decide(&v, &profile(), &st, now());
    assert!(d.group.as_ref().unwrap_err().contains("rollback"));
    assert!(matches!(d.campaigns[0].status, Status::Error { .. }));
    assert!(d.plan.is_none());
}

#[test]
fn accepted_revisions_are_observed_for_next_time() {
    let v = view(vec![campaign()]);
    let d = decide(&v, &profile(), &LocalState::default(), now());
    assert_eq!(d.observed.campaigns["player-2.1"], 3);
    assert_eq!(d.observed.groups["kiosk-eu"], 8);
    assert_eq!(
        d.observed.assign_bins.values().copied().collect::<Vec<_>>(),
        vec![5]
    );
}

// ---- 3. applicability -----------------------------------------------------------------

fn with_selectors(f: impl FnOnce(&mut Selectors)) -> Status {
    let mut c = campaign();
    f(&mut c.applies_to);
    status(c)
}

#[test]
fn every_selector_must_match() {
    let na = |s: Status| matches!(s, Status::NotApplicable { .. });
    assert!(na(with_selectors(
        |s| s.device_types = BTreeSet::from(["printer".into()])
    )));
    assert!(na(with_selectors(
        |s| s.device_classes = BTreeSet::from(["outdoor".into()])
    )));
    assert!(na(with_selectors(
        |s| s.vendors = BTreeSet::from(["other".into()])
    )));
    assert!(na(with_selectors(
        |s| s.regions = BTreeSet::from(["us-east".into()])
    )));
    assert!(na(with_selectors(
        |s| s.channels = BTreeSet::from(["beta".into()])
    )));
    assert!(na(with_selectors(
        |s| s.licences = BTreeSet::from(["pro".into()])
    )));
    let mut c = apps_campaign(&[("acme.player", "2.1.0")], &[]);
    c.applies_to.groups = BTreeSet::from(["kiosk-us".into()]);
    assert!(na(status(c)));
    assert!(na(with_selectors(
        |s| s.hardware_all = BTreeSet::from(["display:1080p".into(), "gpu:t4".into()])
    )));
    assert!(na(with_selectors(
        |s| s.hardware_any = BTreeSet::from(["gpu:t4".into(), "gpu:a2".into()])
    )));
    assert!(na(with_selectors(|s| {
        s.installed
            .insert("acme.player".into(), BTreeSet::from(["1.0".into()]));
    })));
    assert!(na(with_selectors(|s| {
        s.installed.insert("acme.other".into(), BTreeSet::new());
    })));
    assert!(na(with_selectors(|s| {
        s.not_installed.insert("acme.fonts".into());
    })));
    assert!(na(with_selectors(|s| s.assigned_only = true)));
}

#[test]
fn matching_selectors_let_the_campaign_through() {
    let s = with_selectors(|s| {
        s.vendors = BTreeSet::from(["acme".into(), "other".into()]);
        s.regions = BTreeSet::from(["eu-west".into()]);
        s.channels = BTreeSet::from(["stable".into()]);
        s.groups = BTreeSet::from(["kiosk-eu".into()]);
        s.hardware_all = BTreeSet::from(["display:1080p".into()]);
        s.hardware_any = BTreeSet::from(["gpu:t4".into(), "display:1080p".into()]);
        s.installed.insert(
            "acme.player".into(),
            BTreeSet::from(["2.0.0".into(), "2.0.1".into()]),
        );
        s.installed.insert("acme.fonts".into(), BTreeSet::new());
        s.not_installed.insert("acme.legacy".into());
    });
    assert!(matches!(s, Status::ReadyToDownload { .. }), "{s}");
}

#[test]
fn a_selector_on_a_field_the_device_lacks_does_not_match() {
    let s = with_selectors(|s| s.device_classes = BTreeSet::from(["indoor".into()]));
    assert!(reason(&s).contains("has no class"), "{s}");
}

#[test]
fn explicit_devices_come_from_the_assignment_bin() {
    let mut c = campaign();
    c.applies_to.assigned_only = true;
    let mut a = assignment();
    a.campaigns.insert("player-2.1".into());
    let v = view_for(DEVICE, vec![c], a);
    assert!(matches!(
        status_of(&v, &LocalState::default(), now()),
        Status::ReadyToDownload { .. }
    ));
}

#[test]
fn a_campaign_for_another_group_does_not_apply() {
    let mut c = campaign();
    c.payload.group.as_mut().unwrap().id = "kiosk-us".into();
    let Status::NotApplicable { reason } = status(c) else {
        panic!()
    };
    assert!(
        reason.contains("kiosk-us") && reason.contains("kiosk-eu"),
        "{reason}"
    );
}

#[test]
fn a_device_without_assignment_gets_nothing() {
    let mut v = view(vec![campaign()]);
    v.assignment = None;
    let d = decide(&v, &profile(), &LocalState::default(), now());
    assert!(matches!(
        d.campaigns[0].status,
        Status::NotApplicable { .. }
    ));
    assert!(d.plan.is_none());
    assert!(d.explain().contains("no assignment bin"), "{}", d.explain());

    // A bin that does not list the device.
    let other = device_with_seed("x", 0, 10_000);
    let v = view_for(&other, vec![campaign()], assignment());
    let d = decide(&v, &profile(), &LocalState::default(), now());
    assert!(
        matches!(d.campaigns[0].status, Status::NotApplicable { .. }),
        "{}",
        d.explain()
    );
}

#[test]
fn an_assignment_bin_beyond_its_capabilities_is_refused() {
    let mut caps = Capabilities::unrestricted();
    caps.groups = Some(BTreeSet::from(["kiosk-us".to_string()]));
    let mut v = view(vec![campaign()]);
    v.assignment.as_mut().unwrap().chain = CapabilityChain::single("assign-dealer", Some(caps));
    let d = decide(&v, &profile(), &LocalState::default(), now());
    assert!(matches!(
        d.assignment,
        petrel_client::decide::AssignmentOutcome::Refused { .. }
    ));
    assert!(matches!(
        d.campaigns[0].status,
        Status::NotApplicable { .. }
    ));
}

#[test]
fn a_group_manifest_beyond_its_capabilities_is_refused() {
    let mut caps = Capabilities::unrestricted();
    caps.apps = Some(BTreeSet::from(["acme.player".to_string()]));
    let mut v = view(vec![campaign()]);
    v.group.as_mut().unwrap().chain = CapabilityChain::single("groups-partner", Some(caps));
    let d = decide(&v, &profile(), &LocalState::default(), now());
    let Status::Error { reason } = &d.campaigns[0].status else {
        panic!("{}", d.explain())
    };
    assert!(reason.contains("acme.fonts"), "{reason}");
}

// ---- 4. state -------------------------------------------------------------------------

#[test]
fn halted_and_cancelled_campaigns_do_nothing() {
    for (state, want) in [
        (CampaignState::Halted, Status::Halted),
        (CampaignState::Cancelled, Status::Cancelled),
    ] {
        let mut c = campaign();
        c.state = state;
        let v = view(vec![c]);
        let mut st = LocalState::default();
        stage_all(&v, &mut st);
        let d = decide(&v, &profile(), &st, now());
        assert_eq!(d.campaigns[0].status, want);
        assert!(!d
            .actions()
            .iter()
            .any(|a| matches!(a, Action::Install { .. } | Action::Download { .. })));
        if state == CampaignState::Cancelled {
            // Nothing needs the staged items any more.
            assert_eq!(d.stale_staged.len(), 2);
        } else {
            // A halt keeps what the plan needs for when the campaign resumes (fonts 1.0 is
            // installed already, so its staged copy is not needed).
            assert_eq!(d.stale_staged, ["apps/acme/fonts/1.0/fonts.tar"]);
        }
    }
}

// ---- 5. schedule ----------------------------------------------------------------------

#[test]
fn not_before_and_not_after_bound_the_campaign() {
    let v = view(vec![campaign()]);
    let st = LocalState::default();
    assert_eq!(
        status_of(&v, &st, t("2030-02-28T23:59:59Z")),
        Status::NotStarted {
            starts_at: t("2030-03-01T00:00:00Z")
        }
    );
    assert!(matches!(
        status_of(&v, &st, t("2030-03-01T00:00:00Z")),
        Status::ReadyToDownload { .. }
    ));
    assert!(matches!(
        status_of(&v, &st, t("2030-04-01T00:00:00Z")),
        Status::Expired { .. }
    ));
}

// ---- 6. group and payload -------------------------------------------------------------

#[test]
fn a_missing_group_manifest_is_an_error() {
    let mut v = view(vec![campaign()]);
    v.group = None;
    let Status::Error { reason } = status_of(&v, &LocalState::default(), now()) else {
        panic!()
    };
    assert!(reason.contains("kiosk-eu"), "{reason}");
}

#[test]
fn a_superseded_group_revision_does_not_apply_and_a_future_one_is_an_error() {
    let mut c = campaign();
    c.payload.group.as_mut().unwrap().revision = 7;
    assert!(reason(&status(c)).contains("superseded"));
    let mut c = campaign();
    c.payload.group.as_mut().unwrap().revision = 9;
    assert!(matches!(status(c), Status::Error { .. }));
}

// ---- 7. the plan ----------------------------------------------------------------------

#[test]
fn a_device_already_in_its_group_is_up_to_date() {
    let v = view(vec![campaign()]);
    let mut p = profile();
    p.inventory
        .insert("acme.player".into(), InstalledApp::version("2.1.0"));
    let d = decide(&v, &p, &LocalState::default(), now());
    assert_eq!(d.campaigns[0].status, Status::UpToDate);
    assert!(d.plan.as_ref().unwrap().is_empty());
    assert!(matches!(d.next_action(), Action::Wait { .. }));
}

#[test]
fn the_plan_adds_updates_and_removes_against_the_actual_inventory() {
    let v = view(vec![campaign()]);
    let mut p = profile();
    p.inventory.remove("acme.fonts");
    p.inventory
        .insert("acme.legacy".into(), InstalledApp::version("0.9"));
    let d = decide(&v, &p, &LocalState::default(), now());
    let plan = d.plan.as_ref().unwrap();
    let kinds: BTreeMap<&str, &Change> = plan
        .steps
        .iter()
        .map(|s| (s.app.as_str(), &s.change))
        .collect();
    assert!(matches!(kinds["acme.fonts"], Change::Add { .. }));
    assert!(matches!(kinds["acme.player"], Change::Update { .. }));
    assert!(matches!(kinds["acme.legacy"], Change::Remove { .. }));
    assert_eq!(plan.result(&p.inventory), group().versions());
}

#[test]
fn installed_bytes_that_differ_from_the_signed_artifact_are_reinstalled() {
    let v = view(vec![campaign()]);
    let mut p = profile();
    p.inventory.insert(
        "acme.player".into(),
        InstalledApp {
            version: "2.1.0".into(),
            sha256: Some("ab".repeat(32)),
        },
    );
    let d = decide(&v, &p, &LocalState::default(), now());
    assert!(matches!(
        d.plan.as_ref().unwrap().steps[0].change,
        Change::Reinstall { .. }
    ));
    // With the right bytes, nothing to do.
    p.inventory.get_mut("acme.player").unwrap().sha256 =
        Some(artifact("apps/acme/player/2.1.0/player.bin").sha256);
    assert_eq!(
        decide(&v, &p, &LocalState::default(), now()).campaigns[0].status,
        Status::UpToDate
    );
}

fn apps_campaign(
    apps: &[(&str, &str)],
    remove: &[&str],
) -> petrel_client::manifest::CampaignManifest {
    let mut c = campaign();
    c.payload.group = None;
    c.payload.apps = apps
        .iter()
        .map(|(a, v)| (a.to_string(), v.to_string()))
        .collect();
    c.payload.remove = remove.iter().map(|s| s.to_string()).collect();
    c
}

#[test]
fn an_application_payload_must_authorise_every_change_and_match_the_group() {
    // Exactly the needed change.
    assert!(matches!(
        status(apps_campaign(&[("acme.player", "2.1.0")], &[])),
        Status::ReadyToDownload { .. }
    ));
    // A version the group does not list would leave the tested combination.
    let s = status(apps_campaign(&[("acme.player", "2.2.0")], &[]));
    assert!(reason(&s).contains("tested combination"), "{s}");
    // An application the group does not list.
    let s = status(apps_campaign(
        &[("acme.player", "2.1.0"), ("acme.extra", "1")],
        &[],
    ));
    assert!(matches!(s, Status::NotApplicable { .. }), "{s}");
    // A needed removal not delivered.
    let v = view(vec![apps_campaign(&[("acme.player", "2.1.0")], &[])]);
    let mut p = profile();
    p.inventory
        .insert("acme.legacy".into(), InstalledApp::version("0.9"));
    let d = decide(&v, &p, &LocalState::default(), now());
    assert!(
        reason(&d.campaigns[0].status).contains("remove acme.legacy"),
        "{}",
        d.explain()
    );
    // ... and delivered.
    let v = view(vec![apps_campaign(
        &[("acme.player", "2.1.0")],
        &["acme.legacy"],
    )]);
    assert!(matches!(
        decide(&v, &p, &LocalState::default(), now()).campaigns[0].status,
        Status::ReadyToDownload { .. }
    ));
    // Removing something the group lists.
    assert!(matches!(
        status(apps_campaign(&[("acme.player", "2.1.0")], &["acme.fonts"])),
        Status::NotApplicable { .. }
    ));
}

#[test]
fn the_campaign_post_install_state_overrides_the_groups() {
    let mut c = campaign();
    c.post_install = Some(PostInstall::Stop);
    let v = view(vec![c]);
    let d = decide(&v, &profile(), &LocalState::default(), now());
    assert_eq!(
        d.campaigns[0].plan.as_ref().unwrap().steps[0].post_install,
        PostInstall::Stop
    );
    // The device-level plan keeps the group's own.
    assert_eq!(
        d.plan.as_ref().unwrap().steps[0].post_install,
        PostInstall::Start
    );
}

// ---- 8. forced ------------------------------------------------------------------------

fn forced(set: &[&str]) -> petrel_client::manifest::CampaignManifest {
    let mut c = campaign();
    c.method = Method::Forced;
    c.forced_from = BTreeMap::from([(
        "acme.player".to_string(),
        set.iter().map(|s| s.to_string()).collect(),
    )]);
    c
}

#[test]
fn a_forced_campaign_updates_only_versions_in_its_set() {
    assert!(matches!(
        status(forced(&["2.0.0", "2.0.1"])),
        Status::ReadyToDownload { .. }
    ));
    let Status::Error { reason } = status(forced(&["2.0.0", "1.9"])) else {
        panic!()
    };
    assert!(
        reason.contains("2.0.1") && reason.contains("[1.9, 2.0.0]"),
        "{reason}"
    );
    // Set membership, no ordering: "2.0.1" is not "at least 2.0.0".
    assert!(matches!(status(forced(&["2.0.0"])), Status::Error { .. }));
}

#[test]
fn a_forced_campaign_errors_on_a_device_lacking_the_application() {
    let v = view(vec![forced(&["2.0.1"])]);
    let mut p = profile();
    p.inventory.remove("acme.player");
    let d = decide(&v, &p, &LocalState::default(), now());
    assert!(reason(&d.campaigns[0].status).contains("not installed"));
    assert!(d.campaigns[0].report_due);
    assert!(matches!(d.next_action(), Action::Report { .. }));
}

#[test]
fn an_error_already_reported_for_this_manifest_is_not_reported_again() {
    let c = forced(&["1.0"]);
    let v = view(vec![c]);
    let mut st = LocalState::default();
    st.reports.insert(
        "player-2.1".into(),
        LastReport {
            manifest_sha256: v.campaigns[0].sha256.clone(),
            status: "error".into(),
            at: now(),
        },
    );
    let d = decide(&v, &profile(), &st, now());
    assert!(!d.campaigns[0].report_due);
}

// ---- 9. attempts ----------------------------------------------------------------------

#[test]
fn repeated_install_failures_stop_until_the_manifest_changes() {
    let v = view(vec![campaign()]);
    let mut st = LocalState::default();
    stage_all(&v, &mut st);
    let attempt = |n| InstallAttempt {
        manifest_sha256: v.campaigns[0].sha256.clone(),
        failures: n,
        last_error: "disk full".into(),
        at: now(),
        after_commit: false,
        attempt_sha256: None,
    };
    st.attempts
        .insert("player-2.1".into(), attempt(MAX_INSTALL_ATTEMPTS - 1));
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToInstall { .. }
    ));
    st.attempts
        .insert("player-2.1".into(), attempt(MAX_INSTALL_ATTEMPTS));
    assert!(reason(&status_of(&v, &st, now())).contains("disk full"));
    st.attempts.get_mut("player-2.1").unwrap().manifest_sha256 = ManifestHash("0".repeat(64));
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToInstall { .. }
    ));
}

#[test]
fn a_manifest_that_failed_after_its_commit_point_is_not_tried_again() {
    let v = view(vec![campaign()]);
    let mut st = LocalState::default();
    stage_all(&v, &mut st);
    st.attempts.insert(
        "player-2.1".into(),
        InstallAttempt {
            manifest_sha256: v.campaigns[0].sha256.clone(),
            failures: 1,
            last_error: "the health check failed".into(),
            at: now(),
            after_commit: true,
            attempt_sha256: None,
        },
    );
    match status_of(&v, &st, now()) {
        Status::Error { reason } => assert!(
            reason.contains("installed and failed") && reason.contains("health check"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    // A new manifest (a new revision) is tried again.
    st.attempts.get_mut("player-2.1").unwrap().manifest_sha256 =
        petrel_client::manifest::ManifestHash::of(b"an older revision");
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToInstall { .. }
    ));
}

// ---- 10. canaries and waves -----------------------------------------------------------

#[test]
fn canaries_go_first_and_the_rest_wait_until_they_pass() {
    let mut c = campaign();
    c.rollout.canary = true;
    let mut canary = assignment();
    canary.canary = true;
    let v = view_for(DEVICE, vec![c.clone()], canary);
    assert!(matches!(
        status_of(&v, &LocalState::default(), now()),
        Status::ReadyToDownload { .. }
    ));
    assert_eq!(status(c.clone()), Status::WaitingForCanaries);
    c.rollout.canary_passed = true;
    c.revision += 1;
    assert!(matches!(status(c), Status::ReadyToDownload { .. }));
}

fn waved() -> petrel_client::manifest::CampaignManifest {
    let mut c = campaign();
    c.rollout.waves = vec![
        Wave::share(100, UtcTime::parse("2030-03-02T00:00:00Z").unwrap()),
        Wave::share(5000, UtcTime::parse("2030-03-20T00:00:00Z").unwrap()),
    ];
    c
}

#[test]
fn a_device_waits_for_its_wave() {
    let first = device_with_seed("player-2.1", 0, 100);
    let second = device_with_seed("player-2.1", 100, 5000);
    let beyond = device_with_seed("player-2.1", 5000, 10_000);
    let st = LocalState::default();
    let at = |dev: &str, when| {
        let v = view_for(dev, vec![waved()], assignment());
        decide(&v, &profile_for(dev), &st, when).campaigns[0]
            .status
            .clone()
    };
    assert!(matches!(at(&first, now()), Status::ReadyToDownload { .. }));
    assert_eq!(
        at(&second, now()),
        Status::WaitingForWave {
            wave: 2,
            opens_at: t("2030-03-20T00:00:00Z")
        }
    );
    assert!(matches!(
        at(&second, t("2030-03-20T00:00:00Z")),
        Status::ReadyToDownload { .. }
    ));
    assert!(matches!(
        at(&beyond, t("2030-03-25T00:00:00Z")),
        Status::NotInRollout {
            covered_bp: 5000,
            ..
        }
    ));
    // The first wave cannot open before the campaign starts.
    assert_eq!(
        at(&first, t("2030-02-01T00:00:00Z")),
        Status::NotStarted {
            starts_at: t("2030-03-01T00:00:00Z")
        }
    );
}

#[test]
fn wake_at_is_the_next_change() {
    let second = device_with_seed("player-2.1", 100, 5000);
    let v = view_for(&second, vec![waved()], assignment());
    let d = decide(&v, &profile_for(&second), &LocalState::default(), now());
    assert_eq!(d.wake_at, Some(t("2030-03-20T00:00:00Z")));
    assert_eq!(
        d.next_action(),
        Action::Wait {
            until: Some(t("2030-03-20T00:00:00Z"))
        }
    );
}

// ---- 11/13. consent -------------------------------------------------------------------

fn consent(
    policy: ConsentPolicy,
    stage: ConsentStage,
) -> petrel_client::manifest::CampaignManifest {
    let mut c = campaign();
    c.consent.policy = policy;
    c.consent.stage = stage;
    if policy.asks_user() {
        c.consent.max_postpones = 2;
    }
    c
}

#[test]
fn required_consent_before_download_waits_then_proceeds_once_accepted() {
    let c = consent(ConsentPolicy::Required, ConsentStage::Download);
    let v = view(vec![c.clone()]);
    let mut st = LocalState::default();
    let d = decide(&v, &profile(), &st, now());
    assert!(matches!(
        d.campaigns[0].status,
        Status::WaitingForConsent {
            postpones_left: 2,
            ..
        }
    ));
    assert!(matches!(
        d.next_action(),
        Action::AskConsent {
            policy: ConsentPolicy::Required,
            ..
        }
    ));
    st.consent
        .push(consent_event(&c, ConsentAction::Accept, now()));
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToDownload { .. }
    ));
}

#[test]
fn a_decline_is_final_for_the_offer_and_a_changed_offer_asks_again() {
    let c = consent(ConsentPolicy::Required, ConsentStage::Download);
    let mut st = LocalState::default();
    st.consent.push(consent_event(
        &c,
        ConsentAction::Decline,
        now() - Duration::hours(1),
    ));
    let v = view(vec![c.clone()]);
    assert_eq!(
        status_of(&v, &st, now()),
        Status::Declined {
            at: now() - Duration::hours(1)
        }
    );
    // Declining also stops a campaign that asks before install.
    let mut c2 = c.clone();
    c2.consent.stage = ConsentStage::Install;
    let mut st2 = LocalState::default();
    st2.consent
        .push(consent_event(&c2, ConsentAction::Decline, now()));
    assert!(matches!(
        status_of(&view(vec![c2]), &st2, now()),
        Status::Declined { .. }
    ));
    // Revision 4 changes only the rollout state: the same offer, still declined.
    let mut resumed = c.clone();
    resumed.revision = 4;
    assert!(matches!(
        status_of(&view(vec![resumed]), &st, now()),
        Status::Declined { .. }
    ));
    // Revision 5 changes the notice: another offer, ask again.
    let mut changed = c;
    changed.revision = 5;
    changed.notice.get_mut("en").unwrap().body = "Faster start-up, fewer crashes.".into();
    let d = decide(&view(vec![changed]), &profile(), &st, now());
    assert!(matches!(
        d.campaigns[0].status,
        Status::WaitingForConsent { .. }
    ));
    assert!(
        d.explain().contains("consent is asked again"),
        "{}",
        d.explain()
    );
}

#[test]
fn an_acceptance_does_not_carry_over_to_a_changed_manifest() {
    let c = consent(ConsentPolicy::Required, ConsentStage::Download);
    let mut st = LocalState::default();
    st.consent
        .push(consent_event(&c, ConsentAction::Accept, now()));
    let mut changed = c;
    changed.notice.get_mut("en").unwrap().body = "Now with more tracking.".into();
    assert!(matches!(
        status_of(&view(vec![changed]), &st, now()),
        Status::WaitingForConsent { .. }
    ));
}

#[test]
fn postponing_waits_until_then_asks_again_and_is_bounded() {
    let c = consent(ConsentPolicy::Required, ConsentStage::Download);
    let v = view(vec![c.clone()]);
    let mut st = LocalState::default();
    let until = now() + Duration::hours(4);
    st.consent.push(consent_event(
        &c,
        ConsentAction::Postpone {
            until: until.into(),
        },
        now(),
    ));
    assert_eq!(
        status_of(&v, &st, now()),
        Status::Postponed {
            until,
            postpones_left: 1
        }
    );
    assert!(matches!(
        status_of(&v, &st, until),
        Status::WaitingForConsent {
            postpones_left: 1,
            ..
        }
    ));
    let later = until + Duration::hours(4);
    st.consent.push(consent_event(
        &c,
        ConsentAction::Postpone {
            until: later.into(),
        },
        until,
    ));
    st.consent.push(consent_event(
        &c,
        ConsentAction::Postpone {
            until: (later + Duration::hours(4)).into(),
        },
        until,
    ));
    // The third postponement exceeds the bound of 2 and does not count.
    assert!(matches!(
        status_of(&v, &st, later),
        Status::WaitingForConsent {
            postpones_left: 0,
            ..
        }
    ));
}

#[test]
fn consent_before_install_lets_downloads_go_first() {
    let c = consent(ConsentPolicy::Required, ConsentStage::Install);
    let v = view(vec![c.clone()]);
    let mut st = LocalState::default();
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToDownload { .. }
    ));
    stage_all(&v, &mut st);
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::WaitingForConsent {
            stage: ConsentStage::Install,
            ..
        }
    ));
    st.consent
        .push(consent_event(&c, ConsentAction::Accept, now()));
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToInstall { .. }
    ));
}

#[test]
fn required_consent_expires_at_the_deadline_but_acknowledge_proceeds() {
    let deadline = UtcTime::parse("2030-03-05T00:00:00Z").unwrap();
    let mut c = consent(ConsentPolicy::Required, ConsentStage::Download);
    c.consent.deadline = Some(deadline);
    assert!(matches!(status(c.clone()), Status::Expired { .. }));
    // Consent given in time still counts after the deadline.
    let mut st = LocalState::default();
    st.consent.push(consent_event(
        &c,
        ConsentAction::Accept,
        t("2030-03-04T00:00:00Z"),
    ));
    assert!(matches!(
        status_of(&view(vec![c.clone()]), &st, now()),
        Status::ReadyToDownload { .. }
    ));
    // Consent recorded after the deadline does not.
    let mut st = LocalState::default();
    st.consent.push(consent_event(
        &c,
        ConsentAction::Accept,
        t("2030-03-06T00:00:00Z"),
    ));
    assert!(matches!(
        status_of(&view(vec![c]), &st, now()),
        Status::Expired { .. }
    ));

    let mut a = consent(ConsentPolicy::Acknowledge, ConsentStage::Download);
    a.consent.deadline = Some(deadline);
    assert!(matches!(status(a), Status::ReadyToDownload { .. }));
}

#[test]
fn acknowledge_campaigns_take_acknowledgements_and_ignore_declines() {
    let c = consent(ConsentPolicy::Acknowledge, ConsentStage::Download);
    let v = view(vec![c.clone()]);
    let mut st = LocalState::default();
    st.consent
        .push(consent_event(&c, ConsentAction::Decline, now()));
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::WaitingForConsent { .. }
    ));
    st.consent
        .push(consent_event(&c, ConsentAction::Acknowledge, now()));
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToDownload { .. }
    ));
    // Under `required`, an acknowledgement is not agreement.
    let r = consent(ConsentPolicy::Required, ConsentStage::Download);
    let mut st = LocalState::default();
    st.consent
        .push(consent_event(&r, ConsentAction::Acknowledge, now()));
    assert!(matches!(
        status_of(&view(vec![r]), &st, now()),
        Status::WaitingForConsent { .. }
    ));
}

fn admin_campaign(k: &PrivateKey) -> petrel_client::manifest::CampaignManifest {
    let mut c = consent(ConsentPolicy::Administrator, ConsentStage::Download);
    c.consent.administrator_keys = BTreeMap::from([(k.key_id().clone(), k.public_key().clone())]);
    c
}

fn token(
    k: &PrivateKey,
    c: &petrel_client::manifest::CampaignManifest,
    devices: &[&str],
) -> AdminConsentToken {
    let body = ConsentTokenBody::for_devices(
        &c.id,
        ManifestHash::of(&c.to_canonical_json().unwrap()),
        devices.iter().copied(),
        t("2030-03-01T00:00:00Z"),
        t("2030-03-31T00:00:00Z"),
    );
    AdminConsentToken::sign(body, &[k]).unwrap()
}

#[test]
fn administrator_consent_needs_a_valid_token_for_this_device_and_manifest() {
    let (k, _) = PrivateKey::generate_ed25519().unwrap();
    let c = admin_campaign(&k);
    let v = view(vec![c.clone()]);
    let with = |tok: AdminConsentToken, at| {
        let mut st = LocalState::default();
        st.consent.push(consent_event(
            &c,
            ConsentAction::Administrator {
                token: Box::new(tok),
            },
            now(),
        ));
        decide(&v, &profile(), &st, at)
    };
    assert!(matches!(
        status_of(&v, &LocalState::default(), now()),
        Status::WaitingForConsent {
            policy: ConsentPolicy::Administrator,
            ..
        }
    ));
    assert!(matches!(
        with(token(&k, &c, &[DEVICE]), now()).campaigns[0].status,
        Status::ReadyToDownload { .. }
    ));
    // Another device.
    let d = with(token(&k, &c, &["kiosk-0043"]), now());
    assert!(matches!(
        d.campaigns[0].status,
        Status::WaitingForConsent { .. }
    ));
    assert!(
        d.explain().contains("does not name this device"),
        "{}",
        d.explain()
    );
    // Expired.
    let d = with(token(&k, &c, &[DEVICE]), t("2030-03-31T00:00:00Z"));
    assert!(d.explain().contains("expired"), "{}", d.explain());
    // Signed by a key the campaign does not name.
    let (other, _) = PrivateKey::generate_ed25519().unwrap();
    let d = with(token(&other, &c, &[DEVICE]), now());
    assert!(
        matches!(d.campaigns[0].status, Status::WaitingForConsent { .. }),
        "{}",
        d.explain()
    );
    // Tampered after signing.
    let mut tok = token(&k, &c, &["kiosk-0043"]);
    tok.signed
        .devices
        .insert(AdminConsentToken::device_hash(DEVICE));
    assert!(matches!(
        with(tok, now()).campaigns[0].status,
        Status::WaitingForConsent { .. }
    ));
    // For a changed campaign.
    let mut changed = c.clone();
    changed.revision = 4;
    let mut st = LocalState::default();
    st.consent.push(consent_event(
        &c,
        ConsentAction::Administrator {
            token: Box::new(token(&k, &c, &[DEVICE])),
        },
        now(),
    ));
    assert!(matches!(
        status_of(&view(vec![changed]), &st, now()),
        Status::WaitingForConsent { .. }
    ));
    // A user's acceptance does not count.
    let mut st = LocalState::default();
    st.consent
        .push(consent_event(&c, ConsentAction::Accept, now()));
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::WaitingForConsent { .. }
    ));
}

#[test]
fn an_administrator_token_may_select_devices_by_selector() {
    let (k, _) = PrivateKey::generate_ed25519().unwrap();
    let c = admin_campaign(&k);
    let mut body = ConsentTokenBody::for_devices(
        &c.id,
        ManifestHash::of(&c.to_canonical_json().unwrap()),
        [],
        t("2030-03-01T00:00:00Z"),
        t("2030-03-31T00:00:00Z"),
    );
    body.selector = Some(Selectors {
        regions: BTreeSet::from(["eu-west".into()]),
        ..Selectors::default()
    });
    let tok = AdminConsentToken::sign(body.clone(), &[&k]).unwrap();
    let mut st = LocalState::default();
    st.consent.push(consent_event(
        &c,
        ConsentAction::Administrator {
            token: Box::new(tok),
        },
        now(),
    ));
    assert!(matches!(
        status_of(&view(vec![c.clone()]), &st, now()),
        Status::ReadyToDownload { .. }
    ));
    body.selector.as_mut().unwrap().regions = BTreeSet::from(["us-east".into()]);
    let tok = AdminConsentToken::sign(body, &[&k]).unwrap();
    let mut st = LocalState::default();
    st.consent.push(consent_event(
        &c,
        ConsentAction::Administrator {
            token: Box::new(tok),
        },
        now(),
    ));
    assert!(matches!(
        status_of(&view(vec![c]), &st, now()),
        Status::WaitingForConsent { .. }
    ));
}

// ---- 12. downloads --------------------------------------------------------------------

#[test]
fn downloads_wait_for_the_download_window_in_local_time() {
    let mut c = campaign();
    c.schedule.download_window = Some(window("01:00", "05:00"));
    let v = view(vec![c]);
    let st = LocalState::default();
    // 02:00 UTC is 02:00 local at UTC+0: open.
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToDownload { .. }
    ));
    // At UTC+5 it is 07:00 local: closed, opens at 01:00 local = 20:00 UTC.
    let mut p = profile();
    p.utc_offset_minutes = 300;
    let d = decide(&v, &p, &st, now());
    let Status::WaitingForDownloadWindow { opens_at, bytes } = d.campaigns[0].status else {
        panic!("{}", d.explain())
    };
    assert_eq!(opens_at, t("2030-03-10T20:00:00Z"));
    assert!(bytes > 0);
}

#[test]
fn a_delta_from_the_installed_bytes_is_offered() {
    let mut v = view(vec![campaign()]);
    let base = "cd".repeat(32);
    v.artifacts
        .get_mut("apps/acme/player/2.1.0/player.bin")
        .unwrap()
        .deltas = vec![
        DeltaInfo {
            target: "deltas/x/other".into(),
            length: 10,
            base_sha256: "ef".repeat(32),
        },
        DeltaInfo {
            target: "deltas/x/mine".into(),
            length: 100,
            base_sha256: base.clone(),
        },
    ];
    let mut p = profile();
    p.inventory.get_mut("acme.player").unwrap().sha256 = Some(base);
    let d = decide(&v, &p, &LocalState::default(), now());
    let Status::ReadyToDownload { items, bytes } = &d.campaigns[0].status else {
        panic!()
    };
    assert_eq!(items[0].delta.as_ref().unwrap().target, "deltas/x/mine");
    assert_eq!(*bytes, 100);
}

#[test]
fn a_missing_artifact_is_an_error() {
    let mut v = view(vec![campaign()]);
    v.artifacts.remove("apps/acme/player/2.1.0/player.bin");
    let Status::Error { reason } = status_of(&v, &LocalState::default(), now()) else {
        panic!()
    };
    assert!(
        reason.contains("apps/acme/player/2.1.0/player.bin"),
        "{reason}"
    );
}

// ---- 14. the apply window -------------------------------------------------------------

#[test]
fn installing_waits_for_the_apply_window_which_may_wrap_midnight() {
    let mut c = campaign();
    c.schedule.apply_window = Some(window("23:30", "00:30"));
    let v = view(vec![c]);
    let mut st = LocalState::default();
    stage_all(&v, &mut st);
    assert_eq!(
        status_of(&v, &st, now()),
        Status::WaitingForApplyWindow {
            opens_at: t("2030-03-10T23:30:00Z")
        }
    );
    assert_eq!(
        status_of(&v, &st, t("2030-03-10T23:45:00Z")),
        Status::ReadyToInstall {
            window_closes_at: Some(t("2030-03-11T00:30:00Z"))
        }
    );
    assert_eq!(
        status_of(&v, &st, t("2030-03-11T00:15:00Z")),
        Status::ReadyToInstall {
            window_closes_at: Some(t("2030-03-11T00:30:00Z"))
        }
    );
    assert!(matches!(
        status_of(&v, &st, t("2030-03-11T00:30:00Z")),
        Status::WaitingForApplyWindow { .. }
    ));
}

// ---- the explanation and the actions --------------------------------------------------

#[test]
fn explain_tells_what_will_happen_and_why() {
    let mut c = consent(ConsentPolicy::Required, ConsentStage::Download);
    c.schedule.download_window = Some(window("01:00", "05:00"));
    let mut halted = campaign();
    halted.id = "fonts-fix".into();
    halted.state = CampaignState::Halted;
    let v = view(vec![c, halted]);
    let text = decide(&v, &profile(), &LocalState::default(), now()).explain();
    for needle in [
        "What will happen to device kiosk-0042",
        "group kiosk-eu",
        "update acme.player 2.0.1 -> 2.1.0",
        "player-2.1 revision 3 \"Player 2.1\" (recommended)",
        "waiting for consent (required, before download, 2 postponement(s) left)",
        "fonts-fix",
        "halted",
        "ok   capabilities",
        "Next: show the notice of campaign player-2.1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn install_comes_before_download_before_reports_before_questions() {
    let mut ready = campaign();
    ready.id = "a-ready".into();
    let mut asking = consent(ConsentPolicy::Required, ConsentStage::Download);
    asking.id = "b-asking".into();
    let mut broken = forced(&["0.1"]);
    broken.id = "c-broken".into();
    let v = view(vec![ready, asking, broken]);
    let mut st = LocalState::default();
    stage_all(&v, &mut st);
    let kinds: Vec<&str> = decide(&v, &profile(), &st, now())
        .actions()
        .iter()
        .map(|a| match a {
            Action::Install { .. } => "install",
            Action::Download { .. } => "download",
            Action::Report { .. } => "report",
            Action::AskConsent { .. } => "ask",
            Action::Discard { .. } => "discard",
            Action::Wait { .. } => "wait",
        })
        .collect();
    // The staged fonts artifact is not needed (fonts 1.0 is installed): discard it.
    assert_eq!(kinds, ["install", "report", "ask", "discard"]);
}

#[test]
fn every_rule_leaves_a_reason() {
    let v = view(vec![campaign()]);
    let d = decide(&v, &profile(), &LocalState::default(), now());
    let rules: Vec<&str> = d.campaigns[0].reasons.iter().map(|r| r.rule).collect();
    for r in [
        "capabilities",
        "revision",
        "applies_to",
        "state",
        "schedule",
        "group",
        "plan",
        "rollout",
        "consent",
        "staging",
    ] {
        assert!(rules.contains(&r), "no {r} in {rules:?}");
    }
    assert_eq!(
        d.campaigns[0].reasons.last().unwrap().verdict,
        Verdict::Stop
    );
}

#[test]
fn a_status_serializes_for_reports() {
    let s = Status::WaitingForWave {
        wave: 2,
        opens_at: t("2030-03-20T00:00:00Z"),
    };
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["status"], "waiting_for_wave");
    assert_eq!(s.kind(), "waiting_for_wave");
}

#[test]
fn a_device_side_precondition_holds_downloads_and_installs_back_and_says_why() {
    let v = view(vec![campaign()]);
    let mut st = LocalState {
        inhibit: Some("the machine is vending".into()),
        ..LocalState::default()
    };
    match status_of(&v, &st, now()) {
        Status::WaitingForDevice {
            reason,
            before,
            until,
        } => {
            assert_eq!(reason, "the machine is vending");
            assert_eq!(before, "download");
            assert_eq!(until, None);
        }
        other => panic!("{other:?}"),
    }
    stage_all(&v, &mut st);
    let d = decide(&v, &profile(), &st, now());
    assert!(
        matches!(
            &d.campaigns[0].status,
            Status::WaitingForDevice {
                before: "install",
                ..
            }
        ),
        "{:?}",
        d.campaigns[0].status
    );
    assert!(d
        .explain()
        .contains("the device says to wait: the machine is vending"));
    assert!(
        !d.campaigns[0].report_due,
        "waiting for the device is never reported"
    );
    st.inhibit = None;
    assert!(matches!(
        status_of(&v, &st, now()),
        Status::ReadyToInstall { .. }
    ));
}

#[test]
fn only_a_consent_free_or_forced_campaign_stops_waiting_for_the_device_after_its_inhibit_deadline()
{
    let deadline = now() + Duration::hours(1);
    let mut c = campaign(); // consent policy none
    c.schedule.inhibit_deadline = Some(UtcTime(deadline));
    let v = view(vec![c.clone()]);
    let mut st = LocalState {
        inhibit: Some("battery at 12 %".into()),
        ..LocalState::default()
    };
    stage_all(&v, &mut st);
    match status_of(&v, &st, now()) {
        Status::WaitingForDevice { until, .. } => assert_eq!(until, Some(deadline)),
        other => panic!("{other:?}"),
    }
    let d = decide(&v, &profile(), &st, now());
    assert_eq!(
        d.wake_at,
        Some(deadline),
        "the agent wakes up at the deadline"
    );
    assert!(matches!(
        status_of(&v, &st, deadline),
        Status::ReadyToInstall { .. }
    ));
    // A campaign that needs the user's consent may not carry one.
    c.consent.policy = ConsentPolicy::Required;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("schedule.inhibit_deadline"), "{e}");
}

#[test]
fn an_error_drawn_from_a_part_of_the_repository_that_could_not_be_read_is_not_reported() {
    let mut v = view(vec![campaign()]);
    let plan = decide(&v, &profile(), &LocalState::default(), now())
        .plan
        .expect("the device has a plan");
    let target = plan
        .targets()
        .next()
        .expect("the plan downloads")
        .to_string();
    v.artifacts.remove(&target);
    let st = LocalState::default();
    // Listed nowhere: the campaign's error, reported.
    let d = decide(&v, &profile(), &st, now());
    assert!(matches!(d.campaigns[0].status, Status::Error { .. }));
    assert!(d.campaigns[0].report_due);
    // Could not be fetched or verified this time: waiting for the repository, not reported.
    v.incomplete
        .push((target.clone(), "HTTP status 500".into()));
    let d = decide(&v, &profile(), &st, now());
    match &d.campaigns[0].status {
        Status::WaitingForRepository { reason } => {
            assert!(
                reason.contains(&target) && reason.contains("500"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!d.campaigns[0].report_due);
}

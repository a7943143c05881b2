//! Gated rollouts on the device: a wave opens only once a signed revision says so (the
//! time alone never opens it), the device explains what it waits for with the figures the
//! repository signed, and validation refuses gate settings that cannot work.

mod decide_common;

use decide_common::*;
use petrel_client::decide::rollout::{gate_condition, position, Position};
use petrel_client::decide::{decide, LocalState, Status};
use petrel_client::manifest::{CampaignManifest, Gates, Manifest, Progress, UtcTime, Wave};

fn at(s: &str) -> UtcTime {
    UtcTime::parse(s).unwrap()
}

/// Wave 1 for us-east, wave 2 for everyone else (the test device is in eu-west: wave 2).
fn gated() -> CampaignManifest {
    let mut c = campaign();
    let mut w1 = Wave::at(at("2030-03-01T00:00:00Z"));
    w1.regions = Some(["us-east".to_string()].into());
    c.rollout.waves = vec![w1, Wave::at(at("2030-03-01T00:00:00Z"))];
    c.rollout.gates = Some(Gates::default());
    c.validate().unwrap();
    c
}

fn status(c: &CampaignManifest, when: &str) -> Status {
    let p = profile();
    let v = view_for(&p.id, vec![c.clone()], assignment());
    decide(&v, &p, &LocalState::default(), at(when).0).campaigns[0]
        .status
        .clone()
}

#[test]
fn a_gated_wave_never_opens_by_time_alone() {
    let c = gated();
    // Long after every start: still closed, because no revision opened wave 2.
    match status(&c, "2030-03-30T00:00:00Z") {
        Status::WaitingForGate { wave, gate } => {
            assert_eq!(wave, 2);
            assert!(
                gate.contains("opens when wave 1 has ≥ 95 % succeeded"),
                "{gate}"
            );
            assert!(gate.contains("no figures signed yet"), "{gate}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        position(&c, &profile(), false),
        Position::Gated { index: 1 }
    );
}

#[test]
fn a_wave_opened_by_a_signed_revision_is_open() {
    let mut c = gated();
    c.rollout.opened = vec![at("2030-03-01T00:00:00Z"), at("2030-03-02T00:00:00Z")];
    c.validate().unwrap();
    let s = status(&c, "2030-03-03T00:00:00Z");
    assert!(
        !matches!(
            s,
            Status::WaitingForGate { .. } | Status::WaitingForWave { .. }
        ),
        "{s:?}"
    );
    assert!(matches!(
        position(&c, &profile(), false),
        Position::Wave { index: 1, .. }
    ));
}

#[test]
fn the_first_wave_without_canaries_opens_at_its_start_without_a_gate() {
    let mut c = gated();
    c.rollout.waves[0].regions = Some(["eu-west".to_string()].into());
    c.validate().unwrap();
    assert!(matches!(
        position(&c, &profile(), false),
        Position::Wave { index: 0, .. }
    ));
}

#[test]
fn the_device_explains_the_gate_with_the_signed_figures() {
    let mut c = gated();
    c.rollout.progress = Some(Progress {
        evaluated_at: at("2030-03-02T10:00:00Z"),
        stage: "wave 1".into(),
        devices: 100,
        succeeded: 71,
        failed: 2,
        overdue: 3,
        counts_from_revision: None,
    });
    c.validate().unwrap();
    let Status::WaitingForGate { gate, .. } = status(&c, "2030-03-03T00:00:00Z") else {
        panic!()
    };
    assert!(
        gate.contains("now 71 % succeeded, 2 % failed, 3 overdue of 100 device(s)"),
        "{gate}"
    );
    assert!(gate.contains("signed 2030-03-02"), "{gate}");
    let text = status(&c, "2030-03-03T00:00:00Z").to_string();
    assert!(
        text.starts_with("waiting for wave 2: opens when wave 1 has ≥ 95 %"),
        "{text}"
    );
}

#[test]
fn a_non_canary_explains_what_passes_the_canaries() {
    let mut c = gated();
    c.rollout.canary = true;
    c.rollout.gates.as_mut().unwrap().canary_min_succeeded = 3;
    c.rollout.gates.as_mut().unwrap().canary_soak_secs = 7200;
    c.validate().unwrap();
    let text = gate_condition(&c, None).unwrap();
    assert!(
        text.contains(
            "at least 3 canary device(s) succeeded and at most 0 failed, for at least 2 h"
        ),
        "{text}"
    );
    assert_eq!(
        status(&c, "2030-03-03T00:00:00Z"),
        Status::WaitingForCanaries
    );
    // A canary goes first.
    assert!(matches!(
        position(&c, &profile(), true),
        Position::Canary { .. }
    ));
}

#[test]
fn gate_settings_that_cannot_work_are_refused() {
    let refuse = |f: &dyn Fn(&mut CampaignManifest), field: &str| {
        let mut c = gated();
        f(&mut c);
        let e = c.validate().unwrap_err();
        assert!(e.has_field(field), "{field}: {e}");
    };
    refuse(
        &|c| c.rollout.gates.as_mut().unwrap().wave_min_succeeded_bp = 10_001,
        "rollout.gates.wave_min_succeeded_bp",
    );
    refuse(
        &|c| c.rollout.gates.as_mut().unwrap().overdue_counts_as_failed = true,
        "rollout.gates.overdue_counts_as_failed",
    );
    refuse(
        &|c| {
            c.rollout.gates = None;
            c.rollout.opened = vec![at("2030-03-01T00:00:00Z")];
        },
        "rollout.opened",
    );
    refuse(
        &|c| {
            c.rollout.opened = vec![at("2030-03-02T00:00:00Z"), at("2030-03-01T00:00:00Z")];
        },
        "rollout.opened",
    );
    refuse(
        &|c| {
            c.rollout.canary = true;
            c.rollout.opened = vec![at("2030-03-02T00:00:00Z")];
        },
        "rollout.opened",
    );
    refuse(
        &|c| {
            c.rollout.canary = true;
            c.rollout.gates.as_mut().unwrap().canary_min_succeeded = 0;
        },
        "rollout.gates.canary_min_succeeded",
    );
}

#[test]
fn gates_leave_the_offer_and_so_the_consent_unchanged() {
    let c = gated();
    let mut advanced = c.clone();
    advanced.revision += 1;
    advanced.rollout.opened = vec![at("2030-03-01T00:00:00Z"), at("2030-03-02T00:00:00Z")];
    advanced.rollout.progress = Some(Progress {
        evaluated_at: at("2030-03-02T10:00:00Z"),
        stage: "wave 1".into(),
        devices: 1,
        succeeded: 1,
        failed: 0,
        overdue: 0,
        counts_from_revision: None,
    });
    assert_eq!(c.offer_sha256(), advanced.offer_sha256());
}

#[test]
fn a_failed_install_is_not_retried_because_the_gate_signed_new_figures_or_opened_a_wave() {
    use petrel_client::decide::InstallAttempt;
    // Wave 2 open, the device's install failed after its commit point.
    let mut c = gated();
    c.rollout.opened = vec![at("2030-03-01T00:00:00Z"), at("2030-03-02T00:00:00Z")];
    c.validate().unwrap();
    let p = profile();
    let v = view_for(&p.id, vec![c.clone()], assignment());
    let mut st = LocalState::default();
    st.attempts.insert(
        c.id.clone(),
        InstallAttempt {
            manifest_sha256: v.campaigns[0].sha256.clone(),
            failures: 1,
            last_error: "the health check failed".into(),
            at: at("2030-03-02T12:00:00Z").0,
            after_commit: true,
            attempt_sha256: Some(c.attempt_sha256()),
        },
    );
    let decide_on = |m: &CampaignManifest| {
        let v = view_for(&p.id, vec![m.clone()], assignment());
        decide(&v, &p, &st, at("2030-03-03T00:00:00Z").0).campaigns[0]
            .status
            .clone()
    };
    assert!(matches!(decide_on(&c), Status::Error { .. }));
    // The gate's next revision: new figures only. The same attempt: not retried.
    let mut figures = c.clone();
    figures.revision += 1;
    figures.rollout.progress = Some(Progress {
        evaluated_at: at("2030-03-02T13:00:00Z"),
        stage: "wave 2".into(),
        devices: 10,
        succeeded: 4,
        failed: 1,
        overdue: 0,
        counts_from_revision: None,
    });
    figures.validate().unwrap();
    assert!(
        matches!(decide_on(&figures), Status::Error { .. }),
        "{:?}",
        decide_on(&figures)
    );
    // A revision that changes what is offered (the notice): tried again.
    let mut fixed = figures.clone();
    fixed.revision += 1;
    fixed.notice.get_mut("en").unwrap().body = "Fixed the relay driver.".into();
    assert!(
        !matches!(decide_on(&fixed), Status::Error { .. }),
        "{:?}",
        decide_on(&fixed)
    );
}

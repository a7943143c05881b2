//! Health gates: every verdict of the fleet view's gate (pass the canaries, open the next
//! wave, wait for a share, wait for a soak, halt on canary failures, halt on a later
//! wave's failures, overdue devices), as a pure function of manifests, reports and time.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use petrel_client::manifest::{Assignment, CampaignManifest, Manifest, UtcTime};
use petrel_client::report::ReportResult;
use petrel_server::reports::fleet::{build, Action, FleetInput, FleetView};
use petrel_server::reports::{EnrolledDevice, ReportRow};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 3, 1, 0, 0, 0).unwrap()
}

/// A gated campaign for group `kiosks`: canaries, then 2 waves by share.
fn campaign(extra: &str) -> CampaignManifest {
    CampaignManifest::from_toml(&format!(
        r#"
kind = "campaign"
schema_version = 1
id = "player-2.1"
revision = 3
state = "active"

[notice.en]
title = "Player 2.1"
body = "Faster start-up."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = {{ id = "kiosks", revision = 8 }}

[rollout]
canary = true
{extra}

[[rollout.waves]]
share_bp = 5000
start = 2030-03-01T00:00:00Z

[[rollout.waves]]
start = 2030-03-01T00:00:00Z

[rollout.gates]
canary_min_succeeded = 2
canary_max_failed = 0
canary_soak_secs = 3600
wave_min_succeeded_bp = 9000
wave_max_failed_bp = 1000
wave_soak_secs = 0
overdue_after_secs = 86400
"#
    ))
    .unwrap()
}

struct Fleet {
    rows: Vec<ReportRow>,
    enrolled: Vec<EnrolledDevice>,
    canaries: Vec<String>,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            rows: Vec::new(),
            enrolled: Vec::new(),
            canaries: Vec::new(),
        }
    }

    fn canary(&mut self, id: &str) {
        self.canaries.push(id.into());
        self.enroll(id);
    }

    fn enroll(&mut self, id: &str) {
        self.enrolled.push(EnrolledDevice {
            device_id: id.into(),
            keyid: "00".into(),
            enrolled_at: "2030-02-01T00:00:00Z".into(),
        });
    }

    fn report(&mut self, id: &str, wave: Option<u32>, result: ReportResult, at: DateTime<Utc>) {
        let seq = self.rows.len() as i64 + 1;
        self.rows.push(ReportRow {
            seq,
            device_id: id.into(),
            campaign: "player-2.1".into(),
            revision: 3,
            wave,
            result,
            reason: if result == ReportResult::Failed {
                "the health check failed".into()
            } else {
                String::new()
            },
            time: at,
            received_at: at,
            clock_skewed: false,
        });
    }

    fn view(&self, c: &CampaignManifest, now: DateTime<Utc>) -> FleetView {
        let canaries = self.canaries.clone();
        let lookup = move |id: &str| {
            Some(Assignment {
                canary: canaries.iter().any(|c| c == id),
                ..Assignment::to_group("kiosks")
            })
        };
        build(&FleetInput {
            campaigns: std::slice::from_ref(c),
            rows: &self.rows,
            enrolled: &self.enrolled,
            installed: &HashMap::<String, BTreeMap<String, String>>::new(),
            assignment: &lookup,
            now,
        })
    }
}

use ReportResult::*;

#[test]
fn canaries_pass_only_after_enough_successes_and_the_soak_time() {
    let c = campaign("");
    let mut f = Fleet::new();
    f.canary("c1");
    f.canary("c2");
    f.report("c1", None, Succeeded, t0());
    let v = f.view(&c, t0() + Duration::hours(2));
    let g = &v.campaign("player-2.1").unwrap().gate;
    assert_eq!(g.action, Action::Wait, "{}", g.explanation);
    assert!(
        g.explanation
            .contains("1 of 2 canary device(s) succeeded; needs 2"),
        "{}",
        g.explanation
    );

    f.report("c2", None, Succeeded, t0() + Duration::minutes(10));
    // Enough successes, but the soak (1 h from the first canary report) is not over.
    let v = f.view(&c, t0() + Duration::minutes(30));
    let g = &v.campaign("player-2.1").unwrap().gate;
    assert_eq!(g.action, Action::Wait, "{}", g.explanation);
    assert!(g.explanation.contains("soaks"), "{}", g.explanation);
    let v = f.view(&c, t0() + Duration::minutes(61));
    let g = &v.campaign("player-2.1").unwrap().gate;
    assert_eq!(g.action, Action::PassCanaries, "{}", g.explanation);
    let p = g.progress.as_ref().unwrap();
    assert_eq!(
        (p.stage.as_str(), p.devices, p.succeeded),
        ("canaries", 2, 2)
    );
}

#[test]
fn a_success_counts_only_once_the_device_confirmed_its_health() {
    let c = campaign("");
    let mut f = Fleet::new();
    f.canary("c1");
    f.canary("c2");
    f.report("c1", None, Succeeded, t0());
    // Written and waiting for the reboot and health check: not a success yet.
    f.report("c2", None, InstalledPendingReboot, t0());
    let later = t0() + Duration::hours(3);
    let v = f.view(&c, later);
    assert_eq!(v.campaign("player-2.1").unwrap().gate.action, Action::Wait);
    f.report("c2", None, Succeeded, t0() + Duration::minutes(5));
    let v = f.view(&c, later);
    assert_eq!(
        v.campaign("player-2.1").unwrap().gate.action,
        Action::PassCanaries
    );
}

#[test]
fn a_failed_canary_over_the_limit_halts() {
    let c = campaign("");
    let mut f = Fleet::new();
    f.canary("c1");
    f.canary("c2");
    f.canary("c3");
    f.report("c1", None, Succeeded, t0());
    f.report("c2", None, Succeeded, t0());
    f.report("c3", None, Failed, t0());
    let v = f.view(&c, t0() + Duration::hours(2));
    let cv = v.campaign("player-2.1").unwrap();
    assert_eq!(cv.gate.action, Action::Halt, "{}", cv.gate.explanation);
    assert!(cv.gate.explanation.contains("1 canary device(s) failed"));
    assert_eq!(cv.failure_reasons[0].reason, "the health check failed");
}

#[test]
fn the_next_wave_opens_when_the_open_one_reaches_its_success_share() {
    let mut c = campaign("canary_passed = true");
    c.rollout.opened = vec![UtcTime(t0())];
    let mut f = Fleet::new();
    for i in 0..10 {
        f.report(
            &format!("d{i}"),
            Some(1),
            if i < 8 { Succeeded } else { Staged },
            t0(),
        );
    }
    let now = t0() + Duration::hours(1);
    let v = f.view(&c, now);
    let cv = v.campaign("player-2.1").unwrap();
    assert_eq!(cv.gate.action, Action::Wait);
    assert!(
        cv.gate.explanation.contains("80 % succeeded"),
        "{}",
        cv.gate.explanation
    );
    let w1 = cv.stage("wave 1").unwrap();
    assert_eq!(
        (w1.devices, w1.succeeded, w1.pending, w1.open),
        (10, 8, 2, true)
    );
    assert!(!cv.stage("wave 2").unwrap().open);
    f.report("d8", Some(1), Succeeded, t0() + Duration::minutes(5));
    let v = f.view(&c, now);
    let cv = v.campaign("player-2.1").unwrap();
    assert_eq!(
        cv.gate.action,
        Action::OpenWave { wave: 2 },
        "{}",
        cv.gate.explanation
    );
}

#[test]
fn failures_in_a_later_wave_halt_even_when_the_earlier_wave_is_healthy() {
    let mut c = campaign("canary_passed = true");
    c.rollout.opened = vec![UtcTime(t0()), UtcTime(t0() + Duration::hours(1))];
    let mut f = Fleet::new();
    for i in 0..10 {
        f.report(&format!("a{i}"), Some(1), Succeeded, t0());
    }
    for i in 0..10 {
        let r = if i < 2 { Failed } else { Succeeded };
        f.report(&format!("b{i}"), Some(2), r, t0() + Duration::hours(2));
    }
    let v = f.view(&c, t0() + Duration::hours(3));
    let cv = v.campaign("player-2.1").unwrap();
    assert_eq!(cv.gate.action, Action::Halt, "{}", cv.gate.explanation);
    assert!(
        cv.gate.explanation.contains("wave 2 failed 2 of 10"),
        "{}",
        cv.gate.explanation
    );
    assert_eq!(cv.gate.progress.as_ref().unwrap().stage, "wave 2");
}

#[test]
fn silent_devices_become_overdue_and_count_as_failed_when_the_gate_says_so() {
    let mut c = campaign("canary_passed = true");
    c.rollout.opened = vec![UtcTime(t0())];
    let mut f = Fleet::new();
    for i in 0..10 {
        f.report(&format!("d{i}"), Some(1), Succeeded, t0());
    }
    // Staged right away, then silent.
    f.report("quiet", Some(1), Staged, t0());
    let v = f.view(&c, t0() + Duration::hours(12));
    assert_eq!(
        v.campaign("player-2.1")
            .unwrap()
            .stage("wave 1")
            .unwrap()
            .overdue,
        0
    );
    let v = f.view(&c, t0() + Duration::hours(25));
    let cv = v.campaign("player-2.1").unwrap();
    assert_eq!(cv.stage("wave 1").unwrap().overdue, 1);
    let d = v.device("quiet").unwrap();
    assert_eq!(d.campaigns[0].state, "overdue");
    assert!(
        d.campaigns[0].reason.contains("silent for"),
        "{}",
        d.campaigns[0].reason
    );
    // 10 of 11 succeeded (90.9 %): passes while overdue only holds back...
    assert_eq!(
        cv.gate.action,
        Action::OpenWave { wave: 2 },
        "{}",
        cv.gate.explanation
    );
    // ...but halts once overdue counts as failed (1 of 11 = 9 %, limit 5 %).
    c.rollout.gates.as_mut().unwrap().overdue_counts_as_failed = true;
    c.rollout.gates.as_mut().unwrap().wave_max_failed_bp = 500;
    c.validate().unwrap();
    let v = f.view(&c, t0() + Duration::hours(25));
    let cv = v.campaign("player-2.1").unwrap();
    assert_eq!(cv.gate.action, Action::Halt, "{}", cv.gate.explanation);
    assert!(cv.gate.explanation.contains("overdue counted as failed"));
}

#[test]
fn enrolled_devices_that_never_reported_are_counted_in_their_computed_wave() {
    let mut c = campaign("canary_passed = true");
    c.rollout.opened = vec![UtcTime(t0())];
    let mut f = Fleet::new();
    for i in 0..40 {
        f.enroll(&format!("dev-{i}"));
    }
    let v = f.view(&c, t0() + Duration::hours(1));
    let cv = v.campaign("player-2.1").unwrap();
    let (w1, w2) = (cv.stage("wave 1").unwrap(), cv.stage("wave 2").unwrap());
    assert_eq!(w1.devices + w2.devices, 40);
    assert!(
        w1.devices > 5 && w2.devices > 5,
        "{} / {}",
        w1.devices,
        w2.devices
    );
    // Nobody succeeded: wave 2 waits.
    assert_eq!(cv.gate.action, Action::Wait);
    assert!(v
        .devices
        .iter()
        .all(|d| d.campaigns.iter().all(|e| e.state == "not_reported")));
}

#[test]
fn after_a_halt_only_reports_from_the_resumed_revision_count() {
    let mut c = campaign("canary_passed = true");
    c.rollout.opened = vec![UtcTime(t0())];
    let mut f = Fleet::new();
    for i in 0..10 {
        f.report(
            &format!("d{i}"),
            Some(1),
            if i < 5 { Failed } else { Succeeded },
            t0(),
        );
    }
    let now = t0() + Duration::hours(1);
    let v = f.view(&c, now);
    let cv = v.campaign("player-2.1").unwrap();
    assert_eq!(cv.gate.action, Action::Halt);
    // Halted at revision 4, resumed as revision 5: the old failures no longer count.
    let mut p = cv.gate.progress.clone().unwrap();
    p.counts_from_revision = Some(5);
    c.rollout.progress = Some(p);
    c.revision = 5;
    let v = f.view(&c, now);
    let cv = v.campaign("player-2.1").unwrap();
    assert_ne!(cv.gate.action, Action::Halt, "{}", cv.gate.explanation);
    assert_eq!(cv.stage("wave 1").unwrap().failed, 0);
}

#[test]
fn halted_and_ungated_campaigns_are_left_alone() {
    let mut c = campaign("");
    c.state = petrel_client::manifest::CampaignState::Halted;
    let mut f = Fleet::new();
    f.canary("c1");
    f.report("c1", None, Failed, t0());
    let v = f.view(&c, t0() + Duration::hours(2));
    assert_eq!(
        v.campaign("player-2.1").unwrap().gate.action,
        Action::Stopped
    );
    let mut c = campaign("");
    c.rollout.gates = None;
    let v = f.view(&c, t0() + Duration::hours(2));
    assert_eq!(
        v.campaign("player-2.1").unwrap().gate.action,
        Action::NotGated
    );
}

#[test]
fn every_stage_open_is_complete() {
    let mut c = campaign("canary_passed = true");
    c.rollout.opened = vec![UtcTime(t0()), UtcTime(t0())];
    let f = Fleet::new();
    let v = f.view(&c, t0() + Duration::hours(2));
    assert_eq!(
        v.campaign("player-2.1").unwrap().gate.action,
        Action::Complete
    );
}

//! The fleet view: per campaign its stages (canaries, waves) with device counts and the
//! health gate's verdict — what `petrel-repo rollout advance` does next — and per device
//! its group, last contact, installed versions and state in each campaign.
//!
//! One pure function ([`build`]) of (published campaign manifests, stored reports,
//! enrolled devices, an assignment lookup, time), used by `petrel-repo fleet status` and
//! `rollout advance` and by the server's fleet endpoint and dashboard, so every view of a
//! rollout agrees with what the gate does.
//!
//! Rules (also in `docs/formats.md`, "Health gates"):
//!
//! * A device counts once per campaign, by its latest report (the one the server received
//!   last), whatever revision it is about.
//! * Its stage: a canary (by its assignment) is in the canary stage of a campaign that has
//!   one; any other device is in the wave its report names (devices compute their wave
//!   themselves). An enrolled device that has not reported is counted too when the
//!   repository can place it without its attributes: it is assigned to the campaign's
//!   group, the campaign selects by group only, and waves (if any) select by share only.
//! * Only `succeeded` is a success; a device reports it only after its health check
//!   passed (after the reboot, for a system image). `failed` is a failure; anything else
//!   (staged, waiting for a reboot, declined, no report yet) is pending.
//! * Overdue: a device of an open stage without a final report, silent (no report about
//!   the campaign) for the gate's `overdue_after_secs` since the stage opened or since its
//!   last report, whichever is later.
//! * The gate (active campaigns with `[rollout.gates]` only): a failing open stage halts
//!   the campaign (canaries: more failed than `canary_max_failed`; a wave: a failed share
//!   of its devices above `wave_max_failed_bp`; overdue devices count as failed when the
//!   gate says so). Otherwise the last open stage decides: once it passes (canaries: at
//!   least `canary_min_succeeded` succeeded; a wave: at least `wave_min_devices` devices
//!   and a succeeded share of at least `wave_min_succeeded_bp`) and its soak time is
//!   over, the next stage opens.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use petrel_client::decide::rollout::{human_secs, percent, position, Position};
use petrel_client::decide::DeviceProfile;
use petrel_client::manifest::{
    share_bp, Assignment, CampaignManifest, CampaignState, Gates, Progress, UtcTime,
};
use petrel_client::report::ReportResult;
use serde::{Deserialize, Serialize};

use super::store::EnrolledDevice;
use super::summary::{ReasonCount, ReportRow};

/// Everything the fleet view is computed from.
pub struct FleetInput<'a> {
    /// The published campaign manifests.
    pub campaigns: &'a [CampaignManifest],
    /// Every stored report row.
    pub rows: &'a [ReportRow],
    /// The devices enrolled at the report server.
    pub enrolled: &'a [EnrolledDevice],
    /// Device id → application → version, from the device's latest report.
    pub installed: &'a HashMap<String, BTreeMap<String, String>>,
    /// The device's published assignment (group, canary flag), looked up by id.
    pub assignment: &'a dyn Fn(&str) -> Option<Assignment>,
    /// The evaluation instant.
    pub now: DateTime<Utc>,
}

/// The whole fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    /// When the view was computed.
    pub generated_at: DateTime<Utc>,
    /// One entry per published campaign, by id.
    pub campaigns: Vec<CampaignView>,
    /// One entry per enrolled or reporting device, by id.
    pub devices: Vec<DeviceView>,
}

/// One campaign's rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignView {
    /// The campaign id.
    pub id: String,
    /// The published revision.
    pub revision: u64,
    /// `active`, `halted` or `cancelled`.
    pub state: CampaignState,
    /// The payload's group, if the campaign delivers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Whether the rollout has health gates.
    pub gated: bool,
    /// The stages in order: `canaries`, `wave 1`, `wave 2`, … (or `everyone`).
    pub stages: Vec<StageView>,
    /// What the next `rollout advance` does, and why.
    pub gate: GateVerdict,
    /// Failure reasons over every device of the campaign, most frequent first.
    pub failure_reasons: Vec<ReasonCount>,
}

/// One stage of a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageView {
    /// `canaries`, `wave N` or `everyone`.
    pub name: String,
    /// 1-based wave number (`None` for the canary stage and for `everyone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// Whether devices of this stage may install now.
    pub open: bool,
    /// When it opened (unknown for a canary stage before its first report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<DateTime<Utc>>,
    /// Devices counted in the stage.
    pub devices: u64,
    /// Of them, succeeded (health confirmed).
    pub succeeded: u64,
    /// Of them, failed.
    pub failed: u64,
    /// Of them, neither (staged, waiting for a reboot, declined, or no report yet),
    /// overdue ones included.
    pub pending: u64,
    /// Of `pending`, overdue.
    pub overdue: u64,
    /// The stage's standing in words (`passed`, `soaking: 1 h left`, `71 % succeeded,
    /// needs 95 %`, `not open`).
    pub status: String,
}

/// The gate's verdict for one campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// What `rollout advance` does (`action`, and `wave` for `open_wave`).
    #[serde(flatten)]
    pub action: Action,
    /// Why, in words.
    pub explanation: String,
    /// The figures `advance` signs into the next revision (gated, active campaigns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// What `rollout advance` does to a campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Nothing opens or halts now (waiting, or no gates).
    Wait,
    /// The canaries passed: sign `canary_passed` and open wave 1 (or everyone).
    PassCanaries,
    /// Open this wave (1-based).
    OpenWave {
        /// 1-based wave number.
        wave: u32,
    },
    /// A stage is failing: halt the campaign.
    Halt,
    /// Every stage is open; nothing left to open.
    Complete,
    /// Not a gated rollout: waves open at their start times.
    NotGated,
    /// Halted or cancelled: the gate leaves it alone.
    Stopped,
}

/// One device across the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device id it enrolled with.
    pub device_id: String,
    /// Whether it is enrolled at the report server.
    pub enrolled: bool,
    /// Its group, from its published assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A canary device.
    pub canary: bool,
    /// When the server last received a report from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<DateTime<Utc>>,
    /// Application → version, from its latest report.
    pub installed: BTreeMap<String, String>,
    /// Its state in each campaign that counts it.
    pub campaigns: Vec<DeviceCampaign>,
}

/// A device's state in one campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCampaign {
    /// The campaign.
    pub campaign: String,
    /// Its stage (`canaries`, `wave N`, `everyone`).
    pub stage: String,
    /// `succeeded`, `failed`, `staged`, `declined`, `installed_pending_reboot`,
    /// `not_reported` or `overdue`.
    pub state: String,
    /// The revision its latest report is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The reason it gave (failures) or why it is overdue.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When its latest report about the campaign was received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<DateTime<Utc>>,
}

/// Where a device stands in one campaign's stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Stage {
    Canaries,
    /// 0-based wave index.
    Wave(usize),
    Everyone,
}

impl Stage {
    fn name(self) -> String {
        match self {
            Stage::Canaries => "canaries".into(),
            Stage::Wave(i) => format!("wave {}", i + 1),
            Stage::Everyone => "everyone".into(),
        }
    }
}

/// The stages of a campaign, in order.
fn stages_of(c: &CampaignManifest) -> Vec<Stage> {
    let mut v = Vec::new();
    if c.rollout.canary {
        v.push(Stage::Canaries);
    }
    if c.rollout.waves.is_empty() {
        v.push(Stage::Everyone);
    } else {
        v.extend((0..c.rollout.waves.len()).map(Stage::Wave));
    }
    v
}

/// Whether the campaign reaches devices by group alone (no attribute or inventory
/// selector), so an enrolled device can be placed without its profile.
fn selects_by_group_only(c: &CampaignManifest) -> bool {
    let a = &c.applies_to;
    a.label_lists().iter().all(|(_, l)| l.is_empty())
        && a.installed.is_empty()
        && a.not_installed.is_empty()
}

/// The stage of a device that has not reported, if the repository can tell.
fn expected_stage(c: &CampaignManifest, id: &str, a: &Assignment) -> Option<Stage> {
    if !selects_by_group_only(c) || c.rollout.has_selectors() {
        return None;
    }
    if let Some(groups) = c.target_groups() {
        if !groups.contains(&a.group) {
            return None;
        }
    }
    if c.applies_to.assigned_only && !a.campaigns.contains(&c.id) {
        return None;
    }
    if c.rollout.canary && a.canary {
        return Some(Stage::Canaries);
    }
    if c.rollout.waves.is_empty() {
        return Some(Stage::Everyone);
    }
    let profile = DeviceProfile {
        id: id.to_string(),
        ..DeviceProfile::default()
    };
    // Gates and canaries do not move a device between waves: place it as if open.
    let mut open = c.clone();
    open.rollout.gates = None;
    open.rollout.canary = false;
    match position(&open, &profile, false) {
        Position::Wave { index, .. } => Some(Stage::Wave(index)),
        _ => None,
    }
}

/// The stage a report places its device in.
fn reported_stage(c: &CampaignManifest, row: &ReportRow, canary: Option<bool>) -> Stage {
    let canary = canary.unwrap_or(row.wave.is_none() && !c.rollout.waves.is_empty());
    if c.rollout.canary && canary {
        return Stage::Canaries;
    }
    match row.wave {
        Some(w) if w >= 1 && (w as usize) <= c.rollout.waves.len() => Stage::Wave(w as usize - 1),
        _ if c.rollout.waves.is_empty() => Stage::Everyone,
        // A wave the manifest does not have (an older revision had more): the last one.
        Some(_) => Stage::Wave(c.rollout.waves.len() - 1),
        None => Stage::Wave(0),
    }
}

/// When a stage opened (`None`: not open, or not known yet), and whether it is open.
fn opening(
    c: &CampaignManifest,
    stage: Stage,
    first_canary_report: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (bool, Option<DateTime<Utc>>) {
    let r = &c.rollout;
    let not_before = c.schedule.not_before.map(|t| t.0);
    let after_nb = |t: DateTime<Utc>| not_before.map_or(t, |nb| nb.max(t));
    let gated = r.gates.is_some();
    match stage {
        Stage::Canaries => {
            let at = not_before.or(first_canary_report);
            (not_before.is_none_or(|nb| now >= nb), at)
        }
        Stage::Everyone | Stage::Wave(0) if r.canary && !r.canary_passed => (false, None),
        Stage::Everyone => {
            let at = r.opened.first().map(|t| t.0).or(not_before).map(after_nb);
            (not_before.is_none_or(|nb| now >= nb), at)
        }
        Stage::Wave(i) => {
            let start = after_nb(r.waves[i].start.0);
            let signed = r.opened.get(i).map(|t| t.0);
            let unlocked = !gated || signed.is_some() || (i == 0 && !r.canary);
            if !unlocked {
                return (false, None);
            }
            let at = match signed {
                Some(t) if gated => t.max(start),
                _ => start,
            };
            (now >= at, Some(at))
        }
    }
}

#[derive(Default)]
struct Tally {
    devices: u64,
    succeeded: u64,
    failed: u64,
    pending: u64,
    overdue: u64,
}

/// Computes the fleet view.
pub fn build(input: &FleetInput<'_>) -> FleetView {
    let now = input.now;
    // A campaign halted by its gate counts only reports from the revision after the halt.
    let counts_from: HashMap<&str, u64> = input
        .campaigns
        .iter()
        .filter_map(|c| {
            let f = c.rollout.progress.as_ref()?.counts_from_revision?;
            Some((c.id.as_str(), f))
        })
        .collect();
    // Per (campaign, device): the latest row that counts, and the first one's arrival.
    let mut latest: HashMap<(&str, &str), &ReportRow> = HashMap::new();
    let mut first_seen: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
    let mut last_contact: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for row in input.rows {
        let lc = last_contact
            .entry(row.device_id.as_str())
            .or_insert(row.received_at);
        *lc = (*lc).max(row.received_at);
        if counts_from
            .get(row.campaign.as_str())
            .is_some_and(|f| row.revision < *f)
        {
            continue;
        }
        let key = (row.campaign.as_str(), row.device_id.as_str());
        let first = first_seen.entry(key).or_insert(row.received_at);
        *first = (*first).min(row.received_at);
        match latest.get(&key) {
            Some(cur) if (cur.received_at, cur.seq) >= (row.received_at, row.seq) => {}
            _ => {
                latest.insert(key, row);
            }
        }
    }
    let mut ids: Vec<&str> = input
        .enrolled
        .iter()
        .map(|d| d.device_id.as_str())
        .chain(input.rows.iter().map(|r| r.device_id.as_str()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let assignments: HashMap<&str, Option<Assignment>> =
        ids.iter().map(|id| (*id, (input.assignment)(id))).collect();
    let enrolled: std::collections::HashSet<&str> = input
        .enrolled
        .iter()
        .map(|d| d.device_id.as_str())
        .collect();

    let mut device_campaigns: HashMap<&str, Vec<DeviceCampaign>> = HashMap::new();
    let mut campaigns = Vec::new();
    let mut manifests: Vec<&CampaignManifest> = input.campaigns.iter().collect();
    manifests.sort_by(|a, b| a.id.cmp(&b.id));
    for c in manifests {
        let stages = stages_of(c);
        let latest_of = |id: &str| latest.get(&(c.id.as_str(), id)).copied();
        let gates = c.rollout.gates.as_ref();
        // Members of each stage.
        let mut members: Vec<(Stage, &str, Option<&ReportRow>)> = Vec::new();
        let mut first_canary_report: Option<DateTime<Utc>> = None;
        for id in &ids {
            let a = assignments.get(id).and_then(|a| a.as_ref());
            match latest_of(id) {
                Some(row) => {
                    let stage = reported_stage(c, row, a.map(|a| a.canary));
                    if stage == Stage::Canaries {
                        // The earliest report of any canary: the stage has opened.
                        let first = first_seen
                            .get(&(c.id.as_str(), *id))
                            .copied()
                            .unwrap_or(row.received_at);
                        first_canary_report = Some(
                            first_canary_report.map_or(first, |t: DateTime<Utc>| t.min(first)),
                        );
                    }
                    members.push((stage, id, Some(row)));
                }
                None if enrolled.contains(id) => {
                    if let Some(stage) = a.and_then(|a| expected_stage(c, id, a)) {
                        members.push((stage, id, None));
                    }
                }
                None => {}
            }
        }
        let mut tallies: BTreeMap<Stage, Tally> = BTreeMap::new();
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let openings: BTreeMap<Stage, (bool, Option<DateTime<Utc>>)> = stages
            .iter()
            .map(|s| (*s, opening(c, *s, first_canary_report, now)))
            .collect();
        for (stage, id, row) in &members {
            let t = tallies.entry(*stage).or_default();
            t.devices += 1;
            let (open, opened_at) = openings.get(stage).copied().unwrap_or((false, None));
            let (state, reason) = match row.map(|r| r.result) {
                Some(ReportResult::Succeeded) => {
                    t.succeeded += 1;
                    ("succeeded".to_string(), String::new())
                }
                Some(ReportResult::Failed) => {
                    t.failed += 1;
                    let r = row.map(|r| r.reason.trim().to_string()).unwrap_or_default();
                    let r = if r.is_empty() {
                        "(no reason given)".to_string()
                    } else {
                        r
                    };
                    *reasons.entry(r.clone()).or_default() += 1;
                    ("failed".to_string(), r)
                }
                other => {
                    t.pending += 1;
                    let silent_since = match (opened_at, row.map(|r| r.received_at)) {
                        (Some(o), Some(r)) => Some(o.max(r)),
                        (Some(o), None) => Some(o),
                        _ => None,
                    };
                    let overdue = gates.and_then(|g| g.overdue_after_secs).and_then(|secs| {
                        let since = silent_since?;
                        let limit = chrono::Duration::seconds(i64::try_from(secs).ok()?);
                        (open && now - since > limit).then(|| {
                            format!(
                                "silent for {} (since {}; overdue after {})",
                                human_secs(u64::try_from((now - since).num_seconds()).unwrap_or(0)),
                                UtcTime(since),
                                human_secs(secs)
                            )
                        })
                    });
                    match overdue {
                        Some(why) => {
                            t.overdue += 1;
                            ("overdue".to_string(), why)
                        }
                        None => (
                            other.map_or("not_reported".to_string(), |r| r.as_str().to_string()),
                            row.map(|r| r.reason.clone()).unwrap_or_default(),
                        ),
                    }
                }
            };
            device_campaigns
                .entry(id)
                .or_default()
                .push(DeviceCampaign {
                    campaign: c.id.clone(),
                    stage: stage.name(),
                    state,
                    revision: row.map(|r| r.revision),
                    reason,
                    reported_at: row.map(|r| r.received_at),
                });
        }
        let verdict = judge(c, &stages, &tallies, &openings, now);
        let stage_views = stages
            .iter()
            .map(|s| {
                let t = tallies.remove(s).unwrap_or_default();
                let (open, opened_at) = openings[s];
                let status = stage_status(c, *s, &t, open, opened_at, now);
                StageView {
                    name: s.name(),
                    wave: match s {
                        Stage::Wave(i) => u32::try_from(i + 1).ok(),
                        _ => None,
                    },
                    open,
                    opened_at,
                    devices: t.devices,
                    succeeded: t.succeeded,
                    failed: t.failed,
                    pending: t.pending,
                    overdue: t.overdue,
                    status,
                }
            })
            .collect();
        let mut failure_reasons: Vec<ReasonCount> = reasons
            .into_iter()
            .map(|(reason, count)| ReasonCount { reason, count })
            .collect();
        failure_reasons.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
        campaigns.push(CampaignView {
            id: c.id.clone(),
            revision: c.revision,
            state: c.state,
            group: c.payload.group.as_ref().map(|g| g.id.clone()),
            gated: gates.is_some(),
            stages: stage_views,
            gate: verdict,
            failure_reasons,
        });
    }
    let devices = ids
        .iter()
        .map(|id| {
            let a = assignments.get(id).and_then(|a| a.as_ref());
            let mut cs = device_campaigns.remove(id).unwrap_or_default();
            cs.sort_by(|x, y| x.campaign.cmp(&y.campaign));
            DeviceView {
                device_id: id.to_string(),
                enrolled: enrolled.contains(id),
                group: a.map(|a| a.group.clone()),
                canary: a.is_some_and(|a| a.canary),
                last_contact: last_contact.get(id).copied(),
                installed: input.installed.get(*id).cloned().unwrap_or_default(),
                campaigns: cs,
            }
        })
        .collect();
    FleetView {
        generated_at: now,
        campaigns,
        devices,
    }
}

/// The failed count a gate judges: failed, plus overdue when the gate says so.
fn judged_failed(g: &Gates, t: &Tally) -> u64 {
    t.failed
        + if g.overdue_counts_as_failed {
            t.overdue
        } else {
            0
        }
}

/// Why a stage is failing, if it is.
fn failing(g: &Gates, stage: Stage, t: &Tally) -> Option<String> {
    let failed = judged_failed(g, t);
    let with_overdue = if g.overdue_counts_as_failed && t.overdue > 0 {
        format!(" ({} overdue counted as failed)", t.overdue)
    } else {
        String::new()
    };
    match stage {
        Stage::Canaries => (failed > g.canary_max_failed).then(|| {
            format!(
                "{failed} canary device(s) failed{with_overdue}; the gate allows {}",
                g.canary_max_failed
            )
        }),
        _ => {
            let bp = share_bp(failed, t.devices);
            (t.devices > 0 && bp > g.wave_max_failed_bp).then(|| {
                format!(
                    "{} failed {} of {} device(s) ({}){with_overdue}; the gate allows {}",
                    stage.name(),
                    failed,
                    t.devices,
                    percent(bp),
                    percent(g.wave_max_failed_bp)
                )
            })
        }
    }
}

/// Whether a stage passes (ignoring soak), and if not, why.
fn passes(g: &Gates, stage: Stage, t: &Tally) -> Result<String, String> {
    match stage {
        Stage::Canaries => {
            if t.succeeded >= g.canary_min_succeeded {
                Ok(format!(
                    "{} canary device(s) succeeded (needs {})",
                    t.succeeded, g.canary_min_succeeded
                ))
            } else {
                Err(format!(
                    "{} of {} canary device(s) succeeded; needs {}",
                    t.succeeded, t.devices, g.canary_min_succeeded
                ))
            }
        }
        _ => {
            let bp = share_bp(t.succeeded, t.devices);
            if t.devices < g.wave_min_devices.max(1) {
                Err(format!(
                    "{} counts {} device(s); the gate needs at least {} (devices count once they report, or when enrolled and placed by group and share)",
                    stage.name(),
                    t.devices,
                    g.wave_min_devices.max(1)
                ))
            } else if bp >= g.wave_min_succeeded_bp {
                Ok(format!(
                    "{} has {} succeeded ({} of {}; needs {})",
                    stage.name(),
                    percent(bp),
                    t.succeeded,
                    t.devices,
                    percent(g.wave_min_succeeded_bp)
                ))
            } else {
                Err(format!(
                    "{} has {} succeeded ({} of {}); needs {}",
                    stage.name(),
                    percent(bp),
                    t.succeeded,
                    t.devices,
                    percent(g.wave_min_succeeded_bp)
                ))
            }
        }
    }
}

/// The soak time of a stage, and what is left of it at `now` (`None`: over).
fn soak_left(
    g: &Gates,
    stage: Stage,
    opened_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<chrono::Duration> {
    let secs = match stage {
        Stage::Canaries => g.canary_soak_secs,
        _ => g.wave_soak_secs,
    };
    if secs == 0 {
        return None;
    }
    let total = chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2));
    match opened_at {
        None => Some(total),
        Some(o) => {
            let end = o + total;
            (now < end).then(|| end - now)
        }
    }
}

fn stage_status(
    c: &CampaignManifest,
    stage: Stage,
    t: &Tally,
    open: bool,
    opened_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> String {
    if !open {
        return match opened_at {
            Some(at) => format!("opens at {}", UtcTime(at)),
            None => "not open".into(),
        };
    }
    let Some(g) = &c.rollout.gates else {
        return "open".into();
    };
    if let Some(why) = failing(g, stage, t) {
        return format!("failing: {why}");
    }
    match passes(g, stage, t) {
        Err(why) => why,
        Ok(_) => match soak_left(g, stage, opened_at, now) {
            Some(left) => format!(
                "healthy; soaking, {} left",
                human_secs(u64::try_from(left.num_seconds()).unwrap_or(0))
            ),
            None => "passed".into(),
        },
    }
}

fn judge(
    c: &CampaignManifest,
    stages: &[Stage],
    tallies: &BTreeMap<Stage, Tally>,
    openings: &BTreeMap<Stage, (bool, Option<DateTime<Utc>>)>,
    now: DateTime<Utc>,
) -> GateVerdict {
    let Some(g) = &c.rollout.gates else {
        return GateVerdict {
            action: Action::NotGated,
            explanation: "no health gates: waves open at their start times".into(),
            progress: None,
        };
    };
    let empty = Tally::default();
    let tally = |s: &Stage| tallies.get(s).unwrap_or(&empty);
    let figures = |s: Stage| {
        let t = tally(&s);
        Progress {
            evaluated_at: UtcTime(now),
            stage: s.name(),
            devices: t.devices,
            succeeded: t.succeeded,
            failed: t.failed,
            overdue: t.overdue,
            counts_from_revision: c
                .rollout
                .progress
                .as_ref()
                .and_then(|p| p.counts_from_revision),
        }
    };
    if c.state != CampaignState::Active {
        return GateVerdict {
            action: Action::Stopped,
            explanation: format!("the campaign is {}; the gate leaves it alone", c.state),
            progress: None,
        };
    }
    // An open stage is one devices could act in (started, or unlocked and waiting for its
    // start): a failing one halts, whichever it is.
    let unlocked: Vec<Stage> = stages
        .iter()
        .copied()
        .filter(|s| openings[s].0 || openings[s].1.is_some() && *s != Stage::Canaries)
        .collect();
    for s in &unlocked {
        if let Some(why) = failing(g, *s, tally(s)) {
            return GateVerdict {
                action: Action::Halt,
                explanation: format!("halt: {why}"),
                progress: Some(figures(*s)),
            };
        }
    }
    let Some(last) = unlocked.last().copied() else {
        return GateVerdict {
            action: Action::Wait,
            explanation: match c.schedule.not_before {
                Some(nb) => format!("nothing is open before {nb}"),
                None => "nothing is open yet".into(),
            },
            progress: None,
        };
    };
    let next = stages.iter().copied().skip_while(|s| *s != last).nth(1);
    let Some(next) = next else {
        return GateVerdict {
            action: Action::Complete,
            explanation: "every stage is open; nothing left to open".into(),
            progress: Some(figures(last)),
        };
    };
    let (open, opened_at) = openings[&last];
    if !open {
        return GateVerdict {
            action: Action::Wait,
            explanation: format!(
                "{} is not open yet{}",
                last.name(),
                opened_at.map_or(String::new(), |t| format!(" (opens at {})", UtcTime(t)))
            ),
            progress: Some(figures(last)),
        };
    }
    match passes(g, last, tally(&last)) {
        Err(why) => GateVerdict {
            action: Action::Wait,
            explanation: format!("{} waits: {why}", next.name()),
            progress: Some(figures(last)),
        },
        Ok(why) => match soak_left(g, last, opened_at, now) {
            Some(left) => GateVerdict {
                action: Action::Wait,
                explanation: format!(
                    "{} waits: {why}, but {} soaks {} more",
                    next.name(),
                    last.name(),
                    human_secs(u64::try_from(left.num_seconds()).unwrap_or(0))
                ),
                progress: Some(figures(last)),
            },
            None => GateVerdict {
                action: match next {
                    Stage::Wave(0) | Stage::Everyone if last == Stage::Canaries => {
                        Action::PassCanaries
                    }
                    Stage::Wave(i) => Action::OpenWave {
                        wave: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    },
                    _ => Action::PassCanaries,
                },
                explanation: format!("open {}: {why}", next.name()),
                progress: Some(figures(last)),
            },
        },
    }
}

impl CampaignView {
    /// The stage by name.
    pub fn stage(&self, name: &str) -> Option<&StageView> {
        self.stages.iter().find(|s| s.name == name)
    }
}

impl FleetView {
    /// The campaign by id.
    pub fn campaign(&self, id: &str) -> Option<&CampaignView> {
        self.campaigns.iter().find(|c| c.id == id)
    }

    /// The device by id.
    pub fn device(&self, id: &str) -> Option<&DeviceView> {
        self.devices.iter().find(|d| d.device_id == id)
    }
}

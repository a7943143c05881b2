//! The decision engine: what will happen to this device, and why.
//!
//! [`decide`] is a pure function of
//!
//! * a [`RepositoryView`]: campaign manifests, the device's assignment bin and group
//!   manifest (all already verified by TUF, each with the SHA-256 of its exact bytes and the
//!   capabilities of the delegation chain that signed it), and the artifacts' signed
//!   lengths and hashes;
//! * the [`DeviceProfile`] with the device's **actual** installed inventory;
//! * the [`LocalState`] (consent records, staged items, failed attempts, revisions seen,
//!   reports sent);
//! * the current instant (the device's UTC offset is in the profile).
//!
//! It does no I/O and reads no clock, so the same inputs always give the same
//! [`Decision`]. The device agent calls it after each refresh, does what
//! [`Decision::next_action`] says, and calls it again — in particular it refreshes and
//! decides again right before installing, so a halt published meanwhile is honoured.
//!
//! For each campaign the rules are applied in this order; the first that stops the campaign
//! gives its [`Status`]:
//!
//! 1. capabilities of the signing chain → `rejected`
//! 2. revision not lower than one seen → `rejected` (rollback)
//! 3. applicability (assignment, payload group, selectors) → `not_applicable`
//! 4. state → `halted` / `cancelled`
//! 5. schedule (`not_before`, `not_after`) → `not_started` / `expired`
//! 6. group manifest available and consistent with the payload → `error` / `not_applicable`
//! 7. convergence plan against the actual inventory; nothing to do → `up_to_date`; an
//!    application-list payload must authorise every change → `not_applicable`
//! 8. forced campaigns: every installed version in the forced set → `error`
//! 9. earlier failed installs of this manifest → `error` after [`MAX_INSTALL_ATTEMPTS`]
//! 10. rollout: canaries, then the first wave whose selectors and share take the device →
//!     `waiting_for_canaries` / `waiting_for_wave` / `not_in_rollout`
//! 11. consent (declined / expired at any stage; pending or postponed before download)
//! 12. artifacts staged? else the download window → `waiting_for_download_window` /
//!     `ready_to_download`
//! 13. consent before install
//! 14. the apply window → `waiting_for_apply_window` / `ready_to_install`
//!
//! Whatever the campaign, the plan always converges the device to exactly its group's
//! tested combination: campaigns only decide whether, when and with whose consent.

pub mod applicability;
mod explain;
mod plan;
mod profile;
pub mod rollout;
mod state;
mod view;

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use plan::*;
pub use profile::*;
pub use state::*;
pub use view::*;

use crate::consent::{self, ConsentState};
use crate::manifest::{
    Assignment, ConsentPolicy, ConsentStage, ManifestHash, Method, Severity, UtcTime,
};
use applicability::match_selectors;
use rollout::{gate_condition, percent, place, position, seed_bp, wave_seed, Position};

/// Where one campaign stands for this device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// The manifest exceeds its signer's capabilities or rolls back a revision.
    Rejected {
        /// Why.
        reason: String,
    },
    /// The campaign is not for this device.
    NotApplicable {
        /// Why.
        reason: String,
    },
    /// The device already runs what the campaign delivers.
    UpToDate,
    /// Paused by the release engineer: nothing is downloaded or installed.
    Halted,
    /// Cancelled: nothing is downloaded or installed.
    Cancelled,
    /// The campaign (or the device's turn) has not started yet.
    NotStarted {
        /// When it starts.
        starts_at: DateTime<Utc>,
    },
    /// Over for this device (ended, or consent deadline passed).
    Expired {
        /// Why.
        reason: String,
    },
    /// Something is wrong; nothing is installed. Reported.
    Error {
        /// What.
        reason: String,
    },
    /// Not a canary device, and the canaries have not passed yet.
    WaitingForCanaries,
    /// No wave selects the device: its seed lies beyond the share the last wave reaches,
    /// or (when waves select by device attributes) no wave's selectors and share take it.
    NotInRollout {
        /// The device's seed in basis points.
        seed_bp: u32,
        /// The share the rollout reaches.
        covered_bp: u32,
        /// When waves select by device attributes: why no wave takes the device
        /// (`region eu-west matches no wave's regions`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_in_any_wave: Option<String>,
    },
    /// The device's wave has not opened.
    WaitingForWave {
        /// 1-based wave number.
        wave: usize,
        /// When it opens.
        opens_at: DateTime<Utc>,
    },
    /// A gated rollout: the device's wave opens only when `rollout advance` finds the
    /// stage before it healthy and signs a revision that opens it.
    WaitingForGate {
        /// 1-based wave number.
        wave: usize,
        /// What opens it, with the last signed figures
        /// (`opens when wave 1 has ≥ 95 % succeeded … (now 71 % succeeded …, signed …)`).
        gate: String,
    },
    /// Consent is needed: ask.
    WaitingForConsent {
        /// The policy.
        policy: ConsentPolicy,
        /// Before download or before install.
        stage: ConsentStage,
        /// Postponements still allowed.
        postpones_left: u32,
        /// Until when consent can be given.
        deadline: Option<DateTime<Utc>>,
    },
    /// The user postponed.
    Postponed {
        /// Ask again at.
        until: DateTime<Utc>,
        /// Postponements still allowed.
        postpones_left: u32,
    },
    /// The user declined this manifest.
    Declined {
        /// When.
        at: DateTime<Utc>,
    },
    /// Downloads are needed, outside the download window.
    WaitingForDownloadWindow {
        /// When the window opens.
        opens_at: DateTime<Utc>,
        /// Bytes to transfer then.
        bytes: u64,
    },
    /// Download these items into staging now.
    ReadyToDownload {
        /// The items.
        items: Vec<DownloadItem>,
        /// Bytes to transfer.
        bytes: u64,
    },
    /// Everything is staged; the apply window is closed.
    WaitingForApplyWindow {
        /// When the window opens.
        opens_at: DateTime<Utc>,
    },
    /// Part of the repository could not be fetched or verified this time (a network or
    /// server problem): nothing is decided on it, nothing is reported; retried.
    WaitingForRepository {
        /// What could not be read, and why.
        reason: String,
    },
    /// A device-side precondition holds the campaign back (`[inhibit]` in device.toml).
    WaitingForDevice {
        /// The precondition, in words.
        reason: String,
        /// Before download or before install.
        before: &'static str,
        /// When the campaign stops waiting for it (its `schedule.inhibit_deadline`), if it
        /// may.
        until: Option<DateTime<Utc>>,
    },
    /// Everything is staged and allowed: install the plan now.
    ReadyToInstall {
        /// When the apply window closes (`None`: no window).
        window_closes_at: Option<DateTime<Utc>>,
    },
}

impl Status {
    /// A stable short name (`ready_to_download`, …), used in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Status::Rejected { .. } => "rejected",
            Status::NotApplicable { .. } => "not_applicable",
            Status::UpToDate => "up_to_date",
            Status::Halted => "halted",
            Status::Cancelled => "cancelled",
            Status::NotStarted { .. } => "not_started",
            Status::Expired { .. } => "expired",
            Status::Error { .. } => "error",
            Status::WaitingForCanaries => "waiting_for_canaries",
            Status::NotInRollout { .. } => "not_in_rollout",
            Status::WaitingForWave { .. } => "waiting_for_wave",
            Status::WaitingForGate { .. } => "waiting_for_gate",
            Status::WaitingForConsent { .. } => "waiting_for_consent",
            Status::Postponed { .. } => "postponed",
            Status::Declined { .. } => "declined",
            Status::WaitingForDownloadWindow { .. } => "waiting_for_download_window",
            Status::ReadyToDownload { .. } => "ready_to_download",
            Status::WaitingForApplyWindow { .. } => "waiting_for_apply_window",
            Status::ReadyToInstall { .. } => "ready_to_install",
            Status::WaitingForRepository { .. } => "waiting_for_repository",
            Status::WaitingForDevice { .. } => "waiting_for_device",
        }
    }

    /// Whether the status lets the device download anything.
    pub fn allows_download(&self) -> bool {
        matches!(self, Status::ReadyToDownload { .. })
    }

    /// Whether the status lets the device install anything.
    pub fn allows_install(&self) -> bool {
        matches!(self, Status::ReadyToInstall { .. })
    }

    /// Whether nothing will change without a new manifest, new consent or a new inventory.
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            Status::Rejected { .. }
                | Status::NotApplicable { .. }
                | Status::UpToDate
                | Status::Halted
                | Status::Cancelled
                | Status::Expired { .. }
                | Status::Error { .. }
                | Status::Declined { .. }
                | Status::NotInRollout { .. }
                | Status::WaitingForCanaries
                | Status::WaitingForGate { .. }
        )
    }

    /// The instant at which the status changes by itself, if known.
    pub fn changes_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Status::NotStarted { starts_at } => Some(*starts_at),
            Status::WaitingForWave { opens_at, .. }
            | Status::WaitingForDownloadWindow { opens_at, .. }
            | Status::WaitingForApplyWindow { opens_at } => Some(*opens_at),
            Status::Postponed { until, .. } => Some(*until),
            Status::WaitingForConsent { deadline, .. } => *deadline,
            Status::ReadyToInstall { window_closes_at } => *window_closes_at,
            Status::WaitingForDevice { until, .. } => *until,
            _ => None,
        }
    }

    /// Whether a status of this kind is worth a report to the release engineers.
    pub fn is_reportable(&self) -> bool {
        matches!(
            self,
            Status::Error { .. }
                | Status::Rejected { .. }
                | Status::Declined { .. }
                | Status::Expired { .. }
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |d: &DateTime<Utc>| UtcTime(*d).to_string();
        match self {
            Status::Rejected { reason } => write!(f, "rejected: {reason}"),
            Status::NotApplicable { reason } => write!(f, "not applicable: {reason}"),
            Status::UpToDate => write!(f, "up to date: the device already runs what this campaign delivers"),
            Status::Halted => write!(f, "halted by the release engineers: nothing is downloaded or installed"),
            Status::Cancelled => write!(f, "cancelled: nothing is downloaded or installed"),
            Status::NotStarted { starts_at } => write!(f, "not started: starts at {}", t(starts_at)),
            Status::Expired { reason } => write!(f, "expired: {reason}"),
            Status::Error { reason } => write!(f, "error: {reason}; nothing is installed"),
            Status::WaitingForCanaries => write!(f, "waiting for the canary devices to pass"),
            Status::NotInRollout { not_in_any_wave: Some(why), .. } => {
                write!(f, "not in the rollout: not in any wave: {why}")
            }
            Status::NotInRollout { seed_bp, covered_bp, .. } => write!(
                f,
                "not in the rollout yet: the device's seed is at {} of the fleet, the waves reach {}",
                percent(*seed_bp),
                percent(*covered_bp)
            ),
            Status::WaitingForWave { wave, opens_at } => write!(f, "waiting for wave {wave}, which opens at {}", t(opens_at)),
            Status::WaitingForGate { wave, gate } => write!(f, "waiting for wave {wave}: {gate}"),
            Status::WaitingForConsent { policy, stage, postpones_left, deadline } => {
                write!(f, "waiting for consent ({policy}, {stage}")?;
                if policy.asks_user() {
                    write!(f, ", {postpones_left} postponement(s) left")?;
                }
                if let Some(d) = deadline {
                    write!(f, ", deadline {}", t(d))?;
                }
                write!(f, ")")
            }
            Status::Postponed { until, postpones_left } => {
                write!(f, "postponed until {} ({postpones_left} postponement(s) left)", t(until))
            }
            Status::Declined { at } => write!(f, "declined at {}; a changed campaign will ask again", t(at)),
            Status::WaitingForDownloadWindow { opens_at, bytes } => write!(
                f,
                "waiting for the download window, which opens at {} ({} to download)",
                t(opens_at),
                human_bytes(*bytes)
            ),
            Status::ReadyToDownload { items, bytes } => {
                write!(f, "ready to download {} item(s), {}", items.len(), human_bytes(*bytes))
            }
            Status::WaitingForApplyWindow { opens_at } => {
                write!(f, "staged; waiting for the apply window, which opens at {}", t(opens_at))
            }
            Status::WaitingForRepository { reason } => {
                write!(f, "waiting for the repository: {reason}; tried again at the next poll")
            }
            Status::WaitingForDevice { reason, before, until } => {
                write!(f, "waiting for the device: {reason} (checked before {before})")?;
                if let Some(u) = until {
                    write!(f, "; from {} on the campaign no longer waits", t(u))?;
                }
                Ok(())
            }
            Status::ReadyToInstall { window_closes_at } => {
                write!(f, "ready to install")?;
                if let Some(c) = window_closes_at {
                    write!(f, " (the apply window closes at {})", t(c))?;
                }
                Ok(())
            }
        }
    }
}

/// Whether a rule passed, stopped the campaign, or is just information.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The rule passed.
    Pass,
    /// The rule stopped the campaign here.
    Stop,
    /// Information.
    Note,
}

/// One line of reasoning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Pass, stop or note.
    pub verdict: Verdict,
    /// The rule (`capabilities`, `applies_to`, `consent`, …).
    pub rule: &'static str,
    /// What was found.
    pub detail: String,
}

/// The decision for one campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CampaignDecision {
    /// Campaign id.
    pub id: String,
    /// Its revision.
    pub revision: u64,
    /// Where it was published.
    pub target_path: String,
    /// SHA-256 of its exact bytes.
    pub manifest_sha256: ManifestHash,
    /// What a failed install is bound to ([`CampaignManifest::attempt_sha256`]).
    pub attempt_sha256: ManifestHash,
    /// The notice title in the device's locale, and its severity.
    pub title: Option<(String, Severity)>,
    /// Where it stands.
    pub status: Status,
    /// The plan it authorises (when evaluation got that far and there is something to do).
    pub plan: Option<Plan>,
    /// Every rule applied, in order.
    pub reasons: Vec<Reason>,
    /// Whether the status should be reported (reportable, and not already reported for
    /// this manifest).
    pub report_due: bool,
    /// When this campaign's status changes by itself, if known.
    pub wake_at: Option<DateTime<Utc>>,
}

/// What the assignment bin says about the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AssignmentOutcome {
    /// The device is assigned.
    Assigned {
        /// The bin.
        bin: String,
        /// The bin's revision.
        revision: u64,
        /// The assignment.
        group: String,
        /// Canary device?
        canary: bool,
        /// Explicit enrolments.
        campaigns: BTreeSet<String>,
    },
    /// The bin does not list the device.
    NotListed {
        /// The bin.
        bin: String,
    },
    /// No bin was available.
    Unavailable,
    /// The bin was refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// What will happen to the device, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The device.
    pub device_id: String,
    /// The instant decided at.
    pub now: DateTime<Utc>,
    /// The device's UTC offset.
    pub utc_offset_minutes: i32,
    /// The assignment.
    pub assignment: AssignmentOutcome,
    /// The device's group and revision, or why it is unknown.
    pub group: Result<(String, u64), String>,
    /// The plan converging the device to its group (`None` without a usable group).
    pub plan: Option<Plan>,
    /// One decision per campaign, by campaign id.
    pub campaigns: Vec<CampaignDecision>,
    /// Manifests that could not be used at all.
    pub unusable: Vec<(String, String)>,
    /// Staged items no live campaign needs any more (may be deleted).
    pub stale_staged: Vec<String>,
    /// Revisions to remember (the highest accepted so far), for rollback protection.
    pub observed: SeenRevisions,
    /// When to decide again at the latest (something changes by itself then).
    pub wake_at: Option<DateTime<Utc>>,
}

/// Something for the agent to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Install the plan (all or nothing). Refresh and decide again first.
    Install {
        /// The authorising campaign.
        campaign: String,
        /// Its manifest hash (compare after the re-check).
        manifest_sha256: ManifestHash,
        /// The plan.
        plan: Plan,
    },
    /// Download and verify these items into staging.
    Download {
        /// The authorising campaign.
        campaign: String,
        /// The items.
        items: Vec<DownloadItem>,
    },
    /// Send a report.
    Report {
        /// The campaign.
        campaign: String,
        /// Its manifest hash.
        manifest_sha256: ManifestHash,
        /// [`Status::kind`].
        status: &'static str,
        /// The status text.
        detail: String,
    },
    /// Show the notice and ask for consent (or wait for an administrator token).
    AskConsent {
        /// The campaign.
        campaign: String,
        /// Its manifest hash (consent is bound to its offer, `CampaignManifest::offer_sha256`).
        manifest_sha256: ManifestHash,
        /// The policy.
        policy: ConsentPolicy,
        /// Postponements left.
        postpones_left: u32,
        /// Deadline.
        deadline: Option<DateTime<Utc>>,
    },
    /// Delete staged items nothing needs.
    Discard {
        /// Their target paths.
        targets: Vec<String>,
    },
    /// Nothing to do now; decide again at `until` (or after the next refresh).
    Wait {
        /// When something changes by itself.
        until: Option<DateTime<Utc>>,
    },
}

impl Decision {
    /// The decision for campaign `id`.
    pub fn campaign(&self, id: &str) -> Option<&CampaignDecision> {
        self.campaigns.iter().find(|c| c.id == id)
    }

    /// Everything to do now, most important first: install, download, report, ask for
    /// consent, discard; or a single wait.
    pub fn actions(&self) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(c) = self.campaigns.iter().find(|c| c.status.allows_install()) {
            out.push(Action::Install {
                campaign: c.id.clone(),
                manifest_sha256: c.manifest_sha256.clone(),
                plan: c
                    .plan
                    .clone()
                    .expect("a campaign ready to install has a plan"),
            });
        }
        if let Some(c) = self.campaigns.iter().find(|c| c.status.allows_download()) {
            if let Status::ReadyToDownload { items, .. } = &c.status {
                out.push(Action::Download {
                    campaign: c.id.clone(),
                    items: items.clone(),
                });
            }
        }
        for c in self.campaigns.iter().filter(|c| c.report_due) {
            out.push(Action::Report {
                campaign: c.id.clone(),
                manifest_sha256: c.manifest_sha256.clone(),
                status: c.status.kind(),
                detail: c.status.to_string(),
            });
        }
        for c in &self.campaigns {
            if let Status::WaitingForConsent {
                policy,
                postpones_left,
                deadline,
                ..
            } = &c.status
            {
                out.push(Action::AskConsent {
                    campaign: c.id.clone(),
                    manifest_sha256: c.manifest_sha256.clone(),
                    policy: *policy,
                    postpones_left: *postpones_left,
                    deadline: *deadline,
                });
            }
        }
        if !self.stale_staged.is_empty() {
            out.push(Action::Discard {
                targets: self.stale_staged.clone(),
            });
        }
        if out.is_empty() {
            out.push(Action::Wait {
                until: self.wake_at,
            });
        }
        out
    }

    /// The most important thing to do now.
    pub fn next_action(&self) -> Action {
        self.actions()
            .into_iter()
            .next()
            .expect("actions is never empty")
    }

    /// The full reasoning as readable text: what will happen to this device, and why.
    pub fn explain(&self) -> String {
        explain::render(self)
    }
}

struct Ctx<'a> {
    view: &'a RepositoryView,
    profile: &'a DeviceProfile,
    state: &'a LocalState,
    now: DateTime<Utc>,
    assignment: Result<&'a Assignment, String>,
    group: Result<&'a GroupEntry, String>,
}

struct Trace(Vec<Reason>);

impl Trace {
    fn pass(&mut self, rule: &'static str, detail: impl Into<String>) {
        self.0.push(Reason {
            verdict: Verdict::Pass,
            rule,
            detail: detail.into(),
        });
    }
    fn stop(&mut self, rule: &'static str, detail: impl Into<String>) {
        self.0.push(Reason {
            verdict: Verdict::Stop,
            rule,
            detail: detail.into(),
        });
    }
    fn note(&mut self, rule: &'static str, detail: impl Into<String>) {
        self.0.push(Reason {
            verdict: Verdict::Note,
            rule,
            detail: detail.into(),
        });
    }
}

fn ts(t: DateTime<Utc>) -> String {
    UtcTime(t).to_string()
}

/// Decides what happens to the device. Pure: no I/O, no clock.
pub fn decide(
    view: &RepositoryView,
    profile: &DeviceProfile,
    state: &LocalState,
    now: DateTime<Utc>,
) -> Decision {
    let mut observed = state.seen.clone();

    // The assignment bin.
    let (assignment, assignment_outcome) = match &view.assignment {
        None => (
            Err("no assignment bin is available".to_string()),
            AssignmentOutcome::Unavailable,
        ),
        Some(e) => {
            let bin = &e.manifest;
            let refused = if let Err(v) = e.chain.check_assignment(bin, now) {
                Some(v.to_string())
            } else if let Some(seen) = state
                .seen
                .assign_bins
                .get(&bin.bin)
                .filter(|s| **s > bin.revision)
            {
                Some(format!(
                    "assignment bin {} revision {} is lower than revision {seen} seen before (rollback)",
                    bin.bin, bin.revision
                ))
            } else if !bin.holds(&profile.id) {
                Some(format!("bin {} is not this device's bin", bin.bin))
            } else {
                None
            };
            match refused {
                Some(reason) => (
                    Err(format!("the assignment bin was refused: {reason}")),
                    AssignmentOutcome::Refused { reason },
                ),
                None => {
                    SeenRevisions::raise(&mut observed.assign_bins, &bin.bin, bin.revision);
                    match bin.lookup(&profile.id) {
                        Some(a) => (
                            Ok(a),
                            AssignmentOutcome::Assigned {
                                bin: bin.bin.clone(),
                                revision: bin.revision,
                                group: a.group.clone(),
                                canary: a.canary,
                                campaigns: a.campaigns.clone(),
                            },
                        ),
                        None => (
                            Err(format!(
                                "assignment bin {} does not list this device",
                                bin.bin
                            )),
                            AssignmentOutcome::NotListed {
                                bin: bin.bin.clone(),
                            },
                        ),
                    }
                }
            }
        }
    };

    // The group manifest.
    let group: Result<&GroupEntry, String> = match (&assignment, &view.group) {
        (Err(e), _) => Err(e.clone()),
        (Ok(a), None) => Err(format!(
            "the manifest of group {:?} is not available",
            a.group
        )),
        (Ok(a), Some(g)) if g.manifest.id != a.group => Err(format!(
            "the group manifest at hand is for {:?}, but the device is assigned to {:?}",
            g.manifest.id, a.group
        )),
        (Ok(_), Some(g)) => {
            if let Err(v) = g.chain.check_group(&g.manifest, now) {
                Err(format!("group manifest {} was refused: {v}", g.target_path))
            } else if let Some(seen) = state
                .seen
                .groups
                .get(&g.manifest.id)
                .filter(|s| **s > g.manifest.revision)
            {
                Err(format!(
                    "group {} revision {} is lower than revision {seen} seen before (rollback)",
                    g.manifest.id, g.manifest.revision
                ))
            } else {
                SeenRevisions::raise(&mut observed.groups, &g.manifest.id, g.manifest.revision);
                Ok(g)
            }
        }
    };
    let plan = group
        .as_ref()
        .ok()
        .map(|g| converge(&g.manifest, &profile.inventory, &view.artifacts, None));

    let ctx = Ctx {
        view,
        profile,
        state,
        now,
        assignment,
        group,
    };

    let mut entries: Vec<&CampaignEntry> = view.campaigns.iter().collect();
    entries.sort_by(|a, b| {
        a.manifest
            .id
            .cmp(&b.manifest.id)
            .then(a.target_path.cmp(&b.target_path))
    });
    let mut campaigns = Vec::new();
    for e in entries {
        let d = decide_campaign(&ctx, e);
        if !matches!(d.status, Status::Rejected { .. }) {
            SeenRevisions::raise(&mut observed.campaigns, &e.manifest.id, e.manifest.revision);
        }
        campaigns.push(d);
    }

    // Staged items are needed while some campaign may still install the plan.
    let live = campaigns
        .iter()
        .any(|c| !c.status.is_settled() || matches!(c.status, Status::Halted));
    let needed: BTreeSet<&str> = match (&plan, live) {
        (Some(p), true) => p.targets().collect(),
        _ => BTreeSet::new(),
    };
    let stale_staged = state
        .staged
        .keys()
        .filter(|k| !needed.contains(k.as_str()))
        .cloned()
        .collect();
    let wake_at = campaigns.iter().filter_map(|c| c.wake_at).min();

    Decision {
        device_id: profile.id.clone(),
        now,
        utc_offset_minutes: profile.utc_offset_minutes,
        assignment: assignment_outcome,
        group: ctx
            .group
            .map(|g| (g.manifest.id.clone(), g.manifest.revision)),
        plan,
        campaigns,
        unusable: view.unusable.clone(),
        stale_staged,
        observed,
        wake_at,
    }
}

fn decide_campaign(ctx: &Ctx, e: &CampaignEntry) -> CampaignDecision {
    let mut trace = Trace(Vec::new());
    let mut plan = None;
    let mut status = evaluate(ctx, e, &mut trace, &mut plan);
    let own_part_unread = ctx
        .view
        .incomplete
        .iter()
        .any(|(p, _)| p.starts_with("assign/") || p.starts_with("groups/"));
    let blamed = matches!(status, Status::Error { .. })
        || (own_part_unread && matches!(status, Status::NotApplicable { .. }));
    if let (true, Some((path, why))) = (blamed, ctx.view.incomplete.first()) {
        // An error drawn from an incomplete view is not the campaign's: wait for the
        // repository instead of reporting a failure.
        let reason = format!("{path} could not be fetched or verified ({why})");
        trace.stop("repository", &reason);
        status = Status::WaitingForRepository { reason };
        plan = None;
    }
    let c = &e.manifest;
    // A failure already reported for this exact manifest is not reported again as the
    // error that blocks it now (one final report per attempt that failed).
    let report_due = status.is_reportable()
        && ctx.state.reports.get(&c.id).is_none_or(|r| {
            r.manifest_sha256 != e.sha256
                || (r.status != status.kind()
                    && !(r.status == "failed" && matches!(status, Status::Error { .. })))
        });
    let mut wake_at = status.changes_at().filter(|t| *t > ctx.now);
    if !status.is_settled() {
        if let Some(na) = c.schedule.not_after.map(|t| t.0).filter(|t| *t > ctx.now) {
            wake_at = Some(wake_at.map_or(na, |w| w.min(na)));
        }
    }
    CampaignDecision {
        id: c.id.clone(),
        revision: c.revision,
        target_path: e.target_path.clone(),
        manifest_sha256: e.sha256.clone(),
        attempt_sha256: c.attempt_sha256(),
        title: c
            .notice_for(ctx.profile.locale.as_deref())
            .map(|(_, n)| (n.title.clone(), n.severity)),
        status,
        plan,
        reasons: trace.0,
        report_due,
        wake_at,
    }
}

fn consent_status(cs: &ConsentState, c: &crate::manifest::CampaignManifest) -> Option<Status> {
    match cs {
        ConsentState::NotNeeded | ConsentState::Granted { .. } => None,
        ConsentState::Pending {
            postpones_left,
            deadline,
        } => Some(Status::WaitingForConsent {
            policy: c.consent.policy,
            stage: c.consent.stage,
            postpones_left: *postpones_left,
            deadline: *deadline,
        }),
        ConsentState::Postponed {
            until,
            postpones_left,
        } => Some(Status::Postponed {
            until: *until,
            postpones_left: *postpones_left,
        }),
        ConsentState::Declined { at } => Some(Status::Declined { at: *at }),
        ConsentState::Expired { deadline } => Some(Status::Expired {
            reason: format!(
                "the consent deadline {} passed without consent",
                ts(*deadline)
            ),
        }),
    }
}

fn evaluate(ctx: &Ctx, e: &CampaignEntry, tr: &mut Trace, plan_out: &mut Option<Plan>) -> Status {
    let c = &e.manifest;
    let now = ctx.now;
    let profile = ctx.profile;

    // 1. Capabilities of the signing chain.
    if let Err(v) = e.chain.check_campaign(c, now) {
        tr.stop("capabilities", v.to_string());
        return Status::Rejected {
            reason: v.to_string(),
        };
    }
    tr.pass(
        "capabilities",
        format!(
            "signed through {}; within its capabilities",
            e.chain.describe()
        ),
    );

    // 2. Rollback.
    let seen = ctx.state.seen.campaigns.get(&c.id).copied();
    if let Some(seen) = seen.filter(|s| *s > c.revision) {
        let reason = format!(
            "revision {} is lower than revision {seen} seen before (rollback)",
            c.revision
        );
        tr.stop("revision", &reason);
        return Status::Rejected { reason };
    }
    tr.pass(
        "revision",
        match seen {
            Some(s) => format!("revision {} (highest seen before: {s})", c.revision),
            None => format!("revision {}", c.revision),
        },
    );

    // 3. Applicability.
    let assignment = match &ctx.assignment {
        Ok(a) => a,
        Err(why) => {
            let reason = format!("the device has no group: {why}");
            tr.stop("assignment", &reason);
            return Status::NotApplicable { reason };
        }
    };
    if let Some(g) = &c.payload.group {
        if g.id != assignment.group {
            let reason = format!(
                "it delivers group {:?}; this device is in group {:?}",
                g.id, assignment.group
            );
            tr.stop("applies_to", &reason);
            return Status::NotApplicable { reason };
        }
    }
    match match_selectors(&c.applies_to, profile, Some(assignment), &c.id) {
        Ok(lines) if lines.is_empty() => {
            tr.pass("applies_to", "no selectors: every device of the group")
        }
        Ok(lines) => tr.pass("applies_to", lines.join("; ")),
        Err(bad) => {
            let reason = bad.join("; ");
            tr.stop("applies_to", &reason);
            return Status::NotApplicable { reason };
        }
    }

    // 4. State.
    match c.state {
        crate::manifest::CampaignState::Cancelled => {
            tr.stop("state", format!("cancelled in revision {}", c.revision));
            return Status::Cancelled;
        }
        crate::manifest::CampaignState::Halted => {
            tr.stop("state", format!("halted in revision {}", c.revision));
            return Status::Halted;
        }
        crate::manifest::CampaignState::Active => tr.pass("state", "active"),
    }

    // 5. Schedule.
    if let Some(nb) = c.schedule.not_before.map(|t| t.0).filter(|t| now < *t) {
        tr.stop("schedule", format!("starts at {}", ts(nb)));
        return Status::NotStarted { starts_at: nb };
    }
    if let Some(na) = c.schedule.not_after.map(|t| t.0).filter(|t| now >= *t) {
        let reason = format!("the campaign ended at {}", ts(na));
        tr.stop("schedule", &reason);
        return Status::Expired { reason };
    }
    match (c.schedule.not_before, c.schedule.not_after) {
        (None, None) => tr.pass("schedule", "no start or end"),
        (a, b) => tr.pass(
            "schedule",
            format!(
                "running ({} to {})",
                a.map_or("any time".into(), |t| t.to_string()),
                b.map_or("no end".into(), |t| t.to_string())
            ),
        ),
    }

    // 6. The group manifest.
    let group = match &ctx.group {
        Ok(g) => &g.manifest,
        Err(why) => {
            tr.stop("group", why);
            return Status::Error {
                reason: why.clone(),
            };
        }
    };
    if let Some(g) = &c.payload.group {
        if group.revision > g.revision {
            let reason = format!(
                "it delivers group {} revision {}, superseded by revision {}",
                g.id, g.revision, group.revision
            );
            tr.stop("group", &reason);
            return Status::NotApplicable { reason };
        }
        if group.revision < g.revision {
            let reason = format!(
                "it delivers group {} revision {}, but the repository's group manifest is revision {}",
                g.id, g.revision, group.revision
            );
            tr.stop("group", &reason);
            return Status::Error { reason };
        }
    }
    tr.pass(
        "group",
        format!(
            "group {} revision {} ({} application(s))",
            group.id,
            group.revision,
            group.apps.len()
        ),
    );

    // 7. The convergence plan.
    let plan = converge(
        group,
        &profile.inventory,
        &ctx.view.artifacts,
        c.post_install,
    );
    if plan.is_empty() {
        tr.stop(
            "plan",
            format!(
                "the actual inventory already equals group {} revision {}",
                group.id, group.revision
            ),
        );
        return Status::UpToDate;
    }
    if c.payload.group.is_none() {
        for (app, v) in &c.payload.apps {
            let problem = match group.apps.get(app) {
                None => Some(format!(
                    "it delivers {app} {v}, which group {} does not list",
                    group.id
                )),
                Some(ga) if ga.version != *v => Some(format!(
                    "it delivers {app} {v}, but group {} lists {app} {}",
                    group.id, ga.version
                )),
                Some(_) => None,
            };
            if let Some(p) = problem {
                let reason =
                    format!("{p}: installing it would leave the group's tested combination");
                tr.stop("plan", &reason);
                return Status::NotApplicable { reason };
            }
        }
        if let Some(app) = c
            .payload
            .remove
            .iter()
            .find(|a| group.apps.contains_key(*a))
        {
            let reason = format!("it removes {app}, which group {} lists", group.id);
            tr.stop("plan", &reason);
            return Status::NotApplicable { reason };
        }
        let uncovered: Vec<String> = plan
            .steps
            .iter()
            .filter(|s| match s.result_version() {
                Some(v) => c.payload.apps.get(&s.app).map(String::as_str) != Some(v),
                None => !c.payload.remove.contains(&s.app),
            })
            .map(|s| s.to_string())
            .collect();
        if !uncovered.is_empty() {
            let reason = format!(
                "converging to group {} revision {} also needs changes this campaign does not deliver: {}",
                group.id,
                group.revision,
                uncovered.join("; ")
            );
            tr.stop("plan", &reason);
            return Status::NotApplicable { reason };
        }
    }
    tr.pass(
        "plan",
        format!(
            "{} change(s) against the actual inventory: {}",
            plan.steps.len(),
            plan.steps
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    );
    *plan_out = Some(plan.clone());

    // 8. Forced campaigns: installed versions must be in the set.
    if c.method == Method::Forced {
        for (app, allowed) in &c.forced_from {
            let set = allowed
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let problem = match profile.inventory.get(app) {
                None => Some(format!("{app} is not installed")),
                Some(i) if !allowed.contains(&i.version) => {
                    Some(format!("installed {app} {} is not", i.version))
                }
                Some(_) => None,
            };
            if let Some(p) = problem {
                let reason =
                    format!("forced campaign: {p} in the set of versions it may update [{set}]");
                tr.stop("forced", &reason);
                return Status::Error { reason };
            }
        }
        tr.pass("forced", "every installed version is in the forced set");
    }

    // 9. Earlier failures.
    if let Some(a) = ctx
        .state
        .attempts
        .get(&c.id)
        .filter(|a| a.is_for(&e.sha256, &c.attempt_sha256()))
    {
        if a.after_commit {
            let reason = format!(
                "this manifest was installed and failed at {} ({}); not trying again until the campaign changes",
                ts(a.at),
                a.last_error
            );
            tr.stop("attempts", &reason);
            return Status::Error { reason };
        }
        if a.failures >= MAX_INSTALL_ATTEMPTS {
            let reason = format!(
                "{} install attempts of this manifest failed (last at {}: {}); not trying again until the campaign changes",
                a.failures,
                ts(a.at),
                a.last_error
            );
            tr.stop("attempts", &reason);
            return Status::Error { reason };
        }
        tr.note(
            "attempts",
            format!(
                "{} earlier attempt(s) failed; last: {}",
                a.failures, a.last_error
            ),
        );
    }

    // 10. Rollout.
    let pos = position(c, profile, assignment.canary);
    let seed = seed_bp(wave_seed(&profile.id, &c.id));
    // Waves that select by device attributes: which wave, and why.
    let by_selector = c.rollout.has_selectors();
    let checks = if by_selector
        && matches!(
            pos,
            Position::Wave { .. } | Position::NoWave { .. } | Position::Gated { .. }
        ) {
        place(c, profile).1
    } else {
        Vec::new()
    };
    let wave_text = |index: usize| -> String {
        format!(
            "wave {} ({}): {}",
            index + 1,
            c.rollout.waves[index].describe(),
            checks[index].why_in(seed)
        )
    };
    // The earlier waves that did not take the device, each with why.
    for (i, check) in checks.iter().enumerate().filter(|(_, k)| !k.selects()) {
        tr.note(
            "rollout",
            format!(
                "not in wave {} ({}): {}",
                i + 1,
                c.rollout.waves[i].describe(),
                check.why_not(seed)
            ),
        );
    }
    match &pos {
        Position::AfterCanaries => {
            tr.stop(
                "rollout",
                match gate_condition(c, None) {
                    Some(g) => format!("canary devices go first; the rest of the rollout {g}"),
                    None => "canary devices go first; the canaries have not passed yet".into(),
                },
            );
            return Status::WaitingForCanaries;
        }
        Position::Gated { index } => {
            let gate = gate_condition(c, Some(*index)).unwrap_or_default();
            tr.stop(
                "rollout",
                if by_selector {
                    format!("{}; it {gate}", wave_text(*index))
                } else {
                    format!(
                        "the device's seed ({}) puts it in wave {}, which {gate}",
                        percent(seed),
                        index + 1
                    )
                },
            );
            return Status::WaitingForGate {
                wave: index + 1,
                gate,
            };
        }
        Position::Beyond { covered_bp } => {
            tr.stop(
                "rollout",
                format!(
                    "the device's seed is at {}; the waves reach {}",
                    percent(seed),
                    percent(*covered_bp)
                ),
            );
            return Status::NotInRollout {
                seed_bp: seed,
                covered_bp: *covered_bp,
                not_in_any_wave: None,
            };
        }
        Position::NoWave { reason } => {
            tr.stop(
                "rollout",
                format!("not in any wave: {reason}; nothing is downloaded or installed"),
            );
            return Status::NotInRollout {
                seed_bp: seed,
                covered_bp: c
                    .rollout
                    .waves
                    .iter()
                    .map(crate::manifest::Wave::share_or_all)
                    .max()
                    .unwrap_or(0),
                not_in_any_wave: Some(reason.clone()),
            };
        }
        p if !p.is_open(now) => {
            let opens_at = p.opens_at().expect("a closed position has an opening time");
            return match p {
                Position::Wave { index, .. } => {
                    tr.stop(
                        "rollout",
                        if by_selector {
                            format!("{}; opens at {}", wave_text(*index), ts(opens_at))
                        } else {
                            format!(
                                "the device's seed ({}) puts it in wave {}, which opens at {}",
                                percent(seed),
                                index + 1,
                                ts(opens_at)
                            )
                        },
                    );
                    Status::WaitingForWave {
                        wave: index + 1,
                        opens_at,
                    }
                }
                _ => {
                    tr.stop("rollout", format!("starts at {}", ts(opens_at)));
                    Status::NotStarted {
                        starts_at: opens_at,
                    }
                }
            };
        }
        Position::Canary { .. } => tr.pass("rollout", "canary device: goes first"),
        Position::Everyone { .. } => tr.pass("rollout", "no waves: every device at once"),
        Position::Wave { index, opens_at } if by_selector => tr.pass(
            "rollout",
            format!("{}; open since {}", wave_text(*index), ts(*opens_at)),
        ),
        Position::Wave { index, opens_at } => tr.pass(
            "rollout",
            format!(
                "the device's seed ({}) puts it in wave {}, open since {}",
                percent(seed),
                index + 1,
                ts(*opens_at)
            ),
        ),
    }

    // 11. Consent (declined or expired stop at any stage).
    let (cs, notes) = consent::evaluate(
        &ctx.state.consent,
        c,
        &e.sha256,
        profile,
        Some(assignment),
        now,
    );
    for n in notes {
        tr.note("consent", n);
    }
    let blocked = consent_status(&cs, c);
    if let Some(s @ (Status::Declined { .. } | Status::Expired { .. })) = &blocked {
        tr.stop("consent", s.to_string());
        return s.clone();
    }
    match (&blocked, c.consent.stage) {
        (Some(s), ConsentStage::Download) => {
            tr.stop("consent", format!("{s}; needed before download"));
            return s.clone();
        }
        (Some(s), ConsentStage::Install) => tr.note(
            "consent",
            format!("{s}; needed before install, downloads may go ahead"),
        ),
        (None, _) => match &cs {
            ConsentState::Granted { how } => tr.pass("consent", how.clone()),
            _ => tr.pass("consent", "none needed"),
        },
    }

    // 12. Staging and the download window.
    let mut items = Vec::new();
    for s in &plan.steps {
        let Some(target) = s.target() else { continue };
        let version = s.result_version().unwrap_or_default();
        let Some(art) = ctx.view.artifacts.get(target) else {
            let reason = format!(
                "the artifact {target} of {} {version} is not in the repository",
                s.app
            );
            tr.stop("artifacts", &reason);
            return Status::Error { reason };
        };
        let staged = ctx.state.staged.get(target).is_some_and(|st| {
            st.sha256.eq_ignore_ascii_case(&art.sha256) && st.length == art.length
        });
        if staged {
            continue;
        }
        let installed = profile
            .inventory
            .get(&s.app)
            .and_then(|i| i.sha256.as_deref());
        let delta = installed.and_then(|h| {
            art.deltas
                .iter()
                .filter(|d| d.base_sha256.eq_ignore_ascii_case(h) && d.length < art.length)
                .min_by_key(|d| d.length)
                .cloned()
        });
        items.push(DownloadItem {
            app: s.app.clone(),
            version: version.to_string(),
            target: target.to_string(),
            length: art.length,
            sha256: art.sha256.clone(),
            delta,
        });
    }
    if !items.is_empty() {
        let bytes: u64 = items.iter().map(DownloadItem::transfer_bytes).sum();
        if let Some(w) = &c.schedule.download_window {
            if !w.is_open(now, profile.utc_offset_minutes) {
                let opens_at = w.next_open(now, profile.utc_offset_minutes);
                tr.stop(
                    "download_window",
                    format!(
                        "{} item(s) to download; the download window {w} (local time) opens at {}",
                        items.len(),
                        ts(opens_at)
                    ),
                );
                return Status::WaitingForDownloadWindow { opens_at, bytes };
            }
            tr.pass(
                "download_window",
                format!("the download window {w} (local time) is open"),
            );
        }
        if let Some(st) = inhibited(ctx, c, tr, "download") {
            return st;
        }
        tr.stop(
            "staging",
            format!(
                "to download: {}",
                items
                    .iter()
                    .map(|i| format!(
                        "{} ({}{})",
                        i.target,
                        human_bytes(i.transfer_bytes()),
                        if i.delta.is_some() { ", delta" } else { "" }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return Status::ReadyToDownload { items, bytes };
    }
    tr.pass(
        "staging",
        "every artifact of the plan is staged and verified",
    );

    // 13. Consent before install.
    if let Some(s) = blocked {
        tr.stop("consent", format!("{s}; needed before install"));
        return s;
    }

    // 14. The apply window.
    let mut window_closes_at = None;
    if let Some(w) = &c.schedule.apply_window {
        if !w.is_open(now, profile.utc_offset_minutes) {
            let opens_at = w.next_open(now, profile.utc_offset_minutes);
            tr.stop(
                "apply_window",
                format!(
                    "the apply window {w} (local time) opens at {}",
                    ts(opens_at)
                ),
            );
            return Status::WaitingForApplyWindow { opens_at };
        }
        window_closes_at = w.closes_at(now, profile.utc_offset_minutes);
        tr.pass(
            "apply_window",
            format!("the apply window {w} (local time) is open"),
        );
    }
    if let Some(st) = inhibited(ctx, c, tr, "install") {
        return st;
    }
    Status::ReadyToInstall { window_closes_at }
}

/// The device-side precondition rule: while the agent reports an inhibitor, nothing is
/// downloaded or installed, except that a forced campaign or one that needs no consent
/// (a safety or security fix) stops waiting once its `schedule.inhibit_deadline` has
/// passed.
fn inhibited(
    ctx: &Ctx,
    c: &crate::manifest::CampaignManifest,
    tr: &mut Trace,
    before: &'static str,
) -> Option<Status> {
    let reason = ctx.state.inhibit.as_ref()?;
    let overrides = matches!(c.method, crate::manifest::Method::Forced)
        || c.consent.policy == ConsentPolicy::None;
    let deadline = c
        .schedule
        .inhibit_deadline
        .map(|t| t.0)
        .filter(|_| overrides);
    if let Some(d) = deadline {
        if ctx.now >= d {
            tr.note(
                "inhibit",
                format!(
                    "the device says to wait ({reason}), but this campaign's inhibit deadline {} has passed",
                    ts(d)
                ),
            );
            return None;
        }
    }
    tr.stop("inhibit", format!("the device says to wait: {reason}"));
    Some(Status::WaitingForDevice {
        reason: reason.clone(),
        before,
        until: deadline,
    })
}

//! Campaign manifests: what is rolled out, to which devices, when, and with whose consent
//! (`campaigns/<campaign>.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::common::*;
use super::{Manifest, ManifestKind, Problems, ValidationError};
use crate::tuf::schema::{Key, KeyId};

/// A campaign: a notice, a consent policy, applicability, a payload, a schedule and a
/// rollout plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignManifest {
    /// Always [`ManifestKind::Campaign`].
    pub kind: ManifestKind,
    /// Always [`super::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The campaign's identifier; published as `campaigns/<id>.json`.
    pub id: String,
    /// Starts at 1 and only grows with every change (a halt is a new revision).
    pub revision: u64,
    /// Active, halted (paused: nothing new is downloaded or installed) or cancelled.
    pub state: CampaignState,
    /// `normal` (eligible devices) or `forced` (with [`CampaignManifest::forced_from`]).
    #[serde(default)]
    pub method: Method,
    /// Forced campaigns only: application id → the exact set of installed versions that may
    /// be updated. A device whose installed version is not in the set (or that lacks the
    /// application) reports an error and installs nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forced_from: BTreeMap<String, BTreeSet<String>>,
    /// The locale the device falls back to when it has no notice in its own locale.
    /// Absent: `en` if present, else the first locale in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_locale: Option<String>,
    /// Locale (`en`, `de-AT`, …) → notice shown to the device's user or administrator.
    pub notice: BTreeMap<String, Notice>,
    /// What agreement is needed, and when.
    pub consent: ConsentRule,
    /// Which devices the campaign is for. Every selector given must match.
    #[serde(default, skip_serializing_if = "Selectors::is_empty")]
    pub applies_to: Selectors,
    /// What the campaign delivers.
    pub payload: Payload,
    /// When it may run.
    #[serde(default, skip_serializing_if = "Schedule::is_empty")]
    pub schedule: Schedule,
    /// In which order devices get it.
    #[serde(default, skip_serializing_if = "Rollout::is_empty")]
    pub rollout: Rollout,
    /// Overrides the group's post-install state of every application the campaign changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_install: Option<PostInstall>,
}

/// The life-cycle state set by the release engineer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignState {
    /// Running.
    Active,
    /// Paused: nothing is downloaded or installed; staged items are kept.
    Halted,
    /// Over: nothing is downloaded or installed; staged items may be discarded.
    Cancelled,
}

impl fmt::Display for CampaignState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CampaignState::Active => "active",
            CampaignState::Halted => "halted",
            CampaignState::Cancelled => "cancelled",
        })
    }
}

/// How devices are chosen.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Devices matching the selectors.
    #[default]
    Normal,
    /// Devices matching the selectors whose installed versions are in `forced_from`;
    /// any other matching device reports an error and installs nothing.
    Forced,
}

impl Method {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Normal => "normal",
            Method::Forced => "forced",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text shown for a campaign in one locale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    /// A one-line title.
    pub title: String,
    /// The body (plain text).
    pub body: String,
    /// How important the update is.
    pub severity: Severity,
}

/// How important a campaign is, for the notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Info,
    /// Recommended.
    Recommended,
    /// Important.
    Important,
    /// Critical (safety or security).
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Recommended => "recommended",
            Severity::Important => "important",
            Severity::Critical => "critical",
        })
    }
}

/// Whose agreement a campaign needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentPolicy {
    /// Explicit agreement by the device's user; the user may decline.
    Required,
    /// The user is informed and acknowledges; the user may postpone (within the bound)
    /// but not decline, and once the deadline passes the update proceeds.
    Acknowledge,
    /// A consent token signed by one of the campaign's administrator keys, given to the
    /// device out of band.
    Administrator,
    /// No agreement (safety or security fixes).
    None,
}

impl ConsentPolicy {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentPolicy::Required => "required",
            ConsentPolicy::Acknowledge => "acknowledge",
            ConsentPolicy::Administrator => "administrator",
            ConsentPolicy::None => "none",
        }
    }

    /// Whether the device's user is asked (and may postpone).
    pub fn asks_user(self) -> bool {
        matches!(self, ConsentPolicy::Required | ConsentPolicy::Acknowledge)
    }
}

impl fmt::Display for ConsentPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When consent is needed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ConsentStage {
    /// Before anything is downloaded.
    #[default]
    Download,
    /// Downloads may happen first; consent is needed before installing.
    Install,
}

impl fmt::Display for ConsentStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsentStage::Download => "before download",
            ConsentStage::Install => "before install",
        })
    }
}

/// The consent part of a campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRule {
    /// Whose agreement is needed.
    pub policy: ConsentPolicy,
    /// Before download (default) or before install.
    #[serde(default)]
    pub stage: ConsentStage,
    /// The last instant consent can be given. After it, `required` and `administrator`
    /// campaigns expire for a device that has not agreed; `acknowledge` campaigns proceed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<UtcTime>,
    /// How many times the user may postpone (per campaign, across revisions). 0 (the
    /// default) means postponing is not offered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_postpones: u32,
    /// `administrator` only: the keys that may sign consent tokens, by key id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub administrator_keys: BTreeMap<KeyId, Key>,
    /// `administrator` only: how many distinct administrator keys must sign a token
    /// (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub administrator_threshold: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
fn one() -> u32 {
    1
}
fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Applicability: which devices a campaign (or an administrator token) is for. Every
/// non-empty selector must match; inside one list any value matches (except
/// `hardware_all`). An empty selector places no constraint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selectors {
    /// Device types (`kiosk`, `printer`, …): the device's type must be one of them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub device_types: BTreeSet<String>,
    /// Device classes.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub device_classes: BTreeSet<String>,
    /// Hardware vendors.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub vendors: BTreeSet<String>,
    /// Hardware components the device must have, all of them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub hardware_all: BTreeSet<String>,
    /// Hardware components of which the device must have at least one.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub hardware_any: BTreeSet<String>,
    /// Regions.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub regions: BTreeSet<String>,
    /// Channels (`stable`, `beta`, …).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub channels: BTreeSet<String>,
    /// Licences or products; the device must hold at least one.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub licences: BTreeSet<String>,
    /// Groups (from the device's assignment).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub groups: BTreeSet<String>,
    /// Application id → versions: the device must have each application installed, in
    /// one of the versions (an empty list means any version).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub installed: BTreeMap<String, BTreeSet<String>>,
    /// Applications the device must not have installed.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub not_installed: BTreeSet<String>,
    /// Only devices whose assignment bin entry names this campaign (explicit devices).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub assigned_only: bool,
}

impl Selectors {
    /// Whether no selector is set (every device matches).
    pub fn is_empty(&self) -> bool {
        *self == Selectors::default()
    }

    /// The plain value lists, by field name, for validation and capability checks.
    pub fn label_lists(&self) -> [(&'static str, &BTreeSet<String>); 8] {
        [
            ("device_types", &self.device_types),
            ("device_classes", &self.device_classes),
            ("vendors", &self.vendors),
            ("hardware_all", &self.hardware_all),
            ("hardware_any", &self.hardware_any),
            ("regions", &self.regions),
            ("channels", &self.channels),
            ("licences", &self.licences),
        ]
    }

    pub(crate) fn validate_into(&self, prefix: &str, p: &mut Problems) {
        for (name, list) in self.label_lists() {
            for v in list {
                p.check(format!("{prefix}.{name}"), check_label(v));
            }
        }
        for g in &self.groups {
            p.check(format!("{prefix}.groups"), check_id(g));
        }
        for (app, versions) in &self.installed {
            let f = format!("{prefix}.installed.{}", key(app));
            p.check(&f, check_id(app));
            for v in versions {
                p.check(&f, check_version(v));
            }
            if self.not_installed.contains(app) {
                p.push(
                    &f,
                    format!("{app:?} is also in not_installed; no device can match"),
                );
            }
        }
        for app in &self.not_installed {
            p.check(format!("{prefix}.not_installed"), check_id(app));
        }
    }
}

/// What a campaign delivers: a group revision, or application versions (with removals).
/// Either way the device converges to its group; the payload says which changes this
/// campaign authorises.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Deliver this revision of this group: every change that brings a device of the group
    /// to exactly that group manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRef>,
    /// Deliver these application versions (each must be the version the device's group
    /// lists).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apps: BTreeMap<String, String>,
    /// Remove these applications (the device's group must not list them).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub remove: BTreeSet<String>,
}

/// A group and one of its revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRef {
    /// The group id.
    pub id: String,
    /// The exact revision delivered.
    pub revision: u64,
}

/// When a campaign may run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Nothing happens before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<UtcTime>,
    /// Nothing happens at or after this instant (the campaign expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<UtcTime>,
    /// Daily download window in device-local time (absent: any time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_window: Option<DailyWindow>,
    /// Daily apply window in device-local time (absent: any time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_window: Option<DailyWindow>,
    /// For a forced campaign or one without consent (a safety or security fix): from this
    /// instant on, device-side preconditions (the agent's `[inhibit]`) no longer hold it
    /// back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inhibit_deadline: Option<UtcTime>,
}

impl Schedule {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Schedule::default()
    }
}

/// `1234` bp → `12.34 %`.
fn percent(bp: u32) -> String {
    if bp.is_multiple_of(100) {
        format!("{} %", bp / 100)
    } else {
        format!("{}.{:02} %", bp / 100, bp % 100)
    }
}

/// Phased rollout: canary devices first, then waves, each selecting devices by share of the
/// fleet, by device attributes (region, channel, hardware, …), or both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Canary devices (assignment entry `canary = true`) get the campaign first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canary: bool,
    /// Set (in a new revision) once the canaries report healthy: only then do the waves
    /// open for everyone else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canary_passed: bool,
    /// Waves in order. Absent: every device at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    /// Health gates: with them, the canary stage passes and each later wave opens only
    /// when `petrel-repo rollout advance` finds the stage before it healthy and signs a
    /// revision that says so ([`Rollout::opened`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Gates>,
    /// Gated rollouts: when each wave opened, in order (entry 0 is wave 1), as signed by
    /// `rollout advance`. Under gates, wave k (1-based) is open once it has an entry here
    /// and its `start` has come; wave 1 of a rollout without a canary stage needs no
    /// entry (it opens at its `start`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opened: Vec<UtcTime>,
    /// Gated rollouts: the figures behind the gate as `rollout advance` last evaluated
    /// them, so devices can say what they wait for. Informational: a revision that changes
    /// only these figures is not a new attempt for a device whose install failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// The health gates of a rollout (`[rollout.gates]`): when the canary stage passes, when
/// a wave counts as healthy, and when silent devices count as overdue.
///
/// A stage's devices are the devices that reported about the campaign from it (canaries
/// flag their reports; other devices report their wave), plus, when the repository can
/// place them without their attributes, the enrolled devices assigned to the campaign's
/// group. Only `succeeded` counts as a success, and a device reports it only after its
/// health check passed (after the reboot, for a new system image).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// The canary stage passes once at least this many canaries succeeded.
    #[serde(default = "one_u64")]
    pub canary_min_succeeded: u64,
    /// … and no more than this many failed (more halts the campaign).
    #[serde(default)]
    pub canary_max_failed: u64,
    /// … and this many seconds have passed since the canary stage opened.
    #[serde(default)]
    pub canary_soak_secs: u64,
    /// The next wave opens once this share (basis points) of a wave's devices succeeded.
    #[serde(default = "default_min_succeeded_bp")]
    pub wave_min_succeeded_bp: u32,
    /// … counted over at least this many devices of the wave (default 1): a wave no
    /// device has reported from yet never passes.
    #[serde(default = "one_u64")]
    pub wave_min_devices: u64,
    /// A wave whose failed share (basis points) is above this halts the campaign.
    #[serde(default = "default_max_failed_bp")]
    pub wave_max_failed_bp: u32,
    /// … and this many seconds have passed since the wave opened.
    #[serde(default)]
    pub wave_soak_secs: u64,
    /// A device of an open stage without a final report that has been silent this many
    /// seconds (since the stage opened, or since its last report if later) is overdue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_after_secs: Option<u64>,
    /// Overdue devices count as failed for the gate (else they only keep it from passing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdue_counts_as_failed: bool,
}

fn one_u64() -> u64 {
    1
}
fn default_min_succeeded_bp() -> u32 {
    9_500
}
fn default_max_failed_bp() -> u32 {
    500
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            canary_min_succeeded: 1,
            canary_max_failed: 0,
            canary_soak_secs: 0,
            wave_min_succeeded_bp: default_min_succeeded_bp(),
            wave_min_devices: 1,
            wave_max_failed_bp: default_max_failed_bp(),
            wave_soak_secs: 0,
            overdue_after_secs: None,
            overdue_counts_as_failed: false,
        }
    }
}

/// The figures `rollout advance` signed with its last evaluation of a gated rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// When the figures were evaluated.
    pub evaluated_at: UtcTime,
    /// The stage whose gate decides what opens next: `canaries` or `wave N`.
    pub stage: String,
    /// Devices counted in that stage.
    pub devices: u64,
    /// Of them, succeeded.
    pub succeeded: u64,
    /// Of them, failed.
    pub failed: u64,
    /// Of them, overdue.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub overdue: u64,
    /// Set when `rollout advance` halted the campaign: only reports about this revision or
    /// a later one count, so a resumed campaign is judged on what happened since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts_from_revision: Option<u64>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Progress {
    /// Whether `other` has the same figures (the evaluation time aside).
    pub fn same_figures(&self, other: &Progress) -> bool {
        (
            &self.stage,
            self.devices,
            self.succeeded,
            self.failed,
            self.overdue,
            self.counts_from_revision,
        ) == (
            &other.stage,
            other.devices,
            other.succeeded,
            other.failed,
            other.overdue,
            other.counts_from_revision,
        )
    }

    /// The succeeded share in basis points (0 with no device).
    pub fn succeeded_bp(&self) -> u32 {
        share_bp(self.succeeded, self.devices)
    }
}

/// `part / whole` in basis points, rounded down (0 when `whole` is 0).
pub fn share_bp(part: u64, whole: u64) -> u32 {
    if whole == 0 {
        0
    } else {
        ((part.min(whole) as u128 * FLEET_BP as u128) / whole as u128) as u32
    }
}

impl Rollout {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Rollout::default()
    }

    /// Whether some wave selects devices by their attributes (not only by share).
    pub fn has_selectors(&self) -> bool {
        self.waves.iter().any(Wave::has_selectors)
    }
}

/// Basis points in a whole fleet (100 % = 10 000 bp).
pub const FLEET_BP: u32 = 10_000;

/// One wave. A device belongs to the first wave that selects it: every selector the wave
/// sets matches the device (with the same rules as the campaign's `applies_to`), and, if
/// the wave sets `share_bp`, the device's seed falls below it. The wave opens at `start`.
///
/// A wave with neither selectors nor a share (or with the share 10 000 and no selectors)
/// selects every device no earlier wave selected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// The cumulative share of the fleet (among the devices the wave's selectors match)
    /// reached by the end of this wave, in basis points (100 = 1 %, 10 000 = every
    /// device). Absent: every device the selectors match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_bp: Option<u32>,
    /// When the wave opens.
    pub start: UtcTime,
    /// Device types: the device's type must be one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_types: Option<BTreeSet<String>>,
    /// Device classes: the device's class must be one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_classes: Option<BTreeSet<String>>,
    /// Hardware vendors: the device's vendor must be one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendors: Option<BTreeSet<String>>,
    /// Hardware components the device must have, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_all: Option<BTreeSet<String>>,
    /// Hardware components of which the device must have at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_any: Option<BTreeSet<String>>,
    /// Regions: the device's region must be one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<BTreeSet<String>>,
    /// Channels: the device's channel must be one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<BTreeSet<String>>,
    /// Licences or products; the device must hold at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licences: Option<BTreeSet<String>>,
}

impl Wave {
    /// A wave by share only (what every wave was before waves had selectors).
    pub fn share(share_bp: u32, start: impl Into<UtcTime>) -> Wave {
        Wave {
            share_bp: Some(share_bp),
            ..Wave::at(start)
        }
    }

    /// A wave opening at `start` with no selectors and no share: every device not in an
    /// earlier wave.
    pub fn at(start: impl Into<UtcTime>) -> Wave {
        Wave {
            share_bp: None,
            start: start.into(),
            device_types: None,
            device_classes: None,
            vendors: None,
            hardware_all: None,
            hardware_any: None,
            regions: None,
            channels: None,
            licences: None,
        }
    }

    /// The selector lists by field name, in the order they are matched and shown.
    pub fn selector_lists(&self) -> [(&'static str, Option<&BTreeSet<String>>); 8] {
        [
            ("device_types", self.device_types.as_ref()),
            ("device_classes", self.device_classes.as_ref()),
            ("vendors", self.vendors.as_ref()),
            ("hardware_all", self.hardware_all.as_ref()),
            ("hardware_any", self.hardware_any.as_ref()),
            ("regions", self.regions.as_ref()),
            ("channels", self.channels.as_ref()),
            ("licences", self.licences.as_ref()),
        ]
    }

    /// Whether the wave sets any selector.
    pub fn has_selectors(&self) -> bool {
        self.selector_lists().iter().any(|(_, l)| l.is_some())
    }

    /// The share the wave reaches: `share_bp`, or the whole fleet.
    pub fn share_or_all(&self) -> u32 {
        self.share_bp.unwrap_or(FLEET_BP)
    }

    /// Whether the wave takes every device no earlier wave took (no selectors, whole share).
    pub fn is_catch_all(&self) -> bool {
        !self.has_selectors() && self.share_or_all() >= FLEET_BP
    }

    /// The wave's selectors as campaign [`Selectors`], so that a wave is matched by exactly
    /// the code and rules that match `applies_to`.
    pub fn selectors(&self) -> Selectors {
        let get = |l: &Option<BTreeSet<String>>| l.clone().unwrap_or_default();
        Selectors {
            device_types: get(&self.device_types),
            device_classes: get(&self.device_classes),
            vendors: get(&self.vendors),
            hardware_all: get(&self.hardware_all),
            hardware_any: get(&self.hardware_any),
            regions: get(&self.regions),
            channels: get(&self.channels),
            licences: get(&self.licences),
            ..Selectors::default()
        }
    }

    /// Whether every device `later` selects is selected by `self` (`self` coming first, so
    /// that `later` can never select a device). Sound, not complete: a wave covered only by
    /// several earlier waves together is not detected.
    pub fn covers(&self, later: &Wave) -> bool {
        if self.share_or_all() < later.share_or_all() {
            return false;
        }
        self.selector_lists()
            .into_iter()
            .zip(later.selector_lists())
            .all(|((name, mine), (_, theirs))| match (mine, theirs) {
                (None, _) => true,
                (Some(_), None) => false,
                // All of: a device with every component of the later list has ours.
                (Some(m), Some(t)) if name == "hardware_all" => m.is_subset(t),
                // One of: a device with one of the later values has one of ours.
                (Some(m), Some(t)) => t.is_subset(m),
            })
    }

    /// The selectors and share in words: `regions: eu-central, eu-west; share 10 %`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .selector_lists()
            .into_iter()
            .filter_map(|(name, l)| {
                l.map(|l| {
                    format!(
                        "{name}: {}",
                        l.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect();
        if let Some(bp) = self.share_bp {
            parts.push(format!("share {}", percent(bp)));
        }
        if parts.is_empty() {
            parts.push("every remaining device".into());
        }
        parts.join("; ")
    }
}

impl CampaignManifest {
    /// The target path this manifest is published under.
    pub fn target_path(&self) -> String {
        campaign_target_path(&self.id)
    }

    /// The notice for `locale`: the exact locale, then its language (`de` for `de-AT`),
    /// then the default locale, then `en`, then the first one. Returns the locale used.
    pub fn notice_for(&self, locale: Option<&str>) -> Option<(&str, &Notice)> {
        let mut tries: Vec<&str> = Vec::new();
        if let Some(l) = locale {
            tries.push(l);
            if let Some((lang, _)) = l.split_once(['-', '_']) {
                tries.push(lang);
            }
        }
        if let Some(d) = &self.default_locale {
            tries.push(d);
        }
        tries.push("en");
        for t in tries {
            if let Some((k, n)) = self.notice.get_key_value(t) {
                return Some((k.as_str(), n));
            }
        }
        self.notice.iter().next().map(|(k, n)| (k.as_str(), n))
    }

    /// The groups this campaign can reach: the payload's group and/or the `groups`
    /// selector. `None` means every group.
    pub fn target_groups(&self) -> Option<BTreeSet<String>> {
        let mut groups = self
            .payload
            .group
            .as_ref()
            .map(|g| BTreeSet::from([g.id.clone()]));
        if !self.applies_to.groups.is_empty() {
            groups = Some(match groups {
                Some(g) => g.intersection(&self.applies_to.groups).cloned().collect(),
                None => self.applies_to.groups.clone(),
            });
        }
        groups
    }
}

/// The `kind` of a campaign offer: never a manifest kind, so the canonical bytes of an offer
/// are never those of a manifest, and an offer hash is never a manifest hash.
pub const CAMPAIGN_OFFER_KIND: &str = "campaign-offer";

/// What a consent answer agrees to: the projection of a campaign manifest onto the fields
/// that change what the device's user (or administrator) is asked to accept. Consent records
/// are bound to the SHA-256 of its canonical JSON ([`CampaignManifest::offer_sha256`]).
///
/// | in the offer | why |
/// | --- | --- |
/// | `id`, `schema_version` | which campaign, read by which rules |
/// | `notice`, `default_locale` | the text shown (every locale, title, body, severity, and which one is the fallback) |
/// | `payload`, `post_install` | what is installed or removed, and what the applications do afterwards |
/// | `consent.policy`, `consent.stage`, `consent.administrator_keys`, `consent.administrator_threshold` | whose agreement, and whether it comes before download or before install |
/// | `method`, `forced_from` | whether the update is forced, and on which installed versions |
///
/// Everything else (`revision`, `state`, `schedule`, `rollout`, `applies_to`,
/// `consent.deadline`, `consent.max_postpones`) decides when and where the same offer is
/// made, not what it is: a new revision that changes only those keeps the consent given.
/// Fields at their default are omitted, as in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignOffer {
    /// Always [`CAMPAIGN_OFFER_KIND`].
    pub kind: String,
    /// The manifest's schema version.
    pub schema_version: u32,
    /// The campaign.
    pub id: String,
    /// `normal` or `forced`.
    pub method: Method,
    /// Forced campaigns: the installed versions that may be updated.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forced_from: BTreeMap<String, BTreeSet<String>>,
    /// The fallback notice locale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_locale: Option<String>,
    /// Every notice.
    pub notice: BTreeMap<String, Notice>,
    /// Whose agreement, and when.
    pub consent: OfferConsent,
    /// What is delivered.
    pub payload: Payload,
    /// The post-install state the campaign imposes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_install: Option<PostInstall>,
}

/// The consent part of a [`CampaignOffer`]: the policy and its stage, and for an
/// `administrator` policy the keys and threshold (who may agree).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferConsent {
    /// Whose agreement is needed.
    pub policy: ConsentPolicy,
    /// Before download or before install.
    pub stage: ConsentStage,
    /// `administrator` only: the keys that may sign consent tokens.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub administrator_keys: BTreeMap<KeyId, Key>,
    /// `administrator` only: signatures needed (omitted when 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub administrator_threshold: u32,
}

impl CampaignOffer {
    /// The offer's canonical bytes ([`super::canonical_json`], the rules the manifest
    /// bytes follow).
    pub fn to_canonical_json(&self) -> Vec<u8> {
        super::canonical_json(self).expect("an offer has no floats")
    }

    /// SHA-256 of [`CampaignOffer::to_canonical_json`].
    pub fn sha256(&self) -> OfferHash {
        OfferHash::of(&self.to_canonical_json())
    }
}

impl CampaignManifest {
    /// The offer: what a consent answer to this manifest agrees to (see [`CampaignOffer`]).
    pub fn offer(&self) -> CampaignOffer {
        CampaignOffer {
            kind: CAMPAIGN_OFFER_KIND.to_string(),
            schema_version: self.schema_version,
            id: self.id.clone(),
            method: self.method,
            forced_from: self.forced_from.clone(),
            default_locale: self.default_locale.clone(),
            notice: self.notice.clone(),
            consent: OfferConsent {
                policy: self.consent.policy,
                stage: self.consent.stage,
                administrator_keys: self.consent.administrator_keys.clone(),
                administrator_threshold: self.consent.administrator_threshold,
            },
            payload: self.payload.clone(),
            post_install: self.post_install,
        }
    }

    /// SHA-256 of the canonical JSON of [`CampaignManifest::offer`]: what consent is bound
    /// to.
    pub fn offer_sha256(&self) -> OfferHash {
        self.offer().sha256()
    }

    /// What a failed install attempt is bound to: the SHA-256 of the canonical manifest
    /// without its revision number and the bookkeeping of its health gates (`canary_passed`,
    /// `rollout.opened`, `rollout.progress`). A device whose install of the campaign failed
    /// tries again only when something else changes (the payload, the notice, the
    /// schedule, the state, …), not because `rollout advance` signed new figures or opened
    /// a later wave.
    pub fn attempt_sha256(&self) -> ManifestHash {
        let mut c = self.clone();
        c.revision = 0;
        c.rollout.canary_passed = false;
        c.rollout.opened.clear();
        c.rollout.progress = None;
        ManifestHash::of(&super::canonical_json(&c).expect("a manifest has no floats"))
    }
}

/// `campaigns/<id>.json`.
pub fn campaign_target_path(id: &str) -> String {
    format!("campaigns/{id}.json")
}

impl Manifest for CampaignManifest {
    const KIND: ManifestKind = ManifestKind::Campaign;

    fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems::new();
        p.check_header(Self::KIND, self.kind, self.schema_version);
        p.check("id", check_id(&self.id));
        if self.revision == 0 {
            p.push("revision", "must be at least 1");
        }

        // Method.
        match self.method {
            Method::Forced if self.forced_from.is_empty() => p.push(
                "forced_from",
                "a forced campaign must list the installed versions it may update",
            ),
            Method::Normal if !self.forced_from.is_empty() => p.push(
                "forced_from",
                "only a forced campaign carries forced_from (set method = \"forced\")",
            ),
            _ => {}
        }
        if self.schedule.inhibit_deadline.is_some()
            && self.method != Method::Forced
            && self.consent.policy != ConsentPolicy::None
        {
            p.push(
                "schedule.inhibit_deadline",
                "only a forced campaign or one without consent (policy \"none\") may override the device's preconditions",
            );
        }
        if let (Some(d), Some(na)) = (self.schedule.inhibit_deadline, self.schedule.not_after) {
            if d.0 >= na.0 {
                p.push(
                    "schedule.inhibit_deadline",
                    "must be before schedule.not_after",
                );
            }
        }
        for (app, versions) in &self.forced_from {
            let f = format!("forced_from.{}", key(app));
            p.check(&f, check_id(app));
            if versions.is_empty() {
                p.push(&f, "an empty set would make every device fail; list the versions that may be updated");
            }
            for v in versions {
                p.check(&f, check_version(v));
            }
        }

        // Notice.
        if self.notice.is_empty() {
            p.push("notice", "at least one locale is needed");
        }
        for (locale, n) in &self.notice {
            let f = format!("notice.{}", key(locale));
            p.check(&f, check_locale(locale));
            if n.title.trim().is_empty() {
                p.push(format!("{f}.title"), "must not be empty");
            } else if n.title.len() > 200 || n.title.contains('\n') {
                p.push(
                    format!("{f}.title"),
                    "must be one line of at most 200 bytes",
                );
            }
            if n.body.len() > 16 * 1024 {
                p.push(format!("{f}.body"), "longer than 16 KiB");
            }
        }
        if let Some(d) = &self.default_locale {
            if !self.notice.contains_key(d) {
                p.push("default_locale", format!("{d:?} has no notice"));
            }
        }

        // Consent.
        let c = &self.consent;
        match c.policy {
            ConsentPolicy::Administrator => {
                if c.administrator_keys.is_empty() {
                    p.push(
                        "consent.administrator_keys",
                        "an administrator policy needs at least one key",
                    );
                }
                if c.administrator_threshold == 0
                    || c.administrator_threshold as usize > c.administrator_keys.len().max(1)
                {
                    p.push(
                        "consent.administrator_threshold",
                        format!(
                            "{} is impossible with {} key(s)",
                            c.administrator_threshold,
                            c.administrator_keys.len()
                        ),
                    );
                }
            }
            _ => {
                if !c.administrator_keys.is_empty() {
                    p.push(
                        "consent.administrator_keys",
                        "only an administrator policy names keys",
                    );
                }
                if c.administrator_threshold != 1 {
                    p.push(
                        "consent.administrator_threshold",
                        "only an administrator policy has a threshold",
                    );
                }
            }
        }
        for (id, k) in &c.administrator_keys {
            let f = format!("consent.administrator_keys.{}", key(&id.0));
            if !k.is_supported() {
                p.push(
                    &f,
                    format!(
                        "unsupported key type {:?} / scheme {:?}",
                        k.keytype, k.scheme
                    ),
                );
            } else if k.key_id() != *id {
                p.push(&f, format!("the key's id is {}, not {id}", k.key_id()));
            }
        }
        if !c.policy.asks_user() && c.max_postpones > 0 {
            p.push(
                "consent.max_postpones",
                format!(
                    "a {:?} policy does not ask the device's user, so nothing can be postponed",
                    c.policy.as_str()
                ),
            );
        }
        if c.policy == ConsentPolicy::None && c.deadline.is_some() {
            p.push(
                "consent.deadline",
                "a campaign that needs no consent has no consent deadline",
            );
        }
        if c.max_postpones > 1000 {
            p.push("consent.max_postpones", "more than 1000");
        }

        // Applicability and payload.
        self.applies_to.validate_into("applies_to", &mut p);
        let pl = &self.payload;
        match (&pl.group, pl.apps.is_empty() && pl.remove.is_empty()) {
            (None, true) => p.push("payload", "needs a group revision or application versions"),
            (Some(_), false) => {
                p.push("payload", "a group payload cannot also list apps or remove")
            }
            _ => {}
        }
        if let Some(g) = &pl.group {
            p.check("payload.group.id", check_id(&g.id));
            if g.revision == 0 {
                p.push("payload.group.revision", "must be at least 1");
            }
            if !self.applies_to.groups.is_empty() && !self.applies_to.groups.contains(&g.id) {
                p.push(
                    "applies_to.groups",
                    format!(
                        "does not include the payload's group {:?}; no device could match",
                        g.id
                    ),
                );
            }
        }
        for (app, v) in &pl.apps {
            let f = format!("payload.apps.{}", key(app));
            p.check(&f, check_id(app));
            p.check(&f, check_version(v));
            if pl.remove.contains(app) {
                p.push(&f, "is also in payload.remove");
            }
        }
        for app in &pl.remove {
            p.check("payload.remove", check_id(app));
        }

        // Schedule.
        let s = &self.schedule;
        if let (Some(a), Some(b)) = (s.not_before, s.not_after) {
            if a >= b {
                p.push(
                    "schedule.not_after",
                    format!("{b} is not after not_before {a}"),
                );
            }
        }
        p.check(
            "schedule.download_window",
            validate_window(&s.download_window),
        );
        p.check("schedule.apply_window", validate_window(&s.apply_window));
        if let (Some(d), Some(na)) = (c.deadline, s.not_after) {
            if d > na {
                p.push(
                    "consent.deadline",
                    format!("{d} is after the campaign ends (schedule.not_after {na})"),
                );
            }
        }

        // Rollout.
        let r = &self.rollout;
        if r.canary_passed && !r.canary {
            p.push(
                "rollout.canary_passed",
                "set without a canary stage (rollout.canary)",
            );
        }
        for (i, w) in r.waves.iter().enumerate() {
            validate_wave(i, w, &r.waves[..i], &self.applies_to, &mut p);
        }
        if let Some(g) = &r.gates {
            for (f, bp) in [
                ("wave_min_succeeded_bp", g.wave_min_succeeded_bp),
                ("wave_max_failed_bp", g.wave_max_failed_bp),
            ] {
                if bp > FLEET_BP {
                    p.push(
                        format!("rollout.gates.{f}"),
                        format!("{bp} is not in 0..=10000 (basis points of the wave)"),
                    );
                }
            }
            if r.canary && g.canary_min_succeeded == 0 {
                p.push(
                    "rollout.gates.canary_min_succeeded",
                    "0 passes the canary stage without any canary; set at least 1",
                );
            }
            if g.overdue_counts_as_failed && g.overdue_after_secs.is_none() {
                p.push(
                    "rollout.gates.overdue_counts_as_failed",
                    "set without overdue_after_secs (when a device counts as overdue)",
                );
            }
            if g.overdue_after_secs == Some(0) {
                p.push(
                    "rollout.gates.overdue_after_secs",
                    "0 makes every device overdue at once; leave it out or give seconds",
                );
            }
        } else {
            if !r.opened.is_empty() {
                p.push(
                    "rollout.opened",
                    "set without rollout.gates (only gated rollouts open waves one by one)",
                );
            }
            if r.progress.is_some() {
                p.push("rollout.progress", "set without rollout.gates");
            }
        }
        // Without waves, one entry: when everyone's stage opened after the canaries.
        if r.opened.len() > r.waves.len().max(1) {
            p.push(
                "rollout.opened",
                format!(
                    "{} entries for {} wave(s): one opening time per wave at most",
                    r.opened.len(),
                    r.waves.len()
                ),
            );
        }
        if r.opened.windows(2).any(|w| w[1] < w[0]) {
            p.push(
                "rollout.opened",
                "opening times must not decrease (waves open in order)",
            );
        }
        if r.gates.is_some() && r.canary && !r.canary_passed && !r.opened.is_empty() {
            p.push(
                "rollout.opened",
                "waves opened while the canary stage has not passed (set canary_passed)",
            );
        }
        if r.waves.len() > 100 {
            p.push("rollout.waves", "more than 100 waves");
        }
        p.finish("campaign manifest")
    }
}

/// The rules for wave `i` (0-based) of a rollout, given the waves before it.
fn validate_wave(i: usize, w: &Wave, earlier: &[Wave], applies_to: &Selectors, p: &mut Problems) {
    let f = format!("rollout.waves[{i}]");
    let n = i + 1;
    if let Some(bp) = w.share_bp {
        if bp == 0 || bp > FLEET_BP {
            p.push(
                format!("{f}.share_bp"),
                format!("{bp} is not in 1..=10000 (basis points of the fleet)"),
            );
        }
    }
    let campaign_lists = applies_to.label_lists();
    for ((name, list), (_, campaign)) in w.selector_lists().into_iter().zip(campaign_lists) {
        let Some(list) = list else { continue };
        if list.is_empty() {
            p.push(
                format!("{f}.{name}"),
                format!("an empty list selects no device; leave {name} out to select by other attributes (or by share only)"),
            );
        }
        for v in list {
            p.check(format!("{f}.{name}"), check_label(v));
        }
        // A one-of list disjoint from the campaign's own: no device the campaign is for
        // can be in the wave.
        let one_of = !matches!(name, "hardware_all" | "hardware_any" | "licences");
        if one_of && !list.is_empty() && !campaign.is_empty() && list.is_disjoint(campaign) {
            p.push(
                format!("{f}.{name}"),
                format!(
                    "wave {n} can never select a device: none of its {name} is in applies_to.{name} [{}]",
                    campaign.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    let Some(prev) = earlier.last() else { return };
    if w.start < prev.start {
        p.push(
            format!("{f}.start"),
            format!(
                "{} is before the previous wave's start {} (waves open in order)",
                w.start, prev.start
            ),
        );
    }
    // Waves by share only: shares are cumulative, so each must reach further.
    if let (false, false, Some(bp), Some(prev_bp)) = (
        w.has_selectors(),
        prev.has_selectors(),
        w.share_bp,
        prev.share_bp,
    ) {
        if bp <= prev_bp {
            p.push(
                format!("{f}.share_bp"),
                format!(
                    "{bp} must be larger than the previous wave's {prev_bp} (shares are cumulative)"
                ),
            );
            return;
        }
    }
    if let Some((j, by)) = earlier.iter().enumerate().find(|(_, e)| e.covers(w)) {
        let m = j + 1;
        let why = if by.is_catch_all() {
            format!(
                "wave {m} has no selectors and no share limit, so it takes every device no earlier wave took"
            )
        } else {
            format!(
                "wave {m} ({}) comes first and takes every device wave {n} ({}) would select",
                by.describe(),
                w.describe()
            )
        };
        p.push(
            f,
            format!("wave {n} is unreachable: {why}; move wave {n} before wave {m}, narrow wave {m}, or remove wave {n}"),
        );
    }
}

/// Checks a locale tag: a 2–3 letter language, optionally `-` and a region or script
/// (`en`, `de-AT`, `zh-Hant`).
pub fn check_locale(s: &str) -> Result<(), String> {
    let ok = |part: &str, min, max| {
        (min..=max).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    let mut parts = s.split('-');
    let lang = parts.next().unwrap_or("");
    let valid = ok(lang, 2, 3)
        && lang.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| ok(p, 2, 8));
    if !valid {
        return Err(format!("{s:?} is not a locale such as \"en\" or \"de-AT\""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
kind = "campaign"
schema_version = 1
id = "player-2.1"
revision = 3
state = "active"

[notice.en]
title = "Player 2.1"
body = "Faster start-up."
severity = "recommended"

[notice.de]
title = "Player 2.1"
body = "Schnellerer Start."
severity = "recommended"

[consent]
policy = "required"
stage = "install"
deadline = 2030-04-01T00:00:00Z
max_postpones = 3

[applies_to]
device_types = ["kiosk"]
hardware_all = ["display:1080p"]
installed = { "acme.player" = ["2.0.0", "2.0.1"] }

[payload]
group = { id = "kiosk-eu", revision = 8 }

[schedule]
not_before = "2030-03-01T00:00:00Z"
not_after = "2030-05-01T00:00:00Z"
download_window = { start = "01:00", end = "05:00" }
apply_window = { start = "23:30", end = "00:30" }

[rollout]
canary = true
canary_passed = true
waves = [
  { share_bp = 100, start = "2030-03-02T00:00:00Z" },
  { share_bp = 10000, start = "2030-03-09T00:00:00Z" },
]
"#;

    #[test]
    fn parses_and_round_trips() {
        let c = CampaignManifest::from_toml(GOOD).unwrap();
        assert_eq!(c.consent.stage, ConsentStage::Install);
        assert!(c.schedule.apply_window.unwrap().wraps_midnight());
        let json = c.to_canonical_json().unwrap();
        let again = CampaignManifest::from_json(&json).unwrap();
        assert_eq!(again, c);
        assert_eq!(again.to_canonical_json().unwrap(), json);
        assert_eq!(c.notice_for(Some("de-AT")).unwrap().0, "de");
        assert_eq!(c.notice_for(Some("fr")).unwrap().0, "en");
    }

    #[test]
    fn forced_needs_its_set_and_normal_refuses_one() {
        let forced = GOOD.replace(
            "state = \"active\"",
            "state = \"active\"\nmethod = \"forced\"",
        );
        let e = CampaignManifest::from_toml(&forced).unwrap_err();
        assert!(e.has_field("forced_from"), "{e}");
        let ok = forced.replace(
            "[notice.en]",
            "[forced_from]\n\"acme.player\" = [\"2.0.0\"]\n\n[notice.en]",
        );
        CampaignManifest::from_toml(&ok).unwrap();
        let normal = GOOD.replace(
            "[notice.en]",
            "[forced_from]\n\"acme.player\" = [\"2.0.0\"]\n\n[notice.en]",
        );
        assert!(CampaignManifest::from_toml(&normal)
            .unwrap_err()
            .has_field("forced_from"));
    }

    #[test]
    fn local_datetimes_are_refused() {
        let bad = GOOD.replace("2030-04-01T00:00:00Z", "2030-04-01T00:00:00");
        let e = CampaignManifest::from_toml(&bad).unwrap_err();
        assert!(e.to_string().contains("no UTC offset"), "{e}");
    }

    #[test]
    fn wave_rules() {
        let bad = GOOD.replace("share_bp = 10000", "share_bp = 50");
        assert!(CampaignManifest::from_toml(&bad)
            .unwrap_err()
            .has_field("rollout.waves[1].share_bp"));
        let bad = GOOD.replace("2030-03-09T00:00:00Z", "2030-03-01T00:00:00Z");
        assert!(CampaignManifest::from_toml(&bad)
            .unwrap_err()
            .has_field("rollout.waves[1].start"));
    }

    #[test]
    fn postpones_need_a_user_to_ask() {
        let bad = GOOD.replace("policy = \"required\"", "policy = \"none\"");
        let e = CampaignManifest::from_toml(&bad).unwrap_err();
        assert!(e.has_field("consent.max_postpones"), "{e}");
        assert!(e.has_field("consent.deadline"), "{e}");
    }

    /// The fenced block after the first line of `doc` containing `marker`.
    fn block_after<'a>(doc: &'a str, marker: &str) -> &'a str {
        let at = doc.find(marker).expect("marker in docs/formats.md");
        let rest = &doc[at..];
        let open = rest.find("```").unwrap();
        let body = &rest[open..];
        let start = body.find('\n').unwrap() + 1;
        let end = body[start..].find("```").unwrap();
        &body[start..start + end]
    }

    #[test]
    fn the_documented_offer_is_the_projection_of_the_documented_campaign() {
        let doc = include_str!("../../../docs/formats.md");
        let c =
            CampaignManifest::from_toml(block_after(doc, "<!-- check: campaign-toml -->")).unwrap();
        let offer = block_after(doc, "The offer of the campaign [above]");
        assert_eq!(
            String::from_utf8(c.offer().to_canonical_json()).unwrap(),
            offer.trim()
        );
    }

    #[test]
    fn the_offer_leaves_out_state_schedule_rollout_and_applicability() {
        let c = CampaignManifest::from_toml(GOOD).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&c.offer().to_canonical_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "consent",
                "id",
                "kind",
                "method",
                "notice",
                "payload",
                "schema_version"
            ]
        );
        assert_eq!(v["kind"], CAMPAIGN_OFFER_KIND);
        assert_eq!(
            v["consent"],
            serde_json::json!({"policy": "required", "stage": "install"})
        );
        let mut halted = c.clone();
        halted.revision = 4;
        halted.state = CampaignState::Halted;
        halted.rollout = Rollout::default();
        halted.schedule.apply_window = None;
        halted.applies_to = Selectors::default();
        halted.consent.deadline = None;
        halted.consent.max_postpones = 0;
        assert_eq!(halted.offer_sha256(), c.offer_sha256());
        assert_ne!(
            halted.to_canonical_json().unwrap(),
            c.to_canonical_json().unwrap()
        );
        let mut retitled = c.clone();
        retitled.notice.get_mut("de").unwrap().title = "Player 2.1 (neu)".into();
        assert_ne!(retitled.offer_sha256(), c.offer_sha256());
    }

    #[test]
    fn locales() {
        for good in ["en", "de-AT", "zh-Hant", "es-419"] {
            check_locale(good).unwrap();
        }
        for bad in ["", "e", "english", "en_US", "de-"] {
            assert!(check_locale(bad).is_err(), "{bad}");
        }
    }
}

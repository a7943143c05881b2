//! Consent: what the device's user (or the fleet administrator) agreed to, bound to the
//! SHA-256 of the exact campaign manifest bytes shown.
//!
//! * [`ConsentStore`] keeps the records as an append-only, hash-chained JSON-lines log,
//!   written with fsync; opening it verifies the chain and says where it breaks.
//! * [`ConsentRecords`] is the in-memory list the decision engine reads (through
//!   [`crate::decide::LocalState`]); [`evaluate`] is the pure rule that turns records into a
//!   [`ConsentState`] for one campaign manifest. The store uses the same rule to refuse
//!   records the policy does not allow, so the engine and the store never disagree.
//! * [`AdminConsentToken`] is the signed token of the `administrator` policy.
//!
//! Rules, per campaign manifest (id + exact-bytes hash):
//!
//! | policy | granted by | decline | postpone | after the deadline without consent |
//! | --- | --- | --- | --- | --- |
//! | `required` | `accept` | yes, final for this manifest | up to `max_postpones` | expired |
//! | `acknowledge` | `acknowledge` or `accept` | no | up to `max_postpones` | proceeds (informed) |
//! | `administrator` | a valid token | no | no | expired |
//! | `none` | — | no | no | — |
//!
//! A changed manifest (another hash) asks again: earlier accept/decline records do not
//! count for it. Postponements count per campaign across revisions, so re-publishing a
//! campaign does not reset the bound.

mod log;
mod token;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use log::*;
pub use token::*;

use crate::decide::DeviceProfile;
use crate::manifest::{Assignment, CampaignManifest, ConsentPolicy, ManifestHash, UtcTime};

/// What the user or administrator did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConsentAction {
    /// Explicit agreement.
    Accept,
    /// Informed and acknowledged.
    Acknowledge,
    /// Refusal (final for this manifest).
    Decline,
    /// Ask again later.
    Postpone {
        /// Not before this instant.
        until: UtcTime,
    },
    /// An administrator consent token was received.
    Administrator {
        /// The token.
        token: Box<AdminConsentToken>,
    },
}

impl ConsentAction {
    /// A short name (`accept`, `postpone`, …).
    pub fn name(&self) -> &'static str {
        match self {
            ConsentAction::Accept => "accept",
            ConsentAction::Acknowledge => "acknowledge",
            ConsentAction::Decline => "decline",
            ConsentAction::Postpone { .. } => "postpone",
            ConsentAction::Administrator { .. } => "administrator token",
        }
    }
}

/// One consent record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentEvent {
    /// The campaign id.
    pub campaign: String,
    /// The campaign revision shown.
    pub revision: u64,
    /// SHA-256 of the exact manifest bytes shown.
    pub manifest_sha256: ManifestHash,
    /// When.
    pub at: UtcTime,
    /// What.
    pub action: ConsentAction,
    /// The notice locale shown, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

/// All consent records, in the order they were made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsentRecords {
    events: Vec<ConsentEvent>,
}

impl ConsentRecords {
    /// No records.
    pub fn new() -> ConsentRecords {
        ConsentRecords::default()
    }

    /// Appends a record (in memory only; the store persists).
    pub fn push(&mut self, e: ConsentEvent) {
        self.events.push(e);
    }

    /// Every record, oldest first.
    pub fn events(&self) -> &[ConsentEvent] {
        &self.events
    }

    /// The records of one campaign, oldest first.
    pub fn for_campaign<'a>(
        &'a self,
        campaign: &'a str,
    ) -> impl Iterator<Item = &'a ConsentEvent> + 'a {
        self.events.iter().filter(move |e| e.campaign == campaign)
    }

    /// Postponements recorded for a campaign (all revisions).
    pub fn postpones_used(&self, campaign: &str) -> u32 {
        self.for_campaign(campaign)
            .filter(|e| matches!(e.action, ConsentAction::Postpone { .. }))
            .count() as u32
    }
}

impl FromIterator<ConsentEvent> for ConsentRecords {
    fn from_iter<I: IntoIterator<Item = ConsentEvent>>(iter: I) -> Self {
        ConsentRecords {
            events: iter.into_iter().collect(),
        }
    }
}

/// Where consent stands for one campaign manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsentState {
    /// The policy is `none`.
    NotNeeded,
    /// Consent is given.
    Granted {
        /// How (`accepted by the user at …`).
        how: String,
    },
    /// Nobody has answered yet: ask.
    Pending {
        /// Postponements still allowed.
        postpones_left: u32,
        /// Until when an answer counts.
        deadline: Option<DateTime<Utc>>,
    },
    /// The user asked to be asked again later.
    Postponed {
        /// When to ask again.
        until: DateTime<Utc>,
        /// Postponements still allowed.
        postpones_left: u32,
    },
    /// The user declined this manifest.
    Declined {
        /// When.
        at: DateTime<Utc>,
    },
    /// The deadline passed without consent.
    Expired {
        /// The deadline.
        deadline: DateTime<Utc>,
    },
}

impl ConsentState {
    /// Whether the update may proceed.
    pub fn is_granted(&self) -> bool {
        matches!(self, ConsentState::NotNeeded | ConsentState::Granted { .. })
    }
}

/// Evaluates consent for `campaign`, whose exact bytes hash to `hash`, on this device at
/// `now`. Pure. Returns the state and notes on records that did not count (and why).
pub fn evaluate(
    records: &ConsentRecords,
    campaign: &CampaignManifest,
    hash: &ManifestHash,
    profile: &DeviceProfile,
    assignment: Option<&Assignment>,
    now: DateTime<Utc>,
) -> (ConsentState, Vec<String>) {
    let rule = &campaign.consent;
    let deadline = rule.deadline.map(|d| d.0);
    let mut notes = Vec::new();
    let events: Vec<&ConsentEvent> = records.for_campaign(&campaign.id).collect();
    let stale = events
        .iter()
        .filter(|e| {
            e.manifest_sha256 != *hash && !matches!(e.action, ConsentAction::Postpone { .. })
        })
        .count();
    if stale > 0 {
        notes.push(format!(
            "{stale} record(s) for an earlier version of this campaign do not count: the manifest changed, so consent is asked again"
        ));
    }
    let current: Vec<&ConsentEvent> = events
        .iter()
        .copied()
        .filter(|e| e.manifest_sha256 == *hash)
        .collect();
    let in_time = |e: &ConsentEvent| deadline.is_none_or(|d| e.at.0 <= d);

    match rule.policy {
        ConsentPolicy::None => return (ConsentState::NotNeeded, notes),
        ConsentPolicy::Administrator => {
            for e in current.iter().rev() {
                if !in_time(e) {
                    notes.push(format!(
                        "a {} record at {} came after the deadline and does not count",
                        e.action.name(),
                        e.at
                    ));
                    continue;
                }
                if let ConsentAction::Administrator { token } = &e.action {
                    match token.verify(campaign, hash, profile, assignment, now) {
                        Ok(()) => {
                            return (
                                ConsentState::Granted {
                                    how: format!(
                                        "administrator consent token issued {} (received {}), valid until {}",
                                        token.signed.issued, e.at, token.signed.expires
                                    ),
                                },
                                notes,
                            )
                        }
                        Err(why) => notes.push(format!("an administrator token received {} does not count: {why}", e.at)),
                    }
                } else {
                    notes.push(format!(
                        "a {} record at {} does not count: this campaign needs an administrator consent token",
                        e.action.name(),
                        e.at
                    ));
                }
            }
            if let Some(d) = deadline.filter(|d| now >= *d) {
                return (ConsentState::Expired { deadline: d }, notes);
            }
            return (
                ConsentState::Pending {
                    postpones_left: 0,
                    deadline,
                },
                notes,
            );
        }
        ConsentPolicy::Required | ConsentPolicy::Acknowledge => {}
    }

    let policy = rule.policy;
    // The latest answer to this exact manifest decides.
    let mut answer: Option<(usize, &ConsentEvent)> = None;
    for (i, e) in current.iter().enumerate() {
        let counts = match (&e.action, policy) {
            (ConsentAction::Accept, _) => true,
            (ConsentAction::Decline, ConsentPolicy::Required) => true,
            (ConsentAction::Acknowledge, ConsentPolicy::Acknowledge) => true,
            (ConsentAction::Postpone { .. }, _) => false,
            (a, p) => {
                notes.push(format!(
                    "a {} record at {} does not count under the {:?} policy",
                    a.name(),
                    e.at,
                    p.as_str()
                ));
                false
            }
        };
        if !counts {
            continue;
        }
        if !in_time(e) {
            notes.push(format!(
                "a {} record at {} came after the deadline and does not count",
                e.action.name(),
                e.at
            ));
            continue;
        }
        answer = Some((i, e));
    }
    if let Some((_, e)) = answer {
        let state = match e.action {
            ConsentAction::Decline => ConsentState::Declined { at: e.at.0 },
            ConsentAction::Accept => ConsentState::Granted {
                how: format!("accepted by the device's user at {}", e.at),
            },
            _ => ConsentState::Granted {
                how: format!("acknowledged by the device's user at {}", e.at),
            },
        };
        return (state, notes);
    }

    let used = records.postpones_used(&campaign.id);
    let postpones_left = rule.max_postpones.saturating_sub(used);
    if let Some(d) = deadline.filter(|d| now >= *d) {
        return match policy {
            ConsentPolicy::Acknowledge => (
                ConsentState::Granted {
                    how: format!("the deadline {} passed; an acknowledge campaign proceeds once its users were informed", UtcTime(d)),
                },
                notes,
            ),
            _ => (ConsentState::Expired { deadline: d }, notes),
        };
    }
    // The latest postponement of this manifest that was within the bound.
    let mut ordinal = 0u32;
    let mut active: Option<DateTime<Utc>> = None;
    for e in &events {
        if let ConsentAction::Postpone { until } = &e.action {
            ordinal += 1;
            if e.manifest_sha256 != *hash {
                continue;
            }
            if ordinal > rule.max_postpones {
                notes.push(format!(
                    "a postponement at {} exceeds the bound of {} and does not count",
                    e.at, rule.max_postpones
                ));
                continue;
            }
            active = Some(deadline.map_or(until.0, |d| until.0.min(d)));
        }
    }
    if let Some(until) = active.filter(|u| now < *u) {
        return (
            ConsentState::Postponed {
                until,
                postpones_left,
            },
            notes,
        );
    }
    (
        ConsentState::Pending {
            postpones_left,
            deadline,
        },
        notes,
    )
}

//! Consent: what the device's user (or the fleet administrator) agreed to, bound to the
//! campaign's **offer**: the SHA-256 of the canonical JSON of
//! [`CampaignManifest::offer`] (notice, payload, consent policy and stage, method, forced
//! set). A new revision that changes only the state, the schedule, the rollout or the
//! applicability keeps the consent given; a change to the offer asks again.
//!
//! * [`ConsentStore`] keeps the records as an append-only, hash-chained JSON-lines log,
//!   written with fsync; opening it verifies the chain and says where it breaks.
//! * [`ConsentRecords`] is the in-memory list the decision engine reads (through
//!   [`crate::decide::LocalState`]); [`evaluate`] is the pure rule that turns records into a
//!   [`ConsentState`] for one campaign manifest. The store uses the same rule to refuse
//!   records the policy does not allow, so the engine and the store never disagree.
//! * [`AdminConsentToken`] is the signed token of the `administrator` policy.
//!
//! Rules, per campaign offer (id + offer hash):
//!
//! | policy | granted by | decline | postpone | after the deadline without consent |
//! | --- | --- | --- | --- | --- |
//! | `required` | `accept` | yes, final for this offer | up to `max_postpones` | expired |
//! | `acknowledge` | `acknowledge` or `accept` | no | up to `max_postpones` | proceeds (informed) |
//! | `administrator` | a valid token | no | no | expired |
//! | `none` | — | no | no | — |
//!
//! Each record keeps both hashes: `offer_sha256` (the binding) and `manifest_sha256` (the
//! exact manifest shown, for the audit trail). A record without `offer_sha256`, written by
//! an agent that predates the offer binding, counts only for the exact manifest it names
//! ([`ConsentEvent::binding_for`]). A changed offer asks again: earlier accept/decline
//! records do not count for it. Postponements count per campaign across revisions, so
//! re-publishing a campaign does not reset the bound.

mod log;
mod token;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use log::*;
pub use token::*;

use crate::decide::DeviceProfile;
use crate::manifest::{
    Assignment, CampaignManifest, ConsentPolicy, ManifestHash, OfferHash, UtcTime,
};

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

/// Why a record counts for a campaign manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// It names this exact manifest (any record, including those of older agents).
    Manifest,
    /// It names another manifest with the same offer: what the user agreed to did not
    /// change (a new revision changed only the state, the schedule, the rollout, …).
    Offer,
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
    /// SHA-256 of the canonical JSON of the offer shown ([`CampaignManifest::offer`]): what
    /// the record is bound to. `None` in records of agents that predate the offer binding;
    /// those are bound to `manifest_sha256` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_sha256: Option<OfferHash>,
    /// When.
    pub at: UtcTime,
    /// What.
    pub action: ConsentAction,
    /// The notice locale shown, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

impl ConsentEvent {
    /// Whether the record counts for the manifest with hash `manifest` and offer hash
    /// `offer`, and why: the same offer (`offer_sha256`), or the exact manifest (the only
    /// binding of a record without `offer_sha256`, made by an agent that predates the
    /// offer binding).
    pub fn binding_for(&self, manifest: &ManifestHash, offer: &OfferHash) -> Option<Binding> {
        let exact = self.manifest_sha256 == *manifest;
        match &self.offer_sha256 {
            Some(o) if o == offer => Some(if exact {
                Binding::Manifest
            } else {
                Binding::Offer
            }),
            // Bound to another offer (a record naming this manifest with another offer is
            // inconsistent, and does not count either).
            Some(_) => None,
            None => exact.then_some(Binding::Manifest),
        }
    }
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
/// `now`. Pure. Records count when they are bound to the campaign's offer
/// ([`CampaignManifest::offer_sha256`]) or, for records without an offer hash, to this exact
/// manifest ([`ConsentEvent::binding_for`]). Returns the state and notes on records that
/// did not count (and why) or that count for a later revision (and why they still hold).
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
    let offer = campaign.offer_sha256();
    let mut notes = Vec::new();
    let events: Vec<&ConsentEvent> = records.for_campaign(&campaign.id).collect();
    let stale: Vec<&ConsentEvent> = events
        .iter()
        .copied()
        .filter(|e| {
            e.binding_for(hash, &offer).is_none()
                && !matches!(e.action, ConsentAction::Postpone { .. })
        })
        .collect();
    let other_offer = stale.iter().filter(|e| e.offer_sha256.is_some()).count();
    let legacy = stale.len() - other_offer;
    if other_offer > 0 {
        notes.push(format!(
            "{other_offer} record(s) for an earlier version of this campaign do not count: its offer changed (notice, payload, consent policy or stage, method or forced set), so consent is asked again"
        ));
    }
    if legacy > 0 {
        notes.push(format!(
            "{legacy} record(s) bound to the exact bytes of another manifest (recorded before consent was bound to the offer) do not count for this one, so consent is asked again"
        ));
    }
    let current: Vec<(&ConsentEvent, Binding)> = events
        .iter()
        .copied()
        .filter_map(|e| e.binding_for(hash, &offer).map(|b| (e, b)))
        .collect();
    let in_time = |e: &ConsentEvent| deadline.is_none_or(|d| e.at.0 <= d);
    let holds = |e: &ConsentEvent, b: Binding| match b {
        Binding::Manifest => String::new(),
        Binding::Offer => still_holds(e, campaign, &offer),
    };

    match rule.policy {
        ConsentPolicy::None => return (ConsentState::NotNeeded, notes),
        ConsentPolicy::Administrator => {
            for (e, b) in current.iter().rev() {
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
                                        "administrator consent token issued {} (received {}), valid until {}{}",
                                        token.signed.issued, e.at, token.signed.expires, holds(e, *b)
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
    // The latest answer to this offer decides.
    let mut answer: Option<(&ConsentEvent, Binding)> = None;
    for (e, b) in &current {
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
        answer = Some((e, *b));
    }
    if let Some((e, b)) = answer {
        let state = match e.action {
            ConsentAction::Decline => {
                if b == Binding::Offer {
                    notes.push(format!("declined at {}{}", e.at, holds(e, b)));
                }
                ConsentState::Declined { at: e.at.0 }
            }
            ConsentAction::Accept => ConsentState::Granted {
                how: format!("accepted by the device's user at {}{}", e.at, holds(e, b)),
            },
            _ => ConsentState::Granted {
                how: format!(
                    "acknowledged by the device's user at {}{}",
                    e.at,
                    holds(e, b)
                ),
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
    // The latest postponement of this offer that was within the bound.
    let mut ordinal = 0u32;
    let mut active: Option<DateTime<Utc>> = None;
    for e in &events {
        if let ConsentAction::Postpone { until } = &e.action {
            ordinal += 1;
            if e.binding_for(hash, &offer).is_none() {
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

/// Why an answer recorded for another manifest with the same offer still counts: `"; consent
/// given for revision 3 still holds: revision 4 changes only the rollout state …"`.
fn still_holds(e: &ConsentEvent, c: &CampaignManifest, offer: &OfferHash) -> String {
    let what = "state, schedule, waves, applicability or deadlines; the offer is unchanged";
    if e.revision == c.revision {
        format!(
            "; consent given for another manifest of revision {} still holds: it differs only in the rollout state ({what}, offer sha256 {})",
            e.revision,
            offer.short()
        )
    } else {
        format!(
            "; consent given for revision {} still holds: revision {} changes only the rollout state ({what}, offer sha256 {})",
            e.revision,
            c.revision,
            offer.short()
        )
    }
}

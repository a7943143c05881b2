//! `petrel-repo rollout advance` and `fleet status`: the fleet view from device reports and
//! the published tree, and the health gates applied to it — pass the canaries, open the
//! next wave, or halt — as signed, published revisions.
//!
//! The view and the gate's verdict are computed by `petrel_server::reports::fleet`, the
//! one definition shared with the server's fleet endpoint and dashboard.

use chrono::{DateTime, Utc};
use petrel_client::manifest::{CampaignState, UtcTime};
use petrel_server::reports::fleet::{Action, CampaignView, FleetView};
use petrel_server::reports::published::{fleet_view, read_tree};
use petrel_server::reports::ReportStore;

use crate::manifests;
use crate::publish::{self, PublishReport, Refresh};
use crate::rollout::ReportsSource;
use crate::workspace::Workspace;
use crate::{Error, Result};

/// Largest fleet view accepted from a report server.
const MAX_FLEET_BYTES: u64 = 256 * 1024 * 1024;

/// Exit status of `rollout advance` when it halted a campaign (and published the halt).
pub const EXIT_HALTED: i32 = 3;

/// Reads the fleet view: from a report server's `GET /v1/reports/fleet` (which joins its
/// database with the tree it serves), or from a report database joined with the tree
/// `tree` (the workspace's published tree).
pub fn load_fleet(
    source: &ReportsSource,
    tree: &std::path::Path,
    token: Option<&str>,
    now: DateTime<Utc>,
) -> Result<FleetView> {
    match source {
        ReportsSource::Db(path) => {
            let store =
                ReportStore::open_read_only(path).map_err(|e| Error::State(e.to_string()))?;
            let published = read_tree(tree, now).map_err(Error::State)?;
            fleet_view(&store, &published, now).map_err(Error::State)
        }
        ReportsSource::Url(base) => {
            let base = base.trim_end_matches('/');
            let base = base
                .strip_suffix("/v1/reports/summary")
                .or_else(|| base.strip_suffix("/v1/reports/fleet"))
                .or_else(|| base.strip_suffix("/v1/reports"))
                .unwrap_or(base);
            let url = format!("{base}/v1/reports/fleet");
            crate::rollout::get_json(&url, token, MAX_FLEET_BYTES, "a fleet view")
        }
    }
}

/// What `advance` did to one campaign.
#[derive(Clone, Debug, PartialEq)]
pub struct AdvanceLine {
    /// The campaign.
    pub campaign: String,
    /// The gate's verdict.
    pub action: Action,
    /// Why.
    pub explanation: String,
    /// The revision staged (and published) for it, if any.
    pub revision: Option<u64>,
    /// Whether that revision only updates the signed figures.
    pub figures_only: bool,
}

/// What an `advance` run did.
#[derive(Clone, Debug, Default)]
pub struct AdvanceOutcome {
    /// One line per gated campaign considered.
    pub lines: Vec<AdvanceLine>,
    /// The publish, if a revision was staged.
    pub published: Option<PublishReport>,
}

impl AdvanceOutcome {
    /// Whether a campaign was halted.
    pub fn halted(&self) -> bool {
        self.lines
            .iter()
            .any(|l| l.action == Action::Halt && l.revision.is_some())
    }
}

/// Options of `advance`.
#[derive(Clone, Debug, Default)]
pub struct AdvanceOptions {
    /// Only this campaign.
    pub campaign: Option<String>,
    /// Say what would be done; change nothing.
    pub dry_run: bool,
    /// A campaign still waiting gets a figures-only revision at most this often (each one
    /// is a manifest every device of the campaign downloads again).
    pub figures_every: Option<chrono::Duration>,
}

/// Applies each gated, active campaign's verdict: passes the canaries, opens the next
/// wave, or halts, each as a new signed revision (with the figures the decision was made
/// on, so devices can explain what they wait for); a campaign still waiting gets a new
/// revision only when its figures changed. Then publishes once.
///
/// Idempotent: a second run on the same reports changes nothing. Refuses, before changing
/// anything, when the workspace has unpublished staged changes or an interrupted publish,
/// or when the view is about another revision than the workspace has published (a report
/// server serving a stale copy of the tree).
pub fn advance(ws: &Workspace, view: &FleetView, opts: &AdvanceOptions) -> Result<AdvanceOutcome> {
    let list = manifests::list_campaigns(ws)?;
    let mut lines = Vec::new();
    let mut todo: Vec<(&CampaignView, usize)> = Vec::new();
    for c in &view.campaigns {
        if opts.campaign.as_deref().is_some_and(|id| id != c.id) || !c.gated {
            continue;
        }
        let Some(local) = list.campaigns.iter().find(|l| l.id == c.id) else {
            continue;
        };
        if local.revision != c.revision {
            return Err(Error::State(format!(
                "campaign {}: the reports were joined with revision {}, but this workspace is at revision {} ({}); publish, or let the report server serve the current tree, then run advance again",
                c.id,
                c.revision,
                local.revision,
                if local.publication == manifests::Publication::Staged { "staged, not published" } else { "published" }
            )));
        }
        let details = manifests::campaign_details(ws, &c.id)?;
        let current = details.manifest.rollout.progress.clone();
        let due = |a: &petrel_client::manifest::Progress| {
            opts.figures_every
                .is_none_or(|every| view.generated_at - a.evaluated_at.0 >= every)
        };
        let figures_changed = match (&current, &c.gate.progress) {
            (Some(a), Some(b)) => !a.same_figures(b) && due(a),
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let acts = match c.gate.action {
            Action::PassCanaries | Action::OpenWave { .. } | Action::Halt => true,
            Action::Wait | Action::Complete => figures_changed,
            Action::NotGated | Action::Stopped => false,
        };
        if acts {
            todo.push((c, lines.len()));
        }
        lines.push(AdvanceLine {
            campaign: c.id.clone(),
            action: c.gate.action.clone(),
            explanation: c.gate.explanation.clone(),
            revision: None,
            figures_only: acts && matches!(c.gate.action, Action::Wait | Action::Complete),
        });
    }
    if todo.is_empty() || opts.dry_run {
        return Ok(AdvanceOutcome {
            lines,
            published: None,
        });
    }
    publish::ensure_not_interrupted(ws)?;
    let staged: Vec<String> = ws
        .staged_roles()?
        .into_iter()
        .filter(|r| r != "snapshot" && r != "timestamp")
        .collect();
    if !staged.is_empty() {
        return Err(Error::State(format!(
            "the workspace has unpublished staged changes (roles: {}); advance publishes only its own revisions. Publish or discard them, then run advance again",
            staged.join(", ")
        )));
    }
    let now = UtcTime(ws.now());
    for (c, i) in todo {
        let action = c.gate.action.clone();
        // Opening a stage: sign the figures of the stage that decides next (the one just
        // opened), so the next run has nothing new to sign.
        let next = match &action {
            Action::PassCanaries => c.stages.iter().find(|s| s.name != "canaries"),
            Action::OpenWave { wave } => c.stages.iter().find(|s| s.wave == Some(*wave)),
            _ => None,
        };
        let progress = match next {
            Some(s) => Some(petrel_client::manifest::Progress {
                evaluated_at: UtcTime(view.generated_at),
                stage: s.name.clone(),
                devices: s.devices,
                succeeded: s.succeeded,
                failed: s.failed,
                overdue: 0,
                counts_from_revision: c
                    .gate
                    .progress
                    .as_ref()
                    .and_then(|p| p.counts_from_revision),
            }),
            None => c.gate.progress.clone(),
        };
        let r = manifests::revise_campaign(ws, &c.id, "advance the rollout", |m| {
            let r = &mut m.rollout;
            let start_of =
                |i: usize, m_nb: Option<UtcTime>, waves: &[petrel_client::manifest::Wave]| {
                    let s = waves[i].start;
                    m_nb.map_or(s, |nb| nb.max(s))
                };
            match action {
                Action::PassCanaries => {
                    r.canary_passed = true;
                    if r.opened.is_empty() {
                        r.opened.push(now);
                    }
                }
                Action::OpenWave { wave } => {
                    let k = wave as usize; // 1-based: wave k is index k-1
                    if k == 0 || k > r.waves.len() {
                        return Err(Error::State(format!(
                            "campaign {}: no wave {wave} to open",
                            c.id
                        )));
                    }
                    let nb = m.schedule.not_before;
                    // Wave 1 of a rollout without canaries opened at its start.
                    while r.opened.len() < k - 1 {
                        let at = start_of(r.opened.len(), nb, &r.waves);
                        r.opened.push(at.min(now));
                    }
                    if r.opened.len() == k - 1 {
                        r.opened.push(now);
                    }
                }
                Action::Halt => {
                    m.state = CampaignState::Halted;
                }
                _ => {}
            }
            let mut p = progress.clone();
            if action == Action::Halt {
                if let Some(p) = &mut p {
                    // After a resume, only what happens from then on counts.
                    p.counts_from_revision = Some(m.revision + 1);
                }
            }
            r.progress = p;
            Ok(())
        })?;
        lines[i].revision = Some(r.revision);
    }
    let published = publish::publish(ws, Refresh::default()).map_err(|e| {
        Error::State(format!(
            "the new revisions are staged but publishing failed: {e}; fix the cause and run `petrel-repo publish`"
        ))
    })?;
    Ok(AdvanceOutcome {
        lines,
        published: Some(published),
    })
}

impl AdvanceLine {
    /// One human-readable line.
    pub fn describe(&self, dry_run: bool) -> String {
        let done = match (self.revision, dry_run) {
            (Some(r), _) if self.figures_only => format!(" (figures signed in revision {r})"),
            (Some(r), _) => format!(" (revision {r})"),
            (None, true) if self.action != Action::Wait => " (dry run: nothing changed)".into(),
            _ => String::new(),
        };
        let what = match &self.action {
            Action::Wait => "waiting".to_string(),
            Action::PassCanaries => "CANARIES PASSED".to_string(),
            Action::OpenWave { wave } => format!("WAVE {wave} OPENED"),
            Action::Halt => "HALTED".to_string(),
            Action::Complete => "every stage open".to_string(),
            Action::NotGated => "not gated".to_string(),
            Action::Stopped => "stopped".to_string(),
        };
        format!(
            "campaign {}: {what}: {}{done}",
            self.campaign, self.explanation
        )
    }
}

/// Filters of `fleet status`.
#[derive(Clone, Debug, Default)]
pub struct FleetFilter {
    /// Only this campaign (and devices it counts).
    pub campaign: Option<String>,
    /// Only devices in this wave (1-based) of a campaign.
    pub wave: Option<u32>,
    /// Only devices in this state in a campaign (`failed`, `overdue`, `pending` for any
    /// non-final state, …).
    pub state: Option<String>,
}

impl FleetFilter {
    fn keeps_entry(&self, e: &petrel_server::reports::fleet::DeviceCampaign) -> bool {
        self.campaign.as_deref().is_none_or(|c| c == e.campaign)
            && self.wave.is_none_or(|w| e.stage == format!("wave {w}"))
            && self.state.as_deref().is_none_or(|s| {
                s == e.state
                    || (s == "pending" && !matches!(e.state.as_str(), "succeeded" | "failed"))
            })
    }

    /// Applies the filter: campaigns by id; devices with at least one matching campaign
    /// entry (only those entries kept), or every device when no filter is set.
    pub fn apply(&self, mut view: FleetView) -> FleetView {
        if let Some(c) = &self.campaign {
            view.campaigns.retain(|v| &v.id == c);
        }
        if self.campaign.is_none() && self.wave.is_none() && self.state.is_none() {
            return view;
        }
        view.devices.retain_mut(|d| {
            d.campaigns.retain(|e| self.keeps_entry(e));
            !d.campaigns.is_empty()
        });
        view
    }
}

/// The fleet view as text: per campaign its stages and the gate's verdict, then one line
/// per device.
pub fn render_text(view: &FleetView) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    for c in &view.campaigns {
        let _ = writeln!(
            o,
            "campaign {} revision {} ({}{}){}",
            c.id,
            c.revision,
            c.state,
            if c.gated { ", gated" } else { "" },
            c.group
                .as_ref()
                .map_or(String::new(), |g| format!(" for group {g}"))
        );
        let _ = writeln!(
            o,
            "  {:<10} {:<6} {:>7} {:>9} {:>6} {:>7} {:>7}  STATUS",
            "STAGE", "OPEN", "DEVICES", "SUCCEEDED", "FAILED", "PENDING", "OVERDUE"
        );
        for s in &c.stages {
            let _ = writeln!(
                o,
                "  {:<10} {:<6} {:>7} {:>9} {:>6} {:>7} {:>7}  {}",
                s.name,
                if s.open { "yes" } else { "no" },
                s.devices,
                s.succeeded,
                s.failed,
                s.pending,
                s.overdue,
                s.status
            );
        }
        let _ = writeln!(o, "  next advance: {}", c.gate.explanation);
        if !c.failure_reasons.is_empty() {
            o.push_str("  failure reasons:\n");
            for r in &c.failure_reasons {
                let _ = writeln!(o, "    {:>5}  {}", r.count, r.reason);
            }
        }
    }
    let _ = writeln!(
        o,
        "{:<24} {:<16} {:<20} {:<28} CAMPAIGNS",
        "DEVICE", "GROUP", "LAST CONTACT", "INSTALLED"
    );
    for d in &view.devices {
        let installed: Vec<String> = d
            .installed
            .iter()
            .map(|(a, v)| format!("{a} {v}"))
            .collect();
        let campaigns: Vec<String> = d
            .campaigns
            .iter()
            .map(|e| {
                let why = if e.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", e.reason)
                };
                format!("{} [{}] {}{why}", e.campaign, e.stage, e.state)
            })
            .collect();
        let group = match (&d.group, d.canary) {
            (Some(g), true) => format!("{g} (canary)"),
            (Some(g), false) => g.clone(),
            (None, _) => "(not assigned)".into(),
        };
        let _ = writeln!(
            o,
            "{:<24} {:<16} {:<20} {:<28} {}",
            d.device_id,
            group,
            d.last_contact
                .map_or("never".to_string(), |t| UtcTime(t).to_string()),
            if installed.is_empty() {
                "-".to_string()
            } else {
                installed.join(", ")
            },
            if campaigns.is_empty() {
                "-".to_string()
            } else {
                campaigns.join("; ")
            }
        );
    }
    o
}

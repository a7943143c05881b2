//! `petrel-repo rollout status|gate`: rollout status from device reports (a report
//! server's summary endpoint or its SQLite database), and the gate that halts — re-signs
//! and publishes — campaigns whose failure rate crosses a threshold.
//!
//! The counting rules live in `petrel_server::reports::summary`, the one definition shared
//! with the server's summary endpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION};
use petrel_client::fetch::{encode_path_segment, HttpConfig, HttpTransport};
use petrel_client::manifest::CampaignState;
use petrel_server::reports::{Counts, ReportStore, RolloutSummary};
use serde::{Deserialize, Serialize};

use crate::manifests::{self, StateChange};
use crate::publish::{self, PublishReport, Refresh};
use crate::workspace::Workspace;
use crate::{fsutil, Error, Result};

/// Largest summary accepted from a report server.
const MAX_SUMMARY_BYTES: u64 = 64 * 1024 * 1024;

/// The gate's memory, in the workspace: the revision at which it halted each campaign.
pub const GATE_STATE_FILE: &str = "rollout-gate.json";

/// Where reports come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportsSource {
    /// A report server: its base URL, `…/v1/reports` or `…/v1/reports/summary`.
    Url(String),
    /// The server's SQLite database, opened read-only.
    Db(PathBuf),
}

impl ReportsSource {
    /// `http://` and `https://` are URLs; anything else is a database path.
    pub fn parse(s: &str) -> ReportsSource {
        if s.starts_with("http://") || s.starts_with("https://") {
            ReportsSource::Url(s.to_string())
        } else {
            ReportsSource::Db(PathBuf::from(s))
        }
    }

    /// The summary endpoint URL for a URL source.
    fn summary_url(base: &str, campaign: Option<&str>) -> String {
        let base = base.trim_end_matches('/');
        let mut url = if base.ends_with("/v1/reports/summary") {
            base.to_string()
        } else if base.ends_with("/v1/reports") {
            format!("{base}/summary")
        } else {
            format!("{base}/v1/reports/summary")
        };
        if let Some(c) = campaign {
            url.push_str("?campaign=");
            url.push_str(&encode_path_segment(c));
        }
        url
    }
}

/// Reads the rollout summary (of one campaign if given). `token` is sent as
/// `Authorization: Bearer` to a report server that requires it.
pub fn load_summary(
    source: &ReportsSource,
    campaign: Option<&str>,
    token: Option<&str>,
) -> Result<RolloutSummary> {
    match source {
        ReportsSource::Db(path) => read_db(path, campaign),
        ReportsSource::Url(base) => {
            let url = ReportsSource::summary_url(base, campaign);
            get_json(&url, token, MAX_SUMMARY_BYTES, "a rollout summary")
        }
    }
}

/// GETs `url` from a report server (with `token` as `Authorization: Bearer`, if given)
/// and parses the JSON answer; `what` names it in errors (`a rollout summary`).
pub fn get_json<T: serde::de::DeserializeOwned>(
    url: &str,
    token: Option<&str>,
    max_bytes: u64,
    what: &str,
) -> Result<T> {
    let transport = HttpTransport::new(HttpConfig::default())
        .map_err(|e| Error::State(format!("cannot set up HTTP: {e}")))?;
    let headers: Vec<(HeaderName, String)> = token
        .map(|t| (AUTHORIZATION, format!("Bearer {t}")))
        .into_iter()
        .collect();
    let resp = transport
        .request_once(http::Method::GET, url, &headers, Bytes::new(), max_bytes)
        .map_err(|e| Error::State(format!("cannot read {what}: {e}")))?;
    if resp.status != http::StatusCode::OK {
        let hint = if resp.status == http::StatusCode::UNAUTHORIZED {
            " (set PETREL_REPORTS_TOKEN or --reports-token)"
        } else {
            ""
        };
        return Err(Error::State(format!(
            "{url}: HTTP {}{hint}: {}",
            resp.status.as_u16(),
            String::from_utf8_lossy(&resp.body).trim()
        )));
    }
    serde_json::from_slice(&resp.body).map_err(|e| Error::State(format!("{url}: not {what}: {e}")))
}

fn read_db(path: &Path, campaign: Option<&str>) -> Result<RolloutSummary> {
    let store = ReportStore::open_read_only(path).map_err(|e| Error::State(e.to_string()))?;
    store
        .summary(campaign)
        .map_err(|e| Error::State(e.to_string()))
}

/// Thresholds of `rollout gate`.
#[derive(Clone, Debug)]
pub struct GateOptions {
    /// Halt when failed / (succeeded + failed) is above this (0.0 to 1.0).
    pub max_failure_rate: f64,
    /// Only judge campaigns with at least this many final (succeeded + failed) reports.
    pub min_reports: u64,
    /// Only this campaign.
    pub campaign: Option<String>,
}

/// What the gate decided for one campaign with reports.
#[derive(Clone, Debug, PartialEq)]
pub enum GateDecision {
    /// Over the threshold and active: halted (staged as a new revision, then published).
    Halted {
        /// The new (halted) revision.
        revision: u64,
    },
    /// Over the threshold but already halted (or cancelled): left alone.
    AlreadyStopped {
        /// Its state.
        state: CampaignState,
    },
    /// At or below the threshold.
    Below,
    /// Fewer final reports than `min_reports`.
    TooFewReports,
    /// No campaign of this id in the repository.
    NotInRepository,
}

/// One line of the gate's verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct GateLine {
    /// The campaign.
    pub campaign: String,
    /// The counts judged (reports about revisions after the gate's last halt).
    pub counts: Counts,
    /// The decision.
    pub decision: GateDecision,
}

/// What a gate run did.
#[derive(Clone, Debug, Default)]
pub struct GateOutcome {
    /// One line per campaign with reports.
    pub lines: Vec<GateLine>,
    /// The publish, if something was halted.
    pub published: Option<PublishReport>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GateState {
    /// Campaign → revision at which the gate halted it.
    halted: BTreeMap<String, u64>,
}

fn read_state(ws: &Workspace) -> Result<GateState> {
    let path = ws.dir().join(GATE_STATE_FILE);
    match std::fs::read(&path) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| Error::State(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GateState::default()),
        Err(e) => Err(Error::Io { path, source: e }),
    }
}

/// The counts of a campaign over reports about revisions newer than `after`.
fn counts_after(status: &petrel_server::reports::CampaignStatus, after: Option<u64>) -> Counts {
    let Some(after) = after else {
        return status.counts.clone();
    };
    let mut c = Counts::default();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for w in status.waves.iter().filter(|w| w.revision > after) {
        c.succeeded += w.counts.succeeded;
        c.failed += w.counts.failed;
        c.pending += w.counts.pending;
        c.declined += w.counts.declined;
        c.staged += w.counts.staged;
        c.pending_reboot += w.counts.pending_reboot;
        c.clock_skewed += w.counts.clock_skewed;
        for r in &w.counts.failure_reasons {
            *reasons.entry(r.reason.clone()).or_default() += r.count;
        }
    }
    c.failure_reasons = reasons
        .into_iter()
        .map(|(reason, count)| petrel_server::reports::summary::ReasonCount { reason, count })
        .collect();
    c.failure_reasons
        .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    c
}

/// Halts every active campaign whose failure rate is above the threshold (with at least
/// `min_reports` final reports), then publishes — exactly `campaign halt` + `publish`.
///
/// Idempotent: a halted or cancelled campaign is left alone. After a campaign the gate
/// halted is resumed (a new revision), only reports about revisions after the halt count,
/// so old failures do not halt it again. Refuses (before changing anything) when the
/// workspace has unpublished staged changes or an interrupted publish, so a cron run
/// never publishes someone's half-done edit.
pub fn gate(ws: &Workspace, summary: &RolloutSummary, opts: &GateOptions) -> Result<GateOutcome> {
    if !(0.0..=1.0).contains(&opts.max_failure_rate) {
        return Err(Error::Usage(format!(
            "--max-failure-rate must be between 0 and 1, not {}",
            opts.max_failure_rate
        )));
    }
    let mut state = read_state(ws)?;
    let list = manifests::list_campaigns(ws)?;
    let repo_state: BTreeMap<&str, (CampaignState, manifests::Publication)> = list
        .campaigns
        .iter()
        .map(|c| (c.id.as_str(), (c.state, c.publication)))
        .collect();
    let mut unpublished = Vec::new();
    let mut lines = Vec::new();
    let mut to_halt = Vec::new();
    for status in &summary.campaigns {
        if opts
            .campaign
            .as_deref()
            .is_some_and(|c| c != status.campaign)
        {
            continue;
        }
        let counts = counts_after(status, state.halted.get(&status.campaign).copied());
        let over = counts
            .failure_rate()
            .is_some_and(|r| r > opts.max_failure_rate);
        let decision = if counts.finals() < opts.min_reports.max(1) {
            GateDecision::TooFewReports
        } else if !over {
            GateDecision::Below
        } else {
            match repo_state.get(status.campaign.as_str()) {
                None => GateDecision::NotInRepository,
                Some((CampaignState::Active, _)) => {
                    to_halt.push(lines.len());
                    GateDecision::Halted { revision: 0 }
                }
                Some((s, publication)) => {
                    if *publication == manifests::Publication::Staged {
                        unpublished.push(status.campaign.clone());
                    }
                    GateDecision::AlreadyStopped { state: *s }
                }
            }
        };
        lines.push(GateLine {
            campaign: status.campaign.clone(),
            counts,
            decision,
        });
    }
    if !unpublished.is_empty() {
        // E.g. an earlier run staged the halt but its publish failed: devices still see
        // the campaign active. Fail (cron reports it) until someone publishes.
        return Err(Error::State(format!(
            "campaign(s) {} are halted in the workspace but the halt is not published; run `petrel-repo publish`",
            unpublished.join(", ")
        )));
    }
    if to_halt.is_empty() {
        return Ok(GateOutcome {
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
            "the workspace has unpublished staged changes (roles: {}); the gate publishes only its own halts. Publish or discard them, then run the gate again",
            staged.join(", ")
        )));
    }
    for i in to_halt {
        let id = lines[i].campaign.clone();
        let r = manifests::change_campaign_state(ws, &id, StateChange::Halt)?;
        lines[i].decision = GateDecision::Halted {
            revision: r.revision,
        };
        state.halted.insert(id, r.revision);
    }
    // Remember the halts before publishing, so a failed publish is still recognised as
    // the gate's own halt (and reported as unpublished) on the next run.
    let bytes = serde_json::to_vec_pretty(&state).expect("gate state serializes");
    fsutil::write_atomic(&ws.dir().join(GATE_STATE_FILE), &bytes)?;
    let published = publish::publish(ws, Refresh::default()).map_err(|e| {
        Error::State(format!(
            "the halt is staged but publishing failed: {e}; fix the cause and run `petrel-repo publish`"
        ))
    })?;
    Ok(GateOutcome {
        lines,
        published: Some(published),
    })
}

impl GateLine {
    /// One human-readable line.
    pub fn describe(&self, max_rate: f64) -> String {
        let c = &self.counts;
        let rate = c
            .failure_rate()
            .map_or("n/a".to_string(), |r| format!("{:.1}%", r * 100.0));
        let numbers = format!(
            "{} failed of {} final ({rate}; threshold {:.1}%)",
            c.failed,
            c.finals(),
            max_rate * 100.0
        );
        match &self.decision {
            GateDecision::Halted { revision } => format!(
                "campaign {}: {numbers}: HALTED (revision {revision})",
                self.campaign
            ),
            GateDecision::AlreadyStopped { state } => format!(
                "campaign {}: {numbers}: already {state}; left alone",
                self.campaign
            ),
            GateDecision::Below => format!("campaign {}: {numbers}: ok", self.campaign),
            GateDecision::TooFewReports => format!(
                "campaign {}: {numbers}: too few final reports to judge",
                self.campaign
            ),
            GateDecision::NotInRepository => format!(
                "campaign {}: {numbers}: not in this repository; ignored",
                self.campaign
            ),
        }
    }
}

/// `petrel-repo rollout …` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum RolloutCommand {
    /// Show per campaign and wave: succeeded, failed (with reasons), pending.
    #[command(after_help = "\
Examples:
  petrel-repo rollout status --reports /var/lib/petrel/reports.db
  PETREL_REPORTS_TOKEN=... petrel-repo rollout status --reports https://reports.example.com --campaign player-2.1 --json")]
    Status {
        /// The report server's URL (http:// or https://) or its SQLite database file.
        #[arg(long, value_name = "URL_OR_DB")]
        reports: String,
        /// Only this campaign.
        #[arg(long, value_name = "ID")]
        campaign: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Bearer token for a report server started with --reports-read-token.
        #[arg(long, env = "PETREL_REPORTS_TOKEN", hide_env_values = true)]
        reports_token: Option<String>,
    },
    /// Halt (re-sign and publish) every active campaign whose failure rate is above a
    /// threshold. Safe from cron: exit 0 when nothing needed halting or when campaigns were
    /// halted and published; 1 on any error, including a halt staged but not published.
    #[command(after_help = "\
Example (cron, every 10 minutes):
  petrel-repo --repo /srv/fleet rollout gate --reports /var/lib/petrel/reports.db --max-failure-rate 0.05 --min-reports 20")]
    Gate {
        /// The report server's URL (http:// or https://) or its SQLite database file.
        #[arg(long, value_name = "URL_OR_DB")]
        reports: String,
        /// Halt when failed / (succeeded + failed) is above this fraction (e.g. 0.05).
        #[arg(long, value_name = "R")]
        max_failure_rate: f64,
        /// Judge a campaign only once it has this many final (succeeded + failed) reports.
        #[arg(long, value_name = "N", default_value_t = 1)]
        min_reports: u64,
        /// Only this campaign.
        #[arg(long, value_name = "ID")]
        campaign: Option<String>,
        /// Bearer token for a report server started with --reports-read-token.
        #[arg(long, env = "PETREL_REPORTS_TOKEN", hide_env_values = true)]
        reports_token: Option<String>,
    },
    /// Apply the health gates of gated campaigns (`[rollout.gates]`): pass the canaries,
    /// open the next wave, or halt, each as a signed revision, then publish. Safe from
    /// cron: exit 0 when nothing changed or revisions were published, 3 when a campaign was
    /// halted (and the halt published), 1 on any error, including revisions staged but not
    /// published.
    #[command(after_help = "\
The gates are judged on the fleet view: the report database joined with the published
tree (the workspace's, for a database; the server's own, for a URL). A campaign still
waiting gets a new revision only when its figures changed, so devices can say what they
wait for (\"waiting for wave 2: opens when wave 1 has ≥ 95 % succeeded (now 71 % …)\").

Examples (cron, every 10 minutes):
  petrel-repo --repo /srv/fleet rollout advance --reports /var/lib/petrel/reports.db
  PETREL_REPORTS_TOKEN=... petrel-repo --repo /srv/fleet rollout advance --reports https://reports.example.com --dry-run")]
    Advance {
        /// The report server's URL (http:// or https://) or its SQLite database file.
        #[arg(long, value_name = "URL_OR_DB")]
        reports: String,
        /// Only this campaign.
        #[arg(long, value_name = "ID")]
        campaign: Option<String>,
        /// Say what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// A campaign still waiting gets a revision with new figures at most this often
        /// (e.g. 30m, 1h, 1d; 0 for every run).
        #[arg(long, value_name = "DURATION", default_value = "30m")]
        figures_every: String,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
        /// Bearer token for a report server started with --reports-read-token.
        #[arg(long, env = "PETREL_REPORTS_TOKEN", hide_env_values = true)]
        reports_token: Option<String>,
    },
    /// Forecast, for each listed device, its wave in a campaign and when it opens: the same
    /// computation devices make (needs no reports; reads the workspace).
    #[command(after_help = "\
FILE holds one device id per line (blank lines and # comments are skipped), or is a CSV
whose header starts with `device_id,` and names profile attributes: region, channel,
device_type, device_class, vendor, hardware and licences (the last two `;`-separated).
Canaries are found through the workspace's assignment bins (staged included).

Examples:
  petrel-repo rollout forecast player-2.1 --devices kiosks.txt
  petrel-repo rollout forecast player-2.1 --devices fleet.csv --json")]
    Forecast {
        /// The campaign id.
        campaign: String,
        /// Device ids, one per line, or a CSV with a `device_id,…` header.
        #[arg(long, value_name = "FILE")]
        devices: PathBuf,
        /// Print the forecast as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `rollout` subcommand; `open` opens the repository workspace (only `gate` needs
/// it, and only after the reports were read).
pub fn run(command: &RolloutCommand, open: impl FnOnce() -> Result<Workspace>) -> Result<()> {
    match command {
        RolloutCommand::Status {
            reports,
            campaign,
            json,
            reports_token,
        } => {
            let summary = load_summary(
                &ReportsSource::parse(reports),
                campaign.as_deref(),
                reports_token.as_deref(),
            )?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).expect("summary serializes")
                );
            } else {
                print!("{}", summary.render_text());
            }
            Ok(())
        }
        RolloutCommand::Gate {
            reports,
            max_failure_rate,
            min_reports,
            campaign,
            reports_token,
        } => {
            let summary = load_summary(
                &ReportsSource::parse(reports),
                campaign.as_deref(),
                reports_token.as_deref(),
            )?;
            let ws = open()?;
            let outcome = gate(
                &ws,
                &summary,
                &GateOptions {
                    max_failure_rate: *max_failure_rate,
                    min_reports: *min_reports,
                    campaign: campaign.clone(),
                },
            )?;
            if outcome.lines.is_empty() {
                println!("no reports about any campaign; nothing to do");
            }
            for l in &outcome.lines {
                println!("{}", l.describe(*max_failure_rate));
            }
            match &outcome.published {
                Some(p) => {
                    let roles: Vec<String> =
                        p.roles.iter().map(|(n, v)| format!("{n} v{v}")).collect();
                    println!(
                        "published {} to {}",
                        roles.join(", "),
                        ws.tree_dir().display()
                    );
                }
                None => println!("nothing to halt"),
            }
            Ok(())
        }
        RolloutCommand::Advance {
            reports,
            campaign,
            dry_run,
            figures_every,
            json,
            reports_token,
        } => {
            use crate::fleet::{advance, load_fleet, AdvanceOptions, EXIT_HALTED};
            let figures_every = match figures_every.trim() {
                "0" => None,
                d => Some(
                    crate::duration::parse(d)
                        .map_err(|e| Error::Usage(format!("--figures-every: {e}")))?,
                ),
            };
            let ws = open()?;
            let view = load_fleet(
                &ReportsSource::parse(reports),
                &ws.tree_dir(),
                reports_token.as_deref(),
                ws.now(),
            )?;
            let outcome = advance(
                &ws,
                &view,
                &AdvanceOptions {
                    campaign: campaign.clone(),
                    dry_run: *dry_run,
                    figures_every,
                },
            )?;
            if *json {
                let lines: Vec<serde_json::Value> = outcome
                    .lines
                    .iter()
                    .map(|l| {
                        let mut v = serde_json::to_value(&l.action).expect("serializes");
                        v["campaign"] = l.campaign.clone().into();
                        v["explanation"] = l.explanation.clone().into();
                        v["revision"] = l.revision.into();
                        v["figures_only"] = l.figures_only.into();
                        v
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "dry_run": dry_run,
                        "campaigns": lines,
                        "published": outcome.published.is_some(),
                    }))
                    .expect("serializes")
                );
            } else {
                if outcome.lines.is_empty() {
                    println!("no gated campaign; nothing to do");
                }
                for l in &outcome.lines {
                    println!("{}", l.describe(*dry_run));
                }
                if let Some(p) = &outcome.published {
                    let roles: Vec<String> =
                        p.roles.iter().map(|(n, v)| format!("{n} v{v}")).collect();
                    println!(
                        "published {} to {}",
                        roles.join(", "),
                        ws.tree_dir().display()
                    );
                }
            }
            if outcome.halted() {
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(EXIT_HALTED);
            }
            Ok(())
        }
        RolloutCommand::Forecast {
            campaign,
            devices,
            json,
        } => crate::forecast::run(&open()?, campaign, devices, *json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_server::reports::{CampaignStatus, WaveStatus};

    #[test]
    fn counts_after_a_halt_keep_every_count_of_the_later_revisions() {
        let counts = |n: u64| Counts {
            succeeded: n,
            failed: n,
            pending: 3 * n,
            declined: n,
            staged: n,
            pending_reboot: n,
            clock_skewed: n,
            failure_reasons: Vec::new(),
        };
        let status = CampaignStatus {
            campaign: "c".into(),
            counts: counts(3),
            waves: vec![
                WaveStatus {
                    revision: 1,
                    wave: Some(1),
                    counts: counts(1),
                },
                WaveStatus {
                    revision: 3,
                    wave: Some(1),
                    counts: counts(2),
                },
            ],
        };
        assert_eq!(counts_after(&status, Some(2)), counts(2));
        assert_eq!(counts_after(&status, None), counts(3));
    }
}

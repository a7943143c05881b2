//! Rollout status: turns stored reports into per-campaign and per-wave counts (the one
//! definition used by the summary endpoint and by `petrel-repo rollout status|gate`).
//!
//! Rules: per campaign, each device counts once, by its latest report: the one the
//! server received last (its own clock, ties broken by arrival order). The time a
//! device claims is never used for ordering, so a report dated in the future cannot
//! outrank the device's later reports; a claimed time more than 24 h from the receive
//! time is flagged instead (`clock_skewed`). `succeeded` and `failed` are final;
//! `declined` and `staged` are pending. Within a campaign the counts are broken down by
//! the (revision, wave) of each device's latest report.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use petrel_client::report::ReportResult;
use serde::{Deserialize, Serialize};

/// The part of a stored report the summary needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    /// Arrival order at the server (larger is later).
    pub seq: i64,
    /// The device.
    pub device_id: String,
    /// The campaign.
    pub campaign: String,
    /// The campaign revision.
    pub revision: u64,
    /// The device's wave.
    pub wave: Option<u32>,
    /// What happened.
    pub result: ReportResult,
    /// Why.
    pub reason: String,
    /// When, by the device's clock (as claimed; not used for ordering).
    pub time: DateTime<Utc>,
    /// When the server received it, by the server's clock.
    pub received_at: DateTime<Utc>,
    /// The claimed time is more than 24 h from the receive time.
    pub clock_skewed: bool,
}

/// How often one failure reason occurred.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// The reason as reported (an empty reason is shown as `(no reason given)`).
    pub reason: String,
    /// Devices whose latest report failed with it.
    pub count: u64,
}

/// Device counts by their latest report's result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Devices whose latest report is `succeeded`.
    pub succeeded: u64,
    /// Devices whose latest report is `failed`.
    pub failed: u64,
    /// Devices whose latest report is `declined`, `staged` or `installed_pending_reboot`.
    pub pending: u64,
    /// Of `pending`: `declined`.
    pub declined: u64,
    /// Of `pending`: `staged`.
    pub staged: u64,
    /// Of `pending`: `installed_pending_reboot` (a new system waits for its reboot and
    /// health check; only a confirmed boot counts as succeeded).
    #[serde(default)]
    pub pending_reboot: u64,
    /// Devices that sent at least one report whose claimed time was more than 24 h from
    /// when the server received it (a wrong device clock, or a made-up time); counted
    /// in the (revision, wave) of the device's latest report.
    #[serde(default)]
    pub clock_skewed: u64,
    /// Failure reasons, most frequent first.
    pub failure_reasons: Vec<ReasonCount>,
}

impl Counts {
    /// Devices counted.
    pub fn devices(&self) -> u64 {
        self.succeeded + self.failed + self.pending
    }

    /// Final reports (succeeded + failed).
    pub fn finals(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// failed / (succeeded + failed); `None` without final reports.
    pub fn failure_rate(&self) -> Option<f64> {
        let finals = self.finals();
        (finals > 0).then(|| self.failed as f64 / finals as f64)
    }

    fn add(&mut self, row: &ReportRow, reasons: &mut BTreeMap<String, u64>) {
        match row.result {
            ReportResult::Succeeded => self.succeeded += 1,
            ReportResult::Failed => {
                self.failed += 1;
                let reason = if row.reason.trim().is_empty() {
                    "(no reason given)".to_string()
                } else {
                    row.reason.clone()
                };
                *reasons.entry(reason).or_default() += 1;
            }
            ReportResult::Declined => {
                self.pending += 1;
                self.declined += 1;
            }
            ReportResult::Staged => {
                self.pending += 1;
                self.staged += 1;
            }
            ReportResult::InstalledPendingReboot => {
                self.pending += 1;
                self.pending_reboot += 1;
            }
        }
    }
}

fn sorted_reasons(reasons: BTreeMap<String, u64>) -> Vec<ReasonCount> {
    let mut v: Vec<ReasonCount> = reasons
        .into_iter()
        .map(|(reason, count)| ReasonCount { reason, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    v
}

/// One (revision, wave) of a campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveStatus {
    /// The campaign revision.
    pub revision: u64,
    /// The wave (`None`: no wave given).
    pub wave: Option<u32>,
    /// The counts.
    #[serde(flatten)]
    pub counts: Counts,
}

/// One campaign's rollout status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignStatus {
    /// The campaign id.
    pub campaign: String,
    /// Totals over every device that reported on the campaign.
    #[serde(flatten)]
    pub counts: Counts,
    /// The same, by (revision, wave) of each device's latest report.
    pub waves: Vec<WaveStatus>,
}

/// Rollout status of every campaign with reports, sorted by campaign id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSummary {
    /// The campaigns.
    pub campaigns: Vec<CampaignStatus>,
}

/// Builds the summary from stored report rows (any order), optionally for one campaign.
pub fn summarize(
    rows: impl IntoIterator<Item = ReportRow>,
    campaign: Option<&str>,
) -> RolloutSummary {
    let mut latest: HashMap<(String, String), ReportRow> = HashMap::new();
    let mut skewed: std::collections::HashSet<(String, String)> = Default::default();
    for row in rows {
        if campaign.is_some_and(|c| c != row.campaign) {
            continue;
        }
        let key = (row.campaign.clone(), row.device_id.clone());
        if row.clock_skewed {
            skewed.insert(key.clone());
        }
        match latest.get(&key) {
            Some(cur) if (cur.received_at, cur.seq) >= (row.received_at, row.seq) => {}
            _ => {
                latest.insert(key, row);
            }
        }
    }
    type WaveKey = (u64, Option<u32>);
    type Acc = (Counts, BTreeMap<String, u64>);
    let mut by_campaign: BTreeMap<String, (Acc, BTreeMap<WaveKey, Acc>)> = BTreeMap::new();
    for (key, row) in latest {
        let skew = u64::from(skewed.contains(&key));
        let (total, waves) = by_campaign.entry(row.campaign.clone()).or_default();
        total.0.add(&row, &mut total.1);
        total.0.clock_skewed += skew;
        let w = waves.entry((row.revision, row.wave)).or_default();
        w.0.add(&row, &mut w.1);
        w.0.clock_skewed += skew;
    }
    let campaigns = by_campaign
        .into_iter()
        .map(|(campaign, ((mut counts, reasons), waves))| {
            counts.failure_reasons = sorted_reasons(reasons);
            CampaignStatus {
                campaign,
                counts,
                waves: waves
                    .into_iter()
                    .map(|((revision, wave), (mut counts, reasons))| {
                        counts.failure_reasons = sorted_reasons(reasons);
                        WaveStatus {
                            revision,
                            wave,
                            counts,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    RolloutSummary { campaigns }
}

impl RolloutSummary {
    /// The status of one campaign, if it has reports.
    pub fn campaign(&self, id: &str) -> Option<&CampaignStatus> {
        self.campaigns.iter().find(|c| c.campaign == id)
    }

    /// A human-readable table: one block per campaign, one line per (revision, wave),
    /// failure reasons indented under the totals.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if self.campaigns.is_empty() {
            out.push_str("no reports\n");
            return out;
        }
        for c in &self.campaigns {
            let rate = match c.counts.failure_rate() {
                Some(r) => format!("{:.1}%", r * 100.0),
                None => "n/a".into(),
            };
            let _ = writeln!(
                out,
                "campaign {}: {} device(s): {} succeeded, {} failed, {} pending; failure rate {rate}",
                c.campaign,
                c.counts.devices(),
                c.counts.succeeded,
                c.counts.failed,
                c.counts.pending
            );
            let _ = writeln!(
                out,
                "  {:<10} {:<6} {:>9} {:>7} {:>8} {:>8} {:>7} {:>7}",
                "REVISION",
                "WAVE",
                "SUCCEEDED",
                "FAILED",
                "PENDING",
                "DECLINED",
                "STAGED",
                "REBOOT"
            );
            for w in &c.waves {
                let wave = w.wave.map_or("-".to_string(), |n| n.to_string());
                let _ = writeln!(
                    out,
                    "  {:<10} {:<6} {:>9} {:>7} {:>8} {:>8} {:>7} {:>7}",
                    w.revision,
                    wave,
                    w.counts.succeeded,
                    w.counts.failed,
                    w.counts.pending,
                    w.counts.declined,
                    w.counts.staged,
                    w.counts.pending_reboot
                );
            }
            if c.counts.clock_skewed > 0 {
                let _ = writeln!(
                    out,
                    "  clock skew: {} device(s) sent a report dated more than 24 h from when it was received",
                    c.counts.clock_skewed
                );
            }
            if !c.counts.failure_reasons.is_empty() {
                out.push_str("  failure reasons:\n");
                for r in &c.counts.failure_reasons {
                    let _ = writeln!(out, "    {:>5}  {}", r.count, r.reason);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(
        seq: i64,
        device: &str,
        campaign: &str,
        wave: Option<u32>,
        result: ReportResult,
        reason: &str,
        minute: u32,
    ) -> ReportRow {
        let time = Utc.with_ymd_and_hms(2026, 11, 22, 6, minute, 0).unwrap();
        ReportRow {
            seq,
            device_id: device.into(),
            campaign: campaign.into(),
            revision: 2,
            wave,
            result,
            reason: reason.into(),
            time,
            // Received in arrival order, a second apart.
            received_at: Utc.with_ymd_and_hms(2026, 11, 22, 7, 0, 0).unwrap()
                + chrono::Duration::seconds(seq),
            clock_skewed: false,
        }
    }

    use ReportResult::*;

    #[test]
    fn a_system_waiting_for_its_reboot_counts_as_pending_until_its_boot_is_confirmed() {
        let rows = vec![
            row(1, "a", "os", None, Staged, "", 0),
            row(2, "a", "os", None, InstalledPendingReboot, "", 1),
            row(3, "b", "os", None, InstalledPendingReboot, "", 1),
            row(4, "b", "os", None, Succeeded, "after the reboot", 2),
        ];
        let s = summarize(rows, None);
        let c = s.campaign("os").unwrap();
        assert_eq!(
            (
                c.counts.succeeded,
                c.counts.pending,
                c.counts.pending_reboot,
                c.counts.failure_rate()
            ),
            (1, 1, 1, Some(0.0))
        );
        let text = s.render_text();
        assert!(text.contains("REBOOT"), "{text}");
    }

    #[test]
    fn latest_report_per_device_wins_and_pending_counts_declined_and_staged() {
        let rows = vec![
            row(1, "a", "c1", Some(0), Staged, "", 0),
            row(2, "a", "c1", Some(0), Succeeded, "", 5),
            row(3, "b", "c1", Some(1), Staged, "", 1),
            // Arrives later, though it claims an earlier time: the latest received wins.
            row(4, "b", "c1", Some(1), Failed, "disk full", 0),
            row(5, "c", "c1", Some(1), Failed, "disk full", 2),
            row(6, "d", "c1", Some(1), Failed, "", 2),
            row(7, "e", "c1", Some(1), Declined, "", 2),
            row(8, "a", "c2", None, Failed, "hook exit 3", 2),
        ];
        let s = summarize(rows.clone(), None);
        assert_eq!(s.campaigns.len(), 2);
        let c1 = s.campaign("c1").unwrap();
        assert_eq!(
            (c1.counts.succeeded, c1.counts.failed, c1.counts.pending),
            (1, 3, 1)
        );
        assert_eq!(c1.counts.declined, 1);
        assert_eq!(
            c1.counts.failure_reasons,
            vec![
                ReasonCount {
                    reason: "disk full".into(),
                    count: 2
                },
                ReasonCount {
                    reason: "(no reason given)".into(),
                    count: 1
                }
            ]
        );
        assert_eq!(c1.counts.failure_rate(), Some(0.75));
        assert_eq!(c1.waves.len(), 2);
        assert_eq!(c1.waves[0].wave, Some(0));
        assert_eq!(c1.waves[0].counts.succeeded, 1);
        assert_eq!(c1.waves[1].counts.failed, 3);
        // Filter by campaign.
        let only = summarize(rows, Some("c2"));
        assert_eq!(only.campaigns.len(), 1);
        assert_eq!(only.campaigns[0].counts.failed, 1);
    }

    #[test]
    fn a_report_dated_in_the_future_does_not_outrank_later_received_ones_and_is_flagged() {
        let mut forged = row(1, "a", "c", Some(0), Succeeded, "", 0);
        forged.time = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
        forged.clock_skewed = true;
        let rows = vec![forged, row(2, "a", "c", Some(0), Failed, "boom", 1)];
        let s = summarize(rows, None);
        let c = s.campaign("c").unwrap();
        assert_eq!((c.counts.succeeded, c.counts.failed), (0, 1));
        assert_eq!(c.counts.clock_skewed, 1);
        assert_eq!(c.waves[0].counts.clock_skewed, 1);
        let text = s.render_text();
        assert!(text.contains("clock skew: 1 device(s)"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["campaigns"][0]["clock_skewed"], 1);
    }

    #[test]
    fn same_time_reports_are_ordered_by_arrival() {
        let rows = vec![
            row(2, "a", "c", None, Succeeded, "", 0),
            row(1, "a", "c", None, Failed, "x", 0),
        ];
        let s = summarize(rows, None);
        assert_eq!(s.campaigns[0].counts.succeeded, 1);
        assert_eq!(s.campaigns[0].counts.failed, 0);
    }

    #[test]
    fn summary_json_round_trips_and_text_names_reasons() {
        let s = summarize(vec![row(1, "a", "c", Some(3), Failed, "boom", 0)], None);
        let json = serde_json::to_string(&s).unwrap();
        let back: RolloutSummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let text = s.render_text();
        assert!(text.contains("failure rate 100.0%"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }
}

//! Renders a [`Decision`] as text: what will happen to this device, and why.

use std::fmt::Write;

use super::{human_bytes, Action, AssignmentOutcome, Decision, Verdict};
use crate::manifest::{local_seconds_of_day, UtcTime};

fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    UtcTime(t).to_string()
}

fn offset(minutes: i32) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    format!("UTC{sign}{:02}:{:02}", m / 60, m % 60)
}

pub(super) fn render(d: &Decision) -> String {
    let mut o = String::new();
    let tod = local_seconds_of_day(d.now, d.utc_offset_minutes);
    let _ = writeln!(o, "What will happen to device {}, and why", d.device_id);
    let _ = writeln!(
        o,
        "Decided at {} (device-local time {:02}:{:02}, {}).",
        ts(d.now),
        tod / 3600,
        tod % 3600 / 60,
        offset(d.utc_offset_minutes)
    );
    let _ = writeln!(o);

    match &d.assignment {
        AssignmentOutcome::Assigned {
            bin,
            revision,
            group,
            canary,
            campaigns,
        } => {
            let _ = write!(
                o,
                "Assignment: bin {bin} (revision {revision}) puts the device in group {group}"
            );
            if *canary {
                let _ = write!(o, "; it is a canary device");
            }
            if !campaigns.is_empty() {
                let _ = write!(
                    o,
                    "; explicitly enrolled in {}",
                    campaigns.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let _ = writeln!(o, ".");
        }
        AssignmentOutcome::NotListed { bin } => {
            let _ = writeln!(o, "Assignment: bin {bin} does not list this device, so it has no group and nothing is installed.");
        }
        AssignmentOutcome::Unavailable => {
            let _ = writeln!(o, "Assignment: no assignment bin is available, so the device has no group and nothing is installed.");
        }
        AssignmentOutcome::Refused { reason } => {
            let _ = writeln!(o, "Assignment: refused ({reason}); nothing is installed.");
        }
    }
    match &d.group {
        Ok((g, r)) => {
            let _ = writeln!(o, "Group: {g} revision {r}.");
        }
        Err(e) => {
            let _ = writeln!(o, "Group: unknown ({e}).");
        }
    }
    match &d.plan {
        None => {}
        Some(p) if p.is_empty() => {
            let _ = writeln!(
                o,
                "The actual inventory already equals the group exactly: nothing to change."
            );
        }
        Some(p) => {
            let _ = writeln!(
                o,
                "To run exactly group {} revision {}, the device needs {} change(s) against its actual inventory:",
                p.group,
                p.revision,
                p.steps.len()
            );
            for s in &p.steps {
                let _ = writeln!(o, "  - {s}");
            }
        }
    }
    let _ = writeln!(o);

    if d.campaigns.is_empty() {
        let _ = writeln!(o, "Campaigns: none published.");
    } else {
        let _ = writeln!(o, "Campaigns ({}):", d.campaigns.len());
    }
    for c in &d.campaigns {
        let _ = write!(o, "* {} revision {}", c.id, c.revision);
        if let Some((title, sev)) = &c.title {
            let _ = write!(o, " \"{title}\" ({sev})");
        }
        let _ = writeln!(o, " [manifest sha256 {}]", c.manifest_sha256.short());
        let _ = writeln!(o, "  => {}", c.status);
        for r in &c.reasons {
            let tag = match r.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Stop => "STOP",
                Verdict::Note => "note",
            };
            let _ = writeln!(o, "     {tag} {:<16} {}", r.rule, r.detail);
        }
        if c.report_due {
            let _ = writeln!(o, "     (to be reported)");
        }
    }
    if !d.unusable.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "Manifests that could not be used:");
        for (path, why) in &d.unusable {
            let _ = writeln!(o, "  - {path}: {why}");
        }
    }
    if !d.stale_staged.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Staged items no campaign needs any more: {}",
            d.stale_staged.join(", ")
        );
    }

    let _ = writeln!(o);
    let actions = d.actions();
    for (i, a) in actions.iter().enumerate() {
        let lead = if i == 0 { "Next:" } else { "Then:" };
        let text = match a {
            Action::Install { campaign, plan, .. } => format!(
                "install the plan ({} change(s)) for campaign {campaign}, all or nothing, after refreshing and deciding again",
                plan.steps.len()
            ),
            Action::Download { campaign, items } => format!(
                "download and verify {} item(s), {}, into staging for campaign {campaign}",
                items.len(),
                human_bytes(items.iter().map(|i| i.transfer_bytes()).sum())
            ),
            Action::Report { campaign, detail, .. } => format!("report on campaign {campaign}: {detail}"),
            Action::AskConsent {
                campaign,
                policy,
                postpones_left,
                ..
            } => {
                if policy.asks_user() {
                    format!("show the notice of campaign {campaign} and ask ({policy}; {postpones_left} postponement(s) left)")
                } else {
                    format!("wait for an administrator consent token for campaign {campaign}")
                }
            }
            Action::Discard { targets } => format!("delete {} staged item(s) nothing needs", targets.len()),
            Action::Wait { until: Some(t) } => format!("nothing to do; decide again at {} at the latest, or after the next refresh", ts(*t)),
            Action::Wait { until: None } => "nothing to do until the repository or the device changes".to_string(),
        };
        let _ = writeln!(o, "{lead} {text}.");
    }
    o
}

//! What the `petrel` commands print: short human text, and JSON for tools.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{Agent, ConsentRequest, Evaluation};
use crate::consent::ConsentState;
use crate::decide::rollout::{percent, position, seed_bp, wave_seed, Position};
use crate::decide::{human_bytes, AssignmentOutcome, CampaignDecision, DeviceProfile, Status};
use crate::manifest::{CampaignManifest, ConsentPolicy, UtcTime};

/// `2030-03-06T00:00:00Z`.
pub fn ts(t: DateTime<Utc>) -> String {
    UtcTime(t).to_string()
}

/// `in 2d 3h`, `5m ago`.
pub fn relative(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let a = secs.unsigned_abs();
    let (d, h, m) = (a / 86400, a % 86400 / 3600, a % 3600 / 60);
    let span = match (d, h, m) {
        (0, 0, 0) => return "now".into(),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    };
    if secs >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// The status of a campaign as one phrase.
pub fn status_phrase(s: &Status) -> String {
    match s {
        Status::NotApplicable { reason } => format!("not applicable because {reason}"),
        Status::Rejected { reason } => format!("rejected because {reason}"),
        Status::WaitingForConsent {
            policy: ConsentPolicy::Administrator,
            deadline,
            ..
        } => {
            let mut t = "waiting for consent (an administrator consent token".to_string();
            if let Some(d) = deadline {
                let _ = write!(t, ", deadline {}", ts(*d));
            }
            t + ")"
        }
        Status::WaitingForConsent {
            policy,
            stage,
            postpones_left,
            deadline,
        } => {
            let mut t = format!(
                "waiting for consent ({policy}, {stage}, {postpones_left} postponement(s) left"
            );
            if let Some(d) = deadline {
                let _ = write!(t, ", deadline {}", ts(*d));
            }
            t + ")"
        }
        other => other.to_string(),
    }
}

/// What happens next for one campaign, as a short imperative.
pub fn next_step(c: &CampaignDecision) -> String {
    let id = &c.id;
    match &c.status {
        Status::WaitingForConsent {
            policy: ConsentPolicy::Administrator,
            ..
        } => format!(
            "wait for an administrator consent token (petrel consent token {id} TOKEN.json)"
        ),
        Status::WaitingForConsent { .. } => format!("answer it: petrel consent show {id}"),
        Status::Postponed { until, .. } => format!("ask again at {}", ts(*until)),
        Status::ReadyToDownload { items, bytes } => {
            let deltas = items.iter().filter(|i| i.delta.is_some()).count();
            format!(
                "download and verify {} item(s), {}{}, into staging (petrel update)",
                items.len(),
                human_bytes(*bytes),
                if deltas > 0 {
                    format!(" ({deltas} as delta(s) from the installed bytes)")
                } else {
                    String::new()
                }
            )
        }
        Status::WaitingForDownloadWindow { opens_at, .. } => {
            format!("download when the window opens at {}", ts(*opens_at))
        }
        Status::WaitingForApplyWindow { opens_at } => {
            format!("install when the apply window opens at {}", ts(*opens_at))
        }
        Status::ReadyToInstall { .. } => {
            "install the plan, all or nothing, after refreshing and deciding again (petrel update)"
                .into()
        }
        Status::WaitingForWave { wave, opens_at } => {
            format!("wait for wave {wave} at {}", ts(*opens_at))
        }
        Status::NotStarted { starts_at } => format!("wait until {}", ts(*starts_at)),
        Status::WaitingForCanaries => "wait for a revision that passes the canaries".into(),
        Status::WaitingForGate { wave, .. } => {
            format!("wait for a revision that opens wave {wave} (petrel-repo rollout advance)")
        }
        Status::NotInRollout { .. } => "wait for a revision that widens the rollout".into(),
        Status::Halted => "none until the campaign is resumed".into(),
        Status::Error { .. }
        | Status::Rejected { .. }
        | Status::Declined { .. }
        | Status::Expired { .. }
            if c.report_due =>
        {
            "report it".into()
        }
        _ => "none".into(),
    }
}

fn assignment_line(d: &crate::decide::Decision) -> String {
    let group = match &d.group {
        Ok((g, r)) => format!("group {g} revision {r}"),
        Err(_) => "no group".to_string(),
    };
    match &d.assignment {
        AssignmentOutcome::Assigned {
            bin,
            revision,
            canary,
            ..
        } => format!(
            "{group} (assignment bin {bin} revision {revision}{})",
            if *canary { ", canary device" } else { "" }
        ),
        AssignmentOutcome::NotListed { bin } => {
            format!("no group: assignment bin {bin} does not list this device")
        }
        AssignmentOutcome::Unavailable => {
            "no group: no assignment bin is available for this device".into()
        }
        AssignmentOutcome::Refused { reason } => {
            format!("no group: the assignment bin was refused ({reason})")
        }
    }
}

fn inventory_line(agent: &Agent) -> String {
    let inv = &agent.profile().inventory;
    let apps = if inv.is_empty() {
        "nothing installed".to_string()
    } else {
        inv.iter()
            .map(|(a, i)| format!("{a} {}", i.version))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("Inventory ({}): {apps}", agent.config().inventory)
}

fn plan_line(d: &crate::decide::Decision) -> Option<String> {
    let p = d.plan.as_ref()?;
    Some(if p.is_empty() {
        format!(
            "Plan: the device already runs exactly group {} revision {}",
            p.group, p.revision
        )
    } else {
        format!(
            "Plan: {} change(s) to run exactly group {} revision {}: {}",
            p.steps.len(),
            p.group,
            p.revision,
            p.steps
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// `petrel check`: one line per campaign with its status and next step.
pub fn check_text(agent: &Agent, ev: &Evaluation) -> String {
    decision_text(agent, &ev.decision)
}

/// The body of [`check_text`] for a decision.
pub fn decision_text(agent: &Agent, d: &crate::decide::Decision) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Device {}: {}", d.device_id, assignment_line(d));
    let _ = writeln!(o, "{}", inventory_line(agent));
    if let Some(p) = plan_line(d) {
        let _ = writeln!(o, "{p}");
    }
    if d.campaigns.is_empty() {
        let _ = writeln!(o, "Campaigns: none published");
    } else {
        let _ = writeln!(o, "Campaigns ({}):", d.campaigns.len());
    }
    for c in &d.campaigns {
        let _ = writeln!(
            o,
            "  {} revision {}: {}; next: {}",
            c.id,
            c.revision,
            status_phrase(&c.status),
            next_step(c)
        );
    }
    if !d.unusable.is_empty() {
        let _ = writeln!(o, "Problems:");
        for (path, why) in &d.unusable {
            let _ = writeln!(o, "  {path}: {why}");
        }
    }
    let _ = write!(o, "Decided at {}", ts(d.now));
    if let Some(w) = d.wake_at {
        let _ = write!(o, "; decide again at {} at the latest", ts(w));
    }
    let _ = writeln!(o, ". `petrel check --explain` shows the reasons.");
    o
}

/// `petrel check --json`.
pub fn check_json(ev: &Evaluation) -> Value {
    json!({
        "device": ev.decision.device_id,
        "decided_at": ts(ev.now),
        "metadata": ev.versions,
        "decision": ev.decision,
        "actions": ev.decision.actions(),
    })
}

/// The device's place in a campaign's rollout: text and JSON.
pub fn wave_info(
    c: &CampaignManifest,
    profile: &DeviceProfile,
    canary: bool,
    now: DateTime<Utc>,
) -> (String, Value) {
    let seed = seed_bp(wave_seed(&profile.id, &c.id));
    let opened = |t: Option<DateTime<Utc>>| match t {
        None => "open".to_string(),
        Some(t) if now >= t => format!("open since {}", ts(t)),
        Some(t) => format!("opens at {} ({})", ts(t), relative(now, t)),
    };
    let pos = position(c, profile, canary);
    let text = match &pos {
        Position::Canary { opens_at } => {
            format!("canary device, goes first: {}", opened(*opens_at))
        }
        Position::AfterCanaries => match crate::decide::rollout::gate_condition(c, None) {
            Some(g) => format!("not a canary device: the rollout after the canaries {g}"),
            None => {
                "not a canary device: waits until a revision says the canaries passed".to_string()
            }
        },
        Position::Wave { index, opens_at } if c.rollout.has_selectors() => format!(
            "wave {} of {} ({}): {}",
            index + 1,
            c.rollout.waves.len(),
            c.rollout.waves[*index].describe(),
            opened(Some(*opens_at))
        ),
        Position::Wave { index, opens_at } => format!(
            "wave {} of {} (device seed {}): {}",
            index + 1,
            c.rollout.waves.len(),
            percent(seed),
            opened(Some(*opens_at))
        ),
        Position::Everyone { opens_at } => {
            format!("no waves, every device at once: {}", opened(*opens_at))
        }
        Position::Beyond { covered_bp } => format!(
            "beyond the last wave: the device's seed is at {}, the waves reach {}",
            percent(seed),
            percent(*covered_bp)
        ),
        Position::NoWave { reason } => format!("not in any wave: {reason}"),
        Position::Gated { index } => format!(
            "wave {} of {}: gated, it {}",
            index + 1,
            c.rollout.waves.len(),
            crate::decide::rollout::gate_condition(c, Some(*index)).unwrap_or_default()
        ),
    };
    let (kind, wave, opens_at) = match &pos {
        Position::Canary { opens_at } => ("canary", None, *opens_at),
        Position::AfterCanaries => ("after_canaries", None, None),
        Position::Wave { index, opens_at } => ("wave", Some(index + 1), Some(*opens_at)),
        Position::Everyone { opens_at } => ("everyone", None, *opens_at),
        Position::Beyond { .. } => ("beyond", None, None),
        Position::NoWave { .. } => ("no_wave", None, None),
        Position::Gated { index } => ("gated", Some(index + 1), None),
    };
    let json = json!({
        "position": kind,
        "wave": wave,
        "waves": c.rollout.waves.len(),
        "seed_bp": seed,
        "opens_at": opens_at.map(ts),
        "open": pos.is_open(now),
    });
    (text, json)
}

/// Where consent stands, as text.
pub fn consent_text(policy: ConsentPolicy, stage: &str, state: &ConsentState) -> String {
    if policy == ConsentPolicy::None {
        return "not needed (policy none)".into();
    }
    let s = match state {
        ConsentState::NotNeeded => "not needed".to_string(),
        ConsentState::Granted { how } => format!("given: {how}"),
        ConsentState::Pending {
            postpones_left,
            deadline,
        } => {
            let mut t = if policy == ConsentPolicy::Administrator {
                "waiting for an administrator consent token".to_string()
            } else {
                format!("not given yet, {postpones_left} postponement(s) left")
            };
            if let Some(d) = deadline {
                let _ = write!(t, ", deadline {}", ts(*d));
            }
            t
        }
        ConsentState::Postponed {
            until,
            postpones_left,
        } => format!(
            "postponed until {} ({postpones_left} postponement(s) left)",
            ts(*until)
        ),
        ConsentState::Declined { at } => format!("declined at {}", ts(*at)),
        ConsentState::Expired { deadline } => {
            format!(
                "expired: the deadline {} passed without consent",
                ts(*deadline)
            )
        }
    };
    format!("{policy}, {stage}: {s}")
}

fn consent_state_json(state: &ConsentState) -> Value {
    match state {
        ConsentState::NotNeeded => json!({"state": "not_needed"}),
        ConsentState::Granted { how } => json!({"state": "granted", "how": how}),
        ConsentState::Pending {
            postpones_left,
            deadline,
        } => {
            json!({"state": "pending", "postpones_left": postpones_left, "deadline": deadline.map(ts)})
        }
        ConsentState::Postponed {
            until,
            postpones_left,
        } => json!({"state": "postponed", "until": ts(*until), "postpones_left": postpones_left}),
        ConsentState::Declined { at } => json!({"state": "declined", "at": ts(*at)}),
        ConsentState::Expired { deadline } => {
            json!({"state": "expired", "deadline": ts(*deadline)})
        }
    }
}

struct CampaignStatus {
    text: String,
    json: Value,
}

fn campaign_status(agent: &Agent, ev: &Evaluation, c: &CampaignDecision) -> CampaignStatus {
    let entry = ev
        .view
        .campaigns
        .iter()
        .find(|e| e.target_path == c.target_path)
        .expect("every decision comes from an entry");
    let m = &entry.manifest;
    let canary = ev.assignment().is_some_and(|a| a.canary);
    let (wave_text, wave_json) = wave_info(m, agent.profile(), canary, ev.now);
    let (cs, _) = ev.consent_state(entry, agent.profile());
    let consent = consent_text(m.consent.policy, &m.consent.stage.to_string(), &cs);
    let mut text = String::new();
    let _ = write!(text, "  {} revision {}", c.id, c.revision);
    if let Some((title, sev)) = &c.title {
        let _ = write!(text, " \"{title}\" ({sev})");
    }
    let _ = writeln!(text);
    let _ = writeln!(text, "    state:   {}", status_phrase(&c.status));
    let _ = writeln!(text, "    next:    {}", next_step(c));
    let _ = writeln!(text, "    wave:    {wave_text}");
    let _ = writeln!(text, "    consent: {consent}");
    let json = json!({
        "id": c.id,
        "revision": c.revision,
        "manifest_sha256": entry.sha256,
        "offer_sha256": m.offer_sha256(),
        "title": c.title.as_ref().map(|t| &t.0),
        "severity": c.title.as_ref().map(|t| t.1),
        "status": c.status,
        "status_text": status_phrase(&c.status),
        "next": next_step(c),
        "wave": wave_json,
        "consent": {
            "policy": m.consent.policy,
            "stage": m.consent.stage,
            "deadline": m.consent.deadline.map(|d| ts(d.0)),
            "current": consent_state_json(&cs),
        },
    });
    CampaignStatus { text, json }
}

/// `petrel status`.
pub fn status_text(agent: &Agent, ev: &Evaluation) -> String {
    let d = &ev.decision;
    let p = agent.profile();
    let mut o = String::new();
    let mut about = vec![format!("type {}", p.device_type)];
    for (k, v) in [
        ("class", &p.class),
        ("vendor", &p.vendor),
        ("region", &p.region),
        ("channel", &p.channel),
        ("locale", &p.locale),
    ] {
        if let Some(v) = v {
            about.push(format!("{k} {v}"));
        }
    }
    let m = p.utc_offset_minutes;
    about.push(format!(
        "UTC{}{:02}:{:02}",
        if m < 0 { '-' } else { '+' },
        m.unsigned_abs() / 60,
        m.unsigned_abs() % 60
    ));
    let _ = writeln!(o, "Device:     {} ({})", p.id, about.join(", "));
    let _ = writeln!(o, "Assignment: {}", assignment_line(d));
    let v = &ev.versions;
    let _ = writeln!(
        o,
        "Repository: {} (root v{}, timestamp v{}, snapshot v{}, targets v{})",
        agent.config().repository.metadata_url,
        v.root,
        v.timestamp,
        v.snapshot,
        v.targets
    );
    let _ = writeln!(
        o,
        "Inventory:  {} application(s), read from {}",
        p.inventory.len(),
        agent.config().inventory
    );
    for (app, i) in &p.inventory {
        let hash = i
            .sha256
            .as_deref()
            .map_or("sha256 unknown".to_string(), |h| {
                format!("sha256 {}…", &h[..12])
            });
        let _ = writeln!(o, "  {app} {} ({hash})", i.version);
    }
    if let Some(l) = plan_line(d) {
        let _ = writeln!(o, "{l}");
    }
    if d.campaigns.is_empty() {
        let _ = writeln!(o, "Campaigns:  none published");
    } else {
        let _ = writeln!(o, "Campaigns ({}):", d.campaigns.len());
    }
    for c in &d.campaigns {
        o.push_str(&campaign_status(agent, ev, c).text);
    }
    if !d.unusable.is_empty() {
        let _ = writeln!(o, "Problems:");
        for (path, why) in &d.unusable {
            let _ = writeln!(o, "  {path}: {why}");
        }
    }
    let _ = writeln!(
        o,
        "State:      {} ({} consent record(s), {} staged item(s))",
        agent.paths().root.display(),
        ev.consent.records().events().len(),
        ev.state.staged.len()
    );
    let staged = super::stage::list(agent.paths());
    if !staged.is_empty() {
        let _ = writeln!(o, "Staged ({}):", staged.len());
        for s in &staged {
            let _ = writeln!(o, "  {}", staged_line(s, d));
        }
    }
    o.push_str(&reports_text(agent));
    if let Some(why) = &ev.inhibit {
        let _ = writeln!(o, "Device:     waiting: {why}");
    }
    let _ = writeln!(o, "Decided at {}.", ts(d.now));
    o
}

/// The outbox in `petrel status`: queued and set-aside reports, and where they go.
pub fn reports_text(agent: &Agent) -> String {
    let mut o = String::new();
    let summary = crate::report::Outbox::open(agent.paths().outbox()).and_then(|b| b.summary());
    let dest = match &agent.config().report_url {
        Some(u) => format!("sent to {u}"),
        None => "kept locally: no report_url is configured".to_string(),
    };
    match summary {
        Err(e) => {
            let _ = writeln!(o, "Reports:    cannot read the outbox: {e}");
        }
        Ok(s) if s.queued.is_empty() && s.set_aside.is_empty() => {
            let _ = writeln!(o, "Reports:    none waiting ({dest})");
        }
        Ok(s) => {
            let oldest = s
                .oldest_queued()
                .map(|t| format!(", oldest {}", ts(t)))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "Reports:    {} queued{oldest} ({dest}); {} set aside",
                s.queued.len(),
                s.set_aside.len()
            );
            for e in &s.set_aside {
                let _ = writeln!(
                    o,
                    "  set aside {} {}: {}",
                    &e.report_id[..e.report_id.len().min(12)],
                    e.at.map(ts).unwrap_or_default(),
                    e.reason.as_deref().unwrap_or("refused as malformed")
                );
            }
        }
    }
    o
}

/// One staging directory as a line: the plan, the files, and where its campaign stands.
pub fn staged_line(s: &super::stage::StagedCampaign, d: &crate::decide::Decision) -> String {
    let name = s
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let files = format!("{} file(s), {}", s.files, human_bytes(s.bytes));
    match &s.plan {
        Some(p) => {
            let now = d
                .campaign(&p.campaign)
                .map(|c| status_phrase(&c.status))
                .unwrap_or_else(|| "no longer published".into());
            format!(
                "{} revision {}: {} change(s) to group {} revision {} ({files}), staged at {}; now: {now}",
                p.campaign,
                p.revision,
                p.steps.len(),
                p.group,
                p.group_revision,
                ts(p.staged_at)
            )
        }
        None => format!("{name}: incomplete ({files}); the next download resumes it"),
    }
}

/// A staging directory as JSON.
pub fn staged_json(s: &super::stage::StagedCampaign) -> Value {
    json!({
        "dir": s.dir,
        "files": s.files,
        "bytes": s.bytes,
        "complete": s.plan.is_some(),
        "plan": s.plan,
    })
}

/// `petrel update`: what was staged, installed and reported, then each campaign's status.
pub fn update_text(agent: &Agent, out: &super::UpdateOutcome) -> String {
    use super::InstallResult;
    let mut o = String::new();
    if let Some(r) = &out.recovered {
        let _ = writeln!(o, "{}", recovery_text(r));
    }
    for s in &out.staged {
        let mut line = format!("Staging {} revision {}: ", s.campaign, s.revision);
        let mut parts = Vec::new();
        if !s.downloaded.is_empty() {
            parts.push(format!(
                "downloaded and verified {} item(s), {}",
                s.downloaded.len(),
                human_bytes(s.bytes)
            ));
        }
        if !s.via_delta.is_empty() {
            parts.push(format!(
                "{} of them built from a delta and the installed bytes",
                s.via_delta.len()
            ));
        }
        for f in &s.delta_fallbacks {
            parts.push(format!("delta not used, full download instead ({f})"));
        }
        if !s.kept.is_empty() {
            parts.push(format!(
                "{} item(s) already staged and verified again",
                s.kept.len()
            ));
        }
        if parts.is_empty() && s.error.is_none() {
            parts.push("nothing to download".into());
        }
        line.push_str(&parts.join(", "));
        match (&s.error, &s.plan) {
            (Some(e), _) => {
                let sep = if parts.is_empty() { "" } else { "; " };
                let what = if s.error_is_temporary {
                    "download interrupted"
                } else {
                    "download FAILED"
                };
                let next = if s.error_is_temporary {
                    "the next run resumes"
                } else {
                    "the next run downloads it again"
                };
                let _ = write!(line, "{sep}{what}: {e} ({next})");
            }
            (None, Some(p)) => {
                let _ = write!(line, "; staged plan {}", p.display());
            }
            (None, None) => {}
        }
        let _ = writeln!(o, "{line}");
    }
    for i in &out.installs {
        let head = match i.result {
            InstallResult::Installed => "Installed",
            InstallResult::PendingReboot => "Installed, PENDING REBOOT",
            InstallResult::RolledBack => "Install FAILED and ROLLED BACK",
            InstallResult::Failed => "Install FAILED",
            InstallResult::Deferred => "Not installed now",
            InstallResult::NotInstalled => "Not installed",
        };
        let _ = writeln!(
            o,
            "{head}: campaign {} revision {}: {}",
            i.campaign, i.revision, i.reason
        );
    }
    for r in &out.reports {
        let _ = writeln!(
            o,
            "Report queued: campaign {} revision {}: {} ({})",
            r.campaign, r.revision, r.result, r.reason
        );
    }
    if let Some(s) = &out.sent {
        let _ = writeln!(o, "Reports: {s}");
    }
    if !out.problems.is_empty() {
        let _ = writeln!(
            o,
            "Problems (nothing is blamed on a campaign; tried again at the next run):"
        );
        for p in &out.problems {
            let _ = writeln!(o, "  {p}");
        }
    }
    for n in &out.notes {
        let _ = writeln!(o, "Note: {n}");
    }
    if let Some(d) = &out.decision {
        o.push_str(&decision_text(agent, d));
    }
    o
}

/// `petrel update --json`.
pub fn update_json(out: &super::UpdateOutcome) -> Value {
    let mut v = serde_json::to_value(out).expect("outcomes serialize");
    if let (Some(d), Value::Object(m)) = (&out.decision, &mut v) {
        m.insert("actions".into(), json!(d.actions()));
        m.insert("decided_at".into(), json!(ts(d.now)));
    }
    v
}

/// What recovery at the start did, in one sentence.
pub fn recovery_text(r: &super::install::Recovery) -> String {
    use super::install::Recovery;
    match r {
        Recovery::RolledBack { campaign, revision } => format!(
            "Recovered: the install of campaign {campaign} revision {revision} was interrupted before its commit point and was undone; the previous set is installed."
        ),
        Recovery::RolledForward(a) if a.after_reboot => format!(
            "After the reboot, campaign {} revision {}: {}.",
            a.campaign,
            a.revision,
            match &a.failure {
                None => format!("the new system is healthy and marked good ({})", a.changes.join("; ")),
                Some(f) => format!("{f}; the previous system runs"),
            }
        ),
        Recovery::RolledForward(a) if a.rolled_back => format!(
            "Recovered: the install of campaign {} revision {} was interrupted and has been rolled back ({}); the previous set is installed.",
            a.campaign,
            a.revision,
            a.failure.as_deref().unwrap_or("it failed")
        ),
        Recovery::RolledForward(a) => format!(
            "Recovered: the install of campaign {} revision {} was interrupted after its commit point and was completed: {}{}.",
            a.campaign,
            a.revision,
            a.changes.join("; "),
            a.failure.as_ref().map(|f| format!(" ({f})")).unwrap_or_default()
        ),
        Recovery::Pending {
            campaign,
            revision,
            reboot: Some(into),
        } => format!(
            "The install of campaign {campaign} revision {revision} waits for a reboot ({into}); it goes on after it."
        ),
        Recovery::Pending {
            campaign, revision, ..
        } => format!(
            "Recovered: the new set of campaign {campaign} revision {revision} is in place; its hooks and health check run at the agent's next start (the previous set is kept until then)."
        ),
    }
}

/// `petrel status --json`.
pub fn status_json(agent: &Agent, ev: &Evaluation) -> Value {
    let d = &ev.decision;
    let mut profile = agent.profile().clone();
    let inventory = std::mem::take(&mut profile.inventory);
    json!({
        "device": profile,
        "inventory_source": agent.config().inventory.to_string(),
        "inventory": inventory,
        "assignment": d.assignment,
        "group": d.group.as_ref().ok().map(|(g, r)| json!({"id": g, "revision": r})),
        "plan": d.plan,
        "metadata": ev.versions,
        "campaigns": d.campaigns.iter().map(|c| campaign_status(agent, ev, c).json).collect::<Vec<_>>(),
        "unusable": d.unusable,
        "decided_at": ts(d.now),
        "state_dir": agent.paths().root,
        "consent_records": ev.consent.records().events().len(),
        "staged": super::stage::list(agent.paths()).iter().map(staged_json).collect::<Vec<_>>(),
        "inhibit": ev.inhibit,
        "reports": crate::report::Outbox::open(agent.paths().outbox()).and_then(|b| b.summary()).ok().map(|s| json!({
            "destination": agent.config().report_url,
            "queued": s.queued.iter().map(|e| &e.report_id).collect::<Vec<_>>(),
            "set_aside": s.set_aside.iter().map(|e| json!({"report_id": e.report_id, "at": e.at.map(ts), "reason": e.reason})).collect::<Vec<_>>(),
        })),
    })
}

/// `petrel consent list`.
pub fn consent_list_text(reqs: &[ConsentRequest]) -> String {
    if reqs.is_empty() {
        return "No consent requests are pending.\n".into();
    }
    let mut o = format!("Pending consent requests ({}):\n", reqs.len());
    for r in reqs {
        let _ = writeln!(
            o,
            "  {} revision {} \"{}\" ({}, notice in {}) [offer sha256 {}]",
            r.campaign,
            r.revision,
            r.title,
            r.severity,
            r.locale,
            &r.offer_sha256[..12]
        );
        let _ = writeln!(
            o,
            "    {}",
            consent_text(r.policy, &r.stage.to_string(), &r.state)
        );
        let _ = writeln!(o, "    show it: petrel consent show {}", r.campaign);
    }
    o
}

/// A consent request as JSON.
pub fn consent_request_json(r: &ConsentRequest) -> Value {
    json!({
        "campaign": r.campaign,
        "revision": r.revision,
        "offer_sha256": r.offer_sha256,
        "manifest_sha256": r.manifest_sha256,
        "locale": r.locale,
        "title": r.title,
        "body": r.body,
        "severity": r.severity,
        "policy": r.policy,
        "stage": r.stage,
        "deadline": r.deadline.map(ts),
        "max_postpones": r.max_postpones,
        "consent": consent_state_json(&r.state),
        "notes": r.notes,
    })
}

/// `petrel consent show`. `locale_flag`: the `--locale` the notice was asked for, repeated
/// in the answer commands so the record names the locale shown.
pub fn consent_show_text(ev: &Evaluation, r: &ConsentRequest, locale_flag: Option<&str>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Campaign {} revision {}", r.campaign, r.revision);
    let _ = writeln!(o, "Offer sha256 {}", r.offer_sha256);
    let _ = writeln!(o, "Manifest sha256 {}", r.manifest_sha256);
    let _ = writeln!(o);
    let _ = writeln!(o, "{} [{}] (notice in {})", r.title, r.severity, r.locale);
    let _ = writeln!(o);
    for line in r.body.lines() {
        let _ = writeln!(o, "  {line}");
    }
    let _ = writeln!(o);
    if let Some(c) = ev.decision.campaign(&r.campaign) {
        if let Some(p) = &c.plan {
            let _ = writeln!(o, "On this device it changes:");
            for s in &p.steps {
                let _ = writeln!(o, "  - {s}");
            }
        }
        let _ = writeln!(o, "Status:  {}", status_phrase(&c.status));
    }
    let _ = writeln!(
        o,
        "Consent: {}",
        consent_text(r.policy, &r.stage.to_string(), &r.state)
    );
    for n in &r.notes {
        let _ = writeln!(o, "  note: {n}");
    }
    let id = &r.campaign;
    let h = match locale_flag {
        Some(_) => format!("{} --locale {}", r.offer_sha256, r.locale),
        None => r.offer_sha256.clone(),
    };
    match r.policy {
        ConsentPolicy::Required | ConsentPolicy::Acknowledge => {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "Answer (bound to this offer: the notice, the payload, the consent policy and the method; a later revision that changes only the rollout keeps it):"
            );
            if r.policy == ConsentPolicy::Acknowledge {
                let _ = writeln!(o, "  petrel consent acknowledge {id} --sha256 {h}");
            } else {
                let _ = writeln!(o, "  petrel consent accept {id} --sha256 {h}");
                let _ = writeln!(o, "  petrel consent decline {id} --sha256 {h}");
            }
            if r.max_postpones > 0 {
                let _ = writeln!(
                    o,
                    "  petrel consent postpone {id} --for 1d --sha256 {}",
                    r.offer_sha256
                );
            }
        }
        ConsentPolicy::Administrator => {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "The fleet administrator agrees out of band: petrel consent token {id} TOKEN.json"
            );
        }
        ConsentPolicy::None => {}
    }
    o
}

/// `petrel slots status --json`: the slots, the booted one, the bootloader's variables and
/// what each slot holds.
pub fn slots_json(slots: &super::install::slot::Slots) -> Value {
    use super::install::bootloader::Slot;
    let state = slots.state();
    let booted = slots.booted();
    let bl = slots.bootloader();
    let per_slot: Vec<Value> = [Slot::A, Slot::B]
        .into_iter()
        .map(|s| {
            let rec = state.as_ref().ok().and_then(|st| st.slots.get(&s).cloned());
            json!({
                "slot": s.name(),
                "path": slots.path(s).display().to_string(),
                "booted": booted.as_ref().ok() == Some(&s),
                "tries_left": bl.tries_left(s).ok().flatten(),
                "holds": rec,
            })
        })
        .collect();
    json!({
        "app": slots.config().app,
        "bootloader": bl.name(),
        "booted": match &booted {
            Ok(s) => s.name().to_string(),
            Err(e) => format!("unknown ({e})"),
        },
        "variables": bl.variables().unwrap_or_default(),
        "slots": per_slot,
        "install_in_progress": state.as_ref().ok().and_then(|s| s.target.clone()),
        "error": state.err(),
    })
}

/// `petrel slots status`.
pub fn slots_text(slots: &super::install::slot::Slots, v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "System image {} in two slots; bootloader: {}",
        slots.config().app,
        v["bootloader"].as_str().unwrap_or("")
    );
    let _ = writeln!(o, "Booted: {}", v["booted"].as_str().unwrap_or("?"));
    for s in v["slots"].as_array().into_iter().flatten() {
        let holds = match &s["holds"] {
            Value::Null => "nothing Petrel wrote".to_string(),
            h => format!(
                "{} {} (image {} bytes, sha256 {}, written {})",
                h["app"].as_str().unwrap_or(""),
                h["version"].as_str().unwrap_or(""),
                h["image_length"],
                &h["image_sha256"].as_str().unwrap_or("")
                    [..12.min(h["image_sha256"].as_str().unwrap_or("").len())],
                h["written_at"].as_str().unwrap_or("")
            ),
        };
        let _ = writeln!(
            o,
            "  slot {} {}{}: {holds}{}",
            s["slot"].as_str().unwrap_or(""),
            s["path"].as_str().unwrap_or(""),
            if s["booted"] == json!(true) {
                " (booted)"
            } else {
                ""
            },
            match s["tries_left"].as_u64() {
                Some(n) => format!("; {n} boot tries left"),
                None => String::new(),
            }
        );
    }
    if let Some(t) = v.get("install_in_progress").filter(|t| !t.is_null()) {
        let _ = writeln!(
            o,
            "Install in progress: slot {} (from {}){}",
            t["slot"].as_str().unwrap_or(""),
            t["from"].as_str().unwrap_or(""),
            if t.get("switched_in_boot").is_some() {
                ", switched: the reboot and its health check decide (the bootloader variables say what boots next)"
            } else {
                ", being written"
            }
        );
    }
    if let Some(vars) = v["variables"].as_object().filter(|m| !m.is_empty()) {
        let text: Vec<String> = vars
            .iter()
            .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or("")))
            .collect();
        let _ = writeln!(o, "Bootloader variables: {}", text.join(" "));
    }
    if let Some(e) = v["error"].as_str() {
        let _ = writeln!(o, "Problem: {e}");
    }
    o
}

//! The read-only fleet dashboard (`GET /dashboard`): a [`FleetView`] rendered as one HTML page.
//!
//! [`render`] is a pure function of the view and the device search text. The page is
//! plain HTML with inline CSS and one small inline script (the device table's search box,
//! which also works without JavaScript through `?q=`); it loads nothing else, and
//! [`content_security_policy`] forbids every other resource. Every string that comes from
//! the repository or from devices is HTML-escaped ([`escape`]).
//!
//! Stable hooks for tests and scripts: each campaign is an `<article class="campaign"
//! data-campaign="ID">`, each stage a `<div class="stage" data-stage="wave 1">` with
//! `data-devices`, `data-succeeded`, `data-failed`, `data-pending` (pending and not
//! overdue) and `data-overdue`, the gate a `<div class="gate" data-action="open_wave">`
//! (the JSON name of the action), each device a `<tr class="device" data-device="ID">`
//! whose campaign cells carry `data-campaign` and `data-state`.

use std::fmt::Write as _;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};

use crate::reports::fleet::{Action, CampaignView, DeviceView, FleetView, StageView};

/// The inline script: filters the device table as the search box changes.
pub const SEARCH_SCRIPT: &str = r##"(function () {
  var input = document.getElementById("device-search");
  var count = document.getElementById("device-count");
  if (!input || !count) { return; }
  var rows = document.querySelectorAll("#device-table tbody tr.device");
  var total = count.getAttribute("data-total");
  function apply() {
    var q = input.value.trim().toLowerCase();
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var match = q === "" || rows[i].getAttribute("data-search").indexOf(q) !== -1;
      rows[i].hidden = !match;
      if (match) { shown++; }
    }
    count.textContent = "Showing " + shown + " of " + total + " devices";
  }
  input.addEventListener("input", apply);
})();"##;

const STYLE: &str = r#"
:root { --ok: #2e7d32; --bad: #c62828; --wait: #9e9e9e; --late: #e65100; --line: #d0d4d9; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; color: #1c1f23; background: #f5f6f8; }
header { background: #12344d; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 4px 0 0; opacity: .85; }
main { padding: 16px 24px 40px; max-width: 1240px; }
h2 { font-size: 18px; margin: 22px 0 10px; }
.campaign { background: #fff; border: 1px solid var(--line); border-radius: 8px;
            padding: 14px 18px; margin: 0 0 16px; }
.campaign h3 { margin: 0 0 6px; font-size: 17px; }
.campaign .revision { font-weight: normal; color: #555; margin-left: 6px; }
.badge { display: inline-block; font-size: 12px; font-weight: 600; padding: 1px 8px;
         border-radius: 10px; margin-left: 6px; vertical-align: 2px; background: #e3e7eb; }
.state-active { background: #d7eeda; color: #1b5e20; }
.state-halted { background: #fde0dc; color: #8e1c13; }
.state-cancelled { background: #e0e0e0; color: #424242; }
.meta { color: #555; margin: 0 0 10px; }
.stage { margin: 10px 0 12px; }
.stage-head { display: flex; gap: 10px; align-items: baseline; flex-wrap: wrap; }
.stage-name { font-weight: 600; min-width: 80px; }
.stage-open { font-size: 12px; color: #555; }
td.group, td.last-contact, td.canary { white-space: nowrap; }
.stage-status { color: #333; }
.bar { display: flex; height: 22px; border-radius: 4px; overflow: hidden; background: #eceff1;
       border: 1px solid var(--line); margin: 4px 0; }
.seg { display: block; height: 100%; color: #fff; font-size: 12px; line-height: 20px;
       text-align: center; overflow: hidden; white-space: nowrap; }
.seg-succeeded, .legend-succeeded .swatch { background: var(--ok); }
.seg-failed, .legend-failed .swatch { background: var(--bad); }
.seg-pending, .legend-pending .swatch { background: var(--wait); }
.seg-overdue, .legend-overdue .swatch { background: var(--late); }
.bar-empty { color: #666; font-size: 12px; line-height: 20px; padding: 0 8px; }
.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 0; padding: 0;
          font-size: 13px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
.gate { border-left: 4px solid #12344d; background: #f0f4f8; padding: 8px 12px; margin: 12px 0; }
.gate[data-action="halt"] { border-left-color: var(--bad); background: #fdecea; }
.gate[data-action="open_wave"], .gate[data-action="pass_canaries"] { border-left-color: var(--ok); background: #edf7ee; }
.gate .explanation { margin: 2px 0 0; color: #333; }
.reasons h4 { margin: 10px 0 4px; font-size: 14px; }
.reasons ol { margin: 0; padding-left: 22px; }
.reasons .count { font-weight: 600; margin-right: 6px; }
.none { color: #666; margin: 4px 0; }
form.search { display: flex; gap: 8px; align-items: center; margin: 0 0 8px; }
form.search input { font: inherit; padding: 4px 8px; width: 320px; max-width: 100%; }
form.search button { font: inherit; padding: 4px 12px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; vertical-align: top; padding: 6px 10px; border-bottom: 1px solid var(--line); }
th { background: #eef1f4; font-size: 13px; }
td ul { list-style: none; margin: 0; padding: 0; }
tr[hidden] { display: none; }
.dstate { font-weight: 600; }
.dstate-succeeded { color: var(--ok); }
.dstate-failed { color: var(--bad); }
.dstate-overdue { color: var(--late); }
.reason { color: #444; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
"#;

/// The `Content-Security-Policy` of the dashboard: nothing may load (no scripts, styles,
/// images, fonts or connections from anywhere), except the page's own inline style and
/// its one inline script, allowed by its SHA-256 hash; the page cannot be framed and its
/// form only submits to this server.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = petrel_client::manifest::sha256_hex(SEARCH_SCRIPT.as_bytes());
        let raw: Vec<u8> = (0..hash.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hash[i..i + 2], 16).expect("hex digest"))
            .collect();
        format!(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{}'; \
             img-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            base64(&raw)
        )
    })
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Escapes `s` for HTML text and for attribute values in double or single quotes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The JSON name of an action (`open_wave`, `halt`, …), as in the fleet endpoint.
pub fn action_name(action: &Action) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.get("action").and_then(|a| a.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// What the next `rollout advance` does, in words.
pub fn action_words(action: &Action) -> String {
    match action {
        Action::Wait => "wait: nothing opens or halts yet".into(),
        Action::PassCanaries => "pass the canaries and open the next stage".into(),
        Action::OpenWave { wave } => format!("open wave {wave}"),
        Action::Halt => "halt the campaign".into(),
        Action::Complete => "nothing: every stage is open".into(),
        Action::NotGated => "nothing: no health gates (waves open at their start times)".into(),
        Action::Stopped => "nothing: the campaign is stopped".into(),
    }
}

/// The lower-case text a device row is searched by: its id, group, installed versions,
/// and its campaigns with stage, state and reason.
pub fn search_text(d: &DeviceView) -> String {
    let mut s = d.device_id.clone();
    if let Some(g) = &d.group {
        s.push(' ');
        s.push_str(g);
    }
    if d.canary {
        s.push_str(" canary");
    }
    for (app, version) in &d.installed {
        let _ = write!(s, " {app} {version}");
    }
    for c in &d.campaigns {
        let _ = write!(s, " {} {} {} {}", c.campaign, c.stage, c.state, c.reason);
    }
    s.to_lowercase()
}

/// Renders the dashboard page of `view`. Only device rows whose [`search_text`]
/// contains `search` (case-insensitive; empty: every device) are listed.
pub fn render(view: &FleetView, search: &str) -> String {
    let search = search.trim();
    let needle = search.to_lowercase();
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<meta name=\"referrer\" content=\"no-referrer\">\n");
    h.push_str("<title>Petrel fleet dashboard</title>\n<style>");
    h.push_str(STYLE);
    h.push_str("</style>\n</head>\n<body>\n<header>\n<h1>Petrel fleet dashboard</h1>\n");
    let _ = writeln!(
        h,
        "<p>Generated {} · {} campaign(s) · {} device(s) · read-only</p>",
        time_tag("generated-at", view.generated_at),
        view.campaigns.len(),
        view.devices.len()
    );
    h.push_str(
        "</header>\n<main>\n<section id=\"campaigns\" aria-labelledby=\"campaigns-title\">\n",
    );
    h.push_str("<h2 id=\"campaigns-title\">Campaigns</h2>\n");
    if view.campaigns.is_empty() {
        h.push_str("<p class=\"none\">No campaign is published.</p>\n");
    }
    for c in &view.campaigns {
        campaign(&mut h, c);
    }
    h.push_str("</section>\n");
    devices(&mut h, view, search, &needle);
    h.push_str("</main>\n<script>");
    h.push_str(SEARCH_SCRIPT);
    h.push_str("</script>\n</body>\n</html>\n");
    h
}

fn time_tag(id: &str, t: DateTime<Utc>) -> String {
    let id = if id.is_empty() {
        String::new()
    } else {
        format!(" id=\"{}\"", escape(id))
    };
    format!(
        "<time{id} datetime=\"{}\">{}</time>",
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        t.format("%Y-%m-%d %H:%M UTC")
    )
}

fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    match secs {
        s if s < 0 => "in the future".into(),
        s if s < 60 => "just now".into(),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    }
}

fn campaign(h: &mut String, c: &CampaignView) {
    let id = escape(&c.id);
    let state = c.state.to_string();
    let _ = writeln!(
        h,
        "<article class=\"campaign\" data-campaign=\"{id}\" data-revision=\"{}\" \
         data-state=\"{state}\" data-gated=\"{}\" aria-label=\"campaign {id}\">",
        c.revision, c.gated
    );
    let _ = writeln!(
        h,
        "<h3><span class=\"campaign-id\">{id}</span><span class=\"revision\">revision {}</span>\
         <span class=\"badge state state-{state}\">{state}</span></h3>",
        c.revision
    );
    let mut meta = Vec::new();
    if let Some(g) = &c.group {
        meta.push(format!("delivers group <code>{}</code>", escape(g)));
    }
    meta.push(if c.gated {
        "health-gated rollout".to_string()
    } else {
        "no health gates".to_string()
    });
    let _ = writeln!(h, "<p class=\"meta\">{}</p>", meta.join(" · "));
    for s in &c.stages {
        stage(h, s);
    }
    let action = action_name(&c.gate.action);
    let wave = match &c.gate.action {
        Action::OpenWave { wave } => format!(" data-wave=\"{wave}\""),
        _ => String::new(),
    };
    let _ = writeln!(
        h,
        "<div class=\"gate\" data-action=\"{}\"{wave}><span class=\"gate-label\">Next \
         <code>rollout advance</code>:</span> <strong class=\"action\">{}</strong>\
         <p class=\"explanation\">{}</p></div>",
        escape(&action),
        escape(&action_words(&c.gate.action)),
        escape(&c.gate.explanation)
    );
    h.push_str("<div class=\"reasons\"><h4>Failure reasons</h4>\n");
    if c.failure_reasons.is_empty() {
        h.push_str("<p class=\"none\">No failures reported.</p>\n");
    } else {
        h.push_str("<ol class=\"failure-reasons\">\n");
        for r in &c.failure_reasons {
            let _ = writeln!(
                h,
                "<li data-count=\"{}\"><span class=\"count\">{}</span><span class=\"reason\">{}</span></li>",
                r.count,
                r.count,
                escape(&r.reason)
            );
        }
        h.push_str("</ol>\n");
    }
    h.push_str("</div>\n</article>\n");
}

fn stage(h: &mut String, s: &StageView) {
    let name = escape(&s.name);
    // The bar's segments add up to the stage's devices: `pending` counts overdue devices
    // too, so its segment shows the pending ones that are not overdue.
    let waiting = s.pending.saturating_sub(s.overdue);
    let label = format!(
        "{name}: {} succeeded, {} failed, {waiting} pending, {} overdue, of {} device(s)",
        s.succeeded, s.failed, s.overdue, s.devices
    );
    let _ = writeln!(
        h,
        "<div class=\"stage\" data-stage=\"{name}\" data-open=\"{}\" data-devices=\"{}\" \
         data-succeeded=\"{}\" data-failed=\"{}\" data-pending=\"{waiting}\" data-overdue=\"{}\">",
        s.open, s.devices, s.succeeded, s.failed, s.overdue
    );
    // A closed stage's status already says so (`not open`, `opens at …`).
    let opened = match s.opened_at {
        Some(t) if s.open => format!("open since {}", time_tag("", t)),
        _ if s.open => "open".to_string(),
        _ => String::new(),
    };
    let _ = writeln!(
        h,
        "<div class=\"stage-head\"><span class=\"stage-name\">{name}</span>\
         <span class=\"stage-open\">{opened}</span><span class=\"stage-status\">{}</span></div>",
        escape(&s.status)
    );
    let _ = write!(
        h,
        "<div class=\"bar\" role=\"img\" aria-label=\"{label}\" title=\"{label}\">"
    );
    if s.devices == 0 {
        h.push_str("<span class=\"bar-empty\">no device</span>");
    }
    for (class, n) in [
        ("succeeded", s.succeeded),
        ("failed", s.failed),
        ("pending", waiting),
        ("overdue", s.overdue),
    ] {
        if n > 0 {
            let _ = write!(
                h,
                "<span class=\"seg seg-{class}\" data-segment=\"{class}\" style=\"flex-grow:{n}\">{n}</span>"
            );
        }
    }
    h.push_str("</div>\n<ul class=\"legend\">");
    for (class, n) in [
        ("succeeded", s.succeeded),
        ("failed", s.failed),
        ("pending", waiting),
        ("overdue", s.overdue),
    ] {
        let _ = write!(
            h,
            "<li class=\"legend-{class}\"><span class=\"swatch\" aria-hidden=\"true\"></span>\
             <span class=\"n\" data-count=\"{class}\">{n}</span> {class}</li>"
        );
    }
    let _ = writeln!(
        h,
        "<li class=\"legend-total\">of {} device(s)</li></ul>",
        s.devices
    );
    h.push_str("</div>\n");
}

fn devices(h: &mut String, view: &FleetView, search: &str, needle: &str) {
    let shown: Vec<(&DeviceView, String)> = view
        .devices
        .iter()
        .map(|d| (d, search_text(d)))
        .filter(|(_, text)| needle.is_empty() || text.contains(needle))
        .collect();
    h.push_str("<section id=\"devices\" aria-labelledby=\"devices-title\">\n");
    h.push_str("<h2 id=\"devices-title\">Devices</h2>\n");
    let _ = writeln!(
        h,
        "<form class=\"search\" method=\"get\" action=\"/dashboard\" role=\"search\">\
         <label for=\"device-search\">Search devices</label>\
         <input id=\"device-search\" name=\"q\" type=\"search\" value=\"{}\" \
         placeholder=\"id, group, version, state, reason\" autocomplete=\"off\">\
         <button type=\"submit\">Filter</button></form>",
        escape(search)
    );
    let _ = writeln!(
        h,
        "<p id=\"device-count\" data-total=\"{}\" aria-live=\"polite\">Showing {} of {} devices</p>",
        view.devices.len(),
        shown.len(),
        view.devices.len()
    );
    h.push_str(
        "<table id=\"device-table\">\n<thead><tr><th scope=\"col\">Device</th>\
         <th scope=\"col\">Group</th><th scope=\"col\">Canary</th>\
         <th scope=\"col\">Last contact</th><th scope=\"col\">Installed</th>\
         <th scope=\"col\">Campaigns</th></tr></thead>\n<tbody>\n",
    );
    for (d, text) in &shown {
        device_row(h, view.generated_at, d, text);
    }
    h.push_str("</tbody>\n</table>\n");
    if shown.is_empty() {
        h.push_str("<p class=\"none\" id=\"no-devices\">No device matches.</p>\n");
    }
    h.push_str("</section>\n");
}

fn device_row(h: &mut String, now: DateTime<Utc>, d: &DeviceView, text: &str) {
    let _ = write!(
        h,
        "<tr class=\"device\" data-device=\"{}\" data-enrolled=\"{}\" data-search=\"{}\">",
        escape(&d.device_id),
        d.enrolled,
        escape(text)
    );
    let _ = write!(
        h,
        "<td class=\"device-id\"><code>{}</code>",
        escape(&d.device_id)
    );
    if !d.enrolled {
        h.push_str(" <span class=\"badge\">not enrolled</span>");
    }
    h.push_str("</td>");
    let _ = write!(
        h,
        "<td class=\"group\">{}</td><td class=\"canary\">{}</td>",
        d.group.as_deref().map_or_else(|| "—".to_string(), escape),
        if d.canary { "yes" } else { "no" }
    );
    match d.last_contact {
        Some(t) => {
            let _ = write!(
                h,
                "<td class=\"last-contact\">{} <span class=\"ago\">({})</span></td>",
                time_tag("", t),
                ago(now, t)
            );
        }
        None => h.push_str("<td class=\"last-contact\">never</td>"),
    }
    h.push_str("<td class=\"installed\">");
    if d.installed.is_empty() {
        h.push('—');
    } else {
        h.push_str("<ul>");
        for (app, version) in &d.installed {
            let _ = write!(
                h,
                "<li data-app=\"{}\"><code>{}</code> {}</li>",
                escape(app),
                escape(app),
                escape(version)
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("</td><td class=\"campaigns\">");
    if d.campaigns.is_empty() {
        h.push('—');
    } else {
        h.push_str("<ul>");
        for c in &d.campaigns {
            let state = escape(&c.state);
            let _ = write!(
                h,
                "<li data-campaign=\"{}\" data-state=\"{state}\" data-stage=\"{}\">\
                 <code>{}</code> ({}): <span class=\"dstate dstate-{state}\">{state}</span>",
                escape(&c.campaign),
                escape(&c.stage),
                escape(&c.campaign),
                escape(&c.stage)
            );
            if !c.reason.is_empty() {
                let _ = write!(h, " <span class=\"reason\">— {}</span>", escape(&c.reason));
            }
            h.push_str("</li>");
        }
        h.push_str("</ul>");
    }
    h.push_str("</td></tr>\n");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use petrel_client::manifest::CampaignState;

    use super::*;
    use crate::reports::fleet::{DeviceCampaign, GateVerdict};
    use crate::reports::summary::ReasonCount;

    const HOSTILE: &str = "<script>alert(\"x\")</script>&'";

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, 0, 0).unwrap()
    }

    fn stage_view(name: &str, wave: Option<u32>, counts: [u64; 4]) -> StageView {
        let [succeeded, failed, pending, overdue] = counts;
        StageView {
            name: name.into(),
            wave,
            open: true,
            opened_at: Some(at(1)),
            devices: succeeded + failed + pending,
            succeeded,
            failed,
            pending,
            overdue,
            status: "passed".into(),
        }
    }

    fn view() -> FleetView {
        FleetView {
            generated_at: at(9),
            campaigns: vec![CampaignView {
                id: "player-2.1".into(),
                revision: 4,
                state: CampaignState::Active,
                group: Some("player".into()),
                gated: true,
                stages: vec![
                    stage_view("canaries", None, [2, 0, 0, 0]),
                    stage_view("wave 1", Some(1), [5, 1, 4, 1]),
                    stage_view("wave 2", Some(2), [0, 0, 0, 0]),
                ],
                gate: GateVerdict {
                    action: Action::OpenWave { wave: 2 },
                    explanation: "open wave 2: wave 1 has 50 % succeeded".into(),
                    progress: None,
                },
                failure_reasons: vec![
                    ReasonCount {
                        reason: "hook exit 3".into(),
                        count: 3,
                    },
                    ReasonCount {
                        reason: HOSTILE.into(),
                        count: 1,
                    },
                ],
            }],
            devices: vec![
                DeviceView {
                    device_id: "kiosk-1".into(),
                    enrolled: true,
                    group: Some("lobby".into()),
                    canary: true,
                    last_contact: Some(at(6)),
                    installed: BTreeMap::from([("player".to_string(), "2.1.0".to_string())]),
                    campaigns: vec![DeviceCampaign {
                        campaign: "player-2.1".into(),
                        stage: "canaries".into(),
                        state: "succeeded".into(),
                        revision: Some(4),
                        reason: String::new(),
                        reported_at: Some(at(6)),
                    }],
                },
                DeviceView {
                    device_id: HOSTILE.into(),
                    enrolled: false,
                    group: None,
                    canary: false,
                    last_contact: None,
                    installed: BTreeMap::from([(HOSTILE.to_string(), HOSTILE.to_string())]),
                    campaigns: vec![DeviceCampaign {
                        campaign: "player-2.1".into(),
                        stage: "wave 1".into(),
                        state: "failed".into(),
                        revision: Some(4),
                        reason: HOSTILE.into(),
                        reported_at: None,
                    }],
                },
            ],
        }
    }

    #[test]
    fn escape_replaces_every_markup_character() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(escape("plain wave 1"), "plain wave 1");
    }

    #[test]
    fn dashboard_escapes_device_supplied_text() {
        let html = render(&view(), "");
        // The page's own script is the only script element.
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(!html.contains("alert(\"x\")"), "{html}");
        assert!(!html.contains("'</script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"));
        // Attribute values stay inside their quotes.
        assert!(html.contains(
            "data-device=\"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;\""
        ));
    }

    #[test]
    fn dashboard_escapes_the_search_text() {
        let html = render(&view(), "\"><script>x</script>");
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""));
    }

    #[test]
    fn dashboard_shows_each_stage_with_its_counts() {
        let html = render(&view(), "");
        assert!(
            html.contains("data-campaign=\"player-2.1\" data-revision=\"4\" data-state=\"active\"")
        );
        assert!(html.contains(
            "data-stage=\"wave 1\" data-open=\"true\" data-devices=\"10\" data-succeeded=\"5\" \
             data-failed=\"1\" data-pending=\"3\" data-overdue=\"1\""
        ));
        assert!(html.contains(
            "aria-label=\"wave 1: 5 succeeded, 1 failed, 3 pending, 1 overdue, of 10 device(s)\""
        ));
        assert!(html.contains("<span class=\"n\" data-count=\"overdue\">1</span> overdue"));
        assert!(html
            .contains("class=\"seg seg-failed\" data-segment=\"failed\" style=\"flex-grow:1\">1<"));
        // An empty stage says so rather than drawing nothing.
        let wave2 = &html[html.find("data-stage=\"wave 2\"").unwrap()..];
        let wave2 = &wave2[..wave2.find("class=\"gate\"").unwrap()];
        assert!(
            wave2.contains("<span class=\"bar-empty\">no device</span>"),
            "{wave2}"
        );
        assert!(!wave2.contains("class=\"seg "), "{wave2}");
    }

    #[test]
    fn dashboard_shows_what_the_next_advance_does() {
        let html = render(&view(), "");
        assert!(html.contains("class=\"gate\" data-action=\"open_wave\" data-wave=\"2\""));
        assert!(html.contains("<strong class=\"action\">open wave 2</strong>"));
        assert!(html.contains("open wave 2: wave 1 has 50 % succeeded"));
        let mut halted = view();
        halted.campaigns[0].gate.action = Action::Halt;
        assert!(render(&halted, "").contains("data-action=\"halt\""));
    }

    #[test]
    fn dashboard_ranks_failure_reasons_as_given() {
        let html = render(&view(), "");
        let first = html.find("hook exit 3").unwrap();
        let second = html.find("<li data-count=\"1\">").unwrap();
        assert!(first < second);
    }

    #[test]
    fn dashboard_search_lists_only_matching_devices() {
        let html = render(&view(), "LOBBY");
        assert!(html.contains("data-device=\"kiosk-1\""));
        assert_eq!(html.matches("<tr class=\"device\"").count(), 1);
        assert!(html.contains("Showing 1 of 2 devices"));
        let none = render(&view(), "no-such-device");
        assert_eq!(none.matches("<tr class=\"device\"").count(), 0);
        assert!(none.contains("id=\"no-devices\""));
    }

    #[test]
    fn device_rows_carry_group_contact_versions_and_states() {
        let html = render(&view(), "");
        let row = &html[html.find("data-device=\"kiosk-1\"").unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(row.contains("<td class=\"group\">lobby</td><td class=\"canary\">yes</td>"));
        assert!(row.contains("datetime=\"2026-11-22T06:00:00Z\""));
        assert!(row.contains("(3 h ago)"));
        assert!(row.contains("<code>player</code> 2.1.0"));
        assert!(row.contains(
            "data-campaign=\"player-2.1\" data-state=\"succeeded\" data-stage=\"canaries\""
        ));
    }

    #[test]
    fn csp_allows_exactly_the_inline_script_and_no_external_resource() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(!csp.contains("http"), "{csp}");
        assert!(!csp.contains("script-src 'unsafe-inline'"), "{csp}");
        // The hash of the script, in base64 (44 characters for SHA-256).
        let hash = csp
            .split("'sha256-")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        assert_eq!(hash.len(), 44, "{csp}");
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }
}

//! `petrel-repo rollout forecast`: each device's wave in a campaign, computed as devices compute it.
//!
//! The wave comes from `petrel_client::decide::rollout::position`, the pure function the
//! device agent runs, given a profile built from the device id (and the attributes of a
//! CSV file) and the canary flag of the device's entry in the workspace's assignment bins
//! (found by computing the salted hashes locally). Nothing is published or staged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use petrel_client::decide::rollout::{percent, position, seed_bp, wave_seed, Position};
use petrel_client::decide::DeviceProfile;
use petrel_client::manifest::{CampaignManifest, CampaignState, UtcTime};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::manifests::{self, AssignmentLookup, Publication};
use crate::workspace::Workspace;

/// The attribute columns a CSV device file may have besides `device_id`.
pub const CSV_COLUMNS: [&str; 7] = [
    "region",
    "channel",
    "device_type",
    "device_class",
    "vendor",
    "hardware",
    "licences",
];

/// One device of a forecast's device file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedDevice {
    /// The line of the file it is on (1-based).
    pub line: usize,
    /// The profile built from its id and, for a CSV file, its attributes.
    pub profile: DeviceProfile,
}

/// Reads a device file: one device id per line (blank lines and `#` comments skipped), or
/// a CSV file whose first line starts with `device_id,` and names the attribute columns
/// ([`CSV_COLUMNS`]; `hardware` and `licences` are `;`-separated). Ids are kept in file
/// order; a plain list may repeat an id (it counts once), a CSV file may not.
pub fn read_devices(path: &Path) -> Result<Vec<ListedDevice>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        Error::manifest(path, format!("line {line}: not UTF-8 text"))
    })?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let is_csv = lines
        .first()
        .is_some_and(|(_, l)| *l == "device_id" || l.starts_with("device_id,"));
    let devices = if is_csv {
        read_csv(path, &lines)?
    } else {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (line, id) in lines {
            check_id_on_line(path, line, id)?;
            if seen.insert(id.to_string()) {
                out.push(ListedDevice {
                    line,
                    profile: DeviceProfile {
                        id: id.to_string(),
                        ..DeviceProfile::default()
                    },
                });
            }
        }
        out
    };
    if devices.is_empty() {
        return Err(Error::manifest(
            path,
            "no device ids (one per line, or a CSV file with a `device_id,…` header line; blank lines and # comments are skipped)",
        ));
    }
    Ok(devices)
}

fn check_id_on_line(path: &Path, line: usize, id: &str) -> Result<()> {
    manifests::check_device_id(id)
        .map_err(|_| Error::manifest(path, format!("line {line}: the device id is empty, longer than 256 bytes or contains a control character")))
}

fn read_csv(path: &Path, lines: &[(usize, &str)]) -> Result<Vec<ListedDevice>> {
    let (header_line, header) = lines[0];
    let columns =
        split_csv(header).map_err(|e| Error::manifest(path, format!("line {header_line}: {e}")))?;
    let mut seen_columns = BTreeSet::new();
    for c in &columns[1..] {
        if !CSV_COLUMNS.contains(&c.as_str()) {
            return Err(Error::manifest(
                path,
                format!(
                    "line {header_line}: unknown column {c:?}; the columns after device_id may be {}",
                    CSV_COLUMNS.join(", ")
                ),
            ));
        }
        if !seen_columns.insert(c.as_str()) {
            return Err(Error::manifest(
                path,
                format!("line {header_line}: column {c:?} appears twice"),
            ));
        }
    }
    let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for &(line, text) in &lines[1..] {
        let fields =
            split_csv(text).map_err(|e| Error::manifest(path, format!("line {line}: {e}")))?;
        if fields.len() != columns.len() {
            return Err(Error::manifest(
                path,
                format!(
                    "line {line}: {} field(s), but the header on line {header_line} has {} column(s)",
                    fields.len(),
                    columns.len()
                ),
            ));
        }
        let id = fields[0].as_str();
        check_id_on_line(path, line, id)?;
        if let Some(first) = first_seen.insert(id.to_string(), line) {
            return Err(Error::manifest(
                path,
                format!("line {line}: the device on line {first} is listed again; list each device once"),
            ));
        }
        let mut p = DeviceProfile {
            id: id.to_string(),
            ..DeviceProfile::default()
        };
        for (column, value) in columns[1..].iter().zip(&fields[1..]) {
            let value = value.trim();
            let one = (!value.is_empty()).then(|| value.to_string());
            let set = || -> BTreeSet<String> {
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(String::from)
                    .collect()
            };
            match column.as_str() {
                "region" => p.region = one,
                "channel" => p.channel = one,
                "device_type" => p.device_type = value.to_string(),
                "device_class" => p.class = one,
                "vendor" => p.vendor = one,
                "hardware" => p.hardware = set(),
                "licences" => p.licences = set(),
                _ => unreachable!("columns are checked above"),
            }
        }
        out.push(ListedDevice { line, profile: p });
    }
    Ok(out)
}

/// Splits one CSV line into trimmed fields; a field may be quoted (`"a, b"`, `""` for `"`).
fn split_csv(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            }
            '"' if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            ',' if !quoted => {
                fields.push(std::mem::take(&mut field).trim().to_string());
                was_quoted = false;
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(field.trim().to_string());
    Ok(fields)
}

/// One device's forecast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceForecast {
    /// The device id, as listed in the file.
    pub device_id: String,
    /// The line of the file it is on.
    pub line: usize,
    /// The group its assignment names, if it is assigned.
    pub group: Option<String>,
    /// Whether its assignment marks it as a canary.
    pub canary: bool,
    /// `not_assigned`, `not_in_group`, `not_enrolled`, `canary`, `after_canaries`,
    /// `wave`, `gated`, `everyone`, `beyond` or `no_wave`.
    pub position: &'static str,
    /// The device's wave (1-based): the wave it is in, or, for `after_canaries`, the wave it
    /// will be in once the canaries pass.
    pub wave: Option<usize>,
    /// When its turn comes, if that is set by time.
    pub opens_at: Option<String>,
    /// Whether its turn has come now (it may still wait for consent, windows, …).
    pub open: bool,
    /// The same in words, with the reason.
    pub detail: String,
}

/// A campaign's forecast for a list of devices.
#[derive(Clone, Debug, Serialize)]
pub struct Forecast {
    /// The campaign id.
    pub campaign: String,
    /// The revision forecast (the workspace's newest: staged, else published).
    pub revision: u64,
    /// Its state.
    pub state: String,
    /// `published` or `staged`.
    pub publication: &'static str,
    /// The instant `open` is judged at.
    pub now: String,
    /// Notes about the whole campaign (halted, expired, …).
    pub notes: Vec<String>,
    /// One entry per device, in file order.
    pub devices: Vec<DeviceForecast>,
}

/// Forecasts `campaign_id` (as the workspace has it) for every device listed in `devices`.
pub fn forecast(ws: &Workspace, campaign_id: &str, devices: &Path) -> Result<Forecast> {
    let listed = read_devices(devices)?;
    let d = manifests::campaign_details(ws, campaign_id)?;
    let c = &d.manifest;
    let now = ws.now();
    let mut notes = Vec::new();
    match c.state {
        CampaignState::Active => {}
        CampaignState::Halted => notes.push(format!(
            "campaign {:?} is halted: no device downloads or installs anything until it is resumed (`petrel-repo campaign resume {}`)",
            c.id, c.id
        )),
        CampaignState::Cancelled => notes.push(format!(
            "campaign {:?} is cancelled: no device will get it",
            c.id
        )),
    }
    if let Some(na) = c.schedule.not_after.filter(|t| t.0 <= now) {
        notes.push(format!(
            "campaign {:?} ended at {na} (schedule.not_after): no device will start it",
            c.id
        ));
    }
    if d.publication == Publication::Staged {
        notes.push(format!(
            "revision {} is staged, not published: devices see it after `petrel-repo publish`",
            c.revision
        ));
    }
    let mut bins = AssignmentLookup::new(ws);
    let mut out = Vec::new();
    for dev in listed {
        let a = bins.find(&dev.profile.id)?;
        out.push(device_forecast(c, &dev, a.assignment.as_ref(), now));
    }
    Ok(Forecast {
        campaign: c.id.clone(),
        revision: c.revision,
        state: c.state.to_string(),
        publication: match d.publication {
            Publication::Published => "published",
            Publication::Staged => "staged",
        },
        now: UtcTime(crate::editor::trunc_seconds(now)).to_string(),
        notes,
        devices: out,
    })
}

fn ts(t: DateTime<Utc>) -> String {
    UtcTime(t).to_string()
}

/// The forecast of one device, given its assignment (if any).
fn device_forecast(
    c: &CampaignManifest,
    dev: &ListedDevice,
    assignment: Option<&petrel_client::manifest::Assignment>,
    now: DateTime<Utc>,
) -> DeviceForecast {
    let p = &dev.profile;
    let mut f = DeviceForecast {
        device_id: p.id.clone(),
        line: dev.line,
        group: assignment.map(|a| a.group.clone()),
        canary: assignment.is_some_and(|a| a.canary),
        position: "",
        wave: None,
        opens_at: None,
        open: false,
        detail: String::new(),
    };
    let groups = c.target_groups();
    let group_words = |g: &BTreeSet<String>| g.iter().cloned().collect::<Vec<_>>().join(", ");
    let Some(a) = assignment else {
        f.position = "not_assigned";
        f.detail = format!(
            "not assigned to any group, so it gets no campaign; assign it with `petrel-repo assign --group {} --devices FILE`",
            groups
                .as_ref()
                .and_then(|g| g.iter().next().cloned())
                .unwrap_or_else(|| "G".into())
        );
        return f;
    };
    if let Some(g) = groups.as_ref().filter(|g| !g.contains(&a.group)) {
        f.position = "not_in_group";
        f.detail = format!(
            "not in the campaign's group: it is assigned to group {}, the campaign is for group {}",
            a.group,
            group_words(g)
        );
        return f;
    }
    if c.applies_to.assigned_only && !a.campaigns.contains(&c.id) {
        f.position = "not_enrolled";
        f.detail = format!(
            "not enrolled: the campaign is for explicitly enrolled devices only (applies_to.assigned_only); enrol it with `petrel-repo assign --group {} --devices FILE --campaign {}`",
            a.group, c.id
        );
        return f;
    }
    let pos = position(c, p, a.canary);
    f.opens_at = pos.opens_at().map(ts);
    f.open = pos.is_open(now);
    let when = |t: Option<DateTime<Utc>>| match t {
        Some(t) if t > now => format!("opens at {}", ts(t)),
        Some(t) => format!("open since {}", ts(t)),
        None => "open now".to_string(),
    };
    let wave_words = |index: usize| {
        c.rollout
            .waves
            .get(index)
            .map(|w| format!("wave {} ({})", index + 1, w.describe()))
            .unwrap_or_else(|| format!("wave {}", index + 1))
    };
    #[allow(unreachable_patterns)]
    match &pos {
        Position::Canary { opens_at } => {
            f.position = "canary";
            f.detail = format!("canary: goes first, before every wave; {}", when(*opens_at));
        }
        Position::AfterCanaries => {
            f.position = "after_canaries";
            let mut passed = c.clone();
            passed.rollout.canary_passed = true;
            let then = match position(&passed, p, a.canary) {
                Position::Wave { index, opens_at } => {
                    f.wave = Some(index + 1);
                    format!("then {}, from {}", wave_words(index), ts(opens_at))
                }
                Position::Gated { index } => {
                    f.wave = Some(index + 1);
                    format!(
                        "then {}, once `petrel-repo rollout advance` opens it",
                        wave_words(index)
                    )
                }
                Position::Everyone { .. } => "then every device at once".to_string(),
                Position::Beyond { .. } | Position::NoWave { .. } => {
                    "even then it is in no wave".to_string()
                }
                other => format!("then {other:?}"),
            };
            f.detail = format!(
                "waits for the canaries: non-canary devices start only once a revision sets rollout.canary_passed; {then}"
            );
        }
        Position::Wave { index, opens_at } => {
            f.position = "wave";
            f.wave = Some(index + 1);
            f.detail = format!("{}: {}", wave_words(*index), when(Some(*opens_at)));
        }
        Position::Gated { index } => {
            f.position = "gated";
            f.wave = Some(index + 1);
            f.detail = format!(
                "{}: a gated wave; it opens once `petrel-repo rollout advance` finds the stage before it healthy and opens it",
                wave_words(*index)
            );
        }
        Position::Everyone { opens_at } => {
            f.position = "everyone";
            f.detail = format!("no waves, every device at once: {}", when(*opens_at));
        }
        Position::Beyond { covered_bp } => {
            f.position = "beyond";
            f.detail = format!(
                "beyond the last wave: the waves reach {} of the fleet, and the device's seed for this campaign is at {}; a revision with a larger share would include it",
                percent(*covered_bp),
                percent(seed_bp(wave_seed(&p.id, &c.id)))
            );
        }
        Position::NoWave { reason } => {
            f.position = "no_wave";
            f.detail = format!("matches no wave: {reason}");
        }
        other => {
            f.position = "other";
            f.detail = format!("{other:?}; {}", when(other.opens_at()));
        }
    }
    f
}

impl Forecast {
    /// The forecast as text: notes, one line per device, and a count by position.
    pub fn render_text(&self) -> String {
        let mut o = format!(
            "campaign {} revision {} ({}, {}), at {}\n",
            self.campaign, self.revision, self.state, self.publication, self.now
        );
        for n in &self.notes {
            o.push_str(&format!("note: {n}\n"));
        }
        let width = self
            .devices
            .iter()
            .map(|d| d.device_id.len())
            .max()
            .unwrap_or(0);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for d in &self.devices {
            o.push_str(&format!("  {:<width$}  {}\n", d.device_id, d.detail));
            let key = match (d.position, d.wave) {
                ("wave", Some(w)) => format!("wave {w}"),
                ("gated", Some(w)) => format!("gated wave {w}"),
                (p, _) => p.replace('_', " "),
            };
            *counts.entry(key).or_default() += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        o.push_str(&format!(
            "{} device(s): {}\n",
            self.devices.len(),
            summary.join(", ")
        ));
        o
    }
}

/// Prints the forecast of `campaign` for the devices listed in `devices`, as text or JSON.
pub fn run(ws: &Workspace, campaign: &str, devices: &Path, json: bool) -> Result<()> {
    let f = forecast(ws, campaign, devices)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&f).expect("forecast serializes")
        );
    } else {
        print!("{}", f.render_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_split_with_quotes() {
        assert_eq!(split_csv("a, b ,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_csv(r#"d1,"x, y","say ""hi""""#).unwrap(),
            ["d1", "x, y", r#"say "hi""#]
        );
        assert_eq!(split_csv("a,,").unwrap(), ["a", "", ""]);
        assert!(split_csv(r#"a,"open"#).is_err());
    }
}

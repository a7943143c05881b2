//! `petrel-repo assign --group G --devices FILE`: devices into a group, through the
//! assignment bins `assign/<bin>.json`. Only salted hashes of device ids are written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use rayon::prelude::*;

use petrel_client::manifest::{
    assign_bin_for, assign_bin_target_path, check_id, group_target_path, Assignment, AssignmentBin,
    CapabilityChain, Manifest,
};

use super::{lookup, Session, ASSIGN};
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// The longest device id accepted (the device profile's rule).
const MAX_DEVICE_ID: usize = 256;

/// What to assign.
#[derive(Clone, Debug, Default)]
pub struct AssignOptions {
    /// The group every listed device joins.
    pub group: String,
    /// The role to add new bins to (default: where each bin is listed, else `assign`).
    pub role: Option<String>,
    /// Mark the devices as canaries.
    pub canary: bool,
    /// Enrol the devices explicitly in these campaigns (`applies_to.assigned_only`).
    pub campaigns: BTreeSet<String>,
}

/// What `assign` did. Counts only: device ids are never reported back.
#[derive(Clone, Debug, Default)]
pub struct AssignReport {
    /// Distinct device ids read.
    pub devices: usize,
    /// Devices not assigned before.
    pub added: usize,
    /// Devices moved from another group.
    pub moved: usize,
    /// Devices already in the group whose canary flag or enrolments changed.
    pub updated: usize,
    /// Devices already assigned exactly so.
    pub unchanged: usize,
    /// Distinct groups the devices were assigned to.
    pub groups: usize,
    /// Bins written: target path, role, new revision.
    pub bins: Vec<(String, String, u64)>,
    /// Roles created on the way, and similar notes.
    pub notes: Vec<String>,
}

/// Reads device ids, one per line. Blank lines and lines starting with `#` are skipped,
/// surrounding whitespace is trimmed. Errors name the line, never the id.
pub fn read_device_ids(path: &Path) -> Result<BTreeSet<String>> {
    let text = read_utf8_lines(path)?;
    let mut ids = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() || id.starts_with('#') {
            continue;
        }
        check_id_rules(id).map_err(|m| Error::manifest(path, format!("line {}: {m}", i + 1)))?;
        ids.insert(id.to_string());
    }
    if ids.is_empty() {
        return Err(Error::manifest(
            path,
            "no device ids (one per line; blank lines and # comments are skipped)",
        ));
    }
    Ok(ids)
}

/// Reads a file of lines as UTF-8; an error names the first line that is not.
fn read_utf8_lines(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        Error::manifest(path, format!("line {line}: not UTF-8 text"))
    })
}

/// The rules of a device id read from a file (trimmed and not empty): at most
/// [`MAX_DEVICE_ID`] bytes, no control character. The message never holds the id.
fn check_id_rules(id: &str) -> std::result::Result<(), String> {
    if id.len() > MAX_DEVICE_ID {
        return Err(format!(
            "the device id is {} bytes, more than {MAX_DEVICE_ID}",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("the device id contains a control character".into());
    }
    Ok(())
}

/// One device to assign: its id, its group and what to do with its canary flag.
#[derive(Clone, Copy, Debug)]
struct Wanted<'a> {
    id: &'a str,
    group: &'a str,
    /// `Some(flag)`: set the flag; `None`: keep it (a new device is not a canary).
    canary: Option<bool>,
}

/// Assigns every device listed in `devices` to `opts.group`. The group must exist. Each
/// affected bin is loaded (its entries and salt are kept), the devices are inserted as
/// salted hashes, and only bins that changed are staged, each with its revision increased.
pub fn assign_devices(
    ws: &Workspace,
    devices: &Path,
    opts: &AssignOptions,
) -> Result<AssignReport> {
    check_id(&opts.group).map_err(|e| Error::Usage(format!("--group {:?}: {e}", opts.group)))?;
    check_campaign_ids(&opts.campaigns)?;
    let ids = read_device_ids(devices)?;
    let mut s = Session::new(ws);
    if lookup::find(s.editor(), &group_target_path(&opts.group))?.is_none() {
        return Err(Error::State(format!(
            "there is no group {:?} in this repository; set it first with `petrel-repo group set`",
            opts.group
        )));
    }
    let wanted: Vec<Wanted<'_>> = ids
        .iter()
        .map(|id| Wanted {
            id,
            group: &opts.group,
            canary: opts.canary.then_some(true),
        })
        .collect();
    stage_assignments(s, &wanted, 1, opts.role.as_deref(), &opts.campaigns)
}

/// Updates the bins of `wanted` (every device with its group), stages each changed bin once
/// and commits; `groups` is how many groups the devices were assigned to.
fn stage_assignments(
    mut s: Session<'_>,
    wanted: &[Wanted<'_>],
    groups: usize,
    role: Option<&str>,
    campaigns: &BTreeSet<String>,
) -> Result<AssignReport> {
    let mut r = AssignReport {
        devices: wanted.len(),
        groups,
        ..AssignReport::default()
    };
    update_bins(&mut s, wanted, role, campaigns, &mut r)?;
    r.notes = s.notes().to_vec();
    if !r.bins.is_empty() {
        s.commit()?;
    }
    Ok(r)
}

fn check_campaign_ids(campaigns: &BTreeSet<String>) -> Result<()> {
    for c in campaigns {
        check_id(c).map_err(|e| Error::Usage(format!("--campaign {c:?}: {e}")))?;
    }
    Ok(())
}

/// Bins loaded, updated and serialised at a time: bounds the memory held for bins whose
/// turn has not come, while giving every core enough work.
const BIN_CHUNK: usize = 1024;

/// One affected bin: where it goes, its current bytes, and the devices to put in it.
struct BinWork<'a, 'w> {
    bin: &'a str,
    name: String,
    dest: super::Destination,
    chain: CapabilityChain,
    current: Option<Vec<u8>>,
    members: Vec<&'a Wanted<'w>>,
}

/// What updating one bin gave: the counts, and the bytes to stage if it changed.
#[derive(Default)]
struct BinOutcome {
    added: usize,
    moved: usize,
    updated: usize,
    unchanged: usize,
    staged: Option<(u64, Vec<u8>)>,
}

/// Groups the devices by bin, then loads each affected bin once, updates it, checks it
/// against the capabilities of its role and stages it (counting into `r`). Nothing is
/// added to a role before every bin passed (that happens on commit). Bins are loaded in
/// order, a chunk at a time, and each chunk is updated and serialised on every core.
fn update_bins(
    s: &mut Session<'_>,
    wanted: &[Wanted<'_>],
    role: Option<&str>,
    campaigns: &BTreeSet<String>,
    r: &mut AssignReport,
) -> Result<()> {
    let ws = s.editor().workspace();
    let digits = ws.settings.assign_bin_digits;
    let now = ws.now();
    // The bin hash of every device, on every core.
    let bins: Vec<String> = wanted
        .par_iter()
        .map(|w| assign_bin_for(w.id, digits))
        .collect();
    let mut by_bin: BTreeMap<&str, Vec<&Wanted<'_>>> = BTreeMap::new();
    for (w, bin) in wanted.iter().zip(&bins) {
        by_bin.entry(bin).or_default().push(w);
    }
    let mut by_bin = by_bin.into_iter().peekable();
    while by_bin.peek().is_some() {
        // Where each bin goes and what it holds now (the editor is needed: one at a time).
        let mut work = Vec::with_capacity(BIN_CHUNK);
        for (bin, members) in by_bin.by_ref().take(BIN_CHUNK) {
            let name = assign_bin_target_path(bin);
            let dest = s.destination(&name, role, ASSIGN)?;
            let current = match &dest.current {
                Some(l) => Some(s.read_current_bytes(l)?),
                None => None,
            };
            let chain = s.chain(&dest)?;
            work.push(BinWork {
                bin,
                name,
                dest,
                chain,
                current,
                members,
            });
        }
        // Updated, checked and serialised in parallel; results in bin order.
        let outcomes: Vec<BinOutcome> = work
            .par_iter()
            .map(|w| update_bin(w, campaigns, now))
            .collect::<Result<_>>()?;
        for (w, o) in work.iter().zip(outcomes) {
            r.added += o.added;
            r.moved += o.moved;
            r.updated += o.updated;
            r.unchanged += o.unchanged;
            if let Some((revision, bytes)) = o.staged {
                r.bins
                    .push((w.name.clone(), w.dest.signer.clone(), revision));
                s.stage(&w.dest, &bytes)?;
            }
        }
    }
    Ok(())
}

/// Puts the devices of `w` into its bin (loaded, or new with a fresh salt); if anything
/// changed, raises the revision of an existing bin, checks the bin against the
/// capabilities of its chain and compiles it.
fn update_bin(
    w: &BinWork<'_, '_>,
    campaigns: &BTreeSet<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<BinOutcome> {
    let name = &w.name;
    let mut b = match (&w.dest.current, &w.current) {
        (Some(l), Some(bytes)) => {
            let b: AssignmentBin = super::parse_current(l, bytes)?;
            if b.bin != w.bin {
                return Err(Error::target(
                    name,
                    format!(
                        "holds bin {:?}; devices refuse it (fix or remove it)",
                        b.bin
                    ),
                ));
            }
            b
        }
        _ => AssignmentBin::new(w.bin, AssignmentBin::random_salt()),
    };
    let mut o = BinOutcome::default();
    for m in &w.members {
        // The device hashes into this bin (computed by the caller): its entry key is
        // used directly.
        let key = b.entry_key(m.id);
        let before = b.devices.get(&key);
        let mut a = before
            .cloned()
            .unwrap_or_else(|| Assignment::to_group(m.group));
        if a.group != m.group {
            a.group = m.group.to_string();
        }
        if let Some(flag) = m.canary {
            a.canary = flag;
        }
        a.campaigns.extend(campaigns.iter().cloned());
        match before {
            Some(old) if *old == a => {
                o.unchanged += 1;
                continue;
            }
            None => o.added += 1,
            Some(old) if old.group != m.group => o.moved += 1,
            Some(_) => o.updated += 1,
        }
        b.devices.insert(key, a);
    }
    if o.added + o.moved + o.updated == 0 {
        return Ok(o);
    }
    if w.current.is_some() {
        b.revision = b
            .revision
            .checked_add(1)
            .ok_or_else(|| Error::target(name, "its revision cannot grow"))?;
    }
    w.chain.check_assignment(&b, now).map_err(|v| {
        Error::State(format!(
            "{name}: role {:?} may not sign this assignment bin: {v}",
            w.dest.signer
        ))
    })?;
    let bytes = b
        .to_canonical_json()
        .map_err(|e| Error::State(format!("{name}: {e}")))?;
    o.staged = Some((b.revision, bytes));
    Ok(o)
}

/// What `assign --csv` applies besides the file.
#[derive(Clone, Debug, Default)]
pub struct CsvAssignOptions {
    /// The role to add new bins to (default: where each bin is listed, else `assign`).
    pub role: Option<String>,
    /// Enrol every listed device explicitly in these campaigns.
    pub campaigns: BTreeSet<String>,
}

/// One device line of an assignment CSV, borrowed from the file's text.
#[derive(Clone, Copy, Debug)]
struct CsvRow<'a> {
    /// The line number (from 1).
    line: usize,
    device: &'a str,
    /// Index into [`CsvRows::groups`].
    group: usize,
    /// `Some(true)`: a canary; `Some(false)`: not a canary; `None`: keep (new: not one).
    canary: Option<bool>,
}

/// The device lines of an assignment CSV and the groups they name (each once, in the
/// order first named, with that line).
struct CsvRows<'a> {
    rows: Vec<CsvRow<'a>>,
    groups: Vec<(&'a str, usize)>,
}

/// Reads an assignment CSV: one `device_id,group[,canary]` per line, `canary` being
/// `true`, `false` or empty. A first line `device_id,group[,canary]` is a header; blank
/// lines and lines starting with `#` are skipped; fields are trimmed. A device listed
/// twice must be listed the same way (the repeat is skipped). Errors name the line,
/// never the device id.
fn read_assignment_csv<'a>(path: &Path, text: &'a str) -> Result<CsvRows<'a>> {
    let mut rows: Vec<CsvRow<'a>> = Vec::new();
    let mut groups: Vec<(&'a str, usize)> = Vec::new();
    let mut group_index: HashMap<&'a str, usize> = HashMap::new();
    let mut seen: HashMap<&'a str, usize> = HashMap::new();
    let mut first = true;
    let at = |line: usize, msg: String| Error::manifest(path, format!("line {line}: {msg}"));
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut fields = l.split(',').map(str::trim);
        let (id, group, canary, extra) = (
            fields.next().unwrap_or(""),
            fields.next(),
            fields.next(),
            fields.count(),
        );
        if std::mem::take(&mut first)
            && id == "device_id"
            && group == Some("group")
            && matches!(canary, None | Some("canary"))
            && extra == 0
        {
            continue;
        }
        let Some(group) = group.filter(|_| extra == 0) else {
            let n = if group.is_none() { 1 } else { 3 + extra };
            return Err(at(
                line,
                format!(
                    "{n} comma-separated field(s); expected device_id,group or device_id,group,canary"
                ),
            ));
        };
        if id.is_empty() {
            return Err(at(line, "no device id before the first comma".into()));
        }
        check_id_rules(id).map_err(|m| at(line, m))?;
        let canary = match canary.unwrap_or("") {
            "" => None,
            "true" => Some(true),
            "false" => Some(false),
            other => {
                return Err(at(
                    line,
                    format!("canary must be true, false or empty, not {other:?}"),
                ))
            }
        };
        let g = match group_index.get(group) {
            Some(&g) => g,
            None => {
                check_id(group).map_err(|e| at(line, format!("group {group:?}: {e}")))?;
                groups.push((group, line));
                group_index.insert(group, groups.len() - 1);
                groups.len() - 1
            }
        };
        if let Some(&k) = seen.get(id) {
            let prev = rows[k];
            if prev.group != g {
                return Err(at(
                    line,
                    format!(
                        "the device on this line is also on line {} with another group ({:?} there, {group:?} here); a device is in one group: keep one of the lines",
                        prev.line, groups[prev.group].0
                    ),
                ));
            }
            if prev.canary != canary {
                return Err(at(
                    line,
                    format!(
                        "the device on this line is also on line {} with another canary value ({} there, {} here): keep one of the lines",
                        prev.line,
                        canary_word(prev.canary),
                        canary_word(canary)
                    ),
                ));
            }
            continue;
        }
        seen.insert(id, rows.len());
        rows.push(CsvRow {
            line,
            device: id,
            group: g,
            canary,
        });
    }
    if rows.is_empty() {
        return Err(Error::manifest(
            path,
            "no devices (one device_id,group[,canary] per line; a header line, blank lines and # comments are skipped)",
        ));
    }
    Ok(CsvRows { rows, groups })
}

fn canary_word(c: Option<bool>) -> &'static str {
    match c {
        None => "empty",
        Some(true) => "true",
        Some(false) => "false",
    }
}

/// Assigns the devices of an assignment CSV to their groups, in one change. The file has
/// one `device_id,group[,canary]` per line (`canary`: `true`, `false` or empty to keep
/// the device's flag); a first line `device_id,group[,canary]` is a header, blank lines
/// and `#` comments are skipped, a device listed twice must be listed the same way.
/// Every group must exist. Each affected bin is loaded once, updated for all its
/// devices, checked and staged once. Errors name the line, never a device id; counts
/// only are reported.
pub fn assign_csv(ws: &Workspace, csv: &Path, opts: &CsvAssignOptions) -> Result<AssignReport> {
    check_campaign_ids(&opts.campaigns)?;
    let text = read_utf8_lines(csv)?;
    let CsvRows { rows, groups } = read_assignment_csv(csv, &text)?;
    let mut s = Session::new(ws);
    let mut missing: Vec<(usize, &str)> = Vec::new();
    for &(group, line) in &groups {
        if lookup::find(s.editor(), &group_target_path(group))?.is_none() {
            missing.push((line, group));
        }
    }
    if !missing.is_empty() {
        const SHOWN: usize = 20;
        let mut list = missing
            .iter()
            .take(SHOWN)
            .map(|(line, g)| format!("line {line}: there is no group {g:?} in this repository"))
            .collect::<Vec<_>>()
            .join("; ");
        if missing.len() > SHOWN {
            list.push_str(&format!(" (and {} more groups)", missing.len() - SHOWN));
        }
        return Err(Error::manifest(
            csv,
            format!("{list}; set groups first with `petrel-repo group set`; nothing was assigned"),
        ));
    }
    let wanted: Vec<Wanted<'_>> = rows
        .iter()
        .map(|row| Wanted {
            id: row.device,
            group: groups[row.group].0,
            canary: row.canary,
        })
        .collect();
    drop(rows);
    stage_assignments(
        s,
        &wanted,
        groups.len(),
        opts.role.as_deref(),
        &opts.campaigns,
    )
}

/// What `assign --remove` did. Counts only: device ids are never reported back.
#[derive(Clone, Debug, Default)]
pub struct RemoveReport {
    /// Distinct device ids read.
    pub devices: usize,
    /// Bins written: target path, role, new revision.
    pub bins: Vec<(String, String, u64)>,
}

/// Removes the entry of every device listed in `devices` from its assignment bin, and
/// stages each bin that changed with its revision increased. Every id must be assigned
/// (staged view), or nothing is removed and the error names the ids that are not.
pub fn remove_devices(ws: &Workspace, devices: &Path) -> Result<RemoveReport> {
    let ids = read_device_ids(devices)?;
    let mut s = Session::new(ws);
    let digits = ws.settings.assign_bin_digits;
    let mut by_bin: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for id in &ids {
        by_bin
            .entry(assign_bin_for(id, digits))
            .or_default()
            .push(id);
    }
    let mut missing: Vec<&str> = Vec::new();
    let mut ready = Vec::new();
    let mut r = RemoveReport {
        devices: ids.len(),
        ..RemoveReport::default()
    };
    for (bin, members) in by_bin {
        let name = assign_bin_target_path(&bin);
        let Some(l) = lookup::find(s.editor(), &name)? else {
            missing.extend(members);
            continue;
        };
        let (mut b, _) = s.read_current::<AssignmentBin>(&l)?;
        if b.bin != bin {
            return Err(Error::target(
                &name,
                format!(
                    "holds bin {:?}; devices refuse it (fix or remove it)",
                    b.bin
                ),
            ));
        }
        let mut changed = false;
        for id in members {
            if b.lookup(id).is_none() {
                missing.push(id);
                continue;
            }
            b.devices.remove(&b.entry_key(id));
            changed = true;
        }
        if !changed {
            continue;
        }
        b.revision = b
            .revision
            .checked_add(1)
            .ok_or_else(|| Error::target(&name, "its revision cannot grow"))?;
        let dest = s.destination(&name, None, ASSIGN)?;
        let chain = s.chain(&dest)?;
        chain.check_assignment(&b, ws.now()).map_err(|v| {
            Error::State(format!(
                "{name}: role {:?} may not sign this assignment bin: {v}",
                dest.signer
            ))
        })?;
        let bytes = b
            .to_canonical_json()
            .map_err(|e| Error::State(format!("{name}: {e}")))?;
        r.bins.push((name, dest.signer.clone(), b.revision));
        ready.push((dest, bytes));
    }
    if !missing.is_empty() {
        missing.sort_unstable();
        const SHOWN: usize = 20;
        let mut list = missing
            .iter()
            .take(SHOWN)
            .map(|id| format!("{id:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        if missing.len() > SHOWN {
            list.push_str(&format!(" and {} more", missing.len() - SHOWN));
        }
        return Err(Error::manifest(
            devices,
            format!(
                "{} of {} device id(s) are not assigned in this repository, so nothing was removed: {list}; \
                 check them with `petrel-repo assign show --device ID` and delete those lines from the file",
                missing.len(),
                ids.len()
            ),
        ));
    }
    // Every bin is checked before any is stored, so a refusal leaves no trace.
    for (dest, bytes) in &ready {
        s.stage(dest, bytes)?;
    }
    if !r.bins.is_empty() {
        s.commit()?;
    }
    Ok(r)
}

/// Checks a device id given on the command line with the rules of a device id file.
pub fn check_device_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_DEVICE_ID || id.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "device id {id:?}: must be 1 to {MAX_DEVICE_ID} bytes without control characters"
        )));
    }
    Ok(())
}

/// The assignment bin that holds (or would hold) a device, as the workspace has it.
#[derive(Clone, Debug)]
pub struct BinListing {
    /// The role that lists and signs the bin.
    pub role: String,
    /// The bin's revision.
    pub revision: u64,
    /// Whether the tree already has this revision of the bin.
    pub publication: super::Publication,
}

/// Where one device stands in the assignment bins (staged changes included), found from
/// its id by computing the salted hashes locally, as the device does.
#[derive(Clone, Debug)]
pub struct DeviceAssignment {
    /// The device's bin: the first hex digits of `SHA-256("petrel-assign-bin-v1" ‖ 0x00 ‖ id)`.
    pub bin: String,
    /// `assign/<bin>.json`.
    pub target: String,
    /// The bin as listed, if it exists.
    pub listing: Option<BinListing>,
    /// The device's entry key in the bin (`SHA-256(bin salt ‖ 0x00 ‖ id)`), if the bin exists.
    pub entry_key: Option<String>,
    /// The device's assignment, if the bin lists it.
    pub assignment: Option<Assignment>,
}

/// Looks devices up in the assignment bins, reading each bin once.
pub struct AssignmentLookup<'w> {
    ws: &'w Workspace,
    ed: crate::editor::Editor<'w>,
    bins: BTreeMap<String, Option<(BinListing, AssignmentBin)>>,
}

impl<'w> AssignmentLookup<'w> {
    /// A lookup over the newest metadata of `ws` (staged, else published).
    pub fn new(ws: &'w Workspace) -> AssignmentLookup<'w> {
        AssignmentLookup {
            ws,
            ed: crate::editor::Editor::new(ws),
            bins: BTreeMap::new(),
        }
    }

    /// Where `device_id` is assigned. A bin that exists but cannot be read is an error
    /// naming the bin.
    pub fn find(&mut self, device_id: &str) -> Result<DeviceAssignment> {
        let bin = assign_bin_for(device_id, self.ws.settings.assign_bin_digits);
        let target = assign_bin_target_path(&bin);
        if !self.bins.contains_key(&bin) {
            let loaded = match lookup::find(&mut self.ed, &target)? {
                None => None,
                Some(l) => {
                    let bytes = lookup::read_listed(&mut self.ed, &l)?;
                    let b = AssignmentBin::from_json(&bytes).map_err(|e| {
                        Error::target(
                            &target,
                            format!("role {:?} lists an unreadable assignment bin: {e}", l.role),
                        )
                    })?;
                    let listing = BinListing {
                        role: l.role.clone(),
                        revision: b.revision,
                        publication: super::publication(self.ws, &l)?,
                    };
                    Some((listing, b))
                }
            };
            self.bins.insert(bin.clone(), loaded);
        }
        let found = self.bins[&bin].as_ref();
        Ok(DeviceAssignment {
            bin,
            target,
            listing: found.map(|(l, _)| l.clone()),
            entry_key: found.map(|(_, b)| b.entry_key(device_id)),
            assignment: found.and_then(|(_, b)| b.lookup(device_id).cloned()),
        })
    }
}

/// Whether some assignment bin of the workspace (staged view) marks a device as a canary
/// in one of `groups` (`None`: in any group). Unreadable bins count as holding none.
pub fn canary_assigned(
    ed: &mut crate::editor::Editor<'_>,
    groups: Option<&BTreeSet<String>>,
) -> Result<bool> {
    Ok(CanaryIndex::read(ed)?.any_in(groups))
}

/// The groups with at least one canary device in the assignment bins (staged view),
/// read from every bin once. Unreadable bins count as holding none.
#[derive(Clone, Debug, Default)]
pub(crate) struct CanaryIndex {
    groups: BTreeSet<String>,
}

impl CanaryIndex {
    pub(crate) fn read(ed: &mut crate::editor::Editor<'_>) -> Result<CanaryIndex> {
        let mut groups = BTreeSet::new();
        for name in lookup::names_under(ed, "assign")? {
            let Some(l) = lookup::find(ed, &name)? else {
                continue;
            };
            let Ok(bytes) = lookup::read_listed(ed, &l) else {
                continue;
            };
            let Ok(b) = AssignmentBin::from_json(&bytes) else {
                continue;
            };
            for a in b.devices.into_values().filter(|a| a.canary) {
                groups.insert(a.group);
            }
        }
        Ok(CanaryIndex { groups })
    }

    /// Whether a device of one of `groups` (`None`: of any group) is a canary.
    pub(crate) fn any_in(&self, groups: Option<&BTreeSet<String>>) -> bool {
        match groups {
            None => !self.groups.is_empty(),
            Some(g) => g.iter().any(|g| self.groups.contains(g)),
        }
    }
}

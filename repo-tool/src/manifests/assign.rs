//! `petrel-repo assign --group G --devices FILE`: devices into a group, through the
//! assignment bins `assign/<bin>.json`. Only salted hashes of device ids are written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use petrel_client::manifest::{
    assign_bin_for, assign_bin_target_path, check_id, group_target_path, Assignment, AssignmentBin,
    Manifest,
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
    /// Bins written: target path, role, new revision.
    pub bins: Vec<(String, String, u64)>,
    /// Roles created on the way, and similar notes.
    pub notes: Vec<String>,
}

/// Reads device ids, one per line. Blank lines and lines starting with `#` are skipped,
/// surrounding whitespace is trimmed. Errors name the line, never the id.
pub fn read_device_ids(path: &Path) -> Result<BTreeSet<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        Error::manifest(path, format!("line {line}: not UTF-8 text"))
    })?;
    let mut ids = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() || id.starts_with('#') {
            continue;
        }
        if id.len() > MAX_DEVICE_ID {
            return Err(Error::manifest(
                path,
                format!(
                    "line {}: the device id is {} bytes, more than {MAX_DEVICE_ID}",
                    i + 1,
                    id.len()
                ),
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(Error::manifest(
                path,
                format!("line {}: the device id contains a control character", i + 1),
            ));
        }
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

/// Assigns every device listed in `devices` to `opts.group`. The group must exist. Each
/// affected bin is loaded (its entries and salt are kept), the devices are inserted as
/// salted hashes, and only bins that changed are staged, each with its revision increased.
pub fn assign_devices(
    ws: &Workspace,
    devices: &Path,
    opts: &AssignOptions,
) -> Result<AssignReport> {
    check_id(&opts.group).map_err(|e| Error::Usage(format!("--group {:?}: {e}", opts.group)))?;
    for c in &opts.campaigns {
        check_id(c).map_err(|e| Error::Usage(format!("--campaign {c:?}: {e}")))?;
    }
    let ids = read_device_ids(devices)?;
    let mut s = Session::new(ws);
    if lookup::find(s.editor(), &group_target_path(&opts.group))?.is_none() {
        return Err(Error::State(format!(
            "there is no group {:?} in this repository; set it first with `petrel-repo group set`",
            opts.group
        )));
    }
    let digits = ws.settings.assign_bin_digits;
    let mut by_bin: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for id in &ids {
        by_bin
            .entry(assign_bin_for(id, digits))
            .or_default()
            .push(id);
    }
    let mut r = AssignReport {
        devices: ids.len(),
        ..AssignReport::default()
    };
    let mut ready = Vec::new();
    for (bin, members) in by_bin {
        let name = assign_bin_target_path(&bin);
        let dest = s.destination(&name, opts.role.as_deref(), ASSIGN)?;
        let mut b = match &dest.current {
            Some(l) => {
                let (b, _) = s.read_current::<AssignmentBin>(l)?;
                if b.bin != bin {
                    return Err(Error::target(
                        &name,
                        format!(
                            "holds bin {:?}; devices refuse it (fix or remove it)",
                            b.bin
                        ),
                    ));
                }
                b
            }
            None => AssignmentBin::new(bin.clone(), AssignmentBin::random_salt()),
        };
        let mut changed = false;
        for id in members {
            let before = b.lookup(id).cloned();
            let mut a = before
                .clone()
                .unwrap_or_else(|| Assignment::to_group(opts.group.clone()));
            a.group = opts.group.clone();
            a.canary |= opts.canary;
            a.campaigns.extend(opts.campaigns.iter().cloned());
            match &before {
                Some(old) if *old == a => {
                    r.unchanged += 1;
                    continue;
                }
                None => r.added += 1,
                Some(old) if old.group != opts.group => r.moved += 1,
                Some(_) => r.updated += 1,
            }
            b.insert(id, a)
                .map_err(|e| Error::State(format!("{name}: {e}")))?;
            changed = true;
        }
        if !changed {
            continue;
        }
        if dest.current.is_some() {
            b.revision = b
                .revision
                .checked_add(1)
                .ok_or_else(|| Error::target(&name, "its revision cannot grow"))?;
        }
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
    // Every bin is checked before any is stored, so a refusal leaves no trace.
    for (dest, bytes) in &ready {
        s.stage(dest, bytes)?;
    }
    r.notes = s.notes().to_vec();
    if !r.bins.is_empty() {
        s.commit()?;
    }
    Ok(r)
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
        if b.devices
            .values()
            .any(|a| a.canary && groups.is_none_or(|g| g.contains(&a.group)))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

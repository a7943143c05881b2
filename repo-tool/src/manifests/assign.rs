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

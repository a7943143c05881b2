//! The published side of the fleet view: campaign manifests and assignment bins read from a
//! static tree through the TUF client workflow (the way a device reads them), joined with
//! the report database into a [`FleetView`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, Utc};
use petrel_client::fetch::FileTransport;
use petrel_client::manifest::{
    salted_device_hash, Assignment, AssignmentBin, CampaignManifest, Manifest, ASSIGN_BIN_SALT,
    MAX_MANIFEST_BYTES,
};
use petrel_client::tuf::updater::{Limits, TargetInfo, Updater, UpdaterConfig};

use super::fleet::{build, FleetInput, FleetView};
use super::store::ReportStore;

/// What a published tree says about campaigns and assignments, verified.
#[derive(Debug, Default)]
pub struct Published {
    /// Every campaign manifest the targets metadata lists (`campaigns/*.json`).
    pub campaigns: Vec<CampaignManifest>,
    /// Every assignment bin, by bin name.
    pub bins: BTreeMap<String, AssignmentBin>,
}

impl Published {
    /// The published assignment of `device_id`, computing its salted hashes locally.
    pub fn assignment(&self, device_id: &str) -> Option<Assignment> {
        let hash = salted_device_hash(ASSIGN_BIN_SALT, device_id);
        let mut lengths: Vec<usize> = self.bins.keys().map(String::len).collect();
        lengths.dedup();
        lengths.sort_unstable();
        lengths.dedup();
        lengths.into_iter().find_map(|n| {
            self.bins
                .get(hash.get(..n)?)
                .and_then(|b| b.lookup(device_id).cloned())
        })
    }
}

fn file_url(dir: &Path) -> Result<String, String> {
    let abs = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let s = abs
        .to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", abs.display()))?;
    Ok(format!(
        "file://{}",
        s.replace('%', "%25").replace(' ', "%20")
    ))
}

fn fetch_manifest<T: Manifest>(updater: &Updater, info: &TargetInfo) -> Result<T, String> {
    if info.length() > MAX_MANIFEST_BYTES as u64 {
        return Err(format!(
            "{}: {} bytes is more than the {MAX_MANIFEST_BYTES}-byte manifest limit",
            info.path,
            info.length()
        ));
    }
    let mut bytes = Vec::new();
    updater
        .download_target_to_writer(info, &mut bytes)
        .map_err(|e| format!("{}: {e}", info.path))?;
    T::from_json(&bytes).map_err(|e| format!("{}: {e}", info.path))
}

/// Reads the campaigns and assignment bins of the tree at `tree_root` (holding `metadata/`
/// and `targets/`), trusting its `metadata/1.root.json` and verifying everything after it
/// (root chain, timestamp, snapshot, targets, delegations, each manifest's signed length
/// and hashes), as `petrel-repo verify` does. Manifests that fail are errors: a view built
/// on part of the tree would mislead.
pub fn read_tree(tree_root: &Path, now: DateTime<Utc>) -> Result<Published, String> {
    let root_file = tree_root.join("metadata").join("1.root.json");
    let root = std::fs::read(&root_file).map_err(|e| {
        format!(
            "{}: {e} (the fleet view reads the published tree; is --root the tree petrel-repo publishes?)",
            root_file.display()
        )
    })?;
    let md = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    Updater::init_trusted_root(md.path(), &root).map_err(|e| e.to_string())?;
    let limits = Limits {
        max_delegations: 1_000_000,
        ..Limits::default()
    };
    let config = UpdaterConfig::new(file_url(&tree_root.join("metadata"))?)
        .with_target_base_url(file_url(&tree_root.join("targets"))?)
        .with_limits(limits);
    let mut updater = Updater::new(config, FileTransport::new(), md.path())
        .map_err(|e| e.to_string())?
        .with_clock(move || now);
    updater
        .refresh()
        .map_err(|e| format!("the published tree {}: {e}", tree_root.display()))?;
    let mut out = Published::default();
    let infos = updater
        .list_targets("campaigns/*.json")
        .map_err(|e| format!("listing campaigns: {e}"))?;
    for info in &infos {
        out.campaigns.push(fetch_manifest(&updater, info)?);
    }
    let bins = updater
        .list_targets("assign/*.json")
        .map_err(|e| format!("listing assignment bins: {e}"))?;
    for info in &bins {
        let bin: AssignmentBin = fetch_manifest(&updater, info)?;
        out.bins.insert(bin.bin.clone(), bin);
    }
    Ok(out)
}

/// Device id → application → version, from each device's latest report (any campaign).
pub fn latest_inventories(
    store: &ReportStore,
) -> Result<HashMap<String, BTreeMap<String, String>>, String> {
    let bodies = store.latest_bodies().map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (device, body) in bodies {
        // Stored bodies were verified on arrival; one that no longer parses is skipped.
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let apps = v["signed"]["inventory_after"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(app, i)| Some((app.clone(), i["version"].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(device, apps);
    }
    Ok(out)
}

/// The fleet view from the report database `store` and already-read published data.
pub fn fleet_view(
    store: &ReportStore,
    published: &Published,
    now: DateTime<Utc>,
) -> Result<FleetView, String> {
    let rows = store.rows(None).map_err(|e| e.to_string())?;
    let enrolled = store.devices().map_err(|e| e.to_string())?;
    let installed = latest_inventories(store)?;
    let lookup = |id: &str| published.assignment(id);
    Ok(build(&FleetInput {
        campaigns: &published.campaigns,
        rows: &rows,
        enrolled: &enrolled,
        installed: &installed,
        assignment: &lookup,
        now,
    }))
}

/// Reads the fleet view from the report database and the published tree at `tree_root`
/// (the server's `--root`).
pub fn load_fleet(db: &Path, tree_root: &Path, now: DateTime<Utc>) -> Result<FleetView, String> {
    let store = ReportStore::open_read_only(db).map_err(|e| e.to_string())?;
    let published = read_tree(tree_root, now)?;
    fleet_view(&store, &published, now)
}

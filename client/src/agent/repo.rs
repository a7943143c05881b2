//! From the TUF updater to the engine's [`RepositoryView`]: the device's own assignment
//! bin, its group manifest, the campaign manifests that can concern it, and the signed lengths and hashes of
//! the group's artifacts (with the deltas from the installed bytes, when the repository
//! signs one). Every manifest is fetched through the updater (so it is verified
//! against the signed length and hashes before anything reads it) and parsed strictly.
//!
//! What could not be used goes to [`RepositoryView::unusable`] with the reason, and the
//! engine explains it; only a failed TUF refresh stops everything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::inventory::InventorySource;
use crate::decide::{ArtifactInfo, DeltaInfo, Entry, Inventory, Named, RepositoryView};
use crate::delta::{self, DeltaMeta};
use crate::manifest::{
    assign_target_path, campaign_target_path, group_index_path, AssignmentBin, CampaignIndex,
    CampaignManifest, GroupManifest, Manifest, FLEET_INDEX_PATH, MAX_BIN_DIGITS,
    MAX_MANIFEST_BYTES,
};
use crate::tuf::updater::{local_target_file_name, TargetInfo, UpdateError, Updater};

/// The pattern of campaign manifest targets.
pub const CAMPAIGNS_PATTERN: &str = "campaigns/*.json";

/// The versions of the trusted top-level metadata after a refresh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetadataVersions {
    /// Root.
    pub root: u64,
    /// Timestamp.
    pub timestamp: u64,
    /// Snapshot.
    pub snapshot: u64,
    /// Top-level targets.
    pub targets: u64,
}

/// What [`gather`] found.
#[derive(Debug)]
pub struct Gathered {
    /// The view for the engine.
    pub view: RepositoryView,
    /// The trusted metadata versions.
    pub versions: MetadataVersions,
}

/// Refreshes the updater and builds the device's view of the repository. Fetches only this
/// device's assignment bin (`assign/<bin>.json`, `digits` hex digits), its group's
/// manifest, the campaign manifests that can concern it (those the campaign index lists for
/// the fleet and for its group, when the repository publishes an index; else every one,
/// [`CAMPAIGNS_PATTERN`]) and the target infos of the group's artifacts; no artifact is downloaded.
/// Manifest bytes are kept in `cache_dir` (re-used when they still match the signed hashes;
/// files no longer needed are removed). No deltas are looked up ([`gather_with_deltas`]).
pub fn gather(
    updater: &mut Updater,
    device_id: &str,
    digits: usize,
    cache_dir: &Path,
) -> Result<Gathered, UpdateError> {
    gather_with_deltas(updater, device_id, digits, cache_dir, &BTreeMap::new())
}

/// The installed artifacts a delta could be applied to: application id → SHA-256 of the
/// installed bytes, for the applications of a directory inventory whose artifact is one
/// file the agent can read ([`super::inventory::installed_artifact_file`]) or an installed
/// tree ([`super::inventory::installed_tree`]). Empty for a command
/// inventory (the agent cannot read the installed bytes).
pub fn delta_bases(source: &InventorySource, inventory: &Inventory) -> BTreeMap<String, String> {
    let InventorySource::Dir(dir) = source else {
        return BTreeMap::new();
    };
    inventory
        .iter()
        .filter_map(|(app, i)| {
            let sha = i.sha256.as_ref()?;
            if super::inventory::installed_tree(dir, app).is_none() {
                super::inventory::installed_artifact_file(dir, app)?;
            }
            Some((app.clone(), sha.to_ascii_lowercase()))
        })
        .collect()
}

/// [`gather`], also looking up deltas: for each application of the group whose installed
/// bytes have a known hash (`bases`: application id → SHA-256, see [`delta_bases`]) that
/// differs from its artifact's, the target info of `deltas/<artifact sha256>/<base>.zst`
/// is looked up by name (metadata only; nothing is listed or downloaded). A delta whose
/// name, custom metadata and artifact disagree is ignored with a warning.
pub fn gather_with_deltas(
    updater: &mut Updater,
    device_id: &str,
    digits: usize,
    cache_dir: &Path,
    bases: &BTreeMap<String, String>,
) -> Result<Gathered, UpdateError> {
    updater.refresh()?;
    let versions = {
        let t = updater.trusted().ok_or(UpdateError::NotRefreshed)?;
        MetadataVersions {
            root: t.root().signed.version,
            timestamp: t.timestamp().signed.version,
            snapshot: t.snapshot().version(),
            targets: t.targets().signed.version,
        }
    };
    let mut fetcher = Fetcher {
        updater,
        cache_dir: cache_dir.to_path_buf(),
        used: BTreeSet::new(),
    };
    let mut view = RepositoryView::default();

    // The device's own assignment bin, and nothing else under assign/. If it is missing,
    // the same device's bin at the other sizes is looked up (target infos only) to tell a
    // misconfigured `assign_bin_digits` from a device that is not assigned.
    let bin_path = assign_target_path(device_id, digits);
    match fetcher.manifest::<AssignmentBin>(&bin_path) {
        Ok(Some(e)) => view.assignment = Some(e),
        Ok(None) => {
            let other = probe_bin_digits(fetcher.updater, device_id, digits);
            view.unusable
                .push((bin_path.clone(), missing_bin_reason(digits, other)));
        }
        Err(why) => why.record(&bin_path, &mut view),
    }

    // Its group.
    let group_id = view
        .assignment
        .as_ref()
        .and_then(|e| e.manifest.lookup(device_id))
        .map(|a| a.group.clone());
    if let Some(g) = group_id {
        let path = format!("groups/{g}.json");
        match fetcher.manifest::<GroupManifest>(&path) {
            Ok(Some(e)) => view.group = Some(e),
            Ok(None) => view
                .unusable
                .push((path, "not in the repository's signed metadata".into())),
            Err(why) => why.record(&path, &mut view),
        }
    }

    // The campaigns: through the campaign index when the repository publishes one (only
    // those that can concern this group), else every campaign.
    match fetcher.index(FLEET_INDEX_PATH, None) {
        Ok(Some(fleet)) => {
            let mut ids = fleet.campaigns;
            if let Some(g) = view.group.as_ref().map(|g| g.manifest.id.clone()) {
                let path = group_index_path(&g);
                match fetcher.index(&path, Some(&g)) {
                    Ok(Some(i)) => ids.extend(i.campaigns),
                    Ok(None) => {}
                    Err(why) => why.record(&path, &mut view),
                }
            }
            for id in ids {
                let path = campaign_target_path(&id);
                match fetcher.manifest::<CampaignManifest>(&path) {
                    Ok(Some(e)) => view.campaigns.push(e),
                    Ok(None) => view.unusable.push((
                        path,
                        "listed in the campaign index, but not in the repository's signed metadata"
                            .into(),
                    )),
                    Err(why) => why.record(&path, &mut view),
                }
            }
        }
        Ok(None) => list_all_campaigns(&mut fetcher, &mut view),
        Err(why) => why.record(FLEET_INDEX_PATH, &mut view),
    }

    // The signed lengths and hashes of the group's artifacts.
    let mut unreadable = Vec::new();
    if let Some(g) = &view.group {
        for (app_id, app) in &g.manifest.apps {
            match fetcher.updater.get_target_info(&app.target) {
                Ok(Some(info)) => match ArtifactInfo::from_target(&info) {
                    Some(mut a) => {
                        let base = bases
                            .get(app_id)
                            .filter(|b| !b.eq_ignore_ascii_case(&a.sha256));
                        if let Some(base) = base {
                            if let Some(d) = find_delta(fetcher.updater, &a, base) {
                                a.deltas.push(d);
                            }
                        }
                        view.artifacts.insert(app.target.clone(), a);
                    }
                    None => view
                        .unusable
                        .push((app.target.clone(), "the target has no signed sha256".into())),
                },
                Ok(None) => {}
                Err(e) => unreadable.push((app.target.clone(), e.to_string())),
            }
        }
    }
    for (target, why) in unreadable {
        Unusable::Unreadable(why).record(&target, &mut view);
    }
    fetcher.prune();
    Ok(Gathered { view, versions })
}

/// Every campaign manifest the repository signs ([`CAMPAIGNS_PATTERN`]): for repositories
/// without a campaign index.
fn list_all_campaigns(fetcher: &mut Fetcher<'_>, view: &mut RepositoryView) {
    match fetcher.updater.list_targets(CAMPAIGNS_PATTERN) {
        Ok(infos) => {
            for info in infos {
                match fetcher.manifest::<CampaignManifest>(&info.path) {
                    Ok(Some(e)) => view.campaigns.push(e),
                    Ok(None) => {}
                    Err(why) => why.record(&info.path, view),
                }
            }
        }
        Err(e) => Unusable::Unreadable(format!("cannot list: {e}")).record(CAMPAIGNS_PATTERN, view),
    }
}

/// The delta from the installed bytes `base` to `artifact`, if the repository signs one
/// (`deltas/<artifact>/<base>.zst`) and it is consistent ([`check_delta_target`]).
fn find_delta(updater: &mut Updater, artifact: &ArtifactInfo, base: &str) -> Option<DeltaInfo> {
    let path = delta::target_path(&artifact.sha256, base);
    match updater.get_target_info(&path) {
        Ok(Some(info)) => match check_delta_target(&info, artifact, base) {
            Ok(_) => Some(DeltaInfo {
                target: path,
                length: info.length(),
                base_sha256: base.to_ascii_lowercase(),
            }),
            Err(why) => {
                tracing::warn!("ignoring the delta {path}: {why}");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("cannot look up the delta {path}: {e}; the full artifact is used");
            None
        }
    }
}

/// Checks a delta target against the artifact it claims to produce and the base it
/// applies to: its custom metadata ([`DeltaMeta`]) must name the format, agree with its
/// target path, name exactly `base` and the artifact's signed SHA-256 and length, and the
/// target must have a signed SHA-256. Returns the metadata.
pub fn check_delta_target(
    info: &TargetInfo,
    artifact: &ArtifactInfo,
    base: &str,
) -> Result<DeltaMeta, String> {
    let meta = DeltaMeta::from_custom(info.file.custom.as_ref())?;
    meta.check_path(&info.path)?;
    if !meta.base_sha256.eq_ignore_ascii_case(base) {
        return Err(format!(
            "its base is {}, not the installed bytes ({base})",
            meta.base_sha256
        ));
    }
    if !meta.result_sha256.eq_ignore_ascii_case(&artifact.sha256)
        || meta.result_length != artifact.length
    {
        return Err(format!(
            "it claims to produce {} bytes with sha256 {}, but the artifact is {} bytes with sha256 {}",
            meta.result_length, meta.result_sha256, artifact.length, artifact.sha256
        ));
    }
    if !info.hashes().contains_key("sha256") {
        return Err("the delta target has no signed sha256".into());
    }
    Ok(meta)
}

/// Looks for this device's bin at the other bin sizes (1 to [`MAX_BIN_DIGITS`] hex digits),
/// when it is not found at the configured `digits`: `(d, "assign/<bin>.json")` for the first
/// size whose bin the repository signs. Only target infos are looked up (metadata, through
/// the spec's search); no bin is downloaded or used. Lookups that fail count as not found.
fn probe_bin_digits(
    updater: &mut Updater,
    device_id: &str,
    digits: usize,
) -> Option<(usize, String)> {
    (1..=MAX_BIN_DIGITS)
        .filter(|d| *d != digits)
        .map(|d| (d, assign_target_path(device_id, d)))
        .find(|(_, path)| matches!(updater.get_target_info(path), Ok(Some(_))))
}

/// Why the device's bin (at the configured `digits`) is unusable when no role lists it;
/// `other` is what [`probe_bin_digits`] found.
fn missing_bin_reason(digits: usize, other: Option<(usize, String)>) -> String {
    match other {
        Some((d, path)) => format!(
            "not in the repository's signed metadata: the repository's assignment bins have {d} hex digits (it signs {path} for this device) but this device is configured with {digits}; set repository.assign_bin_digits = {d} in the device configuration"
        ),
        None => format!(
            "not in the repository's signed metadata, nor at any other bin size (1 to {MAX_BIN_DIGITS} hex digits): this device is not assigned, or repository.assign_bin_digits ({digits}) does not match the repository"
        ),
    }
}

/// Why a manifest could not be used.
enum Unusable {
    /// It could not be fetched or verified this time (network, server, or bytes that are
    /// not the signed ones): the view is incomplete, and nothing is blamed on a campaign.
    Unreadable(String),
    /// Its verified bytes are not a usable manifest (the publisher's mistake).
    Content(String),
}

impl Unusable {
    fn record(self, path: &str, view: &mut RepositoryView) {
        match self {
            Unusable::Unreadable(why) => {
                tracing::warn!("{path}: {why}");
                view.incomplete.push((path.to_string(), why.clone()));
                view.unusable.push((path.to_string(), why));
            }
            Unusable::Content(why) => view.unusable.push((path.to_string(), why)),
        }
    }
}

struct Fetcher<'a> {
    updater: &'a mut Updater,
    cache_dir: PathBuf,
    used: BTreeSet<String>,
}

impl Fetcher<'_> {
    /// `Ok(None)`: no role on the search path lists the target.
    fn manifest<T: Manifest + Named>(&mut self, path: &str) -> Result<Option<Entry<T>>, Unusable> {
        let Some((info, bytes)) = self.verified_bytes(path)? else {
            return Ok(None);
        };
        let trusted = self
            .updater
            .trusted()
            .ok_or_else(|| Unusable::Unreadable(UpdateError::NotRefreshed.to_string()))?;
        Entry::from_target(&info, &bytes, trusted)
            .map(Some)
            .map_err(Unusable::Content)
    }

    /// A campaign index ([`CampaignIndex`]), checked to be the index of `group` (`None`:
    /// the fleet-wide one). `Ok(None)`: no role lists it.
    fn index(
        &mut self,
        path: &str,
        group: Option<&str>,
    ) -> Result<Option<CampaignIndex>, Unusable> {
        let Some((_, bytes)) = self.verified_bytes(path)? else {
            return Ok(None);
        };
        let index =
            CampaignIndex::from_json(&bytes).map_err(|e| Unusable::Content(e.to_string()))?;
        if index.group.as_deref() != group {
            return Err(Unusable::Content(format!(
                "it is the campaign index of {}, not of {}",
                index
                    .group
                    .as_deref()
                    .map_or("the whole fleet".into(), |g| format!("group {g:?}")),
                group.map_or("the whole fleet".into(), |g| format!("group {g:?}"))
            )));
        }
        Ok(Some(index))
    }

    /// The verified bytes of a target (from the cache when they still match), with its
    /// target info. `Ok(None)`: no role on the search path lists the target.
    fn verified_bytes(&mut self, path: &str) -> Result<Option<(TargetInfo, Vec<u8>)>, Unusable> {
        let unreadable = |e: String| Unusable::Unreadable(e);
        let Some(info) = self
            .updater
            .get_target_info(path)
            .map_err(|e| unreadable(e.to_string()))?
        else {
            return Ok(None);
        };
        if info.length() > MAX_MANIFEST_BYTES as u64 {
            return Err(Unusable::Content(format!(
                "{} bytes is more than the {MAX_MANIFEST_BYTES}-byte manifest limit",
                info.length()
            )));
        }
        let name = local_target_file_name(path).map_err(|e| Unusable::Content(e.to_string()))?;
        let dest = self.cache_dir.join(&name);
        self.used.insert(name);
        if !self
            .updater
            .find_cached_target(&info, &dest)
            .map_err(|e| unreadable(e.to_string()))?
        {
            self.updater
                .download_target(&info, &dest)
                .map_err(|e| unreadable(e.to_string()))?;
        }
        let bytes = fs::read(&dest).map_err(|e| unreadable(format!("{}: {e}", dest.display())))?;
        Ok(Some((info, bytes)))
    }

    /// Removes cached manifests this run did not use.
    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.cache_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !self.used.contains(&name) && e.path().is_file() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuf::schema::{TargetFile, Unrecognized};

    fn delta_info(path: &str, meta: &DeltaMeta) -> TargetInfo {
        TargetInfo {
            path: path.into(),
            file: TargetFile {
                length: 10,
                hashes: [("sha256".to_string(), "c".repeat(64))].into(),
                custom: Some(meta.to_custom()),
                unrecognized: Unrecognized::new(),
            },
            role: "deltas".into(),
            delegation_chain: vec!["targets".into(), "deltas".into()],
        }
    }

    #[test]
    fn a_delta_is_used_only_when_its_name_metadata_base_and_artifact_all_agree() {
        let (b, r) = ("b".repeat(64), "a".repeat(64));
        let artifact = ArtifactInfo {
            length: 100,
            sha256: r.clone(),
            deltas: Vec::new(),
            tree: None,
        };
        let meta = DeltaMeta {
            format: delta::FORMAT.into(),
            base_sha256: b.clone(),
            base_length: 90,
            result_sha256: r.clone(),
            result_length: 100,
        };
        let path = delta::target_path(&r, &b);
        check_delta_target(&delta_info(&path, &meta), &artifact, &b).unwrap();

        // Listed under another base's name than its metadata says.
        let other = delta::target_path(&r, &"d".repeat(64));
        let e =
            check_delta_target(&delta_info(&other, &meta), &artifact, &"d".repeat(64)).unwrap_err();
        assert!(e.contains("does not match its custom metadata"), "{e}");
        // Not the installed bytes.
        let e =
            check_delta_target(&delta_info(&path, &meta), &artifact, &"e".repeat(64)).unwrap_err();
        assert!(e.contains("not the installed bytes"), "{e}");
        // Claims another result length than the artifact's signed one.
        let mut long = meta.clone();
        long.result_length = 101;
        let e = check_delta_target(&delta_info(&path, &long), &artifact, &b).unwrap_err();
        assert!(e.contains("but the artifact is 100 bytes"), "{e}");
        // No delta metadata at all.
        let mut bare = delta_info(&path, &meta);
        bare.file.custom = None;
        assert!(check_delta_target(&bare, &artifact, &b).is_err());
    }

    #[test]
    fn a_bin_found_at_another_size_names_that_size_the_signed_bin_and_the_fix() {
        let why = missing_bin_reason(3, Some((2, "assign/74.json".into())));
        for part in [
            "bins have 2 hex digits",
            "it signs assign/74.json",
            "configured with 3",
            "set repository.assign_bin_digits = 2",
        ] {
            assert!(why.contains(part), "{part:?} missing from: {why}");
        }
    }

    #[test]
    fn a_bin_found_at_no_size_suggests_no_value() {
        let why = missing_bin_reason(2, None);
        assert!(why.contains("nor at any other bin size"), "{why}");
        assert!(!why.contains("set repository.assign_bin_digits ="), "{why}");
    }
}

//! Staging: a campaign's artifacts downloaded through the TUF updater (signed length and
//! hashes verified) into `staging/<campaign>-<revision>/`, resumable across runs, and the
//! staged plan (`plan.json`) the apply step installs.
//!
//! ```text
//! <state_dir>/staging/player-2.1-3/plan.json                                the staged plan
//! <state_dir>/staging/player-2.1-3/apps%2Facme%2Fplayer%2F2.1.0%2Fplayer.bin  a verified artifact
//! ```
//!
//! A file is only ever renamed into a staging directory after its length and every signed
//! hash matched ([`Updater::download_target_resumable`]). Downloads resume: an interrupted
//! one (a network error, a crash, a reboot) leaves a `.petrel-part-<file>` beside its
//! destination, which the next attempt, in this run or a later one, hashes again and
//! continues with a ranged request instead of starting from zero. Leftover `.petrel-tmp-*`
//! files are deleted. Files already there are verified again (length and hashes) and kept.
//!
//! An item with a delta ([`DownloadItem::delta`]) is first tried through the delta: the
//! installed artifact file is read (and must still hash to the delta's base), the delta is
//! downloaded through the updater (verified against its signed length and hashes), applied
//! into a temporary file capped at the artifact's signed length, and the result is renamed
//! into place only if it is exactly the artifact's signed length and SHA-256. Any problem
//! falls back to the full artifact (the reason is logged and kept in [`StageOutcome`]).

use crate::tuf::updater::TargetInfo;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::config::SlotStaging;
use super::error::AgentError;
use super::install::slot::Slots;
use super::state::{AgentState, StatePaths};
use crate::decide::{
    ArtifactInfo, CampaignDecision, Decision, DeltaInfo, DownloadItem, Plan, StagedItem, Status,
};
use crate::tuf::updater::{
    local_target_file_name, DownloadProgress, UpdateError, Updater, PARTIAL_PREFIX,
};

pub use super::plan::{
    campaign_dir, StagedArtifact, StagedPlan, StagedStep, PLAN_FILE, PLAN_SCHEMA_VERSION,
};

/// What staging one campaign did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StageOutcome {
    /// The campaign.
    pub campaign: String,
    /// Its revision.
    pub revision: u64,
    /// The staging directory.
    pub dir: PathBuf,
    /// Target paths downloaded and verified in this run.
    pub downloaded: Vec<String>,
    /// Target paths already staged and verified again (kept; a resumed staging).
    pub kept: Vec<String>,
    /// Bytes downloaded in this run (deltas count with their own length).
    pub bytes: u64,
    /// Target paths of [`StageOutcome::downloaded`] built from a delta and the installed
    /// bytes instead of downloading the full artifact.
    pub via_delta: Vec<String>,
    /// Deltas that could not be used (`target: reason`); the full artifact was downloaded
    /// instead.
    pub delta_fallbacks: Vec<String>,
    /// The staged plan, once every artifact of the plan is staged.
    pub plan: Option<PathBuf>,
    /// What failed (the items before it stay staged; the next run resumes).
    pub error: Option<String>,
    /// Whether that failure is temporary (the network, the server, the device's space)
    /// rather than bytes that are not the signed ones.
    pub error_is_temporary: bool,
}

/// Removes leftovers of interrupted downloads from `dir`: every `.petrel-tmp-*` file, and
/// the `.petrel-part-*` files of targets not among `items`. Those of the targets still
/// wanted are kept: their downloads resume from them.
fn remove_partials(dir: &Path, items: &[DownloadItem]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let wanted: BTreeSet<String> = items
        .iter()
        .filter_map(|i| local_target_file_name(&i.target).ok())
        .map(|n| format!("{PARTIAL_PREFIX}{n}"))
        .collect();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".petrel-tmp-")
            || (name.starts_with(PARTIAL_PREFIX) && !wanted.contains(&name))
        {
            tracing::info!(
                "staging: removing an interrupted download {}",
                e.path().display()
            );
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Downloads `items` of campaign `c` into its staging directory through `updater` (which
/// must have been refreshed): each target's info is looked up again in the verified
/// metadata and must agree with the decision; files already staged and still matching the
/// signed length and hashes are kept, others are downloaded (bounded by the signed length,
/// verified, then renamed into place). Every verified file is recorded in
/// `state.staged` (saved after each file, so an interrupted run resumes). When the whole
/// plan is staged, `plan.json` is written. Items with a delta are built from it and the
/// installed artifact file under `inventory_dir` when possible (without an inventory
/// directory, deltas are not used).
#[allow(clippy::too_many_arguments)]
pub fn stage(
    updater: &mut Updater,
    paths: &StatePaths,
    state: &mut AgentState,
    c: &CampaignDecision,
    items: &[DownloadItem],
    artifacts: &BTreeMap<String, ArtifactInfo>,
    bases: &DeltaSources,
    slots: Option<&Slots>,
    now: DateTime<Utc>,
    progress: &mut dyn FnMut(&DownloadProgress) -> ControlFlow<()>,
) -> Result<StageOutcome, AgentError> {
    let dir = campaign_dir(paths, &c.id, c.revision);
    fs::create_dir_all(&dir).map_err(|e| AgentError::State {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    remove_partials(&dir, items);
    let mut out = StageOutcome {
        campaign: c.id.clone(),
        revision: c.revision,
        dir: dir.clone(),
        ..StageOutcome::default()
    };
    // A system image goes straight into the inactive slot when so configured, or when the
    // staging directory has no room for it (and has for the rest).
    let direct = slots.and_then(|sl| {
        let image = items.iter().find(|i| i.app == sl.config().app)?;
        let rest: Vec<DownloadItem> = items.iter().filter(|i| *i != image).cloned().collect();
        let wanted = match sl.config().staging {
            SlotStaging::Slot => true,
            SlotStaging::File => false,
            SlotStaging::Auto => {
                check_space(&dir, items).is_err() && check_space(&dir, &rest).is_ok()
            }
        };
        wanted.then(|| (image.target.clone(), sl))
    });
    let spaced: Vec<DownloadItem> = items
        .iter()
        .filter(|i| direct.as_ref().is_none_or(|(t, _)| *t != i.target))
        .cloned()
        .collect();
    if let Err(e) = check_space(&dir, &spaced) {
        out.error = Some(e);
        out.error_is_temporary = true;
        return Ok(out);
    }
    for item in items {
        super::faults::point("download", &item.target);
        let staged = match &direct {
            Some((t, sl)) if *t == item.target => stage_into_slot(updater, sl, item, &dir),
            _ => stage_one(
                updater,
                &dir,
                item,
                bases,
                &mut out.delta_fallbacks,
                progress,
            ),
        };
        match staged {
            Ok(how) => {
                match how {
                    Staged::Kept => out.kept.push(item.target.clone()),
                    Staged::Full {
                        wasted,
                        transferred,
                    } => {
                        out.downloaded.push(item.target.clone());
                        out.bytes += transferred + wasted;
                    }
                    Staged::Delta { bytes } => {
                        out.downloaded.push(item.target.clone());
                        out.via_delta.push(item.target.clone());
                        out.bytes += bytes;
                    }
                }
                super::faults::point("stage", &format!("staged {}", item.target));
                state.staged.insert(
                    item.target.clone(),
                    StagedItem {
                        sha256: item.sha256.clone(),
                        length: item.length,
                    },
                );
                state.save(&paths.state_file())?;
            }
            Err(e) => {
                out.error = Some(e.message);
                out.error_is_temporary = e.temporary;
                return Ok(out);
            }
        }
    }
    if let Some(plan) = &c.plan {
        match record_plan(paths, state, c, plan, artifacts, slots, now)? {
            Ok((path, _)) => out.plan = Some(path),
            Err(missing) => {
                out.error = Some(format!(
                    "not every artifact of the plan is staged yet: {}",
                    missing.join(", ")
                ))
            }
        }
    }
    Ok(out)
}

/// Where the installed bytes deltas start from are read.
#[derive(Clone, Debug, Default)]
pub struct DeltaSources {
    /// The inventory directory (an application's artifact is one file in it).
    pub inventory_dir: Option<PathBuf>,
    /// The system image: its application id, the running slot and the length of the
    /// image written there.
    pub slot: Option<(String, PathBuf, u64)>,
    /// How deltas are applied and when they are used.
    pub config: super::config::DeltaConfig,
}

impl DeltaSources {
    /// The installed bytes of `app`: a file or slot, and how many of its first bytes.
    fn base_of(&self, app: &str) -> Result<(PathBuf, Option<u64>), String> {
        if let Some((a, path, len)) = &self.slot {
            if a == app {
                return Ok((path.clone(), Some(*len)));
            }
        }
        let Some(dir) = &self.inventory_dir else {
            return Err(
                "the inventory is not a directory, so the installed bytes cannot be read".into(),
            );
        };
        let p = super::inventory::installed_artifact_file(dir, app).ok_or_else(|| {
            format!(
                "the installed artifact of {app} is not one file in {}",
                dir.join(app).display()
            )
        })?;
        Ok((p, None))
    }
}

/// How [`stage_one`] staged an item.
enum Staged {
    /// A verified copy was already there.
    Kept,
    /// The full artifact was downloaded, `transferred` bytes in this run (after `wasted`
    /// bytes of a delta that could not be used).
    Full { wasted: u64, transferred: u64 },
    /// It was built from a delta of `bytes` bytes.
    Delta { bytes: u64 },
}

/// Why staging an item failed, and whether that is temporary (the network, the server,
/// the repository changing under the decision, the device's space, a stop request) or
/// the bytes are not the signed ones.
struct StageError {
    message: String,
    temporary: bool,
}

impl StageError {
    fn temporary(message: String) -> StageError {
        StageError {
            message,
            temporary: true,
        }
    }

    /// From a download error of `target` (in `dir`): a full disk also removes the partial
    /// files of `dir`, so the device gets its space back.
    fn download(target: &str, e: UpdateError, dir: &Path) -> StageError {
        let temporary = match &e {
            UpdateError::TargetIo { source, .. } => {
                if crate::agent::install::is_disk_full(source) {
                    remove_all_partials(dir);
                }
                crate::agent::install::is_environmental_io(source)
            }
            UpdateError::Stopped { .. } => true,
            UpdateError::TargetFetch { source, .. } => !matches!(
                source,
                crate::fetch::FetchError::BadUrl { .. } | crate::fetch::FetchError::TooLarge { .. }
            ),
            _ => false,
        };
        StageError {
            message: format!("{target}: {e}"),
            temporary,
        }
    }
}

/// Bytes a directory's file system has free for this user, if it can tell.
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let s = rustix::fs::statvfs(dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Refuses to start downloads that cannot fit: the staging directory needs the full
/// length of every item (a delta's result is as long as the artifact), less what partial
/// downloads already hold.
fn check_space(dir: &Path, items: &[DownloadItem]) -> Result<(), String> {
    let Some(free) = free_space(dir) else {
        return Ok(());
    };
    let mut needed = 0u64;
    for i in items {
        let Ok(name) = local_target_file_name(&i.target) else {
            continue;
        };
        if dir.join(&name).is_file() {
            continue; // verified again, not downloaded
        }
        let held = fs::metadata(dir.join(format!("{PARTIAL_PREFIX}{name}"))).map_or(0, |m| m.len());
        needed += i.length.saturating_sub(held) + i.delta.as_ref().map_or(0, |d| d.length);
    }
    if needed > free {
        return Err(format!(
            "not enough space to stage: {} needed in {}, {} free; free some space and the next run continues",
            crate::decide::human_bytes(needed),
            dir.display(),
            crate::decide::human_bytes(free)
        ));
    }
    Ok(())
}

/// Removes every partial and temporary download in `dir` (after the disk filled up).
fn remove_all_partials(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(PARTIAL_PREFIX) || n.starts_with(".petrel-tmp-") {
            tracing::warn!(
                "staging: the disk is full; removing the partial download {}",
                e.path().display()
            );
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The item's target info, looked up again in the verified metadata, and its signed
/// length and SHA-256, which must still be the decision's.
fn signed_target(
    updater: &mut Updater,
    item: &DownloadItem,
) -> Result<(TargetInfo, ArtifactInfo), StageError> {
    let info = updater
        .get_target_info(&item.target)
        .map_err(|e| StageError::temporary(format!("{}: {e}", item.target)))?
        .ok_or_else(|| {
            StageError::temporary(format!(
                "{}: no longer in the repository's signed metadata",
                item.target
            ))
        })?;
    let signed = ArtifactInfo::from_target(&info).ok_or_else(|| StageError {
        message: format!("{}: the target has no signed sha256", item.target),
        temporary: false,
    })?;
    if signed.length != item.length || !signed.sha256.eq_ignore_ascii_case(&item.sha256) {
        return Err(StageError::temporary(format!(
            "{}: the signed length or hash changed since the decision; decide again",
            item.target
        )));
    }
    Ok((info, signed))
}

/// Stages one item: keeps a verified copy, else tries its delta (if any; a failure is
/// logged, pushed to `fallbacks` and ends in the full download), else downloads the full
/// artifact, resuming a partial download.
fn stage_one(
    updater: &mut Updater,
    dir: &Path,
    item: &DownloadItem,
    bases: &DeltaSources,
    fallbacks: &mut Vec<String>,
    progress: &mut dyn FnMut(&DownloadProgress) -> ControlFlow<()>,
) -> Result<Staged, StageError> {
    let (info, signed) = signed_target(updater, item)?;
    let name = local_target_file_name(&item.target).map_err(|e| StageError {
        message: e.to_string(),
        temporary: false,
    })?;
    let dest = dir.join(name);
    if updater
        .find_cached_target(&info, &dest)
        .map_err(|e| StageError::download(&item.target, e, dir))?
    {
        return Ok(Staged::Kept);
    }
    if signed.tree.is_some() && verify_staged(&dest, &signed) {
        // A tree rebuilt from a tree delta by an earlier run.
        return Ok(Staged::Kept);
    }
    if dest.exists() {
        tracing::warn!(
            "staging: {} does not match the signed length and hashes; downloading it again",
            dest.display()
        );
        let _ = fs::remove_file(&dest);
    }
    let mut wasted = 0;
    if let Some(d) = &item.delta {
        let tried = stage_via_delta(updater, dir, &dest, item, (&info, &signed), d, bases);
        match tried {
            Ok(bytes) => {
                tracing::info!(
                    "staging: built {} from the delta {} ({bytes} bytes instead of {})",
                    item.target,
                    d.target,
                    item.length
                );
                return Ok(Staged::Delta { bytes });
            }
            Err(why) => {
                tracing::warn!(
                    "staging: not using the delta {} for {}: {why}; downloading the full artifact",
                    d.target,
                    item.target
                );
                fallbacks.push(format!("{}: {why}", item.target));
                wasted = fetched_delta_bytes(dir, d);
            }
        }
    }
    let stats = updater
        .download_target_resumable(&info, &dest, &mut |p| progress(&p))
        .map_err(|e| StageError::download(&item.target, e, dir))?;
    Ok(Staged::Full {
        wasted,
        transferred: stats.transferred,
    })
}

/// Stages a system image straight into the inactive slot (no staging copy; not
/// resumable, no delta): verified while it streams.
fn stage_into_slot(
    updater: &mut Updater,
    slots: &Slots,
    item: &DownloadItem,
    dir: &Path,
) -> Result<Staged, StageError> {
    if slots.holds_staged(&item.target, &item.sha256) {
        return Ok(Staged::Kept);
    }
    let (info, _) = signed_target(updater, item)?;
    tracing::info!(
        "staging: {} goes straight into the inactive slot ({} bytes)",
        item.target,
        item.length
    );
    let mut failure = None;
    slots
        .stage_direct(&item.target, &item.sha256, item.length, |w| {
            updater.download_target_to_writer(&info, w).map_err(|e| {
                let msg = e.to_string();
                failure = Some(e);
                msg
            })
        })
        .map_err(|msg| match failure.take() {
            Some(e) => StageError::download(&item.target, e, dir),
            None => StageError {
                message: format!("{}: {msg}", item.target),
                temporary: false,
            },
        })?;
    Ok(Staged::Full {
        wasted: 0,
        transferred: item.length,
    })
}

/// The bytes of delta `d` fetched by a failed attempt (its downloaded copy, kept for this
/// count until the next attempt), then removes that copy.
fn fetched_delta_bytes(dir: &Path, d: &DeltaInfo) -> u64 {
    let Ok(name) = local_target_file_name(&d.target) else {
        return 0;
    };
    let path = dir.join(format!(".petrel-tmp-delta-{name}"));
    let n = fs::metadata(&path).map_or(0, |m| m.len());
    let _ = fs::remove_file(&path);
    n
}

/// Builds `dest` from the delta `d` and the installed artifact of `item.app`: returns the
/// delta's length. The result is renamed into place only when it is exactly `signed`'s
/// length and SHA-256; on any error nothing is left behind but `dest` stays absent.
fn stage_via_delta(
    updater: &mut Updater,
    dir: &Path,
    dest: &Path,
    item: &DownloadItem,
    (full, signed): (&TargetInfo, &ArtifactInfo),
    d: &DeltaInfo,
    bases: &DeltaSources,
) -> Result<u64, String> {
    let info = updater
        .get_target_info(&d.target)
        .map_err(|e| e.to_string())?
        .ok_or("no longer in the repository's signed metadata")?;
    let meta = super::repo::check_delta_target(&info, signed, &d.base_sha256)?;
    let share = bases.config.max_share;
    if info.length() as f64 > share * signed.length as f64 {
        return Err(format!(
            "the delta ({} bytes) is more than {share} of the artifact ({} bytes; deltas.max_share)",
            info.length(),
            signed.length
        ));
    }
    if meta.format == crate::tree::delta::FORMAT {
        return stage_via_tree_delta(updater, dir, dest, item, (full, signed), &info, bases);
    }
    // The base: exactly the bytes the delta names (a whole file, or a slot's first bytes),
    // hashed as they are read.
    let (base_path, prefix) = bases.base_of(&item.app)?;
    if let Some(n) = prefix.filter(|n| *n != meta.base_length) {
        return Err(format!(
            "the running slot holds a {n}-byte image, the delta's base is {} bytes",
            meta.base_length
        ));
    }
    let changed = || {
        format!(
            "the installed bytes {} changed since the decision (not the delta's base)",
            base_path.display()
        )
    };
    let open_base =
        || fs::File::open(&base_path).map_err(|e| format!("{}: {e}", base_path.display()));
    {
        let f = open_base()?;
        let len = if prefix.is_some() {
            meta.base_length
        } else {
            f.metadata().map_err(|e| e.to_string())?.len()
        };
        let (sha, n) = hash_reader(f.take(prefix.unwrap_or(meta.base_length + 1)))
            .map_err(|e| format!("{}: {e}", base_path.display()))?;
        if len != meta.base_length
            || n != meta.base_length
            || !sha.eq_ignore_ascii_case(&meta.base_sha256)
        {
            return Err(changed());
        }
    }
    // The delta, through the updater: verified against its signed length and hashes.
    let name = local_target_file_name(&d.target).map_err(|e| e.to_string())?;
    let delta_path = dir.join(format!(".petrel-tmp-delta-{name}"));
    let _ = fs::remove_file(&delta_path);
    let result = (|| {
        updater
            .download_target(&info, &delta_path)
            .map_err(|e| format!("downloading the delta: {e}"))?;
        let delta_file =
            fs::File::open(&delta_path).map_err(|e| format!("{}: {e}", delta_path.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".petrel-tmp-")
            .tempfile_in(dir)
            .map_err(|e| format!("a temporary file in {}: {e}", dir.display()))?;
        let base = open_base()?;
        crate::delta::apply_file(
            &meta.format,
            &base,
            meta.base_length,
            &delta_file,
            signed.length,
            bases.config.mode,
            tmp.as_file(),
        )
        .map_err(|e| format!("{} delta: {e}", meta.format))?;
        // Checked against the artifact's own signed length and SHA-256, never the delta's.
        let (sha, n) = tmp
            .reopen()
            .and_then(|f| hash_reader(io::BufReader::new(f)))
            .map_err(|e| format!("reading the result: {e}"))?;
        if n != signed.length || !sha.eq_ignore_ascii_case(&signed.sha256) {
            return Err(format!(
                "the result is not the signed artifact ({n} bytes, sha256 {sha}; signed: {} bytes, sha256 {})",
                signed.length, signed.sha256
            ));
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| format!("writing the result: {e}"))?;
        tmp.persist(dest)
            .map_err(|e| format!("{}: {}", dest.display(), e.error))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(info.length())
    })();
    if result.is_ok() {
        let _ = fs::remove_file(&delta_path);
    }
    // (On failure the caller counts the fetched bytes and removes the copy.)
    result
}

/// Builds the tree `dest` from the tree delta `info` and the installed tree of `item.app`:
/// every file is checked against the signed tree manifest; a file whose installed copy was
/// edited is read alone from the full artifact (`full`). Returns the bytes fetched.
fn stage_via_tree_delta(
    updater: &mut Updater,
    dir: &Path,
    dest: &Path,
    item: &DownloadItem,
    (full, signed): (&TargetInfo, &ArtifactInfo),
    info: &TargetInfo,
    bases: &DeltaSources,
) -> Result<u64, String> {
    let want = signed
        .tree
        .as_deref()
        .ok_or("a tree delta for an artifact without signed tree metadata")?;
    let inv = bases
        .inventory_dir
        .as_deref()
        .ok_or("the inventory is not a directory, so the installed tree cannot be read")?;
    let (root, manifest) = super::inventory::installed_tree(inv, &item.app)
        .ok_or_else(|| format!("{} is not an installed tree", inv.join(&item.app).display()))?;
    let name = local_target_file_name(&info.path).map_err(|e| e.to_string())?;
    let delta_path = dir.join(format!(".petrel-tmp-delta-{name}"));
    let _ = fs::remove_file(&delta_path);
    updater
        .download_target(info, &delta_path)
        .map_err(|e| format!("downloading the delta: {e}"))?;
    let result = (|| {
        let mut tmp = tempfile::Builder::new()
            .prefix(".petrel-tmp-")
            .tempfile_in(dir)
            .map_err(|e| format!("a temporary file in {}: {e}", dir.display()))?;
        let mut fetch = |f: crate::tree::FrameAt| {
            updater
                .read_target_range(full, f.offset, f.length)
                .map_err(|e| e.to_string())
        };
        let done = crate::tree::delta::apply(
            &delta_path,
            &crate::tree::delta::Base {
                root: &root,
                manifest: &manifest,
            },
            want,
            bases.config.mode,
            dir,
            Some(&mut fetch),
            tmp.as_file_mut(),
        )
        .map_err(|e| format!("tree delta: {e}"))?;
        if !done.fetched.is_empty() {
            tracing::warn!(
                "staging: {} installed file(s) of {} were not the ones the delta refers to (edited?) and were read from the full artifact: {}",
                done.fetched.len(),
                item.app,
                done.fetched.join(", ")
            );
        }
        tmp.persist(dest)
            .map_err(|e| format!("{}: {}", dest.display(), e.error))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(info.length() + done.fetched_bytes)
    })();
    if result.is_ok() {
        let _ = fs::remove_file(&delta_path);
    }
    result
}

/// The SHA-256 and length of what `r` yields, read in chunks.
fn hash_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        ctx.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(ctx.finish()), n))
}

/// The SHA-256 and length of a file, read in chunks.
fn hash_and_length(path: &Path) -> io::Result<(String, u64)> {
    let len = fs::metadata(path)?.len();
    Ok((super::inventory::sha256_file(path)?, len))
}

/// Whether `path` holds exactly the signed bytes (length and SHA-256).
pub fn verify_file(path: &Path, sha256: &str, length: u64) -> bool {
    match fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() == length => {}
        _ => return false,
    }
    hash_and_length(path).is_ok_and(|(h, l)| l == length && h.eq_ignore_ascii_case(sha256))
}

/// Makes sure every artifact of `plan` has a verified copy in campaign `c`'s staging
/// directory (adopting verified copies from other staging directories, for example those of
/// an earlier revision of the same campaign) and writes `plan.json`. Targets with no
/// verified copy anywhere are dropped from `state.staged` and returned as `Err(missing)`:
/// they are downloaded again by the next run.
pub fn record_plan(
    paths: &StatePaths,
    state: &mut AgentState,
    c: &CampaignDecision,
    plan: &Plan,
    artifacts: &BTreeMap<String, ArtifactInfo>,
    slots: Option<&Slots>,
    now: DateTime<Utc>,
) -> Result<Result<(PathBuf, StagedPlan), Vec<String>>, AgentError> {
    let dir = campaign_dir(paths, &c.id, c.revision);
    fs::create_dir_all(&dir).map_err(|e| AgentError::State {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let mut steps = Vec::new();
    let mut missing = Vec::new();
    for s in &plan.steps {
        let artifact = match s.target() {
            None => None,
            Some(target) => {
                let Some(art) = artifacts.get(target) else {
                    missing.push(format!("{target} (not in the repository)"));
                    continue;
                };
                let file = local_target_file_name(target).map_err(|e| AgentError::State {
                    path: dir.clone(),
                    reason: e.to_string(),
                })?;
                let here = dir.join(&file);
                let ok =
                    verify_staged(&here, art) || adopt(paths, &dir, &file, &art.sha256, art.length);
                let in_slot = !ok && slots.is_some_and(|sl| sl.holds_staged(target, &art.sha256));
                if !ok && !in_slot {
                    state.staged.remove(target);
                    missing.push(target.to_string());
                    continue;
                }
                Some(StagedArtifact {
                    sha256: art.sha256.clone(),
                    length: art.length,
                    file,
                    in_slot,
                    tree: art.tree.clone(),
                })
            }
        };
        steps.push(StagedStep {
            step: s.clone(),
            artifact,
        });
    }
    if !missing.is_empty() {
        state.save(&paths.state_file())?;
        return Ok(Err(missing));
    }
    let staged = StagedPlan {
        schema_version: PLAN_SCHEMA_VERSION,
        campaign: c.id.clone(),
        revision: c.revision,
        manifest_sha256: c.manifest_sha256.clone(),
        attempt_sha256: Some(c.attempt_sha256.clone()),
        group: plan.group.clone(),
        group_revision: plan.revision,
        staged_at: now,
        steps,
        wave: None,
    };
    let path = staged.save(&dir)?;
    Ok(Ok((path, staged)))
}

/// Whether `path` holds the staged artifact `art`: its signed bytes, or (a tree) a
/// container whose every file is the signed manifest's.
fn verify_staged(path: &Path, art: &ArtifactInfo) -> bool {
    verify_file(path, &art.sha256, art.length)
        || art
            .tree
            .as_deref()
            .is_some_and(|t| path.exists() && crate::tree::verify_container(path, t).is_ok())
}

/// Copies (hard link when possible) a verified file named `file` from another staging
/// directory into `dir`.
fn adopt(paths: &StatePaths, dir: &Path, file: &str, sha256: &str, length: u64) -> bool {
    let Ok(entries) = fs::read_dir(paths.staging()) else {
        return false;
    };
    for e in entries.flatten() {
        let other = e.path();
        if other == dir || !other.is_dir() {
            continue;
        }
        let src = other.join(file);
        if !verify_file(&src, sha256, length) {
            continue;
        }
        let dest = dir.join(file);
        let _ = fs::remove_file(&dest);
        let linked = fs::hard_link(&src, &dest).is_ok() || copy_durably(&src, &dest).is_ok();
        if linked && verify_file(&dest, sha256, length) {
            return true;
        }
    }
    false
}

fn copy_durably(src: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".petrel-tmp-")
        .tempfile_in(parent)?;
    io::copy(&mut fs::File::open(src)?, tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// A staged campaign, as `petrel status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StagedCampaign {
    /// The staging directory.
    pub dir: PathBuf,
    /// The staged plan, if every artifact is staged.
    pub plan: Option<StagedPlan>,
    /// Staged files (not counting `plan.json`).
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Every staging directory, with its plan if it has one.
pub fn list(paths: &StatePaths) -> Vec<StagedCampaign> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(paths.staging()) else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let (mut files, mut bytes) = (0, 0);
        if let Ok(es) = fs::read_dir(&dir) {
            for e in es.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n == PLAN_FILE || n.starts_with('.') {
                    continue;
                }
                files += 1;
                bytes += e.metadata().map_or(0, |m| m.len());
            }
        }
        let plan = StagedPlan::load(&dir).ok().flatten();
        out.push(StagedCampaign {
            dir,
            plan,
            files,
            bytes,
        });
    }
    out
}

/// Tidies staging after a decision: drops `state.staged` entries the decision calls stale
/// and entries whose file is in no staging directory; renames a live campaign's staging
/// directory of an earlier revision to its current revision (its verified files are
/// reused); deletes staging directories no live campaign (one that may still install, or a
/// halted one) needs, and files in live directories the plan no longer needs. Returns the
/// directories deleted.
pub fn tidy(
    paths: &StatePaths,
    state: &mut AgentState,
    d: &Decision,
    slots: Option<&Slots>,
) -> Result<Vec<PathBuf>, AgentError> {
    let mut changed = false;
    for t in &d.stale_staged {
        changed |= state.staged.remove(t).is_some();
    }
    let live: BTreeMap<&str, u64> = d
        .campaigns
        .iter()
        .filter(|c| !c.status.is_settled() || matches!(c.status, Status::Halted))
        .map(|c| (c.id.as_str(), c.revision))
        .collect();
    let needed: BTreeSet<String> = d
        .plan
        .iter()
        .flat_map(|p| p.targets())
        .filter_map(|t| local_target_file_name(t).ok())
        .collect();
    let mut removed = Vec::new();
    let entries: Vec<PathBuf> = match fs::read_dir(paths.staging()) {
        Ok(es) => es
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => Vec::new(),
    };
    for dir in entries {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let owner = name
            .rsplit_once('-')
            .and_then(|(c, r)| r.parse::<u64>().ok().map(|r| (c.to_string(), r)));
        let keep_as = owner
            .as_ref()
            .and_then(|(c, r)| live.get(c.as_str()).map(|cur| (c.clone(), *r, *cur)));
        match keep_as {
            Some((c, r, cur)) if r != cur => {
                let to = campaign_dir(paths, &c, cur);
                if !to.exists() && fs::rename(&dir, &to).is_ok() {
                    tracing::info!(
                        "staging: campaign {c} is now revision {cur}; reusing {}",
                        dir.display()
                    );
                    prune_files(&to, &needed);
                } else {
                    remove_dir(&dir, &mut removed);
                }
            }
            Some(_) => prune_files(&dir, &needed),
            None => remove_dir(&dir, &mut removed),
        }
    }
    // Entries whose file is gone everywhere (and that are not in the inactive slot) are
    // not staged any more.
    let names: Vec<(String, String)> = state
        .staged
        .iter()
        .filter(|(t, i)| !slots.is_some_and(|sl| sl.holds_staged(t, &i.sha256)))
        .filter_map(|(t, _)| local_target_file_name(t).ok().map(|n| (t.clone(), n)))
        .collect();
    for (target, name) in names {
        let found = fs::read_dir(paths.staging())
            .map(|es| es.flatten().any(|e| e.path().join(&name).is_file()))
            .unwrap_or(false);
        if !found {
            state.staged.remove(&target);
            changed = true;
        }
    }
    if changed || !removed.is_empty() {
        state.save(&paths.state_file())?;
    }
    Ok(removed)
}

fn prune_files(dir: &Path, needed: &BTreeSet<String>) {
    let Ok(es) = fs::read_dir(dir) else { return };
    for e in es.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        // A partial download of a needed target is kept: the next download resumes it.
        let partial_of_needed = n
            .strip_prefix(PARTIAL_PREFIX)
            .is_some_and(|t| needed.contains(t));
        if n == PLAN_FILE || needed.contains(&n) || partial_of_needed {
            continue;
        }
        let _ = fs::remove_file(e.path());
    }
}

fn remove_dir(dir: &Path, removed: &mut Vec<PathBuf>) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::info!("staging: removed {} (no campaign needs it)", dir.display());
            removed.push(dir.to_path_buf());
        }
        Err(e) => tracing::warn!("staging: cannot remove {}: {e}", dir.display()),
    }
}

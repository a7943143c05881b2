//! Publishing: sign staged roles, make snapshot and timestamp, write the static tree.
//!
//! Publishing is crash-safe. Every role is first finalized (version, expiry, signatures)
//! in `staged/`, then a journal names them; only then is the tree written — target files,
//! versioned metadata, root, and `timestamp.json` last, each file atomically — and finally
//! the workspace's current metadata is updated and the journal removed. An interrupted
//! publish is finished by the next `publish`, which rewrites the same bytes. Until the new
//! `timestamp.json` is renamed into place, clients see the previous repository.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use petrel_client::tuf::schema::{
    encode_role_name, tree, Expires, Hashes, MetaFile, Metadata, Root, Signed, Snapshot,
    SnapshotTree, Targets, Timestamp, Unrecognized, SPEC_VERSION,
};
use serde::{Deserialize, Serialize};

use crate::editor::{self, trunc_seconds, Editor};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::signing;
use crate::workspace::Workspace;

const JOURNAL: &str = ".publish-journal.json";

/// What a publish did.
#[derive(Clone, Debug, Default)]
pub struct PublishReport {
    /// Roles written, with their new versions, in write order.
    pub roles: Vec<(String, u64)>,
    /// Target files newly placed in the tree.
    pub targets_written: usize,
    /// Whether this run finished a previously interrupted publish.
    pub resumed: bool,
    /// The automatic deltas built first (`[deltas]`), when [`publish_with_deltas`] ran them.
    pub deltas: Option<crate::autodelta::AutoDeltaReport>,
}

/// What to regenerate even if nothing is staged.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refresh {
    /// Re-sign the timestamp with a new expiry.
    pub timestamp: bool,
    /// Re-sign the snapshot with a new expiry (implies timestamp).
    pub snapshot: bool,
}

#[derive(Serialize, Deserialize)]
struct Journal {
    /// Roles to write, in order; their final bytes are in `staged/`.
    roles: Vec<String>,
}

fn journal_path(ws: &Workspace) -> PathBuf {
    ws.staged_dir().join(JOURNAL)
}

/// Whether a publish was interrupted and must be finished before anything else changes.
pub fn interrupted(ws: &Workspace) -> bool {
    journal_path(ws).exists()
}

/// Refuses to edit while an interrupted publish is pending.
pub fn ensure_not_interrupted(ws: &Workspace) -> Result<()> {
    if interrupted(ws) {
        return Err(Error::State(
            "a publish was interrupted; run `petrel-repo publish` to finish it before making changes".into(),
        ));
    }
    Ok(())
}

/// What `petrel-repo publish` runs: first the automatic deltas of `[deltas]`
/// ([`crate::autodelta`]), built and staged before anything is signed, then [`publish`].
/// A delta that cannot be built stops the publish with nothing changed; a publish that
/// fails before it is decided (its journal written) takes the deltas back, so a failed
/// publish still changes nothing. An interrupted publish is finished without new deltas.
pub fn publish_with_deltas(ws: &Workspace) -> Result<PublishReport> {
    if interrupted(ws) {
        return publish(ws, Refresh::default());
    }
    let Some(deltas) = crate::autodelta::stage_for_publish(ws)? else {
        return publish(ws, Refresh::default());
    };
    match publish(ws, Refresh::default()) {
        Ok(mut report) => {
            report.deltas = Some(deltas.report);
            Ok(report)
        }
        Err(e) if interrupted(ws) => Err(e),
        Err(e) => match deltas.undo() {
            Ok(()) => Err(e),
            Err(u) => Err(Error::State(format!(
                "{e}; taking back the automatic deltas staged for this publish failed too: {u}"
            ))),
        },
    }
}

/// Publishes every staged change (and refreshes what `refresh` asks for).
pub fn publish(ws: &Workspace, refresh: Refresh) -> Result<PublishReport> {
    if interrupted(ws) {
        let mut report = apply_journal(ws, BTreeMap::new(), None)?;
        report.resumed = true;
        return Ok(report);
    }
    // The campaign index follows the campaigns being published (when the layout has one).
    // (Without it, the roles staged are listed once, below.)
    if ws.settings.layout.campaign_index
        && (!ws.staged_roles()?.is_empty() || ws.published::<Snapshot>("snapshot")?.is_none())
    {
        crate::manifests::refresh_campaign_index(ws)?;
    }
    let staged = ws.staged_roles()?;
    let changed: Vec<String> = staged
        .iter()
        .filter(|r| r.as_str() != "snapshot" && r.as_str() != "timestamp")
        .cloned()
        .collect();
    if changed.is_empty() && !refresh.timestamp && !refresh.snapshot {
        return Ok(PublishReport::default());
    }
    // Before anything is signed: no manifest beyond its delegation chain's capabilities.
    crate::manifests::check_before_publish(ws)?;
    let mut ed = Editor::new(ws);
    let now = ws.now();
    let mut order = Vec::new();
    // Final bytes of every role, staged only once all of them are signed, so a publish
    // that fails (threshold not met, unusable key, missing content) changes nothing.
    let mut finished: Vec<(String, Vec<u8>)> = Vec::new();

    // Root first: signed by a threshold of the old and of the new root keys.
    if changed.iter().any(|r| r == "root") {
        let mut root = ws.staged::<Root>("root")?.expect("listed as staged");
        finalize(ws, &mut ed, "root", &mut root)?;
        finished.push(("root".into(), file_bytes(ws, "root", &root)?));
        order.push("root".to_string());
    }
    let root = ed.root()?.clone();

    // Targets roles, each by its delegator's keys; their content must be available.
    let mut role_bytes: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    // Each changed role's delegated roles, checked below (kept here so no role is parsed twice).
    let mut delegated: Vec<(String, Vec<String>)> = Vec::new();
    // The finalized targets roles, handed to `apply_journal` so it need not parse them again.
    let mut parsed: BTreeMap<String, Signed<Targets>> = BTreeMap::new();
    for role in changed.iter().filter(|r| r.as_str() != "root") {
        let mut t = ws.staged::<Targets>(role)?.expect("listed as staged");
        finalize(ws, &mut ed, role, &mut t)?;
        if let Some(d) = &t.signed.delegations {
            delegated.push((role.clone(), d.role_names()));
        }
        let bytes = file_bytes(ws, role, &t)?;
        finished.push((role.clone(), bytes.clone()));
        role_bytes.insert(role.clone(), (t.signed.version, bytes));
        order.push(role.clone());
        parsed.insert(role.clone(), t);
    }
    // Every listed target's content must be available (before anything is staged).
    let stored = ContentNames::for_roles(ws, parsed.values())?;
    for (role, t) in &parsed {
        check_content(ws, &root, role, &t.signed, &stored)?;
    }
    check_delegated_roles_exist(ws, &delegated)?;

    // Snapshot: previous entries carried forward, changed roles updated.
    let prev_snapshot = ws.published::<Snapshot>("snapshot")?;
    let make_snapshot = !role_bytes.is_empty()
        || refresh.snapshot
        || changed.iter().any(|r| r == "root")
        || prev_snapshot.is_none();
    let tree_meta: Option<MetaFile>;
    let snapshot_ref: MetaFile = if make_snapshot {
        let mut meta = prev_snapshot
            .as_ref()
            .map(|s| s.signed.meta.clone())
            .unwrap_or_default();
        for (role, (version, bytes)) in &role_bytes {
            meta.insert(format!("{role}.json"), meta_file(*version, bytes));
        }
        let snapshot = Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: prev_snapshot.as_ref().map_or(1, |s| s.signed.version + 1),
            expires: Expires(trunc_seconds(now + ws.settings.expiry_for("snapshot")?)),
            meta,
            unrecognized: prev_snapshot
                .as_ref()
                .map(|s| s.signed.unrecognized.clone())
                .unwrap_or_default(),
        };
        let mut signed = Signed::unsigned(snapshot);
        signing::sign_role(&mut ed, "snapshot", &mut signed)?;
        let bytes = file_bytes(ws, "snapshot", &signed)?;
        finished.push(("snapshot".into(), bytes.clone()));
        order.push("snapshot".into());
        tree_meta = ws
            .settings
            .layout
            .snapshot_tree
            .then(|| write_snapshot_tree(ws, &mut ed, &signed.signed, true))
            .transpose()?;
        meta_file(signed.signed.version, &bytes)
    } else {
        let prev = prev_snapshot.expect("checked above");
        let bytes = fsutil::read(&ws.current_path("snapshot"))?;
        tree_meta = ws
            .settings
            .layout
            .snapshot_tree
            .then(|| write_snapshot_tree(ws, &mut ed, &prev.signed, false))
            .transpose()?;
        meta_file(prev.signed.version, &bytes)
    };

    let prev_ts = ws.published::<Timestamp>("timestamp")?;
    let mut tmeta = BTreeMap::new();
    tmeta.insert("snapshot.json".to_string(), snapshot_ref);
    let ts = Timestamp {
        type_: "timestamp".into(),
        spec_version: SPEC_VERSION.into(),
        version: prev_ts.as_ref().map_or(1, |t| t.signed.version + 1),
        expires: Expires(trunc_seconds(now + ws.settings.expiry_for("timestamp")?)),
        meta: tmeta,
        unrecognized: {
            let mut u = prev_ts.map(|t| t.signed.unrecognized).unwrap_or_default();
            match &tree_meta {
                Some(m) => u.insert(
                    tree::TIMESTAMP_FIELD.into(),
                    serde_json::to_value(m).expect("a reference serializes"),
                ),
                None => u.remove(tree::TIMESTAMP_FIELD),
            };
            u
        },
    };
    let mut signed = Signed::unsigned(ts);
    signing::sign_role(&mut ed, "timestamp", &mut signed)?;
    let ts_bytes = if tree_meta.is_some() {
        // Compact: every device fetches the timestamp on every poll.
        let mut b =
            serde_json::to_vec(&signed).map_err(|e| Error::State(format!("timestamp: {e}")))?;
        b.push(b'\n');
        b
    } else {
        file_bytes(ws, "timestamp", &signed)?
    };
    finished.push(("timestamp".into(), ts_bytes));
    order.push("timestamp".into());

    for (role, bytes) in &finished {
        fsutil::write_atomic(&ws.staged_path(role), bytes)?;
    }

    let journal = serde_json::to_vec_pretty(&Journal { roles: order }).expect("journal serializes");
    fsutil::write_atomic(&journal_path(ws), &journal)?;
    apply_journal(ws, parsed, stored)
}

/// Writes the snapshot tree of `snapshot` into the tree (docs/scale.md): the nodes that are
/// not there yet (content-addressed, so existing ones are the same bytes), then the head,
/// signed with the snapshot keys, with the snapshot's version and expiry. With `fresh`
/// false (the snapshot is not re-signed) an existing head is kept. Returns the reference
/// the timestamp pins. Devices see none of it before the new timestamp is in place.
fn write_snapshot_tree(
    ws: &Workspace,
    ed: &mut Editor<'_>,
    snapshot: &Snapshot,
    fresh: bool,
) -> Result<MetaFile> {
    let dir = ws.tree_dir().join("metadata").join(tree::TREE_DIR);
    let head_path = dir.join(tree::head_file_name(snapshot.version));
    if !fresh {
        if let Ok(bytes) = fs::read(&head_path) {
            return Ok(meta_file(snapshot.version, &bytes));
        }
    }
    let roles: BTreeMap<String, MetaFile> = snapshot
        .meta
        .iter()
        .filter_map(|(name, m)| Some((name.strip_suffix(".json")?.to_string(), m.clone())))
        .collect();
    let built = tree::build(&roles);
    let mut written = 0usize;
    for (hash, bytes) in &built.nodes {
        let path = dir.join(tree::node_file_name(hash));
        if !path.exists() {
            fsutil::write_atomic(&path, bytes)?;
            written += 1;
        }
    }
    let head = SnapshotTree {
        type_: tree::TREE_TYPE.into(),
        spec_version: SPEC_VERSION.into(),
        version: snapshot.version,
        expires: snapshot.expires,
        root: built.root,
        roles: roles.len() as u64,
        unrecognized: Unrecognized::new(),
    };
    let mut signed = Signed::unsigned(head);
    signing::sign_role(ed, "snapshot", &mut signed)?;
    let bytes = signed.to_file_bytes().map_err(|source| Error::Schema {
        path: head_path.clone(),
        source,
    })?;
    fsutil::write_atomic(&head_path, &bytes)?;
    fsutil::sync_dir(&dir)?;
    tracing::debug!(
        "snapshot tree v{}: {} nodes, {written} new",
        snapshot.version,
        built.nodes.len()
    );
    Ok(meta_file(snapshot.version, &bytes))
}

/// Sets a fresh expiry unless the role already carries valid signatures (made offline
/// for exactly these bytes), then signs with available keys and checks thresholds.
fn finalize<T: Metadata>(
    ws: &Workspace,
    ed: &mut Editor<'_>,
    role: &str,
    signed: &mut Signed<T>,
) -> Result<()> {
    let auths = signing::authorities(ed, role)?;
    // (No signatures, the usual case, needs no canonical form: big roles are costly to
    // canonicalize.)
    if signed.signatures.is_empty() || signing::valid_signers(signed, &auths)?.is_empty() {
        signed.signed.set_expires(Expires(trunc_seconds(
            ws.now() + ws.settings.expiry_for(role)?,
        )));
        signed.signatures.clear();
    }
    signing::sign_role(ed, role, signed)
}

fn meta_file(version: u64, bytes: &[u8]) -> MetaFile {
    let mut hashes = Hashes::new();
    hashes.insert("sha256".into(), petrel_client::manifest::sha256_hex(bytes));
    MetaFile {
        version,
        length: Some(bytes.len() as u64),
        hashes: Some(hashes),
        unrecognized: Unrecognized::new(),
    }
}

fn file_bytes<T: Metadata>(ws: &Workspace, role: &str, s: &Signed<T>) -> Result<Vec<u8>> {
    s.to_file_bytes().map_err(|source| Error::Schema {
        path: ws.staged_path(role),
        source,
    })
}

/// The tree path of a target file.
pub fn target_tree_path(consistent: bool, name: &str, sha256: &str) -> PathBuf {
    let mut p = PathBuf::from("targets");
    if consistent {
        match name.rsplit_once('/') {
            Some((dir, base)) => p.push(format!("{dir}/{sha256}.{base}")),
            None => p.push(format!("{sha256}.{name}")),
        }
    } else {
        p.push(name);
    }
    p
}

/// The tree path of a role's metadata file.
pub fn metadata_tree_path(consistent: bool, role: &str, version: u64) -> PathBuf {
    let enc = encode_role_name(role);
    match role {
        "timestamp" => PathBuf::from("metadata/timestamp.json"),
        "root" => PathBuf::from(format!("metadata/{version}.root.json")),
        _ if consistent => PathBuf::from(format!("metadata/{version}.{enc}.json")),
        _ => PathBuf::from(format!("metadata/{enc}.json")),
    }
}

/// Names in the content store, listed once per publish when the roles being published
/// list many targets (one directory listing instead of one lookup per target).
struct ContentNames(editor::StoreListing);

/// Above this many targets in the roles being published, the content store is listed
/// instead of looked up per target. (A lookup costs about as much as listing ten entries,
/// and the store may hold far more files than the roles being published list.)
const LIST_CONTENT_ABOVE: usize = 8192;

impl ContentNames {
    /// The listing of the store, when `roles` list more than [`LIST_CONTENT_ABOVE`] targets.
    fn for_roles<'a>(
        ws: &Workspace,
        roles: impl Iterator<Item = &'a Signed<Targets>>,
    ) -> Result<Option<ContentNames>> {
        let total: usize = roles.map(|t| t.signed.targets.len()).sum();
        if total > LIST_CONTENT_ABOVE {
            editor::list_stored(&ws.content_dir())
                .map(ContentNames)
                .map(Some)
        } else {
            Ok(None)
        }
    }

    /// The stored copy of `sha256`, if the store holds one: from the listing if there is
    /// one, else by looking it up.
    fn find(this: &Option<ContentNames>, dir: &Path, sha256: &str) -> Option<PathBuf> {
        match this {
            Some(listing) => listing.0.path(dir, sha256),
            None => editor::find_stored(dir, sha256),
        }
    }
}

fn check_content(
    ws: &Workspace,
    root: &Root,
    role: &str,
    t: &Targets,
    stored: &Option<ContentNames>,
) -> Result<()> {
    let tree = ws.tree_dir();
    let content = ws.content_dir();
    for (name, tf) in &t.targets {
        let Some(sha) = tf.hashes.get("sha256") else {
            return Err(Error::target(
                name,
                format!("role {role:?} lists it without a sha256 hash"),
            ));
        };
        // The content store is checked first: it usually has the file.
        if ContentNames::find(stored, &content, sha).is_none()
            && !tree
                .join(target_tree_path(root.consistent_snapshot(), name, sha))
                .exists()
        {
            return Err(Error::target(
                name,
                format!("its content ({sha}) is neither in the content store nor in the tree; add the file again"),
            ));
        }
    }
    Ok(())
}

/// `delegated`: each changed targets role with the names of the roles it delegates to.
fn check_delegated_roles_exist(ws: &Workspace, delegated: &[(String, Vec<String>)]) -> Result<()> {
    for (role, children) in delegated {
        for child in children {
            if !ws.staged_path(child).exists() && !ws.current_path(child).exists() {
                return Err(Error::role(
                    child,
                    format!("is delegated by {role:?} but has no metadata"),
                ));
            }
        }
    }
    Ok(())
}

/// Writes the journal's roles to the tree, then commits them to the workspace. `parsed`
/// holds targets roles already in memory (exactly the staged bytes, parsed); others are
/// read from the workspace. `stored` is a listing of the content store, if one was made.
fn apply_journal(
    ws: &Workspace,
    mut parsed: BTreeMap<String, Signed<Targets>>,
    stored: Option<ContentNames>,
) -> Result<PublishReport> {
    let jpath = journal_path(ws);
    let journal: Journal = serde_json::from_slice(&fsutil::read(&jpath)?).map_err(|e| {
        Error::State(format!(
            "{}: unreadable publish journal: {e}",
            jpath.display()
        ))
    })?;
    let tree = ws.tree_dir();
    let read_final = |role: &str| -> Result<Vec<u8>> {
        let staged = ws.staged_path(role);
        if staged.exists() {
            fsutil::read(&staged)
        } else {
            // Already committed by the interrupted run.
            fsutil::read(&ws.current_path(role))
        }
    };
    let root: Signed<Root> = parse(ws, "root", &read_final("root")?)?;
    let consistent = root.signed.consistent_snapshot();
    let mut report = PublishReport::default();

    // 1. Target files of every targets role being published.
    for role in journal
        .roles
        .iter()
        .filter(|r| !matches!(r.as_str(), "root" | "snapshot" | "timestamp"))
    {
        let t: Signed<Targets> = match parsed.remove(role) {
            Some(t) => t,
            None => parse(ws, role, &read_final(role)?)?,
        };
        let content = ws.content_dir();
        for (name, tf) in &t.signed.targets {
            let sha = &tf.hashes["sha256"];
            let stored_copy = ContentNames::find(&stored, &content, sha);
            if !consistent {
                let src = stored_copy.unwrap_or_else(|| editor::store_path(&content, sha));
                let dst = tree.join(target_tree_path(false, name, sha));
                report.targets_written +=
                    usize::from(replace_if_different(&src, &dst, tf.length, sha)?);
                continue;
            }
            // Published before and no longer in the content store: the tree holds it.
            let src = stored_copy.unwrap_or_else(|| tree.join(target_tree_path(true, name, sha)));
            // The specification asks for one copy per listed hash (clients may build the
            // name from any of them); hard links make the extra names free.
            for digest in tf.hashes.values() {
                let dst = tree.join(target_tree_path(true, name, digest));
                // (link_or_copy leaves an existing `dst` alone and says so.)
                report.targets_written += usize::from(fsutil::link_or_copy(&src, &dst)?);
            }
        }
    }
    // 2. Metadata in dependency order: targets roles, snapshot, root, timestamp last.
    let mut ordered: Vec<&String> = journal
        .roles
        .iter()
        .filter(|r| !matches!(r.as_str(), "root" | "timestamp"))
        .collect();
    ordered.sort_by_key(|r| r.as_str() == "snapshot");
    ordered.extend(journal.roles.iter().filter(|r| r.as_str() == "root"));
    ordered.extend(journal.roles.iter().filter(|r| r.as_str() == "timestamp"));
    for role in ordered {
        let bytes = read_final(role)?;
        let version = version_of(ws, role, &bytes)?;
        fsutil::write_atomic(
            &tree.join(metadata_tree_path(consistent, role, version)),
            &bytes,
        )?;
        if role == "root" {
            fsutil::write_atomic(&tree.join("metadata/root.json"), &bytes)?;
        }
        report.roles.push((role.clone(), version));
    }
    fsutil::sync_dir(&tree.join("metadata"))?;

    // 3. Commit: staged files become the current metadata.
    fs::create_dir_all(ws.metadata_dir()).map_err(|e| Error::io(ws.metadata_dir(), e))?;
    for role in &journal.roles {
        let from = ws.staged_path(role);
        if from.exists() {
            let to = ws.current_path(role);
            fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    fsutil::sync_dir(&ws.metadata_dir())?;
    fs::remove_file(&jpath).map_err(|e| Error::io(&jpath, e))?;
    Ok(report)
}

fn parse<T: Metadata>(ws: &Workspace, role: &str, bytes: &[u8]) -> Result<Signed<T>> {
    crate::workspace::parse_role(&ws.staged_path(role), bytes)
}

fn version_of(ws: &Workspace, role: &str, bytes: &[u8]) -> Result<u64> {
    // Fast path: read just the version, without building a JSON tree of a big role.
    #[derive(Deserialize)]
    struct Envelope {
        signed: VersionOnly,
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u64,
    }
    if let Ok(e) = serde_json::from_slice::<Envelope>(bytes) {
        return Ok(e.signed.version);
    }
    let raw = petrel_client::tuf::schema::RawSigned::from_bytes(bytes).map_err(|source| {
        Error::Schema {
            path: ws.staged_path(role),
            source,
        }
    })?;
    raw.signed
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::role(role, "metadata has no version"))
}

/// For trees without consistent snapshots: replaces `dst` atomically when its content
/// differs from the stored file.
fn replace_if_different(src: &Path, dst: &Path, length: u64, sha256: &str) -> Result<bool> {
    if let Ok(m) = fs::metadata(dst) {
        if m.len() == length && petrel_client::manifest::sha256_hex(&fsutil::read(dst)?) == sha256 {
            return Ok(false);
        }
    }
    let tmp = dst.with_file_name(format!(
        ".petrel-{}.tmp",
        dst.file_name().and_then(|f| f.to_str()).unwrap_or("target")
    ));
    let _ = fs::remove_file(&tmp);
    fsutil::link_or_copy(src, &tmp)?;
    fs::rename(&tmp, dst).map_err(|e| Error::io(dst, e))?;
    Ok(true)
}

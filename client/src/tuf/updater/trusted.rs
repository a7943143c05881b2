//! The trusted metadata set, one type per workflow state: root → timestamp → snapshot → targets.
//!
//! Each state can only be built by verifying the next role against the previous state, so
//! code holding a [`TrustedMetadata`] holds metadata that went through every check of the
//! spec's detailed client workflow (§5) in order. The functions here are pure: bytes in,
//! verified metadata out; the updater does the fetching and persisting.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::error::{describe, UpdateError};
use super::hashes::verify_bytes;
use crate::tuf::schema::{
    spec_major, Expires, Key, KeyId, MetaFile, Metadata, RawSigned, Root, Signed, Snapshot,
    SnapshotTree, Targets, Timestamp, SUPPORTED_SPEC_MAJOR,
};
use crate::tuf::verify::verify_threshold;

/// Metadata that passed every check for its workflow step. Only this module creates one.
#[derive(Clone, Debug)]
pub struct Verified<T>(Signed<T>);

impl<T> Verified<T> {
    /// The verified metadata.
    pub fn signed(&self) -> &Signed<T> {
        &self.0
    }
}

/// A parsed envelope whose signatures have not been checked yet.
struct Envelope {
    raw: RawSigned,
    canonical: Vec<u8>,
    what: String,
}

/// Parses the envelope, checks `_type`, and computes the canonical bytes that signatures
/// must cover. Nothing inside `signed` is interpreted yet.
fn parse<T: Metadata>(role: &str, bytes: &[u8]) -> Result<Envelope, UpdateError> {
    let raw = RawSigned::from_bytes(bytes).map_err(|source| UpdateError::Schema {
        what: describe(role, None),
        source,
    })?;
    let claimed = raw.signed.get("version").and_then(Value::as_u64);
    let what = describe(role, claimed);
    let found = raw.type_field().unwrap_or("");
    if found != T::TYPE {
        return Err(UpdateError::Schema {
            what,
            source: crate::tuf::schema::SchemaError::WrongType {
                expected: T::TYPE,
                found: found.to_string(),
            },
        });
    }
    let canonical = raw
        .canonical_signed()
        .map_err(|source| UpdateError::Schema {
            what: what.clone(),
            source,
        })?;
    Ok(Envelope {
        raw,
        canonical,
        what,
    })
}

impl Envelope {
    fn check_threshold(
        &self,
        whose: &str,
        keyids: &[KeyId],
        threshold: u32,
        keys: &BTreeMap<KeyId, Key>,
    ) -> Result<(), UpdateError> {
        verify_threshold(
            whose,
            &self.canonical,
            &self.raw.signatures,
            keyids,
            threshold,
            keys,
        )
        .map(|_| ())
        .map_err(|source| UpdateError::Signature {
            what: self.what.clone(),
            source,
        })
    }

    /// Interprets the (already signature-checked) signed part and checks the spec version.
    fn into_typed<T: Metadata>(self) -> Result<(Signed<T>, Vec<u8>), UpdateError> {
        let what = self.what;
        let signed = self
            .raw
            .typed::<T>()
            .map_err(|source| UpdateError::Schema {
                what: what.clone(),
                source,
            })?;
        if spec_major(signed.signed.spec_version()) != Some(SUPPORTED_SPEC_MAJOR) {
            return Err(UpdateError::UnsupportedSpec {
                what,
                spec_version: signed.signed.spec_version().to_string(),
            });
        }
        Ok((signed, self.canonical))
    }
}

/// Freeze check: metadata is usable only if it expires strictly after the update start.
fn check_expiry<T: Metadata>(role: &str, m: &T, now: DateTime<Utc>) -> Result<(), UpdateError> {
    if m.expires().0 <= now {
        return Err(UpdateError::Expired {
            what: describe(role, Some(m.version())),
            expires: m.expires(),
            now: Expires(now),
        });
    }
    Ok(())
}

/// Checks bytes against the length and hashes the referencing metadata pins.
fn check_meta_file(
    role: &str,
    meta: &MetaFile,
    referrer: &str,
    bytes: &[u8],
) -> Result<(), UpdateError> {
    verify_bytes(bytes, meta.length, meta.hashes.as_ref()).map_err(|reason| {
        UpdateError::LengthOrHash {
            what: describe(role, Some(meta.version)),
            reason: format!("{reason} (as pinned by {referrer})"),
        }
    })
}

/// Step 5.3: the trusted root, updated along the chain of N+1 versions.
#[derive(Clone, Debug)]
pub struct TrustedRoot {
    root: Signed<Root>,
}

impl TrustedRoot {
    /// Loads the trusted root (shipped out of band or persisted earlier). It must be signed
    /// by a threshold of its own root keys; its expiry does not matter here (spec 5.2).
    pub fn from_trusted_bytes(bytes: &[u8]) -> Result<Self, UpdateError> {
        let env = parse::<Root>("root", bytes)?;
        let (root, _) = env_self_signed(env)?;
        Ok(TrustedRoot { root })
    }

    /// The trusted root metadata.
    pub fn root(&self) -> &Signed<Root> {
        &self.root
    }

    /// Its version N.
    pub fn version(&self) -> u64 {
        self.root.signed.version
    }

    /// Spec 5.3.4–5.3.7: accepts `bytes` as root N+1 if signed by a threshold of the trusted
    /// root's keys AND of its own keys, and its version is exactly N+1. On error the trusted
    /// root is unchanged.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), UpdateError> {
        let n = self.version();
        let env = parse::<Root>("root", bytes)?;
        let old = &self.root.signed;
        let old_role = old.role("root").expect("validated root has a root role");
        env.check_threshold(
            &format!("root keys of trusted root v{n}"),
            &old_role.keyids,
            old_role.threshold,
            &old.keys,
        )?;
        let (new, canonical) = env.into_typed::<Root>()?;
        let what = describe("root", Some(new.signed.version));
        let new_role = new
            .signed
            .role("root")
            .expect("validated root has a root role");
        verify_threshold(
            &format!("root keys of new root v{}", new.signed.version),
            &canonical,
            &new.signatures,
            &new_role.keyids,
            new_role.threshold,
            &new.signed.keys,
        )
        .map_err(|source| UpdateError::Signature {
            what: what.clone(),
            source,
        })?;
        if new.signed.version != n + 1 {
            return Err(UpdateError::Version {
                what,
                reason: format!("version must be exactly {} (trusted root is v{n})", n + 1),
            });
        }
        self.root = new;
        Ok(())
    }

    /// Spec 5.3.10: the final root must not be expired.
    pub fn check_not_expired(&self, now: DateTime<Utc>) -> Result<(), UpdateError> {
        check_expiry("root", &self.root.signed, now)
    }

    /// The sorted key ids and threshold of a top-level role.
    pub fn role_keys(&self, role: &str) -> (BTreeSet<KeyId>, u32) {
        let r = self
            .root
            .signed
            .role(role)
            .expect("validated root has all top-level roles");
        (r.keyids.iter().cloned().collect(), r.threshold)
    }

    /// Whether consistent snapshots are on (spec 5.3.12).
    pub fn consistent_snapshot(&self) -> bool {
        self.root.signed.consistent_snapshot()
    }

    /// Parses `bytes` as top-level role `role` and checks the root's threshold for it.
    fn verify_top_level<T: Metadata>(
        &self,
        role: &str,
        bytes: &[u8],
    ) -> Result<Signed<T>, UpdateError> {
        let env = parse::<T>(role, bytes)?;
        let r = self
            .root
            .signed
            .role(role)
            .expect("validated root has all top-level roles");
        env.check_threshold(
            &format!("{role} keys of root v{}", self.version()),
            &r.keyids,
            r.threshold,
            &self.root.signed.keys,
        )?;
        Ok(env.into_typed::<T>()?.0)
    }

    /// Verifies a locally stored timestamp for use as the rollback reference: signatures and
    /// schema only (an expired one still protects against rollback).
    pub fn verify_local_timestamp(&self, bytes: &[u8]) -> Result<Signed<Timestamp>, UpdateError> {
        self.verify_top_level("timestamp", bytes)
    }

    /// Spec 5.4: verifies a newly downloaded timestamp against the trusted root and the
    /// previously trusted timestamp (if any). Returns the next state and whether the new
    /// timestamp replaced the previous one (false when the versions are equal: the trusted
    /// one is kept and nothing needs persisting).
    pub fn update_timestamp(
        self,
        previous: Option<Signed<Timestamp>>,
        bytes: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(WithTimestamp, bool), UpdateError> {
        let new: Signed<Timestamp> = self.verify_top_level("timestamp", bytes)?;
        let v = new.signed.version;
        let what = describe("timestamp", Some(v));
        if let Some(prev) = previous {
            let pv = prev.signed.version;
            if v < pv {
                return Err(UpdateError::Rollback {
                    what,
                    reason: format!("version {v} is lower than trusted version {pv}"),
                });
            }
            if v == pv {
                // Nothing changed. Keep the trusted timestamp; it must still be fresh.
                check_expiry("timestamp", &prev.signed, now)?;
                return Ok((
                    WithTimestamp {
                        root: self,
                        timestamp: prev,
                    },
                    false,
                ));
            }
            let (new_sv, old_sv) = (
                new.signed.snapshot_meta().version,
                prev.signed.snapshot_meta().version,
            );
            if new_sv < old_sv {
                return Err(UpdateError::Rollback {
                    what,
                    reason: format!(
                        "snapshot version {new_sv} is lower than {old_sv} in trusted timestamp v{pv}"
                    ),
                });
            }
            if let (Some(Ok(new_t)), Some(Ok(old_t))) = (
                new.signed.snapshot_tree_meta(),
                prev.signed.snapshot_tree_meta(),
            ) {
                if new_t.version < old_t.version {
                    return Err(UpdateError::Rollback {
                        what,
                        reason: format!(
                            "snapshot tree version {} is lower than {} in trusted timestamp v{pv}",
                            new_t.version, old_t.version
                        ),
                    });
                }
            }
        }
        check_expiry("timestamp", &new.signed, now)?;
        Ok((
            WithTimestamp {
                root: self,
                timestamp: new,
            },
            true,
        ))
    }
}

/// Checks that a root is signed by a threshold of its own keys and has a supported spec.
fn env_self_signed(env: Envelope) -> Result<(Signed<Root>, Vec<u8>), UpdateError> {
    let what = env.what.clone();
    // The root role's keys are only known after typing; typing before checking signatures
    // is unavoidable for a self-signed document, and harmless since nothing is acted on.
    let signatures = env.raw.signatures.clone();
    let (root, canonical) = env.into_typed::<Root>()?;
    let r = root
        .signed
        .role("root")
        .expect("validated root has a root role");
    verify_threshold(
        &format!("root keys of root v{}", root.signed.version),
        &canonical,
        &signatures,
        &r.keyids,
        r.threshold,
        &root.signed.keys,
    )
    .map_err(|source| UpdateError::Signature { what, source })?;
    Ok((root, canonical))
}

/// After spec 5.4: root and a trusted, unexpired timestamp.
#[derive(Clone, Debug)]
pub struct WithTimestamp {
    root: TrustedRoot,
    timestamp: Signed<Timestamp>,
}

impl WithTimestamp {
    /// The trusted root.
    pub fn root(&self) -> &TrustedRoot {
        &self.root
    }

    /// The trusted timestamp.
    pub fn timestamp(&self) -> &Signed<Timestamp> {
        &self.timestamp
    }

    /// What the timestamp says about the snapshot.
    pub fn snapshot_meta(&self) -> &MetaFile {
        self.timestamp.signed.snapshot_meta()
    }

    /// Verifies a locally stored snapshot for use as the rollback reference (signatures and
    /// schema only).
    pub fn verify_local_snapshot(&self, bytes: &[u8]) -> Result<Signed<Snapshot>, UpdateError> {
        self.root.verify_top_level("snapshot", bytes)
    }

    /// Spec 5.5.2–5.5.6: verifies snapshot bytes against the timestamp (length, hashes,
    /// version), the root's snapshot keys, the previously trusted snapshot (no role removed,
    /// no version lowered), and the clock.
    pub fn verify_snapshot(
        &self,
        previous: Option<&Signed<Snapshot>>,
        bytes: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Verified<Snapshot>, UpdateError> {
        let meta = self.snapshot_meta();
        let tsv = self.timestamp.signed.version;
        check_meta_file("snapshot", meta, &format!("timestamp v{tsv}"), bytes)?;
        let new: Signed<Snapshot> = self.root.verify_top_level("snapshot", bytes)?;
        let v = new.signed.version;
        let what = describe("snapshot", Some(v));
        if v != meta.version {
            return Err(UpdateError::Version {
                what,
                reason: format!(
                    "version {} in timestamp v{tsv} does not match",
                    meta.version
                ),
            });
        }
        if let Some(prev) = previous {
            let pv = prev.signed.version;
            for (name, old) in &prev.signed.meta {
                match new.signed.meta.get(name) {
                    None => {
                        return Err(UpdateError::Rollback {
                            what,
                            reason: format!(
                                "{name} is listed in trusted snapshot v{pv} but missing here"
                            ),
                        })
                    }
                    Some(m) if m.version < old.version => {
                        return Err(UpdateError::Rollback {
                            what,
                            reason: format!(
                                "{name} version {} is lower than {} in trusted snapshot v{pv}",
                                m.version, old.version
                            ),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        check_expiry("snapshot", &new.signed, now)?;
        Ok(Verified(new))
    }

    /// Moves to the next state with a verified snapshot.
    pub fn with_snapshot(self, snapshot: Verified<Snapshot>) -> WithSnapshot {
        WithSnapshot {
            root: self.root,
            timestamp: self.timestamp,
            snapshot: SnapshotSource::Full(snapshot.0),
        }
    }

    /// What the timestamp pins of the snapshot tree's head, if it pins one. A malformed
    /// reference is an error: the timestamp's signers meant something.
    pub fn tree_meta(&self) -> Result<Option<MetaFile>, UpdateError> {
        match self.timestamp.signed.snapshot_tree_meta() {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(source)) => Err(UpdateError::Schema {
                what: describe("timestamp", Some(self.timestamp.signed.version)),
                source,
            }),
        }
    }

    /// Verifies the snapshot tree's head (docs/scale.md): length and hashes pinned by the
    /// timestamp, a threshold of the root's *snapshot* keys, the version the timestamp
    /// names, not lower than `previous` (the last trusted head's version), and the clock.
    pub fn verify_tree_head(
        &self,
        meta: &MetaFile,
        previous: Option<u64>,
        bytes: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Verified<SnapshotTree>, UpdateError> {
        let tsv = self.timestamp.signed.version;
        check_meta_file(TREE_ROLE, meta, &format!("timestamp v{tsv}"), bytes)?;
        let new: Signed<SnapshotTree> = self.root.verify_top_level("snapshot", bytes)?;
        let v = new.signed.version;
        if v != meta.version {
            return Err(UpdateError::Version {
                what: describe(TREE_ROLE, Some(v)),
                reason: format!(
                    "version {} in timestamp v{tsv} does not match",
                    meta.version
                ),
            });
        }
        if let Some(pv) = previous.filter(|pv| v < *pv) {
            return Err(UpdateError::Rollback {
                what: describe(TREE_ROLE, Some(v)),
                reason: format!("version {v} is lower than trusted version {pv}"),
            });
        }
        check_expiry(TREE_ROLE, &new.signed, now)?;
        Ok(Verified(new))
    }

    /// Moves to the next state with a verified snapshot tree head; role references are
    /// resolved from the tree as they are needed ([`WithSnapshot::resolve`]).
    /// `floors`: the version this device trusted for each role before (rollback reference).
    pub fn with_tree(
        self,
        head: Verified<SnapshotTree>,
        floors: BTreeMap<String, u64>,
    ) -> WithSnapshot {
        WithSnapshot {
            root: self.root,
            timestamp: self.timestamp,
            snapshot: SnapshotSource::Tree(TreeView {
                head: head.0,
                resolved: BTreeMap::new(),
                floors,
            }),
        }
    }
}

/// How the snapshot tree is named in messages.
pub const TREE_ROLE: &str = "snapshot tree";

/// Where the trusted role versions come from.
#[derive(Clone, Debug)]
pub enum SnapshotSource {
    /// The whole `snapshot.json`.
    Full(Signed<Snapshot>),
    /// The snapshot tree: its verified head, and the role references read from it so far.
    Tree(TreeView),
}

/// A verified snapshot tree head and the references resolved from it in this refresh.
#[derive(Clone, Debug)]
pub struct TreeView {
    head: Signed<SnapshotTree>,
    /// Role → its reference, or `None` when the tree does not list it.
    resolved: BTreeMap<String, Option<MetaFile>>,
    /// Role → the highest version this device has trusted for it.
    floors: BTreeMap<String, u64>,
}

impl TreeView {
    /// The verified head.
    pub fn head(&self) -> &Signed<SnapshotTree> {
        &self.head
    }

    /// Whether `role` has been looked up in the tree.
    pub fn is_resolved(&self, role: &str) -> bool {
        self.resolved.contains_key(role)
    }

    /// Records what the tree says about `role` (found through verified nodes).
    pub fn record(&mut self, role: &str, meta: Option<MetaFile>) {
        self.resolved.insert(role.to_string(), meta);
    }

    /// The highest version this device trusted for `role` before, if any.
    pub fn floor(&self, role: &str) -> Option<u64> {
        self.floors.get(role).copied()
    }

    /// Raises `role`'s trusted version to `version`; whether it changed.
    pub fn raise_floor(&mut self, role: &str, version: u64) -> bool {
        let f = self.floors.entry(role.to_string()).or_insert(0);
        let raised = version > *f;
        *f = (*f).max(version);
        raised
    }

    /// Every role's highest trusted version.
    pub fn floors(&self) -> &BTreeMap<String, u64> {
        &self.floors
    }
}

impl SnapshotSource {
    /// The snapshot's version (the tree head's version is the snapshot's).
    pub fn version(&self) -> u64 {
        match self {
            SnapshotSource::Full(s) => s.signed.version,
            SnapshotSource::Tree(t) => t.head.signed.version,
        }
    }

    /// What the snapshot says about a targets role (for a tree: once resolved).
    pub fn role_meta(&self, role: &str) -> Option<&MetaFile> {
        match self {
            SnapshotSource::Full(s) => s.signed.role_meta(role),
            SnapshotSource::Tree(t) => t.resolved.get(role).and_then(Option::as_ref),
        }
    }

    /// The signatures of the snapshot, or of the tree's head (both by the snapshot keys).
    pub fn signatures(&self) -> &[crate::tuf::schema::Signature] {
        match self {
            SnapshotSource::Full(s) => &s.signatures,
            SnapshotSource::Tree(t) => &t.head.signatures,
        }
    }

    /// "snapshot v7" or "snapshot tree v7", for messages.
    pub fn describe(&self) -> String {
        match self {
            SnapshotSource::Full(s) => format!("snapshot v{}", s.signed.version),
            SnapshotSource::Tree(t) => format!("{TREE_ROLE} v{}", t.head.signed.version),
        }
    }
}

/// After spec 5.5: root, timestamp and a trusted, unexpired snapshot.
#[derive(Clone, Debug)]
pub struct WithSnapshot {
    root: TrustedRoot,
    timestamp: Signed<Timestamp>,
    snapshot: SnapshotSource,
}

impl WithSnapshot {
    /// The trusted snapshot.
    pub fn snapshot(&self) -> &SnapshotSource {
        &self.snapshot
    }

    /// The tree whose references are still being resolved, if the snapshot is a tree.
    pub fn tree_mut(&mut self) -> Option<&mut TreeView> {
        match &mut self.snapshot {
            SnapshotSource::Tree(t) => Some(t),
            SnapshotSource::Full(_) => None,
        }
    }

    /// What the snapshot says about a targets role, if it lists it.
    pub fn role_meta(&self, role: &str) -> Option<&MetaFile> {
        self.snapshot.role_meta(role)
    }

    /// Whether consistent snapshots are on.
    pub fn consistent_snapshot(&self) -> bool {
        self.root.consistent_snapshot()
    }

    /// Spec 5.6.2–5.6.5: verifies top-level targets bytes against the snapshot (length,
    /// hashes, version), the root's targets keys, and the clock.
    pub fn verify_targets(
        &self,
        bytes: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Verified<Targets>, UpdateError> {
        let snapshot_desc = self.snapshot.describe();
        let meta = self
            .snapshot
            .role_meta("targets")
            .ok_or_else(|| UpdateError::Invalid {
                what: describe("targets", None),
                reason: format!("not listed in {snapshot_desc}"),
            })?;
        check_meta_file("targets", meta, &snapshot_desc, bytes)?;
        let new: Signed<Targets> = self.root.verify_top_level("targets", bytes)?;
        check_role_version("targets", &new, meta, &snapshot_desc)?;
        check_expiry("targets", &new.signed, now)?;
        Ok(Verified(new))
    }

    /// Moves to the complete state with verified top-level targets.
    pub fn with_targets(self, targets: Verified<Targets>, now: DateTime<Utc>) -> TrustedMetadata {
        let mut roles = BTreeMap::new();
        roles.insert("targets".to_string(), targets.0);
        TrustedMetadata {
            root: self.root,
            timestamp: self.timestamp,
            snapshot: self.snapshot,
            targets: roles,
            delegated_bytes: BTreeMap::new(),
            trusted_through: BTreeSet::new(),
            reference_time: now,
        }
    }
}

fn check_role_version(
    role: &str,
    new: &Signed<Targets>,
    meta: &MetaFile,
    snapshot_desc: &str,
) -> Result<(), UpdateError> {
    if new.signed.version != meta.version {
        return Err(UpdateError::Version {
            what: describe(role, Some(new.signed.version)),
            reason: format!("version {} in {snapshot_desc} does not match", meta.version),
        });
    }
    Ok(())
}

/// A complete refresh: root, timestamp, snapshot, top-level targets, and the delegated
/// targets roles loaded so far by target searches.
///
/// A delegated role is trusted *through a delegator*: a role that two roles delegate with
/// different keys or thresholds may meet one delegator's threshold and not the other's.
/// Its bytes are kept, so that reaching it through another delegator verifies them again
/// against that delegator, without fetching the role again.
#[derive(Clone, Debug)]
pub struct TrustedMetadata {
    root: TrustedRoot,
    timestamp: Signed<Timestamp>,
    snapshot: SnapshotSource,
    targets: BTreeMap<String, Signed<Targets>>,
    /// The bytes each delegated role was obtained as in this refresh: the stored copy or the
    /// download it was loaded from, or a download no delegator has accepted yet.
    delegated_bytes: BTreeMap<String, Vec<u8>>,
    /// (role, delegator) pairs: the role met the threshold the delegator gives it.
    trusted_through: BTreeSet<(String, String)>,
    reference_time: DateTime<Utc>,
}

impl TrustedMetadata {
    /// The trusted root.
    pub fn root(&self) -> &Signed<Root> {
        self.root.root()
    }

    /// The trusted timestamp.
    pub fn timestamp(&self) -> &Signed<Timestamp> {
        &self.timestamp
    }

    /// The trusted snapshot: the whole `snapshot.json`, or the snapshot tree.
    pub fn snapshot(&self) -> &SnapshotSource {
        &self.snapshot
    }

    /// The tree whose references are resolved as roles are needed, if the snapshot is a tree.
    pub fn tree_mut(&mut self) -> Option<&mut TreeView> {
        match &mut self.snapshot {
            SnapshotSource::Tree(t) => Some(t),
            SnapshotSource::Full(_) => None,
        }
    }

    /// The trusted top-level targets.
    pub fn targets(&self) -> &Signed<Targets> {
        &self.targets["targets"]
    }

    /// A trusted targets role (top-level or delegated) if it has been loaded. A delegated
    /// role is here once it has been verified through one delegator; whether it is trusted
    /// through a given one is [`TrustedMetadata::is_trusted_through`].
    pub fn role(&self, name: &str) -> Option<&Signed<Targets>> {
        self.targets.get(name)
    }

    /// Whether the delegated role `role` has been verified against the keys and threshold
    /// that `delegator` gives it.
    pub fn is_trusted_through(&self, role: &str, delegator: &str) -> bool {
        self.trusted_through
            .contains(&(role.to_string(), delegator.to_string()))
    }

    /// The fixed update start time of the refresh that produced this set.
    pub fn reference_time(&self) -> DateTime<Utc> {
        self.reference_time
    }

    /// Whether consistent snapshots are on.
    pub fn consistent_snapshot(&self) -> bool {
        self.root.consistent_snapshot()
    }

    /// What the snapshot says about a targets role.
    pub fn role_meta(&self, role: &str) -> Result<&MetaFile, UpdateError> {
        self.snapshot
            .role_meta(role)
            .ok_or_else(|| UpdateError::Invalid {
                what: describe(role, None),
                reason: format!("not listed in {}", self.snapshot.describe()),
            })
    }

    /// Verifies a delegated targets role `role`, delegated by the loaded role `parent`:
    /// length, hashes and version from the snapshot, threshold of the keys `parent`
    /// delegates to it, and the clock (the refresh's fixed start time).
    pub fn verify_delegated(
        &self,
        role: &str,
        parent: &str,
        bytes: &[u8],
    ) -> Result<Verified<Targets>, UpdateError> {
        let meta = self.role_meta(role)?;
        let delegator = self
            .targets
            .get(parent)
            .ok_or_else(|| UpdateError::Invalid {
                what: describe(role, None),
                reason: format!("delegating role {parent:?} is not loaded"),
            })?;
        let delegations = delegator
            .signed
            .delegations
            .as_ref()
            .ok_or_else(|| not_delegated(role, parent))?;
        let (keyids, threshold) = delegations
            .role_keys(role)
            .ok_or_else(|| not_delegated(role, parent))?;
        let snapshot_desc = self.snapshot.describe();
        check_meta_file(role, meta, &snapshot_desc, bytes)?;
        let env = parse::<Targets>(role, bytes)?;
        env.check_threshold(
            &format!(
                "keys delegated by {}",
                describe(parent, Some(delegator.signed.version))
            ),
            keyids,
            threshold,
            &delegations.keys,
        )?;
        let (new, _) = env.into_typed::<Targets>()?;
        check_role_version(role, &new, meta, &snapshot_desc)?;
        check_expiry(role, &new.signed, self.reference_time)?;
        Ok(Verified(new))
    }

    /// Adds a delegated role verified through `parent` ([`TrustedMetadata::verify_delegated`]
    /// over `bytes`), keeping `bytes` so that another delegator can verify them
    /// ([`TrustedMetadata::trust_loaded_through`]).
    pub fn insert_delegated(
        &mut self,
        role: &str,
        parent: &str,
        bytes: Vec<u8>,
        verified: Verified<Targets>,
    ) {
        self.targets.insert(role.to_string(), verified.0);
        self.delegated_bytes.insert(role.to_string(), bytes);
        self.trusted_through
            .insert((role.to_string(), parent.to_string()));
    }

    /// Keeps the downloaded `bytes` of a delegated role that did not verify through the
    /// delegator that asked for it, if they are the file the snapshot names (the length and
    /// hashes it pins, when it pins them): another delegator then verifies these bytes
    /// instead of fetching the role again. The role stays untrusted.
    pub fn keep_downloaded(&mut self, role: &str, bytes: Vec<u8>) {
        let pinned = self
            .snapshot
            .role_meta(role)
            .is_some_and(|meta| verify_bytes(&bytes, meta.length, meta.hashes.as_ref()).is_ok());
        if pinned && !self.delegated_bytes.contains_key(role) {
            self.delegated_bytes.insert(role.to_string(), bytes);
        }
    }

    /// The bytes kept for a delegated role in this refresh: the stored copy or the download
    /// it was loaded from, or a download no delegator has accepted yet.
    pub fn delegated_bytes(&self, role: &str) -> Option<&[u8]> {
        self.delegated_bytes.get(role).map(Vec::as_slice)
    }

    /// For a delegated role whose bytes this refresh already holds: makes sure it is trusted
    /// through `parent`, verifying the kept bytes against the keys and threshold `parent`
    /// gives it ([`TrustedMetadata::verify_delegated`]) unless that was done before.
    /// `Ok(true)`: trusted through `parent`; `Ok(false)`: no bytes held yet; an error: the
    /// bytes do not verify through `parent`, and the role stays untrusted through it (and
    /// trusted through the delegators it did verify through).
    pub fn trust_loaded_through(&mut self, role: &str, parent: &str) -> Result<bool, UpdateError> {
        if self.is_trusted_through(role, parent) {
            return Ok(true);
        }
        let Some(bytes) = self.delegated_bytes.get(role) else {
            return Ok(false);
        };
        let verified = self.verify_delegated(role, parent, bytes)?;
        self.targets.entry(role.to_string()).or_insert(verified.0);
        self.trusted_through
            .insert((role.to_string(), parent.to_string()));
        Ok(true)
    }
}

fn not_delegated(role: &str, parent: &str) -> UpdateError {
    UpdateError::Invalid {
        what: describe(role, None),
        reason: format!("{} does not delegate to it", describe(parent, None)),
    }
}

//! The TUF client workflow (spec §5) against the in-memory repository simulator: every step and every attack.

mod support;

use std::path::Path;

use chrono::{Duration, Utc};
use petrel_client::fetch::FetchError;
use petrel_client::tuf::keys::KeySource;
use petrel_client::tuf::schema::{DelegatedRole, Hashes, MetaFile, Metadata, Root, Unrecognized};
use petrel_client::tuf::updater::{Limits, TargetInfo, UpdateError, Updater};
use support::*;
use tempfile::TempDir;

/// A simulator, a metadata dir and an updater that has done a first successful refresh.
struct Fixture {
    sim: RepoSim,
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self::with(RepoSim::new())
    }

    fn with(sim: RepoSim) -> Self {
        let f = Fixture {
            sim,
            dir: TempDir::new().unwrap(),
        };
        f.updater().refresh().expect("initial refresh");
        f.sim.transport.clear_log();
        f
    }

    fn md_dir(&self) -> &Path {
        self.dir.path()
    }

    fn updater(&self) -> Updater {
        self.sim.updater(self.dir.path())
    }

    fn refresh(&self) -> Result<Updater, UpdateError> {
        let mut u = self.updater();
        u.refresh()?;
        Ok(u)
    }

    /// Runs a refresh that must fail, and proves the trusted files of the failing step and
    /// the steps after it did not change (`unchanged`; empty = every file). Steps before
    /// the failing one may legitimately persist what they verified.
    fn refresh_fails(&self, unchanged: &[&str]) -> UpdateError {
        let before = dir_state(self.md_dir());
        let err = self.refresh().expect_err("refresh must fail");
        let after = dir_state(self.md_dir());
        if unchanged.is_empty() {
            assert_eq!(
                after, before,
                "a failed refresh changed trusted metadata ({err})"
            );
        }
        for f in unchanged {
            assert_eq!(after.get(*f), before.get(*f), "{f} changed ({err})");
        }
        err
    }

    fn stored_version<T: Metadata>(&self, file: &str) -> u64 {
        let bytes = std::fs::read(self.md_dir().join(file)).unwrap();
        petrel_client::tuf::schema::Signed::<T>::from_bytes(&bytes)
            .unwrap()
            .signed
            .version()
    }
}

// ---------------------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------------------

#[test]
fn first_refresh_persists_exact_verified_bytes_under_unversioned_names() {
    let mut sim = RepoSim::new();
    sim.add_target("targets", "a.txt", b"A");
    sim.targets.version += 1;
    sim.commit();
    let dir = TempDir::new().unwrap();
    sim.updater(dir.path()).refresh().unwrap();
    let state = dir_state(dir.path());
    let names: Vec<&str> = state.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    let stored = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    assert_eq!(stored("root.json"), sim.root_history[0]);
    assert_eq!(
        stored("timestamp.json"),
        sim.transport.get(&sim.md("timestamp.json")).unwrap()
    );
    assert_eq!(
        stored("snapshot.json"),
        sim.transport.get(&sim.snapshot_url()).unwrap()
    );
    assert_eq!(
        stored("targets.json"),
        sim.transport.get(&sim.role_url("targets")).unwrap()
    );
}

#[test]
fn refresh_uses_consistent_snapshot_urls() {
    let sim = RepoSim::new();
    let dir = TempDir::new().unwrap();
    sim.updater(dir.path()).refresh().unwrap();
    assert_eq!(
        requests(&sim),
        [
            "metadata/2.root.json",
            "metadata/timestamp.json",
            "metadata/1.snapshot.json",
            "metadata/1.targets.json"
        ]
    );
}

#[test]
fn refresh_uses_plain_names_without_consistent_snapshots() {
    let mut sim = RepoSim::new();
    sim.root.consistent_snapshot = Some(false);
    sim.bump_root();
    sim.publish();
    let dir = TempDir::new().unwrap();
    sim.transport.clear_log();
    sim.updater(dir.path()).refresh().unwrap();
    assert_eq!(
        requests(&sim),
        [
            "metadata/2.root.json",
            "metadata/3.root.json",
            "metadata/timestamp.json",
            "metadata/snapshot.json",
            "metadata/targets.json"
        ]
    );
}

#[test]
fn refresh_when_nothing_changed_fetches_only_the_next_root_probe_and_timestamp() {
    let f = Fixture::new();
    // A new updater (e.g. after a reboot) starts from the files on disk.
    f.refresh().unwrap();
    assert_eq!(
        requests(&f.sim),
        ["metadata/2.root.json", "metadata/timestamp.json"]
    );
    // The same updater refreshing again.
    let mut u = f.updater();
    u.refresh().unwrap();
    f.sim.transport.clear_log();
    u.refresh().unwrap();
    assert_eq!(
        requests(&f.sim),
        ["metadata/2.root.json", "metadata/timestamp.json"]
    );
}

#[test]
fn new_release_fetches_timestamp_snapshot_and_changed_targets_only() {
    let mut f = Fixture::new();
    f.sim.delegate("targets", "vendor", &["apps/*"], false);
    f.sim.targets.version += 1;
    f.sim.commit();
    f.refresh().unwrap();
    f.sim.transport.clear_log();
    f.sim.add_target("vendor", "apps/x", b"x");
    f.sim.role_mut("vendor").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    assert_eq!(
        requests(&f.sim),
        [
            "metadata/2.root.json",
            "metadata/timestamp.json",
            "metadata/3.snapshot.json"
        ],
        "top-level targets did not change, so it is not downloaded again"
    );
    assert!(u.get_target_info("apps/x").unwrap().is_some());
}

#[test]
fn init_refuses_a_root_not_signed_by_its_own_keys() {
    let sim = RepoSim::new();
    let stranger = new_key();
    let bytes = sign_with(&[&stranger], &sim.root);
    let dir = TempDir::new().unwrap();
    let err = Updater::init_trusted_root(dir.path(), &bytes).unwrap_err();
    assert!(matches!(err, UpdateError::Signature { .. }), "{err}");
    assert!(!dir.path().join("root.json").exists());
}

#[test]
fn updater_without_trusted_root_explains_how_to_fix_it() {
    let sim = RepoSim::new();
    let dir = TempDir::new().unwrap();
    let err = Updater::new(sim.config(), sim.transport.clone(), dir.path()).unwrap_err();
    assert!(err.to_string().contains("init"), "{err}");
}

#[test]
fn target_operations_before_a_refresh_are_refused() {
    let mut f = Fixture::new();
    f.sim.add_target("targets", "a.txt", b"A");
    f.sim.targets.version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    let info = u.get_target_info("a.txt").unwrap().unwrap();
    let fresh = f.updater();
    let err = fresh
        .download_target(&info, &f.md_dir().join("out"))
        .unwrap_err();
    assert!(matches!(err, UpdateError::NotRefreshed), "{err}");
}

// ---------------------------------------------------------------------------------------
// Root (5.3)
// ---------------------------------------------------------------------------------------

#[test]
fn root_rotation_follows_the_chain_to_the_latest_version() {
    let f = Fixture::new();
    let mut sim = f.sim;
    sim.rotate_top_level_key("root");
    sim.rotate_top_level_key("root");
    sim.bump_root();
    let f = Fixture { sim, dir: f.dir };
    f.refresh().unwrap();
    assert_eq!(f.stored_version::<Root>("root.json"), 4);
    assert_eq!(
        std::fs::read(f.md_dir().join("root.json")).unwrap(),
        f.sim.root_history[3]
    );
}

#[test]
fn new_root_must_be_signed_by_a_threshold_of_the_old_root_keys() {
    let mut f = Fixture::new();
    // Root v2 names a new root key and is signed only by it.
    let new = new_key();
    f.sim.add_top_level_key("root", &new);
    f.sim.root.roles.get_mut("root").unwrap().keyids = vec![new.key_id().clone()];
    f.sim.signers.insert("root".into(), vec![new.clone()]);
    f.sim.bump_root();
    let err = f.refresh_fails(&[]);
    assert!(matches!(err, UpdateError::Signature { .. }), "{err}");
    assert!(err.to_string().contains("root v2"), "{err}");
    assert!(err.to_string().contains("trusted root v1"), "{err}");
}

#[test]
fn new_root_must_be_signed_by_a_threshold_of_its_own_keys() {
    let mut f = Fixture::new();
    let new = new_key();
    f.sim.add_top_level_key("root", &new);
    f.sim.root.roles.get_mut("root").unwrap().keyids = vec![new.key_id().clone()];
    // Signed by the old key only.
    f.sim.bump_root();
    let err = f.refresh_fails(&[]);
    assert!(matches!(err, UpdateError::Signature { .. }), "{err}");
    assert!(err.to_string().contains("new root v2"), "{err}");
    // Fixed: v2 signed by old and new keys.
    let old = f.sim.signers["root"][0].clone();
    let fixed = sign_with(&[&old, &new], &f.sim.root);
    f.sim.transport.insert(f.sim.md("2.root.json"), fixed);
    f.refresh().unwrap();
    assert_eq!(f.stored_version::<Root>("root.json"), 2);
}

#[test]
fn new_root_version_must_be_exactly_n_plus_one() {
    let f = Fixture::new();
    let mut r = f.sim.root.clone();
    r.version = 3;
    f.sim
        .transport
        .insert(f.sim.md("2.root.json"), f.sim.sign("root", &r));
    let err = f.refresh_fails(&[]);
    assert!(matches!(err, UpdateError::Version { .. }), "{err}");
    assert!(err.to_string().contains("exactly 2"), "{err}");
}

#[test]
fn root_chain_download_count_is_bounded() {
    let mut f = Fixture::new();
    for _ in 0..5 {
        f.sim.bump_root();
    }
    let mut config = f.sim.config();
    config.limits = Limits {
        max_root_rotations: 3,
        ..Limits::default()
    };
    f.sim.updater_with(f.md_dir(), config).refresh().unwrap();
    assert_eq!(f.stored_version::<Root>("root.json"), 4);
    let roots = requests(&f.sim)
        .iter()
        .filter(|r| r.ends_with(".root.json"))
        .count();
    assert_eq!(roots, 3);
    // The next refresh continues the chain.
    f.refresh().unwrap();
    assert_eq!(f.stored_version::<Root>("root.json"), 6);
}

#[test]
fn expired_final_root_is_a_freeze_attack() {
    let mut f = Fixture::new();
    f.sim.root.expires = in_days(-1);
    f.sim.bump_root();
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Expired { .. }), "{err}");
    assert!(err.to_string().starts_with("root v2: expired at"), "{err}");
}

#[test]
fn expired_intermediate_root_does_not_matter() {
    let mut f = Fixture::new();
    f.sim.root.expires = in_days(-1);
    f.sim.bump_root();
    f.sim.root.expires = in_days(100);
    f.sim.bump_root();
    f.refresh().unwrap();
    assert_eq!(f.stored_version::<Root>("root.json"), 3);
}

#[test]
fn root_with_unsupported_spec_major_version_is_refused() {
    let mut f = Fixture::new();
    f.sim.root.spec_version = "2.0.0".into();
    f.sim.bump_root();
    let err = f.refresh_fails(&[]);
    assert!(matches!(err, UpdateError::UnsupportedSpec { .. }), "{err}");
}

#[test]
fn oversized_root_is_refused_without_reading_it_all() {
    let f = Fixture::new();
    f.sim
        .transport
        .insert(f.sim.md("2.root.json"), vec![b' '; 600 * 1024]);
    let err = f.refresh_fails(&[]);
    assert!(
        matches!(err, UpdateError::Fetch { source: FetchError::TooLarge { max_len, .. }, .. } if max_len == 512 * 1024),
        "{err}"
    );
}

#[test]
fn update_start_time_comes_from_the_injected_clock() {
    let f = Fixture::new();
    let future = Utc::now() + Duration::days(400);
    let mut u = f.updater().with_clock(move || future);
    let err = u.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("root v1"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Timestamp (5.4)
// ---------------------------------------------------------------------------------------

#[test]
fn timestamp_rollback_is_refused() {
    let mut f = Fixture::new();
    f.sim.timestamp.version = 5;
    f.sim.publish();
    f.refresh().unwrap();
    f.sim.timestamp.version = 4;
    f.sim.publish();
    let err = f.refresh_fails(&[]);
    assert!(matches!(err, UpdateError::Rollback { .. }), "{err}");
    assert!(err.to_string().contains("timestamp v4"), "{err}");
}

#[test]
fn timestamp_must_not_lower_the_snapshot_version() {
    let mut f = Fixture::new();
    f.sim.commit(); // snapshot v2, timestamp v2
    f.refresh().unwrap();
    f.sim.snapshot.version = 1;
    f.sim.timestamp.version = 3;
    f.sim.publish();
    let err = f.refresh_fails(&[]);
    assert!(matches!(err, UpdateError::Rollback { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("snapshot version 1 is lower than 2"),
        "{err}"
    );
}

#[test]
fn expired_timestamp_is_a_freeze_attack() {
    let mut f = Fixture::new();
    f.sim.timestamp.expires = in_days(-1);
    f.sim.timestamp.version += 1;
    f.sim.publish();
    let err = f.refresh_fails(&[]);
    assert!(matches!(err, UpdateError::Expired { .. }), "{err}");
    assert!(
        err.to_string().starts_with("timestamp v2: expired"),
        "{err}"
    );
}

#[test]
fn trusted_timestamp_that_expired_is_refused_even_when_unchanged() {
    let f = Fixture::new();
    let later = Utc::now() + Duration::days(2); // timestamp expires in 1 day, root in 365
    let mut u = f.updater().with_clock(move || later);
    let err = u.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Expired { .. }), "{err}");
    assert!(err.to_string().starts_with("timestamp v1"), "{err}");
}

#[test]
fn timestamp_signed_by_the_wrong_key_is_refused() {
    let mut f = Fixture::new();
    f.sim.signers.insert("timestamp".into(), vec![new_key()]);
    f.sim.timestamp.version += 1;
    f.sim.publish();
    let err = f.refresh_fails(&[]);
    assert!(matches!(err, UpdateError::Signature { .. }), "{err}");
}

#[test]
fn repeated_signatures_by_one_key_do_not_meet_a_threshold_of_two() {
    let mut f = Fixture::new();
    let second = new_key();
    f.sim.add_top_level_key("timestamp", &second);
    f.sim.root.roles.get_mut("timestamp").unwrap().threshold = 2;
    f.sim.bump_root();
    let k = f.sim.signers["timestamp"][0].clone();
    f.sim.signers.insert("timestamp".into(), vec![k.clone(), k]);
    f.sim.timestamp.version += 1;
    f.sim.publish();
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Signature { .. }), "{err}");
    // With both keys it works.
    let first = f.sim.signers["timestamp"][0].clone();
    f.sim
        .signers
        .insert("timestamp".into(), vec![first, second]);
    f.sim.publish();
    f.refresh().unwrap();
}

/// Makes `role` sign with its first key twice: the same valid signature, listed twice.
fn sign_twice(sim: &mut RepoSim, role: &str) -> String {
    let k = sim.signers[role][0].clone();
    sim.signers.insert(role.into(), vec![k.clone(), k.clone()]);
    k.key_id().0.clone()
}

/// `None` if `result` is the refusal of a signature list repeating `keyid`, for the role
/// and version `what`; `Some(case)` if the metadata was accepted.
fn accepted_despite_repeated_keyid(
    case: &str,
    what: &str,
    keyid: &str,
    result: Result<(), UpdateError>,
) -> Option<String> {
    let Err(err) = result else {
        return Some(case.to_string());
    };
    let msg = err.to_string();
    assert!(
        matches!(err, UpdateError::Signature { .. }),
        "{case}: {msg}"
    );
    assert!(msg.starts_with(what), "{case}: {msg}");
    assert!(msg.contains("repeats a key id"), "{case}: {msg}");
    assert!(msg.contains(keyid), "{case}: the key id is named: {msg}");
    None
}

#[test]
fn a_signature_list_repeating_a_key_id_is_rejected_for_every_role() {
    // Every role has threshold 1, so the first of the two signatures alone would meet it:
    // only the repeated key id is wrong.
    let mut accepted = Vec::new();

    // Root rotation: root v2 signed twice by the root key, which is both the trusted root's
    // and the new root's root key.
    let mut f = Fixture::new();
    let keyid = sign_twice(&mut f.sim, "root");
    f.sim.bump_root();
    let result = f.refresh().map(|_| ());
    accepted.extend(accepted_despite_repeated_keyid(
        "root rotation",
        "root v2: ",
        &keyid,
        result,
    ));
    if accepted.is_empty() {
        assert_eq!(f.stored_version::<Root>("root.json"), 1, "root v1 is kept");
    }

    // The trusted root itself, checked against its own root keys when installed.
    let mut sim = RepoSim::new();
    let keyid = sign_twice(&mut sim, "root");
    let bytes = sim.sign("root", &sim.root);
    let dir = TempDir::new().unwrap();
    let result = Updater::init_trusted_root(dir.path(), &bytes);
    let case = accepted_despite_repeated_keyid("trusted root", "root v1: ", &keyid, result);
    if case.is_none() {
        assert!(!dir.path().join("root.json").exists(), "nothing installed");
    }
    accepted.extend(case);

    // Timestamp, snapshot and top-level targets: a new release signed twice by the role's key.
    for role in ["timestamp", "snapshot", "targets"] {
        let mut f = Fixture::new();
        let keyid = sign_twice(&mut f.sim, role);
        match role {
            "timestamp" => {
                f.sim.timestamp.version += 1;
                f.sim.publish();
            }
            "snapshot" => f.sim.commit(),
            _ => {
                f.sim.targets.version += 1;
                f.sim.commit();
            }
        }
        let file = f.md_dir().join(format!("{role}.json"));
        let before = std::fs::read(&file).unwrap();
        let result = f.refresh().map(|_| ());
        let case = accepted_despite_repeated_keyid(role, &format!("{role} v2: "), &keyid, result);
        if case.is_none() {
            assert_eq!(
                std::fs::read(&file).unwrap(),
                before,
                "{role}.json unchanged"
            );
        }
        accepted.extend(case);
    }

    // A delegated role.
    let mut f = delegation_fixture(&[("targets", "A", &["*"], false)]);
    f.sim.add_target("A", "f", b"x");
    f.sim.role_mut("A").version += 1;
    let keyid = sign_twice(&mut f.sim, "A");
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    let result = u.get_target_info("f").map(|_| ());
    let case = accepted_despite_repeated_keyid(
        "delegated role",
        "targets role \"A\" v2: ",
        &keyid,
        result,
    );
    if case.is_none() {
        assert!(!f.md_dir().join("A.json").exists(), "A is not stored");
    }
    accepted.extend(case);

    assert!(
        accepted.is_empty(),
        "metadata whose signature list repeats a key id was accepted: {accepted:?}"
    );
}

#[test]
fn oversized_timestamp_is_refused() {
    let f = Fixture::new();
    f.sim
        .transport
        .insert(f.sim.md("timestamp.json"), vec![b' '; 16 * 1024 + 1]);
    let err = f.refresh_fails(&[]);
    assert!(
        matches!(
            err,
            UpdateError::Fetch {
                source: FetchError::TooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn malformed_timestamp_is_refused_with_the_role_named() {
    let f = Fixture::new();
    f.sim
        .transport
        .insert(f.sim.md("timestamp.json"), b"{\"signed\": 1".to_vec());
    let err = f.refresh_fails(&[]);
    assert!(matches!(err, UpdateError::Schema { .. }), "{err}");
    assert!(err.to_string().starts_with("timestamp"), "{err}");
}

#[test]
fn metadata_of_the_wrong_type_is_refused() {
    let f = Fixture::new();
    let snap = f.sim.transport.get(&f.sim.snapshot_url()).unwrap();
    f.sim.transport.insert(f.sim.md("timestamp.json"), snap);
    let err = f.refresh_fails(&[]);
    assert!(
        err.to_string().contains("expected _type \"timestamp\""),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Snapshot (5.5)
// ---------------------------------------------------------------------------------------

#[test]
fn snapshot_version_must_match_timestamp_mix_and_match() {
    let mut f = Fixture::new();
    f.sim.commit(); // snapshot v2 expected by timestamp v2
                    // Serve a validly signed snapshot v3 at the v2 URL.
    let mut other = f.sim.snapshot.clone();
    other.version = 3;
    f.sim
        .transport
        .insert(f.sim.md("2.snapshot.json"), f.sim.sign("snapshot", &other));
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Version { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "snapshot v3: version 2 in timestamp v2 does not match"
    );
}

#[test]
fn snapshot_must_match_hashes_and_length_pinned_by_timestamp() {
    let mut sim = RepoSim::new();
    sim.pin_snapshot = true;
    sim.publish();
    let mut f = Fixture::with(sim);
    f.sim.commit();
    // Same version, validly signed, different bytes.
    let mut other = f.sim.snapshot.clone();
    other.expires = in_days(8); // same length, different bytes
    let bytes = f.sim.sign("snapshot", &other);
    f.sim.transport.insert(f.sim.snapshot_url(), bytes);
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::LengthOrHash { .. }), "{err}");
    assert!(err.to_string().contains("snapshot v2"), "{err}");
    // Trusted snapshot unchanged; fixing the repository fixes the client.
    assert_eq!(
        f.stored_version::<petrel_client::tuf::schema::Snapshot>("snapshot.json"),
        1
    );
    f.sim.publish();
    f.refresh().unwrap();
    assert_eq!(
        f.stored_version::<petrel_client::tuf::schema::Snapshot>("snapshot.json"),
        2
    );
}

#[test]
fn snapshot_may_not_lower_a_targets_version() {
    let mut f = Fixture::new();
    f.sim.targets.version = 3;
    f.sim.commit();
    f.refresh().unwrap();
    f.sim.targets.version = 2;
    f.sim.commit();
    let err = f.refresh_fails(&["snapshot.json", "targets.json"]);
    assert!(matches!(err, UpdateError::Rollback { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("targets.json version 2 is lower than 3"),
        "{err}"
    );
}

#[test]
fn snapshot_may_not_drop_a_role() {
    let mut f = Fixture::new();
    f.sim.delegate("targets", "vendor", &["apps/*"], false);
    f.sim.targets.version += 1;
    f.sim.commit();
    f.refresh().unwrap();
    f.sim.delegated.clear();
    f.sim.targets.delegations = None;
    f.sim.snapshot.meta.remove("vendor.json");
    f.sim.targets.version += 1;
    f.sim.commit();
    let err = f.refresh_fails(&["snapshot.json", "targets.json"]);
    assert!(matches!(err, UpdateError::Rollback { .. }), "{err}");
    assert!(err.to_string().contains("vendor.json"), "{err}");
}

#[test]
fn expired_snapshot_is_a_freeze_attack() {
    let mut f = Fixture::new();
    f.sim.snapshot.expires = in_days(-1);
    f.sim.commit();
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Expired { .. }), "{err}");
    assert!(err.to_string().starts_with("snapshot v2: expired"), "{err}");
}

#[test]
fn stored_snapshot_that_expired_is_downloaded_again_and_refused() {
    let f = Fixture::new();
    // Snapshot expires in 7 days, timestamp in 1: re-sign a timestamp valid for longer.
    let mut sim = f.sim;
    sim.timestamp.expires = in_days(30);
    sim.timestamp.version += 1;
    sim.publish();
    let f = Fixture { sim, dir: f.dir };
    let later = Utc::now() + Duration::days(8);
    let err = f.updater().with_clock(move || later).refresh().unwrap_err();
    assert!(err.to_string().starts_with("snapshot v1: expired"), "{err}");
    assert!(requests(&f.sim).contains(&"metadata/1.snapshot.json".to_string()));
}

#[test]
fn snapshot_signed_by_the_wrong_key_is_refused() {
    let mut f = Fixture::new();
    f.sim.signers.insert("snapshot".into(), vec![new_key()]);
    f.sim.commit();
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Signature { .. }), "{err}");
    assert!(err.to_string().contains("snapshot v2"), "{err}");
}

#[test]
fn snapshot_larger_than_the_pinned_length_is_not_read() {
    let mut sim = RepoSim::new();
    sim.pin_snapshot = true;
    sim.publish();
    let mut f = Fixture::with(sim);
    f.sim.commit();
    let pinned = f.sim.timestamp.snapshot_meta().length.unwrap();
    let mut big = f.sim.transport.get(&f.sim.snapshot_url()).unwrap();
    big.extend(vec![b' '; 1000]);
    f.sim.transport.insert(f.sim.snapshot_url(), big);
    let err = f.refresh().unwrap_err();
    assert!(
        matches!(err, UpdateError::Fetch { source: FetchError::TooLarge { max_len, .. }, .. } if max_len == pinned),
        "{err}"
    );
}

#[test]
fn unpinned_snapshot_is_bounded_by_the_configured_maximum() {
    let mut f = Fixture::new();
    f.sim.commit();
    f.sim
        .transport
        .insert(f.sim.snapshot_url(), vec![b' '; 3000]);
    let mut config = f.sim.config();
    config.limits.snapshot_max_length = 2048;
    let err = f
        .sim
        .updater_with(f.md_dir(), config)
        .refresh()
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Fetch {
                source: FetchError::TooLarge { max_len: 2048, .. },
                ..
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Targets (5.6)
// ---------------------------------------------------------------------------------------

#[test]
fn targets_version_must_match_snapshot() {
    let mut f = Fixture::new();
    f.sim.targets.version = 2;
    f.sim.commit();
    let mut other = f.sim.targets.clone();
    other.version = 5;
    f.sim
        .transport
        .insert(f.sim.md("2.targets.json"), f.sim.sign("targets", &other));
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Version { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "targets v5: version 2 in snapshot v2 does not match"
    );
}

#[test]
fn targets_must_match_hashes_pinned_by_snapshot() {
    let mut sim = RepoSim::new();
    sim.pin_targets = true;
    sim.publish();
    let mut f = Fixture::with(sim);
    f.sim.targets.version += 1;
    f.sim.commit();
    let mut other = f.sim.targets.clone();
    other.expires = in_days(31); // same length, different bytes
    f.sim
        .transport
        .insert(f.sim.role_url("targets"), f.sim.sign("targets", &other));
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::LengthOrHash { .. }), "{err}");
}

#[test]
fn expired_targets_is_a_freeze_attack() {
    let mut f = Fixture::new();
    f.sim.targets.expires = in_days(-1);
    f.sim.targets.version += 1;
    f.sim.commit();
    let err = f.refresh().unwrap_err();
    assert!(err.to_string().starts_with("targets v2: expired"), "{err}");
}

#[test]
fn targets_signed_by_the_wrong_key_is_refused() {
    let mut f = Fixture::new();
    f.sim.signers.insert("targets".into(), vec![new_key()]);
    f.sim.targets.version += 1;
    f.sim.commit();
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Signature { .. }), "{err}");
}

#[test]
fn missing_targets_file_is_reported_with_its_url() {
    let mut f = Fixture::new();
    f.sim.targets.version += 1;
    f.sim.commit();
    f.sim.transport.remove(&f.sim.role_url("targets"));
    let err = f.refresh().unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Fetch {
                source: FetchError::NotFound { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("2.targets.json"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Fast-forward attack recovery (5.3.11)
// ---------------------------------------------------------------------------------------

#[test]
fn timestamp_key_rotation_deletes_a_fast_forwarded_timestamp() {
    let mut f = Fixture::new();
    // Attack: a compromised timestamp key signs a huge version.
    f.sim.timestamp.version = 1000;
    f.sim.publish();
    f.refresh().unwrap();
    // Recovery: the repository adds a new timestamp key (the old one still verifies the
    // stored v1000, so only the explicit deletion helps) and restarts at version 1.
    let k = new_key();
    f.sim.add_top_level_key("timestamp", &k);
    f.sim.bump_root();
    f.sim.signers.insert("timestamp".into(), vec![k]);
    f.sim.timestamp.version = 1;
    f.sim.publish();
    f.refresh().unwrap();
    assert_eq!(
        f.stored_version::<petrel_client::tuf::schema::Timestamp>("timestamp.json"),
        1
    );
}

#[test]
fn without_key_rotation_a_fast_forwarded_timestamp_blocks_updates() {
    // The counterpart of the recovery test: the rollback check itself stays in force.
    let mut f = Fixture::new();
    f.sim.timestamp.version = 1000;
    f.sim.publish();
    f.refresh().unwrap();
    f.sim.bump_root(); // root changes, timestamp keys do not
    f.sim.timestamp.version = 1;
    f.sim.publish();
    let err = f.refresh().unwrap_err();
    assert!(matches!(err, UpdateError::Rollback { .. }), "{err}");
}

#[test]
fn snapshot_key_rotation_recovers_from_fast_forwarded_snapshot_and_targets() {
    let mut f = Fixture::new();
    f.sim.snapshot.version = 500;
    f.sim.targets.version = 700;
    f.sim.timestamp.version += 1;
    f.sim.publish();
    f.refresh().unwrap();
    // Recovery: a new snapshot key is added (the old one would still verify the stored
    // snapshot, so only the explicit deletion helps) and versions go back to sane numbers.
    let k = new_key();
    f.sim.add_top_level_key("snapshot", &k);
    f.sim.bump_root();
    f.sim.signers.insert("snapshot".into(), vec![k]);
    f.sim.snapshot.version = 2;
    f.sim.targets.version = 2;
    f.sim.timestamp.version = 2000;
    f.sim.publish();
    assert!(
        f.md_dir().join("snapshot.json").exists(),
        "the fast-forwarded snapshot is still trusted before the refresh"
    );
    f.refresh().unwrap();
    assert_eq!(
        f.stored_version::<petrel_client::tuf::schema::Snapshot>("snapshot.json"),
        2
    );
    assert_eq!(
        f.stored_version::<petrel_client::tuf::schema::Targets>("targets.json"),
        2
    );
}

// ---------------------------------------------------------------------------------------
// Failures are harmless (spec §5 preamble)
// ---------------------------------------------------------------------------------------

#[test]
fn each_failed_step_leaves_trusted_files_unchanged_and_the_next_refresh_succeeds() {
    type Break = fn(&mut RepoSim);
    // (what breaks, how, files that must not change)
    let cases: Vec<(&str, Break, &[&str])> = vec![
        (
            "bad root signature",
            |s| {
                s.root.version += 1;
                let stranger = new_key();
                let b = sign_with(&[&stranger], &s.root);
                s.root.version -= 1;
                s.transport.insert(s.md("2.root.json"), b);
            },
            &[
                "root.json",
                "timestamp.json",
                "snapshot.json",
                "targets.json",
            ],
        ),
        (
            "timestamp missing",
            |s| {
                s.transport.remove(&s.md("timestamp.json"));
            },
            &[
                "root.json",
                "timestamp.json",
                "snapshot.json",
                "targets.json",
            ],
        ),
        (
            "snapshot tampered",
            |s| {
                let b = s.transport.get(&s.snapshot_url()).unwrap();
                let mut m = petrel_client::tuf::schema::Signed::<
                    petrel_client::tuf::schema::Snapshot,
                >::from_bytes(&b)
                .unwrap();
                m.signed.expires = in_days(100);
                s.transport
                    .insert(s.snapshot_url(), m.to_file_bytes().unwrap());
            },
            &["snapshot.json", "targets.json"],
        ),
        (
            "targets truncated",
            |s| {
                let b = s.transport.get(&s.role_url("targets")).unwrap();
                s.transport
                    .insert(s.role_url("targets"), b[..b.len() / 2].to_vec());
            },
            &["targets.json"],
        ),
    ];
    for (name, break_it, unchanged) in cases {
        let mut f = Fixture::new();
        f.sim.targets.version += 1;
        f.sim.commit();
        break_it(&mut f.sim);
        let before = dir_state(f.md_dir());
        let mut u = f.updater();
        let err = u.refresh().expect_err(name);
        let after = dir_state(f.md_dir());
        for file in unchanged {
            assert_eq!(
                after.get(*file),
                before.get(*file),
                "{name}: {file} changed ({err})"
            );
        }
        assert!(
            u.trusted().is_none(),
            "{name}: no trusted set after a failure"
        );
        // Repair the repository: the same client recovers.
        f.sim.transport.remove(&f.sim.md("2.root.json"));
        f.sim.publish();
        u.refresh()
            .unwrap_or_else(|e| panic!("{name}: recovery failed: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// Delegations (5.6.7)
// ---------------------------------------------------------------------------------------

/// Builds a repository with the delegation tree `spec`: (parent, child, paths, terminating).
fn delegation_fixture(spec: &[(&str, &str, &[&str], bool)]) -> Fixture {
    let mut sim = RepoSim::new();
    for (parent, child, paths, terminating) in spec {
        sim.delegate(parent, child, paths, *terminating);
    }
    sim.targets.version += 1;
    sim.commit();
    Fixture::with(sim)
}

fn role_requests(f: &Fixture) -> Vec<String> {
    requests(&f.sim)
        .into_iter()
        .filter(|r| {
            let name = r.trim_start_matches("metadata/");
            !name.contains("root.json")
                && !name.contains("timestamp.json")
                && !name.contains("snapshot.json")
                && !name.ends_with(".targets.json")
        })
        .map(|r| {
            let name = r.trim_start_matches("metadata/").trim_end_matches(".json");
            name.split_once('.').map_or(name, |(_, n)| n).to_string()
        })
        .collect()
}

#[test]
fn delegations_are_searched_pre_order_depth_first_in_listed_order() {
    let mut f = delegation_fixture(&[
        ("targets", "A", &["*"], false),
        ("targets", "B", &["*"], false),
        ("A", "A1", &["*"], false),
        ("A", "A2", &["*"], false),
        ("A1", "A1a", &["*"], false),
    ]);
    f.sim.add_target("B", "file.txt", b"from B");
    f.sim.add_target("A2", "other.txt", b"x");
    for r in ["A", "B", "A1", "A2", "A1a"] {
        f.sim.role_mut(r).version += 1;
    }
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    let info = u.get_target_info("file.txt").unwrap().unwrap();
    assert_eq!(info.role, "B");
    assert_eq!(info.delegation_chain, ["targets", "B"]);
    assert_eq!(role_requests(&f), ["A", "A1", "A1a", "A2", "B"]);
    // A second search reuses loaded roles: no requests.
    f.sim.transport.clear_log();
    assert!(u.get_target_info("other.txt").unwrap().is_some());
    assert!(requests(&f.sim).is_empty());
}

#[test]
fn the_first_role_in_order_wins() {
    let mut f = delegation_fixture(&[
        ("targets", "A", &["*"], false),
        ("targets", "B", &["*"], false),
    ]);
    f.sim.add_target("A", "f", b"from A");
    f.sim.add_target("B", "f", b"from B, longer");
    f.sim.role_mut("A").version += 1;
    f.sim.role_mut("B").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    let info = u.get_target_info("f").unwrap().unwrap();
    assert_eq!(info.role, "A");
    assert_eq!(info.length(), 6);
    assert!(!role_requests(&f).contains(&"B".to_string()));
}

#[test]
fn top_level_targets_is_searched_before_delegations() {
    let mut f = delegation_fixture(&[("targets", "A", &["*"], false)]);
    f.sim.add_target("targets", "f", b"top");
    f.sim.add_target("A", "f", b"delegated");
    f.sim.targets.version += 1;
    f.sim.role_mut("A").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    assert_eq!(u.get_target_info("f").unwrap().unwrap().role, "targets");
    assert!(role_requests(&f).is_empty(), "A was not needed");
}

#[test]
fn terminating_delegation_stops_the_search() {
    let mut f = delegation_fixture(&[
        ("targets", "A", &["apps/*"], true),
        ("targets", "B", &["apps/*"], false),
    ]);
    f.sim.add_target("B", "apps/x", b"from B");
    f.sim.role_mut("B").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    assert_eq!(u.get_target_info("apps/x").unwrap(), None);
    assert_eq!(role_requests(&f), ["A"], "B is never fetched");
}

#[test]
fn terminating_delegation_deep_in_the_tree_also_skips_the_ancestors_siblings() {
    let mut f = delegation_fixture(&[
        ("targets", "A", &["*"], false),
        ("targets", "B", &["*"], false),
        ("A", "A1", &["*"], true),
    ]);
    f.sim.add_target("B", "f", b"from B");
    f.sim.role_mut("B").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    assert_eq!(u.get_target_info("f").unwrap(), None);
    assert_eq!(role_requests(&f), ["A", "A1"]);
}

#[test]
fn non_matching_terminating_delegation_does_not_stop_the_search() {
    let mut f = delegation_fixture(&[
        ("targets", "A", &["other/*"], true),
        ("targets", "B", &["apps/*"], false),
    ]);
    f.sim.add_target("B", "apps/x", b"from B");
    f.sim.role_mut("B").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    assert_eq!(u.get_target_info("apps/x").unwrap().unwrap().role, "B");
    assert_eq!(role_requests(&f), ["B"], "only matching roles are fetched");
}

#[test]
fn search_visits_at_most_max_delegations_roles() {
    // A chain targets → r0 → r1 → … → r5; the target is in r5.
    let chain: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    let mut sim = RepoSim::new();
    sim.delegate("targets", "r0", &["*"], false);
    for w in chain.windows(2) {
        sim.delegate(&w[0], &w[1], &["*"], false);
    }
    sim.add_target("r5", "deep", b"deep");
    sim.targets.version += 1;
    sim.commit();
    let f = Fixture::with(sim);
    let mut config = f.sim.config();
    config.limits.max_delegations = 5;
    let mut u = f.sim.updater_with(f.md_dir(), config.clone());
    u.refresh().unwrap();
    f.sim.transport.clear_log();
    assert_eq!(u.get_target_info("deep").unwrap(), None);
    assert_eq!(role_requests(&f), ["r0", "r1", "r2", "r3", "r4"]);
    config.limits.max_delegations = 6;
    let mut u = f.sim.updater_with(f.md_dir(), config);
    u.refresh().unwrap();
    assert_eq!(u.get_target_info("deep").unwrap().unwrap().role, "r5");
}

#[test]
fn delegation_cycles_are_visited_once() {
    let mut f = delegation_fixture(&[("targets", "A", &["*"], false), ("A", "B", &["*"], false)]);
    // B delegates back to A.
    f.sim.delegate("B", "A", &["*"], false);
    f.sim.role_mut("B").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    assert_eq!(u.get_target_info("nowhere").unwrap(), None);
    assert_eq!(role_requests(&f), ["A", "B"]);
}

#[test]
fn hashed_bins_fetch_only_the_one_bin_for_the_target() {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "bins", &["bins/*"], true);
    let s = sim.delegate_succinct("bins", 4, "bin");
    for i in 0..40 {
        let path = format!("bins/file-{i}.txt");
        let bin = s.bin_for_target(&path);
        sim.add_target(&bin, &path, path.as_bytes());
    }
    for bin in s.bin_names() {
        sim.role_mut(&bin).version += 1;
    }
    sim.targets.version += 1;
    sim.commit();
    let f = Fixture::with(sim);
    let mut u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    let info = u.get_target_info("bins/file-7.txt").unwrap().unwrap();
    let bin = s.bin_for_target("bins/file-7.txt");
    assert_eq!(info.role, bin);
    assert_eq!(info.delegation_chain, ["targets", "bins", bin.as_str()]);
    assert_eq!(role_requests(&f), ["bins", bin.as_str()]);
    assert_eq!(
        f.sim.transport.request_count(),
        2,
        "exactly one bin of 16 fetched"
    );
}

#[test]
fn path_hash_prefixes_select_the_role() {
    let mut sim = RepoSim::new();
    let target = "data/blob.bin";
    let digest = petrel_client::tuf::pattern::path_hash_hex(target);
    let other_prefix = if digest.starts_with('0') { "1" } else { "0" };
    for (name, prefix) in [("wrong", other_prefix), ("right", &digest[..2])] {
        sim.delegate_role(
            "targets",
            DelegatedRole {
                name: name.into(),
                keyids: vec![],
                threshold: 1,
                terminating: false,
                paths: None,
                path_hash_prefixes: Some(vec![prefix.to_string()]),
                unrecognized: Unrecognized::new(),
            },
        );
    }
    sim.add_target("wrong", target, b"wrong");
    sim.add_target("right", target, b"right");
    sim.role_mut("wrong").version += 1;
    sim.role_mut("right").version += 1;
    sim.targets.version += 1;
    sim.commit();
    let f = Fixture::with(sim);
    let mut u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    assert_eq!(u.get_target_info(target).unwrap().unwrap().role, "right");
    assert_eq!(role_requests(&f), ["right"]);
}

#[test]
fn a_role_listing_a_target_outside_its_paths_is_ignored_for_it_and_breaks_nothing_else() {
    let mut f = delegation_fixture(&[
        ("targets", "A", &["a/*"], false),
        ("targets", "B", &["b/*"], false),
    ]);
    // A (trusted only for a/*) also lists b/x and b/only-in-a with its own content.
    f.sim.add_target("A", "a/x", b"a content");
    f.sim.add_target("A", "b/x", b"evil");
    f.sim.add_target("A", "b/only-in-a", b"evil");
    f.sim.add_target("B", "b/x", b"good b content");
    f.sim.role_mut("A").version += 1;
    f.sim.role_mut("B").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    let bx = u.get_target_info("b/x").unwrap().unwrap();
    assert_eq!(bx.role, "B");
    assert_eq!(bx.hashes(), &hashes_of(b"good b content"));
    assert_eq!(u.get_target_info("b/only-in-a").unwrap(), None);
    assert_eq!(u.get_target_info("a/x").unwrap().unwrap().role, "A");
}

#[test]
fn every_delegation_on_the_chain_must_match_the_path() {
    // targets → A (a/*) → C (b/*): C can never be reached for b/… paths.
    let mut f = delegation_fixture(&[
        ("targets", "A", &["a/*"], false),
        ("A", "C", &["b/*"], false),
    ]);
    f.sim.add_target("C", "b/x", b"evil");
    f.sim.role_mut("C").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    assert_eq!(u.get_target_info("b/x").unwrap(), None);
    assert!(role_requests(&f).is_empty(), "neither A nor C is fetched");
}

#[test]
fn wildcards_in_delegated_paths_do_not_cross_slashes() {
    let mut f = delegation_fixture(&[("targets", "A", &["apps/*"], false)]);
    f.sim.add_target("A", "apps/x/y", b"deep");
    f.sim.role_mut("A").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    assert_eq!(u.get_target_info("apps/x/y").unwrap(), None);
}

#[test]
fn delegated_role_signed_by_the_wrong_key_fails_the_search() {
    let mut f = delegation_fixture(&[("targets", "A", &["*"], false)]);
    f.sim.add_target("A", "f", b"x");
    f.sim.role_mut("A").version += 1;
    f.sim.signers.insert("A".into(), vec![new_key()]);
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    let err = u.get_target_info("f").unwrap_err();
    assert!(matches!(err, UpdateError::Signature { .. }), "{err}");
    assert!(err.to_string().contains("targets role \"A\" v2"), "{err}");
    assert!(
        !f.md_dir().join("A.json").exists(),
        "unverified role not persisted"
    );
}

#[test]
fn delegated_role_version_must_match_snapshot() {
    let mut f = delegation_fixture(&[("targets", "A", &["*"], false)]);
    f.sim.role_mut("A").version = 2;
    f.sim.commit();
    let mut other = f.sim.delegated["A"].clone();
    other.version = 3;
    f.sim
        .transport
        .insert(f.sim.md("2.A.json"), f.sim.sign("A", &other));
    let mut u = f.refresh().unwrap();
    let err = u.get_target_info("f").unwrap_err();
    assert!(matches!(err, UpdateError::Version { .. }), "{err}");
}

#[test]
fn expired_delegated_role_is_refused_with_its_name_and_version() {
    let mut f = delegation_fixture(&[("targets", "vendor", &["*"], false)]);
    f.sim.role_mut("vendor").expires = in_days(-1);
    f.sim.role_mut("vendor").version = 3;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    let err = u.get_target_info("f").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("targets role \"vendor\" v3: expired at"),
        "{err}"
    );
}

#[test]
fn delegated_role_missing_from_snapshot_is_an_error() {
    let mut f = delegation_fixture(&[("targets", "A", &["*"], false)]);
    f.sim.snapshot.meta.remove("A.json");
    f.sim.delegated.remove("A");
    f.sim.snapshot.version += 1;
    f.sim.timestamp.version += 1;
    // Publish by hand so that A.json stays out of the snapshot.
    let snap = f.sim.sign("snapshot", &f.sim.snapshot);
    f.sim.transport.insert(f.sim.snapshot_url(), snap);
    f.sim.timestamp.meta.insert(
        "snapshot.json".into(),
        MetaFile::version_only(f.sim.snapshot.version),
    );
    let ts = f.sim.sign("timestamp", &f.sim.timestamp);
    f.sim.transport.insert(f.sim.md("timestamp.json"), ts);
    // A fresh client (no trusted snapshot listing A) accepts this snapshot…
    let dir = TempDir::new().unwrap();
    let mut u = f.sim.updater(dir.path());
    u.refresh().unwrap();
    // …but the search cannot use A.
    let err = u.get_target_info("f").unwrap_err();
    assert!(err.to_string().contains("not listed in snapshot"), "{err}");
}

#[test]
fn stored_delegated_roles_are_reused_across_updaters() {
    let mut f = delegation_fixture(&[("targets", "A", &["*"], false)]);
    f.sim.add_target("A", "f", b"x");
    f.sim.role_mut("A").version += 1;
    f.sim.commit();
    let mut u = f.refresh().unwrap();
    u.get_target_info("f").unwrap().unwrap();
    assert!(f.md_dir().join("A.json").exists());
    f.sim.transport.clear_log();
    let mut u = f.refresh().unwrap();
    u.get_target_info("f").unwrap().unwrap();
    assert_eq!(role_requests(&f), Vec::<String>::new());
}

/// `targets` delegates `a/*` to A and `b/*` to B; A and B both delegate R (for `a/*` and
/// `b/*`), A with key K1 and B with key K2. R is signed with K1 only and lists `a/x` and
/// `b/x`.
fn two_delegators_fixture() -> Fixture {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "A", &["a/*"], false);
    sim.delegate("targets", "B", &["b/*"], false);
    sim.delegate("A", "R", &["a/*"], false);
    sim.delegate("B", "R", &["b/*"], false);
    // B gives R another key, K2 (the simulator reuses R's key K1 for a second delegation).
    let k2 = new_key();
    let d = sim.role_mut("B").delegations.as_mut().unwrap();
    d.keys.clear();
    d.keys.insert(k2.key_id().clone(), k2.public_key().clone());
    d.roles.as_mut().unwrap()[0].keyids = vec![k2.key_id().clone()];
    sim.add_target("R", "a/x", b"through A");
    sim.add_target("R", "b/x", b"through B");
    for r in ["A", "B", "R"] {
        sim.role_mut(r).version += 1;
    }
    sim.targets.version += 1;
    sim.commit();
    Fixture::with(sim)
}

fn requests_for(f: &Fixture, file: &str) -> usize {
    requests(&f.sim)
        .iter()
        .filter(|r| r.ends_with(&format!(".{file}")) || r.ends_with(&format!("/{file}")))
        .count()
}

#[test]
fn a_role_reached_through_another_delegator_is_verified_against_that_delegator() {
    let f = two_delegators_fixture();
    let not_trusted_through_b = |result: Result<Option<TargetInfo>, UpdateError>| match result {
        Ok(found) => panic!("R was trusted through B, whose key K2 did not sign it: {found:?}"),
        Err(err) => {
            let msg = err.to_string();
            assert!(matches!(err, UpdateError::Signature { .. }), "{msg}");
            assert!(msg.starts_with("targets role \"R\" v2: "), "{msg}");
            assert!(
                msg.contains("keys delegated by targets role \"B\""),
                "the error names the delegator whose threshold failed: {msg}"
            );
        }
    };

    // Through A first: R verifies with K1. Then through B: the same bytes, B's key K2.
    let mut u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    let info = u.get_target_info("a/x").unwrap().unwrap();
    assert_eq!(info.delegation_chain, ["targets", "A", "R"]);
    not_trusted_through_b(u.get_target_info("b/x"));
    // R is still trusted through A, and was fetched once.
    assert_eq!(u.get_target_info("a/x").unwrap().unwrap().role, "R");
    assert_eq!(requests_for(&f, "R.json"), 1, "{:?}", requests(&f.sim));

    // Through B first, in a fresh installation (no stored R): the one download of R is
    // refused through B, then verified through A without being fetched again.
    let dir = TempDir::new().unwrap();
    let mut u = f.sim.updater(dir.path());
    u.refresh().unwrap();
    f.sim.transport.clear_log();
    not_trusted_through_b(u.get_target_info("b/x"));
    assert!(
        !dir.path().join("R.json").exists(),
        "untrusted R is not stored"
    );
    assert_eq!(u.get_target_info("a/x").unwrap().unwrap().role, "R");
    assert!(
        dir.path().join("R.json").exists(),
        "R trusted through A is stored"
    );
    not_trusted_through_b(u.get_target_info("b/x"));
    assert_eq!(requests_for(&f, "R.json"), 1, "{:?}", requests(&f.sim));

    // A new updater on the first directory loads R from its stored copy through A: the
    // same rule, without any request for R.
    let mut u = f.updater();
    u.refresh().unwrap();
    f.sim.transport.clear_log();
    assert_eq!(u.get_target_info("a/x").unwrap().unwrap().role, "R");
    not_trusted_through_b(u.get_target_info("b/x"));
    assert_eq!(requests_for(&f, "R.json"), 0, "{:?}", requests(&f.sim));
}

#[test]
fn role_names_in_urls_are_one_rfc3986_segment_and_local_names_escape_a_leading_dot() {
    // (role, URL segment, local file name): in the URL only reserved characters are
    // escaped (`/` too, so the name stays one segment); the local name also escapes a
    // leading `.`, so that no role can name a hidden file or a parent directory.
    let cases = [
        (".hidden/bin", ".hidden%2Fbin", "%2Ehidden%2Fbin.json"),
        (
            "../evil role",
            "..%2Fevil%20role",
            "%2E.%2Fevil%20role.json",
        ),
        ("bins-0a_~x", "bins-0a_~x", "bins-0a_~x.json"),
    ];
    for consistent in [true, false] {
        for (role, segment, local) in cases {
            let mut sim = RepoSim::new();
            if !consistent {
                sim.root.consistent_snapshot = Some(false);
                sim.bump_root();
            }
            sim.delegate("targets", role, &["*"], false);
            sim.add_target(role, "f", b"x");
            sim.role_mut(role).version += 1;
            sim.targets.version += 1;
            sim.commit();
            // Serve the role only under its RFC 3986 URL.
            let name = if consistent {
                format!("2.{segment}.json")
            } else {
                format!("{segment}.json")
            };
            let bytes = sim.transport.get(&sim.role_url(role)).unwrap();
            sim.transport.remove(&sim.role_url(role));
            sim.transport.insert(sim.md(&name), bytes);
            let f = Fixture::with(sim);
            let mut u = f.refresh().unwrap();
            f.sim.transport.clear_log();
            let found = u.get_target_info("f");
            assert_eq!(
                requests(&f.sim),
                [format!("metadata/{name}")],
                "{role:?}, consistent snapshots {consistent}"
            );
            assert_eq!(found.unwrap().unwrap().role, role);
            assert!(
                f.md_dir().join(local).exists(),
                "{role:?} is stored as {local}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Target download (5.7)
// ---------------------------------------------------------------------------------------

fn target_fixture(path: &str, data: &[u8]) -> (Fixture, Updater) {
    let mut sim = RepoSim::new();
    sim.add_target("targets", path, data);
    sim.targets.version += 1;
    sim.commit();
    let f = Fixture::with(sim);
    let u = f.refresh().unwrap();
    f.sim.transport.clear_log();
    (f, u)
}

#[test]
fn target_is_downloaded_from_its_hash_prefixed_url_and_verified() {
    let data = b"hello target";
    let (f, mut u) = target_fixture("dir/app.bin", data);
    let info = u.get_target_info("dir/app.bin").unwrap().unwrap();
    let out = TempDir::new().unwrap();
    let dest = out.path().join("app.bin");
    u.download_target(&info, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let sha256 = &hashes_of(data)["sha256"];
    assert_eq!(requests(&f.sim), [format!("targets/dir/{sha256}.app.bin")]);
    let leftovers: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
}

#[test]
fn target_without_hash_prefix_uses_the_plain_path() {
    let (f, _) = target_fixture("dir/app.bin", b"x");
    let mut config = f.sim.config();
    config.prefix_targets_with_hash = false;
    let mut u = f.sim.updater_with(f.md_dir(), config);
    u.refresh().unwrap();
    let info = u.get_target_info("dir/app.bin").unwrap().unwrap();
    f.sim.transport.clear_log();
    let out = TempDir::new().unwrap();
    u.download_target(&info, &out.path().join("f")).unwrap();
    assert_eq!(requests(&f.sim), ["targets/dir/app.bin"]);
}

#[test]
fn target_with_wrong_content_is_refused_and_nothing_is_written() {
    let data = b"good content";
    let (f, mut u) = target_fixture("app.bin", data);
    let info = u.get_target_info("app.bin").unwrap().unwrap();
    let sha256 = &hashes_of(data)["sha256"];
    let url = format!("{BASE}/targets/{sha256}.app.bin");
    f.sim.transport.insert(url, b"evil content".to_vec());
    let out = TempDir::new().unwrap();
    let dest = out.path().join("app.bin");
    let err = u.download_target(&info, &dest).unwrap_err();
    assert!(matches!(err, UpdateError::LengthOrHash { .. }), "{err}");
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn target_only_wrong_in_sha512_is_refused() {
    let data = b"good content";
    let mut sim = RepoSim::new();
    sim.add_target("targets", "app.bin", data);
    // The metadata's sha512 is for other bytes; sha256 is right.
    let mut h = hashes_of(data);
    h.insert("sha512".into(), hashes_of(b"other")["sha512"].clone());
    sim.targets.targets.get_mut("app.bin").unwrap().hashes = h;
    sim.targets.version += 1;
    sim.commit();
    let f = Fixture::with(sim);
    let mut u = f.refresh().unwrap();
    let info = u.get_target_info("app.bin").unwrap().unwrap();
    let out = TempDir::new().unwrap();
    let err = u.download_target(&info, &out.path().join("f")).unwrap_err();
    assert!(err.to_string().contains("sha512 mismatch"), "{err}");
}

#[test]
fn target_longer_than_signed_is_cut_off_and_refused() {
    let data = b"0123456789";
    let (f, mut u) = target_fixture("app.bin", data);
    let info = u.get_target_info("app.bin").unwrap().unwrap();
    let url = format!("{BASE}/targets/{}.app.bin", hashes_of(data)["sha256"]);
    f.sim.transport.insert(url, vec![b'0'; 1_000_000]);
    let out = TempDir::new().unwrap();
    let err = u.download_target(&info, &out.path().join("f")).unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::TargetFetch {
                source: FetchError::TooLarge { max_len: 10, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(f.sim.transport.bytes_served() <= 10);
}

#[test]
fn target_shorter_than_signed_is_refused() {
    let data = b"0123456789";
    let (f, mut u) = target_fixture("app.bin", data);
    let info = u.get_target_info("app.bin").unwrap().unwrap();
    let url = format!("{BASE}/targets/{}.app.bin", hashes_of(data)["sha256"]);
    f.sim.transport.insert(url, b"01234".to_vec());
    let out = TempDir::new().unwrap();
    let err = u.download_target(&info, &out.path().join("f")).unwrap_err();
    assert!(
        err.to_string()
            .contains("length 5 does not match expected 10"),
        "{err}"
    );
}

#[test]
fn target_listing_only_an_unknown_hash_algorithm_is_refused() {
    let mut sim = RepoSim::new();
    sim.add_target("targets", "app.bin", b"x");
    let mut h = Hashes::new();
    h.insert("blake3".into(), "00".into());
    sim.targets.targets.get_mut("app.bin").unwrap().hashes = h;
    sim.targets.version += 1;
    sim.commit();
    let f = Fixture::with(sim);
    let mut u = f.refresh().unwrap();
    let info = u.get_target_info("app.bin").unwrap().unwrap();
    f.sim
        .transport
        .insert(format!("{BASE}/targets/00.app.bin"), b"x".to_vec());
    let out = TempDir::new().unwrap();
    let err = u.download_target(&info, &out.path().join("f")).unwrap_err();
    assert!(
        err.to_string().contains("no supported hash algorithm"),
        "{err}"
    );
}

#[test]
fn cached_target_with_matching_hashes_is_not_downloaded_again() {
    let data = b"cache me";
    let (f, mut u) = target_fixture("app.bin", data);
    let info = u.get_target_info("app.bin").unwrap().unwrap();
    let out = TempDir::new().unwrap();
    let dest = out.path().join("app.bin");
    assert!(!u.find_cached_target(&info, &dest).unwrap());
    u.download_target(&info, &dest).unwrap();
    assert!(u.find_cached_target(&info, &dest).unwrap());
    // Same length, different content: not a cache hit.
    std::fs::write(&dest, b"cache mE").unwrap();
    assert!(!u.find_cached_target(&info, &dest).unwrap());
    let _ = f;
}

#[test]
fn unsafe_target_paths_are_never_downloaded() {
    for path in ["../escape.txt", "a/../../escape.txt", "/etc/passwd", "a//b"] {
        let (f, mut u) = target_fixture(path, b"x");
        let info = u.get_target_info(path).unwrap().unwrap();
        let out = TempDir::new().unwrap();
        let err = u.download_target(&info, &out.path().join("f")).unwrap_err();
        assert!(matches!(err, UpdateError::Target { .. }), "{path}: {err}");
        assert!(requests(&f.sim).is_empty(), "{path}: nothing fetched");
    }
}

#[test]
fn large_target_is_streamed_and_verified() {
    let data: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    let (_f, mut u) = target_fixture("big.img", &data);
    let info = u.get_target_info("big.img").unwrap().unwrap();
    let out = TempDir::new().unwrap();
    let dest = out.path().join("big.img");
    u.download_target(&info, &dest).unwrap();
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 6_000_000);
    assert!(u.find_cached_target(&info, &dest).unwrap());
}

#[test]
fn unknown_target_is_none() {
    let (_f, mut u) = target_fixture("a", b"x");
    assert_eq!(u.get_target_info("b").unwrap(), None);
}

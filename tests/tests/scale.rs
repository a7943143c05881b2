//! Fleet scale on one device: with the snapshot tree, hashed bins under the manifest roles
//! and the campaign index, a poll fetches only what can concern the device, and the
//! attacks on that path (a tampered node, a node at the wrong position, a rolled-back
//! role, a tampered or substituted index) are refused with the role and the reason.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use petrel_client::agent::repo::gather;
use petrel_client::fetch::{FetchError, FileTransport, Transport};
use petrel_client::manifest::{group_index_path, CampaignIndex, Manifest, FLEET_INDEX_PATH};
use petrel_client::tuf::schema::tree::{self, TreeNode};
use petrel_client::tuf::schema::{
    Hashes, MetaFile, Signed, Snapshot, SnapshotTree, Timestamp, Unrecognized, SPEC_VERSION,
};
use petrel_client::tuf::updater::{Updater, UpdaterConfig};
use petrel_repo::editor::Editor;
use petrel_repo::workspace::{Layout, Settings};
use petrel_tests::scenario::{Device, Scenario};

const PROFILE: &str = r#"type = "kiosk"
vendor = "acme"
region = "eu-west"
channel = "stable"
utc_offset_minutes = 0
locale = "en""#;

const GROUPS: usize = 12;
const CAMPAIGNS: usize = 6;

/// A `file://` transport that records every URL and the bytes it returned.
#[derive(Clone, Default)]
struct Counting {
    inner: FileTransport,
    log: Arc<Mutex<Vec<(String, u64)>>>,
}

impl Counting {
    fn take(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Transport for Counting {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        let r = self.inner.fetch(url, max_len, sink);
        let n = *r.as_ref().unwrap_or(&0);
        self.log.lock().unwrap().push((url.to_string(), n));
        r
    }
}

fn group_id(i: usize) -> String {
    format!("g{i:02}")
}

fn app_target(i: usize, version: &str) -> String {
    format!("apps/app-{i:02}/{version}/app.bin")
}

fn group_toml(i: usize, revision: u64, version: &str) -> String {
    format!(
        "kind = \"group\"\nschema_version = 1\nid = \"{}\"\nrevision = {revision}\n\n[apps.\"acme.app{i:02}\"]\nversion = \"{version}\"\ntarget = \"{}\"\n",
        group_id(i),
        app_target(i, version)
    )
}

fn campaign_toml(i: usize, revision: u64, group_revision: u64) -> String {
    format!(
        r#"kind = "campaign"
schema_version = 1
id = "c-{g}"
revision = {revision}
state = "active"

[notice.en]
title = "App for {g}"
body = "Revision {revision}."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = {{ id = "{g}", revision = {group_revision} }}
"#,
        g = group_id(i)
    )
}

/// A fleet of [`GROUPS`] groups (three devices each) with the scaled layout; groups
/// `0..CAMPAIGNS` each have a campaign. Published once.
fn fleet() -> Scenario {
    fleet_with(true)
}

/// [`fleet`], with or without the campaign index made by `publish`.
fn fleet_with(campaign_index: bool) -> Scenario {
    let layout = Layout {
        groups_bins: 16,
        campaigns_bins: 16,
        assign_bins: 16,
        index_bins: 16,
        campaign_index,
        ..Layout::default()
    };
    let mut s = Scenario::with_settings(Settings {
        layout,
        ..Settings::default()
    });
    for i in 0..GROUPS {
        s.artifact(&app_target(i, "1.0"));
        s.artifact(&app_target(i, "1.1"));
        s.group(&group_toml(i, 1, "1.0"));
        let devices: Vec<String> = (0..3).map(|k| format!("dev-{}-{k}", group_id(i))).collect();
        let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
        s.assign(&group_id(i), &refs, false, &[]);
    }
    for i in 0..CAMPAIGNS {
        s.create_campaign(&campaign_toml(i, 1, 1));
    }
    s.publish();
    s
}

/// A device of group 0 with an updater over the counting transport.
struct Poller {
    device: Device,
    transport: Counting,
    updater: Updater,
}

impl Poller {
    fn new(s: &Scenario, id: &str) -> Poller {
        let device = s.device(id, PROFILE);
        let transport = Counting::default();
        let repo = &device.config().repository;
        let updater = Updater::new(
            UpdaterConfig::new(repo.metadata_url.clone())
                .with_target_base_url(repo.targets_url.clone()),
            transport.clone(),
            device.agent().paths().metadata(),
        )
        .expect("updater");
        Poller {
            device,
            transport,
            updater,
        }
    }

    /// One gather; returns the campaigns the device saw, the unusable paths, and what was
    /// fetched.
    fn poll(&mut self) -> Poll {
        let agent = self.device.agent();
        let id = self.device.id.clone();
        let got = gather(&mut self.updater, &id, 2, &agent.paths().manifests()).expect("gather");
        Poll {
            campaigns: got
                .view
                .campaigns
                .iter()
                .map(|c| c.manifest.id.clone())
                .collect(),
            unusable: got.view.unusable.clone(),
            fetched: self.transport.take(),
        }
    }
}

#[derive(Debug)]
struct Poll {
    campaigns: Vec<String>,
    unusable: Vec<(String, String)>,
    fetched: Vec<(String, u64)>,
}

impl Poll {
    fn bytes(&self) -> u64 {
        self.fetched.iter().map(|f| f.1).sum()
    }

    fn fetched(&self, needle: &str) -> usize {
        self.fetched.iter().filter(|f| f.0.contains(needle)).count()
    }
}

#[test]
fn a_device_reads_only_the_roles_and_campaigns_that_can_concern_it() {
    let s = fleet();
    let mut p = Poller::new(&s, "dev-g00-1");
    let first = p.poll();
    assert_eq!(first.campaigns, vec!["c-g00".to_string()], "{first:#?}");
    assert!(first.unusable.is_empty(), "{:?}", first.unusable);
    // The snapshot tree instead of snapshot.json.
    assert_eq!(first.fetched("snapshot.json"), 0, "{:#?}", first.fetched);
    assert_eq!(first.fetched(".head.json"), 1, "{:#?}", first.fetched);
    // Its own index and the fleet's, its own campaign, no other campaign.
    assert_eq!(first.fetched("index/"), 2, "{:#?}", first.fetched);
    assert_eq!(first.fetched("campaigns/"), 1, "{:#?}", first.fetched);
    // One bin of each binned role, not every bin.
    for role in ["groups-", "campaigns-", "assign-", "index-"] {
        let bins = first
            .fetched
            .iter()
            .filter(|f| f.0.contains("/metadata/") && f.0.contains(&format!(".{role}")))
            .count();
        assert!(
            bins <= 2,
            "{bins} {role} bins fetched: {:#?}",
            first.fetched
        );
    }

    // Nothing changed: the root probe and the timestamp, nothing else.
    let again = p.poll();
    assert_eq!(again.fetched.len(), 2, "{:#?}", again.fetched);
    assert_eq!(again.campaigns, first.campaigns);
}

#[test]
fn a_change_for_another_group_costs_a_few_nodes_and_no_manifest() {
    let mut s = fleet();
    let mut p = Poller::new(&s, "dev-g00-2");
    p.poll();

    s.update_campaign(&campaign_toml(3, 2, 1));
    s.publish();
    let unrelated = p.poll();
    assert_eq!(unrelated.campaigns, vec!["c-g00".to_string()]);
    assert_eq!(
        unrelated.fetched("campaigns/"),
        0,
        "{:#?}",
        unrelated.fetched
    );
    assert_eq!(
        unrelated.fetched("/targets/"),
        0,
        "{:#?}",
        unrelated.fetched
    );
    assert!(
        unrelated.bytes() <= 8 * 1024,
        "{} bytes: {:#?}",
        unrelated.bytes(),
        unrelated.fetched
    );

    // Its own campaign changes: it is fetched again.
    s.update_campaign(&campaign_toml(0, 2, 1));
    s.publish();
    let own = p.poll();
    assert_eq!(own.fetched("campaigns/"), 1, "{:#?}", own.fetched);
}

#[test]
fn the_index_follows_campaigns_that_move_between_groups() {
    let mut s = fleet();
    let idx = |s: &Scenario, path: &str| -> CampaignIndex {
        let name = path.rsplit('/').next().unwrap();
        let dir = s.tree().join("targets/index");
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .ends_with(&format!(".{name}"))
            })
            .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
            .unwrap_or_else(|| panic!("{path} in the tree"));
        CampaignIndex::from_json(&std::fs::read(file).unwrap()).unwrap()
    };
    assert!(idx(&s, &group_index_path("g02"))
        .campaigns
        .contains("c-g02"));
    assert!(idx(&s, FLEET_INDEX_PATH).campaigns.is_empty());
    // c-g02 is cancelled: it stays in the index (devices must see the cancellation).
    s.change_state("c-g02", petrel_repo::manifests::StateChange::Cancel);
    s.publish();
    assert!(idx(&s, &group_index_path("g02"))
        .campaigns
        .contains("c-g02"));
}

// ----- attacks -----

fn tree_dir(s: &Scenario) -> std::path::PathBuf {
    s.tree().join("metadata").join(tree::TREE_DIR)
}

fn current_head(s: &Scenario) -> Signed<SnapshotTree> {
    let ts: Signed<Timestamp> =
        Signed::from_bytes(&std::fs::read(s.tree().join("metadata/timestamp.json")).unwrap())
            .unwrap();
    let v = ts.signed.snapshot_tree_meta().unwrap().unwrap().version;
    Signed::from_bytes(&std::fs::read(tree_dir(s).join(tree::head_file_name(v))).unwrap()).unwrap()
}

/// Signs and writes a new head over `nodes` (root `root`) and a timestamp pinning it, as
/// holders of the snapshot and timestamp keys could.
fn publish_crafted_tree(s: &mut Scenario, root: String, nodes: &BTreeMap<String, Vec<u8>>) {
    let dir = tree_dir(s);
    for (h, b) in nodes {
        std::fs::write(dir.join(tree::node_file_name(h)), b).unwrap();
    }
    let prev = current_head(s);
    let mut ed = Editor::new(s.repo().workspace());
    let version = prev.signed.version + 1;
    let mut head = Signed::unsigned(SnapshotTree {
        type_: tree::TREE_TYPE.into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: prev.signed.expires,
        root,
        roles: 0,
        unrecognized: Unrecognized::new(),
    });
    petrel_repo::signing::sign_role(&mut ed, "snapshot", &mut head).unwrap();
    let head_bytes = head.to_file_bytes().unwrap();
    std::fs::write(dir.join(tree::head_file_name(version)), &head_bytes).unwrap();
    let ts_path = s.tree().join("metadata/timestamp.json");
    let mut ts: Signed<Timestamp> = Signed::from_bytes(&std::fs::read(&ts_path).unwrap()).unwrap();
    ts.signed.version += 1;
    let mut h = Hashes::new();
    h.insert("sha256".into(), tree::sha256_hex(&head_bytes));
    let meta = MetaFile {
        version,
        length: Some(head_bytes.len() as u64),
        hashes: Some(h),
        unrecognized: Unrecognized::new(),
    };
    ts.signed.unrecognized.insert(
        tree::TIMESTAMP_FIELD.into(),
        serde_json::to_value(meta).unwrap(),
    );
    ts.signatures.clear();
    let mut ed = Editor::new(s.repo().workspace());
    petrel_repo::signing::sign_role(&mut ed, "timestamp", &mut ts).unwrap();
    std::fs::write(&ts_path, ts.to_file_bytes().unwrap()).unwrap();
}

/// The published snapshot's role references.
fn snapshot_roles(s: &Scenario) -> BTreeMap<String, MetaFile> {
    let ts: Signed<Timestamp> =
        Signed::from_bytes(&std::fs::read(s.tree().join("metadata/timestamp.json")).unwrap())
            .unwrap();
    let v = ts.signed.snapshot_meta().version;
    let snap: Signed<Snapshot> = Signed::from_bytes(
        &std::fs::read(s.tree().join(format!("metadata/{v}.snapshot.json"))).unwrap(),
    )
    .unwrap();
    snap.signed
        .meta
        .into_iter()
        .map(|(n, m)| (n.trim_end_matches(".json").to_string(), m))
        .collect()
}

fn stored(p: &Poller) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    petrel_tests::scenario::every_file(&p.device.agent().paths().metadata())
}

fn gather_err(p: &mut Poller) -> String {
    let agent = p.device.agent();
    let id = p.device.id.clone();
    match gather(&mut p.updater, &id, 2, &agent.paths().manifests()) {
        Ok(g) => panic!("gather succeeded: {:?}", g.view.unusable),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_tampered_tree_node_is_refused_and_nothing_new_is_trusted() {
    let mut s = fleet();
    let mut p = Poller::new(&s, "dev-g00-0");
    p.poll();
    s.update_campaign(&campaign_toml(0, 2, 1));
    s.publish();
    let before: Vec<_> = stored(&p)
        .into_iter()
        .filter(|(path, _)| !path.ends_with("timestamp.json"))
        .collect();
    // Every new node's bytes are changed (one digit of a hash flipped), names kept.
    let head = current_head(&s);
    let root = tree_dir(&s).join(tree::node_file_name(&head.signed.root));
    let mut bytes = std::fs::read(&root).unwrap();
    let pos = bytes.iter().rposition(|b| b.is_ascii_hexdigit()).unwrap();
    bytes[pos] = if bytes[pos] == b'0' { b'1' } else { b'0' };
    std::fs::write(&root, &bytes).unwrap();

    let e = gather_err(&mut p);
    assert!(e.contains("snapshot tree") && e.contains("node"), "{e}");
    assert!(e.contains("hash"), "{e}");
    let after: Vec<_> = stored(&p)
        .into_iter()
        .filter(|(path, _)| !path.ends_with("timestamp.json"))
        .collect();
    // The new head is kept (it verified), but no role and no node from the tampered tree.
    let roles_only = |v: &[(std::path::PathBuf, Vec<u8>)]| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        v.iter()
            .filter(|(p, _)| !p.to_string_lossy().contains(tree::TREE_DIR))
            .cloned()
            .collect()
    };
    assert_eq!(roles_only(&before), roles_only(&after));
    assert!(!after
        .iter()
        .any(|(p, _)| p.ends_with(tree::node_file_name(&head.signed.root))));
}

#[test]
fn a_node_at_the_wrong_position_is_refused() {
    let mut s = fleet();
    let mut p = Poller::new(&s, "dev-g01-0");
    p.poll();
    // A root whose every child is a leaf claiming another position.
    let mut nodes = BTreeMap::new();
    let mut children = BTreeMap::new();
    for digit in ["0", "1", "2", "3"] {
        let wrong = if digit == "0" { "1" } else { "0" };
        let leaf = TreeNode {
            prefix: wrong.into(),
            children: None,
            roles: Some(BTreeMap::new()),
        };
        let b = leaf.to_bytes();
        let h = tree::sha256_hex(&b);
        children.insert(digit.to_string(), h.clone());
        nodes.insert(h, b);
    }
    let root = TreeNode {
        prefix: String::new(),
        children: Some(children),
        roles: None,
    };
    let rb = root.to_bytes();
    let rh = tree::sha256_hex(&rb);
    nodes.insert(rh.clone(), rb);
    publish_crafted_tree(&mut s, rh, &nodes);
    let e = gather_err(&mut p);
    assert!(e.contains("position"), "{e}");
}

#[test]
fn a_rolled_back_index_role_is_refused() {
    let mut s = fleet();
    let mut p = Poller::new(&s, "dev-g00-0");
    p.poll();
    // Republish so the device's index bin has version ≥ 2, then offer its old version.
    let old = snapshot_roles(&s);
    s.create_campaign(&campaign_toml(0, 1, 1).replace("id = \"c-g00\"", "id = \"c2-g00\""));
    s.publish();
    p.poll();
    let mut roles = snapshot_roles(&s);
    let rolled: Vec<String> = roles
        .iter()
        .filter(|(r, m)| {
            r.starts_with("index-") && old.get(*r).is_some_and(|o| o.version < m.version)
        })
        .map(|(r, _)| r.clone())
        .collect();
    assert!(!rolled.is_empty(), "an index bin changed");
    for r in &rolled {
        roles.insert(r.clone(), old[r].clone());
    }
    let built = tree::build(&roles);
    publish_crafted_tree(&mut s, built.root, &built.nodes);
    let agent = p.device.agent();
    let id = p.device.id.clone();
    let got = gather(&mut p.updater, &id, 2, &agent.paths().manifests()).expect("gather");
    let why: Vec<_> = got
        .view
        .unusable
        .iter()
        .filter(|(path, _)| path.starts_with("index/"))
        .collect();
    assert!(
        why.iter()
            .any(|(_, w)| w.contains("lower than version") && w.contains("index-")),
        "{:?}",
        got.view.unusable
    );
}

#[test]
fn an_index_that_omits_a_campaign_is_refused() {
    let s = fleet();
    // The group index as a mirror edits it: the campaign removed, the file name kept.
    let dir = s.tree().join("targets/index");
    let name = format!(".{}", group_index_path("g00").rsplit('/').next().unwrap());
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(&name))
        .expect("the group's index in the tree");
    let mut index = CampaignIndex::from_json(&std::fs::read(&file).unwrap()).unwrap();
    assert!(index.campaigns.remove("c-g00"));
    std::fs::write(&file, index.to_canonical_json().unwrap()).unwrap();

    let mut p = Poller::new(&s, "dev-g00-0");
    let got = p.poll();
    let why = got
        .unusable
        .iter()
        .find(|(path, _)| path == &group_index_path("g00"))
        .unwrap_or_else(|| panic!("the tampered index is refused: {:?}", got.unusable));
    assert!(
        why.1.contains("length") || why.1.contains("hash"),
        "{why:?}"
    );
    assert!(got.campaigns.is_empty());
}

#[test]
fn an_index_of_another_group_is_refused() {
    // Indexes signed by hand (publish does not make them here): the fleet's, and group
    // g01's index listed under g00's name.
    let mut s = fleet_with(false);
    let fleet = CampaignIndex::new(None, Default::default());
    s.repo().add(
        "targets",
        FLEET_INDEX_PATH,
        &fleet.to_canonical_json().unwrap(),
    );
    let other = CampaignIndex::new(Some("g01".into()), ["c-g01".to_string()].into());
    s.repo().add(
        "targets",
        &group_index_path("g00"),
        &other.to_canonical_json().unwrap(),
    );
    s.publish();
    let mut p = Poller::new(&s, "dev-g00-0");
    let got = p.poll();
    assert!(
        got.unusable
            .iter()
            .any(|(path, w)| path == &group_index_path("g00")
                && w.contains("campaign index of group \"g01\"")),
        "{:?}",
        got.unusable
    );
    assert!(got.campaigns.is_empty(), "{:?}", got.campaigns);
}

#[test]
fn verify_reports_a_missing_or_damaged_tree_node() {
    let s = fleet();
    let report = petrel_repo::audit::audit_tree(&s.tree(), None).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let head = current_head(&s);
    let root = tree_dir(&s).join(tree::node_file_name(&head.signed.root));
    let bytes = std::fs::read(&root).unwrap();
    std::fs::write(&root, b"{}").unwrap();
    let report = petrel_repo::audit::audit_tree(&s.tree(), None).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("do not hash to its name")),
        "{:?}",
        report.problems
    );
    std::fs::remove_file(&root).unwrap();
    let report = petrel_repo::audit::audit_tree(&s.tree(), None).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("missing (a node of the snapshot tree)")),
        "{:?}",
        report.problems
    );
    std::fs::write(&root, bytes).unwrap();
}

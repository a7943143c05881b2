//! Builders shared by the `decide_*` tests: a group, a campaign, a device and a repository
//! view that fit together, so each test changes only what it is about.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use petrel_client::consent::{ConsentAction, ConsentEvent};
use petrel_client::decide::{
    ArtifactInfo, CampaignEntry, DeviceProfile, Entry, GroupEntry, InstalledApp, LocalState,
    RepositoryView,
};
use petrel_client::manifest::{
    assign_bin_for, sha256_hex, Assignment, AssignmentBin, CampaignManifest, CapabilityChain,
    GroupManifest, Manifest, ManifestHash, UtcTime,
};

/// Parses a UTC instant.
pub fn t(s: &str) -> DateTime<Utc> {
    UtcTime::parse(s).unwrap().0
}

/// The moment most tests decide at: inside the campaign, 02:00 UTC (no windows are set
/// by default).
pub fn now() -> DateTime<Utc> {
    t("2030-03-10T02:00:00Z")
}

pub const DEVICE: &str = "kiosk-0042";
pub const SALT: &str = "00112233445566778899aabbccddeeff";

/// Group `kiosk-eu` revision 8: player 2.1.0 and fonts 1.0.
pub fn group() -> GroupManifest {
    GroupManifest::from_toml(
        r#"
kind = "group"
schema_version = 1
id = "kiosk-eu"
revision = 8

[apps."acme.player"]
version = "2.1.0"
target = "apps/acme/player/2.1.0/player.bin"
post_install = "start"

[apps."acme.fonts"]
version = "1.0"
target = "apps/acme/fonts/1.0/fonts.tar"
install_type = "tree"
"#,
    )
    .unwrap()
}

/// An active campaign delivering group kiosk-eu revision 8, no consent, no windows, no
/// waves, running all of March 2030.
pub fn campaign() -> CampaignManifest {
    CampaignManifest::from_toml(
        r#"
kind = "campaign"
schema_version = 1
id = "player-2.1"
revision = 3
state = "active"

[notice.en]
title = "Player 2.1"
body = "Faster start-up."
severity = "recommended"

[consent]
policy = "none"

[applies_to]
device_types = ["kiosk"]

[payload]
group = { id = "kiosk-eu", revision = 8 }

[schedule]
not_before = 2030-03-01T00:00:00Z
not_after = 2030-04-01T00:00:00Z
"#,
    )
    .unwrap()
}

/// The device: a kiosk running player 2.0.1 and fonts 1.0 (so the plan is one update).
pub fn profile() -> DeviceProfile {
    let mut p = DeviceProfile {
        id: DEVICE.into(),
        device_type: "kiosk".into(),
        vendor: Some("acme".into()),
        region: Some("eu-west".into()),
        channel: Some("stable".into()),
        hardware: BTreeSet::from(["display:1080p".to_string()]),
        ..DeviceProfile::default()
    };
    p.inventory
        .insert("acme.player".into(), InstalledApp::version("2.0.1"));
    p.inventory
        .insert("acme.fonts".into(), InstalledApp::version("1.0"));
    p
}

/// The fake content of an artifact target.
pub fn artifact_bytes(target: &str) -> Vec<u8> {
    format!("content of {target}").repeat(100).into_bytes()
}

pub fn artifact(target: &str) -> ArtifactInfo {
    let b = artifact_bytes(target);
    ArtifactInfo {
        length: b.len() as u64,
        sha256: sha256_hex(&b),
        deltas: Vec::new(),
        tree: None,
    }
}

/// A campaign entry signed through an unrestricted `campaigns` role.
pub fn entry(c: CampaignManifest) -> CampaignEntry {
    let bytes = c.to_canonical_json().unwrap();
    Entry::from_bytes(
        &c.target_path(),
        &bytes,
        CapabilityChain::single("campaigns", None),
    )
    .unwrap()
}

pub fn group_entry(g: GroupManifest) -> GroupEntry {
    let bytes = g.to_canonical_json().unwrap();
    Entry::from_bytes(
        &g.target_path(),
        &bytes,
        CapabilityChain::single("groups", None),
    )
    .unwrap()
}

/// The device's bin, assigning it to `group`.
pub fn bin_for(device: &str, a: Assignment) -> AssignmentBin {
    let mut b = AssignmentBin::new(assign_bin_for(device, 2), SALT);
    b.revision = 5;
    b.insert(device, a).unwrap();
    b
}

pub fn assignment() -> Assignment {
    Assignment::to_group("kiosk-eu")
}

/// A view with the campaigns, group [`group`], the device assigned to kiosk-eu, and every
/// artifact of the group.
pub fn view(campaigns: Vec<CampaignManifest>) -> RepositoryView {
    view_for(DEVICE, campaigns, assignment())
}

pub fn view_for(device: &str, campaigns: Vec<CampaignManifest>, a: Assignment) -> RepositoryView {
    let g = group();
    let artifacts: BTreeMap<String, ArtifactInfo> = g
        .apps
        .values()
        .map(|app| (app.target.clone(), artifact(&app.target)))
        .collect();
    let bin = bin_for(device, a);
    let bin_bytes = bin.to_canonical_json().unwrap();
    RepositoryView {
        campaigns: campaigns.into_iter().map(entry).collect(),
        unusable: Vec::new(),
        incomplete: Vec::new(),
        assignment: Some(
            Entry::from_bytes(
                &bin.target_path(),
                &bin_bytes,
                CapabilityChain::single("assign", None),
            )
            .unwrap(),
        ),
        group: Some(group_entry(g)),
        artifacts,
    }
}

/// Marks every artifact of the view's group as staged.
pub fn stage_all(view: &RepositoryView, state: &mut LocalState) {
    for (path, a) in &view.artifacts {
        state.staged.insert(
            path.clone(),
            petrel_client::decide::StagedItem {
                sha256: a.sha256.clone(),
                length: a.length,
            },
        );
    }
}

/// A consent event for `c` as shown (its canonical bytes and its offer), as the store
/// records it.
pub fn consent_event(
    c: &CampaignManifest,
    action: ConsentAction,
    at: DateTime<Utc>,
) -> ConsentEvent {
    ConsentEvent {
        campaign: c.id.clone(),
        revision: c.revision,
        manifest_sha256: ManifestHash::of(&c.to_canonical_json().unwrap()),
        offer_sha256: Some(c.offer_sha256()),
        at: at.into(),
        action,
        locale: None,
    }
}

/// A device id whose seed for `campaign` falls in `[lo_bp, hi_bp)`.
pub fn device_with_seed(campaign: &str, lo_bp: u32, hi_bp: u32) -> String {
    use petrel_client::decide::rollout::{seed_bp, wave_seed};
    (0..1_000_000)
        .map(|i| format!("dev-{i}"))
        .find(|d| (lo_bp..hi_bp).contains(&seed_bp(wave_seed(d, campaign))))
        .expect("some device id has a seed in range")
}

/// A profile for another device id (same equipment and inventory).
pub fn profile_for(id: &str) -> DeviceProfile {
    DeviceProfile {
        id: id.into(),
        ..profile()
    }
}

//! Scoped keys end to end: capabilities carried by delegations in real signed TUF
//! metadata, read along the delegation chain the updater found, and enforced by the engine.

mod decide_common;
mod support;

use std::collections::BTreeSet;

use decide_common::*;
use petrel_client::decide::{
    decide, ArtifactInfo, CampaignEntry, Entry, GroupEntry, LocalState, RepositoryView, Status,
};
use petrel_client::manifest::{
    assign_bin_for, CampaignManifest, Capabilities, ConsentPolicy, Grant, Manifest, Method,
    RoleCapabilities, CAPABILITIES_FIELD,
};
use petrel_client::tuf::schema::{DelegatedRole, Unrecognized};
use petrel_client::tuf::updater::Updater;
use support::RepoSim;

/// A partner (the vendor acme) may publish campaigns that ask the device's user, for its own
/// hardware in group kiosk-eu, and nothing else: it opens the door, it cannot start the
/// engine.
fn partner_caps() -> Capabilities {
    Capabilities::from_toml(
        r#"
schema_version = 1
kinds = ["campaign"]
consent_policies = ["required", "acknowledge"]
methods = ["normal"]
groups = ["kiosk-eu"]
vendors = ["acme"]
expires = 2031-01-01T00:00:00Z
"#,
    )
    .unwrap()
}

fn partner_campaign(id: &str) -> CampaignManifest {
    let mut c = campaign();
    c.id = id.into();
    c.consent.policy = ConsentPolicy::Required;
    c.applies_to.vendors = BTreeSet::from(["acme".to_string()]);
    c
}

struct Repo {
    sim: RepoSim,
}

impl Repo {
    fn new(partner_grant: Option<Capabilities>, campaigns_role: Option<Capabilities>) -> Repo {
        let mut sim = RepoSim::new();
        let mut campaigns = DelegatedRole {
            name: "campaigns".into(),
            keyids: Vec::new(),
            threshold: 1,
            terminating: true,
            paths: Some(vec!["campaigns/*".into()]),
            path_hash_prefixes: None,
            unrecognized: Unrecognized::new(),
        };
        campaigns.set_capabilities(campaigns_role.as_ref());
        sim.delegate_role("targets", campaigns);
        let mut partner = DelegatedRole {
            name: "partner-acme".into(),
            keyids: Vec::new(),
            threshold: 1,
            terminating: true,
            paths: Some(vec!["campaigns/acme-*".into()]),
            path_hash_prefixes: None,
            unrecognized: Unrecognized::new(),
        };
        partner.set_capabilities(partner_grant.as_ref());
        sim.delegate_role("campaigns", partner);
        sim.delegate("targets", "groups", &["groups/*"], true);
        sim.delegate("targets", "assign", &["assign/*"], true);
        let g = group();
        for app in g.apps.values() {
            sim.add_target("targets", &app.target, &artifact_bytes(&app.target));
        }
        sim.add_target("groups", &g.target_path(), &g.to_canonical_json().unwrap());
        let bin = bin_for(DEVICE, assignment());
        sim.add_target(
            "assign",
            &bin.target_path(),
            &bin.to_canonical_json().unwrap(),
        );
        Repo { sim }
    }

    fn add_campaign(&mut self, role: &str, c: &CampaignManifest) {
        self.sim
            .add_target(role, &c.target_path(), &c.to_canonical_json().unwrap());
    }

    fn add_raw(&mut self, role: &str, path: &str, bytes: &[u8]) {
        self.sim.add_target(role, path, bytes);
    }

    /// Publishes, refreshes a fresh device, and builds its view from what the updater found.
    fn view(&mut self, campaign_paths: &[&str]) -> RepositoryView {
        self.sim.publish();
        let dir = tempfile::tempdir().unwrap();
        let mut up = self.sim.updater(&dir.path().join("metadata"));
        up.refresh().unwrap();
        let mut view = RepositoryView::default();
        for p in campaign_paths {
            match fetch::<CampaignManifest>(&mut up, dir.path(), p) {
                Ok(e) => view.campaigns.push(e),
                Err(why) => view.unusable.push((p.to_string(), why)),
            }
        }
        view.group = Some(fetch(&mut up, dir.path(), &group().target_path()).unwrap());
        view.assignment = Some(
            fetch(
                &mut up,
                dir.path(),
                &format!("assign/{}.json", assign_bin_for(DEVICE, 2)),
            )
            .unwrap(),
        );
        for app in group().apps.values() {
            let info = up.get_target_info(&app.target).unwrap().unwrap();
            view.artifacts.insert(
                app.target.clone(),
                ArtifactInfo::from_target(&info).unwrap(),
            );
        }
        view
    }
}

fn fetch<T: Manifest + petrel_client::decide::Named>(
    up: &mut Updater,
    dir: &std::path::Path,
    path: &str,
) -> Result<Entry<T>, String> {
    let info = up
        .get_target_info(path)
        .map_err(|e| e.to_string())?
        .ok_or("not found")?;
    let dest = dir.join(petrel_client::tuf::updater::local_target_file_name(path).unwrap());
    up.download_target(&info, &dest)
        .map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&dest).unwrap();
    Entry::from_target(&info, &bytes, up.trusted().unwrap())
}

fn statuses(view: &RepositoryView) -> Vec<(String, Status)> {
    decide(view, &profile(), &LocalState::default(), now())
        .campaigns
        .into_iter()
        .map(|c| (c.id, c.status))
        .collect()
}

#[test]
fn a_partner_key_opens_the_door_but_cannot_start_the_engine() {
    let mut repo = Repo::new(Some(partner_caps()), None);
    repo.add_campaign("campaigns", &campaign());
    repo.add_campaign("partner-acme", &partner_campaign("acme-door"));
    let mut engine = partner_campaign("acme-engine");
    engine.consent.policy = ConsentPolicy::None;
    repo.add_campaign("partner-acme", &engine);
    let mut forced = partner_campaign("acme-forced");
    forced.method = Method::Forced;
    forced
        .forced_from
        .insert("acme.player".into(), BTreeSet::from(["2.0.1".to_string()]));
    repo.add_campaign("partner-acme", &forced);
    let mut everywhere = partner_campaign("acme-everywhere");
    everywhere.applies_to.vendors.clear();
    repo.add_campaign("partner-acme", &everywhere);
    let view = repo.view(&[
        "campaigns/player-2.1.json",
        "campaigns/acme-door.json",
        "campaigns/acme-engine.json",
        "campaigns/acme-forced.json",
        "campaigns/acme-everywhere.json",
    ]);
    assert!(view.unusable.is_empty(), "{:?}", view.unusable);

    // The chain the updater found is targets -> campaigns -> partner-acme.
    let door = view
        .campaigns
        .iter()
        .find(|c| c.manifest.id == "acme-door")
        .unwrap();
    assert_eq!(door.chain.links.len(), 2);
    assert_eq!(door.chain.links[0].grant, Grant::Unrestricted);
    assert_eq!(door.chain.links[1].grant, Grant::Restricted(partner_caps()));
    assert_eq!(door.chain.signer(), "partner-acme");

    let s = statuses(&view);
    let get = |id: &str| s.iter().find(|(i, _)| i == id).unwrap().1.clone();
    assert!(matches!(get("player-2.1"), Status::ReadyToDownload { .. }));
    assert!(
        matches!(get("acme-door"), Status::WaitingForConsent { .. }),
        "{}",
        get("acme-door")
    );
    for (id, field) in [
        ("acme-engine", "consent_policies"),
        ("acme-forced", "methods"),
        ("acme-everywhere", "vendors"),
    ] {
        let Status::Rejected { reason } = get(id) else {
            panic!("{id}: {}", get(id))
        };
        assert!(
            reason.contains("partner-acme") && reason.contains(field),
            "{id}: {reason}"
        );
    }
}

#[test]
fn the_intersection_along_the_chain_is_enforced() {
    // The campaigns role itself may only target kiosk-us; the partner's wider grant does
    // not widen it.
    let mut top = Capabilities::unrestricted();
    top.groups = Some(BTreeSet::from(["kiosk-us".to_string()]));
    let mut repo = Repo::new(Some(partner_caps()), Some(top));
    repo.add_campaign("partner-acme", &partner_campaign("acme-door"));
    let view = repo.view(&["campaigns/acme-door.json"]);
    let Status::Rejected { reason } = statuses(&view)[0].1.clone() else {
        panic!()
    };
    assert!(
        reason.contains("role \"campaigns\"") && reason.contains("kiosk-us"),
        "{reason}"
    );
    let eff = view.campaigns[0].chain.effective().unwrap();
    assert_eq!(eff.groups, Some(BTreeSet::new()));
}

#[test]
fn capabilities_a_client_cannot_read_refuse_everything_the_role_signs() {
    let mut repo = Repo::new(None, None);
    {
        let d = repo.sim.role_mut("campaigns").delegations.as_mut().unwrap();
        let role = d
            .roles
            .as_mut()
            .unwrap()
            .iter_mut()
            .find(|r| r.name == "partner-acme")
            .unwrap();
        role.unrecognized.insert(
            CAPABILITIES_FIELD.into(),
            serde_json::json!({"schema_version": 1, "may_start_engine": false}),
        );
    }
    repo.add_campaign("partner-acme", &partner_campaign("acme-door"));
    let view = repo.view(&["campaigns/acme-door.json"]);
    let Status::Rejected { reason } = statuses(&view)[0].1.clone() else {
        panic!()
    };
    assert!(reason.contains("cannot be read"), "{reason}");
}

#[test]
fn a_manifest_under_another_name_or_with_other_bytes_is_unusable() {
    let mut repo = Repo::new(None, None);
    repo.add_raw(
        "campaigns",
        "campaigns/other.json",
        &campaign().to_canonical_json().unwrap(),
    );
    repo.add_raw(
        "campaigns",
        "campaigns/bad.json",
        b"{\"kind\":\"campaign\",\"schema_version\":7}",
    );
    let view = repo.view(&["campaigns/other.json", "campaigns/bad.json"]);
    assert!(view.campaigns.is_empty());
    assert!(
        view.unusable[0].1.contains("another name"),
        "{:?}",
        view.unusable
    );
    assert!(
        view.unusable[1].1.contains("schema version 7"),
        "{:?}",
        view.unusable
    );
    let text = decide(&view, &profile(), &LocalState::default(), now()).explain();
    assert!(text.contains("campaigns/bad.json"), "{text}");
}

#[test]
fn entries_check_the_signed_hash_and_length() {
    let mut repo = Repo::new(None, None);
    repo.add_campaign("campaigns", &campaign());
    repo.sim.publish();
    let dir = tempfile::tempdir().unwrap();
    let mut up = repo.sim.updater(&dir.path().join("metadata"));
    let info = up
        .get_target_info("campaigns/player-2.1.json")
        .unwrap()
        .unwrap();
    let mut other = campaign();
    other.revision = 4;
    let err = CampaignEntry::from_target(
        &info,
        &other.to_canonical_json().unwrap(),
        up.trusted().unwrap(),
    )
    .unwrap_err();
    assert!(err.contains("not the signed target"), "{err}");
}

#[test]
fn succinct_bins_can_carry_capabilities_too() {
    let mut repo = Repo::new(None, None);
    // assign delegates to 4 hashed bins, limited to group kiosk-us.
    let bins = repo.sim.delegate_succinct("assign", 2, "assign-bin");
    let mut caps = Capabilities::unrestricted();
    caps.groups = Some(BTreeSet::from(["kiosk-us".to_string()]));
    repo.sim
        .role_mut("assign")
        .delegations
        .as_mut()
        .unwrap()
        .succinct_roles
        .as_mut()
        .unwrap()
        .set_capabilities(Some(&caps));
    let bin = bin_for(DEVICE, assignment());
    repo.sim.role_mut("assign").targets.clear();
    repo.add_raw(
        &bins.bin_for_target(&bin.target_path()),
        &bin.target_path(),
        &bin.to_canonical_json().unwrap(),
    );
    let view = repo.view(&[]);
    let a = view.assignment.as_ref().unwrap();
    assert_eq!(a.chain.links.len(), 2);
    assert_eq!(a.chain.links[1].grant, Grant::Restricted(caps));
    let d = decide(&view, &profile(), &LocalState::default(), now());
    let petrel_client::decide::AssignmentOutcome::Refused { reason } = &d.assignment else {
        panic!("{}", d.explain())
    };
    assert!(reason.contains("kiosk-us"), "{reason}");
}

#[test]
fn group_manifests_are_checked_against_their_signers_capabilities() {
    let mut repo = Repo::new(None, None);
    let mut g = group();
    g.revision = 9;
    let mut c = campaign();
    c.payload.group.as_mut().unwrap().revision = 9;
    repo.add_campaign("campaigns", &c);
    // Restrict the groups role to kiosk-us after the fact.
    let mut caps = Capabilities::unrestricted();
    caps.groups = Some(BTreeSet::from(["kiosk-us".to_string()]));
    let d = repo.sim.role_mut("targets").delegations.as_mut().unwrap();
    d.roles
        .as_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r.name == "groups")
        .unwrap()
        .set_capabilities(Some(&caps));
    repo.add_raw("groups", &g.target_path(), &g.to_canonical_json().unwrap());
    let view = repo.view(&["campaigns/player-2.1.json"]);
    let ge: &GroupEntry = view.group.as_ref().unwrap();
    assert!(ge.chain.check_group(&ge.manifest, now()).is_err());
    let Status::Error { reason } = statuses(&view)[0].1.clone() else {
        panic!()
    };
    assert!(
        reason.contains("may publish groups kiosk-us only"),
        "{reason}"
    );
}

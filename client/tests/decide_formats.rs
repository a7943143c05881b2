//! The manifest formats through their public API, and the examples in docs/formats.md:
//! every TOML example there must parse, validate and compile to exactly the JSON shown.

mod decide_common;

use std::collections::BTreeMap;

use decide_common::*;
use petrel_client::consent::AdminConsentToken;
use petrel_client::decide::{CampaignEntry, DeviceProfile, Entry};
use petrel_client::manifest::{
    assign_bin_for, canonical_json_value, salted_device_hash, AssignmentBin, CampaignManifest,
    Capabilities, CapabilityChain, GroupManifest, Manifest, ManifestKind, RoleCapabilities,
    MAX_MANIFEST_BYTES,
};
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use petrel_client::tuf::schema::DelegatedRole;
use serde_json::Value;

/// The fenced block that follows `<!-- check: NAME -->` in docs/formats.md.
fn doc_block(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/formats.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let marker = format!("<!-- check: {name} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in docs/formats.md"));
    let rest = &doc[start + marker.len()..];
    let open = rest.find("```").unwrap();
    let body_start = open + rest[open..].find('\n').unwrap() + 1;
    let len = rest[body_start..].find("\n```").unwrap();
    rest[body_start..body_start + len + 1].to_string()
}

fn compiled<T: Manifest>(toml_block: &str) -> (T, Vec<u8>) {
    let m = T::from_toml(&doc_block(toml_block)).unwrap_or_else(|e| panic!("{toml_block}: {e}"));
    let bytes = m.to_canonical_json().unwrap();
    (m, bytes)
}

fn assert_same_json(bytes: &[u8], json_block: &str) {
    let shown: Value = serde_json::from_str(&doc_block(json_block))
        .unwrap_or_else(|e| panic!("{json_block}: {e}"));
    let actual: Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(
        actual,
        shown,
        "{json_block} differs from the compiled manifest:\n{}",
        String::from_utf8_lossy(bytes)
    );
}

fn assert_exact(bytes: &[u8], json_block: &str) {
    assert_eq!(
        String::from_utf8(bytes.to_vec()).unwrap(),
        doc_block(json_block).trim_end(),
        "{json_block}"
    );
}

#[test]
fn docs_group_example_compiles_to_the_bytes_shown() {
    let (g, bytes) = compiled::<GroupManifest>("group-toml");
    assert_exact(&bytes, "group-canonical");
    assert_eq!(GroupManifest::from_json(&bytes).unwrap(), g);
}

#[test]
fn docs_campaign_examples_compile_to_the_json_shown() {
    let (c, bytes) = compiled::<CampaignManifest>("campaign-toml");
    assert_same_json(&bytes, "campaign-json");
    assert_eq!(CampaignManifest::from_json(&bytes).unwrap(), c);
    let (_, bytes) = compiled::<CampaignManifest>("forced-toml");
    assert_exact(&bytes, "forced-json");
    let (admin, bytes) = compiled::<CampaignManifest>("admin-toml");
    assert_exact(&bytes, "admin-json");
    assert_eq!(admin.consent.administrator_keys.len(), 1);
}

#[test]
fn docs_assignment_example_is_what_the_hashing_rules_give() {
    let (bin, bytes) = compiled::<AssignmentBin>("assign-toml");
    assert_exact(&bytes, "assign-json");
    assert_eq!(bin.bin, assign_bin_for("kiosk-0042", 2));
    let a = bin
        .lookup("kiosk-0042")
        .expect("kiosk-0042 is in the example");
    assert!(a.canary && a.campaigns.contains("fleet-owner-upgrade"));
    assert_eq!(bin.lookup("kiosk-0203").unwrap().group, "kiosk-eu");
    assert_eq!(
        bin.entry_key("kiosk-0042"),
        salted_device_hash(&bin.salt, "kiosk-0042")
    );
}

#[test]
fn docs_capabilities_example_is_what_the_delegation_carries() {
    let caps = Capabilities::from_toml(&doc_block("capabilities-toml")).unwrap();
    let role: Value = serde_json::from_str(&doc_block("capabilities-json")).unwrap();
    assert_eq!(role["petrel_capabilities"], caps.to_value());
    let role: DelegatedRole = serde_json::from_value(role).unwrap();
    assert_eq!(role.capabilities().unwrap(), Some(caps));
}

#[test]
fn docs_profile_and_token_examples_are_right() {
    let p = DeviceProfile::from_toml(&doc_block("profile-toml")).unwrap();
    assert_eq!(p.utc_offset_minutes, 60);
    assert_eq!(p.inventory.len(), 2);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/formats.md"))
        .unwrap();
    assert!(doc.contains(&AdminConsentToken::device_hash("kiosk-0042")));
}

#[test]
fn notices_with_line_breaks_publish_as_valid_json() {
    // OLPC canonical JSON would write the line break raw, which no JSON parser accepts.
    let mut c = campaign();
    c.notice.get_mut("en").unwrap().body =
        "line one\nline two\ttabbed \u{1} \"quoted\" \\ é".into();
    let bytes = c.to_canonical_json().unwrap();
    assert!(!bytes.contains(&b'\n'));
    assert_eq!(CampaignManifest::from_json(&bytes).unwrap(), c);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(canonical_json_value(&v).unwrap(), bytes);
}

#[test]
fn ecdsa_administrator_keys_round_trip() {
    let (k, _) = PrivateKey::generate_ecdsa_p256().unwrap();
    let mut c = campaign();
    c.consent.policy = petrel_client::manifest::ConsentPolicy::Administrator;
    c.consent.administrator_keys = BTreeMap::from([(k.key_id().clone(), k.public_key().clone())]);
    let bytes = c.to_canonical_json().unwrap();
    assert_eq!(CampaignManifest::from_json(&bytes).unwrap(), c);
    // A key filed under another key's id is refused.
    let (other, _) = PrivateKey::generate_ed25519().unwrap();
    c.consent.administrator_keys =
        BTreeMap::from([(other.key_id().clone(), k.public_key().clone())]);
    let e = c.validate().unwrap_err();
    assert!(e.to_string().contains("the key's id is"), "{e}");
}

#[test]
fn json_parsing_is_strict() {
    let good = campaign().to_canonical_json().unwrap();
    let mut v: Value = serde_json::from_slice(&good).unwrap();
    v["schema_version"] = 2.into();
    let e = CampaignManifest::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(e.to_string().contains("unknown schema version 2"), "{e}");
    let mut v: Value = serde_json::from_slice(&good).unwrap();
    v["consent"]["silently"] = true.into();
    let e = CampaignManifest::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(e.to_string().contains("unknown field `silently`"), "{e}");
    let mut v: Value = serde_json::from_slice(&good).unwrap();
    v["kind"] = "group".into();
    assert!(
        CampaignManifest::from_json(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .has_field("kind")
    );
    assert!(GroupManifest::from_json(&good)
        .unwrap_err()
        .has_field("kind"));
    // A float anywhere is refused (canonical JSON has none).
    let mut v: Value = serde_json::from_slice(&good).unwrap();
    v["revision"] = serde_json::json!(3.5);
    assert!(CampaignManifest::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
    // Pretty-printed JSON is still accepted: only the content matters.
    let pretty =
        serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&good).unwrap()).unwrap();
    assert_eq!(CampaignManifest::from_json(&pretty).unwrap(), campaign());
    // Oversized input is refused before parsing.
    let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
    assert!(CampaignManifest::from_json(&huge)
        .unwrap_err()
        .to_string()
        .contains("limit"));
}

#[test]
fn toml_errors_point_at_every_field() {
    let toml = r#"
kind = "campaign"
schema_version = 1
id = "bad id"
revision = 0
state = "active"
method = "forced"

[notice.english]
title = ""
body = "b"
severity = "info"

[consent]
policy = "none"
max_postpones = 2

[payload]
group = { id = "g", revision = 1 }
apps = { "x" = "1" }

[schedule]
not_before = 2030-03-02T00:00:00Z
not_after = 2030-03-01T00:00:00Z
apply_window = { start = "02:00", end = "02:00" }

[[rollout.waves]]
share_bp = 20000
start = 2030-03-01T00:00:00Z
"#;
    let e = CampaignManifest::from_toml(toml).unwrap_err();
    for field in [
        "id",
        "revision",
        "forced_from",
        "notice.english",
        "notice.english.title",
        "consent.max_postpones",
        "payload",
        "schedule.not_after",
        "schedule.apply_window",
        "rollout.waves[0].share_bp",
    ] {
        assert!(e.has_field(field), "no problem for {field} in:\n{e}");
    }
}

#[test]
fn toml_type_errors_name_the_line() {
    let e = GroupManifest::from_toml(
        "kind = \"group\"\nschema_version = 1\nid = \"g\"\nrevision = \"eight\"\n",
    )
    .unwrap_err();
    assert!(e.problems[0].field.starts_with("line 4"), "{e}");
    assert!(e.to_string().contains("revision = \"eight\""), "{e}");
    let e = CampaignManifest::from_toml(
        "kind = \"campaign\"\nschema_version = 1\nstate = \"paused\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("paused"), "{e}");
}

#[test]
fn kinds_have_their_namespaces() {
    assert_eq!(ManifestKind::Group.namespace(), "groups/");
    assert_eq!(ManifestKind::Campaign.namespace(), "campaigns/");
    assert_eq!(ManifestKind::Assign.namespace(), "assign/");
    assert!(group()
        .target_path()
        .starts_with(ManifestKind::Group.namespace()));
    assert!(campaign()
        .target_path()
        .starts_with(ManifestKind::Campaign.namespace()));
}

#[test]
fn an_entry_must_be_published_under_its_own_name() {
    let bytes = campaign().to_canonical_json().unwrap();
    let e: Result<CampaignEntry, _> =
        Entry::from_bytes("campaigns/other.json", &bytes, CapabilityChain::top_level());
    assert!(e.unwrap_err().contains("another name"));
    let ok: CampaignEntry = Entry::from_bytes(
        "campaigns/player-2.1.json",
        &bytes,
        CapabilityChain::top_level(),
    )
    .unwrap();
    assert_eq!(ok.sha256.0, petrel_client::manifest::sha256_hex(&bytes));
}

#[test]
fn capabilities_are_strict_too() {
    assert!(Capabilities::from_toml("schema_version = 1\nmay_fly = true\n").is_err());
    assert!(Capabilities::from_toml("schema_version = 2\n").is_err());
    assert!(
        Capabilities::from_toml("schema_version = 1\ngroups = [\"a b\"]\n")
            .unwrap_err()
            .has_field("groups")
    );
    assert!(
        Capabilities::from_toml("schema_version = 1\nconsent_policies = [\"silent\"]\n").is_err()
    );
    assert!(Capabilities::from_toml("schema_version = 1\n")
        .unwrap()
        .is_unrestricted());
}

#[test]
fn docs_gates_example_parses_and_matches_the_published_json_shown() {
    #[derive(serde::Deserialize)]
    struct Doc {
        rollout: petrel_client::manifest::Rollout,
    }
    let toml_doc: Doc = toml::from_str(&doc_block("gates-toml")).unwrap();
    let json_doc: Doc = serde_json::from_str(&doc_block("gates-json")).unwrap();
    let (from_toml, published) = (toml_doc.rollout, json_doc.rollout);
    assert_eq!(
        from_toml.gates, published.gates,
        "the gates written in the JSON"
    );
    assert_eq!(from_toml.waves, published.waves);
    assert!(published.canary_passed && published.opened.len() == 1);
    // Both are valid rollouts of a campaign; the JSON is what a device reads.
    for r in [from_toml, published] {
        let mut c = campaign();
        c.rollout = r;
        c.validate().unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn docs_campaign_index_example_is_a_valid_index_in_canonical_form() {
    let block = doc_block("index-json");
    let index = petrel_client::manifest::CampaignIndex::from_json(block.trim().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(index.group.as_deref(), Some("kiosk-eu"));
    assert_eq!(index.target_path(), "index/group-kiosk-eu.json");
    assert_exact(&index.to_canonical_json().unwrap(), "index-json");
}

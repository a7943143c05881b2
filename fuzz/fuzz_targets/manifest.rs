//! Manifest and capability parsing (`manifest`): group, campaign and assignment-bin
//! manifests from published JSON and from authored TOML, and delegation capabilities
//! (`petrel_capabilities`) from JSON and TOML. Mode byte: bits 0-1 the format (group,
//! campaign, assignment bin, capabilities), bit 2 TOML instead of JSON.
//!
//! Properties: parsing never panics; an accepted manifest compiles to canonical JSON that
//! parses back to the same manifest; capabilities round-trip through their JSON value, and
//! the demo manifests satisfy the intersection of two capabilities exactly when they
//! satisfy both.
#![no_main]

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use petrel_client::manifest::{
    AssignmentBin, CampaignManifest, Capabilities, GroupManifest, Manifest,
};
use petrel_fuzz::{mode, now};

struct Demo {
    campaigns: Vec<CampaignManifest>,
    groups: Vec<GroupManifest>,
    caps: Vec<Capabilities>,
}

fn demo() -> &'static Demo {
    static D: OnceLock<Demo> = OnceLock::new();
    D.get_or_init(|| {
        let campaigns = [
            include_str!("../../examples/demo/campaign-thermostat-1.1.toml"),
            include_str!("../../examples/demo/campaign-thermostat-1.2.toml"),
            include_str!("../../examples/demo/campaign-thermostat-1.3.toml"),
        ]
        .iter()
        .map(|t| CampaignManifest::from_toml(t).expect("demo campaign"))
        .collect();
        let groups = [
            include_str!("../../examples/demo/group-thermostats.toml"),
            include_str!("../../examples/demo/group-thermostats-1.2.toml"),
            include_str!("../../examples/demo/group-thermostats-1.3.toml"),
        ]
        .iter()
        .map(|t| GroupManifest::from_toml(t).expect("demo group"))
        .collect();
        let caps = [
            "schema_version = 1\n",
            "schema_version = 1\nkinds = [\"campaign\", \"group\"]\ngroups = [\"thermostats\"]\n",
            "schema_version = 1\napps = [\"acme.thermostat\"]\nvendors = [\"acme\"]\ndevice_types = [\"thermostat\"]\n",
            "schema_version = 1\nconsent_policies = [\"required\"]\nmethods = [\"normal\"]\nexpires = \"2029-01-01T00:00:00Z\"\n",
        ]
        .iter()
        .map(|t| Capabilities::from_toml(t).expect("capabilities"))
        .collect();
        Demo {
            campaigns,
            groups,
            caps,
        }
    })
}

fn round_trip<M: Manifest + PartialEq + std::fmt::Debug>(m: &M) {
    let json = m
        .to_canonical_json()
        .expect("an accepted manifest compiles");
    let back = M::from_json(&json).expect("a compiled manifest parses");
    assert_eq!(&back, m, "manifest changed through canonical JSON");
    assert_eq!(
        back.to_canonical_json().unwrap(),
        json,
        "compiling is not stable"
    );
}

fn manifest<M: Manifest + PartialEq + std::fmt::Debug>(text: &[u8], toml: bool) -> Option<M> {
    let m = if toml {
        M::from_toml(std::str::from_utf8(text).ok()?).ok()?
    } else {
        M::from_json(text).ok()?
    };
    round_trip(&m);
    Some(m)
}

fn caps_agree(a: &Capabilities, b: &Capabilities, t: DateTime<Utc>) {
    let both = a.intersect(b);
    assert_eq!(both, b.intersect(a), "intersection is not symmetric");
    let d = demo();
    for c in &d.campaigns {
        let each = a.check_campaign(c, t).is_ok() && b.check_campaign(c, t).is_ok();
        assert_eq!(
            both.check_campaign(c, t).is_ok(),
            each,
            "campaign {}: the intersection disagrees with checking each capability",
            c.id
        );
    }
    for g in &d.groups {
        let each = a.check_group(g, t).is_ok() && b.check_group(g, t).is_ok();
        assert_eq!(
            both.check_group(g, t).is_ok(),
            each,
            "group {}: the intersection disagrees with checking each capability",
            g.id
        );
    }
}

fn capabilities(text: &[u8], toml: bool) {
    let caps = if toml {
        let Ok(s) = std::str::from_utf8(text) else {
            return;
        };
        Capabilities::from_toml(s)
    } else {
        let Ok(v) = serde_json::from_slice(text) else {
            return;
        };
        Capabilities::from_value(&v)
    };
    let Ok(caps) = caps else {
        return;
    };
    let back = Capabilities::from_value(&caps.to_value()).expect("capabilities re-parse");
    assert_eq!(back, caps, "capabilities changed through their JSON value");
    let _ = caps.summary();
    let _ = caps.is_unrestricted();
    for other in &demo().caps {
        caps_agree(&caps, other, now());
    }
}

fuzz_target!(|data: &[u8]| {
    let (m, rest) = mode(data);
    let toml = m & 4 != 0;
    match m % 4 {
        0 => {
            if let Some(g) = manifest::<GroupManifest>(rest, toml) {
                let _ = g.target_path();
                let _ = g.versions();
                for caps in &demo().caps {
                    let _ = caps.check_group(&g, now());
                }
            }
        }
        1 => {
            if let Some(c) = manifest::<CampaignManifest>(rest, toml) {
                let _ = c.target_groups();
                let _ = c.notice_for(Some("en"));
                let _ = c.notice_for(None);
                for caps in &demo().caps {
                    let _ = caps.check_campaign(&c, now());
                }
            }
        }
        2 => {
            if let Some(b) = manifest::<AssignmentBin>(rest, toml) {
                let _ = b.target_path();
                let _ = b.groups();
                let _ = b.lookup("device-1");
                for caps in &demo().caps {
                    let _ = caps.check_assignment(&b, now());
                }
            }
        }
        _ => capabilities(rest, toml),
    }
});

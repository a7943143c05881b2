//! Rollout waves that select devices by attribute (region, channel, hardware, …) as well as
//! by share: which wave a device is in, when it opens, what a device in no wave does, how
//! the engine explains it, what validation refuses, and that waves by share alone mean what
//! they always meant.

mod decide_common;

use std::collections::BTreeSet;

use decide_common::*;
use petrel_client::decide::applicability::match_selectors;
use petrel_client::decide::rollout::{position, seed_bp, wave_seed, Position};
use petrel_client::decide::{decide, Action, DeviceProfile, LocalState, Status, Verdict};
use petrel_client::manifest::{
    AssignmentBin, CampaignManifest, CapabilityChain, Manifest, UtcTime, Wave,
};
use proptest::prelude::*;

const ID: &str = "player-2.1";

fn set(values: &[&str]) -> Option<BTreeSet<String>> {
    Some(values.iter().map(|v| v.to_string()).collect())
}

fn at(s: &str) -> UtcTime {
    UtcTime::parse(s).unwrap()
}

fn with_waves(waves: Vec<Wave>) -> CampaignManifest {
    let mut c = campaign();
    c.rollout.waves = waves;
    c.validate()
        .unwrap_or_else(|e| panic!("the test campaign is invalid: {e}"));
    c
}

fn region_wave(regions: &[&str], start: &str) -> Wave {
    Wave {
        regions: set(regions),
        ..Wave::at(at(start))
    }
}

fn status_for(
    c: &CampaignManifest,
    p: &DeviceProfile,
    when: chrono::DateTime<chrono::Utc>,
) -> Status {
    let v = view_for(&p.id, vec![c.clone()], assignment());
    decide(&v, p, &LocalState::default(), when).campaigns[0]
        .status
        .clone()
}

fn explain_for(
    c: &CampaignManifest,
    p: &DeviceProfile,
    when: chrono::DateTime<chrono::Utc>,
) -> String {
    let v = view_for(&p.id, vec![c.clone()], assignment());
    decide(&v, p, &LocalState::default(), when).explain()
}

/// The 0-based wave of the device, or `None` when no wave takes it.
fn wave_index(c: &CampaignManifest, p: &DeviceProfile) -> Option<usize> {
    match position(c, p, false) {
        Position::Wave { index, .. } => Some(index),
        _ => None,
    }
}

// ---- matching, one selector kind at a time ---------------------------------------------

#[test]
fn each_wave_selector_kind_matches_like_applies_to() {
    let device = profile(); // kiosk, vendor acme, eu-west, stable, display:1080p
    let mut licensed = profile();
    licensed.licences = BTreeSet::from(["player-pro".to_string()]);
    licensed.class = Some("indoor".into());
    let start = at("2030-03-02T00:00:00Z");
    type Setter = fn(&mut Wave, Option<BTreeSet<String>>);
    let kinds: [(&str, Setter, &[&str], &[&str]); 8] = [
        (
            "regions",
            |w, v| w.regions = v,
            &["eu-west", "eu-central"],
            &["us-east"],
        ),
        ("channels", |w, v| w.channels = v, &["stable"], &["beta"]),
        (
            "hardware_any",
            |w, v| w.hardware_any = v,
            &["modem:em06", "display:1080p"],
            &["modem:em06"],
        ),
        (
            "hardware_all",
            |w, v| w.hardware_all = v,
            &["display:1080p"],
            &["display:1080p", "modem:em06"],
        ),
        (
            "device_types",
            |w, v| w.device_types = v,
            &["kiosk"],
            &["printer"],
        ),
        ("vendors", |w, v| w.vendors = v, &["acme"], &["globex"]),
        (
            "device_classes",
            |w, v| w.device_classes = v,
            &["indoor"],
            &["outdoor"],
        ),
        (
            "licences",
            |w, v| w.licences = v,
            &["player-pro"],
            &["player-lite"],
        ),
    ];
    for (kind, setter, hit, miss) in kinds {
        for (values, expect) in [(hit, true), (miss, false)] {
            let mut w = Wave::at(start);
            setter(&mut w, set(values));
            let mut c = campaign();
            c.applies_to.device_types.clear();
            c.rollout.waves = vec![w.clone()];
            c.validate().unwrap();
            let p = if matches!(kind, "licences" | "device_classes") {
                &licensed
            } else {
                &device
            };
            // The wave's judgement is the one applies_to would give for the same lists.
            let same_as_applies_to = match_selectors(&w.selectors(), p, None, ID).is_ok();
            assert_eq!(same_as_applies_to, expect, "{kind} {values:?}");
            assert_eq!(wave_index(&c, p) == Some(0), expect, "{kind} {values:?}");
        }
    }
    // A device without the attribute matches no list of it.
    let mut no_region = profile();
    no_region.region = None;
    let c = with_waves(vec![region_wave(&["eu-west"], "2030-03-02T00:00:00Z")]);
    assert_eq!(wave_index(&c, &no_region), None);
    match status_for(&c, &no_region, now()) {
        Status::NotInRollout {
            not_in_any_wave: Some(why),
            ..
        } => assert_eq!(
            why,
            "the device has no region, and every wave selects by regions"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_selector_of_a_wave_must_match() {
    let w = Wave {
        regions: set(&["eu-west"]),
        channels: set(&["beta"]),
        ..Wave::at(at("2030-03-02T00:00:00Z"))
    };
    let c = with_waves(vec![w]);
    assert_eq!(wave_index(&c, &profile()), None, "stable is not beta");
    let mut beta = profile();
    beta.channel = Some("beta".into());
    assert_eq!(wave_index(&c, &beta), Some(0));
}

// ---- the first matching wave -----------------------------------------------------------

#[test]
fn a_device_is_in_the_first_wave_whose_selectors_match_it() {
    let c = with_waves(vec![
        region_wave(&["us-east"], "2030-03-02T00:00:00Z"),
        region_wave(&["eu-west", "eu-central"], "2030-03-03T00:00:00Z"),
        Wave {
            channels: set(&["stable"]),
            ..Wave::at(at("2030-03-04T00:00:00Z"))
        },
        Wave::at(at("2030-03-05T00:00:00Z")),
    ]);
    // eu-west and stable: wave 2 takes it, although wave 3 matches too.
    assert_eq!(wave_index(&c, &profile()), Some(1));
    // ap-south and stable: wave 3.
    let mut ap = profile();
    ap.region = Some("ap-south".into());
    assert_eq!(wave_index(&c, &ap), Some(2));
    // ap-south and beta: the catch-all wave 4.
    ap.channel = Some("beta".into());
    assert_eq!(wave_index(&c, &ap), Some(3));
    let v = view_for(DEVICE, vec![c.clone()], assignment());
    let d = decide(&v, &profile(), &LocalState::default(), now());
    let notes: Vec<&str> = d.campaigns[0]
        .reasons
        .iter()
        .filter(|r| r.rule == "rollout" && r.verdict == Verdict::Note)
        .map(|r| r.detail.as_str())
        .collect();
    assert_eq!(
        notes,
        ["not in wave 1 (regions: us-east): region eu-west is not one of [us-east]"]
    );
}

// ---- share within a selector wave ------------------------------------------------------

#[test]
fn a_share_in_a_selector_wave_takes_only_the_matching_devices_below_it() {
    let c = with_waves(vec![
        Wave {
            share_bp: Some(2000),
            ..region_wave(&["eu-west"], "2030-03-02T00:00:00Z")
        },
        region_wave(&["eu-west"], "2030-03-20T00:00:00Z"),
    ]);
    let low = profile_for(&device_with_seed(ID, 0, 2000));
    let high = profile_for(&device_with_seed(ID, 2000, 10_000));
    assert_eq!(wave_index(&c, &low), Some(0));
    assert_eq!(wave_index(&c, &high), Some(1));
    // A low seed outside the region is in no wave: the share applies among the matching.
    let mut low_us = low.clone();
    low_us.region = Some("us-east".into());
    assert_eq!(wave_index(&c, &low_us), None);
    assert!(explain_for(&c, &low, now()).contains(&format!(
        "wave 1 (regions: eu-west; share 20 %): region eu-west; the device's seed {} is below its share 20 %; open since 2030-03-02T00:00:00Z",
        petrel_client::decide::rollout::percent(seed_bp(wave_seed(&low.id, ID)))
    )));

    // Only a share-limited wave matching the region: devices beyond it are in no wave, and
    // the status says the seed is the reason.
    let c = with_waves(vec![Wave {
        share_bp: Some(2000),
        ..region_wave(&["eu-west"], "2030-03-02T00:00:00Z")
    }]);
    match status_for(&c, &high, now()) {
        Status::NotInRollout {
            not_in_any_wave: Some(why),
            ..
        } => assert!(
            why.contains("is not below the share of any wave it matches: wave 1 (regions: eu-west; share 20 %)"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
}

// ---- devices in no wave ----------------------------------------------------------------

#[test]
fn a_device_in_no_wave_installs_nothing_and_the_explanation_says_why() {
    let c = with_waves(vec![
        region_wave(&["us-east"], "2030-03-02T00:00:00Z"),
        region_wave(&["us-west", "ap-south"], "2030-03-03T00:00:00Z"),
    ]);
    let p = profile();
    let v = view_for(DEVICE, vec![c.clone()], assignment());
    // Long after every wave opened, still nothing.
    let when = t("2030-03-25T00:00:00Z");
    let d = decide(&v, &p, &LocalState::default(), when);
    let cd = &d.campaigns[0];
    assert_eq!(cd.status.kind(), "not_in_rollout");
    assert_eq!(
        cd.status.to_string(),
        "not in the rollout: not in any wave: region eu-west matches no wave's regions"
    );
    assert!(cd.status.is_settled());
    assert!(!cd.status.is_reportable());
    assert!(!cd.status.allows_download() && !cd.status.allows_install());
    for a in d.actions() {
        assert!(
            !matches!(a, Action::Install { .. } | Action::Download { .. }),
            "{a:?}"
        );
    }
    let explain = d.explain();
    assert!(
        explain.contains("STOP rollout          not in any wave: region eu-west matches no wave's regions; nothing is downloaded or installed"),
        "{explain}"
    );
    assert!(
        explain.contains("not in wave 2 (regions: ap-south, us-west): region eu-west is not one of [ap-south, us-west]"),
        "{explain}"
    );
}

#[test]
fn a_device_in_no_wave_for_different_reasons_gets_each_wave_named() {
    let c = with_waves(vec![
        region_wave(&["us-east"], "2030-03-02T00:00:00Z"),
        Wave {
            channels: set(&["beta"]),
            ..Wave::at(at("2030-03-03T00:00:00Z"))
        },
    ]);
    match status_for(&c, &profile(), now()) {
        Status::NotInRollout {
            not_in_any_wave: Some(why),
            ..
        } => assert_eq!(
            why,
            "wave 1 (regions: us-east): region eu-west is not one of [us-east]; wave 2 (channels: beta): channel stable is not one of [beta]"
        ),
        other => panic!("{other:?}"),
    }
}

// ---- ordering and opening --------------------------------------------------------------

#[test]
fn selector_waves_open_in_order_each_at_its_start() {
    let c = with_waves(vec![
        region_wave(&["eu-central"], "2030-03-02T00:00:00Z"),
        region_wave(&["eu-west", "eu-north"], "2030-03-12T08:00:00Z"),
    ]);
    let west = profile();
    let mut central = profile();
    central.region = Some("eu-central".into());
    assert!(matches!(
        status_for(&c, &central, now()),
        Status::ReadyToDownload { .. }
    ));
    assert_eq!(
        status_for(&c, &west, now()),
        Status::WaitingForWave {
            wave: 2,
            opens_at: t("2030-03-12T08:00:00Z")
        }
    );
    let explain = explain_for(&c, &west, now());
    assert!(
        explain.contains(
            "wave 2 (regions: eu-north, eu-west): region eu-west; opens at 2030-03-12T08:00:00Z"
        ),
        "{explain}"
    );
    assert!(matches!(
        status_for(&c, &west, t("2030-03-12T08:00:00Z")),
        Status::ReadyToDownload { .. }
    ));
    assert!(explain_for(&c, &west, t("2030-03-13T00:00:00Z")).contains(
        "wave 2 (regions: eu-north, eu-west): region eu-west; open since 2030-03-12T08:00:00Z"
    ));
    // A wave cannot open before the campaign starts.
    assert_eq!(
        status_for(&c, &central, t("2030-02-01T00:00:00Z")),
        Status::NotStarted {
            starts_at: t("2030-03-01T00:00:00Z")
        }
    );
    // Canaries go first, whatever the waves select.
    let mut canary_first = c.clone();
    canary_first.rollout.canary = true;
    let mut us = profile();
    us.region = Some("us-east".into());
    assert_eq!(
        position(&canary_first, &us, true),
        Position::Canary {
            opens_at: Some(t("2030-03-01T00:00:00Z"))
        }
    );
    assert_eq!(position(&canary_first, &us, false), Position::AfterCanaries);
}

// ---- validation ------------------------------------------------------------------------

const BASE: &str = r#"
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
regions = ["eu-west", "eu-central", "us-east"]

[payload]
group = { id = "kiosk-eu", revision = 8 }
"#;

fn with_rollout(rollout: &str) -> Result<CampaignManifest, String> {
    CampaignManifest::from_toml(&format!("{BASE}\n{rollout}")).map_err(|e| e.to_string())
}

#[test]
fn wave_validation_refuses_what_cannot_work() {
    let cases: [(&str, &str); 9] = [
        (
            "[[rollout.waves]]\nregion = [\"eu-west\"]\nstart = 2030-03-02T00:00:00Z\n",
            "unknown field `region`",
        ),
        (
            "[[rollout.waves]]\ninstalled = { \"acme.player\" = [] }\nstart = 2030-03-02T00:00:00Z\n",
            "unknown field `installed`",
        ),
        (
            "[[rollout.waves]]\nregions = []\nstart = 2030-03-02T00:00:00Z\n",
            "rollout.waves[0].regions: an empty list selects no device",
        ),
        (
            "[[rollout.waves]]\nregions = [\"Eu West\"]\nstart = 2030-03-02T00:00:00Z\n",
            "rollout.waves[0].regions",
        ),
        (
            "[[rollout.waves]]\nstart = 2030-03-02T00:00:00Z\n\n[[rollout.waves]]\nregions = [\"eu-west\"]\nstart = 2030-03-03T00:00:00Z\n",
            "rollout.waves[1]: wave 2 is unreachable: wave 1 has no selectors and no share limit, so it takes every device no earlier wave took",
        ),
        (
            "[[rollout.waves]]\nregions = [\"eu-west\", \"eu-central\"]\nstart = 2030-03-02T00:00:00Z\n\n[[rollout.waves]]\nregions = [\"eu-west\"]\nshare_bp = 5000\nstart = 2030-03-03T00:00:00Z\n",
            "wave 2 is unreachable: wave 1 (regions: eu-central, eu-west) comes first and takes every device wave 2 (regions: eu-west; share 50 %) would select",
        ),
        (
            "[[rollout.waves]]\nregions = [\"eu-west\"]\nstart = 2030-03-05T00:00:00Z\n\n[[rollout.waves]]\nregions = [\"eu-central\"]\nstart = 2030-03-03T00:00:00Z\n",
            "rollout.waves[1].start: 2030-03-03T00:00:00Z is before the previous wave's start",
        ),
        (
            "[[rollout.waves]]\nregions = [\"ap-south\"]\nstart = 2030-03-02T00:00:00Z\n",
            "rollout.waves[0].regions: wave 1 can never select a device: none of its regions is in applies_to.regions",
        ),
        (
            "[[rollout.waves]]\nregions = [\"eu-west\"]\nshare_bp = 0\nstart = 2030-03-02T00:00:00Z\n",
            "rollout.waves[0].share_bp: 0 is not in 1..=10000",
        ),
    ];
    for (rollout, expect) in cases {
        let e = with_rollout(rollout).expect_err(rollout);
        assert!(e.contains(expect), "{rollout}\n=> {e}");
    }
    // Shares need not grow across waves that select differently.
    let ok = with_rollout(
        "[[rollout.waves]]\nregions = [\"eu-west\"]\nstart = 2030-03-02T00:00:00Z\n\n\
         [[rollout.waves]]\nshare_bp = 1000\nstart = 2030-03-03T00:00:00Z\n\n\
         [[rollout.waves]]\nchannels = [\"stable\"]\nshare_bp = 5000\nstart = 2030-03-04T00:00:00Z\n\n\
         [[rollout.waves]]\nstart = 2030-03-05T00:00:00Z\n",
    )
    .unwrap();
    assert_eq!(ok.rollout.waves.len(), 4);
    assert_eq!(ok.rollout.waves[1].share_bp, Some(1000));
    assert!(ok.rollout.waves[3].is_catch_all());
}

/// The fenced block after `<!-- check: NAME -->` in docs/formats.md.
fn doc_block(name: &str) -> String {
    let doc = include_str!("../../docs/formats.md");
    let at = doc
        .find(&format!("<!-- check: {name} -->"))
        .unwrap_or_else(|| panic!("no {name} block"));
    let rest = &doc[at..];
    let open = rest.find("```").unwrap();
    let body = &rest[open..];
    let start = body.find('\n').unwrap() + 1;
    let end = body[start..].find("```").unwrap();
    body[start..start + end].to_string()
}

#[test]
fn the_documented_selector_waves_compile_to_the_json_shown() {
    let c = with_rollout(&doc_block("waves-toml")).unwrap();
    let bytes = c.to_canonical_json().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let shown: serde_json::Value = serde_json::from_str(&doc_block("waves-json")).unwrap();
    assert_eq!(v["rollout"], shown);
    // And the documented example places devices as the text says.
    let mut beta = profile();
    beta.region = Some("us-east".into());
    beta.channel = Some("beta".into());
    beta.hardware.insert("modem:em06".into());
    assert_eq!(wave_index(&c, &beta), Some(2));
    beta.hardware.clear();
    assert_eq!(wave_index(&c, &beta), Some(3));
}

// ---- backward compatibility ------------------------------------------------------------

const SHARE_ONLY: &str = "[rollout]\nwaves = [\n  { share_bp = 100, start = 2030-03-02T00:00:00Z },\n  { share_bp = 2500, start = 2030-03-06T00:00:00Z },\n  { share_bp = 10000, start = 2030-03-10T00:00:00Z },\n]\n";

#[test]
fn share_only_waves_mean_what_they_always_meant() {
    let c = with_rollout(SHARE_ONLY).unwrap();
    assert!(!c.rollout.has_selectors());
    assert_eq!(
        c.rollout.waves[1],
        Wave::share(2500, at("2030-03-06T00:00:00Z"))
    );
    // The compiled bytes carry exactly the keys they always did.
    let json = String::from_utf8(c.to_canonical_json().unwrap()).unwrap();
    assert!(
        json.contains(r#""rollout":{"waves":[{"share_bp":100,"start":"2030-03-02T00:00:00Z"},{"share_bp":2500,"start":"2030-03-06T00:00:00Z"},{"share_bp":10000,"start":"2030-03-10T00:00:00Z"}]}"#),
        "{json}"
    );
    assert_eq!(CampaignManifest::from_json(json.as_bytes()).unwrap(), c);
    // The wave is the first whose share is above the seed, for every device.
    for i in 0..300 {
        let p = profile_for(&format!("dev-{i}"));
        let bp = seed_bp(wave_seed(&p.id, &c.id));
        let expect = [100u32, 2500, 10_000].iter().position(|s| bp < *s);
        assert_eq!(wave_index(&c, &p), expect, "{}", p.id);
    }
    // The explanation and the statuses read as before.
    let mut c = c;
    c.rollout.waves.pop();
    let second = profile_for(&device_with_seed(ID, 100, 2500));
    let beyond = profile_for(&device_with_seed(ID, 2500, 10_000));
    let explain = explain_for(&c, &second, now());
    assert!(
        explain.contains(&format!(
            "the device's seed ({}) puts it in wave 2, open since 2030-03-06T00:00:00Z",
            petrel_client::decide::rollout::percent(seed_bp(wave_seed(&second.id, ID)))
        )),
        "{explain}"
    );
    assert!(!explain.contains("not in wave"), "{explain}");
    match status_for(&c, &beyond, now()) {
        s @ Status::NotInRollout {
            covered_bp: 2500,
            not_in_any_wave: None,
            ..
        } => assert!(
            s.to_string()
                .starts_with("not in the rollout yet: the device's seed is at "),
            "{s}"
        ),
        other => panic!("{other:?}"),
    }
    let e = with_rollout("[rollout]\nwaves = [\n  { share_bp = 100, start = 2030-03-02T00:00:00Z },\n  { share_bp = 100, start = 2030-03-06T00:00:00Z },\n]\n").unwrap_err();
    assert!(
        e.contains("rollout.waves[1].share_bp: 100 must be larger than the previous wave's 100 (shares are cumulative)"),
        "{e}"
    );
}

// ---- properties ------------------------------------------------------------------------

const REGIONS: [&str; 3] = ["eu-west", "eu-central", "us-east"];
const CHANNELS: [&str; 2] = ["stable", "beta"];
const HARDWARE: [&str; 3] = ["display:1080p", "modem:em06", "wifi:ax200"];

fn subset(pool: &'static [&'static str]) -> impl Strategy<Value = Option<BTreeSet<String>>> {
    prop::option::of(
        prop::sample::subsequence(pool.to_vec(), 1..=pool.len())
            .prop_map(|v| v.into_iter().map(str::to_string).collect()),
    )
}

fn arb_wave() -> impl Strategy<Value = Wave> {
    (
        subset(&REGIONS),
        subset(&CHANNELS),
        subset(&HARDWARE),
        prop::option::of(1u32..=10_000),
        0i64..30,
    )
        .prop_map(|(regions, channels, hardware_any, share_bp, day)| Wave {
            share_bp,
            regions,
            channels,
            hardware_any,
            ..Wave::at(t("2030-03-01T00:00:00Z") + chrono::Duration::days(day))
        })
}

fn arb_waves() -> impl Strategy<Value = Vec<Wave>> {
    prop::collection::vec(arb_wave(), 1..6).prop_map(|mut ws| {
        ws.sort_by_key(|w| w.start);
        ws
    })
}

fn arb_profile() -> impl Strategy<Value = DeviceProfile> {
    (
        0u32..100_000,
        prop::option::of(prop::sample::select(REGIONS.to_vec())),
        prop::option::of(prop::sample::select(CHANNELS.to_vec())),
        prop::sample::subsequence(HARDWARE.to_vec(), 0..=HARDWARE.len()),
    )
        .prop_map(|(n, region, channel, hardware)| DeviceProfile {
            id: format!("dev-{n}"),
            device_type: "kiosk".into(),
            region: region.map(str::to_string),
            channel: channel.map(str::to_string),
            hardware: hardware.into_iter().map(str::to_string).collect(),
            ..profile()
        })
}

/// Whether `w` selects `p`, worked out here from the definition in docs/formats.md.
fn selects(w: &Wave, p: &DeviceProfile, campaign: &str) -> bool {
    let one_of = |l: &Option<BTreeSet<String>>, v: &Option<String>| {
        l.as_ref()
            .is_none_or(|l| v.as_ref().is_some_and(|v| l.contains(v)))
    };
    one_of(&w.regions, &p.region)
        && one_of(&w.channels, &p.channel)
        && w.hardware_any
            .as_ref()
            .is_none_or(|l| !l.is_disjoint(&p.hardware))
        && w.share_bp
            .is_none_or(|bp| seed_bp(wave_seed(&p.id, campaign)) < bp)
}

/// The device's own bin, also holding other devices (ids derived from `others` so that they
/// fall in the same bin), assigned to the same group, some of them canaries.
fn shared_bin(device: &str, others: &[DeviceProfile]) -> AssignmentBin {
    let mut b = AssignmentBin::new(petrel_client::manifest::assign_bin_for(device, 2), SALT);
    b.revision = 5;
    b.insert(device, assignment()).unwrap();
    for (i, o) in others.iter().enumerate() {
        let id = (0..100_000)
            .map(|k| format!("{}-{k}", o.id))
            .find(|id| b.holds(id))
            .expect("some id falls in the bin");
        let mut a = assignment();
        a.canary = i % 2 == 0;
        b.insert(&id, a).unwrap();
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A device is in at most one wave: the first that selects it, and none before it does.
    /// The wave is computed from the device alone: deciding for it among any other devices
    /// gives the same wave and the same rollout reasoning.
    #[test]
    fn every_device_is_in_at_most_one_wave_and_its_wave_ignores_other_devices(
        waves in arb_waves(),
        device in arb_profile(),
        others in prop::collection::vec(arb_profile(), 0..8),
    ) {
        let mut c = campaign();
        c.applies_to.device_types.clear();
        c.rollout.waves = waves;
        let members: Vec<usize> = (0..c.rollout.waves.len())
            .filter(|i| selects(&c.rollout.waves[*i], &device, &c.id)
                && !(0..*i).any(|j| selects(&c.rollout.waves[j], &device, &c.id)))
            .collect();
        prop_assert!(members.len() <= 1);
        prop_assert_eq!(wave_index(&c, &device), members.first().copied());
        if members.is_empty() {
            let by_selector = c.rollout.has_selectors();
            let is_no_wave = matches!(position(&c, &device, false), Position::NoWave { .. });
            let is_beyond = matches!(position(&c, &device, false), Position::Beyond { .. });
            let expected = if by_selector { is_no_wave } else { is_beyond };
            prop_assert!(expected);
        }
        // Positions computed for a whole fleet, in any order, are each device's own.
        let mut fleet: Vec<&DeviceProfile> = others.iter().collect();
        fleet.push(&device);
        let forward: Vec<Position> = fleet.iter().map(|p| position(&c, p, false)).collect();
        let backward: Vec<Position> = fleet.iter().rev().map(|p| position(&c, p, false)).collect();
        prop_assert_eq!(forward.iter().rev().cloned().collect::<Vec<_>>(), backward);
        prop_assert_eq!(forward.last().unwrap(), &position(&c, &device, false));

        // Through the engine: the device's bin alone, or shared with other devices.
        if c.validate().is_ok() {
            let alone = view_for(&device.id, vec![c.clone()], assignment());
            let mut crowded = alone.clone();
            let bin = shared_bin(&device.id, &others);
            let bytes = bin.to_canonical_json().unwrap();
            crowded.assignment = Some(
                petrel_client::decide::Entry::from_bytes(
                    &bin.target_path(), &bytes, CapabilityChain::single("assign", None),
                ).unwrap(),
            );
            let when = t("2030-03-20T00:00:00Z");
            let st = LocalState::default();
            let a = decide(&alone, &device, &st, when);
            let b = decide(&crowded, &device, &st, when);
            prop_assert_eq!(&a.campaigns[0].status, &b.campaigns[0].status);
            let rollout = |d: &petrel_client::decide::Decision| d.campaigns[0].reasons.iter()
                .filter(|r| r.rule == "rollout").cloned().collect::<Vec<_>>();
            prop_assert_eq!(rollout(&a), rollout(&b));
        }
    }
}

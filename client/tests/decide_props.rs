//! Properties of the decision engine and its building blocks, over generated campaigns,
//! groups, inventories, consent histories and instants.

mod decide_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use chrono::{DateTime, Duration, Utc};
use decide_common::{artifact, t, SALT};
use petrel_client::consent::{
    check_allowed, evaluate, ConsentAction, ConsentEvent, ConsentRecords, ConsentState,
};
use petrel_client::decide::rollout::{position, wave_seed};
use petrel_client::decide::{
    converge, decide, ArtifactInfo, Change, DeviceProfile, Entry, InstalledApp, Inventory,
    LocalState, RepositoryView, StagedItem, Status, Verdict,
};
use petrel_client::manifest::{
    assign_bin_for, local_seconds_of_day, Assignment, AssignmentBin, CampaignManifest,
    CampaignState, CapabilityChain, ConsentPolicy, ConsentStage, DailyWindow, GroupApp,
    GroupManifest, LocalTime, Manifest, ManifestHash, Method, Wave,
};
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use proptest::prelude::*;

const APPS: [&str; 4] = ["a", "b", "c", "d"];
const VERSIONS: [&str; 3] = ["1", "2", "3"];

fn base() -> DateTime<Utc> {
    t("2030-03-01T00:00:00Z")
}

fn admin_key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::generate_ed25519().unwrap().0)
}

fn app() -> impl Strategy<Value = String> {
    prop::sample::select(APPS.to_vec()).prop_map(str::to_string)
}

fn version() -> impl Strategy<Value = String> {
    prop::sample::select(VERSIONS.to_vec()).prop_map(str::to_string)
}

fn arb_window() -> impl Strategy<Value = DailyWindow> {
    (0u32..1440, 0u32..1440)
        .prop_filter("empty window", |(a, b)| a != b)
        .prop_map(|(a, b)| DailyWindow {
            start: LocalTime::new(a / 60, a % 60).unwrap(),
            end: LocalTime::new(b / 60, b % 60).unwrap(),
        })
}

fn arb_group() -> impl Strategy<Value = GroupManifest> {
    prop::collection::btree_map(app(), version(), 0..4).prop_map(|apps| {
        let mut g = GroupManifest::new("g");
        g.revision = 8;
        for (a, v) in apps {
            g.apps.insert(
                a.clone(),
                GroupApp {
                    target: format!("apps/v/{a}/{v}/f"),
                    version: v,
                    install_type: None,
                    post_install: None,
                },
            );
        }
        g
    })
}

fn arb_inventory() -> impl Strategy<Value = Inventory> {
    prop::collection::btree_map(
        prop_oneof![app(), Just("x".to_string())],
        (version(), any::<bool>()),
        0..5,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(a, (v, known))| {
                // When known, the installed bytes are the signed ones half the time.
                let sha = known.then(|| {
                    if a.len() % 2 == 0 {
                        "ee".repeat(32)
                    } else {
                        artifact(&format!("apps/v/{a}/{v}/f")).sha256
                    }
                });
                (
                    a,
                    InstalledApp {
                        version: v,
                        sha256: sha,
                    },
                )
            })
            .collect()
    })
}

#[derive(Clone, Debug)]
struct Knobs {
    policy: ConsentPolicy,
    stage: ConsentStage,
    forced: Option<BTreeMap<String, BTreeSet<String>>>,
    state: CampaignState,
    download_window: Option<DailyWindow>,
    apply_window: Option<DailyWindow>,
    canary: bool,
    canary_passed: bool,
    waves: Vec<(u32, i64)>,
    deadline_h: Option<i64>,
    max_postpones: u32,
    payload_revision: u64,
}

fn arb_knobs() -> impl Strategy<Value = Knobs> {
    (
        (
            prop_oneof![
                Just(ConsentPolicy::Required),
                Just(ConsentPolicy::Acknowledge),
                Just(ConsentPolicy::Administrator),
                Just(ConsentPolicy::None)
            ],
            prop_oneof![Just(ConsentStage::Download), Just(ConsentStage::Install)],
            prop::option::of(prop::collection::btree_map(
                app(),
                prop::collection::btree_set(version(), 1..3),
                1..3,
            )),
            prop_oneof![
                4 => Just(CampaignState::Active),
                1 => Just(CampaignState::Halted),
                1 => Just(CampaignState::Cancelled)
            ],
        ),
        (
            prop::option::of(arb_window()),
            prop::option::of(arb_window()),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec((1u32..=10_000, 0i64..40 * 24), 0..4),
        ),
        (
            prop::option::of(1i64..30 * 24),
            0u32..4,
            prop_oneof![4 => Just(8u64), 1 => 7u64..10],
        ),
    )
        .prop_map(
            |(
                (policy, stage, forced, state),
                (dw, aw),
                (canary, cp, waves),
                (deadline_h, mp, rev),
            )| Knobs {
                policy,
                stage,
                forced,
                state,
                download_window: dw,
                apply_window: aw,
                canary,
                canary_passed: cp,
                waves,
                deadline_h,
                max_postpones: mp,
                payload_revision: rev,
            },
        )
}

fn build_campaign(k: &Knobs) -> CampaignManifest {
    let mut c = decide_common::campaign();
    c.id = "camp".into();
    c.state = k.state;
    c.payload.group = Some(petrel_client::manifest::GroupRef {
        id: "g".into(),
        revision: k.payload_revision,
    });
    c.applies_to = Default::default();
    c.consent.policy = k.policy;
    c.consent.stage = k.stage;
    if k.policy.asks_user() {
        c.consent.max_postpones = k.max_postpones;
    }
    if k.policy != ConsentPolicy::None {
        c.consent.deadline = k.deadline_h.map(|h| (base() + Duration::hours(h)).into());
    }
    if k.policy == ConsentPolicy::Administrator {
        let key = admin_key();
        c.consent.administrator_keys =
            BTreeMap::from([(key.key_id().clone(), key.public_key().clone())]);
    }
    if let Some(f) = &k.forced {
        c.method = Method::Forced;
        c.forced_from = f.clone();
    }
    c.schedule.download_window = k.download_window;
    c.schedule.apply_window = k.apply_window;
    c.rollout.canary = k.canary;
    c.rollout.canary_passed = k.canary && k.canary_passed;
    let mut shares: Vec<u32> = k.waves.iter().map(|w| w.0).collect();
    shares.sort();
    shares.dedup();
    let mut starts: Vec<i64> = k.waves.iter().map(|w| w.1).collect();
    starts.sort();
    c.rollout.waves = shares
        .into_iter()
        .zip(starts)
        .map(|(s, h)| Wave::share(s, base() + Duration::hours(h)))
        .collect();
    c.validate()
        .unwrap_or_else(|e| panic!("generated an invalid campaign: {e}"));
    c
}

#[derive(Clone, Debug)]
struct Scenario {
    campaign: CampaignManifest,
    group: GroupManifest,
    inventory: Inventory,
    device: String,
    canary: bool,
    events: Vec<(u8, i64, i64)>,
    staged: Vec<bool>,
    now: DateTime<Utc>,
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    (
        arb_knobs(),
        arb_group(),
        arb_inventory(),
        "[a-z0-9]{1,12}",
        any::<bool>(),
        prop::collection::vec((0u8..5, 0i64..40 * 24, 1i64..72), 0..5),
        prop::collection::vec(any::<bool>(), 4),
        -48i64 * 60..45 * 24 * 60,
    )
        .prop_map(
            |(k, group, inventory, device, canary, events, staged, minutes)| Scenario {
                campaign: build_campaign(&k),
                group,
                inventory,
                device,
                canary,
                events,
                staged,
                now: base() + Duration::minutes(minutes),
            },
        )
}

fn entry_of<T: Manifest + petrel_client::decide::Named>(m: &T) -> Entry<T> {
    let bytes = m.to_canonical_json().unwrap();
    Entry::from_bytes(
        &m.expected_path(),
        &bytes,
        CapabilityChain::single("r", None),
    )
    .unwrap()
}

fn hash_of(c: &CampaignManifest) -> ManifestHash {
    ManifestHash::of(&c.to_canonical_json().unwrap())
}

fn event(c: &CampaignManifest, kind: u8, at_h: i64, for_h: i64) -> ConsentEvent {
    let at = base() + Duration::hours(at_h);
    let action = match kind {
        0 => ConsentAction::Accept,
        1 => ConsentAction::Acknowledge,
        2 => ConsentAction::Decline,
        3 => ConsentAction::Postpone {
            until: (at + Duration::hours(for_h)).into(),
        },
        _ => {
            let body = petrel_client::consent::ConsentTokenBody::for_devices(
                &c.id,
                hash_of(c),
                ["someone-else"],
                base(),
                base() + Duration::days(60),
            );
            ConsentAction::Administrator {
                token: Box::new(
                    petrel_client::consent::AdminConsentToken::sign(body, &[admin_key()]).unwrap(),
                ),
            }
        }
    };
    ConsentEvent {
        campaign: c.id.clone(),
        revision: c.revision,
        manifest_sha256: hash_of(c),
        offer_sha256: Some(c.offer_sha256()),
        at: at.into(),
        action,
        locale: None,
    }
}

fn setup(s: &Scenario) -> (RepositoryView, DeviceProfile, LocalState) {
    let artifacts: BTreeMap<String, ArtifactInfo> = s
        .group
        .apps
        .values()
        .map(|a| (a.target.clone(), artifact(&a.target)))
        .collect();
    let mut bin = AssignmentBin::new(assign_bin_for(&s.device, 2), SALT);
    let mut a = Assignment::to_group("g");
    a.canary = s.canary;
    bin.insert(&s.device, a).unwrap();
    let view = RepositoryView {
        campaigns: vec![entry_of(&s.campaign)],
        unusable: Vec::new(),
        incomplete: Vec::new(),
        assignment: Some(entry_of(&bin)),
        group: Some(entry_of(&s.group)),
        artifacts: artifacts.clone(),
    };
    let profile = DeviceProfile {
        id: s.device.clone(),
        device_type: "kiosk".into(),
        inventory: s.inventory.clone(),
        ..DeviceProfile::default()
    };
    let mut state = LocalState::default();
    for (i, (path, art)) in artifacts.iter().enumerate() {
        if s.staged[i % s.staged.len()] {
            state.staged.insert(
                path.clone(),
                StagedItem {
                    sha256: art.sha256.clone(),
                    length: art.length,
                },
            );
        }
    }
    state.consent = s
        .events
        .iter()
        .map(|(k, at, h)| event(&s.campaign, *k, *at, *h))
        .collect();
    (view, profile, state)
}

/// The answer that grants `c`'s policy, recorded by the store for `device` half an hour
/// into the month: accept, acknowledge, or an administrator token bound to the offer.
fn agreement(c: &CampaignManifest, device: &str) -> ConsentEvent {
    let mut e = event(c, 0, 0, 1);
    e.at = (base() + Duration::minutes(30)).into();
    match c.consent.policy {
        ConsentPolicy::Acknowledge => e.action = ConsentAction::Acknowledge,
        ConsentPolicy::Administrator => {
            let mut body = petrel_client::consent::ConsentTokenBody::for_devices(
                &c.id,
                hash_of(c),
                [device],
                base(),
                base() + Duration::days(60),
            );
            body.offer_sha256 = Some(c.offer_sha256());
            e.action = ConsentAction::Administrator {
                token: Box::new(
                    petrel_client::consent::AdminConsentToken::sign(body, &[admin_key()]).unwrap(),
                ),
            };
        }
        _ => {}
    }
    e
}

/// A new revision (`bump` higher) that changes only what is outside the offer: the state
/// (active ↔ halted), the waves and canaries, the windows, the campaign's time span, the
/// applicability, or the postponement bound. `seed` picks the new values.
fn state_only_change(c: &mut CampaignManifest, kind: u8, bump: u64, seed: u64) {
    let window = |x: u64| DailyWindow {
        start: LocalTime::new((x % 24) as u32, 0).unwrap(),
        end: LocalTime::new(((x + 1 + x % 5) % 24) as u32, 30).unwrap(),
    };
    match kind {
        0 => {
            c.state = match c.state {
                CampaignState::Active => CampaignState::Halted,
                _ => CampaignState::Active,
            }
        }
        1 => {
            c.rollout.canary = seed.is_multiple_of(2);
            c.rollout.canary_passed = c.rollout.canary && seed.is_multiple_of(3);
            let n = (seed % 4) as u32;
            c.rollout.waves = (1..=n)
                .map(|i| {
                    Wave::share(
                        i * 10_000 / n,
                        base() + Duration::hours(i as i64 * (seed % 97) as i64),
                    )
                })
                .collect();
        }
        2 => {
            c.schedule.download_window = (!seed.is_multiple_of(3)).then(|| window(seed));
            c.schedule.apply_window = (!seed.is_multiple_of(5)).then(|| window(seed / 7));
        }
        3 => {
            if let Some(na) = c.schedule.not_after {
                c.schedule.not_after = Some((na.0 + Duration::days(1 + (seed % 10) as i64)).into());
            }
            if let Some(nb) = c.schedule.not_before {
                c.schedule.not_before = Some((nb.0 - Duration::hours((seed % 48) as i64)).into());
            }
        }
        4 => {
            c.applies_to.device_types = if c.applies_to.device_types.is_empty() {
                BTreeSet::from(["kiosk".to_string()])
            } else {
                BTreeSet::new()
            };
        }
        _ => {
            if c.consent.policy.asks_user() {
                c.consent.max_postpones = (seed % 5) as u32;
            }
        }
    }
    c.revision += bump;
    c.validate()
        .unwrap_or_else(|e| panic!("generated an invalid revision: {e}"));
}

/// How many kinds of offer change [`offer_change`] knows.
const OFFER_CHANGES: u8 = 11;

/// Changes one field of the offer.
fn offer_change(c: &mut CampaignManifest, kind: u8) {
    use petrel_client::manifest::{Notice, PostInstall, Severity};
    let en = c
        .notice
        .get_mut("en")
        .expect("the campaigns have an English notice");
    match kind {
        0 => en.body.push_str(" Now with a typo fixed."),
        1 => en.title.push_str(" (updated)"),
        2 => {
            en.severity = if en.severity == Severity::Critical {
                Severity::Info
            } else {
                Severity::Critical
            }
        }
        3 => {
            c.notice.insert(
                "fr".into(),
                Notice {
                    title: "Lecteur 2.1".into(),
                    body: "Démarre deux fois plus vite.".into(),
                    severity: Severity::Recommended,
                },
            );
        }
        4 => {
            if let Some(g) = c.payload.group.as_mut() {
                g.revision += 1;
            }
        }
        5 => {
            c.payload.group = None;
            c.payload.apps = BTreeMap::from([("a".to_string(), "2".to_string())]);
        }
        6 => {
            c.consent.stage = match c.consent.stage {
                ConsentStage::Download => ConsentStage::Install,
                ConsentStage::Install => ConsentStage::Download,
            }
        }
        7 => {
            c.consent.policy = match c.consent.policy {
                ConsentPolicy::Required => ConsentPolicy::Acknowledge,
                _ => ConsentPolicy::Required,
            }
        }
        8 => match c.method {
            Method::Normal => {
                c.method = Method::Forced;
                c.forced_from =
                    BTreeMap::from([("a".to_string(), BTreeSet::from(["1".to_string()]))]);
            }
            Method::Forced => {
                let (_, set) = c.forced_from.iter_mut().next().unwrap();
                if !set.insert("9".to_string()) {
                    set.remove("9");
                }
            }
        },
        9 => {
            c.post_install = match c.post_install {
                Some(PostInstall::Stop) => Some(PostInstall::Start),
                _ => Some(PostInstall::Stop),
            }
        }
        _ => {
            c.default_locale = match c.default_locale {
                Some(_) => None,
                None => Some("en".into()),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A halted or cancelled campaign never yields a download or an install.
    #[test]
    fn halted_or_cancelled_never_downloads_or_installs(mut s in arb_scenario(), cancel in any::<bool>()) {
        s.campaign.state = if cancel { CampaignState::Cancelled } else { CampaignState::Halted };
        let (v, p, st) = setup(&s);
        let d = decide(&v, &p, &st, s.now);
        let c = &d.campaigns[0];
        prop_assert!(!c.status.allows_download() && !c.status.allows_install(), "{}", d.explain());
        let acts = d.actions();
        let moving = acts.iter().any(|a| matches!(a,
            petrel_client::decide::Action::Install { .. } | petrel_client::decide::Action::Download { .. }));
        prop_assert!(!moving);
    }

    /// A forced campaign never downloads for, or installs on, a device with an installed
    /// version outside its set; when the forced rule is reached it is an error.
    #[test]
    fn forced_outside_the_set_never_installs(s in arb_scenario()) {
        prop_assume!(s.campaign.method == Method::Forced);
        let outside = s.campaign.forced_from.iter().any(|(app, set)| {
            s.inventory.get(app).is_none_or(|i| !set.contains(&i.version))
        });
        let (v, p, st) = setup(&s);
        let d = decide(&v, &p, &st, s.now);
        let c = &d.campaigns[0];
        if outside {
            prop_assert!(!c.status.allows_download() && !c.status.allows_install(), "{}", d.explain());
            if c.reasons.iter().any(|r| r.rule == "forced") {
                prop_assert!(matches!(c.status, Status::Error { .. }), "{}", d.explain());
            }
        }
    }

    /// A device never leaves its group's tested combination: applying the plan to the actual
    /// inventory gives exactly the group, and only what differs is touched.
    #[test]
    fn the_plan_converges_to_exactly_the_group(g in arb_group(), inv in arb_inventory()) {
        let artifacts: BTreeMap<String, ArtifactInfo> =
            g.apps.values().map(|a| (a.target.clone(), artifact(&a.target))).collect();
        let plan = converge(&g, &inv, &artifacts, None);
        prop_assert_eq!(plan.result(&inv), g.versions());
        for step in &plan.steps {
            match (&step.change, inv.get(&step.app), g.apps.get(&step.app)) {
                (Change::Add { .. }, None, Some(_)) => {}
                (Change::Update { from, to, .. }, Some(have), Some(want)) => {
                    prop_assert_eq!(from, &have.version);
                    prop_assert_eq!(to, &want.version);
                    prop_assert_ne!(&have.version, &want.version);
                }
                (Change::Reinstall { version, target }, Some(have), Some(want)) => {
                    prop_assert_eq!(version, &want.version);
                    prop_assert_ne!(have.sha256.as_deref(), Some(artifacts[target].sha256.as_str()));
                }
                (Change::Remove { .. }, Some(_), None) => {}
                other => prop_assert!(false, "unexpected step {:?}", other),
            }
        }
        let touched: BTreeSet<&str> = plan.steps.iter().map(|s| s.app.as_str()).collect();
        prop_assert_eq!(touched.len(), plan.steps.len(), "one step per application");
    }

    /// Whatever the campaign, a plan ready to install results in exactly the group.
    #[test]
    fn a_ready_plan_results_in_exactly_the_group(s in arb_scenario()) {
        let (v, p, st) = setup(&s);
        let d = decide(&v, &p, &st, s.now);
        for c in &d.campaigns {
            if c.status.allows_install() || c.status.allows_download() {
                prop_assert_eq!(c.plan.as_ref().unwrap().result(&p.inventory), s.group.versions());
            }
        }
    }

    /// The wave a device falls in is the same every time, and once the device's turn has
    /// come it stays come.
    #[test]
    fn waves_are_stable_and_monotone(s in arb_scenario(), later in 0i64..40 * 24 * 60) {
        let c = &s.campaign;
        let device = DeviceProfile { id: s.device.clone(), device_type: "kiosk".into(), ..DeviceProfile::default() };
        let p1 = position(c, &device, s.canary);
        prop_assert_eq!(&p1, &position(c, &device, s.canary));
        prop_assert_eq!(wave_seed(&s.device, &c.id), wave_seed(&s.device, &c.id));
        let t2 = s.now + Duration::minutes(later);
        if p1.is_open(s.now) {
            prop_assert!(p1.is_open(t2));
        }
        // And through the whole engine, as long as the campaign has not ended.
        if c.schedule.not_after.is_none_or(|na| t2 < na.0) {
            let (v, p, st) = setup(&s);
            let rollout_passed = |at| decide(&v, &p, &st, at).campaigns[0]
                .reasons.iter().any(|r| r.rule == "rollout" && r.verdict == Verdict::Pass);
            if rollout_passed(s.now) {
                prop_assert!(rollout_passed(t2));
            }
        }
    }

    /// Deciding is a pure function of its inputs.
    #[test]
    fn decide_is_pure(s in arb_scenario()) {
        let (v, p, st) = setup(&s);
        prop_assert_eq!(decide(&v, &p, &st, s.now), decide(&v, &p, &st, s.now));
    }

    /// Whatever a user does through the store's rules: postponements never exceed the bound,
    /// an acknowledge campaign is never declined, a decline is final for its manifest, and
    /// nothing is downloaded before consent when consent is needed before download.
    #[test]
    fn decline_and_postpone_limits_hold(
        k in arb_knobs(),
        ops in prop::collection::vec((0u8..4, 0i64..6, 1i64..48), 0..12),
    ) {
        let mut k = k;
        k.state = CampaignState::Active;
        k.forced = None;
        let c = build_campaign(&k);
        let e = entry_of(&c);
        let mut records = ConsentRecords::new();
        let mut at = base() + Duration::days(1);
        let profile = DeviceProfile { id: "d".into(), device_type: "kiosk".into(), ..Default::default() };
        for (kind, step_h, for_h) in ops {
            at += Duration::hours(step_h);
            let ev = event(&c, kind.min(3), (at - base()).num_hours(), for_h);
            if check_allowed(&records, &e, &ev.action, at).is_ok() {
                records.push(ev.clone());
            }
            prop_assert!(records.postpones_used(&c.id) <= c.consent.max_postpones);
            if c.consent.policy != ConsentPolicy::Required {
                prop_assert!(!records.events().iter().any(|e| e.action == ConsentAction::Decline));
            }
            let (state, _) = evaluate(&records, &c, &e.sha256, &profile, None, at);
            let last_answer = records.events().iter().rev().find(|e| {
                matches!(e.action, ConsentAction::Accept | ConsentAction::Decline | ConsentAction::Acknowledge)
            });
            if let Some(ConsentEvent { action: ConsentAction::Decline, .. }) = last_answer {
                prop_assert!(matches!(state, ConsentState::Declined { .. }), "{:?}", state);
            }
            if c.consent.policy.asks_user() && last_answer.is_none() {
                // Only the deadline of an acknowledge campaign grants without an answer.
                prop_assert!(!state.is_granted() || c.consent.policy == ConsentPolicy::Acknowledge);
            }
        }
    }

    /// Consent binds to the offer, not to the rollout state: once the user (or the
    /// administrator, with a token bound to the offer) has agreed, any sequence of new
    /// revisions that change only the state (active, halted, active again), the rollout,
    /// the schedule, the applicability or the postponement bound never asks again.
    #[test]
    fn state_only_revisions_never_ask_for_consent_again(
        s in arb_scenario(),
        steps in prop::collection::vec((0u8..6, 1u64..3, any::<u64>()), 1..8),
    ) {
        let mut first = s.campaign.clone();
        prop_assume!(first.consent.policy != ConsentPolicy::None);
        first.state = CampaignState::Active;
        let records: ConsentRecords = [agreement(&first, &s.device)].into_iter().collect();
        let now = s.now.max(base() + Duration::hours(1));
        let profile = DeviceProfile { id: s.device.clone(), device_type: "kiosk".into(), inventory: s.inventory.clone(), ..Default::default() };
        let mut c = first.clone();
        for (kind, bump, seed) in steps {
            state_only_change(&mut c, kind, bump, seed);
            prop_assert_eq!(c.offer_sha256(), first.offer_sha256());
            let (state, notes) = evaluate(&records, &c, &hash_of(&c), &profile, None, now);
            prop_assert!(state.is_granted(), "revision {} asks again: {:?} {:?}", c.revision, state, notes);
            if let ConsentState::Granted { how } = &state {
                prop_assert!(how.contains("still holds"), "{}", how);
            }
            let mut sc = s.clone();
            sc.campaign = c.clone();
            sc.now = now;
            let (v, p, mut st) = setup(&sc);
            st.consent = records.clone();
            let d = decide(&v, &p, &st, now);
            prop_assert!(
                !d.actions().iter().any(|a| matches!(a, petrel_client::decide::Action::AskConsent { .. })),
                "{}", d.explain()
            );
            prop_assert!(
                !matches!(d.campaigns[0].status, Status::WaitingForConsent { .. } | Status::Postponed { .. } | Status::Declined { .. }),
                "{}", d.explain()
            );
        }
    }

    /// Any single change to a field of the offer (a notice's title, body, severity or
    /// locales, the payload, the consent policy or stage, the method or forced set, the
    /// post-install state, the fallback locale) asks again, even after state-only
    /// revisions that kept the consent.
    #[test]
    fn any_offer_change_asks_for_consent_again(
        s in arb_scenario(),
        before in prop::collection::vec((0u8..6, 1u64..3, any::<u64>()), 0..4),
        change in 0u8..OFFER_CHANGES,
        bump in 1u64..3,
    ) {
        let mut first = s.campaign.clone();
        prop_assume!(first.consent.policy.asks_user());
        first.state = CampaignState::Active;
        let now = base() + Duration::hours(1);
        prop_assume!(first.consent.deadline.is_none_or(|d| now < d.0));
        let records: ConsentRecords = [agreement(&first, &s.device)].into_iter().collect();
        let profile = DeviceProfile { id: s.device.clone(), device_type: "kiosk".into(), ..Default::default() };
        let mut c = first.clone();
        for (kind, b, seed) in before {
            state_only_change(&mut c, kind, b, seed);
        }
        prop_assert!(evaluate(&records, &c, &hash_of(&c), &profile, None, now).0.is_granted());
        offer_change(&mut c, change);
        c.revision += bump;
        c.validate().unwrap();
        prop_assert_ne!(c.offer_sha256(), first.offer_sha256());
        let (state, notes) = evaluate(&records, &c, &hash_of(&c), &profile, None, now);
        prop_assert!(matches!(state, ConsentState::Pending { .. }), "change {} kept consent: {:?} {:?}", change, state, notes);
        prop_assert!(notes.iter().any(|n| n.contains("its offer changed")), "{:?}", notes);
    }

    /// Records of agents that predate the offer binding (no `offer_sha256`) are honoured
    /// for the exact manifest they name, and for no other.
    #[test]
    fn records_without_an_offer_hash_count_for_their_exact_manifest_only(
        s in arb_scenario(),
        kind in 0u8..6,
        bump in 1u64..3,
        seed in any::<u64>(),
    ) {
        let mut c = s.campaign.clone();
        prop_assume!(c.consent.policy.asks_user());
        c.state = CampaignState::Active;
        let mut old = agreement(&c, &s.device);
        old.offer_sha256 = None;
        let records: ConsentRecords = [old].into_iter().collect();
        let now = base() + Duration::hours(1);
        prop_assume!(c.consent.deadline.is_none_or(|d| now < d.0));
        let profile = DeviceProfile { id: s.device.clone(), device_type: "kiosk".into(), ..Default::default() };
        prop_assert!(evaluate(&records, &c, &hash_of(&c), &profile, None, now).0.is_granted());
        let mut next = c.clone();
        state_only_change(&mut next, kind, bump, seed);
        prop_assume!(hash_of(&next) != hash_of(&c));
        let (state, notes) = evaluate(&records, &next, &hash_of(&next), &profile, None, now);
        prop_assert!(matches!(state, ConsentState::Pending { .. }), "{:?}", state);
        prop_assert!(notes.iter().any(|n| n.contains("recorded before consent was bound to the offer")), "{:?}", notes);
    }

    /// Daily windows, including those that wrap midnight, agree with a minute-by-minute
    /// model; `next_open` is the first open instant and `closes_at` the first closed one.
    #[test]
    fn windows_match_a_minute_model(w in arb_window(), minutes in 0i64..3 * 24 * 60, secs in 0i64..60, offset in -840i32..=840) {
        let mut open = [false; 1440];
        let mut m = w.start.minutes();
        while m != w.end.minutes() {
            open[m as usize] = true;
            m = (m + 1) % 1440;
        }
        let now = base() + Duration::minutes(minutes) + Duration::seconds(secs);
        let local_minute = |at: DateTime<Utc>| (local_seconds_of_day(at, offset) / 60) as usize;
        prop_assert_eq!(w.is_open(now, offset), open[local_minute(now)]);
        let next = w.next_open(now, offset);
        prop_assert!(next >= now && next - now < Duration::days(1));
        prop_assert!(w.is_open(next, offset));
        let mut probe = now;
        while probe < next {
            prop_assert!(!open[local_minute(probe)]);
            probe += Duration::minutes(1);
        }
        match w.closes_at(now, offset) {
            None => prop_assert!(!open[local_minute(now)]),
            Some(close) => {
                prop_assert!(close > now && !w.is_open(close, offset));
                let mut probe = now;
                while probe < close {
                    prop_assert!(open[local_minute(probe)]);
                    probe += Duration::minutes(1);
                }
            }
        }
    }

    /// Every generated campaign compiles to canonical JSON and reads back unchanged.
    #[test]
    fn campaigns_round_trip_through_canonical_json(k in arb_knobs()) {
        let c = build_campaign(&k);
        let bytes = c.to_canonical_json().unwrap();
        let back = CampaignManifest::from_json(&bytes).unwrap();
        prop_assert_eq!(&back, &c);
        prop_assert_eq!(back.to_canonical_json().unwrap(), bytes);
    }
}

#[test]
fn the_generators_reach_the_interesting_statuses() {
    // Guards the properties above against vacuity: the scenarios must produce downloads,
    // installs, forced errors and consent waits.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    for _ in 0..3000 {
        let s = arb_scenario().new_tree(&mut runner).unwrap().current();
        let (v, p, st) = setup(&s);
        seen.insert(decide(&v, &p, &st, s.now).campaigns[0].status.kind());
    }
    for kind in [
        "ready_to_download",
        "ready_to_install",
        "error",
        "waiting_for_consent",
        "waiting_for_wave",
        "halted",
        "cancelled",
        "up_to_date",
        "waiting_for_download_window",
        "waiting_for_apply_window",
    ] {
        assert!(seen.contains(kind), "{kind} never generated; saw {seen:?}");
    }
}

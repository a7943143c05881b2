//! The consent store: the hash-chained log on disk, the policy rules it enforces, and
//! administrator tokens; and the decision engine fed from it.

mod decide_common;

use std::collections::BTreeSet;
use std::fs;

use chrono::Duration;
use decide_common::*;
use petrel_client::consent::{
    verify_log, AdminConsentToken, ConsentAction, ConsentError, ConsentStore, ConsentTokenBody,
    GENESIS,
};
use petrel_client::decide::{decide, CampaignEntry, LocalState, Status};
use petrel_client::manifest::{
    sha256_hex, CampaignManifest, CampaignState, ConsentPolicy, ConsentStage, ManifestHash, UtcTime,
};
use petrel_client::tuf::keys::{KeySource, PrivateKey};

fn required() -> CampaignManifest {
    let mut c = campaign();
    c.consent.policy = ConsentPolicy::Required;
    c.consent.max_postpones = 2;
    c.consent.deadline = Some(UtcTime::parse("2030-03-20T00:00:00Z").unwrap());
    c
}

fn open(dir: &tempfile::TempDir) -> ConsentStore {
    ConsentStore::open(dir.path().join("consent/log.jsonl"))
        .unwrap()
        .0
}

fn lines(dir: &tempfile::TempDir) -> Vec<String> {
    fs::read_to_string(dir.path().join("consent/log.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(dir: &tempfile::TempDir, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    fs::write(dir.path().join("consent/log.jsonl"), s).unwrap();
}

/// A log with three records: postpone, postpone, accept.
fn three(dir: &tempfile::TempDir) -> CampaignEntry {
    let e = entry(required());
    let mut s = open(dir);
    s.postpone(&e, now() + Duration::hours(1), now()).unwrap();
    s.postpone(&e, now() + Duration::hours(3), now() + Duration::hours(2))
        .unwrap();
    s.accept(&e, now() + Duration::hours(4), Some("de"))
        .unwrap();
    e
}

#[test]
fn records_survive_reopening_and_feed_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let e = three(&dir);
    let (s, report) = ConsentStore::open(dir.path().join("consent/log.jsonl")).unwrap();
    assert_eq!(report.entries, 3);
    assert_eq!(report.dropped_torn_tail, None);
    assert_eq!(s.records().events().len(), 3);
    assert_eq!(s.records().events()[2].locale.as_deref(), Some("de"));
    let (seq, head) = s.head();
    assert_eq!(seq, 3);
    assert_eq!(head, sha256_hex(lines(&dir)[2].as_bytes()));

    let v = view(vec![required()]);
    assert_eq!(v.campaigns[0].sha256, e.sha256);
    let st = LocalState {
        consent: s.records().clone(),
        ..LocalState::default()
    };
    assert!(matches!(
        decide(&v, &profile(), &st, now() + Duration::hours(5)).campaigns[0].status,
        Status::ReadyToDownload { .. }
    ));
}

#[test]
fn each_line_is_canonical_json_chained_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    three(&dir);
    let ls = lines(&dir);
    let first: serde_json::Value = serde_json::from_str(&ls[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], GENESIS);
    assert_eq!(first["event"]["action"]["type"], "postpone");
    let second: serde_json::Value = serde_json::from_str(&ls[1]).unwrap();
    assert_eq!(second["prev"], sha256_hex(ls[0].as_bytes()));
}

fn chain_error(dir: &tempfile::TempDir) -> (usize, String) {
    match ConsentStore::open(dir.path().join("consent/log.jsonl")) {
        Err(ConsentError::Chain { error, .. }) => (error.line, error.reason),
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[test]
fn an_edited_line_breaks_the_chain_where_it_was_edited() {
    let dir = tempfile::tempdir().unwrap();
    three(&dir);
    let mut ls = lines(&dir);
    // Turn the first postponement into an acceptance, keeping the line canonical.
    ls[0] = ls[0].replace(
        r#"{"type":"postpone","until":"2030-03-10T03:00:00Z"}"#,
        r#"{"type":"accept"}"#,
    );
    write_lines(&dir, &ls);
    let (line, reason) = chain_error(&dir);
    assert_eq!(line, 2, "{reason}");
    assert!(
        reason.contains("does not match the hash of line 1"),
        "{reason}"
    );
}

#[test]
fn a_non_canonical_line_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    three(&dir);
    let mut ls = lines(&dir);
    ls[1] = ls[1].replacen(':', ": ", 1);
    write_lines(&dir, &ls);
    assert_eq!(chain_error(&dir).0, 2);
}

#[test]
fn removed_inserted_and_reordered_lines_are_found() {
    let dir = tempfile::tempdir().unwrap();
    three(&dir);
    let ls = lines(&dir);
    write_lines(&dir, &[ls[0].clone(), ls[2].clone()]);
    let (line, reason) = chain_error(&dir);
    assert_eq!(line, 2);
    assert!(reason.contains("sequence number 3"), "{reason}");
    write_lines(&dir, &[ls[1].clone(), ls[0].clone(), ls[2].clone()]);
    assert_eq!(chain_error(&dir).0, 1);
    write_lines(
        &dir,
        &[ls[0].clone(), ls[0].clone(), ls[1].clone(), ls[2].clone()],
    );
    assert_eq!(chain_error(&dir).0, 2);
    fs::write(
        dir.path().join("consent/log.jsonl"),
        format!("{}\n\n{}\n", ls[0], ls[1]),
    )
    .unwrap();
    assert_eq!(chain_error(&dir).0, 2);
}

#[test]
fn a_broken_log_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    three(&dir);
    let mut ls = lines(&dir);
    ls.swap(0, 1);
    write_lines(&dir, &ls);
    let before = fs::read(dir.path().join("consent/log.jsonl")).unwrap();
    chain_error(&dir);
    assert_eq!(
        fs::read(dir.path().join("consent/log.jsonl")).unwrap(),
        before
    );
}

#[test]
fn an_incomplete_last_line_is_cut_off_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let e = three(&dir);
    let path = dir.path().join("consent/log.jsonl");
    let mut bytes = fs::read(&path).unwrap();
    let complete = bytes.len();
    bytes.extend_from_slice(br#"{"event":{"action":{"type":"decl"#);
    fs::write(&path, &bytes).unwrap();
    let (mut s, report) = ConsentStore::open(&path).unwrap();
    assert_eq!(report.entries, 3);
    assert_eq!(report.dropped_torn_tail, Some(bytes.len() - complete));
    assert_eq!(fs::metadata(&path).unwrap().len() as usize, complete);
    // The next record chains onto the last complete one.
    s.accept(&e, now() + Duration::hours(6), None).unwrap();
    drop(s);
    let v = verify_log(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(v.entries.len(), 4);
    assert_eq!(v.torn_tail, None);
}

#[test]
fn the_log_is_held_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _held = open(&dir);
    assert!(matches!(
        ConsentStore::open(dir.path().join("consent/log.jsonl")),
        Err(ConsentError::Locked { .. })
    ));
}

#[test]
fn postponements_are_bounded_and_cannot_pass_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let e = entry(required());
    let mut s = open(&dir);
    let err = s
        .postpone(&e, t("2030-03-21T00:00:00Z"), now())
        .unwrap_err();
    assert!(err.to_string().contains("deadline"), "{err}");
    let err = s.postpone(&e, now(), now()).unwrap_err();
    assert!(err.to_string().contains("future"), "{err}");
    s.postpone(&e, now() + Duration::hours(1), now()).unwrap();
    s.postpone(&e, now() + Duration::hours(2), now()).unwrap();
    let err = s
        .postpone(&e, now() + Duration::hours(3), now())
        .unwrap_err();
    assert!(err.to_string().contains("used up"), "{err}");
    // The bound holds across revisions.
    let mut r4 = required();
    r4.revision = 4;
    assert!(s
        .postpone(&entry(r4), now() + Duration::hours(3), now())
        .is_err());
    assert_eq!(s.records().events().len(), 2);
}

#[test]
fn each_policy_takes_only_its_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    let mut ack = required();
    ack.consent.policy = ConsentPolicy::Acknowledge;
    let ack = entry(ack);
    assert!(s
        .decline(&ack, now(), None)
        .unwrap_err()
        .to_string()
        .contains("cannot be declined"));
    s.acknowledge(&ack, now(), None).unwrap();

    let req = entry(required());
    assert!(s.acknowledge(&req, now(), None).is_err());
    s.decline(&req, now(), None).unwrap();
    // Changing one's mind is allowed: the latest answer counts.
    s.accept(&req, now() + Duration::minutes(1), None).unwrap();

    let none = entry(campaign());
    for r in [
        s.accept(&none, now(), None).map(|_| ()),
        s.postpone(&none, now() + Duration::hours(1), now())
            .map(|_| ()),
    ] {
        assert!(matches!(r, Err(ConsentError::Refused(_))));
    }

    let mut halted = required();
    halted.state = CampaignState::Halted;
    assert!(s
        .accept(&entry(halted), now(), None)
        .unwrap_err()
        .to_string()
        .contains("halted"));
    assert!(s
        .accept(&req, t("2030-03-20T00:00:00Z"), None)
        .unwrap_err()
        .to_string()
        .contains("deadline"));
}

#[test]
fn a_decline_holds_across_state_only_revisions_and_a_changed_notice_asks_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    s.decline(&entry(required()), now(), None).unwrap();
    let st = LocalState {
        consent: s.records().clone(),
        ..LocalState::default()
    };
    assert!(matches!(
        decide(&view(vec![required()]), &profile(), &st, now()).campaigns[0].status,
        Status::Declined { .. }
    ));
    // Halted in revision 4, resumed in revision 5: the same offer, still declined.
    let mut resumed = required();
    resumed.revision = 5;
    resumed.rollout.waves.clear();
    let d = decide(&view(vec![resumed.clone()]), &profile(), &st, now());
    assert!(
        matches!(d.campaigns[0].status, Status::Declined { .. }),
        "{}",
        d.explain()
    );
    // A changed notice is another offer: asked again.
    let mut changed = resumed;
    changed.revision = 6;
    changed.notice.get_mut("en").unwrap().body = "Faster start-up, fewer crashes.".into();
    let d = decide(&view(vec![changed]), &profile(), &st, now());
    assert!(
        matches!(d.campaigns[0].status, Status::WaitingForConsent { .. }),
        "{}",
        d.explain()
    );
    assert!(d.explain().contains("its offer changed"), "{}", d.explain());
}

#[test]
fn consent_holds_across_halt_and_resume_and_explain_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    s.accept(&entry(required()), now(), Some("en")).unwrap();
    let mut halted = required();
    halted.revision = 4;
    halted.state = CampaignState::Halted;
    let mut resumed = required();
    resumed.revision = 5;
    let st = LocalState {
        consent: s.records().clone(),
        ..LocalState::default()
    };
    let d = decide(&view(vec![halted]), &profile(), &st, now());
    assert!(
        matches!(d.campaigns[0].status, Status::Halted),
        "{}",
        d.explain()
    );
    let d = decide(&view(vec![resumed]), &profile(), &st, now());
    assert!(
        matches!(d.campaigns[0].status, Status::ReadyToDownload { .. }),
        "{}",
        d.explain()
    );
    assert!(
        d.explain().contains(
            "consent given for revision 3 still holds: revision 5 changes only the rollout state"
        ),
        "{}",
        d.explain()
    );
}

#[test]
fn each_record_names_the_offer_it_is_bound_to_and_the_manifest_shown() {
    let dir = tempfile::tempdir().unwrap();
    let e = three(&dir);
    for l in lines(&dir) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["event"]["manifest_sha256"], e.sha256.0.as_str());
        assert_eq!(
            v["event"]["offer_sha256"],
            e.manifest.offer_sha256().0.as_str()
        );
    }
    // The offer hash is the SHA-256 of the offer's canonical JSON, which is not the
    // manifest's.
    let offer = e.manifest.offer().to_canonical_json();
    assert_eq!(e.manifest.offer_sha256().0, sha256_hex(&offer));
    assert_ne!(e.manifest.offer_sha256().0, e.sha256.0);
}

#[test]
fn records_without_an_offer_hash_are_honoured_for_the_exact_manifest_they_name() {
    // A log written by an agent that bound consent to the whole manifest hash: its lines
    // have no offer_sha256.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    let mut old = consent_event(&required(), ConsentAction::Accept, now());
    old.offer_sha256 = None;
    s.append(old).unwrap();
    drop(s);
    assert!(!lines(&dir)[0].contains("offer_sha256"));
    let s = open(&dir);
    let st = LocalState {
        consent: s.records().clone(),
        ..LocalState::default()
    };
    let d = decide(&view(vec![required()]), &profile(), &st, now());
    assert!(
        matches!(d.campaigns[0].status, Status::ReadyToDownload { .. }),
        "{}",
        d.explain()
    );
    // For another manifest, even one with the same offer, the record says nothing.
    let mut next = required();
    next.revision = 4;
    let d = decide(&view(vec![next]), &profile(), &st, now());
    assert!(
        matches!(d.campaigns[0].status, Status::WaitingForConsent { .. }),
        "{}",
        d.explain()
    );
    assert!(
        d.explain()
            .contains("recorded before consent was bound to the offer"),
        "{}",
        d.explain()
    );
}

#[test]
fn a_record_naming_an_offer_counts_only_for_that_offer() {
    // A record whose offer hash is not the manifest's offer does not count, even for the
    // manifest it names.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    let mut bad = consent_event(&required(), ConsentAction::Accept, now());
    bad.offer_sha256 = Some(petrel_client::manifest::OfferHash("00".repeat(32)));
    s.append(bad).unwrap();
    let st = LocalState {
        consent: s.records().clone(),
        ..LocalState::default()
    };
    let d = decide(&view(vec![required()]), &profile(), &st, now());
    assert!(
        matches!(d.campaigns[0].status, Status::WaitingForConsent { .. }),
        "{}",
        d.explain()
    );
}

fn admin(keys: &[&PrivateKey], threshold: u32) -> CampaignManifest {
    let mut c = required();
    c.consent.policy = ConsentPolicy::Administrator;
    c.consent.max_postpones = 0;
    c.consent.deadline = None;
    c.consent.stage = ConsentStage::Install;
    c.consent.administrator_keys = keys
        .iter()
        .map(|k| (k.key_id().clone(), k.public_key().clone()))
        .collect();
    c.consent.administrator_threshold = threshold;
    c
}

fn body(c: &CampaignManifest) -> ConsentTokenBody {
    let mut b = ConsentTokenBody::for_devices(
        &c.id,
        ManifestHash::of(&petrel_client::manifest::Manifest::to_canonical_json(c).unwrap()),
        [DEVICE],
        t("2030-03-01T00:00:00Z"),
        t("2030-03-31T00:00:00Z"),
    );
    b.note = Some("fleet owner approval, ticket 4711".into());
    b
}

#[test]
fn administrator_tokens_are_verified_before_they_are_recorded() {
    let (k1, _) = PrivateKey::generate_ed25519().unwrap();
    let (k2, _) = PrivateKey::generate_ecdsa_p256().unwrap();
    let c = admin(&[&k1, &k2], 2);
    let e = entry(c.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    let a = assignment();

    // One signature is below the threshold of two.
    let one = AdminConsentToken::sign(body(&c), &[&k1]).unwrap();
    let err = s
        .add_admin_token(&e, one, &profile(), Some(&a), now())
        .unwrap_err();
    assert!(err.to_string().contains("threshold is 2"), "{err}");
    // Two signatures by the same key count once.
    let mut twice = AdminConsentToken::sign(body(&c), &[&k1]).unwrap();
    twice.signatures.push(twice.signatures[0].clone());
    assert!(s
        .add_admin_token(&e, twice, &profile(), Some(&a), now())
        .is_err());
    // For another device.
    let other = AdminConsentToken::sign(
        ConsentTokenBody {
            devices: BTreeSet::from([AdminConsentToken::device_hash("kiosk-9")]),
            ..body(&c)
        },
        &[&k1, &k2],
    )
    .unwrap();
    assert!(s
        .add_admin_token(&e, other, &profile(), Some(&a), now())
        .is_err());
    assert!(s.records().events().is_empty());

    // A good one, through its JSON form (as it arrives out of band).
    let good = AdminConsentToken::sign(body(&c), &[&k1, &k2]).unwrap();
    let good = AdminConsentToken::from_json(&good.to_json()).unwrap();
    assert!(
        !String::from_utf8(good.to_json()).unwrap().contains(DEVICE),
        "device ids appear hashed only"
    );
    s.add_admin_token(&e, good, &profile(), Some(&a), now())
        .unwrap();
    drop(s);

    // Reopened, the token still verifies, and the engine accepts it.
    let s = open(&dir);
    let v = view(vec![c]);
    let mut st = LocalState {
        consent: s.records().clone(),
        ..LocalState::default()
    };
    stage_all(&v, &mut st);
    assert!(matches!(
        decide(&v, &profile(), &st, now()).campaigns[0].status,
        Status::ReadyToInstall { .. }
    ));
    // After the token expires, the engine no longer counts it.
    let d = decide(&v, &profile(), &st, t("2030-03-31T00:00:00Z"));
    assert!(
        matches!(d.campaigns[0].status, Status::WaitingForConsent { .. }),
        "{}",
        d.explain()
    );
}

#[test]
fn malformed_tokens_are_refused_with_the_field() {
    let (k, _) = PrivateKey::generate_ed25519().unwrap();
    let c = admin(&[&k], 1);
    let tok = AdminConsentToken::sign(body(&c), &[&k]).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&tok.to_json()).unwrap();
    v["signed"]["schema_version"] = 2.into();
    let err = AdminConsentToken::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("schema version 2"), "{err}");
    let mut v: serde_json::Value = serde_json::from_slice(&tok.to_json()).unwrap();
    v["signed"]["devices"] = serde_json::json!([]);
    let err = AdminConsentToken::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.has_field("signed.devices"), "{err}");
    let mut v: serde_json::Value = serde_json::from_slice(&tok.to_json()).unwrap();
    v["signed"]["devices"] = serde_json::json!([DEVICE]);
    assert!(AdminConsentToken::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
}

#[test]
fn unchecked_appends_are_chained_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    let c = required();
    s.append(consent_event(&c, ConsentAction::Accept, now()))
        .unwrap();
    s.append(consent_event(&c, ConsentAction::Decline, now()))
        .unwrap();
    drop(s);
    let v = verify_log(&fs::read(dir.path().join("consent/log.jsonl")).unwrap()).unwrap();
    assert_eq!(v.entries.len(), 2);
    assert_eq!(v.entries[1].prev, sha256_hex(lines(&dir)[0].as_bytes()));
}

#[test]
fn an_administrator_token_bound_to_the_offer_holds_across_halt_and_resume() {
    let (k, _) = PrivateKey::generate_ed25519().unwrap();
    let c = admin(&[&k], 1);
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    let a = assignment();
    let exact = AdminConsentToken::sign(body(&c), &[&k]).unwrap();
    let mut b = body(&c);
    b.offer_sha256 = Some(c.offer_sha256());
    let offer_token = AdminConsentToken::sign(b, &[&k]).unwrap();
    let mut resumed = c.clone();
    resumed.revision = 5;
    resumed.schedule.not_after = Some(UtcTime::parse("2030-04-15T00:00:00Z").unwrap());
    let decide_with = |records: &petrel_client::consent::ConsentRecords, m: &CampaignManifest| {
        let v = view(vec![m.clone()]);
        let mut st = LocalState {
            consent: records.clone(),
            ..LocalState::default()
        };
        stage_all(&v, &mut st);
        decide(&v, &profile(), &st, now())
    };

    // A token for the exact manifest only: a later revision needs a new one.
    s.add_admin_token(&entry(c.clone()), exact, &profile(), Some(&a), now())
        .unwrap();
    let d = decide_with(s.records(), &resumed);
    assert!(
        matches!(d.campaigns[0].status, Status::WaitingForConsent { .. }),
        "{}",
        d.explain()
    );
    // A token that names the offer covers it.
    s.add_admin_token(&entry(c.clone()), offer_token, &profile(), Some(&a), now())
        .unwrap();
    let d = decide_with(s.records(), &resumed);
    assert!(
        matches!(d.campaigns[0].status, Status::ReadyToInstall { .. }),
        "{}",
        d.explain()
    );
    assert!(d.explain().contains("still holds"), "{}", d.explain());
    // Not another offer.
    let mut renamed = resumed;
    renamed.revision = 6;
    renamed.notice.get_mut("en").unwrap().title = "Player 2.1 (new)".into();
    let d = decide_with(s.records(), &renamed);
    assert!(
        matches!(d.campaigns[0].status, Status::WaitingForConsent { .. }),
        "{}",
        d.explain()
    );
}

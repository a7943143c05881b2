//! Online role keys in a PKCS#11 token, against SoftHSM2: repositories whose timestamp
//! and snapshot are signed by the token publish, `verify` and the TUF client accept them
//! (ed25519 and ECDSA P-256, keys made by `petrel-repo` and keys imported from files),
//! rotation from a file key to a token key, and the errors for a wrong PIN, a missing
//! object, a missing module and an unsupported curve.
//!
//! Needs SoftHSM2: `PETREL_SOFTHSM_MODULE` names its module, as printed by
//! `scripts/ensure-softhsm.sh` (which installs it when missing). Every test makes its own
//! token directory, so nothing touches the system's tokens and tests run in parallel.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use petrel_client::decide::Entry;
use petrel_client::fetch::FileTransport;
use petrel_client::manifest::{CampaignManifest, CampaignState};
use petrel_client::report::{DeviceKey, Report, ReportFields, ReportResult};
use petrel_client::tuf::updater::{Updater, UpdaterConfig};
use petrel_server::reports::{ReportStore, StoreOptions};
use serde_json::Value;

const MODULE_VAR: &str = "PETREL_SOFTHSM_MODULE";
const PIN: &str = "246810";
const SO_PIN: &str = "13579111";

/// The SoftHSM2 module; fails (never skips) when it is not configured.
fn module() -> PathBuf {
    let hint = "run `export PETREL_SOFTHSM_MODULE=\"$(scripts/ensure-softhsm.sh)\"` from the \
                workspace root first (it installs Debian's softhsm2 when missing)";
    match std::env::var_os(MODULE_VAR) {
        Some(m) if !m.is_empty() => {
            let m = PathBuf::from(m);
            assert!(
                m.is_file(),
                "{MODULE_VAR}={} is not a file: {hint}",
                m.display()
            );
            m
        }
        _ => panic!("{MODULE_VAR} is not set, and these tests need SoftHSM2: {hint}"),
    }
}

/// A SoftHSM2 token of its own, in a temporary directory.
struct Hsm {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    module: PathBuf,
    pin_file: PathBuf,
    label: String,
    root: PathBuf,
}

impl Hsm {
    fn new(label: &str) -> Hsm {
        let module = module();
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("mkdir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("write conf");
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).expect("write pin");
        let hsm = Hsm {
            root: dir.path().to_path_buf(),
            _dir: dir,
            conf,
            module,
            pin_file,
            label: label.to_string(),
        };
        hsm.util(&[
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ]);
        hsm
    }

    /// Runs `softhsm2-util` on this token's configuration.
    fn util(&self, args: &[&str]) -> String {
        let mut c = Command::new("softhsm2-util");
        c.env("SOFTHSM2_CONF", &self.conf).args(args);
        let o = c.output().unwrap_or_else(|e| {
            panic!("softhsm2-util: {e}; run scripts/ensure-softhsm.sh (it installs softhsm2)")
        });
        assert!(
            o.status.success(),
            "softhsm2-util {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The URI of a key on this token, with module and PIN file in its query.
    fn uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token={};object={object}?module-path={}&pin-source=file:{}",
            self.label,
            self.module.display(),
            self.pin_file.display()
        )
    }

    /// Sets the token's environment on a command (and nothing from the caller's).
    fn env(&self, mut c: Command) -> Command {
        c.env("SOFTHSM2_CONF", &self.conf)
            .env_remove("PETREL_PKCS11_MODULE")
            .env_remove("PETREL_PKCS11_PIN");
        c
    }

    /// `petrel-repo ARGS` (no workspace) with the token's environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env(petrel());
        c.args(args);
        c
    }

    /// `petrel-repo key generate` in the token; returns the key id.
    fn generate(&self, key_type: &str, object: &str) -> String {
        let out = expect_ok(self.cmd(&[
            "key",
            "generate",
            "--type",
            key_type,
            "--output",
            &self.uri(object),
        ]));
        key_id_in(&out)
    }

    /// Imports a PKCS#8 private key made outside the token (public key included).
    fn import(&self, pem: &Path, object: &str, id_hex: &str) {
        self.util(&[
            "--import",
            path(pem),
            "--token",
            &self.label,
            "--label",
            object,
            "--id",
            id_hex,
            "--pin",
            PIN,
        ]);
    }
}

fn key_id_in(out: &str) -> String {
    let id = out
        .split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no key id in {out:?}"));
    id.to_string()
}

/// The key id `key public` prints for a file or URI.
fn public_key_id(hsm: &Hsm, key: &str) -> (String, Value) {
    let o = run(hsm.cmd(&["key", "public", key]));
    assert!(
        o.status.success(),
        "key public {key}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let json: Value = serde_json::from_slice(&o.stdout).expect("key JSON");
    (key_id_in(&stderr), json)
}

fn ok(r: &Repo, hsm: &Hsm, args: &[&str]) -> String {
    expect_ok(hsm.env(r.cmd(args)))
}

fn fail(r: &Repo, hsm: &Hsm, args: &[&str]) -> String {
    expect_fail(hsm.env(r.cmd(args)))
}

/// A device's TUF client for the repository's tree, trusting its first root.
struct Device {
    work: tempfile::TempDir,
    updater: Updater,
}

impl Device {
    fn new(r: &Repo) -> Device {
        let work = tempfile::tempdir().expect("tempdir");
        let md = work.path().join("metadata");
        let root = std::fs::read(r.tree().join("metadata/1.root.json")).expect("1.root.json");
        Updater::init_trusted_root(&md, &root).expect("trusted root");
        let base = format!("file://{}", r.tree().display());
        let config = UpdaterConfig::new(format!("{base}/metadata"))
            .with_target_base_url(format!("{base}/targets"));
        let updater = Updater::new(config, FileTransport::new(), &md).expect("updater");
        Device { work, updater }
    }

    /// Refreshes and downloads `target`, checking its bytes; returns the versions of root
    /// and timestamp the device now trusts.
    fn update(&mut self, target: &str, expect: &[u8]) -> (u64, u64) {
        self.updater.refresh().expect("the device accepts the tree");
        let info = self
            .updater
            .get_target_info(target)
            .expect("target lookup")
            .unwrap_or_else(|| panic!("{target} not listed"));
        let dest = self.work.path().join("download");
        self.updater
            .download_target(&info, &dest)
            .expect("download");
        assert_eq!(std::fs::read(&dest).expect("downloaded"), expect);
        let t = self.updater.trusted().expect("refreshed");
        (t.root().signed.version, t.timestamp().signed.version)
    }

    /// The key ids that signed the timestamp and snapshot the device trusts.
    fn online_signers(&self) -> (Vec<String>, Vec<String>) {
        let t = self.updater.trusted().expect("refreshed");
        let ids = |sigs: &[petrel_client::tuf::schema::Signature]| {
            let mut v: Vec<String> = sigs.iter().map(|s| s.keyid.0.clone()).collect();
            v.sort();
            v
        };
        (
            ids(&t.timestamp().signatures),
            ids(t.snapshot().signatures()),
        )
    }
}

const TARGET: &str = "apps/acme/fw/1.0/fw.bin";
const CONTENT: &[u8] = b"firmware 1.0\n";

/// A workspace whose timestamp and snapshot keys are the given token keys; one target
/// published.
fn repo_with_online_keys(hsm: &Hsm, timestamp: &str, snapshot: &str) -> Repo {
    let r = Repo::empty();
    ok(
        &r,
        hsm,
        &[
            "init",
            "--role-key",
            &format!("timestamp={}", hsm.uri(timestamp)),
            "--role-key",
            &format!("snapshot={}", hsm.uri(snapshot)),
        ],
    );
    let f = r.src("fw.bin", CONTENT);
    ok(&r, hsm, &["add", path(&f), "--prefix", "apps/acme/fw/1.0"]);
    ok(&r, hsm, &["publish"]);
    r
}

/// Checks what a published tree says about the online roles, then that `verify` and a
/// device accept it, also after `refresh --snapshot` re-signs both with the token.
fn assert_token_signed(hsm: &Hsm, r: &Repo, ts_id: &str, snap_id: &str, keytype: &str) {
    assert_eq!(r.role_keyids("timestamp"), vec![ts_id.to_string()]);
    assert_eq!(r.role_keyids("snapshot"), vec![snap_id.to_string()]);
    let root = r.tree_json("metadata/1.root.json");
    for id in [ts_id, snap_id] {
        assert_eq!(root["signed"]["keys"][id]["keytype"], keytype, "{root}");
        // The private key never left the token: the workspace only holds its URI.
        assert!(!r.dir.join(format!("keys/{id}.pem")).exists());
        let reference =
            std::fs::read_to_string(r.dir.join(format!("keys/{id}.pkcs11"))).expect("reference");
        assert!(reference.contains("pkcs11:token="), "{reference}");
        assert!(
            !reference.contains(PIN),
            "the PIN is not stored: {reference}"
        );
    }
    let ts = r.tree_json("metadata/timestamp.json");
    assert_eq!(signers(&ts), vec![ts_id.to_string()]);
    if keytype == "ecdsa" {
        // DER, as file keys and other TUF implementations sign.
        let sig = ts["signatures"][0]["sig"].as_str().expect("sig");
        assert!(sig.starts_with("30"), "not DER: {sig}");
    }
    r.verify_ok();
    let mut device = Device::new(r);
    let (_, ts_v1) = device.update(TARGET, CONTENT);
    assert_eq!(
        device.online_signers(),
        (vec![ts_id.to_string()], vec![snap_id.to_string()])
    );
    ok(r, hsm, &["refresh", "--snapshot"]);
    r.verify_ok();
    let (_, ts_v2) = device.update(TARGET, CONTENT);
    assert!(ts_v2 > ts_v1, "the device follows the re-signed timestamp");
}

#[test]
fn ed25519_token_keys_sign_timestamp_and_snapshot_and_devices_accept_them() {
    let hsm = Hsm::new("petrel-ed");
    let ts = hsm.generate("ed25519", "timestamp");
    let snap = hsm.generate("ed25519", "snapshot");
    let (id, key) = public_key_id(&hsm, &hsm.uri("timestamp"));
    assert_eq!(id, ts);
    assert_eq!(key["scheme"], "ed25519");
    let r = repo_with_online_keys(&hsm, "timestamp", "snapshot");
    assert_token_signed(&hsm, &r, &ts, &snap, "ed25519");
}

#[test]
fn p256_token_keys_sign_timestamp_and_snapshot_and_devices_accept_them() {
    let hsm = Hsm::new("petrel-p256");
    // One key made outside the token and imported (as keys from another tool arrive), one
    // made in the token: the public key read from the token gives the file's key id.
    let r0 = Repo::empty();
    let pem = r0.scratch("ts.pem");
    expect_ok(hsm.cmd(&["key", "generate", "--type", "ecdsa", "-o", path(&pem)]));
    let (file_id, file_key) = public_key_id(&hsm, path(&pem));
    hsm.import(&pem, "timestamp", "a1");
    let (ts, token_key) = public_key_id(&hsm, &hsm.uri("timestamp"));
    assert_eq!(ts, file_id, "same key, same key id");
    assert_eq!(token_key, file_key);
    assert_eq!(token_key["scheme"], "ecdsa-sha2-nistp256");
    let snap = hsm.generate("ecdsa", "snapshot");
    let r = repo_with_online_keys(&hsm, "timestamp", "snapshot");
    assert_token_signed(&hsm, &r, &ts, &snap, "ecdsa");

    // Offline signing with a token key: `sign` takes a URI too.
    let unsigned = r.tree().join("metadata/1.root.json");
    let out = expect_ok(hsm.cmd(&[
        "sign",
        "--signing-key",
        &hsm.uri("snapshot"),
        path(&unsigned),
        "-o",
        path(&r.scratch("root.sig.json")),
    ]));
    assert!(out.contains(&snap), "{out}");
    let sig = read_json(&r.scratch("root.sig.json"));
    assert_eq!(sig["keyid"], snap.as_str());
}

#[test]
fn rotation_from_a_file_key_to_a_token_key_is_followed_by_devices() {
    let hsm = Hsm::new("petrel-rotate");
    let r = Repo::empty();
    ok(&r, &hsm, &["init"]);
    let f = r.src("fw.bin", CONTENT);
    ok(&r, &hsm, &["add", path(&f), "--prefix", "apps/acme/fw/1.0"]);
    ok(&r, &hsm, &["publish"]);
    let mut device = Device::new(&r);
    assert_eq!(device.update(TARGET, CONTENT).0, 1);
    let old_ts = r.role_keyids("timestamp").remove(0);
    let old_snap = r.role_keyids("snapshot").remove(0);

    let new_ts = hsm.generate("ecdsa", "timestamp-2");
    let new_snap = hsm.generate("ed25519", "snapshot-2");
    let out = ok(
        &r,
        &hsm,
        &[
            "rotate",
            "timestamp",
            "--add-key",
            &hsm.uri("timestamp-2"),
            "--remove-key",
            &old_ts,
        ],
    );
    assert!(out.contains(&new_ts), "{out}");
    ok(
        &r,
        &hsm,
        &[
            "rotate",
            "snapshot",
            "--add-key",
            &hsm.uri("snapshot-2"),
            "--remove-key",
            &old_snap,
        ],
    );
    ok(&r, &hsm, &["publish"]);
    assert_eq!(r.role_keyids("timestamp"), vec![new_ts.clone()]);
    assert_eq!(r.role_keyids("snapshot"), vec![new_snap.clone()]);
    let root = r.tree_json("metadata/2.root.json");
    assert!(
        root["signed"]["keys"].get(&old_ts).is_none(),
        "old key removed"
    );
    assert!(root["signed"]["keys"].get(&old_snap).is_none());
    r.verify_ok();
    assert_eq!(
        device.update(TARGET, CONTENT).0,
        2,
        "device follows root v2"
    );
    assert_eq!(
        device.online_signers(),
        (vec![new_ts.clone()], vec![new_snap.clone()])
    );

    // The old file keys are not needed any more: delete them and publish again.
    for id in [&old_ts, &old_snap] {
        std::fs::remove_file(r.dir.join(format!("keys/{id}.pem"))).expect("old key file");
    }
    ok(&r, &hsm, &["refresh", "--snapshot"]);
    r.verify_ok();
    device.update(TARGET, CONTENT);
    assert_eq!(device.online_signers(), (vec![new_ts], vec![new_snap]));
}

#[test]
fn token_problems_are_named_with_the_uri_and_the_fix() {
    let hsm = Hsm::new("petrel-errors");
    let ts = hsm.generate("ecdsa", "timestamp");
    hsm.generate("ed25519", "snapshot");
    let r = repo_with_online_keys(&hsm, "timestamp", "snapshot");

    // Wrong PIN: publishing stops, naming the token, the URI and where the PIN came from.
    std::fs::write(&hsm.pin_file, "000000\n").expect("write pin");
    let before = r.snapshot();
    let err = fail(&r, &hsm, &["refresh"]);
    assert!(
        err.contains("wrong PIN for token \"petrel-errors\""),
        "{err}"
    );
    assert!(err.contains("pkcs11:token=petrel-errors;object="), "{err}");
    assert!(
        err.contains(&format!("pin-source {}", hsm.pin_file.display())),
        "{err}"
    );
    assert_same(&before, &r.snapshot(), "a refused refresh");
    let err = fail(
        &r,
        &hsm,
        &["rotate", "timestamp", "--add-key", &hsm.uri("snapshot")],
    );
    assert!(err.contains("wrong PIN"), "{err}");
    assert_same(&before, &r.snapshot(), "a refused rotation");
    std::fs::write(&hsm.pin_file, format!("{PIN}\n")).expect("write pin");

    // The PIN from the environment, when the URI names none.
    let bare = format!("pkcs11:token={};object=timestamp", hsm.label);
    let mut c = hsm.cmd(&["key", "public", &bare]);
    c.env("PETREL_PKCS11_MODULE", &hsm.module)
        .env("PETREL_PKCS11_PIN", "111111");
    let err = expect_fail(c);
    assert!(
        err.contains("wrong PIN") && err.contains("$PETREL_PKCS11_PIN"),
        "{err}"
    );
    let mut c = hsm.cmd(&["key", "public", &bare]);
    c.env("PETREL_PKCS11_MODULE", &hsm.module)
        .env("PETREL_PKCS11_PIN", PIN);
    assert!(expect_ok(c).contains("ecdsa-sha2-nistp256"));
    let mut c = hsm.cmd(&["key", "public", &bare]);
    c.env("PETREL_PKCS11_MODULE", &hsm.module);
    let err = expect_fail(c);
    assert!(
        err.contains("needs its user PIN") && err.contains("PETREL_PKCS11_PIN"),
        "{err}"
    );
    let err = expect_fail(hsm.cmd(&["key", "public", &bare]));
    assert!(
        err.contains("no PKCS#11 module") && err.contains("PETREL_PKCS11_MODULE"),
        "{err}"
    );

    // A missing object: the URI, what is on the token, and how to create the key.
    let err = expect_fail(hsm.cmd(&["key", "public", &hsm.uri("timestamp-old")]));
    assert!(
        err.contains("no private key with object=\"timestamp-old\" on token \"petrel-errors\""),
        "{err}"
    );
    assert!(
        err.contains("object=\"timestamp\""),
        "lists what is there: {err}"
    );
    assert!(err.contains("petrel-repo key generate"), "{err}");
    // A key reference whose URI names a missing object now.
    let reference = r.dir.join(format!("keys/{ts}.pkcs11"));
    std::fs::write(&reference, hsm.uri("timestamp-old")).expect("write reference");
    let err = fail(&r, &hsm, &["refresh"]);
    assert!(err.contains("object=\"timestamp-old\""), "{err}");
    // ... or another key.
    std::fs::write(&reference, hsm.uri("snapshot")).expect("write reference");
    let err = fail(&r, &hsm, &["refresh"]);
    assert!(err.contains(&format!("is named for key {ts}")), "{err}");
    std::fs::write(&reference, hsm.uri("timestamp")).expect("write reference");
    ok(&r, &hsm, &["refresh"]);

    // A missing token and a missing module.
    let other = hsm
        .uri("timestamp")
        .replace("token=petrel-errors", "token=nope");
    let err = expect_fail(hsm.cmd(&["key", "public", &other]));
    assert!(
        err.contains("no token matches token=\"nope\"") && err.contains("\"petrel-errors\""),
        "{err}"
    );
    let gone = hsm
        .uri("timestamp")
        .replace(path(&hsm.module), "/nonexistent/libsofthsm2.so");
    let err = expect_fail(hsm.cmd(&["key", "public", &gone]));
    assert!(
        err.contains("module /nonexistent/libsofthsm2.so does not exist"),
        "{err}"
    );

    // A key Petrel cannot sign with: P-384. The error says what to use instead.
    let p384 = hsm.root.join("p384.pem");
    let rng = ring::rand::SystemRandom::new();
    let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        &rng,
    )
    .expect("P-384 key");
    std::fs::write(
        &p384,
        pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec())),
    )
    .expect("write");
    hsm.import(&p384, "p384", "c3");
    let err = expect_fail(hsm.cmd(&["key", "public", &hsm.uri("p384")]));
    assert!(err.contains("not on curve P-256"), "{err}");

    // Generating never replaces a key.
    let err = expect_fail(hsm.cmd(&[
        "key",
        "generate",
        "--type",
        "ecdsa",
        "--output",
        &hsm.uri("timestamp"),
    ]));
    assert!(
        err.contains("already holds a private key labelled"),
        "{err}"
    );

    // A malformed URI is refused before any token is touched.
    let o = run(hsm.env(r.cmd(&[
        "rotate",
        "timestamp",
        "--add-key",
        "pkcs11:token=x;colour=red",
    ])));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("colour"), "{err}");
}

/// The campaign manifest `rollout gate` halts, as a device sees it after the gate ran.
fn campaign_as_seen(r: &Repo, id: &str) -> (u64, CampaignState) {
    let mut device = Device::new(r);
    device
        .updater
        .refresh()
        .expect("the device accepts the tree");
    let name = format!("campaigns/{id}.json");
    let info = device
        .updater
        .get_target_info(&name)
        .expect("lookup")
        .expect("listed");
    let dest = device.work.path().join("c.json");
    device
        .updater
        .download_target(&info, &dest)
        .expect("download");
    let bytes = std::fs::read(&dest).expect("downloaded");
    let e: Entry<CampaignManifest> =
        Entry::from_target(&info, &bytes, device.updater.trusted().expect("refreshed"))
            .expect("manifest");
    (e.manifest.revision, e.manifest.state)
}

#[test]
fn rollout_gate_halts_a_campaign_with_every_key_it_needs_in_the_token() {
    let hsm = Hsm::new("petrel-gate");
    hsm.generate("ed25519", "timestamp");
    hsm.generate("ed25519", "snapshot");
    let r = repo_with_online_keys(&hsm, "timestamp", "snapshot");
    let group = r.src(
        "group.toml",
        br#"kind = "group"
schema_version = 1
id = "kiosk-eu"
revision = 1

[apps."acme.fw"]
version = "1.0"
target = "apps/acme/fw/1.0/fw.bin"
"#,
    );
    ok(&r, &hsm, &["group", "set", path(&group)]);
    let campaign = r.src(
        "bad.toml",
        br#"kind = "campaign"
schema_version = 1
id = "bad"
revision = 1
state = "active"

[notice.en]
title = "Firmware 1.0"
body = "Faster."
severity = "recommended"

[consent]
policy = "none"

[applies_to]
vendors = ["acme"]

[payload]
group = { id = "kiosk-eu", revision = 1 }

[[rollout.waves]]
share_bp = 10000
start = 2030-03-03T00:00:00Z
"#,
    );
    ok(&r, &hsm, &["campaign", "create", path(&campaign)]);
    ok(&r, &hsm, &["publish"]);
    // The campaigns role's key moves into the token too: the gate runs from cron on the
    // online machine, where no private key file is left.
    let file_key = r.json("metadata/targets.json")["signed"]["delegations"]["roles"]
        .as_array()
        .expect("delegations")
        .iter()
        .find(|d| d["name"] == "campaigns")
        .expect("campaigns role")["keyids"][0]
        .as_str()
        .expect("key id")
        .to_string();
    let token_key = hsm.generate("ecdsa", "campaigns");
    ok(
        &r,
        &hsm,
        &[
            "rotate",
            "campaigns",
            "--add-key",
            &hsm.uri("campaigns"),
            "--remove-key",
            &file_key,
        ],
    );
    ok(&r, &hsm, &["publish"]);
    std::fs::remove_file(r.dir.join(format!("keys/{file_key}.pem"))).expect("old key");

    let db = r.scratch("reports.db");
    let store = ReportStore::open(&db, &StoreOptions::default()).expect("store");
    for (i, result) in [
        ReportResult::Failed,
        ReportResult::Failed,
        ReportResult::Succeeded,
    ]
    .into_iter()
    .enumerate()
    {
        let device = format!("dev-{i}");
        let key = DeviceKey::load_or_create(r.scratch(&format!("{device}.key"))).expect("key");
        store
            .enroll(&device, key.public_key(), false)
            .expect("enroll");
        let report = Report::new(ReportFields {
            device_id: device,
            campaign: "bad".into(),
            revision: 1,
            wave: Some(0),
            result,
            reason: String::new(),
            inventory_after: Default::default(),
            consent_log: Vec::new(),
            time: chrono::Utc::now(),
            rolled_back: false,
        })
        .sign(&key);
        store.insert(&report, &report.to_vec()).expect("insert");
    }
    drop(store);
    let out = ok(
        &r,
        &hsm,
        &[
            "rollout",
            "gate",
            "--reports",
            path(&db),
            "--max-failure-rate",
            "0.5",
        ],
    );
    assert!(out.contains("HALTED (revision 2)"), "{out}");
    r.verify_ok();
    assert_eq!(campaign_as_seen(&r, "bad"), (2, CampaignState::Halted));
    let campaigns = r.tree_json(&format!(
        "metadata/{}.campaigns.json",
        snapshot_version_of(&r, "campaigns")
    ));
    assert_eq!(signers(&campaigns), vec![token_key]);
}

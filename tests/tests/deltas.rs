//! Whole-file binary deltas end to end: a repository built with petrel-repo (artifacts,
//! group, campaign, and `petrel-repo delta` into a `deltas` role), served over HTTP on
//! 127.0.0.1, and the real device agent (`petrel update`) updating a device from what it
//! has installed. The result is always the signed artifact: through the delta when the
//! device has exactly the delta's base, through the full artifact otherwise, and through
//! the full artifact when a delta (even one validly signed by the deltas role) produces
//! other bytes.

use std::path::{Path, PathBuf};

use petrel_client::agent::inventory::installed_artifact_file;
use petrel_client::agent::update::{InstallResult, UpdateOutcome};
use petrel_client::agent::{render, Agent, AgentConfig};
use petrel_client::delta::{self, DeltaMeta};
use petrel_client::manifest::sha256_hex;
use petrel_repo::delta::{make_deltas, DeltaOptions, DeltaOutcome};
use petrel_repo::editor::{AddOptions, Editor, SourceFile};
use petrel_tests::scenario::{now, Scenario};
use petrel_tests::StaticServer;

const PLAYER: &str = "acme.player";
const OLD: &str = "apps/acme.player/1.0/acme.player.bin";
const NEW: &str = "apps/acme.player/1.1/acme.player.bin";
const KIOSK: &str = "type = \"kiosk\"\nvendor = \"acme\"\nutc_offset_minutes = 0\nlocale = \"en\"";

/// Pseudo-random bytes (incompressible on their own).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Player 1.0 and 1.1 (1.0 with a few local edits).
fn versions() -> (Vec<u8>, Vec<u8>) {
    let old = noise(1, 200_000);
    let mut new = old.clone();
    new[3000..3100].copy_from_slice(&noise(2, 100));
    new.splice(90_000..90_000, noise(3, 1000));
    new.truncate(new.len() - 5000);
    (old, new)
}

/// A repository with a terminating `deltas` role, both player versions, group kiosk-eu
/// (player 1.1) with `devices` assigned, and a campaign that needs no consent. Nothing is
/// published yet.
fn repository(old: &[u8], new: &[u8], devices: &[&str]) -> Scenario {
    let mut s = Scenario::new();
    s.repo()
        .delegate("targets", "deltas", &["deltas/*", "deltas/*/*"], true);
    s.repo().add("targets", OLD, old);
    s.repo().add("targets", NEW, new);
    s.group(&format!(
        "kind = \"group\"\nschema_version = 1\nid = \"kiosk-eu\"\nrevision = 1\n\n[apps.{PLAYER:?}]\nversion = \"1.1\"\ntarget = {NEW:?}\n"
    ));
    s.assign("kiosk-eu", devices, false, &[]);
    s.create_campaign(
        r#"kind = "campaign"
schema_version = 1
id = "player"
revision = 1
state = "active"

[notice.en]
title = "Player 1.1"
body = "Smaller and faster."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = { id = "kiosk-eu", revision = 1 }
"#,
    );
    s
}

/// `petrel-repo delta --from OLD --to NEW` (role `deltas`); returns the delta's length.
fn add_delta(s: &mut Scenario) -> u64 {
    let out = make_deltas(
        s.repo().workspace(),
        &DeltaOptions {
            from: vec![OLD.into()],
            to: NEW.into(),
            role: None,
            ..DeltaOptions::default()
        },
    )
    .expect("petrel-repo delta");
    match out.as_slice() {
        [DeltaOutcome::Added { role, length, .. }] => {
            assert_eq!(role, "deltas");
            *length
        }
        other => panic!("expected one delta added, got {other:?}"),
    }
}

/// A device provisioned against the tree served at `server`, with `installed` as its
/// player 1.0 (inventory directory `apps/`).
struct Device {
    config: AgentConfig,
    apps: PathBuf,
}

fn device(s: &Scenario, server: &StaticServer, dir: &Path, id: &str, installed: &[u8]) -> Device {
    let apps = dir.join("apps");
    std::fs::create_dir_all(apps.join(PLAYER)).expect("inventory dir");
    std::fs::write(apps.join(PLAYER).join("VERSION"), "1.0\n").expect("VERSION");
    std::fs::write(apps.join(PLAYER).join("player.bin"), installed).expect("artifact");
    std::fs::write(dir.join("profile.toml"), format!("id = {id:?}\n{KIOSK}\n")).expect("profile");
    let config_path = dir.join("device.toml");
    std::fs::write(
        &config_path,
        format!(
            "state_dir = \"state\"\nprofile = \"profile.toml\"\n\n[repository]\nmetadata_url = {:?}\ntargets_url = {:?}\nassign_bin_digits = 2\n\n[inventory]\ndir = \"apps\"\n",
            server.url("metadata"),
            server.url("targets")
        ),
    )
    .expect("device.toml");
    let config = AgentConfig::load(&config_path).unwrap_or_else(|e| panic!("config: {e}"));
    let root = std::fs::read(s.tree().join("metadata/1.root.json")).expect("first root");
    Agent::init(&config, &root, false).unwrap_or_else(|e| panic!("petrel init: {e}"));
    Device { config, apps }
}

impl Device {
    /// `petrel check` as text.
    fn check_text(&self) -> String {
        let agent = Agent::open(self.config.clone()).expect("agent");
        let ev = agent.evaluate(Some(now())).expect("check");
        render::check_text(&agent, &ev)
    }

    /// `petrel update`, which must install; with what it prints.
    fn update(&self) -> (UpdateOutcome, String) {
        let mut agent = Agent::open(self.config.clone()).expect("agent");
        let out = agent.update(Some(now())).expect("update");
        let text = render::update_text(&agent, &out);
        let install = out.installs.first().expect("an install was due");
        assert_eq!(
            install.result,
            InstallResult::Installed,
            "{}",
            install.reason
        );
        assert!(!out.failed(), "{:?}", out.staged);
        (out, text)
    }

    /// The installed player's bytes.
    fn installed(&self) -> Vec<u8> {
        let f = installed_artifact_file(&self.apps, PLAYER).expect("one artifact file");
        std::fs::read(f).expect("installed bytes")
    }
}

/// Requests for target files (not metadata) under `deltas/`.
fn delta_downloads(server: &StaticServer) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.starts_with("/targets/deltas/"))
        .collect()
}

#[test]
fn a_device_with_the_base_installed_updates_through_the_delta_and_installs_the_signed_bytes() {
    let (old, new) = versions();
    let mut s = repository(&old, &new, &["kiosk-1"]);
    let delta_len = add_delta(&mut s);
    s.publish();
    let server = StaticServer::serve(s.tree()).expect("server");
    let dir = tempfile::tempdir().expect("tmp");
    let d = device(&s, &server, dir.path(), "kiosk-1", &old);

    let shown = d.check_text();
    assert!(
        shown.contains("(1 as delta(s) from the installed bytes)"),
        "{shown}"
    );
    let (out, text) = d.update();
    assert!(
        text.contains("1 of them built from a delta and the installed bytes"),
        "{text}"
    );
    let st = &out.staged[0];
    println!(
        "full artifact {} bytes, delta {delta_len} bytes, transferred {}",
        new.len(),
        st.bytes
    );
    assert_eq!(st.via_delta, vec![NEW.to_string()], "{st:?}");
    assert!(st.delta_fallbacks.is_empty(), "{st:?}");
    assert_eq!(st.bytes, delta_len);
    assert!(
        st.bytes * 10 < new.len() as u64,
        "{} bytes transferred for a {}-byte artifact",
        st.bytes,
        new.len()
    );
    assert_eq!(delta_downloads(&server).len(), 1);
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.path.contains("acme.player.bin")),
        "the full artifact was never downloaded: {:?}",
        server.requests()
    );
    assert_eq!(sha256_hex(&d.installed()), sha256_hex(&new));
}

#[test]
fn a_signed_delta_that_produces_other_bytes_falls_back_to_the_full_artifact() {
    let (old, new) = versions();
    let mut s = repository(&old, &new, &["kiosk-1"]);
    // The deltas role signs a delta under the right name with truthful-looking metadata,
    // but it turns 1.0 into other bytes of the same length.
    let mut evil = new.clone();
    evil[50_000] ^= 0x01;
    let bytes = delta::make(&old, &evil).expect("delta");
    let meta = DeltaMeta {
        format: delta::FORMAT.into(),
        base_sha256: sha256_hex(&old),
        base_length: old.len() as u64,
        result_sha256: sha256_hex(&new),
        result_length: new.len() as u64,
    };
    let src = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(src.path(), &bytes).expect("write");
    let ws = s.repo().workspace();
    let mut ed = Editor::new(ws);
    ed.add_targets(
        &[SourceFile {
            path: src.path().to_path_buf(),
            name: delta::target_path(&meta.result_sha256, &meta.base_sha256),
        }],
        &AddOptions {
            role: Some("deltas".into()),
            custom: Some(meta.to_custom()),
        },
    )
    .expect("add the hostile delta");
    ed.save().expect("save");
    s.publish();
    let server = StaticServer::serve(s.tree()).expect("server");
    let dir = tempfile::tempdir().expect("tmp");
    let d = device(&s, &server, dir.path(), "kiosk-1", &old);

    let (out, text) = d.update();
    assert!(
        text.contains("delta not used, full download instead"),
        "{text}"
    );
    let st = &out.staged[0];
    assert!(st.via_delta.is_empty(), "{st:?}");
    assert_eq!(st.delta_fallbacks.len(), 1, "{st:?}");
    assert!(
        st.delta_fallbacks[0].contains("not the signed artifact"),
        "{:?}",
        st.delta_fallbacks
    );
    assert_eq!(delta_downloads(&server).len(), 1, "the delta was tried");
    assert_eq!(
        st.bytes,
        new.len() as u64 + bytes.len() as u64,
        "the full artifact was downloaded, after the unusable delta (both counted)"
    );
    assert_eq!(d.installed(), new, "exactly the signed 1.1 is installed");
    let staging: Vec<String> = walk(&dir.path().join("state"))
        .into_iter()
        .filter(|p| p.contains(".petrel-tmp-"))
        .collect();
    assert!(staging.is_empty(), "partial files left: {staging:?}");
}

#[test]
fn a_device_whose_bytes_match_no_delta_base_downloads_the_full_artifact() {
    let (old, new) = versions();
    let mut s = repository(&old, &new, &["kiosk-1"]);
    add_delta(&mut s);
    s.publish();
    let server = StaticServer::serve(s.tree()).expect("server");
    let dir = tempfile::tempdir().expect("tmp");
    // Version 1.0 by its VERSION file, but patched locally: not the delta's base.
    let mut patched = old.clone();
    patched[10] ^= 0xff;
    let d = device(&s, &server, dir.path(), "kiosk-1", &patched);

    let shown = d.check_text();
    assert!(!shown.contains("as delta(s)"), "{shown}");
    let (out, _) = d.update();
    let st = &out.staged[0];
    assert!(
        st.via_delta.is_empty() && st.delta_fallbacks.is_empty(),
        "{st:?}"
    );
    assert_eq!(st.bytes, new.len() as u64);
    assert!(
        delta_downloads(&server).is_empty(),
        "no delta was downloaded: {:?}",
        server.requests()
    );
    assert_eq!(d.installed(), new);
}

/// Every file path under `dir`, as text.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    for _ in 0..10_000 {
        let Some(d) = stack.pop() else { break };
        let Ok(es) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in es.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

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
use petrel_client::delta::{self, ApplyMode, DeltaMeta};
use petrel_client::manifest::sha256_hex;
use petrel_repo::delta::{make_deltas, DeltaFormat, DeltaOptions, DeltaOutcome};
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
    device_with(s, server, dir, id, installed, "")
}

/// [`device`], with `extra` appended to its device.toml (e.g. a `[deltas]` section).
fn device_with(
    s: &Scenario,
    server: &StaticServer,
    dir: &Path,
    id: &str,
    installed: &[u8],
    extra: &str,
) -> Device {
    let apps = dir.join("apps");
    std::fs::create_dir_all(apps.join(PLAYER)).expect("inventory dir");
    std::fs::write(apps.join(PLAYER).join("VERSION"), "1.0\n").expect("VERSION");
    std::fs::write(apps.join(PLAYER).join("player.bin"), installed).expect("artifact");
    std::fs::write(dir.join("profile.toml"), format!("id = {id:?}\n{KIOSK}\n")).expect("profile");
    let config_path = dir.join("device.toml");
    std::fs::write(
        &config_path,
        format!(
            "state_dir = \"state\"\nprofile = \"profile.toml\"\n\n[repository]\nmetadata_url = {:?}\ntargets_url = {:?}\nassign_bin_digits = 2\n\n[inventory]\ndir = \"apps\"\n{extra}",
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

/// A real ELF executable the system ships (x86-64 or AArch64 on Debian).
const SYSTEM_ELF: &str = "/usr/bin/ls";

/// Player 1.0 as a copy of a system ELF executable, and 1.1 as the same file with 4 KiB in
/// the middle of it (past the ELF and program headers, inside its code) rewritten.
fn elf_versions() -> (Vec<u8>, Vec<u8>) {
    let old = std::fs::read(SYSTEM_ELF).unwrap_or_else(|e| panic!("{SYSTEM_ELF}: {e}"));
    assert!(
        delta::exec::Layout::read(old.as_slice()).is_some(),
        "{SYSTEM_ELF} is an x86-64 or AArch64 ELF file"
    );
    let mut new = old.clone();
    let mid = old.len() / 2;
    new[mid..mid + 4096].copy_from_slice(&noise(4, 4096));
    assert!(
        delta::exec::Layout::read(new.as_slice()).is_some(),
        "still ELF"
    );
    (old, new)
}

/// `petrel-repo delta --from OLD --to NEW --format <format>` (role `deltas`); returns the
/// delta's target name and length.
fn add_delta_as(s: &mut Scenario, format: DeltaFormat) -> (String, u64) {
    let out = make_deltas(
        s.repo().workspace(),
        &DeltaOptions {
            from: vec![OLD.into()],
            to: NEW.into(),
            role: None,
            format,
        },
    )
    .expect("petrel-repo delta");
    match out.as_slice() {
        [DeltaOutcome::Added {
            role, name, length, ..
        }] => {
            assert_eq!(role, "deltas");
            (name.clone(), *length)
        }
        other => panic!("expected one delta added, got {other:?}"),
    }
}

/// The custom metadata the published `deltas` role signs for target `name`.
fn published_delta_meta(s: &Scenario, name: &str) -> DeltaMeta {
    let dir = s.tree().join("metadata");
    let newest = std::fs::read_dir(&dir)
        .expect("metadata dir")
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            let v = f.strip_suffix(".deltas.json")?.parse::<u64>().ok()?;
            Some((v, e.path()))
        })
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("no deltas role in {}", dir.display()));
    let role: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&newest).expect("deltas role")).expect("json");
    let t = &role["signed"]["targets"][name];
    assert!(t.is_object(), "{name} is not listed by role deltas: {role}");
    DeltaMeta::from_custom(t.get("custom")).expect("delta metadata")
}

/// An ELF player updated through an `exec-bsdiff` delta, applied in `mode` (the device
/// config's `[deltas]` section is `deltas`).
fn elf_update_through_exec_bsdiff(deltas: &str, mode: ApplyMode) {
    let (old, new) = elf_versions();
    let mut s = repository(&old, &new, &["kiosk-1"]);
    let (name, delta_len) = add_delta_as(&mut s, DeltaFormat::Exec);
    s.publish();
    let meta = published_delta_meta(&s, &name);
    assert_eq!(meta.format, delta::bsdiff::EXEC_FORMAT, "{meta:?}");
    assert_eq!(meta.base_sha256, sha256_hex(&old));
    assert_eq!(meta.result_sha256, sha256_hex(&new));
    let server = StaticServer::serve(s.tree()).expect("server");
    let dir = tempfile::tempdir().expect("tmp");
    let d = device_with(&s, &server, dir.path(), "kiosk-1", &old, deltas);
    assert_eq!(d.config.deltas.mode, mode);

    let (out, text) = d.update();
    assert!(
        text.contains("1 of them built from a delta and the installed bytes"),
        "{text}"
    );
    let json = render::update_json(&out);
    let st = &json["staged"][0];
    assert_eq!(st["via_delta"], serde_json::json!([NEW]), "{json}");
    assert_eq!(st["delta_fallbacks"], serde_json::json!([]), "{json}");
    assert_eq!(st["bytes"], serde_json::json!(delta_len), "{json}");
    println!(
        "{mode:?}: full artifact {} bytes, exec-bsdiff delta {delta_len} bytes",
        new.len()
    );
    assert!(
        delta_len * 4 < new.len() as u64,
        "a {delta_len}-byte delta for 4 KiB changed in {} bytes",
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
    assert_eq!(d.installed(), new, "exactly the signed 1.1 is installed");
}

#[test]
fn an_elf_artifact_is_updated_through_an_exec_bsdiff_delta_in_both_apply_modes() {
    elf_update_through_exec_bsdiff("", ApplyMode::Mmap);
    elf_update_through_exec_bsdiff("\n[deltas]\nmode = \"streaming\"\n", ApplyMode::Streaming);

    // Left to choose (`--format auto`), petrel-repo builds the executable-aware candidate
    // for this pair too, and records whichever format it keeps; the device applies it.
    let (old, new) = elf_versions();
    let best = delta::make_best(&old, &new, &delta::BuildOptions::default()).expect("best");
    assert!(
        best.candidates
            .iter()
            .any(|c| c.format == delta::bsdiff::EXEC_FORMAT),
        "{:?}",
        best.candidates
    );
    let mut s = repository(&old, &new, &["kiosk-1"]);
    let (name, delta_len) = add_delta_as(&mut s, DeltaFormat::Auto);
    s.publish();
    let meta = published_delta_meta(&s, &name);
    assert!(delta::FORMATS.contains(&meta.format.as_str()), "{meta:?}");
    assert_eq!(meta.format, best.format);
    assert_eq!(delta_len, best.bytes.len() as u64);
    let server = StaticServer::serve(s.tree()).expect("server");
    let dir = tempfile::tempdir().expect("tmp");
    let d = device(&s, &server, dir.path(), "kiosk-1", &old);
    let (out, _) = d.update();
    assert_eq!(
        out.staged[0].via_delta,
        vec![NEW.to_string()],
        "{:?}",
        out.staged
    );
    assert_eq!(d.installed(), new);
}

#[test]
fn a_delta_above_max_share_is_not_used_and_the_full_artifact_is_downloaded() {
    let (old, new) = versions();
    let mut s = repository(&old, &new, &["kiosk-1"]);
    let delta_len = add_delta(&mut s);
    assert!(
        delta_len as f64 > 0.001 * new.len() as f64,
        "the delta ({delta_len} bytes) is above the share"
    );
    s.publish();
    let server = StaticServer::serve(s.tree()).expect("server");
    let dir = tempfile::tempdir().expect("tmp");
    let d = device_with(
        &s,
        &server,
        dir.path(),
        "kiosk-1",
        &old,
        "\n[deltas]\nmax_share = 0.001\n",
    );

    let shown = d.check_text();
    assert!(!shown.contains("as delta(s)"), "{shown}");
    let (out, text) = d.update();
    assert!(!text.contains("built from a delta"), "{text}");
    let json = render::update_json(&out);
    let st = &json["staged"][0];
    assert_eq!(st["via_delta"], serde_json::json!([]), "{json}");
    assert_eq!(st["delta_fallbacks"], serde_json::json!([]), "{json}");
    assert_eq!(st["bytes"], serde_json::json!(new.len()), "{json}");
    assert!(
        delta_downloads(&server).is_empty(),
        "no delta was downloaded: {:?}",
        server.requests()
    );
    assert_eq!(d.installed(), new);
}

#[test]
fn a_corrupt_bsdiff_delta_falls_back_to_the_full_artifact() {
    let (old, new) = versions();
    let mut s = repository(&old, &new, &["kiosk-1"]);
    // A well-formed bsdiff-zstd delta, signed by the deltas role under the right name with
    // the right claims, that builds other bytes of the same length from 1.0.
    let mut evil = new.clone();
    evil[120_000..120_016].copy_from_slice(&[0xa5; 16]);
    let bytes = delta::bsdiff::make(&old, &evil, false)
        .expect("bsdiff")
        .expect("bsdiff fits the pair");
    assert_eq!(
        delta::sniff_format(&bytes),
        Some(delta::bsdiff::FORMAT),
        "a bsdiff-zstd delta"
    );
    let meta = DeltaMeta {
        format: delta::bsdiff::FORMAT.into(),
        base_sha256: sha256_hex(&old),
        base_length: old.len() as u64,
        result_sha256: sha256_hex(&new),
        result_length: new.len() as u64,
    };
    let name = delta::target_path(&meta.result_sha256, &meta.base_sha256);
    let src = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(src.path(), &bytes).expect("write");
    let ws = s.repo().workspace();
    let mut ed = Editor::new(ws);
    ed.add_targets(
        &[SourceFile {
            path: src.path().to_path_buf(),
            name: name.clone(),
        }],
        &AddOptions {
            role: Some("deltas".into()),
            custom: Some(meta.to_custom()),
        },
    )
    .expect("add the hostile delta");
    ed.save().expect("save");
    s.publish();
    assert_eq!(published_delta_meta(&s, &name), meta);
    let server = StaticServer::serve(s.tree()).expect("server");
    let dir = tempfile::tempdir().expect("tmp");
    let d = device(&s, &server, dir.path(), "kiosk-1", &old);

    let shown = d.check_text();
    assert!(
        shown.contains("(1 as delta(s) from the installed bytes)"),
        "the device means to use it: {shown}"
    );
    let (out, text) = d.update();
    assert!(
        text.contains("delta not used, full download instead"),
        "{text}"
    );
    let json = render::update_json(&out);
    let st = &json["staged"][0];
    assert_eq!(st["via_delta"], serde_json::json!([]), "{json}");
    let fallbacks = st["delta_fallbacks"].as_array().expect("delta_fallbacks");
    assert_eq!(fallbacks.len(), 1, "{json}");
    let why = fallbacks[0].as_str().expect("text");
    assert!(
        why.contains("not the signed artifact") && why.contains(&sha256_hex(&evil)),
        "{why}"
    );
    assert_eq!(delta_downloads(&server).len(), 1, "the delta was tried");
    assert_eq!(
        st["bytes"],
        serde_json::json!(new.len() + bytes.len()),
        "the full artifact was downloaded, after the unusable delta (both counted): {json}"
    );
    assert_eq!(d.installed(), new, "exactly the signed 1.1 is installed");
    let staging: Vec<String> = walk(&dir.path().join("state"))
        .into_iter()
        .filter(|p| p.contains(".petrel-tmp-"))
        .collect();
    assert!(staging.is_empty(), "partial files left: {staging:?}");
}

#[test]
fn a_bad_deltas_setting_makes_petrel_check_fail_naming_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("device.toml");
    let base = "state_dir = \"state\"\nprofile = \"profile.toml\"\n\n[repository]\nmetadata_url = \"http://127.0.0.1:9/metadata\"\ntargets_url = \"http://127.0.0.1:9/targets\"\n\n[inventory]\ndir = \"apps\"\n";
    // What `petrel check` reads first, and prints as `petrel: <error>` when it fails.
    let load = |deltas: &str| {
        std::fs::write(&config, format!("{base}\n[deltas]\n{deltas}\n")).expect("device.toml");
        AgentConfig::load(&config)
    };
    for (setting, key) in [
        ("max_share = 2", "deltas.max_share: 2 "),
        ("max_share = 0", "deltas.max_share: 0 "),
        ("max_share = -0.5", "deltas.max_share: -0.5 "),
        ("mode = \"bogus\"", "mode = \"bogus\""),
    ] {
        let err = match load(setting) {
            Ok(c) => panic!("{setting}: accepted as {:?}", c.deltas),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(key), "{setting}: names {key:?}: {err}");
        assert!(
            err.contains(&config.display().to_string()),
            "{setting}: names the file: {err}"
        );
    }
    let err = load("mode = \"bogus\"").unwrap_err().to_string();
    assert!(err.contains("mmap") && err.contains("streaming"), "{err}");
    let c = load("mode = \"streaming\"\nmax_share = 0.5").expect("good values");
    assert_eq!(c.deltas.mode, ApplyMode::Streaming);
    assert_eq!(c.deltas.max_share, 0.5);
}

/// A result that does not fit the disk is an error naming the full disk, in both apply
/// modes and for both zstd formats: the mapped mode allocates the output's blocks before
/// writing through its map (without that, the first page the disk cannot hold would end
/// the process with SIGBUS), and `petrel delta-apply` removes what it wrote.
#[test]
fn a_result_that_does_not_fit_the_disk_is_an_error_in_both_modes_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let Some(fs) = petrel_tests::Tmpfs::mount(&small, "1m") else {
        return;
    };
    let free = fs.free();
    // 1.5 MiB to 2 MiB: small enough for a zstd-patch delta in streaming mode.
    let old = noise(41, 3 << 19);
    let mut new = old.clone();
    new[100_000..100_100].copy_from_slice(&noise(42, 100));
    new.extend_from_slice(&noise(43, 1 << 19));
    let base = dir.path().join("old.bin");
    std::fs::write(&base, &old).expect("write the base");
    let deltas = [
        (
            "zstd-patch",
            delta::make(&old, &new).expect("zstd-patch delta"),
        ),
        (
            "zstd-chunked",
            delta::chunked::make(&old, &new).expect("zstd-chunked delta"),
        ),
    ];
    for (format, bytes) in deltas {
        let d = dir.path().join(format!("{format}.delta"));
        std::fs::write(&d, &bytes).expect("write the delta");
        for streaming in [false, true] {
            let out = small.join("new.bin");
            let mut cmd = std::process::Command::new(petrel_tests::petrel_bin());
            cmd.arg("delta-apply")
                .arg(&base)
                .arg(&d)
                .arg("-o")
                .arg(&out);
            if streaming {
                cmd.arg("--streaming");
            }
            let o = cmd.output().expect("run petrel delta-apply");
            let what = format!(
                "{format}, streaming {streaming}: {}",
                petrel_tests::describe(&o)
            );
            assert_eq!(o.status.code(), Some(1), "an error, not a signal: {what}");
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(stderr.contains("No space left on device"), "{what}");
            assert!(!out.exists(), "what was written is removed: {what}");
            assert!(
                fs.free() + 64 * 1024 >= free,
                "the space is given back: {what}"
            );
        }
    }
}

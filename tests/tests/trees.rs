//! Tree artifacts end to end: a directory published with `petrel-repo add --tree`
//! (install type "tree"), its tree delta made with `petrel-repo delta`, served over HTTP
//! on 127.0.0.1, and the real device agent installing it: in full on a device without it,
//! through the tree delta on a device with the previous tree (only a file edited by hand
//! is read again, alone, from the full tree), and in full when the installed tree is not
//! the delta's base.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use petrel_client::agent::update::{InstallResult, UpdateOutcome};
use petrel_client::agent::{Agent, AgentConfig};
use petrel_client::tree;
use petrel_repo::delta::{make_deltas, DeltaOptions, DeltaOutcome};
use petrel_repo::editor::Editor;
use petrel_tests::scenario::{now, Scenario};
use petrel_tests::StaticServer;

const FONTS: &str = "acme.fonts";
const OLD: &str = "apps/acme.fonts/1.0/fonts.ptree";
const NEW: &str = "apps/acme.fonts/1.1/fonts.ptree";
const KIOSK: &str = "type = \"kiosk\"\nvendor = \"acme\"\nutc_offset_minutes = 0\nlocale = \"en\"";

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

/// Version 1.0 and 1.1 of a package tree: 1.1 changes a library (renamed
/// `libglyph.so.1.2` → `libglyph.so.1.3`, its link follows), edits a font, adds a file
/// and removes one; a data file and a script are the same.
fn trees(at: &Path) -> (PathBuf, PathBuf) {
    let build = |v: &str| {
        let d = at.join(v);
        fs::create_dir_all(d.join("lib")).unwrap();
        fs::create_dir_all(d.join("share/fonts")).unwrap();
        fs::create_dir_all(d.join("bin")).unwrap();
        fs::write(d.join("share/fonts/data.bin"), noise(7, 300_000)).unwrap();
        fs::write(d.join("bin/refresh"), b"#!/bin/sh\necho refreshed\n").unwrap();
        fs::set_permissions(d.join("bin/refresh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("../share/fonts", d.join("bin/fonts")).unwrap();
        d
    };
    let v1 = build("v1");
    fs::write(v1.join("lib/libglyph.so.1.2"), noise(1, 400_000)).unwrap();
    symlink("libglyph.so.1.2", v1.join("lib/libglyph.so.1")).unwrap();
    fs::write(v1.join("share/fonts/sans.ttf"), noise(2, 200_000)).unwrap();
    fs::write(v1.join("share/fonts/old.ttf"), noise(3, 50_000)).unwrap();
    let v2 = build("v2");
    let mut lib = noise(1, 400_000);
    lib[10_000..10_100].copy_from_slice(&noise(4, 100));
    fs::write(v2.join("lib/libglyph.so.1.3"), lib).unwrap();
    symlink("libglyph.so.1.3", v2.join("lib/libglyph.so.1")).unwrap();
    let mut sans = noise(2, 200_000);
    sans.splice(5_000..5_000, noise(5, 300));
    fs::write(v2.join("share/fonts/sans.ttf"), sans).unwrap();
    fs::write(v2.join("share/fonts/new.ttf"), noise(6, 40_000)).unwrap();
    (v1, v2)
}

/// A repository with both trees, a `deltas` role, group kiosk-eu (fonts 1.1 as a tree)
/// and a campaign that needs no consent; with the tree delta 1.0 → 1.1 when `delta`.
fn repository(v1: &Path, v2: &Path, delta: bool) -> (Scenario, u64) {
    let mut s = Scenario::new();
    s.repo()
        .delegate("targets", "deltas", &["deltas/*", "deltas/*/*"], true);
    {
        let mut ed = Editor::new(s.repo().workspace());
        for (dir, prefix) in [(v1, "apps/acme.fonts/1.0"), (v2, "apps/acme.fonts/1.1")] {
            petrel_repo::trees::add_trees(
                &mut ed,
                &[dir.to_path_buf()],
                Some(prefix),
                Some("fonts.ptree"),
                "targets",
                None,
            )
            .expect("petrel-repo add --tree");
        }
        ed.save().expect("save");
    }
    s.group(&format!(
        "kind = \"group\"\nschema_version = 1\nid = \"kiosk-eu\"\nrevision = 1\n\n[apps.{FONTS:?}]\nversion = \"1.1\"\ntarget = {NEW:?}\ninstall_type = \"tree\"\n"
    ));
    s.assign("kiosk-eu", &["kiosk-1"], false, &[]);
    s.create_campaign(
        r#"kind = "campaign"
schema_version = 1
id = "fonts"
revision = 1
state = "active"

[notice.en]
title = "Fonts 1.1"
body = "New glyphs."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = { id = "kiosk-eu", revision = 1 }
"#,
    );
    let mut delta_len = 0;
    if delta {
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
            [DeltaOutcome::Added { length, .. }] => delta_len = *length,
            other => panic!("expected one delta, got {other:?}"),
        }
    }
    s.publish();
    (s, delta_len)
}

struct Device {
    config: AgentConfig,
    apps: PathBuf,
}

/// A device of kiosk-eu; with `installed`, fonts 1.0 installed from that container as the
/// tree installer leaves it.
fn device(s: &Scenario, server: &StaticServer, dir: &Path, installed: Option<&Path>) -> Device {
    let apps = dir.join("apps");
    fs::create_dir_all(&apps).unwrap();
    if let Some(c) = installed {
        let app = apps.join(FONTS);
        fs::create_dir_all(&app).unwrap();
        let (bytes, _) = tree::read_manifest(&mut fs::File::open(c).unwrap(), None).unwrap();
        let m = tree::unpack(c, &tree::sha256_hex(&bytes), &app.join(tree::TREE_DIR)).unwrap();
        fs::write(app.join(tree::MANIFEST_FILE), m).unwrap();
        fs::write(app.join("VERSION"), "1.0\n").unwrap();
        let sha = petrel_client::manifest::sha256_hex(&fs::read(c).unwrap());
        fs::write(app.join("SHA256"), format!("{sha}\n")).unwrap();
    }
    fs::write(
        dir.join("profile.toml"),
        format!("id = \"kiosk-1\"\n{KIOSK}\n"),
    )
    .unwrap();
    let config_path = dir.join("device.toml");
    fs::write(
        &config_path,
        format!(
            "state_dir = \"state\"\nprofile = \"profile.toml\"\n\n[repository]\nmetadata_url = {:?}\ntargets_url = {:?}\nassign_bin_digits = 2\n\n[inventory]\ndir = \"apps\"\n",
            server.url("metadata"),
            server.url("targets")
        ),
    )
    .unwrap();
    let config = AgentConfig::load(&config_path).unwrap_or_else(|e| panic!("config: {e}"));
    let root = fs::read(s.tree().join("metadata/1.root.json")).unwrap();
    Agent::init(&config, &root, false).unwrap_or_else(|e| panic!("petrel init: {e}"));
    Device { config, apps }
}

impl Device {
    fn update(&self) -> UpdateOutcome {
        let mut agent = Agent::open(self.config.clone()).expect("agent");
        let out = agent.update(Some(now())).expect("update");
        let install = out.installs.first().expect("an install was due");
        assert_eq!(
            install.result,
            InstallResult::Installed,
            "{}",
            install.reason
        );
        assert!(!out.failed(), "{:?}", out.staged);
        out
    }

    /// The installed tree's manifest, as scanned from the disk.
    fn scanned(&self) -> tree::TreeManifest {
        tree::scan(&self.apps.join(FONTS).join(tree::TREE_DIR))
            .expect("an installed tree")
            .manifest
    }
}

/// The length of the (one, hash-prefixed) file in `dir`.
fn file_len_in(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .max()
        .unwrap()
}

fn full_downloads(server: &StaticServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("fonts.ptree"))
        .count()
}

#[test]
fn a_device_without_the_tree_installs_it_in_full_with_its_modes_and_links() {
    let t = tempfile::tempdir().unwrap();
    let (v1, v2) = trees(t.path());
    let (s, _) = repository(&v1, &v2, true);
    let server = StaticServer::serve(s.tree()).expect("server");
    let d = device(&s, &server, &t.path().join("dev"), None);
    let out = d.update();
    assert!(out.staged[0].via_delta.is_empty(), "{:?}", out.staged);
    assert_eq!(d.scanned(), tree::scan(&v2).unwrap().manifest);
    let root = d.apps.join(FONTS).join(tree::TREE_DIR);
    assert_eq!(
        fs::read_link(root.join("lib/libglyph.so.1")).unwrap(),
        Path::new("libglyph.so.1.3")
    );
    assert_eq!(
        fs::metadata(root.join("bin/refresh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_to_string(d.apps.join(FONTS).join("VERSION"))
            .unwrap()
            .trim(),
        "1.1"
    );
    // The inventory reports the signed tree's hash: nothing is left to install.
    let mut agent = Agent::open(d.config.clone()).unwrap();
    let again = agent.update(Some(now())).expect("update");
    assert!(again.installs.is_empty(), "{:?}", again.installs);
}

#[test]
fn a_device_with_the_previous_tree_updates_through_the_tree_delta_and_only_an_edited_file_is_fetched_again(
) {
    let t = tempfile::tempdir().unwrap();
    let (v1, v2) = trees(t.path());
    let (s, delta_len) = repository(&v1, &v2, true);
    let full_len: u64 = file_len_in(&s.tree().join("targets/apps/acme.fonts/1.1"));
    let server = StaticServer::serve(s.tree()).expect("server");
    let old_container = t.path().join("old.ptree");
    {
        let mut f = fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&old_container)
            .unwrap();
        petrel_repo::trees::pack_dir(&v1, &mut f).unwrap();
    }
    let d = device(&s, &server, &t.path().join("dev"), Some(&old_container));
    // Someone edited the unchanged data file by hand.
    let edited = d
        .apps
        .join(FONTS)
        .join(tree::TREE_DIR)
        .join("share/fonts/data.bin");
    fs::write(&edited, b"edited on the device").unwrap();

    let out = d.update();
    let st = &out.staged[0];
    println!(
        "tree delta {delta_len} bytes, full tree {full_len} bytes, transferred {}",
        st.bytes
    );
    assert_eq!(st.via_delta, vec![NEW.to_string()], "{st:?}");
    assert!(st.delta_fallbacks.is_empty(), "{st:?}");
    assert_eq!(d.scanned(), tree::scan(&v2).unwrap().manifest);
    // The delta, plus the one edited file's frame read from the full tree: far less than
    // the whole tree's 1 MB.
    assert!(
        st.bytes > delta_len && st.bytes < delta_len + 400_000,
        "{st:?}"
    );
    assert_eq!(
        full_downloads(&server),
        1,
        "only the edited file is read from the full tree"
    );
}

#[test]
fn a_device_whose_installed_tree_is_not_the_delta_base_installs_the_full_tree() {
    let t = tempfile::tempdir().unwrap();
    let (v1, v2) = trees(t.path());
    let (s, _) = repository(&v1, &v2, true);
    let server = StaticServer::serve(s.tree()).expect("server");
    let old_container = t.path().join("old.ptree");
    {
        let mut f = fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&old_container)
            .unwrap();
        petrel_repo::trees::pack_dir(&v1, &mut f).unwrap();
    }
    let d = device(&s, &server, &t.path().join("dev"), Some(&old_container));
    // The recorded manifest is not the one the delta was made from.
    let mpath = d.apps.join(FONTS).join(tree::MANIFEST_FILE);
    let mut m = fs::read(&mpath).unwrap();
    m.push(b' ');
    fs::write(&mpath, m).unwrap();
    let out = d.update();
    let st = &out.staged[0];
    assert!(st.via_delta.is_empty(), "{st:?}");
    assert_eq!(st.delta_fallbacks.len(), 1, "{st:?}");
    assert!(
        st.delta_fallbacks[0].contains("not the delta's base"),
        "{st:?}"
    );
    assert_eq!(d.scanned(), tree::scan(&v2).unwrap().manifest);
}

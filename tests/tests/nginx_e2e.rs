//! The client end to end against nginx: the tree `petrel-repo` writes, served by a stock
//! nginx with the configuration `docs/server.md` recommends (`docs/nginx/*.conf`), and no
//! Petrel code on the server side.
//!
//! * A refresh, then top-level, delegated and hashed-bin targets downloaded and checked,
//!   every request by its consistent-snapshot name (`N.<role>.json`, `<hash>.<name>`).
//! * A new publish is picked up by the next refresh, through nginx's validators.
//! * The documented configuration sends the cache headers `docs/server.md` promises, and
//!   never serves names publish is still writing or anything outside `metadata/` and
//!   `targets/`.
//! * Attack fixtures (`fixtures/attacks`) served by nginx are refused exactly as they are
//!   over `file://`.
//! * The device agent reaches its decision on a demo-like repository through nginx.
//!
//! nginx comes from `PETREL_NGINX` (set by `test.sh`, which runs
//! `scripts/ensure-nginx.sh`), else `PATH` or `/usr/sbin/nginx`. Without nginx these tests
//! fail when `CI` is set and are skipped with a notice otherwise (see
//! [`petrel_tests::nginx_bin`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use petrel_client::agent::{Agent, AgentConfig};
use petrel_client::decide::Status;
use petrel_client::fetch::{AutoTransport, FetchError};
use petrel_client::tuf::updater::{local_target_file_name, UpdateError, Updater, UpdaterConfig};
use petrel_tests::{describe, nginx_bin, petrel_repo, workspace_root, Nginx, PetrelRepo};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// nginx serving `tree`, or `None` (after a notice) when nginx is missing outside CI.
fn nginx(tree: &Path) -> Option<Nginx> {
    let bin = nginx_bin()?;
    Some(Nginx::serve(bin, tree).unwrap_or_else(|e| panic!("starting nginx: {e}")))
}

/// A Petrel updater trusting `root` and reaching the tree through `nginx`.
fn updater(nginx: &Nginx, root: &[u8], work: &Path) -> Updater {
    let md = work.join("metadata");
    Updater::init_trusted_root(&md, root).expect("trusted root");
    let config =
        UpdaterConfig::new(nginx.url("metadata")).with_target_base_url(nginx.url("targets"));
    Updater::new(config, AutoTransport::default(), &md).expect("Updater::new")
}

/// Looks `name` up, downloads it into `dir` and returns the bytes.
fn download(u: &mut Updater, name: &str, dir: &Path) -> Result<Vec<u8>, UpdateError> {
    let info = u
        .get_target_info(name)?
        .unwrap_or_else(|| panic!("{name}: no role lists it"));
    fs::create_dir_all(dir).unwrap();
    let dest = dir.join(local_target_file_name(name).expect("safe local name"));
    u.download_target(&info, &dest)?;
    Ok(fs::read(&dest).expect("downloaded file"))
}

/// One request on a fresh connection: status and headers (names lower-cased).
fn raw(addr: SocketAddr, method: &str, path: &str) -> (u16, BTreeMap<String, String>) {
    let mut s = TcpStream::connect(addr).expect("connect to nginx");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = BTreeMap::new();
    for _ in 0..100 {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let _ = r.take(1 << 20).read_to_end(&mut Vec::new());
    (status, headers)
}

fn is_hex_hash(s: &str) -> bool {
    (s.len() == 64 || s.len() == 128) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Top-level `README.txt`; delegated role `vendor` (`apps/vendor/*/*/*`); role `fleet`
/// (`fleet/*`) delegating to 4 hashed bins. Consistent snapshots.
fn sample_repo(dir: &Path) -> PetrelRepo {
    let mut repo = PetrelRepo::init(&dir.join("repo"), true);
    repo.delegate("targets", "vendor", &["apps/vendor/*/*/*"], true);
    repo.delegate("targets", "fleet", &["fleet/*"], true);
    repo.delegate_bins("fleet", "fleet-bin", 4);
    repo.add("targets", "README.txt", b"read me through nginx\n");
    let firmware: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    repo.add("vendor", "apps/vendor/fw/1.0/firmware.bin", &firmware);
    for name in ["fleet/a.txt", "fleet/b.txt", "fleet/c.txt"] {
        repo.add("fleet", name, format!("assignment {name}\n").as_bytes());
    }
    repo.publish();
    repo
}

#[test]
fn client_downloads_top_level_delegated_and_binned_targets_from_nginx_by_consistent_names() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = sample_repo(tmp.path());
    let Some(nginx) = nginx(&repo.tree()) else {
        return;
    };
    let root = fs::read(repo.trusted_root()).unwrap();
    let mut u = updater(&nginx, &root, tmp.path());
    u.refresh()
        .unwrap_or_else(|e| panic!("refresh through nginx: {e}{}", nginx.logs()));
    let mut binned_roles = Vec::new();
    for (name, content) in repo.files() {
        let got = download(&mut u, name, &tmp.path().join("dl"))
            .unwrap_or_else(|e| panic!("{name} through nginx: {e}{}", nginx.logs()));
        assert!(&got == content, "{name}: downloaded bytes differ");
        if name.starts_with("fleet/") {
            assert!(repo.role_of(name).starts_with("fleet-bin-"), "{name}");
            binned_roles.push(repo.role_of(name).to_string());
        }
    }
    assert_eq!(repo.role_of("apps/vendor/fw/1.0/firmware.bin"), "vendor");

    // Every request used a consistent-snapshot name, and each succeeded except the
    // probe for the next root.
    let requests = nginx.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    for r in &requests {
        let file = r.path.rsplit('/').next().unwrap();
        if r.path.starts_with("/metadata/") {
            let (version, _) = file.split_once('.').unwrap();
            let versioned = version.bytes().all(|b| b.is_ascii_digit());
            // Snapshot tree nodes are named by their hash.
            let node = r.path.starts_with("/metadata/snapshot-tree/") && is_hex_hash(version);
            assert!(
                versioned || node || file == "timestamp.json",
                "unversioned metadata {} requested: {paths:?}",
                r.path
            );
            if r.status == 404 {
                assert!(file.ends_with(".root.json"), "{}: 404", r.path);
            } else {
                assert_eq!(r.status, 200, "{}", r.path);
            }
        } else {
            let (hash, _) = file.split_once('.').unwrap();
            assert!(is_hex_hash(hash), "target {} without hash prefix", r.path);
            assert_eq!(r.status, 200, "{}", r.path);
        }
    }
    for role in [
        "snapshot-tree/1.head.json",
        "1.targets.json",
        "1.vendor.json",
        "1.fleet.json",
    ] {
        assert!(
            paths.contains(&format!("/metadata/{role}").as_str()),
            "{role} never requested: {paths:?}"
        );
    }
    for bin in &binned_roles {
        assert!(
            paths.contains(&format!("/metadata/1.{bin}.json").as_str()),
            "{bin} never requested: {paths:?}"
        );
    }
    assert!(paths.contains(&"/metadata/2.root.json"), "{paths:?}");
}

#[test]
fn client_sees_a_new_publish_through_nginx_on_the_next_refresh() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = PetrelRepo::init(&tmp.path().join("repo"), true);
    repo.add("targets", "app/1.0/app.bin", b"version one\n");
    repo.publish();
    let Some(nginx) = nginx(&repo.tree()) else {
        return;
    };
    let root = fs::read(repo.trusted_root()).unwrap();
    let mut u = updater(&nginx, &root, tmp.path());
    u.refresh().expect("first refresh");
    assert!(u.get_target_info("app/1.1/app.bin").unwrap().is_none());

    // A new target and a root rotation, published while nginx keeps serving.
    repo.add("targets", "app/1.1/app.bin", b"version two\n");
    repo.rotate_root();
    repo.publish();
    nginx.clear_requests();
    u.refresh()
        .unwrap_or_else(|e| panic!("refresh after publish: {e}{}", nginx.logs()));
    let got = download(&mut u, "app/1.1/app.bin", &tmp.path().join("dl")).unwrap();
    assert_eq!(got, b"version two\n");
    let paths: Vec<String> = nginx.requests().into_iter().map(|r| r.path).collect();
    for wanted in [
        "/metadata/2.root.json",
        "/metadata/timestamp.json",
        "/metadata/snapshot-tree/2.head.json",
        "/metadata/2.targets.json",
    ] {
        assert!(paths.iter().any(|p| p == wanted), "{wanted}: {paths:?}");
    }
    let trusted_root = fs::read_to_string(tmp.path().join("metadata/root.json")).unwrap();
    assert!(
        trusted_root.contains("\"version\":2") || trusted_root.contains("\"version\": 2"),
        "the rotated root was not stored"
    );
}

#[test]
fn documented_nginx_config_sends_petrel_cache_headers_and_hides_unfinished_files() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = sample_repo(tmp.path());
    let tree = repo.tree();
    // What publish leaves while it writes, and what is not part of the served tree.
    fs::write(tree.join("metadata/.timestamp.json.partial"), b"{").unwrap();
    fs::write(tree.join("metadata/timestamp.json.tmp"), b"{").unwrap();
    fs::write(tree.join("secret.txt"), b"not for devices").unwrap();
    let Some(nginx) = nginx(&tree) else {
        return;
    };
    let addr = nginx.addr();
    let target = fs::read_dir(tree.join("targets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with(".README.txt"))
        .expect("README.txt's consistent-snapshot file");
    let cases = [
        ("/metadata/timestamp.json", 200, "no-cache"),
        ("/metadata/root.json", 200, "no-cache"),
        ("/metadata/1.root.json", 200, IMMUTABLE),
        ("/metadata/1.snapshot.json", 200, IMMUTABLE),
        ("/metadata/1.fleet-bin-0.json", 200, IMMUTABLE),
        (&format!("/targets/{target}") as &str, 200, IMMUTABLE),
        // A TUF client probes N+1.root.json until it gets 404: that must not be cached.
        ("/metadata/2.root.json", 404, "no-cache"),
        ("/metadata/.timestamp.json.partial", 404, "no-cache"),
        ("/metadata/timestamp.json.tmp", 404, "no-cache"),
        ("/secret.txt", 404, "no-cache"),
        ("/metadata/", 404, "no-cache"),
    ];
    for (path, status, cache) in cases {
        let (got, headers) = raw(addr, "GET", path);
        assert_eq!(got, status, "GET {path}: {headers:?}");
        assert_eq!(
            headers.get("cache-control").map(String::as_str),
            Some(cache),
            "GET {path}: {headers:?}"
        );
    }
    let (_, h) = raw(addr, "HEAD", "/metadata/timestamp.json");
    assert_eq!(
        h.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(h.contains_key("etag"), "{h:?}");
    let (_, h) = raw(addr, "HEAD", &format!("/targets/{target}"));
    assert_eq!(
        h.get("content-type").map(String::as_str),
        Some("application/octet-stream")
    );
}

// ---------------------------------------------------------------------------------------
// Attack fixtures served by nginx
// ---------------------------------------------------------------------------------------

fn fixture_dir(name: &str) -> PathBuf {
    workspace_root().join("fixtures").join(name)
}

/// A client holding the fixture's `trusted/` metadata, reaching its `repo/` via nginx.
fn fixture_client(name: &str, work: &Path) -> Option<(Nginx, Updater)> {
    let dir = fixture_dir(name);
    let nginx = nginx(&dir.join("repo"))?;
    let md = work.join("metadata");
    fs::create_dir_all(&md).unwrap();
    for entry in fs::read_dir(dir.join("trusted")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), md.join(entry.file_name())).unwrap();
    }
    let config =
        UpdaterConfig::new(nginx.url("metadata")).with_target_base_url(nginx.url("targets"));
    let u = Updater::new(config, AutoTransport::default(), &md).expect("Updater::new");
    Some((nginx, u))
}

/// The trusted metadata files, to check a refused attack changed none of them.
fn trusted_files(work: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(work.join("metadata"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .filter(|(name, _)| name.ends_with(".json"))
        .collect()
}

#[test]
fn good_fixture_downloads_every_target_through_nginx() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((nginx, mut u)) = fixture_client("good", tmp.path()) else {
        return;
    };
    let fixture: serde_json::Value =
        serde_json::from_slice(&fs::read(fixture_dir("good").join("fixture.json")).unwrap())
            .unwrap();
    u.refresh()
        .unwrap_or_else(|e| panic!("good fixture via nginx: {e}{}", nginx.logs()));
    let targets = fixture["targets"].as_array().expect("good lists targets");
    assert_eq!(targets.len(), 7);
    for t in targets {
        let name = t.as_str().unwrap();
        download(&mut u, name, &tmp.path().join("dl"))
            .unwrap_or_else(|e| panic!("{name} via nginx: {e}{}", nginx.logs()));
    }
}

#[test]
fn rollback_timestamp_fixture_is_refused_through_nginx() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_nginx, mut u)) = fixture_client("attacks/rollback-timestamp", tmp.path()) else {
        return;
    };
    let before = trusted_files(tmp.path());
    let err = u
        .refresh()
        .expect_err("a replayed older timestamp must be refused");
    assert!(matches!(err, UpdateError::Rollback { .. }), "{err}");
    assert_eq!(
        trusted_files(tmp.path()),
        before,
        "trusted metadata changed"
    );
}

#[test]
fn bad_signature_timestamp_fixture_is_refused_through_nginx() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_nginx, mut u)) = fixture_client("attacks/bad-signature-timestamp", tmp.path())
    else {
        return;
    };
    let err = u
        .refresh()
        .expect_err("a timestamp changed after signing must be refused");
    assert!(matches!(err, UpdateError::Signature { .. }), "{err}");
    assert!(!tmp.path().join("metadata/timestamp.json").exists());
}

#[test]
fn wrong_hash_and_endless_target_fixtures_are_refused_through_nginx() {
    for (fixture, target, too_large) in [
        ("attacks/wrong-hash", "apps/acme/app/1.0/app.bin", false),
        (
            "attacks/endless-data-target",
            "apps/acme/app/1.0/app.bin",
            true,
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let Some((nginx, mut u)) = fixture_client(fixture, tmp.path()) else {
            return;
        };
        u.refresh()
            .unwrap_or_else(|e| panic!("{fixture}: refresh must succeed: {e}{}", nginx.logs()));
        let dir = tmp.path().join("dl");
        let err = download(&mut u, target, &dir).expect_err("altered target bytes accepted");
        if too_large {
            assert!(
                matches!(
                    &err,
                    UpdateError::TargetFetch {
                        source: FetchError::TooLarge { .. },
                        ..
                    }
                ),
                "{fixture}: {err}"
            );
        } else {
            assert!(
                matches!(err, UpdateError::LengthOrHash { .. }),
                "{fixture}: {err}"
            );
        }
        let left: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{fixture}: files left behind: {left:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The device agent through nginx
// ---------------------------------------------------------------------------------------

/// Runs `petrel-repo -r REPO ARGS`, panicking unless it succeeds.
fn repo_tool(repo: &Path, args: &[&str]) {
    let mut all = vec!["-r".to_string(), repo.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = petrel_repo(&all);
    assert!(
        out.status.success(),
        "petrel-repo {all:?}: {}",
        describe(&out)
    );
}

#[test]
fn device_agent_decides_on_the_demo_repository_through_nginx() {
    let Some(bin) = nginx_bin() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let demo = workspace_root().join("examples/demo");
    let content = demo.join("content");
    let repo = tmp.path().join("repo");
    let r = |args: &[&str]| repo_tool(&repo, args);
    let path = |p: &Path| p.display().to_string();
    // The same repository demo.sh builds.
    r(&["init", "--expiry", "timestamp=1d"]);
    r(&[
        "delegate",
        "--to",
        "acme",
        "--paths",
        "apps/acme/*/*/*",
        "--terminating",
    ]);
    r(&[
        "delegate",
        "--to",
        "globex",
        "--paths",
        "apps/globex/*/*/*",
        "apps/globex/*/*/*/*",
        "--terminating",
    ]);
    r(&[
        "delegate",
        "--from",
        "globex",
        "--to",
        "globex-bin",
        "--bins",
        "4",
    ]);
    r(&["add", &path(&content.join("README.txt"))]);
    r(&[
        "add",
        &path(&content.join("apps/acme")),
        "--prefix",
        "apps/acme",
        "--role",
        "acme",
    ]);
    r(&[
        "add",
        &path(&content.join("apps/globex")),
        "--prefix",
        "apps/globex",
        "--role",
        "globex",
    ]);
    r(&["publish"]);
    r(&["group", "set", &path(&demo.join("group-thermostats.toml"))]);
    r(&[
        "assign",
        "--group",
        "thermostats",
        "--devices",
        &path(&demo.join("devices.txt")),
    ]);
    r(&[
        "campaign",
        "create",
        &path(&demo.join("campaign-thermostat-1.1.toml")),
    ]);
    r(&["publish"]);

    let nginx = Nginx::serve(bin, &repo.join("tree")).expect("starting nginx");
    // The device runs firmware 1.0; the campaign delivers 1.1 and needs consent.
    let device = tmp.path().join("device");
    let app = device.join("apps/acme.thermostat");
    fs::create_dir_all(&app).unwrap();
    fs::copy(
        content.join("apps/acme/thermostat/1.0/firmware.bin"),
        app.join("firmware.bin"),
    )
    .unwrap();
    fs::write(app.join("VERSION"), "1.0\n").unwrap();
    let toml = format!(
        "state_dir = \"{state}\"\nprofile = \"{profile}\"\n[repository]\nmetadata_url = \"{md}\"\ntargets_url = \"{tg}\"\n[inventory]\ndir = \"{apps}\"\n",
        state = path(&device.join("state")),
        profile = path(&demo.join("device/profile.toml")),
        md = nginx.url("metadata"),
        tg = nginx.url("targets"),
        apps = path(&device.join("apps")),
    );
    let config_path = device.join("device.toml");
    fs::write(&config_path, &toml).unwrap();
    let config = AgentConfig::parse(&toml, &config_path, &device).expect("device config");
    let root = fs::read(repo.join("tree/metadata/1.root.json")).unwrap();
    Agent::init(&config, &root, false).expect("petrel init");
    let agent = Agent::open(config).expect("open the agent");
    let ev = agent
        .evaluate(None)
        .unwrap_or_else(|e| panic!("petrel check through nginx: {e}{}", nginx.logs()));
    let campaign = ev
        .decision
        .campaign("thermostat-1.1")
        .unwrap_or_else(|| panic!("campaign not seen: {:?}", ev.decision.campaigns));
    assert!(
        matches!(campaign.status, Status::WaitingForConsent { .. }),
        "thermostat-1.1: {:?}",
        campaign.status
    );
    assert_eq!(
        ev.decision.group.as_ref().ok(),
        Some(&("thermostats".to_string(), 1))
    );
    // Every request went through nginx and succeeded, the probe for the next root aside.
    let requests = nginx.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.status == 200 || r.path.ends_with(".root.json")),
        "{requests:?}"
    );
}

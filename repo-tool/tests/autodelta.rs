//! Automatic deltas (`[deltas]` in `petrel-repo.toml`): `publish` builds the deltas from the
//! previous versions of each artifact a group names (versions in numeric order), builds
//! each only once, holds them to `min_size` and `max_ratio`, takes them back when the
//! publish fails, and refuses bad settings naming the file, the key and the value.

mod common;

use common::*;
use petrel_client::delta::{self, DeltaMeta};

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

/// The next version of `old`: a few local edits.
fn edited(old: &[u8], seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    let at = old.len() / 3;
    new[at..at + 64].copy_from_slice(&noise(seed, 64));
    new.splice(old.len() / 2..old.len() / 2, noise(seed + 100, 300));
    new
}

/// A repository with the recommended `deltas` role.
fn repo() -> Repo {
    let r = Repo::init(&[]);
    r.ok(&[
        "delegate",
        "--to",
        "deltas",
        "--terminating",
        "--paths",
        "deltas/*",
        "deltas/*/*",
    ]);
    r
}

/// `apps/acme/<app>/<version>/<app>.bin`.
fn target(app: &str, version: &str) -> String {
    format!("apps/acme/{app}/{version}/{app}.bin")
}

/// Adds a version of an artifact as its conventional target.
fn add_version(r: &Repo, app: &str, version: &str, bytes: &[u8]) {
    let f = r.src(&format!("{app}/{version}/{app}.bin"), bytes);
    r.ok(&[
        "add",
        path(&f),
        "--prefix",
        &format!("apps/acme/{app}/{version}"),
    ]);
}

/// Sets group `kiosk` at `revision`, running each `(app, version)`.
fn set_group(r: &Repo, revision: u64, apps: &[(&str, &str)]) {
    let mut toml =
        format!("kind = \"group\"\nschema_version = 1\nid = \"kiosk\"\nrevision = {revision}\n");
    for (app, version) in apps {
        toml.push_str(&format!(
            "\n[apps.\"acme.{app}\"]\nversion = \"{version}\"\ntarget = \"{}\"\n",
            target(app, version)
        ));
    }
    let g = r.src(&format!("group-{revision}.toml"), toml.as_bytes());
    r.ok(&["group", "set", path(&g)]);
}

/// Replaces the `[deltas]` section of the workspace settings.
fn set_deltas(r: &Repo, section: &str) {
    let p = r.dir.join("petrel-repo.toml");
    let text = std::fs::read_to_string(&p).expect("settings");
    let base = text.split("\n[deltas]\n").next().expect("some text");
    std::fs::write(&p, format!("{base}\n[deltas]\n{section}")).expect("write settings");
}

/// The targets a role lists in the workspace's current metadata.
fn listed(r: &Repo, role: &str) -> serde_json::Map<String, serde_json::Value> {
    r.json(&format!("metadata/{role}.json"))["signed"]["targets"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// The published bytes of target `name` (consistent snapshots: `<dir>/<sha256>.<file>`).
fn published_target(r: &Repo, name: &str, sha256: &str) -> Vec<u8> {
    let (dir, file) = name.rsplit_once('/').expect("a directory");
    let p = r
        .tree()
        .join("targets")
        .join(dir)
        .join(format!("{sha256}.{file}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The workspace without its content store (which may keep bytes nothing lists).
fn without_content(s: Snapshot) -> Snapshot {
    s.into_iter()
        .filter(|(p, _)| !p.starts_with("content"))
        .collect()
}

/// Three versions of `app`, in an order where text order and version order differ.
fn three_versions() -> [(&'static str, Vec<u8>); 3] {
    let v1 = noise(1, 100_000);
    let v2 = edited(&v1, 2);
    let v3 = edited(&v2, 3);
    [("1.8", v1), ("1.9", v2), ("1.10", v3)]
}

#[test]
fn publish_builds_the_deltas_from_the_previous_versions_once_and_again_for_a_new_version() {
    let r = repo();
    let versions = three_versions();
    for (v, bytes) in &versions {
        add_version(&r, "app", v, bytes);
    }
    set_group(&r, 1, &[("app", "1.10")]);
    set_deltas(&r, "previous = 2\nmin_size = 1024\nmax_ratio = 0.5\n");

    let out = r.ok(&["publish"]);
    assert!(
        out.contains(
            "deltas: 2 built, 0 already listed, 0 too large, 0 artifact(s) under min_size"
        ),
        "{out}"
    );
    r.verify_ok();
    let newest = &versions[2].1;
    let deltas = listed(&r, "deltas");
    assert_eq!(deltas.len(), 2, "{deltas:?}");
    for (v, base) in &versions[..2] {
        let name = delta::target_path(&sha256_hex(newest), &sha256_hex(base));
        assert!(
            out.contains(&format!(
                "{}: {} -> {}",
                name,
                target("app", v),
                target("app", "1.10")
            )),
            "{out}"
        );
        let t = &deltas[&name];
        let meta = DeltaMeta::from_custom(t.get("custom")).expect("delta metadata");
        assert_eq!(meta.base_sha256, sha256_hex(base));
        assert_eq!(meta.base_length, base.len() as u64);
        assert_eq!(meta.result_sha256, sha256_hex(newest));
        assert_eq!(meta.result_length, newest.len() as u64);
        let bytes = published_target(&r, &name, t["hashes"]["sha256"].as_str().unwrap());
        let mut rebuilt = Vec::new();
        delta::apply(base, &bytes[..], newest.len() as u64, &mut rebuilt).expect("applies");
        assert_eq!(&rebuilt, newest, "the delta from {v} rebuilds 1.10");
    }

    // Nothing changed: every delta is listed already, none is built, nothing is written.
    let before = r.snapshot();
    let out = r.ok(&["publish"]);
    assert!(
        out.contains("deltas: 0 built, 2 already listed, 0 too large")
            && out.contains("nothing staged; nothing to publish"),
        "{out}"
    );
    assert_same(&before, &r.snapshot(), "a publish with every delta listed");

    // A new version named by the group: deltas from the two versions before it.
    let v4 = edited(newest, 4);
    add_version(&r, "app", "1.11", &v4);
    set_group(&r, 2, &[("app", "1.11")]);
    let out = r.ok(&["publish"]);
    assert!(
        out.contains("deltas: 2 built, 0 already listed, 0 too large"),
        "{out}"
    );
    r.verify_ok();
    let deltas = listed(&r, "deltas");
    assert_eq!(deltas.len(), 4, "two more: {deltas:?}");
    for (_, base) in &versions[1..] {
        let name = delta::target_path(&sha256_hex(&v4), &sha256_hex(base));
        assert!(deltas.contains_key(&name), "{name} not listed");
    }
    let from_oldest = delta::target_path(&sha256_hex(&v4), &sha256_hex(&versions[0].1));
    assert!(
        !deltas.contains_key(&from_oldest),
        "1.8 is three versions back"
    );
}

#[test]
fn small_artifacts_get_no_delta_and_deltas_over_max_ratio_are_not_published() {
    let r = repo();
    // Small: under min_size.
    let tiny = noise(1, 2000);
    add_version(&r, "tiny", "1.0", &tiny);
    add_version(&r, "tiny", "1.1", &edited(&tiny, 2));
    // Unrelated, incompressible versions: no delta is smaller than the artifact.
    add_version(&r, "noise", "1.0", &noise(5, 50_000));
    add_version(&r, "noise", "1.1", &noise(6, 50_000));
    // Half the bytes new: a delta of about half the artifact, over max_ratio 0.3.
    let half = noise(7, 50_000);
    let mut half2 = half[..25_000].to_vec();
    half2.extend(noise(8, 25_000));
    add_version(&r, "half", "1.0", &half);
    add_version(&r, "half", "1.1", &half2);
    // A few edits: a small delta.
    let good = noise(9, 50_000);
    let good2 = edited(&good, 10);
    add_version(&r, "good", "1.0", &good);
    add_version(&r, "good", "1.1", &good2);
    set_group(
        &r,
        1,
        &[
            ("tiny", "1.1"),
            ("noise", "1.1"),
            ("half", "1.1"),
            ("good", "1.1"),
        ],
    );
    set_deltas(&r, "previous = 2\nmin_size = 4096\nmax_ratio = 0.3\n");

    let out = r.ok(&["publish"]);
    assert!(
        out.contains(
            "deltas: 1 built, 0 already listed, 2 too large, 1 artifact(s) under min_size"
        ),
        "{out}"
    );
    for app in ["half", "noise"] {
        assert!(
            out.contains(&format!(
                "delta too large, not published: {} -> {}",
                target(app, "1.0"),
                target(app, "1.1")
            )),
            "{out}"
        );
    }
    r.verify_ok();
    let deltas = listed(&r, "deltas");
    let only = delta::target_path(&sha256_hex(&good2), &sha256_hex(&good));
    assert_eq!(
        deltas.keys().collect::<Vec<_>>(),
        [&only],
        "only the small delta is published"
    );
    let length = deltas[&only]["length"].as_u64().unwrap();
    assert!(length * 10 < good2.len() as u64, "{length}");
}

#[test]
fn a_failed_publish_takes_its_deltas_back_and_errors_name_the_artifact_and_the_base() {
    let r = repo();
    let versions = three_versions();
    for (v, bytes) in &versions {
        add_version(&r, "app", v, bytes);
    }
    set_group(&r, 1, &[("app", "1.10")]);
    r.ok(&["publish"]);
    set_deltas(&r, "previous = 2\nmin_size = 1024\n");

    // Signing fails after both deltas are staged: the workspace is as it was.
    let before = without_content(r.snapshot());
    let no_keys = r.scratch("no-keys");
    std::fs::create_dir_all(&no_keys).unwrap();
    let err = r.fail(&["--keys-dir", path(&no_keys), "publish"]);
    assert!(err.contains("threshold not met"), "{err}");
    assert_same(
        &before,
        &without_content(r.snapshot()),
        "a publish that could not sign",
    );

    // The second delta cannot be built (its base's bytes are gone): the first one, staged
    // already, is taken back, and the error names both targets.
    let base = &versions[1].1;
    let sha = sha256_hex(base);
    std::fs::remove_file(r.dir.join("content").join(&sha[..2]).join(&sha)).unwrap();
    std::fs::remove_file(
        r.tree()
            .join(format!("targets/apps/acme/app/1.9/{sha}.app.bin")),
    )
    .unwrap();
    let before = without_content(r.snapshot());
    let err = r.fail(&["publish"]);
    assert!(
        err.contains(&target("app", "1.10")) && err.contains(&target("app", "1.9")),
        "{err}"
    );
    assert!(
        err.contains("neither in the content store nor in the tree"),
        "{err}"
    );
    assert_same(
        &before,
        &without_content(r.snapshot()),
        "a publish whose delta could not be built",
    );
    assert!(listed(&r, "deltas").is_empty());
}

#[test]
fn bad_deltas_settings_are_refused_naming_the_file_the_key_and_the_value() {
    let r = repo();
    let cases: [(&str, &[&str]); 5] = [
        (
            "previous = 2\nmax_ratio = 1.5\n",
            &["deltas.max_ratio", "1.5"],
        ),
        (
            "previous = 2\nmax_ratio = 0\n",
            &["deltas.max_ratio", "0 is not"],
        ),
        (
            "previous = 2\nmin_size = \"64KiB\"\n",
            &["deltas.min_size", "\"64KiB\"", "65536"],
        ),
        ("previous = -1\n", &["deltas.previous", "-1"]),
        ("previus = 2\n", &["unknown field `previus`"]),
    ];
    for (section, wanted) in cases {
        set_deltas(&r, section);
        let err = r.fail(&["status"]);
        assert!(err.contains("petrel-repo.toml"), "{section}: {err}");
        for w in wanted {
            assert!(err.contains(w), "{section}: {w:?} not in {err}");
        }
    }
    // A role that does not exist is named when publish needs it.
    set_deltas(&r, "previous = 2\nrole = \"nope\"\n");
    let err = r.fail(&["publish"]);
    assert!(
        err.contains("petrel-repo.toml") && err.contains("deltas.role") && err.contains("\"nope\""),
        "{err}"
    );
    // Off (the default) or valid: commands work.
    set_deltas(&r, "previous = 0\n");
    r.ok(&["status"]);
}

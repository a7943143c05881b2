//! Bulk authoring: `group set DIR`, `campaign create DIR` and `assign --csv FILE`, each
//! checked whole before anything is staged, then staged in one change.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use petrel_client::manifest::{assign_bin_for, AssignmentBin, Manifest};
use serde_json::Value;

const PLAYER: &[u8] = b"player 2.1.0\n";
const PLAYER_TARGET: &str = "apps/acme/player/2.1.0/player.bin";

fn group_toml(id: &str, revision: u64) -> String {
    format!(
        r#"kind = "group"
schema_version = 1
id = "{id}"
revision = {revision}
description = "group {id}"

[apps."acme.player"]
version = "2.1.0"
target = "{PLAYER_TARGET}"
post_install = "start"
"#
    )
}

fn campaign_toml(id: &str, group: &str) -> String {
    format!(
        r#"kind = "campaign"
schema_version = 1
id = "{id}"
revision = 1
state = "active"

[notice.en]
title = "Player 2.1"
body = "Starts twice as fast."
severity = "recommended"

[consent]
policy = "none"

[applies_to]
vendors = ["acme"]

[payload]
group = {{ id = "{group}", revision = 1 }}
"#
    )
}

/// A published repository holding the player artifact; `assign_bin_digits` set if given.
fn repo(digits: Option<usize>) -> Repo {
    let r = Repo::init(&[]);
    if let Some(d) = digits {
        let settings = r.dir.join("petrel-repo.toml");
        let text = std::fs::read_to_string(&settings).unwrap();
        std::fs::write(&settings, format!("assign_bin_digits = {d}\n{text}")).unwrap();
    }
    let f = r.src("player.bin", PLAYER);
    r.ok(&["add", path(&f), "--prefix", "apps/acme/player/2.1.0"]);
    r.ok(&["publish"]);
    r
}

/// Writes `files` (name → text) into a new directory `<tmp>/src/<dir>`.
fn write_dir(r: &Repo, dir: &str, files: &[(String, String)]) -> PathBuf {
    for (name, text) in files {
        r.src(&format!("{dir}/{name}"), text.as_bytes());
    }
    r.tmp.path().join("src").join(dir)
}

/// `n` group manifests g00, g01, … at `revision`.
fn groups(n: usize, revision: u64) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let id = format!("g{i:02}");
            (format!("{id}.toml"), group_toml(&id, revision))
        })
        .collect()
}

/// The targets a staged (else published) role lists.
fn listed(r: &Repo, role: &str) -> BTreeMap<String, Value> {
    let staged = r.dir.join(format!("staged/{role}.json"));
    let v = if staged.exists() {
        read_json(&staged)
    } else {
        r.json(&format!("metadata/{role}.json"))
    };
    v["signed"]["targets"]
        .as_object()
        .unwrap_or_else(|| panic!("{role}: no targets"))
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn a_directory_of_groups_is_staged_in_one_pass_with_a_count_summary() {
    let r = repo(None);
    let dir = write_dir(&r, "groups", &groups(25, 1));
    // Not read: other extensions, dot files and subdirectories.
    r.src("groups/README.md", b"not a manifest");
    r.src("groups/.g99.toml", b"not toml at all [");
    r.src("groups/old/g98.toml", group_toml("g98", 1).as_bytes());
    let out = r.ok(&["group", "set", path(&dir)]);
    assert!(out.contains("created role groups"), "{out}");
    assert!(
        out.contains("25 group manifest(s): 25 created, 0 revised, 0 unchanged"),
        "{out}"
    );
    assert!(
        !out.contains("staged groups/"),
        "more than 20: counts only\n{out}"
    );
    let names: Vec<String> = listed(&r, "groups").into_keys().collect();
    let want: Vec<String> = (0..25).map(|i| format!("groups/g{i:02}.json")).collect();
    assert_eq!(names, want);
    // The role is staged once, at the version after the published one.
    assert_eq!(r.json("staged/groups.json")["signed"]["version"], 1);
    r.ok(&["publish"]);
    r.verify_ok();
    let list: Value = serde_json::from_str(&r.ok(&["group", "list", "--json"])).unwrap();
    assert_eq!(list["groups"].as_array().unwrap().len(), 25, "{list}");

    // A few manifests: one line each, then the counts.
    let mut few = groups(3, 2);
    few.push(("new.toml".into(), group_toml("new", 1)));
    let dir = write_dir(&r, "few", &few);
    let out = r.ok(&["group", "set", path(&dir)]);
    assert!(
        out.contains("staged groups/g00.json revision 2 (was 1) in role groups"),
        "{out}"
    );
    assert!(
        out.contains("staged groups/new.json revision 1 (new group)"),
        "{out}"
    );
    assert!(
        out.contains("4 group manifest(s): 1 created, 3 revised, 0 unchanged"),
        "{out}"
    );
    // One change: the groups role goes from published v1 to v2, not to v5.
    assert_eq!(r.json("staged/groups.json")["signed"]["version"], 2);
}

#[test]
fn one_bad_file_stages_nothing_and_names_the_file() {
    let r = repo(None);
    let mut files = groups(6, 1);
    files[3].1 = files[3].1.replace("revision = 1", "revision = 0");
    let dir = write_dir(&r, "groups", &files);
    let before = r.snapshot();
    let err = r.fail(&["group", "set", path(&dir)]);
    let bad = dir.join("g03.toml");
    assert!(err.contains(path(&bad)), "{err}");
    assert!(err.contains("revision"), "{err}");
    for good in ["g00.toml", "g05.toml"] {
        assert!(!err.contains(good), "{err}");
    }
    assert_same(&before, &r.snapshot(), "a refused group set");

    // Two bad files: both are named, and still nothing is staged.
    r.src(
        "groups/g04.toml",
        group_toml("g04", 1)
            .replace(PLAYER_TARGET, "apps/acme/player/9.9/missing.bin")
            .as_bytes(),
    );
    let err = r.fail(&["group", "set", path(&dir)]);
    assert!(err.contains("2 of 6 group manifests"), "{err}");
    assert!(err.contains(path(&bad)), "{err}");
    assert!(err.contains(path(&dir.join("g04.toml"))), "{err}");
    assert!(err.contains("apps.\"acme.player\".target"), "{err}");
    assert_same(&before, &r.snapshot(), "a refused group set");

    // Two files for one group.
    let dup = write_dir(
        &r,
        "dup",
        &[
            ("a.toml".into(), group_toml("same", 1)),
            ("b.toml".into(), group_toml("same", 1)),
        ],
    );
    let err = r.fail(&["group", "set", path(&dup)]);
    assert!(err.contains(path(&dup.join("b.toml"))), "{err}");
    assert!(err.contains(path(&dup.join("a.toml"))), "{err}");
    assert_same(&before, &r.snapshot(), "a refused group set");

    // A directory without manifests.
    let empty = r.scratch("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = r.fail(&["group", "set", path(&empty)]);
    assert!(err.contains("no *.toml manifest"), "{err}");
}

#[test]
fn rerunning_with_identical_files_stages_nothing() {
    let r = repo(None);
    let dir = write_dir(&r, "groups", &groups(22, 1));
    r.ok(&["group", "set", path(&dir)]);
    // Staged, not yet published: still identical.
    let staged = r.snapshot();
    let out = r.ok(&["group", "set", path(&dir)]);
    assert!(
        out.contains("22 group manifest(s): 0 created, 0 revised, 22 unchanged"),
        "{out}"
    );
    assert!(out.contains("nothing staged"), "{out}");
    assert_same(&staged, &r.snapshot(), "an unchanged group set");
    r.ok(&["publish"]);
    let published = r.snapshot();
    r.ok(&["group", "set", path(&dir)]);
    assert_same(&published, &r.snapshot(), "an unchanged group set");
    assert!(!r.dir.join("staged/groups.json").exists());

    // One changed file: only that group is staged.
    r.src("groups/g07.toml", group_toml("g07", 2).as_bytes());
    let out = r.ok(&["group", "set", path(&dir)]);
    assert!(
        out.contains("22 group manifest(s): 0 created, 1 revised, 21 unchanged"),
        "{out}"
    );
    let now = listed(&r, "groups");
    let before: Value = r.json("metadata/groups.json");
    for (name, file) in &now {
        let old = &before["signed"]["targets"][name];
        assert_eq!(name == "groups/g07.json", old != file, "{name}");
    }
}

#[test]
fn campaigns_are_created_from_a_directory() {
    let r = repo(None);
    let gdir = write_dir(&r, "groups", &groups(3, 1));
    r.ok(&["group", "set", path(&gdir)]);
    let files: Vec<(String, String)> = (0..3)
        .map(|i| {
            (
                format!("c{i}.toml"),
                campaign_toml(&format!("c{i}"), &format!("g{i:02}")),
            )
        })
        .collect();
    let cdir = write_dir(&r, "campaigns", &files);
    let out = r.ok(&["campaign", "create", path(&cdir)]);
    assert!(out.contains("created role campaigns"), "{out}");
    assert!(
        out.contains(
            "created campaign c1: revision 1, active; staged campaigns/c1.json in role campaigns"
        ),
        "{out}"
    );
    assert!(out.contains("3 campaign(s) created"), "{out}");
    let names: Vec<String> = listed(&r, "campaigns").into_keys().collect();
    assert_eq!(
        names,
        [
            "campaigns/c0.json",
            "campaigns/c1.json",
            "campaigns/c2.json"
        ]
    );
    r.ok(&["publish"]);
    r.verify_ok();
    let list = r.ok(&["campaign", "list"]);
    for id in ["c0", "c1", "c2"] {
        assert!(list.contains(id), "{list}");
    }

    // Every campaign must be new: one that exists refuses the whole directory.
    r.src("campaigns/c3.toml", campaign_toml("c3", "g00").as_bytes());
    let before = r.snapshot();
    let err = r.fail(&["campaign", "create", path(&cdir)]);
    assert!(err.contains("3 of 4 campaign manifests"), "{err}");
    assert!(err.contains(path(&cdir.join("c0.toml"))), "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert!(!err.contains(path(&cdir.join("c3.toml"))), "{err}");
    assert_same(&before, &r.snapshot(), "a refused campaign create");

    // A bad payload in one of many new campaigns names that file and field.
    let bad = write_dir(
        &r,
        "more",
        &[
            ("d0.toml".into(), campaign_toml("d0", "g00")),
            ("d1.toml".into(), campaign_toml("d1", "nope")),
            ("d2.toml".into(), campaign_toml("d0", "g01")),
        ],
    );
    let err = r.fail(&["campaign", "create", path(&bad)]);
    assert!(err.contains(path(&bad.join("d1.toml"))), "{err}");
    assert!(err.contains("payload.group.id"), "{err}");
    assert!(err.contains(path(&bad.join("d2.toml"))), "{err}");
    assert!(err.contains("also given by"), "{err}");
    assert_same(&before, &r.snapshot(), "a refused campaign create");
}

/// A copy of a repository in a new temporary directory.
fn clone(r: &Repo) -> Repo {
    let c = Repo::empty();
    copy_dir(&r.dir, &c.dir);
    c
}

/// Published assignment bins: tree file name → bytes.
fn published_bins(r: &Repo) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(r.tree().join("targets/assign"))
        .expect("assign bins in the tree")
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// One device id `<prefix>-<n>` per bin of 16 (one hex digit), by bin.
fn one_per_bin(prefix: &str) -> Vec<String> {
    let mut seeds: BTreeMap<String, String> = BTreeMap::new();
    for i in 0.. {
        let id = format!("{prefix}-{i}");
        seeds.entry(assign_bin_for(&id, 1)).or_insert(id);
        if seeds.len() == 16 {
            break;
        }
    }
    seeds.into_values().collect()
}

/// A repository with groups ga, gb, gc, assign_bin_digits = 1 and every bin published
/// (seed devices in ga), so bins keep their salts.
fn seeded() -> (Repo, Vec<String>) {
    let r = repo(Some(1));
    let files: Vec<(String, String)> = ["ga", "gb", "gc"]
        .iter()
        .map(|g| (format!("{g}.toml"), group_toml(g, 1)))
        .collect();
    let dir = write_dir(&r, "groups", &files);
    r.ok(&["group", "set", path(&dir)]);
    let seeds = one_per_bin("seed");
    let f = r.src("seeds.txt", seeds.join("\n").as_bytes());
    r.ok(&["assign", "--group", "ga", "--devices", path(&f)]);
    r.ok(&["publish"]);
    (r, seeds)
}

#[test]
fn a_csv_assignment_equals_the_same_assignment_per_group() {
    let (a, seeds) = seeded();
    let b = clone(&a);
    // Each bin gets one kind of device (group, canary or not), so the per-group commands
    // each touch bins of their own and every bin changes once either way.
    let kind = |id: &str| {
        let bin = usize::from_str_radix(&assign_bin_for(id, 1), 16).unwrap();
        let k = bin % 6;
        (["ga", "gb", "gc"][k % 3], k >= 3)
    };
    let mut devices: Vec<String> = (0..150).map(|i| format!("kiosk-{i:04}")).collect();
    // Seeds move to the group of their bin (or stay in ga, unchanged).
    devices.extend(seeds.iter().cloned());
    let mut csv = String::from("# fleet\ndevice_id,group,canary\n\n");
    let mut per: BTreeMap<(&str, bool), Vec<&str>> = BTreeMap::new();
    for (i, id) in devices.iter().enumerate() {
        let (g, canary) = kind(id);
        per.entry((g, canary)).or_default().push(id);
        let col = match (canary, i % 3) {
            (true, _) => ",true",
            (false, 0) => "",
            (false, 1) => ",",
            (false, _) => ",false",
        };
        csv.push_str(&format!("  {id} , {g}{col}\n"));
        if i % 40 == 0 {
            csv.push_str("# a comment\n\n");
        }
    }
    // A repeated identical line is fine.
    csv.push_str(&format!("{},{}\n", devices[1], kind(&devices[1]).0));
    let f = a.src("fleet.csv", csv.as_bytes());
    let out = a.ok(&["assign", "--csv", path(&f)]);
    assert!(out.contains("166 device(s) in 3 group(s)"), "{out}");
    assert!(out.contains("150 new"), "{out}");
    for id in &devices {
        assert!(!out.contains(id.as_str()), "{out}");
    }

    let mut new = 0;
    let mut moved = 0;
    for ((g, canary), ids) in &per {
        let list = b.src(&format!("{g}-{canary}.txt"), ids.join("\n").as_bytes());
        let mut args = vec!["assign", "--group", g, "--devices", path(&list)];
        if *canary {
            args.push("--canary");
        }
        let out = b.ok(&args);
        let count = |what: &str| -> usize {
            let at = out.find(what).unwrap_or_else(|| panic!("{out}"));
            out[..at].rsplit(' ').next().unwrap().parse().unwrap()
        };
        new += count(" new");
        moved += count(" moved");
    }
    assert_eq!(new, 150);
    assert!(
        out.contains(&format!("{moved} moved from another group")),
        "{out}"
    );

    a.ok(&["publish"]);
    b.ok(&["publish"]);
    a.verify_ok();
    let (ba, bb) = (published_bins(&a), published_bins(&b));
    assert_eq!(
        ba.keys().collect::<Vec<_>>(),
        bb.keys().collect::<Vec<_>>(),
        "the same bins, with the same content hashes"
    );
    assert_eq!(ba, bb);
    // Every one of the 16 bins changed exactly once: revision 2.
    let latest: std::collections::BTreeSet<(String, u64)> = ba
        .values()
        .map(|b| AssignmentBin::from_json(b).unwrap())
        .map(|b| (b.bin, b.revision))
        .filter(|(_, r)| *r > 1)
        .collect();
    assert_eq!(latest.len(), 16, "{latest:?}");
    assert!(latest.iter().all(|(_, r)| *r == 2), "{latest:?}");
    // Canary flags as listed.
    let show = |id: &str| -> Value {
        serde_json::from_str(&a.ok(&["assign", "show", "--device", id, "--json"])).unwrap()
    };
    for id in devices.iter().take(30) {
        let (g, canary) = kind(id);
        let v = show(id);
        assert_eq!(v["group"], g, "{v}");
        assert_eq!(v["canary"], canary, "{v}");
    }
}

#[test]
fn a_csv_loads_and_stages_each_bin_once_and_false_clears_a_canary() {
    let (r, seeds) = seeded();
    // Three groups in every bin: each bin still gets exactly one new revision.
    let (b, c) = (one_per_bin("b"), one_per_bin("c"));
    let mut csv = String::new();
    for (i, id) in seeds.iter().enumerate() {
        csv.push_str(&format!("{id},ga,{}\n", i % 2 == 0));
        csv.push_str(&format!("{},gb\n{},gc,true\n", b[i], c[i]));
    }
    let f = r.src("mixed.csv", csv.as_bytes());
    let out = r.ok(&["assign", "--csv", path(&f)]);
    assert!(
        out.contains(
            "48 device(s) in 3 group(s): 32 new, 0 moved from another group, 8 updated, 8 unchanged"
        ),
        "{out}"
    );
    assert!(out.contains("16 assignment bin(s) staged"), "{out}");
    r.ok(&["publish"]);
    let bins = published_bins(&r);
    let latest: BTreeMap<String, AssignmentBin> = bins
        .values()
        .map(|b| AssignmentBin::from_json(b).unwrap())
        .filter(|b| b.revision == 2)
        .map(|b| (b.bin.clone(), b))
        .collect();
    assert_eq!(latest.len(), 16);
    for b in latest.values() {
        assert_eq!(b.devices.len(), 3, "{:?}", b.devices);
        assert_eq!(b.groups().len(), 3);
    }
    // `false` clears the flag, an empty column keeps it.
    let f = r.src(
        "clear.csv",
        format!("{},ga,false\n{},gc,\n", seeds[0], c[0]).as_bytes(),
    );
    let out = r.ok(&["assign", "--csv", path(&f)]);
    assert!(out.contains("1 updated, 1 unchanged"), "{out}");
    let show = |id: &str| -> Value {
        serde_json::from_str(&r.ok(&["assign", "show", "--device", id, "--json"])).unwrap()
    };
    assert_eq!(show(&seeds[0])["canary"], false);
    assert_eq!(show(&c[0])["canary"], true);
}

#[test]
fn csv_errors_name_the_line_and_stage_nothing() {
    let (r, _) = seeded();
    let before = r.snapshot();
    let secret = "secret-device-77";
    let cases: &[(&str, &[&str])] = &[
        (
            "device_id,group\nkiosk-1,ga\n# c\nsecret-device-77,nosuch\nkiosk-2,gb\n",
            &["line 4", "there is no group \"nosuch\""],
        ),
        (
            "kiosk-1,ga\nsecret-device-77,ga,true,extra\n",
            &["line 2", "4 comma-separated field(s)"],
        ),
        (
            "kiosk-1,ga\n\nsecret-device-77\n",
            &["line 3", "1 comma-separated field(s)"],
        ),
        (
            "kiosk-1,ga\nsecret-device-77,gb\nkiosk-2,gc\nsecret-device-77,gc\n",
            &["line 4", "also on line 2", "\"gb\" there, \"gc\" here"],
        ),
        (
            "secret-device-77,ga,true\nsecret-device-77,ga\n",
            &["line 2", "also on line 1", "canary value"],
        ),
        (
            "secret-device-77,ga,yes\n",
            &["line 1", "canary must be true, false or empty"],
        ),
        (
            "secret-device-77,Bad Group!\n",
            &["line 1", "group \"Bad Group!\""],
        ),
        (",ga\n", &["line 1", "no device id"]),
        ("device_id,group\n# nothing\n", &["no devices"]),
    ];
    for (text, want) in cases {
        let f = r.src("bad.csv", text.as_bytes());
        let err = r.fail(&["assign", "--csv", path(&f)]);
        assert!(err.contains(path(&f)), "{text:?}: {err}");
        for w in *want {
            assert!(err.contains(w), "{text:?}: want {w:?} in {err}");
        }
        assert!(
            !err.contains(secret),
            "{text:?}: the device id leaked: {err}"
        );
        assert_same(&before, &r.snapshot(), "a refused assign --csv");
    }
    // --csv replaces --group/--devices.
    let f = r.src("ok.csv", b"kiosk-1,ga\n");
    for extra in [
        &["--group", "ga"][..],
        &["--devices", path(&f)],
        &["--canary"],
        &["--remove"],
    ] {
        let o = run(r.cmd(&[&["assign", "--csv", path(&f)], extra].concat()));
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {o:?}");
    }
    assert_same(&before, &r.snapshot(), "refused arguments");
}

#[test]
fn single_files_still_work_as_before() {
    let r = repo(None);
    let g = r.src("one.toml", group_toml("one", 1).as_bytes());
    let out = r.ok(&["group", "set", path(&g)]);
    assert!(
        out.contains("staged groups/one.json revision 1 (new group) in role groups"),
        "{out}"
    );
    let out = r.ok(&["group", "set", path(&g)]);
    assert!(
        out.contains("is unchanged (revision 1); nothing staged"),
        "{out}"
    );
    let c = r.src("c.toml", campaign_toml("c", "one").as_bytes());
    let out = r.ok(&["campaign", "create", path(&c)]);
    assert!(
        out.contains("created campaign c: revision 1, active"),
        "{out}"
    );
    let ids = r.src("ids.txt", b"kiosk-1\nkiosk-2\n");
    let out = r.ok(&["assign", "--group", "one", "--devices", path(&ids)]);
    assert!(out.contains("2 device(s) for group one: 2 new"), "{out}");
    r.ok(&["publish"]);
    r.verify_ok();
}

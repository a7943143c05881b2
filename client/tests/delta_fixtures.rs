//! The hostile-delta fixtures in `fixtures/deltas/`: every delta, tree container and tree
//! delta there is refused by the device's apply path with the error its `fixture.json`
//! names, and the committed bytes are exactly what this file generates (so the fixtures
//! stay in step with the formats).
//!
//! Regenerate with `PETREL_WRITE_FIXTURES=1 cargo test -p petrel-client --test delta_fixtures`.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use petrel_client::delta::{self, ApplyMode, BuildOptions};
use petrel_client::manifest::sha256_hex;
use petrel_client::tree::{self, delta as tdelta};
use serde_json::{json, Value};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/deltas")
}

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                b'a' + (x % 4) as u8
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

/// One fixture: its files and its `fixture.json`.
struct Fixture {
    name: &'static str,
    files: Vec<(&'static str, Vec<u8>)>,
    meta: Value,
}

fn file_delta(
    name: &'static str,
    description: &str,
    format: &str,
    base: &[u8],
    d: Vec<u8>,
    result: &[u8],
    expect: &str,
) -> Fixture {
    Fixture {
        name,
        files: vec![("base.bin", base.to_vec()), ("delta.bin", d)],
        meta: json!({
            "description": description,
            "kind": "file-delta",
            "format": format,
            "result_length": result.len(),
            "result_sha256": sha256_hex(result),
            "expect": expect,
        }),
    }
}

/// A tree container written by hand (so its manifest may break the rules).
fn raw_container(manifest: &Value, frames: &[(u8, &[u8])]) -> Vec<u8> {
    let m = serde_json::to_vec(manifest).unwrap();
    let mut out = tree::MAGIC.to_vec();
    out.extend((m.len() as u64).to_le_bytes());
    out.extend(&m);
    for (enc, b) in frames {
        out.push(*enc);
        out.extend((b.len() as u64).to_le_bytes());
        out.extend(*b);
    }
    out
}

/// Packs a directory built by `fill` (modes set explicitly, so the umask does not matter).
fn pack(t: &Path, name: &str, fill: impl Fn(&Path)) -> Vec<u8> {
    let d = t.join(name);
    fs::create_dir_all(&d).unwrap();
    fill(&d);
    for e in walk(&d) {
        let m = fs::symlink_metadata(&e).unwrap();
        if m.is_dir() {
            fs::set_permissions(&e, fs::Permissions::from_mode(0o755)).unwrap();
        } else if m.is_file() {
            fs::set_permissions(&e, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let s = tree::scan(&d).unwrap();
    let p = t.join(format!("{name}.ptree"));
    let mut f = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    tree::write_container(&s, Some(3), &mut f).unwrap();
    fs::read(&p).unwrap()
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn tree_a(d: &Path) {
    fs::create_dir_all(d.join("lib")).unwrap();
    fs::write(d.join("lib/libx.so.1.0"), noise(1, 6000)).unwrap();
    fs::write(d.join("data.txt"), b"kept as it is\n".repeat(50)).unwrap();
    fs::write(d.join("old.txt"), b"removed in b\n").unwrap();
}

fn tree_b(d: &Path) {
    fs::create_dir_all(d.join("lib")).unwrap();
    let mut lib = noise(1, 6000);
    lib[100..110].copy_from_slice(b"0123456789");
    fs::write(d.join("lib/libx.so.1.1"), lib).unwrap();
    fs::write(d.join("data.txt"), b"kept as it is\n".repeat(50)).unwrap();
    fs::write(d.join("new.txt"), b"added in b\n").unwrap();
    symlink("libx.so.1.1", d.join("lib/libx.so.1")).unwrap();
}

fn manifest_sha(container: &[u8]) -> String {
    let (bytes, _) = tree::read_manifest(&mut &container[..], None).unwrap();
    sha256_hex(&bytes)
}

/// The hostile fixtures, and the well-formed controls they derive from (which must apply).
fn generate() -> (Vec<Fixture>, Vec<Fixture>) {
    let base = noise(7, 8192);
    let mut new = base.clone();
    new[1000..1100].copy_from_slice(&noise(8, 100));
    new.splice(5000..5000, noise(9, 300));
    let zopts = BuildOptions {
        formats: vec![delta::FORMAT],
        ..BuildOptions::default()
    };
    let good_z = delta::make_best(&base, &new, &zopts).unwrap().bytes;
    let bopts = BuildOptions {
        formats: vec![delta::bsdiff::FORMAT],
        ..BuildOptions::default()
    };
    let good_b = delta::make_best(&base, &new, &bopts).unwrap().bytes;
    let mut fx = Vec::new();
    let mut controls = vec![
        file_delta(
            "zstd-patch-good",
            "",
            delta::FORMAT,
            &base,
            good_z.clone(),
            &new,
            "",
        ),
        file_delta(
            "bsdiff-good",
            "",
            delta::bsdiff::FORMAT,
            &base,
            good_b.clone(),
            &new,
            "",
        ),
    ];
    let mut z = good_z.clone();
    let mid = z.len() / 2;
    z[mid] ^= 0x5a;
    fx.push(file_delta(
        "zstd-patch-corrupt",
        "A zstd-patch delta with one byte flipped in its frame.",
        delta::FORMAT,
        &base,
        z,
        &new,
        "cannot be decoded",
    ));
    fx.push(file_delta(
        "zstd-patch-truncated",
        "A zstd-patch delta cut 16 bytes short.",
        delta::FORMAT,
        &base,
        good_z[..good_z.len() - 16].to_vec(),
        &new,
        "zstd-patch delta",
    ));
    let other = noise(70, 8192);
    let against_other = delta::make_best(&other, &new, &zopts).unwrap().bytes;
    fx.push(file_delta(
        "zstd-patch-other-base",
        "A valid zstd-patch delta built against other base bytes than the device has.",
        delta::FORMAT,
        &base,
        against_other,
        &new,
        "cannot be decoded",
    ));
    let mut near = base.clone();
    for b in &mut near[2000..2400] {
        *b = b.wrapping_add(1);
    }
    let bsd_other = delta::make_best(&near, &new, &bopts).unwrap().bytes;
    fx.push(file_delta(
        "bsdiff-other-base",
        "A valid bsdiff delta built against other base bytes: it applies, to other bytes than the signed artifact.",
        delta::bsdiff::FORMAT,
        &base,
        bsd_other,
        &new,
        "the result is not the signed artifact",
    ));
    let header_word = |d: &[u8], i: usize, v: u64| {
        let mut d = d.to_vec();
        d[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        d
    };
    fx.push(file_delta(
        "bsdiff-too-many-entries",
        "A bsdiff delta whose header claims 65,537 control entries, more than a device holds.",
        delta::bsdiff::FORMAT,
        &base,
        header_word(&good_b, 1, 65_537),
        &new,
        "more than the 65536 a device holds",
    ));
    fx.push(file_delta(
        "bsdiff-oversized-result",
        "A bsdiff delta whose header claims a result longer than the signed artifact.",
        delta::bsdiff::FORMAT,
        &base,
        header_word(&good_b, 0, 1 << 30),
        &new,
        "more than the allowed",
    ));
    fx.push(file_delta(
        "bsdiff-padded",
        "A bsdiff delta with a byte after its last section.",
        delta::bsdiff::FORMAT,
        &base,
        [good_b.clone(), vec![0]].concat(),
        &new,
        "its header says",
    ));
    let mut exec = good_b.clone();
    exec[9] = 1;
    fx.push(file_delta(
        "exec-bsdiff-no-segments",
        "A bsdiff delta flagged executable-aware without a segment table.",
        delta::bsdiff::EXEC_FORMAT,
        &base,
        exec,
        &new,
        "bad segment table",
    ));
    // Version 2 (word tables) naming a coded range that ends past the result.
    let mut tables = good_b.clone();
    tables[8] = 2;
    tables[13] = 1;
    let result_len = u64::from_le_bytes(good_b[16..24].try_into().unwrap());
    let range = [0u64.to_le_bytes(), (result_len + 4).to_le_bytes()].concat();
    tables.splice(64..64, range);
    fx.push(file_delta(
        "bsdiff-word-table-past-result",
        "A version 2 bsdiff delta naming a coded word table that ends past the result.",
        delta::bsdiff::FORMAT,
        &base,
        tables,
        &new,
        "ends past the result",
    ));

    // A packed diff stream with a run of zeros after the bytes its entries take.
    let w = |d: &[u8], i: usize| {
        u64::from_le_bytes(d[16 + 8 * i..24 + 8 * i].try_into().unwrap()) as usize
    };
    let (ctrl_len, diff_len) = (w(&good_b, 2), w(&good_b, 3));
    assert_eq!(good_b[9], 2, "the builder packs its streams");
    let diff_at = 64 + ctrl_len;
    let mut runs = zstd::stream::decode_all(&good_b[diff_at..diff_at + diff_len]).unwrap();
    runs.extend([0, 5]);
    let runs = zstd::bulk::compress(&runs, 3).unwrap();
    let mut long = header_word(&good_b, 3, runs.len() as u64);
    long.splice(diff_at..diff_at + diff_len, runs);
    fx.push(file_delta(
        "bsdiff-zero-run-past-entries",
        "A packed bsdiff delta whose diff stream holds a run of zeros past the bytes its entries take.",
        delta::bsdiff::FORMAT,
        &base,
        long,
        &new,
        "past its entries",
    ));

    // Tree containers with hostile manifests.
    let sha0 = sha256_hex(b"");
    let dir = |p: &str| json!({"path": p, "type": "dir", "mode": 0o755});
    let file =
        |p: &str| json!({"path": p, "type": "file", "mode": 0o644, "size": 0, "sha256": sha0});
    let link = |p: &str, to: &str| json!({"path": p, "type": "symlink", "link": to});
    let hostile = [
        (
            "tree-dot-dot-path",
            "A tree whose manifest names a file through `..`.",
            vec![dir("a"), file("a/../../etc/cron.d/x")],
            "\"..\" component",
        ),
        (
            "tree-absolute-path",
            "A tree whose manifest names an absolute path.",
            vec![file("/etc/passwd")],
            "is absolute",
        ),
        (
            "tree-absolute-link",
            "A tree with a symbolic link to an absolute path.",
            vec![link("shadow", "/etc/shadow")],
            "is absolute",
        ),
        (
            "tree-link-leaves",
            "A tree with a symbolic link that climbs out of the tree.",
            vec![dir("a"), link("a/out", "../../etc")],
            "leaves the tree",
        ),
        (
            "tree-write-through-link",
            "A tree that writes a file under one of its own links.",
            vec![link("l", "."), file("l/x")],
            "not a directory",
        ),
    ];
    for (name, description, entries, expect) in hostile {
        let files = entries.iter().filter(|e| e["type"] == "file").count();
        let m = json!({"schema_version": 1, "entries": entries});
        let frames: Vec<(u8, &[u8])> = (0..files).map(|_| (0u8, &b""[..])).collect();
        let c = raw_container(&m, &frames);
        let sha = sha256_hex(&serde_json::to_vec(&m).unwrap());
        fx.push(Fixture {
            name,
            files: vec![("tree.ptree", c)],
            meta: json!({"description": description, "kind": "tree", "manifest_sha256": sha, "expect": expect}),
        });
    }
    let m = json!({"schema_version": 1, "entries": [file("x")]});
    let c = raw_container(&m, &[(0, b"not empty")]);
    fx.push(Fixture {
        name: "tree-file-not-the-manifests",
        files: vec![("tree.ptree", c)],
        meta: json!({"description": "A tree whose file bytes are not the ones its manifest names.", "kind": "tree", "manifest_sha256": sha256_hex(&serde_json::to_vec(&m).unwrap()), "expect": "not the manifest's"}),
    });

    // Tree deltas.
    let t = tempfile::tempdir().unwrap();
    let a = pack(t.path(), "a", tree_a);
    let b = pack(t.path(), "b", tree_b);
    let c = pack(t.path(), "c", |d| {
        tree_a(d);
        fs::write(d.join("extra.txt"), b"another tree\n").unwrap();
    });
    let (pa, pb) = (t.path().join("a.ptree"), t.path().join("b.ptree"));
    let mut d = Vec::new();
    tdelta::make(&pa, &pb, &BuildOptions::default(), &mut d).unwrap();
    let tree_delta = |name: &'static str,
                      description: &str,
                      base: &[u8],
                      d: Vec<u8>,
                      remove: &[&str],
                      expect: &str| Fixture {
        name,
        files: vec![("base.ptree", base.to_vec()), ("delta.bin", d)],
        meta: json!({"description": description, "kind": "tree-delta", "manifest_sha256": manifest_sha(&b), "remove": remove, "expect": expect}),
    };
    controls.push(tree_delta("tree-delta-good", "", &a, d.clone(), &[], ""));
    controls.push(Fixture {
        name: "tree-good",
        files: vec![("tree.ptree", b.clone())],
        meta: json!({"kind": "tree", "manifest_sha256": manifest_sha(&b), "expect": ""}),
    });
    fx.push(tree_delta("tree-delta-missing-reference", "A tree delta referring by hash to a file the device's installed tree no longer has (removed by hand), with no full tree to read it from.", &a, d.clone(), &["data.txt"], "no installed file has its bytes"));
    fx.push(tree_delta(
        "tree-delta-other-base",
        "A tree delta applied to an installed tree that is not its base.",
        &c,
        d.clone(),
        &[],
        "not the delta's base",
    ));
    fx.push(tree_delta(
        "tree-delta-padded",
        "A tree delta with a byte after its last payload.",
        &a,
        [d.clone(), vec![7]].concat(),
        &[],
        "bytes follow its last payload",
    ));
    let mut flipped = d.clone();
    let n = flipped.len();
    flipped[n - 3] ^= 0xff;
    fx.push(tree_delta(
        "tree-delta-corrupt-payload",
        "A tree delta with a byte flipped in its last payload.",
        &a,
        flipped,
        &[],
        "new.txt",
    ));
    (fx, controls)
}

/// `fixtures/deltas/README.md`.
const README: &str = "# Hostile-delta fixtures\n\n\
Deltas, tree containers and tree deltas a device must refuse, one directory each: the\n\
inputs (`base.bin` and `delta.bin`, `tree.ptree`, or `base.ptree` and `delta.bin`) and\n\
`fixture.json`, which says what the case is (`description`), how it is applied (`kind`:\n\
`file-delta`, `tree` or `tree-delta`, with the signed `result_sha256` and `result_length`\n\
or `manifest_sha256`; `remove` lists installed files deleted by hand before a tree delta)\n\
and a part of the error it must be refused with (`expect`). A device given any of them\n\
installs nothing from it and falls back to the full artifact.\n\n\
Generated, deterministically, by `client/tests/delta_fixtures.rs`; regenerate with\n\
`PETREL_WRITE_FIXTURES=1 cargo test -p petrel-client --test delta_fixtures`.\n";

fn write(out: &Path, fx: &[Fixture]) {
    fs::create_dir_all(out).unwrap();
    fs::write(out.join("README.md"), README).unwrap();
    // Byte for byte: no line-ending conversion of the JSON files.
    fs::write(out.join(".gitattributes"), "* -text\n").unwrap();
    for f in fx {
        let d = out.join(f.name);
        fs::create_dir_all(&d).unwrap();
        for (n, b) in &f.files {
            fs::write(d.join(n), b).unwrap();
        }
        let mut j = serde_json::to_vec_pretty(&f.meta).unwrap();
        j.push(b'\n');
        fs::write(d.join("fixture.json"), j).unwrap();
    }
}

/// Applies one fixture as the device does; the error, if any.
fn run(dir: &Path) -> Result<(), String> {
    let meta: Value = serde_json::from_slice(&fs::read(dir.join("fixture.json")).unwrap()).unwrap();
    let s = |k: &str| meta[k].as_str().unwrap().to_string();
    let t = tempfile::tempdir().unwrap();
    match s("kind").as_str() {
        "file-delta" => {
            for mode in [ApplyMode::Mmap, ApplyMode::Streaming] {
                let base = File::open(dir.join("base.bin")).unwrap();
                let blen = base.metadata().unwrap().len();
                let d = File::open(dir.join("delta.bin")).unwrap();
                let mut out = tempfile::tempfile().unwrap();
                let len = meta["result_length"].as_u64().unwrap();
                delta::apply_file(&s("format"), &base, blen, &d, len, mode, &out)
                    .map_err(|e| format!("{} delta: {e}", s("format")))?;
                let mut got = Vec::new();
                out.seek(SeekFrom::Start(0)).unwrap();
                out.read_to_end(&mut got).unwrap();
                if sha256_hex(&got) != s("result_sha256") {
                    return Err("the result is not the signed artifact".into());
                }
            }
            Ok(())
        }
        "tree" => tree::unpack(
            &dir.join("tree.ptree"),
            &s("manifest_sha256"),
            &t.path().join("out"),
        )
        .map(|_| ())
        .map_err(|e| e.to_string()),
        "tree-delta" => {
            let base = dir.join("base.ptree");
            let root = t.path().join("installed");
            let bytes =
                tree::unpack(&base, &manifest_sha(&fs::read(&base).unwrap()), &root).unwrap();
            for r in meta["remove"].as_array().unwrap() {
                fs::remove_file(root.join(r.as_str().unwrap())).unwrap();
            }
            let mut out = tempfile::tempfile().unwrap();
            tdelta::apply(
                &dir.join("delta.bin"),
                &tdelta::Base {
                    root: &root,
                    manifest: &bytes,
                },
                &s("manifest_sha256"),
                ApplyMode::Mmap,
                t.path(),
                None,
                &mut out,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
        k => panic!("unknown fixture kind {k}"),
    }
}

#[test]
fn every_hostile_delta_fixture_is_refused_with_its_named_error() {
    let dir = fixtures_dir();
    if std::env::var_os("PETREL_WRITE_FIXTURES").is_some() {
        let _ = fs::remove_dir_all(&dir);
        write(&dir, &generate().0);
    }
    let mut names: Vec<_> = fs::read_dir(&dir)
        .expect("fixtures/deltas")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    names.sort();
    assert!(names.len() >= 15, "{} fixtures", names.len());
    let mut wrong = Vec::new();
    for d in names {
        let meta: Value =
            serde_json::from_slice(&fs::read(d.join("fixture.json")).unwrap()).unwrap();
        let expect = meta["expect"].as_str().unwrap();
        match run(&d) {
            Ok(()) => wrong.push(format!(
                "{}: applied, but must be refused ({expect})",
                d.display()
            )),
            Err(e) if !e.contains(expect) => wrong.push(format!(
                "{}: refused with {e:?}, expected {expect:?}",
                d.display()
            )),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_fixtures_are_what_the_generator_writes() {
    let t = tempfile::tempdir().unwrap();
    let (fx, _) = generate();
    write(t.path(), &fx);
    let committed = fixtures_dir();
    let readme = committed.join("README.md");
    assert_eq!(
        fs::read_to_string(&readme).ok().as_deref(),
        Some(README),
        "{}",
        readme.display()
    );
    for f in &fx {
        for name in f.files.iter().map(|(n, _)| *n).chain(["fixture.json"]) {
            let (a, b) = (
                t.path().join(f.name).join(name),
                committed.join(f.name).join(name),
            );
            assert!(
                fs::read(&a).ok() == fs::read(&b).ok(),
                "{} differs from what the generator writes; regenerate with PETREL_WRITE_FIXTURES=1 cargo test -p petrel-client --test delta_fixtures",
                b.display()
            );
        }
    }
}

#[test]
fn the_well_formed_deltas_the_fixtures_derive_from_apply() {
    // So each hostile fixture fails for the reason it names, not because the generator
    // or the apply path is broken.
    let t = tempfile::tempdir().unwrap();
    let (_, controls) = generate();
    write(t.path(), &controls);
    for c in &controls {
        run(&t.path().join(c.name)).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    }
}

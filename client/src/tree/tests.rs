//! Tree manifests, containers and tree deltas: round trips and every hostile case.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::delta::{self, Base};
use super::*;
use crate::delta::{ApplyMode, BuildOptions};

fn sample(dir: &Path) {
    fs::create_dir_all(dir.join("lib/sub")).unwrap();
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::write(dir.join("lib/libfoo.so.1.2"), pseudo(200_000, 1)).unwrap();
    fs::write(dir.join("lib/sub/data.txt"), b"hello tree\n".repeat(500)).unwrap();
    fs::write(dir.join("bin/tool"), pseudo(50_000, 2)).unwrap();
    fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("README"), b"readme\n").unwrap();
    symlink("libfoo.so.1.2", dir.join("lib/libfoo.so.1")).unwrap();
    symlink("../lib/sub/data.txt", dir.join("bin/data")).unwrap();
}

fn pseudo(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Compressible but not trivial: runs of text-like bytes.
            if i % 64 < 40 {
                b"abcdefgh"[(x % 8) as usize]
            } else {
                x as u8
            }
        })
        .collect()
}

/// Creates (or empties) `p` for reading and writing.
fn open_rw(p: &Path) -> File {
    File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(p)
        .unwrap()
}

fn pack(dir: &Path, out: &Path) -> (String, Vec<FrameAt>) {
    let s = scan(dir).unwrap();
    let mut f = open_rw(out);
    let frames = write_container(&s, Some(3), &mut f).unwrap();
    (sha256_hex(&s.manifest.to_bytes()), frames)
}

fn same_tree(a: &Path, b: &Path) {
    let (ma, mb) = (scan(a).unwrap().manifest, scan(b).unwrap().manifest);
    assert_eq!(ma, mb);
}

#[test]
fn a_tree_packs_and_unpacks_to_the_same_files_modes_and_links() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let c = t.path().join("c.ptree");
    let (sha, frames) = pack(&src, &c);
    assert_eq!(frames.len(), 4);
    let m = verify_container(&c, &sha).unwrap();
    assert_eq!(m.totals().0, 4);
    let dest = t.path().join("out");
    unpack(&c, &sha, &dest).unwrap();
    same_tree(&src, &dest);
    assert_eq!(
        fs::read_link(dest.join("lib/libfoo.so.1")).unwrap(),
        Path::new("libfoo.so.1.2")
    );
    let mode = fs::metadata(dest.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
}

#[test]
fn files_compressed_in_parallel_batches_and_streamed_ones_keep_manifest_order_and_frames() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Batches of small files, one file above the in-memory limit (streamed) between them,
    // and incompressible ones (stored).
    for i in 0..40 {
        fs::write(
            src.join(format!("a{i:02}")),
            pseudo(3_000 + i * 997, i as u32),
        )
        .unwrap();
    }
    let big = pseudo(IN_MEMORY_UP_TO as usize + 4096, 77);
    fs::write(src.join("b-big"), &big).unwrap();
    // SHA-256 in counter mode: incompressible.
    let noise: Vec<u8> = (0..700u32)
        .flat_map(|i| {
            ring::digest::digest(&ring::digest::SHA256, &i.to_le_bytes())
                .as_ref()
                .to_vec()
        })
        .collect();
    fs::write(src.join("c-noise"), &noise).unwrap();
    for i in 0..5 {
        fs::write(src.join(format!("d{i}")), pseudo(1_000, 100 + i)).unwrap();
    }
    let c = t.path().join("c.ptree");
    let (sha, frames) = pack(&src, &c);
    let m = verify_container(&c, &sha).unwrap();
    assert_eq!(frames.len(), m.totals().0 as usize);
    // Each frame is where it is said to be: read alone from its offset, it decodes to the
    // file.
    let bytes = fs::read(&c).unwrap();
    for (e, f) in m.files().zip(&frames) {
        let frame = &bytes[f.offset as usize..(f.offset + f.length) as usize];
        let mut out = Vec::new();
        read_frame(&mut &frame[..], e, &mut out).unwrap();
        assert_eq!(out, fs::read(src.join(&e.path)).unwrap(), "{}", e.path);
    }
    // The noise could not be compressed: stored.
    let (e, f) = m
        .files()
        .zip(&frames)
        .find(|(e, _)| e.path == "c-noise")
        .unwrap();
    assert_eq!(bytes[f.offset as usize], STORED, "{}", e.path);
    let dest = t.path().join("out");
    unpack(&c, &sha, &dest).unwrap();
    same_tree(&src, &dest);
}

#[test]
fn a_file_that_changes_after_the_scan_is_refused_by_name_compressed_streamed_or_stored() {
    let t = tempfile::tempdir().unwrap();
    for (name, len, level) in [
        ("small", 5_000, Some(3)),
        ("big", IN_MEMORY_UP_TO as usize + 1, Some(3)),
        ("plain", 5_000, None),
    ] {
        for grow in [false, true] {
            let src = t.path().join(format!("{name}-{grow}"));
            fs::create_dir_all(&src).unwrap();
            fs::write(src.join("f"), pseudo(len, 5)).unwrap();
            let s = scan(&src).unwrap();
            let mut edited = pseudo(len, 6);
            if grow {
                edited.push(b'!');
            }
            fs::write(src.join("f"), &edited).unwrap();
            let mut out = tempfile::tempfile().unwrap();
            let err = write_container(&s, level, &mut out).unwrap_err();
            assert!(
                matches!(&err, TreeError::Mismatch { path, reason }
                    if path == "f" && reason.contains("changed while it was packed")),
                "{name} {grow}: {err}"
            );
        }
    }
}

#[test]
fn a_container_whose_manifest_is_not_the_signed_one_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let c = t.path().join("c.ptree");
    pack(&src, &c);
    let e = unpack(&c, &"0".repeat(64), &t.path().join("out")).unwrap_err();
    assert!(e.to_string().contains("not the signed tree"), "{e}");
    assert!(!t.path().join("out").exists());
}

#[test]
fn a_corrupt_or_truncated_or_padded_container_is_refused_and_nothing_stays() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let c = t.path().join("c.ptree");
    let (sha, frames) = pack(&src, &c);
    let good = fs::read(&c).unwrap();
    let last = frames.last().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("flipped byte in a frame", {
            let mut b = good.clone();
            let i = (last.offset + last.length - 3) as usize;
            b[i] ^= 0x55;
            b
        }),
        ("truncated", good[..good.len() - 10].to_vec()),
        ("padded", [good.clone(), vec![0]].concat()),
        (
            "bad magic",
            [b"PTRLTREX".to_vec(), good[8..].to_vec()].concat(),
        ),
    ];
    for (what, bytes) in cases {
        fs::write(&c, &bytes).unwrap();
        let dest = t.path().join("out");
        assert!(unpack(&c, &sha, &dest).is_err(), "{what}");
        assert!(!dest.exists(), "{what}: the partial tree stays");
        assert!(verify_container(&c, &sha).is_err(), "{what}");
    }
}

fn manifest(entries: Vec<Entry>) -> TreeManifest {
    TreeManifest {
        schema_version: SCHEMA_VERSION,
        entries,
    }
}

fn dir(p: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: Kind::Dir,
        mode: Some(0o755),
        size: None,
        sha256: None,
        link: None,
    }
}

fn file(p: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: Kind::File,
        mode: Some(0o644),
        size: Some(0),
        sha256: Some(sha256_hex(b"")),
        link: None,
    }
}

fn link(p: &str, to: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: Kind::Symlink,
        mode: None,
        size: None,
        sha256: None,
        link: Some(to.into()),
    }
}

#[test]
fn hostile_manifests_are_refused_with_the_entry_named() {
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "dot-dot",
            vec![dir("a"), file("a/../../etc/passwd")],
            "\"..\" component",
        ),
        ("absolute", vec![file("/etc/passwd")], "is absolute"),
        (
            "empty component",
            vec![dir("a"), file("a//b")],
            "empty component",
        ),
        (
            "absolute link",
            vec![link("l", "/etc/shadow")],
            "is absolute",
        ),
        (
            "link leaving",
            vec![dir("a"), link("a/l", "../../x")],
            "leaves the tree",
        ),
        (
            "through a link",
            vec![dir("d"), link("d/up", ".."), link("x", "d/up/../..")],
            "goes through the symbolic link",
        ),
        (
            "file under a link",
            vec![link("l", "."), file("l/x")],
            "not a directory",
        ),
        ("parent unlisted", vec![file("a/b")], "is not listed"),
        ("unsorted", vec![file("b"), file("a")], "out of order"),
        ("twice", vec![file("a"), file("a")], "out of order"),
        (
            "setuid",
            vec![Entry {
                mode: Some(0o4755),
                ..file("a")
            }],
            "set-user-ID",
        ),
        (
            "bad hash",
            vec![Entry {
                sha256: Some("XYZ".into()),
                ..file("a")
            }],
            "sha256",
        ),
    ];
    for (what, entries, want) in cases {
        let e = manifest(entries).validate().unwrap_err().to_string();
        assert!(e.contains(want), "{what}: {e}");
    }
    // A link to a sibling through `..` that stays inside is fine.
    manifest(vec![dir("a"), dir("b"), link("b/l", "../a")])
        .validate()
        .unwrap();
}

#[test]
fn scanning_refuses_a_link_that_leaves_the_tree() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("d")).unwrap();
    symlink("/etc/passwd", t.path().join("d/pw")).unwrap();
    let e = scan(&t.path().join("d")).unwrap_err().to_string();
    assert!(e.contains("pw") && e.contains("absolute"), "{e}");
}

/// Builds v1 and v2 trees (an unchanged file, a changed one, a renamed library, an added
/// and a removed file) and their containers.
fn two_versions(t: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let v1 = t.join("v1");
    sample(&v1);
    let v2 = t.join("v2");
    sample(&v2);
    fs::remove_file(v2.join("lib/libfoo.so.1.2")).unwrap();
    fs::remove_file(v2.join("lib/libfoo.so.1")).unwrap();
    let mut lib = pseudo(200_000, 1);
    lib[1000..1010].copy_from_slice(b"0123456789");
    fs::write(v2.join("lib/libfoo.so.1.3"), &lib).unwrap();
    symlink("libfoo.so.1.3", v2.join("lib/libfoo.so.1")).unwrap();
    let mut tool = pseudo(50_000, 2);
    tool[7] ^= 1;
    fs::write(v2.join("bin/tool"), &tool).unwrap();
    fs::write(v2.join("NEW"), pseudo(10_000, 9)).unwrap();
    fs::remove_file(v2.join("README")).unwrap();
    let (c1, c2) = (t.join("v1.ptree"), t.join("v2.ptree"));
    pack(&v1, &c1);
    let (sha2, _) = pack(&v2, &c2);
    (c1, c2, sha2)
}

fn install(c: &Path, at: &Path) -> Vec<u8> {
    let f = File::open(c).unwrap();
    let (bytes, m) = read_manifest(&mut std::io::BufReader::new(f), None).unwrap();
    unpack(c, &sha256_hex(&bytes), at).unwrap();
    let _ = m;
    bytes
}

#[test]
fn a_tree_delta_rebuilds_the_new_tree_with_renames_adds_and_removals() {
    let t = tempfile::tempdir().unwrap();
    let (c1, c2, sha2) = two_versions(t.path());
    let mut d = Vec::new();
    let made = delta::make(&c1, &c2, &BuildOptions::default(), &mut d).unwrap();
    assert_eq!(
        (
            made.copied,
            made.deltas,
            made.renamed,
            made.added,
            made.removed
        ),
        (1, 2, 1, 1, 2),
        "{made:?}"
    );
    assert!(
        (d.len() as u64) < fs::metadata(&c2).unwrap().len() / 4,
        "{} bytes",
        d.len()
    );
    let dp = t.path().join("d.bin");
    fs::write(&dp, &d).unwrap();
    let installed = t.path().join("installed");
    let mbytes = install(&c1, &installed);
    // Both modes: the file deltas share scratch files, each result written from its start.
    for (i, mode) in [ApplyMode::Mmap, ApplyMode::Streaming]
        .into_iter()
        .enumerate()
    {
        let out_p = t.path().join(format!("rebuilt-{i}.ptree"));
        let mut out = open_rw(&out_p);
        let done = delta::apply(
            &dp,
            &Base {
                root: &installed,
                manifest: &mbytes,
            },
            &sha2,
            mode,
            t.path(),
            None,
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(done.fetched.is_empty());
        assert_eq!(done.deltas, 2);
        let again = t.path().join(format!("again-{i}"));
        unpack(&out_p, &sha2, &again).unwrap();
        same_tree(&t.path().join("v2"), &again);
    }
}

#[test]
fn a_file_no_allowed_format_fits_is_sent_whole_not_a_failed_tree_delta() {
    // Only executable-aware deltas allowed, and no file is ELF: every changed file is
    // carried whole, and the tree delta still rebuilds the new tree.
    let t = tempfile::tempdir().unwrap();
    let (c1, c2, _) = two_versions(t.path());
    let opts = BuildOptions {
        formats: vec![crate::delta::bsdiff::EXEC_FORMAT],
        ..BuildOptions::default()
    };
    let mut d = Vec::new();
    let made = delta::make(&c1, &c2, &opts, &mut d).unwrap();
    assert_eq!((made.deltas, made.added), (0, 3), "{made:?}");
}

#[test]
fn an_edited_installed_file_alone_is_read_from_the_full_tree() {
    let t = tempfile::tempdir().unwrap();
    let (c1, c2, sha2) = two_versions(t.path());
    let dp = t.path().join("d.bin");
    let mut d = Vec::new();
    delta::make(&c1, &c2, &BuildOptions::default(), &mut d).unwrap();
    fs::write(&dp, &d).unwrap();
    let installed = t.path().join("installed");
    let mbytes = install(&c1, &installed);
    // Hand edits: the unchanged file and the delta base of the changed one.
    fs::write(installed.join("lib/sub/data.txt"), b"edited").unwrap();
    fs::write(installed.join("bin/tool"), b"edited too").unwrap();
    let full = fs::read(&c2).unwrap();
    let mut asked = Vec::new();
    let mut fetch = |f: FrameAt| {
        asked.push(f);
        Ok(full[f.offset as usize..(f.offset + f.length) as usize].to_vec())
    };
    let out_p = t.path().join("rebuilt.ptree");
    let mut out = open_rw(&out_p);
    let done = delta::apply(
        &dp,
        &Base {
            root: &installed,
            manifest: &mbytes,
        },
        &sha2,
        ApplyMode::Streaming,
        t.path(),
        Some(&mut fetch),
        &mut out,
    )
    .unwrap();
    assert_eq!(
        done.fetched,
        vec!["bin/tool".to_string(), "lib/sub/data.txt".to_string()]
    );
    assert_eq!(asked.len(), 2);
    unpack(&out_p, &sha2, &t.path().join("again")).unwrap();
    same_tree(&t.path().join("v2"), &t.path().join("again"));

    // Without a way to read the full tree, the delta fails and says which file.
    let e = delta::apply(
        &dp,
        &Base {
            root: &installed,
            manifest: &mbytes,
        },
        &sha2,
        ApplyMode::Mmap,
        t.path(),
        None,
        &mut out,
    )
    .unwrap_err();
    assert!(e.to_string().contains("bin/tool"), "{e}");
    // A fetched frame that is not the file is refused too.
    let mut liar = |_f: FrameAt| Ok(vec![0u8; 20]);
    assert!(delta::apply(
        &dp,
        &Base {
            root: &installed,
            manifest: &mbytes
        },
        &sha2,
        ApplyMode::Mmap,
        t.path(),
        Some(&mut liar),
        &mut out
    )
    .is_err());
}

#[test]
fn a_hostile_tree_delta_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (c1, c2, sha2) = two_versions(t.path());
    let mut d = Vec::new();
    delta::make(&c1, &c2, &BuildOptions::default(), &mut d).unwrap();
    let installed = t.path().join("installed");
    let mbytes = install(&c1, &installed);
    let out_p = t.path().join("rebuilt.ptree");
    let mut out = open_rw(&out_p);
    let dp = t.path().join("d.bin");
    let mut run = |bytes: &[u8], base: &[u8], want: &str| {
        fs::write(&dp, bytes).unwrap();
        delta::apply(
            &dp,
            &Base {
                root: &installed,
                manifest: base,
            },
            want,
            ApplyMode::Mmap,
            t.path(),
            None,
            &mut out,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert!(run(&d, &mbytes, &sha2).is_ok());
    let mut flipped = d.clone();
    let n = flipped.len();
    flipped[n - 5] ^= 0xff;
    assert!(run(&flipped, &mbytes, &sha2).is_err(), "a corrupt payload");
    assert!(run(&d[..d.len() - 7], &mbytes, &sha2).is_err(), "truncated");
    assert!(
        run(&[d.clone(), vec![1]].concat(), &mbytes, &sha2).is_err(),
        "padded"
    );
    let e = run(&d, &mbytes, &"1".repeat(64)).unwrap_err();
    assert!(e.contains("signed tree"), "{e}");
    let other = manifest(vec![file("x")]).to_bytes();
    let e = run(&d, &other, &sha2).unwrap_err();
    assert!(e.contains("not the delta's base"), "{e}");
}

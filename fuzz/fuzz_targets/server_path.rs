//! The server's request path handling: `path::parse_request_path` (decode and validate a
//! request target) and `tree::TreeRoot::open_file` (open it without leaving the tree)
//! against a copy of the fixture tree with symlinks planted inside it, some pointing out of
//! the tree. A query (`?…`) is cut off first, as the router does.
//!
//! Properties: never a panic; an accepted path is relative, `/`-separated, has no empty,
//! `.` or `..` segment, no hidden or temporary segment, no backslash or control byte,
//! starts with `metadata/` or `targets/`, and joined to any root stays below it; a file
//! that opens is a regular file whose real location is under `<root>/metadata` or
//! `<root>/targets`.
#![no_main]

use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use petrel_server::path::{
    is_hash_prefixed_name, is_temporary_name, is_versioned_metadata_name, parse_request_path,
    FileKind,
};
use petrel_server::tree::TreeRoot;

struct Tree {
    _dir: tempfile::TempDir,
    root: TreeRoot,
    canonical: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn tree() -> &'static Tree {
    static T: OnceLock<Tree> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/good/repo");
        let root = dir.path().join("tree");
        copy_dir(&src, &root);
        std::fs::write(dir.path().join("secret.txt"), b"outside the tree").unwrap();
        std::fs::create_dir_all(root.join("keys")).unwrap();
        std::fs::write(root.join("keys/root.pem"), b"not served").unwrap();
        std::fs::write(root.join("metadata/.timestamp.json.tmp"), b"{}").unwrap();
        use std::os::unix::fs::symlink;
        symlink("../../secret.txt", root.join("targets/secret.txt")).unwrap();
        symlink("/etc", root.join("targets/etc")).unwrap();
        symlink("../keys", root.join("targets/keys")).unwrap();
        symlink("../metadata/root.json", root.join("targets/root.json")).unwrap();
        symlink("timestamp.json", root.join("metadata/ts.json")).unwrap();
        symlink(".timestamp.json.tmp", root.join("metadata/staged.json")).unwrap();
        symlink("../..", root.join("metadata/up")).unwrap();
        let canonical = std::fs::canonicalize(&root).unwrap();
        Tree {
            root: TreeRoot::open(&root).expect("tree root"),
            _dir: dir,
            canonical,
        }
    })
}

fn check_relative(rel: &str) {
    assert!(!rel.starts_with('/'), "{rel:?} is absolute");
    assert!(
        rel.starts_with("metadata/") || rel.starts_with("targets/"),
        "{rel:?} is outside metadata/ and targets/"
    );
    for seg in rel.split('/') {
        assert!(
            !seg.is_empty() && seg != "." && seg != "..",
            "{rel:?} has segment {seg:?}"
        );
        assert!(!is_temporary_name(seg), "{rel:?} has a temporary segment");
        assert!(!seg.contains('\\'), "{rel:?} has a backslash");
        assert!(
            !seg.chars().any(|c| c.is_ascii_control()),
            "{rel:?} has a control byte"
        );
    }
    let root = Path::new("/srv/tree");
    let joined = root.join(rel);
    let mut depth = 0usize;
    for c in joined
        .strip_prefix(root)
        .expect("below the root")
        .components()
    {
        match c {
            Component::Normal(_) => depth += 1,
            other => panic!("{rel:?} joins to a {other:?} component"),
        }
    }
    assert!(depth >= 2);
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let path = raw.split_once('?').map_or(raw, |(p, _)| p);
    let Ok(p) = parse_request_path(path) else {
        return;
    };
    let rel = p.relative();
    check_relative(rel);
    let name = p.file_name();
    match p.kind() {
        FileKind::VersionedMetadata => assert!(is_versioned_metadata_name(name)),
        FileKind::HashedTarget => assert!(is_hash_prefixed_name(name)),
        FileKind::UnversionedMetadata | FileKind::UnhashedTarget => {}
    }
    assert_eq!(
        p.kind().is_immutable(),
        matches!(
            p.kind(),
            FileKind::VersionedMetadata | FileKind::HashedTarget
        )
    );
    let t = tree();
    if let Ok((file, meta)) = t.root.open_file(rel) {
        assert!(meta.is_file(), "{rel:?} opened a non-file");
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        let inside = real
            .strip_prefix(&t.canonical)
            .unwrap_or_else(|_| panic!("{rel:?} opened {real:?}, outside the tree"));
        let first = inside.components().next();
        assert!(
            matches!(first, Some(Component::Normal(f)) if f == "metadata" || f == "targets"),
            "{rel:?} opened {real:?}, outside metadata/ and targets/"
        );
        for c in inside.components() {
            if let Component::Normal(n) = c {
                assert!(
                    !is_temporary_name(&n.to_string_lossy()),
                    "{rel:?} opened a temporary file {real:?}"
                );
            }
        }
    }
});

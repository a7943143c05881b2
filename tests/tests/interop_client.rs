//! Petrel's client (`petrel_client::tuf::updater::Updater`) reads repositories written by
//! other TUF implementations: it refreshes, finds and downloads every target, and refuses
//! changed target bytes.
//!
//! * **python-tuf 6.0.0** (`tests/interop/python/make_repo.py`): ed25519 root (threshold 2),
//!   timestamp and snapshot; an ECDSA P-256 top-level targets key; an RSA-PSS delegated role
//!   `vendor` for a nested path; role `bins` delegating to 8 succinct hashed bins (TAP 15).
//!   With and without consistent snapshots, over `file://` and over HTTP (127.0.0.1).
//! * **tough 0.24** (awslabs/tough, the library behind tuftool): the tree is written with
//!   tough's own API, as tuftool does: the root with `SignedRole::new` (what `tuftool root
//!   sign` does), everything else with `tough::editor::RepositoryEditor`, keys read by
//!   `tough::key_source::LocalKeySource`. Root keys ed25519 + ECDSA (threshold 2), top-level
//!   targets ECDSA, delegated role `vendor` RSA-PSS (path pattern), two delegated roles by
//!   `path_hash_prefixes` (tough's editor has no succinct hashed bins), targets copied with
//!   `SignedRepository::copy_targets`/`copy_target`.
//!
//! What tough 0.24 writes, as found here (each point is asserted below, so a tough upgrade
//! that changes it shows up):
//!
//! * Its `LocalKeySource` reads Ed25519 and ECDSA private keys only as **raw PKCS#8 DER**
//!   (`sign::parse_keypair` tries `from_pkcs8` on the file bytes); a PKCS#8 *PEM* of such a
//!   key is "unrecognized". RSA keys it reads only as PEM (`PRIVATE KEY` or `RSA PRIVATE
//!   KEY`). So the keys below are `*.pk8` DER files plus one RSA PEM.
//! * Metadata: `N.root.json` always (never a plain `root.json`), `timestamp.json`, and
//!   `N.snapshot.json`, `N.targets.json`, `N.<role>.json` with consistent snapshots or
//!   `snapshot.json`, `targets.json`, `<role>.json` without. Targets list only `sha256`.
//! * Target files with consistent snapshots: `targets/<sha256>.<whole target name>`. For a
//!   name without `/` that is exactly the spec's `<dir>/<hash>.<basename>`, and Petrel reads
//!   it. For a nested name (`docs/guide/intro.txt`) tough writes
//!   `targets/<sha256>.docs/guide/intro.txt` (a directory `<sha256>.docs`), while the spec,
//!   python-tuf and Petrel use `targets/docs/guide/<sha256>.intro.txt`: Petrel finds the
//!   target in the metadata but the download is "not found". (`copy_targets` also never
//!   places nested names: it walks the input directory and matches bare file names, so a
//!   nested target needs `copy_target` with an explicit name.) Without consistent snapshots
//!   nested names are plain paths and Petrel reads them.
//!
//! Every child process runs under `run_with_timeout`; servers bind 127.0.0.1 only and stop
//! on drop. The python-tuf venv comes from `scripts/ensure-venv.sh` (see
//! `petrel_tests::python`): if it cannot be made the python tests fail rather than skip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{digest, SHA256, SHA512};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use petrel_client::fetch::{AutoTransport, FetchError, FileTransport, Transport};
use petrel_client::tuf::updater::{
    local_target_file_name, TargetInfo, UpdateError, Updater, UpdaterConfig,
};
use petrel_tests::{describe, python_script, run_with_timeout, StaticServer, CHILD_TIMEOUT};
use serde_json::Value;
use tough::editor::signed::{PathExists, SignedRole};
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{
    KeyHolder, PathHashPrefix, PathPattern, PathSet, RoleKeys, RoleType, Root, Target,
};
use tough::TargetName;
use url::Url;

// ---------------------------------------------------------------------------------------
// Shared: expectations, the Petrel client, downloads, tampering
// ---------------------------------------------------------------------------------------

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex(digest(&SHA256, b).as_ref())
}

fn sha512_hex(b: &[u8]) -> String {
    hex(digest(&SHA512, b).as_ref())
}

/// What the writer of a tree says about one target, and its bytes.
#[derive(Clone, Debug)]
struct Expected {
    content: Vec<u8>,
    length: u64,
    sha256: String,
    /// Only python-tuf lists sha512 too.
    sha512: Option<String>,
    /// The role listing it, and the delegation chain from `targets` to that role.
    chain: Vec<String>,
}

impl Expected {
    fn role(&self) -> &str {
        self.chain.last().expect("chain has at least `targets`")
    }
}

/// Where the spec (and python-tuf, and Petrel) put a target's file:
/// `targets/<dir>/<sha256>.<basename>` with consistent snapshots, `targets/<name>` without.
fn spec_target_file(tree: &Path, name: &str, sha256: &str, consistent: bool) -> PathBuf {
    let rel = match (consistent, name.rsplit_once('/')) {
        (false, _) => name.to_string(),
        (true, Some((dir, base))) => format!("{dir}/{sha256}.{base}"),
        (true, None) => format!("{sha256}.{name}"),
    };
    tree.join("targets").join(rel)
}

/// How a client reaches the tree.
enum Via<'a> {
    File,
    Http(&'a StaticServer),
}

/// A Petrel updater for the tree in `tree` (`tree/metadata`, `tree/targets`), trusting
/// `trusted_root`, keeping its metadata in `work/metadata`.
fn petrel_client(tree: &Path, via: &Via, trusted_root: &[u8], work: &Path) -> Updater {
    let md = work.join("metadata");
    Updater::init_trusted_root(&md, trusted_root)
        .unwrap_or_else(|e| panic!("Petrel refuses the tree's first root: {e}"));
    let (metadata_url, targets_url, transport): (String, String, Box<dyn Transport>) = match via {
        Via::File => {
            let base = Url::from_directory_path(tree).expect("absolute tree path");
            (
                format!("{base}metadata"),
                format!("{base}targets"),
                Box::new(FileTransport::new()),
            )
        }
        Via::Http(server) => (
            server.url("metadata"),
            server.url("targets"),
            Box::new(AutoTransport::default()),
        ),
    };
    let config = UpdaterConfig::new(metadata_url).with_target_base_url(targets_url);
    Updater::new(config, transport, &md).unwrap_or_else(|e| panic!("Updater::new: {e}"))
}

/// Looks `name` up, checks what the metadata says against `want`, downloads it into
/// `dest_dir` and checks the bytes.
fn fetch_and_check(
    updater: &mut Updater,
    name: &str,
    want: &Expected,
    dest_dir: &Path,
) -> TargetInfo {
    let info = updater
        .get_target_info(name)
        .unwrap_or_else(|e| panic!("{name}: target search failed: {e}"))
        .unwrap_or_else(|| panic!("{name}: no role lists it"));
    assert_eq!(info.role, want.role(), "{name}: listing role");
    assert_eq!(
        info.delegation_chain, want.chain,
        "{name}: delegation chain"
    );
    assert_eq!(info.length(), want.length, "{name}: signed length");
    assert_eq!(
        info.hashes().get("sha256"),
        Some(&want.sha256),
        "{name}: signed sha256"
    );
    assert_eq!(
        info.hashes().get("sha512"),
        want.sha512.as_ref(),
        "{name}: signed sha512"
    );
    let dest = dest_dir.join(local_target_file_name(name).expect("safe local name"));
    updater
        .download_target(&info, &dest)
        .unwrap_or_else(|e| panic!("{name}: download failed: {e}"));
    let got = std::fs::read(&dest).expect("downloaded file");
    assert_eq!(got.len() as u64, want.length, "{name}: downloaded length");
    assert_eq!(sha256_hex(&got), want.sha256, "{name}: downloaded sha256");
    if let Some(sha512) = &want.sha512 {
        assert_eq!(&sha512_hex(&got), sha512, "{name}: downloaded sha512");
    }
    assert!(got == want.content, "{name}: downloaded bytes differ");
    assert!(
        updater.find_cached_target(&info, &dest).unwrap(),
        "{name}: the downloaded copy is not recognised as current"
    );
    info
}

/// Changes the served copy of a target three ways (one flipped byte, one byte short, one
/// byte too many) and checks Petrel refuses each with a hash or length error, leaving no
/// destination and no temporary file; then restores it and checks it downloads again.
fn assert_tampered_copy_refused(updater: &Updater, info: &TargetInfo, file: &Path, work: &Path) {
    let original = std::fs::read(file)
        .unwrap_or_else(|e| panic!("{}: {e} (is this the file Petrel fetches?)", file.display()));
    let dest_dir = work.join("tampered");
    std::fs::create_dir_all(&dest_dir).unwrap();
    let dest = dest_dir.join("target");
    let _ = std::fs::remove_file(&dest);
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x01;
    let short = original[..original.len() - 1].to_vec();
    let mut long = original.clone();
    long.push(b'!');
    for (what, bytes) in [("flipped", flipped), ("short", short), ("long", long)] {
        std::fs::write(file, &bytes).unwrap();
        let err = updater
            .download_target(info, &dest)
            .expect_err(&format!("{}: {what} copy accepted", info.path));
        let ok = match &err {
            UpdateError::LengthOrHash { .. } => what != "long",
            // More bytes than the signed length: the transport stops at the limit.
            UpdateError::TargetFetch {
                source: FetchError::TooLarge { max_len, .. },
                ..
            } => what == "long" && *max_len == info.length(),
            _ => false,
        };
        assert!(ok, "{}: {what} copy: unexpected error: {err}", info.path);
        assert!(!dest.exists(), "{what}: a refused download left {dest:?}");
        let left: Vec<_> = std::fs::read_dir(&dest_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{what}: left behind {left:?}");
    }
    std::fs::write(file, &original).unwrap();
    updater
        .download_target(info, &dest)
        .unwrap_or_else(|e| panic!("{}: restored copy refused: {e}", info.path));
    assert_eq!(std::fs::read(&dest).unwrap(), original);
}

/// Request path → status, from a server's log.
fn requests(server: &StaticServer) -> BTreeMap<String, u16> {
    server
        .requests()
        .into_iter()
        .map(|r| (r.path, r.status))
        .collect()
}

// ---------------------------------------------------------------------------------------
// python-tuf trees
// ---------------------------------------------------------------------------------------

/// Runs make_repo.py into `out` and returns its JSON summary.
fn make_python_repo(out: &Path, consistent: bool) -> Value {
    let mut cmd = python_script("make_repo.py");
    cmd.arg(out);
    if !consistent {
        cmd.arg("--no-consistent-snapshot");
    }
    let shown = format!("{cmd:?}");
    let res = run_with_timeout(&mut cmd, CHILD_TIMEOUT).unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(res.status.success(), "{shown} failed: {}", describe(&res));
    let stdout = String::from_utf8_lossy(&res.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("make_repo.py summary is not JSON ({e}): {stdout}"))
}

/// Every target of the summary with what python-tuf signed for it. make_repo.py's content
/// is `content of <path>\n`.
fn python_expectations(summary: &Value) -> BTreeMap<String, Expected> {
    let str_of = |v: &Value, what: &str| -> String {
        v.as_str()
            .unwrap_or_else(|| panic!("summary: {what} is not a string"))
            .to_string()
    };
    let mut out = BTreeMap::new();
    for name in summary["targets"].as_array().expect("summary.targets") {
        let name = str_of(name, "target");
        let role = str_of(&summary["target_roles"][&name], "target role");
        let chain: Vec<String> = match role.as_str() {
            "targets" => vec!["targets".into()],
            "vendor" => vec!["targets".into(), "vendor".into()],
            bin if bin.starts_with("bins-") => {
                vec!["targets".into(), "bins".into(), bin.into()]
            }
            other => panic!("{name}: unexpected role {other} in the summary"),
        };
        let hashes = &summary["target_hashes"][&name];
        let want = Expected {
            content: format!("content of {name}\n").into_bytes(),
            length: summary["target_lengths"][&name]
                .as_u64()
                .expect("target length"),
            sha256: str_of(&hashes["sha256"], "sha256"),
            sha512: Some(str_of(&hashes["sha512"], "sha512")),
            chain,
        };
        // The summary agrees with the content (so a mismatch below is Petrel's).
        assert_eq!(want.length, want.content.len() as u64, "{name}");
        assert_eq!(want.sha256, sha256_hex(&want.content), "{name}");
        out.insert(name, want);
    }
    out
}

fn python_tuf_tree(consistent: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("python-tuf");
    let summary = make_python_repo(&tree, consistent);
    assert_eq!(summary["consistent_snapshot"], consistent);
    // Every key type the kit promises is in play, so every scheme is verified below.
    let schemes: BTreeSet<&str> = summary["keys"]
        .as_object()
        .expect("summary.keys")
        .values()
        .filter_map(|k| k["scheme"].as_str())
        .collect();
    for s in ["ed25519", "ecdsa-sha2-nistp256", "rsassa-pss-sha256"] {
        assert!(
            schemes.contains(s),
            "make_repo.py uses no {s} key: {schemes:?}"
        );
    }
    let expected = python_expectations(&summary);
    let roles: BTreeSet<&str> = expected.values().map(Expected::role).collect();
    assert!(
        roles.contains("targets") && roles.contains("vendor"),
        "{roles:?}"
    );
    let bins = roles.iter().filter(|r| r.starts_with("bins-")).count();
    assert!(
        bins >= 2,
        "the binned targets sit in {bins} bin(s): {roles:?}"
    );
    let root = std::fs::read(tree.join("metadata/1.root.json")).unwrap();

    // 1. file://
    let work = tmp.path().join("client-file");
    let mut updater = petrel_client(&tree, &Via::File, &root, &work);
    updater
        .refresh()
        .unwrap_or_else(|e| panic!("Petrel cannot refresh from a python-tuf tree: {e}"));
    let trusted = updater.trusted().expect("refreshed");
    assert_eq!(trusted.consistent_snapshot(), consistent);
    assert_eq!(trusted.root().signed.version, 1);
    let dl = work.join("downloads");
    let mut infos = BTreeMap::new();
    for (name, want) in &expected {
        infos.insert(name.clone(), fetch_and_check(&mut updater, name, want, &dl));
    }
    // python-tuf's target `custom` (non-ASCII included) arrives as signed.
    let top = &infos["top.txt"];
    assert_eq!(
        top.file.custom.as_ref().expect("top.txt has custom")["petrel-interop"]["tags"][1],
        "ünïcode"
    );
    // A name nobody lists is not found, also one inside the bins' paths.
    assert!(updater.get_target_info("bins/none.txt").unwrap().is_none());
    assert!(updater.get_target_info("nowhere.txt").unwrap().is_none());

    // Changed bytes are refused: the RSA-signed delegated target, the ECDSA-signed
    // top-level one and a binned one.
    let bin_target = expected
        .iter()
        .find(|(_, w)| w.role().starts_with("bins-"))
        .map(|(n, _)| n.clone())
        .unwrap();
    for name in [
        "apps/vendor/app/1.0/app.bin",
        "top.txt",
        bin_target.as_str(),
    ] {
        let file = spec_target_file(&tree, name, &expected[name].sha256, consistent);
        assert_tampered_copy_refused(&updater, &infos[name], &file, &work);
    }

    // 2. HTTP on 127.0.0.1, a fresh client.
    let server = StaticServer::serve(&tree).unwrap();
    let work = tmp.path().join("client-http");
    let mut updater = petrel_client(&tree, &Via::Http(&server), &root, &work);
    updater
        .refresh()
        .unwrap_or_else(|e| panic!("Petrel cannot refresh from a python-tuf tree over HTTP: {e}"));
    let dl = work.join("downloads");
    for (name, want) in &expected {
        fetch_and_check(&mut updater, name, want, &dl);
    }
    let seen = requests(&server);
    let misses: Vec<_> = seen.iter().filter(|(_, s)| **s != 200).collect();
    assert_eq!(
        misses,
        vec![(&"/metadata/2.root.json".to_string(), &404)],
        "only the next-root probe may miss: {seen:#?}"
    );
    let meta = |role: &str| {
        if consistent {
            format!("/metadata/1.{role}.json")
        } else {
            format!("/metadata/{role}.json")
        }
    };
    for path in [
        "/metadata/timestamp.json".to_string(),
        meta("snapshot"),
        meta("targets"),
        meta("vendor"),
        meta("bins"),
    ] {
        assert!(seen.contains_key(&path), "{path} not fetched: {seen:#?}");
    }
    // Each target was fetched under the name the spec gives it (hash-prefixed basename).
    for (name, want) in &expected {
        let file = spec_target_file(Path::new("/"), name, &want.sha256, consistent);
        let path = file.to_str().unwrap();
        assert_eq!(seen.get(path), Some(&200), "{name}: {path} not fetched");
    }
    let info = updater
        .get_target_info("apps/vendor/app/1.0/app.bin")
        .unwrap()
        .unwrap();
    let file = spec_target_file(&tree, &info.path, &info.hashes()["sha256"], consistent);
    assert_tampered_copy_refused(&updater, &info, &file, &work);
}

#[test]
fn petrel_client_reads_python_tuf_tree() {
    python_tuf_tree(true);
}

#[test]
fn petrel_client_reads_python_tuf_tree_without_consistent_snapshots() {
    python_tuf_tree(false);
}

// ---------------------------------------------------------------------------------------
// tough trees
// ---------------------------------------------------------------------------------------

const EXPIRES: &str = "2100-01-01T00:00:00Z";
const ONE: NonZeroU64 = NonZeroU64::MIN;

/// A nested target name: readable from tough trees only without consistent snapshots.
const NESTED: &str = "docs/guide/intro.txt";

/// Standard base64 with padding, for PEM.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let v = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The private key files of a tough repository, in the formats tough's `LocalKeySource`
/// reads (see the module docs).
struct ToughKeys {
    root_ed25519: PathBuf,
    root_ecdsa: PathBuf,
    timestamp: PathBuf,
    snapshot: PathBuf,
    targets: PathBuf,
    vendor_rsa: PathBuf,
    hashed: PathBuf,
}

impl ToughKeys {
    fn generate(dir: &Path) -> ToughKeys {
        std::fs::create_dir_all(dir).unwrap();
        let rng = SystemRandom::new();
        let ed25519 = |name: &str| {
            let der = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519 key");
            let path = dir.join(format!("{name}.pk8"));
            std::fs::write(&path, der.as_ref()).unwrap();
            path
        };
        let ecdsa = |name: &str| {
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .expect("ECDSA key");
            let path = dir.join(format!("{name}.pk8"));
            std::fs::write(&path, der.as_ref()).unwrap();
            path
        };
        let rsa =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let rsa_der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = rsa.as_der().expect("RSA DER");
        let vendor_rsa = dir.join("vendor-rsa.pem");
        std::fs::write(&vendor_rsa, pem("PRIVATE KEY", rsa_der.as_ref())).unwrap();
        ToughKeys {
            root_ed25519: ed25519("root-ed25519"),
            root_ecdsa: ecdsa("root-ecdsa"),
            timestamp: ed25519("timestamp"),
            snapshot: ed25519("snapshot"),
            targets: ecdsa("targets"),
            vendor_rsa,
            hashed: ed25519("hashed"),
        }
    }

    fn source(path: &Path) -> Box<dyn KeySource> {
        Box::new(LocalKeySource {
            path: path.to_path_buf(),
        })
    }

    /// Every key: tough picks the ones each role needs.
    fn all(&self) -> Vec<Box<dyn KeySource>> {
        [
            &self.root_ed25519,
            &self.root_ecdsa,
            &self.timestamp,
            &self.snapshot,
            &self.targets,
            &self.vendor_rsa,
            &self.hashed,
        ]
        .into_iter()
        .map(|p| Self::source(p))
        .collect()
    }
}

/// Signs and writes `metadata/1.root.json` the way `tuftool root sign` does.
async fn write_tough_root(metadata: &Path, keys: &ToughKeys, consistent: bool) -> PathBuf {
    let mut root_keys = HashMap::new();
    let mut roles = HashMap::new();
    for (role, paths, threshold) in [
        (
            RoleType::Root,
            vec![&keys.root_ed25519, &keys.root_ecdsa],
            2,
        ),
        (RoleType::Timestamp, vec![&keys.timestamp], 1),
        (RoleType::Snapshot, vec![&keys.snapshot], 1),
        (RoleType::Targets, vec![&keys.targets], 1),
    ] {
        let mut keyids = Vec::new();
        for p in paths {
            let key = ToughKeys::source(p)
                .as_sign()
                .await
                .unwrap_or_else(|e| panic!("tough cannot read {}: {e}", p.display()))
                .tuf_key();
            let id = key.key_id().expect("key id");
            root_keys.insert(id.clone(), key);
            keyids.push(id);
        }
        roles.insert(
            role,
            RoleKeys {
                keyids,
                threshold: NonZeroU64::new(threshold).unwrap(),
                _extra: HashMap::new(),
            },
        );
    }
    let root = Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: consistent,
        version: ONE,
        expires: EXPIRES.parse().unwrap(),
        keys: root_keys,
        roles,
        _extra: HashMap::new(),
    };
    let signed = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(root),
        &keys.all(),
        &SystemRandom::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("tough cannot sign the root: {e}"));
    assert_eq!(signed.signed().signatures.len(), 2, "both root keys sign");
    signed.write(metadata, consistent).await.unwrap();
    metadata.join("1.root.json")
}

/// Target names for the two `path_hash_prefixes` roles: `hashed-lo` (sha256 of the name
/// starts with 0–7) and `hashed-hi` (8–f), at least two each. Name → role.
fn hashed_names() -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    let (mut lo, mut hi) = (0, 0);
    for i in 0.. {
        if lo >= 2 && hi >= 2 {
            break;
        }
        let name = format!("hashed-{i:02}.txt");
        let first = sha256_hex(name.as_bytes()).as_bytes()[0];
        let role = if b"01234567".contains(&first) {
            lo += 1;
            "hashed-lo"
        } else {
            hi += 1;
            "hashed-hi"
        };
        out.insert(name, role);
    }
    out
}

/// A tough-written tree in `dir/tree` and what it holds.
struct ToughTree {
    tree: PathBuf,
    root: Vec<u8>,
    expected: BTreeMap<String, Expected>,
}

/// Writes a repository with tough 0.24's editor:
/// * top-level `targets` (ECDSA): `readme.txt`, `firmware.bin` (binary), [`NESTED`];
/// * `vendor` (RSA-PSS, paths `vendor-*`, terminating): `vendor-app.bin`;
/// * `hashed-lo` / `hashed-hi` (one ed25519 key, `path_hash_prefixes` 0–7 / 8–f,
///   terminating): the names of [`hashed_names`].
async fn write_tough_tree(dir: &Path, consistent: bool) -> ToughTree {
    let keys = ToughKeys::generate(&dir.join("keys"));
    // tough reads Ed25519 keys only as DER: the PEM of the same key is refused.
    let ed_der = std::fs::read(&keys.hashed).unwrap();
    let ed_pem = dir.join("keys/hashed.pem");
    std::fs::write(&ed_pem, pem("PRIVATE KEY", &ed_der)).unwrap();
    assert!(
        ToughKeys::source(&ed_pem).as_sign().await.is_err(),
        "tough 0.24 now reads PKCS#8 PEM Ed25519 keys; update the module docs"
    );

    let tree = dir.join("tree");
    let metadata = tree.join("metadata");
    let targets_dir = tree.join("targets");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("docs/guide")).unwrap();
    let mut contents: BTreeMap<String, (Vec<u8>, Vec<&str>)> = BTreeMap::new();
    contents.insert(
        "readme.txt".into(),
        (b"written by tough\n".to_vec(), vec!["targets"]),
    );
    contents.insert(
        "firmware.bin".into(),
        (
            (0..100_000u32).map(|i| (i * 31 % 256) as u8).collect(),
            vec!["targets"],
        ),
    );
    contents.insert(
        NESTED.into(),
        (b"a nested tough target\n".to_vec(), vec!["targets"]),
    );
    contents.insert(
        "vendor-app.bin".into(),
        (
            b"vendor app\0\r\n\xff\xfe".to_vec(),
            vec!["targets", "vendor"],
        ),
    );
    let hashed = hashed_names();
    for (name, role) in &hashed {
        contents.insert(
            name.clone(),
            (
                format!("{name} in {role}\n").into_bytes(),
                vec!["targets", role],
            ),
        );
    }
    for (name, (bytes, _)) in &contents {
        std::fs::write(src.join(name), bytes).unwrap();
    }

    let root_path = write_tough_root(&metadata, &keys, consistent).await;
    let all = keys.all();
    let exp = || EXPIRES.parse().unwrap();
    // The files of `role` with plain names: tough's `add_target_paths` names each target
    // after its file name.
    let files_of = |role: &str| -> Vec<PathBuf> {
        contents
            .iter()
            .filter(|(name, (_, chain))| chain.last() == Some(&role) && *name != NESTED)
            .map(|(name, _)| src.join(name))
            .collect()
    };
    let mut ed = RepositoryEditor::new(&root_path)
        .await
        .unwrap_or_else(|e| panic!("tough's editor refuses the root: {e}"));
    ed.targets_version(ONE).unwrap();
    ed.targets_expires(exp()).unwrap();
    ed.snapshot_version(ONE).snapshot_expires(exp());
    ed.timestamp_version(ONE).timestamp_expires(exp());
    ed.add_target_paths(files_of("targets")).await.unwrap();
    ed.add_target(NESTED, Target::from_path(src.join(NESTED)).await.unwrap())
        .unwrap();
    ed.delegate_role(
        "vendor",
        &[ToughKeys::source(&keys.vendor_rsa)],
        PathSet::Paths(vec![PathPattern::new("vendor-*").unwrap()]),
        true,
        ONE,
        exp(),
        ONE,
    )
    .await
    .unwrap();
    for (role, prefixes) in [("hashed-lo", "01234567"), ("hashed-hi", "89abcdef")] {
        let prefixes = prefixes
            .chars()
            .map(|c| PathHashPrefix::new(c.to_string()).unwrap())
            .collect();
        ed.delegate_role(
            role,
            &[ToughKeys::source(&keys.hashed)],
            PathSet::PathHashPrefixes(prefixes),
            true,
            ONE,
            exp(),
            ONE,
        )
        .await
        .unwrap();
    }
    ed.sign_targets_editor(&all).await.unwrap();
    for role in ["vendor", "hashed-lo", "hashed-hi"] {
        // The editor for a delegated role starts without version and expiry.
        ed.change_delegated_targets(role).unwrap();
        ed.targets_version(ONE).unwrap();
        ed.targets_expires(exp()).unwrap();
        ed.add_target_paths(files_of(role)).await.unwrap();
        ed.sign_targets_editor(&all).await.unwrap();
    }
    let signed = ed
        .sign(&all)
        .await
        .unwrap_or_else(|e| panic!("tough cannot sign the repository: {e}"));
    signed.write(&metadata).await.unwrap();
    // Places every target whose *file name* is a target name; the nested one needs its name.
    signed
        .copy_targets(&src, &targets_dir, PathExists::Fail)
        .await
        .unwrap();
    signed
        .copy_target(
            &src.join(NESTED),
            &targets_dir,
            PathExists::Fail,
            Some(&TargetName::new(NESTED).unwrap()),
        )
        .await
        .unwrap();

    let expected = contents
        .into_iter()
        .map(|(name, (content, chain))| {
            let want = Expected {
                length: content.len() as u64,
                sha256: sha256_hex(&content),
                sha512: None,
                chain: chain.into_iter().map(String::from).collect(),
                content,
            };
            (name, want)
        })
        .collect();
    let root = std::fs::read(&root_path).unwrap();
    ToughTree {
        tree,
        root,
        expected,
    }
}

fn write_tough(dir: &Path, consistent: bool) -> ToughTree {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(write_tough_tree(dir, consistent))
}

/// The metadata file names tough wrote.
fn metadata_names(tree: &Path) -> BTreeSet<String> {
    std::fs::read_dir(tree.join("metadata"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn tough_tree(consistent: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let t = write_tough(&tmp.path().join("tough"), consistent);
    let v = |role: &str| {
        if consistent {
            format!("1.{role}.json")
        } else {
            format!("{role}.json")
        }
    };
    let want_names: BTreeSet<String> = [
        "1.root.json".to_string(),
        "timestamp.json".into(),
        v("snapshot"),
        v("targets"),
        v("vendor"),
        v("hashed-lo"),
        v("hashed-hi"),
    ]
    .into();
    assert_eq!(metadata_names(&t.tree), want_names, "what tough wrote");

    // Where tough put the nested target, and where the spec wants it.
    let nested_sha = t.expected[NESTED].sha256.clone();
    let tough_nested = if consistent {
        t.tree.join(format!("targets/{nested_sha}.{NESTED}"))
    } else {
        t.tree.join(format!("targets/{NESTED}"))
    };
    assert!(
        tough_nested.is_file(),
        "tough wrote {}",
        tough_nested.display()
    );
    let spec_nested = spec_target_file(&t.tree, NESTED, &nested_sha, consistent);
    assert_eq!(
        spec_nested.is_file(),
        !consistent,
        "{}",
        spec_nested.display()
    );
    // Every other name has no `/`: there tough's layout is the spec's.
    for (name, want) in &t.expected {
        if name != NESTED {
            let file = spec_target_file(&t.tree, name, &want.sha256, consistent);
            assert!(file.is_file(), "{name}: {} missing", file.display());
        }
    }

    let server = StaticServer::serve(&t.tree).unwrap();
    for (label, via) in [("file", Via::File), ("http", Via::Http(&server))] {
        let work = tmp.path().join(format!("client-{label}"));
        let mut updater = petrel_client(&t.tree, &via, &t.root, &work);
        updater
            .refresh()
            .unwrap_or_else(|e| panic!("{label}: Petrel cannot refresh from a tough tree: {e}"));
        assert_eq!(updater.trusted().unwrap().consistent_snapshot(), consistent);
        let dl = work.join("downloads");
        let mut infos = BTreeMap::new();
        for (name, want) in &t.expected {
            if name == NESTED && consistent {
                continue;
            }
            infos.insert(name.clone(), fetch_and_check(&mut updater, name, want, &dl));
        }
        if consistent {
            // The metadata is right; the file is not where the spec says it is.
            let want = &t.expected[NESTED];
            let info = updater.get_target_info(NESTED).unwrap().expect("listed");
            assert_eq!(info.hashes()["sha256"], want.sha256);
            assert_eq!(info.length(), want.length);
            let err = updater
                .download_target(&info, &dl.join("nested"))
                .expect_err("tough's nested consistent-snapshot name is not the spec's");
            let spec_url_tail = format!("targets/docs/guide/{nested_sha}.intro.txt");
            match &err {
                UpdateError::TargetFetch {
                    url,
                    source: FetchError::NotFound { .. },
                    ..
                } if url.ends_with(&spec_url_tail) => {}
                _ => panic!("{label}: unexpected error for {NESTED}: {err}"),
            }
        }
        // A name no role lists, inside and outside the delegations' paths.
        assert!(updater
            .get_target_info("vendor-none.bin")
            .unwrap()
            .is_none());
        assert!(updater
            .get_target_info("hashed-none.txt")
            .unwrap()
            .is_none());

        // Changed bytes are refused: the RSA-signed delegated target and a top-level one.
        for name in ["vendor-app.bin", "firmware.bin"] {
            let file = spec_target_file(&t.tree, name, &t.expected[name].sha256, consistent);
            assert_tampered_copy_refused(&updater, &infos[name], &file, &work);
        }
    }
    let seen = requests(&server);
    let misses: Vec<_> = seen
        .iter()
        .filter(|(p, s)| **s != 200 && !(consistent && p.contains("intro.txt")))
        .collect();
    assert_eq!(
        misses,
        vec![(&"/metadata/2.root.json".to_string(), &404)],
        "only the next-root probe may miss: {seen:#?}"
    );
}

#[test]
fn petrel_client_reads_tough_written_tree() {
    tough_tree(true);
}

#[test]
fn petrel_client_reads_tough_written_tree_without_consistent_snapshots() {
    tough_tree(false);
}

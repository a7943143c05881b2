//! Writes the seed corpora `fuzz/corpus/<target>/` from the committed fixtures
//! (`fixtures/`) and examples (`examples/demo`). Deterministic: running it again gives the
//! same files. Run through `scripts/fuzz.sh --seeds`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use petrel_client::delta::{self, chunked};
use petrel_client::manifest::{
    assign_bin_for, Assignment, AssignmentBin, CampaignManifest, Capabilities, GroupManifest,
    Manifest,
};
use petrel_client::report::{DeviceKey, Report, ReportFields, ReportResult};
use petrel_fuzz::{delta_base, fixture_key_pem, now};
use serde_json::Value;

const MAX_SEED: usize = 64 * 1024;

struct Corpus {
    dir: PathBuf,
    seen: BTreeSet<(String, Vec<u8>)>,
    written: usize,
    bytes: usize,
}

impl Corpus {
    fn add(&mut self, target: &str, mode: Option<u8>, body: &[u8]) {
        let mut data = Vec::with_capacity(body.len() + 1);
        data.extend(mode);
        data.extend_from_slice(body);
        if data.len() > MAX_SEED || !self.seen.insert((target.to_string(), data.clone())) {
            return;
        }
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let name = hex::encode(&ring::digest::digest(&ring::digest::SHA256, &data).as_ref()[..10]);
        std::fs::write(dir.join(format!("seed-{name}")), &data).unwrap();
        self.written += 1;
        self.bytes += data.len();
    }
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The role a metadata file name is about: `3.acme.json` → `acme`.
fn role_of(name: &str) -> String {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    match stem.split_once('.') {
        Some((v, rest)) if v.bytes().all(|b| b.is_ascii_digit()) => rest.to_string(),
        _ => stem.to_string(),
    }
}

const TARGET_ROLES: [&str; 12] = [
    "targets",
    "acme",
    "globex",
    "assign",
    "assign-bin-0",
    "assign-bin-1",
    "assign-bin-2",
    "assign-bin-3",
    "assign-bin-4",
    "assign-bin-5",
    "assign-bin-6",
    "assign-bin-7",
];

fn metadata(c: &mut Corpus, repo: &Path) {
    let mut all = Vec::new();
    files(&repo.join("fixtures"), &mut all);
    for p in all {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".json") || name == "fixture.json" {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            c.add("canonical_json", None, &bytes);
            continue;
        };
        c.add("canonical_json", None, &bytes);
        let ty = v["signed"]["_type"].as_str().unwrap_or("").to_string();
        match ty.as_str() {
            "root" => {
                for m in [0, 1, 3] {
                    c.add("tuf_root", Some(m), &bytes);
                }
            }
            "timestamp" => {
                for m in [0, 1, 2, 3] {
                    c.add("tuf_timestamp", Some(m), &bytes);
                }
            }
            "snapshot" => {
                for m in [0, 1, 2, 3, 5] {
                    c.add("tuf_snapshot", Some(m), &bytes);
                }
            }
            "targets" => {
                let role = role_of(&name);
                if let Some(i) = TARGET_ROLES.iter().position(|r| *r == role) {
                    for bit in [0u8, 1] {
                        c.add("tuf_targets", Some(((i as u8) << 1) | bit), &bytes);
                    }
                }
            }
            _ => {
                // Malformed fixtures: every role parser sees them.
                c.add("tuf_root", Some(0), &bytes);
                c.add("tuf_timestamp", Some(0), &bytes);
                c.add("tuf_snapshot", Some(0), &bytes);
                c.add("tuf_targets", Some(0), &bytes);
            }
        }
    }
    for s in [
        "{}",
        "[]",
        "null",
        "0",
        "-1",
        "18446744073709551615",
        "-9223372036854775808",
        "1.5",
        "1e3",
        "\"a\\\"b\\\\c\"",
        "\"\\u0000\\n\\u001f\"",
        "{\"b\":1,\"a\":[true,false,null]}",
        "{\"\\u00e9\":1,\"z\":2,\"\\ud83d\\ude00\":3}",
    ] {
        c.add("canonical_json", None, s.as_bytes());
    }
}

fn manifests(c: &mut Corpus, repo: &Path) {
    let mut all = Vec::new();
    files(&repo.join("examples/demo"), &mut all);
    for p in all {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".toml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        if name.starts_with("group-") {
            c.add("manifest", Some(4), text.as_bytes());
            let g = GroupManifest::from_toml(&text).unwrap();
            c.add("manifest", Some(0), &g.to_canonical_json().unwrap());
        } else if name.starts_with("campaign-") {
            c.add("manifest", Some(5), text.as_bytes());
            let m = CampaignManifest::from_toml(&text).unwrap();
            c.add("manifest", Some(1), &m.to_canonical_json().unwrap());
        }
    }
    let mut bin = AssignmentBin::new(
        assign_bin_for("device-1", 1),
        "00112233445566778899aabbccddeeff",
    );
    for n in 0..64 {
        let dev = format!("device-{n}");
        if bin.holds(&dev) {
            let group = if n % 2 == 0 { "thermostats" } else { "kiosks" };
            bin.insert(&dev, Assignment::to_group(group)).unwrap();
        }
    }
    if let Ok(json) = bin.to_canonical_json() {
        c.add("manifest", Some(2), &json);
    }
    for toml in [
        "schema_version = 1\n",
        "schema_version = 1\nkinds = [\"campaign\"]\ngroups = [\"thermostats\"]\napps = [\"acme.thermostat\"]\n",
        "schema_version = 1\nconsent_policies = [\"required\", \"none\"]\nmethods = [\"normal\", \"security\"]\nexplicit_devices_only = true\nexpires = \"2031-01-01T00:00:00Z\"\n",
        "schema_version = 1\ndevice_types = [\"thermostat\"]\nvendors = [\"acme\"]\nregions = [\"eu\"]\nchannels = [\"stable\"]\nlicences = [\"pro\"]\ndevice_classes = [\"a\"]\n",
    ] {
        c.add("manifest", Some(7), toml.as_bytes());
        if let Ok(caps) = Capabilities::from_toml(toml) {
            c.add("manifest", Some(3), &serde_json::to_vec(&caps.to_value()).unwrap());
        }
    }
}

fn deltas(c: &mut Corpus) {
    let base = delta_base();
    let mut result = base.clone();
    let edit = b"firmware block 00002: calibration=NEW\n";
    result[100..100 + edit.len()].copy_from_slice(edit);
    result.extend_from_slice(b"appended section\n");
    result.rotate_left(4096);
    let patch = delta::make(&base, &result).unwrap();
    let chunks = chunked::make_with(&base, &result, 4096, |n, f| (0..n).map(f).collect()).unwrap();
    // Caps index 5 is 64 KiB (see the target).
    c.add("delta_apply", Some(5 << 1), &patch);
    c.add("delta_apply", Some((5 << 1) | 1), &chunks);
    c.add("delta_apply", Some((5 << 1) | 1 | 16), &chunks);
    c.add("delta_apply", Some(3 << 1), &patch);
    let bsd = delta::bsdiff::make(&base, &result, false).unwrap().unwrap();
    c.add("delta_apply", Some((5 << 1) | 1 | 32), &bsd);
    let small = delta::make(&base, b"small").unwrap();
    c.add("delta_apply", Some(2 << 1), &small);
    let empty = chunked::make_with(&base, b"", 1024, |n, f| (0..n).map(f).collect()).unwrap();
    c.add("delta_apply", Some((2 << 1) | 1), &empty);
    c.add(
        "delta_apply",
        Some(0xE0),
        b"firmware block 00000: calibration=ok\nnew line\n",
    );
}

/// The tree containers of the hostile-delta fixtures (`fixtures/deltas/*/*.ptree`): well
/// formed ones and ones whose manifest breaks a rule.
fn trees(c: &mut Corpus, repo: &Path) {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo.join("fixtures/deltas"))
        .unwrap()
        .flatten()
        .flat_map(|d| ["tree.ptree", "base.ptree"].map(|n| d.path().join(n)))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    for p in found {
        c.add("tree_container", None, &std::fs::read(p).unwrap());
    }
}

/// Snapshot tree nodes and heads as the fixtures serve them (`fixtures/**/snapshot-tree/`),
/// and inputs that once broke the round trip of a node.
fn tree_nodes(c: &mut Corpus, repo: &Path) {
    let mut all = Vec::new();
    files(&repo.join("fixtures"), &mut all);
    for p in all {
        if p.parent().and_then(|d| d.file_name()) == Some("snapshot-tree".as_ref()) {
            c.add("tuf_tree_node", None, &std::fs::read(&p).unwrap());
        }
    }
    // The nodes of a tree of forty roles, as the repo tool writes them: branches and leaves.
    let roles: serde_json::Map<String, Value> = (0..40)
        .map(|i| {
            let name = format!("assign-{i}");
            let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, name.as_bytes()));
            let meta = serde_json::json!({
                "version": 1 + i % 3,
                "length": 4000 + 97 * i,
                "hashes": { "sha256": hash },
            });
            (name, meta)
        })
        .collect();
    let built = petrel_client::tuf::schema::tree::build(
        &serde_json::from_value(Value::Object(roles)).unwrap(),
    );
    for node in built.nodes.values() {
        c.add("tuf_tree_node", None, node);
    }
    // An integer beyond u64 in an unknown field is read as a float: the parse must be
    // correctly rounded for the node to round-trip.
    c.add(
        "tuf_tree_node",
        None,
        br#"{"prefix":"010","roles":{"index-05":{"version":1,"lYength":1033302120002245146054804534206,"hashes":{"":"f54024649e2fdf8b"}}}}"#,
    );
}

fn reports(c: &mut Corpus) {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("device.pem");
    std::fs::write(&key_path, fixture_key_pem("device")).unwrap();
    let key = DeviceKey::load_or_create(&key_path).unwrap();
    for (i, (result, reason)) in [
        (ReportResult::Succeeded, ""),
        (ReportResult::Failed, "health check failed: exit 3"),
    ]
    .into_iter()
    .enumerate()
    {
        let report = Report::new(ReportFields {
            device_id: "device-1".into(),
            campaign: "thermostat-1.1".into(),
            revision: 1,
            wave: if i == 0 { None } else { Some(2) },
            result,
            reason: reason.into(),
            inventory_after: Default::default(),
            consent_log: Vec::new(),
            time: now(),
            rolled_back: i == 1,
        });
        let body = report.sign(&key).to_vec();
        c.add("server_reports", Some(0), &body);
        c.add(
            "server_reports",
            Some(1),
            &serde_json::to_vec(&report).unwrap(),
        );
    }
    for q in [
        "campaign=thermostat-1.1",
        "x=1&campaign=player%2D2.1",
        "campaign=a+b%20c",
        "campaign=%zz",
    ] {
        c.add("server_reports", Some(2), q.as_bytes());
    }
}

fn paths(c: &mut Corpus, repo: &Path) {
    let tree = repo.join("fixtures/good/repo");
    let mut all = Vec::new();
    files(&tree, &mut all);
    for p in all {
        let rel = p.strip_prefix(&tree).unwrap().to_string_lossy().to_string();
        c.add("server_path", None, format!("/{rel}").as_bytes());
    }
    for raw in [
        "/metadata/../x",
        "/metadata/%2e%2e/x",
        "/metadata%2froot.json",
        "/targets/a%20b.bin",
        "/metadata/root.json?x=1",
        "/targets/secret.txt",
        "/targets/etc/passwd",
        "/targets/keys/root.pem",
        "/targets/root.json",
        "/metadata/ts.json",
        "/metadata/staged.json",
        "/metadata/up/secret.txt",
        "/metadata/.timestamp.json.tmp",
        "/keys/root.pem",
        "/metadata/%E2%82%AC.json",
    ] {
        c.add("server_path", None, raw.as_bytes());
    }
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("fuzz/corpus"));
    let mut c = Corpus {
        dir,
        seen: BTreeSet::new(),
        written: 0,
        bytes: 0,
    };
    metadata(&mut c, &repo);
    manifests(&mut c, &repo);
    deltas(&mut c);
    trees(&mut c, &repo);
    tree_nodes(&mut c, &repo);
    reports(&mut c);
    paths(&mut c, &repo);
    println!(
        "{} seeds, {} bytes, in {}",
        c.written,
        c.bytes,
        c.dir.display()
    );
}

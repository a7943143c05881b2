//! System images on a simulated board: A/B slots take a new image across a reboot, fall back when its health check fails or it does not boot, refuse what does not fit, and survive a power cut at any point of the slot write, the switch and the confirmation.
//!
//! The board: two slot files (`slots/a.img`, `slots/b.img`), the `file` bootloader
//! (`boot.json`, powered on with `petrel slots boot`), a reboot command that only leaves a
//! marker, and a health check that passes when the booted slot's image says `kind=good`.
//! An image whose header says `kind=noboot` "panics" at boot: the harness powers the board
//! on again, as a watchdog would, until the bootloader falls back. A reboot restarts the
//! agent: `petrel recover`, then `petrel update`. Every wait is bounded.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use petrel_client::manifest::sha256_hex;
use petrel_tests::scenario::{Device, Scenario};
use petrel_tests::{describe, petrel_bin, run_with_timeout, Tmpfs};
use serde_json::Value;

const OS: &str = "acme.os";
const DEVICE: &str = "board-1";
const BOARD: &str = "type = \"board\"\nvendor = \"acme\"\nregion = \"eu-west\"\nchannel = \"stable\"\nutc_offset_minutes = 0\nlocale = \"en\"";
/// The size of each slot.
const SLOT_SIZE: usize = 8 * 1024 * 1024;
/// The size of the images (a few fault points per MiB written and read back).
const IMAGE_SIZE: usize = 5 * 1024 * 1024 + 12345;
/// The bound of one `petrel` command.
const LIMIT: Duration = Duration::from_secs(60);
/// Boot tries of a new slot.
const ATTEMPTS: u32 = 2;

/// A simulated root file system image: a header naming its version and how it behaves
/// (`good`, `unhealthy`, `noboot`), then deterministic bytes.
fn image(version: &str, kind: &str, len: usize) -> Vec<u8> {
    let mut v = format!("PETREL-SIM-IMAGE version={version} kind={kind}\n").into_bytes();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ sha256_hex(version.as_bytes()).len() as u64;
    for b in version.bytes() {
        x = x.wrapping_mul(31).wrapping_add(u64::from(b));
    }
    while v.len() < len {
        // Compressible but not trivial: runs of a pseudo-random byte.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = (x % 16) as usize + 1;
        v.extend(std::iter::repeat_n((x >> 32) as u8, run));
    }
    v.truncate(len);
    v
}

fn target(version: &str, compressed: bool) -> String {
    format!(
        "apps/{OS}/{version}/rootfs.img{}",
        if compressed { ".zst" } else { "" }
    )
}

fn campaign(id: &str, group_revision: u64) -> String {
    format!(
        r#"kind = "campaign"
schema_version = 1
id = "{id}"
revision = 1
state = "active"

[notice.en]
title = "System update"
body = "A new system image."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = {{ id = "boards", revision = {group_revision} }}
"#
    )
}

fn group(revision: u64, version: &str, compressed: bool) -> String {
    format!(
        "kind = \"group\"\nschema_version = 1\nid = \"boards\"\nrevision = {revision}\n\n[apps.{OS:?}]\nversion = {version:?}\ntarget = {:?}\ninstall_type = \"slot\"\n",
        target(version, compressed)
    )
}

/// Publishes group `boards` at `revision` with the OS at `version` (its image `bytes`,
/// zstd-compressed if `compressed`) and campaign `id` delivering it.
fn publish(
    s: &mut Scenario,
    id: &str,
    revision: u64,
    version: &str,
    bytes: &[u8],
    compressed: bool,
) {
    let t = target(version, compressed);
    let signed = if compressed {
        zstd::encode_all(bytes, 3).expect("zstd")
    } else {
        bytes.to_vec()
    };
    s.repo().add("targets", &t, &signed);
    s.group(&group(revision, version, compressed));
    if revision == 1 {
        s.assign("boards", &[DEVICE], false, &[]);
    }
    s.create_campaign(&campaign(id, revision));
    s.publish();
}

/// The simulated board.
struct Board {
    device: Device,
    factory: Vec<u8>,
}

fn petrel(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(petrel_bin());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("PETREL_CONFIG")
        .env_remove("PETREL_FAULT_LOG")
        .env_remove("PETREL_FAULT_STOP_AT");
    cmd
}

impl Board {
    /// A board running the factory image 1.0 in slot A, slot B empty.
    fn new(s: &Scenario) -> Board {
        Board::with(s, "")
    }

    /// [`Board::new`] with more `[slots]` keys.
    fn with(s: &Scenario, slots_keys: &str) -> Board {
        let device = s.device(DEVICE, BOARD);
        let dir = device.dir().to_path_buf();
        std::fs::create_dir_all(dir.join("slots")).unwrap();
        let factory = image("1.0", "good", IMAGE_SIZE);
        let mut a = factory.clone();
        a.resize(SLOT_SIZE, 0);
        std::fs::write(dir.join("slots/a.img"), &a).unwrap();
        std::fs::write(dir.join("slots/b.img"), vec![0u8; SLOT_SIZE]).unwrap();
        std::fs::write(dir.join("factory-version"), "1.0\n").unwrap();
        let health = dir.join("health.sh");
        std::fs::write(
            &health,
            format!(
                "#!/bin/sh\nb=$(sed -n 's/.*\"booted\": *\"\\([AB]\\)\".*/\\1/p' '{d}/boot.json')\n\
                 f='{d}/slots/'$(echo \"$b\" | tr AB ab).img\n\
                 head -c 64 \"$f\" | grep -q 'kind=good' || {{ echo \"self-test failed on slot $b\" >&2; exit 1; }}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let config = dir.join("device.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            format!(
                "{text}\n[slots]\napp = {OS:?}\na = \"slots/a.img\"\nb = \"slots/b.img\"\nbootloader = \"file\"\nattempts = {ATTEMPTS}\nversion_file = \"factory-version\"\n{slots_keys}\n\n[slots.file]\npath = \"boot.json\"\n\n[reboot]\ncommand = [\"sh\", \"-c\", \"touch '{}'\"]\n\n[health]\ncommand = [\"sh\", {:?}]\ntimeout_secs = 10\n",
                dir.join("reboot-requested").display(),
                health.display().to_string()
            ),
        )
        .unwrap();
        let b = Board { device, factory };
        b.ok(&["slots", "boot", "--init"]);
        b
    }

    fn dir(&self) -> &Path {
        self.device.dir()
    }

    fn config(&self) -> PathBuf {
        self.dir().join("device.toml")
    }

    fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(&mut petrel(&self.config(), args), LIMIT)
            .unwrap_or_else(|e| panic!("petrel {args:?}: {e}"))
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(out.status.success(), "petrel {args:?}: {}", describe(&out));
        out
    }

    /// `petrel update --json`: its exit status and JSON.
    fn update(&self) -> (i32, Value) {
        let out = self.run(&["update", "--json"]);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "petrel update --json printed no JSON ({e}): {}",
                describe(&out)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    /// Whether the agent asked for a reboot since the last call.
    fn take_reboot_request(&self) -> bool {
        std::fs::remove_file(self.dir().join("reboot-requested")).is_ok()
    }

    /// Powers the board on: the bootloader picks a slot; an image that does not boot
    /// makes the watchdog power it on again. Returns the slot that came up.
    fn power_on(&self) -> String {
        for _ in 0..10 {
            let out = self.ok(&["slots", "boot"]);
            let slot = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let head = self.slot_bytes(&slot, 64);
            if String::from_utf8_lossy(&head).contains("kind=noboot") {
                continue;
            }
            return slot;
        }
        panic!("the board did not come up in 10 power-ons");
    }

    /// Reboots and lets the agent start: `petrel recover` at boot, then one cycle.
    fn reboot(&self) -> (String, i32, Value) {
        let slot = self.power_on();
        self.ok(&["recover"]);
        let (code, v) = self.update();
        (slot, code, v)
    }

    fn slot_bytes(&self, slot: &str, n: usize) -> Vec<u8> {
        let p = self
            .dir()
            .join(format!("slots/{}.img", slot.to_ascii_lowercase()));
        let mut b = std::fs::read(p).unwrap();
        b.truncate(n);
        b
    }

    fn slots_status(&self) -> Value {
        serde_json::from_slice(&self.ok(&["slots", "status", "--json"]).stdout).unwrap()
    }

    fn boot_state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir().join("boot.json")).unwrap()).unwrap()
    }

    /// The inventory's version of the OS, as `petrel status --json` reads it.
    fn os_version(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.ok(&["status", "--json"]).stdout).unwrap();
        v["inventory"][OS]["version"].as_str().map(str::to_string)
    }

    /// The queued reports (result, reason, rolled_back), in order.
    fn reports(&self) -> Vec<(String, String, bool)> {
        reports_in(self.dir())
    }

    /// The final reports (succeeded, failed).
    fn finals(&self) -> Vec<(String, String, bool)> {
        finals_in(self.dir())
    }

    /// SHA-256 of the first `n` bytes of `slot`.
    fn slot_sha(&self, slot: &str, n: usize) -> String {
        sha256_hex(&self.slot_bytes(slot, n))
    }
}

/// The queued reports (result, reason, rolled_back), in order.
fn reports_in(device_dir: &Path) -> Vec<(String, String, bool)> {
    let dir = device_dir.join("state/outbox");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| {
            let v: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            let r = find_report(&v).unwrap_or_else(|| panic!("{}: no report", f.display()));
            (
                r["result"].as_str().unwrap_or("").to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
                r["rolled_back"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// The final reports (succeeded, failed).
fn finals_in(device_dir: &Path) -> Vec<(String, String, bool)> {
    reports_in(device_dir)
        .into_iter()
        .filter(|(r, _, _)| r == "succeeded" || r == "failed")
        .collect()
}

fn find_report(v: &Value) -> Option<&Value> {
    if v.get("result").is_some() && v.get("campaign").is_some() {
        return Some(v);
    }
    match v {
        Value::Object(m) => m.values().find_map(find_report),
        Value::String(_) => None,
        _ => None,
    }
}

fn results(v: &Value) -> Vec<String> {
    v["installs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["result"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_new_image_boots_after_the_reboot_is_marked_good_and_only_then_succeeds() {
    let mut s = Scenario::new();
    let new = image("1.1", "good", IMAGE_SIZE);
    publish(&mut s, "os-1.1", 1, "1.1", &new, true);
    let board = Board::new(&s);
    assert_eq!(
        board.os_version().as_deref(),
        Some("1.0"),
        "the factory image, by its version file"
    );

    let (code, v) = board.update();
    assert_eq!(
        (code, results(&v)),
        (0, vec!["pending_reboot".to_string()]),
        "{v:#}"
    );
    assert!(board.take_reboot_request(), "the agent asked for a reboot");
    // Slot B holds the decompressed image, checked; the bootloader tries B next.
    assert_eq!(board.slot_sha("B", new.len()), sha256_hex(&new));
    let st = board.slots_status();
    assert_eq!(st["slots"][1]["holds"]["version"], "1.1", "{st:#}");
    assert_eq!(st["slots"][1]["holds"]["image_sha256"], sha256_hex(&new));
    assert_eq!(board.boot_state()["order"], serde_json::json!(["B", "A"]));
    assert_eq!(
        board.slot_bytes("A", IMAGE_SIZE),
        board.factory,
        "slot A untouched"
    );
    assert_eq!(
        board
            .reports()
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        ["staged", "installed_pending_reboot"],
        "not succeeded before the reboot"
    );
    // Nothing more happens before the reboot: a second run waits (and asks again).
    let (code, v) = board.update();
    assert_eq!((code, results(&v)), (0, vec![]), "{v:#}");
    assert!(board.take_reboot_request());

    let (slot, code, v) = board.reboot();
    assert_eq!((slot.as_str(), code), ("B", 0), "{v:#}");
    let finals = board.finals();
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].0, "succeeded", "{finals:?}");
    assert!(finals[0].1.contains("after the reboot"), "{finals:?}");
    assert!(!board.take_reboot_request());
    assert_eq!(board.os_version().as_deref(), Some("1.1"));
    assert_eq!(
        board.boot_state()["left"]["B"],
        ATTEMPTS,
        "marked good: its tries refilled"
    );
    assert!(!board.dir().join("state/apply.journal.json").exists());

    // It keeps booting B: every start marks the running slot good again.
    for _ in 0..(ATTEMPTS + 2) {
        let (slot, code, _) = board.reboot();
        assert_eq!((slot.as_str(), code), ("B", 0));
    }
    assert_eq!(board.finals().len(), 1, "one final report");
}

#[test]
fn a_failed_health_check_marks_the_new_slot_bad_and_reboots_into_the_old_one() {
    let mut s = Scenario::new();
    let new = image("1.1", "unhealthy", IMAGE_SIZE);
    publish(&mut s, "os-1.1", 1, "1.1", &new, false);
    let board = Board::new(&s);
    let (code, v) = board.update();
    assert_eq!(
        (code, results(&v)),
        (0, vec!["pending_reboot".to_string()]),
        "{v:#}"
    );
    assert!(board.take_reboot_request());

    // B comes up, fails its health check: marked bad, and the agent reboots into A.
    let (slot, code, v) = board.reboot();
    assert_eq!(slot, "B");
    assert!(
        board.take_reboot_request(),
        "a reboot into A was requested: {v:#}"
    );
    assert!(
        board.finals().is_empty(),
        "no final report before the previous system runs"
    );
    assert_eq!(board.boot_state()["left"]["B"], 0, "B marked bad");
    assert_eq!(code, 0, "{v:#}");

    let (slot, code, v) = board.reboot();
    assert_eq!(slot, "A");
    let finals = board.finals();
    assert_eq!(finals.len(), 1, "{finals:?}");
    let (result, reason, rolled_back) = &finals[0];
    assert_eq!(result, "failed");
    assert!(*rolled_back, "{finals:?}");
    assert!(reason.contains("health check failed"), "{reason}");
    assert_eq!(
        code, 0,
        "the failure was reported by the start that found it: {v:#}"
    );
    assert_eq!(board.os_version().as_deref(), Some("1.0"));
    // The revision is not tried again.
    let (code, v) = board.update();
    assert_eq!((code, results(&v)), (0, vec![]), "{v:#}");
    assert!(!board.take_reboot_request());
    assert_eq!(board.slot_bytes("A", IMAGE_SIZE), board.factory);
}

#[test]
fn an_image_that_does_not_boot_is_reported_as_the_bootloaders_fallback() {
    let mut s = Scenario::new();
    let new = image("1.1", "noboot", IMAGE_SIZE);
    publish(&mut s, "os-1.1", 1, "1.1", &new, false);
    let board = Board::new(&s);
    let (code, _) = board.update();
    assert_eq!(code, 0);
    assert!(board.take_reboot_request());
    // B panics ATTEMPTS times; the bootloader falls back to A.
    let (slot, code, v) = board.reboot();
    assert_eq!(slot, "A");
    assert_eq!(code, 0, "{v:#}");
    let finals = board.finals();
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].0, "failed");
    assert!(
        finals[0]
            .1
            .contains("boot of slot B failed, fell back to A"),
        "{finals:?}"
    );
    assert_eq!(board.os_version().as_deref(), Some("1.0"));
    assert_eq!(board.boot_state()["left"]["B"], 0);
    assert!(!board.take_reboot_request());

    // The next revision (a good image) installs and succeeds.
    let mut s = s;
    let good = image("1.2", "good", IMAGE_SIZE);
    publish(&mut s, "os-1.2", 2, "1.2", &good, false);
    let (code, v) = board.update();
    assert_eq!(
        (code, results(&v)),
        (0, vec!["pending_reboot".to_string()]),
        "{v:#}"
    );
    assert!(board.take_reboot_request());
    let (slot, code, _) = board.reboot();
    assert_eq!((slot.as_str(), code), ("B", 0));
    assert_eq!(board.os_version().as_deref(), Some("1.2"));
}

#[test]
fn an_image_can_stream_straight_into_the_inactive_slot_without_a_staging_copy() {
    let mut s = Scenario::new();
    let new = image("1.1", "good", IMAGE_SIZE);
    publish(&mut s, "os-1.1", 1, "1.1", &new, true);
    let board = Board::with(&s, "staging = \"slot\"");
    let (code, v) = board.update();
    assert_eq!(
        (code, results(&v)),
        (0, vec!["pending_reboot".to_string()]),
        "{v:#}"
    );
    // No copy of the image in staging: it went into slot B, decompressed and verified.
    let staging = board.dir().join("state/staging");
    let copies: Vec<_> = walk(&staging)
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 1024 * 1024))
        .collect();
    assert!(copies.is_empty(), "staging holds {copies:?}");
    assert_eq!(board.slot_sha("B", new.len()), sha256_hex(&new));
    assert!(board.take_reboot_request());
    let (slot, code, _) = board.reboot();
    assert_eq!((slot.as_str(), code), ("B", 0));
    assert_eq!(board.os_version().as_deref(), Some("1.1"));
    assert_eq!(board.finals()[0].0, "succeeded");
}

#[test]
fn an_image_staging_has_no_room_for_goes_straight_into_the_inactive_slot() {
    let mut s = Scenario::new();
    let new = image("1.1", "good", IMAGE_SIZE);
    publish(&mut s, "os-1.1", 1, "1.1", &new, false);
    let board = Board::new(&s);
    let staging = board.dir().join("state/staging");
    let Some(_fs) = Tmpfs::mount(&staging, "2m") else {
        return;
    };
    // staging = "auto" (the default): 2 MiB of staging, a 5 MiB image.
    let (code, v) = board.update();
    assert_eq!(
        (code, results(&v)),
        (0, vec!["pending_reboot".to_string()]),
        "{v:#}"
    );
    assert_eq!(board.slot_sha("B", new.len()), sha256_hex(&new));
    assert!(board.take_reboot_request());
    let (slot, code, _) = board.reboot();
    assert_eq!((slot.as_str(), code), ("B", 0));
    assert_eq!(board.os_version().as_deref(), Some("1.1"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_group_without_the_system_image_does_not_remove_it() {
    let mut s = Scenario::new();
    s.group("kind = \"group\"\nschema_version = 1\nid = \"boards\"\nrevision = 1\n");
    s.assign("boards", &[DEVICE], false, &[]);
    s.create_campaign(&campaign("empty", 1));
    s.publish();
    let board = Board::new(&s);
    let before = board.boot_state();
    let (code, v) = board.update();
    assert_eq!(
        (code, results(&v)),
        (1, vec!["failed".to_string()]),
        "{v:#}"
    );
    let reason = v["installs"][0]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("cannot be removed"), "{reason}");
    assert_eq!(board.boot_state(), before);
    assert_eq!(board.os_version().as_deref(), Some("1.0"));
}

#[test]
fn an_image_larger_than_the_slot_is_refused_before_anything_is_written() {
    let mut s = Scenario::new();
    let new = image("1.1", "good", SLOT_SIZE + 1);
    publish(&mut s, "os-1.1", 1, "1.1", &new, true);
    let board = Board::new(&s);
    let before = board.boot_state();
    let (code, v) = board.update();
    assert_eq!(
        (code, results(&v)),
        (1, vec!["failed".to_string()]),
        "{v:#}"
    );
    let reason = v["installs"][0]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("slot B") && reason.contains("nothing written"),
        "{reason}"
    );
    assert_eq!(
        board.slot_bytes("B", SLOT_SIZE),
        vec![0u8; SLOT_SIZE],
        "slot B untouched"
    );
    assert_eq!(board.boot_state(), before, "the bootloader untouched");
    assert!(!board.take_reboot_request());
}

/// 1.2: 1.1 with a new header, a few changed blocks and a moved region.
fn next_image(old: &[u8]) -> Vec<u8> {
    let mut new = old.to_vec();
    let head = b"PETREL-SIM-IMAGE version=1.2 kind=good\n";
    new[..head.len()].copy_from_slice(head);
    for i in 0..2000 {
        new[1_500_000 + i * 7] ^= 0x5a;
    }
    let moved = old[100_000..400_000].to_vec();
    new[3_000_000..3_300_000].copy_from_slice(&moved);
    new
}

/// A board running 1.1 in slot B (installed by the agent, so its exact bytes are recorded),
/// and 1.2 published with a chunked delta from 1.1.
fn board_on_1_1(s: &mut Scenario) -> (Board, Vec<u8>) {
    let old = image("1.1", "good", IMAGE_SIZE);
    publish(s, "os-1.1", 1, "1.1", &old, false);
    let board = Board::new(s);
    board.update();
    assert!(board.take_reboot_request());
    let (slot, code, _) = board.reboot();
    assert_eq!((slot.as_str(), code), ("B", 0));
    let new = next_image(&old);
    s.repo().add("targets", &target("1.2", false), &new);
    let out = petrel_repo::delta::make_deltas(
        s.repo().workspace(),
        &petrel_repo::delta::DeltaOptions {
            from: vec![target("1.1", false)],
            to: target("1.2", false),
            role: None,
            format: petrel_repo::delta::DeltaFormat::Chunked,
        },
    )
    .expect("petrel-repo delta");
    assert!(
        matches!(
            out.as_slice(),
            [petrel_repo::delta::DeltaOutcome::Added { .. }]
        ),
        "{out:?}"
    );
    s.group(&group(2, "1.2", false));
    s.create_campaign(&campaign("os-1.2", 2));
    s.publish();
    (board, new)
}

#[test]
fn an_image_delta_is_applied_from_the_running_slot_with_its_exact_bytes() {
    let mut s = Scenario::new();
    let (board, new) = board_on_1_1(&mut s);
    let (code, v) = board.update();
    assert_eq!(
        (code, results(&v)),
        (0, vec!["pending_reboot".to_string()]),
        "{v:#}"
    );
    let staged = &v["staged"][0];
    assert_eq!(
        staged["via_delta"],
        serde_json::json!([target("1.2", false)]),
        "{v:#}"
    );
    let bytes = staged["bytes"].as_u64().unwrap();
    assert!(
        bytes * 10 < IMAGE_SIZE as u64,
        "{bytes} bytes moved for a {IMAGE_SIZE}-byte image"
    );
    assert!(board.take_reboot_request());
    let (slot, code, _) = board.reboot();
    assert_eq!((slot.as_str(), code), ("A", 0));
    assert_eq!(board.slot_sha("A", new.len()), sha256_hex(&new));
    assert_eq!(board.os_version().as_deref(), Some("1.2"));
}

#[test]
fn a_delta_against_a_modified_slot_falls_back_to_the_full_image() {
    let mut s = Scenario::new();
    let (board, new) = board_on_1_1(&mut s);
    // Someone changed the running system's bytes (a remount read-write, a bad block).
    let b = board.dir().join("slots/b.img");
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[2_000_000] ^= 1;
    std::fs::write(&b, bytes).unwrap();
    let (code, v) = board.update();
    assert_eq!(
        (code, results(&v)),
        (0, vec!["pending_reboot".to_string()]),
        "{v:#}"
    );
    let staged = &v["staged"][0];
    assert_eq!(staged["via_delta"], serde_json::json!([]), "{v:#}");
    let fallbacks = staged["delta_fallbacks"].to_string();
    assert!(
        fallbacks.contains("changed since the decision"),
        "{fallbacks}"
    );
    assert!(board.take_reboot_request());
    let (slot, code, _) = board.reboot();
    assert_eq!((slot.as_str(), code), ("A", 0));
    assert_eq!(board.slot_sha("A", new.len()), sha256_hex(&new));
}

// ---------------------------------------------------------------------------------------
// An OS updater behind the installer command (the RAUC and SWUpdate recipes' contract)
// ---------------------------------------------------------------------------------------

/// A device whose inventory and installs are commands: the installer "writes" the other
/// system and exits 3 (a reboot is needed); a reboot (the harness) changes the boot id and
/// brings up what the installer wrote, unless told the new system fails to come up.
struct OsUpdaterDevice {
    device: Device,
}

impl OsUpdaterDevice {
    fn new(s: &Scenario) -> OsUpdaterDevice {
        let device = s.device(DEVICE, BOARD);
        let d = device.dir().to_path_buf();
        std::fs::write(d.join("running"), "1.0\n").unwrap();
        std::fs::write(d.join("boot_id"), "boot-1\n").unwrap();
        let sh = |name: &str, body: &str| {
            let p = d.join(name);
            std::fs::write(&p, format!("#!/bin/sh\nset -eu\n{body}\n")).unwrap();
            p.display().to_string()
        };
        let inventory = sh(
            "inventory.sh",
            &format!(
                "printf '{{\"{OS}\": {{\"version\": \"%s\"}}}}' \"$(cat '{0}/running')\"",
                d.display()
            ),
        );
        let install = sh(
            "install.sh",
            &format!(
                "v=$(sed -n 's/.*\"to\": *\"\\([^\"]*\\)\".*/\\1/p' \"$1\" | head -n1)\n[ -n \"$v\" ] || v=$(sed -n 's/.*\"version\": *\"\\([^\"]*\\)\".*/\\1/p' \"$1\" | head -n1)\necho \"$v\" > '{0}/written'\necho installed >> '{0}/calls'\nexit 3",
                d.display()
            ),
        );
        let confirm = sh(
            "confirm.sh",
            &format!("echo confirmed >> '{}/calls'", d.display()),
        );
        let rollback = sh(
            "rollback.sh",
            &format!("echo rollback >> '{}/calls'\nexit 3", d.display()),
        );
        let config = d.join("device.toml");
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("[inventory]\ndir = \"apps\"\n", "");
        std::fs::write(
            &config,
            format!(
                "{text}\n[inventory]\ncommand = [\"sh\", {inventory:?}]\ninstall_command = [\"sh\", {install:?}]\nconfirm_command = [\"sh\", {confirm:?}]\nrollback_command = [\"sh\", {rollback:?}]\n\n[reboot]\ncommand = [\"sh\", \"-c\", \"touch '{}'\"]\nboot_id_file = \"boot_id\"\n",
                d.join("reboot-requested").display()
            ),
        )
        .unwrap();
        OsUpdaterDevice { device }
    }

    fn dir(&self) -> &Path {
        self.device.dir()
    }

    fn update(&self) -> (i32, Value) {
        let out = run_with_timeout(
            &mut petrel(&self.dir().join("device.toml"), &["update", "--json"]),
            LIMIT,
        )
        .unwrap();
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", describe(&out)));
        (out.status.code().unwrap_or(-1), v)
    }

    /// A reboot: a new boot id; the written system comes up if `comes_up`.
    fn reboot(&self, comes_up: bool) {
        assert!(
            std::fs::remove_file(self.dir().join("reboot-requested")).is_ok(),
            "the agent asked for no reboot"
        );
        let id = std::fs::read_to_string(self.dir().join("boot_id")).unwrap();
        std::fs::write(self.dir().join("boot_id"), format!("{}x\n", id.trim())).unwrap();
        if comes_up {
            let w = std::fs::read_to_string(self.dir().join("written")).unwrap();
            std::fs::write(self.dir().join("running"), w).unwrap();
        }
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir().join("calls")).unwrap_or_default()
    }

    fn finals(&self) -> Vec<(String, String)> {
        finals_in(self.dir())
            .into_iter()
            .map(|(r, why, _)| (r, why))
            .collect()
    }
}

fn publish_bundle(s: &mut Scenario) {
    let t = format!("apps/{OS}/1.1/os.bundle");
    s.repo()
        .add("targets", &t, b"an OS updater's bundle, version 1.1\n");
    s.group(&format!(
        "kind = \"group\"\nschema_version = 1\nid = \"boards\"\nrevision = 1\n\n[apps.{OS:?}]\nversion = \"1.1\"\ntarget = {t:?}\ninstall_type = \"bundle\"\n"
    ));
    s.assign("boards", &[DEVICE], false, &[]);
    s.create_campaign(&campaign("os-1.1", 1));
    s.publish();
}

#[test]
fn an_installer_that_needs_a_reboot_is_confirmed_only_after_the_new_system_runs() {
    let mut s = Scenario::new();
    publish_bundle(&mut s);
    let d = OsUpdaterDevice::new(&s);
    let (code, v) = d.update();
    assert_eq!(
        (code, results(&v)),
        (0, vec!["pending_reboot".to_string()]),
        "{v:#}"
    );
    assert_eq!(d.calls(), "installed\n");
    // Not rebooted yet: a second run installs nothing and asks for the reboot again.
    let (code, v) = d.update();
    assert_eq!((code, results(&v)), (0, vec![]), "{v:#}");
    d.reboot(true);
    let (code, v) = d.update();
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        d.calls(),
        "installed\nconfirmed\n",
        "confirmed once, after the reboot"
    );
    let finals = d.finals();
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].0, "succeeded", "{finals:?}");
    assert!(!d.dir().join("reboot-requested").exists());
}

#[test]
fn an_installer_whose_new_system_does_not_come_up_is_reported_as_a_fallback() {
    let mut s = Scenario::new();
    publish_bundle(&mut s);
    let d = OsUpdaterDevice::new(&s);
    let (code, _) = d.update();
    assert_eq!(code, 0);
    d.reboot(false);
    let (code, v) = d.update();
    assert_eq!(code, 0, "{v:#}");
    let finals = d.finals();
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0].0, "failed");
    assert!(finals[0].1.contains("did not come up"), "{finals:?}");
    assert!(!d.calls().contains("confirmed"), "{}", d.calls());
    assert!(
        !d.calls().contains("rollback"),
        "the previous system already runs: nothing to roll back ({})",
        d.calls()
    );
    assert!(
        !d.dir().join("reboot-requested").exists(),
        "no further reboot"
    );
}

// ---------------------------------------------------------------------------------------
// Power cuts
// ---------------------------------------------------------------------------------------

/// The fewest power cuts over both scenarios.
const MIN_CUTS: usize = 100;

/// Runs `petrel update` until fault point `n`, then SIGKILLs it: a power cut.
fn cut_at(board: &Board, n: u64) -> Result<(), String> {
    let mut child = petrel(&board.config(), &["update"])
        .env("PETREL_FAULT_STOP_AT", n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start petrel: {e}"))?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let marker = format!("petrel: fault point {n} reached");
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(l) if l.contains(&marker) => break,
            Ok(l) => seen.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                if let Ok(Some(s)) = child.try_wait() {
                    return Err(format!("petrel exited ({s}) before point {n}: {seen:?}"));
                }
            }
            Err(_) => {
                let _ = child.kill();
                return Err(format!("point {n} not reached: {seen:?}"));
            }
        }
    }
    child.kill().map_err(|e| e.to_string())?;
    child.wait().map_err(|e| e.to_string())?;
    Ok(())
}

/// The fault points of one clean `petrel update` (phase and name, by number).
fn points(board: &Board) -> Vec<String> {
    let log = board.dir().join("faults.log");
    let mut cmd = petrel(&board.config(), &["update"]);
    cmd.env("PETREL_FAULT_LOG", &log);
    let out = run_with_timeout(&mut cmd, LIMIT).unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    text.lines()
        .map(|l| l.split_once(' ').map_or("", |x| x.1).to_string())
        .collect()
}

/// After a power cut: the board boots, the agent runs at every boot, and reboots when asked,
/// until it is done. Checks that every boot ran a complete, verified image.
fn settle(board: &Board, images: &[(&str, &[u8])]) -> Result<(), String> {
    for _ in 0..6 {
        let slot = board.power_on();
        let running = board.slot_bytes(&slot, IMAGE_SIZE);
        if !images.iter().any(|(_, b)| *b == running) {
            return Err(format!(
                "slot {slot} booted with an image that is neither the old nor the new one"
            ));
        }
        let out = board.run(&["recover"]);
        if !out.status.success() {
            return Err(format!("petrel recover: {}", describe(&out)));
        }
        let (code, v) = board.update();
        let log = board.dir().join("settle.log");
        let mut text = std::fs::read_to_string(&log).unwrap_or_default();
        text.push_str(&format!(
            "booted {slot}; petrel update exited {code}: {v:#}\n"
        ));
        std::fs::write(&log, text).unwrap();
        if code != 0 && code != 1 {
            return Err(format!("petrel update exited {code}: {v:#}"));
        }
        if !board.take_reboot_request() {
            return Ok(());
        }
    }
    Err("the agent kept asking for reboots".into())
}

/// One scenario of power cuts: a fresh board per cut, cut at a point of the install run
/// (`second` false) or of the first start after the reboot (`second` true).
fn power_cuts(
    kind: &str,
    keys: &str,
    want_slot: &str,
    want_version: &str,
    want_result: &str,
    step: usize,
) -> usize {
    let new = image("1.1", kind, IMAGE_SIZE);
    let factory = image("1.0", "good", IMAGE_SIZE);
    let images: [(&str, &[u8]); 2] = [("1.0", &factory), ("1.1", &new)];
    let mut cuts = 0;
    for second in [false, true] {
        // Learn the points on a clean board.
        let mut s1 = Scenario::new();
        publish(&mut s1, "os-1.1", 1, "1.1", &new, false);
        let learn = Board::with(&s1, keys);
        if second {
            learn.update();
            assert!(learn.take_reboot_request());
            learn.power_on();
            learn.ok(&["recover"]);
        }
        let pts = points(&learn);
        let wanted: Vec<(u64, String)> = pts
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.starts_with("apply")
                    || p.starts_with("report")
                    || p.starts_with("recover")
                    || p.contains("into slot")
            })
            .map(|(i, p)| (i as u64 + 1, p.clone()))
            .collect();
        assert!(wanted.len() >= 5, "few fault points: {pts:?}");
        drop(learn);
        for (n, what) in wanted.iter().step_by(step) {
            let mut s2 = Scenario::new();
            publish(&mut s2, "os-1.1", 1, "1.1", &new, false);
            let board = Board::with(&s2, keys);
            if second {
                board.update();
                assert!(board.take_reboot_request());
                board.power_on();
                board.ok(&["recover"]);
            }
            cut_at(&board, *n).unwrap_or_else(|e| panic!("{kind}, cut at {n} ({what}): {e}"));
            if what.contains("write slot B") || what.contains("into slot B") {
                // A slot being written is never bootable.
                assert_eq!(
                    board.boot_state()["left"]["B"],
                    0,
                    "{kind}, cut at {n} ({what}): slot B is bootable while written"
                );
            }
            board.take_reboot_request();
            cuts += 1;
            settle(&board, &images).unwrap_or_else(|e| panic!("{kind}, cut at {n} ({what}): {e}"));
            let ctx = format!(
                "{kind} {keys}, {} run, cut at {n} ({what}); after the cut:\n{}",
                if second { "second" } else { "first" },
                std::fs::read_to_string(board.dir().join("settle.log")).unwrap_or_default()
            );
            let st = board.slots_status();
            assert_eq!(st["booted"], want_slot, "{ctx}: {st:#}");
            assert_eq!(board.os_version().as_deref(), Some(want_version), "{ctx}");
            assert!(st["install_in_progress"].is_null(), "{ctx}: {st:#}");
            assert!(
                !board.dir().join("state/apply.journal.json").exists(),
                "{ctx}"
            );
            let finals = board.finals();
            assert_eq!(finals.len(), 1, "{ctx}: {finals:?}");
            assert_eq!(finals[0].0, want_result, "{ctx}: {finals:?}");
            assert_eq!(board.slot_bytes("A", IMAGE_SIZE), factory, "{ctx}: slot A");
            if want_slot == "B" {
                assert_eq!(board.slot_sha("B", IMAGE_SIZE), sha256_hex(&new), "{ctx}");
            }
        }
    }
    cuts
}

#[test]
fn a_power_cut_anywhere_in_the_write_switch_or_confirmation_leaves_a_complete_verified_slot() {
    // Three scenarios side by side (each trial is mostly waiting on child processes).
    let (good, bad, noboot) = std::thread::scope(|t| {
        let good = t.spawn(|| {
            power_cuts("good", "", "B", "1.1", "succeeded", 1)
                + power_cuts("good", "staging = \"slot\"", "B", "1.1", "succeeded", 2)
        });
        let bad = t.spawn(|| power_cuts("unhealthy", "", "A", "1.0", "failed", 1));
        let noboot = t.spawn(|| power_cuts("noboot", "", "A", "1.0", "failed", 1));
        let join = |h: std::thread::ScopedJoinHandle<'_, usize>| {
            h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        };
        (join(good), join(bad), join(noboot))
    });
    let all = good + bad + noboot;
    assert!(
        all >= MIN_CUTS,
        "only {all} power cuts ({good} in a good install, {bad} in one whose health check fails, {noboot} in one that does not boot)"
    );
    eprintln!("power cuts: {good} in a good install (some streaming straight into the slot), {bad} in one whose health check fails, {noboot} in one that does not boot");
}

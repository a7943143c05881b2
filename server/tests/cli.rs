//! The `petrel-server` binary: help text, bound-address line, access log, SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_petrel-server");

#[test]
fn every_command_has_help_with_an_example() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example"), "{args:?} help lacks an example");
        assert!(text.contains("petrel-server serve --root"), "{args:?}");
    }
}

#[test]
fn missing_root_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test]
async fn binary_prints_bound_address_logs_access_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    build_fixture_tree(dir.path(), &root);
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--access-log", "--root"])
        .arg(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(STEP).expect("no listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    let r = get(addr, "/metadata/timestamp.json", &[]).await;
    assert_eq!(r.status, 200);
    let r = get(addr, "/metadata/9.root.json", &[]).await;
    assert_eq!(r.status, 404);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + STEP;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");

    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let body_len = std::fs::read(root.join("metadata/timestamp.json"))
        .unwrap()
        .len();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&format!("GET /metadata/timestamp.json 200 {body_len} "))),
        "no access-log line in {stderr:?}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("GET /metadata/9.root.json 404 ")),
        "no access-log line for the 404 in {stderr:?}"
    );
}

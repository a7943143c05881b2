//! `petrel delta-apply BASE DELTA -o OUT [--streaming]`: every delta format, in both modes,
//! writes exactly the new bytes, over an existing longer file too; a damaged delta fails
//! with the file named.

use std::fs;
use std::path::Path;
use std::process::Command;

use petrel_client::delta::{self, bsdiff, chunked};

/// Compressible, not trivial bytes.
fn pseudo(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 64 < 40 {
                b"abcdefgh"[(x % 8) as usize]
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

fn run(args: &[&Path], streaming: bool) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_petrel"));
    c.arg("delta-apply");
    if streaming {
        c.arg("--streaming");
    }
    c.arg(args[0]).arg(args[1]).arg("-o").arg(args[2]);
    c.output().unwrap()
}

#[test]
fn every_format_applies_in_both_modes_to_the_new_bytes() {
    let t = tempfile::tempdir().unwrap();
    let old = pseudo(1 << 20, 1);
    let mut new = old.clone();
    new[1000..1100].copy_from_slice(&pseudo(100, 2));
    new.splice(300_000..300_000, pseudo(5_000, 3));
    new.truncate(new.len() - 20_000);
    let base = t.path().join("old.bin");
    fs::write(&base, &old).unwrap();
    let deltas: Vec<(&str, Vec<u8>)> = vec![
        (delta::FORMAT, delta::make(&old, &new).unwrap()),
        (
            chunked::FORMAT,
            chunked::make_with(&old, &new, 256 * 1024, |n, f| (0..n).map(f).collect()).unwrap(),
        ),
        (
            bsdiff::FORMAT,
            bsdiff::make(&old, &new, false).unwrap().unwrap(),
        ),
    ];
    for (format, d) in &deltas {
        let dp = t.path().join(format!("{format}.delta"));
        fs::write(&dp, d).unwrap();
        for streaming in [false, true] {
            let out = t.path().join(format!("{format}-{streaming}.out"));
            // Something longer there already: replaced whole.
            fs::write(&out, vec![7u8; 2 << 20]).unwrap();
            let o = run(&[&base, &dp, &out], streaming);
            assert!(
                o.status.success(),
                "{format} streaming={streaming}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                fs::read(&out).unwrap() == new,
                "{format} streaming={streaming}: other bytes"
            );
        }
    }
}

#[test]
fn a_damaged_delta_fails_and_names_the_delta() {
    let t = tempfile::tempdir().unwrap();
    let old = pseudo(200_000, 4);
    let mut new = old.clone();
    new[10..20].copy_from_slice(b"0123456789");
    let base = t.path().join("old.bin");
    fs::write(&base, &old).unwrap();
    let mut d = bsdiff::make(&old, &new, false).unwrap().unwrap();
    let n = d.len();
    d.truncate(n - 5);
    let dp = t.path().join("cut.delta");
    fs::write(&dp, &d).unwrap();
    for streaming in [false, true] {
        let out = t.path().join("out.bin");
        let o = run(&[&base, &dp, &out], streaming);
        assert!(!o.status.success(), "a truncated delta applied");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("cut.delta"), "{err}");
    }
}

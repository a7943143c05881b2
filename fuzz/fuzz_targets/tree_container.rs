//! Tree containers (`tree::unpack`, and `tree::verify_container`) from arbitrary bytes,
//! checked against the SHA-256 of the manifest they carry, so that the fuzzer gets past
//! the hash to the manifest's rules, the entries and the frames.
//!
//! Properties: never a panic; unpacking writes nothing outside its destination (the
//! scratch directory holds only the container and the destination afterwards); a refused
//! container leaves no destination; what unpacks also verifies, and vice versa.
#![no_main]

use std::fs;

use libfuzzer_sys::fuzz_target;
use petrel_client::tree;

fuzz_target!(|data: &[u8]| {
    let want = match data.get(8..16) {
        Some(len) => {
            let n = u64::from_le_bytes(len.try_into().unwrap()).min(data.len() as u64) as usize;
            let end = (16 + n).min(data.len());
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &data[16..end]))
        }
        None => "0".repeat(64),
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("c.ptree");
    fs::write(&src, data).unwrap();
    let dest = t.path().join("out");
    let unpacked = tree::unpack(&src, &want, &dest);
    let verified = tree::verify_container(&src, &want);
    assert_eq!(
        unpacked.is_ok(),
        verified.is_ok(),
        "{unpacked:?} / {verified:?}"
    );
    let mut names: Vec<String> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if unpacked.is_ok() {
        assert_eq!(names, ["c.ptree", "out"]);
    } else {
        assert_eq!(names, ["c.ptree"]);
    }
});

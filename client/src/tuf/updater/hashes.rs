//! Length and hash checks for metadata and targets, streamed so large files use bounded memory.

use std::io::{self, Write};

use ring::digest;

use crate::tuf::schema::Hashes;

/// Hash algorithms Petrel computes.
pub const SUPPORTED_HASHES: [&str; 2] = ["sha256", "sha512"];

fn algorithm(name: &str) -> Option<&'static digest::Algorithm> {
    match name {
        "sha256" => Some(&digest::SHA256),
        "sha512" => Some(&digest::SHA512),
        _ => None,
    }
}

/// A writer that hashes everything passing through it with every supported algorithm the
/// expected hashes list, and counts the bytes.
pub struct HashingWriter<W> {
    inner: W,
    contexts: Vec<(String, digest::Context)>,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Hashes for the supported algorithms in `expected`.
    pub fn new(expected: &Hashes, inner: W) -> Self {
        let contexts = expected
            .keys()
            .filter_map(|name| algorithm(name).map(|a| (name.clone(), digest::Context::new(a))))
            .collect();
        HashingWriter {
            inner,
            contexts,
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks length and hashes against the expectations; returns the inner writer.
    pub fn verify(self, expected_len: Option<u64>, expected: &Hashes) -> Result<W, String> {
        if let Some(l) = expected_len {
            if l != self.len {
                return Err(format!("length {} does not match expected {l}", self.len));
            }
        }
        let computed: Vec<(String, Vec<u8>)> = self
            .contexts
            .into_iter()
            .map(|(n, c)| (n, c.finish().as_ref().to_vec()))
            .collect();
        check_digests(expected, &computed)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        for (_, c) in &mut self.contexts {
            c.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compares computed digests with the expected ones. At least one supported algorithm must
/// be listed, and every listed supported algorithm must match; unknown algorithms are
/// ignored when a supported one is present.
fn check_digests(expected: &Hashes, computed: &[(String, Vec<u8>)]) -> Result<(), String> {
    if computed.is_empty() {
        let listed: Vec<&str> = expected.keys().map(String::as_str).collect();
        return Err(format!(
            "no supported hash algorithm among {listed:?} (Petrel supports {SUPPORTED_HASHES:?})"
        ));
    }
    for (name, got) in computed {
        let want = &expected[name];
        let matches = hex::decode(want).is_ok_and(|w| w == *got);
        if !matches {
            return Err(format!(
                "{name} mismatch: expected {want}, got {}",
                hex::encode(got)
            ));
        }
    }
    Ok(())
}

/// Checks in-memory bytes against an optional length and optional hashes.
pub fn verify_bytes(
    data: &[u8],
    expected_len: Option<u64>,
    expected: Option<&Hashes>,
) -> Result<(), String> {
    if let Some(l) = expected_len {
        if l != data.len() as u64 {
            return Err(format!("length {} does not match expected {l}", data.len()));
        }
    }
    if let Some(h) = expected {
        let mut w = HashingWriter::new(h, io::sink());
        w.write_all(data).map_err(|e| e.to_string())?;
        w.verify(None, h)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(pairs: &[(&str, String)]) -> Hashes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn sha(alg: &'static digest::Algorithm, d: &[u8]) -> String {
        hex::encode(digest::digest(alg, d))
    }

    #[test]
    fn every_supported_hash_must_match() {
        let d = b"data";
        let good = hashes(&[
            ("sha256", sha(&digest::SHA256, d)),
            ("sha512", sha(&digest::SHA512, d)),
        ]);
        verify_bytes(d, Some(4), Some(&good)).unwrap();
        let bad512 = hashes(&[
            ("sha256", sha(&digest::SHA256, d)),
            ("sha512", sha(&digest::SHA512, b"other")),
        ]);
        let e = verify_bytes(d, Some(4), Some(&bad512)).unwrap_err();
        assert!(e.contains("sha512 mismatch"), "{e}");
    }

    #[test]
    fn unknown_algorithm_alone_is_not_enough() {
        let only_unknown = hashes(&[("md5", "00".into())]);
        let e = verify_bytes(b"x", None, Some(&only_unknown)).unwrap_err();
        assert!(e.contains("no supported hash"), "{e}");
        let with_known = hashes(&[("md5", "00".into()), ("sha256", sha(&digest::SHA256, b"x"))]);
        verify_bytes(b"x", None, Some(&with_known)).unwrap();
    }

    #[test]
    fn length_is_checked() {
        let e = verify_bytes(b"abc", Some(2), None).unwrap_err();
        assert!(e.contains("length 3"), "{e}");
    }
}

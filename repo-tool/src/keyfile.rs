//! Reading public keys given on the command line: TUF key JSON, PEM public keys, or the
//! public half of a PKCS#8 private key.

use std::path::Path;

use petrel_client::tuf::keys::KeySource;
use petrel_client::tuf::schema::{Key, KeyVal, Unrecognized};
use spki::der::Decode;

use crate::error::{Error, Result};
use crate::workspace::load_private_key;

/// Loads a public key from `path`: a TUF key object (JSON), a `PUBLIC KEY` PEM
/// (ed25519, ECDSA P-256 or RSA), or a `PRIVATE KEY` PEM whose public half is used.
pub fn public_key_from_file(path: &Path) -> Result<Key> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason: String| Error::Usage(format!("{}: {reason}", path.display()));
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let key: Key =
            serde_json::from_str(trimmed).map_err(|e| bad(format!("not a TUF key object: {e}")))?;
        if !key.is_supported() {
            return Err(bad(format!(
                "unsupported key type {} / scheme {}",
                key.keytype, key.scheme
            )));
        }
        return Ok(key);
    }
    if trimmed.contains("PRIVATE KEY") {
        return Ok(load_private_key(path)?.public_key().clone());
    }
    let pem = pem::parse(trimmed).map_err(|e| bad(format!("not JSON or PEM: {e}")))?;
    if pem.tag() != "PUBLIC KEY" {
        return Err(bad(format!(
            "PEM label {:?}; expected PUBLIC KEY or PRIVATE KEY",
            pem.tag()
        )));
    }
    let spki = spki::SubjectPublicKeyInfoRef::from_der(pem.contents())
        .map_err(|e| bad(format!("not a SubjectPublicKeyInfo: {e}")))?;
    let key = |keytype: &str, scheme: &str, public: String| Key {
        keytype: keytype.into(),
        scheme: scheme.into(),
        keyval: KeyVal {
            public,
            unrecognized: Unrecognized::new(),
        },
        unrecognized: Unrecognized::new(),
    };
    let normalized_pem = pem::encode_config(
        &pem,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    match spki.algorithm.oid.to_string().as_str() {
        "1.3.101.112" => {
            let raw = spki
                .subject_public_key
                .as_bytes()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| bad("malformed ed25519 public key".into()))?;
            Ok(Key::ed25519(raw))
        }
        "1.2.840.10045.2.1" => Ok(key("ecdsa", "ecdsa-sha2-nistp256", normalized_pem)),
        "1.2.840.113549.1.1.1" => Ok(key("rsa", "rsassa-pss-sha256", normalized_pem)),
        other => Err(bad(format!("unsupported public key algorithm {other}"))),
    }
}

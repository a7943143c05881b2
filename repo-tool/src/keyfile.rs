//! Keys given on the command line: a file (TUF key JSON, PEM public key, or a PKCS#8
//! private key) or a `pkcs11:` URI naming a key in an HSM or token ([`crate::pkcs11`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use petrel_client::tuf::keys::KeySource;
use petrel_client::tuf::schema::{Key, KeyVal, Unrecognized};
use spki::der::Decode;

use crate::error::{Error, Result};
use crate::pkcs11::{self, Pkcs11Key, Pkcs11Uri};
use crate::workspace::load_private_key;

/// Where a key is: a file, or a key in a PKCS#11 token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// A key file.
    File(PathBuf),
    /// A key in a PKCS#11 token.
    Pkcs11(Box<Pkcs11Uri>),
}

impl FromStr for KeyRef {
    type Err = String;

    /// A `pkcs11:` URI, else a file path.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if pkcs11::is_uri(s) {
            s.parse().map(|u| KeyRef::Pkcs11(Box::new(u)))
        } else {
            Ok(KeyRef::File(PathBuf::from(s)))
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::File(p) => write!(f, "{}", p.display()),
            KeyRef::Pkcs11(u) => write!(f, "{u}"),
        }
    }
}

impl From<PathBuf> for KeyRef {
    fn from(p: PathBuf) -> Self {
        KeyRef::File(p)
    }
}

/// A public key read from a [`KeyRef`], with the opened token key when it is one (so the
/// caller can record where the private half lives).
#[derive(Debug)]
pub struct PublicKeyRef {
    /// The TUF public key.
    pub key: Key,
    /// The token key, for a `pkcs11:` URI.
    pub token_key: Option<Pkcs11Key>,
}

impl KeyRef {
    /// The private key, to sign with: a PKCS#8 file or a token key.
    pub fn signer(&self) -> Result<Box<dyn KeySource>> {
        match self {
            KeyRef::File(p) => Ok(Box::new(load_private_key(p)?)),
            KeyRef::Pkcs11(u) => Ok(Box::new(pkcs11::open(u)?)),
        }
    }

    /// The public key ([`public_key_from_file`] for a file; read from the token for a URI).
    pub fn public_key(&self) -> Result<PublicKeyRef> {
        match self {
            KeyRef::File(p) => Ok(PublicKeyRef {
                key: public_key_from_file(p)?,
                token_key: None,
            }),
            KeyRef::Pkcs11(u) => {
                let k = pkcs11::open(u)?;
                Ok(PublicKeyRef {
                    key: k.public_key().clone(),
                    token_key: Some(k),
                })
            }
        }
    }
}

/// Loads a public key from `path`: a TUF key object (JSON), a `PUBLIC KEY` PEM
/// (ed25519, ECDSA P-256 or RSA), or a `PRIVATE KEY` PEM whose public half is used.
pub fn public_key_from_file(path: &Path) -> Result<Key> {
    let text = crate::workspace::read_key_text(path)?;
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

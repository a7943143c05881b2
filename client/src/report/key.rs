//! The device's ed25519 report-signing key: created once, kept as PKCS#8 PEM (mode 0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::signature::KeyPair;

use super::ReportError;
use crate::tuf::keys::{KeySource, PrivateKey};
use crate::tuf::schema::{Key, KeyId};

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The device's report-signing key (ed25519).
#[derive(Debug)]
pub struct DeviceKey {
    key: PrivateKey,
    path: PathBuf,
}

impl DeviceKey {
    /// Loads the key at `path`, or creates a new one there if the file does not exist.
    /// A new key is written atomically (temporary file, fsync, rename) with mode 0600; if
    /// another process created the file first, that key is loaded instead.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<DeviceKey, ReportError> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::from_pem(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_err(path, format!("cannot read: {e}"))),
        }
        let (key, pem) = PrivateKey::generate_ed25519()
            .map_err(|e| key_err(path, format!("cannot generate: {e}")))?;
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| key_err(path, format!("cannot create {}: {e}", parent.display())))?;
        let write = || -> std::io::Result<Result<(), tempfile::PersistError>> {
            let mut tmp = tempfile::Builder::new()
                .prefix(".petrel-key-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .tempfile_in(parent)?;
            tmp.write_all(pem.as_bytes())?;
            tmp.as_file().sync_all()?;
            Ok(tmp.persist_noclobber(path).map(|_| ()))
        };
        match write().map_err(|e| key_err(path, format!("cannot write: {e}")))? {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(parent) {
                    let _ = d.sync_all();
                }
                Ok(DeviceKey {
                    key,
                    path: path.to_path_buf(),
                })
            }
            // Lost a race with another process creating the key: use theirs.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| key_err(path, format!("cannot read: {e}")))?;
                Self::from_pem(path, &text)
            }
            Err(e) => Err(key_err(path, format!("cannot write: {}", e.error))),
        }
    }

    fn from_pem(path: &Path, text: &str) -> Result<DeviceKey, ReportError> {
        let key = PrivateKey::from_pem(text).map_err(|e| key_err(path, e.to_string()))?;
        if key.public_key().keytype != "ed25519" {
            return Err(key_err(
                path,
                format!(
                    "is a {} key; device keys are ed25519",
                    key.public_key().keytype
                ),
            ));
        }
        Ok(DeviceKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key as it appears in TUF metadata (what reports are verified with).
    pub fn public_key(&self) -> &Key {
        self.key.public_key()
    }

    /// The key id (hex SHA-256 of the canonical public key), as in report signatures.
    pub fn keyid(&self) -> &KeyId {
        self.key.key_id()
    }

    /// The public half as a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`): the
    /// file a fleet operator enrolls at the report endpoint.
    pub fn public_pem(&self) -> String {
        let raw = hex::decode(&self.public_key().keyval.public).expect("ed25519 key is hex");
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&raw);
        pem::encode_config(
            &pem::Pem::new("PUBLIC KEY", der),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    pub(super) fn private(&self) -> &PrivateKey {
        &self.key
    }
}

/// Reads a device's public key from PEM: an ed25519 SubjectPublicKeyInfo
/// (`-----BEGIN PUBLIC KEY-----`, as [`DeviceKey::public_pem`] writes). Also accepts a
/// PKCS#8 private key, from which only the public half is taken.
pub fn public_key_from_pem(text: &str) -> Result<Key, ReportError> {
    let err = |m: String| ReportError::PublicKey(m);
    let pem = pem::parse(text.trim()).map_err(|e| err(format!("not PEM: {e}")))?;
    match pem.tag() {
        "PUBLIC KEY" => {
            let der = pem.contents();
            match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
                Some(raw) if raw.len() == 32 => Ok(Key::ed25519(raw)),
                _ => Err(err(
                    "not an ed25519 SubjectPublicKeyInfo (device keys are ed25519)".into(),
                )),
            }
        }
        "PRIVATE KEY" => {
            let kp = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pem.contents())
                .map_err(|_| err("not an ed25519 PKCS#8 key (device keys are ed25519)".into()))?;
            Ok(Key::ed25519(kp.public_key().as_ref()))
        }
        other => Err(err(format!(
            "PEM label {other:?}; expected \"PUBLIC KEY\" (the public half of the device key)"
        ))),
    }
}

fn key_err(path: &Path, reason: String) -> ReportError {
    ReportError::Key {
        path: path.display().to_string(),
        reason,
    }
}

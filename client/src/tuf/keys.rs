//! Public-key cryptography on `ring`: key ids, signature verification for ed25519,
//! ECDSA P-256 and RSA-PSS-SHA256, and signing through the [`KeySource`] trait.

use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use spki::der::Decode;

use crate::tuf::canonical;
use crate::tuf::schema::{Key, KeyId, KeyVal, Unrecognized};

/// A problem with a key or a signature.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key type / scheme pair is not one Petrel implements.
    #[error("unsupported key type {keytype:?} with scheme {scheme:?}")]
    Unsupported {
        /// The key's `keytype`.
        keytype: String,
        /// The key's `scheme`.
        scheme: String,
    },
    /// The public key value cannot be decoded.
    #[error("malformed {keytype} public key: {reason}")]
    MalformedPublic {
        /// The key's `keytype`.
        keytype: String,
        /// What is wrong.
        reason: String,
    },
    /// The signature is not hex.
    #[error("signature is not hex")]
    SignatureEncoding,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A private key file cannot be used.
    #[error("unusable private key: {0}")]
    Private(String),
    /// Signing failed (e.g. an external signer refused).
    #[error("signing failed: {0}")]
    Sign(String),
}

const ED25519: &str = "ed25519";
const ECDSA_P256: &str = "ecdsa-sha2-nistp256";
const RSA_PSS: &str = "rsassa-pss-sha256";

// DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
// DER of AlgorithmIdentifier { rsaEncryption, NULL }.
const RSA_ALG_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

impl Key {
    /// The key id as the specification defines it: hex SHA-256 of the key's canonical JSON.
    pub fn key_id(&self) -> KeyId {
        let bytes = canonical::to_canonical(self).expect("keys contain no floats");
        KeyId(hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &bytes,
        )))
    }

    /// An ed25519 public key from its 32 raw bytes.
    pub fn ed25519(public: &[u8]) -> Key {
        Key::new(ED25519, ED25519, hex::encode(public))
    }

    fn new(keytype: &str, scheme: &str, public: String) -> Key {
        Key {
            keytype: keytype.into(),
            scheme: scheme.into(),
            keyval: KeyVal {
                public,
                unrecognized: Unrecognized::new(),
            },
            unrecognized: Unrecognized::new(),
        }
    }

    /// Verifies a hex-encoded signature over `message`.
    pub fn verify_hex(&self, message: &[u8], sig_hex: &str) -> Result<(), KeyError> {
        let sig = hex::decode(sig_hex).map_err(|_| KeyError::SignatureEncoding)?;
        self.verify(message, &sig)
    }

    /// Verifies raw signature bytes over `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        match (self.keytype.as_str(), self.scheme.as_str()) {
            (ED25519, ED25519) => {
                let public = hex::decode(&self.keyval.public)
                    .ok()
                    .filter(|p| p.len() == 32)
                    .ok_or_else(|| self.malformed("expected 64 hex characters"))?;
                signature::UnparsedPublicKey::new(&signature::ED25519, public)
                    .verify(message, sig)
                    .map_err(|_| KeyError::BadSignature)
            }
            ("ecdsa" | ECDSA_P256, ECDSA_P256) => {
                let point = self.ecdsa_point()?;
                let asn1 =
                    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &point);
                if asn1.verify(message, sig).is_ok() {
                    return Ok(());
                }
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                    .verify(message, sig)
                    .map_err(|_| KeyError::BadSignature)
            }
            ("rsa", RSA_PSS) => {
                let pkcs1 = self.spki_key_bytes("1.2.840.113549.1.1.1")?;
                signature::UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, pkcs1)
                    .verify(message, sig)
                    .map_err(|_| KeyError::BadSignature)
            }
            _ => Err(KeyError::Unsupported {
                keytype: self.keytype.clone(),
                scheme: self.scheme.clone(),
            }),
        }
    }

    /// Whether Petrel can verify signatures made with this key.
    pub fn is_supported(&self) -> bool {
        matches!(
            (self.keytype.as_str(), self.scheme.as_str()),
            (ED25519, ED25519) | ("ecdsa" | ECDSA_P256, ECDSA_P256) | ("rsa", RSA_PSS)
        )
    }

    fn malformed(&self, reason: impl Into<String>) -> KeyError {
        KeyError::MalformedPublic {
            keytype: self.keytype.clone(),
            reason: reason.into(),
        }
    }

    /// The uncompressed P-256 point, from PEM SubjectPublicKeyInfo or from hex.
    fn ecdsa_point(&self) -> Result<Vec<u8>, KeyError> {
        if self.keyval.public.contains("-----BEGIN") {
            return self.spki_key_bytes("1.2.840.10045.2.1");
        }
        hex::decode(&self.keyval.public)
            .ok()
            .filter(|p| p.len() == 65 && p[0] == 4)
            .ok_or_else(|| self.malformed("expected PEM or 65-byte uncompressed point in hex"))
    }

    /// The subject public key bytes of a PEM SubjectPublicKeyInfo, checking its algorithm.
    fn spki_key_bytes(&self, expected_oid: &str) -> Result<Vec<u8>, KeyError> {
        let pem =
            pem::parse(self.keyval.public.trim()).map_err(|e| self.malformed(e.to_string()))?;
        if pem.tag() != "PUBLIC KEY" {
            return Err(self.malformed(format!("PEM label {:?}, expected PUBLIC KEY", pem.tag())));
        }
        let spki = spki::SubjectPublicKeyInfoRef::from_der(pem.contents())
            .map_err(|e| self.malformed(format!("not a SubjectPublicKeyInfo: {e}")))?;
        if spki.algorithm.oid.to_string() != expected_oid {
            return Err(self.malformed(format!(
                "algorithm {} is not {expected_oid}",
                spki.algorithm.oid
            )));
        }
        spki.subject_public_key
            .as_bytes()
            .map(<[u8]>::to_vec)
            .ok_or_else(|| self.malformed("public key bit string has unused bits"))
    }
}

/// Something that can sign metadata: a local key file, or in future an HSM or cloud KMS.
pub trait KeySource: Send + Sync {
    /// The public key as it appears in metadata.
    fn public_key(&self) -> &Key;
    /// The key id of [`KeySource::public_key`].
    fn key_id(&self) -> &KeyId;
    /// Signs `message` (the canonical bytes of a `signed` object).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError>;
}

enum PrivateInner {
    Ed25519(signature::Ed25519KeyPair),
    EcdsaP256(signature::EcdsaKeyPair),
    Rsa(signature::RsaKeyPair),
}

/// A private key held in memory, loaded from PKCS#8 (PEM or DER).
pub struct PrivateKey {
    inner: PrivateInner,
    public: Key,
    key_id: KeyId,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({} {})", self.public.keytype, self.key_id)
    }
}

impl PrivateKey {
    /// Generates a new ed25519 key; returns it and its PKCS#8 PEM encoding.
    pub fn generate_ed25519() -> Result<(PrivateKey, String), KeyError> {
        let doc = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| KeyError::Private("random generator failed".into()))?;
        let key = PrivateKey::from_pkcs8_der(doc.as_ref())?;
        Ok((key, pkcs8_pem(doc.as_ref())))
    }

    /// Generates a new ECDSA P-256 key; returns it and its PKCS#8 PEM encoding.
    pub fn generate_ecdsa_p256() -> Result<(PrivateKey, String), KeyError> {
        let doc = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &SystemRandom::new(),
        )
        .map_err(|_| KeyError::Private("random generator failed".into()))?;
        let key = PrivateKey::from_pkcs8_der(doc.as_ref())?;
        Ok((key, pkcs8_pem(doc.as_ref())))
    }

    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) private key.
    pub fn from_pem(text: &str) -> Result<PrivateKey, KeyError> {
        let pem =
            pem::parse(text.trim()).map_err(|e| KeyError::Private(format!("not PEM: {e}")))?;
        if pem.tag() != "PRIVATE KEY" {
            return Err(KeyError::Private(format!(
                "PEM label is {:?}; expected \"PRIVATE KEY\" (PKCS#8). Convert with `openssl pkcs8 -topk8 -nocrypt`",
                pem.tag()
            )));
        }
        PrivateKey::from_pkcs8_der(pem.contents())
    }

    /// Loads a PKCS#8 DER private key: ed25519, ECDSA P-256 or RSA.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<PrivateKey, KeyError> {
        if let Ok(kp) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let public = Key::ed25519(kp.public_key().as_ref());
            return Ok(Self::with_public(PrivateInner::Ed25519(kp), public));
        }
        let rng = SystemRandom::new();
        if let Ok(kp) = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der,
            &rng,
        ) {
            let mut spki = P256_SPKI_PREFIX.to_vec();
            spki.extend_from_slice(kp.public_key().as_ref());
            let public = Key::new("ecdsa", ECDSA_P256, public_pem(&spki));
            return Ok(Self::with_public(PrivateInner::EcdsaP256(kp), public));
        }
        match signature::RsaKeyPair::from_pkcs8(der) {
            Ok(kp) => {
                let pkcs1 = kp.public().as_ref();
                let mut bitstring = vec![0u8];
                bitstring.extend_from_slice(pkcs1);
                let mut body = RSA_ALG_ID.to_vec();
                body.extend(der_tlv(0x03, &bitstring));
                let public = Key::new("rsa", RSA_PSS, public_pem(&der_tlv(0x30, &body)));
                Ok(Self::with_public(PrivateInner::Rsa(kp), public))
            }
            Err(e) => Err(KeyError::Private(format!(
                "not an ed25519, ECDSA P-256 or RSA (2048+ bit) PKCS#8 key ({e})"
            ))),
        }
    }

    fn with_public(inner: PrivateInner, public: Key) -> PrivateKey {
        let key_id = public.key_id();
        PrivateKey {
            inner,
            public,
            key_id,
        }
    }
}

impl KeySource for PrivateKey {
    fn public_key(&self) -> &Key {
        &self.public
    }

    fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match &self.inner {
            PrivateInner::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            PrivateInner::EcdsaP256(kp) => kp
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign("ECDSA signing failed".into())),
            PrivateInner::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(&signature::RSA_PSS_SHA256, &rng, message, &mut sig)
                    .map_err(|_| KeyError::Sign("RSA signing failed".into()))?;
                Ok(sig)
            }
        }
    }
}

fn pkcs8_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()))
}

fn public_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("PUBLIC KEY", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// DER tag-length-value.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_sign_then_verify_and_tamper_fails() {
        let (k, pem) = PrivateKey::generate_ed25519().unwrap();
        let sig = k.sign(b"hello").unwrap();
        k.public_key().verify(b"hello", &sig).unwrap();
        assert!(k.public_key().verify(b"hellO", &sig).is_err());
        let again = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(again.key_id(), k.key_id());
    }

    #[test]
    fn ecdsa_p256_round_trip_through_pem_public_key() {
        let (k, pem) = PrivateKey::generate_ecdsa_p256().unwrap();
        assert!(k
            .public_key()
            .keyval
            .public
            .starts_with("-----BEGIN PUBLIC KEY-----"));
        let sig = k.sign(b"msg").unwrap();
        k.public_key().verify(b"msg", &sig).unwrap();
        assert!(k.public_key().verify(b"other", &sig).is_err());
        assert_eq!(PrivateKey::from_pem(&pem).unwrap().key_id(), k.key_id());
    }

    #[test]
    fn key_id_is_sha256_of_canonical_key() {
        let key = Key::ed25519(&[7u8; 32]);
        let canon = canonical::to_canonical(&key).unwrap();
        assert_eq!(
            String::from_utf8(canon.clone()).unwrap(),
            format!(
                r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}},"scheme":"ed25519"}}"#,
                hex::encode([7u8; 32])
            )
        );
        assert_eq!(
            key.key_id().0,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &canon))
        );
    }

    #[test]
    fn unsupported_scheme_is_named() {
        let mut key = Key::ed25519(&[1u8; 32]);
        key.scheme = "ed448".into();
        let err = key.verify(b"x", b"y").unwrap_err();
        assert!(err.to_string().contains("ed448"), "{err}");
    }

    #[test]
    fn wrong_label_private_key_is_explained() {
        let err = PrivateKey::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("PKCS#8"), "{err}");
    }
}

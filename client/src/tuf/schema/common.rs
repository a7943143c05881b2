//! Pieces shared by all metadata types: the signed envelope, keys, hashes, dates, versions.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Timelike, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::tuf::canonical::{self, CanonicalError};

/// The TUF specification version Petrel writes.
pub const SPEC_VERSION: &str = "1.0.34";
/// The specification major version Petrel understands; metadata with another major is refused.
pub const SUPPORTED_SPEC_MAJOR: u64 = 1;

/// Fields an object carried that Petrel does not interpret, kept verbatim.
pub type Unrecognized = Map<String, Value>;

/// A schema-level problem with a metadata document.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The bytes are not a JSON document of the expected shape.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed (e.g. "root metadata").
        what: String,
        /// The parser's explanation.
        reason: String,
    },
    /// The `_type` field names another kind of metadata.
    #[error("expected _type {expected:?}, found {found:?}")]
    WrongType {
        /// The type the caller asked for.
        expected: &'static str,
        /// The type in the document.
        found: String,
    },
    /// A semantic rule of the specification is broken.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What is invalid.
        what: String,
        /// Why.
        reason: String,
    },
    /// The signed part has no canonical form (e.g. it contains a float).
    #[error("cannot canonicalize: {0}")]
    Canonical(#[from] CanonicalError),
}

impl SchemaError {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        SchemaError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// A key identifier: the hex SHA-256 of the key's canonical JSON (as the spec defines it),
/// though identifiers written by other tools are accepted as opaque strings.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl KeyId {
    /// The first 8 characters, for human messages.
    pub fn short(&self) -> &str {
        self.0.get(..8).unwrap_or(&self.0)
    }
}

/// A public key as it appears in root or delegation metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// Signature system: `ed25519`, `ecdsa`, `ecdsa-sha2-nistp256` or `rsa`.
    pub keytype: String,
    /// Signature scheme: `ed25519`, `ecdsa-sha2-nistp256` or `rsassa-pss-sha256`.
    pub scheme: String,
    /// The public part of the key.
    pub keyval: KeyVal,
    /// Fields Petrel does not interpret (e.g. `keyid_hash_algorithms`).
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// The public key value: hex for ed25519, PEM (SubjectPublicKeyInfo) for ECDSA and RSA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// The encoded public key.
    pub public: String,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// One signature in a metadata envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The key that (supposedly) made it.
    pub keyid: KeyId,
    /// Hex-encoded signature bytes.
    pub sig: String,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// Hash algorithm name → hex digest.
pub type Hashes = BTreeMap<String, String>;

/// An expiry instant, written as `YYYY-MM-DDTHH:MM:SSZ`. Sub-second digits that other
/// tools write are dropped when it is read (the expiry moves earlier by less than a
/// second), so what Petrel writes back is the instant it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Expires(pub DateTime<Utc>);

impl Serialize for Expires {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

impl<'de> Deserialize<'de> for Expires {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_datetime(&s)
            .map(|t| Expires(t.with_nanosecond(0).unwrap_or(t)))
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a TUF date-time. The spec's form is `YYYY-MM-DDTHH:MM:SSZ`; other RFC 3339 UTC
/// forms written by other tools (fractional seconds, `+00:00`) are accepted too.
pub fn parse_datetime(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(n) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ") {
        return Ok(n.and_utc());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| format!("invalid date-time {s:?}: {e}"))
}

impl fmt::Display for Expires {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

/// Version, length and hashes of a metadata file as referenced by timestamp or snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// The referenced file's version.
    pub version: u64,
    /// Its length in bytes, when the referencing role pins it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes, when the referencing role pins them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Hashes>,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl MetaFile {
    /// A reference carrying only a version.
    pub fn version_only(version: u64) -> Self {
        MetaFile {
            version,
            length: None,
            hashes: None,
            unrecognized: Unrecognized::new(),
        }
    }
}

/// Behaviour shared by the four kinds of metadata.
pub trait Metadata: Serialize + DeserializeOwned + Clone {
    /// The `_type` value.
    const TYPE: &'static str;
    /// The metadata version.
    fn version(&self) -> u64;
    /// Sets the metadata version.
    fn set_version(&mut self, v: u64);
    /// The expiry.
    fn expires(&self) -> Expires;
    /// Sets the expiry.
    fn set_expires(&mut self, e: Expires);
    /// The `spec_version` string.
    fn spec_version(&self) -> &str;
    /// The `_type` string as found in the document.
    fn type_field(&self) -> &str;
    /// Checks the rules serde cannot express. Called after every parse.
    fn validate(&self) -> Result<(), SchemaError> {
        Ok(())
    }
}

/// A signed metadata envelope: `{"signed": ..., "signatures": [...]}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The signatures over the canonical form of `signed`.
    pub signatures: Vec<Signature>,
    /// The metadata itself.
    pub signed: T,
}

impl<T: Metadata> Signed<T> {
    /// Wraps metadata with no signatures yet.
    pub fn unsigned(signed: T) -> Self {
        Signed {
            signatures: Vec::new(),
            signed,
        }
    }

    /// The canonical bytes that signatures cover.
    pub fn canonical_signed(&self) -> Result<Vec<u8>, SchemaError> {
        Ok(canonical::to_canonical(&self.signed)?)
    }

    /// Serializes the envelope as the JSON file Petrel publishes (pretty-printed).
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, SchemaError> {
        let mut v = serde_json::to_vec_pretty(self).map_err(|e| SchemaError::Malformed {
            what: T::TYPE.to_string(),
            reason: e.to_string(),
        })?;
        v.push(b'\n');
        Ok(v)
    }

    /// Parses and validates an envelope of this type from file bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SchemaError> {
        RawSigned::from_bytes(bytes)?.typed()
    }
}

/// An envelope whose `signed` part is still raw JSON: signatures are verified over the
/// canonical form of exactly what was received, before anything is interpreted.
#[derive(Clone, Debug)]
pub struct RawSigned {
    /// The raw `signed` object.
    pub signed: Value,
    /// The signatures.
    pub signatures: Vec<Signature>,
}

impl RawSigned {
    /// Parses the envelope (not the metadata inside it).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SchemaError> {
        #[derive(Deserialize)]
        struct Envelope {
            signed: Value,
            signatures: Vec<Signature>,
        }
        let env: Envelope = serde_json::from_slice(bytes).map_err(|e| SchemaError::Malformed {
            what: "metadata envelope".into(),
            reason: e.to_string(),
        })?;
        if !env.signed.is_object() {
            return Err(SchemaError::invalid(
                "metadata envelope",
                "\"signed\" is not an object",
            ));
        }
        Ok(RawSigned {
            signed: env.signed,
            signatures: env.signatures,
        })
    }

    /// The `_type` of the signed part, if it has one.
    pub fn type_field(&self) -> Option<&str> {
        self.signed.get("_type").and_then(Value::as_str)
    }

    /// The canonical bytes of the signed part.
    pub fn canonical_signed(&self) -> Result<Vec<u8>, SchemaError> {
        Ok(canonical::canonicalize(&self.signed)?)
    }

    /// Interprets the signed part as metadata of type `T`, checking `_type` and the
    /// rules of [`Metadata::validate`].
    pub fn typed<T: Metadata>(self) -> Result<Signed<T>, SchemaError> {
        let found = self.type_field().unwrap_or("").to_string();
        if found != T::TYPE {
            return Err(SchemaError::WrongType {
                expected: T::TYPE,
                found,
            });
        }
        let signed: T =
            serde_json::from_value(self.signed).map_err(|e| SchemaError::Malformed {
                what: format!("{} metadata", T::TYPE),
                reason: e.to_string(),
            })?;
        signed.validate()?;
        Ok(Signed {
            signatures: self.signatures,
            signed,
        })
    }
}

/// Checks the parts every metadata kind shares: version ≥ 1 and a parseable spec version.
pub(crate) fn validate_common<T: Metadata>(m: &T) -> Result<(), SchemaError> {
    if m.version() == 0 {
        return Err(SchemaError::invalid(
            format!("{} metadata", T::TYPE),
            "version must be at least 1",
        ));
    }
    spec_major(m.spec_version()).map(|_| ()).ok_or_else(|| {
        SchemaError::invalid(
            format!("{} metadata", T::TYPE),
            format!(
                "spec_version {:?} is not of the form MAJOR.MINOR.PATCH",
                m.spec_version()
            ),
        )
    })
}

/// The major number of a `spec_version` string (`"1.0.31"` → 1).
pub fn spec_major(spec_version: &str) -> Option<u64> {
    let mut parts = spec_version.split('.');
    let major = parts.next()?.parse().ok()?;
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() || rest.len() > 2 || rest.iter().any(|p| p.parse::<u64>().is_err()) {
        return None;
    }
    Some(major)
}

/// Implements [`Metadata`]'s accessors for a struct with the usual common fields.
macro_rules! impl_metadata_accessors {
    () => {
        fn version(&self) -> u64 {
            self.version
        }
        fn set_version(&mut self, v: u64) {
            self.version = v;
        }
        fn expires(&self) -> Expires {
            self.expires
        }
        fn set_expires(&mut self, e: Expires) {
            self.expires = e;
        }
        fn spec_version(&self) -> &str {
            &self.spec_version
        }
        fn type_field(&self) -> &str {
            &self.type_
        }
    };
}
pub(crate) use impl_metadata_accessors;

/// Role names Petrel and the specification reserve for top-level roles.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// Encodes a role name for use as (part of) a local file name: every byte outside
/// `[A-Za-z0-9._~-]`, and a leading `.`, is percent-encoded, so a role name can never name
/// a directory, a parent, or a hidden file.
///
/// Not for URLs: a role name in a request URL is one RFC 3986 path segment, where `.` is
/// unreserved wherever it stands ([`crate::fetch::encode_path_segment`]).
pub fn encode_role_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'~')
            || (b == b'.' && !out.is_empty())
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_cannot_escape_a_directory() {
        assert_eq!(encode_role_name("../x"), "%2E.%2Fx");
        assert_eq!(encode_role_name("a/b"), "a%2Fb");
        assert_eq!(encode_role_name(".hidden"), "%2Ehidden");
        assert_eq!(encode_role_name("bins-0a"), "bins-0a");
    }

    #[test]
    fn spec_major_parses_semver_only() {
        assert_eq!(spec_major("1.0.34"), Some(1));
        assert_eq!(spec_major("1.0"), Some(1));
        assert_eq!(spec_major("2.0.0"), Some(2));
        assert_eq!(spec_major("1"), None);
        assert_eq!(spec_major("x.1.0"), None);
    }

    #[test]
    fn datetimes_accept_spec_and_rfc3339_forms() {
        assert!(parse_datetime("2030-01-01T00:00:00Z").is_ok());
        assert!(parse_datetime("2030-01-01T00:00:00.5Z").is_ok());
        assert!(parse_datetime("2030-01-01").is_err());
    }

    #[test]
    fn an_expiry_with_sub_second_digits_survives_a_file_round_trip() {
        for (written, read) in [
            ("2124-01-01T00:00:01.50Z", "2124-01-01T00:00:01Z"),
            (
                "2124-01-01T00:00:01.999999999+00:00",
                "2124-01-01T00:00:01Z",
            ),
            ("2124-01-01T00:00:01Z", "2124-01-01T00:00:01Z"),
        ] {
            let e: Expires = serde_json::from_value(serde_json::json!(written)).unwrap();
            let back = serde_json::to_value(e).unwrap();
            assert_eq!(back, serde_json::json!(read), "{written}");
            let again: Expires = serde_json::from_value(back).unwrap();
            assert_eq!(again, e, "{written} changed in a round trip");
        }
    }
}

//! Petrel's manifest formats: group manifests, campaign manifests, assignment bins and the
//! scoped-key capabilities carried by delegations.
//!
//! Release engineers author manifests as TOML; the repo tool compiles them to canonical JSON
//! ([`crate::tuf::canonical`]) after validating them, and publishes them as TUF targets under
//! their own delegated roles:
//!
//! | format | type | target path |
//! | --- | --- | --- |
//! | group manifest | [`GroupManifest`] | `groups/<group>.json` |
//! | campaign manifest | [`CampaignManifest`] | `campaigns/<campaign>.json` |
//! | assignment bin | [`AssignmentBin`] | `assign/<bin>.json` |
//! | campaign index | [`CampaignIndex`] | `index/fleet.json`, `index/group-<group>.json` |
//! | capabilities | [`Capabilities`] | `"petrel_capabilities"` inside a delegated role |
//!
//! Every format carries `kind` and `schema_version`. Parsing is strict: an unknown schema
//! version, an unknown field, or a value breaking a rule is an error naming the field
//! ([`ValidationError`]). A device therefore never acts on a manifest it only half
//! understands. `docs/formats.md` documents each format field by field.
//!
//! ```
//! use petrel_client::manifest::{GroupManifest, Manifest};
//!
//! let toml = r#"
//! kind = "group"
//! schema_version = 1
//! id = "kiosk-eu"
//! revision = 3
//!
//! [apps."acme.player"]
//! version = "2.1.0"
//! target = "apps/acme/player/2.1.0/player.bin"
//! "#;
//! let group = GroupManifest::from_toml(toml)?;
//! let json = group.to_canonical_json()?;
//! assert_eq!(GroupManifest::from_json(&json)?, group);
//! # Ok::<(), petrel_client::manifest::ValidationError>(())
//! ```

mod assign;
mod campaign;
mod capability;
mod common;
mod group;
mod index;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use assign::*;
pub use campaign::*;
pub use capability::*;
pub use common::*;
pub use group::*;
pub use index::*;

use crate::tuf::canonical;

/// The schema version of every manifest format this client reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest manifest (TOML or JSON) accepted, in bytes. Assignment bins are the largest
/// format; 8 MiB holds about 60 000 device entries, far beyond a sensible bin.
pub const MAX_MANIFEST_BYTES: usize = 8 * 1024 * 1024;

/// One thing wrong with a manifest: the field (a dotted path such as
/// `apps."acme.player".target`, or a position in the source for syntax errors) and what is
/// wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: a dotted field path, or `line L, column C` for a syntax error.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A manifest that cannot be accepted, with every problem found (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// What was being read (e.g. `campaign manifest`).
    pub what: String,
    /// The problems, in field order.
    pub problems: Vec<Problem>,
}

impl ValidationError {
    /// An error with a single problem.
    pub fn new(
        what: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ValidationError {
            what: what.into(),
            problems: vec![Problem {
                field: field.into(),
                message: message.into(),
            }],
        }
    }

    /// Whether some problem concerns `field` (exact match) — handy in tests.
    pub fn has_field(&self, field: &str) -> bool {
        self.problems.iter().any(|p| p.field == field)
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid {}: {one}", self.what),
            many => {
                write!(f, "invalid {} ({} problems):", self.what, many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ValidationError {}

/// Collects problems while validating, so an author sees all of them at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// No problems yet.
    pub fn new() -> Self {
        Problems::default()
    }

    /// Checks the header every manifest starts with: its `kind` and `schema_version`.
    pub fn check_header(
        &mut self,
        expected: ManifestKind,
        kind: ManifestKind,
        schema_version: u32,
    ) {
        if kind != expected {
            self.push(
                "kind",
                format!("is {:?}, expected {:?}", kind.as_str(), expected.as_str()),
            );
        }
        if schema_version != SCHEMA_VERSION {
            self.push(
                "schema_version",
                format!("unknown schema version {schema_version}"),
            );
        }
    }

    /// Records a problem with `field`.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records the error of a check, if any.
    pub fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(m) = result {
            self.push(field, m);
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` if nothing was recorded, else the error.
    pub fn finish(self, what: &str) -> Result<(), ValidationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                what: what.to_string(),
                problems: self.0,
            })
        }
    }
}

/// The kind of a manifest: the value of its `kind` field.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ManifestKind {
    /// A group manifest (`groups/<group>.json`).
    Group,
    /// A campaign manifest (`campaigns/<campaign>.json`).
    Campaign,
    /// An assignment bin (`assign/<bin>.json`).
    Assign,
    /// A campaign index (`index/fleet.json`, `index/group-<group>.json`).
    Index,
}

impl ManifestKind {
    /// The `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ManifestKind::Group => "group",
            ManifestKind::Campaign => "campaign",
            ManifestKind::Assign => "assign",
            ManifestKind::Index => "index",
        }
    }

    /// The target-path namespace the kind is published under (`groups/`, …).
    pub fn namespace(self) -> &'static str {
        match self {
            ManifestKind::Group => "groups/",
            ManifestKind::Campaign => "campaigns/",
            ManifestKind::Assign => "assign/",
            ManifestKind::Index => "index/",
        }
    }

    /// A human name (`group manifest`).
    pub fn describe(self) -> &'static str {
        match self {
            ManifestKind::Group => "group manifest",
            ManifestKind::Campaign => "campaign manifest",
            ManifestKind::Assign => "assignment bin",
            ManifestKind::Index => "campaign index",
        }
    }
}

impl fmt::Display for ManifestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every manifest format can do: strict parsing from TOML (authoring) and JSON (the
/// published form), validation, and compilation to canonical JSON.
pub trait Manifest: Serialize + DeserializeOwned + Sized {
    /// The `kind` this type reads.
    const KIND: ManifestKind;

    /// Checks every rule serde cannot express; reports all problems found.
    fn validate(&self) -> Result<(), ValidationError>;

    /// Parses and validates an authored TOML manifest.
    fn from_toml(text: &str) -> Result<Self, ValidationError> {
        let what = Self::KIND.describe();
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(too_large(what, text.len()));
        }
        let value: toml::Value = toml::from_str(text).map_err(|e| toml_error(what, text, &e))?;
        let json = serde_json::to_value(&value)
            .map_err(|e| ValidationError::new(what, "", e.to_string()))?;
        check_header(what, Self::KIND, &json)?;
        // Deserialize from the TOML text itself (not the JSON value) so TOML date-times
        // and positions in errors keep working.
        let m: Self = toml::from_str(text).map_err(|e| toml_error(what, text, &e))?;
        m.validate()?;
        Ok(m)
    }

    /// Parses and validates a published JSON manifest. Strict: the kind must match, the
    /// schema version must be one this client knows, and unknown fields are errors.
    fn from_json(bytes: &[u8]) -> Result<Self, ValidationError> {
        let what = Self::KIND.describe();
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(too_large(what, bytes.len()));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ValidationError::new(
                what,
                format!("line {}, column {}", e.line(), e.column()),
                format!("not JSON: {e}"),
            )
        })?;
        check_header(what, Self::KIND, &value)?;
        let m: Self = serde_json::from_value(value)
            .map_err(|e| ValidationError::new(what, "", serde_message(&e.to_string())))?;
        m.validate()?;
        Ok(m)
    }

    /// The canonical JSON bytes to publish (see [`canonical_json`]). Validates first, so an
    /// invalid manifest is never compiled.
    fn to_canonical_json(&self) -> Result<Vec<u8>, ValidationError> {
        self.validate()?;
        canonical_json(self)
            .map_err(|e| ValidationError::new(Self::KIND.describe(), "", e.to_string()))
    }
}

/// The canonical bytes of a manifest (or a consent log line): the rules of TUF's canonical
/// JSON ([`crate::tuf::canonical`]: keys sorted by code point, no insignificant whitespace,
/// integers only) **plus** standard JSON escaping of control characters in strings.
///
/// OLPC canonical JSON escapes only `"` and `\`, so a notice body with a line break (or a
/// PEM public key) would come out as bytes no JSON parser accepts. Manifests are published
/// and parsed as files, so they must be valid JSON: control characters are written as
/// `\n`, `\t`, `\u001f`, …, exactly as `serde_json` writes them. For strings without control
/// characters the bytes are identical to the OLPC form.
pub fn canonical_json<T: Serialize + ?Sized>(
    value: &T,
) -> Result<Vec<u8>, canonical::CanonicalError> {
    let v = serde_json::to_value(value)
        .map_err(|e| canonical::CanonicalError::Serialize(e.to_string()))?;
    canonical_json_value(&v)
}

/// [`canonical_json`] of a parsed JSON value.
pub fn canonical_json_value(value: &Value) -> Result<Vec<u8>, canonical::CanonicalError> {
    let mut out = Vec::with_capacity(512);
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), canonical::CanonicalError> {
    match value {
        Value::Null | Value::Bool(_) => out.extend_from_slice(value.to_string().as_bytes()),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else {
                return Err(canonical::CanonicalError::Float(n.to_string()));
            }
        }
        Value::String(s) => write_json_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(k, out);
                out.push(b':');
                write_canonical(&map[k.as_str()], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing a string to memory cannot fail");
}

fn too_large(what: &str, len: usize) -> ValidationError {
    ValidationError::new(
        what,
        "",
        format!("{len} bytes is more than the {MAX_MANIFEST_BYTES}-byte limit"),
    )
}

/// Checks `kind` and `schema_version` before anything else, so a manifest of another kind
/// or a newer schema gets that explanation rather than a confusing field error.
fn check_header(what: &str, kind: ManifestKind, v: &Value) -> Result<(), ValidationError> {
    let Some(obj) = v.as_object() else {
        return Err(ValidationError::new(what, "", "must be a table/object"));
    };
    match obj.get("kind") {
        None => {
            return Err(ValidationError::new(
                what,
                "kind",
                format!("missing; expected \"{kind}\""),
            ))
        }
        Some(Value::String(s)) if s == kind.as_str() => {}
        Some(other) => {
            return Err(ValidationError::new(
                what,
                "kind",
                format!("is {other}, expected \"{kind}\" (a manifest of another kind?)"),
            ))
        }
    }
    match obj.get("schema_version") {
        None => Err(ValidationError::new(
            what,
            "schema_version",
            format!("missing; this client reads schema version {SCHEMA_VERSION}"),
        )),
        Some(Value::Number(n)) if n.as_u64() == Some(SCHEMA_VERSION as u64) => Ok(()),
        Some(other) => Err(ValidationError::new(
            what,
            "schema_version",
            format!("unknown schema version {other}; this client reads only schema version {SCHEMA_VERSION}"),
        )),
    }
}

/// Turns a TOML error into a problem pointing at the line and, where the message names it,
/// the key.
fn toml_error(what: &str, text: &str, e: &toml::de::Error) -> ValidationError {
    let mut field = String::new();
    if let Some(span) = e.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        field = format!("line {line}, column {col}");
        if let Some(src) = text.lines().nth(line - 1) {
            field.push_str(&format!(" (`{}`)", src.trim()));
        }
    }
    ValidationError::new(what, field, serde_message(e.message()))
}

/// Tidies serde's messages a little ("unknown field `x`, expected one of …" is kept).
fn serde_message(m: &str) -> String {
    m.trim().trim_end_matches('.').replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_escapes_control_characters_and_otherwise_matches_olpc() {
        let v = serde_json::json!({"b": "line 1\nline 2\u{1}", "a": [1, -2, "\"q\" \\ é/"]});
        let bytes = canonical_json_value(&v).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"a":[1,-2,"\"q\" \\ é/"],"b":"line 1\nline 2\u0001"}"#
        );
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), v);
        let plain = serde_json::json!({"z": {"y": [true, null]}, "a": "x \"y\""});
        assert_eq!(
            canonical_json_value(&plain).unwrap(),
            canonical::canonicalize(&plain).unwrap()
        );
        assert!(canonical_json_value(&serde_json::json!(1.5)).is_err());
    }

    #[test]
    fn header_errors_are_specific() {
        let e = GroupManifest::from_json(br#"{"kind":"campaign","schema_version":1}"#).unwrap_err();
        assert!(e.has_field("kind"), "{e}");
        let e = GroupManifest::from_json(br#"{"kind":"group","schema_version":2}"#).unwrap_err();
        assert!(e.to_string().contains("unknown schema version 2"), "{e}");
        let e = GroupManifest::from_json(br#"{"kind":"group"}"#).unwrap_err();
        assert!(e.has_field("schema_version"), "{e}");
        let e = GroupManifest::from_json(b"[1]").unwrap_err();
        assert!(e.to_string().contains("object"), "{e}");
    }

    #[test]
    fn toml_syntax_errors_name_the_line() {
        let e =
            GroupManifest::from_toml("kind = \"group\"\nschema_version = 1\nid = \n").unwrap_err();
        assert!(e.problems[0].field.starts_with("line 3"), "{e}");
    }

    #[test]
    fn display_lists_every_problem() {
        let mut p = Problems::new();
        p.push("a", "x");
        p.push("b", "y");
        let e = p.finish("group manifest").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid group manifest (2 problems):\n  - a: x\n  - b: y"
        );
    }
}

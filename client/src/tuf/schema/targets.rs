//! `targets.json` and delegated targets roles: target files and delegations.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::*;
use super::root::validate_role_keys;
use super::timestamp::validate_hashes;
use crate::tuf::pattern;

/// A target file's length, hashes and application-specific data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Exact length in bytes.
    pub length: u64,
    /// Digests of the file (Petrel writes sha256 and sha512).
    pub hashes: Hashes,
    /// Opaque application data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// The signed part of `targets.json` or of a delegated role's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Always `"targets"`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// The specification version the writer followed.
    pub spec_version: String,
    /// Monotonic version number.
    pub version: u64,
    /// When this metadata stops being trusted.
    pub expires: Expires,
    /// Target path → file description.
    pub targets: BTreeMap<String, TargetFile>,
    /// Roles this role delegates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// Keys and delegated roles (a list, in priority order) or succinct hashed bins (TAP 15).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    /// Keys used by the delegated roles.
    pub keys: BTreeMap<KeyId, Key>,
    /// Delegated roles in priority order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<DelegatedRole>>,
    /// Succinct hashed-bin delegation, exclusive with `roles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succinct_roles: Option<SuccinctRoles>,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// One delegated role: who signs it and which target paths it may describe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// The role's name (also its metadata file name).
    pub name: String,
    /// Keys allowed to sign for the role.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must sign.
    pub threshold: u32,
    /// If true, the search stops here for paths this role matches.
    #[serde(default)]
    pub terminating: bool,
    /// Shell-style path patterns (`*` and `?` do not match `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Hex prefixes of the SHA-256 of target paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Fields Petrel does not interpret (Petrel's capabilities live here until typed).
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl DelegatedRole {
    /// Whether this role is trusted for `target_path` (by pattern or hash prefix).
    pub fn matches(&self, target_path: &str) -> bool {
        if let Some(paths) = &self.paths {
            return paths.iter().any(|p| pattern::matches(p, target_path));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let digest = pattern::path_hash_hex(target_path);
            return prefixes
                .iter()
                .any(|p| digest.starts_with(&p.to_ascii_lowercase()));
        }
        false
    }
}

/// TAP 15 succinct hashed bins: `2^bit_length` roles named `<name_prefix>-<hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccinctRoles {
    /// Keys allowed to sign every bin.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must sign each bin.
    pub threshold: u32,
    /// Number of leading hash bits that select the bin (1..=32).
    pub bit_length: u32,
    /// Bin name prefix.
    pub name_prefix: String,
    /// Fields Petrel does not interpret.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl SuccinctRoles {
    /// Number of bins.
    pub fn bin_count(&self) -> u64 {
        1u64 << self.bit_length
    }

    fn suffix_len(&self) -> usize {
        format!("{:x}", self.bin_count() - 1).len()
    }

    /// The name of bin `n`.
    pub fn bin_name(&self, n: u64) -> String {
        format!(
            "{}-{:0width$x}",
            self.name_prefix,
            n,
            width = self.suffix_len()
        )
    }

    /// The bin responsible for a target path.
    pub fn bin_for_target(&self, target_path: &str) -> String {
        let digest = pattern::path_hash(target_path);
        let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let n = if self.bit_length >= 32 {
            first as u64
        } else {
            (first >> (32 - self.bit_length)) as u64
        };
        self.bin_name(n)
    }

    /// Whether `name` is one of the bins.
    pub fn is_bin(&self, name: &str) -> bool {
        let Some(suffix) = name
            .strip_prefix(self.name_prefix.as_str())
            .and_then(|s| s.strip_prefix('-'))
        else {
            return false;
        };
        suffix.len() == self.suffix_len()
            && suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && u64::from_str_radix(suffix, 16).is_ok_and(|n| n < self.bin_count())
    }

    /// All bin names in order.
    pub fn bin_names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.bin_count()).map(|n| self.bin_name(n))
    }
}

impl Delegations {
    /// The delegated roles responsible for `target_path`, in priority order, each with its
    /// terminating flag. Succinct bins yield exactly one role, which is terminating.
    pub fn roles_for_target(&self, target_path: &str) -> Vec<(String, bool)> {
        if let Some(s) = &self.succinct_roles {
            return vec![(s.bin_for_target(target_path), true)];
        }
        self.roles
            .iter()
            .flatten()
            .filter(|r| r.matches(target_path))
            .map(|r| (r.name.clone(), r.terminating))
            .collect()
    }

    /// The key ids and threshold for a delegated role named `name`, if this object delegates it.
    pub fn role_keys(&self, name: &str) -> Option<(&[KeyId], u32)> {
        if let Some(s) = &self.succinct_roles {
            return s.is_bin(name).then_some((s.keyids.as_slice(), s.threshold));
        }
        self.roles
            .iter()
            .flatten()
            .find(|r| r.name == name)
            .map(|r| (r.keyids.as_slice(), r.threshold))
    }

    /// Names of every role delegated here (all bins for succinct delegations).
    pub fn role_names(&self) -> Vec<String> {
        match &self.succinct_roles {
            Some(s) => s.bin_names().collect(),
            None => self
                .roles
                .iter()
                .flatten()
                .map(|r| r.name.clone())
                .collect(),
        }
    }
}

impl Metadata for Targets {
    const TYPE: &'static str = "targets";
    impl_metadata_accessors!();

    fn validate(&self) -> Result<(), SchemaError> {
        validate_common(self)?;
        for (path, t) in &self.targets {
            validate_hashes("targets metadata", path, &t.hashes)?;
            if let Some(c) = &t.custom {
                if !c.is_object() {
                    return Err(SchemaError::invalid(
                        "targets metadata",
                        format!("{path}: custom must be an object"),
                    ));
                }
            }
        }
        if let Some(d) = &self.delegations {
            d.validate()?;
        }
        Ok(())
    }
}

impl Delegations {
    fn validate(&self) -> Result<(), SchemaError> {
        const WHAT: &str = "delegations";
        match (&self.roles, &self.succinct_roles) {
            (Some(_), Some(_)) => {
                return Err(SchemaError::invalid(
                    WHAT,
                    "both \"roles\" and \"succinct_roles\" are set",
                ))
            }
            (None, None) => {
                return Err(SchemaError::invalid(
                    WHAT,
                    "one of \"roles\" or \"succinct_roles\" is required",
                ))
            }
            _ => {}
        }
        if let Some(s) = &self.succinct_roles {
            if !(1..=32).contains(&s.bit_length) {
                return Err(SchemaError::invalid(
                    WHAT,
                    "succinct_roles.bit_length must be in 1..=32",
                ));
            }
            validate_role_keys("succinct_roles", &s.keyids, s.threshold)?;
        }
        let mut names = BTreeSet::new();
        for r in self.roles.iter().flatten() {
            let what = format!("delegated role {:?}", r.name);
            if r.name.is_empty() {
                return Err(SchemaError::invalid(
                    WHAT,
                    "a delegated role has an empty name",
                ));
            }
            if TOP_LEVEL_ROLES.contains(&r.name.as_str()) {
                return Err(SchemaError::invalid(
                    &what,
                    "a top-level role name cannot be delegated",
                ));
            }
            if !names.insert(r.name.as_str()) {
                return Err(SchemaError::invalid(
                    &what,
                    "delegated more than once in the same object",
                ));
            }
            if r.paths.is_some() && r.path_hash_prefixes.is_some() {
                return Err(SchemaError::invalid(
                    &what,
                    "both \"paths\" and \"path_hash_prefixes\" are set",
                ));
            }
            if let Some(p) = &r.path_hash_prefixes {
                if p.iter().any(|x| !x.bytes().all(|b| b.is_ascii_hexdigit())) {
                    return Err(SchemaError::invalid(
                        &what,
                        "path_hash_prefixes must be hex",
                    ));
                }
            }
            validate_role_keys(&what, &r.keyids, r.threshold)?;
        }
        Ok(())
    }
}

/// Checks that a target path is safe to use as a relative file path anywhere: non-empty,
/// `/`-separated, no empty, `.` or `..` segments, not absolute, no backslashes, no NUL or
/// other control characters, at most 4096 bytes. Returns the reason when it is not.
pub fn check_target_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty target path".into());
    }
    if path.len() > 4096 {
        return Err("target path longer than 4096 bytes".into());
    }
    if path.starts_with('/') {
        return Err("absolute target path (starts with /)".into());
    }
    if path.contains('\\') {
        return Err("backslash in target path".into());
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(format!("control character {c:?} in target path"));
    }
    for seg in path.split('/') {
        match seg {
            "" => return Err("empty path segment (// or trailing /)".into()),
            "." | ".." => return Err(format!("{seg:?} segment in target path")),
            _ => {}
        }
    }
    if path.len() >= 2 && path.as_bytes()[1] == b':' && path.as_bytes()[0].is_ascii_alphabetic() {
        return Err("drive-letter path".into());
    }
    Ok(())
}

#[cfg(test)]
mod path_tests {
    use super::check_target_path;

    #[test]
    fn traversal_and_odd_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/",
            "./a",
            "a\\b",
            "a\u{0}b",
            "C:x",
            "a/\nb",
        ] {
            assert!(check_target_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a",
            "apps/v/app/1.0/app.bin",
            "..a",
            "a..",
            "é/ü.txt",
            "a b",
        ] {
            assert!(check_target_path(good).is_ok(), "{good:?} refused");
        }
    }
}

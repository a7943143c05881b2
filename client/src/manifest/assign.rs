//! Assignment bins: device → group, sharded by a hash of the device id so a device fetches
//! only its own bin (`assign/<bin>.json`). Device ids never appear in clear.
//!
//! Two hashes are involved, both `SHA-256(salt || 0x00 || device_id)` in lowercase hex:
//!
//! * the **bin**: the first `digits` hex characters of the hash with the repository-wide
//!   constant salt [`ASSIGN_BIN_SALT`]. The device computes it before it has any bin. Only a
//!   few bits of it are published (as the file name).
//! * the **entry key**: the hash with the bin's own random `salt` (written in the bin
//!   file). A fresh salt per bin and publication means a table of hashed ids made for one
//!   repository does not work for another.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::common::*;
use super::{Manifest, ManifestKind, Problems, ValidationError};

/// The repository-wide constant salt of the bin hash (part of the format).
pub const ASSIGN_BIN_SALT: &str = "petrel-assign-bin-v1";

/// The default number of hex digits of a bin name (2: 256 bins).
pub const DEFAULT_BIN_DIGITS: usize = 2;

/// The most hex digits a bin name may have.
pub const MAX_BIN_DIGITS: usize = 6;

/// `hex(SHA-256(salt || 0x00 || device_id))`.
pub fn salted_device_hash(salt: &str, device_id: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt.as_bytes());
    ctx.update(&[0]);
    ctx.update(device_id.as_bytes());
    hex::encode(ctx.finish())
}

/// The bin of a device: the first `digits` hex characters of its bin hash.
pub fn assign_bin_for(device_id: &str, digits: usize) -> String {
    let digits = digits.clamp(1, MAX_BIN_DIGITS);
    salted_device_hash(ASSIGN_BIN_SALT, device_id)[..digits].to_string()
}

/// `assign/<bin>.json` for a device.
pub fn assign_target_path(device_id: &str, digits: usize) -> String {
    assign_bin_target_path(&assign_bin_for(device_id, digits))
}

/// `assign/<bin>.json`.
pub fn assign_bin_target_path(bin: &str) -> String {
    format!("assign/{bin}.json")
}

/// One shard of the device → group assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentBin {
    /// Always [`ManifestKind::Assign`].
    pub kind: ManifestKind,
    /// Always [`super::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The bin name: 1 to 6 lowercase hex digits; the file is `assign/<bin>.json`.
    pub bin: String,
    /// Starts at 1 and only grows.
    pub revision: u64,
    /// The salt of the entry keys: at least 32 lowercase hex characters (16 bytes).
    pub salt: String,
    /// Entry key (`hex(SHA-256(salt || 0x00 || device_id))`) → assignment.
    #[serde(default)]
    pub devices: BTreeMap<String, Assignment>,
}

/// Where one device belongs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The device's group (exactly one).
    pub group: String,
    /// A canary (test) device: it gets campaigns with a canary stage first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canary: bool,
    /// Campaigns this device is explicitly enrolled in (for `applies_to.assigned_only`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub campaigns: BTreeSet<String>,
}

impl Assignment {
    /// A plain assignment to `group`.
    pub fn to_group(group: impl Into<String>) -> Assignment {
        Assignment {
            group: group.into(),
            canary: false,
            campaigns: BTreeSet::new(),
        }
    }
}

impl AssignmentBin {
    /// An empty bin at revision 1.
    pub fn new(bin: impl Into<String>, salt: impl Into<String>) -> AssignmentBin {
        AssignmentBin {
            kind: ManifestKind::Assign,
            schema_version: super::SCHEMA_VERSION,
            bin: bin.into(),
            revision: 1,
            salt: salt.into(),
            devices: BTreeMap::new(),
        }
    }

    /// A fresh random salt (16 bytes, hex).
    pub fn random_salt() -> String {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .expect("system random generator");
        hex::encode(b)
    }

    /// The target path this bin is published under.
    pub fn target_path(&self) -> String {
        assign_bin_target_path(&self.bin)
    }

    /// The entry key of `device_id` in this bin.
    pub fn entry_key(&self, device_id: &str) -> String {
        salted_device_hash(&self.salt, device_id)
    }

    /// Whether `device_id` belongs in this bin.
    pub fn holds(&self, device_id: &str) -> bool {
        assign_bin_for(device_id, self.bin.len()) == self.bin
    }

    /// The assignment of `device_id`, if this bin lists it.
    pub fn lookup(&self, device_id: &str) -> Option<&Assignment> {
        if !self.holds(device_id) {
            return None;
        }
        self.devices.get(&self.entry_key(device_id))
    }

    /// Adds or replaces the assignment of `device_id` (hashed; the id is not kept). Refuses a
    /// device that belongs in another bin.
    pub fn insert(&mut self, device_id: &str, a: Assignment) -> Result<(), String> {
        if !self.holds(device_id) {
            return Err(format!(
                "device belongs in bin {}, not {}",
                assign_bin_for(device_id, self.bin.len()),
                self.bin
            ));
        }
        let k = self.entry_key(device_id);
        self.devices.insert(k, a);
        Ok(())
    }

    /// Every group the bin assigns devices to.
    pub fn groups(&self) -> BTreeSet<&str> {
        self.devices.values().map(|a| a.group.as_str()).collect()
    }
}

impl Manifest for AssignmentBin {
    const KIND: ManifestKind = ManifestKind::Assign;

    fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems::new();
        p.check_header(Self::KIND, self.kind, self.schema_version);
        if self.bin.is_empty()
            || self.bin.len() > MAX_BIN_DIGITS
            || !self
                .bin
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            p.push(
                "bin",
                format!(
                    "{:?} is not 1 to {MAX_BIN_DIGITS} lowercase hex digits",
                    self.bin
                ),
            );
        }
        if self.revision == 0 {
            p.push("revision", "must be at least 1");
        }
        if self.salt.len() < 32
            || self.salt.len() > 128
            || !self
                .salt
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            p.push(
                "salt",
                "must be 32 to 128 lowercase hex characters (at least 16 random bytes)",
            );
        }
        for (k, a) in &self.devices {
            let f = format!("devices.{}", key(k));
            if check_sha256_hex(k).is_err() {
                p.push(
                    &f,
                    "entry keys are hex(SHA-256(salt || 0x00 || device_id)), never clear device ids",
                );
            }
            p.check(format!("{f}.group"), check_id(&a.group));
            for c in &a.campaigns {
                p.check(format!("{f}.campaigns"), check_id(c));
            }
        }
        p.finish("assignment bin")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_found_only_in_their_bin_and_only_hashed() {
        let id = "kiosk-0042";
        let bin = assign_bin_for(id, 2);
        let mut b = AssignmentBin::new(bin.clone(), AssignmentBin::random_salt());
        b.insert(id, Assignment::to_group("kiosk-eu")).unwrap();
        assert_eq!(b.lookup(id).unwrap().group, "kiosk-eu");
        assert!(b.lookup("kiosk-0043").is_none());
        let json = b.to_canonical_json().unwrap();
        assert!(!String::from_utf8_lossy(&json).contains(id));
        assert_eq!(AssignmentBin::from_json(&json).unwrap(), b);
        let other = (0..100)
            .map(|i| format!("d{i}"))
            .find(|d| assign_bin_for(d, 2) != bin)
            .unwrap();
        assert!(b.insert(&other, Assignment::to_group("x")).is_err());
        assert_eq!(b.target_path(), format!("assign/{bin}.json"));
    }

    #[test]
    fn clear_ids_and_weak_salts_are_refused() {
        let mut b = AssignmentBin::new("3f", "00");
        b.devices
            .insert("kiosk-0042".into(), Assignment::to_group("g"));
        let e = b.validate().unwrap_err();
        assert!(e.has_field("salt"), "{e}");
        assert!(e.has_field("devices.kiosk-0042"), "{e}");
    }

    #[test]
    fn salted_hash_is_domain_separated() {
        assert_ne!(salted_device_hash("a", "bc"), salted_device_hash("ab", "c"));
        assert_eq!(
            salted_device_hash("", ""),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }
}

//! What a device knows about itself: its profile (identity, equipment, place, clock offset)
//! and its actual installed inventory.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::manifest::{
    check_id, check_label, check_locale, check_sha256_hex, check_version, key, Problems,
    ValidationError,
};

/// A device's description of itself. Authored as TOML by whoever provisions the device;
/// the agent fills [`DeviceProfile::inventory`] from what is actually installed.
///
/// ```toml
/// id = "kiosk-0042"
/// type = "kiosk"
/// class = "indoor"
/// vendor = "acme"
/// hardware = ["display:1080p", "modem:em06"]
/// region = "eu-west"
/// channel = "stable"
/// licences = ["player-pro"]
/// utc_offset_minutes = 60
/// locale = "de-AT"
///
/// [inventory."acme.player"]
/// version = "2.0.1"
/// sha256 = "…"          # of the installed bytes, when known
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// The device id (serial number, …). It never leaves the device in clear: assignment
    /// bins and tokens use salted hashes of it.
    pub id: String,
    /// Device type (`kiosk`, `printer`, …).
    #[serde(rename = "type")]
    pub device_type: String,
    /// Device class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Hardware vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Hardware components.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub hardware: BTreeSet<String>,
    /// Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Channel (`stable`, `beta`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Licences or products the device holds.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub licences: BTreeSet<String>,
    /// Local time is UTC plus this many minutes (−840 to 840). Windows are evaluated in
    /// local time; the agent updates this when the device's time zone rules change it.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// The locale notices are shown in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// What is actually installed: application id → version and bytes hash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inventory: Inventory,
}

/// Application id → what is installed.
pub type Inventory = BTreeMap<String, InstalledApp>;

/// One installed application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledApp {
    /// The installed version.
    pub version: String,
    /// SHA-256 (hex) of the installed artifact's bytes, when the agent knows it. When it
    /// differs from the signed hash of the group's artifact for the same version, the
    /// application is reinstalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl InstalledApp {
    /// An installed version with unknown bytes hash.
    pub fn version(v: impl Into<String>) -> InstalledApp {
        InstalledApp {
            version: v.into(),
            sha256: None,
        }
    }
}

impl DeviceProfile {
    /// Parses and validates a TOML profile.
    pub fn from_toml(text: &str) -> Result<DeviceProfile, ValidationError> {
        let p: DeviceProfile = toml::from_str(text).map_err(|e| {
            ValidationError::new("device profile", "", e.message().trim().to_string())
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems::new();
        if self.id.is_empty() || self.id.len() > 256 || self.id.chars().any(|c| c.is_control()) {
            p.push(
                "id",
                "must be 1 to 256 characters without control characters",
            );
        }
        p.check("type", check_label(&self.device_type));
        for (name, v) in [
            ("class", &self.class),
            ("vendor", &self.vendor),
            ("region", &self.region),
            ("channel", &self.channel),
        ] {
            if let Some(v) = v {
                p.check(name, check_label(v));
            }
        }
        for h in &self.hardware {
            p.check("hardware", check_label(h));
        }
        for l in &self.licences {
            p.check("licences", check_label(l));
        }
        if !(-840..=840).contains(&self.utc_offset_minutes) {
            p.push(
                "utc_offset_minutes",
                format!("{} is not in -840..=840", self.utc_offset_minutes),
            );
        }
        if let Some(l) = &self.locale {
            p.check("locale", check_locale(l));
        }
        for (app, i) in &self.inventory {
            let f = format!("inventory.{}", key(app));
            p.check(&f, check_id(app));
            p.check(format!("{f}.version"), check_version(&i.version));
            if let Some(h) = &i.sha256 {
                p.check(format!("{f}.sha256"), check_sha256_hex(h));
            }
        }
        p.finish("device profile")
    }

    /// Application id → installed version.
    pub fn installed_versions(&self) -> BTreeMap<String, String> {
        self.inventory
            .iter()
            .map(|(k, v)| (k.clone(), v.version.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_from_toml() {
        let p = DeviceProfile::from_toml(
            r#"
id = "kiosk-0042"
type = "kiosk"
vendor = "acme"
hardware = ["display:1080p"]
utc_offset_minutes = 60
[inventory."acme.player"]
version = "2.0.1"
"#,
        )
        .unwrap();
        assert_eq!(p.inventory["acme.player"].version, "2.0.1");
        let e = DeviceProfile::from_toml("id = \"x\"\ntype = \"k\"\nutc_offset_minutes = 9999\n")
            .unwrap_err();
        assert!(e.has_field("utc_offset_minutes"));
        assert!(DeviceProfile::from_toml("id = \"x\"\ntype = \"k\"\ncolour = \"red\"\n").is_err());
    }
}

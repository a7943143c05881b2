//! Group manifests: a named, tested combination of applications (`groups/<group>.json`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::common::*;
use super::{Manifest, ManifestKind, Problems, ValidationError};
use crate::tuf::schema::check_target_path;

/// A tested combination of applications: exactly one version of each. Every device belongs
/// to exactly one group (through its assignment bin entry) and converges to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupManifest {
    /// Always [`ManifestKind::Group`].
    pub kind: ManifestKind,
    /// Always [`super::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The group's identifier; the manifest is published as `groups/<id>.json`.
    pub id: String,
    /// Starts at 1 and only grows; a device refuses a revision lower than one it has seen.
    pub revision: u64,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Application id → the one version the group runs. An application the group does not
    /// list is removed from its devices.
    #[serde(default)]
    pub apps: BTreeMap<String, GroupApp>,
}

/// One application of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupApp {
    /// The version (compared for equality only).
    pub version: String,
    /// The TUF target path of the artifact, under `apps/`.
    pub target: String,
    /// How the device installs the artifact (`file`, `tree`, `package`, …; the device's
    /// installer must know it). Absent means `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_type: Option<String>,
    /// What the application should be doing after installation. Absent means `keep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_install: Option<PostInstall>,
}

impl GroupManifest {
    /// A new, empty group at revision 1.
    pub fn new(id: impl Into<String>) -> GroupManifest {
        GroupManifest {
            kind: ManifestKind::Group,
            schema_version: super::SCHEMA_VERSION,
            id: id.into(),
            revision: 1,
            description: None,
            apps: BTreeMap::new(),
        }
    }

    /// The target path this manifest is published under.
    pub fn target_path(&self) -> String {
        group_target_path(&self.id)
    }

    /// Application id → version, the combination the group stands for.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.apps
            .iter()
            .map(|(id, a)| (id.clone(), a.version.clone()))
            .collect()
    }
}

/// `groups/<id>.json`.
pub fn group_target_path(id: &str) -> String {
    format!("groups/{id}.json")
}

/// Install types Petrel's own installer knows; others are allowed in the format (for
/// custom installers) but must be identifiers.
pub const KNOWN_INSTALL_TYPES: [&str; 4] = ["file", "tree", "package", "slot"];

impl Manifest for GroupManifest {
    const KIND: ManifestKind = ManifestKind::Group;

    fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems::new();
        p.check_header(Self::KIND, self.kind, self.schema_version);
        p.check("id", check_id(&self.id));
        if self.revision == 0 {
            p.push("revision", "must be at least 1");
        }
        if let Some(d) = &self.description {
            if d.len() > 4096 {
                p.push("description", "longer than 4096 bytes");
            }
        }
        let mut targets = BTreeSet::new();
        for (id, app) in &self.apps {
            let f = format!("apps.{}", key(id));
            p.check(&f, check_id(id));
            p.check(format!("{f}.version"), check_version(&app.version));
            match check_target_path(&app.target) {
                Err(e) => p.push(format!("{f}.target"), e),
                Ok(()) if !app.target.starts_with("apps/") => p.push(
                    format!("{f}.target"),
                    format!("{:?} is not under apps/", app.target),
                ),
                Ok(()) => {
                    if !targets.insert(app.target.as_str()) {
                        p.push(
                            format!("{f}.target"),
                            format!(
                                "{:?} is already the target of another application",
                                app.target
                            ),
                        );
                    }
                }
            }
            if let Some(t) = &app.install_type {
                p.check(format!("{f}.install_type"), check_id(t));
            }
        }
        p.finish("group manifest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
kind = "group"
schema_version = 1
id = "kiosk-eu"
revision = 7
description = "Kiosks in the EU"

[apps."acme.player"]
version = "2.1.0"
target = "apps/acme/player/2.1.0/player.bin"
post_install = "start"

[apps."acme.fonts"]
version = "1.0"
target = "apps/acme/fonts/1.0"
install_type = "tree"
"#;

    #[test]
    fn parses_and_round_trips() {
        let g = GroupManifest::from_toml(GOOD).unwrap();
        assert_eq!(g.revision, 7);
        assert_eq!(g.apps["acme.player"].post_install, Some(PostInstall::Start));
        let json = g.to_canonical_json().unwrap();
        assert!(json.starts_with(br#"{"apps":{"acme.fonts":"#));
        assert_eq!(GroupManifest::from_json(&json).unwrap(), g);
        assert_eq!(g.target_path(), "groups/kiosk-eu.json");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let bad = GOOD
            .replace("revision = 7", "revision = 0")
            .replace("apps/acme/fonts/1.0", "../etc")
            .replace("\"2.1.0\"", "\"2.1 0\"");
        let e = GroupManifest::from_toml(&bad).unwrap_err();
        assert!(e.has_field("revision"), "{e}");
        assert!(e.has_field("apps.\"acme.fonts\".target"), "{e}");
        assert!(e.has_field("apps.\"acme.player\".version"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = GroupManifest::from_toml(&GOOD.replace("post_install", "post_instal")).unwrap_err();
        assert!(e.to_string().contains("unknown field `post_instal`"), "{e}");
    }

    #[test]
    fn duplicate_targets_are_refused() {
        let bad = GOOD.replace("apps/acme/fonts/1.0", "apps/acme/player/2.1.0/player.bin");
        assert!(GroupManifest::from_toml(&bad).is_err());
    }
}

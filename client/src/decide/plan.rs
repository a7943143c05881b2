//! The convergence plan: add / update / reinstall / remove against the device's actual
//! inventory, so that afterwards the device runs exactly its group's combination.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::profile::Inventory;
use super::view::{ArtifactInfo, DeltaInfo};
use crate::manifest::{GroupManifest, PostInstall};

/// What to do to one application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Change {
    /// Install an application the device does not have.
    Add {
        /// The version to install.
        version: String,
        /// Its artifact's target path.
        target: String,
    },
    /// Replace the installed version with another.
    Update {
        /// The installed version.
        from: String,
        /// The group's version.
        to: String,
        /// Its artifact's target path.
        target: String,
    },
    /// Install the same version again: the installed bytes are not the signed ones.
    Reinstall {
        /// The version.
        version: String,
        /// Its artifact's target path.
        target: String,
    },
    /// Remove an application the group does not list.
    Remove {
        /// The installed version.
        version: String,
    },
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The application.
    pub app: String,
    /// The change.
    #[serde(flatten)]
    pub change: Change,
    /// How the artifact is installed (from the group manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_type: Option<String>,
    /// What the application should be doing afterwards.
    pub post_install: PostInstall,
}

impl Step {
    /// The artifact target to stage, if the step installs something.
    pub fn target(&self) -> Option<&str> {
        match &self.change {
            Change::Add { target, .. }
            | Change::Update { target, .. }
            | Change::Reinstall { target, .. } => Some(target),
            Change::Remove { .. } => None,
        }
    }

    /// The version installed after the step (`None` for a removal).
    pub fn result_version(&self) -> Option<&str> {
        match &self.change {
            Change::Add { version, .. } | Change::Reinstall { version, .. } => Some(version),
            Change::Update { to, .. } => Some(to),
            Change::Remove { .. } => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.change {
            Change::Add { version, target } => write!(f, "add {} {version} ({target})", self.app)?,
            Change::Update { from, to, target } => write!(f, "update {} {from} -> {to} ({target})", self.app)?,
            Change::Reinstall { version, target } => write!(
                f,
                "reinstall {} {version} ({target}): the installed bytes differ from the signed artifact",
                self.app
            )?,
            Change::Remove { version } => write!(f, "remove {} {version} (not in the group)", self.app)?,
        }
        if self.result_version().is_some() && self.post_install != PostInstall::Keep {
            write!(f, ", then {}", self.post_install)?;
        }
        Ok(())
    }
}

/// Everything that must change for the device to run exactly `group` at `revision`.
/// Applied all-or-nothing by the apply stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The group converged to.
    pub group: String,
    /// Its revision.
    pub revision: u64,
    /// The changes, by application id (empty: already converged).
    pub steps: Vec<Step>,
}

impl Plan {
    /// Whether the device already runs the group exactly.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The application versions after applying the plan to `inventory`.
    pub fn result(&self, inventory: &Inventory) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = inventory
            .iter()
            .map(|(k, v)| (k.clone(), v.version.clone()))
            .collect();
        for s in &self.steps {
            match s.result_version() {
                Some(v) => {
                    out.insert(s.app.clone(), v.to_string());
                }
                None => {
                    out.remove(&s.app);
                }
            }
        }
        out
    }

    /// Artifact target paths the plan installs.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().filter_map(Step::target)
    }
}

/// Computes the plan that brings `inventory` to exactly `group`: every application the group
/// lists at its version (and, where both hashes are known, with the signed bytes), and no
/// other application.
pub fn converge(
    group: &GroupManifest,
    inventory: &Inventory,
    artifacts: &BTreeMap<String, ArtifactInfo>,
    post_install_override: Option<PostInstall>,
) -> Plan {
    let mut steps = Vec::new();
    for (app, want) in &group.apps {
        let change = match inventory.get(app) {
            None => Some(Change::Add {
                version: want.version.clone(),
                target: want.target.clone(),
            }),
            Some(have) if have.version != want.version => Some(Change::Update {
                from: have.version.clone(),
                to: want.version.clone(),
                target: want.target.clone(),
            }),
            Some(have) => {
                let signed = artifacts.get(&want.target).map(|a| a.sha256.as_str());
                match (have.sha256.as_deref(), signed) {
                    (Some(h), Some(s)) if !h.eq_ignore_ascii_case(s) => Some(Change::Reinstall {
                        version: want.version.clone(),
                        target: want.target.clone(),
                    }),
                    _ => None,
                }
            }
        };
        if let Some(change) = change {
            steps.push(Step {
                app: app.clone(),
                change,
                install_type: want.install_type.clone(),
                post_install: post_install_override
                    .or(want.post_install)
                    .unwrap_or_default(),
            });
        }
    }
    for (app, have) in inventory {
        if !group.apps.contains_key(app) {
            steps.push(Step {
                app: app.clone(),
                change: Change::Remove {
                    version: have.version.clone(),
                },
                install_type: None,
                post_install: PostInstall::Keep,
            });
        }
    }
    steps.sort_by(|a, b| a.app.cmp(&b.app));
    Plan {
        group: group.id.clone(),
        revision: group.revision,
        steps,
    }
}

/// One artifact to download into staging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadItem {
    /// The application.
    pub app: String,
    /// The version.
    pub version: String,
    /// The artifact's target path.
    pub target: String,
    /// The artifact's length.
    pub length: u64,
    /// The artifact's signed SHA-256.
    pub sha256: String,
    /// A delta whose base is exactly the installed bytes, if the repository offers one;
    /// the agent may fetch it instead and must verify the result against `sha256` (and
    /// fall back to the full artifact on any problem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaInfo>,
}

impl DownloadItem {
    /// Bytes to transfer: the delta's length if there is one, else the artifact's.
    pub fn transfer_bytes(&self) -> u64 {
        self.delta.as_ref().map_or(self.length, |d| d.length)
    }
}

/// Renders a byte count (`12.3 MB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

//! Does a device match a set of selectors? The device matches itself; nothing about it is
//! sent anywhere.
//!
//! The same code matches a campaign's `applies_to` and the selectors of a rollout wave.

use std::collections::BTreeSet;

use crate::decide::profile::DeviceProfile;
use crate::manifest::{Assignment, Selectors};

/// The outcome of one selector against the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorCheck {
    /// The selector's field name (`regions`, `hardware_any`, …).
    pub field: &'static str,
    /// Whether it matched.
    pub matched: bool,
    /// What was found, as one line (`region eu-west is one of [eu-west]`).
    pub detail: String,
    /// The device's side, short: what it has for this selector (`region eu-west`,
    /// `hardware display:1080p`), or what it lacks (`no region`).
    pub device: String,
}

/// Matches every selector set in `sel` against the device, one [`SelectorCheck`] per
/// selector, in a fixed order. `who` names the selectors' owner in the details ("the
/// campaign", "the wave").
pub fn check_selectors(
    sel: &Selectors,
    profile: &DeviceProfile,
    assignment: Option<&Assignment>,
    campaign_id: &str,
    who: &str,
) -> Vec<SelectorCheck> {
    let mut out = Vec::new();
    let mut push = |field, matched, detail: String, device: String| {
        out.push(SelectorCheck {
            field,
            matched,
            detail,
            device,
        })
    };
    let mut one_of =
        |field: &'static str, name: &str, have: Option<&String>, list: &BTreeSet<String>| {
            if list.is_empty() {
                return;
            }
            let want = join(list);
            match have {
                Some(v) if list.contains(v) => push(
                    field,
                    true,
                    format!("{name} {v} is one of [{want}]"),
                    format!("{name} {v}"),
                ),
                Some(v) => push(
                    field,
                    false,
                    format!("{name} {v} is not one of [{want}]"),
                    format!("{name} {v}"),
                ),
                None => push(
                    field,
                    false,
                    format!("the device has no {name}; {who} wants one of [{want}]"),
                    format!("no {name}"),
                ),
            }
        };
    one_of(
        "device_types",
        "type",
        Some(&profile.device_type),
        &sel.device_types,
    );
    one_of(
        "device_classes",
        "class",
        profile.class.as_ref(),
        &sel.device_classes,
    );
    one_of("vendors", "vendor", profile.vendor.as_ref(), &sel.vendors);
    one_of("regions", "region", profile.region.as_ref(), &sel.regions);
    one_of(
        "channels",
        "channel",
        profile.channel.as_ref(),
        &sel.channels,
    );
    one_of("groups", "group", assignment.map(|a| &a.group), &sel.groups);

    let hardware = if profile.hardware.is_empty() {
        "no hardware".to_string()
    } else {
        format!("hardware {}", join(&profile.hardware))
    };
    if !sel.hardware_all.is_empty() {
        let missing: Vec<&str> = sel
            .hardware_all
            .iter()
            .filter(|h| !profile.hardware.contains(*h))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            push(
                "hardware_all",
                true,
                format!("has all hardware [{}]", join(&sel.hardware_all)),
                format!("hardware {}", join(&sel.hardware_all)),
            );
        } else {
            push(
                "hardware_all",
                false,
                format!(
                    "lacks hardware [{}] (needs all of [{}])",
                    missing.join(", "),
                    join(&sel.hardware_all)
                ),
                hardware.clone(),
            );
        }
    }
    if !sel.hardware_any.is_empty() {
        match sel
            .hardware_any
            .iter()
            .find(|h| profile.hardware.contains(*h))
        {
            Some(h) => push(
                "hardware_any",
                true,
                format!("has hardware {h} (one of [{}])", join(&sel.hardware_any)),
                format!("hardware {h}"),
            ),
            None => push(
                "hardware_any",
                false,
                format!("has none of the hardware [{}]", join(&sel.hardware_any)),
                hardware.clone(),
            ),
        }
    }
    if !sel.licences.is_empty() {
        match sel.licences.iter().find(|l| profile.licences.contains(*l)) {
            Some(l) => push(
                "licences",
                true,
                format!("holds licence {l} (one of [{}])", join(&sel.licences)),
                format!("licence {l}"),
            ),
            None => push(
                "licences",
                false,
                format!("holds none of the licences [{}]", join(&sel.licences)),
                if profile.licences.is_empty() {
                    "no licences".to_string()
                } else {
                    format!("licences {}", join(&profile.licences))
                },
            ),
        }
    }
    for (app, versions) in &sel.installed {
        match profile.inventory.get(app) {
            None => push(
                "installed",
                false,
                format!("{app} is not installed"),
                format!("no {app}"),
            ),
            Some(i) if versions.is_empty() || versions.contains(&i.version) => push(
                "installed",
                true,
                format!("{app} {} is installed", i.version),
                format!("{app} {}", i.version),
            ),
            Some(i) => push(
                "installed",
                false,
                format!(
                    "{app} {} is installed, not one of [{}]",
                    i.version,
                    join(versions)
                ),
                format!("{app} {}", i.version),
            ),
        }
    }
    for app in &sel.not_installed {
        match profile.inventory.get(app) {
            None => push(
                "not_installed",
                true,
                format!("{app} is not installed"),
                format!("no {app}"),
            ),
            Some(i) => push(
                "not_installed",
                false,
                format!(
                    "{app} {} is installed ({who} is for devices without it)",
                    i.version
                ),
                format!("{app} {}", i.version),
            ),
        }
    }
    if sel.assigned_only {
        match assignment {
            Some(a) if a.campaigns.contains(campaign_id) => push(
                "assigned_only",
                true,
                "the device's assignment enrols it explicitly".into(),
                "explicitly enrolled".into(),
            ),
            Some(_) => push(
                "assigned_only",
                false,
                "only for explicitly enrolled devices, and the device's assignment does not name this campaign".into(),
                "not enrolled".into(),
            ),
            None => push(
                "assigned_only",
                false,
                "only for explicitly enrolled devices, and the device has no assignment".into(),
                "no assignment".into(),
            ),
        }
    }
    out
}

/// Matches `sel` against the device. `Ok` carries one line per selector that matched (for
/// the explanation); `Err` carries one line per selector that did not.
pub fn match_selectors(
    sel: &Selectors,
    profile: &DeviceProfile,
    assignment: Option<&Assignment>,
    campaign_id: &str,
) -> Result<Vec<String>, Vec<String>> {
    let checks = check_selectors(sel, profile, assignment, campaign_id, "the campaign");
    let (ok, bad): (Vec<_>, Vec<_>) = checks.into_iter().partition(|c| c.matched);
    if bad.is_empty() {
        Ok(ok.into_iter().map(|c| c.detail).collect())
    } else {
        Err(bad.into_iter().map(|c| c.detail).collect())
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

//! Does a device match a set of selectors? The device matches itself; nothing about it is
//! sent anywhere.

use crate::decide::profile::DeviceProfile;
use crate::manifest::{Assignment, Selectors};

/// Matches `sel` against the device. `Ok` carries one line per selector that matched (for
/// the explanation); `Err` carries one line per selector that did not.
pub fn match_selectors(
    sel: &Selectors,
    profile: &DeviceProfile,
    assignment: Option<&Assignment>,
    campaign_id: &str,
) -> Result<Vec<String>, Vec<String>> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let one_of = |name: &str,
                  have: Option<&String>,
                  list: &std::collections::BTreeSet<String>,
                  ok: &mut Vec<String>,
                  bad: &mut Vec<String>| {
        if list.is_empty() {
            return;
        }
        let want = join(list);
        match have {
            Some(v) if list.contains(v) => ok.push(format!("{name} {v} is one of [{want}]")),
            Some(v) => bad.push(format!("{name} {v} is not one of [{want}]")),
            None => bad.push(format!(
                "the device has no {name}; the campaign wants one of [{want}]"
            )),
        }
    };
    one_of(
        "type",
        Some(&profile.device_type),
        &sel.device_types,
        &mut ok,
        &mut bad,
    );
    one_of(
        "class",
        profile.class.as_ref(),
        &sel.device_classes,
        &mut ok,
        &mut bad,
    );
    one_of(
        "vendor",
        profile.vendor.as_ref(),
        &sel.vendors,
        &mut ok,
        &mut bad,
    );
    one_of(
        "region",
        profile.region.as_ref(),
        &sel.regions,
        &mut ok,
        &mut bad,
    );
    one_of(
        "channel",
        profile.channel.as_ref(),
        &sel.channels,
        &mut ok,
        &mut bad,
    );
    one_of(
        "group",
        assignment.map(|a| &a.group),
        &sel.groups,
        &mut ok,
        &mut bad,
    );

    if !sel.hardware_all.is_empty() {
        let missing: Vec<&str> = sel
            .hardware_all
            .iter()
            .filter(|h| !profile.hardware.contains(*h))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            ok.push(format!("has all hardware [{}]", join(&sel.hardware_all)));
        } else {
            bad.push(format!(
                "lacks hardware [{}] (needs all of [{}])",
                missing.join(", "),
                join(&sel.hardware_all)
            ));
        }
    }
    if !sel.hardware_any.is_empty() {
        match sel
            .hardware_any
            .iter()
            .find(|h| profile.hardware.contains(*h))
        {
            Some(h) => ok.push(format!(
                "has hardware {h} (one of [{}])",
                join(&sel.hardware_any)
            )),
            None => bad.push(format!(
                "has none of the hardware [{}]",
                join(&sel.hardware_any)
            )),
        }
    }
    if !sel.licences.is_empty() {
        match sel.licences.iter().find(|l| profile.licences.contains(*l)) {
            Some(l) => ok.push(format!(
                "holds licence {l} (one of [{}])",
                join(&sel.licences)
            )),
            None => bad.push(format!(
                "holds none of the licences [{}]",
                join(&sel.licences)
            )),
        }
    }
    for (app, versions) in &sel.installed {
        match profile.inventory.get(app) {
            None => bad.push(format!("{app} is not installed")),
            Some(i) if versions.is_empty() || versions.contains(&i.version) => {
                ok.push(format!("{app} {} is installed", i.version))
            }
            Some(i) => bad.push(format!(
                "{app} {} is installed, not one of [{}]",
                i.version,
                join(versions)
            )),
        }
    }
    for app in &sel.not_installed {
        match profile.inventory.get(app) {
            None => ok.push(format!("{app} is not installed")),
            Some(i) => bad.push(format!(
                "{app} {} is installed (the campaign is for devices without it)",
                i.version
            )),
        }
    }
    if sel.assigned_only {
        match assignment {
            Some(a) if a.campaigns.contains(campaign_id) => {
                ok.push("the device's assignment enrols it explicitly".into())
            }
            Some(_) => bad.push("only for explicitly enrolled devices, and the device's assignment does not name this campaign".into()),
            None => bad.push("only for explicitly enrolled devices, and the device has no assignment".into()),
        }
    }
    if bad.is_empty() {
        Ok(ok)
    } else {
        Err(bad)
    }
}

fn join(set: &std::collections::BTreeSet<String>) -> String {
    set.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

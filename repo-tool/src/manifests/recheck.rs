//! The last check before `publish` signs anything: no manifest devices would reject for
//! exceeding the capabilities along its delegation chain is ever signed.
//!
//! `group set`, `assign` and `campaign create|update|halt|…` check a manifest when they
//! stage it, but what they checked can change before `publish`: `delegate --capabilities`
//! may narrow a grant over manifests already listed (it only warns), `petrel-repo add` may
//! list a manifest file directly, and a grant may expire in between. So `publish` checks
//! again, with the client's own check ([`CapabilityChain`]), every manifest whose verdict a
//! staged role can change: those listed by a staged role, campaigns and groups below a
//! staged delegator (whose capabilities may have changed), and assignment bins below a
//! delegation that changed.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use petrel_client::manifest::{
    AssignmentBin, CampaignManifest, CapabilityViolation, GroupManifest, Manifest,
};
use petrel_client::tuf::pattern;
use petrel_client::tuf::schema::Targets;

use super::lookup::{self, Listing};
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// The directories manifests are published under.
const MANIFEST_DIRS: [&str; 3] = ["campaigns", "groups", "assign"];

/// Whether `name` is a manifest target (`campaigns/<id>.json`, `groups/…`, `assign/…`).
fn manifest_dir(name: &str) -> Option<&'static str> {
    MANIFEST_DIRS.into_iter().find(|d| {
        name.strip_prefix(d)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|rest| !rest.contains('/') && rest.ends_with(".json"))
    })
}

/// Refuses to publish, before anything is signed, if devices would reject a manifest for
/// exceeding the capabilities along its delegation chain. Checks every manifest listed by
/// a staged targets role; every campaign and group whose chain passes through a staged
/// role; and every assignment bin below a role whose delegations differ from the published
/// ones (a grant narrowed, a path or key changed, or a new delegator). Bins are many, so
/// only the roles below a changed delegation are searched for them. The error names each
/// manifest, the role that signs it, the role whose capabilities forbid it, the capability
/// field and the reason. Manifests that do not parse are left to the device (which reports
/// them unusable): this is about capabilities.
pub fn check_before_publish(ws: &Workspace) -> Result<()> {
    let staged: BTreeSet<String> = ws
        .staged_roles()?
        .into_iter()
        .filter(|r| !matches!(r.as_str(), "root" | "snapshot" | "timestamp"))
        .collect();
    if staged.is_empty() {
        return Ok(());
    }
    let mut ed = Editor::new(ws);
    let now = ws.now();
    // A staged role matters if it lists a manifest or delegates (a grant may have changed).
    let mut listed_by_staged: BTreeSet<String> = BTreeSet::new();
    let mut delegators = false;
    for role in &staged {
        if !ed.has_role(role)? {
            continue;
        }
        let t = ed.targets(role)?;
        delegators |= t.delegations.is_some();
        listed_by_staged.extend(
            t.targets
                .keys()
                .filter(|n| manifest_dir(n).is_some())
                .cloned(),
        );
    }
    if listed_by_staged.is_empty() && !delegators {
        return Ok(());
    }
    let mut names = listed_by_staged.clone();
    let mut changed = BTreeSet::new();
    if delegators {
        // Campaigns and groups are few: every one under a staged delegator is checked.
        for dir in ["campaigns", "groups"] {
            names.extend(lookup::names_under(&mut ed, dir)?);
        }
        // Bins are many: only those below a delegation that actually changed.
        changed = changed_delegators(ws, &mut ed, &staged)?;
        names.extend(names_below(&mut ed, &changed, "assign")?);
    }
    let mut refused = Vec::new();
    for name in names {
        let Some(l) = lookup::find(&mut ed, &name)? else {
            continue;
        };
        let relevant = if manifest_dir(&name) == Some("assign") && !listed_by_staged.contains(&name)
        {
            // Its signer is not staged: only a changed delegation above it matters.
            l.chain[..l.chain.len().saturating_sub(1)]
                .iter()
                .any(|r| changed.contains(r))
        } else {
            l.chain.iter().any(|r| staged.contains(r))
        };
        if !relevant {
            continue;
        }
        if let Some(v) = check_listing(&mut ed, &l, now)? {
            refused.push(format!(
                "{} (signed by role {:?}, chain {}): {v}",
                l.name,
                l.role,
                l.chain.join(" -> ")
            ));
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::State(format!(
        "refusing to publish: devices would reject {} manifest(s) for exceeding the capabilities of their delegation chain; nothing was signed or written:\n  - {}\nchange the manifest (petrel-repo campaign update, group set, assign), remove it (petrel-repo remove --role ROLE NAME), or change the capabilities (petrel-repo delegate --from … --to … --capabilities FILE)",
        refused.len(),
        refused.join("\n  - ")
    )))
}

/// The staged roles whose delegations (roles, paths, keys, capabilities, hashed bins)
/// differ from their published metadata, or that delegate and were never published.
fn changed_delegators(
    ws: &Workspace,
    ed: &mut Editor<'_>,
    staged: &BTreeSet<String>,
) -> Result<BTreeSet<String>> {
    let mut changed = BTreeSet::new();
    for role in staged {
        if !ed.has_role(role)? {
            continue;
        }
        let now = ed.targets(role)?.delegations.clone();
        if now.is_none() {
            continue;
        }
        let published = ws
            .published::<Targets>(role)?
            .and_then(|t| t.signed.delegations);
        if published != now {
            changed.insert(role.clone());
        }
    }
    Ok(changed)
}

/// Whether a delegation path pattern can match some path directly under `dir`.
fn pattern_may_hold(p: &str, dir: &str) -> bool {
    p.contains('/') && pattern::matches(p.split('/').next().unwrap_or(""), dir)
}

/// Every target name directly under `dir/` (`.json`) listed by one of `roots` or a role
/// delegated, directly or not, from one of them, through delegations whose paths may hold
/// such names (hash-prefix and hashed-bin delegations may hold anything).
/// Roles elsewhere in the graph are not loaded.
fn names_below(
    ed: &mut Editor<'_>,
    roots: &BTreeSet<String>,
    dir: &str,
) -> Result<BTreeSet<String>> {
    let prefix = format!("{dir}/");
    let mut names = BTreeSet::new();
    let mut visited = BTreeSet::new();
    let mut stack: Vec<String> = roots.iter().cloned().collect();
    while let Some(role) = stack.pop() {
        if !visited.insert(role.clone()) || !ed.has_role(&role)? {
            continue;
        }
        let t: &Targets = ed.targets(&role)?;
        names.extend(
            t.targets
                .keys()
                .filter(|n| {
                    n.strip_prefix(&prefix)
                        .is_some_and(|rest| !rest.contains('/') && rest.ends_with(".json"))
                })
                .cloned(),
        );
        let Some(d) = &t.delegations else {
            continue;
        };
        if d.succinct_roles.is_some() {
            stack.extend(d.role_names());
        }
        for r in d.roles.iter().flatten() {
            let relevant = match (&r.paths, &r.path_hash_prefixes) {
                (Some(p), _) => p.iter().any(|p| pattern_may_hold(p, dir)),
                (None, Some(_)) => true,
                (None, None) => false,
            };
            if relevant {
                stack.push(r.name.clone());
            }
        }
    }
    Ok(names)
}

/// The capability verdict on one listed manifest (`None`: accepted, or not readable as
/// its kind).
fn check_listing(
    ed: &mut Editor<'_>,
    l: &Listing,
    now: DateTime<Utc>,
) -> Result<Option<CapabilityViolation>> {
    let Some(dir) = manifest_dir(&l.name) else {
        return Ok(None);
    };
    // Missing content is `publish`'s own error (it names the file); not this check's.
    let Ok(bytes) = lookup::read_listed(ed, l) else {
        return Ok(None);
    };
    let chain = lookup::capability_chain(ed, &l.chain)?;
    let verdict = match dir {
        "campaigns" => CampaignManifest::from_json(&bytes)
            .ok()
            .map(|m| chain.check_campaign(&m, now)),
        "groups" => GroupManifest::from_json(&bytes)
            .ok()
            .map(|m| chain.check_group(&m, now)),
        _ => AssignmentBin::from_json(&bytes)
            .ok()
            .map(|m| chain.check_assignment(&m, now)),
    };
    Ok(verdict.and_then(|r| r.err()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::editor::{self, DelegationSpec, InitOptions, KeyType};
    use crate::manifests::{
        assign_devices, create_campaign, set_delegation_capabilities, set_group, AssignOptions,
    };
    use crate::publish::{publish, Refresh};
    use crate::workspace::Settings;
    use petrel_client::manifest::{assign_target_path, Capabilities};
    use petrel_client::tuf::keys::KeySource;
    use petrel_client::tuf::schema::Unrecognized;
    use std::path::{Path, PathBuf};

    const GROUP: &str = r#"
kind = "group"
schema_version = 1
id = "kiosk-eu"
revision = 1

[apps."acme.player"]
version = "2.1.0"
target = "apps/acme.player/2.1.0/player.bin"
"#;

    fn campaign(policy: &str) -> String {
        format!(
            r#"
kind = "campaign"
schema_version = 1
id = "acme-player"
revision = 1
state = "active"

[notice.en]
title = "Player 2.1"
body = "Faster."
severity = "info"

[consent]
policy = "{policy}"

[applies_to]
vendors = ["acme"]

[payload]
group = {{ id = "kiosk-eu", revision = 1 }}
"#
        )
    }

    fn caps(policies: &str) -> Capabilities {
        Capabilities::from_toml(&format!(
            "schema_version = 1\nconsent_policies = [{policies}]\nvendors = [\"acme\"]\n"
        ))
        .unwrap()
    }

    /// Every file of the tree with its bytes.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let b = std::fs::read(&p).unwrap();
                    out.push((p, b));
                }
            }
        }
        out.sort();
        out
    }

    /// A published repository with group kiosk-eu, role `campaigns` delegating
    /// `campaigns/acme-*` to `partner-acme` (granted `policies`), and the partner's
    /// campaign with `policy`.
    fn repo(dir: &Path, policies: &str, policy: &str) -> Workspace {
        let ws = editor::init(
            dir,
            &InitOptions {
                settings: Settings::default(),
                ..InitOptions::default()
            },
        )
        .unwrap();
        let art = dir.join("player.bin");
        std::fs::write(&art, b"player").unwrap();
        let mut ed = Editor::new(&ws);
        ed.add_targets(
            &[editor::SourceFile {
                path: art,
                name: "apps/acme.player/2.1.0/player.bin".into(),
            }],
            &editor::AddOptions::default(),
        )
        .unwrap();
        for (from, to, paths) in [
            ("targets", "campaigns", "campaigns/*"),
            ("campaigns", "partner-acme", "campaigns/acme-*"),
        ] {
            let (k, pem) = KeyType::Ed25519.generate().unwrap();
            ws.save_private_key(&k, &pem).unwrap();
            ed.delegate(DelegationSpec {
                from: from.into(),
                name: to.into(),
                paths: Some(vec![paths.into()]),
                hash_prefixes: None,
                keys: vec![k.public_key().clone()],
                threshold: 1,
                terminating: true,
                extra: Unrecognized::new(),
            })
            .unwrap();
        }
        set_delegation_capabilities(
            &mut ed,
            "campaigns",
            "partner-acme",
            false,
            Some(&caps(policies)),
        )
        .unwrap();
        ed.save().unwrap();
        let g = dir.join("group.toml");
        std::fs::write(&g, GROUP).unwrap();
        set_group(&ws, &g, None).unwrap();
        let c = dir.join("acme-player.toml");
        std::fs::write(&c, campaign(policy)).unwrap();
        create_campaign(&ws, &c, Some("partner-acme")).unwrap();
        publish(&ws, Refresh::default()).unwrap();
        ws
    }

    #[test]
    fn publish_refuses_a_campaign_a_narrowed_grant_no_longer_allows_and_leaves_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let ws = repo(d.path(), "\"required\", \"acknowledge\"", "required");
        let before = snapshot(&ws.tree_dir());
        let mut ed = Editor::new(&ws);
        set_delegation_capabilities(
            &mut ed,
            "campaigns",
            "partner-acme",
            false,
            Some(&caps("\"acknowledge\"")),
        )
        .unwrap();
        ed.save().unwrap();
        let e = publish(&ws, Refresh::default()).unwrap_err().to_string();
        for part in [
            "campaigns/acme-player.json",
            "signed by role \"partner-acme\"",
            "capabilities of role \"partner-acme\" (consent_policies)",
            "\"required\"",
            "nothing was signed",
        ] {
            assert!(e.contains(part), "{part:?} missing from: {e}");
        }
        assert_eq!(snapshot(&ws.tree_dir()), before, "the tree is unchanged");
        assert!(
            !ws.staged_roles()
                .unwrap()
                .iter()
                .any(|r| r == "snapshot" || r == "timestamp"),
            "nothing was signed into staging either"
        );
    }

    #[test]
    fn publish_refuses_a_campaign_listed_directly_beyond_its_grant() {
        let d = tempfile::tempdir().unwrap();
        let ws = repo(d.path(), "\"required\"", "required");
        let before = snapshot(&ws.tree_dir());
        // `petrel-repo add` of a compiled manifest, bypassing `campaign update`.
        let mut c = CampaignManifest::from_toml(&campaign("none")).unwrap();
        c.revision = 2;
        let file = d.path().join("acme-player.json");
        std::fs::write(&file, c.to_canonical_json().unwrap()).unwrap();
        let mut ed = Editor::new(&ws);
        ed.add_targets(
            &[editor::SourceFile {
                path: file,
                name: "campaigns/acme-player.json".into(),
            }],
            &editor::AddOptions {
                role: Some("partner-acme".into()),
                custom: None,
            },
        )
        .unwrap();
        ed.save().unwrap();
        let e = publish(&ws, Refresh::default()).unwrap_err().to_string();
        assert!(
            e.contains("campaigns/acme-player.json")
                && e.contains("consent_policies")
                && e.contains("\"none\""),
            "{e}"
        );
        assert_eq!(snapshot(&ws.tree_dir()), before);
    }

    #[test]
    fn publish_accepts_manifests_within_their_grants() {
        let d = tempfile::tempdir().unwrap();
        let ws = repo(d.path(), "\"required\", \"acknowledge\"", "required");
        // Narrowed, but still allowing what the partner published.
        let mut ed = Editor::new(&ws);
        set_delegation_capabilities(
            &mut ed,
            "campaigns",
            "partner-acme",
            false,
            Some(&caps("\"required\"")),
        )
        .unwrap();
        ed.save().unwrap();
        let r = publish(&ws, Refresh::default()).unwrap();
        assert!(r.roles.iter().any(|(role, _)| role == "campaigns"), "{r:?}");
    }

    fn group_caps(groups: &str) -> Capabilities {
        Capabilities::from_toml(&format!("schema_version = 1\ngroups = [{groups}]\n")).unwrap()
    }

    /// [`repo`] plus device kiosk-1 assigned to kiosk-eu in a bin of role `assign`, whose
    /// grant from `targets` allows `groups`; published. Returns the bin's target path.
    fn repo_with_bin(dir: &Path, groups: &str) -> (Workspace, String) {
        let ws = repo(dir, "\"required\"", "required");
        let ids = dir.join("devices.txt");
        std::fs::write(&ids, "kiosk-1\n").unwrap();
        assign_devices(
            &ws,
            &ids,
            &AssignOptions {
                group: "kiosk-eu".into(),
                role: None,
                canary: false,
                campaigns: Default::default(),
            },
        )
        .unwrap();
        let mut ed = Editor::new(&ws);
        set_delegation_capabilities(
            &mut ed,
            "targets",
            "assign",
            false,
            Some(&group_caps(groups)),
        )
        .unwrap();
        ed.save().unwrap();
        publish(&ws, Refresh::default()).unwrap();
        let bin = assign_target_path("kiosk-1", ws.settings.assign_bin_digits);
        (ws, bin)
    }

    /// Narrows the grant of `targets` to `assign` to `groups`, staging `targets` only.
    fn narrow_assign_grant(ws: &Workspace, groups: &str) {
        let mut ed = Editor::new(ws);
        set_delegation_capabilities(
            &mut ed,
            "targets",
            "assign",
            false,
            Some(&group_caps(groups)),
        )
        .unwrap();
        ed.save().unwrap();
        assert_eq!(
            ws.staged_roles().unwrap(),
            ["targets"],
            "the bin and its role are not re-staged"
        );
    }

    #[test]
    fn publish_refuses_an_unchanged_bin_a_narrowed_grant_no_longer_allows_and_leaves_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let (ws, bin) = repo_with_bin(d.path(), "\"kiosk-eu\", \"kiosk-us\"");
        let before = snapshot(&ws.tree_dir());
        narrow_assign_grant(&ws, "\"kiosk-us\"");
        let e = publish(&ws, Refresh::default()).unwrap_err().to_string();
        for part in [
            bin.as_str(),
            "signed by role \"assign\"",
            "chain targets -> assign",
            "capabilities of role \"assign\" (groups)",
            "kiosk-eu",
            "nothing was signed",
        ] {
            assert!(e.contains(part), "{part:?} missing from: {e}");
        }
        assert_eq!(snapshot(&ws.tree_dir()), before, "the tree is unchanged");
        assert!(
            !ws.staged_roles()
                .unwrap()
                .iter()
                .any(|r| r == "snapshot" || r == "timestamp"),
            "nothing was signed into staging either"
        );
    }

    #[test]
    fn publish_accepts_unchanged_bins_within_a_narrowed_grant() {
        let d = tempfile::tempdir().unwrap();
        let (ws, _) = repo_with_bin(d.path(), "\"kiosk-eu\", \"kiosk-us\"");
        narrow_assign_grant(&ws, "\"kiosk-eu\"");
        let r = publish(&ws, Refresh::default()).unwrap();
        assert!(r.roles.iter().any(|(role, _)| role == "targets"), "{r:?}");
    }

    #[test]
    fn only_bins_below_a_changed_delegation_are_searched() {
        let d = tempfile::tempdir().unwrap();
        let (ws, bin) = repo_with_bin(d.path(), "\"kiosk-eu\"");
        let mut ed = Editor::new(&ws);
        let roots = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            names_below(&mut ed, &roots(&["targets"]), "assign").unwrap(),
            roots(&[&bin])
        );
        // `campaigns` delegates only campaigns/*: nothing of assign/ below it.
        assert!(names_below(&mut ed, &roots(&["campaigns"]), "assign")
            .unwrap()
            .is_empty());
        assert!(!pattern_may_hold("campaigns/*", "assign"));
        assert!(pattern_may_hold("*/*", "assign"));
        assert!(!pattern_may_hold("*", "assign"));
    }

    #[test]
    fn only_manifest_paths_are_checked() {
        assert_eq!(manifest_dir("campaigns/a.json"), Some("campaigns"));
        assert_eq!(manifest_dir("assign/7f.json"), Some("assign"));
        assert_eq!(manifest_dir("groups/sub/a.json"), None);
        assert_eq!(manifest_dir("campaigns/a.toml"), None);
        assert_eq!(manifest_dir("apps/campaigns/a.json"), None);
    }
}

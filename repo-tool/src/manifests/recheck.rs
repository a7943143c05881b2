//! The last check before `publish` signs anything: no manifest devices would reject for
//! exceeding the capabilities along its delegation chain is ever signed.
//!
//! `group set`, `assign` and `campaign create|update|halt|…` check a manifest when they
//! stage it, but what they checked can change before `publish`: `delegate --capabilities`
//! may narrow a grant over manifests already listed (it only warns), `petrel-repo add` may
//! list a manifest file directly, and a grant may expire in between. So `publish` checks
//! again, with the client's own check ([`CapabilityChain`]), every manifest whose verdict a
//! staged role can change: those listed by a staged role, and those below a staged
//! delegator (whose capabilities may have changed).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use petrel_client::manifest::{
    AssignmentBin, CampaignManifest, CapabilityViolation, GroupManifest, Manifest,
};

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
/// a staged targets role and, for campaigns and groups, every one whose chain passes
/// through a staged role; assignment bins are checked where they are listed by a staged
/// role. The error names each manifest, the role that signs it, the role whose
/// capabilities forbid it, the capability field and the reason. Manifests that do not
/// parse are left to the device (which reports them unusable): this is about capabilities.
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
    let mut names = listed_by_staged;
    if delegators {
        // Bins are many and are re-checked by `delegate` itself; campaigns and groups are
        // few, so every one under a changed grant is checked.
        for dir in ["campaigns", "groups"] {
            names.extend(lookup::names_under(&mut ed, dir)?);
        }
    }
    let mut refused = Vec::new();
    for name in names {
        let Some(l) = lookup::find(&mut ed, &name)? else {
            continue;
        };
        if !l.chain.iter().any(|r| staged.contains(r)) {
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
    use crate::manifests::{create_campaign, set_delegation_capabilities, set_group};
    use crate::publish::{publish, Refresh};
    use crate::workspace::Settings;
    use petrel_client::manifest::Capabilities;
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

    #[test]
    fn only_manifest_paths_are_checked() {
        assert_eq!(manifest_dir("campaigns/a.json"), Some("campaigns"));
        assert_eq!(manifest_dir("assign/7f.json"), Some("assign"));
        assert_eq!(manifest_dir("groups/sub/a.json"), None);
        assert_eq!(manifest_dir("campaigns/a.toml"), None);
        assert_eq!(manifest_dir("apps/campaigns/a.json"), None);
    }
}

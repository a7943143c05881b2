//! Finding targets in the workspace the way a device finds them in the tree: the TUF
//! pre-order search over the newest metadata (staged, else published), the capabilities
//! along the delegation chain, and the exact bytes of a listed target.

use std::collections::BTreeSet;

use petrel_client::manifest::{CapabilityChain, ChainLink, Grant, RoleCapabilities};
use petrel_client::tuf::pattern;
use petrel_client::tuf::schema::{TargetFile, Targets};

use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::publish::target_tree_path;

/// A target as a device would find it: the role listing it and the delegation chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The target path.
    pub name: String,
    /// The role listing it.
    pub role: String,
    /// Roles from `targets` to `role`, both included (as `TargetInfo::delegation_chain`).
    pub chain: Vec<String>,
    /// Length and hashes, as they will be signed.
    pub file: TargetFile,
}

/// The outcome of a search.
#[derive(Clone, Debug)]
pub enum Search {
    /// The first role on the search path that lists the target.
    Found(Listing),
    /// No role lists it. These roles (each with its chain) were searched, in order: a target
    /// added to one of them would be found there.
    NotFound(Vec<(String, Vec<String>)>),
}

/// Searches `name` like a device does (TUF 5.6.7: pre-order depth-first, only through
/// delegations whose paths match, stopping at terminating delegations), over the newest
/// metadata of every role.
pub fn search(ed: &mut Editor<'_>, name: &str) -> Result<Search> {
    struct Visit {
        role: String,
        chain: Vec<String>,
    }
    let mut stack = vec![Visit {
        role: "targets".into(),
        chain: vec!["targets".into()],
    }];
    let mut visited: BTreeSet<String> = BTreeSet::new();
    let mut searched = Vec::new();
    while let Some(v) = stack.pop() {
        if visited.contains(&v.role) {
            continue;
        }
        if !ed.has_role(&v.role)? {
            let parent = &v.chain[v.chain.len().saturating_sub(2)];
            return Err(Error::role(
                &v.role,
                format!("is delegated by {parent:?} but has no metadata; devices would fail to search {name:?}"),
            ));
        }
        let t = ed.targets(&v.role)?;
        if let Some(file) = t.targets.get(name) {
            return Ok(Search::Found(Listing {
                name: name.to_string(),
                role: v.role,
                chain: v.chain,
                file: file.clone(),
            }));
        }
        let children = t
            .delegations
            .as_ref()
            .map(|d| d.roles_for_target(name))
            .unwrap_or_default();
        visited.insert(v.role.clone());
        searched.push((v.role.clone(), v.chain.clone()));
        let mut next = Vec::new();
        for (child, terminating) in children {
            let mut chain = v.chain.clone();
            chain.push(child.clone());
            next.push(Visit { role: child, chain });
            if terminating {
                stack.clear();
                break;
            }
        }
        stack.extend(next.into_iter().rev());
    }
    Ok(Search::NotFound(searched))
}

/// The target as a device would find it, if some role lists it.
pub fn find(ed: &mut Editor<'_>, name: &str) -> Result<Option<Listing>> {
    Ok(match search(ed, name)? {
        Search::Found(l) => Some(l),
        Search::NotFound(_) => None,
    })
}

/// The capabilities of each delegation on `chain` (from `targets`), read from the newest
/// metadata of the delegators: what a device will enforce once it is published.
pub fn capability_chain(ed: &mut Editor<'_>, chain: &[String]) -> Result<CapabilityChain> {
    let mut links = Vec::new();
    for pair in chain.windows(2) {
        let (parent, child) = (&pair[0], &pair[1]);
        let d = ed
            .targets(parent)?
            .delegations
            .clone()
            .ok_or_else(|| Error::role(parent, "delegates nothing"))?;
        let read =
            |r: std::result::Result<Option<_>, petrel_client::manifest::ValidationError>| match r {
                Ok(None) => Grant::Unrestricted,
                Ok(Some(c)) => Grant::Restricted(c),
                Err(e) => Grant::Unreadable(e.to_string()),
            };
        let grant = if let Some(r) = d.roles.iter().flatten().find(|r| &r.name == child) {
            read(r.capabilities())
        } else if let Some(s) = d.succinct_roles.as_ref().filter(|s| s.is_bin(child)) {
            read(s.capabilities())
        } else {
            return Err(Error::role(
                parent,
                format!("does not delegate to {child:?}"),
            ));
        };
        links.push(ChainLink {
            role: child.clone(),
            delegator: parent.clone(),
            grant,
        });
    }
    Ok(CapabilityChain { links })
}

/// The exact bytes of a listed target, from the content store or the published tree,
/// checked against its signed length and SHA-256.
pub fn read_listed(ed: &mut Editor<'_>, l: &Listing) -> Result<Vec<u8>> {
    let sha = l.file.hashes.get("sha256").ok_or_else(|| {
        Error::target(
            &l.name,
            format!("role {:?} lists it without a sha256", l.role),
        )
    })?;
    let consistent = ed.root()?.consistent_snapshot();
    let ws = ed.workspace();
    let candidates = [
        crate::editor::find_stored(&ws.content_dir(), sha)
            .unwrap_or_else(|| crate::editor::store_path(&ws.content_dir(), sha)),
        ws.tree_dir()
            .join(target_tree_path(consistent, &l.name, sha)),
    ];
    for path in &candidates {
        match std::fs::read(path) {
            Ok(bytes) => {
                if bytes.len() as u64 != l.file.length
                    || &petrel_client::manifest::sha256_hex(&bytes) != sha
                {
                    return Err(Error::target(
                        &l.name,
                        format!(
                            "{} does not match the length and sha256 role {:?} lists",
                            path.display(),
                            l.role
                        ),
                    ));
                }
                return Ok(bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Err(Error::target(
        &l.name,
        format!("its content ({sha}) is neither in the content store nor in the tree"),
    ))
}

/// Whether the content of a listed target is available to publish (without reading it).
pub fn content_available(ed: &mut Editor<'_>, l: &Listing) -> Result<bool> {
    let Some(sha) = l.file.hashes.get("sha256") else {
        return Ok(false);
    };
    let consistent = ed.root()?.consistent_snapshot();
    let ws = ed.workspace();
    Ok(crate::editor::find_stored(&ws.content_dir(), sha).is_some()
        || ws
            .tree_dir()
            .join(target_tree_path(consistent, &l.name, sha))
            .exists())
}

/// Whether a delegation path pattern can match some path under `dir` (`campaigns`).
fn may_hold(patterns: &[String], dir: &str) -> bool {
    patterns
        .iter()
        .any(|p| pattern::matches(p.split('/').next().unwrap_or(""), dir) && p.contains('/'))
}

/// Every target name under `dir/` (one level, `.json`) listed by a role a device could
/// search for such names, deduplicated. Roles delegated only for other paths are not
/// loaded; hash-prefix and hashed-bin delegations are (they may hold anything).
pub fn names_under(ed: &mut Editor<'_>, dir: &str) -> Result<BTreeSet<String>> {
    let prefix = format!("{dir}/");
    let mut names = BTreeSet::new();
    let mut stack = vec!["targets".to_string()];
    let mut visited = BTreeSet::new();
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
        if let Some(d) = &t.delegations {
            if d.succinct_roles.is_some() {
                stack.extend(d.role_names());
            }
            for r in d.roles.iter().flatten() {
                let relevant = match (&r.paths, &r.path_hash_prefixes) {
                    (Some(p), _) => may_hold(p, dir),
                    (None, Some(_)) => true,
                    (None, None) => false,
                };
                if relevant {
                    stack.push(r.name.clone());
                }
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_that_may_hold_a_directory() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(may_hold(&p(&["campaigns/*"]), "campaigns"));
        assert!(may_hold(&p(&["campaigns/acme-*"]), "campaigns"));
        assert!(may_hold(&p(&["*/*"]), "campaigns"));
        assert!(!may_hold(&p(&["apps/*"]), "campaigns"));
        assert!(!may_hold(&p(&["*"]), "campaigns"));
    }
}

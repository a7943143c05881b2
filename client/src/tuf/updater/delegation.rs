//! Target search: lazy pre-order depth-first walk of the delegation graph (spec 5.6.7).
//!
//! Only roles whose delegation matches the requested path are fetched. A role is reached
//! only through delegations that all match the path, so a role listing a target outside the
//! paths delegated to it can never make that listing count.
//!
//! A role is trusted only through the delegation the search reached it by: a role that
//! two roles delegate with different keys or thresholds is verified against the keys and
//! threshold of each delegator it is reached through, even when it was already loaded
//! through the other one. Its file is fetched at most once per refresh; the bytes are kept
//! and verified again per delegator.

use std::collections::BTreeSet;

use tracing::{debug, info};

use super::error::describe;
use super::store::role_file_name;
use super::trusted::TrustedMetadata;
use super::{UpdateError, Updater};
use crate::fetch::fetch_to_vec;
use crate::tuf::pattern;
use crate::tuf::schema::{DelegatedRole, Hashes, TargetFile};

/// A target found in trusted metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// The target path, as requested.
    pub path: String,
    /// Length, hashes and custom data, as signed.
    pub file: TargetFile,
    /// The role that listed the target.
    pub role: String,
    /// The delegation chain from `targets` to `role`, both included.
    pub delegation_chain: Vec<String>,
}

impl TargetInfo {
    /// The exact length in bytes.
    pub fn length(&self) -> u64 {
        self.file.length
    }

    /// The signed hashes.
    pub fn hashes(&self) -> &Hashes {
        &self.file.hashes
    }
}

/// One pending visit: the role, who delegated it, and the chain leading to it.
struct Visit {
    role: String,
    parent: Option<String>,
    chain: Vec<String>,
}

impl Updater {
    /// Finds `target_path` in the trusted targets metadata (spec 5.6.7), fetching and
    /// verifying only the delegated roles the search needs. Runs [`Updater::refresh`] first
    /// if no refresh has succeeded yet. `Ok(None)` means no role on the search path lists
    /// the target; an error means a role needed for the search could not be loaded.
    pub fn get_target_info(
        &mut self,
        target_path: &str,
    ) -> Result<Option<TargetInfo>, UpdateError> {
        if self.trusted.is_none() {
            self.refresh()?;
        }
        let mut trusted = self.trusted.take().ok_or(UpdateError::NotRefreshed)?;
        let result = self.preorder_search(&mut trusted, target_path);
        self.trusted = Some(trusted);
        result
    }

    /// Every target whose path matches `pattern` (TUF `paths` syntax: `*` never crosses
    /// `/`, e.g. `campaigns/*.json`), each as [`Updater::get_target_info`] finds it. Runs
    /// [`Updater::refresh`] first if no refresh has succeeded yet.
    ///
    /// Two steps. First the names: the roles whose delegations could cover such a path are
    /// loaded (fetched and verified like in a search; roles delegated only for other paths,
    /// e.g. `assign/*`, are not touched) and the matching names they list are collected.
    /// Then each name goes through the spec's search, so the listing only *proposes* names:
    /// a role listing a target outside the paths delegated to it, or behind a terminating
    /// delegation of an earlier role, does not count, exactly as in a single lookup.
    ///
    /// At most [`super::Limits::max_delegations`] delegated roles are loaded for the names;
    /// a repository that needs more (for example hashed bins under the listed prefix) gets an
    /// error rather than a silently partial list.
    pub fn list_targets(&mut self, pattern: &str) -> Result<Vec<TargetInfo>, UpdateError> {
        if self.trusted.is_none() {
            self.refresh()?;
        }
        let mut trusted = self.trusted.take().ok_or(UpdateError::NotRefreshed)?;
        let names = self.candidate_names(&mut trusted, pattern);
        self.trusted = Some(trusted);
        let mut out = Vec::new();
        for name in names? {
            match self.get_target_info(&name)? {
                Some(info) => out.push(info),
                None => debug!("{name:?} is listed, but not by a role the search trusts for it"),
            }
        }
        Ok(out)
    }

    fn candidate_names(
        &self,
        trusted: &mut TrustedMetadata,
        pattern: &str,
    ) -> Result<BTreeSet<String>, UpdateError> {
        let max = self.config.limits.max_delegations as usize;
        let mut to_visit: Vec<(String, Option<String>)> = vec![("targets".to_string(), None)];
        let mut visited: BTreeSet<String> = BTreeSet::new();
        let mut names = BTreeSet::new();
        while let Some((role, parent)) = to_visit.pop() {
            if visited.contains(&role) {
                continue;
            }
            // `visited` includes top-level targets.
            if visited.len() > max {
                return Err(UpdateError::Invalid {
                    what: format!("the list of targets matching {pattern:?}"),
                    reason: format!(
                        "more than {max} delegated roles may list such targets (max_delegations)"
                    ),
                });
            }
            self.load_role(trusted, &role, parent.as_deref())?;
            let targets = &trusted.role(&role).expect("role was just loaded").signed;
            names.extend(
                targets
                    .targets
                    .keys()
                    .filter(|p| pattern::matches(pattern, p))
                    .cloned(),
            );
            visited.insert(role.clone());
            if let Some(d) = &targets.delegations {
                let children: Vec<String> = match &d.succinct_roles {
                    // Any bin may hold a matching name; more than the bound is an error above.
                    Some(s) => s.bin_names().take(max + 1).collect(),
                    None => d
                        .roles
                        .iter()
                        .flatten()
                        .filter(|r| may_cover(r, pattern))
                        .map(|r| r.name.clone())
                        .collect(),
                };
                to_visit.extend(children.into_iter().rev().map(|c| (c, Some(role.clone()))));
            }
        }
        Ok(names)
    }

    fn preorder_search(
        &self,
        trusted: &mut TrustedMetadata,
        target_path: &str,
    ) -> Result<Option<TargetInfo>, UpdateError> {
        let max = self.config.limits.max_delegations as usize;
        let mut to_visit = vec![Visit {
            role: "targets".to_string(),
            parent: None,
            chain: vec!["targets".to_string()],
        }];
        let mut visited: BTreeSet<String> = BTreeSet::new();
        // `visited` includes top-level targets, so this allows `max` delegated roles.
        while visited.len() <= max {
            let Some(visit) = to_visit.pop() else { break };
            if visited.contains(&visit.role) {
                debug!("{}: already visited, skipping", describe(&visit.role, None));
                continue;
            }
            self.load_role(trusted, &visit.role, visit.parent.as_deref())?;
            let targets = &trusted
                .role(&visit.role)
                .expect("role was just loaded")
                .signed;
            if let Some(file) = targets.targets.get(target_path) {
                debug!(
                    "{target_path:?} found in {}",
                    describe(&visit.role, Some(targets.version))
                );
                return Ok(Some(TargetInfo {
                    path: target_path.to_string(),
                    file: file.clone(),
                    role: visit.role,
                    delegation_chain: visit.chain,
                }));
            }
            visited.insert(visit.role.clone());
            if let Some(delegations) = &targets.delegations {
                let mut children = Vec::new();
                for (child, terminating) in delegations.roles_for_target(target_path) {
                    let mut chain = visit.chain.clone();
                    chain.push(child.clone());
                    children.push(Visit {
                        role: child,
                        parent: Some(visit.role.clone()),
                        chain,
                    });
                    if terminating {
                        debug!(
                            "{} is a terminating delegation for {target_path:?}",
                            describe(&children.last().expect("just pushed").role, None)
                        );
                        to_visit.clear();
                        break;
                    }
                }
                to_visit.extend(children.into_iter().rev());
            }
        }
        if !to_visit.is_empty() {
            info!(
                "{} role(s) left to visit for {target_path:?}, but at most {max} delegated roles may be visited",
                to_visit.len()
            );
        }
        debug!("{target_path:?} is not listed by any role on its search path");
        Ok(None)
    }

    /// Makes `role`, as delegated by `parent`, available in `trusted`: verified against the
    /// keys and threshold `parent` gives it, from the bytes already loaded in this refresh (a
    /// role delegated by several roles is fetched once, and verified through each delegator
    /// a search reaches it through), from a current stored copy, or by downloading,
    /// verifying and persisting it.
    fn load_role(
        &self,
        trusted: &mut TrustedMetadata,
        role: &str,
        parent: Option<&str>,
    ) -> Result<(), UpdateError> {
        let Some(parent) = parent else {
            // Top-level targets, verified by the refresh.
            return match trusted.role(role) {
                Some(_) => Ok(()),
                None => Err(UpdateError::Invalid {
                    what: describe(role, None),
                    reason: "no delegating role".into(),
                }),
            };
        };
        let first_trust = trusted.role(role).is_none();
        if trusted.trust_loaded_through(role, parent)? {
            if first_trust {
                // Downloaded earlier in this refresh, and trusted for the first time now.
                let bytes = trusted
                    .delegated_bytes(role)
                    .expect("bytes were just verified");
                self.persist(&role_file_name(role), bytes)?;
            }
            return Ok(());
        }
        if let Some(tree) = trusted.tree_mut() {
            self.resolve_in_tree(tree, role)?;
        }
        let meta = trusted.role_meta(role)?.clone();
        let max = self.config.limits.targets_max_length;
        let file = role_file_name(role);
        if let Some(bytes) = self.read_stored(&file, max) {
            match trusted.verify_delegated(role, parent, &bytes) {
                Ok(v) => {
                    debug!(
                        "stored {} is current: not downloading",
                        describe(role, Some(meta.version))
                    );
                    trusted.insert_delegated(role, parent, bytes, v);
                    return Ok(());
                }
                Err(e) => debug!("stored {} is not current: {e}", describe(role, None)),
            }
        }
        let url = self.role_url(role, meta.version, trusted.consistent_snapshot());
        let bytes =
            fetch_to_vec(&*self.transport, &url, meta.length.unwrap_or(max)).map_err(|source| {
                UpdateError::Fetch {
                    what: describe(role, Some(meta.version)),
                    url: url.clone(),
                    source,
                }
            })?;
        let verified = match trusted.verify_delegated(role, parent, &bytes) {
            Ok(v) => v,
            Err(e) => {
                trusted.keep_downloaded(role, bytes);
                return Err(e);
            }
        };
        self.persist(&file, &bytes)?;
        info!("loaded {}", describe(role, Some(meta.version)));
        trusted.insert_delegated(role, parent, bytes, verified);
        Ok(())
    }
}

/// Whether a delegation could cover some path matching `pattern` (conservative: `true` when
/// unsure, e.g. for hash-prefix delegations).
fn may_cover(role: &DelegatedRole, pattern: &str) -> bool {
    match &role.paths {
        Some(paths) => paths.iter().any(|p| patterns_may_overlap(p, pattern)),
        None => role.path_hash_prefixes.is_some(),
    }
}

/// Whether two `paths` patterns could match a common path: the same number of segments, and
/// segment by segment either equal literals, a pattern matching the other literal, or two
/// patterns whose literal heads and tails are compatible.
fn patterns_may_overlap(a: &str, b: &str) -> bool {
    let wild = |s: &str| s.contains(['*', '?', '[']);
    let (sa, sb): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    sa.len() == sb.len()
        && sa.iter().zip(&sb).all(|(x, y)| match (wild(x), wild(y)) {
            (false, false) => x == y,
            (true, false) => pattern::matches(x, y),
            (false, true) => pattern::matches(y, x),
            (true, true) => {
                let head = |s: &str| s[..s.find(['*', '?', '[']).unwrap_or(s.len())].to_string();
                let tail = |s: &str| s[s.rfind(['*', '?', ']']).map_or(0, |i| i + 1)..].to_string();
                let (hx, hy, tx, ty) = (head(x), head(y), tail(x), tail(y));
                (hx.starts_with(&hy) || hy.starts_with(&hx))
                    && (tx.ends_with(&ty) || ty.ends_with(&tx))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::patterns_may_overlap;

    #[test]
    fn overlapping_patterns() {
        assert!(patterns_may_overlap("campaigns/*", "campaigns/*.json"));
        assert!(patterns_may_overlap("campaigns/acme-*", "campaigns/*.json"));
        assert!(patterns_may_overlap("*", "*"));
        assert!(patterns_may_overlap(
            "campaigns/acme.json",
            "campaigns/*.json"
        ));
        assert!(!patterns_may_overlap("assign/*", "campaigns/*.json"));
        assert!(!patterns_may_overlap("campaigns/*/*", "campaigns/*.json"));
        assert!(!patterns_may_overlap(
            "campaigns/*.toml",
            "campaigns/*.json"
        ));
        assert!(!patterns_may_overlap(
            "campaigns/acme.toml",
            "campaigns/*.json"
        ));
        assert!(!patterns_may_overlap("groups/*", "campaigns/*.json"));
    }
}

//! Target search: lazy pre-order depth-first walk of the delegation graph (spec 5.6.7).
//!
//! Only roles whose delegation matches the requested path are fetched. A role is reached
//! only through delegations that all match the path, so a role listing a target outside the
//! paths delegated to it can never make that listing count.

use std::collections::BTreeSet;

use tracing::{debug, info};

use super::error::describe;
use super::store::role_file_name;
use super::trusted::TrustedMetadata;
use super::{UpdateError, Updater};
use crate::fetch::fetch_to_vec;
use crate::tuf::schema::{Hashes, TargetFile};

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

    /// Makes `role` available in `trusted`: from memory, from a current stored copy, or by
    /// downloading, verifying and persisting it.
    fn load_role(
        &self,
        trusted: &mut TrustedMetadata,
        role: &str,
        parent: Option<&str>,
    ) -> Result<(), UpdateError> {
        if trusted.role(role).is_some() {
            return Ok(());
        }
        let parent = parent.ok_or_else(|| UpdateError::Invalid {
            what: describe(role, None),
            reason: "no delegating role".into(),
        })?;
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
                    trusted.insert_delegated(role, v);
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
        let verified = trusted.verify_delegated(role, parent, &bytes)?;
        self.persist(&file, &bytes)?;
        info!("loaded {}", describe(role, Some(meta.version)));
        trusted.insert_delegated(role, verified);
        Ok(())
    }
}

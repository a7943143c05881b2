//! Key rotation for any role, root included.

use std::collections::BTreeSet;

use petrel_client::tuf::schema::{Key, KeyId, TOP_LEVEL_ROLES};

use super::delegate::prune_unused_keys;
use super::Editor;
use crate::error::{Error, Result};

/// Keys to add to and remove from a role, and optionally a new threshold.
#[derive(Clone, Debug, Default)]
pub struct RotateSpec {
    /// The role: a top-level role, a delegated role, or the name prefix of hashed bins.
    pub role: String,
    /// Keys to authorize.
    pub add: Vec<Key>,
    /// Key ids to revoke.
    pub remove: Vec<KeyId>,
    /// A new threshold.
    pub threshold: Option<u32>,
}

fn apply(
    role: &str,
    keyids: &mut Vec<KeyId>,
    threshold: &mut u32,
    spec: &RotateSpec,
) -> Result<()> {
    for id in &spec.remove {
        let before = keyids.len();
        keyids.retain(|k| k != id);
        if keyids.len() == before {
            return Err(Error::role(
                role,
                format!("key {id} is not one of its keys"),
            ));
        }
    }
    for k in &spec.add {
        let id = k.key_id();
        if keyids.contains(&id) {
            return Err(Error::role(
                role,
                format!("key {id} is already one of its keys"),
            ));
        }
        keyids.push(id);
    }
    if let Some(t) = spec.threshold {
        *threshold = t;
    }
    if *threshold == 0 || *threshold as usize > keyids.len() {
        return Err(Error::role(
            role,
            format!(
                "threshold {} is impossible with {} key(s)",
                threshold,
                keyids.len()
            ),
        ));
    }
    Ok(())
}

impl Editor<'_> {
    /// Changes a role's keys. For top-level roles this stages a new root version, which
    /// publish signs with a threshold of both the old and the new root keys.
    pub fn rotate(&mut self, spec: &RotateSpec) -> Result<()> {
        let role = spec.role.as_str();
        if TOP_LEVEL_ROLES.contains(&role) {
            let root = self.root_mut()?;
            let r = root
                .roles
                .get_mut(role)
                .ok_or_else(|| Error::role(role, "missing from root metadata"))?;
            apply(role, &mut r.keyids, &mut r.threshold, spec)?;
            for k in &spec.add {
                root.keys.insert(k.key_id(), k.clone());
            }
            let used: BTreeSet<KeyId> = root
                .roles
                .values()
                .flat_map(|r| r.keyids.iter().cloned())
                .collect();
            root.keys.retain(|id, _| used.contains(id));
            if role == "targets" {
                // Re-sign targets with its new keys.
                self.targets_mut("targets")?;
            }
            return Ok(());
        }
        // A named delegated role, or a set of hashed bins by name prefix.
        let (delegator, bins) = match self.locate(role) {
            Ok(loc) => (loc.delegator, None),
            Err(e) => match self.find_bins_by_prefix(role)? {
                Some((delegator, names)) => (delegator, Some(names)),
                None => return Err(e),
            },
        };
        let d = self
            .targets_mut(&delegator)?
            .delegations
            .as_mut()
            .expect("a delegator has delegations");
        match &bins {
            Some(_) => {
                let s = d.succinct_roles.as_mut().expect("bins");
                apply(role, &mut s.keyids, &mut s.threshold, spec)?;
            }
            None => {
                let r = d
                    .roles
                    .iter_mut()
                    .flatten()
                    .find(|r| r.name == role)
                    .ok_or_else(|| Error::role(role, "individual hashed bins cannot be rotated; rotate the bin set by its name prefix"))?;
                apply(role, &mut r.keyids, &mut r.threshold, spec)?;
            }
        }
        for k in &spec.add {
            d.keys.insert(k.key_id(), k.clone());
        }
        prune_unused_keys(d);
        // The role (or every bin) must be re-signed with its new keys.
        for name in bins.unwrap_or_else(|| vec![role.to_string()]) {
            self.targets_mut(&name)?;
        }
        Ok(())
    }

    /// Finds a hashed-bin delegation whose name prefix is `prefix`, searching delegators
    /// reachable from `targets`.
    fn find_bins_by_prefix(&mut self, prefix: &str) -> Result<Option<(String, Vec<String>)>> {
        let mut stack = vec!["targets".to_string()];
        let mut seen = BTreeSet::new();
        while let Some(r) = stack.pop() {
            if !seen.insert(r.clone()) {
                continue;
            }
            let Some(d) = self.targets(&r)?.delegations.clone() else {
                continue;
            };
            if let Some(s) = &d.succinct_roles {
                if s.name_prefix == prefix {
                    return Ok(Some((r, s.bin_names().collect())));
                }
                continue;
            }
            for child in d.roles.iter().flatten() {
                if self.has_role(&child.name)? {
                    stack.push(child.name.clone());
                }
            }
        }
        Ok(None)
    }
}

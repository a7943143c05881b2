//! Delegations: granting a role (with its keys, threshold and paths) or hashed bins.

use std::collections::BTreeMap;

use chrono::Utc;
use petrel_client::tuf::schema::{
    DelegatedRole, Delegations, Expires, Key, SuccinctRoles, Targets, Unrecognized, SPEC_VERSION,
    TOP_LEVEL_ROLES,
};

use super::Editor;
use crate::error::{Error, Result};

/// A delegation from one targets role to a named role.
#[derive(Clone, Debug)]
pub struct DelegationSpec {
    /// The delegating role.
    pub from: String,
    /// The delegated role's name.
    pub name: String,
    /// Path patterns the role is trusted for (exclusive with `hash_prefixes`).
    pub paths: Option<Vec<String>>,
    /// Hex prefixes of target path hashes (exclusive with `paths`).
    pub hash_prefixes: Option<Vec<String>>,
    /// The role's public keys.
    pub keys: Vec<Key>,
    /// How many of them must sign.
    pub threshold: u32,
    /// Whether the search stops at this role for paths it matches.
    pub terminating: bool,
    /// Extra signed fields carried by the delegation (e.g. Petrel capabilities).
    pub extra: Unrecognized,
}

/// A succinct hashed-bin delegation (TAP 15) from one targets role.
#[derive(Clone, Debug)]
pub struct BinsSpec {
    /// The delegating role; it may delegate nothing else.
    pub from: String,
    /// Number of bins, a power of two from 2 to 2^16.
    pub bins: u64,
    /// Bin names are `<prefix>-<hex>`.
    pub name_prefix: String,
    /// Keys shared by all bins.
    pub keys: Vec<Key>,
    /// How many of them must sign each bin.
    pub threshold: u32,
}

/// An empty targets role with version 1 (its expiry is set when it is staged).
pub fn empty_targets() -> Targets {
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: Expires(Utc::now()),
        targets: BTreeMap::new(),
        delegations: None,
        unrecognized: Unrecognized::new(),
    }
}

fn check_keys(role: &str, keys: &[Key], threshold: u32) -> Result<()> {
    if keys.is_empty() {
        return Err(Error::role(role, "needs at least one key"));
    }
    if threshold == 0 || threshold as usize > keys.len() {
        return Err(Error::role(
            role,
            format!(
                "threshold {threshold} is impossible with {} key(s)",
                keys.len()
            ),
        ));
    }
    Ok(())
}

impl Editor<'_> {
    /// Delegates `spec.name` from `spec.from`, or updates that delegation if it exists.
    /// A new role starts empty and is staged with the delegator.
    pub fn delegate(&mut self, spec: DelegationSpec) -> Result<()> {
        let name = spec.name.as_str();
        if TOP_LEVEL_ROLES.contains(&name) || name.is_empty() {
            return Err(Error::role(name, "is not a valid delegated role name"));
        }
        if name.contains('/') || name.chars().any(char::is_control) {
            return Err(Error::role(
                name,
                "role names may not contain '/' or control characters",
            ));
        }
        check_keys(name, &spec.keys, spec.threshold)?;
        match (&spec.paths, &spec.hash_prefixes) {
            (Some(_), Some(_)) => {
                return Err(Error::role(
                    name,
                    "give either paths or hash prefixes, not both",
                ))
            }
            (None, None) => {
                return Err(Error::role(
                    name,
                    "give the paths (or hash prefixes) the role is trusted for",
                ))
            }
            (Some(p), None) if p.is_empty() => {
                return Err(Error::role(name, "needs at least one path pattern"))
            }
            (None, Some(h))
                if h.iter()
                    .any(|x| x.is_empty() || !x.bytes().all(|b| b.is_ascii_hexdigit())) =>
            {
                return Err(Error::role(name, "hash prefixes must be non-empty hex"))
            }
            _ => {}
        }
        if let Some(p) = &spec.paths {
            if let Some(bad) = p.iter().find(|p| p.is_empty() || p.starts_with('/')) {
                return Err(Error::role(
                    name,
                    format!("path pattern {bad:?} must be relative and non-empty"),
                ));
            }
        }
        self.targets(&spec.from)?;
        let existing_elsewhere = match self.locate(name) {
            Ok(loc) => loc.delegator != spec.from,
            Err(_) => false,
        };
        if existing_elsewhere {
            return Err(Error::role(name, "is already delegated by another role"));
        }
        let exists = self.has_role(name)?;
        let from = self.targets_mut(&spec.from)?;
        let d = from.delegations.get_or_insert_with(|| Delegations {
            keys: BTreeMap::new(),
            roles: Some(Vec::new()),
            succinct_roles: None,
            unrecognized: Unrecognized::new(),
        });
        if d.succinct_roles.is_some() {
            return Err(Error::role(
                &spec.from,
                "delegates to hashed bins, so it cannot delegate to named roles too",
            ));
        }
        let keyids = spec
            .keys
            .iter()
            .map(|k| {
                let id = k.key_id();
                d.keys.insert(id.clone(), k.clone());
                id
            })
            .collect();
        let role = DelegatedRole {
            name: name.to_string(),
            keyids,
            threshold: spec.threshold,
            terminating: spec.terminating,
            paths: spec.paths.clone(),
            path_hash_prefixes: spec.hash_prefixes.clone(),
            unrecognized: spec.extra.clone(),
        };
        let roles = d.roles.get_or_insert_with(Vec::new);
        match roles.iter_mut().find(|r| r.name == name) {
            Some(r) => *r = role,
            None => roles.push(role),
        }
        prune_unused_keys(d);
        if exists {
            // Keys may have changed: re-sign the role itself under the new delegation.
            self.targets_mut(name)?;
        } else {
            self.insert_new_role(name, empty_targets());
        }
        Ok(())
    }

    /// Delegates everything `spec.from` is trusted for to `spec.bins` hashed bins, and
    /// stages every (empty) bin.
    pub fn delegate_bins(&mut self, spec: BinsSpec) -> Result<()> {
        if !(2..=65536).contains(&spec.bins) || !spec.bins.is_power_of_two() {
            return Err(Error::Usage(format!(
                "--bins {}: the number of bins must be a power of two from 2 to 65536",
                spec.bins
            )));
        }
        check_keys(&spec.name_prefix, &spec.keys, spec.threshold)?;
        if spec.name_prefix.is_empty() || spec.name_prefix.contains('/') {
            return Err(Error::Usage(
                "bin name prefix must be non-empty and contain no '/'".into(),
            ));
        }
        let from = self.targets_mut(&spec.from)?;
        if from.delegations.as_ref().is_some_and(|d| {
            d.roles.as_ref().is_some_and(|r| !r.is_empty()) || d.succinct_roles.is_some()
        }) {
            return Err(Error::role(
                &spec.from,
                "already delegates; hashed bins must be its only delegation",
            ));
        }
        let keys: BTreeMap<_, _> = spec.keys.iter().map(|k| (k.key_id(), k.clone())).collect();
        let succinct = SuccinctRoles {
            keyids: keys.keys().cloned().collect(),
            threshold: spec.threshold,
            bit_length: spec.bins.trailing_zeros(),
            name_prefix: spec.name_prefix.clone(),
            unrecognized: Unrecognized::new(),
        };
        let names: Vec<String> = succinct.bin_names().collect();
        from.delegations = Some(Delegations {
            keys,
            roles: None,
            succinct_roles: Some(succinct),
            unrecognized: Unrecognized::new(),
        });
        for n in names {
            if self.has_role(&n)? {
                return Err(Error::role(
                    &n,
                    "already exists; choose another bin name prefix",
                ));
            }
            self.insert_new_role(&n, empty_targets());
        }
        Ok(())
    }
}

/// Drops keys no delegation in `d` uses any more.
pub(crate) fn prune_unused_keys(d: &mut Delegations) {
    let used: std::collections::BTreeSet<_> = d
        .roles
        .iter()
        .flatten()
        .flat_map(|r| r.keyids.iter().cloned())
        .chain(
            d.succinct_roles
                .iter()
                .flat_map(|s| s.keyids.iter().cloned()),
        )
        .collect();
    d.keys.retain(|id, _| used.contains(id));
}

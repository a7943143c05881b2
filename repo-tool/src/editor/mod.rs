//! The repository editor: loads roles from the workspace, changes them, and stages them.
//!
//! Every change goes through [`Editor`], which loads only the roles a change touches (so
//! adding one target to a repository with 100k targets in hashed bins reads one bin), and
//! [`Editor::save`] stages exactly the roles that changed, with their next version and no
//! signatures (signing happens at publish or offline).

mod content;
mod delegate;
mod init;
mod rotate;
mod targets;

use std::collections::{BTreeMap, BTreeSet};

use petrel_client::tuf::schema::{
    DelegatedRole, Delegations, Expires, Key, KeyId, Metadata, Root, Signed, Targets,
    TOP_LEVEL_ROLES,
};

pub use content::{
    find_stored, hash_into_store, hash_into_store_with_hook, list_stored, store_files, store_path,
    StoreListing, StoredFile,
};
pub use delegate::{BinsSpec, DelegationSpec};
pub use init::{init, InitOptions, KeyType, RoleSpec};
pub use rotate::RotateSpec;
pub use targets::{check_path_authorized, collect_sources, AddOptions, AddedTarget, SourceFile};

use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// Where a role sits in the delegation graph: the chain of delegations leading to it.
#[derive(Clone, Debug)]
pub struct RoleLocation {
    /// Role names from `targets` (exclusive) down to the role (inclusive).
    pub chain: Vec<String>,
    /// For each link of the chain, the delegation that grants it (`None` for a hashed bin).
    pub links: Vec<Option<DelegatedRole>>,
    /// The delegating role (`targets` for first-level roles).
    pub delegator: String,
}

/// Loads, edits and stages roles of one workspace.
pub struct Editor<'w> {
    ws: &'w Workspace,
    root: Option<Signed<Root>>,
    root_dirty: bool,
    targets: BTreeMap<String, Signed<Targets>>,
    dirty: BTreeSet<String>,
}

impl<'w> Editor<'w> {
    /// An editor over `ws`.
    pub fn new(ws: &'w Workspace) -> Self {
        Editor {
            ws,
            root: None,
            root_dirty: false,
            targets: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        self.ws
    }

    /// The newest root (staged or published).
    pub fn root(&mut self) -> Result<&Root> {
        if self.root.is_none() {
            let r = load_next::<Root>(self.ws, "root")?.ok_or_else(|| {
                Error::State("the workspace has no root metadata; run `petrel-repo init`".into())
            })?;
            self.root = Some(r);
        }
        Ok(&self.root.as_ref().expect("loaded").signed)
    }

    /// The newest root, for changing; it will be staged by [`Editor::save`].
    pub fn root_mut(&mut self) -> Result<&mut Root> {
        self.root()?;
        self.root_dirty = true;
        Ok(&mut self.root.as_mut().expect("loaded").signed)
    }

    pub(crate) fn set_root(&mut self, root: Root) {
        self.root = Some(Signed::unsigned(root));
        self.root_dirty = true;
    }

    /// Whether a targets role exists (staged or published).
    pub fn has_role(&mut self, role: &str) -> Result<bool> {
        if self.targets.contains_key(role) {
            return Ok(true);
        }
        Ok(self.ws.staged_path(role).exists() || self.ws.current_path(role).exists())
    }

    /// The newest metadata of a targets role.
    pub fn targets(&mut self, role: &str) -> Result<&Targets> {
        self.load_targets(role)?;
        Ok(&self.targets[role].signed)
    }

    /// The newest metadata of a targets role, for changing; staged by [`Editor::save`].
    pub fn targets_mut(&mut self, role: &str) -> Result<&mut Targets> {
        self.load_targets(role)?;
        self.dirty.insert(role.to_string());
        Ok(&mut self.targets.get_mut(role).expect("loaded").signed)
    }

    pub(crate) fn insert_new_role(&mut self, role: &str, targets: Targets) {
        self.targets
            .insert(role.to_string(), Signed::unsigned(targets));
        self.dirty.insert(role.to_string());
    }

    fn load_targets(&mut self, role: &str) -> Result<()> {
        if self.targets.contains_key(role) {
            return Ok(());
        }
        let t = load_next::<Targets>(self.ws, role)?
            .ok_or_else(|| Error::role(role, "no such targets role in this repository"))?;
        self.targets.insert(role.to_string(), t);
        Ok(())
    }

    /// Finds a delegated role in the delegation graph, searching depth-first from
    /// `targets`. Hashed bins are recognised from their delegator without being loaded.
    pub fn locate(&mut self, role: &str) -> Result<RoleLocation> {
        if role == "targets" {
            return Ok(RoleLocation {
                chain: vec![],
                links: vec![],
                delegator: String::new(),
            });
        }
        if TOP_LEVEL_ROLES.contains(&role) {
            return Err(Error::role(role, "is a top-level role, not a targets role"));
        }
        let mut stack: Vec<(String, Vec<String>, Vec<Option<DelegatedRole>>)> =
            vec![("targets".into(), vec![], vec![])];
        let mut visited = BTreeSet::new();
        while let Some((current, chain, links)) = stack.pop() {
            if !visited.insert(current.clone()) {
                continue;
            }
            let Some(d) = self.targets(&current)?.delegations.clone() else {
                continue;
            };
            if let Some(s) = &d.succinct_roles {
                if s.is_bin(role) {
                    let mut chain = chain.clone();
                    chain.push(role.to_string());
                    let mut links = links.clone();
                    links.push(None);
                    return Ok(RoleLocation {
                        chain,
                        links,
                        delegator: current,
                    });
                }
                continue;
            }
            // Push in reverse so the first delegation is explored first.
            for r in d.roles.iter().flatten().rev() {
                let mut chain = chain.clone();
                chain.push(r.name.clone());
                let mut links = links.clone();
                links.push(Some(r.clone()));
                if r.name == role {
                    return Ok(RoleLocation {
                        chain,
                        links,
                        delegator: current,
                    });
                }
                if self.has_role(&r.name)? {
                    stack.push((r.name.clone(), chain, links));
                }
            }
        }
        Err(Error::role(
            role,
            "is not delegated from targets (see `petrel-repo delegate`)",
        ))
    }

    /// The key ids, threshold and key table that authorize signing `role`.
    pub fn authorization(&mut self, role: &str) -> Result<(Vec<KeyId>, u32, BTreeMap<KeyId, Key>)> {
        if TOP_LEVEL_ROLES.contains(&role) {
            let root = self.root()?;
            let r = root
                .role(role)
                .ok_or_else(|| Error::role(role, "missing from root metadata"))?;
            return Ok((r.keyids.clone(), r.threshold, root.keys.clone()));
        }
        let loc = self.locate(role)?;
        let d: Delegations = self
            .targets(&loc.delegator)?
            .delegations
            .clone()
            .expect("delegator has delegations");
        let (ids, threshold) = d.role_keys(role).expect("located role is delegated");
        Ok((ids.to_vec(), threshold, d.keys.clone()))
    }

    /// Stages every changed role with its next version (published + 1, or the version
    /// already staged), a fresh expiry, and no signatures. Returns the names staged.
    pub fn save(&mut self) -> Result<Vec<String>> {
        let mut staged = Vec::new();
        let now = self.ws.now();
        if self.root_dirty {
            let mut root = self.root.take().expect("dirty root is loaded");
            let expiry = self.ws.settings.expiry_for("root")?;
            root.signed
                .set_expires(Expires(trunc_seconds(now + expiry)));
            root.signatures.clear();
            self.ws.stage("root", &root)?;
            self.root = Some(root);
            self.root_dirty = false;
            staged.push("root".to_string());
        }
        for role in std::mem::take(&mut self.dirty) {
            let expiry = self.ws.settings.expiry_for(&role)?;
            let t = self.targets.get_mut(&role).expect("dirty role is loaded");
            t.signed.set_expires(Expires(trunc_seconds(now + expiry)));
            t.signatures.clear();
            self.ws.stage(&role, t)?;
            staged.push(role);
        }
        Ok(staged)
    }
}

/// Loads a role as the next version to stage: the staged metadata as it is, or the
/// published metadata with its version increased by one.
fn load_next<T: Metadata>(ws: &Workspace, role: &str) -> Result<Option<Signed<T>>> {
    if let Some(s) = ws.staged::<T>(role)? {
        return Ok(Some(s));
    }
    Ok(ws.published::<T>(role)?.map(|mut p| {
        let v = p.signed.version();
        p.signed.set_version(v + 1);
        p
    }))
}

/// Drops sub-second precision (metadata dates have whole seconds).
pub fn trunc_seconds(t: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.timestamp(), 0).expect("in range")
}

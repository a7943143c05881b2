//! Petrel's manifests as TUF targets: group manifests (`groups/<group>.json`), assignment
//! bins (`assign/<bin>.json`) and campaign manifests (`campaigns/<campaign>.json`), each
//! listed by its own delegated role, and the capabilities (scoped keys) a delegation
//! carries. The formats themselves are defined in `petrel_client::manifest`
//! (`docs/formats.md`).
//!
//! Every change goes through the same steps, and nothing is staged unless all pass:
//!
//! 1. The authored TOML is parsed strictly and validated; errors name the file and field.
//! 2. The manifest's target path is searched the way a device searches it (pre-order,
//!    through matching delegations only). The role that lists it, or the role it will be
//!    added to, is the role that signs it. The conventional roles `groups`, `campaigns` and
//!    `assign` (paths `groups/*`, …, terminating, one new key each) are created on first
//!    use unless they exist.
//! 3. The current manifest, if any, is read from the workspace: revisions only grow.
//! 4. The manifest is checked against the capabilities of every delegation on the chain to
//!    the signing role (their intersection), as devices will check it.
//! 5. It is compiled to canonical JSON and added as a target of that role. Only that role
//!    is staged, so `publish` re-signs that role, the snapshot and the timestamp.
//!
//! `publish` checks step 4 again before it signs anything ([`check_before_publish`]): a
//! grant may have been narrowed, or may have expired, since a manifest was staged.
//!
//! Assignment bins never hold a clear device id: only salted hashes reach the workspace.

mod assign;
mod campaign;
mod capabilities;
mod group;
mod index;
pub mod lookup;
mod recheck;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use petrel_client::manifest::{CapabilityChain, Manifest, ValidationError, MAX_MANIFEST_BYTES};
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use petrel_client::tuf::schema::{Targets, Unrecognized};

pub use assign::{
    assign_csv, assign_devices, canary_assigned, check_device_id, read_device_ids, remove_devices,
    AssignOptions, AssignReport, AssignmentLookup, BinListing, CsvAssignOptions, DeviceAssignment,
    RemoveReport,
};
pub use campaign::{
    authoring_warnings, campaign_details, change_campaign_state, create_campaign, create_campaigns,
    list_campaigns, revise_campaign, update_campaign, CampaignBatchReport, CampaignDetails,
    CampaignList, CampaignReport, CampaignSummary, StateChange,
};
pub use capabilities::{
    check_role_manifests, existing_delegation, read_capabilities, set_delegation_capabilities,
};
pub use group::{
    list_groups, set_group, set_groups, GroupAppSummary, GroupBatchReport, GroupList, GroupReport,
    GroupSummary, UnusableGroup,
};
pub use index::{refresh_campaign_index, IndexReport};
pub use lookup::{Listing, Search};
pub use recheck::check_before_publish;

use crate::editor::{AddOptions, DelegationSpec, Editor, KeyType};
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// A conventional role for one kind of manifest.
#[derive(Clone, Copy, Debug)]
pub struct Convention {
    /// The role's name.
    pub role: &'static str,
    /// The path pattern delegated to it.
    pub paths: &'static str,
}

/// `groups`, trusted for `groups/*`.
pub const GROUPS: Convention = Convention {
    role: "groups",
    paths: "groups/*",
};
/// `campaigns`, trusted for `campaigns/*`.
pub const CAMPAIGNS: Convention = Convention {
    role: "campaigns",
    paths: "campaigns/*",
};
/// `index`, trusted for the campaign index (`index/fleet.json`, `index/group-<group>.json`).
pub const INDEX: Convention = Convention {
    role: "index",
    paths: "index/*",
};
/// `assign`, trusted for `assign/*`.
pub const ASSIGN: Convention = Convention {
    role: "assign",
    paths: "assign/*",
};

/// Where a manifest will be listed and who signs it.
#[derive(Clone, Debug)]
pub struct Destination {
    /// The target path.
    pub name: String,
    /// The role given to `add_targets` (may delegate to hashed bins).
    pub add_role: String,
    /// The role that will list and sign the manifest.
    pub signer: String,
    /// Roles from `targets` to `signer`, both included.
    pub chain: Vec<String>,
    /// The current listing, if the manifest exists.
    pub current: Option<Listing>,
}

/// One edit of manifests: an editor, keys generated for new roles (saved only on
/// [`Session::commit`]), and the compiled manifests staged so far.
///
/// A session may stage any number of manifests: [`Session::stage`] only keeps the
/// compiled bytes, and [`Session::commit`] adds all of them to their roles at once (one
/// content-store pass and one file-system sync per role, each changed role written
/// once), so staging N manifests costs O(N), not O(N²).
pub struct Session<'w> {
    ed: Editor<'w>,
    new_keys: Vec<(PrivateKey, String)>,
    notes: Vec<String>,
    /// Manifests waiting to be added by [`Session::commit`], in the order staged.
    pending: Vec<(Destination, Vec<u8>)>,
    /// Target names in `pending`.
    pending_names: BTreeSet<String>,
    /// Conventional roles known to exist in the editor (checked once per session).
    ensured: BTreeSet<&'static str>,
    /// Capabilities along each chain seen, read once per session (staging manifests
    /// never changes a delegation).
    chains: BTreeMap<Vec<String>, CapabilityChain>,
    /// The groups with a canary device in the assignment bins, computed once on demand.
    canaries: Option<assign::CanaryIndex>,
}

impl<'w> Session<'w> {
    /// A session over `ws`.
    pub fn new(ws: &'w Workspace) -> Session<'w> {
        Session {
            ed: Editor::new(ws),
            new_keys: Vec::new(),
            notes: Vec::new(),
            pending: Vec::new(),
            pending_names: BTreeSet::new(),
            ensured: BTreeSet::new(),
            chains: BTreeMap::new(),
            canaries: None,
        }
    }

    /// How many manifests are staged and waiting for [`Session::commit`].
    pub fn staged_count(&self) -> usize {
        self.pending.len()
    }

    /// The editor.
    pub fn editor(&mut self) -> &mut Editor<'w> {
        &mut self.ed
    }

    /// What the session did besides the change itself (roles created), for the user.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Creates the conventional role unless a role of that name exists anywhere in the
    /// delegation graph (a partner may own it, with capabilities).
    pub fn ensure_role(&mut self, conv: Convention) -> Result<()> {
        if self.ensured.contains(conv.role) {
            return Ok(());
        }
        if self.ed.locate(conv.role).is_ok() {
            self.ensured.insert(conv.role);
            return Ok(());
        }
        if self.ed.has_role(conv.role)? {
            return Err(Error::role(
                conv.role,
                "has metadata but is not delegated from targets; delegate it (petrel-repo delegate) or remove it",
            ));
        }
        let (key, pem) = KeyType::Ed25519.generate()?;
        self.ed.delegate(DelegationSpec {
            from: "targets".into(),
            name: conv.role.into(),
            paths: Some(vec![conv.paths.into()]),
            hash_prefixes: None,
            keys: vec![key.public_key().clone()],
            threshold: 1,
            terminating: true,
            extra: Unrecognized::new(),
        })?;
        self.notes.push(format!(
            "created role {} (paths {}, terminating) with a new key {}",
            conv.role,
            conv.paths,
            key.key_id()
        ));
        self.new_keys.push((key, pem));
        let bins = self.ed.workspace().settings.layout.bins_for(conv.role);
        if bins > 0 {
            let (bin_key, bin_pem) = KeyType::Ed25519.generate()?;
            self.ed.delegate_bins(crate::editor::BinsSpec {
                from: conv.role.into(),
                bins,
                name_prefix: conv.role.into(),
                keys: vec![bin_key.public_key().clone()],
                threshold: 1,
            })?;
            self.notes.push(format!(
                "delegated {} to {bins} hashed bins ({}-…) with a new key {}",
                conv.role,
                conv.role,
                bin_key.key_id()
            ));
            self.new_keys.push((bin_key, bin_pem));
        }
        self.ensured.insert(conv.role);
        Ok(())
    }

    /// Decides which role lists `name`: where a device finds it today, else `requested`
    /// (or the conventional role, created if needed). Checks that a device searching for
    /// `name` would reach that role.
    pub fn destination(
        &mut self,
        name: &str,
        requested: Option<&str>,
        conv: Convention,
    ) -> Result<Destination> {
        if let Search::Found(l) = lookup::search(&mut self.ed, name)? {
            let add_role = match requested {
                Some(r) => {
                    if self.ed.destination_role(r, name)? != l.role {
                        return Err(Error::target(
                            name,
                            format!(
                                "is published by role {:?}, not {r:?}; change it there (--role {}) or remove it there first",
                                l.role, l.role
                            ),
                        ));
                    }
                    r.to_string()
                }
                None => l.role.clone(),
            };
            return Ok(Destination {
                name: name.into(),
                add_role,
                signer: l.role.clone(),
                chain: l.chain.clone(),
                current: Some(l),
            });
        }
        let role = requested.unwrap_or(conv.role);
        if role == conv.role {
            self.ensure_role(conv)?;
        }
        self.ed.locate(role)?;
        let signer = self.ed.destination_role(role, name)?;
        let searched = match lookup::search(&mut self.ed, name)? {
            Search::NotFound(searched) => searched,
            Search::Found(l) => {
                return Err(Error::target(
                    name,
                    format!("appeared in role {:?} while choosing its role", l.role),
                ))
            }
        };
        let Some((_, chain)) = searched.iter().find(|(r, _)| *r == signer) else {
            let path: Vec<&str> = searched.iter().map(|(r, _)| r.as_str()).collect();
            return Err(Error::target(
                name,
                format!(
                    "devices searching for it would never reach role {signer:?} (they search {}): \
                     check the paths delegated on the way, and terminating delegations listed before it",
                    path.join(", ")
                ),
            ));
        };
        Ok(Destination {
            name: name.into(),
            add_role: role.into(),
            signer: signer.clone(),
            chain: chain.clone(),
            current: None,
        })
    }

    /// The capabilities along a destination's chain.
    pub fn chain(&mut self, dest: &Destination) -> Result<CapabilityChain> {
        if let Some(c) = self.chains.get(&dest.chain) {
            return Ok(c.clone());
        }
        let c = lookup::capability_chain(&mut self.ed, &dest.chain)?;
        self.chains.insert(dest.chain.clone(), c.clone());
        Ok(c)
    }

    /// The groups that have a canary device in the workspace's assignment bins (staged
    /// view), read once per session.
    pub(crate) fn canaries(&mut self) -> Result<&assign::CanaryIndex> {
        if self.canaries.is_none() {
            self.canaries = Some(assign::CanaryIndex::read(&mut self.ed)?);
        }
        Ok(self.canaries.as_ref().expect("read above"))
    }

    /// The current manifest at a listing, parsed strictly, with its exact bytes.
    pub fn read_current<T: Manifest>(&mut self, l: &Listing) -> Result<(T, Vec<u8>)> {
        let bytes = lookup::read_listed(&mut self.ed, l)?;
        let m = parse_current(l, &bytes)?;
        Ok((m, bytes))
    }

    /// The exact bytes of the current manifest at a listing (parse them with
    /// [`parse_current`]).
    pub(crate) fn read_current_bytes(&mut self, l: &Listing) -> Result<Vec<u8>> {
        lookup::read_listed(&mut self.ed, l)
    }

    /// Stages compiled manifest bytes as the target `dest.name` of `dest.add_role`: they
    /// are kept until [`Session::commit`], which adds every staged manifest to its role.
    /// Staging the same target twice in one session is refused.
    pub fn stage(&mut self, dest: &Destination, bytes: &[u8]) -> Result<()> {
        if !self.pending_names.insert(dest.name.clone()) {
            return Err(Error::target(
                &dest.name,
                "is staged twice in one change; give each manifest once",
            ));
        }
        self.pending.push((dest.clone(), bytes.to_vec()));
        Ok(())
    }

    /// Adds every staged manifest to its role: one add per role (contents stored in
    /// parallel and made durable with one sync), then checks that each landed in the
    /// role planned for it.
    fn add_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let mut by_role: BTreeMap<String, Vec<(Destination, Vec<u8>)>> = BTreeMap::new();
        for (dest, bytes) in pending {
            by_role
                .entry(dest.add_role.clone())
                .or_default()
                .push((dest, bytes));
        }
        for (role, items) in by_role {
            let (dests, contents): (Vec<Destination>, Vec<(String, Vec<u8>)>) = items
                .into_iter()
                .map(|(d, b)| {
                    let name = d.name.clone();
                    (d, (name, b))
                })
                .unzip();
            let added = self.ed.add_target_bytes(
                &contents,
                &AddOptions {
                    role: Some(role),
                    custom: None,
                },
            )?;
            for (dest, a) in dests.iter().zip(&added) {
                if a.name != dest.name || a.role != dest.signer {
                    return Err(Error::target(
                        &dest.name,
                        format!("was not placed in role {:?} as planned", dest.signer),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Adds every staged manifest to its role, saves generated keys and stages every
    /// changed role (each written once). Returns the roles staged.
    pub fn commit(mut self) -> Result<Vec<String>> {
        self.add_pending()?;
        for (k, pem) in &self.new_keys {
            self.ed.workspace().save_private_key(k, pem)?;
        }
        self.ed.save()
    }
}

/// The current manifest at a listing, parsed strictly from its bytes.
pub(crate) fn parse_current<T: Manifest>(l: &Listing, bytes: &[u8]) -> Result<T> {
    T::from_json(bytes).map_err(|e| {
        Error::target(
            &l.name,
            format!(
                "the current manifest (role {:?}) cannot be read, so its revision is unknown: {e}",
                l.role
            ),
        )
    })
}

/// The manifests to read from `path`: the file itself, or every `*.toml` file directly in
/// the directory `path` (not in subdirectories; names starting with `.` are skipped),
/// sorted by name. A directory without any is an error.
pub fn manifest_files(path: &Path) -> Result<Vec<std::path::PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let p = entry.path();
        if std::fs::metadata(&p)
            .map_err(|e| Error::io(&p, e))?
            .is_file()
        {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::manifest(
            path,
            "the directory holds no *.toml manifest (subdirectories are not read)",
        ));
    }
    Ok(files)
}

/// Every error of a batch, as one error: the error itself when there is one, else a
/// count and the first few, one per line.
pub(crate) fn batch_errors(what: &str, total: usize, mut errors: Vec<Error>) -> Error {
    if errors.len() == 1 {
        return errors.remove(0);
    }
    const SHOWN: usize = 20;
    let mut msg = format!(
        "{} of {total} {what} cannot be staged, so nothing was staged:",
        errors.len()
    );
    for e in errors.iter().take(SHOWN) {
        msg.push_str("\n  ");
        msg.push_str(&e.to_string());
    }
    if errors.len() > SHOWN {
        msg.push_str(&format!("\n  … and {} more", errors.len() - SHOWN));
    }
    Error::State(msg)
}

/// Reads an authored file (TOML), refusing one larger than a manifest may be.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        return Err(Error::manifest(
            path,
            format!(
                "{} bytes is more than the {MAX_MANIFEST_BYTES}-byte limit",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|_| Error::manifest(path, "not UTF-8 text"))
}

/// A validation error as a file error.
pub(crate) fn invalid(path: &Path, e: ValidationError) -> Error {
    Error::manifest(path, e.to_string())
}

/// Whether a listing is what the tree already has, or a change waiting for `publish`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publication {
    /// The published role lists exactly this.
    Published,
    /// Staged: not published yet (or different from what is published).
    Staged,
}

impl std::fmt::Display for Publication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Publication::Published => "published",
            Publication::Staged => "staged, not yet published",
        })
    }
}

/// Whether the published metadata of the listing's role lists the same bytes.
pub fn publication(ws: &Workspace, l: &Listing) -> Result<Publication> {
    let published = ws
        .published::<Targets>(&l.role)?
        .and_then(|t| t.signed.targets.get(&l.name).cloned());
    Ok(match published {
        Some(f) if f.length == l.file.length && f.hashes == l.file.hashes => Publication::Published,
        _ => Publication::Staged,
    })
}

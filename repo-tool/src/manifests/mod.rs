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

use std::path::Path;

use petrel_client::manifest::{CapabilityChain, Manifest, ValidationError, MAX_MANIFEST_BYTES};
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use petrel_client::tuf::schema::{Targets, Unrecognized};

pub use assign::{
    assign_devices, canary_assigned, check_device_id, read_device_ids, remove_devices,
    AssignOptions, AssignReport, AssignmentLookup, BinListing, DeviceAssignment, RemoveReport,
};
pub use campaign::{
    authoring_warnings, campaign_details, change_campaign_state, create_campaign, list_campaigns,
    revise_campaign, update_campaign, CampaignDetails, CampaignList, CampaignReport,
    CampaignSummary, StateChange,
};
pub use capabilities::{
    check_role_manifests, existing_delegation, read_capabilities, set_delegation_capabilities,
};
pub use group::{
    list_groups, set_group, GroupAppSummary, GroupList, GroupReport, GroupSummary, UnusableGroup,
};
pub use index::{refresh_campaign_index, IndexReport};
pub use lookup::{Listing, Search};
pub use recheck::check_before_publish;

use crate::editor::{AddOptions, DelegationSpec, Editor, KeyType, SourceFile};
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
/// [`Session::commit`]), and a scratch directory for compiled manifests.
pub struct Session<'w> {
    ed: Editor<'w>,
    new_keys: Vec<(PrivateKey, String)>,
    notes: Vec<String>,
    scratch: Option<tempfile::TempDir>,
}

impl<'w> Session<'w> {
    /// A session over `ws`.
    pub fn new(ws: &'w Workspace) -> Session<'w> {
        Session {
            ed: Editor::new(ws),
            new_keys: Vec::new(),
            notes: Vec::new(),
            scratch: None,
        }
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
        if self.ed.locate(conv.role).is_ok() {
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
        lookup::capability_chain(&mut self.ed, &dest.chain)
    }

    /// The current manifest at a listing, parsed strictly, with its exact bytes.
    pub fn read_current<T: Manifest>(&mut self, l: &Listing) -> Result<(T, Vec<u8>)> {
        let bytes = lookup::read_listed(&mut self.ed, l)?;
        let m = T::from_json(&bytes).map_err(|e| {
            Error::target(
                &l.name,
                format!(
                    "the current manifest (role {:?}) cannot be read, so its revision is unknown: {e}",
                    l.role
                ),
            )
        })?;
        Ok((m, bytes))
    }

    /// Adds compiled manifest bytes as the target `dest.name` of `dest.add_role`.
    pub fn stage(&mut self, dest: &Destination, bytes: &[u8]) -> Result<()> {
        if self.scratch.is_none() {
            let dir = self.ed.workspace().dir().to_path_buf();
            self.scratch = Some(
                tempfile::Builder::new()
                    .prefix(".manifests-")
                    .tempdir_in(&dir)
                    .map_err(|e| Error::io(&dir, e))?,
            );
        }
        let dir = self.scratch.as_ref().expect("made above").path();
        let file = dir.join(dest.name.replace('/', "_"));
        std::fs::write(&file, bytes).map_err(|e| Error::io(&file, e))?;
        let added = self.ed.add_targets(
            &[SourceFile {
                path: file.clone(),
                name: dest.name.clone(),
            }],
            &AddOptions {
                role: Some(dest.add_role.clone()),
                custom: None,
            },
        )?;
        let _ = std::fs::remove_file(&file);
        if added.first().map(|a| a.role.as_str()) != Some(dest.signer.as_str()) {
            return Err(Error::target(
                &dest.name,
                format!("was not placed in role {:?} as planned", dest.signer),
            ));
        }
        Ok(())
    }

    /// Saves generated keys and stages every changed role. Returns the roles staged.
    pub fn commit(mut self) -> Result<Vec<String>> {
        for (k, pem) in &self.new_keys {
            self.ed.workspace().save_private_key(k, pem)?;
        }
        self.ed.save()
    }
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

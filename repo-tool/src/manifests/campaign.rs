//! `petrel-repo campaign create|update|halt|resume|cancel|list|show`: campaign manifests as
//! `campaigns/<campaign>.json`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use petrel_client::manifest::{
    campaign_target_path, check_id, group_target_path, CampaignManifest, CampaignState,
    Capabilities, CapabilityChain, ConsentPolicy, GroupManifest, Manifest, ManifestHash, Method,
    OfferHash, Problems, Rollout, UtcTime, Wave,
};

use super::group::check_revision_grows;
use super::{
    batch_errors, invalid, lookup, publication, read_text, Listing, Publication, Session, CAMPAIGNS,
};
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// What a campaign command did.
#[derive(Clone, Debug)]
pub struct CampaignReport {
    /// The campaign id.
    pub id: String,
    /// The target path.
    pub target: String,
    /// The role that lists and signs it.
    pub role: String,
    /// The new revision.
    pub revision: u64,
    /// The new state.
    pub state: CampaignState,
    /// The consent policy.
    pub policy: ConsentPolicy,
    /// The revision and state it replaces, if the campaign existed.
    pub previous: Option<(u64, CampaignState)>,
    /// SHA-256 of the compiled manifest.
    pub sha256: ManifestHash,
    /// SHA-256 of the manifest it replaces.
    pub previous_sha256: Option<ManifestHash>,
    /// SHA-256 of the campaign's offer (what consent is bound to: notice, payload, consent
    /// policy and stage, method, forced set; not the state, schedule or waves).
    pub offer_sha256: OfferHash,
    /// The offer hash of the manifest it replaces.
    pub previous_offer_sha256: Option<OfferHash>,
    /// Whether the compiled manifest is byte-identical to the current one (nothing staged).
    pub unchanged: bool,
    /// Roles created on the way, and similar notes.
    pub notes: Vec<String>,
    /// Authoring warnings: the campaign is staged, but may not do what was meant (a consent
    /// deadline already past, a wave that opens only at `not_before`, a canary stage without
    /// canaries). Each names the campaign.
    pub warnings: Vec<String>,
}

/// A state change of an existing campaign: a new revision with a new `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateChange {
    /// active → halted: devices stop downloading and installing, keep what is staged.
    Halt,
    /// halted → active.
    Resume,
    /// active or halted → cancelled. Final.
    Cancel,
}

impl StateChange {
    fn verb(self) -> &'static str {
        match self {
            StateChange::Halt => "halt",
            StateChange::Resume => "resume",
            StateChange::Cancel => "cancel",
        }
    }
}

/// Validates the campaign in `file` and stages it as a new campaign, listed by `role`
/// (default `campaigns`, created on first use). Refused if the campaign exists.
pub fn create_campaign(ws: &Workspace, file: &Path, role: Option<&str>) -> Result<CampaignReport> {
    write_campaign(ws, file, role, true)
}

/// Validates the campaign in `file` and stages it as a new revision of an existing
/// campaign, in the role that lists it. The revision must grow; a cancelled campaign
/// stays cancelled.
pub fn update_campaign(ws: &Workspace, file: &Path, role: Option<&str>) -> Result<CampaignReport> {
    write_campaign(ws, file, role, false)
}

/// What `campaign create` did with a directory (or list) of campaign manifests.
#[derive(Clone, Debug, Default)]
pub struct CampaignBatchReport {
    /// One report per file, in the order given.
    pub campaigns: Vec<CampaignReport>,
    /// Roles created on the way, and similar notes.
    pub notes: Vec<String>,
}

/// [`create_campaign`] for many files in one change: every file is validated and checked
/// first (an error names the file; with several errors, all are listed), and only if all
/// pass are the campaigns staged, together. Every campaign must be new, and two files
/// for the same campaign are refused.
pub fn create_campaigns(
    ws: &Workspace,
    files: &[PathBuf],
    role: Option<&str>,
) -> Result<CampaignBatchReport> {
    let mut s = Session::new(ws);
    let mut out = CampaignBatchReport::default();
    let mut errors = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    let mut groups = GroupRevisions::default();
    for file in files {
        match prepare_campaign(&mut s, ws, file, role, true, &mut seen, &mut groups) {
            Ok(r) => out.campaigns.push(r),
            Err(e) => errors.push(super::group::in_file(files.len(), file, e)),
        }
    }
    if !errors.is_empty() {
        return Err(batch_errors("campaign manifests", files.len(), errors));
    }
    out.notes = s.notes().to_vec();
    if s.staged_count() > 0 {
        s.commit()?;
    }
    Ok(out)
}

fn write_campaign(
    ws: &Workspace,
    file: &Path,
    role: Option<&str>,
    create: bool,
) -> Result<CampaignReport> {
    let mut s = Session::new(ws);
    let mut r = prepare_campaign(
        &mut s,
        ws,
        file,
        role,
        create,
        &mut HashMap::new(),
        &mut GroupRevisions::default(),
    )?;
    if !r.unchanged {
        r.notes = s.notes().to_vec();
        s.commit()?;
    }
    Ok(r)
}

/// The current revision of each group a campaign names (`None`: no such group), read once
/// per change.
#[derive(Default)]
struct GroupRevisions(HashMap<String, Option<u64>>);

impl GroupRevisions {
    fn get(&mut self, s: &mut Session<'_>, id: &str) -> Result<Option<u64>> {
        if let Some(r) = self.0.get(id) {
            return Ok(*r);
        }
        let rev = match lookup::find(s.editor(), &group_target_path(id))? {
            None => None,
            Some(l) => Some(s.read_current::<GroupManifest>(&l)?.0.revision),
        };
        self.0.insert(id.to_string(), rev);
        Ok(rev)
    }
}

/// Validates and checks one campaign manifest and, unless it is unchanged, stages it in
/// `s`; `seen` has the ids of the change's earlier files. The report has the authoring
/// warnings, not the session's notes.
fn prepare_campaign(
    s: &mut Session<'_>,
    ws: &Workspace,
    file: &Path,
    role: Option<&str>,
    create: bool,
    seen: &mut HashMap<String, PathBuf>,
    groups: &mut GroupRevisions,
) -> Result<CampaignReport> {
    let text = read_text(file)?;
    let c = CampaignManifest::from_toml(&text).map_err(|e| invalid(file, e))?;
    if let Some(other) = seen.get(&c.id) {
        return Err(Error::manifest(
            file,
            format!(
                "id: campaign {:?} is also given by {}; give each campaign once",
                c.id,
                other.display()
            ),
        ));
    }
    seen.insert(c.id.clone(), file.to_path_buf());
    let bytes = c.to_canonical_json().map_err(|e| invalid(file, e))?;
    let name = c.target_path();
    if create {
        if let Some(l) = lookup::find(s.editor(), &name)? {
            let (old, _) = s.read_current::<CampaignManifest>(&l)?;
            return Err(Error::manifest(
                file,
                format!(
                    "id: campaign {:?} already exists (revision {}, {}, role {:?}); change it with `petrel-repo campaign update`",
                    c.id, old.revision, old.state, l.role
                ),
            ));
        }
    } else if lookup::find(s.editor(), &name)?.is_none() {
        return Err(Error::manifest(
            file,
            format!(
                "id: there is no campaign {:?} in this repository; create it with `petrel-repo campaign create`",
                c.id
            ),
        ));
    }
    let dest = s.destination(&name, role, CAMPAIGNS)?;
    let mut previous = None;
    let mut previous_sha256 = None;
    if let Some(cur) = &dest.current {
        let (old, old_bytes) = s.read_current::<CampaignManifest>(cur)?;
        if old_bytes == bytes {
            return Ok(report(
                &c,
                &dest.signer,
                &bytes,
                Some(&old),
                None,
                true,
                Vec::new(),
            ));
        }
        check_revision_grows(ws, file, cur, old.revision, c.revision)?;
        if old.state == CampaignState::Cancelled && c.state != CampaignState::Cancelled {
            return Err(Error::manifest(
                file,
                format!(
                    "state: campaign {:?} was cancelled (revision {}); cancel is final, so it cannot become {}: publish a new campaign under another id",
                    c.id, old.revision, c.state
                ),
            ));
        }
        previous = Some(old);
        previous_sha256 = Some(ManifestHash::of(&old_bytes));
    }
    check_payload_group(s, file, &c, groups)?;
    check_capabilities(s, file, &dest, &c, ws)?;
    let warnings = warnings_with(&c, ws.now(), |g| Ok(s.canaries()?.any_in(g)))?;
    s.stage(&dest, &bytes)?;
    let mut r = report(
        &c,
        &dest.signer,
        &bytes,
        previous.as_ref(),
        previous_sha256,
        false,
        Vec::new(),
    );
    r.warnings = warnings;
    Ok(r)
}

/// What a valid campaign may still get wrong, judged against the workspace at `now`:
/// a consent deadline already past, waves that start before `schedule.not_before`, and a
/// canary stage while no device of the campaign's group is assigned as a canary.
pub fn authoring_warnings(
    ed: &mut Editor<'_>,
    c: &CampaignManifest,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>> {
    warnings_with(c, now, |groups| super::assign::canary_assigned(ed, groups))
}

/// [`authoring_warnings`], asking `has_canary` whether a device of the given groups
/// (`None`: of any group) is assigned as a canary.
fn warnings_with(
    c: &CampaignManifest,
    now: chrono::DateTime<chrono::Utc>,
    mut has_canary: impl FnMut(Option<&std::collections::BTreeSet<String>>) -> Result<bool>,
) -> Result<Vec<String>> {
    let mut w = Vec::new();
    if let Some(d) = c.consent.deadline.filter(|d| d.0 <= now) {
        w.push(format!(
            "campaign {:?}: the consent deadline {d} is already past (it is now {}): devices treat it as passed as soon as they see the campaign, so users get no time to answer; set consent.deadline to a later instant",
            c.id,
            UtcTime(crate::editor::trunc_seconds(now))
        ));
    }
    if let Some(nb) = c.schedule.not_before {
        for (i, wave) in c.rollout.waves.iter().enumerate() {
            if wave.start < nb {
                w.push(format!(
                    "campaign {:?}: wave {} starts at {}, before schedule.not_before {nb}: it effectively opens at {nb}; set rollout.waves[{i}].start to {nb} or later to say so",
                    c.id,
                    i + 1,
                    wave.start
                ));
            }
        }
    }
    if c.rollout.canary {
        let groups = c.target_groups();
        if !has_canary(groups.as_ref())? {
            let whose = match &groups {
                Some(g) => format!("group {}", g.iter().cloned().collect::<Vec<_>>().join(", ")),
                None => "any group".to_string(),
            };
            let effect = if c.rollout.canary_passed {
                "the canary stage tests nothing"
            } else {
                "no device gets the campaign until a revision sets rollout.canary_passed"
            };
            w.push(format!(
                "campaign {:?} has a canary stage (rollout.canary = true), but no device of {whose} is assigned as a canary: {effect}; assign canaries with `petrel-repo assign --group G --devices FILE --canary`",
                c.id
            ));
        }
    }
    Ok(w)
}

fn report(
    c: &CampaignManifest,
    role: &str,
    bytes: &[u8],
    previous: Option<&CampaignManifest>,
    previous_sha256: Option<ManifestHash>,
    unchanged: bool,
    notes: Vec<String>,
) -> CampaignReport {
    CampaignReport {
        id: c.id.clone(),
        target: c.target_path(),
        role: role.to_string(),
        revision: c.revision,
        state: c.state,
        policy: c.consent.policy,
        previous: previous.map(|p| (p.revision, p.state)),
        sha256: ManifestHash::of(bytes),
        previous_sha256,
        offer_sha256: c.offer_sha256(),
        previous_offer_sha256: previous.map(CampaignManifest::offer_sha256),
        unchanged,
        notes,
        warnings: Vec::new(),
    }
}

/// A group payload must name the group's current revision: an older one means devices
/// would see a superseded campaign, a newer one does not exist yet.
fn check_payload_group(
    s: &mut Session<'_>,
    file: &Path,
    c: &CampaignManifest,
    groups: &mut GroupRevisions,
) -> Result<()> {
    let Some(g) = &c.payload.group else {
        return Ok(());
    };
    let mut p = Problems::new();
    match groups.get(s, &g.id)? {
        None => p.push(
            "payload.group.id",
            format!(
                "there is no group {:?} in this repository; publish it first with `petrel-repo group set`",
                g.id
            ),
        ),
        Some(revision) => {
            if revision < g.revision {
                p.push(
                    "payload.group.revision",
                    format!(
                        "group {:?} is at revision {revision}; set revision {} first with `petrel-repo group set`",
                        g.id, g.revision
                    ),
                );
            } else if revision > g.revision {
                p.push(
                    "payload.group.revision",
                    format!(
                        "group {:?} is already at revision {revision}; devices would treat a campaign for revision {} as superseded (use {revision})",
                        g.id, g.revision
                    ),
                );
            }
        }
    }
    p.finish("campaign manifest").map_err(|e| invalid(file, e))
}

fn check_capabilities(
    s: &mut Session<'_>,
    file: &Path,
    dest: &super::Destination,
    c: &CampaignManifest,
    ws: &Workspace,
) -> Result<()> {
    let chain = s.chain(dest)?;
    chain.check_campaign(c, ws.now()).map_err(|v| {
        Error::manifest(
            file,
            format!(
                "campaign {:?} may not be signed by role {:?}: {v}",
                c.id, dest.signer
            ),
        )
    })
}

/// Halts, resumes or cancels a campaign: a new revision with the new state, in the role
/// that lists it, checked against that role's capabilities. Cancel is final.
pub fn change_campaign_state(
    ws: &Workspace,
    id: &str,
    change: StateChange,
) -> Result<CampaignReport> {
    revise_campaign(ws, id, change.verb(), |c| {
        let refuse = |why: String| {
            Err(Error::State(format!(
                "campaign {id:?}: cannot {}: {why}",
                change.verb()
            )))
        };
        let old_revision = c.revision - 1;
        c.state = match (change, c.state) {
            (_, CampaignState::Cancelled) if change != StateChange::Cancel => {
                return refuse(format!(
                    "it was cancelled (revision {old_revision}); cancel is final. Publish a new campaign under another id"
                ))
            }
            (StateChange::Halt, CampaignState::Active) => CampaignState::Halted,
            (StateChange::Resume, CampaignState::Halted) => CampaignState::Active,
            (StateChange::Cancel, CampaignState::Active | CampaignState::Halted) => {
                CampaignState::Cancelled
            }
            (_, state) => {
                return refuse(format!("it is already {state} (revision {old_revision})"))
            }
        };
        Ok(())
    })
}

/// Stages a new revision of a published or staged campaign made by `change` (which gets
/// the current manifest with the revision already raised), in the role that lists it,
/// checked against that role's capabilities. `what` names the change in errors.
pub fn revise_campaign(
    ws: &Workspace,
    id: &str,
    what: &str,
    change: impl FnOnce(&mut CampaignManifest) -> Result<()>,
) -> Result<CampaignReport> {
    check_id(id).map_err(|e| Error::Usage(format!("campaign id {id:?}: {e}")))?;
    let mut s = Session::new(ws);
    let name = campaign_target_path(id);
    let Some(cur) = lookup::find(s.editor(), &name)? else {
        return Err(Error::State(format!(
            "there is no campaign {id:?} in this repository (see `petrel-repo campaign list`)"
        )));
    };
    let (old, old_bytes) = s.read_current::<CampaignManifest>(&cur)?;
    let mut c = old.clone();
    c.revision = old.revision.checked_add(1).ok_or_else(|| {
        Error::State(format!(
            "campaign {id:?}: revision {} cannot grow",
            old.revision
        ))
    })?;
    change(&mut c)?;
    {
        use petrel_client::manifest::Manifest as _;
        c.validate()
            .map_err(|e| Error::State(format!("campaign {id:?}: cannot {what}: {e}")))?;
    }
    let bytes = c
        .to_canonical_json()
        .map_err(|e| Error::State(format!("campaign {id:?}: {e}")))?;
    let dest = s.destination(&name, None, CAMPAIGNS)?;
    let chain = s.chain(&dest)?;
    chain.check_campaign(&c, ws.now()).map_err(|v| {
        Error::State(format!(
            "campaign {id:?}: cannot {what}: role {:?} may not sign the new revision: {v}",
            dest.signer
        ))
    })?;
    s.stage(&dest, &bytes)?;
    s.commit()?;
    Ok(report(
        &c,
        &dest.signer,
        &bytes,
        Some(&old),
        Some(ManifestHash::of(&old_bytes)),
        false,
        Vec::new(),
    ))
}

/// One line of `campaign list`.
#[derive(Clone, Debug)]
pub struct CampaignSummary {
    /// The campaign id.
    pub id: String,
    /// Its revision.
    pub revision: u64,
    /// Its state.
    pub state: CampaignState,
    /// Its consent policy.
    pub policy: ConsentPolicy,
    /// Its method.
    pub method: Method,
    /// Canary stage and waves, in words (`3 waves to 100%`).
    pub waves: String,
    /// The role listing it.
    pub role: String,
    /// Whether the tree already has this revision.
    pub publication: Publication,
    /// Why devices will reject it, if they will (its role's capabilities forbid it).
    pub refused: Option<String>,
}

/// Everything about one campaign, for `campaign show`.
#[derive(Clone, Debug)]
pub struct CampaignDetails {
    /// The manifest.
    pub manifest: CampaignManifest,
    /// Its exact bytes.
    pub bytes: Vec<u8>,
    /// Where it is listed.
    pub listing: Listing,
    /// The capabilities along its delegation chain.
    pub chain: CapabilityChain,
    /// Whether the tree already has this revision.
    pub publication: Publication,
    /// Why devices will reject it, if they will.
    pub refused: Option<String>,
}

fn load(
    ed: &mut Editor<'_>,
    ws: &Workspace,
    l: Listing,
) -> Result<std::result::Result<CampaignDetails, String>> {
    let bytes = match lookup::read_listed(ed, &l) {
        Ok(b) => b,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let manifest = match CampaignManifest::from_json(&bytes) {
        Ok(m) => m,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if manifest.target_path() != l.name {
        return Ok(Err(format!(
            "its content is campaign {:?}, which belongs in {}; devices refuse it",
            manifest.id,
            manifest.target_path()
        )));
    }
    let chain = lookup::capability_chain(ed, &l.chain)?;
    let refused = chain
        .check_campaign(&manifest, ws.now())
        .err()
        .map(|v| v.to_string());
    let publication = publication(ws, &l)?;
    Ok(Ok(CampaignDetails {
        manifest,
        bytes,
        listing: l,
        chain,
        publication,
        refused,
    }))
}

/// What `campaign list` shows.
#[derive(Clone, Debug, Default)]
pub struct CampaignList {
    /// Every campaign devices will find (staged changes included), by id.
    pub campaigns: Vec<CampaignSummary>,
    /// `campaigns/*.json` targets that are not usable campaigns, with the reason.
    pub unusable: Vec<(String, String)>,
}

/// Every campaign devices will find (staged changes included), by id, and the
/// `campaigns/*.json` targets that are not usable campaigns (with the reason).
pub fn list_campaigns(ws: &Workspace) -> Result<CampaignList> {
    let mut ed = Editor::new(ws);
    let mut out = Vec::new();
    let mut unusable = Vec::new();
    for name in lookup::names_under(&mut ed, "campaigns")? {
        let Some(l) = lookup::find(&mut ed, &name)? else {
            continue;
        };
        match load(&mut ed, ws, l)? {
            Ok(d) => out.push(CampaignSummary {
                id: d.manifest.id.clone(),
                revision: d.manifest.revision,
                state: d.manifest.state,
                policy: d.manifest.consent.policy,
                method: d.manifest.method,
                waves: waves_summary(&d.manifest.rollout),
                role: d.listing.role.clone(),
                publication: d.publication,
                refused: d.refused,
            }),
            Err(why) => unusable.push((name, why)),
        }
    }
    Ok(CampaignList {
        campaigns: out,
        unusable,
    })
}

/// The campaign `id`, as devices will find it.
pub fn campaign_details(ws: &Workspace, id: &str) -> Result<CampaignDetails> {
    check_id(id).map_err(|e| Error::Usage(format!("campaign id {id:?}: {e}")))?;
    let mut ed = Editor::new(ws);
    let name = campaign_target_path(id);
    let Some(l) = lookup::find(&mut ed, &name)? else {
        return Err(Error::State(format!(
            "there is no campaign {id:?} in this repository (see `petrel-repo campaign list`)"
        )));
    };
    load(&mut ed, ws, l)?.map_err(|why| Error::target(name, why))
}

/// `25%`, `0.5%`.
pub fn percent(bp: u32) -> String {
    let (whole, frac) = (bp / 100, bp % 100);
    if frac == 0 {
        format!("{whole}%")
    } else {
        format!("{whole}.{}%", format!("{frac:02}").trim_end_matches('0'))
    }
}

/// Canary stage and waves in words.
pub fn waves_summary(r: &Rollout) -> String {
    let mut parts = Vec::new();
    if r.canary {
        parts.push(if r.canary_passed {
            "canaries passed".to_string()
        } else {
            "canaries first".to_string()
        });
    }
    let n = r.waves.len();
    let plural = if n == 1 { "" } else { "s" };
    if r.has_selectors() {
        let mut by: Vec<&str> = Vec::new();
        for w in &r.waves {
            for (name, l) in w.selector_lists() {
                if l.is_some() && !by.contains(&name) {
                    by.push(name);
                }
            }
        }
        if r.waves.iter().any(|w| w.share_bp.is_some()) {
            by.push("share");
        }
        parts.push(format!("{n} wave{plural} by {}", by.join(", ")));
    } else {
        match r.waves.iter().map(Wave::share_or_all).max() {
            None => parts.push("all at once".into()),
            Some(last) => parts.push(format!("{n} wave{plural} to {}", percent(last))),
        }
    }
    parts.join(", ")
}

/// One wave in words, for `campaign show`: `regions eu-central, eu-west; up to 10% of
/// them by seed, from 2030-03-06T00:00:00Z`. A wave by share only reads as it always
/// did: `up to 25% of the fleet from …`.
pub fn wave_line(w: &Wave) -> String {
    let selectors: Vec<String> = w
        .selector_lists()
        .into_iter()
        .filter_map(|(name, l)| {
            l.map(|l| {
                format!(
                    "{name} {}",
                    l.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect();
    if selectors.is_empty() {
        return match w.share_bp {
            Some(bp) => format!("up to {} of the fleet from {}", percent(bp), w.start),
            None => format!("every device not in an earlier wave, from {}", w.start),
        };
    }
    let mut s = selectors.join("; ");
    match w.share_bp {
        Some(bp) => {
            let _ = write!(
                s,
                "; up to {} of them by seed, from {}",
                percent(bp),
                w.start
            );
        }
        None => {
            let _ = write!(
                s,
                "; every such device not in an earlier wave, from {}",
                w.start
            );
        }
    }
    s
}

impl CampaignDetails {
    /// The manifest as indented JSON (the published bytes are canonical: one line).
    pub fn pretty_json(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&self.bytes).expect("a parsed manifest is JSON");
        serde_json::to_string_pretty(&v).expect("serializes")
    }

    /// A human summary: where it is, who signs it, and what devices will do with it.
    pub fn summary(&self) -> String {
        let c = &self.manifest;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "campaign {}: revision {}, {} ({})",
            c.id, c.revision, c.state, self.publication
        );
        let _ = writeln!(
            o,
            "  target:       {} in role {} (chain {})",
            self.listing.name,
            self.listing.role,
            self.listing.chain.join(" -> ")
        );
        let _ = writeln!(
            o,
            "  sha256:       {} ({} bytes)",
            ManifestHash::of(&self.bytes),
            self.bytes.len()
        );
        let _ = writeln!(
            o,
            "  offer sha256: {} (consent is bound to it: notice, payload, consent, method, forced set)",
            self.manifest.offer_sha256()
        );
        let _ = writeln!(o, "  capabilities: {}", self.chain.describe());
        let effective = self
            .chain
            .effective()
            .map(|e: Capabilities| e.summary())
            .unwrap_or_else(|| "unreadable: nothing is accepted".into());
        let _ = writeln!(o, "  effective:    {effective}");
        match &self.refused {
            None => {
                let _ = writeln!(o, "  check:        within its capabilities");
            }
            Some(r) => {
                let _ = writeln!(o, "  check:        DEVICES WILL REJECT IT: {r}");
            }
        }
        let mut method = c.method.to_string();
        for (app, versions) in &c.forced_from {
            let v: Vec<&str> = versions.iter().map(String::as_str).collect();
            let _ = write!(method, "; {app} from [{}]", v.join(", "));
        }
        let _ = writeln!(o, "  method:       {method}");
        let mut consent = format!("{}, {}", c.consent.policy, c.consent.stage);
        if let Some(d) = c.consent.deadline {
            let _ = write!(consent, ", deadline {d}");
        }
        if c.consent.max_postpones > 0 {
            let _ = write!(consent, ", up to {} postponements", c.consent.max_postpones);
        }
        if c.consent.policy == ConsentPolicy::Administrator {
            let _ = write!(
                consent,
                ", {} of {} administrator key(s)",
                c.consent.administrator_threshold,
                c.consent.administrator_keys.len()
            );
        }
        let _ = writeln!(o, "  consent:      {consent}");
        for (locale, n) in &c.notice {
            let _ = writeln!(
                o,
                "  notice {locale:<6} {:?} ({}){}",
                n.title,
                n.severity,
                if c.default_locale.as_deref() == Some(locale) {
                    ", default"
                } else {
                    ""
                }
            );
        }
        let mut payload = Vec::new();
        if let Some(g) = &c.payload.group {
            payload.push(format!("group {} revision {}", g.id, g.revision));
        }
        for (app, v) in &c.payload.apps {
            payload.push(format!("{app} {v}"));
        }
        for app in &c.payload.remove {
            payload.push(format!("remove {app}"));
        }
        let _ = writeln!(o, "  payload:      {}", payload.join(", "));
        let sel = &c.applies_to;
        let mut applies: Vec<String> = sel
            .label_lists()
            .into_iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(n, l)| format!("{n} {}", l.iter().cloned().collect::<Vec<_>>().join(", ")))
            .collect();
        if !sel.groups.is_empty() {
            applies.push(format!(
                "groups {}",
                sel.groups.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        for (app, versions) in &sel.installed {
            let v: Vec<&str> = versions.iter().map(String::as_str).collect();
            applies.push(if v.is_empty() {
                format!("installed {app}")
            } else {
                format!("installed {app} [{}]", v.join(", "))
            });
        }
        for app in &sel.not_installed {
            applies.push(format!("not installed {app}"));
        }
        if sel.assigned_only {
            applies.push("explicitly enrolled devices only".into());
        }
        if applies.is_empty() {
            applies.push("every device (of the payload's group)".into());
        }
        let _ = writeln!(o, "  applies to:   {}", applies.join("; "));
        let sc = &c.schedule;
        let mut schedule = Vec::new();
        if let Some(t) = sc.not_before {
            schedule.push(format!("not before {t}"));
        }
        if let Some(t) = sc.not_after {
            schedule.push(format!("until {t}"));
        }
        if let Some(w) = sc.download_window {
            schedule.push(format!("downloads {w}"));
        }
        if let Some(w) = sc.apply_window {
            schedule.push(format!("installs {w}"));
        }
        if schedule.is_empty() {
            schedule.push("any time".into());
        }
        let _ = writeln!(o, "  schedule:     {}", schedule.join(", "));
        let _ = writeln!(o, "  rollout:      {}", waves_summary(&c.rollout));
        for (i, w) in c.rollout.waves.iter().enumerate() {
            let _ = writeln!(o, "    wave {}: {}", i + 1, wave_line(w));
        }
        if let Some(p) = c.post_install {
            let _ = writeln!(o, "  post-install: {p}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents() {
        assert_eq!(percent(10000), "100%");
        assert_eq!(percent(2500), "25%");
        assert_eq!(percent(50), "0.5%");
        assert_eq!(percent(1), "0.01%");
        assert_eq!(percent(1250), "12.5%");
    }
}

//! The device agent: the I/O shell around the pure decision engine.
//!
//! The engine ([`crate::decide::decide`]) does no I/O. The agent does all of it:
//!
//! 1. reads the device configuration ([`config::AgentConfig`]), the device profile, and the
//!    **actual** installed inventory from the device ([`inventory`]);
//! 2. refreshes the TUF metadata and fetches, verified, this device's assignment bin (only
//!    its own), its group manifest, every campaign manifest and the group's artifact target
//!    infos ([`repo::gather`]);
//! 3. reads its memory: the consent log ([`crate::consent::ConsentStore`]) and `state.json`
//!    ([`state::AgentState`]);
//! 4. calls `decide` with the current time, and persists the revisions observed
//!    (rollback protection) and a summary of the result;
//! 5. records consent answers bound to the offer shown (notice, payload, consent policy,
//!    method), naming the exact manifest bytes too;
//! 6. [`Agent::update`]: downloads what is due into staging ([`stage`]), applies what is
//!    due all or nothing after refreshing and deciding again ([`apply`], with a write-ahead
//!    journal and crash recovery at every start), and queues signed reports
//!    ([`crate::report`]).
//!
//! The `petrel` binary (`client/src/bin/petrel.rs`) is a thin command line over this
//! module; `docs/device.md` describes the files and the commands.

pub mod config;
pub mod daemon;
pub mod error;
pub mod exec;
pub mod faults;
pub mod inhibit;
pub mod install;
pub mod inventory;
pub mod plan;
pub mod render;
pub mod repo;
pub mod stage;
pub mod state;
pub mod update;

use std::fs::File;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::consent::{
    self, AdminConsentToken, ConsentError, ConsentEvent, ConsentState, ConsentStore,
};
use crate::decide::{decide, CampaignEntry, Decision, DeviceProfile, RepositoryView, Status};
use crate::fetch::{AutoTransport, HttpConfig};
use crate::manifest::{check_locale, Assignment, ConsentPolicy, ConsentStage, Severity};
use crate::tuf::updater::{Updater, UpdaterConfig};
pub use config::{AgentConfig, UtcOffsetSource};
pub use error::AgentError;
pub use inventory::InventorySource;
pub use repo::MetadataVersions;
pub use state::{AgentState, LastCheck, StatePaths};
pub use update::{
    InstallOutcome, InstallResult, QueuedReport, RunStatus, UpdateHooks, UpdateOutcome,
};

/// The device agent, holding the state directory's lock while it lives.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    paths: StatePaths,
    profile: DeviceProfile,
    recovered: Option<install::Recovery>,
    recovered_report: Option<QueuedReport>,
    _lock: File,
}

/// What `init` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitReport {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The version of the installed root.
    pub root_version: u64,
    /// Whether an existing root was replaced.
    pub replaced: bool,
}

/// One evaluation: the verified repository view, the device's memory, and the decision.
#[derive(Debug)]
pub struct Evaluation {
    /// The instant decided at.
    pub now: DateTime<Utc>,
    /// The verified manifests.
    pub view: RepositoryView,
    /// The trusted metadata versions.
    pub versions: MetadataVersions,
    /// `state.json` (already updated with the observed revisions).
    pub state: AgentState,
    /// The consent store, held open (locked) for answers.
    pub consent: ConsentStore,
    /// The decision.
    pub decision: Decision,
    /// The device-side precondition that held at the evaluation, if any.
    pub inhibit: Option<String>,
}

/// A consent answer.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Explicit agreement (`required` and `acknowledge`).
    Accept,
    /// Acknowledgement (`acknowledge`).
    Acknowledge,
    /// Refusal (`required`).
    Decline,
    /// Ask again at this instant.
    Postpone {
        /// When.
        until: DateTime<Utc>,
    },
    /// An administrator consent token (`administrator`).
    Token(Box<AdminConsentToken>),
}

impl Agent {
    /// Provisions the trusted root into `<state_dir>/metadata` and creates the state
    /// directory layout. Refuses to replace an existing root unless `force`, and refuses
    /// bytes that are not a self-signed root ([`AgentError::BadRoot`]).
    pub fn init(config: &AgentConfig, root: &[u8], force: bool) -> Result<InitReport, AgentError> {
        Agent::init_with(config, None, root, force)
    }

    /// [`Agent::init`] with the root read from `root_path`; errors name the file.
    pub fn init_file(
        config: &AgentConfig,
        root_path: &std::path::Path,
        force: bool,
    ) -> Result<InitReport, AgentError> {
        let bytes = std::fs::read(root_path).map_err(|e| {
            AgentError::Refused(format!("cannot read the root {}: {e}", root_path.display()))
        })?;
        Agent::init_with(config, Some(root_path), &bytes, force)
    }

    fn init_with(
        config: &AgentConfig,
        root_path: Option<&std::path::Path>,
        root: &[u8],
        force: bool,
    ) -> Result<InitReport, AgentError> {
        let version = crate::tuf::updater::TrustedRoot::from_trusted_bytes(root)
            .map_err(|reason| AgentError::BadRoot {
                path: root_path.map(std::path::Path::to_path_buf),
                reason: Box::new(reason),
            })?
            .version();
        let paths = StatePaths::new(&config.state_dir);
        paths.create_dirs()?;
        let _lock = paths.lock()?;
        let root_file = paths.metadata().join("root.json");
        let replaced = root_file.exists();
        if replaced && !force {
            return Err(AgentError::AlreadyProvisioned { path: root_file });
        }
        Updater::init_trusted_root(paths.metadata(), root)?;
        let state_file = paths.state_file();
        if !state_file.exists() {
            AgentState::load(&state_file)?.save(&state_file)?;
        }
        Ok(InitReport {
            state_dir: paths.root.clone(),
            root_version: version,
            replaced,
        })
    }

    /// Opens the agent: takes the lock, checks the device is provisioned, completes or
    /// undoes an interrupted install ([`install::recover`], before anything else: hooks,
    /// health check, then confirm or roll back), then reads the profile and the actual
    /// inventory. A finished install is reported.
    pub fn open(config: AgentConfig) -> Result<Agent, AgentError> {
        Agent::open_with(config, true)
    }

    /// [`Agent::open`]; with `settle` false, recovery only makes the installed set whole
    /// (the old or the new one) and leaves the hooks and the health check of a switched
    /// install for the next full start (`petrel recover`, run at boot before the
    /// applications start).
    pub fn open_with(config: AgentConfig, settle: bool) -> Result<Agent, AgentError> {
        let paths = StatePaths::new(&config.state_dir);
        if !paths.is_provisioned() {
            return Err(AgentError::NotProvisioned {
                dir: paths.metadata(),
            });
        }
        paths.create_dirs()?;
        let lock = paths.lock()?;
        faults::point("recover", "recover from the journal");
        let hooks = hooks_of(&config);
        let mut installer_for = |j: &install::journal::Journal| -> Box<dyn install::Installer> {
            match (&j.installer, &j.inventory_dir, &config.slots) {
                (Some(k), _, Some(s)) if k == install::slot::INSTALL_TYPE => {
                    Box::new(install::slot::SlotInstaller::new(
                        install::slot::Slots::new(s, &config.reboot, &paths),
                    ))
                }
                (Some(k), _, None) if k == install::slot::INSTALL_TYPE => {
                    Box::new(install::Unavailable(format!(
                        "the interrupted install wrote a system image, but {} has no [slots] any more; restore [slots] (docs/images.md) so the agent can finish it",
                        config.path.display()
                    )))
                }
                (_, Some(d), _) => Box::new(install::files::FilesInstaller::new(d.clone())),
                _ => installer_of(&config, &paths, false),
            }
        };
        let recovered = install::recover(
            &paths.journal(),
            &mut installer_for,
            &hooks,
            settle,
            &mut |_, _| Ok(()),
        )?;
        if recovered.is_none() && settle {
            // The running system came up and nothing is being installed: keep the
            // bootloader booting it.
            if let Some(s) = &config.slots {
                let mut slots = install::slot::Slots::new(s, &config.reboot, &paths);
                if let Err(e) = slots.confirm_running() {
                    tracing::warn!("slots: cannot mark the running slot good: {e}");
                }
            }
        }
        let profile = load_profile(&config)?;
        let mut agent = Agent {
            config,
            paths,
            profile,
            recovered,
            recovered_report: None,
            _lock: lock,
        };
        if let Some(install::Recovery::RolledForward(a)) = &agent.recovered {
            let mut state = AgentState::load(&agent.paths.state_file())?;
            // Already recorded before the interruption (the journal is deleted last)?
            let final_status = if a.succeeded() { "succeeded" } else { "failed" };
            let recorded = state.reports.get(&a.campaign).is_some_and(|r| {
                r.manifest_sha256 == a.manifest_sha256 && r.status == final_status
            });
            let (result, text) = agent.settled(a, &mut state);
            let reason = if a.after_reboot {
                format!("{text} (after the reboot)")
            } else {
                format!("{text} (completed after an interruption)")
            };
            let result = match result {
                InstallResult::Installed => crate::report::ReportResult::Succeeded,
                _ => crate::report::ReportResult::Failed,
            };
            // Queued before it is remembered as sent: a power cut in between repeats the
            // report (the endpoint keeps a device's latest), never loses it.
            if !recorded {
                match agent.queue_report(
                    &a.campaign,
                    a.revision,
                    a.wave,
                    result,
                    &reason,
                    a.rolled_back,
                ) {
                    Ok(id) => {
                        agent.recovered_report = Some(QueuedReport {
                            campaign: a.campaign.clone(),
                            revision: a.revision,
                            result,
                            reason,
                            report_id: id,
                        })
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
                state.reports.insert(
                    a.campaign.clone(),
                    crate::decide::LastReport {
                        manifest_sha256: a.manifest_sha256.clone(),
                        status: final_status.to_string(),
                        at: now_seconds(),
                    },
                );
            }
            state.save(&agent.paths.state_file())?;
            // Recorded: now the install is over.
            install::finish(&agent.paths.journal()).map_err(|e| AgentError::State {
                path: agent.paths.journal(),
                reason: e.to_string(),
            })?;
        }
        Ok(agent)
    }

    /// The commands run around an install, from the configuration.
    pub fn hooks(&self) -> install::Hooks {
        hooks_of(&self.config)
    }

    /// The install handler for `plan`: the slots for a system image (install type
    /// `slot`, when `[slots]` is configured), else the configured inventory's.
    pub fn installer(&self, plan: &plan::StagedPlan) -> Box<dyn install::Installer> {
        let image = plan.steps.iter().any(|s| {
            s.step.install_type.as_deref() == Some(install::slot::INSTALL_TYPE)
                || self
                    .config
                    .slots
                    .as_ref()
                    .is_some_and(|c| c.app == s.step.app)
        });
        installer_of(&self.config, &self.paths, image)
    }

    /// The system image slots, if configured.
    pub fn slots(&self) -> Option<install::slot::Slots> {
        self.config
            .slots
            .as_ref()
            .map(|s| install::slot::Slots::new(s, &self.config.reboot, &self.paths))
    }

    /// Runs the reboot command (`[reboot]`): the install waits for the system it names.
    pub fn request_reboot(&self, into: &str) -> Result<(), String> {
        tracing::warn!("rebooting: {into}");
        faults::point("apply", "reboot");
        exec::run_hook(
            &self.config.reboot.command,
            &[],
            &[("PETREL_REBOOT_REASON", into.to_string())],
            std::time::Duration::from_secs(120),
        )
        .map_err(|e| {
            format!("the reboot command failed: {e}; reboot the device to continue ({into})")
        })
    }

    /// An interrupted apply completed or undone when the agent was opened.
    pub fn recovered(&self) -> Option<&install::Recovery> {
        self.recovered.as_ref()
    }

    /// Reads the actual inventory again (after an apply, or right before one).
    pub fn reload_inventory(&mut self) -> Result<(), AgentError> {
        self.profile.inventory = read_device_inventory(&self.config)?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The state directory layout.
    pub fn paths(&self) -> &StatePaths {
        &self.paths
    }

    /// The device profile, with the actual inventory.
    pub fn profile(&self) -> &DeviceProfile {
        &self.profile
    }

    /// Shows notices in `locale` instead of the profile's.
    pub fn set_locale(&mut self, locale: &str) -> Result<(), AgentError> {
        check_locale(locale).map_err(|e| AgentError::Refused(format!("--locale: {e}")))?;
        self.profile.locale = Some(locale.to_string());
        Ok(())
    }

    /// The installed bytes deltas may start from: application id → SHA-256 (see
    /// [`repo::delta_bases`]), with the running slot's image.
    fn delta_bases(&self) -> std::collections::BTreeMap<String, String> {
        let mut bases = repo::delta_bases(&self.config.inventory, &self.profile.inventory);
        if let Some((_, _, sha)) = self.slots().and_then(|s| s.delta_base()) {
            bases.insert(self.config.slots.as_ref().expect("slots").app.clone(), sha);
        }
        bases
    }

    /// Where deltas read the installed bytes: the inventory directory, the running slot.
    pub(crate) fn delta_sources(&self) -> stage::DeltaSources {
        stage::DeltaSources {
            inventory_dir: match &self.config.inventory {
                InventorySource::Dir(d) => Some(d.clone()),
                InventorySource::Command(_) => None,
            },
            slot: self.slots().and_then(|s| {
                let (path, len, _) = s.delta_base()?;
                Some((s.config().app.clone(), path, len))
            }),
            config: self.config.deltas,
        }
    }

    /// A TUF updater for the configured repository and the trusted metadata directory.
    pub fn updater(&self) -> Result<Updater, AgentError> {
        let repo = &self.config.repository;
        let http = HttpConfig {
            extra_ca_pem: repo.extra_ca.clone(),
            ..HttpConfig::default()
        };
        let config = UpdaterConfig::new(repo.metadata_url.clone())
            .with_target_base_url(repo.targets_url.clone());
        Ok(Updater::new(
            config,
            shared_transport(http),
            self.paths.metadata(),
        )?)
    }

    /// Refreshes, fetches the verified manifests, reads the consent log and the state file,
    /// and decides at `at` (default: now). Persists the revisions observed (they only grow)
    /// and a summary of the decision in `state.json`.
    pub fn evaluate(&self, at: Option<DateTime<Utc>>) -> Result<Evaluation, AgentError> {
        self.evaluate_inner(at).map(|(ev, _)| ev)
    }

    /// [`Agent::evaluate`], keeping the refreshed updater (for downloads).
    fn evaluate_inner(
        &self,
        at: Option<DateTime<Utc>>,
    ) -> Result<(Evaluation, Updater), AgentError> {
        let started = now_seconds();
        let now = at.unwrap_or(started);
        let (consent, report) = open_consent(&self.paths)?;
        if let Some(n) = report.dropped_torn_tail {
            tracing::warn!(
                "consent log: cut off an incomplete last line ({n} bytes) left by an interrupted write"
            );
        }
        let mut state = AgentState::load(&self.paths.state_file())?;
        let mut updater = self.updater()?;
        let mut gathered = repo::gather_with_deltas(
            &mut updater,
            &self.profile.id,
            self.config.repository.assign_bin_digits,
            &self.paths.manifests(),
            &self.delta_bases(),
        )?;
        // A delta above the configured share of its artifact is not worth it (`[deltas]`).
        let share = self.config.deltas.max_share;
        for a in gathered.view.artifacts.values_mut() {
            let full = a.length;
            a.deltas.retain(|d| d.length as f64 <= share * full as f64);
        }
        let mut local = state.local_state(consent.records().clone());
        local.inhibit = inhibit::check(&self.config.inhibit);
        let decision = decide(&gathered.view, &self.profile, &local, now);
        state.remember(&decision.observed);
        state.last_check = Some(LastCheck {
            at: started,
            decided_at: now,
            group: decision.group.clone().ok(),
            campaigns: decision
                .campaigns
                .iter()
                .map(|c| (c.id.clone(), c.status.kind().to_string()))
                .collect(),
            wake_at: decision.wake_at,
        });
        state.save(&self.paths.state_file())?;
        Ok((
            Evaluation {
                now,
                view: gathered.view,
                versions: gathered.versions,
                state,
                consent,
                decision,
                inhibit: local.inhibit,
            },
            updater,
        ))
    }

    /// Records a consent answer for `campaign`, bound to the offer of the manifest fetched
    /// (and verified) in `ev` (the record names the offer hash and the exact manifest hash).
    /// With `expected_sha256` (the full hash or a prefix of at least 8 hex digits), the
    /// answer is refused unless it is the offer hash `petrel consent show` prints or the
    /// manifest hash of the manifest now current (mistyped, or the offer changed since it
    /// was shown). Both name what is agreed to now, so either is unambiguous. Decides again
    /// afterwards.
    pub fn answer(
        &self,
        ev: &mut Evaluation,
        campaign: &str,
        expected_sha256: Option<&str>,
        answer: Answer,
    ) -> Result<ConsentEvent, AgentError> {
        let entry = ev.entry(campaign)?.clone();
        let offer = entry.manifest.offer_sha256();
        if let Some(want) = expected_sha256 {
            let want = want.trim().to_ascii_lowercase();
            if want.len() < 8 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(AgentError::Refused(format!(
                    "--sha256 {want:?}: give the offer hash `petrel consent show` printed (at least 8 hex digits)"
                )));
            }
            if !offer.0.starts_with(&want) && !entry.sha256.0.starts_with(&want) {
                // An earlier answer names the hash: the campaign really changed. Otherwise
                // the value is most likely mistyped (or copied from a `consent show` that
                // was never answered): say both, the typo first.
                let earlier = ev
                    .consent
                    .records()
                    .for_campaign(campaign)
                    .filter(|e| {
                        e.manifest_sha256.0.starts_with(&want)
                            || e.offer_sha256
                                .as_ref()
                                .is_some_and(|o| o.0.starts_with(&want))
                    })
                    .last()
                    .map(|e| e.revision);
                return Err(AgentError::Refused(match earlier {
                    Some(rev) => format!(
                        "campaign {campaign} changed since it was shown: --sha256 {want} is revision {rev}, answered before; the offer is now sha256 {offer} (revision {}: its notice, payload, consent policy or method changed); nothing recorded. Show it again: petrel consent show {campaign}",
                        entry.manifest.revision
                    ),
                    None => format!(
                        "--sha256 {want} is not the hash of campaign {campaign}'s offer, which is sha256 {offer} (revision {}, manifest sha256 {}); nothing recorded. Check the value for a typo, or, if you copied it from an earlier `petrel consent show {campaign}`, the campaign has changed since: show it again and answer for what it says now",
                        entry.manifest.revision, entry.sha256
                    ),
                }));
            }
        }
        if let Some(d) = ev.decision.campaign(campaign) {
            if let Status::Rejected { reason } | Status::NotApplicable { reason } = &d.status {
                return Err(AgentError::Refused(format!(
                    "campaign {campaign} is {} for this device ({reason}); nothing recorded",
                    d.status.kind().replace('_', " ")
                )));
            }
        }
        let locale = entry
            .manifest
            .notice_for(self.profile.locale.as_deref())
            .map(|(l, _)| l.to_string());
        let now = now_seconds();
        let assignment = ev.assignment().cloned();
        let event = match answer {
            Answer::Accept => ev.consent.accept(&entry, now, locale.as_deref())?,
            Answer::Acknowledge => ev.consent.acknowledge(&entry, now, locale.as_deref())?,
            Answer::Decline => ev.consent.decline(&entry, now, locale.as_deref())?,
            Answer::Postpone { until } => ev.consent.postpone(&entry, until, now)?,
            Answer::Token(t) => {
                ev.consent
                    .add_admin_token(&entry, *t, &self.profile, assignment.as_ref(), now)?
            }
        }
        .clone();
        self.redecide(ev, ev.now.max(now))?;
        Ok(event)
    }

    /// Decides again from the same verified view (after a consent answer).
    fn redecide(&self, ev: &mut Evaluation, now: DateTime<Utc>) -> Result<(), AgentError> {
        let mut local = ev.state.local_state(ev.consent.records().clone());
        local.inhibit = ev.inhibit.clone();
        ev.decision = decide(&ev.view, &self.profile, &local, now);
        ev.now = now;
        ev.state.remember(&ev.decision.observed);
        ev.state.save(&self.paths.state_file())
    }

    /// The consent requests waiting for an answer, in campaign order.
    pub fn pending_consent(&self, ev: &Evaluation) -> Vec<ConsentRequest> {
        ev.decision
            .campaigns
            .iter()
            .filter_map(|d| {
                let entry = ev
                    .view
                    .campaigns
                    .iter()
                    .find(|e| e.target_path == d.target_path)?;
                let waiting = match &d.status {
                    Status::WaitingForConsent { .. } | Status::Postponed { .. } => true,
                    // Consent before install: downloads go ahead, the question is open.
                    Status::ReadyToDownload { .. } | Status::WaitingForDownloadWindow { .. } => {
                        !ev.consent_state(entry, &self.profile).0.is_granted()
                    }
                    _ => false,
                };
                waiting.then(|| self.consent_request(ev, entry))
            })
            .collect()
    }

    /// What the device's user is asked about `entry`, in the device's locale.
    pub fn consent_request(&self, ev: &Evaluation, entry: &CampaignEntry) -> ConsentRequest {
        let c = &entry.manifest;
        let (locale, notice) = match c.notice_for(self.profile.locale.as_deref()) {
            Some((l, n)) => (l.to_string(), Some(n)),
            None => (String::new(), None),
        };
        let (state, notes) = ev.consent_state(entry, &self.profile);
        ConsentRequest {
            campaign: c.id.clone(),
            revision: c.revision,
            offer_sha256: c.offer_sha256().0,
            manifest_sha256: entry.sha256.0.clone(),
            locale,
            title: notice.map(|n| n.title.clone()).unwrap_or_default(),
            body: notice.map(|n| n.body.clone()).unwrap_or_default(),
            severity: notice.map_or(Severity::Info, |n| n.severity),
            policy: c.consent.policy,
            stage: c.consent.stage,
            deadline: c.consent.deadline.map(|d| d.0),
            max_postpones: c.consent.max_postpones,
            state,
            notes,
        }
    }
}

/// A consent question as shown to the device's user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentRequest {
    /// The campaign.
    pub campaign: String,
    /// Its revision.
    pub revision: u64,
    /// SHA-256 of the campaign's offer (the answer is bound to it; `--sha256` takes it).
    pub offer_sha256: String,
    /// SHA-256 of the exact manifest bytes (recorded with the answer; `--sha256` takes it
    /// too).
    pub manifest_sha256: String,
    /// The locale of the notice shown.
    pub locale: String,
    /// Notice title.
    pub title: String,
    /// Notice body.
    pub body: String,
    /// Notice severity.
    pub severity: Severity,
    /// Consent policy.
    pub policy: ConsentPolicy,
    /// Before download or before install.
    pub stage: ConsentStage,
    /// Until when an answer counts.
    pub deadline: Option<DateTime<Utc>>,
    /// Postponements the campaign allows in all.
    pub max_postpones: u32,
    /// Where consent stands.
    pub state: ConsentState,
    /// Records that did not count, and why.
    pub notes: Vec<String>,
}

impl Evaluation {
    /// The verified campaign manifest `id`.
    pub fn entry(&self, id: &str) -> Result<&CampaignEntry, AgentError> {
        self.view
            .campaigns
            .iter()
            .find(|e| e.manifest.id == id)
            .ok_or_else(|| AgentError::UnknownCampaign {
                id: id.to_string(),
                known: self
                    .view
                    .campaigns
                    .iter()
                    .map(|e| e.manifest.id.clone())
                    .collect(),
            })
    }

    /// The device's assignment, when the engine accepted the bin.
    pub fn assignment(&self) -> Option<&Assignment> {
        match &self.decision.assignment {
            crate::decide::AssignmentOutcome::Assigned { .. } => self
                .view
                .assignment
                .as_ref()
                .and_then(|e| e.manifest.lookup(&self.decision.device_id)),
            _ => None,
        }
    }

    /// Where consent stands for a campaign (the engine's rule), with notes.
    pub fn consent_state(
        &self,
        entry: &CampaignEntry,
        profile: &DeviceProfile,
    ) -> (ConsentState, Vec<String>) {
        consent::evaluate(
            self.consent.records(),
            &entry.manifest,
            &entry.sha256,
            profile,
            self.assignment(),
            self.now,
        )
    }
}

/// Opens the consent log. The agent lock is held, so another holder of the log's lock can
/// only be short-lived (a child process between fork and exec still sharing the open
/// file): wait for it, briefly and boundedly.
fn open_consent(paths: &StatePaths) -> Result<(ConsentStore, consent::OpenReport), AgentError> {
    let start = std::time::Instant::now();
    loop {
        match ConsentStore::open(paths.consent_log()) {
            Err(ConsentError::Locked { .. })
                if start.elapsed() < std::time::Duration::from_secs(5) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return Ok(r?),
        }
    }
}

/// One transport per process and HTTP setting, so the resident agent's cycles (and the
/// refresh and re-check of one cycle) reuse its connections and its TLS setup instead of
/// opening new ones at every poll.
fn shared_transport(http: HttpConfig) -> std::sync::Arc<AutoTransport> {
    type Cache = Option<(Option<PathBuf>, std::sync::Arc<AutoTransport>)>;
    static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    match &*cache {
        Some((ca, t)) if *ca == http.extra_ca_pem => t.clone(),
        _ => {
            let ca = http.extra_ca_pem.clone();
            let t = std::sync::Arc::new(AutoTransport::new(http));
            *cache = Some((ca, t.clone()));
            t
        }
    }
}

fn hooks_of(config: &AgentConfig) -> install::Hooks {
    install::Hooks {
        on_apply: config.on_apply.clone(),
        timeout: config.hook_timeout,
        health: config.health.clone(),
    }
}

fn installer_of(
    config: &AgentConfig,
    paths: &StatePaths,
    image: bool,
) -> Box<dyn install::Installer> {
    if let (true, Some(s)) = (image, &config.slots) {
        return Box::new(install::slot::SlotInstaller::new(
            install::slot::Slots::new(s, &config.reboot, paths),
        ));
    }
    match &config.inventory {
        InventorySource::Dir(d) => Box::new(install::files::FilesInstaller::new(d.clone())),
        InventorySource::Command(c) => Box::new(install::command::CommandInstaller::new(
            install::command::Commands {
                install: config.install_command.clone(),
                rollback: config.rollback_command.clone(),
                confirm: config.confirm_command.clone(),
                inventory: c.clone(),
            },
            config.reboot.boot_id_file.clone(),
            paths.clone(),
            config.hook_timeout,
        )),
    }
}

/// The device's actual inventory: the configured source's, plus the system image the
/// running slot holds (`[slots]`).
pub fn read_device_inventory(config: &AgentConfig) -> Result<crate::decide::Inventory, AgentError> {
    let mut inv = inventory::read_inventory(&config.inventory)?;
    if let Some(s) = &config.slots {
        let slots =
            install::slot::Slots::new(s, &config.reboot, &StatePaths::new(&config.state_dir));
        let err = |reason: String| AgentError::Inventory {
            from: format!("the slots {} and {}", s.a.display(), s.b.display()),
            reason,
        };
        if inv.remove(&s.app).is_some() {
            tracing::warn!(
                "inventory: {} is the system image (slots.app); ignoring the {} entry",
                s.app,
                config.inventory
            );
        }
        if let Some(app) = slots.installed().map_err(err)? {
            inv.insert(s.app.clone(), app);
        }
    }
    Ok(inv)
}

/// The current instant, whole seconds (what manifests and records can express).
pub fn now_seconds() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// Reads the profile and fills in the actual inventory and, if so configured, the system's
/// UTC offset.
pub fn load_profile(config: &AgentConfig) -> Result<DeviceProfile, AgentError> {
    let path = &config.profile;
    let err = |reason: String| AgentError::Profile {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(if e.kind() == std::io::ErrorKind::NotFound {
            "not found (set `profile` in the configuration)".into()
        } else {
            e.to_string()
        })
    })?;
    let mut profile = DeviceProfile::from_toml(&text).map_err(|e| err(e.to_string()))?;
    if !profile.inventory.is_empty() {
        return Err(err(format!(
            "lists an inventory; the agent reads the installed inventory from the device ({}), so remove the [inventory.*] tables from the profile",
            config.inventory
        )));
    }
    profile.inventory = read_device_inventory(config)?;
    if config.utc_offset == UtcOffsetSource::System {
        let secs = chrono::Local::now().offset().local_minus_utc();
        profile.utc_offset_minutes = (secs / 60).clamp(-840, 840);
    }
    Ok(profile)
}

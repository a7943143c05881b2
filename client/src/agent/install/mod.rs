//! Installing a staged plan, all or nothing, behind one [`Installer`] trait, driven through
//! a write-ahead [`journal`]: prepare → commit → switch → `on_apply` hooks → health check
//! → confirm, or roll back to the previous set.
//!
//! The handlers ([`files::FilesInstaller`] for an inventory directory,
//! [`command::CommandInstaller`] for an installer command) only know how to prepare, switch,
//! restore and clean up, each idempotently. This module owns the order of the phases, the
//! hooks, the health check and crash recovery ([`recover`], run before anything else at
//! every agent start): a journal that is only *prepared* is undone (the old set stays); a
//! *committed* one is switched; a *switched* one waits for its hooks and health check; a
//! *confirmed* one has its previous set deleted; a *rolling back* one has its previous set
//! restored. So an interruption at any point leaves, after the next start, either the
//! complete old set or the complete new set, and the previous set is deleted only after
//! the health check passed.

pub mod bootloader;
pub mod command;
pub mod files;
pub mod journal;
pub mod slot;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::config::HealthConfig;
use super::error::AgentError;
use super::plan::StagedPlan;
use crate::manifest::ManifestHash;
use journal::{Journal, JournalOp, Phase, JOURNAL_SCHEMA_VERSION};

/// An install handler: how one kind of installed set is prepared, switched to, restored
/// and cleaned up. Every method must be idempotent (it may be called again after an
/// interruption, from the journal), and must call [`Stepper::step`] before each durable
/// step.
pub trait Installer {
    /// What is installed into, for messages (`inventory directory /opt/apps`).
    fn name(&self) -> String;
    /// The handler's kind, recorded in the journal (`files`, `command`, `slot`).
    fn kind(&self) -> &'static str;
    /// The inventory directory, when the installer owns one (recorded in the journal).
    fn inventory_dir(&self) -> Option<&Path> {
        None
    }
    /// Refuses a plan this installer cannot install, before anything is written.
    fn check(&self, _plan: &StagedPlan) -> Result<(), ApplyError> {
        Ok(())
    }
    /// Prepares the new set beside the live one (the live set is untouched).
    fn prepare(
        &mut self,
        journal: &Journal,
        plan: &StagedPlan,
        staging_dir: &Path,
        st: &mut Stepper,
    ) -> Result<(), ApplyError>;
    /// Undoes [`Installer::prepare`] (before the commit point).
    fn discard(&mut self, journal: &Journal);
    /// Makes the prepared set live, keeping the previous set aside.
    fn switch(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError>;
    /// After [`Installer::switch`] (journal phase switched) or [`Installer::restore`]
    /// (rolling back): whether the set wanted is the one running, or a reboot is needed
    /// first, or the device rebooted and came up with the previous set (the bootloader fell
    /// back). Handlers whose switch takes effect at once keep the default.
    fn boot_state(&mut self, _journal: &Journal) -> Result<Boot, ApplyError> {
        Ok(Boot::Current)
    }
    /// Whether [`Installer::restore`] can bring the previous set back.
    fn can_restore(&self) -> bool;
    /// Makes the previous set live again.
    fn restore(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError>;
    /// Deletes what was kept aside (the previous set after a confirmed install, the refused
    /// set after a rollback).
    fn clean(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError>;
}

/// The handler of a journal this configuration cannot finish: every step fails with the
/// reason, so recovery stops and says what to fix.
pub struct Unavailable(pub String);

impl Installer for Unavailable {
    fn name(&self) -> String {
        "an installer this configuration lacks".into()
    }
    fn kind(&self) -> &'static str {
        "unavailable"
    }
    fn prepare(
        &mut self,
        _: &Journal,
        _: &StagedPlan,
        _: &Path,
        _: &mut Stepper,
    ) -> Result<(), ApplyError> {
        Err(ApplyError::Verify(self.0.clone()))
    }
    fn discard(&mut self, _: &Journal) {}
    fn switch(&mut self, _: &Journal, _: &mut Stepper) -> Result<(), ApplyError> {
        Err(ApplyError::Verify(self.0.clone()))
    }
    fn boot_state(&mut self, _: &Journal) -> Result<Boot, ApplyError> {
        Err(ApplyError::Verify(self.0.clone()))
    }
    fn can_restore(&self) -> bool {
        false
    }
    fn restore(&mut self, _: &Journal, _: &mut Stepper) -> Result<(), ApplyError> {
        Err(ApplyError::Verify(self.0.clone()))
    }
    fn clean(&mut self, _: &Journal, _: &mut Stepper) -> Result<(), ApplyError> {
        Err(ApplyError::Verify(self.0.clone()))
    }
}

/// Whether the set an install wants is running (see [`Installer::boot_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// It is running.
    Current,
    /// It runs after a reboot (what to reboot into, in words).
    RebootNeeded(String),
    /// The device rebooted and runs the previous set: the new one did not come up (why).
    FellBack(String),
}

/// The commands run around an install (see `docs/device.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Run per application after the switch: `argv… APP VERSION STATE`, with `PETREL_APP`,
    /// `PETREL_VERSION`, `PETREL_STATE` (`keep`, `start`, `stop`, `removed`, or `restored`
    /// after a rollback) and `PETREL_CAMPAIGN` in the environment.
    pub on_apply: Option<Vec<String>>,
    /// Time limit of one hook run.
    pub timeout: Duration,
    /// The health check run after the hooks; the previous set is kept until it passes.
    pub health: Option<HealthConfig>,
}

/// Why an install stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    /// A staged artifact is not the signed one (or is missing).
    #[error("{0}")]
    Verify(String),
    /// The installer command failed.
    #[error("{0}")]
    Hook(String),
    /// The plan needs an installer this device does not have.
    #[error("{0}")]
    Unsupported(String),
    /// Stopped by the step hook (tests simulate a power cut with it): nothing was cleaned up.
    #[error("interrupted before step {step} ({name})")]
    Interrupted {
        /// The step number.
        step: usize,
        /// Its name.
        name: String,
    },
}

impl ApplyError {
    /// Whether the failure is the device's environment (no space, a missing directory, no
    /// permission) rather than the campaign's: it does not count as a failed attempt.
    pub fn is_environmental(&self) -> bool {
        match self {
            ApplyError::Io(_, e) => is_environmental_io(e),
            _ => false,
        }
    }
}

/// Whether an I/O error says the file system is full (no space, or the quota).
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28 | 122))
}

/// Whether an I/O error is the device's environment: disk full, quota, read-only file
/// system, missing directory, permission, busy.
pub fn is_environmental_io(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    is_disk_full(e)
        || matches!(
            e.kind(),
            K::ReadOnlyFilesystem
                | K::NotFound
                | K::PermissionDenied
                | K::ResourceBusy
                | K::WouldBlock
        )
        || matches!(e.raw_os_error(), Some(30 | 16))
}

/// Called before each durable step with its number (from 0) and name; an `Err` stops the
/// install right there and leaves every file as a power cut would. The agent passes a hook
/// that always continues; tests use it to prove crash recovery at every step.
pub type StepHook<'a> = &'a mut dyn FnMut(usize, &str) -> Result<(), ()>;

/// Numbers the durable steps of an install and lets the step hook stop it.
pub struct Stepper<'a> {
    n: usize,
    hook: StepHook<'a>,
}

impl<'a> Stepper<'a> {
    /// Steps counted from 0 through `hook`.
    pub fn new(hook: StepHook<'a>) -> Stepper<'a> {
        Stepper { n: 0, hook }
    }

    /// Announces the next durable step.
    pub fn step(&mut self, name: String) -> Result<(), ApplyError> {
        let n = self.n;
        self.n += 1;
        super::faults::point("apply", &name);
        (self.hook)(n, &name).map_err(|()| ApplyError::Interrupted { step: n, name })
    }
}

/// What an install (or a recovery) did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The campaign.
    pub campaign: String,
    /// Its revision.
    pub revision: u64,
    /// Its manifest hash.
    pub manifest_sha256: ManifestHash,
    /// What a failed install is bound to (`CampaignManifest::attempt_sha256`).
    pub attempt_sha256: Option<ManifestHash>,
    /// The group and revision installed (or, after a rollback, refused).
    pub group: (String, u64),
    /// The changes made (`add acme.player 2.1.0`, …).
    pub changes: Vec<String>,
    /// `on_apply` hook failures.
    pub hook_errors: Vec<String>,
    /// The device's rollout wave in the campaign, if it has waves.
    pub wave: Option<u32>,
    /// Why the new set failed (a hook, the health check), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Whether the previous set was restored after that failure.
    pub rolled_back: bool,
    /// The install waits for a reboot (into the new system, or back into the previous one
    /// after a failure): what to reboot into. The journal stays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot: Option<String>,
    /// The install went on after a reboot it waited for.
    pub after_reboot: bool,
}

impl Applied {
    /// Whether the new set is installed and healthy.
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    fn from_journal(j: &Journal) -> Applied {
        Applied {
            campaign: j.campaign.clone(),
            revision: j.revision,
            manifest_sha256: j.manifest_sha256.clone(),
            attempt_sha256: j.attempt_sha256.clone(),
            group: j.group.clone(),
            changes: j.changes(),
            hook_errors: j.hook_errors.clone(),
            wave: j.wave,
            failure: j.failure.clone(),
            rolled_back: j.phase == Phase::RollingBack,
            reboot: None,
            after_reboot: j.awaited_reboot,
        }
    }

    /// The install waits for a reboot: recorded in the journal, so the next boot knows.
    fn waiting_for(j: &mut Journal, path: &Path, reboot: String) -> Result<Applied, ApplyError> {
        if !j.awaited_reboot {
            j.awaited_reboot = true;
            j.save(path)?;
        }
        Ok(Applied {
            reboot: Some(reboot),
            ..Applied::from_journal(j)
        })
    }
}

/// What [`recover`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Recovery {
    /// An install interrupted before its commit point was undone: the old set stays.
    RolledBack {
        /// The campaign.
        campaign: String,
        /// Its revision.
        revision: u64,
    },
    /// An interrupted install was finished: confirmed healthy, or (see
    /// [`Applied::rolled_back`]) restored to the previous set.
    RolledForward(Applied),
    /// The new set is live and the previous one kept aside; its hooks and health check
    /// have not run yet (recovery without settling, as `petrel recover` does at boot), or
    /// the install waits for a reboot ([`Recovery::Pending::reboot`]).
    Pending {
        /// The campaign.
        campaign: String,
        /// Its revision.
        revision: u64,
        /// What the device must reboot into before the install can go on.
        #[serde(skip_serializing_if = "Option::is_none")]
        reboot: Option<String>,
    },
}

/// Installs `plan` (every artifact staged in `staging_dir`) through `installer`, all or
/// nothing, with the journal at `journal_path`: a failure before the commit point undoes
/// the prepared set and returns the error (nothing is installed); after it, the hooks and
/// the health check decide between keeping the new set and restoring the previous one
/// ([`Applied::failure`], [`Applied::rolled_back`]). The journal stays until the caller
/// has recorded the outcome and calls [`finish`]. `step_hook` is called before each
/// durable step.
#[allow(clippy::too_many_arguments)]
pub fn install(
    installer: &mut dyn Installer,
    plan: &StagedPlan,
    staging_dir: &Path,
    journal_path: &Path,
    hooks: &Hooks,
    now: DateTime<Utc>,
    step_hook: StepHook,
) -> Result<Applied, ApplyError> {
    let mut st = Stepper::new(step_hook);
    installer.check(plan)?;
    if journal_path.exists() {
        return Err(ApplyError::Io(
            journal_path.to_path_buf(),
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "an earlier install is not finished; recover it first (every agent start does)",
            ),
        ));
    }
    let ops: Vec<JournalOp> = plan
        .steps
        .iter()
        .map(|s| JournalOp {
            app: s.step.app.clone(),
            version: s.step.result_version().map(str::to_string),
            from_version: match &s.step.change {
                crate::decide::Change::Update { from, .. } => Some(from.clone()),
                crate::decide::Change::Reinstall { version, .. }
                | crate::decide::Change::Remove { version } => Some(version.clone()),
                crate::decide::Change::Add { .. } => None,
            },
            artifact_file: s.step.target().map(files::artifact_file_name),
            post_install: s.step.post_install,
        })
        .collect();
    let mut journal = Journal {
        schema_version: JOURNAL_SCHEMA_VERSION,
        phase: Phase::Prepared,
        installer: Some(installer.kind().to_string()),
        inventory_dir: installer.inventory_dir().map(Path::to_path_buf),
        campaign: plan.campaign.clone(),
        revision: plan.revision,
        manifest_sha256: plan.manifest_sha256.clone(),
        attempt_sha256: plan.attempt_sha256.clone(),
        group: (plan.group.clone(), plan.group_revision),
        started_at: now,
        ops,
        hooks_done: 0,
        hook_errors: Vec::new(),
        wave: plan.wave,
        failure: None,
        restore_hooks_done: 0,
        awaited_reboot: false,
    };
    st.step("write the journal (prepared)".into())?;
    journal.save(journal_path)?;
    if let Err(e) = installer.prepare(&journal, plan, staging_dir, &mut st) {
        if !matches!(e, ApplyError::Interrupted { .. }) {
            installer.discard(&journal);
            journal::remove(journal_path)?;
        }
        return Err(e);
    }
    st.step("write the journal (committed)".into())?;
    journal.enter(Phase::Committed, journal_path)?;
    proceed(installer, &mut journal, journal_path, hooks, &mut st, true)
}

/// Drives a committed journal to its end: switch, hooks, health check, then confirm or
/// roll back. With `settle` false it stops once the new set is live (phase switched).
fn proceed(
    installer: &mut dyn Installer,
    journal: &mut Journal,
    journal_path: &Path,
    hooks: &Hooks,
    st: &mut Stepper,
    settle: bool,
) -> Result<Applied, ApplyError> {
    loop {
        match journal.phase {
            Phase::Prepared => unreachable!("prepared journals are undone, not driven"),
            Phase::Committed => {
                installer.switch(journal, st)?;
                st.step("write the journal (switched)".into())?;
                journal.enter(Phase::Switched, journal_path)?;
            }
            Phase::Switched => {
                if !settle {
                    return Ok(Applied::from_journal(journal));
                }
                match installer.boot_state(journal)? {
                    Boot::Current => {}
                    Boot::RebootNeeded(into) => {
                        return Applied::waiting_for(journal, journal_path, into)
                    }
                    Boot::FellBack(why) => {
                        tracing::warn!(
                            "campaign {} revision {}: {why}",
                            journal.campaign,
                            journal.revision
                        );
                        journal.failure = Some(why);
                        // The previous set runs: nothing to undo but the bootloader's view;
                        // no hook ran for the new set, none runs for the restored one.
                        journal.hooks_done = journal.ops.len();
                        journal.restore_hooks_done = journal.ops.len();
                        st.step("write the journal (rolling back)".into())?;
                        journal.enter(Phase::RollingBack, journal_path)?;
                        continue;
                    }
                }
                run_apply_hooks(journal, journal_path, hooks, st)?;
                let failure = if !journal.hook_errors.is_empty() {
                    Some(format!(
                        "the on_apply hook failed: {}",
                        journal.hook_errors.join("; ")
                    ))
                } else if let Some(h) = &hooks.health {
                    st.step("health check".into())?;
                    health_check(h, journal).err()
                } else {
                    None
                };
                match failure {
                    Some(why) if installer.can_restore() => {
                        tracing::warn!(
                            "campaign {} revision {}: {why}; restoring the previous set",
                            journal.campaign,
                            journal.revision
                        );
                        journal.failure = Some(why);
                        st.step("write the journal (rolling back)".into())?;
                        journal.enter(Phase::RollingBack, journal_path)?;
                    }
                    Some(why) => {
                        tracing::warn!(
                            "campaign {} revision {}: {why}; {} cannot restore the previous set (configure inventory.rollback_command)",
                            journal.campaign,
                            journal.revision,
                            installer.name()
                        );
                        journal.failure = Some(format!(
                            "{why}; the previous set cannot be restored by {} (no inventory.rollback_command)",
                            installer.name()
                        ));
                        st.step("write the journal (confirmed)".into())?;
                        journal.enter(Phase::Confirmed, journal_path)?;
                    }
                    None => {
                        st.step("write the journal (confirmed)".into())?;
                        journal.enter(Phase::Confirmed, journal_path)?;
                    }
                }
            }
            Phase::Confirmed => {
                if journal.failure.is_none() {
                    // A power cut after the health check but before the new set was made
                    // permanent may have let the bootloader fall back.
                    if let Boot::FellBack(why) = installer.boot_state(journal)? {
                        tracing::warn!(
                            "campaign {} revision {}: {why}",
                            journal.campaign,
                            journal.revision
                        );
                        journal.failure = Some(why);
                        journal.restore_hooks_done = journal.ops.len();
                        st.step("write the journal (rolling back)".into())?;
                        journal.enter(Phase::RollingBack, journal_path)?;
                        continue;
                    }
                }
                installer.clean(journal, st)?;
                return Ok(Applied::from_journal(journal));
            }
            Phase::RollingBack => {
                match installer.restore(journal, st) {
                    Ok(()) => {}
                    Err(ApplyError::Hook(e) | ApplyError::Unsupported(e)) => {
                        // The handler could not restore: say so, and end the install with
                        // the set as it is (confirmed, so a restart does not try again).
                        let why = journal.failure.clone().unwrap_or_default();
                        journal.failure = Some(format!("{why}; {e}"));
                        st.step("write the journal (confirmed)".into())?;
                        journal.enter(Phase::Confirmed, journal_path)?;
                        installer.clean(journal, st)?;
                        return Ok(Applied::from_journal(journal));
                    }
                    Err(e) => return Err(e),
                }
                match installer.boot_state(journal)? {
                    Boot::Current | Boot::FellBack(_) => {}
                    Boot::RebootNeeded(into) => {
                        return Applied::waiting_for(journal, journal_path, into)
                    }
                }
                run_restore_hooks(journal, journal_path, hooks, st)?;
                installer.clean(journal, st)?;
                return Ok(Applied::from_journal(journal));
            }
        }
    }
}

/// Ends a finished install (confirmed, or rolled back) by deleting its journal. The caller
/// first records the outcome (the failed attempt, the report): until the journal is gone,
/// every start finishes the install again and so records it again, so no outcome is lost
/// to a power cut.
pub fn finish(journal_path: &Path) -> Result<(), ApplyError> {
    super::faults::point("apply", "remove the journal");
    journal::remove(journal_path)
}

fn hook_env(
    journal: &Journal,
    app: &str,
    version: &str,
    state: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("PETREL_APP", app.to_string()),
        ("PETREL_VERSION", version.to_string()),
        ("PETREL_STATE", state.to_string()),
        ("PETREL_CAMPAIGN", journal.campaign.clone()),
    ]
}

/// Runs the `on_apply` hook for every change not hooked yet (progress in the journal).
fn run_apply_hooks(
    journal: &mut Journal,
    journal_path: &Path,
    hooks: &Hooks,
    st: &mut Stepper,
) -> Result<(), ApplyError> {
    let Some(argv) = &hooks.on_apply else {
        journal.hooks_done = journal.ops.len();
        return Ok(());
    };
    while journal.hooks_done < journal.ops.len() {
        let op = journal.ops[journal.hooks_done].clone();
        st.step(format!("on_apply hook for {}", op.app))?;
        let (version, state) = match &op.version {
            Some(v) => (v.clone(), op.post_install.to_string()),
            None => (
                op.from_version.clone().unwrap_or_default(),
                "removed".into(),
            ),
        };
        let env = hook_env(journal, &op.app, &version, &state);
        if let Err(e) =
            super::exec::run_hook(argv, &[&op.app, &version, &state], &env, hooks.timeout)
        {
            tracing::warn!("on_apply hook for {}: {e}", op.app);
            journal.hook_errors.push(format!("{}: {e}", op.app));
        }
        journal.hooks_done += 1;
        journal.save(journal_path)?;
    }
    Ok(())
}

/// Runs the `on_apply` hook for the restored versions after a rollback (`restored`, or
/// `removed` for an application the refused set had added).
fn run_restore_hooks(
    journal: &mut Journal,
    journal_path: &Path,
    hooks: &Hooks,
    st: &mut Stepper,
) -> Result<(), ApplyError> {
    let Some(argv) = &hooks.on_apply else {
        return Ok(());
    };
    while journal.restore_hooks_done < journal.ops.len() {
        let op = journal.ops[journal.restore_hooks_done].clone();
        st.step(format!("on_apply hook for {} (restored)", op.app))?;
        let (version, state) = match &op.from_version {
            Some(v) => (v.clone(), "restored".to_string()),
            None => (
                op.version.clone().unwrap_or_default(),
                "removed".to_string(),
            ),
        };
        let env = hook_env(journal, &op.app, &version, &state);
        if let Err(e) =
            super::exec::run_hook(argv, &[&op.app, &version, &state], &env, hooks.timeout)
        {
            tracing::warn!("on_apply hook for the restored {}: {e}", op.app);
        }
        journal.restore_hooks_done += 1;
        journal.save(journal_path)?;
    }
    Ok(())
}

/// Runs the health check, with its retries: `Err(why)` when every try failed.
fn health_check(h: &HealthConfig, journal: &Journal) -> Result<(), String> {
    let env = [
        ("PETREL_CAMPAIGN", journal.campaign.clone()),
        ("PETREL_GROUP", journal.group.0.clone()),
        ("PETREL_CHANGES", journal.changes().join("; ")),
    ];
    let mut last = String::new();
    for attempt in 0..=h.retries {
        if attempt > 0 {
            std::thread::sleep(h.interval);
        }
        match super::exec::run_hook(&h.command, &[], &env, h.timeout) {
            Ok(()) => {
                tracing::info!("health check passed (try {})", attempt + 1);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!("health check try {} of {}: {e}", attempt + 1, h.retries + 1);
                last = e;
            }
        }
    }
    Err(format!(
        "the health check failed{}: {last}",
        if h.retries > 0 {
            format!(" {} times", h.retries + 1)
        } else {
            String::new()
        }
    ))
}

/// Recovers from an interrupted install before the agent does anything else: a journal
/// before its commit point is undone (the old set stays); a committed one is switched; with
/// `settle`, a switched one then runs its hooks and health check and is confirmed or rolled
/// back; confirmed and rolling-back journals are finished. A finished install
/// ([`Recovery::RolledForward`]) keeps its journal until the caller has recorded it and
/// called [`finish`]. `Ok(None)`: there was no journal.
/// `installer_for` builds the handler for the journal (the inventory directory it names, or
/// the configured installer command).
pub fn recover(
    journal_path: &Path,
    installer_for: &mut dyn FnMut(&Journal) -> Box<dyn Installer>,
    hooks: &Hooks,
    settle: bool,
    step_hook: StepHook,
) -> Result<Option<Recovery>, AgentError> {
    let Some(mut journal) = Journal::load(journal_path)? else {
        return Ok(None);
    };
    let mut installer = installer_for(&journal);
    if journal.phase == Phase::Prepared {
        tracing::warn!(
            "install of campaign {} revision {} was interrupted before its commit point: rolling back (the old set stays)",
            journal.campaign,
            journal.revision
        );
        installer.discard(&journal);
        journal::remove(journal_path).map_err(|e| AgentError::State {
            path: journal_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        return Ok(Some(Recovery::RolledBack {
            campaign: journal.campaign,
            revision: journal.revision,
        }));
    }
    if journal.awaited_reboot {
        tracing::info!(
            "install of campaign {} revision {} continues after the reboot ({})",
            journal.campaign,
            journal.revision,
            journal.phase.name()
        );
    } else {
        tracing::warn!(
            "install of campaign {} revision {} was interrupted ({}): completing it",
            journal.campaign,
            journal.revision,
            journal.phase.name()
        );
    }
    let mut st = Stepper::new(step_hook);
    let (campaign, revision) = (journal.campaign.clone(), journal.revision);
    let applied = proceed(
        installer.as_mut(),
        &mut journal,
        journal_path,
        hooks,
        &mut st,
        settle,
    )
    .map_err(|e| AgentError::State {
        path: journal_path.to_path_buf(),
        reason: format!(
            "cannot complete the interrupted install of campaign {campaign} revision {revision}: {e}"
        ),
    })?;
    if journal.phase == Phase::Switched || applied.reboot.is_some() {
        Ok(Some(Recovery::Pending {
            campaign,
            revision,
            reboot: applied.reboot,
        }))
    } else {
        Ok(Some(Recovery::RolledForward(applied)))
    }
}

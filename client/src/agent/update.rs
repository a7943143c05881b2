//! One agent cycle (`petrel update`, and each cycle of `petrel run`): refresh → decide →
//! download → stage → re-check → install → hooks → health → confirm or roll back → report,
//! for every campaign that is due.
//!
//! Each phase leaves its result in one persisted type, which is all the next start needs
//! to continue after a power cut:
//!
//! | phase | persisted as | where |
//! |---|---|---|
//! | recover | [`install::journal::Journal`] (finished or undone first) | `apply.journal.json` |
//! | refresh | the verified TUF metadata ([`crate::tuf::updater::Updater`]) | `metadata/` |
//! | decide | [`AgentState`] (revisions seen, [`super::LastCheck`]) | `state.json` |
//! | download | partial files, then [`crate::decide::StagedItem`]s | `staging/…/.petrel-part-*`, `state.json` |
//! | stage | [`StagedPlan`] | `staging/<campaign>-<revision>/plan.json` |
//! | re-check | nothing new: the same metadata and decision, refreshed | |
//! | install, hooks, health, confirm or roll back | [`install::journal::Phase`] in the journal | `apply.journal.json` |
//! | report | [`crate::report::SignedReport`]s, [`crate::decide::LastReport`] | `outbox/`, `state.json` |
//!
//! The install phases go through one [`install::Installer`] (files or command), so the
//! resident agent, `petrel update`, `petrel recover` and the crash tests drive the same
//! machine.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::faults;
use super::install::{self, Applied, ApplyError, Recovery, StepHook};
use super::stage::{self, StageOutcome, StagedPlan};
use super::AgentState;
use super::{now_seconds, Agent, AgentError, Evaluation};
use crate::consent::verify_log;
use crate::decide::rollout::{position, Position};
use crate::decide::CampaignDecision;
use crate::decide::{Action, Decision, InstallAttempt, Inventory, LastReport, Plan, Status};
use crate::manifest::ManifestHash;
use crate::report::{DeviceKey, Outbox, Report, ReportFields, ReportResult};
use crate::tuf::updater::DownloadProgress;

/// What happened to the install the decision asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallResult {
    /// The new set is installed (and passed the health check, if one is configured).
    Installed,
    /// The new system is written and set to boot next: it runs, and is checked, after the
    /// reboot the agent requested. Reported as `installed_pending_reboot` (not final).
    PendingReboot,
    /// The new set was installed, but a hook or the health check failed and the previous
    /// set was restored. Reported as failed; the same manifest is not tried again.
    RolledBack,
    /// The install failed (before its commit point: the old set stays; or after it, with no
    /// way to restore the previous set). Counted as a failed attempt and reported.
    Failed,
    /// The device could not install now (no space, a missing mount, a busy resource): the
    /// old set stays, no attempt is counted and nothing is reported; retried.
    Deferred,
    /// Nothing was attempted: the re-check right before installing said no (halted,
    /// cancelled, changed, no longer ready), or the staged files were incomplete.
    NotInstalled,
}

/// The install step of an update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstallOutcome {
    /// The campaign.
    pub campaign: String,
    /// Its revision (as decided before the re-check).
    pub revision: u64,
    /// Its manifest hash.
    pub manifest_sha256: ManifestHash,
    /// What happened.
    pub result: InstallResult,
    /// Why, in words.
    pub reason: String,
    /// The changes made (empty unless installed or rolled back).
    pub changes: Vec<String>,
    /// The inventory read back afterwards.
    pub inventory_after: Inventory,
}

/// A report queued in the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueuedReport {
    /// The campaign.
    pub campaign: String,
    /// Its revision.
    pub revision: u64,
    /// The result reported.
    pub result: ReportResult,
    /// The reason reported.
    pub reason: String,
    /// The report's id.
    pub report_id: String,
}

/// How a run ended, for exit statuses and the daemon's backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Everything due was done (or there was nothing to do).
    Ok,
    /// An install failed or was rolled back, or a download was not the signed bytes: an
    /// operator should look (exit status 1).
    Failed,
    /// A temporary problem of the network, the repository's server or the device (no space)
    /// kept something from being done; nothing is blamed on a campaign, and it is tried
    /// again (exit status 3).
    Temporary,
}

/// What [`Agent::update`] did.
#[derive(Debug, Serialize)]
pub struct UpdateOutcome {
    /// The instant decided at.
    pub decided_at: DateTime<Utc>,
    /// An interrupted install that was completed or undone when the agent started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<Recovery>,
    /// Staging done in this run.
    pub staged: Vec<StageOutcome>,
    /// The installs attempted in this run (every campaign ready to install).
    pub installs: Vec<InstallOutcome>,
    /// Reports queued in this run.
    pub reports: Vec<QueuedReport>,
    /// The reboot the run requested (an install waits for it), in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot: Option<String>,
    /// Reports sent to `report_url` in this run (`None`: no URL configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
    /// Whether sending reports should be tried again soon (the endpoint was unavailable
    /// or refused the device for now).
    #[serde(skip)]
    pub reports_pending: bool,
    /// Temporary problems (parts of the repository that could not be read, the network,
    /// the device's space): tried again at the next run.
    pub problems: Vec<String>,
    /// Other things worth saying (reports that could not be queued, staging removed).
    pub notes: Vec<String>,
    /// The last decision (after everything above).
    pub decision: Option<Decision>,
    /// `state.json` as saved at the end.
    #[serde(skip)]
    pub state: Option<AgentState>,
}

impl UpdateOutcome {
    /// How the run ended: failed (an install failed or was rolled back, a download was not
    /// the signed bytes), temporary (a problem of the network, the server or the device),
    /// or ok. Statuses such as "waiting for consent" are not failures.
    pub fn status(&self) -> RunStatus {
        let failed = self
            .installs
            .iter()
            .any(|i| matches!(i.result, InstallResult::Failed | InstallResult::RolledBack))
            || self
                .staged
                .iter()
                .any(|s| s.error.is_some() && !s.error_is_temporary);
        let temporary = !self.problems.is_empty()
            || self
                .installs
                .iter()
                .any(|i| i.result == InstallResult::Deferred)
            || self
                .staged
                .iter()
                .any(|s| s.error.is_some() && s.error_is_temporary);
        if failed {
            RunStatus::Failed
        } else if temporary {
            RunStatus::Temporary
        } else {
            RunStatus::Ok
        }
    }

    /// Whether something failed that an operator should look at ([`RunStatus::Failed`]).
    pub fn failed(&self) -> bool {
        self.status() == RunStatus::Failed
    }
}

/// Called as downloads progress, with the figures so far.
pub type ProgressHook<'a> = Box<dyn FnMut(&DownloadProgress) + 'a>;

/// Test seams for [`Agent::update_with`].
#[derive(Default)]
pub struct UpdateHooks<'a> {
    /// Called right before the refresh that re-checks a campaign before installing (tests
    /// publish a halt here).
    pub before_recheck: Option<Box<dyn FnMut() + 'a>>,
    /// Called before each durable step of the install (see [`StepHook`]).
    pub step: Option<StepHook<'a>>,
    /// Called as downloads progress (the command line draws progress bars with it).
    pub progress: Option<ProgressHook<'a>>,
    /// Raised to stop between steps (SIGTERM): no further download or install starts, and
    /// a download in progress stops, resumable.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl UpdateHooks<'_> {
    fn stopping(&self) -> bool {
        stop_raised(self.stop)
    }
}

fn stop_raised(stop: Option<&std::sync::atomic::AtomicBool>) -> bool {
    stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
}

/// The most campaigns one run stages or installs (a bound, not a limit anyone meets).
const MAX_CAMPAIGNS_PER_RUN: usize = 64;

impl Agent {
    /// The public half of the device's report signing key (PEM), creating the key
    /// (`<state_dir>/device.key`) on first use. Needs no trusted root and no network.
    pub fn device_key_pem(config: &super::AgentConfig) -> Result<String, AgentError> {
        let paths = super::StatePaths::new(&config.state_dir);
        paths.create_dirs()?;
        let _lock = paths.lock()?;
        let key = DeviceKey::load_or_create(paths.device_key()).map_err(|e| AgentError::State {
            path: paths.device_key(),
            reason: e.to_string(),
        })?;
        Ok(key.public_pem())
    }

    /// Refreshes, decides at `at` (default: now), downloads into staging what the decision
    /// says is due for every campaign (in its download window, with the consent it needs),
    /// and for every campaign ready to install (everything staged and verified, the apply
    /// window open, install consent given) refreshes the signed metadata again, decides
    /// again from it, and only if the campaign is still the same manifest and still ready
    /// installs its plan all or nothing, runs the hooks and the health check, and keeps the
    /// new set or restores the previous one. Queues signed reports (staged, succeeded,
    /// failed, errors such as a forced campaign outside its set, declined) and sends them
    /// when a `report_url` is configured. The `petrel update` command and each cycle of
    /// `petrel run` call it with the real clock.
    pub fn update(&mut self, at: Option<DateTime<Utc>>) -> Result<UpdateOutcome, AgentError> {
        self.update_with(at, UpdateHooks::default())
    }

    /// [`Agent::update`] with test seams.
    pub fn update_with(
        &mut self,
        at: Option<DateTime<Utc>>,
        mut hooks: UpdateHooks,
    ) -> Result<UpdateOutcome, AgentError> {
        let mut out = UpdateOutcome {
            decided_at: at.unwrap_or_else(now_seconds),
            recovered: self.recovered.take(),
            staged: Vec::new(),
            installs: Vec::new(),
            reports: self.recovered_report.take().into_iter().collect(),
            reboot: None,
            sent: None,
            reports_pending: false,
            problems: Vec::new(),
            notes: Vec::new(),
            decision: None,
            state: None,
        };
        faults::point("refresh", "refresh and decide");
        let (mut ev, mut updater) = self.evaluate_inner(at)?;
        out.decided_at = ev.now;
        self.note_problems(&ev, &mut out);
        self.tidy(&mut ev, &mut out)?;

        // Downloads, for every campaign the decision says may download now.
        let mut tried = Vec::new();
        for _ in 0..MAX_CAMPAIGNS_PER_RUN {
            let next = ev.decision.campaigns.iter().find_map(|c| match &c.status {
                Status::ReadyToDownload { items, .. } if !tried.contains(&c.id) => {
                    Some((c.clone(), items.clone()))
                }
                _ => None,
            });
            let Some((c, items)) = next else { break };
            if hooks.stopping() {
                out.notes
                    .push("stopped before downloading (a stop was requested)".into());
                break;
            }
            tried.push(c.id.clone());
            faults::point("download", &format!("stage campaign {}", c.id));
            let stop = hooks.stop;
            let mut progress = |p: &DownloadProgress| {
                faults::point("download", p.target);
                if let Some(f) = hooks.progress.as_mut() {
                    f(p);
                }
                if stop_raised(stop) {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            };
            let so = stage::stage(
                &mut updater,
                &self.paths,
                &mut ev.state,
                &c,
                &items,
                &ev.view.artifacts,
                &self.delta_sources(),
                self.slots().as_ref(),
                ev.now,
                &mut progress,
            )?;
            let complete = so.plan.is_some() && so.error.is_none();
            if let Some(e) = &so.error {
                tracing::warn!("staging campaign {}: {e}", c.id);
            }
            out.staged.push(so);
            let t = ev.now;
            self.redecide(&mut ev, t)?;
            if complete {
                self.report_staged(&mut ev, &c, &mut out);
            }
        }
        drop(updater);

        // Reports the decision says are due (errors, declines, rejections, expiry).
        self.due_reports(&mut ev, &mut out);

        // An install waiting for a reboot holds every other install back.
        if let Some(Recovery::Pending {
            campaign,
            reboot: Some(into),
            ..
        }) = &out.recovered
        {
            out.notes.push(format!(
                "the install of campaign {campaign} waits for a reboot ({into}); nothing else is installed before it"
            ));
            out.reboot = Some(into.clone());
        }

        // Installs, for every campaign ready to install (each changes the inventory, so
        // the next is decided again from the device as it then is).
        let mut attempted = Vec::new();
        for _ in 0..MAX_CAMPAIGNS_PER_RUN {
            if out.reboot.is_some() {
                break;
            }
            let next = ev.decision.actions().into_iter().find_map(|a| match a {
                Action::Install {
                    campaign,
                    manifest_sha256,
                    plan,
                } if !attempted.contains(&campaign) => Some((campaign, manifest_sha256, plan)),
                _ => None,
            });
            let Some((campaign, sha, plan)) = next else {
                break;
            };
            if hooks.stopping() {
                out.notes
                    .push("stopped before installing (a stop was requested)".into());
                break;
            }
            attempted.push(campaign.clone());
            let (next_ev, outcome) =
                self.install(ev, at, &campaign, &sha, &plan, &mut hooks, &mut out)?;
            ev = next_ev;
            out.installs.push(outcome);
            self.due_reports(&mut ev, &mut out);
            self.tidy(&mut ev, &mut out)?;
        }
        ev.state.save(&self.paths.state_file())?;
        faults::point("report", "send reports");
        self.send_reports(&mut out);
        if let Some(into) = &out.reboot {
            if let Err(e) = self.request_reboot(into) {
                tracing::error!("{e}");
                out.problems.push(e);
            }
        }
        out.decision = Some(ev.decision);
        out.state = Some(ev.state);
        Ok(out)
    }

    /// Temporary problems of this evaluation, for the outcome.
    fn note_problems(&self, ev: &Evaluation, out: &mut UpdateOutcome) {
        for (path, why) in &ev.view.incomplete {
            let p = format!("{path}: {why}");
            if !out.problems.contains(&p) {
                out.problems.push(p);
            }
        }
    }

    /// Reports `staged` once per manifest, when every artifact of campaign `c` is staged.
    fn report_staged(&self, ev: &mut Evaluation, c: &CampaignDecision, out: &mut UpdateOutcome) {
        let already = ev
            .state
            .reports
            .get(&c.id)
            .is_some_and(|r| r.manifest_sha256 == c.manifest_sha256 && r.status == "staged");
        if already {
            return;
        }
        let reason = match &ev.decision.campaign(&c.id).map(|d| &d.status) {
            Some(Status::WaitingForApplyWindow { opens_at }) => format!(
                "every artifact is staged and verified; the apply window opens at {}",
                super::render::ts(*opens_at)
            ),
            _ => "every artifact is staged and verified".to_string(),
        };
        self.report(
            ev,
            &c.id,
            ReportResult::Staged,
            "staged",
            reason,
            false,
            out,
        );
    }

    /// Drops staging no campaign needs any more, unless the view is incomplete: a part of
    /// the repository that could not be read this time never throws staged bytes away.
    fn tidy(&self, ev: &mut Evaluation, out: &mut UpdateOutcome) -> Result<(), AgentError> {
        if !ev.view.incomplete.is_empty() {
            return Ok(());
        }
        for d in stage::tidy(
            &self.paths,
            &mut ev.state,
            &ev.decision,
            self.slots().as_ref(),
        )? {
            out.notes.push(format!(
                "removed {} (no campaign needs it any more)",
                d.display()
            ));
        }
        Ok(())
    }

    /// The install step of one campaign: verified staging, the re-check from freshly
    /// refreshed metadata, then the all-or-nothing install with hooks and health check.
    /// Returns the evaluation to continue with and what happened.
    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        mut ev: Evaluation,
        at: Option<DateTime<Utc>>,
        campaign: &str,
        sha: &ManifestHash,
        plan: &Plan,
        hooks: &mut UpdateHooks,
        out: &mut UpdateOutcome,
    ) -> Result<(Evaluation, InstallOutcome), AgentError> {
        let c = ev
            .decision
            .campaign(campaign)
            .expect("actions name decided campaigns")
            .clone();
        let mut outcome = InstallOutcome {
            campaign: campaign.to_string(),
            revision: c.revision,
            manifest_sha256: sha.clone(),
            result: InstallResult::NotInstalled,
            reason: String::new(),
            changes: Vec::new(),
            inventory_after: self.profile.inventory.clone(),
        };
        // Every artifact staged and verified, and the plan recorded.
        faults::point("stage", &format!("record the plan of {campaign}"));
        let staged = stage::record_plan(
            &self.paths,
            &mut ev.state,
            &c,
            plan,
            &ev.view.artifacts,
            self.slots().as_ref(),
            ev.now,
        )?;
        let (_plan_path, mut staged) = match staged {
            Ok(p) => p,
            Err(missing) => {
                outcome.reason = format!(
                    "not installed: staged files are missing or not the signed ones ({}); they are downloaded again",
                    missing.join(", ")
                );
                let t = ev.now;
                self.redecide(&mut ev, t)?;
                return Ok((ev, outcome));
            }
        };

        // The re-check: refresh the signed metadata and the inventory, decide again.
        drop(ev);
        if let Some(f) = hooks.before_recheck.as_mut() {
            f();
        }
        faults::point("recheck", &format!("re-check {campaign}"));
        self.reload_inventory()?;
        let (mut ev, updater) = self.evaluate_inner(at)?;
        drop(updater);
        self.note_problems(&ev, out);
        let fresh = ev.decision.campaign(campaign).cloned();
        let refused = match &fresh {
            None => Some(format!(
                "campaign {campaign} is no longer published; nothing installed"
            )),
            Some(f) if f.status == Status::Halted => Some(format!(
                "campaign {campaign} was halted (revision {}) right before installing; nothing installed, the staged files are kept until it is resumed or cancelled",
                f.revision
            )),
            Some(f) if f.status == Status::Cancelled => Some(format!(
                "campaign {campaign} was cancelled (revision {}) right before installing; nothing installed, the staged files are dropped",
                f.revision
            )),
            Some(f) if f.manifest_sha256 != *sha => Some(format!(
                "campaign {campaign} changed right before installing (revision {} -> {}); nothing installed now, the next run decides on the new revision",
                c.revision, f.revision
            )),
            Some(f) if !f.status.allows_install() => Some(format!(
                "campaign {campaign} is no longer ready to install ({}); nothing installed",
                super::render::status_phrase(&f.status)
            )),
            Some(f) if f.plan.as_ref() != Some(plan) => Some(format!(
                "the plan of campaign {campaign} changed right before installing (the inventory or the group changed); nothing installed now, the next run stages the new plan"
            )),
            Some(_) => None,
        };
        if let Some(reason) = refused {
            tracing::warn!("{reason}");
            outcome.reason = reason;
            outcome.inventory_after = self.profile.inventory.clone();
            return Ok((ev, outcome));
        }

        // The install (the journal keeps the wave for a report after an interruption).
        staged.wave = self.wave_of(&ev, campaign);
        let now = ev.now;
        let dir = stage::campaign_dir(&self.paths, campaign, c.revision);
        let mut cont = |_: usize, _: &str| Ok(());
        let step: StepHook = match hooks.step.as_mut() {
            Some(h) => &mut **h,
            None => &mut cont,
        };
        let mut installer = self.installer(&staged);
        let result = install::install(
            installer.as_mut(),
            &staged,
            &dir,
            &self.paths.journal(),
            &self.hooks(),
            now,
            step,
        );
        if let Err(ApplyError::Interrupted { step, name }) = &result {
            return Err(AgentError::Refused(format!(
                "install interrupted before step {step} ({name})"
            )));
        }
        self.reload_inventory()?;
        outcome.inventory_after = self.profile.inventory.clone();
        let mut rolled_back = false;
        let installed_and_recorded = result.as_ref().is_ok_and(|a| a.reboot.is_none());
        let report_result = match result {
            Ok(applied) if applied.reboot.is_some() && applied.failure.is_none() => {
                let into = applied.reboot.clone().unwrap_or_default();
                outcome.changes = applied.changes.clone();
                outcome.result = InstallResult::PendingReboot;
                outcome.reason = format!(
                    "installed group {} revision {} ({}); it runs after the reboot ({into}), then its health check decides",
                    applied.group.0,
                    applied.group.1,
                    applied.changes.join("; ")
                );
                out.reboot = Some(into);
                Some(ReportResult::InstalledPendingReboot)
            }
            Ok(applied) if applied.reboot.is_some() => {
                // Failed right away and restored, but the previous system runs only after
                // a reboot: the final report follows it.
                let into = applied.reboot.clone().unwrap_or_default();
                outcome.changes = applied.changes.clone();
                outcome.result = InstallResult::Deferred;
                outcome.reason = format!(
                    "{}; the previous system runs after the reboot ({into})",
                    applied.failure.clone().unwrap_or_default()
                );
                out.reboot = Some(into);
                None
            }
            Ok(applied) => {
                outcome.changes = applied.changes.clone();
                let (result, reason) = self.settled(&applied, &mut ev.state);
                outcome.result = result;
                outcome.reason = reason;
                rolled_back = applied.rolled_back;
                (result == InstallResult::Installed)
                    .then_some(ReportResult::Succeeded)
                    .or(Some(ReportResult::Failed))
            }
            Err(e) if self.paths.journal().exists() => {
                // Past the commit point: the journal completes (or rolls back) the install
                // at the next start, which reports it. Nothing to count or report now.
                outcome.result = InstallResult::Deferred;
                outcome.reason = format!(
                    "the install passed its commit point and stopped ({e}); the next start completes it from its journal"
                );
                tracing::warn!("{}", outcome.reason);
                None
            }
            Err(e) if e.is_environmental() => {
                outcome.result = InstallResult::Deferred;
                outcome.reason = format!(
                    "not installed now, the device could not ({e}); the previous set stays, no attempt is counted, and the next run tries again"
                );
                tracing::warn!("{}", outcome.reason);
                None
            }
            Err(e) => {
                let failures = ev
                    .state
                    .attempts
                    .get(campaign)
                    .filter(|a| a.is_for(sha, &c.attempt_sha256))
                    .map_or(0, |a| a.failures)
                    + 1;
                ev.state.attempts.insert(
                    campaign.to_string(),
                    InstallAttempt {
                        manifest_sha256: sha.clone(),
                        failures,
                        last_error: e.to_string(),
                        at: now_seconds(),
                        after_commit: false,
                        attempt_sha256: Some(c.attempt_sha256.clone()),
                    },
                );
                if matches!(e, ApplyError::Verify(_)) {
                    // Staged bytes that are not the signed ones are never used again.
                    for s in &staged.steps {
                        if let Some(t) = s.step.target() {
                            ev.state.staged.remove(t);
                        }
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                }
                outcome.result = InstallResult::Failed;
                outcome.reason = format!(
                    "install failed (attempt {failures} of {}), nothing installed: {e}",
                    crate::decide::MAX_INSTALL_ATTEMPTS
                );
                Some(ReportResult::Failed)
            }
        };
        ev.state.save(&self.paths.state_file())?;
        let t = ev.now;
        self.redecide(&mut ev, t)?;
        if let Some(r) = report_result {
            let status = match r {
                ReportResult::Succeeded => "succeeded",
                ReportResult::InstalledPendingReboot => "installed_pending_reboot",
                _ => "failed",
            };
            let reason = outcome.reason.clone();
            self.report(&mut ev, campaign, r, status, reason, rolled_back, out);
        }
        if installed_and_recorded {
            // The outcome is recorded (state and report): the install is over.
            install::finish(&self.paths.journal()).map_err(|e| AgentError::State {
                path: self.paths.journal(),
                reason: e.to_string(),
            })?;
        }
        if outcome.result == InstallResult::Installed || outcome.result == InstallResult::RolledBack
        {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok((ev, outcome))
    }

    /// The result and reason of a finished install, recording in `state` what the engine
    /// needs: a success clears the failed attempts; a failure after the commit point (a
    /// hook, the health check) blocks the manifest until the campaign changes.
    pub(crate) fn settled(&self, a: &Applied, state: &mut AgentState) -> (InstallResult, String) {
        match &a.failure {
            None => {
                state.attempts.remove(&a.campaign);
                (
                    InstallResult::Installed,
                    format!(
                        "installed group {} revision {}: {}",
                        a.group.0,
                        a.group.1,
                        a.changes.join("; ")
                    ),
                )
            }
            Some(why) => {
                state.attempts.insert(
                    a.campaign.clone(),
                    InstallAttempt {
                        manifest_sha256: a.manifest_sha256.clone(),
                        failures: 1,
                        last_error: why.clone(),
                        at: now_seconds(),
                        after_commit: true,
                        attempt_sha256: a.attempt_sha256.clone(),
                    },
                );
                if a.rolled_back {
                    (
                        InstallResult::RolledBack,
                        format!(
                            "installed group {} revision {} ({}), but {why}; the previous set was restored and this revision is not tried again",
                            a.group.0,
                            a.group.1,
                            a.changes.join("; ")
                        ),
                    )
                } else {
                    (
                        InstallResult::Failed,
                        format!(
                            "installed group {} revision {} ({}), but {why}",
                            a.group.0,
                            a.group.1,
                            a.changes.join("; ")
                        ),
                    )
                }
            }
        }
    }

    /// Queues the reports the decision says are due and remembers them.
    fn due_reports(&self, ev: &mut Evaluation, out: &mut UpdateOutcome) {
        let due: Vec<(String, &'static str, String, bool)> = ev
            .decision
            .campaigns
            .iter()
            .filter(|c| c.report_due)
            .map(|c| {
                (
                    c.id.clone(),
                    c.status.kind(),
                    c.status.to_string(),
                    matches!(c.status, Status::Declined { .. }),
                )
            })
            .collect();
        for (id, kind, reason, declined) in due {
            let result = if declined {
                ReportResult::Declined
            } else {
                ReportResult::Failed
            };
            self.report(ev, &id, result, kind, reason, false, out);
        }
    }

    /// Builds, signs and queues a report about `campaign`, and remembers it in
    /// `state.reports` (`status`: what the engine compares against). A report that cannot
    /// be queued is a note, never a failed update.
    /// The device's rollout wave (1-based) in `campaign`, if the campaign has waves.
    fn wave_of(&self, ev: &Evaluation, campaign: &str) -> Option<u32> {
        let d = ev.decision.campaign(campaign)?;
        let e = ev
            .view
            .campaigns
            .iter()
            .find(|e| e.target_path == d.target_path)?;
        let canary = ev.assignment().is_some_and(|a| a.canary);
        match position(&e.manifest, &self.profile, canary) {
            Position::Wave { index, .. } => u32::try_from(index + 1).ok(),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        ev: &mut Evaluation,
        campaign: &str,
        result: ReportResult,
        status: &str,
        reason: String,
        rolled_back: bool,
        out: &mut UpdateOutcome,
    ) {
        let Some(d) = ev.decision.campaign(campaign) else {
            return;
        };
        let (revision, sha) = (d.revision, d.manifest_sha256.clone());
        let wave = self.wave_of(ev, campaign);
        faults::point("report", &format!("queue {result} {campaign}"));
        match self.queue_report(campaign, revision, wave, result, &reason, rolled_back) {
            Ok(id) => {
                out.reports.push(QueuedReport {
                    campaign: campaign.to_string(),
                    revision,
                    result,
                    reason,
                    report_id: id,
                });
                ev.state.reports.insert(
                    campaign.to_string(),
                    LastReport {
                        manifest_sha256: sha,
                        status: status.to_string(),
                        at: now_seconds(),
                    },
                );
                if let Err(e) = ev.state.save(&self.paths.state_file()) {
                    out.notes.push(e.to_string());
                }
                let t = ev.now;
                if let Err(e) = self.redecide(ev, t) {
                    out.notes.push(e.to_string());
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                out.notes.push(e);
            }
        }
    }

    /// Signs a report with the device key (`state/device.key`, created on first use) and
    /// queues it in `state/outbox/`; returns its id.
    pub fn queue_report(
        &self,
        campaign: &str,
        revision: u64,
        wave: Option<u32>,
        result: ReportResult,
        reason: &str,
        rolled_back: bool,
    ) -> Result<String, String> {
        let fail = |e: String| format!("cannot queue a report about campaign {campaign}: {e}");
        let key =
            DeviceKey::load_or_create(self.paths.device_key()).map_err(|e| fail(e.to_string()))?;
        let outbox = Outbox::open(self.paths.outbox()).map_err(|e| fail(e.to_string()))?;
        let consent_log = match std::fs::read(self.paths.consent_log()) {
            Ok(bytes) => verify_log(&bytes)
                .map_err(|e| fail(format!("{}: {e}", self.paths.consent_log().display())))?
                .entries
                .into_iter()
                .filter(|e| e.event.campaign == campaign)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(fail(e.to_string())),
        };
        let inventory_after: BTreeMap<_, _> = super::read_device_inventory(&self.config)
            .unwrap_or_else(|_| self.profile.inventory.clone())
            .into_iter()
            .collect();
        let report = Report::new(ReportFields {
            device_id: self.profile.id.clone(),
            campaign: campaign.to_string(),
            revision,
            wave,
            result,
            reason: reason.to_string(),
            inventory_after,
            consent_log,
            time: now_seconds(),
            rolled_back,
        });
        let signed = report.sign(&key);
        outbox.queue(&signed).map_err(|e| fail(e.to_string()))?;
        Ok(signed.report_id().to_string())
    }

    /// Sends the outbox to `report_url`, if configured (failures are retried next run).
    fn send_reports(&self, out: &mut UpdateOutcome) {
        let Some(url) = &self.config.report_url else {
            return;
        };
        let outbox = match Outbox::open(self.paths.outbox()) {
            Ok(o) => o,
            Err(e) => {
                out.notes.push(format!("reports not sent: {e}"));
                return;
            }
        };
        let s = outbox.send_all(url);
        let mut text = format!("{} sent, {} kept for the next run", s.sent, s.kept);
        for r in &s.rejected {
            text.push_str(&format!(
                "; report {} rejected ({}): {}",
                r.report_id, r.status, r.message
            ));
        }
        for e in &s.errors {
            text.push_str(&format!("; {e}"));
        }
        out.reports_pending = s.retry();
        out.sent = Some(text);
    }

    /// The staged plan of campaign `id` at `revision`, if there is one.
    pub fn staged_plan(&self, id: &str, revision: u64) -> Result<Option<StagedPlan>, AgentError> {
        StagedPlan::load(&stage::campaign_dir(&self.paths, id, revision))
    }

    /// The state directory's `staging/` directories.
    pub fn staging_dirs(&self) -> Vec<PathBuf> {
        stage::list(&self.paths)
            .into_iter()
            .map(|s| s.dir)
            .collect()
    }
}

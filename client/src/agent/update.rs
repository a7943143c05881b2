//! `petrel update`: refresh, decide, download what is due into staging, apply what is due
//! (all or nothing, after refreshing and deciding again), and queue signed reports.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::apply::{self, ApplyError, Hooks, Recovery, StepHook};
use super::stage::{self, StageOutcome, StagedPlan};
use super::AgentState;
use super::{now_seconds, Agent, AgentError, Evaluation, InventorySource};
use crate::consent::verify_log;
use crate::decide::rollout::{position, Position};
use crate::decide::{Action, Decision, InstallAttempt, Inventory, LastReport, Plan, Status};
use crate::manifest::ManifestHash;
use crate::report::{DeviceKey, Outbox, Report, ReportFields, ReportResult};

/// What happened to the install the decision asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallResult {
    /// The new set is installed.
    Installed,
    /// The apply failed before its commit point: the old set stays. Counted as a failed
    /// attempt and reported.
    Failed,
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
    /// The changes made (empty unless installed).
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

/// What [`Agent::update`] did.
#[derive(Debug, Serialize)]
pub struct UpdateOutcome {
    /// The instant decided at.
    pub decided_at: DateTime<Utc>,
    /// An interrupted apply that was completed or undone when the agent started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<Recovery>,
    /// Staging done in this run.
    pub staged: Vec<StageOutcome>,
    /// The install, if one was due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallOutcome>,
    /// Reports queued in this run.
    pub reports: Vec<QueuedReport>,
    /// Reports sent to `report_url` in this run (`None`: no URL configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
    /// Other things worth saying (reports that could not be queued, staging removed).
    pub notes: Vec<String>,
    /// The last decision (after everything above).
    pub decision: Option<Decision>,
    /// `state.json` as saved at the end.
    #[serde(skip)]
    pub state: Option<AgentState>,
}

impl UpdateOutcome {
    /// Whether something failed that an operator should look at (a download or an
    /// install attempt); statuses such as "waiting for consent" are not failures.
    pub fn failed(&self) -> bool {
        self.staged.iter().any(|s| s.error.is_some())
            || self
                .install
                .as_ref()
                .is_some_and(|i| i.result == InstallResult::Failed)
    }
}

/// Test seams for [`Agent::update_with`].
#[derive(Default)]
pub struct UpdateHooks<'a> {
    /// Called right before the refresh that re-checks a campaign before installing (tests
    /// publish a halt here).
    pub before_recheck: Option<Box<dyn FnMut() + 'a>>,
    /// Called before each durable step of the apply (see [`StepHook`]).
    pub step: Option<StepHook<'a>>,
}

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

    /// The hooks from the configuration.
    pub fn hooks(&self) -> Hooks {
        Hooks {
            on_apply: self.config.on_apply.clone(),
            install: self.config.install_command.clone(),
            timeout: self.config.hook_timeout,
        }
    }

    /// Refreshes, decides at `at` (default: now), downloads into staging what the decision
    /// says is due (in the download window, with the consent the campaign needs), and when a
    /// campaign is ready to install (everything staged and verified, the apply window open,
    /// install consent given) refreshes the signed metadata again, decides again from it,
    /// and only if the campaign is still the same manifest and still ready to install
    /// applies its plan all or nothing. Queues signed reports (staged, installed, failed,
    /// errors such as a forced campaign outside its set, declined) and sends them when a
    /// `report_url` is configured. The `petrel update` command calls it with the real
    /// clock.
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
            install: None,
            reports: Vec::new(),
            sent: None,
            notes: Vec::new(),
            decision: None,
            state: None,
        };
        let (mut ev, mut updater) = self.evaluate_inner(at)?;
        out.decided_at = ev.now;
        self.tidy(&mut ev, &mut out)?;

        // Downloads.
        let download = ev.decision.actions().into_iter().find_map(|a| match a {
            Action::Download { campaign, items } => Some((campaign, items)),
            _ => None,
        });
        if let Some((campaign, items)) = download {
            let c = ev
                .decision
                .campaign(&campaign)
                .expect("actions name decided campaigns")
                .clone();
            let so = stage::stage(
                &mut updater,
                &self.paths,
                &mut ev.state,
                &c,
                &items,
                &ev.view.artifacts,
                match &self.config.inventory {
                    super::config::InventorySource::Dir(d) => Some(d.as_path()),
                    super::config::InventorySource::Command(_) => None,
                },
                ev.now,
            )?;
            let complete = so.plan.is_some() && so.error.is_none();
            out.staged.push(so);
            let t = ev.now;
            self.redecide(&mut ev, t)?;
            if complete {
                let already = ev.state.reports.get(&c.id).is_some_and(|r| {
                    r.manifest_sha256 == c.manifest_sha256 && r.status == "staged"
                });
                if !already {
                    let reason = match &ev.decision.campaign(&c.id).map(|d| &d.status) {
                        Some(Status::WaitingForApplyWindow { opens_at }) => format!(
                            "every artifact is staged and verified; the apply window opens at {}",
                            super::render::ts(*opens_at)
                        ),
                        _ => "every artifact is staged and verified".to_string(),
                    };
                    self.report(
                        &mut ev,
                        &c.id,
                        ReportResult::Staged,
                        "staged",
                        reason,
                        &mut out,
                    );
                }
            }
        }
        drop(updater);

        // Reports the decision says are due (errors, declines, rejections, expiry).
        self.due_reports(&mut ev, &mut out);

        // The install.
        let install = ev.decision.actions().into_iter().find_map(|a| match a {
            Action::Install {
                campaign,
                manifest_sha256,
                plan,
            } => Some((campaign, manifest_sha256, plan)),
            _ => None,
        });
        if let Some((campaign, sha, plan)) = install {
            ev = self.install(ev, at, &campaign, &sha, &plan, &mut hooks, &mut out)?;
            self.due_reports(&mut ev, &mut out);
            self.tidy(&mut ev, &mut out)?;
        }
        ev.state.save(&self.paths.state_file())?;
        self.send_reports(&mut out);
        out.decision = Some(ev.decision);
        out.state = Some(ev.state);
        Ok(out)
    }

    fn tidy(&self, ev: &mut Evaluation, out: &mut UpdateOutcome) -> Result<(), AgentError> {
        for d in stage::tidy(&self.paths, &mut ev.state, &ev.decision)? {
            out.notes.push(format!(
                "removed {} (no campaign needs it any more)",
                d.display()
            ));
        }
        Ok(())
    }

    /// The install step: verified staging, the re-check from freshly refreshed metadata,
    /// then the all-or-nothing apply. Returns the evaluation to continue with.
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
    ) -> Result<Evaluation, AgentError> {
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
        let staged = stage::record_plan(
            &self.paths,
            &mut ev.state,
            &c,
            plan,
            &ev.view.artifacts,
            ev.now,
        )?;
        let (plan_path, mut staged) = match staged {
            Ok(p) => p,
            Err(missing) => {
                outcome.reason = format!(
                    "not installed: staged files are missing or not the signed ones ({}); they are downloaded again",
                    missing.join(", ")
                );
                let t = ev.now;
                self.redecide(&mut ev, t)?;
                out.install = Some(outcome);
                return Ok(ev);
            }
        };

        // The re-check: refresh the signed metadata and the inventory, decide again.
        drop(ev);
        if let Some(f) = hooks.before_recheck.as_mut() {
            f();
        }
        self.reload_inventory()?;
        let (mut ev, updater) = self.evaluate_inner(at)?;
        drop(updater);
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
            out.install = Some(outcome);
            return Ok(ev);
        }

        // The apply (the journal keeps the wave for a report after an interruption).
        staged.wave = self.wave_of(&ev, campaign);
        let now = ev.now;
        let dir = stage::campaign_dir(&self.paths, campaign, c.revision);
        let mut cont = |_: usize, _: &str| Ok(());
        let step: StepHook = match hooks.step.as_mut() {
            Some(h) => &mut **h,
            None => &mut cont,
        };
        let result = match &self.config.inventory {
            InventorySource::Dir(inv) => apply::apply_dir(
                &staged,
                &dir,
                inv,
                &self.paths.journal(),
                &self.hooks(),
                now,
                step,
            )
            .map(|a| (a.changes, a.hook_errors)),
            InventorySource::Command(_) => match &self.hooks().install {
                Some(argv) => apply::apply_with_installer(
                    argv,
                    &plan_path,
                    &dir,
                    campaign,
                    self.config.hook_timeout,
                )
                .map(|()| (staged.steps.iter().map(|s| s.step.to_string()).collect(), Vec::new())),
                None => Err(ApplyError::Hook(
                    "the inventory is a command and no inventory.install_command is configured, so the agent cannot install; configure one (docs/device.md, hooks)".into(),
                )),
            },
        };
        if let Err(ApplyError::Interrupted { step, name }) = &result {
            return Err(AgentError::Refused(format!(
                "apply interrupted before step {step} ({name})"
            )));
        }
        self.reload_inventory()?;
        outcome.inventory_after = self.profile.inventory.clone();
        let (report_result, reason) = match result {
            Ok((changes, hook_errors)) => {
                outcome.changes = changes;
                ev.state.attempts.remove(campaign);
                if hook_errors.is_empty() {
                    outcome.result = InstallResult::Installed;
                    outcome.reason = format!(
                        "installed group {} revision {}: {}",
                        staged.group,
                        staged.group_revision,
                        outcome.changes.join("; ")
                    );
                    (ReportResult::Succeeded, outcome.reason.clone())
                } else {
                    outcome.result = InstallResult::Installed;
                    outcome.reason = format!(
                        "installed group {} revision {}, but the on_apply hook failed: {}",
                        staged.group,
                        staged.group_revision,
                        hook_errors.join("; ")
                    );
                    (ReportResult::Failed, outcome.reason.clone())
                }
            }
            Err(e) => {
                let failures = ev
                    .state
                    .attempts
                    .get(campaign)
                    .filter(|a| a.manifest_sha256 == *sha)
                    .map_or(0, |a| a.failures)
                    + 1;
                ev.state.attempts.insert(
                    campaign.to_string(),
                    InstallAttempt {
                        manifest_sha256: sha.clone(),
                        failures,
                        last_error: e.to_string(),
                        at: now_seconds(),
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
                (ReportResult::Failed, outcome.reason.clone())
            }
        };
        ev.state.save(&self.paths.state_file())?;
        let t = ev.now;
        self.redecide(&mut ev, t)?;
        let status = match report_result {
            ReportResult::Succeeded => "succeeded",
            _ => "failed",
        };
        self.report(&mut ev, campaign, report_result, status, reason, out);
        if outcome.result == InstallResult::Installed {
            let _ = std::fs::remove_dir_all(&dir);
        }
        out.install = Some(outcome);
        Ok(ev)
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
            self.report(ev, &id, result, kind, reason, out);
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
        match position(&e.manifest, &self.profile.id, canary) {
            Position::Wave { index, .. } => u32::try_from(index + 1).ok(),
            _ => None,
        }
    }

    fn report(
        &self,
        ev: &mut Evaluation,
        campaign: &str,
        result: ReportResult,
        status: &str,
        reason: String,
        out: &mut UpdateOutcome,
    ) {
        let Some(d) = ev.decision.campaign(campaign) else {
            return;
        };
        let (revision, sha) = (d.revision, d.manifest_sha256.clone());
        let wave = self.wave_of(ev, campaign);
        match self.queue_report(campaign, revision, wave, result, &reason) {
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
        let inventory_after: BTreeMap<_, _> =
            super::inventory::read_inventory(&self.config.inventory)
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

//! The installer for a device whose inventory is a command: the configured
//! `inventory.install_command` installs the staged plan (atomicity is its job), and the
//! optional `inventory.rollback_command` restores the previous set after a failed health
//! check.

use std::path::Path;
use std::time::Duration;

use super::journal::Journal;
use super::{ApplyError, Installer, Stepper};
use crate::agent::plan::{campaign_dir, StagedPlan, PLAN_FILE};
use crate::agent::state::StatePaths;

/// Installs through external commands: `argv… PLAN.json`, with `PETREL_STAGING` (the
/// directory holding the verified artifacts) and `PETREL_CAMPAIGN` in the environment;
/// the rollback command gets the same plan and `PETREL_ROLLBACK=1`.
#[derive(Clone, Debug)]
pub struct CommandInstaller {
    install: Option<Vec<String>>,
    rollback: Option<Vec<String>>,
    paths: StatePaths,
    timeout: Duration,
}

impl CommandInstaller {
    /// An installer running `install` (and `rollback`), each within `timeout`, on plans
    /// staged under `paths`.
    pub fn new(
        install: Option<Vec<String>>,
        rollback: Option<Vec<String>>,
        paths: StatePaths,
        timeout: Duration,
    ) -> CommandInstaller {
        CommandInstaller {
            install,
            rollback,
            paths,
            timeout,
        }
    }

    fn run(
        &self,
        argv: &[String],
        campaign: &str,
        dir: &Path,
        rollback: bool,
    ) -> Result<(), String> {
        let plan = dir.join(PLAN_FILE);
        let mut env = vec![
            ("PETREL_STAGING", dir.to_string_lossy().into_owned()),
            ("PETREL_CAMPAIGN", campaign.to_string()),
        ];
        if rollback {
            env.push(("PETREL_ROLLBACK", "1".to_string()));
        }
        crate::agent::exec::run_hook(argv, &[&plan.to_string_lossy()], &env, self.timeout)
    }
}

impl Installer for CommandInstaller {
    fn name(&self) -> String {
        match &self.install {
            Some(a) => format!("the installer {}", a[0]),
            None => "the inventory command".to_string(),
        }
    }

    fn check(&self, _plan: &StagedPlan) -> Result<(), ApplyError> {
        if self.install.is_none() {
            return Err(ApplyError::Unsupported(
                "the inventory is a command and no inventory.install_command is configured, so the agent cannot install; configure one (docs/device.md, hooks)".into(),
            ));
        }
        Ok(())
    }

    /// Runs the installer: its success is the commit point.
    fn prepare(
        &mut self,
        journal: &Journal,
        _plan: &StagedPlan,
        staging_dir: &Path,
        st: &mut Stepper,
    ) -> Result<(), ApplyError> {
        let argv = self.install.clone().expect("checked");
        st.step("run the installer".into())?;
        self.run(&argv, &journal.campaign, staging_dir, false)
            .map_err(|e| ApplyError::Hook(format!("the installer failed: {e}")))
    }

    fn discard(&mut self, _journal: &Journal) {}

    fn switch(&mut self, _journal: &Journal, _st: &mut Stepper) -> Result<(), ApplyError> {
        Ok(())
    }

    fn can_restore(&self) -> bool {
        self.rollback.is_some()
    }

    fn restore(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError> {
        let Some(argv) = self.rollback.clone() else {
            return Err(ApplyError::Unsupported(
                "no inventory.rollback_command is configured".into(),
            ));
        };
        st.step("run the rollback command".into())?;
        let dir = campaign_dir(&self.paths, &journal.campaign, journal.revision);
        self.run(&argv, &journal.campaign, &dir, true)
            .map_err(|e| ApplyError::Hook(format!("the rollback command failed: {e}")))
    }

    fn clean(&mut self, _journal: &Journal, _st: &mut Stepper) -> Result<(), ApplyError> {
        Ok(())
    }
}

//! The installer for a device whose inventory is a command: the configured
//! `inventory.install_command` installs the staged plan (atomicity is its job), the
//! optional `inventory.rollback_command` restores the previous set after a failed health
//! check, and the optional `inventory.confirm_command` marks the new set good after it
//! passed. An installer that hands the plan to an OS updater (RAUC, SWUpdate) exits 3 when
//! the new system runs only after a reboot: the agent reboots, and afterwards reads the
//! inventory to see whether the new system came up or the bootloader fell back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::journal::{Journal, Phase};
use super::{ApplyError, Boot, Installer, Stepper};
use crate::agent::exec::{run_bounded, CommandError, CommandSpec};
use crate::agent::inventory::read_command_inventory;
use crate::agent::plan::{campaign_dir, StagedPlan, PLAN_FILE};
use crate::agent::state::StatePaths;

/// The exit status of an installer or rollback command meaning "done; the result runs
/// after a reboot".
pub const EXIT_REBOOT_NEEDED: i32 = 3;
/// The marker (in the state directory; one install runs at a time) of an install waiting
/// for a reboot: it holds the boot id of the boot that installed.
const INSTALL_REBOOT_MARK: &str = "install.reboot";
/// The same after a rollback command.
const ROLLBACK_REBOOT_MARK: &str = "rollback.reboot";

/// Installs through external commands: `argv… PLAN.json`, with `PETREL_STAGING` (the
/// directory holding the verified artifacts) and `PETREL_CAMPAIGN` in the environment;
/// the rollback command gets the same plan and `PETREL_ROLLBACK=1`.
#[derive(Clone, Debug)]
pub struct CommandInstaller {
    install: Option<Vec<String>>,
    rollback: Option<Vec<String>>,
    confirm: Option<Vec<String>>,
    inventory: Vec<String>,
    boot_id_file: PathBuf,
    paths: StatePaths,
    timeout: Duration,
}

/// The commands of a [`CommandInstaller`].
#[derive(Clone, Debug, Default)]
pub struct Commands {
    /// `inventory.install_command`.
    pub install: Option<Vec<String>>,
    /// `inventory.rollback_command`.
    pub rollback: Option<Vec<String>>,
    /// `inventory.confirm_command`.
    pub confirm: Option<Vec<String>>,
    /// `inventory.command` (read after a reboot).
    pub inventory: Vec<String>,
}

enum Ran {
    Done,
    RebootNeeded,
}

impl CommandInstaller {
    /// An installer running `commands`, each within `timeout`, on plans staged under
    /// `paths`; `boot_id_file` tells one boot from the next.
    pub fn new(
        commands: Commands,
        boot_id_file: PathBuf,
        paths: StatePaths,
        timeout: Duration,
    ) -> CommandInstaller {
        CommandInstaller {
            install: commands.install,
            rollback: commands.rollback,
            confirm: commands.confirm,
            inventory: commands.inventory,
            boot_id_file,
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
    ) -> Result<Ran, String> {
        let plan = dir.join(PLAN_FILE);
        let mut spec = CommandSpec::new(argv, self.timeout)
            .arg(plan.to_string_lossy())
            .env("PETREL_STAGING", dir.to_string_lossy())
            .env("PETREL_CAMPAIGN", campaign);
        if rollback {
            spec = spec.env("PETREL_ROLLBACK", "1");
        }
        match run_bounded(&spec) {
            Ok(out) => {
                if !out.stderr.is_empty() {
                    tracing::info!("{}: {}", spec.program(), out.stderr);
                }
                Ok(Ran::Done)
            }
            Err(CommandError::Failed { status, stderr, .. })
                if status.code() == Some(EXIT_REBOOT_NEEDED) =>
            {
                if !stderr.is_empty() {
                    tracing::info!("{}: {stderr}", spec.program());
                }
                Ok(Ran::RebootNeeded)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn boot_id(&self) -> Result<String, ApplyError> {
        std::fs::read_to_string(&self.boot_id_file)
            .map(|s| s.trim().to_string())
            .map_err(|e| ApplyError::Io(self.boot_id_file.clone(), e))
    }

    fn mark(&self, _journal: &Journal, name: &str) -> PathBuf {
        self.paths.root.join(name)
    }

    fn set_mark(&self, journal: &Journal, name: &str) -> Result<(), ApplyError> {
        let p = self.mark(journal, name);
        let id = self.boot_id()?;
        crate::tuf::updater::write_atomic(&p, id.as_bytes()).map_err(|e| ApplyError::Io(p, e))
    }

    /// `Some(true)`: a reboot is marked and has not happened yet; `Some(false)`: it has.
    fn waiting(&self, journal: &Journal, name: &str) -> Result<Option<bool>, ApplyError> {
        match std::fs::read_to_string(self.mark(journal, name)) {
            Ok(id) => Ok(Some(id.trim() == self.boot_id()?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApplyError::Io(self.mark(journal, name), e)),
        }
    }
}

impl CommandInstaller {
    /// Whether the inventory shows the previous set (after a reboot the bootloader fell
    /// back from).
    fn previous_runs(&self, journal: &Journal) -> bool {
        if !journal.awaited_reboot || self.inventory.is_empty() {
            return false;
        }
        let Ok(inv) = read_command_inventory(&self.inventory) else {
            return false;
        };
        journal
            .ops
            .iter()
            .all(|op| inv.get(&op.app).map(|a| &a.version) == op.from_version.as_ref())
    }
}

impl Installer for CommandInstaller {
    fn name(&self) -> String {
        match &self.install {
            Some(a) => format!("the installer {}", a[0]),
            None => "the inventory command".to_string(),
        }
    }

    fn kind(&self) -> &'static str {
        "command"
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
        match self.run(&argv, &journal.campaign, staging_dir, false) {
            Ok(Ran::Done) => Ok(()),
            Ok(Ran::RebootNeeded) => self.set_mark(journal, INSTALL_REBOOT_MARK),
            Err(e) => Err(ApplyError::Hook(format!("the installer failed: {e}"))),
        }
    }

    fn discard(&mut self, journal: &Journal) {
        let _ = std::fs::remove_file(self.mark(journal, INSTALL_REBOOT_MARK));
    }

    fn switch(&mut self, _journal: &Journal, _st: &mut Stepper) -> Result<(), ApplyError> {
        Ok(())
    }

    fn boot_state(&mut self, journal: &Journal) -> Result<Boot, ApplyError> {
        if journal.phase == Phase::RollingBack {
            return Ok(match self.waiting(journal, ROLLBACK_REBOOT_MARK)? {
                Some(true) => Boot::RebootNeeded("reboot into the previous system".into()),
                _ => Boot::Current,
            });
        }
        match self.waiting(journal, INSTALL_REBOOT_MARK)? {
            None => Ok(Boot::Current),
            Some(true) => Ok(Boot::RebootNeeded("reboot into the new system".into())),
            Some(false) => {
                // Rebooted: the inventory says which system came up.
                let inv = read_command_inventory(&self.inventory)
                    .map_err(|e| ApplyError::Hook(e.to_string()))?;
                let wrong: Vec<String> = journal
                    .ops
                    .iter()
                    .filter(|op| inv.get(&op.app).map(|a| &a.version) != op.version.as_ref())
                    .map(|op| {
                        format!(
                            "{} {} (wanted {})",
                            op.app,
                            inv.get(&op.app).map_or("absent", |a| a.version.as_str()),
                            op.version.as_deref().unwrap_or("removed")
                        )
                    })
                    .collect();
                if wrong.is_empty() {
                    Ok(Boot::Current)
                } else {
                    Ok(Boot::FellBack(format!(
                        "after the reboot the inventory shows {}: the new system did not come up and the bootloader fell back",
                        wrong.join(", ")
                    )))
                }
            }
        }
    }

    fn can_restore(&self) -> bool {
        self.rollback.is_some()
    }

    fn restore(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError> {
        if self.waiting(journal, ROLLBACK_REBOOT_MARK)?.is_none() && self.previous_runs(journal) {
            return Ok(()); // the bootloader fell back already: nothing to restore
        }
        let Some(argv) = self.rollback.clone() else {
            return Err(ApplyError::Unsupported(
                "no inventory.rollback_command is configured".into(),
            ));
        };
        if self.waiting(journal, ROLLBACK_REBOOT_MARK)?.is_some() {
            return Ok(()); // ran already; the reboot is what remains
        }
        st.step("run the rollback command".into())?;
        let dir = campaign_dir(&self.paths, &journal.campaign, journal.revision);
        match self.run(&argv, &journal.campaign, &dir, true) {
            Ok(Ran::Done) => Ok(()),
            Ok(Ran::RebootNeeded) => self.set_mark(journal, ROLLBACK_REBOOT_MARK),
            Err(e) => Err(ApplyError::Hook(format!(
                "the rollback command failed: {e}"
            ))),
        }
    }

    fn clean(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError> {
        if journal.phase == Phase::Confirmed && journal.failure.is_none() {
            if let Some(argv) = self.confirm.clone() {
                st.step("run the confirm command".into())?;
                let dir = campaign_dir(&self.paths, &journal.campaign, journal.revision);
                // A failure is logged, never blocks the agent: the OS updater's own
                // fallback (its try counter) decides then.
                if let Err(e) = self.run(&argv, &journal.campaign, &dir, false) {
                    tracing::error!("the confirm command failed: {e}");
                }
            }
        }
        for m in [INSTALL_REBOOT_MARK, ROLLBACK_REBOOT_MARK] {
            let _ = std::fs::remove_file(self.mark(journal, m));
        }
        Ok(())
    }
}

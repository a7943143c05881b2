//! All-or-nothing apply of a staged plan to an inventory directory, through a write-ahead
//! journal (`<state_dir>/apply.journal.json`), and crash recovery from it.
//!
//! The inventory directory holds one subdirectory per application (see
//! [`super::inventory`]); names starting with `.` are invisible to the inventory reader.
//! An apply goes through these durable steps:
//!
//! 1. **prepared**: the journal is written, naming every change;
//! 2. each new application directory is built as a hidden sibling `.petrel-new-<app>`
//!    (the artifact copied from staging and verified against the signed SHA-256 while it is
//!    copied, `VERSION`), every file and the directory fsynced;
//! 3. **committed**: the journal says so (the commit point);
//! 4. per application, `<app>` is renamed aside to `.petrel-old-<app>` and
//!    `.petrel-new-<app>` renamed to `<app>` (removals only rename aside), the directory
//!    fsynced after each rename;
//! 5. **switched**: the journal says so; the `.petrel-old-*` directories are deleted and the
//!    `on_apply` hook runs per application (progress recorded in the journal);
//! 6. the journal is deleted.
//!
//! [`recover`] runs before anything else on every agent start: a journal that is only
//! *prepared* is rolled back (the hidden new directories are deleted: the old set stays),
//! a *committed* or *switched* one is rolled forward (every step is idempotent). So an
//! interruption at any point leaves, after the next start, either the complete old set or
//! the complete new set.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::stage::StagedPlan;
use super::AgentError;
use crate::manifest::{ManifestHash, PostInstall};
use crate::tuf::updater::write_atomic;

/// The journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "apply.journal.json";
/// The schema version of the journal.
pub const JOURNAL_SCHEMA_VERSION: u32 = 1;
/// Prefix of a new application directory being prepared.
pub const NEW_PREFIX: &str = ".petrel-new-";
/// Prefix of an old application directory renamed aside.
pub const OLD_PREFIX: &str = ".petrel-old-";
/// The default time limit of one hook run.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest journal read.
const MAX_JOURNAL_BYTES: u64 = 4 * 1024 * 1024;

/// How far an apply got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The changes are named; new directories may be partly built. Rolled back on recovery.
    Prepared,
    /// Every new directory is complete and durable: the apply will complete.
    Committed,
    /// Every rename is done; cleanup and hooks remain.
    Switched,
}

/// One application change in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalOp {
    /// The application id (its directory name).
    pub app: String,
    /// The version installed (`None`: the application is removed).
    pub version: Option<String>,
    /// The version it replaces or removes, if any.
    pub from_version: Option<String>,
    /// The artifact file name inside the application directory.
    pub artifact_file: Option<String>,
    /// Post-install state.
    pub post_install: PostInstall,
}

/// The write-ahead journal of one apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// [`JOURNAL_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// How far the apply got.
    pub phase: Phase,
    /// The inventory directory changed.
    pub inventory_dir: PathBuf,
    /// The campaign applied.
    pub campaign: String,
    /// Its revision.
    pub revision: u64,
    /// Its manifest hash.
    pub manifest_sha256: ManifestHash,
    /// The group converged to, and its revision.
    pub group: (String, u64),
    /// When the apply started.
    pub started_at: DateTime<Utc>,
    /// The changes, in order.
    pub ops: Vec<JournalOp>,
    /// How many `on_apply` hook runs are done (in `ops` order).
    #[serde(default)]
    pub hooks_done: usize,
    /// Hook failures so far.
    #[serde(default)]
    pub hook_errors: Vec<String>,
    /// The device's rollout wave in the campaign, if it has waves (for the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
}

impl Journal {
    /// Reads the journal; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Journal>, AgentError> {
        let err = |reason: String| AgentError::State {
            path: path.to_path_buf(),
            reason,
        };
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut buf = Vec::new();
        f.take(MAX_JOURNAL_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        let j: Journal = serde_json::from_slice(&buf).map_err(|e| {
            err(format!(
                "damaged ({e}); the inventory directory may hold a half-applied change: inspect its .petrel-new-* and .petrel-old-* directories"
            ))
        })?;
        if j.schema_version != JOURNAL_SCHEMA_VERSION {
            return Err(err(format!(
                "schema_version {} is unknown; this agent reads {JOURNAL_SCHEMA_VERSION}",
                j.schema_version
            )));
        }
        Ok(Some(j))
    }

    fn save(&self, path: &Path) -> Result<(), ApplyError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("journals serialize");
        bytes.push(b'\n');
        write_atomic(path, &bytes).map_err(|e| ApplyError::Io(path.to_path_buf(), e))
    }
}

/// The `on_apply` and `install` hooks (see `docs/device.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Run per application after an apply: `argv… APP VERSION STATE`, with `PETREL_APP`,
    /// `PETREL_VERSION`, `PETREL_STATE` (`keep`, `start`, `stop` or `removed`) and
    /// `PETREL_CAMPAIGN` in the environment.
    pub on_apply: Option<Vec<String>>,
    /// The installer for a command inventory: `argv… PLAN.json`.
    pub install: Option<Vec<String>>,
    /// Time limit of one hook run.
    pub timeout: Duration,
}

/// Why an apply stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    /// A staged artifact is not the signed one (or is missing).
    #[error("{0}")]
    Verify(String),
    /// The installer hook failed.
    #[error("{0}")]
    Hook(String),
    /// The plan needs an installer this inventory does not have.
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

/// Called before each durable step with its number (from 0) and name; an `Err` stops the
/// apply right there and leaves every file as a power cut would. The agent passes a hook
/// that always continues; tests use it to prove crash recovery at every step.
pub type StepHook<'a> = &'a mut dyn FnMut(usize, &str) -> Result<(), ()>;

struct Stepper<'a> {
    n: usize,
    hook: StepHook<'a>,
}

impl Stepper<'_> {
    fn step(&mut self, name: String) -> Result<(), ApplyError> {
        let n = self.n;
        self.n += 1;
        (self.hook)(n, &name).map_err(|()| ApplyError::Interrupted { step: n, name })
    }
}

/// What an apply (or a recovery) did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The campaign.
    pub campaign: String,
    /// Its revision.
    pub revision: u64,
    /// Its manifest hash.
    pub manifest_sha256: ManifestHash,
    /// The group and revision now installed.
    pub group: (String, u64),
    /// The changes made (`add acme.player 2.1.0`, …).
    pub changes: Vec<String>,
    /// `on_apply` hook failures (the new set is installed regardless).
    pub hook_errors: Vec<String>,
    /// The device's rollout wave in the campaign, if it has waves.
    pub wave: Option<u32>,
}

/// What [`recover`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Recovery {
    /// An apply interrupted before its commit point was undone: the old set stays.
    RolledBack {
        /// The campaign.
        campaign: String,
        /// Its revision.
        revision: u64,
    },
    /// A committed apply was completed: the new set is installed.
    RolledForward(Applied),
}

fn app_path(dir: &Path, prefix: &str, app: &str) -> PathBuf {
    dir.join(format!("{prefix}{app}"))
}

fn sync_dir(dir: &Path) -> Result<(), ApplyError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ApplyError::Io(dir.to_path_buf(), e))
}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |e| ApplyError::Io(p.to_path_buf(), e)
}

/// The file name the artifact gets in its application directory: the target's last path
/// segment, unless that would collide with `VERSION`, `SHA256` or a hidden name.
pub fn artifact_file_name(target: &str) -> String {
    let base = target.rsplit('/').next().unwrap_or(target);
    if base.is_empty()
        || base.starts_with('.')
        || base == super::inventory::VERSION_FILE
        || base == super::inventory::SHA256_FILE
    {
        format!("artifact-{}", base.trim_start_matches('.'))
    } else {
        base.to_string()
    }
}

/// Applies `plan` (every artifact staged in `staging_dir`) to the inventory directory
/// `inventory_dir`, all or nothing, through the journal at `journal_path`. Only install
/// type `file` (the default) is supported: any other is refused before anything is
/// written. A failure before
/// the commit point (a staged file that is not the signed one, a full disk) undoes the
/// prepared directories and returns the error: nothing is installed. `step_hook` is called
/// before each durable step (see [`StepHook`]).
pub fn apply_dir(
    plan: &StagedPlan,
    staging_dir: &Path,
    inventory_dir: &Path,
    journal_path: &Path,
    hooks: &Hooks,
    now: DateTime<Utc>,
    step_hook: StepHook,
) -> Result<Applied, ApplyError> {
    let mut st = Stepper {
        n: 0,
        hook: step_hook,
    };
    if let Some((app, t)) = plan.steps.iter().find_map(|s| {
        s.step
            .install_type
            .as_deref()
            .filter(|t| *t != "file")
            .map(|t| (&s.step.app, t))
    }) {
        return Err(ApplyError::Unsupported(format!(
            "{app}: install type {t:?} has no installer in an inventory directory (only \"file\"); nothing installed. Use inventory.command with an inventory.install_command that knows it"
        )));
    }
    if journal_path.exists() {
        return Err(ApplyError::Io(
            journal_path.to_path_buf(),
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "an earlier apply is not finished; recover it first (every agent start does)",
            ),
        ));
    }
    if !inventory_dir.is_dir() {
        return Err(ApplyError::Io(
            inventory_dir.to_path_buf(),
            io::Error::new(
                io::ErrorKind::NotFound,
                "the inventory directory does not exist",
            ),
        ));
    }
    remove_leftovers(inventory_dir);
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
            artifact_file: s.step.target().map(artifact_file_name),
            post_install: s.step.post_install,
        })
        .collect();
    let mut journal = Journal {
        schema_version: JOURNAL_SCHEMA_VERSION,
        phase: Phase::Prepared,
        inventory_dir: inventory_dir.to_path_buf(),
        campaign: plan.campaign.clone(),
        revision: plan.revision,
        manifest_sha256: plan.manifest_sha256.clone(),
        group: (plan.group.clone(), plan.group_revision),
        started_at: now,
        ops,
        hooks_done: 0,
        hook_errors: Vec::new(),
        wave: plan.wave,
    };
    st.step("write the journal (prepared)".into())?;
    journal.save(journal_path)?;

    // Build every new directory beside the live ones.
    let prepared = (|| -> Result<(), ApplyError> {
        for s in &plan.steps {
            let (Some(art), Some(version)) = (&s.artifact, s.step.result_version()) else {
                continue;
            };
            st.step(format!("prepare {}", s.step.app))?;
            let new = app_path(inventory_dir, NEW_PREFIX, &s.step.app);
            if new.exists() {
                fs::remove_dir_all(&new).map_err(io_at(&new))?;
            }
            fs::create_dir(&new).map_err(io_at(&new))?;
            let target = s.step.target().unwrap_or_default();
            let dest = new.join(artifact_file_name(target));
            copy_verified(&staging_dir.join(&art.file), &dest, &art.sha256, art.length)?;
            let vfile = new.join(super::inventory::VERSION_FILE);
            let mut f = File::create(&vfile).map_err(io_at(&vfile))?;
            f.write_all(format!("{version}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_at(&vfile))?;
            sync_dir(&new)?;
        }
        sync_dir(inventory_dir)
    })();
    if let Err(e) = prepared {
        if !matches!(e, ApplyError::Interrupted { .. }) {
            roll_back(&journal, journal_path);
        }
        return Err(e);
    }

    st.step("write the journal (committed)".into())?;
    journal.phase = Phase::Committed;
    journal.save(journal_path)?;
    finish(&mut journal, journal_path, hooks, &mut st)
}

/// Copies `src` to `dest` while hashing; the copy must be exactly `length` bytes with
/// SHA-256 `sha256`, else it is deleted and the apply refused.
fn copy_verified(src: &Path, dest: &Path, sha256: &str, length: u64) -> Result<(), ApplyError> {
    let mut input = File::open(src).map_err(|e| {
        ApplyError::Verify(format!(
            "the staged artifact {} cannot be read: {e}",
            src.display()
        ))
    })?;
    let mut out = File::create(dest).map_err(io_at(dest))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io_at(src))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > length {
            break;
        }
        ctx.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_at(dest))?;
    }
    let got = hex::encode(ctx.finish());
    if total != length || !got.eq_ignore_ascii_case(sha256) {
        drop(out);
        let _ = fs::remove_file(dest);
        return Err(ApplyError::Verify(format!(
            "the staged artifact {} is not the signed one (expected {length} bytes with sha256 {sha256}, found {}{}); nothing installed",
            src.display(),
            if total > length { "more bytes".to_string() } else { format!("{total} bytes") },
            if total > length { String::new() } else { format!(" with sha256 {got}") }
        )));
    }
    out.sync_all().map_err(io_at(dest))
}

/// Removes `.petrel-new-*` and `.petrel-old-*` directories no journal owns.
fn remove_leftovers(dir: &Path) {
    let Ok(es) = fs::read_dir(dir) else { return };
    for e in es.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(NEW_PREFIX) || n.starts_with(OLD_PREFIX) {
            tracing::warn!("apply: removing the leftover {}", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Undoes a journal before its commit point: deletes the prepared directories, then the
/// journal. The live directories were never touched.
fn roll_back(journal: &Journal, journal_path: &Path) {
    for op in &journal.ops {
        let new = app_path(&journal.inventory_dir, NEW_PREFIX, &op.app);
        if new.exists() {
            let _ = fs::remove_dir_all(&new);
        }
    }
    let _ = sync_dir(&journal.inventory_dir);
    let _ = fs::remove_file(journal_path);
    if let Some(p) = journal_path.parent() {
        let _ = sync_dir(p);
    }
}

/// Completes a committed journal: renames (idempotent), cleanup, hooks, journal removal.
fn finish(
    journal: &mut Journal,
    journal_path: &Path,
    hooks: &Hooks,
    st: &mut Stepper,
) -> Result<Applied, ApplyError> {
    let dir = journal.inventory_dir.clone();
    if journal.phase == Phase::Committed {
        for op in &journal.ops {
            let live = dir.join(&op.app);
            let new = app_path(&dir, NEW_PREFIX, &op.app);
            let old = app_path(&dir, OLD_PREFIX, &op.app);
            let installs = op.version.is_some();
            // Rename the live directory aside, unless that is done already (for an install:
            // the new directory is still waiting; for a removal: the live one is there).
            if live.exists() && (new.exists() || !installs) {
                st.step(format!("move {} aside", op.app))?;
                if old.exists() {
                    fs::remove_dir_all(&old).map_err(io_at(&old))?;
                }
                fs::rename(&live, &old).map_err(io_at(&live))?;
                sync_dir(&dir)?;
            }
            if installs && new.exists() {
                st.step(format!("move {} in", op.app))?;
                fs::rename(&new, &live).map_err(io_at(&new))?;
                sync_dir(&dir)?;
            }
        }
        st.step("write the journal (switched)".into())?;
        journal.phase = Phase::Switched;
        journal.save(journal_path)?;
    }
    st.step("remove the old directories".into())?;
    for op in &journal.ops {
        let old = app_path(&dir, OLD_PREFIX, &op.app);
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io_at(&old))?;
        }
    }
    let _ = sync_dir(&dir);
    while journal.hooks_done < journal.ops.len() {
        let op = journal.ops[journal.hooks_done].clone();
        if let Some(argv) = &hooks.on_apply {
            st.step(format!("on_apply hook for {}", op.app))?;
            let (version, state) = match &op.version {
                Some(v) => (v.clone(), op.post_install.to_string()),
                None => (
                    op.from_version.clone().unwrap_or_default(),
                    "removed".into(),
                ),
            };
            let env = [
                ("PETREL_APP", op.app.clone()),
                ("PETREL_VERSION", version.clone()),
                ("PETREL_STATE", state.clone()),
                ("PETREL_CAMPAIGN", journal.campaign.clone()),
            ];
            if let Err(e) = run_hook(argv, &[&op.app, &version, &state], &env, hooks.timeout) {
                tracing::warn!("on_apply hook for {}: {e}", op.app);
                journal.hook_errors.push(format!("{}: {e}", op.app));
            }
        }
        journal.hooks_done += 1;
        if hooks.on_apply.is_some() {
            journal.save(journal_path)?;
        }
    }
    st.step("remove the journal".into())?;
    fs::remove_file(journal_path).map_err(io_at(journal_path))?;
    if let Some(p) = journal_path.parent() {
        let _ = sync_dir(p);
    }
    Ok(Applied {
        campaign: journal.campaign.clone(),
        revision: journal.revision,
        manifest_sha256: journal.manifest_sha256.clone(),
        group: journal.group.clone(),
        changes: journal
            .ops
            .iter()
            .map(|op| match (&op.from_version, &op.version) {
                (None, Some(v)) => format!("add {} {v}", op.app),
                (Some(f), Some(v)) if f == v => format!("reinstall {} {v}", op.app),
                (Some(f), Some(v)) => format!("update {} {f} -> {v}", op.app),
                (f, None) => format!("remove {} {}", op.app, f.as_deref().unwrap_or_default()),
            })
            .collect(),
        hook_errors: journal.hook_errors.clone(),
        wave: journal.wave,
    })
}

/// Recovers from an interrupted apply before the agent does anything else: a journal
/// before its commit point is rolled back (the old set stays), a committed one rolled
/// forward (the new set is completed). `Ok(None)`: there was no journal.
pub fn recover(
    journal_path: &Path,
    hooks: &Hooks,
    step_hook: StepHook,
) -> Result<Option<Recovery>, AgentError> {
    let Some(mut journal) = Journal::load(journal_path)? else {
        return Ok(None);
    };
    match journal.phase {
        Phase::Prepared => {
            tracing::warn!(
                "apply of campaign {} revision {} was interrupted before its commit point: rolling back (the old set stays)",
                journal.campaign,
                journal.revision
            );
            roll_back(&journal, journal_path);
            Ok(Some(Recovery::RolledBack {
                campaign: journal.campaign,
                revision: journal.revision,
            }))
        }
        Phase::Committed | Phase::Switched => {
            tracing::warn!(
                "apply of campaign {} revision {} was interrupted after its commit point: completing it",
                journal.campaign,
                journal.revision
            );
            let mut st = Stepper {
                n: 0,
                hook: step_hook,
            };
            let j2 = journal.clone();
            let applied = finish(&mut journal, journal_path, hooks, &mut st).map_err(|e| {
                AgentError::State {
                    path: journal_path.to_path_buf(),
                    reason: format!(
                        "cannot complete the interrupted apply of campaign {} revision {}: {e}",
                        j2.campaign, j2.revision
                    ),
                }
            })?;
            Ok(Some(Recovery::RolledForward(applied)))
        }
    }
}

/// Runs a hook command: `argv` then `args`, with `env`, no input, at most `timeout`; it
/// must exit 0. Its output goes to the agent's log (stderr is quoted on failure).
pub fn run_hook(
    argv: &[String],
    args: &[&str],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<(), String> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(16 * 1024).read_to_end(&mut buf);
        let _ = io::copy(&mut stderr, &mut io::sink());
        buf
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not finish within {} s; killed",
                    argv[0],
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let err_text = String::from_utf8_lossy(&reader.join().unwrap_or_default())
        .trim()
        .to_string();
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {status}{}",
            argv[0],
            if err_text.is_empty() {
                String::new()
            } else {
                format!(": {err_text}")
            }
        ))
    }
}

/// Applies a staged plan through the configured installer (`inventory.install_command`),
/// for devices whose inventory is a command: `argv… PLAN.json`, with `PETREL_STAGING` (the
/// directory holding the verified artifacts) and `PETREL_CAMPAIGN` in the environment.
/// Atomicity is then the installer's job.
pub fn apply_with_installer(
    argv: &[String],
    plan_path: &Path,
    staging_dir: &Path,
    campaign: &str,
    timeout: Duration,
) -> Result<(), ApplyError> {
    run_hook(
        argv,
        &[&plan_path.to_string_lossy()],
        &[
            ("PETREL_STAGING", staging_dir.to_string_lossy().into_owned()),
            ("PETREL_CAMPAIGN", campaign.to_string()),
        ],
        timeout,
    )
    .map_err(|e| ApplyError::Hook(format!("the installer failed: {e}")))
}

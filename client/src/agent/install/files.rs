//! The installer for an inventory directory: one subdirectory per application, replaced
//! by renames (new directories built beside the live ones, the previous ones kept aside
//! until the new set is confirmed healthy).
//!
//! ```text
//! <inventory>/acme.player/              the live application (VERSION + artifact)
//! <inventory>/.petrel-new-acme.player/  being prepared (or, after a rollback, the refused one)
//! <inventory>/.petrel-old-acme.player/  the previous version, kept until the health check passes
//! ```
//! Names starting with `.` are invisible to the inventory reader. Every step is an fsynced
//! file or rename and is idempotent, so the journal can complete or undo it after any
//! interruption.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::journal::Journal;
use super::{ApplyError, Installer, Stepper};
use crate::agent::inventory::{SHA256_FILE, VERSION_FILE};
use crate::agent::plan::StagedPlan;

/// Prefix of a new application directory being prepared.
pub const NEW_PREFIX: &str = ".petrel-new-";
/// Prefix of a previous application directory kept aside.
pub const OLD_PREFIX: &str = ".petrel-old-";

/// Installs into an inventory directory (install types `file` and `tree`).
#[derive(Clone, Debug)]
pub struct FilesInstaller {
    dir: PathBuf,
}

impl FilesInstaller {
    /// The installer for the inventory directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> FilesInstaller {
        FilesInstaller { dir: dir.into() }
    }
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
    if base.is_empty() || base.starts_with('.') || base == VERSION_FILE || base == SHA256_FILE {
        format!("artifact-{}", base.trim_start_matches('.'))
    } else {
        base.to_string()
    }
}

/// Renames `from` to `to` (replacing nothing) and makes it durable.
fn rename_durably(dir: &Path, from: &Path, to: &Path) -> Result<(), ApplyError> {
    if to.exists() {
        fs::remove_dir_all(to).map_err(io_at(to))?;
    }
    fs::rename(from, to).map_err(io_at(from))?;
    sync_dir(dir)
}

impl Installer for FilesInstaller {
    fn name(&self) -> String {
        format!("inventory directory {}", self.dir.display())
    }

    fn kind(&self) -> &'static str {
        "files"
    }

    fn inventory_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn check(&self, plan: &StagedPlan) -> Result<(), ApplyError> {
        if let Some((app, t)) = plan.steps.iter().find_map(|s| {
            s.step
                .install_type
                .as_deref()
                .filter(|t| *t != "file" && *t != crate::tree::INSTALL_TYPE)
                .map(|t| (&s.step.app, t))
        }) {
            if t == super::slot::INSTALL_TYPE {
                return Err(ApplyError::Unsupported(format!(
                    "{app}: install type \"slot\" is a system image, and this device has no [slots] with slots.app = {app:?} in its configuration (docs/images.md); nothing installed"
                )));
            }
            return Err(ApplyError::Unsupported(format!(
                "{app}: install type {t:?} has no installer in an inventory directory (only \"file\" and \"tree\"); nothing installed. Use inventory.command with an inventory.install_command that knows it"
            )));
        }
        if !self.dir.is_dir() {
            return Err(ApplyError::Io(
                self.dir.clone(),
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "the inventory directory does not exist",
                ),
            ));
        }
        Ok(())
    }

    fn prepare(
        &mut self,
        _journal: &Journal,
        plan: &StagedPlan,
        staging_dir: &Path,
        st: &mut Stepper,
    ) -> Result<(), ApplyError> {
        remove_leftovers(&self.dir);
        for s in &plan.steps {
            let (Some(art), Some(version)) = (&s.artifact, s.step.result_version()) else {
                continue;
            };
            st.step(format!("prepare {}", s.step.app))?;
            let new = app_path(&self.dir, NEW_PREFIX, &s.step.app);
            if new.exists() {
                fs::remove_dir_all(&new).map_err(io_at(&new))?;
            }
            fs::create_dir(&new).map_err(io_at(&new))?;
            if s.step.install_type.as_deref() == Some(crate::tree::INSTALL_TYPE) {
                prepare_tree(&staging_dir.join(&art.file), art, &new, &s.step.app)?;
            } else {
                let target = s.step.target().unwrap_or_default();
                let dest = new.join(artifact_file_name(target));
                copy_verified(&staging_dir.join(&art.file), &dest, &art.sha256, art.length)?;
            }
            let vfile = new.join(VERSION_FILE);
            let mut f = File::create(&vfile).map_err(io_at(&vfile))?;
            f.write_all(format!("{version}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_at(&vfile))?;
            sync_dir(&new)?;
        }
        sync_dir(&self.dir)
    }

    fn discard(&mut self, journal: &Journal) {
        for op in &journal.ops {
            let new = app_path(&self.dir, NEW_PREFIX, &op.app);
            if new.exists() {
                let _ = fs::remove_dir_all(&new);
            }
        }
        let _ = sync_dir(&self.dir);
    }

    fn switch(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError> {
        let dir = &self.dir;
        for op in &journal.ops {
            let live = dir.join(&op.app);
            let new = app_path(dir, NEW_PREFIX, &op.app);
            let old = app_path(dir, OLD_PREFIX, &op.app);
            let installs = op.version.is_some();
            // Rename the live directory aside, unless that is done already (for an install:
            // the new directory is still waiting; for a removal: the live one is there).
            if live.exists() && (new.exists() || !installs) {
                st.step(format!("move {} aside", op.app))?;
                rename_durably(dir, &live, &old)?;
            }
            if installs && new.exists() {
                st.step(format!("move {} in", op.app))?;
                fs::rename(&new, &live).map_err(io_at(&new))?;
                sync_dir(dir)?;
            }
        }
        Ok(())
    }

    fn can_restore(&self) -> bool {
        true
    }

    fn restore(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError> {
        let dir = &self.dir;
        for op in journal.ops.iter().rev() {
            let live = dir.join(&op.app);
            let new = app_path(dir, NEW_PREFIX, &op.app);
            let old = app_path(dir, OLD_PREFIX, &op.app);
            let had_previous = op.from_version.is_some();
            // The refused new version (or an added application) leaves the live name...
            if live.exists() && (old.exists() || !had_previous) && op.version.is_some() {
                st.step(format!("move {} (refused) aside", op.app))?;
                rename_durably(dir, &live, &new)?;
            }
            // ...and the previous version takes it back.
            if old.exists() && !live.exists() {
                st.step(format!("move {} (previous) back", op.app))?;
                fs::rename(&old, &live).map_err(io_at(&old))?;
                sync_dir(dir)?;
            }
        }
        Ok(())
    }

    fn clean(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError> {
        st.step("remove the set aside".into())?;
        for op in &journal.ops {
            for prefix in [OLD_PREFIX, NEW_PREFIX] {
                let p = app_path(&self.dir, prefix, &op.app);
                if p.exists() {
                    fs::remove_dir_all(&p).map_err(io_at(&p))?;
                }
            }
        }
        let _ = sync_dir(&self.dir);
        Ok(())
    }
}

/// Unpacks a staged tree container into `new/tree`, every file checked against the signed
/// manifest, then records the manifest (`.petrel-tree.json`, the base of later tree deltas)
/// and the artifact's signed hash (`SHA256`, what the inventory reports).
fn prepare_tree(
    src: &Path,
    art: &crate::agent::plan::StagedArtifact,
    new: &Path,
    app: &str,
) -> Result<(), ApplyError> {
    let want = art.tree.as_deref().ok_or_else(|| {
        ApplyError::Verify(format!(
            "{app}: install type \"tree\" but its target has no signed tree metadata (publish the directory with `petrel-repo add --tree`); nothing installed"
        ))
    })?;
    let root = new.join(crate::tree::TREE_DIR);
    let manifest = crate::tree::unpack(src, want, &root).map_err(|e| match e {
        crate::tree::TreeError::Io(p, err) if p != src => ApplyError::Io(p, err),
        other => ApplyError::Verify(format!(
            "the staged tree {} is not the signed one: {other}; nothing installed",
            src.display()
        )),
    })?;
    for (name, bytes) in [
        (crate::tree::MANIFEST_FILE, manifest.as_slice()),
        (SHA256_FILE, format!("{}\n", art.sha256).as_bytes()),
    ] {
        let p = new.join(name);
        let mut f = File::create(&p).map_err(io_at(&p))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_at(&p))?;
    }
    Ok(())
}

/// Copies `src` to `dest` while hashing; the copy must be exactly `length` bytes with
/// SHA-256 `sha256`, else it is deleted and the install refused.
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
            tracing::warn!("install: removing the leftover {}", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

//! The installer for system images in two slots (install type `slot`): the image is
//! streamed into the inactive slot, read back and checked against its hash, and only then
//! set to boot next with a boot count; after the reboot the health check decides between
//! marking it good and marking it bad (and rebooting into the previous slot), and a slot
//! that never came up is found by the bootloader's fallback.
//!
//! Its memory is `<state_dir>/slots.json` ([`SlotsState`]): what each slot holds (so the
//! inventory lists the running image and deltas can start from its exact bytes) and the
//! install in progress (target slot, and the boot it was switched in).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::bootloader::{self, slot_from_cmdline, Bootloader, Slot};
use super::journal::{Journal, Phase};
use super::{ApplyError, Boot, Installer, Stepper};
use crate::agent::config::{RebootConfig, SlotsConfig};
use crate::agent::plan::StagedPlan;
use crate::agent::state::StatePaths;
use crate::decide::InstalledApp;
use crate::tuf::updater::write_atomic;

/// The install type of system images.
pub const INSTALL_TYPE: &str = "slot";
/// The schema version of `slots.json`.
pub const SLOTS_SCHEMA_VERSION: u32 = 1;
/// The zstd frame magic (little-endian `0xFD2FB528`): a compressed image starts with it.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Bytes between two fault points while writing or reading back a slot.
const POINT_EVERY: u64 = 512 * 1024;
/// The write buffer.
const BUF: usize = 1024 * 1024;

/// What one slot holds, as written and verified by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRecord {
    /// The application id.
    pub app: String,
    /// The version.
    pub version: String,
    /// SHA-256 of the signed artifact (compressed, if it was).
    pub artifact_sha256: String,
    /// SHA-256 of the image bytes written (the first `image_length` bytes of the slot).
    pub image_sha256: String,
    /// Length of the image written.
    pub image_length: u64,
    /// When it was written.
    pub written_at: DateTime<Utc>,
}

/// The install in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotTarget {
    /// The slot written.
    pub slot: Slot,
    /// The slot running when the install started.
    pub from: Slot,
    /// The boot in which the new slot was set to boot next (`None`: not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_in_boot: Option<String>,
}

/// `<state_dir>/slots.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsState {
    /// [`SLOTS_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// What each slot holds (a slot being written has no record).
    #[serde(default)]
    pub slots: BTreeMap<Slot, SlotRecord>,
    /// The install in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<SlotTarget>,
    /// The boot in which the running slot was last marked good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marked_good_in_boot: Option<String>,
    /// An image downloaded straight into the inactive slot, waiting to be installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<StagedInSlot>,
}

/// An image downloaded (verified) straight into the inactive slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedInSlot {
    /// The slot.
    pub slot: Slot,
    /// The artifact's target path.
    pub target: String,
    /// Its signed SHA-256.
    pub artifact_sha256: String,
    /// SHA-256 of the image bytes written.
    pub image_sha256: String,
    /// Length of the image written.
    pub image_length: u64,
}

impl SlotsState {
    /// Reads `slots.json` (empty when there is none).
    pub fn load(path: &Path) -> Result<SlotsState, String> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(f) => f
                .take(1024 * 1024)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(SlotsState {
                    schema_version: SLOTS_SCHEMA_VERSION,
                    ..SlotsState::default()
                })
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let s: SlotsState = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is damaged ({e}); move it away and the agent starts over (the slots' versions are then unknown until the next image install)",
                path.display()
            )
        })?;
        if s.schema_version != SLOTS_SCHEMA_VERSION {
            return Err(format!(
                "{}: schema_version {} is unknown; this agent reads {SLOTS_SCHEMA_VERSION}",
                path.display(),
                s.schema_version
            ));
        }
        Ok(s)
    }

    /// Writes `slots.json` atomically.
    pub fn save(&self, path: &Path) -> Result<(), ApplyError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("slot states serialize");
        bytes.push(b'\n');
        write_atomic(path, &bytes).map_err(|e| ApplyError::Io(path.to_path_buf(), e))
    }
}

/// The slots of a device and their bootloader.
pub struct Slots {
    config: SlotsConfig,
    reboot: RebootConfig,
    state_file: PathBuf,
    bootloader: Box<dyn Bootloader>,
}

impl Slots {
    /// The slots configured in `config`, their state kept under `paths`.
    pub fn new(config: &SlotsConfig, reboot: &RebootConfig, paths: &StatePaths) -> Slots {
        Slots {
            config: config.clone(),
            reboot: reboot.clone(),
            state_file: paths.slots_file(),
            bootloader: bootloader::open(&config.bootloader),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SlotsConfig {
        &self.config
    }

    /// The bootloader adapter.
    pub fn bootloader(&self) -> &dyn Bootloader {
        self.bootloader.as_ref()
    }

    /// The device (or file) of `slot`.
    pub fn path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.config.a,
            Slot::B => &self.config.b,
        }
    }

    /// Reads `slots.json`.
    pub fn state(&self) -> Result<SlotsState, String> {
        SlotsState::load(&self.state_file)
    }

    /// The slot the running system booted from.
    pub fn booted(&self) -> Result<Slot, String> {
        if let Some(s) = self.bootloader.booted()? {
            return Ok(s);
        }
        let cmdline = fs::read_to_string(&self.config.cmdline)
            .map_err(|e| format!("{}: {e}", self.config.cmdline.display()))?;
        slot_from_cmdline(&cmdline).ok_or_else(|| {
            format!(
                "{} names no slot (petrel.slot=A or rauc.slot=A): add it to the kernel command line in the boot script (docs/images.md)",
                self.config.cmdline.display()
            )
        })
    }

    /// The current boot: the bootloader's boot counter, else `reboot.boot_id_file`.
    pub fn boot_id(&self) -> Result<String, String> {
        if let Some(id) = self.bootloader.boot_id() {
            return Ok(id);
        }
        fs::read_to_string(&self.reboot.boot_id_file)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{}: {e}", self.reboot.boot_id_file.display()))
    }

    /// What the running slot holds, for the inventory: its record, else (a factory image)
    /// the version in `slots.version_file`, else nothing.
    pub fn installed(&self) -> Result<Option<InstalledApp>, String> {
        let booted = self.booted()?;
        let state = self.state()?;
        if let Some(r) = state
            .slots
            .get(&booted)
            .filter(|r| r.app == self.config.app)
        {
            return Ok(Some(InstalledApp {
                version: r.version.clone(),
                sha256: Some(r.artifact_sha256.clone()),
            }));
        }
        let Some(f) = &self.config.version_file else {
            return Ok(None);
        };
        match fs::read_to_string(f) {
            Ok(t) => {
                let v = t.lines().next().unwrap_or("").trim().to_string();
                crate::manifest::check_version(&v)
                    .map_err(|e| format!("{}: {v:?} is not a version: {e}", f.display()))?;
                Ok(Some(InstalledApp {
                    version: v,
                    sha256: None,
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", f.display())),
        }
    }

    /// The running slot's image, for deltas: its path, length and SHA-256 (only when the
    /// artifact was written as is, so the image hash is the signed one).
    pub fn delta_base(&self) -> Option<(PathBuf, u64, String)> {
        let booted = self.booted().ok()?;
        let state = self.state().ok()?;
        let r = state.slots.get(&booted)?;
        (r.app == self.config.app && r.artifact_sha256 == r.image_sha256).then(|| {
            (
                self.path(booted).to_path_buf(),
                r.image_length,
                r.image_sha256.clone(),
            )
        })
    }

    /// Once per boot, when no install is in progress: marks the running slot good, so a
    /// bootloader that takes a try at every boot (U-Boot with RAUC's variables) keeps
    /// booting it.
    pub fn confirm_running(&mut self) -> Result<(), String> {
        let mut state = self.state()?;
        if state.target.is_some() {
            return Ok(());
        }
        let boot = self.boot_id()?;
        if state.marked_good_in_boot.as_deref() == Some(boot.as_str()) {
            return Ok(());
        }
        let booted = self.booted()?;
        self.bootloader.mark_good(booted, self.config.attempts)?;
        state.marked_good_in_boot = Some(boot);
        state.save(&self.state_file).map_err(|e| e.to_string())
    }

    /// Whether the inactive slot holds the artifact `target` with SHA-256 `sha256`,
    /// downloaded into it by [`Slots::stage_direct`].
    pub fn holds_staged(&self, target: &str, sha256: &str) -> bool {
        let (Ok(state), Ok(booted)) = (self.state(), self.booted()) else {
            return false;
        };
        state.staged.as_ref().is_some_and(|s| {
            s.slot == booted.other()
                && s.target == target
                && s.artifact_sha256.eq_ignore_ascii_case(sha256)
        })
    }

    /// Downloads the artifact `target` (signed `sha256`, `length`) straight into the
    /// inactive slot through `fetch` (which streams the verified bytes into the writer it
    /// is given and fails on any mismatch); a zstd-compressed image is decompressed on the
    /// way. The slot's record is dropped first, and the image is recorded as staged only
    /// after the whole download verified.
    pub fn stage_direct(
        &self,
        target: &str,
        sha256: &str,
        length: u64,
        fetch: impl FnOnce(&mut dyn Write) -> Result<(), String>,
    ) -> Result<(), String> {
        let slot = self.booted()?.other();
        let dest = self.path(slot).to_path_buf();
        let capacity = capacity(&dest).map_err(|e| e.to_string())?;
        let mut state = self.state()?;
        if let Some(t) = &state.target {
            return Err(format!(
                "an image install into slot {} is in progress (see petrel slots status); the download waits until it ends",
                t.slot
            ));
        }
        state.slots.remove(&slot);
        state.staged = None;
        self.save(&state).map_err(|e| e.to_string())?;
        // Never boot a slot being written, whatever happens before the switch.
        self.bootloader
            .mark_bad(slot)
            .map_err(|e| format!("before writing slot {slot}: {e}"))?;
        let file = OpenOptions::new()
            .write(true)
            .open(&dest)
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        let mut sink = SlotSink::Undecided {
            raw: RawSink {
                file,
                ctx: ring::digest::Context::new(&ring::digest::SHA256),
                n: 0,
                cap: capacity,
                slot,
                next_point: POINT_EVERY,
            },
            head: Vec::new(),
        };
        fetch(&mut sink)?;
        let raw = sink
            .finish()
            .map_err(|e| format!("writing slot {slot} ({}): {e}", dest.display()))?;
        raw.file
            .sync_all()
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        state.staged = Some(StagedInSlot {
            slot,
            target: target.to_string(),
            artifact_sha256: sha256.to_ascii_lowercase(),
            image_sha256: hex::encode(raw.ctx.finish()),
            image_length: raw.n,
        });
        let _ = length;
        self.save(&state).map_err(|e| e.to_string())
    }

    fn save(&self, state: &SlotsState) -> Result<(), ApplyError> {
        state.save(&self.state_file)
    }

    fn load(&self) -> Result<SlotsState, ApplyError> {
        self.state().map_err(ApplyError::Verify)
    }

    /// The install in progress; `None` once [`SlotInstaller::clean`] ended it (the journal
    /// is deleted right after).
    fn target(&self) -> Result<Option<SlotTarget>, ApplyError> {
        Ok(self.load()?.target)
    }
}

/// The installer of system images.
pub struct SlotInstaller {
    slots: Slots,
}

impl SlotInstaller {
    /// The installer for `slots`.
    pub fn new(slots: Slots) -> SlotInstaller {
        SlotInstaller { slots }
    }
}

fn boot_err(e: String) -> ApplyError {
    ApplyError::Hook(e)
}

impl SlotInstaller {
    /// [`Installer::prepare`] for an image downloaded straight into the inactive slot:
    /// read back and checked against what the download wrote, then recorded.
    fn prepare_in_slot(
        &mut self,
        s: &crate::agent::plan::StagedStep,
        art: &crate::agent::plan::StagedArtifact,
        version: &str,
        from: Slot,
        st: &mut Stepper,
    ) -> Result<(), ApplyError> {
        let slot = from.other();
        let dest = self.slots.path(slot).to_path_buf();
        let mut state = self.slots.load()?;
        let staged = state
            .staged
            .clone()
            .filter(|x| x.slot == slot && x.artifact_sha256.eq_ignore_ascii_case(&art.sha256))
            .ok_or_else(|| {
                ApplyError::Verify(format!(
                    "slot {slot} no longer holds the image downloaded into it ({}); it is downloaded again",
                    art.file
                ))
            })?;
        st.step(format!("read back slot {slot}"))?;
        let got = hash_prefix(&dest, staged.image_length, Some(slot))?;
        if got != staged.image_sha256 {
            return Err(ApplyError::Verify(format!(
                "slot {slot} ({}) does not read back the image downloaded into it (sha256 {got}, written {}); nothing switched",
                dest.display(),
                staged.image_sha256
            )));
        }
        st.step(format!("record what slot {slot} holds"))?;
        state.staged = None;
        state.target = Some(SlotTarget {
            slot,
            from,
            switched_in_boot: None,
        });
        state.slots.insert(
            slot,
            SlotRecord {
                app: s.step.app.clone(),
                version: version.to_string(),
                artifact_sha256: art.sha256.to_ascii_lowercase(),
                image_sha256: staged.image_sha256,
                image_length: staged.image_length,
                written_at: crate::agent::now_seconds(),
            },
        );
        self.slots.save(&state)
    }
}

impl Installer for SlotInstaller {
    fn name(&self) -> String {
        format!(
            "the slots {} and {}",
            self.slots.config.a.display(),
            self.slots.config.b.display()
        )
    }

    fn kind(&self) -> &'static str {
        INSTALL_TYPE
    }

    fn check(&self, plan: &StagedPlan) -> Result<(), ApplyError> {
        let app = &self.slots.config.app;
        for s in &plan.steps {
            let is_image =
                s.step.install_type.as_deref() == Some(INSTALL_TYPE) || s.step.app == *app;
            if is_image && s.step.app != *app {
                return Err(ApplyError::Unsupported(format!(
                    "{}: install type \"slot\", but this device's slots hold {app} (slots.app); nothing installed",
                    s.step.app
                )));
            }
            if !is_image {
                return Err(ApplyError::Unsupported(format!(
                    "{}: this revision changes the system image {app} and also {} ({}); an image install changes nothing else, so publish the other changes inside the image or in a later group revision; nothing installed",
                    plan.group, s.step.app, s.step
                )));
            }
            if s.step.result_version().is_none() {
                return Err(ApplyError::Unsupported(format!(
                    "{app}: the system image cannot be removed (the group does not list it); nothing installed"
                )));
            }
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
        let Some(s) = plan.steps.first() else {
            return Ok(());
        };
        let (Some(art), Some(version)) = (&s.artifact, s.step.result_version()) else {
            return Err(ApplyError::Verify(format!(
                "{}: no staged image",
                s.step.app
            )));
        };
        let from = self.slots.booted().map_err(boot_err)?;
        let slot = from.other();
        let dest = self.slots.path(slot).to_path_buf();
        if art.in_slot {
            return self.prepare_in_slot(s, art, version, from, st);
        }
        let src = staging_dir.join(&art.file);
        // Refused before anything is written: an image that does not fit.
        let capacity = capacity(&dest)?;
        let image_len = image_length(&src, art.length)?;
        if let Some(n) = image_len.filter(|n| *n > capacity) {
            return Err(ApplyError::Unsupported(format!(
                "{}: the image {} is {n} bytes, slot {slot} ({}) holds {capacity}; nothing written",
                s.step.app,
                art.file,
                dest.display()
            )));
        }
        st.step(format!("forget what slot {slot} holds"))?;
        let mut state = self.slots.load()?;
        state.slots.remove(&slot);
        state.staged = None;
        state.target = Some(SlotTarget {
            slot,
            from,
            switched_in_boot: None,
        });
        self.slots.save(&state)?;
        st.step(format!("keep the bootloader off slot {slot}"))?;
        self.slots.bootloader.mark_bad(slot).map_err(boot_err)?;
        st.step(format!("write the image into slot {slot}"))?;
        let (image_sha256, image_length) =
            write_image(&src, &dest, slot, &art.sha256, art.length, capacity)?;
        st.step(format!("read back slot {slot}"))?;
        let got = hash_prefix(&dest, image_length, Some(slot))?;
        if got != image_sha256 {
            return Err(ApplyError::Verify(format!(
                "slot {slot} ({}) does not read back what was written (sha256 {got}, written {image_sha256}): the storage may be failing; nothing switched",
                dest.display()
            )));
        }
        st.step(format!("record what slot {slot} holds"))?;
        state.slots.insert(
            slot,
            SlotRecord {
                app: s.step.app.clone(),
                version: version.to_string(),
                artifact_sha256: art.sha256.to_ascii_lowercase(),
                image_sha256,
                image_length,
                written_at: crate::agent::now_seconds(),
            },
        );
        self.slots.save(&state)
    }

    fn discard(&mut self, _journal: &Journal) {
        if let Ok(mut state) = self.slots.state() {
            if let Some(t) = state.target.take() {
                state.slots.remove(&t.slot);
                let _ = self.slots.save(&state);
            }
        }
    }

    fn switch(&mut self, _journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError> {
        let mut state = self.slots.load()?;
        let Some(t) = state.target.clone() else {
            return Err(ApplyError::Verify(format!(
                "{} names no slot install in progress, but the journal is committed; check `petrel slots status`",
                self.slots.state_file.display()
            )));
        };
        let boot = self.slots.boot_id().map_err(boot_err)?;
        if t.switched_in_boot.as_ref().is_some_and(|b| *b != boot) {
            // Switched before a reboot the journal did not record: what booted decides
            // (a second round of tries for a slot that failed would hide the fallback).
            return Ok(());
        }
        st.step(format!("boot slot {} next", t.slot))?;
        state.target = Some(SlotTarget {
            switched_in_boot: Some(boot),
            ..t.clone()
        });
        self.slots.save(&state)?;
        self.slots
            .bootloader
            .set_next(t.slot, self.slots.config.attempts)
            .map_err(boot_err)
    }

    fn boot_state(&mut self, journal: &Journal) -> Result<Boot, ApplyError> {
        let Some(t) = self.slots.target()? else {
            return Ok(Boot::Current); // ended already
        };
        let booted = self.slots.booted().map_err(boot_err)?;
        let boot = self.slots.boot_id().map_err(boot_err)?;
        let same_boot = t.switched_in_boot.as_deref() == Some(boot.as_str());
        Ok(match journal.phase {
            Phase::RollingBack if booted == t.from => Boot::Current,
            Phase::RollingBack => {
                Boot::RebootNeeded(format!("reboot into slot {} (the previous system)", t.from))
            }
            _ if booted == t.slot => Boot::Current,
            _ if same_boot => Boot::RebootNeeded(format!("reboot into slot {}", t.slot)),
            _ => Boot::FellBack(format!(
                "boot of slot {} failed, fell back to {}",
                t.slot, t.from
            )),
        })
    }

    fn can_restore(&self) -> bool {
        true
    }

    fn restore(&mut self, _journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError> {
        let Some(t) = self.slots.target()? else {
            return Ok(()); // ended already
        };
        st.step(format!("mark slot {} bad", t.slot))?;
        self.slots.bootloader.mark_bad(t.slot).map_err(boot_err)
    }

    fn clean(&mut self, journal: &Journal, st: &mut Stepper) -> Result<(), ApplyError> {
        let mut state = self.slots.load()?;
        let Some(t) = state.target.clone() else {
            return Ok(());
        };
        if journal.phase == Phase::Confirmed && journal.failure.is_none() {
            st.step(format!("mark slot {} good", t.slot))?;
            match self
                .slots
                .bootloader
                .mark_good(t.slot, self.slots.config.attempts)
            {
                Ok(()) => state.marked_good_in_boot = self.slots.boot_id().ok(),
                // Tried again at every start (the running slot is marked good once per
                // boot); until then the bootloader may fall back.
                Err(e) => tracing::error!("cannot mark slot {} good: {e}", t.slot),
            }
        }
        st.step("end the slot install".into())?;
        state.target = None;
        self.slots.save(&state)
    }
}

/// Writes into a slot, hashing, at most `cap` bytes.
struct RawSink {
    file: File,
    ctx: ring::digest::Context,
    n: u64,
    cap: u64,
    slot: Slot,
    next_point: u64,
}

impl Write for RawSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.n + buf.len() as u64 > self.cap {
            return Err(io::Error::other(format!(
                "the image is longer than slot {} ({} bytes)",
                self.slot, self.cap
            )));
        }
        self.file.write_all(buf)?;
        self.ctx.update(buf);
        self.n += buf.len() as u64;
        while self.n >= self.next_point {
            crate::agent::faults::point(
                "download",
                &format!("into slot {} at {} KiB", self.slot, self.next_point >> 10),
            );
            self.next_point += POINT_EVERY;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The download's sink: raw, or through a zstd decoder, decided by the first 4 bytes.
enum SlotSink {
    Undecided { raw: RawSink, head: Vec<u8> },
    Raw(RawSink),
    Zstd(Box<zstd::stream::write::Decoder<'static, RawSink>>),
    Done,
}

impl SlotSink {
    fn decide(&mut self) -> io::Result<()> {
        if let SlotSink::Undecided { .. } = self {
            let SlotSink::Undecided { raw, head } = std::mem::replace(self, SlotSink::Done) else {
                unreachable!()
            };
            *self = if head.len() >= 4 && head[..4] == ZSTD_MAGIC {
                let mut d = zstd::stream::write::Decoder::new(raw)?;
                d.write_all(&head)?;
                SlotSink::Zstd(Box::new(d))
            } else {
                let mut r = raw;
                r.write_all(&head)?;
                SlotSink::Raw(r)
            };
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<RawSink> {
        self.decide()?;
        match self {
            SlotSink::Raw(mut r) => {
                r.flush()?;
                Ok(r)
            }
            SlotSink::Zstd(mut d) => {
                d.flush()?;
                Ok(d.into_inner())
            }
            _ => Err(io::Error::other("nothing was written")),
        }
    }
}

impl Write for SlotSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let SlotSink::Undecided { head, .. } = self {
            let take = (4 - head.len()).min(buf.len());
            head.extend_from_slice(&buf[..take]);
            if head.len() < 4 {
                return Ok(take);
            }
            self.decide()?;
            return Ok(take);
        }
        match self {
            SlotSink::Raw(r) => r.write(buf),
            SlotSink::Zstd(d) => d.write(buf),
            _ => Err(io::Error::other("the sink is finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SlotSink::Raw(r) => r.flush(),
            SlotSink::Zstd(d) => d.flush(),
            _ => Ok(()),
        }
    }
}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |e| ApplyError::Io(p.to_path_buf(), e)
}

/// The bytes a slot holds: a block device's size, a file's length.
pub fn capacity(path: &Path) -> Result<u64, ApplyError> {
    let mut f = File::open(path).map_err(io_at(path))?;
    let meta = f.metadata().map_err(io_at(path))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    f.seek(SeekFrom::End(0)).map_err(io_at(path))
}

/// The length of the image in the staged file: its own length, or a zstd frame's content
/// size (`None`: the frame does not say; checked while writing).
fn image_length(src: &Path, length: u64) -> Result<Option<u64>, ApplyError> {
    let mut head = [0u8; 18];
    let mut f = File::open(src).map_err(|e| {
        ApplyError::Verify(format!(
            "the staged image {} cannot be read: {e}",
            src.display()
        ))
    })?;
    let n = read_full(&mut f, &mut head).map_err(io_at(src))?;
    if n >= 4 && head[..4] == ZSTD_MAGIC {
        if let Some(size) = zstd::zstd_safe::get_frame_content_size(&head[..n])
            .ok()
            .flatten()
        {
            return Ok(Some(size));
        }
        // The frame does not say: decompress once without writing, to know.
        let f = File::open(src).map_err(io_at(src))?;
        let mut dec = zstd::stream::read::Decoder::new(f.take(length))
            .map_err(|e| ApplyError::Verify(format!("the staged image {}: {e}", src.display())))?;
        return match io::copy(&mut dec, &mut io::sink()) {
            Ok(n) => Ok(Some(n)),
            Err(e) => Err(ApplyError::Verify(format!(
                "the staged image {} is not a valid zstd stream: {e}; nothing written",
                src.display()
            ))),
        };
    }
    Ok(Some(length))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    ctx: ring::digest::Context,
    n: u64,
    cap: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        if self.n > self.cap {
            return Err(io::Error::other(format!(
                "more than the signed {} bytes",
                self.cap
            )));
        }
        self.ctx.update(&buf[..k]);
        Ok(k)
    }
}

/// Streams the staged artifact `src` (checked against its signed `sha256` and `length`;
/// zstd-compressed images are decompressed on the way) into the slot at `dest`, at most
/// `capacity` bytes; returns the SHA-256 and length of the image written. The slot is
/// synced before returning.
fn write_image(
    src: &Path,
    dest: &Path,
    slot: Slot,
    sha256: &str,
    length: u64,
    capacity: u64,
) -> Result<(String, u64), ApplyError> {
    let input = File::open(src).map_err(|e| {
        ApplyError::Verify(format!(
            "the staged image {} cannot be read: {e}",
            src.display()
        ))
    })?;
    let mut hashed = Hashing {
        inner: io::BufReader::with_capacity(BUF, input),
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        n: 0,
        cap: length,
    };
    let mut head = [0u8; 4];
    let compressed = {
        let n = read_full(&mut hashed, &mut head).map_err(io_at(src))?;
        n == 4 && head == ZSTD_MAGIC
    };
    let chained = io::Cursor::new(head)
        .take(4.min(hashed.n))
        .chain(&mut hashed);
    let mut reader: Box<dyn Read + '_> = if compressed {
        Box::new(
            zstd::stream::read::Decoder::new(chained)
                .map_err(|e| ApplyError::Verify(format!("{}: {e}", src.display())))?,
        )
    } else {
        Box::new(chained)
    };
    let mut out = OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(io_at(dest))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    let mut next_point = POINT_EVERY;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(ApplyError::Verify(format!(
                    "the staged image {} cannot be read{}: {e}; nothing switched",
                    src.display(),
                    if compressed { " (zstd)" } else { "" }
                )))
            }
        };
        if total + n as u64 > capacity {
            return Err(ApplyError::Unsupported(format!(
                "the image {} is longer than slot {slot} ({}, {capacity} bytes); nothing switched",
                src.display(),
                dest.display()
            )));
        }
        out.write_all(&buf[..n]).map_err(io_at(dest))?;
        ctx.update(&buf[..n]);
        total += n as u64;
        while total >= next_point {
            crate::agent::faults::point(
                "apply",
                &format!("write slot {slot} at {} KiB", next_point >> 10),
            );
            next_point += POINT_EVERY;
        }
    }
    drop(reader);
    let got = hex::encode(hashed.ctx.finish());
    if hashed.n != length || !got.eq_ignore_ascii_case(sha256) {
        return Err(ApplyError::Verify(format!(
            "the staged image {} is not the signed one (expected {length} bytes with sha256 {sha256}, found {} bytes with sha256 {got}); slot {slot} is not switched to",
            src.display(),
            hashed.n
        )));
    }
    out.sync_all().map_err(io_at(dest))?;
    Ok((hex::encode(ctx.finish()), total))
}

/// SHA-256 of the first `len` bytes of `path`.
pub fn hash_prefix(path: &Path, len: u64, slot: Option<Slot>) -> Result<String, ApplyError> {
    let f = File::open(path).map_err(io_at(path))?;
    let mut r = io::BufReader::with_capacity(BUF, f).take(len);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    let mut next_point = POINT_EVERY;
    loop {
        let n = r.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        total += n as u64;
        if let Some(s) = slot {
            while total >= next_point {
                crate::agent::faults::point(
                    "apply",
                    &format!("read back slot {s} at {} KiB", next_point >> 10),
                );
                next_point += POINT_EVERY;
            }
        }
    }
    if total != len {
        return Err(ApplyError::Verify(format!(
            "{} holds {total} bytes, fewer than the {len} expected",
            path.display()
        )));
    }
    Ok(hex::encode(ctx.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::{BootloaderConfig, SlotStaging};

    fn slots_in(dir: &Path) -> Slots {
        fs::write(dir.join("a.img"), vec![0u8; 1 << 20]).unwrap();
        fs::write(dir.join("b.img"), vec![7u8; 1 << 20]).unwrap();
        let boot = dir.join("boot.json");
        super::bootloader::FileBootloader::new(&boot)
            .save(&super::bootloader::FileBootState::new(3))
            .unwrap();
        let config = SlotsConfig {
            app: "acme.os".into(),
            a: dir.join("a.img"),
            b: dir.join("b.img"),
            bootloader: BootloaderConfig::File { path: boot },
            attempts: 3,
            cmdline: dir.join("cmdline"),
            version_file: None,
            staging: SlotStaging::Slot,
        };
        Slots::new(&config, &RebootConfig::default(), &StatePaths::new(dir))
    }

    #[test]
    fn streaming_into_a_slot_marks_it_unbootable_first_and_waits_for_an_install_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let slots = slots_in(dir.path());
        let image = vec![42u8; 300_000];
        slots
            .stage_direct(
                "apps/os/1.1/os.img",
                &sha(&image),
                image.len() as u64,
                |w| {
                    // Mid-download: B must not be bootable.
                    assert_eq!(slots.bootloader().tries_left(Slot::B).unwrap(), Some(0));
                    w.write_all(&image).map_err(|e| e.to_string())
                },
            )
            .unwrap();
        assert!(slots.holds_staged("apps/os/1.1/os.img", &sha(&image)));
        assert_eq!(
            hash_prefix(&dir.path().join("b.img"), 300_000, None).unwrap(),
            sha(&image)
        );
        // While an install is in progress, the inactive slot is not written.
        let mut st = slots.state().unwrap();
        st.target = Some(SlotTarget {
            slot: Slot::B,
            from: Slot::A,
            switched_in_boot: Some("boot 1".into()),
        });
        st.save(&dir.path().join("slots.json")).unwrap();
        let before = fs::read(dir.path().join("b.img")).unwrap();
        let e = slots
            .stage_direct("apps/os/1.2/os.img", &sha(b"x"), 1, |w| {
                w.write_all(b"x").map_err(|e| e.to_string())
            })
            .unwrap_err();
        assert!(e.contains("in progress"), "{e}");
        assert_eq!(fs::read(dir.path().join("b.img")).unwrap(), before);
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
    }

    #[test]
    fn an_image_is_written_as_is_or_decompressed_and_checked_against_its_signed_hash() {
        let dir = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let slot = dir.path().join("slot");
        fs::write(&slot, vec![0xAAu8; 4_000_000]).unwrap();
        let raw = dir.path().join("raw");
        fs::write(&raw, &image).unwrap();
        let (h, n) = write_image(
            &raw,
            &slot,
            Slot::B,
            &sha(&image),
            image.len() as u64,
            4_000_000,
        )
        .unwrap();
        assert_eq!((h.as_str(), n), (sha(&image).as_str(), image.len() as u64));
        assert_eq!(hash_prefix(&slot, n, None).unwrap(), sha(&image));

        let z = zstd::encode_all(&image[..], 3).unwrap();
        let zf = dir.path().join("img.zst");
        fs::write(&zf, &z).unwrap();
        fs::write(&slot, vec![0u8; 4_000_000]).unwrap();
        assert_eq!(
            image_length(&zf, z.len() as u64).unwrap(),
            Some(image.len() as u64)
        );
        let (h, n) = write_image(&zf, &slot, Slot::B, &sha(&z), z.len() as u64, 4_000_000).unwrap();
        assert_eq!((h, n), (sha(&image), image.len() as u64));

        // A staged file that is not the signed one is refused.
        let e = write_image(
            &raw,
            &slot,
            Slot::B,
            &sha(b"other"),
            image.len() as u64,
            4_000_000,
        )
        .unwrap_err();
        assert!(matches!(e, ApplyError::Verify(_)), "{e}");
        assert!(e.to_string().contains("not the signed one"), "{e}");
        // An image longer than the slot is refused.
        let e = write_image(
            &raw,
            &slot,
            Slot::B,
            &sha(&image),
            image.len() as u64,
            1_000_000,
        )
        .unwrap_err();
        assert!(e.to_string().contains("longer than slot B"), "{e}");
    }
}

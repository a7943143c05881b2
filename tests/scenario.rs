//! End-to-end scenario fixtures: a repository built with `petrel-repo`'s manifest commands
//! (library), published to a temporary directory, and devices (profile, inventory
//! directory, state directory) running the real device agent against it over `file://`.
//!
//! * [`Scenario`]: the repository. Artifacts, group manifests, assignments and campaigns are
//!   authored as TOML files and go through the same code as `petrel-repo group set`,
//!   `assign`, `campaign create|update|halt|resume` and `publish`.
//! * [`Device`]: one device of the fleet: its configuration, profile, inventory directory
//!   (what is *actually* installed, editable by hand) and state directory.
//! * [`Check`]: one `petrel check` (refresh, verify, decide) at a chosen instant, holding
//!   the agent and its evaluation so consent can be answered against the exact manifest
//!   shown.
//! * [`RecordingTransport`]: a `file://` transport that logs every URL fetched, to assert
//!   what a device did (and did not) download.
//!
//! Every helper panics on error, naming what failed: these are test fixtures.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use petrel_client::agent::{Agent, AgentConfig, AgentError, AgentState, Answer, Evaluation};
use petrel_client::consent::ConsentEvent;
use petrel_client::decide::{Action, CampaignDecision, StagedItem, Status};
use petrel_client::fetch::{FetchError, FileTransport, Transport};
use petrel_client::manifest::{sha256_hex, Capabilities};
use petrel_repo::editor::Editor;
use petrel_repo::manifests::{
    self, AssignOptions, AssignReport, CampaignReport, GroupReport, StateChange,
};
use petrel_repo::publish::{self, PublishReport, Refresh};
use tempfile::TempDir;

use crate::PetrelRepo;

/// The current instant in whole seconds (what manifests can express).
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp(t.timestamp(), 0).expect("a valid instant")
}

/// An instant as manifests write it (`2030-03-01T00:00:00Z`).
pub fn instant(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The bytes of a (small) artifact: deterministic, different for every target path.
pub fn artifact_bytes(target: &str) -> Vec<u8> {
    format!("the bytes of {target}\n").repeat(8).into_bytes()
}

/// A repository for one scenario, in a temporary directory that also holds its devices.
pub struct Scenario {
    dir: TempDir,
    repo: PetrelRepo,
    authored: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario::new()
    }
}

impl Scenario {
    /// A new repository (consistent snapshots, one key per top-level role).
    pub fn new() -> Scenario {
        let dir = tempfile::tempdir().expect("temporary directory");
        let repo = PetrelRepo::init(&dir.path().join("repo"), true);
        Scenario {
            dir,
            repo,
            authored: 0,
        }
    }

    /// A new repository with these settings (consistent snapshots as given there).
    pub fn with_settings(settings: petrel_repo::workspace::Settings) -> Scenario {
        let dir = tempfile::tempdir().expect("temporary directory");
        let repo = PetrelRepo::init_with(&dir.path().join("repo"), settings);
        Scenario {
            dir,
            repo,
            authored: 0,
        }
    }

    /// The underlying repository (for delegations, raw targets).
    pub fn repo(&mut self) -> &mut PetrelRepo {
        &mut self.repo
    }

    /// The published static tree.
    pub fn tree(&self) -> PathBuf {
        self.repo.tree()
    }

    /// Adds the artifact `target` (content [`artifact_bytes`]) to the top-level targets
    /// role and returns its bytes.
    pub fn artifact(&mut self, target: &str) -> Vec<u8> {
        let bytes = artifact_bytes(target);
        self.repo.add("targets", target, &bytes);
        bytes
    }

    /// Writes `text` as an authored file (`<n>-<name>`) and returns its path.
    pub fn author(&mut self, name: &str, text: &str) -> PathBuf {
        self.authored += 1;
        let dir = self.dir.path().join("authored");
        std::fs::create_dir_all(&dir).expect("authored dir");
        let path = dir.join(format!("{}-{name}", self.authored));
        std::fs::write(&path, text).expect("write authored file");
        path
    }

    /// `petrel-repo group set` with this TOML.
    pub fn group(&mut self, toml: &str) -> GroupReport {
        let file = self.author("group.toml", toml);
        manifests::set_group(self.repo.workspace(), &file, None)
            .unwrap_or_else(|e| panic!("group set: {e}"))
    }

    /// `petrel-repo assign --group GROUP --devices FILE [--canary] [--campaign C…]`.
    pub fn assign(
        &mut self,
        group: &str,
        devices: &[&str],
        canary: bool,
        campaigns: &[&str],
    ) -> AssignReport {
        let file = self.author("devices.txt", &(devices.join("\n") + "\n"));
        manifests::assign_devices(
            self.repo.workspace(),
            &file,
            &AssignOptions {
                group: group.into(),
                role: None,
                canary,
                campaigns: campaigns.iter().map(|c| c.to_string()).collect(),
            },
        )
        .unwrap_or_else(|e| panic!("assign: {e}"))
    }

    /// `petrel-repo campaign create` with this TOML (role: default, or `role`).
    pub fn try_create_campaign(
        &mut self,
        toml: &str,
        role: Option<&str>,
    ) -> petrel_repo::Result<CampaignReport> {
        let file = self.author("campaign.toml", toml);
        manifests::create_campaign(self.repo.workspace(), &file, role)
    }

    /// `petrel-repo campaign create`, which must succeed.
    pub fn create_campaign(&mut self, toml: &str) -> CampaignReport {
        self.try_create_campaign(toml, None)
            .unwrap_or_else(|e| panic!("campaign create: {e}"))
    }

    /// `petrel-repo campaign update` with this TOML, which must succeed.
    pub fn update_campaign(&mut self, toml: &str) -> CampaignReport {
        let file = self.author("campaign.toml", toml);
        manifests::update_campaign(self.repo.workspace(), &file, None)
            .unwrap_or_else(|e| panic!("campaign update: {e}"))
    }

    /// `petrel-repo campaign halt|resume|cancel ID`.
    pub fn change_state(&mut self, id: &str, change: StateChange) -> CampaignReport {
        manifests::change_campaign_state(self.repo.workspace(), id, change)
            .unwrap_or_else(|e| panic!("campaign {change:?} {id}: {e}"))
    }

    /// Sets (or removes) the capabilities of the delegation `from` → `to` and stages it,
    /// as `petrel-repo delegate --capabilities FILE` does.
    pub fn set_capabilities(&mut self, from: &str, to: &str, caps: Option<&str>) {
        let caps = caps
            .map(|t| Capabilities::from_toml(t).unwrap_or_else(|e| panic!("capabilities: {e}")));
        let mut ed = Editor::new(self.repo.workspace());
        manifests::set_delegation_capabilities(&mut ed, from, to, false, caps.as_ref())
            .unwrap_or_else(|e| panic!("capabilities of {from} -> {to}: {e}"));
        ed.save().expect("save");
    }

    /// `petrel-repo publish`.
    pub fn try_publish(&mut self) -> petrel_repo::Result<PublishReport> {
        publish::publish(self.repo.workspace(), Refresh::default())
    }

    /// `petrel-repo publish`, which must succeed.
    pub fn publish(&mut self) -> PublishReport {
        self.try_publish()
            .unwrap_or_else(|e| panic!("publish: {e}"))
    }

    /// A provisioned device with this profile (`id` plus the TOML lines in `profile`,
    /// which must not list an inventory) and an empty inventory directory. `digits` is
    /// its configured `repository.assign_bin_digits`.
    pub fn device_with_digits(&self, id: &str, profile: &str, digits: usize) -> Device {
        let dir = self.dir.path().join("devices").join(id);
        let apps = dir.join("apps");
        std::fs::create_dir_all(&apps).expect("device dirs");
        let profile_path = dir.join("profile.toml");
        std::fs::write(&profile_path, format!("id = {id:?}\n{profile}\n")).expect("profile");
        let url = |sub: &str| format!("file://{}", self.tree().join(sub).display());
        // Written and read as `petrel` reads /etc/petrel/device.toml.
        let config_path = dir.join("device.toml");
        let toml = format!(
            "state_dir = \"state\"\nprofile = \"profile.toml\"\n\n[repository]\nmetadata_url = {:?}\ntargets_url = {:?}\nassign_bin_digits = {digits}\n\n[inventory]\ndir = \"apps\"\n",
            url("metadata"),
            url("targets")
        );
        std::fs::write(&config_path, toml).expect("device.toml");
        let config =
            AgentConfig::load(&config_path).unwrap_or_else(|e| panic!("device configuration: {e}"));
        let root = std::fs::read(self.repo.trusted_root()).expect("the tree has a first root");
        Agent::init(&config, &root, false).unwrap_or_else(|e| panic!("petrel init {id}: {e}"));
        Device {
            id: id.to_string(),
            dir,
            apps,
            config,
        }
    }

    /// A provisioned device configured like the repository (2-digit assignment bins).
    pub fn device(&self, id: &str, profile: &str) -> Device {
        self.device_with_digits(id, profile, 2)
    }
}

/// One device: configuration, profile, inventory directory and state directory.
pub struct Device {
    /// The device id.
    pub id: String,
    dir: PathBuf,
    apps: PathBuf,
    config: AgentConfig,
}

impl Device {
    /// The device's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Installs `app` at `version` by hand: `apps/<app>/VERSION` and the artifact file.
    pub fn install(&self, app: &str, version: &str, bytes: &[u8]) {
        let d = self.apps.join(app);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("app dir");
        std::fs::write(d.join("VERSION"), format!("{version}\n")).expect("VERSION");
        std::fs::write(d.join("artifact.bin"), bytes).expect("artifact");
    }

    /// Removes `app` by hand.
    pub fn uninstall(&self, app: &str) {
        std::fs::remove_dir_all(self.apps.join(app)).expect("app was installed");
    }

    /// Records `items` (target path, bytes) in `state.json` as downloaded and verified
    /// into staging: the device's memory the engine decides from.
    pub fn mark_staged(&self, items: &[(&str, &[u8])]) {
        let agent = self.agent();
        let state_file = agent.paths().state_file();
        let mut state = AgentState::load(&state_file).expect("state.json");
        for (target, bytes) in items {
            state.staged.insert(
                target.to_string(),
                StagedItem {
                    sha256: sha256_hex(bytes),
                    length: bytes.len() as u64,
                },
            );
        }
        state.save(&state_file).expect("save state.json");
    }

    /// Opens the agent (holding the state directory's lock until dropped).
    pub fn agent(&self) -> Agent {
        Agent::open(self.config.clone()).unwrap_or_else(|e| panic!("agent {}: {e}", self.id))
    }

    /// `petrel check --at AT`: refresh, verify, decide.
    pub fn check(&self, at: DateTime<Utc>) -> Check {
        let agent = self.agent();
        let ev = agent
            .evaluate(Some(at))
            .unwrap_or_else(|e| panic!("check on {}: {e}", self.id));
        Check { agent, ev }
    }

    /// `petrel check --at AT`, then a consent answer for `campaign` (bound to the exact
    /// manifest shown). Returns the answer's outcome and the decision after it.
    pub fn answer(
        &self,
        campaign: &str,
        answer: Answer,
        at: DateTime<Utc>,
    ) -> (Result<ConsentEvent, AgentError>, Check) {
        let mut c = self.check(at);
        let r = c.agent.answer(&mut c.ev, campaign, None, answer);
        (r, c)
    }
}

/// One check: the agent and its evaluation.
pub struct Check {
    /// The agent (holds the lock).
    pub agent: Agent,
    /// The verified view, the device's memory and the decision.
    pub ev: Evaluation,
}

impl Check {
    /// The decision for campaign `id` (panics if the device does not see it).
    pub fn campaign(&self, id: &str) -> &CampaignDecision {
        self.ev.decision.campaign(id).unwrap_or_else(|| {
            panic!(
                "no decision for campaign {id}:\n{}",
                self.ev.decision.explain()
            )
        })
    }

    /// The status of campaign `id`.
    pub fn status(&self, id: &str) -> &Status {
        &self.campaign(id).status
    }

    /// `petrel check --explain`.
    pub fn explain(&self) -> String {
        self.ev.decision.explain()
    }

    /// The actions the device would take now.
    pub fn actions(&self) -> Vec<Action> {
        self.ev.decision.actions()
    }

    /// Whether any action downloads or installs anything (for campaign `id`).
    pub fn moves_bytes_for(&self, id: &str) -> bool {
        self.actions().iter().any(|a| match a {
            Action::Download { campaign, .. } | Action::Install { campaign, .. } => campaign == id,
            _ => false,
        })
    }
}

/// A `file://` transport that records every URL it is asked for.
#[derive(Clone, Debug, Default)]
pub struct RecordingTransport {
    inner: FileTransport,
    log: Arc<Mutex<Vec<String>>>,
}

impl RecordingTransport {
    /// A new transport with an empty log.
    pub fn new() -> RecordingTransport {
        RecordingTransport::default()
    }

    /// Every URL requested so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// The distinct URLs requested whose path contains `needle`.
    pub fn requested(&self, needle: &str) -> BTreeSet<String> {
        self.requests()
            .into_iter()
            .filter(|u| u.contains(needle))
            .collect()
    }
}

impl Transport for RecordingTransport {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        self.log.lock().expect("log").push(url.to_string());
        self.inner.fetch(url, max_len, sink)
    }
}

/// Every file under `dir` (recursively), with its bytes.
pub fn every_file(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

/// `t + days`.
pub fn days(t: DateTime<Utc>, n: i64) -> DateTime<Utc> {
    t + Duration::days(n)
}

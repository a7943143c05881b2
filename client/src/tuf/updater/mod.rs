//! The TUF detailed client workflow (spec §5): refresh top-level metadata, search delegations, download targets.
//!
//! ```no_run
//! use petrel_client::fetch::AutoTransport;
//! use petrel_client::tuf::updater::{Updater, UpdaterConfig};
//!
//! let config = UpdaterConfig::new("https://updates.example/metadata")
//!     .with_target_base_url("https://updates.example/targets");
//! let mut updater = Updater::new(config, AutoTransport::default(), "/var/lib/petrel/metadata")?;
//! updater.refresh()?;
//! if let Some(info) = updater.get_target_info("apps/acme/app/1.2/app.bin")? {
//!     let dest = std::path::Path::new("/var/lib/petrel/staging/app.bin");
//!     if !updater.find_cached_target(&info, dest)? {
//!         updater.download_target(&info, dest)?;
//!     }
//! }
//! # Ok::<(), petrel_client::tuf::updater::UpdateError>(())
//! ```
//!
//! Every refresh starts from the trusted files on disk and re-verifies them, so the files are
//! the only state that matters between refreshes; each step persists what it verified before
//! the next step starts, and any error leaves the files of the failed step untouched.

mod config;
mod delegation;
mod download;
mod error;
pub mod hashes;
mod store;
mod tree;
mod trusted;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{debug, info};

pub use config::{Limits, UpdaterConfig};
pub use delegation::TargetInfo;
pub use download::{
    local_target_file_name, partial_download_path, DownloadProgress, DownloadStats, PARTIAL_PREFIX,
};
pub use error::UpdateError;
pub use store::{role_file_name, write_atomic, MetadataStore};
pub use trusted::{
    SnapshotSource, TreeView, TrustedMetadata, TrustedRoot, Verified, WithSnapshot, WithTimestamp,
};

use crate::fetch::{encode_path_segment, fetch_to_vec, FetchError, Transport};
use crate::tuf::schema::{Signed, Snapshot, Timestamp};
use error::describe;

/// The clock used for the fixed update start time.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A TUF client for one repository and one trusted metadata directory.
pub struct Updater {
    config: UpdaterConfig,
    transport: Box<dyn Transport>,
    store: MetadataStore,
    clock: Clock,
    trusted: Option<TrustedMetadata>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("config", &self.config)
            .field("metadata_dir", &self.store.dir())
            .field("refreshed", &self.trusted.is_some())
            .finish_non_exhaustive()
    }
}

const ROOT_FILE: &str = "root.json";
const TIMESTAMP_FILE: &str = "timestamp.json";
const SNAPSHOT_FILE: &str = "snapshot.json";

impl Updater {
    /// An updater for the repository in `config`, keeping trusted metadata in
    /// `metadata_dir`, which must already hold a trusted `root.json` (see
    /// [`Updater::init_trusted_root`]). The root is verified now, so a broken installation
    /// fails here rather than at the first refresh. Nothing is fetched.
    pub fn new(
        config: UpdaterConfig,
        transport: impl Transport + 'static,
        metadata_dir: impl Into<PathBuf>,
    ) -> Result<Self, UpdateError> {
        let dir = metadata_dir.into();
        let store = MetadataStore::open(&dir).map_err(|source| UpdateError::Store {
            path: dir.clone(),
            source,
        })?;
        let updater = Updater {
            config,
            transport: Box::new(transport),
            store,
            clock: Arc::new(Utc::now),
            trusted: None,
        };
        updater.load_trusted_root()?;
        Ok(updater)
    }

    /// Installs `root_bytes` as the trusted root of `metadata_dir` (the out-of-band step of
    /// spec 5.2). The root must be well-formed and signed by a threshold of its own root
    /// keys; its expiry does not matter. No network access.
    pub fn init_trusted_root(
        metadata_dir: impl AsRef<Path>,
        root_bytes: &[u8],
    ) -> Result<(), UpdateError> {
        let dir = metadata_dir.as_ref();
        let root = TrustedRoot::from_trusted_bytes(root_bytes)?;
        let store = MetadataStore::open(dir).map_err(|source| UpdateError::Store {
            path: dir.to_path_buf(),
            source,
        })?;
        store
            .write(ROOT_FILE, root_bytes)
            .map_err(|source| UpdateError::Store {
                path: store.path(ROOT_FILE),
                source,
            })?;
        info!(
            "installed trusted root v{} in {}",
            root.version(),
            dir.display()
        );
        Ok(())
    }

    /// Replaces the clock that fixes each refresh's start time (for tests and for devices
    /// with a trusted time source).
    pub fn with_clock(mut self, clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &UpdaterConfig {
        &self.config
    }

    /// The trusted metadata directory.
    pub fn metadata_dir(&self) -> &Path {
        self.store.dir()
    }

    /// The metadata of the last successful refresh (plus delegated roles loaded since).
    pub fn trusted(&self) -> Option<&TrustedMetadata> {
        self.trusted.as_ref()
    }

    /// Runs the top-level part of the client workflow (spec 5.1–5.6.6): root chain, timestamp,
    /// snapshot, targets. The update start time is read from the clock once, here.
    ///
    /// On error, the files of the step that failed are unchanged (steps before it may have
    /// persisted newer verified metadata, as the spec requires) and this updater forgets its
    /// trusted set until a later refresh succeeds.
    pub fn refresh(&mut self) -> Result<(), UpdateError> {
        self.trusted = None;
        let now = (self.clock)();
        info!(
            "refresh of {} started at {}",
            self.config.metadata_base_url,
            now.to_rfc3339()
        );
        let trusted = self.run_top_level_workflow(now)?;
        info!(
            "refresh done: root v{}, timestamp v{}, snapshot v{}, targets v{}",
            trusted.root().signed.version,
            trusted.timestamp().signed.version,
            trusted.snapshot().version(),
            trusted.targets().signed.version
        );
        self.trusted = Some(trusted);
        Ok(())
    }

    fn run_top_level_workflow(&self, now: DateTime<Utc>) -> Result<TrustedMetadata, UpdateError> {
        // 5.2 Load the trusted root.
        let mut root = self.load_trusted_root()?;
        let initial_ts_keys = root.role_keys("timestamp");
        let initial_sn_keys = root.role_keys("snapshot");

        // 5.3 Update the root role.
        self.update_root_chain(&mut root)?;
        // 5.3.10 Freeze check on the final root.
        root.check_not_expired(now)?;
        // 5.3.11 Fast-forward attack recovery.
        if root.role_keys("timestamp") != initial_ts_keys
            || root.role_keys("snapshot") != initial_sn_keys
        {
            info!("timestamp or snapshot keys rotated: deleting trusted timestamp and snapshot");
            self.remove_stored(TIMESTAMP_FILE)?;
            self.remove_stored(SNAPSHOT_FILE)?;
            self.forget_tree()?;
        }
        // 5.3.12 Consistent snapshots (read from `root` from here on).
        debug!("consistent snapshots: {}", root.consistent_snapshot());

        // 5.4 Timestamp.
        let with_ts = self.update_timestamp(root, now)?;
        // 5.5 Snapshot.
        let with_sn = self.update_snapshot(with_ts, now)?;
        // 5.6 Top-level targets.
        self.update_targets(with_sn, now)
    }

    fn load_trusted_root(&self) -> Result<TrustedRoot, UpdateError> {
        let path = self.store.path(ROOT_FILE);
        let bytes = self
            .store
            .read(ROOT_FILE, self.config.limits.root_max_length)
            .map_err(|e| UpdateError::TrustedRoot {
                path: path.clone(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| UpdateError::TrustedRoot {
                path: path.clone(),
                reason: "missing: install one with `init` first".into(),
            })?;
        TrustedRoot::from_trusted_bytes(&bytes).map_err(|e| UpdateError::TrustedRoot {
            path,
            reason: e.to_string(),
        })
    }

    fn update_root_chain(&self, root: &mut TrustedRoot) -> Result<(), UpdateError> {
        let limits = &self.config.limits;
        for _ in 0..limits.max_root_rotations {
            let next = root.version() + 1;
            let url = self.metadata_url(&format!("{next}.root.json"));
            let bytes = match fetch_to_vec(&*self.transport, &url, limits.root_max_length) {
                Ok(b) => b,
                Err(FetchError::NotFound { .. }) => {
                    debug!("{url} not found: root v{} is the latest", root.version());
                    return Ok(());
                }
                Err(source) => {
                    return Err(UpdateError::Fetch {
                        what: describe("root", Some(next)),
                        url,
                        source,
                    })
                }
            };
            root.update(&bytes)?;
            self.persist(ROOT_FILE, &bytes)?;
            info!("root updated to v{next}");
        }
        debug!(
            "stopped after {} root rotations (limit)",
            limits.max_root_rotations
        );
        Ok(())
    }

    fn update_timestamp(
        &self,
        root: TrustedRoot,
        now: DateTime<Utc>,
    ) -> Result<WithTimestamp, UpdateError> {
        let max = self.config.limits.timestamp_max_length;
        let previous: Option<Signed<Timestamp>> =
            self.read_stored(TIMESTAMP_FILE, max).and_then(|b| {
                match root.verify_local_timestamp(&b) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        debug!("ignoring stored timestamp: {e}");
                        None
                    }
                }
            });
        let url = self.metadata_url(TIMESTAMP_FILE);
        let bytes =
            fetch_to_vec(&*self.transport, &url, max).map_err(|source| UpdateError::Fetch {
                what: describe("timestamp", None),
                url: url.clone(),
                source,
            })?;
        let (state, changed) = root.update_timestamp(previous, &bytes, now)?;
        let v = state.timestamp().signed.version;
        if changed {
            self.persist(TIMESTAMP_FILE, &bytes)?;
            info!("timestamp updated to v{v}");
        } else {
            debug!("timestamp v{v} unchanged");
        }
        Ok(state)
    }

    fn update_snapshot(
        &self,
        state: WithTimestamp,
        now: DateTime<Utc>,
    ) -> Result<WithSnapshot, UpdateError> {
        if self.config.use_snapshot_tree {
            if let Some(meta) = state.tree_meta()? {
                return self.update_tree(state, meta, now);
            }
        }
        let max = self.config.limits.snapshot_max_length;
        let mut previous: Option<Signed<Snapshot>> = None;
        if let Some(bytes) = self.read_stored(SNAPSHOT_FILE, max) {
            match state.verify_snapshot(None, &bytes, now) {
                Ok(v) => {
                    debug!(
                        "stored snapshot v{} is current: not downloading",
                        v.signed().signed.version
                    );
                    return Ok(state.with_snapshot(v));
                }
                Err(e) => {
                    debug!("stored snapshot is not current: {e}");
                    previous = state.verify_local_snapshot(&bytes).ok();
                }
            }
        }
        let meta = state.snapshot_meta().clone();
        let name = if state.root().consistent_snapshot() {
            format!("{}.{SNAPSHOT_FILE}", meta.version)
        } else {
            SNAPSHOT_FILE.to_string()
        };
        let url = self.metadata_url(&name);
        let bytes =
            fetch_to_vec(&*self.transport, &url, meta.length.unwrap_or(max)).map_err(|source| {
                UpdateError::Fetch {
                    what: describe("snapshot", Some(meta.version)),
                    url: url.clone(),
                    source,
                }
            })?;
        let verified = state.verify_snapshot(previous.as_ref(), &bytes, now)?;
        self.persist(SNAPSHOT_FILE, &bytes)?;
        info!("snapshot updated to v{}", meta.version);
        Ok(state.with_snapshot(verified))
    }

    fn update_targets(
        &self,
        mut state: WithSnapshot,
        now: DateTime<Utc>,
    ) -> Result<TrustedMetadata, UpdateError> {
        if let Some(tree) = state.tree_mut() {
            self.resolve_in_tree(tree, "targets")?;
        }
        let max = self.config.limits.targets_max_length;
        let file = role_file_name("targets");
        if let Some(bytes) = self.read_stored(&file, max) {
            match state.verify_targets(&bytes, now) {
                Ok(v) => {
                    debug!(
                        "stored targets v{} is current: not downloading",
                        v.signed().signed.version
                    );
                    return Ok(state.with_targets(v, now));
                }
                Err(e) => debug!("stored targets is not current: {e}"),
            }
        }
        let meta = state
            .role_meta("targets")
            .ok_or_else(|| UpdateError::Invalid {
                what: describe("targets", None),
                reason: format!("not listed in {}", state.snapshot().describe()),
            })?
            .clone();
        let url = self.role_url("targets", meta.version, state.consistent_snapshot());
        let bytes =
            fetch_to_vec(&*self.transport, &url, meta.length.unwrap_or(max)).map_err(|source| {
                UpdateError::Fetch {
                    what: describe("targets", Some(meta.version)),
                    url: url.clone(),
                    source,
                }
            })?;
        let verified = state.verify_targets(&bytes, now)?;
        self.persist(&file, &bytes)?;
        info!("targets updated to v{}", meta.version);
        Ok(state.with_targets(verified, now))
    }

    /// `<base>/<name>`.
    fn metadata_url(&self, name: &str) -> String {
        format!(
            "{}/{name}",
            self.config.metadata_base_url.trim_end_matches('/')
        )
    }

    /// The URL of a targets role's metadata: `V.<role>.json` with consistent snapshots,
    /// `<role>.json` without. The role name is percent-encoded as one URL path segment
    /// (RFC 3986: unreserved characters as they are, everything else, `/` included, as
    /// `%XX`), so `.hidden/bin` is requested as `.hidden%2Fbin.json`. The local file name
    /// ([`role_file_name`]) escapes more: a leading `.` too.
    fn role_url(&self, role: &str, version: u64, consistent: bool) -> String {
        let enc = encode_path_segment(role);
        if consistent {
            self.metadata_url(&format!("{version}.{enc}.json"))
        } else {
            self.metadata_url(&format!("{enc}.json"))
        }
    }

    /// Reads a stored file, treating unreadable or oversized files as absent.
    fn read_stored(&self, name: &str, max: u64) -> Option<Vec<u8>> {
        match self.store.read(name, max) {
            Ok(b) => b,
            Err(e) => {
                debug!("ignoring stored {name}: {e}");
                None
            }
        }
    }

    fn persist(&self, name: &str, bytes: &[u8]) -> Result<(), UpdateError> {
        self.store
            .write(name, bytes)
            .map_err(|source| UpdateError::Store {
                path: self.store.path(name),
                source,
            })
    }

    fn remove_stored(&self, name: &str) -> Result<(), UpdateError> {
        self.store
            .remove(name)
            .map_err(|source| UpdateError::Store {
                path: self.store.path(name),
                source,
            })
    }
}

//! Updater configuration: repository URLs and the limits against endless data and slow graphs.

/// Size and count limits. Every download is bounded: by the exact length when the
/// referencing metadata pins it, by these maxima otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How many new root versions one refresh may download (spec 5.3.3's "Y"; default 32).
    pub max_root_rotations: u32,
    /// Largest accepted `N.root.json` (default 512 KiB).
    pub root_max_length: u64,
    /// Largest accepted `timestamp.json` (default 16 KiB).
    pub timestamp_max_length: u64,
    /// Largest accepted snapshot when timestamp does not pin its length (default 2 MB).
    pub snapshot_max_length: u64,
    /// Largest accepted targets or delegated targets metadata when snapshot does not pin its
    /// length (default 5 MB).
    pub targets_max_length: u64,
    /// How many delegated roles one target search may visit, not counting top-level
    /// `targets` (default 32; the same rule as python-tuf's `max_delegations`).
    pub max_delegations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_root_rotations: 32,
            root_max_length: 512 * 1024,
            timestamp_max_length: 16 * 1024,
            snapshot_max_length: 2_000_000,
            targets_max_length: 5_000_000,
            max_delegations: 32,
        }
    }
}

/// Where the repository is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdaterConfig {
    /// Base URL of the metadata directory (`…/metadata`); a trailing `/` is optional.
    pub metadata_base_url: String,
    /// Base URL of the targets directory (`…/targets`), used by
    /// [`Updater::download_target`](super::Updater::download_target).
    pub target_base_url: Option<String>,
    /// Size and count limits.
    pub limits: Limits,
    /// With consistent snapshots, fetch targets as `dir/<hash>.<name>` (default true).
    /// Turn off for repositories that publish consistent metadata but plain target names.
    pub prefix_targets_with_hash: bool,
    /// Read role versions from the snapshot tree when the timestamp pins one (default
    /// true): a few small nodes per role used instead of the whole `snapshot.json`
    /// (docs/scale.md). Off: always the whole snapshot, as other TUF clients do.
    pub use_snapshot_tree: bool,
}

impl UpdaterConfig {
    /// A configuration with default limits for the metadata at `metadata_base_url`.
    pub fn new(metadata_base_url: impl Into<String>) -> Self {
        UpdaterConfig {
            metadata_base_url: metadata_base_url.into(),
            target_base_url: None,
            limits: Limits::default(),
            prefix_targets_with_hash: true,
            use_snapshot_tree: true,
        }
    }

    /// Sets the targets base URL.
    pub fn with_target_base_url(mut self, url: impl Into<String>) -> Self {
        self.target_base_url = Some(url.into());
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

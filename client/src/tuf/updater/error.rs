//! The updater's one error type: every message names the role, its version and the reason.

use std::io;
use std::path::PathBuf;

use crate::fetch::FetchError;
use crate::tuf::schema::{Expires, SchemaError, TOP_LEVEL_ROLES};
use crate::tuf::verify::ThresholdError;

/// Why a refresh, a target search or a target download failed.
///
/// `what` fields read like `root v4`, `snapshot v7` or `targets role "vendor" v3`: the role
/// and, when known, the version that was being processed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// No usable trusted root in the metadata directory.
    #[error("trusted root {path}: {reason}")]
    TrustedRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Downloading metadata failed.
    #[error("{what}: download from {url} failed: {source}")]
    Fetch {
        /// The role (and expected version).
        what: String,
        /// The URL.
        url: String,
        /// The transport's error.
        #[source]
        source: FetchError,
    },
    /// The metadata is not well-formed TUF metadata of the expected type.
    #[error("{what}: {source}")]
    Schema {
        /// The role (and claimed version).
        what: String,
        /// The parser's error.
        #[source]
        source: SchemaError,
    },
    /// Not enough valid signatures (arbitrary software attack), or a signature list that
    /// names a key id more than once.
    #[error("{what}: {}: {source}", .source.headline())]
    Signature {
        /// The role and version, and whose keys were checked.
        what: String,
        /// Details per signature.
        #[source]
        source: ThresholdError,
    },
    /// The metadata's specification major version is not one Petrel implements.
    #[error("{what}: unsupported spec_version {spec_version:?} (Petrel implements 1.x)")]
    UnsupportedSpec {
        /// The role and version.
        what: String,
        /// The version string found.
        spec_version: String,
    },
    /// A version went backwards, or a role disappeared from snapshot (rollback attack).
    #[error("{what}: rollback: {reason}")]
    Rollback {
        /// The role and version.
        what: String,
        /// What went backwards.
        reason: String,
    },
    /// The version is not the one the referencing metadata names (mix-and-match attack), or
    /// a new root is not exactly N+1.
    #[error("{what}: {reason}")]
    Version {
        /// The role and version.
        what: String,
        /// Which version was expected.
        reason: String,
    },
    /// The metadata expired before the update's fixed start time (freeze attack).
    #[error("{what}: expired at {expires} (update started at {now})")]
    Expired {
        /// The role and version.
        what: String,
        /// Its expiry.
        expires: Expires,
        /// The fixed update start time.
        now: Expires,
    },
    /// Length or hashes differ from what the referencing metadata pins.
    #[error("{what}: {reason}")]
    LengthOrHash {
        /// The role and version, or the target path.
        what: String,
        /// Which check failed.
        reason: String,
    },
    /// The delegation graph or snapshot is inconsistent (e.g. a role snapshot does not list).
    #[error("{what}: {reason}")]
    Invalid {
        /// The role.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the trusted metadata directory failed; trusted state is unchanged.
    #[error("trusted metadata store {path}: {source}")]
    Store {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A target operation was asked for before a refresh succeeded.
    #[error("no successful refresh yet: call refresh() first")]
    NotRefreshed,
    /// A target path, base URL or destination cannot be used.
    #[error("target {path:?}: {reason}")]
    Target {
        /// The target path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Downloading a target failed.
    #[error("target {path:?}: download from {url} failed: {source}")]
    TargetFetch {
        /// The target path.
        path: String,
        /// The URL.
        url: String,
        /// The transport's error.
        #[source]
        source: FetchError,
    },
    /// A resumable download was stopped on request; its partial file is kept.
    #[error("target {path:?}: download stopped on request; {file} is kept and the download resumes from it")]
    Stopped {
        /// The target path.
        path: String,
        /// The partial file.
        file: PathBuf,
    },
    /// Writing or reading a local target file failed.
    #[error("target {path:?}: {file}: {source}")]
    TargetIo {
        /// The target path.
        path: String,
        /// The local file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// `root v4`, `snapshot`, `targets role "vendor" v3`: how messages name a role.
pub(crate) fn describe(role: &str, version: Option<u64>) -> String {
    let base = if TOP_LEVEL_ROLES.contains(&role) || role == super::trusted::TREE_ROLE {
        role.to_string()
    } else {
        format!("targets role {role:?}")
    };
    match version {
        Some(v) => format!("{base} v{v}"),
        None => base,
    }
}

impl UpdateError {
    /// Whether the error is the network's or the server's (a fetch that failed: refused,
    /// reset, timed out, an HTTP error status, not found), so trying again later, with
    /// backoff, may help. Verification failures (signatures, hashes, versions, expiry) are
    /// not: they are retried at the normal poll interval, never in a tight loop.
    pub fn is_network(&self) -> bool {
        match self {
            UpdateError::Fetch { source, .. } | UpdateError::TargetFetch { source, .. } => {
                !matches!(source, FetchError::BadUrl { .. })
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_described_with_versions() {
        assert_eq!(describe("snapshot", Some(7)), "snapshot v7");
        assert_eq!(describe("vendor", Some(3)), "targets role \"vendor\" v3");
        assert_eq!(describe("timestamp", None), "timestamp");
    }
}

//! The agent's one error type: every message says what is wrong and what to do, and maps
//! to the `petrel` command's exit status.

use std::path::PathBuf;

use crate::consent::ConsentError;
use crate::tuf::updater::UpdateError;

/// Everything that can go wrong in the agent, with a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration file is missing or invalid.
    #[error("configuration {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The device profile is missing or invalid.
    #[error("device profile {path}: {reason}")]
    Profile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The inventory could not be read.
    #[error("inventory ({from}): {reason}")]
    Inventory {
        /// The configured source.
        from: String,
        /// What is wrong.
        reason: String,
    },
    /// A file of the state directory is unusable.
    #[error("state {path}: {reason}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No trusted root yet.
    #[error("the device is not provisioned: {dir} has no trusted root; run `petrel init --root ROOT.json` first")]
    NotProvisioned {
        /// The metadata directory.
        dir: PathBuf,
    },
    /// `init` on a provisioned device.
    #[error(
        "{path} already holds a trusted root; use --force to replace it (re-provisioning only)"
    )]
    AlreadyProvisioned {
        /// The trusted root file.
        path: PathBuf,
    },
    /// `init` was given bytes that are not a usable trusted root.
    #[error("{}not a usable trusted root: {reason}; give the root metadata the repository publishes (its metadata/1.root.json, or the root.json its release engineers hand out), unchanged", .path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    BadRoot {
        /// The file given, if the bytes came from one.
        path: Option<PathBuf>,
        /// What is wrong with it.
        reason: Box<UpdateError>,
    },
    /// The TUF client failed (nothing is decided on unverified metadata).
    #[error("cannot refresh the repository's signed metadata: {0}")]
    Update(#[from] UpdateError),
    /// The consent store failed or refused.
    #[error("{0}")]
    Consent(#[from] ConsentError),
    /// No such campaign in the repository.
    #[error("no campaign {id:?} in the repository{}", known_list(.known))]
    UnknownCampaign {
        /// The id asked for.
        id: String,
        /// The campaigns there are.
        known: Vec<String>,
    },
    /// The request does not make sense now (with the reason).
    #[error("{0}")]
    Refused(String),
    /// Another petrel command holds the state directory.
    #[error("another petrel command is running on {state_dir} ({holder}); only one may run at a time: stop it first (for the service: systemctl stop petrel) or try again when it has finished")]
    Busy {
        /// The state directory.
        state_dir: PathBuf,
        /// Who holds it, as the holder wrote it into the lock file.
        holder: String,
    },
}

impl AgentError {
    /// The exit status the `petrel` command ends with for this error: 4 when another
    /// command holds the state directory, 3 for a problem of the network or the repository's
    /// server (tried again later), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Busy { .. } => 4,
            AgentError::Update(e) if e.is_network() => 3,
            _ => 1,
        }
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        " (it publishes none)".to_string()
    } else {
        format!(" (campaigns: {})", known.join(", "))
    }
}

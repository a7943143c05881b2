//! The repo tool's error type: every variant names the file, role or key concerned.

use std::path::PathBuf;

use petrel_client::tuf::keys::KeyError;
use petrel_client::tuf::schema::SchemaError;

/// Result alias for the repo tool.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while editing, signing or publishing a repository.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A metadata file is malformed.
    #[error("{path}: {source}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: SchemaError,
    },
    /// A key file cannot be used.
    #[error("key {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        source: KeyError,
    },
    /// A target cannot be added or removed.
    #[error("target {name:?}: {reason}")]
    Target {
        /// The target path (or source path when no name exists yet).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A role is unknown, misconfigured, or its keys are unavailable.
    #[error("role {role:?}: {reason}")]
    Role {
        /// The role name.
        role: String,
        /// What is wrong.
        reason: String,
    },
    /// The settings file is invalid.
    #[error("settings {path}: {reason}")]
    Settings {
        /// The settings file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The repository workspace is not in a state that allows this command.
    #[error("{0}")]
    State(String),
    /// A user-supplied argument is invalid.
    #[error("{0}")]
    Usage(String),
    /// A manifest or capabilities file cannot be published: it is invalid, its revision
    /// does not grow, or its signing role may not sign it. `reason` names the field.
    #[error("{path}: {reason}")]
    Manifest {
        /// The file given on the command line.
        path: PathBuf,
        /// What is wrong (field path first where there is one).
        reason: String,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A role error.
    pub fn role(role: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Role {
            role: role.into(),
            reason: reason.into(),
        }
    }

    /// A manifest file error.
    pub fn manifest(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Manifest {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A target error.
    pub fn target(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Target {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

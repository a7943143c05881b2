//! `petrel-repo` library: the repository editor behind the CLI.
//!
//! * [`workspace`] — the on-disk repository workspace: settings, keys, staged and current metadata.
//! * [`editor`] — changes to roles: targets, delegations, key rotation.
//! * [`signing`] — signing staged roles, thresholds, offline signatures.
//! * [`keyfile`] and [`pkcs11`] — where keys are: files, or keys in an HSM or token named
//!   by a `pkcs11:` URI.
//! * [`publish`] — turning staged roles into the static tree, crash-safely.
//! * [`listing`] — every target of the workspace, with the role that signs it.
//! * [`audit`] — checking a published tree the way a client would, reporting every problem.
//! * [`manifests`] — group manifests, assignment bins and campaigns as targets of their own
//!   roles, checked against the capabilities of the role that signs them.
//! * [`rollout`] — rollout status from device reports, and the failure-rate gate.
//! * [`fleet`] — the fleet view from reports and the published tree, and `rollout advance`.
//! * [`forecast`] — each device's wave in a campaign, computed as devices compute it.
//! * [`trees`] — directories packed as tree artifacts, and tree deltas.
//! * [`fixtures`] — deterministic good and attack repositories for tests and offline CI.
//!
//! Schema types come from `petrel-client`, so there is one definition of each format.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod autodelta;
pub mod delta;
pub mod duration;
pub mod editor;
pub mod error;
pub mod fixtures;
pub mod fleet;
pub mod forecast;
pub mod fsutil;
pub mod keyfile;
pub mod listing;
pub mod manifests;
pub mod pkcs11;
pub mod publish;
pub mod rollout;
pub mod signing;
pub mod trees;
pub mod upload;
pub mod workspace;

pub use error::{Error, Result};

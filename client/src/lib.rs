//! `petrel-client`: everything a Petrel device runs, and every on-the-wire format.
//!
//! * [`tuf`] — the TUF metadata model, canonical JSON, keys and signature verification,
//!   and the spec's detailed client workflow ([`tuf::updater`]).
//! * [`fetch`] — transports (HTTP(S), `file://`, in memory) behind one blocking trait.
//! * [`manifest`] — Petrel's own formats: group manifests, campaign manifests, assignment
//!   bins, and the capabilities (scoped keys) delegations carry (`docs/formats.md`).
//! * [`decide`] — the decision engine: a pure function from verified manifests, the device
//!   profile and inventory, and local state to what happens to the device, and why.
//! * [`consent`] — the consent store (hash-chained log), consent rules and administrator
//!   consent tokens.
//! * [`report`] — signed device status reports, the device's report key, and the outbox
//!   that sends them to the report endpoint.
//! * [`tree`] — tree artifacts: a directory as one target, its signed file manifest, the
//!   container and tree deltas.
//! * [`agent`] — the device agent's I/O shell around the engine (configuration, inventory,
//!   state directory, consent answers); the `petrel` binary is a thin CLI over it.
//!
//! The repo tool (`petrel-repo`) depends on this crate for the formats, so each format has
//! exactly one definition.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod consent;
pub mod decide;
pub mod delta;
pub mod fetch;
pub mod manifest;
pub mod report;
pub mod tree;
pub mod tuf;

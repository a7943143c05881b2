//! `petrel-client`: everything a Petrel device runs, and every on-the-wire format.
//!
//! * [`tuf`] — the TUF metadata model, canonical JSON, keys and signature verification,
//!   and the spec's detailed client workflow ([`tuf::updater`]).
//! * [`fetch`] — transports (HTTP(S), `file://`, in memory) behind one blocking trait.
//!
//! The repo tool (`petrel-repo`) depends on this crate for the formats, so each format has
//! exactly one definition.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod fetch;
pub mod tuf;

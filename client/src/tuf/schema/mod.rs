//! The TUF metadata schema: serde types for root, timestamp, snapshot and targets metadata.
//!
//! These types only describe the wire format; signing lives in the repo tool's editor and
//! verification in [`crate::tuf::verify`]. Every object keeps the fields it does not know
//! in `unrecognized`, so a round trip through Petrel never drops another tool's fields.

mod common;
mod root;
mod snapshot;
mod targets;
mod timestamp;

pub use common::*;
pub use root::*;
pub use snapshot::*;
pub use targets::*;
pub use timestamp::*;

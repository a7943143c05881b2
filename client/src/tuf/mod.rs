//! The Update Framework: metadata schema, canonical JSON, keys, verification, path patterns, and the client workflow.

pub mod canonical;
pub mod keys;
pub mod pattern;
pub mod schema;
pub mod updater;
pub mod verify;

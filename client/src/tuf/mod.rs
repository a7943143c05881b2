//! The Update Framework: metadata schema, canonical JSON, keys, verification, path patterns.

pub mod canonical;
pub mod keys;
pub mod pattern;
pub mod schema;
pub mod verify;

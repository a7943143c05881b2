//! `petrel`: the device agent.
fn main() {}

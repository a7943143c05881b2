//! `petrel-conformance`: the client-under-test CLI for TUF conformance suites.
fn main() {}

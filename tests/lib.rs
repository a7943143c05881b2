//! Shared helpers for the workspace end-to-end tests (the tests live in `tests/tests/`).

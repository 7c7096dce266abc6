//! Integration tests across the signrt crates live in `tests/tests/`. This
//! library holds helpers they share.

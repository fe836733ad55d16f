//! Support for Ferry's end-to-end tests. The shared helpers live in `ferry-test-support` and are
//! re-exported here, so `ferry_tests::{TestServer, test_settings, wait_until, collect_messages,
//! process::*, driver::*}` keep working; only the cluster harness (which needs ferry-cluster) is this
//! crate's own.

pub use ferry_test_support::{
    collect_messages, conformance_revoke, conformance_tokens, driver, groups, init_logging,
    process, test_settings, wait_until, Seen, TestServer,
};

pub mod cluster;

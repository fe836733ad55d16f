//! # ferry-test-support
//!
//! Helpers shared by Ferry's tests — one crate to import, as h2's `tests/h2-support` is for h2. Tests
//! run what users run (DESIGN.md, "Testing philosophy"), so the helpers start real servers and
//! processes rather than mocks, and fail loudly — a panic naming the reason, never a skipped test —
//! when they cannot.
//!
//! Layout:
//! - [`server`]: [`TestServer`], an in-process ferry-server on free loopback ports with its own data
//!   dir, tokens and wire sessions; [`test_settings`]; [`conformance_tokens`]; [`conformance_revoke`]; [`init_logging`];
//! - [`process`]: the real binaries as child processes ([`process::workspace_binary`],
//!   [`process::ServerProcess`]: `ferry-server run`, kill -9, SIGTERM);
//! - [`driver`]: the wire driver — re-exported from `ferry_interop::driver`, which stays the
//!   conformance runner's own client (ferry-interop must not depend on this crate);
//! - [`wait`]: [`wait_until`], polling a condition under a timeout instead of sleeping for luck;
//! - [`client`]: [`collect_messages`] of a `ferry-client` instance;
//! - [`groups`]: creating a group and listing conversations on a wire session;
//! - [`redis`]: a real `redis-server` on a free loopback port ([`redis::RedisServer`]: kill -9,
//!   restart on the same data, FLUSHALL) and a real Redis Cluster of several such processes
//!   ([`redis::RedisCluster`]). `scripts/test.sh` installs `redis-server`/`redis-tools` when missing.
#![warn(missing_docs)]

pub mod client;
pub mod groups;
pub mod process;
pub mod redis;
pub mod server;
pub mod wait;

pub use client::{collect_messages, Seen};
pub use ferry_interop::driver;
pub use server::{conformance_revoke, conformance_tokens, init_logging, test_settings, TestServer};
pub use wait::wait_until;

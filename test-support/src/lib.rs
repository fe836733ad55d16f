//! # ferry-test-support
//!
//! Helpers shared by Ferry's tests. Tests run what users run (DESIGN.md, "Testing philosophy"), so the
//! helpers start real processes rather than mocks, and fail loudly — a panic naming the reason, never a
//! skipped test — when they cannot.
//!
//! Layout:
//! - [`redis`]: a real `redis-server` on a free loopback port ([`redis::RedisServer`]: kill -9,
//!   restart on the same data, FLUSHALL) and a real Redis Cluster of several such processes
//!   ([`redis::RedisCluster`]). `scripts/test.sh` installs `redis-server`/`redis-tools` when missing.
#![warn(missing_docs)]

pub mod redis;

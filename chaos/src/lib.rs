//! # ferry-chaos
//!
//! A suite that tries hard to break Ferry's promise — every acked message reaches every member device
//! exactly once, in order, with nothing missing — with many faults at once, reproducibly, judged by a
//! checker that shares no bookkeeping with the client.
//!
//! ```text
//!  device processes (ferry-client, SQLite)   ferry-proxy (in this process)   ferry-server process
//!  u0/d0 u0/d1 u1/d0 ... ── JSON lines ──┐    loss, delay+jitter, reorder,    SIGKILL+restart,
//!        │ QUIC                           │    duplication, blackhole, rebind  SIGSTOP/SIGCONT,
//!        └────────────────────────────────┼──────────────► proxy ─────────────► disk full (tmpfs)
//!                                         ▼
//!                        recorder → observations → invariant checker → JSON report
//! ```
//!
//! `ferry-chaos run --profile short --report FILE` (CI, about 3 minutes) or `--profile soak --minutes N`;
//! the seed is printed and `--seed S` replays the fault schedule and the proxy's decisions.
//! `--target cluster [--nodes N]` attacks N cluster nodes on one `redis-server` (one proxy per node)
//! with node kills and pauses, Redis kills and a FLUSHALL instead of the single node's faults.
//!
//! ## Layout
//!
//! - [`observe`]: the checker's input records (membership, sends, receipts, delivered logs).
//! - [`checker`]: the independent invariant checker (pure; unit-tested on hand-made logs).
//! - [`schedule`]: the seeded fault schedule in overlapping lanes (pure; unit-tested).
//! - [`profile`]: the `short` and `soak` knobs.
//! - [`target`]: the server side behind a trait; [`target::SingleNode`] is a `ferry-server` process.
//! - [`cluster_target`]: the other target, N cluster nodes on one `redis-server` (`--target cluster`).
//! - [`node`]: one `ferry-server run` process, killed, paused and restarted on the same ports.
//! - [`proxies`]: one fault proxy per node, all under the same weather.
//! - [`redis`]: the cluster's `redis-server` (AOF always), killed and restarted, FLUSHALL.
//! - [`scenario`]: users, devices, direct and group conversations, created through the real client.
//! - [`device`]: one device process (`ferry-chaos device`) and its JSON line protocol.
//! - [`fleet`]: spawning, killing, pausing and restarting device processes; the recorder.
//! - [`run`]: the run itself: faults, settling, checking.
//! - [`report`]: the JSON report.
#![warn(missing_docs)]

pub mod checker;
pub mod cluster_target;
pub mod device;
pub mod fleet;
pub mod node;
pub mod observe;
pub mod profile;
pub mod proxies;
pub mod redis;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod target;

//! The scenarios, one file each. Every one is bounded in time (its duration plus fixed waits), records
//! into [`Results`](crate::report::Results), and reports a failing system as an error in the results instead of ending the run.
//! `failover` (kill -9 of a cluster node, time until every client is caught up) runs by `all` after
//! `lossy`. `flood` (handshake floods, churn and never-reading sessions against normal users) runs only
//! on its own: it is a robustness check, not a comparison with the peers.

pub mod catchup;
pub mod cluster_latency;
pub mod connections;
pub mod failover;
pub mod fanout;
pub mod flood;
pub mod fsync;
pub mod latency;
pub mod lossy;
pub mod memory;
pub mod push;
pub mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use crate::peers::System;

/// What every scenario is told: which systems, how big and how long.
#[derive(Clone, Debug)]
pub struct Config {
    /// The ferry-server binary to run.
    pub ferry_binary: PathBuf,
    /// Systems to drive (Ferry and the peers).
    pub systems: Vec<System>,
    /// `--quick`: small and short.
    pub quick: bool,
    /// Sending connections (throughput).
    pub clients: usize,
    /// Sends in flight per connection.
    pub window: usize,
    /// Body sizes (throughput).
    pub bodies: Vec<usize>,
    /// How long each measured run sends.
    pub duration: Duration,
    /// Throughput runs per system, interleaved; the median is reported.
    pub repeat: usize,
    /// Senders of the open-loop latency runs.
    pub latency_clients: usize,
    /// Loads of the latency runs, percent of each system's own peak.
    pub loads: Vec<u32>,
    /// Group size of the fan-out.
    pub members: usize,
    /// Idle connections to open.
    pub connections: usize,
    /// How long the idle connections sit (heartbeats only) while CPU is measured.
    pub idle: Duration,
    /// Messages of the lossy run.
    pub lossy_messages: u64,
    /// Time between rebinds in the lossy run.
    pub rebind_every: Duration,
    /// `--push`: Ferry's throughput runs with offline push on (see [`push`]).
    pub push: bool,
}

impl Config {
    /// Defaults for a full or a `--quick` run.
    pub fn defaults(ferry_binary: PathBuf, quick: bool) -> Config {
        Config {
            ferry_binary,
            systems: System::ALL.to_vec(),
            quick,
            clients: 50,
            window: 16,
            bodies: vec![256, 1024],
            duration: Duration::from_secs(if quick { 3 } else { 10 }),
            repeat: 1,
            latency_clients: 10,
            loads: vec![25, 50, 75],
            members: 100,
            connections: if quick { 1_000 } else { 10_000 },
            idle: Duration::from_secs(if quick { 10 } else { 30 }),
            lossy_messages: if quick { 500 } else { 3_000 },
            rebind_every: Duration::from_secs(if quick { 3 } else { 30 }),
            push: false,
        }
    }
}

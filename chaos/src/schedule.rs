//! The seeded fault schedule: which fault happens when, drawn up front from one seed, so that a run
//! replays exactly (as far as the OS's timing allows) by passing the same `--seed`.
//!
//! Faults run in *lanes* that overlap in time, so several faults are active at once (bad network
//! while the server restarts while a client is killed), but within a lane one fault ends before the
//! next starts:
//! - the network lane: weather (loss 0–30 %, delay + jitter, reorder, duplication), blackholes of
//!   seconds, rebinds (new source ports for every client);
//! - the server lane: SIGKILL + restart, SIGSTOP/SIGCONT pauses, a full disk under the data dir;
//! - the client lane: SIGKILL of a device process while it has sends in flight (restarted on the same
//!   store), SIGSTOP/SIGCONT pauses of a device.
//!
//! Against a cluster ([`ScheduleConfig::nodes`] ≥ 2) the server lane becomes two lanes:
//! - the nodes lane: SIGKILL + restart of one node, SIGSTOP/SIGCONT of one node;
//! - the Redis lane: SIGKILL of `redis-server` and a restart on the same AOF after a while, and at most
//!   one `FLUSHALL` (all history lost: an epoch change the checker accepts only as announced), in the
//!   last third of the fault phase only: groups are not re-created after a loss, so an earlier one
//!   would leave the rest of the run, and its mid-run member removal, without groups.
//!
//! The lanes overlap, so a node may die while Redis is down. Each lane draws from its own RNG, so a
//! single-node schedule is the same whatever the cluster lanes would draw.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_proxy::DirectionFaults;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Bad network for a while: every field applies in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Weather {
    /// Loss probability in percent (0–30).
    pub loss_pct: u32,
    /// Fixed delay in milliseconds.
    pub delay_ms: u64,
    /// Random extra delay in milliseconds (reorders on its own).
    pub jitter_ms: u64,
    /// Probability in percent that a datagram is held back behind later ones.
    pub reorder_pct: u32,
    /// Probability in percent that a datagram is sent twice.
    pub duplicate_pct: u32,
}

impl Weather {
    /// The report names of the active components.
    pub fn kinds(&self) -> Vec<&'static str> {
        [
            (self.loss_pct > 0, "loss"),
            (self.delay_ms > 0 || self.jitter_ms > 0, "delay_jitter"),
            (self.reorder_pct > 0, "reorder"),
            (self.duplicate_pct > 0, "duplicate"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    /// The proxy's settings for one direction.
    pub fn faults(&self) -> DirectionFaults {
        DirectionFaults {
            loss: f64::from(self.loss_pct) / 100.0,
            delay: Duration::from_millis(self.delay_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            reorder: f64::from(self.reorder_pct) / 100.0,
            duplicate: f64::from(self.duplicate_pct) / 100.0,
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Bad network for a while.
    Weather(Weather),
    /// Nothing passes in either direction.
    Blackhole,
    /// Every client flow gets a new source port (NAT rebinding / network switch).
    Rebind,
    /// SIGKILL of the server, then a restart on the same data dir and port.
    ServerKill,
    /// SIGSTOP of the server, SIGCONT after the fault's duration.
    ServerPause,
    /// The server's data dir is full for the fault's duration.
    DiskFull,
    /// SIGKILL of a device process (sends in flight), restarted on the same store after the duration.
    ClientKill {
        /// Index of the device in the scenario.
        device: usize,
    },
    /// SIGSTOP of a device process, SIGCONT after the duration.
    ClientPause {
        /// Index of the device in the scenario.
        device: usize,
    },
    /// SIGKILL of one cluster node, then a restart on the same ports.
    NodeKill {
        /// Index of the node.
        node: usize,
    },
    /// SIGSTOP of one cluster node, SIGCONT after the duration.
    NodePause {
        /// Index of the node.
        node: usize,
    },
    /// SIGKILL of `redis-server`, restarted on the same AOF after the duration.
    RedisKill,
    /// `FLUSHALL`: Redis loses everything.
    Flushall,
}

impl Fault {
    /// The names this fault is counted under in the report (weather counts each active component).
    pub fn kinds(&self) -> Vec<&'static str> {
        match self {
            Fault::Weather(weather) => weather.kinds(),
            Fault::Blackhole => vec!["blackhole"],
            Fault::Rebind => vec!["rebind"],
            Fault::ServerKill => vec!["server_kill"],
            Fault::ServerPause => vec!["server_pause"],
            Fault::DiskFull => vec!["disk_full"],
            Fault::ClientKill { .. } => vec!["client_kill"],
            Fault::ClientPause { .. } => vec!["client_pause"],
            Fault::NodeKill { .. } => vec!["node_kill"],
            Fault::NodePause { .. } => vec!["node_pause"],
            Fault::RedisKill => vec!["redis_kill"],
            Fault::Flushall => vec!["flushall"],
        }
    }
}

/// Which lane a fault runs in; faults of one lane never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Proxy faults.
    Network,
    /// Server process and disk faults.
    Server,
    /// Device process faults.
    Clients,
    /// Cluster node process faults.
    Nodes,
    /// The cluster's `redis-server`: kills and FLUSHALL.
    Redis,
}

/// A fault at a time, for a duration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// Start, in milliseconds after the fault phase began.
    pub at_ms: u64,
    /// How long it lasts (0 for instant faults such as a rebind).
    pub duration_ms: u64,
    /// The lane.
    pub lane: Lane,
    /// What happens.
    pub fault: Fault,
}

/// What the schedule may contain and how dense it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// Length of the fault phase.
    pub duration: Duration,
    /// Devices in the scenario (client faults pick one).
    pub devices: usize,
    /// Whether disk-full faults can be injected (a size-limited data dir exists).
    pub disk_full: bool,
    /// Quiet time between two faults of the server lane, in milliseconds (uniform in the range).
    pub server_gap_ms: (u64, u64),
    /// Quiet time between two faults of the client lane.
    pub client_gap_ms: (u64, u64),
    /// Quiet time between two faults of the network lane.
    pub network_gap_ms: (u64, u64),
    /// Nodes of a cluster target (0 or 1: a single node, no cluster lanes).
    pub nodes: usize,
    /// Quiet time between two faults of the Redis lane (cluster only).
    pub redis_gap_ms: (u64, u64),
    /// Chance in percent that a Redis fault is a FLUSHALL rather than a kill.
    pub flushall_pct: u32,
}

/// Draws the whole schedule from `seed`. The same seed and config give the same schedule.
pub fn plan(seed: u64, config: &ScheduleConfig) -> Vec<Planned> {
    let end = config.duration.as_millis() as u64;
    let mut out = Vec::new();
    let cluster = config.nodes >= 2;
    // One RNG per lane, so enabling a lane (disk full, a cluster) does not shift the others' draws.
    for (lane, mix) in [
        (Lane::Network, 0x006e_6574_776f_726b_u64),
        (Lane::Server, 0x7365_7276_6572u64),
        (Lane::Clients, 0x636c_6965_6e74u64),
        (Lane::Nodes, 0x006e_6f64_6573_u64),
        (Lane::Redis, 0x0072_6564_6973_u64),
    ] {
        let in_use = match lane {
            Lane::Network | Lane::Clients => true,
            Lane::Server => !cluster,
            Lane::Nodes | Lane::Redis => cluster,
        };
        if !in_use {
            continue;
        }
        let mut rng = StdRng::seed_from_u64(seed ^ mix);
        let gap = match lane {
            Lane::Network => config.network_gap_ms,
            Lane::Server | Lane::Nodes => config.server_gap_ms,
            Lane::Clients => config.client_gap_ms,
            Lane::Redis => config.redis_gap_ms,
        };
        let mut at = rng.random_range(gap.0..=gap.1);
        let mut flushed = false;
        // Bounded: every step moves `at` forward by at least the minimum gap (checked > 0 below).
        while at < end {
            let Some((mut fault, mut duration_ms)) = draw(lane, &mut rng, config) else {
                break;
            };
            if fault == Fault::Flushall && (flushed || at < end / 3 * 2) {
                (fault, duration_ms) = (Fault::RedisKill, redis_down_ms(&mut rng));
            }
            flushed |= fault == Fault::Flushall;
            out.push(Planned {
                at_ms: at,
                duration_ms,
                lane,
                fault,
            });
            at += duration_ms + rng.random_range(gap.0.max(1)..=gap.1.max(1));
        }
    }
    out.sort_by_key(|p| (p.at_ms, p.lane));
    out
}

fn draw(lane: Lane, rng: &mut StdRng, config: &ScheduleConfig) -> Option<(Fault, u64)> {
    Some(match lane {
        Lane::Network => match rng.random_range(0..10) {
            0..=5 => (
                Fault::Weather(Weather {
                    loss_pct: rng.random_range(0..=30),
                    delay_ms: rng.random_range(0..=40),
                    jitter_ms: rng.random_range(0..=30),
                    reorder_pct: rng.random_range(0..=10),
                    duplicate_pct: rng.random_range(0..=10),
                }),
                rng.random_range(2_000..=8_000),
            ),
            6..=7 => (Fault::Blackhole, rng.random_range(1_000..=4_000)),
            _ => (Fault::Rebind, 0),
        },
        Lane::Server => {
            let choices: &[Fault] = if config.disk_full {
                &[Fault::ServerKill, Fault::ServerPause, Fault::DiskFull]
            } else {
                &[Fault::ServerKill, Fault::ServerPause]
            };
            let fault = choices[rng.random_range(0..choices.len())].clone();
            let duration = match fault {
                Fault::ServerKill => 0,
                Fault::ServerPause => rng.random_range(500..=3_000),
                _ => rng.random_range(2_000..=5_000),
            };
            (fault, duration)
        }
        Lane::Clients => {
            if config.devices == 0 {
                return None;
            }
            let device = rng.random_range(0..config.devices);
            if rng.random_bool(0.5) {
                (Fault::ClientKill { device }, rng.random_range(200..=2_000))
            } else {
                (Fault::ClientPause { device }, rng.random_range(500..=3_000))
            }
        }
        Lane::Nodes => {
            let node = rng.random_range(0..config.nodes);
            if rng.random_bool(0.5) {
                (Fault::NodeKill { node }, 0)
            } else {
                (Fault::NodePause { node }, rng.random_range(500..=3_000))
            }
        }
        Lane::Redis => {
            if rng.random_range(0..100) < config.flushall_pct {
                (Fault::Flushall, 0)
            } else {
                (Fault::RedisKill, redis_down_ms(rng))
            }
        }
    })
}

/// How long Redis stays down after a kill.
fn redis_down_ms(rng: &mut StdRng) -> u64 {
    rng.random_range(200..=3_000)
}

/// How many faults of each kind a schedule holds.
pub fn count_kinds<'a>(faults: impl IntoIterator<Item = &'a Fault>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for fault in faults {
        for kind in fault.kinds() {
            *counts.entry(kind.to_owned()).or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn config(disk_full: bool) -> ScheduleConfig {
        ScheduleConfig {
            duration: Duration::from_secs(90),
            devices: 6,
            disk_full,
            server_gap_ms: (6_000, 12_000),
            client_gap_ms: (4_000, 9_000),
            network_gap_ms: (1_000, 4_000),
            nodes: 0,
            redis_gap_ms: (5_000, 10_000),
            flushall_pct: 25,
        }
    }

    fn cluster(nodes: usize) -> ScheduleConfig {
        ScheduleConfig {
            nodes,
            ..config(false)
        }
    }

    #[test]
    fn a_cluster_swaps_the_server_lane_for_node_and_redis_lanes() {
        let single = plan(11, &config(false));
        let clustered = plan(11, &cluster(3));
        let lanes = |s: &[Planned]| s.iter().map(|p| p.lane).collect::<BTreeSet<_>>();
        assert_eq!(
            lanes(&single),
            [Lane::Network, Lane::Server, Lane::Clients].into()
        );
        assert_eq!(
            lanes(&clustered),
            [Lane::Network, Lane::Clients, Lane::Nodes, Lane::Redis].into()
        );
        // The shared lanes draw the same faults either way.
        let shared = |s: &[Planned]| {
            s.iter()
                .filter(|p| matches!(p.lane, Lane::Network | Lane::Clients))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(shared(&single), shared(&clustered));
        for p in &clustered {
            if let Fault::NodeKill { node } | Fault::NodePause { node } = p.fault {
                assert!(node < 3);
            }
        }
        let kinds = (0..20)
            .flat_map(|seed| plan(seed, &cluster(2)))
            .flat_map(|p| p.fault.kinds())
            .collect::<BTreeSet<_>>();
        for kind in ["node_kill", "node_pause", "redis_kill", "flushall"] {
            assert!(kinds.contains(kind), "{kind} never drawn");
        }
        // At most one FLUSHALL, in the last third.
        for seed in 0..20 {
            let flushes: Vec<u64> = plan(seed, &cluster(2))
                .iter()
                .filter(|p| p.fault == Fault::Flushall)
                .map(|p| p.at_ms)
                .collect();
            assert!(flushes.len() <= 1, "{flushes:?}");
            assert!(flushes.iter().all(|&at| at >= 60_000), "{flushes:?}");
        }
        // No FLUSHALL when its chance is 0.
        let no_flush = ScheduleConfig {
            flushall_pct: 0,
            ..cluster(2)
        };
        assert!((0..20).all(|seed| plan(seed, &no_flush)
            .iter()
            .all(|p| p.fault != Fault::Flushall)));
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        assert_eq!(plan(42, &config(true)), plan(42, &config(true)));
        assert_ne!(plan(42, &config(true)), plan(43, &config(true)));
    }

    #[test]
    fn lanes_do_not_overlap_and_stay_inside_the_phase() {
        let schedule = plan(7, &config(true));
        assert!(schedule.iter().all(|p| p.at_ms < 90_000));
        let clustered = plan(7, &cluster(3));
        for (schedule, lane) in [
            (&schedule, Lane::Network),
            (&schedule, Lane::Server),
            (&schedule, Lane::Clients),
            (&clustered, Lane::Nodes),
            (&clustered, Lane::Redis),
        ] {
            let mine: Vec<_> = schedule.iter().filter(|p| p.lane == lane).collect();
            assert!(mine.len() >= 3, "{lane:?}: {}", mine.len());
            for pair in mine.windows(2) {
                assert!(pair[0].at_ms + pair[0].duration_ms < pair[1].at_ms);
            }
        }
    }

    #[test]
    fn disk_full_only_when_enabled_and_devices_in_range() {
        for seed in 0..20 {
            let schedule = plan(seed, &config(false));
            assert!(schedule.iter().all(|p| p.fault != Fault::DiskFull));
            assert!(schedule.iter().all(|p| match p.fault {
                Fault::ClientKill { device } | Fault::ClientPause { device } => device < 6,
                _ => true,
            }));
        }
        let any_disk_full = (0..20).any(|seed| {
            plan(seed, &config(true))
                .iter()
                .any(|p| p.fault == Fault::DiskFull)
        });
        assert!(any_disk_full);
    }

    #[test]
    fn weather_counts_each_active_component() {
        let weather = Fault::Weather(Weather {
            loss_pct: 10,
            delay_ms: 0,
            jitter_ms: 5,
            reorder_pct: 0,
            duplicate_pct: 3,
        });
        let counts = count_kinds([&weather, &Fault::Rebind, &Fault::Rebind]);
        assert_eq!(counts.get("loss"), Some(&1));
        assert_eq!(counts.get("delay_jitter"), Some(&1));
        assert_eq!(counts.get("duplicate"), Some(&1));
        assert_eq!(counts.get("reorder"), None);
        assert_eq!(counts.get("rebind"), Some(&2));
    }
}

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
//! A cluster target would add lanes (node kills, redis kills) without touching the others.

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
}

/// Draws the whole schedule from `seed`. The same seed and config give the same schedule.
pub fn plan(seed: u64, config: &ScheduleConfig) -> Vec<Planned> {
    let end = config.duration.as_millis() as u64;
    let mut out = Vec::new();
    // One RNG per lane, so enabling a lane (disk full) does not shift the others' draws.
    for (lane, mix) in [
        (Lane::Network, 0x006e_6574_776f_726b_u64),
        (Lane::Server, 0x7365_7276_6572u64),
        (Lane::Clients, 0x636c_6965_6e74u64),
    ] {
        let mut rng = StdRng::seed_from_u64(seed ^ mix);
        let gap = match lane {
            Lane::Network => config.network_gap_ms,
            Lane::Server => config.server_gap_ms,
            Lane::Clients => config.client_gap_ms,
        };
        let mut at = rng.random_range(gap.0..=gap.1);
        // Bounded: every step moves `at` forward by at least the minimum gap (checked > 0 below).
        while at < end {
            let Some((fault, duration_ms)) = draw(lane, &mut rng, config) else {
                break;
            };
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
    })
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
    use super::*;

    fn config(disk_full: bool) -> ScheduleConfig {
        ScheduleConfig {
            duration: Duration::from_secs(90),
            devices: 6,
            disk_full,
            server_gap_ms: (6_000, 12_000),
            client_gap_ms: (4_000, 9_000),
            network_gap_ms: (1_000, 4_000),
        }
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
        for lane in [Lane::Network, Lane::Server, Lane::Clients] {
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

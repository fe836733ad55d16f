//! Deciding that a peer is dead, as pure state: probe outcomes and lease sightings go in with the time
//! they happened, verdicts come out. The watcher task only probes and obeys.
//!
//! A peer is declared dead after `failures` consecutive failed probes spanning at least `min_silence`
//! (one lost probe on a loaded machine must not kill a node), or at once when its lease is gone from
//! Redis (it stopped renewing for a whole TTL, or left).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tuning of the failure detector.
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    /// Consecutive failed probes before a peer is dead.
    pub failures: u32,
    /// Least time between the first failed probe of a run and the verdict.
    pub min_silence: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            failures: 3,
            min_silence: Duration::from_millis(400),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    failed: u32,
    first_failure: Option<Instant>,
}

/// The failure detector over all peers.
#[derive(Debug, Default)]
pub struct PeerHealth {
    config: HealthConfig,
    peers: HashMap<String, Peer>,
}

/// A verdict about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep watching.
    Alive,
    /// Declare the peer dead: release its sessions and lease. `silent_for` is the time since its first
    /// failed probe (zero when the lease vanished).
    Dead {
        /// Time since the first failed probe of the run that killed it.
        silent_for: Duration,
    },
}

impl PeerHealth {
    /// A detector with `config`.
    pub fn new(config: HealthConfig) -> Self {
        PeerHealth {
            config,
            peers: HashMap::new(),
        }
    }

    /// Records a probe of `peer` at `now`; returns the verdict.
    pub fn probed(&mut self, peer: &str, ok: bool, now: Instant) -> Verdict {
        let state = self.peers.entry(peer.to_owned()).or_insert(Peer {
            failed: 0,
            first_failure: None,
        });
        if ok {
            *state = Peer {
                failed: 0,
                first_failure: None,
            };
            return Verdict::Alive;
        }
        state.failed += 1;
        let first = *state.first_failure.get_or_insert(now);
        let silent_for = now.saturating_duration_since(first);
        if state.failed >= self.config.failures && silent_for >= self.config.min_silence {
            self.peers.remove(peer);
            Verdict::Dead { silent_for }
        } else {
            Verdict::Alive
        }
    }

    /// The peer's lease is gone from Redis: dead now.
    pub fn lease_gone(&mut self, peer: &str) -> Verdict {
        self.peers.remove(peer);
        Verdict::Dead {
            silent_for: Duration::ZERO,
        }
    }

    /// Forgets peers that are no longer registered.
    pub fn retain(&mut self, registered: &[String]) {
        self.peers.retain(|p, _| registered.iter().any(|r| r == p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn dead_only_after_enough_failures_over_enough_time() {
        let t0 = Instant::now();
        let mut h = PeerHealth::new(HealthConfig {
            failures: 3,
            min_silence: 400 * MS,
        });
        assert_eq!(h.probed("b", false, t0), Verdict::Alive);
        assert_eq!(h.probed("b", false, t0 + 200 * MS), Verdict::Alive);
        // Three failures, but within 400 ms of the first: still alive.
        assert_eq!(h.probed("b", false, t0 + 300 * MS), Verdict::Alive);
        assert_eq!(
            h.probed("b", false, t0 + 450 * MS),
            Verdict::Dead {
                silent_for: 450 * MS
            }
        );
        // After a verdict the run starts over.
        assert_eq!(h.probed("b", false, t0 + 500 * MS), Verdict::Alive);
    }

    #[test]
    fn one_success_resets_the_run() {
        let t0 = Instant::now();
        let mut h = PeerHealth::new(HealthConfig {
            failures: 2,
            min_silence: Duration::ZERO,
        });
        assert_eq!(h.probed("b", false, t0), Verdict::Alive);
        assert_eq!(h.probed("b", true, t0 + MS), Verdict::Alive);
        assert_eq!(h.probed("b", false, t0 + 2 * MS), Verdict::Alive);
        assert!(matches!(
            h.probed("b", false, t0 + 3 * MS),
            Verdict::Dead { .. }
        ));
        // Peers are independent.
        assert_eq!(h.probed("c", false, t0 + 3 * MS), Verdict::Alive);
    }

    #[test]
    fn a_vanished_lease_is_death_at_once() {
        let mut h = PeerHealth::default();
        assert_eq!(
            h.lease_gone("b"),
            Verdict::Dead {
                silent_for: Duration::ZERO
            }
        );
    }
}

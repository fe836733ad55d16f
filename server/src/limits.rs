//! Per-source admission limits (FERRY-HARDEN-1..3): connections per source and handshakes per second
//! per source, where a source is an IPv4 address or an IPv6 /64 (one subscriber usually owns a whole
//! /64, so per-address limits alone would not limit an IPv6 flooder at all).
//!
//! The limiter is pure and takes `now`, so the accept loop calls it with `Instant::now()` and the tests
//! with a hand-moved clock. Its memory is bounded: at most `max_sources` sources are tracked; idle ones
//! (no connection, full handshake bucket) are pruned when the table is full, at most once a second so a
//! flood of distinct spoofed sources cannot turn every accept into a full scan.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits, as configured in `[hardening]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SourceLimits {
    /// Connections (accepted and not yet closed) per source.
    pub(crate) max_connections: u32,
    /// New handshakes per second per source (token bucket; the burst is one second's worth).
    pub(crate) handshakes_per_sec: u32,
    /// Sources tracked at once.
    pub(crate) max_sources: usize,
}

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The source already holds `max_connections` connections.
    #[error("too many connections from this source")]
    Connections,
    /// The source started more than `handshakes_per_sec` handshakes in the last second.
    #[error("too many handshakes per second from this source")]
    HandshakeRate,
    /// `max_sources` sources are tracked and none is idle.
    #[error("too many distinct sources tracked")]
    SourceTable,
}

/// The key a source is counted under: the IPv4 address, or the upper 64 bits of an IPv6 address.
/// An IPv4-mapped IPv6 address counts as its IPv4 address (dual-stack sockets report those).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// An IPv6 /64 prefix.
    V6(u64),
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug)]
struct SourceState {
    connections: u32,
    /// Handshake tokens left; refilled at `handshakes_per_sec`, capped at that.
    tokens: f64,
    refilled: Instant,
}

/// Per-source connection and handshake-rate limiter.
#[derive(Debug)]
pub(crate) struct SourceLimiter {
    limits: SourceLimits,
    sources: HashMap<SourceKey, SourceState>,
    last_prune: Option<Instant>,
}

/// How often a full table may be scanned for idle sources.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

impl SourceLimiter {
    /// An empty limiter.
    pub(crate) fn new(limits: SourceLimits) -> Self {
        SourceLimiter {
            limits,
            sources: HashMap::new(),
            last_prune: None,
        }
    }

    /// Admits a new handshake from `ip` at `now`: takes a handshake token and a connection slot, or
    /// refuses without changing anything the source holds. Every `Ok` must be paired with one
    /// [`SourceLimiter::release`] when the connection ends.
    pub(crate) fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let key = SourceKey::from(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= self.limits.max_sources {
            self.prune(now);
            if self.sources.len() >= self.limits.max_sources {
                return Err(Refusal::SourceTable);
            }
        }
        let rate = f64::from(self.limits.handshakes_per_sec);
        let state = self.sources.entry(key).or_insert(SourceState {
            connections: 0,
            tokens: rate,
            refilled: now,
        });
        refill(state, rate, now);
        if state.connections >= self.limits.max_connections {
            return Err(Refusal::Connections);
        }
        if state.tokens < 1.0 {
            return Err(Refusal::HandshakeRate);
        }
        state.tokens -= 1.0;
        state.connections += 1;
        Ok(())
    }

    /// Gives back the connection slot an earlier `admit` of `ip` took.
    pub(crate) fn release(&mut self, ip: IpAddr) {
        if let Some(state) = self.sources.get_mut(&SourceKey::from(ip)) {
            state.connections = state.connections.saturating_sub(1);
        }
    }

    /// Sources tracked now.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Forgets sources that hold nothing: no connection and a full bucket (so forgetting them
    /// changes no future decision).
    fn prune(&mut self, now: Instant) {
        if self
            .last_prune
            .is_some_and(|last| now.saturating_duration_since(last) < PRUNE_INTERVAL)
        {
            return;
        }
        self.last_prune = Some(now);
        let rate = f64::from(self.limits.handshakes_per_sec);
        self.sources.retain(|_, state| {
            refill(state, rate, now);
            state.connections > 0 || state.tokens < rate
        });
    }
}

fn refill(state: &mut SourceState, rate: f64, now: Instant) {
    let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
    state.tokens = (state.tokens + elapsed * rate).min(rate);
    state.refilled = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_connections: u32, handshakes_per_sec: u32, max_sources: usize) -> SourceLimiter {
        SourceLimiter::new(SourceLimits {
            max_connections,
            handshakes_per_sec,
            max_sources,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_per_source_are_capped_and_released() {
        let mut l = limiter(2, 100, 10);
        let t = Instant::now();
        let a = ip("10.0.0.1");
        assert_eq!(l.admit(a, t), Ok(()));
        assert_eq!(l.admit(a, t), Ok(()));
        assert_eq!(l.admit(a, t), Err(Refusal::Connections));
        // Another source is not affected.
        assert_eq!(l.admit(ip("10.0.0.2"), t), Ok(()));
        l.release(a);
        assert_eq!(l.admit(a, t), Ok(()));
    }

    #[test]
    fn handshake_rate_refills_with_time() {
        let mut l = limiter(1000, 3, 10);
        let t = Instant::now();
        let a = ip("192.0.2.7");
        for _ in 0..3 {
            assert_eq!(l.admit(a, t), Ok(()));
        }
        assert_eq!(l.admit(a, t), Err(Refusal::HandshakeRate));
        // A third of a second later one token is back (3 per second), and only one.
        let later = t + Duration::from_millis(340);
        assert_eq!(l.admit(a, later), Ok(()));
        assert_eq!(l.admit(a, later), Err(Refusal::HandshakeRate));
        // Releasing connections does not give handshake tokens back.
        l.release(a);
        assert_eq!(l.admit(a, later), Err(Refusal::HandshakeRate));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let mut l = limiter(1, 100, 10);
        let t = Instant::now();
        assert_eq!(l.admit(ip("2001:db8:1:2::1"), t), Ok(()));
        // Same /64, different interface id: the same source.
        assert_eq!(
            l.admit(ip("2001:db8:1:2:ffff::9"), t),
            Err(Refusal::Connections)
        );
        // Next /64: another source.
        assert_eq!(l.admit(ip("2001:db8:1:3::1"), t), Ok(()));
        assert_eq!(l.admit(ip("198.51.100.1"), t), Ok(()));
        assert_eq!(
            l.admit(ip("::ffff:198.51.100.1"), t),
            Err(Refusal::Connections)
        );
    }

    #[test]
    fn the_table_is_bounded_and_idle_sources_are_pruned_at_most_once_a_second() {
        let mut l = limiter(10, 1, 2);
        let t = Instant::now();
        assert_eq!(l.admit(ip("10.0.0.1"), t), Ok(()));
        assert_eq!(l.admit(ip("10.0.0.2"), t), Ok(()));
        // Full, and both sources hold a connection: nothing to prune.
        assert_eq!(l.admit(ip("10.0.0.3"), t), Err(Refusal::SourceTable));
        assert_eq!(l.tracked(), 2);
        l.release(ip("10.0.0.1"));
        // Released, but its bucket is not full yet, and the last prune was just now.
        assert_eq!(l.admit(ip("10.0.0.3"), t), Err(Refusal::SourceTable));
        // Two seconds on: 10.0.0.1 is idle with a full bucket and is forgotten.
        let later = t + Duration::from_secs(2);
        assert_eq!(l.admit(ip("10.0.0.3"), later), Ok(()));
        assert_eq!(l.tracked(), 2);
        // 10.0.0.2 still holds its connection.
        assert_eq!(l.admit(ip("10.0.0.4"), later), Err(Refusal::SourceTable));
    }
}

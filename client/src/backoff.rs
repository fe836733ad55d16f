//! Reconnect and retry delays: capped exponential backoff with "full jitter".
//!
//! Full jitter (a uniformly random delay between zero and the exponential cap) spreads the reconnects of
//! many clients that lost the same server at the same moment, so a restarted node is not hit by a
//! synchronized wave. The random source is passed in, so tests are deterministic.

use std::time::Duration;

use rand::Rng;

/// Backoff tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Cap of the first delay.
    pub initial: Duration,
    /// Largest cap; the exponential growth stops here.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// Backoff state: how many attempts failed in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A backoff with no failed attempt yet.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff { config, attempt: 0 }
    }

    /// Failed attempts in a row so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the delay after `attempt` failures: `min(max, initial * 2^attempt)`.
    pub fn cap(&self, attempt: u32) -> Duration {
        // 2^20 × 100 ms is far beyond any sane cap; stop doubling there to avoid overflow.
        let factor = 1u32 << attempt.min(20);
        self.config
            .initial
            .saturating_mul(factor)
            .min(self.config.max)
    }

    /// Records a failure and returns how long to wait before the next attempt: uniform in `[0, cap]`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let cap = self.cap(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let cap_ms = cap.as_millis() as u64;
        Duration::from_millis(rng.random_range(0..=cap_ms))
    }

    /// A success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn caps_double_until_the_maximum() {
        let b = Backoff::new(BackoffConfig::default());
        assert_eq!(b.cap(0), Duration::from_millis(100));
        assert_eq!(b.cap(1), Duration::from_millis(200));
        assert_eq!(b.cap(6), Duration::from_millis(6400));
        assert_eq!(b.cap(7), Duration::from_secs(10));
        assert_eq!(b.cap(1000), Duration::from_secs(10));
    }

    #[test]
    fn delays_are_jittered_within_the_cap_and_reset_restarts() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(BackoffConfig::default());
        let mut seen = std::collections::HashSet::new();
        for attempt in 0..12 {
            let cap = b.cap(attempt);
            let delay = b.next_delay(&mut rng);
            assert!(delay <= cap, "attempt {attempt}: {delay:?} > {cap:?}");
            seen.insert(delay);
        }
        assert!(seen.len() > 6, "full jitter must not produce a fixed delay");
        assert_eq!(b.attempt(), 12);
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }
}

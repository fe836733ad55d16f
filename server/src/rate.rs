//! Token-bucket rate limiting, pure (every call takes `now`), plus a per-user registry of buckets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.rate <= 0.0 {
            Err(Duration::from_secs(3600))
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// One bucket per user, shared by all of the user's connections so opening more connections does not
/// raise the limit. Bounded: buckets that are full again are forgotten when the map grows large.
#[derive(Debug)]
pub(crate) struct UserRateLimiter {
    rate: u32,
    burst: u32,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

/// Above this many tracked users, idle (refilled) buckets are pruned.
const PRUNE_ABOVE: usize = 100_000;

impl UserRateLimiter {
    /// A limiter granting each user `rate` sends per second with bursts of `burst`.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        UserRateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `user`, or returns how long to wait.
    pub(crate) fn check(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() > PRUNE_ABOVE {
            let refill =
                Duration::from_secs_f64(f64::from(self.burst) / f64::from(self.rate.max(1)));
            buckets.retain(|_, b| now.saturating_duration_since(b.updated) < refill);
        }
        if let Some(bucket) = buckets.get_mut(user) {
            return bucket.try_take(now);
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let result = bucket.try_take(now);
        buckets.insert(user.to_owned(), bucket);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, now);
        for _ in 0..3 {
            bucket.try_take(now).unwrap();
        }
        let wait = bucket.try_take(now).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(bucket.try_take(now + Duration::from_millis(100)).is_ok());
        assert!(bucket.try_take(now + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn users_have_separate_buckets() {
        let now = Instant::now();
        let limiter = UserRateLimiter::new(1, 1);
        assert!(limiter.check("alice", now).is_ok());
        assert!(limiter.check("alice", now).is_err());
        assert!(limiter.check("bob", now).is_ok());
    }
}

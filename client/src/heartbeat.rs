//! Heartbeat timing of one session: when to send the next Heartbeat and when silence means the
//! connection is dead. Pure state; every call takes `now`.
//!
//! QUIC's own keep-alives keep NAT bindings open, but only an answered Heartbeat proves the *server*
//! (not just its UDP socket) is alive and brings the heads that reveal a lost last message. A Heartbeat
//! unanswered for two intervals means the session is dead: the client reconnects instead of waiting for
//! QUIC's 60 s idle timeout.

use std::time::{Duration, Instant};

/// What the session should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Nothing yet.
    Wait,
    /// Send a Heartbeat now.
    Send,
    /// A Heartbeat went unanswered for two intervals: drop the connection and reconnect.
    Dead,
}

/// Heartbeat timer.
#[derive(Debug, Clone)]
pub struct HeartbeatTimer {
    interval: Duration,
    next_send: Instant,
    oldest_unanswered: Option<Instant>,
}

impl HeartbeatTimer {
    /// Starts a timer when the session starts (Welcome received); the first Heartbeat is due one interval
    /// later.
    pub fn new(interval: Duration, now: Instant) -> Self {
        let interval = interval.max(Duration::from_millis(10));
        HeartbeatTimer {
            interval,
            next_send: now + interval,
            oldest_unanswered: None,
        }
    }

    /// The interval in use.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// What to do at `now`. `Send` also records that a Heartbeat went out.
    pub fn poll(&mut self, now: Instant) -> HeartbeatAction {
        if let Some(sent) = self.oldest_unanswered {
            if now.saturating_duration_since(sent) >= 2 * self.interval {
                return HeartbeatAction::Dead;
            }
        }
        if now >= self.next_send {
            self.next_send = now + self.interval;
            self.oldest_unanswered.get_or_insert(now);
            return HeartbeatAction::Send;
        }
        HeartbeatAction::Wait
    }

    /// A HeartbeatAck arrived: every Heartbeat sent so far counts as answered.
    pub fn on_ack(&mut self) {
        self.oldest_unanswered = None;
    }

    /// When [`HeartbeatTimer::poll`] must be called next.
    pub fn next_deadline(&self) -> Instant {
        match self.oldest_unanswered {
            Some(sent) => self.next_send.min(sent + 2 * self.interval),
            None => self.next_send,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn sends_every_interval_while_answered() {
        let t0 = Instant::now();
        let mut h = HeartbeatTimer::new(10 * SEC, t0);
        assert_eq!(h.poll(t0 + 9 * SEC), HeartbeatAction::Wait);
        assert_eq!(h.next_deadline(), t0 + 10 * SEC);
        assert_eq!(h.poll(t0 + 10 * SEC), HeartbeatAction::Send);
        h.on_ack();
        assert_eq!(h.poll(t0 + 19 * SEC), HeartbeatAction::Wait);
        assert_eq!(h.poll(t0 + 20 * SEC), HeartbeatAction::Send);
        h.on_ack();
        assert_eq!(h.poll(t0 + 45 * SEC), HeartbeatAction::Send);
    }

    #[test]
    fn two_unanswered_intervals_mean_dead() {
        let t0 = Instant::now();
        let mut h = HeartbeatTimer::new(10 * SEC, t0);
        assert_eq!(h.poll(t0 + 10 * SEC), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + 20 * SEC), HeartbeatAction::Send);
        assert_eq!(h.next_deadline(), t0 + 30 * SEC);
        assert_eq!(h.poll(t0 + 29 * SEC), HeartbeatAction::Wait);
        assert_eq!(h.poll(t0 + 30 * SEC), HeartbeatAction::Dead);
    }
}

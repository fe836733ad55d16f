//! Heartbeat timing of one session: when to send the next Heartbeat and when silence means the
//! connection is dead. Pure state; every call takes `now`.
//!
//! QUIC's own keep-alives keep NAT bindings open, but only an answered Heartbeat proves the *server*
//! (not just its UDP socket) is alive and brings the heads that reveal a lost last message. A Heartbeat
//! unanswered for the timeout (two intervals unless set), with no other frame of the session heard
//! meanwhile, means the session is dead: the client reconnects instead of waiting for QUIC's 60 s idle timeout. After a `kill -9` of the server no
//! CONNECTION_CLOSE ever arrives, so this timeout *is* the failover detection time: a client of a
//! cluster sets a short interval and timeout (e.g. 250 ms + 400 ms) to be on another node within a
//! second.
//!
//! A quarter of the timeout into a silence the timer asks for one *probe* ([`HeartbeatAction::Probe`]):
//! a datagram to the server's address from a connected UDP socket. A server process that died on a live
//! host (`kill -9`, a crash, the OOM killer) leaves its port closed, the host answers ICMP port
//! unreachable, and the socket reports it: the client leaves at once instead of waiting for the rest of
//! the timeout. quinn ignores ICMP errors on its own socket, hence a socket of its own. A host that is
//! gone, or a firewall that drops ICMP, answers nothing: the timeout still decides. An idle client costs
//! nothing more: a probe is only sent while a Heartbeat is unanswered.

use std::time::{Duration, Instant};

/// Floor of the interval and the timeout: a zero would make the driver spin.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// What the session should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Nothing yet.
    Wait,
    /// Send a Heartbeat now.
    Send,
    /// A Heartbeat is unanswered for a quarter of the timeout: check once whether the server's port is
    /// closed (see the module docs).
    Probe,
    /// A Heartbeat went unanswered for the timeout: drop the connection and reconnect.
    Dead,
}

/// Heartbeat timer.
#[derive(Debug, Clone)]
pub struct HeartbeatTimer {
    interval: Duration,
    /// How long a Heartbeat may stay unanswered.
    timeout: Duration,
    next_send: Instant,
    oldest_unanswered: Option<Instant>,
    /// The current silence was probed already (one probe per silence).
    probed: bool,
}

impl HeartbeatTimer {
    /// Starts a timer when the session starts (Welcome received); the first Heartbeat is due one interval
    /// later.
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self::with_timeout(interval, 2 * interval, now)
    }

    /// Like [`HeartbeatTimer::new`], declaring the session dead once a Heartbeat stays unanswered for
    /// `timeout` (floored at 10 ms like the interval, against busy loops).
    pub fn with_timeout(interval: Duration, timeout: Duration, now: Instant) -> Self {
        let interval = interval.max(MIN_PERIOD);
        HeartbeatTimer {
            interval,
            timeout: timeout.max(MIN_PERIOD),
            next_send: now + interval,
            oldest_unanswered: None,
            probed: false,
        }
    }

    /// The interval in use.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The timeout in use.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a Heartbeat stays unanswered before the probe (a quarter of the timeout).
    pub fn probe_after(&self) -> Duration {
        (self.timeout / 4).max(MIN_PERIOD)
    }

    /// What to do at `now`. `Send` also records that a Heartbeat went out, `Probe` that the silence was
    /// probed.
    pub fn poll(&mut self, now: Instant) -> HeartbeatAction {
        if let Some(sent) = self.oldest_unanswered {
            let silent = now.saturating_duration_since(sent);
            if silent >= self.timeout {
                return HeartbeatAction::Dead;
            }
            if silent >= self.probe_after() && !self.probed {
                self.probed = true;
                return HeartbeatAction::Probe;
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
        self.probed = false;
    }

    /// Some other frame of this session arrived (a delivery, an ack, a page of history): the server is
    /// alive, only busy. Its HeartbeatAck may be queued behind that traffic on a loaded machine, so the
    /// timeout restarts from what was last heard instead of failing over a live node: silence for the
    /// whole timeout, not a slow HeartbeatAck, is what means dead.
    pub fn on_heard(&mut self, now: Instant) {
        if let Some(since) = &mut self.oldest_unanswered {
            if now > *since {
                *since = now;
                // A new silence starts: it may be probed in its turn.
                self.probed = false;
            }
        }
    }

    /// When [`HeartbeatTimer::poll`] must be called next.
    pub fn next_deadline(&self) -> Instant {
        match self.oldest_unanswered {
            Some(sent) if !self.probed => self.next_send.min(sent + self.probe_after()),
            Some(sent) => self.next_send.min(sent + self.timeout),
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
        assert_eq!(h.next_deadline(), t0 + 15 * SEC, "the probe is due");
        assert_eq!(h.poll(t0 + 20 * SEC), HeartbeatAction::Probe);
        assert_eq!(h.poll(t0 + 20 * SEC), HeartbeatAction::Send);
        assert_eq!(h.next_deadline(), t0 + 30 * SEC);
        assert_eq!(h.poll(t0 + 29 * SEC), HeartbeatAction::Wait);
        assert_eq!(h.poll(t0 + 30 * SEC), HeartbeatAction::Dead);
    }

    #[test]
    fn a_short_timeout_declares_death_before_the_next_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = HeartbeatTimer::with_timeout(ms(250), ms(400), t0);
        assert_eq!(h.poll(t0 + ms(250)), HeartbeatAction::Send);
        h.on_ack();
        assert_eq!(h.poll(t0 + ms(500)), HeartbeatAction::Send);
        // The server died: 100 ms into the silence comes the probe, the next Heartbeat still goes out,
        // and (if the probe found nothing) the verdict comes 400 ms after the first unanswered one, not at
        // the 60 s idle timeout.
        assert_eq!(h.poll(t0 + ms(600)), HeartbeatAction::Probe);
        assert_eq!(h.poll(t0 + ms(600)), HeartbeatAction::Wait);
        assert_eq!(h.poll(t0 + ms(750)), HeartbeatAction::Send);
        assert_eq!(h.next_deadline(), t0 + ms(900));
        assert_eq!(h.poll(t0 + ms(899)), HeartbeatAction::Wait);
        assert_eq!(h.poll(t0 + ms(900)), HeartbeatAction::Dead);
    }

    #[test]
    fn any_frame_heard_postpones_the_verdict() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = HeartbeatTimer::with_timeout(ms(250), ms(400), t0);
        assert_eq!(h.poll(t0 + ms(250)), HeartbeatAction::Send);
        // No HeartbeatAck yet, but deliveries keep arriving: the node is busy, not dead.
        h.on_heard(t0 + ms(600));
        // 400 ms after the unanswered Heartbeat, but only 50 ms after the last frame: not dead.
        assert_eq!(h.poll(t0 + ms(650)), HeartbeatAction::Send);
        assert_eq!(h.next_deadline(), t0 + ms(700), "the new silence's probe");
        assert_eq!(h.poll(t0 + ms(700)), HeartbeatAction::Probe);
        assert_eq!(h.next_deadline(), t0 + ms(900));
        assert_eq!(h.poll(t0 + ms(900)), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + ms(999)), HeartbeatAction::Wait);
        // Then silence for the whole timeout since the last frame heard.
        assert_eq!(h.poll(t0 + ms(1000)), HeartbeatAction::Dead);
    }

    #[test]
    fn a_frame_heard_without_a_heartbeat_out_changes_nothing() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = HeartbeatTimer::with_timeout(ms(250), ms(400), t0);
        h.on_heard(t0 + ms(100));
        assert_eq!(h.next_deadline(), t0 + ms(250));
        assert_eq!(h.poll(t0 + ms(250)), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + ms(649)), HeartbeatAction::Probe);
        assert_eq!(h.poll(t0 + ms(649)), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + ms(650)), HeartbeatAction::Dead);
    }

    #[test]
    fn one_probe_per_silence_none_while_answered() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = HeartbeatTimer::with_timeout(ms(250), ms(400), t0);
        assert_eq!(h.probe_after(), ms(100));
        assert_eq!(h.poll(t0 + ms(250)), HeartbeatAction::Send);
        h.on_ack();
        // Answered within 100 ms: no probe, ever.
        assert_eq!(h.next_deadline(), t0 + ms(500));
        assert_eq!(h.poll(t0 + ms(499)), HeartbeatAction::Wait);
        assert_eq!(h.poll(t0 + ms(500)), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + ms(600)), HeartbeatAction::Probe);
        assert_eq!(
            h.poll(t0 + ms(700)),
            HeartbeatAction::Wait,
            "once per silence"
        );
        // A frame heard ends the silence; the next one may be probed again.
        h.on_heard(t0 + ms(720));
        assert_eq!(h.poll(t0 + ms(750)), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + ms(819)), HeartbeatAction::Wait);
        assert_eq!(h.poll(t0 + ms(820)), HeartbeatAction::Probe);
        h.on_ack();
        assert_eq!(h.poll(t0 + ms(990)), HeartbeatAction::Wait);
    }

    #[test]
    fn zero_periods_are_floored() {
        let t0 = Instant::now();
        let h = HeartbeatTimer::with_timeout(Duration::ZERO, Duration::ZERO, t0);
        assert_eq!(h.interval(), MIN_PERIOD);
        assert_eq!(h.timeout(), MIN_PERIOD);
    }
}

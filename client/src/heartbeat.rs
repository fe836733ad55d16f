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
//! A quarter of the timeout into a silence the timer asks for a *probe* ([`HeartbeatAction::Probe`]):
//! a datagram to the server's address from a connected UDP socket. A server process that died on a live
//! host (`kill -9`, a crash, the OOM killer) leaves its port closed, the host answers ICMP port
//! unreachable, and the socket reports it: the client leaves at once instead of waiting for the rest of
//! the timeout. quinn ignores ICMP errors on its own socket, hence a socket of its own. The probe is
//! repeated every quarter of the timeout while the silence lasts (at most three per silence): one ICMP
//! answer can be lost (hosts rate-limit them, a loaded client may read its socket late), and a single
//! unanswered probe would leave the rest of the timeout in charge. A host that is gone, or a firewall
//! that drops ICMP, answers nothing: the timeout still decides. An idle client costs nothing more: a
//! probe is only sent while a Heartbeat is unanswered, and a live server ignores it.
//!
//! A verdict polled late is not trusted at once. The timer counts time, not what the client could hear:
//! when the client's own runtime was starved (a loaded machine, a long batch of other work), the
//! HeartbeatAck may be sitting in a socket buffer or a channel that nobody has read yet, and a verdict
//! taken then fails a live node over (and, in a failover storm, turns one node's clients into everyone's).
//! So a poll that finds the timeout passed more than half a probe period ago grants the session one
//! *grace* of a probe period, with one more probe: the reader tasks run meanwhile and any answer ends
//! the silence; without one the verdict falls when the grace ends. A poll on time decides at once, so
//! a client that keeps up with its timers detects a dead node exactly as before.

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
    /// A Heartbeat is unanswered for another quarter of the timeout: check whether the server's port
    /// is closed (see the module docs).
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
    /// Probes sent in the current silence (one per quarter of the timeout, see the module docs).
    probes: u32,
    /// The end of the grace granted to a verdict polled late (see the module docs), once per silence.
    grace_until: Option<Instant>,
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
            probes: 0,
            grace_until: None,
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

    /// How long a Heartbeat stays unanswered before the first probe, and the time between probes (a
    /// quarter of the timeout).
    pub fn probe_after(&self) -> Duration {
        (self.timeout / 4).max(MIN_PERIOD)
    }

    /// When the next probe of the current silence is due, if one is: the `n`th probe `n` quarters of
    /// the timeout into it, none at or past the timeout (the verdict is due then).
    fn next_probe(&self) -> Option<Instant> {
        let sent = self.oldest_unanswered?;
        let at = self.probe_after().checked_mul(self.probes + 1)?;
        (at < self.timeout).then(|| sent + at)
    }

    /// What to do at `now`. `Send` also records that a Heartbeat went out, `Probe` that the silence was
    /// probed once more.
    pub fn poll(&mut self, now: Instant) -> HeartbeatAction {
        if let Some(sent) = self.oldest_unanswered {
            let verdict_at = sent + self.timeout;
            if now >= verdict_at {
                match self.grace_until {
                    Some(until) if now >= until => return HeartbeatAction::Dead,
                    // In the grace: Heartbeats still go out below.
                    Some(_) => {}
                    None if now - verdict_at > self.probe_after() / 2 => {
                        self.grace_until = Some(now + self.probe_after());
                        return HeartbeatAction::Probe;
                    }
                    None => return HeartbeatAction::Dead,
                }
            } else if self.next_probe().is_some_and(|at| now >= at) {
                // However late this poll came, one probe now: the next one is a quarter later.
                while self.next_probe().is_some_and(|at| now >= at) {
                    self.probes += 1;
                }
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
        self.probes = 0;
        self.grace_until = None;
    }

    /// Some other frame of this session arrived (a delivery, an ack, a page of history): the server is
    /// alive, only busy. Its HeartbeatAck may be queued behind that traffic on a loaded machine, so the
    /// timeout restarts from what was last heard instead of failing over a live node: silence for the
    /// whole timeout, not a slow HeartbeatAck, is what means dead.
    pub fn on_heard(&mut self, now: Instant) {
        if let Some(since) = &mut self.oldest_unanswered {
            if now > *since {
                *since = now;
                // A new silence starts: it is probed (and may be graced) in its turn.
                self.probes = 0;
                self.grace_until = None;
            }
        }
    }

    /// When [`HeartbeatTimer::poll`] must be called next.
    pub fn next_deadline(&self) -> Instant {
        match self.oldest_unanswered {
            Some(sent) => {
                let verdict = match self.grace_until {
                    Some(until) => until,
                    None => self.next_probe().unwrap_or(sent + self.timeout),
                };
                self.next_send.min(verdict)
            }
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
        assert_eq!(h.next_deadline(), t0 + 15 * SEC, "the first probe is due");
        // A late poll probes once, not once per quarter it missed.
        assert_eq!(h.poll(t0 + 20 * SEC), HeartbeatAction::Probe);
        assert_eq!(h.poll(t0 + 20 * SEC), HeartbeatAction::Send);
        assert_eq!(h.next_deadline(), t0 + 25 * SEC, "the last probe is due");
        assert_eq!(h.poll(t0 + 25 * SEC), HeartbeatAction::Probe);
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
        // The server died: 100 ms into the silence comes the first probe, then one every 100 ms, the
        // next Heartbeat still goes out, and (if no probe found the port closed) the verdict comes
        // 400 ms after the first unanswered one, not at the 60 s idle timeout.
        assert_eq!(h.poll(t0 + ms(600)), HeartbeatAction::Probe);
        assert_eq!(h.poll(t0 + ms(600)), HeartbeatAction::Wait);
        assert_eq!(h.next_deadline(), t0 + ms(700));
        assert_eq!(h.poll(t0 + ms(700)), HeartbeatAction::Probe);
        assert_eq!(h.poll(t0 + ms(750)), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + ms(800)), HeartbeatAction::Probe);
        assert_eq!(
            h.next_deadline(),
            t0 + ms(900),
            "three probes, then the verdict"
        );
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
        assert_eq!(h.next_deadline(), t0 + ms(800));
        assert_eq!(h.poll(t0 + ms(800)), HeartbeatAction::Probe);
        assert_eq!(h.poll(t0 + ms(900)), HeartbeatAction::Probe);
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
    fn probes_repeat_while_silent_and_stop_when_answered() {
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
            h.poll(t0 + ms(650)),
            HeartbeatAction::Wait,
            "one per quarter"
        );
        // A frame heard ends the silence; the next one is probed from its start.
        h.on_heard(t0 + ms(690));
        assert_eq!(h.poll(t0 + ms(750)), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + ms(789)), HeartbeatAction::Wait);
        assert_eq!(h.poll(t0 + ms(790)), HeartbeatAction::Probe);
        h.on_ack();
        assert_eq!(h.poll(t0 + ms(990)), HeartbeatAction::Wait);
        assert_eq!(
            h.next_deadline(),
            t0 + ms(1000),
            "only the next Heartbeat is due"
        );
    }

    #[test]
    fn a_verdict_polled_late_gets_one_grace() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = HeartbeatTimer::with_timeout(ms(250), ms(400), t0);
        assert_eq!(h.poll(t0 + ms(250)), HeartbeatAction::Send);
        // The client's runtime was starved from 260 ms to 900 ms: the verdict was due at 650 ms and is
        // polled 250 ms late. One more probe and 100 ms for the readers to deliver what came meanwhile.
        assert_eq!(h.poll(t0 + ms(900)), HeartbeatAction::Probe);
        assert_eq!(h.poll(t0 + ms(900)), HeartbeatAction::Send);
        assert_eq!(h.next_deadline(), t0 + ms(1000), "the end of the grace");
        assert_eq!(h.poll(t0 + ms(950)), HeartbeatAction::Wait);
        // The answer was there: the session lives.
        h.on_ack();
        assert_eq!(h.poll(t0 + ms(1000)), HeartbeatAction::Wait);
        assert_eq!(h.next_deadline(), t0 + ms(1150));

        // Starved again, and this time nothing answers: dead when the grace ends, however late that
        // poll is (one grace per silence).
        assert_eq!(h.poll(t0 + ms(1150)), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + ms(1700)), HeartbeatAction::Probe);
        assert_eq!(h.poll(t0 + ms(1700)), HeartbeatAction::Send);
        assert_eq!(h.poll(t0 + ms(1799)), HeartbeatAction::Wait);
        assert_eq!(h.poll(t0 + ms(2500)), HeartbeatAction::Dead);
    }

    #[test]
    fn a_verdict_polled_on_time_is_final() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = HeartbeatTimer::with_timeout(ms(250), ms(400), t0);
        assert_eq!(h.poll(t0 + ms(250)), HeartbeatAction::Send);
        // Due at 650 ms; 50 ms late is within the slack (half a probe period).
        assert_eq!(h.poll(t0 + ms(700)), HeartbeatAction::Dead);
    }

    #[test]
    fn zero_periods_are_floored() {
        let t0 = Instant::now();
        let h = HeartbeatTimer::with_timeout(Duration::ZERO, Duration::ZERO, t0);
        assert_eq!(h.interval(), MIN_PERIOD);
        assert_eq!(h.timeout(), MIN_PERIOD);
    }
}

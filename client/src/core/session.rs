//! The connection life cycle: connecting with backoff over the endpoints (GoAway's first), the session's
//! start (Hello, Sync in early data), the 0-RTT verdict, Welcome, heartbeats and the connect timeout,
//! losing the connection, fatal ends, and the token refresh after UNAUTHENTICATED.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_protocol::frame::{self, frame::Kind};
use ferry_protocol::ErrorCode;

use super::{frame, Core, Phase, Session, Stop, Transmit};
use crate::error::ClientError;
use crate::event::{ConnectionState, Event};
use crate::heartbeat::{HeartbeatAction, HeartbeatTimer};

/// Most endpoints the rotation holds (configured plus learnt from GoAway and Welcome).
pub(super) const MAX_ENDPOINTS: usize = 64;

/// The endpoint of a session that just ended, and how many dials skipped it since (see `rotate`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avoid {
    addr: SocketAddr,
    dials: usize,
}

/// Why a connection ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LostReason {
    /// The peer closed the connection at the application level: its code and reason.
    pub app_close: Option<(ErrorCode, String)>,
    /// A description of the error.
    pub description: String,
}

impl Core {
    /// A connection attempt ended: `Ok((remote, early))` once the control stream is open. Returns false
    /// if the attempt is stale (the driver closes that connection).
    pub(crate) fn handle_established(
        &mut self,
        gen: u64,
        result: Result<(SocketAddr, bool), String>,
        now: Instant,
    ) -> bool {
        self.pass_due = true;
        if !matches!(self.phase, Phase::Connecting { gen: g } if g == gen) {
            return false;
        }
        match result {
            Ok((remote, early)) => {
                self.established(gen, remote, early, now);
                true
            }
            Err(reason) => {
                self.disconnected(reason, false, now);
                false
            }
        }
    }

    fn established(&mut self, gen: u64, remote: SocketAddr, early: bool, now: Instant) {
        let hello = frame(Kind::Hello(frame::Hello {
            version: ferry_protocol::VERSION,
            token: self.token.clone(),
            device_id: self.settings.device_id.clone(),
            client_name: self.settings.client_name.clone(),
            capabilities: vec![ferry_protocol::frames::CAPABILITY_PUSH.to_owned()],
            device_class: self.settings.device_class.clone(),
        }));
        self.phase = Phase::Live(Box::new(Session {
            gen,
            remote,
            streams: Default::default(),
            early,
            zero_rtt_verdict: None,
            welcomed: false,
            push: false,
            announced: false,
            heartbeat: None,
            draining: false,
            sync_request: None,
            started: now,
        }));
        self.control(hello);
        // Sync may precede Welcome (FERRY-HELLO-5) and ride in early data: sent with Hello, it saves the
        // round trip of waiting for Welcome on every reconnect (Pulls and, in early data, Sends follow in
        // the transmit pass).
        self.start_sync();
    }

    /// Sends a Sync from the current token on the live session.
    pub(super) fn start_sync(&mut self) {
        let request_id = self.request_id();
        let since_token = self.sync_token;
        if let Phase::Live(s) = &mut self.phase {
            s.sync_request = Some(request_id);
        }
        self.control(frame(Kind::Sync(frame::Sync {
            request_id,
            since_token,
            limit: 0,
        })));
    }

    /// The server's verdict on the session's early data.
    pub(crate) fn handle_zero_rtt(&mut self, gen: u64, accepted: bool) {
        self.pass_due = true;
        let Some(session) = self.session(gen) else {
            return;
        };
        session.zero_rtt_verdict = Some(accepted);
        if accepted {
            self.announce(gen);
            return;
        }
        // Everything sent in early data is lost, and the streams opened then are unusable: start the
        // session over (Hello, Sync, resend) on a *new* connection to the same server. Not on the same
        // one: on rejection quinn numbers outgoing streams from 0 again, so a conversation stream the
        // driver opens before it hears the verdict takes stream 0, where the server expects Hello
        // (PROTOCOL_ERROR, and the Send on it rejected). This happens on every failover to another
        // node, whose ticket keys differ; a fresh connection has no such window.
        tracing::debug!("0-RTT rejected; replaying over a new connection");
        let remote = self.live_remote();
        self.outbox.on_connection_lost();
        let lost = self.inbox.on_connection_lost();
        self.fail_history(lost);
        self.transmits.push_back(Transmit::Close {
            reason: "0-RTT rejected",
        });
        self.gen += 1;
        let gen = self.gen;
        self.phase = Phase::Connecting { gen };
        match remote {
            Some(remote) => self.transmits.push_back(Transmit::Dial {
                gen,
                endpoint: remote.to_string(),
            }),
            None => self.start_connecting(),
        }
    }

    /// The connection of session `gen` ended.
    pub(crate) fn handle_connection_lost(&mut self, gen: u64, lost: LostReason, now: Instant) {
        self.pass_due = true;
        if self.session(gen).is_none() {
            return;
        }
        if let Some((code, reason)) = lost.app_close {
            match code {
                ErrorCode::SESSION_REPLACED => return self.fatal(ConnectionState::Replaced),
                // Revoked by an operator: stop, as for SESSION_REPLACED; only the user or app reconnects (FERRY-HARDEN-7).
                ErrorCode::TOKEN_REVOKED => {
                    return self.fatal(ConnectionState::AuthFailed {
                        reason: format!("tokens revoked: {reason}"),
                    })
                }
                ErrorCode::UNAUTHENTICATED => return self.auth_failed(reason),
                ErrorCode::UNSUPPORTED_VERSION => {
                    return self.fatal(ConnectionState::Disconnected {
                        reason: format!("server does not speak ferry/1: {reason}"),
                    })
                }
                ErrorCode::SHUTTING_DOWN => {
                    return self.disconnected(format!("server shutting down: {reason}"), false, now)
                }
                _ => {}
            }
        }
        self.disconnected(lost.description, false, now);
    }

    /// The probe of session `gen` found the server's port closed (ICMP port unreachable): the server
    /// process is gone, so the client leaves now, without backoff, instead of at the heartbeat timeout.
    pub(crate) fn handle_port_closed(&mut self, gen: u64, now: Instant) {
        self.pass_due = true;
        if self.session(gen).is_some() {
            self.disconnected(
                "server port closed (ICMP port unreachable)".into(),
                true,
                now,
            );
        }
    }

    /// The token refresher answered.
    pub(crate) fn handle_token_refreshed(&mut self, result: Result<String, String>, now: Instant) {
        self.pass_due = true;
        if !matches!(self.phase, Phase::Connecting { .. }) {
            return;
        }
        match result {
            Ok(token) => {
                self.token = token;
                self.phase = Phase::Offline { retry_at: now };
            }
            Err(reason) => self.fatal(ConnectionState::AuthFailed { reason }),
        }
    }

    /// A frame of session `gen` arrived at `now`: any frame proves the node alive, so it postpones the
    /// heartbeat verdict (see [`HeartbeatTimer::on_heard`]). False if `gen` is not the live session.
    pub(super) fn heard_from(&mut self, gen: u64, now: Instant) -> bool {
        let Some(session) = self.session(gen) else {
            return false;
        };
        if let Some(h) = session.heartbeat.as_mut() {
            h.on_heard(now);
        }
        true
    }

    /// Time passed: reconnect, give up a session without Welcome, heartbeats, send timeouts, the end of
    /// a GoAway drain.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.pass_due = true;
        self.last_now = now;
        let connect_timeout = self.settings.connect_timeout;
        let sync_token = self.sync_token;
        match &mut self.phase {
            Phase::Offline { retry_at } if *retry_at <= now && self.stop.is_none() => {
                self.start_connecting();
            }
            Phase::Live(s) if !s.welcomed && now >= s.started + connect_timeout => {
                self.disconnected("no Welcome from the server in time".into(), false, now);
            }
            Phase::Live(s) => {
                // A probe and a Heartbeat may both be due: poll until nothing more is (at most one of
                // each, then `Wait`).
                let mut actions = [HeartbeatAction::Wait; 3];
                if let Some(h) = s.heartbeat.as_mut() {
                    for action in &mut actions {
                        *action = h.poll(now);
                        if matches!(action, HeartbeatAction::Wait | HeartbeatAction::Dead) {
                            break;
                        }
                    }
                }
                let (gen, ready, draining) = (s.gen, s.welcomed || s.early, s.draining);
                for action in actions {
                    match action {
                        HeartbeatAction::Send => {
                            self.control(frame(Kind::Heartbeat(frame::Heartbeat { sync_token })))
                        }
                        HeartbeatAction::Probe => self.transmits.push_back(Transmit::Probe { gen }),
                        HeartbeatAction::Dead => {
                            return self.disconnected("heartbeats unanswered".into(), true, now);
                        }
                        HeartbeatAction::Wait => break,
                    }
                }
                if ready {
                    self.outbox.poll_timeouts(now);
                }
                if draining && self.outbox.in_flight() == 0 {
                    self.disconnected("server asked to go away".into(), true, now);
                }
            }
            _ => {}
        }
    }

    fn start_connecting(&mut self) {
        self.gen += 1;
        let gen = self.gen;
        let endpoint = match self.preferred.pop_front() {
            Some(e) => {
                self.learn_endpoint(&e);
                e
            }
            None => self.rotate(),
        };
        self.phase = Phase::Connecting { gen };
        self.transmits.push_back(Transmit::Dial { gen, endpoint });
    }

    /// An endpoint named by GoAway or Welcome joins the rotation: a client configured with one node only
    /// must still find the cluster when that node (or the one it moved to) fails. Bounded: both name the
    /// cluster's nodes, and past [`MAX_ENDPOINTS`] nothing more is learnt.
    fn learn_endpoint(&mut self, endpoint: &str) {
        let endpoints = &mut self.settings.endpoints;
        if endpoints.len() < MAX_ENDPOINTS && !endpoints.iter().any(|e| e == endpoint) {
            endpoints.push(endpoint.to_owned());
        }
    }

    /// The next endpoint of the configured rotation. Right after a session ended, its address is
    /// skipped until every other endpoint was dialled once: after a `kill -9` the rotation may point
    /// right back at the dead node (e.g. after a GoAway moved the client, or after the first other
    /// node did not answer in time and the rotation wrapped), and a dial to it only fails after the
    /// connect timeout. Skipping it once only sent about half the clients whose first dial timed out
    /// in a failover storm to the dead node next, a second connect timeout in a row. After one round
    /// of the others it is dialled again: a restarted node stays reachable.
    ///
    /// The first dial goes to a *random* other endpoint, and the rotation continues from there: every
    /// client of a killed node would otherwise move to the same next node in its list, one node taking
    /// the whole handshake and resync storm (and, starved, failing its own clients' heartbeats) while
    /// the others idle.
    fn rotate(&mut self) -> String {
        use rand::Rng;
        let endpoints = &self.settings.endpoints;
        let n = endpoints.len();
        if let (Some(avoid), true) = (self.avoid.take(), n > 1) {
            let others: Vec<usize> = (0..n)
                .filter(|&i| endpoints[i].parse::<SocketAddr>().ok() != Some(avoid.addr))
                .collect();
            if avoid.dials < others.len() {
                let i = if avoid.dials == 0 {
                    others[self.rng.random_range(0..others.len())]
                } else {
                    // The rotation's next endpoint that is not the dead one (bounded: n positions).
                    let start = self.next_endpoint % n;
                    let mut next = (0..n).map(|k| (start + k) % n);
                    next.find(|i| others.contains(i)).unwrap_or(others[0])
                };
                self.next_endpoint = i + 1;
                self.avoid = Some(Avoid {
                    dials: avoid.dials + 1,
                    ..avoid
                });
                return endpoints[i].clone();
            }
        }
        let e = endpoints[self.next_endpoint % n].clone();
        self.next_endpoint += 1;
        e
    }

    /// Answers history requests whose Pull lost its stream.
    pub(super) fn fail_history(&mut self, ids: Vec<u64>) {
        for id in ids {
            if let Some(w) = self.history_waiters.remove(&id) {
                let _ = w.reply.send(Err(ClientError::Disconnected));
            }
        }
    }

    /// The session ended (or an attempt failed): forget streams, requeue in-flight work, schedule the
    /// next attempt (at once, or with backoff).
    pub(super) fn disconnected(&mut self, reason: String, immediate: bool, now: Instant) {
        if let Phase::Live(s) = &self.phase {
            self.avoid = Some(Avoid {
                addr: s.remote,
                dials: 0,
            });
            self.transmits.push_back(Transmit::Close {
                reason: "reconnecting",
            });
        }
        self.outbox.on_connection_lost();
        let lost = self.inbox.on_connection_lost();
        self.fail_history(lost);
        for (_, reply) in self.control_waiters.drain() {
            let _ = reply.send(Err(ClientError::Disconnected));
        }
        for (_, reply) in self.push_waiters.drain() {
            let _ = reply.send(Err(ClientError::Disconnected));
        }
        for request in self.deferred_history.drain(..) {
            let _ = request.reply.send(Err(ClientError::Disconnected));
        }
        let delay = if immediate {
            Duration::ZERO
        } else {
            self.backoff.next_delay(&mut self.rng)
        };
        tracing::info!(%reason, ?delay, "disconnected");
        self.phase = Phase::Offline {
            retry_at: now + delay,
        };
        self.effects
            .events
            .push(Event::Connection(ConnectionState::Disconnected { reason }));
    }

    /// Stops for good: no reconnect.
    pub(super) fn fatal(&mut self, state: ConnectionState) {
        if matches!(self.phase, Phase::Live(_)) {
            self.transmits.push_back(Transmit::Close { reason: "" });
        }
        self.stop = Some(Stop::Fatal(state));
    }

    /// UNAUTHENTICATED: refresh the token once (if a refresher is set) and reconnect, else stop.
    pub(super) fn auth_failed(&mut self, reason: String) {
        if self.settings.refresher.is_none() || self.refreshed_token {
            return self.fatal(ConnectionState::AuthFailed { reason });
        }
        self.refreshed_token = true;
        if matches!(self.phase, Phase::Live(_)) {
            self.transmits.push_back(Transmit::Close { reason: "" });
        }
        self.outbox.on_connection_lost();
        self.gen += 1;
        self.phase = Phase::Connecting { gen: self.gen };
        self.transmits.push_back(Transmit::RefreshToken);
    }

    /// Welcome: adopt the announced limits, start heartbeats and Sync, send queued group requests.
    pub(super) fn on_welcome(&mut self, gen: u64, w: frame::Welcome, now: Instant) {
        if self.user_id.as_deref() != Some(w.user_id.as_str()) {
            if self.user_id.is_some() {
                tracing::warn!(old = ?self.user_id, new = %w.user_id, "store belonged to another user");
            }
            self.user_id = Some(w.user_id.clone());
            self.store_work
                .push_back(super::StoreWork::SetUserId(w.user_id.clone()));
        }
        self.store_epoch = w.store_epoch;
        let push = w
            .capabilities
            .iter()
            .any(|c| c == ferry_protocol::frames::CAPABILITY_PUSH);
        if let Some(s) = self.session(gen) {
            s.push = push;
        }
        // FERRY-HELLO-5: adopt the announced limits, zero fields meaning the defaults.
        let limits = ferry_protocol::limits::effective(w.limits.as_ref());
        self.transmits.push_back(Transmit::MaxFrameSize {
            gen,
            size: limits.max_frame_size as usize,
        });
        self.outbox
            .set_max_in_flight(limits.max_inflight_sends as usize);
        self.stats.max_body_size = limits.max_body_size as usize;
        self.inbox
            .set_recent_window(u64::from(limits.recent_window));
        self.inbox
            .set_pull_limits(limits.max_pull_page, limits.max_inflight_sends as usize);
        // FERRY-HB-1: a Heartbeat at least every `heartbeat_interval_ms` (0 means the default 25 s). The
        // server's value is taken as is: raising it (as a 1 s floor did) would reveal a lost last message
        // later than the server intends. `HeartbeatTimer` keeps a 10 ms floor against busy loops.
        let announced = match w.heartbeat_interval_ms {
            0 => ferry_protocol::limits::DEFAULT_HEARTBEAT_INTERVAL_MS,
            ms => ms,
        };
        let interval = self
            .settings
            .heartbeat
            .unwrap_or(Duration::from_millis(u64::from(announced)));
        let timeout = self.settings.heartbeat_timeout.unwrap_or(2 * interval);
        self.backoff.reset();
        self.refreshed_token = false;
        // FERRY-HELLO-6: the cluster's other nodes join the rotation, after the configured endpoints,
        // so a client configured with this node only still finds the cluster after a kill -9 of it.
        for endpoint in &w.endpoints {
            self.learn_endpoint(endpoint);
        }
        let Some(session) = self.session(gen) else {
            return;
        };
        session.welcomed = true;
        session.heartbeat = Some(HeartbeatTimer::with_timeout(interval, timeout, now));
        if session.sync_request.is_none() {
            self.start_sync();
        }
        while let Some((id, f)) = self.queued_control.pop_front() {
            if self.control_waiters.contains_key(&id) {
                self.control(f);
            }
        }
        self.announce(gen);
    }

    /// Reports the session as connected once Welcome arrived and, with early data, the server's verdict
    /// on it is known (so `zero_rtt` is the truth, not a hope).
    fn announce(&mut self, gen: u64) {
        let user_id = self.user_id.clone().unwrap_or_default();
        let Some(session) = self.session(gen) else {
            return;
        };
        if session.announced
            || !session.welcomed
            || (session.early && session.zero_rtt_verdict.is_none())
        {
            return;
        }
        session.announced = true;
        let zero_rtt = session.early && session.zero_rtt_verdict == Some(true);
        let endpoint = session.remote;
        self.stats.endpoint = Some(endpoint);
        self.stats.zero_rtt = zero_rtt;
        self.stats.sessions += 1;
        self.effects
            .events
            .push(Event::Connection(ConnectionState::Connected {
                endpoint,
                zero_rtt,
                user_id,
            }));
    }
}

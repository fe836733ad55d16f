//! The driver task: owns the outbox and receive state, the connection and its streams, and the reconnect
//! loop. The [`crate::Client`] talks to it over a bounded request channel; connection tasks report over a
//! bounded inbound channel. Each wake-up handles a batch of inputs, commits their effects to the store in
//! one transaction, and only then resolves receipts, reports events, sends Acks and writes the frames
//! batched per stream.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::frame::{self, frame::Kind, ConversationState};
use ferry_protocol::{codec, ErrorCode, Frame, WindowConfig};
use rand::{rngs::StdRng, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::builder::{AckMode, Settings};
use crate::client::{Client, ClientStats, Events, GroupChange, GroupOp, Reply, Request};
use crate::conn::{self, ConnShared, Established, Inbound, StreamRef, StreamWriter};
use crate::error::{ClientError, SendError, StoreError};
use crate::event::{ConnectionState, Event};
use crate::heartbeat::{HeartbeatAction, HeartbeatTimer};
use crate::inbox::{Arrived, Inbox, PullTag};
use crate::message::{MessageKind, OutgoingMessage, ReceivedMessage, SendReceipt};
use crate::outbox::{ErrorOutcome, Outbox};
use crate::store::{ClientStore, Commit, ConversationRow, KEY_SYNC_TOKEN, KEY_USER_ID};

/// Inputs handled per wake-up before committing, so one store transaction covers many frames.
const MAX_BATCH: usize = 512;
/// Capacity of the inbound channel from the connection tasks.
const INBOUND_CAPACITY: usize = 4096;
/// Page size when re-reporting unacknowledged messages after a restart (manual mode).
const REPLAY_PAGE: usize = 500;
/// Default in-flight limit until Welcome announces one (the spec's default).
const DEFAULT_MAX_INFLIGHT: usize = 256;

/// A send waiting for its answer.
struct PendingSend {
    reply: oneshot::Sender<Result<SendReceipt, SendError>>,
    message: OutgoingMessage,
}

/// A control request waiting for its answer.
enum ControlWaiter {
    Group(Reply<GroupChange>),
}

/// A history request waiting for its PullResult.
struct HistoryWaiter {
    reply: Reply<Vec<ReceivedMessage>>,
    limit: usize,
}

/// One live connection.
struct Session {
    gen: u64,
    conn: quinn::Connection,
    remote: SocketAddr,
    control: StreamWriter,
    streams: HashMap<String, StreamWriter>,
    /// Early data (0-RTT) is in use on this connection.
    early: bool,
    /// The server's verdict on the early data; `None` while unknown.
    zero_rtt_verdict: Option<bool>,
    welcomed: bool,
    /// `Event::Connection(Connected)` was reported (after Welcome and, with early data, the verdict).
    announced: bool,
    /// The connection's accept and datagram tasks report under the gen stored here, and check datagram
    /// sizes against the maximum frame size stored here.
    shared: Arc<ConnShared>,
    heartbeat: Option<HeartbeatTimer>,
    /// GoAway received: send nothing new; reconnect once in-flight sends are answered.
    draining: bool,
    /// Request id of the Sync being paged through.
    sync_request: Option<u64>,
    /// When the session started; without Welcome within the connect timeout it is given up (a 0-RTT
    /// connection to a dead server would otherwise wait for QUIC's idle timeout).
    started: Instant,
}

enum Phase {
    /// Waiting before the next connection attempt.
    Offline { retry_at: Instant },
    /// A connection attempt (or a token refresh) is running.
    Connecting { gen: u64 },
    /// A session exists (maybe before Welcome).
    Live(Box<Session>),
}

enum Stop {
    Shutdown(Option<oneshot::Sender<()>>),
    Fatal(ConnectionState),
}

/// Effects of one wake-up, applied after the store commit.
#[derive(Default)]
struct Effects {
    commit: Commit,
    receipts: Vec<(PendingSend, Result<SendReceipt, SendError>)>,
    events: Vec<Event>,
    stored: Vec<String>,
    history: Vec<(HistoryWaiter, Vec<ReceivedMessage>)>,
}

pub(crate) struct Driver {
    settings: Settings,
    token: String,
    store: Arc<dyn ClientStore>,
    endpoint: quinn::Endpoint,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<Event>,
    stats: watch::Sender<ClientStats>,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound_rx: mpsc::Receiver<Inbound>,
    outbox: Outbox,
    inbox: Inbox,
    sends: HashMap<String, PendingSend>,
    control_waiters: HashMap<u64, ControlWaiter>,
    queued_control: VecDeque<(u64, Frame)>,
    history_waiters: HashMap<u64, HistoryWaiter>,
    phase: Phase,
    gen: u64,
    serials: Arc<AtomicU64>,
    next_request_id: u64,
    sync_token: u64,
    store_epoch: u64,
    user_id: Option<String>,
    backoff: Backoff,
    rng: StdRng,
    next_endpoint: usize,
    preferred: VecDeque<String>,
    refreshed_token: bool,
    max_frame_size: usize,
    effects: Effects,
    stop: Option<Stop>,
    /// Set while a session is restarted on the same connection (0-RTT rejected).
    reopen_cell: Option<Arc<ConnShared>>,
    /// Manual ack mode: conversations whose unacknowledged messages are reported again at start.
    replay: Vec<ConversationRow>,
    /// History requests made while the session's Sync was running: until it ends, a conversation the
    /// store has never seen is unknown and could not be pulled.
    deferred_history: Vec<(String, u64, usize, Reply<Vec<ReceivedMessage>>)>,
}

fn frame(kind: Kind) -> Frame {
    codec::frame(kind)
}

/// Whether the session may send datagrams: only after Welcome and never in early data (FERRY-DGRAM-5).
/// With early data, Welcome alone is not enough: until the server's verdict is known the connection may
/// still be sending 0-RTT packets.
fn datagrams_allowed(welcomed: bool, early: bool, zero_rtt_verdict: Option<bool>) -> bool {
    welcomed && (!early || zero_rtt_verdict.is_some())
}

/// The event a relayed datagram reports, if any. Datagrams count only once the session has its Welcome
/// (FERRY-DGRAM-3) and only for conversations this client knows (FERRY-SEC-8), so they can neither invent
/// conversations nor tell the application about ones it never joined.
fn datagram_event(f: Frame, welcomed: bool, known: impl Fn(&str) -> bool) -> Option<Event> {
    if !welcomed {
        return None;
    }
    match f.kind? {
        Kind::Typing(t) if known(&t.conversation_id) => Some(Event::Typing {
            conversation: t.conversation_id,
            user: t.user_id,
            device: t.device_id,
            active: t.active,
        }),
        Kind::Presence(p) if known(&p.conversation_id) => Some(Event::Presence {
            conversation: p.conversation_id,
            user: p.user_id,
            status: p.status,
        }),
        _ => None,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

fn bind_addr(remote: &SocketAddr) -> SocketAddr {
    let ip: std::net::IpAddr = match (remote.is_ipv4(), remote.ip().is_loopback()) {
        (true, true) => std::net::Ipv4Addr::LOCALHOST.into(),
        (true, false) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        (false, true) => std::net::Ipv6Addr::LOCALHOST.into(),
        (false, false) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}

async fn resolve(endpoint: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = endpoint.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| format!("resolving {endpoint}: {e}"))?
        .next()
        .ok_or_else(|| format!("{endpoint} has no address"))
}

/// Loads the durable state, spawns the driver and returns the handles.
pub(crate) async fn start(
    settings: Settings,
    quic: quinn::ClientConfig,
    store: Arc<dyn ClientStore>,
    event_capacity: usize,
    request_capacity: usize,
) -> Result<(Client, Events), ClientError> {
    // The socket's address family follows the first endpoint; unresolvable now (offline) means IPv4.
    let first = resolve(&settings.endpoints[0])
        .await
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut endpoint = quinn::Endpoint::client(bind_addr(&first))
        .map_err(|e| ClientError::Config(format!("binding a UDP socket: {e}")))?;
    endpoint.set_default_client_config(quic);

    let s = store.clone();
    let (outbox_records, rows, token, user_id) = blocking(move || {
        Ok((
            s.outbox()?,
            s.conversations()?,
            s.get(KEY_SYNC_TOKEN)?,
            s.get(KEY_USER_ID)?,
        ))
    })
    .await?;
    let auto = settings.ack_mode == AckMode::Auto;
    let mut outbox = Outbox::new(settings.outbox, DEFAULT_MAX_INFLIGHT);
    for record in outbox_records {
        outbox.push(record);
    }
    let mut inbox = Inbox::new(WindowConfig::default(), 50, auto);
    for row in &rows {
        inbox.restore(row);
    }

    let (req_tx, req_rx) = mpsc::channel(request_capacity);
    let (ev_tx, ev_rx) = mpsc::channel(event_capacity);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
    let stats = ClientStats {
        outbox: outbox.len(),
        user_id: user_id.clone(),
        ..ClientStats::default()
    };
    let (stats_tx, stats_rx) = watch::channel(stats);
    let client = Client {
        requests: req_tx,
        enqueuer: crate::enqueue::Enqueuer::start(store.clone())?,
        stats: stats_rx,
        device_id: settings.device_id.as_str().into(),
    };
    let driver = Driver {
        token: settings.token.clone(),
        backoff: Backoff::new(settings.backoff),
        settings,
        store,
        endpoint,
        requests: req_rx,
        events: ev_tx,
        stats: stats_tx,
        inbound_tx,
        inbound_rx,
        outbox,
        inbox,
        sends: HashMap::new(),
        control_waiters: HashMap::new(),
        queued_control: VecDeque::new(),
        history_waiters: HashMap::new(),
        phase: Phase::Offline {
            retry_at: Instant::now(),
        },
        gen: 0,
        serials: Arc::new(AtomicU64::new(1)),
        next_request_id: 1,
        sync_token: token.and_then(|t| t.parse().ok()).unwrap_or(0),
        store_epoch: 0,
        user_id,
        rng: StdRng::from_os_rng(),
        next_endpoint: 0,
        preferred: VecDeque::new(),
        refreshed_token: false,
        max_frame_size: codec::DEFAULT_MAX_FRAME_SIZE,
        effects: Effects::default(),
        stop: None,
        reopen_cell: None,
        replay: if auto { Vec::new() } else { rows },
        deferred_history: Vec::new(),
    };
    tokio::spawn(driver.run());
    Ok((client, Events { rx: ev_rx }))
}

enum Wake {
    Inbound(Inbound),
    Request(Option<Request>),
    Timer,
}

impl Driver {
    /// Manual ack mode: messages stored but not confirmed by the application are reported again.
    async fn replay_unacked(&mut self) -> Result<(), StoreError> {
        for row in std::mem::take(&mut self.replay) {
            let mut after = row.app_acked_seq;
            // Bounded: every page advances `after` by at least one seq, up to contiguous_seq.
            while after < row.contiguous_seq {
                let (s, conv, epoch) = (self.store.clone(), row.conversation.clone(), row.epoch);
                let page = blocking(move || s.messages(&conv, epoch, after, REPLAY_PAGE)).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for message in page.into_iter().filter(|m| m.seq <= row.contiguous_seq) {
                    self.report_message(message);
                }
                // Report page by page: the event channel is bounded.
                for event in std::mem::take(&mut self.effects.events) {
                    let _ = self.events.send(event).await;
                }
            }
        }
        Ok(())
    }

    async fn run(mut self) {
        if let Err(e) = self.replay_unacked().await {
            tracing::error!(error = %e, "could not re-report unacknowledged messages");
        }
        // Bounded by the client's lifetime: every iteration waits for an input or a deadline.
        loop {
            let deadline = self.next_deadline();
            let wake = tokio::select! {
                ev = self.inbound_rx.recv() => match ev {
                    Some(ev) => Wake::Inbound(ev),
                    None => Wake::Timer,
                },
                req = self.requests.recv() => Wake::Request(req),
                _ = tokio::time::sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Inbound(ev) => {
                    self.on_inbound(ev).await;
                    for _ in 0..MAX_BATCH {
                        match self.inbound_rx.try_recv() {
                            Ok(ev) => self.on_inbound(ev).await,
                            Err(_) => break,
                        }
                    }
                }
                Wake::Request(Some(req)) => {
                    self.on_request(req).await;
                    for _ in 0..MAX_BATCH {
                        match self.requests.try_recv() {
                            Ok(req) => self.on_request(req).await,
                            Err(_) => break,
                        }
                    }
                }
                Wake::Request(None) => self.stop = Some(Stop::Shutdown(None)),
                Wake::Timer => {}
            }
            self.on_timers().await;
            if let Err(e) = self.apply_effects().await {
                tracing::error!(error = %e, "client store failed; stopping");
                self.stop = Some(Stop::Fatal(ConnectionState::Disconnected {
                    reason: format!("store failed: {e}"),
                }));
            }
            if self.stop.is_some() {
                break;
            }
            self.transmit();
            self.publish_stats();
        }
        self.finish().await;
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut at = far;
        let mut consider = |t: Option<std::time::Instant>| {
            if let Some(t) = t {
                at = at.min(Instant::from_std(t));
            }
        };
        match &self.phase {
            Phase::Offline { retry_at } => consider(Some(retry_at.into_std())),
            Phase::Connecting { .. } => {}
            Phase::Live(session) => {
                if !session.welcomed {
                    consider(Some(
                        (session.started + self.settings.connect_timeout).into_std(),
                    ));
                }
                consider(session.heartbeat.as_ref().map(|h| h.next_deadline()));
                if session.welcomed || session.early {
                    consider(self.outbox.next_deadline());
                    consider(self.inbox.next_deadline());
                }
            }
        }
        at
    }

    // ----- connection life cycle -----

    fn start_connecting(&mut self) {
        self.gen += 1;
        let gen = self.gen;
        let endpoint = match self.preferred.pop_front() {
            Some(e) => e,
            None => {
                let e = self.settings.endpoints[self.next_endpoint % self.settings.endpoints.len()]
                    .clone();
                self.next_endpoint += 1;
                e
            }
        };
        self.phase = Phase::Connecting { gen };
        let quic = self.endpoint.clone();
        let name = self.settings.server_name.clone();
        let timeout = self.settings.connect_timeout;
        let tx = self.inbound_tx.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            match resolve(&endpoint).await {
                Ok(addr) => {
                    let _ = events.try_send(Event::Connection(ConnectionState::Connecting {
                        endpoint: addr,
                    }));
                    conn::dial(quic, addr, name, gen, timeout, tx).await;
                }
                Err(e) => {
                    let _ = tx
                        .send(Inbound::Established {
                            gen,
                            result: Err(e),
                        })
                        .await;
                }
            }
        });
    }

    /// The session ended (or an attempt failed): forget streams, requeue in-flight work, schedule the
    /// next attempt with backoff.
    fn disconnected(&mut self, reason: String, immediate: bool) {
        if let Phase::Live(session) = &self.phase {
            session
                .conn
                .close(quinn::VarInt::from_u32(0), b"reconnecting");
        }
        self.outbox.on_connection_lost();
        for id in self.inbox.on_connection_lost() {
            if let Some(w) = self.history_waiters.remove(&id) {
                let _ = w.reply.send(Err(ClientError::Disconnected));
            }
        }
        for (_, waiter) in self.control_waiters.drain() {
            let ControlWaiter::Group(reply) = waiter;
            let _ = reply.send(Err(ClientError::Disconnected));
        }
        for (.., reply) in self.deferred_history.drain(..) {
            let _ = reply.send(Err(ClientError::Disconnected));
        }
        let delay = if immediate {
            Duration::ZERO
        } else {
            self.backoff.next_delay(&mut self.rng)
        };
        tracing::info!(%reason, ?delay, "disconnected");
        self.phase = Phase::Offline {
            retry_at: Instant::now() + delay,
        };
        self.effects
            .events
            .push(Event::Connection(ConnectionState::Disconnected { reason }));
    }

    fn established(&mut self, gen: u64, est: Established) {
        let Established {
            conn,
            remote,
            control: (send, recv),
            early,
        } = est;
        let shared = match self.reopen_cell.take() {
            // Same connection, new session: its accept and datagram tasks keep running. The new session
            // has no Welcome yet, so the default maximum frame size applies again.
            Some(shared) => {
                shared.gen.store(gen, Ordering::Relaxed);
                shared
                    .max_frame_size
                    .store(codec::DEFAULT_MAX_FRAME_SIZE, Ordering::Relaxed);
                shared
            }
            None => {
                let shared = ConnShared::new(gen);
                conn::spawn_connection_tasks(
                    conn.clone(),
                    shared.clone(),
                    self.serials.clone(),
                    self.max_frame_size,
                    self.inbound_tx.clone(),
                );
                shared
            }
        };
        tokio::spawn(conn::read_loop(
            recv,
            gen,
            StreamRef::Control,
            self.max_frame_size,
            self.inbound_tx.clone(),
        ));
        let mut control = conn::spawn_writer(send, 0);
        control.push(&frame(Kind::Hello(frame::Hello {
            version: ferry_protocol::VERSION,
            token: self.token.clone(),
            device_id: self.settings.device_id.clone(),
            client_name: self.settings.client_name.clone(),
            capabilities: Vec::new(),
            device_class: self.settings.device_class.clone(),
        })));
        let mut session = Session {
            gen,
            conn,
            remote,
            control,
            streams: HashMap::new(),
            early,
            zero_rtt_verdict: None,
            welcomed: false,
            announced: false,
            shared,
            heartbeat: None,
            draining: false,
            sync_request: None,
            started: Instant::now(),
        };
        if early {
            // Sync is idempotent and may ride in early data (the Sends follow in `transmit`).
            self.start_sync(&mut session);
        }
        self.phase = Phase::Live(Box::new(session));
    }

    fn start_sync(&mut self, session: &mut Session) {
        let request_id = self.request_id();
        session.sync_request = Some(request_id);
        session.control.push(&frame(Kind::Sync(frame::Sync {
            request_id,
            since_token: self.sync_token,
            limit: 0,
        })));
    }

    fn request_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id
    }

    fn session(&mut self, gen: u64) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::Live(s) if s.gen == gen => Some(s),
            _ => None,
        }
    }

    // ----- inputs -----

    async fn on_inbound(&mut self, ev: Inbound) {
        match ev {
            Inbound::Established { gen, result } => {
                if !matches!(self.phase, Phase::Connecting { gen: g } if g == gen) {
                    if let Ok(est) = result {
                        est.conn.close(quinn::VarInt::from_u32(0), b"stale");
                    }
                    return;
                }
                match result {
                    Ok(est) => self.established(gen, est),
                    Err(reason) => self.disconnected(reason, false),
                }
            }
            Inbound::ZeroRtt { gen, accepted } => self.on_zero_rtt(gen, accepted),
            Inbound::Frame { gen, stream, frame } => {
                if self.session(gen).is_none() {
                    return;
                }
                match stream {
                    StreamRef::Control => self.on_control(gen, frame).await,
                    StreamRef::Conv { conversation, .. } => {
                        self.on_conversation_frame(gen, &conversation, frame)
                    }
                }
            }
            Inbound::StreamEnded {
                gen,
                stream,
                reason,
            } => self.on_stream_ended(gen, stream, reason),
            Inbound::Accepted {
                gen,
                serial,
                conversation,
                send,
            } => {
                if let Some(session) = self.session(gen) {
                    // A stream of ours for this conversation stays the one we write on.
                    session
                        .streams
                        .entry(conversation)
                        .or_insert_with(|| conn::spawn_writer(send, serial));
                }
            }
            Inbound::Datagram { gen, frame } => {
                if let Some(session) = self.session(gen) {
                    let welcomed = session.welcomed;
                    let inbox = &self.inbox;
                    let event = datagram_event(frame, welcomed, |c| inbox.is_known(c));
                    self.effects.events.extend(event);
                }
            }
            Inbound::ConnectionLost { gen, error } => {
                if self.session(gen).is_some() {
                    self.on_connection_lost(error);
                }
            }
            Inbound::TokenRefreshed { result } => {
                if !matches!(self.phase, Phase::Connecting { .. }) {
                    return;
                }
                match result {
                    Ok(token) => {
                        self.token = token;
                        self.phase = Phase::Offline {
                            retry_at: Instant::now(),
                        };
                    }
                    Err(reason) => self.fatal(ConnectionState::AuthFailed { reason }),
                }
            }
        }
    }

    fn on_zero_rtt(&mut self, gen: u64, accepted: bool) {
        let Some(session) = self.session(gen) else {
            return;
        };
        session.zero_rtt_verdict = Some(accepted);
        if accepted {
            self.announce(gen);
            return;
        }
        // Everything sent in early data is lost, and the streams opened then are unusable: start the
        // session over on the same connection (new control stream, Hello, Sync, resend).
        tracing::debug!("0-RTT rejected; replaying over 1-RTT");
        session.control.abandon();
        for w in session.streams.values() {
            w.abandon();
        }
        let conn = session.conn.clone();
        self.reopen_cell = Some(session.shared.clone());
        self.outbox.on_connection_lost();
        for id in self.inbox.on_connection_lost() {
            if let Some(w) = self.history_waiters.remove(&id) {
                let _ = w.reply.send(Err(ClientError::Disconnected));
            }
        }
        self.gen += 1;
        let gen = self.gen;
        self.phase = Phase::Connecting { gen };
        tokio::spawn(conn::reopen(conn, gen, self.inbound_tx.clone()));
    }

    fn on_connection_lost(&mut self, error: quinn::ConnectionError) {
        if let quinn::ConnectionError::ApplicationClosed(close) = &error {
            let code = ErrorCode(close.error_code.into_inner() as u32);
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            match code {
                ErrorCode::SESSION_REPLACED => return self.fatal(ConnectionState::Replaced),
                ErrorCode::UNAUTHENTICATED => return self.auth_failed(reason),
                ErrorCode::UNSUPPORTED_VERSION => {
                    return self.fatal(ConnectionState::Disconnected {
                        reason: format!("server does not speak ferry/1: {reason}"),
                    })
                }
                ErrorCode::SHUTTING_DOWN => {
                    return self.disconnected(format!("server shutting down: {reason}"), false)
                }
                _ => {}
            }
        }
        self.disconnected(error.to_string(), false);
    }

    fn fatal(&mut self, state: ConnectionState) {
        if let Phase::Live(session) = &self.phase {
            session.conn.close(quinn::VarInt::from_u32(0), b"");
        }
        self.stop = Some(Stop::Fatal(state));
    }

    /// UNAUTHENTICATED: refresh the token once (if a refresher is set) and reconnect, else stop.
    fn auth_failed(&mut self, reason: String) {
        match (&self.settings.refresher, self.refreshed_token) {
            (Some(refresher), false) => {
                self.refreshed_token = true;
                if let Phase::Live(session) = &self.phase {
                    session.conn.close(quinn::VarInt::from_u32(0), b"");
                }
                self.outbox.on_connection_lost();
                self.gen += 1;
                self.phase = Phase::Connecting { gen: self.gen };
                let refresh = refresher();
                let tx = self.inbound_tx.clone();
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(Duration::from_secs(30), refresh).await
                    {
                        Ok(result) => result,
                        Err(_) => Err("token refresh timed out".into()),
                    };
                    let _ = tx.send(Inbound::TokenRefreshed { result }).await;
                });
            }
            _ => self.fatal(ConnectionState::AuthFailed { reason }),
        }
    }

    async fn on_control(&mut self, gen: u64, f: Frame) {
        let Some(kind) = f.kind else { return };
        match kind {
            Kind::Welcome(w) => self.on_welcome(gen, w).await,
            Kind::HeartbeatAck(ack) => {
                if let Some(s) = self.session(gen) {
                    if let Some(h) = s.heartbeat.as_mut() {
                        h.on_ack();
                    }
                }
                for state in &ack.changed {
                    self.on_conversation_state(state);
                }
                if ack.has_more {
                    let sync_running = self.session(gen).is_some_and(|s| s.sync_request.is_some());
                    if !sync_running {
                        let mut session = self.take_session();
                        self.start_sync(&mut session);
                        self.phase = Phase::Live(session);
                    }
                } else if ack.sync_token != 0
                    && self.session(gen).is_some_and(|s| s.sync_request.is_none())
                {
                    // Tokens are opaque (FERRY-ID-6): the latest answer's token is adopted, never the
                    // "larger" one. A running Sync sets the token itself when it completes.
                    self.sync_token = ack.sync_token;
                    self.effects.commit.sync_token = Some(ack.sync_token);
                }
            }
            Kind::SyncResult(r) => {
                let ours = self
                    .session(gen)
                    .is_some_and(|s| s.sync_request == Some(r.request_id));
                if !ours {
                    return;
                }
                for state in &r.conversations {
                    self.on_conversation_state(state);
                }
                // The answer to a Sync from our token: its next_token is the one to continue from, whatever
                // its value (tokens are opaque, FERRY-ID-6).
                self.sync_token = r.next_token;
                self.effects.commit.sync_token = Some(r.next_token);
                let mut session = self.take_session();
                let synced = !r.has_more;
                if synced {
                    session.sync_request = None;
                } else {
                    self.start_sync(&mut session);
                }
                self.phase = Phase::Live(session);
                if synced {
                    for (conversation, after_seq, limit, reply) in
                        std::mem::take(&mut self.deferred_history)
                    {
                        self.history(conversation, after_seq, limit, reply).await;
                    }
                }
            }
            Kind::GroupResult(r) => {
                self.inbox.learn(&r.conversation_id);
                if let Some(ControlWaiter::Group(reply)) =
                    self.control_waiters.remove(&r.request_id)
                {
                    let _ = reply.send(Ok(GroupChange {
                        conversation: r.conversation_id,
                        seq: r.seq,
                    }));
                }
            }
            Kind::GoAway(g) => {
                if ErrorCode(g.code) == ErrorCode::SESSION_REPLACED {
                    return self.fatal(ConnectionState::Replaced);
                }
                tracing::info!(reason = %g.reason, endpoints = ?g.endpoints, "server asked to go away");
                self.preferred = g.endpoints.into();
                if let Some(s) = self.session(gen) {
                    s.draining = true;
                }
            }
            Kind::Error(e) => {
                let code = ErrorCode(e.code);
                if e.request_id != 0 {
                    if let Some(ControlWaiter::Group(reply)) =
                        self.control_waiters.remove(&e.request_id)
                    {
                        let _ = reply.send(Err(ClientError::Protocol {
                            code,
                            message: e.message,
                        }));
                    }
                    return;
                }
                match code {
                    ErrorCode::UNAUTHENTICATED => self.auth_failed(e.message),
                    ErrorCode::SESSION_REPLACED => self.fatal(ConnectionState::Replaced),
                    ErrorCode::UNSUPPORTED_VERSION => self.fatal(ConnectionState::Disconnected {
                        reason: format!("server does not speak ferry/1: {}", e.message),
                    }),
                    _ => {
                        tracing::warn!(?code, message = %e.message, "server error on the control stream")
                    }
                }
            }
            other => tracing::debug!(?other, "unexpected frame on the control stream"),
        }
    }

    fn take_session(&mut self) -> Box<Session> {
        match std::mem::replace(
            &mut self.phase,
            Phase::Offline {
                retry_at: Instant::now(),
            },
        ) {
            Phase::Live(s) => s,
            _ => unreachable!("take_session without a live session"),
        }
    }

    async fn on_welcome(&mut self, gen: u64, w: frame::Welcome) {
        if self.user_id.as_deref() != Some(w.user_id.as_str()) {
            if self.user_id.is_some() {
                tracing::warn!(old = ?self.user_id, new = %w.user_id, "store belonged to another user");
            }
            self.user_id = Some(w.user_id.clone());
            let (s, user) = (self.store.clone(), w.user_id.clone());
            if let Err(e) = blocking(move || s.set(KEY_USER_ID, &user)).await {
                tracing::warn!(error = %e, "could not remember the user id");
            }
        }
        self.store_epoch = w.store_epoch;
        // FERRY-HELLO-5: adopt the announced limits, zero fields meaning the defaults.
        let limits = ferry_protocol::limits::effective(w.limits.as_ref());
        if let Some(s) = self.session(gen) {
            s.shared
                .max_frame_size
                .store(limits.max_frame_size as usize, Ordering::Relaxed);
        }
        self.outbox
            .set_max_in_flight(limits.max_inflight_sends as usize);
        self.inbox
            .set_recent_window(u64::from(limits.recent_window));
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
        self.backoff.reset();
        self.refreshed_token = false;
        let mut session = self.take_session();
        debug_assert_eq!(session.gen, gen);
        session.welcomed = true;
        session.heartbeat = Some(HeartbeatTimer::new(interval, Instant::now().into_std()));
        if session.sync_request.is_none() {
            self.start_sync(&mut session);
        }
        while let Some((id, f)) = self.queued_control.pop_front() {
            if self.control_waiters.contains_key(&id) {
                session.control.push(&f);
            }
        }
        self.phase = Phase::Live(session);
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
        self.stats.send_modify(|s| {
            s.connected = true;
            s.endpoint = Some(endpoint);
            s.zero_rtt = zero_rtt;
            s.sessions += 1;
        });
        self.effects
            .events
            .push(Event::Connection(ConnectionState::Connected {
                endpoint,
                zero_rtt,
                user_id,
            }));
    }

    fn on_conversation_state(&mut self, state: &ConversationState) {
        if let Some(epoch) = self.inbox.on_state(state) {
            self.effects.events.push(Event::EpochReset {
                conversation: state.conversation_id.clone(),
                epoch,
            });
        }
    }

    fn on_conversation_frame(&mut self, gen: u64, conversation: &str, f: Frame) {
        let Some(kind) = f.kind else { return };
        match kind {
            Kind::SendAck(ack) => self.on_send_ack(conversation, ack),
            Kind::Deliver(d) => {
                let Some(m) = d.message else { return };
                let message = ReceivedMessage::from_wire(conversation, d.epoch, m);
                let arrived = self.inbox.on_deliver(conversation, d.epoch, message);
                self.arrived(conversation, arrived);
            }
            Kind::PullResult(r) => {
                let (tag, arrived, page) = self.inbox.on_pull_result(conversation, r);
                if let Some(PullTag::History(id)) = tag {
                    self.effects.commit.messages.extend(page.iter().cloned());
                    if let Some(w) = self.history_waiters.remove(&id) {
                        let mut page = page;
                        page.truncate(w.limit);
                        self.effects.history.push((w, page));
                    }
                }
                self.arrived(conversation, arrived);
            }
            Kind::Error(e) => self.on_conversation_error(gen, conversation, e),
            other => tracing::debug!(?other, "unexpected frame on a conversation stream"),
        }
    }

    fn arrived(&mut self, conversation: &str, arrived: Arrived) {
        if let Some(epoch) = arrived.epoch_reset {
            self.effects.events.push(Event::EpochReset {
                conversation: conversation.to_owned(),
                epoch,
            });
        }
        if !arrived.ready.is_empty() {
            self.effects.stored.push(conversation.to_owned());
            for m in arrived.ready {
                self.effects.commit.messages.push(m.clone());
                self.report_message(m);
            }
        }
    }

    /// Queues a message (and its membership change) for the application, unless this device sent it.
    fn report_message(&mut self, m: ReceivedMessage) {
        let own = self.user_id.as_deref() == Some(m.sender.as_str())
            && m.sender_device == self.settings.device_id
            && m.kind == MessageKind::User;
        if own {
            return;
        }
        let membership = m.membership.clone().map(|change| Event::Membership {
            conversation: m.conversation.clone(),
            seq: m.seq,
            change,
        });
        self.effects.events.push(Event::Message(m));
        self.effects.events.extend(membership);
    }

    fn on_send_ack(&mut self, conversation: &str, ack: frame::SendAck) {
        let Some(record) = self.outbox.on_ack(&ack.client_msg_id) else {
            return; // a duplicate answer (resent after a timeout): already settled
        };
        let epoch = self.inbox.epoch(conversation).unwrap_or(self.store_epoch);
        let own = ReceivedMessage {
            conversation: record.conversation.clone(),
            seq: ack.seq,
            epoch,
            sender: self.user_id.clone().unwrap_or_default(),
            sender_device: self.settings.device_id.clone(),
            client_msg_id: record.client_msg_id.clone(),
            body: record.body.clone(),
            server_time_ms: ack.server_time_ms,
            kind: MessageKind::User,
            membership: None,
        };
        self.effects.commit.messages.push(own.clone());
        self.effects
            .commit
            .outbox_done
            .push(record.client_msg_id.clone());
        let ready = self.inbox.on_own_message(own);
        self.arrived(
            conversation,
            Arrived {
                ready,
                epoch_reset: None,
            },
        );
        if let Some(pending) = self.sends.remove(&record.client_msg_id) {
            let receipt = SendReceipt {
                conversation: record.conversation,
                seq: ack.seq,
                client_msg_id: record.client_msg_id,
                duplicate: ack.duplicate,
                server_time_ms: ack.server_time_ms,
            };
            self.effects.receipts.push((pending, Ok(receipt)));
        }
    }

    fn on_conversation_error(&mut self, gen: u64, conversation: &str, e: frame::Error) {
        let code = ErrorCode(e.code);
        let now = Instant::now().into_std();
        let retry_after = (e.retry_after_ms > 0).then(|| Duration::from_millis(e.retry_after_ms));
        let rejected = if !e.client_msg_id.is_empty() {
            match self
                .outbox
                .on_error(&e.client_msg_id, code, retry_after, now)
            {
                ErrorOutcome::Rejected(record) => vec![record],
                ErrorOutcome::RetryAt(_) | ErrorOutcome::Unknown => Vec::new(),
            }
        } else if !code.is_retryable() {
            // The conversation itself is refused (Open answered FORBIDDEN, NOT_FOUND, ...): no Send of it
            // can succeed, so settle them all instead of resending forever.
            let ids: Vec<String> = self
                .outbox
                .records()
                .filter(|r| r.conversation == conversation)
                .map(|r| r.client_msg_id.clone())
                .collect();
            if let Some(s) = self.session(gen) {
                s.streams.remove(conversation);
            }
            ids.iter().filter_map(|id| self.outbox.remove(id)).collect()
        } else {
            Vec::new()
        };
        for record in rejected {
            self.effects
                .commit
                .outbox_done
                .push(record.client_msg_id.clone());
            if let Some(pending) = self.sends.remove(&record.client_msg_id) {
                let message = pending.message.clone();
                self.effects.receipts.push((
                    pending,
                    Err(SendError::Rejected {
                        code,
                        reason: e.message.clone(),
                        message,
                    }),
                ));
            }
        }
    }

    fn on_stream_ended(&mut self, gen: u64, stream: StreamRef, reason: String) {
        match stream {
            StreamRef::Control => {
                if self.session(gen).is_some() {
                    self.disconnected(format!("control stream ended: {reason}"), false);
                }
            }
            StreamRef::Conv {
                serial,
                conversation,
            } => {
                let Some(session) = self.session(gen) else {
                    return;
                };
                if session.streams.get(&conversation).map(|w| w.serial) != Some(serial) {
                    return; // a stream we only read from (server-opened duplicate) or already replaced
                }
                tracing::debug!(%conversation, %reason, "conversation stream ended");
                session.streams.remove(&conversation);
                self.outbox
                    .on_stream_lost(&conversation, Instant::now().into_std());
                for id in self.inbox.on_stream_lost(&conversation) {
                    if let Some(w) = self.history_waiters.remove(&id) {
                        let _ = w.reply.send(Err(ClientError::Disconnected));
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, req: Request) {
        match req {
            Request::Send {
                record,
                reply,
                message,
            } => {
                self.sends
                    .insert(record.client_msg_id.clone(), PendingSend { reply, message });
                self.outbox.push(record);
            }
            Request::Ack { conversation, seq } => {
                self.inbox.app_ack(&conversation, seq);
            }
            Request::Group { op, reply } => {
                let request_id = self.request_id();
                let kind = match op {
                    GroupOp::Create { name, members } => Kind::CreateGroup(frame::CreateGroup {
                        request_id,
                        name,
                        members,
                    }),
                    GroupOp::Add { conversation, user } => Kind::AddMember(frame::AddMember {
                        request_id,
                        conversation_id: conversation,
                        user_id: user,
                    }),
                    GroupOp::Remove { conversation, user } => {
                        Kind::RemoveMember(frame::RemoveMember {
                            request_id,
                            conversation_id: conversation,
                            user_id: user,
                        })
                    }
                };
                self.control_waiters
                    .insert(request_id, ControlWaiter::Group(reply));
                // Group administration is not idempotent: it never rides in early data and waits for
                // Welcome when offline.
                match &mut self.phase {
                    Phase::Live(s) if s.welcomed => s.control.push(&frame(kind)),
                    _ => self.queued_control.push_back((request_id, frame(kind))),
                }
            }
            Request::MarkRead { conversation, seq } => {
                if let Phase::Live(s) = &mut self.phase {
                    if s.welcomed {
                        s.control.push(&frame(Kind::MarkRead(frame::MarkRead {
                            conversation_id: conversation,
                            seq,
                        })));
                    }
                }
            }
            Request::Typing {
                conversation,
                active,
            } => {
                // Typing is unreliable by definition: without a Welcomed 1-RTT session it is dropped, not
                // queued (a stale "typing" signal sent later would be wrong anyway).
                match &self.phase {
                    Phase::Live(s)
                        if datagrams_allowed(s.welcomed, s.early, s.zero_rtt_verdict) =>
                    {
                        let dgram = codec::encode_datagram(&frame(Kind::Typing(frame::Typing {
                            conversation_id: conversation,
                            active,
                            ..Default::default()
                        })));
                        let _ = s.conn.send_datagram(dgram);
                    }
                    _ => tracing::debug!(%conversation, "typing signal dropped: not connected"),
                }
            }
            Request::History {
                conversation,
                after_seq,
                limit,
                reply,
            } => {
                let syncing =
                    matches!(&self.phase, Phase::Live(s) if s.welcomed && s.sync_request.is_some());
                if syncing {
                    self.deferred_history
                        .push((conversation, after_seq, limit, reply));
                } else {
                    self.history(conversation, after_seq, limit, reply).await
                }
            }
            Request::Rebind { reply } => {
                let result = match &self.phase {
                    Phase::Live(s) => std::net::UdpSocket::bind(bind_addr(&s.remote))
                        .and_then(|socket| self.endpoint.rebind(socket))
                        .map_err(|e| ClientError::Unreachable(format!("rebind: {e}"))),
                    _ => Err(ClientError::Unreachable("not connected".into())),
                };
                let _ = reply.send(result);
            }
            Request::Shutdown { reply } => self.stop = Some(Stop::Shutdown(Some(reply))),
        }
    }

    async fn history(
        &mut self,
        conversation: String,
        after_seq: u64,
        limit: usize,
        reply: Reply<Vec<ReceivedMessage>>,
    ) {
        let epoch = self.inbox.epoch(&conversation).unwrap_or(self.store_epoch);
        let (s, conv) = (self.store.clone(), conversation.clone());
        let local = match blocking(move || s.messages(&conv, epoch, after_seq, limit)).await {
            Ok(local) => local,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        // Complete if the page is full and starts right after `after_seq`; a short page is complete when
        // it reaches what the server has.
        let head = self.inbox.known_head(&conversation).unwrap_or(0);
        let starts_right = local.first().is_some_and(|m| m.seq == after_seq + 1);
        let reaches = local.last().map_or(after_seq, |m| m.seq) >= head;
        let complete = starts_right && (local.len() >= limit || reaches);
        let live = matches!(&self.phase, Phase::Live(s) if s.welcomed);
        if complete || !live || !self.inbox.knows(&conversation) || after_seq >= head {
            let _ = reply.send(Ok(local));
            return;
        }
        let id = self.request_id();
        self.inbox
            .pull_sent(&conversation, after_seq, PullTag::History(id));
        self.history_waiters
            .insert(id, HistoryWaiter { reply, limit });
        let pull = frame(Kind::Pull(frame::Pull {
            after_seq,
            limit: limit.min(u32::MAX as usize) as u32,
        }));
        self.stream(&conversation).push(&pull);
    }

    // ----- timers and output -----

    async fn on_timers(&mut self) {
        let now = Instant::now();
        match &mut self.phase {
            Phase::Offline { retry_at } if *retry_at <= now && self.stop.is_none() => {
                self.start_connecting();
            }
            Phase::Live(s) if !s.welcomed && now >= s.started + self.settings.connect_timeout => {
                self.disconnected("no Welcome from the server in time".into(), false);
            }
            Phase::Live(s) => {
                let std_now = now.into_std();
                let action = s
                    .heartbeat
                    .as_mut()
                    .map_or(HeartbeatAction::Wait, |h| h.poll(std_now));
                match action {
                    HeartbeatAction::Send => {
                        s.control.push(&frame(Kind::Heartbeat(frame::Heartbeat {
                            sync_token: self.sync_token,
                        })))
                    }
                    HeartbeatAction::Dead => {
                        self.disconnected("heartbeats unanswered".into(), true);
                        return;
                    }
                    HeartbeatAction::Wait => {}
                }
                if s.welcomed || s.early {
                    self.outbox.poll_timeouts(std_now);
                }
                if s.draining && self.outbox.in_flight() == 0 {
                    self.disconnected("server asked to go away".into(), true);
                }
            }
            _ => {}
        }
    }

    /// Commits the wake-up's effects, then resolves receipts and reports events (never before the
    /// commit: an event or Ack must not promise what a crash could lose).
    async fn apply_effects(&mut self) -> Result<(), StoreError> {
        let mut effects = std::mem::take(&mut self.effects);
        effects.commit.conversations = self.inbox.take_dirty_rows();
        if !effects.commit.is_empty() {
            let s = self.store.clone();
            let commit = std::mem::take(&mut effects.commit);
            blocking(move || s.commit(&commit)).await?;
        }
        for conversation in &effects.stored {
            self.inbox.stored(conversation);
        }
        for (pending, result) in effects.receipts {
            let _ = pending.reply.send(result);
        }
        for (waiter, page) in effects.history {
            let _ = waiter.reply.send(Ok(page));
        }
        for event in effects.events {
            // Backpressure: a full event channel pauses the driver (and so network reads).
            let _ = self.events.send(event).await;
        }
        Ok(())
    }

    /// The stream writer of a conversation, opening the stream if needed. Only call when live.
    fn stream(&mut self, conversation: &str) -> &mut StreamWriter {
        let Phase::Live(session) = &mut self.phase else {
            unreachable!("stream() without a live session")
        };
        if !session.streams.contains_key(conversation) {
            let serial = self
                .serials
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (mut writer, pending) = conn::pending_writer(serial);
            writer.push(&frame(Kind::Open(frame::Open {
                conversation_id: conversation.to_owned(),
            })));
            conn::spawn_open(
                session.conn.clone(),
                session.gen,
                serial,
                conversation.to_owned(),
                pending,
                self.max_frame_size,
                self.inbound_tx.clone(),
            );
            session.streams.insert(conversation.to_owned(), writer);
        }
        session
            .streams
            .get_mut(conversation)
            .expect("inserted above")
    }

    /// Writes what is due: Acks, Pulls, Sends; then one flush per stream.
    fn transmit(&mut self) {
        let (ready, may_send) = match &self.phase {
            Phase::Live(s) => (s.welcomed || s.early, !s.draining),
            _ => return,
        };
        if ready {
            let now = Instant::now().into_std();
            let welcomed = matches!(&self.phase, Phase::Live(s) if s.welcomed);
            if welcomed {
                // Acks are not allowed in early data.
                for (conversation, seq) in self.inbox.poll_acks() {
                    self.stream(&conversation)
                        .push(&frame(Kind::Ack(frame::Ack { seq })));
                }
            }
            for (conversation, pull) in self.inbox.poll_pulls(now) {
                self.stream(&conversation)
                    .push(&frame(Kind::Pull(frame::Pull {
                        after_seq: pull.after_seq,
                        limit: pull.limit,
                    })));
            }
            if may_send {
                for record in self.outbox.poll_transmit(now, |_| true) {
                    let send = frame(Kind::Send(frame::Send {
                        client_msg_id: record.client_msg_id,
                        body: Bytes::clone(&record.body),
                    }));
                    self.stream(&record.conversation).push(&send);
                }
            }
        }
        if let Phase::Live(s) = &mut self.phase {
            s.control.flush();
            for w in s.streams.values_mut() {
                w.flush();
            }
        }
    }

    fn publish_stats(&self) {
        let connected = matches!(&self.phase, Phase::Live(s) if s.announced);
        let (outbox, in_flight, user) = (
            self.outbox.len(),
            self.outbox.in_flight(),
            self.user_id.clone(),
        );
        self.stats.send_if_modified(|s| {
            let before = s.clone();
            s.connected = connected;
            s.outbox = outbox;
            s.in_flight = in_flight;
            s.user_id = user;
            *s != before
        });
    }

    async fn finish(mut self) {
        // From now on `Client::send` fails with Closed instead of writing to an outbox nobody drains.
        self.requests.close();
        let state = match self.stop.take() {
            Some(Stop::Fatal(state)) => Some(state),
            _ => None,
        };
        if let Phase::Live(session) = &self.phase {
            session.conn.close(
                quinn::VarInt::from_u32(ErrorCode::NO_ERROR.0),
                b"client shutdown",
            );
        }
        self.stats.send_modify(|s| s.connected = false);
        // The reason comes before the waiters resolve, so an application that sees a receipt fail with
        // Interrupted finds why (AuthFailed, Replaced) already in its event stream.
        if let Some(state) = state {
            let _ = self.events.send(Event::Connection(state)).await;
        }
        // Resolve waiters: receipts resolve to Interrupted when their sender is dropped.
        self.sends.clear();
        for (_, ControlWaiter::Group(reply)) in self.control_waiters.drain() {
            let _ = reply.send(Err(ClientError::Closed));
        }
        for (.., reply) in self.deferred_history.drain(..) {
            let _ = reply.send(Err(ClientError::Closed));
        }
        // Let the CONNECTION_CLOSE reach the server before the endpoint goes away (bounded).
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        if let Some(Stop::Shutdown(Some(reply))) = self.stop.take() {
            let _ = reply.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typing(conversation: &str) -> Frame {
        frame(Kind::Typing(frame::Typing {
            conversation_id: conversation.into(),
            user_id: "bob".into(),
            device_id: "phone".into(),
            active: true,
        }))
    }

    #[test]
    fn datagrams_are_sent_only_after_welcome_and_never_in_early_data() {
        assert!(!datagrams_allowed(false, false, None));
        assert!(datagrams_allowed(true, false, None));
        // 0-RTT: not before Welcome, and not while the early data's fate is open.
        assert!(!datagrams_allowed(false, true, None));
        assert!(!datagrams_allowed(true, true, None));
        assert!(datagrams_allowed(true, true, Some(true)));
    }

    #[test]
    fn relayed_datagrams_count_only_after_welcome_and_for_known_conversations() {
        let known = |c: &str| c == "d:alice:bob";
        assert_eq!(
            datagram_event(typing("d:alice:bob"), true, known),
            Some(Event::Typing {
                conversation: "d:alice:bob".into(),
                user: "bob".into(),
                device: "phone".into(),
                active: true,
            })
        );
        assert_eq!(datagram_event(typing("d:alice:bob"), false, known), None);
        assert_eq!(datagram_event(typing("d:alice:eve"), true, known), None);
        let presence = |c: &str| {
            frame(Kind::Presence(frame::Presence {
                conversation_id: c.into(),
                user_id: "bob".into(),
                status: 1,
            }))
        };
        assert!(matches!(
            datagram_event(presence("d:alice:bob"), true, known),
            Some(Event::Presence { status: 1, .. })
        ));
        assert_eq!(datagram_event(presence("g:00"), true, known), None);
        // Only Typing and Presence belong in datagrams.
        let heartbeat = frame(Kind::Heartbeat(frame::Heartbeat { sync_token: 1 }));
        assert_eq!(datagram_event(heartbeat, true, |_| true), None);
    }
}

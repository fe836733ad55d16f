//! The client's session logic as a state machine, in the style of `quinn-proto`'s `connection/`: no
//! sockets, no tokio timers, no store calls. Every input that depends on time takes `now`; everything the
//! core wants done comes out of a `poll_*` method, and the driver (`crate::driver`) performs it.
//!
//! Inputs: [`Core::handle_frame`], [`Core::handle_request`], [`Core::handle_timeout`] and the connection
//! events ([`Core::handle_established`], [`Core::handle_zero_rtt`], [`Core::handle_stream_ended`],
//! [`Core::handle_accepted`], [`Core::handle_datagram`], [`Core::handle_connection_lost`],
//! [`Core::handle_token_refreshed`]).
//!
//! Outputs, in the order a wake-up of the driver takes them:
//! 1. [`Core::poll_commit`]: store work (remember the user id, read a history page, commit the wake-up's
//!    writes in one transaction). The driver runs it on the blocking thread and reports back
//!    ([`Core::handle_history_page`], [`Core::committed`]).
//! 2. [`Core::poll_event`]: events for the application, released only by [`Core::committed`] (an event
//!    or Ack must not promise what a crash could lose; receipts resolve there too).
//! 3. [`Core::poll_transmit`]: dials, stream opens and closes, frames per stream, datagrams.
//! 4. [`Core::poll_timeout`]: when to call [`Core::handle_timeout`] next.
//!
//! Files by concern: `session` (connection life cycle, 0-RTT, heartbeats, reconnect), `control` (the
//! control stream), `conversations` (conversation streams, the transmit pass), `requests` (the
//! application's requests), `history` (history pages: store first, then pipelined Pulls).

mod control;
mod conversations;
mod history;
mod requests;
mod session;
mod streams;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use ferry_protocol::{codec, Frame};
use rand::rngs::StdRng;
use tokio::sync::oneshot;

use crate::backoff::Backoff;
use crate::builder::Settings;
use crate::client::{ClientStats, GroupChange, Reply};
use crate::error::{SendError, StoreError};
use crate::event::{ConnectionState, Event};
use crate::inbox::Inbox;
use crate::message::{OutgoingMessage, ReceivedMessage, SendReceipt};
use crate::outbox::Outbox;
use crate::store::Commit;

pub(crate) use session::LostReason;

/// Default in-flight limit until Welcome announces one (the spec's default).
pub(crate) const DEFAULT_MAX_INFLIGHT: usize = 256;

/// Which stream of the session a frame is written on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The control stream.
    Control,
    /// The conversation's stream (opened by [`Transmit::Open`] or accepted from the server).
    Conv(String),
}

/// Something the driver must do on the network. `gen` names the session it belongs to; the driver drops
/// items for a session that is no longer its current one.
#[derive(Debug)]
pub(crate) enum Transmit {
    /// Resolve `endpoint`, report `Connecting`, dial it (0-RTT if possible) and open the control stream;
    /// answer with [`Core::handle_established`].
    Dial { gen: u64, endpoint: String },
    /// Run the token refresher (bounded in time); answer with [`Core::handle_token_refreshed`].
    RefreshToken,
    /// Close the current connection with code 0 and forget it.
    Close { reason: &'static str },
    /// Open a conversation stream; `serial` identifies it in [`Core::handle_stream_ended`].
    Open {
        gen: u64,
        conversation: String,
        serial: u64,
    },
    /// Write a frame (batched: the driver flushes every stream once per wake-up).
    Frame {
        gen: u64,
        target: Target,
        frame: Frame,
    },
    /// Drop the writer of the conversation's stream `serial` (which finishes it).
    Forget {
        gen: u64,
        conversation: String,
        serial: u64,
    },
    /// Send a datagram.
    Datagram { gen: u64, frame: Frame },
    /// The session's maximum frame size for received datagrams (announced in Welcome).
    MaxFrameSize { gen: u64, size: usize },
    /// Check whether the server's UDP port is closed (see `heartbeat`); if it is, answer with
    /// [`Core::handle_port_closed`].
    Probe { gen: u64 },
}

/// Store work the driver runs on the blocking thread.
#[derive(Debug)]
pub(crate) enum StoreWork {
    /// Remember the user id learnt from Welcome (a failure is only logged).
    SetUserId(String),
    /// Read a page of stored messages; answer with [`Core::handle_history_page`].
    ReadHistory {
        id: u64,
        conversation: String,
        epoch: u64,
        after_seq: u64,
        limit: usize,
    },
    /// Write the wake-up's changes in one transaction; then call [`Core::committed`].
    Commit(Commit),
}

/// Why the core stopped.
pub(crate) enum Stop {
    /// The application asked (with a reply to send once the connection is closed) or dropped every
    /// handle.
    Shutdown(Option<oneshot::Sender<()>>),
    /// A final connection state: report it, do not reconnect.
    Fatal(ConnectionState),
}

/// A send waiting for its answer.
struct PendingSend {
    reply: oneshot::Sender<Result<SendReceipt, SendError>>,
    message: OutgoingMessage,
}

/// A history request: waiting for its store read, deferred until Sync ends, or pulling its pages.
struct HistoryRequest {
    conversation: String,
    after_seq: u64,
    limit: usize,
    reply: Reply<Vec<ReceivedMessage>>,
    /// Pages received so far, in seq order.
    collected: Vec<ReceivedMessage>,
    /// The `after_seq` of the next Pull to send.
    next_after: u64,
    /// Pulls sent and not yet answered.
    outstanding: usize,
    /// The conversation's head, once known (from the inbox or a PullResult).
    head: Option<u64>,
}

/// One session (a connection with its control stream, maybe before Welcome).
struct Session {
    gen: u64,
    remote: SocketAddr,
    /// Conversation streams this session writes on, within `max_open_streams`.
    streams: streams::Streams,
    /// Early data (0-RTT) is in use on this connection.
    early: bool,
    /// The server's verdict on the early data; `None` while unknown.
    zero_rtt_verdict: Option<bool>,
    welcomed: bool,
    /// The server acknowledged the `push` capability in Welcome (FERRY-EXT-3).
    push: bool,
    /// `Event::Connection(Connected)` was reported (after Welcome and, with early data, the verdict).
    announced: bool,
    heartbeat: Option<crate::heartbeat::HeartbeatTimer>,
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

/// Effects of one wake-up, released by [`Core::committed`].
#[derive(Default)]
struct Effects {
    commit: Commit,
    receipts: Vec<(PendingSend, Result<SendReceipt, SendError>)>,
    events: Vec<Event>,
    stored: Vec<String>,
    history: Vec<(HistoryRequest, Vec<ReceivedMessage>)>,
}

/// The client's session state machine.
pub(crate) struct Core {
    settings: Settings,
    token: String,
    outbox: Outbox,
    inbox: Inbox,
    sends: HashMap<String, PendingSend>,
    control_waiters: HashMap<u64, Reply<GroupChange>>,
    /// Push requests waiting for their PushResult, by request id.
    push_waiters: HashMap<u64, Reply<ferry_protocol::frame::PushResult>>,
    /// Group requests made without a Welcomed session: sent after the next Welcome.
    queued_control: VecDeque<(u64, Frame)>,
    /// History requests waiting for their PullResult, by request id.
    history_waiters: HashMap<u64, HistoryRequest>,
    /// History requests waiting for their store read, by request id.
    history_reads: HashMap<u64, HistoryRequest>,
    /// History requests made while the session's Sync was running: until it ends, a conversation the
    /// store has never seen is unknown and could not be pulled.
    deferred_history: Vec<HistoryRequest>,
    phase: Phase,
    gen: u64,
    /// Stream serials, shared with the connection tasks that number the streams the server opens.
    serials: Arc<AtomicU64>,
    next_request_id: u64,
    sync_token: u64,
    store_epoch: u64,
    user_id: Option<String>,
    backoff: Backoff,
    rng: StdRng,
    next_endpoint: usize,
    /// Endpoints from the last GoAway, tried before the rotation.
    preferred: VecDeque<String>,
    /// The address of the session that just ended, skipped by the next dials until every other
    /// endpoint was tried once (a killed node would cost a whole connect timeout; see `rotate`).
    avoid: Option<session::Avoid>,
    refreshed_token: bool,
    /// Own messages already in a commit (at their SendAck) but not yet ready in the receive window: they
    /// are not inserted again when they become ready.
    own_stored: HashSet<(String, u64)>,
    effects: Effects,
    store_work: VecDeque<StoreWork>,
    events: VecDeque<Event>,
    transmits: VecDeque<Transmit>,
    /// An input arrived since the last transmit pass (Acks, Pulls and Sends are computed once per
    /// wake-up, after the commit).
    pass_due: bool,
    stats: ClientStats,
    stop: Option<Stop>,
    /// The session whose first flight carried the probe Pulls (`Inbox::probe_pulls`).
    probed_gen: Option<u64>,
    /// The latest `now` an input carried (for inputs without a clock of their own, e.g. store answers).
    last_now: Instant,
}

/// Creates a frame of one kind.
fn frame(kind: ferry_protocol::frame::frame::Kind) -> Frame {
    codec::frame(kind)
}

impl Core {
    /// A core starting offline, due to connect at `now`. `outbox` and `inbox` hold the restored state.
    pub(crate) fn new(
        settings: Settings,
        outbox: Outbox,
        inbox: Inbox,
        sync_token: u64,
        user_id: Option<String>,
        rng: StdRng,
        now: Instant,
    ) -> Self {
        Core {
            token: settings.token.clone(),
            backoff: Backoff::new(settings.backoff),
            stats: ClientStats {
                outbox: outbox.len(),
                user_id: user_id.clone(),
                max_body_size: ferry_protocol::limits::DEFAULTS.max_body_size as usize,
                ..ClientStats::default()
            },
            settings,
            outbox,
            inbox,
            sends: HashMap::new(),
            control_waiters: HashMap::new(),
            push_waiters: HashMap::new(),
            queued_control: VecDeque::new(),
            history_waiters: HashMap::new(),
            history_reads: HashMap::new(),
            deferred_history: Vec::new(),
            phase: Phase::Offline { retry_at: now },
            gen: 0,
            serials: Arc::new(AtomicU64::new(1)),
            next_request_id: 1,
            sync_token,
            store_epoch: 0,
            user_id,
            rng,
            next_endpoint: 0,
            preferred: VecDeque::new(),
            avoid: None,
            refreshed_token: false,
            own_stored: HashSet::new(),
            effects: Effects::default(),
            store_work: VecDeque::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            pass_due: true,
            stop: None,
            probed_gen: None,
            last_now: now,
        }
    }

    /// The settings the core was built with (the driver needs the server name, timeouts, refresher).
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The stream serial counter the driver's connection tasks share.
    pub(crate) fn serials(&self) -> Arc<AtomicU64> {
        self.serials.clone()
    }

    /// The remote address of the live session, if any (for rebinding the socket).
    pub(crate) fn live_remote(&self) -> Option<SocketAddr> {
        match &self.phase {
            Phase::Live(s) => Some(s.remote),
            _ => None,
        }
    }

    /// The monitoring snapshot.
    pub(crate) fn stats(&self) -> ClientStats {
        ClientStats {
            connected: self.stop.is_none() && matches!(&self.phase, Phase::Live(s) if s.announced),
            outbox: self.outbox.len(),
            in_flight: self.outbox.in_flight(),
            user_id: self.user_id.clone(),
            ..self.stats.clone()
        }
    }

    // ----- outputs -----

    /// How many store work items wait (not counting the commit).
    pub(crate) fn queued_store_work(&self) -> usize {
        self.store_work.len()
    }

    /// The next store work. The wake-up's commit comes last, built when asked for.
    pub(crate) fn poll_commit(&mut self) -> Option<StoreWork> {
        if let Some(work) = self.store_work.pop_front() {
            return Some(work);
        }
        if self.commit_can_wait() {
            return None;
        }
        self.effects.commit.conversations = self.inbox.take_dirty_rows();
        if self.effects.commit.is_empty() {
            return None;
        }
        Some(StoreWork::Commit(std::mem::take(&mut self.effects.commit)))
    }

    /// The wake-up's writes are durable (or there were none): release receipts, history pages and
    /// events, and let the inbox acknowledge what was stored.
    pub(crate) fn committed(&mut self) {
        let mut effects = std::mem::take(&mut self.effects);
        // A commit that may wait (see `commit_can_wait`) stays for a later pass.
        self.effects.commit = std::mem::take(&mut effects.commit);
        for conversation in &effects.stored {
            self.inbox.stored(conversation);
        }
        for (pending, result) in effects.receipts {
            let _ = pending.reply.send(result);
        }
        for (request, page) in effects.history {
            let _ = request.reply.send(Ok(page));
        }
        self.events.extend(effects.events);
        self.pass_due = true;
    }

    /// Whether this wake-up's commit may wait for a later one: it holds only bookkeeping (conversation
    /// heads and positions, the sync token) that nothing released with it depends on — no message,
    /// outbox removal, receipt, history page or event but a connection change — and Pulls are in
    /// flight, whose pages bring a commit that carries it. A reconnect's Sync answer then costs no
    /// fsync of its own between the Pulls and their first page. Losing it in a crash is harmless: the
    /// old token and rows make the next Sync report it again.
    fn commit_can_wait(&self) -> bool {
        // Every wake-up asks: the checks that fail on the receive path (messages to store) come
        // first, the walk over the Pulls in flight last.
        let e = &self.effects;
        self.stop.is_none()
            && e.commit.messages.is_empty()
            && e.commit.outbox_done.is_empty()
            && e.receipts.is_empty()
            && e.stored.is_empty()
            && e.history.is_empty()
            && e.events.iter().all(|ev| matches!(ev, Event::Connection(_)))
            && self.inbox.pulls_in_flight() > 0
    }

    /// The store failed: stop, reporting why.
    pub(crate) fn store_failed(&mut self, error: &StoreError) {
        tracing::error!(%error, "client store failed; stopping");
        self.stop = Some(Stop::Fatal(ConnectionState::Disconnected {
            reason: format!("store failed: {error}"),
        }));
    }

    /// The next event for the application (only what a commit released).
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next network action. The first call after an input runs the transmit pass (Acks, Pulls,
    /// Sends); the driver flushes every stream once it got `None`.
    pub(crate) fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.last_now = now;
        if std::mem::take(&mut self.pass_due) && self.stop.is_none() {
            self.transmit_pass(now);
        }
        self.transmits.pop_front()
    }

    /// The next deadline, if any.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        match &self.phase {
            Phase::Offline { retry_at } => consider(Some(*retry_at)),
            Phase::Connecting { .. } => {}
            Phase::Live(session) => {
                if !session.welcomed {
                    consider(Some(session.started + self.settings.connect_timeout));
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

    /// Why the core stopped, once it did. The driver then calls [`Core::close`].
    pub(crate) fn is_stopped(&self) -> bool {
        self.stop.is_some()
    }

    /// Ends the core: the final state to report (if any) and the shutdown reply. Unanswered requests are
    /// answered with `Closed` (receipts resolve to `Interrupted` as their senders drop), after the final
    /// state is reported, so an application that sees a receipt fail finds why already in its events.
    pub(crate) fn close(&mut self) -> (Option<ConnectionState>, Option<oneshot::Sender<()>>) {
        let stop = self.stop.take();
        self.stop = Some(Stop::Shutdown(None));
        match stop {
            Some(Stop::Fatal(state)) => (Some(state), None),
            Some(Stop::Shutdown(reply)) => (None, reply),
            None => (None, None),
        }
    }

    /// Answers every waiting request with `Closed` (after [`Core::close`]'s state was reported).
    pub(crate) fn drop_waiters(&mut self) {
        use crate::error::ClientError;
        self.sends.clear();
        for (_, reply) in self.control_waiters.drain() {
            let _ = reply.send(Err(ClientError::Closed));
        }
        for (_, reply) in self.push_waiters.drain() {
            let _ = reply.send(Err(ClientError::Closed));
        }
        for request in self.deferred_history.drain(..) {
            let _ = request.reply.send(Err(ClientError::Closed));
        }
        for (_, request) in self.history_reads.drain() {
            let _ = request.reply.send(Err(ClientError::Closed));
        }
    }

    // ----- helpers shared by the files of the core -----

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

    fn live(&self) -> Option<&Session> {
        match &self.phase {
            Phase::Live(s) => Some(s),
            _ => None,
        }
    }

    /// Writes a frame on the live session's control stream.
    fn control(&mut self, frame: Frame) {
        if let Phase::Live(s) = &self.phase {
            self.transmits.push_back(Transmit::Frame {
                gen: s.gen,
                target: Target::Control,
                frame,
            });
        }
    }

    /// Writes a frame on the conversation's stream, opening it first if needed and allowed by
    /// `max_open_streams`; otherwise the frame is held until the conversation gets a stream (see
    /// `streams.rs`). Only when live.
    fn stream(&mut self, conversation: &str, frame: Frame) {
        let now = self.last_now;
        let Phase::Live(session) = &mut self.phase else {
            return;
        };
        let gen = session.gen;
        if !session.streams.has(conversation) {
            if !session.streams.can_open() {
                session.streams.hold(conversation, frame);
                return;
            }
            self.open_stream(conversation);
        }
        if let Phase::Live(session) = &mut self.phase {
            session.streams.touch(conversation, now);
        }
        self.transmits.push_back(Transmit::Frame {
            gen,
            target: Target::Conv(conversation.to_owned()),
            frame,
        });
    }

    /// Opens a stream for the conversation on the live session (the caller checked the limit) and writes
    /// its Open frame.
    fn open_stream(&mut self, conversation: &str) {
        let now = self.last_now;
        let Phase::Live(session) = &mut self.phase else {
            return;
        };
        let gen = session.gen;
        let serial = self
            .serials
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        session.streams.opened(conversation, serial, now);
        self.transmits.push_back(Transmit::Open {
            gen,
            conversation: conversation.to_owned(),
            serial,
        });
        let open = self::frame(ferry_protocol::frame::frame::Kind::Open(
            ferry_protocol::frame::Open {
                conversation_id: conversation.to_owned(),
            },
        ));
        self.transmits.push_back(Transmit::Frame {
            gen,
            target: Target::Conv(conversation.to_owned()),
            frame: open,
        });
    }

    /// Opens streams for conversations waiting for a slot (writing what was held for them) and finishes
    /// idle streams to make room for the others.
    fn admit_streams(&mut self) {
        let Phase::Live(session) = &mut self.phase else {
            return;
        };
        let gen = session.gen;
        let (inbox, outbox) = (&self.inbox, &self.outbox);
        let admitted = session
            .streams
            .admit(|c| inbox.has_pulls(c) || outbox.in_flight_on(c));
        for (conversation, serial) in admitted.finish {
            tracing::debug!(%conversation, "finishing an idle stream to stay within max_open_streams");
            self.transmits.push_back(Transmit::Forget {
                gen,
                conversation,
                serial,
            });
        }
        for (conversation, frames) in admitted.open {
            if self.live().is_some_and(|s| !s.streams.has(&conversation)) {
                self.open_stream(&conversation);
            }
            for frame in frames {
                self.stream(&conversation, frame);
            }
        }
    }
}

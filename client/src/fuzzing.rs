//! Feature `fuzzing`: the sans-IO core behind a small public harness, for `fuzz/`'s `client_core`
//! target. Nothing here changes what the client does; it only lets code outside the crate play the
//! driver's part (`crate::driver`) with a fake clock and an in-memory store.
//!
//! A [`Harness`] is one core plus what a driver keeps around it: the fake clock, the streams the core
//! opened (so frames can arrive on them), the messages its commits stored (history reads are answered
//! from them, as the SQLite store would). Inputs are the driver's inputs ([`Harness::frame`],
//! [`Harness::connection_lost`], [`Harness::advance`], application requests...); each is followed by
//! one wake-up ([`Harness::wake`]) exactly as the driver runs it — `handle_timeout`, the store pass,
//! `committed`, the events, the transmits — and the wake-up's events and written frames are returned.
//! Dials are answered at once with an established connection (with or without early data, as
//! [`Harness::set_early`] chose), token refreshes with a fresh token.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::{ErrorCode, Frame, WindowConfig};
use rand::{rngs::StdRng, SeedableRng};
use tokio::sync::oneshot;

use crate::builder::{AckMode, Settings};
use crate::client::Request;
use crate::conn::StreamRef;
use crate::core::{Core, LostReason, StoreWork, Target, Transmit, DEFAULT_MAX_INFLIGHT};
use crate::event::Event;
use crate::inbox::Inbox;
use crate::message::{OutgoingMessage, ReceivedMessage};
use crate::outbox::{Outbox, OutboxConfig};
use crate::store::OutboxRecord;

/// The address every dial "reaches".
const SERVER: &str = "127.0.0.1:7700";
/// Most transmits taken in one wake-up (a core asking for more is looping; the harness stops there).
const MAX_TRANSMITS: usize = 100_000;
/// Most wake-ups one input chains (each answering the dial or refresh the previous one asked for).
const MAX_CHAINED_WAKES: usize = 4;
/// Most stored messages kept for history reads: a long run stays bounded in memory.
const MAX_STORED: usize = 100_000;

/// Which stream a frame arrives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream<'a> {
    /// The control stream.
    Control,
    /// The conversation's stream: the one the core opened, or else one "the server opens" for it.
    Conversation(&'a str),
}

/// What one wake-up produced.
#[derive(Debug, Default)]
pub struct Wake {
    /// Events released to the application, in order.
    pub events: Vec<Event>,
    /// Frames written, with their stream (`None`: the control stream).
    pub frames: Vec<(Option<String>, Frame)>,
}

/// The client core driven by hand (see the module docs).
pub struct Harness {
    core: Core,
    now: Instant,
    /// The live session's gen, once a dial was answered.
    gen: u64,
    /// Whether the next dial is answered with early data.
    early: bool,
    /// Serial of each conversation's current stream on the live session.
    streams: HashMap<String, u64>,
    /// What commits stored, by (conversation, epoch, seq), as the store keeps it.
    stored: BTreeMap<(String, u64, u64), ReceivedMessage>,
    next_outbox_id: i64,
}

impl Harness {
    /// A core with default settings for device `laptop` (auto ack), drawing its randomness from `seed`,
    /// after its first wake-up (which dials and is answered).
    pub fn new(seed: u64) -> Self {
        let settings = Settings {
            endpoints: vec![SERVER.into(), "127.0.0.1:7701".into()],
            server_name: "localhost".into(),
            token: "v1.token".into(),
            refresher: None,
            device_id: "laptop".into(),
            device_class: String::new(),
            client_name: "fuzz".into(),
            ack_mode: AckMode::Auto,
            backoff: crate::backoff::BackoffConfig::default(),
            heartbeat: None,
            heartbeat_timeout: None,
            outbox: OutboxConfig::default(),
            connect_timeout: Duration::from_secs(5),
        };
        let now = Instant::now();
        let outbox = Outbox::new(settings.outbox, DEFAULT_MAX_INFLIGHT);
        let inbox = Inbox::new(WindowConfig::default(), 50, true);
        let rng = StdRng::seed_from_u64(seed);
        let core = Core::new(settings, outbox, inbox, 0, None, rng, now);
        let mut harness = Harness {
            core,
            now,
            gen: 0,
            early: false,
            streams: HashMap::new(),
            stored: BTreeMap::new(),
            next_outbox_id: 1,
        };
        harness.wake();
        harness
    }

    /// True once the core stopped for good (a fatal close); further inputs change nothing.
    pub fn is_stopped(&self) -> bool {
        self.core.is_stopped()
    }

    /// Whether later dials are answered with early data (0-RTT).
    pub fn set_early(&mut self, early: bool) {
        self.early = early;
    }

    /// A frame of the live session arrives on `stream`.
    pub fn frame(&mut self, stream: Stream<'_>, frame: Frame) -> Wake {
        trace(format_args!("in {stream:?}: {frame:?}"));
        let stream = match stream {
            Stream::Control => StreamRef::Control,
            Stream::Conversation(c) => StreamRef::Conv {
                serial: self.stream_serial(c),
                conversation: c.to_owned(),
            },
        };
        self.core.handle_frame(self.gen, stream, frame, self.now);
        self.wake()
    }

    /// A datagram of the live session arrives.
    pub fn datagram(&mut self, frame: Frame) -> Wake {
        self.core.handle_datagram(self.gen, frame);
        self.wake()
    }

    /// The conversation's current stream ended (reset with `code`, or finished when `None`).
    pub fn stream_ended(&mut self, conversation: &str, code: Option<u32>) -> Wake {
        trace(format_args!("stream_ended {conversation} {code:?}"));
        let stream = StreamRef::Conv {
            serial: self.stream_serial(conversation),
            conversation: conversation.to_owned(),
        };
        self.streams.remove(conversation);
        let code = code.map(ErrorCode);
        let reason = "fuzzed stream end".to_owned();
        self.core
            .handle_stream_ended(self.gen, stream, reason, code, self.now);
        self.wake()
    }

    /// The live connection ended: closed by the server with `code`, or lost when `None`.
    pub fn connection_lost(&mut self, code: Option<u32>) -> Wake {
        trace(format_args!("connection_lost {code:?}"));
        let lost = LostReason {
            app_close: code.map(|c| (ErrorCode(c), "fuzzed close".to_owned())),
            description: "fuzzed connection loss".into(),
        };
        self.core.handle_connection_lost(self.gen, lost, self.now);
        self.wake()
    }

    /// The server's verdict on the live session's early data.
    pub fn zero_rtt(&mut self, accepted: bool) -> Wake {
        trace(format_args!("zero_rtt {accepted}"));
        self.core.handle_zero_rtt(self.gen, accepted);
        self.wake()
    }

    /// The probe found the server's port closed.
    pub fn port_closed(&mut self) -> Wake {
        self.core.handle_port_closed(self.gen, self.now);
        self.wake()
    }

    /// The clock moves on by `by`; the wake-up runs the timers that are due.
    pub fn advance(&mut self, by: Duration) -> Wake {
        trace(format_args!("advance {by:?}"));
        self.now += by;
        self.wake()
    }

    /// The clock jumps to the core's next deadline (if it has one), as the driver's sleep would.
    pub fn advance_to_deadline(&mut self) -> Wake {
        if let Some(at) = self.core.poll_timeout() {
            self.now = self.now.max(at);
        }
        self.wake()
    }

    /// The application sends `body` to `conversation` with `client_msg_id` (the outbox write already
    /// durable, as `Client::send` makes it before the core hears of it).
    pub fn send(&mut self, conversation: &str, client_msg_id: &str, body: &[u8]) -> Wake {
        trace(format_args!("send {conversation} {client_msg_id}"));
        let message = OutgoingMessage {
            conversation: conversation.into(),
            client_msg_id: client_msg_id.into(),
            body: Bytes::copy_from_slice(body),
        };
        let record = OutboxRecord::of(&message, self.next_outbox_id, 0);
        self.next_outbox_id += 1;
        // Receipts are not followed: the answer is dropped, as by an application that does not await it.
        let (reply, _) = oneshot::channel();
        let send = Request::Send {
            record,
            reply,
            message,
        };
        self.core.handle_request(send, self.now);
        self.wake()
    }

    /// The application asks for history of `conversation` (store first, then Pulls).
    pub fn history(&mut self, conversation: &str, after_seq: u64, limit: usize) -> Wake {
        trace(format_args!(
            "history {conversation} after {after_seq} limit {limit}"
        ));
        let (reply, _) = oneshot::channel();
        let request = Request::History {
            conversation: conversation.into(),
            after_seq,
            limit,
            reply,
        };
        self.core.handle_request(request, self.now);
        self.wake()
    }

    /// The application marks `conversation` read up to `seq`.
    pub fn mark_read(&mut self, conversation: &str, seq: u64) -> Wake {
        trace(format_args!("mark_read {conversation} {seq}"));
        let request = Request::MarkRead {
            conversation: conversation.into(),
            seq,
        };
        self.core.handle_request(request, self.now);
        self.wake()
    }

    /// The serial of the conversation's current stream; without one, the server opens a stream for it.
    fn stream_serial(&mut self, conversation: &str) -> u64 {
        if let Some(serial) = self.streams.get(conversation) {
            return *serial;
        }
        let serial = self
            .core
            .serials()
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self
            .core
            .handle_accepted(self.gen, serial, conversation.to_owned())
        {
            self.streams.insert(conversation.to_owned(), serial);
        }
        serial
    }

    /// One wake-up of the driver after the inputs (the order of `Driver::run`). A dial or token refresh
    /// the wake-up asked for is answered as the next input, with its own wake-up, as the connection
    /// task's report would be (a bounded number of times: a core that keeps dialling is left dialling).
    pub fn wake(&mut self) -> Wake {
        let mut wake = Wake::default();
        for _ in 0..MAX_CHAINED_WAKES {
            if self.core.is_stopped() {
                break;
            }
            self.core.handle_timeout(self.now);
            self.store_pass();
            while let Some(event) = self.core.poll_event() {
                trace(format_args!("  event {event:?}"));
                wake.events.push(event);
            }
            if self.core.is_stopped() {
                break;
            }
            let mut answer = None;
            for _ in 0..MAX_TRANSMITS {
                let Some(transmit) = self.core.poll_transmit(self.now) else {
                    break;
                };
                answer = self.perform(transmit, &mut wake).or(answer);
            }
            match answer {
                Some(Answer::Dial(gen)) => {
                    self.gen = gen;
                    self.streams.clear();
                    let addr: SocketAddr = SERVER.parse().expect("literal address");
                    self.core
                        .handle_established(gen, Ok((addr, self.early)), self.now);
                }
                Some(Answer::Refresh) => self
                    .core
                    .handle_token_refreshed(Ok("v1.refreshed".into()), self.now),
                None => break,
            }
        }
        wake
    }

    /// The store pass: history reads from what was stored, commits into it.
    fn store_pass(&mut self) {
        for _ in 0..=self.core.queued_store_work() {
            let Some(work) = self.core.poll_commit() else {
                break;
            };
            match work {
                StoreWork::SetUserId(_) => {}
                StoreWork::ReadHistory {
                    id,
                    conversation,
                    epoch,
                    after_seq,
                    limit,
                } => {
                    let from = (conversation.clone(), epoch, after_seq.saturating_add(1));
                    let to = (conversation, epoch, u64::MAX);
                    let page = self
                        .stored
                        .range(from..=to)
                        .take(limit)
                        .map(|(_, m)| m.clone())
                        .collect();
                    self.core.handle_history_page(id, Ok(page));
                }
                StoreWork::Commit(commit) => {
                    for m in commit.messages {
                        if self.stored.len() >= MAX_STORED {
                            self.stored.pop_first();
                        }
                        let key = (m.conversation.clone(), m.epoch, m.seq);
                        // The store ignores rows it already has.
                        self.stored.entry(key).or_insert(m);
                    }
                }
            }
        }
        self.core.committed();
    }

    /// Carries out one transmit the way the driver would, with a network that always connects; a dial
    /// or a token refresh is answered after the wake-up.
    fn perform(&mut self, transmit: Transmit, wake: &mut Wake) -> Option<Answer> {
        match transmit {
            Transmit::Dial { gen, .. } => return Some(Answer::Dial(gen)),
            Transmit::RefreshToken => return Some(Answer::Refresh),
            Transmit::Open {
                gen,
                conversation,
                serial,
            } if gen == self.gen => {
                self.streams.insert(conversation, serial);
            }
            Transmit::Forget {
                gen,
                conversation,
                serial,
            } if gen == self.gen && self.streams.get(&conversation) == Some(&serial) => {
                self.streams.remove(&conversation);
            }
            Transmit::Frame { gen, target, frame } if gen == self.gen => {
                let stream = match target {
                    Target::Control => None,
                    Target::Conv(c) => Some(c),
                };
                wake.frames.push((stream, frame));
            }
            _ => {}
        }
        None
    }
}

/// What the "network" answers after a wake-up.
enum Answer {
    /// The dial of session `gen` connected.
    Dial(u64),
    /// The token refresher returned a new token.
    Refresh,
}

/// With `FERRY_FUZZ_TRACE` set, prints what the harness feeds the core and what it reports (to replay a
/// crash input by hand).
fn trace(what: std::fmt::Arguments<'_>) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FERRY_FUZZ_TRACE").is_some()) {
        eprintln!("{what}");
    }
}

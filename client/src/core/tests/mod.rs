//! The core driven by hand with a fake clock: no sockets, no store, no sleeps. Each test plays the
//! server's part with frames and checks what the core asks the driver to do. This file is the harness
//! (a fake driver); `rules.rs` has one test per rule.

mod catchup;
mod failover;
mod history;
mod rules;
mod streams;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::frame::{self, frame::Kind, ConversationState};
use ferry_protocol::{ErrorCode, Frame, WindowConfig};
use rand::{rngs::StdRng, SeedableRng};
use tokio::sync::oneshot;

use super::conversations::{datagram_event, datagrams_allowed};
use super::*;
use crate::builder::{AckMode, Settings};
use crate::client::Request;
use crate::conn::StreamRef;
use crate::error::ClientError;
use crate::event::{ConnectionState, Event};
use crate::inbox::Inbox;
use crate::message::{OutgoingMessage, ReceivedMessage, SendReceipt};
use crate::outbox::{Outbox, OutboxConfig};
use crate::store::{Commit, OutboxRecord};

const SERVER: &str = "127.0.0.1:7700";
const CONV: &str = "d:alice:bob";

fn settings(endpoints: &[&str]) -> Settings {
    Settings {
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        server_name: "localhost".into(),
        token: "v1.token".into(),
        refresher: None,
        device_id: "laptop".into(),
        device_class: String::new(),
        client_name: "test".into(),
        ack_mode: AckMode::Auto,
        backoff: crate::backoff::BackoffConfig::default(),
        heartbeat: None,
        heartbeat_timeout: None,
        outbox: OutboxConfig::default(),
        connect_timeout: Duration::from_secs(5),
    }
}

fn f(kind: Kind) -> Frame {
    super::frame(kind)
}

fn control() -> StreamRef {
    StreamRef::Control
}

fn conv_stream() -> StreamRef {
    StreamRef::Conv {
        serial: 1,
        conversation: CONV.into(),
    }
}

fn message(seq: u64, sender: &str) -> frame::Message {
    frame::Message {
        seq,
        sender: sender.into(),
        sender_device: "phone".into(),
        client_msg_id: format!("{sender}-{seq}"),
        body: Bytes::from_static(b"hi"),
        ..Default::default()
    }
}

fn state(head_seq: u64) -> ConversationState {
    ConversationState {
        conversation_id: CONV.into(),
        head_seq,
        epoch: 1,
        ..Default::default()
    }
}

type ReceiptRx = oneshot::Receiver<Result<SendReceipt, crate::error::SendError>>;

/// A core, its clock, and what it asked for so far.
struct Harness {
    core: Core,
    now: Instant,
    /// Commits the "driver" performed.
    commits: Vec<Commit>,
    events: Vec<Event>,
    next_id: i64,
    /// The request id of the last Sync the core wrote (it rides with Hello).
    last_sync: Option<u64>,
}

impl Harness {
    fn new(settings: Settings) -> Self {
        Self::with_inbox(settings, Inbox::new(WindowConfig::default(), 50, true))
    }

    fn with_inbox(settings: Settings, inbox: Inbox) -> Self {
        Self::seeded(settings, inbox, 7)
    }

    /// A harness whose core draws its randomness (backoff jitter, failover target) from `seed`.
    fn with_seed(settings: Settings, seed: u64) -> Self {
        Self::seeded(
            settings,
            Inbox::new(WindowConfig::default(), 50, true),
            seed,
        )
    }

    fn seeded(settings: Settings, inbox: Inbox, seed: u64) -> Self {
        let now = Instant::now();
        let outbox = Outbox::new(settings.outbox, DEFAULT_MAX_INFLIGHT);
        let rng = StdRng::seed_from_u64(seed);
        Harness {
            core: Core::new(settings, outbox, inbox, 0, None, rng, now),
            now,
            commits: Vec::new(),
            events: Vec::new(),
            next_id: 1,
            last_sync: None,
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// One wake-up of the driver after the inputs: timers, store work (history reads answered from
    /// `pages`), events, transmits.
    fn wake(&mut self, pages: &mut Vec<Vec<ReceivedMessage>>) -> Vec<Transmit> {
        self.core.handle_timeout(self.now);
        for _ in 0..100 {
            match self.core.poll_commit() {
                None => break,
                Some(StoreWork::SetUserId(_)) => {}
                Some(StoreWork::ReadHistory { id, .. }) => {
                    let page = if pages.is_empty() {
                        Vec::new()
                    } else {
                        pages.remove(0)
                    };
                    self.core.handle_history_page(id, Ok(page));
                }
                Some(StoreWork::Commit(c)) => self.commits.push(c),
            }
        }
        self.core.committed();
        while let Some(e) = self.core.poll_event() {
            self.events.push(e);
        }
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match self.core.poll_transmit(self.now) {
                Some(t) => out.push(t),
                None => break,
            }
        }
        if let Some(sync) = sync_id(&out) {
            self.last_sync = Some(sync);
        }
        out
    }

    fn step(&mut self) -> Vec<Transmit> {
        self.wake(&mut Vec::new())
    }

    /// Waits (on the fake clock) for the next dial and returns its gen and endpoint.
    fn next_dial(&mut self) -> (u64, String) {
        for _ in 0..20 {
            for t in self.step() {
                if let Transmit::Dial { gen, endpoint } = t {
                    return (gen, endpoint);
                }
            }
            let at = self.core.poll_timeout().expect("a reconnect is scheduled");
            self.now = self.now.max(at);
        }
        panic!("no dial");
    }

    /// Dials, establishes (with or without early data), returns the gen and the transmits.
    fn establish(&mut self, early: bool) -> (u64, Vec<Transmit>) {
        let (gen, _) = self.next_dial();
        let addr: SocketAddr = SERVER.parse().expect("address");
        assert!(self
            .core
            .handle_established(gen, Ok((addr, early)), self.now));
        (gen, self.step())
    }

    fn welcome(&mut self, gen: u64) -> Vec<Transmit> {
        let welcome = f(Kind::Welcome(frame::Welcome {
            user_id: "alice".into(),
            ..Default::default()
        }));
        self.core.handle_frame(gen, control(), welcome, self.now);
        self.step()
    }

    /// A Welcomed session whose first Sync answered (nothing to report).
    fn connect(&mut self) -> u64 {
        self.synced(vec![])
    }

    /// A Welcomed session whose first Sync answered with `states`; the wake-up after it is taken.
    fn synced(&mut self, states: Vec<ConversationState>) -> u64 {
        let (gen, _) = self.establish(false);
        self.welcome(gen);
        let sync = self.last_sync.expect("Sync with Hello");
        self.sync_result(gen, sync, states, false);
        self.step();
        gen
    }

    /// The connection of session `gen` fails (not an application close).
    fn lose(&mut self, gen: u64) {
        let lost = LostReason {
            app_close: None,
            description: "timed out".into(),
        };
        self.core.handle_connection_lost(gen, lost, self.now);
    }

    fn sync_result(
        &mut self,
        gen: u64,
        request_id: u64,
        states: Vec<ConversationState>,
        more: bool,
    ) {
        let r = f(Kind::SyncResult(frame::SyncResult {
            request_id,
            conversations: states,
            next_token: 9,
            has_more: more,
        }));
        self.core.handle_frame(gen, control(), r, self.now);
    }

    fn send(&mut self, client_msg_id: &str) -> ReceiptRx {
        self.send_to(CONV, client_msg_id)
    }

    fn send_to(&mut self, conversation: &str, client_msg_id: &str) -> ReceiptRx {
        let (reply, rx) = oneshot::channel();
        let message = OutgoingMessage {
            conversation: conversation.into(),
            client_msg_id: client_msg_id.into(),
            body: Bytes::from_static(b"hello"),
        };
        let record = OutboxRecord::of(&message, self.next_id, 0);
        self.next_id += 1;
        self.core.handle_request(
            Request::Send {
                record,
                reply,
                message,
            },
            self.now,
        );
        rx
    }

    fn on_conv(&mut self, gen: u64, kind: Kind) {
        self.core
            .handle_frame(gen, conv_stream(), f(kind), self.now);
    }

    fn send_ack(&mut self, gen: u64, client_msg_id: &str, seq: u64) {
        self.on_conv(
            gen,
            Kind::SendAck(frame::SendAck {
                client_msg_id: client_msg_id.into(),
                seq,
                ..Default::default()
            }),
        );
    }

    /// A PullResult of bob's messages `seqs` (epoch 1) on the conversation's stream.
    fn pull_result(&mut self, gen: u64, seqs: impl IntoIterator<Item = u64>, head_seq: u64) {
        self.on_conv(
            gen,
            Kind::PullResult(frame::PullResult {
                messages: seqs.into_iter().map(|s| message(s, "bob")).collect(),
                head_seq,
                has_more: false,
                epoch: 1,
            }),
        );
    }

    fn deliver(&mut self, gen: u64, seq: u64) {
        self.on_conv(
            gen,
            Kind::Deliver(frame::Deliver {
                message: Some(message(seq, "bob")),
                epoch: 1,
            }),
        );
    }
}

/// The frames written, with the stream each went to.
fn frames(out: &[Transmit]) -> Vec<(&Target, &Kind)> {
    out.iter()
        .filter_map(|t| match t {
            Transmit::Frame { target, frame, .. } => Some((target, frame.kind.as_ref()?)),
            _ => None,
        })
        .collect()
}

/// What `pick` finds in the frames written, in order.
fn picked<T>(out: &[Transmit], pick: impl Fn(&Kind) -> Option<T>) -> Vec<T> {
    frames(out)
        .into_iter()
        .filter_map(|(_, k)| pick(k))
        .collect()
}

fn sends(out: &[Transmit]) -> Vec<String> {
    picked(out, |k| match k {
        Kind::Send(s) => Some(s.client_msg_id.clone()),
        _ => None,
    })
}

fn pulls(out: &[Transmit]) -> Vec<u64> {
    picked(out, |k| match k {
        Kind::Pull(p) => Some(p.after_seq),
        _ => None,
    })
}

fn sync_id(out: &[Transmit]) -> Option<u64> {
    frames(out).into_iter().find_map(|(t, k)| match k {
        Kind::Sync(s) if *t == Target::Control => Some(s.request_id),
        _ => None,
    })
}

fn has_hello(out: &[Transmit]) -> bool {
    frames(out)
        .iter()
        .any(|(t, k)| **t == Target::Control && matches!(k, Kind::Hello(_)))
}

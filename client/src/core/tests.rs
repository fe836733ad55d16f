//! The core driven by hand with a fake clock: no sockets, no store, no sleeps. Each test plays the
//! server's part with frames and checks what the core asks the driver to do.

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
}

impl Harness {
    fn new(settings: Settings) -> Self {
        Self::with_inbox(settings, Inbox::new(WindowConfig::default(), 50, true))
    }

    fn with_inbox(settings: Settings, inbox: Inbox) -> Self {
        let now = Instant::now();
        let outbox = Outbox::new(settings.outbox, DEFAULT_MAX_INFLIGHT);
        let rng = StdRng::seed_from_u64(7);
        Harness {
            core: Core::new(settings, outbox, inbox, 0, None, rng, now),
            now,
            commits: Vec::new(),
            events: Vec::new(),
            next_id: 1,
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
            match self.core.poll_store() {
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
        let (gen, _) = self.establish(false);
        let out = self.welcome(gen);
        let sync = sync_id(&out).expect("Sync after Welcome");
        self.sync_result(gen, sync, vec![], false);
        gen
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
        let (reply, rx) = oneshot::channel();
        let body = Bytes::from_static(b"hello");
        let record = OutboxRecord {
            id: self.next_id,
            conversation: CONV.into(),
            client_msg_id: client_msg_id.into(),
            body: body.clone(),
            created_at_ms: 0,
        };
        self.next_id += 1;
        let message = OutgoingMessage {
            conversation: CONV.into(),
            client_msg_id: client_msg_id.into(),
            body,
        };
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

fn sends(out: &[Transmit]) -> Vec<String> {
    frames(out)
        .into_iter()
        .filter_map(|(_, k)| match k {
            Kind::Send(s) => Some(s.client_msg_id.clone()),
            _ => None,
        })
        .collect()
}

fn pulls(out: &[Transmit]) -> Vec<u64> {
    frames(out)
        .into_iter()
        .filter_map(|(_, k)| match k {
            Kind::Pull(p) => Some(p.after_seq),
            _ => None,
        })
        .collect()
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

#[test]
fn sends_are_resent_with_the_same_id_after_a_reconnect_and_stored_once() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.connect();
    let mut receipt = h.send("m1");
    assert_eq!(sends(&h.step()), ["m1"]);
    let lost = LostReason {
        app_close: None,
        description: "timed out".into(),
    };
    h.core.handle_connection_lost(gen, lost, h.now);
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert!(sends(&out).is_empty());
    assert!(matches!(
        h.events.last(),
        Some(Event::Connection(ConnectionState::Disconnected { .. }))
    ));
    assert!(receipt.try_recv().is_err(), "the send is still pending");
    // The next attempt waits for the backoff, then resends the same client_msg_id after Welcome.
    let gen = h.connect();
    assert!(gen > 1);
    // (Sends go out in the transmit pass right after Welcome; `connect` consumed it.)
    h.core.handle_connection_lost(
        gen,
        LostReason {
            app_close: None,
            description: "again".into(),
        },
        h.now,
    );
    h.step();
    let (gen, _) = h.establish(false);
    let out = h.welcome(gen);
    assert_eq!(sends(&out), ["m1"], "resent with the same id");
    // The SendAck stores the message once (with the outbox deletion), then the receipt resolves.
    h.commits.clear();
    h.send_ack(gen, "m1", 1);
    h.step();
    let stored: Vec<_> = h.commits.iter().flat_map(|c| c.messages.iter()).collect();
    assert_eq!(stored.len(), 1, "own message inserted once: {stored:?}");
    assert_eq!(stored[0].client_msg_id, "m1");
    assert!(h.commits.iter().any(|c| c.outbox_done == ["m1"]));
    assert_eq!(receipt.try_recv().expect("resolved").expect("ok").seq, 1);
}

#[test]
fn an_own_message_that_waits_for_a_gap_is_stored_once() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    let out = h.welcome(gen);
    let sync = sync_id(&out).expect("Sync");
    h.sync_result(gen, sync, vec![state(1)], false);
    h.step();
    h.deliver(gen, 1);
    let _receipt = h.send("m1");
    h.step();
    h.commits.clear();
    // seq 3 is ours; seq 2 (bob's) is still missing: our message waits in the window.
    h.send_ack(gen, "m1", 3);
    h.step();
    h.deliver(gen, 2);
    h.step();
    let ours = h
        .commits
        .iter()
        .flat_map(|c| c.messages.iter())
        .filter(|m| m.client_msg_id == "m1")
        .count();
    assert_eq!(ours, 1);
    let seqs: Vec<u64> = h
        .commits
        .iter()
        .flat_map(|c| c.messages.iter().map(|m| m.seq))
        .collect();
    assert_eq!(seqs, [3, 2]);
}

#[test]
fn rejected_early_data_is_replayed_over_1rtt() {
    let mut h = Harness::new(settings(&[SERVER]));
    let _receipt = h.send("m1");
    let (gen, out) = h.establish(true);
    // Early data: Hello, Sync and the Send ride in 0-RTT; no Connected event before the verdict.
    assert!(has_hello(&out));
    assert!(sync_id(&out).is_some());
    assert_eq!(sends(&out), ["m1"]);
    h.core.handle_zero_rtt(gen, false);
    let out = h.step();
    let reopen = out
        .iter()
        .find_map(|t| match t {
            Transmit::Reopen { gen } => Some(*gen),
            _ => None,
        })
        .expect("the session restarts on the same connection");
    assert!(reopen > gen);
    assert!(!out.iter().any(|t| matches!(t, Transmit::Dial { .. })));
    // Frames of the dead session are not written on the new one.
    let addr: SocketAddr = SERVER.parse().expect("address");
    assert!(!h.core.handle_established(gen, Ok((addr, true)), h.now));
    assert!(h.core.handle_established(reopen, Ok((addr, false)), h.now));
    let out = h.step();
    assert!(has_hello(&out));
    assert!(sends(&out).is_empty(), "1-RTT: nothing before Welcome");
    let out = h.welcome(reopen);
    assert!(sync_id(&out).is_some(), "Sync again");
    assert_eq!(sends(&out), ["m1"], "the Send again, same id");
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Connection(ConnectionState::Connected {
            zero_rtt: false,
            ..
        })
    )));
}

#[test]
fn goaway_drains_in_flight_sends_then_tries_its_endpoints_first() {
    let mut h = Harness::new(settings(&[SERVER, "127.0.0.1:7701"]));
    let gen = h.connect();
    let _r1 = h.send("m1");
    assert_eq!(sends(&h.step()), ["m1"]);
    let goaway = f(Kind::GoAway(frame::GoAway {
        code: ErrorCode::SHUTTING_DOWN.0,
        reason: "upgrade".into(),
        endpoints: vec!["127.0.0.1:7799".into()],
    }));
    h.core.handle_frame(gen, control(), goaway, h.now);
    let _r2 = h.send("m2");
    let out = h.step();
    assert!(sends(&out).is_empty(), "nothing new while draining");
    assert!(!out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    // The last in-flight answer ends the drain: reconnect at once, to GoAway's endpoint.
    h.send_ack(gen, "m1", 1);
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert_eq!(h.core.poll_timeout(), Some(h.now), "no backoff");
    let (gen, endpoint) = h.next_dial();
    assert_eq!(endpoint, "127.0.0.1:7799");
    let addr: SocketAddr = endpoint.parse().expect("address");
    h.core.handle_established(gen, Ok((addr, false)), h.now);
    h.step();
    let out = h.welcome(gen);
    assert_eq!(sends(&out), ["m2"]);
    // Afterwards the rotation resumes where it was.
    h.core.handle_connection_lost(
        gen,
        LostReason {
            app_close: None,
            description: "gone".into(),
        },
        h.now,
    );
    assert_eq!(h.next_dial().1, "127.0.0.1:7701");
}

#[test]
fn session_replaced_never_reconnects() {
    for by_goaway in [false, true] {
        let mut h = Harness::new(settings(&[SERVER]));
        let gen = h.connect();
        if by_goaway {
            let goaway = f(Kind::GoAway(frame::GoAway {
                code: ErrorCode::SESSION_REPLACED.0,
                ..Default::default()
            }));
            h.core.handle_frame(gen, control(), goaway, h.now);
        } else {
            let lost = LostReason {
                app_close: Some((ErrorCode::SESSION_REPLACED, "replaced".into())),
                description: "closed".into(),
            };
            h.core.handle_connection_lost(gen, lost, h.now);
        }
        assert!(h.core.is_stopped());
        for _ in 0..5 {
            h.advance(Duration::from_secs(60));
            let out = h.step();
            assert!(!out.iter().any(|t| matches!(t, Transmit::Dial { .. })));
        }
        let (state, _) = h.core.close();
        assert_eq!(state, Some(ConnectionState::Replaced));
    }
}

#[test]
fn gaps_and_heads_from_heartbeat_ack_and_sync_pull() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    let out = h.welcome(gen);
    let sync = sync_id(&out).expect("Sync");
    // Sync says the conversation has 2 messages: the tail is pulled.
    h.sync_result(gen, sync, vec![state(2)], false);
    assert_eq!(pulls(&h.step()), [0]);
    let result = frame::PullResult {
        messages: vec![message(1, "bob"), message(2, "bob")],
        head_seq: 2,
        has_more: false,
        epoch: 1,
    };
    h.on_conv(gen, Kind::PullResult(result));
    let out = h.step();
    assert!(pulls(&out).is_empty());
    assert!(frames(&out)
        .iter()
        .any(|(_, k)| matches!(k, Kind::Ack(a) if a.seq == 2)));
    // A gap: seq 4 without 3.
    h.deliver(gen, 4);
    assert_eq!(pulls(&h.step()), [2]);
    h.on_conv(
        gen,
        Kind::PullResult(frame::PullResult {
            messages: vec![message(3, "bob"), message(4, "bob")],
            head_seq: 4,
            has_more: false,
            epoch: 1,
        }),
    );
    h.step();
    // A lost tail revealed by a HeartbeatAck's heads.
    let ack = f(Kind::HeartbeatAck(frame::HeartbeatAck {
        changed: vec![state(6)],
        sync_token: 10,
        ..Default::default()
    }));
    h.core.handle_frame(gen, control(), ack, h.now);
    assert_eq!(pulls(&h.step()), [4]);
    assert_eq!(h.commits.last().and_then(|c| c.sync_token), Some(10));
    let reported: Vec<u64> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(reported, [1, 2, 3, 4]);
}

#[test]
fn history_waits_for_the_sync_then_pulls_what_the_store_lacks() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    let out = h.welcome(gen);
    let sync = sync_id(&out).expect("Sync");
    let (reply, mut rx) = oneshot::channel();
    h.core.handle_request(
        Request::History {
            conversation: CONV.into(),
            after_seq: 0,
            limit: 10,
            reply,
        },
        h.now,
    );
    // While Sync runs the conversation may be unknown: no store read, no Pull yet.
    assert!(pulls(&h.step()).is_empty());
    assert!(h.core.history_reads.is_empty());
    assert_eq!(h.core.deferred_history.len(), 1);
    h.sync_result(gen, sync, vec![state(5)], false);
    // The store has nothing: Pull the page (and the window pulls its tail on its own).
    let out = h.wake(&mut vec![Vec::new()]);
    assert!(pulls(&out).contains(&0));
    assert!(rx.try_recv().is_err());
    // The window's tail pull went first (recent window 50 ⇒ after 0) and the history pull second;
    // answers come back in order on the stream.
    for _ in pulls(&out) {
        h.on_conv(
            gen,
            Kind::PullResult(frame::PullResult {
                messages: (1..=5).map(|s| message(s, "bob")).collect(),
                head_seq: 5,
                has_more: false,
                epoch: 1,
            }),
        );
    }
    h.step();
    let page = rx.try_recv().expect("answered").expect("ok");
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

#[test]
fn history_fails_when_its_pull_loses_the_connection() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    let out = h.welcome(gen);
    h.sync_result(gen, sync_id(&out).expect("Sync"), vec![state(5)], false);
    h.step();
    let (reply, mut rx) = oneshot::channel();
    h.core.handle_request(
        Request::History {
            conversation: CONV.into(),
            after_seq: 0,
            limit: 3,
            reply,
        },
        h.now,
    );
    h.wake(&mut vec![Vec::new()]);
    h.core.handle_connection_lost(
        gen,
        LostReason {
            app_close: None,
            description: "gone".into(),
        },
        h.now,
    );
    h.step();
    assert!(matches!(rx.try_recv(), Ok(Err(ClientError::Disconnected))));
}

#[test]
fn too_many_inflight_waits_for_an_answer_to_an_earlier_send() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.connect();
    let _r1 = h.send("m1");
    let _r2 = h.send("m2");
    assert_eq!(sends(&h.step()), ["m1", "m2"]);
    let error = frame::Error {
        code: ErrorCode::TOO_MANY_INFLIGHT.0,
        client_msg_id: "m2".into(),
        retry_after_ms: 10,
        ..Default::default()
    };
    h.on_conv(gen, Kind::Error(error));
    h.step();
    for _ in 0..3 {
        h.advance(Duration::from_secs(1));
        assert!(sends(&h.step()).is_empty(), "waits for m1's answer");
    }
    h.send_ack(gen, "m1", 1);
    assert_eq!(sends(&h.step()), ["m2"]);
}

#[test]
fn no_welcome_in_time_gives_the_session_up() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    h.advance(Duration::from_secs(5));
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert!(h.core.session(gen).is_none());
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

fn typing(conversation: &str) -> Frame {
    f(Kind::Typing(frame::Typing {
        conversation_id: conversation.into(),
        user_id: "bob".into(),
        device_id: "phone".into(),
        active: true,
    }))
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
        f(Kind::Presence(frame::Presence {
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
    let heartbeat = f(Kind::Heartbeat(frame::Heartbeat { sync_token: 1 }));
    assert_eq!(datagram_event(heartbeat, true, |_| true), None);
}

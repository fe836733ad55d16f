//! Fuzzes the client's sans-IO core (`ferry_client::fuzzing`): a script of server frames, connection
//! events, application requests and clock steps, each followed by one driver wake-up.
//!
//! Beyond "never panics", it checks what the application sees: per conversation, the seqs of
//! `Event::Message` strictly increase within an epoch, and no (conversation, epoch, seq) is reported
//! twice. Whatever a server sends — gaps, replays, regressions, lies about heads, epochs that change.
//!
//! Script: opcodes below (`OP_*`, taken modulo their count), each with its fields (see
//! `ferry_fuzz::Script`). Seeds: `scripts/fuzz.sh` writes each `spec/vectors` frame as a Welcome
//! followed by the vector's bytes on the control stream and on a conversation stream.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use ferry_client::fuzzing::{Harness, Stream, Wake};
use ferry_client::Event;
use ferry_fuzz::{decode_prefix, frame, Script};
use ferry_protocol::frame::{self as wire, frame::Kind, ConversationState};
use ferry_protocol::ErrorCode;
use libfuzzer_sys::fuzz_target;

/// Conversations the script talks about (the client is `alice` on device `laptop`).
const CONVERSATIONS: &[&str] = &[
    "d:alice:bob",
    "d:alice:carol",
    "g:0123456789abcdef0123456789abcdef",
    "d:bob:carol",
];
/// Senders of delivered messages; `alice`/`laptop` is this very device.
const SENDERS: &[(&str, &str)] = &[("bob", "phone"), ("alice", "phone"), ("alice", "laptop")];
/// Codes of errors, stream resets and connection closes.
const CODES: &[ErrorCode] = &[
    ErrorCode::PROTOCOL_ERROR,
    ErrorCode::FORBIDDEN,
    ErrorCode::NOT_FOUND,
    ErrorCode::INVALID_ARGUMENT,
    ErrorCode::RATE_LIMITED,
    ErrorCode::UNAUTHENTICATED,
    ErrorCode::SESSION_REPLACED,
    ErrorCode::TOKEN_REVOKED,
    ErrorCode::SHUTTING_DOWN,
    ErrorCode::UNSUPPORTED_VERSION,
    ErrorCode::TOO_MANY_STREAMS,
    ErrorCode::STREAM_CLOSED,
    ErrorCode(0xffff),
];

// Opcodes.
const OP_WIRE_CONTROL: u8 = 0;
const OP_WIRE_CONV: u8 = 1;
const OP_WELCOME: u8 = 2;
const OP_DELIVER: u8 = 3;
const OP_PULL_RESULT: u8 = 4;
const OP_SEND_ACK: u8 = 5;
const OP_SYNC_RESULT: u8 = 6;
const OP_HEARTBEAT_ACK: u8 = 7;
const OP_ERROR: u8 = 8;
const OP_APP_SEND: u8 = 9;
const OP_ADVANCE: u8 = 10;
const OP_STREAM_ENDED: u8 = 11;
const OP_CONNECTION_LOST: u8 = 12;
const OP_ZERO_RTT: u8 = 13;
const OP_HISTORY: u8 = 14;
const OP_DATAGRAM: u8 = 15;
const OP_GO_AWAY: u8 = 16;
const OP_MARK_READ: u8 = 17;
const OP_PORT_CLOSED: u8 = 18;
const OP_COUNT: u8 = 19;

/// Most operations one input runs (keeps every execution short).
const MAX_OPS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut script = Script::new(data);
    let mut run = Run {
        harness: Harness::new(u64::from(script.u8())),
        sent: Vec::new(),
        last_sync: 0,
        last: HashMap::new(),
        seen: HashSet::new(),
    };
    for _ in 0..MAX_OPS {
        if script.is_empty() || run.harness.is_stopped() {
            break;
        }
        let wake = run.op(&mut script);
        run.check(wake);
    }
});

/// One execution: the harness and what the checks remember.
struct Run {
    harness: Harness,
    /// client_msg_ids the application sent, for SendAck and Error to name.
    sent: Vec<String>,
    /// The request id of the last Sync the core wrote.
    last_sync: u64,
    /// Per conversation: the epoch and seq of the last message reported.
    last: HashMap<String, (u64, u64)>,
    /// Every (conversation, epoch, seq) reported.
    seen: HashSet<(String, u64, u64)>,
}

impl Run {
    fn op(&mut self, s: &mut Script<'_>) -> Wake {
        let h = &mut self.harness;
        match s.u8() % OP_COUNT {
            OP_WIRE_CONTROL => {
                let mut wake = Wake::default();
                for f in decode_prefix(s.chunk()) {
                    merge(&mut wake, h.frame(Stream::Control, f));
                }
                wake
            }
            OP_WIRE_CONV => {
                let conv = *s.pick(CONVERSATIONS);
                let mut wake = Wake::default();
                for f in decode_prefix(s.chunk()) {
                    merge(&mut wake, h.frame(Stream::Conversation(conv), f));
                }
                wake
            }
            OP_WELCOME => {
                let limits = wire::Limits {
                    max_open_streams: u32::from(s.u8() % 4),
                    max_inflight_sends: u32::from(s.u8() % 8),
                    recent_window: u32::from(s.u8() % 16),
                    max_pull_page: u32::from(s.u8() % 16),
                    ..Default::default()
                };
                let welcome = wire::Welcome {
                    user_id: "alice".into(),
                    heartbeat_interval_ms: u32::from(s.u16()),
                    limits: s.bool().then_some(limits),
                    store_epoch: u64::from(s.u8() % 3),
                    endpoints: vec!["127.0.0.1:7702".into()],
                    ..Default::default()
                };
                h.frame(Stream::Control, frame(Kind::Welcome(welcome)))
            }
            OP_DELIVER => {
                let conv = *s.pick(CONVERSATIONS);
                let epoch = u64::from(s.u8() % 3);
                let m = message(s);
                let deliver = wire::Deliver {
                    message: Some(m),
                    epoch,
                };
                h.frame(Stream::Conversation(conv), frame(Kind::Deliver(deliver)))
            }
            OP_PULL_RESULT => {
                let conv = *s.pick(CONVERSATIONS);
                let epoch = u64::from(s.u8() % 3);
                let count = usize::from(s.u8() % 8);
                let messages: Vec<_> = (0..count).map(|_| message(s)).collect();
                let result = wire::PullResult {
                    messages,
                    head_seq: s.small(),
                    has_more: s.bool(),
                    epoch,
                };
                h.frame(Stream::Conversation(conv), frame(Kind::PullResult(result)))
            }
            OP_SEND_ACK => {
                let conv = *s.pick(CONVERSATIONS);
                let ack = wire::SendAck {
                    client_msg_id: self.sent_id(s),
                    seq: s.small(),
                    server_time_ms: 1,
                    duplicate: s.bool(),
                };
                self.harness
                    .frame(Stream::Conversation(conv), frame(Kind::SendAck(ack)))
            }
            OP_SYNC_RESULT => {
                let request_id = if s.bool() { self.last_sync } else { s.small() };
                let result = wire::SyncResult {
                    request_id,
                    conversations: states(s),
                    next_token: s.small(),
                    has_more: s.bool(),
                };
                self.harness
                    .frame(Stream::Control, frame(Kind::SyncResult(result)))
            }
            OP_HEARTBEAT_ACK => {
                let ack = wire::HeartbeatAck {
                    changed: states(s),
                    sync_token: s.small(),
                    has_more: s.bool(),
                    server_time_ms: 1,
                };
                h.frame(Stream::Control, frame(Kind::HeartbeatAck(ack)))
            }
            OP_ERROR => {
                let on_control = s.bool();
                let conv = *s.pick(CONVERSATIONS);
                let error = wire::Error {
                    code: s.pick(CODES).0,
                    message: "fuzzed".into(),
                    request_id: s.small(),
                    client_msg_id: if s.bool() {
                        self.sent_id(s)
                    } else {
                        String::new()
                    },
                    retry_after_ms: s.small(),
                };
                let stream = if on_control {
                    Stream::Control
                } else {
                    Stream::Conversation(conv)
                };
                self.harness.frame(stream, frame(Kind::Error(error)))
            }
            OP_APP_SEND => {
                let conv = *s.pick(CONVERSATIONS);
                let id = format!("m{}", self.sent.len());
                let len = usize::from(s.u8() % 16);
                let body = s.bytes(len).to_vec();
                self.sent.push(id.clone());
                self.harness.send(conv, &id, &body)
            }
            OP_ADVANCE => match s.u16() {
                0 => h.advance_to_deadline(),
                ms => h.advance(Duration::from_millis(u64::from(ms))),
            },
            OP_STREAM_ENDED => {
                let conv = *s.pick(CONVERSATIONS);
                let code = s.bool().then(|| s.pick(CODES).0);
                h.stream_ended(conv, code)
            }
            OP_CONNECTION_LOST => {
                let code = s.bool().then(|| s.pick(CODES).0);
                h.connection_lost(code)
            }
            OP_ZERO_RTT => {
                let accepted = s.bool();
                h.set_early(s.bool());
                h.zero_rtt(accepted)
            }
            OP_HISTORY => {
                let conv = *s.pick(CONVERSATIONS);
                let after = s.small();
                h.history(conv, after, usize::from(s.u8() % 8) + 1)
            }
            OP_DATAGRAM => {
                let conv = (*s.pick(CONVERSATIONS)).to_owned();
                let kind = if s.bool() {
                    Kind::Typing(wire::Typing {
                        conversation_id: conv,
                        user_id: "bob".into(),
                        device_id: "phone".into(),
                        active: s.bool(),
                    })
                } else {
                    Kind::Presence(wire::Presence {
                        conversation_id: conv,
                        user_id: "bob".into(),
                        status: i32::from(s.u8() % 5),
                    })
                };
                h.datagram(frame(kind))
            }
            OP_GO_AWAY => {
                let go_away = wire::GoAway {
                    code: s.pick(CODES).0,
                    reason: "fuzzed".into(),
                    endpoints: vec!["127.0.0.1:7703".into()],
                };
                h.frame(Stream::Control, frame(Kind::GoAway(go_away)))
            }
            OP_MARK_READ => {
                let conv = *s.pick(CONVERSATIONS);
                h.mark_read(conv, s.small())
            }
            op => {
                debug_assert_eq!(op, OP_PORT_CLOSED);
                h.port_closed()
            }
        }
    }

    /// A client_msg_id the application sent (or one it never did).
    fn sent_id(&self, s: &mut Script<'_>) -> String {
        let i = usize::from(s.u8());
        self.sent
            .get(i % (self.sent.len() + 1))
            .cloned()
            .unwrap_or_else(|| "never-sent".into())
    }

    /// The invariants on what one wake-up reported.
    fn check(&mut self, wake: Wake) {
        for (stream, f) in &wake.frames {
            if let (None, Some(Kind::Sync(sync))) = (stream, &f.kind) {
                self.last_sync = sync.request_id;
            }
        }
        for event in wake.events {
            let Event::Message(m) = event else { continue };
            let key = (m.conversation.clone(), m.epoch, m.seq);
            assert!(
                self.seen.insert(key),
                "{} seq {} of epoch {} reported twice",
                m.conversation,
                m.seq,
                m.epoch
            );
            if let Some(&(epoch, seq)) = self.last.get(&m.conversation) {
                assert!(
                    epoch != m.epoch || m.seq > seq,
                    "{}: seq {} reported after seq {} in epoch {}",
                    m.conversation,
                    m.seq,
                    seq,
                    epoch
                );
            }
            self.last.insert(m.conversation, (m.epoch, m.seq));
        }
    }
}

/// Appends `more` to `wake`.
fn merge(wake: &mut Wake, more: Wake) {
    wake.events.extend(more.events);
    wake.frames.extend(more.frames);
}

/// A message with a fuzzed seq and sender.
fn message(s: &mut Script<'_>) -> wire::Message {
    let seq = s.small();
    let (sender, device) = *s.pick(SENDERS);
    let system = s.u8() == 1;
    wire::Message {
        seq,
        sender: sender.into(),
        sender_device: device.into(),
        client_msg_id: format!("{sender}-{seq}"),
        body: Bytes::from_static(b"hi"),
        server_time_ms: 1,
        kind: i32::from(system),
        membership: system.then(|| wire::MembershipChange {
            action: 2,
            actor: "bob".into(),
            users: vec!["carol".into()],
            name: String::new(),
        }),
    }
}

/// Up to three conversation states.
fn states(s: &mut Script<'_>) -> Vec<ConversationState> {
    (0..s.u8() % 4)
        .map(|_| ConversationState {
            conversation_id: (*s.pick(CONVERSATIONS)).to_owned(),
            kind: i32::from(s.u8() % 3),
            head_seq: s.small(),
            epoch: u64::from(s.u8() % 3),
            acked_seq: s.small(),
            member: !s.bool(),
            first_seq: s.small(),
            ..Default::default()
        })
        .collect()
}

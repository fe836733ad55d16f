//! Conversation streams: SendAck, Deliver, PullResult and errors; streams the server opens or ends;
//! relayed datagrams; and the transmit pass (Acks, Pulls, Sends) that runs once per wake-up.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::frame::{self, frame::Kind, Frame};
use ferry_protocol::ErrorCode;

use super::{frame, Core, Phase, Transmit};
use crate::conn::StreamRef;
use crate::error::SendError;
use crate::event::Event;
use crate::inbox::{Arrived, PullTag};
use crate::message::{MessageKind, ReceivedMessage, SendReceipt};
use crate::outbox::ErrorOutcome;

/// Whether the session may send datagrams: only after Welcome and never in early data (FERRY-DGRAM-5).
/// With early data, Welcome alone is not enough: until the server's verdict is known the connection may
/// still be sending 0-RTT packets.
pub(super) fn datagrams_allowed(
    welcomed: bool,
    early: bool,
    zero_rtt_verdict: Option<bool>,
) -> bool {
    welcomed && (!early || zero_rtt_verdict.is_some())
}

/// The event a relayed datagram reports, if any. Datagrams count only once the session has its Welcome
/// (FERRY-DGRAM-3) and only for conversations this client knows (FERRY-SEC-8), so they can neither invent
/// conversations nor tell the application about ones it never joined.
pub(super) fn datagram_event(
    f: Frame,
    welcomed: bool,
    known: impl Fn(&str) -> bool,
) -> Option<Event> {
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

/// A client tracking at most this many conversations pulls each of them in a session's first flight
/// (see `Inbox::probe_pulls`); 16 covers a phone's active chats without opening a stream per archived one.
const PROBE_MAX_CONVERSATIONS: usize = 16;

impl Core {
    /// A frame arrived on one of session `gen`'s streams. Frames of older sessions are ignored.
    pub(crate) fn handle_frame(&mut self, gen: u64, stream: StreamRef, f: Frame, now: Instant) {
        self.pass_due = true;
        self.last_now = now;
        if !self.heard_from(gen, now) {
            return;
        }
        match stream {
            StreamRef::Control => self.on_control(gen, f, now),
            StreamRef::Conv { conversation, .. } => {
                self.on_conversation_frame(gen, &conversation, f, now)
            }
        }
    }

    /// The server opened a conversation stream on session `gen`. Returns true if the driver should
    /// write on it (this session has no stream of its own for the conversation yet).
    pub(crate) fn handle_accepted(&mut self, gen: u64, serial: u64, conversation: String) -> bool {
        self.pass_due = true;
        let now = self.last_now;
        let Some(session) = self.session(gen) else {
            return false;
        };
        if session.streams.has(&conversation) {
            return false;
        }
        session.streams.accepted(conversation, serial, now);
        true
    }

    /// A datagram arrived on session `gen`.
    pub(crate) fn handle_datagram(&mut self, gen: u64, f: Frame) {
        let Some(session) = self.session(gen) else {
            return;
        };
        let welcomed = session.welcomed;
        let inbox = &self.inbox;
        let event = datagram_event(f, welcomed, |c| inbox.is_known(c));
        self.effects.events.extend(event);
    }

    /// A stream of session `gen` ended (finished, reset, or undecodable).
    pub(crate) fn handle_stream_ended(
        &mut self,
        gen: u64,
        stream: StreamRef,
        reason: String,
        code: Option<ErrorCode>,
        now: Instant,
    ) {
        self.pass_due = true;
        let Some(session) = self.session(gen) else {
            return;
        };
        match stream {
            StreamRef::Control => {
                self.disconnected(format!("control stream ended: {reason}"), false, now)
            }
            StreamRef::Conv {
                serial,
                conversation,
            } => {
                if !session.streams.ended(&conversation, serial) {
                    // A stream we only read from (server-opened duplicate), or one already replaced or
                    // finished by us (its slot is free now).
                    return;
                }
                tracing::debug!(%conversation, %reason, ?code, "conversation stream ended");
                self.transmits.push_back(Transmit::Forget {
                    gen,
                    conversation: conversation.clone(),
                    serial,
                });
                // FERRY-FRAME-13: a reset refusing the conversation counts even if the Error frame
                // before it was discarded; otherwise its Sends would be resent (and refused) until
                // they time out.
                if let Some(code) = code.filter(|c| refuses_conversation(*c)) {
                    let error = frame::Error {
                        code: code.0,
                        message: format!("stream reset: {reason}"),
                        ..Default::default()
                    };
                    self.on_conversation_error(gen, &conversation, error, now);
                }
                self.outbox.on_stream_lost(&conversation, now);
                let lost = self.inbox.on_stream_lost(&conversation);
                self.fail_history(lost);
            }
        }
    }

    fn on_conversation_frame(&mut self, gen: u64, conversation: &str, f: Frame, now: Instant) {
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
                let (head_seq, has_more) = (r.head_seq, r.has_more);
                let (tag, arrived, page) = self.inbox.on_pull_result(conversation, r);
                if let Some(PullTag::History(id)) = tag {
                    self.on_history_page(id, page, head_seq, has_more);
                }
                self.arrived(conversation, arrived);
            }
            Kind::Error(e) => self.on_conversation_error(gen, conversation, e, now),
            other => tracing::debug!(?other, "unexpected frame on a conversation stream"),
        }
    }

    /// Messages became ready: store them (once), then report them.
    fn arrived(&mut self, conversation: &str, arrived: Arrived) {
        if let Some(epoch) = arrived.epoch_reset {
            self.own_stored.retain(|(c, _)| c != conversation);
            self.effects.events.push(Event::EpochReset {
                conversation: conversation.to_owned(),
                epoch,
            });
        }
        if arrived.ready.is_empty() {
            return;
        }
        self.effects.stored.push(conversation.to_owned());
        let last = arrived.ready.last().map_or(0, |m| m.seq);
        for m in arrived.ready {
            // An own message was written with its SendAck already.
            if !self.own_stored.remove(&(conversation.to_owned(), m.seq)) {
                self.effects.commit.messages.push(m.clone());
            }
            self.report_message(m);
        }
        // Own messages at or below the window's new position will never be handed out again.
        self.own_stored
            .retain(|(c, seq)| c != conversation || *seq > last);
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
        if !self.answers_here(&ack.client_msg_id, conversation) {
            return;
        }
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
        // Stored in the same transaction that deletes the outbox entry, whether or not the receive
        // window can hand it out yet; `arrived` does not insert it a second time.
        self.effects.commit.messages.push(own.clone());
        self.effects
            .commit
            .outbox_done
            .push(record.client_msg_id.clone());
        if self
            .inbox
            .contiguous(conversation)
            .is_some_and(|contiguous| ack.seq > contiguous)
        {
            self.own_stored.insert((conversation.to_owned(), ack.seq));
        }
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

    /// Whether an answer naming `client_msg_id` on `conversation`'s stream may settle that Send: a Send
    /// is answered on its own conversation's stream, so an answer on another one is the server's error
    /// and settles nothing (the Send is resent after its timeout). Taking it would file the message
    /// under the wrong conversation's receive window and epoch, and could report a seq twice.
    fn answers_here(&self, client_msg_id: &str, conversation: &str) -> bool {
        match self.outbox.conversation_of(client_msg_id) {
            Some(of) if of != conversation => {
                tracing::warn!(
                    client_msg_id,
                    stream = conversation,
                    of,
                    "ignoring an answer to a Send of another conversation"
                );
                false
            }
            _ => true,
        }
    }

    fn on_conversation_error(
        &mut self,
        gen: u64,
        conversation: &str,
        e: frame::Error,
        now: Instant,
    ) {
        let code = ErrorCode(e.code);
        let retry_after = (e.retry_after_ms > 0).then(|| Duration::from_millis(e.retry_after_ms));
        let rejected = if !e.client_msg_id.is_empty() {
            if !self.answers_here(&e.client_msg_id, conversation) {
                return;
            }
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
            self.refuse_history(conversation, code, &e.message);
            if let Some(s) = self.session(gen) {
                if let Some(serial) = s.streams.forget(conversation) {
                    self.transmits.push_back(Transmit::Forget {
                        gen,
                        conversation: conversation.to_owned(),
                        serial,
                    });
                }
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

    /// Queues what is due: Acks and Pulls (once Welcomed), Sends (once Welcomed or in early data; not while draining).
    pub(super) fn transmit_pass(&mut self, now: Instant) {
        let Phase::Live(s) = &self.phase else { return };
        let (ready, welcomed, may_send) = (s.welcomed || s.early, s.welcomed, !s.draining);
        let gen = s.gen;
        if welcomed {
            for (conversation, seq) in self.inbox.poll_acks() {
                self.stream(&conversation, frame(Kind::Ack(frame::Ack { seq })));
            }
        }
        // Pulls do not wait for Welcome: Pull is an early-data frame, allowed before Welcome
        // (FERRY-ZERORTT-1, FERRY-HELLO-5), and the server takes stream 0 as the control stream
        // whichever stream's data arrives first (FERRY-CONN-1), so the first pages travel in Hello's
        // flight and catch-up saves the round trip of waiting for Welcome. Should the session be
        // refused, the Pulls die with its connection; if the server rejects 0-RTT, the session starts
        // over and they are asked again.
        let mut pulls = Vec::new();
        if self.probed_gen != Some(gen) {
            // The session's first pass: probe every tracked conversation at once.
            self.probed_gen = Some(gen);
            pulls = self.inbox.probe_pulls(PROBE_MAX_CONVERSATIONS, now);
        }
        pulls.extend(self.inbox.poll_pulls(now));
        for (conversation, pull) in pulls {
            let pull = frame(Kind::Pull(frame::Pull {
                after_seq: pull.after_seq,
                limit: pull.limit,
            }));
            self.stream(&conversation, pull);
        }
        self.admit_streams();
        if may_send && ready {
            // A conversation without a stream and without a free slot keeps its Sends queued and asks
            // for a slot instead (FERRY-STREAM-7).
            let Phase::Live(s) = &self.phase else { return };
            let streams = &s.streams;
            let (mut planned, mut wanted) = (HashSet::new(), Vec::new());
            let open = |c: &str| {
                let usable =
                    streams.has(c) || planned.contains(c) || streams.can_open_more(planned.len());
                if !usable && !wanted.iter().any(|w| w == c) {
                    wanted.push(c.to_owned());
                } else if !streams.has(c) {
                    planned.insert(c.to_owned());
                }
                usable
            };
            for record in self.outbox.poll_transmit(now, open) {
                let send = frame(Kind::Send(frame::Send {
                    client_msg_id: record.client_msg_id,
                    body: Bytes::clone(&record.body),
                }));
                self.stream(&record.conversation, send);
            }
            // Asked for after the Sends above took their streams, so none of those is held back.
            if let Phase::Live(s) = &mut self.phase {
                for c in wanted {
                    s.streams.want(&c);
                }
            }
        }
        self.admit_streams();
    }
}

impl Core {
    /// Manual ack mode, at start: stored messages the application never confirmed are reported again
    /// (they are durable already, so no commit holds them back).
    pub(crate) fn report_stored(&mut self, messages: impl IntoIterator<Item = ReceivedMessage>) {
        let before = self.effects.events.len();
        for m in messages {
            self.report_message(m);
        }
        let reported: Vec<Event> = self.effects.events.drain(before..).collect();
        self.events.extend(reported);
    }
}

/// Codes with which a server refuses a conversation as a whole (its `Open`): no Send of it can succeed.
fn refuses_conversation(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::FORBIDDEN | ErrorCode::NOT_FOUND | ErrorCode::INVALID_ARGUMENT
    )
}

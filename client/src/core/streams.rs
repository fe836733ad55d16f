//! The session's conversation streams within the announced `max_open_streams` (FERRY-STREAM-7).
//!
//! The server resets a client-opened stream beyond the limit with TOO_MANY_STREAMS; the client never
//! provokes that. It counts the streams it opened until their end is seen (a stream it finished still
//! counts on the server until the server finished its side too), and a conversation that needs a stream
//! while every slot is taken waits: its Acks and Pulls are held here (Sends stay queued in the outbox),
//! and the least recently used *idle* stream (no Pull or Send unanswered on it) is finished to make room.
//! Streams the server opened do not count (they are its own to deliver on) and are never finished here.
//!
//! Held frames are bounded: per conversation at most one Ack (the latest, acks are cumulative), one
//! Pull per page (a timed-out Pull asked again is already held) and one Send per client_msg_id; Pulls
//! and Sends themselves are bounded by the announced in-flight limits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use ferry_protocol::frame::frame::Kind;
use ferry_protocol::Frame;

/// A stream the session writes on.
#[derive(Debug, Clone, Copy)]
struct Stream {
    serial: u64,
    /// Opened by this client (counts toward `max_open_streams`); false for a server-opened stream.
    ours: bool,
    /// The last frame written on it, to finish the least recently used idle stream first.
    last_used: Instant,
}

/// Conversation streams of one session.
#[derive(Debug)]
pub(super) struct Streams {
    by_conv: HashMap<String, Stream>,
    /// Serials of streams this client opened and finished whose end it has not seen yet.
    closing: HashSet<u64>,
    /// Conversations waiting for a slot, in the order they asked, with their held frames.
    waiting: VecDeque<(String, Vec<Frame>)>,
    max_open: usize,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            by_conv: HashMap::new(),
            closing: HashSet::new(),
            waiting: VecDeque::new(),
            max_open: ferry_protocol::limits::DEFAULTS.max_open_streams as usize,
        }
    }
}

/// What the core must do to open or finish streams after [`Streams::admit`].
#[derive(Debug, Default)]
pub(super) struct Admitted {
    /// Conversations to open a stream for now, each with the frames held for it (in order).
    pub open: Vec<(String, Vec<Frame>)>,
    /// Idle streams to finish (conversation, serial) to make room.
    pub finish: Vec<(String, u64)>,
}

impl Streams {
    /// Adopts the announced limit (0 keeps the default, as for every limit: FERRY-HELLO-5).
    pub fn set_max_open(&mut self, max: u32) {
        if max > 0 {
            self.max_open = max as usize;
        }
    }

    /// The stream serial of the conversation, if the session has one.
    pub fn serial(&self, conversation: &str) -> Option<u64> {
        self.by_conv.get(conversation).map(|s| s.serial)
    }

    /// Whether the conversation has a stream to write on.
    pub fn has(&self, conversation: &str) -> bool {
        self.by_conv.contains_key(conversation)
    }

    /// Client-opened streams the server still counts.
    pub fn open_count(&self) -> usize {
        self.by_conv.values().filter(|s| s.ours).count() + self.closing.len()
    }

    /// Whether a new stream may be opened now without exceeding the limit. Conversations already waiting
    /// go first, so a newcomer never overtakes them.
    pub fn can_open(&self) -> bool {
        self.can_open_more(0)
    }

    /// Whether a new stream may be opened beyond `planned` ones about to be opened.
    pub fn can_open_more(&self, planned: usize) -> bool {
        self.waiting.is_empty() && self.open_count() + planned < self.max_open
    }

    /// A frame is about to be written on the conversation's stream.
    pub fn touch(&mut self, conversation: &str, now: Instant) {
        if let Some(s) = self.by_conv.get_mut(conversation) {
            s.last_used = now;
        }
    }

    /// This client opened a stream for the conversation.
    pub fn opened(&mut self, conversation: &str, serial: u64, now: Instant) {
        let stream = Stream {
            serial,
            ours: true,
            last_used: now,
        };
        self.by_conv.insert(conversation.to_owned(), stream);
    }

    /// The server opened a stream for a conversation without one: the session writes on it too.
    pub fn accepted(&mut self, conversation: String, serial: u64, now: Instant) {
        let stream = Stream {
            serial,
            ours: false,
            last_used: now,
        };
        self.by_conv.insert(conversation, stream);
    }

    /// A stream ended (seen by its reader). Returns true if it was the conversation's current stream
    /// (which is then forgotten); an ended stream this client finished frees its slot.
    pub fn ended(&mut self, conversation: &str, serial: u64) -> bool {
        self.closing.remove(&serial);
        if self.serial(conversation) == Some(serial) {
            self.by_conv.remove(conversation);
            return true;
        }
        false
    }

    /// The session stops writing on the conversation's stream (refused, or finished as idle). A stream of
    /// ours keeps counting until its end is seen. Returns its serial.
    pub fn forget(&mut self, conversation: &str) -> Option<u64> {
        let stream = self.by_conv.remove(conversation)?;
        if stream.ours {
            self.closing.insert(stream.serial);
        }
        Some(stream.serial)
    }

    /// Holds a frame until the conversation gets a stream.
    pub fn hold(&mut self, conversation: &str, frame: Frame) {
        let at = match self.waiting.iter().position(|(c, _)| c == conversation) {
            Some(at) => at,
            None => {
                self.waiting
                    .push_back((conversation.to_owned(), Vec::new()));
                self.waiting.len() - 1
            }
        };
        let held = &mut self.waiting[at].1;
        // Keep the held frames bounded: the latest cumulative Ack replaces an earlier one, and a Pull
        // asked again (after its timeout) is already held.
        match &frame.kind {
            Some(Kind::Ack(_)) => held.retain(|f| !matches!(f.kind, Some(Kind::Ack(_)))),
            Some(Kind::Pull(p)) if held.iter().any(|f| same_pull(f, p)) => return,
            Some(Kind::Send(m)) if held.iter().any(|f| same_send(f, &m.client_msg_id)) => return,
            _ => {}
        }
        held.push(frame);
    }

    /// The conversation has Sends queued but no stream and no free slot: ask for one (Sends stay in the
    /// outbox meanwhile).
    pub fn want(&mut self, conversation: &str) {
        if !self.waiting.iter().any(|(c, _)| c == conversation) {
            self.waiting
                .push_back((conversation.to_owned(), Vec::new()));
        }
    }

    /// Whether the conversation waits for a slot.
    pub fn is_waiting(&self, conversation: &str) -> bool {
        self.waiting.iter().any(|(c, _)| c == conversation)
    }

    /// Gives free slots to waiting conversations (oldest first) and picks idle streams to finish for
    /// the rest: the least recently used of ours for which `busy` is false. A finished stream frees its
    /// slot once its end is seen ([`Streams::ended`]); until then nothing more is finished for the same
    /// waiting conversation.
    pub fn admit(&mut self, mut busy: impl FnMut(&str) -> bool) -> Admitted {
        let mut admitted = Admitted::default();
        let mut free = self.max_open.saturating_sub(self.open_count());
        while free > 0 {
            let Some((conversation, frames)) = self.waiting.pop_front() else {
                break;
            };
            // One that got a stream meanwhile (the server opened one) takes no slot.
            if !self.has(&conversation) {
                free -= 1;
            }
            admitted.open.push((conversation, frames));
        }
        let mut needed = self.waiting.len().saturating_sub(self.closing.len());
        if needed == 0 {
            return admitted;
        }
        let mut idle: Vec<(Instant, String, u64)> = self
            .by_conv
            .iter()
            .filter(|(c, s)| s.ours && !busy(c) && !self.is_waiting(c))
            .map(|(c, s)| (s.last_used, c.clone(), s.serial))
            .collect();
        idle.sort();
        for (_, conversation, _) in idle {
            if needed == 0 {
                break;
            }
            if let Some(serial) = self.forget(&conversation) {
                admitted.finish.push((conversation, serial));
                needed -= 1;
            }
        }
        admitted
    }
}

fn same_send(held: &Frame, client_msg_id: &str) -> bool {
    matches!(&held.kind, Some(Kind::Send(m)) if m.client_msg_id == client_msg_id)
}

fn same_pull(held: &Frame, pull: &ferry_protocol::frame::Pull) -> bool {
    matches!(&held.kind, Some(Kind::Pull(p)) if p.after_seq == pull.after_seq && p.limit == pull.limit)
}

//! Receive handling for every conversation: one [`ReceiveWindow`] each, plus the bookkeeping around it
//! (which Pulls are outstanding on which stream, where a conversation without local history starts,
//! epoch changes, and which cumulative Acks are due). Pure state: no I/O, time passed in as `now`.
//!
//! The driver feeds it Deliver, PullResult, SendAck and conversation heads (HeartbeatAck, SyncResult);
//! it answers with the messages that became ready, in seq order and exactly once. The driver stores
//! those, then calls [`Inbox::stored`] (auto ack) or, later, [`Inbox::app_ack`] (manual ack), and sends
//! what [`Inbox::poll_acks`] and [`Inbox::poll_pulls`] ask for.
//!
//! Files: this one holds the windows, heads, epochs and Acks; `pulls` the outstanding Pulls (which
//! answer is which, pipelined catch-up, timeouts, lost streams); `tests` the unit tests.

mod pulls;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use ferry_protocol::frame::ConversationState;
use ferry_protocol::{Arrival, ReceiveWindow, WindowConfig};

use pulls::Outstanding;
pub use pulls::PullTag;

use crate::message::ReceivedMessage;
use crate::store::ConversationRow;

/// The result of feeding one arrival.
#[derive(Debug, Default, PartialEq)]
pub struct Arrived {
    /// Messages now ready, in seq order: store them, then report them.
    pub ready: Vec<ReceivedMessage>,
    /// The conversation moved to this epoch; its window restarted (report `Event::EpochReset`).
    pub epoch_reset: Option<u64>,
}

#[derive(Debug)]
struct Conv {
    window: ReceiveWindow<ReceivedMessage>,
    app_acked: u64,
    ack_target: u64,
    ack_sent: u64,
    /// The last epochs this conversation left, newest last (FERRY-RECV-12): frames still arriving in
    /// one of them are late, and changing back would hand the new epoch's messages out twice.
    left: VecDeque<u64>,
}

/// How many left epochs a conversation remembers (an epoch changes only after a loss of history, so a
/// handful covers any frames still in flight).
const LEFT_EPOCHS: usize = 4;

impl Conv {
    /// Whether `epoch` is one this conversation already left.
    fn left(&self, epoch: u64) -> bool {
        self.left.contains(&epoch)
    }
}

/// Receive state of all conversations.
#[derive(Debug)]
pub struct Inbox {
    convs: HashMap<String, Conv>,
    window: WindowConfig,
    recent_window: u64,
    auto_ack: bool,
    dirty: BTreeSet<String>,
    /// Conversations known without a window yet: this client's sends to them were acknowledged or it
    /// created them, before a Sync or Deliver set them up.
    learned: HashSet<String>,
    /// Pulls sent and not yet answered, per conversation stream in request order (answers come back in
    /// that order). Kept apart from the windows: history pages are pulled for conversations without one.
    pulls: HashMap<String, VecDeque<Outstanding>>,
    /// The largest Pull page the server serves (the announced `max_pull_page`).
    page: u32,
    /// The announced `max_frame_size`: a page should fit one PullResult frame (see `Inbox::page`).
    max_frame_size: usize,
    /// Bytes per message on the wire, estimated from the pages received so far.
    typical_size: usize,
    /// Most Pulls in flight over all conversations (the announced in-flight limit).
    max_pulls: usize,
}

/// Where a conversation without local history starts (its window's initial contiguous seq): the last
/// `recent_window` messages, but nothing before the reader's first visible seq. Older history is loaded
/// on demand ([`crate::Client::history`]).
pub fn initial_position(first_seq: u64, head_seq: u64, recent_window: u64) -> u64 {
    first_seq
        .saturating_sub(1)
        .max(head_seq.saturating_sub(recent_window))
}

impl Inbox {
    /// An empty inbox. `auto_ack`: Acks follow the client store's commits (else the application's).
    pub fn new(window: WindowConfig, recent_window: u64, auto_ack: bool) -> Self {
        Inbox {
            convs: HashMap::new(),
            window,
            recent_window,
            auto_ack,
            dirty: BTreeSet::new(),
            learned: HashSet::new(),
            pulls: HashMap::new(),
            page: window.pull_limit.max(1),
            max_frame_size: ferry_protocol::limits::DEFAULTS.max_frame_size as usize,
            typical_size: pulls::INITIAL_TYPICAL_SIZE,
            max_pulls: crate::core::DEFAULT_MAX_INFLIGHT,
        }
    }

    /// Applies the server's announced recent window (0 = not announced).
    pub fn set_recent_window(&mut self, recent_window: u64) {
        if recent_window > 0 {
            self.recent_window = recent_window;
        }
    }

    /// Restores a conversation from the store.
    pub fn restore(&mut self, row: &ConversationRow) {
        let mut window = ReceiveWindow::new(row.epoch, row.contiguous_seq, self.window);
        window.on_head(row.epoch, row.head_seq);
        let acked = if self.auto_ack {
            row.contiguous_seq
        } else {
            row.app_acked_seq.min(row.contiguous_seq)
        };
        self.convs.insert(
            row.conversation.clone(),
            Conv {
                window,
                app_acked: acked,
                ack_target: acked,
                ack_sent: acked,
                left: VecDeque::new(),
            },
        );
    }

    fn create(&mut self, conversation: &str, epoch: u64, start: u64) -> &mut Conv {
        self.learned.remove(conversation);
        self.dirty.insert(conversation.to_owned());
        let window = ReceiveWindow::new(epoch, start, self.window);
        self.convs.entry(conversation.to_owned()).or_insert(Conv {
            window,
            app_acked: start,
            ack_target: start,
            ack_sent: start,
            left: VecDeque::new(),
        })
    }

    fn reset(&mut self, conversation: &str, epoch: u64, start: u64) {
        let conv = self
            .convs
            .get_mut(conversation)
            .expect("reset of a known conversation");
        if conv.left.len() == LEFT_EPOCHS {
            conv.left.pop_front();
        }
        conv.left.push_back(conv.window.epoch());
        conv.window.reset(epoch, start);
        conv.app_acked = start;
        conv.ack_target = start;
        conv.ack_sent = start;
        self.pulls.remove(conversation);
        self.dirty.insert(conversation.to_owned());
    }

    /// Whether the conversation has a window.
    pub fn knows(&self, conversation: &str) -> bool {
        self.convs.contains_key(conversation)
    }

    /// The server accepted this client in the conversation (a send acknowledged, a group created) before
    /// a Sync or Deliver gave it a window.
    pub fn learn(&mut self, conversation: &str) {
        if !self.knows(conversation) && !self.learned.contains(conversation) {
            self.learned.insert(conversation.to_owned());
        }
    }

    /// Whether the client knows the conversation at all: it has a window (from the store, a Sync or
    /// HeartbeatAck, a Deliver) or was [learned](Inbox::learn). Relayed datagrams for other conversations
    /// are ignored (FERRY-SEC-8).
    pub fn is_known(&self, conversation: &str) -> bool {
        self.knows(conversation) || self.learned.contains(conversation)
    }

    /// The conversation's epoch, if known.
    pub fn epoch(&self, conversation: &str) -> Option<u64> {
        self.convs.get(conversation).map(|c| c.window.epoch())
    }

    /// The conversation's contiguous seq, if known.
    pub fn contiguous(&self, conversation: &str) -> Option<u64> {
        self.convs.get(conversation).map(|c| c.window.contiguous())
    }

    /// Highest seq known to exist, if known.
    pub fn known_head(&self, conversation: &str) -> Option<u64> {
        self.convs.get(conversation).map(|c| c.window.known_head())
    }

    /// A Deliver arrived.
    pub fn on_deliver(
        &mut self,
        conversation: &str,
        epoch: u64,
        message: ReceivedMessage,
    ) -> Arrived {
        let seq = message.seq;
        let recent = self.recent_window;
        if !self.knows(conversation) {
            self.create(conversation, epoch, seq.saturating_sub(recent));
        }
        let conv = self.convs.get_mut(conversation).expect("created above");
        let mut arrived = Arrived::default();
        if conv.left(epoch) {
            return arrived;
        }
        let mut arrival = conv.window.on_message(epoch, seq, message.clone());
        if let Arrival::EpochChanged { epoch } = arrival {
            self.reset(conversation, epoch, seq.saturating_sub(recent));
            arrived.epoch_reset = Some(epoch);
            let conv = self.convs.get_mut(conversation).expect("known");
            arrival = conv.window.on_message(epoch, seq, message);
        }
        if let Arrival::Ready(ready) = arrival {
            self.dirty.insert(conversation.to_owned());
            arrived.ready = ready;
        }
        arrived
    }

    /// This device's own message was acknowledged (SendAck): it fills its seq in the window, as no
    /// Deliver will come for it. Unknown conversations are left to Sync/Deliver to set up; until then
    /// they count as [learned](Inbox::learn).
    pub fn on_own_message(&mut self, message: ReceivedMessage) -> Vec<ReceivedMessage> {
        let conversation = message.conversation.clone();
        let Some(conv) = self.convs.get_mut(&conversation) else {
            self.learned.insert(conversation);
            return Vec::new();
        };
        let epoch = conv.window.epoch();
        match conv.window.on_message(epoch, message.seq, message) {
            Arrival::Ready(ready) => {
                self.dirty.insert(conversation);
                ready
            }
            _ => Vec::new(),
        }
    }

    /// A conversation state arrived (HeartbeatAck or SyncResult): learn its head, set up conversations
    /// without local history, detect epoch changes. Returns the new epoch if it changed.
    pub fn on_state(&mut self, state: &ConversationState) -> Option<u64> {
        let id = state.conversation_id.as_str();
        let start = initial_position(state.first_seq, state.head_seq, self.recent_window);
        if !self.knows(id) {
            let conv = self.create(id, state.epoch, start);
            conv.window.on_head(state.epoch, state.head_seq);
            return None;
        }
        let conv = self.convs.get_mut(id).expect("known");
        if conv.left(state.epoch) {
            return None;
        }
        let before = conv.window.known_head();
        match conv.window.on_head(state.epoch, state.head_seq) {
            Some(epoch) => {
                self.reset(id, epoch, start);
                let conv = self.convs.get_mut(id).expect("known");
                conv.window.on_head(epoch, state.head_seq);
                Some(epoch)
            }
            None => {
                if conv.window.known_head() != before {
                    self.dirty.insert(id.to_owned());
                }
                None
            }
        }
    }

    /// The ready messages of `conversation` were committed to the store. In auto mode this is what the
    /// Ack reports.
    pub fn stored(&mut self, conversation: &str) {
        if !self.auto_ack {
            return;
        }
        if let Some(conv) = self.convs.get_mut(conversation) {
            let contiguous = conv.window.contiguous();
            conv.app_acked = contiguous;
            conv.ack_target = conv.ack_target.max(contiguous);
        }
    }

    /// Manual mode: the application committed everything up to `seq` (clamped to what was handed over).
    /// Returns true if the position moved (the conversation row must be written).
    pub fn app_ack(&mut self, conversation: &str, seq: u64) -> bool {
        let Some(conv) = self.convs.get_mut(conversation) else {
            return false;
        };
        let seq = seq.min(conv.window.contiguous());
        if seq <= conv.app_acked {
            return false;
        }
        conv.app_acked = seq;
        conv.ack_target = seq;
        self.dirty.insert(conversation.to_owned());
        true
    }

    /// Cumulative Acks due now (at most one per conversation).
    pub fn poll_acks(&mut self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (id, conv) in &mut self.convs {
            if conv.ack_target > conv.ack_sent {
                conv.ack_sent = conv.ack_target;
                out.push((id.clone(), conv.ack_target));
            }
        }
        out
    }

    /// Rows of the conversations that changed since the last call.
    pub fn take_dirty_rows(&mut self) -> Vec<ConversationRow> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|id| {
                let conv = self.convs.get(&id)?;
                Some(ConversationRow {
                    epoch: conv.window.epoch(),
                    contiguous_seq: conv.window.contiguous(),
                    app_acked_seq: conv.app_acked,
                    head_seq: conv.window.known_head(),
                    conversation: id,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

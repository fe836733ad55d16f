//! Receive handling for every conversation: one [`ReceiveWindow`] each, plus the bookkeeping around it
//! (which Pulls are outstanding on which stream, where a conversation without local history starts,
//! epoch changes, and which cumulative Acks are due). Pure state: no I/O, time passed in as `now`.
//!
//! The driver feeds it Deliver, PullResult, SendAck and conversation heads (HeartbeatAck, SyncResult);
//! it answers with the messages that became ready, in seq order and exactly once. The driver stores
//! those, then calls [`Inbox::stored`] (auto ack) or, later, [`Inbox::app_ack`] (manual ack), and sends
//! what [`Inbox::poll_acks`] and [`Inbox::poll_pulls`] ask for.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

use ferry_protocol::frame::{ConversationState, PullResult};
use ferry_protocol::{Arrival, PullRequest, ReceiveWindow, WindowConfig};

use crate::message::ReceivedMessage;
use crate::store::ConversationRow;

/// Why a Pull was sent, to route its PullResult (results come back in request order on a stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullTag {
    /// A gap or tail pull asked for by the receive window.
    Window,
    /// A history page the application asked for, with the driver's request id.
    History(u64),
}

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
    pulls: VecDeque<(u64, PullTag)>,
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
                pulls: VecDeque::new(),
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
            pulls: VecDeque::new(),
        })
    }

    fn reset(&mut self, conversation: &str, epoch: u64, start: u64) {
        let conv = self
            .convs
            .get_mut(conversation)
            .expect("reset of a known conversation");
        conv.window.reset(epoch, start);
        conv.app_acked = start;
        conv.ack_target = start;
        conv.ack_sent = start;
        conv.pulls.clear();
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

    /// Records a Pull sent on the conversation's stream.
    pub fn pull_sent(&mut self, conversation: &str, after_seq: u64, tag: PullTag) {
        if let Some(conv) = self.convs.get_mut(conversation) {
            conv.pulls.push_back((after_seq, tag));
        }
    }

    /// A PullResult arrived on the conversation's stream. Returns what it answered (`None` if no Pull was
    /// outstanding), the arrival, and the converted messages of the page (for history requests).
    pub fn on_pull_result(
        &mut self,
        conversation: &str,
        result: PullResult,
    ) -> (Option<PullTag>, Arrived, Vec<ReceivedMessage>) {
        let Some(conv) = self.convs.get_mut(conversation) else {
            return (None, Arrived::default(), Vec::new());
        };
        let Some((after_seq, tag)) = conv.pulls.pop_front() else {
            return (None, Arrived::default(), Vec::new());
        };
        let epoch = result.epoch;
        let page: Vec<ReceivedMessage> = result
            .messages
            .into_iter()
            .map(|m| ReceivedMessage::from_wire(conversation, epoch, m))
            .collect();
        let mut arrived = Arrived::default();
        let arrival = conv.window.on_pull_result(
            after_seq,
            epoch,
            result.head_seq,
            page.iter().map(|m| (m.seq, m.clone())),
        );
        match arrival {
            Arrival::Ready(ready) => {
                arrived.ready = ready;
                self.dirty.insert(conversation.to_owned());
            }
            Arrival::EpochChanged { epoch } => {
                let start = initial_position(0, result.head_seq, self.recent_window);
                self.reset(conversation, epoch, start);
                let conv = self.convs.get_mut(conversation).expect("known");
                conv.window.on_head(epoch, result.head_seq);
                arrived.epoch_reset = Some(epoch);
            }
            _ => {
                // Heads may have moved even without new messages.
                self.dirty.insert(conversation.to_owned());
            }
        }
        (Some(tag), arrived, page)
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

    /// The Pulls to send now, by conversation.
    pub fn poll_pulls(&mut self, now: Instant) -> Vec<(String, PullRequest)> {
        let mut out = Vec::new();
        for (id, conv) in &mut self.convs {
            if let Some(req) = conv.window.poll_pull(now) {
                conv.pulls.push_back((req.after_seq, PullTag::Window));
                out.push((id.clone(), req));
            }
        }
        out
    }

    /// When a pull grace period or pull timeout ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.convs
            .values()
            .filter_map(|c| c.window.next_deadline())
            .min()
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

    /// The conversation's stream was lost: outstanding Pull answers will not come. Returns the history
    /// requests that lost their answer. An outstanding gap pull is asked again when its pull timeout
    /// expires (not at once: a server that keeps resetting streams must not cause a busy loop).
    pub fn on_stream_lost(&mut self, conversation: &str) -> Vec<u64> {
        let Some(conv) = self.convs.get_mut(conversation) else {
            return Vec::new();
        };
        let lost = conv
            .pulls
            .drain(..)
            .filter_map(|(_, tag)| match tag {
                PullTag::History(id) => Some(id),
                PullTag::Window => None,
            })
            .collect();
        lost
    }

    /// The connection was lost: like [`Inbox::on_stream_lost`] for every conversation. Acks already sent
    /// are not repeated (the server's cursor only feeds Sync's `acked_seq`; the next Ack catches up).
    pub fn on_connection_lost(&mut self) -> Vec<u64> {
        let ids: Vec<String> = self.convs.keys().cloned().collect();
        let mut lost = Vec::new();
        for id in ids {
            lost.extend(self.on_stream_lost(&id));
        }
        lost
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
mod tests {
    use super::*;
    use crate::message::MessageKind;
    use bytes::Bytes;
    use ferry_protocol::frame::Message;

    const C: &str = "d:alice:bob";

    fn wire(seq: u64) -> Message {
        Message {
            seq,
            sender: "alice".into(),
            sender_device: "phone".into(),
            client_msg_id: format!("m{seq}"),
            body: Bytes::from(format!("b{seq}")),
            server_time_ms: seq,
            kind: 0,
            membership: None,
        }
    }

    fn msg(seq: u64, epoch: u64) -> ReceivedMessage {
        ReceivedMessage::from_wire(C, epoch, wire(seq))
    }

    fn seqs(v: &[ReceivedMessage]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    fn state(head: u64, epoch: u64, first: u64) -> ConversationState {
        ConversationState {
            conversation_id: C.into(),
            head_seq: head,
            epoch,
            first_seq: first,
            member: true,
            ..ConversationState::default()
        }
    }

    fn inbox(auto: bool) -> Inbox {
        Inbox::new(WindowConfig::default(), 50, auto)
    }

    #[test]
    fn conversations_are_known_from_the_store_sync_deliveries_and_own_sends() {
        let mut inbox = inbox(true);
        assert!(!inbox.is_known(C));
        inbox.on_state(&state(3, 1, 1));
        assert!(inbox.is_known(C));

        let mut inbox = self::inbox(true);
        inbox.on_deliver(C, 1, msg(1, 1));
        assert!(inbox.is_known(C));

        let mut inbox = self::inbox(true);
        inbox.restore(&ConversationRow {
            conversation: C.into(),
            epoch: 1,
            contiguous_seq: 2,
            app_acked_seq: 2,
            head_seq: 2,
        });
        assert!(inbox.is_known(C));

        // Learned from an own send: known, but without a window (history is not pulled for it).
        let mut inbox = self::inbox(true);
        assert!(inbox.on_own_message(msg(1, 1)).is_empty());
        assert!(inbox.is_known(C) && !inbox.knows(C));
        assert!(!inbox.is_known("d:alice:carol"));
        // Learned from a group answer.
        let mut inbox = self::inbox(true);
        inbox.learn(C);
        assert!(inbox.is_known(C) && !inbox.knows(C));
    }

    #[test]
    fn initial_position_takes_the_recent_window_but_not_before_first_seq() {
        assert_eq!(initial_position(1, 10, 50), 0);
        assert_eq!(initial_position(1, 500, 50), 450);
        assert_eq!(initial_position(480, 500, 50), 479);
        assert_eq!(initial_position(0, 0, 50), 0);
    }

    #[test]
    fn deliveries_are_ready_once_in_order_and_gaps_pull() {
        let now = Instant::now();
        let mut ib = inbox(true);
        assert_eq!(seqs(&ib.on_deliver(C, 7, msg(1, 7)).ready), [1]);
        assert!(ib.on_deliver(C, 7, msg(1, 7)).ready.is_empty(), "duplicate");
        assert!(ib.on_deliver(C, 7, msg(3, 7)).ready.is_empty(), "gap");
        let pulls = ib.poll_pulls(now);
        assert_eq!(
            pulls,
            vec![(
                C.to_string(),
                PullRequest {
                    after_seq: 1,
                    limit: 100
                }
            )]
        );
        let result = PullResult {
            messages: vec![wire(2), wire(3)],
            head_seq: 3,
            has_more: false,
            epoch: 7,
        };
        let (tag, arrived, page) = ib.on_pull_result(C, result);
        assert_eq!(tag, Some(PullTag::Window));
        assert_eq!(seqs(&arrived.ready), [2, 3]);
        assert_eq!(page.len(), 2);
        assert_eq!(arrived.ready[0].kind, MessageKind::User);
        // An unsolicited PullResult is ignored.
        let (tag, arrived, _) = ib.on_pull_result(C, PullResult::default());
        assert_eq!((tag, arrived), (None, Arrived::default()));
    }

    #[test]
    fn auto_mode_acks_after_store_commit_coalesced() {
        let mut ib = inbox(true);
        ib.on_deliver(C, 7, msg(1, 7));
        ib.on_deliver(C, 7, msg(2, 7));
        assert_eq!(ib.poll_acks(), vec![], "nothing stored yet");
        ib.stored(C);
        assert_eq!(ib.poll_acks(), vec![(C.to_string(), 2)]);
        assert_eq!(ib.poll_acks(), vec![]);
        assert!(!ib.app_ack(C, 2), "app acks do not matter in auto mode");
    }

    #[test]
    fn manual_mode_acks_only_what_the_app_confirmed() {
        let mut ib = inbox(false);
        ib.on_deliver(C, 7, msg(1, 7));
        ib.on_deliver(C, 7, msg(2, 7));
        ib.stored(C);
        assert_eq!(ib.poll_acks(), vec![]);
        assert!(ib.app_ack(C, 1));
        assert!(!ib.app_ack(C, 1));
        assert_eq!(ib.poll_acks(), vec![(C.to_string(), 1)]);
        assert!(ib.app_ack(C, 99), "clamped to contiguous");
        assert_eq!(ib.poll_acks(), vec![(C.to_string(), 2)]);
        let rows = ib.take_dirty_rows();
        assert_eq!(rows[0].app_acked_seq, 2);
        assert_eq!(rows[0].contiguous_seq, 2);
        // Restored, the app-acked position is kept apart from the stored one.
        let mut row = rows[0].clone();
        row.app_acked_seq = 1;
        let mut again = inbox(false);
        again.restore(&row);
        assert!(again.app_ack(C, 2));
    }

    #[test]
    fn new_conversation_from_sync_starts_at_the_recent_window_and_pulls_the_tail() {
        let now = Instant::now();
        let mut ib = inbox(true);
        assert_eq!(ib.on_state(&state(500, 7, 1)), None);
        assert_eq!(ib.contiguous(C), Some(450));
        let pulls = ib.poll_pulls(now);
        assert_eq!(pulls[0].1.after_seq, 450);
        let rows = ib.take_dirty_rows();
        assert_eq!((rows[0].contiguous_seq, rows[0].head_seq), (450, 500));
    }

    #[test]
    fn lost_tail_from_heartbeat_heads_triggers_a_pull() {
        let now = Instant::now();
        let mut ib = inbox(true);
        ib.on_deliver(C, 7, msg(1, 7));
        assert!(ib.poll_pulls(now).is_empty());
        assert_eq!(ib.on_state(&state(2, 7, 1)), None);
        assert_eq!(ib.poll_pulls(now)[0].1.after_seq, 1);
    }

    #[test]
    fn epoch_change_resets_the_window_and_is_reported() {
        let mut ib = inbox(true);
        ib.on_deliver(C, 7, msg(1, 7));
        ib.on_deliver(C, 7, msg(2, 7));
        let arrived = ib.on_deliver(C, 8, msg(1, 8));
        assert_eq!(arrived.epoch_reset, Some(8));
        assert_eq!(seqs(&arrived.ready), [1]);
        assert_eq!(ib.epoch(C), Some(8));
        assert_eq!(ib.on_state(&state(300, 9, 1)), Some(9));
        assert_eq!(ib.contiguous(C), Some(250));
    }

    #[test]
    fn own_sends_fill_the_window_so_no_pull_is_needed() {
        let now = Instant::now();
        let mut ib = inbox(true);
        ib.on_deliver(C, 7, msg(1, 7));
        assert!(ib.on_deliver(C, 7, msg(3, 7)).ready.is_empty());
        // seq 2 is ours: SendAck fills it and releases 3.
        assert_eq!(seqs(&ib.on_own_message(msg(2, 7))), [2, 3]);
        assert!(ib.poll_pulls(now).is_empty());
        assert!(ib
            .on_own_message(ReceivedMessage::from_wire("d:x:y", 7, wire(1)))
            .is_empty());
    }

    #[test]
    fn stream_loss_fails_history_pulls_and_repulls_gaps_after_the_timeout() {
        let now = Instant::now();
        let mut ib = inbox(true);
        ib.on_deliver(C, 7, msg(1, 7));
        ib.on_deliver(C, 7, msg(3, 7));
        assert_eq!(ib.poll_pulls(now).len(), 1);
        ib.pull_sent(C, 0, PullTag::History(9));
        assert!(ib.poll_pulls(now).is_empty(), "pull outstanding");
        assert_eq!(ib.on_stream_lost(C), vec![9]);
        assert!(ib.poll_pulls(now).is_empty());
        let later = now + WindowConfig::default().pull_timeout;
        assert_eq!(ib.poll_pulls(later)[0].1.after_seq, 1);
        // The re-asked pull is what the next PullResult answers.
        assert_eq!(
            ib.on_pull_result(C, PullResult::default()).0,
            Some(PullTag::Window)
        );
    }
}

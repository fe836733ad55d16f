//! The client's receive window for one conversation: a pure state machine (no I/O, no clock of its own;
//! every call that depends on time takes `now`).
//!
//! It turns at-least-once, possibly reordered arrivals (Deliver, PullResult) into exactly-once, in-order
//! hand-over to the application (FERRY-RECV-*):
//!
//! - `contiguous` is the highest seq such that every visible seq up to it was handed over;
//! - an arrival at `contiguous + 1` is handed over together with any buffered successors;
//! - a higher seq is a gap: it is buffered (up to a bound) and [`ReceiveWindow::poll_pull`] asks for the
//!   missing range; a lower or equal seq is a duplicate and dropped;
//! - heads learnt from HeartbeatAck / Sync / PullResult reveal a lost tail, which also triggers a pull;
//! - the application (or the client store) reports what it committed; [`ReceiveWindow::poll_ack`] says
//!   when a cumulative Ack is due.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Tunables of a [`ReceiveWindow`].
#[derive(Debug, Clone, Copy)]
pub struct WindowConfig {
    /// Most out-of-order messages kept; later ones are dropped and fetched by Pull instead.
    pub max_buffered: usize,
    /// Page size asked for in gap pulls.
    pub pull_limit: u32,
    /// A gap pull without an answer after this long is asked again.
    pub pull_timeout: Duration,
    /// How long a gap must persist (with `contiguous` not moving) before it is pulled. Concurrent senders'
    /// Delivers may arrive slightly out of order; a short grace lets them fill the gap without a Pull.
    /// Zero pulls at once.
    pub gap_grace: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            max_buffered: 1024,
            pull_limit: 100,
            pull_timeout: Duration::from_secs(5),
            gap_grace: Duration::ZERO,
        }
    }
}

/// A Pull the window wants sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullRequest {
    /// Ask for messages after this seq.
    pub after_seq: u64,
    /// Page size.
    pub limit: u32,
}

/// What became of one arrival.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<M> {
    /// These messages, in seq order, are now ready for the application.
    Ready(Vec<M>),
    /// Ahead of a gap; kept until the gap fills.
    Buffered,
    /// Ahead of a gap, but the buffer is full: dropped; a Pull will fetch it again.
    Dropped,
    /// Already handed over or already buffered.
    Duplicate,
    /// The message belongs to another epoch: history may have been lost; the caller must resync the
    /// conversation and call [`ReceiveWindow::reset`].
    EpochChanged {
        /// The epoch the server now reports.
        epoch: u64,
    },
}

/// Receive state of one conversation.
#[derive(Debug)]
pub struct ReceiveWindow<M> {
    config: WindowConfig,
    epoch: u64,
    contiguous: u64,
    committed: u64,
    acked: u64,
    known_head: u64,
    buffer: BTreeMap<u64, M>,
    pull_sent: Option<(PullRequest, Instant)>,
    /// When a gap was first seen by `poll_pull`, and the `contiguous` it was seen at.
    gap_seen: Option<(u64, Instant)>,
}

impl<M> ReceiveWindow<M> {
    /// A window whose every seq up to and including `contiguous` was already handed over and committed
    /// (as restored from the client store), in `epoch`.
    pub fn new(epoch: u64, contiguous: u64, config: WindowConfig) -> Self {
        ReceiveWindow {
            config,
            epoch,
            contiguous,
            committed: contiguous,
            acked: contiguous,
            known_head: contiguous,
            buffer: BTreeMap::new(),
            pull_sent: None,
            gap_seen: None,
        }
    }

    /// Epoch this window belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Highest seq handed over with nothing missing below it.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// Highest seq known to exist on the server.
    pub fn known_head(&self) -> u64 {
        self.known_head
    }

    /// Number of buffered out-of-order messages.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Starts over in a new epoch after the caller resynced: nothing buffered, nothing pending.
    pub fn reset(&mut self, epoch: u64, contiguous: u64) {
        *self = ReceiveWindow::new(epoch, contiguous, self.config);
    }

    /// A Deliver (or any single message) arrived.
    pub fn on_message(&mut self, epoch: u64, seq: u64, message: M) -> Arrival<M> {
        if epoch != self.epoch {
            return Arrival::EpochChanged { epoch };
        }
        self.known_head = self.known_head.max(seq);
        if seq <= self.contiguous || self.buffer.contains_key(&seq) {
            return Arrival::Duplicate;
        }
        if seq == self.contiguous + 1 {
            let mut ready = vec![message];
            self.contiguous = seq;
            self.drain_buffer(&mut ready);
            return Arrival::Ready(ready);
        }
        if self.buffer.len() >= self.config.max_buffered {
            // Keep the lowest seqs: they are the ones that unblock delivery soonest.
            match self.buffer.last_key_value() {
                Some((&highest, _)) if highest > seq => {
                    self.buffer.remove(&highest);
                }
                _ => return Arrival::Dropped,
            }
        }
        self.buffer.insert(seq, message);
        Arrival::Buffered
    }

    fn drain_buffer(&mut self, ready: &mut Vec<M>) {
        while let Some(entry) = self.buffer.first_entry() {
            if *entry.key() != self.contiguous + 1 {
                break;
            }
            self.contiguous += 1;
            ready.push(entry.remove());
        }
    }

    /// The server reported the conversation's head (HeartbeatAck, SyncResult, PullResult). A head above
    /// what was received reveals a lost tail. Returns `Some(epoch)` if the epoch differs.
    pub fn on_head(&mut self, epoch: u64, head_seq: u64) -> Option<u64> {
        if epoch != self.epoch {
            return Some(epoch);
        }
        self.known_head = self.known_head.max(head_seq);
        None
    }

    /// The answer to a Pull for `after_seq` arrived. Messages are consecutive; if the first one is above
    /// `after_seq + 1`, the seqs in between are not visible to this reader (it joined later) and are
    /// skipped (FERRY-PULL-4).
    pub fn on_pull_result(
        &mut self,
        after_seq: u64,
        epoch: u64,
        head_seq: u64,
        messages: impl IntoIterator<Item = (u64, M)>,
    ) -> Arrival<M> {
        if epoch != self.epoch {
            return Arrival::EpochChanged { epoch };
        }
        if matches!(self.pull_sent, Some((req, _)) if req.after_seq == after_seq) {
            self.pull_sent = None;
        }
        self.known_head = self.known_head.max(head_seq);
        let mut ready = Vec::new();
        let mut first = true;
        for (seq, message) in messages {
            // Saturating: at contiguous = u64::MAX no seq can lie above the next one (a server's
            // numbers, found by the client_core fuzz target).
            if first && after_seq == self.contiguous && seq > self.contiguous.saturating_add(1) {
                self.contiguous = seq - 1;
                self.buffer.retain(|&buffered, _| buffered > seq);
            }
            first = false;
            if let Arrival::Ready(mut more) = self.on_message(epoch, seq, message) {
                ready.append(&mut more);
            }
        }
        if ready.is_empty() {
            Arrival::Duplicate
        } else {
            Arrival::Ready(ready)
        }
    }

    /// The Pull this window needs sent now, if any: when something above `contiguous` is known to exist,
    /// the gap has lasted `gap_grace`, and no pull for it is outstanding (or the outstanding one timed out).
    pub fn poll_pull(&mut self, now: Instant) -> Option<PullRequest> {
        if self.known_head <= self.contiguous {
            self.pull_sent = None;
            self.gap_seen = None;
            return None;
        }
        let seen_at = match self.gap_seen {
            Some((at_contiguous, seen_at)) if at_contiguous == self.contiguous => seen_at,
            _ => {
                self.gap_seen = Some((self.contiguous, now));
                now
            }
        };
        if now.saturating_duration_since(seen_at) < self.config.gap_grace {
            return None;
        }
        if let Some((req, sent_at)) = self.pull_sent {
            if req.after_seq == self.contiguous
                && now.saturating_duration_since(sent_at) < self.config.pull_timeout
            {
                return None;
            }
        }
        let req = PullRequest {
            after_seq: self.contiguous,
            limit: self.config.pull_limit,
        };
        self.pull_sent = Some((req, now));
        Some(req)
    }

    /// When [`ReceiveWindow::poll_pull`] should be called next (a grace period or a pull timeout ends),
    /// for the caller's timer; `None` if nothing is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        if let Some((_, sent_at)) = self.pull_sent {
            return Some(sent_at + self.config.pull_timeout);
        }
        self.gap_seen
            .map(|(_, seen_at)| seen_at + self.config.gap_grace)
    }

    /// The application (or store) committed everything up to `seq`. Values above `contiguous` are clamped:
    /// nothing can be committed that was not handed over.
    pub fn commit(&mut self, seq: u64) {
        self.committed = self.committed.max(seq.min(self.contiguous));
    }

    /// The cumulative Ack to send now, if the committed position moved since the last one.
    pub fn poll_ack(&mut self) -> Option<u64> {
        (self.committed > self.acked).then(|| {
            self.acked = self.committed;
            self.acked
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> ReceiveWindow<u64> {
        ReceiveWindow::new(1, 0, WindowConfig::default())
    }

    #[test]
    fn in_order_arrivals_are_ready_immediately() {
        let mut w = window();
        assert_eq!(w.on_message(1, 1, 1), Arrival::Ready(vec![1]));
        assert_eq!(w.on_message(1, 2, 2), Arrival::Ready(vec![2]));
        assert_eq!(w.on_message(1, 2, 2), Arrival::Duplicate);
        assert_eq!(w.contiguous(), 2);
    }

    #[test]
    fn gap_buffers_then_pulls_then_fills() {
        let now = Instant::now();
        let mut w = window();
        assert_eq!(w.on_message(1, 3, 3), Arrival::Buffered);
        assert_eq!(w.on_message(1, 3, 3), Arrival::Duplicate);
        let pull = w.poll_pull(now).unwrap();
        assert_eq!(pull.after_seq, 0);
        assert_eq!(w.poll_pull(now), None, "one pull outstanding at a time");
        let ready = w.on_pull_result(0, 1, 3, [(1, 1), (2, 2), (3, 3)]);
        assert_eq!(ready, Arrival::Ready(vec![1, 2, 3]));
        assert_eq!(w.poll_pull(now), None);
    }

    #[test]
    fn lost_tail_is_noticed_from_heads_and_pull_retries_after_timeout() {
        let now = Instant::now();
        let mut w = window();
        w.on_message(1, 1, 1);
        assert_eq!(w.poll_pull(now), None);
        assert_eq!(w.on_head(1, 2), None);
        assert_eq!(w.poll_pull(now).unwrap().after_seq, 1);
        assert_eq!(w.poll_pull(now + Duration::from_secs(1)), None);
        assert!(w.poll_pull(now + Duration::from_secs(6)).is_some());
    }

    #[test]
    fn epoch_change_is_reported_not_applied() {
        let mut w = window();
        assert_eq!(w.on_message(2, 1, 1), Arrival::EpochChanged { epoch: 2 });
        assert_eq!(w.on_head(2, 10), Some(2));
        w.reset(2, 5);
        assert_eq!(w.on_message(2, 6, 6), Arrival::Ready(vec![6]));
    }

    #[test]
    fn acks_follow_commits_and_never_pass_contiguous() {
        let mut w = window();
        w.on_message(1, 1, 1);
        w.on_message(1, 3, 3);
        assert_eq!(w.poll_ack(), None);
        w.commit(5);
        assert_eq!(w.poll_ack(), Some(1));
        assert_eq!(w.poll_ack(), None);
    }

    #[test]
    fn gap_grace_lets_reordered_messages_fill_without_pull() {
        let config = WindowConfig {
            gap_grace: Duration::from_millis(100),
            ..WindowConfig::default()
        };
        let now = Instant::now();
        let mut w = ReceiveWindow::new(1, 0, config);
        assert_eq!(w.on_message(1, 2, 2), Arrival::Buffered);
        assert_eq!(w.poll_pull(now), None);
        assert_eq!(w.next_deadline(), Some(now + Duration::from_millis(100)));
        assert_eq!(w.on_message(1, 1, 1), Arrival::Ready(vec![1, 2]));
        assert_eq!(w.poll_pull(now + Duration::from_millis(200)), None);
        // A gap that persists is pulled once the grace has passed.
        assert_eq!(w.on_message(1, 4, 4), Arrival::Buffered);
        assert_eq!(w.poll_pull(now), None);
        let later = now + Duration::from_millis(150);
        assert_eq!(w.poll_pull(later).map(|p| p.after_seq), Some(2));
    }

    #[test]
    fn full_buffer_keeps_lowest_seqs() {
        let config = WindowConfig {
            max_buffered: 2,
            ..WindowConfig::default()
        };
        let mut w = ReceiveWindow::new(1, 0, config);
        assert_eq!(w.on_message(1, 5, 5), Arrival::Buffered);
        assert_eq!(w.on_message(1, 4, 4), Arrival::Buffered);
        assert_eq!(w.on_message(1, 9, 9), Arrival::Dropped);
        assert_eq!(w.on_message(1, 3, 3), Arrival::Buffered); // evicts 5
        assert_eq!(w.buffered(), 2);
        assert_eq!(w.on_message(1, 2, 2), Arrival::Buffered); // evicts 4
        assert_eq!(w.on_message(1, 1, 1), Arrival::Ready(vec![1, 2, 3]));
        assert_eq!(w.known_head(), 9);
    }

    #[test]
    fn pull_result_skips_seqs_before_first_visible() {
        let now = Instant::now();
        let mut w = window();
        assert_eq!(w.on_message(1, 7, 7), Arrival::Buffered);
        let pull = w.poll_pull(now).unwrap();
        let got = w.on_pull_result(pull.after_seq, 1, 7, [(5, 5), (6, 6)]);
        assert_eq!(got, Arrival::Ready(vec![5, 6, 7]));
    }

    #[test]
    fn pull_result_at_the_last_seq_does_not_overflow() {
        let mut w = window();
        assert_eq!(w.on_message(1, 1, 1), Arrival::Ready(vec![1]));
        let got = w.on_pull_result(1, 1, u64::MAX, [(u64::MAX, 9)]);
        assert_eq!(got, Arrival::Ready(vec![9]), "seqs 2.. are not visible");
        assert_eq!(w.contiguous(), u64::MAX);
        let again = w.on_pull_result(u64::MAX, 1, u64::MAX, [(u64::MAX, 9)]);
        assert_eq!(again, Arrival::Duplicate);
    }
}

//! The outbox's in-memory side: which queued messages are in flight, which wait for a retry, and what
//! to send next. Pure state: no I/O, every time-dependent call takes `now`.
//!
//! The durable side is the store's outbox table: an entry is written there before it reaches this state
//! machine and deleted in the same transaction that stores the SendAck's message. Here, an entry is
//! either *queued* (to be sent, possibly not before a retry deadline) or *in flight* (sent on the current
//! connection, waiting for SendAck/Error). Losing the connection or the stream puts in-flight entries back
//! in the queue; they are resent with the same client_msg_id, which the server deduplicates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry_protocol::ErrorCode;

use crate::store::OutboxRecord;

/// Outbox tunables.
#[derive(Debug, Clone, Copy)]
pub struct OutboxConfig {
    /// A Send not answered after this long on a live connection is sent again.
    pub ack_timeout: Duration,
    /// First retry delay after a retryable error without `retry_after_ms`; doubles per attempt.
    pub retry_initial: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            ack_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued { not_before: Option<Instant> },
    InFlight { since: Instant },
}

#[derive(Debug)]
struct Entry {
    record: OutboxRecord,
    state: State,
    attempts: u32,
}

/// What an `Error` answering a Send means for the entry.
#[derive(Debug, PartialEq, Eq)]
pub enum ErrorOutcome {
    /// Retryable: the entry is queued again, not before `at`.
    RetryAt(Instant),
    /// Final: the entry was removed and is handed back.
    Rejected(OutboxRecord),
    /// No such entry (a late answer for something already settled).
    Unknown,
}

/// In-flight tracking of the outbox.
#[derive(Debug)]
pub struct Outbox {
    config: OutboxConfig,
    /// By store id, i.e. in outbox order.
    entries: BTreeMap<i64, Entry>,
    ids: HashMap<String, i64>,
    in_flight: usize,
    max_in_flight: usize,
    /// The server answered TOO_MANY_INFLIGHT while other Sends were unanswered: nothing is sent until
    /// one of those is answered (FERRY-LIMIT-4; the server counts more in flight than this side does).
    awaiting_answer: bool,
}

impl Outbox {
    /// An empty outbox allowing `max_in_flight` unanswered Sends (the server's `max_inflight_sends`).
    pub fn new(config: OutboxConfig, max_in_flight: usize) -> Self {
        Outbox {
            config,
            entries: BTreeMap::new(),
            ids: HashMap::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            awaiting_answer: false,
        }
    }

    /// Applies the server's announced limit (0 = not announced: keep the current one).
    pub fn set_max_in_flight(&mut self, max: usize) {
        if max > 0 {
            self.max_in_flight = max;
        }
    }

    /// Entries not yet acknowledged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when everything was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sends waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a Send of the conversation is in flight (its stream is not idle).
    pub fn in_flight_on(&self, conversation: &str) -> bool {
        self.entries.values().any(|e| {
            matches!(e.state, State::InFlight { .. }) && e.record.conversation == conversation
        })
    }

    /// Whether an entry with this client_msg_id is pending.
    pub fn contains(&self, client_msg_id: &str) -> bool {
        self.ids.contains_key(client_msg_id)
    }

    /// Adds a stored outbox entry (ignored if already present).
    pub fn push(&mut self, record: OutboxRecord) {
        if self.ids.contains_key(&record.client_msg_id) {
            return;
        }
        self.ids.insert(record.client_msg_id.clone(), record.id);
        self.entries.insert(
            record.id,
            Entry {
                record,
                state: State::Queued { not_before: None },
                attempts: 0,
            },
        );
    }

    /// The entries to send now, in outbox order, marked in flight; at most as many as the in-flight limit
    /// allows. `open(conversation)` says whether a conversation can take sends now. Within a conversation,
    /// nothing overtakes an earlier entry that waits for its retry deadline, so retries keep their order.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        mut open: impl FnMut(&str) -> bool,
    ) -> Vec<OutboxRecord> {
        let mut out = Vec::new();
        if self.awaiting_answer && self.in_flight > 0 {
            return out;
        }
        self.awaiting_answer = false;
        let mut held: HashSet<&str> = HashSet::new();
        for entry in self.entries.values_mut() {
            if self.in_flight >= self.max_in_flight {
                break;
            }
            let conversation = entry.record.conversation.as_str();
            match entry.state {
                State::InFlight { .. } => continue,
                State::Queued { not_before } => {
                    if held.contains(conversation) {
                        continue;
                    }
                    if not_before.is_some_and(|at| at > now) || !open(conversation) {
                        held.insert(conversation);
                        continue;
                    }
                }
            }
            entry.state = State::InFlight { since: now };
            entry.attempts += 1;
            self.in_flight += 1;
            out.push(entry.record.clone());
        }
        out
    }

    /// The conversation of the pending Send with this client_msg_id, if there is one.
    pub fn conversation_of(&self, client_msg_id: &str) -> Option<&str> {
        let id = self.ids.get(client_msg_id)?;
        Some(self.entries.get(id)?.record.conversation.as_str())
    }

    /// A SendAck answered the Send with this client_msg_id: the entry is settled and returned.
    pub fn on_ack(&mut self, client_msg_id: &str) -> Option<OutboxRecord> {
        let id = self.ids.remove(client_msg_id)?;
        self.awaiting_answer = false;
        let entry = self.entries.remove(&id)?;
        if matches!(entry.state, State::InFlight { .. }) {
            self.in_flight -= 1;
        }
        Some(entry.record)
    }

    /// An `Error` answered the Send with this client_msg_id.
    pub fn on_error(
        &mut self,
        client_msg_id: &str,
        code: ErrorCode,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> ErrorOutcome {
        let Some(&id) = self.ids.get(client_msg_id) else {
            return ErrorOutcome::Unknown;
        };
        self.awaiting_answer = false;
        if !code.is_retryable() {
            self.ids.remove(client_msg_id);
            let entry = self.entries.remove(&id).expect("ids and entries agree");
            if matches!(entry.state, State::InFlight { .. }) {
                self.in_flight -= 1;
            }
            return ErrorOutcome::Rejected(entry.record);
        }
        let attempts = self.entries[&id].attempts;
        let delay = retry_after.unwrap_or_else(|| self.retry_delay(attempts));
        let entry = self.entries.get_mut(&id).expect("ids and entries agree");
        if matches!(entry.state, State::InFlight { .. }) {
            self.in_flight -= 1;
        }
        let at = now + delay;
        entry.state = State::Queued {
            not_before: Some(at),
        };
        self.awaiting_answer = code == ErrorCode::TOO_MANY_INFLIGHT && self.in_flight > 0;
        ErrorOutcome::RetryAt(at)
    }

    fn retry_delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.config
            .retry_initial
            .saturating_mul(factor)
            .min(self.config.retry_max)
    }

    /// Removes an entry regardless of its state (the application gave up on it).
    pub fn remove(&mut self, client_msg_id: &str) -> Option<OutboxRecord> {
        self.on_ack(client_msg_id)
    }

    fn requeue_where(
        &mut self,
        not_before: Option<Instant>,
        mut pred: impl FnMut(&OutboxRecord) -> bool,
    ) -> usize {
        let mut n = 0;
        for entry in self.entries.values_mut() {
            if matches!(entry.state, State::InFlight { .. }) && pred(&entry.record) {
                entry.state = State::Queued { not_before };
                n += 1;
            }
        }
        self.in_flight -= n;
        n
    }

    /// The connection was lost: every in-flight Send goes back to the queue (sent again after reconnect).
    pub fn on_connection_lost(&mut self) -> usize {
        self.requeue_where(None, |_| true)
    }

    /// A conversation stream was reset: its in-flight Sends go back to the queue, not before
    /// `now + retry_initial` (a server that keeps resetting new streams, e.g. TOO_MANY_STREAMS, must not
    /// cause a busy loop of reopened streams).
    pub fn on_stream_lost(&mut self, conversation: &str, now: Instant) -> usize {
        let at = now + self.config.retry_initial;
        self.requeue_where(Some(at), |r| r.conversation == conversation)
    }

    /// Sends unanswered for longer than the ack timeout go back to the queue. Returns how many.
    pub fn poll_timeouts(&mut self, now: Instant) -> usize {
        let timeout = self.config.ack_timeout;
        let mut n = 0;
        for entry in self.entries.values_mut() {
            if let State::InFlight { since } = entry.state {
                if now.saturating_duration_since(since) >= timeout {
                    entry.state = State::Queued { not_before: None };
                    n += 1;
                }
            }
        }
        self.in_flight -= n;
        n
    }

    /// The next instant at which a retry deadline or an ack timeout expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.state {
                State::Queued { not_before } => not_before,
                State::InFlight { since } => Some(since + self.config.ack_timeout),
            })
            .min()
    }

    /// Every pending entry, in outbox order.
    pub fn records(&self) -> impl Iterator<Item = &OutboxRecord> {
        self.entries.values().map(|e| &e.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(id: i64, conv: &str) -> OutboxRecord {
        OutboxRecord {
            id,
            conversation: conv.into(),
            client_msg_id: format!("m{id}"),
            body: Bytes::from_static(b"x"),
            created_at_ms: 0,
        }
    }

    fn ids(records: &[OutboxRecord]) -> Vec<i64> {
        records.iter().map(|r| r.id).collect()
    }

    #[test]
    fn transmits_in_order_up_to_the_in_flight_limit() {
        let now = Instant::now();
        let mut o = Outbox::new(OutboxConfig::default(), 2);
        for id in [3, 1, 2] {
            o.push(rec(id, "c"));
        }
        o.push(rec(1, "c")); // duplicate push is ignored
        assert_eq!(ids(&o.poll_transmit(now, |_| true)), [1, 2]);
        assert_eq!(o.poll_transmit(now, |_| true), []);
        assert_eq!(o.on_ack("m1").map(|r| r.id), Some(1));
        assert_eq!(o.on_ack("m1"), None, "a second ack is ignored");
        assert_eq!(ids(&o.poll_transmit(now, |_| true)), [3]);
        o.set_max_in_flight(10);
        assert_eq!(o.in_flight(), 2);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn retryable_errors_wait_and_hold_later_entries_of_the_conversation() {
        let now = Instant::now();
        let mut o = Outbox::new(OutboxConfig::default(), 10);
        o.push(rec(1, "a"));
        o.push(rec(2, "a"));
        o.push(rec(3, "b"));
        o.poll_transmit(now, |_| true);
        o.on_ack("m2");
        let at = now + Duration::from_millis(500);
        assert_eq!(
            o.on_error(
                "m1",
                ErrorCode::RATE_LIMITED,
                Some(Duration::from_millis(500)),
                now
            ),
            ErrorOutcome::RetryAt(at)
        );
        o.push(rec(4, "a"));
        o.push(rec(5, "b"));
        // m4 must not overtake m1 (same conversation); m5 may go.
        assert_eq!(ids(&o.poll_transmit(now, |_| true)), [5]);
        assert_eq!(o.next_deadline(), Some(at));
        assert_eq!(ids(&o.poll_transmit(at, |_| true)), [1, 4]);
        // Without retry_after the delay doubles with the attempts: m1 was sent twice → 200 ms.
        assert_eq!(
            o.on_error("m1", ErrorCode::INTERNAL, None, at),
            ErrorOutcome::RetryAt(at + Duration::from_millis(200))
        );
    }

    #[test]
    fn too_many_inflight_waits_for_an_answer_to_an_earlier_send() {
        let now = Instant::now();
        let mut o = Outbox::new(OutboxConfig::default(), 10);
        for id in 1..=3 {
            o.push(rec(id, "a"));
        }
        o.push(rec(4, "b"));
        assert_eq!(ids(&o.poll_transmit(now, |_| true)), [1, 2, 3, 4]);
        o.on_error("m2", ErrorCode::TOO_MANY_INFLIGHT, None, now);
        o.push(rec(5, "b"));
        let later = now + Duration::from_secs(1);
        assert_eq!(
            o.poll_transmit(later, |_| true),
            [],
            "nothing is sent, not even after the retry delay, until an earlier Send is answered"
        );
        o.on_ack("m1");
        assert_eq!(ids(&o.poll_transmit(later, |_| true)), [2, 5]);
        // With nothing else in flight there is no answer to wait for: only the retry delay applies.
        let mut alone = Outbox::new(OutboxConfig::default(), 10);
        alone.push(rec(1, "a"));
        alone.poll_transmit(now, |_| true);
        alone.on_error("m1", ErrorCode::TOO_MANY_INFLIGHT, None, now);
        assert_eq!(ids(&alone.poll_transmit(later, |_| true)), [1]);
    }

    #[test]
    fn final_errors_hand_the_record_back() {
        let now = Instant::now();
        let mut o = Outbox::new(OutboxConfig::default(), 10);
        o.push(rec(1, "a"));
        o.poll_transmit(now, |_| true);
        match o.on_error("m1", ErrorCode::FORBIDDEN, None, now) {
            ErrorOutcome::Rejected(r) => assert_eq!(r.id, 1),
            other => panic!("{other:?}"),
        }
        assert!(o.is_empty());
        assert_eq!(o.in_flight(), 0);
        assert_eq!(
            o.on_error("m1", ErrorCode::FORBIDDEN, None, now),
            ErrorOutcome::Unknown
        );
    }

    #[test]
    fn lost_connections_streams_and_timeouts_requeue_in_flight_sends() {
        let now = Instant::now();
        let mut o = Outbox::new(OutboxConfig::default(), 10);
        o.push(rec(1, "a"));
        o.push(rec(2, "b"));
        assert_eq!(ids(&o.poll_transmit(now, |c| c == "a")), [1]);
        assert_eq!(ids(&o.poll_transmit(now, |_| true)), [2]);
        assert_eq!(o.on_stream_lost("a", now), 1);
        assert_eq!(o.in_flight(), 1);
        assert_eq!(
            o.poll_transmit(now, |_| true),
            [],
            "stream loss waits a little"
        );
        let soon = now + Duration::from_millis(100);
        assert_eq!(ids(&o.poll_transmit(soon, |_| true)), [1]);
        assert_eq!(o.on_connection_lost(), 2);
        assert_eq!(o.in_flight(), 0);
        let later = now + Duration::from_secs(1);
        assert_eq!(ids(&o.poll_transmit(later, |_| true)), [1, 2]);
        assert_eq!(o.next_deadline(), Some(later + Duration::from_secs(10)));
        assert_eq!(o.poll_timeouts(later + Duration::from_secs(9)), 0);
        assert_eq!(o.poll_timeouts(later + Duration::from_secs(10)), 2);
        assert_eq!(o.in_flight(), 0);
    }
}

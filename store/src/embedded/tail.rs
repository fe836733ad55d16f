//! The unindexed tail: groups that are durable in the log but not yet in the redb index.
//! (Dedupe ids are not held here: the dedupe index in memory covers indexed and unindexed ones, see
//! `dedupe`.)
//!
//! The writer pushes each group here after its fsync and before it acks; the indexer removes groups
//! only after the index transaction holding them committed. Readers therefore look here *first* and
//! then open a redb read transaction: a row missing here was either never acked or is already
//! committed in the index, so the later snapshot sees it. Entries are tagged with their group so that
//! removing an older group never drops a newer value for the same key.
//!
//! The tail is bounded: the writer waits before writing a group while [`Tail::bytes`] is above the
//! limit (backpressure), so memory stays bounded whatever the load.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;

use super::record::GroupRecord;

/// A three-part key as one byte string (one allocation instead of three): each of the first two parts
/// is prefixed with its length, so different parts never make the same key. Built by hand rather than
/// with `format!`: it is made once per message on the writer, in the replay and in the indexer, and the
/// formatting machinery was most of its cost.
fn key3(a: &str, b: &str, c: &str) -> Box<[u8]> {
    let mut key = Vec::with_capacity(a.len() + b.len() + c.len() + 8);
    for part in [a, b] {
        // Parts longer than u32::MAX bytes cannot reach here (frames are far smaller).
        key.extend_from_slice(&(part.len() as u32).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key.extend_from_slice(c.as_bytes());
    key.into_boxed_slice()
}

/// Map keyed by [`key3`]. foldhash instead of SipHash: these maps take an insert per message on the
/// writer and in the replay, where hashing showed as the largest cost (and nobody who could choose
/// keys to collide sees the hashes).
type Map3<V> = HashMap<Box<[u8]>, V, RandomState>;

/// Durable, not yet indexed state. Guarded by the store's tail mutex.
#[derive(Default)]
pub(crate) struct Tail {
    /// `(group, record, payload size, when it was pushed)`, oldest first.
    groups: VecDeque<(u64, Arc<GroupRecord>, usize, Instant)>,
    /// conversation → seq → encoded message (foldhash: one lookup per message, see [`Map3`]). Keyed
    /// by the conversation's bytes, as the log record holds it: the lookup per message needs no UTF-8
    /// check of the record's field (the replay's profile showed it).
    messages: HashMap<Bytes, BTreeMap<u64, Bytes>, RandomState>,
    /// cursor key → `(seq, group)`.
    cursors: Map3<(u64, u64)>,
    /// Sum of the payload sizes of the groups held.
    bytes: usize,
    /// Highest group in the index.
    pub indexed: u64,
    /// Set when the store shuts down: the indexer drains what is left and stops.
    pub closing: bool,
    /// The last index failure, while the indexer is retrying.
    pub index_error: Option<String>,
    /// Raised each time groups the index lost are put back ([`Tail::restore`]): a reader that took
    /// its view of the tail under an older value may pair it with an index that lacks them, and must
    /// read again.
    pub generation: u64,
}

impl Tail {
    pub(crate) fn new(indexed: u64) -> Tail {
        Tail {
            indexed,
            ..Tail::default()
        }
    }

    /// Payload bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a durable group.
    pub(crate) fn push(&mut self, group: u64, record: Arc<GroupRecord>, size: usize) {
        for row in &record.messages {
            self.conv_messages(&row.conv)
                .insert(row.seq, row.message.clone());
        }
        for row in &record.cursors {
            let key = key3(row.conv(), row.user(), row.device());
            self.cursors.insert(key, (row.seq, group));
        }
        self.bytes += size;
        self.groups.push_back((group, record, size, Instant::now()));
    }

    /// The held messages of `conv`, created empty when there are none. Looked up before inserting, so
    /// the key is copied once per conversation, not per message; copied rather than sliced, so a key
    /// never keeps a whole replayed segment's buffer alive after its own group left the tail.
    fn conv_messages(&mut self, conv: &Bytes) -> &mut BTreeMap<u64, Bytes> {
        if !self.messages.contains_key(conv.as_ref()) {
            self.messages
                .insert(Bytes::copy_from_slice(conv), BTreeMap::new());
        }
        self.messages
            .get_mut(conv.as_ref())
            .expect("inserted above")
    }

    /// Puts back, in front of the held groups, groups that a reopened index no longer has (they were
    /// in its commits that did not survive the I/O error), oldest first; the index now holds
    /// everything up to `indexed`. A held cursor is newer than a restored one, so it stays.
    pub(crate) fn restore(&mut self, groups: Vec<(u64, Arc<GroupRecord>, usize)>, indexed: u64) {
        for (group, record, size) in groups.into_iter().rev() {
            for row in &record.messages {
                self.conv_messages(&row.conv)
                    .insert(row.seq, row.message.clone());
            }
            for row in &record.cursors {
                let key = key3(row.conv(), row.user(), row.device());
                self.cursors.entry(key).or_insert((row.seq, group));
            }
            self.bytes += size;
            self.groups
                .push_front((group, record, size, Instant::now()));
        }
        self.indexed = indexed;
        self.generation += 1;
    }

    /// The oldest groups, for the indexer: at least one, then more while their payloads stay within
    /// `max_bytes` in all.
    pub(crate) fn oldest(&self, max_bytes: usize) -> Vec<(u64, Arc<GroupRecord>)> {
        let mut taken = 0;
        self.groups
            .iter()
            .take_while(|(_, _, size, _)| {
                let first = taken == 0;
                taken += size;
                first || taken <= max_bytes
            })
            .map(|(group, record, _, _)| (*group, record.clone()))
            .collect()
    }

    /// How long the oldest unindexed group has waited for the indexer (zero when none waits).
    pub(crate) fn lag(&self) -> Duration {
        self.groups
            .front()
            .map_or(Duration::ZERO, |(_, _, _, at)| at.elapsed())
    }

    /// Whether groups wait for the indexer.
    pub(crate) fn has_unindexed(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Drops every group up to `through`, which the index now holds.
    pub(crate) fn indexed_through(&mut self, through: u64) {
        while self.groups.front().is_some_and(|(g, ..)| *g <= through) {
            let Some((group, record, size, _)) = self.groups.pop_front() else {
                break;
            };
            self.bytes -= size;
            for row in &record.messages {
                if let Some(seqs) = self.messages.get_mut(row.conv.as_ref()) {
                    seqs.remove(&row.seq);
                    if seqs.is_empty() {
                        self.messages.remove(row.conv.as_ref());
                    }
                }
            }
            for row in &record.cursors {
                let key = key3(row.conv(), row.user(), row.device());
                if self.cursors.get(&key).is_some_and(|e| e.1 == group) {
                    self.cursors.remove(&key);
                }
            }
        }
        self.indexed = self.indexed.max(through);
    }

    /// The unindexed cursor of a device.
    pub(crate) fn cursor(&self, conv: &str, user: &str, device: &str) -> Option<u64> {
        self.cursors
            .get(&key3(conv, user, device))
            .map(|&(seq, _)| seq)
    }

    /// Unindexed messages of `conv` with `after < seq <= last`, at most `limit`, in seq order.
    pub(crate) fn messages(
        &self,
        conv: &str,
        after: u64,
        last: u64,
        limit: usize,
    ) -> Vec<(u64, Bytes)> {
        let Some(seqs) = self.messages.get(conv.as_bytes()) else {
            return Vec::new();
        };
        if after >= last {
            return Vec::new();
        }
        seqs.range(after + 1..=last)
            .take(limit)
            .map(|(seq, bytes)| (*seq, bytes.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::record::{text_bytes, DedupeRow, MessageRow};

    fn group(conv: &str, seq: u64, cmid: &str) -> Arc<GroupRecord> {
        Arc::new(GroupRecord {
            messages: vec![MessageRow {
                conv: text_bytes(conv),
                seq,
                message: Bytes::from_static(b"m"),
            }],
            dedupe: vec![DedupeRow {
                conv: text_bytes(conv),
                sender: text_bytes("alice"),
                client_msg_id: text_bytes(cmid),
                seq,
                time_ms: 7,
            }],
            ..GroupRecord::default()
        })
    }

    #[test]
    fn the_indexer_takes_whole_groups_up_to_its_byte_bound_and_at_least_one() {
        let mut tail = Tail::new(0);
        for g in 1..=4 {
            tail.push(g, group("c", g, &format!("id{g}")), 100);
        }
        let taken = |max| -> Vec<u64> { tail.oldest(max).iter().map(|(g, _)| *g).collect() };
        assert_eq!(taken(250), vec![1, 2]);
        assert_eq!(taken(400), vec![1, 2, 3, 4]);
        // A group larger than the bound still goes, alone: the indexer must always make progress.
        assert_eq!(taken(10), vec![1]);
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unindexed_group() {
        let mut tail = Tail::new(0);
        assert_eq!(tail.lag(), Duration::ZERO);
        tail.push(1, group("c", 1, "a"), 10);
        // Far apart, so the check below holds however long this thread is descheduled in between.
        std::thread::sleep(Duration::from_millis(300));
        tail.push(2, group("c", 2, "b"), 10);
        let before = tail.lag();
        assert!(before >= Duration::from_millis(300));
        tail.indexed_through(1);
        assert!(tail.lag() < before, "group 2 is younger than group 1");
        tail.indexed_through(2);
        assert_eq!(tail.lag(), Duration::ZERO);
    }

    #[test]
    fn restored_groups_go_in_front_of_the_held_ones_and_stale_views_are_told() {
        let mut tail = Tail::new(2);
        tail.push(3, group("c", 3, "c"), 10);
        tail.restore(
            vec![(1, group("c", 1, "a"), 10), (2, group("c", 2, "b"), 10)],
            0,
        );
        let groups: Vec<u64> = tail.oldest(usize::MAX).iter().map(|(g, _)| *g).collect();
        assert_eq!(groups, vec![1, 2, 3]);
        let seqs: Vec<u64> = tail.messages("c", 0, 3, 10).iter().map(|m| m.0).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!((tail.bytes(), tail.indexed, tail.generation), (30, 0, 1));
    }

    #[test]
    fn keys_with_the_same_characters_split_differently_stay_apart() {
        assert_ne!(key3("ab", "x", "c"), key3("a", "bx", "c"));
        assert_ne!(key3("ab", "x", "c"), key3("ab", "xc", ""));
    }
}

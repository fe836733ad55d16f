//! The dedupe index: which `(conversation, sender, client_msg_id)` were stored within the dedupe window,
//! and at which seq.
//!
//! Why not a redb table keyed by the id: client message ids are random (UUIDs), so every new message
//! inserted into such a table lands on a different leaf page, and redb copies, checksums and writes a
//! whole page per insert however many inserts share a transaction. That table was the largest cost of
//! the indexer, and its lookup (one B-tree descent per new message) a large one of the writer.
//!
//! Instead the lookup structure lives in memory, owned by the writer thread (the only one that asks):
//! a map from a 64-bit keyed hash of the id to `(seq, time)`. A miss — nearly every Send — costs one
//! hash probe and no I/O. A hit is a *candidate*: the writer confirms it by reading the message at
//! that seq (tail or index) and comparing sender and client_msg_id, so a hash collision can never
//! turn a new message into a false duplicate. Entries that share a hash are all kept (`overflow`).
//!
//! Durability comes from elsewhere: each group's dedupe rows are in its log record, and the indexer
//! writes the rows of each index transaction as **one** row of [`DEDUPE_LOG`], keyed by the last group
//! of the transaction — an append at the right edge of that table, one page per transaction instead
//! of one per message. At open the index is rebuilt from that table and then from the replayed log
//! tail; rows whose newest entry left the window are deleted from the front by the indexer.
//!
//! Memory: about 40 bytes per message stored within the window (map slot plus the expiry queue).
//! Expired entries are dropped group by group as time moves on ([`DedupeIndex::purge`]).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use redb::{ReadableTable, TableDefinition};

use super::record::{text_bytes, DedupeRow};

/// `last group of an index transaction` → `max time_ms (u64 LE) | prost DedupeRows` of the dedupe
/// entries that transaction indexed. Keys only grow, so every insert is an append.
pub(crate) const DEDUPE_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("dedupe_log");

/// The redb table that held dedupe entries in schema 1; migrated into [`DEDUPE_LOG`] at open.
pub(crate) const LEGACY_DEDUPE: TableDefinition<(&str, &str, &str), (u64, u64)> =
    TableDefinition::new("dedupe");
/// Schema 1's age index of [`LEGACY_DEDUPE`]; dropped by the migration.
pub(crate) const LEGACY_DEDUPE_BY_TIME: TableDefinition<(u64, &str, &str, &str), ()> =
    TableDefinition::new("dedupe_by_time");

/// The dedupe rows of one [`DEDUPE_LOG`] value.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DedupeRows {
    #[prost(message, repeated, tag = "1")]
    pub rows: Vec<DedupeRow>,
}

/// Encodes a [`DEDUPE_LOG`] value; `None` when there is nothing to write. The rows are encoded
/// straight from the log records as the `rows` field of [`DedupeRows`] (cloning them first showed in
/// the indexer's profile).
pub(crate) fn encode_log_value<'r>(
    rows: impl Iterator<Item = &'r DedupeRow> + Clone,
) -> Option<Vec<u8>> {
    let max_time = rows.clone().map(|row| row.time_ms).max()?;
    let mut value = max_time.to_le_bytes().to_vec();
    for row in rows {
        prost::encoding::message::encode(1, row, &mut value);
    }
    Some(value)
}

/// The newest entry's time of a [`DEDUPE_LOG`] value.
pub(crate) fn log_value_max_time(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}

fn decode_log_value(value: &[u8]) -> Result<DedupeRows, redb::Error> {
    let corrupt = |what: String| redb::Error::Corrupted(format!("dedupe log row: {what}"));
    let rows = value.get(8..).ok_or_else(|| corrupt("too short".into()))?;
    // One copy of the whole value, which the rows' text fields then slice (no allocation per field).
    let rows: DedupeRows = prost::Message::decode(bytes::Bytes::copy_from_slice(rows))
        .map_err(|e| corrupt(e.to_string()))?;
    super::record::checked_text(rows.rows.iter().flat_map(DedupeRow::texts)).map_err(corrupt)?;
    Ok(rows)
}

/// `(seq, time_ms)` of a stored message.
type Entry = (u64, u64);

/// The in-memory dedupe index (see the module docs).
#[derive(Default)]
pub(crate) struct DedupeIndex {
    /// Seeds the key hash; random per process, so nobody can choose ids that collide on purpose.
    seed: foldhash::fast::RandomState,
    /// key hash → the entry stored last with that hash.
    slots: HashMap<u64, Entry, foldhash::fast::RandomState>,
    /// key hash → older entries with the same hash that are still live (collisions: rare).
    overflow: HashMap<u64, Vec<Entry>, foldhash::fast::RandomState>,
    /// `(newest time, key hashes)` per inserted batch, oldest first: what [`Self::purge`] walks.
    ages: VecDeque<(u64, Vec<u64>)>,
}

impl DedupeIndex {
    fn hash(&self, conv: &str, sender: &str, client_msg_id: &str) -> u64 {
        // A tuple hashes each string with its length, so ("ab","c") and ("a","bc") differ.
        self.seed.hash_one((conv, sender, client_msg_id))
    }

    /// Entries that may belong to the key: each must be confirmed against the stored message.
    pub(crate) fn candidates(&self, conv: &str, sender: &str, client_msg_id: &str) -> Vec<Entry> {
        let hash = self.hash(conv, sender, client_msg_id);
        let Some(&first) = self.slots.get(&hash) else {
            return Vec::new();
        };
        let mut found = vec![first];
        if let Some(more) = self.overflow.get(&hash) {
            found.extend(more.iter().rev());
        }
        found
    }

    /// Takes in the dedupe rows of one durable group (or of one [`DEDUPE_LOG`] row at open).
    pub(crate) fn insert<'r>(&mut self, rows: impl IntoIterator<Item = &'r DedupeRow>) {
        let mut hashes = Vec::new();
        let mut newest = 0;
        for row in rows {
            let hash = self.hash(row.conv(), row.sender(), row.client_msg_id());
            let entry = (row.seq, row.time_ms);
            match self.slots.insert(hash, entry) {
                // The same row again (a group indexed twice across a crash): nothing new.
                Some(old) if old == entry => {}
                // Another key with the same hash, or this key's expired entry: keep it until it
                // expires, since only the stored message can tell which it is.
                Some(old) => self.overflow.entry(hash).or_default().push(old),
                None => {}
            }
            hashes.push(hash);
            newest = newest.max(row.time_ms);
        }
        if !hashes.is_empty() {
            self.ages.push_back((newest, hashes));
        }
    }

    /// Makes room for `additional` more entries at once. The replay calls it with an estimate from
    /// the log's size: growing a million-slot map step by step rehashed every entry about twice and
    /// was the largest single cost of the replay's reading thread.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
    }

    /// Drops the entries stored at or before `cutoff` (outside the window), a batch at a time and at
    /// most `max_batches` batches per call, so one call never stalls the writer for long.
    pub(crate) fn purge(&mut self, cutoff: u64, max_batches: usize) {
        for _ in 0..max_batches {
            if self.ages.front().is_none_or(|(newest, _)| *newest > cutoff) {
                return;
            }
            let Some((_, hashes)) = self.ages.pop_front() else {
                return;
            };
            for hash in hashes {
                self.expire(hash, cutoff);
            }
        }
    }

    fn expire(&mut self, hash: u64, cutoff: u64) {
        let live = |&(_, time): &Entry| time > cutoff;
        if let Some(older) = self.overflow.get_mut(&hash) {
            older.retain(live);
            if older.is_empty() {
                self.overflow.remove(&hash);
            }
        }
        if self.slots.get(&hash).is_some_and(|entry| !live(entry)) {
            // Promote the newest surviving collision, if any, so it stays findable.
            match self.overflow.get_mut(&hash).and_then(Vec::pop) {
                Some(next) => {
                    self.slots.insert(hash, next);
                    if self.overflow.get(&hash).is_some_and(Vec::is_empty) {
                        self.overflow.remove(&hash);
                    }
                }
                None => {
                    self.slots.remove(&hash);
                }
            }
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len() + self.overflow.values().map(Vec::len).sum::<usize>()
    }

    /// Rebuilds the index from [`DEDUPE_LOG`]. Linear in the entries held there (those of the window
    /// plus rows not purged yet), once per start.
    pub(crate) fn load(db: &redb::Database) -> Result<DedupeIndex, redb::Error> {
        use redb::ReadableDatabase;
        let mut index = DedupeIndex::default();
        let txn = db.begin_read()?;
        for row in txn.open_table(DEDUPE_LOG)?.iter()? {
            let (_, value) = row?;
            let rows = decode_log_value(value.value())?;
            index.insert(&rows.rows);
        }
        Ok(index)
    }
}

/// Deletes up to `max_rows` [`DEDUPE_LOG`] rows from the front whose entries are all at or before
/// `cutoff`. Stops at the first younger row: rows are nearly in time order, and one that is not only
/// stays a little longer.
pub(crate) fn purge_log(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    cutoff: u64,
    max_rows: usize,
) -> Result<(), redb::Error> {
    let mut expired = Vec::new();
    for row in table.iter()?.take(max_rows) {
        let (key, value) = row?;
        if log_value_max_time(value.value()).is_none_or(|newest| newest > cutoff) {
            break;
        }
        expired.push(key.value());
    }
    for key in expired {
        table.remove(key)?;
    }
    Ok(())
}

/// Moves schema 1's dedupe table into [`DEDUPE_LOG`] (one row keyed by `applied`, the last indexed
/// group, which every later row's key exceeds) and drops the old tables. Runs inside the open's
/// first write transaction.
pub(crate) fn migrate_v1(txn: &redb::WriteTransaction, applied: u64) -> Result<(), redb::Error> {
    let mut rows = Vec::new();
    {
        let legacy = txn.open_table(LEGACY_DEDUPE)?;
        for row in legacy.iter()? {
            let (key, value) = row?;
            let (conv, sender, client_msg_id) = key.value();
            let (seq, time_ms) = value.value();
            rows.push(DedupeRow {
                conv: text_bytes(conv),
                sender: text_bytes(sender),
                client_msg_id: text_bytes(client_msg_id),
                seq,
                time_ms,
            });
        }
    }
    if let Some(value) = encode_log_value(rows.iter()) {
        txn.open_table(DEDUPE_LOG)?
            .insert(applied, value.as_slice())?;
    }
    txn.delete_table(LEGACY_DEDUPE)?;
    txn.delete_table(LEGACY_DEDUPE_BY_TIME)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(conv: &str, cmid: &str, seq: u64, time_ms: u64) -> DedupeRow {
        DedupeRow {
            conv: text_bytes(conv),
            sender: text_bytes("alice"),
            client_msg_id: text_bytes(cmid),
            seq,
            time_ms,
        }
    }

    #[test]
    fn a_stored_id_is_a_candidate_and_others_are_not() {
        let mut index = DedupeIndex::default();
        index.insert([&row("c", "m1", 1, 10), &row("c", "m2", 2, 10)]);
        assert_eq!(index.candidates("c", "alice", "m1"), vec![(1, 10)]);
        assert_eq!(index.candidates("c", "alice", "m3"), vec![]);
        assert_eq!(index.candidates("d", "alice", "m1"), vec![]);
        assert_eq!(index.candidates("c", "bob", "m1"), vec![]);
    }

    #[test]
    fn entries_sharing_a_hash_are_all_kept_newest_first() {
        let mut index = DedupeIndex::default();
        // The same key twice is what a shared hash looks like from inside the index.
        index.insert([&row("c", "m1", 1, 10)]);
        index.insert([&row("c", "m1", 5, 20)]);
        assert_eq!(index.candidates("c", "alice", "m1"), vec![(5, 20), (1, 10)]);
        // A row seen again (re-indexed after a crash) adds nothing.
        index.insert([&row("c", "m1", 5, 20)]);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn purging_drops_what_left_the_window_and_keeps_younger_entries() {
        let mut index = DedupeIndex::default();
        index.insert([&row("c", "m1", 1, 10)]);
        index.insert([&row("c", "m1", 2, 30), &row("c", "m2", 3, 30)]);
        index.purge(10, usize::MAX);
        assert_eq!(index.candidates("c", "alice", "m1"), vec![(2, 30)]);
        assert_eq!(index.len(), 2);
        // Bounded work per call: one batch at a time.
        index.insert([&row("c", "m3", 4, 40)]);
        index.purge(40, 1);
        assert_eq!(index.len(), 1);
        index.purge(40, 1);
        assert_eq!(index.len(), 0);
    }

    #[tokio::test]
    async fn a_schema_1_dedupe_table_is_migrated_at_open() {
        use crate::{EmbeddedStore, EmbeddedStoreOptions, NewMessage, Store};
        use redb::{ReadableDatabase, TableHandle};
        let dir = tempfile::tempdir().unwrap();
        let append = |cmid: &str| NewMessage {
            conversation: "d:alice:bob".into(),
            sender: "alice".into(),
            sender_device: "dev".into(),
            client_msg_id: cmid.into(),
            body: bytes::Bytes::from_static(b"hi"),
            server_time_ms: 5,
        };
        {
            let store = EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap();
            store
                .ensure_direct("d:alice:bob", "alice", "bob")
                .await
                .unwrap();
            store.append(append("old")).await.unwrap();
            store.append(append("new")).await.unwrap();
        }
        // Turn the database back into schema 1: the entry of "old" in the id-keyed table only.
        {
            let db = redb::Database::create(dir.path().join(super::super::DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(DEDUPE_LOG).unwrap();
            txn.open_table(LEGACY_DEDUPE)
                .unwrap()
                .insert(("d:alice:bob", "alice", "old"), (1, 5))
                .unwrap();
            txn.open_table(LEGACY_DEDUPE_BY_TIME)
                .unwrap()
                .insert((5, "d:alice:bob", "alice", "old"), ())
                .unwrap();
            let mut meta = txn.open_table(super::super::tables::META).unwrap();
            meta.insert(super::super::tables::META_SCHEMA, 1).unwrap();
            drop(meta);
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap();
        let retry = store.append(append("old")).await.unwrap();
        assert_eq!((retry.seq, retry.duplicate), (1, true));
        drop(store);
        let db = redb::Database::create(dir.path().join(super::super::DB_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert!(
            !tables.iter().any(|t| t.starts_with("dedupe_by")),
            "{tables:?}"
        );
        assert!(!tables.contains(&"dedupe".to_owned()), "{tables:?}");
    }

    #[test]
    fn a_log_value_carries_its_newest_time_and_its_rows() {
        assert!(encode_log_value([].iter()).is_none());
        let rows = [row("c", "m1", 1, 10), row("c", "m2", 2, 30)];
        let value = encode_log_value(rows.iter()).unwrap();
        assert_eq!(log_value_max_time(&value), Some(30));
        assert_eq!(decode_log_value(&value).unwrap().rows, rows.to_vec());
        assert!(decode_log_value(&[1, 2]).is_err());
    }
}

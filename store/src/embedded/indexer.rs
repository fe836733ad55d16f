//! The indexer thread: builds the redb index from the log, behind the acks.
//!
//! It gathers durable groups in the tail until the oldest has waited [`GATHER`] (or they hold
//! [`GATHER_BYTES`]), then writes the oldest of them (up to [`MAX_TXN_BYTES`]) and the high-water mark
//! (`META_LOG_APPLIED`, the last group applied) in one redb transaction, and only after that commit
//! drops them from the tail and wakes a writer waiting for room. Gathering is what makes the index
//! cheap: redb copies every page a transaction touches, so a transaction per small group copied a
//! conversation's leaf page (and the branch pages above it) for every few messages; one transaction per
//! gathering period copies it once for all of them. The lag this adds is bounded ([`GATHER`]) and
//! invisible to readers, who are served from the tail until the rows are indexed. Most commits
//! are not fsynced (the log is the durable copy, and an index fsync would compete with the log's);
//! every [`DURABLE_EVERY`] one is, and only then are the log segments whose every group is durably
//! indexed deleted. Rows are absolute values, so a group applied again
//! after a crash (committed to redb, not yet noted anywhere else) writes the same rows: replay is safe.
//!
//! If a transaction fails, the groups stay in the tail (still readable, still in the log); the indexer
//! puts back the groups of its non-durable commits, reopens the index (see `index_db`: after an I/O
//! error redb refuses everything until reopened) and retries after a pause; appends wait once the
//! tail is full, and get `Unavailable` if it stays full (see `writer`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Durability, ReadableTable};

use super::dedupe::{self, DEDUPE_LOG};
use super::record::{GroupRecord, MessageRow};
use super::segment;
use super::tables::*;
use super::Shared;

/// How long the indexer lets groups gather in the tail before it indexes them (the usual trigger
/// under load). Bounds the index lag in time; backpressure bounds it in bytes.
const GATHER: Duration = Duration::from_millis(50);
/// Tail size at which the indexer starts at once instead of gathering for [`GATHER`] (never more
/// than a quarter of the backpressure bound, so gathering alone never holds a writer back).
const GATHER_BYTES: usize = 4 << 20;
/// Most log payload bytes written per index transaction: bounds the time one transaction takes.
const MAX_TXN_BYTES: usize = 16 << 20;
/// Most expired dedupe log rows purged per transaction, so purging never makes one noticeably longer.
const PURGE_PER_TXN: usize = 1000;
/// Longest time index commits stay non-durable (see `index`).
const DURABLE_EVERY: Duration = Duration::from_millis(500);
/// Pause before retrying a failed index transaction.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The indexer's loop; returns once the store is closing and the tail is indexed durably (or cannot
/// be indexed).
pub(crate) fn run(shared: Arc<Shared>) {
    let mut failures = 0u32;
    let gather_bytes = GATHER_BYTES.min(shared.max_unindexed_bytes / 4).max(1);
    let mut indexed = shared.lock_tail().indexed;
    // The last group known to be in a durable (fsynced) index commit, and when that commit was.
    let mut durable = indexed;
    let mut durable_at = Instant::now();
    loop {
        let (groups, closing) = {
            let mut tail = shared.lock_tail();
            // Each pass waits at most GATHER (groups waiting) or DURABLE_EVERY (none waiting), so
            // gathered groups get indexed and pending non-durable commits get flushed.
            loop {
                let flush_due = indexed > durable && durable_at.elapsed() >= DURABLE_EVERY;
                let lag = tail.lag();
                let gathered = tail.has_unindexed()
                    && (lag >= GATHER || tail.bytes() >= gather_bytes || failures > 0);
                if gathered || tail.closing || flush_due {
                    break;
                }
                let wait = if tail.has_unindexed() {
                    GATHER - lag
                } else {
                    DURABLE_EVERY
                };
                tail = shared
                    .tail_changed
                    .wait_timeout(tail, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if tail.closing && failures > 3 {
                // Shutting down with a broken index: the log keeps the groups for the next start.
                return;
            }
            (tail.oldest(MAX_TXN_BYTES), tail.closing)
        };
        let make_durable = closing || durable_at.elapsed() >= DURABLE_EVERY;
        let last = groups.last().map_or(indexed, |(last, _)| *last);
        if groups.is_empty() && indexed == durable {
            if closing {
                return;
            }
            continue;
        }
        match index(&shared, &groups, make_durable) {
            Ok(()) => {
                failures = 0;
                indexed = last;
                if !groups.is_empty() {
                    {
                        let mut tail = shared.lock_tail();
                        tail.indexed_through(last);
                        tail.index_error = None;
                    }
                    shared.tail_changed.notify_all();
                    shared.count_index(groups.len() as u64);
                }
                if make_durable {
                    durable = last;
                    durable_at = Instant::now();
                    if let Err(err) = delete_indexed_segments(&shared, durable) {
                        tracing::warn!(error = %err, "deleting indexed log segments failed");
                    }
                }
            }
            Err(err) => {
                failures += 1;
                shared.stats.index_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, "index transaction failed; reopening the index");
                shared.lock_tail().index_error = Some(err.to_string());
                shared.tail_changed.notify_all();
                std::thread::sleep(RETRY_PAUSE);
                match recover(&shared, durable, indexed) {
                    Ok(()) => indexed = durable,
                    Err(err) => tracing::error!(error = %err, "reopening the index failed"),
                }
            }
        }
    }
}

/// After a failed transaction: puts the groups of the non-durable commits since `durable` (the last
/// durable one) back into the tail from the log, then reopens the index. redb answers every
/// transaction after an I/O error with that error until the handle is closed, and the reopened file
/// is back at its last durable commit; the groups put back are indexed again (rows are absolute, so
/// a group that did survive is rewritten unchanged). Their segments are still there: segments are
/// deleted only behind durable commits. The tail goes first, so no reader ever misses a group
/// between the two steps (see `Tail::generation`).
fn recover(shared: &Shared, durable: u64, indexed: u64) -> Result<(), crate::StoreError> {
    if indexed > durable {
        let groups = super::recovery::read_groups(&shared.log_dir, durable, indexed)?;
        shared.lock_tail().restore(groups, durable);
    }
    shared.db.reopen().map_err(super::backend)
}

/// Writes `groups` (possibly none: then it only makes earlier commits durable) in one transaction.
fn index(
    shared: &Shared,
    groups: &[(u64, Arc<GroupRecord>)],
    make_durable: bool,
) -> Result<(), redb::Error> {
    let mut txn = shared.db.get()?.begin_write()?;
    // Non-durable commits cost no fsync (the log already made the groups durable); a durable one
    // every DURABLE_EVERY is what segment deletion waits for. A crash reverts redb to its last
    // durable commit, whose high-water mark the replay starts from.
    txn.set_durability(if make_durable {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    {
        let mut tables = Tables::open(&txn)?;
        tables.apply(groups.iter().map(|(_, record)| record.as_ref()))?;
        let now = groups.iter().filter_map(|(_, record)| record.now_ms).max();
        tables.purge_expired(now.and_then(|now| now.checked_sub(shared.dedupe_window_ms)))?;
        if let Some((last, record)) = groups.last() {
            // One append-ordered row for all the dedupe ids of the transaction (see `dedupe`).
            let rows = groups.iter().flat_map(|(_, record)| &record.dedupe);
            if let Some(value) = dedupe::encode_log_value(rows) {
                tables.dedupe_log.insert(*last, value.as_slice())?;
            }
            tables.meta.insert(META_CHANGE, record.change)?;
            tables.meta.insert(META_LOG_APPLIED, *last)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Deletes every segment but the newest whose groups are all ≤ `indexed` (its successor starts at or
/// below `indexed + 1`).
fn delete_indexed_segments(shared: &Shared, indexed: u64) -> std::io::Result<()> {
    let segments = segment::list(&shared.log_dir)?;
    for pair in segments.windows(2) {
        if pair[1].0 <= indexed + 1 {
            std::fs::remove_file(&pair[0].1)?;
        } else {
            break;
        }
    }
    Ok(())
}

/// Every table, opened once per transaction.
pub(crate) struct Tables<'txn> {
    messages: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    dedupe_log: redb::Table<'txn, u64, &'static [u8]>,
    conversations: redb::Table<'txn, &'static str, &'static [u8]>,
    members: redb::Table<'txn, (&'static str, &'static str), (u64, u64, u64, u64)>,
    user_convs: redb::Table<'txn, (&'static str, &'static str), ()>,
    cursors: redb::Table<'txn, (&'static str, &'static str, &'static str), u64>,
    meta: redb::Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Tables {
            messages: txn.open_table(MESSAGES)?,
            dedupe_log: txn.open_table(DEDUPE_LOG)?,
            conversations: txn.open_table(CONVERSATIONS)?,
            members: txn.open_table(MEMBERS)?,
            user_convs: txn.open_table(USER_CONVS)?,
            cursors: txn.open_table(CURSORS)?,
            meta: txn.open_table(META)?,
        })
    }

    /// Writes the rows of `records` (oldest first). Rows are written in key order — B-tree inserts in
    /// order touch each page once — and conversation, membership and cursor rows only once per key
    /// with their last value (a group rewrites the sender's membership for every message).
    fn apply<'r>(
        &mut self,
        records: impl Iterator<Item = &'r GroupRecord> + Clone,
    ) -> Result<(), redb::Error> {
        let mut messages: Vec<&MessageRow> = records.clone().flat_map(|r| &r.messages).collect();
        messages.sort_unstable_by(|a, b| (&a.conv, a.seq).cmp(&(&b.conv, b.seq)));
        for row in messages {
            self.messages
                .insert((row.conv(), row.seq), row.message.as_ref())?;
        }
        let mut convs = BTreeMap::new();
        let mut members = BTreeMap::new();
        let mut new_members = BTreeSet::new();
        let mut cursors = BTreeMap::new();
        for record in records {
            for row in &record.convs {
                convs.insert(row.conv(), row);
            }
            for row in &record.members {
                members.insert((row.conv(), row.user()), row);
                if row.new {
                    new_members.insert((row.user(), row.conv()));
                }
            }
            for row in &record.cursors {
                let key = (row.conv(), row.user(), row.device());
                let seq = cursors.entry(key).or_insert(row.seq);
                *seq = (*seq).max(row.seq);
            }
        }
        for (conv, row) in convs {
            let bytes = prost::Message::encode_to_vec(&row.record.clone().unwrap_or_default());
            self.conversations.insert(conv, bytes.as_slice())?;
        }
        for (key, row) in members {
            self.members.insert(key, row.rec().to_row())?;
        }
        for key in new_members {
            self.user_convs.insert(key, ())?;
        }
        for (key, seq) in cursors {
            // Max with the stored value: a cursor never moves back, also if groups are re-applied.
            let old = self.cursors.get(key)?.map_or(0, |guard| guard.value());
            if seq > old {
                self.cursors.insert(key, seq)?;
            }
        }
        Ok(())
    }

    /// Removes up to [`PURGE_PER_TXN`] dedupe log rows whose entries are all at or before `cutoff`.
    fn purge_expired(&mut self, cutoff: Option<u64>) -> Result<(), redb::Error> {
        match cutoff {
            Some(cutoff) => dedupe::purge_log(&mut self.dedupe_log, cutoff, PURGE_PER_TXN),
            None => Ok(()),
        }
    }
}

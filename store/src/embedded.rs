//! The embedded store: a log-first commit point under the server's data directory, indexed in redb.
//!
//! The commit point is the log (`<dir>/log/*.seg`): the writer thread appends each group of writes as
//! one checksummed frame with one `fdatasync` and only then acks it. The redb index (`<dir>/ferry.redb`:
//! messages by conversation and seq, dedupe, heads, memberships, cursors, the Sync feed) is built from
//! the log behind the acks by the indexer thread, with a bounded lag. What is durable but not yet
//! indexed — the tail — is served from memory, so every read sees every acked write at once.
//!
//! Layout:
//! - this file: [`EmbeddedStore`] (open, reads, the [`Store`] impl), its options and commit statistics;
//! - `segment`: the log files, their frame format (length, CRC32, group number) and rolling;
//! - `record`: what one group changes, as one log record of absolute rows (replay is idempotent);
//! - `batch`: what each write request does, applied to an overlay of the in-memory state;
//! - `writer`: the writer thread: group commit to the log, backpressure, acks;
//! - `tail`: the durable, not yet indexed groups in memory (messages, dedupe ids, cursors);
//! - `indexer`: the indexer thread that writes the tail into redb and deletes indexed segments;
//! - `recovery`: start-up replay of the log past the index's high-water mark;
//! - `tables`: the redb tables and the encoding of their records;
//! - `cache`: the durable hot state kept in memory (conversations, memberships, the change counter).
//!
//! Guarantees: an append is acked only after the frame holding it is fsynced; it becomes visible
//! (cache head, tail) in the same step, before the ack, and seqs are assigned by the one writer in
//! order, so a head never covers a missing seq and never goes back. Membership changes and
//! `ensure_direct` are rows of the same group record as their system message: atomic and durable with
//! it. After a crash, the replay rebuilds the cache and the tail from the log (a torn last frame was
//! never acked and is cut off), and the indexer catches up in the background.

mod batch;
mod cache;
mod indexer;
mod record;
mod recovery;
mod segment;
mod tables;
mod tail;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::frame::{ConversationKind, ConversationState, Message};
use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use self::cache::Cache;
use self::segment::SegmentWriter;
use self::tables::*;
use self::tail::Tail;
use self::writer::{Request, Writer};

pub use self::segment::LogFault;
use crate::{
    Appended, ConversationInfo, Membership, MembershipOp, NewMessage, PendingAppend, Store,
    StoreError, SyncPage, WriteStats,
};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "ferry.redb";

/// Tuning of an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedStoreOptions {
    /// How long a (conversation, sender, client_msg_id) is remembered for dedupe. Default 7 days.
    pub dedupe_window: Duration,
    /// Most write requests applied in one transaction. Default 1024.
    pub max_batch: usize,
    /// Capacity of the bounded queue in front of the writer; callers wait when it is full. Default 8192.
    pub queue_capacity: usize,
    /// A log segment is closed and a new one started once it holds this many bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// Bound of the durable but unindexed tail (log payload bytes held in memory); new groups wait
    /// while it is exceeded. Default 64 MiB.
    pub max_unindexed_bytes: usize,
    /// Test hook: `false` starts no indexer, so everything stays in the log tail (crash and recovery
    /// tests). Default `true`.
    #[doc(hidden)]
    pub run_indexer: bool,
    /// Test hook: a switch that makes log writes fail as if the disk were full.
    #[doc(hidden)]
    pub log_fault: Option<LogFault>,
}

impl Default for EmbeddedStoreOptions {
    fn default() -> Self {
        EmbeddedStoreOptions {
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            max_batch: 1024,
            queue_capacity: 8192,
            segment_bytes: 64 << 20,
            max_unindexed_bytes: 64 << 20,
            run_indexer: true,
            log_fault: None,
        }
    }
}

/// Counters of the writer since open, for metrics. Mean batch size = `requests / commits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Log appends attempted (one frame and one fsync per group that changed something).
    pub commits: u64,
    /// Groups that failed (their callers got [`StoreError::Backend`] or [`StoreError::Unavailable`]).
    pub failed_commits: u64,
    /// Write requests of every kind taken into batches.
    pub requests: u64,
    /// New messages stored by `append` (not counting duplicates and system messages).
    pub appended: u64,
    /// Appends answered as duplicates.
    pub duplicates: u64,
    /// Largest batch so far.
    pub max_batch: u64,
    /// Total time spent building and committing successful groups (including fsync), µs.
    pub commit_micros: u64,
    /// Groups written into the redb index.
    pub indexed_groups: u64,
    /// Index transactions committed.
    pub index_commits: u64,
    /// Log payload bytes durable but not yet indexed, now.
    pub unindexed_bytes: u64,
    /// Highest value of `unindexed_bytes` since open.
    pub peak_unindexed_bytes: u64,
    /// Groups that had to wait for the indexer to make room (backpressure).
    pub backpressure_waits: u64,
    /// Total time those groups waited, µs.
    pub backpressure_micros: u64,
}

impl CommitStats {
    /// Mean requests per commit (0 before the first commit).
    pub fn mean_batch(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.requests as f64 / self.commits as f64
        }
    }
}

#[derive(Debug, Default)]
struct StatCounters {
    commits: AtomicU64,
    failed_commits: AtomicU64,
    requests: AtomicU64,
    appended: AtomicU64,
    duplicates: AtomicU64,
    max_batch: AtomicU64,
    commit_micros: AtomicU64,
    indexed_groups: AtomicU64,
    index_commits: AtomicU64,
    peak_unindexed_bytes: AtomicU64,
    backpressure_waits: AtomicU64,
    backpressure_micros: AtomicU64,
}

/// State shared by the store handle, its writer and its indexer.
struct Shared {
    db: Database,
    epoch: u64,
    dedupe_window_ms: u64,
    cache: RwLock<Cache>,
    tail: Mutex<Tail>,
    /// Signalled when the tail gains groups (indexer), loses them (writer waiting for room) or closes.
    tail_changed: Condvar,
    max_unindexed_bytes: usize,
    log_dir: PathBuf,
    stats: StatCounters,
}

impl Shared {
    // A panic elsewhere cannot leave the cache or the tail half-updated in a way readers could
    // misread (updates are inserts and removals of whole entries), so poisoning is ignored.
    fn lock_tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn count_index(&self, groups: u64) {
        self.stats.index_commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .indexed_groups
            .fetch_add(groups, Ordering::Relaxed);
    }
}

/// The default durable [`Store`]: a log-first commit point with group commit, a redb index built
/// behind the acks, hot state and the unindexed tail in memory.
///
/// Dropping it stops the writer after the queued requests are done, lets the indexer index the rest
/// of the tail, and closes the database.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    indexer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("epoch", &self.shared.epoch)
            .finish_non_exhaustive()
    }
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/ferry.redb` and `dir/log/`, loads the hot state, replays the
    /// log past the index and starts the writer and indexer threads. Blocking; call it once at start-up.
    pub fn open(dir: &Path, options: EmbeddedStoreOptions) -> Result<EmbeddedStore, StoreError> {
        let log_dir = dir.join(segment::LOG_DIR);
        std::fs::create_dir_all(&log_dir).map_err(backend)?;
        let db = Database::create(dir.join(DB_FILE)).map_err(backend)?;
        let (epoch, change, applied) = init_meta(&db).map_err(backend)?;
        let mut cache = Cache::load(&db, change).map_err(backend)?;
        let mut tail = Tail::new(applied);
        let replayed = recovery::replay(&log_dir, &mut cache, &mut tail)?;
        if replayed.groups > 0 {
            tracing::info!(groups = replayed.groups, "replayed the log tail");
        }
        let log = SegmentWriter::create(
            &log_dir,
            replayed.next_group,
            options.segment_bytes,
            options.log_fault.clone(),
        )
        .map_err(backend)?;
        let shared = Arc::new(Shared {
            db,
            epoch,
            dedupe_window_ms: options
                .dedupe_window
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            cache: RwLock::new(cache),
            tail: Mutex::new(tail),
            tail_changed: Condvar::new(),
            max_unindexed_bytes: options.max_unindexed_bytes,
            log_dir,
            stats: StatCounters::default(),
        });
        let indexer = if options.run_indexer {
            let indexer_shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name("ferry-store-indexer".into())
                .spawn(move || indexer::run(indexer_shared))
                .map_err(backend)?;
            Some(handle)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let writer = Writer {
            shared: shared.clone(),
            log,
            next_group: replayed.next_group,
            max_batch: options.max_batch,
        };
        let writer = std::thread::Builder::new()
            .name("ferry-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(backend)?;
        Ok(EmbeddedStore {
            shared,
            requests: Some(tx),
            writer: Some(writer),
            indexer,
        })
    }

    /// Writer counters since open.
    pub fn commit_stats(&self) -> CommitStats {
        let s = &self.shared.stats;
        CommitStats {
            commits: s.commits.load(Ordering::Relaxed),
            failed_commits: s.failed_commits.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            appended: s.appended.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            max_batch: s.max_batch.load(Ordering::Relaxed),
            commit_micros: s.commit_micros.load(Ordering::Relaxed),
            indexed_groups: s.indexed_groups.load(Ordering::Relaxed),
            index_commits: s.index_commits.load(Ordering::Relaxed),
            unindexed_bytes: self.shared.lock_tail().bytes() as u64,
            peak_unindexed_bytes: s.peak_unindexed_bytes.load(Ordering::Relaxed),
            backpressure_waits: s.backpressure_waits.load(Ordering::Relaxed),
            backpressure_micros: s.backpressure_micros.load(Ordering::Relaxed),
        }
    }

    /// Queues a write and waits for its committed outcome.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        self.queue(make)
            .await?
            .await
            .map_err(|_| writer_stopped())?
    }

    /// Queues a write; the returned receiver yields its outcome after the commit. Requests are applied
    /// in the order they were queued.
    async fn queue<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let sender = self
            .requests
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("store closed".into()))?;
        sender.send(make(tx)).await.map_err(|_| writer_stopped())?;
        Ok(rx)
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.shared.read_cache()
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("store writer stopped".into())
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer loop once it has answered what was queued; then the
        // indexer indexes what is left and stops. Joining both makes sure the database file is closed
        // (and can be reopened) when drop returns.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.shared.lock_tail().closing = true;
        self.shared.tail_changed.notify_all();
        if let Some(indexer) = self.indexer.take() {
            let _ = indexer.join();
        }
    }
}

/// Reads the epoch, the change counter and the last indexed log group, writing fresh ones when the
/// database is new.
fn init_meta(db: &Database) -> Result<(u64, u64, u64), redb::Error> {
    let txn = db.begin_write()?;
    let result = {
        // Opening creates missing tables, so readers can rely on every table existing.
        txn.open_table(MESSAGES)?;
        txn.open_table(DEDUPE)?;
        txn.open_table(DEDUPE_BY_TIME)?;
        txn.open_table(CONVERSATIONS)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(USER_CONVS)?;
        txn.open_table(CURSORS)?;
        let mut meta = txn.open_table(META)?;
        let epoch = meta.get(META_EPOCH)?.map(|guard| guard.value());
        let epoch = match epoch {
            Some(epoch) => {
                let schema = meta.get(META_SCHEMA)?.map(|guard| guard.value());
                if schema != Some(SCHEMA_VERSION) {
                    return Err(redb::Error::Corrupted(format!(
                        "unsupported store schema {schema:?}, expected {SCHEMA_VERSION}"
                    )));
                }
                epoch
            }
            None => {
                let epoch = loop {
                    let candidate: u64 = rand::random();
                    if candidate != 0 {
                        break candidate;
                    }
                };
                meta.insert(META_EPOCH, epoch)?;
                meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
                meta.insert(META_CHANGE, 0)?;
                epoch
            }
        };
        let change = meta.get(META_CHANGE)?.map_or(0, |guard| guard.value());
        let applied = meta.get(META_LOG_APPLIED)?.map_or(0, |guard| guard.value());
        (epoch, change, applied)
    };
    txn.commit()?;
    Ok(result)
}

fn kind_of(record: &ConvRecord) -> ConversationKind {
    ConversationKind::try_from(record.kind).unwrap_or(ConversationKind::Unspecified)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn store_epoch(&self) -> u64 {
        self.shared.epoch
    }

    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        self.call(|reply| Request::Append(message, reply)).await
    }

    async fn queue_append(&self, message: NewMessage) -> Result<PendingAppend, StoreError> {
        let committed = self.queue(|reply| Request::Append(message, reply)).await?;
        Ok(Box::pin(async move {
            committed.await.map_err(|_| writer_stopped())?
        }))
    }

    fn write_stats(&self) -> WriteStats {
        let stats = self.commit_stats();
        WriteStats {
            commits: stats.commits,
            requests: stats.requests,
            commit_micros: stats.commit_micros,
        }
    }

    async fn change_membership(
        &self,
        conversation: &str,
        op: MembershipOp,
        server_time_ms: u64,
    ) -> Result<Appended, StoreError> {
        self.call(|reply| Request::Membership {
            conversation: conversation.to_owned(),
            op,
            server_time_ms,
            reply,
        })
        .await
    }

    async fn ensure_direct(&self, conversation: &str, a: &str, b: &str) -> Result<(), StoreError> {
        // The common case (it exists) needs no trip through the writer and no transaction.
        if self.cache().convs.contains_key(conversation) {
            return Ok(());
        }
        self.call(|reply| Request::EnsureDirect {
            conversation: conversation.to_owned(),
            a: a.to_owned(),
            b: b.to_owned(),
            reply,
        })
        .await
    }

    async fn conversation(
        &self,
        conversation: &str,
    ) -> Result<Option<ConversationInfo>, StoreError> {
        Ok(self
            .cache()
            .convs
            .get(conversation)
            .map(|record| ConversationInfo {
                kind: kind_of(record),
                name: record.name.clone(),
                owner: record.owner.clone(),
                head_seq: record.head,
                epoch: self.shared.epoch,
            }))
    }

    async fn membership(
        &self,
        conversation: &str,
        user: &str,
    ) -> Result<Option<Membership>, StoreError> {
        Ok(self
            .cache()
            .member(conversation, user)
            .map(MemberRec::membership))
    }

    async fn members(&self, conversation: &str) -> Result<Vec<String>, StoreError> {
        let cache = self.cache();
        let Some(members) = cache.members.get(conversation) else {
            return Ok(Vec::new());
        };
        Ok(members
            .iter()
            .filter(|(_, rec)| rec.left_seq.is_none())
            .map(|(user, _)| user.clone())
            .collect())
    }

    async fn read(
        &self,
        conversation: &str,
        after_seq: u64,
        up_to_seq: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        // The cached head is published only after its fsync, so it is never above durable data.
        let head = match self.cache().convs.get(conversation) {
            Some(record) => record.head,
            None => return Ok(Vec::new()),
        };
        let last = up_to_seq.min(head);
        if after_seq >= last || limit == 0 {
            return Ok(Vec::new());
        }
        let limit = limit as usize;
        // The tail first, then an index snapshot: a message the indexer moves out of the tail in
        // between is committed before it leaves, so the snapshot holds it (see `tail`).
        let unindexed = self
            .shared
            .lock_tail()
            .messages(conversation, after_seq, last, limit);
        // Indexed messages are all below the unindexed ones of the same conversation.
        let indexed_last = unindexed.first().map_or(last, |(seq, _)| seq - 1);
        if after_seq >= indexed_last {
            // Everything asked for is in memory: no disk, nothing that could block.
            return read_pages(&self.shared, conversation, after_seq, 0, unindexed, limit);
        }
        // The index lookup reads pages from disk: off the async threads, so a Pull of cold history
        // never stalls the streams that share the worker.
        let (shared, conversation) = (self.shared.clone(), conversation.to_owned());
        tokio::task::spawn_blocking(move || {
            read_pages(
                &shared,
                &conversation,
                after_seq,
                indexed_last,
                unindexed,
                limit,
            )
        })
        .await
        .map_err(backend)?
    }

    async fn set_delivered(
        &self,
        conversation: &str,
        user: &str,
        device: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.call(|reply| Request::SetDelivered {
            conversation: conversation.to_owned(),
            user: user.to_owned(),
            device: device.to_owned(),
            seq,
            reply,
        })
        .await
    }

    async fn set_read(&self, conversation: &str, user: &str, seq: u64) -> Result<u64, StoreError> {
        self.call(|reply| Request::SetRead {
            conversation: conversation.to_owned(),
            user: user.to_owned(),
            seq,
            reply,
        })
        .await
    }

    async fn changed_since(
        &self,
        user: &str,
        device: &str,
        since_token: u64,
        limit: u32,
    ) -> Result<SyncPage, StoreError> {
        let limit = limit.max(1) as usize;
        // A token above any issued one (e.g. from before a store reset) cannot be interpreted: it means
        // "everything" (FERRY-SYNC-4). The counter only grows, so reading it first is safe.
        let since_token = if since_token > self.cache().change {
            0
        } else {
            since_token
        };
        // Collect the page from one consistent view of the cache: batches are published whole, and
        // change values are assigned in commit order, so no later commit can add a value ≤ next_token.
        let mut changed = {
            let cache = self.cache();
            let Some(convs) = cache.user_convs.get(user) else {
                return Ok(SyncPage {
                    next_token: since_token,
                    ..SyncPage::default()
                });
            };
            let mut changed = Vec::new();
            for conv in convs {
                let (Some(record), Some(rec)) = (cache.convs.get(conv), cache.member(conv, user))
                else {
                    continue;
                };
                // After removal, later appends are invisible to the user: only the removal counts.
                let change = if rec.left_seq.is_none() {
                    record.last_change.max(rec.change_token)
                } else {
                    rec.change_token
                };
                if change > since_token {
                    changed.push((change, conv.clone(), record.clone(), rec));
                }
            }
            changed
        };
        changed.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let has_more = changed.len() > limit;
        changed.truncate(limit);
        let next_token = changed.last().map_or(since_token, |c| c.0);

        // Cursors not yet indexed first, then the index (see `read`); the higher one counts.
        let unindexed: Vec<Option<u64>> = {
            let tail = self.shared.lock_tail();
            changed
                .iter()
                .map(|(_, conv, _, _)| tail.cursor(conv, user, device))
                .collect()
        };
        // The indexed cursors are read from disk: off the async threads (see `read`).
        let (shared, user, device) = (self.shared.clone(), user.to_owned(), device.to_owned());
        tokio::task::spawn_blocking(move || {
            let conversations = sync_states(&shared, &user, &device, changed, unindexed)?;
            Ok(SyncPage {
                conversations,
                next_token,
                has_more,
            })
        })
        .await
        .map_err(backend)?
    }
}

/// Messages of `conversation` with `after < seq <= indexed_last` from the index, then the unindexed
/// ones (already taken from the tail, which must happen before this opens its snapshot), at most
/// `limit` in all. Blocking when `indexed_last > after`.
fn read_pages(
    shared: &Shared,
    conversation: &str,
    after: u64,
    indexed_last: u64,
    unindexed: Vec<(u64, bytes::Bytes)>,
    limit: usize,
) -> Result<Vec<Message>, StoreError> {
    let mut messages = Vec::with_capacity(limit.min(1024));
    if after < indexed_last {
        let txn = shared.db.begin_read().map_err(backend)?;
        let table = txn.open_table(MESSAGES).map_err(backend)?;
        let range = table
            .range((conversation, after + 1)..=(conversation, indexed_last))
            .map_err(backend)?;
        for row in range.take(limit) {
            let (_, value) = row.map_err(backend)?;
            messages.push(Message::decode(value.value()).map_err(backend)?);
        }
    }
    for (_, bytes) in unindexed {
        if messages.len() >= limit {
            break;
        }
        messages.push(Message::decode(bytes).map_err(backend)?);
    }
    Ok(messages)
}

/// A changed conversation as `changed_since` collected it: change value, id, record, membership.
type Changed = (u64, String, ConvRecord, MemberRec);

/// The states of a Sync page: the cached facts plus each device's delivery cursor, the unindexed one
/// (taken from the tail before this opens its snapshot) or the indexed one. Blocking.
fn sync_states(
    shared: &Shared,
    user: &str,
    device: &str,
    changed: Vec<Changed>,
    unindexed: Vec<Option<u64>>,
) -> Result<Vec<ConversationState>, StoreError> {
    let txn = shared.db.begin_read().map_err(backend)?;
    let cursors = txn.open_table(CURSORS).map_err(backend)?;
    let mut conversations = Vec::with_capacity(changed.len());
    for ((_, conv, record, rec), unindexed) in changed.into_iter().zip(unindexed) {
        let acked_seq = cursors
            .get((conv.as_str(), user, device))
            .map_err(backend)?
            .map_or(0, |guard| guard.value())
            .max(unindexed.unwrap_or(0));
        let head_seq = rec.membership().visible_head(record.head);
        let read_seq = rec.read_seq.min(head_seq);
        conversations.push(ConversationState {
            conversation_id: conv,
            kind: kind_of(&record) as i32,
            head_seq,
            epoch: shared.epoch,
            acked_seq,
            read_seq,
            unread_count: head_seq.saturating_sub(read_seq),
            member: rec.left_seq.is_none(),
            first_seq: rec.first_seq,
            name: record.name,
        });
    }
    Ok(conversations)
}

//! The embedded store: a log-first commit point under the server's data directory, indexed in redb.
//!
//! The commit point is the log (`<dir>/log/*.seg`): the writer thread appends each group of writes as
//! one checksummed frame with one `fdatasync` and only then acks it. The redb index (`<dir>/ferry.redb`:
//! messages by conversation and seq, dedupe, heads, memberships, cursors, the Sync feed) is built from
//! the log behind the acks by the indexer thread, with a bounded lag. What is durable but not yet
//! indexed — the tail — is served from memory, so every read sees every acked write at once.
//!
//! Layout:
//! - this file: [`EmbeddedStore`] (open, close, the write queue) and the state its threads share;
//! - `options`: [`EmbeddedStoreOptions`] and the commit statistics;
//! - `api`: the [`Store`](crate::Store) impl (writes through the writer, reads from cache, tail, index);
//! - `segment`: the log files, their frame format (length, CRC32, group number) and rolling;
//! - `record`: what one group changes, as one log record of absolute rows (replay is idempotent);
//! - `batch`: what each write request does, applied to an overlay of the in-memory state;
//! - `writer`: the writer thread: group commit to the log, backpressure, acks;
//! - `tail`: the durable, not yet indexed groups in memory (messages, cursors);
//! - `dedupe`: the dedupe index (in memory, rebuilt at open) and its append-only redb rows;
//! - `index_db`: the redb handle, reopened after an I/O error;
//! - `indexer`: the indexer thread that writes the tail into redb and deletes indexed segments;
//! - `recovery`: start-up replay of the log past the index's high-water mark;
//! - `tables`: the redb tables and the encoding of their records;
//! - `cache`: the durable hot state kept in memory (conversations, memberships, the change counter);
//! - `push`: push registrations, in their own redb table outside the log;
//! - `revoke`: token revocation stamps, likewise in their own redb table.
//!
//! Guarantees: an append is acked only after the frame holding it is fsynced; it becomes visible
//! (cache head, tail) in the same step, before the ack, and seqs are assigned by the one writer in
//! order, so a head never covers a missing seq and never goes back. Membership changes and
//! `ensure_direct` are rows of the same group record as their system message: atomic and durable with
//! it. After a crash, the replay rebuilds the cache and the tail from the log (a torn last frame was
//! never acked and is cut off), and the indexer catches up in the background.

mod api;
mod batch;
mod cache;
mod dedupe;
mod index_db;
mod indexer;
mod options;
mod push;
mod record;
mod recovery;
mod revoke;
mod segment;
mod tables;
mod tail;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use self::cache::Cache;
use self::dedupe::DedupeIndex;
use self::index_db::IndexDb;
use self::segment::SegmentWriter;
use self::tables::*;
use self::tail::Tail;
use self::writer::{Request, Writer};

use self::options::StatCounters;
pub use self::options::{CommitStats, EmbeddedStoreOptions, DB_FILE};
pub use self::segment::LogFault;
use crate::StoreError;

/// State shared by the store handle, its writer and its indexer.
struct Shared {
    db: IndexDb,
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

    /// A read transaction on the index, for the store's readers (errors as [`StoreError`]).
    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db
            .get()
            .map_err(backend)?
            .begin_read()
            .map_err(backend)
    }

    /// A write transaction on the index outside the log (push registrations).
    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        self.db
            .get()
            .map_err(backend)?
            .begin_write()
            .map_err(backend)
    }

    fn count_index(&self, groups: u64) {
        self.stats.index_commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .indexed_groups
            .fetch_add(groups, Ordering::Relaxed);
    }
}

/// The default durable [`Store`](crate::Store): a log-first commit point with group commit, a redb index built
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
        let db = IndexDb::open(
            &dir.join(DB_FILE),
            options.log_fault.clone(),
            options.index_cache_bytes,
        )
        .map_err(backend)?;
        let handle = db.get().map_err(backend)?;
        let (epoch, change, applied) = init_meta(&handle).map_err(backend)?;
        let mut cache = Cache::load(&handle, change).map_err(backend)?;
        let dedupe_window_ms = options
            .dedupe_window
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
        // Everything the indexer has not purged: expiry goes by the requests' times, never by this
        // machine's clock (the writer drops expired entries as groups move time on).
        let mut dedupe = DedupeIndex::load(&handle).map_err(backend)?;
        drop(handle);
        let mut tail = Tail::new(applied);
        let replayed = recovery::replay(&log_dir, &mut cache, &mut tail, &mut dedupe)?;
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
            dedupe_window_ms,
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
            dedupe,
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
            index_failures: s.index_failures.load(Ordering::Relaxed),
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
        txn.open_table(dedupe::DEDUPE_LOG)?;
        txn.open_table(CONVERSATIONS)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(USER_CONVS)?;
        txn.open_table(CURSORS)?;
        let mut meta = txn.open_table(META)?;
        let epoch = meta.get(META_EPOCH)?.map(|guard| guard.value());
        let epoch = match epoch {
            Some(epoch) => {
                let schema = meta.get(META_SCHEMA)?.map(|guard| guard.value());
                if schema == Some(1) {
                    let applied = meta.get(META_LOG_APPLIED)?.map_or(0, |guard| guard.value());
                    dedupe::migrate_v1(&txn, applied)?;
                    meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
                    tracing::info!("store schema 1 → 2: dedupe entries moved to the dedupe log");
                } else if schema != Some(SCHEMA_VERSION) {
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

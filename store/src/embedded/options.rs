//! The embedded store's tuning ([`EmbeddedStoreOptions`]) and its writer counters ([`CommitStats`]).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::LogFault;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "ferry.redb";

/// Tuning of an [`EmbeddedStore`](super::EmbeddedStore).
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
    /// Page cache of the redb index. Default 64 MiB, not redb's 1 GiB: the index is written behind
    /// the acks and read mostly at its recent end (the unindexed tail answers the newest reads from
    /// memory), the OS page cache holds the file anyway, and a server that filled redb's default
    /// grew past 1.6 GB of RSS in 30 s of `ferry-bench throughput`, zeroing freshly faulted pages
    /// for 14 % of its CPU on the way.
    pub index_cache_bytes: usize,
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
            index_cache_bytes: 64 << 20,
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
    /// Groups that failed (their callers got [`StoreError::Backend`](crate::StoreError::Backend) or [`StoreError::Unavailable`](crate::StoreError::Unavailable)).
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
    /// Index transactions that failed (each is followed by a reopen of the index, see `index_db`).
    pub index_failures: u64,
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
pub(super) struct StatCounters {
    pub(super) commits: AtomicU64,
    pub(super) failed_commits: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) appended: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) max_batch: AtomicU64,
    pub(super) commit_micros: AtomicU64,
    pub(super) indexed_groups: AtomicU64,
    pub(super) index_commits: AtomicU64,
    pub(super) index_failures: AtomicU64,
    pub(super) peak_unindexed_bytes: AtomicU64,
    pub(super) backpressure_waits: AtomicU64,
    pub(super) backpressure_micros: AtomicU64,
}

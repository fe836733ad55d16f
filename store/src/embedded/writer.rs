//! The writer thread: group commit to the log.
//!
//! Every write goes through one bounded channel to one thread. The thread blocks for the first request
//! and drains whatever else is already queued (up to `max_batch`): everything that arrived while the
//! previous fsync ran forms the next group, with no timer adding latency. It applies the group to an
//! overlay of the in-memory state (`batch`: dedupe, seq assignment, membership rules), appends the
//! group's effect to the log as one frame with one `fdatasync` (`segment`), and only then publishes
//! it — to the unindexed tail first, then to the cache — and replies to every caller. The redb index
//! is built from the tail later by the indexer thread.
//!
//! Backpressure: before a group is written, the writer waits while the unindexed tail is above its
//! bound; the bounded request channel then fills and callers wait in turn. If the tail stays full
//! for [`BACKPRESSURE_TIMEOUT`] (the index is failing), the group is refused as `Unavailable`.
//!
//! If the log write fails, nothing of the group was published; every caller gets an error —
//! `Unavailable` (retryable) when the disk is full, `Backend` otherwise — and the next group starts
//! from the same state, so a later retry after space returns succeeds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use redb::ReadableDatabase;
use tokio::sync::{mpsc, oneshot};

use super::batch::{Batch, Lookup};
use super::dedupe::DedupeIndex;
use super::record::GroupRecord;
use super::segment::SegmentWriter;
use super::tables::{CURSORS, MESSAGES};
use super::Shared;
use crate::{Appended, MembershipOp, NewMessage, StoreError};

/// Longest a group waits for the indexer to make room before it is refused.
pub(crate) const BACKPRESSURE_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time dedupe entries are kept past the window before they are dropped from memory: request
/// times come from many tasks and are not in order, and whether an entry still counts is decided by
/// each request's own time (see `batch`), so dropping never decides it.
const PURGE_SLACK_MS: u64 = 60_000;
/// Most inserted batches expired per group commit: bounds the writer's extra work per group while
/// still expiring faster than groups add batches (one each).
const PURGE_BATCHES: usize = 8;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write request, with the channel its caller waits on.
pub(crate) enum Request {
    Append(NewMessage, Reply<Appended>),
    Membership {
        conversation: String,
        op: MembershipOp,
        server_time_ms: u64,
        reply: Reply<Appended>,
    },
    EnsureDirect {
        conversation: String,
        a: String,
        b: String,
        reply: Reply<()>,
    },
    SetDelivered {
        conversation: String,
        user: String,
        device: String,
        seq: u64,
        reply: Reply<()>,
    },
    SetRead {
        conversation: String,
        user: String,
        seq: u64,
        reply: Reply<u64>,
    },
}

/// A request's outcome, held until the commit decides whether it stands.
// Nearly every outcome is an append, so boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Done {
    Appended(Reply<Appended>, Result<Appended, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Seq(Reply<u64>, Result<u64, StoreError>),
}

impl Done {
    fn send(self) {
        // A caller that stopped waiting (cancelled future) is not an error: its change is committed.
        let _ = match self {
            Done::Appended(reply, result) => reply.send(result).is_ok(),
            Done::Unit(reply, result) => reply.send(result).is_ok(),
            Done::Seq(reply, result) => reply.send(result).is_ok(),
        };
    }

    /// A request the failed group never got to; [`Done::fail`] replaces the placeholder result.
    fn unanswered(request: Request) -> Done {
        let placeholder = || StoreError::Unavailable(String::new());
        match request {
            Request::Append(_, reply) | Request::Membership { reply, .. } => {
                Done::Appended(reply, Err(placeholder()))
            }
            Request::EnsureDirect { reply, .. } | Request::SetDelivered { reply, .. } => {
                Done::Unit(reply, Err(placeholder()))
            }
            Request::SetRead { reply, .. } => Done::Seq(reply, Err(placeholder())),
        }
    }

    fn fail(self, err: &dyn Fn() -> StoreError) {
        let _ = match self {
            Done::Appended(reply, _) => reply.send(Err(err())).is_ok(),
            Done::Unit(reply, _) => reply.send(Err(err())).is_ok(),
            Done::Seq(reply, _) => reply.send(Err(err())).is_ok(),
        };
    }
}

/// The writer thread's state besides the shared one.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub log: SegmentWriter,
    /// Number of the next log frame.
    pub next_group: u64,
    pub max_batch: usize,
    /// Which ids were stored within the dedupe window; only this thread asks and changes it.
    pub dedupe: DedupeIndex,
}

/// A group that was validated and is ready for the log.
struct Built {
    record: GroupRecord,
    appended: u64,
    duplicates: u64,
}

impl Writer {
    /// The loop; returns when every sender is gone (the store was dropped).
    pub(crate) fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let max_batch = self.max_batch.max(1);
        let mut group = Vec::with_capacity(max_batch);
        while let Some(first) = requests.blocking_recv() {
            group.push(first);
            while group.len() < max_batch {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.commit_group(std::mem::take(&mut group));
        }
    }

    fn commit_group(&mut self, requests: Vec<Request>) {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let count = requests.len() as u64;
        stats.requests.fetch_add(count, Ordering::Relaxed);
        stats.max_batch.fetch_max(count, Ordering::Relaxed);
        if let Err(reason) = self.wait_for_room() {
            let err = || StoreError::Unavailable(reason.clone());
            requests
                .into_iter()
                .for_each(|r| Done::unanswered(r).fail(&err));
            return;
        }
        let started = Instant::now();
        let mut done = Vec::with_capacity(requests.len());
        let built = match build(&shared, &self.dedupe, requests, &mut done) {
            Ok(built) => built,
            Err(err) => {
                tracing::error!(error = %err, requests = count, "store group failed");
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                let reason = err.to_string();
                // An I/O error of the index (a full disk, the handle being reopened after one, see
                // `index_db`) passes; the caller may retry. Anything else is a broken store.
                let retryable = matches!(err, redb::Error::Io(_) | redb::Error::PreviousIo);
                let err = || {
                    if retryable {
                        StoreError::Unavailable(format!("index: {reason}"))
                    } else {
                        StoreError::Backend(reason.clone())
                    }
                };
                done.into_iter().for_each(|d| d.fail(&err));
                return;
            }
        };
        if !built.record.is_empty() {
            let payload = built.record.encode_to_vec();
            stats.commits.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = self.log.append(self.next_group, &payload) {
                tracing::error!(error = %err, requests = count, "log append failed");
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                let full = err.raw_os_error() == Some(28); // ENOSPC
                let reason = err.to_string();
                let err = || {
                    if full {
                        StoreError::Unavailable(format!("disk full: {reason}"))
                    } else {
                        StoreError::Backend(reason.clone())
                    }
                };
                done.into_iter().for_each(|d| d.fail(&err));
                return;
            }
            let record = Arc::new(built.record);
            // Tail before cache: a reader that sees the new head finds the message (see `tail`).
            {
                let mut tail = shared.lock_tail();
                tail.push(self.next_group, record.clone(), payload.len());
                stats
                    .peak_unindexed_bytes
                    .fetch_max(tail.bytes() as u64, Ordering::Relaxed);
            }
            shared.tail_changed.notify_all();
            shared.write_cache().apply(&record);
            self.dedupe.insert(&record.dedupe);
            if let Some(now) = record.now_ms {
                let cutoff =
                    now.saturating_sub(shared.dedupe_window_ms.saturating_add(PURGE_SLACK_MS));
                self.dedupe.purge(cutoff, PURGE_BATCHES);
            }
            self.next_group += 1;
        }
        stats.appended.fetch_add(built.appended, Ordering::Relaxed);
        stats
            .duplicates
            .fetch_add(built.duplicates, Ordering::Relaxed);
        stats
            .commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        done.into_iter().for_each(Done::send);
    }

    /// Waits while the unindexed tail is above its bound (bounded by [`BACKPRESSURE_TIMEOUT`]).
    fn wait_for_room(&self) -> Result<(), String> {
        let shared = &self.shared;
        let started = Instant::now();
        let deadline = started + BACKPRESSURE_TIMEOUT;
        let mut tail = shared.lock_tail();
        let mut waited = false;
        while tail.bytes() > shared.max_unindexed_bytes {
            waited = true;
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "index is behind ({} bytes unindexed; last index error: {})",
                    tail.bytes(),
                    tail.index_error.as_deref().unwrap_or("none")
                ));
            }
            tail = shared
                .tail_changed
                .wait_timeout(tail, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if waited {
            let stats = &shared.stats;
            stats.backpressure_waits.fetch_add(1, Ordering::Relaxed);
            let micros = started.elapsed().as_micros() as u64;
            stats
                .backpressure_micros
                .fetch_add(micros, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Validates and applies `requests` to an overlay of the current state. Every request's outcome goes
/// to `done`, also when a lookup fails part way, so every caller can be answered.
fn build(
    shared: &Shared,
    dedupe: &DedupeIndex,
    requests: Vec<Request>,
    done: &mut Vec<Done>,
) -> Result<Built, redb::Error> {
    let mut requests = requests.into_iter();
    let result = build_all(shared, dedupe, &mut requests, done);
    // Requests not reached (a lookup failed before them) are answered as failed too.
    done.extend(requests.map(Done::unanswered));
    result
}

fn build_all(
    shared: &Shared,
    dedupe: &DedupeIndex,
    requests: &mut std::vec::IntoIter<Request>,
    done: &mut Vec<Done>,
) -> Result<Built, redb::Error> {
    // The index snapshot is taken under the tail lock, and the lock is held while the group is built,
    // so no row can leave the tail without being in the snapshot (see `tail`).
    let tail = shared.lock_tail();
    let txn = shared.db.get()?.begin_read()?;
    let lookup = Lookup {
        tail: &tail,
        dedupe,
        messages: txn.open_table(MESSAGES)?,
        cursors: txn.open_table(CURSORS)?,
    };
    let cache = shared.read_cache();
    let mut batch = Batch::new(&cache, shared.epoch, shared.dedupe_window_ms);
    for request in requests.by_ref() {
        match request {
            Request::Append(new, reply) => match batch.append(&lookup, new) {
                Ok(result) => done.push(Done::Appended(reply, result)),
                Err(err) => {
                    // Its placeholder result is replaced by `Done::fail`.
                    done.push(Done::Appended(
                        reply,
                        Err(StoreError::Unavailable(String::new())),
                    ));
                    return Err(err);
                }
            },
            Request::Membership {
                conversation,
                op,
                server_time_ms,
                reply,
            } => {
                let result = batch.change_membership(&conversation, op, server_time_ms);
                done.push(Done::Appended(reply, result));
            }
            Request::EnsureDirect {
                conversation,
                a,
                b,
                reply,
            } => {
                batch.ensure_direct(&conversation, &a, &b);
                done.push(Done::Unit(reply, Ok(())));
            }
            Request::SetDelivered {
                conversation,
                user,
                device,
                seq,
                reply,
            } => match batch.set_delivered(&lookup, (conversation, user, device), seq) {
                Ok(()) => done.push(Done::Unit(reply, Ok(()))),
                Err(err) => {
                    done.push(Done::Unit(reply, Ok(()))); // replaced by `Done::fail`
                    return Err(err);
                }
            },
            Request::SetRead {
                conversation,
                user,
                seq,
                reply,
            } => {
                let result = batch.set_read(&conversation, &user, seq);
                done.push(Done::Seq(reply, result));
            }
        }
    }
    let (appended, duplicates) = (batch.appended, batch.duplicates);
    Ok(Built {
        record: batch.into_record(),
        appended,
        duplicates,
    })
}

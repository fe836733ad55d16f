//! The writer thread: group commit.
//!
//! Every write goes through one bounded channel to one thread. The thread blocks for the first request,
//! drains whatever else is already queued (up to `max_batch`), applies them all in one redb write
//! transaction, commits it with `Durability::Immediate` (one fsync for the whole group) and only then
//! replies to every caller and publishes the new state to the [`Cache`](super::cache::Cache). If the commit fails, every
//! caller of the batch gets [`StoreError::Backend`] and the cache is left as it was.
//!
//! What each request does is in `batch`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use redb::Durability;
use tokio::sync::{mpsc, oneshot};

use super::batch::{Batch, Tables};
use super::tables::{ConvRecord, MemberRec};
use super::Shared;
use crate::{Appended, MembershipOp, NewMessage, StoreError};

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

    /// A request the failed transaction never got to; [`Done::fail`] replaces the placeholder result.
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

    fn fail(self, reason: &str) {
        let err = || StoreError::Backend(reason.to_owned());
        let _ = match self {
            Done::Appended(reply, _) => reply.send(Err(err())).is_ok(),
            Done::Unit(reply, _) => reply.send(Err(err())).is_ok(),
            Done::Seq(reply, _) => reply.send(Err(err())).is_ok(),
        };
    }
}

/// What a committed batch changes in the cache.
struct Publish {
    convs: HashMap<String, ConvRecord>,
    members: HashMap<(String, String), MemberRec>,
    change: u64,
    appended: u64,
    duplicates: u64,
}

/// The writer thread's loop; returns when every sender is gone (the store was dropped).
pub(crate) fn run(shared: Arc<Shared>, mut requests: mpsc::Receiver<Request>, max_batch: usize) {
    let max_batch = max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = requests.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        commit_batch(&shared, std::mem::take(&mut batch));
    }
}

fn commit_batch(shared: &Shared, requests: Vec<Request>) {
    let started = Instant::now();
    let count = requests.len() as u64;
    let mut done = Vec::with_capacity(requests.len());
    let result = apply(shared, requests, &mut done);
    let stats = &shared.stats;
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.requests.fetch_add(count, Ordering::Relaxed);
    stats.max_batch.fetch_max(count, Ordering::Relaxed);
    match result {
        Ok(publish) => {
            {
                let mut cache = shared.cache.write().unwrap_or_else(|e| e.into_inner());
                for (conv, record) in publish.convs {
                    cache.convs.insert(conv, record);
                }
                for ((conv, user), rec) in publish.members {
                    cache.insert_member(&conv, &user, rec);
                }
                cache.change = publish.change;
            }
            stats
                .appended
                .fetch_add(publish.appended, Ordering::Relaxed);
            stats
                .duplicates
                .fetch_add(publish.duplicates, Ordering::Relaxed);
            stats
                .commit_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            done.into_iter().for_each(Done::send);
        }
        Err(err) => {
            tracing::error!(error = %err, requests = count, "store commit failed");
            stats.failed_commits.fetch_add(1, Ordering::Relaxed);
            let reason = err.to_string();
            done.into_iter().for_each(|d| d.fail(&reason));
        }
    }
}

/// Applies `requests` in one transaction and commits it. Every request's outcome goes to `done`, also
/// when the transaction fails part way, so every caller can be answered.
fn apply(
    shared: &Shared,
    requests: Vec<Request>,
    done: &mut Vec<Done>,
) -> Result<Publish, redb::Error> {
    let mut requests = requests.into_iter();
    let result = apply_all(shared, &mut requests, done);
    // Requests not reached (the transaction failed before them) are answered as failed too.
    done.extend(requests.map(Done::unanswered));
    result
}

fn apply_all(
    shared: &Shared,
    requests: &mut std::vec::IntoIter<Request>,
    done: &mut Vec<Done>,
) -> Result<Publish, redb::Error> {
    let mut txn = shared.db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let publish = {
        let cache = shared.cache.read().unwrap_or_else(|e| e.into_inner());
        let mut batch = Batch::new(&cache, shared.epoch, shared.dedupe_window_ms);
        let mut tables = Tables::open(&txn)?;
        for request in requests.by_ref() {
            match request {
                Request::Append(new, reply) => match batch.append(&tables, new) {
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
                } => match batch.set_delivered(&tables, (conversation, user, device), seq) {
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
        batch.purge_expired(&mut tables)?;
        batch.write(&mut tables)?;
        Publish {
            convs: batch.convs,
            members: batch.members,
            change: batch.change,
            appended: batch.appended,
            duplicates: batch.duplicates,
        }
    };
    txn.commit()?;
    Ok(publish)
}

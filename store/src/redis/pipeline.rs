//! The append pipeline: concurrent sends share round trips, yet each conversation's appends reach Redis
//! in exactly the order they were queued.
//!
//! Appends are spread over a fixed number of *lanes* by conversation id; each lane is one task with a
//! bounded queue. A lane takes everything queued (up to `max_pipeline`) and sends it as one pipeline per
//! Cluster slot — all slots at once —, the first command an `EVAL` carrying the script's source and the
//! rest `EVALSHA`s; it keeps up to two such batches in flight, the second written behind the first on
//! the same connection. So:
//! - one conversation's appends are in one lane, whose batches are written in queue order on the
//!   lane's one connection (to the slot's node): Redis runs them in that order, which is what
//!   `Store::queue_append` promises, on a single Redis and on a Cluster alike;
//! - many lanes are in flight at once on the multiplexed connections, so throughput is not one
//!   round trip at a time; and while a lane waits, its next batch builds up (group commit: Redis with
//!   `appendfsync always` fsyncs once per event-loop turn for everything it read), written as soon as
//!   it exists so that it makes the next turn;
//! - the lanes are spread over several connections (`RedisStoreOptions::append_connections`), a lane
//!   always on the same one: Redis reads at most 16 KiB per connection per event-loop turn, so on one
//!   connection a turn (one fsync) took ~30 appends however many were queued.
//!
//! The price: each batch takes one extra task hop (caller → lane) compared with calling `EVALSHA`
//! straight from the caller, and carries the script's source once. `examples/redis_bench.rs` and
//! `ferry-bench throughput --peers ferry-redis,redis` measure it against a raw loop.
//!
//! NOSCRIPT cannot happen behind a batch's `EVAL` unless a `SCRIPT FLUSH` lands between two of its
//! commands; should it, the lane loads the script on every master and resends the refused commands
//! once, in order (a later batch already in flight may then have run first).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use futures_util::stream::{FuturesOrdered, StreamExt};
use redis::cluster_routing::Slot;
use redis::{Cmd, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::conn::Conn;
use super::{redis_failure, scripts, server_error_passes};
use crate::{StoreError, WriteStats};

/// Lanes per store: enough that unrelated conversations rarely share a lane (and wait for each other's
/// round trip). An idle lane is a parked task and an empty channel.
const LANES: usize = 512;
/// Queued appends per lane before callers wait (backpressure, never an unbounded queue).
const LANE_CAPACITY: usize = 1024;
/// Batches of one lane written and not yet answered. Two: while a batch waits for its reply (a Redis
/// event-loop turn and, with `appendfsync always`, its fsync), the next one is already queued behind
/// it on the connection, so an append waits for about one turn, not up to two.
const IN_FLIGHT_BATCHES: usize = 2;

/// The outcome of one queued command.
pub(crate) type Reply = Result<Value, StoreError>;

struct Job {
    slot: Slot,
    cmd: Cmd,
    reply: oneshot::Sender<Reply>,
}

/// Write-path counters (one commit = one pipeline sent to one node).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    commits: AtomicU64,
    requests: AtomicU64,
    commit_micros: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> WriteStats {
        WriteStats {
            commits: self.commits.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            commit_micros: self.commit_micros.load(Ordering::Relaxed),
        }
    }
}

/// Handle to the lanes; dropping it ends the lane tasks once their queues are drained.
pub(crate) struct Pipeliner {
    lanes: Vec<mpsc::Sender<Job>>,
    pub(crate) stats: Arc<Stats>,
}

impl Pipeliner {
    /// Starts the lane tasks on the current tokio runtime, spread over `conns` (lane `i` always uses
    /// `conns[i % len]`, so one conversation's appends share one connection and stay in order).
    pub(crate) fn start(conns: &[Conn], max_pipeline: usize) -> Pipeliner {
        assert!(!conns.is_empty(), "the append lanes need a connection");
        let stats = Arc::new(Stats::default());
        let lanes = (0..LANES)
            .map(|i| {
                let (tx, rx) = mpsc::channel(LANE_CAPACITY);
                tokio::spawn(run_lane(
                    conns[i % conns.len()].clone(),
                    rx,
                    max_pipeline.max(1),
                    stats.clone(),
                ));
                tx
            })
            .collect();
        Pipeliner { lanes, stats }
    }

    /// Queues `cmd` (an EVALSHA of the append script on `slot`) in the lane of `conversation`; returns
    /// once it is queued. Commands queued one after another for one conversation run in that order.
    pub(crate) async fn queue(
        &self,
        conversation: &str,
        slot: Slot,
        cmd: Cmd,
    ) -> Result<oneshot::Receiver<Reply>, StoreError> {
        let mut hasher = DefaultHasher::new();
        conversation.hash(&mut hasher);
        let lane = &self.lanes[(hasher.finish() % LANES as u64) as usize];
        let (reply, rx) = oneshot::channel();
        lane.send(Job { slot, cmd, reply })
            .await
            .map_err(|_| StoreError::Unavailable("redis append pipeline stopped".into()))?;
        Ok(rx)
    }
}

async fn run_lane(conn: Conn, mut rx: mpsc::Receiver<Job>, max_pipeline: usize, stats: Arc<Stats>) {
    // Batches written and not yet answered, oldest first. A batch is written when first polled, which
    // `FuturesOrdered` does in push order before the next one is pushed (see the loop), so a lane's
    // batches reach its one connection in queue order.
    let mut in_flight = FuturesOrdered::new();
    let mut queue_open = true;
    // Ends when the store (every sender) is dropped, the queue is drained and every batch answered.
    loop {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = rx.recv(), if queue_open && in_flight.len() < IN_FLIGHT_BATCHES => {
                let Some(first) = first else {
                    queue_open = false;
                    continue;
                };
                let mut batch = vec![first];
                while batch.len() < max_pipeline {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                in_flight.push_back(send_batch(conn.clone(), batch, &stats));
            }
            else => break,
        }
    }
}

/// Sends a lane's batch: one pipeline per Cluster slot (a Cluster pipeline must stay in one slot), in
/// queue order within each, all slots at once.
async fn send_batch(conn: Conn, batch: Vec<Job>, stats: &Stats) {
    let mut groups: Vec<(Slot, Vec<Job>)> = Vec::new();
    for job in batch {
        match groups.iter_mut().find(|(slot, _)| *slot == job.slot) {
            Some((_, jobs)) => jobs.push(job),
            None => groups.push((job.slot, vec![job])),
        }
    }
    if groups.len() == 1 {
        let (_, jobs) = groups.pop().expect("one group");
        send_group(conn, jobs, stats).await;
    } else {
        join_all(
            groups
                .into_iter()
                .map(|(_, jobs)| send_group(conn.clone(), jobs, stats)),
        )
        .await;
    }
}

/// Sends one slot's jobs as one pipeline and answers each job.
async fn send_group(mut conn: Conn, mut jobs: Vec<Job>, stats: &Stats) {
    // Two rounds at most: the second only after a NOSCRIPT and a SCRIPT LOAD.
    for round in 0..2 {
        let started = Instant::now();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // The commands move into the pipeline (no copy of the bodies); a NOSCRIPT retry takes them back.
        // The first carries the script's source (EVAL: Redis finds it cached by its hash and does not
        // compile it again), so the EVALSHAs behind it on this connection cannot meet an empty script
        // cache; after a Redis restart the first batch simply loads it. That is what lets a lane keep
        // two batches in flight: a NOSCRIPT answered to an older batch while a newer one succeeded
        // (another connection having loaded the script in between) would put the newer appends before
        // the older ones. Only a SCRIPT FLUSH between two commands of a batch could still do that.
        for (i, job) in jobs.iter_mut().enumerate() {
            let cmd = std::mem::replace(&mut job.cmd, Cmd::new());
            pipe.add_command(if i == 0 {
                scripts::eval_with_source(&cmd, scripts::APPEND_SOURCE)
            } else {
                cmd
            });
        }
        let result: redis::RedisResult<Vec<Value>> = pipe.query_async(&mut conn).await;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        stats.commit_micros.fetch_add(
            started.elapsed().as_micros().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let values = match result {
            Ok(values) if values.len() == jobs.len() => values,
            Ok(values) => {
                let error = format!("redis answered {} of {} commands", values.len(), jobs.len());
                return fail_all(jobs, StoreError::Backend(error));
            }
            Err(err) => return fail_all(jobs, redis_failure("redis append pipeline", err)),
        };
        let mut refused = Vec::new();
        for ((mut job, value), cmd) in jobs.into_iter().zip(values).zip(pipe.cmd_iter()) {
            match value {
                Value::ServerError(err)
                    if round == 0 && err.kind() == Some(ServerErrorKind::NoScript) =>
                {
                    job.cmd = cmd.clone();
                    refused.push(job);
                }
                Value::ServerError(err) => {
                    let context = format!("redis append: {err:?}");
                    let error = match err.kind() {
                        Some(kind) if server_error_passes(kind) => StoreError::Unavailable(context),
                        _ => StoreError::Backend(context),
                    };
                    let _ = job.reply.send(Err(error));
                }
                value => {
                    let _ = job.reply.send(Ok(value));
                }
            }
        }
        if refused.is_empty() {
            return;
        }
        if let Err(err) = conn
            .on_every_master(scripts::load(scripts::APPEND_SOURCE))
            .await
        {
            return fail_all(refused, redis_failure("SCRIPT LOAD on redis", err));
        }
        jobs = refused;
    }
    // Unreachable with jobs left: round 1 answers every job it is given.
}

fn fail_all(jobs: Vec<Job>, error: StoreError) {
    for job in jobs {
        let _ = job.reply.send(Err(error.clone()));
    }
}

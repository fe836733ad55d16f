//! `memory`: what cluster mode costs in Redis RAM (Redis holds every message in memory). On one
//! redis-server (`appendfsync always`), INFO `used_memory` before and after:
//! - N stored messages of the body size (256 B by default) through Ferry's own `RedisStore`, spread
//!   over a few direct conversations — the message stream entry, its head/stamp updates and its dedupe
//!   record (kept for the dedupe window, so it is part of what a message costs);
//! - N idle device sessions registered through the cluster's `SessionDirectory` exactly as a node
//!   registers them (one user hash entry with its TTL, plus the node's user set).
//!
//! Each figure is the delta divided by N: allocator rounding and hash-table growth are included, as
//! they are in production.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use ferry_cluster::{Keys, LoginPolicy, RedisTarget, SessionDirectory, SessionRef};
use ferry_store::{NewMessage, RedisStore, RedisStoreOptions, Store};
use serde::Serialize;

use super::Config;
use crate::peers::redis::Redis;
use crate::report::Results;

/// Conversations the messages are spread over (a few, as a busy group would see).
const CONVERSATIONS: usize = 10;
/// Appends awaited together (a bound on what is in flight, not a rate).
const IN_FLIGHT: usize = 64;
/// Bound on the whole scenario against a stuck Redis.
const LIMIT: Duration = Duration::from_secs(300);

/// Redis memory per stored message and per idle session.
#[derive(Serialize, Clone, Debug)]
pub struct MemoryRow {
    /// Messages stored.
    pub messages: u64,
    /// Body bytes of each.
    pub body: usize,
    /// `used_memory` delta per message, bytes.
    pub bytes_per_message: f64,
    /// Idle sessions registered.
    pub sessions: u64,
    /// `used_memory` delta per session, bytes.
    pub bytes_per_session: f64,
}

/// Runs the measurement once at the first configured body size.
pub async fn run(config: &Config, results: &mut Results) {
    let body = config.bodies.first().copied().unwrap_or(256);
    let items: u64 = if config.quick { 5_000 } else { 50_000 };
    match tokio::time::timeout(LIMIT, measure(items, body)).await {
        Ok(Ok(row)) => {
            println!(
                "memory: {:.0} B of Redis per stored {body} B message, {:.0} B per idle session",
                row.bytes_per_message, row.bytes_per_session
            );
            results.memory = Some(row);
        }
        Ok(Err(e)) => results.errors.push(format!("memory: {e:#}")),
        Err(_) => results
            .errors
            .push(format!("memory: not done within {LIMIT:?}")),
    }
}

async fn measure(items: u64, body: usize) -> anyhow::Result<MemoryRow> {
    let redis = Redis::start().await?;
    let client = redis::Client::open(redis.url())?;
    let mut info = client.get_multiplexed_async_connection().await?;

    let options = RedisStoreOptions {
        require_durable: true,
        ..RedisStoreOptions::new([redis.url()])
    };
    let store = RedisStore::open(options).await?;
    for c in 0..CONVERSATIONS {
        store
            .ensure_direct(&direct(c), &format!("a{c}"), &format!("b{c}"))
            .await?;
    }
    let before = used_memory(&mut info).await?;
    let payload = Bytes::from(vec![b'x'; body]);
    let now = ferry_protocol::unix_millis(SystemTime::now());
    let mut n = 0;
    while n < items {
        let mut pending = Vec::with_capacity(IN_FLIGHT);
        for _ in 0..IN_FLIGHT.min((items - n) as usize) {
            let c = n as usize % CONVERSATIONS;
            let message = NewMessage {
                conversation: direct(c),
                sender: format!("a{c}"),
                sender_device: "phone".into(),
                // A realistic id length (a UUID), since the dedupe record keeps it.
                client_msg_id: format!("{n:036}"),
                body: payload.clone(),
                server_time_ms: now,
            };
            pending.push(store.queue_append(message).await?);
            n += 1;
        }
        for appended in pending {
            appended.await?;
        }
    }
    let bytes_per_message = per_item(before, used_memory(&mut info).await?, items);

    let target = RedisTarget::from_urls(&[redis.url().to_owned()])?;
    let directory = SessionDirectory::new(
        ferry_cluster::Redis::connect(&target).await?,
        Keys::new("ferry:"),
        "node-a",
        Duration::from_secs(180),
        LoginPolicy::All,
    );
    let sessions = items;
    let before = used_memory(&mut info).await?;
    let started = Instant::now();
    for i in 0..sessions {
        let (user, session) = (format!("user-{i:08}"), format!("{i:016x}"));
        directory
            .register(SessionRef {
                user: &user,
                device: "phone-0123456789",
                class: "phone",
                session: &session,
                login_ms: i,
            })
            .await
            .with_context(|| format!("registering session {i}"))?;
    }
    let bytes_per_session = per_item(before, used_memory(&mut info).await?, sessions);
    // The time is printed so a slow run is visible next to its figure.
    println!(
        "memory: registered {sessions} sessions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(MemoryRow {
        messages: items,
        body,
        bytes_per_message,
        sessions,
        bytes_per_session,
    })
}

fn direct(c: usize) -> String {
    format!("d:a{c}:b{c}")
}

fn per_item(before: u64, after: u64, items: u64) -> f64 {
    after.saturating_sub(before) as f64 / items.max(1) as f64
}

/// INFO memory's `used_memory` (bytes the allocator holds for data and overhead).
async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

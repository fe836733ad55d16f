//! The Redis store: cluster mode's shared state, on one Redis or a Redis Cluster.
//!
//! Layout:
//! - this file: [`RedisStore`] (open, the epochs) and the design below;
//! - `options`: [`RedisStoreOptions`] and the topology its URLs select;
//! - `conn`: the connection (single instance or cluster client);
//! - `keys`: the key layout;
//! - `scripts` + `lua/*.lua`: the Lua scripts, each one atomic step in one slot;
//! - `pipeline`: the append lanes (pipelined, ordered per conversation);
//! - `durability`: the `appendonly`/`appendfsync` check at open;
//! - `store`: the [`Store`](crate::Store) impl;
//! - `sync`: `changed_since`, derived from per-conversation stamps;
//! - `push`: push registrations, one hash per user;
//! - `revoke`: token revocation stamps, one hash per user.
//!
//! # Keys and atomicity
//! Every key of a conversation is tagged `{c:<id>}` (meta hash, message stream, members hash, delivery
//! cursors hash, dedupe records), so each script touches one Redis Cluster slot. A send is one `EVALSHA`
//! of `lua/append.lua` — dedupe lookup, `HINCRBY` of the head, `XADD` of the message at id `<seq>-0`,
//! sender's read cursor, dedupe record with a TTL of the dedupe window — one round trip, atomic, and
//! durable before the reply with `appendfsync always`. Membership changes are one script as well.
//!
//! # Epochs
//! A conversation's meta hash holds its epoch, drawn at random by the caller and stored only by the
//! script that creates the meta hash; scripts that need the conversation refuse when it is absent.
//! So the epoch changes exactly when Redis lost the conversation (FLUSHALL, a restart without AOF),
//! and a conversation created again starts a new epoch with an empty stream — seq never goes back
//! within an epoch. The store epoch lives the same way in `<prefix>{store}:meta` and is re-read by
//! every Sync.
//!
//! # Sync without a second slot
//! Per-user state is derived, never written by the send script: `<prefix>{u:<user>}:convs` is a set
//! of the user's conversations (a superset — added *before* the membership is created, so a crash in
//! between cannot hide a conversation; the members hash is the truth). Every change in a conversation
//! gets a *stamp*: the Redis node's clock in µs, forced above the conversation's previous stamp. The
//! meta hash keeps the stamp of the last message, each member record the stamp of that member's last
//! membership or read change.
//!
//! A sync token is a stamp. `changed_since(since)` reads each of the user's conversations with
//! `lua/state.lua`, which also returns the node's clock `now` at that read, and reports those whose
//! change stamp is above `since`, oldest first. The next token is the page's last stamp, but never
//! above `now - 1` of any conversation read: a change that lands after a conversation was read gets a
//! stamp above that read's `now` (the node's clock, and the per-conversation floor), hence above the
//! token — no crash or race between two keys can hide a change from a device. Equal stamps are never
//! split across pages. Tokens are plain Redis clock values, so they survive restarts of servers and of
//! Redis; a token above the clock of every conversation read, or issued before a store epoch change,
//! is treated as 0 (FERRY-SYNC-4). Limitation: a Redis node's clock stepping backwards by more than the
//! time between two syncs can delay (not lose) reporting until the conversation's next change.
//!
//! # Retention
//! `retention_max_messages` trims each conversation's stream to its newest N messages, and
//! `retention_max_age` drops the messages older than that age, both as part of the append (each stream
//! entry keeps its server time for the age rule; the append's server time is "now", so the rule
//! follows the servers' clock and tests inject it). The trim point is kept in the meta hash and raises
//! every membership's `first_seq`, which is how clients learn that older history is gone (never a
//! silent gap). Age trimming is lazy — a conversation nobody writes to keeps its (non-growing) history
//! — and bounded per append (`AGE_TRIM_BATCH`).

mod conn;
mod durability;
mod keys;
mod options;
mod pipeline;
mod push;
mod revoke;
mod scripts;
mod store;
mod sync;

use std::sync::atomic::{AtomicU64, Ordering};

pub use self::durability::Durability;
pub use self::options::RedisStoreOptions;

use self::conn::Conn;
use self::pipeline::Pipeliner;
use self::scripts::Scripts;
use crate::StoreError;

/// The Redis-backed [`Store`](crate::Store); see the module docs for the design.
///
/// Must be opened and used inside a tokio runtime (its append lanes are tokio tasks). Dropping it ends
/// the lanes once their queued appends are answered.
pub struct RedisStore {
    conn: Conn,
    pipeline: Pipeliner,
    scripts: Scripts,
    prefix: String,
    dedupe_window_ms: u64,
    /// Retention: newest messages kept (0 = unlimited) and their maximal age in ms (0 = unlimited).
    keep: u64,
    max_age_ms: u64,
    store_epoch: AtomicU64,
    durability: Durability,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("store_epoch", &self.store_epoch.load(Ordering::Relaxed))
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

fn backend(context: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {err}"))
}

/// A failed Redis call as a store error. What Redis says will pass by itself — still loading its
/// dataset after a restart (`LOADING`), a cluster failing over (`TRYAGAIN`, `CLUSTERDOWN`,
/// `MASTERDOWN`, `READONLY`), a dropped or refused connection, a timeout — is
/// [`StoreError::Unavailable`], which the server answers with a retry hint; the rest (a bad reply, a
/// script error) is [`StoreError::Backend`].
fn redis_failure(context: &str, err: redis::RedisError) -> StoreError {
    use redis::RetryMethod;
    let passes = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            redis::ErrorKind::Server(kind) if server_error_passes(kind)
        )
        || matches!(
            err.retry_method(),
            RetryMethod::ReconnectFromInitialConnections | RetryMethod::RefreshSlotsAndRetry
        );
    if passes {
        StoreError::Unavailable(format!("{context}: {err}"))
    } else {
        backend(context, err)
    }
}

/// Redis server errors that pass by themselves (see [`redis_failure`]).
fn server_error_passes(kind: redis::ServerErrorKind) -> bool {
    use redis::ServerErrorKind::*;
    matches!(
        kind,
        BusyLoading | TryAgain | ClusterDown | MasterDown | ReadOnly
    )
}

/// A fresh random epoch (non-zero, FERRY-MSG-6).
fn random_epoch() -> u64 {
    loop {
        let candidate: u64 = rand::random();
        if candidate != 0 {
            return candidate;
        }
    }
}

impl RedisStore {
    /// Connects, checks durability (a loud warning, or [`StoreError::Unavailable`] naming the settings
    /// when `require_durable` is set), reads or creates the store epoch and starts the append lanes.
    pub async fn open(options: RedisStoreOptions) -> Result<RedisStore, StoreError> {
        let topology = options::topology(&options)?;
        let mut conn = Conn::connect(&topology)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to redis: {e}")))?;
        let durability = durability::check(&mut conn).await?;
        if let Durability::NotDurable(found) = &durability {
            if options.require_durable {
                return Err(StoreError::Unavailable(format!(
                    "redis is not durable ({found}); require_durable refuses to start"
                )));
            }
            tracing::warn!(
                settings = %found,
                "REDIS IS NOT DURABLE: acknowledged messages can be lost on a crash; run every master \
                 with `appendonly yes` and `appendfsync always`"
            );
        }
        let mut append_conns = Vec::with_capacity(options.append_connections.max(1));
        for _ in 0..options.append_connections.max(1) {
            append_conns.push(
                Conn::connect(&topology).await.map_err(|e| {
                    StoreError::Unavailable(format!("cannot connect to redis: {e}"))
                })?,
            );
        }
        let pipeline = Pipeliner::start(&append_conns, options.max_pipeline);
        let store = RedisStore {
            conn,
            pipeline,
            scripts: Scripts::new(),
            prefix: options.key_prefix,
            dedupe_window_ms: options
                .dedupe_window
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            keep: options.retention_max_messages.unwrap_or(0),
            max_age_ms: options
                .retention_max_age
                .map_or(0, |age| age.as_millis().try_into().unwrap_or(u64::MAX)),
            store_epoch: AtomicU64::new(0),
            durability,
        };
        store.refresh_store_epoch().await?;
        Ok(store)
    }

    /// The retention argument of the scripts that append (`lua/common.lua`, `parse_retention`), with
    /// `now_ms` the server time of the message being appended.
    fn retention_arg(&self, now_ms: u64) -> String {
        format!("{}:{}:{now_ms}", self.keep, self.max_age_ms)
    }

    /// What the durability check at open found.
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    /// Reads the store epoch (creating it if Redis has none); returns true if it changed since the last
    /// read, i.e. Redis lost the store's state in between.
    async fn refresh_store_epoch(&self) -> Result<bool, StoreError> {
        let raw: String = self
            .scripts
            .store_epoch
            .key(keys::store_meta(&self.prefix))
            .arg(random_epoch())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_failure("store epoch", e))?;
        let epoch: u64 = raw
            .parse()
            .map_err(|_| StoreError::Backend(format!("bad store epoch {raw:?} in redis")))?;
        let before = self.store_epoch.swap(epoch, Ordering::Relaxed);
        Ok(before != 0 && before != epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error Redis answers with `reply` (one RESP error line).
    fn answered(reply: &str) -> redis::RedisError {
        redis::parse_redis_value(format!("-{reply}\r\n").as_bytes())
            .and_then(|value| value.extract_error())
            .expect_err("an error reply")
    }

    #[test]
    fn errors_that_pass_by_themselves_are_unavailable() {
        for reply in [
            "LOADING Redis is loading the dataset in memory",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down",
            "READONLY You can't write against a read only replica.",
        ] {
            let error = redis_failure("members", answered(reply));
            assert!(
                matches!(error, StoreError::Unavailable(_)),
                "{reply}: {error:?}"
            );
        }
        let dropped =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            redis_failure("members", dropped),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn other_errors_are_backend_failures() {
        for reply in [
            "ERR Error running script: bad argument",
            "NOSCRIPT No matching script",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ] {
            let error = redis_failure("members", answered(reply));
            assert!(
                matches!(error, StoreError::Backend(_)),
                "{reply}: {error:?}"
            );
        }
    }
}

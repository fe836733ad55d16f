//! The bus between nodes: Redis pub/sub with **one channel per user**.
//!
//! Channel layout (a choice between a per-node inbox and per-user channels): a node subscribes to the
//! channel of every user it has a session of, and whoever has something for a user publishes it on that
//! user's channel. The sender needs no session lookup on the hot path, subscription churn is one command
//! per login/logout, and on Redis Cluster the channel `{u:<user>}` is sharded pub/sub (`SPUBLISH` /
//! `SSUBSCRIBE`) on the same slot as the user's session hash, so the load spreads over the shards. A
//! per-node inbox would need the member → node lookup for every message (and a cache to invalidate).
//!
//! Pub/sub is at-most-once: a message lost while a node reconnects to Redis is healed by the client from
//! heartbeat heads + Pull (FERRY-HB-*), never lost — the store holds it. Nodes ignore their own
//! publications (they delivered locally already).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message as _;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::keys::Keys;
use crate::redis::{PushDropped, PushHandler, Redis, RedisTarget};
use crate::ClusterError;

/// What travels between nodes, addressed to one user.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Node that published it (receivers skip their own).
    #[prost(string, tag = "1")]
    pub origin: String,
    /// The user it is for.
    #[prost(string, tag = "2")]
    pub user: String,
    /// What to do.
    #[prost(oneof = "BusEvent", tags = "3, 4, 5, 6")]
    pub event: Option<BusEvent>,
}

/// The events of the bus.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum BusEvent {
    /// A stored message for the user's devices.
    #[prost(message, tag = "3")]
    Deliver(Deliver),
    /// Close a session the login policy replaced.
    #[prost(message, tag = "4")]
    Kick(Kick),
    /// A typing/presence datagram to relay to the user's devices.
    #[prost(message, tag = "5")]
    Datagram(Datagram),
    /// The user's tokens were revoked: close the sessions of the device (of every device when
    /// `device` is empty) with TOKEN_REVOKED.
    #[prost(message, tag = "6")]
    Revoke(Revoke),
}

/// Close the sessions of a device whose tokens were revoked (the stamp is already in the store).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Revoke {
    /// Device id; empty for every device of the user.
    #[prost(string, tag = "1")]
    pub device: String,
}

/// A stored message to deliver.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Deliver {
    /// Conversation id.
    #[prost(string, tag = "1")]
    pub conversation: String,
    /// Conversation epoch.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// The message, protobuf-encoded (`ferry.v1.Message`). The sending session never needs excluding
    /// here: it lives on the origin node, which skips its own publications.
    #[prost(bytes = "bytes", tag = "3")]
    pub message: Bytes,
}

/// Close the session `session` of `device` with SESSION_REPLACED.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Kick {
    /// Device id.
    #[prost(string, tag = "1")]
    pub device: String,
    /// Session id on the receiving node.
    #[prost(string, tag = "2")]
    pub session: String,
}

/// An encoded datagram frame to relay.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Datagram {
    /// The encoded frame, as the sender's node relays it.
    #[prost(bytes = "bytes", tag = "1")]
    pub frame: Bytes,
}

/// Counters of the bus (exported as metrics).
#[derive(Debug, Default)]
pub struct BusStats {
    /// Envelopes received and queued.
    pub received: std::sync::atomic::AtomicU64,
    /// Envelopes dropped because the receive queue was full or they did not decode.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Publications dropped because the publish queue was full or Redis refused them.
    pub publish_dropped: std::sync::atomic::AtomicU64,
}

/// Publications waiting for the publisher task. Queued, not awaited, so that a send's acknowledgement
/// never waits for a Redis round trip of its fan-out.
const PUBLISH_QUEUE: usize = 16 * 1024;
/// Most queued publications sent in one pipeline.
const PUBLISH_BATCH: usize = 256;

/// Locks ordering the (un)subscribe commands of users (bounded; no map to clean up).
const CHANGE_STRIPES: usize = 64;

/// One publication: an event for each of several users.
type Publication = (Vec<String>, BusEvent);

/// Writes publications to Redis.
struct Publisher {
    node: String,
    keys: Keys,
    redis: Redis,
}

/// A node's connection to the bus.
pub struct Bus {
    keys: Keys,
    publisher: Arc<Publisher>,
    outgoing: mpsc::Sender<Publication>,
    subscriber: Redis,
    /// Users subscribed to, with how many local sessions each has.
    subscribed: Mutex<HashMap<String, usize>>,
    /// Serializes the (un)subscribe commands of one user so a count and its subscription cannot get out
    /// of step. Striped by user: a reconnect storm's logins (a hundred users at once) subscribe in
    /// parallel, pipelined on the one connection, instead of one Redis round trip after another.
    changes: [tokio::sync::Mutex<()>; CHANGE_STRIPES],
    stats: Arc<BusStats>,
}

impl Bus {
    /// Connects `node` to the bus; received envelopes (from other nodes) arrive on the returned
    /// receiver, which holds at most `capacity` (more are dropped and counted).
    pub async fn connect(
        target: &RedisTarget,
        keys: Keys,
        node: &str,
        capacity: usize,
    ) -> Result<(Bus, mpsc::Receiver<Envelope>), ClusterError> {
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(BusStats::default());
        let handler: PushHandler = {
            let (node, stats) = (node.to_owned(), stats.clone());
            Arc::new(move |info: PushInfo| {
                on_push(&node, &tx, &stats, info);
                Ok::<(), PushDropped>(())
            })
        };
        let subscriber = Redis::connect_with_push(target, Some(handler)).await?;
        let publisher = Arc::new(Publisher {
            node: node.to_owned(),
            keys: keys.clone(),
            redis: Redis::connect(target).await?,
        });
        let (outgoing, queued) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publish_loop(publisher.clone(), queued, stats.clone()));
        Ok((
            Bus {
                keys,
                publisher,
                outgoing,
                subscriber,
                subscribed: Mutex::new(HashMap::new()),
                changes: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
                stats,
            },
            rx,
        ))
    }

    /// The bus counters.
    pub fn stats(&self) -> Arc<BusStats> {
        self.stats.clone()
    }

    /// Starts listening for `user` (a session of theirs opened here); counted, so several devices of one
    /// user share one subscription.
    pub async fn subscribe(&self, user: &str) -> Result<(), ClusterError> {
        let _serial = self.change_lock(user).await;
        let first = {
            let mut subscribed = self.subscribed.lock().expect("bus lock");
            let count = subscribed.entry(user.to_owned()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            let channel = self.keys.user_channel(user);
            let mut sub = self.subscriber.clone();
            let result = match &mut sub {
                Redis::Single(c) => c.subscribe(&channel).await,
                Redis::Cluster(c) => c.ssubscribe(&channel).await,
            };
            if let Err(e) = result {
                self.forget(user);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Stops listening for `user` once their last local session is gone.
    pub async fn unsubscribe(&self, user: &str) -> Result<(), ClusterError> {
        let _serial = self.change_lock(user).await;
        if self.forget(user) {
            let channel = self.keys.user_channel(user);
            let mut sub = self.subscriber.clone();
            match &mut sub {
                Redis::Single(c) => c.unsubscribe(&channel).await?,
                Redis::Cluster(c) => c.sunsubscribe(&channel).await?,
            }
        }
        Ok(())
    }

    /// The lock ordering `user`'s subscription changes.
    async fn change_lock(&self, user: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut hasher);
        self.changes[hasher.finish() as usize % CHANGE_STRIPES]
            .lock()
            .await
    }

    /// Lowers the user's count; true when it reached zero.
    fn forget(&self, user: &str) -> bool {
        let mut subscribed = self.subscribed.lock().expect("bus lock");
        match subscribed.get_mut(user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                subscribed.remove(user);
                true
            }
            None => false,
        }
    }

    /// Users with a subscription here.
    pub fn subscribed_users(&self) -> Vec<String> {
        let subscribed = self.subscribed.lock().expect("bus lock");
        subscribed.keys().cloned().collect()
    }

    /// Publishes `event` to each of `users` and waits until Redis took it.
    pub async fn publish(&self, users: &[&str], event: BusEvent) -> Result<(), ClusterError> {
        let users = users.iter().map(|u| u.to_string()).collect();
        self.publisher.publish(&[(users, event)]).await
    }

    /// Queues `event` for each of `users` without waiting (the send path's fan-out). A full queue drops
    /// it, counted in [`BusStats::publish_dropped`]: the messages are durable, and the recipients catch
    /// up through heartbeat heads and Pull.
    pub fn enqueue(&self, users: &[&str], event: BusEvent) {
        let users = users.iter().map(|u| u.to_string()).collect();
        if self.outgoing.try_send((users, event)).is_err() {
            self.stats
                .publish_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Publishes queued publications, as many as have gathered (up to [`PUBLISH_BATCH`]) per round trip,
/// until the bus is dropped.
async fn publish_loop(
    publisher: Arc<Publisher>,
    mut queued: mpsc::Receiver<Publication>,
    stats: Arc<BusStats>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queued.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        if let Err(e) = publisher.publish(&batch).await {
            warn!(error = %e, publications = batch.len(), "bus publications lost; heads + Pull heal them");
            stats
                .publish_dropped
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        batch.clear();
    }
}

impl Publisher {
    /// Publishes every event to each of its users: one pipelined round trip on a single Redis; on a
    /// cluster, where a pipeline must stay in one slot, one `SPUBLISH` per user, all in flight at once.
    async fn publish(&self, batch: &[Publication]) -> Result<(), ClusterError> {
        let messages = batch.iter().flat_map(|(users, event)| {
            users.iter().map(move |user| {
                let envelope = Envelope {
                    origin: self.node.clone(),
                    user: user.clone(),
                    event: Some(event.clone()),
                };
                (self.keys.user_channel(user), envelope.encode_to_vec())
            })
        });
        match &self.redis {
            Redis::Single(conn) => {
                let mut pipe = redis::pipe();
                for (channel, payload) in messages {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                }
                if !pipe.is_empty() {
                    let _: () = pipe.query_async(&mut conn.clone()).await?;
                }
            }
            Redis::Cluster(conn) => {
                let mut publishes = tokio::task::JoinSet::new();
                for (channel, payload) in messages {
                    let mut cmd = redis::cmd("SPUBLISH");
                    cmd.arg(channel).arg(payload);
                    let mut conn = conn.clone();
                    publishes.spawn(async move { cmd.query_async::<i64>(&mut conn).await });
                }
                while let Some(done) = publishes.join_next().await {
                    done.map_err(|e| ClusterError::Protocol(format!("publish task: {e}")))??;
                }
            }
        }
        Ok(())
    }
}

/// Decodes one push message and queues it, unless it is our own or the queue is full.
fn on_push(node: &str, tx: &mpsc::Sender<Envelope>, stats: &BusStats, info: PushInfo) {
    use std::sync::atomic::Ordering::Relaxed;
    if !matches!(info.kind, PushKind::Message | PushKind::SMessage) {
        return; // subscription confirmations, disconnections
    }
    let Some(Value::BulkString(payload)) = info.data.get(1) else {
        stats.dropped.fetch_add(1, Relaxed);
        return;
    };
    match Envelope::decode(payload.as_slice()) {
        Ok(envelope) if envelope.origin == node => {}
        Ok(envelope) => {
            if tx.try_send(envelope).is_ok() {
                stats.received.fetch_add(1, Relaxed);
            } else {
                stats.dropped.fetch_add(1, Relaxed);
            }
        }
        Err(e) => {
            debug!(error = %e, "undecodable bus message");
            stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

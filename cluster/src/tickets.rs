//! TLS session tickets shared by the nodes of a cluster, so that a client whose node died resumes on
//! another node **with 0-RTT** instead of a full handshake plus a refused early flight.
//!
//! Why the nodes share ticket *state* and not a ticket *key*: rustls accepts early data only with
//! stateful resumption (`early_data_configured = max_early_data_size > 0 && !ticketer.enabled()` in
//! rustls' `server/tls13.rs`), after RFC 8446 §8.1: a stateful ticket is used once, which stops a replay
//! of the same early data. A stateless ticket sealed with a key every node shares (`ProducesTickets`)
//! would resume anywhere, but never with 0-RTT. So every ticket a node issues (rustls `put`: a random
//! 32-byte id → the session's secrets) is sealed with a key every node derives from the cluster's shared
//! secret ([`TicketKey`]) and published on one Redis channel; every node keeps the tickets of the whole
//! cluster in a bounded local cache ([`SharedTickets`]), so a handshake never waits on Redis. A ticket
//! used (rustls `take`) on one node is published as used and the others drop it.
//!
//! What this does not promise:
//! - single use is cluster-wide only as fast as pub/sub travels: a ticket replayed on two nodes within
//!   that window resumes twice. ferry/1 allows only idempotent frames in early data and servers treat
//!   replays as duplicates (DESIGN "0-RTT"), so a replay changes nothing;
//! - pub/sub is at-most-once: a ticket that never reached a node (Redis away, queue full, node started
//!   later) costs its client a full handshake there, nothing worse.
//!
//! Without [`replicate`] the store is exactly rustls' own bounded memory cache: one node behaves as before.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};

use prost::Message as _;
use redis::{PushInfo, PushKind, Value};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use tokio::sync::mpsc;
use tracing::warn;

use crate::keys::Keys;
use crate::redis::{PushDropped, PushHandler, Redis, RedisTarget};
use crate::ClusterError;

/// Ticket changes waiting for the publisher. A reconnect storm issues two tickets per handshake; a full
/// queue drops (and counts) the change rather than slowing a handshake.
const PUBLISH_QUEUE: usize = 8 * 1024;
/// Most ticket changes sent in one pipelined round trip.
const PUBLISH_BATCH: usize = 256;

/// One ticket change as it travels between nodes (sealed, see [`TicketKey`]).
#[derive(Clone, PartialEq, prost::Message)]
struct TicketChange {
    /// Node that published it (receivers skip their own).
    #[prost(string, tag = "1")]
    origin: String,
    /// The ticket id rustls handed to the client.
    #[prost(bytes = "vec", tag = "2")]
    id: Vec<u8>,
    /// The session rustls stored under the id; empty when the ticket was used and must be dropped.
    #[prost(bytes = "vec", tag = "3")]
    session: Vec<u8>,
}

/// The key that seals tickets on the bus: ChaCha20-Poly1305, derived with HKDF-SHA256 from a secret
/// every node of the cluster holds. Sessions carry resumption secrets, which let their holder resume
/// a client's connection; Redis (and whoever reads its channels) must not see them.
pub struct TicketKey(LessSafeKey);

impl TicketKey {
    /// Derives the key from `secret` (the same bytes on every node give the same key).
    pub fn derive(secret: &[u8]) -> TicketKey {
        let salt =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"ferry/1 cluster session tickets");
        let prk = salt.extract(secret);
        let okm = prk
            .expand(&[b"chacha20-poly1305"], &CHACHA20_POLY1305)
            .expect("a 32-byte key is a valid HKDF-SHA256 output length");
        TicketKey(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// `nonce ‖ ciphertext ‖ tag`, under a fresh random nonce (96 random bits: no reuse in practice at
    /// a few tickets per connection).
    fn seal(&self, mut plain: Vec<u8>) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut plain,
            )
            .expect("a ticket is far below ChaCha20-Poly1305's message limit");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&plain);
        sealed
    }

    /// The plain text, or `None` for anything not sealed with this key.
    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self.0.open_in_place(nonce, Aad::empty(), &mut body).ok()?;
        Some(plain.to_vec())
    }
}

/// Counters of ticket sharing (for tests and metrics).
#[derive(Debug, Default)]
pub struct TicketStats {
    /// Changes of this node queued for the other nodes.
    pub published: AtomicU64,
    /// Changes of other nodes applied here.
    pub applied: AtomicU64,
    /// Changes lost: queue full, Redis refused, or a message that did not open or decode.
    pub dropped: AtomicU64,
}

/// The server's TLS session store: rustls' bounded memory cache, whose changes are shared with the
/// other nodes once [`replicate`] has connected it.
pub struct SharedTickets {
    local: Arc<ServerSessionMemoryCache>,
    outgoing: OnceLock<mpsc::Sender<TicketChange>>,
    node: OnceLock<String>,
    stats: TicketStats,
}

impl std::fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTickets")
            .field("shared", &self.outgoing.get().is_some())
            .finish()
    }
}

impl SharedTickets {
    /// A store of at most `capacity` sessions (this node's and, once shared, the other nodes').
    pub fn new(capacity: usize) -> Arc<SharedTickets> {
        Arc::new(SharedTickets {
            local: ServerSessionMemoryCache::new(capacity),
            outgoing: OnceLock::new(),
            node: OnceLock::new(),
            stats: TicketStats::default(),
        })
    }

    /// The sharing counters.
    pub fn stats(&self) -> &TicketStats {
        &self.stats
    }

    /// Queues a change for the other nodes (nothing to do before [`replicate`]).
    fn share(&self, id: Vec<u8>, session: Vec<u8>) {
        let (Some(outgoing), Some(node)) = (self.outgoing.get(), self.node.get()) else {
            return;
        };
        let change = TicketChange {
            origin: node.clone(),
            id,
            session,
        };
        let counter = match outgoing.try_send(change) {
            Ok(()) => &self.stats.published,
            Err(_) => &self.stats.dropped,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Applies another node's change locally (never shared again).
    fn apply(&self, change: TicketChange) {
        if change.session.is_empty() {
            self.local.take(&change.id);
        } else {
            self.local.put(change.id, change.session);
        }
        self.stats.applied.fetch_add(1, Relaxed);
    }
}

impl StoresServerSessions for SharedTickets {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let stored = self.local.put(key.clone(), value.clone());
        if stored {
            self.share(key, value);
        }
        stored
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.local.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let session = self.local.take(key)?;
        // Used once here: the other nodes must not resume it again.
        self.share(key.to_vec(), Vec::new());
        Some(session)
    }

    fn can_cache(&self) -> bool {
        self.local.can_cache()
    }
}

/// Shares `tickets` with the other nodes of the cluster on `target` as node `node`: subscribes to the
/// tickets channel (applying other nodes' changes) and starts the task that publishes this node's. The
/// task and the subscription end when the store is dropped. Calling it twice is an error.
pub async fn replicate(
    tickets: &Arc<SharedTickets>,
    target: &RedisTarget,
    keys: &Keys,
    node: &str,
    key: TicketKey,
) -> Result<(), ClusterError> {
    let key = Arc::new(key);
    let channel = keys.tickets_channel();
    let handler: PushHandler = {
        let (weak, node, key) = (Arc::downgrade(tickets), node.to_owned(), key.clone());
        Arc::new(move |info: PushInfo| {
            on_push(&weak, &node, &key, info);
            Ok::<(), PushDropped>(())
        })
    };
    let subscriber = Redis::connect_with_push(target, Some(handler)).await?;
    let mut sub = subscriber.clone();
    match &mut sub {
        Redis::Single(c) => c.subscribe(&channel).await?,
        Redis::Cluster(c) => c.ssubscribe(&channel).await?,
    }
    let publisher = Redis::connect(target).await?;
    let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
    tickets
        .node
        .set(node.to_owned())
        .map_err(|_| ClusterError::Config("session tickets are already shared".into()))?;
    tickets
        .outgoing
        .set(tx)
        .map_err(|_| ClusterError::Config("session tickets are already shared".into()))?;
    let weak = Arc::downgrade(tickets);
    tokio::spawn(publish_loop(publisher, subscriber, channel, key, rx, weak));
    Ok(())
}

/// Publishes this node's changes, as many as have gathered per round trip, until the store is dropped
/// (its sender with it). Holds the subscriber connection so the subscription lives as long.
async fn publish_loop(
    publisher: Redis,
    _subscriber: Redis,
    channel: String,
    key: Arc<TicketKey>,
    mut queued: mpsc::Receiver<TicketChange>,
    tickets: Weak<SharedTickets>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queued.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let sealed = batch.drain(..).map(|c| key.seal(c.encode_to_vec()));
        let result = match &publisher {
            Redis::Single(conn) => {
                let mut pipe = redis::pipe();
                for payload in sealed {
                    pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
                }
                pipe.query_async::<()>(&mut conn.clone()).await
            }
            // One channel, so one slot: the pipeline stays on one shard.
            Redis::Cluster(conn) => {
                let mut pipe = redis::pipe();
                for payload in sealed {
                    pipe.cmd("SPUBLISH").arg(&channel).arg(payload).ignore();
                }
                pipe.query_async::<()>(&mut conn.clone()).await
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "session tickets not shared; their clients resume with a full handshake");
            if let Some(tickets) = tickets.upgrade() {
                tickets.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Opens, decodes and applies one pushed change, unless it is this node's own.
fn on_push(tickets: &Weak<SharedTickets>, node: &str, key: &TicketKey, info: PushInfo) {
    if !matches!(info.kind, PushKind::Message | PushKind::SMessage) {
        return; // subscription confirmations, disconnections
    }
    let Some(tickets) = tickets.upgrade() else {
        return;
    };
    let change = match info.data.get(1) {
        Some(Value::BulkString(sealed)) => key
            .open(sealed)
            .and_then(|plain| TicketChange::decode(plain.as_slice()).ok()),
        _ => None,
    };
    match change {
        Some(change) if change.origin == node => {}
        Some(change) => tickets.apply(change),
        None => {
            tickets.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_changes_open_only_with_the_same_secret() {
        let key = TicketKey::derive(b"cluster secret");
        let same = TicketKey::derive(b"cluster secret");
        let other = TicketKey::derive(b"another cluster");
        let sealed = key.seal(b"session".to_vec());
        assert_ne!(&sealed[NONCE_LEN..NONCE_LEN + 7], b"session");
        assert_eq!(same.open(&sealed).as_deref(), Some(&b"session"[..]));
        assert_eq!(other.open(&sealed), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(&tampered), None);
        assert_eq!(key.open(&sealed[..4]), None);
    }

    #[test]
    fn an_unshared_store_is_a_single_use_cache() {
        let store = SharedTickets::new(16);
        assert!(store.put(b"id".to_vec(), b"session".to_vec()));
        assert_eq!(store.get(b"id").as_deref(), Some(&b"session"[..]));
        assert_eq!(store.take(b"id").as_deref(), Some(&b"session"[..]));
        assert_eq!(store.take(b"id"), None);
        assert_eq!(store.stats().published.load(Relaxed), 0);
    }

    #[test]
    fn other_nodes_changes_add_and_remove_tickets() {
        let store = SharedTickets::new(16);
        store.apply(TicketChange {
            origin: "n2".into(),
            id: b"t".to_vec(),
            session: b"s".to_vec(),
        });
        assert_eq!(store.get(b"t").as_deref(), Some(&b"s"[..]));
        store.apply(TicketChange {
            origin: "n2".into(),
            id: b"t".to_vec(),
            session: Vec::new(),
        });
        assert_eq!(store.take(b"t"), None);
        assert_eq!(store.stats().applied.load(Relaxed), 2);
    }
}

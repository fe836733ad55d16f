//! # ferry-cluster
//!
//! What the nodes of a Ferry cluster share through Redis, beside the messages themselves (those live in
//! `ferry-store`'s Redis store): who is online where, which nodes are alive, and a bus to reach the
//! sessions on other nodes. It runs unchanged on one Redis and on a Redis Cluster: every script touches
//! one hash-tagged key ([`keys`]).
//!
//! Layout:
//! - [`redis`]: one connection type for a single instance or a cluster ([`RedisTarget`], [`Redis`]);
//! - [`keys`]: key and channel names, hash-tagged per user and per node;
//! - [`policy`]: login policies ([`LoginPolicy`]) — the rule the directory's scripts apply across nodes;
//! - [`directory`]: the session directory (user → device → node), one Lua script per change;
//! - [`registry`]: node leases, the start-up probe and conflict check, releasing dead nodes;
//! - [`health`]: the failure detector as pure state (probe outcomes in, verdicts out);
//! - [`probe`]: `GET /healthz` of a node, with a short timeout;
//! - [`bus`]: per-user pub/sub channels carrying Delivers, kicks and datagrams between nodes;
//! - [`tickets`]: TLS session tickets shared by every node, so a client resumes with 0-RTT on any node.
#![warn(missing_docs)]

pub mod bus;
pub mod directory;
pub mod health;
pub mod keys;
pub mod policy;
pub mod probe;
pub mod redis;
pub mod registry;
pub mod tickets;

pub use bus::{Bus, BusEvent, Envelope};
pub use directory::{Refresh, SessionDirectory, SessionEntry, SessionRef};
pub use health::{HealthConfig, PeerHealth, Verdict};
pub use keys::Keys;
pub use policy::{replaces, LoginPolicy};
pub use probe::Prober;
pub use redis::{Redis, RedisTarget};
pub use registry::{Claimed, NodeInfo, NodeRegistry, Renewal};
pub use tickets::{SharedTickets, TicketKey};

/// Failures of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis could not be reached or refused a command (retryable: nothing changed, or the change is
    /// idempotent).
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A live node already runs with this id: the new one must not start.
    #[error("node id {id:?} is already in use by a live node at quic={quic} http={http}")]
    NodeConflict {
        /// The contested node id.
        id: String,
        /// The live node's QUIC address.
        quic: String,
        /// The live node's HTTP address.
        http: String,
    },
    /// Bad configuration (e.g. a malformed Redis URL).
    #[error("cluster configuration: {0}")]
    Config(String),
    /// A session of the same device (or one the login policy lets win) logged in later than the one
    /// being registered: the older login must close (SESSION_REPLACED), not evict the newer one.
    #[error("a later login of this device holds its place")]
    Superseded,
    /// Redis answered something the scripts never return.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

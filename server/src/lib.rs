//! # ferry-server
//!
//! The Ferry messaging server: ferry/1 over QUIC (quinn + rustls) on a durable store. Start one with
//! `ferry-server run` (see the README), or embed it with [`start`].
//!
//! Layout — one file per concern, the request path from top to bottom:
//! - [`server`]: start-up (data dir, TLS, secret, store, endpoints), the accept loop with a connection
//!   cap, graceful drain on shutdown;
//! - [`connection`]: one connection — Hello/Welcome handshake, then its concurrent duties;
//! - [`control`]: the control stream — heartbeats, sync, read cursors, group administration;
//! - [`conversation`]: conversation streams — pipelined Send → SendAck, Deliver → Ack, Pull;
//! - [`fanout`]: queueing Delivers to every online device of a conversation's members;
//! - [`datagrams`]: typing and presence relay;
//! - [`sessions`]: the online-session registry and login policies;
//! - [`cluster`]: cluster mode — sessions, deliveries and datagrams across nodes, node liveness;
//! - [`rate`]: token buckets; [`errors`]: mapping failures onto wire codes;
//! - [`auth`]: signed tokens; [`tls`]: certificates and the QUIC server config; [`config`]: settings from
//!   defaults, TOML, `FERRY_*` variables and flags; [`metrics`] and [`http`]: `/metrics`, `/healthz`.
//!
//! Frames move over QUIC streams through `ferry-quic` (the one frame reader and batching writer every
//! role uses); frame helpers come from [`ferry_protocol::frames`]. Storage is behind
//! [`ferry_store::Store`]; the server never touches a table directly.
#![warn(missing_docs)]

use std::sync::Arc;

use ferry_protocol::frame::Limits;
use ferry_store::Store;

pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod control;
pub mod conversation;
pub mod datagrams;
pub mod errors;
pub mod fanout;
#[cfg(feature = "test-hooks")]
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod rate;
pub mod server;
pub mod sessions;
pub mod tls;

pub use config::Settings;
pub use server::{start, ServerHandle};

/// Server-wide state shared by every connection.
pub struct Shared {
    /// Effective settings.
    pub settings: Settings,
    /// The limits announced in Welcome (derived from `settings`).
    pub limits: Limits,
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// Online sessions.
    pub sessions: sessions::Sessions,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Token verification key.
    pub secret: auth::TokenSecret,
    /// Per-user send rate.
    pub send_rate: rate::UserRateLimiter,
    /// This node's part in a cluster (`--redis`); `None` for a single node.
    pub cluster: Option<Arc<cluster::ClusterNode>>,
    /// Set when the server starts draining; `/healthz` then reports unavailable.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// Test fault hooks.
    #[cfg(feature = "test-hooks")]
    pub hooks: hooks::Hooks,
}

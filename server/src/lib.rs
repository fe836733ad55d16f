//! # ferry-server
//!
//! The Ferry messaging server: ferry/1 over QUIC (quinn + rustls) on a durable store. Start one with
//! `ferry-server run` (see the README), or embed it with [`start`].
//!
//! The API is small: [`start`] with [`Settings`] gives a [`ServerHandle`]; [`auth`] mints and loads
//! tokens, [`tls`] makes and loads certificates, [`config`] holds the settings' parts, and
//! [`server::SECRET_FILE`] names the token secret in the data dir. Everything else is internal.
//!
//! Layout — one file per concern, the request path from top to bottom:
//! - `server`: start-up (data dir, TLS, secret, store, endpoints), the accept loop with a connection
//!   cap, graceful drain on shutdown;
//! - `connection`: one connection — Hello/Welcome handshake, then its concurrent duties;
//! - `control`: the control stream — heartbeats, sync, read cursors, group administration;
//! - `conversation/`: conversation streams — `stream` (accept, authorize Open, the serve loop),
//!   `send` (pipelined Send → SendAck), `pull` (Pull paging), `delivery` (fan-out to every online
//!   device, Deliver → Ack);
//! - `datagrams`: typing and presence relay;
//! - `fuzzing` (feature `fuzzing` only): conversation streams over memory for `fuzz/`'s
//!   `server_script` target;
//! - `push/`: offline push — registrations on the control stream, the notifier that POSTs to device
//!   endpoints or a push gateway for devices with no session;
//! - `sessions`: the online-session registry and login policies;
//! - `cluster`: cluster mode — sessions, deliveries and datagrams across nodes, node liveness;
//! - `rate`: token buckets; `errors`: refusals and the mapping of failures onto wire codes;
//! - `auth`: signed tokens; [`revoke`]: token revocation (the stamp in the store, closing live sessions
//!   here and on other nodes, the admin secret and `POST /admin/revoke`); `tls`: certificates and the QUIC server config; `config`: settings from
//!   defaults, TOML, `FERRY_*` variables and flags; `metrics` and `http`: `/metrics`, `/healthz`.
//!
//! Frames move over QUIC streams through `ferry-quic` (the one frame reader and batching writer every
//! role uses); frame helpers come from [`ferry_protocol::frames`]. Storage is behind
//! [`ferry_store::Store`]; the server never touches a table directly.
#![warn(missing_docs)]
#![warn(unreachable_pub)]

use std::sync::Arc;

use ferry_protocol::frame::Limits;
use ferry_store::Store;

mod admission;
pub mod auth;
mod cluster;
pub mod config;
mod connection;
mod control;
mod conversation;
mod datagrams;
mod errors;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(feature = "test-hooks")]
mod hooks;
mod http;
mod limits;
mod metrics;
mod push;
mod rate;
pub mod revoke;
pub mod server;
mod sessions;
pub mod tls;

pub use config::Settings;
#[cfg(feature = "test-hooks")]
pub use hooks::{DropDelivery, HeldLogin, Hooks};
pub use metrics::Metrics;
pub use server::{start, ServerHandle};

/// Server-wide state shared by every connection.
pub(crate) struct Shared {
    /// Effective settings.
    pub(crate) settings: Settings,
    /// The limits announced in Welcome (derived from `settings`).
    pub(crate) limits: Limits,
    /// The durable store.
    pub(crate) store: Arc<dyn Store>,
    /// Online sessions.
    pub(crate) sessions: sessions::Sessions,
    /// Counters and histograms for `/metrics`.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Token verification key.
    pub(crate) secret: auth::TokenSecret,
    /// Token revocation: the admin secret and the generation logins check against.
    pub(crate) revocations: revoke::Revocations,
    /// Per-user send rate.
    pub(crate) send_rate: rate::UserRateLimiter,
    /// This node's part in a cluster (`--redis`); `None` for a single node.
    pub(crate) cluster: Option<Arc<cluster::ClusterNode>>,
    /// Offline push (`[push]`); `None` when it is off.
    pub(crate) push: Option<push::Push>,
    /// Set when the server starts draining; `/healthz` then reports unavailable.
    pub(crate) draining: tokio::sync::watch::Sender<bool>,
    /// Test fault hooks.
    #[cfg(feature = "test-hooks")]
    pub(crate) hooks: hooks::Hooks,
}

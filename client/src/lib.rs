//! # ferry-client
//!
//! The Ferry client: turns the at-least-once `ferry/1` wire into exactly-once, in-order delivery, keeps
//! an outbox so no acknowledged-to-the-app send is ever lost, and rides through reconnects, server
//! restarts, network changes and 0-RTT rejections on its own.
//!
//! ```no_run
//! use ferry_client::{ClientBuilder, Event};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = ClientBuilder::new()
//!     .endpoint("127.0.0.1:7700")
//!     .ca_file("ca.pem")
//!     .token("v1.payload.mac")
//!     .device_id("laptop")
//!     .store_path("alice-laptop.sqlite3")
//!     .build()
//!     .await?;
//!
//! // Sends are pipelined: queue many, then await the receipts.
//! let receipt = client.send("d:alice:bob", "hello bob").await?;
//! let stored = receipt.await?;
//! println!("stored as seq {}", stored.seq);
//!
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(m) = event {
//!         println!("{} #{} {}: {}", m.conversation, m.seq, m.sender, m.text());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## How it works
//!
//! - **Send path**: [`Client::send`] writes the message to the store's outbox (SQLite, `synchronous=FULL`)
//!   *before* anything touches the network, then hands it to the driver task. The driver pipelines Sends
//!   (up to the server's `max_inflight_sends`), batching all frames of a wake-up into one write per
//!   stream. On `SendAck`, one transaction stores the message locally and deletes the outbox entry; then
//!   the [`Receipt`] resolves. Retryable errors, timeouts, lost streams and reconnects resend with the
//!   same `client_msg_id` (the server deduplicates); final rejections hand the message back in
//!   [`SendError::Rejected`].
//! - **Receive path**: per conversation a [`ferry_protocol::ReceiveWindow`] restored from the store.
//!   Deliver/PullResult go through it; ready messages are stored in one transaction, then reported as
//!   [`Event::Message`] exactly once, in order, then acknowledged ([`AckMode::Auto`]) — or acknowledged
//!   when the application calls [`Client::ack`] ([`AckMode::Manual`]; unacked messages are reported again
//!   after a restart). Gaps and heads from heartbeats trigger Pulls.
//! - **Reconnect**: exponential backoff with full jitter over the endpoints in rotation (GoAway's
//!   endpoints first); every reconnect runs Sync → Pull → resend. The second connection to a server in
//!   the same client (or a client built with the same [`SessionCache`]) uses 0-RTT; if the server rejects
//!   early data, the session is replayed over 1-RTT.
//!   `SESSION_REPLACED` stops the client without reconnecting.
//!
//! ## Layout
//!
//! Pure state machines (no I/O; time passed in as `now`), unit-tested without sockets:
//! - `core`: the session logic in the style of `quinn-proto`'s `connection/` — inputs (frames,
//!   requests, `handle_timeout(now)`, connection events), outputs (`poll_transmit`, `poll_commit`,
//!   `poll_event`, `poll_timeout`). By concern: `core/session.rs` (connection life cycle, 0-RTT,
//!   heartbeats, reconnect), `core/control.rs` (control stream), `core/conversations.rs` (conversation
//!   streams, the transmit pass), `core/requests.rs` (application requests), `core/history.rs`
//!   (history pages: store first, then pipelined Pulls), `core/tests/` (each rule driven with a fake
//!   clock);
//! - [`outbox`]: in-flight tracking, retry deadlines and ack timeouts of queued sends;
//! - [`inbox`]: receive windows of all conversations, epochs, due Acks; `inbox/pulls.rs` matches
//!   PullResults to Pulls and keeps several catch-up pages in flight;
//! - [`heartbeat`]: heartbeat schedule and dead-connection detection;
//! - [`backoff`]: reconnect delays with full jitter and an injected random source.
//!
//! I/O and plumbing: `driver` (the task: select loop, the core's store work on the blocking thread),
//! `link` (endpoint, connection and stream writers; performs the core's transmits), `conn` (dialling,
//! stream reader/writer tasks on `ferry-quic`'s frame reader and writer), `enqueue` (group commit of
//! outbox writes on a dedicated thread), [`tls`] (`ferry-quic`'s client configuration: TLS 1.3, ALPN,
//! 0-RTT), [`store`] + [`sqlite`] (durable state),
//! [`builder`], [`client`], [`event`], [`message`], [`error`], [`token`].
//!
//! ## Decisions
//!
//! - Messages sent by *this* device are not reported as [`Event::Message`] (the receipt covers them),
//!   but they are stored and fill the receive window.
//! - System messages are reported as [`Event::Message`] followed by [`Event::Membership`].
//! - On an epoch change the conversation restarts as if it had no local history (the last
//!   `recent_window` messages of the new epoch); old-epoch messages stay in the store under their epoch.
//! - [`Client::send_direct`] needs the own user id, learnt from the first Welcome and kept in the store.
#![warn(missing_docs)]

pub mod backoff;
pub mod builder;
pub mod client;
mod conn;
mod core;
mod driver;
mod enqueue;
pub mod error;
pub mod event;
/// The sans-IO core behind a small harness, for the `client_core` fuzz target (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod heartbeat;
pub mod inbox;
mod link;
pub mod message;
pub mod outbox;
pub mod push;
pub mod sqlite;
pub mod store;
pub mod tls;
pub mod token;

/// The command-line tool's implementation (used by the `ferry` binary).
#[doc(hidden)]
pub mod cli;

pub use backoff::BackoffConfig;
pub use builder::{AckMode, ClientBuilder};
pub use client::{Client, ClientStats, Events, GroupChange, Receipt};
pub use error::{ClientError, SendError, StoreError, TrySendError};
pub use event::{ConnectionState, Event};
pub use message::{
    MembershipAction, MembershipChange, MessageKind, OutgoingMessage, ReceivedMessage, SendReceipt,
};
pub use push::{PushPolicy, PushRegistration};
pub use sqlite::SqliteStore;
pub use store::ClientStore;
pub use tls::SessionCache;

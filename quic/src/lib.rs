//! # ferry-quic
//!
//! The one ferry/1 framing layer over quinn, used by every role — server, client, conformance runner,
//! benchmarks — the way h2's `codec/` serves both its client and its server. The protocol itself (frames,
//! codec, error codes) is sans-IO in `ferry-protocol`; this crate is the thin async part that moves its
//! frames over QUIC streams, and nothing more: no session logic lives here.
//!
//! Layout — one file per concern:
//! - [`reader`]: [`FrameReader`], a quinn receive stream feeding the protocol [`Decoder`], with a typed
//!   [`ReadError`], a size limit that can follow the one announced in `Welcome`, and STOP_SENDING;
//! - [`writer`]: [`FrameWriter`], a bounded queue and a task per send stream that writes every frame
//!   queued since its last wake-up in one write; accepts pre-encoded frames as `Bytes`; finishes on
//!   drop, resets with a code, closes the connection after a last frame, and never finishes a stream
//!   abandoned to a rejected 0-RTT;
//! - [`config`]: [`ClientConfigBuilder`], the one client `quinn::ClientConfig` (ALPN `ferry/1`, trust
//!   roots or a pinned certificate, 0-RTT, a shareable [`SessionCache`], the spec's keep-alive and idle
//!   timeout);
//! - [`codes`]: ferry [`ErrorCode`]s as QUIC reset/stop/close codes and back (FERRY-TRANSPORT-10);
//! - `memory` (feature `fuzzing` only): in-memory streams the reader and writer can run over, so a fuzz
//!   target drives a server's stream handling without packets or TLS.
//!
//! The server's certificates and `quinn::ServerConfig` stay in `ferry-server`: only the server makes one.
//!
//! [`Decoder`]: ferry_protocol::Decoder
//! [`ErrorCode`]: ferry_protocol::ErrorCode
#![warn(missing_docs)]

pub mod codes;
pub mod config;
#[cfg(feature = "fuzzing")]
pub mod memory;
pub mod reader;
pub mod writer;

pub use config::{ClientConfigBuilder, ConfigError, SessionCache, TrustRoots};
pub use reader::{FrameReader, ReadError};
pub use writer::{FrameWriter, PendingStream, Permit, TrySendError, WriterClosed};

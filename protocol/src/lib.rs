//! # ferry-protocol
//!
//! The `ferry/1` wire protocol, sans IO: no sockets, no tokio, no clock of its own. Everything that speaks
//! ferry/1 — the server, the client, the conformance runner, the fuzz targets — uses this crate, so there
//! is exactly one codec.
//!
//! Layout:
//! - [`frame`]: the protobuf frame types generated from `spec/ferry.proto` (the single schema source);
//! - [`codec`]: varint-length framing, an incremental [`Decoder`] with typed errors and a size limit;
//! - [`error_code`]: the one table of wire error codes ([`ErrorCode`]);
//! - [`frames`]: constructors for Error and GoAway, and [`frames::kind_name`] for logs;
//! - [`ids`]: validation of user, device, message and conversation ids;
//! - [`limits`]: the defaults that zero fields of `Welcome.limits` stand for, and the QUIC keep-alive and
//!   idle timeout of the spec's transport section;
//! - [`window`]: the client's per-conversation receive window (gap detection, dedupe, ack position).
//!
//! The normative description is `spec/ferry-1.md`; requirement ids such as `FERRY-FRAME-3` in comments
//! point into it.
#![warn(missing_docs)]

pub mod codec;
pub mod error_code;
pub mod frames;
pub mod ids;
pub mod limits;
pub mod window;

/// Frame types generated from `spec/ferry.proto`. Field meanings are documented there and in the spec.
#[allow(missing_docs, clippy::all)]
pub mod frame {
    include!(concat!(env!("OUT_DIR"), "/ferry.v1.rs"));
}

pub use codec::{DecodeError, Decoder};
pub use error_code::ErrorCode;
pub use frame::Frame;
pub use window::{Arrival, PullRequest, ReceiveWindow, WindowConfig};

/// The QUIC ALPN protocol id of this version (FERRY-TRANSPORT-2).
pub const ALPN: &[u8] = b"ferry/1";

/// The value of `Hello.version` for ferry/1.
pub const VERSION: u32 = 1;

/// Milliseconds since the Unix epoch for a [`std::time::SystemTime`] (the wire's time unit).
pub fn unix_millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

//! The one table of ferry/1 wire error codes (spec/ferry-1.md, section "Error codes").
//!
//! A code travels in three places: the `code` of an `Error` frame, the application error code of a QUIC
//! stream reset / stop-sending, and the application error code of a QUIC connection close. To add a code,
//! add one row to [`ErrorCode::TABLE`] and one constant; the spec table must say the same.

use std::fmt;

/// What a peer is expected to do after receiving an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// An `Error` frame answers one request; the stream stays usable.
    Request,
    /// The stream is reset with this code; other streams are unaffected.
    Stream,
    /// The connection is closed with this code.
    Connection,
}

/// A ferry/1 wire error code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

/// One row of the error code table.
#[derive(Debug, Clone, Copy)]
pub struct ErrorInfo {
    /// The code.
    pub code: ErrorCode,
    /// Upper-case name used in the spec and in logs.
    pub name: &'static str,
    /// One-line meaning.
    pub description: &'static str,
    /// Where the code is normally used.
    pub scope: Scope,
    /// Whether retrying the same request later may succeed.
    pub retryable: bool,
}

macro_rules! codes {
    ($( $konst:ident = $value:literal, $scope:ident, $retry:literal, $desc:literal; )*) => {
        impl ErrorCode {
            $(
                #[doc = $desc]
                pub const $konst: ErrorCode = ErrorCode($value);
            )*

            /// Every defined code, in numeric order.
            pub const TABLE: &'static [ErrorInfo] = &[
                $( ErrorInfo {
                    code: ErrorCode($value),
                    name: stringify!($konst),
                    description: $desc,
                    scope: Scope::$scope,
                    retryable: $retry,
                }, )*
            ];
        }
    };
}

codes! {
    NO_ERROR = 0, Connection, false, "Graceful close; nothing went wrong.";
    PROTOCOL_ERROR = 1, Connection, false, "A frame was malformed or arrived where it is not allowed.";
    UNKNOWN_FRAME = 2, Connection, false, "A frame type the receiver does not know.";
    FRAME_TOO_LARGE = 3, Connection, false, "A frame's length prefix exceeds the announced maximum frame size.";
    UNSUPPORTED_VERSION = 4, Connection, false, "Hello asked for a protocol version the server does not speak.";
    UNAUTHENTICATED = 5, Connection, false, "The token is missing, malformed, forged, expired or for another audience or device.";
    FORBIDDEN = 6, Request, false, "The user may not do this (not a member, not the group owner).";
    NOT_FOUND = 7, Request, false, "The conversation or user does not exist.";
    INVALID_ARGUMENT = 8, Request, false, "A field has an invalid value (bad id, empty client_msg_id, body too large).";
    RATE_LIMITED = 9, Request, true, "The user sends faster than the announced rate; retry after retry_after_ms.";
    TOO_MANY_INFLIGHT = 10, Request, true, "More unacknowledged Sends than max_inflight_sends; wait for SendAcks.";
    TOO_MANY_STREAMS = 11, Stream, true, "More conversation streams than max_open_streams; close idle ones first.";
    SESSION_REPLACED = 12, Connection, false, "Another session of this user replaced this one; do NOT reconnect automatically.";
    SHUTTING_DOWN = 13, Connection, true, "The server is draining; reconnect, preferably to another endpoint.";
    INTERNAL = 14, Request, true, "The server failed (e.g. storage); nothing was stored; retry with the same client_msg_id.";
    IDLE_TIMEOUT = 15, Connection, true, "No frame or heartbeat arrived within the idle timeout.";
    STREAM_CLOSED = 16, Stream, true, "The conversation stream was closed because it was idle; open a new one when needed.";
    TOKEN_REVOKED = 17, Connection, false, "An operator revoked this device's tokens; do NOT reconnect with the same token.";
}

impl ErrorCode {
    /// The table row for this code, if it is a defined code.
    pub fn info(self) -> Option<&'static ErrorInfo> {
        Self::TABLE.iter().find(|info| info.code == self)
    }

    /// Upper-case name, or `UNKNOWN` for codes this version does not define.
    pub fn name(self) -> &'static str {
        self.info().map_or("UNKNOWN", |info| info.name)
    }

    /// Whether retrying may succeed. Unknown codes are treated as not retryable.
    pub fn is_retryable(self) -> bool {
        self.info().is_some_and(|info| info.retryable)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.info() {
            Some(info) => write!(f, "{} ({}): {}", info.name, self.0, info.description),
            None => write!(f, "UNKNOWN ({})", self.0),
        }
    }
}

impl From<ErrorCode> for u32 {
    fn from(code: ErrorCode) -> u32 {
        code.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_dense_sorted_and_named_uniquely() {
        for (i, info) in ErrorCode::TABLE.iter().enumerate() {
            assert_eq!(info.code.0 as usize, i, "{} out of order", info.name);
        }
        let mut names: Vec<_> = ErrorCode::TABLE.iter().map(|i| i.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::TABLE.len());
    }

    #[test]
    fn unknown_codes_display_and_are_not_retryable() {
        let code = ErrorCode(999);
        assert_eq!(code.name(), "UNKNOWN");
        assert!(!code.is_retryable());
        assert_eq!(code.to_string(), "UNKNOWN (999)");
        assert!(ErrorCode::RATE_LIMITED.is_retryable());
        assert!(!ErrorCode::SESSION_REPLACED.is_retryable());
    }
}

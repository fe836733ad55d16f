//! Typed errors across the boundary: Kotlin exceptions (sealed classes), Swift `Error` enums, Python
//! exception classes. Never strings alone: the variant says what happened, the fields say the details.
//!
//! Field names avoid `message`, which Kotlin's `Throwable` already defines.

use ferry_client::{ClientError, SendError};

use crate::types::OutgoingMessage;

/// Errors of client operations and of building a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum FerryError {
    /// The server refused the credentials (UNAUTHENTICATED), also after a token refresh.
    #[error("authentication failed: {reason}")]
    Auth {
        /// The server's explanation.
        reason: String,
    },
    /// No endpoint could be reached, or the operation needs a connection that is not there.
    #[error("server unreachable: {reason}")]
    Unreachable {
        /// What failed.
        reason: String,
    },
    /// The server answered the request with an error code.
    #[error("server error {code_name} ({code}): {reason}")]
    Server {
        /// The wire code (spec's error code table).
        code: u32,
        /// The code's name, e.g. `FORBIDDEN`.
        code_name: String,
        /// The server's explanation.
        reason: String,
    },
    /// The local store (SQLite) failed.
    #[error("store failed: {reason}")]
    Store {
        /// What failed.
        reason: String,
    },
    /// The client was shut down, replaced by another session, or stopped after a fatal error.
    #[error("client closed")]
    Closed,
    /// The connection was lost while the request was in flight; its outcome is unknown.
    #[error("connection lost before the answer arrived")]
    Disconnected,
    /// Invalid configuration or argument (missing endpoint, bad CA, malformed id, builder reused...).
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A bug inside the library (a panic, caught before it could cross the boundary).
    #[error("internal error: {reason}")]
    Internal {
        /// The panic's text.
        reason: String,
    },
}

impl From<ClientError> for FerryError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Auth(reason) => FerryError::Auth { reason },
            ClientError::Unreachable(reason) => FerryError::Unreachable { reason },
            ClientError::Protocol { code, message } => FerryError::Server {
                code: code.0,
                code_name: code.name().to_owned(),
                reason: message,
            },
            ClientError::Store(e) => FerryError::Store {
                reason: e.to_string(),
            },
            ClientError::Closed => FerryError::Closed,
            ClientError::Disconnected => FerryError::Disconnected,
            ClientError::Config(reason) => FerryError::Config { reason },
        }
    }
}

/// Why a message could not be sent. Every variant about one message hands it back in `outgoing`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum SendFailure {
    /// The server refused the message for good (FORBIDDEN, INVALID_ARGUMENT, ...). It was removed from
    /// the outbox.
    #[error("rejected by the server ({code_name}): {reason}")]
    Rejected {
        /// The wire code.
        code: u32,
        /// The code's name.
        code_name: String,
        /// The server's explanation.
        reason: String,
        /// The message, handed back.
        outgoing: OutgoingMessage,
    },
    /// The client is closed; nothing was queued.
    #[error("client closed; message not queued")]
    Closed {
        /// The message, handed back.
        outgoing: OutgoingMessage,
    },
    /// The client stopped before the server acknowledged the message. It stays in the outbox and is
    /// sent by the next client on the same store: do not send it again.
    #[error("client stopped before the server acknowledged; message stays in the outbox")]
    Interrupted {
        /// A copy of the queued message.
        outgoing: OutgoingMessage,
    },
    /// The message is invalid locally (e.g. malformed conversation id); nothing was queued.
    #[error("invalid message: {reason}")]
    Invalid {
        /// Why.
        reason: String,
        /// The message, handed back.
        outgoing: OutgoingMessage,
    },
    /// The body is larger than the server's announced `max_body_size`; nothing was queued.
    #[error("body of {size} bytes exceeds the announced limit of {limit} bytes")]
    TooLarge {
        /// The body's size in bytes.
        size: u64,
        /// The announced limit in bytes.
        limit: u64,
        /// The message, handed back.
        outgoing: OutgoingMessage,
    },
    /// Writing the outbox entry failed; nothing was queued.
    #[error("store failed: {reason}")]
    Store {
        /// What failed.
        reason: String,
        /// The message, handed back.
        outgoing: OutgoingMessage,
    },
    /// A bug inside the library (a panic, caught before it could cross the boundary). Whether the
    /// message was queued is unknown.
    #[error("internal error: {reason}")]
    Internal {
        /// The panic's text.
        reason: String,
    },
}

impl From<SendError> for SendFailure {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Rejected {
                code,
                reason,
                message,
            } => SendFailure::Rejected {
                code: code.0,
                code_name: code.name().to_owned(),
                reason,
                outgoing: message.into(),
            },
            SendError::Closed { message } => SendFailure::Closed {
                outgoing: message.into(),
            },
            SendError::Interrupted { message } => SendFailure::Interrupted {
                outgoing: message.into(),
            },
            SendError::Invalid { reason, message } => SendFailure::Invalid {
                reason,
                outgoing: message.into(),
            },
            SendError::TooLarge {
                size,
                limit,
                message,
            } => SendFailure::TooLarge {
                size: size as u64,
                limit: limit as u64,
                outgoing: message.into(),
            },
            SendError::Store { source, message } => SendFailure::Store {
                reason: source.to_string(),
                outgoing: message.into(),
            },
        }
    }
}

/// What a [`crate::TokenRefresher`] reports when it cannot produce a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum TokenRefreshError {
    /// The application could not get a fresh token (the client then stops with `AuthFailed`).
    #[error("token refresh failed: {reason}")]
    Failed {
        /// Why, for logs.
        reason: String,
    },
}

// A foreign implementation that throws something other than `TokenRefreshError` arrives here instead of
// panicking inside the generated scaffolding.
impl From<uniffi::UnexpectedUniFFICallbackError> for TokenRefreshError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        TokenRefreshError::Failed { reason: e.reason }
    }
}

/// The text of a caught panic payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

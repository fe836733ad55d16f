//! Typed errors, layered: store → client; a failed send hands back its message.

use ferry_protocol::ErrorCode;

use crate::message::OutgoingMessage;

/// A failure of the client store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A filesystem operation failed (creating the store's directory).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A blocking store task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// Stored data could not be decoded.
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

/// Errors of [`crate::Client`] operations and of building a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the credentials (UNAUTHENTICATED), also after a token refresh.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// No endpoint could be reached, or the operation needs a connection that is not there.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server answered a request with an error code.
    #[error("server error {code:?}: {message}")]
    Protocol {
        /// The wire code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client was shut down, replaced by another session, or stopped after a fatal error.
    #[error("client closed")]
    Closed,
    /// The connection was lost while the request was in flight; its outcome is unknown.
    #[error("connection lost before the answer arrived")]
    Disconnected,
    /// Invalid configuration or argument (bad CA file, malformed id, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Why a message could not be sent. Every variant that concerns one message hands it back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server refused the message for good (FORBIDDEN, INVALID_ARGUMENT, NOT_FOUND, ...). It was
    /// removed from the outbox.
    #[error("rejected by the server ({code:?}): {reason}")]
    Rejected {
        /// The wire code.
        code: ErrorCode,
        /// The server's message.
        reason: String,
        /// The message, handed back.
        message: OutgoingMessage,
    },
    /// The client is closed; nothing was queued.
    #[error("client closed; message not queued")]
    Closed {
        /// The message, handed back.
        message: OutgoingMessage,
    },
    /// The client stopped before the server acknowledged the message. It is still in the outbox (same
    /// client_msg_id) and is sent by the next client that opens the same store; do not resend it.
    #[error("client stopped before the server acknowledged; message stays in the outbox")]
    Interrupted {
        /// The message (a copy; the original is still queued).
        message: OutgoingMessage,
    },
    /// The message is invalid locally (e.g. malformed conversation id); nothing was queued.
    #[error("invalid message: {reason}")]
    Invalid {
        /// Why.
        reason: String,
        /// The message, handed back.
        message: OutgoingMessage,
    },
    /// The body is larger than the server's announced `max_body_size` (FERRY-HELLO-5): the server would
    /// refuse it, so it is refused here and nothing was queued.
    #[error("body of {size} bytes exceeds the server's limit of {limit} bytes; not queued")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The announced limit in bytes.
        limit: usize,
        /// The message, handed back.
        message: OutgoingMessage,
    },
    /// Writing the outbox entry failed; nothing was queued.
    #[error("store failed: {source}")]
    Store {
        /// The store error (boxed: SQLite errors are large, and this travels in a `Result`).
        source: Box<StoreError>,
        /// The message, handed back.
        message: OutgoingMessage,
    },
}

impl SendError {
    /// The message this error hands back.
    pub fn message(&self) -> &OutgoingMessage {
        match self {
            SendError::Rejected { message, .. }
            | SendError::Closed { message }
            | SendError::Interrupted { message }
            | SendError::Invalid { message, .. }
            | SendError::TooLarge { message, .. }
            | SendError::Store { message, .. } => message,
        }
    }

    /// Consumes the error and returns the message.
    pub fn into_message(self) -> OutgoingMessage {
        match self {
            SendError::Rejected { message, .. }
            | SendError::Closed { message }
            | SendError::Interrupted { message }
            | SendError::Invalid { message, .. }
            | SendError::TooLarge { message, .. }
            | SendError::Store { message, .. } => message,
        }
    }
}

/// Why [`crate::Client::try_send`] did not queue a message.
#[derive(Debug, thiserror::Error)]
pub enum TrySendError {
    /// The request channel to the driver is full; try again later. The message was not queued (no outbox
    /// entry was written).
    #[error("request channel full")]
    Full(OutgoingMessage),
    /// Any other send failure.
    #[error(transparent)]
    Send(#[from] SendError),
}

//! Events the client reports to the application through [`crate::Events`].

use std::net::SocketAddr;

use crate::message::{MembershipChange, ReceivedMessage};

/// One thing that happened. Messages arrive exactly once per conversation, in seq order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message of someone else (or of another device of this user). Messages sent by *this* device are
    /// not reported here: their [`crate::Receipt`] says they are stored. System messages arrive as
    /// `Message` too, followed by a [`Event::Membership`] carrying the decoded change.
    Message(ReceivedMessage),
    /// A membership change (decoded from a system message that was just reported as `Message`).
    Membership {
        /// Conversation id.
        conversation: String,
        /// Seq of the system message.
        seq: u64,
        /// The change.
        change: MembershipChange,
    },
    /// Someone started or stopped typing (unreliable, not stored). Reported only for conversations this
    /// client knows (from its store, a Sync or delivery, or its own acknowledged sends) and only after
    /// Welcome; other typing datagrams are ignored (FERRY-SEC-8, FERRY-DGRAM-3). Senders repeat
    /// `active = true` every few seconds while typing, so expire an indicator about 6 s after the last
    /// one (FERRY-DGRAM-7).
    Typing {
        /// Conversation id.
        conversation: String,
        /// User id.
        user: String,
        /// Device id.
        device: String,
        /// Typing or not.
        active: bool,
    },
    /// Someone's presence changed (unreliable, not stored; filtered like [`Event::Typing`]).
    Presence {
        /// Conversation id.
        conversation: String,
        /// User id.
        user: String,
        /// Raw `PresenceStatus` value of the wire (1 online, 2 away, 3 offline).
        status: i32,
    },
    /// The connection state changed.
    Connection(ConnectionState),
    /// The server reported another epoch for a conversation: history may have been lost there. The
    /// client keeps the local messages of the old epoch, restarts the conversation's window in the new
    /// epoch (like a conversation without local history) and resyncs.
    EpochReset {
        /// Conversation id.
        conversation: String,
        /// The new epoch.
        epoch: u64,
    },
}

/// Connection life cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Dialling an endpoint.
    Connecting {
        /// The endpoint tried.
        endpoint: SocketAddr,
    },
    /// Welcome received; the session is live.
    Connected {
        /// The server's address.
        endpoint: SocketAddr,
        /// Whether this connection used 0-RTT early data that the server accepted.
        zero_rtt: bool,
        /// The user id the server authenticated.
        user_id: String,
    },
    /// The connection was lost; the client reconnects with backoff.
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
    /// Another session replaced this one (SESSION_REPLACED). The client stopped and does NOT reconnect.
    Replaced,
    /// The server refused the credentials and the token refresher could not help. The client stopped.
    AuthFailed {
        /// The server's message.
        reason: String,
    },
}

//! Plain data crossing the boundary (UniFFI records and enums: Kotlin data classes, Swift structs,
//! Python dataclasses) and their conversions from `ferry-client`'s types. Bodies are bytes; ids and
//! addresses are strings; seqs and times are `u64` (Kotlin `ULong`, Swift `UInt64`).

use ferry_client as fc;

/// A message the application asked to send; handed back when a send fails.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct OutgoingMessage {
    /// Conversation id.
    pub conversation: String,
    /// The idempotency key chosen for it (a UUID v4).
    pub client_msg_id: String,
    /// The body.
    pub body: Vec<u8>,
}

impl From<fc::OutgoingMessage> for OutgoingMessage {
    fn from(m: fc::OutgoingMessage) -> Self {
        OutgoingMessage {
            conversation: m.conversation,
            client_msg_id: m.client_msg_id,
            body: m.body.to_vec(),
        }
    }
}

/// Proof that the server stored a message durably.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SendReceipt {
    /// Conversation id.
    pub conversation: String,
    /// The seq the server assigned.
    pub seq: u64,
    /// The idempotency key.
    pub client_msg_id: String,
    /// True if the server had already stored it (a retry); `seq` is the original one.
    pub duplicate: bool,
    /// Server time of storage, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
}

impl From<fc::SendReceipt> for SendReceipt {
    fn from(r: fc::SendReceipt) -> Self {
        SendReceipt {
            conversation: r.conversation,
            seq: r.seq,
            client_msg_id: r.client_msg_id,
            duplicate: r.duplicate,
            server_time_ms: r.server_time_ms,
        }
    }
}

/// User message or system message (membership change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum MessageKind {
    /// Written by a user.
    User,
    /// Written by the server (group created, member added/removed).
    System,
}

/// What a membership change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum MembershipAction {
    /// The group was created.
    Created,
    /// Users were added.
    Added,
    /// Users were removed (or left).
    Removed,
    /// A newer server's action this client does not know.
    Unknown,
}

/// A decoded membership change.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MembershipChange {
    /// What happened.
    pub action: MembershipAction,
    /// Who did it.
    pub actor: String,
    /// The users concerned.
    pub users: Vec<String>,
    /// The group's name (on creation).
    pub name: String,
}

impl From<fc::MembershipChange> for MembershipChange {
    fn from(c: fc::MembershipChange) -> Self {
        MembershipChange {
            action: match c.action {
                fc::MembershipAction::Created => MembershipAction::Created,
                fc::MembershipAction::Added => MembershipAction::Added,
                fc::MembershipAction::Removed => MembershipAction::Removed,
                fc::MembershipAction::Unknown => MembershipAction::Unknown,
            },
            actor: c.actor,
            users: c.users,
            name: c.name,
        }
    }
}

/// A stored message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReceivedMessage {
    /// Conversation id.
    pub conversation: String,
    /// Position in the conversation (gap-free within an epoch).
    pub seq: u64,
    /// The conversation's epoch.
    pub epoch: u64,
    /// Sending user.
    pub sender: String,
    /// Sending device.
    pub sender_device: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// The body (UTF-8 text for text messages, but any bytes are allowed).
    pub body: Vec<u8>,
    /// Server time of storage, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// User or system message.
    pub kind: MessageKind,
    /// The decoded change of a system message.
    pub membership: Option<MembershipChange>,
}

impl From<fc::ReceivedMessage> for ReceivedMessage {
    fn from(m: fc::ReceivedMessage) -> Self {
        ReceivedMessage {
            conversation: m.conversation,
            seq: m.seq,
            epoch: m.epoch,
            sender: m.sender,
            sender_device: m.sender_device,
            client_msg_id: m.client_msg_id,
            body: m.body.to_vec(),
            server_time_ms: m.server_time_ms,
            kind: match m.kind {
                fc::MessageKind::User => MessageKind::User,
                fc::MessageKind::System => MessageKind::System,
            },
            membership: m.membership.map(Into::into),
        }
    }
}

/// Connection life cycle.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Dialling an endpoint.
    Connecting {
        /// The endpoint tried (`ip:port`).
        endpoint: String,
    },
    /// Welcome received; the session is live.
    Connected {
        /// The server's address.
        endpoint: String,
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
    /// Another session replaced this one. The client stopped and does NOT reconnect.
    Replaced,
    /// The server refused the credentials and the token refresher could not help. The client stopped.
    AuthFailed {
        /// The server's explanation.
        reason: String,
    },
}

impl From<fc::ConnectionState> for ConnectionState {
    fn from(s: fc::ConnectionState) -> Self {
        match s {
            fc::ConnectionState::Connecting { endpoint } => ConnectionState::Connecting {
                endpoint: endpoint.to_string(),
            },
            fc::ConnectionState::Connected {
                endpoint,
                zero_rtt,
                user_id,
            } => ConnectionState::Connected {
                endpoint: endpoint.to_string(),
                zero_rtt,
                user_id,
            },
            fc::ConnectionState::Disconnected { reason } => {
                ConnectionState::Disconnected { reason }
            }
            fc::ConnectionState::Replaced => ConnectionState::Replaced,
            fc::ConnectionState::AuthFailed { reason } => ConnectionState::AuthFailed { reason },
        }
    }
}

/// One thing that happened. Messages arrive exactly once per conversation, in seq order; messages
/// sent by this device are not reported (their receipt covers them).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A message of someone else (or of another device of this user).
    Message {
        /// The message.
        message: ReceivedMessage,
    },
    /// A membership change, decoded from the system message reported just before.
    Membership {
        /// Conversation id.
        conversation: String,
        /// Seq of the system message.
        seq: u64,
        /// The change.
        change: MembershipChange,
    },
    /// Someone started or stopped typing (unreliable; expire an indicator ~6 s after the last one).
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
    /// Someone's presence changed (1 online, 2 away, 3 offline).
    Presence {
        /// Conversation id.
        conversation: String,
        /// User id.
        user: String,
        /// The wire's `PresenceStatus` value.
        status: i32,
    },
    /// The connection state changed.
    Connection {
        /// The new state.
        state: ConnectionState,
    },
    /// The server reported another epoch for a conversation: history may have been lost there.
    EpochReset {
        /// Conversation id.
        conversation: String,
        /// The new epoch.
        epoch: u64,
    },
}

impl From<fc::Event> for Event {
    fn from(e: fc::Event) -> Self {
        match e {
            fc::Event::Message(m) => Event::Message { message: m.into() },
            fc::Event::Membership {
                conversation,
                seq,
                change,
            } => Event::Membership {
                conversation,
                seq,
                change: change.into(),
            },
            fc::Event::Typing {
                conversation,
                user,
                device,
                active,
            } => Event::Typing {
                conversation,
                user,
                device,
                active,
            },
            fc::Event::Presence {
                conversation,
                user,
                status,
            } => Event::Presence {
                conversation,
                user,
                status,
            },
            fc::Event::Connection(state) => Event::Connection {
                state: state.into(),
            },
            fc::Event::EpochReset {
                conversation,
                epoch,
            } => Event::EpochReset {
                conversation,
                epoch,
            },
        }
    }
}

/// A snapshot of the client's state ("status"/"whoami").
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ClientStats {
    /// A session is live (Welcome received).
    pub connected: bool,
    /// The server of the live or last session (`ip:port`).
    pub endpoint: Option<String>,
    /// The live or last session used accepted 0-RTT early data.
    pub zero_rtt: bool,
    /// Sessions established so far.
    pub sessions: u64,
    /// Messages in the outbox (not yet acknowledged by the server).
    pub outbox: u64,
    /// Sends waiting for their answer.
    pub in_flight: u64,
    /// The authenticated user id (from Welcome or the store).
    pub user_id: Option<String>,
}

impl From<fc::ClientStats> for ClientStats {
    fn from(s: fc::ClientStats) -> Self {
        ClientStats {
            connected: s.connected,
            endpoint: s.endpoint.map(|e| e.to_string()),
            zero_rtt: s.zero_rtt,
            sessions: s.sessions,
            outbox: s.outbox as u64,
            in_flight: s.in_flight as u64,
            user_id: s.user_id,
        }
    }
}

/// Result of a group administration request.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupChange {
    /// The group's conversation id.
    pub conversation: String,
    /// Seq of the system message that records the change.
    pub seq: u64,
}

impl From<fc::GroupChange> for GroupChange {
    fn from(g: fc::GroupChange) -> Self {
        GroupChange {
            conversation: g.conversation,
            seq: g.seq,
        }
    }
}

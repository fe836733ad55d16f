//! Message values the library hands to and takes from the application.

use bytes::Bytes;
use ferry_protocol::frame;

/// Whether a message was written by a user or records a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Written by a user.
    User,
    /// A system message; see [`ReceivedMessage::membership`].
    System,
}

/// What a membership change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MembershipAction {
    /// The group was created (seq 1).
    Created,
    /// Users were added.
    Added,
    /// Users were removed or left.
    Removed,
    /// A value this version does not know.
    Unknown,
}

/// The payload of a system message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    /// What happened.
    pub action: MembershipAction,
    /// Who did it.
    pub actor: String,
    /// Whom it concerns.
    pub users: Vec<String>,
    /// The group name (on `Created`).
    pub name: String,
}

/// A stored message of a conversation, as delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Conversation id (`d:a:b` or `g:<hex>`).
    pub conversation: String,
    /// Position in the conversation (starts at 1, gap-free within an epoch).
    pub seq: u64,
    /// The conversation's epoch the seq belongs to.
    pub epoch: u64,
    /// User id of the sender.
    pub sender: String,
    /// Device id of the sender.
    pub sender_device: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Opaque body.
    pub body: Bytes,
    /// Server time of storage, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// User or system message.
    pub kind: MessageKind,
    /// For system messages: the membership change.
    pub membership: Option<MembershipChange>,
}

impl ReceivedMessage {
    /// Converts a wire message of `conversation` in `epoch`.
    pub fn from_wire(conversation: &str, epoch: u64, m: frame::Message) -> Self {
        let kind = match frame::MessageKind::try_from(m.kind) {
            Ok(frame::MessageKind::System) => MessageKind::System,
            _ => MessageKind::User,
        };
        ReceivedMessage {
            conversation: conversation.to_owned(),
            seq: m.seq,
            epoch,
            sender: m.sender,
            sender_device: m.sender_device,
            client_msg_id: m.client_msg_id,
            body: m.body,
            server_time_ms: m.server_time_ms,
            kind,
            membership: m.membership.map(MembershipChange::from_wire),
        }
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

impl MembershipChange {
    /// Converts the wire form.
    pub fn from_wire(m: frame::MembershipChange) -> Self {
        let action = match frame::MembershipAction::try_from(m.action) {
            Ok(frame::MembershipAction::Created) => MembershipAction::Created,
            Ok(frame::MembershipAction::Added) => MembershipAction::Added,
            Ok(frame::MembershipAction::Removed) => MembershipAction::Removed,
            _ => MembershipAction::Unknown,
        };
        MembershipChange {
            action,
            actor: m.actor,
            users: m.users,
            name: m.name,
        }
    }

    /// Converts back to the wire form (used by the store, which keeps it as protobuf).
    pub fn to_wire(&self) -> frame::MembershipChange {
        let action = match self.action {
            MembershipAction::Created => frame::MembershipAction::Created,
            MembershipAction::Added => frame::MembershipAction::Added,
            MembershipAction::Removed => frame::MembershipAction::Removed,
            MembershipAction::Unknown => frame::MembershipAction::Unspecified,
        };
        frame::MembershipChange {
            action: action as i32,
            actor: self.actor.clone(),
            users: self.users.clone(),
            name: self.name.clone(),
        }
    }
}

/// A message the application asked to send; handed back when a send fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Conversation id.
    pub conversation: String,
    /// The idempotency key chosen for it (a UUID v4).
    pub client_msg_id: String,
    /// The body.
    pub body: Bytes,
}

/// Proof that the server stored a message durably.
#[derive(Debug, Clone, PartialEq, Eq)]
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

//! What the invariant checker is fed: the scenario's membership (ground truth set up by the run), the
//! senders' receipts and every device's delivered log, all as plain records.
//!
//! These records are written by the run from the lines device processes print (see [`crate::device`]);
//! nothing here is read from the client library's own bookkeeping (its outbox, store or windows).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A device of the scenario, named `user/device`.
pub type DeviceKey = String;

/// The key of `device` of `user`.
pub fn device_key(user: &str, device: &str) -> DeviceKey {
    format!("{user}/{device}")
}

/// When a user belongs to a conversation, in seqs of the conversation's first epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// The user sees messages with seq > `joined_after` (0: from the start).
    pub joined_after: u64,
    /// The user was removed by the system message at this seq: it sees nothing past it, and that
    /// message itself may or may not reach it.
    pub removed_at: Option<u64>,
}

impl Span {
    /// A member from the start who is never removed.
    pub const ALWAYS: Span = Span {
        joined_after: 0,
        removed_at: None,
    };

    /// Whether a message at `seq` may reach this member.
    pub fn allows(&self, seq: u64) -> bool {
        seq > self.joined_after && self.removed_at.is_none_or(|r| seq <= r)
    }

    /// Whether a message at `seq` must reach this member.
    pub fn requires(&self, seq: u64) -> bool {
        seq > self.joined_after && self.removed_at.is_none_or(|r| seq < r)
    }
}

/// Who belongs to which conversation: conversation → user → span.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// conversation → user → span.
    pub conversations: BTreeMap<String, BTreeMap<String, Span>>,
}

impl Membership {
    /// Records that `user` is a member of `conversation` for `span`.
    pub fn add(&mut self, conversation: &str, user: &str, span: Span) {
        self.conversations
            .entry(conversation.to_owned())
            .or_default()
            .insert(user.to_owned(), span);
    }

    /// The span of `user` in `conversation`, if a member at all.
    pub fn span(&self, conversation: &str, user: &str) -> Option<Span> {
        self.conversations.get(conversation)?.get(user).copied()
    }
}

/// A sender was about to queue a message with body `token` (printed before the outbox write, so a
/// sender killed right after the write still leaves this trace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The sending device.
    pub device: DeviceKey,
    /// Conversation id.
    pub conversation: String,
    /// The body, unique per message.
    pub token: String,
}

/// A sender queued a message (its outbox write succeeded): it may or may not be acked later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The sending device.
    pub device: DeviceKey,
    /// Conversation id.
    pub conversation: String,
    /// The client_msg_id the sender chose.
    pub id: String,
    /// The body.
    pub token: String,
    /// Milliseconds since the run started, as seen by the run.
    pub at_ms: u64,
}

/// A sender's receipt: the server said the message is stored at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acked {
    /// The sending device.
    pub device: DeviceKey,
    /// Conversation id.
    pub conversation: String,
    /// The client_msg_id.
    pub id: String,
    /// The seq the receipt names.
    pub seq: u64,
    /// The server's clock when it stored the message (ms since 1970; 0 when unknown).
    #[serde(default)]
    pub server_time_ms: u64,
    /// Milliseconds since the run started.
    pub at_ms: u64,
}

/// A device's client announced a new epoch for a conversation: what it had there may be lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochReset {
    /// The device told.
    pub device: DeviceKey,
    /// Conversation id.
    pub conversation: String,
    /// The new epoch.
    pub epoch: u64,
    /// Milliseconds since the run started.
    pub at_ms: u64,
}

/// The run made the store lose all history (FLUSHALL of the cluster's Redis): ground truth of the run,
/// like the membership, not something a device reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLoss {
    /// Milliseconds since the run started, taken right before the FLUSHALL was sent.
    pub at_ms: u64,
    /// The machine's clock (ms since 1970) at the same moment, to compare with receipts' server time.
    pub unix_ms: u64,
}

/// One message a device's application saw, in the order it saw them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// Conversation id.
    pub conversation: String,
    /// Seq of the message.
    pub seq: u64,
    /// Epoch the seq belongs to.
    pub epoch: u64,
    /// The client_msg_id the message carries.
    pub id: String,
    /// The device that sent it, as the message says.
    pub sender: DeviceKey,
    /// A system (membership) message rather than one a scenario device sent.
    pub system: bool,
    /// The body as text.
    pub token: String,
    /// Milliseconds since the run started.
    pub at_ms: u64,
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    /// Ground truth of the scenario: who belongs where.
    pub membership: Membership,
    /// Every device of the scenario → its user.
    pub devices: BTreeMap<DeviceKey, String>,
    /// Every send about to be queued, in any order.
    pub intents: Vec<Intent>,
    /// Every queued send, in any order.
    pub sent: Vec<Sent>,
    /// Every receipt, in any order.
    pub acked: Vec<Acked>,
    /// Every device's delivered log, in delivery order.
    pub delivered: BTreeMap<DeviceKey, Vec<Delivered>>,
    /// Every epoch change a device's client announced.
    #[serde(default)]
    pub epoch_resets: Vec<EpochReset>,
    /// Every time the run made the store lose its history.
    #[serde(default)]
    pub history_losses: Vec<HistoryLoss>,
}

impl Observations {
    /// Adds a device of `user`.
    pub fn add_device(&mut self, user: &str, device: &str) -> DeviceKey {
        let key = device_key(user, device);
        self.devices.insert(key.clone(), user.to_owned());
        self.delivered.entry(key.clone()).or_default();
        key
    }
}

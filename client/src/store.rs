//! The client store: the outbox (messages not yet acknowledged by the server), the local messages, one
//! row per conversation (epoch, contiguous seq, app-acked seq, known head) and a small key/value table
//! (sync token, user id).
//!
//! The trait is synchronous because SQLite is; the client calls it on tokio's blocking pool, never on the
//! runtime's worker threads. Every method is one transaction.

use bytes::Bytes;

use crate::error::StoreError;
use crate::message::{OutgoingMessage, ReceivedMessage};

/// A message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Insertion order (the outbox is sent in this order).
    pub id: i64,
    /// Conversation id.
    pub conversation: String,
    /// Idempotency key.
    pub client_msg_id: String,
    /// Body.
    pub body: Bytes,
    /// When the application queued it, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl OutboxRecord {
    /// The outbox row of `message`, queued at `created_at_ms`; `id` is the store's insertion order.
    pub fn of(message: &OutgoingMessage, id: i64, created_at_ms: u64) -> OutboxRecord {
        OutboxRecord {
            id,
            conversation: message.conversation.clone(),
            client_msg_id: message.client_msg_id.clone(),
            body: message.body.clone(),
            created_at_ms,
        }
    }
}

/// The client's position in one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    /// Conversation id.
    pub conversation: String,
    /// Epoch the seqs belong to.
    pub epoch: u64,
    /// Every seq up to this one is stored locally (or was skipped as not visible / outside the recent
    /// window).
    pub contiguous_seq: u64,
    /// In [`crate::AckMode::Manual`]: the application confirmed everything up to here. Messages above it
    /// (up to `contiguous_seq`) are reported again after a restart. Equal to `contiguous_seq` in auto mode.
    pub app_acked_seq: u64,
    /// The highest seq known to exist on the server (a head above `contiguous_seq` means: pull).
    pub head_seq: u64,
}

/// Everything one wake-up of the driver changes, written in one transaction.
#[derive(Debug, Default, Clone)]
pub struct Commit {
    /// Messages to insert; already stored ones (same conversation, epoch and seq, or same sender and
    /// client_msg_id) are ignored.
    pub messages: Vec<ReceivedMessage>,
    /// Conversation rows to write (replacing the old row).
    pub conversations: Vec<ConversationRow>,
    /// Outbox entries the server acknowledged, by client_msg_id.
    pub outbox_done: Vec<String>,
    /// A new sync token, written only after the changes it reports were applied.
    pub sync_token: Option<u64>,
}

impl Commit {
    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.conversations.is_empty()
            && self.outbox_done.is_empty()
            && self.sync_token.is_none()
    }
}

/// Durable client state. Implementations must make each method atomic.
pub trait ClientStore: Send + Sync + 'static {
    /// Appends a message to the outbox (durably: it must survive a crash once this returns).
    fn enqueue(&self, record: &OutboxRecord) -> Result<i64, StoreError>;
    /// Appends several messages in one transaction (group commit), returning their ids in order. All or
    /// nothing. The default writes them one by one.
    fn enqueue_batch(&self, records: &[OutboxRecord]) -> Result<Vec<i64>, StoreError> {
        records.iter().map(|r| self.enqueue(r)).collect()
    }
    /// Removes an outbox entry (rejected by the server). Returns whether it existed.
    fn remove_outbox(&self, client_msg_id: &str) -> Result<bool, StoreError>;
    /// The whole outbox in insertion order.
    fn outbox(&self) -> Result<Vec<OutboxRecord>, StoreError>;
    /// Applies one batch of changes atomically.
    fn commit(&self, commit: &Commit) -> Result<(), StoreError>;
    /// Every conversation row.
    fn conversations(&self) -> Result<Vec<ConversationRow>, StoreError>;
    /// Stored messages of `conversation` in `epoch` with seq > `after_seq`, ascending, at most `limit`.
    fn messages(
        &self,
        conversation: &str,
        epoch: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, StoreError>;
    /// Reads a key of the key/value table.
    fn get(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Writes a key of the key/value table.
    fn set(&self, key: &str, value: &str) -> Result<(), StoreError>;
}

/// Key of the sync token in the key/value table.
pub const KEY_SYNC_TOKEN: &str = "sync_token";
/// Key of the authenticated user id in the key/value table.
pub const KEY_USER_ID: &str = "user_id";

//! # ferry-store
//!
//! The one storage trait of Ferry ([`Store`]) and its implementations. The server talks only to the trait,
//! so the embedded store (single node, no services) and the Redis store (cluster mode) are
//! interchangeable.
//!
//! Layout:
//! - this file: the trait, the records it exchanges and its error type;
//! - [`embedded`]: the default store under `--data-dir`: a log-first commit point with group commit (many
//!   concurrent appends share one log frame and one fsync; every caller waits for it), indexed in redb
//!   behind the acks.
//! - [`redis`]: the store of cluster mode on one Redis or a Redis Cluster (one Lua script per send,
//!   keys hash-tagged per conversation, pipelined appends, epochs that change when Redis lost data).
//!
//! The guarantees every implementation gives (spec section "Message model"):
//! - **atomic append**: membership check, dedupe lookup, seq assignment, message append and dedupe
//!   record are one step;
//! - **durable before return**: `append` and `change_membership` return only after the data is durable;
//! - **gap-free, ordered visibility**: a seq is readable only when every lower seq is;
//! - **seq never goes backwards**: the head is durable; when history may have been lost the epoch changes.
#![warn(missing_docs)]

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_protocol::frame::{ConversationKind, ConversationState, Message};

pub mod embedded;
mod push;
pub mod redis;
mod revoke;

pub use embedded::{CommitStats, EmbeddedStore, EmbeddedStoreOptions};
pub use push::{PushRecord, MAX_PUSH_DEVICES_PER_USER};
pub use redis::{Durability, RedisStore, RedisStoreOptions};

/// A user message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Conversation id (already validated; membership is checked by the append itself).
    pub conversation: String,
    /// Sending user.
    pub sender: String,
    /// Sending device.
    pub sender_device: String,
    /// Sender-chosen idempotency key.
    pub client_msg_id: String,
    /// Opaque payload.
    pub body: Bytes,
    /// Server time to stamp, ms since the Unix epoch.
    pub server_time_ms: u64,
}

/// Result of an append.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Seq of the stored message (the original one for a duplicate).
    pub seq: u64,
    /// Server time of the stored message (the original one for a duplicate).
    pub server_time_ms: u64,
    /// True if (conversation, sender, client_msg_id) was already stored within the dedupe window.
    pub duplicate: bool,
    /// Epoch of the conversation.
    pub epoch: u64,
    /// The stored message, for fan-out; `None` for duplicates (they were fanned out the first time).
    pub message: Option<Message>,
    /// The conversation's current members as of this append, sorted, when the store learnt them in the
    /// same step (the Redis script does, so the fan-out costs no second round trip); `None`: ask
    /// [`Store::members`].
    pub members: Option<Vec<String>>,
}

/// A membership change; applied together with the system message that records it, atomically.
#[derive(Debug, Clone)]
pub enum MembershipOp {
    /// Create a group owned by `owner` with `owner` and `members` as its members.
    Create {
        /// Group name.
        name: String,
        /// Creator and owner.
        owner: String,
        /// Other initial members (duplicates and the owner are ignored).
        members: Vec<String>,
    },
    /// `actor` adds `user`.
    Add {
        /// Who adds.
        actor: String,
        /// Who is added.
        user: String,
    },
    /// `actor` removes `user` (may be themselves: leaving).
    Remove {
        /// Who removes.
        actor: String,
        /// Who is removed.
        user: String,
    },
}

/// Durable facts about a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInfo {
    /// Direct or group.
    pub kind: ConversationKind,
    /// Group name (empty for direct conversations).
    pub name: String,
    /// Group owner (empty for direct conversations).
    pub owner: String,
    /// Highest durable seq.
    pub head_seq: u64,
    /// Epoch of the conversation.
    pub epoch: u64,
}

/// One user's membership in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// Lowest seq the user may read (the seq at which they joined; 1 for creators and direct chats).
    pub first_seq: u64,
    /// Seq of the system message that removed them; they may read up to and including it.
    pub left_seq: Option<u64>,
    /// The user's read cursor (MarkRead).
    pub read_seq: u64,
}

impl Membership {
    /// Whether the user is a current member.
    pub fn is_member(&self) -> bool {
        self.left_seq.is_none()
    }

    /// Highest seq this user may read given the conversation head.
    pub fn visible_head(&self, head_seq: u64) -> u64 {
        self.left_seq.map_or(head_seq, |left| left.min(head_seq))
    }
}

/// A page of changed conversations for Sync and HeartbeatAck.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncPage {
    /// Changed conversations, oldest change first, as they appear to the asking device.
    pub conversations: Vec<ConversationState>,
    /// Token to pass next time.
    pub next_token: u64,
    /// More changed conversations remain after this page.
    pub has_more: bool,
}

/// Storage failures. The server maps them onto wire codes (FORBIDDEN, NOT_FOUND, INVALID_ARGUMENT,
/// INTERNAL).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The conversation does not exist.
    #[error("conversation not found")]
    NotFound,
    /// The change is not allowed (not owner, not a member, user already a member, ...).
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// A value is invalid (e.g. adding a member that already is one).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The store is shutting down or its writer stopped; nothing was stored.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// An I/O or database error; nothing was acknowledged.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// An append that is queued; it resolves once the append is durable (or failed).
pub type PendingAppend = Pin<Box<dyn Future<Output = Result<Appended, StoreError>> + Send>>;

/// Counters of a store's write path (exported as metrics; the benchmark derives the mean batch size).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Durable commits (fsyncs, or pipelines for a networked store).
    pub commits: u64,
    /// Write requests those commits carried.
    pub requests: u64,
    /// Total time spent committing, in microseconds.
    pub commit_micros: u64,
}

/// Ferry's storage. All methods are safe to call concurrently; writes are serialized inside.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Epoch of the whole store; changes only if the store lost its history (FERRY-MSG-6).
    fn store_epoch(&self) -> u64;

    /// Write-path counters since the store was opened.
    fn write_stats(&self) -> WriteStats {
        WriteStats::default()
    }

    /// Appends a user message with dedupe, atomically and durably (see the crate docs).
    ///
    /// The membership check is part of the same atomic step: a sender who is not a current member is
    /// refused with [`StoreError::Forbidden`] (a missing conversation with [`StoreError::NotFound`]),
    /// nothing stored. Callers need no membership read of their own before a Send — on the Redis store
    /// that read would be a second round trip per send (the check lives in `lua/append.lua`).
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError>;

    /// Queues an append and returns as soon as it is queued: appends queued one after another (by one
    /// caller awaiting each call in turn) get increasing seqs in that order, while their commits are
    /// shared. This is how a stream pipelines Sends yet keeps their order (FERRY-SEND-8).
    ///
    /// The default waits for durability before returning — correct, but without pipelining; stores with
    /// a write queue override it.
    async fn queue_append(&self, message: NewMessage) -> Result<PendingAppend, StoreError> {
        let appended = self.append(message).await;
        Ok(Box::pin(std::future::ready(appended)))
    }

    /// Applies a membership change and appends its system message atomically and durably. For
    /// [`MembershipOp::Create`] `conversation` is the new group id. Returns the system message.
    async fn change_membership(
        &self,
        conversation: &str,
        op: MembershipOp,
        server_time_ms: u64,
    ) -> Result<Appended, StoreError>;

    /// Creates the direct conversation between `a` and `b` with both as members from seq 1, if it does not
    /// exist yet. Idempotent.
    async fn ensure_direct(&self, conversation: &str, a: &str, b: &str) -> Result<(), StoreError>;

    /// Conversation facts; `None` if it does not exist.
    async fn conversation(
        &self,
        conversation: &str,
    ) -> Result<Option<ConversationInfo>, StoreError>;

    /// A user's membership; `None` if they never were a member.
    async fn membership(
        &self,
        conversation: &str,
        user: &str,
    ) -> Result<Option<Membership>, StoreError>;

    /// Current members.
    async fn members(&self, conversation: &str) -> Result<Vec<String>, StoreError>;

    /// Messages with `after_seq < seq <= up_to_seq`, in seq order, at most `limit`. Only durable messages
    /// are ever returned, and never one above a missing seq.
    async fn read(
        &self,
        conversation: &str,
        after_seq: u64,
        up_to_seq: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;

    /// Records a device's cumulative delivery cursor (max with the stored one), clamped to the
    /// conversation's head: a device cannot acknowledge what was never stored. Nothing is recorded for a
    /// conversation that does not exist. May be made durable lazily: losing a cursor only causes
    /// redelivery, which clients drop as duplicates.
    async fn set_delivered(
        &self,
        conversation: &str,
        user: &str,
        device: &str,
        seq: u64,
    ) -> Result<(), StoreError>;

    /// Moves a user's read cursor forward to `seq`, clamped to the visible head; returns the new cursor.
    async fn set_read(&self, conversation: &str, user: &str, seq: u64) -> Result<u64, StoreError>;

    /// Conversations of `user` (including ones they were removed from) whose head, membership or read
    /// cursor changed after `since_token`, as seen by `device`; at most `limit`, oldest change first.
    async fn changed_since(
        &self,
        user: &str,
        device: &str,
        since_token: u64,
        limit: u32,
    ) -> Result<SyncPage, StoreError>;

    /// Stores the push registration of `device` of `user` durably, replacing the device's earlier one.
    /// A new device beyond [`MAX_PUSH_DEVICES_PER_USER`] is refused with [`StoreError::Invalid`].
    async fn put_push(
        &self,
        user: &str,
        device: &str,
        record: PushRecord,
    ) -> Result<(), StoreError>;

    /// Removes the push registration of `device` of `user` durably; whether there was one.
    async fn delete_push(&self, user: &str, device: &str) -> Result<bool, StoreError>;

    /// The push registrations of every device of `user`, by device id (sorted).
    async fn push_registrations(&self, user: &str)
        -> Result<Vec<(String, PushRecord)>, StoreError>;

    /// Revokes the tokens of `device` of `user` (of every device when `None`) issued at or before
    /// `at_s` (Unix seconds), durably and visible to every node sharing the store. The stamp only moves
    /// forward: an earlier `at_s` than the stored one changes nothing. Returns the stored stamp.
    async fn revoke_tokens(
        &self,
        user: &str,
        device: Option<&str>,
        at_s: u64,
    ) -> Result<u64, StoreError>;

    /// The revocation stamp that applies to `device` of `user` (the later of the user-wide one and the
    /// device's own; 0 when none): a token issued at or before it is refused.
    async fn tokens_revoked_at(&self, user: &str, device: &str) -> Result<u64, StoreError>;
}

//! The log record: everything one group commit changes, as absolute values.
//!
//! A group of write requests is validated against the in-memory state by the writer (`batch`), and its
//! effect is written to the log as one [`GroupRecord`]: the new messages, dedupe entries, whole
//! conversation and membership records, delivery cursors and the change counter. Every row carries the
//! value to store, never a delta, so applying a record twice (replay after a crash before the index
//! noted it) writes the same rows again: index writes are idempotent. Membership changes and
//! `ensure_direct` are rows of the same record as their system message, so they are as atomic and as
//! durable as the group itself.

use bytes::Bytes;

use super::tables::{ConvRecord, MemberRec};

/// One group commit's effect; the payload of one log frame (see `segment`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GroupRecord {
    /// New messages, each a prost-encoded `ferry_protocol::frame::Message`.
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<MessageRow>,
    /// Dedupe entries of the new messages.
    #[prost(message, repeated, tag = "2")]
    pub dedupe: Vec<DedupeRow>,
    /// Conversation records as they are after the group.
    #[prost(message, repeated, tag = "3")]
    pub convs: Vec<ConvRow>,
    /// Membership records as they are after the group.
    #[prost(message, repeated, tag = "4")]
    pub members: Vec<MemberRow>,
    /// Delivery cursors raised by the group.
    #[prost(message, repeated, tag = "5")]
    pub cursors: Vec<CursorRow>,
    /// The global change counter after the group.
    #[prost(uint64, tag = "6")]
    pub change: u64,
    /// Latest request time of the group: "now" for purging expired dedupe entries.
    #[prost(uint64, optional, tag = "7")]
    pub now_ms: Option<u64>,
}

/// `(conversation, seq)` → encoded message.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MessageRow {
    #[prost(string, tag = "1")]
    pub conv: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(bytes = "bytes", tag = "3")]
    pub message: Bytes,
}

/// `(conversation, sender, client_msg_id)` → `(seq, server_time_ms)`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DedupeRow {
    #[prost(string, tag = "1")]
    pub conv: String,
    #[prost(string, tag = "2")]
    pub sender: String,
    #[prost(string, tag = "3")]
    pub client_msg_id: String,
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    #[prost(uint64, tag = "5")]
    pub time_ms: u64,
}

/// A conversation record.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ConvRow {
    #[prost(string, tag = "1")]
    pub conv: String,
    #[prost(message, optional, tag = "2")]
    pub record: Option<ConvRecord>,
}

/// A membership record; `new` when the user joined the conversation for the first time (the
/// user → conversations index gains a row).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberRow {
    #[prost(string, tag = "1")]
    pub conv: String,
    #[prost(string, tag = "2")]
    pub user: String,
    #[prost(uint64, tag = "3")]
    pub first_seq: u64,
    /// 0 = not removed (seq 0 never exists).
    #[prost(uint64, tag = "4")]
    pub left_seq: u64,
    #[prost(uint64, tag = "5")]
    pub read_seq: u64,
    #[prost(uint64, tag = "6")]
    pub change_token: u64,
    #[prost(bool, tag = "7")]
    pub new: bool,
}

impl MemberRow {
    pub(crate) fn new(conv: String, user: String, rec: MemberRec, new: bool) -> Self {
        let (first_seq, left_seq, read_seq, change_token) = rec.to_row();
        MemberRow {
            conv,
            user,
            first_seq,
            left_seq,
            read_seq,
            change_token,
            new,
        }
    }

    pub(crate) fn rec(&self) -> MemberRec {
        MemberRec::from_row((
            self.first_seq,
            self.left_seq,
            self.read_seq,
            self.change_token,
        ))
    }
}

/// `(conversation, user, device)` → cumulative delivery cursor.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CursorRow {
    #[prost(string, tag = "1")]
    pub conv: String,
    #[prost(string, tag = "2")]
    pub user: String,
    #[prost(string, tag = "3")]
    pub device: String,
    #[prost(uint64, tag = "4")]
    pub seq: u64,
}

impl GroupRecord {
    /// Whether the group changed nothing (only duplicates, refusals, no-op cursor moves): such a group
    /// needs no log write, since everything it answers is already durable.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.dedupe.is_empty()
            && self.convs.is_empty()
            && self.members.is_empty()
            && self.cursors.is_empty()
    }
}

//! The redb tables of the embedded store and the encoding of their records.
//!
//! Keys are redb tuples so that related rows sit next to each other: a conversation's messages are
//! ordered by seq, a conversation's members are contiguous. Values are fixed-width tuples where the
//! record is a handful of integers, and a small prost message where it carries strings (so fields can
//! be added later without a migration).

use redb::TableDefinition;

/// `(conversation, seq)` → the prost-encoded `ferry_protocol::frame::Message`.
pub(crate) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

// Dedupe entries: `dedupe::DEDUPE_LOG` (append-only rows, looked up through memory; see `dedupe`).

/// `conversation` → prost-encoded [`ConvRecord`].
pub(crate) const CONVERSATIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("conversations");

/// `(conversation, user)` → [`MemberRec`] as `(first_seq, left_seq or 0, read_seq, change_token)`.
pub(crate) const MEMBERS: TableDefinition<(&str, &str), (u64, u64, u64, u64)> =
    TableDefinition::new("members");

/// `(user, conversation)` → `()`: every conversation a user ever belonged to (the Sync index).
pub(crate) const USER_CONVS: TableDefinition<(&str, &str), ()> = TableDefinition::new("user_convs");

/// `(conversation, user, device)` → the device's cumulative delivery cursor.
pub(crate) const CURSORS: TableDefinition<(&str, &str, &str), u64> =
    TableDefinition::new("cursors");

/// Named counters: [`META_EPOCH`], [`META_CHANGE`], [`META_SCHEMA`], [`META_LOG_APPLIED`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The store epoch, chosen at random when the database is created.
pub(crate) const META_EPOCH: &str = "epoch";
/// The global change counter behind Sync tokens.
pub(crate) const META_CHANGE: &str = "change";
/// The last log group whose rows are in the tables: the replay at start-up begins after it.
pub(crate) const META_LOG_APPLIED: &str = "log_applied";
/// Layout version of these tables.
pub(crate) const META_SCHEMA: &str = "schema";
/// The current layout version. 2: dedupe entries in `dedupe::DEDUPE_LOG` instead of a table keyed by
/// the id (1), which `dedupe::migrate_v1` converts at open.
pub(crate) const SCHEMA_VERSION: u64 = 2;

/// Durable facts about a conversation (also its in-memory cache entry).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct ConvRecord {
    /// `ConversationKind` as its wire value.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// Group name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Group owner; empty for direct conversations and for groups whose owner left.
    #[prost(string, tag = "3")]
    pub owner: String,
    /// Highest durable seq.
    #[prost(uint64, tag = "4")]
    pub head: u64,
    /// Change counter value of the last append or membership change.
    #[prost(uint64, tag = "5")]
    pub last_change: u64,
}

/// One user's membership (also its in-memory cache entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberRec {
    pub first_seq: u64,
    pub left_seq: Option<u64>,
    pub read_seq: u64,
    /// Change counter value of the last change to this membership or read cursor.
    pub change_token: u64,
}

impl MemberRec {
    /// Not removed.
    pub fn is_member(self) -> bool {
        self.left_seq.is_none()
    }

    /// The table value. `left_seq` 0 means "not removed": seq 0 never exists.
    pub fn to_row(self) -> (u64, u64, u64, u64) {
        (
            self.first_seq,
            self.left_seq.unwrap_or(0),
            self.read_seq,
            self.change_token,
        )
    }

    /// Inverse of [`MemberRec::to_row`].
    pub fn from_row((first_seq, left, read_seq, change_token): (u64, u64, u64, u64)) -> Self {
        MemberRec {
            first_seq,
            left_seq: (left != 0).then_some(left),
            read_seq,
            change_token,
        }
    }

    /// The trait's view of it.
    pub fn membership(self) -> crate::Membership {
        crate::Membership {
            first_seq: self.first_seq,
            left_seq: self.left_seq,
            read_seq: self.read_seq,
        }
    }
}

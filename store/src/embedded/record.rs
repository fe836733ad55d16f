//! The log record: everything one group commit changes, as absolute values.
//!
//! A group of write requests is validated against the in-memory state by the writer (`batch`), and its
//! effect is written to the log as one [`GroupRecord`]: the new messages, dedupe entries, whole
//! conversation and membership records, delivery cursors and the change counter. Every row carries the
//! value to store, never a delta, so applying a record twice (replay after a crash before the index
//! noted it) writes the same rows again: index writes are idempotent. Membership changes and
//! `ensure_direct` are rows of the same record as their system message, so they are as atomic and as
//! durable as the group itself.
//!
//! Text fields (conversation, user, device, sender, client_msg_id) are held as [`Bytes`], not
//! `String`: the wire encoding of the two is the same, and decoding from the frame's buffer then
//! slices it instead of allocating a string per field. At start-up the replay decodes every record of
//! the log tail — millions of fields — and those allocations were most of its cost. A decoded record
//! is checked once ([`GroupRecord::decode_checked`]), so the accessors can hand out `&str`.

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
    #[prost(bytes = "bytes", tag = "1")]
    pub conv: Bytes,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(bytes = "bytes", tag = "3")]
    pub message: Bytes,
}

/// `(conversation, sender, client_msg_id)` → `(seq, server_time_ms)`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DedupeRow {
    #[prost(bytes = "bytes", tag = "1")]
    pub conv: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub sender: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub client_msg_id: Bytes,
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    #[prost(uint64, tag = "5")]
    pub time_ms: u64,
}

/// A conversation record.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ConvRow {
    #[prost(bytes = "bytes", tag = "1")]
    pub conv: Bytes,
    #[prost(message, optional, tag = "2")]
    pub record: Option<ConvRecord>,
}

/// A membership record; `new` when the user joined the conversation for the first time (the
/// user → conversations index gains a row).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberRow {
    #[prost(bytes = "bytes", tag = "1")]
    pub conv: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub user: Bytes,
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
            conv: conv.into(),
            user: user.into(),
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
    #[prost(bytes = "bytes", tag = "1")]
    pub conv: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub user: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub device: Bytes,
    #[prost(uint64, tag = "4")]
    pub seq: u64,
}

/// The text of a field that was checked to be UTF-8 (built from a `String`, or decoded by
/// [`GroupRecord::decode_checked`] / [`checked_text`]); never falls back in practice.
fn text(bytes: &Bytes) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// The bytes of a text field, for building rows from borrowed strings (tests, migration).
pub(crate) fn text_bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Fails unless every field in `fields` is UTF-8, naming the first that is not.
pub(crate) fn checked_text<'a>(
    fields: impl IntoIterator<Item = (&'static str, &'a Bytes)>,
) -> Result<(), String> {
    for (name, field) in fields {
        if std::str::from_utf8(field).is_err() {
            return Err(format!("{name} is not UTF-8"));
        }
    }
    Ok(())
}

impl MessageRow {
    pub(crate) fn conv(&self) -> &str {
        text(&self.conv)
    }
}

impl DedupeRow {
    pub(crate) fn conv(&self) -> &str {
        text(&self.conv)
    }

    pub(crate) fn sender(&self) -> &str {
        text(&self.sender)
    }

    pub(crate) fn client_msg_id(&self) -> &str {
        text(&self.client_msg_id)
    }

    /// The text fields, for [`checked_text`].
    pub(crate) fn texts(&self) -> [(&'static str, &Bytes); 3] {
        [
            ("dedupe conversation", &self.conv),
            ("dedupe sender", &self.sender),
            ("dedupe client_msg_id", &self.client_msg_id),
        ]
    }
}

impl ConvRow {
    pub(crate) fn conv(&self) -> &str {
        text(&self.conv)
    }
}

impl MemberRow {
    pub(crate) fn conv(&self) -> &str {
        text(&self.conv)
    }

    pub(crate) fn user(&self) -> &str {
        text(&self.user)
    }
}

impl CursorRow {
    pub(crate) fn conv(&self) -> &str {
        text(&self.conv)
    }

    pub(crate) fn user(&self) -> &str {
        text(&self.user)
    }

    pub(crate) fn device(&self) -> &str {
        text(&self.device)
    }
}

impl GroupRecord {
    /// Decodes a log frame's payload, slicing the text fields out of `payload` (no allocation per
    /// field), and checks that every text field is UTF-8.
    pub(crate) fn decode_checked(payload: Bytes) -> Result<GroupRecord, String> {
        let record = <GroupRecord as prost::Message>::decode(payload).map_err(|e| e.to_string())?;
        let messages = record
            .messages
            .iter()
            .map(|r| ("message conversation", &r.conv));
        let dedupe = record.dedupe.iter().flat_map(DedupeRow::texts);
        let convs = record.convs.iter().map(|r| ("conversation", &r.conv));
        let members = record
            .members
            .iter()
            .flat_map(|r| [("member conversation", &r.conv), ("member user", &r.user)]);
        let cursors = record.cursors.iter().flat_map(|r| {
            [
                ("cursor conversation", &r.conv),
                ("cursor user", &r.user),
                ("cursor device", &r.device),
            ]
        });
        checked_text(
            messages
                .chain(dedupe)
                .chain(convs)
                .chain(members)
                .chain(cursors),
        )?;
        Ok(record)
    }

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

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn record() -> GroupRecord {
        GroupRecord {
            messages: vec![MessageRow {
                conv: text_bytes("d:alice:bob"),
                seq: 7,
                message: Bytes::from_static(b"body"),
            }],
            dedupe: vec![DedupeRow {
                conv: text_bytes("d:alice:bob"),
                sender: text_bytes("alice"),
                client_msg_id: text_bytes("0190-id"),
                seq: 7,
                time_ms: 5,
            }],
            ..GroupRecord::default()
        }
    }

    #[test]
    fn decoding_slices_the_text_fields_out_of_the_payload() {
        let payload = Bytes::from(record().encode_to_vec());
        let range = payload.as_ptr_range();
        let decoded = GroupRecord::decode_checked(payload.clone()).unwrap();
        assert_eq!(decoded, record());
        let row = &decoded.dedupe[0];
        assert_eq!(
            (row.conv(), row.sender(), row.client_msg_id()),
            ("d:alice:bob", "alice", "0190-id")
        );
        // No copy: the field points into the frame's buffer.
        assert!(range.contains(&row.client_msg_id.as_ptr()));
    }

    #[test]
    fn a_text_field_that_is_not_utf8_is_refused_by_name() {
        let mut bad = record();
        bad.dedupe[0].sender = Bytes::from_static(&[0xff, 0xfe]);
        let err = GroupRecord::decode_checked(Bytes::from(bad.encode_to_vec())).unwrap_err();
        assert_eq!(err, "dedupe sender is not UTF-8");
        let mut bad = record();
        bad.messages[0].conv = Bytes::from_static(&[0xc3]);
        let err = GroupRecord::decode_checked(Bytes::from(bad.encode_to_vec())).unwrap_err();
        assert_eq!(err, "message conversation is not UTF-8");
    }

    #[test]
    fn records_written_with_string_fields_still_decode() {
        // The log of an older build: the same fields declared as `string` (same wire encoding).
        #[derive(Clone, PartialEq, prost::Message)]
        struct OldRow {
            #[prost(string, tag = "1")]
            conv: String,
            #[prost(uint64, tag = "2")]
            seq: u64,
            #[prost(bytes = "vec", tag = "3")]
            message: Vec<u8>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct OldRecord {
            #[prost(message, repeated, tag = "1")]
            messages: Vec<OldRow>,
        }
        let old = OldRecord {
            messages: vec![OldRow {
                conv: "g:team".into(),
                seq: 3,
                message: b"m".to_vec(),
            }],
        };
        let decoded = GroupRecord::decode_checked(Bytes::from(old.encode_to_vec())).unwrap();
        assert_eq!(
            (decoded.messages[0].conv(), decoded.messages[0].seq),
            ("g:team", 3)
        );
    }
}

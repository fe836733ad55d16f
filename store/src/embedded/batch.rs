//! One batch of writes: the requests' logic, applied to an overlay on top of the cache.
//!
//! Requests are applied in arrival order, so a later request sees what an earlier one did (two appends
//! with the same client_msg_id: the second is a duplicate). Validation happens before anything is
//! recorded, so a refused request leaves no trace. Changes are buffered here, once per key, and become
//! the group's log record (`record`) at the end.

use std::collections::{HashMap, HashSet};

use ferry_protocol::frame::{
    ConversationKind, MembershipAction, MembershipChange, Message, MessageKind,
};
use prost::Message as _;

use super::cache::Cache;
use super::dedupe::DedupeIndex;
use super::record::{ConvRow, CursorRow, DedupeRow, GroupRecord, MemberRow, MessageRow};
use super::tables::*;
use super::tail::Tail;
use crate::{Appended, MembershipOp, NewMessage, StoreError};

type DedupeKey = (String, String, String);

/// foldhash instead of SipHash: the writer hashes several keys per request, and SipHash showed in its
/// profile under load (as in the tail, nobody who could choose colliding keys sees the hashes).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The uncommitted changes of one batch, layered over the cache.
pub(crate) struct Batch<'c> {
    cache: &'c Cache,
    epoch: u64,
    dedupe_window_ms: u64,
    pub(crate) convs: Map<String, ConvRecord>,
    /// conversation → user → membership as the batch leaves it. Nested, so that the lookups every
    /// append makes (the sender's membership, twice) borrow the names instead of allocating a key.
    pub(crate) members: Map<String, Map<String, MemberRec>>,
    /// Memberships created in this batch (for the user_convs index).
    new_members: Vec<(String, String)>,
    messages: Vec<((String, u64), Vec<u8>)>,
    dedupe: Map<DedupeKey, (u64, u64)>,
    cursors: Map<(String, String, String), u64>,
    pub(crate) change: u64,
    pub(crate) appended: u64,
    pub(crate) duplicates: u64,
    /// Latest request time seen: "now" for purging expired dedupe entries.
    now_ms: Option<u64>,
}

impl<'c> Batch<'c> {
    pub(crate) fn new(cache: &'c Cache, epoch: u64, dedupe_window_ms: u64) -> Self {
        Batch {
            cache,
            epoch,
            dedupe_window_ms,
            convs: Map::default(),
            members: Map::default(),
            new_members: Vec::new(),
            messages: Vec::new(),
            dedupe: Map::default(),
            cursors: Map::default(),
            change: cache.change,
            appended: 0,
            duplicates: 0,
            now_ms: None,
        }
    }

    fn conv(&self, conv: &str) -> Option<ConvRecord> {
        self.convs
            .get(conv)
            .or_else(|| self.cache.convs.get(conv))
            .cloned()
    }

    /// The head of `conv` as this batch sees it, without cloning the whole record.
    fn head(&self, conv: &str) -> Option<u64> {
        self.convs
            .get(conv)
            .or_else(|| self.cache.convs.get(conv))
            .map(|record| record.head)
    }

    fn member(&self, conv: &str, user: &str) -> Option<MemberRec> {
        self.members
            .get(conv)
            .and_then(|users| users.get(user))
            .copied()
            .or_else(|| self.cache.member(conv, user))
    }

    fn put_member(&mut self, conv: &str, user: &str, rec: MemberRec) {
        if self.member(conv, user).is_none() {
            self.new_members.push((conv.to_owned(), user.to_owned()));
        }
        let users = match self.members.get_mut(conv) {
            Some(users) => users,
            None => self.members.entry(conv.to_owned()).or_default(),
        };
        match users.get_mut(user) {
            Some(held) => *held = rec,
            None => {
                users.insert(user.to_owned(), rec);
            }
        }
    }

    fn next_change(&mut self) -> u64 {
        self.change += 1;
        self.change
    }

    fn saw_time(&mut self, time_ms: u64) {
        self.now_ms = Some(self.now_ms.map_or(time_ms, |now| now.max(time_ms)));
    }

    /// Stores `message` as the next seq of `conv` (whose record the caller holds) and returns it.
    fn push_message(
        &mut self,
        conv: &str,
        record: &mut ConvRecord,
        mut message: Message,
    ) -> Message {
        record.head += 1;
        record.last_change = self.next_change();
        message.seq = record.head;
        self.messages
            .push(((conv.to_owned(), message.seq), message.encode_to_vec()));
        message
    }

    pub(crate) fn append(
        &mut self,
        lookup: &Lookup<'_>,
        new: NewMessage,
    ) -> Result<Result<Appended, StoreError>, redb::Error> {
        self.saw_time(new.server_time_ms);
        let key = (new.conversation, new.sender, new.client_msg_id);
        let previous = match self.dedupe.get(&key) {
            Some(&hit) => Some(hit),
            None => lookup.dedupe((key.0.as_str(), key.1.as_str(), key.2.as_str()))?,
        };
        if let Some((seq, time)) = previous {
            // Younger than the window → duplicate; older ones count as absent (purged lazily).
            if new.server_time_ms.saturating_sub(time) < self.dedupe_window_ms {
                self.duplicates += 1;
                return Ok(Ok(Appended {
                    seq,
                    server_time_ms: time,
                    duplicate: true,
                    epoch: self.epoch,
                    message: None,
                    members: None,
                }));
            }
        }
        let (conv, sender, client_msg_id) = key;
        let Some(mut record) = self.conv(&conv) else {
            return Ok(Err(StoreError::NotFound));
        };
        let Some(mut membership) = self.member(&conv, &sender).filter(|m| m.is_member()) else {
            return Ok(Err(StoreError::Forbidden(
                "sender is not a member".to_owned(),
            )));
        };
        let message = self.push_message(
            &conv,
            &mut record,
            Message {
                seq: 0,
                sender: sender.clone(),
                sender_device: new.sender_device,
                client_msg_id: client_msg_id.clone(),
                body: new.body,
                server_time_ms: new.server_time_ms,
                kind: MessageKind::User as i32,
                membership: None,
            },
        );
        // Sending marks read (DECISIONS.md "Read cursors"); Sync sees it through conv.last_change.
        membership.read_seq = membership.read_seq.max(message.seq);
        self.put_member(&conv, &sender, membership);
        self.dedupe.insert(
            (conv.clone(), sender, client_msg_id),
            (message.seq, new.server_time_ms),
        );
        self.convs.insert(conv, record);
        self.appended += 1;
        Ok(Ok(Appended {
            seq: message.seq,
            server_time_ms: message.server_time_ms,
            duplicate: false,
            epoch: self.epoch,
            message: Some(message),
            members: None,
        }))
    }

    pub(crate) fn change_membership(
        &mut self,
        conv: &str,
        op: MembershipOp,
        server_time_ms: u64,
    ) -> Result<Appended, StoreError> {
        self.saw_time(server_time_ms);
        // The system message recording a change; its sender is the acting user.
        let system =
            |action: MembershipAction, actor: &str, users: Vec<String>, name: String| Message {
                seq: 0,
                sender: actor.to_owned(),
                sender_device: String::new(),
                client_msg_id: String::new(),
                body: Default::default(),
                server_time_ms,
                kind: MessageKind::System as i32,
                membership: Some(MembershipChange {
                    action: action as i32,
                    actor: actor.to_owned(),
                    users,
                    name,
                }),
            };
        let existing = self.conv(conv);
        let message = match op {
            MembershipOp::Create {
                name,
                owner,
                members,
            } => {
                if existing.is_some() {
                    return Err(StoreError::Invalid("conversation already exists".into()));
                }
                let mut users = vec![owner.clone()];
                for member in members {
                    if !users.contains(&member) {
                        users.push(member);
                    }
                }
                let mut record = ConvRecord {
                    kind: ConversationKind::Group as i32,
                    name: name.clone(),
                    owner: owner.clone(),
                    head: 0,
                    last_change: 0,
                };
                let message = self.push_message(
                    conv,
                    &mut record,
                    system(MembershipAction::Created, &owner, users.clone(), name),
                );
                for user in &users {
                    let rec = MemberRec {
                        first_seq: 1,
                        left_seq: None,
                        read_seq: 0,
                        change_token: record.last_change,
                    };
                    self.put_member(conv, user, rec);
                }
                self.convs.insert(conv.to_owned(), record);
                message
            }
            MembershipOp::Add { actor, user } => {
                let mut record = existing.ok_or(StoreError::NotFound)?;
                if record.kind != ConversationKind::Group as i32 {
                    return Err(StoreError::Forbidden("not a group".into()));
                }
                if record.owner.is_empty() || record.owner != actor {
                    return Err(StoreError::Forbidden("only the owner may add".into()));
                }
                if self.member(conv, &user).is_some_and(|m| m.is_member()) {
                    return Err(StoreError::Invalid("already a member".into()));
                }
                let message = self.push_message(
                    conv,
                    &mut record,
                    system(
                        MembershipAction::Added,
                        &actor,
                        vec![user.clone()],
                        String::new(),
                    ),
                );
                // A re-added user starts over: they see the ADDED message and what follows. Their read
                // cursor starts just below it, so unread counts only what they can read (FERRY-READ-3).
                let rec = MemberRec {
                    first_seq: message.seq,
                    left_seq: None,
                    read_seq: message.seq - 1,
                    change_token: record.last_change,
                };
                self.put_member(conv, &user, rec);
                self.convs.insert(conv.to_owned(), record);
                message
            }
            MembershipOp::Remove { actor, user } => {
                let mut record = existing.ok_or(StoreError::NotFound)?;
                if record.kind != ConversationKind::Group as i32 {
                    return Err(StoreError::Forbidden("not a group".into()));
                }
                if actor != user && (record.owner.is_empty() || record.owner != actor) {
                    return Err(StoreError::Forbidden(
                        "only the owner may remove others".into(),
                    ));
                }
                let Some(mut rec) = self.member(conv, &user).filter(|m| m.is_member()) else {
                    return Err(StoreError::Invalid("not a member".into()));
                };
                let message = self.push_message(
                    conv,
                    &mut record,
                    system(
                        MembershipAction::Removed,
                        &actor,
                        vec![user.clone()],
                        String::new(),
                    ),
                );
                rec.left_seq = Some(message.seq);
                rec.change_token = record.last_change;
                self.put_member(conv, &user, rec);
                if record.owner == user {
                    record.owner.clear();
                }
                self.convs.insert(conv.to_owned(), record);
                message
            }
        };
        Ok(Appended {
            seq: message.seq,
            server_time_ms,
            duplicate: false,
            epoch: self.epoch,
            message: Some(message),
            members: None,
        })
    }

    pub(crate) fn ensure_direct(&mut self, conv: &str, a: &str, b: &str) {
        if self.conv(conv).is_some() {
            return;
        }
        let change = self.next_change();
        for user in [a, b] {
            let rec = MemberRec {
                first_seq: 1,
                left_seq: None,
                read_seq: 0,
                change_token: change,
            };
            self.put_member(conv, user, rec);
        }
        let record = ConvRecord {
            kind: ConversationKind::Direct as i32,
            name: String::new(),
            owner: String::new(),
            head: 0,
            last_change: change,
        };
        self.convs.insert(conv.to_owned(), record);
    }

    pub(crate) fn set_delivered(
        &mut self,
        lookup: &Lookup<'_>,
        key: (String, String, String),
        seq: u64,
    ) -> Result<(), redb::Error> {
        // Clamped here rather than by the caller, so an Ack costs one trip to the writer and no
        // separate head lookup; a cursor of an unknown conversation is not stored at all.
        let Some(seq) = self.head(&key.0).map(|head| seq.min(head)) else {
            return Ok(());
        };
        let old = match self.cursors.get(&key) {
            Some(&old) => old,
            None => lookup.cursor((key.0.as_str(), key.1.as_str(), key.2.as_str()))?,
        };
        if seq > old {
            self.cursors.insert(key, seq);
        }
        Ok(())
    }

    pub(crate) fn set_read(&mut self, conv: &str, user: &str, seq: u64) -> Result<u64, StoreError> {
        let record = self.conv(conv).ok_or(StoreError::NotFound)?;
        let mut rec = self
            .member(conv, user)
            .ok_or_else(|| StoreError::Forbidden("not a member".into()))?;
        let new = seq.min(rec.membership().visible_head(record.head));
        if new > rec.read_seq {
            rec.read_seq = new;
            rec.change_token = self.next_change();
            self.put_member(conv, user, rec);
        }
        Ok(rec.read_seq)
    }

    /// The group's effect as a log record (rows once per key, messages in (conversation, seq) order).
    pub(crate) fn into_record(mut self) -> GroupRecord {
        self.messages.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let new_members: HashSet<(String, String)> = self.new_members.into_iter().collect();
        GroupRecord {
            messages: self
                .messages
                .into_iter()
                .map(|((conv, seq), bytes)| MessageRow {
                    conv: conv.into(),
                    seq,
                    message: bytes.into(),
                })
                .collect(),
            dedupe: self
                .dedupe
                .into_iter()
                .map(
                    |((conv, sender, client_msg_id), (seq, time_ms))| DedupeRow {
                        conv: conv.into(),
                        sender: sender.into(),
                        client_msg_id: client_msg_id.into(),
                        seq,
                        time_ms,
                    },
                )
                .collect(),
            convs: self
                .convs
                .into_iter()
                .map(|(conv, record)| ConvRow {
                    conv: conv.into(),
                    record: Some(record),
                })
                .collect(),
            members: self
                .members
                .into_iter()
                .flat_map(|(conv, users)| {
                    users
                        .into_iter()
                        .map(move |(user, rec)| ((conv.clone(), user), rec))
                })
                .map(|(key, rec)| {
                    let new = new_members.contains(&key);
                    MemberRow::new(key.0, key.1, rec, new)
                })
                .collect(),
            cursors: self
                .cursors
                .into_iter()
                .map(|((conv, user, device), seq)| CursorRow {
                    conv: conv.into(),
                    user: user.into(),
                    device: device.into(),
                    seq,
                })
                .collect(),
            change: self.change,
            now_ms: self.now_ms,
        }
    }
}

/// Where a batch looks up rows that are not hot state: dedupe candidates in the dedupe index, checked
/// against the stored message; cursors in the unindexed tail, then the index.
///
/// The index snapshot must be taken while the tail is locked (see `tail`), so that a row the indexer
/// moves out of the tail is in the snapshot.
pub(crate) struct Lookup<'a> {
    pub tail: &'a Tail,
    pub dedupe: &'a DedupeIndex,
    pub messages: redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    pub cursors: redb::ReadOnlyTable<(&'static str, &'static str, &'static str), u64>,
}

impl Lookup<'_> {
    /// The `(seq, time)` of the stored message with this key, if the dedupe index knows one. Each
    /// candidate is confirmed by reading its message: a miss costs no I/O, a hit one read.
    fn dedupe(
        &self,
        (conv, sender, cmid): (&str, &str, &str),
    ) -> Result<Option<(u64, u64)>, redb::Error> {
        for (seq, time) in self.dedupe.candidates(conv, sender, cmid) {
            let stored = match self
                .tail
                .messages(conv, seq.saturating_sub(1), seq, 1)
                .pop()
            {
                Some((_, bytes)) => Some(bytes),
                None => self
                    .messages
                    .get((conv, seq))?
                    .map(|guard| bytes::Bytes::copy_from_slice(guard.value())),
            };
            let Some(stored) = stored else {
                continue; // a candidate of another conversation whose seq this one lacks
            };
            let message = Message::decode(stored)
                .map_err(|e| redb::Error::Corrupted(format!("stored message: {e}")))?;
            if message.sender == sender && message.client_msg_id == cmid {
                return Ok(Some((seq, time)));
            }
        }
        Ok(None)
    }

    fn cursor(&self, (conv, user, device): (&str, &str, &str)) -> Result<u64, redb::Error> {
        let indexed = self
            .cursors
            .get((conv, user, device))?
            .map_or(0, |guard| guard.value());
        Ok(self
            .tail
            .cursor(conv, user, device)
            .unwrap_or(0)
            .max(indexed))
    }
}

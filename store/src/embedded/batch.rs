//! One batch of writes: the requests' logic, applied to an overlay on top of the cache.
//!
//! Requests are applied in arrival order, so a later request sees what an earlier one did (two appends
//! with the same client_msg_id: the second is a duplicate). Validation happens before anything is
//! recorded, so a refused request leaves no trace. Table writes are buffered here and written once per
//! key at the end, messages sorted by (conversation, seq), with each table opened once per transaction.

use std::collections::HashMap;

use ferry_protocol::frame::{
    ConversationKind, MembershipAction, MembershipChange, Message, MessageKind,
};
use prost::Message as _;
use redb::ReadableTable;

use super::cache::Cache;
use super::tables::*;
use crate::{Appended, MembershipOp, NewMessage, StoreError};

/// Most expired dedupe entries purged per batch, so purging never makes a commit noticeably longer.
const PURGE_PER_BATCH: usize = 1000;

type DedupeKey = (String, String, String);

/// The uncommitted changes of one batch, layered over the cache.
pub(crate) struct Batch<'c> {
    cache: &'c Cache,
    epoch: u64,
    dedupe_window_ms: u64,
    pub(crate) convs: HashMap<String, ConvRecord>,
    pub(crate) members: HashMap<(String, String), MemberRec>,
    /// Memberships created in this batch (for the user_convs index).
    new_members: Vec<(String, String)>,
    messages: Vec<((String, u64), Vec<u8>)>,
    dedupe: HashMap<DedupeKey, (u64, u64)>,
    cursors: HashMap<(String, String, String), u64>,
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
            convs: HashMap::new(),
            members: HashMap::new(),
            new_members: Vec::new(),
            messages: Vec::new(),
            dedupe: HashMap::new(),
            cursors: HashMap::new(),
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

    fn member(&self, conv: &str, user: &str) -> Option<MemberRec> {
        self.members
            .get(&(conv.to_owned(), user.to_owned()))
            .copied()
            .or_else(|| self.cache.member(conv, user))
    }

    fn put_member(&mut self, conv: &str, user: &str, rec: MemberRec) {
        if self.member(conv, user).is_none() {
            self.new_members.push((conv.to_owned(), user.to_owned()));
        }
        self.members.insert((conv.to_owned(), user.to_owned()), rec);
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
        tables: &Tables<'_>,
        new: NewMessage,
    ) -> Result<Result<Appended, StoreError>, redb::Error> {
        self.saw_time(new.server_time_ms);
        let key = (new.conversation, new.sender, new.client_msg_id);
        let previous = match self.dedupe.get(&key) {
            Some(&hit) => Some(hit),
            None => tables
                .dedupe
                .get((key.0.as_str(), key.1.as_str(), key.2.as_str()))?
                .map(|guard| guard.value()),
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
        tables: &Tables<'_>,
        key: (String, String, String),
        seq: u64,
    ) -> Result<(), redb::Error> {
        let old = match self.cursors.get(&key) {
            Some(&old) => old,
            None => tables
                .cursors
                .get((key.0.as_str(), key.1.as_str(), key.2.as_str()))?
                .map_or(0, |guard| guard.value()),
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

    /// Writes the buffered changes, once per key and in key order.
    pub(crate) fn write(&mut self, tables: &mut Tables<'_>) -> Result<(), redb::Error> {
        self.messages.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((conv, seq), bytes) in &self.messages {
            tables
                .messages
                .insert((conv.as_str(), *seq), bytes.as_slice())?;
        }
        for ((conv, sender, cmid), &(seq, time)) in &self.dedupe {
            tables
                .dedupe
                .insert((conv.as_str(), sender.as_str(), cmid.as_str()), (seq, time))?;
            tables
                .dedupe_by_time
                .insert((time, conv.as_str(), sender.as_str(), cmid.as_str()), ())?;
        }
        for (conv, record) in &self.convs {
            tables
                .conversations
                .insert(conv.as_str(), record.encode_to_vec().as_slice())?;
        }
        for ((conv, user), rec) in &self.members {
            tables
                .members
                .insert((conv.as_str(), user.as_str()), rec.to_row())?;
        }
        for (conv, user) in &self.new_members {
            tables
                .user_convs
                .insert((user.as_str(), conv.as_str()), ())?;
        }
        for ((conv, user, device), &seq) in &self.cursors {
            tables
                .cursors
                .insert((conv.as_str(), user.as_str(), device.as_str()), seq)?;
        }
        if self.change != self.cache.change {
            tables.meta.insert(META_CHANGE, self.change)?;
        }
        Ok(())
    }

    /// Removes up to [`PURGE_PER_BATCH`] dedupe entries older than the window, oldest first.
    pub(crate) fn purge_expired(&self, tables: &mut Tables<'_>) -> Result<(), redb::Error> {
        let Some(now) = self.now_ms else {
            return Ok(());
        };
        let Some(cutoff) = now.checked_sub(self.dedupe_window_ms) else {
            return Ok(());
        };
        let mut expired = Vec::new();
        for row in tables.dedupe_by_time.iter()?.take(PURGE_PER_BATCH) {
            let (key, _) = row?;
            let (time, conv, sender, cmid) = key.value();
            if time > cutoff {
                break;
            }
            expired.push((time, conv.to_owned(), sender.to_owned(), cmid.to_owned()));
        }
        for (time, conv, sender, cmid) in &expired {
            tables
                .dedupe_by_time
                .remove((*time, conv.as_str(), sender.as_str(), cmid.as_str()))?;
            let key = (conv.as_str(), sender.as_str(), cmid.as_str());
            // The id may have been reused after expiry; that newer entry stays.
            let current = tables.dedupe.get(key)?.map(|guard| guard.value());
            if current.is_some_and(|(_, stored)| stored == *time) {
                tables.dedupe.remove(key)?;
            }
        }
        Ok(())
    }
}

/// Every table, opened once per transaction.
pub(crate) struct Tables<'txn> {
    messages: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    dedupe: redb::Table<'txn, (&'static str, &'static str, &'static str), (u64, u64)>,
    dedupe_by_time: redb::Table<'txn, (u64, &'static str, &'static str, &'static str), ()>,
    conversations: redb::Table<'txn, &'static str, &'static [u8]>,
    members: redb::Table<'txn, (&'static str, &'static str), (u64, u64, u64, u64)>,
    user_convs: redb::Table<'txn, (&'static str, &'static str), ()>,
    cursors: redb::Table<'txn, (&'static str, &'static str, &'static str), u64>,
    meta: redb::Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Tables {
            messages: txn.open_table(MESSAGES)?,
            dedupe: txn.open_table(DEDUPE)?,
            dedupe_by_time: txn.open_table(DEDUPE_BY_TIME)?,
            conversations: txn.open_table(CONVERSATIONS)?,
            members: txn.open_table(MEMBERS)?,
            user_convs: txn.open_table(USER_CONVS)?,
            cursors: txn.open_table(CURSORS)?,
            meta: txn.open_table(META)?,
        })
    }
}

//! The in-memory copy of the hot state: conversation records and memberships.
//!
//! It is loaded from the tables at open, brought up to date with the log tail by the replay, and
//! afterwards changed only by the writer thread, and only after the log frame holding the change is
//! durable. Readers therefore never see uncommitted state, and the
//! hot path (membership checks, heads, Sync) never touches redb.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redb::{ReadableDatabase, ReadableTable};

use super::record::GroupRecord;
use super::tables::{ConvRecord, MemberRec, CONVERSATIONS, MEMBERS};

/// Committed hot state.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// conversation → record.
    pub convs: HashMap<String, ConvRecord>,
    /// conversation → user → membership (including removed members).
    pub members: HashMap<String, BTreeMap<String, MemberRec>>,
    /// user → conversations they ever belonged to.
    pub user_convs: HashMap<String, BTreeSet<String>>,
    /// The committed value of the global change counter.
    pub change: u64,
}

impl Cache {
    /// Loads every conversation and membership. Linear in their number, once per start.
    pub fn load(db: &redb::Database, change: u64) -> Result<Cache, redb::Error> {
        let txn = db.begin_read()?;
        let mut cache = Cache {
            change,
            ..Cache::default()
        };
        for row in txn.open_table(CONVERSATIONS)?.iter()? {
            let (key, value) = row?;
            let record = <ConvRecord as prost::Message>::decode(value.value())
                .map_err(|e| redb::Error::Corrupted(format!("conversation record: {e}")))?;
            cache.convs.insert(key.value().to_owned(), record);
        }
        for row in txn.open_table(MEMBERS)?.iter()? {
            let (key, value) = row?;
            let (conv, user) = key.value();
            cache.insert_member(conv, user, MemberRec::from_row(value.value()));
        }
        Ok(cache)
    }

    /// Takes in a durable group's hot state (the writer after its fsync, the replay at start-up).
    pub fn apply(&mut self, record: &GroupRecord) {
        for row in &record.convs {
            let conv_record = row.record.clone().unwrap_or_default();
            match self.convs.get_mut(row.conv()) {
                Some(existing) => *existing = conv_record,
                None => {
                    self.convs.insert(row.conv().to_owned(), conv_record);
                }
            }
        }
        for row in &record.members {
            self.insert_member(row.conv(), row.user(), row.rec());
        }
        self.change = self.change.max(record.change);
    }

    pub fn member(&self, conv: &str, user: &str) -> Option<MemberRec> {
        self.members.get(conv)?.get(user).copied()
    }

    /// Sets a membership. Nearly every call updates an existing one (a sender's read cursor moves with
    /// each group), so the keys are cloned only when an entry is new.
    pub fn insert_member(&mut self, conv: &str, user: &str, rec: MemberRec) {
        let members = match self.members.get_mut(conv) {
            Some(members) => members,
            None => self.members.entry(conv.to_owned()).or_default(),
        };
        match members.get_mut(user) {
            Some(existing) => {
                *existing = rec;
                return;
            }
            None => {
                members.insert(user.to_owned(), rec);
            }
        }
        let convs = self.user_convs.entry(user.to_owned()).or_default();
        if !convs.contains(conv) {
            convs.insert(conv.to_owned());
        }
    }
}

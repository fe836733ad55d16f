//! The in-memory copy of the hot state: conversation records and memberships.
//!
//! It is loaded from the tables at open and afterwards changed only by the writer thread, and only after
//! the transaction holding the change committed. Readers therefore never see uncommitted state, and the
//! hot path (membership checks, heads, Sync) never touches redb.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redb::{ReadableDatabase, ReadableTable};

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

    pub fn member(&self, conv: &str, user: &str) -> Option<MemberRec> {
        self.members.get(conv)?.get(user).copied()
    }

    pub fn insert_member(&mut self, conv: &str, user: &str, rec: MemberRec) {
        self.members
            .entry(conv.to_owned())
            .or_default()
            .insert(user.to_owned(), rec);
        let convs = self.user_convs.entry(user.to_owned()).or_default();
        if !convs.contains(conv) {
            convs.insert(conv.to_owned());
        }
    }
}

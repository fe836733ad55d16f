//! [`SqliteStore`]: the default [`ClientStore`], one SQLite file in WAL mode with `synchronous=FULL`
//! (an outbox entry that `enqueue` returned must survive power loss).

use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;
use prost::Message as _;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::StoreError;
use crate::message::{MembershipChange, MessageKind, ReceivedMessage};
use crate::store::{ClientStore, Commit, ConversationRow, OutboxRecord};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    conversation   TEXT    NOT NULL,
    epoch          INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    sender         TEXT    NOT NULL,
    sender_device  TEXT    NOT NULL,
    client_msg_id  TEXT    NOT NULL,
    body           BLOB    NOT NULL,
    server_time_ms INTEGER NOT NULL,
    kind           INTEGER NOT NULL,
    membership     BLOB,
    PRIMARY KEY (conversation, epoch, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedupe
    ON messages (conversation, epoch, sender, client_msg_id) WHERE kind = 0;
CREATE TABLE IF NOT EXISTS conversations (
    conversation   TEXT PRIMARY KEY,
    epoch          INTEGER NOT NULL,
    contiguous_seq INTEGER NOT NULL,
    app_acked_seq  INTEGER NOT NULL,
    head_seq       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation   TEXT    NOT NULL,
    client_msg_id  TEXT    NOT NULL UNIQUE,
    body           BLOB    NOT NULL,
    created_at_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// SQLite-backed client store. Cheap to share behind an `Arc`; calls are serialized by a mutex.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

// SQLite stores signed 64-bit integers; seqs and epochs are u64 on the wire. Epochs are random u64s, so
// they are stored bit-for-bit (`as` casts both ways), which round-trips exactly.
fn to_sql(v: u64) -> i64 {
    v as i64
}
fn from_sql(v: i64) -> u64 {
    v as u64
}

impl SqliteStore {
    /// Opens (creating if needed, with parent directories) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Self::init(Connection::open(path)?)
    }

    /// A store that lives in memory only (tests, throwaway clients): nothing survives the process.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-written transaction behind (SQLite rolls back),
        // so a poisoned mutex is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn insert_message(tx: &rusqlite::Transaction<'_>, m: &ReceivedMessage) -> Result<(), StoreError> {
    let kind = match m.kind {
        MessageKind::User => 0,
        MessageKind::System => 1,
    };
    let membership = m.membership.as_ref().map(|c| c.to_wire().encode_to_vec());
    // Cached: a catch-up commits hundreds of messages per transaction; the statement is parsed once
    // per connection instead of once per message.
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO messages (conversation, epoch, seq, sender, sender_device, client_msg_id,
             body, server_time_ms, kind, membership)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    insert.execute(params![
        m.conversation,
        to_sql(m.epoch),
        to_sql(m.seq),
        m.sender,
        m.sender_device,
        m.client_msg_id,
        &m.body[..],
        to_sql(m.server_time_ms),
        kind,
        membership,
    ])?;
    Ok(())
}

impl ClientStore for SqliteStore {
    fn enqueue(&self, r: &OutboxRecord) -> Result<i64, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO outbox (conversation, client_msg_id, body, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![r.conversation, r.client_msg_id, &r.body[..], to_sql(r.created_at_ms)],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn enqueue_batch(&self, records: &[OutboxRecord]) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut ids = Vec::with_capacity(records.len());
        for r in records {
            tx.execute(
                "INSERT INTO outbox (conversation, client_msg_id, body, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![r.conversation, r.client_msg_id, &r.body[..], to_sql(r.created_at_ms)],
            )?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit()?;
        Ok(ids)
    }

    fn remove_outbox(&self, client_msg_id: &str) -> Result<bool, StoreError> {
        let n = self.lock().execute(
            "DELETE FROM outbox WHERE client_msg_id = ?1",
            params![client_msg_id],
        )?;
        Ok(n > 0)
    }

    fn outbox(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, conversation, client_msg_id, body, created_at_ms FROM outbox ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(OutboxRecord {
                id: row.get(0)?,
                conversation: row.get(1)?,
                client_msg_id: row.get(2)?,
                body: Bytes::from(row.get::<_, Vec<u8>>(3)?),
                created_at_ms: from_sql(row.get(4)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn commit(&self, c: &Commit) -> Result<(), StoreError> {
        if c.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for m in &c.messages {
            insert_message(&tx, m)?;
        }
        for row in &c.conversations {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO conversations
                     (conversation, epoch, contiguous_seq, app_acked_seq, head_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                row.conversation,
                to_sql(row.epoch),
                to_sql(row.contiguous_seq),
                to_sql(row.app_acked_seq),
                to_sql(row.head_seq),
            ])?;
        }
        for id in &c.outbox_done {
            tx.prepare_cached("DELETE FROM outbox WHERE client_msg_id = ?1")?
                .execute(params![id])?;
        }
        if let Some(token) = c.sync_token {
            tx.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
                params![crate::store::KEY_SYNC_TOKEN, token.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn conversations(&self) -> Result<Vec<ConversationRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT conversation, epoch, contiguous_seq, app_acked_seq, head_seq
             FROM conversations ORDER BY conversation",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(ConversationRow {
                conversation: row.get(0)?,
                epoch: from_sql(row.get(1)?),
                contiguous_seq: from_sql(row.get(2)?),
                app_acked_seq: from_sql(row.get(3)?),
                head_seq: from_sql(row.get(4)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn messages(
        &self,
        conversation: &str,
        epoch: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, sender, sender_device, client_msg_id, body, server_time_ms, kind, membership
             FROM messages WHERE conversation = ?1 AND epoch = ?2 AND seq > ?3
             ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![conversation, to_sql(epoch), to_sql(after_seq), limit as i64],
            |row| {
                Ok((
                    from_sql(row.get(0)?),
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Vec<u8>>(4)?,
                    from_sql(row.get(5)?),
                    row.get::<_, i64>(6)?,
                    row.get::<_, Option<Vec<u8>>>(7)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, sender, sender_device, client_msg_id, body, server_time_ms, kind, membership) =
                row?;
            let membership = match membership {
                Some(blob) => Some(MembershipChange::from_wire(
                    ferry_protocol::frame::MembershipChange::decode(&blob[..])
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                )),
                None => None,
            };
            out.push(ReceivedMessage {
                conversation: conversation.to_owned(),
                seq,
                epoch,
                sender,
                sender_device,
                client_msg_id,
                body: Bytes::from(body),
                server_time_ms,
                kind: if kind == 1 {
                    MessageKind::System
                } else {
                    MessageKind::User
                },
                membership,
            });
        }
        Ok(out)
    }

    fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT value FROM kv WHERE key = ?1", params![key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MembershipAction;

    fn msg(conv: &str, seq: u64, cmid: &str) -> ReceivedMessage {
        ReceivedMessage {
            conversation: conv.into(),
            seq,
            epoch: u64::MAX - 1, // above i64::MAX: must round-trip
            sender: "alice".into(),
            sender_device: "phone".into(),
            client_msg_id: cmid.into(),
            body: Bytes::from(format!("body {seq}")),
            server_time_ms: 1000 + seq,
            kind: MessageKind::User,
            membership: None,
        }
    }

    fn record(cmid: &str) -> OutboxRecord {
        OutboxRecord {
            id: 0,
            conversation: "d:alice:bob".into(),
            client_msg_id: cmid.into(),
            body: Bytes::from_static(b"hi"),
            created_at_ms: 5,
        }
    }

    #[test]
    fn outbox_keeps_order_rejects_duplicate_ids_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/store.sqlite3");
        {
            let store = SqliteStore::open(&path).unwrap();
            let a = store.enqueue(&record("a")).unwrap();
            let b = store.enqueue(&record("b")).unwrap();
            assert!(a < b);
            assert!(
                store.enqueue(&record("a")).is_err(),
                "client_msg_id is unique"
            );
        }
        let store = SqliteStore::open(&path).unwrap();
        let ids: Vec<_> = store
            .outbox()
            .unwrap()
            .into_iter()
            .map(|r| r.client_msg_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(store.remove_outbox("a").unwrap());
        assert!(!store.remove_outbox("a").unwrap());
        assert_eq!(store.outbox().unwrap().len(), 1);
    }

    #[test]
    fn batch_enqueue_is_all_or_nothing() {
        let store = SqliteStore::in_memory().unwrap();
        let ids = store.enqueue_batch(&[record("a"), record("b")]).unwrap();
        assert_eq!(ids.len(), 2);
        assert!(ids[0] < ids[1]);
        assert!(store.enqueue_batch(&[record("c"), record("a")]).is_err());
        let left: Vec<_> = store
            .outbox()
            .unwrap()
            .into_iter()
            .map(|r| r.client_msg_id)
            .collect();
        assert_eq!(left, ["a", "b"], "the failed batch wrote nothing");
    }

    #[test]
    fn commit_is_idempotent_and_atomic_across_tables() {
        let store = SqliteStore::in_memory().unwrap();
        store.enqueue(&record("m1")).unwrap();
        let mut system = msg("g:1", 1, "sys");
        system.kind = MessageKind::System;
        system.membership = Some(MembershipChange {
            action: MembershipAction::Created,
            actor: "alice".into(),
            users: vec!["bob".into()],
            name: "team".into(),
        });
        let commit = Commit {
            messages: vec![
                msg("d:alice:bob", 1, "m1"),
                msg("d:alice:bob", 2, "m2"),
                system.clone(),
            ],
            conversations: vec![ConversationRow {
                conversation: "d:alice:bob".into(),
                epoch: u64::MAX - 1,
                contiguous_seq: 2,
                app_acked_seq: 1,
                head_seq: 3,
            }],
            outbox_done: vec!["m1".into()],
            sync_token: Some(42),
        };
        store.commit(&commit).unwrap();
        store.commit(&commit).unwrap(); // replay changes nothing
                                        // Same sender + client_msg_id under another seq is a duplicate too.
        store
            .commit(&Commit {
                messages: vec![msg("d:alice:bob", 3, "m2")],
                ..Commit::default()
            })
            .unwrap();
        let got = store.messages("d:alice:bob", u64::MAX - 1, 0, 10).unwrap();
        assert_eq!(
            got,
            vec![msg("d:alice:bob", 1, "m1"), msg("d:alice:bob", 2, "m2")]
        );
        assert_eq!(
            store
                .messages("d:alice:bob", u64::MAX - 1, 1, 10)
                .unwrap()
                .len(),
            1
        );
        assert!(
            store.messages("d:alice:bob", 7, 0, 10).unwrap().is_empty(),
            "other epoch"
        );
        assert_eq!(
            store.messages("g:1", u64::MAX - 1, 0, 10).unwrap(),
            vec![system]
        );
        assert!(store.outbox().unwrap().is_empty());
        assert_eq!(store.conversations().unwrap(), commit.conversations);
        assert_eq!(
            store.get(crate::store::KEY_SYNC_TOKEN).unwrap().as_deref(),
            Some("42")
        );
        store.set("user_id", "bob").unwrap();
        assert_eq!(store.get("user_id").unwrap().as_deref(), Some("bob"));
        assert_eq!(store.get("missing").unwrap(), None);
    }

    #[test]
    fn failed_commit_changes_nothing() {
        let store = SqliteStore::in_memory().unwrap();
        store.enqueue(&record("m1")).unwrap();
        store
            .lock()
            .execute_batch("CREATE TRIGGER boom BEFORE INSERT ON conversations BEGIN SELECT RAISE(ABORT, 'boom'); END;")
            .unwrap();
        let commit = Commit {
            messages: vec![msg("d:alice:bob", 1, "m1")],
            conversations: vec![ConversationRow {
                conversation: "d:alice:bob".into(),
                epoch: 1,
                contiguous_seq: 1,
                app_acked_seq: 1,
                head_seq: 1,
            }],
            outbox_done: vec!["m1".into()],
            sync_token: None,
        };
        assert!(store.commit(&commit).is_err());
        assert!(store
            .messages("d:alice:bob", u64::MAX - 1, 0, 10)
            .unwrap()
            .is_empty());
        assert_eq!(store.outbox().unwrap().len(), 1);
    }
}

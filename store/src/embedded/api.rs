//! The [`Store`] impl of the embedded store: writes go through the writer thread, reads come from the
//! hot cache, the unindexed tail and a redb snapshot, in that order (see `read`).

use async_trait::async_trait;
use ferry_protocol::frame::{ConversationKind, ConversationState, Message};
use prost::Message as _;

use super::tables::{ConvRecord, MemberRec, CURSORS, MESSAGES};
use super::writer::Request;
use super::{backend, writer_stopped, EmbeddedStore, Shared};
use crate::{
    Appended, ConversationInfo, Membership, MembershipOp, NewMessage, PendingAppend, PushRecord,
    Store, StoreError, SyncPage, WriteStats,
};

fn kind_of(record: &ConvRecord) -> ConversationKind {
    ConversationKind::try_from(record.kind).unwrap_or(ConversationKind::Unspecified)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn store_epoch(&self) -> u64 {
        self.shared.epoch
    }

    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        self.call(|reply| Request::Append(message, reply)).await
    }

    async fn queue_append(&self, message: NewMessage) -> Result<PendingAppend, StoreError> {
        let committed = self.queue(|reply| Request::Append(message, reply)).await?;
        Ok(Box::pin(async move {
            committed.await.map_err(|_| writer_stopped())?
        }))
    }

    fn write_stats(&self) -> WriteStats {
        let stats = self.commit_stats();
        WriteStats {
            commits: stats.commits,
            requests: stats.requests,
            commit_micros: stats.commit_micros,
        }
    }

    async fn change_membership(
        &self,
        conversation: &str,
        op: MembershipOp,
        server_time_ms: u64,
    ) -> Result<Appended, StoreError> {
        self.call(|reply| Request::Membership {
            conversation: conversation.to_owned(),
            op,
            server_time_ms,
            reply,
        })
        .await
    }

    async fn ensure_direct(&self, conversation: &str, a: &str, b: &str) -> Result<(), StoreError> {
        // The common case (it exists) needs no trip through the writer and no transaction.
        if self.cache().convs.contains_key(conversation) {
            return Ok(());
        }
        self.call(|reply| Request::EnsureDirect {
            conversation: conversation.to_owned(),
            a: a.to_owned(),
            b: b.to_owned(),
            reply,
        })
        .await
    }

    async fn conversation(
        &self,
        conversation: &str,
    ) -> Result<Option<ConversationInfo>, StoreError> {
        Ok(self
            .cache()
            .convs
            .get(conversation)
            .map(|record| ConversationInfo {
                kind: kind_of(record),
                name: record.name.clone(),
                owner: record.owner.clone(),
                head_seq: record.head,
                epoch: self.shared.epoch,
            }))
    }

    async fn membership(
        &self,
        conversation: &str,
        user: &str,
    ) -> Result<Option<Membership>, StoreError> {
        Ok(self
            .cache()
            .member(conversation, user)
            .map(MemberRec::membership))
    }

    async fn members(&self, conversation: &str) -> Result<Vec<String>, StoreError> {
        let cache = self.cache();
        let Some(members) = cache.members.get(conversation) else {
            return Ok(Vec::new());
        };
        Ok(members
            .iter()
            .filter(|(_, rec)| rec.left_seq.is_none())
            .map(|(user, _)| user.clone())
            .collect())
    }

    async fn read(
        &self,
        conversation: &str,
        after_seq: u64,
        up_to_seq: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        // The cached head is published only after its fsync, so it is never above durable data.
        let head = match self.cache().convs.get(conversation) {
            Some(record) => record.head,
            None => return Ok(Vec::new()),
        };
        let last = up_to_seq.min(head);
        if after_seq >= last || limit == 0 {
            return Ok(Vec::new());
        }
        let limit = limit as usize;
        // Only a reopen of the index after an I/O error makes a view stale (rare); then read again.
        for _ in 0..READ_ATTEMPTS {
            // The tail first, then an index snapshot: a message the indexer moves out of the tail
            // in between is committed before it leaves, so the snapshot holds it (see `tail`).
            let (unindexed, generation) = {
                let tail = self.shared.lock_tail();
                let unindexed = tail.messages(conversation, after_seq, last, limit);
                (unindexed, tail.generation)
            };
            // Indexed messages are all below the unindexed ones of the same conversation.
            let indexed_last = unindexed.first().map_or(last, |(seq, _)| seq - 1);
            if after_seq >= indexed_last {
                // Everything asked for is in memory: no disk, nothing that could block.
                return read_pages(&self.shared, conversation, after_seq, 0, unindexed, limit);
            }
            // The index lookup reads pages from disk: off the async threads, so a Pull of cold
            // history never stalls the streams that share the worker.
            let (shared, conversation) = (self.shared.clone(), conversation.to_owned());
            let page = tokio::task::spawn_blocking(move || {
                read_pages(
                    &shared,
                    &conversation,
                    after_seq,
                    indexed_last,
                    unindexed,
                    limit,
                )
                .map(|page| Some(page).filter(|_| shared.lock_tail().generation == generation))
            })
            .await
            .map_err(backend)??;
            if let Some(page) = page {
                return Ok(page);
            }
        }
        Err(StoreError::Unavailable(
            "the index is being reopened; read again".into(),
        ))
    }

    async fn set_delivered(
        &self,
        conversation: &str,
        user: &str,
        device: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.call(|reply| Request::SetDelivered {
            conversation: conversation.to_owned(),
            user: user.to_owned(),
            device: device.to_owned(),
            seq,
            reply,
        })
        .await
    }

    async fn set_read(&self, conversation: &str, user: &str, seq: u64) -> Result<u64, StoreError> {
        self.call(|reply| Request::SetRead {
            conversation: conversation.to_owned(),
            user: user.to_owned(),
            seq,
            reply,
        })
        .await
    }

    async fn changed_since(
        &self,
        user: &str,
        device: &str,
        since_token: u64,
        limit: u32,
    ) -> Result<SyncPage, StoreError> {
        let limit = limit.max(1) as usize;
        // A token above any issued one (e.g. from before a store reset) cannot be interpreted: it means
        // "everything" (FERRY-SYNC-4). The counter only grows, so reading it first is safe.
        let since_token = if since_token > self.cache().change {
            0
        } else {
            since_token
        };
        // Collect the page from one consistent view of the cache: batches are published whole, and
        // change values are assigned in commit order, so no later commit can add a value ≤ next_token.
        let (changed, has_more) = {
            let cache = self.cache();
            let Some(convs) = cache.user_convs.get(user) else {
                return Ok(SyncPage {
                    next_token: since_token,
                    ..SyncPage::default()
                });
            };
            let mut changed = Vec::new();
            for conv in convs {
                let (Some(record), Some(rec)) = (cache.convs.get(conv), cache.member(conv, user))
                else {
                    continue;
                };
                // After removal, later appends are invisible to the user: only the removal counts.
                let change = if rec.left_seq.is_none() {
                    record.last_change.max(rec.change_token)
                } else {
                    rec.change_token
                };
                if change > since_token {
                    changed.push((change, conv, record, rec));
                }
            }
            // Only the page is sorted and copied out of the cache: a Heartbeat or Sync from token 0
            // of a user in thousands of conversations would otherwise sort and clone them all.
            let oldest_first =
                |a: &(u64, &String, _, _), b: &(u64, &String, _, _)| (a.0, a.1).cmp(&(b.0, b.1));
            let has_more = changed.len() > limit;
            if has_more {
                changed.select_nth_unstable_by(limit, oldest_first);
                changed.truncate(limit);
            }
            changed.sort_unstable_by(oldest_first);
            let page: Vec<Changed> = changed
                .into_iter()
                .map(|(change, conv, record, rec)| (change, conv.clone(), record.clone(), rec))
                .collect();
            (page, has_more)
        };
        let next_token = changed.last().map_or(since_token, |c| c.0);

        // Cursors not yet indexed first, then the index (see `read`); the higher one counts.
        let unindexed: Vec<Option<u64>> = {
            let tail = self.shared.lock_tail();
            changed
                .iter()
                .map(|(_, conv, _, _)| tail.cursor(conv, user, device))
                .collect()
        };
        // The indexed cursors are read from disk: off the async threads (see `read`).
        let (shared, user, device) = (self.shared.clone(), user.to_owned(), device.to_owned());
        tokio::task::spawn_blocking(move || {
            let conversations = sync_states(&shared, &user, &device, changed, unindexed)?;
            Ok(SyncPage {
                conversations,
                next_token,
                has_more,
            })
        })
        .await
        .map_err(backend)?
    }

    async fn put_push(
        &self,
        user: &str,
        device: &str,
        record: PushRecord,
    ) -> Result<(), StoreError> {
        let (shared, user, device) = (self.shared.clone(), user.to_owned(), device.to_owned());
        // A redb write transaction fsyncs: off the async threads.
        blocking(move || super::push::put(&shared, &user, &device, &record)).await
    }

    async fn delete_push(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        let (shared, user, device) = (self.shared.clone(), user.to_owned(), device.to_owned());
        blocking(move || super::push::delete(&shared, &user, &device)).await
    }

    async fn push_registrations(
        &self,
        user: &str,
    ) -> Result<Vec<(String, PushRecord)>, StoreError> {
        let (shared, user) = (self.shared.clone(), user.to_owned());
        blocking(move || super::push::list(&shared, &user)).await
    }

    async fn revoke_tokens(
        &self,
        user: &str,
        device: Option<&str>,
        at_s: u64,
    ) -> Result<u64, StoreError> {
        let (shared, user, device) = (
            self.shared.clone(),
            user.to_owned(),
            device.map(str::to_owned),
        );
        // A redb write transaction fsyncs: off the async threads.
        blocking(move || super::revoke::revoke(&shared, &user, device.as_deref(), at_s)).await
    }

    async fn tokens_revoked_at(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        let (shared, user, device) = (self.shared.clone(), user.to_owned(), device.to_owned());
        blocking(move || super::revoke::revoked_at(&shared, &user, &device)).await
    }
}
/// How often `read` takes a new view when the index was reopened under it.
const READ_ATTEMPTS: usize = 3;

/// Messages of `conversation` with `after < seq <= indexed_last` from the index, then the unindexed
/// ones (already taken from the tail, which must happen before this opens its snapshot), at most
/// `limit` in all. Blocking when `indexed_last > after`.
fn read_pages(
    shared: &Shared,
    conversation: &str,
    after: u64,
    indexed_last: u64,
    unindexed: Vec<(u64, bytes::Bytes)>,
    limit: usize,
) -> Result<Vec<Message>, StoreError> {
    let mut messages = Vec::with_capacity(limit.min(1024));
    if after < indexed_last {
        let txn = shared.begin_read()?;
        let table = txn.open_table(MESSAGES).map_err(backend)?;
        let range = table
            .range((conversation, after + 1)..=(conversation, indexed_last))
            .map_err(backend)?;
        for row in range.take(limit) {
            let (_, value) = row.map_err(backend)?;
            messages.push(Message::decode(value.value()).map_err(backend)?);
        }
    }
    for (_, bytes) in unindexed {
        if messages.len() >= limit {
            break;
        }
        messages.push(Message::decode(bytes).map_err(backend)?);
    }
    Ok(messages)
}

/// A changed conversation as `changed_since` collected it: change value, id, record, membership.
type Changed = (u64, String, ConvRecord, MemberRec);

/// The states of a Sync page: the cached facts plus each device's delivery cursor, the unindexed one
/// (taken from the tail before this opens its snapshot) or the indexed one. Blocking.
fn sync_states(
    shared: &Shared,
    user: &str,
    device: &str,
    changed: Vec<Changed>,
    unindexed: Vec<Option<u64>>,
) -> Result<Vec<ConversationState>, StoreError> {
    let txn = shared.begin_read()?;
    let cursors = txn.open_table(CURSORS).map_err(backend)?;
    let mut conversations = Vec::with_capacity(changed.len());
    for ((_, conv, record, rec), unindexed) in changed.into_iter().zip(unindexed) {
        let acked_seq = cursors
            .get((conv.as_str(), user, device))
            .map_err(backend)?
            .map_or(0, |guard| guard.value())
            .max(unindexed.unwrap_or(0));
        let head_seq = rec.membership().visible_head(record.head);
        let read_seq = rec.read_seq.min(head_seq);
        conversations.push(ConversationState {
            conversation_id: conv,
            kind: kind_of(&record) as i32,
            head_seq,
            epoch: shared.epoch,
            acked_seq,
            read_seq,
            unread_count: head_seq.saturating_sub(read_seq),
            member: rec.left_seq.is_none(),
            first_seq: rec.first_seq,
            name: record.name,
        });
    }
    Ok(conversations)
}

/// Runs a redb call off the async threads (a write transaction fsyncs; a read may touch the disk).
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(call).await.map_err(backend)?
}

//! Sync for the Redis store: the changed conversations of a user, derived from the user's
//! conversation set and each conversation's stamps (see the module docs, "Sync without a second slot").

use ferry_protocol::frame::ConversationState;
use futures_util::future::join_all;
use redis::AsyncCommands;

use super::store::{ConvState, MemberRecord};
use super::{keys, redis_failure, RedisStore};
use crate::{StoreError, SyncPage};

/// Conversations read at once by one Sync (each is one script call; they pipeline on the connection).
const SYNC_READ_CHUNK: usize = 128;

impl RedisStore {
    /// [`Store::changed_since`](crate::Store::changed_since).
    pub(super) async fn sync_page(
        &self,
        user: &str,
        device: &str,
        since_token: u64,
        limit: u32,
    ) -> Result<SyncPage, StoreError> {
        let limit = limit.max(1) as usize;
        let set = keys::user_conversations(&self.prefix, user);
        let mut conn = self.conn.clone();
        let (epoch_changed, conversations) = tokio::join!(
            self.refresh_store_epoch(),
            conn.smembers::<_, Vec<String>>(set)
        );
        let conversations = conversations.map_err(|e| redis_failure("user conversations", e))?;
        // Tokens from before a store epoch change mean nothing any more (FERRY-SYNC-4).
        let mut since_token = if epoch_changed? { 0 } else { since_token };

        let mut states = Vec::with_capacity(conversations.len());
        for chunk in conversations.chunks(SYNC_READ_CHUNK) {
            let read = join_all(chunk.iter().map(|conv| self.state(conv, user, device))).await;
            for (conv, state) in chunk.iter().zip(read) {
                states.push((conv.clone(), state?));
            }
        }
        // The clock at the earliest read bounds the next token (see the module docs).
        let Some(min_now) = states.iter().map(|(_, s)| s.now).min() else {
            return Ok(SyncPage {
                next_token: since_token,
                ..SyncPage::default()
            });
        };
        let max_now = states.iter().map(|(_, s)| s.now).max().unwrap_or(min_now);
        if since_token > max_now {
            since_token = 0; // not a token this store issued
        }
        let mut changed: Vec<(u64, String, ConvState, MemberRecord)> = states
            .into_iter()
            .filter_map(|(conv, state)| {
                let member = state.member.filter(|_| state.kind != 0)?;
                // After removal, later messages are invisible to the user: only the removal counts.
                let change = if member.left == 0 {
                    state.chg.max(member.chg)
                } else {
                    member.chg
                };
                (change > since_token).then_some((change, conv, state, member))
            })
            .collect();
        changed.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut cut = changed.len().min(limit);
        // Never split equal stamps across pages: the token could not tell them apart.
        while cut < changed.len() && cut > 0 && changed[cut].0 == changed[cut - 1].0 {
            cut += 1;
        }
        let has_more = cut < changed.len();
        changed.truncate(cut);
        let next_token = changed
            .last()
            .map_or(since_token, |last| last.0.min(min_now - 1));
        let conversations = changed
            .into_iter()
            .map(|(_, conv, state, member)| {
                let membership = member.membership(state.trim);
                let head_seq = membership.visible_head(state.head);
                let read_seq = membership.read_seq.min(head_seq);
                ConversationState {
                    conversation_id: conv,
                    kind: state.kind,
                    head_seq,
                    epoch: state.epoch,
                    acked_seq: state.delivered,
                    read_seq,
                    unread_count: head_seq.saturating_sub(read_seq),
                    member: membership.is_member(),
                    first_seq: membership.first_seq,
                    name: state.name,
                }
            })
            .collect();
        Ok(SyncPage {
            conversations,
            next_token,
            has_more,
        })
    }
}

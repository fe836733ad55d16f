//! Pull → PullResult (FERRY-PULL-*): one page of a conversation's history, as the reader may see it.

use ferry_protocol::frame::{Message, PullResult};
use ferry_protocol::ids;
use ferry_protocol::ErrorCode;
use ferry_store::StoreError;

use crate::connection::Conn;
use crate::errors::{from_store, Refusal};

/// One page of messages for Pull: from the reader's first visible seq, up to their visible head, at
/// most max_pull_page.
pub(super) async fn page(
    conn: &Conn,
    conversation: &str,
    after_seq: u64,
    limit: u32,
) -> Result<PullResult, Refusal> {
    let store = &conn.shared.store;
    let info = match store.conversation(conversation).await.map_err(from_store)? {
        Some(info) => info,
        // A direct conversation the store lost (Redis FLUSHALL) is created again, in a new epoch, as
        // a Send would do: NOT_FOUND would make its party's client refuse its pending Sends for good.
        None if ids::is_direct_conversation(conversation) => {
            super::stream::authorize_open(conn, conversation).await?;
            store
                .conversation(conversation)
                .await
                .map_err(from_store)?
                .ok_or_else(|| {
                    from_store(StoreError::Unavailable(
                        "the conversation is being restored".into(),
                    ))
                })?
        }
        None => return Err(Refusal::new(ErrorCode::NOT_FOUND, "no such conversation")),
    };
    let membership = store
        .membership(conversation, &conn.session.user)
        .await
        .map_err(from_store)?
        .ok_or_else(|| Refusal::new(ErrorCode::FORBIDDEN, "not a member"))?;
    let max = conn.shared.settings.limits.max_pull_page;
    let limit = if limit == 0 { max } else { limit.min(max) };
    let head = membership.visible_head(info.head_seq);
    let after = after_seq.max(membership.first_seq.saturating_sub(1));
    let mut messages = store
        .read(conversation, after, head, limit)
        .await
        .map_err(from_store)?;
    truncate_to_frame(
        &mut messages,
        conn.shared.settings.limits.max_frame_size as usize,
    );
    let last = messages.last().map_or(after, |m| m.seq);
    Ok(PullResult {
        messages,
        head_seq: head,
        has_more: last < head,
        epoch: info.epoch,
    })
}

/// Keeps a PullResult within the maximum frame size: drops trailing messages, but always keeps the first
/// so paging makes progress (FERRY-PULL-3; max_frame_size exceeds max_body_size by a margin).
fn truncate_to_frame(messages: &mut Vec<Message>, max_frame_size: usize) {
    use prost::Message as _;
    const RESULT_OVERHEAD: usize = 64; // head_seq, has_more, epoch, frame tag and length
    let mut size = RESULT_OVERHEAD;
    let keep = messages
        .iter()
        .position(|m| {
            size += m.encoded_len() + 8; // field tag + length varint
            size > max_frame_size
        })
        .unwrap_or(messages.len())
        .max(1);
    messages.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn message(seq: u64, body_len: usize) -> Message {
        Message {
            seq,
            body: vec![b'x'; body_len].into(),
            ..Message::default()
        }
    }

    #[test]
    fn a_page_is_cut_to_the_frame_size() {
        let mut messages: Vec<Message> = (1..=10).map(|seq| message(seq, 100)).collect();
        let one = messages[0].encoded_len() + 8;
        truncate_to_frame(&mut messages, 64 + 3 * one);
        assert_eq!(
            messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn the_first_message_is_kept_even_when_alone_it_is_too_large() {
        let mut messages = vec![message(1, 1000), message(2, 10)];
        truncate_to_frame(&mut messages, 100);
        assert_eq!(messages.len(), 1, "paging must make progress");
        assert_eq!(messages[0].seq, 1);
    }

    #[test]
    fn a_page_that_fits_is_left_alone() {
        let mut messages: Vec<Message> = (1..=5).map(|seq| message(seq, 10)).collect();
        truncate_to_frame(&mut messages, 1 << 20);
        assert_eq!(messages.len(), 5);
    }
}

//! The control stream after Welcome: heartbeats, sync, read cursors, group administration and push
//! registrations (handled in `push::control`).
//!
//! Requests are handled one at a time in arrival order; answers go through the control stream's writer.
//! A frame that does not belong on the control stream closes the connection with PROTOCOL_ERROR
//! (FERRY-STREAM-*); a frame that cannot be decoded closes it with the decoder's code (FERRY-FRAME-5).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, GroupResult, HeartbeatAck, SyncResult};
use ferry_protocol::ids::{self, ConversationRef};
use ferry_protocol::{frames, unix_millis, ErrorCode, Frame};
use ferry_quic::{FrameReader, ReadError};
use ferry_store::MembershipOp;
use tracing::debug;

use crate::connection::Conn;
use crate::conversation::deliver;
use crate::errors::{from_store, Refusal};

/// Longest group name, in bytes.
const MAX_GROUP_NAME: usize = 256;
/// Most initial members of a new group.
const MAX_INITIAL_MEMBERS: usize = 1000;
/// A bound on one encoded `ConversationState` in a page: its id and group name are at most 256 bytes
/// each and its seven integers at most 11 bytes each with their tags (FERRY-SYNC-7).
const MAX_STATE_SIZE: u32 = 1024;
/// A page's own fields (request id, token, has_more, server time) and the frame's tag and length.
const PAGE_OVERHEAD: u32 = 64;

/// Serves the control stream until it ends, then closes the connection.
pub(crate) async fn run(conn: Arc<Conn>, mut reader: FrameReader) {
    let idle = Duration::from_millis(u64::from(conn.shared.settings.idle_timeout_ms));
    loop {
        let frame = match tokio::time::timeout(idle, reader.next()).await {
            Err(_) => {
                conn.shared.metrics.error(ErrorCode::IDLE_TIMEOUT);
                conn.close(
                    ErrorCode::IDLE_TIMEOUT,
                    "no heartbeat within the idle timeout",
                );
                return;
            }
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => {
                // The control stream may end only right before the connection closes (FERRY-CONN-2).
                conn.shared.metrics.error(ErrorCode::PROTOCOL_ERROR);
                conn.close(ErrorCode::PROTOCOL_ERROR, "control stream finished");
                return;
            }
            Ok(Err(e)) => {
                // Undecodable bytes close with the decoder's code; a reset control stream is a
                // PROTOCOL_ERROR (FERRY-CONN-2); a lost connection needs no close.
                let code = match &e {
                    ReadError::Stream(quinn::ReadError::Reset(_)) => {
                        Some(ErrorCode::PROTOCOL_ERROR)
                    }
                    _ => e.code(),
                };
                if let Some(code) = code {
                    conn.shared.metrics.error(code);
                    conn.close(code, &e.to_string());
                }
                return;
            }
        };
        // Boxed: handling a request (store calls, group changes, push) needs a far larger future than
        // waiting for the next frame, and an idle connection waits for frames nearly all its life.
        if let Err(Refusal { code, reason, .. }) = Box::pin(handle(&conn, frame)).await {
            debug!(user = %conn.session.user, code = code.name(), %reason, "control stream error");
            conn.shared.metrics.error(code);
            conn.close(code, &reason);
            return;
        }
    }
}

/// Handles one frame. `Err` is a connection-level error; request-level errors are answered with an
/// Error frame and return `Ok`.
async fn handle(conn: &Conn, frame: Frame) -> Result<(), Refusal> {
    let early_allowed = matches!(frame.kind, Some(Kind::Heartbeat(_) | Kind::Sync(_)));
    if !early_allowed && !conn.handshake_complete().await {
        return Ok(());
    }
    let reply = match frame.kind {
        Some(Kind::Heartbeat(hb)) => heartbeat(conn, hb.sync_token).await,
        Some(Kind::Sync(sync)) => sync_page(conn, sync.request_id, sync.since_token, sync.limit)
            .await
            .unwrap_or_else(|r| frames::request_error(sync.request_id, r.code, r.reason)),
        // A refusal echoes the MarkRead's request_id (0 from an old client: attributed by position,
        // FERRY-ERR-9); a success is not answered (FERRY-READ-1).
        Some(Kind::MarkRead(mark)) => {
            match mark_read(conn, &mark.conversation_id, mark.seq).await {
                Ok(()) => return Ok(()),
                Err(r) => frames::request_error(mark.request_id, r.code, r.reason),
            }
        }
        Some(Kind::CreateGroup(create)) => {
            let id = create.request_id;
            group_reply(id, create_group(conn, create.name, create.members).await)
        }
        Some(Kind::AddMember(add)) => {
            let op = MembershipOp::Add {
                actor: conn.session.user.to_string(),
                user: add.user_id.clone(),
            };
            let result = change_group(conn, &add.conversation_id, &add.user_id, op, None).await;
            group_reply(add.request_id, result)
        }
        Some(Kind::RemoveMember(remove)) => {
            let op = MembershipOp::Remove {
                actor: conn.session.user.to_string(),
                user: remove.user_id.clone(),
            };
            let removed = Some(remove.user_id.as_str());
            let conv = &remove.conversation_id;
            let result = change_group(conn, conv, &remove.user_id, op, removed).await;
            group_reply(remove.request_id, result)
        }
        Some(kind @ (Kind::PushRegister(_) | Kind::PushUnregister(_) | Kind::PushList(_))) => {
            crate::push::handle(conn, kind).await
        }
        other => {
            let name = frames::kind_name(&Frame { kind: other });
            return Err(Refusal::new(
                ErrorCode::PROTOCOL_ERROR,
                format!("{name} is not allowed on the control stream"),
            ));
        }
    };
    let _ = conn.session.control.send(reply).await;
    Ok(())
}

/// The most conversations one SyncResult or HeartbeatAck may list: `max_sync_page`, and no more than
/// fit the announced frame size however long their ids and names are (FERRY-SYNC-7). Bounding the
/// count up front, rather than cutting the page after the store built it, keeps the page's token
/// consistent with what it lists.
fn sync_page_limit(conn: &Conn) -> u32 {
    let limits = &conn.shared.settings.limits;
    let fits = limits.max_frame_size.saturating_sub(PAGE_OVERHEAD) / MAX_STATE_SIZE;
    limits.max_sync_page.min(fits).max(1)
}

/// How long a Heartbeat waits for its heads. A HeartbeatAck is the client's proof that the server
/// lives (FERRY-HB-5): a store stalled for seconds (a Redis master failing over) must not make every
/// client leave a live node, so past this the ack goes out without heads and the next one brings them.
const HEADS_BUDGET: Duration = Duration::from_millis(250);

/// Answers a Heartbeat with the heads that changed. In a cluster the session's directory entry is kept
/// alive by the node's sweep (`cluster::run_refresh`), not here: clients of a cluster heartbeat every few
/// hundred ms, and a Redis script per Heartbeat loaded the survivors of a failover most.
async fn heartbeat(conn: &Conn, sync_token: u64) -> Frame {
    let limit = sync_page_limit(conn);
    let store = &conn.shared.store;
    let changes = store.changed_since(&conn.session.user, &conn.session.device, sync_token, limit);
    let page = match tokio::time::timeout(HEADS_BUDGET, changes).await {
        Ok(Ok(page)) => Some(page),
        Ok(Err(e)) => {
            debug!(user = %conn.session.user, error = %e, "heartbeat without heads: store unavailable");
            None
        }
        Err(_) => {
            debug!(user = %conn.session.user, "heartbeat without heads: store too slow");
            None
        }
    };
    heartbeat_ack(page, sync_token, unix_millis(SystemTime::now()))
}

/// The answer to a Heartbeat, always a HeartbeatAck (FERRY-HB-2): a Heartbeat is the client's liveness
/// probe (FERRY-HB-5), so a store that cannot list the changes must not make a live server look dead,
/// and an id-less Error here would be taken for the answer to a MarkRead (FERRY-ERR-9). Without a page
/// the ack reports no changes and hands the client its own token back, so nothing is skipped: the next
/// Heartbeat or Sync asks again from the same position.
fn heartbeat_ack(page: Option<ferry_store::SyncPage>, sync_token: u64, now_ms: u64) -> Frame {
    let (changed, sync_token, has_more) = match page {
        Some(page) => (page.conversations, page.next_token, page.has_more),
        None => (Vec::new(), sync_token, false),
    };
    frame(Kind::HeartbeatAck(HeartbeatAck {
        changed,
        sync_token,
        has_more,
        server_time_ms: now_ms,
    }))
}

async fn sync_page(conn: &Conn, request_id: u64, since: u64, limit: u32) -> Result<Frame, Refusal> {
    conn.shared.metrics.sync();
    let max = sync_page_limit(conn);
    let limit = if limit == 0 { max } else { limit.min(max) };
    let page = conn
        .shared
        .store
        .changed_since(&conn.session.user, &conn.session.device, since, limit)
        .await
        .map_err(from_store)?;
    Ok(frame(Kind::SyncResult(SyncResult {
        request_id,
        conversations: page.conversations,
        next_token: page.next_token,
        has_more: page.has_more,
    })))
}

async fn mark_read(conn: &Conn, conversation: &str, seq: u64) -> Result<(), Refusal> {
    let store = &conn.shared.store;
    let user: &str = &conn.session.user;
    // FERRY-READ-1 orders the checks as FERRY-STREAM-5 does for Open, so that one id gets the same
    // answer on both paths.
    let exists = store
        .conversation(conversation)
        .await
        .map_err(from_store)?
        .is_some();
    match ids::parse_conversation_id(conversation) {
        None => {
            return Err(Refusal::new(
                ErrorCode::INVALID_ARGUMENT,
                "malformed conversation id",
            ))
        }
        Some(ConversationRef::Direct(a, b)) => {
            if user != a && user != b {
                return Err(Refusal::new(ErrorCode::FORBIDDEN, "not a member"));
            }
            // A direct conversation not created yet has head 0: the cursor stays 0, nothing to do,
            // and MarkRead does not create the conversation.
            if !exists {
                return Ok(());
            }
        }
        Some(ConversationRef::Group) => {
            if !exists {
                return Err(Refusal::new(ErrorCode::NOT_FOUND, "no such conversation"));
            }
        }
    }
    match store.membership(conversation, user).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(Refusal::new(ErrorCode::FORBIDDEN, "not a member")),
        Err(e) => return Err(from_store(e)),
    }
    store
        .set_read(conversation, &conn.session.user, seq)
        .await
        .map(|_| ())
        .map_err(from_store)
}

fn group_reply(request_id: u64, result: Result<(String, u64), Refusal>) -> Frame {
    match result {
        Ok((conversation_id, seq)) => frame(Kind::GroupResult(GroupResult {
            request_id,
            conversation_id,
            seq,
        })),
        Err(r) => frames::request_error(request_id, r.code, r.reason),
    }
}

async fn create_group(
    conn: &Conn,
    name: String,
    members: Vec<String>,
) -> Result<(String, u64), Refusal> {
    if name.len() > MAX_GROUP_NAME {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            "group name too long",
        ));
    }
    if members.len() > MAX_INITIAL_MEMBERS {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            "too many initial members",
        ));
    }
    if let Some(bad) = members.iter().find(|m| !ids::is_valid_name(m)) {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            format!("invalid user id {bad:?}"),
        ));
    }
    let conversation = ids::group_conversation_id(rand::random());
    let op = MembershipOp::Create {
        name,
        owner: conn.session.user.to_string(),
        members,
    };
    let seq = apply(conn, &conversation, op, None).await?;
    Ok((conversation, seq))
}

async fn change_group(
    conn: &Conn,
    conversation: &str,
    user: &str,
    op: MembershipOp,
    also_deliver_to: Option<&str>,
) -> Result<(String, u64), Refusal> {
    match ids::parse_conversation_id(conversation) {
        None => {
            return Err(Refusal::new(
                ErrorCode::INVALID_ARGUMENT,
                "malformed conversation id",
            ))
        }
        Some(ConversationRef::Direct(..)) => {
            return Err(Refusal::new(
                ErrorCode::FORBIDDEN,
                "direct conversations have no members to change",
            ))
        }
        Some(ConversationRef::Group) => {}
    }
    if !ids::is_valid_name(user) {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            format!("invalid user id {user:?}"),
        ));
    }
    let seq = apply(conn, conversation, op, also_deliver_to).await?;
    Ok((conversation.to_owned(), seq))
}

/// Applies a membership change (durably, with its system message) and delivers the system message.
async fn apply(
    conn: &Conn,
    conversation: &str,
    op: MembershipOp,
    also_deliver_to: Option<&str>,
) -> Result<u64, Refusal> {
    let now = unix_millis(SystemTime::now());
    let appended = conn
        .shared
        .store
        .change_membership(conversation, op, now)
        .await
        .map_err(from_store)?;
    if let Some(message) = appended.message {
        // Unlike a Send, the acting device does not hold the system message's content, so it gets the
        // Deliver too.
        let shared = &conn.shared;
        deliver(
            shared,
            conversation,
            message,
            appended.epoch,
            appended.members,
            None,
            also_deliver_to,
        )
        .await;
    }
    Ok(appended.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_acked_even_without_a_page() {
        // The store failed: still a HeartbeatAck, no changes, the client's own token back.
        match heartbeat_ack(None, 42, 7).kind {
            Some(Kind::HeartbeatAck(ack)) => {
                assert!(ack.changed.is_empty());
                assert_eq!(
                    (ack.sync_token, ack.has_more, ack.server_time_ms),
                    (42, false, 7)
                );
            }
            other => panic!("expected HeartbeatAck, got {other:?}"),
        }
        let page = ferry_store::SyncPage {
            conversations: vec![Default::default()],
            next_token: 43,
            has_more: true,
        };
        match heartbeat_ack(Some(page), 42, 7).kind {
            Some(Kind::HeartbeatAck(ack)) => {
                assert_eq!(ack.changed.len(), 1);
                assert_eq!((ack.sync_token, ack.has_more), (43, true));
            }
            other => panic!("expected HeartbeatAck, got {other:?}"),
        }
    }
}

//! Sync tokens, heartbeat heads and read cursors.

use std::collections::BTreeSet;
use std::sync::Arc;

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{
    frame::Kind, ConversationKind, ConversationState, Heartbeat, MarkRead,
};
use ferry_protocol::{ErrorCode, Frame};

use super::{expect_error, send_many, ServerCtx};
use crate::runner::{Case, CaseResult, Verdict};
use crate::{case, ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(
            [
                "FERRY-SYNC-1",
                "FERRY-SYNC-2",
                "FERRY-SYNC-3",
                "FERRY-CONN-3"
            ],
            "Sync from a token lists exactly the changed conversations",
            changed_only
        ),
        case!(
            ["FERRY-SYNC-4"],
            "a token the server never issued is treated as 0",
            unknown_token
        ),
        case!(
            ["FERRY-HB-2"],
            "HeartbeatAck carries the heads changed since the token (the lost last message)",
            heartbeat_heads
        ),
        case!(
            ["FERRY-READ-1", "FERRY-READ-2", "FERRY-READ-4"],
            "MarkRead moves the read cursor, clamped to the head, never backwards, without a reply",
            mark_read
        ),
        case!(
            ["FERRY-SEND-9", "FERRY-READ-3"],
            "the sender's own Send moves their read cursor",
            own_send_is_read
        ),
        case!(
            ["FERRY-READ-1", "FERRY-AUTH-5", "FERRY-ERR-9", "FERRY-ERR-1"],
            "MarkRead errors in FERRY-STREAM-5's order (NOT_FOUND for a missing group, nothing for an own direct id not created yet), each attributable by a Heartbeat barrier",
            mark_read_errors
        ),
        case!(
            ["FERRY-READ-1", "FERRY-ERR-1"],
            "pipelined MarkReads with request ids: each refusal echoes its MarkRead's request_id, a success gets nothing",
            mark_read_request_ids
        ),
    ]
}

fn state<'a>(states: &'a [ConversationState], id: &str) -> Result<&'a ConversationState, Verdict> {
    states
        .iter()
        .find(|c| c.conversation_id == id)
        .ok_or_else(|| Verdict::Fail(format!("{id} missing from the Sync result")))
}

fn ids(states: &[ConversationState]) -> BTreeSet<String> {
    states.iter().map(|c| c.conversation_id.clone()).collect()
}

async fn changed_only(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob, carol) = (ctx.user("alice"), ctx.user("bob"), ctx.user("carol"));
    let (quiet, busy) = (ctx.direct(&alice, &carol), ctx.direct(&alice, &bob));
    let sender = ctx.session(&alice, "phone").await?;
    send_many(&ctx, &mut sender.open(&quiet).await?, "q", 1).await?;
    send_many(&ctx, &mut sender.open(&busy).await?, "b", 1).await?;
    let mut me = ctx.session(&alice, "laptop").await?;
    let first = me.sync(0, 0).await?;
    ensure_eq!(
        ids(&first.conversations),
        [quiet.clone(), busy.clone()].into_iter().collect(),
        "conversations since token 0"
    );
    ensure!(!first.has_more, "has_more with two conversations");
    let q = state(&first.conversations, &quiet)?;
    ensure_eq!(
        (q.head_seq, q.kind(), q.member, q.first_seq),
        (1, ConversationKind::Direct, true, 1),
        "(head_seq, kind, member, first_seq) of {quiet}"
    );
    ensure!(q.epoch != 0, "ConversationState.epoch is 0");

    // Change only `busy`, from another device.
    send_many(&ctx, &mut sender.open(&busy).await?, "b2", 2).await?;
    let next = me.sync(first.next_token, 0).await?;
    ensure_eq!(
        ids(&next.conversations),
        [busy.clone()].into_iter().collect(),
        "conversations changed since the token"
    );
    ensure_eq!(
        state(&next.conversations, &busy)?.head_seq,
        3,
        "head_seq of {busy}"
    );
    let none = me.sync(next.next_token, 0).await?;
    ensure!(
        none.conversations.is_empty(),
        "changes reported after the latest token: {:?}",
        ids(&none.conversations)
    );

    // Paging: limit 1 over two changes gives one per page, oldest change first, has_more in between.
    let page = me.sync(0, 1).await?;
    ensure_eq!(page.conversations.len(), 1, "conversations with limit 1");
    ensure!(page.has_more, "has_more on the first of two pages");
    ensure_eq!(
        page.conversations[0].conversation_id,
        quiet,
        "oldest change first"
    );
    let rest = me.sync(page.next_token, 1).await?;
    ensure_eq!(
        ids(&rest.conversations),
        [busy].into_iter().collect(),
        "second page"
    );
    ensure!(!rest.has_more, "has_more on the last page");
    Ok(())
}

async fn unknown_token(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let mut session = ctx.session(&alice, "phone").await?;
    send_many(&ctx, &mut session.open(&conv).await?, "t", 1).await?;
    let result = session.sync(u64::MAX - 7, 0).await?;
    ensure!(
        ids(&result.conversations).contains(&conv),
        "a never-issued token hid {conv}: {:?}",
        ids(&result.conversations)
    );
    Ok(())
}

/// How many more Heartbeats [`heartbeat_heads`] sends while the server answers without heads.
const HEADS_RETRIES: usize = 10;

async fn heartbeat_heads(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let mut reader = ctx.session(&bob, "phone").await?;
    let token = reader.heartbeat(0).await?.sync_token;
    // A message the reader's connection never sees as Deliver (it has no stream; say it was lost).
    let sender = ctx.session(&alice, "phone").await?;
    send_many(&ctx, &mut sender.open(&conv).await?, "hb", 2).await?;
    // An ack with no changes and the asked token back is "no heads this time" (a slow or unavailable
    // store, FERRY-HB-2): ask again, a bounded number of times.
    let mut ack = reader.heartbeat(token).await?;
    for _ in 0..HEADS_RETRIES {
        if !(ack.changed.is_empty() && ack.sync_token == token) {
            break;
        }
        ack = reader.heartbeat(token).await?;
    }
    let s = state(&ack.changed, &conv)?;
    ensure_eq!(s.head_seq, 2, "head_seq in HeartbeatAck");
    ensure!(ack.server_time_ms > 0, "HeartbeatAck.server_time_ms is 0");
    let again = reader.heartbeat(ack.sync_token).await?;
    ensure!(
        again.changed.is_empty(),
        "HeartbeatAck with the latest token still lists {:?}",
        ids(&again.changed)
    );
    Ok(())
}

async fn mark_read(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let sender = ctx.session(&alice, "phone").await?;
    send_many(&ctx, &mut sender.open(&conv).await?, "r", 5).await?;
    let mut phone = ctx.session(&bob, "phone").await?;
    let mut laptop = ctx.session(&bob, "laptop").await?;
    let token = laptop.sync(0, 0).await?.next_token;
    let s = state(&phone.sync(0, 0).await?.conversations, &conv)?.clone();
    ensure_eq!(
        (s.head_seq, s.read_seq, s.unread_count),
        (5, 0, 5),
        "(head, read, unread) before MarkRead"
    );
    let mark = |seq| {
        frame(Kind::MarkRead(MarkRead {
            conversation_id: conv.clone(),
            seq,
            request_id: 0,
        }))
    };
    phone.send_control(mark(3)).await?;
    // No reply: the next control frame is the SyncResult.
    let s = state(&phone.sync(0, 0).await?.conversations, &conv)?.clone();
    ensure_eq!(
        (s.read_seq, s.unread_count),
        (3, 2),
        "(read, unread) after MarkRead 3"
    );
    phone.send_control(mark(99)).await?;
    phone.send_control(mark(1)).await?;
    let s = state(&phone.sync(0, 0).await?.conversations, &conv)?.clone();
    ensure_eq!(
        (s.read_seq, s.unread_count),
        (5, 0),
        "(read, unread) after MarkRead 99 (clamped) and 1 (ignored)"
    );
    // The user's other device learns it as a change.
    let changed = laptop.sync(token, 0).await?;
    ensure_eq!(
        state(&changed.conversations, &conv)?.read_seq,
        5,
        "read_seq reported to the other device"
    );
    Ok(())
}

async fn own_send_is_read(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let mut alice_s = ctx.session(&alice, "phone").await?;
    let bob_s = ctx.session(&bob, "phone").await?;
    send_many(&ctx, &mut bob_s.open(&conv).await?, "x", 2).await?;
    send_many(&ctx, &mut alice_s.open(&conv).await?, "y", 1).await?;
    let s = state(&alice_s.sync(0, 0).await?.conversations, &conv)?.clone();
    ensure_eq!(
        (s.head_seq, s.read_seq, s.unread_count),
        (3, 3, 0),
        "sender's (head, read, unread)"
    );
    Ok(())
}

async fn mark_read_errors(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob, carol, dave) = (
        ctx.user("alice"),
        ctx.user("bob"),
        ctx.user("carol"),
        ctx.user("dave"),
    );
    let mut session = ctx.session(&alice, "phone").await?;
    // As a client that predates MarkRead.request_id: no id, so the Errors are attributed by position.
    // None: a success, which is never answered. A Heartbeat after each MarkRead is the barrier of
    // FERRY-ERR-9: an Error before its HeartbeatAck answers that MarkRead, so the answers attribute.
    for (conversation_id, code) in mark_read_targets(&ctx, [&alice, &bob, &carol, &dave]) {
        session
            .send_control(frame(Kind::MarkRead(MarkRead {
                conversation_id: conversation_id.clone(),
                seq: 1,
                request_id: 0,
            })))
            .await?;
        session
            .send_control(frame(Kind::Heartbeat(Heartbeat { sync_token: 0 })))
            .await?;
        let first = session.next_control("Error or HeartbeatAck").await?;
        match (code, first.kind) {
            (None, Some(Kind::HeartbeatAck(_))) => continue,
            (None, other) => {
                fail!("MarkRead on {conversation_id} (own, not created yet): expected no answer, got {other:?}")
            }
            (Some(code), kind) => {
                let e = expect_error(Frame { kind }, code)
                    .map_err(|v| Verdict::Fail(format!("MarkRead on {conversation_id}: {v:?}")))?;
                ensure_eq!(e.request_id, 0, "Error.request_id for MarkRead");
            }
        }
        match session.next_control("HeartbeatAck").await?.kind {
            Some(Kind::HeartbeatAck(_)) => {}
            other => {
                fail!("after the Error for {conversation_id}: expected HeartbeatAck, got {other:?}")
            }
        }
    }
    // MarkRead did not create the direct conversation (FERRY-READ-1).
    let listed = session.sync(0, 0).await?;
    ensure!(
        !ids(&listed.conversations).contains(&ctx.direct(&alice, &bob)),
        "MarkRead created the direct conversation"
    );
    Ok(())
}

/// MarkRead targets of `[user, peer, stranger, stranger]` in FERRY-READ-1's check order, with the code each
/// is refused with (None: a success, never answered).
fn mark_read_targets(ctx: &ServerCtx, users: [&str; 4]) -> Vec<(String, Option<ErrorCode>)> {
    let [user, peer, carol, dave] = users;
    let no_group = format!("g:{:032x}", rand::random::<u128>());
    vec![
        (ctx.direct(carol, dave), Some(ErrorCode::FORBIDDEN)),
        (
            "no-such-kind:1".to_owned(),
            Some(ErrorCode::INVALID_ARGUMENT),
        ),
        (no_group, Some(ErrorCode::NOT_FOUND)),
        (ctx.direct(user, peer), None),
    ]
}

/// Finding 7 of issue 12: two failing MarkReads could not be told apart. Now each carries a request_id
/// and its refusal echoes it, so a client needs no barrier: all MarkReads are pipelined, then one
/// Heartbeat ends the answers. A server that answers with request_id 0 (the old behaviour) fails here.
async fn mark_read_request_ids(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob, carol, dave) = (
        ctx.user("alice"),
        ctx.user("bob"),
        ctx.user("carol"),
        ctx.user("dave"),
    );
    let mut session = ctx.session(&alice, "phone").await?;
    // The success sits between refusals, so an answer to it would shift every later id.
    let mut targets = mark_read_targets(&ctx, [&alice, &bob, &carol, &dave]);
    targets.swap(2, 3);
    let mut expected = Vec::new();
    for (conversation_id, code) in targets {
        let request_id = session.request_id();
        if let Some(code) = code {
            expected.push((request_id, code, conversation_id.clone()));
        }
        session
            .send_control(frame(Kind::MarkRead(MarkRead {
                conversation_id,
                seq: 1,
                request_id,
            })))
            .await?;
    }
    session
        .send_control(frame(Kind::Heartbeat(Heartbeat { sync_token: 0 })))
        .await?;
    for (request_id, code, conversation_id) in expected {
        let answer = session.next_control("Error refusing a MarkRead").await?;
        let e = expect_error(answer, code).map_err(|v| {
            Verdict::Fail(format!("MarkRead {request_id} on {conversation_id}: {v:?}"))
        })?;
        ensure_eq!(
            e.request_id,
            request_id,
            "Error.request_id refusing the MarkRead on {conversation_id}"
        );
        ensure!(
            e.client_msg_id.is_empty(),
            "Error refusing a MarkRead carries a client_msg_id"
        );
    }
    match session.next_control("HeartbeatAck").await?.kind {
        Some(Kind::HeartbeatAck(_)) => Ok(()),
        other => fail!("after the MarkRead refusals: expected HeartbeatAck, got {other:?} (a successful MarkRead was answered?)"),
    }
}

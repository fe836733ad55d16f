//! Send → SendAck, dedupe, delivery, acknowledgement and Pull.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, MessageKind, Pull, Send};
use ferry_protocol::ErrorCode;

use super::{ensure_gap_free, expect_error, pull_all, send_many, ServerCtx};
use crate::runner::{Case, CaseResult};
use crate::{case, ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(
            [
                "FERRY-SEND-6",
                "FERRY-MSG-1",
                "FERRY-MSG-12",
                "FERRY-STREAM-4"
            ],
            "SendAck carries gap-free seqs and the message is stored as sent",
            send_ack
        ),
        case!(
            [
                "FERRY-MSG-9",
                "FERRY-SEND-5",
                "FERRY-DELIVER-2",
                "FERRY-MSG-3"
            ],
            "a repeated client_msg_id answers the original seq with duplicate=true",
            dedupe
        ),
        case!(
            ["FERRY-SEND-8", "FERRY-SEND-7"],
            "pipelined Sends on one stream are acked in order with increasing seqs",
            pipelined
        ),
        case!(
            ["FERRY-SEND-4", "FERRY-ID-2", "FERRY-ERR-1"],
            "invalid client_msg_id and oversized body are INVALID_ARGUMENT; the stream stays open",
            invalid_sends
        ),
        case!(
            [
                "FERRY-DELIVER-1",
                "FERRY-DELIVER-2",
                "FERRY-STREAM-3",
                "FERRY-STREAM-2"
            ],
            "Deliver reaches other devices and the peer, not the sending device",
            deliver
        ),
        case!(
            ["FERRY-DELIVER-5"],
            "no history is pushed on connect",
            no_history_push
        ),
        case!(
            ["FERRY-ACK-2", "FERRY-ACK-3"],
            "Ack moves the device cursor, reported as acked_seq and clamped to the head",
            ack_cursor
        ),
        case!(
            ["FERRY-PULL-1", "FERRY-PULL-2"],
            "Pull pages with has_more and clamps the limit to max_pull_page",
            pull_paging
        ),
        case!(
            ["FERRY-PULL-3"],
            "a PullResult stays within max_frame_size yet returns at least one message",
            pull_frame_size
        ),
        case!(
            ["FERRY-PULL-6"],
            "pipelined Pulls are answered in order",
            pull_order
        ),
        case!(
            ["FERRY-MSGFMT-1", "FERRY-EXT-2", "FERRY-FRAME-11"],
            "unknown fields inside a known frame are ignored",
            unknown_fields
        ),
    ]
}

async fn send_ack(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let session = ctx.session(&alice, "phone").await?;
    let mut stream = session.open(&conv).await?;
    let mut acks = Vec::new();
    for i in 1..=5u64 {
        let ack = stream
            .send_and_ack(&format!("m{i}"), format!("hello {i}").as_bytes())
            .await?;
        ensure_eq!(ack.client_msg_id, format!("m{i}"), "SendAck.client_msg_id");
        ensure!(!ack.duplicate, "first Send of m{i} answered duplicate=true");
        ensure!(ack.server_time_ms > 0, "SendAck.server_time_ms is 0");
        acks.push(ack);
    }
    ensure_gap_free(
        &acks.iter().map(|a| a.seq).collect::<Vec<_>>(),
        5,
        "SendAck seqs of a new conversation",
    )?;
    // Acked means visible: the peer can Pull every one of them, with server-set fields.
    let reader = ctx.session(&bob, "laptop").await?;
    let mut r = reader.open(&conv).await?;
    let page = r.pull(0, 0).await?;
    ensure_eq!(page.head_seq, 5, "PullResult.head_seq");
    ensure!(page.epoch != 0, "PullResult.epoch is 0");
    ensure_eq!(page.messages.len(), 5, "messages pulled");
    for (m, ack) in page.messages.iter().zip(&acks) {
        ensure_eq!(m.seq, ack.seq, "pulled seq");
        ensure_eq!(m.sender, alice, "Message.sender");
        ensure_eq!(m.sender_device, "phone", "Message.sender_device");
        ensure_eq!(m.client_msg_id, ack.client_msg_id, "Message.client_msg_id");
        ensure_eq!(
            m.server_time_ms,
            ack.server_time_ms,
            "Message.server_time_ms equals the SendAck's"
        );
        ensure_eq!(m.kind(), MessageKind::User, "Message.kind");
        ensure!(m.membership.is_none(), "user message with membership set");
    }
    ensure_eq!(&page.messages[2].body[..], b"hello 3", "Message.body");
    Ok(())
}

async fn dedupe(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let session = ctx.session(&alice, "phone").await?;
    let peer = ctx.session(&bob, "phone").await?;
    let mut a = session.open(&conv).await?;
    let first = a.send_and_ack("same-id", b"one").await?;
    a.send_and_ack("other-id", b"two").await?;
    // The body of a repeat is ignored, even if it differs.
    let again = a.send_and_ack("same-id", b"different body").await?;
    ensure_eq!(
        (again.seq, again.duplicate),
        (first.seq, true),
        "(seq, duplicate) of the repeat"
    );
    ensure_eq!(
        again.server_time_ms,
        first.server_time_ms,
        "server_time_ms of the repeat"
    );
    // On a new connection (as after a reconnect) it is still a duplicate.
    session.close();
    let session = ctx.session(&alice, "phone").await?;
    let mut a = session.open(&conv).await?;
    let again = a.send_and_ack("same-id", b"one").await?;
    ensure_eq!(
        (again.seq, again.duplicate),
        (first.seq, true),
        "(seq, duplicate) after reconnecting"
    );
    let all = pull_all(&mut a, 0).await?;
    ensure_eq!(all.len(), 2, "messages stored");
    // The original is unchanged (FERRY-MSG-3): same body and time, whatever the repeat carried.
    ensure_eq!(&all[0].body[..], b"one", "stored body");
    ensure_eq!(
        all[0].server_time_ms,
        first.server_time_ms,
        "stored server_time_ms"
    );
    // The peer got exactly two Delivers: duplicates cause none.
    let mut incoming = peer.accept().await?;
    incoming.wait_delivered(2).await?;
    let extra = tokio::time::timeout(Duration::from_millis(300), incoming.next("Deliver")).await;
    if let Ok(Ok(frame)) = extra {
        fail!("a duplicate Send caused another frame to the peer: {frame:?}");
    }
    Ok(())
}

async fn pipelined(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut stream = session.open(&ctx.direct(&alice, &bob)).await?;
    // 300 Sends can take longer than idle_timeout_ms on a loaded store (a Redis Cluster): a silent
    // control stream would then be closed with IDLE_TIMEOUT (FERRY-HB-4) mid-case, so heartbeat as a
    // client would.
    let keep_alive = tokio::spawn(super::heartbeat_forever(
        vec![session],
        ctx.heartbeat_every(),
    ));
    let seqs = send_many(&ctx, &mut stream, "p", 300).await;
    keep_alive.abort();
    ensure_gap_free(&seqs?, 300, "seqs of 300 pipelined Sends in send order")
}

async fn invalid_sends(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut stream = session.open(&ctx.direct(&alice, &bob)).await?;
    let too_long = "x".repeat(65);
    let big = vec![0u8; ctx.limits.max_body_size as usize + 1];
    let cases: [(&str, &[u8], &str); 5] = [
        ("", b"x", "empty client_msg_id"),
        ("has space", b"x", "client_msg_id with a space"),
        ("caf\u{e9}", b"x", "non-ASCII client_msg_id"),
        (&too_long[..], b"x", "65-byte client_msg_id"),
        ("big-body", &big[..], "body of max_body_size + 1 bytes"),
    ];
    for (id, body, what) in cases {
        stream
            .send_frame(frame(Kind::Send(Send {
                client_msg_id: id.into(),
                body: Bytes::copy_from_slice(body),
            })))
            .await?;
        let error = expect_error(
            stream.next_non_deliver("Error").await?,
            ErrorCode::INVALID_ARGUMENT,
        )
        .map_err(|v| crate::runner::Verdict::Fail(format!("{what}: {v:?}")))?;
        ensure_eq!(error.client_msg_id, id, "Error.client_msg_id for {what}");
        ensure_eq!(error.request_id, 0, "Error.request_id for {what}");
    }
    // A body of exactly max_body_size is fine, and the stream is still usable.
    let ok = stream.send_and_ack("max-body", &big[1..]).await?;
    ensure_eq!(
        ok.seq,
        1,
        "seq after rejected Sends (rejections store nothing)"
    );
    Ok(())
}

async fn deliver(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let phone = ctx.session(&alice, "phone").await?;
    let laptop = ctx.session(&alice, "laptop").await?;
    let peer = ctx.session(&bob, "tablet").await?;
    let mut stream = phone.open(&conv).await?;
    let seqs = send_many(&ctx, &mut stream, "d", 5).await?;
    // Server-opened streams start with Open for the conversation (FERRY-STREAM-2).
    for (who, session) in [("bob/tablet", &peer), ("alice/laptop", &laptop)] {
        let mut incoming = session.accept().await?;
        ensure_eq!(
            incoming.conversation,
            conv,
            "Open.conversation_id on the stream to {who}"
        );
        // Delivers may come in any order (FERRY-DELIVER-3 is a SHOULD); each exactly once.
        let mut got: Vec<u64> = incoming
            .wait_delivered(5)
            .await?
            .iter()
            .map(|m| m.seq)
            .collect();
        got.sort_unstable();
        ensure_eq!(got, sorted(&seqs), "seqs delivered to {who}");
        ensure_eq!(incoming.delivered[0].sender, alice, "Deliver sender");
    }
    // The sending device learns its messages from SendAcks only.
    stream.pull(0, 1).await?;
    ensure!(
        stream.delivered.is_empty(),
        "the sending device got Deliver on its own stream: {:?}",
        stream.delivered
    );
    if let Ok(Ok(extra)) = tokio::time::timeout(Duration::from_millis(300), phone.accept()).await {
        fail!(
            "the sending device got a server-opened stream for {}",
            extra.conversation
        );
    }
    Ok(())
}

fn sorted(seqs: &[u64]) -> Vec<u64> {
    let mut seqs = seqs.to_vec();
    seqs.sort_unstable();
    seqs
}

async fn no_history_push(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let session = ctx.session(&alice, "phone").await?;
    send_many(&ctx, &mut session.open(&conv).await?, "h", 3).await?;
    let late = ctx.session(&bob, "phone").await?;
    if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(700), late.accept()).await {
        fail!(
            "the server pushed a stream for {} to a device that just connected",
            stream.conversation
        );
    }
    Ok(())
}

async fn ack_cursor(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let sender = ctx.session(&alice, "phone").await?;
    send_many(&ctx, &mut sender.open(&conv).await?, "a", 4).await?;
    let mut reader = ctx.session(&bob, "phone").await?;
    let mut stream = reader.open(&conv).await?;
    stream.ack(3).await?;
    // Acks have no answer; a Pull round trip proves the Ack was processed before it (same stream).
    let page = stream.pull(4, 0).await?;
    ensure!(
        page.messages.is_empty(),
        "Pull after the head returned messages"
    );
    let acked = |states: &[ferry_protocol::frame::ConversationState]| {
        states
            .iter()
            .find(|c| c.conversation_id == conv)
            .map(|c| c.acked_seq)
    };
    // Cursors may be recorded lazily: poll Sync for a bounded time.
    let mut seen = None;
    for _ in 0..20 {
        seen = acked(&reader.sync(0, 0).await?.conversations);
        if seen == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure_eq!(seen, Some(3), "acked_seq after Ack{{3}}");
    // Above the head: clamped, not an error; backwards: ignored.
    stream.ack(1000).await?;
    stream.ack(1).await?;
    stream.pull(4, 0).await?;
    for _ in 0..20 {
        seen = acked(&reader.sync(0, 0).await?.conversations);
        if seen == Some(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure_eq!(
        seen,
        Some(4),
        "acked_seq after Ack{{1000}} with head 4, then Ack{{1}}"
    );
    Ok(())
}

async fn pull_paging(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let page_size = ctx.limits.max_pull_page as usize;
    let total = page_size + page_size / 2 + 1;
    if total > 5000 {
        crate::unsupported!("max_pull_page {page_size} is too large to fill cheaply");
    }
    let sender = ctx.session(&alice, "phone").await?;
    send_many(&ctx, &mut sender.open(&conv).await?, "pg", total).await?;
    let reader = ctx.session(&bob, "phone").await?;
    let mut s = reader.open(&conv).await?;
    for limit in [0u32, ctx.limits.max_pull_page + 1, u32::MAX] {
        let page = s.pull(0, limit).await?;
        ensure_eq!(
            page.messages.len(),
            page_size,
            "messages for limit {limit} (clamped to max_pull_page)"
        );
        ensure!(
            page.has_more,
            "has_more is false with {total} messages and a page of {page_size}"
        );
        ensure_eq!(page.head_seq, total as u64, "head_seq");
    }
    let page = s.pull(2, 3).await?;
    ensure_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4, 5],
        "Pull{{after 2, limit 3}}"
    );
    let last = s.pull(total as u64 - 2, 0).await?;
    ensure_eq!(last.messages.len(), 2, "messages of the last page");
    ensure!(!last.has_more, "has_more on the last page");
    let empty = s.pull(total as u64 + 10, 0).await?;
    ensure!(
        empty.messages.is_empty() && !empty.has_more,
        "Pull after the head: {empty:?}"
    );
    let all: Vec<u64> = pull_all(&mut s, 0).await?.iter().map(|m| m.seq).collect();
    ensure_gap_free(&all, total as u64, "seqs of all pages")
}

async fn pull_frame_size(ctx: Arc<ServerCtx>) -> CaseResult {
    let (body, frame_max) = (
        ctx.limits.max_body_size as usize,
        ctx.limits.max_frame_size as usize,
    );
    if frame_max > 8 << 20 {
        crate::unsupported!("max_frame_size {frame_max} is too large to fill cheaply");
    }
    // Enough maximum-size bodies that one page of them cannot fit in one frame.
    let count = frame_max / body + 2;
    if count > ctx.limits.max_pull_page as usize {
        crate::unsupported!(
            "max_pull_page {} x max_body_size {body} fits in max_frame_size {frame_max}",
            ctx.limits.max_pull_page
        );
    }
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    let big = vec![b'x'; body];
    for i in 0..count {
        s.send_and_ack(&format!("big{i}"), &big).await?;
    }
    // The driver's decoder rejects frames above 1 MiB, the default; a larger announced maximum is
    // still checked by counting.
    let page = s.pull(0, 0).await?;
    ensure!(
        !page.messages.is_empty(),
        "no message returned although {count} are due"
    );
    ensure!(
        page.messages.len() < count && page.has_more,
        "{} messages of {body} bytes in one PullResult (max_frame_size {frame_max}), has_more {}",
        page.messages.len(),
        page.has_more
    );
    let all = pull_all(&mut s, 0).await?;
    ensure_eq!(all.len(), count, "messages over all pages");
    Ok(())
}

async fn pull_order(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    send_many(&ctx, &mut s, "o", 10).await?;
    for after in [7u64, 0, 4, 9] {
        s.send_frame(frame(Kind::Pull(Pull {
            after_seq: after,
            limit: 1,
        })))
        .await?;
    }
    for after in [7u64, 0, 4, 9] {
        match s.next_non_deliver("PullResult").await?.kind {
            Some(Kind::PullResult(r)) => {
                let first = r.messages.first().map(|m| m.seq);
                ensure_eq!(
                    first,
                    Some(after + 1),
                    "first seq of the answer to Pull{{after {after}}}"
                );
            }
            other => fail!("expected PullResult, got {other:?}"),
        }
    }
    Ok(())
}

async fn unknown_fields(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    s.send_and_ack("u1", b"x").await?;
    // Pull{after_seq=0, limit=5} followed by unknown field 15 (varint 1) inside Pull, and unknown
    // field 60 (varint 2) in Frame itself is not allowed (that would be a kind), so only inside Pull.
    let pull = [0xaa, 0x01, 0x06, 0x08, 0x00, 0x10, 0x05, 0x78, 0x01];
    let mut bytes = vec![pull.len() as u8];
    bytes.extend_from_slice(&pull);
    s.send_raw(&bytes).await?;
    match s.next_non_deliver("PullResult").await?.kind {
        Some(Kind::PullResult(r)) => ensure_eq!(r.messages.len(), 1, "messages"),
        other => fail!("expected PullResult to a Pull with an unknown field, got {other:?}"),
    }
    Ok(())
}

//! Malformed input: every decoder error class on a conversation stream (stream reset, connection lives)
//! and on the control stream (connection close), plus inputs a decoder must accept.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Pull};
use ferry_protocol::ErrorCode;

use super::{close_code, expect_refused, ServerCtx};
use crate::runner::{Case, CaseResult};
use crate::{case, ensure_eq, fail};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(["FERRY-FRAME-4", "FERRY-FRAME-10", "FERRY-LIMIT-2", "FERRY-FRAME-12", "FERRY-SEC-6"], "a length prefix above max_frame_size resets the conversation stream with FRAME_TOO_LARGE", too_large_stream),
        case!(["FERRY-FRAME-4", "FERRY-FRAME-10"], "a length prefix above max_frame_size on the control stream closes with FRAME_TOO_LARGE", too_large_control),
        case!(["FERRY-FRAME-7", "FERRY-FRAME-10", "FERRY-EXT-3"], "an unknown frame type resets the conversation stream with UNKNOWN_FRAME", unknown_stream),
        case!(["FERRY-FRAME-7", "FERRY-FRAME-10"], "an unknown frame type on the control stream closes with UNKNOWN_FRAME", unknown_control),
        case!(["FERRY-FRAME-7"], "a zero-length frame is UNKNOWN_FRAME", zero_length),
        case!(["FERRY-FRAME-2", "FERRY-FRAME-10"], "an 11-byte varint prefix resets the stream with PROTOCOL_ERROR", bad_varint),
        case!(["FERRY-FRAME-6", "FERRY-FRAME-10", "FERRY-FRAME-5"], "malformed protobuf resets the stream with PROTOCOL_ERROR", malformed),
        case!(["FERRY-FRAME-9", "FERRY-FRAME-10", "FERRY-FRAME-13"], "a stream ending inside a frame is reset with PROTOCOL_ERROR (RESET_STREAM only: the peer already finished)", truncated),
        case!(["FERRY-FRAME-6", "FERRY-FRAME-10"], "a known field with a valid but wrong wire type is malformed (PROTOCOL_ERROR), not unknown", wrong_wire_type),
        case!(["FERRY-FRAME-3", "FERRY-FRAME-1"], "a frame split into one-byte writes is decoded", split_frame),
        case!(["FERRY-FRAME-2"], "a non-minimal length prefix is accepted", non_minimal_varint),
        case!(["FERRY-FRAME-8"], "with two kind fields the last one wins", two_kinds),
    ]
}

/// Opens a conversation stream, writes `bytes` after the Open, and expects a reset with `code`; then
/// checks that the connection still serves a new stream.
async fn stream_refuses(
    ctx: &ServerCtx,
    bytes: &[u8],
    code: ErrorCode,
    finish: bool,
) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&conv).await?;
    s.send_raw(bytes).await?;
    if finish {
        s.finish();
    }
    expect_refused(&mut s, code).await?;
    let mut again = session.open(&conv).await?;
    again.pull(0, 0).await.map_err(|e| {
        crate::runner::Verdict::Fail(format!("the connection did not survive a bad stream: {e}"))
    })?;
    Ok(())
}

/// Writes `bytes` on the control stream of a Ready session and expects a connection close with `code`.
async fn control_closes(ctx: &ServerCtx, bytes: &[u8], code: ErrorCode) -> CaseResult {
    let mut session = ctx.session(&ctx.user("alice"), "phone").await?;
    session.send_control_raw(bytes).await?;
    ensure_eq!(
        close_code(&session.connection, Duration::from_secs(5)).await?,
        Some(code),
        "connection close code"
    );
    Ok(())
}

fn prefix(len: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec::put_varint(len, &mut out);
    out.to_vec()
}

/// Frame field 99 (unknown), varint 1.
const UNKNOWN_KIND: [u8; 4] = [3, 0x98, 0x06, 0x01];

async fn too_large_stream(ctx: Arc<ServerCtx>) -> CaseResult {
    // Only the prefix is sent: the receiver must reject it without waiting for the body.
    stream_refuses(
        &ctx,
        &prefix(u64::from(ctx.limits.max_frame_size) + 1),
        ErrorCode::FRAME_TOO_LARGE,
        false,
    )
    .await
}

async fn too_large_control(ctx: Arc<ServerCtx>) -> CaseResult {
    control_closes(
        &ctx,
        &prefix(u64::from(ctx.limits.max_frame_size) + 1),
        ErrorCode::FRAME_TOO_LARGE,
    )
    .await
}

async fn unknown_stream(ctx: Arc<ServerCtx>) -> CaseResult {
    stream_refuses(&ctx, &UNKNOWN_KIND, ErrorCode::UNKNOWN_FRAME, false).await
}

async fn unknown_control(ctx: Arc<ServerCtx>) -> CaseResult {
    control_closes(&ctx, &UNKNOWN_KIND, ErrorCode::UNKNOWN_FRAME).await
}

async fn zero_length(ctx: Arc<ServerCtx>) -> CaseResult {
    stream_refuses(&ctx, &[0], ErrorCode::UNKNOWN_FRAME, false).await
}

async fn bad_varint(ctx: Arc<ServerCtx>) -> CaseResult {
    stream_refuses(&ctx, &[0x80; 11], ErrorCode::PROTOCOL_ERROR, false).await
}

async fn malformed(ctx: Arc<ServerCtx>) -> CaseResult {
    // Field 1 (hello) claims 5 bytes but the frame has 1; a valid frame follows and must not be decoded.
    let mut bytes = vec![3, 0x0a, 0x05, 0x61];
    bytes.extend_from_slice(&codec::encode(&frame(Kind::Pull(Pull {
        after_seq: 0,
        limit: 1,
    }))));
    stream_refuses(&ctx, &bytes, ErrorCode::PROTOCOL_ERROR, false).await
}

async fn truncated(ctx: Arc<ServerCtx>) -> CaseResult {
    let pull = codec::encode(&frame(Kind::Pull(Pull {
        after_seq: 0,
        limit: 1,
    })));
    stream_refuses(
        &ctx,
        &pull[..pull.len() - 1],
        ErrorCode::PROTOCOL_ERROR,
        true,
    )
    .await
}

async fn split_frame(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    let send = codec::encode(&frame(Kind::Send(ferry_protocol::frame::Send {
        client_msg_id: "split".into(),
        body: bytes::Bytes::from_static(b"one byte at a time"),
    })));
    for byte in send.iter() {
        s.send_raw(&[*byte]).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ack = s.expect_send_ack().await?;
    ensure_eq!(ack.client_msg_id, "split", "SendAck.client_msg_id");
    // Two frames in one write are two frames.
    let mut two = BytesMut::new();
    codec::encode_into(
        &frame(Kind::Pull(Pull {
            after_seq: 0,
            limit: 1,
        })),
        &mut two,
    );
    codec::encode_into(
        &frame(Kind::Pull(Pull {
            after_seq: 0,
            limit: 1,
        })),
        &mut two,
    );
    s.send_raw(&two).await?;
    for _ in 0..2 {
        match s.next_non_deliver("PullResult").await?.kind {
            Some(Kind::PullResult(_)) => {}
            other => fail!("expected PullResult, got {other:?}"),
        }
    }
    Ok(())
}

async fn non_minimal_varint(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    let encoded = codec::encode(&frame(Kind::Pull(Pull {
        after_seq: 0,
        limit: 1,
    })));
    let body = &encoded[1..]; // the body is short, so its minimal prefix is one byte
    let mut bytes = vec![(body.len() as u8) | 0x80, 0x80, 0x00];
    bytes.extend_from_slice(body);
    s.send_raw(&bytes).await?;
    match s.next_non_deliver("PullResult").await?.kind {
        Some(Kind::PullResult(_)) => Ok(()),
        other => fail!("expected PullResult to a frame with a 3-byte length prefix, got {other:?}"),
    }
}

async fn two_kinds(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    // ack{seq=1} then pull{after=0, limit=1}: the Pull wins and is answered.
    let body = [
        0xa2, 0x01, 0x02, 0x08, 0x01, 0xaa, 0x01, 0x04, 0x08, 0x00, 0x10, 0x01,
    ];
    let mut bytes = vec![body.len() as u8];
    bytes.extend_from_slice(&body);
    s.send_raw(&bytes).await?;
    match s.next_non_deliver("PullResult").await?.kind {
        Some(Kind::PullResult(_)) => Ok(()),
        other => fail!("expected PullResult (the last kind), got {other:?}"),
    }
}

async fn wrong_wire_type(ctx: Arc<ServerCtx>) -> CaseResult {
    // The vector malformed_wrong_wire_type_nested: Send (field 17) whose client_msg_id (field 1, a
    // string) is a varint. A decoder that skipped it as unknown would answer the Send instead.
    let bytes = [0x05, 0x8a, 0x01, 0x02, 0x08, 0x05];
    stream_refuses(&ctx, &bytes, ErrorCode::PROTOCOL_ERROR, false).await
}

//! Conversation streams: placement rules, several streams per conversation, the stream limit, idle
//! close, and recovery from a stream reset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, Open, Pull};
use ferry_protocol::{ErrorCode, Frame};

use super::{ensure_gap_free, expect_refused, pull_all, send_many, ServerCtx};
use crate::driver::{hello, DriverError};
use crate::runner::{Case, CaseResult};
use crate::{case, ensure, ensure_eq, fail, unsupported};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(["FERRY-STREAM-1"], "Hello or a second Open on a conversation stream resets it with PROTOCOL_ERROR", wrong_frames),
        case!(["FERRY-STREAM-1", "FERRY-CONN-1"], "a conversation frame on the control stream closes with PROTOCOL_ERROR", conversation_frame_on_control),
        case!(["FERRY-CONN-2"], "finishing the control stream after Welcome closes with PROTOCOL_ERROR", control_finished),
        case!(["FERRY-CONN-2"], "resetting the control stream after Welcome closes with PROTOCOL_ERROR", control_reset),
        case!(["FERRY-STREAM-9", "FERRY-SEND-7"], "a sender's stream reset mid-way loses nothing: resending on a new stream and Pull recover everything once", sender_reset),
        case!(["FERRY-STREAM-9", "FERRY-DELIVER-4"], "a receiver's stream reset mid-way loses nothing: Pull recovers everything", receiver_reset),
        case!(["FERRY-STREAM-6"], "the newest stream of a conversation carries Deliver; the older one stays valid", newest_stream),
        case!(["FERRY-STREAM-3", "FERRY-STREAM-6"], "when the newest stream closes, Deliver moves to the older open stream; the server opens none", fallback_stream),
        case!(["FERRY-FRAME-13", "FERRY-ERR-9", "FERRY-STREAM-4"], "a rejected Open with a Pull pipelined behind it: the reset code decides, any Error carries the Open's code", pipelined_rejected_open),
        case!(["FERRY-STREAM-10"], "after the client finishes a stream the server answers what it owes, then finishes", finish),
        case!(["FERRY-STREAM-7", "FERRY-TRANSPORT-7", "FERRY-LIMIT-2"], "one stream more than max_open_streams is reset with TOO_MANY_STREAMS", too_many_streams),
        case!(["FERRY-STREAM-8"], "an idle conversation stream is finished with STOP_SENDING(STREAM_CLOSED)", idle_stream),
    ]
}

async fn wrong_frames(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let session = ctx.session(&alice, "phone").await?;
    let token = ctx.token(&alice, "phone").await?;
    let mut s = session.open(&conv).await?;
    s.send_frame(frame(Kind::Hello(hello(&token, "phone"))))
        .await?;
    expect_refused(&mut s, ErrorCode::PROTOCOL_ERROR).await?;
    let mut s = session.open(&conv).await?;
    s.send_frame(frame(Kind::Open(Open {
        conversation_id: conv.clone(),
    })))
    .await?;
    expect_refused(&mut s, ErrorCode::PROTOCOL_ERROR).await?;
    // The connection is unaffected.
    let mut s = session.open(&conv).await?;
    s.send_and_ack("fine", b"ok").await?;
    Ok(())
}

async fn conversation_frame_on_control(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let mut session = ctx.session(&alice, "phone").await?;
    session
        .send_control(frame(Kind::Open(Open {
            conversation_id: ctx.direct(&alice, &bob),
        })))
        .await?;
    ensure_eq!(
        super::close_code(&session.connection, Duration::from_secs(5)).await?,
        Some(ErrorCode::PROTOCOL_ERROR),
        "close code"
    );
    Ok(())
}

async fn control_finished(ctx: Arc<ServerCtx>) -> CaseResult {
    let mut session = ctx.session(&ctx.user("alice"), "phone").await?;
    session.heartbeat(0).await?;
    session.finish_control();
    ensure_eq!(
        super::close_code(&session.connection, Duration::from_secs(5)).await?,
        Some(ErrorCode::PROTOCOL_ERROR),
        "close code after the client finished the control stream"
    );
    Ok(())
}

async fn control_reset(ctx: Arc<ServerCtx>) -> CaseResult {
    let mut session = ctx.session(&ctx.user("alice"), "phone").await?;
    session.heartbeat(0).await?;
    session.reset_control(ErrorCode::NO_ERROR);
    ensure_eq!(
        super::close_code(&session.connection, Duration::from_secs(5)).await?,
        Some(ErrorCode::PROTOCOL_ERROR),
        "close code after the client reset the control stream"
    );
    Ok(())
}

async fn sender_reset(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let session = ctx.session(&alice, "phone").await?;
    let mut first = session.open(&conv).await?;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..10 {
        let ack = first.send_and_ack(&format!("r{i}"), b"x").await?;
        acked.insert(ack.client_msg_id, ack.seq);
    }
    // Ten more pipelined, then the client abandons the stream before reading any answer.
    for i in 10..20 {
        first.send_message(&format!("r{i}"), b"x").await?;
    }
    first.reset(ErrorCode::NO_ERROR);
    // A client repeats every unanswered Send on a new stream (FERRY-STREAM-9, FERRY-SEND-2).
    let mut second = session.open(&conv).await?;
    for i in 10..20 {
        let ack = second.send_and_ack(&format!("r{i}"), b"x").await?;
        acked.insert(ack.client_msg_id, ack.seq);
    }
    let all = pull_all(&mut second, 0).await?;
    ensure_gap_free(
        &all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        20,
        "stored seqs",
    )?;
    let stored: BTreeMap<String, u64> = all
        .iter()
        .map(|m| (m.client_msg_id.clone(), m.seq))
        .collect();
    ensure_eq!(stored, acked, "client_msg_id → seq stored vs acked");
    Ok(())
}

async fn receiver_reset(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let sender = ctx.session(&alice, "phone").await?;
    let receiver = ctx.session(&bob, "phone").await?;
    let mut out = sender.open(&conv).await?;
    send_many(&ctx, &mut out, "a", 5).await?;
    let mut incoming = receiver.accept().await?;
    incoming.wait_delivered(5).await?;
    // The receiver drops its delivery stream mid-conversation; more messages follow meanwhile.
    incoming.reset(ErrorCode::NO_ERROR);
    send_many(&ctx, &mut out, "b", 15).await?;
    // Whatever the server did with those Delivers (new stream, dropped), Pull recovers everything.
    let mut fresh = receiver.open(&conv).await?;
    let all = pull_all(&mut fresh, 0).await?;
    ensure_gap_free(
        &all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        20,
        "seqs pulled after the reset",
    )?;
    Ok(())
}

async fn newest_stream(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let sender = ctx.session(&alice, "phone").await?;
    let receiver = ctx.session(&bob, "phone").await?;
    let mut old = receiver.open(&conv).await?;
    old.pull(0, 0).await?;
    let mut new = receiver.open(&conv).await?;
    new.pull(0, 0).await?; // the server has certainly seen the newer Open now
    let mut out = sender.open(&conv).await?;
    let seqs = send_many(&ctx, &mut out, "n", 3).await?;
    let mut got: Vec<u64> = new.wait_delivered(3).await?.iter().map(|m| m.seq).collect();
    got.sort_unstable();
    let mut seqs = seqs;
    seqs.sort_unstable();
    ensure_eq!(
        got,
        seqs,
        "seqs delivered on the newest stream (in any order)"
    );
    // The older stream still carries Send and Pull.
    let ack = old.send_and_ack("from-old", b"x").await?;
    ensure_eq!(ack.seq, 4, "seq of a Send on the older stream");
    ensure_eq!(
        old.pull(3, 0).await?.messages.len(),
        1,
        "Pull on the older stream"
    );
    Ok(())
}

async fn finish(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    for i in 0..5 {
        s.send_message(&format!("f{i}"), b"x").await?;
    }
    s.finish();
    for i in 0..5 {
        let ack = s.expect_send_ack().await?;
        ensure_eq!(ack.client_msg_id, format!("f{i}"), "SendAck after FIN");
    }
    match s.next("end of stream").await {
        Err(DriverError::Ended(_)) => Ok(()),
        Ok(frame) => fail!("expected the server to finish the stream, got {frame:?}"),
        Err(e) => fail!("expected a clean FIN from the server, got {e}"),
    }
}

async fn too_many_streams(ctx: Arc<ServerCtx>) -> CaseResult {
    let max = ctx.limits.max_open_streams as usize;
    if max > 1000 {
        unsupported!("max_open_streams {max} is too large to exceed cheaply");
    }
    let me = ctx.user("alice");
    let session = ctx.session(&me, "phone").await?;
    let mut streams = Vec::with_capacity(max);
    // Open + Pull on each, answers read afterwards: quick (the server may idle-close streams), and once
    // every PullResult is in, the server has counted every stream before the extra one opens.
    for i in 0..max {
        let peer = ctx.user(&format!("p{i}"));
        let mut s = session.open(&ctx.direct(&me, &peer)).await?;
        s.send_frame(frame(Kind::Pull(Pull {
            after_seq: 0,
            limit: 1,
        })))
        .await?;
        streams.push(s);
    }
    for (i, s) in streams.iter_mut().enumerate() {
        match s.next_non_deliver("PullResult").await {
            Ok(Frame {
                kind: Some(Kind::PullResult(_)),
            }) => {}
            other => fail!(
                "stream {} of max_open_streams {max}: expected PullResult, got {other:?}",
                i + 1
            ),
        }
    }
    let extra = ctx.user("extra");
    let mut one_more = session.open(&ctx.direct(&me, &extra)).await?;
    match tokio::time::timeout(
        Duration::from_secs(10),
        expect_refused(&mut one_more, ErrorCode::TOO_MANY_STREAMS),
    )
    .await
    {
        Ok(result) => result?,
        Err(_) => fail!(
            "stream {} of max_open_streams {max} was neither answered nor reset",
            max + 1
        ),
    }
    // Closing one makes room again.
    let mut closed = streams.pop().expect("max >= 1");
    closed.finish();
    let _ = closed.next("FIN").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = session.open(&ctx.direct(&me, &extra)).await?;
    again.pull(0, 1).await?;
    Ok(())
}

async fn idle_stream(ctx: Arc<ServerCtx>) -> CaseResult {
    let idle = ctx.stream_idle_timeout;
    if idle + Duration::from_secs(2) > ctx.max_wait {
        unsupported!(
            "waits for the stream idle timeout ({} ms, --stream-idle-timeout-ms); --max-wait is {} ms",
            idle.as_millis(),
            ctx.max_wait.as_millis()
        );
    }
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let mut session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    s.send_and_ack("i1", b"x").await?;
    // Keep the connection alive on the control stream while the conversation stream idles.
    let ended = tokio::time::timeout(idle + Duration::from_secs(2), async {
        loop {
            tokio::select! {
                end = s.next("FIN") => return end,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let _ = session.heartbeat(0).await;
        }
    })
    .await;
    match ended {
        Err(_) => fail!(
            "stream still open {} ms after it went idle",
            (idle + Duration::from_secs(2)).as_millis()
        ),
        Ok(Err(DriverError::Ended(_))) => {}
        Ok(other) => fail!("expected FIN on the idle stream, got {other:?}"),
    }
    let mut stopped = None;
    for _ in 0..40 {
        if let Err(e) = s.send_message("late", b"x").await {
            stopped = e.wire_code();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure_eq!(
        stopped,
        Some(ErrorCode::STREAM_CLOSED),
        "STOP_SENDING code on the idle stream"
    );
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    ensure!(
        s.send_and_ack("i2", b"x").await?.seq == 2,
        "a new stream continues the conversation"
    );
    Ok(())
}

async fn fallback_stream(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let sender = ctx.session(&alice, "phone").await?;
    let receiver = ctx.session(&bob, "phone").await?;
    let mut old = receiver.open(&conv).await?;
    old.pull(0, 0).await?;
    let mut new = receiver.open(&conv).await?;
    new.pull(0, 0).await?;
    // Close the newest stream in both directions and wait until the server has finished it too.
    new.finish();
    match new.next("end of the closed stream").await {
        Err(DriverError::Ended(_)) => {}
        other => fail!("expected the server to finish the closed stream, got {other:?}"),
    }
    let mut out = sender.open(&conv).await?;
    let seqs = send_many(&ctx, &mut out, "fb", 1).await?;
    let got: Vec<u64> = old.wait_delivered(1).await?.iter().map(|m| m.seq).collect();
    ensure_eq!(got, seqs, "seq delivered on the older stream still open");
    match tokio::time::timeout(Duration::from_secs(1), receiver.connection.accept_bi()).await {
        Err(_) => Ok(()),
        Ok(Ok(_)) => {
            fail!("the server opened a stream although an older stream of {conv} was open")
        }
        Ok(Err(e)) => fail!("connection failed: {e}"),
    }
}

async fn pipelined_rejected_open(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, carol, dave) = (ctx.user("alice"), ctx.user("carol"), ctx.user("dave"));
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&carol, &dave)).await?;
    s.send_frame(frame(Kind::Pull(Pull {
        after_seq: 0,
        limit: 1,
    })))
    .await?;
    // expect_refused accepts only Errors with the Open's code and ends on the reset's code: an Error
    // that attributed the refusal to the Pull with another code, or a PullResult, fails here.
    expect_refused(&mut s, ErrorCode::FORBIDDEN).await
}

//! Scripted cases about sending: a CreateGroup whose answer was lost, and the in-flight and rate
//! limits announced in Welcome.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, GroupResult};
use ferry_protocol::{ids, ErrorCode};
use tokio::time::Instant;

use super::*;
use crate::client_mode::judge::sends_match;
use crate::client_mode::scripted::Event;
use crate::client_mode::ClientCtx;
use crate::runner::CaseResult;
use crate::{ensure, ensure_eq, fail, unsupported};

/// `group-lost`: the client creates a group; the connection dies before the answer. The client must not
/// send the CreateGroup again blindly: a repeat is allowed only on a connection where it synced first.
pub async fn group_lost(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    let (mut client, mut conn) = connect(&ctx, &server, &scene, "group-lost", &model).await?;
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "no CreateGroup within {} s",
            STEP.as_secs()
        );
        match conn.next(left).await {
            Some(Event::Control(f)) if matches!(f.kind, Some(Kind::CreateGroup(_))) => break,
            Some(Event::Closed(why)) => fail!("connection closed ({why}) before CreateGroup"),
            Some(event) => conn.serve(&mut model, &event).await?,
            None => {}
        }
    }
    // As if the server crashed right after receiving it: no answer, the connection is gone.
    conn.connection.close(
        quinn::VarInt::from_u32(ErrorCode::INTERNAL.0),
        b"scripted crash",
    );
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until && client.exit_code().is_none() {
        let Some(mut conn) = server.accept_within(Duration::from_millis(200)).await else {
            continue;
        };
        conn.greet(model.welcome(), Duration::ZERO).await?;
        let mut synced = false;
        while Instant::now() < watch_until {
            match conn.next(Duration::from_millis(100)).await {
                Some(Event::Control(f)) => match &f.kind {
                    Some(Kind::CreateGroup(create)) => {
                        ensure!(
                            synced,
                            "CreateGroup sent again on a new connection without a Sync first (FERRY-GROUP-7)"
                        );
                        let answer = GroupResult {
                            request_id: create.request_id,
                            conversation_id: ids::group_conversation_id(rand::random()),
                            seq: 1,
                        };
                        conn.send_control(frame(Kind::GroupResult(answer))).await?;
                    }
                    Some(Kind::Sync(_)) => {
                        synced = true;
                        conn.serve(&mut model, &Event::Control(f)).await?;
                    }
                    _ => conn.serve(&mut model, &Event::Control(f)).await?,
                },
                Some(Event::Closed(_)) => break,
                Some(event) => conn.serve(&mut model, &event).await?,
                None => {}
            }
        }
    }
    if client.exit_code() == Some(crate::client_mode::UNSUPPORTED_EXIT) {
        unsupported!("the client does not support this case (exit 127)");
    }
    // Whether it gave up (an error exit) or still waits, it did not repeat blindly.
    let _ = client.kill().await;
    Ok(())
}

/// `limits`: Welcome announces `max_inflight_sends` = 3. The client's second message is refused with
/// TOO_MANY_INFLIGHT while the first is unanswered, its fourth with RATE_LIMITED (`retry_after_ms` 700).
/// The client never has more than 3 Sends unanswered, repeats the refused ones only after an answer to an
/// earlier Send or the retry delay, and gets every message stored once.
pub async fn limits(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    scene.count = ctx.count.max(6);
    const MAX_INFLIGHT: usize = 3;
    const RETRY_AFTER: Duration = Duration::from_millis(700);
    model.limits.max_inflight_sends = MAX_INFLIGHT as u32;
    let (mut client, mut conn) = connect(&ctx, &server, &scene, "limits", &model).await?;
    let mut inflight: Vec<(usize, ferry_protocol::frame::Send)> = Vec::new();
    let mut distinct: Vec<String> = Vec::new();
    let mut answered = 0usize;
    // (client_msg_id, answers given when it was refused) and (client_msg_id, when it was refused)
    let mut refused_inflight: Option<(String, usize)> = None;
    let mut refused_rate: Option<(String, Instant)> = None;
    let mut last_flush = Instant::now();
    let deadline = Instant::now() + ctx.client_timeout;
    while client.exit_code().is_none() && Instant::now() < deadline {
        // Sends are answered in batches every 150 ms, so that some are in flight when others arrive.
        if last_flush.elapsed() >= Duration::from_millis(150) {
            for (stream, send) in inflight.drain(..) {
                let ack = crate::client_mode::scripted::store_send(
                    &mut model,
                    &scene.conversation,
                    &send,
                );
                conn.send_on(stream, frame(Kind::SendAck(ack))).await?;
                answered += 1;
            }
            last_flush = Instant::now();
        }
        let Some(event) = conn.next(Duration::from_millis(50)).await else {
            continue;
        };
        let Event::Stream(stream, f) = &event else {
            conn.serve(&mut model, &event).await?;
            continue;
        };
        let Some(Kind::Send(send)) = &f.kind else {
            conn.serve(&mut model, &event).await?;
            continue;
        };
        let id = send.client_msg_id.clone();
        ensure!(
            inflight.len() < MAX_INFLIGHT,
            "a Send arrived while {} were unanswered; Welcome announced max_inflight_sends = {MAX_INFLIGHT} (FERRY-HELLO-5, FERRY-LIMIT-4)",
            inflight.len()
        );
        if let Some((refused, answers)) = &refused_inflight {
            if *refused == id {
                ensure!(
                    answered > *answers,
                    "{id} was repeated after TOO_MANY_INFLIGHT before any earlier Send was answered (FERRY-LIMIT-4)"
                );
            }
        }
        if let Some((refused, at)) = &refused_rate {
            if *refused == id {
                ensure!(
                    at.elapsed() >= RETRY_AFTER,
                    "{id} was repeated {} ms after RATE_LIMITED with retry_after_ms = {} (FERRY-LIMIT-4)",
                    at.elapsed().as_millis(),
                    RETRY_AFTER.as_millis()
                );
            }
        }
        if !distinct.contains(&id) {
            distinct.push(id.clone());
            if distinct.len() == 2 && !inflight.is_empty() {
                conn.refuse_send(*stream, &id, ErrorCode::TOO_MANY_INFLIGHT, 0)
                    .await?;
                refused_inflight = Some((id, answered));
                continue;
            }
            if distinct.len() == 4 {
                // Timed before the refusal leaves: the client cannot hold it earlier, while a time
                // taken after the write may already be late on a loaded machine (it once measured
                // 698 ms for a client that waited its 700).
                let refused_at = Instant::now();
                conn.refuse_send(
                    *stream,
                    &id,
                    ErrorCode::RATE_LIMITED,
                    RETRY_AFTER.as_millis() as u64,
                )
                .await?;
                refused_rate = Some((id, refused_at));
                continue;
            }
        }
        inflight.push((*stream, send.clone()));
    }
    let lines = client.finish(Duration::from_secs(5)).await?;
    ensure!(
        refused_inflight.is_some(),
        "the client never had two Sends in flight, so TOO_MANY_INFLIGHT could not be tried (send pipelined)"
    );
    let stored = model.stored_sends();
    ensure_eq!(stored.len(), scene.count, "messages stored");
    sends_match(&lines, &stored, &scene.conversation)
}

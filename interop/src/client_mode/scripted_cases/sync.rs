//! Scripted cases about catching up: an epoch change, decreasing server times, odd sync tokens, a
//! crash right after a Sync, and the history window of a new device.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, HeartbeatAck, SyncResult};
use ferry_protocol::ids;
use tokio::time::Instant;

use super::*;
use crate::client_mode::scripted::Event;
use crate::client_mode::{ClientCtx, OutputLine};
use crate::runner::CaseResult;
use crate::{ensure, ensure_eq, fail};

/// `epoch`: after three messages the conversation's epoch changes and numbering restarts at 1 (a store
/// that lost its history and does not know the old high-water mark); the client must hand over the new
/// epoch's messages although their seqs collide with the old ones.
pub async fn epoch(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    scene.count = 6;
    let conv = scene.conversation.clone();
    for i in 1..=3 {
        model.add(&conv, &scene.peer, &format!("epoch 1 message {i}"));
    }
    let (client, mut conn) = connect(&ctx, &server, &scene, "epoch", &model).await?;
    serve_until(&mut conn, &mut model, STEP, "the Ack of message 3", |m| {
        acked(m, &conv, 3)
    })
    .await?;
    let mut handed_over = expected(&model, &conv, 1..=3);
    let old = model.conversations.get_mut(&conv).expect("conversation");
    old.epoch = old
        .epoch
        .wrapping_add(crate::client_mode::scripted::random_nonzero())
        .max(1);
    old.messages.clear();
    model.acked.remove(&conv);
    for i in 1..=3 {
        model.add(&conv, &scene.peer, &format!("epoch 2 message {i}"));
    }
    handed_over.extend(expected(&model, &conv, 1..=3));
    for seq in 1..=3 {
        conn.deliver(&model, &conv, seq).await?;
    }
    let lines = serve_until_exit(&mut conn, &mut model, client, ctx.client_timeout).await?;
    ensure_eq!(
        received(&lines, &conv),
        handed_over,
        "messages handed over (seq, body) across the epoch change"
    );
    Ok(())
}

/// `server-time`: five messages whose server times decrease with seq arrive out of order; the client
/// hands them over by seq, with their server times.
pub async fn server_time(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    scene.count = 5;
    let conv = scene.conversation.clone();
    let (client, mut conn) = connect(&ctx, &server, &scene, "server-time", &model).await?;
    // Let the client sync (an empty account), then the messages arrive.
    serve_for(&mut conn, &mut model, Duration::from_millis(500)).await?;
    let base = ferry_protocol::unix_millis(std::time::SystemTime::now());
    for i in 1..=5u64 {
        let m = model.add(&conv, &scene.peer, &format!("message {i}"));
        let message = model.conversations.get_mut(&conv).expect("conversation");
        if let Some(stored) = message.messages.get_mut(&m.seq) {
            stored.server_time_ms = base + (5 - i) * 1000;
        }
    }
    for seq in [3, 5, 1, 4, 2] {
        conn.deliver(&model, &conv, seq).await?;
    }
    let lines = serve_until_exit(&mut conn, &mut model, client, ctx.client_timeout).await?;
    let got: Vec<(u64, u64)> = lines
        .iter()
        .filter_map(|l| match l {
            OutputLine::Received {
                seq, server_time, ..
            } => Some((*seq, *server_time)),
            _ => None,
        })
        .collect();
    let want: Vec<(u64, u64)> = (1..=5).map(|i| (i, base + (5 - i) * 1000)).collect();
    ensure_eq!(got, want, "(seq, server_time) handed over");
    Ok(())
}

/// `tokens`: Sync pages with tokens that are large, non-monotonic and random. The client must echo each
/// exactly (Sync again with `next_token` while `has_more`), never send a token the server did not issue,
/// and receive the one message of each of the three conversations.
pub async fn tokens(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    scene.count = 3;
    let conversations: Vec<String> = ["peer", "peer2", "peer3"]
        .iter()
        .map(|p| {
            let other = format!("{}-{p}", scene.user.trim_end_matches("-client"));
            ids::direct_conversation_id(&scene.user, &other).expect("valid ids")
        })
        .collect();
    for c in &conversations {
        model.add(c, "someone", &format!("the message of {c}"));
    }
    // Three pages: a huge token, a smaller one, then a random one.
    let tokens = [
        (1u64 << 63) | rand::random::<u32>() as u64,
        1 + rand::random::<u16>() as u64,
        1 + rand::random::<u64>() / 2,
    ];
    model.token = tokens[2];
    let (mut client, mut conn) = connect(&ctx, &server, &scene, "tokens", &model).await?;
    let deadline = Instant::now() + ctx.client_timeout;
    while let Some(event) = next_until_exit(&mut conn, &mut client, deadline).await {
        match &event {
            Event::Control(f) => match &f.kind {
                Some(Kind::Sync(sync)) => {
                    let page = match sync.since_token {
                        0 => 0,
                        t if t == tokens[0] => 1,
                        t if t == tokens[1] => 2,
                        t if t == tokens[2] => 3,
                        t => fail!("Sync with token {t}, which the server never issued (issued: {tokens:?}; FERRY-ID-6)"),
                    };
                    let conversations = match conversations.get(page) {
                        Some(c) => model.state(c).into_iter().collect(),
                        None => Vec::new(),
                    };
                    conn.send_control(frame(Kind::SyncResult(SyncResult {
                        request_id: sync.request_id,
                        conversations,
                        next_token: tokens[page.min(2)],
                        has_more: page < 2,
                    })))
                    .await?;
                }
                Some(Kind::Heartbeat(hb)) => {
                    ensure!(
                        hb.sync_token == 0 || tokens.contains(&hb.sync_token),
                        "Heartbeat with token {}, which the server never issued (FERRY-ID-6)",
                        hb.sync_token
                    );
                    conn.send_control(frame(Kind::HeartbeatAck(HeartbeatAck {
                        sync_token: hb.sync_token,
                        ..Default::default()
                    })))
                    .await?;
                }
                _ => {}
            },
            _ => conn.serve(&mut model, &event).await?,
        }
    }
    let lines = client.finish(Duration::from_secs(5)).await?;
    for c in &conversations {
        ensure_eq!(
            received(&lines, c),
            expected(&model, c, 1..=1),
            "messages handed over in {c} (reached through the Sync pages)"
        );
    }
    Ok(())
}

/// `sync-crash`: the first Sync reports a conversation with three messages and a token; the server then
/// answers nothing and the client is killed. The restarted client must still fetch the three messages:
/// persisting the token without the heads would hide them (a Sync from that token reports no change).
pub async fn sync_crash(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    scene.count = 3;
    let conv = scene.conversation.clone();
    for i in 1..=3 {
        model.add(&conv, &scene.peer, &format!("message {i}"));
    }
    let (client, mut conn) = connect(&ctx, &server, &scene, "sync-crash", &model).await?;
    let deadline = Instant::now() + STEP;
    let mut answered = false;
    while !answered {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no Sync within {} s", STEP.as_secs());
        if let Some(event) = conn.next(left).await {
            if matches!(&event, Event::Control(f) if matches!(f.kind, Some(Kind::Sync(_)))) {
                conn.serve(&mut model, &event).await?;
                answered = true;
            }
        }
    }
    // Time to persist what the client wants to persist; nothing else is answered. Then a crash.
    let crash_at = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < crash_at {
        let _ = conn
            .next(crash_at.saturating_duration_since(Instant::now()))
            .await;
    }
    let early = client.kill().await;
    ensure!(
        early.is_empty(),
        "the client reported output although no message was sent to it: {early:?}"
    );
    drop(conn);
    let (client, mut conn) = connect(&ctx, &server, &scene, "sync-crash", &model).await?;
    let lines = serve_until_exit(&mut conn, &mut model, client, ctx.client_timeout).await?;
    ensure_eq!(
        received(&lines, &conv),
        expected(&model, &conv, 1..=3),
        "messages handed over after the restart"
    );
    Ok(())
}

/// `history`: a conversation with 1,000 messages and one the user joined at seq 95, `recent_window` 20.
/// A new device hands over only the recent window (981..1000, and 95..100 from `first_seq`) and pulls
/// nothing older on its own.
pub async fn history(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    const WINDOW: u64 = 20;
    model.limits.recent_window = WINDOW as u32;
    let long = scene.conversation.clone();
    let joined = ids::direct_conversation_id(&scene.user, &format!("{}-late", scene.peer))
        .expect("valid ids");
    for i in 1..=1000 {
        model.add(&long, &scene.peer, &format!("message {i}"));
    }
    for i in 1..=100 {
        model.add(&joined, &scene.peer, &format!("message {i}"));
    }
    let late = model.conversations.get_mut(&joined).expect("conversation");
    late.first_seq = 95;
    late.messages.retain(|seq, _| *seq >= 95);
    scene.count = (WINDOW + 6) as usize;
    let (mut client, mut conn) = connect(&ctx, &server, &scene, "history", &model).await?;
    let deadline = Instant::now() + ctx.client_timeout;
    while let Some(event) = next_until_exit(&mut conn, &mut client, deadline).await {
        if let Event::Stream(i, f) = &event {
            if let (Some(Kind::Pull(pull)), Some(c)) = (&f.kind, conn.conversation_of(*i)) {
                let start = model
                    .conversations
                    .get(c)
                    .map_or(0, |conv| conv.head())
                    .saturating_sub(WINDOW);
                ensure!(
                    pull.after_seq >= start,
                    "Pull after {} in {c}: below the recent window's start {start}, unasked (FERRY-HIST-2)",
                    pull.after_seq
                );
            }
        }
        conn.serve(&mut model, &event).await?;
    }
    let lines = client.finish(Duration::from_secs(5)).await?;
    ensure_eq!(
        received(&lines, &long),
        expected(&model, &long, 981..=1000),
        "messages handed over in the long conversation (only the recent window)"
    );
    ensure_eq!(
        received(&lines, &joined),
        expected(&model, &joined, 95..=100),
        "messages handed over in the conversation joined at seq 95"
    );
    Ok(())
}

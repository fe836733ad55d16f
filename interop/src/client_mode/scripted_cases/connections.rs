//! Scripted cases about connections: what may come before Welcome (`early`), the reconnect after
//! GoAway (`zero-rtt`), and keep-alives under a short QUIC idle timeout (`keepalive`).

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::frame::frame::Kind;
use ferry_protocol::ErrorCode;
use tokio::time::Instant;

use super::*;
use crate::client_mode::judge::sends_match;
use crate::client_mode::scripted::Event;
use crate::client_mode::ClientCtx;
use crate::runner::CaseResult;
use crate::{ensure, ensure_eq, fail};

/// `early`: the client sends a typing signal, then FERRY_COUNT messages (two runs of a CLI, or one run
/// of a library client); Welcome is held back on every connection. Nothing but early-data frames and no
/// datagram may come before Welcome; the typing datagram and the Sends come after it.
pub async fn early(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    model.add(&scene.conversation, &scene.peer, "hello");
    let mut client = ctx.spawn("early", &scene).await?;
    let mut typed = false;
    let mut connections = 0;
    let deadline = Instant::now() + ctx.client_timeout;
    // Connections until the client exits: a client may do both on one connection or use several.
    let mut next = None;
    while client.exit_code().is_none() && Instant::now() < deadline {
        let mut conn = match next.take() {
            Some(conn) => conn,
            None => match server.accept_within(Duration::from_millis(200)).await {
                Some(conn) => conn,
                None => continue,
            },
        };
        connections += 1;
        conn.greet(model.welcome(), HOLD).await?;
        conn.check_before_welcome()?;
        while client.exit_code().is_none() && Instant::now() < deadline {
            match conn.next(Duration::from_millis(100)).await {
                Some(Event::Datagram(f)) => {
                    if let Some(Kind::Typing(t)) = &f.kind {
                        typed |= t.conversation_id == scene.conversation && t.active;
                    }
                }
                Some(Event::Closed(_)) => break,
                Some(event) if !serve_unless_closed(&mut conn, &mut model, &event).await? => break,
                Some(_) => {}
                None => {}
            }
            // A new connection means the old one is done, even if its close did not arrive.
            next = server.accept_within(Duration::ZERO).await;
            if next.is_some() {
                break;
            }
        }
    }
    // Unsupported (exit 127) and failed runs are told apart by finish().
    let lines = client.finish(Duration::from_secs(5)).await?;
    ensure!(connections > 0, "the client never connected");
    ensure!(
        typed,
        "no typing datagram (active, in {}) arrived after Welcome",
        scene.conversation
    );
    let stored = model.stored_sends();
    ensure_eq!(stored.len(), scene.count, "messages the client sent");
    sends_match(&lines, &stored, &scene.conversation)
}

/// `zero-rtt`: the client receives a message, the server sends GoAway; the client reconnects (with 0-RTT
/// if it can) and receives the next. On the second connection too, the control stream with Hello comes
/// first and nothing but early-data frames precede Welcome.
pub async fn zero_rtt(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    scene.count = 2;
    let conv = scene.conversation.clone();
    model.add(&conv, &scene.peer, "before the reconnect");
    let (mut client, mut conn) = connect(&ctx, &server, &scene, "zero-rtt", &model).await?;
    serve_until(&mut conn, &mut model, STEP, "the Ack of message 1", |m| {
        acked(m, &conv, 1)
    })
    .await?;
    conn.go_away(ErrorCode::SHUTTING_DOWN).await?;
    model.add(&conv, &scene.peer, "after the reconnect");
    let mut conn = server.accept(&mut client, CONNECT).await?;
    conn.greet(model.welcome(), HOLD).await?;
    conn.check_before_welcome()?;
    let lines = serve_until_exit(&mut conn, &mut model, client, ctx.client_timeout).await?;
    ensure_eq!(
        received(&lines, &conv),
        expected(&model, &conv, 1..=2),
        "messages handed over (seq, body)"
    );
    Ok(())
}

/// `keepalive`: the server advertises a QUIC idle timeout of 15 s and a heartbeat interval of 60 s, then
/// stays silent for 20 s. The client's keep-alives (shorter than the negotiated idle timeout) keep the
/// connection, on which the next message then arrives.
pub async fn keepalive(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(15)).await?;
    scene.count = 1;
    let conv = scene.conversation.clone();
    model.heartbeat_interval_ms = 60_000;
    model.limits.idle_timeout_ms = 120_000;
    model
        .conversations
        .insert(conv.clone(), crate::client_mode::scripted::Conv::new(9));
    let (mut client, mut conn) = connect(&ctx, &server, &scene, "keepalive", &model).await?;
    let quiet_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < quiet_until {
        match conn.next(quiet_until.saturating_duration_since(Instant::now())).await {
            Some(Event::Closed(why)) => fail!(
                "the connection ended while idle ({why}): keep-alives must come more often than the negotiated QUIC idle timeout of 15 s (FERRY-TRANSPORT-9)"
            ),
            Some(event) => conn.serve(&mut model, &event).await?,
            None => {}
        }
        if client.exit_code().is_some() {
            break;
        }
    }
    if let Some(why) = conn.connection.close_reason() {
        fail!("the connection ended while idle ({why}) (FERRY-TRANSPORT-9)");
    }
    model.add(&conv, &scene.peer, "after the quiet");
    conn.deliver(&model, &conv, 1).await?;
    let lines = serve_until_exit(&mut conn, &mut model, client, ctx.client_timeout).await?;
    ensure_eq!(
        received(&lines, &conv),
        expected(&model, &conv, 1..=1),
        "message handed over after the quiet period"
    );
    Ok(())
}

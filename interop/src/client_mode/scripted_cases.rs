//! Client cases against the scripted server ([`super::scripted`]): the client-side rules that only a
//! server behaving unusually can expose (held Welcome, epoch change, odd tokens, refused Sends, a lost
//! CreateGroup answer, datagrams for strangers, a short QUIC idle timeout).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, GroupResult, HeartbeatAck, SyncResult, Typing};
use ferry_protocol::{ids, ErrorCode};
use ferry_proxy::Faults;
use tokio::time::Instant;

use super::scripted::{Conn, Event, Model, ScriptedServer};
use super::{sends_match, ClientCtx, ClientRun, OutputLine, Scene};
use crate::runner::{CaseResult, Verdict};
use crate::{ensure, ensure_eq, fail, unsupported};

/// How long the scripted server holds Welcome back, so that a client that sends too early is seen.
const HOLD: Duration = Duration::from_millis(800);
/// Bound on waiting for the client's next connection.
const CONNECT: Duration = Duration::from_secs(15);
/// How long a case waits for the client to do the next expected thing.
const STEP: Duration = Duration::from_secs(10);

/// A scripted server, the client's scene (through a clean proxy to it) and an empty model.
async fn scripted(
    ctx: &ClientCtx,
    quic_idle: Duration,
) -> Result<(ScriptedServer, Scene, Model), Verdict> {
    let server = ScriptedServer::start(quic_idle)?;
    let mut scene = ctx.scene_to(server.addr, Faults::none()).await?;
    scene.ca = Some(server.ca.clone());
    let model = Model::new(&scene.user, &scene.device);
    Ok((server, scene, model))
}

/// Starts the client for `testcase`, accepts its connection and welcomes it at once.
async fn connect(
    ctx: &ClientCtx,
    server: &ScriptedServer,
    scene: &Scene,
    testcase: &str,
    model: &Model,
) -> Result<(ClientRun, Conn), Verdict> {
    let mut client = ctx.spawn(testcase, scene)?;
    let mut conn = server.accept(&mut client, CONNECT).await?;
    conn.greet(model.welcome(), Duration::ZERO).await?;
    Ok((client, conn))
}

/// Answers everything from the model until the client exits (bounded); returns its output.
async fn serve_until_exit(
    conn: &mut Conn,
    model: &mut Model,
    mut client: ClientRun,
    within: Duration,
) -> Result<Vec<OutputLine>, Verdict> {
    let deadline = Instant::now() + within;
    while let Some(event) = next_until_exit(conn, &mut client, deadline).await {
        if !serve_unless_closed(conn, model, &event).await? {
            break;
        }
    }
    client.finish(Duration::from_secs(5)).await
}

/// Answers `event` from the model; `Ok(false)` when the answer could not be written because the client
/// closed the connection meanwhile (to exit, or to move to a new connection): that is no failure, and
/// what the client stored is judged at the end.
async fn serve_unless_closed(
    conn: &mut Conn,
    model: &mut Model,
    event: &Event,
) -> Result<bool, Verdict> {
    match conn.serve(model, event).await {
        Ok(()) => Ok(true),
        Err(_) if conn.connection.close_reason().is_some() => Ok(false),
        Err(verdict) => Err(verdict),
    }
}

/// The client's next event on `conn`; None once the client exited or `deadline` passed.
async fn next_until_exit(
    conn: &mut Conn,
    client: &mut ClientRun,
    deadline: Instant,
) -> Option<Event> {
    while client.exit_code().is_none() && Instant::now() < deadline {
        if let Some(event) = conn.next(Duration::from_millis(100)).await {
            return Some(event);
        }
    }
    None
}

/// Answers from the model until `done(model)` holds; fails after `within`.
async fn serve_until(
    conn: &mut Conn,
    model: &mut Model,
    within: Duration,
    what: &str,
    done: impl Fn(&Model) -> bool,
) -> CaseResult {
    let deadline = Instant::now() + within;
    while !done(model) {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "{what} did not happen within {} s",
            within.as_secs()
        );
        match conn.next(left).await {
            Some(Event::Closed(why)) => {
                fail!("the client closed the connection ({why}) before {what}")
            }
            Some(event) => conn.serve(model, &event).await?,
            None => {}
        }
    }
    Ok(())
}

/// Answers from the model for `period` (the client syncing, or taking its time).
async fn serve_for(conn: &mut Conn, model: &mut Model, period: Duration) -> CaseResult {
    let until = Instant::now() + period;
    while let Some(event) = conn
        .next(until.saturating_duration_since(Instant::now()))
        .await
    {
        conn.serve(model, &event).await?;
    }
    Ok(())
}

/// (seq, body) of the messages the client handed over in `conversation`, in output order.
fn received(lines: &[OutputLine], conversation: &str) -> Vec<(u64, String)> {
    lines
        .iter()
        .filter_map(|l| match l {
            OutputLine::Received {
                conversation: c,
                seq,
                body,
                ..
            } if c == conversation => Some((*seq, body.clone())),
            _ => None,
        })
        .collect()
}

/// (seq, body) of the model's messages of `conversation` with seq in `range`.
fn expected(
    model: &Model,
    conversation: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<(u64, String)> {
    model.conversations[conversation]
        .messages
        .range(range)
        .map(|(seq, m)| (*seq, String::from_utf8_lossy(&m.body).into_owned()))
        .collect()
}

fn acked(model: &Model, conversation: &str, seq: u64) -> bool {
    model.acked.get(conversation).copied().unwrap_or(0) >= seq
}

// ---- cases -----------------------------------------------------------------------------------------

/// `early`: the client sends a typing signal, then FERRY_COUNT messages (two runs of a CLI, or one run
/// of a library client); Welcome is held back on every connection. Nothing but early-data frames and no
/// datagram may come before Welcome; the typing datagram and the Sends come after it.
pub async fn early(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    model.add(&scene.conversation, &scene.peer, "hello");
    let mut client = ctx.spawn("early", &scene)?;
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
        .wrapping_add(super::scripted::random_nonzero())
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
    if client.exit_code() == Some(super::UNSUPPORTED_EXIT) {
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
                let ack = super::scripted::store_send(&mut model, &scene.conversation, &send);
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
                conn.refuse_send(
                    *stream,
                    &id,
                    ErrorCode::RATE_LIMITED,
                    RETRY_AFTER.as_millis() as u64,
                )
                .await?;
                refused_rate = Some((id, Instant::now()));
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

/// A Typing datagram, optionally padded with an unknown protobuf field (which decoders skip) so that its
/// payload is `pad_to` bytes long.
fn typing_datagram(conversation: &str, user: &str, device: &str, pad_to: usize) -> bytes::Bytes {
    let plain = codec::encode_datagram(&frame(Kind::Typing(Typing {
        conversation_id: conversation.into(),
        user_id: user.into(),
        device_id: device.into(),
        active: true,
    })));
    if pad_to <= plain.len() + 4 {
        return plain;
    }
    // The pad is field 15 (length-delimited) of Frame: tag 0x7a, a 2-byte varint length, the bytes.
    let pad = pad_to - plain.len() - 3;
    let mut out = BytesMut::from(&plain[..]);
    out.put_u8(0x7a);
    out.put_u8((pad as u8 & 0x7f) | 0x80);
    out.put_u8((pad >> 7) as u8);
    out.put_bytes(b'x', pad);
    out.freeze()
}

/// `datagrams`: the server relays three typing signals: one for a conversation the client does not know,
/// one in its conversation but larger than the announced `max_frame_size`, one valid. The client reports
/// only the valid one.
pub async fn datagrams(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    scene.count = 1;
    let conv = scene.conversation.clone();
    model
        .conversations
        .insert(conv.clone(), super::scripted::Conv::new(7));
    let mut client = ctx.spawn("datagrams", &scene)?;
    let mut conn = server.accept(&mut client, CONNECT).await?;
    let Some(max_datagram) = conn.connection.max_datagram_size() else {
        fail!("the client does not accept QUIC datagrams (FERRY-TRANSPORT-7)");
    };
    // The smallest consistent limits (FERRY-LIMIT-3) whose frame size a datagram can exceed.
    let frame_limit = (max_datagram - 32).min(1500);
    ensure!(
        frame_limit > 1100,
        "QUIC datagrams of {max_datagram} bytes are too small for this case"
    );
    model.limits.max_frame_size = frame_limit as u32;
    model.limits.max_body_size = (frame_limit - 1024) as u32;
    conn.greet(model.welcome(), Duration::ZERO).await?;
    serve_for(&mut conn, &mut model, Duration::from_millis(500)).await?;
    let stranger = ids::direct_conversation_id(&scene.user, &format!("{}-stranger", scene.peer))
        .expect("valid ids");
    conn.datagram(typing_datagram(&stranger, "stranger", "stranger-dev", 0))?;
    conn.datagram(typing_datagram(
        &conv,
        &scene.peer,
        "oversized",
        frame_limit + 16,
    ))?;
    for _ in 0..2 {
        conn.datagram(typing_datagram(&conv, &scene.peer, "peer-dev", 0))?;
    }
    serve_for(&mut conn, &mut model, Duration::from_millis(500)).await?;
    model.add(&conv, &scene.peer, "the end");
    conn.deliver(&model, &conv, 1).await?;
    let lines = serve_until_exit(&mut conn, &mut model, client, ctx.client_timeout).await?;
    let typing: Vec<(&str, &str, &str)> = lines
        .iter()
        .filter_map(|l| match l {
            OutputLine::Typing {
                conversation,
                from,
                device,
                ..
            } => Some((conversation.as_str(), from.as_str(), device.as_str())),
            _ => None,
        })
        .collect();
    ensure!(
        typing.iter().all(|(c, ..)| *c != stranger),
        "the client reported a typing signal for a conversation it does not know (FERRY-SEC-8): {typing:?}"
    );
    ensure!(
        typing.iter().all(|(.., d)| *d != "oversized"),
        "the client reported a datagram larger than max_frame_size (FERRY-DGRAM-2): {typing:?}"
    );
    ensure!(
        typing
            .iter()
            .any(|(c, f, d)| *c == conv && *f == scene.peer && *d == "peer-dev"),
        "no typing record for the valid signal in {conv}: {typing:?}"
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
        .insert(conv.clone(), super::scripted::Conv::new(9));
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::frames::kind_name;

    #[test]
    fn padded_typing_decodes_and_has_the_size() {
        let d = typing_datagram("d:a:b", "b", "big", 1400);
        assert_eq!(d.len(), 1400);
        let f = codec::decode_datagram(&d, 2000).unwrap();
        assert_eq!(kind_name(&f), "Typing");
        assert!(codec::decode_datagram(&d, 1300).is_err());
    }
}

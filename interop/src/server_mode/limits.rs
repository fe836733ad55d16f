//! Announced limits and what exceeding them does. Limits come from `Welcome`; a case that cannot exceed
//! a limit cheaply says so (Unsupported) instead of pretending.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Send};
use ferry_protocol::ErrorCode;

use super::{close_code, ServerCtx};
use crate::driver::ConvStream;
use crate::runner::{Case, CaseResult, Verdict};
use crate::{case, ensure, ensure_eq, fail, unsupported};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(["FERRY-LIMIT-3", "FERRY-LIMIT-1", "FERRY-HB-4"], "announced limits are consistent", consistent),
        case!(["FERRY-LIMIT-3", "FERRY-FRAME-4", "FERRY-PULL-3"], "a maximum-size message with maximum-length ids fits the announced max_frame_size as Deliver and as PullResult", largest_message_fits),
        case!(["FERRY-STREAM-8", "FERRY-LIMIT-3"], "the stream idle timeout is announced in Limits.stream_idle_timeout_ms", stream_idle_announced),
        case!(["FERRY-SYNC-7", "FERRY-SYNC-3", "FERRY-HB-2"], "SyncResult and HeartbeatAck pages of groups with 256-byte names fit max_frame_size and still list every group", sync_pages_fit),
        case!(["FERRY-SEND-4", "FERRY-LIMIT-2", "FERRY-SEND-7"], "more pipelined Sends than max_inflight_sends get TOO_MANY_INFLIGHT, every Send answered once", too_many_inflight),
        case!(["FERRY-SEND-4", "FERRY-LIMIT-2"], "Sends beyond send_burst get RATE_LIMITED with retry_after_ms", rate_limited),
        case!(["FERRY-HB-4", "FERRY-CONN-6"], "a silent control stream is closed with IDLE_TIMEOUT after idle_timeout_ms", idle_timeout),
        case!(["FERRY-HB-2", "FERRY-CONN-3"], "every Heartbeat is answered, in order", heartbeats_answered),
    ]
}

async fn consistent(ctx: Arc<ServerCtx>) -> CaseResult {
    let l = &ctx.limits;
    ensure!(
        l.max_frame_size >= l.max_body_size.saturating_add(1024),
        "max_frame_size {} < max_body_size {} + 1024",
        l.max_frame_size,
        l.max_body_size
    );
    let heartbeat = if ctx.heartbeat_interval_ms == 0 {
        25_000
    } else {
        ctx.heartbeat_interval_ms
    };
    ensure!(
        l.idle_timeout_ms > heartbeat,
        "idle_timeout_ms {} <= heartbeat_interval_ms {heartbeat}",
        l.idle_timeout_ms
    );
    ensure!(
        l.stream_idle_timeout_ms >= 1000,
        "stream_idle_timeout_ms {} < 1000",
        l.stream_idle_timeout_ms
    );
    Ok(())
}

async fn stream_idle_announced(ctx: Arc<ServerCtx>) -> CaseResult {
    ensure!(
        ctx.announced_stream_idle_timeout_ms != 0,
        "Welcome.limits.stream_idle_timeout_ms is not announced (0)"
    );
    Ok(())
}

/// A user id of exactly 64 bytes (the longest valid id) unique to the case.
fn longest_user(ctx: &ServerCtx, tag: char) -> String {
    let base = ctx.user("");
    format!("{base}{}", tag.to_string().repeat(64 - base.len().min(63)))
}

async fn largest_message_fits(ctx: Arc<ServerCtx>) -> CaseResult {
    let limit = ctx.limits.max_frame_size as usize;
    let body = ctx.limits.max_body_size as usize;
    if body > 4 << 20 {
        unsupported!("max_body_size {body} is too large to send cheaply");
    }
    let (alice, bob) = (longest_user(&ctx, 'a'), longest_user(&ctx, 'b'));
    let conv = ctx.direct(&alice, &bob);
    let sender = ctx.session(&alice, &"d".repeat(64)).await?;
    let receiver = ctx.session(&bob, "phone").await?;
    let mut inbox = receiver.open(&conv).await?;
    inbox.pull(0, 0).await?;
    let mut out = sender.open(&conv).await?;
    let id = "m".repeat(64);
    out.send_and_ack(&id, &vec![b'x'; body]).await?;
    // The driver's reader accepts up to 1 MiB; measure each frame against the announced limit.
    let delivered = inbox.next("Deliver").await?;
    ensure!(
        matches!(delivered.kind, Some(Kind::Deliver(_))),
        "expected Deliver, got another frame"
    );
    let deliver_len = prost::Message::encoded_len(&delivered);
    ensure!(
        deliver_len <= limit,
        "Deliver of a {body}-byte body is {deliver_len} bytes, above max_frame_size {limit}"
    );
    inbox
        .send_frame(frame(Kind::Pull(ferry_protocol::frame::Pull {
            after_seq: 0,
            limit: 1,
        })))
        .await?;
    let page = inbox.next_non_deliver("PullResult").await?;
    let page_len = prost::Message::encoded_len(&page);
    match page.kind {
        Some(Kind::PullResult(r)) => ensure_eq!(r.messages.len(), 1, "messages in the PullResult"),
        other => fail!("expected PullResult, got {other:?}"),
    }
    ensure!(
        page_len <= limit,
        "PullResult of a {body}-byte body is {page_len} bytes, above max_frame_size {limit}"
    );
    Ok(())
}

/// Reads `count` answers; returns (SendAcks, Errors by code). Any other frame fails.
async fn answers(
    stream: &mut ConvStream,
    count: usize,
) -> Result<(usize, Vec<(ErrorCode, u64)>), Verdict> {
    let (mut acked, mut errors) = (0, Vec::new());
    for i in 0..count {
        match stream.next_non_deliver("SendAck or Error").await {
            Ok(frame) => match frame.kind {
                Some(Kind::SendAck(_)) => acked += 1,
                Some(Kind::Error(e)) => {
                    ensure!(
                        !e.client_msg_id.is_empty(),
                        "Error answering a Send without client_msg_id: {e:?}"
                    );
                    errors.push((ErrorCode(e.code), e.retry_after_ms));
                }
                other => fail!("expected SendAck or Error, got {other:?}"),
            },
            Err(e) => fail!(
                "answer {} of {count}: {e} (every Send must be answered)",
                i + 1
            ),
        }
    }
    Ok((acked, errors))
}

fn batch(prefix: &str, count: usize) -> BytesMut {
    let mut out = BytesMut::new();
    for i in 0..count {
        let send = frame(Kind::Send(Send {
            client_msg_id: format!("{prefix}{i}"),
            body: Bytes::from_static(b"x"),
        }));
        codec::encode_into(&send, &mut out);
    }
    out
}

async fn too_many_inflight(ctx: Arc<ServerCtx>) -> CaseResult {
    let max = ctx.limits.max_inflight_sends as usize;
    let count = 3 * max + 10;
    if count as u32 > ctx.limits.send_burst {
        unsupported!(
            "{count} Sends would exceed send_burst {} first",
            ctx.limits.send_burst
        );
    }
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let session = ctx.session(&alice, "phone").await?;
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    // Answers may take longer than the idle timeout on a slow machine: keep the session alive.
    let keep_alive = tokio::spawn(super::heartbeat_forever(
        vec![session],
        ctx.heartbeat_every(),
    ));
    // All in one write, so the server reads them faster than it can commit them.
    s.send_raw(&batch("f", count)).await?;
    let answered = answers(&mut s, count).await;
    keep_alive.abort();
    let (acked, errors) = answered?;
    for (code, _) in &errors {
        ensure_eq!(
            *code,
            ErrorCode::TOO_MANY_INFLIGHT,
            "error code for Sends beyond max_inflight_sends"
        );
    }
    ensure!(acked >= 1, "no Send was acked");
    if errors.is_empty() {
        unsupported!("the server answered {count} pipelined Sends faster than they arrived; could not get {max} in flight");
    }
    Ok(())
}

async fn rate_limited(ctx: Arc<ServerCtx>) -> CaseResult {
    let (burst, rate) = (
        ctx.limits.send_burst as usize,
        ctx.limits.send_rate_per_sec as usize,
    );
    let inflight = ctx.limits.max_inflight_sends as usize;
    // The bucket refills while we send: aim two seconds of refill above the burst, so that a server
    // answering faster than that has certainly been asked for more than its bucket held.
    let total = burst + 2 * rate + 50;
    if total > 10_000 {
        unsupported!(
            "send_burst {burst} + send_rate_per_sec {rate} is too large to exceed cheaply"
        );
    }
    // The bucket is per user and shared by their connections; each connection stays below
    // max_inflight_sends so that limit cannot answer first.
    let per_connection = inflight.saturating_sub(1).max(1);
    let connections = total.div_ceil(per_connection);
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let mut sessions = Vec::new();
    for i in 0..connections {
        sessions.push(ctx.session(&alice, &format!("dev{i}")).await?);
    }
    // Each stream is opened right before its batch is written: a stream opened early could reach the
    // stream idle timeout (FERRY-STREAM-8) while the other sessions start on a loaded machine, and the
    // server may close an idle stream that owes nothing. Once written, the stream owes answers and
    // stays open.
    let started = tokio::time::Instant::now();
    let mut streams = Vec::new();
    for (i, session) in sessions.iter().enumerate() {
        let mut stream = session.open(&conv).await?;
        stream
            .send_raw(&batch(&format!("c{i}-"), per_connection))
            .await?;
        streams.push(stream);
    }
    // Answering thousands of Sends can take longer than the idle timeout on a slow machine: heartbeat
    // every session meanwhile, as a client would.
    let keep_alive = tokio::spawn(super::heartbeat_forever(sessions, ctx.heartbeat_every()));
    let mut limited = Vec::new();
    for s in &mut streams {
        let (_, errors) = answers(s, per_connection).await?;
        for (code, retry_after) in errors {
            ensure_eq!(
                code,
                ErrorCode::RATE_LIMITED,
                "error code beyond the send rate"
            );
            limited.push(retry_after);
        }
    }
    keep_alive.abort();
    let sent = connections * per_connection;
    // If taking the Sends took so long that the bucket refilled faster than we drained it, the limit
    // could not be reached: say so instead of failing a server that is merely slow here.
    let refill_budget =
        Duration::from_secs_f64(sent.saturating_sub(burst) as f64 / rate.max(1) as f64);
    if limited.is_empty() && started.elapsed() > refill_budget {
        unsupported!(
            "the server took {} ms to answer {sent} Sends; at {rate}/s the bucket (size {burst}) refilled faster than this run could drain it",
            started.elapsed().as_millis()
        );
    }
    ensure!(
        !limited.is_empty(),
        "{} Sends within a burst of {burst} (rate {rate}/s) were all accepted",
        connections * per_connection
    );
    ensure!(
        limited.iter().all(|&ms| ms > 0),
        "RATE_LIMITED without retry_after_ms"
    );
    Ok(())
}

async fn idle_timeout(ctx: Arc<ServerCtx>) -> CaseResult {
    let idle = Duration::from_millis(u64::from(ctx.limits.idle_timeout_ms));
    if idle + Duration::from_secs(3) > ctx.max_wait {
        unsupported!(
            "waits idle_timeout_ms = {} ms; --max-wait is {} ms",
            idle.as_millis(),
            ctx.max_wait.as_millis()
        );
    }
    let session = ctx.session(&ctx.user("alice"), "phone").await?;
    // QUIC keep-alives continue underneath; only ferry-level silence counts.
    let started = tokio::time::Instant::now();
    let code = close_code(&session.connection, idle + Duration::from_secs(3)).await?;
    ensure_eq!(code, Some(ErrorCode::IDLE_TIMEOUT), "close code");
    ensure!(
        started.elapsed() + Duration::from_millis(200) >= idle,
        "closed after {} ms, before idle_timeout_ms",
        started.elapsed().as_millis()
    );
    Ok(())
}

async fn heartbeats_answered(ctx: Arc<ServerCtx>) -> CaseResult {
    let mut session = ctx.session(&ctx.user("alice"), "phone").await?;
    for _ in 0..5 {
        session
            .send_control(frame(Kind::Heartbeat(Default::default())))
            .await?;
    }
    for i in 0..5 {
        match session.next_control("HeartbeatAck").await?.kind {
            Some(Kind::HeartbeatAck(_)) => {}
            other => {
                fail!("answer {i} to 5 pipelined Heartbeats: expected HeartbeatAck, got {other:?}")
            }
        }
    }
    Ok(())
}

/// Most groups the Sync-page case creates; past this the limits are too large to exceed cheaply.
const MAX_SYNC_CASE_GROUPS: usize = 200;

/// Audit finding (issue 12's class "limits that contradict each other"): `max_sync_page` conversations
/// with long names could exceed a small `max_frame_size`, and ferry-server sent such pages (100 states
/// of ~330 bytes against a frame size of 8192). Enough groups are created that a full page cannot fit.
async fn sync_pages_fit(ctx: Arc<ServerCtx>) -> CaseResult {
    use prost::Message as _;
    let limit = ctx.limits.max_frame_size as usize;
    let page = ctx.limits.max_sync_page as usize;
    let name = "n".repeat(256);
    // One state of such a group: the 256-byte name, a 34-byte id, its integers and tags (~330 bytes).
    let probe = ferry_protocol::frame::ConversationState {
        conversation_id: format!("g:{}", "0".repeat(32)),
        name: name.clone(),
        head_seq: 1,
        first_seq: 1,
        epoch: u64::MAX,
        member: true,
        ..Default::default()
    };
    let state_len = probe.encoded_len() + 3;
    let groups = limit / state_len + 2;
    if groups > page || groups > MAX_SYNC_CASE_GROUPS {
        unsupported!(
            "a full Sync page ({page} groups of {state_len} bytes) cannot exceed max_frame_size {limit} cheaply: SYNC-7 cannot be exceeded"
        );
    }
    let mut session = ctx.session(&ctx.user("alice"), "phone").await?;
    let mut created = std::collections::BTreeSet::new();
    for _ in 0..groups {
        match session.create_group(&name, &[]).await? {
            Ok((id, _)) => created.insert(id),
            Err(code) => fail!("CreateGroup with a 256-byte name refused with {code:?}"),
        };
    }
    let fits = |what: &str, len: usize| {
        if len > limit {
            Err(Verdict::Fail(format!(
                "{what} is {len} bytes, above max_frame_size {limit} (FERRY-SYNC-7)"
            )))
        } else {
            Ok(())
        }
    };
    // The driver's reader accepts up to 1 MiB; each page is measured against the announced limit.
    let ack = session.heartbeat(0).await?;
    fits("HeartbeatAck", frame(Kind::HeartbeatAck(ack)).encoded_len())?;
    let (mut token, mut listed) = (0, std::collections::BTreeSet::new());
    for _ in 0..=groups {
        let result = session.sync(token, 0).await?;
        let (more, next) = (result.has_more, result.next_token);
        listed.extend(
            result
                .conversations
                .iter()
                .map(|c| c.conversation_id.clone()),
        );
        fits("SyncResult", frame(Kind::SyncResult(result)).encoded_len())?;
        if !more {
            let missing: Vec<_> = created.difference(&listed).collect();
            ensure!(
                missing.is_empty(),
                "groups never listed by Sync: {missing:?}"
            );
            return Ok(());
        }
        token = next;
    }
    fail!("Sync paging did not end after {} pages", groups + 1)
}

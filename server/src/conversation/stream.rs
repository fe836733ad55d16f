//! One conversation stream: accepting it, authorizing its Open, and the serve loop.
//!
//! The serve loop reads frames and dispatches them: a Send is started by [`send::start`] and its pending
//! answer joins an ordered set, an Ack advances the delivery cursor, a Pull is answered at once. Answers
//! to Sends leave in the order the Sends arrived, whatever order their commits finish in.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::frame::{frame::Kind, Open};
use ferry_protocol::ids::{self, ConversationRef};
use ferry_protocol::{codec::frame, frames, ErrorCode, Frame};
use ferry_quic::{codes, FrameReader, FrameWriter};
use ferry_store::Membership;
use tokio::sync::watch;
use tracing::debug;

use super::send::{self, MemberChecked, PendingSend, SendAnswer};
use super::{delivery, pull};
use crate::connection::{Conn, STREAM_QUEUE};
use crate::errors::{from_store, Refusal};

/// How long a client-opened stream may take to send Open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Sends still pending when their stream ends may take to finish their fan-out.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts client-opened conversation streams until the connection ends.
pub(crate) async fn accept_loop(conn: Arc<Conn>) {
    let max = conn.shared.settings.limits.max_open_streams as usize;
    while let Ok((mut send, mut recv)) = conn.connection.accept_bi().await {
        if conn.open_streams.load(Ordering::Relaxed) >= max {
            let code = codes::to_varint(ErrorCode::TOO_MANY_STREAMS);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            conn.shared.metrics.error(ErrorCode::TOO_MANY_STREAMS);
            continue;
        }
        tokio::spawn(client_stream(conn.clone(), send, recv));
    }
}

/// A stream the client opened: expects Open first.
async fn client_stream(conn: Arc<Conn>, send: quinn::SendStream, recv: quinn::RecvStream) {
    let writer = FrameWriter::spawn(send, STREAM_QUEUE);
    let reader = FrameReader::new(recv, conn.shared.settings.limits.max_frame_size as usize);
    serve_client_stream(conn, writer, reader).await;
}

/// Serves a client-opened stream, whatever carries it (QUIC, or memory for `crate::fuzzing`).
pub(crate) async fn serve_client_stream(
    conn: Arc<Conn>,
    writer: FrameWriter,
    mut reader: FrameReader,
) {
    let _guard = StreamCount::new(&conn);
    let first = tokio::time::timeout(OPEN_TIMEOUT, reader.next()).await;
    let refusal = match first {
        Ok(Ok(Some(Frame {
            kind: Some(Kind::Open(Open { conversation_id })),
        }))) => match authorize_open(&conn, &conversation_id).await {
            Ok(_) => {
                let conversation: Arc<str> = conversation_id.into();
                register(&conn, &conversation, &writer);
                return serve(conn, conversation, writer, reader).await;
            }
            Err(refusal) => refusal,
        },
        Ok(Ok(Some(other))) => {
            let reason = format!("expected Open, got {}", frames::kind_name(&other));
            Refusal::new(ErrorCode::PROTOCOL_ERROR, reason)
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => Refusal::new(e.code().unwrap_or(ErrorCode::PROTOCOL_ERROR), e.to_string()),
        Err(_) => Refusal::new(ErrorCode::IDLE_TIMEOUT, "no Open within the timeout"),
    };
    reject(&conn, &writer, &mut reader, refusal).await;
}

/// Answers with an Error frame, then resets the stream with the same code.
async fn reject(conn: &Conn, writer: &FrameWriter, reader: &mut FrameReader, refusal: Refusal) {
    let Refusal { code, reason, .. } = refusal;
    debug!(user = %conn.session.user, code = code.name(), %reason, "conversation stream rejected");
    conn.shared.metrics.error(code);
    let _ = writer.send(frames::error(code, reason)).await;
    let _ = writer.reset(code).await;
    reader.stop(code);
}

/// Checks that the user may open `conversation`; creates a direct conversation on first use (and again
/// if the store lost it).
pub(super) async fn authorize_open(conn: &Conn, conversation: &str) -> Result<Membership, Refusal> {
    let store = &conn.shared.store;
    let user: &str = &conn.session.user;
    let exists = || async {
        let info = store.conversation(conversation).await.map_err(from_store)?;
        Ok::<bool, Refusal>(info.is_some())
    };
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
            if !exists().await? {
                store
                    .ensure_direct(conversation, a, b)
                    .await
                    .map_err(from_store)?;
            }
        }
        Some(ConversationRef::Group) => {
            if !exists().await? {
                return Err(Refusal::new(ErrorCode::NOT_FOUND, "no such conversation"));
            }
        }
    }
    store
        .membership(conversation, user)
        .await
        .map_err(from_store)?
        .ok_or_else(|| Refusal::new(ErrorCode::FORBIDDEN, "not a member"))
}

/// Adds `writer` as the newest open stream of `conversation`: it carries Deliver from now on
/// (FERRY-STREAM-6).
pub(super) fn register(conn: &Conn, conversation: &Arc<str>, writer: &FrameWriter) {
    let mut streams = conn.streams.lock().expect("streams lock");
    let open = streams.entry(conversation.clone()).or_default();
    open.retain(|w| !w.is_closed());
    open.push(writer.clone());
}

/// Forgets `writer` when its stream ends; Deliver then falls back to the newest stream of the
/// conversation still open, so the server opens a stream only if none is (FERRY-STREAM-3).
fn unregister(conn: &Conn, conversation: &str, writer: &FrameWriter) {
    let mut streams = conn.streams.lock().expect("streams lock");
    if let Some(open) = streams.get_mut(conversation) {
        open.retain(|w| !w.same_stream(writer) && !w.is_closed());
        if open.is_empty() {
            streams.remove(conversation);
        }
    }
}

/// Counts an open client-opened conversation stream for max_open_streams while alive.
struct StreamCount(Arc<Conn>);

impl StreamCount {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamCount(conn.clone())
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves an open conversation stream (client- or server-opened) until it ends, is reset, or idles out.
pub(super) async fn serve(
    conn: Arc<Conn>,
    conversation: Arc<str>,
    writer: FrameWriter,
    mut reader: FrameReader,
) {
    let idle = Duration::from_millis(u64::from(conn.shared.settings.stream_idle_timeout_ms));
    // Answers owed to Sends, in arrival order. At most max_inflight_sends of them hold an append; the
    // refusals queued behind those are bounded by as many again: past that, reading pauses (QUIC flow
    // control then holds the client back) until the oldest answer is written.
    let max_pending = 2 * (conn.shared.settings.limits.max_inflight_sends as usize).max(1);
    let mut pending: VecDeque<PendingSend> = VecDeque::new();
    let checked = MemberChecked::default();
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let ack_task = tokio::spawn(delivery::record_acks(
        conn.clone(),
        conversation.clone(),
        ack_rx,
    ));
    let mut deadline = tokio::time::Instant::now() + idle;
    let mut reading = true;
    loop {
        if !reading && pending.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(answer) = next_answer(&mut pending), if !pending.is_empty() => {
                // The in-flight slot is released only once the answer is queued for writing; the
                // fan-out comes after the SendAck, so the sender's latency does not include it.
                let SendAnswer { frame, permit: _permit, fan_out } = answer;
                let written = writer.send(frame).await;
                SendAnswer::fan_out(fan_out, &conn, &conversation).await;
                if written.is_err() {
                    break;
                }
            }
            read = reader.next(), if reading && pending.len() < max_pending => {
                deadline = tokio::time::Instant::now() + idle;
                match read {
                    Ok(Some(frame)) => {
                        match handle(&conn, &conversation, frame, &writer, &ack_tx, &checked).await {
                            Ok(Some(answer)) => pending.push_back(answer),
                            Ok(None) => {}
                            Err(refusal) => {
                                reject(&conn, &writer, &mut reader, refusal).await;
                                break;
                            }
                        }
                    }
                    Ok(None) => reading = false,
                    Err(e) => {
                        if let Some(code) = e.code() {
                            reject(&conn, &writer, &mut reader, Refusal::new(code, e.to_string())).await;
                        }
                        break;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline), if reading && pending.is_empty() => {
                // Idle: finish our side (the writer finishes once every sender is gone) and ask the
                // client to stop sending (FERRY-STREAM-8). Nothing is owed: no Send is pending.
                reader.stop(ErrorCode::STREAM_CLOSED);
                break;
            }
        }
    }
    unregister(&conn, &conversation, &writer);
    if !pending.is_empty() {
        // The stream is gone but these appends are queued: let them finish, so their messages still
        // reach the other devices. Their answers have nowhere to go; the client repeats the Sends
        // (deduplicated by client_msg_id). A separate task, so the stream stops counting now.
        tokio::spawn(finish(conn.clone(), conversation.clone(), pending));
    }
    // Acks already received are still recorded; the task ends when the watch sender drops.
    drop(ack_tx);
    let _ = ack_task.await;
}

/// The answer of the oldest pending Send, once it is ready (removed from `pending` then); `None` when
/// nothing is pending. Cancel-safe: dropped before the answer is ready, it leaves `pending` as it was.
///
/// Only the oldest is polled. Answers leave in arrival order anyway, and a younger Send's commit
/// completes without being polled (its result waits in its channel), so one group commit wakes the
/// stream's task once, not once per Send — and no per-Send task of a `FuturesOrdered` is allocated.
async fn next_answer(pending: &mut VecDeque<PendingSend>) -> Option<SendAnswer> {
    let answer = pending.front_mut()?.await;
    pending.pop_front();
    Some(answer)
}

/// Completes the Sends still pending on an ended stream and fans their messages out, discarding their
/// answers.
async fn finish(conn: Arc<Conn>, conversation: Arc<str>, mut pending: VecDeque<PendingSend>) {
    let left = pending.len();
    let all = async {
        while let Some(answer) = next_answer(&mut pending).await {
            SendAnswer::fan_out(answer.fan_out, &conn, &conversation).await;
        }
    };
    if tokio::time::timeout(FINISH_TIMEOUT, all).await.is_err() {
        // Their messages are durable or not stored at all; recipients recover with heads and Pull.
        debug!(
            left,
            "pending sends of an ended stream did not finish in time"
        );
    }
}

/// Handles one frame on an open stream. A returned future answers a Send; `Err` resets the stream.
async fn handle(
    conn: &Arc<Conn>,
    conversation: &Arc<str>,
    incoming: Frame,
    writer: &FrameWriter,
    acks: &watch::Sender<u64>,
    checked: &MemberChecked,
) -> Result<Option<PendingSend>, Refusal> {
    match incoming.kind {
        Some(Kind::Send(message)) => Ok(Some(
            send::start(conn, conversation, message, checked).await,
        )),
        Some(Kind::Ack(ack)) => {
            // Not allowed in early data (FERRY-ZERORTT-1): deferred until the handshake is complete.
            if !conn.handshake_complete().await {
                return Ok(None);
            }
            conn.shared.metrics.ack();
            acks.send_if_modified(|current| {
                let advanced = ack.seq > *current;
                *current = (*current).max(ack.seq);
                advanced
            });
            Ok(None)
        }
        Some(Kind::Pull(request)) => {
            conn.shared.metrics.pull();
            let reply = match pull::page(conn, conversation, request.after_seq, request.limit).await
            {
                Ok(result) => frame(Kind::PullResult(result)),
                Err(refusal) => frames::error(refusal.code, refusal.reason),
            };
            let _ = writer.send(reply).await;
            Ok(None)
        }
        other => {
            let name = frames::kind_name(&Frame { kind: other });
            Err(Refusal::new(
                ErrorCode::PROTOCOL_ERROR,
                format!("{name} is not allowed on a conversation stream"),
            ))
        }
    }
}

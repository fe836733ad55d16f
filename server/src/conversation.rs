//! Conversation streams: one bidirectional stream per active conversation, opened by either side with
//! `Open` (FERRY-STREAM-*). It carries Send → SendAck, Deliver → Ack and Pull → PullResult.
//!
//! Sends are pipelined: each one is appended by its own task (the store batches concurrent appends into
//! one commit), and the answers are written in the order the Sends arrived. The SendAck is queued only
//! after the append returned, i.e. after the commit is durable; fan-out to other devices happens in the
//! same task, so it completes even if this stream goes away meanwhile.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, Deliver, Open, PullResult, Send, SendAck};
use ferry_protocol::ids::{self, ConversationRef};
use ferry_protocol::{frames, unix_millis, ErrorCode, Frame};
use ferry_quic::{codes, FrameReader, FrameWriter};
use ferry_store::{Membership, NewMessage, PendingAppend, StoreError};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::connection::{Conn, STREAM_QUEUE};
use crate::errors::{from_store, store_code, Refusal};
use crate::fanout;
use crate::sessions::Outbound;

/// How long a client-opened stream may take to send Open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits for the client to allow one more server-opened stream.
const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepts client-opened conversation streams until the connection ends.
pub async fn accept_loop(conn: Arc<Conn>) {
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
    let _guard = StreamCount::new(&conn);
    let writer = FrameWriter::spawn(send, STREAM_QUEUE);
    let mut reader = FrameReader::new(recv, conn.shared.settings.limits.max_frame_size as usize);
    let first = tokio::time::timeout(OPEN_TIMEOUT, reader.next()).await;
    let conversation = match first {
        Ok(Ok(Some(Frame {
            kind: Some(Kind::Open(Open { conversation_id })),
        }))) => conversation_id,
        Ok(Ok(Some(other))) => {
            let reason = format!("expected Open, got {}", frames::kind_name(&other));
            return reject(
                &conn,
                &writer,
                &mut reader,
                ErrorCode::PROTOCOL_ERROR,
                reason,
            )
            .await;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let code = e.code().unwrap_or(ErrorCode::PROTOCOL_ERROR);
            return reject(&conn, &writer, &mut reader, code, e.to_string()).await;
        }
        Err(_) => {
            let reason = "no Open within the timeout".to_owned();
            return reject(&conn, &writer, &mut reader, ErrorCode::IDLE_TIMEOUT, reason).await;
        }
    };
    if let Err((code, reason)) = authorize_open(&conn, &conversation).await {
        return reject(&conn, &writer, &mut reader, code, reason).await;
    }
    let conversation: Arc<str> = conversation.into();
    register(&conn, &conversation, &writer);
    serve(conn, conversation, writer, reader).await;
}

/// Answers with an Error frame, then resets the stream with the same code.
async fn reject(
    conn: &Conn,
    writer: &FrameWriter,
    reader: &mut FrameReader,
    code: ErrorCode,
    reason: String,
) {
    debug!(user = %conn.session.user, code = code.name(), %reason, "conversation stream rejected");
    conn.shared.metrics.error(code);
    let _ = writer.send(frames::error(code, reason)).await;
    let _ = writer.reset(code).await;
    reader.stop(code);
}

/// Checks that the user may open `conversation`; creates a direct conversation on first use.
async fn authorize_open(conn: &Conn, conversation: &str) -> Result<Membership, Refusal> {
    let store = &conn.shared.store;
    let user: &str = &conn.session.user;
    match ids::parse_conversation_id(conversation) {
        None => {
            return Err((
                ErrorCode::INVALID_ARGUMENT,
                "malformed conversation id".into(),
            ))
        }
        Some(ConversationRef::Direct(a, b)) => {
            if user != a && user != b {
                return Err((ErrorCode::FORBIDDEN, "not a member".into()));
            }
            if store
                .conversation(conversation)
                .await
                .map_err(from_store)?
                .is_none()
            {
                store
                    .ensure_direct(conversation, a, b)
                    .await
                    .map_err(from_store)?;
            }
        }
        Some(ConversationRef::Group) => {
            if store
                .conversation(conversation)
                .await
                .map_err(from_store)?
                .is_none()
            {
                return Err((ErrorCode::NOT_FOUND, "no such conversation".into()));
            }
        }
    }
    match store
        .membership(conversation, user)
        .await
        .map_err(from_store)?
    {
        Some(membership) => Ok(membership),
        None => Err((ErrorCode::FORBIDDEN, "not a member".into())),
    }
}

/// Makes `writer` the stream the server delivers `conversation` on (the newest stream wins).
fn register(conn: &Conn, conversation: &Arc<str>, writer: &FrameWriter) {
    let mut streams = conn.streams.lock().expect("streams lock");
    streams.insert(conversation.clone(), writer.clone());
}

/// Forgets `writer` as the delivery stream of `conversation`, unless a newer stream replaced it.
fn unregister(conn: &Conn, conversation: &str, writer: &FrameWriter) {
    let mut streams = conn.streams.lock().expect("streams lock");
    if streams
        .get(conversation)
        .is_some_and(|current| current.same_stream(writer))
    {
        streams.remove(conversation);
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

/// The answer to one Send, produced by its append task.
type SendOutcome = (Frame, Option<OwnedSemaphorePermit>);

/// Serves an open conversation stream until it ends, is reset, or idles out.
async fn serve(
    conn: Arc<Conn>,
    conversation: Arc<str>,
    writer: FrameWriter,
    mut reader: FrameReader,
) {
    let idle = Duration::from_millis(u64::from(conn.shared.settings.stream_idle_timeout_ms));
    let mut pending: VecDeque<JoinHandle<SendOutcome>> = VecDeque::new();
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let ack_task = tokio::spawn(record_acks(conn.clone(), conversation.clone(), ack_rx));
    let mut deadline = tokio::time::Instant::now() + idle;
    let mut reading = true;
    loop {
        if !reading && pending.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            outcome = next_outcome(&mut pending) => {
                let (reply, _permit) = outcome;
                if writer.send(reply).await.is_err() {
                    break;
                }
            }
            read = reader.next(), if reading => {
                deadline = tokio::time::Instant::now() + idle;
                match read {
                    Ok(Some(frame)) => {
                        let handled = handle(&conn, &conversation, frame, &writer, &ack_tx).await;
                        match handled {
                            Ok(Some(task)) => pending.push_back(task),
                            Ok(None) => {}
                            Err((code, reason)) => {
                                reject(&conn, &writer, &mut reader, code, reason).await;
                                break;
                            }
                        }
                    }
                    Ok(None) => reading = false,
                    Err(e) => {
                        if let Some(code) = e.code() {
                            reject(&conn, &writer, &mut reader, code, e.to_string()).await;
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
    // Acks already received are still recorded; the task ends when the watch sender drops.
    drop(ack_tx);
    let _ = ack_task.await;
}

/// Waits for the oldest pending Send's answer (never resolves when none is pending).
async fn next_outcome(pending: &mut VecDeque<JoinHandle<SendOutcome>>) -> SendOutcome {
    let Some(front) = pending.front_mut() else {
        return std::future::pending().await;
    };
    let outcome = match front.await {
        Ok(outcome) => outcome,
        // The append task panicked: nothing is known to be stored, so the client must retry.
        Err(_) => (frames::error(ErrorCode::INTERNAL, "send failed"), None),
    };
    pending.pop_front();
    outcome
}

/// Handles one frame on an open stream. A returned task answers a Send; `Err` resets the stream.
async fn handle(
    conn: &Arc<Conn>,
    conversation: &Arc<str>,
    incoming: Frame,
    writer: &FrameWriter,
    acks: &watch::Sender<u64>,
) -> Result<Option<JoinHandle<SendOutcome>>, Refusal> {
    match incoming.kind {
        Some(Kind::Send(send)) => Ok(Some(start_send(conn, conversation, send).await)),
        Some(Kind::Ack(ack)) => {
            conn.shared.metrics.ack();
            acks.send_if_modified(|current| {
                let advanced = ack.seq > *current;
                *current = (*current).max(ack.seq);
                advanced
            });
            Ok(None)
        }
        Some(Kind::Pull(pull)) => {
            conn.shared.metrics.pull();
            let reply = match pull_page(conn, conversation, pull.after_seq, pull.limit).await {
                Ok(result) => frame(Kind::PullResult(result)),
                Err((code, msg)) => frames::error(code, msg),
            };
            let _ = writer.send(reply).await;
            Ok(None)
        }
        other => {
            let name = frames::kind_name(&Frame { kind: other });
            Err((
                ErrorCode::PROTOCOL_ERROR,
                format!("{name} is not allowed on a conversation stream"),
            ))
        }
    }
}

/// Validates a Send and queues its append; the returned task yields the SendAck or Error.
///
/// The append is queued here, in the order Sends arrived on the stream, so their seqs follow that order
/// (FERRY-SEND-8); only the wait for durability and the fan-out run in the spawned task, so many Sends of
/// one stream share a commit.
async fn start_send(
    conn: &Arc<Conn>,
    conversation: &Arc<str>,
    send: Send,
) -> JoinHandle<SendOutcome> {
    let started = Instant::now();
    let client_msg_id = send.client_msg_id.clone();
    let queued = match check_send(conn, conversation, &send).await {
        Ok(permit) => {
            let message = NewMessage {
                conversation: conversation.to_string(),
                sender: conn.session.user.to_string(),
                sender_device: conn.session.device.to_string(),
                client_msg_id: send.client_msg_id,
                body: send.body,
                server_time_ms: unix_millis(SystemTime::now()),
            };
            match queue_append(conn, message).await {
                Ok(pending) => Ok((pending, permit)),
                Err(e) => Err(store_refusal(&e)),
            }
        }
        Err(refusal) => Err(refusal),
    };
    let conn = conn.clone();
    let conversation = conversation.clone();
    tokio::spawn(async move {
        let (pending, permit) = match queued {
            Ok(queued) => queued,
            Err((code, msg, retry_after)) => {
                conn.shared.metrics.error(code);
                return (
                    frames::send_error(client_msg_id, code, msg, retry_after),
                    None,
                );
            }
        };
        match pending.await {
            Ok(appended) => {
                conn.shared
                    .metrics
                    .send(appended.duplicate, started.elapsed());
                let ack = frame(Kind::SendAck(SendAck {
                    client_msg_id,
                    seq: appended.seq,
                    server_time_ms: appended.server_time_ms,
                    duplicate: appended.duplicate,
                }));
                if let Some(stored) = appended.message {
                    let exclude = Some(conn.session.id);
                    fanout::deliver(
                        &conn.shared,
                        &conversation,
                        stored,
                        appended.epoch,
                        exclude,
                        None,
                    )
                    .await;
                }
                (ack, Some(permit))
            }
            Err(e) => {
                let (code, msg, retry_after) = store_refusal(&e);
                conn.shared.metrics.error(code);
                (
                    frames::send_error(client_msg_id, code, msg, retry_after),
                    Some(permit),
                )
            }
        }
    })
}

/// A store failure as a Send refusal; an unavailable store is worth retrying soon.
fn store_refusal(error: &StoreError) -> (ErrorCode, String, u64) {
    let retry_after = if matches!(error, StoreError::Unavailable(_)) {
        100
    } else {
        0
    };
    (store_code(error), error.to_string(), retry_after)
}

async fn queue_append(conn: &Conn, message: NewMessage) -> Result<PendingAppend, StoreError> {
    #[cfg(feature = "test-hooks")]
    if conn.shared.hooks.fails_appends() {
        return Err(StoreError::Backend("injected by test hook".into()));
    }
    conn.shared.store.queue_append(message).await
}

/// The checks before an append (FERRY-SEND-*): ids and size, membership, in-flight limit, rate.
async fn check_send(
    conn: &Conn,
    conversation: &str,
    send: &Send,
) -> Result<OwnedSemaphorePermit, (ErrorCode, String, u64)> {
    let limits = &conn.shared.settings.limits;
    if !ids::is_valid_client_msg_id(&send.client_msg_id) {
        return Err((
            ErrorCode::INVALID_ARGUMENT,
            "invalid client_msg_id".into(),
            0,
        ));
    }
    if send.body.len() > limits.max_body_size as usize {
        let msg = format!(
            "body of {} bytes exceeds {}",
            send.body.len(),
            limits.max_body_size
        );
        return Err((ErrorCode::INVALID_ARGUMENT, msg, 0));
    }
    match conn
        .shared
        .store
        .membership(conversation, &conn.session.user)
        .await
    {
        Ok(Some(m)) if m.is_member() => {}
        Ok(_) => return Err((ErrorCode::FORBIDDEN, "not a member".into(), 0)),
        Err(e) => return Err(store_refusal(&e)),
    }
    let Ok(permit) = conn.inflight.clone().try_acquire_owned() else {
        let msg = format!("more than {} sends in flight", limits.max_inflight_sends);
        return Err((ErrorCode::TOO_MANY_INFLIGHT, msg, 0));
    };
    if let Err(wait) = conn
        .shared
        .send_rate
        .check(&conn.session.user, Instant::now())
    {
        let retry_after = (wait.as_millis() as u64).max(1);
        return Err((
            ErrorCode::RATE_LIMITED,
            "send rate exceeded".into(),
            retry_after,
        ));
    }
    Ok(permit)
}

/// One page of messages for Pull (FERRY-PULL-*): from the reader's first visible seq, up to their visible
/// head, at most max_pull_page.
async fn pull_page(
    conn: &Conn,
    conversation: &str,
    after_seq: u64,
    limit: u32,
) -> Result<PullResult, Refusal> {
    let store = &conn.shared.store;
    let info = store
        .conversation(conversation)
        .await
        .map_err(from_store)?
        .ok_or((ErrorCode::NOT_FOUND, "no such conversation".to_owned()))?;
    let membership = store
        .membership(conversation, &conn.session.user)
        .await
        .map_err(from_store)?
        .ok_or((ErrorCode::FORBIDDEN, "not a member".to_owned()))?;
    let max = conn.shared.settings.limits.max_pull_page;
    let limit = if limit == 0 { max } else { limit.min(max) };
    let head = membership.visible_head(info.head_seq);
    let after = after_seq.max(membership.first_seq.saturating_sub(1));
    let mut messages = store
        .read(conversation, after, head, limit)
        .await
        .map_err(from_store)?;
    truncate_to_frame(
        &mut messages,
        conn.shared.settings.limits.max_frame_size as usize,
    );
    let last = messages.last().map_or(after, |m| m.seq);
    Ok(PullResult {
        messages,
        head_seq: head,
        has_more: last < head,
        epoch: info.epoch,
    })
}

/// Keeps a PullResult within the maximum frame size: drops trailing messages, but always keeps the first
/// so paging makes progress (FERRY-PULL-3; max_frame_size exceeds max_body_size by a margin).
fn truncate_to_frame(messages: &mut Vec<ferry_protocol::frame::Message>, max_frame_size: usize) {
    use prost::Message as _;
    const RESULT_OVERHEAD: usize = 64; // head_seq, has_more, epoch, frame tag and length
    let mut size = RESULT_OVERHEAD;
    let keep = messages
        .iter()
        .position(|m| {
            size += m.encoded_len() + 8; // field tag + length varint
            size > max_frame_size
        })
        .unwrap_or(messages.len())
        .max(1);
    messages.truncate(keep);
}

/// Records the device's cumulative cursor, coalescing bursts of Acks into one store write at a time.
async fn record_acks(conn: Arc<Conn>, conversation: Arc<str>, mut acks: watch::Receiver<u64>) {
    while acks.changed().await.is_ok() {
        let seq = *acks.borrow_and_update();
        let store = &conn.shared.store;
        let head = match store.conversation(&conversation).await {
            Ok(Some(info)) => info.head_seq,
            _ => continue,
        };
        let (user, device) = (&conn.session.user, &conn.session.device);
        if let Err(e) = store
            .set_delivered(&conversation, user, device, seq.min(head))
            .await
        {
            debug!(error = %e, "delivery cursor not recorded");
        }
    }
}

/// Writes this session's deliveries and relayed datagrams until the connection ends.
pub async fn outbound_loop(conn: Arc<Conn>, mut outbound: mpsc::Receiver<Outbound>) {
    while let Some(item) = outbound.recv().await {
        match item {
            Outbound::Datagram(bytes) => {
                if conn.connection.send_datagram(bytes).is_err() {
                    conn.shared.metrics.datagram_dropped();
                }
            }
            Outbound::Deliver {
                conversation,
                message,
                epoch,
            } => {
                let Some(writer) = delivery_stream(&conn, &conversation).await else {
                    conn.shared.metrics.delivery_dropped();
                    continue;
                };
                let deliver = frame(Kind::Deliver(Deliver {
                    message: Some(Arc::unwrap_or_clone(message)),
                    epoch,
                }));
                match writer.try_send(deliver) {
                    Ok(()) => conn.shared.metrics.delivery(),
                    Err(_) => conn.shared.metrics.delivery_dropped(),
                }
            }
        }
    }
}

/// The stream to deliver `conversation` on: the registered one, or a new server-opened one.
async fn delivery_stream(conn: &Arc<Conn>, conversation: &Arc<str>) -> Option<FrameWriter> {
    {
        let streams = conn.streams.lock().expect("streams lock");
        if let Some(writer) = streams.get(conversation) {
            if !writer.is_closed() {
                return Some(writer.clone());
            }
        }
    }
    let opened = tokio::time::timeout(OPEN_STREAM_TIMEOUT, conn.connection.open_bi()).await;
    let (send, recv) = match opened {
        Ok(Ok(streams)) => streams,
        _ => return None, // the client allows no more streams right now; heads + Pull recover
    };
    let writer = FrameWriter::spawn(send, STREAM_QUEUE);
    let open = frame(Kind::Open(Open {
        conversation_id: conversation.to_string(),
    }));
    writer.send(open).await.ok()?;
    register(conn, conversation, &writer);
    let reader = FrameReader::new(recv, conn.shared.settings.limits.max_frame_size as usize);
    let (task_conn, task_conv, task_writer) = (conn.clone(), conversation.clone(), writer.clone());
    tokio::spawn(serve(task_conn, task_conv, task_writer, reader));
    Some(writer)
}

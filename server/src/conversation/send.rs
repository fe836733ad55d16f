//! Send → SendAck (FERRY-SEND-*): the checks before an append, queueing the append, and the answer once
//! the append is durable.
//!
//! [`start`] runs inside the serve loop, one Send at a time in arrival order: it checks the Send and
//! queues its append with the store, so seqs follow the order of the Sends (FERRY-SEND-8). What it
//! returns is the rest of the Send — wait until the append is durable, build the SendAck — as a future
//! the serve loop keeps in its ordered set of pending answers. Many Sends of one stream therefore wait
//! on the same commit, and no task is spawned per Send.
//!
//! Membership is read from the store only for a stream's first Send and after a refused append
//! ([`MemberChecked`]): both stores refuse a non-member inside the append itself, atomically, so the
//! read only decides the answer's code and re-creates a lost direct conversation — and on Redis it
//! would cost every Send a round trip that waits for the AOF fsync, one Send at a time per stream.
//!
//! The SendAck is produced only after the append returned, i.e. after the commit is durable. The
//! durable message travels in the answer, and the serve loop fans it out right after it queued the
//! SendAck ([`SendAnswer::fan_out`]): the sender's latency does not include the fan-out, and a message
//! is still never delivered before it is durable.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, Message, Send, SendAck};
use ferry_protocol::{frames, ids, unix_millis, ErrorCode, Frame};
use ferry_store::{NewMessage, PendingAppend, StoreError};
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::OwnedSemaphorePermit;

use super::delivery;
use crate::connection::Conn;
use crate::errors::{from_store, Refusal};

/// The answer to one Send, and the in-flight slot it holds until the answer is written.
pub(super) struct SendAnswer {
    /// SendAck, or an Error carrying the Send's client_msg_id.
    pub(super) frame: Frame,
    /// The Send's slot of max_inflight_sends; `None` when the Send was refused before taking one.
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// The durable message still to be fanned out; `None` for refusals and duplicates (a duplicate
    /// was fanned out the first time).
    pub(super) fan_out: Option<FanOut>,
}

/// A durable message on its way to the conversation's other devices.
pub(super) struct FanOut {
    message: Message,
    epoch: u64,
    /// The members the store returned with the append, if it did.
    members: Option<Vec<String>>,
}

/// Whether this stream's user was found a member since the stream's last refused append; while set,
/// Sends skip the membership read (see the module docs). Shared with the pending answers, which clear
/// it when the store refuses an append.
pub(super) type MemberChecked = Arc<AtomicBool>;

impl SendAnswer {
    /// Fans the stored message out to the other devices of the conversation. Called after the
    /// SendAck is queued for writing, so the sender's answer never waits behind the fan-out work
    /// (member lookup, encoding, one queue per recipient).
    pub(super) async fn fan_out(fan_out: Option<FanOut>, conn: &Conn, conversation: &str) {
        if let Some(FanOut {
            message,
            epoch,
            members,
        }) = fan_out
        {
            // The sender's own device is excluded: it learns the seq from the SendAck.
            let exclude = Some(conn.session.id);
            delivery::deliver(
                &conn.shared,
                conversation,
                message,
                epoch,
                members,
                exclude,
                None,
            )
            .await;
        }
    }
}

/// The rest of a started Send: resolves to its answer.
pub(super) type PendingSend = BoxFuture<'static, SendAnswer>;

/// Checks `send` and queues its append; the returned future yields the SendAck or Error.
///
/// Await this in arrival order; poll the returned futures in any order (their answers are ordered by the
/// caller).
pub(super) async fn start(
    conn: &Arc<Conn>,
    conversation: &Arc<str>,
    send: Send,
    checked: &MemberChecked,
) -> PendingSend {
    let started = Instant::now();
    let client_msg_id = send.client_msg_id.clone();
    let queued = queue(conn, conversation, send, checked).await;
    let (conn, conversation, checked) = (conn.clone(), conversation.clone(), checked.clone());
    let answer = async move {
        match queued {
            Ok((append, permit)) => {
                let appended = append
                    .await
                    .map_err(|e| append_refused(&conversation, e, &checked));
                complete(&conn, client_msg_id, started, appended, permit)
            }
            Err(refusal) => refused(&conn, client_msg_id, refusal, None),
        }
    };
    // A panic while completing one Send must not take the stream's other answers down with it. Nothing
    // is known to be stored, so the client must retry.
    AssertUnwindSafe(answer)
        .catch_unwind()
        .map(|answer| {
            answer.unwrap_or_else(|_| SendAnswer {
                frame: frames::error(ErrorCode::INTERNAL, "send failed"),
                permit: None,
                fan_out: None,
            })
        })
        .boxed()
}

/// The checks, then the append queued with the store; the permit is the Send's in-flight slot.
async fn queue(
    conn: &Conn,
    conversation: &str,
    send: Send,
    checked: &MemberChecked,
) -> Result<(PendingAppend, OwnedSemaphorePermit), Refusal> {
    let permit = check(conn, conversation, &send, checked).await?;
    let message = NewMessage {
        conversation: conversation.to_owned(),
        sender: conn.session.user.to_string(),
        sender_device: conn.session.device.to_string(),
        client_msg_id: send.client_msg_id,
        body: send.body,
        server_time_ms: unix_millis(SystemTime::now()),
    };
    let append = queue_append(conn, message).await.map_err(from_store)?;
    Ok((append, permit))
}

/// The refusal for an append the store refused. A refusal naming the membership clears `checked`, so
/// the stream's next Send reads it again. A direct conversation the store lost (Redis FLUSHALL) is
/// worth a retry: that next read re-creates it, in a new epoch.
fn append_refused(conversation: &str, error: StoreError, checked: &MemberChecked) -> Refusal {
    if matches!(error, StoreError::NotFound | StoreError::Forbidden(_)) {
        checked.store(false, Ordering::Relaxed);
    }
    match (error, ids::parse_conversation_id(conversation)) {
        (StoreError::NotFound, Some(ids::ConversationRef::Direct(..))) => from_store(
            StoreError::Unavailable("the conversation is being restored".into()),
        ),
        // As the membership read answers a user of no (longer existing) group.
        (StoreError::NotFound, _) => Refusal::new(ErrorCode::FORBIDDEN, "not a member"),
        (error, _) => from_store(error),
    }
}

/// Answers a finished append; the durable message rides along in the answer for the fan-out, which
/// the serve loop runs once the SendAck is queued ([`SendAnswer::fan_out`]).
fn complete(
    conn: &Conn,
    client_msg_id: String,
    started: Instant,
    appended: Result<ferry_store::Appended, Refusal>,
    permit: OwnedSemaphorePermit,
) -> SendAnswer {
    let appended = match appended {
        Ok(appended) => appended,
        Err(refusal) => return refused(conn, client_msg_id, refusal, Some(permit)),
    };
    conn.shared
        .metrics
        .send(appended.duplicate, started.elapsed());
    let fan_out = appended.message.map(|message| FanOut {
        message,
        epoch: appended.epoch,
        members: appended.members,
    });
    let ack = frame(Kind::SendAck(SendAck {
        client_msg_id,
        seq: appended.seq,
        server_time_ms: appended.server_time_ms,
        duplicate: appended.duplicate,
    }));
    SendAnswer {
        frame: ack,
        permit: Some(permit),
        fan_out,
    }
}

/// The Error answering a refused Send (counted by its code).
fn refused(
    conn: &Conn,
    client_msg_id: String,
    refusal: Refusal,
    permit: Option<OwnedSemaphorePermit>,
) -> SendAnswer {
    conn.shared.metrics.error(refusal.code);
    let Refusal {
        code,
        reason,
        retry_after,
    } = refusal;
    SendAnswer {
        frame: frames::send_error(client_msg_id, code, reason, retry_after),
        permit,
        fan_out: None,
    }
}

async fn queue_append(conn: &Conn, message: NewMessage) -> Result<PendingAppend, StoreError> {
    #[cfg(feature = "test-hooks")]
    if conn.shared.hooks.fails_appends() {
        return Err(StoreError::Backend("injected by test hook".into()));
    }
    conn.shared.store.queue_append(message).await
}

/// The checks before an append (FERRY-SEND-*): ids and size, membership (unless `checked`), in-flight
/// limit, rate.
async fn check(
    conn: &Conn,
    conversation: &str,
    send: &Send,
    checked: &MemberChecked,
) -> Result<OwnedSemaphorePermit, Refusal> {
    let limits = &conn.shared.settings.limits;
    if !ids::is_valid_client_msg_id(&send.client_msg_id) {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            "invalid client_msg_id",
        ));
    }
    if send.body.len() > limits.max_body_size as usize {
        let msg = format!(
            "body of {} bytes exceeds {}",
            send.body.len(),
            limits.max_body_size
        );
        return Err(Refusal::new(ErrorCode::INVALID_ARGUMENT, msg));
    }
    if !checked.load(Ordering::Relaxed) {
        check_membership(conn, conversation).await?;
        checked.store(true, Ordering::Relaxed);
    }
    let Ok(permit) = conn.inflight.clone().try_acquire_owned() else {
        let msg = format!("more than {} sends in flight", limits.max_inflight_sends);
        return Err(Refusal::new(ErrorCode::TOO_MANY_INFLIGHT, msg));
    };
    if let Err(wait) = conn
        .shared
        .send_rate
        .check(&conn.session.user, Instant::now())
    {
        let retry_after = (wait.as_millis() as u64).max(1);
        return Err(
            Refusal::new(ErrorCode::RATE_LIMITED, "send rate exceeded").retry_after(retry_after)
        );
    }
    Ok(permit)
}

/// The stream's user must be a member; a direct conversation the store lost since the stream was
/// opened (Redis FLUSHALL, a restart without data) is created again, in a new epoch the members are
/// told of, instead of refusing one of its own parties for good.
async fn check_membership(conn: &Conn, conversation: &str) -> Result<(), Refusal> {
    match conn
        .shared
        .store
        .membership(conversation, &conn.session.user)
        .await
    {
        Ok(Some(m)) if m.is_member() => {}
        Ok(None) if ids::is_direct_conversation(conversation) => {
            if !super::stream::authorize_open(conn, conversation)
                .await?
                .is_member()
            {
                return Err(Refusal::new(ErrorCode::FORBIDDEN, "not a member"));
            }
        }
        Ok(_) => return Err(Refusal::new(ErrorCode::FORBIDDEN, "not a member")),
        Err(e) => return Err(from_store(e)),
    }
    Ok(())
}

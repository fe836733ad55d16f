//! Delivery: a durable message on its way to every online device of a conversation's members.
//!
//! [`deliver`] fans a message out — on this node straight into each session's outbound queue, on other
//! nodes of a cluster through the bus (see [`crate::cluster`], which hands what arrives to
//! [`deliver_local`]). Queues are bounded and never awaited here: a full queue drops the Deliver
//! (counted), because the message is durable and the device recovers it from heartbeat heads and Pull. A
//! slow device therefore never slows down the sender or other recipients.
//!
//! [`outbound_loop`] drains one session's queue onto its conversation streams, opening a stream when the
//! conversation has none; [`record_acks`] turns the device's Acks into its delivery cursor.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Deliver, Message, Open};
use ferry_quic::{FrameReader, FrameWriter};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::stream;
use crate::connection::{Conn, STREAM_QUEUE};
use crate::sessions::Outbound;
use crate::Shared;

/// How long the server waits for the client to allow one more server-opened stream.
const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Delivers `message` of `conversation` to the online devices of its current members and of `also`
/// (e.g. a user just removed, who still gets their removal), except the session `exclude` (the sender's
/// own device, which learns the seq from its SendAck). `members` are the members the store returned
/// with the append ([`ferry_store::Appended::members`]); when it returned none they are read here.
pub(crate) async fn deliver(
    shared: &Shared,
    conversation: &str,
    message: Message,
    epoch: u64,
    members: Option<Vec<String>>,
    exclude: Option<u64>,
    also: Option<&str>,
) {
    if let Some(push) = &shared.push {
        let metrics = &shared.metrics.push;
        push.committed(conversation, message.seq, epoch, &message.sender, metrics);
    }
    #[cfg(feature = "test-hooks")]
    if shared.hooks.drops_delivery(conversation, &message) {
        return;
    }
    let members = match members {
        Some(members) => members,
        None => match shared.store.members(conversation).await {
            Ok(members) => members,
            Err(e) => {
                // The message is durable; recipients catch up through heartbeat heads and Pull.
                warn!(conversation, error = %e, "fan-out skipped: members unavailable");
                return;
            }
        },
    };
    let recipients: Vec<&str> = members.iter().map(String::as_str).chain(also).collect();
    if let Some(cluster) = &shared.cluster {
        cluster.publish_deliver(&recipients, conversation, &message, epoch);
    }
    // Encoded at most once, and only when a recipient has a session on this node: every recipient's
    // queue holds a reference to the same bytes, and a message whose recipients are all offline (or on
    // other nodes) is never encoded here — that encoding was 4 % of the server's CPU under
    // `ferry-bench throughput`, whose recipient is offline.
    let mut deliver = LazyDeliver::new(message, epoch);
    let conversation: Arc<str> = conversation.into();
    for user in &recipients {
        queue_encoded(shared, user, &conversation, &mut deliver, exclude);
    }
}

/// A Deliver frame encoded on first use.
enum LazyDeliver {
    /// Not encoded yet: the message and its epoch.
    Pending(Message, u64),
    /// Not encoded yet, of a message shared with others (the cluster bus hands these out).
    Shared(Arc<Message>, u64),
    Encoded(Bytes),
}

impl LazyDeliver {
    fn new(message: Message, epoch: u64) -> LazyDeliver {
        LazyDeliver::Pending(message, epoch)
    }

    /// The encoded frame, encoding it now if nobody asked before.
    fn bytes(&mut self) -> Bytes {
        let encoded = match self {
            LazyDeliver::Encoded(bytes) => return bytes.clone(),
            LazyDeliver::Pending(message, epoch) => encode_deliver(std::mem::take(message), *epoch),
            LazyDeliver::Shared(message, epoch) => encode_deliver(Message::clone(message), *epoch),
        };
        *self = LazyDeliver::Encoded(encoded.clone());
        encoded
    }
}

/// Queues a Deliver for every session of `user` on this node, except the session `exclude`.
pub(crate) fn deliver_local(
    shared: &Shared,
    user: &str,
    conversation: &Arc<str>,
    message: &Arc<Message>,
    epoch: u64,
    exclude: Option<u64>,
) {
    let mut deliver = LazyDeliver::Shared(message.clone(), epoch);
    queue_encoded(shared, user, conversation, &mut deliver, exclude);
}

/// The whole encoded Deliver frame of `message`, ready to be written to any stream of its conversation.
fn encode_deliver(message: Message, epoch: u64) -> Bytes {
    codec::encode(&frame(Kind::Deliver(Deliver {
        message: Some(message),
        epoch,
    })))
}

/// Queues the Deliver `deliver` for every session of `user` on this node except `exclude`.
fn queue_encoded(
    shared: &Shared,
    user: &str,
    conversation: &Arc<str>,
    deliver: &mut LazyDeliver,
    exclude: Option<u64>,
) {
    shared.sessions.for_each_of(user, |session| {
        if Some(session.id) == exclude {
            return;
        }
        let item = Outbound::Deliver {
            conversation: conversation.clone(),
            frame: deliver.bytes(),
        };
        if session.outbound.try_send(item).is_ok() {
            shared.metrics.delivery_queued();
        } else {
            shared.metrics.delivery_dropped();
        }
    });
}

/// Writes this session's deliveries and relayed datagrams until the connection ends.
pub(crate) async fn outbound_loop(conn: Arc<Conn>, mut outbound: mpsc::Receiver<Outbound>) {
    while let Some(item) = outbound.recv().await {
        match item {
            Outbound::Datagram(bytes) => {
                if conn.connection.send_datagram(bytes).is_err() {
                    conn.shared.metrics.datagram_dropped();
                }
            }
            Outbound::Deliver {
                conversation,
                frame,
            } => {
                // Opening a stream is boxed: it is rare next to waiting, and an idle connection's
                // future should not carry its size (issue 17).
                let writer = match open_stream_of(&conn, &conversation) {
                    Some(writer) => Some(writer),
                    None => Box::pin(open_delivery_stream(&conn, &conversation)).await,
                };
                let Some(writer) = writer else {
                    conn.shared.metrics.delivery_dropped();
                    continue;
                };
                // A recipient that does not read is reset, not waited for (FERRY-HARDEN-4).
                match writer.try_send_encoded_or_reset(frame) {
                    Ok(()) => conn.shared.metrics.delivery(),
                    Err(_) => conn.shared.metrics.delivery_dropped(),
                }
            }
        }
    }
}

/// The stream to deliver `conversation` on, if one is open: the newest still open (FERRY-STREAM-6).
fn open_stream_of(conn: &Conn, conversation: &str) -> Option<FrameWriter> {
    let streams = conn.streams.lock().expect("streams lock");
    let open = streams.get(conversation).into_iter().flatten();
    open.rev().find(|w| !w.is_closed()).cloned()
}

/// Opens a stream to deliver `conversation` on, when none is open (FERRY-STREAM-3).
async fn open_delivery_stream(conn: &Arc<Conn>, conversation: &Arc<str>) -> Option<FrameWriter> {
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
    stream::register(conn, conversation, &writer);
    let reader = FrameReader::new(recv, conn.shared.settings.limits.max_frame_size as usize);
    let (task_conn, task_conv, task_writer) = (conn.clone(), conversation.clone(), writer.clone());
    tokio::spawn(stream::serve(task_conn, task_conv, task_writer, reader));
    Some(writer)
}

/// Records the device's cumulative cursor, coalescing bursts of Acks into one store write at a time.
pub(super) async fn record_acks(
    conn: Arc<Conn>,
    conversation: Arc<str>,
    mut acks: watch::Receiver<u64>,
) {
    while acks.changed().await.is_ok() {
        let seq = *acks.borrow_and_update();
        let (user, device) = (&conn.session.user, &conn.session.device);
        // The store clamps the cursor to the head itself (one lookup less per Ack).
        if let Err(e) = conn
            .shared
            .store
            .set_delivered(&conversation, user, device, seq)
            .await
        {
            debug!(error = %e, "delivery cursor not recorded");
        }
    }
}

//! [`Client`], the application's handle: cheap to clone; every call is a request to the driver task over
//! a bounded channel. [`Events`] is the receiving side of the event channel.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::enqueue::Enqueuer;
use crate::error::{ClientError, SendError, TrySendError};
use crate::event::Event;
use crate::message::{OutgoingMessage, ReceivedMessage, SendReceipt};
use crate::store::OutboxRecord;

/// Result of a group administration request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupChange {
    /// The group's conversation id.
    pub conversation: String,
    /// Seq of the system message that records the change.
    pub seq: u64,
}

/// A snapshot of the client's state, for monitoring and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// A session is live (Welcome received).
    pub connected: bool,
    /// The server of the live or last session.
    pub endpoint: Option<SocketAddr>,
    /// The live or last session used 0-RTT early data that the server accepted.
    pub zero_rtt: bool,
    /// Sessions established so far (Welcome received).
    pub sessions: u64,
    /// Messages in the outbox (not yet acknowledged).
    pub outbox: usize,
    /// Sends waiting for their answer.
    pub in_flight: usize,
    /// The authenticated user id (from Welcome or the store).
    pub user_id: Option<String>,
    /// The largest body the server accepts: announced in Welcome, the spec's default before.
    pub max_body_size: usize,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A group administration operation.
#[derive(Debug)]
pub(crate) enum GroupOp {
    Create { name: String, members: Vec<String> },
    Add { conversation: String, user: String },
    Remove { conversation: String, user: String },
}

/// What the [`Client`] asks of the driver.
pub(crate) enum Request {
    Send {
        record: OutboxRecord,
        reply: oneshot::Sender<Result<SendReceipt, SendError>>,
        message: OutgoingMessage,
    },
    Ack {
        conversation: String,
        seq: u64,
    },
    Group {
        op: GroupOp,
        reply: Reply<GroupChange>,
    },
    MarkRead {
        conversation: String,
        seq: u64,
    },
    Push {
        op: crate::push::PushOp,
        reply: Reply<ferry_protocol::frame::PushResult>,
    },
    Typing {
        conversation: String,
        active: bool,
    },
    History {
        conversation: String,
        after_seq: u64,
        limit: usize,
        reply: Reply<Vec<ReceivedMessage>>,
    },
    Rebind {
        reply: Reply<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The handle to a running client. Clone it freely; the driver stops when [`Client::shutdown`] is called
/// or every handle is dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) enqueuer: Enqueuer,
    pub(crate) stats: watch::Receiver<ClientStats>,
    pub(crate) device_id: Arc<str>,
}

/// The stream of [`Event`]s. Consume it continuously (the channel is bounded).
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client stopped and every event was taken.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// Resolves when the server acknowledged (stored) the message, or the send failed for good.
#[must_use = "a receipt tells whether the message was stored"]
pub struct Receipt {
    rx: oneshot::Receiver<Result<SendReceipt, SendError>>,
    message: Option<OutgoingMessage>,
}

impl Receipt {
    /// The message this receipt is for.
    pub fn message(&self) -> &OutgoingMessage {
        self.message
            .as_ref()
            .expect("receipt polled after completion")
    }
}

impl Future for Receipt {
    type Output = Result<SendReceipt, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            // The driver stopped before an answer: the message is still in the outbox.
            Poll::Ready(Err(_)) => Poll::Ready(Err(SendError::Interrupted {
                message: self
                    .message
                    .take()
                    .expect("receipt polled after completion"),
            })),
        }
    }
}

fn now_ms() -> u64 {
    ferry_protocol::unix_millis(std::time::SystemTime::now())
}

impl Client {
    /// Queues a message: writes it to the outbox (durably), then hands it to the driver, waiting for room
    /// in the request channel. The returned [`Receipt`] resolves when the server stored it. Sends are
    /// pipelined: call `send` many times before awaiting receipts.
    pub async fn send(
        &self,
        conversation: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<Receipt, SendError> {
        let message = new_message(conversation.into(), body.into())?;
        let Ok(permit) = self.requests.clone().reserve_owned().await else {
            return Err(SendError::Closed { message });
        };
        self.enqueue(message, permit).await
    }

    /// Like [`Client::send`] but never waits for room in the request channel: when it is full, the
    /// message is handed back in [`TrySendError::Full`] and nothing is written. (It still waits for the
    /// local outbox write.)
    pub async fn try_send(
        &self,
        conversation: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<Receipt, TrySendError> {
        let message = new_message(conversation.into(), body.into())?;
        let permit = match self.requests.clone().try_reserve_owned() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(_)) => return Err(TrySendError::Full(message)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(SendError::Closed { message }.into())
            }
        };
        Ok(self.enqueue(message, permit).await?)
    }

    async fn enqueue(
        &self,
        message: OutgoingMessage,
        permit: mpsc::OwnedPermit<Request>,
    ) -> Result<Receipt, SendError> {
        let limit = self.stats.borrow().max_body_size;
        if limit > 0 && message.body.len() > limit {
            return Err(SendError::TooLarge {
                size: message.body.len(),
                limit,
                message,
            });
        }
        let mut record = OutboxRecord::of(&message, 0, now_ms());
        match self.enqueuer.enqueue(record.clone()).await {
            Ok(id) => record.id = id,
            Err(source) => {
                return Err(SendError::Store {
                    source: Box::new(source),
                    message,
                })
            }
        }
        let (tx, rx) = oneshot::channel();
        permit.send(Request::Send {
            record,
            reply: tx,
            message: message.clone(),
        });
        Ok(Receipt {
            rx,
            message: Some(message),
        })
    }

    /// Sends to the direct conversation with `user`. Needs this user's id, known after the first
    /// Welcome (and remembered in the store); before that it fails with [`SendError::Invalid`].
    pub async fn send_direct(
        &self,
        user: &str,
        body: impl Into<Bytes>,
    ) -> Result<Receipt, SendError> {
        let body = body.into();
        let me = self.user_id();
        match me
            .as_deref()
            .and_then(|me| ferry_protocol::ids::direct_conversation_id(me, user))
        {
            Some(conversation) => self.send(conversation, body).await,
            None => Err(SendError::Invalid {
                reason: match me {
                    None => "own user id not known yet (no Welcome so far)".into(),
                    Some(me) => format!("no direct conversation between {me:?} and {user:?}"),
                },
                message: OutgoingMessage {
                    conversation: String::new(),
                    client_msg_id: String::new(),
                    body,
                },
            }),
        }
    }

    /// Manual ack mode: the application committed every message of `conversation` up to `seq`.
    pub async fn ack(&self, conversation: &str, seq: u64) -> Result<(), ClientError> {
        self.request(Request::Ack {
            conversation: conversation.to_owned(),
            seq,
        })
        .await
    }

    /// Creates a group with `members` (besides this user) and returns its conversation id. Needs a
    /// connection; waits for one.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<String, ClientError> {
        let op = GroupOp::Create {
            name: name.to_owned(),
            members: members.to_vec(),
        };
        Ok(self.group(op).await?.conversation)
    }

    /// Adds `user` to a group (owner only).
    pub async fn add_member(
        &self,
        conversation: &str,
        user: &str,
    ) -> Result<GroupChange, ClientError> {
        self.group(GroupOp::Add {
            conversation: conversation.to_owned(),
            user: user.to_owned(),
        })
        .await
    }

    /// Removes `user` from a group (the owner, or the user themselves to leave).
    pub async fn remove_member(
        &self,
        conversation: &str,
        user: &str,
    ) -> Result<GroupChange, ClientError> {
        self.group(GroupOp::Remove {
            conversation: conversation.to_owned(),
            user: user.to_owned(),
        })
        .await
    }

    async fn group(&self, op: GroupOp) -> Result<GroupChange, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::Group { op, reply }).await?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Moves this user's read cursor (best effort; sent when connected).
    pub async fn mark_read(&self, conversation: &str, seq: u64) -> Result<(), ClientError> {
        self.request(Request::MarkRead {
            conversation: conversation.to_owned(),
            seq,
        })
        .await
    }

    /// Tells the other members this user is (not) typing: an unreliable datagram.
    ///
    /// The signal is dropped while not connected or before the server's Welcome (FERRY-DGRAM-5: no
    /// datagrams before Welcome or in 0-RTT early data); it is never queued, since a late "typing" would
    /// be wrong. Wait for [`Client::connected`] first if it matters. `Ok` means the request reached the
    /// client, not that anyone received it.
    pub async fn typing(&self, conversation: &str, active: bool) -> Result<(), ClientError> {
        self.request(Request::Typing {
            conversation: conversation.to_owned(),
            active,
        })
        .await
    }

    /// Up to `limit` messages of `conversation` after `after_seq`, from the local store; what is not
    /// stored locally is pulled from the server when connected.
    pub async fn history(
        &self,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::History {
            conversation: conversation.to_owned(),
            after_seq,
            limit: limit.max(1),
            reply,
        })
        .await?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Moves the connection to a new local UDP socket (a network change); the QUIC connection survives.
    pub async fn rebind(&self) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::Rebind { reply }).await?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Closes the connection gracefully (NO_ERROR) and stops the driver. Unacknowledged messages stay in
    /// the outbox for the next client on the same store.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self
            .requests
            .send(Request::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// The current state snapshot.
    pub fn stats(&self) -> ClientStats {
        self.stats.borrow().clone()
    }

    /// Waits until the outbox is empty (every queued message acknowledged or rejected), at most
    /// `timeout`. Returns false on timeout or when the client stopped first.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let mut stats = self.stats.clone();
        let done = tokio::time::timeout(timeout, async {
            stats.wait_for(|s| s.outbox == 0).await.is_ok()
        })
        .await;
        done == Ok(true)
    }

    /// Waits until a session is live, at most `timeout`.
    pub async fn connected(&self, timeout: Duration) -> bool {
        let mut stats = self.stats.clone();
        let done = tokio::time::timeout(timeout, async {
            stats.wait_for(|s| s.connected).await.is_ok()
        })
        .await;
        done == Ok(true)
    }

    /// This user's id, once known.
    pub fn user_id(&self) -> Option<String> {
        self.stats.borrow().user_id.clone()
    }

    /// This device's id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub(crate) async fn request(&self, request: Request) -> Result<(), ClientError> {
        self.requests
            .send(request)
            .await
            .map_err(|_| ClientError::Closed)
    }
}

fn new_message(conversation: String, body: Bytes) -> Result<OutgoingMessage, SendError> {
    let message = OutgoingMessage {
        client_msg_id: uuid::Uuid::new_v4().to_string(),
        conversation,
        body,
    };
    if ferry_protocol::ids::parse_conversation_id(&message.conversation).is_none() {
        return Err(SendError::Invalid {
            reason: format!("malformed conversation id {:?}", message.conversation),
            message,
        });
    }
    Ok(message)
}

//! [`Client`]: the running client as foreign code sees it, and [`PendingSend`], the receipt of one
//! queued message.
//!
//! Every method is one call into `ferry_client::Client` plus type conversion; adding a client method to
//! the bindings is one more such method here. Async methods become Kotlin `suspend` / Swift `async` /
//! Python coroutines.

use std::sync::Arc;
use std::time::Duration;

use ferry_client as fc;
use tokio::sync::{watch, Mutex};

use crate::error::{FerryError, SendFailure};
use crate::runtime::{run, runtime, spawn_caught};
use crate::types::{
    ClientStats, Event, GroupChange, OutgoingMessage, ReceivedMessage, SendReceipt,
};

/// A running Ferry client. Build it with `ClientBuilder`; call `shutdown` when done (dropping every
/// reference stops it too).
#[derive(uniffi::Object)]
pub struct Client {
    inner: fc::Client,
    // A Mutex so that concurrent `next_event` calls take turns instead of failing; `recv` is
    // cancel-safe, so a cancelled waiter loses no event.
    events: Mutex<fc::Events>,
}

impl Client {
    pub(crate) fn new(inner: fc::Client, events: fc::Events) -> Self {
        Client {
            inner,
            events: Mutex::new(events),
        }
    }
}

/// The outcome of one queued message, which is already durable in the outbox when this exists.
#[derive(uniffi::Object)]
pub struct PendingSend {
    outgoing: OutgoingMessage,
    // Set once by the task awaiting the client's receipt; any number of `receipt` calls read it.
    outcome: watch::Receiver<Option<Result<SendReceipt, SendFailure>>>,
}

#[uniffi::export]
impl PendingSend {
    /// The queued message (its `client_msg_id` is the idempotency key).
    pub fn outgoing(&self) -> OutgoingMessage {
        self.outgoing.clone()
    }

    /// Waits until the server stored the message (the receipt) or the send failed for good. While the
    /// server is unreachable this keeps waiting (the client resends); bound it with the caller's timeout
    /// (`withTimeout`, task cancellation): cancelling the wait does not cancel the send. (Not named `wait`/`await`: those are
    /// taken in Java, Swift and Python.).
    pub async fn receipt(&self) -> Result<SendReceipt, SendFailure> {
        let mut outcome = self.outcome.clone();
        let done = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            // The receipt task ended without an answer: the client stopped; the message stays queued.
            Err(_) => None,
        };
        done.unwrap_or_else(|| Err(self.interrupted()))
    }

    /// The receipt if it already arrived, without waiting.
    pub fn receipt_now(&self) -> Option<SendReceipt> {
        match &*self.outcome.borrow() {
            Some(Ok(receipt)) => Some(receipt.clone()),
            _ => None,
        }
    }
}

impl PendingSend {
    fn interrupted(&self) -> SendFailure {
        SendFailure::Interrupted {
            outgoing: self.outgoing.clone(),
        }
    }

    /// Starts a task that resolves `receipt` (so the outcome is known even if nobody waits) and
    /// publishes it.
    fn start(receipt: fc::Receipt) -> Result<Arc<Self>, SendFailure> {
        let rt = runtime().map_err(|reason| SendFailure::Internal { reason })?;
        let outgoing: OutgoingMessage = receipt.message().clone().into();
        let (tx, rx) = watch::channel(None);
        rt.spawn(async move {
            let outcome = receipt.await.map(Into::into).map_err(Into::into);
            let _ = tx.send(Some(outcome));
        });
        Ok(Arc::new(PendingSend {
            outgoing,
            outcome: rx,
        }))
    }
}

/// `timeout_ms` as a Duration, so foreign callers pass plain integers.
fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[uniffi::export]
impl Client {
    /// Queues a message: it is durable in the outbox when this returns; `PendingSend.receipt()` waits for
    /// the server's receipt. Queue many before waiting (sends are pipelined).
    pub async fn send(
        &self,
        conversation: String,
        body: Vec<u8>,
    ) -> Result<Arc<PendingSend>, SendFailure> {
        let client = self.inner.clone();
        let receipt = spawn_caught(async move { client.send(conversation, body).await })
            .await
            .map_err(|reason| SendFailure::Internal { reason })??;
        PendingSend::start(receipt)
    }

    /// `send` with a UTF-8 text body.
    pub async fn send_text(
        &self,
        conversation: String,
        text: String,
    ) -> Result<Arc<PendingSend>, SendFailure> {
        self.send(conversation, text.into_bytes()).await
    }

    /// Sends to the direct conversation with `user` (needs the own user id, known after the first
    /// connection).
    pub async fn send_direct(
        &self,
        user: String,
        body: Vec<u8>,
    ) -> Result<Arc<PendingSend>, SendFailure> {
        let client = self.inner.clone();
        let receipt = spawn_caught(async move { client.send_direct(&user, body).await })
            .await
            .map_err(|reason| SendFailure::Internal { reason })??;
        PendingSend::start(receipt)
    }

    /// The next event, waiting at most `timeout_ms`: `null`/`nil`/`None` when none came in time,
    /// `FerryError.Closed` once the client stopped and every event was taken.
    pub async fn next_event(&self, timeout_ms: u64) -> Result<Option<Event>, FerryError> {
        let rt = runtime().map_err(|reason| FerryError::Internal { reason })?;
        // The timer must be created inside the runtime (it registers with its driver); it can then be
        // polled from the foreign executor. Receiving stays here, not in a spawned task, so that a
        // cancelled call cannot swallow an event.
        let deadline = {
            let _guard = rt.enter();
            tokio::time::sleep(millis(timeout_ms))
        };
        let next = async {
            let mut events = self.events.lock().await;
            events.recv().await
        };
        tokio::select! {
            event = next => event.map(|e| Some(e.into())).ok_or(FerryError::Closed),
            () = deadline => Ok(None),
        }
    }

    /// Up to `limit` messages of `conversation` after `after_seq`, from the local store and, when
    /// connected, the server.
    pub async fn history(
        &self,
        conversation: String,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<ReceivedMessage>, FerryError> {
        let client = self.inner.clone();
        run(async move {
            let messages = client
                .history(&conversation, after_seq, limit as usize)
                .await?;
            Ok(messages.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Creates a group with `members` (besides this user); returns its conversation id.
    pub async fn create_group(
        &self,
        name: String,
        members: Vec<String>,
    ) -> Result<String, FerryError> {
        let client = self.inner.clone();
        run(async move { Ok(client.create_group(&name, &members).await?) }).await
    }

    /// Adds `user` to a group (owner only).
    pub async fn add_member(
        &self,
        conversation: String,
        user: String,
    ) -> Result<GroupChange, FerryError> {
        let client = self.inner.clone();
        run(async move { Ok(client.add_member(&conversation, &user).await?.into()) }).await
    }

    /// Removes `user` from a group (the owner, or the user themselves to leave).
    pub async fn remove_member(
        &self,
        conversation: String,
        user: String,
    ) -> Result<GroupChange, FerryError> {
        let client = self.inner.clone();
        run(async move { Ok(client.remove_member(&conversation, &user).await?.into()) }).await
    }

    /// Tells the other members this user is (not) typing. Unreliable; dropped while not connected.
    pub async fn typing(&self, conversation: String, active: bool) -> Result<(), FerryError> {
        let client = self.inner.clone();
        run(async move { Ok(client.typing(&conversation, active).await?) }).await
    }

    /// Moves this user's read cursor.
    pub async fn mark_read(&self, conversation: String, seq: u64) -> Result<(), FerryError> {
        let client = self.inner.clone();
        run(async move { Ok(client.mark_read(&conversation, seq).await?) }).await
    }

    /// Manual ack mode: the app committed every message of `conversation` up to `seq`.
    pub async fn ack(&self, conversation: String, seq: u64) -> Result<(), FerryError> {
        let client = self.inner.clone();
        run(async move { Ok(client.ack(&conversation, seq).await?) }).await
    }

    /// Moves the connection to a new local UDP socket. Call it on a network change (Wi-Fi to
    /// cellular); the QUIC connection migrates instead of reconnecting.
    pub async fn rebind(&self) -> Result<(), FerryError> {
        let client = self.inner.clone();
        run(async move { Ok(client.rebind().await?) }).await
    }

    /// Closes the connection gracefully and stops the client. Unacknowledged messages stay in the
    /// outbox for the next client on the same store.
    pub async fn shutdown(&self) -> Result<(), FerryError> {
        let client = self.inner.clone();
        run(async move {
            client.shutdown().await;
            Ok(())
        })
        .await
    }

    /// Waits until a session is live, at most `timeout_ms`; false on timeout or when stopped.
    pub async fn wait_connected(&self, timeout_ms: u64) -> Result<bool, FerryError> {
        let client = self.inner.clone();
        run(async move { Ok(client.connected(millis(timeout_ms)).await) }).await
    }

    /// Waits until the outbox is empty, at most `timeout_ms`; false on timeout or when stopped.
    pub async fn flush(&self, timeout_ms: u64) -> Result<bool, FerryError> {
        let client = self.inner.clone();
        run(async move { Ok(client.flush(millis(timeout_ms)).await) }).await
    }

    /// Connection and outbox state now.
    pub fn stats(&self) -> ClientStats {
        self.inner.stats().into()
    }

    /// This user's id, once known (after the first Welcome, or from the store).
    pub fn user_id(&self) -> Option<String> {
        self.inner.user_id()
    }

    /// This device's id.
    pub fn device_id(&self) -> String {
        self.inner.device_id().to_owned()
    }
}

//! The driver task: the I/O around [`crate::core::Core`]. It owns the core, the store and the
//! network side ([`crate::link::Wire`]: endpoint, connection, stream writers), and runs one select loop:
//! each wake-up feeds a batch of inputs (connection reports, application requests, the timer) to the
//! core, runs the store work the core asks for on the blocking thread (one transaction per wake-up),
//! hands the released events to the application, then performs the core's transmits and flushes every
//! stream once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::WindowConfig;
use rand::{rngs::StdRng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::builder::{AckMode, Settings};
use crate::client::{Client, ClientStats, Events, Request};
use crate::conn::Inbound;
use crate::core::{Core, StoreWork, Transmit, DEFAULT_MAX_INFLIGHT};
use crate::error::{ClientError, StoreError};
use crate::event::Event;
use crate::inbox::Inbox;
use crate::link::{bind_addr, lost_reason, resolve, Wire};
use crate::outbox::Outbox;
use crate::store::{ClientStore, ConversationRow, KEY_SYNC_TOKEN, KEY_USER_ID};

/// Inputs handled per wake-up before committing, so one store transaction covers many frames.
const MAX_BATCH: usize = 512;
/// Capacity of the inbound channel from the connection tasks.
const INBOUND_CAPACITY: usize = 4096;
/// Page size when re-reporting unacknowledged messages after a restart (manual mode).
const REPLAY_PAGE: usize = 500;

pub(crate) struct Driver {
    core: Core,
    store: Arc<dyn ClientStore>,
    wire: Wire,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<Event>,
    stats: watch::Sender<ClientStats>,
    inbound_rx: mpsc::Receiver<Inbound>,
    /// Manual ack mode: conversations whose unacknowledged messages are reported again at start.
    replay: Vec<ConversationRow>,
}

/// The core's clock: tokio's (so `tokio::time::pause()` drives it in tests), as a std instant.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Loads the durable state, spawns the driver and returns the handles.
pub(crate) async fn start(
    settings: Settings,
    quic: quinn::ClientConfig,
    store: Arc<dyn ClientStore>,
    event_capacity: usize,
    request_capacity: usize,
) -> Result<(Client, Events), ClientError> {
    // The socket's address family follows the first endpoint; unresolvable now (offline) means IPv4.
    let first = resolve(&settings.endpoints[0])
        .await
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut endpoint = quinn::Endpoint::client(bind_addr(&first))
        .map_err(|e| ClientError::Config(format!("binding a UDP socket: {e}")))?;
    endpoint.set_default_client_config(quic);

    let s = store.clone();
    let (outbox_records, rows, token, user_id) = blocking(move || {
        Ok((
            s.outbox()?,
            s.conversations()?,
            s.get(KEY_SYNC_TOKEN)?,
            s.get(KEY_USER_ID)?,
        ))
    })
    .await?;
    tracing::trace!(rows = rows.len(), "store state read");
    let auto = settings.ack_mode == AckMode::Auto;
    let mut outbox = Outbox::new(settings.outbox, DEFAULT_MAX_INFLIGHT);
    for record in outbox_records {
        outbox.push(record);
    }
    let mut inbox = Inbox::new(WindowConfig::default(), 50, auto);
    for row in &rows {
        inbox.restore(row);
    }
    let sync_token = token.and_then(|t| t.parse().ok()).unwrap_or(0);
    let core = Core::new(
        settings,
        outbox,
        inbox,
        sync_token,
        user_id,
        StdRng::from_os_rng(),
        now(),
    );

    let (req_tx, req_rx) = mpsc::channel(request_capacity);
    let (ev_tx, ev_rx) = mpsc::channel(event_capacity);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
    let (stats_tx, stats_rx) = watch::channel(core.stats());
    let client = Client {
        requests: req_tx,
        enqueuer: crate::enqueue::Enqueuer::start(store.clone())?,
        stats: stats_rx,
        device_id: core.settings().device_id.as_str().into(),
    };
    let wire = Wire::new(
        endpoint,
        core.settings(),
        core.serials(),
        inbound_tx,
        ev_tx.clone(),
    );
    let driver = Driver {
        core,
        store,
        wire,
        requests: req_rx,
        events: ev_tx,
        stats: stats_tx,
        inbound_rx,
        replay: if auto { Vec::new() } else { rows },
    };
    // One span per client, so the logs of several clients in one process can be told apart.
    static CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let span = tracing::info_span!(
        "client",
        n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        device = %client.device_id
    );
    tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
    Ok((client, Events { rx: ev_rx }))
}

enum Wake {
    Inbound(Inbound),
    Request(Option<Request>),
    Timer,
}

impl Driver {
    /// Manual ack mode: messages stored but not confirmed by the application are reported again.
    async fn replay_unacked(&mut self) -> Result<(), StoreError> {
        for row in std::mem::take(&mut self.replay) {
            let mut after = row.app_acked_seq;
            // Bounded: every page advances `after` by at least one seq, up to contiguous_seq.
            while after < row.contiguous_seq {
                let (s, conv, epoch) = (self.store.clone(), row.conversation.clone(), row.epoch);
                let page = blocking(move || s.messages(&conv, epoch, after, REPLAY_PAGE)).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                let up_to = row.contiguous_seq;
                self.core
                    .report_stored(page.into_iter().filter(|m| m.seq <= up_to));
                // Report page by page: the event channel is bounded.
                self.send_events().await;
            }
        }
        Ok(())
    }

    async fn run(mut self) {
        if let Err(e) = self.replay_unacked().await {
            tracing::error!(error = %e, "could not re-report unacknowledged messages");
        }
        // Bounded by the client's lifetime: every iteration waits for an input or a deadline.
        loop {
            let deadline = match self.core.poll_timeout() {
                Some(at) => Instant::from_std(at),
                None => Instant::now() + Duration::from_secs(3600),
            };
            let wake = tokio::select! {
                ev = self.inbound_rx.recv() => match ev {
                    Some(ev) => Wake::Inbound(ev),
                    None => Wake::Timer,
                },
                req = self.requests.recv() => Wake::Request(req),
                _ = tokio::time::sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Inbound(ev) => {
                    self.on_inbound(ev);
                    for _ in 0..MAX_BATCH {
                        match self.inbound_rx.try_recv() {
                            Ok(ev) => self.on_inbound(ev),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Request(Some(req)) => {
                    self.on_request(req);
                    for _ in 0..MAX_BATCH {
                        match self.requests.try_recv() {
                            Ok(req) => self.on_request(req),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Request(None) => self.core.handle_requests_closed(),
                Wake::Timer => {}
            }
            self.core.handle_timeout(now());
            // What the inputs asked for (Pulls, Syncs, Sends already in the outbox) leaves before the
            // commit's fsync, not after it: a catch-up's next Pulls travel while its last page is made
            // durable. Acks, receipts and events wait for the commit, as before.
            if !self.core.is_stopped() {
                self.transmit();
            }
            self.store_pass().await;
            // What the commit released goes out before the events are handed over: Acks and the
            // catch-up's next Pulls do not wait for the application's channel.
            if !self.core.is_stopped() {
                self.transmit();
            }
            self.send_events().await;
            if self.core.is_stopped() {
                break;
            }
            self.publish_stats();
        }
        self.finish().await;
    }

    fn on_inbound(&mut self, ev: Inbound) {
        let now = now();
        match ev {
            Inbound::Established { gen, result } => match result {
                Ok(est) => {
                    if self
                        .core
                        .handle_established(gen, Ok((est.remote, est.early)), now)
                    {
                        self.wire.set_up(gen, est);
                    } else {
                        est.conn.close(quinn::VarInt::from_u32(0), b"stale");
                    }
                }
                Err(reason) => {
                    self.core.handle_established(gen, Err(reason), now);
                }
            },
            Inbound::ZeroRtt { gen, accepted } => self.core.handle_zero_rtt(gen, accepted),
            Inbound::Frame { gen, stream, frame } => {
                tracing::trace!(
                    ?stream,
                    kind = ferry_protocol::frames::kind_name(&frame),
                    "frame in"
                );
                self.core.handle_frame(gen, stream, frame, now)
            }
            Inbound::StreamEnded {
                gen,
                stream,
                reason,
                code,
            } => self
                .core
                .handle_stream_ended(gen, stream, reason, code, now),
            Inbound::Accepted {
                gen,
                serial,
                conversation,
                send,
            } => {
                if self.core.handle_accepted(gen, serial, conversation.clone()) {
                    self.wire.adopt(gen, serial, conversation, send);
                }
            }
            Inbound::Datagram { gen, frame } => self.core.handle_datagram(gen, frame),
            Inbound::ConnectionLost { gen, error } => {
                self.core
                    .handle_connection_lost(gen, lost_reason(&error), now)
            }
            Inbound::PortClosed { gen } => self.core.handle_port_closed(gen, now),
            Inbound::TokenRefreshed { result } => self.core.handle_token_refreshed(result, now),
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            // The socket is the driver's.
            Request::Rebind { reply } => {
                let result = match self.core.live_remote() {
                    Some(remote) => self.wire.rebind(remote),
                    None => Err(ClientError::Unreachable("not connected".into())),
                };
                let _ = reply.send(result);
            }
            req => self.core.handle_request(req, now()),
        }
    }

    /// Runs the wake-up's store work, the commit last; then lets the core release what it held back.
    async fn store_pass(&mut self) {
        // Bounded: the queued work plus the commit; answering a history read queues no more work.
        for _ in 0..=self.core.queued_store_work() {
            let Some(work) = self.core.poll_commit() else {
                break;
            };
            let s = self.store.clone();
            match work {
                StoreWork::SetUserId(user) => {
                    if let Err(e) = blocking(move || s.set(KEY_USER_ID, &user)).await {
                        tracing::warn!(error = %e, "could not remember the user id");
                    }
                }
                StoreWork::ReadHistory {
                    id,
                    conversation,
                    epoch,
                    after_seq,
                    limit,
                } => {
                    let page =
                        blocking(move || s.messages(&conversation, epoch, after_seq, limit)).await;
                    self.core.handle_history_page(id, page);
                }
                StoreWork::Commit(commit) => {
                    let (messages, started) = (commit.messages.len(), std::time::Instant::now());
                    if let Err(e) = blocking(move || s.commit(&commit)).await {
                        return self.core.store_failed(&e);
                    }
                    tracing::trace!(messages, took = ?started.elapsed(), "committed");
                }
            }
        }
        self.core.committed();
    }

    async fn send_events(&mut self) {
        while let Some(event) = self.core.poll_event() {
            // `try_send` first: awaiting a send with room left still spends tokio's cooperative budget,
            // and a catch-up's hundreds of events made the driver yield to other tasks mid-batch.
            // Backpressure: a full event channel pauses the driver (and so network reads).
            if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
                let _ = self.events.send(event).await;
            }
        }
    }

    /// Performs the core's transmits, then flushes every stream once.
    fn transmit(&mut self) {
        let now = now();
        // Bounded: the core's queue is finite and the transmit pass runs once per call.
        while let Some(t) = self.core.poll_transmit(now) {
            self.wire.perform(t);
        }
        self.wire.flush();
    }

    fn publish_stats(&self) {
        let stats = self.core.stats();
        self.stats.send_if_modified(|s| {
            let modified = *s != stats;
            *s = stats;
            modified
        });
    }

    async fn finish(mut self) {
        // From now on `Client::send` fails with Closed instead of writing to an outbox nobody drains.
        self.requests.close();
        let (state, reply) = self.core.close();
        // A fatal end closed the session in the core; nothing else queued is sent any more.
        while let Some(t) = self.core.poll_transmit(now()) {
            if let Transmit::Close { .. } = t {
                self.wire.perform(t);
            }
        }
        self.wire.close();
        self.stats.send_modify(|s| s.connected = false);
        // The reason comes before the waiters resolve, so an application that sees a receipt fail with
        // Interrupted finds why (AuthFailed, Replaced) already in its event stream.
        if let Some(state) = state {
            let _ = self.events.send(Event::Connection(state)).await;
        }
        self.core.drop_waiters();
        self.wire.wait_idle().await;
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }
}

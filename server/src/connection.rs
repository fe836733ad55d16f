//! One client connection: the handshake on the control stream (Hello → Welcome), then four concurrent
//! duties in one task until the connection ends — the control stream, accepting conversation streams,
//! relaying datagrams, and writing deliveries.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, Hello, Welcome};
use ferry_protocol::{frames, ids, unix_millis, ErrorCode, VERSION};
use ferry_quic::{codes, FrameReader, FrameWriter};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info};

use crate::admission::Ticket;
use crate::auth::Claims;
use crate::control;
use crate::conversation;
use crate::datagrams;
use crate::sessions::{Outbound, SessionHandle, Superseded};
use crate::Shared;

/// How long a new connection may take to send Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Queue of frames waiting for one stream's writer.
pub(crate) const STREAM_QUEUE: usize = 1024;
/// Queue of deliveries and datagrams waiting for one session.
const OUTBOUND_QUEUE: usize = 4096;

/// State of one authenticated connection, shared by its tasks.
pub(crate) struct Conn {
    /// Server-wide state.
    pub(crate) shared: Arc<Shared>,
    /// This session as the registry knows it.
    pub(crate) session: SessionHandle,
    /// The QUIC connection.
    pub(crate) connection: quinn::Connection,
    /// Conversation → writers of its open streams, oldest first; the server delivers on the newest
    /// open one (FERRY-STREAM-6). Bounded by max_open_streams plus the one stream the server opens.
    pub(crate) streams: Mutex<HashMap<Arc<str>, Vec<FrameWriter>>>,
    /// Client-opened conversation streams currently open (FERRY-STREAM-7 counts only those).
    pub(crate) open_streams: AtomicUsize,
    /// Permits for Sends received but not yet answered (max_inflight_sends).
    pub(crate) inflight: Arc<Semaphore>,
    /// Opens when the TLS handshake is complete; see [`Conn::handshake_complete`].
    handshake: watch::Receiver<bool>,
}

impl Conn {
    /// Waits until the TLS handshake is complete (at once unless the session started in 0-RTT); false
    /// if it never will be (the connection is closing).
    ///
    /// A 0-RTT session is served before its handshake completes, so a reconnecting client's Welcome,
    /// SyncResult and PullResults leave in the server's first flight (0.5-RTT data) instead of a round
    /// trip later. Only the frames allowed in early data are served meanwhile (Hello, Heartbeat, Sync,
    /// Open, Pull, Send — FERRY-ZERORTT-1); a stream or the control stream that carries any other frame
    /// waits here before handling it, since the server cannot tell early data from later data on a
    /// stream (FERRY-ZERORTT-3).
    pub(crate) async fn handshake_complete(&self) -> bool {
        // Every Ack asks: once complete, answer without cloning the receiver.
        if *self.handshake.borrow() {
            return true;
        }
        let mut done = self.handshake.clone();
        let complete = done.wait_for(|complete| *complete).await.is_ok();
        complete
    }

    /// Closes the connection with a wire code.
    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        self.connection
            .close(codes::to_varint(code), reason.as_bytes());
    }
}

/// Why a handshake did not produce a session.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Refused(ErrorCode, String),
}

/// Serves one incoming connection until it ends.
/// `ticket` holds the source's connection slot until this returns; the handshake stops counting as
/// in flight once the session is established or refused.
pub(crate) async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>, mut ticket: Ticket) {
    let remote = incoming.remote_address();
    let order = Accepted {
        id: shared.sessions.next_id(),
        login_ms: unix_millis(SystemTime::now()),
    };
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            debug!(%remote, error = %e, "incoming connection failed");
            return;
        }
    };
    // Accept 0-RTT: only idempotent frames are allowed in early data (FERRY-ZERORTT-*), and a replayed
    // Send is answered as a duplicate by the store's dedupe.
    let (connection, handshake_done) = match connecting.into_0rtt() {
        Ok((connection, accepted)) => (connection, Some(accepted)),
        Err(connecting) => match connecting.await {
            Ok(connection) => (connection, None),
            Err(e) => {
                debug!(%remote, error = %e, "handshake failed");
                shared.metrics.handshake_failed();
                return;
            }
        },
    };
    shared.metrics.connection_opened();
    // Boxed: the handshake's future is large and done once; inline, its size would stay in this
    // task's future for the connection's whole life.
    let handshake = Box::pin(handshake(&connection, handshake_done, &shared, order));
    let outcome = handshake.await;
    ticket.handshake_over();
    let (conn, control_reader, outbound, confirmation) = match outcome {
        Ok(parts) => parts,
        Err(HandshakeError::Refused(code, reason)) => {
            info!(%remote, code = %code.name(), %reason, "connection refused");
            shared.metrics.handshake_failed();
            shared.metrics.error(code);
            shared.metrics.connection_closed();
            return;
        }
        Err(HandshakeError::Connection(e)) => {
            debug!(%remote, error = %e, "connection lost during handshake");
            shared.metrics.connection_closed();
            return;
        }
    };
    let conn = Arc::new(conn);
    #[cfg(feature = "fuzzing")]
    crate::fuzzing::register(&conn);
    info!(%remote, user = %conn.session.user, device = %conn.session.device, "session started");
    run(conn.clone(), control_reader, outbound, confirmation).await;
    shared
        .sessions
        .unregister(&conn.session.user, conn.session.id);
    if let Some(cluster) = &shared.cluster {
        Box::pin(cluster.on_logout(&conn.session)).await; // boxed like the handshake
    }
    shared.metrics.connection_closed();
    info!(%remote, user = %conn.session.user, device = %conn.session.device, "session ended");
}

/// When this node accepted a connection: the order of its logins against other logins of the device
/// (the session id on this node, the time across nodes).
///
/// Taken when the connection arrives, not when its Hello has been read and checked: under load the
/// TLS handshake and the checks can take longer than the client's connect timeout, and a client that
/// gave up on a slow attempt and dialled again must not find its new session replaced by the old
/// attempt finishing late (SESSION_REPLACED stops a client for good).
#[derive(Debug, Clone, Copy)]
struct Accepted {
    id: u64,
    login_ms: u64,
}

/// What a session that started in 0-RTT still has to do once its handshake completes.
struct Confirmation {
    /// Resolves when the client's Finished has been verified.
    done: quinn::ZeroRttAccepted,
    /// Opens the session's [`Conn::handshake_complete`].
    complete: watch::Sender<bool>,
}

/// What a successful handshake hands to [`run`].
type Established = (
    Conn,
    FrameReader,
    mpsc::Receiver<Outbound>,
    Option<Confirmation>,
);

/// Reads Hello on the control stream, authenticates, answers Welcome and registers the session.
///
/// A session in 0-RTT on a single node is answered and admitted before the TLS handshake completes and
/// confirmed by [`confirm`] afterwards (see [`Conn::handshake_complete`]). In a cluster the directory
/// write that makes other nodes route to this one applies the login policy across nodes, so there the
/// Welcome waits for the handshake as before.
async fn handshake(
    connection: &quinn::Connection,
    handshake_done: Option<quinn::ZeroRttAccepted>,
    shared: &Arc<Shared>,
    order: Accepted,
) -> Result<Established, HandshakeError> {
    let accepted = tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi()).await;
    let (send, recv) = match accepted {
        Ok(streams) => streams?,
        Err(_) => return Err(refuse(connection, None, ErrorCode::IDLE_TIMEOUT, "no Hello").await),
    };
    let max_frame = shared.settings.limits.max_frame_size as usize;
    let mut reader = FrameReader::new(recv, max_frame);
    let first = match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
        Err(_) => {
            return Err(refuse(connection, Some(send), ErrorCode::IDLE_TIMEOUT, "no Hello").await)
        }
        Ok(Err(e)) => {
            let code = e.code().unwrap_or(ErrorCode::PROTOCOL_ERROR);
            return Err(refuse(connection, Some(send), code, &e.to_string()).await);
        }
        Ok(Ok(None)) => {
            let reason = "control stream ended before Hello";
            return Err(refuse(connection, Some(send), ErrorCode::PROTOCOL_ERROR, reason).await);
        }
        Ok(Ok(Some(frame))) => frame,
    };
    #[cfg(feature = "test-hooks")]
    shared.hooks.login_held().await;
    let hello = match first.kind {
        Some(Kind::Hello(hello)) => hello,
        _ => {
            let reason = format!("expected Hello, got {}", frames::kind_name(&first));
            return Err(refuse(connection, Some(send), ErrorCode::PROTOCOL_ERROR, &reason).await);
        }
    };
    let claims = match authenticate(&hello, shared) {
        Ok(claims) => claims,
        Err((code, reason)) => return Err(refuse(connection, Some(send), code, &reason).await),
    };
    // Read before the stamp, so a revocation that lands in between is caught after registering.
    let revocations = shared.revocations.generation();
    if let Err((code, reason)) = crate::revoke::check(shared, &claims).await {
        return Err(refuse(connection, Some(send), code, &reason).await);
    }
    let user = claims.user.clone();
    // A Hello in 0-RTT data may be a replay: nothing that affects other sessions (the login policy)
    // happens before the handshake completes (FERRY-ZERORTT-3).
    let early = match handshake_done {
        Some(done) if shared.cluster.is_none() => Some(done),
        Some(done) => {
            // It also resolves when the connection ends first: `register` checks for that.
            if tokio::time::timeout(HELLO_TIMEOUT, done).await.is_err() {
                let code = ErrorCode::IDLE_TIMEOUT;
                return Err(refuse(connection, Some(send), code, "handshake").await);
            }
            None
        }
        None => None,
    };

    let control = FrameWriter::spawn(send, STREAM_QUEUE);
    let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let device_class = if hello.device_class.is_empty() {
        "default".to_owned()
    } else {
        hello.device_class.clone()
    };
    let session = SessionHandle {
        id: order.id,
        user: user.as_str().into(),
        device: hello.device_id.as_str().into(),
        device_class: device_class.into(),
        outbound: outbound_tx,
        control: control.clone(),
        connection: connection.clone(),
        login_ms: order.login_ms,
    };
    let welcome = Welcome {
        user_id: user,
        session_id: format!("{}-{}", shared.settings.node_id, session.id),
        node_id: shared.settings.node_id.clone(),
        heartbeat_interval_ms: shared.settings.heartbeat_interval_ms,
        limits: Some(shared.limits),
        server_time_ms: unix_millis(SystemTime::now()),
        store_epoch: shared.store.store_epoch(),
        capabilities: crate::push::welcome_capabilities(shared.push.as_ref(), &hello.capabilities),
        endpoints: shared
            .cluster
            .as_ref()
            .map(|c| c.live_peer_endpoints())
            .unwrap_or_default(),
    };
    let _ = control.send(frame(Kind::Welcome(welcome))).await;
    let (complete, handshake) = watch::channel(early.is_none());
    let confirmation = match early {
        Some(done) => {
            gave_up(connection)?;
            shared.sessions.admit(session.clone());
            Some(Confirmation { done, complete })
        }
        None => {
            register(shared, &session).await?;
            None
        }
    };
    crate::revoke::recheck_after_register(shared, revocations, &claims, &session).await;
    let conn = Conn {
        shared: shared.clone(),
        session,
        connection: connection.clone(),
        streams: Mutex::new(HashMap::new()),
        open_streams: AtomicUsize::new(0),
        inflight: Arc::new(Semaphore::new(
            shared.settings.limits.max_inflight_sends as usize,
        )),
        handshake,
    };
    Ok((conn, reader, outbound_rx, confirmation))
}

/// Registers a session whose handshake is complete under the login policy, here and (in a cluster)
/// across nodes, and closes the sessions it replaces.
async fn register(shared: &Shared, session: &SessionHandle) -> Result<(), HandshakeError> {
    // In a cluster, the local registry and the session directory must see this user's logins in the
    // same order, or a slower directory write of an older login would replace the newer one.
    let login_order = match &shared.cluster {
        Some(cluster) => Some(cluster.login_lock(&session.user).await),
        None => None,
    };
    gave_up(&session.connection)?;
    let replaced = shared
        .sessions
        .register(session.clone(), shared.settings.login_policy);
    close_replaced(session, replaced)?;
    if let Some(cluster) = &shared.cluster {
        cluster.on_login(session).await;
    }
    drop(login_order);
    Ok(())
}

/// A client that gave up on this attempt closed it already: registering it now would only displace the
/// session the client moved to.
fn gave_up(connection: &quinn::Connection) -> Result<(), HandshakeError> {
    match connection.close_reason() {
        Some(reason) => Err(HandshakeError::Connection(reason)),
        None => Ok(()),
    }
}

/// Waits for a 0-RTT session's handshake, then applies the login policy to it (FERRY-ZERORTT-3) and lets
/// its deferred frames through; closes the connection if the handshake does not complete in time.
async fn confirm(conn: Arc<Conn>, confirmation: Confirmation) {
    // quinn also resolves `done` when the connection ends before the handshake completes (a replayed
    // Hello's does), having recorded why: then the login policy must not act on it.
    let timed_out = tokio::time::timeout(HELLO_TIMEOUT, confirmation.done)
        .await
        .is_err();
    if timed_out || conn.connection.close_reason().is_some() {
        conn.close(ErrorCode::IDLE_TIMEOUT, "handshake did not complete");
        return;
    }
    let shared = &conn.shared;
    let replaced = shared
        .sessions
        .confirm(&conn.session, shared.settings.login_policy);
    if close_replaced(&conn.session, replaced).is_err() {
        shared.metrics.error(ErrorCode::SESSION_REPLACED);
        return;
    }
    let _ = confirmation.complete.send(true);
}

/// Closes the sessions a login replaced; on [`Superseded`], closes the new session itself instead.
fn close_replaced(
    session: &SessionHandle,
    replaced: Result<Vec<SessionHandle>, Superseded>,
) -> Result<(), HandshakeError> {
    let replaced = match replaced {
        Ok(replaced) => replaced,
        Err(Superseded) => {
            info!(user = %session.user, device = %session.device, "a later login of this device is registered here; closing this one");
            session.close_replaced();
            let reason = "a later login of this device holds its place";
            return Err(HandshakeError::Refused(
                ErrorCode::SESSION_REPLACED,
                reason.into(),
            ));
        }
    };
    for replaced in replaced {
        info!(user = %replaced.user, device = %replaced.device, "session replaced");
        replaced.close_replaced();
    }
    Ok(())
}

/// Runs the connection's duties until the connection closes; closing drops them all.
///
/// The four duties share this one task instead of a task each: an idle connection is mostly its
/// futures (issue 17), and each duty parks on a quinn or channel wake-up, so polling them together
/// costs little. What a duty does only now and then (a control request, opening a delivery stream, a
/// datagram's membership check) is boxed inside it, so the parked futures stay small. A duty that ends
/// first (the control stream ended, accepting failed) has closed the connection or found it closed,
/// so `closed()` ends the rest.
///
/// A session that started in 0-RTT also waits here for its handshake ([`confirm`]).
async fn run(
    conn: Arc<Conn>,
    control_reader: FrameReader,
    outbound: mpsc::Receiver<Outbound>,
    confirmation: Option<Confirmation>,
) {
    let confirming = async {
        if let Some(confirmation) = confirmation {
            Box::pin(confirm(conn.clone(), confirmation)).await;
        }
    };
    let duties = async {
        tokio::join!(
            confirming,
            control::run(conn.clone(), control_reader),
            conversation::accept_loop(conn.clone()),
            datagrams::receive_loop(conn.clone()),
            conversation::outbound_loop(conn.clone(), outbound),
        )
    };
    tokio::select! {
        _ = duties => {}
        reason = conn.connection.closed() => {
            debug!(user = %conn.session.user, %reason, "connection closed");
        }
    }
}

/// Checks version, ids and token; returns the token's claims.
fn authenticate(hello: &Hello, shared: &Shared) -> Result<Claims, (ErrorCode, String)> {
    if hello.version != VERSION {
        return Err((
            ErrorCode::UNSUPPORTED_VERSION,
            format!(
                "version {} is not supported; this server speaks {VERSION}",
                hello.version
            ),
        ));
    }
    if !ids::is_valid_name(&hello.device_id) {
        return Err((ErrorCode::INVALID_ARGUMENT, "invalid device_id".into()));
    }
    // The client learns only UNAUTHENTICATED, never which check failed (FERRY-SEC-2); the log says.
    let refused = || (ErrorCode::UNAUTHENTICATED, "invalid token".to_owned());
    let claims = match shared.secret.verify(&hello.token, SystemTime::now()) {
        Ok(claims) => claims,
        Err(e) => {
            info!(device = %hello.device_id, reason = %e, "token rejected");
            return Err(refused());
        }
    };
    if claims.device != hello.device_id {
        info!(device = %hello.device_id, token_device = %claims.device, "token for another device");
        return Err(refused());
    }
    Ok(claims)
}

/// Sends `Error{code}` on the control stream (if there is one), lets it reach the peer briefly, then
/// closes the connection with the same code.
async fn refuse(
    connection: &quinn::Connection,
    send: Option<quinn::SendStream>,
    code: ErrorCode,
    reason: &str,
) -> HandshakeError {
    if let Some(mut send) = send {
        let bytes = ferry_protocol::codec::encode(&frames::error(code, reason));
        if send.write_all(&bytes).await.is_ok() {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
        }
    }
    connection.close(codes::to_varint(code), reason.as_bytes());
    HandshakeError::Refused(code, reason.to_owned())
}

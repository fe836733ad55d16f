//! Online sessions: which devices of which users are connected here, and the login policy that decides
//! which older session a new one replaces.
//!
//! Fan-out reads this registry for every stored message, so lookups clone only the few handles needed.
//! The outbound queue of each session is bounded: when a slow device's queue is full its Delivers are
//! dropped (and counted) — the messages are durable, and the device recovers them through heartbeat
//! heads and Pull (FERRY-DELIVER-*), so a slow reader never slows down senders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_protocol::{frames, ErrorCode, Frame};
use ferry_quic::{codes, FrameWriter};
use tokio::sync::mpsc;

use crate::config::LoginPolicy;

/// Something to send to one session.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A stored message to deliver on the conversation's stream.
    Deliver {
        /// Conversation id.
        conversation: Arc<str>,
        /// The whole encoded Deliver frame, shared by every recipient of the message.
        frame: Bytes,
    },
    /// An encoded datagram (typing, presence) to relay.
    Datagram(Bytes),
}

/// A connected device, as other tasks see it.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    /// Unique within this server process.
    pub(crate) id: u64,
    /// Authenticated user.
    pub(crate) user: Arc<str>,
    /// Device id from Hello (equal to the token's device).
    pub(crate) device: Arc<str>,
    /// Device class from Hello, for the one-per-class policy.
    pub(crate) device_class: Arc<str>,
    /// Deliveries and datagrams for this session.
    pub(crate) outbound: mpsc::Sender<Outbound>,
    /// Control-stream frames (GoAway) for this session.
    pub(crate) control: FrameWriter,
    /// The QUIC connection, to close a replaced session.
    pub(crate) connection: quinn::Connection,
    /// When this node accepted the login (Unix ms): orders logins of one device across nodes.
    pub(crate) login_ms: u64,
}

impl SessionHandle {
    /// Tells the session it was replaced and closes it with SESSION_REPLACED, which tells the client not
    /// to reconnect automatically (no kick loops, FERRY-CONN-*).
    pub(crate) fn close_replaced(&self) {
        let go_away = frames::go_away(
            ErrorCode::SESSION_REPLACED,
            "another session of this user replaced this one",
        );
        // The GoAway first, then the close (FERRY-AUTH-8).
        self.notify_and_close(go_away, ErrorCode::SESSION_REPLACED, "session replaced");
    }

    /// Queues `frame` on the control stream and, behind it, the connection's close with `code`, so the
    /// client reads why before the connection goes. If the control queue is full or gone, closes at
    /// once: the close code alone carries the news.
    pub(crate) fn notify_and_close(&self, frame: Frame, code: ErrorCode, reason: &'static str) {
        let queued = self.control.try_send(frame).is_ok()
            && self
                .control
                .try_close_connection(code, reason, self.connection.clone())
                .is_ok();
        if !queued {
            self.connection
                .close(codes::to_varint(code), reason.as_bytes());
        }
    }
}

pub(crate) use ferry_cluster::replaces;

/// A login of the device that this node accepted later is registered already: the caller closes the
/// session being registered (SESSION_REPLACED), as it would had the later login come second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Superseded;

/// The registry of online sessions.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    next_id: AtomicU64,
    by_user: Mutex<HashMap<Arc<str>, Vec<Entry>>>,
}

/// A session in the registry.
#[derive(Debug)]
struct Entry {
    session: SessionHandle,
    /// False while the session's 0-RTT handshake is not complete: it gets deliveries already, but the
    /// login policy neither applies to it nor counts it yet (FERRY-ZERORTT-3) — its Hello may be a
    /// replay that never completes.
    confirmed: bool,
}

impl Sessions {
    /// A fresh session id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers `session`; returns the sessions the policy says it replaces (already removed from the
    /// registry; the caller closes them), or [`Superseded`] without registering it when a session that
    /// this node accepted *later* holds the place already.
    ///
    /// Logins of one device can overlap on one node: a client whose handshake is slow (a loaded node,
    /// a slow Redis) gives up, dials again, and the second login may be registered first. The older
    /// login registering last must not replace the newer one — its client has moved on to it, and
    /// SESSION_REPLACED would stop that client for good. Acceptance order is the session id's.
    pub(crate) fn register(
        &self,
        session: SessionHandle,
        policy: LoginPolicy,
    ) -> Result<Vec<SessionHandle>, Superseded> {
        self.admit(session.clone());
        self.confirm(&session, policy)
    }

    /// Adds a session whose handshake is not complete yet (0-RTT): it receives deliveries from now on,
    /// so nothing committed after its first Sync or Pull is missed, but it replaces nobody until
    /// [`Sessions::confirm`].
    pub(crate) fn admit(&self, session: SessionHandle) {
        let mut by_user = self.by_user.lock().expect("sessions lock");
        let entry = Entry {
            session,
            confirmed: false,
        };
        by_user
            .entry(entry.session.user.clone())
            .or_default()
            .push(entry);
    }

    /// Applies the login policy to an admitted session once its handshake is complete: like
    /// [`Sessions::register`], against the confirmed sessions only. On [`Superseded`] the session is
    /// removed; if it is gone already (replaced, or unregistered), nothing is replaced either.
    pub(crate) fn confirm(
        &self,
        session: &SessionHandle,
        policy: LoginPolicy,
    ) -> Result<Vec<SessionHandle>, Superseded> {
        let mut by_user = self.by_user.lock().expect("sessions lock");
        let Some(list) = by_user.get_mut(&session.user) else {
            return Ok(Vec::new());
        };
        let Some(me) = list.iter().position(|e| e.session.id == session.id) else {
            return Ok(Vec::new());
        };
        let conflicts = |old: &Entry| {
            old.confirmed
                && old.session.id != session.id
                && replaces(
                    policy,
                    (&session.device, &session.device_class),
                    (&old.session.device, &old.session.device_class),
                )
        };
        if list
            .iter()
            .any(|old| conflicts(old) && old.session.id > session.id)
        {
            list.remove(me);
            if list.is_empty() {
                by_user.remove(&session.user);
            }
            return Err(Superseded);
        }
        let (replaced, kept): (Vec<_>, Vec<_>) = list.drain(..).partition(conflicts);
        *list = kept;
        for entry in list.iter_mut().filter(|e| e.session.id == session.id) {
            entry.confirmed = true;
        }
        Ok(replaced.into_iter().map(|e| e.session).collect())
    }

    /// Removes a session when its connection ends (no-op if it was replaced already).
    pub(crate) fn unregister(&self, user: &str, id: u64) {
        let mut by_user = self.by_user.lock().expect("sessions lock");
        if let Some(list) = by_user.get_mut(user) {
            list.retain(|e| e.session.id != id);
            if list.is_empty() {
                by_user.remove(user);
            }
        }
    }

    /// Calls `f` with every online session of `user`.
    pub(crate) fn for_each_of(&self, user: &str, mut f: impl FnMut(&SessionHandle)) {
        let by_user = self.by_user.lock().expect("sessions lock");
        if let Some(list) = by_user.get(user) {
            list.iter().for_each(|e| f(&e.session));
        }
    }

    /// Every online session (for GoAway on shutdown).
    pub(crate) fn all(&self) -> Vec<SessionHandle> {
        let by_user = self.by_user.lock().expect("sessions lock");
        by_user
            .values()
            .flatten()
            .map(|e| e.session.clone())
            .collect()
    }

    /// Number of online sessions.
    pub(crate) fn len(&self) -> usize {
        let by_user = self.by_user.lock().expect("sessions lock");
        by_user.values().map(Vec::len).sum()
    }

    /// True when no session is online.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

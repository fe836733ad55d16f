//! The control stream: Welcome, HeartbeatAck (heads, token), SyncResult pages, group results, GoAway and
//! session-level errors.

use std::time::Instant;

use ferry_protocol::frame::{frame::Kind, ConversationState, Frame};
use ferry_protocol::ErrorCode;

use super::{Core, Phase};
use crate::client::GroupChange;
use crate::error::ClientError;
use crate::event::{ConnectionState, Event};

impl Core {
    /// A frame arrived on session `gen`'s control stream.
    pub(super) fn on_control(&mut self, gen: u64, f: Frame, now: Instant) {
        let Some(kind) = f.kind else { return };
        match kind {
            Kind::Welcome(w) => {
                // The stream limit belongs to the session's streams (`streams.rs`) and the frame
                // size also sizes Pull pages; the other limits are adopted by `on_welcome`.
                let limits = ferry_protocol::limits::effective(w.limits.as_ref());
                if let Some(s) = self.session(gen) {
                    s.streams.set_max_open(limits.max_open_streams);
                }
                // Pull pages are sized to fit a frame (`Inbox::page`).
                self.inbox
                    .set_max_frame_size(limits.max_frame_size as usize);
                self.on_welcome(gen, w, now)
            }
            Kind::HeartbeatAck(ack) => {
                if let Some(h) = self.session(gen).and_then(|s| s.heartbeat.as_mut()) {
                    h.on_ack();
                }
                for state in &ack.changed {
                    self.on_conversation_state(state);
                }
                let sync_running = self.session(gen).is_some_and(|s| s.sync_request.is_some());
                if ack.has_more {
                    if !sync_running {
                        self.start_sync();
                    }
                } else if ack.sync_token != 0 && ack.sync_token != self.sync_token && !sync_running
                {
                    // Tokens are opaque (FERRY-ID-6): the latest answer's token is adopted, never the
                    // "larger" one. A running Sync sets the token itself when it completes. An
                    // unchanged token is not committed again: most acks bring none, and a store
                    // commit (an fsync) per Heartbeat held every ack's driver pass behind the disk
                    // (four a second per device in a cluster tuned for fast failover).
                    self.sync_token = ack.sync_token;
                    self.effects.commit.sync_token = Some(ack.sync_token);
                }
            }
            Kind::SyncResult(r) => {
                let ours = self
                    .session(gen)
                    .is_some_and(|s| s.sync_request == Some(r.request_id));
                if !ours {
                    return;
                }
                for state in &r.conversations {
                    self.on_conversation_state(state);
                }
                // The answer to a Sync from our token: its next_token is the one to continue from,
                // whatever its value (tokens are opaque, FERRY-ID-6).
                self.sync_token = r.next_token;
                self.effects.commit.sync_token = Some(r.next_token);
                if r.has_more {
                    self.start_sync();
                } else {
                    if let Phase::Live(s) = &mut self.phase {
                        s.sync_request = None;
                    }
                    for request in std::mem::take(&mut self.deferred_history) {
                        self.history(request);
                    }
                }
            }
            Kind::GroupResult(r) => {
                self.inbox.learn(&r.conversation_id);
                if let Some(reply) = self.control_waiters.remove(&r.request_id) {
                    let _ = reply.send(Ok(GroupChange {
                        conversation: r.conversation_id,
                        seq: r.seq,
                    }));
                }
            }
            Kind::PushResult(r) => {
                if let Some(reply) = self.push_waiters.remove(&r.request_id) {
                    let _ = reply.send(Ok(r));
                }
            }
            Kind::GoAway(g) => {
                if ErrorCode(g.code) == ErrorCode::SESSION_REPLACED {
                    tracing::info!(reason = %g.reason, "replaced by another session of this device; stopping");
                    return self.fatal(ConnectionState::Replaced);
                }
                tracing::info!(reason = %g.reason, endpoints = ?g.endpoints, "server asked to go away");
                self.preferred = g.endpoints.into();
                if let Some(s) = self.session(gen) {
                    s.draining = true;
                }
            }
            Kind::Error(e) => {
                let code = ErrorCode(e.code);
                if e.request_id != 0 {
                    let error = ClientError::Protocol {
                        code,
                        message: e.message.clone(),
                    };
                    if let Some(reply) = self.control_waiters.remove(&e.request_id) {
                        let _ = reply.send(Err(error));
                    } else if let Some(reply) = self.push_waiters.remove(&e.request_id) {
                        let _ = reply.send(Err(error));
                    } else {
                        // No waiter: a refused MarkRead (best effort, nobody awaits it); its request
                        // id is in the debug log line of the MarkRead.
                        tracing::warn!(request_id = e.request_id, ?code, message = %e.message, "server refused a request (MarkRead)");
                    }
                    return;
                }
                match code {
                    // The server answered, only its store is away (e.g. Redis restarting): it is alive,
                    // so the Heartbeat counts as answered and the client stays instead of failing over.
                    code if code.is_retryable() => {
                        if let Some(h) = self.session(gen).and_then(|s| s.heartbeat.as_mut()) {
                            h.on_ack();
                        }
                        tracing::debug!(?code, message = %e.message, "retryable error on the control stream")
                    }
                    ErrorCode::UNAUTHENTICATED => self.auth_failed(e.message),
                    ErrorCode::SESSION_REPLACED => self.fatal(ConnectionState::Replaced),
                    // Before the close: the control stream ends with it, which alone would reconnect.
                    ErrorCode::TOKEN_REVOKED => self.fatal(ConnectionState::AuthFailed {
                        reason: format!("tokens revoked: {}", e.message),
                    }),
                    ErrorCode::UNSUPPORTED_VERSION => self.fatal(ConnectionState::Disconnected {
                        reason: format!("server does not speak ferry/1: {}", e.message),
                    }),
                    _ => {
                        tracing::warn!(?code, message = %e.message, "server error on the control stream")
                    }
                }
            }
            other => tracing::debug!(?other, "unexpected frame on the control stream"),
        }
    }

    /// A conversation's head (and epoch) from HeartbeatAck or SyncResult.
    pub(super) fn on_conversation_state(&mut self, state: &ConversationState) {
        if let Some(epoch) = self.inbox.on_state(state) {
            self.own_stored
                .retain(|(conversation, _)| *conversation != state.conversation_id);
            self.effects.events.push(Event::EpochReset {
                conversation: state.conversation_id.clone(),
                epoch,
            });
        }
    }
}

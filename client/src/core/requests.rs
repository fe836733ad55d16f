//! The application's requests: sends, acks, group administration, read markers, typing signals and
//! history requests (carried out in `history`).

use std::time::Instant;

use ferry_protocol::frame::{self, frame::Kind};

use super::conversations::datagrams_allowed;
use super::{frame, Core, HistoryRequest, PendingSend, Stop, Transmit};
use crate::client::{GroupOp, Reply, Request};
use crate::error::ClientError;
use crate::push::PushOp;

impl Core {
    /// A request of the application. `Rebind` is the driver's (it owns the socket) and is ignored here.
    pub(crate) fn handle_request(&mut self, req: Request, now: Instant) {
        self.pass_due = true;
        self.last_now = now;
        match req {
            Request::Send {
                record,
                reply,
                message,
            } => {
                self.sends
                    .insert(record.client_msg_id.clone(), PendingSend { reply, message });
                self.outbox.push(record);
            }
            Request::Ack { conversation, seq } => {
                self.inbox.app_ack(&conversation, seq);
            }
            Request::Group { op, reply } => {
                let request_id = self.request_id();
                let kind = match op {
                    GroupOp::Create { name, members } => Kind::CreateGroup(frame::CreateGroup {
                        request_id,
                        name,
                        members,
                    }),
                    GroupOp::Add { conversation, user } => Kind::AddMember(frame::AddMember {
                        request_id,
                        conversation_id: conversation,
                        user_id: user,
                    }),
                    GroupOp::Remove { conversation, user } => {
                        Kind::RemoveMember(frame::RemoveMember {
                            request_id,
                            conversation_id: conversation,
                            user_id: user,
                        })
                    }
                };
                self.control_waiters.insert(request_id, reply);
                // Group administration is not idempotent: it never rides in early data and waits for
                // Welcome when offline.
                if self.live().is_some_and(|s| s.welcomed) {
                    self.control(frame(kind));
                } else {
                    self.queued_control.push_back((request_id, frame(kind)));
                }
            }
            Request::MarkRead { conversation, seq } => {
                if self.live().is_some_and(|s| s.welcomed) {
                    // The id lets an Error name the MarkRead it refuses (FERRY-READ-1); a success has
                    // no answer, so nothing waits for it and the control handler only logs a refusal.
                    let request_id = self.request_id();
                    tracing::debug!(%conversation, seq, request_id, "MarkRead");
                    self.control(frame(Kind::MarkRead(frame::MarkRead {
                        conversation_id: conversation,
                        seq,
                        request_id,
                    })));
                }
            }
            Request::Push { op, reply } => self.push_request(op, reply),
            Request::Typing {
                conversation,
                active,
            } => {
                // Typing is unreliable by definition: without a Welcomed 1-RTT session it is dropped, not
                // queued (a stale "typing" signal sent later would be wrong anyway).
                match self.live() {
                    Some(s) if datagrams_allowed(s.welcomed, s.early, s.zero_rtt_verdict) => {
                        let gen = s.gen;
                        let frame = frame(Kind::Typing(frame::Typing {
                            conversation_id: conversation,
                            active,
                            ..Default::default()
                        }));
                        self.transmits.push_back(Transmit::Datagram { gen, frame });
                    }
                    _ => tracing::debug!(%conversation, "typing signal dropped: not connected"),
                }
            }
            Request::History {
                conversation,
                after_seq,
                limit,
                reply,
            } => {
                let request = HistoryRequest::new(conversation, after_seq, limit, reply);
                let syncing = self
                    .live()
                    .is_some_and(|s| s.welcomed && s.sync_request.is_some());
                if syncing {
                    self.deferred_history.push(request);
                } else {
                    self.history(request)
                }
            }
            Request::Rebind { reply } => {
                let _ = reply.send(Err(ClientError::Unreachable(
                    "rebind is the driver's".into(),
                )));
            }
            Request::Shutdown { reply } => self.stop = Some(Stop::Shutdown(Some(reply))),
        }
    }

    /// A push request: sent only on a Welcomed session whose server acknowledged `push`
    /// (FERRY-EXT-3); otherwise refused at once, since a registration is made by a connected app.
    fn push_request(&mut self, op: PushOp, reply: Reply<frame::PushResult>) {
        let refusal = match self.live() {
            Some(s) if s.welcomed && s.push => None,
            Some(s) if s.welcomed => Some(ClientError::Protocol {
                code: ferry_protocol::ErrorCode::FORBIDDEN,
                message: "the server does not offer push (no \"push\" capability in Welcome)"
                    .into(),
            }),
            _ => Some(ClientError::Unreachable(
                "push requests need a connection".into(),
            )),
        };
        if let Some(error) = refusal {
            let _ = reply.send(Err(error));
            return;
        }
        let request_id = self.request_id();
        let kind = match op {
            PushOp::Register {
                endpoint,
                app_token,
                policy,
            } => Kind::PushRegister(frame::PushRegister {
                request_id,
                endpoint,
                app_token,
                policy: policy.wire(),
            }),
            PushOp::Unregister => Kind::PushUnregister(frame::PushUnregister { request_id }),
            PushOp::List => Kind::PushList(frame::PushList { request_id }),
        };
        self.push_waiters.insert(request_id, reply);
        self.control(frame(kind));
    }

    /// Every handle of the application is gone: stop.
    pub(crate) fn handle_requests_closed(&mut self) {
        self.stop = Some(Stop::Shutdown(None));
    }
}

//! The application's requests: sends, acks, group administration, read markers, typing signals and
//! history pages (read from the store, completed by a Pull when the store lacks part of the page).

use std::time::Instant;

use ferry_protocol::frame::{self, frame::Kind};

use super::conversations::datagrams_allowed;
use super::{frame, Core, HistoryRequest, PendingSend, Phase, Stop, StoreWork, Transmit};
use crate::client::{GroupOp, Request};
use crate::error::{ClientError, StoreError};
use crate::inbox::PullTag;
use crate::message::ReceivedMessage;

impl Core {
    /// A request of the application. `Rebind` is the driver's (it owns the socket) and is ignored here.
    pub(crate) fn handle_request(&mut self, req: Request, _now: Instant) {
        self.pass_due = true;
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
                    self.control(frame(Kind::MarkRead(frame::MarkRead {
                        conversation_id: conversation,
                        seq,
                    })));
                }
            }
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
                let request = HistoryRequest {
                    conversation,
                    after_seq,
                    limit,
                    reply,
                };
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

    /// Every handle of the application is gone: stop.
    pub(crate) fn handle_requests_closed(&mut self) {
        self.stop = Some(Stop::Shutdown(None));
    }

    /// Starts a history request: first the store's page.
    pub(super) fn history(&mut self, request: HistoryRequest) {
        let id = self.request_id();
        let epoch = self
            .inbox
            .epoch(&request.conversation)
            .unwrap_or(self.store_epoch);
        self.store_work.push_back(StoreWork::ReadHistory {
            id,
            conversation: request.conversation.clone(),
            epoch,
            after_seq: request.after_seq,
            limit: request.limit,
        });
        self.history_reads.insert(id, request);
    }

    /// The store's page for history request `id`: answer with it if it is complete (or nothing more can
    /// be had), else Pull the page from the server.
    pub(crate) fn handle_history_page(
        &mut self,
        id: u64,
        local: Result<Vec<ReceivedMessage>, StoreError>,
    ) {
        self.pass_due = true;
        let Some(request) = self.history_reads.remove(&id) else {
            return;
        };
        let local = match local {
            Ok(local) => local,
            Err(e) => {
                let _ = request.reply.send(Err(e.into()));
                return;
            }
        };
        let HistoryRequest {
            ref conversation,
            after_seq,
            limit,
            ..
        } = request;
        // Complete if the page is full and starts right after `after_seq`; a short page is complete when
        // it reaches what the server has.
        let head = self.inbox.known_head(conversation).unwrap_or(0);
        let starts_right = local.first().is_some_and(|m| m.seq == after_seq + 1);
        let reaches = local.last().map_or(after_seq, |m| m.seq) >= head;
        let complete = starts_right && (local.len() >= limit || reaches);
        let live = matches!(&self.phase, Phase::Live(s) if s.welcomed);
        if complete || !live || !self.inbox.knows(conversation) || after_seq >= head {
            let _ = request.reply.send(Ok(local));
            return;
        }
        let conversation = conversation.clone();
        self.inbox
            .pull_sent(&conversation, after_seq, PullTag::History(id));
        let pull = frame(Kind::Pull(frame::Pull {
            after_seq,
            limit: limit.min(u32::MAX as usize) as u32,
        }));
        self.history_waiters.insert(id, request);
        self.stream(&conversation, pull);
    }
}

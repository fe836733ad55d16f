//! History requests: the store's page first; when it lacks part of the range, the range is pulled from
//! the server page by page — several Pulls in flight, so 3,000 messages take a few round trips rather
//! than thirty — until the request's limit or the end of what this reader can see. Works for
//! conversations this client does not track (no receive window): their pages are only stored.

use ferry_protocol::frame::{self, frame::Kind};
use ferry_protocol::ErrorCode;

use super::{frame, Core, HistoryRequest, Phase, StoreWork};
use crate::client::Reply;
use crate::error::{ClientError, StoreError};
use crate::inbox::PullTag;
use crate::message::ReceivedMessage;

/// Pulls in flight per history request: the pages of one request arrive back to back on its stream.
const HISTORY_DEPTH: usize = 8;

impl HistoryRequest {
    pub(super) fn new(
        conversation: String,
        after_seq: u64,
        limit: usize,
        reply: Reply<Vec<ReceivedMessage>>,
    ) -> Self {
        HistoryRequest {
            conversation,
            after_seq,
            limit,
            reply,
            collected: Vec::new(),
            next_after: after_seq,
            outstanding: 0,
            head: None,
        }
    }

    /// The first seq past the requested range.
    fn end(&self) -> u64 {
        self.after_seq.saturating_add(self.limit as u64)
    }

    /// Nothing more is wanted: the limit is reached, or the head and every Pull was answered.
    fn finished(&self) -> bool {
        self.collected.len() >= self.limit
            || (self.outstanding == 0
                && self
                    .head
                    .is_some_and(|head| self.next_after >= head.min(self.end())))
    }
}

impl Core {
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
    /// be had), else pull the range from the server.
    pub(crate) fn handle_history_page(
        &mut self,
        id: u64,
        local: Result<Vec<ReceivedMessage>, StoreError>,
    ) {
        self.pass_due = true;
        let Some(mut request) = self.history_reads.remove(&id) else {
            return;
        };
        let local = match local {
            Ok(local) => local,
            Err(e) => {
                let _ = request.reply.send(Err(e.into()));
                return;
            }
        };
        // Complete if the page is full and starts right after `after_seq`; a short page is complete when
        // it reaches what the server has (known only for tracked conversations).
        let head = self.inbox.known_head(&request.conversation);
        let after_seq = request.after_seq;
        // `checked_add`: the application may ask for what follows u64::MAX (nothing does).
        let starts_right = local
            .first()
            .is_some_and(|m| Some(m.seq) == after_seq.checked_add(1));
        let reaches = head.is_some_and(|h| local.last().map_or(after_seq, |m| m.seq) >= h);
        let complete = starts_right && (local.len() >= request.limit || reaches);
        let live = matches!(&self.phase, Phase::Live(s) if s.welcomed);
        // Nothing follows u64::MAX: no Pull could ask for more, so the local page is the answer (a
        // request waiting for Pulls it never sends would never be answered).
        let nothing_after = after_seq == u64::MAX || request.limit == 0;
        if complete || !live || head.is_some_and(|h| after_seq >= h) || nothing_after {
            let _ = request.reply.send(Ok(local));
            return;
        }
        // The server is the reference for the whole range: a partial local page may have holes.
        request.head = head;
        self.history_waiters.insert(id, request);
        self.pump_history(id);
    }

    /// Sends the next Pulls of history request `id`: up to [`HISTORY_DEPTH`] in flight while the head
    /// is known, one at a time before (the first answer tells the head).
    fn pump_history(&mut self, id: u64) {
        let page = u64::from(self.inbox.page());
        let mut pulls = Vec::new();
        let Some(w) = self.history_waiters.get_mut(&id) else {
            return;
        };
        let target = w.head.map_or(w.end(), |h| h.min(w.end()));
        let depth = if w.head.is_some() { HISTORY_DEPTH } else { 1 };
        while w.outstanding < depth && w.next_after < target {
            let limit = page.min(w.end() - w.next_after);
            pulls.push((w.next_after, limit));
            w.next_after += limit;
            w.outstanding += 1;
        }
        let conversation = w.conversation.clone();
        let now = self.last_now;
        for (after_seq, limit) in pulls {
            let limit = limit as u32; // at most the page size, a u32
            self.inbox
                .pull_sent(&conversation, after_seq, limit, PullTag::History(id), now);
            self.stream(
                &conversation,
                frame(Kind::Pull(frame::Pull { after_seq, limit })),
            );
        }
    }

    /// A page for history request `id` arrived (`head_seq`, `has_more` from its PullResult).
    pub(super) fn on_history_page(
        &mut self,
        id: u64,
        page: Vec<ReceivedMessage>,
        head_seq: u64,
        has_more: bool,
    ) {
        self.effects.commit.messages.extend(page.iter().cloned());
        let Some(w) = self.history_waiters.get_mut(&id) else {
            return; // answered already (limit reached or the end seen); this page was in flight
        };
        w.outstanding = w.outstanding.saturating_sub(1);
        w.head = Some(w.head.map_or(head_seq, |h| h.max(head_seq)));
        let ended = page.is_empty() || !has_more;
        let last = w.collected.last().map_or(w.after_seq, |m| m.seq);
        w.collected
            .extend(page.into_iter().filter(|m| m.seq > last));
        // Seqs this reader cannot see are skipped by the server: continue after what came back.
        let last = w.collected.last().map_or(w.after_seq, |m| m.seq);
        w.next_after = w.next_after.max(last);
        if ended || w.finished() {
            let mut w = self.history_waiters.remove(&id).expect("present");
            w.collected.truncate(w.limit);
            let collected = std::mem::take(&mut w.collected);
            self.effects.history.push((w, collected));
            return;
        }
        self.pump_history(id);
    }

    /// The conversation was refused (FORBIDDEN, NOT_FOUND on its stream): its history requests fail.
    pub(super) fn refuse_history(&mut self, conversation: &str, code: ErrorCode, message: &str) {
        for id in self.inbox.on_stream_lost(conversation) {
            if let Some(w) = self.history_waiters.remove(&id) {
                let _ = w.reply.send(Err(ClientError::Protocol {
                    code,
                    message: message.to_owned(),
                }));
            }
        }
    }
}

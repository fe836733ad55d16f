//! The inbox's Pulls: which answer belongs to which request, and catch-up in a few round trips.
//!
//! Answers come back in request order on a conversation stream, so a FIFO per conversation matches each
//! PullResult to its Pull. A conversation far behind its head (a client back after a while) does not pull
//! page after page, one round trip each: [`Inbox::poll_pulls`] keeps several Pulls in flight for the
//! consecutive pages up to the known head — at most `max_buffered / page` per conversation (the window
//! can hold every page that overtakes its predecessor) and the announced in-flight limit over all
//! conversations. Pages arrive in order, so each is usually ready at once.

use std::collections::VecDeque;
use std::time::Instant;

use ferry_protocol::frame::PullResult;
use ferry_protocol::{Arrival, PullRequest};

use super::{initial_position, Arrived, Inbox};
use crate::message::ReceivedMessage;

/// The size assumed per message before any page was seen (the design's typical message, 256 bytes).
pub(super) const INITIAL_TYPICAL_SIZE: usize = 256;
/// Pages a session's first flight asks over all probed conversations (see [`Inbox::probe_pulls`]).
const PROBE_PAGES: usize = 16;
/// Most pages the first flight asks of one conversation.
const PROBE_DEPTH: usize = 4;

/// A message's size in a PullResult: its strings and body plus the fixed fields and their tags.
fn wire_size(m: &ReceivedMessage) -> usize {
    m.body.len() + m.sender.len() + m.sender_device.len() + m.client_msg_id.len() + 32
}

/// Why a Pull was sent, to route its PullResult (results come back in request order on a stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullTag {
    /// A gap, tail or catch-up pull asked for by the receive window.
    Window,
    /// A history page the application asked for, with the driver's request id.
    History(u64),
}

/// A Pull sent and not yet answered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outstanding {
    after_seq: u64,
    limit: u32,
    tag: PullTag,
    sent_at: Instant,
}

impl Outstanding {
    /// The first seq a window pull does not cover.
    fn covers_to(&self) -> u64 {
        self.after_seq.saturating_add(u64::from(self.limit))
    }
}

impl Inbox {
    /// Applies the announced limits: the Pull page size (`max_pull_page`, 0 = keep) and the most Pulls in
    /// flight over all conversations (`max_inflight`, 0 = keep).
    pub fn set_pull_limits(&mut self, page: u32, max_inflight: usize) {
        if page > 0 {
            self.page = page;
        }
        if max_inflight > 0 {
            self.max_pulls = max_inflight;
        }
    }

    /// Applies the announced `max_frame_size` (0 = keep).
    pub fn set_max_frame_size(&mut self, size: usize) {
        if size > 0 {
            self.max_frame_size = size;
        }
    }

    /// The Pull page size in use: as many messages of the typical size seen so far as fill three
    /// quarters of a frame, at most the announced `max_pull_page`. A page the server must cut at the
    /// frame size (FERRY-PULL-3) answers fewer messages than asked, and the pipelined Pulls behind it then
    /// leave a gap to pull again: a round trip lost.
    pub fn page(&self) -> u32 {
        let fits = (self.max_frame_size / 4 * 3) / self.typical_size.max(1);
        (fits.max(1) as u32).min(self.page)
    }

    /// Learns the typical message size from a page (a moving average, so one large message does not
    /// shrink every following page).
    fn observe_sizes(&mut self, page: &[ReceivedMessage]) {
        if page.is_empty() {
            return;
        }
        let total: usize = page.iter().map(wire_size).sum();
        let average = total / page.len();
        self.typical_size = (self.typical_size * 3 + average) / 4;
    }

    /// Pulls sent and not yet answered, over all conversations.
    pub fn pulls_in_flight(&self) -> usize {
        self.pulls.values().map(VecDeque::len).sum()
    }

    /// Whether a Pull of the conversation is unanswered (its stream is not idle).
    pub fn has_pulls(&self, conversation: &str) -> bool {
        self.pulls.get(conversation).is_some_and(|q| !q.is_empty())
    }

    /// Most window pulls in flight for one conversation: every page that overtakes the first must fit
    /// in the window's out-of-order buffer.
    fn depth(&self) -> usize {
        (self.window.max_buffered / self.page() as usize).max(1)
    }

    /// Records a Pull sent on the conversation's stream (the conversation need not have a window:
    /// history pages are pulled for conversations this client does not track).
    pub fn pull_sent(
        &mut self,
        conversation: &str,
        after_seq: u64,
        limit: u32,
        tag: PullTag,
        now: Instant,
    ) {
        self.pulls
            .entry(conversation.to_owned())
            .or_default()
            .push_back(Outstanding {
                after_seq,
                limit,
                tag,
                sent_at: now,
            });
    }

    /// A PullResult arrived on the conversation's stream. Returns what it answered (`None` if no Pull was
    /// outstanding), the arrival, and the converted messages of the page (for history requests).
    pub fn on_pull_result(
        &mut self,
        conversation: &str,
        result: PullResult,
    ) -> (Option<PullTag>, Arrived, Vec<ReceivedMessage>) {
        let Some(pull) = self
            .pulls
            .get_mut(conversation)
            .and_then(VecDeque::pop_front)
        else {
            return (None, Arrived::default(), Vec::new());
        };
        if self.pulls.get(conversation).is_some_and(VecDeque::is_empty) {
            self.pulls.remove(conversation);
        }
        let epoch = result.epoch;
        let page: Vec<ReceivedMessage> = result
            .messages
            .into_iter()
            .map(|m| ReceivedMessage::from_wire(conversation, epoch, m))
            .collect();
        self.observe_sizes(&page);
        let mut arrived = Arrived::default();
        let Some(conv) = self.convs.get_mut(conversation) else {
            // A history page of a conversation without a window: only its requester wants it.
            return (Some(pull.tag), arrived, page);
        };
        if conv.left(epoch) {
            // Answered before the epoch changed: late news of an epoch never current again.
            return (Some(pull.tag), arrived, Vec::new());
        }
        let arrival = conv.window.on_pull_result(
            pull.after_seq,
            epoch,
            result.head_seq,
            page.iter().map(|m| (m.seq, m.clone())),
        );
        match arrival {
            Arrival::Ready(ready) => {
                arrived.ready = ready;
                self.dirty.insert(conversation.to_owned());
            }
            Arrival::EpochChanged { epoch } => {
                let start = initial_position(0, result.head_seq, self.recent_window);
                self.reset(conversation, epoch, start);
                let conv = self.convs.get_mut(conversation).expect("known");
                conv.window.on_head(epoch, result.head_seq);
                arrived.epoch_reset = Some(epoch);
            }
            _ => {
                // Heads may have moved even without new messages.
                self.dirty.insert(conversation.to_owned());
            }
        }
        (Some(pull.tag), arrived, page)
    }

    /// The Pulls to send now, by conversation, already recorded as sent at `now`. A conversation behind
    /// its head gets the window's Pull and then the following pages up to the head, several in flight.
    pub fn poll_pulls(&mut self, now: Instant) -> Vec<(String, PullRequest)> {
        let (page, depth, timeout) = (self.page(), self.depth(), self.window.pull_timeout);
        let mut budget = self.max_pulls.saturating_sub(self.pulls_in_flight());
        let mut out = Vec::new();
        let mut ids: Vec<String> = self.convs.keys().cloned().collect();
        ids.sort(); // a fixed order, so a small budget is shared the same way every time
        for id in ids {
            if budget == 0 {
                break;
            }
            let conv = &self.convs[&id];
            let (contiguous, head) = (conv.window.contiguous(), conv.window.known_head());
            let window_pulls: Vec<Outstanding> = self
                .pulls
                .get(&id)
                .into_iter()
                .flatten()
                .filter(|p| p.tag == PullTag::Window)
                .copied()
                .collect();
            // Outstanding window pulls that still cover the next missing seq and are not timed out make
            // the window's own request redundant.
            let covered = window_pulls.iter().any(|p| {
                p.after_seq <= contiguous
                    && p.covers_to() > contiguous
                    && now.saturating_duration_since(p.sent_at) < timeout
            });
            let mut next = window_pulls
                .iter()
                .map(Outstanding::covers_to)
                .max()
                .unwrap_or(contiguous)
                .max(contiguous);
            let mut in_flight = window_pulls.len();
            let mut requests = Vec::new();
            if !covered {
                let conv = self.convs.get_mut(&id).expect("listed");
                if let Some(req) = conv.window.poll_pull(now) {
                    requests.push(PullRequest {
                        after_seq: req.after_seq,
                        limit: page,
                    });
                    // Saturating: seqs are the server's numbers, up to u64::MAX (found by fuzzing).
                    next = req.after_seq.saturating_add(u64::from(page));
                    in_flight += 1;
                } else {
                    continue; // nothing due (or the gap's grace period runs): no pipelining either
                }
            }
            while next < head && in_flight < depth && requests.len() < budget {
                requests.push(PullRequest {
                    after_seq: next,
                    limit: page,
                });
                next = next.saturating_add(u64::from(page));
                in_flight += 1;
            }
            budget -= requests.len().min(budget);
            for req in requests {
                self.pull_sent(&id, req.after_seq, req.limit, PullTag::Window, now);
                out.push((id.clone(), req));
            }
        }
        out
    }

    /// The first flight of a session: before Sync says which conversations changed, the next pages of
    /// every tracked conversation are asked at once (after its contiguous position), so a client back
    /// after a while has its first pages one round trip earlier and the following ones pipelined as
    /// soon as the heads are known. Only a client with at most `max` conversations probes (each probe
    /// costs a stream and mostly answers "nothing new"; with more, Sync picks the changed ones).
    /// `PROBE_PAGES` pages are shared out over the probed conversations, at least one each and at
    /// most `PROBE_DEPTH`: a client with a few busy conversations gets several pages in the first
    /// flight, whose answers also start the connection's congestion window growing a round trip
    /// earlier; a probe past the head costs an empty PullResult. Recorded as window pulls sent at `now`.
    pub fn probe_pulls(&mut self, max: usize, now: Instant) -> Vec<(String, PullRequest)> {
        if self.convs.len() > max {
            return Vec::new();
        }
        let mut ids: Vec<String> = self
            .convs
            .keys()
            .filter(|id| !self.pulls.contains_key(*id))
            .cloned()
            .collect();
        ids.sort();
        let budget = self.max_pulls.saturating_sub(self.pulls_in_flight());
        ids.truncate(budget);
        if ids.is_empty() {
            return Vec::new();
        }
        let page = self.page();
        let depth = (PROBE_PAGES / ids.len())
            .clamp(1, PROBE_DEPTH.min(self.depth()))
            .min(budget / ids.len());
        let mut out = Vec::with_capacity(ids.len() * depth);
        for id in ids {
            let mut after_seq = self.convs[&id].window.contiguous();
            for _ in 0..depth {
                self.pull_sent(&id, after_seq, page, PullTag::Window, now);
                out.push((
                    id.clone(),
                    PullRequest {
                        after_seq,
                        limit: page,
                    },
                ));
                // Saturating: seqs are the server's numbers, up to u64::MAX.
                after_seq = after_seq.saturating_add(u64::from(page));
            }
        }
        out
    }

    /// When a pull grace period or pull timeout ends. While window pulls of a conversation are in
    /// flight, only their timeout counts (the window's own timers are not consulted then; reporting them
    /// would wake the driver for nothing, again and again).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.convs
            .iter()
            .filter_map(|(id, conv)| {
                let oldest = self
                    .pulls
                    .get(id)
                    .and_then(|q| q.iter().find(|p| p.tag == PullTag::Window));
                match oldest {
                    Some(p) => Some(p.sent_at + self.window.pull_timeout),
                    None => conv.window.next_deadline(),
                }
            })
            .min()
    }

    /// The conversation's stream was lost: outstanding Pull answers will not come. Returns the history
    /// requests that lost their answer. An outstanding gap pull is asked again when its pull timeout
    /// expires (not at once: a server that keeps resetting streams must not cause a busy loop).
    pub fn on_stream_lost(&mut self, conversation: &str) -> Vec<u64> {
        let lost = self.pulls.remove(conversation).unwrap_or_default();
        let mut ids: Vec<u64> = lost
            .into_iter()
            .filter_map(|p| match p.tag {
                PullTag::History(id) => Some(id),
                PullTag::Window => None,
            })
            .collect();
        ids.dedup();
        ids
    }

    /// The connection was lost: like [`Inbox::on_stream_lost`] for every conversation. Acks already sent
    /// are not repeated (the server's cursor only feeds Sync's `acked_seq`; the next Ack catches up).
    pub fn on_connection_lost(&mut self) -> Vec<u64> {
        let ids: Vec<String> = self.pulls.keys().cloned().collect();
        let mut lost = Vec::new();
        for id in ids {
            lost.extend(self.on_stream_lost(&id));
        }
        lost
    }
}

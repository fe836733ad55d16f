//! Unit tests of the inbox: windows, acks, epochs, and the pull bookkeeping (pipelining included).

use super::*;
use crate::message::MessageKind;
use bytes::Bytes;
use ferry_protocol::frame::Message;
use ferry_protocol::frame::PullResult;
use ferry_protocol::PullRequest;
use std::time::Instant;

const C: &str = "d:alice:bob";

fn wire(seq: u64) -> Message {
    Message {
        seq,
        sender: "alice".into(),
        sender_device: "phone".into(),
        client_msg_id: format!("m{seq}"),
        body: Bytes::from(format!("b{seq}")),
        server_time_ms: seq,
        kind: 0,
        membership: None,
    }
}

fn msg(seq: u64, epoch: u64) -> ReceivedMessage {
    ReceivedMessage::from_wire(C, epoch, wire(seq))
}

fn seqs(v: &[ReceivedMessage]) -> Vec<u64> {
    v.iter().map(|m| m.seq).collect()
}

fn state(head: u64, epoch: u64, first: u64) -> ConversationState {
    ConversationState {
        conversation_id: C.into(),
        head_seq: head,
        epoch,
        first_seq: first,
        member: true,
        ..ConversationState::default()
    }
}

fn inbox(auto: bool) -> Inbox {
    Inbox::new(WindowConfig::default(), 50, auto)
}

#[test]
fn conversations_are_known_from_the_store_sync_deliveries_and_own_sends() {
    let mut inbox = inbox(true);
    assert!(!inbox.is_known(C));
    inbox.on_state(&state(3, 1, 1));
    assert!(inbox.is_known(C));

    let mut inbox = self::inbox(true);
    inbox.on_deliver(C, 1, msg(1, 1));
    assert!(inbox.is_known(C));

    let mut inbox = self::inbox(true);
    inbox.restore(&ConversationRow {
        conversation: C.into(),
        epoch: 1,
        contiguous_seq: 2,
        app_acked_seq: 2,
        head_seq: 2,
    });
    assert!(inbox.is_known(C));

    // Learned from an own send: known, but without a window (history is not pulled for it).
    let mut inbox = self::inbox(true);
    assert!(inbox.on_own_message(msg(1, 1)).is_empty());
    assert!(inbox.is_known(C) && !inbox.knows(C));
    assert!(!inbox.is_known("d:alice:carol"));
    // Learned from a group answer.
    let mut inbox = self::inbox(true);
    inbox.learn(C);
    assert!(inbox.is_known(C) && !inbox.knows(C));
}

#[test]
fn initial_position_takes_the_recent_window_but_not_before_first_seq() {
    assert_eq!(initial_position(1, 10, 50), 0);
    assert_eq!(initial_position(1, 500, 50), 450);
    assert_eq!(initial_position(480, 500, 50), 479);
    assert_eq!(initial_position(0, 0, 50), 0);
}

#[test]
fn deliveries_are_ready_once_in_order_and_gaps_pull() {
    let now = Instant::now();
    let mut ib = inbox(true);
    assert_eq!(seqs(&ib.on_deliver(C, 7, msg(1, 7)).ready), [1]);
    assert!(ib.on_deliver(C, 7, msg(1, 7)).ready.is_empty(), "duplicate");
    assert!(ib.on_deliver(C, 7, msg(3, 7)).ready.is_empty(), "gap");
    let pulls = ib.poll_pulls(now);
    assert_eq!(
        pulls,
        vec![(
            C.to_string(),
            PullRequest {
                after_seq: 1,
                limit: 100
            }
        )]
    );
    let result = PullResult {
        messages: vec![wire(2), wire(3)],
        head_seq: 3,
        has_more: false,
        epoch: 7,
    };
    let (tag, arrived, page) = ib.on_pull_result(C, result);
    assert_eq!(tag, Some(PullTag::Window));
    assert_eq!(seqs(&arrived.ready), [2, 3]);
    assert_eq!(page.len(), 2);
    assert_eq!(arrived.ready[0].kind, MessageKind::User);
    // An unsolicited PullResult is ignored.
    let (tag, arrived, _) = ib.on_pull_result(C, PullResult::default());
    assert_eq!((tag, arrived), (None, Arrived::default()));
}

#[test]
fn auto_mode_acks_after_store_commit_coalesced() {
    let mut ib = inbox(true);
    ib.on_deliver(C, 7, msg(1, 7));
    ib.on_deliver(C, 7, msg(2, 7));
    assert_eq!(ib.poll_acks(), vec![], "nothing stored yet");
    ib.stored(C);
    assert_eq!(ib.poll_acks(), vec![(C.to_string(), 2)]);
    assert_eq!(ib.poll_acks(), vec![]);
    assert!(!ib.app_ack(C, 2), "app acks do not matter in auto mode");
}

#[test]
fn manual_mode_acks_only_what_the_app_confirmed() {
    let mut ib = inbox(false);
    ib.on_deliver(C, 7, msg(1, 7));
    ib.on_deliver(C, 7, msg(2, 7));
    ib.stored(C);
    assert_eq!(ib.poll_acks(), vec![]);
    assert!(ib.app_ack(C, 1));
    assert!(!ib.app_ack(C, 1));
    assert_eq!(ib.poll_acks(), vec![(C.to_string(), 1)]);
    assert!(ib.app_ack(C, 99), "clamped to contiguous");
    assert_eq!(ib.poll_acks(), vec![(C.to_string(), 2)]);
    let rows = ib.take_dirty_rows();
    assert_eq!(rows[0].app_acked_seq, 2);
    assert_eq!(rows[0].contiguous_seq, 2);
    // Restored, the app-acked position is kept apart from the stored one.
    let mut row = rows[0].clone();
    row.app_acked_seq = 1;
    let mut again = inbox(false);
    again.restore(&row);
    assert!(again.app_ack(C, 2));
}

#[test]
fn new_conversation_from_sync_starts_at_the_recent_window_and_pulls_the_tail() {
    let now = Instant::now();
    let mut ib = inbox(true);
    assert_eq!(ib.on_state(&state(500, 7, 1)), None);
    assert_eq!(ib.contiguous(C), Some(450));
    let pulls = ib.poll_pulls(now);
    assert_eq!(pulls[0].1.after_seq, 450);
    let rows = ib.take_dirty_rows();
    assert_eq!((rows[0].contiguous_seq, rows[0].head_seq), (450, 500));
}

#[test]
fn lost_tail_from_heartbeat_heads_triggers_a_pull() {
    let now = Instant::now();
    let mut ib = inbox(true);
    ib.on_deliver(C, 7, msg(1, 7));
    assert!(ib.poll_pulls(now).is_empty());
    assert_eq!(ib.on_state(&state(2, 7, 1)), None);
    assert_eq!(ib.poll_pulls(now)[0].1.after_seq, 1);
}

#[test]
fn epoch_change_resets_the_window_and_is_reported() {
    let mut ib = inbox(true);
    ib.on_deliver(C, 7, msg(1, 7));
    ib.on_deliver(C, 7, msg(2, 7));
    let arrived = ib.on_deliver(C, 8, msg(1, 8));
    assert_eq!(arrived.epoch_reset, Some(8));
    assert_eq!(seqs(&arrived.ready), [1]);
    assert_eq!(ib.epoch(C), Some(8));
    assert_eq!(ib.on_state(&state(300, 9, 1)), Some(9));
    assert_eq!(ib.contiguous(C), Some(250));
}

#[test]
fn frames_of_an_epoch_already_left_are_dropped_not_switched_back_to() {
    // ferry-chaos cluster seed 33: after a FLUSHALL a late Deliver of the old epoch flipped the window
    // back, and returning to the new epoch handed its seq 1 to the application a second time.
    let mut ib = inbox(true);
    ib.on_deliver(C, 7, msg(1, 7));
    let arrived = ib.on_deliver(C, 8, msg(1, 8));
    assert_eq!(
        (arrived.epoch_reset, seqs(&arrived.ready)),
        (Some(8), vec![1])
    );
    let late = ib.on_deliver(C, 7, msg(2, 7));
    assert_eq!(late, Arrived::default(), "a late Deliver of the left epoch");
    assert_eq!(ib.on_state(&state(2, 7, 1)), None, "a late head of it");
    assert_eq!(ib.epoch(C), Some(8));
    assert!(
        ib.on_deliver(C, 8, msg(1, 8)).ready.is_empty(),
        "seq 1 once"
    );
    assert_eq!(seqs(&ib.on_deliver(C, 8, msg(2, 8)).ready), [2]);
    // A PullResult answered in the left epoch gives nothing to the window either.
    ib.on_deliver(C, 8, msg(4, 8));
    let now = Instant::now();
    assert_eq!(ib.poll_pulls(now).len(), 1);
    let stale = PullResult {
        messages: vec![wire(3)],
        head_seq: 3,
        has_more: false,
        epoch: 7,
    };
    let (tag, arrived, page) = ib.on_pull_result(C, stale);
    assert_eq!(tag, Some(PullTag::Window));
    assert_eq!((arrived, page.len()), (Arrived::default(), 0));
    assert_eq!(ib.epoch(C), Some(8));
}

#[test]
fn own_sends_fill_the_window_so_no_pull_is_needed() {
    let now = Instant::now();
    let mut ib = inbox(true);
    ib.on_deliver(C, 7, msg(1, 7));
    assert!(ib.on_deliver(C, 7, msg(3, 7)).ready.is_empty());
    // seq 2 is ours: SendAck fills it and releases 3.
    assert_eq!(seqs(&ib.on_own_message(msg(2, 7))), [2, 3]);
    assert!(ib.poll_pulls(now).is_empty());
    assert!(ib
        .on_own_message(ReceivedMessage::from_wire("d:x:y", 7, wire(1)))
        .is_empty());
}

#[test]
fn stream_loss_fails_history_pulls_and_repulls_gaps_after_the_timeout() {
    let now = Instant::now();
    let mut ib = inbox(true);
    ib.on_deliver(C, 7, msg(1, 7));
    ib.on_deliver(C, 7, msg(3, 7));
    assert_eq!(ib.poll_pulls(now).len(), 1);
    ib.pull_sent(C, 0, 100, PullTag::History(9), now);
    assert!(ib.poll_pulls(now).is_empty(), "pull outstanding");
    assert_eq!(ib.on_stream_lost(C), vec![9]);
    assert!(ib.poll_pulls(now).is_empty());
    let later = now + WindowConfig::default().pull_timeout;
    assert_eq!(ib.poll_pulls(later)[0].1.after_seq, 1);
    // The re-asked pull is what the next PullResult answers.
    assert_eq!(
        ib.on_pull_result(C, PullResult::default()).0,
        Some(PullTag::Window)
    );
}

#[test]
fn catch_up_keeps_several_pages_in_flight_up_to_the_head() {
    let now = Instant::now();
    let mut ib = inbox(true);
    ib.restore(&ConversationRow {
        conversation: C.into(),
        epoch: 7,
        contiguous_seq: 0,
        app_acked_seq: 0,
        head_seq: 0,
    });
    ib.on_state(&state(1000, 7, 1));
    // 1,000 missed with pages of 100: the whole range in flight at once (the window holds 1,024).
    let afters: Vec<u64> = ib
        .poll_pulls(now)
        .iter()
        .map(|(_, p)| p.after_seq)
        .collect();
    assert_eq!(afters, (0..10).map(|i| i * 100).collect::<Vec<_>>());
    assert!(ib.poll_pulls(now).is_empty(), "all covered");
    // Answers in request order: each page is ready at once.
    for page in 0..10u64 {
        let result = PullResult {
            messages: (page * 100 + 1..=page * 100 + 100).map(wire).collect(),
            head_seq: 1000,
            has_more: page < 9,
            epoch: 7,
        };
        let (tag, arrived, _) = ib.on_pull_result(C, result);
        assert_eq!(tag, Some(PullTag::Window));
        assert_eq!(arrived.ready.len(), 100);
        assert!(
            ib.poll_pulls(now).is_empty(),
            "no pull repeats a page in flight"
        );
    }
    assert_eq!(ib.contiguous(C), Some(1000));
    assert_eq!(ib.pulls_in_flight(), 0);
}

#[test]
fn pipelining_respects_the_page_and_the_in_flight_limit() {
    let now = Instant::now();
    let mut ib = inbox(true);
    ib.set_pull_limits(10, 4);
    assert_eq!(ib.page(), 10);
    ib.on_state(&state(1000, 7, 1)); // recent window 50: starts at 950
    let pulls = ib.poll_pulls(now);
    assert_eq!(
        pulls
            .iter()
            .map(|(_, p)| (p.after_seq, p.limit))
            .collect::<Vec<_>>(),
        [(950, 10), (960, 10), (970, 10), (980, 10)]
    );
    assert!(ib.poll_pulls(now).is_empty(), "in-flight limit reached");
    let result = PullResult {
        messages: (951..=960).map(wire).collect(),
        head_seq: 1000,
        has_more: true,
        epoch: 7,
    };
    assert_eq!(ib.on_pull_result(C, result).1.ready.len(), 10);
    // One answer frees one slot: the next page after those in flight.
    let next: Vec<u64> = ib
        .poll_pulls(now)
        .iter()
        .map(|(_, p)| p.after_seq)
        .collect();
    assert_eq!(next, [990]);
    // A server that stops answering: after the pull timeout the window asks again from its position.
    let later = now + WindowConfig::default().pull_timeout;
    assert_eq!(ib.next_deadline(), Some(later));
    assert_eq!(ib.on_connection_lost(), Vec::<u64>::new());
    assert_eq!(ib.poll_pulls(later)[0].1.after_seq, 960);
}

/// Pages fit the announced frame size: with 4 KiB frames and ~300-byte messages a page holds about ten,
/// whatever larger `max_pull_page` the server allows; with the default frame size the page limit rules.
#[test]
fn pull_pages_are_sized_to_the_frame_size() {
    let mut inbox = Inbox::new(WindowConfig::default(), 50, true);
    inbox.set_pull_limits(100, 0);
    assert_eq!(inbox.page(), 100, "1 MiB frames: the page limit rules");
    inbox.set_max_frame_size(4096);
    // Before any page: the assumed 256-byte messages.
    assert_eq!(inbox.page(), (4096 / 4 * 3 / 256) as u32);
    let now = Instant::now();
    for round in 0..20u64 {
        inbox.pull_sent(C, round * 10, 10, PullTag::History(1), now);
        let messages = (1..=10)
            .map(|i| Message {
                body: Bytes::from(vec![b'x'; 300]),
                ..wire(round * 10 + i)
            })
            .collect();
        let result = PullResult {
            messages,
            head_seq: 1000,
            has_more: true,
            epoch: 1,
        };
        inbox.on_pull_result(C, result);
    }
    // 300-byte bodies plus ~45 bytes of names, id and fields: 3072 / ~345 = 8 or 9 per page.
    let page = inbox.page();
    assert!((8..=9).contains(&page), "page {page}");
}

/// Found by the `client_core` fuzz target: catch-up Pulls near the top of the seq range overflowed
/// (`after_seq + page`), a panic with overflow checks and wrapped-around Pulls without them.
#[test]
fn pulls_near_the_largest_seq_do_not_overflow() {
    let now = Instant::now();
    let mut ib = inbox(true);
    ib.restore(&ConversationRow {
        conversation: C.into(),
        epoch: 1,
        contiguous_seq: u64::MAX - 3,
        app_acked_seq: u64::MAX - 3,
        head_seq: u64::MAX,
    });
    assert!(
        ib.on_deliver(C, 1, msg(u64::MAX, 1)).ready.is_empty(),
        "gap"
    );
    let mut pulls = ib.poll_pulls(now);
    pulls.extend(ib.poll_pulls(now + std::time::Duration::from_secs(60)));
    assert!(!pulls.is_empty(), "the gap is pulled");
    for (_, pull) in pulls {
        assert!(pull.after_seq >= u64::MAX - 3, "no wrapped Pull: {pull:?}");
    }
}

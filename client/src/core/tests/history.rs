//! History requests that span many Pull pages: pipelined, to the limit or the end, also for
//! conversations the client does not track.

use super::*;

const OTHER: &str = "g:history";

/// Answers the history Pulls of `out` (on `conversation`'s stream) from a conversation of `head`
/// messages; returns how many were answered.
fn answer(h: &mut Harness, gen: u64, conversation: &str, out: &[Transmit], head: u64) -> usize {
    let asked: Vec<(u64, u32)> = out
        .iter()
        .filter_map(|t| match t {
            Transmit::Frame {
                target: Target::Conv(c),
                frame: Frame {
                    kind: Some(Kind::Pull(p)),
                },
                ..
            } if c == conversation => Some((p.after_seq, p.limit)),
            _ => None,
        })
        .collect();
    for &(after, limit) in &asked {
        let last = (after + u64::from(limit)).min(head);
        let result = frame::PullResult {
            messages: (after + 1..=last).map(|s| message(s, "bob")).collect(),
            head_seq: head,
            has_more: last < head,
            epoch: 1,
        };
        let stream = StreamRef::Conv {
            serial: 1,
            conversation: conversation.into(),
        };
        h.core
            .handle_frame(gen, stream, f(Kind::PullResult(result)), h.now);
    }
    asked.len()
}

fn request(
    h: &mut Harness,
    conversation: &str,
    limit: usize,
) -> oneshot::Receiver<Result<Vec<ReceivedMessage>, ClientError>> {
    request_after(h, conversation, 0, limit)
}

fn request_after(
    h: &mut Harness,
    conversation: &str,
    after_seq: u64,
    limit: usize,
) -> oneshot::Receiver<Result<Vec<ReceivedMessage>, ClientError>> {
    let (reply, rx) = oneshot::channel();
    h.core.handle_request(
        Request::History {
            conversation: conversation.into(),
            after_seq,
            limit,
            reply,
        },
        h.now,
    );
    rx
}

#[test]
fn history_of_an_untracked_conversation_pages_through_3000_messages_in_a_few_round_trips() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.synced(Vec::new());
    let mut rx = request(&mut h, OTHER, 5000);
    let mut out = h.wake(&mut vec![Vec::new()]);
    let mut round_trips = 0;
    while rx.try_recv().is_err() {
        round_trips += 1;
        assert!(round_trips < 20, "history never completed");
        assert!(
            answer(&mut h, gen, OTHER, &out, 3000) > 0,
            "no Pull in flight"
        );
        out = h.step();
    }
    // The first answer tells the head; then 8 pages of 100 per round trip: 1 + ceil(2900 / 800).
    assert!(round_trips <= 5, "{round_trips} round trips");
    // The pages were stored as they came.
    let stored: usize = h.commits.iter().map(|c| c.messages.len()).sum();
    assert!(stored >= 3000, "stored {stored}");
}

#[test]
fn history_stops_at_the_limit_and_returns_consecutive_messages() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.synced(Vec::new());
    let mut rx = request(&mut h, OTHER, 250);
    let mut out = h.wake(&mut vec![Vec::new()]);
    let page = loop {
        if let Ok(result) = rx.try_recv() {
            break result.expect("ok");
        }
        assert!(
            answer(&mut h, gen, OTHER, &out, 3000) > 0,
            "no Pull in flight"
        );
        out = h.step();
    };
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=250).collect::<Vec<_>>()
    );
}

#[test]
fn history_after_the_last_possible_seq_is_answered_from_the_store_without_overflow() {
    // Found by `client_core` (fuzz/regressions/client_core/history-after-u64-max): `after_seq + 1`
    // overflowed on an application's u64::MAX; and no Pull can ask for what follows it, so the
    // request must not wait for one.
    let mut h = Harness::new(settings(&[SERVER]));
    h.synced(Vec::new());
    let mut rx = request_after(&mut h, OTHER, u64::MAX, 5);
    let stored = ReceivedMessage::from_wire(OTHER, 1, message(7, "bob"));
    let out = h.wake(&mut vec![vec![stored]]);
    rx.try_recv().expect("answered at once").expect("ok");
    assert!(
        !out.iter().any(|t| matches!(
            t,
            Transmit::Frame {
                frame: Frame {
                    kind: Some(Kind::Pull(_))
                },
                ..
            }
        )),
        "nothing to pull after u64::MAX"
    );
}

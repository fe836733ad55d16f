//! Catch-up after a reconnect in a few round trips: Pulls in Hello's flight, then pipelined pages.

use super::*;

/// An inbox that tracks `conversations` (epoch 1), each stored and acknowledged up to `seq`.
fn tracking(conversations: &[&str], seq: u64) -> Inbox {
    let mut inbox = Inbox::new(WindowConfig::default(), 50, true);
    for conversation in conversations {
        inbox.restore(&crate::store::ConversationRow {
            conversation: (*conversation).into(),
            epoch: 1,
            contiguous_seq: seq,
            app_acked_seq: seq,
            head_seq: seq,
        });
    }
    inbox
}

/// Catch-up after a reconnect: the first flight carries Hello, Sync and a Pull of the next page of every
/// tracked conversation (Pull may precede Welcome, FERRY-HELLO-5); once Sync reports the head, the
/// remaining pages go out together (one more round trip), not page after page.
#[test]
fn catch_up_pulls_go_with_hello_and_the_rest_is_pipelined() {
    let mut h = Harness::with_inbox(settings(&[SERVER]), tracking(&[CONV], 10));
    let (gen, out) = h.establish(false);
    assert!(has_hello(&out));
    assert!(sync_id(&out).is_some(), "Sync with Hello");
    assert_eq!(
        pulls(&out),
        [10, 110, 210, 310],
        "the first pages with Hello, before Welcome: it saves the round trip of waiting for it"
    );
    let out = h.welcome(gen);
    assert!(pulls(&out).is_empty(), "Welcome asks for nothing twice");
    let sync = h.last_sync.expect("Sync");
    let mut head = state(1010);
    head.conversation_id = CONV.into();
    h.sync_result(gen, sync, vec![head], false);
    let out = h.step();
    // The probes cover 11..=410; the other six pages are asked at once.
    let rest: Vec<u64> = (4..10).map(|i| 10 + i * 100).collect();
    assert_eq!(pulls(&out), rest);
}

/// The first flight's pages are shared out: one conversation gets `PROBE_DEPTH` of them, ten get one
/// each (a probe past the head costs an empty answer, so the speculation stays small).
#[test]
fn the_first_flight_shares_its_pages_over_the_tracked_conversations() {
    let conversations: Vec<String> = (0..10).map(|i| format!("d:alice:user{i}")).collect();
    let ids: Vec<&str> = conversations.iter().map(String::as_str).collect();
    let mut h = Harness::with_inbox(settings(&[SERVER]), tracking(&ids, 5));
    let (_, out) = h.establish(false);
    let mut asked: Vec<(String, u64)> = frames(&out)
        .into_iter()
        .filter_map(|(target, kind)| match (target, kind) {
            (Target::Conv(c), Kind::Pull(p)) => Some((c.clone(), p.after_seq)),
            _ => None,
        })
        .collect();
    asked.sort();
    let expected: Vec<(String, u64)> = conversations.iter().map(|c| (c.clone(), 5)).collect();
    assert_eq!(asked, expected, "one page each");
}

/// A reconnect's Sync answer (token and heads) costs no commit of its own while the catch-up's Pulls
/// are in flight: it waits for the first page's commit and goes with it, so the page is not stored
/// behind an extra fsync. Without Pulls in flight it is committed at once, as before.
#[test]
fn the_sync_answer_is_committed_with_the_first_page_not_before_it() {
    let mut h = Harness::with_inbox(settings(&[SERVER]), tracking(&[CONV], 10));
    let (gen, out) = h.establish(false);
    assert_eq!(pulls(&out)[0], 10, "the probe Pulls are in flight");
    h.welcome(gen);
    let sync = h.last_sync.expect("Sync");
    h.sync_result(gen, sync, vec![state(12)], false);
    h.step();
    assert!(
        h.commits.iter().all(|c| c.sync_token.is_none()),
        "the token waits for the page: {:?}",
        h.commits
    );
    h.pull_result(gen, [11, 12], 12);
    h.step();
    let commit = h.commits.last().expect("the page's commit");
    assert_eq!(commit.messages.len(), 2);
    assert_eq!(commit.sync_token, Some(9), "the waiting token goes with it");
    let row = commit
        .conversations
        .iter()
        .find(|r| r.conversation == CONV)
        .expect("the conversation's row");
    assert_eq!((row.contiguous_seq, row.head_seq), (12, 12));
    let reported = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::Message(_)))
        .count();
    assert_eq!(reported, 2, "both messages reported with the commit");

    // The other probes answer empty pages (past the head): nothing in flight any more, and the next
    // token is committed by its own wake-up.
    for _ in 1..4 {
        h.pull_result(gen, [], 12);
    }
    h.step();
    let commits = h.commits.len();
    h.core.handle_frame(
        gen,
        control(),
        f(Kind::HeartbeatAck(frame::HeartbeatAck {
            sync_token: 11,
            ..Default::default()
        })),
        h.now,
    );
    h.step();
    assert_eq!(h.commits.len(), commits + 1);
    assert_eq!(h.commits.last().and_then(|c| c.sync_token), Some(11));
}

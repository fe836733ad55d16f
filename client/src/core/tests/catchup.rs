//! Catch-up after a reconnect in a few round trips: Pulls in Hello's flight, then pipelined pages.

use super::*;

/// Catch-up after a reconnect: the first flight carries Hello, Sync and a Pull of the next page of every
/// tracked conversation (Pull may precede Welcome, FERRY-HELLO-5); once Sync reports the head, the
/// remaining pages go out together (one more round trip), not page after page.
#[test]
fn catch_up_pulls_go_with_hello_and_the_rest_is_pipelined() {
    let mut inbox = Inbox::new(WindowConfig::default(), 50, true);
    inbox.restore(&crate::store::ConversationRow {
        conversation: CONV.into(),
        epoch: 1,
        contiguous_seq: 10,
        app_acked_seq: 10,
        head_seq: 10,
    });
    let mut h = Harness::with_inbox(settings(&[SERVER]), inbox);
    let (gen, out) = h.establish(false);
    assert!(has_hello(&out));
    assert!(sync_id(&out).is_some(), "Sync with Hello");
    assert_eq!(
        pulls(&out),
        [10],
        "the first page with Hello, before Welcome: it saves the round trip of waiting for it"
    );
    let out = h.welcome(gen);
    assert!(pulls(&out).is_empty(), "Welcome asks for nothing twice");
    let sync = h.last_sync.expect("Sync");
    let mut head = state(1010);
    head.conversation_id = CONV.into();
    h.sync_result(gen, sync, vec![head], false);
    let out = h.step();
    // The probe covers 11..=110; the other nine pages are asked at once.
    let rest: Vec<u64> = (1..10).map(|i| 10 + i * 100).collect();
    assert_eq!(pulls(&out), rest);
}

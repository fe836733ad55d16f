//! One test per rule of the session logic.

use super::*;

#[test]
fn sends_are_resent_with_the_same_id_after_a_reconnect() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.connect();
    let mut receipt = h.send("m1");
    assert_eq!(sends(&h.step()), ["m1"]);
    h.lose(gen);
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert!(sends(&out).is_empty());
    assert!(matches!(
        h.events.last(),
        Some(Event::Connection(ConnectionState::Disconnected { .. }))
    ));
    assert!(receipt.try_recv().is_err(), "the send is still pending");
    // The next attempt waits for the backoff; Hello and Sync go at once, no Send before Welcome (no
    // early data here)...
    let (gen, out) = h.establish(false);
    assert!(has_hello(&out));
    assert!(sync_id(&out).is_some());
    assert!(sends(&out).is_empty());
    // ...then the same client_msg_id again.
    let out = h.welcome(gen);
    assert_eq!(sends(&out), ["m1"], "resent with the same id");
    // The SendAck deletes the outbox entry and stores the message in one commit; then the receipt.
    h.commits.clear();
    h.send_ack(gen, "m1", 1);
    h.step();
    assert_eq!(h.commits.len(), 1);
    assert_eq!(h.commits[0].outbox_done, ["m1"]);
    assert_eq!(h.commits[0].messages.len(), 1);
    assert_eq!(receipt.try_recv().expect("resolved").expect("ok").seq, 1);
}

#[test]
fn an_own_message_is_stored_once_whether_ready_at_once_or_after_a_gap() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.synced(vec![state(1)]);
    h.deliver(gen, 1);
    let (_r1, _r2) = (h.send("m1"), h.send("m2"));
    h.step();
    h.commits.clear();
    // Ready at once: seq 2 follows the window's position.
    h.send_ack(gen, "m1", 2);
    h.step();
    // seq 4 is ours while bob's seq 3 is still missing: it waits in the window.
    h.send_ack(gen, "m2", 4);
    h.step();
    h.deliver(gen, 3);
    h.step();
    let stored: Vec<(u64, &str)> = h
        .commits
        .iter()
        .flat_map(|c| c.messages.iter())
        .map(|m| (m.seq, m.client_msg_id.as_str()))
        .collect();
    assert_eq!(stored, [(2, "m1"), (4, "m2"), (3, "bob-3")]);
    // Own messages are not reported as events; bob's are, in order.
    let reported: Vec<u64> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(reported, [1, 3]);
}

#[test]
fn rejected_early_data_is_replayed_over_1rtt() {
    let mut h = Harness::new(settings(&[SERVER]));
    let _receipt = h.send("m1");
    let (gen, out) = h.establish(true);
    // Early data: Hello, Sync and the Send ride in 0-RTT; no Connected event before the verdict.
    assert!(has_hello(&out));
    assert!(sync_id(&out).is_some());
    assert_eq!(sends(&out), ["m1"]);
    h.core.handle_zero_rtt(gen, false);
    let out = h.step();
    // A new connection to the same server (on the old one quinn would number streams from 0 again).
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    let reopen = out
        .iter()
        .find_map(|t| match t {
            Transmit::Dial { gen, endpoint } if endpoint == SERVER => Some(*gen),
            _ => None,
        })
        .expect("the session restarts on a new connection to the same server");
    assert!(reopen > gen);
    // Frames of the dead session are not written on the new one.
    let addr: SocketAddr = SERVER.parse().expect("address");
    assert!(!h.core.handle_established(gen, Ok((addr, true)), h.now));
    assert!(h.core.handle_established(reopen, Ok((addr, false)), h.now));
    let out = h.step();
    assert!(has_hello(&out));
    assert!(sync_id(&out).is_some(), "Sync again, with Hello");
    assert!(sends(&out).is_empty(), "1-RTT: no Send before Welcome");
    let out = h.welcome(reopen);
    assert_eq!(sends(&out), ["m1"], "the Send again, same id");
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Connection(ConnectionState::Connected {
            zero_rtt: false,
            ..
        })
    )));
}

#[test]
fn goaway_drains_in_flight_sends_then_tries_its_endpoints_first() {
    let mut h = Harness::new(settings(&[SERVER, "127.0.0.1:7701"]));
    let gen = h.connect();
    let _r1 = h.send("m1");
    assert_eq!(sends(&h.step()), ["m1"]);
    let goaway = f(Kind::GoAway(frame::GoAway {
        code: ErrorCode::SHUTTING_DOWN.0,
        reason: "upgrade".into(),
        endpoints: vec!["127.0.0.1:7799".into()],
    }));
    h.core.handle_frame(gen, control(), goaway, h.now);
    let _r2 = h.send("m2");
    let out = h.step();
    assert!(sends(&out).is_empty(), "nothing new while draining");
    assert!(!out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    // The last in-flight answer ends the drain: reconnect at once, to GoAway's endpoint.
    h.send_ack(gen, "m1", 1);
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert_eq!(h.core.poll_timeout(), Some(h.now), "no backoff");
    let (gen, endpoint) = h.next_dial();
    assert_eq!(endpoint, "127.0.0.1:7799");
    let addr: SocketAddr = endpoint.parse().expect("address");
    h.core.handle_established(gen, Ok((addr, false)), h.now);
    h.step();
    let out = h.welcome(gen);
    assert_eq!(sends(&out), ["m2"]);
    // Afterwards the rotation resumes, on another endpoint than the one just lost (which one is drawn
    // at random, so the clients of a dead node spread over the others).
    h.lose(gen);
    assert_ne!(h.next_dial().1, "127.0.0.1:7799");
}

#[test]
fn session_replaced_never_reconnects() {
    for by_goaway in [false, true] {
        let mut h = Harness::new(settings(&[SERVER]));
        let gen = h.connect();
        if by_goaway {
            let goaway = f(Kind::GoAway(frame::GoAway {
                code: ErrorCode::SESSION_REPLACED.0,
                ..Default::default()
            }));
            h.core.handle_frame(gen, control(), goaway, h.now);
        } else {
            let lost = LostReason {
                app_close: Some((ErrorCode::SESSION_REPLACED, "replaced".into())),
                description: "closed".into(),
            };
            h.core.handle_connection_lost(gen, lost, h.now);
        }
        assert!(h.core.is_stopped());
        for _ in 0..5 {
            h.advance(Duration::from_secs(60));
            let out = h.step();
            assert!(!out.iter().any(|t| matches!(t, Transmit::Dial { .. })));
        }
        let (state, _) = h.core.close();
        assert_eq!(state, Some(ConnectionState::Replaced));
    }
}

#[test]
fn gaps_and_heads_from_heartbeat_ack_and_sync_pull() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    h.welcome(gen);
    let sync = h.last_sync.expect("Sync with Hello");
    // Sync says the conversation has 2 messages: the tail is pulled.
    h.sync_result(gen, sync, vec![state(2)], false);
    assert_eq!(pulls(&h.step()), [0]);
    let result = frame::PullResult {
        messages: vec![message(1, "bob"), message(2, "bob")],
        head_seq: 2,
        has_more: false,
        epoch: 1,
    };
    h.on_conv(gen, Kind::PullResult(result));
    let out = h.step();
    assert!(pulls(&out).is_empty());
    assert!(frames(&out)
        .iter()
        .any(|(_, k)| matches!(k, Kind::Ack(a) if a.seq == 2)));
    // A gap: seq 4 without 3.
    h.deliver(gen, 4);
    assert_eq!(pulls(&h.step()), [2]);
    h.pull_result(gen, [3, 4], 4);
    h.step();
    // A lost tail revealed by a HeartbeatAck's heads.
    let ack = f(Kind::HeartbeatAck(frame::HeartbeatAck {
        changed: vec![state(6)],
        sync_token: 10,
        ..Default::default()
    }));
    h.core.handle_frame(gen, control(), ack, h.now);
    assert_eq!(pulls(&h.step()), [4]);
    assert_eq!(h.commits.last().and_then(|c| c.sync_token), Some(10));
    // The next ack brings the same token: nothing to commit for it (no store write per Heartbeat).
    let tokens = |h: &Harness| h.commits.iter().filter(|c| c.sync_token.is_some()).count();
    let before = tokens(&h);
    let ack = f(Kind::HeartbeatAck(frame::HeartbeatAck {
        sync_token: 10,
        ..Default::default()
    }));
    h.core.handle_frame(gen, control(), ack, h.now);
    h.step();
    assert_eq!(tokens(&h), before);
    let reported: Vec<u64> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(reported, [1, 2, 3, 4]);
}

#[test]
fn history_waits_for_the_sync_then_pulls_what_the_store_lacks() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    h.welcome(gen);
    let sync = h.last_sync.expect("Sync with Hello");
    let (reply, mut rx) = oneshot::channel();
    h.core.handle_request(
        Request::History {
            conversation: CONV.into(),
            after_seq: 0,
            limit: 10,
            reply,
        },
        h.now,
    );
    // While Sync runs the conversation may be unknown: no store read, no Pull yet.
    assert!(pulls(&h.step()).is_empty());
    assert!(h.core.history_reads.is_empty());
    assert_eq!(h.core.deferred_history.len(), 1);
    h.sync_result(gen, sync, vec![state(5)], false);
    // The store has nothing: Pull the page (and the window pulls its tail on its own).
    let out = h.wake(&mut vec![Vec::new()]);
    assert!(pulls(&out).contains(&0));
    assert!(rx.try_recv().is_err());
    // The window's tail pull went first (recent window 50 ⇒ after 0) and the history pull second;
    // answers come back in order on the stream.
    for _ in pulls(&out) {
        h.pull_result(gen, 1..=5, 5);
    }
    h.step();
    let page = rx.try_recv().expect("answered").expect("ok");
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

#[test]
fn history_fails_when_its_pull_loses_the_connection() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.synced(vec![state(5)]);
    let (reply, mut rx) = oneshot::channel();
    h.core.handle_request(
        Request::History {
            conversation: CONV.into(),
            after_seq: 0,
            limit: 3,
            reply,
        },
        h.now,
    );
    h.wake(&mut vec![Vec::new()]);
    h.lose(gen);
    h.step();
    assert!(matches!(rx.try_recv(), Ok(Err(ClientError::Disconnected))));
}

#[test]
fn too_many_inflight_waits_for_an_answer_to_an_earlier_send() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.connect();
    let _r1 = h.send("m1");
    let _r2 = h.send("m2");
    assert_eq!(sends(&h.step()), ["m1", "m2"]);
    let error = frame::Error {
        code: ErrorCode::TOO_MANY_INFLIGHT.0,
        client_msg_id: "m2".into(),
        retry_after_ms: 10,
        ..Default::default()
    };
    h.on_conv(gen, Kind::Error(error));
    h.step();
    for _ in 0..3 {
        h.advance(Duration::from_secs(1));
        assert!(sends(&h.step()).is_empty(), "waits for m1's answer");
    }
    h.send_ack(gen, "m1", 1);
    assert_eq!(sends(&h.step()), ["m2"]);
}

/// FERRY-FRAME-13: the server refused the conversation and reset the stream; its `Error` frame was
/// discarded by the reset. The Send is settled with the reset's code, not resent until it times out.
#[test]
fn a_reset_refusing_the_conversation_settles_its_sends_without_the_error_frame() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.connect();
    let mut receipt = h.send("m1");
    assert_eq!(sends(&h.step()), ["m1"]);
    h.core.handle_stream_ended(
        gen,
        conv_stream(),
        "reset by peer".into(),
        Some(ErrorCode::FORBIDDEN),
        h.now,
    );
    h.step();
    match receipt.try_recv().expect("settled") {
        Err(crate::error::SendError::Rejected { code, .. }) => {
            assert_eq!(code, ErrorCode::FORBIDDEN)
        }
        other => panic!("expected Rejected(FORBIDDEN), got {other:?}"),
    }
    h.advance(Duration::from_secs(5));
    assert!(sends(&h.step()).is_empty(), "nothing is resent");
}

#[test]
fn no_welcome_in_time_gives_the_session_up() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    h.advance(Duration::from_secs(5));
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert!(h.core.session(gen).is_none());
}

#[test]
fn datagrams_are_sent_only_after_welcome_and_never_in_early_data() {
    assert!(!datagrams_allowed(false, false, None));
    assert!(datagrams_allowed(true, false, None));
    // 0-RTT: not before Welcome, and not while the early data's fate is open.
    assert!(!datagrams_allowed(false, true, None));
    assert!(!datagrams_allowed(true, true, None));
    assert!(datagrams_allowed(true, true, Some(true)));
}

fn typing(conversation: &str) -> Frame {
    f(Kind::Typing(frame::Typing {
        conversation_id: conversation.into(),
        user_id: "bob".into(),
        device_id: "phone".into(),
        active: true,
    }))
}

#[test]
fn relayed_datagrams_count_only_after_welcome_and_for_known_conversations() {
    let known = |c: &str| c == "d:alice:bob";
    assert_eq!(
        datagram_event(typing("d:alice:bob"), true, known),
        Some(Event::Typing {
            conversation: "d:alice:bob".into(),
            user: "bob".into(),
            device: "phone".into(),
            active: true,
        })
    );
    assert_eq!(datagram_event(typing("d:alice:bob"), false, known), None);
    assert_eq!(datagram_event(typing("d:alice:eve"), true, known), None);
    let presence = |c: &str| {
        f(Kind::Presence(frame::Presence {
            conversation_id: c.into(),
            user_id: "bob".into(),
            status: 1,
        }))
    };
    assert!(matches!(
        datagram_event(presence("d:alice:bob"), true, known),
        Some(Event::Presence { status: 1, .. })
    ));
    assert_eq!(datagram_event(presence("g:00"), true, known), None);
    // Only Typing and Presence belong in datagrams.
    let heartbeat = f(Kind::Heartbeat(frame::Heartbeat { sync_token: 1 }));
    assert_eq!(datagram_event(heartbeat, true, |_| true), None);
}

#[test]
fn events_and_acks_wait_for_the_commit() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.synced(vec![state(0)]);
    h.deliver(gen, 1);
    assert!(h.core.poll_event().is_none(), "not before the commit");
    let early: Vec<Transmit> = std::iter::from_fn(|| h.core.poll_transmit(h.now)).collect();
    assert!(
        !frames(&early)
            .iter()
            .any(|(_, k)| matches!(k, Kind::Ack(_))),
        "no Ack for what is not stored"
    );
    let Some(StoreWork::Commit(commit)) = h.core.poll_commit() else {
        panic!("a commit")
    };
    assert_eq!(commit.messages.len(), 1);
    assert!(h.core.poll_commit().is_none());
    h.core.committed();
    assert!(matches!(h.core.poll_event(), Some(Event::Message(m)) if m.seq == 1));
    let out: Vec<Transmit> = std::iter::from_fn(|| h.core.poll_transmit(h.now)).collect();
    assert!(frames(&out)
        .iter()
        .any(|(_, k)| matches!(k, Kind::Ack(a) if a.seq == 1)));
}

#[test]
fn unanswered_heartbeats_reconnect_at_once() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.connect();
    let interval = Duration::from_millis(u64::from(
        ferry_protocol::limits::DEFAULT_HEARTBEAT_INTERVAL_MS,
    ));
    let heartbeats =
        |out: &[Transmit]| picked(out, |k| matches!(k, Kind::Heartbeat(_)).then_some(())).len();
    h.advance(interval);
    assert_eq!(heartbeats(&h.step()), 1);
    let ack = f(Kind::HeartbeatAck(frame::HeartbeatAck::default()));
    h.core.handle_frame(gen, control(), ack, h.now);
    h.advance(interval);
    assert_eq!(heartbeats(&h.step()), 1);
    h.advance(interval);
    assert_eq!(heartbeats(&h.step()), 1, "still alive after one interval");
    h.advance(interval);
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert!(matches!(
        h.events.last(),
        Some(Event::Connection(ConnectionState::Disconnected { reason })) if reason.contains("heartbeats")
    ));
    assert_eq!(h.core.poll_timeout(), Some(h.now), "no backoff");
}

#[test]
fn unauthenticated_refreshes_the_token_once_then_fails() {
    let mut s = settings(&[SERVER]);
    let refresher: crate::builder::TokenRefresher =
        std::sync::Arc::new(|| Box::pin(async { Ok("v1.fresh".to_string()) }));
    s.refresher = Some(refresher);
    let mut h = Harness::new(s);
    let (gen, _) = h.establish(false);
    let refused = || {
        f(Kind::Error(frame::Error {
            code: ErrorCode::UNAUTHENTICATED.0,
            message: "expired".into(),
            ..Default::default()
        }))
    };
    h.core.handle_frame(gen, control(), refused(), h.now);
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert!(out.iter().any(|t| matches!(t, Transmit::RefreshToken)));
    h.core.handle_token_refreshed(Ok("v1.fresh".into()), h.now);
    let (gen, out) = h.establish(false);
    let token = picked(&out, |k| match k {
        Kind::Hello(hello) => Some(hello.token.clone()),
        _ => None,
    });
    assert_eq!(token, ["v1.fresh"]);
    // Refused again before any Welcome: no second refresh.
    h.core.handle_frame(gen, control(), refused(), h.now);
    assert!(h.core.is_stopped());
    let (state, _) = h.core.close();
    assert!(matches!(state, Some(ConnectionState::AuthFailed { .. })));
}

/// Found by the client_core fuzz target: a SendAck on another conversation's stream settled the Send
/// and filed the own message under that stream's receive window and epoch, so a later answer could
/// report the same seq twice. A Send is answered on its own conversation's stream only.
#[test]
fn an_answer_on_another_conversations_stream_settles_nothing() {
    let mut h = Harness::new(settings(&[SERVER]));
    let gen = h.connect();
    let mut on_bob = h.send("m1");
    let mut on_carol = h.send_to("d:alice:carol", "m2");
    h.step();
    h.commits.clear();
    let carol_stream = |serial| StreamRef::Conv {
        serial,
        conversation: "d:alice:carol".into(),
    };
    for serial in 1..=2 {
        let ack = f(Kind::SendAck(frame::SendAck {
            client_msg_id: "m1".into(),
            seq: 7,
            ..Default::default()
        }));
        h.core.handle_frame(gen, carol_stream(serial), ack, h.now);
        let error = f(Kind::Error(frame::Error {
            code: ErrorCode::FORBIDDEN.0,
            client_msg_id: "m1".into(),
            ..Default::default()
        }));
        h.core.handle_frame(gen, carol_stream(serial), error, h.now);
    }
    h.step();
    assert!(h
        .commits
        .iter()
        .all(|c| c.messages.is_empty() && c.outbox_done.is_empty()));
    assert!(on_bob.try_recv().is_err(), "m1 is still pending");
    // On its own stream it settles.
    h.send_ack(gen, "m1", 7);
    h.step();
    assert_eq!(on_bob.try_recv().expect("resolved").expect("ok").seq, 7);
    assert!(on_carol.try_recv().is_err(), "m2 is still pending");
}

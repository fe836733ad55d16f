//! Groups, membership rules, read cursors, typing datagrams and announced limits, on the wire.

use std::time::Duration;

use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, MarkRead, MembershipAction, Typing};
use ferry_protocol::{ids, ErrorCode, Frame};
use ferry_tests::groups::sync_all;
use ferry_tests::TestServer;

#[tokio::test]
async fn membership_rules_and_visibility() {
    let server = TestServer::start().await;
    let mut owner = server.session("owner", "d").await;
    let mut member = server.session("member", "d").await;
    let (group, seq) = owner
        .create_group("team", &["member"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, 1);

    // Only the owner adds; adding a current member is invalid; direct conversations have no admin.
    assert_eq!(
        member.add_member(&group, "late").await.unwrap(),
        Err(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        owner.add_member(&group, "member").await.unwrap(),
        Err(ErrorCode::INVALID_ARGUMENT)
    );
    let direct = ids::direct_conversation_id("owner", "member").unwrap();
    assert_eq!(
        owner.add_member(&direct, "late").await.unwrap(),
        Err(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        owner
            .add_member(&ids::group_conversation_id(7), "x")
            .await
            .unwrap(),
        Err(ErrorCode::NOT_FOUND)
    );
    assert_eq!(
        owner.add_member(&group, "bad user").await.unwrap(),
        Err(ErrorCode::INVALID_ARGUMENT)
    );

    let mut stream = owner.open(&group).await.unwrap();
    assert_eq!(
        stream
            .send_and_ack("before-late", b"early history")
            .await
            .unwrap()
            .seq,
        2
    );
    let (_, added_at) = owner.add_member(&group, "late").await.unwrap().unwrap();
    assert_eq!(added_at, 3);

    // The late joiner sees from their ADDED message on, not the earlier history.
    let late = server.session("late", "d").await;
    let mut late_stream = late.open(&group).await.unwrap();
    let page = late_stream.pull(0, 100).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![3]);
    let change = page.messages[0].membership.as_ref().unwrap();
    assert_eq!(change.action(), MembershipAction::Added);
    assert_eq!(change.users, vec!["late".to_string()]);

    // A member (not owner) may leave; afterwards they read up to their removal and may not send.
    let (_, left_at) = member
        .remove_member(&group, "member")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left_at, 4);
    stream
        .send_and_ack("after-leave", b"not for member")
        .await
        .unwrap(); // seq 5
    let mut gone = member.open(&group).await.unwrap();
    let page = gone.pull(0, 100).await.unwrap();
    assert_eq!(page.head_seq, 4, "visible head stops at the removal");
    assert_eq!(page.messages.last().unwrap().seq, 4);
    assert!(!page.has_more);
    gone.send_message("not-allowed", b"x").await.unwrap();
    match gone.next_non_deliver("Error").await.unwrap().kind {
        Some(Kind::Error(e)) => assert_eq!(ErrorCode(e.code), ErrorCode::FORBIDDEN),
        other => panic!("expected FORBIDDEN, got {other:?}"),
    }
    let states = sync_all(&mut member).await;
    let state = states.iter().find(|c| c.conversation_id == group).unwrap();
    assert!(!state.member);
    assert_eq!(state.head_seq, 4);

    // Only the owner removes others.
    let mut late = late;
    assert_eq!(
        late.remove_member(&group, "owner").await.unwrap(),
        Err(ErrorCode::FORBIDDEN)
    );
    assert!(owner.remove_member(&group, "late").await.unwrap().is_ok());
}

#[tokio::test]
async fn read_cursors_give_unread_counts_that_never_go_negative() {
    let server = TestServer::start().await;
    let alice = server.session("alice", "d").await;
    let mut bob = server.session("bob", "d").await;
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    let mut a = alice.open(&conv).await.unwrap();
    for i in 0..5 {
        a.send_and_ack(&format!("m{i}"), b"x").await.unwrap();
    }
    let state = |states: Vec<ferry_protocol::frame::ConversationState>| {
        states
            .into_iter()
            .find(|c| c.conversation_id == conv)
            .unwrap()
    };
    let s = state(sync_all(&mut bob).await);
    assert_eq!((s.head_seq, s.read_seq, s.unread_count), (5, 0, 5));

    bob.send_control(frame(Kind::MarkRead(MarkRead {
        conversation_id: conv.clone(),
        seq: 3,
        request_id: 0,
    })))
    .await
    .unwrap();
    let s = state(sync_all(&mut bob).await);
    assert_eq!((s.read_seq, s.unread_count), (3, 2));
    // Beyond the head is clamped; backwards is ignored.
    bob.send_control(frame(Kind::MarkRead(MarkRead {
        conversation_id: conv.clone(),
        seq: 99,
        request_id: 0,
    })))
    .await
    .unwrap();
    bob.send_control(frame(Kind::MarkRead(MarkRead {
        conversation_id: conv.clone(),
        seq: 1,
        request_id: 0,
    })))
    .await
    .unwrap();
    let s = state(sync_all(&mut bob).await);
    assert_eq!((s.read_seq, s.unread_count), (5, 0));
    // The sender's own messages do not count as unread for them.
    let mut alice = alice;
    let s = state(sync_all(&mut alice).await);
    assert_eq!(s.unread_count, 0);
    // MarkRead on a conversation one is not in is refused without closing anything.
    bob.send_control(frame(Kind::MarkRead(MarkRead {
        conversation_id: ids::direct_conversation_id("carol", "dave").unwrap(),
        seq: 1,
        request_id: 0,
    })))
    .await
    .unwrap();
    match bob.next_control("Error").await.unwrap().kind {
        Some(Kind::Error(e)) => assert_eq!(ErrorCode(e.code), ErrorCode::FORBIDDEN),
        other => panic!("expected FORBIDDEN, got {other:?}"),
    }
    assert_eq!(state(sync_all(&mut bob).await).read_seq, 5);
}

#[tokio::test]
async fn typing_datagrams_are_relayed_to_other_members_and_never_stored() {
    let server = TestServer::start().await;
    let alice = server.session("alice", "phone").await;
    let bob = server.session("bob", "phone").await;
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    // The conversation exists once someone opened it.
    alice
        .open(&conv)
        .await
        .unwrap()
        .send_and_ack("first", b"hi")
        .await
        .unwrap();
    let typing = frame(Kind::Typing(Typing {
        conversation_id: conv.clone(),
        user_id: "spoofed".into(),
        device_id: String::new(),
        active: true,
    }));
    // Datagrams are unreliable: send a few until one arrives (bounded).
    let mut received: Option<Frame> = None;
    for _ in 0..20 {
        alice
            .connection
            .send_datagram(codec::encode_datagram(&typing))
            .unwrap();
        if let Ok(Ok(bytes)) =
            tokio::time::timeout(Duration::from_millis(200), bob.connection.read_datagram()).await
        {
            received = Some(codec::decode_datagram(&bytes, 1 << 20).unwrap());
            break;
        }
    }
    match received.expect("typing relayed").kind {
        Some(Kind::Typing(t)) => {
            assert_eq!(t.conversation_id, conv);
            assert_eq!(t.user_id, "alice", "the server fills in the real sender");
            assert_eq!(t.device_id, "phone");
            assert!(t.active);
        }
        other => panic!("expected Typing, got {other:?}"),
    }
    let mut stream = bob.open(&conv).await.unwrap();
    assert_eq!(
        stream.pull(0, 100).await.unwrap().head_seq,
        1,
        "typing is never stored"
    );
}

#[tokio::test]
async fn welcome_announces_the_limits() {
    let server = TestServer::start_with(|s| s.limits.max_inflight_sends = 77).await;
    let session = server.session("alice", "phone").await;
    let w = &session.welcome;
    assert_eq!(w.user_id, "alice");
    assert!(w.heartbeat_interval_ms > 0);
    assert!(w.store_epoch != 0);
    let limits = w.limits.unwrap();
    assert_eq!(limits.max_inflight_sends, 77);
    assert_eq!(limits.max_frame_size, 1 << 20);
    assert!(limits.recent_window > 0 && limits.max_pull_page > 0 && limits.idle_timeout_ms > 0);
}

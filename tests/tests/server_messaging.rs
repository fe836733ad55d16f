//! The single-node server's messaging behaviour, observed on the wire (real QUIC on loopback).

use std::collections::BTreeSet;

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, Heartbeat, Message, Sync};
use ferry_protocol::ids;
use ferry_tests::driver::ConvStream;
use ferry_tests::groups::create_group;
use ferry_tests::TestServer;

fn direct(a: &str, b: &str) -> String {
    ids::direct_conversation_id(a, b).unwrap()
}

/// Reads until `count` Delivers arrived on the stream in total; returns them in arrival order.
async fn read_delivers(stream: &mut ConvStream, count: usize) -> Vec<Message> {
    stream.wait_delivered(count).await.unwrap().to_vec()
}

#[tokio::test]
async fn two_users_exchange_messages() {
    let server = TestServer::start().await;
    let alice = server.session("alice", "phone").await;
    let bob = server.session("bob", "phone").await;
    let conv = direct("alice", "bob");

    let mut a = alice.open(&conv).await.unwrap();
    for i in 1..=10u64 {
        let ack = a
            .send_and_ack(&format!("a{i}"), format!("hi {i}").as_bytes())
            .await
            .unwrap();
        assert_eq!(ack.seq, i);
        assert!(!ack.duplicate);
        assert!(ack.server_time_ms > 0);
    }
    let mut b = bob.accept().await.unwrap();
    assert_eq!(b.conversation, conv);
    let got = read_delivers(&mut b, 10).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(got[0].sender, "alice");
    assert_eq!(got[0].sender_device, "phone");
    assert_eq!(&got[9].body[..], b"hi 10");
    b.ack(10).await.unwrap();

    // Bob answers on the stream the server opened; Alice gets it on hers.
    let ack = b.send_and_ack("b1", b"hello alice").await.unwrap();
    assert_eq!(ack.seq, 11);
    let got = read_delivers(&mut a, 1).await;
    assert_eq!(got[0].seq, 11);
    assert_eq!(got[0].sender, "bob");
}

#[tokio::test]
async fn group_of_three_users_with_two_devices_each_gets_every_message_once_in_order() {
    let server = TestServer::start().await;
    let users = ["alice", "bob", "carol"];
    let mut sessions = Vec::new();
    for user in users {
        for device in ["phone", "laptop"] {
            sessions.push((user, device, server.session(user, device).await));
        }
    }
    let group = create_group(&mut sessions[0].2, "trio", &["bob", "carol"]).await;

    // Every device, the creator's included, gets the CREATED system message on a server-opened stream.
    let mut streams = Vec::new();
    for (_, _, session) in &sessions {
        let mut stream = session.accept().await.unwrap();
        assert_eq!(stream.conversation, group);
        let created = read_delivers(&mut stream, 1).await;
        assert_eq!(created[0].seq, 1);
        assert!(created[0].membership.is_some());
        streams.push(stream);
    }

    // Each device sends 5 messages, one device after another.
    let mut sent_by: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); sessions.len()];
    for (i, stream) in streams.iter_mut().enumerate() {
        for n in 0..5 {
            let ack = stream
                .send_and_ack(&format!("d{i}-{n}"), b"x")
                .await
                .unwrap();
            sent_by[i].insert(ack.seq);
        }
    }
    let all: BTreeSet<u64> = sent_by.iter().flatten().copied().collect();
    assert_eq!(all, (2..=31).collect());

    // Every device gets every message except its own, exactly once and in seq order (the CREATED
    // message included). Its own messages it knows from the SendAcks: the sending device gets no Deliver.
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut expected: Vec<u64> = all.difference(&sent_by[i]).copied().collect();
        expected.insert(0, 1);
        let got: Vec<u64> = read_delivers(stream, expected.len())
            .await
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(got, expected, "device {i}");
    }
}

#[tokio::test]
async fn retry_with_same_client_msg_id_returns_original_seq_and_stores_once() {
    let server = TestServer::start().await;
    let alice = server.session("alice", "phone").await;
    let mut a = alice.open(&direct("alice", "bob")).await.unwrap();
    let first = a.send_and_ack("same-id", b"one").await.unwrap();
    let other = a.send_and_ack("other-id", b"two").await.unwrap();
    let retry = a.send_and_ack("same-id", b"one").await.unwrap();
    assert_eq!((first.seq, first.duplicate), (1, false));
    assert_eq!(other.seq, 2);
    assert_eq!((retry.seq, retry.duplicate), (1, true));
    assert_eq!(retry.server_time_ms, first.server_time_ms);

    // A retry on a new connection (as after a reconnect) is a duplicate too.
    let again = server.session("alice", "phone").await;
    let mut a2 = again.open(&direct("alice", "bob")).await.unwrap();
    let retry = a2.send_and_ack("same-id", b"one").await.unwrap();
    assert_eq!((retry.seq, retry.duplicate), (1, true));

    let page = a2.pull(0, 100).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(page.head_seq, 2);
}

#[tokio::test]
async fn pull_pages_through_a_thousand_messages() {
    let server = TestServer::start().await;
    let alice = server.session("alice", "phone").await;
    let conv = direct("alice", "bob");
    let mut a = alice.open(&conv).await.unwrap();
    // Pipelined: all Sends first, then the acks (bounded by max_inflight_sends = 256 per connection,
    // so send in windows of 200).
    for window in 0..5 {
        for i in 0..200 {
            a.send_message(&format!("m{}", window * 200 + i), &[7u8; 256])
                .await
                .unwrap();
        }
        for i in 0..200u64 {
            let ack = a.expect_send_ack().await.unwrap();
            assert_eq!(ack.seq, window * 200 + i + 1, "acks come in send order");
        }
    }
    let bob = server.session("bob", "laptop").await;
    let mut b = bob.open(&conv).await.unwrap();
    let (mut after, mut pages, mut seen) = (0, 0, Vec::new());
    loop {
        let page = b.pull(after, 100).await.unwrap();
        pages += 1;
        assert_eq!(page.head_seq, 1000);
        assert!(page.epoch != 0);
        seen.extend(page.messages.iter().map(|m| m.seq));
        after = page.messages.last().map_or(after, |m| m.seq);
        if !page.has_more {
            break;
        }
        assert!(pages < 20, "paging terminates");
    }
    assert_eq!(pages, 10);
    assert_eq!(seen, (1..=1000).collect::<Vec<_>>());
    // A limit above the maximum page is clamped, not refused.
    let page = b.pull(0, 10_000).await.unwrap();
    assert_eq!(page.messages.len(), 100);
}

#[tokio::test]
async fn sync_after_being_offline_lists_exactly_the_changed_conversations() {
    let server = TestServer::start().await;
    let mut alice = server.session("alice", "phone").await;
    let quiet = create_group(&mut alice, "quiet", &["bob"]).await;
    let busy = create_group(&mut alice, "busy", &["bob"]).await;

    let mut bob = server.session("bob", "phone").await;
    let request_id = bob.request_id();
    let reply = bob
        .request(frame(Kind::Sync(Sync {
            request_id,
            since_token: 0,
            limit: 0,
        })))
        .await
        .unwrap();
    let Some(Kind::SyncResult(first)) = reply.kind else {
        panic!("expected SyncResult: {reply:?}")
    };
    let names: BTreeSet<_> = first
        .conversations
        .iter()
        .map(|c| c.conversation_id.clone())
        .collect();
    assert_eq!(names, [quiet.clone(), busy.clone()].into_iter().collect());
    let token = first.next_token;
    bob.close();

    // While Bob is offline: messages in `busy` and in the direct conversation, nothing in `quiet`.
    let direct_conv = direct("alice", "bob");
    alice
        .open(&busy)
        .await
        .unwrap()
        .send_and_ack("g1", b"x")
        .await
        .unwrap();
    let mut d = alice.open(&direct_conv).await.unwrap();
    d.send_and_ack("d1", b"y").await.unwrap();
    d.send_and_ack("d2", b"z").await.unwrap();

    let mut bob = server.session("bob", "phone").await;
    let request_id = bob.request_id();
    let reply = bob
        .request(frame(Kind::Sync(Sync {
            request_id,
            since_token: token,
            limit: 0,
        })))
        .await
        .unwrap();
    let Some(Kind::SyncResult(changed)) = reply.kind else {
        panic!("expected SyncResult: {reply:?}")
    };
    assert_eq!(changed.request_id, request_id);
    let by_id: std::collections::BTreeMap<_, _> = changed
        .conversations
        .iter()
        .map(|c| (c.conversation_id.clone(), c.clone()))
        .collect();
    assert_eq!(
        by_id.keys().cloned().collect::<BTreeSet<_>>(),
        [busy.clone(), direct_conv.clone()].into_iter().collect()
    );
    assert_eq!(by_id[&busy].head_seq, 2);
    assert_eq!(by_id[&direct_conv].head_seq, 2);
    assert_eq!(by_id[&direct_conv].unread_count, 2);
    assert!(!changed.has_more);

    // Heartbeats carry the same heads, so a lost last message is noticed without a new Send.
    let reply = bob
        .request(frame(Kind::Heartbeat(Heartbeat { sync_token: token })))
        .await
        .unwrap();
    let Some(Kind::HeartbeatAck(hb)) = reply.kind else {
        panic!("expected HeartbeatAck: {reply:?}")
    };
    assert_eq!(hb.changed.len(), 2);
    assert_eq!(hb.sync_token, changed.next_token);

    // Nothing changed since the new token.
    let reply = bob
        .request(frame(Kind::Heartbeat(Heartbeat {
            sync_token: changed.next_token,
        })))
        .await
        .unwrap();
    let Some(Kind::HeartbeatAck(hb)) = reply.kind else {
        panic!("expected HeartbeatAck: {reply:?}")
    };
    assert!(hb.changed.is_empty());
}

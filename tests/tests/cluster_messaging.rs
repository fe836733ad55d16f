//! Cluster mode: several ferry-server nodes on one Redis, and on a 3-master Redis Cluster, behave for
//! every client like one node — same guarantees, across nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry_client::ClientBuilder;
use ferry_interop::driver::Session;
use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, Message};
use ferry_protocol::{ids, ErrorCode};
use ferry_server::config::LoginPolicy;
use ferry_tests::cluster::{Backend, TestCluster};
use ferry_tests::{collect_messages as collect, wait_until};

/// Upper bound for any single wait (a loaded 2-core machine is slow, not broken).
const WAIT: Duration = Duration::from_secs(30);

fn direct(a: &str, b: &str) -> String {
    ids::direct_conversation_id(a, b).unwrap()
}

async fn session(cluster: &TestCluster, node: usize, user: &str, device: &str) -> Session {
    cluster.nodes[node]
        .target
        .session(&cluster.token(user, device), device)
        .await
        .unwrap_or_else(|e| panic!("session {user}/{device} on node {node}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_nodes_converse() {
    let cluster = TestCluster::start(Backend::single(), 2, |_| {}).await;
    let alice = session(&cluster, 0, "alice", "phone").await;
    let bob = session(&cluster, 1, "bob", "phone").await;
    let conv = direct("alice", "bob");
    let mut a = alice.open(&conv).await.unwrap();
    for i in 1..=20u64 {
        let ack = a.send_and_ack(&format!("a{i}"), b"hi").await.unwrap();
        assert_eq!(ack.seq, i);
    }
    // Bob's node learns of them through the bus and opens a stream to deliver.
    let mut b = bob.accept().await.unwrap();
    let got: Vec<u64> = b
        .wait_delivered(20)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(got, (1..=20).collect::<Vec<_>>());
    // And back: bob's answer, stored through node 2, reaches alice on node 1.
    assert_eq!(b.send_and_ack("b1", b"hello").await.unwrap().seq, 21);
    let back = a.wait_delivered(1).await.unwrap();
    assert_eq!((back[0].seq, back[0].sender.as_str()), (21, "bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_through_another_node_is_a_duplicate() {
    let cluster = TestCluster::start(Backend::single(), 2, |_| {}).await;
    let conv = direct("alice", "bob");
    let first = session(&cluster, 0, "alice", "phone").await;
    let mut s = first.open(&conv).await.unwrap();
    let ack = s.send_and_ack("retry-1", b"once").await.unwrap();
    assert!(!ack.duplicate);
    first.close();
    let again = session(&cluster, 1, "alice", "phone").await;
    let mut s = again.open(&conv).await.unwrap();
    let dup = s.send_and_ack("retry-1", b"once").await.unwrap();
    assert!(
        dup.duplicate,
        "the retry through node 2 is answered as a duplicate"
    );
    assert_eq!(dup.seq, ack.seq);
    let page = s.pull(0, 100).await.unwrap();
    assert_eq!(page.messages.len(), 1, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_policy_holds_across_nodes() {
    let cluster = TestCluster::start(Backend::single(), 2, |s| {
        s.login_policy = LoginPolicy::Single;
    })
    .await;
    let mut phone = session(&cluster, 0, "carol", "phone").await;
    // A login of another device on the other node replaces the phone's session there.
    let _laptop = session(&cluster, 1, "carol", "laptop").await;
    let go_away = tokio::time::timeout(WAIT, phone.next_control("GoAway"))
        .await
        .expect("the replaced session hears of it");
    match go_away {
        Ok(f) => match f.kind {
            Some(Kind::GoAway(g)) => assert_eq!(g.code, ErrorCode::SESSION_REPLACED.0),
            other => panic!("expected GoAway, got {other:?}"),
        },
        Err(e) => assert_eq!(e.wire_code(), Some(ErrorCode::SESSION_REPLACED)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_nodes() {
    let cluster = TestCluster::start(Backend::single(), 2, |_| {}).await;
    let conv = direct("dave", "erin");
    let dave = session(&cluster, 0, "dave", "phone").await;
    let erin = session(&cluster, 1, "erin", "phone").await;
    // The conversation exists once a stream was opened on it.
    let mut d = dave.open(&conv).await.unwrap();
    d.send_and_ack("d1", b"hi").await.unwrap();
    let typing = frame(Kind::Typing(ferry_protocol::frame::Typing {
        conversation_id: conv.clone(),
        active: true,
        ..Default::default()
    }));
    let bytes = ferry_protocol::codec::encode_datagram(&typing);
    // Datagrams are unreliable: send a few until one arrives (bounded).
    let mut got = None;
    for _ in 0..20 {
        dave.connection.send_datagram(bytes.clone()).unwrap();
        if let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_millis(250), erin.connection.read_datagram()).await
        {
            got = Some(d);
            break;
        }
    }
    let got = got.expect("a typing signal crossed the nodes");
    let decoded = ferry_protocol::codec::decode_datagram(&got, 1 << 20).unwrap();
    assert!(matches!(decoded.kind, Some(Kind::Typing(t)) if t.conversation_id == conv && t.active));
}

/// 3 users × 2 devices spread over the nodes, all in one group with concurrent senders: every device
/// gets every message exactly once, in seq order, with no gaps.
async fn group_exactly_once_in_order(backend: Backend, nodes: usize) {
    const PER_SENDER: usize = 40;
    let cluster = TestCluster::start(backend, nodes, |s| {
        s.heartbeat_interval_ms = 500;
        s.limits.send_rate_per_sec = 100_000;
        s.limits.send_burst = 100_000;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let endpoints = cluster.endpoints();
    let devices = [
        ("ann", "phone"),
        ("ann", "laptop"),
        ("ben", "phone"),
        ("ben", "laptop"),
        ("cat", "phone"),
        ("cat", "laptop"),
    ];
    let mut clients = Vec::new();
    for (i, (user, device)) in devices.iter().enumerate() {
        let (client, events) = ClientBuilder::new()
            .endpoint(endpoints[i % nodes].clone())
            .ca_file(cluster.ca())
            .token(cluster.token(user, device))
            .device_id(*device)
            .store_path(dir.path().join(format!("{user}-{device}.sqlite3")))
            .build()
            .await
            .expect("client");
        clients.push((user, device, client, collect(events)));
    }
    let group = clients[0]
        .2
        .create_group("trio", &["ben".to_string(), "cat".to_string()])
        .await
        .expect("group created");
    // Each device must know the group (its CREATED message) before the bulk starts.
    for (_, _, _, seen) in &clients[1..] {
        assert!(wait_until(WAIT, || !seen.lock().unwrap().is_empty()).await);
    }
    // One phone per user sends concurrently, pipelined.
    let mut receipts = Vec::new();
    for (user, device, client, _) in clients.iter().filter(|c| *c.1 == "phone") {
        for i in 0..PER_SENDER {
            let body = format!("{user}/{device}/{i}");
            receipts.push(client.send(group.as_str(), body).await.unwrap());
        }
    }
    let mut acked = BTreeSet::new();
    for r in receipts {
        let stored = tokio::time::timeout(WAIT, r)
            .await
            .expect("receipt")
            .expect("stored");
        assert!(acked.insert(stored.seq), "seq {} acked twice", stored.seq);
    }
    let total = 1 + 3 * PER_SENDER as u64; // CREATED + the bulk
    assert_eq!(acked, (2..=total).collect::<BTreeSet<_>>());
    for (user, device, _, seen) in &clients {
        // Devices do not report their own sends as messages (their receipts cover them); the group's
        // CREATED system message is reported to every device, the creator's included.
        let own = if *device == &"phone" { PER_SENDER } else { 0 };
        let want = total as usize - own;
        let done = wait_until(WAIT, || seen.lock().unwrap().len() >= want).await;
        let got = seen.lock().unwrap().clone();
        assert!(done, "{user}/{device}: {} of {want} messages", got.len());
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seqs, sorted, "{user}/{device}: in order, no duplicates");
        let mut by_sender: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &got {
            *by_sender.entry(m.sender.as_str()).or_default() += 1;
        }
        assert_eq!(got.len(), want, "{user}/{device}: {by_sender:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_over_three_nodes_on_one_redis() {
    group_exactly_once_in_order(Backend::single(), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_over_two_nodes_on_a_redis_cluster() {
    group_exactly_once_in_order(Backend::cluster(), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_node_id_is_refused_and_named() {
    let cluster = TestCluster::start(Backend::single(), 1, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    ferry_tests::cluster::copy_identity(&cluster.settings[0].data_dir, dir.path());
    let mut twin = ferry_tests::test_settings(dir.path());
    twin.node_id = "n1".into();
    twin.cluster = cluster.settings[0].cluster.clone();
    let err = match ferry_server::start(twin).await {
        Ok(_) => panic!("a second live n1 must not start"),
        Err(e) => e,
    };
    match err.downcast_ref::<ferry_cluster::ClusterError>() {
        Some(ferry_cluster::ClusterError::NodeConflict { id, quic, .. }) => {
            assert_eq!(id, "n1");
            assert_eq!(quic, &cluster.nodes[0].handle.local_addr().to_string());
        }
        other => panic!("expected a node conflict, got {other:?} ({err:#})"),
    }
}

/// A Deliver published to the other node is lost (the test hook drops the fan-out of one message):
/// the recipient there recovers it from heartbeat heads and Pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cross_node_publication_is_healed_by_heads_and_pull() {
    let cluster = TestCluster::start(Backend::single(), 2, |s| s.heartbeat_interval_ms = 300).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoints = cluster.endpoints();
    let build = |user: &str, node: usize| {
        ClientBuilder::new()
            .endpoint(endpoints[node].clone())
            .ca_file(cluster.ca())
            .token(cluster.token(user, "phone"))
            .device_id("phone")
            .store_path(dir.path().join(format!("{user}.sqlite3")))
    };
    let (alice, _) = build("alice", 0).build().await.unwrap();
    let (_bob, bob_events) = build("bob", 1).build().await.unwrap();
    let bob_seen = collect(bob_events);
    let conv = direct("alice", "bob");
    let first = alice
        .send(conv.as_str(), "one")
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(wait_until(WAIT, || bob_seen.lock().unwrap().len() == 1).await);
    // The last message's fan-out is dropped on node 1: no Deliver reaches node 2 for it.
    cluster.nodes[0]
        .handle
        .hooks()
        .set_drop_delivery(Some(Box::new(|_conv: &str, m: &Message| {
            &m.body[..] == b"two"
        })));
    let last = alice
        .send(conv.as_str(), "two")
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(last.seq, first.seq + 1);
    assert!(
        wait_until(WAIT, || bob_seen.lock().unwrap().len() == 2).await,
        "the lost last message was recovered"
    );
    let seqs: Vec<u64> = bob_seen.lock().unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![first.seq, last.seq]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_of_a_direct_conversation_redis_lost_restores_it_in_a_new_epoch() {
    // After a FLUSHALL, a Pull may reach the server before any Send re-creates the conversation.
    // NOT_FOUND there would make the client refuse its pending Sends for good (an Error without
    // client_msg_id and a non-retryable code refuses the conversation), so the Pull re-creates it.
    let cluster = TestCluster::start(Backend::single(), 1, |_| {}).await;
    let alice = session(&cluster, 0, "alice", "phone").await;
    let conv = direct("alice", "bob");
    let mut a = alice.open(&conv).await.unwrap();
    a.send_and_ack("before", b"hi").await.unwrap();
    let before = a.pull(0, 100).await.unwrap();
    assert_eq!(before.messages.len(), 1);
    let Backend::Single(redis) = &cluster.backend else {
        unreachable!("one Redis")
    };
    tokio::task::block_in_place(|| redis.flushall());
    let after = a.pull(0, 100).await.expect("a page, not a refusal");
    assert!(after.messages.is_empty(), "{after:?}");
    assert_ne!(after.epoch, before.epoch, "the lost history is a new epoch");
    // And the stream goes on: the next Send is stored in that epoch.
    assert_eq!(a.send_and_ack("after", b"hi").await.unwrap().seq, 1);
}

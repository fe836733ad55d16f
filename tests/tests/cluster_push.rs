//! Offline push in cluster mode (spec section 18, FERRY-PUSH-4): "offline" means no session on any node.
//! Two nodes on a real redis-server and a real local HTTP receiver: a device registered through node 1
//! and offline everywhere gets exactly one POST for a message stored through node 2; once it is online
//! on node 2, a message stored through node 1 gets none.

#[path = "server_push/receiver.rs"]
mod receiver;

use std::time::Duration;

use ferry_interop::driver::Session;
use ferry_protocol::frame::PushPolicy;
use ferry_protocol::ids;
use ferry_tests::cluster::{Backend, TestCluster};
use ferry_tests::wait_until;
use receiver::Receiver;

const WAIT: Duration = Duration::from_secs(30);
const WINDOW_MS: u32 = 300;

async fn session(cluster: &TestCluster, node: usize, user: &str, device: &str) -> Session {
    cluster.nodes[node]
        .target
        .session(&cluster.token(user, device), device)
        .await
        .unwrap_or_else(|e| panic!("session {user}/{device} on node {node}: {e}"))
}

/// Alice sends one message through `node`; returns its seq.
async fn alice_sends(cluster: &TestCluster, node: usize, id: &str) -> u64 {
    let alice = session(cluster, node, "alice", "laptop").await;
    let conversation = ids::direct_conversation_id("alice", "bob").unwrap();
    let mut stream = alice.open(&conversation).await.unwrap();
    let seq = stream.send_and_ack(id, b"hello").await.unwrap().seq;
    alice.close();
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_on_every_node_gets_one_post_and_an_online_one_none() {
    let receiver = Receiver::start().await;
    let allow = format!("http://{}/", receiver.addr);
    let cluster = TestCluster::start(Backend::single(), 2, |s| {
        s.push.allow = vec![allow.clone()];
        s.push.coalesce_window_ms = WINDOW_MS;
    })
    .await;

    // Registered through node 1, then offline everywhere.
    let mut phone = session(&cluster, 0, "bob", "phone").await;
    phone
        .push_register(&receiver.url("/phone"), "", PushPolicy::None)
        .await
        .unwrap()
        .expect("registered");
    phone.close();
    let node1 = cluster.nodes[0].handle.metrics().clone();
    assert!(wait_until(WAIT, || node1.connections_active() == 0).await);

    let seq = alice_sends(&cluster, 1, "m1").await;
    assert!(wait_until(WAIT, || !receiver.posts_to("/phone").is_empty()).await);
    // Both nodes run a notifier; three more windows must bring no second POST.
    tokio::time::sleep(Duration::from_millis(3 * u64::from(WINDOW_MS))).await;
    let posts = receiver.posts_to("/phone");
    assert_eq!(posts.len(), 1, "exactly one POST: {posts:?}");
    assert_eq!(posts[0].body["seq"], seq);

    // Online on node 2: a message stored through node 1 must not wake it.
    let mut online = session(&cluster, 1, "bob", "phone").await;
    alice_sends(&cluster, 0, "m2").await;
    tokio::time::sleep(Duration::from_millis(4 * u64::from(WINDOW_MS))).await;
    assert_eq!(
        receiver.posts_to("/phone").len(),
        1,
        "a device online on another node was pushed"
    );
    online.heartbeat(0).await.expect("still connected");
}

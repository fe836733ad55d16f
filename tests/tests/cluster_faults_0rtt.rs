//! 0-RTT across the nodes of a cluster (issue 15, failover under a second): the nodes share their TLS
//! session tickets (`ferry_cluster::tickets`), so a client whose node was killed resumes on another node
//! with its early data accepted, instead of a refused early flight and a full handshake.

use std::time::Duration;

use ferry_client::ClientBuilder;
use ferry_protocol::ids;
use ferry_test_support::redis::RedisServer;
use ferry_tests::wait_until;

// The shared node harness; this binary uses only part of it.
#[allow(dead_code)]
#[path = "cluster_faults/nodes.rs"]
mod nodes;

use nodes::{prefix, start_nodes};

/// Upper bound for any single wait (a loaded 2-core machine is slow, not broken).
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_killed_node_resumes_on_another_with_0rtt_accepted() {
    let redis = RedisServer::start();
    let mut nodes = start_nodes(2, &[redis.url()], &prefix("zero-rtt"));
    let store = tempfile::tempdir().expect("temp dir");
    let endpoints: Vec<_> = nodes.iter().map(|n| n.quic()).collect();
    let fast = ClientBuilder::new()
        .heartbeat_interval(Duration::from_millis(250))
        .heartbeat_timeout(Duration::from_millis(800));
    let (client, _events) = nodes::client_of(fast, &nodes[0], &endpoints, "u0", "phone")
        .store_path(store.path().join("client.sqlite3"))
        .build()
        .await
        .expect("client");
    let (n1, n2) = (nodes[0].quic(), nodes[1].quic());
    assert!(wait_until(WAIT, || client.stats().connected).await);
    assert_eq!(client.stats().endpoint, Some(n1), "homed on n1");
    assert!(!client.stats().zero_rtt, "a first connection has no ticket");

    // An acked send is a round trip after the handshake: n1's tickets have reached the client by then.
    // n1 publishes each ticket as it issues it; the extra pause covers the Redis hop to n2 on a loaded
    // machine (a sub-millisecond hop when idle).
    let conversation = ids::direct_conversation_id("u0", "u1").expect("direct id");
    let receipt = client
        .send(conversation.clone(), "before")
        .await
        .expect("queued");
    tokio::time::timeout(WAIT, receipt)
        .await
        .expect("acked in time")
        .expect("stored");
    tokio::time::sleep(Duration::from_millis(300)).await;

    nodes[0].kill9();
    let moved = wait_until(WAIT, || {
        let stats = client.stats();
        stats.connected && stats.endpoint == Some(n2)
    })
    .await;
    let stats = client.stats();
    assert!(moved, "moved to n2: {stats:?}");
    assert!(
        stats.zero_rtt,
        "n2 accepted the early data of a ticket n1 issued: {stats:?}"
    );
    // The resumed session is a working one.
    let receipt = client.send(conversation, "after").await.expect("queued");
    tokio::time::timeout(WAIT, receipt)
        .await
        .expect("acked in time")
        .expect("stored");
    client.shutdown().await;
}

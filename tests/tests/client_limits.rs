//! Limits announced in Welcome, and the end of a session:
//! - a body above the announced `max_body_size` is refused locally with a typed error, nothing queued;
//! - stream frames are decoded against the announced `max_frame_size` (a server announcing a small one
//!   still serves history pages that fit it);
//! - a server announcing a small `max_open_streams` never has to refuse a stream (TOO_MANY_STREAMS):
//!   sends to more conversations than that all arrive, the client finishing idle streams to make room;
//! - a client that shuts down — even while its first connection is still being dialled — closes every
//!   connection (the server's `ferry_connections_active` returns to 0 at once, not after the idle
//!   timeout), and so does every `ferry typing` run.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferry_client::{ClientBuilder, SendError};
use ferry_protocol::{ids, ErrorCode};
use ferry_tests::process::workspace_binary;
use ferry_tests::{wait_until, TestServer};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(60);
/// Well below the server's idle timeout: a connection left open would still count.
const CLOSED_WITHIN: Duration = Duration::from_secs(2);

fn builder(server: &TestServer, user: &str, device: &str, store: &Path) -> ClientBuilder {
    ClientBuilder::new()
        .endpoint(server.handle.local_addr().to_string())
        .ca_file(server.handle.ca_path())
        .token(server.token(user, device))
        .device_id(device)
        .store_path(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_announced_limits_are_respected() {
    let server = TestServer::start_with(|s| {
        s.limits.max_frame_size = 4096;
        s.limits.max_body_size = 1024;
        s.limits.max_pull_page = 10;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, _events) = builder(&server, "alice", "phone", &dir.path().join("alice"))
        .build()
        .await
        .unwrap();
    assert!(alice.connected(WAIT).await);
    assert_eq!(alice.stats().max_body_size, 1024);
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    match alice.send(conv.as_str(), vec![b'x'; 1025]).await {
        Err(SendError::TooLarge {
            size,
            limit,
            message,
        }) => {
            assert_eq!((size, limit, message.body.len()), (1025, 1024, 1025));
        }
        Err(other) => panic!("expected TooLarge, got {other:?}"),
        Ok(_) => panic!("a body above the limit was queued"),
    }
    assert_eq!(alice.stats().outbox, 0, "nothing queued");
    // Bodies within the limit go through; history of 60 arrives in pages of 10 that fit 4 KiB frames.
    let mut receipts = Vec::new();
    for _ in 0..60 {
        receipts.push(alice.send(conv.as_str(), vec![b'y'; 300]).await.unwrap());
    }
    for r in receipts {
        tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
    }
    let (bob, _b) = builder(&server, "bob", "laptop", &dir.path().join("bob"))
        .build()
        .await
        .unwrap();
    assert!(bob.connected(WAIT).await);
    let page = tokio::time::timeout(WAIT, bob.history(&conv, 0, 1000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.len(), 60);
    bob.shutdown().await;
    alice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_conversations_than_open_streams_never_provoke_too_many_streams() {
    const STREAMS: u32 = 2;
    let server = TestServer::start_with(|s| s.limits.max_open_streams = STREAMS).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = server.handle.metrics().clone();
    let (alice, _events) = builder(&server, "alice", "phone", &dir.path().join("alice"))
        .build()
        .await
        .unwrap();
    assert!(alice.connected(WAIT).await);
    // Six direct conversations, three Sends each, queued at once: three times the stream limit.
    let peers = ["bob", "carol", "dave", "erin", "frank", "grace"];
    let mut receipts = Vec::new();
    for round in 0..3 {
        for peer in peers {
            let conv = ids::direct_conversation_id("alice", peer).unwrap();
            let text = format!("{round} to {peer}");
            receipts.push(alice.send(conv.as_str(), text).await.unwrap());
        }
    }
    for r in receipts {
        let stored = tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
        assert!(stored.seq >= 1 && stored.seq <= 3, "{stored:?}");
    }
    assert_eq!(
        metrics.errors(ErrorCode::TOO_MANY_STREAMS),
        0,
        "the server had to refuse streams"
    );
    alice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_dialling_leaves_no_connection_open() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = server.handle.metrics().clone();
    for i in 0..6 {
        let (client, _events) = builder(
            &server,
            "alice",
            &format!("d{i}"),
            &dir.path().join(format!("s{i}")),
        )
        .build()
        .await
        .unwrap();
        // No wait for the session: the dial (or the handshake) is still running.
        client.shutdown().await;
    }
    assert!(
        wait_until(CLOSED_WITHIN, || metrics.connections_active() == 0).await,
        "{} connections still open",
        metrics.connections_active()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_typing_run_closes_its_connection() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = server.handle.metrics().clone();
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    for i in 0..6 {
        let status = Command::new(workspace_binary("ferry"))
            .env("FERRY_SERVER", server.handle.local_addr().to_string())
            .env("FERRY_TOKEN", server.token("alice", "cli"))
            .env("FERRY_CA", server.handle.ca_path())
            .env("FERRY_STORE", dir.path().join("cli"))
            .env("FERRY_LOG", "warn")
            .args(["typing", "--conversation", &conv])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .unwrap();
        assert!(status.success(), "run {i}");
        assert!(
            wait_until(CLOSED_WITHIN, || metrics.connections_active() == 0).await,
            "run {i} left {} connections open",
            metrics.connections_active()
        );
    }
}

//! History across many Pull pages: the library's `Client::history` and `ferry history` return every
//! message up to the limit (3,000 here, thirty pages of 100) for a store that has never seen the
//! conversation.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferry_client::{Client, ClientBuilder, Events};
use ferry_protocol::ids;
use ferry_tests::process::workspace_binary;
use ferry_tests::TestServer;
use tokio::process::Command;

const MESSAGES: u64 = 3000;
const WAIT: Duration = Duration::from_secs(120);

async fn client(server: &TestServer, user: &str, device: &str, store: &Path) -> (Client, Events) {
    ClientBuilder::new()
        .endpoint(server.handle.local_addr().to_string())
        .ca_file(server.handle.ca_path())
        .token(server.token(user, device))
        .device_id(device)
        .store_path(store)
        .build()
        .await
        .expect("client starts")
}

/// A server whose d:alice:bob holds 3,000 messages (sent by alice, bob never connected).
async fn server_with_history() -> (TestServer, tempfile::TempDir, String) {
    let server = TestServer::start_with(|s| {
        s.limits.send_rate_per_sec = 1_000_000;
        s.limits.send_burst = 1_000_000;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, _events) = client(&server, "alice", "phone", &dir.path().join("alice")).await;
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    let mut receipts = Vec::new();
    for i in 0..MESSAGES {
        receipts.push(alice.send(conv.as_str(), format!("m{i}")).await.unwrap());
    }
    for r in receipts {
        tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
    }
    alice.shutdown().await;
    (server, dir, conv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_history_pages_through_3000_messages() {
    let (server, dir, conv) = server_with_history().await;
    let (bob, _events) = client(&server, "bob", "laptop", &dir.path().join("bob")).await;
    assert!(bob.connected(WAIT).await);
    let page = tokio::time::timeout(WAIT, bob.history(&conv, 0, 5000))
        .await
        .expect("history in time")
        .expect("history");
    let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=MESSAGES).collect::<Vec<_>>());
    // A limit inside the range stops there, after `after`.
    let page = bob.history(&conv, 1234, 250).await.unwrap();
    let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1235..=1484).collect::<Vec<_>>());
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_history_prints_every_message_up_to_the_limit() {
    let (server, dir, conv) = server_with_history().await;
    let run = |limit: &str| {
        let mut cmd = Command::new(workspace_binary("ferry"));
        cmd.env("FERRY_SERVER", server.handle.local_addr().to_string())
            .env("FERRY_TOKEN", server.token("bob", "cli"))
            .env("FERRY_CA", server.handle.ca_path())
            .env("FERRY_STORE", dir.path().join(format!("bob-cli-{limit}")))
            .env("FERRY_LOG", "warn")
            .args(["--json", "history", &conv, "--limit", limit])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    let out = tokio::time::timeout(WAIT, run("5000").output())
        .await
        .expect("ferry history in time")
        .expect("ferry runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seqs: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=MESSAGES).collect::<Vec<_>>());
    let out = run("1500").output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1500);
}

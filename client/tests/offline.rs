//! The client without a reachable server: sends are durable in the outbox before any network, the
//! client keeps trying in the background, and a restart on the same store picks the outbox up again.
//! (End-to-end behaviour against the real server lives in the workspace's `tests` crate.)

use std::time::Duration;

use ferry_client::{
    BackoffConfig, ClientBuilder, ClientStore, ConnectionState, Event, SendError, SqliteStore,
};

fn ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("self-signed certificate")
        .cert
        .pem()
}

/// A UDP port on loopback with nobody listening (bound, then released).
fn dead_endpoint() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().to_string()
}

fn builder(store: &std::path::Path) -> ClientBuilder {
    ClientBuilder::new()
        .endpoint(dead_endpoint())
        .ca_pem(ca_pem())
        .token("v1.e30.x")
        .device_id("laptop")
        .store_path(store)
        .connect_timeout(Duration::from_millis(200))
        .backoff(BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        })
}

#[tokio::test]
async fn offline_sends_are_queued_durably_and_resumed_by_the_next_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite3");
    let (client, mut events) = builder(&path).build().await.unwrap();

    let receipt = client.send("d:alice:bob", "hello").await.unwrap();
    let client_msg_id = receipt.message().client_msg_id.clone();

    // The client keeps trying: Connecting / Disconnected events, never Connected.
    let mut disconnects = 0;
    while disconnects < 2 {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(Event::Connection(ConnectionState::Disconnected { .. }))) => disconnects += 1,
            Ok(Some(Event::Connection(ConnectionState::Connecting { .. }))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Stats are published after each driver wake-up; by now the send was handled.
    assert_eq!(client.stats().outbox, 1);
    assert!(!client.stats().connected);

    client.shutdown().await;
    match receipt.await {
        Err(SendError::Interrupted { message }) => assert_eq!(message.client_msg_id, client_msg_id),
        other => panic!("expected Interrupted, got {other:?}"),
    }
    assert!(
        client.send("d:alice:bob", "late").await.is_err(),
        "closed client"
    );

    // The message is still in the outbox, and a new client on the same store takes it over.
    let store = SqliteStore::open(&path).unwrap();
    let outbox = store.outbox().unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].client_msg_id, client_msg_id);
    drop(store);
    let (again, _events) = builder(&path).build().await.unwrap();
    assert_eq!(again.stats().outbox, 1);
    again.shutdown().await;
}

/// Reconnects follow tokio's clock: with time paused, attempts that each wait out a 10 s connect timeout
/// plus backoff of up to a minute run without real waiting (no sleep in the test or the client).
#[tokio::test(start_paused = true)]
async fn reconnect_attempts_and_backoff_run_on_the_simulated_clock() {
    let dir = tempfile::tempdir().unwrap();
    let connect_timeout = Duration::from_secs(10);
    let (client, mut events) = builder(&dir.path().join("store.sqlite3"))
        .connect_timeout(connect_timeout)
        .backoff(BackoffConfig {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(60),
        })
        .build()
        .await
        .unwrap();
    let (virtual_start, real_start) = (tokio::time::Instant::now(), std::time::Instant::now());
    let mut disconnects = 0;
    while disconnects < 3 {
        match tokio::time::timeout(Duration::from_secs(600), events.recv()).await {
            Ok(Some(Event::Connection(ConnectionState::Disconnected { reason }))) => {
                assert!(reason.contains("timed out"), "{reason}");
                disconnects += 1;
            }
            Ok(Some(Event::Connection(ConnectionState::Connecting { .. }))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every attempt waited its full connect timeout on the simulated clock...
    let simulated = virtual_start.elapsed();
    assert!(simulated >= 3 * connect_timeout, "{simulated:?}");
    // ...which ran ahead of the real one.
    assert!(
        real_start.elapsed() < simulated,
        "{:?}",
        real_start.elapsed()
    );
    assert!(!client.stats().connected);
    client.shutdown().await;
}

#[tokio::test]
async fn invalid_input_is_refused_before_anything_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (client, _events) = builder(&dir.path().join("s.sqlite3"))
        .build()
        .await
        .unwrap();
    match client.send("not-a-conversation", "x").await {
        Err(SendError::Invalid { message, .. }) => assert_eq!(&message.body[..], b"x"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // No Welcome yet, so the own user id (needed for direct conversations) is unknown.
    assert!(matches!(
        client.send_direct("bob", "x").await,
        Err(SendError::Invalid { .. })
    ));
    assert_eq!(client.stats().outbox, 0);
    client.shutdown().await;

    assert!(ClientBuilder::new().build().await.is_err(), "no endpoint");
    let no_ca = ClientBuilder::new()
        .endpoint("127.0.0.1:1")
        .token("t")
        .device_id("d")
        .build()
        .await;
    assert!(no_ca.is_err());
}

//! Catch-up in a few round trips: a client back after missing 1,000 messages gets them through
//! ferry-proxy with a long delay in a handful of round trips (handshake, Hello + Sync, pipelined Pulls,
//! transfer), not one round trip per page of 100 as before (~17).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_client::{Client, ClientBuilder, ConnectionState, Event, Events, SessionCache};
use ferry_protocol::ids;
use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};
use ferry_tests::TestServer;

const WAIT: Duration = Duration::from_secs(120);
/// One-way delay: long enough that round trips dominate the client's own work on a busy machine.
const DELAY: Duration = Duration::from_millis(250);

fn builder(
    server: &TestServer,
    endpoint: String,
    user: &str,
    device: &str,
    store: &Path,
) -> ClientBuilder {
    ClientBuilder::new()
        .endpoint(endpoint)
        .ca_file(server.handle.ca_path())
        .token(server.token(user, device))
        .device_id(device)
        .store_path(store)
        .zero_rtt(false)
}

/// ferry-proxy in front of `server`, adding [`DELAY`] each way.
async fn delayed_proxy(server: &TestServer) -> Proxy {
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), server.handle.local_addr());
    config.faults = Faults::symmetric(DirectionFaults {
        delay: DELAY,
        ..DirectionFaults::default()
    });
    Proxy::start(config).await.unwrap()
}

async fn receive_through(events: &mut Events, conv: &str, seq: u64) {
    let wait = async {
        loop {
            match events.recv().await {
                Some(Event::Message(m)) if m.conversation == conv && m.seq >= seq => return,
                Some(_) => {}
                None => panic!("client stopped"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("caught up in time");
}

async fn send(alice: &Client, conv: &str, count: usize) -> u64 {
    let mut receipts = Vec::new();
    for i in 0..count {
        receipts.push(alice.send(conv, format!("m{i}")).await.unwrap());
    }
    let mut last = 0;
    for r in receipts {
        last = last.max(tokio::time::timeout(WAIT, r).await.unwrap().unwrap().seq);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_missed_messages_arrive_in_a_few_round_trips() {
    let server = TestServer::start_with(|s| {
        s.limits.send_rate_per_sec = 1_000_000;
        s.limits.send_burst = 1_000_000;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let direct = server.handle.local_addr().to_string();
    let (alice, _a) = builder(
        &server,
        direct.clone(),
        "alice",
        "phone",
        &dir.path().join("alice"),
    )
    .build()
    .await
    .unwrap();
    let proxy = delayed_proxy(&server).await;
    let via_proxy = proxy.local_addr().to_string();
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    let store = dir.path().join("bob");

    // Bob knows the conversation, then goes offline and misses 1,000 messages.
    let (bob, mut events) = builder(&server, via_proxy.clone(), "bob", "laptop", &store)
        .build()
        .await
        .unwrap();
    let first = send(&alice, &conv, 1).await;
    receive_through(&mut events, &conv, first).await;
    bob.shutdown().await;
    let last = send(&alice, &conv, 1000).await;

    let started = Instant::now();
    let (bob, mut events) = builder(&server, via_proxy, "bob", "laptop", &store)
        .build()
        .await
        .unwrap();
    receive_through(&mut events, &conv, last).await;
    let elapsed = started.elapsed();
    let rtt = DELAY * 2;
    let round_trips = elapsed.as_secs_f64() / rtt.as_secs_f64();
    eprintln!("caught up 1,000 messages in {elapsed:?} = {round_trips:.1} round trips of {rtt:?}");
    // Handshake, Hello/Welcome + Sync, the Pulls in flight together, plus transfer and the client's own
    // work: well under the ~17 round trips of one Pull per page.
    assert!(round_trips < 8.0, "{round_trips:.1} round trips");
    bob.shutdown().await;
    alice.shutdown().await;
}

/// Waits for the client's session to go live; whether it used 0-RTT.
async fn connected(events: &mut Events) -> bool {
    let wait = async {
        loop {
            match events.recv().await {
                Some(Event::Connection(ConnectionState::Connected { zero_rtt, .. })) => {
                    return zero_rtt
                }
                Some(_) => {}
                None => panic!("client stopped"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("connected in time")
}

/// A client resuming in 0-RTT sends Hello and Sync in its first flight; the server answers them before
/// the handshake completes (0.5-RTT data, FERRY-ZERORTT-3 defers only the login policy and frames not
/// allowed in early data), so Welcome arrives one round trip after dialling — not two, as when the
/// server waited for the client's Finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_rtt_reconnect_is_welcomed_within_one_round_trip() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = delayed_proxy(&server).await;
    let via_proxy = proxy.local_addr().to_string();
    let store = dir.path().join("bob");
    let cache = SessionCache::new();
    let build = || {
        builder(&server, via_proxy.clone(), "bob", "laptop", &store)
            .zero_rtt(true)
            .session_cache(cache.clone())
            .build()
    };

    // The first connection gets a session ticket.
    let (bob, mut events) = build().await.unwrap();
    assert!(
        !connected(&mut events).await,
        "no ticket yet: a full handshake"
    );
    bob.shutdown().await;

    let started = Instant::now();
    let (bob, mut events) = build().await.unwrap();
    assert!(connected(&mut events).await, "the server accepted 0-RTT");
    let elapsed = started.elapsed();
    let rtt = DELAY * 2;
    eprintln!("0-RTT reconnect welcomed after {elapsed:?} (round trip {rtt:?})");
    // One round trip plus the client's and server's own work; waiting for the client's Finished would
    // add a whole second one.
    assert!(
        elapsed < rtt * 3 / 2,
        "Welcome after {elapsed:?}: more than one round trip of {rtt:?}"
    );
    bob.shutdown().await;
}

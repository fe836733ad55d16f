//! ferry-client connection life cycle against the real server: restarts, failover, 0-RTT (accepted and
//! rejected) and connection migration, with nothing lost or duplicated.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_client::{
    BackoffConfig, Client, ClientBuilder, ConnectionState, Event, Events, Receipt, ReceivedMessage,
    SessionCache,
};
use ferry_protocol::ids;
use ferry_proxy::{Proxy, ProxyConfig};
use ferry_server::ServerHandle;
use ferry_tests::test_settings;
use ferry_tests::wait_until;

const WAIT: Duration = Duration::from_secs(30);

/// An in-process server that can be stopped and started again on the same data dir and port.
struct Restartable {
    dir: tempfile::TempDir,
    handle: Option<ServerHandle>,
    addr: SocketAddr,
    ca: PathBuf,
}

impl Restartable {
    async fn start() -> Restartable {
        ferry_tests::init_logging();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(dir.path());
        settings.heartbeat_interval_ms = 500;
        let handle = ferry_server::start(settings).await.expect("server starts");
        Restartable {
            addr: handle.local_addr(),
            ca: handle.ca_path().to_path_buf(),
            handle: Some(handle),
            dir,
        }
    }

    fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("server running")
    }

    fn token(&self, user: &str, device: &str) -> String {
        self.handle()
            .mint_token(user, device, Duration::from_secs(3600))
    }

    async fn stop(&mut self) {
        self.handle.take().expect("server running").shutdown().await;
    }

    /// Starts again on the same data dir and the same port.
    async fn restart(&mut self) {
        let mut settings = test_settings(self.dir.path());
        settings.heartbeat_interval_ms = 500;
        settings.listen = self.addr;
        // The old server's socket and store are released as its tasks wind down: retry briefly.
        let mut attempts = 0;
        let handle = loop {
            match ferry_server::start(settings.clone()).await {
                Ok(handle) => break handle,
                Err(e) if attempts < 50 => {
                    eprintln!("restart attempt {attempts}: {e:#}");
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("server restarts: {e:#}"),
            }
        };
        assert_eq!(handle.local_addr(), self.addr);
        self.handle = Some(handle);
    }
}

/// What a client reported: messages, and the `zero_rtt` flag of each Connected.
#[derive(Default)]
struct Seen {
    messages: Vec<ReceivedMessage>,
    connected: Vec<bool>,
    disconnects: usize,
}

fn collect(mut events: Events) -> Arc<Mutex<Seen>> {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let mut s = sink.lock().unwrap();
            match event {
                Event::Message(m) => s.messages.push(m),
                Event::Connection(ConnectionState::Connected { zero_rtt, .. }) => {
                    s.connected.push(zero_rtt)
                }
                Event::Connection(ConnectionState::Disconnected { .. }) => s.disconnects += 1,
                _ => {}
            }
        }
    });
    seen
}

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(300),
    }
}

/// A client of `user` (device "phone") of the server at `endpoints`, with its store in `dir`.
fn builder(server: &Restartable, endpoints: &[String], user: &str, dir: &Path) -> ClientBuilder {
    ClientBuilder::new()
        .endpoints(endpoints.iter().cloned())
        .ca_file(&server.ca)
        .token(server.token(user, "phone"))
        .device_id("phone")
        .store_path(dir.join(user))
        .backoff(fast_backoff())
        .connect_timeout(Duration::from_secs(2))
}

/// Builds [`builder`]'s client and collects its events.
async fn client(
    server: &Restartable,
    endpoints: &[String],
    user: &str,
    dir: &Path,
) -> (Client, Arc<Mutex<Seen>>) {
    let (client, events) = builder(server, endpoints, user, dir)
        .build()
        .await
        .expect("client");
    (client, collect(events))
}

/// Queues `bodies` (pipelined); returns their receipts.
async fn queue(client: &Client, conv: &str, bodies: impl Iterator<Item = String>) -> Vec<Receipt> {
    let mut receipts = Vec::new();
    for body in bodies {
        receipts.push(client.send(conv, body).await.unwrap());
    }
    receipts
}

/// Waits for every receipt; returns the seqs.
async fn seqs_of(receipts: Vec<Receipt>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for r in receipts {
        seqs.push(
            tokio::time::timeout(WAIT, r)
                .await
                .expect("receipt in time")
                .expect("stored")
                .seq,
        );
    }
    seqs
}

/// Sends `bodies` pipelined and waits for every receipt; returns the seqs.
async fn send_all(client: &Client, conv: &str, bodies: impl Iterator<Item = String>) -> Vec<u64> {
    seqs_of(queue(client, conv, bodies).await).await
}

/// Waits until `seen` holds `n` messages, then checks they are seqs 1..=n with bodies m1..mn.
async fn expect_messages(seen: &Arc<Mutex<Seen>>, n: usize) {
    let got = wait_until(WAIT, || seen.lock().unwrap().messages.len() >= n).await;
    let s = seen.lock().unwrap();
    assert!(got, "{} of {n} messages", s.messages.len());
    let seqs: Vec<u64> = s.messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "each once, in order"
    );
    for m in &s.messages {
        assert_eq!(m.body, format!("m{}", m.seq).into_bytes());
    }
}

fn bodies(range: std::ops::RangeInclusive<u64>) -> impl Iterator<Item = String> {
    range.map(|i| format!("m{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_server_restart() {
    let mut server = Restartable::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ep = [server.addr.to_string()];
    let (alice, _alice_seen) = client(&server, &ep, "alice", dir.path()).await;
    let (bob, bob_seen) = client(&server, &ep, "bob", dir.path()).await;
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    assert!(bob.connected(WAIT).await);
    assert_eq!(
        send_all(&alice, &conv, bodies(1..=10)).await,
        (1..=10).collect::<Vec<_>>()
    );
    expect_messages(&bob_seen, 10).await;

    server.stop().await;
    // Queued while the server is down: they wait in the outbox.
    let receipts = queue(&alice, &conv, bodies(11..=20)).await;
    assert!(
        wait_until(WAIT, || !alice.stats().connected
            && alice.stats().outbox == 10)
        .await
    );
    server.restart().await;
    assert_eq!(seqs_of(receipts).await, (11..=20).collect::<Vec<_>>());
    expect_messages(&bob_seen, 20).await;
    // A session resumed in 0-RTT is served before its handshake completes, so its messages can arrive
    // just before the client reports it connected (it waits for the server's verdict on early data).
    assert!(
        wait_until(WAIT, || alice.stats().sessions >= 2).await,
        "alice reconnected"
    );
    assert!(
        wait_until(WAIT, || bob.stats().sessions >= 2).await,
        "bob reconnected"
    );
    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn failover_to_second_endpoint() {
    let mut server = Restartable::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: bound and released.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let eps = [dead.to_string(), server.addr.to_string()];
    let (alice, _) = client(&server, &eps, "alice", dir.path()).await;
    assert!(
        alice.connected(WAIT).await,
        "connected through the second endpoint"
    );
    assert_eq!(alice.stats().endpoint, Some(server.addr));
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    assert_eq!(send_all(&alice, &conv, bodies(1..=3)).await, [1, 2, 3]);
    alice.shutdown().await;
    server.stop().await;
}

/// Makes the client's connection die: the proxy swallows everything until the client's heartbeats go
/// unanswered for two intervals, then lets traffic through again so the client reconnects.
async fn force_reconnect(proxy: &Proxy, client: &Client, seen: &Arc<Mutex<Seen>>) {
    let before = client.stats().sessions;
    proxy.blackhole_until_cleared();
    assert!(
        wait_until(WAIT, || !client.stats().connected).await,
        "client noticed the dead connection"
    );
    proxy.clear_blackhole();
    assert!(
        wait_until(WAIT, || client.stats().connected
            && client.stats().sessions > before)
        .await,
        "client reconnected"
    );
    // The Connected events trail the stats by a hop through the event channel.
    let sessions = client.stats().sessions as usize;
    assert!(wait_until(WAIT, || seen.lock().unwrap().connected.len() >= sessions).await);
}

async fn proxy_to(addr: SocketAddr) -> Proxy {
    Proxy::start(ProxyConfig::new("127.0.0.1:0".parse().unwrap(), addr))
        .await
        .expect("proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_on_second_connection() {
    let mut server = Restartable::start().await;
    let proxy = proxy_to(server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let ep = [proxy.local_addr().to_string()];
    let (alice, seen) = client(&server, &ep, "alice", dir.path()).await;
    assert!(alice.connected(WAIT).await);
    assert!(!alice.stats().zero_rtt, "no ticket on the first connection");
    force_reconnect(&proxy, &alice, &seen).await;
    assert_eq!(
        seen.lock().unwrap().connected,
        [false, true],
        "second Connected used 0-RTT"
    );
    assert!(alice.stats().zero_rtt);
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    assert_eq!(send_all(&alice, &conv, bodies(1..=3)).await, [1, 2, 3]);
    alice.shutdown().await;
    server.stop().await;
}

/// An app that rebuilds its client (same store, same `SessionCache`) resumes with 0-RTT: rustls only
/// resumes under the TLS configuration that received the ticket, so the cache must carry it across builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_across_builds_sharing_a_session_cache() {
    let mut server = Restartable::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = SessionCache::new();
    let mut connected = Vec::new();
    for round in 1..=3u64 {
        let (alice, events) = builder(&server, &[server.addr.to_string()], "alice", dir.path())
            .session_cache(cache.clone())
            .build()
            .await
            .expect("client");
        let seen = collect(events);
        assert!(alice.connected(WAIT).await);
        connected.push(alice.stats().zero_rtt);
        // A round trip after the handshake: the ticket (sent right after it) has arrived by then.
        let conv = ids::direct_conversation_id("alice", "bob").unwrap();
        assert_eq!(
            send_all(&alice, &conv, bodies(round..=round)).await,
            [round]
        );
        assert_eq!(seen.lock().unwrap().connected.len(), 1);
        alice.shutdown().await;
    }
    assert_eq!(
        connected,
        [false, true, true],
        "0-RTT on every build after the first"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_rejected_falls_back() {
    let mut server = Restartable::start().await;
    let proxy = proxy_to(server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let ep = [proxy.local_addr().to_string()];
    let (alice, alice_seen) = client(&server, &ep, "alice", dir.path()).await;
    let (bob, bob_seen) = client(&server, &[server.addr.to_string()], "bob", dir.path()).await;
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    assert!(alice.connected(WAIT).await && bob.connected(WAIT).await);
    assert_eq!(
        send_all(&alice, &conv, bodies(1..=5)).await,
        [1, 2, 3, 4, 5]
    );
    // Prove alice holds a ticket the server accepts: a reconnect to the same server is 0-RTT.
    force_reconnect(&proxy, &alice, &alice_seen).await;
    assert_eq!(alice_seen.lock().unwrap().connected, [false, true]);

    // A new server process knows nothing of that ticket: alice's next 0-RTT attempt is rejected, and the
    // Sends it carried in early data must be replayed over 1-RTT.
    server.stop().await;
    let receipts = queue(&alice, &conv, bodies(6..=15)).await;
    let sessions_before = alice.stats().sessions as usize;
    server.restart().await;
    assert_eq!(seqs_of(receipts).await, (6..=15).collect::<Vec<_>>());
    // The first session with the new server must be 1-RTT (its 0-RTT was rejected). Later sessions may
    // legitimately be 0-RTT again with the new server's own tickets (e.g. after a missed heartbeat on a
    // loaded machine), so look at the sessions established after the restart.
    assert!(
        wait_until(WAIT, || alice_seen.lock().unwrap().connected.len()
            > sessions_before)
        .await
    );
    let connected = alice_seen.lock().unwrap().connected.clone();
    assert!(
        connected[sessions_before..].contains(&false),
        "a session after the restart fell back to 1-RTT: {connected:?}"
    );
    expect_messages(&bob_seen, 15).await;
    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebind_mid_transfer_keeps_the_connection() {
    let mut server = Restartable::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ep = [server.addr.to_string()];
    let (alice, alice_seen) = client(&server, &ep, "alice", dir.path()).await;
    let (bob, bob_seen) = client(&server, &ep, "bob", dir.path()).await;
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    assert!(alice.connected(WAIT).await && bob.connected(WAIT).await);

    let sender = {
        let (alice, conv) = (alice.clone(), conv.clone());
        tokio::spawn(async move { send_all(&alice, &conv, bodies(1..=400)).await })
    };
    // Both ends move to a new UDP socket while messages flow.
    assert!(wait_until(WAIT, || bob_seen.lock().unwrap().messages.len() >= 50).await);
    alice.rebind().await.expect("alice rebinds");
    bob.rebind().await.expect("bob rebinds");
    assert_eq!(sender.await.unwrap(), (1..=400).collect::<Vec<_>>());
    expect_messages(&bob_seen, 400).await;
    for (name, client, seen) in [("alice", &alice, &alice_seen), ("bob", &bob, &bob_seen)] {
        assert_eq!(client.stats().sessions, 1, "{name}: same session");
        let s = seen.lock().unwrap();
        assert_eq!(
            (s.connected.len(), s.disconnects),
            (1, 0),
            "{name}: no reconnect"
        );
    }
    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}

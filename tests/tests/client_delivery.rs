//! ferry-client against the real server over real QUIC: exactly-once in-order delivery through a lossy
//! network, recovery of a lost last message from heartbeat heads, and manual acknowledgement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use std::time::{Duration, Instant};

use ferry_client::{AckMode, Client, ClientBuilder, MessageKind};
use ferry_protocol::frame::Message;
use ferry_protocol::ids;
use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};
use ferry_tests::wait_until;
use ferry_tests::TestServer;

/// Upper bound for any single wait in these tests (a loaded 2-core machine is slow, not broken).
const WAIT: Duration = Duration::from_secs(30);

fn builder(server: &TestServer, endpoint: String, user: &str, device: &str) -> ClientBuilder {
    ClientBuilder::new()
        .endpoint(endpoint)
        .ca_file(server.handle.ca_path())
        .token(server.token(user, device))
        .device_id(device)
}

use ferry_tests::{collect_messages as collect, Seen};

fn count(seen: &Seen) -> usize {
    seen.lock().unwrap().len()
}

async fn start_client(builder: ClientBuilder, store: &Path) -> (Client, Seen) {
    let (client, events) = builder.store_path(store).build().await.expect("client");
    (client, collect(events))
}

/// What one device sent: (conversation, seq) → client_msg_id.
type Sent = BTreeMap<(String, u64), String>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_in_order_through_a_lossy_proxy() {
    const MESSAGES: usize = 2000;
    let started = Instant::now();
    let server = TestServer::start_with(|s| {
        s.heartbeat_interval_ms = 500;
        // Three devices pipelining 2,000 messages must not be throttled; rate limits are tested elsewhere.
        s.limits.send_rate_per_sec = 1_000_000;
        s.limits.send_burst = 1_000_000;
    })
    .await;
    let lossy = DirectionFaults {
        loss: 0.2,
        reorder: 0.1,
        duplicate: 0.05,
        jitter: Duration::from_millis(2),
        ..DirectionFaults::default()
    };
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), server.handle.local_addr());
    config.seed = 0x00fe_22e1;
    config.faults = Faults::symmetric(lossy);
    let proxy = Proxy::start(config).await.expect("proxy");
    let via = proxy.local_addr().to_string();
    let dir = tempfile::tempdir().unwrap();

    let devices = [("alice", "phone"), ("bob", "phone"), ("bob", "laptop")];
    let mut clients = Vec::new();
    for (user, device) in devices {
        let b = builder(&server, via.clone(), user, device).send_timeout(Duration::from_secs(5));
        let store = dir.path().join(format!("{user}-{device}.sqlite3"));
        clients.push(start_client(b, &store).await);
    }

    let test = async {
        // Five conversations every device is a member of: the direct one and four groups.
        let direct = ids::direct_conversation_id("alice", "bob").unwrap();
        let mut convs = vec![direct.clone()];
        for g in 0..4 {
            let members = if g % 2 == 0 {
                vec!["bob".to_string()]
            } else {
                vec!["bob".to_string(), "carol".to_string()]
            };
            let id = clients[0]
                .0
                .create_group(&format!("g{g}"), &members)
                .await
                .expect("create group");
            convs.push(id);
        }
        // A conversation without local history starts at the server's recent window (a documented
        // decision), so each device first sees one message of every conversation: the groups' CREATED
        // message and a greeting in the direct one. Only then the bulk is pipelined.
        let greeting = clients[0]
            .0
            .send(direct.clone(), "hello")
            .await
            .unwrap()
            .await
            .expect("greeting stored");
        assert_eq!(greeting.seq, 1);
        for (i, (_, seen)) in clients.iter().enumerate() {
            let want = if i == 0 { 4 } else { 5 };
            assert!(
                wait_until(WAIT, || count(seen) >= want).await,
                "device {i} saw {} of {want} first messages",
                count(seen)
            );
        }
        let mut sent: Vec<Sent> = vec![Sent::new(); devices.len()];
        sent[0].insert((direct.clone(), 1), greeting.client_msg_id);

        // The bulk: message i goes from device i % 3 to conversation (i / 3) % 5, all pipelined.
        let mut tasks = Vec::new();
        for (d, (client, _)) in clients.iter().enumerate() {
            let client = client.clone();
            let plan: Vec<(String, String)> = (1..MESSAGES)
                .filter(|i| i % devices.len() == d)
                .map(|i| {
                    (
                        convs[(i / devices.len()) % convs.len()].clone(),
                        format!("m{i}"),
                    )
                })
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut receipts = Vec::new();
                for (conv, body) in plan {
                    receipts.push(client.send(conv, body).await.expect("queued"));
                }
                let mut sent = Sent::new();
                for receipt in receipts {
                    let r = receipt.await.expect("stored");
                    sent.insert((r.conversation, r.seq), r.client_msg_id);
                }
                sent
            }));
        }
        for (d, task) in tasks.into_iter().enumerate() {
            sent[d].extend(task.await.unwrap());
        }
        let sends_done = started.elapsed();

        // The server's seqs are gap-free: every seq of a conversation is a group's CREATED (seq 1) or
        // one receipt.
        let mut all: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for ((conv, seq), _) in sent.iter().flatten() {
            assert!(
                all.entry(conv.clone()).or_default().insert(*seq),
                "seq given twice"
            );
        }
        for conv in &convs[1..] {
            all.get_mut(conv).unwrap().insert(1);
        }
        for (conv, seqs) in &all {
            let head = *seqs.last().unwrap();
            assert_eq!(seqs.len() as u64, head, "{conv}: seqs not gap-free");
        }
        let by_id: HashMap<(String, u64), String> = sent
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();

        for (d, (_, seen)) in clients.iter().enumerate() {
            let own: BTreeSet<(String, u64)> = sent[d].keys().cloned().collect();
            let expected: usize = all.values().map(BTreeSet::len).sum::<usize>() - own.len();
            let ok = wait_until(WAIT, || count(seen) >= expected).await;
            assert!(
                ok,
                "{:?} saw {} of {expected} messages",
                devices[d],
                count(seen)
            );
            // Two heartbeat intervals more: a duplicate reported late would show up here.
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let seen = seen.lock().unwrap().clone();
            assert_eq!(
                seen.len(),
                expected,
                "{:?}: duplicates reported",
                devices[d]
            );
            let mut last: HashMap<&str, u64> = HashMap::new();
            for m in &seen {
                let prev = last.insert(m.conversation.as_str(), m.seq).unwrap_or(0);
                assert!(
                    m.seq > prev,
                    "{:?}: {} #{} after #{prev}",
                    devices[d],
                    m.conversation,
                    m.seq
                );
                let key = (m.conversation.clone(), m.seq);
                assert!(!own.contains(&key), "own message reported");
                match m.kind {
                    MessageKind::User => assert_eq!(
                        by_id.get(&key),
                        Some(&m.client_msg_id),
                        "delivered but never sent: {key:?}"
                    ),
                    MessageKind::System => assert_eq!(m.seq, 1, "only CREATED is a system message"),
                }
            }
        }
        let stats = proxy.stats();
        eprintln!(
            "lossy: {MESSAGES} messages, sends acknowledged after {sends_done:?}, all delivered after {:?}; \
             proxy lost {}/{} to server, {}/{} to client; sessions {:?}",
            started.elapsed(),
            stats.to_server.lost,
            stats.to_server.received,
            stats.to_client.lost,
            stats.to_client.received,
            clients.iter().map(|(c, _)| c.stats().sessions).collect::<Vec<_>>()
        );
    };
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the whole exchange finishes within 90 s");
    for (client, _) in &clients {
        client.shutdown().await;
    }
}

#[tokio::test]
async fn tail_loss_is_recovered_from_heartbeat_heads() {
    const HEARTBEAT_MS: u32 = 300;
    let server = TestServer::start_with(|s| s.heartbeat_interval_ms = HEARTBEAT_MS).await;
    // The server skips the fan-out of the last message of the burst: only heads can reveal it.
    server
        .handle
        .hooks()
        .set_drop_delivery(Some(Box::new(|_conv: &str, m: &Message| {
            &m.body[..] == b"last"
        })));
    let dir = tempfile::tempdir().unwrap();
    let addr = server.handle.local_addr().to_string();
    let (alice, _) = start_client(
        builder(&server, addr.clone(), "alice", "phone"),
        &dir.path().join("a.sqlite3"),
    )
    .await;
    let (bob, seen) = start_client(
        builder(&server, addr, "bob", "phone"),
        &dir.path().join("b.sqlite3"),
    )
    .await;
    assert!(bob.connected(WAIT).await);
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    let mut receipts = Vec::new();
    for i in 0..9 {
        receipts.push(alice.send(conv.clone(), format!("m{i}")).await.unwrap());
    }
    for r in receipts {
        r.await.unwrap();
    }
    assert!(
        wait_until(WAIT, || count(&seen) == 9).await,
        "first 9 delivered"
    );
    let last = alice
        .send(conv.clone(), "last")
        .await
        .unwrap()
        .await
        .unwrap();
    let stored_at = Instant::now();
    assert!(
        wait_until(WAIT, || count(&seen) == 10).await,
        "the dropped last message was never recovered"
    );
    let took = stored_at.elapsed();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[9].seq, last.seq);
    assert_eq!(&seen[9].body[..], b"last");
    eprintln!("tail loss recovered {took:?} after the SendAck (heartbeat {HEARTBEAT_MS} ms)");
    // Two heartbeat intervals plus slack for a loaded machine.
    assert!(
        took < Duration::from_millis(2 * u64::from(HEARTBEAT_MS)) + Duration::from_secs(2),
        "recovery took {took:?}"
    );
    alice.shutdown().await;
    bob.shutdown().await;
}

/// Bob's delivery cursor on the server for `conv`, read by a wire session of bob/phone (the client of
/// that device must be shut down first: the session would replace it).
async fn acked_seq(server: &TestServer, conv: &str) -> u64 {
    let mut session = server.session("bob", "phone").await;
    let result = session.sync(0, 0).await.expect("sync");
    session.close();
    result
        .conversations
        .iter()
        .find(|c| c.conversation_id == conv)
        .map_or(0, |c| c.acked_seq)
}

#[tokio::test]
async fn manual_ack_mode() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = server.handle.local_addr().to_string();
    let bob_store = dir.path().join("bob.sqlite3");
    let bob_builder = || builder(&server, addr.clone(), "bob", "phone").ack_mode(AckMode::Manual);
    let (alice, _) = start_client(
        builder(&server, addr.clone(), "alice", "phone"),
        &dir.path().join("a.sqlite3"),
    )
    .await;
    let (bob, seen) = start_client(bob_builder(), &bob_store).await;
    assert!(bob.connected(WAIT).await);
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();
    for i in 1..=5 {
        alice
            .send(conv.clone(), format!("m{i}"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert!(wait_until(WAIT, || count(&seen) == 5).await);
    // Bob's own Send on the same stream is handled after anything the client wrote before it there (an
    // Ack would come first), so once it is stored the server has seen every Ack there was.
    let own = bob
        .send(conv.clone(), "from bob")
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(own.seq, 6);
    bob.shutdown().await;
    assert_eq!(
        acked_seq(&server, &conv).await,
        0,
        "nothing acked before the app acks"
    );

    // Restarted on the same store: the five messages the app never acked are reported again.
    let (bob, seen) = start_client(bob_builder(), &bob_store).await;
    assert!(
        wait_until(WAIT, || count(&seen) == 5).await,
        "re-reported after restart"
    );
    assert!(bob.connected(WAIT).await);
    let seqs: Vec<u64> = seen.lock().unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    bob.ack(&conv, 5).await.unwrap();
    let own = bob
        .send(conv.clone(), "again")
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(own.seq, 7);
    assert_eq!(count(&seen), 5, "nothing reported twice in one run");
    bob.shutdown().await;
    assert_eq!(
        acked_seq(&server, &conv).await,
        5,
        "acked what the app acked, not its own 6 and 7"
    );
    alice.shutdown().await;
}

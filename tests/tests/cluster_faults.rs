//! Cluster faults at process level (issue 15, the shorter variants of `ferry-bench failover`): real
//! `ferry-server` processes on one real `redis-server` (AOF always), real `ferry-client` libraries.
//! A node killed with `kill -9` sends nothing to its clients; they must notice by heartbeat timeout,
//! move to a live node and catch up, with every acked message delivered to every member device exactly
//! once, in order. Node ids: a killed node's id is free at once, a live node's id is refused (exit 3).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_client::{Client, ClientBuilder, Receipt};
use ferry_protocol::ids;
use ferry_test_support::redis::{RedisCluster, RedisServer};
use ferry_tests::{collect_messages, wait_until, Seen};

#[path = "cluster_faults/nodes.rs"]
mod nodes;

use nodes::{prefix, start_nodes, NodeProcess};

/// Upper bound for any single wait (a loaded 2-core machine is slow, not broken).
const WAIT: Duration = Duration::from_secs(60);
/// Exit code of a node refused for a live-id conflict (documented in `ferry-server run --help`).
const EXIT_NODE_CONFLICT: i32 = 3;

/// One device of the test: its user, device id, client and what it received.
struct Device {
    user: String,
    device: &'static str,
    client: Client,
    seen: Seen,
    _store: tempfile::TempDir,
}

/// A client of `user`/`device` homed on node `home`, knowing every node (its home first), tuned to
/// notice a killed node within about a second (no CONNECTION_CLOSE comes after `kill -9`): 800 ms of
/// silence, so that a node stalled for a few hundred ms on the loaded test machine is not left.
async fn device(nodes: &[NodeProcess], home: usize, user: &str, device: &'static str) -> Device {
    let fast = ClientBuilder::new()
        .heartbeat_interval(Duration::from_millis(250))
        .heartbeat_timeout(Duration::from_millis(800));
    device_with(fast, nodes, home, user, device).await
}

/// As [`device`], on `builder` (e.g. without the fast heartbeat, to see what the *server* does).
async fn device_with(
    builder: ClientBuilder,
    nodes: &[NodeProcess],
    home: usize,
    user: &str,
    device: &'static str,
) -> Device {
    let endpoints = (0..nodes.len()).map(|k| nodes[(home + k) % nodes.len()].quic());
    device_knowing(builder, nodes, endpoints.collect(), user, device).await
}

/// A client configured with `endpoints` only (the nodes' identity comes from `nodes[0]`).
async fn device_knowing(
    builder: ClientBuilder,
    nodes: &[NodeProcess],
    endpoints: Vec<SocketAddr>,
    user: &str,
    device: &'static str,
) -> Device {
    let store = tempfile::tempdir().expect("temp dir");
    let (client, events) = nodes::client_of(builder, &nodes[0], &endpoints, user, device)
        .store_path(store.path().join("client.sqlite3"))
        .build()
        .await
        .expect("client");
    Device {
        user: user.into(),
        device,
        client,
        seen: collect_messages(events),
        _store: store,
    }
}

/// `pairs` direct conversations (u0–u1, u2–u3, ...), each user with a phone and a laptop, spread over
/// the nodes round-robin.
async fn devices(nodes: &[NodeProcess], pairs: usize) -> Vec<Device> {
    let mut out = Vec::new();
    for u in 0..2 * pairs {
        for device_id in ["phone", "laptop"] {
            let home = out.len() % nodes.len();
            out.push(device(nodes, home, &format!("u{u}"), device_id).await);
        }
    }
    for d in &out {
        let connected = wait_until(WAIT, || d.client.stats().connected).await;
        assert!(connected, "{}/{} connects", d.user, d.device);
    }
    out
}

fn conversation_of(user: &str) -> String {
    let u: usize = user[1..].parse().expect("u<number>");
    let pair = u - u % 2;
    ids::direct_conversation_id(&format!("u{pair}"), &format!("u{}", pair + 1)).expect("direct id")
}

/// Every phone sends `count` messages (pipelined) to its conversation; the receipts, by device index.
async fn send_round(devices: &[Device], round: usize, count: usize) -> Vec<(usize, Receipt)> {
    let mut receipts = Vec::new();
    for (i, d) in devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.device == "phone")
    {
        for n in 0..count {
            let body = format!("{}/{round}/{n}", d.user);
            let receipt = d
                .client
                .send(conversation_of(&d.user), body)
                .await
                .expect("queued");
            receipts.push((i, receipt));
        }
    }
    receipts
}

/// Waits for every receipt; returns the acked seqs per conversation with the sending device index.
async fn acked(receipts: Vec<(usize, Receipt)>) -> BTreeMap<String, BTreeMap<u64, usize>> {
    let mut out: BTreeMap<String, BTreeMap<u64, usize>> = BTreeMap::new();
    for (i, r) in receipts {
        let stored = tokio::time::timeout(WAIT, r)
            .await
            .expect("acked in time")
            .expect("stored");
        let previous = out
            .entry(stored.conversation.clone())
            .or_default()
            .insert(stored.seq, i);
        assert!(previous.is_none(), "seq {} acked twice", stored.seq);
    }
    out
}

/// The invariant: every acked message reaches every member device (but its sender) exactly once, in
/// seq order, and every device's report is gap-free.
async fn assert_all_delivered(devices: &[Device], acked: &BTreeMap<String, BTreeMap<u64, usize>>) {
    for (i, d) in devices.iter().enumerate() {
        let conversation = conversation_of(&d.user);
        let want: Vec<u64> = acked[&conversation]
            .iter()
            .filter(|(_, sender)| **sender != i)
            .map(|(seq, _)| *seq)
            .collect();
        let got = || -> Vec<u64> {
            let seen = d.seen.lock().expect("seen lock");
            seen.iter()
                .filter(|m| m.conversation == conversation)
                .map(|m| m.seq)
                .collect()
        };
        let complete = wait_until(WAIT, || got().len() >= want.len()).await;
        assert!(
            complete,
            "{}/{}: {} of {} messages",
            d.user,
            d.device,
            got().len(),
            want.len()
        );
        assert_eq!(
            got(),
            want,
            "{}/{}: exactly once, in order",
            d.user,
            d.device
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_node_moves_its_clients_elsewhere_and_loses_nothing() {
    let redis = RedisServer::start();
    let mut nodes = start_nodes(3, &[redis.url()], &prefix("kill9"));
    let devices = devices(&nodes, 5).await;
    let mut receipts = send_round(&devices, 0, 10).await;
    // Kill n1 with traffic in flight; more traffic follows while its clients move.
    let killed = nodes[0].quic();
    let on_killed: Vec<usize> = (0..devices.len())
        .filter(|&i| devices[i].client.stats().endpoint == Some(killed))
        .collect();
    assert!(!on_killed.is_empty(), "some clients were on n1");
    let before: Vec<u64> = devices.iter().map(|d| d.client.stats().sessions).collect();
    nodes[0].kill9();
    let killed_at = Instant::now();
    receipts.extend(send_round(&devices, 1, 10).await);
    let acked = acked(receipts).await;
    assert_all_delivered(&devices, &acked).await;
    for &i in &on_killed {
        // A loaded machine may make any client fail over spuriously at any moment (800 ms without a
        // frame): what counts is that it ends up on a live node.
        let client = &devices[i].client;
        let moved = wait_until(WAIT, || {
            let stats = client.stats();
            stats.connected && stats.endpoint != Some(killed)
        })
        .await;
        let stats = client.stats();
        assert!(moved, "moved: {stats:?}");
        assert!(stats.sessions > before[i], "a new session after the kill");
    }
    eprintln!(
        "{} clients moved off the killed node; all caught up {:?} after the kill",
        on_killed.len(),
        killed_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_names_the_other_nodes_so_a_client_knowing_one_survives_its_kill9() {
    let redis = RedisServer::start();
    let mut nodes = start_nodes(3, &[redis.url()], &prefix("welcome"));
    // n1's Welcome names n2 and n3 once its liveness loop has seen them answer (FERRY-HELLO-6).
    let ca = nodes[0].dir.path().join("cert.pem");
    let target = ferry_interop::driver::Target::new(nodes[0].quic(), &ca).expect("target");
    let mut others: Vec<String> = nodes[1..].iter().map(|n| n.quic().to_string()).collect();
    others.sort();
    let mut named = Vec::new();
    let deadline = Instant::now() + WAIT;
    while named != others && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let token = nodes[0].token("u9", "probe");
        let session = target.session(&token, "probe").await.expect("session");
        named = session.welcome.endpoints.clone();
        named.sort();
        session.close();
    }
    assert_eq!(named, others, "n1's Welcome.endpoints");
    // A device configured with n1 only, and its peer on n2.
    let fast = || {
        ClientBuilder::new()
            .heartbeat_interval(Duration::from_millis(250))
            .heartbeat_timeout(Duration::from_millis(800))
    };
    let lonely = device_knowing(fast(), &nodes, vec![nodes[0].quic()], "u0", "phone").await;
    let peer = device(&nodes, 1, "u1", "phone").await;
    for d in [&lonely, &peer] {
        assert!(wait_until(WAIT, || d.client.stats().connected).await);
    }
    let killed = nodes[0].quic();
    assert_eq!(lonely.client.stats().endpoint, Some(killed));
    nodes[0].kill9();
    let receipt = peer
        .client
        .send(conversation_of("u1"), "after the kill")
        .await
        .expect("send");
    let stored = tokio::time::timeout(WAIT, receipt)
        .await
        .expect("ack in time")
        .expect("stored");
    let got = wait_until(WAIT, || {
        let seen = lonely.seen.lock().expect("seen lock");
        seen.iter().any(|m| m.seq == stored.seq)
    })
    .await;
    let stats = lonely.client.stats();
    assert!(
        got,
        "the message reached the device that knew n1 only: {stats:?}"
    );
    assert!(
        stats.connected && stats.endpoint != Some(killed),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_id_is_free_at_once_and_a_live_one_is_refused_with_exit_3() {
    let redis = RedisServer::start();
    let prefix = prefix("ids");
    let mut nodes = start_nodes(2, &[redis.url()], &prefix);
    nodes[0].kill9();
    // The lease of the killed n1 is still in Redis (its TTL has not run out): the start-up probe finds
    // it dead and takes the id over without waiting.
    let started = Instant::now();
    let reborn = NodeProcess::start("n1", &[redis.url()], &prefix, Some(&nodes[1]))
        .unwrap_or_else(|(code, err)| panic!("the killed n1's id is free, got {code:?}: {err}"));
    eprintln!("n1 restarted in {:?} after its kill", started.elapsed());
    // n2 is alive: a second n2 must refuse, name the live node and exit with the conflict code.
    match NodeProcess::start("n2", &[redis.url()], &prefix, Some(&reborn)) {
        Ok(_) => panic!("a second live n2 started"),
        Err((code, stderr)) => {
            assert_eq!(code, Some(EXIT_NODE_CONFLICT), "stderr: {stderr}");
            let expected = format!(
                "node id \"n2\" is already in use by a live node at quic={}",
                nodes[1].quic()
            );
            assert!(stderr.contains(&expected), "stderr: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_moves_clients_to_the_named_nodes_without_loss() {
    let redis = RedisServer::start();
    let mut nodes = start_nodes(2, &[redis.url()], &prefix("drain"));
    // Clients of n1 know only n1: only GoAway can tell them where to go.
    let mut devices = Vec::new();
    for u in 0..4 {
        for device_id in ["phone", "laptop"] {
            devices.push(device(&nodes[..1], 0, &format!("u{u}"), device_id).await);
        }
    }
    for d in &devices {
        assert!(wait_until(WAIT, || d.client.stats().connected).await);
    }
    let mut receipts = send_round(&devices, 0, 10).await;
    // The wait for the exit blocks: keep the clients' drivers running on the other worker.
    let code = tokio::task::block_in_place(|| nodes[0].terminate());
    assert_eq!(code, Some(0), "a drained node exits cleanly");
    receipts.extend(send_round(&devices, 1, 10).await);
    let acked = acked(receipts).await;
    assert_all_delivered(&devices, &acked).await;
    for d in &devices {
        let stats = d.client.stats();
        assert_eq!(
            stats.endpoint,
            Some(nodes[1].quic()),
            "{}/{} on n2",
            d.user,
            d.device
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkill_and_restart_keeps_connections_and_loses_no_acked_message() {
    let mut redis = RedisServer::start();
    let nodes = start_nodes(2, &[redis.url()], &prefix("redis-kill"));
    // Default heartbeats (25 s): whether a connection survives is then the server's doing, not a
    // fast client timeout's on a loaded machine.
    let mut devices = Vec::new();
    for u in 0..4 {
        for device_id in ["phone", "laptop"] {
            let home = devices.len() % nodes.len();
            let builder = ClientBuilder::new();
            devices.push(device_with(builder, &nodes, home, &format!("u{u}"), device_id).await);
        }
    }
    for d in &devices {
        assert!(wait_until(WAIT, || d.client.stats().connected).await);
    }
    let mut receipts = send_round(&devices, 0, 10).await;
    let acked_before = acked(std::mem::take(&mut receipts)).await;
    let sessions: Vec<u64> = devices.iter().map(|d| d.client.stats().sessions).collect();
    tokio::task::block_in_place(|| redis.kill9());
    // Sends while Redis is away are refused with a retryable error; the clients keep them queued.
    receipts.extend(send_round(&devices, 1, 5).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| redis.restart());
    let mut acked = acked(receipts).await;
    for (conversation, seqs) in acked_before {
        let all = acked.entry(conversation).or_default();
        for (seq, sender) in seqs {
            assert!(all.insert(seq, sender).is_none(), "seq {seq} acked twice");
        }
    }
    assert_all_delivered(&devices, &acked).await;
    for (d, before) in devices.iter().zip(sessions) {
        let stats = d.client.stats();
        assert_eq!(
            stats.sessions, before,
            "{}/{} kept its connection",
            d.user, d.device
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_reregisters_sessions_and_resets_epochs_never_seq_backwards() {
    let redis = RedisServer::start();
    let prefix = prefix("flushall");
    let nodes = start_nodes(2, &[redis.url()], &prefix);
    let devices = devices(&nodes, 2).await;
    let first = acked(send_round(&devices, 0, 5).await).await;
    assert_all_delivered(&devices, &first).await;
    let epochs: BTreeMap<String, u64> = devices
        .iter()
        .filter_map(|d| {
            d.seen
                .lock()
                .unwrap()
                .last()
                .map(|m| (m.conversation.clone(), m.epoch))
        })
        .collect();
    let mut expected: Vec<String> = (1..=nodes.len())
        .map(|i| format!("{prefix}:n:{{n:n{i}}}"))
        .collect();
    expected.extend(
        devices
            .iter()
            .map(|d| format!("{prefix}:s:{{u:{}}}", d.user)),
    );
    tokio::task::block_in_place(|| redis.flushall());
    let flushed = Instant::now();
    // Every node renews its lease every third of its TTL (3 s by default); finding it gone, the node
    // registers the lease and every live session again — before the lease could have expired.
    // One EXISTS over all keys per poll, so the poll itself stays cheap next to the bound.
    let present = || -> usize {
        let mut args = vec!["EXISTS"];
        args.extend(expected.iter().map(String::as_str));
        redis
            .cli(&args)
            .trim()
            .parse()
            .expect("EXISTS answers a count")
    };
    let missing = || -> Vec<String> {
        expected
            .iter()
            .filter(|key| redis.cli(&["EXISTS", key.as_str()]).trim() != "1")
            .cloned()
            .collect()
    };
    let registered = wait_until(WAIT, || present() == expected.len()).await;
    let took = flushed.elapsed();
    assert!(registered, "not registered again: {:?}", missing());
    assert!(
        took <= Duration::from_secs(3),
        "re-registered only after {took:?}"
    );
    eprintln!("leases and sessions registered again {took:?} after FLUSHALL");
    let second = acked(send_round(&devices, 1, 5).await).await;
    // Every device hears of the new epoch; within an epoch seq never goes backwards.
    for d in &devices {
        let conversation = conversation_of(&d.user);
        let old = epochs[&conversation];
        let reset = wait_until(WAIT, || {
            d.seen
                .lock()
                .unwrap()
                .iter()
                .any(|m| m.conversation == conversation && m.epoch != old)
        })
        .await;
        assert!(reset, "{}/{}: messages in a new epoch", d.user, d.device);
        epochs_of(d, &conversation);
    }
    assert!(second.values().all(|seqs| !seqs.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_master_kill_resumes_by_itself_without_a_silent_gap() {
    // 3 masters with a replica each and a 1 s cluster-node-timeout: Redis promotes the replica of a
    // killed master within seconds, and Ferry must follow the new slot map by itself.
    ferry_test_support::init_logging();
    let mut redis = RedisCluster::start(3, 1);
    let nodes = start_nodes(2, &redis.urls(), &prefix("rc-master"));
    let devices = devices(&nodes, 3).await;
    let first = acked(send_round(&devices, 0, 5).await).await;
    assert_all_delivered(&devices, &first).await;
    tokio::task::block_in_place(|| redis.nodes_mut()[0].kill9());
    let second = acked(send_round(&devices, 1, 5).await).await;
    // Replication is asynchronous: a write acked by the old master may be lost. That is allowed only
    // as an epoch change the devices are told of; within an epoch no seq is skipped or repeated.
    for d in &devices {
        let conversation = conversation_of(&d.user);
        let me = devices_index(&devices, d);
        // Second-round sends were acked after the failover: whatever the epoch, they must arrive.
        let want: Vec<u64> = second[&conversation]
            .iter()
            .filter(|(_, sender)| **sender != me)
            .map(|(seq, _)| *seq)
            .collect();
        let done = wait_until(WAIT, || {
            let seen = d.seen.lock().unwrap();
            let newest = seen
                .iter()
                .filter(|m| m.conversation == conversation)
                .map(|m| m.epoch)
                .last();
            want.iter().all(|seq| {
                seen.iter().any(|m| {
                    m.conversation == conversation && m.seq == *seq && Some(m.epoch) == newest
                })
            })
        })
        .await;
        assert!(
            done,
            "{}/{}: caught up after the master kill; wanted seqs {want:?}, saw (epoch, seq) {:?}",
            d.user,
            d.device,
            d.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m.conversation == conversation)
                .map(|m| (m.epoch, m.seq))
                .collect::<Vec<_>>()
        );
        let last = epochs_of(d, &conversation);
        let seen = d.seen.lock().unwrap();
        if last.len() == 1 {
            // No epoch change: then nothing may be missing either.
            let seqs: Vec<u64> = seen
                .iter()
                .filter(|m| m.conversation == conversation)
                .map(|m| m.seq)
                .collect();
            let all: Vec<u64> = first[&conversation]
                .iter()
                .chain(second[&conversation].iter())
                .filter(|(_, sender)| **sender != devices_index(&devices, d))
                .map(|(seq, _)| *seq)
                .collect();
            assert_eq!(
                seqs, all,
                "{}/{}: same epoch, so nothing lost",
                d.user, d.device
            );
        }
    }
}

fn devices_index(devices: &[Device], d: &Device) -> usize {
    devices
        .iter()
        .position(|x| std::ptr::eq(x, d))
        .expect("a device of the list")
}

/// The last seq `d` reported per epoch of `conversation`, checking that within an epoch seq only rises
/// (never repeated, never backwards).
fn epochs_of(d: &Device, conversation: &str) -> BTreeMap<u64, u64> {
    let seen = d.seen.lock().unwrap();
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for m in seen.iter().filter(|m| m.conversation == conversation) {
        let previous = last.insert(m.epoch, m.seq).unwrap_or(0);
        assert!(
            m.seq > previous,
            "{}/{}: seq {} after {previous} in epoch {}",
            d.user,
            d.device,
            m.seq,
            m.epoch
        );
    }
    last
}

//! The cluster layer against real Redis: one `redis-server`, and a 3-master Redis Cluster. Each test runs
//! the same assertions on both topologies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_cluster::bus::{BusEvent, Kick};
use ferry_cluster::{
    replaces, Bus, ClusterError, Keys, LoginPolicy, NodeInfo, NodeRegistry, Prober, Redis,
    RedisTarget, Refresh, Renewal, SessionDirectory, SessionRef,
};
use ferry_test_support::redis::{RedisCluster, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TTL: Duration = Duration::from_secs(30);

/// Runs `case` against a single Redis and against a 3-master cluster, each with a fresh key prefix.
macro_rules! both_topologies {
    ($name:ident, $case:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_redis() {
                let server = RedisServer::start();
                $case(RedisTarget::Single(server.url())).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                let cluster = RedisCluster::start(3, 0);
                $case(RedisTarget::Cluster(cluster.urls())).await;
            }
        }
    };
}

both_topologies!(policies, policies_hold_across_nodes);
both_topologies!(
    refresh,
    refresh_restores_lost_entries_and_reports_replacement
);
both_topologies!(late, a_late_register_of_an_older_login_is_superseded);
both_topologies!(sweep, one_sweep_refreshes_restores_and_reports_each_session);
both_topologies!(release, release_node_frees_only_that_nodes_sessions);
both_topologies!(
    registry,
    start_up_probe_cleans_dead_nodes_and_refuses_live_twins
);
both_topologies!(bus, bus_reaches_the_users_node_only);

fn keys() -> Keys {
    static N: AtomicU64 = AtomicU64::new(0);
    Keys::new(&format!("t{}", N.fetch_add(1, Ordering::Relaxed)))
}

async fn directory(
    target: &RedisTarget,
    keys: &Keys,
    node: &str,
    policy: LoginPolicy,
) -> SessionDirectory {
    let redis = Redis::connect(target).await.expect("connect to redis");
    SessionDirectory::new(redis, keys.clone(), node, TTL, policy)
}

/// A session ref whose login is later than every one made before (logins in call order).
fn session<'a>(user: &'a str, device: &'a str, class: &'a str, id: &'a str) -> SessionRef<'a> {
    static LOGINS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SessionRef {
        user,
        device,
        class,
        session: id,
        login_ms: LOGINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    }
}

/// Every policy, checked against the one rule in `replaces`: a login on node B replaces exactly the
/// sessions on node A that the rule names, and they are gone from the directory.
async fn policies_hold_across_nodes(target: RedisTarget) {
    let devices = [
        ("phone", "mobile"),
        ("tablet", "mobile"),
        ("laptop", "desktop"),
    ];
    for policy in [
        LoginPolicy::All,
        LoginPolicy::OnePerClass,
        LoginPolicy::Single,
    ] {
        for new in [("phone", "mobile"), ("phone2", "mobile"), ("pc", "desktop")] {
            let keys = keys();
            let a = directory(&target, &keys, "node-a", LoginPolicy::All).await;
            for (i, (device, class)) in devices.iter().enumerate() {
                let id = format!("a{i}");
                assert!(a
                    .register(session("alice", device, class, &id))
                    .await
                    .unwrap()
                    .is_empty());
            }
            let b = directory(&target, &keys, "node-b", policy).await;
            let replaced = b
                .register(session("alice", new.0, new.1, "b1"))
                .await
                .unwrap();
            let mut got: Vec<String> = replaced.iter().map(|e| e.device.clone()).collect();
            got.sort();
            let mut want: Vec<String> = devices
                .iter()
                .filter(|old| replaces(policy, new, **old))
                .map(|(d, _)| d.to_string())
                .collect();
            want.sort();
            assert_eq!(got, want, "policy {policy:?}, new session {new:?}");
            assert!(replaced.iter().all(|e| e.node == "node-a"));
            let now: Vec<String> = b
                .sessions("alice")
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.device)
                .collect();
            assert_eq!(now.len(), devices.len() - want.len() + 1);
            assert!(now.contains(&new.0.to_string()));
        }
    }
}

async fn refresh_restores_lost_entries_and_reports_replacement(target: RedisTarget) {
    let keys = keys();
    let a = directory(&target, &keys, "node-a", LoginPolicy::Single).await;
    let b = directory(&target, &keys, "node-b", LoginPolicy::Single).await;
    let phone = session("bob", "phone", "mobile", "a1");
    a.register(phone).await.unwrap();
    assert_eq!(a.refresh(phone).await.unwrap(), Refresh::Refreshed);

    // Redis lost the entry (e.g. restarted empty): the heartbeat writes it again.
    let mut redis = Redis::connect(&target).await.unwrap();
    let _: () = redis::AsyncCommands::del(&mut redis, keys.sessions("bob"))
        .await
        .unwrap();
    assert_eq!(a.refresh(phone).await.unwrap(), Refresh::Restored);
    assert_eq!(a.sessions("bob").await.unwrap().len(), 1);

    // A login elsewhere replaced it: the old session learns so at its next heartbeat.
    let replaced = b
        .register(session("bob", "laptop", "desktop", "b1"))
        .await
        .unwrap();
    assert_eq!(replaced.len(), 1);
    assert_eq!(a.refresh(phone).await.unwrap(), Refresh::Replaced);
    // ... and restoring is refused while the newer session lives, so the old one cannot come back.
    assert_eq!(b.sessions("bob").await.unwrap()[0].device, "laptop");

    // Unregister removes only the session named.
    assert!(!a.unregister("bob", "laptop", "a1").await.unwrap());
    assert!(b.unregister("bob", "laptop", "b1").await.unwrap());
    assert!(b.sessions("bob").await.unwrap().is_empty());
}

/// While Redis is slow a node's register of a login can land after the client gave up on that node and
/// logged in elsewhere: the late, older login must not evict the newer session (which would then be
/// told SESSION_REPLACED and stop for good).
async fn a_late_register_of_an_older_login_is_superseded(target: RedisTarget) {
    let keys = keys();
    let a = directory(&target, &keys, "node-a", LoginPolicy::All).await;
    let b = directory(&target, &keys, "node-b", LoginPolicy::All).await;
    let older = session("erin", "phone", "mobile", "a1");
    let newer = session("erin", "phone", "mobile", "b1");
    assert!(b.register(newer).await.unwrap().is_empty());
    match a.register(older).await {
        Err(ClusterError::Superseded) => {}
        other => panic!("expected Superseded, got {other:?}"),
    }
    let entries = a.sessions("erin").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].session, "b1");
    assert_eq!(b.refresh(newer).await.unwrap(), Refresh::Refreshed);
    // The older session's own heartbeat learns it lost.
    assert_eq!(a.refresh(older).await.unwrap(), Refresh::Replaced);
}

/// A node's sweep refreshes all its sessions in one batch (more than one batch here) and answers for
/// each in order: a live entry is refreshed, a lost one restored, a replaced one reported.
async fn one_sweep_refreshes_restores_and_reports_each_session(target: RedisTarget) {
    let keys = keys();
    let a = directory(&target, &keys, "node-a", LoginPolicy::All).await;
    let b = directory(&target, &keys, "node-b", LoginPolicy::All).await;
    let users: Vec<String> = (0..300).map(|i| format!("s{i}")).collect();
    let ids: Vec<String> = (0..300).map(|i| format!("a{i}")).collect();
    let sessions: Vec<SessionRef<'_>> = users
        .iter()
        .zip(&ids)
        .map(|(user, id)| session(user, "phone", "mobile", id))
        .collect();
    for s in &sessions {
        assert!(a.register(*s).await.unwrap().is_empty());
    }
    // The registration put every user in node-a's set: releasing node-a finds them all (checked at
    // the end, after the sweep restored what was lost).
    let mut redis = Redis::connect(&target).await.unwrap();
    let _: () = redis::AsyncCommands::del(&mut redis, keys.sessions("s7"))
        .await
        .unwrap();
    b.register(session("s250", "phone", "mobile", "b250"))
        .await
        .unwrap();
    let results = a.refresh_many(&sessions).await;
    assert_eq!(results.len(), sessions.len());
    for (i, result) in results.into_iter().enumerate() {
        let want = match i {
            7 => Refresh::Restored,
            250 => Refresh::Replaced,
            _ => Refresh::Refreshed,
        };
        assert_eq!(result.unwrap(), want, "session {i}");
    }
    assert_eq!(a.sessions("s7").await.unwrap()[0].session, "a7");
    assert_eq!(a.sessions("s250").await.unwrap()[0].session, "b250");
    assert_eq!(b.release_node("node-a").await.unwrap(), 299);
}

async fn release_node_frees_only_that_nodes_sessions(target: RedisTarget) {
    let keys = keys();
    let a = directory(&target, &keys, "node-a", LoginPolicy::All).await;
    let b = directory(&target, &keys, "node-b", LoginPolicy::All).await;
    for (i, user) in ["u1", "u2", "u3"].iter().enumerate() {
        a.register(session(user, "phone", "mobile", &format!("a{i}")))
            .await
            .unwrap();
    }
    b.register(session("u1", "laptop", "desktop", "b0"))
        .await
        .unwrap();
    assert_eq!(b.release_node("node-a").await.unwrap(), 3);
    assert_eq!(b.release_node("node-a").await.unwrap(), 0, "idempotent");
    let left = b.sessions("u1").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].node, "node-b");
    assert!(b.sessions("u2").await.unwrap().is_empty());
}

/// A minimal `/healthz` endpoint standing in for a live node's HTTP address.
async fn live_http() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    });
    (addr, task)
}

/// An address nothing listens on (a node killed with -9).
async fn dead_http() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

async fn start_up_probe_cleans_dead_nodes_and_refuses_live_twins(target: RedisTarget) {
    let keys = keys();
    let prober = Prober::new(Duration::from_millis(300));
    let (live_addr, _live) = live_http().await;
    let redis = Redis::connect(&target).await.unwrap();
    let dir = |node: &str| {
        SessionDirectory::new(redis.clone(), keys.clone(), node, TTL, LoginPolicy::All)
    };

    // Node "a" is live; node "b" registered, holds sessions, then died (its lease is still fresh).
    let (a, _) = NodeRegistry::claim(
        redis.clone(),
        keys.clone(),
        NodeInfo::starting("a", "q-a", &live_addr),
        TTL,
        &prober,
        &dir("a"),
    )
    .await
    .expect("first node starts");
    let dead_addr = dead_http().await;
    let (_b, claimed) = NodeRegistry::claim(
        redis.clone(),
        keys.clone(),
        NodeInfo::starting("b", "q-b", &dead_addr),
        TTL,
        &prober,
        &dir("b"),
    )
    .await
    .expect("second node starts");
    assert_eq!(claimed.peers.len(), 1, "sees a as a live peer");
    dir("b")
        .register(session("carol", "phone", "mobile", "b1"))
        .await
        .unwrap();

    // A new node "c" starting: probes both, cleans b at once (no waiting for its TTL), keeps a.
    let started = Instant::now();
    let (c, claimed) = NodeRegistry::claim(
        redis.clone(),
        keys.clone(),
        NodeInfo::starting("c", "q-c", &dead_addr),
        TTL,
        &prober,
        &dir("c"),
    )
    .await
    .expect("third node starts");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(claimed.cleaned, vec![("b".to_string(), 1)]);
    assert!(
        dir("c").sessions("carol").await.unwrap().is_empty(),
        "b's sessions released"
    );
    let ids: Vec<String> = c
        .registered()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, vec!["a".to_string(), "c".to_string()]);

    // Another process with the live node a's id refuses to start, naming a's addresses.
    let twin = NodeRegistry::claim(
        redis.clone(),
        keys.clone(),
        NodeInfo::starting("a", "q-twin", &live_addr),
        TTL,
        &prober,
        &dir("a"),
    )
    .await;
    match twin {
        Err(ClusterError::NodeConflict { id, quic, .. }) => {
            assert_eq!((id.as_str(), quic.as_str()), ("a", "q-a"))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Redis loses the lease: renewing takes it again and says so (the caller re-registers sessions).
    assert_eq!(a.renew().await.unwrap(), Renewal::Renewed);
    let mut raw = redis.clone();
    let _: () = redis::AsyncCommands::del(&mut raw, keys.lease("a"))
        .await
        .unwrap();
    assert_eq!(a.renew().await.unwrap(), Renewal::Restored);

    // Leaving releases the node's own sessions and lease.
    dir("a")
        .register(session("dave", "phone", "mobile", "a1"))
        .await
        .unwrap();
    assert_eq!(a.leave(&dir("a")).await.unwrap(), 1);
    assert!(c.lease("a").await.unwrap().is_none());
}

async fn bus_reaches_the_users_node_only(target: RedisTarget) {
    let keys = keys();
    let (a, mut a_rx) = Bus::connect(&target, keys.clone(), "node-a", 64)
        .await
        .unwrap();
    let (b, mut b_rx) = Bus::connect(&target, keys.clone(), "node-b", 64)
        .await
        .unwrap();
    // Two sessions of erin on node b share one subscription; frank is on node a.
    b.subscribe("erin").await.unwrap();
    b.subscribe("erin").await.unwrap();
    a.subscribe("frank").await.unwrap();
    let kick = |device: &str| {
        BusEvent::Kick(Kick {
            device: device.into(),
            session: "s1".into(),
        })
    };
    // Subscriptions may take a moment to reach every shard; publish until one arrives (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        a.publish(&["erin", "nobody"], kick("probe")).await.unwrap();
        if let Ok(Some(env)) = tokio::time::timeout(Duration::from_millis(100), b_rx.recv()).await {
            break env;
        }
        assert!(Instant::now() < deadline, "no bus message arrived");
    };
    assert_eq!((got.origin.as_str(), got.user.as_str()), ("node-a", "erin"));
    while tokio::time::timeout(Duration::from_millis(200), b_rx.recv())
        .await
        .is_ok()
    {}

    // Own publications are skipped; other users' channels are not heard.
    a.publish(&["frank"], kick("own")).await.unwrap();
    b.publish(&["frank"], kick("x")).await.unwrap();
    let env = tokio::time::timeout(Duration::from_secs(2), a_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (env.origin.as_str(), env.event),
        ("node-b", Some(kick("x")))
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b_rx.recv())
            .await
            .is_err()
    );

    // One unsubscribe of two keeps the channel; the second drops it.
    b.unsubscribe("erin").await.unwrap();
    a.publish(&["erin"], kick("still")).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(2), b_rx.recv())
        .await
        .unwrap()
        .is_some());
    b.unsubscribe("erin").await.unwrap();
    assert!(b.subscribed_users().is_empty());
    a.publish(&["erin"], kick("gone")).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b_rx.recv())
            .await
            .is_err()
    );
}

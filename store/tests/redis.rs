//! What only the Redis store has: the durability check at open, retention, recovery from a lost script
//! cache, and the order of queued appends on a Redis Cluster under concurrent load.

use std::sync::Arc;

use bytes::Bytes;
use ferry_store::{Durability, NewMessage, RedisStore, RedisStoreOptions, Store, StoreError};
use ferry_test_support::redis::{RedisCluster, RedisServer};

const DIRECT: &str = "d:alice:bob";

fn msg(cmid: &str) -> NewMessage {
    NewMessage {
        conversation: DIRECT.to_owned(),
        sender: "alice".to_owned(),
        sender_device: "phone".to_owned(),
        client_msg_id: cmid.to_owned(),
        body: Bytes::from(format!("body of {cmid}")),
        server_time_ms: 1,
    }
}

async fn server_with(args: &'static [&'static str]) -> RedisServer {
    tokio::task::spawn_blocking(move || RedisServer::start_with(args))
        .await
        .unwrap()
}

#[tokio::test]
async fn open_reports_durability_and_require_durable_refuses_a_lazy_redis() {
    let durable = server_with(&[]).await;
    let store = RedisStore::open(RedisStoreOptions::new([durable.url()]))
        .await
        .unwrap();
    assert_eq!(store.durability(), &Durability::Durable);

    let lazy = server_with(&["--appendfsync", "everysec"]).await;
    let store = RedisStore::open(RedisStoreOptions::new([lazy.url()]))
        .await
        .unwrap();
    assert_eq!(
        store.durability(),
        &Durability::NotDurable("appendfsync everysec (need always)".into())
    );
    let strict = RedisStoreOptions {
        require_durable: true,
        ..RedisStoreOptions::new([lazy.url()])
    };
    match RedisStore::open(strict).await {
        Err(StoreError::Unavailable(reason)) => {
            assert!(reason.contains("appendfsync everysec"), "{reason}")
        }
        other => panic!("require_durable opened a lazy redis: {other:?}"),
    }
    let unreachable = RedisStoreOptions::new([format!("redis://127.0.0.1:{}", lazy.port() + 1)]);
    drop(lazy);
    assert!(matches!(
        RedisStore::open(unreachable).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn retention_trims_history_and_raises_first_seq() {
    let server = server_with(&[]).await;
    let options = RedisStoreOptions {
        retention_max_messages: Some(3),
        ..RedisStoreOptions::new([server.url()])
    };
    let store = RedisStore::open(options).await.unwrap();
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    for i in 0..2 {
        store.append(msg(&format!("m{i}"))).await.unwrap();
    }
    let bob = store.membership(DIRECT, "bob").await.unwrap().unwrap();
    assert_eq!(bob.first_seq, 1, "nothing trimmed yet");
    for i in 2..10 {
        store.append(msg(&format!("m{i}"))).await.unwrap();
    }
    let seqs: Vec<u64> = store
        .read(DIRECT, 0, u64::MAX, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, [8, 9, 10]);
    // The trimmed history is announced, not a silent gap.
    let bob = store.membership(DIRECT, "bob").await.unwrap().unwrap();
    assert_eq!(bob.first_seq, 8);
    let page = store.changed_since("bob", "tab", 0, 10).await.unwrap();
    let state = &page.conversations[0];
    assert_eq!((state.first_seq, state.head_seq), (8, 10));
}

/// Retention by age with the clock injected through each message's server time: an append trims what
/// is older than the age, the trim is announced through `first_seq`, group system messages count too.
#[tokio::test]
async fn retention_by_age_trims_old_history_and_raises_first_seq() {
    const MINUTE: u64 = 60_000;
    let server = server_with(&[]).await;
    let options = RedisStoreOptions {
        retention_max_age: Some(std::time::Duration::from_millis(10 * MINUTE)),
        ..RedisStoreOptions::new([server.url()])
    };
    let store = RedisStore::open(options).await.unwrap();
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    let at = |cmid: &str, minute: u64| NewMessage {
        server_time_ms: 1_000_000_000 + minute * MINUTE,
        ..msg(cmid)
    };
    // Seqs 1..=5 at minutes 0..=4.
    for minute in 0..5 {
        store
            .append(at(&format!("m{minute}"), minute))
            .await
            .unwrap();
    }
    // Minute 12: minutes 0 and 1 are older than 10 minutes (minute 2 is exactly 10 old: kept).
    store.append(at("late", 12)).await.unwrap();
    let seqs = |messages: Vec<ferry_protocol::frame::Message>| -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    };
    assert_eq!(
        seqs(store.read(DIRECT, 0, u64::MAX, 100).await.unwrap()),
        [3, 4, 5, 6]
    );
    let bob = store.membership(DIRECT, "bob").await.unwrap().unwrap();
    assert_eq!(
        bob.first_seq, 3,
        "the trimmed history is announced, not a silent gap"
    );
    let page = store.changed_since("bob", "tab", 0, 10).await.unwrap();
    assert_eq!(
        (
            page.conversations[0].first_seq,
            page.conversations[0].head_seq
        ),
        (3, 6)
    );
    // A conversation nobody writes to keeps its history until the next append (lazy trimming).
    store.append(at("much later", 100)).await.unwrap();
    assert_eq!(
        seqs(store.read(DIRECT, 0, u64::MAX, 100).await.unwrap()),
        [7]
    );
    assert_eq!(
        store
            .membership(DIRECT, "bob")
            .await
            .unwrap()
            .unwrap()
            .first_seq,
        7
    );

    // Group system messages are aged the same way.
    let group = "g:retention";
    let create = ferry_store::MembershipOp::Create {
        name: "team".into(),
        owner: "alice".into(),
        members: vec!["bob".into()],
    };
    store
        .change_membership(group, create, 1_000_000_000)
        .await
        .unwrap();
    let add = ferry_store::MembershipOp::Add {
        actor: "alice".into(),
        user: "carol".into(),
    };
    store
        .change_membership(group, add, 1_000_000_000 + 11 * MINUTE)
        .await
        .unwrap();
    assert_eq!(
        seqs(store.read(group, 0, u64::MAX, 100).await.unwrap()),
        [2]
    );
    let bob = store.membership(group, "bob").await.unwrap().unwrap();
    assert_eq!(bob.first_seq, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded_without_losing_order() {
    let server = server_with(&[]).await;
    let store = RedisStore::open(RedisStoreOptions::new([server.url()]))
        .await
        .unwrap();
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    store.append(msg("before")).await.unwrap();
    server.cli(&["SCRIPT", "FLUSH"]);
    let mut pending = Vec::new();
    for i in 0..50 {
        pending.push(store.queue_append(msg(&format!("q{i}"))).await.unwrap());
    }
    for (i, appended) in pending.into_iter().enumerate() {
        assert_eq!(appended.await.unwrap().seq, i as u64 + 2);
    }
    // The other scripts fall back the same way.
    server.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(store.set_read(DIRECT, "bob", 2).await.unwrap(), 2);
}

/// Many callers, each queueing its own run of appends without waiting, into conversations spread over
/// the cluster's slots: every caller's appends get increasing seqs in queue order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_keep_order_per_caller_on_a_cluster() {
    const CALLERS: usize = 20;
    const CONVS: usize = 6;
    const RUN: usize = 40;
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap();
    let store = Arc::new(
        RedisStore::open(RedisStoreOptions::new(cluster.urls()))
            .await
            .unwrap(),
    );
    let conv = |i: usize| format!("d:u{i}:v{i}");
    for i in 0..CONVS {
        store
            .ensure_direct(&conv(i), &format!("u{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move {
                let i = c % CONVS;
                let mut pending = Vec::new();
                for n in 0..RUN {
                    let message = NewMessage {
                        conversation: format!("d:u{i}:v{i}"),
                        sender: format!("u{i}"),
                        sender_device: "d".into(),
                        client_msg_id: format!("c{c}-{n}"),
                        body: Bytes::from_static(&[1; 64]),
                        server_time_ms: 1,
                    };
                    pending.push(store.queue_append(message).await.unwrap());
                }
                let mut seqs = Vec::new();
                for appended in pending {
                    seqs.push(appended.await.unwrap().seq);
                }
                seqs
            })
        })
        .collect();
    for caller in callers {
        let seqs = caller.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order: {seqs:?}"
        );
    }
    for i in 0..CONVS {
        let head = store
            .conversation(&conv(i))
            .await
            .unwrap()
            .unwrap()
            .head_seq;
        let stored = store.read(&conv(i), 0, u64::MAX, u32::MAX).await.unwrap();
        assert_eq!(stored.len() as u64, head);
        assert!(stored.iter().zip(1..).all(|(m, seq)| m.seq == seq));
    }
}

//! The index after a full disk inside one of its transactions (found by ferry-chaos, seed
//! 3994797176672254838): redb answered every later transaction with "Previous I/O error occurred",
//! so the index never caught up again, the tail filled and every Send was refused until a restart.
//! The injected fault (`LogFault`) makes the index's writes fail with ENOSPC as well as the log's.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_store::embedded::LogFault;
use ferry_store::{EmbeddedStore, EmbeddedStoreOptions, NewMessage, Store};

const DIRECT: &str = "d:alice:bob";

fn msg(i: usize) -> NewMessage {
    NewMessage {
        conversation: DIRECT.into(),
        sender: "alice".into(),
        sender_device: "dev".into(),
        client_msg_id: format!("m{i}"),
        body: Bytes::from(vec![7; 512]),
        server_time_ms: 1_000,
    }
}

/// Polls (bounded) until `done` holds.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn seqs(store: &EmbeddedStore) -> Vec<u64> {
    let read = store.read(DIRECT, 0, u64::MAX, u32::MAX).await.unwrap();
    read.iter().map(|m| m.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_recovers_after_a_full_disk_inside_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let fault = LogFault::default();
    let options = EmbeddedStoreOptions {
        log_fault: Some(fault.clone()),
        ..EmbeddedStoreOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), options.clone()).unwrap();
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    // Some indexed (in commits not yet durable, which the reopened index will have lost), the last
    // ones still in the tail when the disk fills: the indexer's next transaction meets the fault.
    for i in 1..=100 {
        assert_eq!(store.append(msg(i)).await.unwrap().seq, i as u64);
    }
    fault.set_disk_full(true);
    wait_for("an index failure", || {
        store.commit_stats().index_failures > 0
    })
    .await;
    // Everything acked stays readable while the index is broken.
    assert_eq!(seqs(&store).await, (1..=100).collect::<Vec<_>>());

    fault.set_disk_full(false);
    let commits = store.commit_stats().index_commits;
    wait_for("the index to catch up again", || {
        let stats = store.commit_stats();
        stats.unindexed_bytes == 0 && stats.index_commits > commits
    })
    .await;
    for i in 101..=120 {
        assert_eq!(store.append(msg(i)).await.unwrap().seq, i as u64);
    }
    wait_for("the new appends to be indexed", || {
        store.commit_stats().unindexed_bytes == 0
    })
    .await;
    assert_eq!(seqs(&store).await, (1..=120).collect::<Vec<_>>());
    drop(store);

    // After a restart, from the index: every acked message once, and retries are duplicates.
    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    assert_eq!(seqs(&store).await, (1..=120).collect::<Vec<_>>());
    for i in [1, 50, 100, 120] {
        let retry = store.append(msg(i)).await.unwrap();
        assert_eq!((retry.seq, retry.duplicate), (i as u64, true));
    }
}

//! The log-first commit point of the embedded store: torn frames, a full disk, bounded index lag,
//! segment rolling and deletion, and replay of every record type.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_store::embedded::LogFault;
use ferry_store::{
    EmbeddedStore, EmbeddedStoreOptions, MembershipOp, NewMessage, Store, StoreError,
};

const DIRECT: &str = "d:alice:bob";

fn msg(conv: &str, sender: &str, id: &str, body: &[u8]) -> NewMessage {
    NewMessage {
        conversation: conv.into(),
        sender: sender.into(),
        sender_device: "dev".into(),
        client_msg_id: id.into(),
        body: Bytes::copy_from_slice(body),
        server_time_ms: 1_000,
    }
}

/// Options with no indexer: everything written stays in the log tail, as after a crash that came
/// between the log fsync and the index build.
fn log_only() -> EmbeddedStoreOptions {
    EmbeddedStoreOptions {
        run_indexer: false,
        ..EmbeddedStoreOptions::default()
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// The newest segment that holds data (a fresh empty one is started at every open).
fn last_nonempty_segment(dir: &Path) -> std::path::PathBuf {
    segments(dir)
        .into_iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .expect("a segment with data")
}

async fn bodies(store: &EmbeddedStore, conv: &str) -> Vec<(u64, Vec<u8>)> {
    let messages = store.read(conv, 0, u64::MAX, u32::MAX).await.unwrap();
    messages
        .into_iter()
        .map(|m| (m.seq, m.body.to_vec()))
        .collect()
}

/// Polls (bounded) until the indexer has caught up.
async fn wait_indexed(store: &EmbeddedStore) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.commit_stats().unindexed_bytes > 0 {
        assert!(Instant::now() < deadline, "index never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_torn_final_frame_is_cut_off_and_the_log_continues_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path(), log_only()).unwrap();
        store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
        // One at a time: one group, one frame per message.
        for i in 1..=5u8 {
            store
                .append(msg(DIRECT, "alice", &format!("m{i}"), &[i; 100]))
                .await
                .unwrap();
        }
    }
    // A crash in the middle of writing the last frame: its end never reached the disk.
    let last = last_nonempty_segment(dir.path());
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);
    {
        let store = EmbeddedStore::open(dir.path(), log_only()).unwrap();
        let info = store.conversation(DIRECT).await.unwrap().unwrap();
        assert_eq!(info.head_seq, 4, "the torn 5th message was never acked");
        let read = bodies(&store, DIRECT).await;
        assert_eq!(read.len(), 4);
        assert!(read.iter().zip(1..).all(|((seq, _), n)| *seq == n));
        // The seq of the lost frame is assigned again, to a new message; nothing is left behind it.
        let again = store
            .append(msg(DIRECT, "alice", "m5-again", &[55; 100]))
            .await
            .unwrap();
        assert_eq!((again.seq, again.duplicate), (5, false));
    }
    // Garbage after the last complete frame (a header with no body) is cut off the same way.
    let last = last_nonempty_segment(dir.path());
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0xff, 0, 0, 0, 1, 2, 3, 4, 9, 9]);
    std::fs::write(&last, bytes).unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap();
    let read = bodies(&store, DIRECT).await;
    assert_eq!(read.len(), 5);
    assert_eq!(read[4], (5, vec![55; 100]));
    // The replayed groups reach the index; after that a reopen reads them from redb.
    wait_indexed(&store).await;
    drop(store);
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap();
    assert_eq!(bodies(&store, DIRECT).await.len(), 5);
}

#[tokio::test]
async fn a_full_disk_refuses_writes_as_retryable_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fault = LogFault::default();
    let options = EmbeddedStoreOptions {
        log_fault: Some(fault.clone()),
        ..EmbeddedStoreOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), options.clone()).unwrap();
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    store
        .change_membership(
            "g:1",
            MembershipOp::Create {
                name: "g".into(),
                owner: "alice".into(),
                members: vec![],
            },
            1_000,
        )
        .await
        .unwrap();
    for i in 1..=3 {
        store
            .append(msg(DIRECT, "alice", &format!("m{i}"), b"ok"))
            .await
            .unwrap();
    }

    fault.set_disk_full(true);
    let refused = store.append(msg(DIRECT, "alice", "m4", b"no room")).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    let add = MembershipOp::Add {
        actor: "alice".into(),
        user: "bob".into(),
    };
    let refused = store.change_membership("g:1", add.clone(), 1_000).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    // Nothing of the refused writes is visible; everything acked still is.
    assert_eq!(
        store.conversation(DIRECT).await.unwrap().unwrap().head_seq,
        3
    );
    assert_eq!(bodies(&store, DIRECT).await.len(), 3);
    assert!(store.membership("g:1", "bob").await.unwrap().is_none());

    fault.set_disk_full(false);
    // The retry of the same message is stored, with the next seq (no hole where the refusal was).
    let retried = store
        .append(msg(DIRECT, "alice", "m4", b"no room"))
        .await
        .unwrap();
    assert_eq!((retried.seq, retried.duplicate), (4, false));
    store.change_membership("g:1", add, 1_000).await.unwrap();
    drop(store);

    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    let read = bodies(&store, DIRECT).await;
    assert_eq!(read.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(store
        .membership("g:1", "bob")
        .await
        .unwrap()
        .unwrap()
        .is_member());
}

/// Found by ferry-chaos (disk full, then kill -9): a refused append had written part of its frame, the
/// segment was cut back but the write position was not, so the next append left a hole that the next
/// start read as a torn frame, cutting off every acked group behind it.
#[tokio::test]
async fn appends_after_a_full_disk_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fault = LogFault::default();
    let options = EmbeddedStoreOptions {
        log_fault: Some(fault.clone()),
        ..log_only()
    };
    let store = EmbeddedStore::open(dir.path(), options.clone()).unwrap();
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    for i in 1..=3 {
        store
            .append(msg(DIRECT, "alice", &format!("m{i}"), b"before"))
            .await
            .unwrap();
    }
    fault.set_disk_full(true);
    let refused = store.append(msg(DIRECT, "alice", "m4", b"no room")).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    fault.set_disk_full(false);
    for i in 4..=6 {
        let acked = store
            .append(msg(DIRECT, "alice", &format!("m{i}"), b"after"))
            .await
            .unwrap();
        assert_eq!(acked.seq, i);
    }
    drop(store);

    // Everything acked is replayed from the log, nothing is cut off as torn.
    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    let read = bodies(&store, DIRECT).await;
    assert_eq!(
        read.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_lag_is_bounded_by_backpressure_under_sustained_load() {
    const BOUND: usize = 8 << 10;
    const MAX_BATCH: usize = 32;
    const TASKS: usize = 32;
    const PER_TASK: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedStoreOptions {
        max_unindexed_bytes: BOUND,
        max_batch: MAX_BATCH,
        queue_capacity: 64,
        ..EmbeddedStoreOptions::default()
    };
    let store = Arc::new(EmbeddedStore::open(dir.path(), options).unwrap());
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let m = msg(DIRECT, "alice", &format!("t{t}-{i}"), &[3; 256]);
                    store.append(m).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = store.commit_stats();
    // The tail may exceed the bound by at most the one group written after the check.
    let one_group = (MAX_BATCH * 512) as u64;
    assert!(
        stats.peak_unindexed_bytes <= BOUND as u64 + one_group,
        "tail grew past its bound: {stats:?}"
    );
    assert!(
        stats.backpressure_waits > 0,
        "the bound never engaged: {stats:?}"
    );
    // Every acked message is readable while part of it is unindexed, and once all of it is indexed.
    let total = TASKS * PER_TASK;
    let ids: HashSet<_> = store
        .read(DIRECT, 0, u64::MAX, u32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.client_msg_id)
        .collect();
    assert_eq!(ids.len(), total);
    wait_indexed(&store).await;
    assert_eq!(
        store
            .read(DIRECT, 0, u64::MAX, u32::MAX)
            .await
            .unwrap()
            .len(),
        total
    );
}

#[tokio::test]
async fn segments_roll_and_are_deleted_once_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedStoreOptions {
        segment_bytes: 4 << 10,
        ..EmbeddedStoreOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), options.clone()).unwrap();
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    for i in 0..200 {
        store
            .append(msg(DIRECT, "alice", &format!("m{i}"), &[1; 256]))
            .await
            .unwrap();
    }
    // ~70 KiB of frames went through 4 KiB segments; indexed ones are deleted (bounded wait).
    wait_indexed(&store).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while segments(dir.path()).len() > 2 {
        assert!(Instant::now() < deadline, "{:?}", segments(dir.path()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(store);
    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    let read = bodies(&store, DIRECT).await;
    assert_eq!(read.len(), 200);
    assert!(read.iter().zip(1..).all(|((seq, _), n)| *seq == n));
}

#[tokio::test]
async fn every_record_type_is_replayed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let check = |store: EmbeddedStore| async move {
        let members = store.members("g:1").await.unwrap();
        assert_eq!(members, ["alice", "carol"]);
        let bob = store.membership("g:1", "bob").await.unwrap().unwrap();
        assert_eq!(bob.left_seq, Some(3));
        let group = store.conversation("g:1").await.unwrap().unwrap();
        assert_eq!((group.head_seq, group.name.as_str()), (4, "team"));
        assert_eq!(bodies(&store, "g:1").await.len(), 4);
        let page = store.changed_since("alice", "phone", 0, 10).await.unwrap();
        let direct = page
            .conversations
            .iter()
            .find(|c| c.conversation_id == DIRECT)
            .expect("direct conversation in Sync");
        assert_eq!(
            (direct.acked_seq, direct.read_seq, direct.head_seq),
            (1, 1, 1)
        );
        // The dedupe entry came back too.
        let dup = store
            .append(msg(DIRECT, "bob", "hello", b"x"))
            .await
            .unwrap();
        assert_eq!((dup.seq, dup.duplicate), (1, true));
        store
    };
    {
        let store = EmbeddedStore::open(dir.path(), log_only()).unwrap();
        store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
        store
            .append(msg(DIRECT, "bob", "hello", b"hi"))
            .await
            .unwrap();
        store
            .set_delivered(DIRECT, "alice", "phone", 1)
            .await
            .unwrap();
        store.set_read(DIRECT, "alice", 1).await.unwrap();
        let create = MembershipOp::Create {
            name: "team".into(),
            owner: "alice".into(),
            members: vec!["bob".into()],
        };
        store.change_membership("g:1", create, 1).await.unwrap();
        let add = MembershipOp::Add {
            actor: "alice".into(),
            user: "carol".into(),
        };
        store.change_membership("g:1", add, 2).await.unwrap();
        let remove = MembershipOp::Remove {
            actor: "bob".into(),
            user: "bob".into(),
        };
        store.change_membership("g:1", remove, 3).await.unwrap();
        store
            .append(msg("g:1", "carol", "c1", b"yo"))
            .await
            .unwrap();
        assert_eq!(store.commit_stats().indexed_groups, 0);
    }
    // From the log (replayed into memory), then from the index after the indexer caught up.
    let store =
        check(EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap()).await;
    wait_indexed(&store).await;
    drop(store);
    check(EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap()).await;
}

#[tokio::test]
async fn a_tail_of_many_segments_replays_in_order_and_a_hole_in_the_middle_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedStoreOptions {
        segment_bytes: 4 << 10,
        ..log_only()
    };
    let convs = ["d:alice:bob", "d:alice:carol", "d:alice:dave"];
    {
        let store = Arc::new(EmbeddedStore::open(dir.path(), options.clone()).unwrap());
        for conv in convs {
            let other = conv.rsplit(':').next().unwrap();
            store.ensure_direct(conv, "alice", other).await.unwrap();
        }
        // Concurrent senders, so groups hold several messages of several conversations.
        let tasks: Vec<_> = convs
            .iter()
            .map(|conv| {
                let (store, conv) = (store.clone(), conv.to_string());
                tokio::spawn(async move {
                    for i in 0..150 {
                        let id = format!("{conv}-{i}");
                        store
                            .append(msg(&conv, "alice", &id, &[7; 200]))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }
    // ~100 KiB of frames in 4 KiB segments: the replay decodes them on several threads.
    assert!(
        segments(dir.path()).len() > 10,
        "{:?}",
        segments(dir.path())
    );
    {
        let store = EmbeddedStore::open(dir.path(), options.clone()).unwrap();
        for conv in convs {
            let read = bodies(&store, conv).await;
            assert_eq!(read.len(), 150, "{conv}");
            assert!(
                read.iter().zip(1..).all(|((seq, _), n)| *seq == n),
                "{conv}"
            );
            // Every dedupe entry came back, whichever thread decoded its segment.
            let dup = store
                .append(msg(conv, "alice", &format!("{conv}-149"), b"again"))
                .await
                .unwrap();
            assert_eq!((dup.seq, dup.duplicate), (150, true));
        }
    }
    // A corrupt frame in an older segment is a hole in acked history: opening fails rather than
    // serve what follows it.
    let middle = segments(dir.path())[5].clone();
    let mut bytes = std::fs::read(&middle).unwrap();
    assert!(bytes.len() > 40, "a segment with frames");
    bytes[30] ^= 0xff;
    std::fs::write(&middle, bytes).unwrap();
    let err = EmbeddedStore::open(dir.path(), options).unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend(reason) if reason.contains("missing")),
        "{err:?}"
    );
}

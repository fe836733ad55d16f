//! SIGKILL between the log fsync and the index build: everything acked is readable after restart,
//! exactly once, with gap-free seqs, and its dedupe entries still answer retries.
//!
//! The parent re-runs this test binary as a child process (selected by `FERRY_LOG_CHILD_DIR`, as in
//! `crash.rs`). The child runs with no indexer, so every ack it prints is durable only in the log when
//! it is killed; the restart has to rebuild it from the log.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_store::{EmbeddedStore, EmbeddedStoreOptions, NewMessage, Store};

const CHILD_ENV: &str = "FERRY_LOG_CHILD_DIR";
const CONVS: usize = 3;
const ACKS_BEFORE_KILL: usize = 400;

fn conv(i: usize) -> String {
    format!("d:a{i}:b{i}")
}

fn new_message(i: usize, cmid: &str) -> NewMessage {
    NewMessage {
        conversation: conv(i),
        sender: format!("a{i}"),
        sender_device: "dev".into(),
        client_msg_id: cmid.to_owned(),
        body: Bytes::from(cmid.as_bytes().to_vec()),
        server_time_ms: 1,
    }
}

/// Child mode: append from several tasks until killed, printing `ACK <conv index> <seq> <cmid>`
/// after each acknowledged append. A no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let options = EmbeddedStoreOptions {
        run_indexer: false,
        ..EmbeddedStoreOptions::default()
    };
    let store = Arc::new(EmbeddedStore::open(dir.as_ref(), options).unwrap());
    for i in 0..CONVS {
        store
            .ensure_direct(&conv(i), &format!("a{i}"), &format!("b{i}"))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..12)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                // Bounded: the parent kills us long before this ends.
                for n in 0..50_000 {
                    let i = t % CONVS;
                    let cmid = format!("t{t}-{n}");
                    let appended = store.append(new_message(i, &cmid)).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {i} {} {cmid}", appended.seq).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_appends_in_the_unindexed_log_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "log_child_appender",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked: Vec<(usize, u64, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ACK") {
            continue;
        }
        let i: usize = parts.next().unwrap().parse().unwrap();
        let seq: u64 = parts.next().unwrap().parse().unwrap();
        acked.push((i, seq, parts.next().unwrap().to_owned()));
        if acked.len() >= ACKS_BEFORE_KILL || Instant::now() > deadline {
            break;
        }
    }
    // SIGKILL: no destructor runs, nothing reaches the index.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        acked.len() >= ACKS_BEFORE_KILL,
        "child acked only {}",
        acked.len()
    );

    let verify = |store: Arc<EmbeddedStore>, acked: Vec<(usize, u64, String)>| async move {
        let mut stored: HashMap<usize, HashMap<String, u64>> = HashMap::new();
        for i in 0..CONVS {
            let messages = store.read(&conv(i), 0, u64::MAX, u32::MAX).await.unwrap();
            assert!(
                messages.iter().zip(1..).all(|(m, seq)| m.seq == seq),
                "gap-free seqs in {}",
                conv(i)
            );
            let head = store
                .conversation(&conv(i))
                .await
                .unwrap()
                .unwrap()
                .head_seq;
            assert_eq!(head, messages.len() as u64);
            let ids: HashSet<_> = messages.iter().map(|m| &m.client_msg_id).collect();
            assert_eq!(
                ids.len(),
                messages.len(),
                "each message stored exactly once"
            );
            for m in &messages {
                assert_eq!(m.body.as_ref(), m.client_msg_id.as_bytes());
            }
            stored.insert(
                i,
                messages
                    .iter()
                    .map(|m| (m.client_msg_id.clone(), m.seq))
                    .collect(),
            );
        }
        for (i, seq, cmid) in &acked {
            assert_eq!(stored[i].get(cmid), Some(seq), "acked {cmid} lost or moved");
        }
        // A retry of an acked message is recognised from the recovered dedupe entries.
        let (i, seq, cmid) = &acked[acked.len() / 2];
        let retry = store.append(new_message(*i, cmid)).await.unwrap();
        assert_eq!((retry.seq, retry.duplicate), (*seq, true));
        store
    };
    // First from the replayed log tail, then (after the indexer caught up and a clean close) from the
    // index alone.
    let store = Arc::new(EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap());
    let store = verify(store, acked.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.commit_stats().unindexed_bytes > 0 {
        assert!(Instant::now() < deadline, "index never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(store);
    let store = Arc::new(EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap());
    assert_eq!(
        store.commit_stats().unindexed_bytes,
        0,
        "nothing left to replay"
    );
    verify(store, acked).await;
}

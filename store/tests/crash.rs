//! Kill -9 in the middle of a stream of appends: everything acked before the kill survives, once, with
//! gap-free seqs.
//!
//! The parent test re-runs this test binary as a child process in "child mode" (selected by
//! `FERRY_STORE_CHILD_DIR`); the child appends until killed and prints each ack. With
//! `FERRY_STORE_CHILD_NO_INDEX` set the child runs no indexer, so every ack is durable only in the log
//! when it dies: the kill lands between the log fsync and the index build.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_store::{EmbeddedStore, EmbeddedStoreOptions, NewMessage, Store};

const CHILD_ENV: &str = "FERRY_STORE_CHILD_DIR";
const NO_INDEX_ENV: &str = "FERRY_STORE_CHILD_NO_INDEX";
const CONVS: usize = 3;
const ACKS_BEFORE_KILL: usize = 300;

fn conv(i: usize) -> String {
    format!("d:a{i}:b{i}")
}

/// The child's append `cmid` to `conv` (sent by its first member).
fn message(conv: &str, cmid: &str) -> NewMessage {
    // conv(i) is "d:a{i}:b{i}" and a{i} is the sender.
    let sender = conv.split(':').nth(1).unwrap_or_default();
    NewMessage {
        conversation: conv.to_owned(),
        sender: sender.to_owned(),
        sender_device: "dev".into(),
        client_msg_id: cmid.to_owned(),
        body: Bytes::from_static(&[7; 256]),
        server_time_ms: 1,
    }
}

/// Child mode: append from several tasks until killed, printing `ACK <conv> <seq> <client_msg_id>`
/// after each acknowledged append. A no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let options = EmbeddedStoreOptions {
        run_indexer: std::env::var_os(NO_INDEX_ENV).is_none(),
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
                for n in 0..100_000 {
                    let i = t % CONVS;
                    let cmid = format!("t{t}-{n}");
                    let appended = store.append(message(&conv(i), &cmid)).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {} {} {cmid}", conv(i), appended.seq).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

type Acked = Vec<(String, u64, String)>;

/// Runs the child until it acked [`ACKS_BEFORE_KILL`] appends, then SIGKILLs it.
fn run_child_and_kill(dir: &std::path::Path, no_index: bool) -> Acked {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_appender",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if no_index {
        command.env(NO_INDEX_ENV, "1");
    }
    let mut child = command.spawn().unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Bounded by the child's own bounded loop: its stdout closes when it exits.
    while acked.len() < ACKS_BEFORE_KILL {
        let Some(line) = lines.next() else { break };
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let mut parts = rest.split(' ');
            let (conv, seq, cmid) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            acked.push((conv.to_owned(), seq.parse().unwrap(), cmid.to_owned()));
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert_eq!(acked.len(), ACKS_BEFORE_KILL, "child stopped early");
    acked
}

/// Every acked append is stored exactly once at its acked seq, and seqs have no gap.
async fn verify(store: &EmbeddedStore, acked: &Acked) {
    let mut stored: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for i in 0..CONVS {
        let head = store
            .conversation(&conv(i))
            .await
            .unwrap()
            .unwrap()
            .head_seq;
        let messages = store.read(&conv(i), 0, u64::MAX, u32::MAX).await.unwrap();
        assert_eq!(messages.len() as u64, head);
        let by_id = stored.entry(conv(i)).or_default();
        for (message, seq) in messages.iter().zip(1..) {
            assert_eq!(message.seq, seq, "gap in {}", conv(i));
            assert!(
                by_id.insert(message.client_msg_id.clone(), seq).is_none(),
                "stored twice"
            );
        }
    }
    for (conv, seq, cmid) in acked {
        assert_eq!(
            stored[conv].get(cmid),
            Some(seq),
            "acked {conv} {seq} {cmid} lost"
        );
    }
}

#[tokio::test]
async fn acked_appends_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let acked = run_child_and_kill(dir.path(), false);
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap();
    verify(&store, &acked).await;
}

#[tokio::test]
async fn acked_appends_in_the_unindexed_log_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let acked = run_child_and_kill(dir.path(), true);
    // First from the replayed log tail...
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap();
    assert!(
        store.commit_stats().unindexed_bytes > 0,
        "the kill came after indexing"
    );
    verify(&store, &acked).await;
    // ...where the dedupe entries came back too: a retry of an acked append is a duplicate...
    let (conv_id, seq, cmid) = &acked[acked.len() / 2];
    let retry = store.append(message(conv_id, cmid)).await.unwrap();
    assert_eq!((retry.seq, retry.duplicate), (*seq, true));
    // ...then, once indexed (bounded wait) and reopened, from the index alone.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.commit_stats().unindexed_bytes > 0 {
        assert!(Instant::now() < deadline, "index never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(store);
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap();
    assert_eq!(
        store.commit_stats().unindexed_bytes,
        0,
        "nothing left to replay"
    );
    verify(&store, &acked).await;
}

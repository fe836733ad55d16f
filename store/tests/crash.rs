//! Kill -9 in the middle of a stream of appends: everything acked before the kill survives, once, with
//! gap-free seqs — for the process using the store (embedded or Redis), and for `redis-server` itself.
//!
//! The parent test re-runs this test binary as a child process in "child mode" (selected by
//! `FERRY_STORE_CHILD_DIR`, or `FERRY_STORE_CHILD_REDIS` for a `RedisStore`); the child appends until
//! killed and prints each ack. With `FERRY_STORE_CHILD_NO_INDEX` set the embedded child runs no indexer,
//! so every ack is durable only in the log when it dies: the kill lands between the log fsync and the
//! index build.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_store::{
    EmbeddedStore, EmbeddedStoreOptions, NewMessage, RedisStore, RedisStoreOptions, Store,
};
use ferry_test_support::redis::RedisServer;

const CHILD_ENV: &str = "FERRY_STORE_CHILD_DIR";
const CHILD_REDIS_ENV: &str = "FERRY_STORE_CHILD_REDIS";
const NO_INDEX_ENV: &str = "FERRY_STORE_CHILD_NO_INDEX";
const CONVS: usize = 3;
const ACKS_BEFORE_KILL: usize = 300;

fn conv(i: usize) -> String {
    format!("d:a{i}:b{i}")
}

/// Child mode: append from several tasks until killed, printing `ACK <conv> <seq> <client_msg_id>`
/// after each acknowledged append. A no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_appender() {
    let store: Arc<dyn Store> = if let Ok(dir) = std::env::var(CHILD_ENV) {
        let options = EmbeddedStoreOptions {
            run_indexer: std::env::var_os(NO_INDEX_ENV).is_none(),
            ..EmbeddedStoreOptions::default()
        };
        Arc::new(EmbeddedStore::open(dir.as_ref(), options).unwrap())
    } else if let Ok(url) = std::env::var(CHILD_REDIS_ENV) {
        Arc::new(
            RedisStore::open(RedisStoreOptions::new([url]))
                .await
                .unwrap(),
        )
    } else {
        return;
    };
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
                    let appended = store.append(append_of(i, cmid.clone())).await.unwrap();
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

type Ack = (String, u64, String);

/// Runs the child appender with `env` set, kills it with SIGKILL after [`ACKS_BEFORE_KILL`] acks and
/// returns the acks it printed.
fn acks_of_killed_child(env: (&str, &str)) -> Vec<Ack> {
    acks_of_killed_child_with(&[env])
}

/// [`acks_of_killed_child`] with several variables set.
fn acks_of_killed_child_with(env: &[(&str, &str)]) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_appender",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut acked: Vec<(String, u64, String)> = Vec::new();
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

#[tokio::test]
async fn acked_appends_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let acked = acks_of_killed_child((CHILD_ENV, dir.path().to_str().unwrap()));
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap();
    assert_acked_stored_once(&store, &acked).await;
    assert_retries_are_duplicates(&store, &acked).await;
}

#[tokio::test]
async fn acked_appends_in_the_unindexed_log_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let acked = acks_of_killed_child_with(&[
        (CHILD_ENV, dir.path().to_str().unwrap()),
        (NO_INDEX_ENV, "1"),
    ]);
    // First from the replayed log tail...
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).unwrap();
    assert!(
        store.commit_stats().unindexed_bytes > 0,
        "the kill came after indexing"
    );
    assert_acked_stored_once(&store, &acked).await;
    // ...where the dedupe entries came back too: a retry of an acked append is a duplicate...
    let (conv_id, seq, cmid) = &acked[acked.len() / 2];
    let i = (0..CONVS)
        .find(|&i| conv(i) == *conv_id)
        .expect("a known conversation");
    let retry = store.append(append_of(i, cmid.clone())).await.unwrap();
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
    assert_acked_stored_once(&store, &acked).await;
    // ...and so did the dedupe entries, now from the index's dedupe log alone.
    assert_retries_are_duplicates(&store, &acked).await;
}

/// A retry (same conversation, sender and client_msg_id) of acked appends — a sample of them — is
/// answered as a duplicate with the original seq.
async fn assert_retries_are_duplicates(store: &impl Store, acked: &[Ack]) {
    for (conv_id, seq, cmid) in acked.iter().step_by(acked.len() / 20 + 1) {
        let i = (0..CONVS)
            .find(|&i| conv(i) == *conv_id)
            .expect("a known conversation");
        let retry = store.append(append_of(i, cmid.clone())).await.unwrap();
        assert_eq!(
            (retry.seq, retry.duplicate),
            (*seq, true),
            "{conv_id} {cmid}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_appends_survive_kill_9_of_a_redis_store_user() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let acked = acks_of_killed_child((CHILD_REDIS_ENV, &server.url()));
    let store = RedisStore::open(RedisStoreOptions::new([server.url()]))
        .await
        .unwrap();
    assert_acked_stored_once(&store, &acked).await;
}

/// Every conversation is gap-free from seq 1 with each message once, and every ack is stored at its
/// seq.
async fn assert_acked_stored_once(store: &impl Store, acked: &[Ack]) {
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

fn append_of(i: usize, cmid: String) -> NewMessage {
    NewMessage {
        conversation: conv(i),
        sender: format!("a{i}"),
        sender_device: "dev".into(),
        client_msg_id: cmid,
        body: Bytes::from_static(&[7; 256]),
        server_time_ms: 1,
    }
}

/// SIGKILL of `redis-server` (AOF, fsync always) under traffic; restarted on the same directory it has
/// every acknowledged append exactly once at its seq, gap-free, in the same epochs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_appends_survive_kill_9_of_redis_server() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let mut server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let options = RedisStoreOptions {
        require_durable: true,
        ..RedisStoreOptions::new([server.url()])
    };
    let store = Arc::new(RedisStore::open(options.clone()).await.unwrap());
    let mut epochs = HashMap::new();
    for i in 0..CONVS {
        store
            .ensure_direct(&conv(i), &format!("a{i}"), &format!("b{i}"))
            .await
            .unwrap();
        let info = store.conversation(&conv(i)).await.unwrap().unwrap();
        epochs.insert(conv(i), info.epoch);
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..12)
        .map(|t| {
            let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                // Bounded: stops at the first error (Redis is dead) or when told to.
                for n in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let cmid = format!("t{t}-{n}");
                    match store.append(append_of(t % CONVS, cmid.clone())).await {
                        Ok(appended) => {
                            acked
                                .lock()
                                .unwrap()
                                .push((conv(t % CONVS), appended.seq, cmid))
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    // Bounded wait for enough acks, then kill Redis under traffic.
    for _ in 0..600 {
        if acked.lock().unwrap().len() >= ACKS_BEFORE_KILL {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    drop(store);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ACKS_BEFORE_KILL, "only {} acks", acked.len());

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let store = RedisStore::open(RedisStoreOptions::new([server.url()]))
        .await
        .unwrap();
    assert_acked_stored_once(&store, &acked).await;
    for i in 0..CONVS {
        let info = store.conversation(&conv(i)).await.unwrap().unwrap();
        assert_eq!(info.epoch, epochs[&conv(i)], "epoch changed after restart");
    }
}

/// FLUSHALL: Redis lost everything. Conversations come back (ensure_direct) with a new epoch and seqs
/// from 1 — new numbers only in the new epoch; a lost group is gone; the store epoch changes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_gives_new_epochs_and_seq_restarts_only_in_them() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = RedisStore::open(RedisStoreOptions::new([server.url()]))
        .await
        .unwrap();
    store.ensure_direct(&conv(0), "a0", "b0").await.unwrap();
    let group = "g:00000000000000000000000000000001";
    let create = ferry_store::MembershipOp::Create {
        name: "g".into(),
        owner: "a0".into(),
        members: vec!["b0".into()],
    };
    store.change_membership(group, create, 1).await.unwrap();
    let mut last = None;
    for n in 0..5 {
        last = Some(store.append(append_of(0, format!("m{n}"))).await.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(last.seq, 5);
    let store_epoch = store.store_epoch();
    let token = store
        .changed_since("a0", "dev", 0, 10)
        .await
        .unwrap()
        .next_token;

    server.flushall();

    // Nothing is found; the append does not invent a conversation or a seq.
    assert!(store.conversation(&conv(0)).await.unwrap().is_none());
    assert!(matches!(
        store.append(append_of(0, "after".into())).await,
        Err(ferry_store::StoreError::NotFound)
    ));
    store.ensure_direct(&conv(0), "a0", "b0").await.unwrap();
    let again = store.append(append_of(0, "m0".into())).await.unwrap();
    assert_ne!(
        again.epoch, last.epoch,
        "same epoch after Redis lost the data"
    );
    assert_eq!((again.seq, again.duplicate), (1, false));
    assert!(store.conversation(group).await.unwrap().is_none());
    // Sync notices the store epoch change and reports from the start.
    let page = store.changed_since("a0", "dev", token, 10).await.unwrap();
    assert_ne!(store.store_epoch(), store_epoch);
    assert_eq!(page.conversations.len(), 1);
    assert_eq!(page.conversations[0].epoch, again.epoch);
    assert_eq!(page.conversations[0].head_seq, 1);
}

//! Crash safety of the real binary: SIGKILL mid-traffic, restart on the same data dir, and check that
//! every acknowledged message is there exactly once with gap-free seqs, and unacknowledged ones are
//! either fully there or absent.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::ids;
use ferry_server::auth::TokenSecret;
use ferry_tests::driver::Target;
use ferry_tests::process::ServerProcess;

const CONNECTIONS: usize = 4;
const PER_CONNECTION: usize = 500;
const WINDOW: usize = 50;
const KILL_AFTER_ACKS: usize = 800;

fn conversation(i: usize) -> String {
    ids::direct_conversation_id(&format!("user{i}"), "sink").unwrap()
}

fn token(dir: &std::path::Path, i: usize) -> String {
    let secret = TokenSecret::load(&dir.join(ferry_server::server::SECRET_FILE)).unwrap();
    secret.mint(
        &format!("user{i}"),
        "dev",
        Duration::from_secs(600),
        std::time::SystemTime::now(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_traffic_loses_no_acked_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let target = Target::new(server.addr, &server.ca).unwrap();

    // conversation index → (client_msg_id → acked seq)
    let acked: Arc<Mutex<Vec<HashMap<String, u64>>>> =
        Arc::new(Mutex::new(vec![HashMap::new(); CONNECTIONS]));
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let session = target.session(&token(dir.path(), i), "dev").await.unwrap();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = session.open(&conversation(i)).await.unwrap();
            for window in 0..PER_CONNECTION / WINDOW {
                for n in 0..WINDOW {
                    let id = format!("c{i}-m{}", window * WINDOW + n);
                    if stream.send_message(&id, &[b'x'; 256]).await.is_err() {
                        return;
                    }
                }
                for _ in 0..WINDOW {
                    let Ok(ack) = stream.expect_send_ack().await else {
                        return;
                    };
                    acked.lock().unwrap()[i].insert(ack.client_msg_id, ack.seq);
                }
            }
        }));
    }
    // Kill once enough acks arrived (bounded wait).
    for _ in 0..3000 {
        let total: usize = acked.lock().unwrap().iter().map(HashMap::len).sum();
        if total >= KILL_AFTER_ACKS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    let acked = acked.lock().unwrap().clone();
    let total_acked: usize = acked.iter().map(HashMap::len).sum();
    assert!(
        total_acked >= KILL_AFTER_ACKS,
        "only {total_acked} acks before the kill"
    );
    assert!(
        total_acked < CONNECTIONS * PER_CONNECTION,
        "the kill came after everything was acked"
    );

    let server = ServerProcess::start(dir.path());
    let target = Target::new(server.addr, &server.ca).unwrap();
    for (i, acked) in acked.iter().enumerate() {
        let session = target.session(&token(dir.path(), i), "dev").await.unwrap();
        let mut stream = session.open(&conversation(i)).await.unwrap();
        let mut stored: BTreeMap<u64, String> = BTreeMap::new();
        let mut after = 0;
        loop {
            let page = stream.pull(after, 100).await.unwrap();
            for m in &page.messages {
                assert!(
                    stored.insert(m.seq, m.client_msg_id.clone()).is_none(),
                    "seq {} twice",
                    m.seq
                );
            }
            after = page.messages.last().map_or(after, |m| m.seq);
            if !page.has_more {
                assert_eq!(after, page.head_seq);
                break;
            }
        }
        // Gap-free from 1.
        let seqs: Vec<u64> = stored.keys().copied().collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "conversation {i} has gaps"
        );
        // Every acked message is there, at its acked seq.
        for (id, seq) in acked {
            assert_eq!(stored.get(seq), Some(id), "acked {id} missing at seq {seq}");
        }
        // Every stored message was sent, and none twice.
        let mut ids: Vec<&String> = stored.values().collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            count,
            "a client_msg_id stored twice in conversation {i}"
        );
        assert!(ids.iter().all(|id| id.starts_with(&format!("c{i}-m"))));

        // Retrying every message now stores the missing ones once and answers duplicates for the rest.
        for n in 0..PER_CONNECTION {
            let id = format!("c{i}-m{n}");
            let ack = stream.send_and_ack(&id, &[b'x'; 256]).await.unwrap();
            let was_stored = stored.values().any(|s| *s == id);
            assert_eq!(ack.duplicate, was_stored, "{id}");
        }
        let page = stream.pull(PER_CONNECTION as u64 - 1, 10).await.unwrap();
        assert_eq!(
            page.head_seq, PER_CONNECTION as u64,
            "each message exactly once after retries"
        );
    }
}

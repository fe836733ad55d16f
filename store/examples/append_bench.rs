//! Durable append throughput of the embedded store: 20,000 messages of 256 bytes over 50 conversations,
//! first from 1 task, then from 50 concurrent tasks, each run in a fresh temporary directory.
//!
//! `cargo run --release -p ferry-store --example append_bench [TASKS...]`
//!
//! Prints throughput, commits (fsyncs), the mean group per commit and the p50/p99 latency of one append
//! (queue → durable ack).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_store::{EmbeddedStore, EmbeddedStoreOptions, NewMessage, Store};

const MESSAGES: usize = 20_000;
const CONVERSATIONS: usize = 50;

#[tokio::main]
async fn main() {
    // Optional arguments: the task counts to run (default: 1 and 50).
    let mut counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if counts.is_empty() {
        counts = vec![1, 50];
    }
    for tasks in counts {
        run(tasks).await;
    }
}

async fn run(tasks: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        Arc::new(EmbeddedStore::open(dir.path(), EmbeddedStoreOptions::default()).expect("open"));
    for c in 0..CONVERSATIONS {
        store
            .ensure_direct(&format!("d:a{c}:b{c}"), &format!("a{c}"), &format!("b{c}"))
            .await
            .expect("ensure");
    }
    let body = Bytes::from(vec![0x5a; 256]);
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let store = store.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(MESSAGES / tasks + 1);
                for n in (t..MESSAGES).step_by(tasks) {
                    let sent = Instant::now();
                    let c = n % CONVERSATIONS;
                    store
                        .append(NewMessage {
                            conversation: format!("d:a{c}:b{c}"),
                            sender: format!("a{c}"),
                            sender_device: "bench".into(),
                            client_msg_id: format!("{n:08x}-bench-client-message-id"),
                            body: body.clone(),
                            server_time_ms: ferry_protocol::unix_millis(
                                std::time::SystemTime::now(),
                            ),
                        })
                        .await
                        .expect("append");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(MESSAGES);
    for handle in handles {
        latencies.extend(handle.await.expect("task"));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let stats = store.commit_stats();
    println!(
        "{tasks:>2} task(s): {MESSAGES} appends in {:.2} s = {:.0} msg/s, {} commits, mean batch {:.1}, max batch {}, mean commit {:.0} µs, p50 {:.2} ms, p99 {:.2} ms",
        elapsed.as_secs_f64(),
        MESSAGES as f64 / elapsed.as_secs_f64(),
        stats.commits,
        stats.mean_batch(),
        stats.max_batch,
        stats.commit_micros as f64 / stats.commits.max(1) as f64,
        percentile(50).as_secs_f64() * 1e3,
        percentile(99).as_secs_f64() * 1e3,
    );
}

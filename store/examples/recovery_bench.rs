//! Start-up time after SIGKILL with a long unindexed log tail.
//!
//! The example re-runs itself as a child that opens a store with no indexer, appends `MESSAGES`
//! messages of 256 bytes (50 conversations, 50 concurrent tasks) so that all of them sit in the log
//! tail, and reports when done; the parent then kills it with SIGKILL, times `EmbeddedStore::open`
//! (the replay) and the first read of the newest message, and lets the indexer catch up.
//!
//! `cargo run --release -p ferry-store --example recovery_bench [MESSAGES]` (default 1,000,000)
//!
//! Writing the tail takes minutes on a loaded machine; with `FERRY_RECOVERY_KEEP=<dir>` the killed
//! child's data directory is kept there, and a later run finding it recovers a copy of it instead of
//! writing again (so the same log can be replayed before and after a change).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_store::{EmbeddedStore, EmbeddedStoreOptions, NewMessage, Store};

const CHILD_ENV: &str = "FERRY_RECOVERY_CHILD_DIR";
const KEEP_ENV: &str = "FERRY_RECOVERY_KEEP";
const CONVERSATIONS: usize = 50;
const TASKS: usize = 50;

fn conv(c: usize) -> String {
    format!("d:a{c}:b{c}")
}

fn main() {
    let messages: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        runtime.block_on(write(Path::new(&dir), messages));
        // Wait to be killed (bounded: the parent kills at once).
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let keep = std::env::var_os(KEEP_ENV).map(std::path::PathBuf::from);
    match &keep {
        Some(kept) if kept.join("log").is_dir() => {
            println!("recovering a copy of {}", kept.display());
        }
        _ => write_killed(keep.as_deref().unwrap_or(dir.path()), messages),
    }
    if let Some(kept) = &keep {
        copy_dir(kept, dir.path());
    }
    runtime.block_on(recover(dir.path(), messages));
}

/// Runs the writing child in `dir` and kills it once it reports that everything is acked.
fn write_killed(dir: &Path, messages: usize) {
    std::fs::create_dir_all(dir).expect("data dir");
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg(messages.to_string())
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let done = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line == "DONE");
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(done, "the child died before writing everything");
    let log_bytes: u64 = std::fs::read_dir(dir.join("log"))
        .expect("log dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    println!(
        "wrote {messages} messages into the log tail in {:.1} s ({} MiB of log), killed",
        started.elapsed().as_secs_f64(),
        log_bytes >> 20
    );
}

/// Copies the data directory `from` (the database and the log, one level deep) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    for entry in walk(from) {
        let target = to.join(entry.strip_prefix(from).expect("inside"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("dir");
        std::fs::copy(&entry, &target).expect("copy");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn options() -> EmbeddedStoreOptions {
    EmbeddedStoreOptions {
        max_unindexed_bytes: usize::MAX,
        ..EmbeddedStoreOptions::default()
    }
}

async fn write(dir: &Path, messages: usize) {
    let store = EmbeddedStore::open(
        dir,
        EmbeddedStoreOptions {
            run_indexer: false,
            ..options()
        },
    )
    .expect("open");
    let store = Arc::new(store);
    for c in 0..CONVERSATIONS {
        store
            .ensure_direct(&conv(c), &format!("a{c}"), &format!("b{c}"))
            .await
            .expect("ensure");
    }
    let body = Bytes::from(vec![0x5a; 256]);
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            let body = body.clone();
            tokio::spawn(async move {
                for n in (t..messages).step_by(TASKS) {
                    let c = n % CONVERSATIONS;
                    let pending = store
                        .queue_append(NewMessage {
                            conversation: conv(c),
                            sender: format!("a{c}"),
                            sender_device: "bench".into(),
                            client_msg_id: format!("{n:08x}-bench-client-message-id"),
                            body: body.clone(),
                            server_time_ms: 1,
                        })
                        .await
                        .expect("queue");
                    pending.await.expect("append");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    println!("DONE");
}

/// CPU time of this process so far (user + system), from /proc; `None` where there is no /proc. On a
/// loaded machine the wall time of the replay says more about the neighbours than about the replay.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which ends with ')'): utime and stime are the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}

async fn recover(dir: &Path, messages: usize) {
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let store = EmbeddedStore::open(dir, options()).expect("reopen");
    let opened = started.elapsed();
    let cpu = cpu_before
        .zip(cpu_seconds())
        .map_or("?".to_owned(), |(a, b)| format!("{:.2}", b - a));
    let last = messages - 1;
    let c = last % CONVERSATIONS;
    let head = store
        .conversation(&conv(c))
        .await
        .expect("conversation")
        .expect("exists")
        .head_seq;
    let newest = store.read(&conv(c), head - 1, head, 1).await.expect("read");
    let readable = started.elapsed();
    assert_eq!(newest.len(), 1);
    let mut total = 0;
    for c in 0..CONVERSATIONS {
        total += store
            .conversation(&conv(c))
            .await
            .expect("conversation")
            .expect("exists")
            .head_seq;
    }
    assert_eq!(total as usize, messages, "every acked message is back");
    println!(
        "start-up (replay of {messages} messages): open {:.3} s ({cpu} s CPU), newest message readable after {:.3} s",
        opened.as_secs_f64(),
        readable.as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while store.commit_stats().unindexed_bytes > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "indexer caught up {:.1} s after open",
        started.elapsed().as_secs_f64()
    );
}

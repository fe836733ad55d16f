//! Redis store figures on one real `redis-server` (AOF, `appendfsync always`), 256-byte messages,
//! 50 concurrent appenders over 50 conversations:
//! - `RedisStore` appends/s vs a raw loop of the same `append.lua` driven straight at the same Redis with
//!   `EVALSHA` (50 tasks on one multiplexed connection, each awaiting its reply);
//! - Redis `EVALSHA` calls and pipelines per append;
//! - Redis memory per stored message (INFO `used_memory` delta / count, dedupe record included).
//!
//! `cargo run --release -p ferry-store --example redis_bench [messages]`

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use ferry_protocol::frame::{Message, MessageKind};
use ferry_store::{NewMessage, RedisStore, RedisStoreOptions, Store};
use ferry_test_support::redis::RedisServer;
use prost::Message as _;

const TASKS: usize = 50;
const CONVERSATIONS: usize = 50;
const BODY: usize = 256;
const WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;
/// The store's append script, exactly as the store loads it.
const APPEND_LUA: &str = concat!(
    include_str!("../src/redis/lua/common.lua"),
    include_str!("../src/redis/lua/append.lua")
);

fn now_ms() -> u64 {
    ferry_protocol::unix_millis(SystemTime::now())
}

fn info_field(server: &RedisServer, section: &str, field: &str) -> u64 {
    let info = server.cli(&["INFO", section]);
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// EVALSHA calls Redis has processed (INFO commandstats; commands run inside scripts are counted
/// apart, under their own names).
fn evalshas(server: &RedisServer) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

async fn open(server: &RedisServer, prefix: &str) -> RedisStore {
    let options = RedisStoreOptions {
        key_prefix: prefix.into(),
        require_durable: true,
        ..RedisStoreOptions::new([server.url()])
    };
    let store = RedisStore::open(options).await.expect("open");
    for c in 0..CONVERSATIONS {
        store
            .ensure_direct(&format!("d:a{c}:b{c}"), &format!("a{c}"), &format!("b{c}"))
            .await
            .expect("ensure");
    }
    store
}

/// `messages` appends through the store; returns appends/s.
async fn through_store(store: Arc<RedisStore>, messages: usize, round: usize) -> f64 {
    let body = Bytes::from(vec![0x5a; BODY]);
    let started = Instant::now();
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let (store, body) = (store.clone(), body.clone());
            tokio::spawn(async move {
                for n in (t..messages).step_by(TASKS) {
                    let c = n % CONVERSATIONS;
                    store
                        .append(NewMessage {
                            conversation: format!("d:a{c}:b{c}"),
                            sender: format!("a{c}"),
                            sender_device: "bench".into(),
                            client_msg_id: format!("{round}-{n:08x}-bench-client-message-id"),
                            body: body.clone(),
                            server_time_ms: now_ms(),
                        })
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    messages as f64 / started.elapsed().as_secs_f64()
}

/// The same script and arguments with plain `EVALSHA`, no store in between; returns appends/s.
async fn raw_evalsha(server: &RedisServer, prefix: &str, messages: usize, round: usize) -> f64 {
    let client = redis::Client::open(server.url()).expect("client");
    // The same reply bound as the store's connection (the default is short for a loaded machine).
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(10)));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect");
    let script = redis::Script::new(APPEND_LUA);
    let body = Bytes::from(vec![0x5a; BODY]);
    let started = Instant::now();
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let (mut conn, script, body) = (conn.clone(), script.clone(), body.clone());
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                for n in (t..messages).step_by(TASKS) {
                    let c = n % CONVERSATIONS;
                    let base = format!("{prefix}{{c:d:a{c}:b{c}}}");
                    let sender = format!("a{c}");
                    let cmid = format!("{round}-{n:08x}-bench-client-message-id");
                    let time = now_ms();
                    let encoded = Message {
                        seq: 0,
                        sender: sender.clone(),
                        sender_device: "bench".into(),
                        client_msg_id: cmid.clone(),
                        body: body.clone(),
                        server_time_ms: time,
                        kind: MessageKind::User as i32,
                        membership: None,
                    }
                    .encode_to_vec();
                    let _: redis::Value = script
                        .key(format!("{base}:meta"))
                        .key(format!("{base}:msgs"))
                        .key(format!("{base}:members"))
                        .key(format!("{base}:dd:{}:{sender}{cmid}", sender.len()))
                        .arg(&sender)
                        .arg(encoded)
                        .arg(time)
                        .arg(WINDOW_MS)
                        .arg("0:0:0") // retention: unlimited (keep:max_age_ms:now_ms)
                        .invoke_async(&mut conn)
                        .await
                        .expect("evalsha");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    messages as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let messages: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30_000);
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("redis-server");
    let store = Arc::new(open(&server, "store:").await);
    // The raw loop's conversations exist the same way, under their own prefix.
    drop(open(&server, "raw:").await);

    // Alternate the two so neither profits from a warmer machine.
    let (mut store_rates, mut raw_rates) = (Vec::new(), Vec::new());
    let mut memory_per_message = 0.0;
    let mut commands_per_append = 0.0; // EVALSHAs per append: 1.0 means one round trip each
    let mut pipelines_per_append = 0.0;
    for round in 0..3 {
        raw_rates.push(raw_evalsha(&server, "raw:", messages, round).await);
        let memory = info_field(&server, "memory", "used_memory");
        let (calls, stats) = (evalshas(&server), store.write_stats());
        store_rates.push(through_store(store.clone(), messages, round).await);
        let after = store.write_stats();
        commands_per_append = (evalshas(&server) - calls) as f64 / messages as f64;
        pipelines_per_append = (after.commits - stats.commits) as f64 / messages as f64;
        memory_per_message = info_field(&server, "memory", "used_memory").saturating_sub(memory)
            as f64
            / messages as f64;
    }
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    println!("redis_bench: {messages} appends of {BODY} B per run, {TASKS} appenders, {CONVERSATIONS} conversations, appendfsync always");
    println!(
        "raw EVALSHA loop     appends/s per run: {raw_rates:.0?}  best {:.0}",
        best(&raw_rates)
    );
    println!(
        "RedisStore           appends/s per run: {store_rates:.0?}  best {:.0}",
        best(&store_rates)
    );
    println!(
        "ratio store/raw (best): {:.2}",
        best(&store_rates) / best(&raw_rates)
    );
    println!("redis EVALSHA calls per append: {commands_per_append:.3}");
    println!("pipelines (round trips shared by the lane) per append: {pipelines_per_append:.3}");
    println!(
        "redis memory per stored {BODY} B message (incl. dedupe record): {memory_per_message:.0} B"
    );
}

//! Redis 7 as a peer: `appendonly yes` + `appendfsync always`, Ferry's own append script
//! (`ferry_store`'s `lua/append.lua`: dedupe lookup, membership check, seq, XADD, dedupe record, head
//! and member list) with the very keys and arguments the Redis store sends, EVALSHA pipelined over a
//! multiplexed connection — the raw floor of what cluster mode asks of its store, so "Ferry on Redis ÷
//! Redis" is like for like.
//!
//! Guarantee: with `appendfsync always` Redis writes and fsyncs the AOF before answering (it batches
//! the fsync per event-loop iteration, i.e. group commit), so an answered script is durable.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use ferry_store::{NewMessage, RedisStore, RedisStoreOptions, Store};

use super::process::{find, free_port, Process};
use crate::harness::{self, Counted, Params};

/// Key prefix of the raw loop's conversations (apart from a Ferry node's on the same Redis).
const RAW_PREFIX: &str = "raw:";

/// Bound for a single script call.
const WAIT: Duration = Duration::from_secs(20);

/// A running redis-server on a temporary dir.
pub struct Redis {
    process: Process,
    url: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts redis-server with every write fsynced before the reply, on a free loopback port.
    pub async fn start() -> anyhow::Result<Redis> {
        let binary = find("redis-server", "redis-server")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut command = Command::new(binary);
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path());
        let mut process = Process::spawn("redis-server", command, dir.path())?;
        process.wait_tcp(([127, 0, 0, 1], port).into()).await?;
        Ok(Redis {
            process,
            url: format!("redis://127.0.0.1:{port}/"),
            _dir: dir,
        })
    }

    /// The `redis://` URL to connect to (a cluster node's `--redis`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Closed loop: each connection keeps `p.window` script calls in flight (pipelined on one
    /// multiplexed connection), each connection its own direct conversation, created through the
    /// store first (not measured).
    pub async fn throughput(&self, p: &Params) -> anyhow::Result<Counted> {
        let options = RedisStoreOptions {
            key_prefix: RAW_PREFIX.into(),
            ..RedisStoreOptions::new([self.url.as_str()])
        };
        let store = Arc::new(RedisStore::open(options).await?);
        for i in 0..p.clients {
            store
                .ensure_direct(&conversation(i), &format!("a{i}"), &format!("b{i}"))
                .await?;
        }
        let client = redis::Client::open(self.url.as_str())?;
        // Each call is bounded by WAIT below; the crate's default 500 ms would cut off the tail that
        // a saturated Redis with appendfsync always legitimately has.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut first = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(RedisStore::append_script())
            .query_async::<String>(&mut first)
            .await?;
        // Every connection first: one made while the others already load Redis could miss its
        // connect timeout.
        let mut connections = Vec::with_capacity(p.clients);
        for _ in 0..p.clients {
            connections.push(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        let deadline = Instant::now() + p.duration;
        let mut tasks = Vec::new();
        for (i, connection) in connections.into_iter().enumerate() {
            for w in 0..p.window {
                let (mut connection, store, p) = (connection.clone(), store.clone(), p.clone());
                tasks.push(tokio::spawn(async move {
                    let mut counted = Counted::new();
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let at = Instant::now();
                        let (cmd, _) = store.append_command(NewMessage {
                            conversation: conversation(i),
                            sender: format!("a{i}"),
                            sender_device: "bench".into(),
                            client_msg_id: format!("{i}-{w}-{n}"),
                            body: harness::payload(p.body, at).into(),
                            server_time_ms: ferry_protocol::unix_millis(SystemTime::now()),
                        });
                        let call = cmd.query_async::<redis::Value>(&mut connection);
                        let reply = tokio::time::timeout(WAIT, call)
                            .await
                            .context("script call timed out")??;
                        check_stored(reply)?;
                        harness::record(&mut counted.latency, at.elapsed().as_micros() as u64);
                        counted.acked += 1;
                        n += 1;
                    }
                    Ok(counted)
                }));
            }
        }
        harness::join_counted(tasks).await
    }
}

/// The raw loop's conversation of connection `i`.
fn conversation(i: usize) -> String {
    format!("d:a{i}:b{i}")
}

/// The script's reply must say "stored" (status 0): a refusal would make the loop measure nothing.
fn check_stored(reply: redis::Value) -> anyhow::Result<()> {
    let fields: Vec<redis::Value> = redis::from_redis_value(reply)?;
    let status: i64 =
        redis::from_redis_value(fields.into_iter().next().unwrap_or(redis::Value::Nil))?;
    anyhow::ensure!(status == 0, "the append script answered status {status}");
    Ok(())
}

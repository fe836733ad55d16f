//! Redis 7 as a peer: `appendonly yes` + `appendfsync always`, one Lua send script per message
//! (dedupe lookup + INCR + append + dedupe record + head update), EVALSHA pipelined over a multiplexed
//! connection — the raw cost of what Ferry's cluster mode will ask of its store.
//!
//! Guarantee: with `appendfsync always` Redis writes and fsyncs the AOF before answering (it batches
//! the fsync per event-loop iteration, i.e. group commit), so an answered script is durable.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::process::{find, free_port, Process};
use crate::harness::{self, Counted, Params};

/// The send script: KEYS = dedupe hash, seq counter, log list, head; ARGV = client_msg_id, body.
/// Returns the message's seq (the earlier one for a duplicate).
const SEND_SCRIPT: &str = r#"
local seen = redis.call('HGET', KEYS[1], ARGV[1])
if seen then return tonumber(seen) end
local seq = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], seq)
redis.call('SET', KEYS[4], seq)
return seq
"#;

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

    /// Its `redis://` URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Closed loop: each connection keeps `p.window` script calls in flight (pipelined on one
    /// multiplexed connection), each conversation its own keys.
    pub async fn throughput(&self, p: &Params) -> anyhow::Result<Counted> {
        let client = redis::Client::open(self.url.as_str())?;
        let script = redis::Script::new(SEND_SCRIPT);
        let mut first = client.get_multiplexed_async_connection().await?;
        script.prepare_invoke().load_async(&mut first).await?;
        let deadline = Instant::now() + p.duration;
        let mut tasks = Vec::new();
        for i in 0..p.clients {
            let connection = client.get_multiplexed_async_connection().await?;
            for w in 0..p.window {
                let (mut connection, script, p) = (connection.clone(), script.clone(), p.clone());
                tasks.push(tokio::spawn(async move {
                    let conv = format!("c{i}");
                    let keys = [
                        format!("{conv}:dedupe"),
                        format!("{conv}:seq"),
                        format!("{conv}:log"),
                        format!("{conv}:head"),
                    ];
                    let mut counted = Counted::new();
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let at = Instant::now();
                        let mut invocation = script.prepare_invoke();
                        invocation
                            .key(&keys[0])
                            .key(&keys[1])
                            .key(&keys[2])
                            .key(&keys[3])
                            .arg(format!("{conv}-{w}-{n}"))
                            .arg(harness::payload(p.body, at));
                        let call = invocation.invoke_async::<u64>(&mut connection);
                        tokio::time::timeout(WAIT, call)
                            .await
                            .context("script call timed out")??;
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

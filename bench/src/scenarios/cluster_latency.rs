//! `cluster-latency`: cross-node send→deliver in cluster mode. Two ferry-server nodes share one
//! redis-server (`appendfsync always`) and one identity (certificate, key, token secret copied from
//! the first node, as an operator would); sender `s{i}` is connected to node A, receiver `r{i}` to
//! node B, so every message is stored through A's Redis store and reaches B over the cluster bus.
//! Open loop at a fixed total rate; latency is measured at the receiver from each message's intended
//! send time (coordinated omission corrected, see [`crate::harness`]).
//!
//! The nodes run inside this process (`ferry_server::start`, as `tests/src/cluster.rs` starts them):
//! their CPU is shared with the clients, which on a small machine makes the figure an upper bound.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_interop::driver::{Session, Target};
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Send};
use ferry_protocol::ids;
use ferry_server::config::Settings;
use ferry_server::ServerHandle;
use serde::Serialize;

use super::Config;
use crate::harness;
use crate::peers::ferry::{next, open_split, receive_delivers, WAIT};
use crate::peers::redis::Redis;
use crate::report::{self, Results};

/// Sender/receiver pairs.
const PAIRS: usize = 10;
/// Messages per second over all senders: well below what Redis with `appendfsync always` takes on a
/// small shared machine (~1.3k script calls/s measured under load), so the figure is a latency, not a
/// queue.
const RATE: f64 = 200.0;
/// Body size.
const BODY: usize = 256;
/// Files that make two nodes one cluster to clients.
const IDENTITY: [&str; 3] = ["cert.pem", "key.pem", ferry_server::server::SECRET_FILE];

/// Cross-node send→deliver figures.
#[derive(Serialize, Clone, Debug)]
pub struct ClusterLatencyRow {
    /// Offered messages per second.
    pub rate: f64,
    /// Sent messages.
    pub sent: u64,
    /// Delivered on the other node.
    pub delivered: u64,
    /// p50, µs.
    pub p50_us: u64,
    /// p99, µs.
    pub p99_us: u64,
    /// p99.9, µs.
    pub p999_us: u64,
}

/// Runs the two-node measurement once.
pub async fn run(config: &Config, results: &mut Results) {
    match measure(config.duration).await {
        Ok(row) => {
            println!(
                "cluster latency A→B ({:.0}/s): p50 {:.2} ms p99 {:.2} ms, {}/{} delivered",
                row.rate,
                row.p50_us as f64 / 1e3,
                row.p99_us as f64 / 1e3,
                row.delivered,
                row.sent
            );
            results.cluster_latency = Some(row);
        }
        Err(e) => results.errors.push(format!("cluster latency: {e:#}")),
    }
}

/// One node's settings: loopback ports, the shared Redis, the send rate limit lifted.
fn settings(dir: &Path, node: &str, redis: &str) -> Settings {
    let mut s = Settings {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("literal address"),
        http: "127.0.0.1:0".parse().expect("literal address"),
        node_id: node.to_owned(),
        ..Settings::default()
    };
    s.cluster.redis = vec![redis.to_owned()];
    s.cluster.require_durable_redis = true;
    s.limits.send_rate_per_sec = u32::MAX / 2;
    s.limits.send_burst = u32::MAX / 2;
    s
}

async fn session(node: &ServerHandle, user: &str) -> anyhow::Result<Session> {
    let target = Target::new(node.local_addr(), node.ca_path())?;
    let token = node.mint_token(user, "bench", Duration::from_secs(3600));
    Ok(target.session(&token, "bench").await?)
}

async fn measure(duration: Duration) -> anyhow::Result<ClusterLatencyRow> {
    let redis = Redis::start().await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let node_a = ferry_server::start(settings(dir_a.path(), "bench-a", redis.url())).await?;
    for name in IDENTITY {
        std::fs::copy(dir_a.path().join(name), dir_b.path().join(name))
            .with_context(|| format!("copying {name} to node B"))?;
    }
    let node_b = ferry_server::start(settings(dir_b.path(), "bench-b", redis.url())).await?;

    let mut pairs = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let receiver = session(&node_b, &format!("r{i}")).await?;
        let sender = session(&node_a, &format!("s{i}")).await?;
        pairs.push((sender, receiver));
    }
    let interval = Duration::from_secs_f64(PAIRS as f64 / RATE);
    let count = (duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    let started = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (i, (sender, receiver)) in pairs.into_iter().enumerate() {
        let until = started + duration + WAIT;
        receivers.push(tokio::spawn(async move {
            let got = receive_delivers(&receiver, &format!("s{i}"), count, until).await;
            receiver.close();
            got
        }));
        // Spread the senders' schedules over one interval so they do not fire together.
        let first = started + interval.mul_f64(i as f64 / PAIRS as f64);
        senders.push(tokio::spawn(async move {
            let sent = send_paced(&sender, i, first, interval, count).await;
            sender.close();
            sent
        }));
    }
    let mut sent = 0;
    for task in senders {
        sent += task.await??;
    }
    let (mut delivered, mut latency) = (0, harness::histogram());
    for task in receivers {
        let (got, hist) = task.await??;
        delivered += got;
        latency.add(hist)?;
    }
    node_a.shutdown().await;
    node_b.shutdown().await;
    let (p50_us, p99_us, p999_us, _, _) = report::quantiles(&latency);
    Ok(ClusterLatencyRow {
        rate: RATE,
        sent,
        delivered,
        p50_us,
        p99_us,
        p999_us,
    })
}

/// Sends `count` messages from `s{i}` to `r{i}`, the k-th at `first + k·interval`, stamped with that
/// intended time; then reads the SendAcks (bounded by [`WAIT`] each). Returns how many were acked.
async fn send_paced(
    session: &Session,
    i: usize,
    first: Instant,
    interval: Duration,
    count: u64,
) -> anyhow::Result<u64> {
    let user = format!("s{i}");
    let conv = ids::direct_conversation_id(&user, &format!("r{i}")).context("conversation id")?;
    let (mut send, mut reader) = open_split(&session.connection, &conv).await?;
    // Acks are read concurrently so the stream's flow control never holds the sender back.
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < count {
            match next(&mut reader).await?.and_then(|f| f.kind) {
                Some(Kind::SendAck(_)) => acked += 1,
                Some(Kind::Error(e)) => anyhow::bail!("send refused: {} {}", e.code, e.message),
                Some(_) => {}
                None => anyhow::bail!("stream ended after {acked} acks"),
            }
        }
        Ok(acked)
    });
    for k in 0..count {
        let intended = first + interval.mul_f64(k as f64);
        tokio::time::sleep_until(intended.into()).await;
        let send_frame = frame(Kind::Send(Send {
            client_msg_id: format!("{user}-{k}"),
            body: harness::payload(BODY, intended).into(),
        }));
        send.write_all(&codec::encode(&send_frame)).await?;
    }
    let acked = acks.await??;
    let _ = send.finish();
    Ok(acked)
}

//! `ferry-bench`: durable send→ack throughput and latency of a Ferry server on loopback.
//!
//! `ferry-bench send --connections 50` starts a server in-process on a temporary data dir (or targets
//! `--server ADDR --ca FILE --data-dir DIR`), opens N connections, each keeping `--window` Sends in flight
//! on one conversation stream (pipelined, as the client library does), and reports acked messages per
//! second, send→ack latency percentiles and the mean commit batch size (sends per fsync).
//!
//! Run it in release mode: `cargo run --release -p ferry-bench -- send --connections 50`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ferry_interop::driver::Target;
use ferry_protocol::ids;
use ferry_server::auth::TokenSecret;
use hdrhistogram::Histogram;

mod catchup;

#[derive(Parser)]
#[command(name = "ferry-bench", about = "Ferry benchmarks on loopback")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Durable send→ack throughput and latency.
    Send(SendArgs),
    /// Time for an offline client to receive what it missed, with and without 0-RTT.
    Catchup(catchup::CatchupArgs),
}

#[derive(Args, Clone)]
struct SendArgs {
    /// Concurrent connections (one user and one conversation each).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Messages per connection.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    body: usize,
    /// Sends kept in flight per connection.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// An external server's QUIC address (default: start one in-process).
    #[arg(long, requires_all = ["ca", "data_dir"])]
    server: Option<SocketAddr>,
    /// CA file of the external server.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Data dir of the external server (to mint tokens with its secret).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Send(args) => send(args).await,
        Command::Catchup(args) => catchup::run(args).await,
    }
}

struct Report {
    acked: usize,
    elapsed: Duration,
    latency: Histogram<u64>,
}

async fn send(args: SendArgs) -> anyhow::Result<()> {
    let _dir;
    let (server, addr, ca, data_dir) = match (&args.server, &args.ca, &args.data_dir) {
        (Some(addr), Some(ca), Some(dir)) => (None, *addr, ca.clone(), dir.clone()),
        _ => {
            let dir = tempfile::tempdir()?;
            let mut settings = ferry_server::Settings {
                data_dir: dir.path().to_path_buf(),
                listen: "127.0.0.1:0".parse()?,
                http: "127.0.0.1:0".parse()?,
                ..Default::default()
            };
            // The benchmark measures the send path, not the per-user rate limit.
            settings.limits.send_rate_per_sec = u32::MAX / 2;
            settings.limits.send_burst = u32::MAX / 2;
            let handle = ferry_server::start(settings).await?;
            let (addr, ca) = (handle.local_addr(), handle.ca_path().to_path_buf());
            let data_dir = dir.path().to_path_buf();
            _dir = dir;
            (Some(handle), addr, ca, data_dir)
        }
    };
    let secret = TokenSecret::load(&data_dir.join(ferry_server::server::SECRET_FILE))
        .context("loading the server's token secret")?;
    let target = Target::new(addr, &ca)?;
    let before = server.as_ref().map(|s| s.commit_totals());

    let mut sessions = Vec::new();
    for i in 0..args.connections {
        let user = format!("bench{i}");
        let token = secret.mint(
            &user,
            "dev",
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        );
        sessions.push((user, target.session(&token, "dev").await?));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (user, session) in sessions {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let conversation = ids::direct_conversation_id(&user, "sink").expect("valid ids");
            let mut stream = session.open(&conversation).await?;
            let body = vec![b'x'; args.body];
            let mut latency = Histogram::<u64>::new(3)?;
            let mut sent_at = HashMap::with_capacity(args.window);
            let mut next = 0;
            while next < args.window.min(args.messages) {
                let id = format!("{user}-{next}");
                sent_at.insert(id.clone(), Instant::now());
                stream.send_message(&id, &body).await?;
                next += 1;
            }
            for _ in 0..args.messages {
                let ack = stream.expect_send_ack().await?;
                if let Some(at) = sent_at.remove(&ack.client_msg_id) {
                    latency.record(at.elapsed().as_micros() as u64)?;
                }
                if next < args.messages {
                    let id = format!("{user}-{next}");
                    sent_at.insert(id.clone(), Instant::now());
                    stream.send_message(&id, &body).await?;
                    next += 1;
                }
            }
            anyhow::Ok(latency)
        }));
    }
    let mut report = Report {
        acked: args.connections * args.messages,
        elapsed: Duration::ZERO,
        latency: Histogram::new(3)?,
    };
    for task in tasks {
        report.latency.add(task.await??)?;
    }
    report.elapsed = started.elapsed();
    let rate = report.acked as f64 / report.elapsed.as_secs_f64();
    println!(
        "send→ack: {} connections × {} messages of {} B, window {}: {:.0} acked/s in {:.2} s",
        args.connections,
        args.messages,
        args.body,
        args.window,
        rate,
        report.elapsed.as_secs_f64()
    );
    println!(
        "latency µs: p50 {} p90 {} p99 {} max {}",
        report.latency.value_at_quantile(0.5),
        report.latency.value_at_quantile(0.9),
        report.latency.value_at_quantile(0.99),
        report.latency.max()
    );
    if let (Some(server), Some((commits0, requests0))) = (&server, before) {
        let (commits, requests) = server.commit_totals();
        let (commits, requests) = (commits - commits0, requests - requests0);
        if commits > 0 {
            println!(
                "commits: {commits}, mean batch {:.1} requests per commit (fsync)",
                requests as f64 / commits as f64
            );
        }
    }
    if let Some(server) = server {
        server.shutdown().await;
    }
    Ok(())
}

//! `ferry-bench`: Ferry against the systems people use today — Mosquitto (QoS 1), NATS JetStream and
//! Redis (`appendfsync always`) — in the same run, on the same machine, with the same payloads.
//!
//! `ferry-bench all [--quick]` runs every scenario; each scenario is also a subcommand (`throughput`,
//! alias `send`; `latency`, `fanout`, `connections`, `catchup`, `lossy`, `fsync-check`, `memory`,
//! `cluster-latency`, `flood`). Every system
//! runs as its own process on free loopback ports in a temp dir, started and stopped by the bench
//! (Ferry: the `ferry-server` binary next to this one). Results go to `--out DIR` (default
//! `bench-results/<timestamp>`): `results.json`, `report.md` and SVG plots; the table is printed.
//!
//! Layout: [`harness`] (parameters, stamped payloads, counters), [`peers`] (one file per system),
//! [`scenarios`] (one file per scenario), [`report`] and [`report_md`] (tables, JSON, markdown),
//! [`plot`] (SVG), [`machine`] (cores, kernel, CPU, fsync rate).
//!
//! Run it in release mode: `scripts/bench.sh [--quick]` installs the peers, builds and runs `all`.
#![warn(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod harness;
mod machine;
mod peers;
mod plot;
mod report;
mod report_md;
mod scenarios;

use peers::System;
use report::Results;
use scenarios::Config;

#[derive(Parser)]
#[command(
    name = "ferry-bench",
    about = "Ferry against Mosquitto, NATS JetStream and Redis on loopback"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Results directory (default `bench-results/<UTC timestamp>`).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Small and short: every scenario, well under 10 minutes in all.
    #[arg(long, global = true)]
    quick: bool,
    /// The ferry-server binary (default: the one next to this executable).
    #[arg(long, global = true)]
    ferry_server: Option<PathBuf>,
    /// Systems to run, comma-separated: ferry, mosquitto, nats, redis.
    #[arg(long, global = true, value_delimiter = ',')]
    peers: Option<Vec<System>>,
    /// Sending connections (throughput).
    #[arg(long, alias = "connections", global = true)]
    clients: Option<usize>,
    /// Sends in flight per connection.
    #[arg(long, global = true)]
    window: Option<usize>,
    /// Body size in bytes (default: 256 and 1024).
    #[arg(long, global = true)]
    body: Option<usize>,
    /// Seconds each measured run sends.
    #[arg(long, global = true)]
    duration_secs: Option<u64>,
    /// Throughput: measure every system this many times, interleaved in rotating order, and report
    /// each one's median run (a shared machine's disk and CPU drift within a minute; interleaving
    /// gives every system the same conditions). Default 1.
    #[arg(long, global = true)]
    repeat: Option<usize>,
    /// Loads of the latency runs, percent of each system's own peak (comma-separated).
    #[arg(long, global = true, value_delimiter = ',')]
    loads: Option<Vec<u32>>,
    /// Idle connections to open (connections scenario).
    #[arg(long, global = true)]
    idle_connections: Option<usize>,
    /// Throughput: run Ferry with offline push on, the receivers' device registered at a local HTTP
    /// endpoint the bench starts (compare with a run without it).
    #[arg(long, global = true)]
    push: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop acked sends per second, every system (`send` is the old name).
    #[command(visible_alias = "send")]
    Throughput,
    /// Open-loop send→deliver latency at 25/50/75 % of each system's peak.
    Latency,
    /// One sender, a group of 100 receivers.
    Fanout,
    /// Idle authenticated connections: server RSS per connection and heartbeat CPU.
    Connections,
    /// Time for an offline client to receive what it missed, with and without 0-RTT.
    Catchup(scenarios::catchup::CatchupArgs),
    /// Goodput through ferry-proxy with loss, reordering and rebinds, and nothing lost.
    Lossy,
    /// kill -9 of one cluster node (processes on redis-server): time until every client caught up.
    Failover(scenarios::failover::FailoverArgs),
    /// strace each system's fsync calls during a short run.
    FsyncCheck,
    /// Redis memory per stored message and per idle session (cluster mode).
    Memory,
    /// Cross-node send→deliver: two nodes on one Redis, sender on A, receiver on B.
    ClusterLatency,
    /// Normal users' send→ack under handshake floods, churn and never-reading sessions (Ferry only;
    /// not part of `all`).
    Flood(scenarios::flood::FloodArgs),
    /// Everything above.
    All,
}

impl Common {
    fn config(&self) -> anyhow::Result<Config> {
        let binary = peers::ferry::server_binary(self.ferry_server.as_deref())?;
        let mut c = Config::defaults(binary, self.quick);
        if let Some(systems) = &self.peers {
            c.systems = systems.clone();
        }
        if let Some(v) = self.clients {
            c.clients = v.max(1);
        }
        if let Some(v) = self.window {
            c.window = v.max(1);
        }
        if let Some(v) = self.body {
            c.bodies = vec![v.max(8)];
        }
        if let Some(v) = self.duration_secs {
            c.duration = Duration::from_secs(v.max(1));
        }
        if let Some(v) = self.repeat {
            c.repeat = v.max(1);
        }
        if let Some(v) = &self.loads {
            c.loads = v.clone();
        }
        if let Some(v) = self.idle_connections {
            c.connections = v;
        }
        c.push = self.push;
        Ok(c)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Off unless asked for: `RUST_LOG=ferry_client=trace ferry-bench catchup` shows the client's timeline.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = cli.common.config()?;
    let started = report::utc_now();
    let out = cli
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench-results").join(started.replace(':', "-")));
    std::fs::create_dir_all(&out)?;
    let mut results = Results {
        started_utc: started,
        quick: config.quick,
        ..Results::default()
    };
    let probe = Duration::from_millis(if config.quick { 500 } else { 1000 });
    results.machine = Some(machine::Machine::probe(&out, probe)?);
    let quick_rounds = if config.quick { 1 } else { 3 };
    match cli.command {
        Command::Throughput => scenarios::throughput::run(&config, &mut results).await,
        Command::Latency => scenarios::latency::run(&config, &mut results).await,
        Command::Fanout => scenarios::fanout::run(&config, &mut results).await,
        Command::Connections => scenarios::connections::run(&config, &mut results).await,
        Command::Catchup(args) => scenarios::catchup::run(args, &mut results).await,
        Command::Lossy => scenarios::lossy::run(&config, &mut results).await,
        Command::Failover(args) => {
            scenarios::failover::run(&config.ferry_binary, args, &mut results).await
        }
        Command::FsyncCheck => scenarios::fsync::run(&config, &mut results).await,
        Command::Memory => scenarios::memory::run(&config, &mut results).await,
        Command::ClusterLatency => scenarios::cluster_latency::run(&config, &mut results).await,
        Command::Flood(args) => {
            scenarios::flood::run(&config.ferry_binary, args, &mut results).await
        }
        Command::All => {
            scenarios::throughput::run(&config, &mut results).await;
            scenarios::latency::run(&config, &mut results).await;
            scenarios::fanout::run(&config, &mut results).await;
            scenarios::connections::run(&config, &mut results).await;
            for delay_ms in [0, 20] {
                let args = scenarios::catchup::CatchupArgs::with_delay(delay_ms, quick_rounds);
                scenarios::catchup::run(args, &mut results).await;
            }
            scenarios::lossy::run(&config, &mut results).await;
            let failover = scenarios::failover::FailoverArgs::for_all(config.quick);
            scenarios::failover::run(&config.ferry_binary, failover, &mut results).await;
            scenarios::fsync::run(&config, &mut results).await;
            scenarios::memory::run(&config, &mut results).await;
            scenarios::cluster_latency::run(&config, &mut results).await;
        }
    }
    results.write(&out)?;
    let plots = plot::all(&results, &out)?;
    println!("{}", results.terminal());
    println!(
        "\nresults: {}/results.json, {}/report.md, plots: {}",
        out.display(),
        out.display(),
        plots.join(", ")
    );
    if !results.errors.is_empty() {
        // The failures are in the table and the report already; a backtrace would add nothing.
        eprintln!("{} scenario(s) failed (see above)", results.errors.len());
        std::process::exit(1);
    }
    Ok(())
}

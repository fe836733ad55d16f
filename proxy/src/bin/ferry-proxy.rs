//! `ferry-proxy`: run the fault-injecting UDP proxy from the command line.
//!
//! ```text
//! ferry-proxy --listen 127.0.0.1:4444 --upstream 127.0.0.1:4433 --loss 0.05 --delay-ms 20
//! ```
//!
//! The same faults apply in both directions. Prints the listen address, runs until Ctrl-C, then
//! prints the counters. Set `RUST_LOG=ferry_proxy=debug` for per-flow logs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};

/// A fault-injecting UDP proxy: forwards datagrams to one upstream server, losing, delaying,
/// reordering and duplicating them on the way.
#[derive(Debug, Parser)]
#[command(name = "ferry-proxy", version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:0 for any free port.
    #[arg(long)]
    listen: SocketAddr,
    /// Server address to forward to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Seed for the fault decisions (reuse it to replay a run).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Probability of dropping a datagram (0.0..=1.0).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    loss: f64,
    /// Fixed delay added to every datagram, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Extra random delay, uniform in 0..jitter, in milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Probability of holding a datagram back so later ones overtake it (0.0..=1.0).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    reorder: f64,
    /// Probability of sending a datagram twice (0.0..=1.0).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    duplicate: f64,
    /// Most concurrent client flows.
    #[arg(long, default_value_t = 1024)]
    max_flows: usize,
    /// Seconds without traffic after which a flow is closed.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability within 0.0..=1.0"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = ProxyConfig::new(args.listen, args.upstream);
    config.seed = args.seed;
    config.max_flows = args.max_flows;
    config.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    config.faults = Faults::symmetric(DirectionFaults {
        loss: args.loss,
        delay: Duration::from_millis(args.delay_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        reorder: args.reorder,
        duplicate: args.duplicate,
    });
    let proxy = match Proxy::start(config).await {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("ferry-proxy: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ferry-proxy listening on {} -> {} (seed {})",
        proxy.local_addr(),
        proxy.upstream(),
        proxy.seed()
    );
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("ferry-proxy: cannot wait for Ctrl-C: {e}");
    }
    let stats = proxy.stats();
    proxy.shutdown().await;
    println!("{stats:#?}");
    ExitCode::SUCCESS
}

//! `ferry-chaos`: `run` a chaos profile against a real ferry-server process and write a JSON report;
//! `device` is one scenario device (spawned by `run`, not meant to be called by hand).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_chaos::cluster_target::{MAX_NODES, MIN_NODES};
use ferry_chaos::device::{self, DeviceArgs};
use ferry_chaos::profile::Profile;
use ferry_chaos::run::{self, RunConfig, TargetKind};

#[derive(Parser)]
#[command(name = "ferry-chaos", about = "Chaos and invariant suite for Ferry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a profile: devices send through a faulty proxy to a ferry-server that gets killed, paused
    /// and starved of disk; an independent checker judges what they saw.
    Run(RunArgs),
    /// One scenario device (internal: spawned by `run`).
    Device(DeviceArgs),
    /// Judges a run again from its `observations.json` (written under `--work-dir`), e.g. after a
    /// change of the checker.
    Check {
        /// The observations file.
        observations: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// `short` (CI, about 3 minutes), `soak`, or `ci` (under a minute).
    #[arg(long, default_value = "short")]
    profile: String,
    /// `single` (one ferry-server on the embedded store) or `cluster` (nodes on one redis-server).
    #[arg(long, default_value = "single")]
    target: String,
    /// Nodes of the cluster target (2..=5; default 3).
    #[arg(long)]
    nodes: Option<usize>,
    /// Minutes of faults for the soak profile.
    #[arg(long)]
    minutes: Option<u64>,
    /// Replays a run: the schedule and the proxy's decisions come from this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write the JSON report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The ferry-server binary. Default: next to this binary.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep data dirs and stores here instead of a temp dir (for inspecting a failure).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry-chaos: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Device(args) => runtime
            .block_on(device::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Run(args) => runtime.block_on(run_cmd(args)),
        Command::Check { observations } => check_cmd(&observations),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check_cmd(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let obs: ferry_chaos::observe::Observations = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{} is not an observations file: {e}", path.display()))?;
    let violations = ferry_chaos::checker::check(&obs);
    for v in &violations {
        eprintln!("ferry-chaos: VIOLATION {}", serde_json::to_string(v)?);
    }
    eprintln!(
        "ferry-chaos: {} violation(s); lost with history: {}",
        violations.len(),
        ferry_chaos::checker::lost_with_history(&obs)
    );
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    let profile = Profile::named(&args.profile, args.minutes)?;
    let target = match (args.target.as_str(), args.nodes) {
        ("single", None) => TargetKind::SingleNode,
        ("single", Some(_)) => anyhow::bail!("--nodes applies to --target cluster only"),
        ("cluster", nodes) => {
            let nodes = nodes.unwrap_or(3);
            anyhow::ensure!(
                (MIN_NODES..=MAX_NODES).contains(&nodes),
                "--nodes must be within {MIN_NODES}..={MAX_NODES}, got {nodes}"
            );
            TargetKind::Cluster { nodes }
        }
        (other, _) => anyhow::bail!("unknown target {other:?} (expected single or cluster)"),
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let self_binary = std::env::current_exe()?;
    let server_binary = match args.server_bin {
        Some(path) => path,
        None => self_binary
            .parent()
            .map(|dir| dir.join("ferry-server"))
            .ok_or_else(|| anyhow::anyhow!("no directory for {}", self_binary.display()))?,
    };
    anyhow::ensure!(
        server_binary.exists(),
        "{} is missing: build it (cargo build -p ferry-server) or pass --server-bin",
        server_binary.display()
    );
    eprintln!(
        "ferry-chaos: profile {} target {} ({} node(s)) seed {seed} (replay with --seed {seed})",
        profile.name,
        args.target,
        target.nodes()
    );
    let run = run::run(RunConfig {
        profile,
        seed,
        server_binary,
        self_binary,
        work_dir: args.work_dir,
        target,
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // On Ctrl-C or SIGTERM the run is dropped: the server is killed and its tmpfs unmounted, the
    // devices are killed (kill_on_drop).
    let report = tokio::select! {
        report = run => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (seed {seed})"),
        _ = terminate.recv() => anyhow::bail!("terminated (seed {seed})"),
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json)?;
    }
    let m = &report.messages;
    eprintln!(
        "ferry-chaos: {} seed {seed}: sent {} acked {} delivered {} (unacked {}, of which delivered {}); \
         faults {:?}; settled {} in {} ms; {} violation(s); lost with history: {}; disk full: {}",
        report.target,
        m.sent,
        m.acked,
        m.delivered,
        m.unacked,
        m.unacked_delivered,
        report.faults,
        report.settled,
        report.settle_ms,
        report.violations_by_kind.values().sum::<u64>(),
        report.lost_with_history,
        report.disk_full_mode,
    );
    for exit in &report.unexpected_exits {
        eprintln!("ferry-chaos: unexpected exit: {exit}");
    }
    for evidence in report.violations.iter().take(10) {
        let v = &evidence.violation;
        eprintln!(
            "ferry-chaos: VIOLATION {:?} conversation {} device {} seq {:?} id {:?}: {} (faults around: {})",
            v.kind,
            v.conversation,
            v.device,
            v.seq,
            v.id,
            v.detail,
            serde_json::to_string(&evidence.faults_around).unwrap_or_default()
        );
    }
    let failed =
        !report.violations.is_empty() || !report.settled || !report.unexpected_exits.is_empty();
    if failed {
        eprintln!("ferry-chaos: FAILED (seed {seed}; replay with --seed {seed})");
        Ok(ExitCode::from(1))
    } else {
        eprintln!("ferry-chaos: all invariants held (seed {seed})");
        Ok(ExitCode::SUCCESS)
    }
}

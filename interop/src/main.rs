//! `ferry-interop`: the ferry/1 conformance runner. See interop/README.md.
//!
//! Exit status: 0 when no case failed (passes and unsupported cases only), 1 when a case failed, 2 when
//! the run could not start (bad arguments, server unreachable, unreadable spec).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_interop::client_mode::{self, ClientConfig};
use ferry_interop::reference::{find_binary, SERVER_BINARY};
use ferry_interop::report::{CaseReport, RunReport};
use ferry_interop::server_mode::{self, ServerConfig, TokenSource};

#[derive(Parser)]
#[command(
    name = "ferry-interop",
    version,
    about = "Conformance runner for ferry/1 servers and clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Test a server over the wire.
    Server(ServerArgs),
    /// Test a client command against a reference server and a fault proxy.
    Client(ClientArgs),
    /// Report which spec requirements have a case.
    Coverage(CoverageArgs),
}

#[derive(Args)]
#[group(id = "tokens", required = true, multiple = false)]
struct TokenArgs {
    /// The server's data dir: tokens are minted by `ferry-server token --data-dir DIR` (ferry-server
    /// only; the binary is --server-bin).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A command run as `sh -c "CMD USER DEVICE"` that prints a valid token on stdout.
    #[arg(long)]
    token_cmd: Option<String>,
}

#[derive(Args)]
struct Output {
    /// Write results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write results as JUnit XML.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Run only cases whose name contains this (e.g. FERRY-SEND or "0-RTT").
    #[arg(long)]
    filter: Option<String>,
    /// Seconds before a case without a verdict counts as failed (hung).
    #[arg(long, default_value_t = 30)]
    case_timeout: u64,
    /// The spec to report coverage against after the run.
    #[arg(long)]
    spec: Option<PathBuf>,
}

#[derive(Args)]
struct ServerArgs {
    /// The server's QUIC address.
    #[arg(long)]
    addr: SocketAddr,
    /// PEM file of the CA that signed the server's certificate (name `localhost`).
    #[arg(long)]
    ca: PathBuf,
    #[command(flatten)]
    tokens: TokenArgs,
    /// The `ferry-server` binary for --data-dir tokens (default: next to this runner, else on PATH).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Also run the cases that need the fault proxy in front of the server.
    #[arg(long)]
    proxy: bool,
    /// A command (run with `sh -c`) that makes the server drain, e.g. `kill -TERM 1234` for
    /// ferry-server. The draining case (FERRY-GOAWAY-1) runs last with it; without it, Unsupported.
    #[arg(long)]
    drain_cmd: Option<String>,
    /// Longest a case may wait for a server timer (Hello timeout, idle timeouts), milliseconds.
    #[arg(long, default_value_t = 15_000)]
    max_wait_ms: u64,
    /// The conversation-stream idle timeout of a server that does not announce one, milliseconds.
    #[arg(long, default_value_t = 60_000)]
    stream_idle_timeout_ms: u64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct ClientArgs {
    /// The client command, run with `sh -c` and the environment described in interop/README.md.
    #[arg(long)]
    cmd: String,
    /// Messages per case (FERRY_COUNT).
    #[arg(long, default_value_t = 20)]
    count: usize,
    /// The `ferry-server` binary run as the reference server (default: next to this runner, else on
    /// PATH).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct CoverageArgs {
    /// The spec (default: spec/ferry-1.md of this repository).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Requirement → test file mapping for what the wire cannot show (default: interop/coverage-extra.toml).
    #[arg(long)]
    extra: Option<PathBuf>,
    /// List every requirement with what covers it.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry-interop: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ferry-interop: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A revoke hook running `<bin> revoke --data-dir <dir> --user U --device D`.
fn revoke_with_server_binary(
    bin: std::path::PathBuf,
    data_dir: std::path::PathBuf,
) -> std::sync::Arc<server_mode::RevokeFn> {
    std::sync::Arc::new(move |user: String, device: String| {
        let mut command = tokio::process::Command::new(&bin);
        command
            .arg("revoke")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--user", &user, "--device", &device]);
        Box::pin(async move {
            let out = command.output().await.map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        })
    })
}

/// Ok(true) when nothing failed.
async fn run(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Server(args) => {
            let tokens = match (args.tokens.data_dir, args.tokens.token_cmd) {
                (Some(data_dir), _) => TokenSource::ServerToken {
                    bin: find_binary(args.server_bin.as_deref(), SERVER_BINARY)?,
                    data_dir,
                },
                (None, Some(cmd)) => TokenSource::Command(cmd),
                (None, None) => anyhow::bail!("--data-dir or --token-cmd is required"),
            };
            // With the server's data dir, revoking is `ferry-server revoke --data-dir` (FERRY-HARDEN-5).
            let revoke = match &tokens {
                TokenSource::ServerToken { bin, data_dir } => {
                    Some(revoke_with_server_binary(bin.clone(), data_dir.clone()))
                }
                _ => None,
            };
            let config = ServerConfig {
                addr: args.addr,
                ca: args.ca,
                revoke,
                tokens,
                filter: args.output.filter.clone(),
                case_timeout: Duration::from_secs(args.output.case_timeout),
                max_wait: Duration::from_millis(args.max_wait_ms),
                stream_idle_timeout: Duration::from_millis(args.stream_idle_timeout_ms),
                proxy: args.proxy,
                drain: args.drain_cmd,
            };
            let report = server_mode::run(config, print_progress).await?;
            finish(&report, &args.output)
        }
        Command::Client(args) => {
            let config = ClientConfig {
                cmd: args.cmd,
                filter: args.output.filter.clone(),
                case_timeout: Duration::from_secs(args.output.case_timeout),
                count: args.count.max(2),
                server_bin: args.server_bin,
            };
            let report = client_mode::run(config, print_progress).await?;
            finish(&report, &args.output)
        }
        Command::Coverage(args) => {
            let spec = args.spec.unwrap_or_else(default_spec);
            let extra = args.extra.unwrap_or_else(default_extra);
            let coverage =
                ferry_interop::coverage_report(&spec, Some(&extra), &ferry_interop::repo_root())?;
            if args.list {
                print!("{}", coverage.listing());
            }
            print!("{}", coverage.summary());
            Ok(true)
        }
    }
}

fn print_progress(case: &CaseReport) {
    println!("{:<11} {}", case.outcome.label(), case.name);
    let _ = std::io::stdout().flush();
}

fn finish(report: &RunReport, output: &Output) -> anyhow::Result<bool> {
    println!();
    print!("{}", report.table());
    if let Some(path) = &output.json {
        report.write_json(path)?;
    }
    if let Some(path) = &output.junit {
        report.write_junit(path)?;
    }
    let spec = output.spec.clone().unwrap_or_else(default_spec);
    match ferry_interop::coverage_report(&spec, Some(&default_extra()), &ferry_interop::repo_root())
    {
        Ok(coverage) => print!("\n{}", coverage.summary()),
        Err(e) => println!("\n(no coverage report: {e})"),
    }
    Ok(report.ok())
}

/// `spec/ferry-1.md` in the working directory if present, else the one of the repository this binary was
/// built from.
fn default_spec() -> PathBuf {
    let local = Path::new("spec/ferry-1.md");
    if local.exists() {
        local.to_path_buf()
    } else {
        ferry_interop::repo_root().join("spec/ferry-1.md")
    }
}

fn default_extra() -> PathBuf {
    ferry_interop::repo_root().join("interop/coverage-extra.toml")
}

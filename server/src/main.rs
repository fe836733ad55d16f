//! `ferry-server`: run the server, mint a token, or revoke a device's tokens on the running server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand};
use ferry_server::auth::{parse_duration, TokenSecret};
use ferry_server::config::{CliOverrides, LogFormat, Settings};
use ferry_server::server::SECRET_FILE;

/// mimalloc instead of glibc malloc: the send path allocates per message on the tokio workers and frees
/// much of it on the store's writer thread (and the other way round); glibc then takes its arenas'
/// locks and consolidates chunks, which was a fifth of the server's CPU under `ferry-bench
/// throughput` (issue 16's profile). mimalloc's thread-local free lists make both sides cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ferry-server",
    version,
    about = "Ferry messaging server (ferry/1 over QUIC)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on the embedded store.
    Run(RunArgs),
    /// Print a signed, expiring token for a user's device.
    Token(TokenArgs),
    /// Revoke the tokens of a user's device (or of all the user's devices) issued until now, on the
    /// server running with this data dir: its live sessions are closed at once (on every node).
    Revoke(RevokeArgs),
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file (flags > FERRY_* environment variables > file > defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (store, certificate, token secret). Default ./ferry-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// QUIC (UDP) listen address. Default 127.0.0.1:4433.
    #[arg(long)]
    listen: Option<String>,
    /// HTTP address for /healthz and /metrics. Default 127.0.0.1:4480.
    #[arg(long)]
    http: Option<String>,
    /// TLS certificate chain (PEM); with --key. Default: a self-signed one in the data dir.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// TLS private key (PEM); with --cert.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Log format: text or json. Filter with RUST_LOG (default info).
    #[arg(long)]
    log_format: Option<String>,
    /// This node's id, unique in a cluster. Default node-1.
    #[arg(long)]
    node_id: Option<String>,
    /// Cluster mode: a Redis URL (repeat for several seed nodes of a Redis Cluster, or use
    /// redis+cluster://). Without it the server runs alone on the embedded store.
    #[arg(long, value_name = "URL")]
    redis: Vec<String>,
    /// The QUIC address other nodes and GoAway name for this node. Default: the listen address.
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Refuse to start unless Redis runs with appendonly yes + appendfsync always.
    #[arg(long)]
    require_durable_redis: bool,
    /// Offline push: a URL prefix device endpoints may use (repeatable), e.g. https://ntfy.example/.
    #[arg(long, value_name = "PREFIX")]
    push_allow: Vec<String>,
    /// Offline push through a push gateway at this URL instead of to device endpoints.
    #[arg(long, value_name = "URL")]
    push_gateway: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// Data directory holding the token secret.
    #[arg(long, default_value = "./ferry-data")]
    data_dir: PathBuf,
    /// User id.
    #[arg(long)]
    user: String,
    /// Device id.
    #[arg(long)]
    device: String,
    /// Lifetime, e.g. 90s, 15m, 24h, 7d.
    #[arg(long, default_value = "24h")]
    ttl: String,
}

#[derive(Args)]
struct RevokeArgs {
    /// Data directory of the running server (it holds the admin secret and the server's address).
    #[arg(long, default_value = "./ferry-data")]
    data_dir: PathBuf,
    /// User id.
    #[arg(long)]
    user: String,
    /// Device id; without it, every device of the user.
    #[arg(long)]
    device: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Token(args) => token(args),
        Command::Revoke(args) => revoke(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-server: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit code of a failed run: 3 when another live node already has this node id (cluster mode), so
/// that supervisors can tell "do not restart with this id" from other failures (1).
const EXIT_NODE_CONFLICT: u8 = 3;

fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<ferry_cluster::ClusterError>() {
        Some(ferry_cluster::ClusterError::NodeConflict { .. }) => EXIT_NODE_CONFLICT,
        _ => 1,
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    use ferry_protocol::ids::is_valid_name;
    anyhow::ensure!(is_valid_name(&args.user), "invalid user id {:?}", args.user);
    anyhow::ensure!(
        is_valid_name(&args.device),
        "invalid device id {:?}",
        args.device
    );
    let ttl = parse_duration(&args.ttl)?;
    std::fs::create_dir_all(&args.data_dir)?;
    let secret = TokenSecret::load_or_create(&args.data_dir.join(SECRET_FILE))?;
    println!(
        "{}",
        secret.mint(&args.user, &args.device, ttl, SystemTime::now())
    );
    Ok(())
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    use ferry_protocol::ids::is_valid_name;
    // Checked here too, so a typo is named before anything reaches the server.
    anyhow::ensure!(is_valid_name(&args.user), "invalid user id {:?}", args.user);
    if let Some(device) = &args.device {
        anyhow::ensure!(is_valid_name(device), "invalid device id {device:?}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let revoked = runtime.block_on(ferry_server::revoke::request(
        &args.data_dir,
        &args.user,
        args.device.as_deref(),
    ))?;
    // A stable line that scripts and tests parse.
    println!(
        "revoked user={} device={} revoked_at={} sessions_closed={}",
        revoked.user,
        revoked.device.as_deref().unwrap_or("*"),
        revoked.revoked_at,
        revoked.sessions_closed
    );
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let overrides = CliOverrides {
        config: args.config.clone(),
        data_dir: args.data_dir,
        listen: args.listen,
        http: args.http,
        cert: args.cert,
        key: args.key,
        log_format: args.log_format,
        node_id: args.node_id,
        redis: args.redis,
        advertise: args.advertise,
        require_durable_redis: args.require_durable_redis,
        push_allow: args.push_allow,
        push_gateway: args.push_gateway,
    };
    let settings = Settings::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    init_logging(settings.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server = ferry_server::start(settings).await?;
        // A stable line that scripts and tests parse.
        println!(
            "ferry-server listening quic={} http={} ca={}",
            server.local_addr(),
            server.http_addr(),
            server.ca_path().display()
        );
        let trigger = server.shutdown_trigger();
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = trigger.send(true);
        });
        server.wait().await;
        anyhow::Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

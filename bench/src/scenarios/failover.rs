//! `ferry-bench failover`: `kill -9` of one cluster node under traffic, and the time from the kill to
//! the last client caught up.
//!
//! Set-up: `--nodes` ferry-server *processes* in cluster mode on one redis-server (AOF always), and
//! `--clients` real `ferry-client` libraries: pairs of users in direct conversations, each user with a
//! phone and a laptop, homed round-robin on the nodes and knowing every node (home first), tuned to
//! notice a silent node within ~650 ms (Heartbeat every 250 ms, dead after 400 ms unanswered: after a
//! kill -9 no CONNECTION_CLOSE ever arrives). 100 ms into the silence (and every 100 ms after) the
//! client probes the node's port, and the ICMP port unreachable of the killed process's host ends the
//! session at once; each run reports how many moved clients the probe told. The
//! nodes share TLS session tickets, so a moved client resumes on its new node with 0-RTT.
//!
//! One run: every phone sends one message and the run waits for all of them to be acked and delivered
//! (steady state); then one node is killed and, at once, every phone sends one more message. The run
//! ends when every device reported every acked message of its conversation (but its own): that
//! instant minus the kill is the failover time. The killed node is restarted with its id before the
//! next run (its id is free at once: the start-up probe finds it dead). After each run the invariant
//! is checked over everything so far: every acked message reached every member device exactly once,
//! in seq order. `--kills` runs in a row; p50/p99 over them. Goal: p99 ≤ 1 s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use clap::Args;
use ferry_client::{BackoffConfig, Client, ClientBuilder, ConnectionState, Event, Receipt};
use ferry_protocol::ids;
use ferry_server::auth::TokenSecret;
use serde::Serialize;

use crate::peers::process::{free_port, Process};
use crate::peers::redis::Redis;
use crate::report::{FailoverRow, Results};

/// Arguments of `ferry-bench failover`.
#[derive(Args, Clone)]
pub struct FailoverArgs {
    /// Cluster nodes (ferry-server processes).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Client devices (two per user, two users per conversation).
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Kills in a row (one measured run each; at least 5 for a p99 worth the name).
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Where the clients' SQLite stores go (default: a temporary directory in /dev/shm where it exists,
    /// see [`client_store_dir`]).
    #[arg(long)]
    client_store_dir: Option<PathBuf>,
}

impl FailoverArgs {
    /// What `ferry-bench all` runs: full size, or 40 clients and 5 kills with `--quick`.
    pub fn for_all(quick: bool) -> FailoverArgs {
        FailoverArgs {
            nodes: 3,
            clients: if quick { 40 } else { 200 },
            kills: 5,
            client_store_dir: None,
        }
    }
}

/// Per-source admission limits lifted for a bench whose clients all share one source address.
const BENCH_CONFIG: &str =
    "[hardening]\nmax_connections_per_source = 100000\nhandshakes_per_sec_per_source = 100000\n";

/// Where the clients' stores go unless `--client-store-dir` says: a temporary directory on tmpfs
/// (/dev/shm) where there is one, else in `fallback`.
///
/// Each device of a real deployment commits to its own flash; here 200 of them share one disk (with
/// the nodes' Redis AOF and whatever else the machine runs), and their `synchronous=FULL` commits
/// queue behind each other: in a profile of the bench during the failover storm, SQLite commits and
/// their fsyncs were a quarter of the clients' process time, and every client's driver waits for its
/// commit before it dials, acks or reports. On tmpfs the store is the same SQLite, same WAL, same
/// commits and fsync calls; only the one shared disk of the harness is gone from what is measured.
fn client_store_dir(chosen: Option<&Path>, fallback: &Path) -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let parent = match chosen {
        Some(dir) => dir,
        None if shm.is_dir() => shm,
        None => fallback,
    };
    tempfile::tempdir_in(parent)
        .with_context(|| format!("a directory for the client stores in {}", parent.display()))
}

/// Bound for every wait (start-up, acks, catch-up).
const WAIT: Duration = Duration::from_secs(60);

/// One ferry-server node: its data dir survives a kill so the node restarts with the same identity.
struct Node {
    id: String,
    dir: PathBuf,
    quic: SocketAddr,
    process: Option<Process>,
}

impl Node {
    async fn start(&mut self, binary: &Path, redis: &str) -> anyhow::Result<()> {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        // Every client of the bench dials from 127.0.0.1: to the per-source admission limits
        // (FERRY-HARDEN-2) its 200 devices are one flooder, and after a kill up to two thirds of them
        // land on the survivors within a second. An
        // operator serving many users behind one NAT raises the limits the same way, by config.
        let config = self.dir.join("bench.toml");
        std::fs::write(&config, BENCH_CONFIG).context("writing the node's config")?;
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "--listen",
                &self.quic.to_string(),
                "--http",
                &http.to_string(),
            ])
            .args(["--node-id", &self.id, "--redis", redis])
            .env("RUST_LOG", "warn")
            .env("FERRY_LIMITS_SEND_RATE_PER_SEC", (u32::MAX / 2).to_string())
            .env("FERRY_LIMITS_SEND_BURST", (u32::MAX / 2).to_string());
        let mut process = Process::spawn("ferry-server", command, &self.dir)?;
        process.wait_tcp(http).await?;
        self.process = Some(process);
        Ok(())
    }

    fn kill9(&mut self) {
        // Dropping the process SIGKILLs it and reaps it.
        self.process = None;
    }
}

/// What one device reported, with when: the messages (conversation, seq) in report order, and the
/// instants its sessions ended and started (to split a failover into its phases).
#[derive(Default)]
struct Log {
    messages: Vec<(String, u64, Instant)>,
    /// When each session ended, and whether the port probe ended it (ICMP port unreachable) rather
    /// than the heartbeat timeout or a failed dial.
    lost: Vec<(Instant, bool)>,
    connected: Vec<Instant>,
    /// Why the client stopped for good (replaced, credentials refused), if it did.
    stopped: Option<String>,
}

type Seen = Arc<Mutex<Log>>;

struct Device {
    user: usize,
    phone: bool,
    client: Client,
    seen: Seen,
}

fn conversation(user: usize) -> anyhow::Result<String> {
    let pair = user - user % 2;
    ids::direct_conversation_id(&format!("u{pair}"), &format!("u{}", pair + 1))
        .context("direct conversation id")
}

/// Acked messages per conversation: seq → sending device index.
type Acked = BTreeMap<String, BTreeMap<u64, usize>>;

/// Runs the scenario and records its row (or the error).
pub async fn run(binary: &Path, args: FailoverArgs, results: &mut Results) {
    match measure(binary, &args).await {
        Ok(row) => results.failover.push(row),
        Err(e) => results.errors.push(format!("failover: {e:#}")),
    }
}

/// Starts the cluster and the clients, kills `args.kills` times, returns the figures.
pub async fn measure(binary: &Path, args: &FailoverArgs) -> anyhow::Result<FailoverRow> {
    ensure!(args.nodes >= 2, "failover needs at least 2 nodes");
    ensure!(
        args.clients >= 4 && args.clients % 4 == 0,
        "--clients must be a multiple of 4"
    );
    let redis = Redis::start().await?;
    let dir = tempfile::tempdir()?;
    let mut nodes: Vec<Node> = Vec::new();
    for i in 1..=args.nodes {
        let node_dir = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&node_dir)?;
        if let Some(first) = nodes.first() {
            copy_identity(&first.dir, &node_dir)?;
        }
        let mut node = Node {
            id: format!("n{i}"),
            dir: node_dir,
            quic: format!("127.0.0.1:{}", free_port()?).parse()?,
            process: None,
        };
        node.start(binary, redis.url()).await?;
        nodes.push(node);
    }
    let secret = TokenSecret::load(&nodes[0].dir.join(ferry_server::server::SECRET_FILE))?;
    let stores = client_store_dir(args.client_store_dir.as_deref(), dir.path())?;
    println!("failover: client stores in {}", stores.path().display());
    let ca = nodes[0].dir.join("cert.pem");
    let mut devices = Vec::new();
    for i in 0..args.clients {
        let (user, phone) = (i / 2, i % 2 == 0);
        let home = i % nodes.len();
        let endpoints = (0..nodes.len()).map(|k| nodes[(home + k) % nodes.len()].quic.to_string());
        let device_id = if phone { "phone" } else { "laptop" };
        let token = secret.mint(
            &format!("u{user}"),
            device_id,
            Duration::from_secs(3600),
            SystemTime::now(),
        );
        let (client, mut events) = ClientBuilder::new()
            .endpoints(endpoints)
            .ca_file(&ca)
            .token(token)
            .device_id(device_id)
            .heartbeat_interval(Duration::from_millis(250))
            .heartbeat_timeout(Duration::from_millis(400))
            .connect_timeout(Duration::from_secs(1))
            .backoff(BackoffConfig {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
            })
            .store_path(stores.path().join(format!("client-{i}.sqlite3")))
            .build()
            .await?;
        let seen: Seen = Arc::default();
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let now = Instant::now();
                let mut log = sink.lock().expect("seen lock");
                match event {
                    Event::Message(m) => log.messages.push((m.conversation, m.seq, now)),
                    Event::Connection(ConnectionState::Disconnected { reason }) => {
                        log.lost.push((now, reason.contains("port closed")))
                    }
                    Event::Connection(ConnectionState::Connected { .. }) => log.connected.push(now),
                    Event::Connection(
                        state @ (ConnectionState::Replaced | ConnectionState::AuthFailed { .. }),
                    ) => log.stopped = Some(format!("{state:?}")),
                    _ => {}
                }
            }
        });
        devices.push(Device {
            user,
            phone,
            client,
            seen,
        });
    }
    // Each client must have had a session once; requiring all of them connected at one same instant
    // never held on a loaded machine, where a 400 ms heartbeat timeout makes some client reconnect at
    // any moment (sends are queued meanwhile, so the runs stay exact).
    let connected = wait_for(|| devices.iter().all(|d| d.client.stats().sessions > 0)).await;
    ensure!(connected, "not every client had a session within {WAIT:?}");

    let mut acked = Acked::new();
    let mut times = Vec::new();
    let mut phases = Phases::default();
    for run in 0..args.kills {
        // Steady state: one message per phone, all delivered.
        let receipts = send_round(&devices, run, "before").await?;
        collect_acks(receipts, &mut acked).await?;
        caught_up(&devices, &acked, None).await?;
        let victim = run % nodes.len();
        let on_victim: Vec<usize> = (0..devices.len())
            .filter(|&i| devices[i].client.stats().endpoint == Some(nodes[victim].quic))
            .collect();
        nodes[victim].kill9();
        let killed = Instant::now();
        let receipts = send_round(&devices, run, "after").await?;
        collect_acks(receipts, &mut acked).await?;
        let last = caught_up(&devices, &acked, Some(killed)).await?;
        let took = last.saturating_duration_since(killed);
        let RunCounts {
            spurious,
            probed,
            retried,
        } = phases.record(&devices, &on_victim, killed);
        let zero_rtt = on_victim
            .iter()
            .filter(|&&i| devices[i].client.stats().zero_rtt)
            .count();
        println!(
            "failover run {}: killed {} ({} clients on it, {probed} of them detected by the port probe, {retried} needing more than one dial, {zero_rtt} resumed with 0-RTT, {spurious} others lost their session), last client caught up after {:.0} ms",
            run + 1,
            nodes[victim].id,
            on_victim.len(),
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        nodes[victim].start(binary, redis.url()).await?;
    }
    for d in &devices {
        d.client.shutdown().await;
    }
    times.sort();
    let pct = |p: f64| percentile_ms(&times, p);
    let row = FailoverRow {
        nodes: args.nodes,
        clients: args.clients,
        kills: args.kills,
        recovered: times.len(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        phases: phases.rows(),
    };
    println!(
        "failover: {} nodes, {} clients, {} kills, all recovered with nothing lost: p50 {:.0} ms, p99 {:.0} ms",
        row.nodes, row.clients, row.kills, row.p50_ms, row.p99_ms
    );
    for p in &row.phases {
        println!(
            "failover phase {:<28} p50 {:>6.0} ms  p99 {:>6.0} ms  max {:>6.0} ms  ({} samples)",
            p.phase, p.p50_ms, p.p99_ms, p.max_ms, p.samples
        );
    }
    Ok(row)
}

/// The files that make nodes one cluster to clients (as in the README's cluster section).
fn copy_identity(from: &Path, to: &Path) -> anyhow::Result<()> {
    for name in ["cert.pem", "key.pem", ferry_server::server::SECRET_FILE] {
        std::fs::copy(from.join(name), to.join(name)).with_context(|| format!("copying {name}"))?;
    }
    Ok(())
}

async fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done()
}

/// Every phone queues one message; the receipts with the sending device's index.
async fn send_round(
    devices: &[Device],
    run: usize,
    phase: &str,
) -> anyhow::Result<Vec<(usize, Receipt)>> {
    let mut receipts = Vec::new();
    for (i, d) in devices.iter().enumerate().filter(|(_, d)| d.phone) {
        let body = format!("u{}/{run}/{phase}", d.user);
        let receipt = d.client.send(conversation(d.user)?, body).await;
        let receipt = receipt.with_context(|| {
            let stopped = d.seen.lock().expect("seen lock").stopped.clone();
            format!("device {i} (u{}) stopped: {stopped:?}", d.user)
        })?;
        receipts.push((i, receipt));
    }
    Ok(receipts)
}

async fn collect_acks(receipts: Vec<(usize, Receipt)>, acked: &mut Acked) -> anyhow::Result<()> {
    for (i, r) in receipts {
        let stored = tokio::time::timeout(WAIT, r)
            .await
            .context("no ack in time")??;
        let seqs = acked.entry(stored.conversation).or_default();
        if seqs.insert(stored.seq, i).is_some() {
            bail!("seq {} acked twice", stored.seq);
        }
    }
    Ok(())
}

/// Waits until every device reported every acked message of its conversation (but its own), checks
/// exactly once and in order, and returns when the last one arrived (reports after `since` only).
async fn caught_up(
    devices: &[Device],
    acked: &Acked,
    since: Option<Instant>,
) -> anyhow::Result<Instant> {
    let mut last = since.unwrap_or_else(Instant::now);
    for (i, d) in devices.iter().enumerate() {
        let conv = conversation(d.user)?;
        let want: Vec<u64> = acked
            .get(&conv)
            .map(|seqs| {
                seqs.iter()
                    .filter(|(_, s)| **s != i)
                    .map(|(q, _)| *q)
                    .collect()
            })
            .unwrap_or_default();
        let got = || -> Vec<(u64, Instant)> {
            let seen = d.seen.lock().expect("seen lock");
            seen.messages
                .iter()
                .filter(|(c, _, _)| *c == conv)
                .map(|(_, q, t)| (*q, *t))
                .collect()
        };
        if !wait_for(|| got().len() >= want.len()).await {
            bail!(
                "device {i}: {} of {} messages after {WAIT:?}",
                got().len(),
                want.len()
            );
        }
        let got = got();
        let seqs: Vec<u64> = got.iter().map(|(q, _)| *q).collect();
        ensure!(
            seqs == want,
            "device {i}: not exactly once in order: {seqs:?} vs {want:?}"
        );
        if let Some(&(_, at)) = got.last() {
            last = last.max(at);
        }
    }
    Ok(last)
}

/// What one run saw beside its durations.
#[derive(Default)]
struct RunCounts {
    /// Clients *not* on the killed node that lost their session too (a heartbeat timeout too tight for
    /// the machine's load shows up here, not as a slower failover).
    spurious: usize,
    /// Clients on it told by the port probe (the others waited for the heartbeat timeout).
    probed: usize,
    /// Clients on it whose first dial after the kill failed (timed out or refused) and needed
    /// another; a refused 0-RTT flight ends no session and does not count.
    retried: usize,
}

/// One phase of a failover over every run: per-client durations, pooled.
#[derive(Serialize, Clone)]
pub struct PhaseRow {
    /// What is measured, from when to when.
    pub phase: &'static str,
    /// Client samples (one per affected client per run).
    pub samples: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// Per-client phase durations of every run so far. A client on the killed node goes through
/// detection (kill → its session declared dead), reconnection (→ Welcome from another node, in 0-RTT
/// when the new node accepts the shared ticket) and catch-up (→ the last message of the run reported:
/// Sync, Pull and the resent Sends of the peers); every client has a total (kill → its last message).
#[derive(Default)]
struct Phases {
    detect: Vec<Duration>,
    reconnect: Vec<Duration>,
    catch_up: Vec<Duration>,
    total_moved: Vec<Duration>,
    total_stayed: Vec<Duration>,
}

impl Phases {
    /// Records one run and counts what it saw (see [`RunCounts`]).
    fn record(&mut self, devices: &[Device], on_victim: &[usize], killed: Instant) -> RunCounts {
        let mut counts = RunCounts::default();
        for (i, d) in devices.iter().enumerate() {
            let log = d.seen.lock().expect("seen lock");
            let last = log
                .messages
                .iter()
                .map(|m| m.2)
                .filter(|t| *t >= killed)
                .max();
            let lost = log.lost.iter().copied().find(|(t, _)| *t >= killed);
            if !on_victim.contains(&i) {
                counts.spurious += usize::from(lost.is_some());
                self.total_stayed.extend(last.map(|t| t - killed));
                continue;
            }
            self.total_moved.extend(last.map(|t| t - killed));
            let Some((lost, by_probe)) = lost else {
                continue;
            };
            counts.probed += usize::from(by_probe);
            // Every failed dial ends in a Disconnected event too.
            let losses = log.lost.iter().filter(|(t, _)| *t >= killed).count();
            counts.retried += usize::from(losses > 1);
            self.detect.push(lost - killed);
            let Some(connected) = log.connected.iter().copied().find(|t| *t >= lost) else {
                continue;
            };
            self.reconnect.push(connected - lost);
            self.catch_up
                .extend(last.map(|t| t.saturating_duration_since(connected)));
        }
        counts
    }

    fn rows(&self) -> Vec<PhaseRow> {
        [
            ("detect (kill → lost)", &self.detect),
            ("reconnect (lost → Welcome)", &self.reconnect),
            ("catch-up (Welcome → last msg)", &self.catch_up),
            ("moved: kill → last msg", &self.total_moved),
            ("stayed: kill → last msg", &self.total_stayed),
        ]
        .into_iter()
        .map(|(phase, samples)| {
            let mut sorted = samples.clone();
            sorted.sort();
            PhaseRow {
                phase,
                samples: sorted.len(),
                p50_ms: percentile_ms(&sorted, 0.50),
                p99_ms: percentile_ms(&sorted, 0.99),
                max_ms: percentile_ms(&sorted, 1.0),
            }
        })
        .collect()
    }
}

/// The `p` quantile of sorted durations in ms (nearest rank; 0 for no samples).
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

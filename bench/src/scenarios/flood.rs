//! `flood`: normal users keep sending (closed loop, the send scenario's machinery) while a flood hits
//! the same ferry-server on loopback; one phase without a flood, then one per kind (spec section 17):
//!
//! - `initials`: QUIC Initials that never complete. Each is a real client Initial (a ClientHello under
//!   a fresh connection id), captured on a local socket and replayed to the server from a pool of
//!   sockets that never answer, so the server pays for a TLS handshake — until Retry (FERRY-HARDEN-1);
//! - `half-open`: completed QUIC handshakes that never send Hello (held until the server's Hello
//!   timeout or the phase ends);
//! - `churn`: full logins (Hello → Welcome) closed at once, over and over;
//! - `idle-streams`: sessions of the users' conversation partner that never read, so the server's
//!   deliveries to them pile up until it resets their streams (FERRY-HARDEN-4).
//!
//! Every flood is bounded in rate (attempts per second), in count (rate × phase length) and in time
//! (the phase); loopback only. Per phase: the normal users' send→ack p50/p99 and throughput, failed
//! sends, the server's peak RSS and CPU, Retries sent and per-source refusals (from `/metrics`).
//! Goal: p99 within 2× of the quiet phase and no failed send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_interop::driver::{self, Session};
use ferry_protocol::ids;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use crate::harness::{Counted, Params};
use crate::peers::ferry::{open_split, send_until, FerryServer};
use crate::peers::process::{cpu_ticks, rss_kib, ticks_per_sec};
use crate::report::Results;

/// `ferry-bench flood` options.
#[derive(clap::Args, Clone, Debug)]
pub struct FloodArgs {
    /// Seconds of each phase (quiet, then one per flood kind).
    #[arg(long, default_value_t = 10)]
    pub phase_secs: u64,
    /// Flood attempts per second (Initials; the other kinds use a fraction, see the scenario docs).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Normal users, each keeping a window of 4 sends in flight.
    #[arg(long, default_value_t = 10)]
    pub users: usize,
}

/// What a flood is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flood {
    /// Initials that never complete.
    Initials,
    /// Handshakes without Hello.
    HalfOpen,
    /// Logins closed at once.
    Churn,
    /// Sessions that never read their delivery streams.
    IdleStreams,
}

impl Flood {
    /// Every kind, in run order.
    pub const ALL: [Flood; 4] = [
        Flood::Initials,
        Flood::HalfOpen,
        Flood::Churn,
        Flood::IdleStreams,
    ];

    fn name(self) -> &'static str {
        match self {
            Flood::Initials => "initials",
            Flood::HalfOpen => "half-open",
            Flood::Churn => "churn",
            Flood::IdleStreams => "idle-streams",
        }
    }

    /// Attempts per second for this kind: the full rate for Initials (cheap to make), a fifth for
    /// completed handshakes, a tenth for logins; `idle-streams` opens `rate / 20` sessions once.
    fn rate(self, rate: u32) -> u32 {
        match self {
            Flood::Initials => rate,
            Flood::HalfOpen => rate / 5,
            Flood::Churn => rate / 10,
            Flood::IdleStreams => rate / 20,
        }
        .max(1)
    }
}

/// One phase's figures.
#[derive(Clone, Debug)]
pub struct PhaseRow {
    /// `quiet` or the flood's name.
    pub phase: &'static str,
    /// Normal sends acknowledged.
    pub acked: u64,
    /// Normal sends that failed (refused, timed out, connection lost); the goal is 0.
    pub failed: u64,
    /// Acked sends per second.
    pub per_sec: f64,
    /// Send→ack p50, µs.
    pub p50_us: u64,
    /// Send→ack p99, µs.
    pub p99_us: u64,
    /// Flood attempts made.
    pub attempts: u64,
    /// Server peak RSS during the phase, KiB.
    pub peak_rss_kib: u64,
    /// Server CPU during the phase, percent of one core.
    pub cpu_percent: f64,
    /// Retries the server sent during the phase.
    pub retries: u64,
    /// Connections refused by the per-source limits during the phase.
    pub refused: u64,
}

/// Runs the quiet phase and every flood against a fresh ferry-server; prints one line per phase and
/// records failures (and missed goals) as errors.
pub async fn run(binary: &std::path::Path, args: FloodArgs, results: &mut Results) {
    match measure(binary, &args, &Flood::ALL).await {
        Ok(rows) => {
            for row in &rows {
                println!("{}", line(row));
            }
            for problem in goals(&rows) {
                results.errors.push(format!("flood: {problem}"));
            }
        }
        Err(e) => results.errors.push(format!("flood: {e:#}")),
    }
}

/// `phase  acked/s  acked  p50  p99  failed  attempts  rss  cpu  retries  refused`.
pub fn line(r: &PhaseRow) -> String {
    format!(
        "flood {:>12}: {:>8.0} acked/s ({} acked)  p50 {:>6} µs  p99 {:>7} µs  failed {}  attempts {:>6}  rss {:>6} KiB  cpu {:>5.1} %  retries {:>5}  refused {:>5}",
        r.phase, r.per_sec, r.acked, r.p50_us, r.p99_us, r.failed, r.attempts, r.peak_rss_kib, r.cpu_percent, r.retries, r.refused
    )
}

/// The goals the rows miss: a failed send anywhere, or a p99 above twice the quiet one.
pub fn goals(rows: &[PhaseRow]) -> Vec<String> {
    let quiet = rows
        .iter()
        .find(|r| r.phase == "quiet")
        .map_or(0, |r| r.p99_us);
    let mut missed = Vec::new();
    for r in rows {
        if r.failed > 0 {
            missed.push(format!("{}: {} failed sends", r.phase, r.failed));
        }
        if quiet > 0 && r.p99_us > 2 * quiet {
            missed.push(format!(
                "{}: p99 {} µs is more than twice the quiet {} µs",
                r.phase, r.p99_us, quiet
            ));
        }
    }
    missed
}

/// Starts a server, logs the normal users in, and runs the quiet phase then each of `floods`.
pub async fn measure(
    binary: &std::path::Path,
    args: &FloodArgs,
    floods: &[Flood],
) -> anyhow::Result<Vec<PhaseRow>> {
    let server = Arc::new(FerryServer::start(binary).await?);
    let mut users = Vec::new();
    for i in 0..args.users {
        let user = format!("u{i}");
        users.push((user.clone(), server.session(&user).await?));
    }
    let phase = Duration::from_secs(args.phase_secs.max(1));
    let mut rows = vec![phase_run(&server, &users, None, args.rate, phase).await?];
    for &flood in floods {
        rows.push(phase_run(&server, &users, Some(flood), args.rate, phase).await?);
    }
    // The server must still serve after everything: a fresh login answers a heartbeat.
    let mut check = server.session("after-flood").await?;
    check
        .heartbeat(0)
        .await
        .context("the server stopped serving after the floods")?;
    Ok(rows)
}

/// One phase: the flood (if any) and the normal load side by side for `length`.
async fn phase_run(
    server: &Arc<FerryServer>,
    users: &[(String, Session)],
    flood: Option<Flood>,
    rate: u32,
    length: Duration,
) -> anyhow::Result<PhaseRow> {
    let before = scrape(server.http).await?;
    let pid = server.pid();
    let ticks_before = cpu_ticks(pid)?;
    let started = Instant::now();
    let deadline = started + length;
    let attempts = Arc::new(AtomicU64::new(0));
    let flood_task = flood.map(|f| {
        let (server, attempts) = (server.clone(), attempts.clone());
        tokio::spawn(async move { run_flood(&server, f, rate, deadline, &attempts).await })
    });
    let sampler = tokio::spawn(peak_rss(pid, deadline));
    let (counted, failed) = normal_load(users, deadline).await;
    if let Some(task) = flood_task {
        task.await.context("flood task panicked")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid)? - ticks_before) as f64 / ticks_per_sec() as f64;
    let after = scrape(server.http).await?;
    let refused = [
        "ferry_refused_source_connections_total",
        "ferry_refused_source_handshakes_total",
        "ferry_refused_source_table_total",
    ]
    .iter()
    .map(|m| value(&after, m).saturating_sub(value(&before, m)))
    .sum();
    Ok(PhaseRow {
        phase: flood.map_or("quiet", Flood::name),
        acked: counted.acked,
        failed,
        per_sec: counted.acked as f64 / elapsed,
        p50_us: counted.latency.value_at_quantile(0.5),
        p99_us: counted.latency.value_at_quantile(0.99),
        attempts: attempts.load(Relaxed),
        peak_rss_kib: sampler.await.unwrap_or(0),
        cpu_percent: cpu / elapsed * 100.0,
        retries: value(&after, "ferry_retries_sent_total")
            .saturating_sub(value(&before, "ferry_retries_sent_total")),
        refused,
    })
}

/// The normal users: each keeps 4 sends in flight on its conversation with `sink` until `deadline`.
/// Returns the merged counts and how many users' runs failed (a refused or timed-out send fails the
/// user's run; every send of a run that ends Ok was acked).
async fn normal_load(users: &[(String, Session)], deadline: Instant) -> (Counted, u64) {
    let p = Params {
        clients: users.len(),
        body: 256,
        window: 4,
        duration: deadline.saturating_duration_since(Instant::now()),
    };
    let mut tasks = Vec::new();
    for (user, session) in users {
        let (user, connection, p) = (user.clone(), session.connection.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            let conv = ids::direct_conversation_id(&user, "sink").context("conversation id")?;
            let (send, reader) = open_split(&connection, &conv).await?;
            send_until(&user, send, reader, &p, |_| {
                (Instant::now() < deadline).then(Instant::now)
            })
            .await
        }));
    }
    let (mut total, mut failed) = (Counted::new(), 0);
    for task in tasks {
        match task.await {
            Ok(Ok(counted)) => {
                if total.merge(counted).is_err() {
                    failed += 1;
                }
            }
            _ => failed += 1,
        }
    }
    (total, failed)
}

/// Peak RSS of `pid` until `deadline`, sampled every 100 ms.
async fn peak_rss(pid: u32, deadline: Instant) -> u64 {
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// Runs `flood` at its rate until `deadline`; counts attempts. Failures of single attempts are the
/// point of a flood and are not errors; only a broken setup is.
async fn run_flood(
    server: &FerryServer,
    flood: Flood,
    rate: u32,
    deadline: Instant,
    attempts: &AtomicU64,
) -> anyhow::Result<()> {
    let rate = flood.rate(rate);
    match flood {
        Flood::Initials => initials(server, rate, deadline, attempts).await,
        Flood::HalfOpen => half_open(server, rate, deadline, attempts).await,
        Flood::Churn => churn(server, rate, deadline, attempts).await,
        Flood::IdleStreams => idle_streams(server, rate, deadline, attempts).await,
    }
}

/// Ticks `rate` times a second until `deadline`, at most `rate × seconds` times in all, calling
/// `attempt` each time (it must not block the tick for long: spawn what takes time).
async fn paced(rate: u32, deadline: Instant, attempts: &AtomicU64, mut attempt: impl FnMut(u64)) {
    let secs = deadline
        .saturating_duration_since(Instant::now())
        .as_secs_f64();
    let max = (f64::from(rate) * secs).ceil() as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for n in 0..max {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        attempts.fetch_add(1, Relaxed);
        attempt(n);
    }
}

/// Sockets the replayed Initials come from; they never read, so the server's answers go nowhere.
const INITIAL_SOURCES: usize = 64;

async fn initials(
    server: &FerryServer,
    rate: u32,
    deadline: Instant,
    attempts: &AtomicU64,
) -> anyhow::Result<()> {
    let client = driver::endpoint(&server.ca, &[ferry_protocol::ALPN])?;
    let mut sources = Vec::with_capacity(INITIAL_SOURCES);
    for _ in 0..INITIAL_SOURCES {
        sources.push(UdpSocket::bind("127.0.0.1:0").await?);
    }
    let sources = Arc::new(sources);
    let addr = server.addr;
    paced(rate, deadline, attempts, |n| {
        let (client, sources) = (client.clone(), sources.clone());
        tokio::spawn(async move {
            if let Some(initial) = capture_initial(&client).await {
                let source = &sources[n as usize % INITIAL_SOURCES];
                let _ = source.send_to(&initial, addr).await;
            }
        });
    })
    .await;
    client.close(0u32.into(), b"flood over");
    Ok(())
}

/// A real client Initial under a fresh connection id: `client` connects to a throwaway local socket
/// that records the first datagram; the attempt is then abandoned.
async fn capture_initial(client: &quinn::Endpoint) -> Option<Vec<u8>> {
    let sink = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let connecting = client.connect(sink.local_addr().ok()?, "localhost").ok()?;
    let mut buf = vec![0u8; 2048];
    let got = tokio::time::timeout(Duration::from_secs(1), sink.recv_from(&mut buf)).await;
    drop(connecting);
    let (len, _) = got.ok()?.ok()?;
    buf.truncate(len);
    Some(buf)
}

/// Most half-open connections held at once.
const MAX_HALF_OPEN: usize = 2_000;

async fn half_open(
    server: &FerryServer,
    rate: u32,
    deadline: Instant,
    attempts: &AtomicU64,
) -> anyhow::Result<()> {
    let held: Arc<std::sync::Mutex<Vec<quinn::Connection>>> = Arc::default();
    let target = server.target.clone();
    paced(rate, deadline, attempts, |_| {
        let (target, held) = (target.clone(), held.clone());
        tokio::spawn(async move {
            if let Ok(Ok(connection)) =
                tokio::time::timeout(Duration::from_secs(5), target.connect()).await
            {
                let mut held = held.lock().expect("not poisoned");
                if held.len() < MAX_HALF_OPEN {
                    held.push(connection); // never sends Hello
                }
            }
        });
    })
    .await;
    for connection in held.lock().expect("not poisoned").drain(..) {
        connection.close(0u32.into(), b"flood over");
    }
    Ok(())
}

/// Logins in progress at once.
const MAX_CHURNING: u64 = 64;

async fn churn(
    server: &FerryServer,
    rate: u32,
    deadline: Instant,
    attempts: &AtomicU64,
) -> anyhow::Result<()> {
    let busy = Arc::new(AtomicU64::new(0));
    let target = server.target.clone();
    paced(rate, deadline, attempts, |n| {
        if busy.load(Relaxed) >= MAX_CHURNING {
            return;
        }
        busy.fetch_add(1, Relaxed);
        let (target, busy) = (target.clone(), busy.clone());
        let token = server.token_for(&format!("churn{}", n % 100), "bench");
        tokio::spawn(async move {
            let login = target.session(&token, "bench");
            if let Ok(Ok(session)) = tokio::time::timeout(Duration::from_secs(5), login).await {
                session.close();
            }
            busy.fetch_sub(1, Relaxed);
        });
    })
    .await;
    Ok(())
}

async fn idle_streams(
    server: &FerryServer,
    count: u32,
    deadline: Instant,
    attempts: &AtomicU64,
) -> anyhow::Result<()> {
    // Devices of `sink`, the partner of every normal user: every message is delivered to each of them,
    // and none ever accepts the server's stream, so flow control stops the server's writes.
    let mut sessions = Vec::new();
    for i in 0..count {
        attempts.fetch_add(1, Relaxed);
        let device = format!("idle{i}");
        let token = server.token_for("sink", &device);
        if let Ok(session) = server.target.session(&token, &device).await {
            sessions.push(session);
        }
    }
    tokio::time::sleep_until(deadline.into()).await;
    for session in sessions {
        session.close();
    }
    Ok(())
}

/// `GET /metrics` of the server (HTTP/1.0: the server answers and closes).
async fn scrape(http: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text))
        .await
        .context("/metrics did not answer")??;
    Ok(text)
}

/// The value of an unlabelled counter in a `/metrics` text; 0 when absent.
fn value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ferry-server built next to this test binary (`target/<profile>/ferry-server`; scripts/test.sh
    /// builds every binary first).
    fn server_binary() -> std::path::PathBuf {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().and_then(std::path::Path::parent).unwrap();
        let path = dir.join("ferry-server");
        assert!(
            path.exists(),
            "{} is missing: build the binaries first",
            path.display()
        );
        path
    }

    /// The short flood of `scripts/test.sh`: every kind for about a second while normal users send;
    /// no send may fail and the server must serve afterwards (`measure` checks a fresh login). The
    /// latency goal is for the full run's figures, not for a loaded test machine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_flood_fails_no_send_and_the_server_keeps_serving() {
        // About a second per phase, gentle rates.
        let short = FloodArgs {
            phase_secs: 1,
            rate: 200,
            users: 4,
        };
        let rows = measure(&server_binary(), &short, &Flood::ALL)
            .await
            .expect("the flood run completes");
        assert_eq!(rows.len(), 1 + Flood::ALL.len());
        for row in &rows {
            eprintln!("{}", line(row));
            assert_eq!(row.failed, 0, "{}", line(row));
            assert!(row.acked > 0, "no normal send was acked: {}", line(row));
            if row.phase != "quiet" {
                assert!(row.attempts > 0, "the flood did nothing: {}", line(row));
            }
        }
    }

    #[test]
    fn counters_are_read_by_exact_name_and_goals_compare_with_the_quiet_phase() {
        let text = "ferry_retries_sent_total 7\nferry_retries_sent_total_x 9\n";
        assert_eq!(value(text, "ferry_retries_sent_total"), 7);
        assert_eq!(value(text, "ferry_missing_total"), 0);
        let row = |phase, p99_us, failed| PhaseRow {
            phase,
            acked: 1,
            failed,
            per_sec: 1.0,
            p50_us: 1,
            p99_us,
            attempts: 1,
            peak_rss_kib: 1,
            cpu_percent: 1.0,
            retries: 0,
            refused: 0,
        };
        let rows = [
            row("quiet", 100, 0),
            row("churn", 200, 0),
            row("initials", 201, 1),
        ];
        let missed = goals(&rows);
        assert_eq!(missed.len(), 2, "{missed:?}");
        assert!(
            missed.iter().all(|m| m.starts_with("initials")),
            "{missed:?}"
        );
    }
}

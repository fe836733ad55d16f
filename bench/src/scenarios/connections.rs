//! `connections`: as many idle authenticated connections (Hello/Welcome done) as the target asks, on a
//! `ferry-server` process; its RSS per connection (VmRSS of /proc/PID/status, sampled while opening)
//! and its CPU while they sit idle sending only heartbeats and QUIC keep-alives (/proc/PID/stat).
//!
//! The connections behave like idle ferry/1 clients: they PING at the spec's QUIC keep-alive (not the
//! conformance runner's faster one) and send a Heartbeat at the interval Welcome announced. They come
//! from [`ENDPOINTS`] client endpoints on as many loopback addresses, so the bench's own QUIC work is
//! spread over several endpoint drivers and the server sees several sources.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_interop::driver::{Session, Target};
use ferry_quic::{ClientConfigBuilder, TrustRoots};
use tokio::sync::{watch, Semaphore};

use super::Config;
use crate::harness;
use crate::peers::ferry::{FerryServer, LIFTED_SOURCE_LIMITS};
use crate::peers::process::{cpu_ticks, rss_kib, ticks_per_sec};
use crate::report::{ConnectionsRow, Results};

/// Handshakes in flight while opening (bounded so the server's accept path is not the thing measured).
const OPENING_CONCURRENCY: usize = 32;
/// Failed logins tolerated while opening, as a share of those attempted: on a loaded 2-core machine a
/// few logins miss the server's 10 s Hello timeout; past this share the server is taken to be full and
/// opening stops.
const MAX_FAILED_SHARE: f64 = 0.01;
/// RSS samples taken while opening.
const SAMPLES: usize = 10;
/// Client endpoints, on 127.0.0.1, 127.0.0.2, ... (each one UDP socket and one quinn driver task).
const ENDPOINTS: u8 = 8;
/// Handshakes per second assumed for the progress bar (this machine does ~1,000 with the server).
const EXPECTED_HANDSHAKES_PER_SEC: usize = 1_000;

/// Runs the scenario and records it.
pub async fn run(config: &Config, results: &mut Results) {
    match measure(config).await {
        Ok(row) => {
            println!(
                "connections: {}/{} idle ({} logins failed), {:.1} KiB RSS each, idle CPU {:.2} % \
                 ({:.2} % per 10k); bench client {:.1} KiB each{}",
                row.opened,
                row.target,
                row.failed_logins,
                row.per_conn_kib,
                row.idle_cpu_pct,
                row.idle_cpu_pct_per_10k,
                row.client_kib_per_conn,
                row.stopped_by
                    .as_ref()
                    .map(|e| format!("; opening stopped: {e}"))
                    .unwrap_or_default(),
            );
            results.connections = Some(row);
        }
        Err(e) => results.errors.push(format!("connections: {e:#}")),
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (a client opening many connections may need
/// sockets; quinn itself multiplexes them on one).
pub fn raise_fd_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit");
        }
    }
    Ok(limit.rlim_cur)
}

/// The client endpoints: the one client configuration of `ferry-quic` with its default (the spec's)
/// keep-alive, each bound to its own loopback address.
fn client_targets(server: &FerryServer) -> anyhow::Result<Vec<Target>> {
    let pem = std::fs::read(&server.ca).context("reading the server's certificate")?;
    let config = ClientConfigBuilder::new(TrustRoots::Pem(pem)).build()?;
    (1..=ENDPOINTS)
        .map(|i| {
            let local = SocketAddr::from((Ipv4Addr::new(127, 0, 0, i), 0));
            let mut endpoint = quinn::Endpoint::client(local)
                .with_context(|| format!("binding a client endpoint on {local}"))?;
            endpoint.set_default_client_config(config.clone());
            Ok(Target {
                addr: server.addr,
                endpoint,
            })
        })
        .collect()
}

async fn measure(config: &Config) -> anyhow::Result<ConnectionsRow> {
    raise_fd_limit()?;
    let dir = tempfile::tempdir()?;
    let server_config = dir.path().join("ferry.toml");
    std::fs::write(&server_config, LIFTED_SOURCE_LIMITS)?;
    let args = ["--config", server_config.to_str().context("config path")?];
    let server = Arc::new(FerryServer::start_with(&config.ferry_binary, &args).await?);
    let pid = server.pid();
    let targets = client_targets(&server)?;
    // One connection first, so that what the first one allocates once (TLS, store, runtime) is not
    // charged to every connection.
    let first = targets[0].session(&server.token("c0"), "bench").await?;
    let heartbeat_interval_ms = first.welcome.heartbeat_interval_ms;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid)?;
    let client_before = rss_kib(std::process::id())?;
    let target = config.connections.max(2);
    let bar = harness::progress(
        format!("opening {target} connections"),
        Duration::from_secs((target / EXPECTED_HANDSHAKES_PER_SEC).max(10) as u64),
    );
    let slots = Arc::new(Semaphore::new(OPENING_CONCURRENCY));
    // Each session heartbeats from the moment it is open: opening 20k takes longer than the server's
    // 75 s idle timeout, which would otherwise close the first ones before the idle phase.
    let interval = Duration::from_millis(u64::from(heartbeat_interval_ms.max(1000)));
    let (stop, stopped) = watch::channel(false);
    let beat = |i: usize, session: Session| {
        let offset = interval.mul_f64(i as f64 / target as f64);
        tokio::spawn(keep_beating(session, interval, offset, stopped.clone()))
    };
    let mut sessions = vec![beat(0, first)];
    let mut samples = Vec::new();
    let mut stopped_by = None;
    let (mut failed_logins, mut first_failure) = (0, None);
    let step = (target / SAMPLES).max(1);
    let mut opened_at = 1;
    while opened_at < target && stopped_by.is_none() {
        let batch_end = (opened_at + step).min(target);
        let mut tasks = Vec::new();
        for i in opened_at..batch_end {
            let (server, slots) = (server.clone(), slots.clone());
            let endpoint = targets[i % targets.len()].clone();
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await?;
                let token = server.token(&format!("c{i}"));
                anyhow::Ok((i, endpoint.session(&token, "bench").await?))
            }));
        }
        // As many as fit: failures are counted, and once they pass MAX_FAILED_SHARE of the attempts
        // (after their batch completes) opening stops and the connections opened so far are measured.
        for task in tasks {
            match task.await? {
                Ok((i, session)) => sessions.push(beat(i, session)),
                Err(e) => {
                    failed_logins += 1;
                    first_failure.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        opened_at = batch_end;
        if failed_logins as f64 > MAX_FAILED_SHARE * opened_at as f64 {
            let first = first_failure.as_deref().unwrap_or_default();
            stopped_by = Some(format!(
                "{failed_logins} of {opened_at} logins failed, the first with: {first}"
            ));
        }
        let rss = rss_kib(pid)?;
        samples.push((
            sessions.len(),
            rss.saturating_sub(rss_before) as f64 / (sessions.len() - 1).max(1) as f64,
        ));
    }
    bar.finish_and_clear();
    let opened = sessions.len();
    // Idle: only heartbeats and QUIC keep-alives; the server's CPU is measured over this window.
    let idle_started = Instant::now();
    let ticks_before = cpu_ticks(pid)?;
    tokio::time::sleep(config.idle).await;
    let idle_secs = idle_started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid)?.saturating_sub(ticks_before);
    let rss_after = rss_kib(pid)?;
    let client_after = rss_kib(std::process::id())?;
    let idle_cpu_pct = 100.0 * ticks as f64 / ticks_per_sec() as f64 / idle_secs;
    let _ = stop.send(true);
    let mut alive = Vec::new();
    for task in sessions {
        // A session whose heartbeat failed is counted as lost, not fatal to the measurement.
        if let Ok(session) = task.await? {
            alive.push(session);
        }
    }
    let lost_while_idle = opened - alive.len();
    for s in &alive {
        s.close();
    }
    let per_conn =
        |before: u64, after: u64| after.saturating_sub(before) as f64 / (opened - 1).max(1) as f64;
    Ok(ConnectionsRow {
        target,
        opened,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        per_conn_kib: per_conn(rss_before, rss_after),
        samples,
        idle_secs,
        heartbeat_interval_ms,
        idle_cpu_pct,
        idle_cpu_pct_per_10k: idle_cpu_pct * 10_000.0 / opened as f64,
        client_kib_per_conn: per_conn(client_before, client_after),
        lost_while_idle,
        failed_logins,
        stopped_by,
    })
}

/// Sends a Heartbeat at `interval` (the first after `offset`) until told to stop; returns the session,
/// or the error of the heartbeat that failed.
async fn keep_beating(
    mut session: Session,
    interval: Duration,
    offset: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Session> {
    let mut next = tokio::time::Instant::now() + offset;
    loop {
        tokio::select! {
            // Resolves once stop is sent, or at once if the sender is gone: the loop always ends.
            _ = stop.wait_for(|stop| *stop) => return Ok(session),
            _ = tokio::time::sleep_until(next) => {}
        }
        session.heartbeat(0).await?;
        next += interval;
    }
}

//! `connections`: as many idle authenticated connections (Hello/Welcome done) as the target asks, on a
//! `ferry-server` process; its RSS per connection (VmRSS of /proc/PID/status, sampled while opening)
//! and its CPU while they sit idle sending only heartbeats (/proc/PID/stat).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;

use super::Config;
use crate::harness;
use crate::peers::ferry::{FerryServer, LIFTED_SOURCE_LIMITS};
use crate::peers::process::{cpu_ticks, rss_kib, ticks_per_sec};
use crate::report::{ConnectionsRow, Results};

/// Handshakes in flight while opening (bounded so the server's accept path is not the thing measured).
const OPENING_CONCURRENCY: usize = 64;
/// RSS samples taken while opening.
const SAMPLES: usize = 10;

/// Runs the scenario and records it.
pub async fn run(config: &Config, results: &mut Results) {
    match measure(config).await {
        Ok(row) => {
            println!(
                "connections: {}/{} idle, {:.1} KiB RSS each, idle CPU {:.2} % ({:.2} % per 10k)",
                row.opened,
                row.target,
                row.per_conn_kib,
                row.idle_cpu_pct,
                row.idle_cpu_pct_per_10k
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

async fn measure(config: &Config) -> anyhow::Result<ConnectionsRow> {
    raise_fd_limit()?;
    let dir = tempfile::tempdir()?;
    let server_config = dir.path().join("ferry.toml");
    std::fs::write(&server_config, LIFTED_SOURCE_LIMITS)?;
    let args = ["--config", server_config.to_str().context("config path")?];
    let server = Arc::new(FerryServer::start_with(&config.ferry_binary, &args).await?);
    let pid = server.pid();
    // One connection first, so that what the first one allocates once (TLS, store, runtime) is not
    // charged to every connection.
    let first = server.session("c0").await?;
    let heartbeat_interval_ms = first.welcome.heartbeat_interval_ms;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid)?;
    let target = config.connections.max(2);
    let bar = harness::progress(
        format!("opening {target} connections"),
        Duration::from_secs(60),
    );
    let slots = Arc::new(Semaphore::new(OPENING_CONCURRENCY));
    let mut sessions = vec![first];
    let mut samples = Vec::new();
    let step = (target / SAMPLES).max(1);
    let mut opened_at = 1;
    while opened_at < target {
        let batch_end = (opened_at + step).min(target);
        let mut tasks = Vec::new();
        for i in opened_at..batch_end {
            let (server, slots) = (server.clone(), slots.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await?;
                server.session(&format!("c{i}")).await
            }));
        }
        for task in tasks {
            match task.await? {
                Ok(session) => sessions.push(session),
                Err(e) => anyhow::bail!("after {} connections: {e:#}", sessions.len()),
            }
        }
        opened_at = batch_end;
        let rss = rss_kib(pid)?;
        samples.push((
            sessions.len(),
            rss.saturating_sub(rss_before) as f64 / (sessions.len() - 1).max(1) as f64,
        ));
    }
    bar.finish_and_clear();
    let opened = sessions.len();
    // Idle: every session sends a Heartbeat at the announced interval, their schedules spread evenly.
    let interval = Duration::from_millis(u64::from(heartbeat_interval_ms.max(1000)));
    let idle_started = Instant::now();
    let ticks_before = cpu_ticks(pid)?;
    let until = idle_started + config.idle;
    let mut beats = Vec::new();
    for (i, mut session) in sessions.into_iter().enumerate() {
        let offset = interval.mul_f64(i as f64 / opened as f64);
        beats.push(tokio::spawn(async move {
            let mut next = Instant::now() + offset;
            while next < until {
                tokio::time::sleep_until(next.into()).await;
                session.heartbeat(0).await?;
                next += interval;
            }
            tokio::time::sleep_until(until.into()).await;
            anyhow::Ok(session)
        }));
    }
    let mut alive = Vec::new();
    for b in beats {
        alive.push(b.await??);
    }
    let idle_secs = idle_started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid)?.saturating_sub(ticks_before);
    let rss_after = rss_kib(pid)?;
    let idle_cpu_pct = 100.0 * ticks as f64 / ticks_per_sec() as f64 / idle_secs;
    for s in &alive {
        s.close();
    }
    Ok(ConnectionsRow {
        target,
        opened,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        per_conn_kib: rss_after.saturating_sub(rss_before) as f64 / (opened - 1).max(1) as f64,
        samples,
        idle_secs,
        heartbeat_interval_ms,
        idle_cpu_pct,
        idle_cpu_pct_per_10k: idle_cpu_pct * 10_000.0 / opened as f64,
    })
}

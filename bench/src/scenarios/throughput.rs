//! `throughput`: closed loop, N connections each keeping a window of sends in flight; acked sends per
//! second for every system and body size. Also the peaks the latency scenario loads against.

use std::time::Instant;

use super::Config;
use crate::harness::{self, Params};
use crate::peers::{Running, System};
use crate::report::{Results, ThroughputRow};

/// Runs every configured system at every body size, `config.repeat` times interleaved: round `r`
/// starts with the `r`-th system, so each system runs first, second, … equally often. The median run
/// of each system and body size is reported.
pub async fn run(config: &Config, results: &mut Results) {
    let systems = &config.systems;
    let mut runs: Vec<Vec<ThroughputRow>> = vec![Vec::new(); systems.len() * config.bodies.len()];
    for round in 0..config.repeat {
        for k in 0..systems.len() {
            let s = (round + k) % systems.len();
            let system = systems[s];
            for (b, &body) in config.bodies.iter().enumerate() {
                let p = Params {
                    clients: config.clients,
                    body,
                    window: config.window,
                    duration: config.duration,
                };
                match measure(config, system, &p).await {
                    Ok(row) => {
                        println!(
                            "throughput {:>14} {:>5} B: {:>8.0} acked/s",
                            system.name(),
                            body,
                            row.per_sec
                        );
                        runs[s * config.bodies.len() + b].push(row);
                    }
                    Err(e) => results
                        .errors
                        .push(format!("throughput {} {body} B: {e:#}", system.name())),
                }
            }
        }
    }
    for mut rows in runs {
        if rows.is_empty() {
            continue;
        }
        rows.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
        if rows.len() > 1 {
            let rates: Vec<String> = rows.iter().map(|r| format!("{:.0}", r.per_sec)).collect();
            println!(
                "throughput {:>14} {:>5} B: runs {} -> median {:.0} acked/s",
                rows[0].system.name(),
                rows[0].body,
                rates.join(", "),
                rows[rows.len() / 2].per_sec
            );
        }
        results.throughput.push(rows.swap_remove(rows.len() / 2));
    }
}

/// One closed-loop run of `system` on a fresh process (with `--push`, Ferry's with push on).
pub async fn measure(config: &Config, system: System, p: &Params) -> anyhow::Result<ThroughputRow> {
    // The senders write to `sink`, whose device is registered for pushes and stays offline.
    let receiver = match (config.push, system) {
        (true, System::Ferry) => Some(super::push::PushReceiver::start().await?),
        _ => None,
    };
    let running = match &receiver {
        Some(r) => {
            Running::Ferry(super::push::start_server(&config.ferry_binary, r, "sink").await?)
        }
        None => Running::start(system, &config.ferry_binary).await?,
    };
    let bar = harness::progress(
        format!("throughput {} {} B", system.name(), p.body),
        p.duration,
    );
    let started = Instant::now();
    let counted = running.throughput(p).await;
    bar.finish_and_clear();
    let counted = counted?;
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(r) = &receiver {
        println!("throughput with push: {} POSTs received", r.posts());
    }
    Ok(ThroughputRow {
        system,
        body: p.body,
        clients: p.clients,
        window: p.window,
        acked: counted.acked,
        per_sec: counted.acked as f64 / elapsed,
        ack_p50_us: counted.latency.value_at_quantile(0.5),
        ack_p99_us: counted.latency.value_at_quantile(0.99),
    })
}

//! `fanout`: one sender, a group of receivers (Ferry: a group conversation; Mosquitto and NATS: one
//! topic/subject with `members - 1` subscribers); deliveries per second and send→deliver latency.

use super::Config;
use crate::harness::{self, Params};
use crate::peers::{Running, System};
use crate::report::{FanoutRow, Results};

/// Runs every configured system that delivers.
pub async fn run(config: &Config, results: &mut Results) {
    for &system in config.systems.iter().filter(|&&s| s != System::Redis) {
        match measure(config, system).await {
            Ok(Some(row)) => {
                println!(
                    "fanout {:>14}: {:.0} deliveries/s, p99 {:.2} ms, {}/{} delivered",
                    system.name(),
                    row.deliveries_per_sec,
                    row.p99_us as f64 / 1e3,
                    row.delivered,
                    row.sent * (row.members as u64 - 1)
                );
                results.fanout.push(row);
            }
            Ok(None) => {}
            Err(e) => results
                .errors
                .push(format!("fanout {}: {e:#}", system.name())),
        }
    }
}

async fn measure(config: &Config, system: System) -> anyhow::Result<Option<FanoutRow>> {
    let running = Running::start(system, &config.ferry_binary).await?;
    let p = Params {
        clients: 1,
        body: 256,
        window: config.window,
        duration: config.duration,
    };
    let bar = harness::progress(format!("fanout {}", system.name()), p.duration);
    let out = running.fanout(&p, config.members).await;
    bar.finish_and_clear();
    let Some(d) = out? else { return Ok(None) };
    Ok(Some(FanoutRow {
        system,
        members: config.members,
        sent: d.sent,
        delivered: d.delivered,
        deliveries_per_sec: d.delivered as f64 / d.elapsed.as_secs_f64(),
        p50_us: d.latency.value_at_quantile(0.5),
        p99_us: d.latency.value_at_quantile(0.99),
    }))
}

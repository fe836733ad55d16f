//! `latency`: open loop at 25 / 50 / 75 % of each system's own measured peak (256 B closed-loop
//! throughput of this run, measured here if the run has none); send→deliver p50/p99/p99.9 from the
//! intended send time (coordinated omission corrected, see [`crate::harness`]).

use super::Config;
use crate::harness::{self, Params};
use crate::peers::{Running, System};
use crate::report::{self, LatencyRow, Results};

/// Body size of the latency runs.
const BODY: usize = 256;

/// Runs every configured system that delivers (not Redis) at every configured load.
pub async fn run(config: &Config, results: &mut Results) {
    for &system in config.systems.iter().filter(|&&s| s != System::Redis) {
        let peak = match peak(config, system, results).await {
            Ok(peak) => peak,
            Err(e) => {
                results.errors.push(format!(
                    "latency {}: measuring the peak: {e:#}",
                    system.name()
                ));
                continue;
            }
        };
        for &load in &config.loads {
            let rate = peak * f64::from(load) / 100.0;
            match measure(config, system, rate).await {
                Ok(Some(d)) => {
                    let (p50, p99, p999, max, cdf) = report::quantiles(&d.latency);
                    println!(
                        "latency {:>14} {load:>3}% ({rate:>7.0}/s): p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms, {}/{} delivered",
                        system.name(),
                        p50 as f64 / 1e3,
                        p99 as f64 / 1e3,
                        p999 as f64 / 1e3,
                        d.delivered,
                        d.sent
                    );
                    results.latency.push(LatencyRow {
                        system,
                        load_pct: load,
                        rate,
                        sent: d.sent,
                        delivered: d.delivered,
                        p50_us: p50,
                        p99_us: p99,
                        p999_us: p999,
                        max_us: max,
                        cdf,
                    });
                }
                Ok(None) => {}
                Err(e) => results
                    .errors
                    .push(format!("latency {} {load}%: {e:#}", system.name())),
            }
        }
    }
}

/// The system's 256 B peak from this run's throughput results, or measured now.
async fn peak(config: &Config, system: System, results: &mut Results) -> anyhow::Result<f64> {
    if let Some(row) = results
        .throughput
        .iter()
        .find(|r| r.system == system && r.body == BODY)
    {
        return Ok(row.per_sec);
    }
    let p = Params {
        clients: config.clients,
        body: BODY,
        window: config.window,
        duration: config.duration,
    };
    let row = super::throughput::measure(config, system, &p).await?;
    let peak = row.per_sec;
    results.throughput.push(row);
    Ok(peak)
}

async fn measure(
    config: &Config,
    system: System,
    rate: f64,
) -> anyhow::Result<Option<harness::Delivered>> {
    let running = Running::start(system, &config.ferry_binary).await?;
    let p = Params {
        clients: config.latency_clients,
        body: BODY,
        // A cap on unacknowledged sends per sender, far above what the rate needs, so that it bounds
        // memory without throttling the open loop; no more than Ferry's announced max_inflight_sends
        // (1,024 was above it: a stall of ~0.3 s at ~900 sends/s per sender got the 257th Send
        // refused with TOO_MANY_INFLIGHT, as the spec says, and failed the run). The same cap for
        // every system.
        window: ferry_protocol::limits::DEFAULTS.max_inflight_sends as usize,
        duration: config.duration,
    };
    let bar = harness::progress(format!("latency {} {rate:.0}/s", system.name()), p.duration);
    let out = running.latency(&p, rate).await;
    bar.finish_and_clear();
    out
}

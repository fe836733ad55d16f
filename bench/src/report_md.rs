//! The markdown report: machine facts, the tables, where the systems' guarantees differ, and the gaps
//! to Ferry's goals (issue 17), each judged from the measured figures.

use std::fmt::Write as _;

use crate::peers::System;
use crate::report::Results;

/// Where the guarantees differ; the strace table of the same run says what was seen.
const GUARANTEES: &str = "\
- **Ferry** acks a Send only after the group commit holding it is fsynced (fsync before SendAck), and \
  delivers it only after that.
- **Redis** (`appendonly yes`, `appendfsync always`) writes and fsyncs the AOF before replying; the \
  fsync is shared by the replies of one event-loop iteration (group commit). Same durability class as \
  Ferry, but no delivery, no connections of end users: the floor of a cluster mode's store.
- **NATS JetStream** (file storage, defaults) acks a publish once it is written to the stream file; it \
  fsyncs on a timer (`sync_interval`, default 2 min), so acked messages can be lost on power loss.
- **Mosquitto** (QoS 1, `persistence true`) acks a PUBLISH once it is in memory and saves a snapshot \
  every `autosave_interval` (30 min by default) and at exit: acked messages can be lost on a crash.
- The fsync table above is what strace saw on this machine during a short closed-loop run of each.";

/// The whole `report.md`.
pub fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# ferry-bench report\n");
    let _ = writeln!(
        out,
        "Run started {} ({} run).\n",
        r.started_utc,
        if r.quick { "--quick" } else { "full" }
    );
    if let Some(m) = &r.machine {
        let _ = writeln!(
            out,
            "Machine: {} cores, {}, kernel {}; disk: {:.0} appends of 4 KiB + fdatasync per second.\n",
            m.cores, m.cpu_model, m.kernel, m.fsyncs_per_sec
        );
    }
    out.push_str(&r.markdown_tables());
    let _ = writeln!(out, "\n## Guarantees differ\n\n{GUARANTEES}\n");
    let _ = writeln!(out, "## Goals (issue 17) against this run\n");
    for line in goals(r) {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out, "\n## Plots\n\n![latency CDF](latency_cdf.svg)\n![throughput](throughput.svg)\n![RSS per connection](rss_per_connection.svg)");
    if !r.errors.is_empty() {
        let _ = writeln!(out, "\n## Failures\n");
        for e in &r.errors {
            let _ = writeln!(out, "- {e}");
        }
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// One line per goal: the target, the measured figure, met or not (or not measured).
pub fn goals(r: &Results) -> Vec<String> {
    let mut lines = Vec::new();
    let tp = |s: System| {
        r.throughput
            .iter()
            .filter(|t| t.system == s && t.body == 256)
            .map(|t| t.per_sec)
            .next()
    };
    match (tp(System::Ferry), tp(System::Nats)) {
        (Some(f), Some(n)) => lines.push(format!(
            "Durable throughput ≥ 2× JetStream's (256 B): Ferry {f:.0}/s, JetStream {n:.0}/s = {:.2}× — {}",
            f / n,
            verdict(f >= 2.0 * n)
        )),
        _ => lines.push("Durable throughput ≥ 2× JetStream's: not measured in this run".into()),
    }
    match (tp(System::FerryRedis), tp(System::Redis)) {
        (Some(f), Some(r)) => lines.push(format!(
            "Ferry on Redis ≥ 0.9× the raw EVALSHA loop (256 B): Ferry on Redis {f:.0}/s, raw script {r:.0}/s = {:.2}× — {}",
            f / r,
            verdict(f >= 0.9 * r)
        )),
        _ => lines.push("Ferry on Redis ≥ 0.9× the raw EVALSHA loop: not measured in this run".into()),
    }
    let p99 = |s: System| {
        r.latency
            .iter()
            .find(|l| l.system == s && l.load_pct == 50)
            .map(|l| l.p99_us as f64)
    };
    match (p99(System::Ferry), p99(System::Nats)) {
        (Some(f), Some(n)) => lines.push(format!(
            "p99 send→deliver ≤ 0.5× JetStream's at 50 % load: Ferry {:.2} ms, JetStream {:.2} ms = {:.2}× — {}",
            f / 1e3,
            n / 1e3,
            f / n.max(1.0),
            verdict(f <= 0.5 * n)
        )),
        _ => lines.push("p99 send→deliver at 50 % load: not measured in this run".into()),
    }
    match &r.connections {
        Some(c) => lines.push(format!(
            "100k idle connections at ≤ 16 KiB RSS each: {} connections opened at {:.1} KiB each — {}{}",
            c.opened,
            c.per_conn_kib,
            verdict(c.opened >= 100_000 && c.per_conn_kib <= 16.0),
            if c.opened < 100_000 { " (fewer than 100k tried in this run)" } else { "" }
        )),
        None => lines.push("Idle connections: not measured in this run".into()),
    }
    match r
        .catchup
        .iter()
        .find(|c| c.delay_ms == 0 && c.messages == 1000)
    {
        Some(c) => lines.push(format!(
            "Catch-up of 1,000 messages ≤ 25 ms on loopback: {:.1} ms ({}) — {}",
            c.median_ms,
            c.mode,
            verdict(c.median_ms <= 25.0)
        )),
        None => {
            lines.push("Catch-up of 1,000 messages on loopback: not measured in this run".into())
        }
    }
    match r.failover.last() {
        Some(f) => lines.push(format!(
            "Failover after kill -9, p99 ≤ 1 s, every run recovered: p50 {:.0} ms, p99 {:.0} ms, {}/{} runs ({} clients) — {}",
            f.p50_ms,
            f.p99_ms,
            f.recovered,
            f.kills,
            f.clients,
            verdict(f.p99_ms <= 1000.0 && f.recovered == f.kills)
        )),
        None => lines.push("Failover after kill -9: not measured in this run".into()),
    }
    match &r.lossy {
        Some(l) => {
            let ratio = l.lossy_per_sec / l.clean_per_sec.max(1e-9);
            let clean = l.lost == 0 && l.duplicated == 0 && l.reordered == 0;
            lines.push(format!(
                "Lossy goodput ≥ 50 % of clean with no loss: {:.0} % (lost {}, duplicated {}, reordered {}) — {}",
                100.0 * ratio,
                l.lost,
                l.duplicated,
                l.reordered,
                verdict(ratio >= 0.5 && clean)
            ));
        }
        None => lines.push("Lossy goodput: not measured in this run".into()),
    }
    lines.push(
        "Failover: not measured (cluster mode does not exist yet; see scenarios/mod.rs)".into(),
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ConnectionsRow, ThroughputRow};

    fn tp(system: System, per_sec: f64) -> ThroughputRow {
        ThroughputRow {
            system,
            body: 256,
            clients: 50,
            window: 16,
            acked: per_sec as u64,
            per_sec,
            ack_p50_us: 0,
            ack_p99_us: 0,
        }
    }

    #[test]
    fn goals_are_judged_from_the_figures() {
        let mut r = Results {
            throughput: vec![tp(System::Ferry, 30_000.0), tp(System::Nats, 20_000.0)],
            ..Results::default()
        };
        r.connections = Some(ConnectionsRow {
            target: 1000,
            opened: 1000,
            rss_before_kib: 10_000,
            rss_after_kib: 70_000,
            samples: vec![],
            per_conn_kib: 60.0,
            idle_secs: 10.0,
            heartbeat_interval_ms: 25_000,
            idle_cpu_pct: 1.0,
            idle_cpu_pct_per_10k: 10.0,
            client_kib_per_conn: 40.0,
            failed_logins: 0,
            lost_while_idle: 0,
            stopped_by: None,
        });
        let lines = goals(&r);
        assert!(
            lines[0].contains("1.50×") && lines[0].contains("not met"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("Ferry on Redis") && lines[1].contains("not measured"));
        assert!(lines[2].contains("not measured"), "{}", lines[2]);
        let memory = lines
            .iter()
            .find(|l| l.contains("KiB"))
            .expect("a memory line");
        assert!(
            memory.contains("60.0 KiB") && memory.contains("not met"),
            "{memory}"
        );
        r.throughput[0].per_sec = 45_000.0;
        assert!(goals(&r)[0].contains("**met**"));
    }

    #[test]
    fn the_report_has_the_tables_and_ratios() {
        let r = Results {
            throughput: vec![tp(System::Ferry, 30_000.0), tp(System::Mosquitto, 60_000.0)],
            ..Results::default()
        };
        let md = markdown(&r);
        assert!(
            md.contains("| mosquitto | 256 | 50×16 | 60000 | – | 0.50 |"),
            "{md}"
        );
        assert!(r.terminal().contains("0.50"));
    }

    #[test]
    fn utc_timestamps_are_rfc3339() {
        let now = crate::report::utc_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'));
    }
}

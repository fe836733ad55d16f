//! Results of a run: the JSON file, the markdown report and the terminal table (Ferry ÷ peer ratios).
//! Every figure printed comes from [`Results`], which is what `results.json` holds.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::machine::Machine;
use crate::peers::System;
use crate::scenarios::cluster_latency::ClusterLatencyRow;
use crate::scenarios::memory::MemoryRow;

/// Everything one run measured.
#[derive(Serialize, Default)]
pub struct Results {
    /// When the run started (UTC, RFC 3339).
    pub started_utc: String,
    /// Whether it was a `--quick` run.
    pub quick: bool,
    /// The machine.
    pub machine: Option<Machine>,
    /// Closed-loop acked sends.
    pub throughput: Vec<ThroughputRow>,
    /// Open-loop send→deliver.
    pub latency: Vec<LatencyRow>,
    /// One sender, a group of receivers.
    pub fanout: Vec<FanoutRow>,
    /// Idle authenticated connections on a ferry-server process.
    pub connections: Option<ConnectionsRow>,
    /// Offline receiver catching up.
    pub catchup: Vec<CatchupRow>,
    /// kill -9 of a cluster node: time until every client is caught up.
    pub failover: Vec<FailoverRow>,
    /// Through ferry-proxy with loss, reordering and rebinds.
    pub lossy: Option<LossyRow>,
    /// fsync/fdatasync calls each system made per acked message (strace).
    pub fsync_check: Vec<FsyncRow>,
    /// Redis memory per stored message and per idle session (cluster mode).
    pub memory: Option<MemoryRow>,
    /// Cross-node send→deliver in cluster mode.
    pub cluster_latency: Option<ClusterLatencyRow>,
    /// Scenarios or peers that failed (the run goes on without them).
    pub errors: Vec<String>,
}

/// Throughput of one system at one body size.
#[derive(Serialize, Clone)]
pub struct ThroughputRow {
    /// The system.
    pub system: System,
    /// Body bytes.
    pub body: usize,
    /// Sending connections.
    pub clients: usize,
    /// In flight per connection.
    pub window: usize,
    /// Acked sends.
    pub acked: u64,
    /// Acked sends per second.
    pub per_sec: f64,
    /// Send→ack p50, µs (0 where the client cannot match acks to sends).
    pub ack_p50_us: u64,
    /// Send→ack p99, µs.
    pub ack_p99_us: u64,
}

/// Send→deliver latency of one system at one load.
#[derive(Serialize, Clone)]
pub struct LatencyRow {
    /// The system.
    pub system: System,
    /// Percent of the system's own measured peak.
    pub load_pct: u32,
    /// Offered messages per second.
    pub rate: f64,
    /// Sent messages.
    pub sent: u64,
    /// Delivered messages.
    pub delivered: u64,
    /// p50, µs.
    pub p50_us: u64,
    /// p99, µs.
    pub p99_us: u64,
    /// p99.9, µs.
    pub p999_us: u64,
    /// Max, µs.
    pub max_us: u64,
    /// (latency µs, quantile) points of the CDF, for plots.
    pub cdf: Vec<(u64, f64)>,
}

/// Fan-out of one system.
#[derive(Serialize, Clone)]
pub struct FanoutRow {
    /// The system.
    pub system: System,
    /// Group size (sender included).
    pub members: usize,
    /// Messages sent.
    pub sent: u64,
    /// Deliveries counted over all receivers.
    pub delivered: u64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Send→deliver p50, µs.
    pub p50_us: u64,
    /// Send→deliver p99, µs.
    pub p99_us: u64,
}

/// Idle connections on a ferry-server process.
#[derive(Serialize, Clone)]
pub struct ConnectionsRow {
    /// Connections asked for.
    pub target: usize,
    /// Connections that completed Hello/Welcome.
    pub opened: usize,
    /// Server RSS with one connection, KiB.
    pub rss_before_kib: u64,
    /// Server RSS with all of them, KiB.
    pub rss_after_kib: u64,
    /// (connections, RSS KiB per connection) while opening.
    pub samples: Vec<(usize, f64)>,
    /// RSS per connection at the end, KiB.
    pub per_conn_kib: f64,
    /// How long they sat idle (heartbeats only).
    pub idle_secs: f64,
    /// Heartbeat interval the server announced, ms.
    pub heartbeat_interval_ms: u32,
    /// Server CPU while idle, percent of one core.
    pub idle_cpu_pct: f64,
    /// The same scaled to 10k connections.
    pub idle_cpu_pct_per_10k: f64,
    /// The bench client's own RSS growth per connection, KiB (it shares the machine).
    pub client_kib_per_conn: f64,
    /// Sessions whose heartbeat failed while idle.
    pub lost_while_idle: usize,
    /// Logins (QUIC handshake + Hello/Welcome) that failed while opening.
    pub failed_logins: usize,
    /// Why opening stopped short of the target, if it did.
    pub stopped_by: Option<String>,
}

/// One catch-up measurement.
#[derive(Serialize, Clone)]
pub struct CatchupRow {
    /// "1-RTT" or "0-RTT".
    pub mode: String,
    /// One-way delay added, ms.
    pub delay_ms: u64,
    /// Messages missed.
    pub messages: usize,
    /// Median time to receive them all, ms.
    pub median_ms: f64,
}

/// Failover after kill -9 of one node of a cluster.
#[derive(Serialize, Clone)]
pub struct FailoverRow {
    /// ferry-server processes.
    pub nodes: usize,
    /// Client devices.
    pub clients: usize,
    /// Kills in a row (runs).
    pub kills: usize,
    /// Runs in which every acked message reached every member device exactly once, in order.
    pub recovered: usize,
    /// Kill to last client caught up, median, ms.
    pub p50_ms: f64,
    /// Kill to last client caught up, 99th percentile, ms.
    pub p99_ms: f64,
    /// The slowest run, ms.
    pub max_ms: f64,
    /// Where the time went, per client (detection, reconnection, catch-up).
    pub phases: Vec<crate::scenarios::failover::PhaseRow>,
}

/// Goodput through a lossy path.
#[derive(Serialize, Clone)]
pub struct LossyRow {
    /// Messages sent per run.
    pub messages: u64,
    /// Delivered per second on a clean path (through the proxy, no faults).
    pub clean_per_sec: f64,
    /// Delivered per second with the faults.
    pub lossy_per_sec: f64,
    /// Missing at the receiver (lossy run).
    pub lost: u64,
    /// Received more than once (lossy run).
    pub duplicated: u64,
    /// Received out of seq order (lossy run).
    pub reordered: u64,
    /// Rebinds made during the lossy run.
    pub rebinds: u32,
}

/// fsync calls of a system during a short throughput run.
#[derive(Serialize, Clone)]
pub struct FsyncRow {
    /// The system.
    pub system: System,
    /// Acked sends during the trace.
    pub acked: u64,
    /// fsync + fdatasync calls seen by strace.
    pub fsyncs: u64,
}

/// p50/p99/p99.9/max and a CDF of `h` for a [`LatencyRow`].
pub fn quantiles(h: &Histogram<u64>) -> (u64, u64, u64, u64, Vec<(u64, f64)>) {
    let cdf = [
        0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999, 0.9999,
        1.0,
    ]
    .iter()
    .map(|&q| (h.value_at_quantile(q), q))
    .collect();
    (
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        cdf,
    )
}

/// A table: a title, a header and rows of cells.
struct Table {
    title: String,
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1e3)
}

fn ratio(ferry: Option<f64>, peer: f64) -> String {
    match ferry {
        Some(f) if peer > 0.0 => format!("{:.2}", f / peer),
        _ => "–".into(),
    }
}

impl Results {
    fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
        let mut t = Table {
            title: "Throughput (closed loop, acked sends/s)".into(),
            header: vec![
                "system",
                "body B",
                "clients×window",
                "acked/s",
                "ack p99 ms",
                "Ferry ÷ system",
            ],
            rows: vec![],
        };
        for r in &self.throughput {
            let ferry = self
                .throughput
                .iter()
                .find(|f| f.system == System::Ferry && f.body == r.body)
                .map(|f| f.per_sec);
            t.rows.push(vec![
                r.system.name().into(),
                r.body.to_string(),
                format!("{}×{}", r.clients, r.window),
                format!("{:.0}", r.per_sec),
                if r.ack_p99_us > 0 {
                    ms(r.ack_p99_us)
                } else {
                    "–".into()
                },
                ratio(ferry, r.per_sec),
            ]);
        }
        tables.push(t);
        let mut t = Table {
            title: "Latency (open loop, send→deliver from the intended send time)".into(),
            header: vec![
                "system",
                "load",
                "rate/s",
                "delivered",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "Ferry p99 ÷ system p99",
            ],
            rows: vec![],
        };
        for r in &self.latency {
            let ferry = self
                .latency
                .iter()
                .find(|f| f.system == System::Ferry && f.load_pct == r.load_pct)
                .map(|f| f.p99_us as f64);
            t.rows.push(vec![
                r.system.name().into(),
                format!("{}%", r.load_pct),
                format!("{:.0}", r.rate),
                format!("{}/{}", r.delivered, r.sent),
                ms(r.p50_us),
                ms(r.p99_us),
                ms(r.p999_us),
                ratio(ferry, r.p99_us as f64),
            ]);
        }
        tables.push(t);
        let mut t = Table {
            title: "Fan-out (one sender, group of receivers)".into(),
            header: vec![
                "system",
                "members",
                "delivered",
                "deliveries/s",
                "p50 ms",
                "p99 ms",
                "Ferry ÷ system",
            ],
            rows: vec![],
        };
        let ferry = self
            .fanout
            .iter()
            .find(|f| f.system == System::Ferry)
            .map(|f| f.deliveries_per_sec);
        for r in &self.fanout {
            t.rows.push(vec![
                r.system.name().into(),
                r.members.to_string(),
                format!("{}/{}", r.delivered, r.sent * (r.members as u64 - 1)),
                format!("{:.0}", r.deliveries_per_sec),
                ms(r.p50_us),
                ms(r.p99_us),
                ratio(ferry, r.deliveries_per_sec),
            ]);
        }
        tables.push(t);
        if let Some(c) = &self.connections {
            tables.push(Table {
                title: "Idle connections (ferry-server process)".into(),
                header: vec![
                    "opened",
                    "RSS before KiB",
                    "RSS after KiB",
                    "KiB per connection",
                    "idle CPU %",
                    "CPU % per 10k",
                    "failed logins",
                    "lost while idle",
                    "bench client KiB per connection",
                ],
                rows: vec![vec![
                    format!("{}/{}", c.opened, c.target),
                    c.rss_before_kib.to_string(),
                    c.rss_after_kib.to_string(),
                    format!("{:.1}", c.per_conn_kib),
                    format!("{:.2}", c.idle_cpu_pct),
                    format!("{:.2}", c.idle_cpu_pct_per_10k),
                    c.failed_logins.to_string(),
                    c.lost_while_idle.to_string(),
                    format!("{:.1}", c.client_kib_per_conn),
                ]],
            });
        }
        let mut t = Table {
            title: "Catch-up (offline receiver)".into(),
            header: vec!["mode", "one-way delay ms", "messages", "median ms"],
            rows: vec![],
        };
        for r in &self.catchup {
            t.rows.push(vec![
                r.mode.clone(),
                r.delay_ms.to_string(),
                r.messages.to_string(),
                format!("{:.1}", r.median_ms),
            ]);
        }
        tables.push(t);
        let mut t = Table {
            title: "Failover (kill -9 of one node, to the last client caught up)".into(),
            header: vec![
                "nodes",
                "clients",
                "kills",
                "recovered",
                "p50 ms",
                "p99 ms",
                "max ms",
            ],
            rows: vec![],
        };
        for r in &self.failover {
            t.rows.push(vec![
                r.nodes.to_string(),
                r.clients.to_string(),
                r.kills.to_string(),
                r.recovered.to_string(),
                format!("{:.0}", r.p50_ms),
                format!("{:.0}", r.p99_ms),
                format!("{:.0}", r.max_ms),
            ]);
        }
        tables.push(t);
        let mut t = Table {
            title: "Failover phases (per client on the killed node, over every run)".into(),
            header: vec!["phase", "samples", "p50 ms", "p99 ms", "max ms"],
            rows: vec![],
        };
        for p in self.failover.iter().flat_map(|r| &r.phases) {
            t.rows.push(vec![
                p.phase.to_string(),
                p.samples.to_string(),
                format!("{:.0}", p.p50_ms),
                format!("{:.0}", p.p99_ms),
                format!("{:.0}", p.max_ms),
            ]);
        }
        tables.push(t);
        if let Some(l) = &self.lossy {
            tables.push(Table {
                title: "Lossy path (ferry-proxy: 10% loss, 20% reorder, rebinds)".into(),
                header: vec![
                    "messages",
                    "clean/s",
                    "lossy/s",
                    "goodput",
                    "lost",
                    "duplicated",
                    "reordered",
                    "rebinds",
                ],
                rows: vec![vec![
                    l.messages.to_string(),
                    format!("{:.0}", l.clean_per_sec),
                    format!("{:.0}", l.lossy_per_sec),
                    format!(
                        "{:.0}%",
                        100.0 * l.lossy_per_sec / l.clean_per_sec.max(1e-9)
                    ),
                    l.lost.to_string(),
                    l.duplicated.to_string(),
                    l.reordered.to_string(),
                    l.rebinds.to_string(),
                ]],
            });
        }
        let mut t = Table {
            title: "fsync before ack? (strace -f -e trace=fsync,fdatasync during a short run)"
                .into(),
            header: vec!["system", "acked", "fsync calls", "acked per fsync"],
            rows: vec![],
        };
        for r in &self.fsync_check {
            t.rows.push(vec![
                r.system.name().into(),
                r.acked.to_string(),
                r.fsyncs.to_string(),
                if r.fsyncs > 0 {
                    format!("{:.1}", r.acked as f64 / r.fsyncs as f64)
                } else {
                    "no fsync".into()
                },
            ]);
        }
        tables.push(t);
        if let Some(m) = &self.memory {
            tables.push(Table {
                title: "Redis memory (cluster mode; INFO used_memory delta per item)".into(),
                header: vec![
                    "messages",
                    "body B",
                    "B per message",
                    "sessions",
                    "B per idle session",
                ],
                rows: vec![vec![
                    m.messages.to_string(),
                    m.body.to_string(),
                    format!("{:.0}", m.bytes_per_message),
                    m.sessions.to_string(),
                    format!("{:.0}", m.bytes_per_session),
                ]],
            });
        }
        if let Some(c) = &self.cluster_latency {
            tables.push(Table {
                title: "Cluster mode: send on node A → deliver on node B (one Redis)".into(),
                header: vec!["rate/s", "delivered", "p50 ms", "p99 ms", "p99.9 ms"],
                rows: vec![vec![
                    format!("{:.0}", c.rate),
                    format!("{}/{}", c.delivered, c.sent),
                    ms(c.p50_us),
                    ms(c.p99_us),
                    ms(c.p999_us),
                ]],
            });
        }
        tables.retain(|t| !t.rows.is_empty());
        tables
    }

    /// The tables aligned for a terminal.
    pub fn terminal(&self) -> String {
        let mut out = String::new();
        for t in self.tables() {
            let mut widths: Vec<usize> = t.header.iter().map(|h| h.chars().count()).collect();
            for row in &t.rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:>w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
            };
            let _ = writeln!(out, "\n{}", t.title);
            let _ = writeln!(
                out,
                "{}",
                line(t.header.iter().map(|h| h.to_string()).collect())
            );
            for row in t.rows {
                let _ = writeln!(out, "{}", line(row));
            }
        }
        for e in &self.errors {
            let _ = writeln!(out, "\nFAILED: {e}");
        }
        out
    }

    /// The tables as markdown.
    pub fn markdown_tables(&self) -> String {
        let mut out = String::new();
        for t in self.tables() {
            let _ = writeln!(out, "\n**{}**\n", t.title);
            let _ = writeln!(out, "| {} |", t.header.join(" | "));
            let _ = writeln!(out, "|{}", "---|".repeat(t.header.len()));
            for row in t.rows {
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
        }
        out
    }

    /// Writes `results.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), crate::report_md::markdown(self))?;
        Ok(())
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (UTC), without a date library: days since 1970 to a civil date.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

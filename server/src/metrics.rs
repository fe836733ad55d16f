//! Server metrics in the Prometheus text format (version 0.0.4), without a metrics framework.
//!
//! Everything is an atomic: the send path records into [`Metrics`] on every message, at up to
//! ~100k sends/s on two cores, so a lock there would be a contention point. For the same reason the
//! send latency histogram has fixed buckets of atomic counters rather than an `hdrhistogram` behind a
//! mutex: Prometheus needs only the bucket counts. Counters are read individually, so a scrape is not
//! an atomic snapshot; it does not need to be.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ferry_protocol::ErrorCode;

/// The monotonic counters. `Counter as usize` indexes [`COUNTERS`] and the storage array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// QUIC connections accepted.
    ConnectionsOpened,
    /// Connections that failed TLS, timed out before Hello, or were refused at Hello.
    HandshakesFailed,
    /// Sends answered with SendAck.
    Sends,
    /// Sends answered with SendAck{duplicate=true}.
    SendsDuplicate,
    /// Ack frames received.
    Acks,
    /// Deliver frames written to a stream.
    Deliveries,
    /// Delivers queued for an online device.
    DeliveriesQueued,
    /// Delivers dropped (queue full or stream gone; the device recovers by Pull).
    DeliveriesDropped,
    /// Pull requests.
    Pulls,
    /// Sync requests.
    Syncs,
    /// Typing/presence datagrams relayed.
    DatagramsRelayed,
    /// Datagrams dropped (rate limit, non-member, undecodable, peer gone).
    DatagramsDropped,
    /// Store group commits (mirrored from the store's statistics).
    CommitBatches,
    /// Sends covered by those commits (mirrored from the store's statistics).
    CommitRequests,
    /// Initials answered with a QUIC Retry (address validation under load).
    RetriesSent,
    /// Handshakes refused: the source already holds its maximum of connections.
    RefusedSourceConnections,
    /// Handshakes refused: the source exceeded its handshakes per second.
    RefusedSourceHandshakes,
    /// Handshakes refused: the per-source table was full of active sources.
    RefusedSourceTable,
}

/// Name and help text of each [`Counter`], in declaration order.
pub(crate) const COUNTERS: [(&str, &str); 18] = [
    (
        "ferry_connections_opened_total",
        "QUIC connections accepted.",
    ),
    (
        "ferry_handshakes_failed_total",
        "Connections that failed before Welcome.",
    ),
    ("ferry_sends_total", "Sends answered with SendAck."),
    (
        "ferry_sends_duplicate_total",
        "Sends answered as duplicates of an earlier Send.",
    ),
    ("ferry_acks_total", "Ack frames received."),
    (
        "ferry_deliveries_total",
        "Deliver frames written to streams.",
    ),
    (
        "ferry_deliveries_queued_total",
        "Deliver frames queued for online devices.",
    ),
    (
        "ferry_deliveries_dropped_total",
        "Deliver frames dropped; devices recover them by Pull.",
    ),
    ("ferry_pulls_total", "Pull requests served."),
    ("ferry_syncs_total", "Sync requests served."),
    (
        "ferry_datagrams_relayed_total",
        "Typing and presence datagrams relayed.",
    ),
    (
        "ferry_datagrams_dropped_total",
        "Datagrams dropped (rate limit, non-member, malformed).",
    ),
    (
        "ferry_store_commits_total",
        "Group commits made by the store.",
    ),
    (
        "ferry_store_commit_requests_total",
        "Sends made durable by those group commits.",
    ),
    (
        "ferry_retries_sent_total",
        "Initials answered with a QUIC Retry (address validation under load).",
    ),
    (
        "ferry_refused_source_connections_total",
        "Handshakes refused: too many connections from the source.",
    ),
    (
        "ferry_refused_source_handshakes_total",
        "Handshakes refused: too many handshakes per second from the source.",
    ),
    (
        "ferry_refused_source_table_total",
        "Handshakes refused: too many distinct active sources tracked.",
    ),
];

/// Upper bounds of the send latency buckets, microseconds (0.25 ms .. 1 s; +Inf is implicit).
const LATENCY_BUCKETS_US: [u64; 12] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// Error counts: one slot per defined wire code, then one for codes outside the table.
const ERROR_SLOTS: usize = ErrorCode::TABLE.len() + 1;

/// Counters, one gauge and a latency histogram, shared by every connection (`Arc<Metrics>`).
#[derive(Debug)]
pub struct Metrics {
    counters: [AtomicU64; COUNTERS.len()],
    connections_active: AtomicI64,
    errors: [AtomicU64; ERROR_SLOTS],
    /// Non-cumulative: `latency[i]` counts samples in (bucket i-1, bucket i]; the last slot is +Inf.
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    /// The `ferry_push_*` counters.
    pub(crate) push: crate::push::PushMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_active: AtomicI64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            push: Default::default(),
        }
    }
}

impl Metrics {
    fn add(&self, counter: Counter, n: u64) {
        self.counters[counter as usize].fetch_add(n, Relaxed);
    }

    /// The current value of `counter` (the unit tests read counters; `/metrics` renders them all).
    #[cfg(test)]
    fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].load(Relaxed)
    }

    /// Connections currently open (a gauge; signed so a bookkeeping bug shows up as a negative value).
    pub fn connections_active(&self) -> i64 {
        self.connections_active.load(Relaxed)
    }

    /// How many times `code` was sent as an Error, stream reset or connection close.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors[error_slot(code)].load(Relaxed)
    }

    /// Initials answered with a QUIC Retry so far.
    pub fn retries_sent(&self) -> u64 {
        self.counters[Counter::RetriesSent as usize].load(Relaxed)
    }

    /// Handshakes refused by the per-source limits so far (all reasons).
    pub fn source_refusals(&self) -> u64 {
        [
            Counter::RefusedSourceConnections,
            Counter::RefusedSourceHandshakes,
            Counter::RefusedSourceTable,
        ]
        .iter()
        .map(|c| self.counters[*c as usize].load(Relaxed))
        .sum()
    }

    /// An Initial was answered with a Retry.
    pub(crate) fn retry_sent(&self) {
        self.add(Counter::RetriesSent, 1);
    }

    /// A handshake was refused by the per-source limits.
    pub(crate) fn source_refused(&self, why: crate::limits::Refusal) {
        use crate::limits::Refusal;
        let counter = match why {
            Refusal::Connections => Counter::RefusedSourceConnections,
            Refusal::HandshakeRate => Counter::RefusedSourceHandshakes,
            Refusal::SourceTable => Counter::RefusedSourceTable,
        };
        self.add(counter, 1);
    }

    /// A connection was accepted.
    pub(crate) fn connection_opened(&self) {
        self.add(Counter::ConnectionsOpened, 1);
        self.connections_active.fetch_add(1, Relaxed);
    }

    /// A connection counted by [`Metrics::connection_opened`] ended.
    pub(crate) fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Relaxed);
    }

    /// A connection failed before Welcome.
    pub(crate) fn handshake_failed(&self) {
        self.add(Counter::HandshakesFailed, 1);
    }

    /// A Send was answered with SendAck after `latency` (receipt to durable commit).
    pub(crate) fn send(&self, duplicate: bool, latency: Duration) {
        self.add(Counter::Sends, 1);
        if duplicate {
            self.add(Counter::SendsDuplicate, 1);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency[slot].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// An Ack frame arrived.
    pub(crate) fn ack(&self) {
        self.add(Counter::Acks, 1);
    }

    /// A Deliver was written to a stream.
    pub(crate) fn delivery(&self) {
        self.add(Counter::Deliveries, 1);
    }

    /// A Deliver was queued for an online device.
    pub(crate) fn delivery_queued(&self) {
        self.add(Counter::DeliveriesQueued, 1);
    }

    /// A Deliver was dropped.
    pub(crate) fn delivery_dropped(&self) {
        self.add(Counter::DeliveriesDropped, 1);
    }

    /// A Pull was served.
    pub(crate) fn pull(&self) {
        self.add(Counter::Pulls, 1);
    }

    /// A Sync was served.
    pub(crate) fn sync(&self) {
        self.add(Counter::Syncs, 1);
    }

    /// A datagram was relayed.
    pub(crate) fn datagram_relayed(&self) {
        self.add(Counter::DatagramsRelayed, 1);
    }

    /// A datagram was dropped.
    pub(crate) fn datagram_dropped(&self) {
        self.add(Counter::DatagramsDropped, 1);
    }

    /// An error with `code` was sent to a peer.
    pub(crate) fn error(&self, code: ErrorCode) {
        self.errors[error_slot(code)].fetch_add(1, Relaxed);
    }

    /// Mirrors the store's cumulative group-commit statistics.
    pub(crate) fn set_commit_stats(&self, commits: u64, requests: u64) {
        self.counters[Counter::CommitBatches as usize].store(commits, Relaxed);
        self.counters[Counter::CommitRequests as usize].store(requests, Relaxed);
    }

    /// All metrics in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    fn write_to(&self, out: &mut String) -> std::fmt::Result {
        for ((name, help), value) in COUNTERS.iter().zip(&self.counters) {
            writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter")?;
            writeln!(out, "{name} {}", value.load(Relaxed))?;
        }
        self.push.write_to(out)?;

        let name = "ferry_connections_active";
        writeln!(
            out,
            "# HELP {name} Connections currently open.\n# TYPE {name} gauge"
        )?;
        writeln!(out, "{name} {}", self.connections_active())?;

        let name = "ferry_errors_total";
        writeln!(
            out,
            "# HELP {name} Errors sent to peers, by wire code.\n# TYPE {name} counter"
        )?;
        let labels = ErrorCode::TABLE
            .iter()
            .map(|info| info.name)
            .chain(["OTHER"]);
        for (label, value) in labels.zip(&self.errors) {
            writeln!(out, "{name}{{code=\"{label}\"}} {}", value.load(Relaxed))?;
        }

        let name = "ferry_send_commit_seconds";
        writeln!(
            out,
            "# HELP {name} Time from receiving a Send to its durable commit."
        )?;
        writeln!(out, "# TYPE {name} histogram")?;
        let mut cumulative = 0;
        for (slot, count) in self.latency.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = match LATENCY_BUCKETS_US.get(slot) {
                Some(&us) => (us as f64 / 1e6).to_string(),
                None => "+Inf".to_owned(),
            };
            writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}")?;
        }
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}")
    }
}

/// The `errors` slot of `code`: its table index, or the last slot for codes the table lacks.
fn error_slot(code: ErrorCode) -> usize {
    ErrorCode::TABLE
        .iter()
        .position(|info| info.code == code)
        .unwrap_or(ERROR_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `series` (`name` or `name{labels}`) in `text`.
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_owned)
        })
    }

    #[test]
    fn render_reflects_recorded_events() {
        let m = Metrics::default();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.send(false, Duration::from_micros(300));
        m.send(true, Duration::from_millis(3));
        m.send(false, Duration::from_secs(5));
        m.error(ErrorCode::UNAUTHENTICATED);
        m.error(ErrorCode(999));
        m.set_commit_stats(4, 9);
        let text = m.render();

        assert_eq!(
            sample(&text, "ferry_connections_opened_total").as_deref(),
            Some("2")
        );
        assert_eq!(
            sample(&text, "ferry_connections_active").as_deref(),
            Some("1")
        );
        assert_eq!(sample(&text, "ferry_sends_total").as_deref(), Some("3"));
        assert_eq!(
            sample(&text, "ferry_sends_duplicate_total").as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&text, "ferry_store_commits_total").as_deref(),
            Some("4")
        );
        assert_eq!(
            sample(&text, "ferry_store_commit_requests_total").as_deref(),
            Some("9")
        );
        let errors = |code: &str| sample(&text, &format!("ferry_errors_total{{code=\"{code}\"}}"));
        assert_eq!(errors("UNAUTHENTICATED").as_deref(), Some("1"));
        assert_eq!(errors("OTHER").as_deref(), Some("1"));
        assert_eq!(errors("FORBIDDEN").as_deref(), Some("0"));

        let bucket = |le: &str| {
            sample(
                &text,
                &format!("ferry_send_commit_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.00025").as_deref(), Some("0"));
        assert_eq!(bucket("0.0005").as_deref(), Some("1"));
        assert_eq!(bucket("0.005").as_deref(), Some("2"));
        assert_eq!(bucket("1").as_deref(), Some("2"));
        assert_eq!(bucket("+Inf").as_deref(), Some("3"));
        assert_eq!(
            sample(&text, "ferry_send_commit_seconds_count").as_deref(),
            Some("3")
        );
        assert_eq!(
            sample(&text, "ferry_send_commit_seconds_sum").as_deref(),
            Some("5.0033")
        );
        assert_eq!(m.counter(Counter::Sends), 3);
        assert_eq!(m.errors(ErrorCode::UNAUTHENTICATED), 1);
    }

    #[test]
    fn every_line_is_a_comment_or_a_sample() {
        let m = Metrics::default();
        m.send(false, Duration::from_millis(1));
        let text = m.render();
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.split(' ');
                let (kind, name) = (words.next().unwrap(), words.next().unwrap());
                assert!(kind == "HELP" || kind == "TYPE", "{line}");
                assert!(name.starts_with("ferry_"), "{line}");
                if kind == "TYPE" {
                    typed.push(name.to_owned());
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{line}"
            );
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                assert!(labels.contains("=\""), "{line}");
            }
            // Every sample belongs to a metric declared by a TYPE line before it.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|f| typed.iter().any(|t| t == f))
                })
                .unwrap_or(name);
            assert!(typed.iter().any(|t| t == family), "{line}");
        }
        assert_eq!(
            typed.len(),
            COUNTERS.len() + 3 + crate::push::PushMetrics::FAMILIES
        );
    }
}

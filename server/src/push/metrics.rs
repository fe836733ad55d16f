//! The `ferry_push_*` counters, rendered with the server's other metrics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of the push path; all zero while push is off.
#[derive(Debug, Default)]
pub(crate) struct PushMetrics {
    queued: AtomicU64,
    dropped: AtomicU64,
    sent: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    gone: AtomicU64,
    skipped_online: AtomicU64,
}

impl PushMetrics {
    /// Metric families [`PushMetrics::write_to`] writes.
    #[cfg(test)]
    pub(crate) const FAMILIES: usize = 7;

    pub(crate) fn queued(&self) {
        self.queued.fetch_add(1, Relaxed);
    }
    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Relaxed);
    }
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Relaxed);
    }
    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }
    pub(crate) fn gone(&self) {
        self.gone.fetch_add(1, Relaxed);
    }
    pub(crate) fn skipped_online(&self) {
        self.skipped_online.fetch_add(1, Relaxed);
    }

    /// Appends the counters in the Prometheus text format.
    pub(crate) fn write_to(&self, out: &mut String) -> std::fmt::Result {
        let counters = [
            ("ferry_push_queued_total", "Committed messages handed to the push notifier.", &self.queued),
            ("ferry_push_dropped_total", "Committed messages not handed to the notifier: its queue was full.", &self.dropped),
            ("ferry_push_sent_total", "Push notifications accepted by an endpoint or the gateway (2xx).", &self.sent),
            ("ferry_push_retried_total", "Push POSTs that failed with 5xx, 429, a timeout or a connection error and were retried.", &self.retried),
            ("ferry_push_failed_total", "Push notifications given up (other 4xx, or out of attempts).", &self.failed),
            ("ferry_push_gone_total", "Registrations dropped because the endpoint answered 404/410 or the gateway rejected them.", &self.gone),
            ("ferry_push_skipped_online_total", "Notifications not sent because the device was online when due.", &self.skipped_online),
        ];
        for (name, help, value) in counters {
            writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter")?;
            writeln!(out, "{name} {}", value.load(Relaxed))?;
        }
        Ok(())
    }
}

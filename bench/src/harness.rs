//! What every scenario shares: parameters, payloads stamped with their intended send time, result
//! counters and progress bars.
//!
//! Every system gets the same payload: `body` bytes whose first 8 hold the *intended* send time in
//! nanoseconds since the bench's epoch. A receiver subtracts it from its own clock (same process, same
//! monotonic clock), so latencies are send→deliver and corrected for coordinated omission: a send that
//! leaves late because the sender fell behind is charged from when it should have left.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

/// Largest latency a histogram records, µs (one minute); larger values are clamped, not dropped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Parameters of one run of a scenario against one system.
#[derive(Clone, Debug)]
pub struct Params {
    /// Concurrent sending connections.
    pub clients: usize,
    /// Body size, bytes (at least 8: the timestamp).
    pub body: usize,
    /// Sends in flight per connection (closed loop) or the cap on them (open loop).
    pub window: usize,
    /// How long senders send.
    pub duration: Duration,
}

/// The stamps' zero: an hour before first use, so that a time taken before the first stamp (a
/// schedule's start) still lies after it instead of saturating to zero.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

/// Nanoseconds from the bench's epoch to `at`.
pub fn nanos(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

/// A payload of `size` bytes (at least 8) stamped with `intended`.
pub fn payload(size: usize, intended: Instant) -> Vec<u8> {
    let mut body = vec![b'x'; size.max(8)];
    body[..8].copy_from_slice(&nanos(intended).to_le_bytes());
    body
}

/// Microseconds from the stamp in `body` to now; None if the body is too short to hold one.
pub fn age_us(body: &[u8]) -> Option<u64> {
    let stamp = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    Some(nanos(Instant::now()).saturating_sub(stamp) / 1_000)
}

/// A latency histogram in µs, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static bounds are valid")
}

/// Records `us`, clamping it into the histogram's range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// Acked sends of a closed-loop run and their send→ack latency.
pub struct Counted {
    /// Sends acknowledged by the system.
    pub acked: u64,
    /// Send→ack latency, µs.
    pub latency: Histogram<u64>,
}

impl Default for Counted {
    fn default() -> Self {
        Counted::new()
    }
}

impl Counted {
    /// Nothing yet.
    pub fn new() -> Self {
        Counted {
            acked: 0,
            latency: histogram(),
        }
    }

    /// Adds another connection's counts.
    pub fn merge(&mut self, other: Counted) -> anyhow::Result<()> {
        self.acked += other.acked;
        self.latency
            .add(other.latency)
            .context("merging histograms")
    }
}

/// Messages of an open-loop or fan-out run: how many were sent and delivered, send→deliver latency.
pub struct Delivered {
    /// Messages the senders sent.
    pub sent: u64,
    /// Deliveries the receivers counted (for fan-out: every receiver's).
    pub delivered: u64,
    /// Send→deliver latency from the intended send time, µs.
    pub latency: Histogram<u64>,
    /// From the first send to the last delivery.
    pub elapsed: Duration,
}

/// Awaits every task and merges their counts; the first failure wins.
pub async fn join_counted(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Counted>>>,
) -> anyhow::Result<Counted> {
    let mut total = Counted::new();
    for task in tasks {
        total.merge(task.await.context("sender task panicked")??)?;
    }
    Ok(total)
}

/// A receiving task: how many messages it got and their latency.
pub type ReceiverTask = tokio::task::JoinHandle<anyhow::Result<(u64, Histogram<u64>)>>;

/// Awaits the senders (messages each sent) and then the receiver (deliveries and their latency); the
/// latency scenarios' result, timed from `started`.
pub async fn join_delivered(
    senders: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
    receiver: ReceiverTask,
    started: Instant,
) -> anyhow::Result<Delivered> {
    let mut sent = 0;
    for s in senders {
        sent += s.await.context("sender task panicked")??;
    }
    let (delivered, latency) = receiver.await.context("receiver task panicked")??;
    Ok(Delivered {
        sent,
        delivered,
        latency,
        elapsed: started.elapsed(),
    })
}

/// Awaits the fan-out receivers (deliveries and their latency each) after `sent` messages were acked;
/// the fan-out scenarios' result, timed from `started`.
pub async fn join_receivers(
    sent: u64,
    receivers: Vec<ReceiverTask>,
    started: Instant,
) -> anyhow::Result<Delivered> {
    let (mut delivered, mut latency) = (0, histogram());
    for r in receivers {
        let (got, hist) = r.await.context("receiver task panicked")??;
        delivered += got;
        latency.add(hist)?;
    }
    Ok(Delivered {
        sent,
        delivered,
        latency,
        elapsed: started.elapsed(),
    })
}

/// A progress bar ticking for `duration` with `message`, hidden unless stderr is a terminal.
pub fn progress(message: String, duration: Duration) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(duration.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} s")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    let ticker = bar.clone();
    tokio::spawn(async move {
        // Bounded: one tick a second for the bar's length, then it ends on its own.
        for _ in 0..duration.as_secs().max(1) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if ticker.is_finished() {
                return;
            }
            ticker.inc(1);
        }
    });
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_its_intended_send_time() {
        let intended = Instant::now() - Duration::from_millis(50);
        let body = payload(256, intended);
        assert_eq!(body.len(), 256);
        let age = age_us(&body).expect("stamped");
        // Charged from the intended time, not from when the payload was made.
        assert!((50_000..5_000_000).contains(&age), "age {age} µs");
    }

    #[test]
    fn a_short_body_has_no_stamp_and_a_tiny_body_is_padded() {
        assert_eq!(age_us(&[1, 2, 3]), None);
        assert_eq!(payload(2, Instant::now()).len(), 8);
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_dropped() {
        let mut h = histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= MAX_LATENCY_US);
    }
}

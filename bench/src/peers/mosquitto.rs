//! Mosquitto 2.0 as a peer: QoS 1 (PUBLISH → PUBACK), persistence on, driven with rumqttc.
//!
//! Guarantee: Mosquitto acks a QoS 1 PUBLISH once it is in memory; persistence writes a snapshot every
//! `autosave_interval` seconds, so an acked message can be lost on a crash (see the report's strace).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::Semaphore;

use super::process::{find, free_port, Process};
use crate::harness::{self, Counted, Delivered, Params};

/// Bound for a single wait (a PUBACK, a delivery).
const WAIT: Duration = Duration::from_secs(20);

/// A running mosquitto on a temporary dir.
pub struct Mosquitto {
    process: Process,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto with persistence on, on a free loopback port.
    pub async fn start() -> anyhow::Result<Mosquitto> {
        let binary = find("mosquitto", "mosquitto")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 100000\nmax_inflight_messages 0\n",
                dir.path().display()
            ),
        )?;
        let mut command = Command::new(binary);
        command.arg("-c").arg(&config);
        let mut process = Process::spawn("mosquitto", command, dir.path())?;
        process.wait_tcp(([127, 0, 0, 1], port).into()).await?;
        Ok(Mosquitto {
            process,
            port,
            _dir: dir,
        })
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn client(&self, id: &str, inflight: usize) -> (AsyncClient, EventLoop) {
        let mut options = MqttOptions::new(id, "127.0.0.1", self.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(inflight.clamp(1, u16::MAX as usize) as u16)
            .set_clean_session(false)
            .set_max_packet_size(1 << 20, 1 << 20);
        AsyncClient::new(options, inflight.max(16))
    }

    /// Closed loop: each connection keeps `p.window` QoS 1 publishes unacknowledged.
    pub async fn throughput(&self, p: &Params) -> anyhow::Result<Counted> {
        let deadline = Instant::now() + p.duration;
        let mut tasks = Vec::new();
        for i in 0..p.clients {
            let (client, events) = self.client(&format!("t{i}"), p.window);
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                publish_closed_loop(client, events, &format!("bench/t{i}"), &p, deadline).await
            }));
        }
        harness::join_counted(tasks).await
    }

    /// Open loop at `rate` publishes/s in total over `p.clients` publishers; one QoS 1 subscriber on
    /// `bench/#` measures send→deliver.
    pub async fn latency(&self, p: &Params, rate: f64) -> anyhow::Result<Delivered> {
        let interval = Duration::from_secs_f64(p.clients as f64 / rate.max(1.0));
        let count = (p.duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
        let total = count * p.clients as u64;
        let receiver = self
            .subscribe("lat-rx", "bench/lat/#", total, p.duration + WAIT)
            .await?;
        let started = Instant::now();
        let mut senders = Vec::new();
        for i in 0..p.clients {
            let (client, events) = self.client(&format!("lat{i}"), p.window);
            let p = p.clone();
            let offset = interval.mul_f64(i as f64 / p.clients as f64);
            senders.push(tokio::spawn(async move {
                publish_open_loop(
                    client,
                    events,
                    &format!("bench/lat/{i}"),
                    &p,
                    started + offset,
                    interval,
                    count,
                )
                .await
            }));
        }
        harness::join_delivered(senders, receiver, started).await
    }

    /// Fan-out: `members - 1` subscribers on one topic, one publisher with `p.window` in flight.
    pub async fn fanout(&self, p: &Params, members: usize) -> anyhow::Result<Delivered> {
        let count = fanout_count(p);
        let mut receivers = Vec::new();
        for i in 1..members {
            receivers.push(
                self.subscribe(&format!("fan{i}"), "bench/fan", count, p.duration + WAIT)
                    .await?,
            );
        }
        let started = Instant::now();
        let (client, events) = self.client("fan0", p.window);
        let counted = publish_closed_loop_n(client, events, "bench/fan", p, count).await?;
        harness::join_receivers(counted.acked, receivers, started).await
    }

    /// A subscriber task counting up to `count` messages on `filter` (subscribed before it returns).
    async fn subscribe(
        &self,
        id: &str,
        filter: &str,
        count: u64,
        limit: Duration,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<(u64, hdrhistogram::Histogram<u64>)>>>
    {
        let (client, mut events) = self.client(id, 1024);
        client.subscribe(filter, QoS::AtLeastOnce).await?;
        // Wait for SUBACK so that nothing published afterwards is missed.
        let until = Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(until.into(), events.poll())
                .await
                .context("no SUBACK")??;
            if matches!(event, Event::Incoming(Packet::SubAck(_))) {
                break;
            }
        }
        Ok(tokio::spawn(async move {
            let _client = client;
            let until = Instant::now() + limit;
            let mut hist = harness::histogram();
            let mut got = 0;
            while got < count {
                let Ok(event) = tokio::time::timeout_at(until.into(), events.poll()).await else {
                    break;
                };
                if let Event::Incoming(Packet::Publish(publish)) = event? {
                    if let Some(us) = harness::age_us(&publish.payload) {
                        harness::record(&mut hist, us);
                    }
                    got += 1;
                }
            }
            Ok((got, hist))
        }))
    }
}

/// Messages the fan-out publisher sends: a fixed number so every run does the same work.
pub fn fanout_count(p: &Params) -> u64 {
    (p.duration.as_secs() * 200).max(200)
}

/// Drives the event loop, returning a window permit per PUBACK, until `stop` says how many to expect.
fn spawn_acks(
    mut events: EventLoop,
    window: Arc<Semaphore>,
    mut stop: tokio::sync::watch::Receiver<Option<u64>>,
) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let mut acked = 0u64;
        loop {
            if let Some(total) = *stop.borrow() {
                if acked >= total {
                    return Ok(acked);
                }
            }
            let event = tokio::select! {
                e = tokio::time::timeout(WAIT, events.poll()) => e.context("MQTT event loop stalled")??,
                _ = stop.changed() => continue,
            };
            if let Event::Incoming(Packet::PubAck(_)) = event {
                acked += 1;
                window.add_permits(1);
            }
        }
    })
}

async fn publish_closed_loop(
    client: AsyncClient,
    events: EventLoop,
    topic: &str,
    p: &Params,
    deadline: Instant,
) -> anyhow::Result<Counted> {
    publish_until(client, events, topic, p, |_| {
        (Instant::now() < deadline).then(Instant::now)
    })
    .await
}

async fn publish_closed_loop_n(
    client: AsyncClient,
    events: EventLoop,
    topic: &str,
    p: &Params,
    count: u64,
) -> anyhow::Result<Counted> {
    publish_until(client, events, topic, p, |sent| {
        (sent < count).then(Instant::now)
    })
    .await
}

/// Publishes while `next(sent)` yields a stamp, `p.window` unacknowledged at most; counts PUBACKs.
/// Send→ack latency is not measured here (rumqttc does not say which publish a PUBACK answers).
async fn publish_until(
    client: AsyncClient,
    events: EventLoop,
    topic: &str,
    p: &Params,
    mut next: impl FnMut(u64) -> Option<Instant>,
) -> anyhow::Result<Counted> {
    let window = Arc::new(Semaphore::new(p.window));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let acks = spawn_acks(events, window.clone(), stop_rx);
    let mut sent = 0u64;
    while let Some(stamp) = next(sent) {
        let Ok(Ok(permit)) = tokio::time::timeout(WAIT, window.acquire()).await else {
            anyhow::bail!("no PUBACK within {WAIT:?}");
        };
        permit.forget();
        client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                harness::payload(p.body, stamp),
            )
            .await?;
        sent += 1;
    }
    let _ = stop_tx.send(Some(sent));
    let acked = acks.await??;
    let _ = client.disconnect().await;
    let mut counted = Counted::new();
    counted.acked = acked;
    Ok(counted)
}

async fn publish_open_loop(
    client: AsyncClient,
    events: EventLoop,
    topic: &str,
    p: &Params,
    start: Instant,
    interval: Duration,
    count: u64,
) -> anyhow::Result<u64> {
    let window = Arc::new(Semaphore::new(p.window));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let acks = spawn_acks(events, window.clone(), stop_rx);
    for k in 0..count {
        let intended = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(intended.into()).await;
        let Ok(Ok(permit)) = tokio::time::timeout(WAIT, window.acquire()).await else {
            anyhow::bail!("no PUBACK within {WAIT:?}");
        };
        permit.forget();
        client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                harness::payload(p.body, intended),
            )
            .await?;
    }
    let _ = stop_tx.send(Some(count));
    acks.await??;
    let _ = client.disconnect().await;
    Ok(count)
}

//! NATS JetStream 2.9 as a peer: a file-storage stream, publish-with-ack (async-nats).
//!
//! Guarantee: JetStream acks a publish once it is written to the stream's file, but by default it
//! fsyncs on a timer (`sync_interval`, 2 min), not before the ack (see the report's strace).

use std::future::IntoFuture;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use super::process::{find, free_port, Process};
use crate::harness::{self, Counted, Delivered, Params};

/// Bound for a single wait (an ack, a delivery).
const WAIT: Duration = Duration::from_secs(20);

/// A running nats-server with JetStream on a temporary dir.
pub struct Nats {
    process: Process,
    url: String,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts `nats-server -js` with its store in a temp dir, on a free loopback port.
    pub async fn start() -> anyhow::Result<Nats> {
        let binary = find("nats-server", "nats-server")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"));
        let mut process = Process::spawn("nats-server", command, dir.path())?;
        process.wait_tcp(([127, 0, 0, 1], port).into()).await?;
        Ok(Nats {
            process,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A JetStream context on a new connection, with the stream `name` capturing `subjects`.
    async fn context(&self, name: &str, subjects: &str) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::connect(&self.url).await?;
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating stream {name}: {e}"))?;
        Ok(js)
    }

    /// Closed loop: each connection runs `p.window` publishers that each wait for their ack.
    pub async fn throughput(&self, p: &Params) -> anyhow::Result<Counted> {
        let deadline = Instant::now() + p.duration;
        let mut tasks = Vec::new();
        for i in 0..p.clients {
            let js = self.context("THROUGHPUT", "tp.>").await?;
            for _ in 0..p.window {
                let (js, p) = (js.clone(), p.clone());
                tasks.push(tokio::spawn(async move {
                    let mut counted = Counted::new();
                    while Instant::now() < deadline {
                        let at = Instant::now();
                        publish(&js, format!("tp.{i}"), harness::payload(p.body, at)).await?;
                        harness::record(&mut counted.latency, at.elapsed().as_micros() as u64);
                        counted.acked += 1;
                    }
                    Ok(counted)
                }));
            }
        }
        harness::join_counted(tasks).await
    }

    /// Open loop at `rate` in total over `p.clients` publishers; one pull consumer per publisher's
    /// subject measures send→deliver.
    pub async fn latency(&self, p: &Params, rate: f64) -> anyhow::Result<Delivered> {
        let interval = Duration::from_secs_f64(p.clients as f64 / rate.max(1.0));
        let count = (p.duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
        // One receiver per sender, each on its own connection with a consumer filtered to its
        // sender's subject, as Ferry's receiver `r{i}` gets only `s{i}`'s messages: a single pull
        // consumer for all 50 subjects fell behind (9 % delivered within the run at 45k/s), and a p99
        // over the few delivered messages would flatter JetStream.
        let mut receivers = Vec::new();
        for i in 0..p.clients {
            let js = self.context("LATENCY", "lat.>").await?;
            let filter = format!("lat.{i}");
            receivers.push(consume(&js, "LATENCY", &filter, count, p.duration + WAIT).await?);
        }
        let started = Instant::now();
        let mut senders = Vec::new();
        for i in 0..p.clients {
            let js = self.context("LATENCY", "lat.>").await?;
            let offset = interval.mul_f64(i as f64 / p.clients as f64);
            let window = std::sync::Arc::new(tokio::sync::Semaphore::new(p.window));
            let body = p.body;
            senders.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                for k in 0..count {
                    let intended = started + offset + interval.mul_f64(k as f64);
                    tokio::time::sleep_until(intended.into()).await;
                    let permit = tokio::time::timeout(WAIT, window.clone().acquire_owned())
                        .await
                        .context("no publish ack within the wait")??;
                    let (js, subject) = (js.clone(), format!("lat.{i}"));
                    acks.push(tokio::spawn(async move {
                        let r = publish(&js, subject, harness::payload(body, intended)).await;
                        drop(permit);
                        r
                    }));
                }
                for a in acks {
                    a.await??;
                }
                anyhow::Ok(count)
            }));
        }
        let mut sent = 0;
        for s in senders {
            sent += s.await.context("sender task panicked")??;
        }
        harness::join_receivers(sent, receivers, started).await
    }

    /// Fan-out: `members - 1` core subscribers on the subject a file stream captures; one publisher
    /// with `p.window` acked publishes in flight.
    pub async fn fanout(&self, p: &Params, members: usize) -> anyhow::Result<Delivered> {
        let count = super::mosquitto::fanout_count(p);
        let js = self.context("FANOUT", "fan.>").await?;
        let mut receivers = Vec::new();
        for _ in 1..members {
            let client = async_nats::connect(&self.url).await?;
            let mut sub = client.subscribe("fan.all").await?;
            client.flush().await?;
            let limit = p.duration + WAIT;
            receivers.push(tokio::spawn(async move {
                let _client = client;
                let until = Instant::now() + limit;
                let (mut got, mut hist) = (0u64, harness::histogram());
                while got < count {
                    let Ok(Some(m)) = tokio::time::timeout_at(until.into(), sub.next()).await
                    else {
                        break;
                    };
                    if let Some(us) = harness::age_us(&m.payload) {
                        harness::record(&mut hist, us);
                    }
                    got += 1;
                }
                anyhow::Ok((got, hist))
            }));
        }
        let started = Instant::now();
        let window = std::sync::Arc::new(tokio::sync::Semaphore::new(p.window));
        let mut acks = Vec::new();
        for _ in 0..count {
            let permit = tokio::time::timeout(WAIT, window.clone().acquire_owned())
                .await
                .context("no publish ack within the wait")??;
            let (js, body) = (js.clone(), harness::payload(p.body, Instant::now()));
            acks.push(tokio::spawn(async move {
                let r = publish(&js, "fan.all".to_owned(), body).await;
                drop(permit);
                r
            }));
        }
        for a in acks {
            a.await??;
        }
        harness::join_receivers(count, receivers, started).await
    }
}

/// Publishes and waits for JetStream's ack (the message is in the stream).
async fn publish(js: &jetstream::Context, subject: String, body: Vec<u8>) -> anyhow::Result<()> {
    let ack = js
        .publish(subject, body.into())
        .await
        .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
    tokio::time::timeout(WAIT, ack.into_future())
        .await
        .context("no publish ack within the wait")?
        .map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
    Ok(())
}

/// A task pulling up to `count` messages from `stream` (consumer created before it returns).
async fn consume(
    js: &jetstream::Context,
    stream: &str,
    filter_subject: &str,
    count: u64,
    limit: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<(u64, hdrhistogram::Histogram<u64>)>>> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| anyhow::anyhow!("stream: {e}"))?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::New,
            filter_subject: filter_subject.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("consumer messages: {e}"))?;
    Ok(tokio::spawn(async move {
        let until = Instant::now() + limit;
        let (mut got, mut hist) = (0u64, harness::histogram());
        while got < count {
            let Ok(Some(m)) = tokio::time::timeout_at(until.into(), messages.next()).await else {
                break;
            };
            let m = m.map_err(|e| anyhow::anyhow!("consumer: {e}"))?;
            if let Some(us) = harness::age_us(&m.payload) {
                harness::record(&mut hist, us);
            }
            got += 1;
        }
        Ok((got, hist))
    }))
}

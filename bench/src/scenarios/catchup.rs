//! `ferry-bench catchup`: how long a client that was offline takes to receive what it missed.
//!
//! An in-process server; bob's client sees one message (so the conversation has local history), shuts
//! down; alice's client sends `--messages` messages; then the clock starts, a new client is built on
//! bob's store, and stops when the last missed message was reported. Measured twice per round: with
//! 0-RTT disabled (`ClientBuilder::zero_rtt(false)`: a full handshake before the first frame) and enabled
//! (every build of bob's client gets the same `SessionCache`, so the rebuilt client resumes with the
//! session ticket its predecessor got and sends Sync and Pulls in early data: 0-RTT across `build()`
//! calls, not a reconnect within one client). `--delay-ms` puts bob behind ferry-proxy with that one-way
//! delay each way, so the round trip that 0-RTT saves is visible (on bare loopback it is ~0.1 ms).
//! `--conversations N` spreads the missed messages over N groups of alice and bob (e.g. 10 × 100), so
//! Pulls across conversations are measured too; the run ends when every group reached its last seq.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use ferry_client::{Client, ClientBuilder, ConnectionState, Event, Events, SessionCache};
use ferry_protocol::ids;
use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};
use ferry_server::ServerHandle;

use crate::report::{CatchupRow, Results};

/// Arguments of `ferry-bench catchup`.
#[derive(Args, Clone)]
pub struct CatchupArgs {
    /// Messages sent while the receiver is offline (in all, spread evenly over the conversations).
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Conversations the missed messages are spread over: 1 is alice and bob's direct conversation,
    /// more are groups of the two.
    #[arg(long, default_value_t = 1)]
    conversations: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 64)]
    body: usize,
    /// Measurements per mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// One-way delay in ms added each way between bob and the server (0 = bare loopback, no proxy).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// The server's QUIC initial congestion window in packets (its `initial_window_packets`; RFC 9002
    /// suggests 10), to compare catch-up with and without a larger one.
    #[arg(long, default_value_t = ferry_server::Settings::default().initial_window_packets)]
    initial_window_packets: u32,
}

/// Bound for every wait (setup or measurement).
const WAIT: Duration = Duration::from_secs(60);

fn builder(
    server: &ServerHandle,
    endpoint: SocketAddr,
    user: &str,
    device: &str,
    store: &Path,
) -> ClientBuilder {
    ClientBuilder::new()
        .endpoint(endpoint.to_string())
        .ca_file(server.ca_path())
        .token(server.mint_token(user, device, Duration::from_secs(3600)))
        .device_id(device)
        .store_path(store)
}

/// Reads events until every conversation of `targets` reported its target seq; returns whether the
/// session used 0-RTT.
async fn receive(events: &mut Events, targets: &HashMap<String, u64>) -> anyhow::Result<bool> {
    let mut zero_rtt = false;
    let mut missing: HashMap<&str, u64> = targets.iter().map(|(c, s)| (c.as_str(), *s)).collect();
    let wait = async {
        while !missing.is_empty() {
            match events.recv().await {
                Some(Event::Message(m)) => {
                    if missing
                        .get(m.conversation.as_str())
                        .is_some_and(|&s| m.seq >= s)
                    {
                        missing.remove(m.conversation.as_str());
                    }
                }
                Some(Event::Connection(ConnectionState::Connected { zero_rtt: z, .. })) => {
                    zero_rtt = z
                }
                Some(_) => {}
                None => bail!("client stopped with {} conversations behind", missing.len()),
            }
        }
        Ok(())
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .context("timed out receiving")??;
    Ok(zero_rtt)
}

/// Sends `count` messages to each conversation; returns the last seq of each.
async fn send(
    alice: &Client,
    convs: &[String],
    count: usize,
    body: &[u8],
) -> anyhow::Result<HashMap<String, u64>> {
    let mut receipts = Vec::with_capacity(count * convs.len());
    for _ in 0..count {
        for conv in convs {
            receipts.push(alice.send(conv.as_str(), body.to_vec()).await?);
        }
    }
    let mut last = HashMap::new();
    for r in receipts {
        let stored = tokio::time::timeout(WAIT, r)
            .await
            .context("receipt timed out")??;
        let seq = last.entry(stored.conversation).or_insert(0);
        *seq = stored.seq.max(*seq);
    }
    Ok(last)
}

impl CatchupArgs {
    /// The defaults `ferry-bench all` uses: bare loopback, then `delay_ms` each way.
    pub fn with_delay(delay_ms: u64, rounds: usize) -> CatchupArgs {
        CatchupArgs {
            messages: 1000,
            conversations: 1,
            body: 64,
            rounds,
            delay_ms,
            initial_window_packets: ferry_server::Settings::default().initial_window_packets,
        }
    }
}

/// Runs `args` and records one row per mode.
pub async fn run(args: CatchupArgs, results: &mut Results) {
    match measure(&args).await {
        Ok(rows) => results.catchup.extend(rows),
        Err(e) => results
            .errors
            .push(format!("catchup (delay {} ms): {e:#}", args.delay_ms)),
    }
}

/// Runs the benchmark, prints one line per mode and returns them.
pub async fn measure(args: &CatchupArgs) -> anyhow::Result<Vec<CatchupRow>> {
    let dir = tempfile::tempdir()?;
    let mut settings = ferry_server::Settings {
        data_dir: dir.path().join("server"),
        listen: "127.0.0.1:0".parse()?,
        http: "127.0.0.1:0".parse()?,
        ..ferry_server::Settings::default()
    };
    settings.initial_window_packets = args.initial_window_packets;
    settings.limits.send_rate_per_sec = u32::MAX / 2;
    settings.limits.send_burst = u32::MAX / 2;
    let server = ferry_server::start(settings).await?;
    let direct = server.local_addr();
    let (alice, _alice_events) =
        builder(&server, direct, "alice", "phone", &dir.path().join("alice"))
            .build()
            .await?;
    // Bob's path: bare loopback, or through a proxy that delays every datagram.
    let proxy = if args.delay_ms > 0 {
        let mut config = ProxyConfig::new("127.0.0.1:0".parse()?, direct);
        config.faults = Faults::symmetric(DirectionFaults {
            delay: Duration::from_millis(args.delay_ms),
            ..DirectionFaults::default()
        });
        Some(Proxy::start(config).await?)
    } else {
        None
    };
    let bob_endpoint = proxy.as_ref().map_or(direct, |p| p.local_addr());
    let convs = if args.conversations <= 1 {
        vec![ids::direct_conversation_id("alice", "bob").context("conversation id")?]
    } else {
        let mut convs = Vec::with_capacity(args.conversations);
        for i in 0..args.conversations {
            convs.push(
                alice
                    .create_group(&format!("catchup {i}"), &["bob".to_owned()])
                    .await?,
            );
        }
        convs
    };
    let per_conv = (args.messages / convs.len()).max(1);
    let missed = per_conv * convs.len();
    let body = vec![b'x'; args.body];

    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for (mode, zero_rtt) in [("1-RTT (zero_rtt off)", false), ("0-RTT", true)] {
        // A device per mode, so each starts with a cursor of its own.
        let device = if zero_rtt { "zero" } else { "full" };
        let store = dir.path().join(format!("bob-{device}"));
        let cache = SessionCache::new();
        let (bob, mut events) = builder(&server, bob_endpoint, "bob", device, &store)
            .zero_rtt(zero_rtt)
            .session_cache(cache.clone())
            .build()
            .await?;
        let targets = send(&alice, &convs, 1, &body).await?;
        receive(&mut events, &targets).await?;
        bob.shutdown().await;
        let mut times = Vec::new();
        let mut used = Vec::new();
        for _ in 0..args.rounds.max(1) {
            let targets = send(&alice, &convs, per_conv, &body).await?;
            let started = Instant::now();
            let (bob, mut events) = builder(&server, bob_endpoint, "bob", device, &store)
                .zero_rtt(zero_rtt)
                .session_cache(cache.clone())
                .build()
                .await?;
            used.push(receive(&mut events, &targets).await?);
            times.push(started.elapsed());
            bob.shutdown().await;
        }
        let mut sorted = times.clone();
        sorted.sort();
        let short = if zero_rtt { "0-RTT" } else { "1-RTT" };
        rows.push(CatchupRow {
            mode: if convs.len() > 1 {
                format!("{short}, {} conversations", convs.len())
            } else {
                short.into()
            },
            delay_ms: args.delay_ms,
            messages: missed,
            median_ms: sorted[sorted.len() / 2].as_secs_f64() * 1e3,
        });
        lines.push(format!(
            "catchup {mode}, one-way delay {} ms: {} conversation(s) x {} messages, median {:.1} ms (runs {:?}; 0-RTT accepted {:?})",
            args.delay_ms,
            convs.len(),
            per_conv,
            sorted[sorted.len() / 2].as_secs_f64() * 1e3,
            times
                .iter()
                .map(|t| format!("{:.1} ms", t.as_secs_f64() * 1e3))
                .collect::<Vec<_>>(),
            used
        ));
    }
    for line in lines {
        println!("{line}");
    }
    alice.shutdown().await;
    server.shutdown().await;
    Ok(rows)
}

//! `lossy`: Ferry through ferry-proxy at 10 % loss + 20 % reorder each way and a rebind (new source
//! ports, as after a NAT rebinding) every `rebind_every`; goodput relative to the same run through a
//! clean proxy, and the receiver's view checked: nothing lost, nothing twice, seqs in order.
//!
//! Both ends are the real client library (outbox, retries, receive window), since surviving loss and
//! rebinds is its job; only the server is a separate process.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_client::{Client, ClientBuilder, Event, Events};
use ferry_protocol::ids;
use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};

use super::Config;
use crate::harness;
use crate::peers::ferry::FerryServer;
use crate::report::{LossyRow, Results};

/// Bound of a whole lossy or clean run beyond its expected length.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// What one run saw at the receiver.
struct Seen {
    per_sec: f64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    rebinds: u32,
}

/// Runs the clean and the lossy run and records them.
pub async fn run(config: &Config, results: &mut Results) {
    match measure(config).await {
        Ok(row) => {
            println!(
                "lossy: clean {:.0}/s, lossy {:.0}/s ({:.0} %), lost {} duplicated {} reordered {}",
                row.clean_per_sec,
                row.lossy_per_sec,
                100.0 * row.lossy_per_sec / row.clean_per_sec.max(1e-9),
                row.lost,
                row.duplicated,
                row.reordered
            );
            results.lossy = Some(row);
        }
        Err(e) => results.errors.push(format!("lossy: {e:#}")),
    }
}

async fn measure(config: &Config) -> anyhow::Result<LossyRow> {
    let server = FerryServer::start(&config.ferry_binary).await?;
    let dir = tempfile::tempdir()?;
    let clean = one_run(
        &server,
        dir.path(),
        "clean",
        Faults::none(),
        None,
        config.lossy_messages,
    )
    .await?;
    let faults = Faults::symmetric(DirectionFaults {
        loss: 0.10,
        reorder: 0.20,
        ..DirectionFaults::default()
    });
    let lossy = one_run(
        &server,
        dir.path(),
        "lossy",
        faults,
        Some(config.rebind_every),
        config.lossy_messages,
    )
    .await?;
    Ok(LossyRow {
        messages: config.lossy_messages,
        clean_per_sec: clean.per_sec,
        lossy_per_sec: lossy.per_sec,
        lost: lossy.lost,
        duplicated: lossy.duplicated,
        reordered: lossy.reordered,
        rebinds: lossy.rebinds,
    })
}

async fn client(
    server: &FerryServer,
    endpoint: SocketAddr,
    user: &str,
    store: &Path,
) -> anyhow::Result<(Client, Events)> {
    Ok(ClientBuilder::new()
        .endpoint(endpoint.to_string())
        .ca_file(&server.ca)
        .token(server.token(user))
        .device_id("bench")
        .store_path(store)
        .build()
        .await?)
}

async fn one_run(
    server: &FerryServer,
    dir: &Path,
    name: &str,
    faults: Faults,
    rebind_every: Option<Duration>,
    count: u64,
) -> anyhow::Result<Seen> {
    let mut config = ProxyConfig::new("127.0.0.1:0".parse()?, server.addr);
    config.faults = faults;
    let proxy = Proxy::start(config).await?;
    let (from, to) = (format!("{name}-a"), format!("{name}-b"));
    let (sender, _sender_events) =
        client(server, proxy.local_addr(), &from, &dir.join(&from)).await?;
    let (receiver, mut events) = client(server, proxy.local_addr(), &to, &dir.join(&to)).await?;
    let conversation = ids::direct_conversation_id(&from, &to).context("conversation id")?;
    let bar = harness::progress(
        format!("lossy path: {name}"),
        Duration::from_secs(count / 100),
    );
    let started = Instant::now();
    let limit = started + RUN_LIMIT;
    let receive = tokio::spawn(async move {
        let (mut ids, mut last_seq) = (HashSet::new(), 0u64);
        let (mut duplicated, mut reordered) = (0u64, 0u64);
        while (ids.len() as u64) < count {
            let Ok(event) = tokio::time::timeout_at(limit.into(), events.recv()).await else {
                break;
            };
            match event {
                Some(Event::Message(m)) if m.sender == from => {
                    if !ids.insert(m.client_msg_id.clone()) {
                        duplicated += 1;
                    }
                    if m.seq <= last_seq {
                        reordered += 1;
                    }
                    last_seq = last_seq.max(m.seq);
                }
                Some(_) => {}
                None => break,
            }
        }
        (ids.len() as u64, duplicated, reordered, Instant::now())
    });
    let mut rebinds = 0u32;
    let mut receipts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        receipts.push(
            sender
                .send(conversation.as_str(), harness::payload(256, Instant::now()))
                .await?,
        );
    }
    // Rebinds until everything arrived, bounded by the run's limit.
    let mut next_rebind = rebind_every.map(|every| started + every);
    // Done when every receipt is in and the receiver has everything (or gave up at the limit).
    let wait_all = async {
        for r in receipts {
            r.await?;
        }
        anyhow::Ok(receive.await?)
    };
    let wait_all = tokio::time::timeout_at((limit + Duration::from_secs(10)).into(), wait_all);
    tokio::pin!(wait_all);
    let seen = loop {
        let rebind_at = next_rebind.filter(|at| *at < limit);
        tokio::select! {
            r = &mut wait_all => break r.context("receipts not all in within the run's limit")??,
            _ = tokio::time::sleep_until(rebind_at.unwrap_or(limit).into()), if rebind_at.is_some() => {
                proxy.rebind()?;
                rebinds += 1;
                next_rebind = rebind_at.zip(rebind_every).map(|(at, every)| at + every);
            }
        }
    };
    let (unique, duplicated, reordered, finished) = seen;
    bar.finish_and_clear();
    sender.shutdown().await;
    receiver.shutdown().await;
    Ok(Seen {
        per_sec: unique as f64 / finished.duration_since(started).as_secs_f64(),
        lost: count - unique,
        duplicated,
        reordered,
        rebinds,
    })
}

//! Ferry fan-out: a group of `members` users (one sender, the rest online receivers), created with
//! CreateGroup on the sender's control stream; each receiver reads the group's Delivers.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::ferry::{open_split, receive_delivers, send_until, FerryServer, WAIT};
use crate::harness::{self, Delivered, Params};

impl FerryServer {
    /// One sender, `members - 1` receivers in one group; the sender sends a fixed number of messages
    /// with `p.window` in flight.
    pub async fn fanout(&self, p: &Params, members: usize) -> anyhow::Result<Delivered> {
        let count = super::mosquitto::fanout_count(p);
        let names: Vec<String> = (0..members).map(|i| format!("g{i}")).collect();
        let mut sender = self.session(&names[0]).await?;
        let others: Vec<&str> = names[1..].iter().map(String::as_str).collect();
        let conversation = match sender.create_group("bench", &others).await? {
            Ok((conversation, _seq)) => conversation,
            Err(code) => anyhow::bail!("CreateGroup refused: {}", code.name()),
        };
        let mut receivers = Vec::new();
        for name in &names[1..] {
            receivers.push(self.session(name).await?);
        }
        let started = Instant::now();
        let until = started + p.duration + WAIT;
        let mut tasks = Vec::new();
        for session in receivers {
            tasks.push(tokio::spawn(async move {
                let got = receive_delivers(&session, "g0", count, until).await;
                session.close();
                got
            }));
        }
        let (send, reader) = open_split(&sender.connection, &conversation).await?;
        let counted = send_until("g0", send, reader, p, |sent| {
            (sent < count).then(Instant::now)
        })
        .await
        .context("group sender")?;
        sender.close();
        let mut out = Delivered {
            sent: counted.acked,
            delivered: 0,
            latency: harness::histogram(),
            elapsed: Duration::ZERO,
        };
        for task in tasks {
            let (got, hist) = task.await??;
            out.delivered += got;
            out.latency.add(hist)?;
        }
        out.elapsed = started.elapsed();
        Ok(out)
    }
}

//! One scenario device as its own process (`ferry-chaos device ...`): a real [`ferry_client::Client`]
//! on a SQLite store that sends at a steady rate and prints, one JSON line per fact, what its sender
//! was told ([`Line::Sent`], [`Line::Acked`]) and what its application saw ([`Line::Delivered`]).
//!
//! A process of its own so that the run can SIGKILL it with sends in flight (nothing of the client's
//! shutdown path runs) and SIGSTOP it, then start it again on the same store: the outbox must carry
//! the pending sends across. Lines are flushed one by one, so everything printed before a SIGKILL
//! still reaches the run through the pipe.
//!
//! The device's application commits a message by printing it: the line is in the pipe once written,
//! so it survives a SIGKILL. Only then is the message acknowledged ([`AckMode::Manual`]). A message
//! printed but not yet acknowledged when the device is killed is reported again by the restarted
//! client (the client's contract); the run passes what was printed (`--committed`), and such
//! re-reports are acknowledged without printing, as an application with its own store does.
//!
//! Stdin: `burst N` sends N messages at once; `stop` ends sending (the run is settling); end of input
//! ends the process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ferry_client::{AckMode, BackoffConfig, Client, ClientBuilder, Event, MessageKind, SendError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// One fact a device reports, as a JSON line on its stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Line {
    /// The client is built (connected or not); sending starts.
    Ready,
    /// About to queue a message whose body is `token` (printed before the outbox write, so a kill
    /// between the write and [`Line::Sent`] still leaves a trace of what was sent).
    Sending {
        /// Conversation id.
        conversation: String,
        /// The body: `<user>/<device>#<incarnation>:<n>`, unique per message.
        token: String,
    },
    /// The outbox holds the message.
    Sent {
        /// Conversation id.
        conversation: String,
        /// Its client_msg_id.
        id: String,
        /// Its body.
        token: String,
    },
    /// The receipt resolved: stored at `seq`.
    Acked {
        /// Conversation id.
        conversation: String,
        /// The client_msg_id.
        id: String,
        /// The seq the server assigned.
        seq: u64,
        /// The server's clock when it stored the message (ms since 1970): tells a message stored
        /// before a FLUSHALL from one stored after it.
        #[serde(default)]
        server_time_ms: u64,
    },
    /// The client reported another epoch for a conversation (history may have been lost there).
    EpochReset {
        /// Conversation id.
        conversation: String,
        /// The new epoch.
        epoch: u64,
    },
    /// The application saw a message.
    Delivered {
        /// Conversation id.
        conversation: String,
        /// Seq.
        seq: u64,
        /// Epoch.
        epoch: u64,
        /// The client_msg_id it carries.
        id: String,
        /// Sender user.
        sender_user: String,
        /// Sender device.
        sender_device: String,
        /// A system message.
        system: bool,
        /// The body as text (a [`Line::Sending`] token for scenario messages).
        token: String,
    },
    /// A queued send's receipt failed: the server refused it for good, or the client stopped. The
    /// message is no longer in flight for this life of the device.
    Refused {
        /// What happened.
        reason: String,
    },
    /// A send could not even be queued, or a line could not be understood.
    Failed {
        /// What happened.
        reason: String,
    },
}

/// Arguments of `ferry-chaos device`.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Server (or proxy) addresses, tried in this order and in rotation on failure (comma separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoint: Vec<String>,
    /// CA file to trust.
    #[arg(long)]
    pub ca: PathBuf,
    /// Token for this user's device.
    #[arg(long)]
    pub token: String,
    /// Device id.
    #[arg(long)]
    pub device: String,
    /// SQLite store path (kept across restarts of this device).
    #[arg(long)]
    pub store: PathBuf,
    /// Conversations to send into, round robin (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub conversations: Vec<String>,
    /// Messages per second.
    #[arg(long)]
    pub rate: f64,
    /// Prefix of the bodies (scenario device and incarnation): bodies are `<tag>:<n>`.
    #[arg(long)]
    pub tag: String,
    /// What the application already committed in an earlier life of this device, as
    /// `conversation@epoch=seq` (comma separated): re-reports up to there are acked, not printed.
    #[arg(long, value_delimiter = ',')]
    pub committed: Vec<String>,
}

/// Parses `--committed` entries into conversation → (epoch, seq).
pub fn parse_committed(entries: &[String]) -> anyhow::Result<HashMap<String, (u64, u64)>> {
    let mut out = HashMap::new();
    for entry in entries.iter().filter(|e| !e.is_empty()) {
        let parsed = entry.rsplit_once('=').and_then(|(left, seq)| {
            let (conversation, epoch) = left.rsplit_once('@')?;
            Some((conversation, epoch.parse().ok()?, seq.parse().ok()?))
        });
        let Some((conversation, epoch, seq)) = parsed else {
            anyhow::bail!("--committed entry {entry:?} is not conversation@epoch=seq");
        };
        out.insert(conversation.to_owned(), (epoch, seq));
    }
    Ok(out)
}

/// Formats one `--committed` entry.
pub fn committed_entry(conversation: &str, epoch: u64, seq: u64) -> String {
    format!("{conversation}@{epoch}={seq}")
}

/// What the stdout writer does, in order.
enum Out {
    /// Print a line.
    Line(Line),
    /// Everything of the conversation up to `seq` is printed: tell the client it is committed.
    Ack(String, u64),
    /// Print a line and say when it is in the pipe.
    LineThen(Line, tokio::sync::oneshot::Sender<()>),
}

/// Most lines waiting for stdout; senders wait when it is full (stdout is a pipe the run drains).
const LINE_QUEUE: usize = 4096;
/// Largest burst (`burst N` on stdin): the run asks for one right before killing the device, so
/// that the kill finds sends in the outbox that the server has not acked.
const MAX_BURST: u32 = 200;
/// Most receipts awaited at once; sending pauses beyond that (the outbox keeps the rest safe).
const MAX_PENDING_RECEIPTS: usize = 2048;

/// Faults come every few seconds: a client of the run notices a dead server (or node) fast and comes
/// back fast. The scenario's admin client is tuned the same, or a node kill would stall its removal for
/// the default heartbeat timeout.
pub fn tuned_for_faults(builder: ClientBuilder) -> ClientBuilder {
    builder
        .heartbeat_interval(Duration::from_secs(1))
        .heartbeat_timeout(Duration::from_secs(4))
        .backoff(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
        .connect_timeout(Duration::from_secs(3))
}

/// Runs the device until stdin ends.
pub async fn run(args: DeviceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 1000.0,
        "rate must be within (0, 1000] per second, got {}",
        args.rate
    );
    anyhow::ensure!(
        !args.conversations.is_empty(),
        "no conversation to send into"
    );
    let committed = parse_committed(&args.committed)?;
    let client = ClientBuilder::new()
        .endpoints(args.endpoint.iter().cloned())
        .ca_file(&args.ca)
        .token(args.token.clone())
        .device_id(args.device.clone())
        .store_path(&args.store)
        .ack_mode(AckMode::Manual);
    let (client, events) = tuned_for_faults(client).build().await?;
    let (out, out_rx) = mpsc::channel::<Out>(LINE_QUEUE);
    let writer = tokio::spawn(write_out(out_rx, client.clone()));
    let _ = out.send(Out::Line(Line::Ready)).await;
    let events_task = tokio::spawn(report_events(events, committed, out.clone()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (burst_tx, burst_rx) = mpsc::channel::<u32>(4);
    let stdin_task = tokio::spawn(async move {
        let mut input = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = input.next_line().await {
            let line = line.trim();
            if line == "stop" {
                let _ = stop_tx.send(true);
            } else if let Some(n) = line.strip_prefix("burst ").and_then(|n| n.parse().ok()) {
                let _ = burst_tx.try_send(n);
            }
        }
        // End of input: the run is done with this device (or gone); stop sending too.
        let _ = stop_tx.send(true);
    });

    if let Err(why) = send_steadily(&args, &client, &out, stop_rx, burst_rx).await {
        // The client stopped on its own (its store failed): exit, after the lines already queued,
        // so that the run sees a crash and starts this device again on the same store.
        events_task.abort();
        drop(out);
        let _ = writer.await;
        anyhow::bail!("the client stopped on its own: {why}");
    }
    // Keep receiving until the run closes stdin.
    let _ = stdin_task.await;
    client.shutdown().await;
    events_task.abort();
    drop(out);
    let _ = writer.await;
    Ok(())
}

/// Writes one line to stdout, flushed: a SIGKILL must not swallow facts already printed.
async fn print(stdout: &mut tokio::io::Stdout, line: &Line) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).expect("lines serialize");
    text.push('\n');
    stdout.write_all(text.as_bytes()).await?;
    stdout.flush().await
}

/// Prints lines and performs acks in order; an ack follows the lines it covers.
async fn write_out(mut rx: mpsc::Receiver<Out>, client: Client) {
    let mut stdout = tokio::io::stdout();
    while let Some(item) = rx.recv().await {
        match item {
            Out::Line(line) => {
                if print(&mut stdout, &line).await.is_err() {
                    break;
                }
            }
            Out::LineThen(line, done) => {
                if print(&mut stdout, &line).await.is_err() {
                    break;
                }
                let _ = done.send(());
            }
            Out::Ack(conversation, seq) => {
                // Fails only when the client stopped; the message is then reported again later.
                let _ = client.ack(&conversation, seq).await;
            }
        }
    }
}

/// Turns message events into printed lines (skipping re-reports of what an earlier life printed) and
/// acknowledges each after its line.
async fn report_events(
    mut events: ferry_client::Events,
    committed: HashMap<String, (u64, u64)>,
    out: mpsc::Sender<Out>,
) {
    while let Some(event) = events.recv().await {
        let m = match event {
            Event::Message(m) => m,
            Event::EpochReset {
                conversation,
                epoch,
            } => {
                let line = Line::EpochReset {
                    conversation,
                    epoch,
                };
                if out.send(Out::Line(line)).await.is_err() {
                    break;
                }
                continue;
            }
            _ => continue,
        };
        let already = committed
            .get(&m.conversation)
            .is_some_and(|&(epoch, seq)| epoch == m.epoch && m.seq <= seq);
        let (conversation, seq) = (m.conversation.clone(), m.seq);
        if !already {
            let line = Line::Delivered {
                token: m.text().into_owned(),
                conversation: m.conversation,
                seq: m.seq,
                epoch: m.epoch,
                id: m.client_msg_id,
                sender_user: m.sender,
                sender_device: m.sender_device,
                system: m.kind == MessageKind::System,
            };
            if out.send(Out::Line(line)).await.is_err() {
                break;
            }
        }
        if out.send(Out::Ack(conversation, seq)).await.is_err() {
            break;
        }
    }
}

/// Sends one message per tick, round robin over the conversations, until told to stop.
async fn send_steadily(
    args: &DeviceArgs,
    client: &Client,
    out: &mpsc::Sender<Out>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut bursts: mpsc::Receiver<u32>,
) -> Result<(), String> {
    let receipts = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_RECEIPTS));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let line = |line| Out::Line(line);
    // Messages owed by a burst: sent back to back, without waiting for ticks.
    let mut burst: u32 = 0;
    for n in 0u64.. {
        if burst > 0 {
            burst -= 1;
        } else {
            tokio::select! {
                _ = tick.tick() => {}
                Some(more) = bursts.recv() => burst = more.min(MAX_BURST),
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        let Ok(permit) = receipts.clone().acquire_owned().await else {
            break;
        };
        let conversation = args.conversations[(n as usize) % args.conversations.len()].clone();
        let token = format!("{}:{n}", args.tag);
        let sending = Line::Sending {
            conversation: conversation.clone(),
            token: token.clone(),
        };
        // The intent must be in the pipe before the outbox holds the message: a kill right after
        // the outbox write must still leave a trace of the message the restarted outbox will send.
        let (printed, is_printed) = tokio::sync::oneshot::channel();
        if out.send(Out::LineThen(sending, printed)).await.is_err() || is_printed.await.is_err() {
            break;
        }
        let receipt = match client.send(conversation.clone(), token.clone()).await {
            Ok(receipt) => receipt,
            Err(e) => {
                let reason = format!("send {token}: {e}");
                let stopped = matches!(e, SendError::Closed { .. } | SendError::Store { .. });
                let _ = out
                    .send(line(Line::Failed {
                        reason: reason.clone(),
                    }))
                    .await;
                if stopped {
                    return Err(reason);
                }
                continue;
            }
        };
        let id = receipt.message().client_msg_id.clone();
        let sent = Line::Sent {
            conversation,
            id: id.clone(),
            token,
        };
        let _ = out.send(line(sent)).await;
        let out = out.clone();
        tokio::spawn(async move {
            let result = match receipt.await {
                Ok(r) => Line::Acked {
                    conversation: r.conversation,
                    id: r.client_msg_id,
                    seq: r.seq,
                    server_time_ms: r.server_time_ms,
                },
                Err(e) => Line::Refused {
                    reason: format!("send {id}: {e}"),
                },
            };
            let _ = out.send(Out::Line(result)).await;
            drop(permit);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_entries_round_trip_and_bad_ones_are_refused() {
        let entries = vec![
            committed_entry("d:u0:u1", 7, 42),
            committed_entry("g:00ff", 1, 3),
        ];
        let parsed = parse_committed(&entries).expect("valid entries");
        assert_eq!(parsed.get("d:u0:u1"), Some(&(7, 42)));
        assert_eq!(parsed.get("g:00ff"), Some(&(1, 3)));
        assert!(parse_committed(&["d:u0:u1=4".into()]).is_err());
        assert!(parse_committed(&["d:u0:u1@x=4".into()]).is_err());
    }
}

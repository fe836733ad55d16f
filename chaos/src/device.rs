//! One scenario device as its own process (`ferry-chaos device ...`): a real [`ferry_client::Client`]
//! on a SQLite store that sends at a steady rate and prints, one JSON line per fact, what its sender
//! was told ([`Line::Sent`], [`Line::Acked`]) and what its application saw ([`Line::Delivered`]).
//!
//! A process of its own so that the run can SIGKILL it with sends in flight (nothing of the client's
//! shutdown path runs) and SIGSTOP it, then start it again on the same store: the outbox must carry
//! the pending sends across. Lines are flushed one by one, so everything printed before a SIGKILL
//! still reaches the run through the pipe.
//!
//! Stdin: `stop` ends sending (the run is settling); end of input ends the process.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ferry_client::{BackoffConfig, ClientBuilder, Event, MessageKind};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// One fact a device reports, as a JSON line on its stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Line {
    /// The client is built (connected or not); sending starts.
    Ready,
    /// The outbox holds a new message.
    Sent {
        /// Conversation id.
        conversation: String,
        /// Its client_msg_id.
        id: String,
    },
    /// The receipt resolved: stored at `seq`.
    Acked {
        /// Conversation id.
        conversation: String,
        /// The client_msg_id.
        id: String,
        /// The seq the server assigned.
        seq: u64,
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
    },
    /// A send failed for good (the message was handed back), or the client reported trouble.
    Failed {
        /// What happened.
        reason: String,
    },
}

/// Arguments of `ferry-chaos device`.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Server (or proxy) address.
    #[arg(long)]
    pub endpoint: String,
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
    /// Tag put into bodies (scenario device and incarnation), for humans reading a store.
    #[arg(long, default_value = "")]
    pub tag: String,
}

/// Most lines waiting for stdout; senders wait when it is full (stdout is a pipe the run drains).
const LINE_QUEUE: usize = 4096;
/// Most receipts awaited at once; sending pauses beyond that (the outbox keeps the rest safe).
const MAX_PENDING_RECEIPTS: usize = 2048;

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
    let (lines, mut line_rx) = mpsc::channel::<Line>(LINE_QUEUE);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = line_rx.recv().await {
            let mut text = serde_json::to_string(&line).expect("lines serialize");
            text.push('\n');
            // Flushed per line: a SIGKILL must not swallow facts already printed.
            if stdout.write_all(text.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });

    let (client, mut events) = ClientBuilder::new()
        .endpoint(args.endpoint.clone())
        .ca_file(&args.ca)
        .token(args.token.clone())
        .device_id(args.device.clone())
        .store_path(&args.store)
        // Faults come every few seconds: notice a dead server fast and come back fast.
        .heartbeat_interval(Duration::from_secs(1))
        .heartbeat_timeout(Duration::from_secs(4))
        .backoff(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
        .connect_timeout(Duration::from_secs(3))
        .build()
        .await?;
    let _ = lines.send(Line::Ready).await;

    let event_lines = lines.clone();
    let events_task = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::Message(m) = event {
                let line = Line::Delivered {
                    conversation: m.conversation,
                    seq: m.seq,
                    epoch: m.epoch,
                    id: m.client_msg_id,
                    sender_user: m.sender,
                    sender_device: m.sender_device,
                    system: m.kind == MessageKind::System,
                };
                if event_lines.send(line).await.is_err() {
                    break;
                }
            }
        }
    });

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stdin_task = tokio::spawn(async move {
        let mut input = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = input.next_line().await {
            if line.trim() == "stop" {
                let _ = stop_tx.send(true);
            }
        }
        // End of input: the run is done with this device (or gone); stop sending too.
        let _ = stop_tx.send(true);
    });

    let receipts = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_RECEIPTS));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let sending = async {
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_rx.wait_for(|stop| *stop) => break,
            }
            let Ok(permit) = receipts.clone().acquire_owned().await else {
                break;
            };
            let conversation = &args.conversations[(n as usize) % args.conversations.len()];
            let body = format!("chaos {} #{n}", args.tag);
            n += 1;
            match client.send(conversation.clone(), body).await {
                Ok(receipt) => {
                    let id = receipt.message().client_msg_id.clone();
                    let _ = lines
                        .send(Line::Sent {
                            conversation: conversation.clone(),
                            id: id.clone(),
                        })
                        .await;
                    let lines = lines.clone();
                    tokio::spawn(async move {
                        let line = match receipt.await {
                            Ok(r) => Line::Acked {
                                conversation: r.conversation,
                                id: r.client_msg_id,
                                seq: r.seq,
                            },
                            Err(e) => Line::Failed {
                                reason: format!("send {id}: {e}"),
                            },
                        };
                        let _ = lines.send(line).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    let _ = lines
                        .send(Line::Failed {
                            reason: format!("send: {e}"),
                        })
                        .await;
                }
            }
        }
    };
    sending.await;
    // Keep receiving until the run closes stdin.
    let _ = stdin_task.await;
    client.shutdown().await;
    events_task.abort();
    drop(lines);
    let _ = writer.await;
    Ok(())
}

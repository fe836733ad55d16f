//! The run's side of the device processes: spawning them (`ferry-chaos device`), killing, pausing and
//! restarting them on the same store, and turning their JSON lines into checker records.
//!
//! The [`Recorder`] is the only place the run writes observations; it stamps each line with its
//! arrival time so violations can be matched with the faults around them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::device::{committed_entry, Line};
use crate::observe::{
    device_key, Acked, Delivered, DeviceKey, EpochReset, HistoryLoss, Intent, Observations, Sent,
};

/// One device of the scenario.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// User id.
    pub user: String,
    /// Device id.
    pub device: String,
    /// `user/device`.
    pub key: DeviceKey,
    /// Its SQLite store, kept across restarts.
    pub store: PathBuf,
    /// Conversations it sends into.
    pub conversations: Vec<String>,
    /// Its token.
    pub token: String,
}

/// Everything the devices reported, plus counters for the report.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    /// The checker's input.
    pub obs: Observations,
    /// Failure lines per device (sends handed back, ...), capped per device.
    pub failures: BTreeMap<DeviceKey, Vec<String>>,
    /// Sent minus acked of each device's current incarnation (what a kill leaves in the outbox).
    pub in_flight: BTreeMap<DeviceKey, i64>,
}

/// Failure lines kept per device (the count goes on).
const MAX_FAILURES_KEPT: usize = 20;

impl Recorder {
    /// An empty recorder; times count from `start`.
    pub fn new(start: Instant, obs: Observations) -> Recorder {
        Recorder {
            start,
            obs,
            failures: BTreeMap::new(),
            in_flight: BTreeMap::new(),
        }
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Notes that the run is about to make the store lose its history (call right before FLUSHALL).
    pub fn history_loss(&mut self) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let at_ms = self.now_ms();
        self.obs.history_losses.push(HistoryLoss { at_ms, unix_ms });
    }

    fn record(&mut self, device: &DeviceKey, line: Line) {
        let at_ms = self.now_ms();
        match line {
            Line::Ready => {}
            Line::Sending {
                conversation,
                token,
            } => self.obs.intents.push(Intent {
                device: device.clone(),
                conversation,
                token,
            }),
            Line::Sent {
                conversation,
                id,
                token,
            } => {
                *self.in_flight.entry(device.clone()).or_default() += 1;
                self.obs.sent.push(Sent {
                    device: device.clone(),
                    conversation,
                    id,
                    token,
                    at_ms,
                });
            }
            Line::Acked {
                conversation,
                id,
                seq,
                server_time_ms,
            } => {
                *self.in_flight.entry(device.clone()).or_default() -= 1;
                self.obs.acked.push(Acked {
                    device: device.clone(),
                    conversation,
                    id,
                    seq,
                    server_time_ms,
                    at_ms,
                });
            }
            Line::EpochReset {
                conversation,
                epoch,
            } => self.obs.epoch_resets.push(EpochReset {
                device: device.clone(),
                conversation,
                epoch,
                at_ms,
            }),
            Line::Delivered {
                conversation,
                seq,
                epoch,
                id,
                sender_user,
                sender_device,
                system,
                token,
            } => {
                // System messages carry no client_msg_id: name them by their place instead.
                let id = if id.is_empty() {
                    format!("system:{epoch}:{seq}")
                } else {
                    id
                };
                self.obs
                    .delivered
                    .entry(device.clone())
                    .or_default()
                    .push(Delivered {
                        conversation,
                        seq,
                        epoch,
                        id,
                        sender: device_key(&sender_user, &sender_device),
                        system,
                        token,
                        at_ms,
                    });
            }
            Line::Refused { reason } => {
                *self.in_flight.entry(device.clone()).or_default() -= 1;
                self.note_failure(device, at_ms, reason);
            }
            Line::Failed { reason } => self.note_failure(device, at_ms, reason),
        }
    }

    fn note_failure(&mut self, device: &DeviceKey, at_ms: u64, reason: String) {
        let kept = self.failures.entry(device.clone()).or_default();
        if kept.len() < MAX_FAILURES_KEPT {
            kept.push(format!("{at_ms} ms: {reason}"));
        }
    }
}

/// A running device process.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: tokio::task::JoinHandle<()>,
}

/// The device processes of a run.
pub struct Fleet {
    exe: PathBuf,
    endpoints: Vec<SocketAddr>,
    ca: PathBuf,
    rate: f64,
    specs: Vec<DeviceSpec>,
    running: Vec<Option<Running>>,
    incarnations: Vec<u32>,
    exits: Vec<u32>,
    recorder: Arc<Mutex<Recorder>>,
    stopped: bool,
}

/// Exits a device may make on its own (crashes) before the run gives up instead of respawning it.
const MAX_OWN_EXITS: u32 = 5;
/// Sends asked for right before a device is killed.
const KILL_BURST: u32 = 30;
/// Time between asking for the burst and the SIGKILL: enough for some outbox writes, not for acks.
const KILL_AFTER_BURST: Duration = Duration::from_millis(40);
/// How long a device gets to exit after its stdin closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

impl Fleet {
    /// A fleet of `specs` (nothing started yet) talking to `endpoints` (device `i` first to endpoint
    /// `i mod n`, failing over to the others in turn), each sending `rate` messages per second,
    /// spawned from `exe` (this binary).
    pub fn new(
        exe: PathBuf,
        endpoints: Vec<SocketAddr>,
        ca: PathBuf,
        rate: f64,
        specs: Vec<DeviceSpec>,
        recorder: Arc<Mutex<Recorder>>,
    ) -> Fleet {
        let n = specs.len();
        Fleet {
            exe,
            endpoints,
            ca,
            rate,
            specs,
            running: (0..n).map(|_| None).collect(),
            incarnations: vec![0; n],
            exits: vec![0; n],
            recorder,
            stopped: false,
        }
    }

    /// The devices.
    pub fn specs(&self) -> &[DeviceSpec] {
        &self.specs
    }

    /// Starts device `i` (again, on the same store).
    pub async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        self.incarnations[i] += 1;
        let committed = self.committed(i);
        let mut command = Command::new(&self.exe);
        command.arg("device");
        if !committed.is_empty() {
            command.args(["--committed", &committed.join(",")]);
        }
        let spec = &self.specs[i];
        let mut child = command
            .args(["--endpoint", &self.endpoints_of(i).join(",")])
            .arg("--ca")
            .arg(&self.ca)
            .args(["--token", &spec.token, "--device", &spec.device])
            .arg("--store")
            .arg(&spec.store)
            .args(["--conversations", &spec.conversations.join(",")])
            .args(["--rate", &self.rate.to_string()])
            .args(["--tag", &format!("{}#{}", spec.key, self.incarnations[i])])
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take();
        if self.stopped {
            if let Some(stdin) = stdin.as_mut() {
                let _ = stdin.write_all(b"stop\n").await;
            }
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let key = spec.key.clone();
        let recorder = self.recorder.clone();
        self.recorder
            .lock()
            .expect("recorder lock")
            .in_flight
            .insert(key.clone(), 0);
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            // Ends when the process exits (its stdout closes).
            while let Ok(Some(text)) = lines.next_line().await {
                let mut rec = recorder.lock().expect("recorder lock");
                match serde_json::from_str::<Line>(&text) {
                    Ok(line) => rec.record(&key, line),
                    Err(e) => rec.record(
                        &key,
                        Line::Failed {
                            reason: format!("unparsable line {text:?}: {e}"),
                        },
                    ),
                }
            }
        });
        self.running[i] = Some(Running {
            child,
            stdin,
            reader,
        });
        Ok(())
    }

    /// Device `i`'s endpoints: its home (spreading the devices over the nodes) first, then the others.
    fn endpoints_of(&self, i: usize) -> Vec<String> {
        let n = self.endpoints.len();
        (0..n)
            .map(|k| self.endpoints[(i + k) % n].to_string())
            .collect()
    }

    /// What device `i`'s application printed so far: per conversation the last (epoch, seq), as
    /// `--committed` entries for its next life.
    fn committed(&self, i: usize) -> Vec<String> {
        let rec = self.recorder.lock().expect("recorder lock");
        let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for d in rec
            .obs
            .delivered
            .get(&self.specs[i].key)
            .into_iter()
            .flatten()
        {
            last.insert(&d.conversation, (d.epoch, d.seq));
        }
        last.into_iter()
            .map(|(conversation, (epoch, seq))| committed_entry(conversation, epoch, seq))
            .collect()
    }

    /// SIGKILL of device `i` right after asking it for a burst of sends, so the kill finds a pending
    /// outbox; returns how many of its sends were in flight (queued, not acked).
    pub async fn kill(&mut self, i: usize) -> i64 {
        if let Some(mut running) = self.running[i].take() {
            if let Some(stdin) = running.stdin.as_mut() {
                let _ = stdin
                    .write_all(format!("burst {KILL_BURST}\n").as_bytes())
                    .await;
                let _ = stdin.flush().await;
                tokio::time::sleep(KILL_AFTER_BURST).await;
            }
            let _ = running.child.start_kill();
            let _ = running.child.wait().await;
            // Everything printed before the kill is still in the pipe: read it all.
            let _ = running.reader.await;
        }
        let rec = self.recorder.lock().expect("recorder lock");
        rec.in_flight.get(&self.specs[i].key).copied().unwrap_or(0)
    }

    /// SIGSTOP (`pause`) or SIGCONT of device `i`.
    pub fn signal(&self, i: usize, pause: bool) {
        let pid = self.running[i].as_ref().and_then(|r| r.child.id());
        if let Some(pid) = pid {
            let signal = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on the pid of our own child, which is not reaped while `running` holds it.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// Tells every device to stop sending (they keep receiving), and later-started ones too.
    pub async fn stop_sending(&mut self) {
        self.stopped = true;
        for running in self.running.iter_mut().flatten() {
            if let Some(stdin) = running.stdin.as_mut() {
                let _ = stdin.write_all(b"stop\n").await;
                let _ = stdin.flush().await;
            }
        }
    }

    /// Devices that exited although nobody killed them, with their exit status; they are restarted.
    pub async fn restart_exited(&mut self) -> anyhow::Result<Vec<(DeviceKey, String)>> {
        let mut exited = Vec::new();
        for i in 0..self.specs.len() {
            let status = match self.running[i].as_mut() {
                Some(running) => running.child.try_wait()?,
                None => None,
            };
            if let Some(status) = status {
                if let Some(running) = self.running[i].take() {
                    let _ = running.reader.await;
                }
                self.exits[i] += 1;
                anyhow::ensure!(
                    self.exits[i] <= MAX_OWN_EXITS,
                    "device {} exited on its own {} times (last: {status}); giving up",
                    self.specs[i].key,
                    self.exits[i]
                );
                exited.push((self.specs[i].key.clone(), status.to_string()));
                self.spawn(i).await?;
            }
        }
        Ok(exited)
    }

    /// Ends every device: closes stdin (a clean exit), then SIGKILL after a grace period.
    pub async fn shutdown(&mut self) {
        for running in self.running.iter_mut().flatten() {
            running.stdin.take();
        }
        for slot in &mut self.running {
            if let Some(mut running) = slot.take() {
                if tokio::time::timeout(EXIT_GRACE, running.child.wait())
                    .await
                    .is_err()
                {
                    let _ = running.child.start_kill();
                    let _ = running.child.wait().await;
                }
                let _ = running.reader.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(seq: u64) -> Line {
        Line::Delivered {
            conversation: "g:01".into(),
            seq,
            epoch: 9,
            id: String::new(),
            sender_user: "u0".into(),
            sender_device: "setup".into(),
            system: true,
            token: String::new(),
        }
    }

    #[test]
    fn system_messages_get_distinct_ids_and_refusals_end_in_flight_sends() {
        let mut rec = Recorder::new(Instant::now(), Observations::default());
        let device: DeviceKey = "u1/d0".into();
        rec.record(&device, system(1));
        rec.record(&device, system(2));
        let ids: Vec<_> = rec.obs.delivered[&device]
            .iter()
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(ids, ["system:9:1", "system:9:2"]);

        let sent = Line::Sent {
            conversation: "g:01".into(),
            id: "m1".into(),
            token: "u1/d0#1:0".into(),
        };
        rec.record(&device, sent);
        assert_eq!(rec.in_flight[&device], 1);
        rec.record(
            &device,
            Line::Refused {
                reason: "not a member".into(),
            },
        );
        assert_eq!(rec.in_flight[&device], 0);
        assert_eq!(rec.failures[&device].len(), 1);
    }
}

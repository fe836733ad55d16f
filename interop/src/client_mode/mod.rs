//! Client mode: tests a ferry/1 client implementation, QUIC-interop-runner style.
//!
//! The runner starts a reference server (ferry-server, in process, on a temp data dir) and, per case, a
//! fault proxy in front of it. It runs the client command under test (`sh -c CMD`) with the case in the
//! environment, judges the outcome from the server side (a driver session of the peer user pulls what
//! arrived) and from the client's stdout, and treats exit status 127 as "case not supported".
//! Cases that need a server misbehaving on purpose (held Welcome, epoch change, refused Sends, a lost
//! answer) run against the [`scripted`] server instead (`scripted_cases.rs`).
//!
//! Environment given to the client (interop/README.md is the reference):
//! `TESTCASE`, `FERRY_SERVER` (host:port), `FERRY_SERVER_NAME` (TLS name), `FERRY_CA`, `FERRY_TOKEN`,
//! `FERRY_USER`, `FERRY_DEVICE`, `FERRY_PEER`, `FERRY_CONVERSATION`, `FERRY_COUNT`, `FERRY_STORE` (a
//! directory for the client's state), `FERRY_TIMEOUT` (seconds).
//!
//! Output expected on stdout, one JSON object per line:
//! - per message the client sent and got a SendAck for:
//!   `{"conversation", "seq", "client_msg_id", "duplicate"}`;
//! - per message handed to the application:
//!   `{"conversation", "seq", "from", "device", "body", "server_time"}`.
//! - per typing signal shown to the user (case `datagrams`):
//!   `{"conversation", "typing", "from", "device"}`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::frame::MessageKind;
use ferry_protocol::ids;
use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};
use ferry_server::{ServerHandle, Settings};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, Mutex};

use crate::driver::{Session, Target};
use crate::report::RunReport;
use crate::runner::{run_cases, Case, CaseResult, Verdict};
use crate::server_mode::pull_all;
use crate::{case, ensure, ensure_eq, fail, unsupported};

pub mod scripted;
mod scripted_cases;

/// Exit status with which a client says it does not support a case.
pub const UNSUPPORTED_EXIT: i32 = 127;

/// Settings of a client-mode run.
pub struct ClientConfig {
    /// The client command (`sh -c`).
    pub cmd: String,
    /// Only cases whose name contains this.
    pub filter: Option<String>,
    /// Bound on each case.
    pub case_timeout: Duration,
    /// Messages per case (`FERRY_COUNT`).
    pub count: usize,
}

/// The reference server: restartable on the same port and data dir (for the GoAway case).
pub struct ReferenceServer {
    dir: tempfile::TempDir,
    handle: Mutex<Option<ServerHandle>>,
    addr: SocketAddr,
    ca: PathBuf,
    secret: ferry_server::auth::TokenSecret,
}

/// Reference server settings: short heartbeat and idle timeouts so that a dead path is noticed within
/// seconds (the `reconnect` case blackholes the network for longer than the idle timeout).
pub fn reference_settings(dir: &std::path::Path, listen: SocketAddr) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        listen,
        http: "127.0.0.1:0".parse().expect("literal address"),
        heartbeat_interval_ms: 1000,
        idle_timeout_ms: 4000,
        drain_grace_ms: 500,
        ..Settings::default()
    }
}

impl ReferenceServer {
    /// Starts a reference server on a free loopback port.
    pub async fn start() -> anyhow::Result<ReferenceServer> {
        let dir = tempfile::tempdir()?;
        let settings = reference_settings(dir.path(), "127.0.0.1:0".parse().expect("literal"));
        let handle = ferry_server::start(settings).await?;
        let secret = ferry_server::auth::TokenSecret::load(
            &dir.path().join(ferry_server::server::SECRET_FILE),
        )?;
        Ok(ReferenceServer {
            addr: handle.local_addr(),
            ca: handle.ca_path().to_path_buf(),
            handle: Mutex::new(Some(handle)),
            dir,
            secret,
        })
    }

    /// Drains (GoAway to everyone) and starts again on the same address and data.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let mut handle = self.handle.lock().await;
        if let Some(old) = handle.take() {
            old.shutdown().await;
        }
        *handle = Some(ferry_server::start(reference_settings(self.dir.path(), self.addr)).await?);
        Ok(())
    }

    /// A token valid for an hour.
    pub fn token(&self, user: &str, device: &str) -> String {
        self.secret.mint(
            user,
            device,
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
    }

    /// Stops the server.
    pub async fn shutdown(&self) {
        if let Some(handle) = self.handle.lock().await.take() {
            handle.shutdown().await;
        }
    }
}

/// What one client-mode case gets.
pub struct ClientCtx {
    /// The reference server.
    pub server: Arc<ReferenceServer>,
    /// The client command.
    pub cmd: String,
    /// `FERRY_COUNT`.
    pub count: usize,
    /// Bound on one client invocation.
    pub client_timeout: Duration,
    prefix: String,
}

/// One line of the client's output.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OutputLine {
    /// A message handed to the application.
    Received {
        /// Conversation id.
        conversation: String,
        /// Its seq.
        seq: u64,
        /// Sending user.
        from: String,
        /// Sending device.
        device: String,
        /// Body as UTF-8 text.
        body: String,
        /// `Message.server_time_ms`.
        server_time: u64,
    },
    /// A typing signal the client reported (cases `datagrams`).
    Typing {
        /// Conversation id.
        conversation: String,
        /// `Typing.active`.
        typing: bool,
        /// The typing user.
        from: String,
        /// Their device.
        device: String,
    },
    /// A message the client sent and got a SendAck for.
    Sent {
        /// Conversation id.
        conversation: String,
        /// Seq from the SendAck.
        seq: u64,
        /// The id the client chose.
        client_msg_id: String,
        /// From the SendAck.
        duplicate: bool,
    },
}

/// Parses the client's stdout; blank lines are skipped, anything else that is not an output line fails.
pub fn parse_output(stdout: &str) -> Result<Vec<OutputLine>, Verdict> {
    let mut out = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(parsed) => out.push(parsed),
            Err(e) => fail!(
                "stdout line {} is not a send or receive record ({e}): {line:?}",
                i + 1
            ),
        }
    }
    Ok(out)
}

/// A client process under test, its stdout streamed line by line.
pub struct ClientRun {
    child: tokio::process::Child,
    token: String,
    lines: mpsc::Receiver<String>,
    stderr: Arc<std::sync::Mutex<String>>,
    /// Every stdout line so far.
    pub stdout: Vec<String>,
}

impl ClientRun {
    /// Waits until the client printed `count` lines in total (bounded).
    pub async fn wait_lines(&mut self, count: usize, within: Duration) -> Result<(), Verdict> {
        let deadline = tokio::time::Instant::now() + within;
        while self.stdout.len() < count {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.stdout.push(line),
                Ok(None) => {
                    let status =
                        tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
                    if let Ok(Ok(status)) = status {
                        if status.code() == Some(UNSUPPORTED_EXIT) {
                            unsupported!("the client does not support this case (exit 127)");
                        }
                    }
                    fail!(
                        "client exited after {} of {count} output lines; stderr: {}",
                        self.stdout.len(),
                        self.stderr_tail()
                    )
                }
                Err(_) => fail!(
                    "client printed {} of {count} output lines within {} s; stderr: {}",
                    self.stdout.len(),
                    within.as_secs(),
                    self.stderr_tail()
                ),
            }
        }
        Ok(())
    }

    /// Waits for the client to exit (bounded); 127 is Unsupported, other non-zero statuses fail.
    pub async fn finish(mut self, within: Duration) -> Result<Vec<OutputLine>, Verdict> {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                status.map_err(|e| Verdict::Fail(format!("waiting for the client: {e}")))?
            }
            Err(_) => {
                let _ = self.child.kill().await;
                fail!(
                    "client did not exit within {} s; stderr: {}",
                    within.as_secs(),
                    self.stderr_tail()
                );
            }
        };
        while let Some(line) = self.lines.recv().await {
            self.stdout.push(line);
        }
        // FERRY-SEC-1: tokens never appear in logs or output.
        let stderr = self.stderr.lock().expect("stderr lock").clone();
        ensure!(
            !self.stdout.iter().any(|l| l.contains(&self.token)) && !stderr.contains(&self.token),
            "the client printed its token (FERRY-SEC-1)"
        );
        match status.code() {
            Some(0) => {}
            Some(UNSUPPORTED_EXIT) => {
                unsupported!("the client does not support this case (exit 127)")
            }
            _ => fail!(
                "client exited with {status}; stderr: {}",
                self.stderr_tail()
            ),
        }
        parse_output(&self.stdout.join("\n"))
    }

    /// The exit code if the client has exited already.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// Kills the client (cases where it is expected to run on).
    pub async fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill().await;
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(200), self.lines.recv()).await
        {
            self.stdout.push(line);
        }
        self.stdout
    }

    fn stderr_tail(&self) -> String {
        let text = self.stderr.lock().expect("stderr lock").clone();
        let tail: String = text
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if tail.trim().is_empty() {
            "(empty)".into()
        } else {
            tail.trim().to_owned()
        }
    }
}

/// One case's users and conversation, and the proxy the client talks through.
pub struct Scene {
    /// The user the client runs as.
    pub user: String,
    /// Its device.
    pub device: String,
    /// The other user of the conversation.
    pub peer: String,
    /// `d:<user>:<peer>` (canonical order).
    pub conversation: String,
    /// The client's state directory.
    pub store: tempfile::TempDir,
    /// The fault proxy between the client and the server.
    pub proxy: Proxy,
    /// A CA file other than the server's (for the certificate case); None = the server's.
    pub ca: Option<PathBuf>,
    /// `FERRY_COUNT` for this case.
    pub count: usize,
}

impl ClientCtx {
    /// Users, conversation and a fresh proxy to the reference server for this case.
    pub async fn scene(&self, faults: Faults) -> Result<Scene, Verdict> {
        self.scene_to(self.server.addr, faults).await
    }

    /// Users, conversation and a fresh proxy to `upstream` (the reference or a scripted server).
    pub async fn scene_to(&self, upstream: SocketAddr, faults: Faults) -> Result<Scene, Verdict> {
        let user = format!("{}-client", self.prefix);
        let peer = format!("{}-peer", self.prefix);
        let conversation = ids::direct_conversation_id(&user, &peer).expect("valid ids");
        let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("literal"), upstream);
        config.seed = rand::random();
        config.faults = faults;
        let proxy = Proxy::start(config)
            .await
            .map_err(|e| Verdict::Fail(format!("proxy: {e}")))?;
        let store = tempfile::tempdir().map_err(|e| Verdict::Fail(format!("temp dir: {e}")))?;
        Ok(Scene {
            user,
            device: "dev1".into(),
            peer,
            conversation,
            store,
            proxy,
            ca: None,
            count: self.count,
        })
    }

    /// Starts the client for `testcase`.
    pub fn spawn(&self, testcase: &str, scene: &Scene) -> Result<ClientRun, Verdict> {
        let token = self.server.token(&scene.user, &scene.device);
        let ca = scene.ca.clone().unwrap_or_else(|| self.server.ca.clone());
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .env("TESTCASE", testcase)
            .env("FERRY_SERVER", scene.proxy.local_addr().to_string())
            .env("FERRY_SERVER_NAME", "localhost")
            .env("FERRY_CA", &ca)
            .env("FERRY_TOKEN", &token)
            .env("FERRY_USER", &scene.user)
            .env("FERRY_DEVICE", &scene.device)
            .env("FERRY_PEER", &scene.peer)
            .env("FERRY_CONVERSATION", &scene.conversation)
            .env("FERRY_COUNT", scene.count.to_string())
            .env("FERRY_STORE", scene.store.path())
            .env("FERRY_TIMEOUT", self.client_timeout.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Verdict::Fail(format!("starting the client command: {e}")))?;
        // Bounded: a client that floods stdout is slowed down (pipe backpressure), not buffered forever.
        let (tx, lines) = mpsc::channel(4096);
        let stdout = child.stdout.take().expect("piped stdout");
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().expect("piped stderr");
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut err, &mut buf).await;
            sink.lock()
                .expect("stderr lock")
                .push_str(&String::from_utf8_lossy(&buf));
        });
        Ok(ClientRun {
            child,
            token,
            lines,
            stderr,
            stdout: Vec::new(),
        })
    }

    /// A driver session of `user` straight to the server (not through the proxy).
    pub async fn session(&self, user: &str, device: &str) -> Result<Session, Verdict> {
        let target = Target::new(self.server.addr, &self.server.ca)?;
        Ok(target
            .session(&self.server.token(user, device), device)
            .await?)
    }
}

/// Every client-mode case.
pub fn cases() -> Vec<Case<ClientCtx>> {
    vec![
        case!(["FERRY-MSG-11", "FERRY-AUTH-1", "FERRY-CONN-1", "FERRY-HELLO-1", "FERRY-RECV-9", "FERRY-INTEROP-1", "FERRY-SEC-1"], "send: FERRY_COUNT messages are stored once each, with the seqs the client reports", send),
        case!(["FERRY-RECV-3", "FERRY-CONN-5", "FERRY-SYNC-6", "FERRY-RECV-6"], "receive: the peer's messages (some sent before the client started) are handed over once, in seq order", receive),
        case!(["FERRY-CONN-4", "FERRY-CONN-5", "FERRY-HB-1", "FERRY-HB-3", "FERRY-RECV-5"], "reconnect: after a network outage longer than the idle timeout the client resyncs and misses nothing", reconnect),
        case!(["FERRY-SEND-2", "FERRY-STREAM-9", "FERRY-SEND-1"], "lossy: sends through 20% loss arrive exactly once", lossy),
        case!(["FERRY-GOAWAY-3", "FERRY-GOAWAY-1", "FERRY-GOAWAY-2", "FERRY-ERR-7"], "goaway: the server drains and restarts mid-way; the client reconnects and misses nothing", goaway),
        case!(["FERRY-TRANSPORT-4"], "untrusted: a server certificate from an untrusted CA is refused and nothing is sent", untrusted),
        case!(["FERRY-ERR-6", "FERRY-AUTH-8"], "replaced: after SESSION_REPLACED the client does not reconnect by itself", replaced),
        case!(["FERRY-HELLO-5", "FERRY-DGRAM-5", "FERRY-ZERORTT-1"], "early: with Welcome held back, only early-data frames and no datagram come before it", scripted_cases::early),
        case!(["FERRY-ZERORTT-5", "FERRY-ZERORTT-1", "FERRY-HELLO-5", "FERRY-GOAWAY-1"], "zero-rtt: after GoAway the reconnect (0-RTT if resumed) opens with Hello and sends only early-data frames before Welcome", scripted_cases::zero_rtt),
        case!(["FERRY-MSG-8", "FERRY-RECV-2", "FERRY-RECV-11"], "epoch: after an epoch change with colliding seqs the new epoch's messages are handed over", scripted_cases::epoch),
        case!(["FERRY-MSG-14", "FERRY-RECV-3"], "server-time: messages arriving out of order with decreasing server times are handed over by seq", scripted_cases::server_time),
        case!(["FERRY-ID-6", "FERRY-SYNC-3"], "tokens: odd, non-monotonic sync tokens are echoed exactly while has_more", scripted_cases::tokens),
        case!(["FERRY-SYNC-5", "FERRY-RECV-1"], "sync-crash: a crash after a Sync does not hide the conversations it reported", scripted_cases::sync_crash),
        case!(["FERRY-HIST-1", "FERRY-HIST-2", "FERRY-RECV-11", "FERRY-PULL-4"], "history: a new device hands over only the recent window and pulls nothing older unasked", scripted_cases::history),
        case!(["FERRY-GROUP-7"], "group-lost: a CreateGroup whose answer was lost is not repeated blindly", scripted_cases::group_lost),
        case!(["FERRY-LIMIT-4", "FERRY-HELLO-5", "FERRY-SEND-4"], "limits: max_inflight_sends is adopted; TOO_MANY_INFLIGHT and RATE_LIMITED sends are repeated only when allowed", scripted_cases::limits),
        case!(["FERRY-SEC-8", "FERRY-DGRAM-2"], "datagrams: typing signals for unknown conversations or above max_frame_size are ignored", scripted_cases::datagrams),
        case!(["FERRY-TRANSPORT-9"], "keepalive: keep-alives hold a connection through 20 s of quiet under a 15 s QUIC idle timeout", scripted_cases::keepalive),
    ]
}

/// Runs the client-mode suite.
pub async fn run(
    config: ClientConfig,
    progress: impl FnMut(&crate::report::CaseReport),
) -> anyhow::Result<RunReport> {
    let server = Arc::new(ReferenceServer::start().await?);
    let run_id = format!("c{:08x}", rand::random::<u32>());
    let client_timeout = config
        .case_timeout
        .saturating_sub(Duration::from_secs(5))
        .max(Duration::from_secs(5));
    let cases = cases();
    let reports = run_cases(
        &cases,
        config.filter.as_deref(),
        config.case_timeout,
        |index| {
            Arc::new(ClientCtx {
                server: server.clone(),
                cmd: config.cmd.clone(),
                count: config.count,
                client_timeout,
                prefix: format!("{run_id}-{index}"),
            })
        },
        progress,
    )
    .await;
    server.shutdown().await;
    Ok(RunReport {
        mode: "client".into(),
        target: config.cmd,
        cases: reports,
    })
}

// ---- judging ---------------------------------------------------------------------------------------

fn body(i: usize) -> String {
    format!("message {i}")
}

/// The client's messages as stored on the server: checks that each expected body is there exactly
/// once from the client, with gap-free seqs; returns client_msg_id → seq.
async fn stored_once(
    ctx: &ClientCtx,
    scene: &Scene,
    count: usize,
) -> Result<BTreeMap<String, u64>, Verdict> {
    let reader = ctx.session(&scene.peer, "judge").await?;
    let all = pull_all(&mut reader.open(&scene.conversation).await?, 0).await?;
    let mut by_body: BTreeMap<String, usize> = BTreeMap::new();
    for (i, m) in all.iter().enumerate() {
        ensure_eq!(m.seq, i as u64 + 1, "seq of stored message {}", i + 1);
        ensure_eq!(
            m.kind(),
            MessageKind::User,
            "kind of stored message {}",
            m.seq
        );
        ensure_eq!(m.sender, scene.user, "sender of stored message {}", m.seq);
        *by_body
            .entry(String::from_utf8_lossy(&m.body).into_owned())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = (1..=count).map(|i| (body(i), 1)).collect();
    ensure_eq!(
        by_body,
        expected,
        "stored bodies and how often each is stored"
    );
    let ids: BTreeSet<&str> = all.iter().map(|m| m.client_msg_id.as_str()).collect();
    ensure_eq!(ids.len(), count, "distinct client_msg_ids");
    Ok(all.into_iter().map(|m| (m.client_msg_id, m.seq)).collect())
}

/// Checks the client's send records against what the server stored.
fn sends_match(
    lines: &[OutputLine],
    stored: &BTreeMap<String, u64>,
    conversation: &str,
) -> CaseResult {
    let mut reported = BTreeMap::new();
    for line in lines {
        if let OutputLine::Sent {
            conversation: c,
            seq,
            client_msg_id,
            ..
        } = line
        {
            ensure_eq!(c.as_str(), conversation, "conversation of a send record");
            reported.insert(client_msg_id.clone(), *seq);
        }
    }
    ensure_eq!(
        &reported,
        stored,
        "client_msg_id → seq reported by the client vs stored"
    );
    Ok(())
}

/// Checks the client's receive records: exactly `expected` seqs, once each, in order, with bodies.
fn received_in_order(
    lines: &[OutputLine],
    scene: &Scene,
    expected: &BTreeMap<u64, String>,
) -> CaseResult {
    let got: Vec<(u64, String)> = lines
        .iter()
        .filter_map(|l| match l {
            OutputLine::Received {
                conversation,
                seq,
                from,
                body,
                ..
            } if conversation == &scene.conversation => Some((*seq, format!("{from}: {body}"))),
            _ => None,
        })
        .collect();
    let want: Vec<(u64, String)> = expected
        .iter()
        .map(|(s, b)| (*s, format!("{}: {b}", scene.peer)))
        .collect();
    ensure_eq!(got, want, "(seq, \"from: body\") handed over by the client");
    Ok(())
}

/// The peer sends bodies `range` in the conversation; returns seq → body.
async fn peer_sends(
    ctx: &ClientCtx,
    scene: &Scene,
    range: std::ops::RangeInclusive<usize>,
) -> Result<BTreeMap<u64, String>, Verdict> {
    let peer = ctx.session(&scene.peer, "peer").await?;
    let mut stream = peer.open(&scene.conversation).await?;
    let mut sent = BTreeMap::new();
    for i in range {
        let ack = stream
            .send_and_ack(&format!("{}-{i}", scene.peer), body(i).as_bytes())
            .await?;
        sent.insert(ack.seq, body(i));
    }
    peer.close();
    Ok(sent)
}

// ---- cases -----------------------------------------------------------------------------------------

async fn send(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let lines = ctx
        .spawn("send", &scene)?
        .finish(ctx.client_timeout)
        .await?;
    let stored = stored_once(&ctx, &scene, ctx.count).await?;
    sends_match(&lines, &stored, &scene.conversation)
}

async fn receive(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let half = ctx.count / 2;
    let mut expected = peer_sends(&ctx, &scene, 1..=half).await?;
    let client = ctx.spawn("receive", &scene)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    expected.extend(peer_sends(&ctx, &scene, half + 1..=ctx.count).await?);
    let lines = client.finish(ctx.client_timeout).await?;
    received_in_order(&lines, &scene, &expected)
}

async fn reconnect(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let half = ctx.count / 2;
    let mut client = ctx.spawn("reconnect", &scene)?;
    let mut expected = peer_sends(&ctx, &scene, 1..=half).await?;
    client.wait_lines(half, Duration::from_secs(10)).await?;
    // Longer than the reference server's idle timeout (4 s): the old connection dies on both sides.
    scene.proxy.blackhole(Duration::from_secs(6));
    expected.extend(peer_sends(&ctx, &scene, half + 1..=ctx.count).await?);
    let lines = client.finish(ctx.client_timeout).await?;
    received_in_order(&lines, &scene, &expected)
}

async fn lossy(ctx: Arc<ClientCtx>) -> CaseResult {
    let faults = Faults::symmetric(DirectionFaults {
        loss: 0.2,
        ..DirectionFaults::default()
    });
    let scene = ctx.scene(faults).await?;
    let lines = ctx
        .spawn("lossy", &scene)?
        .finish(ctx.client_timeout)
        .await?;
    let stored = stored_once(&ctx, &scene, ctx.count).await?;
    sends_match(&lines, &stored, &scene.conversation)
}

async fn goaway(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let half = ctx.count / 2;
    let mut client = ctx.spawn("goaway", &scene)?;
    let mut expected = peer_sends(&ctx, &scene, 1..=half).await?;
    client.wait_lines(half, Duration::from_secs(10)).await?;
    ctx.server
        .restart()
        .await
        .map_err(|e| Verdict::Fail(format!("restarting the reference server: {e}")))?;
    expected.extend(peer_sends(&ctx, &scene, half + 1..=ctx.count).await?);
    let lines = client.finish(ctx.client_timeout).await?;
    received_in_order(&lines, &scene, &expected)
}

async fn untrusted(ctx: Arc<ClientCtx>) -> CaseResult {
    let mut scene = ctx.scene(Faults::none()).await?;
    // A CA of another ferry-server data dir: valid PEM, but it did not sign this server's certificate.
    let other = tempfile::tempdir().map_err(|e| Verdict::Fail(format!("temp dir: {e}")))?;
    let files = ferry_server::tls::ensure_self_signed(other.path())
        .map_err(|e| Verdict::Fail(format!("making a CA: {e}")))?;
    scene.ca = Some(files.cert);
    let mut client = ctx.spawn("untrusted", &scene)?;
    // The client may give up or keep retrying; either way it must not get a session or send.
    tokio::time::sleep(Duration::from_secs(4)).await;
    if client.exit_code() == Some(UNSUPPORTED_EXIT) {
        unsupported!("the client does not support this case (exit 127)");
    }
    let output = client.kill().await;
    ensure!(
        output.is_empty(),
        "the client reported output although it cannot trust the server: {output:?}"
    );
    let reader = ctx.session(&scene.peer, "judge").await?;
    let page = reader.open(&scene.conversation).await?.pull(0, 0).await?;
    ensure_eq!(
        page.head_seq,
        0,
        "messages stored by a client that did not trust the server"
    );
    Ok(())
}

async fn replaced(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let mut client = ctx.spawn("replaced", &scene)?;
    peer_sends(&ctx, &scene, 1..=1).await?;
    client.wait_lines(1, Duration::from_secs(10)).await?;
    // Replace the client's session with one of the same device.
    let mut mine = ctx.session(&scene.user, &scene.device).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A client that reconnected would have replaced this session in turn.
    let alive = tokio::time::timeout(Duration::from_secs(2), mine.heartbeat(0)).await;
    let _ = client.kill().await;
    match alive {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let why = mine
                .connection
                .close_reason()
                .map_or(e.to_string(), |r| r.to_string());
            fail!("the replacing session was closed ({why}): the client reconnected automatically after SESSION_REPLACED?")
        }
        Err(_) => fail!("the replacing session stopped answering"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_parse() {
        let out = "{\"conversation\":\"d:a:b\",\"seq\":3,\"client_msg_id\":\"x\",\"duplicate\":false}\n\n\
                   {\"conversation\":\"d:a:b\",\"seq\":4,\"from\":\"b\",\"device\":\"d\",\"body\":\"hi\",\"server_time\":5}\n";
        let lines = parse_output(out).unwrap();
        assert!(matches!(
            &lines[0],
            OutputLine::Sent {
                seq: 3,
                duplicate: false,
                ..
            }
        ));
        assert!(matches!(&lines[1], OutputLine::Received { seq: 4, .. }));
        assert!(parse_output("not json").is_err());
        assert!(parse_output("{\"seq\":1}").is_err());
    }
}

//! Ferry as a peer: a `ferry-server` *process* (like the other peers, so RSS and CPU are its own),
//! driven frame by frame over the interop wire driver with each stream's halves split, so one task
//! writes Sends while another reads SendAcks (pipelining, as the client library does).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use ferry_interop::driver::{Session, Target};
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Ack, Open, Send};
use ferry_protocol::{ids, Frame};
use ferry_quic::FrameReader;
use ferry_server::auth::TokenSecret;
use tokio::sync::Semaphore;

use super::process::{free_port, Process};
use crate::harness::{self, Counted, Delivered, Params};

/// Bound for any single wait on the wire (a frame, a handshake).
pub const WAIT: Duration = Duration::from_secs(20);
/// How long a failed open-loop sender waits for its ack reader to say why the stream failed.
const CAUSE_WAIT: Duration = Duration::from_secs(2);

/// A `ferry-server` config with the per-source admission limits lifted, for benches whose clients all
/// share one source address (a real deployment's 100k connections come from 100k sources).
pub const LIFTED_SOURCE_LIMITS: &str =
    "[hardening]\nmax_connections_per_source = 1000000\nhandshakes_per_sec_per_source = 1000000\n";

/// A running `ferry-server` process on a temporary data dir.
pub struct FerryServer {
    process: Process,
    /// QUIC address.
    pub addr: SocketAddr,
    /// HTTP address of /healthz and /metrics.
    pub http: SocketAddr,
    /// The self-signed certificate the clients trust.
    pub ca: PathBuf,
    secret: TokenSecret,
    /// A client endpoint trusting `ca`.
    pub target: Target,
    _dir: tempfile::TempDir,
}

/// The `ferry-server` binary: `explicit`, or the one next to this executable (same cargo profile).
pub fn server_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("ferry-server");
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "no ferry-server next to {}: build it (`cargo build --release -p ferry-server`) or pass \
         --ferry-server PATH",
        exe.display()
    )
}

impl FerryServer {
    /// Starts `binary` on free loopback ports with the per-user send rate lifted (the bench measures
    /// the send path, not the rate limit).
    pub async fn start(binary: &Path) -> anyhow::Result<FerryServer> {
        Self::start_with(binary, &[]).await
    }

    /// Like [`FerryServer::start`], with `extra` arguments for `ferry-server run` (e.g. `--redis`).
    pub async fn start_with(binary: &Path, extra: &[&str]) -> anyhow::Result<FerryServer> {
        let dir = tempfile::tempdir()?;
        let (quic, http) = (free_port()?, free_port()?);
        let addr: SocketAddr = format!("127.0.0.1:{quic}").parse()?;
        let http_addr: SocketAddr = format!("127.0.0.1:{http}").parse()?;
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--http")
            .arg(http_addr.to_string())
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("FERRY_LIMITS_SEND_RATE_PER_SEC", (u32::MAX / 2).to_string())
            .env("FERRY_LIMITS_SEND_BURST", (u32::MAX / 2).to_string());
        let mut process = Process::spawn("ferry-server", command, dir.path())?;
        process.wait_tcp(http_addr).await?;
        let data = dir.path().join("data");
        let ca = data.join("cert.pem");
        let secret = TokenSecret::load(&data.join(ferry_server::server::SECRET_FILE))
            .context("loading the server's token secret")?;
        let target = Target::new(addr, &ca)?;
        Ok(FerryServer {
            process,
            addr,
            http: http_addr,
            ca,
            secret,
            target,
            _dir: dir,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A token for `user`'s device "bench", valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.token_for(user, "bench")
    }

    /// A token for `user`'s `device`, valid for an hour.
    pub fn token_for(&self, user: &str, device: &str) -> String {
        self.secret
            .mint(user, device, Duration::from_secs(3600), SystemTime::now())
    }

    /// A session (Hello/Welcome done) for `user`.
    pub async fn session(&self, user: &str) -> anyhow::Result<Session> {
        Ok(self.target.session(&self.token(user), "bench").await?)
    }

    /// Closed loop: each of `p.clients` connections keeps `p.window` Sends in flight on its own
    /// conversation for `p.duration`; counts SendAcks.
    pub async fn throughput(&self, p: &Params) -> anyhow::Result<Counted> {
        let mut sessions = Vec::new();
        for i in 0..p.clients {
            let user = format!("t{i}");
            sessions.push((user.clone(), self.session(&user).await?));
        }
        let deadline = Instant::now() + p.duration;
        let mut tasks = Vec::new();
        for (user, session) in sessions {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let conv = ids::direct_conversation_id(&user, "sink").context("conversation id")?;
                let (send, reader) = open_split(&session.connection, &conv).await?;
                let closed_loop = |_| (Instant::now() < deadline).then(Instant::now);
                let counted = send_until(&user, send, reader, &p, closed_loop).await;
                session.close();
                counted
            }));
        }
        harness::join_counted(tasks).await
    }

    /// Open loop at `rate` messages/s in total: sender `s{i}` sends to receiver `r{i}` (both online);
    /// latency is measured at the receiver from each message's intended send time.
    pub async fn latency(&self, p: &Params, rate: f64) -> anyhow::Result<Delivered> {
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for i in 0..p.clients {
            receivers.push(self.session(&format!("r{i}")).await?);
            senders.push(self.session(&format!("s{i}")).await?);
        }
        let interval = Duration::from_secs_f64(p.clients as f64 / rate.max(1.0));
        let count = (p.duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
        let started = Instant::now();
        let mut receive_tasks = Vec::new();
        for (i, session) in receivers.into_iter().enumerate() {
            let settle = p.duration + WAIT;
            receive_tasks.push(tokio::spawn(async move {
                let sender = format!("s{i}");
                let got = receive_delivers(&session, &sender, count, started + settle).await;
                session.close();
                got
            }));
        }
        let mut send_tasks = Vec::new();
        for (i, session) in senders.into_iter().enumerate() {
            let p = p.clone();
            send_tasks.push(tokio::spawn(async move {
                let user = format!("s{i}");
                let conv = ids::direct_conversation_id(&user, &format!("r{i}"))
                    .context("conversation id")?;
                let (send, reader) = open_split(&session.connection, &conv).await?;
                // Spread the senders' schedules over one interval so they do not fire together.
                let offset = interval.mul_f64(i as f64 / p.clients as f64);
                let sent =
                    send_open_loop(&user, send, reader, &p, started + offset, interval, count)
                        .await;
                session.close();
                sent
            }));
        }
        let mut sent = 0;
        for task in send_tasks {
            sent += task.await??;
        }
        harness::join_receivers(sent, receive_tasks, started).await
    }
}

/// Opens a conversation stream on `connection` and returns its halves.
pub async fn open_split(
    connection: &quinn::Connection,
    conversation: &str,
) -> anyhow::Result<(quinn::SendStream, FrameReader)> {
    let (mut send, recv) = connection.open_bi().await?;
    let open = frame(Kind::Open(Open {
        conversation_id: conversation.to_owned(),
    }));
    send.write_all(&codec::encode(&open)).await?;
    Ok((send, FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE)))
}

/// The next frame within [`WAIT`]; None when the stream ended.
pub async fn next(reader: &mut FrameReader) -> anyhow::Result<Option<Frame>> {
    Ok(tokio::time::timeout(WAIT, reader.next())
        .await
        .context("no frame within the wait")??)
}

fn send_frame(id: String, body: Vec<u8>) -> Bytes {
    codec::encode(&frame(Kind::Send(Send {
        client_msg_id: id,
        body: body.into(),
    })))
}

/// Reads SendAcks (in send order, FERRY-SEND ordering) and returns a permit for each.
async fn read_acks(
    mut reader: FrameReader,
    window: Arc<Semaphore>,
    sent_at: Arc<std::sync::Mutex<VecDeque<Instant>>>,
    mut done: tokio::sync::watch::Receiver<Option<u64>>,
) -> anyhow::Result<Counted> {
    let mut counted = Counted::new();
    loop {
        if let Some(total) = *done.borrow() {
            if counted.acked >= total {
                return Ok(counted);
            }
        }
        let read = tokio::select! {
            f = next(&mut reader) => f?,
            _ = done.changed() => continue,
        };
        match read.and_then(|f| f.kind) {
            Some(Kind::SendAck(_)) => {
                let at = sent_at.lock().expect("not poisoned").pop_front();
                if let Some(at) = at {
                    harness::record(&mut counted.latency, at.elapsed().as_micros() as u64);
                }
                counted.acked += 1;
                window.add_permits(1);
            }
            Some(Kind::Error(e)) => bail!("server refused a Send: code {} {}", e.code, e.message),
            Some(_) => {}
            None => bail!("stream ended after {} acks", counted.acked),
        }
    }
}

/// Sends while `next(sent)` yields a send time, at most `p.window` unacknowledged, then waits for the
/// outstanding acks.
pub async fn send_until(
    user: &str,
    mut send: quinn::SendStream,
    reader: FrameReader,
    p: &Params,
    mut next: impl FnMut(u64) -> Option<Instant>,
) -> anyhow::Result<Counted> {
    let window = Arc::new(Semaphore::new(p.window));
    let sent_at = Arc::new(std::sync::Mutex::new(VecDeque::new()));
    let (done_tx, done_rx) = tokio::sync::watch::channel(None);
    let mut acks = tokio::spawn(read_acks(reader, window.clone(), sent_at.clone(), done_rx));
    let mut sent = 0u64;
    while let Some(at) = next(sent) {
        let Ok(Ok(permit)) = tokio::time::timeout(WAIT, window.acquire()).await else {
            return Err(cause_or(&mut acks, anyhow!("no SendAck within {WAIT:?}")).await);
        };
        permit.forget();
        sent_at.lock().expect("not poisoned").push_back(at);
        let written = send
            .write_all(&send_frame(
                format!("{user}-{sent}"),
                harness::payload(p.body, at),
            ))
            .await;
        if let Err(e) = written {
            return Err(cause_or(&mut acks, anyhow!("send {sent}: {e}")).await);
        }
        sent += 1;
    }
    let _ = done_tx.send(Some(sent));
    let counted = acks.await??;
    let _ = send.finish();
    Ok(counted)
}

/// Why a sender's stream failed: the ack reader's error when it has one, else `echo` (the sender's own
/// error). A refused Send ends the reader, the server then stops the stream once its answers cannot be
/// written, and the sender sees only that echo: a failed write, or no SendAck ever freeing the window.
async fn cause_or(
    acks: &mut tokio::task::JoinHandle<anyhow::Result<Counted>>,
    echo: anyhow::Error,
) -> anyhow::Error {
    // The reader ends with the stream; bounded anyway.
    let cause = tokio::time::timeout(CAUSE_WAIT, &mut *acks).await;
    acks.abort();
    match cause {
        Ok(Ok(Err(cause))) => cause.context(echo.to_string()),
        _ => echo,
    }
}

/// Sends `count` messages, the k-th at `start + k·interval` (or as soon as possible after, stamped
/// with the intended time), with at most `p.window` unacknowledged; returns how many were sent.
async fn send_open_loop(
    user: &str,
    mut send: quinn::SendStream,
    reader: FrameReader,
    p: &Params,
    start: Instant,
    interval: Duration,
    count: u64,
) -> anyhow::Result<u64> {
    let window = Arc::new(Semaphore::new(p.window));
    let sent_at = Arc::new(std::sync::Mutex::new(VecDeque::new()));
    let (done_tx, done_rx) = tokio::sync::watch::channel(None);
    let mut acks = tokio::spawn(read_acks(reader, window.clone(), sent_at.clone(), done_rx));
    for k in 0..count {
        let intended = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(intended.into()).await;
        let Ok(Ok(permit)) = tokio::time::timeout(WAIT, window.acquire()).await else {
            return Err(cause_or(&mut acks, anyhow!("no SendAck within {WAIT:?}")).await);
        };
        permit.forget();
        sent_at.lock().expect("not poisoned").push_back(intended);
        let written = send
            .write_all(&send_frame(
                format!("{user}-{k}"),
                harness::payload(p.body, intended),
            ))
            .await;
        if let Err(e) = written {
            return Err(cause_or(&mut acks, anyhow!("send {k}: {e}")).await);
        }
    }
    let _ = done_tx.send(Some(count));
    acks.await??;
    let _ = send.finish();
    Ok(count)
}

/// Accepts the first server-opened stream on `session` and reads Delivers until `count` messages from
/// `sender` arrived or `until` (others, e.g. membership notices, are skipped); acks cumulatively every
/// 64 messages, as a client would. Returns the count and send→deliver latency.
pub async fn receive_delivers(
    session: &Session,
    sender: &str,
    count: u64,
    until: Instant,
) -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)> {
    let mut hist = harness::histogram();
    let mut got = 0u64;
    let accept = tokio::time::timeout_at(until.into(), session.connection.accept_bi()).await;
    let Ok(Ok((mut send, recv))) = accept else {
        return Ok((0, hist));
    };
    let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
    while got < count {
        let Ok(read) = tokio::time::timeout_at(until.into(), reader.next()).await else {
            break;
        };
        match read?.and_then(|f| f.kind) {
            Some(Kind::Deliver(d)) => {
                if let Some(m) = d.message.filter(|m| m.sender == sender) {
                    if let Some(us) = harness::age_us(&m.body) {
                        harness::record(&mut hist, us);
                    }
                    got += 1;
                    if got % 64 == 0 {
                        let ack = frame(Kind::Ack(Ack { seq: m.seq }));
                        send.write_all(&codec::encode(&ack)).await?;
                    }
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    Ok((got, hist))
}

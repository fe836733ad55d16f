//! Server mode: conformance cases that drive a ferry/1 server over the wire with [`crate::driver`].
//!
//! Every case uses users of its own (`<run>-<case>-<name>`), so cases are independent of each other and
//! of earlier runs against the same server. Limits are discovered from a probe session's `Welcome`.

mod auth;
mod datagrams;
mod draining;
mod framing;
mod groups;
mod handshake;
mod limits;
mod messaging;
mod network;
mod push;
mod revoke;
mod streams;
mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, Limits, Message};
use ferry_protocol::{ids, ErrorCode, Frame};

use crate::driver::{ConvStream, DriverError, Session, Target};
use crate::report::RunReport;
use crate::runner::{run_cases, Case, CaseResult, Verdict};
use crate::{ensure, ensure_eq, fail};

pub use crate::tokens::TokenSource;

/// Settings of a server-mode run.
pub struct ServerConfig {
    /// The server's QUIC address.
    pub addr: std::net::SocketAddr,
    /// PEM file with the CA that signed the server certificate.
    pub ca: PathBuf,
    /// Where tokens come from.
    pub tokens: TokenSource,
    /// Only cases whose name contains this.
    pub filter: Option<String>,
    /// Bound on each case.
    pub case_timeout: Duration,
    /// Cases that would wait longer than this for a server timer are Unsupported.
    pub max_wait: Duration,
    /// The server's conversation stream idle timeout (not announced in ferry/1; spec default 60 s).
    pub stream_idle_timeout: Duration,
    /// Run the cases that need the fault proxy in front of the server.
    pub proxy: bool,
    /// A command (`sh -c`) that makes the server under test drain, for the draining case, which runs
    /// last; None makes that case Unsupported.
    pub drain: Option<String>,
    /// How to revoke a device's tokens on the server (as its operator would); without it the
    /// revocation case is Unsupported.
    pub revoke: Option<Arc<RevokeFn>>,
}

/// Revokes the tokens of (user, device) on the server under test, out of band (FERRY-HARDEN-5).
pub type RevokeFn = dyn Fn(
        String,
        String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
    + Send
    + Sync;

impl ServerConfig {
    /// The configuration of a test run against a server whose tokens the test can mint (its secret, or
    /// its data dir and binary) and whose conversation streams idle out after `stream_idle_timeout`:
    /// every case (the proxy cases too), with generous bounds for a loaded machine;
    /// `FERRY_INTEROP_FILTER` picks cases.
    pub fn for_test_server(
        addr: std::net::SocketAddr,
        ca: PathBuf,
        tokens: TokenSource,
        stream_idle_timeout: Duration,
    ) -> ServerConfig {
        ServerConfig {
            addr,
            ca,
            tokens,
            filter: std::env::var("FERRY_INTEROP_FILTER").ok(),
            case_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(15),
            stream_idle_timeout,
            proxy: true,
            drain: None,
            revoke: None,
        }
    }
}

/// What one case gets.
pub struct ServerCtx {
    /// The server's address.
    pub addr: std::net::SocketAddr,
    /// The CA file.
    pub ca: PathBuf,
    /// A shared client endpoint for ordinary sessions.
    pub target: Target,
    /// The limits the server announced, with zeros replaced by the spec defaults.
    pub limits: Limits,
    /// The probe session's heartbeat interval.
    pub heartbeat_interval_ms: u32,
    /// `Limits.stream_idle_timeout_ms` as announced (0 from a server that does not announce it).
    pub announced_stream_idle_timeout_ms: u32,
    /// See [`ServerConfig::max_wait`].
    pub max_wait: Duration,
    /// See [`ServerConfig::stream_idle_timeout`].
    pub stream_idle_timeout: Duration,
    /// See [`ServerConfig::proxy`].
    pub proxy: bool,
    /// See [`ServerConfig::drain`].
    pub drain: Option<String>,
    /// See [`ServerConfig::revoke`].
    pub revoke: Option<Arc<RevokeFn>>,
    tokens: Arc<TokenSource>,
    prefix: String,
}

impl ServerCtx {
    /// A user id unique to this run and case.
    pub fn user(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// The direct conversation of two (already prefixed) users.
    pub fn direct(&self, a: &str, b: &str) -> String {
        ids::direct_conversation_id(a, b).expect("valid, distinct user ids")
    }

    /// A token for `user` on `device`.
    pub async fn token(&self, user: &str, device: &str) -> Result<String, Verdict> {
        self.tokens.token(user, device).await
    }

    /// A token that has expired (Unsupported with `--token-cmd`).
    pub async fn expired_token(&self, user: &str, device: &str) -> Result<String, Verdict> {
        self.tokens.expired_token(user, device).await
    }

    /// A Ready session of `user` on `device`.
    pub async fn session(&self, user: &str, device: &str) -> Result<Session, Verdict> {
        let token = self.token(user, device).await?;
        self.target
            .session(&token, device)
            .await
            .map_err(|e| Verdict::Fail(format!("session for {user}/{device}: {e}")))
    }

    /// How often a case that keeps sessions open for long sends Heartbeats: half the announced interval.
    pub fn heartbeat_every(&self) -> Duration {
        let interval = if self.heartbeat_interval_ms == 0 {
            25_000
        } else {
            self.heartbeat_interval_ms
        };
        Duration::from_millis(u64::from(interval / 2).max(100))
    }

    /// A client endpoint of its own (for cases that rebind it or need a fresh TLS session cache).
    pub fn fresh_target(&self) -> Result<Target, Verdict> {
        Ok(Target::new(self.addr, &self.ca)?)
    }
}

/// Sends a Heartbeat on every session every `every`, until the task is aborted. Only the sending keeps a
/// session alive (the idle timeout counts what the server receives), so the acks are not waited for: a
/// server slow to answer on a loaded machine must not stretch the beat of the other sessions past the
/// idle timeout. The sessions are the task's own, so their unread acks go with them.
pub async fn heartbeat_forever(mut sessions: Vec<Session>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        for session in &mut sessions {
            let _ = session
                .send_control(frame(Kind::Heartbeat(Default::default())))
                .await;
        }
    }
}

/// Every server-mode case, in run order.
pub fn cases() -> Vec<Case<ServerCtx>> {
    [
        handshake::cases(),
        auth::cases(),
        messaging::cases(),
        sync::cases(),
        groups::cases(),
        streams::cases(),
        framing::cases(),
        datagrams::cases(),
        limits::cases(),
        network::cases(),
        push::cases(),
        revoke::cases(),
        // Last: it drains the server under test.
        draining::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Runs the server-mode suite; `progress` sees each result as it comes.
pub async fn run(
    config: ServerConfig,
    progress: impl FnMut(&crate::report::CaseReport),
) -> anyhow::Result<RunReport> {
    let target = Target::new(config.addr, &config.ca)?;
    let tokens = Arc::new(config.tokens);
    let run_id = format!("i{:08x}", rand::random::<u32>());
    // The probe session learns the limits every case works with.
    let probe_user = format!("{run_id}-probe");
    let probe_token = tokens
        .token(&probe_user, "probe")
        .await
        .map_err(|v| anyhow::anyhow!("minting a token: {v:?}"))?;
    let probe = target
        .session(&probe_token, "probe")
        .await
        .map_err(|e| anyhow::anyhow!("probe session against {}: {e}", config.addr))?;
    let limits = ferry_protocol::limits::effective(probe.welcome.limits.as_ref());
    let heartbeat_interval_ms = probe.welcome.heartbeat_interval_ms;
    let announced_stream_idle_timeout_ms = probe
        .welcome
        .limits
        .as_ref()
        .map_or(0, |l| l.stream_idle_timeout_ms);
    // An announced stream idle timeout is authoritative; the setting covers servers that predate it.
    let stream_idle_timeout = match announced_stream_idle_timeout_ms {
        0 => config.stream_idle_timeout,
        ms => Duration::from_millis(u64::from(ms)),
    };
    probe.close();

    let cases = cases();
    let reports = run_cases(
        &cases,
        config.filter.as_deref(),
        config.case_timeout,
        |index| {
            Arc::new(ServerCtx {
                addr: config.addr,
                ca: config.ca.clone(),
                target: target.clone(),
                limits,
                heartbeat_interval_ms,
                announced_stream_idle_timeout_ms,
                max_wait: config.max_wait,
                stream_idle_timeout,
                proxy: config.proxy,
                drain: config.drain.clone(),
                revoke: config.revoke.clone(),
                tokens: tokens.clone(),
                prefix: format!("{run_id}-{index}"),
            })
        },
        progress,
    )
    .await;
    Ok(RunReport {
        mode: "server".into(),
        target: config.addr.to_string(),
        cases: reports,
    })
}

// ---- helpers shared by the cases ---------------------------------------------------------------------

/// The `Error` frame in `frame`, which must carry `code`.
pub fn expect_error(
    frame: Frame,
    code: ErrorCode,
) -> Result<ferry_protocol::frame::Error, Verdict> {
    match frame.kind {
        Some(Kind::Error(e)) if ErrorCode(e.code) == code => Ok(e),
        Some(Kind::Error(e)) => fail!(
            "expected Error {code:?}, got Error {:?}: {}",
            ErrorCode(e.code),
            e.message
        ),
        other => fail!("expected Error {code:?}, got {other:?}"),
    }
}

/// A refused stream: optional `Error{code}` frames (a reset may overtake them), then a reset with `code`.
pub async fn expect_refused(stream: &mut ConvStream, code: ErrorCode) -> CaseResult {
    loop {
        match stream.next_non_deliver("refusal").await {
            Ok(frame) => {
                expect_error(frame, code)?;
            }
            Err(e) => {
                ensure_eq!(e.wire_code(), Some(code), "stream reset code (error: {e})");
                return Ok(());
            }
        }
    }
}

/// The code the connection gets closed with (bounded wait).
pub async fn close_code(
    connection: &quinn::Connection,
    within: Duration,
) -> Result<Option<ErrorCode>, Verdict> {
    match tokio::time::timeout(within, connection.closed()).await {
        Ok(reason) => Ok(DriverError::Connection(reason).wire_code()),
        Err(_) => fail!("connection still open after {} ms", within.as_millis()),
    }
}

/// Expects the result of a session start to be a refusal with `code`.
pub fn expect_refused_session(result: Result<Session, DriverError>, code: ErrorCode) -> CaseResult {
    match result {
        Ok(_) => fail!("expected the session to be refused with {code:?}, got Welcome"),
        Err(e) => {
            ensure_eq!(e.wire_code(), Some(code), "refusal code (error: {e})");
            Ok(())
        }
    }
}

/// Creates a group and returns its id.
pub async fn create_group(
    session: &mut Session,
    name: &str,
    members: &[&str],
) -> Result<String, Verdict> {
    match session.create_group(name, members).await? {
        Ok((id, seq)) => {
            ensure_eq!(seq, 1, "CreateGroup result seq");
            Ok(id)
        }
        Err(code) => fail!("CreateGroup refused with {code:?}"),
    }
}

/// Sends `count` messages pipelined in windows below max_inflight_sends; returns the SendAck seqs.
pub async fn send_many(
    ctx: &ServerCtx,
    stream: &mut ConvStream,
    prefix: &str,
    count: usize,
) -> Result<Vec<u64>, Verdict> {
    let window = (ctx.limits.max_inflight_sends as usize / 2).clamp(1, 100);
    let mut seqs = Vec::with_capacity(count);
    let mut sent = 0;
    while sent < count {
        let n = window.min(count - sent);
        for i in sent..sent + n {
            stream
                .send_message(&format!("{prefix}-{i}"), format!("body {i}").as_bytes())
                .await?;
        }
        for i in sent..sent + n {
            let ack = stream.expect_send_ack().await?;
            ensure_eq!(
                ack.client_msg_id,
                format!("{prefix}-{i}"),
                "SendAck order on one stream"
            );
            seqs.push(ack.seq);
        }
        sent += n;
    }
    Ok(seqs)
}

/// Pulls every page after `after`; fails if paging does not end.
pub async fn pull_all(stream: &mut ConvStream, mut after: u64) -> Result<Vec<Message>, Verdict> {
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let page = stream.pull(after, 0).await?;
        all.extend(page.messages.iter().cloned());
        after = page.messages.last().map_or(after, |m| m.seq);
        if !page.has_more {
            return Ok(all);
        }
        ensure!(
            !page.messages.is_empty(),
            "PullResult with has_more=true but no messages"
        );
    }
    fail!("paging did not end after 10000 pages")
}

/// Checks that seqs are exactly `1..=n`.
pub fn ensure_gap_free(seqs: &[u64], n: u64, what: &str) -> CaseResult {
    let expected: Vec<u64> = (1..=n).collect();
    ensure_eq!(seqs.to_vec(), expected, "{what}");
    Ok(())
}

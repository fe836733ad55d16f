//! Client mode: tests a ferry/1 client implementation, QUIC-interop-runner style.
//!
//! The runner starts a reference server (the `ferry-server` binary as a separate process, on a temp
//! data dir; `--server-bin`) and, per case, a fault proxy in front of it. It runs the client command under test (`sh -c CMD`) with the case in the
//! environment, judges the outcome from the server side (a driver session of the peer user pulls what
//! arrived) and from the client's stdout, and treats exit status 127 as "case not supported".
//! Cases that need a server misbehaving on purpose (held Welcome, epoch change, refused Sends, a lost
//! answer) run against the [`scripted`] server instead (`scripted_cases/`).
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
//!
//! Layout: this file holds the configuration, the case table and the run; [`reference_server`] runs
//! ferry-server as a process; [`scene`] is what a case works with and starts the client; [`client`] is
//! the client process and its output contract; `judge.rs` reads back what the server stored;
//! `reference_cases.rs` and `scripted_cases/` are the cases; [`scripted`] is the scripted server and
//! [`tls`] makes the certificates the runner needs of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::case;
use crate::reference::{find_binary, SERVER_BINARY};
use crate::report::RunReport;
use crate::runner::{run_cases, Case};

pub mod client;
mod judge;
mod reference_cases;
pub mod reference_server;
pub mod scene;
pub mod scripted;
mod scripted_cases;
pub mod tls;

pub use client::{parse_output, ClientRun, OutputLine};
pub use reference_server::ReferenceServer;
pub use scene::{ClientCtx, Scene};

use reference_cases::{goaway, lossy, receive, reconnect, replaced, send, untrusted};

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
    /// The `ferry-server` binary run as the reference server; None = next to the runner, else on PATH.
    pub server_bin: Option<PathBuf>,
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
    let bin = find_binary(config.server_bin.as_deref(), SERVER_BINARY)?;
    let server = Arc::new(ReferenceServer::start(&bin).await?);
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

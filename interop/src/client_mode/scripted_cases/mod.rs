//! Client cases against the scripted server ([`super::scripted`]): the client-side rules that only a
//! server behaving unusually can expose (held Welcome, epoch change, odd tokens, refused Sends, a lost
//! CreateGroup answer, datagrams for strangers, a short QUIC idle timeout).
//!
//! Layout: this file holds the helpers every scripted case uses (connect, serve from the model, judge
//! what was handed over); the cases are grouped by what they exercise: `connections.rs` (held Welcome,
//! 0-RTT after GoAway, keep-alive), `sync.rs` (epochs, server times, sync tokens, crash after Sync,
//! history window), `sends.rs` (lost CreateGroup answer, send limits), `datagrams.rs`.

mod connections;
mod datagrams;
mod sends;
mod sync;

pub use connections::{early, keepalive, zero_rtt};
pub use datagrams::datagrams;
pub use sends::{group_lost, limits};
pub use sync::{epoch, history, server_time, sync_crash, tokens};

use std::time::Duration;

use ferry_proxy::Faults;
use tokio::time::Instant;

use super::{ClientCtx, ClientRun, OutputLine, Scene};
use crate::client_mode::scripted::{Conn, Event, Model, ScriptedServer};
use crate::runner::{CaseResult, Verdict};
use crate::{ensure, fail};

/// How long the scripted server holds Welcome back, so that a client that sends too early is seen.
const HOLD: Duration = Duration::from_millis(800);
/// Bound on waiting for the client's next connection.
const CONNECT: Duration = Duration::from_secs(15);
/// How long a case waits for the client to do the next expected thing.
const STEP: Duration = Duration::from_secs(10);

/// A scripted server, the client's scene (through a clean proxy to it) and an empty model.
async fn scripted(
    ctx: &ClientCtx,
    quic_idle: Duration,
) -> Result<(ScriptedServer, Scene, Model), Verdict> {
    let server = ScriptedServer::start(quic_idle)?;
    let mut scene = ctx.scene_to(server.addr, Faults::none()).await?;
    scene.ca = Some(server.ca.clone());
    let model = Model::new(&scene.user, &scene.device);
    Ok((server, scene, model))
}

/// Starts the client for `testcase`, accepts its connection and welcomes it at once.
async fn connect(
    ctx: &ClientCtx,
    server: &ScriptedServer,
    scene: &Scene,
    testcase: &str,
    model: &Model,
) -> Result<(ClientRun, Conn), Verdict> {
    let mut client = ctx.spawn(testcase, scene).await?;
    let mut conn = server.accept(&mut client, CONNECT).await?;
    conn.greet(model.welcome(), Duration::ZERO).await?;
    Ok((client, conn))
}

/// Answers everything from the model until the client exits (bounded); returns its output.
async fn serve_until_exit(
    conn: &mut Conn,
    model: &mut Model,
    mut client: ClientRun,
    within: Duration,
) -> Result<Vec<OutputLine>, Verdict> {
    let deadline = Instant::now() + within;
    while let Some(event) = next_until_exit(conn, &mut client, deadline).await {
        if !serve_unless_closed(conn, model, &event).await? {
            break;
        }
    }
    client.finish(Duration::from_secs(5)).await
}

/// Answers `event` from the model; `Ok(false)` when the answer could not be written because the client
/// closed the connection meanwhile (to exit, or to move to a new connection): that is no failure, and
/// what the client stored is judged at the end.
async fn serve_unless_closed(
    conn: &mut Conn,
    model: &mut Model,
    event: &Event,
) -> Result<bool, Verdict> {
    match conn.serve(model, event).await {
        Ok(()) => Ok(true),
        Err(_) if conn.connection.close_reason().is_some() => Ok(false),
        Err(verdict) => Err(verdict),
    }
}

/// The client's next event on `conn`; None once the client exited or `deadline` passed.
async fn next_until_exit(
    conn: &mut Conn,
    client: &mut ClientRun,
    deadline: Instant,
) -> Option<Event> {
    while client.exit_code().is_none() && Instant::now() < deadline {
        if let Some(event) = conn.next(Duration::from_millis(100)).await {
            return Some(event);
        }
    }
    None
}

/// Answers from the model until `done(model)` holds; fails after `within`.
async fn serve_until(
    conn: &mut Conn,
    model: &mut Model,
    within: Duration,
    what: &str,
    done: impl Fn(&Model) -> bool,
) -> CaseResult {
    let deadline = Instant::now() + within;
    while !done(model) {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "{what} did not happen within {} s",
            within.as_secs()
        );
        match conn.next(left).await {
            Some(Event::Closed(why)) => {
                fail!("the client closed the connection ({why}) before {what}")
            }
            Some(event) => conn.serve(model, &event).await?,
            None => {}
        }
    }
    Ok(())
}

/// Answers from the model for `period` (the client syncing, or taking its time).
async fn serve_for(conn: &mut Conn, model: &mut Model, period: Duration) -> CaseResult {
    let until = Instant::now() + period;
    while let Some(event) = conn
        .next(until.saturating_duration_since(Instant::now()))
        .await
    {
        conn.serve(model, &event).await?;
    }
    Ok(())
}

/// (seq, body) of the messages the client handed over in `conversation`, in output order.
fn received(lines: &[OutputLine], conversation: &str) -> Vec<(u64, String)> {
    lines
        .iter()
        .filter_map(|l| match l {
            OutputLine::Received {
                conversation: c,
                seq,
                body,
                ..
            } if c == conversation => Some((*seq, body.clone())),
            _ => None,
        })
        .collect()
}

/// (seq, body) of the model's messages of `conversation` with seq in `range`.
fn expected(
    model: &Model,
    conversation: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<(u64, String)> {
    model.conversations[conversation]
        .messages
        .range(range)
        .map(|(seq, m)| (*seq, String::from_utf8_lossy(&m.body).into_owned()))
        .collect()
}

fn acked(model: &Model, conversation: &str, seq: u64) -> bool {
    model.acked.get(conversation).copied().unwrap_or(0) >= seq
}

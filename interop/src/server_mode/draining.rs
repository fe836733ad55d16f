//! Draining (FERRY-GOAWAY-1): the one case that stops the server under test, so it runs last and only
//! with `--drain-cmd`, a command that makes the server drain (for ferry-server: SIGTERM).

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::frame::frame::Kind;
use ferry_protocol::ErrorCode;

use super::{close_code, ServerCtx};
use crate::driver::{hello, DriverError, Session};
use crate::runner::{Case, CaseResult};
use crate::{case, ensure, ensure_eq, fail, unsupported};

/// How long a new connection to a draining server may go unanswered: far below any handshake or idle
/// timeout, so a server that leaves it to time out fails, while a loaded machine still passes.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![case!(
        ["FERRY-GOAWAY-1"],
        "while draining: Ready sessions get GoAway(SHUTTING_DOWN) and a new connection is answered (CONNECTION_REFUSED, or a close with SHUTTING_DOWN), not left to time out (runs last: it drains the server)",
        new_connection_while_draining
    )]
}

/// Issue 12 finding 10: a draining ferry-server stopped accepting and left new connections to time out
/// in the handshake, so clients could not tell it from a dead one. That fails here at `ANSWER_WITHIN`.
async fn new_connection_while_draining(ctx: Arc<ServerCtx>) -> CaseResult {
    let Some(drain) = ctx.drain.clone() else {
        unsupported!("needs --drain-cmd: a command that makes the server under test drain");
    };
    let user = ctx.user("alice");
    let mut ready = ctx.session(&user, "phone").await?;
    // The token of the late connection is minted before the drain: the token source may be the
    // server's own binary, which need not work once the server is going away.
    let token = ctx.token(&user, "laptop").await?;
    run_drain_command(&drain).await?;

    // GOAWAY-1's first half: the Ready session is told, with SHUTTING_DOWN.
    match ready.next_control("GoAway after the drain command").await {
        Ok(frame) => match frame.kind {
            Some(Kind::GoAway(g)) => ensure_eq!(
                ErrorCode(g.code),
                ErrorCode::SHUTTING_DOWN,
                "GoAway.code sent while draining"
            ),
            other => fail!("expected GoAway(SHUTTING_DOWN) on the control stream, got {other:?}"),
        },
        Err(e) => fail!("no GoAway on the Ready session after the drain command: {e}"),
    }

    // The second half: a connection attempt now is answered one way or the other.
    let target = ctx.fresh_target()?;
    let connecting = target
        .endpoint
        .connect(ctx.addr, "localhost")
        .map_err(DriverError::from)?;
    let connection = match tokio::time::timeout(ANSWER_WITHIN, connecting).await {
        Err(_) => fail!(
            "a new connection to the draining server got no answer within {} ms: a client cannot tell draining from dead",
            ANSWER_WITHIN.as_millis()
        ),
        Ok(Err(quinn::ConnectionError::ConnectionClosed(close))) => {
            ensure_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED,
                "QUIC close code of the refused handshake"
            );
            return Ok(());
        }
        Ok(Err(e)) => fail!("expected CONNECTION_REFUSED or a completed handshake, got {e}"),
        Ok(Ok(connection)) => connection,
    };
    // The handshake completed: the server must close with SHUTTING_DOWN, never serve a session.
    let started = tokio::time::timeout(
        ANSWER_WITHIN,
        Session::start(connection.clone(), hello(&token, "laptop")),
    )
    .await;
    match started {
        Ok(Ok(_)) => fail!("the draining server accepted a new session (Welcome)"),
        Ok(Err(DriverError::Unexpected { got, .. })) => {
            // A GoAway instead of Welcome is allowed; the close must follow.
            ensure!(
                matches!(&got.kind, Some(Kind::GoAway(g)) if ErrorCode(g.code) == ErrorCode::SHUTTING_DOWN),
                "expected GoAway(SHUTTING_DOWN) or a close instead of Welcome, got {got:?}"
            );
        }
        Ok(Err(_)) | Err(_) => {}
    }
    ensure_eq!(
        close_code(&connection, ANSWER_WITHIN).await?,
        Some(ErrorCode::SHUTTING_DOWN),
        "close code of a connection accepted while draining"
    );
    Ok(())
}

/// Runs the drain command (`sh -c`), bounded; it must exit 0.
async fn run_drain_command(cmd: &str) -> CaseResult {
    let mut command = tokio::process::Command::new("sh");
    command.arg("-c").arg(cmd);
    crate::tokens::run_bounded(command, "--drain-cmd").await?;
    Ok(())
}

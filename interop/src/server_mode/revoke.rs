//! Token revocation (spec section 17.1): a revocation closes the device's live session with
//! TOKEN_REVOKED and its token is refused from then on, while the user's other devices stay connected.
//! Revoking is an operator's act, out of band: the case runs only when the run was given a way to
//! revoke ([`super::ServerConfig::revoke`]; `ferry-interop server --data-dir` uses `ferry-server
//! revoke`). Durability across restarts and the client's side (FERRY-HARDEN-7) are checked by
//! `tests/tests/server_revoke.rs`.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::frame::frame::Kind;
use ferry_protocol::ErrorCode;

use super::ServerCtx;
use crate::driver::DriverError;
use crate::runner::{Case, CaseResult, Verdict};
use crate::{case, ensure_eq, fail, unsupported};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![case!(
        ["FERRY-HARDEN-5", "FERRY-HARDEN-6"],
        "a revoked device's session is closed with TOKEN_REVOKED and its token refused; its other devices stay",
        revoked
    )]
}

/// How long the server may take to close the revoked session ("at once", on a loaded machine).
const CLOSE_WAIT: Duration = Duration::from_secs(10);

async fn revoked(ctx: Arc<ServerCtx>) -> CaseResult {
    let Some(revoke) = ctx.revoke.clone() else {
        unsupported!(
            "no way to revoke tokens on this server (give the run a data dir or a revoke hook)"
        );
    };
    let user = ctx.user("stolen");
    let token = ctx.token(&user, "phone").await?;
    let mut phone = ctx.target.session(&token, "phone").await?;
    let mut laptop = ctx.session(&user, "laptop").await?;
    revoke(user.clone(), "phone".into())
        .await
        .map_err(|e| Verdict::Fail(format!("revoking failed: {e}")))?;
    match tokio::time::timeout(CLOSE_WAIT, phone.next_control("Error{TOKEN_REVOKED}")).await {
        Err(_) => fail!("the revoked session was still open after {CLOSE_WAIT:?}"),
        Ok(Ok(frame)) => match frame.kind {
            Some(Kind::Error(e)) => {
                ensure_eq!(
                    ErrorCode(e.code),
                    ErrorCode::TOKEN_REVOKED,
                    "the Error's code"
                )
            }
            other => fail!("expected Error{{TOKEN_REVOKED}}, got {other:?}"),
        },
        // The close may overtake the Error frame; its code must then say it.
        Ok(Err(e)) => ensure_eq!(
            e.wire_code(),
            Some(ErrorCode::TOKEN_REVOKED),
            "the close code"
        ),
    }
    let closed = tokio::time::timeout(CLOSE_WAIT, phone.connection.closed())
        .await
        .map_err(|_| Verdict::Fail("the revoked session's connection stayed open".into()))?;
    ensure_eq!(
        DriverError::Connection(closed).wire_code(),
        Some(ErrorCode::TOKEN_REVOKED),
        "the connection close code"
    );
    match ctx.target.session(&token, "phone").await {
        Ok(_) => fail!("the revoked token was accepted again"),
        Err(e) => ensure_eq!(
            e.wire_code(),
            Some(ErrorCode::UNAUTHENTICATED),
            "a login with the revoked token"
        ),
    }
    laptop
        .heartbeat(0)
        .await
        .map_err(|e| Verdict::Fail(format!("the user's other device lost its session: {e}")))?;
    laptop.close();
    Ok(())
}

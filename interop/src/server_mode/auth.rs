//! Authentication failures and the one-session-per-device rule.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::frame::frame::Kind;
use ferry_protocol::ErrorCode;

use super::{close_code, expect_refused_session, ServerCtx};
use crate::runner::{Case, CaseResult};
use crate::{case, ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(
            ["FERRY-AUTH-2", "FERRY-AUTH-1"],
            "a forged token is refused with UNAUTHENTICATED",
            forged
        ),
        case!(
            ["FERRY-AUTH-2"],
            "an expired token is refused with UNAUTHENTICATED",
            expired
        ),
        case!(
            ["FERRY-AUTH-2"],
            "a token for another device is refused with UNAUTHENTICATED",
            wrong_device
        ),
        case!(
            ["FERRY-AUTH-2"],
            "an empty token is refused with UNAUTHENTICATED",
            missing
        ),
        case!(
            ["FERRY-SEC-2", "FERRY-ERR-2"],
            "UNAUTHENTICATED refusals do not tell which check failed, nor echo the token",
            opaque_refusals
        ),
        case!(
            [
                "FERRY-AUTH-7",
                "FERRY-AUTH-8",
                "FERRY-GOAWAY-4",
                "FERRY-AUTH-6"
            ],
            "a second session of one device replaces the first (GoAway + SESSION_REPLACED)",
            replaced
        ),
    ]
}

async fn forged(ctx: Arc<ServerCtx>) -> CaseResult {
    let mut token = ctx.token(&ctx.user("alice"), "phone").await?;
    // Change the last character: for any signed format this breaks the signature.
    let last = token.pop().unwrap_or('A');
    token.push(if last == 'A' { 'B' } else { 'A' });
    expect_refused_session(
        ctx.target.session(&token, "phone").await,
        ErrorCode::UNAUTHENTICATED,
    )
}

async fn expired(ctx: Arc<ServerCtx>) -> CaseResult {
    let token = ctx.expired_token(&ctx.user("alice"), "phone").await?;
    expect_refused_session(
        ctx.target.session(&token, "phone").await,
        ErrorCode::UNAUTHENTICATED,
    )
}

async fn wrong_device(ctx: Arc<ServerCtx>) -> CaseResult {
    let token = ctx.token(&ctx.user("alice"), "phone").await?;
    expect_refused_session(
        ctx.target.session(&token, "laptop").await,
        ErrorCode::UNAUTHENTICATED,
    )
}

async fn missing(ctx: Arc<ServerCtx>) -> CaseResult {
    expect_refused_session(
        ctx.target.session("", "phone").await,
        ErrorCode::UNAUTHENTICATED,
    )
}

/// The human-readable texts of a refusal: the Error frame's message and the close reason, if they arrived.
fn refusal_texts(
    result: Result<crate::driver::Session, crate::driver::DriverError>,
) -> Result<Vec<String>, crate::runner::Verdict> {
    use crate::driver::DriverError;
    match result {
        Ok(_) => fail!("expected UNAUTHENTICATED, got Welcome"),
        Err(DriverError::Unexpected { got, .. }) => match got.kind {
            Some(Kind::Error(e)) => Ok(vec![e.message]),
            other => fail!("expected Error, got {other:?}"),
        },
        Err(DriverError::Connection(quinn::ConnectionError::ApplicationClosed(close))) => {
            Ok(vec![String::from_utf8_lossy(&close.reason).into_owned()])
        }
        Err(e) => fail!("expected UNAUTHENTICATED, got {e}"),
    }
}

async fn opaque_refusals(ctx: Arc<ServerCtx>) -> CaseResult {
    let user = ctx.user("alice");
    let good = ctx.token(&user, "phone").await?;
    let mut forged = good.clone();
    let last = forged.pop().unwrap_or('A');
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let mut attempts = vec![("forged", forged), ("for another device", good.clone())];
    if let Ok(expired) = ctx.expired_token(&user, "laptop").await {
        attempts.push(("expired", expired));
    }
    let mut seen: Vec<(&str, Vec<String>)> = Vec::new();
    for (what, token) in attempts {
        let device = if what == "forged" { "phone" } else { "laptop" };
        let texts = refusal_texts(ctx.target.session(&token, device).await)?;
        for text in &texts {
            ensure!(
                !text.contains(&token) && !text.contains(&good),
                "the refusal of a {what} token echoes the token: {text:?}"
            );
        }
        seen.push((what, texts));
    }
    let first = &seen[0].1;
    for (what, texts) in &seen[1..] {
        ensure!(
            texts == first,
            "refusal texts differ by failed check: {} {first:?} vs {what} {texts:?}",
            seen[0].0
        );
    }
    Ok(())
}

async fn replaced(ctx: Arc<ServerCtx>) -> CaseResult {
    let user = ctx.user("alice");
    let mut first = ctx.session(&user, "phone").await?;
    let second = ctx.session(&user, "phone").await?;
    match first.next_control("GoAway").await {
        Ok(frame) => match frame.kind {
            Some(Kind::GoAway(g)) => ensure_eq!(
                ErrorCode(g.code),
                ErrorCode::SESSION_REPLACED,
                "GoAway.code"
            ),
            other => fail!("expected GoAway{{SESSION_REPLACED}}, got {other:?}"),
        },
        Err(e) => fail!("expected GoAway{{SESSION_REPLACED}} before the close, got {e}"),
    }
    ensure_eq!(
        close_code(&first.connection, Duration::from_secs(5)).await?,
        Some(ErrorCode::SESSION_REPLACED),
        "close code of the replaced session"
    );
    // The new session works.
    let mut second = second;
    second.heartbeat(0).await?;
    Ok(())
}

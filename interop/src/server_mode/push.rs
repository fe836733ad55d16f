//! Offline push (spec section 18): capability negotiation and the register / list / unregister frames.
//! What the server then POSTs needs an HTTP receiver the server is allowed to call; that part is
//! checked by `tests/tests/server_push.rs` (see coverage-extra.toml).

use std::sync::Arc;

use ferry_protocol::frame::{
    frame::Kind, Hello, PushList, PushPolicy, PushRegister, PushUnregister,
};
use ferry_protocol::frames::CAPABILITY_PUSH;
use ferry_protocol::ErrorCode;

use super::ServerCtx;
use crate::driver::{hello, Session};
use crate::runner::{Case, CaseResult, Verdict};
use crate::{case, ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![case!(
        ["FERRY-PUSH-1", "FERRY-PUSH-2", "FERRY-PUSH-3"],
        "push is acknowledged only when asked; its requests are answered by request_id, bad endpoints refused, nothing stored",
        frames
    )]
}

fn register(endpoint: &str, policy: i32) -> impl FnOnce(u64) -> Kind {
    let endpoint = endpoint.to_owned();
    move |request_id| {
        Kind::PushRegister(PushRegister {
            request_id,
            endpoint,
            app_token: String::new(),
            policy,
        })
    }
}

async fn frames(ctx: Arc<ServerCtx>) -> CaseResult {
    let user = ctx.user("pusher");
    // Not asked: never acknowledged.
    let plain = ctx.session(&user, "plain").await?;
    ensure!(
        plain.welcome.capabilities.is_empty(),
        "Welcome.capabilities {:?} without Hello.capabilities",
        plain.welcome.capabilities
    );
    plain.close();

    let token = ctx.token(&user, "phone").await?;
    let asking = Hello {
        capabilities: vec![CAPABILITY_PUSH.into(), "no-such-capability".into()],
        ..hello(&token, "phone")
    };
    let connection = ctx.fresh_target()?.connect().await?;
    let mut session = Session::start(connection, asking).await?;
    let caps = &session.welcome.capabilities;
    ensure!(
        caps.iter().all(|c| c == CAPABILITY_PUSH),
        "Welcome.capabilities {caps:?} acknowledges something the client did not ask for"
    );
    let list = |request_id| Kind::PushList(PushList { request_id });
    if caps.is_empty() {
        // Push is off: a server implementing section 18 refuses politely, by request_id.
        match session.push_request(list).await? {
            Err(ErrorCode::FORBIDDEN) => {}
            other => fail!("PushList on a server without push: {other:?}, expected FORBIDDEN"),
        }
        session.heartbeat(0).await?; // the connection survived
        return Ok(());
    }

    let answer = session.push_request(register("not a url", 0)).await?;
    ensure_eq!(
        answer.err(),
        Some(ErrorCode::INVALID_ARGUMENT),
        "malformed endpoint"
    );
    let answer = session
        .push_request(register("https://push.example/up", 77))
        .await?;
    ensure_eq!(
        answer.err(),
        Some(ErrorCode::INVALID_ARGUMENT),
        "unknown policy"
    );
    // A link-local address (the cloud metadata one) no sane allowlist names.
    let metadata = "https://169.254.169.254/latest/meta-data/";
    let answer = session
        .push_request(register(metadata, PushPolicy::None as i32))
        .await?;
    ensure_eq!(
        answer.err(),
        Some(ErrorCode::FORBIDDEN),
        "link-local endpoint"
    );
    let listed = session
        .push_request(list)
        .await?
        .map_err(|c| Verdict::Fail(format!("PushList refused with {c:?}")))?;
    ensure!(
        listed.registrations.is_empty(),
        "refused registrations were stored: {:?}",
        listed.registrations
    );
    let unregister = |request_id| Kind::PushUnregister(PushUnregister { request_id });
    let removed = session.push_request(unregister).await?.map_err(|c| {
        Verdict::Fail(format!(
            "PushUnregister without a registration refused with {c:?}"
        ))
    })?;
    ensure!(
        !removed.removed,
        "PushUnregister removed a registration that never existed"
    );
    session.close();
    Ok(())
}

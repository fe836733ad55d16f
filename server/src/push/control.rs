//! PushRegister, PushUnregister and PushList on the control stream (FERRY-PUSH-1, -2): each answered
//! with PushResult or `Error{code, request_id}`.

use std::time::SystemTime;

use ferry_protocol::codec::frame;
use ferry_protocol::frame::{frame::Kind, PushPolicy, PushRegister, PushRegistration, PushResult};
use ferry_protocol::{frames, unix_millis, ErrorCode, Frame};
use ferry_store::PushRecord;

use super::endpoint::Refused;
use super::Push;
use crate::connection::Conn;
use crate::errors::{from_store, Refusal};

/// Longest `app_token`, bytes.
const MAX_APP_TOKEN: usize = 4096;

/// Answers one push request; `kind` must be PushRegister, PushUnregister or PushList.
pub(crate) async fn handle(conn: &Conn, kind: Kind) -> Frame {
    let request_id = match &kind {
        Kind::PushRegister(r) => r.request_id,
        Kind::PushUnregister(r) => r.request_id,
        Kind::PushList(r) => r.request_id,
        _ => 0,
    };
    let answer = match (&conn.shared.push, kind) {
        (None, _) => Err(Refusal::new(
            ErrorCode::FORBIDDEN,
            "push notifications are not enabled on this server",
        )),
        (Some(push), Kind::PushRegister(register)) => register_device(conn, push, register).await,
        (Some(_), Kind::PushUnregister(_)) => unregister_device(conn).await,
        (Some(_), Kind::PushList(_)) => list(conn).await,
        (Some(_), _) => Err(Refusal::new(
            ErrorCode::PROTOCOL_ERROR,
            "not a push request",
        )),
    };
    match answer {
        Ok(result) => frame(Kind::PushResult(PushResult {
            request_id,
            ..result
        })),
        Err(r) => frames::request_error(request_id, r.code, r.reason),
    }
}

async fn register_device(
    conn: &Conn,
    push: &Push,
    register: PushRegister,
) -> Result<PushResult, Refusal> {
    let invalid = |reason: String| Refusal::new(ErrorCode::INVALID_ARGUMENT, reason);
    match PushPolicy::try_from(register.policy) {
        Err(_) => return Err(invalid(format!("unknown push policy {}", register.policy))),
        // Never the body unless the app asks for it and the server allows it (FERRY-PUSH-8).
        Ok(PushPolicy::Body) if !conn.shared.settings.push.allow_body => {
            return Err(Refusal::new(
                ErrorCode::FORBIDDEN,
                "this server does not put message bodies in pushes (policy body)",
            ))
        }
        Ok(_) => {}
    }
    if register.app_token.len() > MAX_APP_TOKEN {
        return Err(invalid(format!(
            "app_token longer than {MAX_APP_TOKEN} bytes"
        )));
    }
    let endpoint = if push.gateway {
        // The server never fetches the endpoint in gateway mode; the gateway needs the token.
        if register.app_token.is_empty() {
            return Err(invalid(
                "app_token is required: this server posts to a push gateway".into(),
            ));
        }
        if !register.endpoint.is_empty() {
            super::endpoint::parse_http_url(&register.endpoint)
                .map_err(|e| invalid(format!("endpoint is not a valid URL: {e}")))?;
        }
        register.endpoint
    } else {
        match push.allow.check(&register.endpoint) {
            Ok(url) => url.to_string(),
            Err(e @ Refused::Malformed(_)) => return Err(invalid(e.to_string())),
            Err(e) => return Err(Refusal::new(ErrorCode::FORBIDDEN, e.to_string())),
        }
    };
    let record = PushRecord {
        endpoint,
        app_token: register.app_token,
        policy: register.policy,
        registered_ms: unix_millis(SystemTime::now()),
    };
    let (user, device) = (&conn.session.user, &conn.session.device);
    conn.shared
        .store
        .put_push(user, device, record.clone())
        .await
        .map_err(from_store)?;
    Ok(PushResult {
        registrations: vec![registration(device, &record)],
        ..Default::default()
    })
}

async fn unregister_device(conn: &Conn) -> Result<PushResult, Refusal> {
    let (user, device) = (&conn.session.user, &conn.session.device);
    let removed = conn
        .shared
        .store
        .delete_push(user, device)
        .await
        .map_err(from_store)?;
    Ok(PushResult {
        removed,
        ..Default::default()
    })
}

async fn list(conn: &Conn) -> Result<PushResult, Refusal> {
    let all = conn
        .shared
        .store
        .push_registrations(&conn.session.user)
        .await
        .map_err(from_store)?;
    Ok(PushResult {
        registrations: all.iter().map(|(d, r)| registration(d, r)).collect(),
        ..Default::default()
    })
}

/// The wire form of a stored registration; the app_token stays on the server.
fn registration(device: &str, record: &PushRecord) -> PushRegistration {
    PushRegistration {
        device_id: device.to_owned(),
        endpoint: record.endpoint.clone(),
        policy: record.policy,
        registered_ms: record.registered_ms,
        has_app_token: !record.app_token.is_empty(),
    }
}

//! Offline push (spec section 18): register this device's push endpoint so the server can wake it when
//! it has no connection. After a push wakes the app, connecting is enough: the client Syncs and Pulls
//! as on every reconnect.
//!
//! Push requests need a Welcomed session whose server acknowledged the `push` capability
//! (FERRY-EXT-3); otherwise they fail at once instead of waiting.

use tokio::sync::oneshot;

use ferry_protocol::frame;

use crate::client::{Client, Request};
use crate::error::ClientError;

/// What a notification may reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushPolicy {
    /// Wake-up only: conversation, seq, epoch, counts (the default).
    #[default]
    None,
    /// Also the sender's user id and the group name.
    Preview,
    /// Preview plus the newest message's body, if the server allows it (else the registration is
    /// refused with FORBIDDEN).
    Body,
}

impl PushPolicy {
    pub(crate) fn wire(self) -> i32 {
        match self {
            PushPolicy::None => frame::PushPolicy::None as i32,
            PushPolicy::Preview => frame::PushPolicy::Preview as i32,
            PushPolicy::Body => frame::PushPolicy::Body as i32,
        }
    }

    fn from_wire(value: i32) -> Option<PushPolicy> {
        match frame::PushPolicy::try_from(value).ok()? {
            frame::PushPolicy::None => Some(PushPolicy::None),
            frame::PushPolicy::Preview => Some(PushPolicy::Preview),
            frame::PushPolicy::Body => Some(PushPolicy::Body),
        }
    }
}

impl std::str::FromStr for PushPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(PushPolicy::None),
            "preview" => Ok(PushPolicy::Preview),
            "body" => Ok(PushPolicy::Body),
            _ => Err(format!(
                "unknown push policy {s:?} (expected none, preview or body)"
            )),
        }
    }
}

/// One device's push registration, as the server reports it (the app token is never echoed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRegistration {
    /// The device.
    pub device_id: String,
    /// Where the server POSTs (empty when it posts to a push gateway).
    pub endpoint: String,
    /// The content policy; `None` for a value this client does not know.
    pub policy: Option<PushPolicy>,
    /// When it was registered, ms since the Unix epoch (server clock).
    pub registered_ms: u64,
    /// Whether an app token is stored with it.
    pub has_app_token: bool,
}

impl From<frame::PushRegistration> for PushRegistration {
    fn from(r: frame::PushRegistration) -> Self {
        PushRegistration {
            device_id: r.device_id,
            endpoint: r.endpoint,
            policy: PushPolicy::from_wire(r.policy),
            registered_ms: r.registered_ms,
            has_app_token: r.has_app_token,
        }
    }
}

/// A push request, turned into its frame by the core.
#[derive(Debug)]
pub(crate) enum PushOp {
    Register {
        endpoint: String,
        app_token: String,
        policy: PushPolicy,
    },
    Unregister,
    List,
}

impl Client {
    /// Registers this device's push endpoint (replacing an earlier one); returns the stored
    /// registration. `app_token` is opaque to the server and copied into every notification (a push
    /// gateway's pushkey); it may be empty when the server posts to device endpoints.
    pub async fn register_push(
        &self,
        endpoint: &str,
        app_token: &str,
        policy: PushPolicy,
    ) -> Result<PushRegistration, ClientError> {
        let op = PushOp::Register {
            endpoint: endpoint.to_owned(),
            app_token: app_token.to_owned(),
            policy,
        };
        let result = self.push(op).await?;
        result
            .registrations
            .into_iter()
            .next()
            .map(Into::into)
            .ok_or_else(|| ClientError::Protocol {
                code: ferry_protocol::ErrorCode::PROTOCOL_ERROR,
                message: "PushResult without the registration".into(),
            })
    }

    /// Removes this device's push registration; whether there was one.
    pub async fn unregister_push(&self) -> Result<bool, ClientError> {
        Ok(self.push(PushOp::Unregister).await?.removed)
    }

    /// The push registrations of every device of this user.
    pub async fn list_push(&self) -> Result<Vec<PushRegistration>, ClientError> {
        let result = self.push(PushOp::List).await?;
        Ok(result.registrations.into_iter().map(Into::into).collect())
    }

    async fn push(&self, op: PushOp) -> Result<frame::PushResult, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::Push { op, reply }).await?;
        rx.await.map_err(|_| ClientError::Closed)?
    }
}

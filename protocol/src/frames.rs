//! Small constructors for the frames every role sends (Error, GoAway), so handlers and conformance
//! cases read as protocol, not as struct literals; and [`kind_name`] for logs and messages.

use crate::codec::frame;
use crate::frame::{frame::Kind, Error, GoAway};
use crate::{ErrorCode, Frame};

/// An `Error` frame.
pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
    frame(Kind::Error(Error {
        code: code.0,
        message: message.into(),
        ..Error::default()
    }))
}

/// An `Error` answering a request with `request_id`.
pub fn request_error(request_id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    frame(Kind::Error(Error {
        code: code.0,
        message: message.into(),
        request_id,
        ..Error::default()
    }))
}

/// An `Error` answering the Send with `client_msg_id`.
pub fn send_error(
    client_msg_id: String,
    code: ErrorCode,
    message: impl Into<String>,
    retry_after_ms: u64,
) -> Frame {
    frame(Kind::Error(Error {
        code: code.0,
        message: message.into(),
        client_msg_id,
        retry_after_ms,
        ..Error::default()
    }))
}

/// A `GoAway`.
pub fn go_away(code: ErrorCode, reason: &str) -> Frame {
    frame(Kind::GoAway(GoAway {
        code: code.0,
        reason: reason.to_owned(),
        endpoints: Vec::new(),
    }))
}

/// The `Hello.capabilities` / `Welcome.capabilities` name of the offline-push frames (spec section 18,
/// FERRY-EXT-3).
pub const CAPABILITY_PUSH: &str = "push";

/// The name of a frame's kind, for logs and error messages.
pub fn kind_name(frame: &Frame) -> &'static str {
    match &frame.kind {
        Some(Kind::Hello(_)) => "Hello",
        Some(Kind::Welcome(_)) => "Welcome",
        Some(Kind::Heartbeat(_)) => "Heartbeat",
        Some(Kind::HeartbeatAck(_)) => "HeartbeatAck",
        Some(Kind::Sync(_)) => "Sync",
        Some(Kind::SyncResult(_)) => "SyncResult",
        Some(Kind::MarkRead(_)) => "MarkRead",
        Some(Kind::CreateGroup(_)) => "CreateGroup",
        Some(Kind::AddMember(_)) => "AddMember",
        Some(Kind::RemoveMember(_)) => "RemoveMember",
        Some(Kind::GroupResult(_)) => "GroupResult",
        Some(Kind::GoAway(_)) => "GoAway",
        Some(Kind::Open(_)) => "Open",
        Some(Kind::Send(_)) => "Send",
        Some(Kind::SendAck(_)) => "SendAck",
        Some(Kind::Deliver(_)) => "Deliver",
        Some(Kind::Ack(_)) => "Ack",
        Some(Kind::Pull(_)) => "Pull",
        Some(Kind::PullResult(_)) => "PullResult",
        Some(Kind::Typing(_)) => "Typing",
        Some(Kind::Presence(_)) => "Presence",
        Some(Kind::Error(_)) => "Error",
        Some(Kind::PushRegister(_)) => "PushRegister",
        Some(Kind::PushUnregister(_)) => "PushUnregister",
        Some(Kind::PushList(_)) => "PushList",
        Some(Kind::PushResult(_)) => "PushResult",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_fill_the_fields_a_receiver_matches_on() {
        let Some(Kind::Error(e)) = send_error("m1".into(), ErrorCode::RATE_LIMITED, "slow", 7).kind
        else {
            panic!("an Error frame")
        };
        assert_eq!(
            (e.code, e.client_msg_id.as_str(), e.retry_after_ms),
            (ErrorCode::RATE_LIMITED.0, "m1", 7)
        );
        let Some(Kind::Error(e)) = request_error(9, ErrorCode::NOT_FOUND, "x").kind else {
            panic!("an Error frame")
        };
        assert_eq!((e.request_id, e.code), (9, ErrorCode::NOT_FOUND.0));
        let away = go_away(ErrorCode::SHUTTING_DOWN, "bye");
        assert_eq!(kind_name(&away), "GoAway");
        assert_eq!(kind_name(&error(ErrorCode::INTERNAL, "")), "Error");
        assert_eq!(kind_name(&Frame { kind: None }), "unknown");
    }
}

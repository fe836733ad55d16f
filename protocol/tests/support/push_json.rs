//! The vector JSON shape of the offline-push frames (spec section 18), both directions. A child of
//! `frame_json`, whose `Obj` and `Fields` builders it uses; like there, `to_json` destructures every
//! message without `..` so a new field in spec/ferry.proto breaks the build until it is handled here.

use ferry_protocol::frame::{
    frame::Kind, PushList, PushPolicy, PushRegister, PushRegistration, PushResult, PushUnregister,
};
use serde_json::Value;

use super::{Fields, Obj};

fn policy_name(v: i32) -> Option<&'static str> {
    PushPolicy::try_from(v).ok().map(|e| e.as_str_name())
}

fn policy_value(name: &str) -> Option<i32> {
    PushPolicy::from_str_name(name).map(|e| e as i32)
}

fn registration_to_json(r: &PushRegistration) -> Value {
    let PushRegistration {
        device_id,
        endpoint,
        policy,
        registered_ms,
        has_app_token,
    } = r;
    Obj::default()
        .str("device_id", device_id)
        .str("endpoint", endpoint)
        .enumeration("policy", *policy, policy_name(*policy))
        .num("registered_ms", *registered_ms)
        .bool("has_app_token", *has_app_token)
        .done()
}

fn registration_from_json(context: &str, v: &Value) -> PushRegistration {
    let mut f = Fields::new(context, v);
    let r = PushRegistration {
        device_id: f.str("device_id"),
        endpoint: f.str("endpoint"),
        policy: f.enumeration("policy", policy_value),
        registered_ms: f.u64("registered_ms"),
        has_app_token: f.bool("has_app_token"),
    };
    f.done();
    r
}

/// The oneof field name and fields of a push frame; panics on any other kind.
pub(super) fn to_json(kind: &Kind) -> (&'static str, Value) {
    match kind {
        Kind::PushRegister(PushRegister {
            request_id,
            endpoint,
            app_token,
            policy,
        }) => (
            "push_register",
            Obj::default()
                .num("request_id", *request_id)
                .str("endpoint", endpoint)
                .str("app_token", app_token)
                .enumeration("policy", *policy, policy_name(*policy))
                .done(),
        ),
        Kind::PushUnregister(PushUnregister { request_id }) => (
            "push_unregister",
            Obj::default().num("request_id", *request_id).done(),
        ),
        Kind::PushList(PushList { request_id }) => (
            "push_list",
            Obj::default().num("request_id", *request_id).done(),
        ),
        Kind::PushResult(PushResult {
            request_id,
            registrations,
            removed,
        }) => (
            "push_result",
            Obj::default()
                .num("request_id", *request_id)
                .msgs(
                    "registrations",
                    registrations.iter().map(registration_to_json).collect(),
                )
                .bool("removed", *removed)
                .done(),
        ),
        other => panic!("not a push frame: {other:?}"),
    }
}

/// The push frame of oneof field name `kind`; panics on any other name.
pub(super) fn from_json(kind: &str, f: &mut Fields) -> Kind {
    match kind {
        "push_register" => Kind::PushRegister(PushRegister {
            request_id: f.u64("request_id"),
            endpoint: f.str("endpoint"),
            app_token: f.str("app_token"),
            policy: f.enumeration("policy", policy_value),
        }),
        "push_unregister" => Kind::PushUnregister(PushUnregister {
            request_id: f.u64("request_id"),
        }),
        "push_list" => Kind::PushList(PushList {
            request_id: f.u64("request_id"),
        }),
        "push_result" => Kind::PushResult(PushResult {
            request_id: f.u64("request_id"),
            registrations: f.msgs("registrations", registration_from_json),
            removed: f.bool("removed"),
        }),
        other => panic!("not a push frame kind: {other:?}"),
    }
}

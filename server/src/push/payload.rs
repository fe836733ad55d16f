//! The JSON bodies of the HTTP contract (spec section 18.3): one for a device endpoint, one for a push
//! gateway. Under the default policy they carry no names and never a body; only the `body` policy,
//! which the server must allow, adds the newest message's body (FERRY-PUSH-8).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ferry_protocol::frame::PushPolicy;
use serde_json::{json, Map, Value};

use super::coalesce::Update;

/// What a notification says besides the update itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts<'a> {
    /// `head - read cursor` of the conversation for the recipient, never negative.
    pub(crate) unread: u64,
    /// The group name (preview and body policies only; empty for direct conversations).
    pub(crate) conversation_name: &'a str,
    /// The newest message's body (body policy only): `Some(None)` when it is over the size bound.
    pub(crate) body: Option<Option<&'a [u8]>>,
}

/// Whether the registration asked for names: `preview`, and `body`, which includes it.
pub(crate) fn preview(update: &Update) -> bool {
    let policy = update.registration.policy;
    policy == PushPolicy::Preview as i32 || policy == PushPolicy::Body as i32
}

/// Whether the registration asked for the message body.
pub(crate) fn wants_body(update: &Update) -> bool {
    update.registration.policy == PushPolicy::Body as i32
}

/// The fields both bodies share.
fn common(update: &Update, counts: Counts<'_>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ferry".into(), json!(1));
    m.insert("conversation".into(), json!(&*update.conversation));
    m.insert("seq".into(), json!(update.seq));
    m.insert("epoch".into(), json!(update.epoch));
    if preview(update) {
        m.insert("sender".into(), json!(&*update.sender));
        if !counts.conversation_name.is_empty() {
            m.insert("conversation_name".into(), json!(counts.conversation_name));
        }
    }
    match counts.body {
        Some(Some(body)) => {
            m.insert("body".into(), json!(STANDARD.encode(body)));
        }
        Some(None) => {
            m.insert("body_omitted".into(), json!(true));
        }
        None => {}
    }
    m
}

/// The body POSTed to a device's own endpoint.
pub(crate) fn device_body(device: &str, update: &Update, counts: Counts<'_>) -> Vec<u8> {
    let mut m = common(update, counts);
    m.insert("device_id".into(), json!(device));
    m.insert("unread".into(), json!(counts.unread));
    m.insert("messages".into(), json!(update.messages));
    if !update.registration.app_token.is_empty() {
        m.insert("app_token".into(), json!(update.registration.app_token));
    }
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// The body POSTed to the push gateway (shaped like the Matrix push gateway's `notify`).
pub(crate) fn gateway_body(device: &str, update: &Update, counts: Counts<'_>) -> Vec<u8> {
    let mut m = common(update, counts);
    m.insert(
        "counts".into(),
        json!({ "unread": counts.unread, "messages": update.messages }),
    );
    let mut target = Map::new();
    target.insert("device_id".into(), json!(device));
    target.insert("pushkey".into(), json!(update.registration.app_token));
    if !update.registration.endpoint.is_empty() {
        target.insert("endpoint".into(), json!(update.registration.endpoint));
    }
    m.insert("devices".into(), json!([Value::Object(target)]));
    serde_json::to_vec(&json!({ "notification": Value::Object(m) })).unwrap_or_default()
}

/// Whether a gateway's 2xx answer rejects `pushkey` (`{"rejected": [...]}`): the device is gone.
pub(crate) fn gateway_rejects(answer: &[u8], pushkey: &str) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(answer) else {
        return false;
    };
    value["rejected"]
        .as_array()
        .is_some_and(|r| r.iter().any(|k| k.as_str() == Some(pushkey)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_store::PushRecord;

    fn update(policy: PushPolicy) -> Update {
        Update {
            conversation: "g:00ff".into(),
            seq: 9,
            epoch: 3,
            sender: "alice".into(),
            messages: 4,
            registration: PushRecord {
                endpoint: "https://push.example/up/1".into(),
                app_token: "tok".into(),
                policy: policy as i32,
                registered_ms: 1,
            },
        }
    }

    const COUNTS: Counts<'static> = Counts {
        unread: 6,
        conversation_name: "team",
        body: None,
    };

    #[test]
    fn the_default_policy_reveals_no_names() {
        let body: Value =
            serde_json::from_slice(&device_body("phone", &update(PushPolicy::None), COUNTS))
                .unwrap();
        assert_eq!(
            body,
            json!({"ferry": 1, "conversation": "g:00ff", "seq": 9, "epoch": 3, "device_id": "phone",
                   "unread": 6, "messages": 4, "app_token": "tok"})
        );
    }

    #[test]
    fn preview_adds_the_sender_and_group_name() {
        let body: Value =
            serde_json::from_slice(&device_body("phone", &update(PushPolicy::Preview), COUNTS))
                .unwrap();
        assert_eq!(body["sender"], "alice");
        assert_eq!(body["conversation_name"], "team");
    }

    #[test]
    fn the_body_policy_carries_the_body_or_says_it_was_left_out() {
        let with = Counts {
            body: Some(Some(b"hi there")),
            ..COUNTS
        };
        let body: Value =
            serde_json::from_slice(&device_body("phone", &update(PushPolicy::Body), with)).unwrap();
        assert_eq!(body["body"], "aGkgdGhlcmU=");
        assert_eq!(body["sender"], "alice");
        assert!(body.get("body_omitted").is_none());
        let over = Counts {
            body: Some(None),
            ..COUNTS
        };
        let body: Value =
            serde_json::from_slice(&gateway_body("phone", &update(PushPolicy::Body), over))
                .unwrap();
        assert_eq!(body["notification"]["body_omitted"], true);
        assert!(body["notification"].get("body").is_none());
    }

    #[test]
    fn the_gateway_body_names_the_device_and_its_pushkey() {
        let body: Value =
            serde_json::from_slice(&gateway_body("phone", &update(PushPolicy::None), COUNTS))
                .unwrap();
        let n = &body["notification"];
        assert_eq!(n["counts"], json!({"unread": 6, "messages": 4}));
        assert_eq!(n["devices"][0]["pushkey"], "tok");
        assert_eq!(n["devices"][0]["device_id"], "phone");
        assert!(n.get("sender").is_none());
        assert!(gateway_rejects(br#"{"rejected":["tok"]}"#, "tok"));
        assert!(!gateway_rejects(br#"{"rejected":[]}"#, "tok"));
        assert!(!gateway_rejects(b"not json", "tok"));
    }
}

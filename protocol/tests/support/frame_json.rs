//! Hand-written conversion between [`Frame`] and the language-neutral JSON shape of the test vectors
//! (spec/vectors/README.md): `{"kind": "<oneof field name>", "fields": {...}}`.
//!
//! prost types do not derive serde, and the vector shape is ours anyway (bytes as `<name>_hex`, enums by
//! their proto value name), so both directions are spelled out field by field. The `to_json` side
//! destructures every message without `..`, so adding a field to spec/ferry.proto breaks the build here
//! until the field is handled; `from_json` rejects unknown keys, so a typo in a vector fails loudly.
//!
//! Default values (0, "", false, empty bytes, empty lists, absent messages) are omitted by `to_json` and
//! may be omitted in vectors, as in proto3.

use std::collections::BTreeSet;

use bytes::Bytes;
use ferry_protocol::frame::{
    frame::Kind, Ack, AddMember, ConversationKind, ConversationState, CreateGroup, Deliver, Error,
    GoAway, GroupResult, Heartbeat, HeartbeatAck, Hello, Limits, MarkRead, MembershipAction,
    MembershipChange, Message, MessageKind, Open, Presence, PresenceStatus, Pull, PullResult,
    RemoveMember, Send, SendAck, Sync, SyncResult, Typing, Welcome,
};
use ferry_protocol::Frame;
use serde_json::{json, Map, Value};

// The offline-push frames live in their own file; as a child module it shares `Obj` and `Fields`.
#[path = "push_json.rs"]
mod push_json;

// ---------------------------------------------------------------------------------------------------
// Frame -> JSON

/// Builds a JSON object, leaving out default values.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn num(mut self, name: &str, value: impl Into<u64>) -> Self {
        let value = value.into();
        if value != 0 {
            self.0.insert(name.into(), json!(value));
        }
        self
    }

    fn bool(mut self, name: &str, value: bool) -> Self {
        if value {
            self.0.insert(name.into(), json!(true));
        }
        self
    }

    fn str(mut self, name: &str, value: &str) -> Self {
        if !value.is_empty() {
            self.0.insert(name.into(), json!(value));
        }
        self
    }

    fn bytes(mut self, name: &str, value: &[u8]) -> Self {
        if !value.is_empty() {
            self.0
                .insert(format!("{name}_hex"), json!(hex::encode(value)));
        }
        self
    }

    fn strs(mut self, name: &str, values: &[String]) -> Self {
        if !values.is_empty() {
            self.0.insert(name.into(), json!(values));
        }
        self
    }

    /// Known enum values by name; values this version does not know (proto3 enums are open) as numbers.
    fn enumeration(mut self, name: &str, value: i32, to_name: Option<&'static str>) -> Self {
        if value != 0 {
            let v = to_name.map_or_else(|| json!(value), |n| json!(n));
            self.0.insert(name.into(), v);
        }
        self
    }

    fn msg(mut self, name: &str, value: Option<Value>) -> Self {
        if let Some(value) = value {
            self.0.insert(name.into(), value);
        }
        self
    }

    fn msgs(mut self, name: &str, values: Vec<Value>) -> Self {
        if !values.is_empty() {
            self.0.insert(name.into(), Value::Array(values));
        }
        self
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn conversation_kind_name(v: i32) -> Option<&'static str> {
    ConversationKind::try_from(v).ok().map(|e| e.as_str_name())
}
fn message_kind_name(v: i32) -> Option<&'static str> {
    MessageKind::try_from(v).ok().map(|e| e.as_str_name())
}
fn membership_action_name(v: i32) -> Option<&'static str> {
    MembershipAction::try_from(v).ok().map(|e| e.as_str_name())
}
fn presence_status_name(v: i32) -> Option<&'static str> {
    PresenceStatus::try_from(v).ok().map(|e| e.as_str_name())
}

fn limits_to_json(l: &Limits) -> Value {
    let Limits {
        max_frame_size,
        max_inflight_sends,
        max_open_streams,
        max_pull_page,
        send_rate_per_sec,
        send_burst,
        max_body_size,
        idle_timeout_ms,
        recent_window,
        typing_rate_per_sec,
        max_sync_page,
        stream_idle_timeout_ms,
    } = l;
    Obj::default()
        .num("max_frame_size", *max_frame_size)
        .num("max_inflight_sends", *max_inflight_sends)
        .num("max_open_streams", *max_open_streams)
        .num("max_pull_page", *max_pull_page)
        .num("send_rate_per_sec", *send_rate_per_sec)
        .num("send_burst", *send_burst)
        .num("max_body_size", *max_body_size)
        .num("idle_timeout_ms", *idle_timeout_ms)
        .num("recent_window", *recent_window)
        .num("typing_rate_per_sec", *typing_rate_per_sec)
        .num("max_sync_page", *max_sync_page)
        .num("stream_idle_timeout_ms", *stream_idle_timeout_ms)
        .done()
}

fn state_to_json(s: &ConversationState) -> Value {
    let ConversationState {
        conversation_id,
        kind,
        head_seq,
        epoch,
        acked_seq,
        read_seq,
        unread_count,
        member,
        first_seq,
        name,
    } = s;
    Obj::default()
        .str("conversation_id", conversation_id)
        .enumeration("kind", *kind, conversation_kind_name(*kind))
        .num("head_seq", *head_seq)
        .num("epoch", *epoch)
        .num("acked_seq", *acked_seq)
        .num("read_seq", *read_seq)
        .num("unread_count", *unread_count)
        .bool("member", *member)
        .num("first_seq", *first_seq)
        .str("name", name)
        .done()
}

fn membership_to_json(m: &MembershipChange) -> Value {
    let MembershipChange {
        action,
        actor,
        users,
        name,
    } = m;
    Obj::default()
        .enumeration("action", *action, membership_action_name(*action))
        .str("actor", actor)
        .strs("users", users)
        .str("name", name)
        .done()
}

fn message_to_json(m: &Message) -> Value {
    let Message {
        seq,
        sender,
        sender_device,
        client_msg_id,
        body,
        server_time_ms,
        kind,
        membership,
    } = m;
    Obj::default()
        .num("seq", *seq)
        .str("sender", sender)
        .str("sender_device", sender_device)
        .str("client_msg_id", client_msg_id)
        .bytes("body", body)
        .num("server_time_ms", *server_time_ms)
        .enumeration("kind", *kind, message_kind_name(*kind))
        .msg("membership", membership.as_ref().map(membership_to_json))
        .done()
}

/// The oneof field name and the fields of a frame kind.
fn kind_to_json(kind: &Kind) -> (&'static str, Value) {
    match kind {
        Kind::Hello(Hello {
            version,
            token,
            device_id,
            client_name,
            capabilities,
            device_class,
        }) => (
            "hello",
            Obj::default()
                .num("version", *version)
                .str("token", token)
                .str("device_id", device_id)
                .str("client_name", client_name)
                .strs("capabilities", capabilities)
                .str("device_class", device_class)
                .done(),
        ),
        Kind::Welcome(Welcome {
            user_id,
            session_id,
            node_id,
            heartbeat_interval_ms,
            limits,
            server_time_ms,
            store_epoch,
            endpoints,
            capabilities,
        }) => (
            "welcome",
            Obj::default()
                .str("user_id", user_id)
                .str("session_id", session_id)
                .str("node_id", node_id)
                .num("heartbeat_interval_ms", *heartbeat_interval_ms)
                .msg("limits", limits.as_ref().map(limits_to_json))
                .num("server_time_ms", *server_time_ms)
                .num("store_epoch", *store_epoch)
                .strs("endpoints", endpoints)
                .strs("capabilities", capabilities)
                .done(),
        ),
        Kind::Heartbeat(Heartbeat { sync_token }) => (
            "heartbeat",
            Obj::default().num("sync_token", *sync_token).done(),
        ),
        Kind::HeartbeatAck(HeartbeatAck {
            changed,
            sync_token,
            has_more,
            server_time_ms,
        }) => (
            "heartbeat_ack",
            Obj::default()
                .msgs("changed", changed.iter().map(state_to_json).collect())
                .num("sync_token", *sync_token)
                .bool("has_more", *has_more)
                .num("server_time_ms", *server_time_ms)
                .done(),
        ),
        Kind::Sync(Sync {
            request_id,
            since_token,
            limit,
        }) => (
            "sync",
            Obj::default()
                .num("request_id", *request_id)
                .num("since_token", *since_token)
                .num("limit", *limit)
                .done(),
        ),
        Kind::SyncResult(SyncResult {
            request_id,
            conversations,
            next_token,
            has_more,
        }) => (
            "sync_result",
            Obj::default()
                .num("request_id", *request_id)
                .msgs(
                    "conversations",
                    conversations.iter().map(state_to_json).collect(),
                )
                .num("next_token", *next_token)
                .bool("has_more", *has_more)
                .done(),
        ),
        Kind::MarkRead(MarkRead {
            conversation_id,
            seq,
            request_id,
        }) => (
            "mark_read",
            Obj::default()
                .str("conversation_id", conversation_id)
                .num("seq", *seq)
                .num("request_id", *request_id)
                .done(),
        ),
        Kind::CreateGroup(CreateGroup {
            request_id,
            name,
            members,
        }) => (
            "create_group",
            Obj::default()
                .num("request_id", *request_id)
                .str("name", name)
                .strs("members", members)
                .done(),
        ),
        Kind::AddMember(AddMember {
            request_id,
            conversation_id,
            user_id,
        }) => (
            "add_member",
            Obj::default()
                .num("request_id", *request_id)
                .str("conversation_id", conversation_id)
                .str("user_id", user_id)
                .done(),
        ),
        Kind::RemoveMember(RemoveMember {
            request_id,
            conversation_id,
            user_id,
        }) => (
            "remove_member",
            Obj::default()
                .num("request_id", *request_id)
                .str("conversation_id", conversation_id)
                .str("user_id", user_id)
                .done(),
        ),
        Kind::GroupResult(GroupResult {
            request_id,
            conversation_id,
            seq,
        }) => (
            "group_result",
            Obj::default()
                .num("request_id", *request_id)
                .str("conversation_id", conversation_id)
                .num("seq", *seq)
                .done(),
        ),
        Kind::GoAway(GoAway {
            code,
            reason,
            endpoints,
        }) => (
            "go_away",
            Obj::default()
                .num("code", *code)
                .str("reason", reason)
                .strs("endpoints", endpoints)
                .done(),
        ),
        Kind::Open(Open { conversation_id }) => (
            "open",
            Obj::default()
                .str("conversation_id", conversation_id)
                .done(),
        ),
        Kind::Send(Send {
            client_msg_id,
            body,
        }) => (
            "send",
            Obj::default()
                .str("client_msg_id", client_msg_id)
                .bytes("body", body)
                .done(),
        ),
        Kind::SendAck(SendAck {
            client_msg_id,
            seq,
            server_time_ms,
            duplicate,
        }) => (
            "send_ack",
            Obj::default()
                .str("client_msg_id", client_msg_id)
                .num("seq", *seq)
                .num("server_time_ms", *server_time_ms)
                .bool("duplicate", *duplicate)
                .done(),
        ),
        Kind::Deliver(Deliver { message, epoch }) => (
            "deliver",
            Obj::default()
                .msg("message", message.as_ref().map(message_to_json))
                .num("epoch", *epoch)
                .done(),
        ),
        Kind::Ack(Ack { seq }) => ("ack", Obj::default().num("seq", *seq).done()),
        Kind::Pull(Pull { after_seq, limit }) => (
            "pull",
            Obj::default()
                .num("after_seq", *after_seq)
                .num("limit", *limit)
                .done(),
        ),
        Kind::PullResult(PullResult {
            messages,
            head_seq,
            has_more,
            epoch,
        }) => (
            "pull_result",
            Obj::default()
                .msgs("messages", messages.iter().map(message_to_json).collect())
                .num("head_seq", *head_seq)
                .bool("has_more", *has_more)
                .num("epoch", *epoch)
                .done(),
        ),
        Kind::Typing(Typing {
            conversation_id,
            user_id,
            device_id,
            active,
        }) => (
            "typing",
            Obj::default()
                .str("conversation_id", conversation_id)
                .str("user_id", user_id)
                .str("device_id", device_id)
                .bool("active", *active)
                .done(),
        ),
        Kind::Presence(Presence {
            conversation_id,
            user_id,
            status,
        }) => (
            "presence",
            Obj::default()
                .str("conversation_id", conversation_id)
                .str("user_id", user_id)
                .enumeration("status", *status, presence_status_name(*status))
                .done(),
        ),
        Kind::Error(Error {
            code,
            message,
            request_id,
            client_msg_id,
            retry_after_ms,
        }) => (
            "error",
            Obj::default()
                .num("code", *code)
                .str("message", message)
                .num("request_id", *request_id)
                .str("client_msg_id", client_msg_id)
                .num("retry_after_ms", *retry_after_ms)
                .done(),
        ),
        Kind::PushRegister(_)
        | Kind::PushUnregister(_)
        | Kind::PushList(_)
        | Kind::PushResult(_) => push_json::to_json(kind),
    }
}

/// `{"kind": ..., "fields": {...}}`. A frame without a kind has no vector form (it is an error on the wire).
pub fn to_json(frame: &Frame) -> Value {
    let kind = frame.kind.as_ref().expect("a frame without a kind");
    let (name, fields) = kind_to_json(kind);
    json!({ "kind": name, "fields": fields })
}

// ---------------------------------------------------------------------------------------------------
// JSON -> Frame

/// Reads the fields of one JSON object; [`Fields::done`] fails on keys that were never asked for.
struct Fields<'a> {
    context: String,
    map: &'a Map<String, Value>,
    read: BTreeSet<String>,
}

impl<'a> Fields<'a> {
    fn new(context: &str, value: &'a Value) -> Self {
        let map = value
            .as_object()
            .unwrap_or_else(|| panic!("{context}: expected an object, got {value}"));
        Fields {
            context: context.to_owned(),
            map,
            read: BTreeSet::new(),
        }
    }

    fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.read.insert(key.to_owned());
        self.map.get(key)
    }

    fn fail(&self, key: &str, what: &str) -> ! {
        panic!("{}.{key}: expected {what}", self.context)
    }

    fn u64(&mut self, key: &str) -> u64 {
        match self.get(key) {
            None => 0,
            Some(v) => v
                .as_u64()
                .unwrap_or_else(|| self.fail(key, "an unsigned integer")),
        }
    }

    fn u32(&mut self, key: &str) -> u32 {
        u32::try_from(self.u64(key)).unwrap_or_else(|_| self.fail(key, "a u32"))
    }

    fn bool(&mut self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(v) => v.as_bool().unwrap_or_else(|| self.fail(key, "a boolean")),
        }
    }

    fn str(&mut self, key: &str) -> String {
        match self.get(key) {
            None => String::new(),
            Some(v) => v
                .as_str()
                .unwrap_or_else(|| self.fail(key, "a string"))
                .to_owned(),
        }
    }

    fn bytes(&mut self, key: &str) -> Bytes {
        let key = format!("{key}_hex");
        let hex = self.str(&key);
        Bytes::from(hex::decode(&hex).unwrap_or_else(|_| self.fail(&key, "hex digits")))
    }

    fn strs(&mut self, key: &str) -> Vec<String> {
        self.array(key)
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| self.fail(key, "an array of strings"))
                    .to_owned()
            })
            .collect()
    }

    fn array(&mut self, key: &str) -> &'a [Value] {
        match self.get(key) {
            None => &[],
            Some(v) => v
                .as_array()
                .unwrap_or_else(|| self.fail(key, "an array"))
                .as_slice(),
        }
    }

    /// An enum by value name, or by number for values this version does not name.
    fn enumeration(&mut self, key: &str, from_name: fn(&str) -> Option<i32>) -> i32 {
        match self.get(key) {
            None => 0,
            Some(Value::String(name)) => {
                from_name(name).unwrap_or_else(|| self.fail(key, "a known enum value name"))
            }
            Some(v) => v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or_else(|| self.fail(key, "an enum name or i32")),
        }
    }

    fn msg<T>(&mut self, key: &str, parse: fn(&str, &Value) -> T) -> Option<T> {
        let context = format!("{}.{key}", self.context);
        self.get(key).map(|v| parse(&context, v))
    }

    fn msgs<T>(&mut self, key: &str, parse: fn(&str, &Value) -> T) -> Vec<T> {
        let context = format!("{}.{key}", self.context);
        self.array(key)
            .iter()
            .enumerate()
            .map(|(i, v)| parse(&format!("{context}[{i}]"), v))
            .collect()
    }

    fn done(self) {
        let unknown: Vec<_> = self
            .map
            .keys()
            .filter(|k| !self.read.contains(*k))
            .collect();
        assert!(
            unknown.is_empty(),
            "{}: unknown keys {unknown:?}",
            self.context
        );
    }
}

fn conversation_kind_value(name: &str) -> Option<i32> {
    ConversationKind::from_str_name(name).map(|e| e as i32)
}
fn message_kind_value(name: &str) -> Option<i32> {
    MessageKind::from_str_name(name).map(|e| e as i32)
}
fn membership_action_value(name: &str) -> Option<i32> {
    MembershipAction::from_str_name(name).map(|e| e as i32)
}
fn presence_status_value(name: &str) -> Option<i32> {
    PresenceStatus::from_str_name(name).map(|e| e as i32)
}

fn limits_from_json(context: &str, v: &Value) -> Limits {
    let mut f = Fields::new(context, v);
    let limits = Limits {
        max_frame_size: f.u32("max_frame_size"),
        max_inflight_sends: f.u32("max_inflight_sends"),
        max_open_streams: f.u32("max_open_streams"),
        max_pull_page: f.u32("max_pull_page"),
        send_rate_per_sec: f.u32("send_rate_per_sec"),
        send_burst: f.u32("send_burst"),
        max_body_size: f.u32("max_body_size"),
        idle_timeout_ms: f.u32("idle_timeout_ms"),
        recent_window: f.u32("recent_window"),
        typing_rate_per_sec: f.u32("typing_rate_per_sec"),
        max_sync_page: f.u32("max_sync_page"),
        stream_idle_timeout_ms: f.u32("stream_idle_timeout_ms"),
    };
    f.done();
    limits
}

fn state_from_json(context: &str, v: &Value) -> ConversationState {
    let mut f = Fields::new(context, v);
    let state = ConversationState {
        conversation_id: f.str("conversation_id"),
        kind: f.enumeration("kind", conversation_kind_value),
        head_seq: f.u64("head_seq"),
        epoch: f.u64("epoch"),
        acked_seq: f.u64("acked_seq"),
        read_seq: f.u64("read_seq"),
        unread_count: f.u64("unread_count"),
        member: f.bool("member"),
        first_seq: f.u64("first_seq"),
        name: f.str("name"),
    };
    f.done();
    state
}

fn membership_from_json(context: &str, v: &Value) -> MembershipChange {
    let mut f = Fields::new(context, v);
    let change = MembershipChange {
        action: f.enumeration("action", membership_action_value),
        actor: f.str("actor"),
        users: f.strs("users"),
        name: f.str("name"),
    };
    f.done();
    change
}

fn message_from_json(context: &str, v: &Value) -> Message {
    let mut f = Fields::new(context, v);
    let message = Message {
        seq: f.u64("seq"),
        sender: f.str("sender"),
        sender_device: f.str("sender_device"),
        client_msg_id: f.str("client_msg_id"),
        body: f.bytes("body"),
        server_time_ms: f.u64("server_time_ms"),
        kind: f.enumeration("kind", message_kind_value),
        membership: f.msg("membership", membership_from_json),
    };
    f.done();
    message
}

fn kind_from_json(kind: &str, f: &mut Fields) -> Kind {
    match kind {
        "hello" => Kind::Hello(Hello {
            version: f.u32("version"),
            token: f.str("token"),
            device_id: f.str("device_id"),
            client_name: f.str("client_name"),
            capabilities: f.strs("capabilities"),
            device_class: f.str("device_class"),
        }),
        "welcome" => Kind::Welcome(Welcome {
            user_id: f.str("user_id"),
            session_id: f.str("session_id"),
            node_id: f.str("node_id"),
            heartbeat_interval_ms: f.u32("heartbeat_interval_ms"),
            limits: f.msg("limits", limits_from_json),
            server_time_ms: f.u64("server_time_ms"),
            store_epoch: f.u64("store_epoch"),
            endpoints: f.strs("endpoints"),
            capabilities: f.strs("capabilities"),
        }),
        "heartbeat" => Kind::Heartbeat(Heartbeat {
            sync_token: f.u64("sync_token"),
        }),
        "heartbeat_ack" => Kind::HeartbeatAck(HeartbeatAck {
            changed: f.msgs("changed", state_from_json),
            sync_token: f.u64("sync_token"),
            has_more: f.bool("has_more"),
            server_time_ms: f.u64("server_time_ms"),
        }),
        "sync" => Kind::Sync(Sync {
            request_id: f.u64("request_id"),
            since_token: f.u64("since_token"),
            limit: f.u32("limit"),
        }),
        "sync_result" => Kind::SyncResult(SyncResult {
            request_id: f.u64("request_id"),
            conversations: f.msgs("conversations", state_from_json),
            next_token: f.u64("next_token"),
            has_more: f.bool("has_more"),
        }),
        "mark_read" => Kind::MarkRead(MarkRead {
            conversation_id: f.str("conversation_id"),
            seq: f.u64("seq"),
            request_id: f.u64("request_id"),
        }),
        "create_group" => Kind::CreateGroup(CreateGroup {
            request_id: f.u64("request_id"),
            name: f.str("name"),
            members: f.strs("members"),
        }),
        "add_member" => Kind::AddMember(AddMember {
            request_id: f.u64("request_id"),
            conversation_id: f.str("conversation_id"),
            user_id: f.str("user_id"),
        }),
        "remove_member" => Kind::RemoveMember(RemoveMember {
            request_id: f.u64("request_id"),
            conversation_id: f.str("conversation_id"),
            user_id: f.str("user_id"),
        }),
        "group_result" => Kind::GroupResult(GroupResult {
            request_id: f.u64("request_id"),
            conversation_id: f.str("conversation_id"),
            seq: f.u64("seq"),
        }),
        "go_away" => Kind::GoAway(GoAway {
            code: f.u32("code"),
            reason: f.str("reason"),
            endpoints: f.strs("endpoints"),
        }),
        "open" => Kind::Open(Open {
            conversation_id: f.str("conversation_id"),
        }),
        "send" => Kind::Send(Send {
            client_msg_id: f.str("client_msg_id"),
            body: f.bytes("body"),
        }),
        "send_ack" => Kind::SendAck(SendAck {
            client_msg_id: f.str("client_msg_id"),
            seq: f.u64("seq"),
            server_time_ms: f.u64("server_time_ms"),
            duplicate: f.bool("duplicate"),
        }),
        "deliver" => Kind::Deliver(Deliver {
            message: f.msg("message", message_from_json),
            epoch: f.u64("epoch"),
        }),
        "ack" => Kind::Ack(Ack { seq: f.u64("seq") }),
        "pull" => Kind::Pull(Pull {
            after_seq: f.u64("after_seq"),
            limit: f.u32("limit"),
        }),
        "pull_result" => Kind::PullResult(PullResult {
            messages: f.msgs("messages", message_from_json),
            head_seq: f.u64("head_seq"),
            has_more: f.bool("has_more"),
            epoch: f.u64("epoch"),
        }),
        "typing" => Kind::Typing(Typing {
            conversation_id: f.str("conversation_id"),
            user_id: f.str("user_id"),
            device_id: f.str("device_id"),
            active: f.bool("active"),
        }),
        "presence" => Kind::Presence(Presence {
            conversation_id: f.str("conversation_id"),
            user_id: f.str("user_id"),
            status: f.enumeration("status", presence_status_value),
        }),
        "error" => Kind::Error(Error {
            code: f.u32("code"),
            message: f.str("message"),
            request_id: f.u64("request_id"),
            client_msg_id: f.str("client_msg_id"),
            retry_after_ms: f.u64("retry_after_ms"),
        }),
        "push_register" | "push_unregister" | "push_list" | "push_result" => {
            push_json::from_json(kind, f)
        }
        other => panic!("{}: unknown frame kind {other:?}", f.context),
    }
}

/// Parses `{"kind": ..., "fields": {...}}`; panics with the JSON path on anything unexpected.
pub fn from_json(context: &str, value: &Value) -> Frame {
    let mut outer = Fields::new(context, value);
    let kind = outer.str("kind");
    let empty = json!({});
    let fields_value = outer.get("fields").unwrap_or(&empty);
    outer.done();
    let mut fields = Fields::new(&format!("{context}.fields"), fields_value);
    let kind = kind_from_json(&kind, &mut fields);
    fields.done();
    Frame { kind: Some(kind) }
}

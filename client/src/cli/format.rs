//! What `ferry` prints: one line per message, receipt, typing signal or status, readable by default and
//! JSON (one object per line) with `--json`. System messages read as words ("alice created the group
//! \"crew\" with bob, carol"), not as an empty body.

use crate::message::{MembershipAction, MembershipChange, MessageKind};
use crate::{ReceivedMessage, SendReceipt};

/// One line for a receipt.
pub fn receipt_line(r: &SendReceipt, json: bool) -> String {
    if json {
        serde_json::json!({
            "conversation": r.conversation,
            "seq": r.seq,
            "client_msg_id": r.client_msg_id,
            "duplicate": r.duplicate,
        })
        .to_string()
    } else {
        format!(
            "sent seq={} conversation={} client_msg_id={}{}",
            r.seq,
            r.conversation,
            r.client_msg_id,
            if r.duplicate { " duplicate" } else { "" }
        )
    }
}

/// A membership change in words, e.g. `alice added dave, erin`.
pub fn membership_text(change: &MembershipChange) -> String {
    let actor = change.actor.as_str();
    let users = change.users.join(", ");
    match change.action {
        MembershipAction::Created => {
            let mut text = format!("{actor} created the group");
            if !change.name.is_empty() {
                text.push_str(&format!(" {:?}", change.name));
            }
            let others: Vec<&str> = change
                .users
                .iter()
                .map(String::as_str)
                .filter(|u| *u != actor)
                .collect();
            if !others.is_empty() {
                text.push_str(&format!(" with {}", others.join(", ")));
            }
            text
        }
        MembershipAction::Added => format!("{actor} added {users}"),
        MembershipAction::Removed if change.users == [actor] => format!("{actor} left the group"),
        MembershipAction::Removed => format!("{actor} removed {users}"),
        MembershipAction::Unknown => format!("{actor} changed the membership ({users})"),
    }
}

fn action_name(action: MembershipAction) -> &'static str {
    match action {
        MembershipAction::Created => "created",
        MembershipAction::Added => "added",
        MembershipAction::Removed => "removed",
        MembershipAction::Unknown => "unknown",
    }
}

/// One line for a received message: `<conversation> #<seq> <user>/<device>: <text>` for a user message,
/// `<conversation> #<seq> <what happened>` for a system message.
pub fn message_line(m: &ReceivedMessage, json: bool) -> String {
    let system = m.kind == MessageKind::System;
    if json {
        let mut v = serde_json::json!({
            "conversation": m.conversation,
            "seq": m.seq,
            "from": m.sender,
            "device": m.sender_device,
            "body": m.text(),
            "server_time": m.server_time_ms,
            "kind": if system { "system" } else { "user" },
        });
        if let Some(change) = &m.membership {
            v["membership"] = serde_json::json!({
                "action": action_name(change.action),
                "actor": change.actor,
                "users": change.users,
                "name": change.name,
                "text": membership_text(change),
            });
        }
        return v.to_string();
    }
    match (&m.membership, system) {
        (Some(change), _) => format!("{} #{} {}", m.conversation, m.seq, membership_text(change)),
        // A system message this version cannot read: say so rather than print an empty body.
        (None, true) => format!("{} #{} (system message)", m.conversation, m.seq),
        (None, false) => format!(
            "{} #{} {}/{}: {}",
            m.conversation,
            m.seq,
            m.sender,
            m.sender_device,
            m.text()
        ),
    }
}

/// One line for a received typing signal. The JSON keys keep this order (not sorted like the other
/// lines), as documented.
pub fn typing_line(
    conversation: &str,
    from: &str,
    device: &str,
    active: bool,
    json: bool,
) -> String {
    if json {
        let s = |v: &str| serde_json::Value::from(v).to_string();
        format!(
            r#"{{"conversation":{},"typing":{active},"from":{},"device":{}}}"#,
            s(conversation),
            s(from),
            s(device)
        )
    } else {
        let what = if active {
            "is typing"
        } else {
            "stopped typing"
        };
        format!("{conversation} {from}/{device} {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageKind, membership: Option<MembershipChange>) -> ReceivedMessage {
        ReceivedMessage {
            conversation: "d:a:b".into(),
            seq: 3,
            epoch: 1,
            sender: "a".into(),
            sender_device: "phone".into(),
            client_msg_id: "x".into(),
            body: bytes::Bytes::from_static(b"hi \xff"),
            server_time_ms: 99,
            kind,
            membership,
        }
    }

    fn change(action: MembershipAction, actor: &str, users: &[&str]) -> MembershipChange {
        MembershipChange {
            action,
            actor: actor.into(),
            users: users.iter().map(|u| u.to_string()).collect(),
            name: "crew".into(),
        }
    }

    #[test]
    fn json_lines_have_the_documented_fields() {
        let m = message(MessageKind::User, None);
        let v: serde_json::Value = serde_json::from_str(&message_line(&m, true)).unwrap();
        assert_eq!(v["from"], "a");
        assert_eq!(v["device"], "phone");
        assert_eq!(v["body"], "hi \u{fffd}");
        assert_eq!(v["server_time"], 99);
        assert_eq!(v["kind"], "user");
        assert!(v.get("membership").is_none());
        let r = SendReceipt {
            conversation: "d:a:b".into(),
            seq: 4,
            client_msg_id: "id".into(),
            duplicate: false,
            server_time_ms: 1,
        };
        assert_eq!(
            receipt_line(&r, false),
            "sent seq=4 conversation=d:a:b client_msg_id=id"
        );
        let v: serde_json::Value = serde_json::from_str(&receipt_line(&r, true)).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["duplicate"].as_bool()),
            (Some(4), Some(false))
        );
    }

    #[test]
    fn system_messages_read_as_words() {
        let created = change(
            MembershipAction::Created,
            "alice",
            &["alice", "bob", "carol"],
        );
        let m = message(MessageKind::System, Some(created));
        assert_eq!(
            message_line(&m, false),
            r#"d:a:b #3 alice created the group "crew" with bob, carol"#
        );
        let v: serde_json::Value = serde_json::from_str(&message_line(&m, true)).unwrap();
        assert_eq!(v["kind"], "system");
        assert_eq!(v["membership"]["action"], "created");
        assert_eq!(v["membership"]["users"][2], "carol");
        let added = change(MembershipAction::Added, "alice", &["dave", "erin"]);
        assert_eq!(membership_text(&added), "alice added dave, erin");
        let left = change(MembershipAction::Removed, "bob", &["bob"]);
        assert_eq!(membership_text(&left), "bob left the group");
        let removed = change(MembershipAction::Removed, "alice", &["bob"]);
        assert_eq!(membership_text(&removed), "alice removed bob");
        let unreadable = message(MessageKind::System, None);
        assert_eq!(
            message_line(&unreadable, false),
            "d:a:b #3 (system message)"
        );
        assert_eq!(
            message_line(&message(MessageKind::User, None), false),
            "d:a:b #3 a/phone: hi \u{fffd}"
        );
    }

    #[test]
    fn typing_lines_have_the_documented_format() {
        assert_eq!(
            typing_line("d:a:b", "a", "phone", true, true),
            r#"{"conversation":"d:a:b","typing":true,"from":"a","device":"phone"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&typing_line("g:1", "x\"y", "d", false, true)).unwrap();
        assert_eq!(
            (v["typing"].as_bool(), v["from"].as_str()),
            (Some(false), Some("x\"y"))
        );
        assert_eq!(
            typing_line("d:a:b", "a", "phone", true, false),
            "d:a:b a/phone is typing"
        );
        assert_eq!(
            typing_line("d:a:b", "a", "phone", false, false),
            "d:a:b a/phone stopped typing"
        );
    }
}

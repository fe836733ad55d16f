//! Identifier rules: users, devices, client message ids and conversation ids (spec section "Identifiers").

use crate::frame::ConversationKind;

/// Longest user id, device id or client_msg_id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Users and devices: 1..=64 bytes of `[A-Za-z0-9._@-]` (FERRY-ID-1). The colon is excluded because it
/// separates the parts of a conversation id.
pub fn is_valid_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// client_msg_id: 1..=64 bytes of printable ASCII (FERRY-ID-2). UUIDs are the usual choice.
pub fn is_valid_client_msg_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The id of the direct conversation between two different users: `d:` + the two user ids in byte
/// order, joined by `:` (FERRY-ID-3). Both users derive the same id without asking the server.
pub fn direct_conversation_id(a: &str, b: &str) -> Option<String> {
    if !is_valid_name(a) || !is_valid_name(b) || a == b {
        return None;
    }
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    Some(format!("d:{lo}:{hi}"))
}

/// A group id: `g:` + 32 lowercase hex digits chosen by the server (FERRY-ID-4).
pub fn group_conversation_id(random: u128) -> String {
    format!("g:{random:032x}")
}

/// A parsed conversation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationRef<'a> {
    /// Direct conversation between two users (in byte order).
    Direct(&'a str, &'a str),
    /// Group conversation.
    Group,
}

impl ConversationRef<'_> {
    /// The wire kind.
    pub fn kind(&self) -> ConversationKind {
        match self {
            ConversationRef::Direct(..) => ConversationKind::Direct,
            ConversationRef::Group => ConversationKind::Group,
        }
    }
}

/// Parses and validates a conversation id; `None` if it is not well-formed.
pub fn parse_conversation_id(id: &str) -> Option<ConversationRef<'_>> {
    if let Some(rest) = id.strip_prefix("d:") {
        let (a, b) = rest.split_once(':')?;
        (is_valid_name(a) && is_valid_name(b) && a < b).then_some(ConversationRef::Direct(a, b))
    } else if let Some(hex) = id.strip_prefix("g:") {
        (hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then_some(ConversationRef::Group)
    } else {
        None
    }
}

/// Whether `id` is a well-formed direct conversation id (the server re-creates those when its store
/// lost them; a group cannot be re-created).
pub fn is_direct_conversation(id: &str) -> bool {
    matches!(parse_conversation_id(id), Some(ConversationRef::Direct(..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_are_symmetric_and_parse_back() {
        let id = direct_conversation_id("bob", "alice").unwrap();
        assert_eq!(id, "d:alice:bob");
        assert_eq!(direct_conversation_id("alice", "bob").unwrap(), id);
        assert_eq!(
            parse_conversation_id(&id),
            Some(ConversationRef::Direct("alice", "bob"))
        );
        assert_eq!(direct_conversation_id("alice", "alice"), None);
        assert_eq!(direct_conversation_id("a:b", "c"), None);
        assert!(is_direct_conversation(&id));
        assert!(!is_direct_conversation(
            "g:0123456789abcdef0123456789abcdef"
        ));
        assert!(!is_direct_conversation("d:bob:alice"));
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "d:",
            "d:bob:alice",
            "d:a",
            "g:123",
            "x:y",
            "g:ABCDEF0123456789abcdef0123456789",
        ] {
            assert_eq!(parse_conversation_id(bad), None, "{bad}");
        }
        let group = group_conversation_id(0xabc);
        assert_eq!(parse_conversation_id(&group), Some(ConversationRef::Group));
        assert!(!is_valid_name(&"x".repeat(65)));
        assert!(!is_valid_client_msg_id("has space"));
    }
}

//! Key layout. Every key of a conversation starts with `<prefix>{c:<id>}`, so all of them hash to one
//! Redis Cluster slot and one script can touch them all; per-user and per-store keys have their own tags.

use redis::cluster_routing::Slot;

/// The keys of one conversation.
#[derive(Debug, Clone)]
pub(crate) struct ConvKeys {
    base: String,
}

impl ConvKeys {
    pub(crate) fn new(prefix: &str, conversation: &str) -> Self {
        ConvKeys {
            base: format!("{prefix}{{c:{conversation}}}"),
        }
    }

    /// Hash: kind, name, owner, epoch, head, trim, chg (stamp of the last message), stamp (last change).
    pub(crate) fn meta(&self) -> String {
        format!("{}:meta", self.base)
    }

    /// Stream of encoded messages; entry id `<seq>-0`.
    pub(crate) fn messages(&self) -> String {
        format!("{}:msgs", self.base)
    }

    /// Hash: user → member record (see `lua/common.lua`).
    pub(crate) fn members(&self) -> String {
        format!("{}:members", self.base)
    }

    /// Hash: [`cursor_field`] → delivered seq.
    pub(crate) fn cursors(&self) -> String {
        format!("{}:cursors", self.base)
    }

    /// String `seq:time:epoch` with a TTL of the dedupe window. The sender is length-prefixed so no
    /// (sender, client_msg_id) pair can collide with another.
    pub(crate) fn dedupe(&self, sender: &str, client_msg_id: &str) -> String {
        format!("{}:dd:{}:{sender}{client_msg_id}", self.base, sender.len())
    }

    /// The Redis Cluster slot of every key above.
    pub(crate) fn slot(&self) -> Slot {
        Slot::for_key(&self.base)
    }
}

/// Field of the cursors hash for one device of one user (length-prefixed, collision-free).
pub(crate) fn cursor_field(user: &str, device: &str) -> String {
    format!("{}:{user}{device}", user.len())
}

/// Set of the conversations a user was ever made a member of (a superset: Sync checks each one's
/// members hash, which is the truth).
pub(crate) fn user_conversations(prefix: &str, user: &str) -> String {
    format!("{prefix}{{u:{user}}}:convs")
}

/// Hash holding the store epoch.
pub(crate) fn store_meta(prefix: &str) -> String {
    format!("{prefix}{{store}}:meta")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_conversation_is_in_one_slot() {
        let keys = ConvKeys::new("ferry:", "g:0123");
        let slot = keys.slot();
        for key in [
            keys.meta(),
            keys.messages(),
            keys.members(),
            keys.cursors(),
            keys.dedupe("alice", "m1"),
        ] {
            assert_eq!(Slot::for_key(&key), slot, "{key}");
        }
        assert_ne!(keys.dedupe("ab", "c"), keys.dedupe("a", "bc"));
        assert_ne!(cursor_field("ab", "c"), cursor_field("a", "bc"));
    }
}

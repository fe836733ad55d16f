//! Key and channel names. Every key that a script touches carries a hash tag (`{u:…}` per user,
//! `{n:…}` per node), so each script runs on one slot and works unchanged on Redis Cluster; only the text
//! inside the first `{…}` is hashed. User and node ids cannot contain braces (FERRY-ID-1).

/// Names under one prefix (several clusters, or tests, may share one Redis).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new("ferry")
    }
}

impl Keys {
    /// Names starting with `prefix:`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// Hash of a user's online sessions: device → entry (node, session, class, expiry).
    pub fn sessions(&self, user: &str) -> String {
        format!("{}:s:{{u:{user}}}", self.prefix)
    }

    /// Pub/sub channel of a user: every node with a session of the user listens to it.
    pub fn user_channel(&self, user: &str) -> String {
        format!("{}:c:{{u:{user}}}", self.prefix)
    }

    /// Hash holding a node's lease (its addresses, start time and instance nonce), with a TTL.
    pub fn lease(&self, node: &str) -> String {
        format!("{}:n:{{n:{node}}}", self.prefix)
    }

    /// Set of users that had a session on a node (to release them when the node dies).
    pub fn node_users(&self, node: &str) -> String {
        format!("{}:nu:{{n:{node}}}", self.prefix)
    }

    /// Set of registered node ids.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Pub/sub channel of the TLS session tickets every node shares (one slot on Redis Cluster).
    pub fn tickets_channel(&self) -> String {
        format!("{}:t:{{tickets}}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes: the text inside the first `{…}`.
    fn tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn keys_of_one_user_or_node_share_a_slot() {
        let k = Keys::new("t");
        assert_eq!(tag(&k.sessions("alice")), tag(&k.user_channel("alice")));
        assert_eq!(tag(&k.lease("n1")), tag(&k.node_users("n1")));
        assert_ne!(tag(&k.sessions("alice")), tag(&k.sessions("bob")));
        assert_eq!(k.sessions("alice"), "t:s:{u:alice}");
    }
}

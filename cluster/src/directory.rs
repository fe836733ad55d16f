//! The session directory: which node holds each online device, shared by every node through Redis.
//!
//! Layout: one hash per user (`{u:<user>}`), device → JSON entry `{node, session, class, exp}`. The
//! expiry is per entry (checked inside the scripts against Redis's own clock) because hash fields have no
//! TTL of their own in Redis 7.0; the hash as a whole also gets a TTL so an abandoned user costs nothing.
//! Every change is one Lua script on that one key, so the login policy holds across nodes: a login on
//! node B atomically removes the entries it replaces and returns them, and the caller tells their nodes to
//! close those sessions. A second set per node (`{n:<node>}`) remembers which users had sessions there,
//! so that a dead node's sessions can be released at once rather than waiting for them to expire.

use std::time::Duration;

use redis::{AsyncCommands, Script};
use serde::Deserialize;

use crate::keys::Keys;
use crate::policy::LoginPolicy;
use crate::redis::Redis;
use crate::ClusterError;

/// One online session as the directory records it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SessionEntry {
    /// Device id (the hash field; not part of the stored JSON).
    #[serde(skip)]
    pub device: String,
    /// Node holding the connection.
    pub node: String,
    /// Session id, unique per node instance.
    pub session: String,
    /// Device class (for the one-per-class policy).
    pub class: String,
}

impl SessionEntry {
    fn parse(device: String, raw: &str) -> Option<SessionEntry> {
        let mut entry: SessionEntry = serde_json::from_str(raw).ok()?;
        entry.device = device;
        Some(entry)
    }
}

/// What a heartbeat refresh found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// The entry was ours; its expiry moved on.
    Refreshed,
    /// The entry was missing (Redis lost it, or a peer released it) and was written again.
    Restored,
    /// Another session holds the device or wins under the policy: close this one (SESSION_REPLACED).
    Replaced,
}

/// What registering a login did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Recorded; these sessions (on any node) are replaced under the login policy: the caller tells
    /// their nodes to close them with SESSION_REPLACED.
    Replacing(Vec<SessionEntry>),
    /// A later login of the same device is already recorded (this one reached Redis late, e.g. from a
    /// node too slow to answer before the device moved on): nothing was written, and this session is
    /// the one to close.
    Superseded,
}

/// A device's session as the registering node sees it.
#[derive(Debug, Clone, Copy)]
pub struct SessionRef<'a> {
    /// User id.
    pub user: &'a str,
    /// Device id.
    pub device: &'a str,
    /// Device class.
    pub class: &'a str,
    /// Session id (unique per node instance).
    pub session: &'a str,
}

/// The cluster-wide session directory.
#[derive(Debug, Clone)]
pub struct SessionDirectory {
    redis: Redis,
    keys: Keys,
    node: String,
    ttl: Duration,
    policy: LoginPolicy,
    scripts: Scripts,
}

#[derive(Debug, Clone)]
struct Scripts {
    register: Script,
    refresh: Script,
    unregister: Script,
    release_node: Script,
}

impl SessionDirectory {
    /// The directory as seen by `node`: entries it writes expire after `ttl` unless refreshed.
    pub fn new(redis: Redis, keys: Keys, node: &str, ttl: Duration, policy: LoginPolicy) -> Self {
        SessionDirectory {
            redis,
            keys,
            node: node.to_owned(),
            ttl,
            policy,
            scripts: Scripts {
                register: Script::new(include_str!("lua/session_register.lua")),
                refresh: Script::new(include_str!("lua/session_refresh.lua")),
                unregister: Script::new(include_str!("lua/session_unregister.lua")),
                release_node: Script::new(include_str!("lua/session_release_node.lua")),
            },
        }
    }

    /// Runs `script` (register or refresh: they share their arguments) on the session's user key;
    /// `at_ms` orders logins of one device (0: now, by Redis's clock).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        s: SessionRef<'_>,
        at_ms: u64,
    ) -> Result<T, ClusterError> {
        let mut redis = self.redis.clone();
        Ok(script
            .key(self.keys.sessions(s.user))
            .arg(s.device)
            .arg(s.class)
            .arg(&self.node)
            .arg(s.session)
            .arg(self.ttl.as_millis() as u64)
            .arg(self.policy.name())
            .arg(at_ms)
            .invoke_async(&mut redis)
            .await?)
    }

    /// Registers a new session as of now (by Redis's clock); returns the sessions it replaces under
    /// the login policy (on any node — the caller tells their nodes to close them with
    /// SESSION_REPLACED). See [`SessionDirectory::register_login`] for logins accepted earlier.
    pub async fn register(&self, s: SessionRef<'_>) -> Result<Vec<SessionEntry>, ClusterError> {
        match self.register_login(s, 0).await? {
            Registration::Replacing(replaced) => Ok(replaced),
            Registration::Superseded => Ok(Vec::new()),
        }
    }

    /// Registers a login that this node accepted at `at_ms` (ms since the Unix epoch). Logins of one
    /// device are ordered by that instant, not by when their registration reaches Redis, so a late
    /// registration of a login the device already abandoned cannot replace its newer session.
    pub async fn register_login(
        &self,
        s: SessionRef<'_>,
        at_ms: u64,
    ) -> Result<Registration, ClusterError> {
        let mut redis = self.redis.clone();
        // The node's user set first: should the script's write then be lost, releasing finds nothing.
        let _: () = redis.sadd(self.keys.node_users(&self.node), s.user).await?;
        let flat: Vec<String> = self.invoke(&self.scripts.register, s, at_ms).await?;
        match flat.split_first() {
            Some((status, _)) if status == "superseded" => Ok(Registration::Superseded),
            Some((status, rest)) if status == "ok" => Ok(Registration::Replacing(
                rest.chunks_exact(2)
                    .filter_map(|pair| SessionEntry::parse(pair[0].clone(), &pair[1]))
                    .collect(),
            )),
            _ => Err(ClusterError::Protocol(format!(
                "register script answered {flat:?}"
            ))),
        }
    }

    /// Extends the session's expiry (call it on heartbeats); see [`Refresh`].
    pub async fn refresh(&self, s: SessionRef<'_>) -> Result<Refresh, ClusterError> {
        let mut redis = self.redis.clone();
        let result: String = self.invoke(&self.scripts.refresh, s, 0).await?;
        match result.as_str() {
            "refreshed" => Ok(Refresh::Refreshed),
            "restored" => {
                let _: () = redis.sadd(self.keys.node_users(&self.node), s.user).await?;
                Ok(Refresh::Restored)
            }
            "replaced" => Ok(Refresh::Replaced),
            other => Err(ClusterError::Protocol(format!(
                "refresh script answered {other:?}"
            ))),
        }
    }

    /// Removes the session when its connection ends; false if a newer session replaced it already.
    pub async fn unregister(
        &self,
        user: &str,
        device: &str,
        session: &str,
    ) -> Result<bool, ClusterError> {
        let mut redis = self.redis.clone();
        let removed: i64 = self
            .scripts
            .unregister
            .key(self.keys.sessions(user))
            .arg(device)
            .arg(&self.node)
            .arg(session)
            .invoke_async(&mut redis)
            .await?;
        Ok(removed == 1)
    }

    /// The user's live sessions on every node.
    pub async fn sessions(&self, user: &str) -> Result<Vec<SessionEntry>, ClusterError> {
        let mut redis = self.redis.clone();
        let raw: Vec<(String, String)> = redis.hgetall(self.keys.sessions(user)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(device, raw)| SessionEntry::parse(device, &raw))
            .collect())
    }

    /// Removes every session that `node` held (it died or left); returns how many were removed. Safe to
    /// run from several nodes at once.
    pub async fn release_node(&self, node: &str) -> Result<usize, ClusterError> {
        let mut redis = self.redis.clone();
        let users_key = self.keys.node_users(node);
        let users: Vec<String> = redis.smembers(&users_key).await?;
        let mut removed = 0usize;
        for user in &users {
            let n: i64 = self
                .scripts
                .release_node
                .key(self.keys.sessions(user))
                .arg(node)
                .invoke_async(&mut redis)
                .await?;
            removed += n as usize;
        }
        let _: () = redis.del(&users_key).await?;
        Ok(removed)
    }
}

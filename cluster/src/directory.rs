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

use futures_util::future::join_all;
use redis::{AsyncCommands, ErrorKind, Script, ServerErrorKind};
use serde::Deserialize;

use crate::keys::Keys;
use crate::policy::LoginPolicy;
use crate::redis::Redis;
use crate::ClusterError;

/// Most scripts one batch keeps in flight together (a sweep or a release): enough to fill the
/// connection's pipeline, bounded so that ten thousand sessions do not queue ten thousand requests.
const BATCH: usize = 256;

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
    /// When the node accepted the login (Unix ms). A register or refresh never displaces a session
    /// that logged in later, so a login that Redis applies late cannot evict its successor.
    pub login_ms: u64,
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

    /// Runs `script` (register or refresh: they share their arguments) on the session's user key.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        s: SessionRef<'_>,
    ) -> Result<T, ClusterError> {
        let mut redis = self.redis.clone();
        let cmd = self.evalsha(script, s);
        match cmd.query_async(&mut redis).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(&mut redis).await?;
                Ok(cmd.query_async(&mut redis).await?)
            }
            answer => Ok(answer?),
        }
    }

    /// `EVALSHA` of `script` (register or refresh) with the arguments of [`SessionDirectory::invoke`],
    /// as a command to pipeline (a pipeline has no NOSCRIPT fallback of its own: the caller loads).
    fn evalsha(&self, script: &Script, s: SessionRef<'_>) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(1)
            .arg(self.keys.sessions(s.user))
            .arg(s.device)
            .arg(s.class)
            .arg(&self.node)
            .arg(s.session)
            .arg(self.ttl.as_millis() as u64)
            .arg(self.policy.name())
            .arg(s.login_ms);
        cmd
    }

    /// Registers a new session; returns the sessions it replaces under the login policy (on any node —
    /// the caller tells their nodes to close them with SESSION_REPLACED), or
    /// [`ClusterError::Superseded`] if a session that logged in later holds the place already.
    ///
    /// The node's user set is written before the script, so that should the script's write be lost,
    /// releasing this node finds nothing rather than misses a session. On one Redis both commands share
    /// one pipeline, which Redis runs in order: one round trip per login instead of two (it counts in
    /// a reconnect storm). On a Redis Cluster the two keys live on different shards, which keep no
    /// order between them, so the set is written first.
    pub async fn register(&self, s: SessionRef<'_>) -> Result<Vec<SessionEntry>, ClusterError> {
        let mut redis = self.redis.clone();
        let users_key = self.keys.node_users(&self.node);
        let flat: Vec<String> = if matches!(redis, Redis::Single(_)) {
            let mut pipe = redis::pipe();
            pipe.sadd(users_key, s.user)
                .ignore()
                .add_command(self.evalsha(&self.scripts.register, s));
            let piped: Result<(Vec<String>,), redis::RedisError> =
                pipe.query_async(&mut redis).await;
            match piped {
                Ok((flat,)) => flat,
                // A Redis that does not know the script yet (first use, restart, SCRIPT FLUSH): the
                // SADD ran (it is idempotent); load the script and pipeline both again.
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    self.scripts.register.load_async(&mut redis).await?;
                    let (flat,): (Vec<String>,) = pipe.query_async(&mut redis).await?;
                    flat
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            let _: () = redis.sadd(users_key, s.user).await?;
            self.invoke(&self.scripts.register, s).await?
        };
        if flat.len() == 1 && flat[0] == "superseded" {
            return Err(ClusterError::Superseded);
        }
        Ok(flat
            .chunks_exact(2)
            .filter_map(|pair| SessionEntry::parse(pair[0].clone(), &pair[1]))
            .collect())
    }

    /// Extends the expiry of many sessions of this node at once (the node's periodic sweep): every
    /// refresh is in flight together, `BATCH` (256) at a time, so the connection pipelines them — one
    /// round trip per batch instead of one per session. Results come in the order of `sessions`.
    pub async fn refresh_many(
        &self,
        sessions: &[SessionRef<'_>],
    ) -> Vec<Result<Refresh, ClusterError>> {
        let mut results = Vec::with_capacity(sessions.len());
        for batch in sessions.chunks(BATCH) {
            results.extend(join_all(batch.iter().map(|s| self.refresh(*s))).await);
        }
        results
    }

    /// Extends the session's expiry; see [`Refresh`].
    pub async fn refresh(&self, s: SessionRef<'_>) -> Result<Refresh, ClusterError> {
        let mut redis = self.redis.clone();
        let result: String = self.invoke(&self.scripts.refresh, s).await?;
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
        // A dead node held a third of the sessions: one round trip per user would keep its devices'
        // entries around for as many round trips. All in flight together, BATCH at a time.
        for batch in users.chunks(BATCH) {
            let released = join_all(batch.iter().map(|user| {
                let mut redis = redis.clone();
                let mut invocation = self.scripts.release_node.key(self.keys.sessions(user));
                invocation.arg(node);
                async move { invocation.invoke_async::<i64>(&mut redis).await }
            }))
            .await;
            for n in released {
                removed += n? as usize;
            }
        }
        let _: () = redis.del(&users_key).await?;
        Ok(removed)
    }
}

//! The node registry: each node holds a lease in Redis (its id, QUIC and HTTP addresses, start time, and
//! an instance nonce) with a short TTL, renewed in the background.
//!
//! Start-up ([`NodeRegistry::claim`]) probes every registered node directly instead of trusting TTLs: a
//! dead node's lease and sessions are cleaned at once (Turms users waited up to 181 s for stale sessions
//! to expire), and a *live* node with the same id makes the new one refuse to start
//! ([`ClusterError::NodeConflict`]). While running, [`NodeRegistry::renew`] notices when Redis lost the
//! lease (restart without data, FLUSHALL): the caller then re-registers its sessions.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{AsyncCommands, Script};

use crate::directory::SessionDirectory;
use crate::keys::Keys;
use crate::probe::Prober;
use crate::redis::Redis;
use crate::ClusterError;

/// What a node advertises about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id (unique in the cluster).
    pub id: String,
    /// QUIC address clients connect to.
    pub quic: String,
    /// HTTP address of `/healthz` and `/metrics`.
    pub http: String,
    /// Start time, ms since the Unix epoch.
    pub started_ms: u64,
    /// Random per process: tells two processes with the same id apart.
    pub instance: String,
}

impl NodeInfo {
    /// Info for a node starting now, with a fresh instance nonce.
    pub fn starting(id: &str, quic: &str, http: &str) -> NodeInfo {
        NodeInfo {
            id: id.to_owned(),
            quic: quic.to_owned(),
            http: http.to_owned(),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            instance: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

/// What renewing the lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed as usual.
    Renewed,
    /// The lease was gone (Redis lost data, or a peer declared this node dead) and was taken again: the
    /// caller must re-register its sessions.
    Restored,
}

/// This node's place in the registry.
#[derive(Debug, Clone)]
pub struct NodeRegistry {
    redis: Redis,
    keys: Keys,
    me: NodeInfo,
    ttl: Duration,
    claim: Script,
    release: Script,
}

/// What start-up cleaned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Nodes found dead and removed, with the number of sessions released for each.
    pub cleaned: Vec<(String, usize)>,
    /// Live peers found.
    pub peers: Vec<NodeInfo>,
}

impl NodeRegistry {
    /// Joins the cluster as `me`: probes every registered node, cleans dead ones (their sessions
    /// included), refuses if a live node already has `me.id`, then takes the lease.
    pub async fn claim(
        redis: Redis,
        keys: Keys,
        me: NodeInfo,
        ttl: Duration,
        prober: &Prober,
        directory: &SessionDirectory,
    ) -> Result<(NodeRegistry, Claimed), ClusterError> {
        let registry = NodeRegistry {
            redis,
            keys,
            me,
            ttl,
            claim: Script::new(include_str!("lua/lease_claim.lua")),
            release: Script::new(include_str!("lua/lease_release.lua")),
        };
        let mut claimed = Claimed::default();
        for (id, lease) in registry.registered().await? {
            let alive = match &lease {
                Some(info) => prober.alive(&info.http).await,
                None => false,
            };
            if alive {
                let info = lease.expect("alive implies a lease");
                if id == registry.me.id {
                    return Err(ClusterError::NodeConflict {
                        id,
                        quic: info.quic,
                        http: info.http,
                    });
                }
                claimed.peers.push(info);
            } else {
                let released = registry.release(&id, directory).await?;
                claimed.cleaned.push((id, released));
            }
        }
        match registry.take_lease().await? {
            Ok(_) => Ok((registry, claimed)),
            Err(holder) => Err(ClusterError::NodeConflict {
                id: registry.me.id.clone(),
                quic: holder.quic,
                http: holder.http,
            }),
        }
    }

    /// This node.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes or renews the lease; `Err(holder)` if another instance holds it.
    async fn take_lease(&self) -> Result<Result<Renewal, NodeInfo>, ClusterError> {
        let mut redis = self.redis.clone();
        let answer: String = self
            .claim
            .key(self.keys.lease(&self.me.id))
            .arg(&self.me.instance)
            .arg(self.ttl.as_millis() as u64)
            .arg(&self.me.quic)
            .arg(&self.me.http)
            .arg(self.me.started_ms)
            .invoke_async(&mut redis)
            .await?;
        let _: () = redis.sadd(self.keys.nodes(), &self.me.id).await?;
        match answer.as_str() {
            "renewed" => Ok(Ok(Renewal::Renewed)),
            "claimed" => Ok(Ok(Renewal::Restored)),
            _ => {
                let holder = self.lease(&self.me.id).await?;
                Ok(Err(holder.unwrap_or_else(|| self.me.clone())))
            }
        }
    }

    /// Renews the lease (call it every TTL/3). [`Renewal::Restored`] means Redis had lost it; an error
    /// [`ClusterError::NodeConflict`] means another process took this id meanwhile.
    pub async fn renew(&self) -> Result<Renewal, ClusterError> {
        match self.take_lease().await? {
            Ok(renewal) => Ok(renewal),
            Err(holder) => Err(ClusterError::NodeConflict {
                id: self.me.id.clone(),
                quic: holder.quic,
                http: holder.http,
            }),
        }
    }

    /// Every registered node id with its lease (`None` when the lease expired).
    pub async fn registered(&self) -> Result<Vec<(String, Option<NodeInfo>)>, ClusterError> {
        let mut redis = self.redis.clone();
        let mut ids: Vec<String> = redis.smembers(self.keys.nodes()).await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let lease = self.lease(&id).await?;
            out.push((id, lease));
        }
        Ok(out)
    }

    /// The live lease of node `id`, if any.
    pub async fn lease(&self, id: &str) -> Result<Option<NodeInfo>, ClusterError> {
        let mut redis = self.redis.clone();
        let fields: HashMap<String, String> = redis.hgetall(self.keys.lease(id)).await?;
        let Some(instance) = fields.get("instance") else {
            return Ok(None);
        };
        let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
        Ok(Some(NodeInfo {
            id: id.to_owned(),
            quic: field("quic"),
            http: field("http"),
            started_ms: field("started_ms").parse().unwrap_or(0),
            instance: instance.clone(),
        }))
    }

    /// Removes node `id` (found dead): its sessions, its lease and its registration; returns the number of
    /// sessions released. Idempotent; several nodes may do it at once.
    pub async fn release(
        &self,
        id: &str,
        directory: &SessionDirectory,
    ) -> Result<usize, ClusterError> {
        let released = directory.release_node(id).await?;
        let mut redis = self.redis.clone();
        let _: i64 = self
            .release
            .key(self.keys.lease(id))
            .arg("")
            .invoke_async(&mut redis)
            .await?;
        let _: () = redis.srem(self.keys.nodes(), id).await?;
        Ok(released)
    }

    /// Leaves the cluster on shutdown: releases this node's sessions and its lease (if still ours).
    pub async fn leave(&self, directory: &SessionDirectory) -> Result<usize, ClusterError> {
        let released = directory.release_node(&self.me.id).await?;
        let mut redis = self.redis.clone();
        let dropped: i64 = self
            .release
            .key(self.keys.lease(&self.me.id))
            .arg(&self.me.instance)
            .invoke_async(&mut redis)
            .await?;
        if dropped == 1 {
            let _: () = redis.srem(self.keys.nodes(), &self.me.id).await?;
        }
        Ok(released)
    }
}

//! The cluster target: N `ferry-server run` nodes in cluster mode on one `redis-server` that the
//! target starts itself (`appendonly yes`, `appendfsync always`, a free loopback port in the run's work
//! dir). Its faults: SIGKILL + restart and SIGSTOP/SIGCONT of one node, SIGKILL of `redis-server` and a
//! restart on the same AOF, and `FLUSHALL` (all history lost: the store and the conversations change
//! epoch).
//!
//! The nodes are one service to clients: node 1 creates the identity (certificate, key, token secret)
//! and the others get a copy before they start, so a device (through one proxy per node) fails over
//! from one node to another with the same CA and token. Nodes start with `--require-durable-redis`: a
//! Redis without fsync-on-write would make the no-loss promise void, so the run refuses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::node::{io, NodeProcess};
use crate::redis::RedisProcess;
use crate::target::{mint_token, Target, TargetError};

/// What each node shares with node 1 (the identity clients and tokens rely on).
const IDENTITY: [&str; 3] = ["cert.pem", "key.pem", "token.secret"];
/// Fewest nodes that make a cluster (failover needs somewhere to go).
pub const MIN_NODES: usize = 2;
/// Most nodes (each is a process on a machine the run shares).
pub const MAX_NODES: usize = 5;

/// N nodes on one Redis.
pub struct Cluster {
    binary: PathBuf,
    redis: RedisProcess,
    /// Between a scheduled Redis kill and its restart: Redis being down is then no crash.
    redis_killed: bool,
    nodes: Vec<NodeProcess>,
    /// Nodes killed while Redis was down: a node cannot open its store without Redis (it exits at
    /// start-up), so they start again right after Redis does, as a supervisor would retry them.
    deferred: Vec<usize>,
}

impl Cluster {
    /// Starts `redis-server` under `work/redis` and `nodes` nodes under `work/node-<k>` (logs in
    /// `work/node-<k>.log`); fails with the reason if any of them cannot start.
    pub fn start(binary: PathBuf, work: &Path, nodes: usize) -> Result<Cluster, TargetError> {
        if !(MIN_NODES..=MAX_NODES).contains(&nodes) {
            return Err(TargetError::Start(format!(
                "a cluster has {MIN_NODES}..={MAX_NODES} nodes, not {nodes}"
            )));
        }
        let redis = RedisProcess::start(work.join("redis"))?;
        let mut cluster = Cluster {
            binary,
            redis,
            redis_killed: false,
            nodes: Vec::with_capacity(nodes),
            deferred: Vec::new(),
        };
        for k in 1..=nodes {
            let dir = work.join(format!("node-{k}"));
            std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
            if let Some(first) = cluster.nodes.first() {
                for name in IDENTITY {
                    std::fs::copy(first.data_dir().join(name), dir.join(name))
                        .map_err(io(format!("copy {name} into {}", dir.display())))?;
                }
            }
            let extra = vec![
                "--node-id".to_owned(),
                format!("n{k}"),
                "--redis".to_owned(),
                cluster.redis.url(),
                "--require-durable-redis".to_owned(),
            ];
            let log = work.join(format!("node-{k}.log"));
            let node = NodeProcess::start(
                format!("node n{k}"),
                cluster.binary.clone(),
                dir,
                extra,
                log,
            )?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    fn node(&mut self, node: usize) -> Result<&mut NodeProcess, TargetError> {
        self.nodes.get_mut(node).ok_or(TargetError::NoNode(node))
    }
}

impl Target for Cluster {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(NodeProcess::addr).collect()
    }

    fn ca(&self) -> &Path {
        self.nodes[0].ca()
    }

    fn token(&self, user: &str, device: &str) -> Result<String, TargetError> {
        mint_token(&self.binary, self.nodes[0].data_dir(), user, device)
    }

    fn kill_restart(&mut self, node: usize) -> Result<(), TargetError> {
        if self.redis_killed {
            self.node(node)?.kill()?;
            if !self.deferred.contains(&node) {
                self.deferred.push(node);
            }
            return Ok(());
        }
        self.node(node)?.kill_restart()
    }

    fn pause(&mut self, node: usize) -> Result<(), TargetError> {
        self.node(node)?.pause()
    }

    fn resume(&mut self, node: usize) -> Result<(), TargetError> {
        self.node(node)?.resume()
    }

    fn disk_full_mode(&self) -> String {
        "not injected: the cluster's data lives in Redis (its faults are Redis kills and FLUSHALL)"
            .into()
    }

    fn fill_disk(&mut self) -> Result<(), TargetError> {
        Err(TargetError::Unsupported {
            fault: "disk_full",
            target: "cluster",
        })
    }

    fn free_disk(&mut self) -> Result<(), TargetError> {
        // Nothing was filled: calming a run asks every target.
        Ok(())
    }

    fn redis_kill(&mut self) -> Result<(), TargetError> {
        self.redis.kill();
        self.redis_killed = true;
        Ok(())
    }

    fn redis_restart(&mut self) -> Result<(), TargetError> {
        self.redis.restart()?;
        self.redis_killed = false;
        for node in std::mem::take(&mut self.deferred) {
            self.node(node)?.spawn()?;
        }
        Ok(())
    }

    fn flushall(&mut self) -> Result<(), TargetError> {
        self.redis.flushall()
    }

    fn restart_if_dead(&mut self) -> Result<Vec<String>, TargetError> {
        let mut exits = Vec::new();
        for k in 0..self.nodes.len() {
            let Some(exit) = self.nodes[k].reap_if_dead()? else {
                continue;
            };
            exits.push(exit);
            if self.redis_killed {
                if !self.deferred.contains(&k) {
                    self.deferred.push(k);
                }
            } else {
                self.nodes[k].spawn()?;
            }
        }
        // Redis is down on purpose only between a kill and its restart, which the run pairs; a Redis
        // that died on its own is a crash to report (and to undo, so the run goes on).
        if !self.redis_killed && !self.redis.is_running() {
            exits.push(format!("redis-server in {}", self.redis.dir().display()));
            self.redis.restart()?;
        }
        Ok(exits)
    }

    fn shutdown(&mut self) {
        for node in &mut self.nodes {
            node.shutdown();
        }
        self.redis.kill();
    }
}

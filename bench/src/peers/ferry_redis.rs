//! Ferry on Redis as a system: one `ferry-server` node in cluster mode (`--redis`) on its own
//! redis-server (`appendfsync always`, like the `redis` system), driven exactly like the `ferry`
//! system. Next to the `redis` system (a raw EVALSHA loop straight at Redis) in the same run, it shows
//! what the server costs on top of its store: issue 14's goal is Ferry on Redis ≥ 0.9× the raw rate.

use std::path::Path;

use super::ferry::FerryServer;
use super::redis::Redis;
use crate::harness::{Counted, Delivered, Params};

/// A ferry-server node and the redis-server it stores in. Field order is drop order: the node stops
/// before its Redis does.
pub struct FerryOnRedis {
    ferry: FerryServer,
    redis: Redis,
}

impl FerryOnRedis {
    /// Starts a redis-server, then `binary` as node `bench` of a one-node cluster on it.
    pub async fn start(binary: &Path) -> anyhow::Result<FerryOnRedis> {
        let redis = Redis::start().await?;
        let ferry =
            FerryServer::start_with(binary, &["--redis", redis.url(), "--node-id", "bench"])
                .await?;
        Ok(FerryOnRedis { ferry, redis })
    }

    /// The ferry-server's process id (its RSS and CPU are the ones reported).
    pub fn pid(&self) -> u32 {
        self.ferry.pid()
    }

    /// The redis-server's process id: the process that fsyncs before Ferry acks.
    pub fn store_pid(&self) -> u32 {
        self.redis.pid()
    }

    /// Closed-loop acked sends, as for the `ferry` system.
    pub async fn throughput(&self, p: &Params) -> anyhow::Result<Counted> {
        self.ferry.throughput(p).await
    }

    /// Open-loop send→deliver, as for the `ferry` system.
    pub async fn latency(&self, p: &Params, rate: f64) -> anyhow::Result<Delivered> {
        self.ferry.latency(p, rate).await
    }

    /// One sender, `members - 1` receivers, as for the `ferry` system.
    pub async fn fanout(&self, p: &Params, members: usize) -> anyhow::Result<Delivered> {
        self.ferry.fanout(p, members).await
    }
}

//! The systems under test, each started as its own process on free loopback ports: Ferry
//! (`ferry-server`), Mosquitto, NATS JetStream and Redis. [`Running`] dispatches a scenario to the
//! right client; a scenario a system has no notion of yields `None`, not a made-up figure.

pub mod ferry;
mod ferry_fanout;
pub mod ferry_redis;
pub mod mosquitto;
pub mod nats;
pub mod process;
pub mod redis;

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;

use crate::harness::{Counted, Delivered, Params};

/// A system the bench can drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Ferry (fsync before SendAck).
    Ferry,
    /// Ferry in cluster mode: one node on Redis (appendfsync always).
    FerryRedis,
    /// Mosquitto 2.0, QoS 1, persistence on.
    Mosquitto,
    /// NATS JetStream 2.9, file storage, publish with ack.
    Nats,
    /// Redis 7, appendfsync always, one Lua send script per message.
    Redis,
}

impl System {
    /// Every system, Ferry first.
    pub const ALL: [System; 5] = [
        System::Ferry,
        System::FerryRedis,
        System::Mosquitto,
        System::Nats,
        System::Redis,
    ];

    /// Its display name.
    pub fn name(self) -> &'static str {
        match self {
            System::Ferry => "ferry",
            System::FerryRedis => "ferry-redis",
            System::Mosquitto => "mosquitto",
            System::Nats => "nats-jetstream",
            System::Redis => "redis",
        }
    }
}

impl FromStr for System {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ferry" => Ok(System::Ferry),
            "ferry-redis" | "ferry-on-redis" => Ok(System::FerryRedis),
            "mosquitto" | "mqtt" => Ok(System::Mosquitto),
            "nats" | "nats-jetstream" | "jetstream" => Ok(System::Nats),
            "redis" => Ok(System::Redis),
            other => Err(format!(
                "unknown system {other:?} (ferry, ferry-redis, mosquitto, nats, redis)"
            )),
        }
    }
}

/// One started system.
pub enum Running {
    /// A ferry-server process.
    Ferry(ferry::FerryServer),
    /// A ferry-server node on its redis-server.
    FerryRedis(ferry_redis::FerryOnRedis),
    /// A mosquitto process.
    Mosquitto(mosquitto::Mosquitto),
    /// A nats-server process.
    Nats(nats::Nats),
    /// A redis-server process.
    Redis(redis::Redis),
}

impl Running {
    /// Starts `system` (`ferry_binary` is the ferry-server to run).
    pub async fn start(system: System, ferry_binary: &Path) -> anyhow::Result<Running> {
        Ok(match system {
            System::Ferry => Running::Ferry(ferry::FerryServer::start(ferry_binary).await?),
            System::FerryRedis => {
                Running::FerryRedis(ferry_redis::FerryOnRedis::start(ferry_binary).await?)
            }
            System::Mosquitto => Running::Mosquitto(mosquitto::Mosquitto::start().await?),
            System::Nats => Running::Nats(nats::Nats::start().await?),
            System::Redis => Running::Redis(redis::Redis::start().await?),
        })
    }

    /// The server process id.
    pub fn pid(&self) -> u32 {
        match self {
            Running::Ferry(s) => s.pid(),
            Running::FerryRedis(s) => s.pid(),
            Running::Mosquitto(s) => s.pid(),
            Running::Nats(s) => s.pid(),
            Running::Redis(s) => s.pid(),
        }
    }

    /// The process whose fsyncs make an ack durable: the server itself, but Redis for Ferry on Redis.
    pub fn durable_pid(&self) -> u32 {
        match self {
            Running::FerryRedis(s) => s.store_pid(),
            other => other.pid(),
        }
    }

    /// Closed-loop acked sends.
    pub async fn throughput(&self, p: &Params) -> anyhow::Result<Counted> {
        match self {
            Running::Ferry(s) => s.throughput(p).await,
            Running::FerryRedis(s) => s.throughput(p).await,
            Running::Mosquitto(s) => s.throughput(p).await,
            Running::Nats(s) => s.throughput(p).await,
            Running::Redis(s) => s.throughput(p).await,
        }
    }

    /// Open-loop send→deliver at `rate`; None for Redis (a store, it delivers nothing).
    pub async fn latency(&self, p: &Params, rate: f64) -> anyhow::Result<Option<Delivered>> {
        Ok(Some(match self {
            Running::Ferry(s) => s.latency(p, rate).await?,
            Running::FerryRedis(s) => s.latency(p, rate).await?,
            Running::Mosquitto(s) => s.latency(p, rate).await?,
            Running::Nats(s) => s.latency(p, rate).await?,
            Running::Redis(_) => return Ok(None),
        }))
    }

    /// One sender, `members - 1` receivers; None for Redis.
    pub async fn fanout(&self, p: &Params, members: usize) -> anyhow::Result<Option<Delivered>> {
        Ok(Some(match self {
            Running::Ferry(s) => s.fanout(p, members).await?,
            Running::FerryRedis(s) => s.fanout(p, members).await?,
            Running::Mosquitto(s) => s.fanout(p, members).await?,
            Running::Nats(s) => s.fanout(p, members).await?,
            Running::Redis(_) => return Ok(None),
        }))
    }
}

//! One handle to Redis, whether a single instance or a Redis Cluster.
//!
//! Everything Ferry keeps in Redis is hash-tagged so that each script touches one slot; the same commands
//! therefore run unchanged on both topologies. [`Redis`] hides which one is in use: a single instance
//! goes through a reconnecting [`ConnectionManager`], a cluster through the slot-aware
//! [`ClusterConnection`] (which follows MOVED/ASK and refreshes slots after a failover).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, Value};

use crate::ClusterError;

/// Longest wait for one Redis answer; a Redis that does not answer within it counts as away.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a TCP connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is: the URLs given with `--redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One instance (`redis://host:port`).
    Single(String),
    /// A Redis Cluster, reached through any of these nodes (`redis+cluster://host:port`, or several URLs).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Reads `--redis` values: one plain URL is a single instance; several URLs, or any URL with the
    /// `redis+cluster://` scheme, name the seed nodes of a cluster.
    pub fn from_urls(urls: &[String]) -> Result<RedisTarget, ClusterError> {
        let Some(first) = urls.first() else {
            return Err(ClusterError::Config("no Redis URL given".into()));
        };
        let is_cluster = urls.len() > 1 || urls.iter().any(|u| u.starts_with("redis+cluster://"));
        let plain = |u: &String| match u.strip_prefix("redis+cluster://") {
            Some(rest) => format!("redis://{rest}"),
            None => u.clone(),
        };
        for url in urls {
            let url = plain(url);
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(ClusterError::Config(format!(
                    "{url}: expected redis://, rediss:// or redis+cluster://"
                )));
            }
        }
        Ok(if is_cluster {
            RedisTarget::Cluster(urls.iter().map(plain).collect())
        } else {
            RedisTarget::Single(first.clone())
        })
    }
}

/// A cloneable connection to Redis (cheap to clone; clones share the underlying connection).
#[derive(Clone)]
pub enum Redis {
    /// A single instance.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Redis::Single(_) => f.write_str("Redis::Single"),
            Redis::Cluster(_) => f.write_str("Redis::Cluster"),
        }
    }
}

impl Redis {
    /// Connects to `target` for commands (no pub/sub).
    pub async fn connect(target: &RedisTarget) -> Result<Redis, ClusterError> {
        Self::connect_with_push(target, None).await
    }

    /// Connects with RESP3 and hands every push message (pub/sub) to `push`. On a single instance the
    /// subscriptions are restored after a reconnect.
    pub async fn connect_with_push(
        target: &RedisTarget,
        push: Option<PushHandler>,
    ) -> Result<Redis, ClusterError> {
        match target {
            RedisTarget::Single(url) => {
                let url = if push.is_some() {
                    with_resp3(url)
                } else {
                    url.clone()
                };
                let client = redis::Client::open(url)?;
                let mut config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                if let Some(push) = push {
                    config = config
                        .set_push_sender(move |info| push(info))
                        .set_automatic_resubscription();
                }
                Ok(Redis::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            RedisTarget::Cluster(urls) => {
                let mut builder = ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(3)
                    .max_retry_wait(500);
                if let Some(push) = push {
                    builder = builder
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .push_sender(move |info| push(info));
                }
                let client = builder.build()?;
                Ok(Redis::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// True for a Redis Cluster (pub/sub is then sharded: `SPUBLISH`/`SSUBSCRIBE`).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_))
    }
}

/// Receives pub/sub push messages. It must not block (it runs inside the connection's reader); a full
/// queue drops the message, which the caller counts.
pub type PushHandler = std::sync::Arc<dyn Fn(PushInfo) -> Result<(), PushDropped> + Send + Sync>;

/// A push message that could not be queued.
#[derive(Debug, Clone, Copy)]
pub struct PushDropped;

fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Redis::Single(c) => c.req_packed_command(cmd),
            Redis::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Redis::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Redis::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Redis::Single(c) => c.get_db(),
            Redis::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_the_topology() {
        let one = vec!["redis://127.0.0.1:6379".to_owned()];
        assert_eq!(
            RedisTarget::from_urls(&one).unwrap(),
            RedisTarget::Single(one[0].clone())
        );
        let tagged = vec!["redis+cluster://127.0.0.1:7000".to_owned()];
        assert_eq!(
            RedisTarget::from_urls(&tagged).unwrap(),
            RedisTarget::Cluster(vec!["redis://127.0.0.1:7000".into()])
        );
        let several = vec!["redis://a:1".to_owned(), "redis://b:2".to_owned()];
        assert!(matches!(
            RedisTarget::from_urls(&several).unwrap(),
            RedisTarget::Cluster(v) if v.len() == 2
        ));
        assert!(RedisTarget::from_urls(&[]).is_err());
        assert!(RedisTarget::from_urls(&["http://x".to_owned()]).is_err());
        assert_eq!(with_resp3("redis://a:1"), "redis://a:1?protocol=resp3");
        assert_eq!(
            with_resp3("redis://a:1/?x=1"),
            "redis://a:1/?x=1&protocol=resp3"
        );
    }
}

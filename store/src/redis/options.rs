//! [`RedisStoreOptions`] and the topology its URLs select.

use std::time::Duration;

use crate::StoreError;

/// Tuning and location of a [`RedisStore`](super::RedisStore).
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// Where Redis is. One `redis://` URL = a single instance; several URLs, or a `redis+cluster://` URL,
    /// = Redis Cluster (the URLs are seed nodes; the rest of the cluster is discovered).
    pub urls: Vec<String>,
    /// How long a (conversation, sender, client_msg_id) is remembered for dedupe. Default 7 days
    /// (FERRY-MSG-10). Also the TTL of each dedupe record, so Redis frees them by itself.
    pub dedupe_window: Duration,
    /// Refuse to open unless every master runs `appendonly yes` + `appendfsync always`. Default false
    /// (a loud warning instead).
    pub require_durable: bool,
    /// Prefix of every key, so several deployments can share one Redis. Must not contain `{` or `}`
    /// (the hash tag that follows it must be the first one in the key). Default `ferry:`.
    pub key_prefix: String,
    /// Per-conversation retention: keep at most this many newest messages (`None` = unlimited, the
    /// default). Trimmed history is reported through the membership's `first_seq`.
    pub retention_max_messages: Option<u64>,
    /// Per-conversation retention by age: messages whose server time is older than this, measured from
    /// the server time of each new message in the conversation, are trimmed by that append (`None` =
    /// unlimited, the default). Lazy: a conversation nobody writes to keeps its history, which costs
    /// no growth. Trimmed history is reported through `first_seq` like the count rule's.
    pub retention_max_age: Option<Duration>,
    /// Most appends sent to Redis in one pipeline. Default 256.
    pub max_pipeline: usize,
    /// Connections (per Redis node) the append lanes are spread over; a conversation's lane always
    /// uses the same one, so its appends stay in order. Redis reads at most 16 KiB from a connection
    /// per event-loop turn, and with `appendfsync always` each turn is one fsync: a single connection
    /// capped the appends per fsync at ~30 (of ~500 bytes each). Default 8.
    pub append_connections: usize,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            urls: Vec::new(),
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            require_durable: false,
            key_prefix: "ferry:".to_owned(),
            retention_max_messages: None,
            retention_max_age: None,
            max_pipeline: 256,
            append_connections: 8,
        }
    }
}

impl RedisStoreOptions {
    /// Options for the given URLs, everything else default.
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisStoreOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            ..RedisStoreOptions::default()
        }
    }
}

/// Single instance or cluster, with URLs the `redis` crate understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topology {
    Single(String),
    Cluster(Vec<String>),
}

const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Checks the options and decides the topology; bad input is [`StoreError::Invalid`] naming the field.
pub(crate) fn topology(options: &RedisStoreOptions) -> Result<Topology, StoreError> {
    if options.key_prefix.contains(['{', '}']) {
        return Err(StoreError::Invalid(format!(
            "key_prefix {:?} must not contain '{{' or '}}'",
            options.key_prefix
        )));
    }
    if options.dedupe_window.is_zero() {
        return Err(StoreError::Invalid("dedupe_window must not be zero".into()));
    }
    if options.retention_max_messages == Some(0) {
        return Err(StoreError::Invalid(
            "retention_max_messages must be at least 1 (None = unlimited)".into(),
        ));
    }
    if options
        .retention_max_age
        .is_some_and(|age| age.as_millis() == 0)
    {
        return Err(StoreError::Invalid(
            "retention_max_age must be at least 1 ms (None = unlimited)".into(),
        ));
    }
    let mut cluster = options.urls.len() > 1;
    let mut urls = Vec::with_capacity(options.urls.len());
    for url in &options.urls {
        let url = match url.strip_prefix(CLUSTER_SCHEME) {
            Some(rest) => {
                cluster = true;
                format!("redis://{rest}")
            }
            None if url.starts_with("redis://") || url.starts_with("rediss://") => url.clone(),
            None => {
                return Err(StoreError::Invalid(format!(
                    "redis URL {url:?} must start with redis://, rediss:// or {CLUSTER_SCHEME}"
                )))
            }
        };
        urls.push(url);
    }
    match (cluster, urls.pop()) {
        (_, None) => Err(StoreError::Invalid("no redis URL given".into())),
        (false, Some(url)) => Ok(Topology::Single(url)),
        (true, Some(url)) => {
            urls.push(url);
            Ok(Topology::Cluster(urls))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(urls: &[&str]) -> Result<Topology, StoreError> {
        topology(&RedisStoreOptions::new(urls.iter().copied()))
    }

    #[test]
    fn urls_select_the_topology() {
        assert_eq!(
            topo(&["redis://127.0.0.1:6379"]).unwrap(),
            Topology::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            topo(&["redis+cluster://127.0.0.1:7000"]).unwrap(),
            Topology::Cluster(vec!["redis://127.0.0.1:7000".into()])
        );
        assert_eq!(
            topo(&["redis://a:1", "redis://b:2"]).unwrap(),
            Topology::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
    }

    #[test]
    fn bad_options_are_named() {
        assert!(matches!(topo(&[]), Err(StoreError::Invalid(m)) if m.contains("no redis URL")));
        assert!(
            matches!(topo(&["http://x"]), Err(StoreError::Invalid(m)) if m.contains("http://x"))
        );
        let options = RedisStoreOptions {
            key_prefix: "a{b".into(),
            ..RedisStoreOptions::new(["redis://x"])
        };
        assert!(
            matches!(topology(&options), Err(StoreError::Invalid(m)) if m.contains("key_prefix"))
        );
        let options = RedisStoreOptions {
            retention_max_messages: Some(0),
            ..RedisStoreOptions::new(["redis://x"])
        };
        assert!(
            matches!(topology(&options), Err(StoreError::Invalid(m)) if m.contains("retention"))
        );
        let options = RedisStoreOptions {
            retention_max_age: Some(Duration::from_micros(999)),
            ..RedisStoreOptions::new(["redis://x"])
        };
        assert!(
            matches!(topology(&options), Err(StoreError::Invalid(m)) if m.contains("retention_max_age"))
        );
    }
}

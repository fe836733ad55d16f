//! The stores the suite runs against. Each fixture opens "the same store" again (for reopen cases)
//! and "another store".

use std::time::Duration;

use ferry_store::{EmbeddedStore, EmbeddedStoreOptions, RedisStore, RedisStoreOptions, Store};
use ferry_test_support::redis::{RedisCluster, RedisServer};

/// Opens stores of one kind for one test case.
pub trait Fixture: Sized {
    /// The store type.
    type Store: Store;

    /// Whether the store returns the members with an append ([`ferry_store::Appended::members`]).
    const APPEND_RETURNS_MEMBERS: bool = true;

    /// The store under test, with default options (opening again reaches the same data).
    async fn open(&self) -> Self::Store {
        self.open_with_dedupe_window(Duration::from_secs(7 * 24 * 3600))
            .await
    }

    /// The store under test with a given dedupe window.
    async fn open_with_dedupe_window(&self, window: Duration) -> Self::Store;

    /// A different store (its own data).
    async fn open_other(&self) -> Self::Store;
}

/// The embedded store in a temp dir.
pub struct Embedded {
    dir: tempfile::TempDir,
    other: tempfile::TempDir,
}

impl Embedded {
    pub async fn new() -> Self {
        Embedded {
            dir: tempfile::tempdir().unwrap(),
            other: tempfile::tempdir().unwrap(),
        }
    }
}

impl Fixture for Embedded {
    const APPEND_RETURNS_MEMBERS: bool = false;
    type Store = EmbeddedStore;

    async fn open_with_dedupe_window(&self, window: Duration) -> EmbeddedStore {
        let options = EmbeddedStoreOptions {
            dedupe_window: window,
            ..EmbeddedStoreOptions::default()
        };
        EmbeddedStore::open(self.dir.path(), options).unwrap()
    }

    async fn open_other(&self) -> EmbeddedStore {
        EmbeddedStore::open(self.other.path(), EmbeddedStoreOptions::default()).unwrap()
    }
}

async fn open_redis(urls: Vec<String>, prefix: &str, window: Duration) -> RedisStore {
    let options = RedisStoreOptions {
        dedupe_window: window,
        key_prefix: prefix.to_owned(),
        require_durable: true,
        ..RedisStoreOptions::new(urls)
    };
    RedisStore::open(options).await.unwrap()
}

/// A `RedisStore` on one real `redis-server`; "another store" is another key prefix.
pub struct RedisSingle {
    server: RedisServer,
}

impl RedisSingle {
    pub async fn new() -> Self {
        RedisSingle {
            server: tokio::task::spawn_blocking(RedisServer::start)
                .await
                .unwrap(),
        }
    }
}

impl Fixture for RedisSingle {
    type Store = RedisStore;

    async fn open_with_dedupe_window(&self, window: Duration) -> RedisStore {
        open_redis(vec![self.server.url()], "ferry:", window).await
    }

    async fn open_other(&self) -> RedisStore {
        open_redis(vec![self.server.url()], "other:", Duration::from_secs(60)).await
    }
}

/// A `RedisStore` on a real 3-master Redis Cluster.
pub struct RedisClustered {
    cluster: RedisCluster,
}

impl RedisClustered {
    pub async fn new() -> Self {
        RedisClustered {
            cluster: tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
                .await
                .unwrap(),
        }
    }
}

impl Fixture for RedisClustered {
    type Store = RedisStore;

    async fn open_with_dedupe_window(&self, window: Duration) -> RedisStore {
        open_redis(self.cluster.urls(), "ferry:", window).await
    }

    async fn open_other(&self) -> RedisStore {
        open_redis(vec![self.cluster.url()], "other:", Duration::from_secs(60)).await
    }
}

//! Several ferry-server nodes sharing one Redis (or a Redis Cluster), in-process on free loopback ports.
//! The nodes share one identity the way an operator sets a cluster up: the first node creates the
//! certificate, key and token secret; the others get copies of them in their data dirs.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_interop::driver::Target;
use ferry_server::{ServerHandle, Settings};
use ferry_test_support::redis::{RedisCluster, RedisServer};

use crate::test_settings;

/// The Redis a test cluster runs on; kept alive as long as the cluster.
pub enum Backend {
    /// One redis-server.
    Single(RedisServer),
    /// A Redis Cluster.
    Cluster(RedisCluster),
}

impl Backend {
    /// One redis-server (AOF always).
    pub fn single() -> Backend {
        Backend::Single(RedisServer::start())
    }

    /// A 3-master Redis Cluster.
    pub fn cluster() -> Backend {
        Backend::Cluster(RedisCluster::start(3, 0))
    }

    /// The `--redis` URLs of this backend.
    pub fn urls(&self) -> Vec<String> {
        match self {
            Backend::Single(s) => vec![s.url()],
            Backend::Cluster(c) => c.urls(),
        }
    }
}

/// One node of a test cluster.
pub struct Node {
    /// The running server.
    pub handle: ServerHandle,
    /// A client endpoint trusting the cluster's certificate.
    pub target: Target,
    _dir: tempfile::TempDir,
}

/// A cluster of nodes on one backend.
pub struct TestCluster {
    /// The nodes, `n1`, `n2`, ...
    pub nodes: Vec<Node>,
    /// Settings of each node as started (to restart one).
    pub settings: Vec<Settings>,
    /// The Redis under the cluster.
    pub backend: Backend,
}

/// Files that make the nodes one cluster to clients: the same certificate and token secret.
const IDENTITY: [&str; 3] = ["cert.pem", "key.pem", ferry_server::server::SECRET_FILE];

impl TestCluster {
    /// Starts `nodes` nodes on `backend`; `adjust` may change each node's settings.
    pub async fn start(
        backend: Backend,
        nodes: usize,
        adjust: impl Fn(&mut Settings),
    ) -> TestCluster {
        crate::init_logging();
        static PREFIX: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "t{}-{}",
            std::process::id(),
            PREFIX.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            settings: Vec::new(),
            backend,
        };
        for i in 1..=nodes {
            let dir = tempfile::tempdir().expect("temp dir");
            if let Some(first) = cluster.settings.first() {
                copy_identity(&first.data_dir, dir.path());
            }
            let mut settings = test_settings(dir.path());
            settings.node_id = format!("n{i}");
            settings.cluster.redis = cluster.backend.urls();
            settings.cluster.key_prefix = prefix.clone();
            adjust(&mut settings);
            let node = start_node(settings.clone(), dir).await;
            cluster.settings.push(settings);
            cluster.nodes.push(node);
        }
        cluster
    }

    /// A token valid on every node.
    pub fn token(&self, user: &str, device: &str) -> String {
        self.nodes[0]
            .handle
            .mint_token(user, device, Duration::from_secs(3600))
    }

    /// The QUIC addresses of the nodes, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.handle.local_addr().to_string())
            .collect()
    }

    /// The certificate every node presents.
    pub fn ca(&self) -> &Path {
        self.nodes[0].handle.ca_path()
    }
}

/// Starts one node with `settings` in `dir`.
pub async fn start_node(settings: Settings, dir: tempfile::TempDir) -> Node {
    let handle = ferry_server::start(settings).await.expect("node starts");
    let target = Target::new(handle.local_addr(), handle.ca_path()).expect("client endpoint");
    Node {
        handle,
        target,
        _dir: dir,
    }
}

/// Copies the certificate, key and token secret of `from` into `to`.
pub fn copy_identity(from: &Path, to: &Path) {
    for name in IDENTITY {
        std::fs::copy(from.join(name), to.join(name))
            .unwrap_or_else(|e| panic!("copying {name} into a node's data dir: {e}"));
    }
}

//! The node harness of the cluster fault tests: `ferry-server run` processes in cluster mode on port 0,
//! started with a shared identity, killed, drained.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use ferry_client::{BackoffConfig, ClientBuilder};
use ferry_server::auth::TokenSecret;
use ferry_tests::cluster::copy_identity;
use ferry_tests::process::{workspace_binary, ServerProcess};

/// One `ferry-server run` process in cluster mode.
pub(crate) struct NodeProcess {
    server: ServerProcess,
    pub(crate) dir: tempfile::TempDir,
}

/// How to start a node: its id, the Redis, the key prefix of the test, whose identity to copy.
fn node_command(id: &str, redis: &[String], prefix: &str, dir: &Path) -> Command {
    let mut command = Command::new(workspace_binary("ferry-server"));
    command
        .arg("run")
        .arg("--data-dir")
        .arg(dir)
        // Port 0: the node binds free ports and reports (and advertises) what it bound; probing for a
        // free port first races with every other test binding ports meanwhile.
        .args(["--listen", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0"])
        .args(["--node-id", id])
        .args(redis.iter().flat_map(|url| ["--redis", url.as_str()]))
        .env("FERRY_CLUSTER_KEY_PREFIX", prefix)
        .env("RUST_LOG", ferry_tests::process::server_log_filter())
        .stderr(Stdio::piped());
    command
}

impl NodeProcess {
    /// Starts node `id` (with the identity of `identity`'s data dir, if given) and waits for its
    /// "listening" line. Returns the exit code and stderr instead if it exits first.
    pub(crate) fn start(
        id: &str,
        redis: &[String],
        prefix: &str,
        identity: Option<&NodeProcess>,
    ) -> Result<NodeProcess, (Option<i32>, String)> {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(first) = identity {
            copy_identity(first.dir.path(), dir.path());
        }
        let server = ServerProcess::spawn(&mut node_command(id, redis, prefix, dir.path()))?;
        Ok(NodeProcess { server, dir })
    }

    /// The QUIC address the node listens on (and advertises).
    pub(crate) fn quic(&self) -> SocketAddr {
        self.server.addr
    }

    pub(crate) fn kill9(&mut self) {
        self.server.kill9();
    }

    /// SIGTERM (drain), then the exit code (bounded wait).
    pub(crate) fn terminate(&mut self) -> Option<i32> {
        self.server.terminate()
    }

    pub(crate) fn token(&self, user: &str, device: &str) -> String {
        let secret = TokenSecret::load(&self.dir.path().join(ferry_server::server::SECRET_FILE))
            .expect("token secret");
        secret.mint(user, device, Duration::from_secs(3600), SystemTime::now())
    }
}

/// A key prefix of its own per test, so tests sharing nothing never see each other's keys.
pub(crate) fn prefix(test: &str) -> String {
    format!("f{}-{test}", std::process::id())
}

/// Starts `n` nodes n1..=n<n> on `redis`, sharing the first node's identity.
pub(crate) fn start_nodes(n: usize, redis: &[String], prefix: &str) -> Vec<NodeProcess> {
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for i in 1..=n {
        let node = NodeProcess::start(&format!("n{i}"), redis, prefix, nodes.first())
            .unwrap_or_else(|(code, err)| panic!("n{i} exited with {code:?}: {err}"));
        nodes.push(node);
    }
    nodes
}

/// `builder` as a client of the cluster whose identity `identity` holds, for `user`/`device`, knowing
/// `endpoints` only, with the short connect timeout and backoff of the failover tests. The caller adds
/// the store path (and any heartbeat tuning).
pub(crate) fn client_of(
    builder: ClientBuilder,
    identity: &NodeProcess,
    endpoints: &[SocketAddr],
    user: &str,
    device: &str,
) -> ClientBuilder {
    builder
        .endpoints(endpoints.iter().map(SocketAddr::to_string))
        .ca_file(identity.dir.path().join("cert.pem"))
        .token(identity.token(user, device))
        .device_id(device)
        .connect_timeout(Duration::from_secs(1))
        .backoff(BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        })
}

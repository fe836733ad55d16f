//! Real `redis-server` processes for tests: one instance, or a Redis Cluster.
//!
//! Every server runs on 127.0.0.1 on a free port, in its own temporary directory, with `appendonly yes`
//! and `appendfsync always` (Ferry's durable setting) and no RDB snapshots, so what survives a kill -9
//! is exactly what the AOF holds. Every wait is bounded; on failure the helpers panic with the reason
//! and the tail of the server's log. Processes are killed when their handle is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after start (AOF replay included).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a new cluster may take to reach `cluster_state:ok` on every node.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
/// Attempts at finding a free port that stays free until the server binds it.
const PORT_ATTEMPTS: usize = 5;

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("no free loopback port");
    listener
        .local_addr()
        .expect("bound listener has an address")
        .port()
}

/// Runs `redis-cli -p port args...`; panics if redis-cli cannot run at all.
fn cli(port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-cli ({e}); install redis-tools (scripts/test.sh does)")
        })
}

/// A `redis-server` process on a loopback port with its own data directory.
#[derive(Debug)]
pub struct RedisServer {
    dir: tempfile::TempDir,
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a durable single instance (`appendonly yes`, `appendfsync always`). Panics if it cannot.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts an instance with extra `redis-server` arguments (e.g. `["--appendfsync", "everysec"]`),
    /// given after the defaults so they override them. Panics if it cannot start.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("ferry-redis-")
            .tempdir()
            .expect("cannot create a temp dir for redis-server");
        let mut server = RedisServer {
            dir,
            port: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        let mut failures = Vec::new();
        // A port found free can be taken before redis binds it; try a few.
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(reason) => failures.push(reason),
            }
        }
        panic!("redis-server did not start: {}", failures.join("; "));
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Spawns the process on `self.port` and waits until it answers PING.
    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().expect("temp dir path is UTF-8");
        let log = self.log_path();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--dir", dir])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args([
                "--daemonize",
                "no",
                "--logfile",
                log.to_str().expect("UTF-8"),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run redis-server ({e}); install redis-server (scripts/test.sh does)"
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {port} exited ({status}):\n{}",
                    self.log_tail()
                ));
            }
            // PING answers LOADING while the AOF is replayed; wait for PONG.
            let out = cli(self.port, &["PING"]);
            if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(format!(
                    "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                ));
            }
            sleep(POLL);
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (AOF, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, and wait for the process to be gone. A no-op if it is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process (if running) and starts it again on the same port and data directory, so it
    /// replays its AOF. Panics if it does not come back.
    pub fn restart(&mut self) {
        self.kill9();
        // The port was just released by a dead process; nothing else should grab it, but try again
        // briefly in case the kernel has not let go of it yet.
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            match self.spawn() {
                Ok(()) => return,
                Err(reason) => failures.push(reason),
            }
            sleep(Duration::from_millis(200));
        }
        panic!("redis-server did not restart: {}", failures.join("; "));
    }

    /// Runs a command through `redis-cli` and returns its output; panics if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = cli(self.port, args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && !stdout.starts_with("ERR"),
            "redis-cli {args:?} on port {} failed: {stdout}{}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `FLUSHALL`: Redis loses everything (as after a restart without persistence).
    pub fn flushall(&self) {
        let out = self.cli(&["FLUSHALL"]);
        assert_eq!(out.trim(), "OK", "FLUSHALL answered {out}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Redis Cluster of real `redis-server --cluster-enabled yes` processes, created with
/// `redis-cli --cluster create`. All processes are killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 3, as Redis Cluster requires) masters with `replicas_per_master`
    /// replicas each and a 1 s `cluster-node-timeout`, and waits for `cluster_state:ok`. Panics if it
    /// cannot.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        RedisCluster::start_with_node_timeout(masters, replicas_per_master, Duration::from_secs(1))
    }

    /// As [`RedisCluster::start`], with the given `cluster-node-timeout` (failure detection time).
    pub fn start_with_node_timeout(
        masters: usize,
        replicas_per_master: usize,
        node_timeout: Duration,
    ) -> RedisCluster {
        assert!(
            masters >= 3,
            "Redis Cluster needs at least 3 masters, not {masters}"
        );
        let timeout = node_timeout.as_millis().to_string();
        let count = masters * (1 + replicas_per_master);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                    // A replica promotes itself however long its link to the master was down: right
                    // after `--cluster create` the first sync may still be pending, and the default
                    // factor would leave a killed master's slots uncovered for good.
                    "--cluster-replica-validity-factor",
                    "0",
                    // The first full sync starts at once instead of waiting 5 s for more replicas.
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let replicas = replicas_per_master.to_string();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        let out = cli(nodes[0].port(), &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits (bounded) until every node reports `cluster_state:ok` with all slots assigned and every
    /// replica's link to its master is up (so a test that kills a master kills one with a live replica).
    fn wait_ok(&self) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for node in &self.nodes {
            loop {
                let info = String::from_utf8_lossy(&cli(node.port(), &["CLUSTER", "INFO"]).stdout)
                    .into_owned();
                let replication = node.cli(&["INFO", "replication"]);
                let linked = !replication.contains("role:slave")
                    || replication.contains("master_link_status:up");
                if info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && linked
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} not ok within {CLUSTER_TIMEOUT:?}:\n{info}",
                    node.port()
                );
                sleep(POLL);
            }
        }
    }

    /// `redis://` URLs of every node (seed list for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `redis+cluster://127.0.0.1:<port>` of the first node.
    pub fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.nodes[0].port())
    }

    /// The nodes, masters and replicas in creation order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to the nodes (to kill or restart one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// `FLUSHALL` on every master (replicas follow).
    pub fn flushall(&self) {
        for node in &self.nodes {
            let role = node.cli(&["ROLE"]);
            if role.starts_with("master") {
                node.flushall();
            }
        }
    }
}

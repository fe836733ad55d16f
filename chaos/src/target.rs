//! What the chaos run attacks: a [`Target`] is the server side of the scenario. [`SingleNode`] is
//! one `ferry-server run` child process on the embedded store; [`crate::cluster_target::Cluster`] is
//! several nodes on one `redis-server` (node kills and pauses, Redis kills, FLUSHALL).
//!
//! The data dir of the single node lives on a size-limited tmpfs when the machine allows mounting
//! one (we are root in CI), so that [`Target::fill_disk`] is a real ENOSPC for the server; otherwise
//! disk-full faults are not scheduled and the report says so.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::node::{io, NodeProcess};

/// Why a target operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Spawning or signalling a process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A server did not print its listening line in time, or printed something unexpected.
    #[error("ferry-server did not start: {0}")]
    Start(String),
    /// `redis-server` did not start, or did not answer as expected.
    #[error("redis-server: {0}")]
    Redis(String),
    /// Minting a token failed.
    #[error("ferry-server token failed: {0}")]
    Token(String),
    /// The fault does not exist for this target (a bug in the schedule if it is ever asked for).
    #[error("{fault} is not a fault of the {target} target")]
    Unsupported {
        /// The fault asked for.
        fault: &'static str,
        /// The target's name.
        target: &'static str,
    },
    /// A node index out of range.
    #[error("no node {0}")]
    NoNode(usize),
}

/// The server side of a chaos run.
pub trait Target: Send {
    /// The target's name for the report (`single-node`, `cluster`).
    fn name(&self) -> &'static str;
    /// Addresses clients (through a proxy each) talk to: one per node.
    fn endpoints(&self) -> Vec<SocketAddr>;
    /// CA file clients trust.
    fn ca(&self) -> &Path;
    /// A token for `device` of `user`.
    fn token(&self, user: &str, device: &str) -> Result<String, TargetError>;
    /// SIGKILL of node `node`, then start it again on the same data and address.
    fn kill_restart(&mut self, node: usize) -> Result<(), TargetError>;
    /// SIGSTOP of node `node`.
    fn pause(&mut self, node: usize) -> Result<(), TargetError>;
    /// SIGCONT of node `node` (a no-op unless paused).
    fn resume(&mut self, node: usize) -> Result<(), TargetError>;
    /// Whether disk-full faults can be injected, and how (for the report).
    fn disk_full_mode(&self) -> String;
    /// Fills the data dir's file system.
    fn fill_disk(&mut self) -> Result<(), TargetError>;
    /// Frees what [`Target::fill_disk`] took.
    fn free_disk(&mut self) -> Result<(), TargetError>;
    /// SIGKILL of the shared `redis-server` (it stays down until [`Target::redis_restart`]).
    fn redis_kill(&mut self) -> Result<(), TargetError>;
    /// Starts the shared `redis-server` again on the same AOF and port (a no-op when it runs).
    fn redis_restart(&mut self) -> Result<(), TargetError>;
    /// `FLUSHALL` on the shared Redis: all history is lost (the store and every conversation change
    /// epoch).
    fn flushall(&mut self) -> Result<(), TargetError>;
    /// Restarts servers that exited on their own (a crash the run did not cause); returns their exit
    /// statuses.
    fn restart_if_dead(&mut self) -> Result<Vec<String>, TargetError>;
    /// Stops everything and releases the data dirs.
    fn shutdown(&mut self);
}

/// Mints a token with `binary token` on `data_dir` (whose `token.secret` every node shares).
pub fn mint_token(
    binary: &Path,
    data_dir: &Path,
    user: &str,
    device: &str,
) -> Result<String, TargetError> {
    let out = Command::new(binary)
        .arg("token")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--user", user, "--device", device, "--ttl", "7d"])
        .output()
        .map_err(io("ferry-server token"))?;
    if !out.status.success() {
        return Err(TargetError::Token(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Size of the tmpfs under the data dir: room for a soak's store, small enough to fill in a moment.
const TMPFS_SIZE: &str = "128m";
/// The file that takes the free space during a disk-full fault.
const FILLER: &str = "chaos-disk-filler";

/// One `ferry-server run` process on the embedded store.
pub struct SingleNode {
    binary: PathBuf,
    node: NodeProcess,
    tmpfs: Result<(), String>,
}

impl SingleNode {
    /// Starts `binary` (`ferry-server`) on `data_dir`, mounting a tmpfs there first when possible.
    pub fn start(binary: PathBuf, data_dir: PathBuf) -> Result<SingleNode, TargetError> {
        std::fs::create_dir_all(&data_dir).map_err(io(format!("create {}", data_dir.display())))?;
        let tmpfs = mount_tmpfs(&data_dir);
        // The server's stderr goes to `server.log` next to the data dir (appended across restarts).
        let log = data_dir.parent().unwrap_or(&data_dir).join("server.log");
        let node = NodeProcess::start("ferry-server", binary.clone(), data_dir, Vec::new(), log)?;
        Ok(SingleNode {
            binary,
            node,
            tmpfs,
        })
    }

    /// The process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    fn data_dir(&self) -> &Path {
        self.node.data_dir()
    }
}

impl SingleNode {
    fn only(node: usize) -> Result<(), TargetError> {
        if node == 0 {
            Ok(())
        } else {
            Err(TargetError::NoNode(node))
        }
    }

    fn unsupported(fault: &'static str) -> TargetError {
        TargetError::Unsupported {
            fault,
            target: "single-node",
        }
    }
}

impl Target for SingleNode {
    fn name(&self) -> &'static str {
        "single-node"
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        vec![self.node.addr()]
    }

    fn ca(&self) -> &Path {
        self.node.ca()
    }

    fn token(&self, user: &str, device: &str) -> Result<String, TargetError> {
        mint_token(&self.binary, self.data_dir(), user, device)
    }

    fn kill_restart(&mut self, node: usize) -> Result<(), TargetError> {
        Self::only(node)?;
        self.node.kill_restart()
    }

    fn pause(&mut self, node: usize) -> Result<(), TargetError> {
        Self::only(node)?;
        self.node.pause()
    }

    fn resume(&mut self, node: usize) -> Result<(), TargetError> {
        Self::only(node)?;
        self.node.resume()
    }

    fn disk_full_mode(&self) -> String {
        match &self.tmpfs {
            Ok(()) => format!("tmpfs of {TMPFS_SIZE} on the data dir, filled to ENOSPC"),
            Err(why) => format!("not injected: {why}"),
        }
    }

    fn fill_disk(&mut self) -> Result<(), TargetError> {
        if self.tmpfs.is_err() {
            return Ok(());
        }
        let path = self.data_dir().join(FILLER);
        let mut file = std::fs::File::create(&path).map_err(io("create disk filler"))?;
        let chunk = vec![0xa5u8; 1 << 20];
        // Bounded by the mount's size: at most one write per MiB of it (plus slack).
        for _ in 0..1024 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // Then the last partial MiB, page by page (tmpfs allocates pages), so even a small append fails.
        for _ in 0..256 {
            if file.write_all(&chunk[..4096]).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn free_disk(&mut self) -> Result<(), TargetError> {
        match std::fs::remove_file(self.data_dir().join(FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TargetError::Io {
                what: "remove disk filler".into(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn redis_kill(&mut self) -> Result<(), TargetError> {
        Err(Self::unsupported("redis_kill"))
    }

    fn redis_restart(&mut self) -> Result<(), TargetError> {
        // Nothing to restart: calming a run asks every target.
        Ok(())
    }

    fn flushall(&mut self) -> Result<(), TargetError> {
        Err(Self::unsupported("flushall"))
    }

    fn restart_if_dead(&mut self) -> Result<Vec<String>, TargetError> {
        Ok(self.node.restart_if_dead()?.into_iter().collect())
    }

    fn shutdown(&mut self) {
        let _ = self.free_disk();
        self.node.shutdown();
        if self.tmpfs.is_ok() {
            let _ = Command::new("umount")
                .arg(self.node.data_dir())
                .stderr(Stdio::null())
                .status();
            self.tmpfs = Err("unmounted at shutdown".into());
        }
    }
}

impl Drop for SingleNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Mounts a size-limited tmpfs on `dir`; the error says why not (not root, no mount in a container).
fn mount_tmpfs(dir: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

//! What the chaos run attacks: a [`Target`] is the server side of the scenario. [`SingleNode`] is
//! one `ferry-server run` child process on the embedded store; a cluster target (several nodes and
//! `redis-server` processes, with node and Redis kills) implements the same trait later.
//!
//! The data dir of the single node lives on a size-limited tmpfs when the machine allows mounting
//! one (we are root in CI), so that [`Target::fill_disk`] is a real ENOSPC for the server; otherwise
//! disk-full faults are not scheduled and the report says so.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    /// The server did not print its listening line in time, or printed something unexpected.
    #[error("ferry-server did not start: {0}")]
    Start(String),
    /// Minting a token failed.
    #[error("ferry-server token failed: {0}")]
    Token(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TargetError {
    let what = what.into();
    move |source| TargetError::Io { what, source }
}

/// The server side of a chaos run.
pub trait Target: Send {
    /// Address clients (through the proxy) talk to.
    fn endpoint(&self) -> SocketAddr;
    /// CA file clients trust.
    fn ca(&self) -> &Path;
    /// A token for `device` of `user`.
    fn token(&self, user: &str, device: &str) -> Result<String, TargetError>;
    /// SIGKILL, then start again on the same data and address.
    fn kill_restart(&mut self) -> Result<(), TargetError>;
    /// SIGSTOP.
    fn pause(&mut self) -> Result<(), TargetError>;
    /// SIGCONT.
    fn resume(&mut self) -> Result<(), TargetError>;
    /// Whether disk-full faults can be injected, and how (for the report).
    fn disk_full_mode(&self) -> String;
    /// Fills the data dir's file system.
    fn fill_disk(&mut self) -> Result<(), TargetError>;
    /// Frees what [`Target::fill_disk`] took.
    fn free_disk(&mut self) -> Result<(), TargetError>;
    /// Restarts the server if it exited on its own (a crash the run did not cause); returns the exit
    /// status when it did.
    fn restart_if_dead(&mut self) -> Result<Option<String>, TargetError>;
    /// Stops everything and releases the data dir.
    fn shutdown(&mut self);
}

/// How long a starting server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts to start the server (a restart right after a kill may race the old socket's release).
const START_ATTEMPTS: u32 = 5;
/// Size of the tmpfs under the data dir: room for a soak's store, small enough to fill in a moment.
const TMPFS_SIZE: &str = "128m";
/// The file that takes the free space during a disk-full fault.
const FILLER: &str = "chaos-disk-filler";

/// One `ferry-server run` process on the embedded store.
pub struct SingleNode {
    binary: PathBuf,
    data_dir: PathBuf,
    tmpfs: Result<(), String>,
    child: Option<Child>,
    addr: SocketAddr,
    http: SocketAddr,
    ca: PathBuf,
    paused: bool,
}

impl SingleNode {
    /// Starts `binary` (`ferry-server`) on `data_dir`, mounting a tmpfs there first when possible.
    pub fn start(binary: PathBuf, data_dir: PathBuf) -> Result<SingleNode, TargetError> {
        std::fs::create_dir_all(&data_dir).map_err(io(format!("create {}", data_dir.display())))?;
        let tmpfs = mount_tmpfs(&data_dir);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let mut node = SingleNode {
            binary,
            data_dir,
            tmpfs,
            child: None,
            addr: any,
            http: any,
            ca: PathBuf::new(),
            paused: false,
        };
        node.spawn()?;
        Ok(node)
    }

    /// The process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> Result<(), TargetError> {
        let mut last = String::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(300 * u64::from(attempt)));
            }
            match self.spawn_once() {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(TargetError::Start(format!(
            "{START_ATTEMPTS} attempts; last: {last}"
        )))
    }

    fn spawn_once(&mut self) -> Result<(), TargetError> {
        let mut child = Command::new(&self.binary)
            .arg("run")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.addr.to_string()])
            .args(["--http", &self.http.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.log_file()?)
            .spawn()
            .map_err(io(format!("spawn {}", self.binary.display())))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Drains stdout for the process's whole life, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let Ok(line) = rx.recv_timeout(START_TIMEOUT) else {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(TargetError::Start(format!("no listening line ({status})")));
        };
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(key))
                .map(str::to_owned)
                .ok_or_else(|| TargetError::Start(format!("no {key} in {line:?}")))
        };
        let parse = |s: String| {
            s.parse::<SocketAddr>()
                .map_err(|e| TargetError::Start(format!("{s:?}: {e}")))
        };
        // The first start picks free ports; restarts reuse them so the proxy's upstream stays valid.
        self.addr = parse(field("quic=")?)?;
        self.http = parse(field("http=")?)?;
        self.ca = PathBuf::from(field("ca=")?);
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// The server's stderr goes to `server.log` next to the data dir (appended across restarts): its
    /// warnings under faults are expected and would drown the run's own output.
    fn log_file(&self) -> Result<std::fs::File, TargetError> {
        let path = self
            .data_dir
            .parent()
            .unwrap_or(&self.data_dir)
            .join("server.log");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))
    }

    fn signal(&self, signal: libc::c_int) -> Result<(), TargetError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(TargetError::Io {
                what: format!("signal {signal} to ferry-server {pid}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl Target for SingleNode {
    fn endpoint(&self) -> SocketAddr {
        self.addr
    }

    fn ca(&self) -> &Path {
        &self.ca
    }

    fn token(&self, user: &str, device: &str) -> Result<String, TargetError> {
        let out = Command::new(&self.binary)
            .arg("token")
            .arg("--data-dir")
            .arg(&self.data_dir)
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

    fn kill_restart(&mut self) -> Result<(), TargetError> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(io("SIGKILL ferry-server"))?;
            let _ = child.wait();
        }
        self.spawn()
    }

    fn pause(&mut self) -> Result<(), TargetError> {
        self.signal(libc::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), TargetError> {
        self.signal(libc::SIGCONT)?;
        self.paused = false;
        Ok(())
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
        let path = self.data_dir.join(FILLER);
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
        match std::fs::remove_file(self.data_dir.join(FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TargetError::Io {
                what: "remove disk filler".into(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn restart_if_dead(&mut self) -> Result<Option<String>, TargetError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        match child.try_wait().map_err(io("wait for ferry-server"))? {
            None => Ok(None),
            Some(status) => {
                self.child = None;
                self.spawn()?;
                Ok(Some(status.to_string()))
            }
        }
    }

    fn shutdown(&mut self) {
        if self.paused {
            let _ = self.resume();
        }
        let _ = self.free_disk();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.tmpfs.is_ok() {
            let _ = Command::new("umount")
                .arg(&self.data_dir)
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

//! One `ferry-server run` child process that the chaos run kills, pauses and starts again: the single
//! node of [`crate::target::SingleNode`] and each node of [`crate::cluster_target::Cluster`].
//!
//! The first start binds free ports (port 0) and reads them back from the server's listening line;
//! every restart reuses them, so the proxy in front of the node keeps a valid upstream.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::target::TargetError;

/// How long a starting server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts to start the server (a restart right after a kill may race the old socket's release).
const START_ATTEMPTS: u32 = 5;

/// Wraps an I/O error with what was attempted.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TargetError {
    let what = what.into();
    move |source| TargetError::Io { what, source }
}

/// A `ferry-server run` process on one data dir, restartable on the same ports.
pub struct NodeProcess {
    name: String,
    binary: PathBuf,
    data_dir: PathBuf,
    /// Arguments after `run --data-dir DIR --listen A --http B` (cluster flags).
    extra: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    addr: SocketAddr,
    http: SocketAddr,
    ca: PathBuf,
    paused: bool,
}

impl NodeProcess {
    /// Starts `binary` on `data_dir` with `extra` arguments; its stderr is appended to `log`. `name`
    /// names it in errors (`ferry-server`, `node n2`).
    pub fn start(
        name: impl Into<String>,
        binary: PathBuf,
        data_dir: PathBuf,
        extra: Vec<String>,
        log: PathBuf,
    ) -> Result<NodeProcess, TargetError> {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let mut node = NodeProcess {
            name: name.into(),
            binary,
            data_dir,
            extra,
            log,
            child: None,
            addr: any,
            http: any,
            ca: PathBuf::new(),
            paused: false,
        };
        node.spawn()?;
        Ok(node)
    }

    /// The QUIC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate the node serves (clients trust it).
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process (again), retrying a few times.
    pub fn spawn(&mut self) -> Result<(), TargetError> {
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
            "{}: {START_ATTEMPTS} attempts; last: {last}",
            self.name
        )))
    }

    fn spawn_once(&mut self) -> Result<(), TargetError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("open {}", self.log.display())))?;
        let mut child = Command::new(&self.binary)
            .arg("run")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.addr.to_string()])
            .args(["--http", &self.http.to_string()])
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Warnings under faults are expected and would drown the run's own output.
            .stderr(log)
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
            return Err(TargetError::Start(format!(
                "{}: no listening line ({status}); see {}",
                self.name,
                self.log.display()
            )));
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
        self.addr = parse(field("quic=")?)?;
        self.http = parse(field("http=")?)?;
        self.ca = PathBuf::from(field("ca=")?);
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Sends `signal` to the running process (nothing when it is not running).
    pub fn signal(&self, signal: libc::c_int) -> Result<(), TargetError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(TargetError::Io {
                what: format!("signal {signal} to {} ({pid})", self.name),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// SIGKILL (if running) and reap.
    pub fn kill(&mut self) -> Result<(), TargetError> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(io(format!("SIGKILL {}", self.name)))?;
            let _ = child.wait();
        }
        self.paused = false;
        Ok(())
    }

    /// SIGKILL, then start again on the same data and ports.
    pub fn kill_restart(&mut self) -> Result<(), TargetError> {
        self.kill()?;
        self.spawn()
    }

    /// SIGSTOP.
    pub fn pause(&mut self) -> Result<(), TargetError> {
        self.signal(libc::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT (a no-op unless paused).
    pub fn resume(&mut self) -> Result<(), TargetError> {
        if self.paused {
            self.signal(libc::SIGCONT)?;
            self.paused = false;
        }
        Ok(())
    }

    /// Reaps the process if it exited on its own; returns the exit status when it did (the node then
    /// is down until [`NodeProcess::spawn`]).
    pub fn reap_if_dead(&mut self) -> Result<Option<String>, TargetError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        match child
            .try_wait()
            .map_err(io(format!("wait for {}", self.name)))?
        {
            None => Ok(None),
            Some(status) => {
                self.child = None;
                Ok(Some(format!("{}: {status}", self.name)))
            }
        }
    }

    /// Restarts the process if it exited on its own; returns the exit status when it did.
    pub fn restart_if_dead(&mut self) -> Result<Option<String>, TargetError> {
        let exit = self.reap_if_dead()?;
        if exit.is_some() {
            self.spawn()?;
        }
        Ok(exit)
    }

    /// Kills the process (SIGKILL ends a stopped process too).
    pub fn shutdown(&mut self) {
        let _ = self.kill();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.shutdown();
    }
}

//! The cluster target's `redis-server`: one process on a free loopback port in the run's work dir, with
//! `appendonly yes` and `appendfsync always` (Ferry's durable setting: Redis answers a write only once
//! it is fsynced) and no RDB snapshots, so what survives a SIGKILL is exactly what the AOF holds.
//!
//! The run talks to it in RESP over a plain TCP socket (PING, FLUSHALL): two commands do not need a
//! client library, and no `redis-cli` has to be installed beside the server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::node::io;
use crate::target::TargetError;

/// How long a starting server may take to answer PING (AOF replay included).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two PINGs while waiting for a start.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for one command's reply (FLUSHALL of a soak's data is well below this).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a free port for the first start (another process may take a port found free).
const PORT_ATTEMPTS: u32 = 5;

/// A `redis-server` child process that can be killed and started again on the same AOF and port.
pub struct RedisProcess {
    dir: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts `redis-server` with its data in `dir` (created) on a free loopback port; fails with the
    /// log's tail if it cannot.
    pub fn start(dir: PathBuf) -> Result<RedisProcess, TargetError> {
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(io("find a free port for redis-server"))?
                .port();
            let mut redis = RedisProcess {
                dir: dir.clone(),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child: None,
            };
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(TargetError::Redis(format!(
            "did not start in {PORT_ATTEMPTS} attempts: {}",
            failures.join("; ")
        )))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Whether the process runs (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.reap().is_none()
    }

    /// The exit status if the process exited on its own (it is then forgotten).
    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Spawns the process on `self.addr` and waits until it answers PING with PONG.
    fn spawn(&mut self) -> Result<(), TargetError> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no", "--logfile"])
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| TargetError::Redis(format!("cannot run redis-server: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded by the deadline.
        loop {
            if let Some(status) = self.reap() {
                return Err(TargetError::Redis(format!(
                    "exited at start on {} ({status}):\n{}",
                    self.addr,
                    self.log_tail()
                )));
            }
            // PING answers -LOADING while the AOF is replayed.
            if let Ok(reply) = command(self.addr, &["PING"]) {
                if reply == "+PONG" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(TargetError::Redis(format!(
                    "no PONG from {} within {START_TIMEOUT:?}:\n{}",
                    self.addr,
                    self.log_tail()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL and reap (a no-op when not running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same AOF and port (a no-op when it runs).
    pub fn restart(&mut self) -> Result<(), TargetError> {
        if self.is_running() {
            return Ok(());
        }
        self.kill();
        self.spawn()
    }

    /// `FLUSHALL`: Redis loses everything.
    pub fn flushall(&self) -> Result<(), TargetError> {
        let reply = command(self.addr, &["FLUSHALL"])
            .map_err(|e| TargetError::Redis(format!("FLUSHALL: {e}")))?;
        if reply != "+OK" {
            return Err(TargetError::Redis(format!("FLUSHALL answered {reply:?}")));
        }
        Ok(())
    }

    /// The data directory (AOF and log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one command as a RESP array of bulk strings and returns the first line of the reply (a
/// status `+OK`, an error `-ERR ...`); enough for PING and FLUSHALL.
fn command(addr: SocketAddr, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    // Bounded: a status line is short; more than 512 bytes without CRLF is not one.
    while reply.len() < 512 && !reply.ends_with(b"\r\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        reply.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_ping_survives_kill_restart_and_flushes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut redis = RedisProcess::start(dir.path().join("redis")).expect("redis-server starts");
        assert_eq!(command(redis.addr, &["SET", "k", "v"]).expect("SET"), "+OK");
        redis.kill();
        assert!(!redis.is_running());
        assert!(command(redis.addr, &["PING"]).is_err(), "killed");
        redis.restart().expect("restart on the same AOF");
        // appendfsync always: the acknowledged write survived the SIGKILL.
        assert_eq!(command(redis.addr, &["EXISTS", "k"]).expect("EXISTS"), ":1");
        redis.flushall().expect("FLUSHALL");
        assert_eq!(command(redis.addr, &["EXISTS", "k"]).expect("EXISTS"), ":0");
    }
}

//! Peer processes: find a binary (or say how to install it), start it on a free loopback port, wait
//! until it listens, stop it when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a peer may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Process {
    child: Child,
    /// What it is, for messages.
    pub name: &'static str,
}

impl Process {
    /// Its process id (for /proc/PID/status and /proc/PID/stat).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `command` with stdout/stderr in `log_dir/<name>.log`.
    pub fn spawn(
        name: &'static str,
        mut command: Command,
        log_dir: &Path,
    ) -> anyhow::Result<Process> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process { child, name })
    }

    /// Fails if the process has exited already (a bad config shows up here rather than as a timeout).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited at start: {status}", self.name);
        }
        Ok(())
    }

    /// Waits until `addr` accepts TCP connections.
    pub async fn wait_tcp(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            self.check_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{} did not listen on {addr} within {START_TIMEOUT:?}",
            self.name
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port that was free a moment ago (the OS picks it; a race with another process is
/// possible but shows up as a start failure, not a wrong result).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `program` from PATH (or /usr/sbin, where Debian puts mosquitto), or an error saying how to install it.
pub fn find(program: &str, debian_package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{program} not found: install it with `apt-get install -y {debian_package}` \
         (scripts/bench.sh does), or skip this peer with --peers"
    )
}

/// The process's resident set size, KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// User + system CPU time the process used so far, in clock ticks (/proc/PID/stat fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Clock ticks per second (for [`cpu_ticks`]).
pub fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

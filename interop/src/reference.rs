//! The reference implementation as a separate program: finding the `ferry-server` binary and running
//! `ferry-server run` as a child process. The runner links none of the server's code (a conformance
//! tool that reads the wire through the server's own code would share its bugs); it talks to the
//! server only the way any client or operator does — command line, environment, stdout, signals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The name of the reference server's binary.
pub const SERVER_BINARY: &str = "ferry-server";
/// Bound on a server start (its listening line) and on its drain at stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the reference server could not be found, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// No binary next to the runner nor on PATH.
    #[error(
        "no `{0}` binary next to the runner or on PATH: build it (`cargo build --bins`) or pass --server-bin"
    )]
    NotFound(String),
    /// The process could not be started.
    #[error("starting {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process did not print its listening line in time, or printed something else.
    #[error("ferry-server did not report where it listens: {0}")]
    NoListeningLine(String),
    /// Waiting for or signalling the process failed.
    #[error("stopping ferry-server: {0}")]
    Stop(std::io::Error),
}

/// `explicit` if given, else `name` next to the running executable (for a test executable in
/// `target/<profile>/deps`, the directory above, where cargo puts the binaries), else on PATH.
pub fn find_binary(explicit: Option<&Path>, name: &str) -> Result<PathBuf, ReferenceError> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let exe_dirs = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .map(|dir| {
            let above = (dir.file_name() == Some("deps".as_ref()))
                .then(|| dir.parent().map(Path::to_path_buf))
                .flatten();
            std::iter::once(dir).chain(above).collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    exe_dirs
        .into_iter()
        .chain(path_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| ReferenceError::NotFound(name.to_owned()))
}

/// A `ferry-server run` child process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// The CA file clients trust (its self-signed certificate).
    pub ca: PathBuf,
}

impl ServerProcess {
    /// Starts `bin run` on `data_dir`, QUIC on `listen` (port 0 = a free one), with `env` added to its
    /// environment (`FERRY_*` settings), and waits for its listening line.
    pub async fn start(
        bin: &Path,
        data_dir: &Path,
        listen: SocketAddr,
        env: &[(&str, String)],
    ) -> Result<ServerProcess, ReferenceError> {
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .args(["--http", "127.0.0.1:0"])
            // Warnings only, unless the user asked for more: the runner's own output stays readable.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ReferenceError::Spawn {
                path: bin.to_owned(),
                source,
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = child.wait().await.map_err(ReferenceError::Stop)?;
                return Err(ReferenceError::NoListeningLine(format!(
                    "it exited with {status}"
                )));
            }
            Ok(Err(e)) => return Err(ReferenceError::NoListeningLine(e.to_string())),
            Err(_) => {
                return Err(ReferenceError::NoListeningLine(format!(
                    "nothing within {} s",
                    START_TIMEOUT.as_secs()
                )))
            }
        };
        // Keep reading so that the server never blocks on a full stdout pipe; ends with the process.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (addr, ca) = parse_listening_line(&line)?;
        Ok(ServerProcess { child, addr, ca })
    }

    /// The process id while it runs (for a `--drain-cmd` of `kill -TERM <pid>`).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM — the server drains (GoAway to every session) — then waits for it to exit (bounded; it
    /// is killed after that).
    pub async fn stop(mut self) -> Result<(), ReferenceError> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (`id()` is
            // Some only until then), so the pid cannot belong to another process.
            let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            if rc != 0 {
                return Err(ReferenceError::Stop(std::io::Error::last_os_error()));
            }
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.map(|_| ()).map_err(ReferenceError::Stop),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(ReferenceError::Stop(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no exit within {} s of SIGTERM", STOP_TIMEOUT.as_secs()),
                )))
            }
        }
    }
}

/// `ferry-server listening quic=ADDR http=ADDR ca=PATH` → (QUIC address, CA file).
fn parse_listening_line(line: &str) -> Result<(SocketAddr, PathBuf), ReferenceError> {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(key))
            .ok_or_else(|| ReferenceError::NoListeningLine(format!("no {key} in {line:?}")))
    };
    let addr = field("quic=")?
        .parse()
        .map_err(|e| ReferenceError::NoListeningLine(format!("quic address in {line:?}: {e}")))?;
    Ok((addr, PathBuf::from(field("ca=")?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_parses() {
        let (addr, ca) = parse_listening_line(
            "ferry-server listening quic=127.0.0.1:4433 http=127.0.0.1:4480 ca=/d/cert.pem",
        )
        .unwrap();
        assert_eq!(addr, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(ca, PathBuf::from("/d/cert.pem"));
        assert!(parse_listening_line("ferry-server listening http=x ca=y").is_err());
        assert!(parse_listening_line("quic=nonsense ca=y").is_err());
    }

    #[test]
    fn explicit_binary_wins_and_missing_is_an_error() {
        let explicit = Path::new("/opt/ferry-server");
        assert_eq!(find_binary(Some(explicit), "x").unwrap(), explicit);
        assert!(matches!(
            find_binary(None, "ferry-no-such-binary-anywhere"),
            Err(ReferenceError::NotFound(_))
        ));
    }
}

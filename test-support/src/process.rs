//! Running the real `ferry-server` binary as a child process (for tests that kill it).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace (`ferry-server`, `ferry`), next to the test executable's
/// `deps` directory. `scripts/test.sh` builds all binaries before running tests.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as scripts/test.sh does)",
        path.display()
    );
    path
}

/// The `RUST_LOG` of server processes started by tests: `warn`, or `FERRY_TEST_SERVER_LOG` when set
/// (e.g. `FERRY_TEST_SERVER_LOG=ferry_server=debug` to see what a node did in a failing test).
pub fn server_log_filter() -> String {
    std::env::var("FERRY_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into())
}

/// A `ferry-server run` child process.
pub struct ServerProcess {
    child: Child,
    /// QUIC address it listens on.
    pub addr: SocketAddr,
    /// HTTP address of /healthz and /metrics.
    pub http: SocketAddr,
    /// CA file clients trust.
    pub ca: PathBuf,
}

/// Longest a server may take to print its listening line, or to exit after SIGTERM.
const SERVER_WAIT: Duration = Duration::from_secs(60);

impl ServerProcess {
    /// Starts `ferry-server run` on `data_dir` with free ports and waits for its "listening" line.
    pub fn start(data_dir: &Path) -> ServerProcess {
        let mut command = Command::new(workspace_binary("ferry-server"));
        command
            .arg("run")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .env("RUST_LOG", server_log_filter())
            .stderr(Stdio::inherit());
        ServerProcess::spawn(&mut command).unwrap_or_else(|(code, _)| {
            panic!("ferry-server exited with {code:?} before listening")
        })
    }

    /// Spawns `command` (a `ferry-server run` with its stdout to be piped here) and waits (bounded) for
    /// its "listening" line. If it exits first: its exit code and stderr (if `command` piped stderr).
    /// A piped stderr is drained from then on, so a chatty server never blocks on a full pipe.
    pub fn spawn(command: &mut Command) -> Result<ServerProcess, (Option<i32>, String)> {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ferry-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + SERVER_WAIT;
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                if let Some(mut err) = child.stderr.take() {
                    // Into this process's stderr, which the test runner keeps and shows on failure.
                    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::stderr()));
                }
                let field = |key: &str| {
                    line.split_whitespace()
                        .find_map(|part| part.strip_prefix(key))
                        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                        .to_owned()
                };
                return Ok(ServerProcess {
                    addr: field("quic=").parse().expect("quic address"),
                    http: field("http=").parse().expect("http address"),
                    ca: PathBuf::from(field("ca=")),
                    child,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
                return Err((status.code(), stderr));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("ferry-server neither listened nor exited within {SERVER_WAIT:?}");
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL ferry-server");
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + SERVER_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ferry-server did not stop within {SERVER_WAIT:?} of SIGTERM");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

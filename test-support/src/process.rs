//! Running the real `ferry-server` binary as a child process (for tests that kill it).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

impl ServerProcess {
    /// Starts `ferry-server run` on `data_dir` with free ports and waits for its "listening" line.
    pub fn start(data_dir: &Path) -> ServerProcess {
        let mut child = Command::new(workspace_binary("ferry-server"))
            .arg("run")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ferry-server prints its listening line");
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .to_owned()
        };
        ServerProcess {
            addr: field("quic=").parse().expect("quic address"),
            http: field("http=").parse().expect("http address"),
            ca: PathBuf::from(field("ca=")),
            child,
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL ferry-server");
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

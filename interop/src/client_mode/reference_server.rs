//! The reference server of client mode: ferry-server run as a separate process on a temp data dir,
//! restartable on the same port and data (the `goaway` case), with tokens from `ferry-server token`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use crate::reference::{ReferenceError, ServerProcess};
use crate::runner::Verdict;
use crate::tokens::TokenSource;

/// Reference server settings (as `FERRY_*` environment): short heartbeat and idle timeouts so that a
/// dead path is noticed within seconds (the `reconnect` case blackholes the network for longer than
/// the idle timeout), and a short drain so that a restart takes well under a second.
fn reference_env() -> Vec<(&'static str, String)> {
    vec![
        ("FERRY_HEARTBEAT_INTERVAL_MS", "1000".into()),
        ("FERRY_IDLE_TIMEOUT_MS", "4000".into()),
        ("FERRY_DRAIN_GRACE_MS", "500".into()),
    ]
}

/// The reference server: a `ferry-server` process, restartable on the same port and data dir.
pub struct ReferenceServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    process: Mutex<Option<ServerProcess>>,
    tokens: TokenSource,
    /// Its QUIC address (the same after a restart).
    pub addr: SocketAddr,
    /// The CA file clients trust.
    pub ca: PathBuf,
}

impl ReferenceServer {
    /// Starts the `ferry-server` binary at `bin` on a free loopback port and a fresh data dir.
    pub async fn start(bin: &Path) -> anyhow::Result<ReferenceServer> {
        let dir = tempfile::tempdir()?;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let process = ServerProcess::start(bin, dir.path(), any_port, &reference_env()).await?;
        Ok(ReferenceServer {
            addr: process.addr,
            ca: process.ca.clone(),
            tokens: TokenSource::ServerToken {
                bin: bin.to_owned(),
                data_dir: dir.path().to_owned(),
            },
            bin: bin.to_owned(),
            process: Mutex::new(Some(process)),
            dir,
        })
    }

    /// Drains (SIGTERM: GoAway to everyone) and starts again on the same address and data.
    pub async fn restart(&self) -> Result<(), ReferenceError> {
        let mut process = self.process.lock().await;
        if let Some(old) = process.take() {
            old.stop().await?;
        }
        *process = Some(
            ServerProcess::start(&self.bin, self.dir.path(), self.addr, &reference_env()).await?,
        );
        Ok(())
    }

    /// A token valid for an hour, from `ferry-server token`.
    pub async fn token(&self, user: &str, device: &str) -> Result<String, Verdict> {
        self.tokens.token(user, device).await
    }

    /// Stops the server (draining, bounded).
    pub async fn shutdown(&self) {
        if let Some(process) = self.process.lock().await.take() {
            if let Err(e) = process.stop().await {
                tracing::warn!("reference server: {e}");
            }
        }
    }
}

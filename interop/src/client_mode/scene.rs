//! What a client-mode case works with: [`ClientCtx`] (the reference server, the client command) and a
//! [`Scene`] per case (users, conversation, the fault proxy); starting the client with the environment
//! of the contract (interop/README.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::ids;
use ferry_proxy::{Faults, Proxy, ProxyConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::{ClientRun, ReferenceServer};
use crate::driver::{Session, Target};
use crate::runner::Verdict;

/// What one client-mode case gets.
pub struct ClientCtx {
    /// The reference server.
    pub server: Arc<ReferenceServer>,
    /// The client command.
    pub cmd: String,
    /// `FERRY_COUNT`.
    pub count: usize,
    /// Bound on one client invocation.
    pub client_timeout: Duration,
    pub(super) prefix: String,
}

/// One case's users and conversation, and the proxy the client talks through.
pub struct Scene {
    /// The user the client runs as.
    pub user: String,
    /// Its device.
    pub device: String,
    /// The other user of the conversation.
    pub peer: String,
    /// `d:<user>:<peer>` (canonical order).
    pub conversation: String,
    /// The client's state directory.
    pub store: tempfile::TempDir,
    /// The fault proxy between the client and the server.
    pub proxy: Proxy,
    /// A CA file other than the server's (for the certificate case); None = the server's.
    pub ca: Option<PathBuf>,
    /// `FERRY_COUNT` for this case.
    pub count: usize,
}

impl ClientCtx {
    /// Users, conversation and a fresh proxy to the reference server for this case.
    pub async fn scene(&self, faults: Faults) -> Result<Scene, Verdict> {
        self.scene_to(self.server.addr, faults).await
    }

    /// Users, conversation and a fresh proxy to `upstream` (the reference or a scripted server).
    pub async fn scene_to(&self, upstream: SocketAddr, faults: Faults) -> Result<Scene, Verdict> {
        let user = format!("{}-client", self.prefix);
        let peer = format!("{}-peer", self.prefix);
        let conversation = ids::direct_conversation_id(&user, &peer).expect("valid ids");
        let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("literal"), upstream);
        config.seed = rand::random();
        config.faults = faults;
        let proxy = Proxy::start(config)
            .await
            .map_err(|e| Verdict::Fail(format!("proxy: {e}")))?;
        let store = tempfile::tempdir().map_err(|e| Verdict::Fail(format!("temp dir: {e}")))?;
        Ok(Scene {
            user,
            device: "dev1".into(),
            peer,
            conversation,
            store,
            proxy,
            ca: None,
            count: self.count,
        })
    }

    /// Starts the client for `testcase`.
    pub async fn spawn(&self, testcase: &str, scene: &Scene) -> Result<ClientRun, Verdict> {
        let token = self.server.token(&scene.user, &scene.device).await?;
        let ca = scene.ca.clone().unwrap_or_else(|| self.server.ca.clone());
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .env("TESTCASE", testcase)
            .env("FERRY_SERVER", scene.proxy.local_addr().to_string())
            .env("FERRY_SERVER_NAME", "localhost")
            .env("FERRY_CA", &ca)
            .env("FERRY_TOKEN", &token)
            .env("FERRY_USER", &scene.user)
            .env("FERRY_DEVICE", &scene.device)
            .env("FERRY_PEER", &scene.peer)
            .env("FERRY_CONVERSATION", &scene.conversation)
            .env("FERRY_COUNT", scene.count.to_string())
            .env("FERRY_STORE", scene.store.path())
            .env("FERRY_TIMEOUT", self.client_timeout.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that a kill reaches the client itself and not only `sh`: an
            // orphaned client would reconnect and take the connection meant for its restarted self.
            .process_group(0)
            .spawn()
            .map_err(|e| Verdict::Fail(format!("starting the client command: {e}")))?;
        // Bounded: a client that floods stdout is slowed down (pipe backpressure), not buffered forever.
        let (tx, lines) = mpsc::channel(4096);
        let stdout = child.stdout.take().expect("piped stdout");
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().expect("piped stderr");
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut err, &mut buf).await;
            sink.lock()
                .expect("stderr lock")
                .push_str(&String::from_utf8_lossy(&buf));
        });
        Ok(ClientRun {
            child,
            token,
            lines,
            stderr,
            stdout: Vec::new(),
        })
    }

    /// A driver session of `user` straight to the server (not through the proxy).
    pub async fn session(&self, user: &str, device: &str) -> Result<Session, Verdict> {
        let target = Target::new(self.server.addr, &self.server.ca)?;
        Ok(target
            .session(&self.server.token(user, device).await?, device)
            .await?)
    }
}

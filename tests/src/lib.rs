//! Support for Ferry's end-to-end tests: an in-process server on free loopback ports with its own data
//! dir, tokens, and wire-level sessions (through `ferry_interop::driver`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_interop::driver::{DriverError, Session, Target};
use ferry_server::{ServerHandle, Settings};

pub use ferry_interop::driver;

pub mod cluster;
pub mod process;

/// A server for one test, with its data dir.
pub struct TestServer {
    /// The running server.
    pub handle: ServerHandle,
    /// Client endpoint trusting the server's certificate.
    pub target: Target,
    dir: tempfile::TempDir,
}

/// Settings for a test server in `dir`, on free loopback ports.
pub fn test_settings(dir: &Path) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("literal address"),
        http: "127.0.0.1:0".parse().expect("literal address"),
        drain_grace_ms: 200,
        ..Settings::default()
    }
}

impl TestServer {
    /// Starts a server with default settings.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` changed its settings.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> TestServer {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(dir.path());
        adjust(&mut settings);
        let handle = ferry_server::start(settings).await.expect("server starts");
        let target = Target::new(handle.local_addr(), handle.ca_path()).expect("client endpoint");
        TestServer {
            handle,
            target,
            dir,
        }
    }

    /// The data dir.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A valid token for `user` on `device`.
    pub fn token(&self, user: &str, device: &str) -> String {
        self.handle
            .mint_token(user, device, Duration::from_secs(3600))
    }

    /// A session of `user` on `device` (Hello → Welcome done).
    pub async fn session(&self, user: &str, device: &str) -> Session {
        self.try_session(user, device)
            .await
            .unwrap_or_else(|e| panic!("session for {user}/{device}: {e}"))
    }

    /// Like [`TestServer::session`] but returns the error.
    pub async fn try_session(&self, user: &str, device: &str) -> Result<Session, DriverError> {
        self.target.session(&self.token(user, device), device).await
    }
}

/// Polls `done` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// Every `Event::Message` a client reported, in report order.
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<ferry_client::ReceivedMessage>>>;

/// Collects the messages of `events` until the client stops (the loop ends with the event channel).
pub fn collect_messages(mut events: ferry_client::Events) -> Seen {
    let seen: Seen = Seen::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let ferry_client::Event::Message(m) = event {
                sink.lock().expect("seen lock").push(m);
            }
        }
    });
    seen
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

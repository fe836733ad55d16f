//! An in-process ferry-server for one test: free loopback ports, its own temp data dir, tokens, and
//! wire-level sessions through the conformance runner's driver (`ferry_interop::driver`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_interop::driver::{DriverError, Session, Target};
use ferry_server::{ServerHandle, Settings};

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

/// Logs to the test output when RUST_LOG is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// The conformance runner's revocation hook for a server on `data_dir`: revokes as `ferry-server
/// revoke --data-dir` does, through the admin endpoint the data dir names.
pub fn conformance_revoke(data_dir: &Path) -> std::sync::Arc<ferry_interop::server_mode::RevokeFn> {
    let dir = data_dir.to_path_buf();
    std::sync::Arc::new(move |user: String, device: String| {
        let dir = dir.clone();
        Box::pin(async move {
            ferry_server::revoke::request(&dir, &user, Some(&device))
                .await
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        })
    })
}

/// The conformance runner's tokens for an in-process server whose data dir the test holds: minted
/// with the server's own secret, so the expired-token cases need no waiting.
pub fn conformance_tokens(data_dir: &Path) -> ferry_interop::tokens::TokenSource {
    let path = data_dir.join(ferry_server::server::SECRET_FILE);
    let secret = ferry_server::auth::TokenSecret::load(&path)
        .unwrap_or_else(|e| panic!("token secret {}: {e}", path.display()));
    ferry_interop::tokens::TokenSource::minted_by(move |user, device, ttl, at| {
        secret.mint(user, device, ttl, at)
    })
}

//! [`ClientBuilder`]: configuration of a [`Client`] and the start of its driver task.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::BackoffConfig;
use crate::client::{Client, Events};
use crate::error::ClientError;
use crate::outbox::OutboxConfig;
use crate::sqlite::SqliteStore;
use crate::store::ClientStore;
use crate::tls::{SessionCache, TrustRoots};

/// When the client acknowledges received messages to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// After the client store committed them (the default).
    #[default]
    Auto,
    /// After the application called [`Client::ack`] (it committed them itself). Messages reported but not
    /// acked by the application are reported again after a restart.
    Manual,
}

/// A future returning a fresh token.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
/// Called when the server rejects the token (UNAUTHENTICATED) while reconnecting.
pub type TokenRefresher = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Everything the driver needs, fixed at build time.
pub(crate) struct Settings {
    pub endpoints: Vec<String>,
    pub server_name: String,
    pub token: String,
    pub refresher: Option<TokenRefresher>,
    pub device_id: String,
    pub device_class: String,
    pub client_name: String,
    pub ack_mode: AckMode,
    pub backoff: BackoffConfig,
    pub heartbeat: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    pub outbox: OutboxConfig,
    pub connect_timeout: Duration,
}

/// Configures and starts a [`Client`].
///
/// Required: at least one endpoint, trust roots ([`ClientBuilder::ca_file`] or
/// [`ClientBuilder::ca_pem`]), a token and a device id. Everything else has a default.
#[must_use]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    server_name: String,
    roots: Option<Result<TrustRoots, ClientError>>,
    token: Option<String>,
    refresher: Option<TokenRefresher>,
    device_id: Option<String>,
    device_class: String,
    store: Option<Arc<dyn ClientStore>>,
    store_path: Option<PathBuf>,
    ack_mode: AckMode,
    backoff: BackoffConfig,
    heartbeat: Option<Duration>,
    heartbeat_timeout: Option<Duration>,
    event_capacity: usize,
    request_capacity: usize,
    outbox: OutboxConfig,
    connect_timeout: Duration,
    zero_rtt: bool,
    session_cache: Option<SessionCache>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            endpoints: Vec::new(),
            server_name: "localhost".into(),
            roots: None,
            token: None,
            refresher: None,
            device_id: None,
            device_class: String::new(),
            store: None,
            store_path: None,
            ack_mode: AckMode::Auto,
            backoff: BackoffConfig::default(),
            heartbeat: None,
            heartbeat_timeout: None,
            event_capacity: 1024,
            request_capacity: 1024,
            outbox: OutboxConfig::default(),
            connect_timeout: Duration::from_secs(10),
            zero_rtt: true,
            session_cache: None,
        }
    }
}

impl ClientBuilder {
    /// A builder with defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a server endpoint (`"host:port"` or an IP socket address). Several endpoints are tried in
    /// rotation when one fails.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Adds several endpoints.
    pub fn endpoints<I: IntoIterator<Item = S>, S: Into<String>>(mut self, endpoints: I) -> Self {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// The TLS server name to verify (default `"localhost"`).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// Trusts the certificates in this PEM file (giving the server's own certificate pins it).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.roots = Some(
            std::fs::read(&path)
                .map(TrustRoots::Pem)
                .map_err(|e| ClientError::Config(format!("reading {}: {e}", path.display()))),
        );
        self
    }

    /// Trusts the certificates in these PEM bytes.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots = Some(Ok(TrustRoots::Pem(pem.into())));
        self
    }

    /// The bearer token sent in Hello.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Called once when the server rejects the token while (re)connecting; the returned token is used
    /// from then on. If it fails, or the new token is rejected too, the client stops with
    /// [`crate::ConnectionState::AuthFailed`].
    pub fn token_refresher<F, Fut>(mut self, refresher: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.refresher = Some(Arc::new(move || Box::pin(refresher()) as TokenFuture));
        self
    }

    /// This device's id (must match the token's device).
    pub fn device_id(mut self, device: impl Into<String>) -> Self {
        self.device_id = Some(device.into());
        self
    }

    /// Device class for the server's login policy ("phone", "desktop", ...).
    pub fn device_class(mut self, class: impl Into<String>) -> Self {
        self.device_class = class.into();
        self
    }

    /// Uses this store (default: a [`SqliteStore`] at [`ClientBuilder::store_path`], or in memory).
    pub fn store(mut self, store: Arc<dyn ClientStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Opens a [`SqliteStore`] at this path.
    pub fn store_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.store_path = Some(path.into());
        self
    }

    /// Auto (default) or manual acknowledgement of received messages.
    pub fn ack_mode(mut self, mode: AckMode) -> Self {
        self.ack_mode = mode;
        self
    }

    /// Reconnect backoff (default: 100 ms initial cap, 10 s maximum, full jitter).
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sends Heartbeats this often instead of the server's `heartbeat_interval_ms`.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval);
        self
    }

    /// A Heartbeat unanswered this long means the server is gone (default: two heartbeat intervals).
    /// After a `kill -9` of the server nothing else tells the client (no CONNECTION_CLOSE arrives, and
    /// QUIC's idle timeout is long), so with several endpoints this bounds the failover time: with
    /// `heartbeat_interval(250 ms)` and `heartbeat_timeout(400 ms)` a dead node is left within
    /// 650 ms, for the price of four Heartbeats a second.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = Some(timeout);
        self
    }

    /// Capacity of the event channel (default 1024). When the application does not consume events, the
    /// client stops reading from the network (backpressure), so keep consuming.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Capacity of the request channel between [`Client`] and its driver (default 1024).
    pub fn request_capacity(mut self, capacity: usize) -> Self {
        self.request_capacity = capacity.max(1);
        self
    }

    /// A Send not acknowledged after this long on a live connection is sent again (default 10 s).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.outbox.ack_timeout = timeout;
        self
    }

    /// Limit for one connection attempt (QUIC handshake and stream set-up; default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether connections may send early data (0-RTT) with a resumption ticket of an earlier connection
    /// (default true). Off, every connection takes a full 1-RTT handshake first.
    pub fn zero_rtt(mut self, enabled: bool) -> Self {
        self.zero_rtt = enabled;
        self
    }

    /// Keeps TLS resumption tickets in `cache` (default: a fresh cache per build). 0-RTT is used on a
    /// client's reconnects; across builds that share a cache it is not achieved yet (known gap: the
    /// first connection of the next build does a full handshake).
    pub fn session_cache(mut self, cache: SessionCache) -> Self {
        self.session_cache = Some(cache);
        self
    }

    /// Validates the configuration, opens the store, spawns the driver task (on the current tokio
    /// runtime) and returns the handle and the event stream. Connecting happens in the background; sends
    /// queue in the outbox meanwhile.
    pub async fn build(self) -> Result<(Client, Events), ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoint given".into()));
        }
        let roots = self
            .roots
            .ok_or_else(|| ClientError::Config("no CA given (ca_file or ca_pem)".into()))??;
        let token = self
            .token
            .ok_or_else(|| ClientError::Config("no token given".into()))?;
        let device_id = self
            .device_id
            .ok_or_else(|| ClientError::Config("no device id given".into()))?;
        if !ferry_protocol::ids::is_valid_name(&device_id) {
            return Err(ClientError::Config(format!(
                "invalid device id {device_id:?}"
            )));
        }
        tracing::trace!("building a client");
        let cache = self.session_cache.unwrap_or_default();
        let quic = crate::tls::client_config(&roots, &cache, self.zero_rtt)?;
        let store: Arc<dyn ClientStore> = match (self.store, self.store_path) {
            (Some(store), _) => store,
            (None, Some(path)) => Arc::new(
                tokio::task::spawn_blocking(move || SqliteStore::open(path))
                    .await
                    .map_err(|e| ClientError::Config(e.to_string()))??,
            ),
            (None, None) => Arc::new(SqliteStore::in_memory()?),
        };
        tracing::trace!("store opened");
        let settings = Settings {
            endpoints: self.endpoints,
            server_name: self.server_name,
            token,
            refresher: self.refresher,
            device_id,
            device_class: self.device_class,
            client_name: format!("ferry-client/{}", env!("CARGO_PKG_VERSION")),
            ack_mode: self.ack_mode,
            backoff: self.backoff,
            heartbeat: self.heartbeat,
            heartbeat_timeout: self.heartbeat_timeout,
            outbox: self.outbox,
            connect_timeout: self.connect_timeout,
        };
        crate::driver::start(
            settings,
            quic,
            store,
            self.event_capacity,
            self.request_capacity,
        )
        .await
    }
}

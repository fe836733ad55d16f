//! [`ClientBuilder`]: the chainable configuration object (`ClientBuilder().endpoint(..).token(..)`), and
//! the [`TokenRefresher`] callback the application implements.
//!
//! Each setter forwards to `ferry_client::ClientBuilder`, so defaults and validation live in one place
//! (the client crate); this file only converts foreign types (milliseconds, strings) to Rust ones.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_client as fc;

use crate::client::Client;
use crate::error::{FerryError, TokenRefreshError};
use crate::runtime::run;

/// A foreign refresh that takes longer than this fails, so a hung callback cannot stall reconnecting.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(30);

/// Gives the client a fresh token when the server refused the current one while (re)connecting.
///
/// Called on a worker thread (never the caller's UI thread), so it may block, e.g. on an HTTP call to
/// the app's backend; it must answer within 30 s. Throw `TokenRefreshError.Failed` to give up: the
/// client then stops with `ConnectionState.AuthFailed`.
#[uniffi::export(callback_interface)]
pub trait TokenRefresher: Send + Sync {
    /// A fresh token for the same user and device.
    fn refresh_token(&self) -> Result<String, TokenRefreshError>;
}

/// Configures and starts a [`Client`]. Required: an endpoint, a CA (`ca_pem` or `ca_file`), a token,
/// a device id. A builder builds one client; setters after `build` have no effect.
#[derive(uniffi::Object)]
pub struct ClientBuilder {
    // `None` once built. A Mutex because foreign code may share the builder across threads.
    inner: Mutex<Option<fc::ClientBuilder>>,
}

impl ClientBuilder {
    /// Applies one setter of the Rust builder.
    fn with(
        self: Arc<Self>,
        set: impl FnOnce(fc::ClientBuilder) -> fc::ClientBuilder,
    ) -> Arc<Self> {
        {
            // The setters cannot panic halfway, so a poisoned lock still holds a usable builder.
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            *inner = inner.take().map(set);
        }
        self
    }
}

#[uniffi::export]
impl ClientBuilder {
    /// A builder with the client's defaults.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(ClientBuilder {
            inner: Mutex::new(Some(fc::ClientBuilder::new())),
        })
    }

    /// Adds a server endpoint (`host:port`); several are tried in rotation.
    pub fn endpoint(self: Arc<Self>, endpoint: String) -> Arc<Self> {
        self.with(|b| b.endpoint(endpoint))
    }

    /// The TLS server name to verify (default `localhost`).
    pub fn server_name(self: Arc<Self>, name: String) -> Arc<Self> {
        self.with(|b| b.server_name(name))
    }

    /// Trusts the certificates in this PEM text. Giving the server's own certificate pins it.
    pub fn ca_pem(self: Arc<Self>, pem: String) -> Arc<Self> {
        self.with(|b| b.ca_pem(pem.into_bytes()))
    }

    /// Trusts the certificates in this PEM file (read now; an unreadable file fails `build`).
    pub fn ca_file(self: Arc<Self>, path: String) -> Arc<Self> {
        self.with(|b| b.ca_file(path))
    }

    /// The bearer token sent in Hello.
    pub fn token(self: Arc<Self>, token: String) -> Arc<Self> {
        self.with(|b| b.token(token))
    }

    /// Asked once for a new token when the server refuses the current one.
    pub fn token_refresher(self: Arc<Self>, refresher: Box<dyn TokenRefresher>) -> Arc<Self> {
        let refresher: Arc<dyn TokenRefresher> = Arc::from(refresher);
        self.with(move |b| {
            b.token_refresher(move || {
                let refresher = refresher.clone();
                async move { refresh(refresher).await }
            })
        })
    }

    /// This device's id (must match the token's device).
    pub fn device_id(self: Arc<Self>, device_id: String) -> Arc<Self> {
        self.with(|b| b.device_id(device_id))
    }

    /// Device class for the server's login policy (`phone`, `desktop`, ...).
    pub fn device_class(self: Arc<Self>, device_class: String) -> Arc<Self> {
        self.with(|b| b.device_class(device_class))
    }

    /// Keeps the client's state (outbox, receive windows, messages) in this SQLite file. Without it the
    /// store is in memory and queued messages die with the process.
    pub fn store_path(self: Arc<Self>, path: String) -> Arc<Self> {
        self.with(|b| b.store_path(path))
    }

    /// Manual acknowledgement: received messages are acknowledged only when the app calls `ack`.
    pub fn manual_ack(self: Arc<Self>, manual: bool) -> Arc<Self> {
        let mode = if manual {
            fc::AckMode::Manual
        } else {
            fc::AckMode::Auto
        };
        self.with(|b| b.ack_mode(mode))
    }

    /// Reconnect backoff: first delay cap and largest cap, in milliseconds (default 100 and 10 000).
    pub fn backoff_ms(self: Arc<Self>, initial_ms: u64, max_ms: u64) -> Arc<Self> {
        let config = fc::BackoffConfig {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms.max(initial_ms)),
        };
        self.with(|b| b.backoff(config))
    }

    /// Sends heartbeats this often instead of the server's interval.
    pub fn heartbeat_interval_ms(self: Arc<Self>, interval_ms: u64) -> Arc<Self> {
        self.with(|b| b.heartbeat_interval(Duration::from_millis(interval_ms)))
    }

    /// A send not acknowledged after this long on a live connection is sent again (default 10 000).
    pub fn send_timeout_ms(self: Arc<Self>, timeout_ms: u64) -> Arc<Self> {
        self.with(|b| b.send_timeout(Duration::from_millis(timeout_ms)))
    }

    /// Limit of one connection attempt (default 10 000).
    pub fn connect_timeout_ms(self: Arc<Self>, timeout_ms: u64) -> Arc<Self> {
        self.with(|b| b.connect_timeout(Duration::from_millis(timeout_ms)))
    }

    /// Whether reconnects may use 0-RTT early data (default true).
    pub fn zero_rtt(self: Arc<Self>, enabled: bool) -> Arc<Self> {
        self.with(|b| b.zero_rtt(enabled))
    }

    /// Capacity of the event queue (default 1024). When the app stops calling `next_event`, the client
    /// stops reading from the network (backpressure) rather than buffering without bound.
    pub fn event_capacity(self: Arc<Self>, capacity: u32) -> Arc<Self> {
        self.with(|b| b.event_capacity(capacity as usize))
    }

    /// Validates the configuration, opens the store and starts the client. Connecting happens in the
    /// background: sends queue in the outbox meanwhile; watch `next_event` or `wait_connected`.
    pub async fn build(&self) -> Result<Arc<Client>, FerryError> {
        let builder = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| FerryError::Config {
                reason: "this builder already built a client".into(),
            })?;
        // On the facade's runtime: the client's driver task is spawned on the runtime it is built on.
        let (client, events) = run(async move { Ok(builder.build().await?) }).await?;
        Ok(Arc::new(Client::new(client, events)))
    }
}

/// Runs the foreign callback on a blocking thread, bounded by [`REFRESH_TIMEOUT`]. Panics and foreign
/// exceptions become an `Err` (the client then reports `AuthFailed`).
async fn refresh(refresher: Arc<dyn TokenRefresher>) -> Result<String, String> {
    // The client's driver calls this on the facade's runtime, so tokio's blocking pool is at hand.
    let call = tokio::task::spawn_blocking(move || refresher.refresh_token());
    match tokio::time::timeout(REFRESH_TIMEOUT, call).await {
        Ok(Ok(Ok(token))) => Ok(token),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(join)) => Err(format!("token refresher failed: {join}")),
        Err(_) => Err(format!(
            "token refresher gave no answer within {REFRESH_TIMEOUT:?}"
        )),
    }
}

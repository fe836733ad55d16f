//! Start-up, the accept loop, and graceful shutdown.
//!
//! Start-up creates the data dir, TLS material and token secret on first run, opens the store, binds
//! the QUIC endpoint and the HTTP ops endpoint. Shutdown (SIGTERM/SIGINT or [`ServerHandle::shutdown`])
//! stops accepting, sends GoAway to every session, lets in-flight sends commit and ack for the drain
//! grace period, then closes every connection with SHUTTING_DOWN.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_protocol::{frames, ErrorCode};
use ferry_quic::codes;
use ferry_store::{EmbeddedStore, EmbeddedStoreOptions, RedisStore, RedisStoreOptions, Store};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::admission::Admission;
use crate::auth::TokenSecret;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::rate::UserRateLimiter;
use crate::revoke::{write_admin_addr, Revocations};
use crate::sessions::Sessions;
use crate::{cluster, connection, http, tls, Shared};

/// Most connections served at once; more are refused at the QUIC level.
const MAX_CONNECTIONS: usize = 100_000;
/// File name of the token-signing secret inside the data dir.
pub const SECRET_FILE: &str = "token.secret";

/// The QUIC `max_idle_timeout` the server advertises (FERRY-TRANSPORT-9): it detects a dead path and is
/// independent of the ferry idle timeout (`Limits.idle_timeout_ms`), which detects a silent peer.
pub const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server.
pub struct ServerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    http_addr: SocketAddr,
    ca_path: PathBuf,
    shutdown: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The UDP address the QUIC endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TCP address of `/healthz` and `/metrics`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The certificate clients should trust (the self-signed cert, or the configured one).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// Mints a token for `user` on `device`, valid for `ttl`.
    pub fn mint_token(&self, user: &str, device: &str, ttl: Duration) -> String {
        self.shared
            .secret
            .mint(user, device, ttl, std::time::SystemTime::now())
    }

    /// (commits, requests) of the store's write path so far: requests / commits is the mean batch size.
    pub fn commit_totals(&self) -> (u64, u64) {
        let stats = self.shared.store.write_stats();
        (stats.commits, stats.requests)
    }

    /// Server metrics (for tests and benchmarks).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Test fault hooks.
    #[cfg(feature = "test-hooks")]
    pub fn hooks(&self) -> &crate::hooks::Hooks {
        &self.shared.hooks
    }

    /// Drains and stops the server; returns when every connection is closed and the store is closed
    /// (so the data dir can be opened again at once, e.g. by a restart).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.wait().await;
    }

    /// Waits until the server stops (after a shutdown signal), then closes the store.
    pub async fn wait(self) {
        let _ = self.done.await;
        close_store(self.shared).await;
    }

    /// A sender that triggers graceful shutdown (for signal handlers).
    pub fn shutdown_trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Starts a server with `settings`.
pub async fn start(settings: Settings) -> anyhow::Result<ServerHandle> {
    let data_dir = settings.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let tls_files = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, None) => tls::ensure_self_signed(&data_dir).context("creating TLS certificate")?,
        _ => anyhow::bail!("--cert and --key must be given together"),
    };
    let (certs, key) = tls::load_certs_and_key(&tls_files.cert, &tls_files.key)
        .context("loading TLS certificate")?;
    let secret =
        TokenSecret::load_or_create(&data_dir.join(SECRET_FILE)).context("loading token secret")?;
    // A cluster node's TLS sessions are shared with the other nodes once it has joined (0-RTT on any node).
    let tickets = (settings.cluster.enabled())
        .then(|| ferry_cluster::SharedTickets::new(tls::SESSION_CACHE_ENTRIES));
    let sessions: Arc<dyn rustls::server::StoresServerSessions> = match &tickets {
        Some(shared) => shared.clone(),
        None => tls::local_sessions(),
    };
    let quic_config = tls::server_config(
        certs,
        key,
        ferry_protocol::ALPN,
        QUIC_IDLE_TIMEOUT,
        settings.limits.max_open_streams + 8,
        settings.initial_window_packets,
        sessions,
    )
    .context("building QUIC config")?;
    let revocations = Revocations::open(&data_dir).context("loading the admin secret")?;
    let store = open_store(&settings).await?;

    let endpoint = quinn::Endpoint::server(quic_config, settings.listen)
        .with_context(|| format!("binding QUIC endpoint on {}", settings.listen))?;
    let local_addr = endpoint.local_addr()?;
    let http_listener = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding HTTP endpoint on {}", settings.http))?;
    let http_addr = http_listener.local_addr()?;
    let (cluster, envelopes) = join_cluster(&settings, local_addr, http_addr, tickets).await?;
    let (push, push_events) = crate::push::Push::new(&settings.push)?.unzip();

    let shared = Arc::new(Shared {
        limits: settings.limits_frame(),
        send_rate: UserRateLimiter::new(
            settings.limits.send_rate_per_sec,
            settings.limits.send_burst,
        ),
        settings,
        store,
        cluster,
        push,
        sessions: Sessions::default(),
        metrics: Arc::new(Metrics::default()),
        secret,
        revocations,
        draining: watch::channel(false).0,
        #[cfg(feature = "test-hooks")]
        hooks: crate::hooks::Hooks::default(),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let health_shared = shared.clone();
    let health: Arc<dyn Fn() -> bool + Send + Sync> =
        Arc::new(move || !*health_shared.draining.borrow());
    tokio::spawn(http::serve(
        http_listener,
        shared.metrics.clone(),
        health,
        Some(Arc::new(shared.clone())),
        shutdown_rx.clone(),
    ));
    // Only now that the endpoint serves: `ferry-server revoke` reads the address from here.
    write_admin_addr(&data_dir, http_addr)?;
    tokio::spawn(export_store_stats(shared.clone(), shutdown_rx.clone()));
    if let Some(envelopes) = envelopes {
        tokio::spawn(cluster::run_bus(
            shared.clone(),
            envelopes,
            shutdown_rx.clone(),
        ));
        tokio::spawn(cluster::run_liveness(shared.clone(), shutdown_rx.clone()));
    }
    if let Some(events) = push_events {
        tokio::spawn(crate::push::run(
            shared.clone(),
            events,
            shutdown_rx.clone(),
        ));
    }
    let done = tokio::spawn(accept_loop(endpoint, shared.clone(), shutdown_rx));
    info!(%local_addr, %http_addr, ca = %tls_files.cert.display(), "ferry-server listening");
    Ok(ServerHandle {
        shared,
        local_addr,
        http_addr,
        ca_path: tls_files.cert,
        shutdown: shutdown_tx,
        done,
    })
}

/// How long a stopped server waits for its last tasks to let go of the shared state.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Drops the server's shared state once the tasks that still held it (connections finishing, the
/// HTTP endpoint, cluster tasks) have ended, which closes the store: the embedded store joins its
/// writer and indexer threads, so this runs on a blocking thread.
async fn close_store(shared: Arc<Shared>) {
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    while Arc::strong_count(&shared) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if Arc::strong_count(&shared) > 1 {
        warn!("tasks still hold the server state; the store closes when they end");
    }
    let _ = tokio::task::spawn_blocking(move || drop(shared)).await;
}

/// The embedded store under the data dir, or in cluster mode the Redis store.
async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    if settings.cluster.enabled() {
        let c = &settings.cluster;
        let options = RedisStoreOptions {
            dedupe_window: Duration::from_secs(settings.dedupe_window_secs),
            require_durable: c.require_durable_redis,
            key_prefix: format!("{}:", c.key_prefix),
            ..RedisStoreOptions::new(c.redis.iter().cloned())
        };
        let store = RedisStore::open(options)
            .await
            .context("opening the Redis store")?;
        return Ok(Arc::new(store));
    }
    let options = EmbeddedStoreOptions {
        dedupe_window: Duration::from_secs(settings.dedupe_window_secs),
        ..EmbeddedStoreOptions::default()
    };
    let store = EmbeddedStore::open(&settings.data_dir, options).context("opening store")?;
    Ok(Arc::new(store))
}

/// In cluster mode, joins the cluster (probing the registered nodes; a live node with this id is a
/// [`ferry_cluster::ClusterError::NodeConflict`]).
async fn join_cluster(
    settings: &Settings,
    quic: SocketAddr,
    http: SocketAddr,
    tickets: Option<Arc<ferry_cluster::SharedTickets>>,
) -> anyhow::Result<(
    Option<Arc<cluster::ClusterNode>>,
    Option<tokio::sync::mpsc::Receiver<ferry_cluster::Envelope>>,
)> {
    let (true, Some(tickets)) = (settings.cluster.enabled(), tickets) else {
        return Ok((None, None));
    };
    let c = &settings.cluster;
    let me = ferry_cluster::NodeInfo::starting(
        &settings.node_id,
        &c.advertise.clone().unwrap_or_else(|| quic.to_string()),
        &c.advertise_http.clone().unwrap_or_else(|| http.to_string()),
    );
    let options = c.options(settings.idle_timeout_ms)?;
    let ticket_key = cluster::ticket_key(&settings.data_dir.join(SECRET_FILE))?;
    let tickets = (&tickets, ticket_key);
    let (node, envelopes) =
        cluster::ClusterNode::join(options, me, settings.login_policy, tickets).await?;
    Ok((Some(Arc::new(node)), Some(envelopes)))
}

/// Copies the store's write counters into the metrics once a second.
async fn export_store_stats(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let stats = shared.store.write_stats();
                shared.metrics.set_commit_stats(stats.commits, stats.requests);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Accepts connections until shutdown, then drains.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let admission = Admission::new(&shared.settings.hardening);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    incoming.refuse();
                    continue;
                };
                // Retry under load and per-source limits, before any TLS work (FERRY-HARDEN-1, -2).
                let Some((incoming, ticket)) = admission.admit(incoming, &shared.metrics) else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    connection::serve(incoming, shared, ticket).await;
                    drop(slot);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drain(&endpoint, &shared).await;
}

/// Graceful shutdown: GoAway to everyone, a grace period for in-flight sends, then close.
async fn drain(endpoint: &quinn::Endpoint, shared: &Shared) {
    let _ = shared.draining.send(true);
    // Refusing at the QUIC level answers a connection attempt at once; ignoring it would leave the
    // client to time out in the handshake, unable to tell draining from dead (FERRY-GOAWAY-1).
    let refuser = tokio::spawn(refuse_while_draining(endpoint.clone()));
    let sessions = shared.sessions.all();
    info!(sessions = sessions.len(), "draining");
    // In a cluster, GoAway names the other live nodes so clients move there before this one stops.
    let endpoints = match &shared.cluster {
        Some(cluster) => cluster.other_endpoints().await,
        None => Vec::new(),
    };
    for session in &sessions {
        let mut go_away = frames::go_away(ErrorCode::SHUTTING_DOWN, "server shutting down");
        if let Some(ferry_protocol::frame::frame::Kind::GoAway(g)) = &mut go_away.kind {
            g.endpoints = endpoints.clone();
        }
        let _ = session.control.try_send(go_away);
    }
    let grace = Duration::from_millis(u64::from(shared.settings.drain_grace_ms));
    let deadline = tokio::time::Instant::now() + grace;
    while !shared.sessions.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refuser.abort();
    endpoint.close(
        codes::to_varint(ErrorCode::SHUTTING_DOWN),
        b"server shutting down",
    );
    if tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle())
        .await
        .is_err()
    {
        warn!("connections did not close in time");
    }
    if let Some(cluster) = &shared.cluster {
        cluster.leave().await;
    }
    info!("stopped");
}

/// Answers every connection attempt with CONNECTION_REFUSED until aborted (at the end of the drain
/// grace period) or the endpoint closes.
async fn refuse_while_draining(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        incoming.refuse();
    }
}

//! Server settings: defaults < TOML file < `FERRY_*` environment variables < command-line flags.
//!
//! Every field has a default (DECISIONS.md, "Limits"), so a TOML file names only what it changes;
//! an unknown key is an error, because a typo silently ignored is a setting silently not applied.
//! Environment variables are `FERRY_<FIELD>` for top-level scalars (e.g. `FERRY_LISTEN`,
//! `FERRY_IDLE_TIMEOUT_MS`) and `FERRY_LIMITS_<FIELD>` for limits (e.g.
//! `FERRY_LIMITS_MAX_INFLIGHT_SENDS`), `FERRY_PUSH_<FIELD>` for `[push]` (see [`PushSettings`]). Other
//! `FERRY_*` variables are ignored: clients and scripts
//! share the prefix.
//!
//! clap's `env` feature is not used for these, since the TOML file sits between the environment and
//! the defaults; the binary fills [`CliOverrides`] from its flags instead.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ferry_protocol::frame::Limits;

/// Room for everything of a `Deliver` or one-message `PullResult` besides the body (ids of at most 256
/// bytes each, seq, time, tags and length prefixes): FERRY-LIMIT-3's `max_body_size` + 1024.
const ENVELOPE_ROOM: u64 = 1024;
use serde::{Deserialize, Serialize};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`Settings`] (bad syntax, wrong type, unknown key).
    #[error("config file {}: {source}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error; it names the key and, for unknown keys, the expected ones.
        source: Box<toml::de::Error>,
    },
    /// An environment variable or flag has a value that does not parse.
    #[error("{origin}: invalid value {value:?}: {reason}")]
    BadValue {
        /// The variable (`FERRY_LISTEN`) or flag (`--listen`).
        origin: String,
        /// The value given.
        value: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The merged settings are inconsistent.
    #[error("invalid settings: {0}")]
    Invalid(String),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

/// How many sessions a user may have at once: one definition for the local registry and the cluster's
/// session directory.
pub use ferry_cluster::LoginPolicy;

pub use crate::push::PushSettings;

/// Limits announced in Welcome and enforced by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest frame, bytes.
    pub max_frame_size: u32,
    /// Largest message body, bytes.
    pub max_body_size: u32,
    /// Sends per connection received but not yet answered.
    pub max_inflight_sends: u32,
    /// Concurrent conversation streams per connection.
    pub max_open_streams: u32,
    /// Messages per PullResult.
    pub max_pull_page: u32,
    /// Conversations per SyncResult / HeartbeatAck.
    pub max_sync_page: u32,
    /// Per-user token bucket rate for Sends.
    pub send_rate_per_sec: u32,
    /// Per-user token bucket size for Sends.
    pub send_burst: u32,
    /// Per-connection typing/presence datagram rate; excess is dropped.
    pub typing_rate_per_sec: u32,
    /// Messages per conversation a new device fetches first.
    pub recent_window: u32,
}

impl Default for LimitSettings {
    /// The spec's defaults (section 10), so that a server announcing its defaults announces the values a
    /// client assumes for zero fields.
    fn default() -> Self {
        let d = ferry_protocol::limits::DEFAULTS;
        LimitSettings {
            max_frame_size: d.max_frame_size,
            max_body_size: d.max_body_size,
            max_inflight_sends: d.max_inflight_sends,
            max_open_streams: d.max_open_streams,
            max_pull_page: d.max_pull_page,
            max_sync_page: d.max_sync_page,
            send_rate_per_sec: d.send_rate_per_sec,
            send_burst: d.send_burst,
            typing_rate_per_sec: d.typing_rate_per_sec,
            recent_window: d.recent_window,
        }
    }
}

/// Cluster mode: several nodes sharing Redis. Off while `redis` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Redis URLs: one `redis://` URL is a single instance; several URLs, or `redis+cluster://`, a Redis
    /// Cluster. Empty: single node on the embedded store.
    pub redis: Vec<String>,
    /// The QUIC address other nodes and GoAway name for this node. Default: the listen address.
    pub advertise: Option<String>,
    /// The HTTP address peers probe (`/healthz`). Default: the HTTP listen address.
    pub advertise_http: Option<String>,
    /// Prefix of every Redis key and channel (several clusters may share one Redis).
    pub key_prefix: String,
    /// Lease of this node in the registry; renewed every third of it.
    pub lease_ttl_ms: u32,
    /// Interval between direct health probes of every peer.
    pub probe_interval_ms: u32,
    /// Refuse to start unless Redis runs with `appendonly yes` and `appendfsync always`.
    pub require_durable_redis: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            redis: Vec::new(),
            advertise: None,
            advertise_http: None,
            key_prefix: "ferry".into(),
            lease_ttl_ms: 3_000,
            probe_interval_ms: 300,
            require_durable_redis: false,
        }
    }
}

impl ClusterSettings {
    /// Whether cluster mode is on.
    pub(crate) fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }

    /// What is wrong with the cluster settings, if anything (nothing when cluster mode is off).
    fn problem(&self) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        if let Err(e) = ferry_cluster::RedisTarget::from_urls(&self.redis) {
            return Some(e.to_string());
        }
        if self.lease_ttl_ms < 300 || self.probe_interval_ms == 0 {
            return Some(
                "cluster.lease_ttl_ms must be at least 300 and cluster.probe_interval_ms positive"
                    .into(),
            );
        }
        None
    }

    /// The resolved cluster options. Session entries outlive a connection's idle timeout twice over, so
    /// that only a node's death (released at once by its peers) or a missed logout leaves one behind.
    pub(crate) fn options(
        &self,
        idle_timeout_ms: u32,
    ) -> Result<crate::cluster::ClusterOptions, ferry_cluster::ClusterError> {
        Ok(crate::cluster::ClusterOptions {
            target: ferry_cluster::RedisTarget::from_urls(&self.redis)?,
            key_prefix: self.key_prefix.clone(),
            lease_ttl: std::time::Duration::from_millis(u64::from(self.lease_ttl_ms)),
            probe_interval: std::time::Duration::from_millis(u64::from(self.probe_interval_ms)),
            session_ttl: std::time::Duration::from_millis(2 * u64::from(idle_timeout_ms)),
        })
    }
}

/// Admission hardening (issue 21, spec "Admission under load"): address validation under load and
/// per-source limits. A source is an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HardeningSettings {
    /// QUIC handshakes in flight above which a new Initial from an unvalidated address is answered
    /// with a Retry (one extra round trip, only under load). 0: always Retry.
    pub retry_threshold: u32,
    /// Connections per source.
    pub max_connections_per_source: u32,
    /// New handshakes per second per source.
    pub handshakes_per_sec_per_source: u32,
    /// Sources the per-source limiter tracks at once (bounds its memory).
    pub max_tracked_sources: u32,
}

impl Default for HardeningSettings {
    fn default() -> Self {
        HardeningSettings {
            retry_threshold: 256,
            max_connections_per_source: 1_024,
            handshakes_per_sec_per_source: 200,
            max_tracked_sources: 100_000,
        }
    }
}

impl HardeningSettings {
    /// What is wrong with these settings, if anything.
    fn problem(&self) -> Option<String> {
        let limits = [
            self.max_connections_per_source,
            self.handshakes_per_sec_per_source,
            self.max_tracked_sources,
        ];
        limits.contains(&0).then(|| {
            "hardening.max_connections_per_source, handshakes_per_sec_per_source and max_tracked_sources must be positive".into()
        })
    }
}

/// Everything the server can be configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Store, certificate and token secret.
    pub data_dir: PathBuf,
    /// QUIC (UDP) listen address.
    pub listen: SocketAddr,
    /// HTTP address for `/healthz` and `/metrics`.
    pub http: SocketAddr,
    /// TLS certificate chain; with `key`. None: self-signed in `data_dir`.
    pub cert: Option<PathBuf>,
    /// TLS private key; with `cert`.
    pub key: Option<PathBuf>,
    /// This node's id, announced in Welcome and unique in a cluster.
    pub node_id: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Multi-device login policy.
    pub login_policy: LoginPolicy,
    /// How long a client_msg_id is remembered for dedupe, seconds.
    pub dedupe_window_secs: u64,
    /// Heartbeat interval announced in Welcome.
    pub heartbeat_interval_ms: u32,
    /// Control-stream silence after which the server closes the connection (and the QUIC idle timeout).
    pub idle_timeout_ms: u32,
    /// Silence after which a conversation stream is finished.
    pub stream_idle_timeout_ms: u32,
    /// QUIC initial congestion window, in 1,200-byte packets. RFC 9002 suggests 10 (12 KB); a
    /// reconnecting client's catch-up (1,000 missed messages are ~140 KB) then takes four round trips
    /// of slow start. 32, as large QUIC deployments use, takes two or three.
    pub initial_window_packets: u32,
    /// Protocol limits.
    pub limits: LimitSettings,
    /// How long a draining server waits for in-flight sends before closing connections.
    pub drain_grace_ms: u32,
    /// Cluster mode.
    pub cluster: ClusterSettings,
    /// Admission hardening.
    pub hardening: HardeningSettings,
    /// Offline push (`[push]`).
    pub push: PushSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("./ferry-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            http: SocketAddr::from(([127, 0, 0, 1], 4480)),
            cert: None,
            key: None,
            node_id: "node-1".into(),
            log_format: LogFormat::Text,
            login_policy: LoginPolicy::All,
            dedupe_window_secs: 7 * 24 * 3600,
            heartbeat_interval_ms: ferry_protocol::limits::DEFAULT_HEARTBEAT_INTERVAL_MS,
            idle_timeout_ms: ferry_protocol::limits::DEFAULTS.idle_timeout_ms,
            stream_idle_timeout_ms: 60_000,
            initial_window_packets: 32,
            limits: LimitSettings::default(),
            drain_grace_ms: 10_000,
            cluster: ClusterSettings::default(),
            hardening: HardeningSettings::default(),
            push: PushSettings::default(),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    /// `--config` (informational; [`Settings::load`] takes the file separately).
    pub config: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--http`.
    pub http: Option<String>,
    /// `--cert`.
    pub cert: Option<PathBuf>,
    /// `--key`.
    pub key: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--node-id`.
    pub node_id: Option<String>,
    /// `--redis` (repeatable); replaces the lower layers' list when given.
    pub redis: Vec<String>,
    /// `--advertise`.
    pub advertise: Option<String>,
    /// `--require-durable-redis`.
    pub require_durable_redis: bool,
    /// `--push-allow` (repeatable); replaces the lower layers' list when given.
    pub push_allow: Vec<String>,
    /// `--push-gateway`.
    pub push_gateway: Option<String>,
}

impl Settings {
    /// Merges defaults, the TOML `config_file`, the `FERRY_*` variables in `env` and `overrides`, in
    /// that order of increasing precedence, and checks the result.
    pub fn load(
        config_file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        overrides: &CliOverrides,
    ) -> Result<Settings, ConfigError> {
        let mut settings = match config_file {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        for (name, value) in env {
            settings.apply_env(&name, &value)?;
        }
        settings.apply_cli(overrides)?;
        settings.validate()?;
        Ok(settings)
    }

    fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Toml {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    fn apply_env(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let limits = &mut self.limits;
        match name {
            "FERRY_DATA_DIR" => self.data_dir = value.into(),
            "FERRY_LISTEN" => self.listen = parse_as(name, value)?,
            "FERRY_HTTP" => self.http = parse_as(name, value)?,
            "FERRY_CERT" => self.cert = Some(value.into()),
            "FERRY_KEY" => self.key = Some(value.into()),
            "FERRY_NODE_ID" => self.node_id = value.into(),
            "FERRY_LOG_FORMAT" => self.log_format = parse_as(name, value)?,
            "FERRY_LOGIN_POLICY" => self.login_policy = parse_as(name, value)?,
            "FERRY_DEDUPE_WINDOW_SECS" => self.dedupe_window_secs = parse_as(name, value)?,
            "FERRY_HEARTBEAT_INTERVAL_MS" => self.heartbeat_interval_ms = parse_as(name, value)?,
            "FERRY_IDLE_TIMEOUT_MS" => self.idle_timeout_ms = parse_as(name, value)?,
            "FERRY_STREAM_IDLE_TIMEOUT_MS" => self.stream_idle_timeout_ms = parse_as(name, value)?,
            "FERRY_INITIAL_WINDOW_PACKETS" => self.initial_window_packets = parse_as(name, value)?,
            "FERRY_DRAIN_GRACE_MS" => self.drain_grace_ms = parse_as(name, value)?,
            "FERRY_LIMITS_MAX_FRAME_SIZE" => limits.max_frame_size = parse_as(name, value)?,
            "FERRY_LIMITS_MAX_BODY_SIZE" => limits.max_body_size = parse_as(name, value)?,
            "FERRY_LIMITS_MAX_INFLIGHT_SENDS" => limits.max_inflight_sends = parse_as(name, value)?,
            "FERRY_LIMITS_MAX_OPEN_STREAMS" => limits.max_open_streams = parse_as(name, value)?,
            "FERRY_LIMITS_MAX_PULL_PAGE" => limits.max_pull_page = parse_as(name, value)?,
            "FERRY_LIMITS_MAX_SYNC_PAGE" => limits.max_sync_page = parse_as(name, value)?,
            "FERRY_LIMITS_SEND_RATE_PER_SEC" => limits.send_rate_per_sec = parse_as(name, value)?,
            "FERRY_LIMITS_SEND_BURST" => limits.send_burst = parse_as(name, value)?,
            "FERRY_LIMITS_TYPING_RATE_PER_SEC" => {
                limits.typing_rate_per_sec = parse_as(name, value)?
            }
            "FERRY_LIMITS_RECENT_WINDOW" => limits.recent_window = parse_as(name, value)?,
            "FERRY_REDIS" => {
                self.cluster.redis = value
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(String::from)
                    .collect()
            }
            "FERRY_ADVERTISE" => self.cluster.advertise = Some(value.into()),
            "FERRY_ADVERTISE_HTTP" => self.cluster.advertise_http = Some(value.into()),
            "FERRY_CLUSTER_KEY_PREFIX" => self.cluster.key_prefix = value.into(),
            "FERRY_CLUSTER_LEASE_TTL_MS" => self.cluster.lease_ttl_ms = parse_as(name, value)?,
            "FERRY_CLUSTER_PROBE_INTERVAL_MS" => {
                self.cluster.probe_interval_ms = parse_as(name, value)?
            }
            "FERRY_REQUIRE_DURABLE_REDIS" => {
                self.cluster.require_durable_redis = parse_as(name, value)?
            }
            _ if name.starts_with("FERRY_PUSH_") => {
                self.push
                    .apply_env(name, value)
                    .map_err(|reason| ConfigError::BadValue {
                        origin: name.to_owned(),
                        value: value.to_owned(),
                        reason,
                    })?;
            }
            _ => {}
        }
        Ok(())
    }

    fn apply_cli(&mut self, cli: &CliOverrides) -> Result<(), ConfigError> {
        if let Some(dir) = &cli.data_dir {
            self.data_dir = dir.clone();
        }
        if let Some(listen) = &cli.listen {
            self.listen = parse_as("--listen", listen)?;
        }
        if let Some(http) = &cli.http {
            self.http = parse_as("--http", http)?;
        }
        if let Some(cert) = &cli.cert {
            self.cert = Some(cert.clone());
        }
        if let Some(key) = &cli.key {
            self.key = Some(key.clone());
        }
        if let Some(format) = &cli.log_format {
            self.log_format = parse_as("--log-format", format)?;
        }
        if let Some(node_id) = &cli.node_id {
            self.node_id = node_id.clone();
        }
        if !cli.redis.is_empty() {
            self.cluster.redis = cli.redis.clone();
        }
        if let Some(advertise) = &cli.advertise {
            self.cluster.advertise = Some(advertise.clone());
        }
        if cli.require_durable_redis {
            self.cluster.require_durable_redis = true;
        }
        if !cli.push_allow.is_empty() {
            self.push.allow = cli.push_allow.clone();
        }
        if let Some(gateway) = &cli.push_gateway {
            self.push.gateway = Some(gateway.clone());
        }
        Ok(())
    }

    /// Rejects combinations that would break the protocol rather than merely tune it.
    fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let problem = if !ferry_protocol::ids::is_valid_name(&self.node_id) {
            format!(
                "node_id {:?} must be 1..=64 of [A-Za-z0-9._@-]",
                self.node_id
            )
        } else if let Some(problem) = self.cluster.problem() {
            problem
        } else if let Some(problem) = self.hardening.problem() {
            problem
        } else if let Some(problem) = self.push.problem() {
            problem
        } else if self.cert.is_some() != self.key.is_some() {
            "cert and key must be given together".into()
        } else if u64::from(limits.max_frame_size) < u64::from(limits.max_body_size) + ENVELOPE_ROOM
        {
            // A Deliver or PullResult of a maximum-size body must fit the announced frame size, or a
            // conforming client could never receive that message (FERRY-LIMIT-3).
            format!(
                "limits.max_frame_size ({}) must be at least limits.max_body_size ({}) + {ENVELOPE_ROOM} (FERRY-LIMIT-3)",
                limits.max_frame_size, limits.max_body_size
            )
        } else if self.stream_idle_timeout_ms < 1000 {
            "stream_idle_timeout_ms must be at least 1000 (FERRY-LIMIT-3)".into()
        } else if !(2..=1000).contains(&self.initial_window_packets) {
            "initial_window_packets must be between 2 and 1000".into()
        } else if self.heartbeat_interval_ms == 0
            || self.idle_timeout_ms <= self.heartbeat_interval_ms
        {
            "heartbeat_interval_ms must be positive and below idle_timeout_ms".into()
        } else if [
            limits.max_inflight_sends,
            limits.max_open_streams,
            limits.max_pull_page,
            limits.max_sync_page,
            limits.send_burst,
        ]
        .contains(&0)
        {
            "limits.max_inflight_sends, max_open_streams, max_pull_page, max_sync_page and send_burst must be positive".into()
        } else {
            return Ok(());
        };
        Err(ConfigError::Invalid(problem))
    }

    /// The limits announced in Welcome.
    pub(crate) fn limits_frame(&self) -> Limits {
        let l = &self.limits;
        Limits {
            max_frame_size: l.max_frame_size,
            max_inflight_sends: l.max_inflight_sends,
            max_open_streams: l.max_open_streams,
            max_pull_page: l.max_pull_page,
            send_rate_per_sec: l.send_rate_per_sec,
            send_burst: l.send_burst,
            max_body_size: l.max_body_size,
            idle_timeout_ms: self.idle_timeout_ms,
            recent_window: l.recent_window,
            typing_rate_per_sec: l.typing_rate_per_sec,
            max_sync_page: l.max_sync_page,
            stream_idle_timeout_ms: self.stream_idle_timeout_ms,
        }
    }
}

fn parse_as<T: FromStr>(origin: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::BadValue {
        origin: origin.to_owned(),
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests;

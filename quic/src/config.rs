//! The one client QUIC configuration: TLS 1.3 only, ALPN `ferry/1` (FERRY-TRANSPORT-1, -2), the server
//! authenticated against given roots or a pinned certificate (FERRY-TRANSPORT-4), early data (0-RTT)
//! offered on resumption, tickets kept in a [`SessionCache`] the caller may share, and the spec's QUIC
//! keep-alive and idle timeout (FERRY-TRANSPORT-9, values in [`ferry_protocol::limits`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::limits::{QUIC_IDLE_TIMEOUT, QUIC_KEEP_ALIVE};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Why a client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The CA file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The PEM text could not be parsed.
    #[error("bad PEM: {0}")]
    Pem(rustls::pki_types::pem::Error),
    /// The PEM text holds no certificate.
    #[error("no certificate in PEM")]
    NoCertificate,
    /// A root certificate was rejected.
    #[error("bad CA certificate: {0}")]
    BadCertificate(rustls::Error),
    /// rustls rejected the protocol settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The crypto provider lacks the cipher suite QUIC's initial packets need.
    #[error("QUIC crypto configuration: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// Which certificates the client trusts to authenticate the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustRoots {
    /// PEM bytes of one or more CA certificates. Trusting exactly the server's own certificate pins it.
    Pem(Vec<u8>),
    /// A PEM file of CA certificates, read when the configuration is built.
    CaFile(PathBuf),
    /// Exactly this (self-signed) server certificate, in DER.
    Pinned(CertificateDer<'static>),
}

impl TrustRoots {
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        match self {
            TrustRoots::Pem(pem) => parse_pem(pem),
            TrustRoots::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|source| ConfigError::Io {
                    path: path.clone(),
                    source,
                })?;
                parse_pem(&pem)
            }
            TrustRoots::Pinned(cert) => Ok(vec![cert.clone()]),
        }
    }
}

/// Parses PEM certificates; at least one is required.
pub fn parse_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ConfigError::Pem)?;
    if certs.is_empty() {
        return Err(ConfigError::NoCertificate);
    }
    Ok(certs)
}

/// Where a client keeps its TLS resumption tickets (needed for 0-RTT). Give the same cache to several
/// builds so that a client built again (an app restarting its connection layer) resumes with 0-RTT too.
/// Tickets are looked up by TLS server name: share a cache only between clients of the same server (a
/// ticket shown to a server that cannot use it costs a 1-RTT handshake, nothing worse). Tickets carry no
/// user identity (the token in Hello does).
#[derive(Clone)]
pub struct SessionCache {
    tickets: Arc<dyn rustls::client::ClientSessionStore>,
    /// The TLS configuration of the last build, by trust roots and ALPN ids. rustls resumes a ticket only
    /// under the very configuration (certificate verifier and client-certificate resolver, compared by
    /// pointer) that received it, so every build sharing this cache must reuse one configuration.
    config: Arc<Mutex<Option<KeyedConfig>>>,
}

/// A TLS configuration with what it was built for: root certificates and ALPN ids.
type KeyedConfig = (ConfigKey, rustls::ClientConfig);
type ConfigKey = (Vec<CertificateDer<'static>>, Vec<Vec<u8>>);

/// Tickets remembered per cache (one per server name and a few spares; each is a few hundred bytes).
const CACHED_TICKETS: usize = 64;

impl SessionCache {
    /// An empty in-memory cache.
    pub fn new() -> Self {
        SessionCache {
            tickets: Arc::new(rustls::client::ClientSessionMemoryCache::new(
                CACHED_TICKETS,
            )),
            config: Arc::default(),
        }
    }

    /// The TLS configuration for `key`: the one built before for the same key, else a new one.
    fn tls_config(&self, key: ConfigKey) -> Result<rustls::ClientConfig, ConfigError> {
        let mut slot = self.config.lock().expect("session cache lock");
        if let Some((built_for, config)) = slot.as_ref() {
            if *built_for == key {
                return Ok(config.clone());
            }
        }
        let config = new_tls_config(&key, self.tickets.clone())?;
        *slot = Some((key, config.clone()));
        Ok(config)
    }
}

impl Default for SessionCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCache")
    }
}

/// Builds the [`quinn::ClientConfig`] every ferry/1 client uses.
///
/// ```no_run
/// # fn main() -> Result<(), ferry_quic::ConfigError> {
/// use ferry_quic::{ClientConfigBuilder, SessionCache, TrustRoots};
/// let cache = SessionCache::new();
/// let config = ClientConfigBuilder::new(TrustRoots::CaFile("data/cert.pem".into()))
///     .session_cache(&cache)
///     .build()?;
/// let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
/// endpoint.set_default_client_config(config);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfigBuilder {
    roots: TrustRoots,
    cache: Option<SessionCache>,
    zero_rtt: bool,
    alpn: Vec<Vec<u8>>,
    keep_alive: Duration,
}

impl ClientConfigBuilder {
    /// A configuration trusting `roots`, offering `ferry/1` and 0-RTT, with a cache of its own.
    pub fn new(roots: TrustRoots) -> Self {
        ClientConfigBuilder {
            roots,
            cache: None,
            zero_rtt: true,
            alpn: vec![ferry_protocol::ALPN.to_vec()],
            keep_alive: QUIC_KEEP_ALIVE,
        }
    }

    /// Keeps tickets in `cache` (shared with other builds, see [`SessionCache`]).
    pub fn session_cache(mut self, cache: &SessionCache) -> Self {
        self.cache = Some(cache.clone());
        self
    }

    /// Whether early data is offered on resumption (default: yes).
    pub fn zero_rtt(mut self, enabled: bool) -> Self {
        self.zero_rtt = enabled;
        self
    }

    /// Offers exactly these ALPN ids, in order of preference, instead of `ferry/1` alone (conformance
    /// cases of version negotiation, FERRY-TRANSPORT-3 and -8).
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// PINGs more often than the spec's 10 s. Only for peers known to advertise a QUIC idle timeout
    /// below the 15 s the spec asks servers to keep (a conformance run against a server with short
    /// test timers): the interval must stay below the negotiated idle timeout (FERRY-TRANSPORT-9),
    /// and QUIC gives no way to learn that before the connection idles.
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval.min(QUIC_KEEP_ALIVE);
        self
    }

    /// The quinn configuration.
    pub fn build(self) -> Result<quinn::ClientConfig, ConfigError> {
        let key = (self.roots.certificates()?, self.alpn);
        let cache = self.cache.unwrap_or_default();
        let mut tls = cache.tls_config(key)?;
        // Early data needs a resumption ticket from an earlier connection that used the same cache.
        tls.enable_early_data = self.zero_rtt;
        let quic = QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(QUIC_IDLE_TIMEOUT)
                    .expect("the spec's idle timeout fits a QUIC varint"),
            ))
            // ferry/1 has no unidirectional streams (FERRY-TRANSPORT-6).
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// TLS 1.3 only, trusting exactly the key's certificates, offering the key's ALPN ids, tickets kept in
/// `tickets`.
fn new_tls_config(
    (certs, alpn): &ConfigKey,
    tickets: Arc<dyn rustls::client::ClientSessionStore>,
) -> Result<rustls::ClientConfig, ConfigError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certs {
        store
            .add(cert.clone())
            .map_err(ConfigError::BadCertificate)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.clone();
    tls.resumption = rustls::client::Resumption::store(tickets);
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_roots_are_typed_errors() {
        let build = |roots| ClientConfigBuilder::new(roots).build();
        assert!(matches!(
            build(TrustRoots::Pem(b"not a pem".to_vec())),
            Err(ConfigError::NoCertificate)
        ));
        assert!(matches!(
            build(TrustRoots::CaFile("/nonexistent/ferry/ca.pem".into())),
            Err(ConfigError::Io { .. })
        ));
        let truncated = b"-----BEGIN CERTIFICATE-----\nMIIB\n".to_vec();
        assert!(build(TrustRoots::Pem(truncated)).is_err());
    }
}

//! TLS and QUIC settings of the client: TLS 1.3 only, ALPN `ferry/1`, early data (0-RTT) enabled with
//! an in-memory session cache per client (or shared, see [`SessionCache`]), QUIC keep-alive 10 s and
//! idle timeout 60 s (spec: Transport).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;

use crate::error::ClientError;

/// Where the trust roots come from.
#[derive(Debug, Clone)]
pub enum TrustRoots {
    /// PEM bytes of one or more certificates. Trusting exactly the server's own certificate pins it.
    Pem(Vec<u8>),
}

/// Parses PEM certificates.
pub fn parse_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::Config("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// Where a client keeps its TLS resumption tickets (needed for 0-RTT). By default every built client has
/// its own, so 0-RTT happens on its reconnects; give the same cache to several builds
/// ([`crate::ClientBuilder::session_cache`]) so that a client built again (an app restarting its
/// connection layer) resumes with 0-RTT too. Tickets are looked up by TLS server name: share a cache only
/// between clients of the same server (a ticket shown to a server that cannot use it costs a 1-RTT
/// handshake, nothing worse). Tickets carry no user identity (the token in Hello does).
#[derive(Clone)]
pub struct SessionCache {
    tickets: Arc<dyn rustls::client::ClientSessionStore>,
    /// The TLS configuration of the last build, by trust roots. rustls resumes a ticket only under the
    /// very configuration (certificate verifier and client-certificate resolver, compared by pointer)
    /// that received it, so every build sharing this cache must reuse one configuration.
    config: Arc<Mutex<Option<RootedConfig>>>,
}

/// A TLS configuration with the PEM trust roots it was built for.
type RootedConfig = (Vec<u8>, rustls::ClientConfig);

impl SessionCache {
    /// An empty in-memory cache.
    pub fn new() -> Self {
        SessionCache {
            tickets: Arc::new(rustls::client::ClientSessionMemoryCache::new(64)),
            config: Arc::default(),
        }
    }

    /// The TLS configuration for `pem` roots: the one built before for the same roots, else a new one.
    fn tls_config(&self, pem: &[u8]) -> Result<rustls::ClientConfig, ClientError> {
        let mut slot = self.config.lock().expect("session cache lock");
        if let Some((roots, config)) = slot.as_ref() {
            if roots == pem {
                return Ok(config.clone());
            }
        }
        let config = new_tls_config(pem, self.tickets.clone())?;
        *slot = Some((pem.to_vec(), config.clone()));
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

/// Builds the quinn client configuration: tickets go to `cache`; `zero_rtt` enables early data on
/// resumption.
pub fn client_config(
    roots: &TrustRoots,
    cache: &SessionCache,
    zero_rtt: bool,
) -> Result<quinn::ClientConfig, ClientError> {
    let TrustRoots::Pem(pem) = roots;
    let mut tls = cache.tls_config(pem)?;
    // Early data needs a resumption ticket from an earlier connection that used the same cache.
    tls.enable_early_data = zero_rtt;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(60))
            .expect("60 s is a valid idle timeout"),
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// TLS 1.3 only, ALPN `ferry/1`, trusting exactly the certificates in `pem`, tickets kept in `tickets`.
fn new_tls_config(
    pem: &[u8],
    tickets: Arc<dyn rustls::client::ClientSessionStore>,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in parse_pem(pem)? {
        store
            .add(cert)
            .map_err(|e| ClientError::Config(format!("bad CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ferry_protocol::ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::store(tickets);
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_pem_without_certificates() {
        assert!(matches!(
            client_config(
                &TrustRoots::Pem(b"not a pem".to_vec()),
                &SessionCache::new(),
                true
            ),
            Err(ClientError::Config(_))
        ));
    }
}

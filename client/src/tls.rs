//! TLS and QUIC settings of the client: TLS 1.3 only, ALPN `ferry/1`, early data (0-RTT) enabled with
//! rustls's in-memory session cache, QUIC keep-alive 10 s and idle timeout 60 s (spec: Transport).

use std::sync::Arc;
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

/// Builds the quinn client configuration. Keep one per client: the session cache (and so 0-RTT
/// resumption) lives inside it.
pub fn client_config(roots: &TrustRoots) -> Result<quinn::ClientConfig, ClientError> {
    let TrustRoots::Pem(pem) = roots;
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
    // Early data needs a resumption ticket from an earlier connection; `Resumption::default()` keeps
    // them in memory (per process), which is what the second connection to a server uses for 0-RTT.
    tls.enable_early_data = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_pem_without_certificates() {
        assert!(matches!(
            client_config(&TrustRoots::Pem(b"not a pem".to_vec())),
            Err(ClientError::Config(_))
        ));
    }
}

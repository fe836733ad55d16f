//! Certificates of the runner's own: the scripted server's (a QUIC server config made with rustls and
//! quinn directly), and a CA that signed nothing the client sees (the `untrusted` case). The runner
//! makes them itself rather than borrowing the server's TLS code, so that a bug there cannot hide.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// QUIC bidirectional streams a scripted connection may open (clients open a few; this only bounds).
const MAX_BIDI_STREAMS: u32 = 128;
/// Datagrams queued per connection before quinn drops the oldest.
const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;
/// TLS sessions remembered for resumption and 0-RTT (a case has a handful of connections).
const SESSION_CACHE_ENTRIES: usize = 256;

/// Why a certificate or server config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing the PEM file failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rustls refused the certificate or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The crypto provider lacks the cipher suite QUIC's initial packets need.
    #[error("QUIC crypto configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`, its key, and its PEM file (which
/// is also the CA file a client must trust).
pub struct SelfSigned {
    /// The PEM certificate file.
    pub cert_path: PathBuf,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl SelfSigned {
    /// Generates a pair and writes the certificate to `dir/cert.pem`.
    pub fn generate(dir: &Path) -> Result<SelfSigned, TlsError> {
        let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let generated = rcgen::generate_simple_self_signed(names)?;
        let cert_path = dir.join("cert.pem");
        std::fs::write(&cert_path, generated.cert.pem()).map_err(|source| TlsError::Write {
            path: cert_path.clone(),
            source,
        })?;
        Ok(SelfSigned {
            cert_path,
            cert: generated.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der()),
        })
    }

    /// A QUIC server config as a ferry/1 server needs it: TLS 1.3, ALPN `ferry/1` only, 0-RTT accepted
    /// (which needs a stateful session cache in rustls), QUIC idle timeout `idle`, no unidirectional
    /// streams, datagrams on, migration allowed.
    pub fn server_config(&self, idle: Duration) -> Result<quinn::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        tls.alpn_protocols = vec![ferry_protocol::ALPN.to_vec()];
        tls.max_early_data_size = u32::MAX;
        tls.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        let mut transport = TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                IdleTimeout::try_from(idle).unwrap_or_else(|_| VarInt::MAX.into()),
            ))
            .max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        config.transport_config(Arc::new(transport)).migration(true);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_file_and_config_are_made() {
        let dir = tempfile::tempdir().unwrap();
        let cert = SelfSigned::generate(dir.path()).unwrap();
        let pem = std::fs::read(&cert.cert_path).unwrap();
        let parsed = ferry_quic::config::parse_pem(&pem).unwrap();
        assert_eq!(parsed, vec![cert.cert.clone()]);
        cert.server_config(Duration::from_secs(15)).unwrap();
        // Two generations are two different CAs (the `untrusted` case relies on it).
        let other = tempfile::tempdir().unwrap();
        assert_ne!(SelfSigned::generate(other.path()).unwrap().cert, cert.cert);
    }
}

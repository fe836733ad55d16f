//! TLS material and the QUIC server configuration (clients build theirs with `ferry-quic`).
//!
//! ferry/1 runs on TLS 1.3 only, with exactly one ALPN id: a client that does not offer it fails the
//! handshake (no_application_protocol, QUIC CRYPTO_ERROR 0x178). Without `--cert`/`--key` the server
//! makes a self-signed certificate for `localhost`, `127.0.0.1` and `::1` in its data dir on first
//! start; that `cert.pem` is also the CA file clients trust.
//!
//! The server accepts 0-RTT (`max_early_data_size = u32::MAX`, the only non-zero value QUIC allows);
//! clients offer it on resumption (`ferry_quic::ClientConfigBuilder`). Early data can be replayed;
//! ferry/1 allows only idempotent frames in it (DECISIONS.md, "0-RTT").

use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::StoresServerSessions;

/// Datagrams (typing, presence) queued per connection before quinn drops the oldest.
const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;
/// TLS sessions remembered for resumption and 0-RTT (each a few hundred bytes; in a cluster, those of
/// every node).
pub const SESSION_CACHE_ENTRIES: usize = 65_536;

/// Why TLS material or a QUIC config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a PEM file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file could not be parsed, or holds no item of the needed kind.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's error (`NoItemsFound` for a file without certificates or key).
        source: rustls::pki_types::pem::Error,
    },
    /// `cert.pem` exists in the data dir but `key.pem` does not; regenerating would silently change
    /// the certificate clients trust, so the operator must decide.
    #[error("{} exists but its key {} is missing; restore the key or delete both", cert.display(), key.display())]
    KeyMissing {
        /// The existing certificate.
        cert: PathBuf,
        /// The missing key.
        key: PathBuf,
    },
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the certificate, key or protocol settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The crypto provider lacks the cipher suite QUIC's initial packets need.
    #[error("QUIC crypto configuration: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// Where the server's certificate chain and private key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, PEM. For a self-signed certificate this is also the clients' CA file.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// Returns `data_dir/cert.pem` and `data_dir/key.pem`, creating a self-signed pair for `localhost`,
/// `127.0.0.1` and `::1` if the certificate does not exist yet.
pub fn ensure_self_signed(data_dir: &Path) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles {
        cert: data_dir.join("cert.pem"),
        key: data_dir.join("key.pem"),
    };
    // The key is written before the certificate, so an existing certificate means a complete pair; a
    // lone key is left over from an interrupted first start and is replaced.
    if files.cert.exists() {
        if !files.key.exists() {
            return Err(TlsError::KeyMissing {
                cert: files.cert,
                key: files.key,
            });
        }
        return Ok(files);
    }
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let generated = rcgen::generate_simple_self_signed(names)?;
    write_atomically(
        &files.key,
        generated.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_atomically(&files.cert, generated.cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// Writes `path` via a temporary file and a rename, so readers never see half a file.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a PEM certificate chain and the first private key in a PEM key file.
pub fn load_certs_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| pem_error(key, source))?;
    Ok((certs, key))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem_error(path, source))?;
    if certs.is_empty() {
        return Err(pem_error(path, rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(certs)
}

fn pem_error(path: &Path, source: rustls::pki_types::pem::Error) -> TlsError {
    match source {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Io {
            path: path.to_owned(),
            source,
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    }
}

/// ring, the provider the whole workspace is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS session store of a single node: rustls' bounded memory cache. A cluster node uses
/// `ferry_cluster::SharedTickets` instead, so its tickets resume (with 0-RTT) on every node.
pub fn local_sessions() -> Arc<dyn StoresServerSessions> {
    rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES)
}

/// The QUIC server config: TLS 1.3, ALPN `alpn` only, 0-RTT accepted, migration allowed, sessions
/// kept in `sessions` (see [`local_sessions`]).
/// `max_bidi_streams` is the QUIC stream limit per connection; set it a little above the ferry/1
/// `max_open_streams` so that the server, not QUIC flow control, answers the excess with
/// TOO_MANY_STREAMS. `initial_window_packets` is the congestion window a connection starts with, in
/// packets of QUIC's 1,200-byte minimum size (see `Settings::initial_window_packets`).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
    idle_timeout: Duration,
    max_bidi_streams: u32,
    initial_window_packets: u32,
    sessions: Arc<dyn StoresServerSessions>,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = u32::MAX;
    // Resumption (and so 0-RTT) needs the server to remember sessions. rustls allows early data only
    // with a stateful store, not with stateless tickets, because a stored session is used once, which
    // stops replays of the same early data. rustls' default cache holds 256 sessions; that is too few
    // for a server whose clients reconnect in crowds.
    tls.session_storage = sessions;

    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle_timeout_of(idle_timeout)))
        .max_concurrent_bidi_streams(VarInt::from_u32(max_bidi_streams))
        // ferry/1 uses no unidirectional streams; refusing them keeps a misbehaving peer from queuing any.
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(u64::from(initial_window_packets) * MIN_PACKET_SIZE);
    transport.congestion_controller_factory(Arc::new(cubic));

    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport)).migration(true);
    Ok(config)
}

/// QUIC's smallest maximum datagram size (RFC 9000 §14), the packet size of the initial window.
const MIN_PACKET_SIZE: u64 = 1200;

/// QUIC caps idle timeouts at 2^62 ms; anything that large means "practically never".
fn idle_timeout_of(duration: Duration) -> IdleTimeout {
    IdleTimeout::try_from(duration).unwrap_or_else(|_| VarInt::MAX.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_quic::TrustRoots;

    #[test]
    fn self_signed_is_created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_self_signed(dir.path()).unwrap();
        let cert = std::fs::read(&files.cert).unwrap();
        let key = std::fs::read(&files.key).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = ensure_self_signed(dir.path()).unwrap();
        assert_eq!(again, files);
        assert_eq!(std::fs::read(&again.cert).unwrap(), cert);
        assert_eq!(std::fs::read(&again.key).unwrap(), key);
        let (certs, _) = load_certs_and_key(&files.cert, &files.key).unwrap();
        assert_eq!(certs.len(), 1);

        std::fs::remove_file(&files.key).unwrap();
        assert!(matches!(
            ensure_self_signed(dir.path()),
            Err(TlsError::KeyMissing { .. })
        ));
    }

    #[test]
    fn pem_without_items_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            load_certs_and_key(&empty, &empty),
            Err(TlsError::Pem { .. })
        ));
        assert!(matches!(
            load_certs_and_key(&dir.path().join("missing.pem"), &empty),
            Err(TlsError::Io { .. })
        ));
    }

    /// A server on 127.0.0.1 that echoes one bidi stream per connection.
    fn echo_server(dir: &Path) -> (quinn::Endpoint, PathBuf) {
        let (endpoint, ca) = server(dir, 10);
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    if let Ok((mut send, mut recv)) = connection.accept_bi().await {
                        let message = recv.read_to_end(1024).await.unwrap();
                        send.write_all(&message).await.unwrap();
                        send.finish().unwrap();
                        let _ = send.stopped().await;
                    }
                });
            }
        });
        (endpoint, ca)
    }

    /// A ferry/1 server endpoint on 127.0.0.1 starting connections with `initial_window_packets`; its CA.
    fn server(dir: &Path, initial_window_packets: u32) -> (quinn::Endpoint, PathBuf) {
        let files = ensure_self_signed(dir).unwrap();
        let (certs, key) = load_certs_and_key(&files.cert, &files.key).unwrap();
        let config = server_config(
            certs,
            key,
            b"ferry/1",
            Duration::from_secs(10),
            16,
            initial_window_packets,
            local_sessions(),
        )
        .unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        (endpoint, files.cert)
    }

    fn client(ca: &Path, alpn: &[u8]) -> quinn::Endpoint {
        let config = ferry_quic::ClientConfigBuilder::new(TrustRoots::CaFile(ca.to_owned()))
            .alpn(&[alpn])
            .build()
            .unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        endpoint
    }

    #[tokio::test]
    async fn connections_start_with_the_configured_congestion_window() {
        let dir = tempfile::tempdir().unwrap();
        let (server, ca) = server(dir.path(), 32);
        let client = client(&ca, b"ferry/1");
        let connecting = client
            .connect(server.local_addr().unwrap(), "localhost")
            .unwrap();
        let (accepted, _client_side) = tokio::join!(
            async { server.accept().await.unwrap().await.unwrap() },
            connecting
        );
        // quinn's default is 10 packets (12,000 bytes); the handshake alone cannot grow it this far.
        assert!(
            accepted.congestion_state().window() >= 32 * MIN_PACKET_SIZE,
            "window {}",
            accepted.congestion_state().window()
        );
    }

    #[tokio::test]
    async fn handshake_negotiates_ferry_1_and_carries_a_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (server, ca) = echo_server(dir.path());
        let client = client(&ca, b"ferry/1");
        let connection = client
            .connect(server.local_addr().unwrap(), "localhost")
            .unwrap()
            .await
            .unwrap();
        let handshake = connection
            .handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap();
        assert_eq!(handshake.protocol.as_deref(), Some(&b"ferry/1"[..]));

        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(b"hello ferry").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(1024).await.unwrap(), b"hello ferry");
    }

    #[tokio::test]
    async fn resumed_connection_uses_0rtt() {
        let dir = tempfile::tempdir().unwrap();
        let (server, ca) = echo_server(dir.path());
        let client = client(&ca, b"ferry/1");
        let addr = server.local_addr().unwrap();
        // Without a session ticket from an earlier connection there is no 0-RTT.
        assert!(client
            .connect(addr, "localhost")
            .unwrap()
            .into_0rtt()
            .is_err());
        // The ticket arrives after the handshake; a stream round trip gives it time to land.
        let first = client.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = first.open_bi().await.unwrap();
        send.write_all(b"1").await.unwrap();
        send.finish().unwrap();
        recv.read_to_end(16).await.unwrap();
        first.close(0u32.into(), b"");

        let (second, accepted) = client
            .connect(addr, "localhost")
            .unwrap()
            .into_0rtt()
            .expect("a session ticket allows 0-RTT");
        let (mut send, mut recv) = second.open_bi().await.unwrap();
        send.write_all(b"early").await.unwrap();
        send.finish().unwrap();
        assert!(accepted.await, "server accepted early data");
        assert_eq!(recv.read_to_end(16).await.unwrap(), b"early");
    }

    #[tokio::test]
    async fn unknown_alpn_fails_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let (server, ca) = echo_server(dir.path());
        let client = client(&ca, b"ferry/2");
        let result = client
            .connect(server.local_addr().unwrap(), "localhost")
            .unwrap()
            .await;
        match result {
            // no_application_protocol (TLS alert 120) as a QUIC CRYPTO_ERROR: 0x100 + 120 = 0x178.
            Err(quinn::ConnectionError::ConnectionClosed(close)) => {
                assert_eq!(close.error_code, quinn::TransportErrorCode::crypto(120));
            }
            other => panic!("expected a CRYPTO_ERROR close, got {other:?}"),
        }
    }
}

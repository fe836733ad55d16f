//! A real quinn server endpoint on loopback for the tests: self-signed certificate, ALPN `ferry/1`,
//! 0-RTT accepted; every bidirectional stream a client opens is handed to the test.

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_quic::{ClientConfigBuilder, SessionCache, TrustRoots};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;

/// A stream the server accepted: its connection and both halves.
pub type Accepted = (quinn::Connection, quinn::SendStream, quinn::RecvStream);

/// A running loopback server.
pub struct Server {
    pub addr: SocketAddr,
    pub cert: CertificateDer<'static>,
    pub key: Vec<u8>,
    pub streams: mpsc::Receiver<Accepted>,
    _endpoint: quinn::Endpoint,
}

impl Server {
    pub fn start() -> Server {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = generated.signing_key.serialize_der();
        Server::start_with(generated.cert.der().clone(), key)
    }

    /// A server with the given certificate and PKCS#8 key, and a session cache of its own: a client
    /// holding another server's ticket for the same name and certificate has its 0-RTT rejected here.
    pub fn start_with(cert: CertificateDer<'static>, pkcs8_key: Vec<u8>) -> Server {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_key.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![ferry_protocol::ALPN.to_vec()];
        tls.max_early_data_size = u32::MAX;
        let config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let (tx, streams) = mpsc::channel(64);
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let connection = match incoming.accept().map(|c| c.into_0rtt()) {
                        Ok(Ok((connection, _))) => connection,
                        Ok(Err(connecting)) => match connecting.await {
                            Ok(connection) => connection,
                            Err(_) => return,
                        },
                        Err(_) => return,
                    };
                    while let Ok((send, recv)) = connection.accept_bi().await {
                        if tx.send((connection.clone(), send, recv)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Server {
            addr: endpoint.local_addr().unwrap(),
            cert,
            key: pkcs8_key,
            streams,
            _endpoint: endpoint,
        }
    }

    /// A client endpoint whose configuration pins this server's certificate.
    pub fn client(&self, cache: &SessionCache) -> quinn::Endpoint {
        let config = ClientConfigBuilder::new(TrustRoots::Pinned(self.cert.clone()))
            .session_cache(cache)
            .build()
            .unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        endpoint
    }

    /// A connected client: its endpoint (kept alive by the caller) and connection. The server sees a
    /// stream the client opens only once bytes were written on it.
    pub async fn connect(&self) -> (quinn::Endpoint, quinn::Connection) {
        let client = self.client(&SessionCache::new());
        let connection = client
            .connect(self.addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        (client, connection)
    }

    /// The next stream a client opened and wrote on.
    pub async fn accepted(&mut self) -> Accepted {
        let wait = std::time::Duration::from_secs(10);
        tokio::time::timeout(wait, self.streams.recv())
            .await
            .expect("a stream within 10 s")
            .expect("server running")
    }
}

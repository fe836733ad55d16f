//! The client configuration against a real quinn server on loopback: ALPN, pinned certificate, 0-RTT
//! resumption across builds that share a session cache.

mod support;

use ferry_quic::{ClientConfigBuilder, SessionCache, TrustRoots};
use support::Server;

/// One stream round trip, so the session ticket (sent after the handshake) has arrived.
async fn round_trip(connection: &quinn::Connection, server: &mut Server) {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(b"ping").await.unwrap();
    let (_, mut server_send, _) = server.accepted().await;
    server_send.write_all(b"pong").await.unwrap();
    server_send.finish().unwrap();
    assert_eq!(recv.read_to_end(16).await.unwrap(), b"pong");
}

#[tokio::test]
async fn connects_with_alpn_ferry_1_and_a_pinned_certificate() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let handshake = connection
        .handshake_data()
        .unwrap()
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .unwrap();
    assert_eq!(handshake.protocol.as_deref(), Some(ferry_protocol::ALPN));
    round_trip(&connection, &mut server).await;
}

#[tokio::test]
async fn builds_sharing_a_session_cache_resume_with_0rtt() {
    let mut server = Server::start();
    let cache = SessionCache::new();
    // Without a ticket there is no early data.
    let first_client = server.client(&cache);
    assert!(first_client
        .connect(server.addr, "localhost")
        .unwrap()
        .into_0rtt()
        .is_err());
    let first = first_client
        .connect(server.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    round_trip(&first, &mut server).await;
    first.close(0u32.into(), b"");

    // A separate build (a client rebuilt by the app) with the same cache resumes with 0-RTT.
    let second_client = server.client(&cache);
    let (second, accepted) = second_client
        .connect(server.addr, "localhost")
        .unwrap()
        .into_0rtt()
        .expect("the shared cache holds a ticket valid for this configuration");
    let (mut send, _recv) = second.open_bi().await.unwrap();
    send.write_all(b"early").await.unwrap();
    assert!(accepted.await, "the server accepted early data");

    // A build with a cache of its own has no ticket.
    let stranger = server.client(&SessionCache::new());
    assert!(stranger
        .connect(server.addr, "localhost")
        .unwrap()
        .into_0rtt()
        .is_err());
}

#[tokio::test]
async fn an_alpn_the_server_does_not_speak_fails_the_handshake() {
    let server = Server::start();
    let config = ClientConfigBuilder::new(TrustRoots::Pinned(server.cert.clone()))
        .alpn(&[b"ferry/2"])
        .build()
        .unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(config);
    let result = client.connect(server.addr, "localhost").unwrap().await;
    match result {
        // no_application_protocol (TLS alert 120) as a QUIC CRYPTO_ERROR: 0x100 + 120 = 0x178.
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(close.error_code, quinn::TransportErrorCode::crypto(120));
        }
        other => panic!("expected a CRYPTO_ERROR close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_certificate_that_is_not_the_pinned_one_is_refused() {
    let server = Server::start();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let config = ClientConfigBuilder::new(TrustRoots::Pinned(other.cert.der().clone()))
        .build()
        .unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(config);
    let result = client.connect(server.addr, "localhost").unwrap().await;
    assert!(result.is_err(), "connected to an unpinned server");
}

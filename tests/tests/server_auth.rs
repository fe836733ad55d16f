//! Authentication in the handshake: expired, forged, wrong-audience, wrong-device and missing tokens are
//! refused with UNAUTHENTICATED, and the server keeps serving everyone else.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ferry_protocol::ErrorCode;
use ferry_server::auth::TokenSecret;
use ferry_tests::TestServer;
use hmac::{Hmac, Mac};

fn secret(server: &TestServer) -> TokenSecret {
    TokenSecret::load(&server.dir().join(ferry_server::server::SECRET_FILE)).unwrap()
}

/// Signs an arbitrary payload with the server's secret, as ferry-server's token format does.
fn sign(server: &TestServer, payload: &serde_json::Value) -> String {
    let hex_key =
        std::fs::read_to_string(server.dir().join(ferry_server::server::SECRET_FILE)).unwrap();
    let key = hex::decode(hex_key.trim()).unwrap();
    let body = format!("v1.{}", URL_SAFE_NO_PAD.encode(payload.to_string()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(body.as_bytes());
    format!(
        "{body}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

async fn refused(server: &TestServer, token: &str, device: &str) {
    let result = server.target.session(token, device).await;
    match result {
        Ok(_) => panic!("token accepted"),
        Err(e) => assert_eq!(e.wire_code(), Some(ErrorCode::UNAUTHENTICATED), "{e}"),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn bad_tokens_are_refused_in_the_handshake() {
    let server = TestServer::start().await;
    let secret = secret(&server);

    let expired = secret.mint(
        "alice",
        "phone",
        Duration::from_secs(60),
        SystemTime::now() - Duration::from_secs(3600),
    );
    refused(&server, &expired, "phone").await;

    let mut forged = server.token("alice", "phone");
    let dot = forged.find('.').unwrap() + 2;
    forged.replace_range(
        dot..dot + 1,
        if &forged[dot..dot + 1] == "A" {
            "B"
        } else {
            "A"
        },
    );
    refused(&server, &forged, "phone").await;

    let other_server =
        TokenSecret::generate().mint("alice", "phone", Duration::from_secs(60), SystemTime::now());
    refused(&server, &other_server, "phone").await;

    let wrong_audience = serde_json::json!({
        "sub": "alice", "dev": "phone", "aud": "somebody-else", "exp": now_secs() + 600, "iat": now_secs()
    });
    refused(&server, &sign(&server, &wrong_audience), "phone").await;
    // The same payload with the right audience is accepted, so the signing above is faithful.
    let right_audience = serde_json::json!({
        "sub": "alice", "dev": "phone", "aud": "ferry", "exp": now_secs() + 600, "iat": now_secs()
    });
    server
        .target
        .session(&sign(&server, &right_audience), "phone")
        .await
        .unwrap();

    // A token for one device does not open a session for another.
    refused(&server, &server.token("alice", "phone"), "laptop").await;
    refused(&server, "", "phone").await;
    refused(&server, "not-a-token", "phone").await;

    // Everyone else is still served.
    let session = server.session("bob", "phone").await;
    assert_eq!(session.welcome.user_id, "bob");
    assert!(server.handle.metrics().errors(ErrorCode::UNAUTHENTICATED) >= 7);
}

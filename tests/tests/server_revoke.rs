//! Token revocation (FERRY-HARDEN-5 to -7): `ferry-server revoke` and `POST /admin/revoke` close the
//! device's live sessions with TOKEN_REVOKED at once, its earlier tokens are refused from then on (also
//! after a restart, and on every node of a cluster), other devices and users keep being served, and
//! ferry-client stops instead of reconnecting.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_client::{BackoffConfig, ClientBuilder, ConnectionState, Event};
use ferry_interop::driver::{DriverError, Session, Target};
use ferry_protocol::frame::frame::Kind;
use ferry_protocol::ErrorCode;
use ferry_server::auth::TokenSecret;
use ferry_server::server::SECRET_FILE;
use ferry_test_support::process::{workspace_binary, ServerProcess};
use ferry_tests::cluster::{Backend, TestCluster};
use ferry_tests::{wait_until, TestServer};

const WAIT: Duration = Duration::from_secs(30);

fn secret(data_dir: &Path) -> TokenSecret {
    TokenSecret::load(&data_dir.join(SECRET_FILE)).unwrap()
}

/// A token issued at `at`.
fn token_at(data_dir: &Path, user: &str, device: &str, at: SystemTime) -> String {
    secret(data_dir).mint(user, device, Duration::from_secs(3600), at)
}

/// The session was told TOKEN_REVOKED (an Error frame on the control stream, FERRY-ERR-8's order) and
/// its connection closed with that code.
async fn expect_revoked(session: &mut Session) {
    match tokio::time::timeout(WAIT, session.next_control("Error")).await {
        Ok(Ok(f)) => match f.kind {
            Some(Kind::Error(e)) => assert_eq!(ErrorCode(e.code), ErrorCode::TOKEN_REVOKED),
            other => panic!("expected Error{{TOKEN_REVOKED}}, got {other:?}"),
        },
        // The close may overtake the frame; the close code alone must then say it.
        Ok(Err(e)) => assert_eq!(e.wire_code(), Some(ErrorCode::TOKEN_REVOKED), "{e}"),
        Err(_) => panic!("the revoked session was not told within {WAIT:?}"),
    }
    let reason = tokio::time::timeout(WAIT, session.connection.closed())
        .await
        .expect("the revoked session's connection closes");
    assert_eq!(
        DriverError::Connection(reason).wire_code(),
        Some(ErrorCode::TOKEN_REVOKED)
    );
}

async fn still_served(session: &mut Session) {
    session.heartbeat(0).await.expect("heartbeat answered");
}

fn assert_unauthenticated(result: Result<Session, DriverError>) {
    match result {
        Ok(_) => panic!("a revoked token was accepted"),
        Err(e) => assert_eq!(e.wire_code(), Some(ErrorCode::UNAUTHENTICATED), "{e}"),
    }
}

/// Runs `ferry-server revoke` with `args`: (exit code, stdout, stderr).
fn revoke_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(workspace_binary("ferry-server"))
        .arg("revoke")
        .args(args)
        .output()
        .expect("run ferry-server revoke");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_closes_the_live_session_and_the_token_stays_refused_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut server = ServerProcess::start(data);
    let target = Target::new(server.addr, &server.ca).unwrap();
    let issued = SystemTime::now();
    let phone_token = token_at(data, "alice", "phone", issued);
    let mut phone = target.session(&phone_token, "phone").await.unwrap();
    let mut tablet = target
        .session(&token_at(data, "alice", "tablet", issued), "tablet")
        .await
        .unwrap();
    let mut bob = target
        .session(&token_at(data, "bob", "phone", issued), "phone")
        .await
        .unwrap();

    let data_arg = data.to_str().unwrap();
    let (code, stdout, stderr) = revoke_cli(&[
        "--data-dir",
        data_arg,
        "--user",
        "alice",
        "--device",
        "phone",
    ]);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.starts_with("revoked user=alice device=phone revoked_at=")
            && stdout.trim_end().ends_with("sessions_closed=1"),
        "{stdout}"
    );
    expect_revoked(&mut phone).await;
    // The user's other device and other users are untouched.
    still_served(&mut tablet).await;
    still_served(&mut bob).await;
    assert_unauthenticated(target.session(&phone_token, "phone").await);

    // The stamp is durable: after a restart the old token is still refused, a newer one is not.
    assert_eq!(server.terminate(), Some(0));
    drop(server);
    let server = ServerProcess::start(data);
    let target = Target::new(server.addr, &server.ca).unwrap();
    assert_unauthenticated(target.session(&phone_token, "phone").await);
    let later = token_at(
        data,
        "alice",
        "phone",
        SystemTime::now() + Duration::from_secs(2),
    );
    let mut again = target
        .session(&later, "phone")
        .await
        .expect("a newer token");
    still_served(&mut again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_client_stops_on_token_revoked_instead_of_reconnecting() {
    let server = TestServer::start().await;
    let store = tempfile::tempdir().unwrap();
    let (client, mut events) = ClientBuilder::new()
        .endpoints([server.handle.local_addr().to_string()])
        .ca_file(server.handle.ca_path())
        .token(server.token("carol", "phone"))
        .device_id("phone")
        .store_path(store.path().join("carol"))
        // Fast backoff: a client that did reconnect would try many times within the wait below.
        .backoff(BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .build()
        .await
        .expect("client");
    assert!(client.connected(WAIT).await);
    let states: Arc<Mutex<Vec<ConnectionState>>> = Arc::default();
    let sink = states.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::Connection(state) = event {
                sink.lock().unwrap().push(state);
            }
        }
    });

    let revoked = ferry_server::revoke::request(&server.dir(), "carol", None)
        .await
        .expect("revoked");
    assert_eq!((revoked.sessions_closed, revoked.device), (1, None));
    let stopped = wait_until(WAIT, || {
        states
            .lock()
            .unwrap()
            .iter()
            .any(|s| matches!(s, ConnectionState::AuthFailed { .. }))
    })
    .await;
    assert!(stopped, "no AuthFailed: {:?}", states.lock().unwrap());
    // Long enough for a dozen reconnects at this backoff; a reconnect with the revoked token would be
    // refused with UNAUTHENTICATED and counted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = server.handle.metrics();
    assert_eq!(
        metrics.errors(ErrorCode::UNAUTHENTICATED),
        0,
        "the client reconnected"
    );
    assert_eq!(metrics.errors(ErrorCode::TOKEN_REVOKED), 1);
    assert_eq!(metrics.connections_active(), 0);
    // The states before the revocation (the first Connecting and Connected) were queued too; after
    // AuthFailed there must be none.
    let states = states.lock().unwrap();
    let stop = states
        .iter()
        .position(|s| matches!(s, ConnectionState::AuthFailed { .. }))
        .unwrap();
    assert_eq!(states.len(), stop + 1, "the client went on: {states:?}");
}

/// POSTs to the server's admin endpoint: (status, body).
async fn admin_post(server: &TestServer, query: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().post(format!(
        "http://{}/admin/revoke{query}",
        server.handle.http_addr()
    ));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.expect("admin endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn the_admin_endpoint_wants_the_secret_and_valid_arguments() {
    let server = TestServer::start().await;
    let mut dave = server.session("dave", "phone").await;
    let key = std::fs::read_to_string(server.dir().join(ferry_server::revoke::ADMIN_SECRET_FILE))
        .unwrap();
    let key = key.trim();
    let wrong = "0".repeat(64);
    let cases: [(&str, Option<&str>, u16); 6] = [
        ("?user=dave", None, 401),
        ("?user=dave", Some(wrong.as_str()), 401),
        ("?user=dave", Some("not-hex"), 401),
        ("", Some(key), 400),
        ("?user=da:ve", Some(key), 400),
        ("?user=dave&device=ph%20one", Some(key), 400),
    ];
    for (query, bearer, status) in cases {
        let (got, body) = admin_post(&server, query, bearer).await;
        assert_eq!(got, status, "{query} {bearer:?}: {body}");
    }
    let get = reqwest::get(format!(
        "http://{}/admin/revoke?user=dave",
        server.handle.http_addr()
    ))
    .await
    .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    // Nothing above revoked anything.
    still_served(&mut dave).await;

    let (status, body) = admin_post(&server, "?user=dave&device=phone", Some(key)).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["sessions_closed"], 1, "{body}");
    expect_revoked(&mut dave).await;
    // '@' is valid in ids and arrives percent-encoded.
    let (status, body) = admin_post(&server, "?user=e%40x.org", Some(key)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""user":"e@x.org""#), "{body}");
}

#[test]
fn the_cli_names_what_is_wrong_and_fails() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--data-dir", dir], "--user"),
        (&["--data-dir", dir, "--user", "a:b"], "invalid user id"),
        (
            &["--data-dir", dir, "--user", "alice", "--device", ""],
            "invalid device id",
        ),
        (
            &["--data-dir", dir, "--user", "alice"],
            "has a server run with this data dir",
        ),
    ];
    for (args, message) in cases {
        let (code, _, stderr) = revoke_cli(args);
        assert!(
            matches!(code, Some(c) if c != 0),
            "{args:?} exited {code:?}"
        );
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_closes_the_session_on_another() {
    let cluster = TestCluster::start(Backend::single(), 2, |_| {}).await;
    let token = cluster.token("erin", "phone");
    let mut on_node2 = cluster.nodes[1]
        .target
        .session(&token, "phone")
        .await
        .unwrap();
    let mut laptop = cluster.nodes[1]
        .target
        .session(&cluster.token("erin", "laptop"), "laptop")
        .await
        .unwrap();
    let revoked =
        ferry_server::revoke::request(&cluster.settings[0].data_dir, "erin", Some("phone"))
            .await
            .expect("revoked through node 1");
    assert_eq!(revoked.sessions_closed, 0, "node 1 had no session of erin");
    expect_revoked(&mut on_node2).await;
    still_served(&mut laptop).await;
    // The stamp is in Redis: both nodes refuse the token.
    for node in &cluster.nodes {
        assert_unauthenticated(node.target.session(&token, "phone").await);
    }
}

//! The `ferry-server` binary as an operator uses it: `token` mints a working token, `/healthz` and
//! `/metrics` answer, and SIGTERM drains (GoAway, in-flight sends acked) and exits 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use ferry_protocol::frame::frame::Kind;
use ferry_protocol::{ids, ErrorCode};
use ferry_tests::driver::Target;
use ferry_tests::process::{workspace_binary, ServerProcess};

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test]
async fn token_command_health_metrics_and_sigterm_drain() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());

    let output = Command::new(workspace_binary("ferry-server"))
        .args([
            "token",
            "--user",
            "alice",
            "--device",
            "phone",
            "--ttl",
            "10m",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let bad = Command::new(workspace_binary("ferry-server"))
        .args([
            "token",
            "--user",
            "not valid",
            "--device",
            "phone",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid user id"));

    let target = Target::new(server.addr, &server.ca).unwrap();
    let mut session = target.session(&token, "phone").await.unwrap();
    assert_eq!(session.welcome.user_id, "alice");
    let mut stream = session
        .open(&ids::direct_conversation_id("alice", "bob").unwrap())
        .await
        .unwrap();
    stream.send_and_ack("m1", b"hello").await.unwrap();

    let http = server.http.to_string();
    assert!(http_get(&http, "/healthz").starts_with("HTTP/1.1 200"));
    let metrics = http_get(&http, "/metrics");
    assert!(metrics.contains("ferry_sends_total"), "{metrics}");

    // SIGTERM: GoAway, the in-flight send still gets its SendAck, then exit code 0.
    stream.send_message("m2", b"in flight").await.unwrap();
    let exit = tokio::task::spawn_blocking(move || server.terminate());
    let go_away = session.next_control("GoAway").await.unwrap();
    match go_away.kind {
        Some(Kind::GoAway(g)) => assert_eq!(ErrorCode(g.code), ErrorCode::SHUTTING_DOWN),
        other => panic!("expected GoAway, got {other:?}"),
    }
    let ack = stream.expect_send_ack().await.unwrap();
    assert_eq!((ack.client_msg_id.as_str(), ack.seq), ("m2", 2));
    session.close();
    assert_eq!(exit.await.unwrap(), Some(0));
}

//! The `ferry` binary's exit codes and outbox behaviour that need no server.

use std::process::Command;

use base64::Engine as _;

fn token(user: &str, device: &str) -> String {
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"{user}","dev":"{device}","aud":"ferry","exp":0}}"#
    ));
    format!("v1.{payload}.mac")
}

#[test]
fn send_to_an_unreachable_server_times_out_with_exit_4_and_keeps_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let store = dir.path().join("alice.sqlite3");
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--server",
            &dead.to_string(),
            "--token",
            &token("alice", "laptop"),
        ])
        .arg("--ca")
        .arg(&ca)
        .arg("--store")
        .arg(&store)
        .args(["send", "--to", "bob", "hello", "--timeout", "1"])
        .env_remove("FERRY_DEVICE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr: {stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(out.stdout.is_empty());

    use ferry_client::ClientStore;
    let outbox = ferry_client::SqliteStore::open(&store)
        .unwrap()
        .outbox()
        .unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].conversation, "d:alice:bob");
    assert_eq!(&outbox[0].body[..], b"hello");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["send", "--to", "bob"])
        .env_remove("FERRY_SERVER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

//! The bad-input catalogue: one case per wire error code of the spec, each asserting the exact code,
//! followed by a check that a well-behaved bystander client on the same server is unaffected.

use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Hello, Open, Send};
use ferry_protocol::{ids, ErrorCode, Frame};
use ferry_tests::driver::{hello, ConvStream, DriverError, Session};
use ferry_tests::{wait_until, TestServer};

fn direct(a: &str, b: &str) -> String {
    ids::direct_conversation_id(a, b).unwrap()
}

/// A bystander sends one message to another bystander and it is delivered.
async fn bystander_still_served(server: &TestServer) {
    let sender = server.session("by-a", "d1").await;
    let receiver = server.session("by-b", "d1").await;
    let mut stream = sender.open(&direct("by-a", "by-b")).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let ack = stream.send_and_ack(&id, b"still here").await.unwrap();
    let mut incoming = receiver.accept().await.unwrap();
    let got = incoming.wait_delivered(1).await.unwrap();
    assert_eq!(got[0].seq, ack.seq);
    assert_eq!(got[0].client_msg_id, id);
}

fn assert_code(result: Result<impl std::fmt::Debug, DriverError>, code: ErrorCode) {
    match result {
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
        Err(e) => assert_eq!(e.wire_code(), Some(code), "error was: {e}"),
    }
}

/// Expects an `Error` frame with `code` as the next non-Deliver frame.
fn expect_error_frame(frame: Frame, code: ErrorCode) -> ferry_protocol::frame::Error {
    match frame.kind {
        Some(Kind::Error(e)) => {
            assert_eq!(ErrorCode(e.code), code, "error frame: {e:?}");
            assert!(!e.message.is_empty(), "errors carry a reason");
            e
        }
        other => panic!("expected Error {code:?}, got {other:?}"),
    }
}

/// A refused stream: an optional Error frame with `code` (a reset may overtake it), then the reset
/// carrying `code`.
async fn expect_refused(stream: &mut ConvStream, code: ErrorCode) {
    loop {
        match stream.next_non_deliver("refusal").await {
            Ok(frame) => {
                expect_error_frame(frame, code);
            }
            Err(e) => {
                assert_eq!(e.wire_code(), Some(code), "stream error was: {e}");
                return;
            }
        }
    }
}

/// The next control frame is a GoAway with `code` (FERRY-AUTH-8: it precedes the close).
async fn expect_go_away(session: &mut Session, code: ErrorCode) {
    match session.next_control("GoAway").await.unwrap().kind {
        Some(Kind::GoAway(g)) => assert_eq!(ErrorCode(g.code), code),
        other => panic!("expected GoAway, got {other:?}"),
    }
}

/// Waits for the connection to close and returns its wire code.
async fn close_code(session: &Session) -> Option<ErrorCode> {
    let reason = tokio::time::timeout(Duration::from_secs(10), session.connection.closed())
        .await
        .expect("connection closes");
    DriverError::Connection(reason).wire_code()
}

#[tokio::test]
async fn protocol_error_for_a_frame_in_the_wrong_place() {
    let server = TestServer::start().await;
    // A conversation frame on the control stream closes the connection.
    let mut session = server.session("alice", "phone").await;
    session
        .send_control(frame(Kind::Open(Open {
            conversation_id: direct("alice", "bob"),
        })))
        .await
        .unwrap();
    assert_eq!(close_code(&session).await, Some(ErrorCode::PROTOCOL_ERROR));
    // A first frame other than Hello is refused.
    let connection = server.target.connect().await.unwrap();
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    let bad = frame(Kind::Open(Open {
        conversation_id: "x".into(),
    }));
    send.write_all(&codec::encode(&bad)).await.unwrap();
    let reason = connection.closed().await;
    assert_eq!(
        DriverError::Connection(reason).wire_code(),
        Some(ErrorCode::PROTOCOL_ERROR)
    );
    // Malformed protobuf on a conversation stream resets only that stream.
    let session = server.session("alice", "tablet").await;
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    stream.send_raw(&[3, 0x0a, 0x05, 0x61]).await.unwrap(); // field 1 claims 5 bytes, has 1
    expect_refused(&mut stream, ErrorCode::PROTOCOL_ERROR).await;
    // ... and the connection still works.
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    stream.send_and_ack("after-bad", b"ok").await.unwrap();
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn unknown_frame_type_resets_the_stream() {
    let server = TestServer::start().await;
    let session = server.session("alice", "phone").await;
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    // Frame field 99 (unknown), wire type 0, value 1.
    stream.send_raw(&[3, 0x98, 0x06, 0x01]).await.unwrap();
    expect_refused(&mut stream, ErrorCode::UNKNOWN_FRAME).await;
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn frame_too_large_resets_the_stream() {
    let server = TestServer::start().await;
    let session = server.session("alice", "phone").await;
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    let mut prefix = bytes::BytesMut::new();
    codec::put_varint(2 * 1024 * 1024, &mut prefix);
    stream.send_raw(&prefix).await.unwrap();
    expect_refused(&mut stream, ErrorCode::FRAME_TOO_LARGE).await;
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn unsupported_version_is_refused_in_the_handshake() {
    let server = TestServer::start().await;
    let connection = server.target.connect().await.unwrap();
    let hello = Hello {
        version: 2,
        ..hello(&server.token("alice", "phone"), "phone")
    };
    let result = Session::start(connection, hello).await;
    assert_code(result.map(|s| s.welcome), ErrorCode::UNSUPPORTED_VERSION);
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn unauthenticated_for_a_forged_token() {
    let server = TestServer::start().await;
    let mut token = server.token("alice", "phone");
    let last = token.pop().unwrap();
    token.push(if last == 'A' { 'B' } else { 'A' });
    let result = server.target.session(&token, "phone").await;
    assert_code(result.map(|s| s.welcome), ErrorCode::UNAUTHENTICATED);
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn forbidden_and_not_found_for_conversations() {
    let server = TestServer::start().await;
    let mut owner = server.session("owner", "d1").await;
    let (group, _) = owner.create_group("g", &[]).await.unwrap().unwrap();

    let outsider = server.session("outsider", "d1").await;
    let mut stream = outsider.open(&group).await.unwrap();
    expect_refused(&mut stream, ErrorCode::FORBIDDEN).await;

    // Someone else's direct conversation is forbidden too.
    let mut stream = outsider.open(&direct("alice", "bob")).await.unwrap();
    expect_refused(&mut stream, ErrorCode::FORBIDDEN).await;

    let missing = ids::group_conversation_id(42);
    let mut stream = outsider.open(&missing).await.unwrap();
    expect_refused(&mut stream, ErrorCode::NOT_FOUND).await;
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn invalid_argument_for_bad_ids_and_oversized_bodies() {
    let server = TestServer::start_with(|s| s.limits.max_body_size = 1024).await;
    let session = server.session("alice", "phone").await;
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    for (client_msg_id, body) in [
        ("", vec![1u8]),
        ("has space", vec![1]),
        ("big", vec![0; 1025]),
    ] {
        stream
            .send_frame(frame(Kind::Send(Send {
                client_msg_id: client_msg_id.into(),
                body: Bytes::from(body),
            })))
            .await
            .unwrap();
        let frame = stream.next_non_deliver("Error").await.unwrap();
        let error = expect_error_frame(frame, ErrorCode::INVALID_ARGUMENT);
        assert_eq!(error.client_msg_id, client_msg_id);
    }
    // The stream stays usable after request-level errors.
    assert_eq!(stream.send_and_ack("fine", b"ok").await.unwrap().seq, 1);
    // A malformed conversation id on Open.
    let mut stream = session.open("not-a-conversation").await.unwrap();
    expect_refused(&mut stream, ErrorCode::INVALID_ARGUMENT).await;
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn rate_limited_with_retry_after() {
    let server = TestServer::start_with(|s| {
        s.limits.send_rate_per_sec = 1;
        s.limits.send_burst = 2;
    })
    .await;
    let session = server.session("alice", "phone").await;
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    stream.send_and_ack("r1", b"1").await.unwrap();
    stream.send_and_ack("r2", b"2").await.unwrap();
    stream.send_message("r3", b"3").await.unwrap();
    let frame = stream.next_non_deliver("Error").await.unwrap();
    let error = expect_error_frame(frame, ErrorCode::RATE_LIMITED);
    assert_eq!(error.client_msg_id, "r3");
    assert!(error.retry_after_ms > 0 && error.retry_after_ms <= 1000);
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn too_many_inflight_sends() {
    let server = TestServer::start_with(|s| s.limits.max_inflight_sends = 1).await;
    let session = server.session("alice", "phone").await;
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    // 50 Sends in one write: the reader sees them long before the first commit's fsync completes.
    let mut batch = bytes::BytesMut::new();
    for i in 0..50 {
        let send = frame(Kind::Send(Send {
            client_msg_id: format!("p{i}"),
            body: Bytes::from_static(b"x"),
        }));
        codec::encode_into(&send, &mut batch);
    }
    stream.send_raw(&batch).await.unwrap();
    let (mut acked, mut refused) = (0, 0);
    for _ in 0..50 {
        match stream.next_non_deliver("reply").await.unwrap().kind {
            Some(Kind::SendAck(_)) => acked += 1,
            Some(Kind::Error(e)) => {
                assert_eq!(ErrorCode(e.code), ErrorCode::TOO_MANY_INFLIGHT);
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        acked >= 1 && refused >= 1,
        "acked {acked}, refused {refused}"
    );
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn too_many_streams() {
    let server = TestServer::start_with(|s| s.limits.max_open_streams = 2).await;
    let session = server.session("alice", "phone").await;
    let mut first = session.open(&direct("alice", "bob")).await.unwrap();
    first.send_and_ack("s1", b"1").await.unwrap();
    let mut second = session.open(&direct("alice", "carol")).await.unwrap();
    second.send_and_ack("s2", b"2").await.unwrap();
    let mut third = session.open(&direct("alice", "dave")).await.unwrap();
    expect_refused(&mut third, ErrorCode::TOO_MANY_STREAMS).await;
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn session_replaced_under_the_single_policy() {
    let server =
        TestServer::start_with(|s| s.login_policy = ferry_server::config::LoginPolicy::Single)
            .await;
    let first = server.session("alice", "phone").await;
    let _second = server.session("alice", "laptop").await;
    assert_eq!(close_code(&first).await, Some(ErrorCode::SESSION_REPLACED));
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn same_device_reconnecting_replaces_its_old_session() {
    let server = TestServer::start().await;
    let mut first = server.session("alice", "phone").await;
    let _second = server.session("alice", "phone").await;
    expect_go_away(&mut first, ErrorCode::SESSION_REPLACED).await;
    assert_eq!(close_code(&first).await, Some(ErrorCode::SESSION_REPLACED));
}

#[tokio::test]
async fn a_login_stalled_past_a_newer_login_of_the_same_device_does_not_replace_it() {
    // The client gave up waiting for the first login's Welcome (its store read stalled) and logged in
    // again; when the old login finally goes on, it is the one replaced, not the newer session.
    let server = TestServer::start().await;
    let held = server.handle.hooks().hold_next_login();
    let stalled = server.session("alice", "phone");
    let newer = async {
        held.reached
            .await
            .expect("the first login reaches the hold");
        let mut newer = server.session("alice", "phone").await;
        // A HeartbeatAck comes after the Welcome and the registration: the newer session is in.
        newer.heartbeat(0).await.expect("newer session registered");
        let _ = held.release.send(());
        newer
    };
    let (mut stalled, mut newer) = tokio::join!(stalled, newer);
    expect_go_away(&mut stalled, ErrorCode::SESSION_REPLACED).await;
    assert_eq!(
        close_code(&stalled).await,
        Some(ErrorCode::SESSION_REPLACED)
    );
    newer
        .heartbeat(0)
        .await
        .expect("the newer session is still served");
    assert!(newer.connection.close_reason().is_none());
}

#[tokio::test]
async fn internal_error_when_the_store_fails_then_retry_succeeds() {
    let server = TestServer::start().await;
    let session = server.session("alice", "phone").await;
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    server.handle.hooks().set_fail_appends(true);
    stream.send_message("i1", b"x").await.unwrap();
    let frame = stream.next_non_deliver("Error").await.unwrap();
    let error = expect_error_frame(frame, ErrorCode::INTERNAL);
    assert_eq!(error.client_msg_id, "i1");
    server.handle.hooks().set_fail_appends(false);
    let ack = stream.send_and_ack("i1", b"x").await.unwrap();
    assert_eq!(
        (ack.seq, ack.duplicate),
        (1, false),
        "nothing was stored by the failed attempt"
    );
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn idle_timeout_without_heartbeats() {
    let server = TestServer::start_with(|s| s.idle_timeout_ms = 300).await;
    let session = server.session("alice", "phone").await;
    assert_eq!(close_code(&session).await, Some(ErrorCode::IDLE_TIMEOUT));
}

#[tokio::test]
async fn idle_conversation_streams_are_closed() {
    let server = TestServer::start_with(|s| s.stream_idle_timeout_ms = 200).await;
    let session = server.session("alice", "phone").await;
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    stream.send_and_ack("x1", b"1").await.unwrap();
    // The server finishes its side (FIN) and sends STOP_SENDING(STREAM_CLOSED).
    assert!(matches!(
        stream.next("end").await,
        Err(DriverError::Ended(_))
    ));
    let mut stopped = None;
    for _ in 0..40 {
        if let Err(e) = stream.send_message("late", b"x").await {
            stopped = e.wire_code();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stopped, Some(ErrorCode::STREAM_CLOSED));
    // Nothing is lost: a new stream carries on.
    let mut stream = session.open(&direct("alice", "bob")).await.unwrap();
    assert_eq!(stream.send_and_ack("x2", b"2").await.unwrap().seq, 2);
}

#[tokio::test]
async fn shutting_down_sends_go_away_and_closes() {
    let server = TestServer::start().await;
    let mut session = server.session("alice", "phone").await;
    let TestServer { handle, .. } = server;
    let stopping = tokio::spawn(handle.shutdown());
    let frame = session.next_control("GoAway").await.unwrap();
    match frame.kind {
        Some(Kind::GoAway(g)) => assert_eq!(ErrorCode(g.code), ErrorCode::SHUTTING_DOWN),
        other => panic!("expected GoAway, got {other:?}"),
    }
    assert_eq!(close_code(&session).await, Some(ErrorCode::SHUTTING_DOWN));
    stopping.await.unwrap();
}

#[tokio::test]
async fn protocol_error_when_the_client_finishes_its_control_stream() {
    let server = TestServer::start().await;
    let connection = server.target.connect().await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let hello = frame(Kind::Hello(hello(&server.token("alice", "phone"), "phone")));
    send.write_all(&codec::encode(&hello)).await.unwrap();
    let mut buf = [0u8; 1];
    recv.read_exact(&mut buf).await.unwrap(); // Welcome has started to arrive
    send.finish().unwrap();
    let reason = connection.closed().await;
    assert_eq!(
        DriverError::Connection(reason).wire_code(),
        Some(ErrorCode::PROTOCOL_ERROR)
    );
}

#[tokio::test]
async fn no_error_close_by_the_client_ends_the_session_cleanly() {
    let server = TestServer::start().await;
    let session = server.session("alice", "phone").await;
    let metrics = server.handle.metrics().clone();
    assert_eq!(metrics.connections_active(), 1);
    session.close(); // NO_ERROR
    wait_until(Duration::from_secs(2), || metrics.connections_active() == 0).await;
    assert_eq!(metrics.connections_active(), 0);
    let counted: u64 = ErrorCode::TABLE
        .iter()
        .map(|info| metrics.errors(info.code))
        .sum();
    assert_eq!(counted, 0, "a clean close is no error");
    bystander_still_served(&server).await;
}

#[tokio::test]
async fn every_error_code_has_a_case_here() {
    // Keeps this catalogue honest: a new code in the table needs a new case above.
    let covered = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "UNKNOWN_FRAME",
        "FRAME_TOO_LARGE",
        "UNSUPPORTED_VERSION",
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "NOT_FOUND",
        "INVALID_ARGUMENT",
        "RATE_LIMITED",
        "TOO_MANY_INFLIGHT",
        "TOO_MANY_STREAMS",
        "SESSION_REPLACED",
        "SHUTTING_DOWN",
        "INTERNAL",
        "IDLE_TIMEOUT",
        "STREAM_CLOSED",
        // Its cases live in server_revoke.rs (a live session closed by a revocation).
        "TOKEN_REVOKED",
    ];
    let table: Vec<&str> = ErrorCode::TABLE.iter().map(|i| i.name).collect();
    assert_eq!(table, covered);
}

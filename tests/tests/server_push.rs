//! Offline push end to end (spec section 18): a real server and a real local HTTP receiver (hyper,
//! `server_push/receiver.rs`) that records every POST and answers what each test scripts for its path.

#[path = "server_push/receiver.rs"]
mod receiver;

use std::time::Duration;

use ferry_protocol::frame::{
    frame::Kind, Hello, PushList, PushPolicy, PushRegister, PushUnregister,
};
use ferry_protocol::{ids, ErrorCode};
use ferry_tests::driver::{hello, Session};
use ferry_tests::{wait_until, TestServer};
use receiver::Receiver;

const WINDOW_MS: u32 = 400;

/// A server whose push allowlist names the receiver (plain http on loopback is allowed only because
/// the prefix names it).
async fn server_for(
    receiver: &Receiver,
    adjust: impl FnOnce(&mut ferry_server::Settings),
) -> TestServer {
    let allow = format!("http://{}/", receiver.addr);
    TestServer::start_with(|s| {
        s.push.allow = vec![allow];
        s.push.coalesce_window_ms = WINDOW_MS;
        s.push.retry_initial_ms = 300;
        s.push.retry_max_ms = 2_000;
        adjust(s);
    })
    .await
}

async fn register(session: &mut Session, endpoint: &str) -> Result<(), ErrorCode> {
    register_with(session, endpoint, PushPolicy::None).await
}

async fn register_with(
    session: &mut Session,
    endpoint: &str,
    policy: PushPolicy,
) -> Result<(), ErrorCode> {
    session
        .push_register(endpoint, "app-token-1", policy)
        .await
        .expect("push request answered")
        .map(|_| ())
}

async fn list(session: &mut Session) -> Vec<String> {
    let result = session
        .push_request(|request_id| Kind::PushList(PushList { request_id }))
        .await
        .unwrap()
        .unwrap();
    result
        .registrations
        .into_iter()
        .map(|r| r.device_id)
        .collect()
}

/// Whether bob's registrations become none within 5 s (the notifier drops them behind the POST).
async fn eventually_unregistered(session: &mut Session) -> bool {
    for _ in 0..50 {
        if list(session).await.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Registers `device` of bob for `path`, then disconnects it (offline).
async fn offline_device(server: &TestServer, receiver: &Receiver, device: &str, path: &str) {
    let mut session = server.session("bob", device).await;
    register(&mut session, &receiver.url(path)).await.unwrap();
    session.close();
    // The server sees the close within a round trip on loopback.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Alice sends `n` messages to bob; returns the last seq.
async fn alice_sends(server: &TestServer, first: usize, n: usize) -> u64 {
    let alice = server.session("alice", "laptop").await;
    let conversation = ids::direct_conversation_id("alice", "bob").unwrap();
    let mut stream = alice.open(&conversation).await.unwrap();
    let mut seq = 0;
    for i in first..first + n {
        seq = stream
            .send_and_ack(&format!("m{i}"), b"secret body")
            .await
            .unwrap()
            .seq;
    }
    seq
}

async fn metric(server: &TestServer, name: &str) -> u64 {
    let url = format!("http://{}/metrics", server.handle.http_addr());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test]
async fn offline_device_gets_one_coalesced_post_per_window_and_online_device_none() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, |_| {}).await;
    offline_device(&server, &receiver, "phone", "/phone").await;
    // bob's desktop is registered too but stays connected: it gets Delivers, never a push.
    let mut desktop = server.session("bob", "desktop").await;
    register(&mut desktop, &receiver.url("/desktop"))
        .await
        .unwrap();

    let last = alice_sends(&server, 0, 5).await;
    assert!(
        wait_until(Duration::from_secs(10), || !receiver
            .posts_to("/phone")
            .is_empty())
        .await
    );
    // Two more windows: nothing else may arrive for this burst.
    tokio::time::sleep(Duration::from_millis(3 * u64::from(WINDOW_MS))).await;
    let posts = receiver.posts_to("/phone");
    assert_eq!(posts.len(), 1, "one coalesced POST: {posts:?}");
    let body = &posts[0].body;
    assert_eq!(body["seq"], last);
    assert_eq!(body["messages"], 5);
    assert_eq!(body["unread"], last);
    assert_eq!(body["device_id"], "phone");
    assert_eq!(body["conversation"], "d:alice:bob");
    assert_eq!(body["app_token"], "app-token-1");
    // The default policy carries no names and never the body.
    assert!(body.get("sender").is_none(), "{body}");
    assert!(!body.to_string().contains("secret body"));
    assert!(
        receiver.posts_to("/desktop").is_empty(),
        "an online device is not pushed"
    );

    // A later message opens a new window and gets its own POST.
    let next = alice_sends(&server, 5, 1).await;
    assert!(
        wait_until(Duration::from_secs(10), || receiver
            .posts_to("/phone")
            .len()
            == 2)
        .await
    );
    let posts = receiver.posts_to("/phone");
    assert_eq!(posts[1].body["seq"], next);
    assert!(posts[1].at - posts[0].at >= Duration::from_millis(u64::from(WINDOW_MS)));
    assert_eq!(metric(&server, "ferry_push_sent_total").await, 2);
    assert_eq!(metric(&server, "ferry_push_dropped_total").await, 0);
}

#[tokio::test]
async fn an_endpoint_answering_410_loses_its_registration() {
    let receiver = Receiver::start().await;
    receiver.script("/gone", &[(410, "")]);
    let server = server_for(&receiver, |_| {}).await;
    offline_device(&server, &receiver, "phone", "/gone").await;
    let mut tablet = server.session("bob", "tablet").await;
    assert_eq!(list(&mut tablet).await, ["phone"]);

    alice_sends(&server, 0, 1).await;
    assert!(
        wait_until(Duration::from_secs(10), || !receiver
            .posts_to("/gone")
            .is_empty())
        .await
    );
    assert!(
        eventually_unregistered(&mut tablet).await,
        "the registration is dropped after 410"
    );
    assert_eq!(metric(&server, "ferry_push_gone_total").await, 1);
    // Nothing is pushed to a dropped registration.
    alice_sends(&server, 1, 1).await;
    tokio::time::sleep(Duration::from_millis(3 * u64::from(WINDOW_MS))).await;
    assert_eq!(receiver.posts_to("/gone").len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let receiver = Receiver::start().await;
    receiver.script("/flaky", &[(503, ""), (500, "")]);
    let server = server_for(&receiver, |_| {}).await;
    offline_device(&server, &receiver, "phone", "/flaky").await;
    let last = alice_sends(&server, 0, 2).await;
    assert!(
        wait_until(Duration::from_secs(15), || receiver
            .posts_to("/flaky")
            .len()
            == 3)
        .await
    );
    let posts = receiver.posts_to("/flaky");
    // retry_initial_ms = 300, doubling: at least 300 ms, then at least 600 ms between attempts.
    assert!(
        posts[1].at - posts[0].at >= Duration::from_millis(300),
        "{posts:?}"
    );
    assert!(
        posts[2].at - posts[1].at >= Duration::from_millis(600),
        "{posts:?}"
    );
    assert!(posts.iter().all(|p| p.body["seq"] == last));
    assert_eq!(metric(&server, "ferry_push_retried_total").await, 2);
    assert_eq!(metric(&server, "ferry_push_sent_total").await, 1);
    // Still registered: 5xx never drops a registration.
    let mut other = server.session("bob", "tablet").await;
    assert_eq!(list(&mut other).await, ["phone"]);
}

#[tokio::test]
async fn registrations_are_checked_against_the_allowlist() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, |s| s.push.allow.push("https://".into())).await;
    let mut bob = server.session("bob", "phone").await;
    // Not under any prefix (plain http elsewhere), private and loopback hosts the prefixes do not name.
    for endpoint in [
        "http://push.example/up/1",
        "https://127.0.0.1/up",
        "https://10.0.0.7/up",
        "https://localhost/up",
        &format!("http://127.0.0.1:{}/up", receiver.addr.port() + 1),
    ] {
        assert_eq!(
            register(&mut bob, endpoint).await,
            Err(ErrorCode::FORBIDDEN),
            "{endpoint}"
        );
    }
    assert_eq!(
        register(&mut bob, "not a url").await,
        Err(ErrorCode::INVALID_ARGUMENT)
    );
    let bad_policy = bob
        .push_request(|request_id| {
            Kind::PushRegister(PushRegister {
                request_id,
                endpoint: "https://push.example/up".into(),
                app_token: String::new(),
                policy: 77,
            })
        })
        .await
        .unwrap();
    assert_eq!(bad_policy.unwrap_err(), ErrorCode::INVALID_ARGUMENT);
    assert!(
        list(&mut bob).await.is_empty(),
        "nothing refused was stored"
    );
    // A public https endpoint and the named loopback receiver are fine; unregister removes it.
    register(&mut bob, "https://push.example/up/1")
        .await
        .unwrap();
    register(&mut bob, &receiver.url("/ok")).await.unwrap();
    assert_eq!(list(&mut bob).await, ["phone"]);
    let removed = bob
        .push_request(|request_id| Kind::PushUnregister(PushUnregister { request_id }))
        .await
        .unwrap()
        .unwrap();
    assert!(removed.removed);
    assert!(list(&mut bob).await.is_empty());
}

#[tokio::test]
async fn the_capability_is_acknowledged_only_when_push_is_on() {
    let receiver = Receiver::start().await;
    let with_push = server_for(&receiver, |_| {}).await;
    let without = TestServer::start().await;
    let asking = |server: &TestServer| Hello {
        capabilities: vec!["push".into(), "future-thing".into()],
        ..hello(&server.token("bob", "phone"), "phone")
    };
    let on = Session::start(
        with_push.target.connect().await.unwrap(),
        asking(&with_push),
    )
    .await
    .unwrap();
    assert_eq!(on.welcome.capabilities, ["push"]);
    let mut off = Session::start(without.target.connect().await.unwrap(), asking(&without))
        .await
        .unwrap();
    assert!(off.welcome.capabilities.is_empty());
    // A server without push answers the frames with FORBIDDEN rather than failing the connection.
    let refused = off
        .push_request(|request_id| Kind::PushList(PushList { request_id }))
        .await
        .unwrap();
    assert_eq!(refused.unwrap_err(), ErrorCode::FORBIDDEN);
    // Not asking means not acknowledged.
    let plain = with_push.session("bob", "tablet").await;
    assert!(plain.welcome.capabilities.is_empty());
}

#[tokio::test]
async fn gateway_mode_posts_to_the_gateway_and_drops_rejected_pushkeys() {
    let receiver = Receiver::start().await;
    receiver.script("/gw", &[(200, r#"{"rejected":["app-token-1"]}"#)]);
    let gateway = receiver.url("/gw");
    let server = server_for(&receiver, |s| {
        s.push.allow.clear();
        s.push.gateway = Some(gateway);
    })
    .await;
    let mut phone = server.session("bob", "phone").await;
    // The device gives its FCM/APNs token; it needs no endpoint of its own.
    register(&mut phone, "").await.unwrap();
    phone.close();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = alice_sends(&server, 0, 1).await;
    assert!(
        wait_until(Duration::from_secs(10), || !receiver
            .posts_to("/gw")
            .is_empty())
        .await
    );
    let n = receiver.posts_to("/gw")[0].body["notification"].clone();
    assert_eq!(n["seq"], last);
    assert_eq!(n["counts"]["unread"], last);
    assert_eq!(n["devices"][0]["pushkey"], "app-token-1");
    let mut tablet = server.session("bob", "tablet").await;
    assert!(
        eventually_unregistered(&mut tablet).await,
        "a pushkey the gateway rejects is dropped"
    );
}

/// `ferry push ...` for bob's `device`, with its own store under `dir`.
fn ferry_push(
    server: &TestServer,
    device: &str,
    dir: &std::path::Path,
    args: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(ferry_tests::process::workspace_binary("ferry"));
    cmd.env("FERRY_SERVER", server.handle.local_addr().to_string())
        .env("FERRY_TOKEN", server.token("bob", device))
        .env("FERRY_CA", server.handle.ca_path())
        .env("FERRY_STORE", dir.join(device))
        .env("FERRY_LOG", "warn")
        .arg("push")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn output(mut cmd: tokio::process::Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("ferry finished in time")
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().expect("exited"),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_registers_lists_and_unregisters_with_clear_errors() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = receiver.url("/cli");

    let args = [
        "register",
        "--endpoint",
        endpoint.as_str(),
        "--policy",
        "preview",
    ];
    let (code, out, err) = output(ferry_push(&server, "phone", dir.path(), &args)).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("device=phone policy=preview"), "{out}");
    assert!(out.contains(&endpoint), "{out}");

    let (code, out, err) = output(ferry_push(&server, "tablet", dir.path(), &["list"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("device=phone"), "{out}");

    // Outside the allowlist: refused by the server, exit 5 with its reason.
    let args = ["register", "--endpoint", "https://10.1.1.1/up"];
    let (code, _, err) = output(ferry_push(&server, "phone", dir.path(), &args)).await;
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("FORBIDDEN") && err.contains("push.allow"),
        "{err}"
    );
    // A policy the CLI does not know is a usage error before connecting.
    let args = [
        "register",
        "--endpoint",
        endpoint.as_str(),
        "--policy",
        "everything",
    ];
    let (code, _, err) = output(ferry_push(&server, "phone", dir.path(), &args)).await;
    assert_eq!(code, 2, "{err}");

    let (code, out, _) = output(ferry_push(&server, "phone", dir.path(), &["unregister"])).await;
    assert_eq!((code, out.trim()), (0, "unregistered"));
    let (code, out, _) = output(ferry_push(&server, "phone", dir.path(), &["unregister"])).await;
    assert_eq!((code, out.trim()), (0, "no registration"));

    // A server without push: the client does not send the frames (no capability) and says why.
    let plain = TestServer::start().await;
    let (code, _, err) = output(ferry_push(&plain, "phone", dir.path(), &["list"])).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("does not offer push"), "{err}");
}

/// The conformance case of section 18 against a server with push on (the full server suite in
/// `conformance_server.rs` runs it against one with push off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_conformance_case_passes_with_push_on() {
    use ferry_interop::report::Outcome;
    use ferry_interop::server_mode::{self, ServerConfig};
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, |s| s.push.allow.push("https://".into())).await;
    let mut config = ServerConfig::for_test_server(
        server.handle.local_addr(),
        server.handle.ca_path().to_path_buf(),
        ferry_tests::conformance_tokens(&server.dir()),
        Duration::from_millis(1000),
    );
    config.filter = Some("PUSH".into());
    let report = server_mode::run(config, |_| {}).await.unwrap();
    assert_eq!(report.cases.len(), 1, "{}", report.table());
    assert_eq!(report.cases[0].outcome, Outcome::Pass, "{}", report.table());
}

#[tokio::test]
async fn the_body_policy_is_refused_unless_the_server_allows_it() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, |_| {}).await;
    let mut phone = server.session("bob", "phone").await;
    let asked = register_with(&mut phone, &receiver.url("/phone"), PushPolicy::Body).await;
    assert_eq!(asked, Err(ErrorCode::FORBIDDEN));
    assert!(
        list(&mut phone).await.is_empty(),
        "a refused registration is not stored"
    );
    // The session survives the refusal and may register without bodies.
    register_with(&mut phone, &receiver.url("/phone"), PushPolicy::Preview)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_allowed_body_policy_carries_the_body_and_leaves_out_an_oversized_one() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, |s| {
        s.push.allow_body = true;
        s.push.body_max_bytes = 16;
    })
    .await;
    let mut session = server.session("bob", "phone").await;
    register_with(&mut session, &receiver.url("/phone"), PushPolicy::Body)
        .await
        .unwrap();
    session.close();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let alice = server.session("alice", "laptop").await;
    let conversation = ids::direct_conversation_id("alice", "bob").unwrap();
    let mut stream = alice.open(&conversation).await.unwrap();
    stream.send_and_ack("b1", b"short body").await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || receiver
            .posts_to("/phone")
            .len()
            == 1)
        .await
    );
    let body = &receiver.posts_to("/phone")[0].body;
    assert_eq!(
        body["body"], "c2hvcnQgYm9keQ==",
        "base64 of the body: {body}"
    );
    assert_eq!(body["sender"], "alice", "body includes the preview: {body}");
    assert!(body.get("body_omitted").is_none(), "{body}");

    // Over the bound: never cut, left out and flagged.
    let long = [b'x'; 17];
    stream.send_and_ack("b2", &long).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || receiver
            .posts_to("/phone")
            .len()
            == 2)
        .await
    );
    let body = &receiver.posts_to("/phone")[1].body;
    assert_eq!(body["body_omitted"], true, "{body}");
    assert!(body.get("body").is_none(), "{body}");
}

#[tokio::test]
async fn revoking_a_device_deletes_its_push_registration() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, |_| {}).await;
    offline_device(&server, &receiver, "phone", "/phone").await;
    let mut tablet = server.session("bob", "tablet").await;
    register(&mut tablet, &receiver.url("/tablet"))
        .await
        .unwrap();
    assert_eq!(list(&mut tablet).await, ["phone", "tablet"]);

    // As `ferry-server revoke --data-dir` does: through the admin endpoint the data dir names.
    ferry_server::revoke::request(&server.dir(), "bob", Some("phone"))
        .await
        .unwrap();
    // The revoked phone's endpoint is gone; the tablet's stays, and no push reaches the phone.
    assert_eq!(list(&mut tablet).await, ["tablet"]);
    alice_sends(&server, 0, 1).await;
    tokio::time::sleep(Duration::from_millis(3 * u64::from(WINDOW_MS))).await;
    assert!(receiver.posts_to("/phone").is_empty());
}

//! The `ferry` binary end to end against the real server: send/listen/history/groups, exit codes, the
//! durable outbox surviving a SIGKILL of the client process, `listen` following until Ctrl-C with system
//! messages in words, no progress bar into a pipe, and `status`/`whoami`.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use ferry_client::store::KEY_USER_ID;
use ferry_client::{ClientStore, SqliteStore};
use ferry_protocol::ids;
use ferry_proxy::{Faults, Proxy, ProxyConfig};
use ferry_tests::process::workspace_binary;
use ferry_tests::TestServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Bound for one `ferry` run.
const RUN: Duration = Duration::from_secs(60);

/// `ferry` for `user`/`device` of `server`, configured through the environment, with its own store.
fn ferry(server: &TestServer, user: &str, device: &str, store: &Path) -> Command {
    let mut cmd = Command::new(workspace_binary("ferry"));
    cmd.env("FERRY_SERVER", server.handle.local_addr().to_string())
        .env("FERRY_TOKEN", server.token(user, device))
        .env("FERRY_CA", server.handle.ca_path())
        .env("FERRY_STORE", store)
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs to completion (bounded), feeding `stdin`.
async fn run(mut cmd: Command, stdin: &str) -> Output {
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ferry");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(RUN, child.wait_with_output())
        .await
        .expect("ferry finished in time")
        .unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn check_ok(out: &Output, what: &str) {
    assert_eq!(
        code(out),
        0,
        "{what}: stdout {} stderr {}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_listen_history_and_groups() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a_store, b_store) = (dir.path().join("a.sqlite3"), dir.path().join("b.sqlite3"));
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();

    // Bob listens for three messages while Alice sends them.
    let mut listen = ferry(&server, "bob", "phone", &b_store);
    listen.args(["--json", "listen", "--count", "3", "--timeout", "50"]);
    let listener = tokio::spawn(run(listen, ""));
    let mut send = ferry(&server, "alice", "phone", &a_store);
    send.args(["send", "--to", "bob", "--stdin", "--json"]);
    let sent = run(send, "one\n\ntwo\nthree\n").await;
    check_ok(&sent, "send");
    let receipts = json_lines(&sent);
    let seqs: Vec<u64> = receipts
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3], "empty lines are skipped");
    assert!(receipts.iter().all(|r| r["conversation"] == conv.as_str()));
    let heard = listener.await.unwrap();
    check_ok(&heard, "listen");
    let heard = json_lines(&heard);
    let bodies: Vec<&str> = heard.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["one", "two", "three"]);
    assert_eq!(heard[0]["from"], "alice");
    assert_eq!(heard[2]["seq"], 3);

    // History from a fresh store pulls from the server.
    let mut history = ferry(&server, "bob", "laptop", &dir.path().join("b2.sqlite3"));
    history.args(["history", &conv, "--after", "1", "--json"]);
    let out = run(history, "").await;
    check_ok(&out, "history");
    let seqs: Vec<u64> = json_lines(&out)
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);

    // A group: create prints the id; a message sent there reaches a member's history.
    let mut create = ferry(&server, "alice", "phone", &a_store);
    create.args(["group", "create", "crew", "--members", "bob,carol"]);
    let out = run(create, "").await;
    check_ok(&out, "group create");
    let group = stdout(&out).trim().to_owned();
    assert!(ids::parse_conversation_id(&group).is_some(), "{group:?}");
    let mut send = ferry(&server, "alice", "phone", &a_store);
    send.args(["send", "--conversation", &group, "ahoy"]);
    let out = run(send, "").await;
    check_ok(&out, "send to group");
    assert!(stdout(&out).starts_with("sent seq=2 "), "{}", stdout(&out));
    let mut history = ferry(&server, "carol", "phone", &dir.path().join("c.sqlite3"));
    history.args(["--json", "history", &group]);
    let out = run(history, "").await;
    check_ok(&out, "member history");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "CREATED and the message");
    assert_eq!(lines[1]["body"], "ahoy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("a.sqlite3");

    // Usage: no target.
    let mut cmd = ferry(&server, "alice", "phone", &store);
    cmd.args(["send", "hi"]);
    assert_eq!(code(&run(cmd, "").await), 2, "usage");

    // A token the server rejects (well-formed, wrong signature).
    let other = TestServer::start().await;
    let mut cmd = ferry(&server, "alice", "phone", &store);
    cmd.env("FERRY_TOKEN", other.token("alice", "phone"));
    cmd.args(["send", "--to", "bob", "hi"]);
    let out = run(cmd, "").await;
    assert_eq!(
        code(&out),
        3,
        "bad token: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nobody listening.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = ferry(&server, "alice", "phone", &dir.path().join("x.sqlite3"));
    cmd.env("FERRY_SERVER", dead.to_string());
    cmd.args(["send", "--to", "bob", "--timeout", "2", "hi"]);
    assert_eq!(code(&run(cmd, "").await), 4, "unreachable");

    // Alice is no member of bob and carol's direct conversation.
    let mut cmd = ferry(&server, "alice", "phone", &store);
    let theirs = ids::direct_conversation_id("bob", "carol").unwrap();
    cmd.args(["send", "--conversation", &theirs, "--timeout", "20", "psst"]);
    let out = run(cmd, "").await;
    assert_eq!(
        code(&out),
        5,
        "forbidden: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `l0`, `l1`, ... as stored on the server in `conv`, read by a wire session of bob/phone.
async fn stored_bodies(server: &TestServer, conv: &str, max: usize) -> Vec<String> {
    let bob = server.session("bob", "phone").await;
    let mut stream = bob.open(conv).await.unwrap();
    let mut stored: Vec<String> = Vec::new();
    // Bounded: every page but the last adds at least one message.
    for _ in 0..=max {
        let page = stream.pull(stored.len() as u64, 500).await.unwrap();
        stored.extend(
            page.messages
                .iter()
                .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
        );
        if !page.has_more || page.messages.is_empty() {
            break;
        }
    }
    bob.close();
    stored
}

fn outbox_bodies(store: &Path) -> Vec<String> {
    SqliteStore::open(store)
        .unwrap()
        .outbox()
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect()
}

fn lines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("l{i}")).collect()
}

/// The worst case for an outbox: the server stored every message but no SendAck reached the client,
/// which is then SIGKILLed. The next run on the same store resends all of them with their original
/// client_msg_id, and the server stores each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_sigkill_of_the_client_process() {
    const LINES: usize = 200;
    let server = TestServer::start().await;
    let proxy = Proxy::start(ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        server.handle.local_addr(),
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("a.sqlite3");
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();

    let mut cmd = ferry(&server, "alice", "phone", &store);
    cmd.env("FERRY_SERVER", proxy.local_addr().to_string());
    cmd.args([
        "send",
        "--conversation",
        &conv,
        "--stdin",
        "--json",
        "--timeout",
        "120",
    ]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ferry");
    // `ferry send --stdin` connects while it waits for its input. Once its session is up (it stores the
    // user id from Welcome), everything from the server to it is held back, then the input is given.
    let welcomed = async {
        loop {
            let user = SqliteStore::open(&store)
                .ok()
                .and_then(|s| s.get(KEY_USER_ID).ok().flatten());
            if user.as_deref() == Some("alice") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(RUN, welcomed)
        .await
        .expect("ferry connected");
    // Delayed, not lost: QUIC needs the server's ACKs to keep sending, but they (and the SendAcks) only
    // arrive after the kill. Small enough to fit QUIC's initial congestion window and the in-flight limit.
    let mut deaf = Faults::none();
    deaf.to_client.delay = Duration::from_secs(30);
    proxy.set_faults(deaf).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(lines(LINES).join("\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let all_stored = async {
        while stored_bodies(&server, &conv, LINES).await.len() < LINES {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(RUN, all_stored)
        .await
        .expect("server stored every message");
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    assert_eq!(
        outbox_bodies(&store),
        lines(LINES),
        "no SendAck arrived: all still queued"
    );

    proxy.set_faults(Faults::none()).unwrap();
    let mut again = ferry(&server, "alice", "phone", &store);
    again.env("FERRY_SERVER", proxy.local_addr().to_string());
    again.args([
        "send",
        "--conversation",
        &conv,
        "--stdin",
        "--timeout",
        "50",
    ]);
    check_ok(&run(again, "").await, "flush of the old outbox");
    assert!(outbox_bodies(&store).is_empty());
    assert_eq!(
        stored_bodies(&server, &conv, LINES).await,
        lines(LINES),
        "each once, in order"
    );
}

/// SIGKILL right after the first receipt: whatever was queued is stored exactly once after the next run,
/// and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_send_loses_and_duplicates_nothing() {
    const LINES: usize = 2000;
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("a.sqlite3");
    let conv = ids::direct_conversation_id("alice", "bob").unwrap();

    let mut cmd = ferry(&server, "alice", "phone", &store);
    cmd.args([
        "send",
        "--conversation",
        &conv,
        "--stdin",
        "--json",
        "--timeout",
        "60",
    ]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ferry");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(lines(LINES).join("\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(RUN, out.next_line())
        .await
        .expect("a first receipt in time")
        .unwrap()
        .expect("a receipt line");
    child.start_kill().unwrap();
    assert_eq!(
        child.wait().await.unwrap().code(),
        None,
        "killed by a signal"
    );
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["seq"], 1);
    let left = outbox_bodies(&store);
    eprintln!("after SIGKILL: {} message(s) in the outbox", left.len());

    let mut again = ferry(&server, "alice", "phone", &store);
    again.args([
        "send",
        "--conversation",
        &conv,
        "--stdin",
        "--timeout",
        "50",
    ]);
    check_ok(&run(again, "").await, "flush of the old outbox");
    assert!(outbox_bodies(&store).is_empty());
    // A gap-free prefix of the input (lines never queued before the kill are not promised), each once.
    let stored = stored_bodies(&server, &conv, LINES).await;
    assert_eq!(stored, lines(stored.len()));
    for body in &left {
        assert!(
            stored.contains(body),
            "{body} was in the outbox but never stored"
        );
    }
}

/// Reads the next line of a running `ferry`'s stdout, bounded in time.
async fn next_line(out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(RUN, out.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("stdout still open")
}

/// `ferry listen` without `--count` follows until Ctrl-C, then exits 0 and closes its connection; by
/// default a group creation reads as words and user messages as `conv #seq user/device: text`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_follows_until_ctrl_c_and_prints_system_messages_as_words() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = server.handle.metrics().clone();
    let mut listen = ferry(&server, "bob", "phone", &dir.path().join("b.sqlite3"));
    listen.arg("listen");
    let mut listener = listen.spawn().unwrap();
    let mut heard = BufReader::new(listener.stdout.take().unwrap()).lines();

    let a_store = dir.path().join("a.sqlite3");
    let mut create = ferry(&server, "alice", "phone", &a_store);
    create.args(["group", "create", "crew", "--members", "bob,carol"]);
    let out = run(create, "").await;
    check_ok(&out, "group create");
    let group = stdout(&out).trim().to_owned();
    assert_eq!(
        next_line(&mut heard).await,
        format!(r#"{group} #1 alice created the group "crew" with bob, carol"#)
    );
    // It keeps following: messages sent by later runs arrive on the same listener.
    for text in ["one", "two"] {
        let mut send = ferry(&server, "alice", "phone", &a_store);
        send.args(["send", "--conversation", &group, text]);
        check_ok(&run(send, "").await, "send");
    }
    assert_eq!(
        next_line(&mut heard).await,
        format!("{group} #2 alice/phone: one")
    );
    assert_eq!(
        next_line(&mut heard).await,
        format!("{group} #3 alice/phone: two")
    );
    assert!(
        listener.try_wait().unwrap().is_none(),
        "still following without --count"
    );

    let pid = listener.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(RUN, listener.wait())
        .await
        .expect("listen ended after Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C is the normal end of listen");
    assert!(
        ferry_tests::wait_until(Duration::from_secs(2), || metrics.connections_active() == 0).await,
        "listen left {} connections open",
        metrics.connections_active()
    );
}

/// Piped, `ferry send --stdin` prints one receipt per line and nothing else (no progress bar).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_into_a_pipe_prints_receipts_and_no_progress_bar() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut send = ferry(&server, "alice", "phone", &dir.path().join("a.sqlite3"));
    send.args(["send", "--to", "bob", "--stdin"]);
    let out = run(send, &(lines(50).join("\n") + "\n")).await;
    check_ok(&out, "send");
    assert_eq!(stdout(&out).lines().count(), 50);
    assert!(stdout(&out).lines().all(|l| l.starts_with("sent seq=")));
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ferry status` / `ferry whoami` print server, user, device, connection state and outbox size;
/// without a server they still print (not connected, what waits in the outbox) and exit 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_whoami_report_the_client() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("a.sqlite3");
    let mut status = ferry(&server, "alice", "phone", &store);
    status.arg("status");
    let out = run(status, "").await;
    check_ok(&out, "status");
    let text = stdout(&out);
    let addr = server.handle.local_addr().to_string();
    for expected in [
        format!("server:     {addr}"),
        "user:       alice".to_owned(),
        "device:     phone".to_owned(),
        format!("connection: connected to {addr}"),
        "outbox:     0 message(s) waiting".to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected:?} in {text}");
    }

    // A send that times out against nobody leaves its message in the outbox; whoami says so.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut send = ferry(&server, "alice", "phone", &store);
    send.env("FERRY_SERVER", dead.to_string());
    send.args(["send", "--to", "bob", "--timeout", "1", "later"]);
    assert_eq!(code(&run(send, "").await), 4);
    let mut whoami = ferry(&server, "alice", "phone", &store);
    whoami.env("FERRY_SERVER", dead.to_string());
    whoami.args(["--json", "whoami", "--timeout", "1"]);
    let out = run(whoami, "").await;
    assert_eq!(code(&out), 4, "no connection");
    let v = &json_lines(&out)[0];
    assert_eq!(v["user"], "alice");
    assert_eq!(v["device"], "phone");
    assert_eq!(v["connection"], "not connected");
    assert_eq!(v["outbox"], 1);
    assert_eq!(v["servers"][0], dead.to_string());
}

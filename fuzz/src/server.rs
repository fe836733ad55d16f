//! The in-process server of the `server_script` target: one real ferry-server per fuzzing process on a
//! loopback port, its embedded store in a directory under `/dev/shm` (fsync on tmpfs costs nothing, so
//! an execution is not an fsync), and one authenticated session reused across inputs.
//!
//! The session is QUIC on loopback (handshake, control stream, datagrams); conversation streams are
//! opened in memory on it through `ferry_server::fuzzing` (see the target). Everything runs on one
//! current-thread tokio runtime (the target's), driven only while an input runs (`Runtime::block_on`:
//! a `Handle::block_on` would not drive its I/O); between inputs the server is idle.
//! Every `RESTART_EVERY` inputs the server is shut down and started on a fresh directory, which bounds
//! the memory the store's files take on tmpfs.

use std::path::PathBuf;
use std::time::Duration;

use ferry_protocol::codec::{self, DEFAULT_MAX_FRAME_SIZE};
use ferry_protocol::frame::{frame::Kind, Heartbeat, Hello};
use ferry_protocol::{Frame, ALPN, VERSION};
use ferry_quic::{ClientConfigBuilder, FrameReader, TrustRoots};
use ferry_server::{ServerHandle, Settings};
use tokio::sync::mpsc;

/// The user the target plays, and its device.
pub const USER: &str = "alice";
/// The target's device.
pub const DEVICE: &str = "fuzz";
/// How long any one wait for the server may take before the target calls it a hang. Generous: the
/// machine is shared and loaded, and a false alarm costs a long investigation.
pub const WAIT: Duration = Duration::from_secs(30);
/// The client's QUIC keep-alive interval (see [`Node::start`]).
const KEEP_ALIVE: Duration = Duration::from_millis(50);
/// Inputs served by one server before it is restarted on a fresh directory. Small, for two reasons:
/// the state inputs leave grows the cost of later inputs (every CreateGroup adds a conversation that
/// each Heartbeat and Sync of the session then lists: the store's `changed_since` sorts all of the
/// user's conversations per call, and was 38 % of the target's time 2,000 inputs into a server), and
/// a crash's history ([`crate::history::KEEP`] inputs, more than this) then reaches back to the
/// server's start, so replaying it rebuilds all of the state the crash saw. A restart (new directory,
/// certificate, store, connection) costs tens of ms.
const RESTART_EVERY: u64 = 500;
/// Most control frames read while waiting for the first HeartbeatAck of a session.
const MAX_FRAMES_BEFORE_ACK: usize = 64;
/// Control frames buffered between the control reader task and the input that waits for them.
const CONTROL_QUEUE: usize = 1024;

/// One server and the session the target drives it through.
pub struct Node {
    server: Option<Running>,
    session: Option<Session>,
    served: u64,
    restarts: u64,
}

/// A started server, its directory and a client endpoint that trusts it.
struct Running {
    handle: ServerHandle,
    dir: PathBuf,
    endpoint: quinn::Endpoint,
}

/// An authenticated session: the connection and its control stream. Control frames are read by a task
/// into `control` (what ended the stream comes last, as `Err`).
pub struct Session {
    /// The QUIC connection.
    pub connection: quinn::Connection,
    /// The control stream's sending side.
    pub control_send: quinn::SendStream,
    /// Frames read on the control stream; its end (or the connection's) arrives as `Err`.
    pub control: mpsc::Receiver<Result<Frame, ControlEnd>>,
    /// The newest sync token a HeartbeatAck handed back (the target's fence Heartbeats send it).
    pub sync_token: u64,
}

/// How the control stream ended.
#[derive(Debug)]
pub enum ControlEnd {
    /// The server finished it.
    Finished,
    /// Reading failed: reset, connection closed (with the server's code) or undecodable bytes.
    Failed(ferry_quic::ReadError),
}

impl Node {
    /// A node with no server yet (started by the first [`Node::session`]).
    pub fn new() -> Node {
        Node {
            server: None,
            session: None,
            served: 0,
            restarts: 0,
        }
    }

    /// Counts an input; every `RESTART_EVERY` inputs the server restarts on a fresh directory.
    pub async fn next_input(&mut self) {
        self.served += 1;
        if self.served.is_multiple_of(RESTART_EVERY) {
            self.stop().await;
        }
    }

    /// The live session, starting the server if needed and reconnecting when the connection was closed.
    pub async fn session(&mut self) -> &mut Session {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.connection.close_reason().is_some())
        {
            self.session = None;
        }
        if self.server.is_none() {
            self.server = Some(self.start().await);
        }
        if self.session.is_none() {
            let server = self.server.as_ref().expect("started above");
            self.session = Some(connect(server).await);
        }
        self.session.as_mut().expect("connected above")
    }

    /// How many times a server was started: when this changes, the store is fresh (nothing earlier
    /// inputs did is left in it).
    pub fn starts(&self) -> u64 {
        self.restarts
    }

    /// Forgets the session (the next input reconnects).
    pub fn drop_session(&mut self) {
        self.session = None;
    }

    async fn start(&mut self) -> Running {
        self.restarts += 1;
        let dir = PathBuf::from(format!(
            "/dev/shm/ferry-fuzz-{}-{}",
            std::process::id(),
            self.restarts
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("server data dir on /dev/shm");
        let mut settings = Settings {
            data_dir: dir.clone(),
            listen: "127.0.0.1:0".parse().expect("literal address"),
            http: "127.0.0.1:0".parse().expect("literal address"),
            drain_grace_ms: 0,
            // No timer may end the session between inputs (libFuzzer pauses while it minimizes).
            idle_timeout_ms: 3_600_000,
            stream_idle_timeout_ms: 3_600_000,
            ..Settings::default()
        };
        // Limits a script could hit by volume rather than by content: the one session sends as fast as
        // the machine allows, reconnects after every input that closed it, and opens streams in every
        // input. Content limits (frame and body size, page sizes, in-flight sends) keep their defaults.
        settings.limits.send_rate_per_sec = 1_000_000;
        settings.limits.send_burst = 1_000_000;
        settings.limits.max_open_streams = 1_000;
        settings.hardening.handshakes_per_sec_per_source = 1_000_000;
        let handle = ferry_server::start(settings)
            .await
            .expect("in-process server starts");
        let pem = std::fs::read(handle.ca_path()).expect("server CA file");
        // A short keep-alive: when the server's CONNECTION_CLOSE is lost (the client's UDP receive
        // buffer overflows while the one thread runs the server's burst), an idle client learns of the
        // close only from its next packet's answer, which the spec's 10 s interval made a 10 s stall
        // per such input. The server idles out after an hour, far above it (FERRY-TRANSPORT-9).
        let config = ClientConfigBuilder::new(TrustRoots::Pem(pem))
            .alpn(&[ALPN])
            .keep_alive(KEEP_ALIVE)
            .build()
            .expect("client config");
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal address"))
            .expect("client endpoint");
        endpoint.set_default_client_config(config);
        Running {
            handle,
            dir,
            endpoint,
        }
    }

    async fn stop(&mut self) {
        self.session = None;
        if let Some(running) = self.server.take() {
            running.endpoint.close(0u32.into(), b"restart");
            running.handle.shutdown().await;
            let _ = std::fs::remove_dir_all(&running.dir);
        }
    }
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

/// Connects, sends Hello and waits for Welcome; panics if the server refuses a valid session (that is
/// a bug the target reports).
async fn connect(server: &Running) -> Session {
    let token = server
        .handle
        .mint_token(USER, DEVICE, Duration::from_secs(24 * 3600));
    let connecting = server
        .endpoint
        .connect(server.handle.local_addr(), "localhost")
        .expect("connect");
    let connection = tokio::time::timeout(WAIT, connecting)
        .await
        .expect("QUIC handshake in time")
        .expect("QUIC handshake");
    let (mut control_send, recv) = connection.open_bi().await.expect("control stream");
    let hello = Hello {
        version: VERSION,
        token,
        device_id: DEVICE.into(),
        client_name: "ferry-fuzz".into(),
        capabilities: Vec::new(),
        device_class: String::new(),
    };
    let hello = codec::encode(&codec::frame(Kind::Hello(hello)));
    control_send.write_all(&hello).await.expect("write Hello");
    let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME_SIZE);
    let welcome = tokio::time::timeout(WAIT, reader.next())
        .await
        .expect("Welcome in time");
    match welcome {
        Ok(Some(Frame {
            kind: Some(Kind::Welcome(_)),
        })) => {}
        other => panic!("a valid Hello was not welcomed: {other:?}"),
    }
    // The server registers the session after it sent Welcome, and starts the control loop after that:
    // the first HeartbeatAck means in-memory streams find the session.
    let heartbeat = codec::encode(&codec::frame(Kind::Heartbeat(Heartbeat { sync_token: 0 })));
    control_send
        .write_all(&heartbeat)
        .await
        .expect("write Heartbeat");
    let acked = async {
        for _ in 0..MAX_FRAMES_BEFORE_ACK {
            match reader.next().await {
                Ok(Some(Frame {
                    kind: Some(Kind::HeartbeatAck(_)),
                })) => return,
                Ok(Some(_)) => {}
                other => panic!("a new session's control stream failed: {other:?}"),
            }
        }
        panic!("no HeartbeatAck among a new session's first {MAX_FRAMES_BEFORE_ACK} frames");
    };
    tokio::time::timeout(WAIT, acked)
        .await
        .expect("HeartbeatAck in time");
    let (tx, control) = mpsc::channel(CONTROL_QUEUE);
    tokio::spawn(read_control(reader, tx));
    Session {
        connection,
        control_send,
        control,
        sync_token: 0,
    }
}

/// Forwards control frames until the stream ends (bounded by the stream: it ends with the connection).
async fn read_control(mut reader: FrameReader, tx: mpsc::Sender<Result<Frame, ControlEnd>>) {
    loop {
        let item = match reader.next().await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(ControlEnd::Finished),
            Err(e) => Err(ControlEnd::Failed(e)),
        };
        let end = item.is_err();
        if tx.send(item).await.is_err() || end {
            return;
        }
    }
}

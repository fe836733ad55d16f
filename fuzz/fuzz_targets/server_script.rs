//! Fuzzes the server's frame handling through an in-process server (`ferry_fuzz::server`): a script of
//! frames and raw bytes on conversation streams and on the control stream, then checks that
//! - nothing panics (libfuzzer-sys's panic hook aborts on a panic in any thread, server tasks included);
//! - every request was answered, or its stream / the connection was closed with a documented code: a
//!   conversation stream the server finished cleanly answered each Send (SendAck or Error) and each
//!   Pull (PullResult or Error); the control stream answered each Heartbeat, Sync, group and push
//!   request, unless the connection was closed with a documented code (a script that wrote raw bytes
//!   on the control stream finishes it, which must close the connection with one);
//! - the server keeps serving: afterwards a fresh well-formed Send on a new stream is acked (on a new
//!   connection if the script got the old one closed with a documented code).
//!
//! Conversation streams are in-memory streams the server serves with its QUIC stream code
//! (`ferry_server::fuzzing`, feature `fuzzing`): no packets, TLS or round trips per stream, which is
//! what lets the target run thousands of inputs a second. The session (handshake, control stream,
//! datagrams, connection closes) is real QUIC on loopback.
//!
//! A crash may need the state earlier inputs left (groups, stored messages, a closed session): the last
//! inputs are written to `artifacts/server_script/history-PID/` on a panic (`ferry_fuzz::history`), and
//! running the binary on those files replays the sequence.
//!
//! Script: opcodes below (`OP_*`, modulo their count) with their fields (see `ferry_fuzz::Script`).
//! Seeds: `scripts/fuzz.sh` writes each `spec/vectors` frame as raw bytes on a conversation stream
//! after Open, and on the control stream.
#![no_main]

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use ferry_fuzz::history::History;
use ferry_fuzz::server::{ControlEnd, Node, Session, DEVICE, USER, WAIT};
use ferry_fuzz::{frame, Script};
use ferry_protocol::codec::{self, DEFAULT_MAX_FRAME_SIZE};
use ferry_protocol::frame::{self as wire, frame::Kind};
use ferry_protocol::{ErrorCode, Frame};
use ferry_quic::memory::MemorySend;
use ferry_quic::{codes, FrameReader};
use libfuzzer_sys::fuzz_target;
use tokio::task::JoinHandle;

/// Conversations a script opens: its own direct ones, one it is no member of, a group that does not
/// exist, malformed ids; groups the script created are added at run time.
const CONVERSATIONS: &[&str] = &[
    "d:alice:bob",
    "d:alice:carol",
    "d:bob:carol",
    "g:0123456789abcdef0123456789abcdef",
    "d:alice:alice",
    "nonsense",
    "",
];
/// Users named in group administration.
const USERS: &[&str] = &["alice", "bob", "carol", "", "not a name"];
/// client_msg_ids of the script's Sends: few, so retries and duplicates happen.
const MSG_IDS: &[&str] = &["m1", "m2", "m3", ""];

const OP_OPEN: u8 = 0;
const OP_OPEN_RAW: u8 = 1;
const OP_SEND: u8 = 2;
const OP_PULL: u8 = 3;
const OP_ACK: u8 = 4;
const OP_WRONG_FRAME: u8 = 5;
const OP_RAW: u8 = 6;
const OP_FINISH: u8 = 7;
const OP_RESET: u8 = 8;
const OP_HEARTBEAT: u8 = 9;
const OP_SYNC: u8 = 10;
const OP_MARK_READ: u8 = 11;
const OP_CREATE_GROUP: u8 = 12;
const OP_ADD_MEMBER: u8 = 13;
const OP_REMOVE_MEMBER: u8 = 14;
const OP_PUSH: u8 = 15;
const OP_CONTROL_RAW: u8 = 16;
const OP_DATAGRAM: u8 = 17;
const OP_COUNT: u8 = 18;

/// Most operations one input runs.
const MAX_OPS: usize = 64;
/// Most conversation streams one input opens.
const MAX_STREAMS: usize = 4;
/// Groups remembered for later administration and Opens.
const MAX_GROUPS: usize = 8;

/// The process's runtime, server and what outlives one input.
struct State {
    runtime: tokio::runtime::Runtime,
    node: Node,
    /// Groups the script created on the current server (newest last).
    groups: Vec<String>,
    /// `node.starts()` when `groups` was last cleared.
    starts: u64,
    /// Numbers the keep-serving Sends, unique in the process.
    checks: u64,
    /// Request ids, unique per session.
    next_request: u64,
}

/// The inputs run on this process's server, for replaying a crash.
static HISTORY: History = History::new("server_script");

fuzz_target!(|data: &[u8]| {
    HISTORY.record(data);
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Mutex::new(State {
            runtime,
            node: Node::new(),
            groups: Vec::new(),
            starts: 0,
            checks: 0,
            next_request: 0,
        })
    });
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let State {
        runtime,
        node,
        groups,
        starts,
        checks,
        next_request,
    } = &mut *state;
    runtime.block_on(async {
        node.next_input().await;
        node.session().await;
        if node.starts() != *starts {
            // A fresh server on a fresh directory: the groups of the last one are gone, and so is
            // whatever earlier inputs did.
            *starts = node.starts();
            groups.clear();
            HISTORY.clear();
            HISTORY.record(data);
        }
        run(node, groups, checks, next_request, data).await
    });
});

/// One script, then the checks.
async fn run(
    node: &mut Node,
    groups: &mut Vec<String>,
    checks: &mut u64,
    next_request: &mut u64,
    data: &[u8],
) {
    let mut s = Script::new(data);
    let mut script = Written::default();
    let session = node.session().await;
    for _ in 0..MAX_OPS {
        if s.is_empty() {
            break;
        }
        step(session, groups, next_request, &mut script, &mut s).await;
    }
    if script.control_raw {
        // Raw bytes may have left a partial frame that later frames would only extend: end the control
        // stream, which must close the connection with a documented code.
        let _ = session.control_send.finish();
    } else if script.control_written {
        // A fence: the control stream is served in order, so its answer means every earlier control
        // frame was handled and the connection is still open.
        fence(session, &mut script).await;
    }
    // Our side of every stream ends, so the server's answers end too.
    for stream in &mut script.streams {
        let _ = stream.send.finish();
    }
    let closed = check_answers(session, script, groups).await;
    if closed {
        node.drop_session();
    }
    *checks += 1;
    let id = format!("check-{checks}");
    let session = node.session().await;
    if let Err(reason) = keeps_serving(session, &id).await {
        // Closed under the check (e.g. by a datagram the server refused after the script's streams
        // were answered): allowed with a documented code; a new connection must then be served.
        documented_close(reason.as_ref(), "the connection");
        node.drop_session();
        let session = node.session().await;
        if let Err(reason) = keeps_serving(session, &id).await {
            panic!("a fresh connection's Send was not acked (closed: {reason:?})");
        }
    }
}

/// Writes the fence Heartbeat. It carries the newest token the session was handed: from token 0 its
/// answer would list every conversation the server's earlier inputs created (up to a page), a list
/// the fence does not need that every input paid to encode, send and decode (168 → 189 exec/s).
async fn fence(session: &mut Session, w: &mut Written) {
    w.heartbeats += 1;
    let sync_token = session.sync_token;
    let fence = frame(Kind::Heartbeat(wire::Heartbeat { sync_token }));
    control(session, w, fence).await;
}

/// What the script wrote and what it is owed.
#[derive(Default)]
struct Written {
    streams: Vec<ScriptStream>,
    /// Heartbeats written on the control stream (each owed a HeartbeatAck).
    heartbeats: usize,
    /// Request ids owed an answer on the control stream (Sync, group and push requests).
    requests: HashSet<u64>,
    /// The control stream's sending side failed (the connection is closing).
    control_failed: bool,
    /// Frames were written on the control stream.
    control_written: bool,
    /// Raw bytes were written on the control stream.
    control_raw: bool,
}

/// A conversation stream of the script.
struct ScriptStream {
    send: MemorySend,
    /// Counts the answers until the stream ends.
    reader: JoinHandle<Outcome>,
    /// Sends and Pulls written (each owed one answer).
    requests: usize,
    /// The script reset it: the server owes nothing on it.
    reset: bool,
    /// A write failed: the server stopped the stream or closed the connection.
    failed: bool,
    /// Raw bytes were written: they may hold requests of their own (a Pull, a Send), so the answers
    /// may outnumber the counted requests.
    raw: bool,
}

/// How a conversation stream ended, as its reader saw it.
struct Outcome {
    /// SendAck, PullResult and Error frames read.
    answers: usize,
    /// `Ok` if the server finished the stream; else how it ended.
    end: Result<(), Ended>,
}

/// How a conversation stream failed.
enum Ended {
    /// Reset with this code (`None`: without a ferry code).
    Code(Option<ErrorCode>),
    /// Its connection closed. An in-memory stream fails with the server's view of the close, which
    /// carries no code when the server closed it; the code is the one the client's QUIC connection
    /// receives (see [`client_close`]).
    Lost,
}

/// The stream failed because its connection closed.
fn lost(e: &ferry_quic::ReadError) -> bool {
    matches!(
        e,
        ferry_quic::ReadError::Stream(quinn::ReadError::ConnectionLost(_))
    )
}

/// Why the client's connection closed, once it learns of the close (within [`WAIT`]).
async fn client_close(session: &Session) -> quinn::ConnectionError {
    tokio::time::timeout(WAIT, session.connection.closed())
        .await
        .expect("the server's side of the connection closed, the client's did not")
}

/// The server's close reached the client as a stateless reset, which carries no code.
///
/// Not a server fault, and the cause of the "control stream ended without a ferry error code" crashes
/// (triaged 2026-11-30 by replaying a run's history): QUIC sends CONNECTION_CLOSE once, repeats it only
/// in answer to packets that arrive during the closing period (3 PTO, tens of ms on loopback), then
/// forgets the connection and answers anything later with a stateless reset, which has no code
/// (RFC 9000 §10.2, §10.3). Here the close does get lost on loopback: every such crash input ran many
/// Syncs (each a page of every group earlier inputs created: the state the crash needed), the same
/// inputs stalled for exactly the client's keep-alive interval before the keep-alive was shortened
/// (the client learned of the close only from its next packet), and the kernel counts UDP receive-
/// buffer drops on this machine (`RcvbufErrors` in /proc/net/snmp); both ends share one thread, so
/// the server's burst can fill the client's buffer before the client reads. The server did close the
/// connection (an endpoint sends stateless resets only for connections it forgot), and the next
/// input's check that a new connection is served still runs.
fn close_lost(reason: &quinn::ConnectionError) -> bool {
    matches!(reason, quinn::ConnectionError::Reset)
}

/// A connection the server closed must carry a code of the spec's table, unless the close was lost
/// ([`close_lost`]); `None`: the connection was not closed at all.
fn documented_close(reason: Option<&quinn::ConnectionError>, what: &str) {
    match reason {
        Some(reason) if close_lost(reason) => {}
        Some(reason) => documented(codes::connection_code(reason), what),
        None => panic!("{what} failed without being closed"),
    }
}

async fn step(
    session: &mut Session,
    groups: &[String],
    next_request: &mut u64,
    w: &mut Written,
    s: &mut Script<'_>,
) {
    let mut request_id = || {
        *next_request += 1;
        *next_request
    };
    match s.u8() % OP_COUNT {
        OP_OPEN | OP_OPEN_RAW => {
            let with_open = s.u8() % OP_COUNT == OP_OPEN;
            let conversation = conversation(s, groups);
            if w.streams.len() >= MAX_STREAMS {
                return;
            }
            // None: the script got the connection closed; later opens find none either.
            let Some(opened) = ferry_server::fuzzing::open_stream(USER, DEVICE) else {
                return;
            };
            let (send, recv) = (opened.send, opened.recv);
            let recv = FrameReader::from_memory(recv, DEFAULT_MAX_FRAME_SIZE);
            let reader = tokio::spawn(read_stream(recv));
            w.streams.push(ScriptStream {
                send,
                reader,
                requests: 0,
                reset: false,
                failed: false,
                raw: false,
            });
            if with_open {
                let open = Kind::Open(wire::Open {
                    conversation_id: conversation,
                });
                write_frame(w.streams.last_mut().expect("pushed"), open, false).await;
            }
        }
        OP_SEND => {
            let send = wire::Send {
                client_msg_id: (*s.pick(MSG_IDS)).to_owned(),
                body: body(s),
            };
            if let Some(stream) = stream(w, s) {
                write_frame(stream, Kind::Send(send), true).await;
            }
        }
        OP_PULL => {
            let pull = wire::Pull {
                after_seq: s.small(),
                limit: u32::from(s.u8() % 8),
            };
            if let Some(stream) = stream(w, s) {
                write_frame(stream, Kind::Pull(pull), true).await;
            }
        }
        OP_ACK => {
            let ack = wire::Ack { seq: s.small() };
            if let Some(stream) = stream(w, s) {
                write_frame(stream, Kind::Ack(ack), false).await;
            }
        }
        OP_WRONG_FRAME => {
            // Frames that do not belong on a conversation stream (the server resets it).
            let kind = match s.u8() % 3 {
                0 => Kind::Heartbeat(wire::Heartbeat { sync_token: 0 }),
                1 => Kind::Open(wire::Open {
                    conversation_id: "d:alice:bob".into(),
                }),
                _ => Kind::Deliver(wire::Deliver::default()),
            };
            if let Some(stream) = stream(w, s) {
                write_frame(stream, kind, false).await;
            }
        }
        OP_RAW => {
            let bytes = s.chunk();
            if let Some(stream) = stream(w, s) {
                stream.raw = true;
                write_raw(stream, bytes).await;
            }
        }
        OP_FINISH => {
            if let Some(stream) = stream(w, s) {
                let _ = stream.send.finish();
            }
        }
        OP_RESET => {
            let code = ErrorCode(u32::from(s.u8()));
            if let Some(stream) = stream(w, s) {
                let _ = stream.send.reset(codes::to_varint(code));
                stream.reset = true;
            }
        }
        OP_HEARTBEAT => {
            let hb = Kind::Heartbeat(wire::Heartbeat {
                sync_token: s.small(),
            });
            w.heartbeats += 1;
            control(session, w, frame(hb)).await;
        }
        OP_SYNC => {
            let id = request_id();
            let sync = Kind::Sync(wire::Sync {
                request_id: id,
                since_token: s.small(),
                limit: u32::from(s.u8()),
            });
            w.requests.insert(id);
            control(session, w, frame(sync)).await;
        }
        OP_MARK_READ => {
            // Answered only when refused, so not counted.
            let mark = Kind::MarkRead(wire::MarkRead {
                conversation_id: conversation(s, groups),
                seq: s.small(),
                request_id: request_id(),
            });
            control(session, w, frame(mark)).await;
        }
        OP_CREATE_GROUP | OP_ADD_MEMBER | OP_REMOVE_MEMBER => {
            let id = request_id();
            let kind = match s.u8() % 3 {
                0 => Kind::CreateGroup(wire::CreateGroup {
                    request_id: id,
                    name: {
                        let len = usize::from(s.u8() % 16);
                        String::from_utf8_lossy(s.bytes(len)).into()
                    },
                    members: (0..s.u8() % 4)
                        .map(|_| (*s.pick(USERS)).to_owned())
                        .collect(),
                }),
                1 => Kind::AddMember(wire::AddMember {
                    request_id: id,
                    conversation_id: conversation(s, groups),
                    user_id: (*s.pick(USERS)).to_owned(),
                }),
                _ => Kind::RemoveMember(wire::RemoveMember {
                    request_id: id,
                    conversation_id: conversation(s, groups),
                    user_id: (*s.pick(USERS)).to_owned(),
                }),
            };
            w.requests.insert(id);
            control(session, w, frame(kind)).await;
        }
        OP_PUSH => {
            // No PushRegister: its endpoint would make the server POST to an arbitrary URL.
            let id = request_id();
            let kind = if s.bool() {
                Kind::PushList(wire::PushList { request_id: id })
            } else {
                Kind::PushUnregister(wire::PushUnregister { request_id: id })
            };
            w.requests.insert(id);
            control(session, w, frame(kind)).await;
        }
        OP_CONTROL_RAW => {
            let bytes = s.chunk();
            w.control_raw = true;
            if !w.control_failed {
                w.control_failed = timed_write(&mut session.control_send, bytes).await.is_err();
            }
        }
        op => {
            debug_assert_eq!(op, OP_DATAGRAM);
            let bytes = Bytes::copy_from_slice(s.chunk());
            let _ = session.connection.send_datagram(bytes);
        }
    }
}

/// A conversation id: one of the fixed ones or a group the script created.
fn conversation(s: &mut Script<'_>, groups: &[String]) -> String {
    let i = usize::from(s.u8());
    match i.checked_sub(CONVERSATIONS.len()) {
        None => CONVERSATIONS[i].to_owned(),
        Some(g) if !groups.is_empty() => groups[g % groups.len()].clone(),
        Some(_) => CONVERSATIONS[0].to_owned(),
    }
}

/// A body: usually short; sometimes one byte over the default maximum body size.
fn body(s: &mut Script<'_>) -> Bytes {
    let n = match s.u8() {
        255 => usize::try_from(ferry_protocol::limits::DEFAULTS.max_body_size).unwrap_or(0) + 1,
        n => usize::from(n),
    };
    Bytes::from(vec![b'x'; n])
}

/// One of the script's streams.
fn stream<'w>(w: &'w mut Written, s: &mut Script<'_>) -> Option<&'w mut ScriptStream> {
    let i = usize::from(s.u8());
    let n = w.streams.len();
    (n > 0).then(|| &mut w.streams[i % n])
}

async fn write_frame(stream: &mut ScriptStream, kind: Kind, request: bool) {
    let bytes = codec::encode(&frame(kind));
    if write_raw(stream, &bytes).await && request {
        stream.requests += 1;
    }
}

/// Writes unless the stream already failed or was reset; true if the bytes were written.
async fn write_raw(stream: &mut ScriptStream, bytes: &[u8]) -> bool {
    if stream.failed || stream.reset {
        return false;
    }
    let written = tokio::time::timeout(WAIT, stream.send.write_all(bytes))
        .await
        .expect("the server stopped reading a conversation stream it did not close");
    stream.failed = written.is_err();
    !stream.failed
}

/// `write_all` on the control stream within [`WAIT`]; a write that cannot finish in that time is a
/// server that stopped reading without closing anything.
async fn timed_write(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), quinn::WriteError> {
    tokio::time::timeout(WAIT, send.write_all(bytes))
        .await
        .expect("the server stopped reading a stream it did not close")
}

async fn control(session: &mut Session, w: &mut Written, frame: Frame) {
    w.control_written = true;
    if !w.control_failed {
        let bytes = codec::encode(&frame);
        w.control_failed = timed_write(&mut session.control_send, &bytes)
            .await
            .is_err();
    }
}

/// Reads a conversation stream to its end, counting answers (Deliver is not one). Bounded by [`WAIT`]
/// per frame.
async fn read_stream(mut reader: FrameReader) -> Outcome {
    let mut answers = 0;
    loop {
        let next = tokio::time::timeout(WAIT, reader.next())
            .await
            .expect("the server left a stream open after the script finished it");
        match next {
            Ok(Some(f)) => {
                if matches!(
                    f.kind,
                    Some(Kind::SendAck(_) | Kind::PullResult(_) | Kind::Error(_))
                ) {
                    answers += 1;
                }
            }
            Ok(None) => {
                return Outcome {
                    answers,
                    end: Ok(()),
                }
            }
            Err(e) => {
                return Outcome {
                    answers,
                    end: if lost(&e) {
                        Err(Ended::Lost)
                    } else {
                        Err(Ended::Code(e.peer_code()))
                    },
                }
            }
        }
    }
}

/// Checks that every request was answered or its stream closed with a documented code. Returns true if
/// the connection was closed.
async fn check_answers(session: &mut Session, w: Written, groups: &mut Vec<String>) -> bool {
    let mut closed = false;
    for stream in w.streams {
        if stream.reset {
            stream.reader.abort();
            continue;
        }
        let outcome = stream.reader.await.expect("stream reader task");
        match outcome.end {
            Ok(()) if stream.raw => assert!(
                outcome.answers >= stream.requests,
                "a finished stream left requests unanswered"
            ),
            Ok(()) => assert_eq!(
                outcome.answers, stream.requests,
                "a finished stream answered other than once per request"
            ),
            Err(Ended::Code(code)) => {
                documented(code, "a conversation stream");
                closed |= session.connection.close_reason().is_some();
            }
            Err(Ended::Lost) => {
                documented_close(Some(&client_close(session).await), "the connection");
                closed = true;
            }
        }
    }
    let (mut heartbeats, mut requests) = (w.heartbeats, w.requests);
    // After raw bytes the control stream was finished: read until the connection closes.
    while heartbeats > 0 || !requests.is_empty() || w.control_raw {
        let next = tokio::time::timeout(WAIT, session.control.recv())
            .await
            .expect("control requests unanswered and the connection still open");
        match next {
            Some(Ok(f)) => match f.kind {
                Some(Kind::HeartbeatAck(ack)) => {
                    heartbeats = heartbeats.saturating_sub(1);
                    session.sync_token = session.sync_token.max(ack.sync_token);
                }
                Some(Kind::SyncResult(r)) => {
                    requests.remove(&r.request_id);
                }
                Some(Kind::GroupResult(r)) => {
                    requests.remove(&r.request_id);
                    if !groups.contains(&r.conversation_id) {
                        if groups.len() >= MAX_GROUPS {
                            groups.remove(0);
                        }
                        groups.push(r.conversation_id);
                    }
                }
                Some(Kind::PushResult(r)) => {
                    requests.remove(&r.request_id);
                }
                Some(Kind::Error(e)) => {
                    requests.remove(&e.request_id);
                }
                _ => {}
            },
            Some(Err(ControlEnd::Failed(ferry_quic::ReadError::Stream(
                quinn::ReadError::ConnectionLost(reason),
            )))) if close_lost(&reason) => {
                return true;
            }
            Some(Err(ControlEnd::Failed(e))) => {
                // The error itself, for the report: the code alone says nothing when there is none.
                assert!(e.peer_code().is_some(), "the control stream failed: {e:?}");
                documented(e.peer_code(), "the control stream");
                return true;
            }
            Some(Err(ControlEnd::Finished)) | None => {
                panic!("the server finished the control stream with requests unanswered")
            }
        }
    }
    closed || w.control_failed
}

/// A stream or connection the server closed must carry a code of the spec's table.
fn documented(code: Option<ErrorCode>, what: &str) {
    match code {
        Some(code) => assert!(
            code.info().is_some(),
            "{what} was closed with undocumented code {}",
            code.0
        ),
        None => panic!("{what} ended without a ferry error code"),
    }
}

/// A well-formed Send on a fresh stream is acked; `Err` with why the connection closed if it was
/// closed under it (`None`: it was not, yet the stream failed).
async fn keeps_serving(
    session: &mut Session,
    id: &str,
) -> Result<(), Option<quinn::ConnectionError>> {
    let closed = |session: &Session| session.connection.close_reason();
    let Some(opened) = ferry_server::fuzzing::open_stream(USER, DEVICE) else {
        return Err(closed(session));
    };
    let (mut send, recv) = (opened.send, opened.recv);
    let open = frame(Kind::Open(wire::Open {
        conversation_id: "d:alice:bob".into(),
    }));
    let message = frame(Kind::Send(wire::Send {
        client_msg_id: id.to_owned(),
        body: Bytes::from_static(b"still serving?"),
    }));
    let mut bytes = codec::encode(&open).to_vec();
    bytes.extend_from_slice(&codec::encode(&message));
    let written = tokio::time::timeout(WAIT, send.write_all(&bytes))
        .await
        .expect("the server stopped reading the keep-serving stream");
    if written.is_err() {
        return Err(closed(session));
    }
    let _ = send.finish();
    let mut reader = FrameReader::from_memory(recv, DEFAULT_MAX_FRAME_SIZE);
    loop {
        let next = tokio::time::timeout(WAIT, reader.next())
            .await
            .expect("the keep-serving Send was not answered in time");
        match next {
            Ok(Some(Frame {
                kind: Some(Kind::SendAck(ack)),
            })) if ack.client_msg_id == id => return Ok(()),
            Ok(Some(Frame {
                kind: Some(Kind::Deliver(_)),
            })) => {}
            Err(e) if lost(&e) => return Err(Some(client_close(session).await)),
            Err(_) if closed(session).is_some() => return Err(closed(session)),
            other => panic!("the keep-serving Send was not acked: {other:?}"),
        }
    }
}

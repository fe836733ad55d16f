//! A minimal ferry/1 wire driver: QUIC + the protocol crate's codec, nothing else. It sends exactly the
//! frames a test asks for and returns exactly what arrived, so conformance cases and end-to-end tests
//! judge what is on the wire — not what a client library makes of it. Frames are read with `ferry-quic`'s
//! reader; writes stay direct, one `write_all` per call, so a case controls every byte (malformed input
//! included) and sees the error of the very write that failed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{
    frame::Kind, Ack, AddMember, CreateGroup, Heartbeat, HeartbeatAck, Hello, Message, Open, Pull,
    PullResult, PushPolicy, PushRegister, PushResult, RemoveMember, Send, SendAck, Sync,
    SyncResult, Welcome,
};
use ferry_protocol::{ErrorCode, Frame, ALPN, VERSION};
use ferry_quic::{codes, ClientConfigBuilder, FrameReader, ReadError, TrustRoots};

/// Default time a driver waits for any expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// What went wrong while driving the wire.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// QUIC connect failed (includes TLS/ALPN failures).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed by the peer.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading or decoding failed.
    #[error("read: {0}")]
    Read(#[from] ReadError),
    /// Nothing arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The stream ended.
    #[error("stream ended while waiting for {0}")]
    Ended(&'static str),
    /// A different frame arrived.
    #[error("expected {expected}, got {got:?}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// What arrived.
        got: Box<Frame>,
    },
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Local I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl DriverError {
    /// The ferry/1 code the peer closed the connection or reset the stream with, if any.
    pub fn wire_code(&self) -> Option<ErrorCode> {
        match self {
            DriverError::Connection(e) => codes::connection_code(e),
            DriverError::Write(e) => codes::write_code(e),
            DriverError::Read(e) => e.peer_code(),
            DriverError::Unexpected { got, .. } => match &got.kind {
                Some(Kind::Error(e)) => Some(ErrorCode(e.code)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// QUIC keep-alive of the driver's connections. Conformance runs may target a server with short test
/// timers (CI's runs one whose QUIC idle timeout is 8 s, below the 15 s the spec asks for): PING often
/// enough that only the ferry timers a case waits for close its connection.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A QUIC client endpoint trusting one CA file, speaking the given ALPN protocols (the one client
/// configuration of `ferry-quic`, so cases see the transport settings every ferry/1 client uses).
pub fn endpoint(ca_file: &Path, alpn: &[&[u8]]) -> Result<quinn::Endpoint, DriverError> {
    let pem = std::fs::read(ca_file)?;
    let config = ClientConfigBuilder::new(TrustRoots::Pem(pem))
        .alpn(alpn)
        .keep_alive(KEEP_ALIVE)
        .build()
        .map_err(|e| DriverError::Tls(e.to_string()))?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal address"))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Reads the next frame within `WAIT`.
pub async fn next_frame(
    reader: &mut FrameReader,
    what: &'static str,
) -> Result<Frame, DriverError> {
    match tokio::time::timeout(WAIT, reader.next()).await {
        Err(_) => Err(DriverError::Timeout(what)),
        Ok(Ok(Some(frame))) => Ok(frame),
        Ok(Ok(None)) => Err(DriverError::Ended(what)),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// The answer to a group request: `(conversation_id, seq)`, or the code it was refused with.
pub type GroupAnswer = Result<(String, u64), ErrorCode>;

/// One ferry/1 session driven frame by frame.
pub struct Session {
    /// The QUIC connection.
    pub connection: quinn::Connection,
    /// The Welcome the server sent.
    pub welcome: Welcome,
    control_send: quinn::SendStream,
    control: FrameReader,
    next_request: u64,
}

/// Settings for opening sessions against one server.
#[derive(Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// Client endpoint (trusting the server's CA).
    pub endpoint: quinn::Endpoint,
}

impl Target {
    /// A target at `addr` trusting `ca_file`.
    pub fn new(addr: SocketAddr, ca_file: &Path) -> Result<Target, DriverError> {
        Ok(Target {
            addr,
            endpoint: endpoint(ca_file, &[ALPN])?,
        })
    }

    /// A raw QUIC connection (no Hello yet).
    pub async fn connect(&self) -> Result<quinn::Connection, DriverError> {
        let connecting = self.endpoint.connect(self.addr, "localhost")?;
        Ok(tokio::time::timeout(WAIT, connecting)
            .await
            .map_err(|_| DriverError::Timeout("QUIC handshake"))??)
    }

    /// Connects and completes Hello → Welcome.
    pub async fn session(&self, token: &str, device: &str) -> Result<Session, DriverError> {
        Session::start(self.connect().await?, hello(token, device)).await
    }

    /// A target at `addr` whose endpoint offers exactly the ALPN ids in `alpn` (negotiation cases).
    pub fn with_alpn(
        addr: SocketAddr,
        ca_file: &Path,
        alpn: &[&[u8]],
    ) -> Result<Target, DriverError> {
        Ok(Target {
            addr,
            endpoint: endpoint(ca_file, alpn)?,
        })
    }
}

/// A Hello for ferry/1.
pub fn hello(token: &str, device: &str) -> Hello {
    Hello {
        version: VERSION,
        token: token.to_owned(),
        device_id: device.to_owned(),
        client_name: "ferry-interop".to_owned(),
        capabilities: Vec::new(),
        device_class: String::new(),
    }
}

/// A session whose Hello is written but whose Welcome has not been read yet. Conversation streams opened
/// now are pipelined behind the Hello (and ride in 0-RTT early data on a 0-RTT connection).
pub struct PendingSession {
    connection: quinn::Connection,
    control_send: quinn::SendStream,
    control: FrameReader,
}

impl PendingSession {
    /// Opens a conversation stream before Welcome.
    pub async fn open(&self, conversation: &str) -> Result<ConvStream, DriverError> {
        open_stream(&self.connection, conversation).await
    }

    /// Waits for Welcome.
    pub async fn welcome(self) -> Result<Session, DriverError> {
        let PendingSession {
            connection,
            control_send,
            mut control,
        } = self;
        let welcome = match next_frame(&mut control, "Welcome").await {
            Ok(Frame {
                kind: Some(Kind::Welcome(welcome)),
            }) => welcome,
            Ok(other) => {
                return Err(DriverError::Unexpected {
                    expected: "Welcome",
                    got: Box::new(other),
                })
            }
            // A refused Hello often surfaces as the connection close; prefer its code.
            Err(e) => return Err(prefer_close(&connection, e).await),
        };
        Ok(Session {
            connection,
            welcome,
            control_send,
            control,
            next_request: 1,
        })
    }
}

impl Session {
    /// Opens the control stream on `connection`, sends `hello` and waits for Welcome.
    pub async fn start(
        connection: quinn::Connection,
        hello: Hello,
    ) -> Result<Session, DriverError> {
        Session::begin(connection, hello).await?.welcome().await
    }

    /// Opens the control stream on `connection` and writes `hello`, without waiting for Welcome.
    pub async fn begin(
        connection: quinn::Connection,
        hello: Hello,
    ) -> Result<PendingSession, DriverError> {
        let (mut control_send, recv) = connection.open_bi().await?;
        control_send
            .write_all(&codec::encode(&frame(Kind::Hello(hello))))
            .await?;
        Ok(PendingSession {
            connection,
            control_send,
            control: FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE),
        })
    }

    /// A fresh request id.
    pub fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// Writes a frame on the control stream.
    pub async fn send_control(&mut self, frame: Frame) -> Result<(), DriverError> {
        self.control_send.write_all(&codec::encode(&frame)).await?;
        Ok(())
    }

    /// Finishes the sending side of the control stream (FERRY-CONN-2 cases).
    pub fn finish_control(&mut self) {
        let _ = self.control_send.finish();
    }

    /// Resets the sending side of the control stream with `code` (FERRY-CONN-2 cases).
    pub fn reset_control(&mut self, code: ErrorCode) {
        let _ = self.control_send.reset(codes::to_varint(code));
    }

    /// Writes raw bytes on the control stream.
    pub async fn send_control_raw(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        self.control_send.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame on the control stream (or the connection's close as an error).
    pub async fn next_control(&mut self, what: &'static str) -> Result<Frame, DriverError> {
        match next_frame(&mut self.control, what).await {
            Ok(frame) => Ok(frame),
            Err(e) => Err(prefer_close(&self.connection, e).await),
        }
    }

    /// Sends a control request and returns the next control frame that is not a stray GoAway.
    pub async fn request(&mut self, frame: Frame) -> Result<Frame, DriverError> {
        self.send_control(frame).await?;
        self.next_control("control reply").await
    }

    /// Sends a group administration request (its `request_id` is ignored and replaced by a fresh one)
    /// and returns `(conversation_id, seq)` from the GroupResult, or the code of the Error that refused it.
    pub async fn group_request(
        &mut self,
        kind: impl FnOnce(u64) -> Kind,
    ) -> Result<GroupAnswer, DriverError> {
        let request_id = self.request_id();
        let reply = self.request(frame(kind(request_id))).await?;
        match reply.kind {
            Some(Kind::GroupResult(r)) if r.request_id == request_id => {
                Ok(Ok((r.conversation_id, r.seq)))
            }
            Some(Kind::Error(e)) if e.request_id == request_id => Ok(Err(ErrorCode(e.code))),
            kind => Err(DriverError::Unexpected {
                expected: "GroupResult or Error echoing the request_id",
                got: Box::new(Frame { kind }),
            }),
        }
    }

    /// Sends a push request (PushRegister, PushUnregister or PushList, its `request_id` replaced by a
    /// fresh one) and returns the PushResult, or the code of the Error that refused it.
    pub async fn push_request(
        &mut self,
        kind: impl FnOnce(u64) -> Kind,
    ) -> Result<Result<PushResult, ErrorCode>, DriverError> {
        let request_id = self.request_id();
        match self.request(frame(kind(request_id))).await?.kind {
            Some(Kind::PushResult(r)) if r.request_id == request_id => Ok(Ok(r)),
            Some(Kind::Error(e)) if e.request_id == request_id => Ok(Err(ErrorCode(e.code))),
            kind => Err(unexpected(
                "PushResult or Error echoing the request_id",
                Frame { kind },
            )),
        }
    }

    /// PushRegister of `endpoint` with `app_token` and `policy`: the PushResult, or the code of the Error
    /// that refused it.
    pub async fn push_register(
        &mut self,
        endpoint: &str,
        app_token: &str,
        policy: PushPolicy,
    ) -> Result<Result<PushResult, ErrorCode>, DriverError> {
        let (endpoint, app_token) = (endpoint.to_owned(), app_token.to_owned());
        self.push_request(|request_id| {
            Kind::PushRegister(PushRegister {
                request_id,
                endpoint,
                app_token,
                policy: policy as i32,
            })
        })
        .await
    }

    /// CreateGroup.
    pub async fn create_group(
        &mut self,
        name: &str,
        members: &[&str],
    ) -> Result<GroupAnswer, DriverError> {
        let members = members.iter().map(|m| m.to_string()).collect();
        let name = name.to_owned();
        self.group_request(|request_id| {
            Kind::CreateGroup(CreateGroup {
                request_id,
                name,
                members,
            })
        })
        .await
    }

    /// AddMember.
    pub async fn add_member(
        &mut self,
        conversation: &str,
        user: &str,
    ) -> Result<GroupAnswer, DriverError> {
        let (conversation_id, user_id) = (conversation.to_owned(), user.to_owned());
        self.group_request(|request_id| {
            Kind::AddMember(AddMember {
                request_id,
                conversation_id,
                user_id,
            })
        })
        .await
    }

    /// RemoveMember.
    pub async fn remove_member(
        &mut self,
        conversation: &str,
        user: &str,
    ) -> Result<GroupAnswer, DriverError> {
        let (conversation_id, user_id) = (conversation.to_owned(), user.to_owned());
        self.group_request(|request_id| {
            Kind::RemoveMember(RemoveMember {
                request_id,
                conversation_id,
                user_id,
            })
        })
        .await
    }

    /// Opens a conversation stream.
    pub async fn open(&self, conversation: &str) -> Result<ConvStream, DriverError> {
        open_stream(&self.connection, conversation).await
    }

    /// Sends a Heartbeat and returns the HeartbeatAck.
    pub async fn heartbeat(&mut self, sync_token: u64) -> Result<HeartbeatAck, DriverError> {
        let reply = self
            .request(frame(Kind::Heartbeat(Heartbeat { sync_token })))
            .await?;
        match reply.kind {
            Some(Kind::HeartbeatAck(ack)) => Ok(ack),
            _ => Err(unexpected("HeartbeatAck", reply)),
        }
    }

    /// Sends a Sync and returns the SyncResult (an `Error` reply is returned as `Unexpected`).
    pub async fn sync(&mut self, since_token: u64, limit: u32) -> Result<SyncResult, DriverError> {
        let request_id = self.request_id();
        let reply = self
            .request(frame(Kind::Sync(Sync {
                request_id,
                since_token,
                limit,
            })))
            .await?;
        match reply.kind {
            Some(Kind::SyncResult(result)) => Ok(result),
            _ => Err(unexpected("SyncResult", reply)),
        }
    }

    /// Accepts the next server-opened conversation stream and reads its Open.
    pub async fn accept(&self) -> Result<ConvStream, DriverError> {
        let (send, recv) = tokio::time::timeout(WAIT, self.connection.accept_bi())
            .await
            .map_err(|_| DriverError::Timeout("server-opened stream"))??;
        let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
        match next_frame(&mut reader, "Open").await? {
            Frame {
                kind: Some(Kind::Open(open)),
            } => Ok(ConvStream {
                send,
                reader,
                conversation: open.conversation_id,
                delivered: Vec::new(),
            }),
            other => Err(DriverError::Unexpected {
                expected: "Open",
                got: Box::new(other),
            }),
        }
    }

    /// Closes the connection with NO_ERROR.
    pub fn close(&self) {
        self.connection
            .close(codes::to_varint(ErrorCode::NO_ERROR), b"bye");
    }
}

fn unexpected(expected: &'static str, got: Frame) -> DriverError {
    DriverError::Unexpected {
        expected,
        got: Box::new(got),
    }
}

async fn open_stream(
    connection: &quinn::Connection,
    conversation: &str,
) -> Result<ConvStream, DriverError> {
    let (send, recv) = connection.open_bi().await?;
    let mut stream = ConvStream {
        send,
        reader: FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE),
        conversation: conversation.to_owned(),
        delivered: Vec::new(),
    };
    stream
        .send_frame(frame(Kind::Open(Open {
            conversation_id: conversation.to_owned(),
        })))
        .await?;
    Ok(stream)
}

/// If the connection was closed, its close reason says more than a stream error.
async fn prefer_close(connection: &quinn::Connection, error: DriverError) -> DriverError {
    if error.wire_code().is_some() {
        return error;
    }
    match tokio::time::timeout(Duration::from_secs(2), connection.closed()).await {
        Ok(reason) => DriverError::Connection(reason),
        Err(_) => error,
    }
}

/// One conversation stream.
pub struct ConvStream {
    send: quinn::SendStream,
    reader: FrameReader,
    /// The conversation this stream carries.
    pub conversation: String,
    /// Every Deliver's message that a helper read past (in arrival order).
    pub delivered: Vec<Message>,
}

impl ConvStream {
    /// Writes one frame.
    pub async fn send_frame(&mut self, frame: Frame) -> Result<(), DriverError> {
        self.send.write_all(&codec::encode(&frame)).await?;
        Ok(())
    }

    /// Writes raw bytes (for malformed-input cases).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Finishes the sending side.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Abandons the stream from the client side: RESET_STREAM and STOP_SENDING with `code`.
    pub fn reset(&mut self, code: ErrorCode) {
        let _ = self.send.reset(codes::to_varint(code));
        self.reader.stop(code);
    }

    /// The next frame.
    pub async fn next(&mut self, what: &'static str) -> Result<Frame, DriverError> {
        next_frame(&mut self.reader, what).await
    }

    /// Sends a message without waiting.
    pub async fn send_message(
        &mut self,
        client_msg_id: &str,
        body: &[u8],
    ) -> Result<(), DriverError> {
        self.send_frame(frame(Kind::Send(Send {
            client_msg_id: client_msg_id.to_owned(),
            body: Bytes::copy_from_slice(body),
        })))
        .await
    }

    /// Sends a message and waits for its SendAck (skipping Delivers that arrive meanwhile).
    pub async fn send_and_ack(
        &mut self,
        client_msg_id: &str,
        body: &[u8],
    ) -> Result<SendAck, DriverError> {
        self.send_message(client_msg_id, body).await?;
        self.expect_send_ack().await
    }

    /// The next frame that is not a Deliver; Delivers read meanwhile go to `delivered`.
    pub async fn next_non_deliver(&mut self, what: &'static str) -> Result<Frame, DriverError> {
        loop {
            match self.next(what).await? {
                Frame {
                    kind: Some(Kind::Deliver(deliver)),
                } => self.delivered.extend(deliver.message),
                other => return Ok(other),
            }
        }
    }

    /// Reads until `delivered` holds at least `count` messages.
    pub async fn wait_delivered(&mut self, count: usize) -> Result<&[Message], DriverError> {
        while self.delivered.len() < count {
            match self.next("Deliver").await? {
                Frame {
                    kind: Some(Kind::Deliver(deliver)),
                } => self.delivered.extend(deliver.message),
                other => {
                    return Err(DriverError::Unexpected {
                        expected: "Deliver",
                        got: Box::new(other),
                    })
                }
            }
        }
        Ok(&self.delivered)
    }

    /// Waits for the next SendAck; Delivers read meanwhile go to `delivered`.
    pub async fn expect_send_ack(&mut self) -> Result<SendAck, DriverError> {
        match self.next_non_deliver("SendAck").await? {
            Frame {
                kind: Some(Kind::SendAck(ack)),
            } => Ok(ack),
            other => Err(DriverError::Unexpected {
                expected: "SendAck",
                got: Box::new(other),
            }),
        }
    }

    /// Sends a cumulative Ack.
    pub async fn ack(&mut self, seq: u64) -> Result<(), DriverError> {
        self.send_frame(frame(Kind::Ack(Ack { seq }))).await
    }

    /// Pulls one page; Delivers read meanwhile go to `delivered`.
    pub async fn pull(&mut self, after_seq: u64, limit: u32) -> Result<PullResult, DriverError> {
        self.send_frame(frame(Kind::Pull(Pull { after_seq, limit })))
            .await?;
        match self.next_non_deliver("PullResult").await? {
            Frame {
                kind: Some(Kind::PullResult(result)),
            } => Ok(result),
            other => Err(DriverError::Unexpected {
                expected: "PullResult",
                got: Box::new(other),
            }),
        }
    }
}

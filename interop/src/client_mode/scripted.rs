//! A scripted ferry/1 server for the client cases that need a server to do what the reference server
//! never does on its own: hold `Welcome` back, change a conversation's epoch, hand out odd sync tokens,
//! refuse a Send with TOO_MANY_INFLIGHT, lose the answer to a CreateGroup, relay datagrams for strangers.
//!
//! It speaks the wire with quinn and the protocol crate only. A case accepts connections, reads every
//! frame and datagram the client sends as an [`Event`], answers the ones it cares about itself and hands
//! the rest to [`Conn::serve`], which answers from an in-memory [`Model`] of the user's conversations the
//! way a server following the spec would (Sync, Heartbeat, Pull, Send, Ack). Tokens are not verified.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{
    frame::Kind, ConversationKind, ConversationState, Deliver, HeartbeatAck, Hello, Limits,
    Message, Open, PullResult, SendAck, SyncResult, Welcome,
};
use ferry_protocol::frames::{self, kind_name};
use ferry_protocol::{ErrorCode, Frame};
use ferry_quic::{codes, FrameReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ClientRun;
use crate::runner::Verdict;
use crate::{ensure, fail};

/// Frames a scripted connection reads at most (the client's frames are small; this only bounds memory).
const MAX_FRAME: usize = 1 << 20;
/// Events buffered per connection before its reader tasks wait.
const EVENT_QUEUE: usize = 4096;
/// Largest page the model answers a Pull with (the default `max_pull_page`).
const PAGE: usize = 100;

/// The index of the control stream (the first stream the client opens).
pub const CONTROL: usize = 0;

/// Something the client did on a connection.
#[derive(Debug, Clone)]
pub enum Event {
    /// A frame on the control stream.
    Control(Frame),
    /// A frame on conversation stream `stream` (see [`Conn::conversation_of`]).
    Stream(usize, Frame),
    /// The client finished or reset a stream.
    StreamEnded(usize),
    /// A datagram that decoded as a frame.
    Datagram(Frame),
    /// The connection ended (the reason as text).
    Closed(String),
}

impl Event {
    /// Short text for failure reasons: `control Sync`, `stream 3 Pull`, `datagram Typing`.
    pub fn describe(&self) -> String {
        match self {
            Event::Control(f) => format!("control {}", kind_name(f)),
            Event::Stream(i, f) => format!("stream {i} {}", kind_name(f)),
            Event::StreamEnded(i) => format!("stream {i} ended"),
            Event::Datagram(f) => format!("datagram {}", kind_name(f)),
            Event::Closed(why) => format!("connection closed ({why})"),
        }
    }
}

/// What the reader tasks pass to the connection.
enum Incoming {
    Event(Event),
    NewStream(usize, quinn::SendStream),
}

/// One conversation as the scripted server knows it.
#[derive(Debug, Clone)]
pub struct Conv {
    /// Its epoch (never 0 on the wire).
    pub epoch: u64,
    /// Lowest seq the user may read.
    pub first_seq: u64,
    /// Its messages by seq.
    pub messages: BTreeMap<u64, Message>,
}

impl Conv {
    /// An empty conversation in `epoch`.
    pub fn new(epoch: u64) -> Conv {
        Conv {
            epoch,
            first_seq: 1,
            messages: BTreeMap::new(),
        }
    }

    /// Highest seq.
    pub fn head(&self) -> u64 {
        self.messages.keys().next_back().copied().unwrap_or(0)
    }
}

/// The server-side state the default answers come from.
#[derive(Debug, Clone)]
pub struct Model {
    /// The client's user and device.
    pub user: String,
    /// The client's device.
    pub device: String,
    /// Conversations by id.
    pub conversations: BTreeMap<String, Conv>,
    /// The current sync token: Sync and Heartbeat with any other token get every conversation.
    pub token: u64,
    /// Announced in Welcome.
    pub limits: Limits,
    /// Announced in Welcome.
    pub heartbeat_interval_ms: u32,
    /// Announced in Welcome.
    pub store_epoch: u64,
    /// Highest Ack per conversation.
    pub acked: BTreeMap<String, u64>,
    /// client_msg_id → (conversation, seq) of the client's stored sends (dedupe).
    pub sends: HashMap<String, (String, u64)>,
}

impl Model {
    /// A model for `user`/`device` with default limits and no conversations.
    pub fn new(user: &str, device: &str) -> Model {
        Model {
            user: user.into(),
            device: device.into(),
            conversations: BTreeMap::new(),
            token: random_nonzero(),
            limits: Limits::default(),
            heartbeat_interval_ms: 1000,
            store_epoch: random_nonzero(),
            acked: BTreeMap::new(),
            sends: HashMap::new(),
        }
    }

    /// Adds a user message from `sender` (a fresh client_msg_id) at the next seq of `conversation`;
    /// returns it.
    pub fn add(&mut self, conversation: &str, sender: &str, body: &str) -> Message {
        self.append(
            conversation,
            Message {
                sender: sender.into(),
                sender_device: format!("{sender}-dev"),
                client_msg_id: format!("{sender}-{:016x}", rand::random::<u64>()),
                body: body.as_bytes().to_vec().into(),
                ..Default::default()
            },
        )
    }

    /// Stores `message` at the next seq of `conversation` (created in a random epoch if new), stamped
    /// with the server time, and moves the sync token on; returns it as stored.
    pub fn append(&mut self, conversation: &str, mut message: Message) -> Message {
        let conv = self
            .conversations
            .entry(conversation.to_owned())
            .or_insert_with(|| Conv::new(random_nonzero()));
        message.seq = conv.head() + 1;
        message.server_time_ms = ferry_protocol::unix_millis(std::time::SystemTime::now());
        conv.messages.insert(message.seq, message.clone());
        // A change: a new token, so that Sync and Heartbeat from the old one report it.
        self.token = random_nonzero();
        message
    }

    /// client_msg_id → seq of everything the client sent that was stored.
    pub fn stored_sends(&self) -> BTreeMap<String, u64> {
        self.sends
            .iter()
            .map(|(id, (_, seq))| (id.clone(), *seq))
            .collect()
    }

    /// The Welcome for a new session.
    pub fn welcome(&self) -> Welcome {
        Welcome {
            user_id: self.user.clone(),
            session_id: format!("scripted-{:016x}", rand::random::<u64>()),
            node_id: "scripted".into(),
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            limits: Some(self.limits),
            server_time_ms: ferry_protocol::unix_millis(std::time::SystemTime::now()),
            store_epoch: self.store_epoch,
        }
    }

    /// The state of one conversation as the device sees it.
    pub fn state(&self, id: &str) -> Option<ConversationState> {
        let conv = self.conversations.get(id)?;
        Some(ConversationState {
            conversation_id: id.into(),
            kind: ConversationKind::Direct as i32,
            head_seq: conv.head(),
            epoch: conv.epoch,
            acked_seq: self.acked.get(id).copied().unwrap_or(0),
            member: true,
            first_seq: conv.first_seq,
            ..Default::default()
        })
    }

    /// Every conversation's state (what a Sync from an unknown token gets).
    pub fn states(&self) -> Vec<ConversationState> {
        self.conversations
            .keys()
            .filter_map(|id| self.state(id))
            .collect()
    }

    /// The answer to `Pull{after_seq, limit}` in `conversation`.
    pub fn page(&self, conversation: &str, after_seq: u64, limit: u32) -> PullResult {
        let Some(conv) = self.conversations.get(conversation) else {
            return PullResult::default();
        };
        let limit = match limit as usize {
            0 => PAGE,
            n => n.min(PAGE),
        };
        let from = after_seq.max(conv.first_seq.saturating_sub(1));
        let messages: Vec<Message> = conv
            .messages
            .range(from + 1..)
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect();
        let last = messages.last().map_or(from, |m| m.seq);
        PullResult {
            has_more: last < conv.head(),
            head_seq: conv.head(),
            epoch: conv.epoch,
            messages,
        }
    }
}

/// The scripted server: one QUIC endpoint on a free loopback port with a certificate of its own.
pub struct ScriptedServer {
    endpoint: quinn::Endpoint,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA file the client must trust.
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl ScriptedServer {
    /// Starts on a free loopback port; `quic_idle` is the QUIC idle timeout it advertises.
    pub fn start(quic_idle: Duration) -> Result<ScriptedServer, Verdict> {
        let setup = |what: &str, e: &dyn std::fmt::Display| {
            Verdict::Fail(format!("scripted server {what}: {e}"))
        };
        let dir = tempfile::tempdir().map_err(|e| setup("temp dir", &e))?;
        let files = ferry_server::tls::ensure_self_signed(dir.path())
            .map_err(|e| setup("certificate", &e))?;
        let (certs, key) = ferry_server::tls::load_certs_and_key(&files.cert, &files.key)
            .map_err(|e| setup("certificate", &e))?;
        let config =
            ferry_server::tls::server_config(certs, key, ferry_protocol::ALPN, quic_idle, 128)
                .map_err(|e| setup("config", &e))?;
        let endpoint =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("literal address"))
                .map_err(|e| setup("socket", &e))?;
        Ok(ScriptedServer {
            addr: endpoint
                .local_addr()
                .map_err(|e| setup("local address", &e))?,
            endpoint,
            ca: files.cert,
            _dir: dir,
        })
    }

    /// The client's next connection, waiting at most `within`. The client exiting first is Unsupported
    /// (status 127) or a failure.
    pub async fn accept(&self, client: &mut ClientRun, within: Duration) -> Result<Conn, Verdict> {
        tokio::select! {
            conn = self.accept_within(within) => match conn {
                Some(conn) => Ok(conn),
                None => fail!("the client did not connect within {} s; stderr: {}", within.as_secs(), client.stderr_tail()),
            },
            status = client.child.wait() => {
                let code = status.ok().and_then(|s| s.code());
                if code == Some(super::UNSUPPORTED_EXIT) {
                    crate::unsupported!("the client does not support this case (exit 127)");
                }
                fail!("the client exited ({code:?}) without connecting; stderr: {}", client.stderr_tail());
            }
        }
    }

    /// The next connection that completes its QUIC set-up within `within`, if any.
    pub async fn accept_within(&self, within: Duration) -> Option<Conn> {
        let deadline = Instant::now() + within;
        loop {
            let incoming = tokio::time::timeout_at(deadline, self.endpoint.accept())
                .await
                .ok()??;
            // A connection attempt that fails (a client giving up mid-handshake) is not a connection.
            if let Ok(connecting) = incoming.accept() {
                if let Some(conn) = accepted(connecting).await {
                    return Some(conn);
                }
            }
        }
    }
}

/// Wraps an accepted connection. As 0.5-RTT, so that frames the client sends in early data are seen at
/// once, before the handshake completes.
async fn accepted(connecting: quinn::Connecting) -> Option<Conn> {
    match connecting.into_0rtt() {
        Ok((connection, _)) => Some(Conn::new(connection)),
        // quinn documents that servers always convert; should that change, wait for the handshake.
        Err(connecting) => connecting.await.ok().map(Conn::new),
    }
}

/// One scripted connection.
pub struct Conn {
    /// The QUIC connection.
    pub connection: quinn::Connection,
    events: mpsc::Receiver<Incoming>,
    tx: mpsc::Sender<Incoming>,
    pending: VecDeque<Event>,
    sends: HashMap<usize, quinn::SendStream>,
    conversations: HashMap<usize, String>,
    next_stream: Arc<AtomicUsize>,
    welcomed: bool,
    /// Every event that arrived before Welcome was sent, in order.
    pub before_welcome: Vec<Event>,
}

impl Conn {
    fn new(connection: quinn::Connection) -> Conn {
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let next_stream = Arc::new(AtomicUsize::new(0));
        tokio::spawn(read_connection(
            connection.clone(),
            tx.clone(),
            next_stream.clone(),
        ));
        Conn {
            connection,
            events,
            tx,
            pending: VecDeque::new(),
            sends: HashMap::new(),
            conversations: HashMap::new(),
            next_stream,
            welcomed: false,
            before_welcome: Vec::new(),
        }
    }

    /// The next event, or None if nothing arrived within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Event> {
        if let Some(event) = self.pending.pop_front() {
            return Some(event);
        }
        let deadline = Instant::now() + within;
        loop {
            let incoming = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(incoming)) => incoming,
                Ok(None) => return Some(Event::Closed("reader ended".into())),
                Err(_) => return None,
            };
            match incoming {
                Incoming::NewStream(index, send) => {
                    self.sends.insert(index, send);
                }
                Incoming::Event(event) => {
                    if let Event::Stream(i, f) = &event {
                        if let Some(Kind::Open(open)) = &f.kind {
                            self.conversations.insert(*i, open.conversation_id.clone());
                        }
                    }
                    if !self.welcomed {
                        self.before_welcome.push(event.clone());
                    }
                    return Some(event);
                }
            }
        }
    }

    /// The conversation a stream was opened for.
    pub fn conversation_of(&self, stream: usize) -> Option<&str> {
        self.conversations.get(&stream).map(String::as_str)
    }

    /// Expects `Hello` as the client's first frame, then keeps collecting for `hold` (so that whatever
    /// the client sends before Welcome is seen), then sends `welcome`. The collected events are returned
    /// by later [`Conn::next`] calls.
    pub async fn greet(&mut self, welcome: Welcome, hold: Duration) -> Result<Hello, Verdict> {
        let hello = match self.next(Duration::from_secs(10)).await {
            Some(Event::Control(Frame {
                kind: Some(Kind::Hello(hello)),
            })) => hello,
            Some(other) => fail!(
                "the client's first frame was {} instead of Hello on its first stream (FERRY-CONN-1)",
                other.describe()
            ),
            None => fail!("no Hello within 10 s"),
        };
        let until = Instant::now() + hold;
        let mut held = Vec::new();
        while let Some(event) = self
            .next(until.saturating_duration_since(Instant::now()))
            .await
        {
            held.push(event);
        }
        self.pending.extend(held);
        self.send_control(frame(Kind::Welcome(welcome))).await?;
        self.welcomed = true;
        Ok(hello)
    }

    /// Fails if anything other than the early-data frames of FERRY-ZERORTT-1 arrived before Welcome, or a
    /// datagram did (FERRY-HELLO-5, FERRY-DGRAM-5).
    pub fn check_before_welcome(&self) -> Result<(), Verdict> {
        for event in &self.before_welcome {
            let allowed = match event {
                Event::Control(f) => matches!(
                    f.kind,
                    Some(Kind::Hello(_) | Kind::Heartbeat(_) | Kind::Sync(_))
                ),
                Event::Stream(_, f) => {
                    matches!(f.kind, Some(Kind::Open(_) | Kind::Pull(_) | Kind::Send(_)))
                }
                Event::Datagram(_) => false,
                Event::StreamEnded(_) | Event::Closed(_) => true,
            };
            ensure!(
                allowed,
                "the client sent {} before it received Welcome (FERRY-HELLO-5, FERRY-DGRAM-5: only Hello, Heartbeat, Sync, Open, Pull, Send may come before Welcome, no datagrams)",
                event.describe()
            );
        }
        Ok(())
    }

    /// Writes a frame on the control stream.
    pub async fn send_control(&mut self, f: Frame) -> Result<(), Verdict> {
        self.send_on(CONTROL, f).await
    }

    /// Writes a frame on stream `stream`.
    pub async fn send_on(&mut self, stream: usize, f: Frame) -> Result<(), Verdict> {
        // The stream's send half arrives through the same queue as its first frame; it is there by now.
        let send = match self.sends.get_mut(&stream) {
            Some(send) => send,
            None => fail!("no stream {stream} to write to"),
        };
        send.write_all(&codec::encode(&f))
            .await
            .map_err(|e| Verdict::Fail(format!("writing to the client: {e}")))
    }

    /// A stream for `conversation`: one the client opened, else a new one the server opens with `Open`.
    pub async fn stream_for(&mut self, conversation: &str) -> Result<usize, Verdict> {
        let open = self
            .conversations
            .iter()
            .filter(|(i, c)| c.as_str() == conversation && self.sends.contains_key(i))
            .map(|(i, _)| *i)
            .min();
        if let Some(index) = open {
            return Ok(index);
        }
        let (send, recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| Verdict::Fail(format!("opening a stream to the client: {e}")))?;
        let index = self.next_stream.fetch_add(1, Ordering::SeqCst);
        self.sends.insert(index, send);
        self.conversations.insert(index, conversation.to_owned());
        // Frames the client writes back on a server-opened stream go through the connection's queue.
        tokio::spawn(read_stream(index, recv, self.tx.clone()));
        self.send_on(
            index,
            frame(Kind::Open(Open {
                conversation_id: conversation.to_owned(),
            })),
        )
        .await?;
        Ok(index)
    }

    /// Delivers message `seq` of `conversation` from the model.
    pub async fn deliver(
        &mut self,
        model: &Model,
        conversation: &str,
        seq: u64,
    ) -> Result<(), Verdict> {
        let conv = match model.conversations.get(conversation) {
            Some(conv) => conv,
            None => fail!("scripted model has no conversation {conversation}"),
        };
        let message = match conv.messages.get(&seq) {
            Some(m) => m.clone(),
            None => fail!("scripted model has no seq {seq} in {conversation}"),
        };
        let stream = self.stream_for(conversation).await?;
        self.send_on(
            stream,
            frame(Kind::Deliver(Deliver {
                message: Some(message),
                epoch: conv.epoch,
            })),
        )
        .await
    }

    /// Sends a datagram.
    pub fn datagram(&self, payload: Bytes) -> Result<(), Verdict> {
        self.connection
            .send_datagram(payload)
            .map_err(|e| Verdict::Fail(format!("sending a datagram: {e}")))
    }

    /// GoAway(code) on the control stream, then closes the connection with the same code.
    pub async fn go_away(&mut self, code: ErrorCode) -> Result<(), Verdict> {
        self.send_control(frames::go_away(code, "scripted")).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.connection.close(codes::to_varint(code), b"scripted");
        Ok(())
    }

    /// Answers `event` as a server following the spec would, from `model`: Sync and Heartbeat (every
    /// conversation unless the client's token is the model's), Pull, Send (stored and acked, deduped),
    /// Ack (recorded). Everything else is left unanswered.
    pub async fn serve(&mut self, model: &mut Model, event: &Event) -> Result<(), Verdict> {
        match event {
            Event::Control(f) => match &f.kind {
                Some(Kind::Sync(sync)) => {
                    let changed = if sync.since_token == model.token {
                        Vec::new()
                    } else {
                        model.states()
                    };
                    self.send_control(frame(Kind::SyncResult(SyncResult {
                        request_id: sync.request_id,
                        conversations: changed,
                        next_token: model.token,
                        has_more: false,
                    })))
                    .await
                }
                Some(Kind::Heartbeat(hb)) => {
                    let changed = if hb.sync_token == model.token {
                        Vec::new()
                    } else {
                        model.states()
                    };
                    self.send_control(frame(Kind::HeartbeatAck(HeartbeatAck {
                        changed,
                        sync_token: model.token,
                        has_more: false,
                        server_time_ms: ferry_protocol::unix_millis(std::time::SystemTime::now()),
                    })))
                    .await
                }
                _ => Ok(()),
            },
            Event::Stream(i, f) => {
                let Some(conversation) = self.conversation_of(*i).map(str::to_owned) else {
                    return Ok(());
                };
                match &f.kind {
                    Some(Kind::Pull(pull)) => {
                        let page = model.page(&conversation, pull.after_seq, pull.limit);
                        self.send_on(*i, frame(Kind::PullResult(page))).await
                    }
                    Some(Kind::Send(send)) => {
                        let ack = store_send(model, &conversation, send);
                        self.send_on(*i, frame(Kind::SendAck(ack))).await
                    }
                    Some(Kind::Ack(ack)) => {
                        let entry = model.acked.entry(conversation).or_default();
                        *entry = (*entry).max(ack.seq);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Answers a Send on `stream` with `Error{code, client_msg_id}`.
    pub async fn refuse_send(
        &mut self,
        stream: usize,
        client_msg_id: &str,
        code: ErrorCode,
        retry_after_ms: u64,
    ) -> Result<(), Verdict> {
        let refusal = frames::send_error(
            client_msg_id.to_owned(),
            code,
            "scripted refusal",
            retry_after_ms,
        );
        self.send_on(stream, refusal).await
    }
}

/// Stores a Send in the model (once per client_msg_id) and returns its SendAck.
pub fn store_send(
    model: &mut Model,
    conversation: &str,
    send: &ferry_protocol::frame::Send,
) -> SendAck {
    if let Some((_, seq)) = model.sends.get(&send.client_msg_id) {
        return SendAck {
            client_msg_id: send.client_msg_id.clone(),
            seq: *seq,
            server_time_ms: ferry_protocol::unix_millis(std::time::SystemTime::now()),
            duplicate: true,
        };
    }
    let stored = model.append(
        conversation,
        Message {
            sender: model.user.clone(),
            sender_device: model.device.clone(),
            client_msg_id: send.client_msg_id.clone(),
            body: send.body.clone(),
            ..Default::default()
        },
    );
    model.sends.insert(
        send.client_msg_id.clone(),
        (conversation.to_owned(), stored.seq),
    );
    SendAck {
        client_msg_id: stored.client_msg_id,
        seq: stored.seq,
        server_time_ms: stored.server_time_ms,
        duplicate: false,
    }
}

/// A random non-zero value for epochs and tokens (never 0 on the wire, FERRY-MSG-7).
pub fn random_nonzero() -> u64 {
    1 + rand::random::<u32>() as u64
}

/// Accepts the client's streams (the first is the control stream) and datagrams, and queues them.
async fn read_connection(
    connection: quinn::Connection,
    tx: mpsc::Sender<Incoming>,
    next_stream: Arc<AtomicUsize>,
) {
    // A peer without datagram support makes read_datagram fail at once: stop polling it then.
    let mut datagrams = true;
    loop {
        tokio::select! {
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let index = next_stream.fetch_add(1, Ordering::SeqCst);
                    if tx.send(Incoming::NewStream(index, send)).await.is_err() {
                        return;
                    }
                    tokio::spawn(read_stream(index, recv, tx.clone()));
                }
                Err(e) => {
                    let _ = tx.send(Incoming::Event(Event::Closed(e.to_string()))).await;
                    return;
                }
            },
            datagram = connection.read_datagram(), if datagrams => match datagram {
                Ok(payload) => {
                    if let Ok(f) = codec::decode_datagram(&payload, MAX_FRAME) {
                        if tx.send(Incoming::Event(Event::Datagram(f))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(_) => datagrams = false, // a close is reported by the accept_bi branch
            },
        }
    }
}

/// Queues every frame of one stream, then its end.
async fn read_stream(index: usize, recv: quinn::RecvStream, tx: mpsc::Sender<Incoming>) {
    let mut reader = FrameReader::new(recv, MAX_FRAME);
    while let Ok(Some(f)) = reader.next().await {
        let event = if index == CONTROL {
            Event::Control(f)
        } else {
            Event::Stream(index, f)
        };
        if tx.send(Incoming::Event(event)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Incoming::Event(Event::StreamEnded(index))).await;
}

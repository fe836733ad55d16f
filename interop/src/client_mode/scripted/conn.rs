//! One scripted connection: the client's events in order, the streams to answer on, Welcome held or
//! given, and the default answers from the [`Model`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Deliver, HeartbeatAck, Hello, Open, SyncResult, Welcome};
use ferry_protocol::frames::{self};
use ferry_protocol::{ErrorCode, Frame};
use ferry_quic::codes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::model::{store_send, Model};
use super::{read_connection, read_stream, Event, Incoming, CONTROL, EVENT_QUEUE};
use crate::runner::Verdict;
use crate::{ensure, fail};

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
    pub(super) fn new(connection: quinn::Connection) -> Conn {
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
        // Hello must be the first frame of the control stream (FERRY-CONN-1); frames of conversation
        // streams may be read before it, since streams are not ordered against each other (a client
        // may send its first Pulls in Hello's flight, FERRY-HELLO-5). They are kept for later.
        let mut held = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        let hello = loop {
            match self.next(until.saturating_duration_since(Instant::now())).await {
                Some(Event::Control(Frame {
                    kind: Some(Kind::Hello(hello)),
                })) => break hello,
                Some(event @ (Event::Stream(..) | Event::StreamEnded(_))) => held.push(event),
                Some(other) => fail!(
                    "the client's first frame was {} instead of Hello on its first stream (FERRY-CONN-1)",
                    other.describe()
                ),
                None => fail!("no Hello within 10 s"),
            }
        };
        let until = Instant::now() + hold;
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

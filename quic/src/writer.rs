//! The one frame writer: a task per [`quinn::SendStream`] fed by a bounded queue. Every frame queued
//! since the task's last wake-up is encoded into one reused buffer and written with one write (many
//! frames share a QUIC packet; no flush per frame — DESIGN.md, performance), up to [`MAX_WRITE_BYTES`]
//! per write.
//!
//! The handles ([`FrameWriter`], cloneable) decide the stream's end:
//! - the last handle dropped: what is queued is written, then the stream is finished;
//! - [`FrameWriter::reset`]: what is queued is handed to quinn, then the stream is reset with a code;
//! - [`FrameWriter::try_close_connection`]: what is queued is written, the stream finished, the peer
//!   given a moment to read it, then the whole connection is closed with a code (a GoAway queued before
//!   it arrives before the close, FERRY-AUTH-8);
//! - [`FrameWriter::abandon`]: the stream died with a rejected 0-RTT and is never finished (see there).
//!
//! Slow readers (FERRY-HARDEN-4): a producer that must not wait on its peer uses
//! [`FrameWriter::try_send_encoded_or_reset`]; when it finds the queue full, the peer has not read a whole queue
//! plus QUIC's send window, so the task resets the stream with STREAM_CLOSED at once (even while blocked
//! in a write) and the queued frames are freed.
//! What one stream can pin is therefore bounded by its queue capacity plus the send window, and the
//! producer (e.g. the fan-out of one message to many users) never waits on one slow peer.
//!
//! A writer can exist before its stream ([`FrameWriter::pending`]): frames queue up while the stream is
//! being opened and are written once [`PendingStream::attach`] hands it over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_protocol::{codec, ErrorCode, Frame};
use tokio::sync::{mpsc, Notify};

use crate::codes;

/// Most bytes gathered into one write before it is issued (a single larger frame is written whole).
pub const MAX_WRITE_BYTES: usize = 64 * 1024;

/// How long a closing writer waits for the peer to read the last frames.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What the writer task is asked to do.
// A frame is boxed: a tokio queue allocates its slots 32 at a time, whatever its capacity, so an unboxed
// 216-byte `Frame` made every idle stream's queue cost ~7 KiB (issue 17: RSS per idle connection).
// Fan-out, the hot path, queues `Encoded` bytes and allocates nothing here.
#[derive(Debug)]
enum Command {
    Frame(Box<Frame>),
    Encoded(Bytes),
    Reset(ErrorCode),
    Close {
        code: ErrorCode,
        reason: &'static str,
        connection: quinn::Connection,
    },
}

/// The writer task is gone: the stream was reset, stopped by the peer, or its connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream's writer has ended")]
pub struct WriterClosed;

/// Why a frame could not be queued without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    /// The queue is full: the peer reads slower than frames are produced.
    #[error("the stream's queue is full")]
    Full,
    /// The writer task is gone (see [`WriterClosed`]).
    #[error("the stream's writer has ended")]
    Closed,
}

impl<T> From<mpsc::error::TrySendError<T>> for TrySendError {
    fn from(e: mpsc::error::TrySendError<T>) -> Self {
        match e {
            mpsc::error::TrySendError::Full(_) => TrySendError::Full,
            mpsc::error::TrySendError::Closed(_) => TrySendError::Closed,
        }
    }
}

/// A handle queueing frames for one stream's writer task. Clones share the queue; the stream is finished
/// when the last one is dropped.
#[derive(Debug, Clone)]
pub struct FrameWriter {
    tx: mpsc::Sender<Command>,
    abandoned: Arc<AtomicBool>,
    overflow: Arc<Notify>,
}

/// The task side of a writer whose stream is still being opened.
#[derive(Debug)]
pub struct PendingStream {
    rx: mpsc::Receiver<Command>,
    abandoned: Arc<AtomicBool>,
    overflow: Arc<Notify>,
}

impl PendingStream {
    /// The stream is open: spawns the writer task, which first writes what was queued meanwhile.
    pub fn attach(self, send: quinn::SendStream) {
        self.attach_sink(Sink::Quic(send));
    }

    /// Like [`PendingStream::attach`], for an in-memory stream (see [`crate::memory`]).
    #[cfg(feature = "fuzzing")]
    pub fn attach_memory(self, send: crate::memory::MemorySend) {
        self.attach_sink(Sink::Memory(send));
    }

    fn attach_sink(self, send: Sink) {
        tokio::spawn(write_loop(send, self.rx, self.abandoned, self.overflow));
    }
}

/// The stream a writer task writes to: QUIC, or (feature `fuzzing`) in memory. Errors of `reset` and
/// `finish` are ignored by every caller (the stream already ended), so they return nothing.
#[derive(Debug)]
enum Sink {
    Quic(quinn::SendStream),
    #[cfg(feature = "fuzzing")]
    Memory(crate::memory::MemorySend),
}

impl Sink {
    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), quinn::WriteError> {
        match self {
            Sink::Quic(send) => send.write_all(bytes).await,
            #[cfg(feature = "fuzzing")]
            Sink::Memory(send) => send.write_all(bytes).await,
        }
    }

    fn reset(&mut self, code: quinn::VarInt) {
        match self {
            Sink::Quic(send) => {
                let _ = send.reset(code);
            }
            #[cfg(feature = "fuzzing")]
            Sink::Memory(send) => {
                let _ = send.reset(code);
            }
        }
    }

    fn finish(&mut self) {
        match self {
            Sink::Quic(send) => {
                let _ = send.finish();
            }
            #[cfg(feature = "fuzzing")]
            Sink::Memory(send) => {
                let _ = send.finish();
            }
        }
    }

    /// Resolves once the peer stopped the stream or has everything it was sent.
    async fn stopped(&self) {
        match self {
            Sink::Quic(send) => {
                let _ = send.stopped().await;
            }
            #[cfg(feature = "fuzzing")]
            Sink::Memory(send) => {
                send.stopped().await;
            }
        }
    }
}

/// A slot reserved in a writer's queue: sending through it cannot fail for lack of space.
#[derive(Debug)]
pub struct Permit<'a>(mpsc::Permit<'a, Command>);

impl Permit<'_> {
    /// Queues a frame.
    pub fn send(self, frame: Frame) {
        self.0.send(Command::Frame(Box::new(frame)));
    }

    /// Queues bytes that are already whole encoded frames.
    pub fn send_encoded(self, bytes: Bytes) {
        self.0.send(Command::Encoded(bytes));
    }
}

impl FrameWriter {
    /// Spawns the writer task for `send`, with a queue of `capacity` frames (at least 1).
    pub fn spawn(send: quinn::SendStream, capacity: usize) -> FrameWriter {
        let (writer, pending) = FrameWriter::pending(capacity);
        pending.attach(send);
        writer
    }

    /// Spawns the writer task for an in-memory stream (see [`crate::memory`]).
    #[cfg(feature = "fuzzing")]
    pub fn spawn_memory(send: crate::memory::MemorySend, capacity: usize) -> FrameWriter {
        let (writer, pending) = FrameWriter::pending(capacity);
        pending.attach_memory(send);
        writer
    }

    /// A writer whose stream does not exist yet; frames queue until [`PendingStream::attach`].
    pub fn pending(capacity: usize) -> (FrameWriter, PendingStream) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let abandoned = Arc::new(AtomicBool::new(false));
        let overflow = Arc::new(Notify::new());
        let writer = FrameWriter {
            tx,
            abandoned: abandoned.clone(),
            overflow: overflow.clone(),
        };
        let pending = PendingStream {
            rx,
            abandoned,
            overflow,
        };
        (writer, pending)
    }

    /// Queues a frame, waiting while the queue is full.
    pub async fn send(&self, frame: Frame) -> Result<(), WriterClosed> {
        self.tx
            .send(Command::Frame(Box::new(frame)))
            .await
            .map_err(|_| WriterClosed)
    }

    /// Queues a frame if there is room now.
    pub fn try_send(&self, frame: Frame) -> Result<(), TrySendError> {
        Ok(self.tx.try_send(Command::Frame(Box::new(frame)))?)
    }

    /// Queues whole encoded frames (e.g. a Deliver encoded once and shared by every recipient), waiting
    /// while the queue is full. The bytes must be complete `varint(L) || B` frames: the writer does not
    /// look inside, and half a frame would corrupt the stream for the peer.
    pub async fn send_encoded(&self, bytes: Bytes) -> Result<(), WriterClosed> {
        self.tx
            .send(Command::Encoded(bytes))
            .await
            .map_err(|_| WriterClosed)
    }

    /// Queues whole encoded frames if there is room now (see [`FrameWriter::send_encoded`]).
    pub fn try_send_encoded(&self, bytes: Bytes) -> Result<(), TrySendError> {
        Ok(self.tx.try_send(Command::Encoded(bytes))?)
    }

    /// Queues whole encoded frames if there is room now; a full queue means the peer is a slow reader,
    /// and the stream is reset with STREAM_CLOSED at once (see the module docs), so a peer that never
    /// reads pins a bounded amount of memory.
    pub fn try_send_encoded_or_reset(&self, bytes: Bytes) -> Result<(), TrySendError> {
        let result = self.try_send_encoded(bytes);
        if result == Err(TrySendError::Full) {
            // notify_one keeps a permit when the task is not waiting yet, so it cannot be missed.
            self.overflow.notify_one();
        }
        result
    }

    /// Reserves a slot in the queue, for callers that must know there is room before they give up a
    /// buffer.
    pub fn try_reserve(&self) -> Result<Permit<'_>, TrySendError> {
        self.tx.try_reserve().map(Permit).map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => TrySendError::Full,
            mpsc::error::TrySendError::Closed(()) => TrySendError::Closed,
        })
    }

    /// Resets the stream with `code` after the frames queued before this call; later frames are refused.
    pub async fn reset(&self, code: ErrorCode) -> Result<(), WriterClosed> {
        self.tx
            .send(Command::Reset(code))
            .await
            .map_err(|_| WriterClosed)
    }

    /// After the frames queued before this call: finishes the stream, lingers up to a second for the
    /// peer to read them (or to leave), then closes `connection` with `code` and `reason`.
    pub fn try_close_connection(
        &self,
        code: ErrorCode,
        reason: &'static str,
        connection: quinn::Connection,
    ) -> Result<(), TrySendError> {
        let close = Command::Close {
            code,
            reason,
            connection,
        };
        Ok(self.tx.try_send(close)?)
    }

    /// Marks the stream as lost to a rejected 0-RTT: when the last handle drops, the task must not
    /// finish it. quinn reuses the ids of such streams for the streams opened after the rejection, and
    /// its `finish` (unlike `write` and `reset`) does not check for the rejection, so finishing the dead
    /// stream would finish the new stream with the same id (the server would then see a replayed control
    /// stream end before Hello).
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    /// The writer task has ended; nothing queued now would be written.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Both handles feed the same stream.
    pub fn same_stream(&self, other: &FrameWriter) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

/// What gathering a batch ended with, besides the bytes in the buffer.
#[derive(Debug)]
enum Then {
    /// Write the buffer and wait for more.
    Write,
    /// Write the buffer, then reset.
    Reset(ErrorCode),
    /// Write the buffer, then finish, linger and close the connection.
    Close {
        code: ErrorCode,
        reason: &'static str,
        connection: quinn::Connection,
    },
}

/// Encodes `first` and whatever else is queued right now into `buf`, until the queue is empty, the
/// buffer holds [`MAX_WRITE_BYTES`], or a command that ends the stream comes up.
fn gather(first: Command, rx: &mut mpsc::Receiver<Command>, buf: &mut BytesMut) -> Then {
    let mut next = Some(first);
    while let Some(command) = next.take() {
        match command {
            Command::Frame(frame) => codec::encode_into(&frame, buf),
            Command::Encoded(bytes) => buf.extend_from_slice(&bytes),
            Command::Reset(code) => return Then::Reset(code),
            Command::Close {
                code,
                reason,
                connection,
            } => {
                return Then::Close {
                    code,
                    reason,
                    connection,
                }
            }
        }
        if buf.len() < MAX_WRITE_BYTES {
            next = rx.try_recv().ok();
        }
    }
    Then::Write
}

async fn write_loop(
    mut send: Sink,
    mut rx: mpsc::Receiver<Command>,
    abandoned: Arc<AtomicBool>,
    overflow: Arc<Notify>,
) {
    // The buffer starts empty and grows to what the stream's batches need: an idle connection's control
    // stream then holds a few hundred bytes instead of a preallocated 16 KiB (the largest item of an idle
    // connection's memory, measured with heaptrack).
    let mut buf = BytesMut::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = overflow.notified() => break reset_slow_reader(&mut send),
            first = rx.recv() => match first {
                Some(first) => first,
                None => break finish_unless_abandoned(&mut send, &abandoned),
            },
        };
        let then = gather(first, &mut rx, &mut buf);
        // One write per batch: quinn copies the bytes into its send buffer, so ours is reused at once.
        if !buf.is_empty() {
            let written = tokio::select! {
                biased;
                _ = overflow.notified() => break reset_slow_reader(&mut send),
                written = send.write_all(&buf) => written,
            };
            if written.is_err() {
                return; // the peer stopped the stream, or the connection is gone: the reader reports it
            }
        }
        buf.clear();
        if buf.capacity() > 4 * MAX_WRITE_BYTES {
            buf = BytesMut::new(); // don't keep a large frame's worth of memory on an idle stream
        }
        match then {
            Then::Write => {}
            Then::Reset(code) => {
                send.reset(codes::to_varint(code));
                return;
            }
            Then::Close {
                code,
                reason,
                connection,
            } => {
                send.finish();
                // `stopped` resolves once the peer's QUIC stack acknowledged the data, but a close
                // discards what its application has not read yet: linger a little more, or until the
                // peer leaves on its own.
                let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
                let _ = tokio::time::timeout(CLOSE_LINGER, connection.closed()).await;
                connection.close(codes::to_varint(code), reason.as_bytes());
                return;
            }
        }
    }
}

/// The queue overflowed: reset at once; returning drops the queue and the frames in it.
fn reset_slow_reader(send: &mut Sink) {
    send.reset(codes::to_varint(ErrorCode::STREAM_CLOSED));
}

/// Every handle is gone: finish the stream (unless a rejected 0-RTT lost it, see `abandon`).
fn finish_unless_abandoned(send: &mut Sink, abandoned: &AtomicBool) {
    if !abandoned.load(Ordering::Relaxed) {
        send.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::codec::frame;
    use ferry_protocol::frame::{frame::Kind, Ack, Send};

    fn ack(seq: u64) -> Frame {
        frame(Kind::Ack(Ack { seq }))
    }

    #[test]
    fn everything_queued_since_the_wake_up_goes_into_one_buffer() {
        let (tx, mut rx) = mpsc::channel(1000);
        for seq in 1..1000 {
            tx.try_send(Command::Frame(Box::new(ack(seq)))).unwrap();
        }
        let shared = codec::encode(&ack(1000));
        tx.try_send(Command::Encoded(shared)).unwrap();
        let mut buf = BytesMut::new();
        assert!(matches!(
            gather(Command::Frame(Box::new(ack(0))), &mut rx, &mut buf),
            Then::Write
        ));
        let frames = codec::decode_all(&buf, codec::DEFAULT_MAX_FRAME_SIZE).unwrap();
        assert_eq!(frames, (0..=1000).map(ack).collect::<Vec<_>>());
        assert!(rx.try_recv().is_err(), "the queue was drained");
    }

    #[test]
    fn a_batch_stops_at_the_write_cap_and_at_a_reset() {
        let (tx, mut rx) = mpsc::channel(100);
        let big = || {
            Command::Frame(Box::new(frame(Kind::Send(Send {
                client_msg_id: "m".into(),
                body: Bytes::from(vec![7u8; 20 * 1024]),
            }))))
        };
        for _ in 0..9 {
            tx.try_send(big()).unwrap();
        }
        let mut buf = BytesMut::new();
        gather(big(), &mut rx, &mut buf);
        let first = codec::decode_all(&buf, codec::DEFAULT_MAX_FRAME_SIZE).unwrap();
        assert_eq!(first.len(), 4, "20 KiB frames: the fourth crosses 64 KiB");
        assert!(buf.len() >= MAX_WRITE_BYTES);

        let (tx, mut rx) = mpsc::channel(100);
        tx.try_send(Command::Frame(Box::new(ack(1)))).unwrap();
        tx.try_send(Command::Reset(ErrorCode::STREAM_CLOSED))
            .unwrap();
        tx.try_send(Command::Frame(Box::new(ack(2)))).unwrap();
        let mut buf = BytesMut::new();
        let then = gather(Command::Frame(Box::new(ack(0))), &mut rx, &mut buf);
        let before = codec::decode_all(&buf, codec::DEFAULT_MAX_FRAME_SIZE).unwrap();
        assert_eq!(
            before,
            vec![ack(0), ack(1)],
            "the frames queued before the reset"
        );
        assert!(matches!(then, Then::Reset(ErrorCode::STREAM_CLOSED)));
    }
}

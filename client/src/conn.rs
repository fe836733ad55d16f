//! The I/O side of one QUIC connection: dialling (with 0-RTT when a session ticket exists), and the small
//! tasks that move frames between quinn streams and the driver. They do no protocol logic: readers
//! (`ferry_quic::FrameReader`) decode frames and forward them over the bounded inbound channel; writers
//! (`ferry_quic::FrameWriter`) write whatever the driver batched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::frame::frame::Kind;
use ferry_protocol::{codec, ErrorCode, Frame};
use ferry_quic::{codes, FrameReader, FrameWriter, PendingStream, ReadError, TrySendError};
use tokio::sync::mpsc;

/// Batches (one per driver pass) waiting for one stream's writer task. The frames of a stream are bounded
/// by the protocol (at most `max_inflight_sends` Sends, one Ack and a few Pulls), and so are the passes
/// that push them; a full queue means the server stopped reading, and the batch waits in the
/// [`StreamWriter`] for the next pass.
const STREAM_QUEUE: usize = 1024;

/// Which stream a frame came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamRef {
    /// The control stream.
    Control,
    /// A conversation stream; `serial` tells streams of the same conversation apart.
    Conv { serial: u64, conversation: String },
}

/// What the connection tasks report to the driver. `gen` identifies the session; reports of older
/// sessions are ignored.
pub(crate) enum Inbound {
    Established {
        gen: u64,
        result: Result<Established, String>,
    },
    ZeroRtt {
        gen: u64,
        accepted: bool,
    },
    Frame {
        gen: u64,
        stream: StreamRef,
        frame: Frame,
    },
    /// A stream ended (finished, reset, or a decode error).
    StreamEnded {
        gen: u64,
        stream: StreamRef,
        reason: String,
        /// The code the server reset the stream (or closed the connection) with, if any: authoritative
        /// even when the `Error` frame before it was discarded (FERRY-FRAME-13).
        code: Option<ErrorCode>,
    },
    /// The server opened a conversation stream; here is its sending side.
    Accepted {
        gen: u64,
        serial: u64,
        conversation: String,
        send: quinn::SendStream,
    },
    Datagram {
        gen: u64,
        frame: Frame,
    },
    ConnectionLost {
        gen: u64,
        error: quinn::ConnectionError,
    },
    /// A probe found the server's port closed (`link::probe`).
    PortClosed {
        gen: u64,
    },
    TokenRefreshed {
        result: Result<String, String>,
    },
}

/// What the driver shares with a connection's long-lived tasks (they outlive a session restarted on the
/// same connection after a rejected 0-RTT).
#[derive(Debug)]
pub(crate) struct ConnShared {
    /// The session generation the tasks report under.
    pub gen: AtomicU64,
    /// The client's maximum frame size for received datagrams and stream frames: the value announced in
    /// `Welcome`, the default before it (FERRY-FRAME-4).
    pub max_frame_size: AtomicUsize,
}

impl ConnShared {
    pub fn new(gen: u64) -> Arc<Self> {
        Arc::new(ConnShared {
            gen: AtomicU64::new(gen),
            max_frame_size: AtomicUsize::new(codec::DEFAULT_MAX_FRAME_SIZE),
        })
    }
}

/// Decodes a received datagram payload, or `None` to discard it: a payload above the maximum frame size
/// (FERRY-DGRAM-2, checked before any decoding) or one that does not decode (FERRY-DGRAM-3).
pub(crate) fn decode_datagram(payload: &[u8], max_frame_size: usize) -> Option<Frame> {
    if payload.len() > max_frame_size {
        return None;
    }
    codec::decode_datagram(payload, max_frame_size).ok()
}

/// A connection with its control stream open.
pub(crate) struct Established {
    pub conn: quinn::Connection,
    pub remote: SocketAddr,
    pub control: (quinn::SendStream, quinn::RecvStream),
    /// Early data is in use (the verdict comes as [`Inbound::ZeroRtt`]).
    pub early: bool,
}

/// Dials `remote`, using 0-RTT if the TLS session cache allows, and opens the control stream.
pub(crate) async fn dial(
    endpoint: quinn::Endpoint,
    remote: SocketAddr,
    server_name: String,
    gen: u64,
    timeout: Duration,
    tx: mpsc::Sender<Inbound>,
) {
    let attempt = async {
        let connecting = endpoint
            .connect(remote, &server_name)
            .map_err(|e| e.to_string())?;
        let (conn, early) = match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let accepted = accepted.await;
                    let _ = tx.send(Inbound::ZeroRtt { gen, accepted }).await;
                });
                (conn, true)
            }
            Err(connecting) => (connecting.await.map_err(|e| e.to_string())?, false),
        };
        let control = conn.open_bi().await.map_err(|e| e.to_string())?;
        Ok(Established {
            conn,
            remote,
            control,
            early,
        })
    };
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("connecting to {remote} timed out")),
    };
    let _ = tx.send(Inbound::Established { gen, result }).await;
}

/// The driver's side of a stream's send half: frames are encoded into a staging buffer as the driver
/// pushes them, and each [`StreamWriter::flush`] hands the batch to the stream's `FrameWriter` task,
/// which writes it with one write (batched writes, no flush per frame).
pub(crate) struct StreamWriter {
    writer: FrameWriter,
    staged: BytesMut,
    /// Serial of the stream (conversation streams), to match [`Inbound::StreamEnded`].
    pub serial: u64,
}

impl StreamWriter {
    fn new(writer: FrameWriter, serial: u64) -> Self {
        StreamWriter {
            writer,
            staged: BytesMut::new(),
            serial,
        }
    }

    /// Appends a frame; written at the next [`StreamWriter::flush`].
    pub fn push(&mut self, frame: &Frame) {
        codec::encode_into(frame, &mut self.staged);
    }

    /// Hands the frames pushed since the last flush to the writer task.
    pub fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        match self.writer.try_reserve() {
            Ok(permit) => permit.send_encoded(self.staged.split().freeze()),
            // The server is not reading: keep the batch; the driver flushes every writer on each pass.
            Err(TrySendError::Full) => {}
            // The stream is gone; its reader reports the end to the driver.
            Err(TrySendError::Closed) => self.staged.clear(),
        }
    }
}

/// Creates a writer and spawns its task on `send`.
pub(crate) fn spawn_writer(send: quinn::SendStream, serial: u64) -> StreamWriter {
    StreamWriter::new(FrameWriter::spawn(send, STREAM_QUEUE), serial)
}

/// A writer whose stream is still being opened (the Open frame and early frames wait in its queue).
pub(crate) fn pending_writer(serial: u64) -> (StreamWriter, PendingStream) {
    let (writer, pending) = FrameWriter::pending(STREAM_QUEUE);
    (StreamWriter::new(writer, serial), pending)
}

/// Opens a conversation stream, then runs its writer and reader.
pub(crate) fn spawn_open(
    conn: quinn::Connection,
    gen: u64,
    serial: u64,
    conversation: String,
    pending: PendingStream,
    limits: Arc<ConnShared>,
    tx: mpsc::Sender<Inbound>,
) {
    tokio::spawn(async move {
        let stream = StreamRef::Conv {
            serial,
            conversation,
        };
        let reason = match conn.open_bi().await {
            // Stream 0 is the control stream's: a conversation stream gets it only when quinn
            // numbered streams from 0 again because the server rejected 0-RTT, before the core
            // heard the verdict. Written, its Open would reach the server where Hello belongs
            // (PROTOCOL_ERROR, the Send rejected). The core dials a new connection on the verdict;
            // until then this stream stays unwritten and ends like any lost stream.
            Ok((send, _)) if send.id().index() == 0 => {
                "0-RTT rejected: stream ids restarted".into()
            }
            Ok((send, recv)) => {
                // Frames pushed while the stream was opening are waiting: the task writes them first.
                pending.attach(send);
                return read_loop(recv, gen, stream, limits, tx).await;
            }
            Err(e) => e.to_string(),
        };
        let _ = tx
            .send(Inbound::StreamEnded {
                gen,
                stream,
                reason,
                code: None,
            })
            .await;
    });
}

/// Where a read loop's frames come from.
enum Source {
    /// A stream whose identity is known.
    Known(StreamRef),
    /// A stream the server opened: its first frame must be Open, which names the conversation.
    Accepted {
        send: quinn::SendStream,
        serial: u64,
    },
}

/// Reads frames from a stream until it ends, forwarding each to the driver.
pub(crate) async fn read_loop(
    recv: quinn::RecvStream,
    gen: u64,
    stream: StreamRef,
    limits: Arc<ConnShared>,
    tx: mpsc::Sender<Inbound>,
) {
    read_frames(recv, gen, Source::Known(stream), limits, tx).await;
}

async fn read_frames(
    recv: quinn::RecvStream,
    gen: u64,
    mut source: Source,
    limits: Arc<ConnShared>,
    tx: mpsc::Sender<Inbound>,
) {
    let max_frame_size = || limits.max_frame_size.load(Ordering::Relaxed);
    let mut reader = FrameReader::new(recv, max_frame_size());
    let mut code = None;
    let reason = loop {
        // The limit announced in Welcome applies from the next frame on (FERRY-HELLO-5): frames read
        // before it arrived were checked against the default.
        reader.set_max_frame_size(max_frame_size());
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "finished".to_owned(),
            // Streams opened in early data die with a rejected 0-RTT, but the connection lives on: the
            // driver restarts the session on it when the verdict arrives (`Inbound::ZeroRtt`). Reporting
            // the end would make it drop the connection and reconnect instead.
            Err(e) if e.is_zero_rtt_rejected() => return,
            Err(ReadError::Decode(e)) => {
                reader.stop(e.code());
                break e.to_string();
            }
            Err(e @ ReadError::Stream(_)) => {
                code = e.peer_code();
                break e.to_string();
            }
        };
        let stream = match source {
            Source::Known(ref stream) => stream.clone(),
            Source::Accepted { .. } => {
                let Source::Accepted { mut send, serial } =
                    std::mem::replace(&mut source, Source::Known(StreamRef::Control))
                else {
                    unreachable!("matched above")
                };
                let Some(Kind::Open(open)) = frame.kind else {
                    let _ = send.reset(codes::to_varint(ErrorCode::PROTOCOL_ERROR));
                    reader.stop(ErrorCode::PROTOCOL_ERROR);
                    return;
                };
                let conversation = open.conversation_id;
                source = Source::Known(StreamRef::Conv {
                    serial,
                    conversation: conversation.clone(),
                });
                let accepted = Inbound::Accepted {
                    gen,
                    serial,
                    conversation,
                    send,
                };
                if tx.send(accepted).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if tx
            .send(Inbound::Frame { gen, stream, frame })
            .await
            .is_err()
        {
            return;
        }
    };
    // A stream that ended before its Open frame was never announced: nothing to report.
    if let Source::Known(stream) = source {
        let _ = tx
            .send(Inbound::StreamEnded {
                gen,
                stream,
                reason,
                code,
            })
            .await;
    }
}

/// Accepts server-opened conversation streams (first frame Open) and reads datagrams, until the
/// connection ends; then reports why.
pub(crate) fn spawn_connection_tasks(
    conn: quinn::Connection,
    shared: Arc<ConnShared>,
    serials: Arc<AtomicU64>,
    tx: mpsc::Sender<Inbound>,
) {
    let dconn = conn.clone();
    let dtx = tx.clone();
    let dshared = shared.clone();
    tokio::spawn(async move {
        while let Ok(payload) = dconn.read_datagram().await {
            let max = dshared.max_frame_size.load(Ordering::Relaxed);
            if let Some(frame) = decode_datagram(&payload, max) {
                let gen = dshared.gen.load(Ordering::Relaxed);
                if dtx.send(Inbound::Datagram { gen, frame }).await.is_err() {
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        let error = loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let serial = serials.fetch_add(1, Ordering::Relaxed);
                    let gen = shared.gen.load(Ordering::Relaxed);
                    tokio::spawn(accept_stream(
                        send,
                        recv,
                        gen,
                        serial,
                        shared.clone(),
                        tx.clone(),
                    ));
                }
                Err(error) => break error,
            }
        };
        let gen = shared.gen.load(Ordering::Relaxed);
        let _ = tx.send(Inbound::ConnectionLost { gen, error }).await;
    });
}

async fn accept_stream(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    gen: u64,
    serial: u64,
    limits: Arc<ConnShared>,
    tx: mpsc::Sender<Inbound>,
) {
    read_frames(recv, gen, Source::Accepted { send, serial }, limits, tx).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::frame;

    #[test]
    fn datagrams_above_the_maximum_frame_size_are_discarded_before_decoding() {
        let typing = codec::frame(Kind::Typing(frame::Typing {
            conversation_id: "d:alice:bob".into(),
            active: true,
            ..Default::default()
        }));
        let payload = codec::encode_datagram(&typing);
        let len = payload.len();
        assert_eq!(decode_datagram(&payload, len), Some(typing));
        assert_eq!(decode_datagram(&payload, len - 1), None);
        // Garbage within the limit is discarded too, not an error.
        assert_eq!(decode_datagram(&[0xff, 0xff], len), None);
        assert_eq!(
            ConnShared::new(1).max_frame_size.load(Ordering::Relaxed),
            codec::DEFAULT_MAX_FRAME_SIZE
        );
    }
}

//! Frame I/O over one QUIC stream: a reader that feeds the protocol [`Decoder`] and a writer task that
//! batches every frame queued since its last wake-up into a single write (many frames share a QUIC
//! packet; no flush per frame — the brief's performance section).

use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::{codec, DecodeError, Decoder, ErrorCode, Frame};
use tokio::sync::mpsc;

/// Most bytes gathered into one write before it is issued.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid frame.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The peer reset the stream or the connection failed.
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
}

impl ReadError {
    /// The code to reset/close with, if the fault is the peer's bytes.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ReadError::Decode(e) => Some(e.code()),
            ReadError::Stream(_) => None,
        }
    }
}

/// Reads frames from a QUIC receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: Decoder,
}

impl FrameReader {
    /// A reader enforcing `max_frame_size`.
    pub fn new(recv: quinn::RecvStream, max_frame_size: usize) -> Self {
        FrameReader {
            recv,
            decoder: Decoder::new(max_frame_size),
        }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(MAX_BATCH_BYTES, true).await? {
                Some(chunk) => self.decoder.extend(&chunk.bytes),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// Tells the peer to stop sending on this stream.
    pub fn stop(&mut self, code: ErrorCode) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code.0));
    }
}

/// What a stream's writer task is asked to do.
// Frames are the common case and the rare Reset is small; boxing every frame would add an allocation per
// message on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outgoing {
    /// Write a frame.
    Frame(Frame),
    /// Reset the stream with a code and stop.
    Reset(ErrorCode),
    /// Write what is queued, finish the stream, give the peer a moment to read it, then close the
    /// connection with `code` — so a GoAway queued before it arrives before the close (FERRY-AUTH-8).
    Close {
        /// Close code.
        code: ErrorCode,
        /// Close reason.
        reason: &'static str,
        /// The connection to close.
        connection: quinn::Connection,
    },
}

/// How long a closing writer waits for the peer to read the last frames.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Spawns the writer task for `send`; frames queued on the returned channel are written in batches. The
/// stream is finished when every sender is dropped, reset on [`Outgoing::Reset`].
pub fn spawn_writer(mut send: quinn::SendStream, capacity: usize) -> mpsc::Sender<Outgoing> {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(capacity);
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Outgoing::Frame(frame) => codec::encode_into(&frame, &mut buf),
                    Outgoing::Reset(code) => {
                        if !buf.is_empty() {
                            let _ = send.write_chunk(buf.split().freeze()).await;
                        }
                        let _ = send.reset(quinn::VarInt::from_u32(code.0));
                        return;
                    }
                    Outgoing::Close {
                        code,
                        reason,
                        connection,
                    } => {
                        let _ = send.write_chunk(buf.split().freeze()).await;
                        let _ = send.finish();
                        // `stopped` resolves once the peer's QUIC stack acknowledged the data, but a
                        // close discards what its application has not read yet: linger a little more,
                        // or until the peer leaves on its own.
                        let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
                        let _ = tokio::time::timeout(CLOSE_LINGER, connection.closed()).await;
                        connection.close(quinn::VarInt::from_u32(code.0), reason.as_bytes());
                        return;
                    }
                }
                if buf.len() < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if send.write_chunk(buf.split().freeze()).await.is_err() {
                return; // peer stopped the stream or the connection is gone
            }
        }
        let _ = send.finish();
    });
    tx
}

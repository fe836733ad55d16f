//! The one frame reader: chunks of a [`quinn::RecvStream`] (or, feature `fuzzing`, an in-memory stream) fed into the protocol crate's [`Decoder`].
//! Incomplete input is "read more", never an error; a bad frame is a typed [`ReadError`] whose
//! [`ReadError::code`] is what the reader resets or closes with (FERRY-FRAME-5).

use ferry_protocol::{DecodeError, Decoder, ErrorCode, Frame};

use crate::codes;

/// Most bytes taken from quinn per read. quinn hands out its buffered chunks without copying; a bound
/// keeps one read from pulling a whole flow-control window into the decoder at once.
const MAX_READ_CHUNK: usize = 64 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid frame (or the stream ended inside one).
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The peer reset the stream, the connection failed, or 0-RTT was rejected.
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

    /// The code the peer reset the stream or closed the connection with, if it gave one.
    pub fn peer_code(&self) -> Option<ErrorCode> {
        match self {
            ReadError::Decode(_) => None,
            ReadError::Stream(e) => codes::read_code(e),
        }
    }

    /// The stream was opened in early data that the server rejected: the connection lives on, only this
    /// stream is gone.
    pub fn is_zero_rtt_rejected(&self) -> bool {
        matches!(self, ReadError::Stream(quinn::ReadError::ZeroRttRejected))
    }
}

/// Reads frames from a QUIC receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: Source,
    decoder: Decoder,
}

/// Where the bytes come from: a QUIC stream, or (feature `fuzzing`) an in-memory one.
#[derive(Debug)]
enum Source {
    Quic(quinn::RecvStream),
    #[cfg(feature = "fuzzing")]
    Memory(crate::memory::MemoryRecv),
}

impl FrameReader {
    /// A reader rejecting frames above `max_frame_size` bytes.
    pub fn new(recv: quinn::RecvStream, max_frame_size: usize) -> Self {
        FrameReader {
            recv: Source::Quic(recv),
            decoder: Decoder::new(max_frame_size),
        }
    }

    /// A reader over an in-memory stream (see [`crate::memory`]).
    #[cfg(feature = "fuzzing")]
    pub fn from_memory(recv: crate::memory::MemoryRecv, max_frame_size: usize) -> Self {
        FrameReader {
            recv: Source::Memory(recv),
            decoder: Decoder::new(max_frame_size),
        }
    }

    /// Applies a new size limit (the one announced in `Welcome`) to every frame not yet returned.
    pub fn set_max_frame_size(&mut self, max_frame_size: usize) {
        self.decoder.set_max_frame_size(max_frame_size);
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly between frames.
    ///
    /// Cancel-safe: bytes read before a cancellation stay in the decoder.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let chunk = match &mut self.recv {
                Source::Quic(recv) => recv
                    .read_chunk(MAX_READ_CHUNK, true)
                    .await?
                    .map(|chunk| chunk.bytes),
                #[cfg(feature = "fuzzing")]
                Source::Memory(recv) => recv.read_chunk(MAX_READ_CHUNK).await?,
            };
            match chunk {
                Some(bytes) => self.decoder.extend(&bytes),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// Tells the peer to stop sending on this stream (STOP_SENDING with `code`).
    pub fn stop(&mut self, code: ErrorCode) {
        // Err only if the stream is already stopped or finished: nothing left to tell the peer.
        match &mut self.recv {
            Source::Quic(recv) => {
                let _ = recv.stop(codes::to_varint(code));
            }
            #[cfg(feature = "fuzzing")]
            Source::Memory(recv) => {
                let _ = recv.stop(codes::to_varint(code));
            }
        }
    }
}

//! Varint-length framing of [`Frame`]s: an encoder and an incremental, sans-IO decoder.
//!
//! On a stream every frame is `varint(len) || protobuf(Frame)`. The decoder is fed whatever bytes arrived
//! and hands out complete frames; "need more bytes" is `Ok(None)`, never an error (FERRY-FRAME-3). It never
//! panics on any input and never buffers more than one maximum-size frame plus the prefix.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::error_code::ErrorCode;
use crate::frame::{frame::Kind, Frame};

/// Default maximum encoded size of one frame (without its length prefix): 1 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1 << 20;

/// A varint is at most 10 bytes long (64 bits, 7 per byte).
pub const MAX_VARINT_LEN: usize = 10;

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of a frame (only reported by [`Decoder::finish`]).
    #[error("input ends inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes left over that do not form a whole frame.
        buffered: usize,
    },
    /// The length prefix announces more than the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// Maximum allowed.
        max: usize,
    },
    /// The length prefix is longer than 10 bytes or overflows 64 bits.
    #[error("invalid varint length prefix")]
    BadVarint,
    /// The frame body is not valid protobuf for `Frame`.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame decoded, but its type is absent or unknown to this implementation.
    #[error("unknown frame type")]
    UnknownFrame,
}

impl DecodeError {
    /// The wire error code a receiver closes the stream or connection with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Truncated { .. } | DecodeError::BadVarint | DecodeError::Malformed(_) => {
                ErrorCode::PROTOCOL_ERROR
            }
            DecodeError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            DecodeError::UnknownFrame => ErrorCode::UNKNOWN_FRAME,
        }
    }

    /// Short stable name used by the test vectors.
    pub fn name(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::FrameTooLarge { .. } => "frame_too_large",
            DecodeError::BadVarint => "bad_varint",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownFrame => "unknown_frame",
        }
    }
}

/// Appends `varint(len) || frame` to `out`. Callers batching many frames into one write reuse `out`.
pub fn encode_into(frame: &Frame, out: &mut BytesMut) {
    let len = frame.encoded_len();
    out.reserve(len + MAX_VARINT_LEN);
    prost::encoding::encode_varint(len as u64, out);
    frame
        .encode(out)
        .expect("BytesMut grows, so encoding cannot run out of space");
}

/// Encodes one length-prefixed frame.
pub fn encode(frame: &Frame) -> Bytes {
    let mut out = BytesMut::new();
    encode_into(frame, &mut out);
    out.freeze()
}

/// Encodes a frame for a QUIC datagram: no length prefix (FERRY-DGRAM-1).
pub fn encode_datagram(frame: &Frame) -> Bytes {
    Bytes::from(frame.encode_to_vec())
}

/// Decodes one datagram payload.
pub fn decode_datagram(payload: &[u8], max_frame_size: usize) -> Result<Frame, DecodeError> {
    if payload.len() > max_frame_size {
        return Err(DecodeError::FrameTooLarge {
            len: payload.len() as u64,
            max: max_frame_size,
        });
    }
    decode_body(Bytes::copy_from_slice(payload))
}

fn decode_body(body: Bytes) -> Result<Frame, DecodeError> {
    let frame = Frame::decode(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    match frame.kind {
        Some(_) => Ok(frame),
        None => Err(DecodeError::UnknownFrame),
    }
}

/// Reads a varint from the front of `buf` without consuming it.
/// `Ok(None)`: more bytes needed. `Ok(Some((value, prefix_len)))` otherwise.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(DecodeError::BadVarint); // bits beyond the 64th
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(DecodeError::BadVarint)
    } else {
        Ok(None)
    }
}

/// Incremental frame decoder for one stream.
///
/// ```
/// use ferry_protocol::{codec, Decoder, Frame, frame::{frame::Kind, Ack}};
/// let frame = Frame { kind: Some(Kind::Ack(Ack { seq: 7 })) };
/// let bytes = codec::encode(&frame);
/// let mut decoder = Decoder::new(codec::DEFAULT_MAX_FRAME_SIZE);
/// decoder.extend(&bytes[..2]);
/// assert_eq!(decoder.next_frame(), Ok(None)); // needs more bytes
/// decoder.extend(&bytes[2..]);
/// assert_eq!(decoder.next_frame(), Ok(Some(frame)));
/// assert_eq!(decoder.finish(), Ok(()));
/// ```
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_frame_size: usize,
    failed: Option<DecodeError>,
}

impl Decoder {
    /// A decoder that rejects frames larger than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max_frame_size,
            failed: None,
        }
    }

    /// Changes the size limit for the frames not yet returned: a reader created with the default
    /// applies the limit announced later (in `Welcome`) without losing bytes already buffered.
    pub fn set_max_frame_size(&mut self, max_frame_size: usize) {
        self.max_frame_size = max_frame_size;
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Number of bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the decoder keeps
    /// returning that error: the stream is unusable (FERRY-FRAME-5).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.try_next();
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    fn try_next(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some((len, prefix)) = peek_varint(&self.buf)? else {
            return Ok(None);
        };
        if len > self.max_frame_size as u64 {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        let len = len as usize;
        if self.buf.len() < prefix + len {
            return Ok(None);
        }
        self.buf.advance(prefix);
        decode_body(self.buf.split_to(len).freeze()).map(Some)
    }

    /// Call when the stream ended: leftover bytes mean the peer stopped inside a frame.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.buf.len() {
            0 => Ok(()),
            buffered => Err(DecodeError::Truncated { buffered }),
        }
    }
}

/// Decodes a byte string that must hold whole frames only (used by tests, vectors and fuzzing).
pub fn decode_all(bytes: &[u8], max_frame_size: usize) -> Result<Vec<Frame>, DecodeError> {
    let mut decoder = Decoder::new(max_frame_size);
    decoder.extend(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame()? {
        frames.push(frame);
    }
    decoder.finish()?;
    Ok(frames)
}

/// Wraps a frame kind into a [`Frame`].
pub fn frame(kind: Kind) -> Frame {
    Frame { kind: Some(kind) }
}

/// Writes a varint (exposed for test vectors and foreign-implementation helpers).
pub fn put_varint(value: u64, out: &mut impl BufMut) {
    prost::encoding::encode_varint(value, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Ack, Send};

    #[test]
    fn byte_at_a_time_decoding_yields_every_frame() {
        let frames = vec![
            frame(Kind::Ack(Ack { seq: 1 })),
            frame(Kind::Send(Send {
                client_msg_id: "m1".into(),
                body: Bytes::from_static(b"hello"),
            })),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            encode_into(f, &mut wire);
        }
        let mut decoder = Decoder::new(DEFAULT_MAX_FRAME_SIZE);
        let mut got = Vec::new();
        for byte in wire.iter() {
            decoder.extend(&[*byte]);
            while let Some(f) = decoder.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        decoder.finish().unwrap();
    }

    #[test]
    fn errors_are_sticky_and_map_to_codes() {
        let mut decoder = Decoder::new(4);
        decoder.extend(&[5, 0, 0, 0, 0, 0]);
        let err = decoder.next_frame().unwrap_err();
        assert_eq!(err.code(), ErrorCode::FRAME_TOO_LARGE);
        assert_eq!(decoder.next_frame().unwrap_err(), err);
        assert_eq!(decoder.finish().unwrap_err(), err);
    }

    #[test]
    fn a_lowered_limit_applies_to_bytes_already_buffered() {
        let ack = encode(&frame(Kind::Ack(Ack { seq: 300 })));
        let mut decoder = Decoder::new(DEFAULT_MAX_FRAME_SIZE);
        decoder.extend(&ack);
        decoder.extend(&ack);
        assert!(decoder.next_frame().unwrap().is_some());
        decoder.set_max_frame_size(1);
        assert!(matches!(
            decoder.next_frame(),
            Err(DecodeError::FrameTooLarge { max: 1, .. })
        ));
    }

    #[test]
    fn eleven_byte_varint_is_bad() {
        assert_eq!(
            decode_all(&[0x80; 11], DEFAULT_MAX_FRAME_SIZE),
            Err(DecodeError::BadVarint)
        );
        // 10th byte carrying bits above 64
        let mut bytes = vec![0xff; 9];
        bytes.push(0x02);
        assert_eq!(
            decode_all(&bytes, DEFAULT_MAX_FRAME_SIZE),
            Err(DecodeError::BadVarint)
        );
    }

    #[test]
    fn empty_frame_is_unknown() {
        assert_eq!(
            decode_all(&[0], DEFAULT_MAX_FRAME_SIZE),
            Err(DecodeError::UnknownFrame)
        );
    }
}

//! Feature `fuzzing`: in-memory bidirectional streams that a [`FrameReader`] and a [`FrameWriter`] can
//! run over instead of quinn's, so a fuzz target can drive a server's per-stream frame handling
//! thousands of times a second without QUIC packets, TLS or sockets.
//!
//! They keep the stream semantics the frame layer and the server rely on: bytes arrive in order, a
//! stream ends with a finish or a reset carrying a code, the receiver can stop the sender with a code
//! (STOP_SENDING), dropping a send half finishes it and dropping a receive half stops it (as quinn
//! does), and [`Severance::sever`] fails both directions with the connection's error, as a closed
//! connection fails its streams. The errors are quinn's own ([`quinn::ReadError`],
//! [`quinn::WriteError`]), so the codes come back through [`crate::codes`] unchanged.
//!
//! Flow control is a fixed window: a writer waits while [`WINDOW`] bytes are unread, so a peer that
//! never reads pins a bounded amount of memory, as with QUIC.
//!
//! [`FrameReader`]: crate::FrameReader
//! [`FrameWriter`]: crate::FrameWriter

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::Notify;

/// Most bytes written but not yet read in one direction (QUIC's per-stream window, roughly).
pub const WINDOW: usize = 1024 * 1024;

/// One direction of a stream: what the sender wrote and the receiver has not read, and how it ended.
#[derive(Debug, Default)]
struct State {
    buf: VecDeque<Bytes>,
    buffered: usize,
    /// The sender finished (`Some(None)`) or reset the stream with a code (`Some(Some(code))`).
    end: Option<Option<VarInt>>,
    /// The receiver stopped the stream with a code (dropping the receive half stops it with 0).
    stopped: Option<VarInt>,
    /// The connection ended: both sides fail with this error.
    lost: Option<quinn::ConnectionError>,
}

#[derive(Debug, Default)]
struct Pipe {
    state: Mutex<State>,
    /// Wakes the receiver: bytes, an end, or a loss.
    readable: Notify,
    /// Wakes the sender: room in the window, a stop, or a loss.
    writable: Notify,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock aborts a fuzz target anyway; the state stays consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending half of an in-memory stream (the counterpart of [`quinn::SendStream`]).
#[derive(Debug)]
pub struct MemorySend {
    pipe: Arc<Pipe>,
}

/// The receiving half of an in-memory stream (the counterpart of [`quinn::RecvStream`]).
#[derive(Debug)]
pub struct MemoryRecv {
    pipe: Arc<Pipe>,
}

/// One end of an in-memory bidirectional stream.
#[derive(Debug)]
pub struct MemoryStream {
    /// What this end writes.
    pub send: MemorySend,
    /// What this end reads.
    pub recv: MemoryRecv,
}

/// Fails both directions of a stream pair when "its connection" ends (see [`Severance::sever`]).
#[derive(Debug, Clone)]
pub struct Severance {
    pipes: [Arc<Pipe>; 2],
}

/// The stream half already ended (finished or reset) or was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the in-memory stream is already closed")]
pub struct Closed;

/// A bidirectional stream: the two ends, and the handle that fails both with a connection error.
pub fn pair() -> (MemoryStream, MemoryStream, Severance) {
    let (a_to_b, b_to_a) = (Arc::new(Pipe::default()), Arc::new(Pipe::default()));
    let a = MemoryStream {
        send: MemorySend {
            pipe: a_to_b.clone(),
        },
        recv: MemoryRecv {
            pipe: b_to_a.clone(),
        },
    };
    let b = MemoryStream {
        send: MemorySend {
            pipe: b_to_a.clone(),
        },
        recv: MemoryRecv {
            pipe: a_to_b.clone(),
        },
    };
    let severance = Severance {
        pipes: [a_to_b, b_to_a],
    };
    (a, b, severance)
}

impl Severance {
    /// The connection ended with `error`: every later read and write of both ends fails with it,
    /// bytes not yet read are discarded (as quinn does).
    pub fn sever(&self, error: quinn::ConnectionError) {
        for pipe in &self.pipes {
            let mut state = pipe.lock();
            state.lost.get_or_insert_with(|| error.clone());
            state.buf.clear();
            state.buffered = 0;
            drop(state);
            pipe.readable.notify_one();
            pipe.writable.notify_one();
        }
    }
}

impl MemorySend {
    /// Writes all of `bytes`, waiting while the window is full.
    pub async fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), quinn::WriteError> {
        // Each pass either writes at least one byte or waits for the reader to make room; it ends
        // when everything is written or the stream fails.
        while !bytes.is_empty() {
            let waiting = self.pipe.writable.notified();
            {
                let mut state = self.pipe.lock();
                if let Some(error) = &state.lost {
                    return Err(quinn::WriteError::ConnectionLost(error.clone()));
                }
                if let Some(code) = state.stopped {
                    return Err(quinn::WriteError::Stopped(code));
                }
                if state.end.is_some() {
                    return Err(quinn::WriteError::ClosedStream);
                }
                let room = WINDOW - state.buffered;
                if room > 0 {
                    let n = room.min(bytes.len());
                    state.buf.push_back(Bytes::copy_from_slice(&bytes[..n]));
                    state.buffered += n;
                    bytes = &bytes[n..];
                    drop(state);
                    self.pipe.readable.notify_one();
                    continue;
                }
            }
            waiting.await;
        }
        Ok(())
    }

    /// Ends the stream cleanly after the bytes written so far.
    pub fn finish(&mut self) -> Result<(), Closed> {
        self.end(None)
    }

    /// Resets the stream with `code`: bytes not yet read are discarded.
    pub fn reset(&mut self, code: VarInt) -> Result<(), Closed> {
        self.end(Some(code))
    }

    fn end(&mut self, reset: Option<VarInt>) -> Result<(), Closed> {
        let mut state = self.pipe.lock();
        if state.end.is_some() || state.stopped.is_some() || state.lost.is_some() {
            return Err(Closed);
        }
        state.end = Some(reset);
        if reset.is_some() {
            state.buf.clear();
            state.buffered = 0;
        }
        drop(state);
        self.pipe.readable.notify_one();
        Ok(())
    }

    /// Resolves once the receiver stopped the stream (`Some(code)`), or read everything of a finished
    /// stream (`None`), or the stream can no longer be read (`None`).
    pub async fn stopped(&self) -> Option<VarInt> {
        // Each pass checks the state and waits for the reader's next move.
        loop {
            let waiting = self.pipe.writable.notified();
            {
                let state = self.pipe.lock();
                if state.stopped.is_some() {
                    return state.stopped;
                }
                if state.lost.is_some() || (state.end.is_some() && state.buf.is_empty()) {
                    return None;
                }
            }
            waiting.await;
        }
    }
}

impl Drop for MemorySend {
    fn drop(&mut self) {
        // quinn finishes a send stream dropped without an end.
        let _ = self.end(None);
    }
}

impl MemoryRecv {
    /// The next bytes, at most `max`; `Ok(None)` once the sender finished and everything was read.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, quinn::ReadError> {
        // Each pass returns, or waits for the sender's next move.
        loop {
            let waiting = self.pipe.readable.notified();
            {
                let mut state = self.pipe.lock();
                if let Some(error) = &state.lost {
                    return Err(quinn::ReadError::ConnectionLost(error.clone()));
                }
                if let Some(mut front) = state.buf.pop_front() {
                    if front.len() > max.max(1) {
                        let rest = front.split_off(max.max(1));
                        state.buf.push_front(rest);
                    }
                    state.buffered -= front.len();
                    drop(state);
                    self.pipe.writable.notify_one();
                    return Ok(Some(front));
                }
                match state.end {
                    Some(None) => {
                        drop(state);
                        // The sender may wait in `stopped` for everything to be read.
                        self.pipe.writable.notify_one();
                        return Ok(None);
                    }
                    Some(Some(code)) => return Err(quinn::ReadError::Reset(code)),
                    None => {}
                }
            }
            waiting.await;
        }
    }

    /// Tells the sender to stop (STOP_SENDING with `code`); unread bytes are discarded.
    pub fn stop(&mut self, code: VarInt) -> Result<(), Closed> {
        let mut state = self.pipe.lock();
        if state.stopped.is_some() || state.lost.is_some() {
            return Err(Closed);
        }
        state.stopped = Some(code);
        state.buf.clear();
        state.buffered = 0;
        drop(state);
        self.pipe.writable.notify_one();
        Ok(())
    }
}

impl Drop for MemoryRecv {
    fn drop(&mut self) {
        // quinn stops a receive stream dropped before its end with code 0.
        if self.pipe.lock().end.is_none() {
            let _ = self.stop(VarInt::from_u32(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codes, FrameReader, FrameWriter};
    use ferry_protocol::codec::{self, frame};
    use ferry_protocol::frame::{frame::Kind, Ack};
    use ferry_protocol::ErrorCode;

    fn ack(seq: u64) -> ferry_protocol::Frame {
        frame(Kind::Ack(Ack { seq }))
    }

    #[tokio::test]
    async fn frames_cross_in_order_and_a_finish_ends_the_reader() {
        let (a, b, _) = pair();
        let writer = FrameWriter::spawn_memory(a.send, 8);
        let mut reader = FrameReader::from_memory(b.recv, codec::DEFAULT_MAX_FRAME_SIZE);
        for seq in 0..100 {
            writer.send(ack(seq)).await.unwrap();
        }
        drop(writer);
        for seq in 0..100 {
            assert_eq!(reader.next().await.unwrap(), Some(ack(seq)));
        }
        assert_eq!(reader.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn reset_stop_and_sever_carry_their_codes() {
        let (a, b, severance) = pair();
        let writer = FrameWriter::spawn_memory(a.send, 8);
        writer.reset(ErrorCode::FORBIDDEN).await.unwrap();
        let mut reader = FrameReader::from_memory(b.recv, codec::DEFAULT_MAX_FRAME_SIZE);
        let err = reader.next().await.unwrap_err();
        assert_eq!(err.peer_code(), Some(ErrorCode::FORBIDDEN));

        // The other direction: the reader stops it, the writer's next write fails with the code.
        let (mut send, mut recv) = (b.send, a.recv);
        recv.stop(codes::to_varint(ErrorCode::STREAM_CLOSED))
            .unwrap();
        let err = send.write_all(b"x").await.unwrap_err();
        assert_eq!(codes::write_code(&err), Some(ErrorCode::STREAM_CLOSED));
        assert_eq!(
            send.stopped().await,
            Some(codes::to_varint(ErrorCode::STREAM_CLOSED))
        );

        // A severed pair fails with the connection's error on both ends.
        let (mut c, mut d, severance2) = pair();
        drop(severance);
        severance2.sever(quinn::ConnectionError::TimedOut);
        assert!(matches!(
            d.recv.read_chunk(10).await,
            Err(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::TimedOut
            ))
        ));
        assert!(matches!(
            c.send.write_all(b"x").await,
            Err(quinn::WriteError::ConnectionLost(_))
        ));
    }

    #[tokio::test]
    async fn a_writer_waits_for_room_in_the_window() {
        let (mut a, mut b, _) = pair();
        let big = vec![7u8; WINDOW + 10];
        let write = tokio::spawn(async move {
            a.send.write_all(&big).await.unwrap();
            a.send.finish().unwrap();
            a
        });
        tokio::task::yield_now().await;
        assert!(
            !write.is_finished(),
            "the window holds at most WINDOW bytes"
        );
        let mut read = 0;
        while let Some(chunk) = b.recv.read_chunk(4096).await.unwrap() {
            assert!(chunk.len() <= 4096);
            read += chunk.len();
        }
        assert_eq!(read, WINDOW + 10);
        let a = write.await.unwrap();
        assert_eq!(a.send.stopped().await, None, "finished and read to the end");
    }
}

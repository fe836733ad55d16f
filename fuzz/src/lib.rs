//! Shared by the fuzz targets: [`Script`], the reader that turns libFuzzer's bytes into a sequence of
//! operations, and the wire helpers both frame-script targets use.
//!
//! A script is a plain byte format rather than an `arbitrary`-derived one so that `scripts/fuzz.sh` can
//! write seed inputs from `spec/vectors` by hand: each operation starts with an opcode byte, its fields
//! follow as single bytes, little-endian integers or length-prefixed chunks, and a script that ends
//! early reads zeros (every input is a valid script).
#![warn(missing_docs)]

use ferry_protocol::codec::{self, DEFAULT_MAX_FRAME_SIZE};
use ferry_protocol::Frame;

/// Reads a script's fields; past the end every field reads as zero (or empty).
pub struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    /// A script over libFuzzer's input.
    pub fn new(data: &'a [u8]) -> Self {
        Script { data }
    }

    /// True once every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A boolean (the low bit of a byte).
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    /// A seq-like number: one byte (0–254) keeps neighbouring operations about the same few messages;
    /// 255 escapes to a whole u64 (the edges: 0, u64::MAX, overflow).
    pub fn small(&mut self) -> u64 {
        match self.u8() {
            255 => self.u64(),
            b => u64::from(b),
        }
    }

    /// `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A chunk: a u16 length, then that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    /// One of `items`, by a byte.
    pub fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[usize::from(self.u8()) % items.len()]
    }
}

/// The frames a chunk of wire bytes decodes to, up to the first decode error (whose frames a peer's
/// reader would have handed out before failing).
pub fn decode_prefix(bytes: &[u8]) -> Vec<Frame> {
    let mut decoder = ferry_protocol::Decoder::new(DEFAULT_MAX_FRAME_SIZE);
    decoder.extend(bytes);
    let mut frames = Vec::new();
    // Bounded: each frame consumes at least one byte of the chunk.
    for _ in 0..=bytes.len() {
        match decoder.next_frame() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) | Err(_) => break,
        }
    }
    frames
}

/// Creates a frame of one kind.
pub fn frame(kind: ferry_protocol::frame::frame::Kind) -> Frame {
    codec::frame(kind)
}

pub mod history;
pub mod server;

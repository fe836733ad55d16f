//! Fuzzes the frame decoder: stream framing in arbitrary chunks, and datagrams.
//!
//! Input: the first byte picks how the rest is fed (chunk size, frame size limit); the rest is the bytes
//! a peer sent. Beyond "never panics", checks that
//! - chunking never changes the outcome (the same frames, then the same error or a clean end);
//! - errors are sticky;
//! - every decoded frame re-encodes to bytes that decode to the same frame.
#![no_main]

use ferry_protocol::codec::{
    decode_all, decode_datagram, encode, encode_datagram, DEFAULT_MAX_FRAME_SIZE, MAX_VARINT_LEN,
};
use ferry_protocol::{DecodeError, Decoder, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(mode & 0x3f) + 1;
    // A small limit makes FRAME_TOO_LARGE reachable with short inputs.
    let max = if mode & 0x40 != 0 {
        64
    } else {
        DEFAULT_MAX_FRAME_SIZE
    };

    let (frames, end) = decode_in_chunks(input, chunk, max);
    match decode_all(input, max) {
        Ok(all) => {
            assert_eq!(all, frames);
            assert_eq!(end, Ok(()));
        }
        Err(err) => assert_eq!(end, Err(err)),
    }
    for frame in &frames {
        assert_eq!(
            decode_all(&encode(frame), DEFAULT_MAX_FRAME_SIZE).as_deref(),
            Ok(std::slice::from_ref(frame))
        );
    }

    if let Ok(frame) = decode_datagram(input, max) {
        assert_eq!(
            decode_datagram(&encode_datagram(&frame), DEFAULT_MAX_FRAME_SIZE),
            Ok(frame)
        );
    }
});

/// Feeds `input` in `chunk`-byte pieces, like a stream that trickles in, then ends the stream.
fn decode_in_chunks(
    input: &[u8],
    chunk: usize,
    max: usize,
) -> (Vec<Frame>, Result<(), DecodeError>) {
    let mut decoder = Decoder::new(max);
    let mut frames = Vec::new();
    for piece in input.chunks(chunk) {
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    assert_eq!(decoder.next_frame(), Err(err.clone()));
                    return (frames, Err(err));
                }
            }
        }
        // Whole frames were handed out: what is left is less than one maximum frame and its prefix.
        assert!(decoder.buffered() < max + MAX_VARINT_LEN);
    }
    let end = decoder.finish();
    (frames, end)
}

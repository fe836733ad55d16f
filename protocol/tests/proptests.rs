//! Property tests: codec round trips over every frame kind, the decoder on arbitrary bytes, and the receive
//! window's exactly-once, in-order promise under reordering, duplication, loss and late pull answers.

#[path = "support/arb.rs"]
mod arb;
#[path = "support/frame_json.rs"]
mod frame_json;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_protocol::codec::{
    decode_all, decode_datagram, encode_datagram, encode_into, DEFAULT_MAX_FRAME_SIZE,
    MAX_VARINT_LEN,
};
use ferry_protocol::{Arrival, DecodeError, Decoder, Frame, ReceiveWindow, WindowConfig};
use proptest::collection::vec;
use proptest::prelude::*;

/// Feeds `bytes` to a fresh decoder in chunks of the given sizes (cycled; 0 is read as 1) and collects
/// frames until the input ends or the decoder fails. Ends with `finish`, like a stream that closed.
fn decode_in_chunks(
    bytes: &[u8],
    chunk_sizes: &[usize],
    max: usize,
) -> (Vec<Frame>, Result<(), DecodeError>) {
    let mut decoder = Decoder::new(max);
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunk_sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(1).clamp(1, rest.len());
        decoder.extend(&rest[..size]);
        rest = &rest[size..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    // Errors are sticky: the stream is unusable from here on.
                    assert_eq!(decoder.next_frame(), Err(err.clone()));
                    assert_eq!(decoder.finish(), Err(err.clone()));
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

proptest! {
    #[test]
    fn frames_round_trip_in_any_chunking(
        frames in vec(arb::frame(), 0..6),
        chunk_sizes in vec(0..40usize, 1..8),
    ) {
        let mut wire = BytesMut::new();
        for frame in &frames {
            encode_into(frame, &mut wire);
        }
        prop_assert_eq!(decode_all(&wire, DEFAULT_MAX_FRAME_SIZE), Ok(frames.clone()));
        let (got, end) = decode_in_chunks(&wire, &chunk_sizes, DEFAULT_MAX_FRAME_SIZE);
        prop_assert_eq!(got, frames);
        prop_assert_eq!(end, Ok(()));
    }

    #[test]
    fn datagrams_round_trip(frame in arb::frame()) {
        let payload = encode_datagram(&frame);
        prop_assert_eq!(decode_datagram(&payload, DEFAULT_MAX_FRAME_SIZE), Ok(frame));
    }

    /// The vector JSON helper covers every field: a field it forgot would not survive this round trip.
    #[test]
    fn vector_json_round_trips(frame in arb::frame()) {
        let json = frame_json::to_json(&frame);
        prop_assert_eq!(frame_json::from_json("arbitrary", &json), frame);
    }

    /// Arbitrary input never panics, chunking never changes the outcome, and whatever decodes re-encodes to
    /// something that decodes to the same frame.
    #[test]
    fn arbitrary_bytes_decode_consistently(
        bytes in vec(any::<u8>(), 0..200),
        chunk_sizes in vec(0..16usize, 1..6),
        max in prop_oneof![Just(16usize), Just(DEFAULT_MAX_FRAME_SIZE)],
    ) {
        let (frames, end) = decode_in_chunks(&bytes, &chunk_sizes, max);
        let (whole, whole_end) = decode_in_chunks(&bytes, &[bytes.len()], max);
        prop_assert_eq!(&frames, &whole);
        prop_assert_eq!(&end, &whole_end);
        match decode_all(&bytes, max) {
            Ok(all) => {
                prop_assert_eq!(&all, &frames);
                prop_assert_eq!(end, Ok(()));
            }
            Err(err) => prop_assert_eq!(end, Err(err)),
        }
        for frame in frames {
            let mut wire = BytesMut::new();
            encode_into(&frame, &mut wire);
            prop_assert_eq!(decode_all(&wire, DEFAULT_MAX_FRAME_SIZE), Ok(vec![frame]));
        }
        let _ = decode_datagram(&bytes, max);
    }
}

// ---------------------------------------------------------------------------------------------------
// Receive window

/// One run of the window against a server that holds seqs 1..=n.
#[derive(Debug, Clone)]
struct WindowCase {
    n: u64,
    /// Every seq once, in random order, with random duplicates mixed in.
    arrivals: Vec<u64>,
    /// What happens between arrivals; see `run_window`.
    steps: Vec<u8>,
}

fn window_case() -> impl Strategy<Value = WindowCase> {
    (1..200u64).prop_flat_map(|n| {
        let order = Just((1..=n).collect::<Vec<_>>()).prop_shuffle();
        let dups = vec((1..=n, any::<prop::sample::Index>()), 0..=(n as usize / 2));
        let steps = vec(any::<u8>(), 0..(3 * n as usize));
        (order, dups, steps).prop_map(move |(mut arrivals, dups, steps)| {
            for (seq, at) in dups {
                let at = at.index(arrivals.len() + 1);
                arrivals.insert(at, seq);
            }
            WindowCase { n, arrivals, steps }
        })
    })
}

/// The application side: what it was handed, and the acks it saw.
struct App {
    delivered: Vec<u64>,
    last_ack: u64,
}

impl App {
    fn take(&mut self, arrival: Arrival<u64>) {
        if let Arrival::Ready(seqs) = arrival {
            self.delivered.extend(seqs);
        }
    }

    fn commit_and_ack(&mut self, window: &mut ReceiveWindow<u64>, extra: u64) {
        // Claims beyond what was handed over must be clamped by the window.
        window.commit(self.delivered.len() as u64 + extra);
        if let Some(ack) = window.poll_ack() {
            assert!(ack > self.last_ack, "ack {ack} after {}", self.last_ack);
            assert!(ack <= window.contiguous(), "ack {ack} past contiguous");
            self.last_ack = ack;
        }
    }
}

/// The server's answer to a Pull: consecutive seqs after `after_seq`, at most `limit`, head `n`.
fn answer(window: &mut ReceiveWindow<u64>, n: u64, after_seq: u64, limit: u32) -> Arrival<u64> {
    let last = n.min(after_seq + u64::from(limit));
    window.on_pull_result(after_seq, EPOCH, n, (after_seq + 1..=last).map(|s| (s, s)))
}

const EPOCH: u64 = 7;

/// Interleaves arrivals (some lost), pulls answered late, out of order or never, heads, commits and time.
/// Then the connection settles: the server reports its head and answers every pull. The application must
/// have been handed exactly 1..=n, in order.
fn run_window(case: &WindowCase, config: WindowConfig) -> Result<(), TestCaseError> {
    let n = case.n;
    let mut window = ReceiveWindow::new(EPOCH, 0, config);
    let mut app = App {
        delivered: Vec::new(),
        last_ack: 0,
    };
    let mut now = Instant::now();
    let mut pulls: VecDeque<ferry_protocol::PullRequest> = VecDeque::new();
    let mut arrivals = case.arrivals.iter().copied();
    let mut steps = case.steps.iter().copied();

    loop {
        let step = steps.next();
        match step.map(|s| s % 16) {
            // Most steps deliver; 1 in 8 of those deliveries is lost on the way.
            None | Some(0..=7) => match arrivals.next() {
                Some(_) if step.is_some_and(|s| s % 16 == 0) => {}
                Some(seq) => app.take(window.on_message(EPOCH, seq, seq)),
                None if step.is_none() => break,
                None => {}
            },
            Some(8) | Some(9) => {
                if let Some(req) = pulls.pop_front() {
                    app.take(answer(&mut window, n, req.after_seq, req.limit));
                }
            }
            Some(10) => {
                // Answers may overtake each other.
                if let Some(req) = pulls.pop_back() {
                    app.take(answer(&mut window, n, req.after_seq, req.limit));
                }
            }
            Some(11) => {
                pulls.pop_front(); // the stream carrying it was reset
            }
            Some(12) => {
                let head = u64::from(step.unwrap_or(0)) % (n + 1);
                prop_assert_eq!(window.on_head(EPOCH, head), None);
            }
            Some(13) => now += Duration::from_secs(1),
            Some(_) => app.commit_and_ack(&mut window, u64::from(step.unwrap_or(0) % 3)),
        }
        if let Some(req) = window.poll_pull(now) {
            pulls.push_back(req);
        }
    }

    // Settle: the head travels with the next heartbeat; every pull is answered; lost pulls time out.
    prop_assert_eq!(window.on_head(EPOCH, n), None);
    let mut rounds = 0;
    while window.contiguous() < n {
        rounds += 1;
        prop_assert!(rounds < 1000, "stuck at {} of {n}", window.contiguous());
        while let Some(req) = pulls.pop_front() {
            app.take(answer(&mut window, n, req.after_seq, req.limit));
        }
        match window.poll_pull(now) {
            Some(req) => pulls.push_back(req),
            None => now += config.pull_timeout.max(config.gap_grace),
        }
        app.commit_and_ack(&mut window, 0);
    }
    app.commit_and_ack(&mut window, 0);

    prop_assert_eq!(app.delivered, (1..=n).collect::<Vec<_>>());
    prop_assert_eq!(app.last_ack, n);
    prop_assert_eq!(window.poll_pull(now), None);
    prop_assert_eq!(window.buffered(), 0);
    Ok(())
}

fn config(max_buffered: usize, gap_grace_secs: u64) -> WindowConfig {
    WindowConfig {
        max_buffered,
        pull_limit: 16,
        pull_timeout: Duration::from_secs(5),
        gap_grace: Duration::from_secs(gap_grace_secs),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn window_hands_over_each_seq_once_in_order(case in window_case(), grace in 0..3u64) {
        run_window(&case, config(1024, grace))?;
    }

    #[test]
    fn window_with_tiny_buffer_still_hands_over_each_seq_once_in_order(
        case in window_case(),
        max_buffered in 1..5usize,
        grace in 0..3u64,
    ) {
        run_window(&case, config(max_buffered, grace))?;
    }
}

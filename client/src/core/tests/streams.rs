//! `max_open_streams` (FERRY-STREAM-7): the core never has more client-opened streams than Welcome
//! announced; conversations beyond the limit wait, and idle streams are finished to make room.

use std::collections::HashMap;

use super::*;

const CONVS: [&str; 5] = [
    "d:alice:bob",
    "d:alice:carol",
    "d:alice:dave",
    "d:alice:erin",
    "d:alice:frank",
];
const HEAD: u64 = 5;
const LIMIT: usize = 2;

/// The server's view of the client's streams: open ones by serial (with their conversation), and the
/// most seen at once.
#[derive(Default)]
struct ServerView {
    open: HashMap<u64, String>,
    most: usize,
    opened: usize,
}

impl ServerView {
    /// Applies the transmits; returns the Pulls asked (serial, conversation, after_seq) and the serials
    /// the client finished.
    fn apply(&mut self, out: &[Transmit]) -> (Vec<(u64, String, u64)>, Vec<u64>) {
        let mut serial_of: HashMap<String, u64> = HashMap::new();
        for (serial, conversation) in &self.open {
            serial_of.insert(conversation.clone(), *serial);
        }
        let (mut pulls, mut finished) = (Vec::new(), Vec::new());
        for t in out {
            match t {
                Transmit::Open {
                    conversation,
                    serial,
                    ..
                } => {
                    self.open.insert(*serial, conversation.clone());
                    serial_of.insert(conversation.clone(), *serial);
                    self.opened += 1;
                    self.most = self.most.max(self.open.len());
                }
                Transmit::Forget { serial, .. } => finished.push(*serial),
                Transmit::Frame {
                    target: Target::Conv(c),
                    frame:
                        Frame {
                            kind: Some(Kind::Pull(p)),
                        },
                    ..
                } => pulls.push((serial_of[c], c.clone(), p.after_seq)),
                _ => {}
            }
        }
        (pulls, finished)
    }
}

fn welcome_with_stream_limit(h: &mut Harness, gen: u64, max_open_streams: u32) -> Vec<Transmit> {
    let welcome = f(Kind::Welcome(frame::Welcome {
        user_id: "alice".into(),
        limits: Some(frame::Limits {
            max_open_streams,
            ..Default::default()
        }),
        ..Default::default()
    }));
    h.core.handle_frame(gen, control(), welcome, h.now);
    h.step()
}

#[test]
fn catch_up_of_more_conversations_than_streams_stays_within_the_limit() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    welcome_with_stream_limit(&mut h, gen, LIMIT as u32);
    let sync = h.last_sync.expect("Sync with Hello");
    let states = CONVS
        .iter()
        .map(|c| ConversationState {
            conversation_id: (*c).into(),
            head_seq: HEAD,
            epoch: 1,
            ..Default::default()
        })
        .collect();
    h.sync_result(gen, sync, states, false);
    let mut server = ServerView::default();
    let mut out = h.step();
    let mut caught_up: HashMap<String, u64> = HashMap::new();
    for _ in 0..50 {
        let (pulls, finished) = server.apply(&out);
        assert!(
            server.open.len() <= LIMIT,
            "{} client streams open, limit {LIMIT}",
            server.open.len()
        );
        // The server answers every Pull, then finishes its side of every stream the client finished.
        for (serial, conversation, after) in pulls {
            let result = frame::PullResult {
                messages: (after + 1..=HEAD).map(|s| message(s, "bob")).collect(),
                head_seq: HEAD,
                has_more: false,
                epoch: 1,
            };
            let stream = StreamRef::Conv {
                serial,
                conversation,
            };
            h.core
                .handle_frame(gen, stream, f(Kind::PullResult(result)), h.now);
        }
        for serial in finished {
            let conversation = server.open.remove(&serial).expect("an open stream");
            let stream = StreamRef::Conv {
                serial,
                conversation,
            };
            h.core
                .handle_stream_ended(gen, stream, "finished".into(), None, h.now);
        }
        out = h.step();
        for e in h.events.drain(..) {
            if let Event::Message(m) = e {
                caught_up.insert(m.conversation.clone(), m.seq);
            }
        }
        if caught_up.len() == CONVS.len() && out.is_empty() {
            break;
        }
    }
    for c in CONVS {
        assert_eq!(caught_up.get(c), Some(&HEAD), "{c} caught up");
    }
    assert_eq!(server.most, LIMIT, "the limit was used, not exceeded");
    assert_eq!(server.opened, CONVS.len(), "one stream per conversation");
}

#[test]
fn sends_beyond_the_limit_wait_in_the_outbox_for_a_free_stream() {
    let mut h = Harness::new(settings(&[SERVER]));
    let (gen, _) = h.establish(false);
    welcome_with_stream_limit(&mut h, gen, 1);
    let sync = h.last_sync.expect("Sync with Hello");
    h.sync_result(gen, sync, vec![], false);
    h.step();
    // Two conversations, one slot: the first gets the stream, the second's Send stays queued.
    let _a = h.send("a-1");
    let other = |h: &mut Harness, id: &str| {
        let (reply, _rx) = oneshot::channel();
        let message = OutgoingMessage {
            conversation: CONVS[1].into(),
            client_msg_id: id.into(),
            body: Bytes::from_static(b"hi"),
        };
        let record = OutboxRecord::of(&message, 100, 0);
        h.core.handle_request(
            Request::Send {
                record,
                reply,
                message,
            },
            h.now,
        );
    };
    other(&mut h, "c-1");
    let out = h.step();
    let opens: Vec<&str> = out
        .iter()
        .filter_map(|t| match t {
            Transmit::Open { conversation, .. } => Some(conversation.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(opens, [CONV], "one stream only: {out:?}");
    assert_eq!(sends(&out), ["a-1"]);
    // While "a-1" is unanswered its stream is busy: nothing is finished.
    assert!(!out.iter().any(|t| matches!(t, Transmit::Forget { .. })));
    h.send_ack(gen, "a-1", 1);
    let out = h.step();
    let forgot = out.iter().find_map(|t| match t {
        Transmit::Forget { serial, .. } => Some(*serial),
        _ => None,
    });
    let serial = forgot.expect("the idle stream is finished to make room");
    assert!(
        !out.iter().any(|t| matches!(t, Transmit::Open { .. })),
        "no new stream before the finished one ended"
    );
    let stream = StreamRef::Conv {
        serial,
        conversation: CONV.into(),
    };
    h.core
        .handle_stream_ended(gen, stream, "finished".into(), None, h.now);
    let mut out = h.step();
    if sends(&out).is_empty() {
        // The stream opens in one pass, the queued Send follows in the next.
        out.extend(h.step());
    }
    assert!(out
        .iter()
        .any(|t| matches!(t, Transmit::Open { conversation, .. } if conversation == CONVS[1])));
    assert_eq!(sends(&out), ["c-1"]);
}

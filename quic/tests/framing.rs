//! FrameWriter and FrameReader over real quinn streams on loopback.

mod support;

use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Ack, Send};
use ferry_protocol::{frames, DecodeError, ErrorCode, Frame};
use ferry_quic::{FrameReader, FrameWriter, ReadError};
use support::Server;

const WAIT: Duration = Duration::from_secs(10);

fn ack(seq: u64) -> Frame {
    frame(Kind::Ack(Ack { seq }))
}

fn send_frame(body_len: usize) -> Frame {
    frame(Kind::Send(Send {
        client_msg_id: "m1".into(),
        body: Bytes::from(vec![0xab; body_len]),
    }))
}

/// Every frame until the stream ends cleanly.
async fn read_to_end(reader: &mut FrameReader) -> Vec<Frame> {
    let mut frames = Vec::new();
    // Bounded: a test stream carries fewer than 100k frames.
    for _ in 0..100_000 {
        match tokio::time::timeout(WAIT, reader.next()).await.unwrap() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return frames,
            Err(e) => panic!("read failed after {} frames: {e}", frames.len()),
        }
    }
    panic!("stream did not end")
}

#[tokio::test]
async fn many_frames_arrive_in_order_and_the_stream_finishes_when_the_last_handle_drops() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let (send, _recv) = connection.open_bi().await.unwrap();
    let writer = FrameWriter::spawn(send, 64);
    let other = writer.clone();
    for seq in 0..5_000 {
        writer.send(ack(seq)).await.unwrap();
    }
    let (_, _, recv) = server.accepted().await;
    drop(writer);
    // The clone keeps the stream open: its frame still arrives, after the first handle's.
    other.send(ack(5_000)).await.unwrap();
    drop(other);
    let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
    let got = read_to_end(&mut reader).await;
    assert_eq!(got, (0..=5_000).map(ack).collect::<Vec<_>>());
}

#[tokio::test]
async fn large_frames_cross_and_the_size_limit_is_a_typed_error() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let (send, _recv) = connection.open_bi().await.unwrap();
    let writer = FrameWriter::spawn(send, 8);
    let big = send_frame(900 * 1024);
    writer.send(big.clone()).await.unwrap();
    writer.send(send_frame(10_000)).await.unwrap();
    let (_, _, recv) = server.accepted().await;
    let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
    assert_eq!(reader.next().await.unwrap(), Some(big));
    // The limit announced later (Welcome) applies to the frames still to come.
    reader.set_max_frame_size(4096);
    let err = reader.next().await.unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Decode(DecodeError::FrameTooLarge { max: 4096, .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), Some(ErrorCode::FRAME_TOO_LARGE));
    assert_eq!(err.peer_code(), None);
}

#[tokio::test]
async fn a_reset_code_reaches_the_peer() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let (send, _recv) = connection.open_bi().await.unwrap();
    let writer = FrameWriter::spawn(send, 8);
    writer.send(ack(1)).await.unwrap();
    let (_, _, recv) = server.accepted().await;
    let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
    assert_eq!(reader.next().await.unwrap(), Some(ack(1)));
    writer.reset(ErrorCode::STREAM_CLOSED).await.unwrap();
    let err = tokio::time::timeout(WAIT, reader.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.peer_code(), Some(ErrorCode::STREAM_CLOSED), "{err:?}");
    assert_eq!(err.code(), None, "not the peer's bytes");
    // The task is gone: later frames are refused, not silently dropped.
    tokio::time::timeout(WAIT, async {
        while !writer.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert!(writer.send(ack(2)).await.is_err());
}

#[tokio::test]
async fn stop_reaches_the_writing_peer() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&codec::encode(&ack(1))).await.unwrap();
    let (_, _, recv) = server.accepted().await;
    let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
    assert_eq!(reader.next().await.unwrap(), Some(ack(1)));
    reader.stop(ErrorCode::STREAM_CLOSED);
    let stopped = tokio::time::timeout(WAIT, send.stopped()).await.unwrap();
    let code = stopped.unwrap().map(ferry_quic::codes::from_varint);
    assert_eq!(code, Some(Some(ErrorCode::STREAM_CLOSED)));
}

#[tokio::test]
async fn a_stream_abandoned_to_a_rejected_0rtt_does_not_finish_its_successor() {
    // A ticket from one server, shown to its twin (same name and certificate, other session cache):
    // the twin rejects the early data, and the streams opened in it die.
    let mut first = Server::start();
    let cache = ferry_quic::SessionCache::new();
    let client = first.client(&cache);
    let warm = client
        .connect(first.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = warm.open_bi().await.unwrap();
    send.write_all(&codec::encode(&ack(0))).await.unwrap();
    let (_, mut server_send, _) = first.accepted().await;
    server_send.write_all(b"ticket").await.unwrap();
    server_send.finish().unwrap();
    recv.read_to_end(16).await.unwrap();
    warm.close(0u32.into(), b"");

    let mut twin = Server::start_with(first.cert.clone(), first.key.clone());
    let (connection, accepted) = client
        .connect(twin.addr, "localhost")
        .unwrap()
        .into_0rtt()
        .expect("a ticket for this name and configuration");
    let (early_send, _early_recv) = connection.open_bi().await.unwrap();
    let early = FrameWriter::spawn(early_send, 8);
    early.send(ack(1)).await.unwrap();
    assert!(
        !accepted.await,
        "the twin has no such session: 0-RTT rejected"
    );

    // quinn gives the stream opened after the rejection the dead stream's id.
    let (send, _recv) = connection.open_bi().await.unwrap();
    let successor = FrameWriter::spawn(send, 8);
    successor.send(ack(2)).await.unwrap();
    early.abandon();
    drop(early);
    let (_, _, recv) = twin.accepted().await;
    let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
    assert_eq!(reader.next().await.unwrap(), Some(ack(2)));
    // Had the abandoned writer finished "its" stream, the successor would be finished by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    successor.send(ack(3)).await.unwrap();
    assert_eq!(reader.next().await.unwrap(), Some(ack(3)));
    drop(successor);
    assert_eq!(read_to_end(&mut reader).await, Vec::<Frame>::new());
}

#[tokio::test]
async fn pre_encoded_frames_are_shared_by_several_streams() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let deliver = codec::encode(&send_frame(300));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (send, _recv) = connection.open_bi().await.unwrap();
        let writer = FrameWriter::spawn(send, 8);
        writer.try_send_encoded(deliver.clone()).unwrap();
        writer.send(ack(7)).await.unwrap();
        drop(writer);
        let (_, _, recv) = server.accepted().await;
        readers.push(FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE));
    }
    for reader in &mut readers {
        assert_eq!(read_to_end(reader).await, vec![send_frame(300), ack(7)]);
    }
}

#[tokio::test]
async fn frames_queued_while_the_stream_opens_are_written_once_it_is_attached() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let (writer, pending) = FrameWriter::pending(8);
    writer.try_send(ack(1)).unwrap();
    writer.try_send(ack(2)).unwrap();
    let (send, _recv) = connection.open_bi().await.unwrap();
    pending.attach(send);
    drop(writer);
    let (_, _, recv) = server.accepted().await;
    let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
    assert_eq!(read_to_end(&mut reader).await, vec![ack(1), ack(2)]);
}

#[tokio::test]
async fn a_full_queue_is_reported_not_grown() {
    let (writer, _pending) = FrameWriter::pending(2);
    writer.try_send(ack(1)).unwrap();
    writer.try_send(ack(2)).unwrap();
    assert_eq!(writer.try_send(ack(3)), Err(ferry_quic::TrySendError::Full));
    assert!(writer.try_reserve().is_err());
}

#[tokio::test]
async fn closing_the_connection_delivers_the_last_frame_first() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let (mut send, recv) = connection.open_bi().await.unwrap();
    send.write_all(&codec::encode(&ack(0))).await.unwrap();
    let (server_connection, server_send, _) = server.accepted().await;
    // The server side writes a GoAway, then closes the connection with the same code.
    let writer = FrameWriter::spawn(server_send, 8);
    let go_away = frames::go_away(ErrorCode::SESSION_REPLACED, "replaced");
    writer.try_send(go_away.clone()).unwrap();
    writer
        .try_close_connection(ErrorCode::SESSION_REPLACED, "replaced", server_connection)
        .unwrap();
    let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
    assert_eq!(reader.next().await.unwrap(), Some(go_away));
    let closed = tokio::time::timeout(WAIT, connection.closed())
        .await
        .unwrap();
    assert_eq!(
        ferry_quic::codes::connection_code(&closed),
        Some(ErrorCode::SESSION_REPLACED)
    );
}

#[tokio::test]
async fn a_reader_that_never_reads_is_reset_past_the_queue_bound() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let (send, _recv) = connection.open_bi().await.unwrap();
    let writer = FrameWriter::spawn(send, 4);
    writer.send(ack(0)).await.unwrap();
    let (_, _, recv) = server.accepted().await;
    // The peer never reads: QUIC flow control stalls the writer task, then the queue fills. Bounded:
    // 64 KiB frames exhaust any send window in far fewer than 10k tries.
    let mut full = false;
    for _ in 0..10_000 {
        match writer.try_send_encoded_or_reset(codec::encode(&send_frame(64 * 1024))) {
            Ok(()) => tokio::task::yield_now().await,
            Err(ferry_quic::TrySendError::Full) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full, "the queue never filled");
    // The task resets the stream at once, although it was blocked in a write; its queue is freed.
    tokio::time::timeout(WAIT, async {
        while !writer.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the writer task ended");
    let mut reader = FrameReader::new(recv, codec::DEFAULT_MAX_FRAME_SIZE);
    let code = tokio::time::timeout(WAIT, async {
        // Bounded: the peer holds at most one send window of frames before the reset.
        for _ in 0..10_000 {
            if let Err(e) = reader.next().await {
                return e.peer_code();
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(code, Some(ErrorCode::STREAM_CLOSED));
}

#[tokio::test]
async fn a_full_queue_without_reset_keeps_the_stream() {
    let mut server = Server::start();
    let (_client, connection) = server.connect().await;
    let (send, _recv) = connection.open_bi().await.unwrap();
    let writer = FrameWriter::spawn(send, 4);
    writer.send(ack(0)).await.unwrap();
    let (_, _, _recv) = server.accepted().await;
    let mut full = false;
    for _ in 0..10_000 {
        if writer.try_send(send_frame(64 * 1024)) == Err(ferry_quic::TrySendError::Full) {
            full = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(full, "the queue never filled");
    // Plain try_send leaves the decision to the caller (the client keeps its batch and retries).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_closed(), "a plain full queue reset the stream");
}

//! Feature `fuzzing`: conversation streams without QUIC, for `fuzz/`'s `server_script` target.
//!
//! A QUIC stream costs the target packets, encryption and a round trip or two per input; the server's
//! per-stream frame handling is what the target is after. [`open_stream`] opens a conversation stream
//! on a live session of this process as if its client had opened one, but over an in-memory stream
//! (`ferry_quic::memory`): the server serves it with the very code that serves QUIC streams
//! (`conversation::stream`: the same limit on open streams, Open, the serve loop, refusals and resets),
//! and when the session's connection closes the stream fails with the connection's error, as a QUIC
//! stream would. The session itself (handshake, control stream, datagrams, server-opened streams)
//! stays on QUIC.
//!
//! Sessions are found through a registry of the connections this process serves (every server of the
//! process: the target runs one at a time).

use std::sync::{Arc, Mutex, Weak};

use ferry_protocol::ErrorCode;
use ferry_quic::memory::{self, MemoryStream};
use ferry_quic::{codes, FrameReader, FrameWriter};

use crate::connection::{Conn, STREAM_QUEUE};

/// Connections served by this process, newest last; dead entries are pruned on each registration.
static CONNECTIONS: Mutex<Vec<Weak<Conn>>> = Mutex::new(Vec::new());

/// Remembers an authenticated connection (called once its session is registered).
pub(crate) fn register(conn: &Arc<Conn>) {
    let mut connections = CONNECTIONS.lock().unwrap_or_else(|e| e.into_inner());
    connections.retain(|c| c.strong_count() > 0);
    connections.push(Arc::downgrade(conn));
}

/// The newest open connection of `user`'s `device`.
fn live(user: &str, device: &str) -> Option<Arc<Conn>> {
    let connections = CONNECTIONS.lock().unwrap_or_else(|e| e.into_inner());
    connections.iter().rev().find_map(|c| {
        let conn = c.upgrade()?;
        let matches = &*conn.session.user == user && &*conn.session.device == device;
        (matches && conn.connection.close_reason().is_none()).then_some(conn)
    })
}

/// Opens a conversation stream on the open session of `user`'s `device` as its client would: the
/// returned end is the client's. `None` if the device has no open session here.
///
/// Must be called within the server's tokio runtime.
pub fn open_stream(user: &str, device: &str) -> Option<MemoryStream> {
    let conn = live(user, device)?;
    let (client, server, severance) = memory::pair();
    let max = conn.shared.settings.limits.max_open_streams as usize;
    if conn.open_streams.load(std::sync::atomic::Ordering::Relaxed) >= max {
        // As `accept_loop` refuses a QUIC stream over the limit.
        let code = codes::to_varint(ErrorCode::TOO_MANY_STREAMS);
        let (mut send, mut recv) = (server.send, server.recv);
        let _ = send.reset(code);
        let _ = recv.stop(code);
        conn.shared.metrics.error(ErrorCode::TOO_MANY_STREAMS);
        return Some(client);
    }
    let writer = FrameWriter::spawn_memory(server.send, STREAM_QUEUE);
    let max_frame = conn.shared.settings.limits.max_frame_size as usize;
    let reader = FrameReader::from_memory(server.recv, max_frame);
    let connection = conn.connection.clone();
    let mut serve = tokio::spawn(crate::conversation::serve_client_stream(
        conn, writer, reader,
    ));
    // Bounded by the stream: this task ends with it, or severs it when the connection ends first.
    tokio::spawn(async move {
        tokio::select! {
            _ = &mut serve => {}
            error = connection.closed() => {
                severance.sever(error);
                let _ = serve.await;
            }
        }
    });
    Some(client)
}

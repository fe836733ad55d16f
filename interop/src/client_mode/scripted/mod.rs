//! A scripted ferry/1 server for the client cases that need a server to do what the reference server
//! never does on its own: hold `Welcome` back, change a conversation's epoch, hand out odd sync tokens,
//! refuse a Send with TOO_MANY_INFLIGHT, lose the answer to a CreateGroup, relay datagrams for strangers.
//!
//! It speaks the wire with quinn and the protocol crate only. A case accepts connections, reads every
//! frame and datagram the client sends as an [`Event`], answers the ones it cares about itself and hands
//! the rest to [`Conn::serve`], which answers from an in-memory [`Model`] of the user's conversations the
//! way a server following the spec would (Sync, Heartbeat, Pull, Send, Ack). Tokens are not verified.

//!
//! Layout: this file is the endpoint and the reader tasks that turn a connection into [`Event`]s;
//! [`Conn`] (`conn.rs`) is one connection as a case drives it; [`Model`] (`model.rs`) is the
//! in-memory server state the default answers come from; [`tls`](super::tls) makes its certificate.

mod conn;
mod model;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::codec;
use ferry_protocol::frames::kind_name;
use ferry_protocol::Frame;
use ferry_quic::FrameReader;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use conn::Conn;
pub use model::{random_nonzero, store_send, Conv, Model};

use super::ClientRun;
use crate::fail;
use crate::runner::Verdict;

/// Frames a scripted connection reads at most (the client's frames are small; this only bounds memory).
const MAX_FRAME: usize = 1 << 20;
/// Events buffered per connection before its reader tasks wait.
const EVENT_QUEUE: usize = 4096;

/// The index of the control stream (the first stream the client opens).
pub const CONTROL: usize = 0;

/// Something the client did on a connection.
#[derive(Debug, Clone)]
pub enum Event {
    /// A frame on the control stream.
    Control(Frame),
    /// A frame on conversation stream `stream` (see [`Conn::conversation_of`]).
    Stream(usize, Frame),
    /// The client finished or reset a stream.
    StreamEnded(usize),
    /// A datagram that decoded as a frame.
    Datagram(Frame),
    /// The connection ended (the reason as text).
    Closed(String),
}

impl Event {
    /// Short text for failure reasons: `control Sync`, `stream 3 Pull`, `datagram Typing`.
    pub fn describe(&self) -> String {
        match self {
            Event::Control(f) => format!("control {}", kind_name(f)),
            Event::Stream(i, f) => format!("stream {i} {}", kind_name(f)),
            Event::StreamEnded(i) => format!("stream {i} ended"),
            Event::Datagram(f) => format!("datagram {}", kind_name(f)),
            Event::Closed(why) => format!("connection closed ({why})"),
        }
    }
}

/// What the reader tasks pass to the connection.
enum Incoming {
    Event(Event),
    NewStream(usize, quinn::SendStream),
}

/// The scripted server: one QUIC endpoint on a free loopback port with a certificate of its own.
pub struct ScriptedServer {
    endpoint: quinn::Endpoint,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA file the client must trust.
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl ScriptedServer {
    /// Starts on a free loopback port; `quic_idle` is the QUIC idle timeout it advertises.
    pub fn start(quic_idle: Duration) -> Result<ScriptedServer, Verdict> {
        let setup = |what: &str, e: &dyn std::fmt::Display| {
            Verdict::Fail(format!("scripted server {what}: {e}"))
        };
        let dir = tempfile::tempdir().map_err(|e| setup("temp dir", &e))?;
        let cert =
            super::tls::SelfSigned::generate(dir.path()).map_err(|e| setup("certificate", &e))?;
        let config = cert
            .server_config(quic_idle)
            .map_err(|e| setup("config", &e))?;
        let endpoint =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("literal address"))
                .map_err(|e| setup("socket", &e))?;
        Ok(ScriptedServer {
            addr: endpoint
                .local_addr()
                .map_err(|e| setup("local address", &e))?,
            endpoint,
            ca: cert.cert_path,
            _dir: dir,
        })
    }

    /// The client's next connection, waiting at most `within`. The client exiting first is Unsupported
    /// (status 127) or a failure.
    pub async fn accept(&self, client: &mut ClientRun, within: Duration) -> Result<Conn, Verdict> {
        tokio::select! {
            conn = self.accept_within(within) => match conn {
                Some(conn) => Ok(conn),
                None => fail!("the client did not connect within {} s; stderr: {}", within.as_secs(), client.stderr_tail()),
            },
            status = client.child.wait() => {
                let code = status.ok().and_then(|s| s.code());
                if code == Some(super::UNSUPPORTED_EXIT) {
                    crate::unsupported!("the client does not support this case (exit 127)");
                }
                fail!("the client exited ({code:?}) without connecting; stderr: {}", client.stderr_tail());
            }
        }
    }

    /// The next connection that completes its QUIC set-up within `within`, if any.
    pub async fn accept_within(&self, within: Duration) -> Option<Conn> {
        let deadline = Instant::now() + within;
        loop {
            let incoming = tokio::time::timeout_at(deadline, self.endpoint.accept())
                .await
                .ok()??;
            // A connection attempt that fails (a client giving up mid-handshake) is not a connection.
            if let Ok(connecting) = incoming.accept() {
                if let Some(conn) = accepted(connecting).await {
                    return Some(conn);
                }
            }
        }
    }
}

/// Wraps an accepted connection. As 0.5-RTT, so that frames the client sends in early data are seen at
/// once, before the handshake completes.
async fn accepted(connecting: quinn::Connecting) -> Option<Conn> {
    match connecting.into_0rtt() {
        Ok((connection, _)) => Some(Conn::new(connection)),
        // quinn documents that servers always convert; should that change, wait for the handshake.
        Err(connecting) => connecting.await.ok().map(Conn::new),
    }
}
/// Accepts the client's streams (the first is the control stream) and datagrams, and queues them.
async fn read_connection(
    connection: quinn::Connection,
    tx: mpsc::Sender<Incoming>,
    next_stream: Arc<AtomicUsize>,
) {
    // A peer without datagram support makes read_datagram fail at once: stop polling it then.
    let mut datagrams = true;
    loop {
        tokio::select! {
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let index = next_stream.fetch_add(1, Ordering::SeqCst);
                    if tx.send(Incoming::NewStream(index, send)).await.is_err() {
                        return;
                    }
                    tokio::spawn(read_stream(index, recv, tx.clone()));
                }
                Err(e) => {
                    let _ = tx.send(Incoming::Event(Event::Closed(e.to_string()))).await;
                    return;
                }
            },
            datagram = connection.read_datagram(), if datagrams => match datagram {
                Ok(payload) => {
                    if let Ok(f) = codec::decode_datagram(&payload, MAX_FRAME) {
                        if tx.send(Incoming::Event(Event::Datagram(f))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(_) => datagrams = false, // a close is reported by the accept_bi branch
            },
        }
    }
}

/// Queues every frame of one stream, then its end.
async fn read_stream(index: usize, recv: quinn::RecvStream, tx: mpsc::Sender<Incoming>) {
    let mut reader = FrameReader::new(recv, MAX_FRAME);
    while let Ok(Some(f)) = reader.next().await {
        let event = if index == CONTROL {
            Event::Control(f)
        } else {
            Event::Stream(index, f)
        };
        if tx.send(Incoming::Event(event)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Incoming::Event(Event::StreamEnded(index))).await;
}

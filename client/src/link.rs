//! The network side of the driver: the QUIC endpoint, the current session's connection and stream
//! writers (through `conn`), and the core's [`Transmit`]s performed on them, including the probe of a
//! silent server's port ([`probe`]). No protocol logic: which frame goes where, and when, is the core's
//! decision.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{codec, ErrorCode};
use tokio::sync::mpsc;

use crate::builder::{Settings, TokenRefresher};
use crate::conn::{self, ConnShared, Established, Inbound, StreamRef, StreamWriter};
use crate::core::{LostReason, Target, Transmit};
use crate::error::ClientError;
use crate::event::{ConnectionState, Event};

/// How long the token refresher may take.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(30);

/// The I/O side of the current session: its connection and stream writers.
struct Link {
    gen: u64,
    conn: quinn::Connection,
    control: StreamWriter,
    streams: HashMap<String, StreamWriter>,
    /// The connection's accept and datagram tasks report under the gen stored here, and check datagram
    /// sizes against the maximum frame size stored here.
    shared: Arc<ConnShared>,
}

/// The endpoint and the current session's connection.
pub(crate) struct Wire {
    endpoint: quinn::Endpoint,
    server_name: String,
    connect_timeout: Duration,
    refresher: Option<TokenRefresher>,
    /// Stream serials, shared with the core (which numbers the streams it opens).
    serials: Arc<AtomicU64>,
    inbound_tx: mpsc::Sender<Inbound>,
    /// For the `Connecting` event, reported when the endpoint's address is known.
    events: mpsc::Sender<Event>,
    link: Option<Link>,
}

/// The local address to bind for talking to `remote`.
pub(crate) fn bind_addr(remote: &SocketAddr) -> SocketAddr {
    let ip: std::net::IpAddr = match (remote.is_ipv4(), remote.ip().is_loopback()) {
        (true, true) => std::net::Ipv4Addr::LOCALHOST.into(),
        (true, false) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        (false, true) => std::net::Ipv6Addr::LOCALHOST.into(),
        (false, false) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}

/// Resolves `host:port` (or parses an address).
pub(crate) async fn resolve(endpoint: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = endpoint.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| format!("resolving {endpoint}: {e}"))?
        .next()
        .ok_or_else(|| format!("{endpoint} has no address"))
}

/// What a probe of the server's port found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probed {
    /// ICMP port unreachable: nothing listens there any more.
    PortClosed,
    /// No verdict: the server may be alive, or its host gone or ICMP filtered.
    Unknown,
}

/// The byte a probe sends: a QUIC packet without the fixed bit, which a QUIC server discards (RFC 9000
/// §17.2 and §17.3), so a live server is not disturbed.
const PROBE_DATAGRAM: [u8; 1] = [0];
/// The longest wait for an ICMP answer, whatever the path's RTT.
const PROBE_WAIT_MAX: Duration = Duration::from_millis(500);
/// The wait for an ICMP answer beyond two RTTs. The answer of a closed port is read as soon as it
/// comes, so this margin never delays a verdict; it only decides how late an answer still counts. On a
/// loaded host the kernel may hand loopback and ICMP processing to ksoftirqd and the client's runtime
/// may poll the socket late, tens of ms after the RTT (with a 20 ms margin, `ferry-bench failover` at
/// load average 10 left about a quarter of the moved clients to the heartbeat timeout).
const PROBE_WAIT_MARGIN: Duration = Duration::from_millis(200);

/// Sends one datagram to `remote` from a connected UDP socket and waits up to two RTTs plus
/// [`PROBE_WAIT_MARGIN`] for the ICMP port unreachable that a live host sends for a closed port (Linux
/// reports it on the next `recv` of a connected socket as ECONNREFUSED). quinn's socket is not
/// connected and ignores ICMP errors, hence a socket of its own, opened only for the probe.
pub(crate) async fn probe(remote: SocketAddr, rtt: Duration) -> Probed {
    let wait = (2 * rtt + PROBE_WAIT_MARGIN).min(PROBE_WAIT_MAX);
    let attempt = async {
        let socket = tokio::net::UdpSocket::bind(bind_addr(&remote)).await?;
        socket.connect(remote).await?;
        socket.send(&PROBE_DATAGRAM).await?;
        let mut buf = [0u8; 64];
        // Nothing answers a live server's probe; a closed port makes this fail.
        socket.recv(&mut buf).await.map(|_| ())
    };
    match tokio::time::timeout(wait, attempt).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probed::PortClosed,
        _ => Probed::Unknown,
    }
}

/// The core's view of a lost connection.
pub(crate) fn lost_reason(error: &quinn::ConnectionError) -> LostReason {
    let app_close = match error {
        quinn::ConnectionError::ApplicationClosed(close) => Some((
            ErrorCode(close.error_code.into_inner() as u32),
            String::from_utf8_lossy(&close.reason).into_owned(),
        )),
        _ => None,
    };
    LostReason {
        app_close,
        description: error.to_string(),
    }
}

impl Wire {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        settings: &Settings,
        serials: Arc<AtomicU64>,
        inbound_tx: mpsc::Sender<Inbound>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Wire {
            endpoint,
            server_name: settings.server_name.clone(),
            connect_timeout: settings.connect_timeout,
            refresher: settings.refresher.clone(),
            serials,
            inbound_tx,
            events,
            link: None,
        }
    }

    /// The control stream of session `gen` is open: start its reader and writer (and, on a new
    /// connection, its accept and datagram tasks).
    pub(crate) fn set_up(&mut self, gen: u64, est: Established) {
        let Established {
            conn,
            control: (send, recv),
            ..
        } = est;
        let shared = ConnShared::new(gen);
        conn::spawn_connection_tasks(
            conn.clone(),
            shared.clone(),
            self.serials.clone(),
            self.inbound_tx.clone(),
        );
        tokio::spawn(conn::read_loop(
            recv,
            gen,
            StreamRef::Control,
            shared.clone(),
            self.inbound_tx.clone(),
        ));
        let link = Link {
            gen,
            conn,
            control: conn::spawn_writer(send, 0),
            streams: HashMap::new(),
            shared,
        };
        // The core closes a session before it starts another; this only keeps a leftover from leaking.
        if let Some(old) = self.link.replace(link) {
            old.conn.close(quinn::VarInt::from_u32(0), b"replaced");
        }
    }

    /// The server opened a conversation stream on session `gen` and the core adopted it for writing.
    pub(crate) fn adopt(
        &mut self,
        gen: u64,
        serial: u64,
        conversation: String,
        send: quinn::SendStream,
    ) {
        if let Some(link) = self.current(gen) {
            link.streams
                .insert(conversation, conn::spawn_writer(send, serial));
        }
    }

    /// Binds a new UDP socket (a network change) for the live session's remote address.
    pub(crate) fn rebind(&self, remote: SocketAddr) -> Result<(), ClientError> {
        std::net::UdpSocket::bind(bind_addr(&remote))
            .and_then(|socket| self.endpoint.rebind(socket))
            .map_err(|e| ClientError::Unreachable(format!("rebind: {e}")))
    }

    fn current(&mut self, gen: u64) -> Option<&mut Link> {
        self.link.as_mut().filter(|l| l.gen == gen)
    }

    /// Wakes the writer of every stream that has frames waiting (one write per stream per wake-up).
    pub(crate) fn flush(&mut self) {
        if let Some(link) = self.link.as_mut() {
            link.control.flush();
            for w in link.streams.values_mut() {
                w.flush();
            }
        }
    }

    /// Performs one of the core's transmits. Items of a session that is not the current one are dropped.
    pub(crate) fn perform(&mut self, t: Transmit) {
        match t {
            Transmit::Dial { gen, endpoint } => self.dial(gen, endpoint),
            Transmit::RefreshToken => self.refresh_token(),
            Transmit::Close { reason } => {
                if let Some(link) = self.link.take() {
                    link.conn
                        .close(quinn::VarInt::from_u32(0), reason.as_bytes());
                }
            }
            Transmit::Open {
                gen,
                conversation,
                serial,
            } => {
                let tx = self.inbound_tx.clone();
                let Some(link) = self.current(gen) else {
                    return;
                };
                let (writer, pending) = conn::pending_writer(serial);
                let (c, name) = (link.conn.clone(), conversation.clone());
                conn::spawn_open(c, gen, serial, name, pending, link.shared.clone(), tx);
                link.streams.insert(conversation, writer);
            }
            Transmit::Frame { gen, target, frame } => {
                let Some(link) = self.current(gen) else {
                    return;
                };
                let writer = match target {
                    Target::Control => Some(&mut link.control),
                    Target::Conv(conversation) => link.streams.get_mut(&conversation),
                };
                if let Some(writer) = writer {
                    tracing::trace!(
                        kind = ferry_protocol::frames::kind_name(&frame),
                        "frame out"
                    );
                    writer.push(&frame);
                }
            }
            Transmit::Forget {
                gen,
                conversation,
                serial,
            } => {
                let Some(link) = self.current(gen) else {
                    return;
                };
                if link.streams.get(&conversation).map(|w| w.serial) == Some(serial) {
                    link.streams.remove(&conversation);
                }
            }
            Transmit::Datagram { gen, frame } => {
                if let Some(link) = self.current(gen) {
                    let _ = link.conn.send_datagram(codec::encode_datagram(&frame));
                }
            }
            Transmit::MaxFrameSize { gen, size } => {
                if let Some(link) = self.current(gen) {
                    link.shared.max_frame_size.store(size, Ordering::Relaxed);
                }
            }
            Transmit::Probe { gen } => {
                if let Some(link) = self.current(gen) {
                    let (remote, rtt) = (link.conn.remote_address(), link.conn.rtt());
                    let tx = self.inbound_tx.clone();
                    tokio::spawn(async move {
                        if probe(remote, rtt).await == Probed::PortClosed {
                            let _ = tx.send(Inbound::PortClosed { gen }).await;
                        }
                    });
                }
            }
        }
    }

    fn dial(&self, gen: u64, endpoint: String) {
        tracing::debug!(gen, %endpoint, "dialling");
        let quic = self.endpoint.clone();
        let name = self.server_name.clone();
        let timeout = self.connect_timeout;
        let tx = self.inbound_tx.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            match resolve(&endpoint).await {
                Ok(addr) => {
                    let _ = events.try_send(Event::Connection(ConnectionState::Connecting {
                        endpoint: addr,
                    }));
                    conn::dial(quic, addr, name, gen, timeout, tx).await;
                }
                Err(e) => {
                    let result = Err(e);
                    let _ = tx.send(Inbound::Established { gen, result }).await;
                }
            }
        });
    }

    fn refresh_token(&self) {
        let Some(refresher) = self.refresher.clone() else {
            return;
        };
        let refresh = refresher();
        let tx = self.inbound_tx.clone();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(REFRESH_TIMEOUT, refresh).await {
                Ok(result) => result,
                Err(_) => Err("token refresh timed out".into()),
            };
            let _ = tx.send(Inbound::TokenRefreshed { result }).await;
        });
    }

    /// The client stops: close every connection of the endpoint, not only the current session's. A
    /// connection still being dialled, or set up by a dial task whose answer the stopped driver will
    /// never read, would otherwise stay open on the server until its idle timeout (seen as
    /// `ferry_connections_active` staying up after short CLI runs). Closing the endpoint also makes any
    /// dial still running fail at once.
    pub(crate) fn close(&mut self) {
        let code = quinn::VarInt::from_u32(ErrorCode::NO_ERROR.0);
        if let Some(link) = self.link.take() {
            link.conn.close(code, b"client shutdown");
        }
        self.endpoint.close(code, b"client shutdown");
    }

    /// Lets the CONNECTION_CLOSE reach the server before the endpoint goes away (bounded).
    pub(crate) async fn wait_idle(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_tells_a_closed_port_from_a_silent_one() {
        let rtt = Duration::from_millis(1);
        // A bound socket that never answers: a live server ignoring the probe.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let open = silent.local_addr().unwrap();
        assert_eq!(probe(open, rtt).await, Probed::Unknown);
        let mut byte = [0u8; 4];
        assert_eq!(silent.recv(&mut byte).unwrap(), 1, "the probe arrived");
        assert_eq!(byte[0], PROBE_DATAGRAM[0]);
        // The same port once nothing listens there: the host answers ICMP port unreachable.
        drop(silent);
        assert_eq!(probe(open, rtt).await, Probed::PortClosed);
    }
}

//! The server's QUIC transport parameters as it sent them (FERRY-TRANSPORT-5, -6, -9 are about values
//! only the handshake carries). quinn applies the peer's parameters but exposes none of them, so the
//! runner wraps quinn's rustls session: when quinn asks the session for the peer's parameters, the
//! wrapper keeps a copy in their wire encoding (RFC 9000 section 18), which [`PeerParams`] reads.
//! Everything else is delegated unchanged, so the connection is exactly the driver's.

use std::any::Any;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::crypto::{self, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey};
use quinn::{ConnectError, ConnectionId, Side};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::TransportError;

use crate::driver::DriverError;

/// Transport parameter ids (RFC 9000 section 18.2, RFC 9221).
const MAX_IDLE_TIMEOUT: u64 = 0x01;
const INITIAL_MAX_STREAMS_BIDI: u64 = 0x08;
const INITIAL_MAX_STREAMS_UNI: u64 = 0x09;
const MAX_DATAGRAM_FRAME_SIZE: u64 = 0x20;

/// The peer's transport parameters, decoded from their wire encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerParams {
    /// `(id, value bytes)` in the order sent.
    pub raw: Vec<(u64, Vec<u8>)>,
}

/// Why the recorded parameters could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    /// A varint or a length runs past the end.
    #[error("transport parameters truncated at byte {0}")]
    Truncated(usize),
    /// An integer parameter whose value is not exactly one varint.
    #[error("transport parameter {0:#x} is not a single varint")]
    NotAVarint(u64),
}

impl PeerParams {
    /// Decodes `id, length, value` triples.
    pub fn decode(mut bytes: &[u8]) -> Result<PeerParams, ParamsError> {
        let total = bytes.len();
        let mut raw = Vec::new();
        // Every triple consumes at least two bytes, so this ends within total / 2 + 1 rounds.
        while !bytes.is_empty() {
            let at = total - bytes.len();
            let id = read_varint(&mut bytes).ok_or(ParamsError::Truncated(at))?;
            let len = read_varint(&mut bytes).ok_or(ParamsError::Truncated(at))? as usize;
            if bytes.len() < len {
                return Err(ParamsError::Truncated(total - bytes.len()));
            }
            let (value, rest) = bytes.split_at(len);
            raw.push((id, value.to_vec()));
            bytes = rest;
        }
        Ok(PeerParams { raw })
    }

    /// An integer parameter; absent parameters have their RFC default, 0 for all of these.
    pub fn integer(&self, id: u64) -> Result<u64, ParamsError> {
        let Some((_, value)) = self.raw.iter().find(|(i, _)| *i == id) else {
            return Ok(0);
        };
        let mut slice = value.as_slice();
        match read_varint(&mut slice) {
            Some(v) if slice.is_empty() => Ok(v),
            _ => Err(ParamsError::NotAVarint(id)),
        }
    }

    /// `max_idle_timeout`; zero means the peer never idles out.
    pub fn max_idle_timeout(&self) -> Result<Duration, ParamsError> {
        self.integer(MAX_IDLE_TIMEOUT).map(Duration::from_millis)
    }

    /// `initial_max_streams_bidi`.
    pub fn initial_max_streams_bidi(&self) -> Result<u64, ParamsError> {
        self.integer(INITIAL_MAX_STREAMS_BIDI)
    }

    /// `initial_max_streams_uni`.
    pub fn initial_max_streams_uni(&self) -> Result<u64, ParamsError> {
        self.integer(INITIAL_MAX_STREAMS_UNI)
    }

    /// `max_datagram_frame_size` (0 = datagrams not supported).
    pub fn max_datagram_frame_size(&self) -> Result<u64, ParamsError> {
        self.integer(MAX_DATAGRAM_FRAME_SIZE)
    }
}

/// A QUIC variable-length integer (RFC 9000 section 16).
fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let first = *bytes.first()?;
    let len = 1usize << (first >> 6);
    if bytes.len() < len {
        return None;
    }
    let mut value = u64::from(first & 0x3f);
    for b in &bytes[1..len] {
        value = (value << 8) | u64::from(*b);
    }
    *bytes = &bytes[len..];
    Some(value)
}

/// Where a recording session leaves the peer's encoded parameters.
type Slot = Arc<Mutex<Option<Vec<u8>>>>;

/// A client endpoint (ALPN `ferry/1`, trusting `ca_file`) whose next connection's peer transport
/// parameters can be read with [`Recorder::params`]. One recorder per connection: the slot holds the
/// parameters of the connection started last.
pub struct Recorder {
    /// The endpoint to connect with.
    pub endpoint: quinn::Endpoint,
    slot: Slot,
}

impl Recorder {
    /// An endpoint like the driver's (same trust, ALPN, keep-alive), recording peer parameters.
    pub fn new(ca_file: &Path) -> Result<Recorder, DriverError> {
        let pem = std::fs::read(ca_file)?;
        let certs =
            ferry_quic::config::parse_pem(&pem).map_err(|e| DriverError::Tls(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| DriverError::Tls(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| DriverError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ferry_protocol::ALPN.to_vec()];
        let inner = QuicClientConfig::try_from(tls).map_err(|e| DriverError::Tls(e.to_string()))?;
        let slot = Slot::default();
        let recording = Recording {
            inner: Arc::new(inner),
            slot: slot.clone(),
        };
        let mut config = quinn::ClientConfig::new(Arc::new(recording));
        let mut transport = quinn::TransportConfig::default();
        // The client side of FERRY-TRANSPORT-9: PING well inside any idle timeout a server may pick.
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        config.transport_config(Arc::new(transport));
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal address"))?;
        endpoint.set_default_client_config(config);
        Ok(Recorder { endpoint, slot })
    }

    /// The parameters the peer of the last connection sent (None before its handshake got that far).
    pub fn params(&self) -> Option<Result<PeerParams, ParamsError>> {
        let bytes = self.slot.lock().expect("params slot").clone()?;
        Some(PeerParams::decode(&bytes))
    }
}

/// quinn's rustls client configuration, with sessions that record the peer's parameters.
struct Recording {
    inner: Arc<QuicClientConfig>,
    slot: Slot,
}

impl crypto::ClientConfig for Recording {
    fn start_session(
        self: Arc<Self>,
        version: u32,
        server_name: &str,
        params: &TransportParameters,
    ) -> Result<Box<dyn crypto::Session>, ConnectError> {
        let inner = self
            .inner
            .clone()
            .start_session(version, server_name, params)?;
        Ok(Box::new(RecordingSession {
            inner,
            slot: self.slot.clone(),
        }))
    }
}

/// A session that copies the peer's parameters into the slot and otherwise only delegates.
struct RecordingSession {
    inner: Box<dyn crypto::Session>,
    slot: Slot,
}

impl crypto::Session for RecordingSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.inner.handshake_data()
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        self.inner.read_handshake(buf)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        let params = self.inner.transport_parameters()?;
        if let Some(p) = &params {
            let mut encoded = Vec::new();
            p.write(&mut encoded);
            *self.slot.lock().expect("params slot") = Some(encoded);
        }
        Ok(params)
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.inner.write_handshake(buf)
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_triples_decode() {
        // max_idle_timeout = 60000 (4-byte varint 0x8000ea60), initial_max_streams_uni = 0 (1 byte),
        // max_datagram_frame_size = 65535 (4 bytes), an unknown id 0x2a with 2 opaque bytes.
        let bytes = [
            0x01, 0x04, 0x80, 0x00, 0xea, 0x60, 0x09, 0x01, 0x00, 0x20, 0x04, 0x80, 0x00, 0xff,
            0xff, 0x2a, 0x02, 0xab, 0xcd,
        ];
        let params = PeerParams::decode(&bytes).unwrap();
        assert_eq!(
            params.max_idle_timeout().unwrap(),
            Duration::from_millis(60_000)
        );
        assert_eq!(params.initial_max_streams_uni().unwrap(), 0);
        assert_eq!(params.max_datagram_frame_size().unwrap(), 65_535);
        // Absent: the RFC default 0.
        assert_eq!(params.initial_max_streams_bidi().unwrap(), 0);
        assert_eq!(params.raw.len(), 4);
    }

    #[test]
    fn bad_encodings_are_typed_errors() {
        assert_eq!(
            PeerParams::decode(&[0x01, 0x04, 0x80]),
            Err(ParamsError::Truncated(2))
        );
        assert_eq!(PeerParams::decode(&[0x40]), Err(ParamsError::Truncated(0)));
        let two_varints = PeerParams::decode(&[0x01, 0x02, 0x05, 0x06]).unwrap();
        assert_eq!(
            two_varints.max_idle_timeout(),
            Err(ParamsError::NotAVarint(MAX_IDLE_TIMEOUT))
        );
    }
}

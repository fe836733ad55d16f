//! Ferry error codes on QUIC (FERRY-TRANSPORT-10): a ferry [`ErrorCode`] travels as the QUIC
//! application error code of RESET_STREAM, STOP_SENDING and CONNECTION_CLOSE (type 0x1d), and comes back
//! from the quinn errors that carry one. Transport-level closes (type 0x1c, e.g. a TLS alert) are not
//! ferry codes and map to `None`.

use ferry_protocol::ErrorCode;
use quinn::VarInt;

/// The QUIC application error code for `code`. Every ferry code fits: codes are `u32`, a QUIC varint
/// holds 62 bits.
pub fn to_varint(code: ErrorCode) -> VarInt {
    VarInt::from_u32(code.0)
}

/// The ferry code a QUIC application error code stands for, or `None` for a value above `u32::MAX`
/// (no ferry code is that large, so a peer sending one is not speaking ferry/1).
pub fn from_varint(code: VarInt) -> Option<ErrorCode> {
    u32::try_from(code.into_inner()).ok().map(ErrorCode)
}

/// The code the peer closed the connection with, if it closed it with an application code.
pub fn connection_code(error: &quinn::ConnectionError) -> Option<ErrorCode> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => from_varint(close.error_code),
        _ => None,
    }
}

/// The code the peer reset the stream (or closed the connection) with, if any.
pub fn read_code(error: &quinn::ReadError) -> Option<ErrorCode> {
    match error {
        quinn::ReadError::Reset(code) => from_varint(*code),
        quinn::ReadError::ConnectionLost(e) => connection_code(e),
        _ => None,
    }
}

/// The code the peer stopped the stream (or closed the connection) with, if any.
pub fn write_code(error: &quinn::WriteError) -> Option<ErrorCode> {
    match error {
        quinn::WriteError::Stopped(code) => from_varint(*code),
        quinn::WriteError::ConnectionLost(e) => connection_code(e),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_oversized_values_are_not_ferry_codes() {
        for code in [
            ErrorCode::NO_ERROR,
            ErrorCode::PROTOCOL_ERROR,
            ErrorCode::SESSION_REPLACED,
            ErrorCode(u32::MAX),
        ] {
            assert_eq!(from_varint(to_varint(code)), Some(code));
        }
        assert_eq!(from_varint(VarInt::from_u64(1 << 32).unwrap()), None);
        let reset = quinn::ReadError::Reset(to_varint(ErrorCode::STREAM_CLOSED));
        assert_eq!(read_code(&reset), Some(ErrorCode::STREAM_CLOSED));
        let stopped = quinn::WriteError::Stopped(to_varint(ErrorCode::FRAME_TOO_LARGE));
        assert_eq!(write_code(&stopped), Some(ErrorCode::FRAME_TOO_LARGE));
        assert_eq!(read_code(&quinn::ReadError::ClosedStream), None);
    }
}

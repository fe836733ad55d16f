//! TLS and QUIC settings of the client: the one client configuration of `ferry-quic` (TLS 1.3 only,
//! ALPN `ferry/1`, early data (0-RTT) with an in-memory session cache per client or shared, see
//! [`SessionCache`], and the spec's QUIC keep-alive and idle timeout), with errors as [`ClientError`].

use ferry_quic::ClientConfigBuilder;
pub use ferry_quic::{SessionCache, TrustRoots};

use crate::error::ClientError;

/// Builds the quinn client configuration: tickets go to `cache`; `zero_rtt` enables early data on
/// resumption.
pub fn client_config(
    roots: &TrustRoots,
    cache: &SessionCache,
    zero_rtt: bool,
) -> Result<quinn::ClientConfig, ClientError> {
    ClientConfigBuilder::new(roots.clone())
        .session_cache(cache)
        .zero_rtt(zero_rtt)
        .build()
        .map_err(|e| ClientError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_pem_without_certificates() {
        assert!(matches!(
            client_config(
                &TrustRoots::Pem(b"not a pem".to_vec()),
                &SessionCache::new(),
                true
            ),
            Err(ClientError::Config(_))
        ));
    }
}

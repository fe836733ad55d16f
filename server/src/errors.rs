//! Mapping of lower-layer failures onto wire error codes (the one table lives in ferry-protocol).

use ferry_protocol::ErrorCode;
use ferry_store::StoreError;

/// A refused request: the wire code to answer with, why, and when the client may try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The wire code (from the one table in ferry-protocol).
    pub(crate) code: ErrorCode,
    /// A human-readable reason, sent as the Error's message.
    pub(crate) reason: String,
    /// Milliseconds the client should wait before repeating, 0 for no hint. Only a Send's Error
    /// carries it on the wire (FERRY-SEND-4); other answers ignore it.
    pub(crate) retry_after: u64,
}

impl Refusal {
    /// A refusal without a retry hint.
    pub(crate) fn new(code: ErrorCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
            retry_after: 0,
        }
    }

    /// The same refusal, telling the client to wait `millis` before repeating.
    pub(crate) fn retry_after(self, millis: u64) -> Refusal {
        Refusal {
            retry_after: millis,
            ..self
        }
    }
}

/// How long a client should wait after a store failure before repeating: an unavailable store
/// (restarting, failing over) is worth retrying soon; other failures carry no hint.
const STORE_RETRY_AFTER_MS: u64 = 100;

/// The wire code for a store failure. Storage trouble is INTERNAL (retryable: nothing was stored).
fn store_code(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::NotFound => ErrorCode::NOT_FOUND,
        StoreError::Forbidden(_) => ErrorCode::FORBIDDEN,
        StoreError::Invalid(_) => ErrorCode::INVALID_ARGUMENT,
        StoreError::Unavailable(_) | StoreError::Backend(_) => ErrorCode::INTERNAL,
    }
}

/// A store failure as a refusal.
pub(crate) fn from_store(error: StoreError) -> Refusal {
    let refusal = Refusal::new(store_code(&error), error.to_string());
    if matches!(error, StoreError::Unavailable(_)) {
        refusal.retry_after(STORE_RETRY_AFTER_MS)
    } else {
        refusal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_store_is_worth_retrying_soon() {
        let refusal = from_store(StoreError::Unavailable("restarting".into()));
        assert_eq!(refusal.code, ErrorCode::INTERNAL);
        assert_eq!(refusal.retry_after, STORE_RETRY_AFTER_MS);
        assert!(refusal.reason.contains("restarting"), "{}", refusal.reason);
    }

    #[test]
    fn other_store_failures_carry_their_code_and_no_retry_hint() {
        let cases = [
            (StoreError::NotFound, ErrorCode::NOT_FOUND),
            (StoreError::Forbidden("x".into()), ErrorCode::FORBIDDEN),
            (StoreError::Invalid("x".into()), ErrorCode::INVALID_ARGUMENT),
            (StoreError::Backend("disk".into()), ErrorCode::INTERNAL),
        ];
        for (error, code) in cases {
            let refusal = from_store(error);
            assert_eq!((refusal.code, refusal.retry_after), (code, 0));
        }
    }
}

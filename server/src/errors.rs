//! Mapping of lower-layer failures onto wire error codes (the one table lives in ferry-protocol).

use ferry_protocol::ErrorCode;
use ferry_store::StoreError;

/// A failure to answer with: the wire code and a human-readable reason.
pub type Refusal = (ErrorCode, String);

/// The wire code for a store failure. Storage trouble is INTERNAL (retryable: nothing was stored).
pub fn store_code(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::NotFound => ErrorCode::NOT_FOUND,
        StoreError::Forbidden(_) => ErrorCode::FORBIDDEN,
        StoreError::Invalid(_) => ErrorCode::INVALID_ARGUMENT,
        StoreError::Unavailable(_) | StoreError::Backend(_) => ErrorCode::INTERNAL,
    }
}

/// A store failure as a refusal.
pub fn from_store(error: StoreError) -> Refusal {
    (store_code(&error), error.to_string())
}

//! Push registrations: what the server needs to wake a device that has no connection (spec section 18).
//!
//! One registration per (user, device): registering again replaces it, and it is gone after an
//! unregister or when its endpoint answers 404/410. Both stores keep it as the prost encoding of
//! [`PushRecord`], so fields can be added without a migration.

/// Most devices of one user with a push registration; a registration beyond it is refused, so one user
/// cannot grow the store (or the notifier's per-message work) without bound.
pub const MAX_PUSH_DEVICES_PER_USER: usize = 16;

/// The refusal of a registration beyond [`MAX_PUSH_DEVICES_PER_USER`].
pub(crate) fn too_many_devices() -> crate::StoreError {
    crate::StoreError::Invalid(format!(
        "too many push registrations (at most {MAX_PUSH_DEVICES_PER_USER} devices per user)"
    ))
}

/// One device's push registration as stored.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PushRecord {
    /// The URL the server POSTs to (empty in push-gateway mode).
    #[prost(string, tag = "1")]
    pub endpoint: String,
    /// Opaque token copied into every notification (a gateway's pushkey).
    #[prost(string, tag = "2")]
    pub app_token: String,
    /// `ferry.v1.PushPolicy` as its wire value.
    #[prost(int32, tag = "3")]
    pub policy: i32,
    /// When it was registered, ms since the Unix epoch.
    #[prost(uint64, tag = "4")]
    pub registered_ms: u64,
}

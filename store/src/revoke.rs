//! Token revocation stamps (spec section 17.1, FERRY-HARDEN-5): "tokens of this user, or of this one
//! device, issued at or before second T are refused". One stamp per (user, device) plus one per user
//! for all its devices; a stamp only moves forward, so a late or repeated revocation never revives a
//! token an earlier one refused.

/// The device key under which a user-wide stamp is stored: empty, which no valid device id is.
pub(crate) const ALL_DEVICES: &str = "";

/// The device key for `device` (`None` = every device of the user).
pub(crate) fn device_key(device: Option<&str>) -> &str {
    device.unwrap_or(ALL_DEVICES)
}

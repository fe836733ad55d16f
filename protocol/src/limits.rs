//! The defaults of spec section 10: a zero (or absent) field of `Welcome.limits` means the default
//! (FERRY-LIMIT-1). Every party that reads announced limits takes them through [`effective`]. Also the
//! QUIC timers of spec section 9.3 that every client configuration uses.

use std::time::Duration;

use crate::frame::Limits;

/// How often a client sends QUIC keep-alive PINGs (FERRY-TRANSPORT-9): well under common NAT binding
/// timeouts, and shorter than the smallest idle timeout a server should advertise (15 s).
pub const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The QUIC `max_idle_timeout` endpoints should advertise (FERRY-TRANSPORT-9).
pub const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `Welcome.heartbeat_interval_ms` when it is 0 (FERRY-HB-1).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 25_000;

/// The limits of section 10's table when nothing is announced.
pub const DEFAULTS: Limits = Limits {
    max_frame_size: crate::codec::DEFAULT_MAX_FRAME_SIZE as u32,
    max_inflight_sends: 256,
    max_open_streams: 100,
    max_pull_page: 100,
    send_rate_per_sec: 1000,
    send_burst: 2000,
    max_body_size: 65_536,
    idle_timeout_ms: 75_000,
    recent_window: 50,
    typing_rate_per_sec: 5,
    max_sync_page: 100,
    stream_idle_timeout_ms: 60_000,
};

/// Announced limits with every zero field (or all of them, when `Welcome.limits` is absent) replaced by
/// its default.
pub fn effective(announced: Option<&Limits>) -> Limits {
    let Some(a) = announced else {
        return DEFAULTS;
    };
    let or = |v: u32, d: u32| if v == 0 { d } else { v };
    let d = DEFAULTS;
    Limits {
        max_frame_size: or(a.max_frame_size, d.max_frame_size),
        max_inflight_sends: or(a.max_inflight_sends, d.max_inflight_sends),
        max_open_streams: or(a.max_open_streams, d.max_open_streams),
        max_pull_page: or(a.max_pull_page, d.max_pull_page),
        send_rate_per_sec: or(a.send_rate_per_sec, d.send_rate_per_sec),
        send_burst: or(a.send_burst, d.send_burst),
        max_body_size: or(a.max_body_size, d.max_body_size),
        idle_timeout_ms: or(a.idle_timeout_ms, d.idle_timeout_ms),
        recent_window: or(a.recent_window, d.recent_window),
        typing_rate_per_sec: or(a.typing_rate_per_sec, d.typing_rate_per_sec),
        max_sync_page: or(a.max_sync_page, d.max_sync_page),
        stream_idle_timeout_ms: or(a.stream_idle_timeout_ms, d.stream_idle_timeout_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_absent_fields_take_the_defaults() {
        assert_eq!(effective(None), DEFAULTS);
        assert_eq!(effective(Some(&Limits::default())), DEFAULTS);
        let announced = Limits {
            max_frame_size: 4096,
            recent_window: 20,
            ..Limits::default()
        };
        let e = effective(Some(&announced));
        assert_eq!((e.max_frame_size, e.recent_window), (4096, 20));
        assert_eq!(e.max_inflight_sends, DEFAULTS.max_inflight_sends);
    }
}

//! `[push]` settings: where notifications may go, how they are coalesced and retried.
//!
//! Push is off unless `allow` names at least one URL prefix or `gateway` is set. Environment variables
//! are `FERRY_PUSH_<FIELD>` (`FERRY_PUSH_ALLOW` is comma-separated); the flags are `--push-allow`
//! (repeatable) and `--push-gateway`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Offline push (spec section 18).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// Push-gateway mode: every notification is POSTed to this URL (Matrix-push-gateway-like), which
    /// holds the APNs/FCM credentials, instead of to each device's endpoint.
    pub gateway: Option<String>,
    /// URL prefixes (`scheme://host[:port]/path/`, or `https://` for every public host) a device
    /// endpoint must start with. An endpoint on a private, loopback or link-local address is refused
    /// unless the prefix it matches names its host.
    pub allow: Vec<String>,
    /// At most one notification per device per window; the first message of a window is held until
    /// the window ends, and the notification carries the newest seq.
    pub coalesce_window_ms: u32,
    /// First retry delay after a 5xx, a 429, a timeout or a connection failure; doubles per attempt.
    pub retry_initial_ms: u32,
    /// Longest retry delay.
    pub retry_max_ms: u32,
    /// Attempts per notification (the first included) before it is dropped.
    pub max_attempts: u32,
    /// Time limit of one POST, connection included.
    pub request_timeout_ms: u32,
    /// Committed messages waiting for the notifier; when full, new ones are dropped and counted
    /// (`ferry_push_dropped_total`) rather than slowing the send path.
    pub queue: u32,
    /// POSTs in flight at once.
    pub max_inflight: u32,
    /// Devices with a pending notification at once (bounds the notifier's memory).
    pub max_pending_devices: u32,
    /// Extra CA certificates (PEM) to trust for endpoints and the gateway, besides the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Whether a device may register with the `body` policy (FERRY-PUSH-8): off by default, because a
    /// body in a push passes through the push service. Without it such a registration is refused.
    pub allow_body: bool,
    /// Largest message body a notification carries under the `body` policy; a larger one is left out
    /// (`"body_omitted": true`) and the app fetches it with Pull.
    pub body_max_bytes: u32,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            gateway: None,
            allow: Vec::new(),
            coalesce_window_ms: 1_000,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            max_attempts: 5,
            request_timeout_ms: 5_000,
            queue: 4_096,
            max_inflight: 64,
            max_pending_devices: 100_000,
            ca_file: None,
            allow_body: false,
            body_max_bytes: 2_048,
        }
    }
}

impl PushSettings {
    /// Whether the server sends pushes at all.
    pub fn enabled(&self) -> bool {
        self.gateway.is_some() || !self.allow.is_empty()
    }

    /// Applies one `FERRY_PUSH_*` variable; `Ok(false)` if `name` is not one of them.
    pub(crate) fn apply_env(&mut self, name: &str, value: &str) -> Result<bool, String> {
        fn num(value: &str) -> Result<u32, String> {
            value.parse().map_err(|e| format!("{e}"))
        }
        match name {
            "FERRY_PUSH_GATEWAY" => self.gateway = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "FERRY_PUSH_ALLOW" => {
                self.allow = value
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect()
            }
            "FERRY_PUSH_COALESCE_WINDOW_MS" => self.coalesce_window_ms = num(value)?,
            "FERRY_PUSH_RETRY_INITIAL_MS" => self.retry_initial_ms = num(value)?,
            "FERRY_PUSH_RETRY_MAX_MS" => self.retry_max_ms = num(value)?,
            "FERRY_PUSH_MAX_ATTEMPTS" => self.max_attempts = num(value)?,
            "FERRY_PUSH_REQUEST_TIMEOUT_MS" => self.request_timeout_ms = num(value)?,
            "FERRY_PUSH_QUEUE" => self.queue = num(value)?,
            "FERRY_PUSH_MAX_INFLIGHT" => self.max_inflight = num(value)?,
            "FERRY_PUSH_MAX_PENDING_DEVICES" => self.max_pending_devices = num(value)?,
            "FERRY_PUSH_CA_FILE" => self.ca_file = Some(value.into()),
            "FERRY_PUSH_ALLOW_BODY" => {
                self.allow_body = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("expected true or false, got {value:?}")),
                }
            }
            "FERRY_PUSH_BODY_MAX_BYTES" => self.body_max_bytes = num(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// What is wrong with these settings, if anything.
    pub(crate) fn problem(&self) -> Option<String> {
        if let Some(gateway) = &self.gateway {
            if let Err(e) = super::endpoint::parse_http_url(gateway) {
                return Some(format!("push.gateway {gateway:?}: {e}"));
            }
        }
        for prefix in &self.allow {
            if let Err(e) = super::endpoint::check_prefix(prefix) {
                return Some(format!("push.allow {prefix:?}: {e}"));
            }
        }
        let positive = [
            self.coalesce_window_ms,
            self.retry_initial_ms,
            self.max_attempts,
            self.request_timeout_ms,
            self.queue,
            self.max_inflight,
            self.max_pending_devices,
        ];
        if positive.contains(&0) {
            return Some("push.coalesce_window_ms, retry_initial_ms, max_attempts, request_timeout_ms, queue, max_inflight and max_pending_devices must be positive".into());
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Some("push.retry_max_ms must be at least push.retry_initial_ms".into());
        }
        None
    }

    pub(crate) fn window(&self) -> Duration {
        Duration::from_millis(u64::from(self.coalesce_window_ms))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{CliOverrides, ConfigError, Settings};

    fn load(
        toml: Option<&str>,
        env: &[(&str, &str)],
        cli: &CliOverrides,
    ) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = toml.map(|text| {
            let path = dir.path().join("ferry.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load(file.as_deref(), env, cli)
    }

    #[test]
    fn push_is_off_by_default_and_set_from_toml_env_and_flags() {
        let none = CliOverrides::default();
        assert!(!load(None, &[], &none).unwrap().push.enabled());
        let toml = "[push]\nallow = [\"https://push.example/\"]\ncoalesce_window_ms = 250\n";
        let s = load(Some(toml), &[], &none).unwrap();
        assert!(s.push.enabled());
        assert_eq!(s.push.coalesce_window_ms, 250);
        let env = [
            ("FERRY_PUSH_ALLOW", "https://a.example/, https://b.example/"),
            ("FERRY_PUSH_MAX_ATTEMPTS", "3"),
        ];
        let s = load(Some(toml), &env, &none).unwrap();
        assert_eq!(s.push.allow, ["https://a.example/", "https://b.example/"]);
        assert_eq!(s.push.max_attempts, 3);
        let flags = CliOverrides {
            push_allow: vec!["https://c.example/".into()],
            push_gateway: Some("https://gw.example/_matrix/push/v1/notify".into()),
            ..CliOverrides::default()
        };
        let s = load(Some(toml), &env, &flags).unwrap();
        assert_eq!(s.push.allow, ["https://c.example/"]);
        assert!(s.push.gateway.is_some());
    }

    #[test]
    fn bad_push_settings_are_refused_with_a_reason() {
        let none = CliOverrides::default();
        let err = load(
            Some("[push]\nallow = [\"https://push.example\"]\n"),
            &[],
            &none,
        )
        .unwrap_err();
        assert!(err.to_string().contains("must end with '/'"), "{err}");
        let err = load(None, &[("FERRY_PUSH_GATEWAY", "gw.example")], &none).unwrap_err();
        assert!(err.to_string().contains("push.gateway"), "{err}");
        let err = load(None, &[("FERRY_PUSH_QUEUE", "many")], &none).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("FERRY_PUSH_QUEUE: invalid value"),
            "{err}"
        );
        let err = load(
            Some("[push]\nallow = [\"https://p.example/\"]\nqueue = 0\n"),
            &[],
            &none,
        )
        .unwrap_err();
        assert!(err.to_string().contains("must be positive"), "{err}");
    }
}

//! Signed, expiring login tokens (spec/DECISIONS.md, "Auth tokens").
//!
//! A token is `v1.<payload>.<mac>`: `payload` is base64url (no padding) of the JSON
//! `{"sub": user, "dev": device, "aud": "ferry", "exp": unix secs, "iat": unix secs}` and `mac` is
//! base64url (no padding) of HMAC-SHA256(secret, `"v1." + payload`). The protocol treats tokens as
//! opaque; only this module knows the format.
//!
//! The secret lives in a file in the data dir: 64 lowercase hex digits (32 bytes), optionally followed
//! by a newline, mode 0600. Hex rather than raw bytes so an operator can copy it to the other nodes of
//! a cluster with ordinary tools.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ferry_protocol::ids::is_valid_name;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The only audience this server accepts.
const AUDIENCE: &str = "ferry";
/// Version prefix; it is part of the signed input, so a future format cannot be confused with v1.
const VERSION_PREFIX: &str = "v1";

/// Why a token or a secret file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token does not have the v1 shape, or its payload is not valid.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The MAC does not match: forged, corrupted, or signed with another secret.
    #[error("token signature does not match")]
    BadSignature,
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token was issued for another service.
    #[error("token is for another audience")]
    WrongAudience,
    /// Reading or writing the secret file failed.
    #[error("token secret {}: {source}", path.display())]
    Io {
        /// The secret file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The secret file does not hold 64 hex digits.
    #[error("token secret {}: expected 64 hex digits", path.display())]
    BadSecretFile {
        /// The secret file.
        path: PathBuf,
    },
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    /// User id (`sub`).
    pub(crate) user: String,
    /// Device id (`dev`); must equal `Hello.device_id`.
    pub(crate) device: String,
    /// Expiry, Unix seconds (`exp`).
    pub(crate) expires_at: u64,
    /// Issue time, Unix seconds (`iat`).
    pub(crate) issued_at: u64,
}

/// The JSON payload, with the wire's short field names.
#[derive(Serialize, Deserialize)]
struct Payload {
    sub: String,
    dev: String,
    aud: String,
    exp: u64,
    iat: u64,
}

/// The 32-byte HMAC key that signs and verifies tokens.
#[derive(Clone)]
pub struct TokenSecret([u8; 32]);

impl fmt::Debug for TokenSecret {
    // Never print the key, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

impl TokenSecret {
    /// A fresh random secret.
    pub fn generate() -> TokenSecret {
        TokenSecret(rand::random())
    }

    /// Reads the secret file at `path`.
    pub fn load(path: &Path) -> Result<TokenSecret, AuthError> {
        load_key(path).map(TokenSecret)
    }

    /// Reads the secret file at `path`, creating it (mode 0600) with a fresh secret if it is missing.
    pub fn load_or_create(path: &Path) -> Result<TokenSecret, AuthError> {
        load_or_create_key(path).map(TokenSecret)
    }

    /// A token for `user` on `device`, valid from `now` for `ttl`. The ids are not checked here
    /// (callers validate user input); a token with invalid ids never verifies.
    pub fn mint(&self, user: &str, device: &str, ttl: Duration, now: SystemTime) -> String {
        let iat = unix_secs(now);
        let payload = Payload {
            sub: user.to_owned(),
            dev: device.to_owned(),
            aud: AUDIENCE.to_owned(),
            exp: iat.saturating_add(ttl.as_secs()),
            iat,
        };
        let json = serde_json::to_vec(&payload).expect("payload serializes");
        self.sign(&URL_SAFE_NO_PAD.encode(json))
    }

    /// Checks the token's MAC (in constant time, before looking at the payload), then its audience,
    /// expiry and ids.
    pub(crate) fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        let (signed, mac_b64) = token
            .rsplit_once('.')
            .ok_or(AuthError::Malformed("expected v1.<payload>.<mac>"))?;
        let payload_b64 = signed
            .strip_prefix(VERSION_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or(AuthError::Malformed("expected v1.<payload>.<mac>"))?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac_b64)
            .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        self.hmac(signed)
            .verify_slice(&mac)
            .map_err(|_| AuthError::BadSignature)?;

        // Past this point the payload was written by someone holding the secret.
        let json = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| AuthError::Malformed("payload is not base64url"))?;
        let payload: Payload = serde_json::from_slice(&json)
            .map_err(|_| AuthError::Malformed("payload is not the expected JSON"))?;
        if payload.aud != AUDIENCE {
            return Err(AuthError::WrongAudience);
        }
        if unix_secs(now) >= payload.exp {
            return Err(AuthError::Expired);
        }
        if !is_valid_name(&payload.sub) || !is_valid_name(&payload.dev) {
            return Err(AuthError::Malformed("invalid user or device id"));
        }
        Ok(Claims {
            user: payload.sub,
            device: payload.dev,
            expires_at: payload.exp,
            issued_at: payload.iat,
        })
    }

    /// `v1.<payload_b64>.<mac>`.
    fn sign(&self, payload_b64: &str) -> String {
        let signed = format!("{VERSION_PREFIX}.{payload_b64}");
        let mac = URL_SAFE_NO_PAD.encode(self.hmac(&signed).finalize().into_bytes());
        format!("{signed}.{mac}")
    }

    fn hmac(&self, signed: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(signed.as_bytes());
        mac
    }
}

/// Reads a key file: 64 hex digits, optionally followed by a newline. The token secret and the admin
/// secret (`crate::revoke`) share this format, so an operator handles both with the same tools.
pub(crate) fn load_key(path: &Path) -> Result<[u8; 32], AuthError> {
    let io = |source| AuthError::Io {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    decode_hex(text.trim_end()).ok_or_else(|| AuthError::BadSecretFile {
        path: path.to_owned(),
    })
}

/// Reads the key file at `path`, creating it (mode 0600) with a fresh random key if it is missing.
pub(crate) fn load_or_create_key(path: &Path) -> Result<[u8; 32], AuthError> {
    let io = |source| AuthError::Io {
        path: path.to_owned(),
        source,
    };
    // `create_new` makes creation atomic: if two processes race, one creates and the other loads.
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match created {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return load_key(path),
        Err(e) => return Err(io(e)),
    };
    let key: [u8; 32] = rand::random();
    // Synced, because every token (or admin request) from now on depends on this file surviving a crash.
    writeln!(file, "{}", hex_of(&key))
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(key)
}

/// Lowercase hex of `key`.
pub(crate) fn hex_of(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn decode_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// A duration that [`parse_duration`] could not read.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {0:?}: expected a positive number with an optional unit s, m, h or d (e.g. 90s, 15m, 24h, 7d)")]
pub struct DurationError(String);

/// Parses `90s`, `15m`, `24h`, `7d`, or plain seconds (`3600`). Zero is rejected: no caller wants a
/// token or timeout that has already run out.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(s.to_owned());
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    // `u64::from_str` would accept a leading '+'; the digit scan above already rules that out.
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match n.checked_mul(multiplier) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn round_trip() {
        let secret = TokenSecret::generate();
        let token = secret.mint("alice", "phone-1", Duration::from_secs(60), at(NOW));
        let claims = secret.verify(&token, at(NOW + 59)).unwrap();
        assert_eq!(
            claims,
            Claims {
                user: "alice".into(),
                device: "phone-1".into(),
                expires_at: NOW + 60,
                issued_at: NOW,
            }
        );
    }

    #[test]
    fn expired_at_exp() {
        let secret = TokenSecret::generate();
        let token = secret.mint("alice", "phone", Duration::from_secs(60), at(NOW));
        assert!(matches!(
            secret.verify(&token, at(NOW + 60)),
            Err(AuthError::Expired)
        ));
    }

    #[test]
    fn another_secret_does_not_verify() {
        let token =
            TokenSecret::generate().mint("alice", "phone", Duration::from_secs(60), at(NOW));
        let other = TokenSecret::generate();
        assert!(matches!(
            other.verify(&token, at(NOW)),
            Err(AuthError::BadSignature)
        ));
    }

    #[test]
    fn forged_payload_or_mac_is_rejected() {
        let secret = TokenSecret::generate();
        let token = secret.mint("alice", "phone", Duration::from_secs(60), at(NOW));
        let payload_start = token.find('.').unwrap() + 1;
        let mac_start = token.rfind('.').unwrap() + 1;
        for index in [payload_start + 3, mac_start + 3] {
            let mut bytes = token.clone().into_bytes();
            // Swap between two base64url letters so the result still decodes.
            bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(bytes).unwrap();
            assert!(
                matches!(
                    secret.verify(&forged, at(NOW)),
                    Err(AuthError::BadSignature)
                ),
                "{forged}"
            );
        }
    }

    /// The token vector of spec/vectors/tokens.json (section 12.3): an outside issuer following the
    /// spec's text must produce exactly what this server mints and verifies.
    #[test]
    fn token_vectors_match_the_spec() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/tokens.json");
        let vectors: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(!vectors.is_empty(), "{path} holds no vector");
        for v in vectors {
            let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}"));
            let secret = TokenSecret(decode_hex(field("secret_hex")).expect("64 hex digits"));
            let now = v["valid_at_unix_s"].as_u64().expect("valid_at_unix_s");
            let minted = secret.sign(&URL_SAFE_NO_PAD.encode(field("payload_json")));
            assert_eq!(minted, field("token"), "{}", field("name"));
            let claims = secret
                .verify(field("token"), at(now))
                .expect("vector verifies");
            assert_eq!(
                (claims.user.as_str(), claims.device.as_str()),
                (field("user"), field("device"))
            );
        }
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let secret = TokenSecret::generate();
        let json = format!(
            r#"{{"sub":"alice","dev":"phone","aud":"other","exp":{},"iat":{NOW}}}"#,
            NOW + 60
        );
        let token = secret.sign(&URL_SAFE_NO_PAD.encode(json));
        assert!(matches!(
            secret.verify(&token, at(NOW)),
            Err(AuthError::WrongAudience)
        ));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let secret = TokenSecret::generate();
        let signed_json = |json: &str| secret.sign(&URL_SAFE_NO_PAD.encode(json));
        let valid = secret.mint("alice", "phone", Duration::from_secs(60), at(NOW));
        let cases = [
            String::new(),
            "nodots".to_owned(),
            valid.replacen("v1.", "v2.", 1),
            format!("{valid}!"),               // MAC not base64url
            secret.sign("not*base64"),         // payload not base64url (but signed)
            signed_json("[1,2,3]"),            // not the payload object
            signed_json(r#"{"sub":"alice"}"#), // missing fields
            signed_json(&format!(
                r#"{{"sub":"a:b","dev":"phone","aud":"ferry","exp":{},"iat":0}}"#,
                NOW + 60
            )),
        ];
        for token in cases {
            assert!(
                matches!(secret.verify(&token, at(NOW)), Err(AuthError::Malformed(_))),
                "{token:?}"
            );
        }
    }

    #[test]
    fn secret_file_is_created_0600_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.secret");
        let created = TokenSecret::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = created.mint("alice", "phone", Duration::from_secs(60), at(NOW));
        let reloaded = TokenSecret::load_or_create(&path).unwrap();
        assert!(reloaded.verify(&token, at(NOW)).is_ok());
        assert!(TokenSecret::load(&path)
            .unwrap()
            .verify(&token, at(NOW))
            .is_ok());
    }

    #[test]
    fn bad_secret_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.secret");
        std::fs::write(&path, "too short\n").unwrap();
        assert!(matches!(
            TokenSecret::load(&path),
            Err(AuthError::BadSecretFile { .. })
        ));
        assert!(matches!(
            TokenSecret::load(&dir.path().join("missing")),
            Err(AuthError::Io { .. })
        ));
    }

    #[test]
    fn durations() {
        let ok = [
            ("90s", 90),
            ("15m", 900),
            ("24h", 86_400),
            ("7d", 604_800),
            ("3600", 3600),
        ];
        for (text, secs) in ok {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_secs(secs),
                "{text}"
            );
        }
        for text in [
            "",
            "0",
            "0s",
            "h",
            "5x",
            "-5s",
            "+5",
            "1.5h",
            "5 m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?}");
        }
    }
}

//! Reading (not verifying) the claims of a ferry-server token `v1.<b64url(json)>.<mac>`: the CLI uses
//! them to default the device id and the store path. The server is the only party that verifies tokens.

use base64::Engine as _;

/// The claims the client cares about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct TokenClaims {
    /// The user id.
    pub sub: String,
    /// The device id.
    pub dev: String,
    /// Expiry, Unix seconds (0 if absent).
    #[serde(default)]
    pub exp: u64,
}

/// Decodes the payload of a `v1.` token; `None` if it is not one.
pub fn read_claims(token: &str) -> Option<TokenClaims> {
    let mut parts = token.split('.');
    if parts.next()? != "v1" {
        return None;
    }
    let payload = parts.next()?;
    parts.next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sub_and_dev_and_rejects_other_shapes() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"alice","dev":"phone","aud":"ferry","exp":99,"iat":1}"#);
        let claims = read_claims(&format!("v1.{payload}.mac")).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.dev, "phone");
        assert_eq!(claims.exp, 99);
        assert_eq!(read_claims(&format!("v2.{payload}.mac")), None);
        assert_eq!(read_claims(&format!("v1.{payload}")), None);
        assert_eq!(read_claims("v1.!!!.mac"), None);
    }
}

//! Bearer credentials: the scoring server's keys, and the parts the router's key, token and
//! admin checks share.

use crate::error::{ApiError, Credential};
use actix_web::HttpRequest;
use subtle::ConstantTimeEq;

/// The keys a server accepts; empty means authentication is off.
#[derive(Debug, Clone, Default)]
pub struct KeyAuth {
    keys: Vec<Vec<u8>>,
}

impl KeyAuth {
    pub fn new(keys: &[String]) -> KeyAuth {
        KeyAuth {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Accepts `Authorization: Bearer <key>` for any configured key.
    pub fn check(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let header = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.check_authorization(header)
    }

    /// The same check on an `Authorization` value from any transport (gRPC metadata too).
    pub fn check_authorization(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let keys: Vec<&[u8]> = self.keys.iter().map(Vec::as_slice).collect();
        if matches_any(
            authorization.and_then(bearer_credential).unwrap_or(""),
            &keys,
        ) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(Credential::Key))
        }
    }
}

/// The credential of `Authorization: Bearer <credential>`, if the request has one.
pub fn bearer(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credential)
}

/// The credential of an `Authorization` value `Bearer <credential>`.
pub fn bearer_credential(authorization: &str) -> Option<&str> {
    authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Whether `presented` equals one of `keys`, compared in constant time against every key so
/// timing says nothing about which one nearly matched. Empty keys never match.
pub fn matches_any(presented: &str, keys: &[&[u8]]) -> bool {
    let mut matched = subtle::Choice::from(0);
    for key in keys.iter().filter(|k| !k.is_empty()) {
        matched |= key.ct_eq(presented.as_bytes());
    }
    bool::from(matched) && !presented.is_empty()
}

/// A new key: 32 bytes from the operating system's generator, base64url without padding.
pub fn random_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random generator works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn accepts_either_key_and_nothing_else() {
        let auth = KeyAuth::new(&["primary".into(), "secondary".into()]);
        let with = |h: &str| {
            TestRequest::default()
                .insert_header(("Authorization", h))
                .to_http_request()
        };
        assert!(auth.check(&with("Bearer primary")).is_ok());
        assert!(auth.check(&with("Bearer secondary")).is_ok());
        assert!(auth.check(&with("Bearer primar")).is_err());
        assert!(auth.check(&with("primary")).is_err());
        assert!(
            auth.check(&TestRequest::default().to_http_request())
                .is_err()
        );
        assert!(!matches_any("", &[b""]), "an empty key never matches");
        assert_ne!(random_key(), random_key());
        assert_eq!(random_key().len(), 43);
        assert!(
            KeyAuth::new(&[])
                .check(&TestRequest::default().to_http_request())
                .is_ok()
        );
    }
}

//! Bearer key authentication for the scoring routes.

use crate::http_error::ApiError;
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

    /// Accepts `Authorization: Bearer <key>` for any configured key, comparing in constant
    /// time and checking every key so timing says nothing about which one nearly matched.
    pub fn check(&self, request: &HttpRequest) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let presented = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        let mut matched = subtle::Choice::from(0);
        for key in &self.keys {
            matched |= key.as_slice().ct_eq(presented.as_bytes());
        }
        if bool::from(matched) && !presented.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
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
        assert!(
            KeyAuth::new(&[])
                .check(&TestRequest::default().to_http_request())
                .is_ok()
        );
    }
}

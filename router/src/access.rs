//! Who may call what at the router. A webservice's scoring routes take one of its two keys,
//! or a token the management API issued for it, or nothing when its auth is off; the
//! management routes take the admin key. Every refusal is the same 401, whatever was wrong.

use super::catalog::{AuthMode, Kind, Webservice};
use actix_web::HttpRequest;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use modelpod_http::ApiError;
use modelpod_http::auth::{bearer, matches_any};
use modelpod_http::error::Credential;
use std::time::Duration;

const ISSUER: &str = "modelpod";

/// Azure's token lifetime: refresh after half of it.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    iss: String,
    /// The one webservice the token is for: `service:<name>` or `endpoint:<name>`.
    aud: String,
    iat: i64,
    exp: i64,
    refresh_by: i64,
    /// The webservice's token generation when the token was issued.
    #[serde(default)]
    generation: String,
}

/// A token as the management API hands it out (Azure's `get_token`: the token and when to
/// refresh it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IssuedToken {
    pub access_token: String,
    pub token_type: String,
    /// Unix seconds after which the token is refused.
    pub expiry_on: i64,
    /// Unix seconds after which a client should ask for a new one.
    pub refresh_by: i64,
}

/// Signs and checks service tokens with the router's HS256 secret.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    lifetime: Duration,
}

fn audience(kind: Kind, name: &str) -> String {
    format!("{}:{name}", kind.singular())
}

impl Tokens {
    pub fn new(secret: &str, lifetime: Duration) -> Tokens {
        Tokens {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            lifetime,
        }
    }

    pub fn issue(&self, name: &str, webservice: &Webservice) -> IssuedToken {
        let now = jiff::Timestamp::now().as_second();
        let lifetime = self.lifetime.as_secs() as i64;
        let claims = Claims {
            iss: ISSUER.into(),
            aud: audience(webservice.kind, name),
            iat: now,
            exp: now + lifetime,
            refresh_by: now + lifetime / 2,
            generation: webservice.token_generation.clone(),
        };
        let access_token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
                .expect("HS256 signing of plain claims cannot fail");
        IssuedToken {
            access_token,
            token_type: "Bearer".into(),
            expiry_on: claims.exp,
            refresh_by: claims.refresh_by,
        }
    }

    /// Whether `token` is this router's, unexpired, for this webservice, and issued since its
    /// tokens were last revoked.
    pub fn accepts(&self, token: &str, name: &str, webservice: &Webservice) -> bool {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[audience(webservice.kind, name)]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).is_ok_and(|t| {
            matches_any(
                &t.claims.generation,
                &[webservice.token_generation.as_bytes()],
            )
        })
    }
}

/// Checks a scoring request against the webservice's auth mode.
pub fn authorize(
    request: &HttpRequest,
    name: &str,
    webservice: &Webservice,
    tokens: &Tokens,
) -> Result<(), ApiError> {
    authorize_credential(bearer(request), name, webservice, tokens)
}

/// Checks the credential a scoring call presented (`Authorization: Bearer <credential>`, as
/// an HTTP header or gRPC metadata) against the webservice's auth mode.
pub fn authorize_credential(
    presented: Option<&str>,
    name: &str,
    webservice: &Webservice,
    tokens: &Tokens,
) -> Result<(), ApiError> {
    let presented = presented.unwrap_or("");
    let allowed = match webservice.auth {
        AuthMode::None => true,
        AuthMode::Key => matches_any(
            presented,
            &[
                webservice.primary_key.as_bytes(),
                webservice.secondary_key.as_bytes(),
            ],
        ),
        AuthMode::Token => tokens.accepts(presented, name, webservice),
    };
    match (allowed, webservice.auth) {
        (true, _) => Ok(()),
        (false, AuthMode::Token) => Err(ApiError::Unauthorized(Credential::Token)),
        (false, _) => Err(ApiError::Unauthorized(Credential::Key)),
    }
}

/// Checks a management request for the admin key.
pub fn authorize_admin(request: &HttpRequest, admin_key: &str) -> Result<(), ApiError> {
    if matches_any(bearer(request).unwrap_or(""), &[admin_key.as_bytes()]) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(Credential::AdminKey))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webservice(kind: Kind, generation: &str) -> Webservice {
        Webservice {
            kind,
            auth: AuthMode::Token,
            primary_key: "p".into(),
            secondary_key: "s".into(),
            token_generation: generation.into(),
            description: String::new(),
            tags: Default::default(),
            versions: Vec::new(),
        }
    }

    #[test]
    fn tokens_are_refused_when_expired_forged_revoked_or_for_another_webservice() {
        let tokens = Tokens::new("secret", Duration::from_secs(60));
        let iris = webservice(Kind::Service, "g1");
        let issued = tokens.issue("iris", &iris);
        assert!(tokens.accepts(&issued.access_token, "iris", &iris));
        assert!(issued.refresh_by < issued.expiry_on);
        assert!(!tokens.accepts(&issued.access_token, "digits", &iris));
        assert!(!tokens.accepts(
            &issued.access_token,
            "iris",
            &webservice(Kind::Endpoint, "g1")
        ));
        // Re-created, switched away and back, or a key regenerated: a new generation.
        assert!(!tokens.accepts(
            &issued.access_token,
            "iris",
            &webservice(Kind::Service, "g2")
        ));
        let forger = Tokens::new("other secret", Duration::from_secs(60));
        assert!(!tokens.accepts(&forger.issue("iris", &iris).access_token, "iris", &iris));
        let now = jiff::Timestamp::now().as_second();
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                iss: ISSUER.into(),
                aud: audience(Kind::Service, "iris"),
                iat: now - 120,
                exp: now - 1,
                refresh_by: now - 60,
                generation: "g1".into(),
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(!tokens.accepts(&expired, "iris", &iris));
        // An unsigned token ("alg": "none") is not a token.
        let unsigned = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            issued.access_token.split('.').nth(1).unwrap()
        );
        assert!(!tokens.accepts(&unsigned, "iris", &iris));
        assert!(!tokens.accepts("", "iris", &iris));
    }
}

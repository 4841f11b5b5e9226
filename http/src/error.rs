//! The one place where errors become HTTP status codes and JSON bodies.
//!
//! Every error body carries `error` (what Open Inference Protocol clients such as tritonclient
//! read) and `message` plus `error_type` (Azure's shape), so one body serves both protocols.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use modelpod_scoring::ScoringError;
use serde_json::json;
use std::fmt;

/// What a 401 asks for, so the message names the credential the route really takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A service key (Azure's primary or secondary key).
    Key,
    /// A token from the management API (`tokenAuthEnabled`).
    Token,
    /// The router's admin key.
    AdminKey,
}

#[derive(Debug)]
pub enum ApiError {
    Scoring(ScoringError),
    Unauthorized(Credential),
    PayloadTooLarge {
        limit: usize,
    },
    NotFound(String),
    /// The caller may be who it says, but this route is switched off for everyone (repository
    /// control without `--model-control-mode explicit`): 403.
    Forbidden(String),
    /// The client did not send its whole body in time: 408.
    RequestTimeout(String),
    /// The router's replica failed the request after it was sent (it died, or answered
    /// nonsense): 502.
    BadGateway(String),
    /// A management change names something that exists already: 409.
    Conflict(String),
    /// The router could not carry out a valid change (its state file cannot be written, a
    /// deployment cannot start): 500.
    Internal(String),
}

impl From<ScoringError> for ApiError {
    fn from(e: ScoringError) -> Self {
        ApiError::Scoring(e)
    }
}

impl ApiError {
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Scoring(e) => e.kind(),
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::PayloadTooLarge { .. } => "PayloadTooLarge",
            ApiError::NotFound(_) => "NotFound",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::RequestTimeout(_) => "RequestTimeout",
            ApiError::BadGateway(_) => "BadGateway",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Internal(_) => "InternalError",
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Scoring(e) => write!(f, "{e}"),
            // Never say which part of the credential was wrong.
            ApiError::Unauthorized(Credential::Key) => {
                f.write_str("authentication required: send Authorization: Bearer <key>")
            }
            ApiError::Unauthorized(Credential::Token) => f.write_str(
                "authentication required: this service takes tokens, not keys: send \
                 Authorization: Bearer <token> (a token comes from the service's token endpoint)",
            ),
            ApiError::Unauthorized(Credential::AdminKey) => {
                f.write_str("authentication required: send Authorization: Bearer <admin key>")
            }
            ApiError::PayloadTooLarge { limit } => {
                write!(f, "the request body exceeds the limit of {limit} bytes")
            }
            ApiError::NotFound(what)
            | ApiError::Forbidden(what)
            | ApiError::RequestTimeout(what)
            | ApiError::BadGateway(what)
            | ApiError::Conflict(what)
            | ApiError::Internal(what) => write!(f, "{what}"),
        }
    }
}

/// Query-string extraction that fails with this module's JSON 400, not actix's plain text.
pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default().error_handler(|e, _| {
        ApiError::from(ScoringError::BadRequest(format!("query string: {e}"))).into()
    })
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Scoring(e) => match e {
                ScoringError::BadRequest(_) => StatusCode::BAD_REQUEST,
                ScoringError::InvalidInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ScoringError::ModelNotFound(_) => StatusCode::NOT_FOUND,
                ScoringError::ModelUnavailable(_) | ScoringError::Overloaded(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                ScoringError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
                ScoringError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = self.to_string();
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized(_)) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        // The rest of a body that stalled cannot be told from the next request.
        if matches!(self, ApiError::RequestTimeout(_)) {
            response.force_close();
        }
        response.json(json!({ "error": message, "message": message, "error_type": self.kind() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status() {
        let cases = [
            (ApiError::from(ScoringError::BadRequest("x".into())), 400),
            (ScoringError::InvalidInput("x".into()).into(), 422),
            (ScoringError::ModelNotFound("x".into()).into(), 404),
            (ScoringError::ModelUnavailable("x".into()).into(), 503),
            (ScoringError::Overloaded("x".into()).into(), 503),
            (ScoringError::DeadlineExceeded("x".into()).into(), 504),
            (ScoringError::Engine("x".into()).into(), 500),
            (ApiError::Unauthorized(Credential::Key), 401),
            (ApiError::PayloadTooLarge { limit: 1 }, 413),
            (ApiError::Forbidden("x".into()), 403),
            (ApiError::RequestTimeout("x".into()), 408),
            (ApiError::BadGateway("x".into()), 502),
            (ApiError::Conflict("x".into()), 409),
            (ApiError::Internal("x".into()), 500),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
        }
    }
}

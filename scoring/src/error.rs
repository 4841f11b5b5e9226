//! Errors a request can meet between the HTTP layer and an engine. Each variant is one
//! client-visible kind; the server maps kinds to status codes in one place.

use modelpod_accel::{EngineError, TensorError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ScoringError {
    /// The body is not what the protocol says (malformed JSON, missing fields): 400.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed, but the tensors do not fit the model (shape, dtype, count): 422.
    #[error("{0}")]
    InvalidInput(String),
    /// 404.
    #[error("{0}")]
    ModelNotFound(String),
    /// The model exists but cannot serve now (loading, failed, unloaded): 503.
    #[error("{0}")]
    ModelUnavailable(String),
    /// Admission refused the request (queue full, shutting down): 503.
    #[error("{0}")]
    Overloaded(String),
    /// The scoring deadline passed before a result was ready: 504.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The engine failed on valid input: 500.
    #[error("{0}")]
    Engine(String),
}

impl ScoringError {
    /// A short machine-readable name for the kind, used in error bodies and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ScoringError::BadRequest(_) => "BadRequest",
            ScoringError::InvalidInput(_) => "InvalidInput",
            ScoringError::ModelNotFound(_) => "ModelNotFound",
            ScoringError::ModelUnavailable(_) => "ModelUnavailable",
            ScoringError::Overloaded(_) => "Overloaded",
            ScoringError::DeadlineExceeded(_) => "DeadlineExceeded",
            ScoringError::Engine(_) => "EngineError",
        }
    }
}

impl From<EngineError> for ScoringError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::BadInput { .. } => ScoringError::InvalidInput(e.to_string()),
            EngineError::Load { .. }
            | EngineError::OrtUnavailable(_)
            | EngineError::Unavailable { .. } => ScoringError::ModelUnavailable(e.to_string()),
            EngineError::Run(_) => ScoringError::Engine(e.to_string()),
        }
    }
}

impl From<TensorError> for ScoringError {
    fn from(e: TensorError) -> Self {
        ScoringError::InvalidInput(e.to_string())
    }
}

//! What modelpod's two HTTP servers (the scoring server and the router) share, so that neither
//! imports the other: the one map from errors to status codes and JSON bodies, request bodies
//! read within their limit, request ids, the health and not-found answers, bearer keys, TLS,
//! the gRPC status map and listener, the metrics recorder and logging set-up.

pub mod auth;
pub mod body;
pub mod cors;
pub mod error;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod request_id;
pub mod telemetry;
pub mod tls;

pub use error::ApiError;

//! modelpod's runtime: configuration, the scoring server (`modelpod serve`), the load generator
//! (`modelpod bench`), the router and autoscaler (`modelpod route`), authentication,
//! metrics and the one mapping from errors to HTTP responses.

pub mod auth;
pub mod azure_config;
pub mod bench;
pub mod cli_output;
pub mod config;
pub mod http_error;
pub mod manage;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod route;
pub mod serve;
pub mod telemetry;
pub mod tls;

pub use config::{ServeArgs, ServeConfig};
pub use serve::{RunningServer, ScoringServer};

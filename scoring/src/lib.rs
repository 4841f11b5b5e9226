//! Everything between a decoded request and an engine, with no transport: the model
//! repository and its manifests, the registry of model versions and their states, the Azure
//! `/score` pipeline (pre- and post-processing), the Open Inference Protocol v2 codecs, the
//! dynamic and sequence batchers, and the scoring API every front end calls ([`Scorer`]: admission, queue
//! wait, on-demand loading, the deadline and the busy state).

pub mod batcher;
pub mod busy;
pub mod deployment;
pub mod error;
pub mod inference_config;
pub mod json;
pub mod manifest;
pub mod memory;
pub mod pipeline;
pub mod registry;
pub mod repository;
pub mod scorer;
pub mod sequence;
pub mod shared_memory;
pub mod statistics;
pub mod v2;

pub use deployment::{DeploymentConfig, ScoringLimits};

/// The answer header in which a scoring server says what it ran, as `model/version`: what
/// the router labels collected data with, whatever the request said.
pub const SERVED_MODEL_HEADER: &str = "x-modelpod-model";
pub use error::ScoringError;
pub use memory::{AllocationMeter, DeviceMemoryMeter, Footprint, MemoryBudget};
pub use registry::{IndexEntry, ModelState, Registry, RegistryConfig, ServedModel};
pub use scorer::Scorer;

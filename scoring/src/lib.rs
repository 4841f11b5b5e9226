//! Everything between a request and an engine, with no HTTP: the model repository and its
//! manifests, the registry of model versions and their states, the Azure `/score` pipeline
//! (pre- and post-processing), the Open Inference Protocol v2 codecs, and the dynamic batcher.

pub mod batcher;
pub mod error;
pub mod json;
pub mod manifest;
pub mod memory;
pub mod pipeline;
pub mod registry;
pub mod repository;
pub mod v2;

pub use error::ScoringError;
pub use memory::{AllocationMeter, DeviceMemoryMeter, Footprint, MemoryBudget};
pub use registry::{IndexEntry, ModelState, Registry, RegistryConfig, ServedModel};

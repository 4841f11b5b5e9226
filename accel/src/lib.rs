//! Devices and inference engines for modelpod.
//!
//! A small synchronous [`Backend`] trait (one session, owned by one worker thread), the
//! [`LoadedModel`] that hands sessions out, and the engines behind them: tract (pure Rust,
//! always available, and on CUDA through tract-cuda) and ONNX Runtime (loaded dynamically, on
//! the CPU or through its TensorRT, CUDA and Vitis AI execution providers), and the engine plan
//! that picks among them from what the node really has, from the node's VM size ([`node`]).
//! No async here; the only network call is the optional instance metadata query.

mod backend;
mod device;
pub mod node;
pub mod ort_engine;
pub mod plan;
pub mod probe;
mod signature;
pub mod sku;
mod tensor;
pub mod tract_engine;

pub use backend::{
    Backend, EngineChoice, EngineError, EngineFamily, EngineKind, EngineOptions, LoadedModel,
    SharedModel, load_model,
};
pub use device::{Device, DeviceKind, HOST_MEMORY};

/// Whether this build has ONNX Runtime's Vitis AI engine (cargo feature `vitis-ai`).
pub const VITIS_AI_BUILT: bool = cfg!(feature = "vitis-ai");
pub use signature::{MapKeys, Signature, TensorSpec};
pub use tensor::{DataType, Tensor, TensorData, TensorError, bf16, element_count, f16};

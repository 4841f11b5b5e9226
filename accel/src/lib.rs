//! Devices and inference engines for modelpod.
//!
//! A small synchronous [`Backend`] trait (one session, owned by one worker thread), the
//! [`LoadedModel`] that hands sessions out, and the engines behind them: tract (pure Rust,
//! always available) and ONNX Runtime (loaded dynamically). No HTTP and no async here.

mod backend;
pub mod ort_engine;
pub mod probe;
mod signature;
pub mod sku;
mod tensor;
pub mod tract_engine;

pub use backend::{
    Backend, EngineChoice, EngineError, EngineKind, EngineOptions, LoadedModel, SharedModel,
    load_model,
};
pub use signature::{Signature, TensorSpec};
pub use tensor::{DataType, Tensor, TensorData, TensorError};

//! The engine-facing contract: a loaded model hands out synchronous [`Backend`] instances,
//! one per worker thread.

use crate::{Signature, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// One engine session. `run` takes the model's inputs in signature order and returns its
/// outputs in signature order. Instances are owned by one worker thread each.
pub trait Backend: Send {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError>;
}

/// A model compiled by an engine, shared by all of its workers.
pub trait LoadedModel: Send + Sync {
    fn engine(&self) -> EngineKind;
    fn signature(&self) -> &Signature;
    /// Creates one more session; engines whose sessions share weights do so here.
    fn instantiate(&self) -> Result<Box<dyn Backend>, EngineError>;
}

pub type SharedModel = Arc<dyn LoadedModel>;

/// The engines modelpod can run a model on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// tract: pure Rust, always available.
    Tract,
    /// ONNX Runtime (CPU execution provider) through a dynamically loaded library.
    Ort,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Tract => "tract",
            EngineKind::Ort => "ort",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator asked for: a specific engine, or the best available one.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// ONNX Runtime when its library loads, tract otherwise.
    #[default]
    Auto,
    Tract,
    Ort,
}

impl FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(EngineChoice::Auto),
            "tract" => Ok(EngineChoice::Tract),
            "ort" | "onnxruntime" => Ok(EngineChoice::Ort),
            other => Err(format!(
                "unknown backend '{other}' (expected auto, tract or ort)"
            )),
        }
    }
}

impl fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Tract => "tract",
            EngineChoice::Ort => "ort",
        })
    }
}

/// Per-model engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub choice: EngineChoice,
    /// ONNX Runtime intra-op threads per session. Set explicitly: under contention with
    /// other workers the library's default pool (one thread per core) is slower than one.
    pub intra_op_threads: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            choice: EngineChoice::Auto,
            intra_op_threads: 1,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime is not available: {0}")]
    OrtUnavailable(String),
    #[error("input '{name}': {reason}")]
    BadInput { name: String, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
}

/// Loads `path` with the engine `options` select. `Auto` tries ONNX Runtime and falls back
/// to tract, logging why.
pub fn load_model(
    path: &std::path::Path,
    options: &EngineOptions,
) -> Result<SharedModel, EngineError> {
    match options.choice {
        EngineChoice::Tract => Ok(Arc::new(crate::tract_engine::TractModel::load(path)?)),
        EngineChoice::Ort => Ok(Arc::new(crate::ort_engine::OrtModel::load(path, options)?)),
        EngineChoice::Auto => match crate::ort_engine::ort_status() {
            Ok(()) => Ok(Arc::new(crate::ort_engine::OrtModel::load(path, options)?)),
            Err(why) => {
                tracing::debug!(%why, "ONNX Runtime unavailable; using tract");
                Ok(Arc::new(crate::tract_engine::TractModel::load(path)?))
            }
        },
    }
}

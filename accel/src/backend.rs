//! The engine-facing contract: a loaded model hands out synchronous [`Backend`] instances,
//! one per worker thread.

use crate::{Device, DeviceKind, Signature, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
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
    fn device(&self) -> Device;
    fn signature(&self) -> &Signature;
    /// Creates one more session; engines whose sessions share weights do so here.
    fn instantiate(&self) -> Result<Box<dyn Backend>, EngineError>;
}

pub type SharedModel = Arc<dyn LoadedModel>;

/// The engines modelpod can run a model on: an inference library and the device it drives.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// ONNX Runtime's TensorRT execution provider (NVIDIA).
    OrtTensorrt,
    /// ONNX Runtime's CUDA execution provider (NVIDIA).
    OrtCuda,
    /// ONNX Runtime's Vitis AI execution provider (Xilinx FPGAs); only with the `vitis-ai`
    /// cargo feature.
    OrtVitisai,
    /// ONNX Runtime on the CPU.
    OrtCpu,
    /// tract's CUDA runtime (pure Rust over cudarc).
    TractCuda,
    /// tract on the CPU: pure Rust, always available.
    TractCpu,
}

impl EngineKind {
    pub const ALL: [EngineKind; 6] = [
        EngineKind::OrtTensorrt,
        EngineKind::OrtCuda,
        EngineKind::OrtVitisai,
        EngineKind::OrtCpu,
        EngineKind::TractCuda,
        EngineKind::TractCpu,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::OrtTensorrt => "ort-tensorrt",
            EngineKind::OrtCuda => "ort-cuda",
            EngineKind::OrtVitisai => "ort-vitisai",
            EngineKind::OrtCpu => "ort-cpu",
            EngineKind::TractCuda => "tract-cuda",
            EngineKind::TractCpu => "tract-cpu",
        }
    }

    pub fn family(self) -> EngineFamily {
        match self {
            EngineKind::OrtTensorrt
            | EngineKind::OrtCuda
            | EngineKind::OrtVitisai
            | EngineKind::OrtCpu => EngineFamily::Ort,
            EngineKind::TractCuda | EngineKind::TractCpu => EngineFamily::Tract,
        }
    }

    pub fn device_kind(self) -> DeviceKind {
        match self {
            EngineKind::OrtTensorrt | EngineKind::OrtCuda | EngineKind::TractCuda => {
                DeviceKind::Gpu
            }
            EngineKind::OrtVitisai => DeviceKind::Fpga,
            EngineKind::OrtCpu | EngineKind::TractCpu => DeviceKind::Cpu,
        }
    }

    /// Triton's `platform` for a model this engine serves.
    pub fn triton_platform(self) -> &'static str {
        match self.family() {
            EngineFamily::Ort => "onnxruntime_onnx",
            EngineFamily::Tract => "tract_onnx",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inference library behind an engine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EngineFamily {
    Ort,
    Tract,
}

/// What the operator asked for: the best engine the node offers, the best of one library, or
/// exactly one engine.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum EngineChoice {
    /// The node's engine plan, best first (see [`crate::plan`]).
    #[default]
    Auto,
    /// The best ONNX Runtime engine of the plan.
    Ort,
    /// The best tract engine of the plan.
    Tract,
    /// This engine and no other: failing to load on it fails the model.
    Exactly(EngineKind),
}

impl EngineChoice {
    /// Whether `engine` satisfies this choice.
    pub fn admits(self, engine: EngineKind) -> bool {
        match self {
            EngineChoice::Auto => true,
            EngineChoice::Ort => engine.family() == EngineFamily::Ort,
            EngineChoice::Tract => engine.family() == EngineFamily::Tract,
            EngineChoice::Exactly(kind) => kind == engine,
        }
    }
}

impl FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(EngineChoice::Auto),
            "tract" => Ok(EngineChoice::Tract),
            "ort" | "onnxruntime" => Ok(EngineChoice::Ort),
            other => EngineKind::ALL
                .into_iter()
                .find(|k| k.as_str() == other)
                .map(EngineChoice::Exactly)
                .ok_or_else(|| {
                    format!(
                        "unknown engine '{other}' (expected auto, ort, tract or one of {})",
                        EngineKind::ALL.map(EngineKind::as_str).join(", ")
                    )
                }),
        }
    }
}

impl fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineChoice::Auto => f.write_str("auto"),
            EngineChoice::Tract => f.write_str("tract"),
            EngineChoice::Ort => f.write_str("ort"),
            EngineChoice::Exactly(kind) => kind.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for EngineChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for EngineChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Per-model engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// ONNX Runtime intra-op threads per session. Set explicitly: under contention with
    /// other workers the library's default pool (one thread per core) is slower than one.
    pub intra_op_threads: usize,
    /// The device is required: an accelerator engine must not hand any part of the graph back
    /// to the CPU (ONNX Runtime's `session.disable_cpu_ep_fallback`).
    pub strict_placement: bool,
    /// Where ONNX Runtime's TensorRT provider keeps built engines; none disables the cache.
    pub tensorrt_cache: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            intra_op_threads: 1,
            strict_placement: false,
            tensorrt_cache: None,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime is not available: {0}")]
    OrtUnavailable(String),
    /// The engine cannot run here at all (no device, library or provider), whatever the model.
    #[error("{engine} is not available: {reason}")]
    Unavailable { engine: EngineKind, reason: String },
    #[error("input '{name}': {reason}")]
    BadInput { name: String, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
}

/// Loads `path` on `engine`, bound to `device`. No fallback happens here: an engine that
/// cannot run on the device says why, and [`crate::plan`] decides what to try next.
pub fn load_model(
    path: &Path,
    engine: EngineKind,
    device: Device,
    options: &EngineOptions,
) -> Result<SharedModel, EngineError> {
    if engine.device_kind() != device.kind() {
        return Err(EngineError::Unavailable {
            engine,
            reason: format!("{engine} does not run on {device}"),
        });
    }
    match engine.family() {
        EngineFamily::Tract => Ok(Arc::new(crate::tract_engine::TractModel::load(
            path, engine, device,
        )?)),
        EngineFamily::Ort => Ok(Arc::new(crate::ort_engine::OrtModel::load(
            path, engine, device, options,
        )?)),
    }
}

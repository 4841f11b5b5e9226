//! The per-model manifest, `<repository>/<model>/model.toml`: what the ONNX file does not say
//! (batching, instances, engine) and the entry-script equivalent for Azure's `/score`.

use modelpod_accel::{DataType, DeviceKind, EngineChoice};
use serde::Deserialize;
use std::path::Path;

pub const MANIFEST_FILE: &str = "model.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// ONNX file inside each version folder (default `model.onnx`, else the only `*.onnx`).
    pub file: Option<String>,
    /// Engine for this model (`auto`, `ort`, `tract` or one engine such as `ort-cuda`); the
    /// server's `--backend` applies when absent. One engine named exactly is never fallen
    /// back from.
    pub engine: Option<EngineChoice>,
    /// Device kind the model must run on (`cpu`, `gpu`, `fpga`): no engine of another kind is
    /// tried, and an accelerator engine may not hand graph nodes back to the CPU.
    pub device: Option<DeviceKind>,
    /// CUDA devices (ordinals) the instances are spread over; default every GPU found.
    pub gpus: Option<Vec<u32>>,
    /// Worker instances per device, each owning one engine session (Triton's instance group
    /// `count`).
    pub instances: Option<usize>,
    /// ONNX Runtime intra-op threads per instance.
    pub intra_op_threads: Option<usize>,
    #[serde(default)]
    pub batching: Option<BatchingSection>,
    #[serde(default)]
    pub score: ScoreSection,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchingSection {
    /// 0 disables batching; otherwise dimension 0 of every input and output is the batch.
    pub max_batch_size: Option<usize>,
    pub max_queue_delay_us: Option<u64>,
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScoreSection {
    /// Model input fed by `"data"` (default: the only input). With several inputs and no
    /// `input`, `"data"` is an object keyed by input name.
    pub input: Option<String>,
    /// Model output returned (default: every output).
    pub output: Option<String>,
    #[serde(default)]
    pub pre: Vec<PreStep>,
    #[serde(default)]
    pub post: Vec<PostStep>,
}

/// Pre-processing of the `"data"` input, applied per row.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PreStep {
    Cast {
        to: DataType,
    },
    Reshape {
        shape: Vec<usize>,
    },
    /// `x * factor + offset`.
    Scale {
        factor: f64,
        #[serde(default)]
        offset: f64,
    },
    /// `(x - mean[c]) / std[c]` over channels along the row's first axis.
    Normalize {
        mean: Vec<f64>,
        std: Vec<f64>,
    },
}

/// Post-processing of the returned output, applied per row over its last axis.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PostStep {
    Softmax,
    Argmax {
        labels: Option<String>,
    },
    Topk {
        k: usize,
        labels: Option<String>,
    },
    /// Drops the output's last dimension, which must be 1: a regressor's `[[198.95], ...]`
    /// answers `[198.95, ...]`, as the scikit-learn model it came from did on Azure.
    Squeeze,
}

impl PreStep {
    /// The step's `op`, as the manifest names it.
    pub fn name(&self) -> &'static str {
        match self {
            PreStep::Cast { .. } => "cast",
            PreStep::Reshape { .. } => "reshape",
            PreStep::Scale { .. } => "scale",
            PreStep::Normalize { .. } => "normalize",
        }
    }
}

impl PostStep {
    /// The step's `op`, as the manifest names it.
    pub fn name(&self) -> &'static str {
        match self {
            PostStep::Softmax => "softmax",
            PostStep::Argmax { .. } => "argmax",
            PostStep::Topk { .. } => "topk",
            PostStep::Squeeze => "squeeze",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl ModelManifest {
    /// Reads `dir/model.toml`; a missing file is an empty manifest.
    pub fn read_from_dir(dir: &Path) -> Result<ModelManifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let invalid = |reason: String| ManifestError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(invalid(e.to_string())),
        };
        let manifest: ModelManifest = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        if self.instances == Some(0) {
            return Err("instances must be at least 1".into());
        }
        if self.gpus.as_ref().is_some_and(|g| g.is_empty()) {
            return Err("gpus, when given, must name at least one CUDA device".into());
        }
        if self.gpus.is_some() && matches!(self.device, Some(DeviceKind::Cpu | DeviceKind::Fpga)) {
            return Err("gpus only applies to GPU engines, but device is not gpu".into());
        }
        if let Some(b) = &self.batching {
            let max = b.max_batch_size.unwrap_or(usize::MAX);
            if let Some(p) = b.preferred_batch_sizes.iter().find(|&&p| p == 0 || p > max) {
                return Err(format!(
                    "preferred batch size {p} must be between 1 and max_batch_size"
                ));
            }
        }
        for step in &self.score.pre {
            if let PreStep::Normalize { mean, std } = step {
                if mean.len() != std.len() || mean.is_empty() {
                    return Err("normalize needs mean and std of the same, non-zero length".into());
                }
                if std.contains(&0.0) {
                    return Err("normalize std must not contain 0".into());
                }
            }
        }
        for step in &self.score.post {
            if let PostStep::Topk { k: 0, .. } = step {
                return Err("topk k must be at least 1".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_schema() {
        let m: ModelManifest = toml::from_str(
            r#"
            engine = "tract"
            instances = 2
            [batching]
            max_batch_size = 16
            max_queue_delay_us = 500
            preferred_batch_sizes = [8, 16]
            [score]
            input = "image"
            pre = [{ op = "reshape", shape = [1, 8, 8] }, { op = "scale", factor = 0.5 }, { op = "cast", to = "FP32" }]
            post = [{ op = "softmax" }, { op = "topk", k = 3, labels = "labels.txt" }]
            "#,
        )
        .unwrap();
        assert_eq!(m.engine, Some(EngineChoice::Tract));

        assert_eq!(
            m.batching.as_ref().unwrap().preferred_batch_sizes,
            vec![8, 16]
        );
        assert_eq!(m.score.pre.len(), 3);
        assert_eq!(
            m.score.post[1],
            PostStep::Topk {
                k: 3,
                labels: Some("labels.txt".into())
            }
        );
        m.validate().unwrap();
        let m: ModelManifest =
            toml::from_str("engine = \"ort-cuda\"\ndevice = \"gpu\"\ngpus = [0, 2]").unwrap();
        assert_eq!(
            m.engine,
            Some(EngineChoice::Exactly(modelpod_accel::EngineKind::OrtCuda))
        );
        assert_eq!(m.device, Some(DeviceKind::Gpu));
        m.validate().unwrap();
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<ModelManifest>("instanses = 2").is_err());
        assert!(toml::from_str::<ModelManifest>("[score]\npre = [{ op = \"blur\" }]").is_err());
        let m: ModelManifest =
            toml::from_str("[batching]\nmax_batch_size = 4\npreferred_batch_sizes = [8]").unwrap();
        assert!(m.validate().is_err());
        let m: ModelManifest = toml::from_str("instances = 0").unwrap();
        assert!(m.validate().is_err());
        assert!(toml::from_str::<ModelManifest>("engine = \"ort-rocm\"").is_err());
        assert!(toml::from_str::<ModelManifest>("device = \"tpu\"").is_err());
        let m: ModelManifest = toml::from_str("device = \"cpu\"\ngpus = [0]").unwrap();
        assert!(m.validate().is_err());
    }
}

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
    /// A stateful model's sequence batcher (Triton's `sequence_batching`), in place of the
    /// dynamic batcher; `[batching]` then sets `max_batch_size` only.
    pub sequence_batching: Option<SequenceBatchingSection>,
    #[serde(default)]
    pub score: ScoreSection,
}

/// How a sequence batcher groups the requests of many sequences.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SequenceStrategy {
    /// Each sequence owns one batch slot of one instance for its lifetime; a batch holds one
    /// request per slot, empty slots padded with READY = 0.
    #[default]
    Direct,
    /// Each instance keeps up to `max_candidate_sequences` sequences and batches the oldest
    /// requests among them, one per sequence.
    Oldest,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SequenceBatchingSection {
    #[serde(default)]
    pub strategy: SequenceStrategy,
    /// A sequence with no request for this long is ended and its slot freed (Triton's
    /// default, 1 s, when absent).
    pub max_sequence_idle_us: Option<u64>,
    /// How long a batch waits for more sequences' requests.
    pub max_queue_delay_us: Option<u64>,
    /// `oldest` only: sequences each instance batches among (default max_batch_size).
    pub max_candidate_sequences: Option<usize>,
    /// `oldest` only: batch sizes sent without waiting for the delay.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
    /// Model inputs the batcher fills in, which clients do not send.
    #[serde(default)]
    pub control: SequenceControls,
    /// Implicit state: each `output` of a request is the `input` of the sequence's next one.
    #[serde(default)]
    pub state: Vec<SequenceState>,
}

/// Model inputs that carry a request's place in its sequence: 1 or 0 (true or false) in the
/// input's own type, and the correlation id as a number or, for a BYTES input, as text.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SequenceControls {
    pub start: Option<String>,
    pub end: Option<String>,
    pub ready: Option<String>,
    pub correlation_id: Option<String>,
}

impl SequenceControls {
    /// `(kind, input name)` for each mapped control.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("start", &self.start),
            ("end", &self.end),
            ("ready", &self.ready),
            ("correlation_id", &self.correlation_id),
        ]
        .into_iter()
        .filter_map(|(kind, name)| name.as_deref().map(|n| (kind, n)))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SequenceState {
    pub input: String,
    pub output: String,
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
        if let Some(sequence) = &self.sequence_batching {
            if let Some(b) = &self.batching
                && (b.max_queue_delay_us.is_some() || !b.preferred_batch_sizes.is_empty())
            {
                return Err(
                    "with [sequence_batching], [batching] sets max_batch_size only; \
                     the delay and preferred sizes belong to [sequence_batching]"
                        .into(),
                );
            }
            if sequence.strategy == SequenceStrategy::Direct
                && (sequence.max_candidate_sequences.is_some()
                    || !sequence.preferred_batch_sizes.is_empty())
            {
                return Err(
                    "max_candidate_sequences and preferred_batch_sizes apply to the \
                     oldest strategy only"
                        .into(),
                );
            }
            if sequence.max_candidate_sequences == Some(0) {
                return Err("max_candidate_sequences must be at least 1".into());
            }
            let mut names: Vec<&str> = sequence.control.named().map(|(_, n)| n).collect();
            names.extend(sequence.state.iter().map(|s| s.input.as_str()));
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(format!(
                    "input '{}' is mapped twice in [sequence_batching]",
                    w[0]
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
    fn parses_a_sequence_batcher() {
        let m: ModelManifest = toml::from_str(
            r#"
            [batching]
            max_batch_size = 4
            [sequence_batching]
            strategy = "oldest"
            max_sequence_idle_us = 5000000
            max_candidate_sequences = 8
            control = { start = "START", ready = "READY", correlation_id = "CORRID" }
            state = [{ input = "total_in", output = "total_out" }]
            "#,
        )
        .unwrap();
        m.validate().unwrap();
        let sequence = m.sequence_batching.unwrap();
        assert_eq!(sequence.strategy, SequenceStrategy::Oldest);
        assert_eq!(
            sequence.control.named().collect::<Vec<_>>(),
            [
                ("start", "START"),
                ("ready", "READY"),
                ("correlation_id", "CORRID")
            ]
        );
        assert_eq!(sequence.state[0].output, "total_out");
        for bad in [
            "[batching]\nmax_queue_delay_us = 5\n[sequence_batching]",
            "[sequence_batching]\nmax_candidate_sequences = 2",
            "[sequence_batching]\ncontrol = { start = \"S\", end = \"S\" }",
            "[sequence_batching]\nstrategy = \"oldest\"\nmax_candidate_sequences = 0",
        ] {
            let m: ModelManifest = toml::from_str(bad).unwrap();
            assert!(m.validate().is_err(), "{bad}");
        }
        assert!(
            toml::from_str::<ModelManifest>("[sequence_batching]\nstrategy = \"newest\"").is_err()
        );
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

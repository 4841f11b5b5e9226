//! Building a served model: the engines the plan and the manifest allow, tried in order with
//! one fallback rule, a session per instance on every device, the footprint measured on the
//! host and the devices, a warm-up run, and the batch policy.

use super::{ModelQueue, Registry, ServedModel};
use crate::batcher::{BatchPolicy, Batcher};
use crate::manifest::ModelManifest;
use crate::memory::{Footprint, HOST, unmeasured_footprint};
use crate::pipeline::{ScorePipeline, shape_text};
use crate::repository::VersionSource;
use crate::sequence::{SequenceBatcher, SequenceLayout, sequence_policy};
use modelpod_accel::plan::Candidate;
use modelpod_accel::{
    Backend, DataType, Device, EngineError, EngineOptions, Signature, Tensor, TensorData,
    load_model,
};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Why one engine could not serve a version: the engine (try the next) or the model's own
/// declaration (no engine will do better).
enum BuildError {
    Engine(EngineError),
    Model(String),
}

/// The version being built: the same on every engine tried.
#[derive(Clone, Copy)]
struct VersionBuild<'a> {
    name: &'a str,
    version: u64,
    manifest: &'a ModelManifest,
    /// The model's folder, where the manifest's files (labels) are.
    dir: &'a Path,
    file: &'a Path,
}

impl Registry {
    /// Loads a version on the best engine the plan and its manifest allow, falling back to
    /// the next one when an accelerator engine fails or an engine cannot run here at all. A
    /// model's own failure on a CPU engine is final: another CPU engine would only hide it.
    pub(super) fn build(
        &self,
        name: &str,
        version: u64,
        manifest: &ModelManifest,
        source: &VersionSource,
        dir: &Path,
    ) -> Result<ServedModel, String> {
        let file = source.file.clone()?;
        let choice = manifest.engine.unwrap_or(self.config.engine_choice);
        let candidates =
            self.config
                .plan
                .for_model(choice, manifest.device, manifest.gpus.as_deref())?;
        let options = EngineOptions {
            intra_op_threads: manifest
                .intra_op_threads
                .unwrap_or(self.config.engine.intra_op_threads),
            // With no CPU engine left to fall back to, the accelerator is required.
            strict_placement: candidates.iter().all(Candidate::accelerated),
            ..self.config.engine.clone()
        };
        let what = VersionBuild {
            name,
            version,
            manifest,
            dir,
            file: &file,
        };
        let mut failures: Vec<String> = Vec::new();
        for candidate in &candidates {
            match self.build_on(&what, candidate, &options) {
                Ok(served) => {
                    if !failures.is_empty() {
                        tracing::warn!(
                            model = name,
                            version,
                            engine = %candidate.engine,
                            failed = %failures.join("; "),
                            "model fell back to a later engine of the plan"
                        );
                    }
                    return Ok(served);
                }
                Err(BuildError::Engine(e)) => {
                    failures.push(format!("{}: {e}", candidate.engine));
                    if !candidate.falls_back_after(&e) {
                        break;
                    }
                    if !candidate.accelerated() {
                        tracing::debug!(model = name, engine = %candidate.engine, %e, "engine unavailable");
                    }
                }
                Err(BuildError::Model(reason)) => return Err(reason),
            }
        }
        Err(match failures.len() {
            1 => failures.remove(0),
            _ => failures.join("; "),
        })
    }

    /// Loads a version on one engine: a session per instance on every device of `candidate`,
    /// measured on the host and, where a device meter is installed, on each device.
    fn build_on(
        &self,
        what: &VersionBuild<'_>,
        candidate: &Candidate,
        options: &EngineOptions,
    ) -> Result<ServedModel, BuildError> {
        let VersionBuild {
            name,
            version,
            manifest,
            dir,
            file,
        } = *what;
        let device_meter = self
            .config
            .device_meter
            .as_ref()
            .filter(|_| candidate.accelerated());
        // Free device memory is process-wide: two loads on one device would measure each other.
        let _measuring = device_meter.map(|_| self.device_loads.lock());
        let free_before: Vec<(Device, Result<u64, String>)> = device_meter
            .map(|meter| {
                candidate
                    .devices
                    .iter()
                    .map(|&d| (d, meter.free_bytes(d)))
                    .collect()
            })
            .unwrap_or_default();
        let allocated_before = self.config.meter.as_ref().map(|m| m.thread_net_allocated());

        let instances = manifest.instances.unwrap_or(1);
        let mut signature = None;
        let mut backends = Vec::with_capacity(instances * candidate.devices.len());
        for &device in &candidate.devices {
            let model =
                load_model(file, candidate.engine, device, options).map_err(BuildError::Engine)?;
            let first = backends.len();
            for _ in 0..instances {
                backends.push(model.instantiate().map_err(BuildError::Engine)?);
            }
            warm_up(name, model.signature(), backends[first].as_mut());
            signature.get_or_insert_with(|| model.signature().clone());
        }
        let model_signature = signature.expect("a candidate names at least one device");
        let policy = batch_policy(manifest, &model_signature).map_err(BuildError::Model)?;
        // A stateful model's clients see its inputs less the ones the batcher fills in.
        let (sequence, signature) = match &manifest.sequence_batching {
            None => (None, model_signature),
            Some(section) => {
                let (layout, client) =
                    SequenceLayout::new(section, &model_signature, policy.batches())
                        .map_err(BuildError::Model)?;
                (Some((layout, sequence_policy(section, &policy))), client)
            }
        };
        let pipeline = ScorePipeline::new(&manifest.score, &signature, policy.batches(), dir)
            .map_err(BuildError::Model)?;

        let host = match (&self.config.meter, allocated_before) {
            (Some(meter), Some(before)) => meter.thread_net_allocated().wrapping_sub(before),
            _ => unmeasured_footprint(file),
        };
        // Frees on this thread of memory allocated elsewhere can make the difference negative.
        let host = if host > 1 << 62 { 0 } else { host };
        let mut footprint = Footprint::from([(HOST.to_string(), host)]);
        if let Some(meter) = device_meter {
            for (device, before) in free_before {
                match (before, meter.free_bytes(device)) {
                    (Ok(before), Ok(after)) => {
                        footprint.insert(device.memory_ledger(), before.saturating_sub(after));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(model = name, %device, %e, "device memory not measured")
                    }
                }
            }
        }
        let labels = vec![
            ("model".to_string(), name.to_string()),
            ("version".to_string(), version.to_string()),
        ];
        let statistics = std::sync::Arc::new(crate::statistics::ModelStatistics::default());
        let thread_name = format!("{name}/{version}");
        let queue = match sequence {
            None => ModelQueue::Dynamic(Batcher::start(
                &thread_name,
                labels,
                policy.clone(),
                backends,
                statistics.clone(),
            )),
            Some((layout, sequence_policy)) => ModelQueue::Sequence(SequenceBatcher::start(
                name,
                &thread_name,
                labels,
                layout,
                sequence_policy,
                backends,
                statistics.clone(),
            )),
        };
        Ok(ServedModel {
            name: name.to_string(),
            version,
            engine: candidate.engine,
            devices: candidate.devices.clone(),
            signature,
            instances,
            queue,
            statistics,
            policy,
            pipeline,
            file: file.to_path_buf(),
            footprint,
            last_used: AtomicU64::new(self.now()),
        })
    }
}

/// Runs one zero-filled request (batch 1, every symbolic dimension 1) so that what the first
/// inference allocates is measured with the model, not charged to its first caller. Models that
/// reject zeros are fine: the load has already succeeded.
fn warm_up(name: &str, signature: &Signature, backend: &mut dyn Backend) {
    let inputs: Result<Vec<Tensor>, _> = signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec.dims.iter().map(|d| d.unwrap_or(1)).collect();
            let count = shape.iter().product();
            let data = match spec.dtype {
                DataType::Bool => TensorData::Bool(vec![false; count]),
                dtype => TensorData::Fp64(vec![0.0; count]).cast(dtype),
            };
            Tensor::new(shape, data)
        })
        .collect();
    match inputs
        .map_err(|e| e.to_string())
        .and_then(|i| backend.run(i).map_err(|e| e.to_string()))
    {
        Ok(_) => {}
        Err(reason) => tracing::debug!(model = name, %reason, "warm-up inference failed"),
    }
}

/// Default batching: on (up to 32 rows, no added delay) when every input's first dimension is
/// symbolic; the manifest may change or disable it.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 32;

fn batch_policy(manifest: &ModelManifest, signature: &Signature) -> Result<BatchPolicy, String> {
    let batchable = !signature.inputs.is_empty()
        && signature.inputs.iter().all(|s| s.has_dynamic_batch())
        && signature
            .outputs
            .iter()
            .all(|s| s.dims.is_empty() || s.has_dynamic_batch());
    let section = manifest.batching.clone().unwrap_or_default();
    let max = match section.max_batch_size {
        Some(0) => 0,
        Some(n) if !batchable => {
            return Err(format!(
                "max_batch_size = {n} needs a symbolic first (batch) dimension on every input and output; \
                 this model's inputs are {}",
                signature
                    .inputs
                    .iter()
                    .map(|s| format!("{} {}", s.name, shape_text(&s.dims)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Some(n) => n,
        None if batchable => DEFAULT_MAX_BATCH_SIZE,
        None => 0,
    };
    Ok(BatchPolicy {
        max_batch_size: max,
        max_queue_delay: Duration::from_micros(section.max_queue_delay_us.unwrap_or(0)),
        preferred_batch_sizes: section.preferred_batch_sizes,
    })
}

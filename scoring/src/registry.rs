//! The model registry: every model version the repository holds, its state, and — once
//! ready — the served model (engine, pipeline, batcher). Readiness, the v2 repository API and
//! `/metrics` all read model state from here.

use crate::batcher::{BatchPolicy, Batcher, JobReply};
use crate::error::ScoringError;
use crate::manifest::ModelManifest;
use crate::pipeline::{ScorePipeline, shape_text};
use crate::repository::{ModelSource, RepositoryError, VersionSource, scan_model, scan_repository};
use modelpod_accel::{EngineKind, EngineOptions, Signature, Tensor, load_model};
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where a model version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ModelState {
    /// Found in the repository, not loaded.
    Registered,
    Loading,
    Ready,
    /// The last load failed; the reason is kept. Retried only when asked.
    Failed,
    Unloading,
}

impl ModelState {
    pub const ALL: [ModelState; 5] = [
        ModelState::Registered,
        ModelState::Loading,
        ModelState::Ready,
        ModelState::Failed,
        ModelState::Unloading,
    ];

    /// modelpod's own name for the state, as `/metrics` labels it.
    pub fn name(self) -> &'static str {
        match self {
            ModelState::Registered => "registered",
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Failed => "failed",
            ModelState::Unloading => "unloading",
        }
    }

    /// The state as Triton's repository index spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Registered => "UNAVAILABLE",
            ModelState::Loading => "LOADING",
            ModelState::Ready => "READY",
            ModelState::Failed => "UNAVAILABLE",
            ModelState::Unloading => "UNLOADING",
        }
    }
}

/// Server-wide defaults that a model's manifest may override.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub repository: PathBuf,
    pub engine: EngineOptions,
    /// Models loaded in parallel at start-up.
    pub load_parallelism: usize,
}

/// A loaded model version, ready to take requests.
pub struct ServedModel {
    pub name: String,
    pub version: u64,
    pub engine: EngineKind,
    pub signature: Signature,
    pub policy: BatchPolicy,
    pub instances: usize,
    pub pipeline: ScorePipeline,
    pub file: PathBuf,
    batcher: Batcher,
}

impl ServedModel {
    /// Checks inputs given by name against the signature and returns them in signature order.
    pub fn order_inputs(
        &self,
        mut named: Vec<(String, Tensor)>,
    ) -> Result<Vec<Tensor>, ScoringError> {
        if let Some((unknown, _)) = named
            .iter()
            .find(|(n, _)| self.signature.input(n).is_none())
        {
            return Err(ScoringError::InvalidInput(format!(
                "unexpected input '{unknown}' for model '{}' (inputs: {})",
                self.name,
                self.signature
                    .inputs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.signature
            .inputs
            .iter()
            .map(|spec| {
                let i = named
                    .iter()
                    .position(|(n, _)| n == &spec.name)
                    .ok_or_else(|| {
                        ScoringError::InvalidInput(format!("input '{}' is missing", spec.name))
                    })?;
                let (_, tensor) = named.swap_remove(i);
                if tensor.dtype() != spec.dtype {
                    return Err(ScoringError::InvalidInput(format!(
                        "input '{}' has datatype {}; the model expects {}",
                        spec.name,
                        tensor.dtype(),
                        spec.dtype
                    )));
                }
                if !spec.accepts_shape(tensor.shape()) {
                    return Err(ScoringError::InvalidInput(format!(
                        "input '{}' has shape {:?}; the model expects {}",
                        spec.name,
                        tensor.shape(),
                        shape_text(&spec.dims)
                    )));
                }
                Ok(tensor)
            })
            .collect()
    }

    /// Queues inputs (signature order) for the batcher.
    pub fn submit(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<JobReply, ScoringError> {
        self.batcher.submit(inputs, deadline)
    }

    pub fn queue_len(&self) -> usize {
        self.batcher.queue_len()
    }
}

struct VersionEntry {
    source: VersionSource,
    state: ModelState,
    reason: Option<String>,
    served: Option<Arc<ServedModel>>,
}

struct ModelEntry {
    source: ModelSource,
    versions: BTreeMap<u64, VersionEntry>,
}

/// One row of the repository index.
#[derive(Debug, Clone, Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: ModelState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub struct Registry {
    config: RegistryConfig,
    models: RwLock<BTreeMap<String, ModelEntry>>,
}

impl Registry {
    /// Scans the repository and registers every model version found, loading none.
    pub fn open(config: RegistryConfig) -> Result<Registry, RepositoryError> {
        let sources = scan_repository(&config.repository)?;
        let models = sources
            .into_iter()
            .map(|s| (s.name.clone(), entry_for(s)))
            .collect();
        Ok(Registry {
            config,
            models: RwLock::new(models),
        })
    }

    pub fn repository(&self) -> &Path {
        &self.config.repository
    }

    /// Loads every registered version, `load_parallelism` at a time; each model is served as
    /// soon as it is ready. Failures are recorded per version and never stop the others.
    pub fn load_all(&self) {
        let pending: Vec<(String, u64)> = self
            .models
            .read()
            .iter()
            .flat_map(|(name, m)| {
                m.versions
                    .iter()
                    .filter(|(_, v)| v.state == ModelState::Registered)
                    .map(move |(&version, _)| (name.clone(), version))
            })
            .collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..self
                .config
                .load_parallelism
                .max(1)
                .min(pending.len().max(1))
            {
                scope.spawn(|| {
                    while let Some((name, version)) =
                        pending.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        self.load_version(name, *version);
                    }
                });
            }
        });
    }

    /// (Re)reads a model's folder and loads every version of it; the v2 repository `load`.
    pub fn load(&self, name: &str) -> Result<(), ScoringError> {
        let dir = self.config.repository.join(name);
        let source = if dir.is_dir() && !name.contains(['/', '\\']) && name != ".." {
            Some(scan_model(name, &dir))
        } else {
            // Azure's single-model layout has no per-model folder: rescan the root.
            scan_repository(&self.config.repository)
                .ok()
                .and_then(|all| all.into_iter().find(|m| m.name == name))
        }
        .filter(|s| !s.versions.is_empty())
        .ok_or_else(|| {
            ScoringError::ModelNotFound(format!("model '{name}' is not in the repository"))
        })?;
        self.unload_versions(name);
        self.models
            .write()
            .insert(name.to_string(), entry_for(source));
        let versions: Vec<u64> = self.models.read()[name].versions.keys().copied().collect();
        for version in &versions {
            self.load_version(name, *version);
        }
        let models = self.models.read();
        let failed: Vec<String> = models[name]
            .versions
            .iter()
            .filter_map(|(v, e)| e.reason.as_ref().map(|r| format!("version {v}: {r}")))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ScoringError::ModelUnavailable(format!(
                "failed to load '{name}': {}",
                failed.join("; ")
            )))
        }
    }

    /// Stops serving every version of a model; requests already queued finish first.
    pub fn unload(&self, name: &str) -> Result<(), ScoringError> {
        if !self.models.read().contains_key(name) {
            return Err(ScoringError::ModelNotFound(format!(
                "model '{name}' is not in the repository"
            )));
        }
        self.unload_versions(name);
        Ok(())
    }

    fn unload_versions(&self, name: &str) {
        let served: Vec<Arc<ServedModel>> = {
            let mut models = self.models.write();
            let Some(model) = models.get_mut(name) else {
                return;
            };
            model
                .versions
                .values_mut()
                .filter_map(|v| {
                    let served = v.served.take()?;
                    v.state = ModelState::Unloading;
                    Some(served)
                })
                .collect()
        };
        // The batchers stop when the last in-flight request drops its reference.
        drop(served);
        if let Some(model) = self.models.write().get_mut(name) {
            for v in model.versions.values_mut() {
                if v.state == ModelState::Unloading {
                    v.state = ModelState::Registered;
                    v.reason = None;
                }
            }
        }
        tracing::info!(model = name, "unloaded");
    }

    fn load_version(&self, name: &str, version: u64) {
        let (manifest, source, dir) = {
            let mut models = self.models.write();
            let Some(model) = models.get_mut(name) else {
                return;
            };
            let Some(entry) = model.versions.get_mut(&version) else {
                return;
            };
            if entry.state == ModelState::Loading || entry.state == ModelState::Ready {
                return;
            }
            entry.state = ModelState::Loading;
            entry.reason = None;
            (
                model.source.manifest.clone(),
                entry.source.clone(),
                model.source.dir.clone(),
            )
        };
        let started = Instant::now();
        let outcome = manifest
            .map_err(|e| format!("invalid manifest: {e}"))
            .and_then(|manifest| self.build(name, version, &manifest, &source, &dir));
        let mut models = self.models.write();
        let Some(entry) = models
            .get_mut(name)
            .and_then(|m| m.versions.get_mut(&version))
        else {
            return;
        };
        match outcome {
            Ok(served) => {
                tracing::info!(
                    model = name,
                    version,
                    engine = %served.engine,
                    instances = served.instances,
                    max_batch_size = served.policy.max_batch_size,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "model ready"
                );
                entry.state = ModelState::Ready;
                entry.served = Some(Arc::new(served));
            }
            Err(reason) => {
                tracing::error!(model = name, version, %reason, "model failed to load");
                entry.state = ModelState::Failed;
                entry.reason = Some(reason);
            }
        }
    }

    fn build(
        &self,
        name: &str,
        version: u64,
        manifest: &ModelManifest,
        source: &VersionSource,
        dir: &Path,
    ) -> Result<ServedModel, String> {
        let file = source.file.clone()?;
        let options = EngineOptions {
            choice: manifest.engine.unwrap_or(self.config.engine.choice),
            intra_op_threads: manifest
                .intra_op_threads
                .unwrap_or(self.config.engine.intra_op_threads),
        };
        let model = load_model(&file, &options).map_err(|e| e.to_string())?;
        let signature = model.signature().clone();
        let policy = batch_policy(manifest, &signature)?;
        let pipeline = ScorePipeline::new(&manifest.score, &signature, policy.batches(), dir)?;
        let instances = manifest.instances.unwrap_or(1);
        let backends = (0..instances)
            .map(|_| model.instantiate())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let labels = vec![
            ("model".to_string(), name.to_string()),
            ("version".to_string(), version.to_string()),
        ];
        Ok(ServedModel {
            name: name.to_string(),
            version,
            engine: model.engine(),
            signature,
            instances,
            batcher: Batcher::start(
                &format!("{name}/{version}"),
                labels,
                policy.clone(),
                backends,
            ),
            policy,
            pipeline,
            file,
        })
    }

    /// The served model for `name` (and `version`, or the highest ready one).
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<ServedModel>, ScoringError> {
        let models = self.models.read();
        let model = models.get(name).ok_or_else(|| {
            ScoringError::ModelNotFound(format!("model '{name}' is not served here"))
        })?;
        let entry = match version {
            Some(v) => model.versions.get(&v).ok_or_else(|| {
                ScoringError::ModelNotFound(format!("model '{name}' has no version {v}"))
            })?,
            None => model
                .versions
                .values()
                .rev()
                .find(|v| v.state == ModelState::Ready)
                .or_else(|| model.versions.values().next_back())
                .ok_or_else(|| {
                    ScoringError::ModelNotFound(format!("model '{name}' has no versions"))
                })?,
        };
        match (&entry.served, entry.state) {
            (Some(served), ModelState::Ready) => Ok(served.clone()),
            (_, state) => Err(ScoringError::ModelUnavailable(match &entry.reason {
                Some(reason) => format!(
                    "model '{name}' version {} is unavailable: {reason}",
                    entry.source.version
                ),
                None => format!(
                    "model '{name}' version {} is not ready ({})",
                    entry.source.version,
                    state.as_str().to_lowercase()
                ),
            })),
        }
    }

    /// Every model version and its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        self.models
            .read()
            .iter()
            .flat_map(|(name, m)| {
                m.versions.iter().map(move |(v, e)| IndexEntry {
                    name: name.clone(),
                    version: v.to_string(),
                    state: e.state,
                    reason: e.reason.clone(),
                })
            })
            .collect()
    }

    /// Names of the registered models.
    pub fn model_names(&self) -> Vec<String> {
        self.models.read().keys().cloned().collect()
    }

    /// Whether every registered version is ready (Triton's strict readiness).
    pub fn all_ready(&self) -> bool {
        self.models
            .read()
            .values()
            .all(|m| m.versions.values().all(|v| v.state == ModelState::Ready))
    }

    /// Whether no version is still waiting to be loaded or loading.
    pub fn settled(&self) -> bool {
        self.models.read().values().all(|m| {
            m.versions
                .values()
                .all(|v| !matches!(v.state, ModelState::Loading | ModelState::Registered))
        })
    }

    /// Stops every model's workers after their queues drain.
    pub fn shutdown(&self) {
        for name in self.model_names() {
            self.unload_versions(&name);
        }
    }
}

fn entry_for(source: ModelSource) -> ModelEntry {
    let versions = source
        .versions
        .iter()
        .map(|v| {
            (
                v.version,
                VersionEntry {
                    source: v.clone(),
                    state: ModelState::Registered,
                    reason: None,
                    served: None,
                },
            )
        })
        .collect();
    ModelEntry { source, versions }
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

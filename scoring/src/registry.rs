//! The model registry: every model version the repository holds, its state, and — once
//! ready — the served model (engine, pipeline, batcher). Readiness, the v2 repository API and
//! `/metrics` all read model state from here.
//!
//! Models load eagerly at start-up (as many as the memory budget holds) or on first use, and
//! concurrent first requests wait for one load. When a load would pass the budget, the least
//! recently used models that no request holds are evicted first; a model in use is never
//! evicted. All state changes happen under one lock, so the budget is never double-spent.

use crate::batcher::{BatchPolicy, Batcher, JobReply};
use crate::error::ScoringError;
use crate::manifest::ModelManifest;
use crate::memory::{
    AllocationMeter, DeviceMemoryMeter, Footprint, HOST, MemoryBudget, UNMEASURED_OVERHEAD_BYTES,
    mib, unmeasured_footprint,
};
use crate::pipeline::{ScorePipeline, shape_text};
use crate::repository::{ModelSource, RepositoryError, VersionSource, scan_model, scan_repository};
use modelpod_accel::plan::{Candidate, EnginePlan};
use modelpod_accel::{
    Backend, DataType, Device, EngineChoice, EngineError, EngineKind, EngineOptions, Signature,
    Tensor, TensorData, load_model,
};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Server-wide settings; a model's manifest may override the engine choice and options.
#[derive(Clone)]
pub struct RegistryConfig {
    pub repository: PathBuf,
    /// The engine a model without one in its manifest asks for.
    pub engine_choice: EngineChoice,
    pub engine: EngineOptions,
    /// The node's engines, best first; models are tried on them in order.
    pub plan: EnginePlan,
    /// Models loaded in parallel at start-up.
    pub load_parallelism: usize,
    pub budget: MemoryBudget,
    /// Measures each load's footprint; without one, footprints are estimated from file sizes.
    pub meter: Option<Arc<dyn AllocationMeter>>,
    /// Measures what loads take of accelerator memory; without one, it is not charged.
    pub device_meter: Option<Arc<dyn DeviceMemoryMeter>>,
}

impl RegistryConfig {
    pub fn new(repository: PathBuf, engine_choice: EngineChoice) -> RegistryConfig {
        RegistryConfig {
            repository,
            engine_choice,
            engine: EngineOptions::default(),
            plan: EnginePlan::cpu_only(),
            load_parallelism: 2,
            budget: MemoryBudget::unlimited(),
            meter: None,
            device_meter: None,
        }
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("repository", &self.repository)
            .field("engine_choice", &self.engine_choice)
            .field("engine", &self.engine)
            .field("plan", &self.plan.describe())
            .field("load_parallelism", &self.load_parallelism)
            .field("budget", &self.budget)
            .field("measured", &self.meter.is_some())
            .field("device_measured", &self.device_meter.is_some())
            .finish()
    }
}

/// A loaded model version, ready to take requests.
pub struct ServedModel {
    pub name: String,
    pub version: u64,
    pub engine: EngineKind,
    /// The devices its instances run on.
    pub devices: Vec<Device>,
    pub signature: Signature,
    pub policy: BatchPolicy,
    /// Instances per device, one worker each.
    pub instances: usize,
    pub pipeline: ScorePipeline,
    pub file: PathBuf,
    /// Bytes this model holds per memory ledger, measured at load (see [`crate::memory`]).
    pub footprint: Footprint,
    /// When a request last took this model, in nanoseconds since the registry opened.
    last_used: AtomicU64,
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
    /// Budget held while loading, before the footprint is known.
    reserved: Footprint,
    /// Footprint measured by the last load: the next load of this version reserves it.
    measured: Option<Footprint>,
    /// Unloaded through the repository API: not loaded on demand until loaded again.
    held_out: bool,
}

impl VersionEntry {
    fn new(source: VersionSource) -> VersionEntry {
        VersionEntry {
            source,
            state: ModelState::Registered,
            reason: None,
            served: None,
            reserved: Footprint::new(),
            measured: None,
            held_out: false,
        }
    }

    /// What a load of this version is expected to need, before it is measured.
    fn expected_footprint(&self) -> Footprint {
        self.measured.clone().unwrap_or_else(|| {
            let host = self
                .source
                .file
                .as_deref()
                .map_or(UNMEASURED_OVERHEAD_BYTES, unmeasured_footprint);
            Footprint::from([(HOST.to_string(), host)])
        })
    }

    fn loads_on_demand(&self) -> bool {
        self.state == ModelState::Loading
            || (self.state == ModelState::Registered && !self.held_out)
    }
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
    /// Bytes held while loaded, per memory ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footprint: Option<Footprint>,
}

/// Why one engine could not serve a version: the engine (try the next) or the model's own
/// declaration (no engine will do better).
enum BuildError {
    Engine(EngineError),
    Model(String),
}

/// Whether a load may evict other models to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eviction {
    /// Start-up: fill the budget, never churn it.
    Never,
    /// On demand or when asked: evict least recently used idle models.
    Allowed,
}

pub struct Registry {
    config: RegistryConfig,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// Time base of `last_used`.
    epoch: Instant,
    /// Bumped (under its lock) when a load finishes; waiters for a load sleep on `load_done`.
    loads_finished: Mutex<u64>,
    load_done: Condvar,
    /// Held by loads whose device memory is measured (see [`DeviceMemoryMeter`]).
    device_loads: Mutex<()>,
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
            epoch: Instant::now(),
            loads_finished: Mutex::new(0),
            load_done: Condvar::new(),
            device_loads: Mutex::new(()),
        })
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.config.budget
    }

    /// Bytes the loaded (and loading) models hold on `device`.
    pub fn memory_used(&self, device: &str) -> u64 {
        used_on(&self.models.read(), device)
    }

    pub fn repository(&self) -> &Path {
        &self.config.repository
    }

    /// Loads every registered version, `load_parallelism` at a time; each model is served as
    /// soon as it is ready. Failures are recorded per version and never stop the others.
    /// Models that do not fit the memory budget stay registered, to be loaded on demand.
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
                        let _ = self.load_version(name, *version, Eviction::Never);
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
        let mut failed = Vec::new();
        for version in versions {
            if let Err(e) = self.load_version(name, version, Eviction::Allowed) {
                failed.push(format!("version {version}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ScoringError::ModelUnavailable(format!(
                "failed to load '{name}': {}",
                failed.join("; ")
            )))
        }
    }

    /// Brings the registry in line with the repository on disk: models and versions added
    /// there are registered (and loaded when `load` is set, as far as the budget allows);
    /// those removed are unloaded and forgotten. Versions already known are left as they are.
    pub fn poll_repository(&self, load: bool) -> Result<(), RepositoryError> {
        let on_disk: BTreeMap<String, ModelSource> = scan_repository(&self.config.repository)?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let known = self.model_names();
        for gone in known.iter().filter(|n| !on_disk.contains_key(*n)) {
            self.unload_versions(gone);
            self.models.write().remove(gone);
            tracing::info!(model = %gone, "removed from the repository");
        }
        let mut added = Vec::new();
        let mut retired = Vec::new();
        {
            let mut models = self.models.write();
            for (name, source) in on_disk {
                match models.get_mut(&name) {
                    None => {
                        added.extend(source.versions.iter().map(|v| (name.clone(), v.version)));
                        models.insert(name, entry_for(source));
                    }
                    Some(model) => {
                        let present: Vec<u64> = source.versions.iter().map(|v| v.version).collect();
                        model.versions.retain(|version, entry| {
                            let keep = present.contains(version);
                            if !keep {
                                tracing::info!(model = %name, version, "version removed from the repository");
                                retired.extend(entry.served.take());
                            }
                            keep
                        });
                        for v in &source.versions {
                            if let std::collections::btree_map::Entry::Vacant(slot) =
                                model.versions.entry(v.version)
                            {
                                slot.insert(VersionEntry::new(v.clone()));
                                added.push((name.clone(), v.version));
                            }
                        }
                    }
                }
            }
        }
        // A removed version still in use finishes its requests first.
        self.retire(retired);
        for (name, version) in &added {
            tracing::info!(model = %name, version, "found in the repository");
        }
        if load {
            for (name, version) in added {
                let _ = self.load_version(&name, version, Eviction::Never);
            }
        }
        Ok(())
    }

    /// Stops serving every version of a model; requests already queued finish first. The
    /// model is not loaded on demand again until it is loaded explicitly.
    pub fn unload(&self, name: &str) -> Result<(), ScoringError> {
        match self.models.write().get_mut(name) {
            Some(model) => model.versions.values_mut().for_each(|v| v.held_out = true),
            None => {
                return Err(ScoringError::ModelNotFound(format!(
                    "model '{name}' is not in the repository"
                )));
            }
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
        self.release_freed_memory();
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

    /// Loads one version on this thread, first making room in the budget (evicting idle
    /// models when `eviction` allows). A version already loading or ready is left alone.
    fn load_version(
        &self,
        name: &str,
        version: u64,
        eviction: Eviction,
    ) -> Result<(), ScoringError> {
        let (manifest, source, dir, evicted) = {
            let mut models = self.models.write();
            let Some(model) = models.get(name) else {
                return Ok(());
            };
            let Some(entry) = model.versions.get(&version) else {
                return Ok(());
            };
            if matches!(entry.state, ModelState::Loading | ModelState::Ready) {
                return Ok(());
            }
            let expected = entry.expected_footprint();
            let mut evicted = Vec::new();
            for (ledger, &bytes) in &expected {
                match self.make_room(&mut models, ledger, bytes, (name, version), eviction) {
                    Ok(more) => evicted.extend(more),
                    Err(e) => {
                        // Models already evicted for another ledger stay evicted: they were idle.
                        drop(models);
                        self.retire(evicted);
                        return Err(e);
                    }
                }
            }
            let model = models.get_mut(name).expect("checked above");
            let entry = model.versions.get_mut(&version).expect("checked above");
            entry.state = ModelState::Loading;
            entry.reason = None;
            entry.reserved = expected;
            (
                model.source.manifest.clone(),
                entry.source.clone(),
                model.source.dir.clone(),
                evicted,
            )
        };
        self.retire(evicted);
        let started = Instant::now();
        let outcome = manifest
            .map_err(|e| format!("invalid manifest: {e}"))
            .and_then(|manifest| self.build(name, version, &manifest, &source, &dir));
        let result = {
            let mut models = self.models.write();
            let Some(entry) = models
                .get_mut(name)
                .and_then(|m| m.versions.get_mut(&version))
            else {
                drop(models);
                self.finish_load();
                return Ok(());
            };
            entry.reserved = Footprint::new();
            match outcome {
                Ok(served) => {
                    tracing::info!(
                        model = name,
                        version,
                        engine = %served.engine,
                        devices = %served.devices.iter().map(Device::to_string).collect::<Vec<_>>().join(","),
                        instances_per_device = served.instances,
                        max_batch_size = served.policy.max_batch_size,
                        footprint_bytes = ?served.footprint,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "model ready"
                    );
                    metrics::histogram!("modelpod_model_load_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    entry.measured = Some(served.footprint.clone());
                    entry.state = ModelState::Ready;
                    let ledgers: Vec<String> = served.footprint.keys().cloned().collect();
                    entry.served = Some(Arc::new(served));
                    // The measurement may exceed the reservation: settle the difference.
                    let evicted = ledgers
                        .iter()
                        .flat_map(|ledger| {
                            self.make_room(
                                &mut models,
                                ledger,
                                0,
                                (name, version),
                                Eviction::Allowed,
                            )
                            .unwrap_or_default()
                        })
                        .collect();
                    Ok(evicted)
                }
                Err(reason) => {
                    tracing::error!(model = name, version, %reason, "model failed to load");
                    entry.state = ModelState::Failed;
                    entry.reason = Some(reason.clone());
                    Err(ScoringError::ModelUnavailable(format!(
                        "model '{name}' version {version} failed to load: {reason}"
                    )))
                }
            }
        };
        self.finish_load();
        result.map(|evicted| self.retire(evicted))
    }

    /// Evicts least recently used idle models on `device` until `needed` more bytes fit its
    /// budget, skipping `loading` itself. Runs under the registry's write lock, so no request
    /// can take an evicted model between the check and the eviction. Returns the evicted
    /// models, to be dropped (their workers joined) after the lock is released.
    fn make_room(
        &self,
        models: &mut BTreeMap<String, ModelEntry>,
        device: &str,
        needed: u64,
        loading: (&str, u64),
        eviction: Eviction,
    ) -> Result<Vec<Arc<ServedModel>>, ScoringError> {
        let Some(limit) = self.config.budget.limit(device) else {
            return Ok(Vec::new());
        };
        let used = used_on(models, device);
        if used + needed <= limit {
            return Ok(Vec::new());
        }
        let overloaded = || {
            let in_use = models
                .values()
                .flat_map(|m| m.versions.values())
                .filter(|e| e.state == ModelState::Loading || e.served.is_some())
                .count();
            ScoringError::Overloaded(format!(
                "memory budget full: model '{}' version {} needs about {} on {device}, \
                 {} of {} is held by loaded models ({in_use} of them in use or loading); \
                 retry later or raise --memory-budget",
                loading.0,
                loading.1,
                mib(needed),
                mib(used),
                mib(limit)
            ))
        };
        if eviction == Eviction::Never {
            return Err(overloaded());
        }
        // Idle: ready, holding memory on this device, and referenced by nothing but the registry.
        let mut idle: Vec<(u64, String, u64, u64)> = models
            .iter()
            .flat_map(|(name, m)| m.versions.iter().map(move |(v, e)| (name, *v, e)))
            .filter(|(name, v, _)| (name.as_str(), *v) != loading)
            .filter_map(|(name, v, e)| {
                let served = e.served.as_ref()?;
                let held = *served.footprint.get(device)?;
                (e.state == ModelState::Ready && Arc::strong_count(served) == 1).then(|| {
                    let last_used = served.last_used.load(Ordering::Relaxed);
                    (last_used, name.clone(), v, held)
                })
            })
            .collect();
        idle.sort_unstable();
        // Choose the least recently used until enough is freed; evict only if that suffices,
        // so a load that cannot fit costs the others nothing.
        let mut freed = 0;
        let mut victims = Vec::new();
        for (_, name, version, footprint) in idle {
            if used - freed + needed <= limit {
                break;
            }
            freed += footprint;
            victims.push((name, version));
        }
        if used - freed + needed > limit {
            return Err(overloaded());
        }
        Ok(victims
            .into_iter()
            .map(|(name, version)| {
                let entry = models
                    .get_mut(&name)
                    .and_then(|m| m.versions.get_mut(&version))
                    .expect("listed above");
                let served = entry.served.take().expect("ready entries are served");
                entry.state = ModelState::Registered;
                tracing::info!(model = %name, version, %device, footprint_bytes = ?served.footprint, "evicted (least recently used)");
                // Looked up at each eviction, not kept: a handle taken before the process
                // installs its metrics recorder would count nowhere.
                metrics::counter!("modelpod_model_evictions_total").increment(1);
                served
            })
            .collect())
    }

    /// Drops evicted models (joining their idle workers) and returns their memory.
    fn retire(&self, evicted: Vec<Arc<ServedModel>>) {
        if !evicted.is_empty() {
            drop(evicted);
            self.release_freed_memory();
        }
    }

    fn release_freed_memory(&self) {
        if let Some(meter) = &self.config.meter {
            meter.release_freed_memory();
        }
    }

    fn finish_load(&self) {
        *self.loads_finished.lock() += 1;
        self.load_done.notify_all();
    }

    /// Loads a version on the best engine the plan and its manifest allow, falling back to
    /// the next one when an accelerator engine fails or an engine cannot run here at all. A
    /// model's own failure on a CPU engine is final: another CPU engine would only hide it.
    fn build(
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
        let mut failures: Vec<String> = Vec::new();
        for candidate in &candidates {
            match self.build_on(name, version, manifest, dir, &file, candidate, &options) {
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
    #[allow(clippy::too_many_arguments)]
    fn build_on(
        &self,
        name: &str,
        version: u64,
        manifest: &ModelManifest,
        dir: &Path,
        file: &Path,
        candidate: &Candidate,
        options: &EngineOptions,
    ) -> Result<ServedModel, BuildError> {
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
        let signature = signature.expect("a candidate names at least one device");
        let policy = batch_policy(manifest, &signature).map_err(BuildError::Model)?;
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
        Ok(ServedModel {
            name: name.to_string(),
            version,
            engine: candidate.engine,
            devices: candidate.devices.clone(),
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
            file: file.to_path_buf(),
            footprint,
            last_used: AtomicU64::new(self.now()),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The version a request for `version` (or the highest ready, else highest) means.
    fn resolve(
        &self,
        model: &ModelEntry,
        name: &str,
        version: Option<u64>,
    ) -> Result<u64, ScoringError> {
        match version {
            Some(v) if model.versions.contains_key(&v) => Ok(v),
            Some(v) => Err(ScoringError::ModelNotFound(format!(
                "model '{name}' has no version {v}"
            ))),
            None => model
                .versions
                .iter()
                .rev()
                .find(|(_, e)| e.state == ModelState::Ready)
                .or_else(|| model.versions.iter().next_back())
                .map(|(v, _)| *v)
                .ok_or_else(|| {
                    ScoringError::ModelNotFound(format!("model '{name}' has no versions"))
                }),
        }
    }

    /// Like [`Registry::get`], but a version that is registered and not held out is loaded on
    /// this thread (or, if another request is loading it, waited for) until `deadline`. Blocks:
    /// call it off the async workers.
    pub fn acquire(
        &self,
        name: &str,
        version: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<Arc<ServedModel>, ScoringError> {
        loop {
            let generation = *self.loads_finished.lock();
            let (resolved, loading_elsewhere) = {
                let models = self.models.read();
                let model = models.get(name).ok_or_else(|| {
                    ScoringError::ModelNotFound(format!("model '{name}' is not served here"))
                })?;
                let v = self.resolve(model, name, version)?;
                let entry = &model.versions[&v];
                if !entry.loads_on_demand() {
                    drop(models);
                    return self.get(name, Some(v));
                }
                (v, entry.state == ModelState::Loading)
            };
            if loading_elsewhere {
                let mut finished = self.loads_finished.lock();
                while *finished == generation {
                    let timed_out = match deadline {
                        Some(d) => self.load_done.wait_until(&mut finished, d).timed_out(),
                        None => {
                            self.load_done.wait(&mut finished);
                            false
                        }
                    };
                    if timed_out {
                        return Err(ScoringError::DeadlineExceeded(format!(
                            "the scoring timeout passed while model '{name}' was loading"
                        )));
                    }
                }
            } else {
                self.load_version(name, resolved, Eviction::Allowed)?;
            }
        }
    }

    /// Whether [`Registry::acquire`] would load (or wait for) a version that
    /// [`Registry::get`] reports unavailable.
    pub fn loads_on_demand(&self, name: &str, version: Option<u64>) -> bool {
        let models = self.models.read();
        models.get(name).is_some_and(|model| {
            self.resolve(model, name, version)
                .is_ok_and(|v| model.versions[&v].loads_on_demand())
        })
    }

    /// The served model for `name` (and `version`, or the highest ready one).
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<ServedModel>, ScoringError> {
        let models = self.models.read();
        let model = models.get(name).ok_or_else(|| {
            ScoringError::ModelNotFound(format!("model '{name}' is not served here"))
        })?;
        let entry = &model.versions[&self.resolve(model, name, version)?];
        match (&entry.served, entry.state) {
            (Some(served), ModelState::Ready) => {
                served.last_used.store(self.now(), Ordering::Relaxed);
                Ok(served.clone())
            }
            (_, state) => Err(ScoringError::ModelUnavailable(match &entry.reason {
                Some(reason) => format!(
                    "model '{name}' version {} is unavailable: {reason}",
                    entry.source.version
                ),
                None if entry.held_out => format!(
                    "model '{name}' version {} is unloaded; load it through the repository API",
                    entry.source.version
                ),
                None => format!(
                    "model '{name}' version {} is not ready ({})",
                    entry.source.version,
                    state.name()
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
                    footprint: e.served.as_ref().map(|s| s.footprint.clone()),
                })
            })
            .collect()
    }

    /// Names of the registered models.
    pub fn model_names(&self) -> Vec<String> {
        self.models.read().keys().cloned().collect()
    }

    /// Strict readiness: no version failed to load. Versions that are registered but not
    /// loaded (lazy, evicted, unloaded or beyond the budget) load on demand and do not count.
    pub fn all_ready(&self) -> bool {
        self.models
            .read()
            .values()
            .all(|m| m.versions.values().all(|v| v.state != ModelState::Failed))
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
        .map(|v| (v.version, VersionEntry::new(v.clone())))
        .collect();
    ModelEntry { source, versions }
}

/// Bytes held on `device` by loaded models and reserved by loading ones.
fn used_on(models: &BTreeMap<String, ModelEntry>, device: &str) -> u64 {
    models
        .values()
        .flat_map(|m| m.versions.values())
        .map(|e| match &e.served {
            Some(served) => served.footprint.get(device).copied().unwrap_or(0),
            None => e.reserved.get(device).copied().unwrap_or(0),
        })
        .sum()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const MIB: u64 = 1 << 20;

    /// Every successful load measures exactly 1 MiB. Counts its reads: two per successful
    /// load (before and after), one per load that failed before it was measured.
    #[derive(Default)]
    struct OneMibPerLoad {
        reads: AtomicUsize,
    }

    thread_local! {
        static READS_ON_THIS_THREAD: Cell<u64> = const { Cell::new(0) };
    }

    impl AllocationMeter for OneMibPerLoad {
        fn thread_net_allocated(&self) -> u64 {
            self.reads.fetch_add(1, Ordering::SeqCst);
            READS_ON_THIS_THREAD.with(|r| {
                r.set(r.get() + 1);
                r.get() * MIB
            })
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models")
            .join(name)
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// A repository of copies of the `mlp` fixture under the given names, plus the `broken` one.
    fn repository(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            copy_dir(&fixture("mlp"), &dir.path().join(name));
        }
        copy_dir(&fixture("broken"), &dir.path().join("broken"));
        dir
    }

    fn registry(root: &Path, budget_mib: Option<f64>) -> (Registry, Arc<OneMibPerLoad>) {
        let meter = Arc::new(OneMibPerLoad::default());
        let mut config = RegistryConfig::new(root.to_path_buf(), EngineChoice::Tract);
        if let Some(mib) = budget_mib {
            config.budget = MemoryBudget::unlimited().with_limit(HOST, (mib * MIB as f64) as u64);
        }
        config.meter = Some(meter.clone());
        (Registry::open(config).unwrap(), meter)
    }

    fn state(registry: &Registry, name: &str) -> ModelState {
        registry
            .index()
            .into_iter()
            .find(|e| e.name == name)
            .unwrap()
            .state
    }

    #[test]
    fn least_recently_used_idle_models_are_evicted_and_models_in_use_never() {
        let repo = repository(&["a", "b", "c"]);
        let (registry, _) = registry(repo.path(), Some(2.5));
        drop(registry.acquire("a", None, None).unwrap());
        drop(registry.acquire("b", None, None).unwrap());
        assert_eq!(registry.memory_used(HOST), 2 * MIB);
        drop(registry.get("a", None).unwrap()); // a is now more recent than b
        drop(registry.acquire("c", None, None).unwrap());
        assert_eq!(state(&registry, "a"), ModelState::Ready);
        assert_eq!(
            state(&registry, "b"),
            ModelState::Registered,
            "b was least recent"
        );
        assert_eq!(state(&registry, "c"), ModelState::Ready);

        // a and c in flight: b cannot be loaded without evicting one of them.
        let a = registry.get("a", None).unwrap();
        let c = registry.get("c", None).unwrap();
        match registry.acquire("b", None, None) {
            Err(ScoringError::Overloaded(message)) => {
                assert!(message.contains("memory budget full"), "{message}")
            }
            other => panic!("expected a 503 for a full budget, got {:?}", other.err()),
        }
        assert_eq!(state(&registry, "a"), ModelState::Ready);
        assert_eq!(state(&registry, "c"), ModelState::Ready);
        assert_eq!(
            state(&registry, "b"),
            ModelState::Registered,
            "not failed: retried later"
        );
        // The in-flight models still serve.
        let row = Tensor::new(vec![1, 4], vec![0.1f32, 0.2, 0.3, 0.4]).unwrap();
        assert!(
            a.submit(vec![row], None)
                .unwrap()
                .blocking_recv()
                .unwrap()
                .is_ok()
        );

        // Once a is released, b evicts it (c is still held).
        drop(a);
        drop(registry.acquire("b", None, None).unwrap());
        assert_eq!(state(&registry, "a"), ModelState::Registered);
        assert_eq!(state(&registry, "c"), ModelState::Ready);
        drop(c);
        assert!(registry.memory_used(HOST) <= (2.5 * MIB as f64) as u64);
    }

    #[test]
    fn concurrent_first_requests_share_one_load() {
        let repo = repository(&["a"]);
        let (registry, meter) = registry(repo.path(), None);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| drop(registry.acquire("a", None, None).unwrap()));
            }
        });
        assert_eq!(
            meter.reads.load(Ordering::SeqCst),
            2,
            "one load, measured once"
        );
        assert_eq!(state(&registry, "a"), ModelState::Ready);
    }

    #[test]
    fn eager_loading_fills_the_budget_without_evicting() {
        let repo = repository(&["a", "b", "c"]);
        let (registry, _) = registry(repo.path(), Some(2.5));
        registry.load_all();
        let ready = registry
            .index()
            .iter()
            .filter(|e| e.state == ModelState::Ready)
            .count();
        assert_eq!(ready, 2, "{:?}", registry.index());
        assert!(registry.all_ready() || state(&registry, "broken") == ModelState::Failed);
        // The one left over loads on demand, evicting the least recently used.
        let left = ["a", "b", "c"]
            .into_iter()
            .find(|n| state(&registry, n) == ModelState::Registered)
            .unwrap();
        drop(registry.acquire(left, None, None).unwrap());
        assert_eq!(state(&registry, left), ModelState::Ready);
    }

    #[test]
    fn a_broken_model_fails_alone_and_is_retried_only_when_asked() {
        let repo = repository(&["a"]);
        let (registry, meter) = registry(repo.path(), None);
        registry.load_all();
        assert_eq!(state(&registry, "a"), ModelState::Ready);
        assert_eq!(state(&registry, "broken"), ModelState::Failed);
        assert!(!registry.all_ready());
        let reads = meter.reads.load(Ordering::SeqCst);
        for _ in 0..3 {
            match registry.acquire("broken", None, None) {
                Err(ScoringError::ModelUnavailable(reason)) => {
                    assert!(reason.contains("broken"), "{reason}")
                }
                other => panic!("expected unavailable, got {:?}", other.err()),
            }
        }
        assert_eq!(
            meter.reads.load(Ordering::SeqCst),
            reads,
            "no retry on requests"
        );
        assert!(registry.load("broken").is_err(), "an explicit load retries");
        assert_eq!(meter.reads.load(Ordering::SeqCst), reads + 1);
        assert!(registry.get("a", None).is_ok());
    }

    /// A node plan that offers ONNX Runtime CUDA on cuda:0 before tract on the CPU; no
    /// machine the tests run on can load the first.
    fn plan_with_an_unusable_gpu() -> EnginePlan {
        EnginePlan {
            candidates: vec![
                Candidate {
                    engine: EngineKind::OrtCuda,
                    devices: vec![Device::Cuda(0)],
                },
                Candidate {
                    engine: EngineKind::TractCpu,
                    devices: vec![Device::Cpu],
                },
            ],
            mismatch: None,
            notes: Vec::new(),
        }
    }

    fn registry_with_plan(root: &Path, plan: EnginePlan) -> Registry {
        let mut config = RegistryConfig::new(root.to_path_buf(), EngineChoice::Auto);
        config.plan = plan;
        Registry::open(config).unwrap()
    }

    #[test]
    fn a_failed_accelerator_falls_back_along_the_plan_unless_the_device_is_pinned() {
        if !modelpod_accel::probe::cuda_devices().devices.is_empty() {
            return; // With a GPU, ort-cuda may load: this test is about machines without one.
        }
        let repo = repository(&["free", "pinned", "exact"]);
        std::fs::write(repo.path().join("pinned/model.toml"), "device = \"gpu\"\n").unwrap();
        std::fs::write(
            repo.path().join("exact/model.toml"),
            "engine = \"ort-cuda\"\n",
        )
        .unwrap();
        let registry = registry_with_plan(repo.path(), plan_with_an_unusable_gpu());
        registry.load_all();

        let free = registry.get("free", None).unwrap();
        assert_eq!(free.engine, EngineKind::TractCpu);
        assert_eq!(free.devices, [Device::Cpu]);
        // A pinned device or engine never lands on the CPU: the model fails, saying why.
        for name in ["pinned", "exact"] {
            assert_eq!(state(&registry, name), ModelState::Failed, "{name}");
            let reason = registry
                .index()
                .into_iter()
                .find(|e| e.name == name)
                .and_then(|e| e.reason)
                .unwrap();
            assert!(reason.contains("ort-cuda"), "{name}: {reason}");
        }
    }

    #[test]
    fn a_node_without_the_pinned_engine_says_what_it_has() {
        let repo = repository(&["exact"]);
        std::fs::write(
            repo.path().join("exact/model.toml"),
            "engine = \"tract-cuda\"\n",
        )
        .unwrap();
        let registry = registry_with_plan(repo.path(), EnginePlan::cpu_only());
        registry.load_all();
        let reason = registry
            .index()
            .into_iter()
            .find(|e| e.name == "exact")
            .and_then(|e| e.reason)
            .unwrap();
        assert!(
            reason.contains("engine tract-cuda") && reason.contains("tract-cpu on cpu"),
            "{reason}"
        );
    }

    #[test]
    fn unloaded_models_are_not_loaded_on_demand_until_loaded_again() {
        let repo = repository(&["a"]);
        let (registry, _) = registry(repo.path(), None);
        drop(registry.acquire("a", None, None).unwrap());
        registry.unload("a").unwrap();
        assert!(!registry.loads_on_demand("a", None));
        assert!(matches!(
            registry.acquire("a", None, None),
            Err(ScoringError::ModelUnavailable(_))
        ));
        registry.load("a").unwrap();
        assert!(registry.get("a", None).is_ok());
    }

    #[test]
    fn polling_registers_added_models_and_forgets_removed_ones() {
        let repo = repository(&["a"]);
        let (registry, _) = registry(repo.path(), None);
        copy_dir(&fixture("mlp"), &repo.path().join("z"));
        copy_dir(&fixture("mlp").join("1"), &repo.path().join("z/2"));
        std::fs::remove_dir_all(repo.path().join("a")).unwrap();
        registry.poll_repository(true).unwrap();
        let names = registry.model_names();
        assert!(names.contains(&"z".to_string()) && !names.contains(&"a".to_string()));
        assert_eq!(registry.get("z", Some(2)).unwrap().version, 2);
        // A version removed from disk is unloaded and forgotten.
        std::fs::remove_dir_all(repo.path().join("z/2")).unwrap();
        registry.poll_repository(true).unwrap();
        assert!(matches!(
            registry.get("z", Some(2)),
            Err(ScoringError::ModelNotFound(_))
        ));
        assert!(registry.get("z", Some(1)).is_ok());
    }
}

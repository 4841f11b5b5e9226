//! The model registry: every model version the repository holds, its state, and — once
//! ready — the served model (engine, pipeline, batcher). Readiness, the v2 repository API and
//! `/metrics` all read model state from here.
//!
//! Models load eagerly at start-up (as many as the memory budget holds) or on first use, and
//! concurrent first requests wait for one load. When a load would pass the budget, the least
//! recently used models that no request holds are evicted first; a model in use is never
//! evicted. All state changes happen under one lock, so the budget is never double-spent.
//!
//! This module holds the state and its lock and answers lookups; the loading and unloading
//! lifecycle is in [`lifecycle`], the budget decision (a pure function, property-tested) in
//! [`budget`], and building a served model on an engine (fallback along the plan, footprint
//! measurement, warm-up, batch policy) in [`build`].

mod budget;
mod build;
mod lifecycle;

pub use build::DEFAULT_MAX_BATCH_SIZE;

use crate::batcher::{BatchPolicy, Batcher, JobReply};
use crate::error::ScoringError;
use crate::memory::{
    AllocationMeter, DeviceMemoryMeter, Footprint, HOST, MemoryBudget, UNMEASURED_OVERHEAD_BYTES,
    unmeasured_footprint,
};
use crate::pipeline::{ScorePipeline, shape_text};
use crate::repository::{ModelSource, RepositoryError, VersionSource, scan_repository};
use crate::sequence::{SequenceBatcher, SequenceFlags};
use modelpod_accel::plan::EnginePlan;
use modelpod_accel::{Device, EngineChoice, EngineKind, EngineOptions, Signature, Tensor};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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
    /// Requests scored at once in front of the batcher (maxConcurrentRequestsPerContainer),
    /// when known: with 1, a batching model is warned about at load, as it can never batch.
    pub concurrent_requests: Option<usize>,
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
            concurrent_requests: None,
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
    queue: ModelQueue,
    /// Triton's statistics extension for this version (its batcher records executions).
    pub statistics: Arc<crate::statistics::ModelStatistics>,
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

    /// Queues inputs (signature order) for the batcher; `sequence` places a request of a
    /// stateful model in its sequence, and is refused for any other model.
    pub fn submit(
        &self,
        inputs: Vec<Tensor>,
        sequence: Option<SequenceFlags>,
        deadline: Option<Instant>,
    ) -> Result<JobReply, ScoringError> {
        match (&self.queue, sequence) {
            (ModelQueue::Dynamic(batcher), None) => batcher.submit(inputs, deadline),
            (ModelQueue::Dynamic(_), Some(_)) => Err(ScoringError::BadRequest(format!(
                "model '{}' is not stateful: sequence_id, sequence_start and sequence_end apply to models with a [sequence_batching] section",
                self.name
            ))),
            (ModelQueue::Sequence(batcher), sequence) => batcher.submit(inputs, sequence),
        }
    }

    pub fn queue_len(&self) -> usize {
        match &self.queue {
            ModelQueue::Dynamic(batcher) => batcher.queue_len(),
            ModelQueue::Sequence(batcher) => batcher.queue_len(),
        }
    }

    /// The sequence batcher of a stateful model.
    pub fn sequence_batcher(&self) -> Option<&SequenceBatcher> {
        match &self.queue {
            ModelQueue::Dynamic(_) => None,
            ModelQueue::Sequence(batcher) => Some(batcher),
        }
    }
}

/// Where a model's requests wait for its workers.
pub(crate) enum ModelQueue {
    Dynamic(Batcher),
    Sequence(SequenceBatcher),
}

pub(crate) struct VersionEntry {
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

pub(crate) struct ModelEntry {
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

/// Whether a load may evict other models to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
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
    /// Host memory held by what serves beside the models (entry-script workers), by holder:
    /// it counts against the budget as loaded models do, so loads evict to make room for it.
    outside: Mutex<BTreeMap<String, u64>>,
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
            outside: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.config.budget
    }

    /// Bytes the loaded (and loading) models, and what serves beside them, hold on `device`.
    pub fn memory_used(&self, device: &str) -> u64 {
        used_on(&self.models.read(), device) + self.outside_on(device)
    }

    /// Records what `holder` (not a model: an entry-script service's workers) holds of host
    /// memory now, as measured; it counts against the budget from the next load on.
    pub fn set_outside_memory(&self, holder: &str, bytes: u64) {
        self.outside.lock().insert(holder.to_string(), bytes);
    }

    fn outside_on(&self, device: &str) -> u64 {
        if device == crate::memory::HOST {
            self.outside.lock().values().sum()
        } else {
            0
        }
    }

    pub fn repository(&self) -> &Path {
        &self.config.repository
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
    /// How many model versions are registered, and how many of them failed to load; no
    /// allocation, as readiness is asked on every busy-state report.
    pub fn failure_counts(&self) -> (usize, usize) {
        let models = self.models.read();
        let versions = models.values().flat_map(|m| m.versions.values());
        versions.fold((0, 0), |(total, failed), v| {
            (
                total + 1,
                failed + usize::from(v.state == ModelState::Failed),
            )
        })
    }

    /// The versions that failed to load, as `name/version`.
    pub fn failed_versions(&self) -> Vec<String> {
        self.models
            .read()
            .iter()
            .flat_map(|(name, m)| {
                m.versions
                    .iter()
                    .filter(|(_, v)| v.state == ModelState::Failed)
                    .map(move |(version, _)| format!("{name}/{version}"))
            })
            .collect()
    }

    pub fn all_ready(&self) -> bool {
        self.models
            .read()
            .values()
            .all(|m| m.versions.values().all(|v| v.state != ModelState::Failed))
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

#[cfg(test)]
mod tests {
    use super::*;
    use modelpod_accel::plan::Candidate;
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;

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
            a.submit(vec![row], None, None)
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

    /// What serves beside the models (entry-script workers) takes budget as a model would:
    /// a load then evicts an idle model to make room, or is refused when none is idle.
    #[test]
    fn memory_held_beside_the_models_counts_against_the_budget() {
        let repo = repository(&["a", "b"]);
        let (registry, _) = registry(repo.path(), Some(2.5));
        drop(registry.acquire("a", None, None).unwrap());
        registry.set_outside_memory("entry-script:churn", MIB);
        assert_eq!(registry.memory_used(HOST), 2 * MIB);
        drop(registry.acquire("b", None, None).unwrap());
        assert_eq!(
            state(&registry, "a"),
            ModelState::Registered,
            "a was evicted for the workers' share"
        );
        registry.set_outside_memory("entry-script:churn", 2 * MIB);
        let b = registry.get("b", None).unwrap();
        assert!(matches!(
            registry.acquire("a", None, None),
            Err(ScoringError::Overloaded(_))
        ));
        drop(b);
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

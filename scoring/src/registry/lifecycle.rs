//! Loading and unloading: start-up loads, the repository API's load and unload, repository
//! polling, eviction's aftermath, and shutdown. Every state change happens under the
//! registry's lock; engines are built and workers joined outside it.

use super::{Eviction, ModelState, Registry, ServedModel, VersionEntry, entry_for};
use crate::error::ScoringError;
use crate::memory::Footprint;
use crate::repository::{ModelSource, RepositoryError, scan_model, scan_repository};
use modelpod_accel::Device;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

impl Registry {
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

    pub(super) fn unload_versions(&self, name: &str) {
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
    pub(super) fn load_version(
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
                    if served.policy.max_batch_size > 1
                        && self.config.concurrent_requests == Some(1)
                    {
                        tracing::warn!(
                            model = name,
                            "the model batches up to {} rows, but maxConcurrentRequestsPerContainer \
                             is 1 (Azure's default): one request is scored at a time, so no batch \
                             can form; raise it (--max-concurrent-requests) to batch",
                            served.policy.max_batch_size
                        );
                    }
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

    /// Drops evicted models (joining their idle workers) and returns their memory.
    pub(super) fn retire(&self, evicted: Vec<Arc<ServedModel>>) {
        if !evicted.is_empty() {
            drop(evicted);
            self.release_freed_memory();
        }
    }

    pub(super) fn release_freed_memory(&self) {
        if let Some(meter) = &self.config.meter {
            meter.release_freed_memory();
        }
    }

    pub(super) fn finish_load(&self) {
        *self.loads_finished.lock() += 1;
        self.load_done.notify_all();
    }

    /// Stops every model's workers after their queues drain.
    pub fn shutdown(&self) {
        for name in self.model_names() {
            self.unload_versions(&name);
        }
    }
}

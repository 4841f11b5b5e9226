//! Prometheus metrics. Libraries record through the `metrics` facade; the process installs one
//! recorder and `/metrics` renders it. Model state gauges are refreshed from the registry at
//! scrape time, so they cannot drift from it.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use modelpod_scoring::{ModelState, Registry};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] = &[
    0.00001, 0.00002, 0.00003, 0.00004, 0.00005, 0.000075, 0.0001, 0.00015, 0.0002, 0.00025,
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const ROWS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the process-wide recorder once (servers started later in the same process, as in
/// tests, share it) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), ROWS_BUCKETS)
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, in which case ours just stays empty.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Renders the text format after refreshing the gauges read from the registry: per-model state
/// and footprint, models per state, memory used against the budget, and the process's RSS.
pub fn render(handle: &PrometheusHandle, registry: &Registry) -> String {
    let mut per_state = [0usize; ModelState::ALL.len()];
    let mut ledgers: std::collections::BTreeSet<String> = registry
        .budget()
        .limits()
        .map(|(device, _)| device.to_string())
        .collect();
    for entry in registry.index() {
        for (i, state) in ModelState::ALL.into_iter().enumerate() {
            let value = if entry.state == state {
                per_state[i] += 1;
                1.0
            } else {
                0.0
            };
            metrics::gauge!("modelpod_model_state", "model" => entry.name.clone(), "version" => entry.version.clone(), "state" => state.name())
                .set(value);
        }
        let host = modelpod_scoring::memory::HOST.to_string();
        let footprint = entry.footprint.unwrap_or_else(|| [(host, 0)].into());
        for (device, bytes) in footprint {
            ledgers.insert(device.clone());
            metrics::gauge!("modelpod_model_footprint_bytes", "model" => entry.name.clone(), "version" => entry.version.clone(), "device" => device)
                .set(bytes as f64);
        }
    }
    for (state, count) in ModelState::ALL.into_iter().zip(per_state) {
        metrics::gauge!("modelpod_models", "state" => state.name()).set(count as f64);
    }
    ledgers.insert(modelpod_scoring::memory::HOST.to_string());
    for device in ledgers {
        let used = registry.memory_used(&device);
        metrics::gauge!("modelpod_memory_used_bytes", "device" => device).set(used as f64);
    }
    for (device, limit) in registry.budget().limits() {
        metrics::gauge!("modelpod_memory_budget_bytes", "device" => device.to_string())
            .set(limit as f64);
    }
    if let Some(rss) = crate::memory::resident_bytes() {
        metrics::gauge!("modelpod_process_resident_bytes").set(rss as f64);
    }
    handle.render()
}

//! The scoring server's `/metrics`. Model state gauges are refreshed from the registry at scrape
//! time, so they cannot drift from it.

use metrics_exporter_prometheus::PrometheusHandle;
use modelpod_http::ApiError;
use std::time::{Duration, Instant};

/// Counts one finished request (its status, its duration, and the kind of the server's
/// failure if any), for every route that scores: ONNX models and entry scripts alike. An
/// entry script's own status (a 400 from its input parser, a 500 from run()) is its status.
pub fn record_request(
    protocol: &'static str,
    model: &str,
    arrival: Instant,
    status: Option<u16>,
    failure: Option<&ApiError>,
) {
    let model = model.to_string();
    let status = status
        .or_else(|| failure.map(|e| actix_web::ResponseError::status_code(e).as_u16()))
        .unwrap_or(200);
    metrics::counter!("modelpod_requests_total", "model" => model.clone(), "protocol" => protocol, "code" => status.to_string())
        .increment(1);
    metrics::histogram!("modelpod_request_duration_seconds", "model" => model.clone(), "protocol" => protocol)
        .record(arrival.elapsed().as_secs_f64());
    if let Some(e) = failure {
        metrics::counter!("modelpod_request_failures_total", "model" => model, "protocol" => protocol, "error_type" => e.kind())
            .increment(1);
    }
}

/// Where a scored request's time went inside the model: waiting for a batch, and running.
pub fn record_scoring_times(model: &str, queue: Duration, compute: Duration) {
    metrics::histogram!("modelpod_queue_duration_seconds", "model" => model.to_string())
        .record(queue.as_secs_f64());
    metrics::histogram!("modelpod_compute_duration_seconds", "model" => model.to_string())
        .record(compute.as_secs_f64());
}

use modelpod_scoring::{ModelState, Registry};

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

//! Triton's HTTP extensions beyond inference: statistics, system shared memory, and honest
//! refusals for what modelpod does not have (CUDA shared memory, trace and log settings).
//! Each takes a key like every non-public route.

use super::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use modelpod_http::ApiError;
use modelpod_scoring::ScoringError;
use modelpod_scoring::statistics::StatisticsSnapshot;
use serde::Deserialize;
use serde_json::json;

/// The extensions `GET /v2` and ServerMetadata list: each one works as Triton's does.
pub const EXTENSIONS: [&str; 8] = [
    "binary_tensor_data",
    "classification",
    "sequence",
    "model_repository",
    "model_configuration",
    "statistics",
    "system_shared_memory",
    "parameters",
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2/models/stats", web::get().to(statistics))
        .route("/v2/models/{name}/stats", web::get().to(statistics))
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            web::get().to(statistics),
        )
        .route("/v2/systemsharedmemory/status", web::get().to(shm_status))
        .route(
            "/v2/systemsharedmemory/region/{region}/status",
            web::get().to(shm_status),
        )
        .route(
            "/v2/systemsharedmemory/region/{region}/register",
            web::post().to(shm_register),
        )
        .route(
            "/v2/systemsharedmemory/unregister",
            web::post().to(shm_unregister),
        )
        .route(
            "/v2/systemsharedmemory/region/{region}/unregister",
            web::post().to(shm_unregister),
        )
        // No CUDA region can be registered, so the status is empty and unregistering (what
        // clients do on their way out, perf_analyzer included) has nothing to do.
        .route(
            "/v2/cudasharedmemory/status",
            web::get().to(|| async { HttpResponse::Ok().json(json!([])) }),
        )
        .route(
            "/v2/cudasharedmemory/unregister",
            web::post().to(|| async { HttpResponse::Ok().json(json!({})) }),
        )
        .route(
            "/v2/cudasharedmemory/region/{region}/unregister",
            web::post().to(|| async { HttpResponse::Ok().json(json!({})) }),
        )
        .route("/v2/cudasharedmemory/{tail:.*}", web::route().to(cuda_shm))
        .route("/v2/trace/setting", web::route().to(trace))
        .route("/v2/models/{name}/trace/setting", web::route().to(trace))
        .route("/v2/logging", web::route().to(logging));
}

/// Statistics of one model version, a model's versions, or (no name) every loaded model.
pub fn model_statistics(
    state: &AppState,
    name: &str,
    version: Option<u64>,
) -> Result<Vec<(String, u64, StatisticsSnapshot)>, ScoringError> {
    let registry = state.registry();
    if !name.is_empty() && version.is_some() {
        let model = registry.get(name, version)?;
        return Ok(vec![(
            model.name.clone(),
            model.version,
            model.statistics.snapshot(),
        )]);
    }
    if !name.is_empty() && !registry.model_names().iter().any(|n| n == name) {
        return Err(ScoringError::ModelNotFound(format!(
            "requested model '{name}' is not served here"
        )));
    }
    Ok(registry
        .index()
        .into_iter()
        .filter(|e| name.is_empty() || e.name == name)
        .filter_map(|e| {
            let version = e.version.parse().ok()?;
            let model = registry.get(&e.name, Some(version)).ok()?;
            Some((e.name, version, model.statistics.snapshot()))
        })
        .collect())
}

async fn statistics(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = request.match_info().get("name").unwrap_or_default();
    let version = match request.match_info().get("version") {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ScoringError::BadRequest(format!("model version '{v}' is not a positive integer"))
        })?),
    };
    let stats: Vec<_> = model_statistics(&state, name, version)?
        .into_iter()
        .map(|(name, version, snapshot)| {
            let mut entry = serde_json::to_value(snapshot).expect("plain structs serialise");
            entry["name"] = json!(name);
            entry["version"] = json!(version.to_string());
            entry
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "model_stats": stats })))
}

fn region(request: &HttpRequest) -> &str {
    request.match_info().get("region").unwrap_or_default()
}

async fn shm_status(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.shared_memory.status(region(&request))?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    key: String,
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

async fn shm_register(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    const REGISTER_LIMIT: usize = 64 * 1024;
    let body = state.bodies.read(&request, payload, REGISTER_LIMIT).await?;
    let register: RegisterRequest = serde_json::from_slice(&body).map_err(|e| {
        ScoringError::BadRequest(format!("malformed shared memory register request: {e}"))
    })?;
    state.shared_memory.register(
        region(&request),
        &register.key,
        register.offset,
        register.byte_size,
    )?;
    Ok(HttpResponse::Ok().finish())
}

async fn shm_unregister(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.shared_memory.unregister(region(&request))?;
    Ok(HttpResponse::Ok().finish())
}

/// What a client is told for CUDA shared memory.
pub const NO_CUDA_SHARED_MEMORY: &str = "CUDA shared memory is not supported by modelpod: no CUDA region can be registered; register system shared memory (/v2/systemsharedmemory) instead";
pub const NO_TRACE: &str = "trace settings are not supported by modelpod: requests are traced through x-request-id in its logs and /metrics";
pub const NO_LOG_SETTINGS: &str = "log settings are not supported by modelpod: set the log level at start (RUST_LOG, --log-format)";

async fn cuda_shm() -> Result<HttpResponse, ApiError> {
    Err(ScoringError::BadRequest(NO_CUDA_SHARED_MEMORY.into()).into())
}

async fn trace() -> Result<HttpResponse, ApiError> {
    Err(ScoringError::BadRequest(NO_TRACE.into()).into())
}

async fn logging() -> Result<HttpResponse, ApiError> {
    Err(ScoringError::BadRequest(NO_LOG_SETTINGS.into()).into())
}

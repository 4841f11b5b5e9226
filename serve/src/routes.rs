//! The scoring server's HTTP routes: Azure ML v1, Open Inference Protocol v2 (with Triton's
//! model-configuration extension), the v2 repository extension, health and metrics.
//!
//! With keys configured, every route takes one except the public ones: the probes (`GET /`,
//! `/v2/health/live`, `/v2/health/ready`) and `GET /swagger.json` (public on Azure too). The
//! check runs before any handler, so no unauthenticated request reads a body or loads a model.

use super::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use modelpod_http::ApiError;
use modelpod_http::health::{azure_health, not_found};
use modelpod_scoring::batcher::JobOutput;
use modelpod_scoring::v2::INFERENCE_HEADER_CONTENT_LENGTH;
use modelpod_scoring::{Registry, SERVED_MODEL_HEADER, ScoringError, ServedModel, v2};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The routes anyone may call with GET, keys or not: probes and the swagger document.
pub const PUBLIC_ROUTES: [&str; 4] = ["/", "/v2/health/live", "/v2/health/ready", "/swagger.json"];

/// What the probes-only listener (`--health-port`) answers; anything else there is 404.
pub const PROBE_ROUTES: [&str; 3] = ["/", "/v2/health/live", "/v2/health/ready"];

/// Refuses every request without a valid key, when keys are configured, before its handler
/// runs; public routes pass. A path is public only if it is exactly one of them. `OPTIONS
/// /score` is public too: Azure answers it 200 for browsers, which send no credentials.
pub async fn require_key(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use actix_web::http::Method;
    let path = request.path();
    let get = request.method() == Method::GET;
    let public = (get && PUBLIC_ROUTES.contains(&path))
        || (request.method() == Method::OPTIONS && path == "/score");
    if let Some(state) = request.app_data::<web::Data<AppState>>() {
        let on_probe_port = state
            .probe_port
            .is_some_and(|port| request.app_config().local_addr().port() == port);
        if on_probe_port && !(get && PROBE_ROUTES.contains(&path)) {
            return Err(ApiError::NotFound(format!(
                "{path}: the health port answers only GET {}",
                PROBE_ROUTES.join(", ")
            ))
            .into());
        }
        if !public {
            state.auth.check(request.request())?;
        }
    }
    next.call(request).await
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(modelpod_http::error::query_config())
        .route("/", web::get().to(azure_health))
        .route("/score", web::post().to(score))
        // Azure's server passes GET /score to the entry script (its query as the input).
        .route("/score", web::get().to(score_get))
        // Azure's server answers a bare OPTIONS /score with an empty 200 (with CORS on, the
        // middleware answers preflights before this).
        .route(
            "/score",
            web::method(actix_web::http::Method::OPTIONS).to(score_options),
        )
        // Any other method: Flask's 405, as Azure's server answers it.
        .route("/score", web::route().to(score_method_not_allowed))
        .route("/swagger.json", web::get().to(super::swagger::swagger))
        .route("/metrics", web::get().to(metrics))
        .route("/v2", web::get().to(server_metadata))
        // Before /v2/models/{name}, which would take /v2/models/stats for a model.
        .configure(crate::extensions::configure)
        .route("/v2/health/live", web::get().to(live))
        .route("/v2/health/ready", web::get().to(ready))
        .route("/v2/models/{name}", web::get().to(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            web::get().to(model_metadata),
        )
        .route("/v2/models/{name}/ready", web::get().to(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            web::get().to(model_ready),
        )
        .route("/v2/models/{name}/config", web::get().to(model_config))
        .route(
            "/v2/models/{name}/versions/{version}/config",
            web::get().to(model_config),
        )
        .route("/v2/models/{name}/infer", web::post().to(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            web::post().to(infer),
        )
        .route("/modelpod/busy", web::get().to(busy))
        .route("/v2/repository/index", web::post().to(repository_index))
        .route(
            "/v2/repository/models/{name}/load",
            web::post().to(repository_load),
        )
        .route(
            "/v2/repository/models/{name}/unload",
            web::post().to(repository_unload),
        )
        .default_service(web::to(not_found));
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "live": true }))
}

async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match state.scorer.unready_reason() {
        None => HttpResponse::Ok().json(json!({ "ready": true })),
        Some(reason) => {
            HttpResponse::ServiceUnavailable().json(json!({ "ready": false, "reason": reason }))
        }
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render(&state.metrics, state.registry()))
}

async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "modelpod",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": crate::extensions::EXTENSIONS,
    }))
}

fn path_model(request: &HttpRequest) -> Result<(String, Option<u64>), ApiError> {
    let name = request
        .match_info()
        .get("name")
        .unwrap_or_default()
        .to_string();
    let version = parse_version(request.match_info().get("version"))?;
    Ok((name, version))
}

fn parse_version(version: Option<&str>) -> Result<Option<u64>, ApiError> {
    match version.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            ScoringError::BadRequest(format!("model version '{v}' is not a positive integer"))
                .into()
        }),
    }
}

async fn model_metadata(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (name, version) = path_model(&request)?;
    let model = state.scorer.model(&name, version, Instant::now()).await?;
    let tensors = |specs: &[modelpod_accel::TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({ "name": s.name, "datatype": s.dtype.as_str(), "shape": s.dims_i64() }))
            .collect()
    };
    let versions: Vec<String> = state
        .registry()
        .index()
        .into_iter()
        .filter(|e| e.name == name)
        .map(|e| e.version)
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "name": model.name,
        "versions": versions,
        "platform": model.engine.triton_platform(),
        "inputs": tensors(&model.signature.inputs),
        "outputs": tensors(&model.signature.outputs),
    })))
}

async fn model_ready(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (name, version) = path_model(&request)?;
    match state.registry().get(&name, version) {
        Ok(_) => Ok(HttpResponse::Ok().json(json!({ "name": name, "ready": true }))),
        Err(ScoringError::ModelUnavailable(reason)) => Ok(HttpResponse::ServiceUnavailable()
            .json(json!({ "name": name, "ready": false, "error": reason, "message": reason, "error_type": "ModelUnavailable" }))),
        Err(e) => Err(e.into()),
    }
}

/// Triton's model configuration, which perf_analyzer and tritonclient read.
async fn model_config(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (name, version) = path_model(&request)?;
    let model = state.scorer.model(&name, version, Instant::now()).await?;
    let config = crate::model_config::config_json(&crate::model_config::model_config(&model));
    Ok(HttpResponse::Ok().json(config))
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    ready: Option<bool>,
}

async fn repository_index(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    /// An index request is a filter object, never large.
    const INDEX_REQUEST_LIMIT: usize = 64 * 1024;
    let body = state
        .bodies
        .read(&request, payload, INDEX_REQUEST_LIMIT)
        .await?;
    let filter: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ScoringError::BadRequest(format!("malformed index request: {e}")))?
    };
    let entries: Vec<_> = state
        .registry()
        .index()
        .into_iter()
        .filter(|e| filter.ready != Some(true) || e.state == modelpod_scoring::ModelState::Ready)
        .map(|e| {
            let mut v = json!({ "name": e.name, "version": e.version, "state": e.state.as_str() });
            if let Some(reason) = e.reason {
                v["reason"] = Value::String(reason);
            }
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(entries))
}

async fn repository_load(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    /// A load request carries at most a config override, never large.
    const LOAD_REQUEST_LIMIT: usize = 1024 * 1024;
    let body = state
        .bodies
        .read(&request, payload, LOAD_REQUEST_LIMIT)
        .await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let load: serde_json::Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|e| ScoringError::BadRequest(format!("malformed load request: {e}")))?;
        let parameters = load.get("parameters").and_then(Value::as_object);
        refuse_load_parameters(
            parameters
                .into_iter()
                .flat_map(|p| p.keys().map(String::as_str)),
        )?;
    }
    on_repository(&request, &state, Registry::load).await
}

/// Load parameters modelpod does not apply: a `config` override, `file:` contents. A load
/// that silently ignored them would serve something other than what was asked for.
pub fn refuse_load_parameters<'a>(
    names: impl Iterator<Item = &'a str>,
) -> Result<(), ScoringError> {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        return Ok(());
    }
    Err(ScoringError::BadRequest(format!(
        "load parameters {} are not supported by modelpod: a model's configuration is its model.toml in the repository (edit it, then load)",
        names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

async fn repository_unload(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    on_repository(&request, &state, Registry::unload).await
}

/// The v2 repository extension's load and unload, when `--model-control-mode explicit` allows
/// them: run off the async workers (loading compiles a model), answered with an empty JSON
/// object.
async fn on_repository(
    request: &HttpRequest,
    state: &AppState,
    action: fn(&Registry, &str) -> Result<(), ScoringError>,
) -> Result<HttpResponse, ApiError> {
    if state.config.model_control != crate::config::ModelControl::Explicit {
        return Err(ApiError::Forbidden(
            "repository control is off: this server's models are what its repository holds (start it with --model-control-mode explicit to load and unload through this API)".into(),
        ));
    }
    let (name, _) = path_model(request)?;
    let registry = state.registry().clone();
    web::block(move || action(&registry, &name))
        .await
        .map_err(|e| ScoringError::Engine(format!("repository {}: {e}", request.path())))??;
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(serde::Deserialize)]
struct BusyPoll {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait_ms: u64,
}

/// The longest a busy-state poll is held open.
const MAX_BUSY_WAIT: Duration = Duration::from_secs(30);

/// `GET /modelpod/busy?after=SEQ&wait_ms=MS`: the router's long poll (see [`super::busy`]).
async fn busy(state: web::Data<AppState>, poll: web::Query<BusyPoll>) -> HttpResponse {
    let wait = Duration::from_millis(poll.wait_ms).min(MAX_BUSY_WAIT);
    state.scorer.busy().changed_after(poll.after, wait).await;
    let mut report = state.scorer.busy_report();
    report.grpc_port = state.grpc_port.get().copied();
    HttpResponse::Ok().json(report)
}

/// Records one finished inference request.
fn record(
    protocol: &'static str,
    model: &str,
    arrival: Instant,
    outcome: Result<&JobOutput, &ApiError>,
) {
    crate::metrics::record_request(protocol, model, arrival, None, outcome.err());
    if let Ok(out) = outcome {
        crate::metrics::record_scoring_times(model, out.queue_time, out.compute_time);
    }
}

#[derive(Deserialize)]
struct ScoreQuery {
    model: Option<String>,
    version: Option<String>,
}

/// The entry script a `/score` request is for: the one `?model=` names, or, without
/// `?model=`, the server's entry script unless `--default-model` names another model.
fn entry_script_for(
    state: &AppState,
    model: Option<&str>,
) -> Option<std::sync::Arc<crate::entry_script::EntryScriptService>> {
    let service = state.entry_script.as_ref()?;
    let wanted = match model.filter(|m| !m.is_empty()) {
        Some(model) => model == service.name(),
        None => state
            .config
            .default_model
            .as_deref()
            .is_none_or(|d| d == service.name()),
    };
    wanted.then(|| service.clone())
}

/// The model a query string names, without failing on anything else in it: an entry
/// script's own parameters (GET /score) are any names at all.
fn named_model(query: &str) -> Option<String> {
    web::Query::<Vec<(String, String)>>::from_query(query)
        .ok()?
        .into_inner()
        .into_iter()
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v)
}

/// Azure's empty answer, as its AMLResponse("", 200) makes it.
async fn score_options() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(crate::entry_script::http::RUN_FUNCTION_FAILED)
        .finish()
}

async fn score_method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "GET, OPTIONS, POST"))
        .insert_header(crate::entry_script::http::RUN_FUNCTION_FAILED)
        .json(json!({ "message": "The method is not allowed for the requested URL." }))
}

/// `GET /score`: only entry scripts take it, as Azure's server does.
async fn score_get(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let arrival = Instant::now();
    match entry_script_for(&state, named_model(request.query_string()).as_deref()) {
        Some(service) => {
            crate::entry_script::http::score(request, payload, state, &service, arrival).await
        }
        None => Err(ApiError::NotFound(
            "GET /score is for entry scripts; an ONNX model is scored with POST /score".into(),
        )),
    }
}

/// Azure's `POST /score`: `{"data": ...}` through the model's declared pipeline.
async fn score(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let arrival = Instant::now();
    if let Some(service) = entry_script_for(&state, named_model(request.query_string()).as_deref())
    {
        return crate::entry_script::http::score(request, payload, state, &service, arrival).await;
    }
    let query = web::Query::<ScoreQuery>::from_query(request.query_string())
        .map_err(|e| ScoringError::BadRequest(format!("invalid query string: {e}")))?
        .into_inner();
    let name = match query
        .model
        .filter(|m| !m.is_empty())
        .or_else(|| state.config.default_model.clone())
    {
        Some(name) => name,
        None => {
            let names = state.registry().model_names();
            match names.as_slice() {
                [only] => only.clone(),
                [] => {
                    return Err(
                        ScoringError::ModelNotFound("no models are served here".into()).into(),
                    );
                }
                several => {
                    return Err(ScoringError::BadRequest(format!(
                        "several models are served ({}); name one with ?model=",
                        several.join(", ")
                    ))
                    .into());
                }
            }
        }
    };
    let model = state
        .scorer
        .model(&name, parse_version(query.version.as_deref())?, arrival)
        .await?;
    let result = async {
        state.scorer.shed_if_hopeless()?;
        let body = state
            .bodies
            .read(&request, payload, state.config.limits.max_request_bytes)
            .await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ScoringError::BadRequest("the request body is empty".into()).into());
        }
        // A slot before decoding: under overload a request that cannot start within
        // maxQueueWaitMs is refused by then, and the cores go to requests that will be scored.
        // (The body comes first: a client that sends it slowly must not hold a slot.)
        let slot = state.scorer.admit().await?;
        let decoding = model.clone();
        let inputs =
            off_the_event_loop(body, move |body| decoding.pipeline.decode_json(body)).await?;
        Ok(state
            .scorer
            .run_any_rows(slot, &model, inputs, arrival)
            .await?)
    }
    .await;
    record("azure", &model.name, arrival, result.as_ref());
    let output = result?;
    let reply = model.pipeline.encode(&output.outputs)?;
    Ok(HttpResponse::Ok()
        .insert_header(served(&model))
        .insert_header((
            "x-ms-run-fn-exec-ms",
            format!("{:.3}", arrival.elapsed().as_secs_f64() * 1000.0),
        ))
        .json(reply))
}

/// Bodies larger than this are decoded on a blocking thread: a decode of milliseconds on the
/// event loop would hold up every request of that worker, the 503s of requests waiting for a
/// slot included. Smaller ones decode in less time than the hand-off takes.
const OFF_LOOP_BYTES: usize = 64 * 1024;

/// Runs `decode` on the body (then frees it), off the event loop when the body is large.
async fn off_the_event_loop<T: Send + 'static>(
    body: modelpod_http::body::Body,
    decode: impl FnOnce(&[u8]) -> Result<T, ScoringError> + Send + 'static,
) -> Result<T, ApiError> {
    if body.len() <= OFF_LOOP_BYTES {
        return Ok(decode(&body)?);
    }
    web::block(move || decode(&body))
        .await
        .map_err(|e| ScoringError::Engine(format!("decoding the request: {e}")))?
        .map_err(ApiError::from)
}

/// Open Inference Protocol v2 `infer`, JSON or binary tensors, or (a zero-length JSON
/// header) the raw binary request: the whole body is the model's single input.
async fn infer(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let arrival = Instant::now();
    let (name, version) = path_model(&request)?;
    let model = state.scorer.model(&name, version, arrival).await?;
    let json_len = match request.headers().get(INFERENCE_HEADER_CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ScoringError::BadRequest(
                        "Inference-Header-Content-Length is not a number".into(),
                    )
                })?,
        ),
    };
    let prepare = async {
        state.scorer.shed_if_hopeless()?;
        let body = state
            .bodies
            .read(&request, payload, state.config.limits.max_request_bytes)
            .await?;
        let slot = state.scorer.admit().await?;
        let decoding = state.clone().into_inner();
        let signature = model.signature.clone();
        let batched = model.policy.batches();
        let (request, decode_time) = off_the_event_loop(body, move |body| {
            let started = Instant::now();
            let request = if json_len == Some(0) {
                v2::raw_binary_request(body, &signature, batched)?
            } else {
                v2::decode_request_with(body, json_len, Some(&decoding.shared_memory))?
            };
            Ok((request, started.elapsed()))
        })
        .await?;
        Ok(crate::inference::Prepared {
            slot,
            request,
            decode_time,
        })
    };
    let answered = crate::inference::infer_v2(&state, &model, arrival, "v2", prepare)
        .await
        .map_err(as_triton_answers)?;
    let encoded = v2::encode_response(
        &model.name,
        &model.version.to_string(),
        answered.id.as_deref(),
        &answered.outputs,
    );
    let mut response = HttpResponse::Ok();
    response.insert_header(served(&model));
    match encoded.json_len {
        Some(len) => {
            response.insert_header((INFERENCE_HEADER_CONTENT_LENGTH, len.to_string()));
            response.content_type("application/octet-stream");
        }
        None => {
            response.content_type("application/json");
        }
    }
    Ok(response.body(encoded.body))
}

/// Triton answers 400 (its INVALID_ARG) for tensors that are well-formed but do not fit the
/// model, where Azure's `/score` answers 422; a v2 client sees Triton's code.
fn as_triton_answers(error: ApiError) -> ApiError {
    match error {
        ApiError::Scoring(ScoringError::InvalidInput(message)) => {
            ApiError::Scoring(ScoringError::BadRequest(message))
        }
        other => other,
    }
}

/// Says what was run, for the router's data collection.
fn served(model: &ServedModel) -> (&'static str, String) {
    (
        SERVED_MODEL_HEADER,
        format!("{}/{}", model.name, model.version),
    )
}

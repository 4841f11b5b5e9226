//! `/score` and `/swagger.json` for an entry-script service: the request is admitted as any
//! other (slot, maxQueueWaitMs), handed whole to a worker, and the worker's answer (Azure's
//! status, headers and body) is sent back as it came.

use super::{EntryScriptService, ScriptError, ScriptRequest};
use crate::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use modelpod_http::ApiError;
use modelpod_scoring::{SERVED_MODEL_HEADER, ScoringError};
use std::time::{Duration, Instant};

/// How long past the scoring timeout a worker may take before it is killed: run() itself is
/// stopped at the timeout by Azure's own alarm (a 500, as Azure's server answers); this only
/// catches a script the alarm cannot interrupt (native code, signals blocked).
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// Headers the script never sees: the caller's key is the front end's business.
const WITHHELD_HEADERS: [&str; 1] = ["authorization"];
/// Headers of the worker's answer the front end sets itself.
const HOP_HEADERS: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

pub async fn score(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    service: &EntryScriptService,
    arrival: Instant,
) -> Result<HttpResponse, ApiError> {
    let result = run(&request, payload, &state, service, arrival).await;
    let status = result.as_ref().ok().map(|r| r.status().as_u16());
    crate::metrics::record_request(
        "azure",
        service.name(),
        arrival,
        status,
        result.as_ref().err(),
    );
    result
}

async fn run(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    service: &EntryScriptService,
    arrival: Instant,
) -> Result<HttpResponse, ApiError> {
    state.scorer.shed_if_hopeless()?;
    let body = state
        .bodies
        .read(request, payload, state.config.limits.max_request_bytes)
        .await?;
    let slot = state.scorer.admit().await?;
    let limits = &state.config.limits;
    let id = ["x-request-id", "x-ms-request-id", "x-ms-client-request-id"]
        .iter()
        .find_map(|h| request.headers().get(*h)?.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let headers = request
        .headers()
        .iter()
        .filter(|(name, _)| !WITHHELD_HEADERS.contains(&name.as_str()))
        // As WSGI servers pass them (PEP 3333): each byte one Latin-1 character, so a value
        // that is not ASCII reaches the script instead of being dropped.
        .map(|(name, value)| {
            let latin1: String = value.as_bytes().iter().map(|&b| char::from(b)).collect();
            (name.to_string(), latin1)
        })
        .collect();
    let (host, port, scheme) = {
        let connection = request.connection_info();
        let (host, port) = match connection.host().rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse().unwrap_or(80)),
            None => (connection.host().to_string(), 80),
        };
        (host, port, connection.scheme().to_string())
    };
    let script_request = ScriptRequest {
        id,
        method: request.method().to_string(),
        path: request.path().to_string(),
        query: request.query_string().to_string(),
        headers,
        host,
        port,
        scheme,
        peer: request
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
        body: body.to_vec(),
    };
    let reply = service
        .call(
            script_request,
            arrival + limits.max_queue_wait,
            limits.scoring_timeout + KILL_GRACE,
        )
        .await;
    drop(slot);
    let reply = reply.map_err(|e| match e {
        ScriptError::Busy(m) => ApiError::from(ScoringError::Overloaded(m)),
        ScriptError::Unavailable(m) => ScoringError::ModelUnavailable(m).into(),
        ScriptError::Timeout(m) => ScoringError::DeadlineExceeded(m).into(),
        ScriptError::Crashed(m) => ApiError::BadGateway(m),
    })?;
    let status = StatusCode::from_u16(reply.status).map_err(|_| {
        ApiError::BadGateway(format!("the script answered status {}", reply.status))
    })?;
    let mut response = HttpResponse::build(status);
    for (name, value) in &reply.headers {
        if !HOP_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            response.append_header((name.as_str(), value.as_str()));
        }
    }
    response.insert_header((SERVED_MODEL_HEADER, format!("{}/1", service.name())));
    Ok(response.body(reply.body))
}

/// `GET /swagger.json[?version=]`: what Azure's server generates from the script's
/// inference-schema decorators (or reads from the swagger files beside it), and its 404s.
pub fn swagger(service: &EntryScriptService, version: Option<&str>) -> HttpResponse {
    let Some(documents) = service.swagger() else {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "message": service.unready_reason().unwrap_or_else(|| "the entry script is starting".into())
        }));
    };
    let version = version.unwrap_or("2");
    if let Some(document) = documents.documents.get(version) {
        return HttpResponse::Ok()
            .insert_header(RUN_FUNCTION_FAILED)
            .json(document);
    }
    let message = documents.errors.get(version).cloned().unwrap_or_else(|| {
        format!(
            "Swagger version [{version}] is not valid. Supported versions: [{}].",
            documents.supported.join(", ")
        )
    });
    HttpResponse::NotFound()
        .insert_header(RUN_FUNCTION_FAILED)
        .json(serde_json::json!({ "message": message }))
}

/// What every answer of Azure's server that is not run()'s failure carries (its AMLResponse).
pub const RUN_FUNCTION_FAILED: (&str, &str) = ("x-ms-run-function-failed", "False");

//! The router's HTTP front end: Azure's scoring URI per service, forwarded to a replica.

use super::replicas::NoReplica;
use super::{Service, collect};
use crate::http_error::ApiError;
use crate::serve::routes::{azure_health, not_found, read_body};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use modelpod_scoring::ScoringError;
use std::sync::Arc;
use std::time::Instant;

pub struct RouterState {
    pub services: Vec<Arc<Service>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl RouterState {
    /// The service a request's `{service}` path segment names.
    fn service(&self, request: &HttpRequest) -> Result<&Arc<Service>, ApiError> {
        let name = request.match_info().get("service").unwrap_or_default();
        self.services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ApiError::NotFound(format!("service '{name}' not found")))
    }
}

/// The HTTP client that forwards requests, one per worker.
pub struct Forwarder(pub reqwest::Client);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(crate::http_error::query_config())
        .route("/", web::get().to(azure_health))
        .route("/modelpod/services", web::get().to(services))
        .route(
            "/modelpod/services/{service}/logs",
            web::get().to(recent_logs),
        )
        .route("/metrics", web::get().to(render_metrics))
        .route(
            "/api/v1/service/{service}/score",
            web::post().to(|r, p, s, f| forward(r, p, s, f, "/score".into())),
        )
        .route(
            "/api/v1/service/{service}/swagger.json",
            web::get().to(|r, p, s, f| forward(r, p, s, f, "/swagger.json".into())),
        )
        .route(
            "/api/v1/service/{service}/v2{tail:.*}",
            web::route().to(forward_v2),
        )
        .default_service(web::to(not_found));
}

/// What the router knows of each service: the replicas asked of the scaler and each replica's
/// last busy report.
async fn services(state: web::Data<RouterState>) -> HttpResponse {
    let services: Vec<serde_json::Value> = state
        .services
        .iter()
        .map(|service| {
            serde_json::json!({
                "name": service.name,
                "target_replicas": service.target_replicas.load(std::sync::atomic::Ordering::Acquire),
                "ready_replicas": service.replicas.ready(),
                "busy_replicas": service.replicas.busy_replicas(),
                "autoscale": {
                    "enabled": service.policy.enabled,
                    "min_replicas": service.policy.min_replicas,
                    "max_replicas": service.policy.max_replicas,
                    "target_utilization": service.policy.target_utilization,
                    "refresh_period_s": service.policy.refresh_period.as_secs_f64(),
                    "scale_down_window_s": service.policy.scale_down_window.as_secs_f64(),
                },
                "replicas": service.replicas.snapshot(),
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "services": services }))
}

/// Prometheus text: per service, requests by status code and latency through the router, and
/// replicas asked for, ready and busy.
async fn render_metrics(state: web::Data<RouterState>) -> HttpResponse {
    for service in &state.services {
        let name = service.name.clone();
        metrics::gauge!("modelpod_router_target_replicas", "service" => name.clone()).set(
            service
                .target_replicas
                .load(std::sync::atomic::Ordering::Acquire) as f64,
        );
        metrics::gauge!("modelpod_router_ready_replicas", "service" => name.clone())
            .set(service.replicas.ready() as f64);
        metrics::gauge!("modelpod_router_busy_replicas", "service" => name.clone())
            .set(service.replicas.busy_replicas());
        if let Some(collector) = &service.collector {
            let stats = &collector.stats;
            for (outcome, count) in [
                ("written", &stats.written),
                ("dropped_queue_full", &stats.dropped_full),
                ("dropped_write_failed", &stats.dropped_write),
            ] {
                metrics::gauge!("modelpod_data_collection_records", "service" => name.clone(), "outcome" => outcome)
                    .set(count.load(std::sync::atomic::Ordering::Relaxed) as f64);
            }
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    limit: Option<usize>,
}

/// A service's most recent requests, newest last (Azure's `get_logs`, for the router's part).
async fn recent_logs(
    request: HttpRequest,
    state: web::Data<RouterState>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let service = state.service(&request)?;
    let recent = service.recent.lock();
    let limit = query.limit.unwrap_or(100).min(recent.len());
    let entries: Vec<&super::RequestLog> = recent.iter().skip(recent.len() - limit).collect();
    Ok(
        HttpResponse::Ok()
            .json(serde_json::json!({ "service": service.name, "requests": entries })),
    )
}

async fn forward_v2(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<RouterState>,
    forwarder: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    let tail = request.match_info().get("tail").unwrap_or("").to_string();
    forward(request, payload, state, forwarder, format!("/v2{tail}")).await
}

/// Azure's messages for a request no replica could take: 503 either way.
fn no_replica(why: NoReplica, service: &str) -> ScoringError {
    ScoringError::Overloaded(match why {
        NoReplica::NoneReady => format!("No ready replicas for service {service}"),
        NoReplica::AllBusy => format!("Too many requests for service {service} (overloaded)"),
    })
}

/// Headers passed through in each direction; hop-by-hop ones never are.
const FORWARDED_HEADERS: [&str; 5] = [
    "content-type",
    "accept",
    "x-ms-request-id",
    "x-request-id",
    "inference-header-content-length",
];

/// Sends the request to the least-busy ready replica. One that refuses the connection (the
/// request was never sent) is taken out and the next one tried; one that fails after the
/// request was sent is a 502, and no answer within scoringTimeoutMs is a 504.
async fn forward(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<RouterState>,
    forwarder: web::Data<Forwarder>,
    replica_path: String,
) -> Result<HttpResponse, ApiError> {
    let arrival = Instant::now();
    let service = state.service(&request)?;
    let name = service.name.clone();
    let mut timing = Timing {
        arrival,
        replica: None,
        queue_us: 0,
        upstream_us: 0,
    };
    let outcome = send(
        &request,
        payload,
        service,
        &forwarder.0,
        &replica_path,
        &mut timing,
    )
    .await;
    let code = match &outcome {
        Ok(response) => response.status().as_u16(),
        Err(e) => actix_web::ResponseError::status_code(e).as_u16(),
    };
    metrics::counter!("modelpod_router_requests_total", "service" => name.clone(), "code" => code.to_string())
        .increment(1);
    metrics::histogram!("modelpod_router_request_duration_seconds", "service" => name.clone())
        .record(arrival.elapsed().as_secs_f64());
    let request_id = outcome
        .as_ref()
        .ok()
        .and_then(|r| r.headers().get("x-ms-request-id"))
        .or_else(|| request.headers().get("x-ms-request-id"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    service.log_request(super::RequestLog {
        time: jiff::Timestamp::now(),
        request_id,
        service: name,
        method: request.method().to_string(),
        path: request.path().to_string(),
        status: code,
        replica: timing.replica,
        queue_us: timing.queue_us,
        upstream_us: timing.upstream_us,
        total_us: arrival.elapsed().as_micros() as u64,
    });
    outcome
}

/// Where a request's time went, for its log line.
struct Timing {
    arrival: Instant,
    replica: Option<String>,
    queue_us: u64,
    upstream_us: u64,
}

async fn send(
    request: &HttpRequest,
    payload: web::Payload,
    service: &Service,
    client: &reqwest::Client,
    replica_path: &str,
    timing: &mut Timing,
) -> Result<HttpResponse, ApiError> {
    let deadline = timing.arrival + service.scoring_timeout;
    let body = read_body(request, payload, service.max_request_bytes).await?;
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
        .map_err(|_| ScoringError::BadRequest("unsupported method".into()))?;
    let query = request.query_string();
    let mut attempts = 0;
    loop {
        let waiting = Instant::now();
        let lease = service.replicas.lease(service.max_queue_wait).await;
        timing.queue_us += waiting.elapsed().as_micros() as u64;
        let lease = lease.map_err(|why| no_replica(why, &service.name))?;
        timing.replica = Some(lease.replica.base_url.clone());
        let upstream = Instant::now();
        let mut url = format!("{}{replica_path}", lease.replica.base_url);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        let mut outgoing = client
            .request(method.clone(), url)
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .body(body.clone());
        for name in FORWARDED_HEADERS {
            if let Some(value) = request.headers().get(name) {
                outgoing = outgoing.header(name, value.as_bytes());
            }
        }
        // After sending: the replica died or broke the exchange; it is out until it reports.
        let replica_failed = |lease: &super::replicas::Lease, e: reqwest::Error| {
            service.replicas.unreachable(&lease.replica);
            ApiError::BadGateway(format!(
                "a replica of service {} failed while handling the request: {e}",
                service.name
            ))
        };
        let timed_out = || {
            ApiError::from(ScoringError::DeadlineExceeded(format!(
                "service {} did not answer within scoringTimeoutMs = {} ms",
                service.name,
                service.scoring_timeout.as_millis()
            )))
        };
        let response = match outgoing.send().await {
            Ok(response) => response,
            Err(e) if e.is_connect() && attempts < service.replicas.len() => {
                // Never sent: this replica is gone; another may take it.
                attempts += 1;
                tracing::warn!(replica = %lease.replica.base_url, error = %e, "replica refused; trying another");
                service.replicas.unreachable(&lease.replica);
                continue;
            }
            Err(e) if e.is_timeout() => return Err(timed_out()),
            Err(e) => return Err(replica_failed(&lease, e)),
        };
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let headers: Vec<(String, Vec<u8>)> = FORWARDED_HEADERS
            .iter()
            .filter_map(|h| {
                response
                    .headers()
                    .get(*h)
                    .map(|v| (h.to_string(), v.as_bytes().to_vec()))
            })
            .collect();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if e.is_timeout() => return Err(timed_out()),
            Err(e) => return Err(replica_failed(&lease, e)),
        };
        drop(lease);
        timing.upstream_us = upstream.elapsed().as_micros() as u64;
        if let Some(collector) = &service.collector
            && status.is_success()
        {
            collector.record(collected(
                &service.name,
                replica_path,
                query,
                &headers,
                &body,
                &bytes,
            ));
        }
        let mut reply = HttpResponse::build(status);
        for (name, value) in headers {
            reply.insert_header((name, value));
        }
        return Ok(reply.body(bytes));
    }
}

/// A scored request as data collection keeps it. The model and version come from the v2 path
/// (`/v2/models/{m}[/versions/{v}]/infer`) or Azure's `?model=`; bodies are kept as JSON when
/// they are JSON, else base64.
fn collected(
    service: &str,
    replica_path: &str,
    query: &str,
    headers: &[(String, Vec<u8>)],
    request: &[u8],
    response: &[u8],
) -> collect::Record {
    let segments: Vec<&str> = replica_path.split('/').collect();
    let after = |key: &str| {
        segments
            .iter()
            .position(|s| *s == key)
            .and_then(|i| segments.get(i + 1))
            .map(|s| s.to_string())
    };
    let from_query = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v.into_owned());
    let body = |bytes: &[u8]| {
        serde_json::from_slice(bytes).unwrap_or_else(|_| {
            use base64::Engine;
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        })
    };
    let request_id = headers
        .iter()
        .find(|(name, _)| name == "x-ms-request-id")
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        .unwrap_or_default();
    collect::Record {
        time: jiff::Timestamp::now(),
        request_id,
        service: service.to_string(),
        model: after("models")
            .or(from_query)
            .unwrap_or_else(|| "default".into()),
        version: after("versions").unwrap_or_else(|| "latest".into()),
        designation: "default".into(),
        inputs: body(request),
        outputs: body(response),
    }
}

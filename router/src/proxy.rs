//! The router's scoring path: Azure's scoring URI per service or endpoint, authenticated,
//! split across an endpoint's versions, and forwarded to the least-busy replica.

use super::catalog::Kind;
use super::collect;
use super::control::{Control, LiveWebservice};
use super::deployment::Deployment;
use super::forwarded::{ReplicaRoute, v2_route};
use super::replicas::NoReplica;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use modelpod_http::ApiError;
use modelpod_http::body::BodyReader;
use modelpod_http::health::{azure_health, not_found};
use modelpod_scoring::ScoringError;
use std::sync::Arc;
use std::time::Instant;

pub struct RouterState {
    pub control: Arc<Control>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub bodies: BodyReader,
    /// The host name callers reach the router by (`--public-host`), for swagger documents.
    pub public_host: Option<String>,
}

/// The HTTP client that forwards requests, one per worker.
pub struct Forwarder(pub reqwest::Client);

/// The response header that names the version which answered.
pub const VERSION_HEADER: &str = "x-modelpod-version";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(modelpod_http::error::query_config())
        .route("/", web::get().to(azure_health))
        .route("/metrics", web::get().to(render_metrics));
    for kind in [Kind::Service, Kind::Endpoint] {
        let prefix = format!("/api/v1/{}/{{service}}", kind.singular());
        cfg.route(
            &format!("{prefix}/score"),
            web::post().to(move |r, p, s, f| forward(r, p, s, f, kind, ReplicaRoute::Score)),
        )
        .route(
            &format!("{prefix}/swagger.json"),
            web::get().to(move |r, p, s, f| forward(r, p, s, f, kind, ReplicaRoute::Swagger)),
        )
        .route(
            &format!("{prefix}/v2{{tail:.*}}"),
            web::route().to(move |r: HttpRequest, p, s, f| async move {
                let tail = r.match_info().get("tail").unwrap_or("");
                match v2_route(tail, r.method()) {
                    Some(route) => forward(r, p, s, f, kind, route).await,
                    None => ApiError::NotFound(format!(
                        "no route {} {} for scoring callers",
                        r.method(),
                        r.path()
                    ))
                    .error_response(),
                }
            }),
        );
    }
    cfg.default_service(web::to(not_found));
}

/// Prometheus text: per webservice and version, requests by status code and latency through
/// the router, and replicas asked for, ready and busy.
async fn render_metrics(state: web::Data<RouterState>) -> HttpResponse {
    for live in state.control.table().values() {
        for (version, deployment) in live.record.versions.iter().zip(&live.deployments) {
            let (service, name) = (live.name.clone(), version.name.clone());
            metrics::gauge!("modelpod_router_target_replicas", "service" => service.clone(), "version" => name.clone()).set(
                deployment
                    .target_replicas
                    .load(std::sync::atomic::Ordering::Acquire) as f64,
            );
            metrics::gauge!("modelpod_router_ready_replicas", "service" => service.clone(), "version" => name.clone())
                .set(deployment.replicas.ready() as f64);
            metrics::gauge!("modelpod_router_busy_replicas", "service" => service.clone(), "version" => name.clone())
                .set(deployment.replicas.busy_replicas());
            if let Some(collector) = &deployment.collector {
                let stats = &collector.stats;
                for (outcome, count) in [
                    ("written", &stats.written),
                    ("dropped_queue_full", &stats.dropped_full),
                    ("dropped_write_failed", &stats.dropped_write),
                ] {
                    metrics::gauge!("modelpod_data_collection_records", "service" => live.name.clone(), "version" => version.name.clone(), "outcome" => outcome)
                        .set(count.load(std::sync::atomic::Ordering::Relaxed) as f64);
                }
            }
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// Azure's messages for a request no replica could take: 503 either way.
pub(crate) fn no_replica(why: NoReplica, service: &str) -> ScoringError {
    ScoringError::Overloaded(match why {
        NoReplica::NoneReady => format!("No ready replicas for service {service}"),
        NoReplica::AllBusy => format!("Too many requests for service {service} (overloaded)"),
    })
}

/// Headers passed through in each direction; hop-by-hop ones never are.
const FORWARDED_HEADERS: [&str; 6] = [
    "content-type",
    "accept",
    "x-ms-request-id",
    "x-request-id",
    "x-ms-client-request-id",
    "inference-header-content-length",
];

/// Headers only replicas send, passed back to the caller as Azure's front end does: the
/// scoring function's own time.
const REPLY_HEADERS: [&str; 1] = ["x-ms-run-fn-exec-ms"];

/// Authenticates the request for the webservice its path names, picks the version by the
/// traffic split, and sends it to that version's least-busy ready replica. Every answer,
/// error or not, says which version it came from.
async fn forward(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<RouterState>,
    forwarder: web::Data<Forwarder>,
    kind: Kind,
    route: ReplicaRoute,
) -> HttpResponse {
    let arrival = Instant::now();
    let name = request.match_info().get("service").unwrap_or_default();
    let table = state.control.table();
    let Some(live) = table.get(name).filter(|l| l.record.kind == kind) else {
        return ApiError::NotFound(format!("{} '{name}' not found", kind.singular()))
            .error_response();
    };
    let mut timing = Timing {
        arrival,
        replica: None,
        queue_us: 0,
        upstream_us: 0,
    };
    // Azure's swagger.json is public; everything else under the webservice needs its
    // credential.
    let authorized = if route == ReplicaRoute::Swagger {
        Ok(())
    } else {
        super::access::authorize(&request, name, &live.record, &state.control.tokens)
    };
    let chosen = live.record.pick(rand::random::<f64>() * 100.0);
    let outcome = match (authorized, chosen) {
        (Err(e), _) => Err(e),
        (Ok(()), None) => Err(ScoringError::ModelUnavailable(format!(
            "{} {name} has no versions",
            kind.singular()
        ))
        .into()),
        (Ok(()), Some(index)) => {
            // The whole body before a replica is leased: a client that sends slowly holds
            // no replica's slot while it does.
            let limit = live.deployments[index].limits().max_request_bytes;
            async {
                let body = state.bodies.read(&request, payload, limit).await?;
                let body = body.bytes();
                let reply = send(
                    &request,
                    body,
                    live,
                    index,
                    &forwarder.0,
                    &route,
                    &mut timing,
                )
                .await?;
                Ok(match reply {
                    Sent::Swagger(status, document) => {
                        swagger_reply(&request, &state, kind, name, status, document)
                    }
                    Sent::Response(response) => response,
                })
            }
            .await
        }
    };
    let version = chosen.map(|i| live.record.versions[i].name.clone());
    let mut response = outcome.unwrap_or_else(|e| e.error_response());
    if let Some(version) = &version
        && let Ok(value) = actix_web::http::header::HeaderValue::from_str(version)
    {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(VERSION_HEADER),
            value,
        );
    }
    let code = response.status().as_u16();
    let version = version.unwrap_or_default();
    let request_id = response
        .headers()
        .get("x-ms-request-id")
        .or_else(|| request.headers().get("x-ms-request-id"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    account(
        live,
        super::RequestLog {
            time: jiff::Timestamp::now(),
            request_id,
            service: name.to_string(),
            version,
            method: request.method().to_string(),
            path: request.path().to_string(),
            status: code,
            replica: timing.replica,
            queue_us: timing.queue_us,
            upstream_us: timing.upstream_us,
            total_us: arrival.elapsed().as_micros() as u64,
        },
    );
    response
}

/// Counts and logs one routed call, HTTP or gRPC alike.
pub(crate) fn account(live: &LiveWebservice, entry: super::RequestLog) {
    metrics::counter!("modelpod_router_requests_total", "service" => entry.service.clone(), "version" => entry.version.clone(), "code" => entry.status.to_string())
        .increment(1);
    metrics::histogram!("modelpod_router_request_duration_seconds", "service" => entry.service.clone(), "version" => entry.version.clone())
        .record(entry.total_us as f64 / 1e6);
    live.log_request(entry);
}

/// Where a request's time went, for its log line.
struct Timing {
    arrival: Instant,
    replica: Option<String>,
    queue_us: u64,
    upstream_us: u64,
}

/// What a replica answered: a response to pass on, or a swagger document to rewrite first.
enum Sent {
    Response(HttpResponse),
    Swagger(StatusCode, bytes::Bytes),
}

/// The replica's swagger.json with the router's address, the webservice's base path and the
/// caller's scheme (`--public-host`, else the `Host` the caller used: the document only tells
/// that caller where it already is).
fn swagger_reply(
    request: &HttpRequest,
    state: &RouterState,
    kind: Kind,
    name: &str,
    status: StatusCode,
    document: bytes::Bytes,
) -> HttpResponse {
    let info = request.connection_info();
    let host = state.public_host.as_deref().unwrap_or(info.host());
    let base_path = format!("/api/v1/{}/{name}", kind.singular());
    let view = super::swagger::CallerView {
        scheme: info.scheme(),
        host,
        base_path: &base_path,
        title: name,
    };
    let mut reply = HttpResponse::build(status);
    reply.content_type("application/json");
    match super::swagger::for_callers(&document, &view) {
        Some(rewritten) if status.is_success() => reply.body(rewritten),
        _ => reply.body(document),
    }
}

async fn send(
    request: &HttpRequest,
    body: bytes::Bytes,
    live: &LiveWebservice,
    version: usize,
    client: &reqwest::Client,
    route: &ReplicaRoute,
    timing: &mut Timing,
) -> Result<Sent, ApiError> {
    let service: &Deployment = &live.deployments[version];
    let designation = live.record.versions[version].designation(live.record.kind);
    let limits = service.limits();
    let deadline = timing.arrival + limits.scoring_timeout;
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
        .map_err(|_| ScoringError::BadRequest("unsupported method".into()))?;
    let query = request.query_string();
    let mut attempts = 0;
    loop {
        let waiting = Instant::now();
        let lease = service.replicas.lease(limits.max_queue_wait).await;
        timing.queue_us += waiting.elapsed().as_micros() as u64;
        let lease = lease.map_err(|why| no_replica(why, &live.name))?;
        timing.replica = Some(lease.replica.base_url.clone());
        let upstream = Instant::now();
        let mut url = format!("{}{}", lease.replica.base_url, route.path());
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
        // The caller's credential stays here; the replica takes only the router's.
        if let Some(key) = service.replica_key() {
            outgoing = outgoing.bearer_auth(key);
        }
        // After sending: the replica died or broke the exchange; it is out until it reports.
        let replica_failed = |lease: &super::replicas::Lease, e: reqwest::Error| {
            service.replicas.unreachable(&lease.replica);
            ApiError::BadGateway(format!(
                "a replica of {} failed while handling the request: {e}",
                service.id
            ))
        };
        let timed_out = || {
            ApiError::from(ScoringError::DeadlineExceeded(format!(
                "{} did not answer within scoringTimeoutMs = {} ms",
                service.id,
                limits.scoring_timeout.as_millis()
            )))
        };
        let response = match outgoing.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Err(timed_out()),
            Err(e) if attempts < service.replicas.len() => {
                // No answer at all: the replica refused the connection, or a pooled connection
                // turned out dead (a killed replica). Scoring has no side effects, so another
                // replica takes it.
                attempts += 1;
                tracing::warn!(replica = %lease.replica.base_url, error = %e, "replica unreachable; trying another");
                service.replicas.unreachable(&lease.replica);
                continue;
            }
            Err(e) => return Err(replica_failed(&lease, e)),
        };
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let headers: Vec<(String, Vec<u8>)> = FORWARDED_HEADERS
            .iter()
            .chain(&REPLY_HEADERS)
            .filter_map(|h| {
                response
                    .headers()
                    .get(*h)
                    .map(|v| (h.to_string(), v.as_bytes().to_vec()))
            })
            .collect();
        // What the replica actually ran, for data collection: never the caller's words.
        let ran = response
            .headers()
            .get(modelpod_scoring::SERVED_MODEL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('/'))
            .map(|(model, version)| (model.to_string(), version.to_string()));
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if e.is_timeout() => return Err(timed_out()),
            Err(e) => return Err(replica_failed(&lease, e)),
        };
        drop(lease);
        timing.upstream_us = upstream.elapsed().as_micros() as u64;
        if let Some(collector) = &service.collector
            && status.is_success()
            && route.scores()
        {
            let (model, version) = ran.unwrap_or_else(|| ("unknown".into(), "unknown".into()));
            collector.record(collected(
                &service.id,
                designation,
                model,
                version,
                &headers,
                &body,
                &bytes,
            ));
        }
        if *route == ReplicaRoute::Swagger {
            return Ok(Sent::Swagger(status, bytes));
        }
        let mut reply = HttpResponse::build(status);
        for (name, value) in headers {
            reply.insert_header((name, value));
        }
        return Ok(Sent::Response(reply.body(bytes)));
    }
}

/// A scored request as data collection keeps it, labelled with the model and version the
/// replica says it ran; bodies are kept as JSON when they are JSON, else base64.
pub(crate) fn collected(
    deployment: &super::deployment::DeploymentId,
    designation: &str,
    model: String,
    version: String,
    headers: &[(String, Vec<u8>)],
    request: &[u8],
    response: &[u8],
) -> collect::Record {
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
        service: deployment.webservice.clone(),
        model,
        version,
        designation: designation.into(),
        endpoint_version: deployment.version.clone(),
        inputs: body(request),
        outputs: body(response),
    }
}

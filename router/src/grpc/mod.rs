//! The router's gRPC front end: `inference.GRPCInferenceService` per webservice, as the HTTP
//! front end serves the v2 routes under a scoring URI. A call names its webservice in its
//! metadata (`modelpod-service: <name>` or `modelpod-endpoint: <name>`, what the URI path
//! names on HTTP), presents the same credential (`authorization: Bearer <key or token>`), is
//! split across an endpoint's versions and sent to the least-busy ready replica's gRPC port,
//! which the replica reports beside its busy state. Messages pass through undecoded
//! ([`raw::RawCodec`]). Only the RPCs the HTTP front end forwards are forwarded (health,
//! metadata, configuration, inference); repository control, shared memory, statistics and
//! settings answer only a replica's operators. `grpc.health.v1` answers for the router.

mod forward;
mod raw;

use super::catalog::Kind;
use super::control::Control;
use super::proxy::{VERSION_HEADER, account};
use crate::RequestLog;
use forward::{Call, Outcome, StreamForward, UnaryForward};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use modelpod_http::ApiError;
use modelpod_http::grpc::{GrpcListener, http_status, status};
use modelpod_scoring::ScoringError;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// The metadata keys that name the webservice a call is for.
pub const SERVICE_METADATA: &str = "modelpod-service";
pub const ENDPOINT_METADATA: &str = "modelpod-endpoint";

const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// What the router does with each RPC of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Unary,
    Stream,
    /// Part of the service, not open to scoring callers.
    Closed,
}

fn rpc(method: &str) -> Option<Rpc> {
    Some(match method {
        "ServerLive" | "ServerReady" | "ModelReady" | "ServerMetadata" | "ModelMetadata"
        | "ModelConfig" | "ModelInfer" => Rpc::Unary,
        "ModelStreamInfer" => Rpc::Stream,
        "ModelStatistics"
        | "RepositoryIndex"
        | "RepositoryModelLoad"
        | "RepositoryModelUnload"
        | "SystemSharedMemoryStatus"
        | "SystemSharedMemoryRegister"
        | "SystemSharedMemoryUnregister"
        | "CudaSharedMemoryStatus"
        | "CudaSharedMemoryRegister"
        | "CudaSharedMemoryUnregister"
        | "TraceSetting"
        | "LogSettings" => Rpc::Closed,
        _ => return None,
    })
}

/// The service the router's gRPC listener serves: every call of
/// `inference.GRPCInferenceService`, dispatched by its path.
#[derive(Clone)]
pub struct InferenceFront {
    control: Arc<Control>,
    /// How long a caller may take to send a unary call's message.
    body_timeout: Duration,
}

impl NamedService for InferenceFront {
    const NAME: &'static str = SERVICE_NAME;
}

impl Service<http::Request<Body>> for InferenceFront {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let front = self.clone();
        Box::pin(async move { Ok(front.handle(request).await) })
    }
}

/// A status as a whole (trailers-only) gRPC response.
fn refusal(status: Status) -> http::Response<Body> {
    status.into_http()
}

fn text_header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The webservice a call names in its metadata.
fn named_webservice(headers: &http::HeaderMap) -> Result<(Kind, &str), Status> {
    match (
        text_header(headers, SERVICE_METADATA),
        text_header(headers, ENDPOINT_METADATA),
    ) {
        (Some(name), None) => Ok((Kind::Service, name)),
        (None, Some(name)) => Ok((Kind::Endpoint, name)),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "name one webservice: {SERVICE_METADATA} or {ENDPOINT_METADATA}, not both"
        ))),
        (None, None) => Err(Status::invalid_argument(format!(
            "name the webservice in the call's metadata: {SERVICE_METADATA}: <service> or \
             {ENDPOINT_METADATA}: <endpoint>"
        ))),
    }
}

/// The request's message, read whole within the time and size limits before any replica is
/// leased: a caller that sends slowly holds no replica's slot while it does.
async fn read_unary(
    request: http::Request<Body>,
    limit: usize,
    timeout: Duration,
) -> Result<http::Request<Body>, Status> {
    let (parts, body) = request.into_parts();
    // The 5-byte frame header of the one message a unary call carries.
    let limited = http_body_util::Limited::new(body, limit.saturating_add(5));
    let collected = tokio::time::timeout(timeout, limited.collect())
        .await
        .map_err(|_| {
            status(ApiError::RequestTimeout(format!(
                "the request's message did not arrive within {} ms",
                timeout.as_millis()
            )))
        })?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!(
                    "the request's message is larger than this webservice's limit of {limit} bytes"
                ))
            } else {
                Status::cancelled(format!("the request's message was not received: {e}"))
            }
        })?;
    let body = http_body_util::Full::new(collected.to_bytes());
    Ok(http::Request::from_parts(parts, Body::new(body)))
}

fn encodings() -> EnabledCompressionEncodings {
    let mut enabled = EnabledCompressionEncodings::default();
    enabled.enable(CompressionEncoding::Gzip);
    enabled.enable(CompressionEncoding::Deflate);
    enabled
}

impl InferenceFront {
    async fn handle(self, request: http::Request<Body>) -> http::Response<Body> {
        let arrival = Instant::now();
        let path = request.uri().path().to_string();
        let method = path
            .strip_prefix("/")
            .and_then(|p| p.strip_prefix(SERVICE_NAME))
            .and_then(|p| p.strip_prefix("/"))
            .unwrap_or_default();
        let rpc = match rpc(method) {
            Some(Rpc::Closed) => {
                return refusal(Status::permission_denied(format!(
                    "{method} is not open to scoring callers: the router forwards health, \
                     metadata, model configuration and inference"
                )));
            }
            Some(rpc) => rpc,
            None => {
                return refusal(Status::unimplemented(format!(
                    "{SERVICE_NAME} has no method '{method}'"
                )));
            }
        };
        let (kind, name) = match named_webservice(request.headers()) {
            Ok((kind, name)) => (kind, name.to_string()),
            Err(refused) => return refusal(refused),
        };
        let table = self.control.table();
        let Some(live) = table.get(&name).filter(|l| l.record.kind == kind) else {
            return refusal(status(ApiError::NotFound(format!(
                "{} '{name}' not found",
                kind.singular()
            ))));
        };
        let presented = text_header(request.headers(), "authorization")
            .and_then(modelpod_http::auth::bearer_credential);
        let request_id = text_header(request.headers(), "x-ms-request-id")
            .or_else(|| text_header(request.headers(), "x-request-id"))
            .unwrap_or_default()
            .to_string();
        let authorized = super::access::authorize_credential(
            presented,
            &name,
            &live.record,
            &self.control.tokens,
        );
        let chosen = live.record.pick(rand::random::<f64>() * 100.0);
        let outcome = Arc::new(parking_lot::Mutex::new(Outcome::default()));
        let mut response = match (authorized, chosen) {
            (Err(e), _) => refusal(status(e)),
            (Ok(()), None) => refusal(status(ScoringError::ModelUnavailable(format!(
                "{} {name} has no versions",
                kind.singular()
            )))),
            (Ok(()), Some(index)) => {
                let deployment = live.deployments[index].clone();
                let limit = deployment.limits().max_request_bytes;
                let call = Call {
                    deployment,
                    designation: live.record.versions[index].designation(kind).to_string(),
                    path: path.clone(),
                    arrival,
                    outcome: outcome.clone(),
                    request_id: request_id.clone(),
                };
                let mut grpc = tonic::server::Grpc::new(raw::RawCodec)
                    .apply_compression_config(encodings(), encodings())
                    .apply_max_message_size_config(Some(limit), Some(usize::MAX));
                match rpc {
                    Rpc::Stream => grpc.streaming(StreamForward(Some(call)), request).await,
                    _ => match read_unary(request, limit, self.body_timeout).await {
                        Ok(request) => grpc.unary(UnaryForward(Some(call)), request).await,
                        Err(refused) => refusal(refused),
                    },
                }
            }
        };
        let version = chosen.map(|i| live.record.versions[i].name.clone());
        if let Some(version) = &version
            && let Ok(value) = http::HeaderValue::from_str(version)
        {
            response
                .headers_mut()
                .insert(http::HeaderName::from_static(VERSION_HEADER), value);
        }
        // A refusal carries its status in the headers; a forwarded call's outcome is what the
        // replica answered.
        let outcome = outcome.lock().clone();
        let code = text_header(response.headers(), "grpc-status")
            .and_then(|c| c.parse::<i32>().ok())
            .map(tonic::Code::from_i32)
            .unwrap_or(outcome.code);
        account(
            live,
            RequestLog {
                time: jiff::Timestamp::now(),
                request_id,
                service: name,
                version: version.unwrap_or_default(),
                method: "gRPC".into(),
                path,
                status: http_status(code),
                replica: outcome.replica,
                queue_us: outcome.queue_us,
                upstream_us: outcome.upstream_us,
                total_us: arrival.elapsed().as_micros() as u64,
            },
        );
        response
    }
}

/// TLS for the gRPC listener from the router's certificate and key (PEM).
fn tls_config(certificate: &Path, key: &Path) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
    };
    Ok(
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            read(certificate)?,
            read(key)?,
        )),
    )
}

/// Starts the gRPC listener on `listener`, over TLS when the router terminates TLS.
pub fn start(
    listener: std::net::TcpListener,
    control: Arc<Control>,
    body_timeout: Duration,
    tls: Option<&crate::TlsSettings>,
) -> anyhow::Result<GrpcListener> {
    let tls = tls
        .map(|t| tls_config(&t.certificate, &t.key))
        .transpose()?;
    let front = InferenceFront {
        control,
        body_timeout,
    };
    let serve: modelpod_http::grpc::Serve = Box::new(move |incoming, stopped| {
        Box::pin(async move {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            reporter
                .set_service_status(SERVICE_NAME, tonic_health::ServingStatus::Serving)
                .await;
            let mut server = modelpod_http::grpc::server_builder();
            if let Some(tls) = tls {
                server = server.tls_config(tls)?;
            }
            server
                .add_service(health)
                .add_service(front)
                .serve_with_incoming_shutdown(incoming, stopped)
                .await
        })
    });
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(GrpcListener::start(
        "router-grpc",
        listener,
        workers,
        serve,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_http_forwards_is_forwarded() {
        assert_eq!(rpc("ModelInfer"), Some(Rpc::Unary));
        assert_eq!(rpc("ModelStreamInfer"), Some(Rpc::Stream));
        for closed in [
            "RepositoryModelLoad",
            "SystemSharedMemoryRegister",
            "ModelStatistics",
            "LogSettings",
        ] {
            assert_eq!(rpc(closed), Some(Rpc::Closed), "{closed}");
        }
        assert_eq!(rpc("../ModelInfer"), None);
        assert_eq!(rpc(""), None);
    }

    /// A body that never sends anything, as a client that opened a call and went quiet.
    struct Silent;

    impl http_body::Body for Silent {
        type Data = bytes::Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_unary_message_is_read_within_its_time_and_size_or_refused() {
        let request = |body: Body| http::Request::builder().body(body).unwrap();
        let message = bytes::Bytes::from(vec![0u8; 5 + 100]);
        let read = read_unary(
            request(Body::new(http_body_util::Full::new(message.clone()))),
            100,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let read = read.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(read, message, "a message at the limit passes whole");

        let refused = read_unary(
            request(Body::new(http_body_util::Full::new(message))),
            99,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert!(
            refused.message().contains("limit of 99 bytes"),
            "{refused:?}"
        );

        let started = Instant::now();
        let refused = read_unary(request(Body::new(Silent)), 100, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::DeadlineExceeded, "{refused:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_call_names_exactly_one_webservice() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            named_webservice(&headers).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        headers.insert(SERVICE_METADATA, "iris".parse().unwrap());
        assert_eq!(named_webservice(&headers).unwrap(), (Kind::Service, "iris"));
        headers.insert(ENDPOINT_METADATA, "iris".parse().unwrap());
        assert!(named_webservice(&headers).is_err());
        headers.remove(SERVICE_METADATA);
        assert_eq!(
            named_webservice(&headers).unwrap(),
            (Kind::Endpoint, "iris")
        );
    }
}

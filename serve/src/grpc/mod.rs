//! The v2 gRPC front end: `inference.GRPCInferenceService` (KServe's service with Triton's
//! extension RPCs) and `grpc.health.v1` for Kubernetes' gRPC probes, on their own port and
//! runtime. Keys are checked as on HTTP (`authorization: Bearer <key>` metadata); health is
//! public, as the HTTP probes are.

mod codec;
mod service;

use crate::AppState;
use modelpod_http::grpc::GrpcListener;
use modelpod_proto::GrpcInferenceServiceServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Status};

/// A running gRPC listener; [`GrpcServer::stop`] lets accepted calls finish.
pub struct GrpcServer {
    pub address: SocketAddr,
    listener: GrpcListener,
}

/// How often the health service re-reads readiness.
const HEALTH_REFRESH: Duration = Duration::from_millis(250);

/// The gRPC runtime's threads for `http_workers` HTTP workers: half as many. They only frame
/// and route calls (a message over 64 KB is decoded on the blocking pool, a model runs on its
/// batcher's threads), and each worker of a multi-threaded runtime costs wake-ups on every
/// call: on two cores, one thread instead of two cut the server's CPU per CNN call over gRPC
/// from about 340 to 100 µs above HTTP's (BENCHMARKS.md).
fn grpc_workers(http_workers: usize) -> usize {
    (http_workers / 2).max(1)
}

impl GrpcServer {
    /// Serves on `listener` from a runtime of its own, sized by [`grpc_workers`] from the
    /// HTTP workers' count.
    pub fn start(
        state: Arc<AppState>,
        listener: std::net::TcpListener,
        workers: usize,
    ) -> std::io::Result<GrpcServer> {
        let serve: modelpod_http::grpc::Serve = Box::new(move |incoming, stopped| {
            Box::pin(async move {
                let (reporter, health) = tonic_health::server::health_reporter();
                let watched = state.clone();
                tokio::spawn(async move {
                    let mut serving = None;
                    loop {
                        let ready = watched.scorer.unready_reason().is_none();
                        if serving != Some(ready) {
                            let status = if ready {
                                tonic_health::ServingStatus::Serving
                            } else {
                                tonic_health::ServingStatus::NotServing
                            };
                            reporter.set_service_status("", status).await;
                            reporter
                                .set_service_status("inference.GRPCInferenceService", status)
                                .await;
                            serving = Some(ready);
                        }
                        tokio::time::sleep(HEALTH_REFRESH).await;
                    }
                });
                let limit = state.config.limits.max_request_bytes;
                let auth = state.clone();
                let inference =
                    GrpcInferenceServiceServer::new(service::InferenceService { state })
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(usize::MAX)
                        .accept_compressed(CompressionEncoding::Gzip)
                        .accept_compressed(CompressionEncoding::Deflate)
                        .send_compressed(CompressionEncoding::Gzip)
                        .send_compressed(CompressionEncoding::Deflate);
                let inference = tonic::service::interceptor::InterceptedService::new(
                    inference,
                    move |request: Request<()>| check_key(&auth, request),
                );
                modelpod_http::grpc::server_builder()
                    .add_service(health)
                    .add_service(inference)
                    .serve_with_incoming_shutdown(incoming, stopped)
                    .await
            })
        });
        let listener = GrpcListener::start("grpc", listener, grpc_workers(workers), serve)?;
        Ok(GrpcServer {
            address: listener.address,
            listener,
        })
    }

    pub fn stop(&mut self) {
        self.listener.stop();
    }
}

fn check_key(state: &AppState, request: Request<()>) -> Result<Request<()>, Status> {
    let authorization = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    state
        .auth
        .check_authorization(authorization)
        .map_err(service::status)?;
    Ok(request)
}

//! What the scoring server's and the router's gRPC listeners share: the one map from errors
//! to gRPC statuses (and back to the HTTP status a log line records), and a listener that
//! serves on a runtime of its own and stops letting accepted calls finish.

use crate::ApiError;
use futures_util::future::BoxFuture;
use modelpod_scoring::ScoringError;
use std::net::SocketAddr;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Status};

/// The gRPC status for an error, as Triton's gRPC front end maps its error codes.
pub fn status(error: impl Into<ApiError>) -> Status {
    let error = error.into();
    let message = error.to_string();
    match &error {
        ApiError::Scoring(e) => match e {
            ScoringError::BadRequest(_) | ScoringError::InvalidInput(_) => {
                Status::invalid_argument(message)
            }
            ScoringError::ModelNotFound(_) => Status::not_found(message),
            ScoringError::ModelUnavailable(_) | ScoringError::Overloaded(_) => {
                Status::unavailable(message)
            }
            ScoringError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            ScoringError::Engine(_) => Status::internal(message),
        },
        ApiError::Unauthorized(_) => Status::unauthenticated(message),
        ApiError::PayloadTooLarge { .. } => Status::resource_exhausted(message),
        ApiError::NotFound(_) => Status::not_found(message),
        ApiError::Forbidden(_) => Status::unavailable(message),
        ApiError::RequestTimeout(_) => Status::deadline_exceeded(message),
        ApiError::BadGateway(_) => Status::unavailable(message),
        ApiError::Conflict(_) => Status::already_exists(message),
        ApiError::Internal(_) => Status::internal(message),
    }
}

/// The HTTP status a gRPC code stands for (gRPC's own HTTP mapping), for request logs and
/// metrics that count HTTP and gRPC calls alike.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// The HTTP/2 settings both gRPC listeners serve with. Tensors make large messages (a CNN's
/// input is 600 KB): with HTTP/2's defaults (16 KB frames, 64 KB windows) each arrives in
/// dozens of frames and, across a network, waits a round trip for every 64 KB of window
/// (ten for the CNN's input, between a router and a pod on another node). The windows also
/// bound what a client may send ahead of the server reading it.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_frame_size(MAX_FRAME_SIZE)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
}

const MAX_FRAME_SIZE: u32 = 1 << 20;
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// A gRPC listener on a runtime of its own; [`GrpcListener::stop`] lets accepted calls finish.
pub struct GrpcListener {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a listener runs: given its connections and the signal to stop, a tonic server.
pub type Serve = Box<
    dyn FnOnce(
            TcpIncoming,
            BoxFuture<'static, ()>,
        ) -> BoxFuture<'static, Result<(), tonic::transport::Error>>
        + Send,
>;

impl GrpcListener {
    /// Serves on `listener` from a runtime of `workers` threads named `name`. The runtime is
    /// the listener's own so that gRPC calls never queue behind the HTTP workers' tasks.
    pub fn start(
        name: &str,
        listener: std::net::TcpListener,
        workers: usize,
        serve: Serve,
    ) -> std::io::Result<GrpcListener> {
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(name)
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-server"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => return tracing::error!(error = %e, "gRPC listener"),
                    };
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    let stopped = Box::pin(async {
                        let _ = stopped.await;
                    });
                    if let Err(e) = serve(incoming, stopped).await {
                        tracing::error!(error = %e, "gRPC server failed");
                    }
                })
            })?;
        Ok(GrpcListener {
            address,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops accepting, waits for accepted calls to finish.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GrpcListener {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_status_its_http_code_has() {
        for (error, http) in [
            (ApiError::from(ScoringError::BadRequest("x".into())), 400),
            (ScoringError::ModelNotFound("x".into()).into(), 404),
            (ScoringError::Overloaded("x".into()).into(), 503),
            (ScoringError::DeadlineExceeded("x".into()).into(), 504),
            (ScoringError::Engine("x".into()).into(), 500),
            (ApiError::NotFound("x".into()), 404),
        ] {
            let status = status(error);
            assert_eq!(http_status(status.code()), http, "{status:?}");
        }
    }
}

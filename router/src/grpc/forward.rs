//! One gRPC call sent on to a replica: the least-busy ready replica of the chosen version is
//! leased, the call goes to its gRPC port with the router's key in place of the caller's
//! credential, and the replica's answer (message or status) comes back as it gave it. A
//! replica that cannot be reached at all is taken out and another one takes the call.

use super::raw::RawCodec;
use crate::deployment::Deployment;
use crate::proxy::no_replica;
use crate::replicas::Lease;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use modelpod_http::grpc::status;
use modelpod_scoring::ScoringError;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;
use tonic::codegen::http;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

/// What a forwarded call did, for its log line.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: Code,
    pub replica: Option<String>,
    pub queue_us: u64,
    pub upstream_us: u64,
}

impl Default for Outcome {
    fn default() -> Outcome {
        Outcome {
            code: Code::Ok,
            replica: None,
            queue_us: 0,
            upstream_us: 0,
        }
    }
}

/// A call on its way to one version of a webservice.
pub struct Call {
    pub deployment: Arc<Deployment>,
    pub designation: String,
    pub path: String,
    pub arrival: Instant,
    pub outcome: Arc<Mutex<Outcome>>,
    pub request_id: String,
}

/// Metadata only the caller and the router read: its webservice and its credential.
const CALLER_METADATA: [&str; 3] = [
    "authorization",
    super::SERVICE_METADATA,
    super::ENDPOINT_METADATA,
];

impl Call {
    /// The caller's metadata for the replica: its credential, routing and transport keys
    /// out, the router's key in. (Each attempt sets the time left of the scoring timeout; a
    /// caller's shorter deadline ends the call here, which cancels it at the replica.)
    fn metadata(&self, metadata: MetadataMap) -> MetadataMap {
        let mut metadata = without_transport(&metadata, &CALLER_METADATA);
        if let Some(key) = self.deployment.replica_key()
            && let Ok(value) = MetadataValue::try_from(format!("Bearer {key}"))
        {
            metadata.insert("authorization", value);
        }
        metadata
    }

    fn deadline(&self) -> Instant {
        self.arrival + self.deployment.limits().scoring_timeout
    }

    fn timed_out(&self) -> Status {
        status(ScoringError::DeadlineExceeded(format!(
            "{} did not answer within scoringTimeoutMs = {} ms",
            self.deployment.id,
            self.deployment.limits().scoring_timeout.as_millis()
        )))
    }

    /// The least-busy ready replica that serves gRPC, leased, and a client for it.
    async fn lease(&self) -> Result<(Lease, tonic::client::Grpc<Channel>), Status> {
        let limits = self.deployment.limits();
        let waiting = Instant::now();
        let lease = self.deployment.replicas.lease(limits.max_queue_wait).await;
        self.outcome.lock().queue_us += waiting.elapsed().as_micros() as u64;
        let lease = lease.map_err(|why| status(no_replica(why, &self.deployment.id.webservice)))?;
        self.outcome.lock().replica = Some(lease.replica.base_url.clone());
        let Some(channel) = lease.replica.grpc_channel() else {
            return Err(Status::unavailable(format!(
                "the replica of {} at {} serves no gRPC (started with --grpc-port off)",
                self.deployment.id, lease.replica.base_url
            )));
        };
        let client = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Ok((lease, client))
    }

    fn path(&self) -> Result<http::uri::PathAndQuery, Status> {
        http::uri::PathAndQuery::try_from(self.path.as_str())
            .map_err(|_| Status::internal("the call's path is not a path"))
    }

    /// Records a refusal's code for the log line; passes the result on.
    fn settle<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(e) = &result {
            self.outcome.lock().code = e.code();
        }
        result
    }

    fn finished(&self, code: Code, upstream: Instant) {
        let mut outcome = self.outcome.lock();
        outcome.code = code;
        outcome.upstream_us = upstream.elapsed().as_micros() as u64;
    }
}

/// Metadata without what one hop's transport set (content type, date, length, gRPC's own keys
/// such as its encodings and timeout) and without `also`: each hop negotiates its own, so a
/// caller's gzip is never the replica's.
fn without_transport(metadata: &MetadataMap, also: &[&str]) -> MetadataMap {
    let mut kept = http::HeaderMap::new();
    for (name, value) in metadata.clone().into_headers().iter() {
        let name_text = name.as_str();
        let transport = name_text.starts_with("grpc-")
            || matches!(
                name_text,
                "content-type" | "date" | "content-length" | "te" | "user-agent"
            );
        if !transport && !also.contains(&name_text) {
            kept.append(name.clone(), value.clone());
        }
    }
    MetadataMap::from_headers(kept)
}

fn replica_metadata(metadata: &MetadataMap) -> MetadataMap {
    without_transport(metadata, &[])
}

/// The replica's status, with its message, code and details, for the caller.
fn replica_status(mut status: Status) -> Status {
    let metadata = replica_metadata(status.metadata());
    *status.metadata_mut() = metadata;
    status
}

/// A status that says the replica was never reached, or the connection to it broke: the
/// channel's own error (it has a source), not an answer (a replica's status has none).
fn unreachable(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// The call a handler was made for: tonic calls each handler once.
fn once(call: Option<Call>) -> Result<Call, Status> {
    call.ok_or_else(|| Status::internal("a call was forwarded twice"))
}

/// Sends one unary call on; tonic calls it once per call.
pub struct UnaryForward(pub Option<Call>);

impl tonic::server::UnaryService<Bytes> for UnaryForward {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let call = self.0.take();
        Box::pin(async move {
            let call = once(call)?;
            call.settle(forward_unary(&call, request).await)
        })
    }
}

async fn forward_unary(call: &Call, request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    let (metadata, _, message) = request.into_parts();
    let metadata = call.metadata(metadata);
    let path = call.path()?;
    let mut attempts = 0;
    loop {
        let (lease, mut client) = call.lease().await?;
        let upstream = Instant::now();
        let deadline = call.deadline();
        let mut outgoing = Request::from_parts(
            metadata.clone(),
            tonic::Extensions::default(),
            message.clone(),
        );
        outgoing.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let sent = tokio::time::timeout_at(deadline.into(), async {
            client
                .ready()
                .await
                .map_err(|e| Status::from_error(Box::new(e)))?;
            client.unary(outgoing, path.clone(), RawCodec).await
        })
        .await;
        let answer = match sent {
            Err(_) => {
                call.finished(Code::DeadlineExceeded, upstream);
                return Err(call.timed_out());
            }
            Ok(Err(e)) if unreachable(&e) => {
                call.deployment.replicas.unreachable(&lease.replica);
                if attempts < call.deployment.replicas.len() {
                    // Nothing reached the replica, or the connection broke: scoring has no
                    // side effects, so another replica takes it.
                    attempts += 1;
                    tracing::warn!(replica = %lease.replica.base_url, error = %e, "replica unreachable over gRPC; trying another");
                    continue;
                }
                call.finished(Code::Unavailable, upstream);
                return Err(status(modelpod_http::ApiError::BadGateway(format!(
                    "a replica of {} failed while handling the call: {}",
                    call.deployment.id,
                    e.message()
                ))));
            }
            Ok(answer) => answer,
        };
        drop(lease);
        call.finished(
            answer.as_ref().map_or_else(Status::code, |_| Code::Ok),
            upstream,
        );
        let (metadata, answer, _) = answer.map_err(replica_status)?.into_parts();
        collect(call, &message, &answer);
        return Ok(Response::from_parts(
            replica_metadata(&metadata),
            answer,
            tonic::Extensions::default(),
        ));
    }
}

/// Records a scored call when the version collects its data: the messages as base64
/// protobuf, labelled with the model and version the replica says it ran.
fn collect(call: &Call, request: &Bytes, response: &Bytes) {
    use prost::Message;
    let Some(collector) = &call.deployment.collector else {
        return;
    };
    if !call.path.ends_with("/ModelInfer") {
        return;
    }
    let (model, version) =
        match modelpod_proto::inference::ModelInferResponse::decode(response.clone()) {
            Ok(answer) => (answer.model_name, answer.model_version),
            Err(_) => ("unknown".into(), "unknown".into()),
        };
    let headers = [(
        "x-ms-request-id".to_string(),
        call.request_id.clone().into_bytes(),
    )];
    collector.record(crate::proxy::collected(
        &call.deployment.id,
        &call.designation,
        model,
        version,
        &headers,
        request,
        response,
    ));
}

/// Sends one stream on; tonic calls it once per call.
pub struct StreamForward(pub Option<Call>);

impl tonic::server::StreamingService<Bytes> for StreamForward {
    type Response = Bytes;
    type ResponseStream = BoxStream<'static, Result<Bytes, Status>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let call = self.0.take();
        Box::pin(async move {
            let call = once(call)?;
            call.settle(forward_stream(&call, request).await)
        })
    }
}

/// A stream holds its replica's lease for as long as it is open: it is one call in flight
/// there, whatever it carries.
async fn forward_stream(
    call: &Call,
    request: Request<Streaming<Bytes>>,
) -> Result<Response<BoxStream<'static, Result<Bytes, Status>>>, Status> {
    if call.deployment.collector.is_some() {
        return Err(Status::failed_precondition(format!(
            "{} collects the data it scores, which a stream's messages are not: call ModelInfer",
            call.deployment.id
        )));
    }
    let (metadata, _, messages) = request.into_parts();
    let metadata = call.metadata(metadata);
    let path = call.path()?;
    let (lease, mut client) = call.lease().await?;
    let upstream = Instant::now();
    // The caller's stream, up to its end or its first broken message.
    let messages = messages
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| std::future::ready(m.ok()));
    let outgoing = Request::from_parts(metadata, tonic::Extensions::default(), messages);
    client
        .ready()
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    let answer = client.streaming(outgoing, path, RawCodec).await;
    call.finished(
        answer.as_ref().map_or_else(Status::code, |_| Code::Ok),
        upstream,
    );
    let (metadata, answers, extensions) = answer.map_err(replica_status)?.into_parts();
    let metadata = replica_metadata(&metadata);
    let answers = answers
        .map(move |answer| {
            // Moved in: the lease ends with the stream.
            let _held: &Lease = &lease;
            answer
        })
        .boxed();
    Ok(Response::from_parts(metadata, answers, extensions))
}

//! The v2 gRPC service through modelpod's own generated client: who may call it (keys as on
//! HTTP, health public), an inference equal to HTTP's, and compressed messages.

use modelpod_proto::GrpcInferenceServiceClient;
use modelpod_proto::inference::ServerLiveRequest;
use modelpod_tests::grpc_requests::{assert_mlp_logits, mlp_request};
use modelpod_tests::{fixtures, serve_args, start};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;

const KEY: &str = "grpc-test-key";

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_the_inference_service_and_health_stays_public() {
    let mut args = serve_args(&fixtures());
    args.api_keys = vec![KEY.into()];
    let server = start(args);
    let url = format!("http://{}", server.grpc_address.expect("gRPC is on"));
    let mut client = GrpcInferenceServiceClient::connect(url.clone())
        .await
        .unwrap();

    let refused = client.server_live(ServerLiveRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let wrong = client
        .model_infer(with_key(mlp_request(), "not-the-key"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(
        client
            .server_live(with_key(ServerLiveRequest {}, KEY))
            .await
            .unwrap()
            .into_inner()
            .live
    );

    let answer = client
        .model_infer(with_key(mlp_request(), KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.model_name, "mlp");
    assert_eq!(answer.outputs[0].name, "logits");
    assert_eq!(answer.outputs[0].shape, vec![1, 3]);
    assert_mlp_logits(&answer);

    // Compressed both ways, as `tritonclient.grpc` sends with compression_algorithm.
    let mut gzip = GrpcInferenceServiceClient::connect(url.clone())
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let compressed = gzip
        .model_infer(with_key(mlp_request(), KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(compressed.raw_output_contents, answer.raw_output_contents);

    // Kubernetes' gRPC probe carries no credential.
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without a key")
        .into_inner()
        .status;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert!(status == serving || status == not_serving, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_request_limit_is_refused_naming_the_limit() {
    let mut args = serve_args(&fixtures());
    args.max_request_bytes = Some(64 * 1024);
    let server = start(args);
    let url = format!("http://{}", server.grpc_address.expect("gRPC is on"));
    let mut client = GrpcInferenceServiceClient::connect(url).await.unwrap();
    let mut request = mlp_request();
    request.raw_input_contents = vec![vec![0u8; 256 * 1024].into()];
    let refused = client.model_infer(request).await.unwrap_err();
    // tonic's code for a message past the decoding limit, with the limit in the message.
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("65536"), "{refused:?}");
}

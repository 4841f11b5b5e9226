//! The router's gRPC front end, spoken to with modelpod's generated client and with the
//! unmodified `tritonclient.grpc`: each call names its webservice in metadata, is held to
//! that webservice's keys or tokens, split across an endpoint's versions, and sent to the
//! least-busy replica; what the HTTP front end does not forward, it does not either.

use modelpod_proto::GrpcInferenceServiceClient;
use modelpod_proto::inference::{
    ModelStatisticsRequest, RepositoryModelLoadRequest, ServerLiveRequest,
    SystemSharedMemoryRegisterRequest,
};
use modelpod_tests::grpc_requests::{assert_mlp_logits, mlp_request};
use modelpod_tests::process::{RouterBuilder, RouterProcess, free_port};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tonic::Code;
use tonic::codec::CompressionEncoding;

const ADMIN_KEY: &str = "grpc-admin-key";

/// The fixtures hold models that fail to load on purpose.
const LENIENT: &str = "serve_args = [\"--strict-readiness\", \"false\"]";

/// A call with this metadata.
fn call<T>(message: T, metadata: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    request
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(answer) => panic!("expected a refusal, got {answer:?}"),
        Err(status) => status.code(),
    }
}

/// Waits until `path`'s versions have `replicas` ready replicas each.
fn wait_ready(router: &RouterProcess, path: &str, replicas: u64) {
    router.wait_for(
        Duration::from_secs(90),
        |router| router.admin(Method::GET, path, None),
        |(status, body)| {
            *status == 200
                && body["versions"].as_array().is_some_and(|v| {
                    !v.is_empty() && v.iter().all(|v| v["ready_replicas"] == replicas)
                })
        },
    );
}

/// A router with a keyed service of two replicas, a tokened service, and a two-version
/// endpoint (green takes 30 %), all over the fixtures (whose broken models must not hold
/// readiness back), with gRPC on `grpc_port`.
fn start_router(dir: &Path, grpc_port: u16, extra: &[&str]) -> RouterProcess {
    let repository = modelpod_tests::fixtures();
    let deployment = dir.join("deploymentconfig.json");
    std::fs::write(
        &deployment,
        json!({"numReplicas": 2, "autoScaler": {"autoscaleEnabled": false}}).to_string(),
    )
    .unwrap();
    let config = dir.join("router.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"keyed\"\nmodel_repository = {0:?}\ndeployment_config = {1:?}\n{LENIENT}\n\n\
             [[service]]\nname = \"tokened\"\nmodel_repository = {0:?}\nauth = \"token\"\n{LENIENT}\n",
            repository.display().to_string(),
            deployment.display().to_string()
        ),
    )
    .unwrap();
    let router = RouterBuilder::new(env!("CARGO_BIN_EXE_modelpod"))
        .dir(dir)
        .admin_key(ADMIN_KEY)
        .args(["--config", config.to_str().unwrap()])
        .args(["--grpc-port", &grpc_port.to_string()])
        .args(extra)
        .start();
    let repository = repository.to_str().unwrap();
    let (status, answer) = router.admin(
        Method::PUT,
        "/modelpod/endpoints/ep",
        Some(json!({"versions": [
            {"name": "blue", "model_repository": repository, "serve_args": ["--strict-readiness", "false"]},
            {"name": "green", "model_repository": repository, "traffic_percentile": 30, "serve_args": ["--strict-readiness", "false"]},
        ]})),
    );
    assert_eq!(status, 201, "{answer}");
    wait_ready(&router, "/modelpod/services/keyed", 2);
    wait_ready(&router, "/modelpod/services/tokened", 1);
    wait_ready(&router, "/modelpod/endpoints/ep", 1);
    router
}

fn key(router: &RouterProcess, path: &str) -> String {
    router.admin(Method::GET, &format!("{path}/keys"), None).1["primaryKey"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn grpc_calls_are_routed_per_webservice_with_its_auth_its_split_and_least_busy() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let router = start_router(dir.path(), grpc_port, &[]);
    let keyed = key(&router, "/modelpod/services/keyed");
    let endpoint = key(&router, "/modelpod/endpoints/ep");
    let (status, token) = router.admin(Method::POST, "/modelpod/services/tokened/token", None);
    assert_eq!(status, 200, "{token}");
    let token = token["access_token"].as_str().unwrap().to_string();
    let bearer = |credential: &str| format!("Bearer {credential}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let versions = runtime.block_on(async {
        let url = format!("http://127.0.0.1:{grpc_port}");
        let mut client = GrpcInferenceServiceClient::connect(url.clone())
            .await
            .unwrap();
        let keyed_call = [
            ("modelpod-service", "keyed"),
            ("authorization", &*bearer(&keyed)),
        ];

        // The webservice is named, once, and exists.
        assert_eq!(
            code(client.server_live(call(ServerLiveRequest {}, &[])).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(
                client
                    .server_live(call(ServerLiveRequest {}, &[("modelpod-service", "nope")]))
                    .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(
                client
                    .model_infer(call(mlp_request(), &[("modelpod-endpoint", "keyed")]))
                    .await
            ),
            Code::NotFound,
            "a service is not an endpoint"
        );

        // Its credential, and only its own.
        for credential in [
            None,
            Some("not-a-key"),
            Some(endpoint.as_str()),
            Some(token.as_str()),
        ] {
            let mut metadata = vec![("modelpod-service", "keyed")];
            let header = credential.map(bearer);
            if let Some(header) = &header {
                metadata.push(("authorization", header));
            }
            assert_eq!(
                code(client.model_infer(call(mlp_request(), &metadata)).await),
                Code::Unauthenticated,
                "{credential:?}"
            );
        }
        let answer = client
            .model_infer(call(mlp_request(), &keyed_call))
            .await
            .unwrap()
            .into_inner();
        assert_mlp_logits(&answer);
        let tokened = [
            ("modelpod-service", "tokened"),
            ("authorization", &*bearer(&token)),
        ];
        assert_mlp_logits(
            &client
                .model_infer(call(mlp_request(), &tokened))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(
            code(
                client
                    .model_infer(call(
                        mlp_request(),
                        &[
                            ("modelpod-service", "tokened"),
                            ("authorization", &*bearer(&keyed))
                        ]
                    ))
                    .await
            ),
            Code::Unauthenticated
        );

        // What scoring callers may not reach over HTTP, they may not over gRPC.
        assert_eq!(
            code(
                client
                    .repository_model_load(call(
                        RepositoryModelLoadRequest {
                            model_name: "mlp".into(),
                            ..Default::default()
                        },
                        &keyed_call
                    ))
                    .await
            ),
            Code::PermissionDenied
        );
        assert_eq!(
            code(
                client
                    .system_shared_memory_register(call(
                        SystemSharedMemoryRegisterRequest {
                            name: "r".into(),
                            key: "/r".into(),
                            offset: 0,
                            byte_size: 16
                        },
                        &keyed_call
                    ))
                    .await
            ),
            Code::PermissionDenied
        );
        assert_eq!(
            code(
                client
                    .model_statistics(call(ModelStatisticsRequest::default(), &keyed_call))
                    .await
            ),
            Code::PermissionDenied
        );

        // Compressed both ways, and streams.
        let mut compressed = GrpcInferenceServiceClient::connect(url.clone())
            .await
            .unwrap()
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
        assert_mlp_logits(
            &compressed
                .model_infer(call(mlp_request(), &keyed_call))
                .await
                .unwrap()
                .into_inner(),
        );
        let requests = futures_util::stream::iter((0..3).map(|_| mlp_request()));
        let mut answers = client
            .model_stream_infer(call(requests, &keyed_call))
            .await
            .unwrap()
            .into_inner();
        let mut streamed = 0;
        while let Some(answer) = answers.message().await.unwrap() {
            assert_eq!(answer.error_message, "");
            assert_mlp_logits(&answer.infer_response.unwrap());
            streamed += 1;
        }
        assert_eq!(streamed, 3);

        // The endpoint's split, 70/30: every answer names its version. Binomial with n = 300,
        // p = 0.3: sd 7.9, so 90 +/- 40 fails by chance about once in 10^6 runs.
        let endpoint_call = [
            ("modelpod-endpoint", "ep"),
            ("authorization", &*bearer(&endpoint)),
        ];
        let mut versions: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..300 {
            let answer = client
                .model_infer(call(mlp_request(), &endpoint_call))
                .await
                .unwrap();
            let version = answer
                .metadata()
                .get("x-modelpod-version")
                .expect("the version that answered");
            *versions
                .entry(version.to_str().unwrap().to_string())
                .or_default() += 1;
            assert_mlp_logits(answer.get_ref());
        }
        versions
    });
    let green = versions.get("green").copied().unwrap_or(0);
    assert!((50..=130).contains(&green), "{versions:?}");
    assert_eq!(versions["blue"] + green, 300, "{versions:?}");

    // Both of the keyed service's replicas answered, and the router's log has each call.
    let (_, log) = router.admin(
        Method::GET,
        "/modelpod/services/keyed/logs?limit=1000",
        None,
    );
    let calls: Vec<&Value> = log["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["method"] == "gRPC" && r["path"] == "/inference.GRPCInferenceService/ModelInfer"
        })
        .collect();
    let replicas: std::collections::BTreeSet<&str> =
        calls.iter().filter_map(|r| r["replica"].as_str()).collect();
    assert_eq!(replicas.len(), 2, "{calls:?}");
    assert!(
        calls.iter().any(|r| r["status"] == 401),
        "refusals are logged too"
    );

    // The same through tritonclient.grpc.
    if let Some(python) = modelpod_tests::venv_program("python") {
        let output = std::process::Command::new(python)
            .arg(modelpod_tests::workspace_root().join("tests/python/router_grpc_check.py"))
            .args([format!("127.0.0.1:{grpc_port}"), keyed, endpoint])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains(" passed, 0 failed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

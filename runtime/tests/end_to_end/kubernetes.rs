//! The router's Kubernetes scaler and `modelpod manifests` against a real kube-apiserver and
//! kube-controller-manager (scripts/kube/start.sh), with this test playing kubelet: each pod the
//! Deployment's ReplicaSet creates is bound to a node, given an address of its own on the
//! loopback interface and a real `modelpod serve` on it, and marked Running and Ready, so the
//! real endpoints controller publishes it.
//!
//! Needs the control plane's binaries (scripts/kube/build.sh, cached once per machine) and
//! root (to add addresses to `lo`). Without them the test says why and passes, unless
//! MODELPOD_TEST_REQUIRE_KUBE=1 (as scripts/test.sh sets), where it fails.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};

use modelpod_tests::process::{RouterBuilder, free_port};
use modelpod_tests::slow_infer_body;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "default";
const SERVICE: &str = "svc";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn modelpod() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modelpod"))
}

/// A control plane in a temporary directory, stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let required = std::env::var_os("MODELPOD_TEST_REQUIRE_KUBE").is_some();
        let skip = |why: String| {
            assert!(!required, "{why}");
            eprintln!("skipped: {why}");
            None
        };
        let cache = std::env::var_os("MODELPOD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/modelpod")
            });
        let built = std::fs::read_dir(&cache)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().starts_with("kubernetes-")
                    && e.path().join("bin/kube-apiserver").is_file()
            });
        if !built {
            return skip(format!(
                "no kube-apiserver under {} (run scripts/kube/build.sh)",
                cache.display()
            ));
        }
        if !Command::new("ip")
            .args(["addr", "show", "lo"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return skip("no `ip` command to give pods addresses".into());
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("bash")
            .arg(workspace().join("scripts/kube/start.sh"))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "scripts/kube/start.sh failed");
        let text = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let env = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .flat_map(|l| l.split(' '))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Cluster { dir, env })
    }

    fn kubeconfig(&self) -> &str {
        &self.env["KUBECONFIG"]
    }

    async fn client(&self, kubeconfig: &str) -> kube::Client {
        let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.env["MODELPOD_KUBECTL"])
            .env("KUBECONFIG", self.kubeconfig())
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(workspace().join("scripts/kube/stop.sh"))
            .arg(self.dir.path())
            .status();
    }
}

/// One pod this test runs: its address on `lo` and its scoring server.
struct RunningPod {
    ip: String,
    server: Child,
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.ip), "dev", "lo"])
            .status();
    }
}

/// The scoring container's environment variables that have plain values.
/// The pod's container port of this name, as the manifests declare it.
fn pod_port(pod: &Pod, name: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

fn pod_env(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .and_then(|container| container.env.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|var| Some((var.name, var.value?)))
        .collect()
}

/// Plays kubelet until `stop`: binds new pods of the service, starts a scoring server for
/// each on an address of its own, reports them Running and Ready; stops and force-deletes pods
/// that are being deleted.
async fn kubelet(client: kube::Client, subnet: u8, replica_key: String, stop: Arc<AtomicBool>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    let _ = nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "node-1"}})).unwrap(),
        )
        .await;
    let mut running: HashMap<String, RunningPod> = HashMap::new();
    let mut next_host = 1u8;
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/name={SERVICE}"));
    while !stop.load(Ordering::Relaxed) {
        for pod in pods.list(&selector).await.unwrap().items {
            let name = pod.metadata.name.clone().unwrap();
            if pod.metadata.deletion_timestamp.is_some() {
                running.remove(&name);
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            if running.contains_key(&name) {
                continue;
            }
            let ip = format!("10.244.{subnet}.{next_host}");
            next_host += 1;
            let added = Command::new("ip")
                .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
                .status()
                .unwrap();
            assert!(added.success(), "cannot add {ip} to lo");
            // As the pod spec says: its plain environment (the limits, the VM size), its API
            // key from the replica-key Secret, its gRPC port; the models are the test's.
            let grpc_port = pod_port(&pod, "grpc").map_or("off".into(), |p| p.to_string());
            let mut server = modelpod();
            for var in pod_env(&pod) {
                server.env(var.0, var.1);
            }
            let server = server
                .env("MODELPOD_API_KEYS", &replica_key)
                .args([
                    "serve",
                    "--host",
                    &ip,
                    "--port",
                    "5001",
                    "--grpc-port",
                    &grpc_port,
                ])
                .arg("--model-repository")
                .arg(workspace().join("tests/fixtures/slow-models"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            running.insert(
                name.clone(),
                RunningPod {
                    ip: ip.clone(),
                    server,
                },
            );
            let binding = json!({"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name}, "target": {"kind": "Node", "name": "node-1"}});
            pods.create_subresource::<Value, Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
            .unwrap();
            let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"},
                               {"type": "ContainersReady", "status": "True"}]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A kubeconfig for the router's ServiceAccount from `modelpod manifests`: the test then shows
/// that the Role it grants is all the router needs.
async fn router_kubeconfig(cluster: &Cluster, client: kube::Client) -> PathBuf {
    let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
    let started = Instant::now();
    let token = loop {
        let found = secrets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|s| {
                s.type_.as_deref() == Some("kubernetes.io/service-account-token")
                    && s.metadata.annotations.as_ref().is_some_and(|a| {
                        a.get("kubernetes.io/service-account.name")
                            .map(String::as_str)
                            == Some("modelpod-router")
                    })
            });
        if let Some(token) = found
            .and_then(|s| s.data)
            .and_then(|d| d.get("token").cloned())
        {
            break String::from_utf8(token.0).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no token for modelpod-router"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let admin = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap()
        .to_string();
    let path = cluster.dir.path().join("router.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: router\n  user:\n    token: {token}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: router\n    namespace: {NAMESPACE}\n\
             current-context: c\n",
            cluster.env["MODELPOD_KUBE_APISERVER"]
        ),
    )
    .unwrap();
    path
}

fn slow_request(http: &reqwest::blocking::Client, url: &str) -> u16 {
    let (header_length, body) = slow_infer_body(64);
    http.post(url)
        .header("Inference-Header-Content-Length", header_length)
        .body(body)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_scales_a_deployment_through_its_scale_subresource_with_least_privilege() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let admin = cluster.client(cluster.kubeconfig()).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment_config = dir.path().join("deploymentconfig.json");
    std::fs::write(
        &deployment_config,
        json!({"maxConcurrentRequestsPerContainer": 1, "maxQueueWaitMs": 10000,
               "scoringTimeoutMs": 30000,
               "autoScaler": {"minReplicas": 1, "maxReplicas": 3, "targetUtilization": 70}})
        .to_string(),
    )
    .unwrap();

    // The service's objects, as `modelpod manifests` writes them, applied by kubectl.
    let manifests = modelpod()
        .args(["manifests", "--service", SERVICE, "--image", "modelpod:cpu"])
        .args(["--namespace", NAMESPACE, "--node-sku", "Standard_D4s_v3"])
        .args(["--model-image", "registry.example/slow-models:1"])
        .arg("--deployment-config")
        .arg(&deployment_config)
        .arg("--kustomize")
        .arg(dir.path().join("base"))
        .output()
        .unwrap();
    assert!(manifests.status.success());
    // As a kustomize base, the way an operator applies it (the JSON List is the same objects).
    let applied = cluster.kubectl(&["apply", "-k", dir.path().join("base").to_str().unwrap()]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    // The router's own Deployment runs as the ServiceAccount the Role is bound to.
    let router_deployment = Api::<Deployment>::namespaced(admin.clone(), NAMESPACE)
        .get(&format!("modelpod-router-{SERVICE}"))
        .await
        .expect("the router's Deployment");
    let router_pod = router_deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        router_pod.service_account_name.as_deref(),
        Some("modelpod-router")
    );
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NAMESPACE);
    let replica_key = secrets
        .get(&format!("{SERVICE}-replica-key"))
        .await
        .unwrap()
        .data
        .and_then(|d| d.get("key").cloned())
        .map(|k| String::from_utf8(k.0).unwrap())
        .expect("the manifests' replica key Secret");
    let stop = Arc::new(AtomicBool::new(false));
    let subnet = (std::process::id() % 200 + 20) as u8;
    let kubelet = tokio::spawn(kubelet(
        admin.clone(),
        subnet,
        replica_key.clone(),
        stop.clone(),
    ));
    let router_config = router_kubeconfig(&cluster, admin.clone()).await;
    let deployment_config_arg = deployment_config.display().to_string();
    let router_args = [
        "--service",
        SERVICE,
        "--kube-deployment",
        SERVICE,
        "--kube-namespace",
        NAMESPACE,
        "--kube-port",
        "5001",
        "--scale-down-window-s",
        "3",
        "--auth",
        "none",
        "--deployment-config",
        &deployment_config_arg,
    ];

    // An HPA on the Deployment: the router refuses to fight it.
    let hpa = cluster.kubectl(&["autoscale", "deployment", SERVICE, "--min=1", "--max=2"]);
    assert!(
        hpa.status.success(),
        "{}",
        String::from_utf8_lossy(&hpa.stderr)
    );
    let refused = modelpod()
        .env("KUBECONFIG", &router_config)
        .args([
            "route",
            "--host",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
        ])
        .args(["--admin-key", "test-admin-key", "--state-file"])
        .arg(dir.path().join("router-state.json"))
        .args(router_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("HorizontalPodAutoscaler"), "{message}");
    assert!(
        cluster
            .kubectl(&["delete", "hpa", SERVICE])
            .status
            .success()
    );

    let router_grpc_port = free_port();
    let router = RouterBuilder::new(env!("CARGO_BIN_EXE_modelpod"))
        .dir(dir.path())
        .env("KUBECONFIG", &router_config.display().to_string())
        .env("MODELPOD_REPLICA_KEY", &replica_key)
        .args(router_args)
        .args(["--grpc-port", &router_grpc_port.to_string()])
        .start();
    let base = router.url("");
    let status = |base: String| async move {
        reqwest::Client::new()
            .get(format!("{base}/modelpod/services"))
            .bearer_auth("test-admin-key")
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()
            .map(|v| v["services"][0]["versions"][0].clone())
    };
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NAMESPACE);
    let replicas = || async {
        deployments
            .get_scale(SERVICE)
            .await
            .unwrap()
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(0)
    };
    let started = Instant::now();
    while status(base.clone())
        .await
        .is_none_or(|s| s["ready_replicas"] != 1)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pod never became a ready replica: {}",
            router.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(replicas().await, 1);
    // deploymentconfig.json's limits reached the pod through its environment: it enforces
    // and reports them (the defaults are 500 ms and 60 s).
    let limits = status(base.clone()).await.unwrap()["replicas"][0]["report"]["limits"].clone();
    assert_eq!(
        (
            limits["max_queue_wait"].as_u64(),
            limits["scoring_timeout"].as_u64()
        ),
        (Some(10000), Some(30000)),
        "{limits}"
    );
    // The pod's gRPC port is the one the manifests declare, and gRPC calls reach it through
    // the router's gRPC listener with the replica key.
    let report = status(base.clone()).await.unwrap()["replicas"][0]["report"].clone();
    assert_eq!(report["grpc_port"], 8001, "{report}");
    let mut grpc = modelpod_proto::GrpcInferenceServiceClient::connect(format!(
        "http://127.0.0.1:{router_grpc_port}"
    ))
    .await
    .unwrap();
    let mut ready = tonic::Request::new(modelpod_proto::inference::ModelReadyRequest {
        name: "slow".into(),
        version: String::new(),
    });
    ready
        .metadata_mut()
        .insert("modelpod-service", SERVICE.parse().unwrap());
    assert!(grpc.model_ready(ready).await.unwrap().into_inner().ready);
    // The pod answers the router (through which scoring works below), and nobody else.
    let pod_url = status(base.clone()).await.unwrap()["replicas"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let direct = reqwest::Client::new()
        .get(format!("{pod_url}/v2/models/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        direct.status(),
        401,
        "a pod must refuse callers without the replica key"
    );

    // Load: four requests at a time on one slot per pod asks for 3 pods (the maximum).
    let load_stop = Arc::new(AtomicBool::new(false));
    let url = format!("{base}/api/v1/service/{SERVICE}/v2/models/slow/infer");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, load_stop) = (url.clone(), load_stop.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut statuses = Vec::new();
                while !load_stop.load(Ordering::Relaxed) {
                    statuses.push(slow_request(&http, &url));
                }
                statuses
            })
        })
        .collect();
    let load_started = Instant::now();
    let mut scaled_up = None;
    while load_started.elapsed() < Duration::from_secs(20) {
        let ready = status(base.clone())
            .await
            .map_or(0, |s| s["ready_replicas"].as_u64().unwrap_or(0));
        if scaled_up.is_none() && replicas().await > 1 {
            scaled_up = Some(load_started.elapsed());
        }
        if ready == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load_stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let scaled_up = scaled_up.expect("the Deployment was never scaled up");
    assert!(
        scaled_up <= Duration::from_secs(3),
        "scaled up after {scaled_up:?}"
    );
    assert_eq!(replicas().await, 3);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(status(base.clone()).await.unwrap()["ready_replicas"], 3);

    // Idle: back to one pod after the window, and the router follows the Endpoints.
    let idle = Instant::now();
    while replicas().await != 1 || status(base.clone()).await.unwrap()["ready_replicas"] != 1 {
        assert!(
            idle.elapsed() < Duration::from_secs(30),
            "never scaled back down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle.elapsed() >= Duration::from_secs(2));

    router.stop();
    stop.store(true, Ordering::Relaxed);
    kubelet.await.unwrap();
}

/// Every object `modelpod manifests` writes passes Kubernetes' own schemas, strictly (no field
/// the API does not know), checked offline by `kubernetes-validate` on the kustomize base.
#[test]
fn manifests_pass_the_kubernetes_schemas() {
    let Some(validate) = modelpod_tests::venv_program("kubernetes-validate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deploymentconfig.json");
    std::fs::write(
        &config,
        json!({"containerResourceRequirements": {"cpu": 2, "memoryInGB": 8, "gpu": 1},
               "maxConcurrentRequestsPerContainer": 8, "autoScaler": {"maxReplicas": 4}})
        .to_string(),
    )
    .unwrap();
    for source in [
        &["--model-image", "registry.example/models:1"][..],
        &["--model-pvc", "models"][..],
        &["--models-in-image"][..],
    ] {
        let base = dir.path().join(source[0].trim_start_matches('-'));
        let output = modelpod()
            .args([
                "manifests",
                "--service",
                "resnet",
                "--image",
                "modelpod:cuda",
            ])
            .args([
                "--namespace",
                "ml",
                "--node-sku",
                "Standard_NC24ads_A100_v4",
            ])
            .args([
                "--router-service-type",
                "LoadBalancer",
                "--deployment-config",
            ])
            .arg(&config)
            .args(source)
            .arg("--kustomize")
            .arg(&base)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let files: Vec<PathBuf> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        assert_eq!(files.len(), 9, "{files:?}");
        let checked = Command::new(&validate)
            .args(["--strict", "-k", "1.30"])
            .args(&files)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&checked.stdout).to_string()
            + &String::from_utf8_lossy(&checked.stderr);
        assert!(checked.status.success(), "{report}");
        assert_eq!(report.matches("passed for resource").count(), 9, "{report}");
    }
    // Without a model source nothing is written: an empty repository would serve nothing.
    let refused = modelpod()
        .args([
            "manifests",
            "--service",
            "resnet",
            "--image",
            "modelpod:cuda",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--model-pvc"));
}

//! `modelpod manifests`: a service's Kubernetes objects from its `deploymentconfig.json`, as
//! Azure would have deployed it: the scoring Deployment (resources, GPUs and node selector
//! from the VM size, Azure's liveness and readiness probes, a rolling update of one pod at a
//! time) and its Service, plus what the router needs to scale it and nothing more (a
//! ServiceAccount and a Role limited to the Deployment's scale subresource, its Endpoints and
//! reading HPAs), and the Secret holding the replica key: the scoring pods take it as their
//! only API key and the router sends it (`MODELPOD_REPLICA_KEY` from the same Secret), so
//! nothing else in the pod network can call them. Built as k8s-openapi's typed objects, so each one is what the API accepts,
//! and printed as one JSON `List` that `kubectl apply -f` takes.

use super::autoscale::AutoscalePolicy;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    Secret, SecretKeySelector, Service, ServiceAccount, ServicePort, ServiceSpec, Toleration,
    Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use modelpod_accel::sku::{AcceleratorKind, lookup};
use modelpod_scoring::deployment::DeploymentConfig;
use modelpod_scoring::deployment::defaults::{self, GRPC_PORT, SCORING_SERVER_PORT};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

mod kustomize;
mod router_objects;
pub use kustomize::write_kustomize_base;
pub use router_objects::{ROUTER_PORT, router_name};

#[derive(Debug, Clone, clap::Args)]
pub struct ManifestArgs {
    /// The service (Deployment and Service name).
    #[arg(long)]
    pub service: String,
    /// Azure deploymentconfig.json.
    #[arg(long)]
    pub deployment_config: Option<PathBuf>,
    /// The scoring image, e.g. registry.example/modelpod:cuda.
    #[arg(long)]
    pub image: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The node pool's VM size: GPU sizes add `nvidia.com/gpu` limits (unless the file sets
    /// containerResourceRequirements.gpu) and the node selector pins the pods to that size.
    #[arg(long)]
    pub node_sku: Option<String>,
    /// A dev/test cluster: the autoscaler is off (numReplicas, default 1).
    #[arg(long)]
    pub dev_test: bool,
    /// Where the pods' models come from, one of three: an image whose `--model-image-path`
    /// an init container copies into the pod...
    #[arg(long, group = "model_source")]
    pub model_image: Option<String>,
    /// ...the folder of `--model-image` holding the repository.
    #[arg(long, default_value = "/models", requires = "model_image")]
    pub model_image_path: String,
    /// ...a PersistentVolumeClaim holding the repository, mounted read-only...
    #[arg(long, group = "model_source")]
    pub model_pvc: Option<String>,
    /// ...or the scoring image itself (one built `FROM` modelpod's with the models copied into
    /// /var/azureml-app/azureml-models).
    #[arg(long, group = "model_source")]
    pub models_in_image: bool,
    /// The router's image [default: --image; the router is the same binary].
    #[arg(long)]
    pub router_image: Option<String>,
    /// How the router's Service is exposed: ClusterIP, NodePort or LoadBalancer (azureml-fe's
    /// on AKS; put TLS in front of it or give the router --tls-cert).
    #[arg(long, default_value = "ClusterIP", value_parser = ["ClusterIP", "NodePort", "LoadBalancer"])]
    pub router_service_type: String,
    /// Also write the objects as a kustomize base in this directory (one file per object and
    /// a kustomization.yaml), for `kubectl apply -k` and overlays.
    #[arg(long, value_name = "DIR")]
    pub kustomize: Option<PathBuf>,
}

/// Where the scoring image reads its repository (its AZUREML_MODEL_DIR).
pub const MODEL_DIR: &str = "/var/azureml-app/azureml-models";

/// The Secret with a service's replica key, and its field.
pub fn replica_key_secret(service: &str) -> String {
    format!("{service}-replica-key")
}
pub const REPLICA_KEY_FIELD: &str = "key";

/// Azure's defaults for `containerResourceRequirements` and `livenessProbeRequirements`.
mod azure_defaults {
    pub const CPU: f64 = 0.1;
    pub const MEMORY_GB: f64 = 0.5;
    pub const PERIOD_SECONDS: i64 = 10;
    pub const INITIAL_DELAY_SECONDS: i64 = 310;
    pub const TIMEOUT_SECONDS: i64 = 2;
    pub const SUCCESS_THRESHOLD: i64 = 1;
    pub const FAILURE_THRESHOLD: i64 = 3;
}

fn number(section: Option<&Value>, key: &str) -> Option<f64> {
    section.and_then(|s| s.get(key)).and_then(Value::as_f64)
}

fn integer(section: Option<&Value>, key: &str, default: i64) -> i64 {
    section
        .and_then(|s| s.get(key))
        .and_then(Value::as_i64)
        .unwrap_or(default)
}

/// Kubernetes quantity for `gb` gigabytes, in whole mebibytes as Azure's own manifests do.
fn memory(gb: f64) -> String {
    format!("{}Mi", (gb * 1024.0).round() as u64)
}

/// CPU cores as millicores.
fn cpu(cores: f64) -> String {
    format!("{}m", (cores * 1000.0).round() as u64)
}

/// The pod's model volume and the init container that fills it, if any.
fn model_source(args: &ManifestArgs) -> anyhow::Result<(Option<Volume>, Option<Container>)> {
    let volume = |source: Volume| Some(source);
    match (&args.model_image, &args.model_pvc, args.models_in_image) {
        (Some(image), None, false) => Ok((
            volume(Volume {
                name: "models".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }),
            Some(Container {
                name: "copy-models".into(),
                image: Some(image.clone()),
                command: Some(vec![
                    "cp".into(),
                    "-R".into(),
                    format!("{}/.", args.model_image_path.trim_end_matches('/')),
                    MODEL_DIR.into(),
                ]),
                volume_mounts: Some(vec![VolumeMount {
                    name: "models".into(),
                    mount_path: MODEL_DIR.into(),
                    ..VolumeMount::default()
                }]),
                ..Container::default()
            }),
        )),
        (None, Some(claim), false) => Ok((
            volume(Volume {
                name: "models".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            }),
            None,
        )),
        (None, None, true) => Ok((None, None)),
        _ => anyhow::bail!(
            "say where the pods' models come from: --model-image IMAGE (copied in by an init \
             container), --model-pvc CLAIM (mounted read-only) or --models-in-image (the \
             scoring image's own {MODEL_DIR}); modelpod's image has no models of its own"
        ),
    }
}

/// A plain environment variable.
fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

pub fn render(args: &ManifestArgs) -> anyhow::Result<Value> {
    let (model_volume, model_copy) = model_source(args)?;
    let config = match &args.deployment_config {
        Some(path) => DeploymentConfig::read(path)?,
        None => DeploymentConfig::default(),
    };
    let policy =
        AutoscalePolicy::from_deployment(&config, args.dev_test).map_err(anyhow::Error::msg)?;
    let replicas = i32::try_from(policy.initial_replicas())?;
    let resources = config.container_resource_requirements.as_ref();
    let sku = args.node_sku.as_deref().map(lookup);
    let gpus = number(resources, "gpu")
        .map(|g| g as u32)
        .unwrap_or_else(|| {
            sku.as_ref()
                .filter(|s| s.accelerator == AcceleratorKind::NvidiaGpu)
                .map_or(0, |s| s.device_count)
        });
    let mut requests = BTreeMap::from([
        (
            "cpu".to_string(),
            Quantity(cpu(number(resources, "cpu").unwrap_or(azure_defaults::CPU))),
        ),
        (
            "memory".to_string(),
            Quantity(memory(
                number(resources, "memoryInGB").unwrap_or(azure_defaults::MEMORY_GB),
            )),
        ),
    ]);
    let mut limits = BTreeMap::new();
    if let Some(limit) = number(resources, "cpuLimit") {
        limits.insert("cpu".to_string(), Quantity(cpu(limit)));
    }
    if let Some(limit) = number(resources, "memoryInGBLimit") {
        limits.insert("memory".to_string(), Quantity(memory(limit)));
    }
    if gpus > 0 {
        // Extended resources are requested and limited alike.
        limits.insert("nvidia.com/gpu".into(), Quantity(gpus.to_string()));
        requests.insert("nvidia.com/gpu".into(), Quantity(gpus.to_string()));
    }
    let probe = config.liveness_probe_requirements.as_ref();
    let seconds =
        |key: &str, default: i64| integer(probe, key, default).clamp(0, i32::MAX as i64) as i32;
    let http_probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(SCORING_SERVER_PORT.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(seconds("periodSeconds", azure_defaults::PERIOD_SECONDS)),
        initial_delay_seconds: Some(seconds(
            "initialDelaySeconds",
            azure_defaults::INITIAL_DELAY_SECONDS,
        )),
        timeout_seconds: Some(seconds("timeoutSeconds", azure_defaults::TIMEOUT_SECONDS)),
        success_threshold: Some(seconds(
            "successThreshold",
            azure_defaults::SUCCESS_THRESHOLD,
        )),
        failure_threshold: Some(seconds(
            "failureThreshold",
            azure_defaults::FAILURE_THRESHOLD,
        )),
        ..Probe::default()
    };
    let readiness = Probe {
        // Readiness is polled from the start; only liveness waits out model loading.
        initial_delay_seconds: Some(0),
        ..http_probe("/v2/health/ready")
    };
    let liveness = Probe {
        // Liveness must succeed once to count, whatever the file says of success.
        success_threshold: Some(1),
        ..http_probe("/")
    };

    let name = &args.service;
    let namespace = &args.namespace;
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_string(), name.clone())]);
    let mut labels = selector.clone();
    labels.insert("app.kubernetes.io/part-of".into(), "modelpod".into());
    let metadata = |name: &str, labels: Option<&BTreeMap<String, String>>| ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.clone()),
        labels: labels.cloned(),
        ..ObjectMeta::default()
    };
    let container = Container {
        name: "scoring".into(),
        image: Some(args.image.clone()),
        // The v2 gRPC service listens on its default port; the pods' busy reports tell the
        // router so.
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: SCORING_SERVER_PORT.into(),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("grpc".into()),
                container_port: GRPC_PORT.into(),
                ..ContainerPort::default()
            },
        ]),
        env: Some(vec![
            // The VM size: the node selector pins the pods to the one named, else Azure's
            // instance metadata service says (a pod's own labels never carry it).
            match sku.as_ref() {
                Some(sku) => env("MODELPOD_NODE_SKU", &sku.vm_size),
                None => env("MODELPOD_IMDS", "true"),
            },
            // deploymentconfig.json's limits, which the pods enforce and report to the router.
            env(
                "MODELPOD_MAX_CONCURRENT_REQUESTS",
                config
                    .max_concurrent_requests_per_container
                    .unwrap_or(defaults::MAX_CONCURRENT_REQUESTS_PER_CONTAINER),
            ),
            env(
                "MODELPOD_MAX_QUEUE_WAIT_MS",
                config
                    .max_queue_wait_ms
                    .unwrap_or(defaults::MAX_QUEUE_WAIT_MS),
            ),
            env(
                "MODELPOD_SCORING_TIMEOUT_MS",
                config
                    .scoring_timeout_ms
                    .unwrap_or(defaults::SCORING_TIMEOUT_MS),
            ),
            EnvVar {
                name: "MODELPOD_API_KEYS".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: replica_key_secret(name),
                        key: REPLICA_KEY_FIELD.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..ResourceRequirements::default()
        }),
        liveness_probe: Some(liveness),
        readiness_probe: Some(readiness),
        volume_mounts: model_volume.as_ref().map(|volume| {
            vec![VolumeMount {
                name: volume.name.clone(),
                mount_path: MODEL_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]
        }),
        ..Container::default()
    };
    let pod_spec = PodSpec {
        containers: vec![container],
        init_containers: model_copy.map(|copy| vec![copy]),
        volumes: model_volume.map(|volume| vec![volume]),
        // As long as the longest request may take, so draining loses nothing.
        termination_grace_period_seconds: Some(
            i64::try_from(
                config
                    .scoring_timeout_ms
                    .unwrap_or(modelpod_scoring::deployment::defaults::SCORING_TIMEOUT_MS)
                    .div_ceil(1000),
            )? + 5,
        ),
        node_selector: sku.as_ref().map(|sku| {
            BTreeMap::from([(
                "node.kubernetes.io/instance-type".to_string(),
                sku.vm_size.to_string(),
            )])
        }),
        // AKS GPU node pools are commonly tainted so that only GPU workloads land there.
        tolerations: (gpus > 0).then(|| {
            vec![
                Toleration {
                    key: Some("sku".into()),
                    operator: Some("Equal".into()),
                    value: Some("gpu".into()),
                    effect: Some("NoSchedule".into()),
                    ..Toleration::default()
                },
                Toleration {
                    key: Some("nvidia.com/gpu".into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Toleration::default()
                },
            ]
        }),
        ..PodSpec::default()
    };
    let deployment = Deployment {
        metadata: metadata(name, Some(&labels)),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let service = Service {
        metadata: metadata(name, Some(&labels)),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: SCORING_SERVER_PORT.into(),
                    target_port: Some(IntOrString::String("http".into())),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("grpc".into()),
                    port: GRPC_PORT.into(),
                    target_port: Some(IntOrString::String("grpc".into())),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let router = "modelpod-router";
    let role_name = format!("{router}-{name}");
    let rule = |group: &str, resource: &str, names: Option<&str>, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        resource_names: names.map(|n| vec![n.to_string()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    let role = Role {
        metadata: metadata(&role_name, None),
        rules: Some(vec![
            rule(
                "apps",
                "deployments/scale",
                Some(name),
                // The scaler reads and patches the scale subresource; it never replaces it.
                &["get", "patch"],
            ),
            rule("", "endpoints", Some(name), &["get", "watch"]),
            rule("autoscaling", "horizontalpodautoscalers", None, &["list"]),
        ]),
    };
    let binding = RoleBinding {
        metadata: metadata(&role_name, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: role_name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: router.into(),
            namespace: Some(namespace.clone()),
            ..Subject::default()
        }]),
    };
    let account = ServiceAccount {
        metadata: metadata(router, None),
        ..ServiceAccount::default()
    };
    let secret = Secret {
        metadata: metadata(&replica_key_secret(name), Some(&labels)),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            REPLICA_KEY_FIELD.to_string(),
            modelpod_http::auth::random_key(),
        )])),
        ..Secret::default()
    };
    let mut items = vec![
        serde_json::to_value(deployment)?,
        serde_json::to_value(service)?,
        serde_json::to_value(account)?,
        serde_json::to_value(role)?,
        serde_json::to_value(binding)?,
        serde_json::to_value(secret)?,
    ];
    let written_config = match &args.deployment_config {
        Some(path) => serde_json::from_slice(&std::fs::read(path)?)?,
        None => json!({}),
    };
    items.extend(router_objects::render(&router_objects::RouterObjects {
        service: name,
        namespace,
        image: args.router_image.as_deref().unwrap_or(&args.image),
        service_type: &args.router_service_type,
        deployment_config: written_config,
        scoring_port: SCORING_SERVER_PORT,
        account: router,
    })?);
    Ok(json!({ "apiVersion": "v1", "kind": "List", "items": items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<Value>, node_sku: Option<&str>) -> (ManifestArgs, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = config.map(|c| {
            let path = dir.path().join("deploymentconfig.json");
            std::fs::write(&path, c.to_string()).unwrap();
            path
        });
        (
            ManifestArgs {
                service: "iris".into(),
                deployment_config: path,
                image: "modelpod:cuda".into(),
                namespace: "ml".into(),
                node_sku: node_sku.map(String::from),
                dev_test: false,
                model_image: Some("registry.example/iris-models:3".into()),
                model_image_path: "/models".into(),
                model_pvc: None,
                models_in_image: false,
                router_image: None,
                router_service_type: "ClusterIP".into(),
                kustomize: None,
            },
            dir,
        )
    }

    #[test]
    fn the_models_come_from_a_named_source_or_nothing_is_written() {
        let (mut args, _dir) = args(None, None);
        args.model_image = None;
        let refused = render(&args).unwrap_err().to_string();
        assert!(refused.contains("--model-pvc"), "{refused}");
        args.model_pvc = Some("iris-models".into());
        let list = render(&args).unwrap();
        let deployment: Deployment = serde_json::from_value(list["items"][0].clone()).unwrap();
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        assert!(pod.init_containers.is_none());
        let claim = pod.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("iris-models", Some(true))
        );
        // Without a VM size, the pod asks Azure's instance metadata service.
        let env = pod.containers[0].env.clone().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "MODELPOD_IMDS" && e.value.as_deref() == Some("true"))
        );
    }

    #[test]
    fn a_gpu_service_gets_gpus_its_node_pool_and_azures_probes() {
        let (args, _dir) = args(
            Some(json!({
                "containerResourceRequirements": {"cpu": 2, "memoryInGB": 8, "memoryInGBLimit": 12},
                "livenessProbeRequirements": {"periodSeconds": 5, "failureThreshold": 6},
                "autoScaler": {"minReplicas": 2, "maxReplicas": 8},
                "scoringTimeoutMs": 20000
            })),
            Some("Standard_NC12s_v3"),
        );
        let list = render(&args).unwrap();
        let items = list["items"].as_array().unwrap();
        // Every object is what the Kubernetes types accept.
        let deployment: Deployment = serde_json::from_value(items[0].clone()).unwrap();
        let _: Service = serde_json::from_value(items[1].clone()).unwrap();
        let role: Role = serde_json::from_value(items[3].clone()).unwrap();
        // The replica key: a Secret the pods take as their only API key.
        let secret: Secret = serde_json::from_value(items[5].clone()).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("iris-replica-key"));
        assert_eq!(secret.string_data.unwrap()[REPLICA_KEY_FIELD].len(), 43);

        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let rolling = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(
            (rolling.max_surge.unwrap(), rolling.max_unavailable.unwrap()),
            (
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1),
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)
            )
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.node_selector.unwrap()["node.kubernetes.io/instance-type"],
            "Standard_NC12s_v3"
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(25));
        let container = &pod.containers[0];
        let key = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "MODELPOD_API_KEYS")
            .and_then(|e| e.value_from.clone())
            .and_then(|v| v.secret_key_ref)
            .unwrap();
        assert_eq!(
            (key.name.as_str(), key.key.as_str()),
            ("iris-replica-key", REPLICA_KEY_FIELD)
        );
        let env: BTreeMap<String, Option<String>> = container
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect();
        // The file's limits and the VM size reach the pods.
        assert_eq!(env["MODELPOD_SCORING_TIMEOUT_MS"].as_deref(), Some("20000"));
        assert_eq!(
            env["MODELPOD_MAX_CONCURRENT_REQUESTS"].as_deref(),
            Some("1")
        );
        assert_eq!(env["MODELPOD_MAX_QUEUE_WAIT_MS"].as_deref(), Some("500"));
        assert_eq!(
            env["MODELPOD_NODE_SKU"].as_deref(),
            Some("Standard_NC12s_v3")
        );
        // The models: copied from their image into the pod, mounted read-only where the
        // scoring image reads them.
        let copy = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            copy.image.as_deref(),
            Some("registry.example/iris-models:3")
        );
        assert_eq!(
            copy.command.clone().unwrap(),
            ["cp", "-R", "/models/.", MODEL_DIR]
        );
        let mount = &container.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (MODEL_DIR, Some(true))
        );
        assert!(pod.volumes.as_ref().unwrap()[0].empty_dir.is_some());
        let resources = container.resources.clone().unwrap();
        assert_eq!(resources.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "2");
        assert_eq!(resources.limits.unwrap()["memory"].0, "12288Mi");
        assert_eq!(resources.requests.unwrap()["cpu"].0, "2000m");
        let liveness = container.liveness_probe.clone().unwrap();
        assert_eq!(
            (
                liveness.period_seconds,
                liveness.failure_threshold,
                liveness.initial_delay_seconds
            ),
            (Some(5), Some(6), Some(310))
        );
        assert_eq!(
            container
                .readiness_probe
                .clone()
                .unwrap()
                .http_get
                .unwrap()
                .path
                .as_deref(),
            Some("/v2/health/ready")
        );
        // The router may scale this Deployment and read its Endpoints, nothing else.
        let rules = role.rules.unwrap();
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["deployments/scale".to_string()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["iris".to_string()][..])
        );
        assert!(
            rules
                .iter()
                .all(|r| !r.verbs.contains(&"delete".to_string()))
        );
    }

    #[test]
    fn a_cpu_service_gets_azures_default_resources_and_no_gpu() {
        let (args, _dir) = args(Some(json!({"numReplicas": 3})), Some("Standard_D4s_v3"));
        let list = render(&args).unwrap();
        let deployment: Deployment = serde_json::from_value(list["items"][0].clone()).unwrap();
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert!(pod.tolerations.is_none());
        let resources = pod.containers[0].resources.clone().unwrap();
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "100m");
        assert_eq!(resources.requests.unwrap()["memory"].0, "512Mi");
        assert!(resources.limits.unwrap_or_default().is_empty());
    }
}

//! `modelpod manifests`: a service's Kubernetes objects from its `deploymentconfig.json`, as
//! Azure would have deployed it: the scoring Deployment (resources, GPUs and node selector
//! from the VM size, Azure's liveness and readiness probes, a rolling update of one pod at a
//! time) and its Service, plus what the router needs to scale it and nothing more (a
//! ServiceAccount and a Role limited to the Deployment's scale subresource, its Endpoints and
//! reading HPAs). Printed as one JSON `List` that `kubectl apply -f` takes.

use super::autoscale::AutoscalePolicy;
use modelpod_accel::sku::{AcceleratorKind, lookup};
use modelpod_scoring::deployment::DeploymentConfig;
use serde_json::{Value, json};
use std::path::PathBuf;

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
}

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

pub fn render(args: &ManifestArgs) -> anyhow::Result<Value> {
    let config = match &args.deployment_config {
        Some(path) => DeploymentConfig::read(path)?,
        None => DeploymentConfig::default(),
    };
    let policy =
        AutoscalePolicy::from_deployment(&config, args.dev_test).map_err(anyhow::Error::msg)?;
    let replicas = policy.initial_replicas();
    let resources = config.container_resource_requirements.as_ref();
    let sku = args.node_sku.as_deref().map(lookup);
    let gpus = number(resources, "gpu")
        .map(|g| g as u32)
        .unwrap_or_else(|| {
            sku.as_ref()
                .filter(|s| s.accelerator == AcceleratorKind::NvidiaGpu)
                .map_or(0, |s| s.device_count)
        });
    let mut requests = json!({
        "cpu": cpu(number(resources, "cpu").unwrap_or(azure_defaults::CPU)),
        "memory": memory(number(resources, "memoryInGB").unwrap_or(azure_defaults::MEMORY_GB)),
    });
    let mut limits = json!({});
    if let Some(limit) = number(resources, "cpuLimit") {
        limits["cpu"] = json!(cpu(limit));
    }
    if let Some(limit) = number(resources, "memoryInGBLimit") {
        limits["memory"] = json!(memory(limit));
    }
    if gpus > 0 {
        // Extended resources are requested and limited alike.
        limits["nvidia.com/gpu"] = json!(gpus.to_string());
        requests["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    let probe = config.liveness_probe_requirements.as_ref();
    let probe_timing = json!({
        "periodSeconds": integer(probe, "periodSeconds", azure_defaults::PERIOD_SECONDS),
        "initialDelaySeconds": integer(probe, "initialDelaySeconds", azure_defaults::INITIAL_DELAY_SECONDS),
        "timeoutSeconds": integer(probe, "timeoutSeconds", azure_defaults::TIMEOUT_SECONDS),
        "successThreshold": integer(probe, "successThreshold", azure_defaults::SUCCESS_THRESHOLD),
        "failureThreshold": integer(probe, "failureThreshold", azure_defaults::FAILURE_THRESHOLD),
    });
    let http_probe = |path: &str| {
        let mut probe = probe_timing.clone();
        probe["httpGet"] = json!({ "path": path, "port": modelpod_scoring::deployment::defaults::SCORING_SERVER_PORT });
        probe
    };
    let mut readiness = http_probe("/v2/health/ready");
    // Readiness is polled from the start; only liveness waits out model loading.
    readiness["initialDelaySeconds"] = json!(0);
    // Liveness must succeed once to count, whatever the file says of success.
    let mut liveness = http_probe("/");
    liveness["successThreshold"] = json!(1);

    let name = &args.service;
    let labels = json!({ "app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "modelpod" });
    let mut pod_spec = json!({
        "containers": [{
            "name": "scoring",
            "image": args.image,
            "ports": [{ "name": "http", "containerPort": modelpod_scoring::deployment::defaults::SCORING_SERVER_PORT }],
            "env": [
                { "name": "MODELPOD_NODE_INSTANCE_TYPE", "valueFrom": { "fieldRef": {
                    "fieldPath": "metadata.labels['node.kubernetes.io/instance-type']" } } },
            ],
            "resources": { "requests": requests, "limits": limits },
            "livenessProbe": liveness,
            "readinessProbe": readiness,
        }],
        // As long as the longest request may take, so draining loses nothing.
        "terminationGracePeriodSeconds": config.scoring_timeout_ms
            .unwrap_or(modelpod_scoring::deployment::defaults::SCORING_TIMEOUT_MS)
            .div_ceil(1000) + 5,
    });
    if let Some(sku) = &sku {
        pod_spec["nodeSelector"] = json!({ "node.kubernetes.io/instance-type": sku.vm_size });
    }
    if gpus > 0 {
        // AKS GPU node pools are commonly tainted so that only GPU workloads land there.
        pod_spec["tolerations"] = json!([
            { "key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule" },
            { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" },
        ]);
    }
    let namespace = &args.namespace;
    let router = "modelpod-router";
    let items = vec![
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": name, "namespace": namespace, "labels": labels },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app.kubernetes.io/name": name } },
                "strategy": { "type": "RollingUpdate",
                              "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 1 } },
                "template": { "metadata": { "labels": labels }, "spec": pod_spec },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": name, "namespace": namespace, "labels": labels },
            "spec": {
                "selector": { "app.kubernetes.io/name": name },
                "ports": [{ "name": "http", "port": modelpod_scoring::deployment::defaults::SCORING_SERVER_PORT, "targetPort": "http" }],
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": { "name": router, "namespace": namespace },
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": format!("{router}-{name}"), "namespace": namespace },
            "rules": [
                { "apiGroups": ["apps"], "resources": ["deployments/scale"],
                  "resourceNames": [name], "verbs": ["get", "patch", "update"] },
                { "apiGroups": [""], "resources": ["endpoints"],
                  "resourceNames": [name], "verbs": ["get", "watch"] },
                { "apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
                  "verbs": ["list"] },
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": format!("{router}-{name}"), "namespace": namespace },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": format!("{router}-{name}") },
            "subjects": [{ "kind": "ServiceAccount", "name": router, "namespace": namespace }],
        }),
    ];
    Ok(json!({ "apiVersion": "v1", "kind": "List", "items": items }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::rbac::v1::Role;

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
            },
            dir,
        )
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

//! The router's own objects, what azureml-fe is on AKS: a Deployment of one `modelpod route`
//! (its state file is its own, so one router per service), its Service, and a Secret with the
//! service's deploymentconfig.json (keys filled in, so a restarted router keeps them) and the
//! management API's admin key. It runs as the ServiceAccount whose Role lets it scale the
//! scoring Deployment and nothing more.

use super::{REPLICA_KEY_FIELD, replica_key_secret};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretKeySelector, SecretVolumeSource,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The port the router listens on in its pod.
pub const ROUTER_PORT: u16 = 8080;
/// The router's gRPC port, in its pod and on its Service: Triton's.
pub const ROUTER_GRPC_PORT: u16 = modelpod_scoring::deployment::defaults::GRPC_PORT;
const CONFIG_DIR: &str = "/etc/modelpod";
const STATE_DIR: &str = "/var/lib/modelpod";
const ADMIN_KEY_FIELD: &str = "admin-key";
const DEPLOYMENT_CONFIG_FIELD: &str = "deploymentconfig.json";

/// What the router's objects are made from.
pub struct RouterObjects<'a> {
    pub service: &'a str,
    pub namespace: &'a str,
    pub image: &'a str,
    pub service_type: &'a str,
    /// The service's deploymentconfig.json as written (`{}` without one).
    pub deployment_config: Value,
    /// The scoring pods' port.
    pub scoring_port: u16,
    pub account: &'a str,
}

/// The router's name for `service`: `modelpod-router-<service>`.
pub fn router_name(service: &str) -> String {
    format!("modelpod-router-{service}")
}

/// The file with `keys` filled in when key auth is on and none are given: the router would
/// otherwise make new ones at each restart, and every client's key would stop working.
fn with_keys(mut config: Value) -> Value {
    let auth_off = config.get("authEnabled") == Some(&json!(false))
        || config.get("tokenAuthEnabled") == Some(&json!(true));
    let has_keys = config
        .get("keys")
        .and_then(|k| k.get("primaryKey"))
        .is_some_and(|k| k.as_str().is_some_and(|k| !k.is_empty()));
    if !auth_off
        && !has_keys
        && let Some(fields) = config.as_object_mut()
    {
        fields.insert(
            "keys".into(),
            json!({
                "primaryKey": modelpod_http::auth::random_key(),
                "secondaryKey": modelpod_http::auth::random_key(),
            }),
        );
    }
    config
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

pub fn render(objects: &RouterObjects<'_>) -> anyhow::Result<Vec<Value>> {
    let name = router_name(objects.service);
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_string(), name.clone())]);
    let mut labels = selector.clone();
    labels.insert("app.kubernetes.io/part-of".into(), "modelpod".into());
    labels.insert("app.kubernetes.io/component".into(), "router".into());
    let metadata = |object: &str| ObjectMeta {
        name: Some(object.to_string()),
        namespace: Some(objects.namespace.to_string()),
        labels: Some(labels.clone()),
        ..ObjectMeta::default()
    };
    let secret = Secret {
        metadata: metadata(&name),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            (
                DEPLOYMENT_CONFIG_FIELD.to_string(),
                serde_json::to_string_pretty(&with_keys(objects.deployment_config.clone()))?,
            ),
            (
                ADMIN_KEY_FIELD.to_string(),
                modelpod_http::auth::random_key(),
            ),
        ])),
        ..Secret::default()
    };
    let probe = |initial_delay| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".into()),
            port: IntOrString::Int(ROUTER_PORT.into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let service = objects.service;
    let args: Vec<String> = [
        "route",
        "--service",
        service,
        "--kube-deployment",
        service,
        "--kube-namespace",
        objects.namespace,
        "--kube-port",
        &objects.scoring_port.to_string(),
        "--deployment-config",
        &format!("{CONFIG_DIR}/{DEPLOYMENT_CONFIG_FIELD}"),
        "--state-file",
        &format!("{STATE_DIR}/router-state.json"),
        "--host",
        "0.0.0.0",
        "--port",
        &ROUTER_PORT.to_string(),
        "--grpc-port",
        &ROUTER_GRPC_PORT.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let container = Container {
        name: "router".into(),
        image: Some(objects.image.to_string()),
        // The image's entrypoint is `modelpod serve`.
        command: Some(vec!["/usr/local/bin/modelpod".into()]),
        args: Some(args),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: ROUTER_PORT.into(),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("grpc".into()),
                container_port: ROUTER_GRPC_PORT.into(),
                ..ContainerPort::default()
            },
        ]),
        env: Some(vec![
            secret_env(
                "MODELPOD_REPLICA_KEY",
                &replica_key_secret(service),
                REPLICA_KEY_FIELD,
            ),
            secret_env("MODELPOD_ADMIN_KEY", &name, ADMIN_KEY_FIELD),
        ]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "state".into(),
                mount_path: STATE_DIR.into(),
                ..VolumeMount::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("128Mi".into())),
            ])),
            ..ResourceRequirements::default()
        }),
        liveness_probe: Some(probe(5)),
        readiness_probe: Some(probe(0)),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: metadata(&name),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            // Never two routers at once: each would scale the same Deployment.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(objects.account.to_string()),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(name.clone()),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "state".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let router_service = Service {
        metadata: metadata(&name),
        spec: Some(ServiceSpec {
            type_: Some(objects.service_type.to_string()),
            selector: Some(selector),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("grpc".into()),
                    port: ROUTER_GRPC_PORT.into(),
                    target_port: Some(IntOrString::String("grpc".into())),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Ok(vec![
        serde_json::to_value(deployment)?,
        serde_json::to_value(router_service)?,
        serde_json::to_value(secret)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_filled_in_only_for_key_auth_without_keys() {
        let filled = with_keys(json!({"scoringTimeoutMs": 1000}));
        assert_eq!(filled["keys"]["primaryKey"].as_str().unwrap().len(), 43);
        assert_ne!(filled["keys"]["primaryKey"], filled["keys"]["secondaryKey"]);
        let given = json!({"keys": {"primaryKey": "p", "secondaryKey": "s"}});
        assert_eq!(with_keys(given.clone()), given);
        let open = json!({"authEnabled": false});
        assert_eq!(with_keys(open.clone()), open);
        let tokens = json!({"tokenAuthEnabled": true});
        assert_eq!(with_keys(tokens.clone()), tokens);
    }
}

//! The Kubernetes scaler: the service's replicas are the pods of a Deployment. Scaling patches
//! the Deployment's `scale` subresource; replicas are found through the core/v1 Endpoints of
//! the Service of the same name (ready addresses only), which every Kubernetes version serves.
//! The router never fights a HorizontalPodAutoscaler: it refuses to start when one targets
//! the Deployment, as Azure says of azureml-fe.
//!
//! The router needs only: get/patch `deployments/scale`, get/list `endpoints`, list
//! `horizontalpodautoscalers` (see `modelpod manifests`).

use super::{ScaleError, Scaler};
use futures_util::future::BoxFuture;
use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Endpoints;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use std::time::Duration;
use tokio::sync::watch;

/// Which Deployment, and how its pods are reached.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeTarget {
    pub namespace: String,
    /// The Deployment, and the Service whose Endpoints list its pods (same name).
    pub deployment: String,
    /// The scoring port on each pod.
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    modelpod_scoring::deployment::defaults::SCORING_SERVER_PORT
}

pub struct KubeScaler {
    deployments: Api<k8s_openapi::api::apps::v1::Deployment>,
    target: KubeTarget,
    endpoints: watch::Sender<Vec<String>>,
}

impl KubeScaler {
    /// Connects with the ambient configuration (KUBECONFIG, else the pod's service account),
    /// checks that no HPA targets the Deployment, and follows its Endpoints every `period`.
    pub async fn connect(target: KubeTarget, period: Duration) -> Result<KubeScaler, ScaleError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| ScaleError(format!("cannot reach the Kubernetes API: {e}")))?;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &target.namespace);
        let list = hpas
            .list(&ListParams::default())
            .await
            .map_err(|e| ScaleError(format!("listing HorizontalPodAutoscalers: {e}")))?;
        if let Some(hpa) = list.items.iter().find(|h| {
            h.spec.as_ref().is_some_and(|s| {
                s.scale_target_ref.kind == "Deployment"
                    && s.scale_target_ref.name == target.deployment
            })
        }) {
            return Err(ScaleError(format!(
                "HorizontalPodAutoscaler {}/{} scales Deployment {}: the router's autoscaler \
                 must not be used alongside an HPA; delete it or turn the router's autoscaler off",
                target.namespace,
                hpa.metadata.name.as_deref().unwrap_or("?"),
                target.deployment
            )));
        }
        let deployments = Api::namespaced(client.clone(), &target.namespace);
        let (endpoints, _) = watch::channel(Vec::new());
        let endpoints_api: Api<Endpoints> = Api::namespaced(client, &target.namespace);
        {
            let (sender, name, port) = (endpoints.clone(), target.deployment.clone(), target.port);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(period);
                loop {
                    ticker.tick().await;
                    match endpoints_api.get_opt(&name).await {
                        Ok(found) => {
                            let urls = ready_urls(found.as_ref(), port);
                            sender.send_if_modified(|current| {
                                let changed = *current != urls;
                                *current = urls;
                                changed
                            });
                        }
                        Err(e) => tracing::warn!(endpoints = %name, %e, "reading Endpoints failed"),
                    }
                    if sender.is_closed() {
                        return;
                    }
                }
            });
        }
        Ok(KubeScaler {
            deployments,
            target,
            endpoints,
        })
    }
}

/// `http://IP:port` of every ready address, sorted.
fn ready_urls(endpoints: Option<&Endpoints>, port: u16) -> Vec<String> {
    let mut urls: Vec<String> = endpoints
        .and_then(|e| e.subsets.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|subset| subset.addresses.iter().flatten())
        .map(|address| match address.ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("http://[{ip}]:{port}"),
            _ => format!("http://{}:{port}", address.ip),
        })
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

impl Scaler for KubeScaler {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn scale(&self, replicas: u32) -> BoxFuture<'_, Result<(), ScaleError>> {
        Box::pin(async move {
            let patch = serde_json::json!({ "spec": { "replicas": replicas } });
            self.deployments
                .patch_scale(
                    &self.target.deployment,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(|e| {
                    ScaleError(format!(
                        "scaling Deployment {}/{} to {replicas}: {e}",
                        self.target.namespace, self.target.deployment
                    ))
                })?;
            Ok(())
        })
    }

    fn endpoints(&self) -> watch::Receiver<Vec<String>> {
        self.endpoints.subscribe()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        // The pods belong to the Deployment; they outlive the router.
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_addresses_become_replicas() {
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "svc"},
            "subsets": [{
                "addresses": [{"ip": "10.244.0.3"}, {"ip": "10.244.0.2"}],
                "notReadyAddresses": [{"ip": "10.244.0.9"}],
                "ports": [{"port": 5001}]
            }, {
                "addresses": [{"ip": "fd00::5"}]
            }]
        }))
        .unwrap();
        assert_eq!(
            ready_urls(Some(&endpoints), 5001),
            [
                "http://10.244.0.2:5001",
                "http://10.244.0.3:5001",
                "http://[fd00::5]:5001"
            ]
        );
        assert!(ready_urls(None, 5001).is_empty());
    }
}

//! One deployment: the replicas behind a service or behind one version of an endpoint, their
//! busy state, their limits and their autoscaler, from start to stop.

use super::autoscale::{self, AutoscalePolicy, Sample};
use super::catalog::{DeploymentSpec, Kind};
use super::replicas::{Replica, ReplicaSet};
use super::{Scaler, collect, kube, local};
use modelpod_scoring::ScoringLimits;
use modelpod_scoring::busy::BusyReport;
use modelpod_scoring::deployment::DeploymentConfig;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// What every deployment of one router shares.
#[derive(Clone)]
pub struct DeploymentSettings {
    pub dev_test_cluster: bool,
    pub scale_down_window: Duration,
    /// Busy-state polls go through this client.
    pub client: reqwest::Client,
    /// The `modelpod` executable local replicas run.
    pub program: PathBuf,
    /// The router forwards gRPC: local replicas listen for it too.
    pub grpc: bool,
}

/// Who a deployment serves: the webservice, its kind, and the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentId {
    pub webservice: String,
    pub kind: Kind,
    pub version: String,
}

impl std::fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Kind::Service => write!(f, "service {}", self.webservice),
            Kind::Endpoint => write!(f, "endpoint {} version {}", self.webservice, self.version),
        }
    }
}

pub struct Deployment {
    pub id: DeploymentId,
    pub replicas: Arc<ReplicaSet>,
    pub policy: AutoscalePolicy,
    /// The limits deploymentconfig.json gives, until a replica reports its own.
    configured_limits: ScoringLimits,
    /// The replica count last asked of the scaler.
    pub target_replicas: AtomicU32,
    /// Where scored requests' inputs and outputs are written, when enabled.
    pub collector: Option<collect::Collector>,
    scaler: Option<Arc<dyn Scaler>>,
    /// The bearer key the replicas accept: only the router knows it, so nothing else on the
    /// node (or in the pod network) can score, read or poll them around the router's auth.
    replica_key: Option<String>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Where a Kubernetes deployment's replica key comes from: the router's environment, filled
/// from the Secret that `modelpod manifests` writes and mounts into the scoring pods too.
pub const REPLICA_KEY_ENV: &str = "MODELPOD_REPLICA_KEY";

impl Deployment {
    /// What requests are held to: the limits the replicas report (set by their flags and
    /// files as well as deploymentconfig.json), else the file's.
    pub fn replica_key(&self) -> Option<&str> {
        self.replica_key.as_deref()
    }

    pub fn limits(&self) -> ScoringLimits {
        self.replicas
            .reported_limits()
            .unwrap_or(self.configured_limits)
    }

    /// A deployment's limits and policy from its deploymentconfig.json, with no replicas yet.
    pub fn from_config(
        id: DeploymentId,
        config: &DeploymentConfig,
        settings: &DeploymentSettings,
    ) -> Result<Deployment, String> {
        let mut policy = AutoscalePolicy::from_deployment(config, settings.dev_test_cluster)?;
        policy.scale_down_window = settings.scale_down_window;
        Ok(Deployment {
            id,
            replicas: Arc::new(ReplicaSet::default()),
            configured_limits: config.limits(),
            target_replicas: AtomicU32::new(0),
            collector: None,
            scaler: None,
            replica_key: None,
            tasks: Mutex::new(Vec::new()),
            policy,
        })
    }

    /// Starts a deployment: its scaler (local processes or a Kubernetes Deployment), its
    /// busy-state tracking and its autoscaler. Runs on the router's control runtime, where
    /// the tasks it spawns live.
    pub async fn start(
        id: DeploymentId,
        spec: &DeploymentSpec,
        settings: &DeploymentSettings,
    ) -> Result<Arc<Deployment>, String> {
        let config = match &spec.deployment_config {
            Some(path) => DeploymentConfig::read(path).map_err(|e| e.to_string())?,
            None => DeploymentConfig::default(),
        };
        let mut deployment = Deployment::from_config(id.clone(), &config, settings)?;
        let scaler: Arc<dyn Scaler> = match &spec.kubernetes {
            Some(target) => {
                deployment.replica_key = std::env::var(REPLICA_KEY_ENV)
                    .ok()
                    .filter(|k| !k.is_empty());
                if deployment.replica_key.is_none() {
                    tracing::warn!(deployment = %id, "{REPLICA_KEY_ENV} is not set: the scoring pods must then take requests without a key, from anyone who can reach them");
                }
                Arc::new(
                    kube::KubeScaler::connect(target.clone(), deployment.policy.refresh_period)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            }
            None => {
                if spec.model_repository.is_none() && spec.inference_config.is_none() {
                    return Err(
                        "a deployment with local replicas needs a model_repository or an inference_config"
                            .into(),
                    );
                }
                // The router authenticates callers; its replicas take only the router's key.
                let key = modelpod_http::auth::random_key();
                deployment.replica_key = Some(key.clone());
                let mut serve_args = Vec::new();
                if let Some(repository) = &spec.model_repository {
                    serve_args.extend([
                        "--model-repository".into(),
                        repository.display().to_string(),
                    ]);
                }
                if let Some(path) = &spec.inference_config {
                    serve_args.extend(["--inference-config".into(), path.display().to_string()]);
                }
                if let Some(path) = &spec.deployment_config {
                    serve_args.extend(["--deployment-config".into(), path.display().to_string()]);
                }
                serve_args.extend(spec.serve_args.iter().cloned());
                local::LocalScaler::new(local::LocalReplicaSpec {
                    program: settings.program.clone(),
                    grpc: settings.grpc,
                    serve_args,
                    api_key: key,
                    deployment: id.to_string(),
                    stop_grace: deployment
                        .configured_limits
                        .scoring_timeout
                        .min(Duration::from_secs(30)),
                })
            }
        };
        deployment.collector = spec.data_collection.as_ref().map(|settings| {
            let mut collector = collect::CollectorConfig::new(settings.root.clone());
            collector.format = settings.format;
            collect::Collector::start(collector)
        });
        deployment.scaler = Some(scaler.clone());
        let deployment = Arc::new(deployment);
        tracing::info!(deployment = %id, scaler = scaler.name(), "deployment started");
        let initial = deployment.policy.initial_replicas();
        deployment.target_replicas.store(initial, Ordering::Release);
        let tracking = tokio::spawn(track_endpoints(
            deployment.clone(),
            settings.client.clone(),
            scaler.clone(),
        ));
        let scaling = tokio::spawn({
            let deployment = deployment.clone();
            async move {
                if let Err(e) = scaler.scale(initial).await {
                    tracing::error!(deployment = %deployment.id, %e, "starting replicas failed");
                }
                autoscale(deployment, scaler).await;
            }
        });
        deployment.tasks.lock().extend([tracking, scaling]);
        Ok(deployment)
    }

    /// Stops autoscaling and busy tracking, stops the replicas this router started, and
    /// writes out what was collected.
    pub async fn stop(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        if let Some(scaler) = &self.scaler {
            scaler.shutdown().await;
        }
        for url in self.replicas.urls() {
            self.replicas.remove(&url);
        }
        if let Some(collector) = &self.collector {
            collector.shutdown();
        }
        tracing::info!(deployment = %self.id, "deployment stopped");
    }

    /// Its part of the management API's status.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "target_replicas": self.target_replicas.load(Ordering::Acquire),
            "ready_replicas": self.replicas.ready(),
            "busy_replicas": self.replicas.busy_replicas(),
            "autoscale": {
                "enabled": self.policy.enabled,
                "min_replicas": self.policy.min_replicas,
                "max_replicas": self.policy.max_replicas,
                "target_utilization": self.policy.target_utilization,
                "refresh_period_s": self.policy.refresh_period.as_secs_f64(),
                "scale_down_window_s": self.policy.scale_down_window.as_secs_f64(),
            },
            "replicas": self.replicas.snapshot(),
            "processes": self.scaler.as_ref().map_or(serde_json::Value::Null, |s| s.status()),
        })
    }
}

/// Keeps the replica set equal to what the scaler reports and polls each replica's busy state
/// until it is removed.
async fn track_endpoints(
    deployment: Arc<Deployment>,
    client: reqwest::Client,
    scaler: Arc<dyn Scaler>,
) {
    let mut endpoints = scaler.endpoints();
    loop {
        let wanted = endpoints.borrow_and_update().clone();
        let known = deployment.replicas.urls();
        for url in known.iter().filter(|u| !wanted.contains(u)) {
            tracing::info!(deployment = %deployment.id, replica = %url, "replica removed");
            deployment.replicas.remove(url);
        }
        for url in wanted.iter().filter(|u| !known.contains(u)) {
            tracing::info!(deployment = %deployment.id, replica = %url, "replica added");
            let replica = deployment.replicas.add(url.clone());
            tokio::spawn(poll_busy(
                deployment.replicas.clone(),
                replica,
                client.clone(),
                deployment.replica_key.clone(),
                deployment.policy.refresh_period,
            ));
        }
        if endpoints.changed().await.is_err() {
            return;
        }
    }
}

/// Polls one replica's busy state until it is removed. A replica that refuses, resets or does
/// not answer within its period (plus a grace) is unreachable until it answers again.
async fn poll_busy(
    set: Arc<ReplicaSet>,
    replica: Arc<Replica>,
    client: reqwest::Client,
    key: Option<String>,
    period: Duration,
) {
    // Bursts of changes are coalesced into at most one poll per this interval.
    const MIN_INTERVAL: Duration = Duration::from_millis(5);
    let mut after = u64::MAX;
    let mut backoff = Duration::from_millis(50);
    while !replica.removed() {
        let started = Instant::now();
        let url = format!(
            "{}/modelpod/busy?after={after}&wait_ms={}",
            replica.base_url,
            period.as_millis()
        );
        let answer = async {
            let mut poll = client.get(&url);
            if let Some(key) = &key {
                poll = poll.bearer_auth(key);
            }
            poll.send()
                .await?
                .error_for_status()?
                .json::<BusyReport>()
                .await
        };
        match tokio::time::timeout(period + Duration::from_secs(2), answer).await {
            Ok(Ok(report)) => {
                after = report.seq;
                backoff = Duration::from_millis(50);
                set.report(&replica, report);
                let elapsed = started.elapsed();
                if elapsed < MIN_INTERVAL {
                    tokio::time::sleep(MIN_INTERVAL - elapsed).await;
                }
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within the refresh period".into(),
                };
                tracing::debug!(replica = %replica.base_url, %why, "busy poll failed");
                set.unreachable(&replica);
                after = u64::MAX;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Observes the deployment every refresh period and asks the scaler for what
/// [`autoscale::decide`] says.
async fn autoscale(deployment: Arc<Deployment>, scaler: Arc<dyn Scaler>) {
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut ticker =
        tokio::time::interval(deployment.policy.refresh_period.min(Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = started.elapsed();
        samples.push(Sample {
            at: now,
            busy: deployment.replicas.busy_replicas(),
        });
        autoscale::prune(&mut samples, &deployment.policy, now);
        let current = deployment.target_replicas.load(Ordering::Acquire);
        let target = autoscale::decide(&deployment.policy, &samples, current);
        if target != current {
            tracing::info!(
                deployment = %deployment.id,
                from = current,
                to = target,
                busy = samples.last().map_or(0.0, |s| s.busy),
                "scaling"
            );
            match scaler.scale(target).await {
                Ok(()) => deployment.target_replicas.store(target, Ordering::Release),
                Err(e) => tracing::error!(deployment = %deployment.id, %e, "scaling failed"),
            }
        }
    }
}

//! `modelpod route`: the front end that Azure calls azureml-fe. It serves a service at Azure's
//! scoring URI (`/api/v1/service/{service}/score`, `/swagger.json`, and the v2 routes under
//! the same prefix), sends each request to the least-busy ready replica from the busy state
//! the replicas report, and scales the replicas towards the target utilization through a
//! [`Scaler`].

pub mod autoscale;
pub mod local;
mod proxy;
pub mod replicas;

use crate::azure_config::{DeploymentConfig, defaults};
use crate::serve::busy::BusyReport;
use autoscale::{AutoscalePolicy, Sample, decide, prune};
use futures_util::future::BoxFuture;
use replicas::{Replica, ReplicaSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ScaleError(pub String);

/// Where replicas come from: child processes here, or a Deployment on Kubernetes.
pub trait Scaler: Send + Sync {
    fn name(&self) -> &'static str;
    /// Asks for `replicas` replicas; returns once the request is made, not once they are ready
    /// (readiness comes from their busy reports).
    fn scale(&self, replicas: u32) -> BoxFuture<'_, Result<(), ScaleError>>;
    /// The base URLs of the replicas that exist now, updated as they come and go.
    fn endpoints(&self) -> watch::Receiver<Vec<String>>;
    /// Stops every replica this scaler started (a no-op where it started none).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// One service: its replicas, its limits and its autoscaling policy.
pub struct Service {
    pub name: String,
    pub replicas: Arc<ReplicaSet>,
    pub policy: AutoscalePolicy,
    pub max_queue_wait: Duration,
    pub scoring_timeout: Duration,
    pub max_request_bytes: usize,
    /// The replica count last asked of the scaler.
    pub target_replicas: AtomicU32,
}

impl Service {
    pub fn from_deployment(
        name: String,
        config: &DeploymentConfig,
        dev_test_cluster: bool,
        scale_down_window: Option<Duration>,
    ) -> Result<Service, String> {
        let mut policy = AutoscalePolicy::from_deployment(config, dev_test_cluster)?;
        if let Some(window) = scale_down_window {
            policy.scale_down_window = window;
        }
        Ok(Service {
            name,
            replicas: Arc::new(ReplicaSet::default()),
            max_queue_wait: Duration::from_millis(
                config
                    .max_queue_wait_ms
                    .unwrap_or(defaults::MAX_QUEUE_WAIT_MS),
            ),
            scoring_timeout: Duration::from_millis(
                config
                    .scoring_timeout_ms
                    .unwrap_or(defaults::SCORING_TIMEOUT_MS),
            ),
            max_request_bytes: crate::config::DEFAULT_MAX_REQUEST_BYTES,
            target_replicas: AtomicU32::new(0),
            policy,
        })
    }

    fn initial_replicas(&self) -> u32 {
        if self.policy.enabled {
            self.policy.min_replicas
        } else {
            self.policy.fixed_replicas
        }
    }
}

/// Keeps the replica set equal to what the scaler reports and polls each replica's busy state
/// until it is removed.
pub async fn track_endpoints(service: Arc<Service>, client: reqwest::Client, scaler: Arc<dyn Scaler>) {
    let mut endpoints = scaler.endpoints();
    loop {
        let wanted = endpoints.borrow_and_update().clone();
        let known = service.replicas.urls();
        for url in known.iter().filter(|u| !wanted.contains(u)) {
            tracing::info!(service = %service.name, replica = %url, "replica removed");
            service.replicas.remove(url);
        }
        for url in wanted.iter().filter(|u| !known.contains(u)) {
            tracing::info!(service = %service.name, replica = %url, "replica added");
            let replica = service.replicas.add(url.clone());
            tokio::spawn(poll_busy(
                service.replicas.clone(),
                replica,
                client.clone(),
                service.policy.refresh_period,
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
            client
                .get(&url)
                .send()
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

/// Observes the service every refresh period and asks the scaler for what
/// [`autoscale::decide`] says.
pub async fn autoscale(service: Arc<Service>, scaler: Arc<dyn Scaler>) {
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut ticker = tokio::time::interval(service.policy.refresh_period.min(Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = started.elapsed();
        samples.push(Sample {
            at: now,
            busy: service.replicas.busy_replicas(),
        });
        prune(&mut samples, &service.policy, now);
        let current = service.target_replicas.load(Ordering::Acquire);
        let target = decide(&service.policy, &samples, current);
        if target != current {
            tracing::info!(
                service = %service.name,
                from = current,
                to = target,
                busy = samples.last().map_or(0.0, |s| s.busy),
                "scaling"
            );
            match scaler.scale(target).await {
                Ok(()) => {
                    service.target_replicas.store(target, Ordering::Release);
                    metrics::gauge!("modelpod_router_target_replicas", "service" => service.name.clone())
                        .set(target as f64);
                }
                Err(e) => tracing::error!(service = %service.name, %e, "scaling failed"),
            }
        }
    }
}

/// `modelpod route`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouteArgs {
    /// The service's name, as in its scoring URI /api/v1/service/{name}/score.
    #[arg(long, env = "MODELPOD_SERVICE", default_value = "default")]
    pub service: String,
    /// The service's model repository (passed to each replica).
    #[arg(long, env = "MODELPOD_MODEL_REPOSITORY")]
    pub model_repository: PathBuf,
    /// Azure deploymentconfig.json: autoScaler, numReplicas, maxConcurrentRequestsPerContainer,
    /// maxQueueWaitMs, scoringTimeoutMs.
    #[arg(long, env = "MODELPOD_DEPLOYMENT_CONFIG")]
    pub deployment_config: Option<PathBuf>,
    #[arg(long, env = "MODELPOD_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port the router listens on; 0 picks a free one.
    #[arg(long, env = "MODELPOD_ROUTER_PORT", default_value_t = 8080)]
    pub port: u16,
    /// How long utilization must stay low before replicas are removed, in seconds.
    #[arg(long, default_value_t = 60)]
    pub scale_down_window_s: u64,
    /// A dev/test cluster: the autoscaler is off and numReplicas (default 1) replicas run.
    #[arg(long)]
    pub dev_test: bool,
    /// More arguments for each replica's `modelpod serve` (repeat the flag).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
}

/// A running router: its address, its service, and how to stop it.
pub struct Router {
    pub address: SocketAddr,
    pub service: Arc<Service>,
    scaler: Arc<dyn Scaler>,
    server: actix_web::dev::Server,
}

impl Router {
    /// Starts the scaler, the autoscaler and the HTTP front end. Must run inside an actix
    /// system (which runs on tokio).
    pub fn start(args: RouteArgs) -> anyhow::Result<Router> {
        let config = match &args.deployment_config {
            Some(path) => DeploymentConfig::read(path)?,
            None => DeploymentConfig::default(),
        };
        let service = Arc::new(
            Service::from_deployment(
                args.service.clone(),
                &config,
                args.dev_test,
                Some(Duration::from_secs(args.scale_down_window_s)),
            )
            .map_err(anyhow::Error::msg)?,
        );
        let mut serve_args = vec![
            "--model-repository".to_string(),
            args.model_repository.display().to_string(),
        ];
        if let Some(path) = &args.deployment_config {
            serve_args.extend(["--deployment-config".into(), path.display().to_string()]);
        }
        serve_args.extend(args.serve_args.iter().cloned());
        let scaler: Arc<dyn Scaler> = local::LocalScaler::new(local::LocalReplicaSpec {
            program: std::env::current_exe()?,
            serve_args,
            stop_grace: service.scoring_timeout.min(Duration::from_secs(30)),
        });
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        tokio::spawn(track_endpoints(service.clone(), client.clone(), scaler.clone()));
        let initial = service.initial_replicas();
        service.target_replicas.store(initial, Ordering::Release);
        {
            let scaler = scaler.clone();
            let service = service.clone();
            tokio::spawn(async move {
                if let Err(e) = scaler.scale(initial).await {
                    tracing::error!(service = %service.name, %e, "starting replicas failed");
                }
                autoscale(service, scaler).await;
            });
        }
        let state = actix_web::web::Data::new(proxy::RouterState {
            services: vec![service.clone()],
            client,
        });
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(state.clone())
                .configure(proxy::configure)
        })
        .bind((args.host.as_str(), args.port))?;
        let address = *server.addrs().first().expect("bound");
        let server = server.shutdown_timeout(30).run();
        tracing::info!(service = %service.name, "router listening on http://{address}");
        Ok(Router {
            address,
            service,
            scaler,
            server,
        })
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (SIGTERM, SIGINT or the handle), then stops the replicas.
    pub async fn run(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.scaler.shutdown().await;
        result
    }
}

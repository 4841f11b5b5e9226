//! `modelpod route`: the front end that Azure calls azureml-fe. It serves a service at Azure's
//! scoring URI (`/api/v1/service/{service}/score`, `/swagger.json`, and the v2 routes under
//! the same prefix), sends each request to the least-busy ready replica from the busy state
//! the replicas report, and scales the replicas towards the target utilization through a
//! [`Scaler`] (local processes or a Kubernetes Deployment). It can terminate TLS and collect
//! each scored request's inputs and outputs.

pub mod autoscale;
pub mod collect;
pub mod kube;
pub mod local;
pub mod manifests;
mod proxy;
pub mod replicas;
pub mod store;

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
    /// Where scored requests' inputs and outputs are written, when enabled.
    pub collector: Option<collect::Collector>,
    /// The most recent requests, newest last, for `GET /modelpod/services/{name}/logs`.
    pub recent: parking_lot::Mutex<std::collections::VecDeque<RequestLog>>,
}

/// How many requests each service keeps in its recent log.
pub const RECENT_REQUESTS: usize = 1000;

/// One routed request, as logged and as the recent-log route returns it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestLog {
    pub time: jiff::Timestamp,
    pub request_id: String,
    pub service: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The replica that answered, if one did.
    pub replica: Option<String>,
    /// Waiting at the router for a replica with a free slot.
    pub queue_us: u64,
    /// Sent to the replica until its answer was read (its queue and compute time included).
    pub upstream_us: u64,
    pub total_us: u64,
}

impl Service {
    /// Logs a routed request and keeps it in the service's recent log.
    pub fn log_request(&self, entry: RequestLog) {
        tracing::info!(
            target: "modelpod::access",
            service = %entry.service,
            request_id = %entry.request_id,
            method = %entry.method,
            path = %entry.path,
            status = entry.status,
            replica = entry.replica.as_deref().unwrap_or("-"),
            queue_us = entry.queue_us,
            upstream_us = entry.upstream_us,
            total_us = entry.total_us,
            "request"
        );
        let mut recent = self.recent.lock();
        if recent.len() == RECENT_REQUESTS {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    pub fn from_deployment(
        name: String,
        config: &DeploymentConfig,
        dev_test_cluster: bool,
        scale_down_window: Duration,
    ) -> Result<Service, String> {
        let mut policy = AutoscalePolicy::from_deployment(config, dev_test_cluster)?;
        policy.scale_down_window = scale_down_window;
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
            collector: None,
            recent: Default::default(),
            policy,
        })
    }
}

/// Keeps the replica set equal to what the scaler reports and polls each replica's busy state
/// until it is removed.
pub async fn track_endpoints(
    service: Arc<Service>,
    client: reqwest::Client,
    scaler: Arc<dyn Scaler>,
) {
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
    let mut ticker =
        tokio::time::interval(service.policy.refresh_period.min(Duration::from_secs(1)));
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
                Ok(()) => service.target_replicas.store(target, Ordering::Release),
                Err(e) => tracing::error!(service = %service.name, %e, "scaling failed"),
            }
        }
    }
}

/// `modelpod route`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouteArgs {
    /// Router configuration (TOML) with one `[[service]]` table per service; instead of the
    /// single-service flags below.
    #[arg(long, env = "MODELPOD_ROUTER_CONFIG", conflicts_with_all = ["model_repository", "deployment_config"])]
    pub config: Option<PathBuf>,
    /// The service's name, as in its scoring URI /api/v1/service/{name}/score.
    #[arg(long, env = "MODELPOD_SERVICE", default_value = "default")]
    pub service: String,
    /// The service's model repository (passed to each replica).
    #[arg(
        long,
        env = "MODELPOD_MODEL_REPOSITORY",
        required_unless_present_any = ["config", "kube_deployment"]
    )]
    pub model_repository: Option<PathBuf>,
    /// Azure deploymentconfig.json: autoScaler, numReplicas, maxConcurrentRequestsPerContainer,
    /// maxQueueWaitMs, scoringTimeoutMs.
    #[arg(long, env = "MODELPOD_DEPLOYMENT_CONFIG")]
    pub deployment_config: Option<PathBuf>,
    #[arg(long, env = "MODELPOD_HOST")]
    pub host: Option<String>,
    /// Port the router listens on; 0 picks a free one [default: 8080].
    #[arg(long, env = "MODELPOD_ROUTER_PORT")]
    pub port: Option<u16>,
    /// How long utilization must stay low before replicas are removed, in seconds
    /// [default: 60].
    #[arg(long)]
    pub scale_down_window_s: Option<u64>,
    /// A dev/test cluster: autoscaling is off and numReplicas (default 1) replicas run.
    #[arg(long)]
    pub dev_test: bool,
    /// Serve HTTPS (TLS 1.2 and 1.3) with this PEM certificate chain, leaf first.
    #[arg(long, env = "MODELPOD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, env = "MODELPOD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: also listen for plain HTTP on this port, answering only with redirects to
    /// HTTPS.
    #[arg(long, env = "MODELPOD_HTTP_REDIRECT_PORT", requires = "tls_cert")]
    pub http_redirect_port: Option<u16>,
    /// More arguments for each replica's `modelpod serve` (repeat the flag).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Log format: text or json (one object per line, request logs included).
    #[arg(long, env = "MODELPOD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::config::LogFormat,
    /// Write each scored request's inputs and outputs under this directory (model data
    /// collection), as date-partitioned JSON lines.
    #[arg(long, env = "MODELPOD_DATA_COLLECTION")]
    pub data_collection: Option<PathBuf>,
    /// Scale a Kubernetes Deployment of this name (and route to the ready addresses of the
    /// Service of the same name) instead of starting local replicas.
    #[arg(long, env = "MODELPOD_KUBE_DEPLOYMENT")]
    pub kube_deployment: Option<String>,
    /// The Deployment's namespace.
    #[arg(long, env = "MODELPOD_KUBE_NAMESPACE", default_value = "default")]
    pub kube_namespace: String,
    /// The scoring port of the Deployment's pods.
    #[arg(long, default_value_t = crate::config::DEFAULT_PORT)]
    pub kube_port: u16,
}

/// One service the router fronts.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// The model repository of local replicas (Kubernetes pods bring their own).
    pub model_repository: Option<PathBuf>,
    pub deployment_config: Option<PathBuf>,
    /// Arguments for each local replica's `modelpod serve`.
    #[serde(default)]
    pub serve_args: Vec<String>,
    /// Replicas are this Deployment's pods instead of local processes.
    pub kubernetes: Option<kube::KubeTarget>,
    /// Model data collection for this service.
    pub data_collection: Option<DataCollection>,
}

/// Model data collection settings of a service.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCollection {
    /// Files go under `<root>/<service>/<model>/<version>/<designation>/<yyyy>/<mm>/<dd>/`.
    pub root: PathBuf,
    #[serde(default)]
    pub format: collect::Format,
}

/// The router's configuration file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_window")]
    pub scale_down_window_s: u64,
    #[serde(default)]
    pub dev_test: bool,
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    #[serde(rename = "service")]
    pub services: Vec<ServiceSpec>,
}

/// HTTPS for the router's listener.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// A plain-HTTP port that only redirects to HTTPS.
    pub http_redirect_port: Option<u16>,
}

fn default_host() -> String {
    "0.0.0.0".into()
}

fn default_port() -> u16 {
    8080
}

fn default_window() -> u64 {
    autoscale::DEFAULT_SCALE_DOWN_WINDOW.as_secs()
}

impl RouterConfig {
    /// From the file, or from the single-service flags; flags override the file's settings.
    pub fn resolve(args: RouteArgs) -> anyhow::Result<RouterConfig> {
        let mut config = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                toml::from_str::<RouterConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => RouterConfig {
                host: default_host(),
                port: default_port(),
                scale_down_window_s: default_window(),
                dev_test: false,
                tls: None,
                services: vec![ServiceSpec {
                    name: args.service.clone(),
                    model_repository: args.model_repository.clone(),
                    deployment_config: args.deployment_config.clone(),
                    serve_args: args.serve_args.clone(),
                    data_collection: args.data_collection.clone().map(|root| DataCollection {
                        root,
                        format: collect::Format::Jsonl,
                    }),
                    kubernetes: args
                        .kube_deployment
                        .clone()
                        .map(|deployment| kube::KubeTarget {
                            namespace: args.kube_namespace.clone(),
                            deployment,
                            port: args.kube_port,
                        }),
                }],
            },
        };
        if let Some(host) = args.host {
            config.host = host;
        }
        if let Some(port) = args.port {
            config.port = port;
        }
        if let Some(window) = args.scale_down_window_s {
            config.scale_down_window_s = window;
        }
        config.dev_test |= args.dev_test;
        if let (Some(certificate), Some(key)) = (args.tls_cert, args.tls_key) {
            config.tls = Some(TlsSettings {
                certificate,
                key,
                http_redirect_port: args.http_redirect_port,
            });
        }
        if config.services.is_empty() {
            anyhow::bail!("the router configuration names no [[service]]");
        }
        let mut names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            anyhow::bail!("service '{}' is defined twice", pair[0]);
        }
        if let Some(bad) = config
            .services
            .iter()
            .find(|s| s.name.is_empty() || s.name.contains(['/', '?', '#']))
        {
            anyhow::bail!("service name '{}' cannot appear in a URL path", bad.name);
        }
        if let Some(bad) = config
            .services
            .iter()
            .find(|s| s.kubernetes.is_none() && s.model_repository.is_none())
        {
            anyhow::bail!(
                "service '{}' runs local replicas and needs a model_repository",
                bad.name
            );
        }
        Ok(config)
    }
}

/// A running router: its address, its services, and how to stop it.
pub struct Router {
    pub address: SocketAddr,
    pub services: Vec<Arc<Service>>,
    scalers: Vec<Arc<dyn Scaler>>,
    server: actix_web::dev::Server,
    /// The plain-HTTP listener that redirects to HTTPS, when there is one.
    redirect: Option<actix_web::dev::Server>,
}

impl Router {
    /// Starts each service's scaler and autoscaler and the HTTP front end. Must run inside an
    /// actix system (which runs on tokio).
    pub async fn start(config: RouterConfig) -> anyhow::Result<Router> {
        // Before anything records: metric handles taken earlier would count nowhere.
        let metrics = crate::metrics::install();
        // Bad certificates fail the start before any replica is started.
        let tls = match &config.tls {
            Some(tls) => Some(crate::tls::server_config(&tls.certificate, &tls.key)?),
            None => None,
        };
        let client = http_client();
        let window = Duration::from_secs(config.scale_down_window_s);
        let mut services = Vec::new();
        let mut scalers: Vec<Arc<dyn Scaler>> = Vec::new();
        for spec in &config.services {
            let deployment = match &spec.deployment_config {
                Some(path) => DeploymentConfig::read(path)?,
                None => DeploymentConfig::default(),
            };
            let mut service =
                Service::from_deployment(spec.name.clone(), &deployment, config.dev_test, window)
                    .map_err(|e| anyhow::anyhow!("service {}: {e}", spec.name))?;
            service.collector = spec.data_collection.as_ref().map(|settings| {
                let mut collector = collect::CollectorConfig::new(settings.root.clone());
                collector.format = settings.format;
                collect::Collector::start(collector)
            });
            let service = Arc::new(service);
            let scaler: Arc<dyn Scaler> = match &spec.kubernetes {
                Some(target) => Arc::new(
                    kube::KubeScaler::connect(target.clone(), service.policy.refresh_period)
                        .await
                        .map_err(|e| anyhow::anyhow!("service {}: {e}", spec.name))?,
                ),
                None => {
                    let repository = spec.model_repository.as_ref().expect("checked by resolve");
                    let mut serve_args = vec![
                        "--model-repository".to_string(),
                        repository.display().to_string(),
                    ];
                    if let Some(path) = &spec.deployment_config {
                        serve_args
                            .extend(["--deployment-config".into(), path.display().to_string()]);
                    }
                    serve_args.extend(spec.serve_args.iter().cloned());
                    local::LocalScaler::new(local::LocalReplicaSpec {
                        program: std::env::current_exe()?,
                        serve_args,
                        stop_grace: service.scoring_timeout.min(Duration::from_secs(30)),
                    })
                }
            };
            tracing::info!(service = %spec.name, scaler = scaler.name(), "service");
            services.push(service);
            scalers.push(scaler);
        }
        let state = actix_web::web::Data::new(proxy::RouterState {
            services: services.clone(),
            metrics,
        });
        let server = actix_web::HttpServer::new(move || {
            // One client per worker: its pooled connections are driven by this worker's
            // runtime, so forwarding never hands a request to another thread.
            let forwarder = actix_web::web::Data::new(proxy::Forwarder(http_client()));
            actix_web::App::new()
                .app_data(state.clone())
                .app_data(forwarder)
                .configure(proxy::configure)
        });
        let server = match tls {
            Some(tls) => server.bind_rustls_0_23((config.host.as_str(), config.port), tls)?,
            None => server.bind((config.host.as_str(), config.port))?,
        };
        let address = *server.addrs().first().expect("bound");
        let server = server.shutdown_timeout(30).run();
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(
            services = %services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
            "router listening on {scheme}://{address}"
        );
        let redirect = match config.tls.as_ref().and_then(|t| t.http_redirect_port) {
            Some(port) => {
                let https_port = actix_web::web::Data::new(address.port());
                let redirect = actix_web::HttpServer::new(move || {
                    actix_web::App::new()
                        .app_data(https_port.clone())
                        .default_service(actix_web::web::to(crate::tls::redirect_to_https))
                })
                .workers(1)
                .bind((config.host.as_str(), port))?;
                tracing::info!(
                    "redirecting http://{} to HTTPS",
                    redirect.addrs().first().expect("bound")
                );
                Some(redirect.run())
            }
            None => None,
        };
        // Replicas start only once every listener is bound: a router that cannot listen
        // starts none.
        for (service, scaler) in services.iter().zip(&scalers) {
            run_service(service.clone(), scaler.clone(), client.clone());
        }
        Ok(Router {
            address,
            services,
            scalers,
            server,
            redirect,
        })
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (SIGTERM, SIGINT or the handle), then stops the replicas.
    pub async fn run(self) -> std::io::Result<()> {
        let redirect = self.redirect.map(|redirect| {
            let handle = redirect.handle();
            tokio::spawn(redirect);
            handle
        });
        let result = self.server.await;
        if let Some(redirect) = redirect {
            redirect.stop(true).await;
        }
        futures_util::future::join_all(self.scalers.iter().map(|s| s.shutdown())).await;
        // Every request has been answered: what was collected is written out now.
        for collector in self.services.iter().filter_map(|s| s.collector.as_ref()) {
            collector.shutdown();
        }
        result
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("a plain HTTP client builds")
}

/// Starts a service's replicas, follows them, and autoscales them.
pub fn run_service(service: Arc<Service>, scaler: Arc<dyn Scaler>, client: reqwest::Client) {
    tokio::spawn(track_endpoints(service.clone(), client, scaler.clone()));
    let initial = service.policy.initial_replicas();
    service.target_replicas.store(initial, Ordering::Release);
    tokio::spawn(async move {
        if let Err(e) = scaler.scale(initial).await {
            tracing::error!(service = %service.name, %e, "starting replicas failed");
        }
        autoscale(service, scaler).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        route: RouteArgs,
    }

    fn resolve(args: &[&str]) -> anyhow::Result<RouterConfig> {
        let cli = Cli::try_parse_from(std::iter::once("route").chain(args.iter().copied()))?;
        RouterConfig::resolve(cli.route)
    }

    #[test]
    fn one_service_from_flags_or_several_from_a_file() {
        let config = resolve(&["--model-repository", "models", "--service", "iris"]).unwrap();
        assert_eq!(config.services.len(), 1);
        assert_eq!(config.services[0].name, "iris");
        assert_eq!((config.port, config.scale_down_window_s), (8080, 60));

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "port = 9000\n[[service]]\nname = \"a\"\nmodel_repository = \"m\"\n\
             [[service]]\nname = \"b\"\nmodel_repository = \"n\"\nserve_args = [\"--backend\", \"tract\"]\n",
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let config = resolve(&["--config", path, "--port", "0"]).unwrap();
        assert_eq!(config.port, 0, "flags override the file");
        assert_eq!(config.services[1].serve_args, ["--backend", "tract"]);
        // --config and the single-service flags exclude each other.
        assert!(resolve(&["--config", path, "--model-repository", "m"]).is_err());
        assert!(
            resolve(&[]).is_err(),
            "a model repository or a file is required"
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap().to_string();
        let check = |text: &str, expected: &str| {
            std::fs::write(&path, text).unwrap();
            let error = resolve(&["--config", &path]).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        };
        check(
            "[[service]]\nname = \"a\"\nmodel_repository = \"m\"\n[[service]]\nname = \"a\"\nmodel_repository = \"n\"\n",
            "defined twice",
        );
        check(
            "[[service]]\nname = \"a/b\"\nmodel_repository = \"m\"\n",
            "URL path",
        );
        check(
            "[[service]]\nname = \"a\"\nmodel_repo = \"m\"\n",
            "unknown field",
        );
        check("service = []\n", "no [[service]]");
        check("[[service]]\nname = \"a\"\n", "needs a model_repository");
    }
}

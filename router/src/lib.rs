//! `modelpod route`: the front end that Azure calls azureml-fe. It serves services at Azure's
//! scoring URI (`/api/v1/service/{service}/score`, `/swagger.json`, and the v2 routes under
//! the same prefix) and endpoints with up to six versions at `/api/v1/endpoint/{endpoint}/...`,
//! splitting their traffic by percentile. It authenticates callers (keys or tokens), sends
//! each request to the least-busy ready replica from the busy state the replicas report, and
//! scales the replicas towards the target utilization through a [`Scaler`] (local processes
//! or a Kubernetes Deployment). A management API changes what it serves and a state file
//! keeps it; it can terminate TLS and collect each scored request's inputs and outputs.

pub mod access;
pub mod admin;
pub mod autoscale;
pub mod catalog;
pub mod collect;
pub mod control;
pub mod deployment;
mod forwarded;
mod grpc;
pub mod kube;
pub mod local;
pub mod manifests;
mod proxy;
pub mod replicas;
pub mod store;
mod swagger;

use catalog::{AuthMode, DeploymentSpec, Kind, Version};
use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
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
    /// What the scaler knows of its replicas beyond their busy reports (restarts, backoff).
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// How many requests each webservice keeps in its recent log.
pub const RECENT_REQUESTS: usize = 1000;

/// One routed request, as logged and as the recent-log route returns it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestLog {
    pub time: jiff::Timestamp,
    pub request_id: String,
    /// The service or endpoint.
    pub service: String,
    /// The endpoint version that answered (`default` for a service).
    pub version: String,
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

/// `modelpod route`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouteArgs {
    /// Router configuration (TOML) with one `[[service]]` table per service; instead of the
    /// single-service flags below.
    #[arg(long, env = "MODELPOD_ROUTER_CONFIG", conflicts_with_all = ["model_repository", "deployment_config", "inference_config"])]
    pub config: Option<PathBuf>,
    /// Where the router keeps what it serves (services, endpoints, versions, keys) across
    /// restarts [default: modelpod-router-state.json].
    #[arg(long, env = "MODELPOD_ROUTER_STATE")]
    pub state_file: Option<PathBuf>,
    /// The management API's credential (`Authorization: Bearer <key>` on /modelpod/...);
    /// generated and kept in the state file when not given.
    #[arg(long, env = "MODELPOD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// How long a token from the management API is valid, in seconds; clients should refresh
    /// it after half of that [default: 3600].
    #[arg(long, env = "MODELPOD_TOKEN_LIFETIME_S")]
    pub token_lifetime_s: Option<u64>,
    /// The service's name, as in its scoring URI /api/v1/service/{name}/score.
    #[arg(long, env = "MODELPOD_SERVICE", default_value = "default")]
    pub service: String,
    /// The service's model repository (passed to each replica). Without it (and without
    /// --config or --kube-deployment) the router serves what its state file and management
    /// API give it.
    #[arg(long, env = "MODELPOD_MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,
    /// Azure deploymentconfig.json: autoScaler, numReplicas, maxConcurrentRequestsPerContainer,
    /// maxQueueWaitMs, scoringTimeoutMs, authEnabled, tokenAuthEnabled, keys.
    #[arg(long, env = "MODELPOD_DEPLOYMENT_CONFIG")]
    pub deployment_config: Option<PathBuf>,
    /// Azure inferenceconfig.json: the service's local replicas serve its entry script
    /// (score.py), beside the model repository's models if one is given too.
    #[arg(long, env = "MODELPOD_INFERENCE_CONFIG")]
    pub inference_config: Option<PathBuf>,
    /// How callers of the service authenticate [default: from deploymentconfig.json, else
    /// key].
    #[arg(long, env = "MODELPOD_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// Address the router listens on [default: 0.0.0.0].
    #[arg(long, env = "MODELPOD_HOST")]
    pub host: Option<String>,
    /// Port the router listens on; 0 picks a free one [default: 8080]. The same variable as
    /// `serve --port`'s: local replicas are given their ports as flags, which win over it.
    #[arg(long, env = "MODELPOD_PORT")]
    pub port: Option<u16>,
    /// Also serve the v2 gRPC service (`inference.GRPCInferenceService`) on this port, each
    /// call naming its webservice in `modelpod-service` or `modelpod-endpoint` metadata;
    /// 0 picks a free port [default: no gRPC listener]. Over TLS when the router has it.
    #[arg(long, env = "MODELPOD_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// How long utilization must stay low before replicas are removed, in seconds
    /// [default: 60].
    #[arg(long, env = "MODELPOD_SCALE_DOWN_WINDOW_S")]
    pub scale_down_window_s: Option<u64>,
    /// A dev/test cluster: autoscaling is off and numReplicas (default 1) replicas run.
    #[arg(long, env = "MODELPOD_DEV_TEST")]
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
    /// The host name clients reach the router by, which HTTPS redirects point to [default:
    /// the address each connection came in on].
    #[arg(long, env = "MODELPOD_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// How long a client may take to send a request body before 408 [default: 10000].
    #[arg(long, env = "MODELPOD_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// Origins browsers may call the scoring URIs from (comma-separated, or `*`), as a
    /// scoring server's AML_CORS_ORIGINS; preflights are answered here, without credentials
    /// [default: none, no CORS headers].
    #[arg(long, env = "MODELPOD_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// More arguments for each replica's `modelpod serve` (repeat the flag).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Log format: text or json (one object per line, request logs included).
    #[arg(long, env = "MODELPOD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: modelpod_http::telemetry::LogFormat,
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
    #[arg(long, env = "MODELPOD_KUBE_PORT", default_value_t = modelpod_scoring::deployment::defaults::SCORING_SERVER_PORT)]
    pub kube_port: u16,
}

pub const DEFAULT_STATE_FILE: &str = "modelpod-router-state.json";

/// One service the router's configuration declares.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// The model repository of local replicas (Kubernetes pods bring their own).
    pub model_repository: Option<PathBuf>,
    pub deployment_config: Option<PathBuf>,
    /// Azure inferenceconfig.json whose entry script local replicas serve.
    #[serde(default)]
    pub inference_config: Option<PathBuf>,
    /// Arguments for each local replica's `modelpod serve`.
    #[serde(default)]
    pub serve_args: Vec<String>,
    /// Replicas are this Deployment's pods instead of local processes.
    pub kubernetes: Option<kube::KubeTarget>,
    /// Model data collection for this service.
    pub data_collection: Option<DataCollection>,
    /// How callers authenticate; unset keeps what the state file has (or, for a new service,
    /// what deploymentconfig.json says, else key).
    pub auth: Option<AuthMode>,
}

impl ServiceSpec {
    fn declared(&self) -> (String, control::NewWebservice) {
        let deployment = DeploymentSpec {
            model_repository: self.model_repository.clone(),
            deployment_config: self.deployment_config.clone(),
            inference_config: self.inference_config.clone(),
            serve_args: self.serve_args.clone(),
            kubernetes: self.kubernetes.clone(),
            data_collection: self.data_collection.clone(),
        };
        let version = Version {
            name: catalog::SERVICE_VERSION.into(),
            deployment,
            traffic_percentile: 100.0,
            is_default: true,
            is_control_version: false,
            description: String::new(),
            tags: Default::default(),
        };
        let new = control::NewWebservice {
            kind: Kind::Service,
            auth: self.auth,
            description: String::new(),
            tags: Default::default(),
            versions: vec![version],
        };
        (self.name.clone(), new)
    }
}

/// Model data collection settings of a deployment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// The gRPC listener's port; none without it.
    #[serde(default)]
    pub grpc_port: Option<u16>,
    #[serde(default = "default_window")]
    pub scale_down_window_s: u64,
    #[serde(default)]
    pub dev_test: bool,
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    pub state_file: Option<PathBuf>,
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_s: u64,
    /// The host name HTTPS redirects point to.
    #[serde(default)]
    pub public_host: Option<String>,
    /// How long a client may take to send a request body before 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Origins allowed to call cross-origin, comma-separated.
    #[serde(default)]
    pub cors_origins: Option<String>,
    /// Only from the flag or the environment, never from the file.
    #[serde(skip)]
    pub admin_key: Option<String>,
    #[serde(rename = "service", default)]
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

fn default_body_timeout() -> u64 {
    modelpod_http::body::DEFAULT_BODY_TIMEOUT.as_millis() as u64
}

fn default_token_lifetime() -> u64 {
    access::DEFAULT_TOKEN_LIFETIME.as_secs()
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
                grpc_port: None,
                scale_down_window_s: default_window(),
                dev_test: false,
                tls: None,
                state_file: None,
                token_lifetime_s: default_token_lifetime(),
                public_host: None,
                body_timeout_ms: default_body_timeout(),
                cors_origins: None,
                admin_key: None,
                services: Vec::new(),
            },
        };
        if args.config.is_none()
            && (args.model_repository.is_some()
                || args.inference_config.is_some()
                || args.kube_deployment.is_some())
        {
            config.services.push(ServiceSpec {
                name: args.service.clone(),
                model_repository: args.model_repository.clone(),
                deployment_config: args.deployment_config.clone(),
                inference_config: args.inference_config.clone(),
                serve_args: args.serve_args.clone(),
                data_collection: args.data_collection.clone().map(DataCollection::jsonl),
                kubernetes: args
                    .kube_deployment
                    .clone()
                    .map(|deployment| kube::KubeTarget {
                        namespace: args.kube_namespace.clone(),
                        deployment,
                        port: args.kube_port,
                    }),
                auth: args.auth,
            });
        }
        if let Some(host) = args.host {
            config.host = host;
        }
        if let Some(port) = args.port {
            config.port = port;
        }
        if args.grpc_port.is_some() {
            config.grpc_port = args.grpc_port;
        }
        if let Some(window) = args.scale_down_window_s {
            config.scale_down_window_s = window;
        }
        if let Some(lifetime) = args.token_lifetime_s {
            config.token_lifetime_s = lifetime;
        }
        if args.public_host.is_some() {
            config.public_host = args.public_host;
        }
        if let Some(timeout) = args.body_timeout_ms {
            config.body_timeout_ms = timeout;
        }
        if args.cors_origins.is_some() {
            config.cors_origins = args.cors_origins;
        }
        if config.body_timeout_ms == 0 {
            anyhow::bail!("body-timeout-ms must be at least 1");
        }
        if config.token_lifetime_s < 2 {
            anyhow::bail!("a token lifetime must be at least 2 seconds");
        }
        if args.state_file.is_some() {
            config.state_file = args.state_file;
        }
        config.admin_key = args.admin_key;
        config.dev_test |= args.dev_test;
        if let (Some(certificate), Some(key)) = (args.tls_cert, args.tls_key) {
            config.tls = Some(TlsSettings {
                certificate,
                key,
                http_redirect_port: args.http_redirect_port,
            });
        }
        let mut names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            anyhow::bail!("service '{}' is defined twice", pair[0]);
        }
        for service in &config.services {
            catalog::check_name("service", &service.name)?;
            if service.kubernetes.is_none()
                && service.model_repository.is_none()
                && service.inference_config.is_none()
            {
                anyhow::bail!(
                    "service '{}' runs local replicas and needs a model_repository or an inference_config",
                    service.name
                );
            }
        }
        Ok(config)
    }
}

/// A running router: its address, what it serves, and how to stop it.
pub struct Router {
    pub address: SocketAddr,
    pub control: Arc<control::Control>,
    server: actix_web::dev::Server,
    /// The plain-HTTP listener that redirects to HTTPS, when there is one.
    redirect: Option<actix_web::dev::Server>,
    grpc: Option<modelpod_http::grpc::GrpcListener>,
}

impl Router {
    /// Restores the state file, starts every deployment, and starts the HTTP front end. Must
    /// run inside an actix system (which runs on tokio).
    pub async fn start(config: RouterConfig) -> anyhow::Result<Router> {
        // Before anything records: metric handles taken earlier would count nowhere.
        let metrics = modelpod_http::metrics::install();
        // Bad certificates fail the start before any replica is started.
        let tls = match &config.tls {
            Some(tls) => Some(modelpod_http::tls::server_config(
                &tls.certificate,
                &tls.key,
            )?),
            None => None,
        };
        let state_file = config
            .state_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE));
        let host = config.host.clone();
        // Bind before any replica starts: a router that cannot listen starts none.
        let listener = std::net::TcpListener::bind((host.as_str(), config.port))?;
        let redirect_listener = match config.tls.as_ref().and_then(|t| t.http_redirect_port) {
            Some(port) => Some(std::net::TcpListener::bind((host.as_str(), port))?),
            None => None,
        };
        let grpc_listener = match config.grpc_port {
            Some(port) => Some(std::net::TcpListener::bind((host.as_str(), port))?),
            None => None,
        };
        let settings = deployment::DeploymentSettings {
            dev_test_cluster: config.dev_test,
            scale_down_window: Duration::from_secs(config.scale_down_window_s),
            client: http_client(),
            program: std::env::current_exe()?,
            grpc: config.grpc_port.is_some(),
        };
        let declared = config.services.iter().map(ServiceSpec::declared).collect();
        let control = control::Control::open(
            store::StateFile::new(state_file),
            config.admin_key.clone(),
            Duration::from_secs(config.token_lifetime_s),
            settings,
            declared,
        )
        .await?;
        let state = actix_web::web::Data::new(proxy::RouterState {
            control: control.clone(),
            metrics,
            public_host: config.public_host.clone(),
            bodies: modelpod_http::body::BodyReader::new(
                Duration::from_millis(config.body_timeout_ms),
                modelpod_http::body::DEFAULT_BODY_BUDGET,
            ),
        });
        let cors_origins =
            modelpod_http::cors::origins(config.cors_origins.as_deref().unwrap_or(""));
        let server = actix_web::HttpServer::new(move || {
            // One client per worker: its pooled connections are driven by this worker's
            // runtime, so forwarding never hands a request to another thread.
            let forwarder = actix_web::web::Data::new(proxy::Forwarder(http_client()));
            actix_web::App::new()
                .app_data(state.clone())
                .app_data(forwarder)
                // A browser's preflight carries no credential: answered before auth.
                .wrap(modelpod_http::cors::middleware(&cors_origins))
                .configure(admin::configure)
                .configure(proxy::configure)
        });
        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls)?,
            None => server.listen(listener)?,
        };
        let address = *server.addrs().first().expect("bound");
        let server = server.shutdown_timeout(30).run();
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let table = control.table();
        tracing::info!(
            webservices = %table.keys().cloned().collect::<Vec<_>>().join(","),
            "router listening on {scheme}://{address}"
        );
        let grpc = match grpc_listener {
            Some(listener) => {
                let grpc = grpc::start(
                    listener,
                    control.clone(),
                    Duration::from_millis(config.body_timeout_ms),
                    config.tls.as_ref(),
                )?;
                tracing::info!("v2 gRPC on {scheme}://{}", grpc.address);
                Some(grpc)
            }
            None => None,
        };
        let redirect = match redirect_listener {
            Some(listener) => {
                let target = actix_web::web::Data::new(modelpod_http::tls::RedirectTarget {
                    https_port: address.port(),
                    public_host: config.public_host.clone(),
                });
                let redirect = actix_web::HttpServer::new(move || {
                    actix_web::App::new()
                        .app_data(target.clone())
                        .default_service(actix_web::web::to(modelpod_http::tls::redirect_to_https))
                })
                .workers(1)
                .listen(listener)?;
                tracing::info!(
                    "redirecting http://{} to HTTPS",
                    redirect.addrs().first().expect("bound")
                );
                Some(redirect.run())
            }
            None => None,
        };
        Ok(Router {
            address,
            control,
            server,
            redirect,
            grpc,
        })
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// The gRPC listener's address, when there is one.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|g| g.address)
    }

    /// Serves until stopped (SIGTERM, SIGINT or the handle), then stops the replicas and
    /// writes out what was collected: every request has been answered by then.
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
        if let Some(mut grpc) = self.grpc {
            let _ = tokio::task::spawn_blocking(move || grpc.stop()).await;
        }
        self.control.shutdown().await;
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
            resolve(&[]).unwrap().services.is_empty(),
            "without a service the router serves what its state file and management API give it"
        );
        let config = resolve(&[
            "--model-repository",
            "m",
            "--auth",
            "token",
            "--admin-key",
            "a",
        ])
        .unwrap();
        assert_eq!(config.services[0].auth, Some(AuthMode::Token));
        assert_eq!(config.admin_key.as_deref(), Some("a"));
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
            "service name 'a/b'",
        );
        check(
            "[[service]]\nname = \"a\"\nmodel_repo = \"m\"\n",
            "unknown field",
        );
        check("token_lifetime_s = 1\n", "at least 2 seconds");
        check("[[service]]\nname = \"a\"\n", "needs a model_repository");
    }
}

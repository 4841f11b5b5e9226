//! `modelpod serve` configuration: one validated struct built from the command line, then
//! environment variables (clap reads both), then files (`--deployment-config`, `--config`),
//! then defaults (Azure's where Azure has one).

use clap::{Args, ValueEnum};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use modelpod_accel::EngineChoice;
use modelpod_scoring::MemoryBudget;
use modelpod_scoring::deployment::{DeploymentConfig, ScoringLimits};
use modelpod_scoring::memory::parse_bytes;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

pub use modelpod_http::telemetry::LogFormat;
pub use modelpod_scoring::deployment::defaults::SCORING_SERVER_PORT as DEFAULT_PORT;

/// `modelpod serve`: the scoring server.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Model repository: <dir>/<model>/<version>/model.onnx. Azure's AZUREML_MODEL_DIR is used
    /// when this is not set.
    #[arg(long, env = "MODELPOD_MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, env = "MODELPOD_HOST")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: 5001].
    #[arg(long, env = "MODELPOD_PORT")]
    pub port: Option<u16>,
    /// Engine: auto (the node's plan, best first: see `modelpod sku`), ort or tract (the best
    /// of that library), or exactly one of ort-tensorrt, ort-cuda, ort-vitisai, ort-cpu,
    /// tract-cuda, tract-cpu [default: auto]. A model's manifest may choose its own.
    #[arg(long, env = "MODELPOD_BACKEND")]
    pub backend: Option<EngineChoice>,
    /// Directory where ONNX Runtime's TensorRT engine keeps the engines it builds, so that a
    /// restart does not rebuild them [default: no cache].
    #[arg(long, env = "MODELPOD_TENSORRT_CACHE")]
    pub tensorrt_cache: Option<PathBuf>,
    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, then default locations).
    #[arg(long, env = "MODELPOD_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per model instance [default: 1].
    #[arg(long, env = "MODELPOD_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<usize>,
    /// Azure deploymentconfig.json (scoringTimeoutMs, maxConcurrentRequestsPerContainer,
    /// maxQueueWaitMs, keys...).
    #[arg(long, env = "MODELPOD_DEPLOYMENT_CONFIG")]
    pub deployment_config: Option<PathBuf>,
    /// Native TOML configuration file with the same keys as these flags (snake_case).
    #[arg(long, env = "MODELPOD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Requests scored at once; more wait up to max-queue-wait-ms [default: 1, Azure's].
    #[arg(long, env = "MODELPOD_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// How long a request may wait for a free slot before 503 [default: 500].
    #[arg(long, env = "MODELPOD_MAX_QUEUE_WAIT_MS")]
    pub max_queue_wait_ms: Option<u64>,
    /// Time from arrival to answer before 504 [default: 60000]. Azure's SCORING_TIMEOUT_MS is
    /// honoured too.
    #[arg(long, env = "MODELPOD_SCORING_TIMEOUT_MS")]
    pub scoring_timeout_ms: Option<u64>,
    /// Largest request body accepted before 413 [default: 104857600, Azure's 100 MB].
    #[arg(long, env = "MODELPOD_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Bearer keys accepted on scoring routes (comma-separated); no keys means no auth.
    #[arg(
        long = "api-key",
        env = "MODELPOD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// No route takes a key, whatever deploymentconfig.json says (authEnabled,
    /// tokenAuthEnabled, keys): for a server nothing but a trusted caller can reach.
    #[arg(long, env = "MODELPOD_NO_AUTH", conflicts_with = "api_keys")]
    pub no_auth: bool,
    /// Whether the v2 repository API may load and unload models: none (Triton's default:
    /// load and unload are refused with 403) or explicit [default: none].
    #[arg(long, env = "MODELPOD_MODEL_CONTROL_MODE")]
    pub model_control_mode: Option<ModelControl>,
    /// How long a client may take to send a request body before 408 [default: 10000].
    #[arg(long, env = "MODELPOD_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// Origins browsers may call from (comma-separated, or `*`), as Azure's AML_CORS_ORIGINS,
    /// which is read too [default: none, no CORS headers].
    #[arg(long, env = "MODELPOD_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Also listen on this port, for the health probes only (`GET /`, `/v2/health/live`,
    /// `/v2/health/ready`), as Azure's `--health-port`; every other route there is 404.
    #[arg(long, env = "MODELPOD_HEALTH_PORT")]
    pub health_port: Option<u16>,
    /// Port of the v2 gRPC service (`inference.GRPCInferenceService` and `grpc.health.v1`),
    /// or `off` [default: 8001, as Triton]. 0 picks a free port.
    #[arg(long, env = "MODELPOD_GRPC_PORT")]
    pub grpc_port: Option<String>,
    /// Model `POST /score` uses when no ?model= is given [default: the only model].
    #[arg(long, env = "MODELPOD_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Models loaded in parallel at start-up [default: 2].
    #[arg(long, env = "MODELPOD_LOAD_PARALLELISM")]
    pub load_parallelism: Option<usize>,
    /// HTTP worker threads [default: number of cores]; the gRPC listener gets half as many.
    #[arg(long, env = "MODELPOD_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// Readiness also requires that no model failed to load [default: true]. Models not loaded
    /// yet (lazy policy, memory budget) do not count.
    #[arg(long, env = "MODELPOD_STRICT_READINESS")]
    pub strict_readiness: Option<bool>,
    /// Log format [default: text].
    #[arg(long, env = "MODELPOD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// When models load: eager (every model at start, as many as the memory budget holds) or
    /// lazy (on first request). Either way a model not loaded is loaded when a request needs it
    /// [default: eager].
    #[arg(long, env = "MODELPOD_LOAD_POLICY")]
    pub load_policy: Option<LoadPolicy>,
    /// Host memory loaded models may hold (e.g. 6GiB, 512MiB); least recently used idle models
    /// are evicted to stay under it; "none" for no limit [default: 80 % of the container's
    /// cgroup memory limit, or none without one].
    #[arg(long, env = "MODELPOD_MEMORY_BUDGET")]
    pub memory_budget: Option<String>,
    /// Accelerator memory budgets for device engines, as DEVICE=SIZE (e.g. cuda:0=20GiB),
    /// comma-separated [default: 90 % of each CUDA device's memory, as its driver reports it].
    #[arg(
        long = "device-memory-budget",
        env = "MODELPOD_DEVICE_MEMORY_BUDGETS",
        value_delimiter = ','
    )]
    pub device_memory_budgets: Vec<String>,
    /// Rescan the repository every this many seconds, registering added models and unloading
    /// removed ones [default: off; load and unload through the repository API].
    #[arg(long, env = "MODELPOD_REPOSITORY_POLL_SECONDS")]
    pub repository_poll: Option<u64>,
    /// Azure's inferenceconfig.json: serve its entry script (score.py, unmodified) in Python
    /// worker processes, beside any ONNX models of the repository. AZUREML_MODEL_DIR is then
    /// the script's model folder, not the repository.
    #[arg(long, env = "MODELPOD_INFERENCE_CONFIG")]
    pub inference_config: Option<PathBuf>,
    /// Python interpreter of the entry script's environment [default: inferenceconfig.json's
    /// environment.python.interpreterPath, else the active virtualenv or conda environment,
    /// else python3].
    #[arg(long, env = "MODELPOD_PYTHON")]
    pub python: Option<PathBuf>,
    /// Entry-script worker processes, as Azure's WORKER_COUNT [default: 1].
    #[arg(long, env = "WORKER_COUNT")]
    pub entry_script_workers: Option<usize>,
    /// The name `/score?model=` selects the entry script by; without ?model=, /score is the
    /// entry script [default: the name of inferenceconfig.json's folder].
    #[arg(long, env = "MODELPOD_ENTRY_SCRIPT_NAME")]
    pub entry_script_name: Option<String>,
    #[command(flatten)]
    pub node: modelpod_accel::node::NodeArgs,
    /// Refuse to start when the node's VM size promises an accelerator the probes do not find
    /// (otherwise this is logged as a warning and models are served on the CPU).
    #[arg(long, env = "MODELPOD_REQUIRE_ACCELERATOR")]
    pub require_accelerator: bool,
}

/// When models are loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadPolicy {
    /// All at start-up, in parallel, serving each as it becomes ready (Azure's behaviour).
    #[default]
    Eager,
    /// On first request; concurrent first requests wait for one load.
    Lazy,
}

/// Whether models may be loaded and unloaded through the repository API, as Triton's
/// `--model-control-mode`; polling the repository is `--repository-poll`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelControl {
    /// The models are what the repository holds; load and unload are refused.
    #[default]
    None,
    /// `POST /v2/repository/models/{name}/load` and `/unload` (with the key, when there is one).
    Explicit,
}

/// Share of the cgroup memory limit that models may hold by default; the rest is for requests
/// in flight, batches and the server itself.
pub const DEFAULT_BUDGET_SHARE_OF_CGROUP_LIMIT: f64 = 0.8;

/// One layer of settings, each under the name of its flag in snake_case: what the native
/// configuration file holds, and what the flags, deploymentconfig.json and Azure's environment
/// variables contribute. Layers are merged by figment (see [`ServeConfig::resolve`]); a field
/// a layer leaves out is not serialized, so it does not hide a lower layer's value.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layer {
    #[serde(skip_serializing_if = "Option::is_none")]
    model_repository: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<EngineChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tensorrt_cache: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ort_library: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intra_op_threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent_requests: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_queue_wait_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scoring_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_request_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_keys: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_parallelism: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict_readiness: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_policy: Option<LoadPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_budget: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_memory_budgets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repository_poll: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_control_mode: Option<ModelControl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cors_origins: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inference_config: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    python: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_script_workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_script_name: Option<String>,
}

impl Layer {
    /// What the flags and their MODELPOD_* variables (read by clap) set.
    fn from_args(args: &ServeArgs) -> Layer {
        let listed = |list: &Vec<String>| (!list.is_empty()).then(|| list.clone());
        Layer {
            model_repository: args.model_repository.clone(),
            host: args.host.clone(),
            port: args.port,
            backend: args.backend,
            tensorrt_cache: args.tensorrt_cache.clone(),
            ort_library: args.ort_library.clone(),
            intra_op_threads: args.intra_op_threads,
            max_concurrent_requests: args.max_concurrent_requests,
            max_queue_wait_ms: args.max_queue_wait_ms,
            scoring_timeout_ms: args.scoring_timeout_ms,
            max_request_bytes: args.max_request_bytes,
            api_keys: listed(&args.api_keys),
            default_model: args.default_model.clone(),
            load_parallelism: args.load_parallelism,
            http_workers: args.http_workers,
            strict_readiness: args.strict_readiness,
            log_format: args.log_format,
            load_policy: args.load_policy,
            memory_budget: args.memory_budget.clone(),
            device_memory_budgets: listed(&args.device_memory_budgets),
            repository_poll: args.repository_poll,
            model_control_mode: args.model_control_mode,
            body_timeout_ms: args.body_timeout_ms,
            cors_origins: args.cors_origins.clone(),
            health_port: args.health_port,
            grpc_port: args.grpc_port.clone(),
            inference_config: args.inference_config.clone(),
            python: args.python.clone(),
            entry_script_workers: args.entry_script_workers,
            entry_script_name: args.entry_script_name.clone(),
        }
    }

    /// What deploymentconfig.json sets.
    fn from_azure(azure: &DeploymentConfig) -> Layer {
        Layer {
            max_concurrent_requests: azure.max_concurrent_requests_per_container,
            max_queue_wait_ms: azure.max_queue_wait_ms,
            scoring_timeout_ms: azure.scoring_timeout_ms,
            ..Layer::default()
        }
    }
}

/// The validated configuration of a scoring server.
/// Triton's gRPC port.
pub const DEFAULT_GRPC_PORT: u16 = modelpod_scoring::deployment::defaults::GRPC_PORT;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `None` only beside an entry script: the server then serves no ONNX model.
    pub model_repository: Option<PathBuf>,
    pub entry_script: Option<crate::entry_script::EntryScriptConfig>,
    pub host: String,
    pub port: u16,
    pub backend: EngineChoice,
    pub tensorrt_cache: Option<PathBuf>,
    pub ort_library: Option<PathBuf>,
    pub intra_op_threads: usize,
    pub limits: ScoringLimits,
    pub api_keys: Vec<String>,
    pub model_control: ModelControl,
    pub body_timeout: Duration,
    /// Origins allowed to call cross-origin; empty: no CORS.
    pub cors_origins: Vec<String>,
    /// The probes-only listener's port.
    pub health_port: Option<u16>,
    /// The gRPC listener's port; `None` when switched off.
    pub grpc_port: Option<u16>,
    pub default_model: Option<String>,
    pub load_parallelism: usize,
    pub http_workers: usize,
    pub strict_readiness: bool,
    pub log_format: LogFormat,
    pub load_policy: LoadPolicy,
    pub memory_budget: MemoryBudget,
    pub repository_poll: Option<Duration>,
    pub node: modelpod_accel::node::NodeArgs,
    pub require_accelerator: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no model repository: pass --model-repository (or --inference-config for an entry script), or set MODELPOD_MODEL_REPOSITORY or AZUREML_MODEL_DIR"
    )]
    NoRepository,
    #[error("{0}")]
    File(String),
    #[error("{0}")]
    AuthWithoutKey(String),
    #[error("{name} must be {rule} (got {value})")]
    OutOfRange {
        name: &'static str,
        rule: &'static str,
        value: String,
    },
}

/// The host budget (given, or a share of the cgroup limit) and any device budgets.
fn memory_budget(host: Option<&str>, devices: &[String]) -> Result<MemoryBudget, ConfigError> {
    let invalid = |text: &str| ConfigError::OutOfRange {
        name: "memory-budget",
        rule: "a size such as 6GiB, or none",
        value: text.to_string(),
    };
    let mut budget = MemoryBudget::unlimited();
    let host = match host.map(str::trim) {
        Some(text) if text.eq_ignore_ascii_case("none") => None,
        Some(text) => Some(parse_bytes(text).map_err(|_| invalid(text))?),
        None => crate::memory::cgroup_memory_limit()
            .map(|limit| (limit as f64 * DEFAULT_BUDGET_SHARE_OF_CGROUP_LIMIT) as u64),
    };
    if let Some(bytes) = host {
        budget = budget.with_limit(modelpod_scoring::memory::HOST, bytes);
    }
    for device in devices {
        let (name, size) = device
            .split_once('=')
            .ok_or_else(|| ConfigError::OutOfRange {
                name: "device-memory-budget",
                rule: "DEVICE=SIZE, e.g. cuda:0=20GiB",
                value: device.clone(),
            })?;
        budget = budget.with_limit(name.trim(), parse_bytes(size).map_err(|_| invalid(device))?);
    }
    Ok(budget)
}

/// A deploymentconfig.json that turns auth on must come with a key: serving open instead
/// would be a silent downgrade.
fn check_auth_is_off(
    azure: &DeploymentConfig,
    path: Option<&std::path::Path>,
) -> Result<(), ConfigError> {
    let file = || path.map_or_else(String::new, |p| p.display().to_string());
    if azure.token_auth_enabled == Some(true) {
        return Err(ConfigError::AuthWithoutKey(format!(
            "{}: tokenAuthEnabled is true, but tokens are issued and checked by `modelpod route`; run this server behind it, or give it keys (keys.primaryKey in the file, MODELPOD_API_KEYS or --api-key), or pass --no-auth",
            file()
        )));
    }
    if azure.auth_enabled == Some(true) {
        return Err(ConfigError::AuthWithoutKey(format!(
            "{}: authEnabled is true but no key is set: add keys.primaryKey to the file, set MODELPOD_API_KEYS or pass --api-key (or --no-auth to serve without one)",
            file()
        )));
    }
    Ok(())
}

impl ServeConfig {
    /// Resolves flags and environment (already merged by clap) over files over defaults.
    pub fn resolve(args: ServeArgs) -> Result<ServeConfig, ConfigError> {
        let azure = match &args.deployment_config {
            Some(path) => {
                DeploymentConfig::read(path).map_err(|e| ConfigError::File(e.to_string()))?
            }
            None => DeploymentConfig::default(),
        };
        // Lowest first: Azure's environment variables, deploymentconfig.json, the native file,
        // then the flags and MODELPOD_* variables.
        let mut figment = Figment::new()
            .merge(Env::raw().only(&["SCORING_TIMEOUT_MS"]))
            .merge(
                Env::raw()
                    .only(&["AML_CORS_ORIGINS"])
                    .map(|_| "cors_origins".into()),
            )
            .merge(Serialized::defaults(Layer::from_azure(&azure)));
        if let Some(path) = &args.config {
            if !path.is_file() {
                return Err(ConfigError::File(format!("cannot read {}", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let layer: Layer = figment
            .merge(Serialized::defaults(Layer::from_args(&args)))
            .extract()
            .map_err(|e| ConfigError::File(e.to_string()))?;
        let limits = ScoringLimits::default().overridden(
            layer.max_concurrent_requests,
            layer.max_queue_wait_ms,
            layer.scoring_timeout_ms,
            layer.max_request_bytes,
        );
        let entry_script = match &layer.inference_config {
            Some(path) => Some(
                crate::entry_script::EntryScriptConfig::resolve(
                    path,
                    &crate::entry_script::EntryScriptArgs {
                        python: layer.python.clone(),
                        workers: layer.entry_script_workers,
                        name: layer.entry_script_name.clone(),
                    },
                    limits.scoring_timeout,
                )
                .map_err(|e| ConfigError::File(e.to_string()))?,
            ),
            None => None,
        };
        // Azure's AZUREML_MODEL_DIR, lowest of all; beside an entry script it is the
        // script's folder of pickles, not a repository.
        let model_repository = layer.model_repository.or_else(|| {
            entry_script
                .is_none()
                .then(|| std::env::var_os("AZUREML_MODEL_DIR"))
                .flatten()
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
        });
        if model_repository.is_none() && entry_script.is_none() {
            return Err(ConfigError::NoRepository);
        }
        let mut api_keys = layer.api_keys.unwrap_or_default();
        if api_keys.is_empty() && azure.auth_enabled != Some(false) {
            api_keys = azure.key_list();
        }
        api_keys.retain(|k| !k.trim().is_empty());
        if args.no_auth {
            api_keys.clear();
        } else if api_keys.is_empty() {
            check_auth_is_off(&azure, args.deployment_config.as_deref())?;
        }
        let config = ServeConfig {
            model_repository,
            entry_script,
            host: layer.host.unwrap_or_else(|| "0.0.0.0".into()),
            port: layer.port.unwrap_or(DEFAULT_PORT),
            backend: layer.backend.unwrap_or_default(),
            tensorrt_cache: layer.tensorrt_cache,
            ort_library: layer.ort_library,
            intra_op_threads: layer.intra_op_threads.unwrap_or(1),
            // deploymentconfig.json's limits are a layer of `layer` already.
            limits,
            api_keys,
            model_control: layer.model_control_mode.unwrap_or_default(),
            body_timeout: Duration::from_millis(
                layer
                    .body_timeout_ms
                    .unwrap_or(modelpod_http::body::DEFAULT_BODY_TIMEOUT.as_millis() as u64),
            ),
            cors_origins: layer
                .cors_origins
                .as_deref()
                .map(modelpod_http::cors::origins)
                .unwrap_or_default(),
            health_port: layer.health_port,
            grpc_port: match layer.grpc_port.as_deref().map(str::trim) {
                None => Some(DEFAULT_GRPC_PORT),
                Some("off") => None,
                Some(port) => Some(port.parse().map_err(|_| ConfigError::OutOfRange {
                    name: "grpc-port",
                    rule: "a port number or 'off'",
                    value: port.to_string(),
                })?),
            },
            default_model: layer.default_model,
            load_parallelism: layer.load_parallelism.unwrap_or(2),
            http_workers: layer
                .http_workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            strict_readiness: layer.strict_readiness.unwrap_or(true),
            log_format: layer.log_format.unwrap_or_default(),
            load_policy: layer.load_policy.unwrap_or_default(),
            memory_budget: memory_budget(
                layer.memory_budget.as_deref(),
                &layer.device_memory_budgets.unwrap_or_default(),
            )?,
            repository_poll: layer.repository_poll.map(Duration::from_secs),
            node: args.node,
            require_accelerator: args.require_accelerator,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let range = |name, ok: bool, rule, value: String| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange { name, rule, value })
            }
        };
        range(
            "max-concurrent-requests",
            self.limits.max_concurrent_requests >= 1,
            "at least 1",
            self.limits.max_concurrent_requests.to_string(),
        )?;
        range(
            "scoring-timeout-ms",
            !self.limits.scoring_timeout.is_zero(),
            "at least 1",
            "0".into(),
        )?;
        range(
            "intra-op-threads",
            self.intra_op_threads >= 1,
            "at least 1",
            self.intra_op_threads.to_string(),
        )?;
        range(
            "http-workers",
            self.http_workers >= 1,
            "at least 1",
            self.http_workers.to_string(),
        )?;
        range(
            "repository-poll",
            self.repository_poll.is_none_or(|p| !p.is_zero()),
            "at least 1 second",
            "0".into(),
        )?;
        range(
            "body-timeout-ms",
            !self.body_timeout.is_zero(),
            "at least 1",
            "0".into(),
        )?;
        range(
            "max-request-bytes",
            self.limits.max_request_bytes >= 1024,
            "at least 1024",
            self.limits.max_request_bytes.to_string(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_beat_files_and_files_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let azure = dir.path().join("deploymentconfig.json");
        std::fs::write(&azure, r#"{"computeType":"aks","scoringTimeoutMs":1234,"maxConcurrentRequestsPerContainer":7,"keys":{"primaryKey":"k1"}}"#).unwrap();
        let native = dir.path().join("modelpod.toml");
        std::fs::write(&native, "max_concurrent_requests = 9\nport = 6000\n").unwrap();
        let cli = Cli::parse_from([
            "x",
            "--model-repository",
            "/models",
            "--deployment-config",
            azure.to_str().unwrap(),
            "--config",
            native.to_str().unwrap(),
            "--port",
            "7000",
        ]);
        let config = ServeConfig::resolve(cli.serve).unwrap();
        assert_eq!(config.port, 7000, "flag over native file");
        assert_eq!(
            config.limits.max_concurrent_requests, 9,
            "native file over Azure file"
        );
        assert_eq!(
            config.limits.scoring_timeout,
            Duration::from_millis(1234),
            "Azure file over default"
        );
        assert_eq!(
            config.limits.max_queue_wait,
            Duration::from_millis(500),
            "Azure's default"
        );
        assert_eq!(config.api_keys, vec!["k1"]);
        assert_eq!(config.limits.max_request_bytes, 100 * 1024 * 1024);
    }

    #[test]
    // Jail's closure returns figment's own (large) error type; it is not ours to box.
    #[allow(clippy::result_large_err)]
    fn azures_variables_sit_below_every_file_and_flag() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SCORING_TIMEOUT_MS", "777");
            jail.set_env("AZUREML_MODEL_DIR", "/var/azureml-app/azureml-models");
            let config = ServeConfig::resolve(Cli::parse_from(["x"]).serve).unwrap();
            assert_eq!(config.limits.scoring_timeout, Duration::from_millis(777));
            assert_eq!(
                config.model_repository,
                Some(PathBuf::from("/var/azureml-app/azureml-models"))
            );
            jail.create_file("deploymentconfig.json", r#"{"scoringTimeoutMs": 1234}"#)?;
            jail.create_file("modelpod.toml", "api_keys = [\"from-file\"]\n")?;
            let cli = Cli::parse_from([
                "x",
                "--model-repository",
                "/flag",
                "--deployment-config",
                "deploymentconfig.json",
                "--config",
                "modelpod.toml",
            ]);
            let config = ServeConfig::resolve(cli.serve).unwrap();
            assert_eq!(config.limits.scoring_timeout, Duration::from_millis(1234));
            assert_eq!(config.model_repository, Some(PathBuf::from("/flag")));
            assert_eq!(config.api_keys, vec!["from-file"]);
            // Beside an entry script, AZUREML_MODEL_DIR is the script's folder, not a repository.
            jail.create_file("score.py", "def init(): pass\ndef run(data): return data\n")?;
            jail.create_file("inferenceconfig.json", r#"{"entryScript": "score.py"}"#)?;
            let cli = Cli::parse_from(["x", "--inference-config", "inferenceconfig.json"]);
            let config = ServeConfig::resolve(cli.serve).unwrap();
            assert_eq!(config.model_repository, None);
            let script = config.entry_script.expect("an entry script");
            assert_eq!(script.scoring_timeout, Duration::from_millis(777));
            assert_eq!(
                script.model_dir,
                PathBuf::from("/var/azureml-app/azureml-models")
            );
            Ok(())
        });
    }

    #[test]
    fn auth_the_azure_file_turns_on_needs_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let azure = dir.path().join("deploymentconfig.json");
        let resolve = |text: &str, extra: &[&str]| {
            std::fs::write(&azure, text).unwrap();
            let mut args = vec![
                "x",
                "--model-repository",
                "/m",
                "--deployment-config",
                azure.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            ServeConfig::resolve(Cli::parse_from(args).serve)
        };
        let error = resolve(r#"{"authEnabled": true}"#, &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("authEnabled") && error.contains("MODELPOD_API_KEYS"),
            "{error}"
        );
        let error = resolve(r#"{"tokenAuthEnabled": true}"#, &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("modelpod route"), "{error}");
        let config = resolve(r#"{"authEnabled": true}"#, &["--api-key", "k"]).unwrap();
        assert_eq!(config.api_keys, ["k"]);
        let config = resolve(r#"{"authEnabled": true, "keys": {"primaryKey": "p"}}"#, &[]).unwrap();
        assert_eq!(config.api_keys, ["p"]);
        let config = resolve(r#"{"tokenAuthEnabled": true}"#, &["--no-auth"]).unwrap();
        assert!(config.api_keys.is_empty());
        let config = resolve(
            r#"{"authEnabled": false, "keys": {"primaryKey": "p"}}"#,
            &[],
        )
        .unwrap();
        assert!(config.api_keys.is_empty());
        assert_eq!(
            config.model_control,
            ModelControl::None,
            "repository control is off by default"
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        let cli = Cli::parse_from([
            "x",
            "--model-repository",
            "/m",
            "--max-concurrent-requests",
            "0",
        ]);
        assert!(matches!(
            ServeConfig::resolve(cli.serve),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(Cli::try_parse_from(["x", "--backend", "gpu"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let native = dir.path().join("bad.toml");
        std::fs::write(&native, "prot = 1").unwrap();
        let cli = Cli::parse_from([
            "x",
            "--model-repository",
            "/m",
            "--config",
            native.to_str().unwrap(),
        ]);
        assert!(matches!(
            ServeConfig::resolve(cli.serve),
            Err(ConfigError::File(_))
        ));
    }
}

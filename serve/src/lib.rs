//! `modelpod serve`: the per-pod scoring server. Its HTTP routes (Azure ML v1 and the Open
//! Inference Protocol v2) are codecs around [`modelpod_scoring::Scorer`], which admits, loads,
//! queues and times out every request.

pub mod config;
pub mod entry_script;
mod extensions;
mod grpc;
mod inference;
pub mod memory;
mod metrics;
mod model_config;
pub(crate) mod routes;
mod swagger;

pub use config::{LoadPolicy, ModelControl, ServeArgs, ServeConfig};

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use modelpod_accel::node::NodeReport;
use modelpod_accel::{EngineChoice, EngineFamily, EngineOptions, ort_engine};
use modelpod_http::auth::KeyAuth;
use modelpod_scoring::{DeviceMemoryMeter, Registry, RegistryConfig, Scorer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Repository(#[from] modelpod_scoring::repository::RepositoryError),
    #[error("--backend ort: {0}")]
    OrtRequired(modelpod_accel::EngineError),
    #[error("--require-accelerator: {0}")]
    AcceleratorMissing(String),
    #[error("starting the entry-script service: {0}")]
    EntryScript(std::io::Error),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

/// What every handler shares.
pub struct AppState {
    pub scorer: Scorer,
    pub config: ServeConfig,
    pub auth: KeyAuth,
    pub metrics: PrometheusHandle,
    pub bodies: modelpod_http::body::BodyReader,
    /// The port of the probes-only listener (`--health-port`), once bound.
    pub probe_port: Option<u16>,
    /// The port of the gRPC listener once bound (its busy reports tell the router).
    pub grpc_port: std::sync::OnceLock<u16>,
    /// Registered system shared memory regions (Triton's extension, HTTP and gRPC alike).
    pub shared_memory: modelpod_scoring::shared_memory::SystemSharedMemory,
    /// The Azure entry script served beside the models (`--inference-config`).
    pub entry_script: Option<Arc<entry_script::EntryScriptService>>,
    /// The empty repository of a server that serves an entry script alone.
    _empty_repository: Option<tempfile::TempDir>,
}

impl AppState {
    pub fn registry(&self) -> &Arc<Registry> {
        self.scorer.registry()
    }
}

/// A bound scoring server; [`ScoringServer::run`] serves until stopped (SIGTERM, SIGINT or
/// its handle), then lets accepted requests finish.
pub struct ScoringServer {
    server: Server,
    address: SocketAddr,
    state: web::Data<AppState>,
    grpc: Option<grpc::GrpcServer>,
}

impl ScoringServer {
    /// Opens the repository, binds the listener and starts loading models in the background:
    /// liveness answers at once, readiness once loading is done. Must be called inside an
    /// actix system.
    pub fn build(config: ServeConfig) -> Result<ScoringServer, ServeError> {
        prepare_engines(&config)?;
        let node = check_node(&config)?;
        // Before anything records: metric handles taken earlier would count nowhere.
        let metrics = modelpod_http::metrics::install();
        let device_meter: Option<Arc<dyn DeviceMemoryMeter>> =
            (!node.cuda.devices.is_empty()).then(|| Arc::new(crate::memory::CudaMemoryMeter) as _);
        // Bound before the state is made, so the probes-only check knows its port (0 picks one).
        let probe_listener = match config.health_port {
            Some(port) => {
                let address = format!("{}:{port}", config.host);
                Some(
                    std::net::TcpListener::bind(&address)
                        .map_err(|source| ServeError::Bind { address, source })?,
                )
            }
            None => None,
        };
        let (repository, empty_repository) = match &config.model_repository {
            Some(path) => (path.clone(), None),
            None => {
                let empty = tempfile::tempdir().map_err(ServeError::EntryScript)?;
                (empty.path().to_path_buf(), Some(empty))
            }
        };
        let registry = Arc::new(Registry::open(RegistryConfig {
            repository,
            engine_choice: config.backend,
            engine: EngineOptions {
                intra_op_threads: config.intra_op_threads,
                strict_placement: false,
                tensorrt_cache: config.tensorrt_cache.clone(),
            },
            plan: node.plan,
            load_parallelism: config.load_parallelism,
            budget: with_device_defaults(config.memory_budget.clone(), &node.cuda.devices),
            meter: Some(Arc::new(crate::memory::JemallocMeter)),
            device_meter,
            concurrent_requests: Some(config.limits.max_concurrent_requests),
        })?);
        let entry_script = match config.entry_script.clone() {
            Some(script) => Some(Arc::new(
                entry_script::EntryScriptService::start(script, Some(registry.clone()))
                    .map_err(ServeError::EntryScript)?,
            )),
            None => None,
        };
        let scorer = Scorer::new(registry, config.limits, config.strict_readiness);
        if let Some(service) = &entry_script {
            scorer.add_service(service.clone());
        }
        let state = web::Data::new(AppState {
            scorer,
            entry_script,
            shared_memory: Default::default(),
            _empty_repository: empty_repository,
            auth: KeyAuth::new(&config.api_keys),
            metrics,
            bodies: modelpod_http::body::BodyReader::new(
                config.body_timeout,
                modelpod_http::body::DEFAULT_BODY_BUDGET,
            ),
            config: config.clone(),
            probe_port: probe_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.port()),
            grpc_port: std::sync::OnceLock::new(),
        });
        if let Some(service) = &state.entry_script {
            // Weak: the service lives in the state it tells.
            let weak = Arc::downgrade(&state.clone().into_inner());
            service.on_change(move || {
                if let Some(state) = weak.upgrade() {
                    state.scorer.busy().touch();
                }
            });
        }
        let app_state = state.clone();
        let address = format!("{}:{}", config.host, config.port);
        let cors_origins = config.cors_origins.clone();
        let mut http = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .wrap(actix_web::middleware::from_fn(routes::require_key))
                // gzip or deflate answers to clients that ask (Accept-Encoding), as Triton's
                // HTTP front end gives them.
                .wrap(actix_web::middleware::Compress::default())
                .wrap(actix_web::middleware::from_fn(
                    modelpod_http::request_id::request_ids,
                ))
                // Outermost: a browser's preflight carries no key and is answered here.
                .wrap(modelpod_http::cors::middleware(&cors_origins))
                .configure(routes::configure)
        })
        .workers(config.http_workers)
        // Accepted requests get up to their scoring timeout to finish after SIGTERM.
        .shutdown_timeout(config.limits.scoring_timeout.as_secs().clamp(1, 300))
        .bind(&address)
        .map_err(|source| ServeError::Bind {
            address: address.clone(),
            source,
        })?;
        let address = *http.addrs().first().expect("bound to at least one address");
        if let Some(listener) = probe_listener {
            let probes = listener.local_addr().ok();
            http = http.listen(listener).map_err(|source| ServeError::Bind {
                address: format!("{probes:?}"),
                source,
            })?;
            if let Some(probes) = probes {
                tracing::info!("health probes also on http://{probes}");
            }
        }
        let server = http.run();
        let grpc = match config.grpc_port {
            Some(port) => {
                let address = format!("{}:{port}", config.host);
                let listener =
                    std::net::TcpListener::bind(&address).map_err(|source| ServeError::Bind {
                        address: address.clone(),
                        source,
                    })?;
                let grpc = grpc::GrpcServer::start(
                    state.clone().into_inner(),
                    listener,
                    config.http_workers,
                )
                .map_err(|source| ServeError::Bind { address, source })?;
                tracing::info!("v2 gRPC on {}", grpc.address);
                let _ = state.grpc_port.set(grpc.address.port());
                Some(grpc)
            }
            None => None,
        };
        let loader_state = state.clone();
        std::thread::Builder::new()
            .name("model-loader".into())
            .spawn(move || {
                if loader_state.config.load_policy == LoadPolicy::Eager {
                    loader_state.registry().load_all();
                }
                loader_state.scorer.finish_start_up();
                let index = loader_state.registry().index();
                let ready = index
                    .iter()
                    .filter(|e| e.state == modelpod_scoring::ModelState::Ready)
                    .count();
                tracing::info!(ready, total = index.len(), "start-up loading finished");
                if let Some(reason) = loader_state.scorer.unready_reason() {
                    tracing::warn!("not ready: {reason}");
                }
            })
            .expect("spawning the loader thread");
        if let Some(period) = config.repository_poll {
            // Weak: the poller ends with the server.
            let registry = Arc::downgrade(state.registry());
            let eager = config.load_policy == LoadPolicy::Eager;
            std::thread::Builder::new()
                .name("repository-poll".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(period);
                        let Some(registry) = registry.upgrade() else {
                            return;
                        };
                        if let Err(e) = registry.poll_repository(eager) {
                            tracing::warn!(error = %e, "repository poll failed");
                        }
                    }
                })
                .expect("spawning the repository poller");
        }
        if config.model_control == ModelControl::Explicit && !state.auth.enabled() {
            tracing::warn!(
                "repository control is on and no key is set: anyone who can reach {address} can load and unload models"
            );
        }
        tracing::info!(
            repository = %config.model_repository.as_deref().map_or("(none)".into(), |p| p.display().to_string()),
            load_policy = ?config.load_policy,
            memory_budget = ?config.memory_budget.limit(modelpod_scoring::memory::HOST),
            max_concurrent_requests = config.limits.max_concurrent_requests,
            auth = state.auth.enabled(),
            "listening on http://{address}"
        );
        Ok(ScoringServer {
            server,
            address,
            state,
            grpc,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The gRPC listener's address, unless gRPC is off.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|g| g.address)
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry().clone()
    }

    /// Serves until stopped, then drains every model's queue.
    pub async fn run(mut self) -> std::io::Result<()> {
        let result = self.server.await;
        if let Some(mut grpc) = self.grpc.take() {
            let _ = tokio::task::spawn_blocking(move || grpc.stop()).await;
        }
        let registry = self.state.registry().clone();
        let _ = tokio::task::spawn_blocking(move || registry.shutdown()).await;
        tracing::info!("stopped");
        result
    }
}

/// Loads ONNX Runtime up front so `--ort-library` wins over the default locations and a
/// demanded but missing library fails at start, not on the first model.
fn prepare_engines(config: &ServeConfig) -> Result<(), ServeError> {
    match (
        ort_engine::init_ort(config.ort_library.as_deref()),
        config.backend,
    ) {
        (Ok(library), _) => tracing::debug!(library = %library.display(), "ONNX Runtime available"),
        (Err(e), EngineChoice::Ort) => return Err(ServeError::OrtRequired(e)),
        (Err(e), EngineChoice::Exactly(engine)) if engine.family() == EngineFamily::Ort => {
            return Err(ServeError::OrtRequired(e));
        }
        // The plan drops ONNX Runtime's engines and says why at WARN (check_node).
        (Err(_), EngineChoice::Auto | EngineChoice::Tract | EngineChoice::Exactly(_)) => {}
    }
    Ok(())
}

/// Share of a GPU's memory its models may hold when `--device-memory-budget` names no limit
/// for it: the rest is the CUDA context, cuDNN/cuBLAS workspaces and the engines' arenas.
pub const DEFAULT_DEVICE_MEMORY_SHARE: f64 = 0.9;

/// The budget with a limit for every CUDA device the probe found and the flags left out:
/// [`DEFAULT_DEVICE_MEMORY_SHARE`] of the memory the driver reports.
fn with_device_defaults(
    mut budget: modelpod_scoring::MemoryBudget,
    devices: &[modelpod_accel::probe::CudaDevice],
) -> modelpod_scoring::MemoryBudget {
    for device in devices {
        let ledger = modelpod_accel::Device::Cuda(device.ordinal).memory_ledger();
        if budget.limit(&ledger).is_none() {
            let limit = (device.memory_bytes as f64 * DEFAULT_DEVICE_MEMORY_SHARE) as u64;
            budget = budget.with_limit(&ledger, limit);
        }
    }
    budget
}

/// Logs what the node is and what was found on it; a promised accelerator that is missing is
/// a warning, or fatal with `--require-accelerator`. Returns the report, whose plan the
/// registry loads models by.
fn check_node(config: &ServeConfig) -> Result<NodeReport, ServeError> {
    let report = NodeReport::gather(
        &config.node,
        config.require_accelerator,
        config.ort_library.as_deref(),
    );
    tracing::info!(
        vm_size = report.node.vm_size.as_deref().unwrap_or("unknown"),
        source = ?report.node.source,
        cuda_devices = report.cuda.devices.len(),
        fpga_devices = report.xilinx.devices.len(),
        engines = %report.plan.describe(),
        "node"
    );
    for note in &report.plan.notes {
        tracing::warn!("{note}");
    }
    // A source that was given but gave nothing (an unreadable labels file, an unreachable
    // metadata service) would otherwise pass unseen.
    for note in &report.node.notes {
        tracing::warn!("node VM size: {note}");
    }
    match &report.plan.mismatch {
        Some(mismatch) if config.require_accelerator => {
            Err(ServeError::AcceleratorMissing(mismatch.clone()))
        }
        Some(mismatch) => {
            tracing::warn!("{mismatch}; serving with the engines found");
            Ok(report)
        }
        None => Ok(report),
    }
}

/// A server running on its own thread and actix system, for tests, benchmarks and embedding.
pub struct RunningServer {
    pub address: SocketAddr,
    /// The gRPC listener, unless gRPC is off.
    pub grpc_address: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    state: web::Data<AppState>,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// Builds and runs a server on a new thread; returns once it listens.
    pub fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("modelpod-serve".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    match ScoringServer::build(config) {
                        Ok(server) => {
                            let _ = sender.send(Ok((
                                server.local_addr(),
                                server.grpc_addr(),
                                server.state.clone(),
                                server.handle(),
                            )));
                            server.run().await
                        }
                        Err(e) => {
                            let _ = sender.send(Err(e));
                            Ok(())
                        }
                    }
                })
            })
            .expect("spawning the server thread");
        let (address, grpc_address, state, handle) =
            receiver.recv().expect("the server thread reports")?;
        Ok(RunningServer {
            address,
            grpc_address,
            registry: state.registry().clone(),
            state,
            handle,
            thread: Some(thread),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The probes-only listener's port (`--health-port`), when there is one.
    pub fn probe_port(&self) -> Option<u16> {
        self.state.probe_port
    }

    /// Waits until start-up loading has finished (or `timeout` passes).
    pub fn wait_loaded(&self, timeout: Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < until {
            if self.state.scorer.started_up() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Graceful stop: no new connections, accepted requests finish.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(thread) = self.thread.take() {
            let handle = self.handle.clone();
            std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(true)))
                .join()
                .ok();
            let _ = thread.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelpod_accel::probe::CudaDevice;

    #[test]
    fn gpus_without_a_given_budget_get_most_of_their_memory() {
        let gpu = |ordinal| CudaDevice {
            ordinal,
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: 80 << 30,
            compute_capability: (9, 0),
        };
        let given = modelpod_scoring::MemoryBudget::unlimited().with_limit("cuda:1", 20 << 30);
        let budget = with_device_defaults(given, &[gpu(0), gpu(1)]);
        assert_eq!(budget.limit("cuda:0"), Some(72 << 30));
        assert_eq!(
            budget.limit("cuda:1"),
            Some(20 << 30),
            "a given limit stays"
        );
        assert_eq!(budget.limit("host"), None);
    }
}

//! Entry-script services: an Azure `score.py` run unmodified in a pool of Python worker
//! processes, behind the same front end as the ONNX models (auth, admission, deadlines,
//! metrics, logs). Each worker imports the script and calls init() once, then serves one
//! request at a time over its Unix socket ([`protocol`]); a worker that crashes or overruns
//! its deadline fails only its own request and is restarted with backoff.

pub mod http;
pub mod protocol;
pub mod settings;
mod worker;

pub use settings::{EntryScriptArgs, EntryScriptConfig};
pub use worker::Reply;

use parking_lot::{Mutex, RwLock};
use protocol::SwaggerDocuments;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use worker::Connection;

/// The embedded worker; written to the service's runtime directory at start.
const WORKER_SCRIPT: &str = include_str!("../../python/entry_worker.py");

/// Restart delays after a worker fails: doubling from the first to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const LAST_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that served this long before exiting restarts without delay.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often the workers' memory is measured for the registry's budget and /metrics.
const MEMORY_PERIOD: Duration = Duration::from_secs(2);

/// One request for the script, owned: it crosses to the service's runtime.
#[derive(Debug, Clone)]
pub struct ScriptRequest {
    pub id: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub host: String,
    pub port: u16,
    pub scheme: String,
    pub peer: String,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// No worker became free within maxQueueWaitMs: 503.
    #[error("{0}")]
    Busy(String),
    /// No worker is running (starting, or failing to start): 503.
    #[error("{0}")]
    Unavailable(String),
    /// The call ran past the scoring timeout; its worker was killed: 504.
    #[error("{0}")]
    Timeout(String),
    /// The worker died during the call: 502.
    #[error("{0}")]
    Crashed(String),
}

#[derive(Debug, Clone)]
enum WorkerState {
    /// Importing the script and running init(), after the failure named, if any.
    Starting {
        after: Option<String>,
    },
    Ready {
        pid: u32,
    },
    Restarting {
        reason: String,
        at: Instant,
    },
}

struct Shared {
    config: EntryScriptConfig,
    runtime_dir: tempfile::TempDir,
    /// Idle connections; `available` holds one permit for each.
    idle: Mutex<Vec<Connection>>,
    available: Semaphore,
    states: Mutex<Vec<WorkerState>>,
    swagger: RwLock<Option<SwaggerDocuments>>,
    stopping: AtomicBool,
    /// Called when readiness may have changed (the router's busy poll is told).
    on_change: RwLock<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Whose memory budget the workers' RSS counts against.
    registry: Option<Arc<modelpod_scoring::Registry>>,
}

impl Shared {
    fn set_state(&self, slot: usize, state: WorkerState) {
        let ready = {
            let mut states = self.states.lock();
            states[slot] = state;
            states
                .iter()
                .filter(|s| matches!(s, WorkerState::Ready { .. }))
                .count()
        };
        metrics::gauge!("modelpod_entry_script_workers_ready", "service" => self.config.name.clone())
            .set(ready as f64);
        if let Some(notify) = self.on_change.read().as_ref() {
            notify();
        }
    }

    /// Gives up on a worker whose call failed: it is killed, and unready at once (not only
    /// once its supervisor has seen it exit).
    fn lose(&self, connection: Connection, reason: &str) {
        connection.kill();
        self.set_state(
            connection.slot,
            WorkerState::Starting {
                after: Some(reason.to_string()),
            },
        );
    }

    fn check_in(&self, connection: Connection) {
        self.idle.lock().push(connection);
        self.available.add_permits(1);
    }

    /// The next idle, live connection, waiting until `deadline` for one.
    async fn check_out(&self, deadline: Instant) -> Result<Connection, ScriptError> {
        loop {
            let waited = tokio::time::timeout_at(deadline.into(), self.available.acquire()).await;
            match waited {
                Ok(Ok(permit)) => permit.forget(),
                Ok(Err(_)) => {
                    return Err(ScriptError::Unavailable("the service is stopping".into()));
                }
                Err(_) => {
                    return Err(match self.unready_reason() {
                        Some(reason) => ScriptError::Unavailable(reason),
                        None => ScriptError::Busy(format!(
                            "all {} scoring workers of '{}' stayed busy for maxQueueWaitMs; retry later",
                            self.config.workers, self.config.name
                        )),
                    });
                }
            }
            let connection = self
                .idle
                .lock()
                .pop()
                .expect("a permit stands for an idle worker");
            if connection.is_alive() {
                return Ok(connection);
            }
        }
    }

    fn unready_reason(&self) -> Option<String> {
        let states = self.states.lock();
        if states
            .iter()
            .any(|s| matches!(s, WorkerState::Ready { .. }))
        {
            return None;
        }
        let name = &self.config.name;
        // The first failure found says most; a worker merely starting says least.
        let failed = states.iter().find_map(|s| match s {
            WorkerState::Restarting { reason, at } => Some(format!(
                "{reason}; restarting in {:.1} s",
                at.saturating_duration_since(Instant::now()).as_secs_f64()
            )),
            WorkerState::Starting {
                after: Some(reason),
            } => Some(format!("{reason}; restarting now")),
            _ => None,
        });
        Some(match failed {
            Some(reason) => format!("entry script '{name}': {reason}"),
            None => format!("entry script '{name}': starting its workers (import and init())"),
        })
    }
}

/// A running entry-script service. Its workers, readers and calls run on a runtime of its
/// own, so they outlive no HTTP worker and block none.
pub struct EntryScriptService {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EntryScriptService {
    /// Starts the workers in the background; readiness says when one can serve. The workers'
    /// memory counts against `registry`'s budget.
    pub fn start(
        config: EntryScriptConfig,
        registry: Option<Arc<modelpod_scoring::Registry>>,
    ) -> std::io::Result<EntryScriptService> {
        let runtime_dir = tempfile::Builder::new()
            .prefix("modelpod-entry-")
            .tempdir()?;
        let worker_script = runtime_dir.path().join("entry_worker.py");
        std::fs::write(&worker_script, WORKER_SCRIPT)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("entry-script")
            .enable_all()
            .build()?;
        let workers = config.workers;
        for note in &config.notes {
            tracing::warn!(file = %config.inference_config.display(), "{note}");
        }
        tracing::info!(
            service = %config.name,
            script = %config.entry_script_path().display(),
            python = %config.python.display(),
            model_dir = %config.model_dir.display(),
            workers,
            "starting entry-script workers"
        );
        let shared = Arc::new(Shared {
            states: Mutex::new(vec![WorkerState::Starting { after: None }; workers]),
            config,
            runtime_dir,
            idle: Mutex::new(Vec::new()),
            available: Semaphore::new(0),
            swagger: RwLock::new(None),
            stopping: AtomicBool::new(false),
            on_change: RwLock::new(None),
            registry,
        });
        for slot in 0..workers {
            runtime.spawn(supervise(shared.clone(), slot, worker_script.clone()));
        }
        runtime.spawn(measure_memory(Arc::downgrade(&shared)));
        Ok(EntryScriptService {
            shared,
            runtime: Some(runtime),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Called whenever readiness may have changed.
    pub fn on_change(&self, notify: impl Fn() + Send + Sync + 'static) {
        *self.shared.on_change.write() = Some(Box::new(notify));
    }

    pub fn unready_reason(&self) -> Option<String> {
        self.shared.unready_reason()
    }

    /// The script's swagger documents, once a worker has started.
    pub fn swagger(&self) -> Option<SwaggerDocuments> {
        self.shared.swagger.read().clone()
    }

    /// Runs one request on the next free worker: waits for one until `queue_deadline`, then
    /// gives it `run_timeout` to answer before killing it. Runs on the caller's task (one
    /// thread hop fewer than a task of its own); a caller dropped mid-call leaves the worker
    /// to [`InFlight`], which waits for its answer and returns it to the pool.
    pub async fn call(
        &self,
        request: ScriptRequest,
        queue_deadline: Instant,
        run_timeout: Duration,
    ) -> Result<Reply, ScriptError> {
        let connection = self.shared.check_out(queue_deadline).await?;
        let mut in_flight = self.in_flight(connection, run_timeout);
        let meta = protocol::CallMeta {
            seq: 0,
            id: &request.id,
            method: &request.method,
            path: &request.path,
            query: &request.query,
            headers: request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            host: &request.host,
            port: request.port,
            scheme: &request.scheme,
            peer: request.peer.clone(),
        };
        let answer =
            tokio::time::timeout(run_timeout, in_flight.connection().call(meta, request.body))
                .await;
        let connection = in_flight.done();
        match answer {
            Ok(Ok(reply)) => {
                self.shared.check_in(connection);
                Ok(reply)
            }
            Ok(Err(e)) => {
                let message =
                    format!("{e}; it is being restarted (see the server log for its last output)");
                self.shared.lose(connection, &message);
                Err(ScriptError::Crashed(message))
            }
            Err(_) => {
                let message = format!(
                    "Scoring timeout: run() did not return within {} ms; its worker (pid {}) was stopped and is being restarted",
                    run_timeout.as_millis(),
                    connection.pid
                );
                self.shared.lose(connection, &message);
                Err(ScriptError::Timeout(message))
            }
        }
    }

    /// One channel round trip on a free worker, without the script: the hop's own cost.
    pub async fn echo(&self, payload: Vec<u8>, deadline: Instant) -> Result<Vec<u8>, ScriptError> {
        let connection = self.shared.check_out(deadline).await?;
        let mut in_flight = self.in_flight(connection, Duration::from_secs(10));
        let answer = in_flight.connection().echo(payload).await;
        let connection = in_flight.done();
        match answer {
            Ok(payload) => {
                self.shared.check_in(connection);
                Ok(payload)
            }
            Err(e) => {
                let message = e.to_string();
                self.shared.lose(connection, &message);
                Err(ScriptError::Crashed(message))
            }
        }
    }

    fn in_flight(&self, connection: Connection, run_timeout: Duration) -> InFlight {
        InFlight {
            shared: self.shared.clone(),
            runtime: self
                .runtime
                .as_ref()
                .expect("running until dropped")
                .handle()
                .clone(),
            connection: Some(connection),
            deadline: Instant::now() + run_timeout,
        }
    }
}

/// A checked-out worker while a call is on it. Dropped before [`InFlight::done`] (the
/// caller's client hung up), it hands the worker to the service's runtime, which waits for
/// the answer in flight and returns the worker, or kills it if the call cannot finish.
struct InFlight {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    connection: Option<Connection>,
    deadline: Instant,
}

impl InFlight {
    fn connection(&mut self) -> &mut Connection {
        self.connection.as_mut().expect("until done")
    }

    fn done(mut self) -> Connection {
        self.connection.take().expect("done once")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let shared = self.shared.clone();
        let deadline = self.deadline;
        self.runtime.spawn(async move {
            match tokio::time::timeout_at(deadline.into(), connection.finish()).await {
                Ok(true) => shared.check_in(connection),
                _ => shared.lose(connection, "a call whose client went away did not finish"),
            }
        });
    }
}

impl modelpod_scoring::scorer::ServiceReadiness for EntryScriptService {
    fn unready_reason(&self) -> Option<String> {
        self.shared.unready_reason()
    }
}

impl Drop for EntryScriptService {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.available.close();
        // Dropping the tasks drops their children, which are killed (kill_on_drop).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Keeps worker `slot` running: start, serve until it exits, wait out the backoff, again.
async fn supervise(shared: Arc<Shared>, slot: usize, worker_script: std::path::PathBuf) {
    let mut backoff = FIRST_BACKOFF;
    let service = shared.config.name.clone();
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let started = Instant::now();
        let swagger_target = shared.clone();
        let outcome = worker::start(
            &shared.config,
            shared.runtime_dir.path(),
            &worker_script,
            slot,
            |ready| {
                *swagger_target.swagger.write() = Some(ready.swagger.clone());
            },
        )
        .await;
        let reason = match outcome {
            Ok(running) => {
                let pid = running.connection.pid;
                tracing::info!(service, slot, pid, elapsed = ?started.elapsed(), "entry-script worker ready");
                shared.set_state(slot, WorkerState::Ready { pid });
                let serving = Instant::now();
                let (connection, exit) = running.split();
                shared.check_in(connection);
                let ended = exit.wait().await;
                if serving.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                format!("worker {slot} (pid {pid}) exited: {ended}")
            }
            Err(e) => e.to_string(),
        };
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        metrics::counter!("modelpod_entry_script_worker_restarts_total", "service" => service.clone())
            .increment(1);
        tracing::error!(service, slot, "{reason}; restarting in {backoff:?}");
        shared.set_state(
            slot,
            WorkerState::Restarting {
                reason,
                at: Instant::now() + backoff,
            },
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LAST_BACKOFF);
        let after = match &shared.states.lock()[slot] {
            WorkerState::Restarting { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        shared.set_state(slot, WorkerState::Starting { after });
    }
}

fn worker_memory(shared: &Shared) -> u64 {
    shared
        .states
        .lock()
        .iter()
        .filter_map(|s| match s {
            WorkerState::Ready { pid } => worker::rss_bytes(*pid),
            _ => None,
        })
        .sum()
}

/// Publishes the workers' RSS, until the service is gone.
async fn measure_memory(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(service) = shared.upgrade() else {
            return;
        };
        let bytes = worker_memory(&service);
        metrics::gauge!("modelpod_entry_script_memory_bytes", "service" => service.config.name.clone())
            .set(bytes as f64);
        if let Some(registry) = &service.registry {
            registry.set_outside_memory(&format!("entry-script:{}", service.config.name), bytes);
        }
        drop(service);
        tokio::time::sleep(MEMORY_PERIOD).await;
    }
}

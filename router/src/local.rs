//! The local scaler: replicas are `modelpod serve` child processes on free loopback ports,
//! accepting only the router's key. Crashed replicas are restarted, with exponential backoff
//! for one that keeps failing; removed ones are stopped with SIGTERM (they drain), then killed
//! if they outlast their grace period. This is the default, so `modelpod route` on a
//! laptop is a whole autoscaled service.

use super::{ScaleError, Scaler};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How each replica is started.
#[derive(Debug, Clone)]
pub struct LocalReplicaSpec {
    /// The `modelpod` executable (this one, normally).
    pub program: PathBuf,
    /// Arguments after `serve`; `--host 127.0.0.1 --port N` are added.
    pub serve_args: Vec<String>,
    /// How long a stopped replica may take to drain before it is killed.
    pub stop_grace: Duration,
    /// The one bearer key the replica accepts (given in its environment, not its arguments,
    /// which any local user can list).
    pub api_key: String,
    /// The deployment's name, for metrics and logs.
    pub deployment: String,
    /// Replicas listen for gRPC on a free port they report (the router forwards gRPC);
    /// otherwise they hold no gRPC port.
    pub grpc: bool,
}

/// The first restart delay of a replica that exits; doubled on each exit that follows too soon.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(200);
/// The longest a crashing replica waits before it is started again.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A replica that ran this long before exiting was healthy: its next restart is immediate again.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The delay before restarting a replica after `failures` exits in a row that each came
/// sooner than [`STABLE_RUN`] after its start.
pub fn restart_delay(failures: u32) -> Duration {
    FIRST_RESTART_DELAY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_RESTART_DELAY)
}

struct LocalReplica {
    port: u16,
    /// `None` while it waits out its restart delay.
    child: Option<Child>,
    started: Instant,
    /// Exits in a row, each soon after its start.
    failures: u32,
    restarts: u64,
    restart_at: Option<Instant>,
}

pub struct LocalScaler {
    spec: LocalReplicaSpec,
    replicas: Arc<Mutex<Vec<LocalReplica>>>,
    endpoints: watch::Sender<Vec<String>>,
}

impl LocalScaler {
    /// Starts the supervisor that restarts replicas that exit on their own. Must be called
    /// inside a tokio runtime.
    pub fn new(spec: LocalReplicaSpec) -> Arc<LocalScaler> {
        let (endpoints, _) = watch::channel(Vec::new());
        let scaler = Arc::new(LocalScaler {
            spec,
            replicas: Arc::new(Mutex::new(Vec::new())),
            endpoints,
        });
        let weak = Arc::downgrade(&scaler);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(scaler) = weak.upgrade() else { return };
                scaler.restart_exited();
            }
        });
        scaler
    }

    fn spawn(&self, port: u16) -> Result<Child, ScaleError> {
        let mut command = Command::new(&self.spec.program);
        command
            .arg("serve")
            .args(&self.spec.serve_args)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--grpc-port", if self.spec.grpc { "0" } else { "off" }])
            .env("MODELPOD_API_KEYS", &self.spec.api_key)
            // What the replica's repository control answers, it answers only the router.
            .env("MODELPOD_MODEL_CONTROL_MODE", "none")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // A router killed outright (SIGKILL, the OOM killer) runs no destructor; the kernel
        // then sends its replicas SIGTERM so none outlives it holding a port and memory. The
        // signal follows the thread that spawned the child: replicas are spawned from the
        // router's main runtime, whose thread lives as long as the process.
        // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls
        // are allowed; it makes one prctl system call and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().map_err(|e| {
            ScaleError(format!(
                "starting {} serve: {e}",
                self.spec.program.display()
            ))
        })?;
        tracing::info!(port, pid = child.id(), "replica started");
        Ok(child)
    }

    fn start(&self) -> Result<LocalReplica, ScaleError> {
        let port = free_port()?;
        Ok(LocalReplica {
            port,
            child: Some(self.spawn(port)?),
            started: Instant::now(),
            failures: 0,
            restarts: 0,
            restart_at: None,
        })
    }

    fn publish(&self, replicas: &[LocalReplica]) {
        let urls = replicas
            .iter()
            .map(|r| format!("http://127.0.0.1:{}", r.port))
            .collect();
        self.endpoints.send_replace(urls);
    }

    /// A replica that exited without being asked to is started again on its port: at once if
    /// it had run a while, else after a delay that doubles with each quick exit in a row.
    fn restart_exited(&self) {
        let mut replicas = self.replicas.lock();
        let now = Instant::now();
        for replica in replicas.iter_mut() {
            if let Some(child) = &mut replica.child
                && let Ok(Some(status)) = child.try_wait()
            {
                replica.child = None;
                replica.failures = if replica.started.elapsed() < STABLE_RUN {
                    replica.failures + 1
                } else {
                    1
                };
                let delay = restart_delay(replica.failures);
                replica.restart_at = Some(now + delay);
                tracing::warn!(port = replica.port, %status, failures = replica.failures, delay_ms = delay.as_millis() as u64, "replica exited; restarting it after a delay");
            }
            if replica.child.is_none() && replica.restart_at.is_some_and(|at| at <= now) {
                replica.restart_at = None;
                replica.restarts += 1;
                metrics::counter!("modelpod_router_replica_restarts_total", "deployment" => self.spec.deployment.clone())
                    .increment(1);
                match self.spawn(replica.port) {
                    Ok(child) => {
                        replica.child = Some(child);
                        replica.started = Instant::now();
                    }
                    Err(e) => {
                        replica.failures += 1;
                        replica.restart_at = Some(now + restart_delay(replica.failures));
                        tracing::error!(port = replica.port, %e, "restart failed");
                    }
                }
            }
        }
    }

    /// Asks a replica to drain and stop (SIGTERM), and kills it if it outlasts the grace
    /// period; resolves once it has exited.
    async fn stop(replica: LocalReplica, grace: Duration) {
        let Some(mut child) = replica.child else {
            return;
        };
        terminate(&child);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(
                port = replica.port,
                "replica did not stop in time; killing it"
            );
            let _ = child.kill().await;
        }
        tracing::info!(port = replica.port, "replica stopped");
    }
}

/// SIGTERM: the child drains accepted requests and exits. Its pid cannot have been reused,
/// since the child is not reaped before it is awaited.
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// A free loopback port (the kernel's pick, released for the child to bind).
fn free_port() -> Result<u16, ScaleError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ScaleError(format!("no free loopback port: {e}")))
}

impl Scaler for LocalScaler {
    fn name(&self) -> &'static str {
        "local"
    }

    fn scale(&self, replicas: u32) -> BoxFuture<'_, Result<(), ScaleError>> {
        Box::pin(async move {
            let stopped = {
                let mut running = self.replicas.lock();
                while running.len() < replicas as usize {
                    let replica = self.start()?;
                    running.push(replica);
                }
                // The newest go first.
                let stopped: Vec<LocalReplica> = running.drain(replicas as usize..).collect();
                self.publish(&running);
                stopped
            };
            for replica in stopped {
                tokio::spawn(Self::stop(replica, self.spec.stop_grace));
            }
            Ok(())
        })
    }

    fn endpoints(&self) -> watch::Receiver<Vec<String>> {
        self.endpoints.subscribe()
    }

    fn status(&self) -> serde_json::Value {
        let replicas = self.replicas.lock();
        let now = Instant::now();
        serde_json::Value::Array(
            replicas
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "url": format!("http://127.0.0.1:{}", r.port),
                        "running": r.child.is_some(),
                        "restarts": r.restarts,
                        "failures_in_a_row": r.failures,
                        "restart_in_s": r.restart_at.map(|at| at.saturating_duration_since(now).as_secs_f64()),
                    })
                })
                .collect(),
        )
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let stopped: Vec<LocalReplica> = self.replicas.lock().drain(..).collect();
            self.publish(&[]);
            let grace = self.spec.stop_grace;
            futures_util::future::join_all(stopped.into_iter().map(|r| Self::stop(r, grace))).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_exponentially_to_a_cap() {
        let delays: Vec<u64> = (1..=10)
            .map(|n| restart_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(restart_delay(u32::MAX), MAX_RESTART_DELAY);
        // 48 restarts in 10 s before: now at most 5 in the first 10 s (0.2+0.4+0.8+1.6+3.2).
        let mut elapsed = Duration::ZERO;
        let mut starts = 0;
        while elapsed < Duration::from_secs(10) {
            starts += 1;
            elapsed += restart_delay(starts);
        }
        assert!(starts <= 6, "{starts}");
    }
}

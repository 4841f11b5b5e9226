//! The local scaler: replicas are `modelpod serve` child processes on free loopback ports.
//! Crashed replicas are restarted; removed ones are stopped with SIGTERM (they drain), then
//! killed if they outlast their grace period. This is the default, so `modelpod route` on a
//! laptop is a whole autoscaled service.

use super::{ScaleError, Scaler};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
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
}

struct LocalReplica {
    port: u16,
    child: Child,
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

    fn spawn(&self, port: u16) -> Result<LocalReplica, ScaleError> {
        let mut command = Command::new(&self.spec.program);
        command
            .arg("serve")
            .args(&self.spec.serve_args)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
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
        Ok(LocalReplica { port, child })
    }

    fn publish(&self, replicas: &[LocalReplica]) {
        let urls = replicas
            .iter()
            .map(|r| format!("http://127.0.0.1:{}", r.port))
            .collect();
        self.endpoints.send_replace(urls);
    }

    /// A replica that exited without being asked to is started again on its port.
    fn restart_exited(&self) {
        let mut replicas = self.replicas.lock();
        for replica in replicas.iter_mut() {
            if let Ok(Some(status)) = replica.child.try_wait() {
                tracing::warn!(port = replica.port, %status, "replica exited; restarting it");
                match self.spawn(replica.port) {
                    Ok(fresh) => *replica = fresh,
                    Err(e) => tracing::error!(port = replica.port, %e, "restart failed"),
                }
            }
        }
    }

    /// Asks a replica to drain and stop (SIGTERM), and kills it if it outlasts the grace
    /// period; resolves once it has exited.
    async fn stop(mut replica: LocalReplica, grace: Duration) {
        terminate(&replica.child);
        if tokio::time::timeout(grace, replica.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                port = replica.port,
                "replica did not stop in time; killing it"
            );
            let _ = replica.child.kill().await;
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
                    let replica = self.spawn(free_port()?)?;
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

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let stopped: Vec<LocalReplica> = self.replicas.lock().drain(..).collect();
            self.publish(&[]);
            let grace = self.spec.stop_grace;
            futures_util::future::join_all(stopped.into_iter().map(|r| Self::stop(r, grace))).await;
        })
    }
}

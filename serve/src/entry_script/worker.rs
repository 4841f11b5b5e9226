//! One entry-script worker process: started with the user's Python on the embedded worker
//! script, connected over its own Unix socket, watched until it exits.

use super::protocol::{FatalMeta, Frame, FrameKind, LogMeta, ReadyMeta, ResponseMeta};
use super::settings::EntryScriptConfig;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixListener;
use tokio::net::unix::OwnedWriteHalf;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// An answer from the worker: status, headers and body as Azure's server would send them.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a worker sends back on its socket, other than log lines.
#[derive(Debug)]
pub enum Answer {
    Reply(ResponseMeta, Vec<u8>),
    Echo(Vec<u8>),
}

/// A started worker, ready for one call at a time. Dropping it does not stop the process;
/// [`Connection::kill`] does, and the supervisor restarts it.
pub struct Connection {
    pub slot: usize,
    pub pid: u32,
    writer: OwnedWriteHalf,
    answers: mpsc::Receiver<Answer>,
    kill: mpsc::Sender<()>,
    next_seq: u64,
    state: CallState,
}

/// Where the connection is in a call, so one abandoned midway can be finished or given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Idle,
    /// A frame is being written: if abandoned here the stream is cut mid-frame.
    Sending,
    /// The frame is sent; one answer is due.
    Awaiting,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The worker's socket closed while the call was in flight: it exited or crashed.
    #[error("the scoring worker (pid {pid}) exited while running this request")]
    Exited { pid: u32 },
    #[error("the scoring worker (pid {pid}) answered nonsense: {reason}")]
    Protocol { pid: u32, reason: String },
}

impl Connection {
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Sends one request and waits for its answer (the caller bounds the wait).
    pub async fn call(
        &mut self,
        meta: super::protocol::CallMeta<'_>,
        body: Vec<u8>,
    ) -> Result<Reply, CallError> {
        let seq = self.next_seq();
        let meta = super::protocol::CallMeta { seq, ..meta };
        let frame = Frame::new(FrameKind::Call, &meta, body);
        self.send(frame).await?;
        let answer = self.answers.recv().await;
        self.state = CallState::Idle;
        match answer {
            Some(Answer::Reply(meta, body)) if meta.seq == seq => Ok(Reply {
                status: meta.status,
                headers: meta.headers,
                body,
            }),
            Some(other) => Err(CallError::Protocol {
                pid: self.pid,
                reason: format!("expected the answer to call {seq}, got {other:?}"),
            }),
            None => Err(CallError::Exited { pid: self.pid }),
        }
    }

    /// One round trip with no script work: what the channel itself costs.
    pub async fn echo(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let seq = self.next_seq();
        let frame = Frame::new(FrameKind::Echo, &serde_json::json!({ "seq": seq }), payload);
        self.send(frame).await?;
        let answer = self.answers.recv().await;
        self.state = CallState::Idle;
        match answer {
            Some(Answer::Echo(payload)) => Ok(payload),
            Some(other) => Err(CallError::Protocol {
                pid: self.pid,
                reason: format!("expected an echo, got {other:?}"),
            }),
            None => Err(CallError::Exited { pid: self.pid }),
        }
    }

    async fn send(&mut self, frame: Frame) -> Result<(), CallError> {
        self.state = CallState::Sending;
        frame
            .write_to(&mut self.writer)
            .await
            .map_err(|_| CallError::Exited { pid: self.pid })?;
        self.state = CallState::Awaiting;
        Ok(())
    }

    /// Completes a call its caller abandoned: true once the connection is idle again, false
    /// when it cannot be (cut mid-frame, or the worker is gone).
    pub async fn finish(&mut self) -> bool {
        match self.state {
            CallState::Idle => true,
            CallState::Sending => false,
            CallState::Awaiting => {
                let answered = self.answers.recv().await.is_some();
                self.state = CallState::Idle;
                answered
            }
        }
    }

    /// Asks the supervisor to SIGKILL the process (a call ran past its deadline).
    pub fn kill(&self) {
        let _ = self.kill.try_send(());
    }

    pub fn is_alive(&self) -> bool {
        !self.kill.is_closed()
    }
}

/// Why a worker did not become ready.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error("cannot start {python}: {reason}")]
    Spawn { python: String, reason: String },
    #[error("{0}")]
    Fatal(String),
    #[error("the worker exited during start-up ({status}) without saying why; see its log")]
    Exited { status: String },
    #[error("the worker did not finish init() within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Channel(String),
}

/// A started worker: its connection, and its process.
pub struct Running {
    pub connection: Connection,
    child: Child,
    kill: mpsc::Receiver<()>,
}

impl Running {
    pub fn split(self) -> (Connection, Exit) {
        (
            self.connection,
            Exit {
                child: self.child,
                kill: self.kill,
            },
        )
    }
}

/// The process of a serving worker, held by its supervisor.
pub struct Exit {
    child: Child,
    kill: mpsc::Receiver<()>,
}

impl Exit {
    /// Waits until the process exits (killing it first when asked); returns how it ended.
    pub async fn wait(mut self) -> String {
        let status = tokio::select! {
            status = self.child.wait() => status,
            _ = self.kill.recv() => {
                let _ = self.child.start_kill();
                self.child.wait().await
            }
        };
        match status {
            Ok(status) => describe(status),
            Err(e) => format!("cannot wait for it: {e}"),
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The socket path of worker `slot` in `runtime_dir`.
pub fn socket_path(runtime_dir: &Path, slot: usize) -> PathBuf {
    runtime_dir.join(format!("worker-{slot}.sock"))
}

/// Starts worker `slot` and waits until its init() has returned (or failed).
pub async fn start(
    config: &EntryScriptConfig,
    runtime_dir: &Path,
    worker_script: &Path,
    slot: usize,
    on_ready: impl FnOnce(&ReadyMeta),
) -> Result<Running, StartError> {
    let socket = socket_path(runtime_dir, slot);
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| StartError::Channel(format!("{socket:?}: {e}")))?;
    let mut command = Command::new(&config.python);
    command
        .arg(worker_script)
        .current_dir(&config.app_root)
        .envs(&config.environment)
        .envs(config.azure_variables())
        .env("MODELPOD_WORKER_SOCKET", &socket)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| StartError::Spawn {
        python: config.python.display().to_string(),
        reason: e.to_string(),
    })?;
    let pid = child.id().unwrap_or_default();
    // Output that bypasses sys.stdout (C extensions, os.write) still reaches the log.
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_lines(stdout, config.name.clone(), pid, "stdout"));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_lines(stderr, config.name.clone(), pid, "stderr"));
    }
    // One deadline for the whole start: connecting, importing and init().
    let deadline = tokio::time::Instant::now() + config.start_timeout;
    let stream = during_start(
        &mut child,
        deadline,
        config.start_timeout,
        listener.accept(),
    )
    .await?
    .map_err(|e| StartError::Channel(e.to_string()))?
    .0;
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    let (mut reader, writer) = stream.into_split();
    let first = during_start(
        &mut child,
        deadline,
        config.start_timeout,
        read_skipping_logs(&mut reader, &config.name, pid),
    )
    .await?
    .map_err(|e| StartError::Channel(e.to_string()))?;
    match first.kind {
        FrameKind::Ready => {
            let ready: ReadyMeta = first
                .meta()
                .map_err(|e| StartError::Channel(e.to_string()))?;
            on_ready(&ready);
        }
        FrameKind::Fatal => {
            let fatal: FatalMeta = first
                .meta()
                .map_err(|e| StartError::Channel(e.to_string()))?;
            let _ = child.wait().await;
            return Err(StartError::Fatal(fatal_message(config, &fatal)));
        }
        other => {
            return Err(StartError::Channel(format!(
                "the worker's first frame was {other:?}, not READY"
            )));
        }
    }
    let (answers_tx, answers) = mpsc::channel(1);
    let (kill_tx, kill) = mpsc::channel(1);
    let name = config.name.clone();
    tokio::spawn(async move {
        read_answers(reader, answers_tx, &name, pid).await;
    });
    Ok(Running {
        connection: Connection {
            slot,
            pid,
            writer,
            answers,
            kill: kill_tx,
            next_seq: 0,
            state: CallState::Idle,
        },
        child,
        kill,
    })
}

/// Runs one step of start-up unless the worker exits or the start deadline passes first.
async fn during_start<T>(
    child: &mut Child,
    deadline: tokio::time::Instant,
    timeout: Duration,
    step: impl std::future::Future<Output = T>,
) -> Result<T, StartError> {
    tokio::select! {
        value = step => Ok(value),
        status = child.wait() => Err(StartError::Exited {
            status: status.map(describe).unwrap_or_else(|e| e.to_string()),
        }),
        _ = tokio::time::sleep_until(deadline) => {
            let _ = child.start_kill();
            Err(StartError::Timeout(timeout))
        }
    }
}

/// The FATAL frame as one line an operator can act on.
fn fatal_message(config: &EntryScriptConfig, fatal: &FatalMeta) -> String {
    tracing::error!(service = %config.name, stage = %fatal.stage, "{}", fatal.traceback.trim_end());
    match fatal.stage.as_str() {
        "runtime" => format!(
            "{} cannot run entry scripts: {} (the environment needs azureml-inference-server-http, as Azure's azureml-defaults brings it)",
            config.python.display(),
            fatal.message
        ),
        "import" => format!(
            "importing {} failed: {}",
            config.entry_script_path().display(),
            fatal.message
        ),
        "init" => format!("init() failed: {}", fatal.message),
        stage => format!("{stage}: {}", fatal.message),
    }
}

async fn read_skipping_logs(
    reader: &mut tokio::net::unix::OwnedReadHalf,
    service: &str,
    pid: u32,
) -> Result<Frame, super::protocol::ProtocolError> {
    loop {
        let frame = Frame::read_from(reader).await?;
        if frame.kind == FrameKind::Log {
            log_frame(&frame, service, pid);
        } else {
            return Ok(frame);
        }
    }
}

/// Reads answers until the socket closes; dropping the sender then tells a waiting call the
/// worker is gone.
async fn read_answers(
    mut reader: tokio::net::unix::OwnedReadHalf,
    answers: mpsc::Sender<Answer>,
    service: &str,
    pid: u32,
) {
    loop {
        let frame = match Frame::read_from(&mut reader).await {
            Ok(frame) => frame,
            Err(super::protocol::ProtocolError::Closed) => return,
            Err(e) => {
                tracing::error!(service, pid, "{e}");
                return;
            }
        };
        let answer = match frame.kind {
            FrameKind::Log => {
                log_frame(&frame, service, pid);
                continue;
            }
            FrameKind::Response => match frame.meta::<ResponseMeta>() {
                Ok(meta) => Answer::Reply(meta, frame.payload),
                Err(e) => {
                    tracing::error!(service, pid, "{e}");
                    return;
                }
            },
            FrameKind::Echo => Answer::Echo(frame.payload),
            other => {
                tracing::error!(
                    service,
                    pid,
                    "unexpected {other:?} frame from a serving worker"
                );
                return;
            }
        };
        if answers.send(answer).await.is_err() {
            return;
        }
    }
}

fn log_frame(frame: &Frame, service: &str, pid: u32) {
    let meta: LogMeta = match frame.meta() {
        Ok(meta) => meta,
        Err(e) => {
            tracing::warn!(service, pid, "{e}");
            return;
        }
    };
    let text = String::from_utf8_lossy(&frame.payload);
    let request_id = meta.request_id.as_deref().unwrap_or("-");
    for line in text.lines() {
        if meta.stream == "stderr" {
            tracing::warn!(target: "modelpod::entry_script", service, pid, request_id, "{line}");
        } else {
            tracing::info!(target: "modelpod::entry_script", service, pid, request_id, "{line}");
        }
    }
}

async fn forward_lines(
    stream: impl tokio::io::AsyncRead + Unpin,
    service: String,
    pid: u32,
    name: &'static str,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "modelpod::entry_script", service, pid, stream = name, "{line}");
    }
}

/// Resident set size of `pid` (`VmRSS` in /proc, Linux); `None` once the process is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

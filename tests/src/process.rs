//! `modelpod` processes for integration tests, as a user runs them: a builder each for the
//! router (`modelpod route`) and the scoring server (`modelpod serve`), on loopback ports,
//! logging to a file the test can read, stopped with SIGTERM (then SIGKILL) when dropped.
//!
//! The binary's path comes from the test (`env!("CARGO_BIN_EXE_modelpod")`), which only the
//! binary's own package knows.

use serde_json::Value;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (free when asked; the process binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The pid of the `modelpod serve` listening on `port` (a router's replica), from /proc.
pub fn serve_pid(port: u16) -> u32 {
    let needle = format!("--port\0{port}\0");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(&needle)
            && String::from_utf8_lossy(&cmdline).contains("serve")
        {
            return pid;
        }
    }
    panic!("no modelpod serve on port {port}");
}

/// Sends SIGTERM, waits up to `grace` for the process to exit, then kills it.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while started.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until something accepts TCP connections on `port` (HTTP or HTTPS alike).
fn wait_listening(port: u16, limit: Duration, log: impl Fn() -> String) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < limit,
            "nothing listened on port {port} within {limit:?}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking HTTP client for tests.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// How to start `modelpod route`.
pub struct RouterBuilder {
    program: PathBuf,
    dir: Option<PathBuf>,
    owned_dir: Option<tempfile::TempDir>,
    port: Option<u16>,
    admin_key: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl RouterBuilder {
    pub fn new(program: impl Into<PathBuf>) -> RouterBuilder {
        RouterBuilder {
            program: program.into(),
            dir: None,
            owned_dir: None,
            port: None,
            admin_key: "test-admin-key".into(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Where the state file and the log are kept (a temporary directory otherwise); a router
    /// restarted on the same directory restores its state and appends to its log.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Like [`RouterBuilder::dir`], for a temporary directory that lives as long as the
    /// router: files written there beforehand (its configuration) stay until it stops.
    pub fn owned_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir.path().to_path_buf());
        self.owned_dir = Some(dir);
        self
    }

    /// The port to listen on (a free one otherwise).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn admin_key(mut self, key: &str) -> Self {
        self.admin_key = key.into();
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Starts the router and waits until it listens.
    pub fn start(self) -> RouterProcess {
        let (temp, dir) = match (self.owned_dir, self.dir) {
            (Some(owned), Some(dir)) => (Some(owned), dir),
            (_, Some(dir)) => (None, dir),
            (_, None) => {
                let temp = tempfile::tempdir().unwrap();
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let port = self.port.unwrap_or_else(free_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("router.log"))
            .unwrap();
        let child = Command::new(&self.program)
            .args(["route", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--admin-key", &self.admin_key, "--state-file"])
            .arg(dir.join("router-state.json"))
            .args(&self.args)
            .envs(self.envs)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let router = RouterProcess {
            child,
            port,
            dir,
            admin_key: self.admin_key,
            program: self.program,
            _temp: temp,
        };
        wait_listening(port, Duration::from_secs(60), || router.log());
        router
    }
}

/// A running `modelpod route`.
pub struct RouterProcess {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub admin_key: String,
    program: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl RouterProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("router.log")).unwrap_or_default()
    }

    /// A management request with the admin key: the status and the JSON answer.
    pub fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = http()
            .request(method, self.url(path))
            .bearer_auth(&self.admin_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    /// `modelpod ARGS --router URL --admin-key KEY`: whether it succeeded, and its output.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(&self.program)
            .args(args)
            .args(["--router", &self.url(""), "--admin-key", &self.admin_key])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// Polls `status` until `done` holds of its answer, failing with the log after `limit`.
    pub fn wait_for<T: std::fmt::Debug>(
        &self,
        limit: Duration,
        status: impl Fn(&RouterProcess) -> T,
        done: impl Fn(&T) -> bool,
    ) -> T {
        let started = Instant::now();
        loop {
            let now = status(self);
            if done(&now) {
                return now;
            }
            assert!(
                started.elapsed() < limit,
                "router state not reached in {limit:?}: {now:?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash: nothing is cleaned up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the router stops its replicas before exiting.
    pub fn stop(mut self) {
        terminate(&mut self.child, Duration::from_secs(20));
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(20));
    }
}

/// How to start `modelpod serve`.
pub struct ServeBuilder {
    program: PathBuf,
    args: Vec<OsString>,
}

impl ServeBuilder {
    pub fn new(program: impl Into<PathBuf>, repository: &Path) -> ServeBuilder {
        ServeBuilder {
            program: program.into(),
            args: vec!["--model-repository".into(), repository.into()],
        }
    }

    /// A server of an Azure entry script (inferenceconfig.json), with no model repository.
    pub fn entry_script(program: impl Into<PathBuf>, inference_config: &Path) -> ServeBuilder {
        ServeBuilder {
            program: program.into(),
            args: vec!["--inference-config".into(), inference_config.into()],
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the server on a port it picks itself, and waits until it has logged its
    /// address and finished loading.
    pub fn start(self) -> ServeProcess {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(&self.program)
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--grpc-port",
                "0",
            ])
            .args(&self.args)
            .env("MODELPOD_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("modelpod starts");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut address = None;
        let mut grpc_address = None;
        let mut loaded = false;
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_secs(60);
        while (address.is_none() || !loaded) && Instant::now() < until {
            let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                address = rest.split_whitespace().next().map(|a| {
                    a.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .to_string()
                });
            }
            if let Some(rest) = line.split("v2 gRPC on ").nth(1) {
                grpc_address = rest.split_whitespace().next().map(str::to_string);
            }
            loaded |= line.contains("start-up loading finished");
            seen.push(line);
        }
        let address = address
            .unwrap_or_else(|| panic!("the server never logged its address:\n{}", seen.join("\n")));
        assert!(
            loaded,
            "start-up loading never finished:\n{}",
            seen.join("\n")
        );
        ServeProcess {
            child,
            address,
            grpc_address,
            startup_log: seen,
            lines,
        }
    }
}

/// A running `modelpod serve`.
pub struct ServeProcess {
    pub child: Child,
    /// `HOST:PORT` it listens on.
    pub address: String,
    /// `HOST:PORT` of its gRPC service, unless that is off.
    pub grpc_address: Option<String>,
    /// Its log lines up to the end of start-up loading.
    pub startup_log: Vec<String>,
    /// Its log lines from after start-up, as they come.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl ServeProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(20));
    }
}

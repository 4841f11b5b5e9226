//! The one harness of modelpod's integration tests: paths, reference cases, scoring servers
//! in process on port 0, `modelpod serve` and `modelpod route` processes ([`process`]),
//! request bodies, collected records and output comparison with a stated tolerance.

pub mod grpc_requests;
pub mod linear_models;
pub mod process;
pub mod records;

use modelpod_accel::{DataType, Tensor, TensorData};
use modelpod_serve::{RunningServer, ServeArgs, ServeConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Floating-point outputs must satisfy |actual - expected| <= ABS_TOLERANCE + REL_TOLERANCE * |expected|
/// against ONNX Runtime's CPU provider; integer and boolean outputs must match exactly.
pub const ABS_TOLERANCE: f64 = 1e-4;
pub const REL_TOLERANCE: f64 = 1e-4;
/// FP16 and BF16 outputs: one unit in the last place (2^-10 and 2^-7 relative).
pub const FP16_REL_TOLERANCE: f64 = 1.0 / 1024.0;
pub const BF16_REL_TOLERANCE: f64 = 1.0 / 128.0;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures/models")
}

pub fn slow_fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures/slow-models")
}

/// A v2 binary-tensor request for the slow fixture model (`rows` rows of 256 values, binary
/// output asked for): the `Inference-Header-Content-Length` value and the body.
pub fn slow_infer_body(rows: usize) -> (usize, Vec<u8>) {
    let x = Tensor::new(vec![rows, 256], vec![0.5f32; rows * 256]).expect("rows x 256");
    let encoded = modelpod_scoring::v2::client::encode_request(&[("x".into(), x)], true);
    (encoded.json_len.expect("a binary body"), encoded.body)
}

/// POSTs `body` as JSON; returns the status and the JSON answer (null when not JSON).
pub fn post_json(
    http: &reqwest::blocking::Client,
    url: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = http.post(url).json(body).send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(serde_json::Value::Null))
}

/// Whether ONNX Runtime's library is installed. CI sets MODELPOD_TEST_REQUIRE_ORT=1 so a
/// missing library fails instead of skipping.
pub fn ort_available() -> bool {
    let ok = modelpod_accel::ort_engine::init_ort(None).is_ok();
    if !ok && std::env::var_os("MODELPOD_TEST_REQUIRE_ORT").is_some_and(|v| v == "1") {
        panic!("MODELPOD_TEST_REQUIRE_ORT=1 but ONNX Runtime did not load: run scripts/setup.sh");
    }
    ok
}

#[derive(Debug, Deserialize, Clone)]
pub struct RefTensor {
    pub datatype: String,
    pub shape: Vec<usize>,
    pub data: Vec<serde_json::Value>,
}

impl RefTensor {
    pub fn to_tensor(&self) -> Tensor {
        let dtype: DataType = self.datatype.parse().expect("known datatype");
        let (shape, data) =
            modelpod_scoring::json::flatten(&serde_json::Value::Array(self.data.clone()), dtype)
                .expect("reference data converts");
        assert_eq!(shape, vec![self.data.len()]);
        Tensor::new(self.shape.clone(), data).expect("reference shape matches data")
    }
}

#[derive(Debug, Deserialize, Clone)]
pub struct RefCase {
    pub inputs: BTreeMap<String, RefTensor>,
    pub outputs: BTreeMap<String, RefTensor>,
}

pub fn reference_cases(path: &Path) -> Vec<RefCase> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compares an output with its reference; returns the first mismatch, described.
pub fn compare(name: &str, actual: &Tensor, expected: &RefTensor) -> Result<(), String> {
    let expected = expected.to_tensor();
    if actual.shape() != expected.shape() || actual.dtype() != expected.dtype() {
        return Err(format!(
            "{name}: got {} {:?}, expected {} {:?}",
            actual.dtype(),
            actual.shape(),
            expected.dtype(),
            expected.shape()
        ));
    }
    if let (TensorData::Bytes(a), TensorData::Bytes(e)) = (actual.data(), expected.data()) {
        return match a.iter().zip(e).position(|(x, y)| x != y) {
            Some(i) => Err(format!("{name}[{i}]: got {:?}, expected {:?}", a[i], e[i])),
            None => Ok(()),
        };
    }
    // Half-precision results may differ by one unit in the last place between engines.
    let relative = match expected.dtype() {
        DataType::Fp32 | DataType::Fp64 => Some(REL_TOLERANCE),
        DataType::Fp16 => Some(FP16_REL_TOLERANCE),
        DataType::Bf16 => Some(BF16_REL_TOLERANCE),
        _ => None,
    };
    let (a, e) = (actual.data().to_f64_vec(), expected.data().to_f64_vec());
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        let ok = match relative {
            None => x == y,
            Some(relative) => (x - y).abs() <= ABS_TOLERANCE + relative * y.abs(),
        };
        if !ok {
            return Err(format!("{name}[{i}]: got {x}, expected {y}"));
        }
    }
    Ok(())
}

/// Server arguments for a test: loopback, port 0, generous concurrency.
pub fn serve_args(repository: &Path) -> ServeArgs {
    ServeArgs {
        model_repository: Some(repository.to_path_buf()),
        host: Some("127.0.0.1".into()),
        port: Some(0),
        grpc_port: Some("0".into()),
        max_concurrent_requests: Some(64),
        http_workers: Some(2),
        // The suites load and unload through the repository API.
        model_control_mode: Some(modelpod_serve::ModelControl::Explicit),
        ..ServeArgs::default()
    }
}

/// Starts a server and waits for its start-up loading to settle.
pub fn start(args: ServeArgs) -> RunningServer {
    let server = RunningServer::start(ServeConfig::resolve(args).expect("valid test config"))
        .expect("server starts");
    assert!(
        server.wait_loaded(Duration::from_secs(60)),
        "models did not finish loading"
    );
    server
}

/// A server's `/metrics` text.
pub fn metrics_text(server: &RunningServer) -> String {
    client()
        .get(server.url("/metrics"))
        .send()
        .expect("/metrics answers")
        .text()
        .expect("/metrics is text")
}

/// The sum of the samples of `metric` (a counter, gauge, or a histogram's `_sum` or `_count`)
/// that carry every one of `labels`, or `None` when there is no such sample. The text is read
/// with a Prometheus text-format parser, so a malformed exposition fails the test.
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::{Scrape, Value};
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_string())))
        .expect("/metrics is Prometheus text");
    let samples: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// A repository holding only the `mlp` fixture (string labels out): one model, so
/// swagger.json's `ServiceInput` and `ServiceOutput` are that model's.
pub fn single_model_repository() -> tempfile::TempDir {
    let repository = tempfile::tempdir().expect("a temporary directory");
    let model = repository.path().join("mlp");
    std::fs::create_dir_all(model.join("1")).expect("model directory");
    for file in ["model.toml", "labels.txt", "1/model.onnx"] {
        std::fs::copy(fixtures().join("mlp").join(file), model.join(file)).expect("fixture copies");
    }
    repository
}

/// Runs `tests/python/swagger_client_check.py` against the service at `base_url`: both
/// swagger documents validate, and a client generated from the OpenAPI 3 one scores
/// `request` and gets what a plain POST gets. Skipped without `.venv` unless Python is required.
pub fn check_generated_client(base_url: &str, key: Option<&str>, request: &serde_json::Value) {
    let Some(python) = venv_program("python") else {
        return;
    };
    let mut direct = client().post(format!("{base_url}/score")).json(request);
    if let Some(key) = key {
        direct = direct.bearer_auth(key);
    }
    let direct = direct.send().expect("/score answers");
    assert_eq!(direct.status(), 200);
    let reply: serde_json::Value = direct.json().expect("a JSON reply");
    let expected = serde_json::json!({ "request": request, "reply": reply });
    let output = std::process::Command::new(python)
        .arg(workspace_root().join("tests/python/swagger_client_check.py"))
        .args([base_url, key.unwrap_or(""), &expected.to_string()])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(" passed, 0 failed"),
        "generated-client checks failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
}

/// A browser's CORS preflight for `POST url` from `origin`, with a key and a JSON body.
pub fn cors_preflight(url: &str, origin: &str) -> reqwest::blocking::Response {
    client()
        .request(reqwest::Method::OPTIONS, url)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .expect("the preflight is answered")
}

/// The checkout's Python (`.venv`, from scripts/setup.sh), or `None` where it is missing and
/// Python is not required (`MODELPOD_TEST_REQUIRE_PYTHON=1` makes that a failure).
pub fn venv_program(name: &str) -> Option<PathBuf> {
    let program = workspace_root().join(".venv/bin").join(name);
    if program.exists() {
        return Some(program);
    }
    assert!(
        std::env::var_os("MODELPOD_TEST_REQUIRE_PYTHON").is_none_or(|v| v != "1"),
        "MODELPOD_TEST_REQUIRE_PYTHON=1 but {} is missing: run scripts/setup.sh",
        program.display()
    );
    eprintln!("no {} (scripts/setup.sh): skipped", program.display());
    None
}

//! `modelpod serve --inference-config`: Azure entry scripts run unmodified in Python workers.
//!
//! The first test serves real Azure deployments (tests/python/make_azure_deployments.py and
//! make_entry_script_cases.py) under azureml-inference-server-http and under modelpod and
//! compares every answer (tests/python/azure_compat.py). The others cover what only the
//! front end does: killing a worker stuck past the deadline, the queue's 503, metrics, logs
//! with request ids, keys, and ONNX models served beside the script.

use modelpod_tests::process::{RouterBuilder, ServeBuilder, ServeProcess, http};
use modelpod_tests::{single_model_repository, venv_program, workspace_root};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn write_script(dir: &Path, script: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("score.py"), script).unwrap();
    let config = dir.join("inferenceconfig.json");
    std::fs::write(
        &config,
        r#"{"entryScript": "score.py", "sourceDirectory": "."}"#,
    )
    .unwrap();
    config
}

/// The checkout's Python, and a folder holding `script` as score.py beside its
/// inferenceconfig.json (kept until the guard drops).
fn deployment(script: &str) -> Option<(PathBuf, tempfile::TempDir, PathBuf)> {
    let python = venv_program("python")?;
    let dir = tempfile::tempdir().unwrap();
    let config = write_script(dir.path(), script);
    Some((python, dir, config))
}

fn serve(config: &Path, python: &Path, extra: &[&str]) -> ServeProcess {
    ServeBuilder::entry_script(env!("CARGO_BIN_EXE_modelpod"), config)
        .args(["--python".as_ref(), python.as_os_str()])
        .args(extra)
        .start()
}

fn wait_ready(server: &ServeProcess) {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Ok(r) = http().get(server.url("/v2/health/ready")).send()
            && r.status() == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the entry script never became ready");
}

fn post(server: &ServeProcess, path: &str, body: &Value) -> (u16, Value) {
    let response = http().post(server.url(path)).json(body).send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn entry_scripts_answer_as_azures_own_server_does() {
    let Some(python) = venv_program("python") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for generator in ["make_azure_deployments.py", "make_entry_script_cases.py"] {
        let made = Command::new(&python)
            .arg(workspace_root().join("tests/python").join(generator))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(made.success(), "{generator} failed");
    }
    let report = dir.path().join("report.json");
    // Azure's server binds 0.0.0.0: both servers and the client run in a network namespace
    // of their own that has only loopback.
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(&python)
        .arg(workspace_root().join("tests/python/azure_compat.py"))
        .arg(env!("CARGO_BIN_EXE_modelpod"))
        .arg(dir.path())
        .arg(&report)
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the servers differ:\n{stderr}");
    let entries: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let compared = entries.iter().filter(|e| e.get("equal").is_some()).count();
    assert!(compared >= 35, "only {compared} responses compared");
    for case in [
        "iris_forest",
        "churn_pipeline",
        "image_rawhttp",
        "sleeps",
        "init_fails",
        "exits",
    ] {
        assert!(
            entries.iter().any(|e| e["case"] == case),
            "{case} was not compared"
        );
    }
}

/// A run() Azure's alarm cannot stop (SIGALRM blocked) is killed at the deadline: 504, and the
/// worker is replaced, so the next request is served; the restart shows in /metrics.
#[test]
fn a_stuck_worker_gets_504_and_is_replaced() {
    let Some((python, _dir, config)) = deployment(
        r#"
import json, os, signal, time

def init():
    pass

def run(raw_data):
    if json.loads(raw_data).get("stuck"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(30)
    return {"pid": os.getpid()}
"#,
    ) else {
        return;
    };
    let server = serve(&config, &python, &["--scoring-timeout-ms", "500"]);
    wait_ready(&server);
    let (status, before) = post(&server, "/score", &json!({}));
    assert_eq!(status, 200, "{before}");
    let started = Instant::now();
    let (status, body) = post(&server, "/score", &json!({"stuck": true}));
    assert_eq!(status, 504, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Scoring timeout"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_ready(&server);
    let (status, after) = post(&server, "/score", &json!({}));
    assert_eq!(status, 200, "{after}");
    assert_ne!(before["pid"], after["pid"], "a new worker answers");
    let metrics = http()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("modelpod_entry_script_worker_restarts_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("modelpod_entry_script_workers_ready"),
        "{metrics}"
    );
    assert!(
        metrics.contains("modelpod_entry_script_memory_bytes"),
        "{metrics}"
    );
}

/// With every worker busy, a request waits maxQueueWaitMs and gets 503; what the script
/// prints is logged with the request's id.
#[test]
fn busy_workers_give_503_and_prints_are_logged_with_the_request_id() {
    let Some((python, _dir, config)) = deployment(
        r#"
import time

def init():
    print("init ran")

def run(raw_data):
    print("scoring", raw_data)
    time.sleep(1.5)
    return "done"
"#,
    ) else {
        return;
    };
    let server = serve(
        &config,
        &python,
        &[
            "--max-concurrent-requests",
            "4",
            "--max-queue-wait-ms",
            "200",
        ],
    );
    wait_ready(&server);
    let url = server.url("/score");
    let slow = std::thread::spawn(move || {
        http()
            .post(url)
            .header("x-request-id", "first-request-42")
            .body("{}")
            .send()
            .unwrap()
            .status()
            .as_u16()
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = post(&server, "/score", &json!({}));
    assert_eq!(status, 503, "{body}");
    assert!(body["message"].as_str().unwrap().contains("busy"), "{body}");
    assert_eq!(slow.join().unwrap(), 200);
    let until = Instant::now() + Duration::from_secs(5);
    let mut log = String::new();
    while Instant::now() < until && !log.contains("first-request-42") {
        while let Ok(line) = server.lines.try_recv() {
            log.push_str(&line);
            log.push('\n');
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = log
        .lines()
        .find(|l| l.contains("scoring {}"))
        .unwrap_or_else(|| panic!("the script's print is not in the log:\n{log}"));
    assert!(line.contains("first-request-42"), "{line}");
}

/// An entry script and ONNX models in one server: /score is the script, /score?model= and v2
/// reach the model; keys guard all of it but the probes and swagger.json.
#[test]
fn entry_script_and_onnx_models_side_by_side_behind_keys() {
    let Some((python, _dir, config)) = deployment(
        "import json\n\ndef init():\n    pass\n\ndef run(raw_data):\n    return {\"script\": json.loads(raw_data)}\n",
    ) else {
        return;
    };
    let repository = single_model_repository();
    let server = ServeBuilder::entry_script(env!("CARGO_BIN_EXE_modelpod"), &config)
        .args(["--python".as_ref(), python.as_os_str()])
        .args(["--model-repository".as_ref(), repository.path().as_os_str()])
        .args(["--api-key", "secret", "--entry-script-name", "churn"])
        .start();
    wait_ready(&server);
    let client = http();
    let keyed = |path: &str, body: Value| {
        let response = client
            .post(server.url(path))
            .bearer_auth("secret")
            .json(&body)
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let (status, body) = keyed("/score", json!({"data": 1}));
    assert_eq!((status, &body), (200, &json!({"script": {"data": 1}})));
    let (status, body) = keyed("/score?model=churn", json!({"data": 2}));
    assert_eq!((status, &body), (200, &json!({"script": {"data": 2}})));
    let (status, body) = keyed("/score?model=mlp", json!({"data": [[5.1, 3.5, 1.4, 0.2]]}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = keyed(
        "/v2/models/mlp/infer",
        json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}),
    );
    assert_eq!(status, 200, "{body}");
    for path in ["/score", "/score?model=mlp"] {
        let status = client
            .post(server.url(path))
            .body("{}")
            .send()
            .unwrap()
            .status();
        assert_eq!(status, 401, "{path} without a key");
    }
    let status = client
        .get(server.url("/score?data=1"))
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 401, "GET /score without a key");
    let swagger = client.get(server.url("/swagger.json")).send().unwrap();
    assert_eq!(swagger.status(), 200, "swagger.json is public, as on Azure");
}

/// A router service whose local replicas serve an entry script (`--inference-config`): the
/// Azure scoring URI reaches score.py through the router's auth and least-busy routing.
#[test]
fn a_router_service_serves_an_entry_script() {
    let Some((python, _dir, config)) = deployment(
        "import json\n\ndef init():\n    pass\n\ndef run(raw_data):\n    return {\"routed\": json.loads(raw_data)}\n",
    ) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let router = RouterBuilder::new(env!("CARGO_BIN_EXE_modelpod"))
        .dir(state.path())
        .admin_key("entry-admin")
        .args(["--service", "svc", "--auth", "key", "--inference-config"])
        .arg(&config)
        .arg("--serve-arg")
        .arg("--python")
        .arg("--serve-arg")
        .arg(&python)
        .start();
    let admin = |path: &str| -> Value {
        http()
            .get(router.url(path))
            .bearer_auth("entry-admin")
            .send()
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or(Value::Null)
    };
    let until = Instant::now() + Duration::from_secs(90);
    while admin("/modelpod/services")["services"][0]["versions"][0]["ready_replicas"].as_u64()
        < Some(1)
    {
        assert!(
            Instant::now() < until,
            "no ready replica:\n{}",
            router.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let keys = admin("/modelpod/services/svc/keys");
    let key = keys["primaryKey"]
        .as_str()
        .expect("a primary key")
        .to_string();
    let url = router.url("/api/v1/service/svc/score");
    let unauthenticated = http().post(&url).json(&json!({"data": 1})).send().unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let response = http()
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"data": 1}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().unwrap(),
        json!({"routed": {"data": 1}})
    );
}

//! `modelpod route` as a user runs it: a router process with the local scaler, whose replicas
//! are `modelpod serve` child processes, driven over HTTP.

use modelpod_scoring::v2::INFERENCE_HEADER_CONTENT_LENGTH;
use modelpod_tests::process::{RouterBuilder, RouterProcess, serve_pid};
use modelpod_tests::records::{collected_records, files_under};
use modelpod_tests::{post_json, slow_infer_body};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    modelpod_tests::workspace_root()
}

/// The admin key every test router is started with.
const ADMIN_KEY: &str = "test-admin-key";

/// A client that sends the admin key: the management routes need it, and the scoring routes
/// of these tests' services (auth none) ignore it.
fn client() -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "Authorization",
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    reqwest::blocking::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `modelpod route` for service `svc` over `repository` with this deploymentconfig.json,
/// once `ready` replicas are ready.
fn start_service(
    repository: &Path,
    deployment: Value,
    extra: &[&str],
    ready: usize,
) -> RouterProcess {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deploymentconfig.json");
    std::fs::write(&config, deployment.to_string()).unwrap();
    let router = RouterBuilder::new(env!("CARGO_BIN_EXE_modelpod"))
        .owned_dir(dir)
        .admin_key(ADMIN_KEY)
        .args(["--service", "svc", "--auth", "none", "--model-repository"])
        .arg(repository)
        .arg("--deployment-config")
        .arg(&config)
        .args(extra)
        .start();
    wait_until(&router, Duration::from_secs(60), |s| {
        s["ready_replicas"].as_u64() >= Some(ready as u64)
    });
    router
}

/// The service's first version as the management API reports it.
fn status(router: &RouterProcess) -> Option<Value> {
    let response = client().get(router.url("/modelpod/services")).send().ok()?;
    let body: Value = response.json().ok()?;
    Some(body["services"][0]["versions"][0].clone())
}

fn wait_until(router: &RouterProcess, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    router
        .wait_for(limit, status, |s| s.as_ref().is_some_and(&done))
        .expect("a status")
}

fn slow_repository() -> PathBuf {
    workspace().join("tests/fixtures/slow-models")
}

/// A slow-model request through the router (binary v2 body): `rows` rows of work.
fn slow_request(http: &reqwest::blocking::Client, router: &RouterProcess, rows: usize) -> u16 {
    let (header_length, body) = slow_infer_body(rows);
    http.post(router.url("/api/v1/service/svc/v2/models/slow/infer"))
        .header(INFERENCE_HEADER_CONTENT_LENGTH, header_length)
        .body(body)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// `threads` clients sending slow requests back to back until `stop`; returns each status.
fn load(
    router: &Arc<RouterProcess>,
    threads: usize,
    rows: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<u16>>> {
    (0..threads)
        .map(|_| {
            let (router, stop) = (router.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = client();
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(slow_request(&http, &router, rows));
                }
                statuses
            })
        })
        .collect()
}

#[test]
fn replicas_scale_up_under_load_and_down_after_the_window_within_min_and_max() {
    let router = Arc::new(start_service(
        &slow_repository(),
        json!({
            "maxConcurrentRequestsPerContainer": 1,
            "maxQueueWaitMs": 10000,
            "scoringTimeoutMs": 30000,
            "autoScaler": {"autoscaleEnabled": true, "minReplicas": 1, "maxReplicas": 3,
                           "refreshPeriodInSeconds": 1, "targetUtilization": 70}
        }),
        &["--scale-down-window-s", "3"],
        1,
    ));
    assert_eq!(status(&router).unwrap()["target_replicas"], 1);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients = load(&router, 4, 64, &stop);
    // Four requests at a time on one slot each: ceil(4 / 0.7) = 6, capped at 3.
    let mut first_scale_up = None;
    let mut highest = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let target = status(&router).unwrap()["target_replicas"]
            .as_u64()
            .unwrap();
        if target > 1 && first_scale_up.is_none() {
            first_scale_up = Some(started.elapsed());
        }
        highest = highest.max(target);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let stopped = Instant::now();
    let first_scale_up = first_scale_up.expect("never scaled up");
    assert!(
        first_scale_up <= Duration::from_secs(2),
        "scaled up after {first_scale_up:?}"
    );
    assert_eq!(highest, 3, "maxReplicas is 3");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // Idle now: the count holds for the window, then falls back to minReplicas.
    let mut lowest = u64::MAX;
    let mut back_to_min = None;
    while stopped.elapsed() < Duration::from_secs(10) {
        let target = status(&router).unwrap()["target_replicas"]
            .as_u64()
            .unwrap();
        lowest = lowest.min(target);
        if target == 1 {
            back_to_min = Some(stopped.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let back_to_min = back_to_min.expect("never scaled back down");
    assert!(
        back_to_min >= Duration::from_secs(2),
        "scaled down after only {back_to_min:?} of a 3 s window"
    );
    assert!(lowest >= 1);
}

#[test]
fn a_replica_killed_under_load_costs_only_its_in_flight_requests_and_comes_back() {
    const CAPACITY: usize = 2;
    let router = Arc::new(start_service(
        &slow_repository(),
        json!({
            "numReplicas": 2,
            "maxConcurrentRequestsPerContainer": CAPACITY,
            "maxQueueWaitMs": 10000,
            "scoringTimeoutMs": 30000,
        }),
        &[],
        2,
    ));
    let status = status(&router).unwrap();
    assert_eq!(status["autoscale"]["enabled"], false);
    let victim_url = status["replicas"][0]["url"].as_str().unwrap().to_string();
    let victim_port: u16 = victim_url.rsplit(':').next().unwrap().parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&router, 4, 64, &stop);
    std::thread::sleep(Duration::from_millis(1500));
    let pid = serve_pid(victim_port);
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let failed: Vec<u16> = statuses.iter().copied().filter(|&s| s != 200).collect();
    let ok = statuses.len() - failed.len();
    assert!(ok > 20, "only {ok} requests succeeded");
    // At most the victim's slots were in flight when it died; those get 502.
    assert!(
        failed.len() <= CAPACITY && failed.iter().all(|&s| s == 502),
        "{failed:?} of {} requests",
        statuses.len()
    );
    // The local scaler restarts it, and the router takes it back.
    wait_until(&router, Duration::from_secs(30), |s| {
        s["ready_replicas"] == 2
    });
}

#[test]
fn a_request_slower_than_the_scoring_timeout_is_a_504_and_a_full_service_a_503() {
    let router = Arc::new(start_service(
        &slow_repository(),
        json!({
            "numReplicas": 1,
            "maxConcurrentRequestsPerContainer": 1,
            "maxQueueWaitMs": 100,
            "scoringTimeoutMs": 300,
        }),
        &[],
        1,
    ));
    let http = client();
    // Enough rows to take far longer than 300 ms on any machine.
    let started = Instant::now();
    assert_eq!(slow_request(&http, &router, 8192), 504);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // While one request holds the only slot, another waits maxQueueWaitMs, then gets 503.
    let holder = {
        let router = router.clone();
        std::thread::spawn(move || slow_request(&client(), &router, 8192))
    };
    wait_until(&router, Duration::from_secs(5), |s| {
        s["replicas"][0]["outstanding"] == 1
    });
    let (status, body) = post_json(
        &http,
        &router.url("/api/v1/service/svc/v2/models/slow/infer"),
        &json!({"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32",
            "data": vec![0.5; 256]}]}),
    );
    assert_eq!(status, 503);
    assert_eq!(
        body["error"],
        "Too many requests for service svc (overloaded)"
    );
    assert_eq!(holder.join().unwrap(), 504);
}

#[test]
fn routing_errors_are_json_with_azures_messages() {
    // A repository whose only model is broken: the replica starts but is never ready.
    let repository = tempfile::tempdir().unwrap();
    let broken = workspace().join("tests/fixtures/models/broken/1");
    std::fs::create_dir_all(repository.path().join("broken/1")).unwrap();
    for entry in std::fs::read_dir(&broken).unwrap().flatten() {
        std::fs::copy(
            entry.path(),
            repository.path().join("broken/1").join(entry.file_name()),
        )
        .unwrap();
    }
    let router = start_service(
        repository.path(),
        json!({"maxQueueWaitMs": 200, "autoScaler": {"minReplicas": 1, "maxReplicas": 1}}),
        &[],
        0,
    );
    wait_until(&router, Duration::from_secs(30), |s| {
        s["replicas"][0]["report"].is_object()
    });
    let http = client();
    let (status, body) = post_json(
        &http,
        &router.url("/api/v1/service/svc/score"),
        &json!({"data": [[1.0]]}),
    );
    assert_eq!(status, 503);
    assert_eq!(body["error"], "No ready replicas for service svc");

    let (status, body) = post_json(
        &http,
        &router.url("/api/v1/service/nope/score"),
        &json!({"data": [[1.0]]}),
    );
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nope"));

    let response = http
        .get(router.url("/modelpod/services/svc/logs?limit=all"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("query string"),
        "{body}"
    );
}

#[test]
fn one_router_fronts_several_services_each_at_its_own_uri() {
    let dir = tempfile::tempdir().unwrap();
    let models = workspace().join("tests/fixtures/models");
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!(
            // The fixtures include a broken model: ready means "start-up loading done" there.
            "[[service]]\nname = \"fixtures\"\nmodel_repository = {:?}\n\
             serve_args = [\"--strict-readiness\", \"false\"]\nauth = \"none\"\n\n\
             [[service]]\nname = \"slow\"\nmodel_repository = {:?}\nauth = \"none\"\n",
            models.display().to_string(),
            slow_repository().display().to_string()
        ),
    )
    .unwrap();
    let router = RouterBuilder::new(env!("CARGO_BIN_EXE_modelpod"))
        .dir(dir.path())
        .admin_key(ADMIN_KEY)
        .arg("--config")
        .arg(&config)
        .start();
    let http = client();
    let started = Instant::now();
    let all_ready = || {
        let body: Value = http
            .get(router.url("/modelpod/services"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        body["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["versions"][0]["ready_replicas"] == 1)
    };
    while !all_ready() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            router.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = post_json(
        &http,
        &router.url("/api/v1/service/fixtures/v2/models/mlp/infer"),
        &json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
            "data": [1.0, 2.0, 3.0, 4.0]}]}),
    );
    assert_eq!(status, 200);
    assert_eq!(body["model_name"], "mlp");
    // Azure's /score: the scoring function's time and the caller's request id come back
    // through the router, as through Azure's front end.
    let response = http
        .post(router.url("/api/v1/service/fixtures/score?model=mlp"))
        .header("x-ms-client-request-id", "client-42")
        .json(&json!({"data": [[1.0, 2.0, 3.0, 4.0]]}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let exec_ms: f64 = response.headers()["x-ms-run-fn-exec-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(exec_ms > 0.0);
    assert_eq!(response.headers()["x-ms-client-request-id"], "client-42");
    // The slow service has its own replica: the same model name is not found there.
    let (status, _) = post_json(
        &http,
        &router.url("/api/v1/service/slow/v2/models/mlp/infer"),
        &json!({"inputs": []}),
    );
    assert_eq!(status, 404);
    let swagger: Value = http
        .get(router.url("/api/v1/service/fixtures/swagger.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(swagger["swagger"], "2.0");
    let metrics = http
        .get(router.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(
            "modelpod_router_requests_total{service=\"fixtures\",version=\"default\",code=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("modelpod_router_ready_replicas{service=\"slow\",version=\"default\"} 1")
    );
}

#[test]
fn scored_requests_are_collected_and_flushed_when_the_router_stops() {
    let collected = tempfile::tempdir().unwrap();
    let models = workspace().join("tests/fixtures/models");
    {
        let router = start_service(
            &models,
            json!({"numReplicas": 1, "maxConcurrentRequestsPerContainer": 4}),
            &[
                "--data-collection",
                collected.path().to_str().unwrap(),
                "--serve-arg=--strict-readiness",
                "--serve-arg=false",
                "--log-format",
                "json",
            ],
            1,
        );
        let http = client();
        for i in 0..20 {
            let (status, _) = post_json(
                &http,
                &router.url("/api/v1/service/svc/v2/models/mlp/infer"),
                &json!({"id": format!("r{i}"), "inputs": [{"name": "input", "shape": [1, 4],
                    "datatype": "FP32", "data": [i as f32, 2.0, 3.0, 4.0]}]}),
            );
            assert_eq!(status, 200);
        }
        // A refused request is not scored, so not collected.
        let (status, _) = post_json(
            &http,
            &router.url("/api/v1/service/svc/v2/models/mlp/infer"),
            &json!({"inputs": []}),
        );
        assert_eq!(status, 400);
        let metrics = http
            .get(router.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(
            metrics.contains(
                "modelpod_data_collection_records{service=\"svc\",version=\"default\",outcome=\"dropped_queue_full\"} 0"
            ),
            "{metrics}"
        );
        // The service's recent requests, newest last, with where their time went.
        let logs: Value = http
            .get(router.url("/modelpod/services/svc/logs?limit=3"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let requests = logs["requests"].as_array().unwrap();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[2]["status"], 400);
        assert_eq!(requests[1]["status"], 200);
        assert!(!requests[1]["request_id"].as_str().unwrap().is_empty());
        assert!(
            requests[1]["replica"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
        assert!(
            requests[1]["upstream_us"].as_u64().unwrap()
                <= requests[1]["total_us"].as_u64().unwrap()
        );
        // The same, one JSON object per line, in the router's log.
        let access_lines = router
            .log()
            .lines()
            .filter(|l| l.contains("\"target\":\"modelpod::access\""))
            .count();
        assert_eq!(access_lines, 21, "{}", router.log());
        // Dropping the router stops it with SIGTERM; it writes out what it collected.
    }
    // Labelled with the version the replica ran (the request named none).
    let partition = collected.path().join("svc/mlp/1/default");
    // One day, so one file: `<yyyy>/<mm>/<dd>/data.jsonl`.
    let files = files_under(&partition);
    assert_eq!(files.len(), 1, "{files:?}");
    let lines = collected_records(&partition);
    assert_eq!(lines.len(), 20);
    assert_eq!(lines[3]["inputs"]["inputs"][0]["data"][0], 3.0);
    assert_eq!(lines[3]["outputs"]["model_name"], "mlp");
    assert_eq!(lines[3]["service"], "svc");
    assert!(!lines[3]["request_id"].as_str().unwrap().is_empty());
}

#[test]
fn a_replica_that_stops_answering_is_taken_out_and_back_when_it_answers() {
    let router = start_service(
        &slow_repository(),
        json!({"numReplicas": 2, "maxConcurrentRequestsPerContainer": 2, "scoringTimeoutMs": 30000}),
        &[],
        2,
    );
    let initial = status(&router).unwrap();
    let frozen_url = initial["replicas"][0]["url"].as_str().unwrap().to_string();
    let port: u16 = frozen_url.rsplit(':').next().unwrap().parse().unwrap();
    let pid = serve_pid(port).to_string();
    // SIGSTOP: the process holds its port (connections are accepted) but answers nothing.
    // Thawed on drop, so a failing test leaves no stopped process behind.
    struct Thaw(String);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let kill = |signal: &str| {
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    };
    kill("-STOP");
    let thaw = Thaw(pid.clone());
    let replica = |s: &Value| {
        s["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["url"] == frozen_url.as_str())
            .cloned()
            .unwrap()
    };
    // Its busy poll goes unanswered past the refresh period (1 s) and a grace: out.
    let started = Instant::now();
    wait_until(&router, Duration::from_secs(10), |s| {
        replica(s)["routable"] == false
    });
    assert!(started.elapsed() >= Duration::from_secs(1));
    let http = client();
    for _ in 0..10 {
        assert_eq!(
            slow_request(&http, &router, 1),
            200,
            "sent to the frozen replica"
        );
    }
    assert_eq!(replica(&status(&router).unwrap())["outstanding"], 0);
    // Thawed, it answers its next poll and takes requests again.
    drop(thaw);
    wait_until(&router, Duration::from_secs(10), |s| {
        replica(s)["routable"] == true
    });
}

/// The generated client through the router: the swagger document names the router's address
/// and the service's base path, not the replica's loopback port.
#[test]
fn a_client_generated_from_the_routers_swagger_scores_through_it() {
    let repository = modelpod_tests::single_model_repository();
    let router = start_service(repository.path(), json!({"numReplicas": 1}), &[], 1);
    let base = router.url("/api/v1/service/svc");
    let swagger: Value = client()
        .get(format!("{base}/swagger.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(swagger["basePath"], "/api/v1/service/svc");
    assert_eq!(swagger["info"]["title"], "svc");
    modelpod_tests::check_generated_client(&base, None, &json!({"data": [[5.1, 3.5, 1.4, 0.2]]}));
}

/// Browsers reach a scoring URI through the router: the listed origin's preflight is answered
/// there (it carries no credential) and its calls carry the CORS headers; others get none.
#[test]
fn listed_origins_may_call_the_scoring_uri_cross_origin() {
    let repository = modelpod_tests::single_model_repository();
    let router = start_service(
        repository.path(),
        json!({"numReplicas": 1}),
        &["--cors-origins", "https://app.example"],
        1,
    );
    let http = client();
    let score = router.url("/api/v1/service/svc/score");
    let preflight = |origin: &str| modelpod_tests::cors_preflight(&score, origin);
    let allowed = preflight("https://app.example");
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        !preflight("https://evil.example")
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let call = http
        .post(&score)
        .header("Origin", "https://app.example")
        .json(&json!({"data": [[5.1, 3.5, 1.4, 0.2]]}))
        .send()
        .unwrap();
    assert_eq!(call.status(), 200);
    assert_eq!(
        call.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

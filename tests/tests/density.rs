//! Many models in one server under a tight memory budget: lazy loading, LRU eviction and
//! reloading, with every answer checked against the model that should have given it.

use modelpod_serve::config::LoadPolicy;
use modelpod_tests::linear_models::{INPUTS, LinearModel, write_repository};
use modelpod_tests::{client, metric_sum, metrics_text, serve_args, start};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};

const MODELS: usize = 300;
const RESIDENT: u64 = 30;

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in /metrics"))
}

fn infer(http: &reqwest::blocking::Client, url: &str, model: &LinearModel, x: [f32; INPUTS]) {
    let response = http
        .post(format!("{url}/v2/models/{}/infer", model.name))
        .json(&json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, INPUTS], "data": x }] }))
        .send()
        .unwrap();
    let status = response.status();
    let body: Value = response.json().unwrap();
    assert_eq!(status, 200, "{}: {body}", model.name);
    let got: Vec<f64> = serde_json::from_value(body["outputs"][0]["data"].clone()).unwrap();
    for (g, e) in got.iter().zip(model.predict(&x)) {
        assert!(
            (g - e as f64).abs() <= 1e-4 + 1e-4 * (e as f64).abs(),
            "{}: got {got:?}, expected {:?}",
            model.name,
            model.predict(&x)
        );
    }
}

#[test]
fn hundreds_of_models_under_a_tight_budget_are_evicted_reloaded_and_answer_correctly() {
    let repo = tempfile::tempdir().unwrap();
    let models = write_repository(repo.path(), MODELS);
    // A corrupt file must fail alone, with its cause, and disturb no other model.
    std::fs::create_dir_all(repo.path().join("corrupt/1")).unwrap();
    std::fs::write(
        repo.path().join("corrupt/1/model.onnx"),
        b"not an onnx file",
    )
    .unwrap();
    let http = client();

    // Measure one model's footprint on an unlimited server, then budget for RESIDENT of them.
    let footprint = {
        let mut args = serve_args(repo.path());
        args.load_policy = Some(LoadPolicy::Lazy);
        args.memory_budget = Some("none".into());
        let probe = start(args);
        infer(&http, &probe.url(""), &models[0], [1.0, 2.0, 3.0, 4.0]);
        let text = metrics_text(&probe);
        metric(
            &text,
            "modelpod_model_footprint_bytes",
            &[("model", "linear_00000")],
        ) as u64
    };
    assert!(footprint > 0, "the footprint was not measured");
    let budget = footprint * RESIDENT;

    let mut args = serve_args(repo.path());
    args.load_policy = Some(LoadPolicy::Lazy);
    args.memory_budget = Some(budget.to_string());
    let server = start(args);
    let url = server.url("");
    // Lazy: nothing loaded, yet ready (no model failed, none was due at start).
    assert_eq!(
        http.get(server.url("/v2/health/ready"))
            .send()
            .unwrap()
            .status(),
        200
    );

    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let http = client();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= 2 * MODELS {
                        return;
                    }
                    let model = &models[i % MODELS];
                    infer(&http, &url, model, [i as f32 * 0.01, 1.0, -1.0, 0.5]);
                }
            });
        }
    });

    let corrupt = http
        .post(server.url("/v2/models/corrupt/infer"))
        .json(&json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0] }] }))
        .send()
        .unwrap();
    assert_eq!(corrupt.status(), 503);
    let body: Value = corrupt.json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("failed to load"),
        "{body}"
    );
    // Still answering after the corrupt model's failure.
    infer(&http, &url, &models[7], [0.0; INPUTS]);

    let text = metrics_text(&server);
    let ready = metric(&text, "modelpod_models", &[("state", "ready")]);
    let used = metric(&text, "modelpod_memory_used_bytes", &[("device", "host")]);
    let evictions = metric(&text, "modelpod_model_evictions_total", &[]);
    assert!(
        ready < MODELS as f64 / 2.0,
        "{ready} models resident: nothing was evicted"
    );
    assert!(
        used <= budget as f64,
        "{used} bytes held over a budget of {budget}"
    );
    assert!(
        evictions >= MODELS as f64,
        "{evictions} evictions for {} loads",
        2 * MODELS
    );
}

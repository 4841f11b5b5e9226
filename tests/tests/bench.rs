//! `modelpod bench` against a real server: closed and open loop, every protocol, error
//! accounting, and the server-side figures it reads from `/metrics`.

use modelpod_bench::{BenchArgs, PointResult, Protocol, run};
use modelpod_tests::{fixtures, serve_args, start};
use std::time::Duration;

fn args(url: String, model: &str, protocol: Protocol) -> BenchArgs {
    BenchArgs {
        url,
        model: model.into(),
        protocol,
        concurrency: vec![],
        rate: vec![],
        duration: Duration::from_millis(800),
        requests: None,
        warmup: Duration::from_millis(200),
        batch: vec![1],
        in_process: false,
        model_repository: None,
        model_version: 1,
        backend: Default::default(),
        shapes: vec![],
        input: None,
        save_inputs: None,
        cycle_models: None,
        api_key: None,
        max_in_flight: 1024,
        compare: None,
        rounds: 2,
        shed_within: None,
        json: None,
        markdown: None,
        plot: None,
        no_progress: true,
    }
}

fn bench(args: BenchArgs) -> Vec<PointResult> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(args, &mut std::io::sink()))
        .unwrap()
}

#[test]
fn closed_loop_sweep_on_every_protocol() {
    let server = start(serve_args(&fixtures()));
    for protocol in [Protocol::V2Binary, Protocol::V2, Protocol::Azure] {
        let mut a = args(server.url(""), "mlp", protocol);
        a.concurrency = vec![1, 4];
        a.batch = vec![2];
        let results = bench(a);
        assert_eq!(results.len(), 2);
        for r in &results {
            assert!(r.succeeded > 20, "{protocol:?}: {r:?}");
            assert!(r.errors.is_empty(), "{protocol:?}: {:?}", r.errors);
            assert!((r.rows_per_s - 2.0 * r.requests_per_s).abs() < 1e-6);
            assert!(r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.max_us);
            assert!(r.server_compute_mean_us.is_some_and(|c| c > 0.0), "{r:?}");
        }
    }
}

#[test]
fn open_loop_holds_the_rate_and_counts_from_the_intended_time() {
    let server = start(serve_args(&fixtures()));
    let mut a = args(server.url(""), "embed", Protocol::V2Binary);
    a.rate = vec![200.0];
    a.shapes = vec!["5".into()];
    a.duration = Duration::from_secs(1);
    let r = &bench(a)[0];
    assert!((180..=220).contains(&r.succeeded), "{r:?}");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

#[test]
fn request_count_mode_and_error_accounting() {
    let mut server_args = serve_args(&fixtures());
    server_args.api_keys = vec!["k".into()];
    let server = start(server_args);
    // Without the key every request is a 401, counted, not timed.
    let mut a = args(server.url(""), "mlp", Protocol::V2);
    a.requests = Some(50);
    a.concurrency = vec![2];
    a.input = Some(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mlp_request.json"),
    );
    let r = &bench(a.clone())[0];
    assert_eq!(r.errors.get("401"), Some(&50), "{r:?}");
    assert_eq!(r.succeeded, 0);
    a.api_key = Some("k".into());
    let r = &bench(a)[0];
    assert_eq!(r.succeeded, 50, "{r:?}");
}

#[test]
fn in_process_mode_sweeps_batch_sizes_without_a_server() {
    let mut a = args(String::new(), "cnn", Protocol::V2Binary);
    a.in_process = true;
    a.model_repository = Some(fixtures());
    a.batch = vec![1, 4];
    let results = bench(a);
    assert_eq!(
        results.iter().map(|r| r.batch).collect::<Vec<_>>(),
        vec![1, 4]
    );
    for r in &results {
        assert!(r.succeeded > 10, "{r:?}");
        assert!((r.rows_per_s - r.requests_per_s * r.batch as f64).abs() < 1e-6);
    }
}

#[test]
fn compare_mode_measures_both_targets_alternately() {
    let first = start(serve_args(&fixtures()));
    let mut slow_args = serve_args(&fixtures());
    // A second, differently configured server (one request scored at a time).
    slow_args.max_concurrent_requests = Some(1);
    let second = start(slow_args);
    let mut a = args(first.url(""), "mlp", Protocol::V2Binary);
    a.compare = Some(second.url(""));
    a.concurrency = vec![4];
    a.duration = std::time::Duration::from_millis(500);
    a.warmup = std::time::Duration::from_millis(100);
    let out = tempfile::tempdir().unwrap();
    a.markdown = Some(out.path().join("compare.md"));
    let results = bench(a);
    // Two rounds, each target once per round.
    assert_eq!(results.len(), 4);
    // One table row per load level, with the ratio and the added p50.
    let markdown = std::fs::read_to_string(out.path().join("compare.md")).unwrap();
    assert_eq!(markdown.lines().count(), 3, "{markdown}");
    assert!(
        markdown.contains("B − A p50") && markdown.contains("| concurrency 4 |"),
        "{markdown}"
    );
    assert!(
        results
            .iter()
            .all(|r| r.succeeded > 10 && r.errors.is_empty()),
        "{results:?}"
    );
}

#[test]
fn sweep_writes_json_markdown_and_a_png_plot() {
    let server = start(serve_args(&fixtures()));
    let out = tempfile::tempdir().unwrap();
    let mut a = args(server.url(""), "mlp", Protocol::V2Binary);
    a.concurrency = vec![1, 2, 4];
    a.duration = std::time::Duration::from_millis(300);
    a.warmup = std::time::Duration::from_millis(100);
    a.json = Some(out.path().join("r.json"));
    a.markdown = Some(out.path().join("r.md"));
    a.plot = Some(out.path().join("r.png"));
    a.save_inputs = Some(out.path().join("inputs.json"));
    bench(a);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(json["points"].as_array().unwrap().len(), 3);
    let markdown = std::fs::read_to_string(out.path().join("r.md")).unwrap();
    assert_eq!(markdown.lines().count(), 5);
    let png = std::fs::read(out.path().join("r.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 5_000,
        "an empty-looking plot: {} bytes",
        png.len()
    );
    // perf_analyzer's --input-data format: one request, the row's shape without the batch.
    let inputs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("inputs.json")).unwrap()).unwrap();
    let x = &inputs["data"][0]["input"];
    assert_eq!(x["shape"], serde_json::json!([4]));
    assert_eq!(
        x["content"]["b64"].as_str().unwrap().len(),
        24,
        "16 bytes in base64"
    );
}

#[test]
fn cycle_mode_sends_each_request_to_the_next_model() {
    let repo = tempfile::tempdir().unwrap();
    let models = modelpod_tests::linear_models::write_repository(repo.path(), 5);
    let server = start(serve_args(repo.path()));
    let list = repo.path().join("models.txt");
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    std::fs::write(&list, names.join("\n")).unwrap();
    let mut a = args(server.url(""), names[0], Protocol::V2Binary);
    a.cycle_models = Some(list);
    a.concurrency = vec![1];
    a.requests = Some(50);
    a.warmup = Duration::ZERO;
    let points = bench(a);
    assert!(points[0].errors.is_empty(), "{:?}", points[0].errors);
    assert_eq!(points[0].succeeded, 50);
    let text = modelpod_tests::metrics_text(&server);
    for name in names {
        let served =
            modelpod_tests::metric_sum(&text, "modelpod_requests_total", &[("model", name)])
                .unwrap_or(0.0);
        assert_eq!(served, 10.0, "{name} got {served} of 50 requests");
    }
}

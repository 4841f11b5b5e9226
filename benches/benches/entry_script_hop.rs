//! What the Rust↔Python channel of an entry-script worker costs per call: round trips of ECHO
//! frames (the socket, the framing and the worker's loop, no script), and full calls of a
//! light score.py (the channel plus Azure's request handling and run()), each timed one at a
//! time from the service's API, as the HTTP handler calls it.
//!
//!   cargo bench -p modelpod-benches --bench entry_script_hop      (needs scripts/setup.sh)
//!
//! Prints a Markdown table of p50 / p99 / mean in microseconds.

use hdrhistogram::Histogram;
use modelpod_serve::entry_script::{EntryScriptConfig, EntryScriptService, ScriptRequest};
use std::path::Path;
use std::time::{Duration, Instant};

const WARMUP: usize = 2_000;
const CALLS: usize = 20_000;

const SCRIPT: &str = "import json\n\ndef init():\n    pass\n\ndef run(raw_data):\n    return {\"result\": json.loads(raw_data)[\"data\"]}\n";

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = root.join(".venv/bin/python");
    assert!(python.is_file(), "run scripts/setup.sh first");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("score.py"), SCRIPT).unwrap();
    let config = EntryScriptConfig {
        name: "hop".into(),
        inference_config: dir.path().join("inferenceconfig.json"),
        app_root: dir.path().to_path_buf(),
        entry_script: "score.py".into(),
        model_dir: dir.path().to_path_buf(),
        python,
        workers: 1,
        environment: Default::default(),
        scoring_timeout: Duration::from_secs(60),
        start_timeout: Duration::from_secs(60),
        notes: Vec::new(),
    };
    let service = EntryScriptService::start(config, None).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while service.unready_reason().is_some() {
        assert!(Instant::now() < until, "{:?}", service.unready_reason());
        std::thread::sleep(Duration::from_millis(20));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = br#"{"data": [1, 2, 3, 4]}"#.to_vec();
    let request = ScriptRequest {
        id: "bench".into(),
        method: "POST".into(),
        path: "/score".into(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        host: "127.0.0.1".into(),
        port: 5001,
        scheme: "http".into(),
        peer: "127.0.0.1".into(),
        body: body.clone(),
    };
    let far = || Instant::now() + Duration::from_secs(10);
    let measure = |name: &str, run: &dyn Fn()| {
        for _ in 0..WARMUP {
            run();
        }
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        for _ in 0..CALLS {
            let started = Instant::now();
            run();
            histogram
                .record(started.elapsed().as_nanos() as u64)
                .unwrap();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            us(histogram.value_at_quantile(0.5)),
            us(histogram.value_at_quantile(0.99)),
            histogram.mean() / 1000.0
        );
    };
    println!("| round trip ({CALLS} calls, one at a time) | p50 µs | p99 µs | mean µs |");
    println!("| --- | ---: | ---: | ---: |");
    measure("ECHO frame, empty payload (the channel)", &|| {
        runtime.block_on(service.echo(Vec::new(), far())).unwrap();
    });
    measure("ECHO frame, 22-byte payload (the channel)", &|| {
        runtime.block_on(service.echo(body.clone(), far())).unwrap();
    });
    measure(
        "CALL of a light score.py (channel + Azure's request handling + run())",
        &|| {
            let reply = runtime
                .block_on(service.call(request.clone(), far(), Duration::from_secs(10)))
                .unwrap();
            assert_eq!(reply.status, 200);
        },
    );
}

//! `modelpod bench --in-process`: the same model through its engine alone — no HTTP, no codecs,
//! no queue — with the instance count and threads of its manifest. This is the ceiling every
//! server figure is read against.

use super::load::LatencySummary;
use super::workload::{DEFAULT_SYMBOLIC_DIM, INPUT_SEED, random_tensor, shape_override};
use super::{BenchArgs, BenchError, PointResult};
use hdrhistogram::Histogram;
use modelpod_accel::{EngineChoice, EngineOptions, Signature, Tensor, load_model, ort_engine};
use modelpod_scoring::manifest::ModelManifest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub fn measure(args: &BenchArgs) -> Result<Vec<PointResult>, BenchError> {
    let repository = args
        .model_repository
        .as_ref()
        .ok_or_else(|| BenchError::Setup("--in-process needs --model-repository".into()))?;
    let model_dir = repository.join(&args.model);
    let manifest =
        ModelManifest::read_from_dir(&model_dir).map_err(|e| BenchError::Setup(e.to_string()))?;
    let file = model_dir
        .join(args.model_version.to_string())
        .join(manifest.file.as_deref().unwrap_or("model.onnx"));
    let choice = manifest.engine.unwrap_or(args.backend);
    if choice != EngineChoice::Tract {
        let _ = ort_engine::init_ort(None);
    }
    let options = EngineOptions {
        intra_op_threads: manifest.intra_op_threads.unwrap_or(1),
        ..EngineOptions::default()
    };
    // The engine `serve` would choose on this node, by the same fallback rule, on its first
    // device.
    let plan = crate::node::NodeReport::gather(&Default::default(), false).plan;
    let candidates = plan
        .for_model(choice, manifest.device, manifest.gpus.as_deref())
        .map_err(BenchError::Setup)?;
    let mut failures = Vec::new();
    let mut model = None;
    for candidate in &candidates {
        match load_model(&file, candidate.engine, candidate.devices[0], &options) {
            Ok(loaded) => {
                model = Some(loaded);
                break;
            }
            Err(e) => {
                failures.push(format!("{}: {e}", candidate.engine));
                if !candidate.falls_back_after(&e) {
                    break;
                }
            }
        }
    }
    let model = model.ok_or_else(|| BenchError::Setup(failures.join("; ")))?;
    let instances = args
        .concurrency
        .first()
        .copied()
        .or(manifest.instances)
        .unwrap_or(1);
    eprintln!(
        "{} v{} in process on {} on {} ({instances} instance(s))",
        args.model,
        args.model_version,
        model.engine(),
        model.device()
    );
    let mut results = Vec::new();
    for &batch in &args.batch {
        let inputs = Arc::new(random_inputs(model.signature(), batch, &args.shapes));
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let threads = (0..instances)
            .map(|_| {
                let mut backend = model
                    .instantiate()
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                let (inputs, stop, measuring) = (inputs.clone(), stop.clone(), measuring.clone());
                Ok(std::thread::spawn(
                    move || -> Result<Histogram<u64>, String> {
                        let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
                            .expect("valid bounds");
                        while !stop.load(Ordering::Relaxed) {
                            let started = Instant::now();
                            backend
                                .run(inputs.as_ref().clone())
                                .map_err(|e| e.to_string())?;
                            if measuring.load(Ordering::Relaxed) {
                                let _ =
                                    latencies.record((started.elapsed().as_micros() as u64).max(1));
                            }
                        }
                        Ok(latencies)
                    },
                ))
            })
            .collect::<Result<Vec<_>, BenchError>>()?;
        std::thread::sleep(args.warmup);
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        std::thread::sleep(args.duration);
        measuring.store(false, Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let mut latencies =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        for thread in threads {
            let own = thread
                .join()
                .expect("bench thread")
                .map_err(BenchError::Setup)?;
            latencies.add(own).expect("same bounds");
        }
        if latencies.is_empty() {
            return Err(BenchError::Setup(format!(
                "no run finished in {seconds:.1} s at batch {batch}"
            )));
        }
        let runs = latencies.len() as f64 / seconds;
        results.push(PointResult {
            concurrency: Some(instances),
            rate: None,
            batch,
            seconds,
            succeeded: latencies.len(),
            errors: BTreeMap::new(),
            client_dropped: 0,
            requests_per_s: runs,
            rows_per_s: runs * batch as f64,
            latency: LatencySummary::of(&latencies),
            server_queue_mean_us: None,
            server_compute_mean_us: None,
        });
    }
    Ok(results)
}

/// Inputs of the signature's types with `batch` rows; other symbolic dimensions from `--shape`.
fn random_inputs(signature: &Signature, batch: usize, shapes: &[String]) -> Vec<Tensor> {
    let mut seed = INPUT_SEED;
    signature
        .inputs
        .iter()
        .map(|spec| {
            let mut overrides = shape_override(shapes, &spec.name)
                .unwrap_or_default()
                .into_iter();
            let shape: Vec<usize> = spec
                .dims
                .iter()
                .enumerate()
                .map(|(i, d)| match (i, d) {
                    (_, Some(d)) => *d,
                    (0, None) => batch,
                    _ => overrides.next().unwrap_or(DEFAULT_SYMBOLIC_DIM),
                })
                .collect();
            random_tensor(spec.dtype, shape, &mut seed)
        })
        .collect()
}

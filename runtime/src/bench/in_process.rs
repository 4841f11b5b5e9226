//! `modelpod bench --in-process`: the same model through its engine alone — no HTTP, no codecs,
//! no queue — with the instance count and threads of its manifest. This is the ceiling every
//! server figure is read against.

use super::{BenchArgs, BenchError, PointResult};
use hdrhistogram::Histogram;
use modelpod_accel::{
    DataType, EngineChoice, EngineOptions, Signature, Tensor, TensorData, load_model, ort_engine,
};
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
        choice,
        intra_op_threads: manifest.intra_op_threads.unwrap_or(1),
    };
    let model = load_model(&file, &options).map_err(|e| BenchError::Setup(e.to_string()))?;
    let instances = args
        .concurrency
        .first()
        .copied()
        .or(manifest.instances)
        .unwrap_or(1);
    eprintln!(
        "{} v{} in process on {} ({instances} instance(s))",
        args.model,
        args.model_version,
        model.engine()
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
            mean_us: latencies.mean(),
            p50_us: latencies.value_at_quantile(0.5),
            p90_us: latencies.value_at_quantile(0.9),
            p99_us: latencies.value_at_quantile(0.99),
            p999_us: latencies.value_at_quantile(0.999),
            max_us: latencies.max(),
            server_queue_mean_us: None,
            server_compute_mean_us: None,
        });
    }
    Ok(results)
}

/// Inputs of the signature's types with `batch` rows; other symbolic dimensions from `--shape`
/// (or 8). Integer inputs stay small so they are valid indices (token ids, classes).
fn random_inputs(signature: &Signature, batch: usize, shapes: &[String]) -> Vec<Tensor> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    signature
        .inputs
        .iter()
        .map(|spec| {
            let mut overrides = super::workload::shape_override(shapes, &spec.name)
                .unwrap_or_default()
                .into_iter();
            let shape: Vec<usize> = spec
                .dims
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    d.unwrap_or_else(|| {
                        if i == 0 {
                            batch
                        } else {
                            overrides.next().unwrap_or(8)
                        }
                    })
                })
                .collect();
            let count = shape.iter().product();
            let data = match spec.dtype {
                DataType::Bool => TensorData::Bool(vec![true; count]),
                d if d.is_float() => {
                    TensorData::Fp64((0..count).map(|_| next() * 2.0 - 1.0).collect()).cast(d)
                }
                d => TensorData::Fp64((0..count).map(|_| (next() * 2.0).floor()).collect()).cast(d),
            };
            Tensor::new(shape, data).expect("count matches shape")
        })
        .collect()
}

//! The in-process ceiling: a model's throughput through its engine alone, with no HTTP, no
//! codecs and no queue, using the same engine, instance count and threads the server would.
//! Every server figure in BENCHMARKS.md is read against this one.
//!
//!     cargo run --release -p modelpod-benches --bin engine-ceiling -- \
//!         --repository examples/models --model image_cnn --batch 1,8,32

use anyhow::{Context, bail};
use clap::Parser;
use modelpod_accel::{
    DataType, EngineChoice, EngineOptions, Tensor, TensorData, load_model, ort_engine,
};
use modelpod_scoring::manifest::ModelManifest;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Model repository.
    #[arg(long)]
    repository: PathBuf,
    /// Model name.
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 1)]
    version: u64,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch: Vec<usize>,
    /// Engine [default: the manifest's, else auto].
    #[arg(long)]
    engine: Option<EngineChoice>,
    /// Concurrent instances [default: the manifest's, else 1].
    #[arg(long)]
    instances: Option<usize>,
    /// ONNX Runtime intra-op threads per instance [default: the manifest's, else 1].
    #[arg(long)]
    intra_op_threads: Option<usize>,
    /// Size for symbolic dimensions other than the batch (sequence lengths).
    #[arg(long, default_value_t = 8)]
    dim: usize,
    /// Seconds measured per batch size, after one second of warm-up.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Print one JSON object per batch size instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let model_dir = args.repository.join(&args.model);
    let manifest = ModelManifest::read_from_dir(&model_dir)?;
    let file = model_dir
        .join(args.version.to_string())
        .join(manifest.file.as_deref().unwrap_or("model.onnx"));
    let choice = args.engine.or(manifest.engine).unwrap_or_default();
    if choice != EngineChoice::Tract {
        let _ = ort_engine::init_ort(None);
    }
    let options = EngineOptions {
        choice,
        intra_op_threads: args
            .intra_op_threads
            .or(manifest.intra_op_threads)
            .unwrap_or(1),
    };
    let model =
        load_model(&file, &options).with_context(|| format!("loading {}", file.display()))?;
    let instances = args.instances.or(manifest.instances).unwrap_or(1);
    if !args.json {
        println!(
            "{} v{} on {} ({} instance(s), {} intra-op thread(s))",
            args.model,
            args.version,
            model.engine(),
            instances,
            options.intra_op_threads
        );
        println!(
            "{:>6} {:>12} {:>12} {:>10} {:>10}",
            "batch", "rows/s", "runs/s", "p50 ms", "p99 ms"
        );
    }
    for &batch in &args.batch {
        let inputs = Arc::new(random_inputs(model.signature(), batch, args.dim)?);
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..instances)
            .map(|_| {
                let mut backend = model.instantiate()?;
                let (inputs, stop, measuring) = (inputs.clone(), stop.clone(), measuring.clone());
                Ok(std::thread::spawn(
                    move || -> anyhow::Result<Vec<Duration>> {
                        let mut latencies = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            let started = Instant::now();
                            backend.run(inputs.as_ref().clone())?;
                            if measuring.load(Ordering::Relaxed) {
                                latencies.push(started.elapsed());
                            }
                        }
                        Ok(latencies)
                    },
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        std::thread::sleep(Duration::from_secs(1));
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        measuring.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        for t in threads {
            latencies.extend(t.join().expect("bench thread")?);
        }
        if latencies.is_empty() {
            bail!("no run finished within {} s at batch {batch}", args.seconds);
        }
        latencies.sort();
        let pct = |p: f64| {
            latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
        };
        let runs = latencies.len() as f64 / elapsed;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"model": args.model, "engine": model.engine().as_str(), "instances": instances,
                    "batch": batch, "rows_per_s": runs * batch as f64, "runs_per_s": runs, "p50_ms": pct(0.5), "p99_ms": pct(0.99)})
            );
        } else {
            println!(
                "{batch:>6} {:>12.1} {runs:>12.1} {:>10.3} {:>10.3}",
                runs * batch as f64,
                pct(0.5),
                pct(0.99)
            );
        }
    }
    Ok(())
}

/// Inputs of the signature's types with `batch` rows; other symbolic dimensions get `dim`.
/// Integer inputs stay small so they are valid indices (token ids, classes).
fn random_inputs(
    signature: &modelpod_accel::Signature,
    batch: usize,
    dim: usize,
) -> anyhow::Result<Vec<Tensor>> {
    let mut seed = 0x2545F4914F6CDD1Du64;
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
            let shape: Vec<usize> = spec
                .dims
                .iter()
                .enumerate()
                .map(|(i, d)| d.unwrap_or(if i == 0 { batch } else { dim }))
                .collect();
            let count = shape.iter().product();
            let values: Vec<f64> = (0..count)
                .map(|_| {
                    if spec.dtype.is_float() {
                        next() * 2.0 - 1.0
                    } else {
                        (next() * 100.0).floor()
                    }
                })
                .collect();
            let data = match spec.dtype {
                // Masks and boolean inputs: all set.
                DataType::Bool => TensorData::Bool(vec![true; count]),
                dtype => TensorData::Fp64(values).cast(dtype),
            };
            Ok(Tensor::new(shape, data)?)
        })
        .collect()
}

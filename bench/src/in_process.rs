//! `modelpod bench --in-process`: the model served in this process, through the same registry
//! (model-file choice, engine fallback, instances, batching) and the same scoring API
//! ([`Scorer`]: admission, deadline, busy state) as `modelpod serve`, with no HTTP and no body
//! codec. Set beside a run over HTTP on the same model, the ratio is what the transport and
//! codecs cost.

use super::load::LatencySummary;
use super::workload::{TensorShape, shaped_inputs};
use super::{BenchArgs, BenchError, PointResult};
use hdrhistogram::Histogram;
use modelpod_accel::node::NodeReport;
use modelpod_accel::{EngineChoice, Tensor, ort_engine};
use modelpod_scoring::{Registry, RegistryConfig, Scorer, ScoringLimits, ServedModel};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub async fn measure(args: &BenchArgs) -> Result<Vec<PointResult>, BenchError> {
    let repository = args
        .model_repository
        .clone()
        .ok_or_else(|| BenchError::Setup("--in-process needs --model-repository".into()))?;
    if args.backend != EngineChoice::Tract {
        let _ = ort_engine::init_ort(None);
    }
    let concurrency = args.concurrency.clone();
    let concurrency = if concurrency.is_empty() {
        vec![1]
    } else {
        concurrency
    };
    let most = *concurrency.iter().max().expect("at least one level");
    let scorer = Arc::new(open_scorer(args, repository, most).await?);
    let model = scorer
        .model(&args.model, Some(args.model_version), Instant::now())
        .await
        .map_err(|e| BenchError::Setup(format!("model '{}': {e}", args.model)))?;
    eprintln!(
        "{} v{} in process on {} ({} instance(s), through the scoring API)",
        model.name, model.version, model.engine, model.instances
    );
    let batched = model.policy.batches();
    let mut results = Vec::new();
    for &batch in &args.batch {
        let specs: Vec<TensorShape> = model
            .signature
            .inputs
            .iter()
            .map(|spec| TensorShape {
                name: spec.name.clone(),
                dtype: spec.dtype,
                dims: spec
                    .dims
                    .iter()
                    .map(|d| d.map(|d| d as i64).unwrap_or(-1))
                    .collect(),
            })
            .collect();
        let inputs = model.order_inputs(shaped_inputs(
            &specs,
            batched.then_some(batch),
            &args.shapes,
        )?)?;
        for &clients in &concurrency {
            results.push(point(args, &scorer, &model, &inputs, clients, batch).await?);
        }
    }
    Ok(results)
}

/// A registry over the repository with the engine plan `serve` would use on this node, and a
/// scorer that admits every client at once.
async fn open_scorer(
    args: &BenchArgs,
    repository: std::path::PathBuf,
    clients: usize,
) -> Result<Scorer, BenchError> {
    let plan = NodeReport::gather(&Default::default(), false, None).plan;
    let mut config = RegistryConfig::new(repository, args.backend);
    config.plan = plan;
    let registry = tokio::task::spawn_blocking(move || Registry::open(config))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let limits = ScoringLimits {
        max_concurrent_requests: clients,
        max_queue_wait: Duration::from_secs(60),
        scoring_timeout: Duration::from_secs(600),
        ..ScoringLimits::default()
    };
    let scorer = Scorer::new(Arc::new(registry), limits, false);
    scorer.finish_start_up();
    Ok(scorer)
}

/// `clients` closed loops of one request each, through [`Scorer::infer`].
async fn point(
    args: &BenchArgs,
    scorer: &Arc<Scorer>,
    model: &Arc<ServedModel>,
    inputs: &[Tensor],
    clients: usize,
    batch: usize,
) -> Result<PointResult, BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..clients)
        .map(|_| {
            let (scorer, model, inputs) = (scorer.clone(), model.clone(), inputs.to_vec());
            let (stop, measuring) = (stop.clone(), measuring.clone());
            tokio::spawn(async move {
                let mut latencies =
                    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
                let mut errors = BTreeMap::<String, u64>::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let outcome = scorer.infer(&model, inputs.clone(), started).await;
                    if !measuring.load(Ordering::Relaxed) {
                        continue;
                    }
                    match outcome {
                        Ok(_) => {
                            let _ = latencies.record((started.elapsed().as_micros() as u64).max(1));
                        }
                        Err(e) => *errors.entry(e.kind().to_string()).or_default() += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latencies =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    let mut errors = BTreeMap::new();
    for handle in loops {
        let (own, own_errors) = handle.await.map_err(|e| BenchError::Setup(e.to_string()))?;
        latencies.add(own).expect("same bounds");
        for (kind, count) in own_errors {
            *errors.entry(kind).or_default() += count;
        }
    }
    if latencies.is_empty() {
        return Err(BenchError::Setup(format!(
            "no request finished in {seconds:.1} s at batch {batch}: {errors:?}"
        )));
    }
    let requests = latencies.len() as f64 / seconds;
    Ok(PointResult {
        concurrency: Some(clients),
        rate: None,
        batch,
        seconds,
        succeeded: latencies.len(),
        errors,
        client_dropped: 0,
        requests_per_s: requests,
        rows_per_s: requests * batch as f64,
        latency: LatencySummary::of(&latencies),
        server_queue_mean_us: None,
        server_compute_mean_us: None,
        goodput_per_s: requests,
        shed: None,
    })
}

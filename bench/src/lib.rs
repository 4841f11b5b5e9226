//! `modelpod bench`: a load generator for modelpod's routes (Azure `/score`, v2 JSON, v2 binary
//! tensors) and any other Open Inference Protocol v2 server.
//!
//! Closed loop (fixed concurrency) and open loop (fixed request rate, latency measured from each
//! request's intended send time so queueing is not hidden by coordinated omission); warm-up;
//! fixed duration or request count; sweeps; HDR histograms; errors by status code; the server's
//! own queue and compute time read from `/metrics` before and after each point.

mod in_process;
mod load;
mod pace;
mod plot;
mod report;
mod workload;

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

pub use load::{LoadMode, PointResult};
pub use workload::Workload;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Azure ML v1: POST /score?model=M with {"data": ...}.
    Azure,
    /// Open Inference Protocol v2 with JSON tensors.
    V2,
    /// Open Inference Protocol v2 with the binary tensor data extension (as perf_analyzer sends).
    V2Binary,
}

/// `modelpod bench`: measure a serving endpoint.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the target, e.g. http://127.0.0.1:5001 (not used with --in-process).
    #[arg(required_unless_present = "in_process", default_value = "")]
    pub url: String,
    /// Model to call.
    #[arg(long, env = "MODELPOD_BENCH_MODEL")]
    pub model: String,
    /// Route and encoding.
    #[arg(long, value_enum, default_value = "v2-binary")]
    pub protocol: Protocol,
    /// Closed loop: concurrency levels to sweep, comma-separated [default: 1].
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    pub concurrency: Vec<usize>,
    /// Open loop: request rates (per second) to sweep, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Measurement time per point (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Measure this many requests per point instead of a fixed time.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Unmeasured load before each point.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Rows per request; with --in-process, batch sizes to sweep (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Serve the model in this process through the scoring API (registry, batcher, admission),
    /// with no HTTP and no body codec; --concurrency sets the concurrent callers.
    #[arg(long, requires = "model_repository")]
    pub in_process: bool,
    /// Model repository for --in-process.
    #[arg(long)]
    pub model_repository: Option<PathBuf>,
    /// Model version for --in-process.
    #[arg(long, default_value_t = 1)]
    pub model_version: u64,
    /// Engine for --in-process when the manifest names none.
    #[arg(long, default_value = "auto")]
    pub backend: modelpod_accel::EngineChoice,
    /// Sizes of an input's dynamic dimensions (sequence lengths, image sizes), the batch's
    /// excluded, as NAME:D1,D2, or D1,D2 for every input. Required for every dynamic dimension
    /// other than the batch.
    #[arg(long = "shape")]
    pub shapes: Vec<String>,
    /// Send this file as the request body instead of generating one.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Send each request to the next model named in this file (one per line), round robin;
    /// the request body is built for `--model`, so the models must share its inputs.
    #[arg(long, conflicts_with_all = ["in_process", "compare"])]
    pub cycle_models: Option<PathBuf>,
    /// Also write the generated v2 inputs as a perf_analyzer `--input-data` file, so both
    /// tools can send the same tensor values (their cost can depend on the values).
    #[arg(long, conflicts_with = "input")]
    pub save_inputs: Option<PathBuf>,
    /// Bearer key or token.
    #[arg(long, env = "MODELPOD_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Compare mode: a second target (same model and settings), measured alternately with the
    /// first at every point; the report gives second / first ratios.
    #[arg(long, conflicts_with = "in_process")]
    pub compare: Option<String>,
    /// Compare mode: alternations per point (A, B, A, B, ...); figures are averaged over them.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Open loop: most requests in flight before new sends count as client-side drops.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Overload runs: also report the share of 503 answers that came within this long of
    /// their send (maxQueueWaitMs plus a margin, to check that shedding is prompt).
    #[arg(long, value_parser = parse_duration)]
    pub shed_within: Option<Duration>,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw latency percentiles against throughput across the sweep as a PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the results as a Markdown table.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// No progress bar (also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Scoring(#[from] modelpod_scoring::ScoringError),
}

/// Refuses combinations that would measure something else than asked, or drop an output.
fn check(args: &BenchArgs) -> Result<(), BenchError> {
    if args.batch.contains(&0) {
        return Err(BenchError::Setup("--batch must be at least 1".into()));
    }
    if args.save_inputs.is_some() && (args.protocol == Protocol::Azure || args.in_process) {
        return Err(BenchError::Setup(
            "--save-inputs writes the v2 tensors sent over HTTP, for perf_analyzer: use it with --protocol v2 or v2-binary".into(),
        ));
    }
    Ok(())
}

/// Parses `10s`, `1.5s`, `250ms`, `2m` (humantime's units) or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("'{text}' is not a duration"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration (e.g. 10s, 250ms, 1.5s): {e}"))
}

/// Runs the sweep, prints its table to `out` and writes the files asked for.
pub async fn run(
    args: BenchArgs,
    out: &mut dyn std::io::Write,
) -> Result<Vec<PointResult>, BenchError> {
    check(&args)?;
    if args.in_process {
        let results = in_process::measure(&args).await?;
        return finish(&args, &format!("{} in process", args.model), &results, out)
            .map(|()| results);
    }
    if args.batch.len() != 1 {
        return Err(BenchError::Setup(
            "over HTTP, give one --batch size per run".into(),
        ));
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .tcp_nodelay(true)
        .build()?;
    let workload = Workload::prepare(&client, &args).await?;
    let other = match &args.compare {
        Some(url) => Some(
            Workload::prepare(
                &client,
                &BenchArgs {
                    url: url.clone(),
                    ..args.clone()
                },
            )
            .await?,
        ),
        None => None,
    };
    let modes: Vec<LoadMode> = if !args.rate.is_empty() {
        args.rate.iter().map(|&r| LoadMode::Rate(r)).collect()
    } else if args.concurrency.is_empty() {
        vec![LoadMode::Concurrency(1)]
    } else {
        args.concurrency
            .iter()
            .map(|&c| LoadMode::Concurrency(c))
            .collect()
    };
    for mode in &modes {
        if matches!(mode, LoadMode::Concurrency(0))
            || matches!(mode, LoadMode::Rate(r) if !(*r > 0.0 && r.is_finite()))
        {
            return Err(BenchError::Setup(format!("invalid load level {mode}")));
        }
    }
    eprintln!("{}", workload.describe());
    if let Some(other) = other {
        eprintln!("compared with {}", other.describe());
        let mut pairs = Vec::new();
        for mode in modes {
            let (mut first, mut second) = (Vec::new(), Vec::new());
            for _ in 0..args.rounds.max(1) {
                first.push(load::measure(&client, &workload, &args, mode).await?);
                second.push(load::measure(&client, &other, &args, mode).await?);
            }
            pairs.push(report::Comparison::new(mode, first, second));
        }
        writeln!(
            out,
            "{}",
            report::comparison_table(&workload.infer_url, &other.infer_url, &pairs)
        )?;
        if let Some(path) = &args.markdown {
            std::fs::write(path, report::comparison_markdown(&pairs))?;
        }
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&serde_json::json!({
                "first": workload.infer_url, "second": other.infer_url, "model": args.model, "points": pairs,
            })).expect("serialisable"))?;
        }
        return Ok(pairs
            .into_iter()
            .flat_map(|p| p.first.into_iter().chain(p.second))
            .collect());
    }
    let mut results = Vec::new();
    for mode in modes {
        let result = load::measure(&client, &workload, &args, mode).await?;
        results.push(result);
    }
    finish(&args, &workload.infer_url, &results, out)?;
    Ok(results)
}

fn finish(
    args: &BenchArgs,
    target: &str,
    results: &[PointResult],
    out: &mut dyn std::io::Write,
) -> Result<(), BenchError> {
    writeln!(out, "{}", report::table(results))?;
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(args, target, results))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report::markdown(results))?;
    }
    if let Some(path) = &args.plot {
        plot::latency_vs_throughput(
            path,
            &format!("{}: latency vs throughput ({target})", args.model),
            results,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(line: &[&str]) -> BenchArgs {
        Cli::parse_from(std::iter::once("bench").chain(line.iter().copied())).bench
    }

    #[test]
    fn saving_inputs_where_none_would_be_written_is_refused() {
        let azure = args(&[
            "http://x",
            "--model",
            "m",
            "--protocol",
            "azure",
            "--save-inputs",
            "f",
        ]);
        let refused = check(&azure).unwrap_err().to_string();
        assert!(refused.contains("--save-inputs"), "{refused}");
        assert!(check(&args(&["http://x", "--model", "m", "--save-inputs", "f"])).is_ok());
        assert!(check(&args(&["http://x", "--model", "m", "--batch", "0"])).is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("-1s").is_err());
    }
}

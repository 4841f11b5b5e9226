//! Driving the load: closed loop (N callers, each sending its next request when the last one
//! answers) and open loop (requests sent on a fixed schedule whatever the answers do, latency
//! counted from the scheduled time).

use super::{BenchArgs, BenchError, Workload};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadMode {
    Concurrency(usize),
    Rate(f64),
}

impl fmt::Display for LoadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadMode::Concurrency(c) => write!(f, "concurrency {c}"),
            LoadMode::Rate(r) => write!(f, "rate {r}/s"),
        }
    }
}

/// One measured point of a sweep. Latencies are in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct PointResult {
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    /// Rows per request (per engine run in process).
    pub batch: usize,
    pub seconds: f64,
    pub succeeded: u64,
    /// Failed requests by HTTP status, or `connection` when no answer came.
    pub errors: BTreeMap<String, u64>,
    /// Open loop: sends skipped because `--max-in-flight` requests were outstanding.
    pub client_dropped: u64,
    pub requests_per_s: f64,
    pub rows_per_s: f64,
    #[serde(flatten)]
    pub latency: LatencySummary,
    /// Mean time requests spent queued / computing inside the server during the point, from
    /// its `/metrics` (modelpod only).
    pub server_queue_mean_us: Option<f64>,
    pub server_compute_mean_us: Option<f64>,
    /// Successful answers per second.
    pub goodput_per_s: f64,
    /// How long 503 answers (load shed) took, when there were any.
    pub shed: Option<ShedSummary>,
}

/// The 503 answers of a point: how promptly an overloaded server refused.
#[derive(Debug, Clone, Serialize)]
pub struct ShedSummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The share that came within `--shed-within` of their send.
    pub within_share: Option<f64>,
}

/// Latency percentiles of successful requests, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(latencies: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            mean_us: latencies.mean(),
            p50_us: latencies.value_at_quantile(0.5),
            p90_us: latencies.value_at_quantile(0.9),
            p99_us: latencies.value_at_quantile(0.99),
            p999_us: latencies.value_at_quantile(0.999),
            max_us: latencies.max(),
        }
    }
}

/// What every sender records into.
struct Recorder {
    latencies: Mutex<Histogram<u64>>,
    /// Latencies of 503 answers.
    shed: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    window_start: Instant,
}

impl Recorder {
    fn new(window_start: Instant) -> Recorder {
        Recorder {
            latencies: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
            shed: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
            errors: Mutex::new(BTreeMap::new()),
            window_start,
        }
    }

    /// Sends one request; records it if `counted_from` (its start, or its intended start in
    /// open loop) falls in the measurement window.
    async fn send(&self, client: &reqwest::Client, workload: &Workload, counted_from: Instant) {
        let outcome = match workload.request(client).send().await {
            Ok(response) => {
                let status = response.status();
                // Read the whole body: the answer is not complete before it.
                match response.bytes().await {
                    Ok(_) if status.is_success() => Ok(()),
                    Ok(_) => Err(status.as_u16().to_string()),
                    Err(_) => Err("connection".to_string()),
                }
            }
            Err(_) => Err("connection".to_string()),
        };
        if counted_from < self.window_start {
            return;
        }
        match outcome {
            Ok(()) => {
                let micros = counted_from.elapsed().as_micros().max(1) as u64;
                let _ = self.latencies.lock().record(micros.min(3_600_000_000));
            }
            Err(kind) => {
                if kind == "503" {
                    let micros = counted_from.elapsed().as_micros().max(1) as u64;
                    let _ = self.shed.lock().record(micros.min(3_600_000_000));
                }
                *self.errors.lock().entry(kind).or_default() += 1
            }
        }
    }
}

pub async fn measure(
    client: &reqwest::Client,
    workload: &Workload,
    args: &BenchArgs,
    mode: LoadMode,
) -> Result<PointResult, BenchError> {
    let before = scrape(client, workload).await;
    let window = Arc::new(Window::new(args));
    let recorder = Arc::new(Recorder::new(window.start));
    let progress = progress_bar(args, mode);
    let ticker = {
        let progress = progress.clone();
        let total = args.warmup + args.duration;
        let started = Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                progress.set_position(
                    (started.elapsed().as_secs_f64() / total.as_secs_f64() * 1000.0).min(1000.0)
                        as u64,
                );
            }
        })
    };
    let mut client_dropped = 0;
    match mode {
        LoadMode::Concurrency(concurrency) => {
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (client, workload, recorder, window) = (
                        client.clone(),
                        workload.clone(),
                        recorder.clone(),
                        window.clone(),
                    );
                    tokio::spawn(async move {
                        loop {
                            let start = Instant::now();
                            if window.closed_for(start) {
                                break;
                            }
                            recorder.send(&client, &workload, start).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
        }
        LoadMode::Rate(rate) => {
            // Sends are paced on a thread of their own (see `pace`) and run on the runtime.
            let runtime = tokio::runtime::Handle::current();
            let (client, workload, recorder, window) = (
                client.clone(),
                workload.clone(),
                recorder.clone(),
                window.clone(),
            );
            let max_in_flight = args.max_in_flight;
            let (tasks, dropped) = tokio::task::spawn_blocking(move || {
                let in_flight = Arc::new(AtomicUsize::new(0));
                let origin = Instant::now();
                let mut tasks = Vec::new();
                let mut dropped = 0;
                for i in 0u64.. {
                    let intended = origin + Duration::from_secs_f64(i as f64 / rate);
                    if window.closed_for(intended) {
                        break;
                    }
                    super::pace::wait_until(intended.into_std());
                    if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                        if intended >= window.start {
                            dropped += 1;
                        }
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let (client, workload, recorder, in_flight) = (
                        client.clone(),
                        workload.clone(),
                        recorder.clone(),
                        in_flight.clone(),
                    );
                    tasks.push(runtime.spawn(async move {
                        recorder.send(&client, &workload, intended).await;
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    }));
                    tasks.retain(|t| !t.is_finished());
                }
                (tasks, dropped)
            })
            .await
            .map_err(|e| BenchError::Setup(format!("the pacing thread: {e}")))?;
            client_dropped = dropped;
            for task in tasks {
                let _ = task.await;
            }
        }
    }
    let seconds = match window.limit {
        Some(_) => window.start.elapsed().as_secs_f64(),
        None => args.duration.as_secs_f64(),
    };
    ticker.abort();
    progress.finish_and_clear();
    let after = scrape(client, workload).await;
    let recorder = Arc::try_unwrap(recorder)
        .ok()
        .expect("all senders finished");
    let latencies = recorder.latencies.into_inner();
    let errors = recorder.errors.into_inner();
    let shed = recorder.shed.into_inner();
    let succeeded = latencies.len();
    let server = |name: &str| -> Option<f64> {
        let (b, a) = (before.as_ref()?, after.as_ref()?);
        let model = if workload.cycles() {
            ""
        } else {
            &workload.model
        };
        let (s0, c0) = histogram_totals(b, name, model);
        let (s1, c1) = histogram_totals(a, name, model);
        (c1 > c0).then(|| (s1 - s0) / (c1 - c0) * 1e6)
    };
    let failed: u64 = errors.values().sum();
    Ok(PointResult {
        concurrency: match mode {
            LoadMode::Concurrency(c) => Some(c),
            LoadMode::Rate(_) => None,
        },
        rate: match mode {
            LoadMode::Rate(r) => Some(r),
            LoadMode::Concurrency(_) => None,
        },
        batch: workload.rows,
        seconds,
        succeeded,
        client_dropped,
        requests_per_s: (succeeded + failed) as f64 / seconds,
        rows_per_s: succeeded as f64 * workload.rows as f64 / seconds,
        latency: LatencySummary::of(&latencies),
        errors,
        server_queue_mean_us: server("modelpod_queue_duration_seconds"),
        server_compute_mean_us: server("modelpod_compute_duration_seconds"),
        goodput_per_s: succeeded as f64 / seconds,
        shed: (!shed.is_empty()).then(|| ShedSummary {
            count: shed.len(),
            p50_us: shed.value_at_quantile(0.5),
            p99_us: shed.value_at_quantile(0.99),
            max_us: shed.max(),
            within_share: args
                .shed_within
                .map(|d| shed.quantile_below(d.as_micros() as u64)),
        }),
    })
}

fn progress_bar(args: &BenchArgs, mode: LoadMode) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    // Hidden automatically when stderr is not a terminal.
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>18} [{bar:40}] {elapsed}/{msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(mode.to_string());
    bar.set_message(format!("{:?}", args.warmup + args.duration));
    bar
}

/// The target's Prometheus text, if it serves `/metrics`.
async fn scrape(client: &reqwest::Client, workload: &Workload) -> Option<String> {
    let response = client
        .get(format!("{}/metrics", workload.base_url))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// The measurement window of one point: warm-up until `start`, then a fixed duration or a
/// fixed number of requests.
struct Window {
    start: Instant,
    end: Instant,
    limit: Option<u64>,
    /// Requests taken inside the window so far, against `limit`.
    taken: AtomicU64,
}

impl Window {
    fn new(args: &BenchArgs) -> Window {
        let start = Instant::now() + args.warmup;
        let end = match args.requests {
            Some(_) => start + Duration::from_secs(24 * 3600),
            None => start + args.duration,
        };
        Window {
            start,
            end,
            limit: args.requests,
            taken: AtomicU64::new(0),
        }
    }

    /// Whether a request due at `at` is one too many: past the end, or past the request
    /// count (a request inside the window is counted as it is taken).
    fn closed_for(&self, at: Instant) -> bool {
        at >= self.end
            || (at >= self.start
                && self
                    .limit
                    .is_some_and(|n| self.taken.fetch_add(1, Ordering::Relaxed) >= n))
    }
}

/// `_sum` and `_count` of a histogram over every series labelled with `model` (every series
/// when `model` is empty).
pub(crate) fn histogram_totals(text: &str, name: &str, model: &str) -> (f64, f64) {
    let label = format!("model=\"{model}\"");
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text
        .lines()
        .filter(|l| model.is_empty() || l.contains(&label))
    {
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if line.starts_with(&format!("{name}_sum{{")) {
            sum += value;
        } else if line.starts_with(&format!("{name}_count{{")) {
            count += value;
        }
    }
    (sum, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_totals_sum_every_series_of_the_model() {
        let text = "x_sum{model=\"m\",version=\"1\"} 1.5\nx_count{model=\"m\",version=\"1\"} 3\n\
                    x_sum{model=\"m\",version=\"2\"} 0.5\nx_count{model=\"m\",version=\"2\"} 1\n\
                    x_sum{model=\"other\"} 9\nx_bucket{model=\"m\",le=\"1\"} 4\n";
        assert_eq!(histogram_totals(text, "x", "m"), (2.0, 4.0));
        assert_eq!(histogram_totals(text, "x", ""), (11.0, 4.0));
    }
}

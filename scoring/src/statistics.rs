//! Triton's statistics extension: per model version, cumulative counts and durations of
//! requests (success, failure, queue, compute input/infer/output) and of executions per batch
//! size, as `GET /v2/models/{m}/stats` and the ModelStatistics RPC report them.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the total time, in nanoseconds, of what it counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatisticDuration {
    pub count: u64,
    pub ns: u64,
}

impl StatisticDuration {
    fn add(&mut self, took: Duration) {
        self.count += 1;
        self.ns += u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    }
}

/// Request statistics, field for field Triton's `InferStatistics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InferStatistics {
    pub success: StatisticDuration,
    pub fail: StatisticDuration,
    pub queue: StatisticDuration,
    pub compute_input: StatisticDuration,
    pub compute_infer: StatisticDuration,
    pub compute_output: StatisticDuration,
    /// modelpod has no response cache: always zero, present because clients read it.
    pub cache_hit: StatisticDuration,
    pub cache_miss: StatisticDuration,
}

/// One batch size's executions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InferBatchStatistics {
    pub batch_size: u64,
    pub compute_input: StatisticDuration,
    pub compute_infer: StatisticDuration,
    pub compute_output: StatisticDuration,
}

/// What is reported for one model version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatisticsSnapshot {
    /// Milliseconds since the Unix epoch of the last request; 0 before any.
    pub last_inference: u64,
    /// Rows inferred successfully (a request of batch 8 counts 8).
    pub inference_count: u64,
    /// Model executions (a dynamic batch of several requests counts once).
    pub execution_count: u64,
    pub inference_stats: InferStatistics,
    pub batch_stats: Vec<InferBatchStatistics>,
}

/// Where a model version's front ends and batcher record; cheap enough for every request.
#[derive(Debug, Default)]
pub struct ModelStatistics {
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    last_inference: u64,
    inference_count: u64,
    execution_count: u64,
    requests: InferStatistics,
    batches: BTreeMap<u64, InferBatchStatistics>,
}

/// How one successful request spent its time.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTimes {
    /// From arrival to the answer being ready.
    pub total: Duration,
    pub queue: Duration,
    /// Decoding the request into tensors (shared memory reads included).
    pub compute_input: Duration,
    pub compute_infer: Duration,
    /// Encoding the answer (shared memory writes and classification included).
    pub compute_output: Duration,
}

impl ModelStatistics {
    /// One engine execution of `batch_size` rows, as the batcher ran it.
    pub fn record_execution(&self, batch_size: usize, infer: Duration) {
        let mut recorded = self.inner.lock();
        recorded.execution_count += 1;
        let batch = recorded
            .batches
            .entry(batch_size as u64)
            .or_insert_with(|| InferBatchStatistics {
                batch_size: batch_size as u64,
                ..Default::default()
            });
        batch.compute_infer.add(infer);
        // Inputs are joined and outputs split inside the execution: no separate time.
        batch.compute_input.add(Duration::ZERO);
        batch.compute_output.add(Duration::ZERO);
    }

    pub fn record_success(&self, rows: usize, times: RequestTimes) {
        let mut recorded = self.inner.lock();
        recorded.last_inference = now_ms();
        recorded.inference_count += rows as u64;
        let requests = &mut recorded.requests;
        requests.success.add(times.total);
        requests.queue.add(times.queue);
        requests.compute_input.add(times.compute_input);
        requests.compute_infer.add(times.compute_infer);
        requests.compute_output.add(times.compute_output);
    }

    pub fn record_failure(&self, total: Duration) {
        let mut recorded = self.inner.lock();
        recorded.last_inference = now_ms();
        recorded.requests.fail.add(total);
    }

    pub fn snapshot(&self) -> StatisticsSnapshot {
        let recorded = self.inner.lock();
        StatisticsSnapshot {
            last_inference: recorded.last_inference,
            inference_count: recorded.inference_count,
            execution_count: recorded.execution_count,
            inference_stats: recorded.requests.clone(),
            batch_stats: recorded.batches.values().cloned().collect(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_executions_are_counted_apart() {
        let stats = ModelStatistics::default();
        stats.record_execution(2, Duration::from_micros(30));
        stats.record_execution(1, Duration::from_micros(10));
        stats.record_execution(2, Duration::from_micros(20));
        let times = RequestTimes {
            total: Duration::from_micros(100),
            queue: Duration::from_micros(5),
            compute_infer: Duration::from_micros(30),
            ..Default::default()
        };
        for _ in 0..3 {
            stats.record_success(2, times);
        }
        stats.record_failure(Duration::from_micros(7));
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.execution_count, 3);
        assert_eq!(snapshot.inference_count, 6);
        assert_eq!(
            snapshot.inference_stats.success,
            StatisticDuration {
                count: 3,
                ns: 300_000
            }
        );
        assert_eq!(
            snapshot.inference_stats.fail,
            StatisticDuration {
                count: 1,
                ns: 7_000
            }
        );
        assert_eq!(snapshot.inference_stats.queue.ns, 15_000);
        let sizes: Vec<u64> = snapshot.batch_stats.iter().map(|b| b.batch_size).collect();
        assert_eq!(sizes, vec![1, 2], "ordered by batch size");
        assert_eq!(
            snapshot.batch_stats[1].compute_infer,
            StatisticDuration {
                count: 2,
                ns: 50_000
            }
        );
        assert!(snapshot.last_inference > 0);
    }
}

//! The dynamic batcher. [`BatchState`] is the batch-selection logic, a plain struct with no
//! threads or clocks of its own; [`Batcher`] drives it from worker threads, each owning one
//! engine session, and answers every requester over its own oneshot channel.
//!
//! Workers wait on a condition variable shared with the submitting side rather than behind a
//! dispatcher thread: a request reaches an idle worker in one wake-up, which matters when the
//! whole server budget for added latency is tens of microseconds.

use crate::error::ScoringError;
use crate::statistics::ModelStatistics;
use modelpod_accel::{Backend, Tensor};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How a model's requests are grouped into batches.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPolicy {
    /// Most rows in one batch; 0 means the model does not batch (one request per run).
    pub max_batch_size: usize,
    /// How long the oldest request may wait for a fuller batch.
    pub max_queue_delay: Duration,
    /// Batch sizes to send as soon as they can be formed, without waiting for the delay.
    pub preferred_batch_sizes: Vec<usize>,
}

impl BatchPolicy {
    pub fn unbatched() -> BatchPolicy {
        BatchPolicy {
            max_batch_size: 0,
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: Vec::new(),
        }
    }

    pub fn batches(&self) -> bool {
        self.max_batch_size > 0
    }
}

/// Requests may share a batch only if every input has the same shape past dimension 0.
pub type BatchKey = Vec<Vec<usize>>;

/// One queued request.
#[derive(Debug)]
pub struct Pending<T> {
    pub key: BatchKey,
    pub rows: usize,
    pub enqueued_at: Instant,
    pub deadline: Option<Instant>,
    pub item: T,
}

/// What a worker should do next.
#[derive(Debug)]
pub enum Selection<T> {
    /// Run these requests as one batch, in this order.
    Run(Vec<Pending<T>>),
    /// Nothing is ready; look again at this instant (or when a request arrives).
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

/// Requests taken out of the queue without running.
#[derive(Debug)]
pub struct Stale<T> {
    /// Their deadline passed while queued.
    pub expired: Vec<Pending<T>>,
    /// Their caller has gone.
    pub abandoned: Vec<Pending<T>>,
}

/// The batch-selection logic: FIFO order, one batch key at a time, never more rows than the
/// maximum, preferred sizes sent at once, anything else after the queue delay.
#[derive(Debug)]
pub struct BatchState<T> {
    policy: BatchPolicy,
    queue: VecDeque<Pending<T>>,
}

impl<T> BatchState<T> {
    pub fn new(policy: BatchPolicy) -> BatchState<T> {
        BatchState {
            policy,
            queue: VecDeque::new(),
        }
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn push(&mut self, pending: Pending<T>) {
        self.queue.push_back(pending);
    }

    /// Removes requests whose deadline has passed or whose caller has gone.
    pub fn remove_stale(&mut self, now: Instant, abandoned: impl Fn(&T) -> bool) -> Stale<T> {
        let mut stale = Stale {
            expired: Vec::new(),
            abandoned: Vec::new(),
        };
        if self
            .queue
            .iter()
            .all(|p| !abandoned(&p.item) && p.deadline.is_none_or(|d| d > now))
        {
            return stale;
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for p in self.queue.drain(..) {
            if abandoned(&p.item) {
                stale.abandoned.push(p);
            } else if p.deadline.is_some_and(|d| d <= now) {
                stale.expired.push(p);
            } else {
                kept.push_back(p);
            }
        }
        self.queue = kept;
        stale
    }

    /// Chooses the next batch, if one is ready at `now`.
    pub fn select(&mut self, now: Instant) -> Selection<T> {
        let Some(head) = self.queue.front() else {
            return Selection::Idle;
        };
        if !self.policy.batches() {
            return Selection::Run(vec![self.queue.pop_front().expect("non-empty")]);
        }
        let max = self.policy.max_batch_size;
        // Walk the queue in order, taking requests of the head's shape that still fit.
        let mut chosen = Vec::new();
        let mut rows = 0;
        // Cumulative row counts after each chosen request, to cut at a preferred size.
        let mut cumulative = Vec::new();
        for (i, p) in self.queue.iter().enumerate() {
            if p.key != head.key || rows + p.rows > max {
                continue;
            }
            chosen.push(i);
            rows += p.rows;
            cumulative.push(rows);
            if rows == max {
                break;
            }
        }
        let oldest_due = head.enqueued_at + self.policy.max_queue_delay;
        let take = if rows == max || now >= oldest_due {
            chosen.len()
        } else if let Some(cut) = cumulative
            .iter()
            .rposition(|r| self.policy.preferred_batch_sizes.contains(r))
        {
            cut + 1
        } else {
            return Selection::WaitUntil(oldest_due);
        };
        Selection::Run(self.take_indices(&chosen[..take]))
    }

    fn take_indices(&mut self, indices: &[usize]) -> Vec<Pending<T>> {
        if indices.len() == self.queue.len() {
            return self.queue.drain(..).collect();
        }
        let mut taken = Vec::with_capacity(indices.len());
        // Indices are increasing; remove from the back so earlier ones stay valid.
        for &i in indices.iter().rev() {
            taken.push(self.queue.remove(i).expect("index from this queue"));
        }
        taken.reverse();
        taken
    }
}

/// A finished request: its own rows of every output, and where its time went.
#[derive(Debug)]
pub struct JobOutput {
    pub outputs: Vec<Tensor>,
    pub queue_time: Duration,
    pub compute_time: Duration,
    pub batch_rows: usize,
}

pub type JobReply = oneshot::Receiver<Result<JobOutput, ScoringError>>;

struct Job {
    inputs: Vec<Tensor>,
    reply: oneshot::Sender<Result<JobOutput, ScoringError>>,
}

struct Shared {
    state: Mutex<BatchState<Job>>,
    wake: Condvar,
    closing: AtomicBool,
    batch_rows: metrics::Histogram,
    abandoned: metrics::Counter,
    statistics: Arc<ModelStatistics>,
}

/// A model's queue and the worker threads that drain it.
pub struct Batcher {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts one worker thread per backend. `labels` tag the batcher's metrics.
    pub fn start(
        thread_name: &str,
        labels: Vec<(String, String)>,
        policy: BatchPolicy,
        backends: Vec<Box<dyn Backend>>,
        statistics: Arc<ModelStatistics>,
    ) -> Batcher {
        let to_labels = |extra: &[(&str, &str)]| -> Vec<metrics::Label> {
            labels
                .iter()
                .map(|(k, v)| metrics::Label::new(k.clone(), v.clone()))
                .chain(
                    extra
                        .iter()
                        .map(|(k, v)| metrics::Label::new(k.to_string(), v.to_string())),
                )
                .collect()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(BatchState::new(policy)),
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
            batch_rows: metrics::histogram!("modelpod_batch_rows", to_labels(&[])),
            abandoned: metrics::counter!("modelpod_requests_abandoned_total", to_labels(&[])),
            statistics,
        });
        let workers = backends
            .into_iter()
            .enumerate()
            .map(|(i, backend)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("{thread_name}#{i}"))
                    .spawn(move || worker_loop(&shared, backend))
                    .expect("spawning a worker thread")
            })
            .collect();
        Batcher {
            shared,
            workers: Mutex::new(workers),
        }
    }

    /// Queues one request. Its inputs are in signature order; with batching, dimension 0 of
    /// each is its row count.
    pub fn submit(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<JobReply, ScoringError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(ScoringError::ModelUnavailable(
                "the model is being unloaded".into(),
            ));
        }
        let mut state = self.shared.state.lock();
        let policy = state.policy();
        let (rows, key) = if policy.batches() {
            let rows = inputs.first().map_or(0, |t| t.rows());
            if rows == 0
                || inputs
                    .iter()
                    .any(|t| t.shape().is_empty() || t.rows() != rows)
            {
                return Err(ScoringError::InvalidInput(
                    "every input needs the same, non-zero number of rows in dimension 0".into(),
                ));
            }
            if rows > policy.max_batch_size {
                return Err(ScoringError::InvalidInput(format!(
                    "batch of {rows} rows exceeds the model's max_batch_size of {}",
                    policy.max_batch_size
                )));
            }
            (
                rows,
                inputs.iter().map(|t| t.row_shape().to_vec()).collect(),
            )
        } else {
            (1, inputs.iter().map(|t| t.shape().to_vec()).collect())
        };
        let (reply, receiver) = oneshot::channel();
        state.push(Pending {
            key,
            rows,
            enqueued_at: Instant::now(),
            deadline,
            item: Job { inputs, reply },
        });
        drop(state);
        self.shared.wake.notify_one();
        Ok(receiver)
    }

    /// Requests waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.shared.state.lock().len()
    }

    /// Stops taking requests, lets the workers finish everything already queued, and joins them.
    pub fn shutdown(&self) {
        {
            // Under the queue lock: a worker checks `closing` and starts waiting atomically
            // with respect to it, so the wake-up below cannot fall between the two.
            let _queue = self.shared.state.lock();
            self.shared.closing.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for handle in self.workers.lock().drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker_loop(shared: &Shared, mut backend: Box<dyn Backend>) {
    loop {
        let batch = {
            let mut state = shared.state.lock();
            loop {
                let now = Instant::now();
                let stale = state.remove_stale(now, |job| job.reply.is_closed());
                shared.abandoned.increment(stale.abandoned.len() as u64);
                for p in stale.expired {
                    let _ = p.item.reply.send(Err(ScoringError::DeadlineExceeded(
                        "the scoring timeout passed while the request was queued".into(),
                    )));
                }
                // Closing: drain without waiting for fuller batches.
                let now = if shared.closing.load(Ordering::Acquire) {
                    now + Duration::from_secs(3600)
                } else {
                    now
                };
                match state.select(now) {
                    Selection::Run(batch) => break batch,
                    Selection::WaitUntil(at) => {
                        shared.wake.wait_until(&mut state, at);
                    }
                    Selection::Idle => {
                        if shared.closing.load(Ordering::Acquire) {
                            return;
                        }
                        shared.wake.wait(&mut state);
                    }
                }
            }
        };
        // More may be ready for another idle worker.
        shared.wake.notify_one();
        run_batch(shared, backend.as_mut(), batch);
    }
}

fn run_batch(shared: &Shared, backend: &mut dyn Backend, mut batch: Vec<Pending<Job>>) {
    let started = Instant::now();
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let total_rows: usize = rows.iter().sum();
    shared.batch_rows.record(total_rows as f64);
    let inputs = if batch.len() == 1 {
        std::mem::take(&mut batch[0].item.inputs)
    } else {
        let joined = (0..batch[0].item.inputs.len())
            .map(|i| {
                Tensor::concat_rows(&batch.iter().map(|p| &p.item.inputs[i]).collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>, _>>();
        match joined {
            Ok(inputs) => inputs,
            Err(e) => {
                return answer_all(batch, ScoringError::Engine(format!("batch assembly: {e}")));
            }
        }
    };
    // A panicking engine must cost this batch, not the worker or the process.
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| backend.run(inputs))).unwrap_or_else(|_| {
            Err(modelpod_accel::EngineError::Run(
                "the engine panicked".into(),
            ))
        });
    let compute_time = started.elapsed();
    let outputs = match result {
        Ok(outputs) => {
            shared.statistics.record_execution(total_rows, compute_time);
            outputs
        }
        // One request's input can fail a whole batch (a token id past the vocabulary, lengths
        // that disagree): each runs again alone, so only the one at fault fails.
        Err(_) if batch.len() > 1 => {
            for pending in batch {
                run_batch(shared, backend, vec![pending]);
            }
            return;
        }
        Err(e) => return answer_all(batch, run_failure(e)),
    };
    if batch.len() == 1 {
        let p = batch.pop().expect("one");
        let _ = p.item.reply.send(Ok(JobOutput {
            outputs,
            queue_time: started.duration_since(p.enqueued_at),
            compute_time,
            batch_rows: total_rows,
        }));
        return;
    }
    if let Some(bad) = outputs
        .iter()
        .find(|t| t.shape().is_empty() || t.rows() != total_rows)
    {
        let message = format!(
            "the model returned {:?} for a batch of {total_rows} rows; its outputs have no batch dimension (set max_batch_size = 0)",
            bad.shape()
        );
        return answer_all(batch, ScoringError::Engine(message));
    }
    let mut start = 0;
    for p in batch {
        let own: Result<Vec<Tensor>, _> = outputs
            .iter()
            .map(|t| t.slice_rows(start, p.rows))
            .collect();
        start += p.rows;
        let _ = p.item.reply.send(
            own.map(|outputs| JobOutput {
                outputs,
                queue_time: started.duration_since(p.enqueued_at),
                compute_time,
                batch_rows: total_rows,
            })
            .map_err(|e| ScoringError::Engine(e.to_string())),
        );
    }
}

/// An engine that fails on one request's input, which passed the signature's checks (names,
/// types, shapes), failed on what the input holds: the client's to fix, 422 with the
/// engine's reason.
fn run_failure(e: modelpod_accel::EngineError) -> ScoringError {
    match e {
        modelpod_accel::EngineError::Run(reason) => {
            ScoringError::InvalidInput(format!("the model cannot run on this input: {reason}"))
        }
        other => other.into(),
    }
}

fn answer_all(batch: Vec<Pending<Job>>, error: ScoringError) {
    for p in batch {
        let _ = p.item.reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize, delay_ms: u64, preferred: &[usize]) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: max,
            max_queue_delay: Duration::from_millis(delay_ms),
            preferred_batch_sizes: preferred.to_vec(),
        }
    }

    fn pending(id: u32, rows: usize, key: usize, at: Instant) -> Pending<u32> {
        Pending {
            key: vec![vec![key]],
            rows,
            enqueued_at: at,
            deadline: None,
            item: id,
        }
    }

    fn ids(selection: Selection<u32>) -> Vec<u32> {
        match selection {
            Selection::Run(batch) => batch.into_iter().map(|p| p.item).collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn full_batch_runs_at_once_and_never_exceeds_max() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(4, 100, &[]));
        for (id, rows) in [(1, 2), (2, 3), (3, 1), (4, 1)] {
            s.push(pending(id, rows, 0, t0));
        }
        // 1 (2 rows) + 3 (1) + 4 (1) = 4; 2 (3 rows) does not fit.
        assert_eq!(ids(s.select(t0)), vec![1, 3, 4]);
        assert!(matches!(s.select(t0), Selection::WaitUntil(_)));
        assert_eq!(ids(s.select(t0 + Duration::from_millis(100))), vec![2]);
        assert!(matches!(s.select(t0), Selection::Idle));
    }

    #[test]
    fn partial_batch_waits_for_the_delay_of_its_oldest_request() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(8, 5, &[]));
        s.push(pending(1, 1, 0, t0));
        s.push(pending(2, 1, 0, t0 + Duration::from_millis(3)));
        match s.select(t0 + Duration::from_millis(4)) {
            Selection::WaitUntil(at) => assert_eq!(at, t0 + Duration::from_millis(5)),
            other => panic!("{other:?}"),
        }
        assert_eq!(ids(s.select(t0 + Duration::from_millis(5))), vec![1, 2]);
    }

    #[test]
    fn zero_delay_runs_whatever_is_queued() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(8, 0, &[]));
        s.push(pending(1, 1, 0, t0));
        s.push(pending(2, 2, 0, t0));
        assert_eq!(ids(s.select(t0)), vec![1, 2]);
    }

    #[test]
    fn incompatible_shapes_never_share_a_batch() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(8, 0, &[]));
        s.push(pending(1, 1, 5, t0));
        s.push(pending(2, 1, 9, t0));
        s.push(pending(3, 1, 5, t0));
        assert_eq!(ids(s.select(t0)), vec![1, 3]);
        assert_eq!(ids(s.select(t0)), vec![2]);
    }

    #[test]
    fn preferred_size_is_sent_without_waiting() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(8, 1000, &[2, 4]));
        s.push(pending(1, 1, 0, t0));
        assert!(matches!(s.select(t0), Selection::WaitUntil(_)));
        s.push(pending(2, 1, 0, t0));
        s.push(pending(3, 1, 0, t0));
        // 3 rows queued: the largest preferred size reachable is 2.
        assert_eq!(ids(s.select(t0)), vec![1, 2]);
    }

    #[test]
    fn unbatched_policy_runs_one_request_at_a_time() {
        let t0 = Instant::now();
        let mut s = BatchState::new(BatchPolicy::unbatched());
        s.push(pending(1, 1, 0, t0));
        s.push(pending(2, 1, 0, t0));
        assert_eq!(ids(s.select(t0)), vec![1]);
        assert_eq!(ids(s.select(t0)), vec![2]);
    }

    #[test]
    fn stale_requests_are_removed_not_run() {
        let t0 = Instant::now();
        let mut s = BatchState::new(policy(8, 0, &[]));
        let mut expiring = pending(1, 1, 0, t0);
        expiring.deadline = Some(t0 + Duration::from_millis(1));
        s.push(expiring);
        s.push(pending(2, 1, 0, t0));
        s.push(pending(3, 1, 0, t0));
        let stale = s.remove_stale(t0 + Duration::from_millis(2), |id| *id == 3);
        assert_eq!(
            stale.expired.iter().map(|p| p.item).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(
            stale.abandoned.iter().map(|p| p.item).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(ids(s.select(t0)), vec![2]);
    }

    /// A backend that returns each input row plus 1000 times its position in the batch, so a
    /// reply holding another caller's rows (or its own rows misplaced) is caught.
    struct TaggingBackend;

    impl Backend for TaggingBackend {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, modelpod_accel::EngineError> {
            let t = &inputs[0];
            let row_len: usize = t.row_shape().iter().product();
            let data: Vec<f64> = t.data().to_f64_vec();
            let tagged: Vec<f64> = data
                .iter()
                .enumerate()
                .map(|(i, x)| x + 1000.0 * (i / row_len) as f64)
                .collect();
            Ok(vec![Tensor::new(t.shape().to_vec(), tagged).unwrap()])
        }
    }

    /// Fails any batch that holds a negative value, as an engine fails on an out-of-range
    /// token id.
    struct PickyBackend;

    impl Backend for PickyBackend {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, modelpod_accel::EngineError> {
            if inputs[0].data().to_f64_vec().iter().any(|x| *x < 0.0) {
                return Err(modelpod_accel::EngineError::Run(
                    "indices element out of data bounds".into(),
                ));
            }
            Ok(inputs)
        }
    }

    #[test]
    fn a_bad_input_fails_alone_not_the_batch_it_shared() {
        let batcher = Batcher::start(
            "test",
            vec![],
            policy(8, 50, &[]),
            vec![Box::new(PickyBackend) as Box<dyn Backend>],
            Default::default(),
        );
        let row = |x: f32| Tensor::new(vec![1, 2], vec![x, x]).unwrap();
        let replies: Vec<_> = [1.0, -1.0, 2.0]
            .into_iter()
            .map(|x| batcher.submit(vec![row(x)], None).unwrap())
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answers: Vec<_> = replies
            .into_iter()
            .map(|reply| runtime.block_on(reply).unwrap())
            .collect();
        assert!(answers[0].is_ok() && answers[2].is_ok());
        match &answers[1] {
            Err(ScoringError::InvalidInput(reason)) => {
                assert!(reason.contains("out of data bounds"), "{reason}")
            }
            other => panic!("{:?}", other.as_ref().err()),
        }
        assert_eq!(
            answers[2].as_ref().unwrap().outputs[0].data().to_f64_vec(),
            [2.0, 2.0]
        );
    }

    #[test]
    fn every_caller_gets_exactly_its_own_rows_from_a_worker_pool() {
        let batcher = Arc::new(Batcher::start(
            "test",
            vec![],
            policy(8, 1, &[]),
            (0..3)
                .map(|_| Box::new(TaggingBackend) as Box<dyn Backend>)
                .collect(),
            Default::default(),
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let batcher = batcher.clone();
                std::thread::spawn(move || {
                    let mut replies = Vec::new();
                    for i in 0..50 {
                        let rows = 1 + (t + i) % 4;
                        let width = 2 + (i % 2); // two shapes that must not share a batch
                        let id = (t * 100 + i) as f64; // < 1000, so a foreign row cannot look like a tagged own row
                        let input = Tensor::new(vec![rows, width], vec![id; rows * width]).unwrap();
                        replies.push((id, rows, width, batcher.submit(vec![input], None).unwrap()));
                    }
                    replies
                })
            })
            .collect();
        let mut answered = 0;
        for thread in threads {
            for (id, rows, width, reply) in thread.join().unwrap() {
                let output = runtime.block_on(reply).unwrap().unwrap();
                assert!(output.batch_rows <= 8);
                let out = &output.outputs[0];
                assert_eq!(out.shape(), &[rows, width]);
                // Rows keep their caller's value; the tag only says where in the batch they ran.
                let values = out.data().to_f64_vec();
                for row in values.chunks(width) {
                    let position = (row[0] - id) / 1000.0;
                    assert!(
                        position >= 0.0 && position.fract() == 0.0 && position < 8.0,
                        "row {row:?} is not request {id}'s"
                    );
                    assert!(row.iter().all(|&v| v == row[0]));
                }
                answered += 1;
            }
        }
        assert_eq!(answered, 400);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Push {
                rows: usize,
                key: usize,
                deadline_ms: Option<u64>,
                gone: bool,
            },
            Advance(u64),
            Select,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (1usize..=6, 0usize..3, proptest::option::of(0u64..20), proptest::bool::weighted(0.1))
                    .prop_map(|(rows, key, deadline_ms, gone)| Op::Push { rows, key, deadline_ms, gone }),
                1 => (0u64..10).prop_map(Op::Advance),
                3 => Just(Op::Select),
            ]
        }

        proptest! {
            /// Every request leaves the queue exactly once (run, expired or abandoned), no batch
            /// exceeds the maximum or mixes keys, and batches keep arrival order within a key.
            #[test]
            fn nothing_lost_nothing_duplicated(
                max in 1usize..=8,
                delay in 0u64..10,
                preferred in proptest::collection::vec(1usize..=8, 0..3),
                ops in proptest::collection::vec(op(), 1..200),
            ) {
                let preferred: Vec<usize> = preferred.into_iter().filter(|&p| p <= max).collect();
                let mut s = BatchState::new(BatchPolicy {
                    max_batch_size: max,
                    max_queue_delay: Duration::from_millis(delay),
                    preferred_batch_sizes: preferred,
                });
                let t0 = Instant::now();
                let mut now = t0;
                let mut next_id = 0u32;
                let mut gone = std::collections::HashSet::new();
                let mut pushed = std::collections::HashMap::new();
                let mut seen = std::collections::HashSet::new();
                let drain = |s: &mut BatchState<u32>, now: Instant, seen: &mut std::collections::HashSet<u32>, gone: &std::collections::HashSet<u32>| -> Result<bool, TestCaseError> {
                    let stale = s.remove_stale(now, |id| gone.contains(id));
                    for p in stale.expired.iter().chain(&stale.abandoned) {
                        prop_assert!(seen.insert(p.item), "request {} left twice", p.item);
                    }
                    for p in &stale.expired {
                        prop_assert!(p.deadline.unwrap() <= now);
                    }
                    match s.select(now) {
                        Selection::Run(batch) => {
                            prop_assert!(!batch.is_empty());
                            prop_assert!(batch.iter().map(|p| p.rows).sum::<usize>() <= max);
                            prop_assert!(batch.iter().all(|p| p.key == batch[0].key));
                            prop_assert!(batch.windows(2).all(|w| w[0].item < w[1].item));
                            for p in &batch {
                                prop_assert!(seen.insert(p.item), "request {} ran twice", p.item);
                            }
                            Ok(true)
                        }
                        Selection::WaitUntil(at) => { prop_assert!(at > now); Ok(false) }
                        Selection::Idle => Ok(false),
                    }
                };
                for op in ops {
                    match op {
                        Op::Push { rows, key, deadline_ms, gone: is_gone } => {
                            let rows = rows.min(max);
                            let id = next_id;
                            next_id += 1;
                            if is_gone { gone.insert(id); }
                            pushed.insert(id, rows);
                            s.push(Pending { key: vec![vec![key]], rows, enqueued_at: now,
                                deadline: deadline_ms.map(|d| now + Duration::from_millis(d)), item: id });
                        }
                        Op::Advance(ms) => now += Duration::from_millis(ms),
                        Op::Select => { drain(&mut s, now, &mut seen, &gone)?; }
                    }
                }
                // Past every delay, the queue drains completely.
                now += Duration::from_secs(1);
                while drain(&mut s, now, &mut seen, &gone)? {}
                prop_assert!(s.is_empty());
                prop_assert_eq!(seen.len(), pushed.len());
            }
        }
    }
}

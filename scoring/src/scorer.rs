//! The scoring API every front end calls, with no transport in it: a request finds its model
//! (loaded on demand within its deadline), waits for a scoring slot (the container's
//! concurrency limit, at most `max_queue_wait` → [`ScoringError::Overloaded`]), is submitted to
//! the model's batcher and awaited until its deadline (→ [`ScoringError::DeadlineExceeded`]).
//! Every step updates the busy state the router polls. The Azure and v2 HTTP handlers, the
//! gRPC service and `bench --in-process` are codecs around [`Scorer`]; none of them admits,
//! queues or times out a request on its own.

use crate::batcher::JobOutput;
use crate::busy::{BusyBoard, BusyGuard, BusyReport};
use crate::deployment::ScoringLimits;
use crate::sequence::SequenceFlags;
use crate::{Registry, ScoringError, ServedModel};
use modelpod_accel::Tensor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// One per server: the registry, the container's limits and the state every request shares.
pub struct Scorer {
    registry: Arc<Registry>,
    limits: ScoringLimits,
    strict_readiness: bool,
    /// maxConcurrentRequestsPerContainer: one permit per request being scored.
    admission: Semaphore,
    /// Requests scoring and waiting, for the router's busy-state polls.
    busy: BusyBoard,
    /// Set once start-up loading has finished, successfully or not.
    loaded: AtomicBool,
    /// How long a slot is held, microseconds, as a moving average: what a request waiting
    /// behind others can expect to wait.
    slot_hold_us: AtomicU64,
    /// What serves beside the registry's models (entry scripts); their readiness is the server's.
    services: parking_lot::RwLock<Vec<Arc<dyn ServiceReadiness>>>,
}

/// Something served beside the registry's ONNX models (an entry-script service), whose
/// readiness counts in the server's.
pub trait ServiceReadiness: Send + Sync {
    /// Why it cannot serve now, or `None` when it can.
    fn unready_reason(&self) -> Option<String>;
}

/// A scoring slot: held from admission until the answer (or the error) is ready.
pub struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    since: Instant,
    hold_us: &'a AtomicU64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let held = self.since.elapsed().as_micros() as u64;
        // An eighth of each new hold: steady under noise, a few dozen requests to follow a change.
        let _ = self
            .hold_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(if old == 0 {
                    held
                } else {
                    old - old / 8 + held / 8
                })
            });
    }
}

impl Scorer {
    /// `strict_readiness`: readiness also needs every registered model to be ready.
    pub fn new(registry: Arc<Registry>, limits: ScoringLimits, strict_readiness: bool) -> Scorer {
        Scorer {
            admission: Semaphore::new(limits.max_concurrent_requests),
            registry,
            limits,
            strict_readiness,
            busy: BusyBoard::default(),
            loaded: AtomicBool::new(false),
            slot_hold_us: AtomicU64::new(0),
            services: parking_lot::RwLock::new(Vec::new()),
        }
    }

    /// Adds a service whose readiness the server's readiness then requires; a server with
    /// one may have no model in its repository.
    pub fn add_service(&self, service: Arc<dyn ServiceReadiness>) {
        self.services.write().push(service);
        self.busy.touch();
    }

    /// 503 for a request arriving now, before anything else is done for it (its body read or
    /// decoded), when no slot is free and the requests already waiting would, at the recent
    /// slot hold time, keep it waiting past maxQueueWaitMs. Under heavy overload this is what
    /// answers within maxQueueWaitMs and keeps the cores for admitted requests.
    pub fn shed_if_hopeless(&self) -> Result<(), ScoringError> {
        if self.hopeless() {
            return Err(self.overloaded());
        }
        Ok(())
    }

    fn hopeless(&self) -> bool {
        if self.admission.available_permits() > 0 {
            return false;
        }
        let hold = Duration::from_micros(self.slot_hold_us.load(Ordering::Acquire));
        let rounds =
            (self.busy.waiting_now() + 1) as f64 / self.limits.max_concurrent_requests as f64;
        hold.mul_f64(rounds) > self.limits.max_queue_wait
    }

    /// The 503 a request gets when no slot frees within maxQueueWaitMs (or when none would).
    fn overloaded(&self) -> ScoringError {
        ScoringError::Overloaded(format!(
            "Too many requests: no scoring slot became free within maxQueueWaitMs = {} ms (maxConcurrentRequestsPerContainer = {})",
            self.limits.max_queue_wait.as_millis(),
            self.limits.max_concurrent_requests
        ))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn limits(&self) -> &ScoringLimits {
        &self.limits
    }

    /// When a request that arrived at `arrival` must have its answer.
    pub fn deadline(&self, arrival: Instant) -> Instant {
        arrival + self.limits.scoring_timeout
    }

    /// Start-up loading is over: readiness may now be reported.
    pub fn finish_start_up(&self) {
        self.loaded.store(true, Ordering::Release);
        self.busy.touch();
    }

    pub fn started_up(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Readiness: start-up loading done, at least one model that can serve (a pod with an
    /// empty or wholly broken repository must not take traffic), and with strict readiness
    /// every model ready.
    pub fn ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// Why the server is not ready, or `None` when it is.
    pub fn unready_reason(&self) -> Option<String> {
        if !self.started_up() {
            return Some("loading models at start-up".into());
        }
        let services = self.services.read();
        if let Some(reason) = services.iter().find_map(|s| s.unready_reason()) {
            return Some(reason);
        }
        let (total, failed) = self.registry.failure_counts();
        if total == 0 && !services.is_empty() {
            return None;
        }
        if total == 0 {
            return Some(format!(
                "the model repository {} holds no model (a model is \
                 <repository>/<name>/<version>/model.onnx)",
                self.registry.repository().display()
            ));
        }
        if failed == total {
            return Some(format!(
                "no model could be loaded (failed: {})",
                self.registry.failed_versions().join(", ")
            ));
        }
        if self.strict_readiness && failed > 0 {
            return Some(format!(
                "strict readiness: models failed to load: {}",
                self.registry.failed_versions().join(", ")
            ));
        }
        None
    }

    pub fn busy(&self) -> &BusyBoard {
        &self.busy
    }

    /// What the router's busy-state poll answers.
    pub fn busy_report(&self) -> BusyReport {
        self.busy.report(self.limits, self.ready())
    }

    /// The served model, loaded on demand (on a blocking thread, within the request's
    /// deadline) when it is registered but not loaded; concurrent callers share one load.
    pub async fn model(
        &self,
        name: &str,
        version: Option<u64>,
        arrival: Instant,
    ) -> Result<Arc<ServedModel>, ScoringError> {
        match self.registry.get(name, version) {
            Err(ScoringError::ModelUnavailable(_))
                if self.registry.loads_on_demand(name, version) =>
            {
                let registry = self.registry.clone();
                let name = name.to_string();
                let deadline = self.deadline(arrival);
                tokio::task::spawn_blocking(move || {
                    registry.acquire(&name, version, Some(deadline))
                })
                .await
                .map_err(|e| ScoringError::Engine(format!("loading the model: {e}")))?
            }
            other => other,
        }
    }

    /// Waits for a scoring slot, at most maxQueueWaitMs; counted as waiting meanwhile.
    pub async fn admit(&self) -> Result<Slot<'_>, ScoringError> {
        let waiting = self.busy.waiting();
        let admitted =
            tokio::time::timeout(self.limits.max_queue_wait, self.admission.acquire()).await;
        drop(waiting);
        match admitted {
            Ok(Ok(permit)) => Ok(Slot {
                _permit: permit,
                since: Instant::now(),
                hold_us: &self.slot_hold_us,
            }),
            Ok(Err(_)) => Err(ScoringError::Overloaded(
                "the server is shutting down".into(),
            )),
            Err(_) => Err(self.overloaded()),
        }
    }

    /// Scores `inputs` on `model` in an admitted slot, until the request's deadline. More
    /// rows than `max_batch_size` are refused, as Triton refuses them over v2. `sequence`
    /// places a stateful model's request in its sequence.
    pub async fn run(
        &self,
        slot: Slot<'_>,
        model: &ServedModel,
        inputs: Vec<Tensor>,
        sequence: Option<SequenceFlags>,
        arrival: Instant,
    ) -> Result<JobOutput, ScoringError> {
        self.run_rows(slot, model, inputs, Submission::Whole(sequence), arrival)
            .await
    }

    /// [`Scorer::run`] for Azure's `/score`, whose clients post bodies of any length: more
    /// rows than `max_batch_size` run as several batches, answered together.
    pub async fn run_any_rows(
        &self,
        slot: Slot<'_>,
        model: &ServedModel,
        inputs: Vec<Tensor>,
        arrival: Instant,
    ) -> Result<JobOutput, ScoringError> {
        self.run_rows(slot, model, inputs, Submission::Split, arrival)
            .await
    }

    async fn run_rows(
        &self,
        slot: Slot<'_>,
        model: &ServedModel,
        inputs: Vec<Tensor>,
        submission: Submission,
        arrival: Instant,
    ) -> Result<JobOutput, ScoringError> {
        let deadline = self.deadline(arrival);
        let _in_flight = InFlight::enter(&self.busy, &model.name);
        let replies = match submission {
            Submission::Split => submit_in_batches(model, inputs, deadline)?,
            Submission::Whole(sequence) => vec![model.submit(inputs, sequence, Some(deadline))?],
        };
        let answers = tokio::time::timeout_at(deadline.into(), async {
            let mut answers = Vec::with_capacity(replies.len());
            for reply in replies {
                answers.push(reply.await);
            }
            answers
        })
        .await;
        drop(slot);
        let Ok(answers) = answers else {
            return Err(ScoringError::DeadlineExceeded(format!(
                "scoring did not finish within scoringTimeoutMs = {} ms",
                self.limits.scoring_timeout.as_millis()
            )));
        };
        let mut parts = Vec::with_capacity(answers.len());
        for answer in answers {
            parts.push(answer.map_err(|_| {
                ScoringError::Engine("the model's worker stopped before answering".into())
            })??);
        }
        joined(parts)
    }

    /// [`Scorer::admit`] then [`Scorer::run`].
    pub async fn infer(
        &self,
        model: &ServedModel,
        inputs: Vec<Tensor>,
        arrival: Instant,
    ) -> Result<JobOutput, ScoringError> {
        let slot = self.admit().await?;
        self.run(slot, model, inputs, None, arrival).await
    }

    /// Refuses every request still waiting for a slot, and all later ones.
    pub fn close_admission(&self) {
        self.admission.close();
    }
}

/// How a request goes to the model's queue.
enum Submission {
    /// As one request (a v2 request: more rows than max_batch_size are refused), in its
    /// sequence if it has one.
    Whole(Option<SequenceFlags>),
    /// In parts of at most max_batch_size rows (Azure's `/score`).
    Split,
}

/// Counts a request holding a scoring slot: the server total (for busy-state reports) and a
/// per-model gauge in `/metrics`.
struct InFlight<'a> {
    _busy: BusyGuard<'a>,
    gauge: metrics::Gauge,
}

impl<'a> InFlight<'a> {
    fn enter(busy: &'a BusyBoard, model: &str) -> InFlight<'a> {
        let gauge = metrics::gauge!("modelpod_inflight_requests", "model" => model.to_string());
        gauge.increment(1.0);
        InFlight {
            _busy: busy.scoring(),
            gauge,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Queues a request; one of more rows than `max_batch_size` (an Azure client's `/score`
/// body of a thousand rows) as several requests of at most that many, so that it runs
/// instead of being refused, and shares batches with others as any request does.
fn submit_in_batches(
    model: &ServedModel,
    inputs: Vec<Tensor>,
    deadline: Instant,
) -> Result<Vec<crate::batcher::JobReply>, ScoringError> {
    let max = model.policy.max_batch_size;
    let rows = inputs.first().map_or(0, Tensor::rows);
    let splittable = model.policy.batches()
        && max > 0
        && rows > max
        && inputs
            .iter()
            .all(|t| !t.shape().is_empty() && t.rows() == rows);
    if !splittable {
        return Ok(vec![model.submit(inputs, None, Some(deadline))?]);
    }
    (0..rows)
        .step_by(max)
        .map(|start| {
            let part = inputs
                .iter()
                .map(|t| t.slice_rows(start, max.min(rows - start)))
                .collect::<Result<Vec<_>, _>>()?;
            model.submit(part, None, Some(deadline))
        })
        .collect()
}

/// The answers to a request's parts as one: outputs joined along the rows, in order.
fn joined(mut parts: Vec<JobOutput>) -> Result<JobOutput, ScoringError> {
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    let outputs = (0..parts[0].outputs.len())
        .map(|i| {
            let column: Vec<&Tensor> = parts.iter().map(|p| &p.outputs[i]).collect();
            Tensor::concat_rows(&column)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(JobOutput {
        outputs,
        queue_time: parts.iter().map(|p| p.queue_time).max().unwrap_or_default(),
        compute_time: parts.iter().map(|p| p.compute_time).sum(),
        batch_rows: parts.iter().map(|p| p.batch_rows).max().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegistryConfig;
    use modelpod_accel::EngineChoice;
    use std::path::Path;
    use std::time::Duration;

    fn fixtures(repository: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(repository)
    }

    fn scorer(repository: &str, limits: ScoringLimits) -> Scorer {
        let config = RegistryConfig::new(fixtures(repository), EngineChoice::Tract);
        let registry = Arc::new(Registry::open(config).unwrap());
        Scorer::new(registry, limits, true)
    }

    fn limits(concurrency: usize, queue_wait_ms: u64, timeout_ms: u64) -> ScoringLimits {
        ScoringLimits {
            max_concurrent_requests: concurrency,
            max_queue_wait: Duration::from_millis(queue_wait_ms),
            scoring_timeout: Duration::from_millis(timeout_ms),
            ..ScoringLimits::default()
        }
    }

    fn mlp_rows(rows: usize) -> Vec<Tensor> {
        let data = (0..rows * 4).map(|i| i as f32 * 0.1).collect();
        let data: Vec<f32> = data;
        vec![Tensor::new(vec![rows, 4], data).unwrap()]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lazy_model_is_loaded_by_its_first_request_and_scored() {
        let scorer = scorer("models", limits(2, 500, 30_000));
        assert!(!scorer.ready(), "not ready before start-up loading ends");
        scorer.finish_start_up();
        let arrival = Instant::now();
        let model = scorer.model("mlp", None, arrival).await.unwrap();
        let output = scorer.infer(&model, mlp_rows(3), arrival).await.unwrap();
        assert_eq!(output.outputs[0].shape(), &[3, 3]);
        let report = scorer.busy_report();
        assert_eq!(
            (report.in_flight, report.waiting, report.capacity),
            (0, 0, 2)
        );
        assert!(
            matches!(
                scorer.model("nope", None, arrival).await,
                Err(ScoringError::ModelNotFound(_))
            ),
            "an unknown model is not found"
        );
    }

    #[tokio::test]
    async fn a_request_the_queue_would_keep_past_the_wait_is_refused_at_once() {
        let scorer = scorer("models", limits(1, 20, 60_000));
        assert!(!scorer.hopeless(), "a free slot");
        let slot = scorer.admit().await.unwrap();
        assert!(!scorer.hopeless(), "no hold time measured yet");
        std::thread::sleep(Duration::from_millis(40));
        drop(slot);
        assert!(!scorer.hopeless(), "a free slot again");
        let _held = scorer.admit().await.unwrap();
        assert!(
            scorer.hopeless(),
            "a 40 ms hold ahead outlasts a 20 ms queue wait"
        );
        assert!(matches!(
            scorer.shed_if_hopeless(),
            Err(ScoringError::Overloaded(m)) if m.contains("maxQueueWaitMs = 20 ms")
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_a_slot_at_most_the_queue_wait() {
        let scorer = scorer("models", limits(1, 200, 60_000));
        let held = scorer.admit().await.unwrap();
        let started = tokio::time::Instant::now();
        let refused = scorer.admit().await.err().unwrap();
        assert!(matches!(refused, ScoringError::Overloaded(_)), "{refused}");
        assert!(
            refused.to_string().contains("maxQueueWaitMs = 200 ms"),
            "{refused}"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        assert_eq!(
            scorer.busy_report().waiting,
            0,
            "a refused request stops waiting"
        );
        // A slot freed while a request waits goes to it.
        let waiter = scorer.admit();
        tokio::pin!(waiter);
        assert!(futures_poll_once(waiter.as_mut()).await.is_none());
        assert_eq!(scorer.busy_report().waiting, 1);
        drop(held);
        assert!(waiter.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_still_running_at_its_deadline_times_out_and_frees_its_slot() {
        // With the clock paused, time jumps to the next timer as soon as the runtime idles,
        // microseconds after the submission; the slow model's run takes real milliseconds.
        let scorer = scorer("slow-models", limits(1, 100, 5_000));
        let model = tokio::task::spawn_blocking({
            let registry = scorer.registry().clone();
            move || registry.acquire("slow", None, None)
        })
        .await
        .unwrap()
        .unwrap();
        let rows = 512;
        let slow = vec![Tensor::new(vec![rows, 256], vec![0.5f32; rows * 256]).unwrap()];
        let started = tokio::time::Instant::now();
        let error = scorer
            .infer(&model, slow, Instant::now())
            .await
            .unwrap_err();
        assert!(
            matches!(error, ScoringError::DeadlineExceeded(_)),
            "{error}"
        );
        assert!(
            error.to_string().contains("scoringTimeoutMs = 5000 ms"),
            "{error}"
        );
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert_eq!(scorer.busy_report().in_flight, 0);
        assert!(scorer.admit().await.is_ok(), "the slot was released");
    }

    #[tokio::test]
    async fn closed_admission_refuses_waiting_and_later_requests() {
        let scorer = scorer("models", limits(1, 10_000, 60_000));
        let held = scorer.admit().await.unwrap();
        scorer.close_admission();
        let refused = scorer.admit().await.err().unwrap();
        assert_eq!(refused.to_string(), "the server is shutting down");
        drop(held);
    }

    #[tokio::test]
    async fn readiness_waits_for_start_up_and_with_strict_readiness_for_every_model() {
        let scorer = scorer("models", limits(1, 100, 1_000));
        scorer.finish_start_up();
        // `broken` is registered and fails to load: strict readiness says not ready once it
        // has been tried.
        let _ = scorer.model("broken", None, Instant::now()).await;
        assert!(!scorer.ready());
        let lenient = Scorer::new(scorer.registry().clone(), limits(1, 100, 1_000), false);
        lenient.finish_start_up();
        assert!(lenient.ready());
    }

    /// Polls a future once: `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}

//! The sequence batcher, for stateful models (Triton's `sequence_batching`): requests carry a
//! correlation id and start/end flags; every sequence is bound to one batch slot of one
//! instance from its first request to its last (or until it idles out), its requests run in
//! order, one per batch, and the batcher fills the model's control inputs (start, end, ready,
//! correlation id) and its implicit state (each request's state output is the next one's
//! state input).
//!
//! [`SequenceLayout`] says where each model input comes from; [`SequenceBatcher`] owns the
//! slots and the worker threads, one per instance, as the dynamic batcher does.

use crate::batcher::{BatchPolicy, JobOutput, JobReply};
use crate::error::ScoringError;
use crate::manifest::{SequenceBatchingSection, SequenceStrategy};
use crate::statistics::ModelStatistics;
use modelpod_accel::{Backend, DataType, Signature, Tensor, TensorData, TensorSpec};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Triton's default `max_sequence_idle_microseconds`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// A sequence's correlation id: a number, or text (the protocol allows both).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CorrelationId {
    Number(u64),
    Text(String),
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorrelationId::Number(n) => write!(f, "{n}"),
            CorrelationId::Text(s) => write!(f, "'{s}'"),
        }
    }
}

/// A request's place in its sequence, from the request parameters `sequence_id`,
/// `sequence_start` and `sequence_end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceFlags {
    pub id: CorrelationId,
    pub start: bool,
    pub end: bool,
}

/// How the sequence batcher is set up, from the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct SequencePolicy {
    pub strategy: SequenceStrategy,
    pub idle_timeout: Duration,
    pub max_queue_delay: Duration,
    /// Slots per instance: the batch size for `direct`, the candidates for `oldest`.
    pub slots_per_instance: usize,
    /// Most requests in one batch (1 when the model does not batch).
    pub max_batch_rows: usize,
    /// `oldest`: batch sizes run without waiting.
    pub preferred_batch_sizes: Vec<usize>,
}

/// Where one model input's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The client's input at this index of the client signature.
    Client(usize),
    Start,
    End,
    Ready,
    CorrelationId,
    /// The sequence's state at this index.
    State(usize),
}

/// The model's inputs and outputs split into what clients send and receive and what the
/// batcher supplies and keeps.
#[derive(Debug, Clone)]
pub struct SequenceLayout {
    model: Signature,
    sources: Vec<Source>,
    /// Model output index of each state, in state order.
    state_outputs: Vec<usize>,
    /// Model output indices clients receive, in client signature order.
    client_outputs: Vec<usize>,
    /// Each state's value at a sequence's start: zeros of one row (or of the whole input,
    /// when the model does not batch).
    initial_states: Vec<Tensor>,
    batched: bool,
}

impl SequenceLayout {
    /// Splits `model` by `section`; returns the layout and the signature clients see.
    pub fn new(
        section: &SequenceBatchingSection,
        model: &Signature,
        batched: bool,
    ) -> Result<(SequenceLayout, Signature), String> {
        let find_input = |name: &str, what: &str| {
            model
                .inputs
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| {
                    format!(
                        "[sequence_batching] {what} names input '{name}', which the model does not have (inputs: {})",
                        names(&model.inputs)
                    )
                })
        };
        let mut sources: Vec<Option<Source>> = vec![None; model.inputs.len()];
        for (kind, name) in section.control.named() {
            let index = find_input(name, kind)?;
            let spec = &model.inputs[index];
            let source = match kind {
                "start" => Source::Start,
                "end" => Source::End,
                "ready" => Source::Ready,
                _ => Source::CorrelationId,
            };
            let allowed = if source == Source::CorrelationId {
                matches!(
                    spec.dtype,
                    DataType::Uint64
                        | DataType::Int64
                        | DataType::Uint32
                        | DataType::Int32
                        | DataType::Bytes
                )
            } else {
                spec.dtype != DataType::Bytes
            };
            if !allowed {
                return Err(format!(
                    "control input '{name}' ({kind}) is {}, which cannot carry it",
                    spec.dtype
                ));
            }
            sources[index] = Some(source);
        }
        let mut state_outputs = Vec::new();
        let mut initial_states = Vec::new();
        for (i, state) in section.state.iter().enumerate() {
            let index = find_input(&state.input, "state")?;
            let spec = &model.inputs[index];
            let output = model
                .outputs
                .iter()
                .position(|s| s.name == state.output)
                .ok_or_else(|| {
                    format!(
                        "[sequence_batching] state names output '{}', which the model does not have (outputs: {})",
                        state.output,
                        names(&model.outputs)
                    )
                })?;
            let out_spec = &model.outputs[output];
            if out_spec.dtype != spec.dtype {
                return Err(format!(
                    "state output '{}' is {} but its input '{}' is {}",
                    out_spec.name, out_spec.dtype, spec.name, spec.dtype
                ));
            }
            let row_dims = if batched {
                spec.dims.get(1..).unwrap_or_default()
            } else {
                &spec.dims[..]
            };
            let Some(row) = row_dims.iter().copied().collect::<Option<Vec<usize>>>() else {
                return Err(format!(
                    "state input '{}' needs fixed dimensions past the batch one to start from zeros; it has {:?}",
                    spec.name,
                    spec.dims_i64()
                ));
            };
            let shape = if batched {
                [vec![1], row].concat()
            } else {
                row
            };
            initial_states.push(zeros(spec.dtype, shape)?);
            state_outputs.push(output);
            sources[index] = Some(Source::State(i));
        }
        let mut client = Signature {
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        let sources = sources
            .into_iter()
            .zip(&model.inputs)
            .map(|(source, spec)| {
                source.unwrap_or_else(|| {
                    client.inputs.push(spec.clone());
                    Source::Client(client.inputs.len() - 1)
                })
            })
            .collect();
        let client_outputs: Vec<usize> = (0..model.outputs.len())
            .filter(|i| !state_outputs.contains(i))
            .collect();
        client.outputs = client_outputs
            .iter()
            .map(|&i| model.outputs[i].clone())
            .collect();
        if client.outputs.is_empty() {
            return Err("every output of the model is a state: clients would get nothing".into());
        }
        Ok((
            SequenceLayout {
                model: model.clone(),
                sources,
                state_outputs,
                client_outputs,
                initial_states,
                batched,
            },
            client,
        ))
    }

    /// The control inputs, as Triton's config lists them: `(kind, input spec)`.
    pub fn controls(&self) -> Vec<(&'static str, &TensorSpec)> {
        self.sources
            .iter()
            .zip(&self.model.inputs)
            .filter_map(|(source, spec)| {
                let kind = match source {
                    Source::Start => "start",
                    Source::End => "end",
                    Source::Ready => "ready",
                    Source::CorrelationId => "correlation_id",
                    Source::Client(_) | Source::State(_) => return None,
                };
                Some((kind, spec))
            })
            .collect()
    }

    /// Checks that a correlation id fits the model's correlation id input.
    fn check_id(&self, id: &CorrelationId) -> Result<(), ScoringError> {
        let Some(spec) = self
            .sources
            .iter()
            .position(|s| *s == Source::CorrelationId)
            .map(|i| &self.model.inputs[i])
        else {
            return Ok(());
        };
        let fits = match (id, spec.dtype) {
            (CorrelationId::Text(_), dtype) => dtype == DataType::Bytes,
            (CorrelationId::Number(n), DataType::Int64) => i64::try_from(*n).is_ok(),
            (CorrelationId::Number(n), DataType::Uint32) => u32::try_from(*n).is_ok(),
            (CorrelationId::Number(n), DataType::Int32) => i32::try_from(*n).is_ok(),
            (CorrelationId::Number(_), _) => true,
        };
        if fits {
            Ok(())
        } else {
            Err(ScoringError::BadRequest(format!(
                "sequence id {id} does not fit the model's correlation id input '{}' ({})",
                spec.name, spec.dtype
            )))
        }
    }

    /// One row of a control input: `value` in the input's type and row shape.
    fn control_row(&self, spec: &TensorSpec, value: ControlValue<'_>) -> Result<Tensor, String> {
        let dims = if self.batched {
            spec.dims.get(1..).unwrap_or_default()
        } else {
            &spec.dims[..]
        };
        let row: Vec<usize> = dims.iter().map(|d| d.unwrap_or(1)).collect();
        let count: usize = row.iter().product();
        let data = match (value, spec.dtype) {
            (ControlValue::Flag(on), DataType::Bool) => TensorData::Bool(vec![on; count]),
            (ControlValue::Flag(on), dtype) => {
                TensorData::Fp64(vec![if on { 1.0 } else { 0.0 }; count]).cast(dtype)
            }
            (ControlValue::Id(Some(CorrelationId::Text(text))), _) => {
                TensorData::Bytes(vec![text.clone(); count])
            }
            (ControlValue::Id(Some(CorrelationId::Number(n))), DataType::Bytes) => {
                TensorData::Bytes(vec![n.to_string(); count])
            }
            (ControlValue::Id(Some(CorrelationId::Number(n))), DataType::Uint64) => {
                TensorData::Uint64(vec![*n; count])
            }
            (ControlValue::Id(Some(CorrelationId::Number(n))), DataType::Int64) => {
                TensorData::Int64(vec![*n as i64; count])
            }
            (ControlValue::Id(Some(CorrelationId::Number(n))), DataType::Uint32) => {
                TensorData::Uint32(vec![*n as u32; count])
            }
            (ControlValue::Id(Some(CorrelationId::Number(n))), _) => {
                TensorData::Int32(vec![*n as i32; count])
            }
            (ControlValue::Id(None), DataType::Bytes) => {
                TensorData::Bytes(vec![String::new(); count])
            }
            (ControlValue::Id(None), dtype) => TensorData::Fp64(vec![0.0; count]).cast(dtype),
        };
        let shape = if self.batched {
            [vec![1], row].concat()
        } else {
            row
        };
        Tensor::new(shape, data).map_err(|e| e.to_string())
    }

    /// The model inputs for one row: a request of a sequence, or padding (`None`) for an
    /// empty slot.
    fn row_inputs(&self, row: Option<(&SequenceJob, &[Tensor])>) -> Result<Vec<Tensor>, String> {
        self.sources
            .iter()
            .zip(&self.model.inputs)
            .map(|(source, spec)| {
                let flag = |f: fn(&SequenceJob) -> bool| {
                    ControlValue::Flag(row.is_some_and(|(j, _)| f(j)))
                };
                match *source {
                    Source::Client(i) => match row {
                        Some((job, _)) => Ok(job.inputs[i].clone()),
                        None => self.padding(spec),
                    },
                    Source::Start => self.control_row(spec, flag(|j| j.flags.start)),
                    Source::End => self.control_row(spec, flag(|j| j.flags.end)),
                    Source::Ready => self.control_row(spec, ControlValue::Flag(row.is_some())),
                    Source::CorrelationId => {
                        self.control_row(spec, ControlValue::Id(row.map(|(j, _)| &j.flags.id)))
                    }
                    Source::State(i) => Ok(match row {
                        Some((_, states)) => states[i].clone(),
                        None => self.initial_states[i].clone(),
                    }),
                }
            })
            .collect()
    }

    /// The model inputs of a batch: each row's, joined along dimension 0.
    fn batch_inputs(&self, selected: &Selected) -> Result<Vec<Tensor>, String> {
        let per_row: Vec<Vec<Tensor>> = selected
            .iter()
            .map(|row| {
                self.row_inputs(
                    row.as_ref()
                        .map(|(_, job, states)| (job, states.as_slice())),
                )
            })
            .collect::<Result<_, _>>()?;
        if !self.batched || per_row.len() == 1 {
            return Ok(per_row.into_iter().next().expect("one row"));
        }
        (0..self.model.inputs.len())
            .map(|i| {
                Tensor::concat_rows(&per_row.iter().map(|r| &r[i]).collect::<Vec<_>>())
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    /// Zeros standing in for a client input in an empty slot (the model's output there is
    /// thrown away).
    fn padding(&self, spec: &TensorSpec) -> Result<Tensor, String> {
        let dims = spec.dims.get(1..).unwrap_or_default();
        let dims: Vec<usize> = dims.iter().map(|d| d.unwrap_or(1)).collect();
        zeros(spec.dtype, [vec![1], dims].concat())
    }
}

enum ControlValue<'a> {
    Flag(bool),
    Id(Option<&'a CorrelationId>),
}

fn zeros(dtype: DataType, shape: Vec<usize>) -> Result<Tensor, String> {
    let count = shape.iter().product();
    let data = match dtype {
        DataType::Bytes => TensorData::Bytes(vec![String::new(); count]),
        DataType::Bool => TensorData::Bool(vec![false; count]),
        dtype => TensorData::Fp64(vec![0.0; count]).cast(dtype),
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The policy a manifest's section asks for, given the model's batch policy.
pub fn sequence_policy(section: &SequenceBatchingSection, batch: &BatchPolicy) -> SequencePolicy {
    let rows = batch.max_batch_size.max(1);
    SequencePolicy {
        strategy: section.strategy,
        idle_timeout: section
            .max_sequence_idle_us
            .map_or(DEFAULT_IDLE_TIMEOUT, Duration::from_micros),
        max_queue_delay: Duration::from_micros(section.max_queue_delay_us.unwrap_or(0)),
        slots_per_instance: match section.strategy {
            SequenceStrategy::Direct => rows,
            SequenceStrategy::Oldest if !batch.batches() => 1,
            SequenceStrategy::Oldest => section.max_candidate_sequences.unwrap_or(rows),
        },
        max_batch_rows: rows,
        preferred_batch_sizes: section.preferred_batch_sizes.clone(),
    }
}

struct SequenceJob {
    inputs: Vec<Tensor>,
    flags: SequenceFlags,
    enqueued_at: Instant,
    reply: oneshot::Sender<Result<JobOutput, ScoringError>>,
}

/// A live sequence.
struct Sequence {
    /// `(instance, slot)` once it has one; sequences beyond the free slots wait in the backlog.
    slot: Option<(usize, usize)>,
    queue: VecDeque<SequenceJob>,
    states: Vec<Tensor>,
    last_active: Instant,
    /// A request of it is running now: the next waits for its state.
    running: bool,
}

struct Core {
    sequences: HashMap<CorrelationId, Sequence>,
    /// Per instance, which sequence holds each slot.
    slots: Vec<Vec<Option<CorrelationId>>>,
    /// Sequences waiting for a slot, oldest first.
    backlog: VecDeque<CorrelationId>,
    queued: usize,
}

impl Core {
    /// Gives `id` the free slot of the instance with the most free slots.
    fn assign(&mut self, id: &CorrelationId) -> bool {
        let best = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, slots)| (i, slots.iter().filter(|s| s.is_none()).count()))
            .filter(|&(_, free)| free > 0)
            .max_by_key(|&(i, free)| (free, std::cmp::Reverse(i)));
        let Some((instance, _)) = best else {
            return false;
        };
        let slot = self.slots[instance]
            .iter()
            .position(Option::is_none)
            .expect("a free slot");
        self.slots[instance][slot] = Some(id.clone());
        if let Some(sequence) = self.sequences.get_mut(id) {
            sequence.slot = Some((instance, slot));
        }
        true
    }

    /// Ends `id`: frees its slot for the oldest waiting sequence. Requests it still has queued
    /// begin a new sequence if the first says START, and fail otherwise.
    fn release(&mut self, id: &CorrelationId, model: &str, closing: bool) {
        let Some(mut sequence) = self.sequences.remove(id) else {
            return;
        };
        if let Some((instance, slot)) = sequence.slot.take() {
            self.slots[instance][slot] = None;
        }
        self.backlog.retain(|b| b != id);
        while sequence
            .queue
            .front()
            .is_some_and(|j| closing || !j.flags.start)
        {
            let job = sequence.queue.pop_front().expect("front");
            self.queued -= 1;
            let error = if closing {
                ScoringError::ModelUnavailable("the model is being unloaded".into())
            } else {
                missing_start(&job.flags.id, model)
            };
            let _ = job.reply.send(Err(error));
        }
        if !sequence.queue.is_empty() {
            self.sequences.insert(id.clone(), sequence);
            self.backlog.push_back(id.clone());
        }
        while let Some(next) = self.backlog.front().cloned() {
            if !self.assign(&next) {
                break;
            }
            self.backlog.pop_front();
        }
    }
}

fn missing_start(id: &CorrelationId, model: &str) -> ScoringError {
    ScoringError::BadRequest(format!(
        "inference request for sequence {id} to model '{model}' must specify the START flag on the first request of the sequence"
    ))
}

struct Shared {
    model: String,
    layout: SequenceLayout,
    policy: SequencePolicy,
    core: Mutex<Core>,
    wake: Condvar,
    closing: AtomicBool,
    batch_rows: metrics::Histogram,
    statistics: Arc<ModelStatistics>,
}

/// A stateful model's sequences and the worker threads that run them, one per instance.
pub struct SequenceBatcher {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl SequenceBatcher {
    pub fn start(
        model: &str,
        thread_name: &str,
        labels: Vec<(String, String)>,
        layout: SequenceLayout,
        policy: SequencePolicy,
        backends: Vec<Box<dyn Backend>>,
        statistics: Arc<ModelStatistics>,
    ) -> SequenceBatcher {
        let labels: Vec<metrics::Label> = labels
            .into_iter()
            .map(|(k, v)| metrics::Label::new(k, v))
            .collect();
        let shared = Arc::new(Shared {
            model: model.to_string(),
            core: Mutex::new(Core {
                sequences: HashMap::new(),
                slots: vec![vec![None; policy.slots_per_instance]; backends.len()],
                backlog: VecDeque::new(),
                queued: 0,
            }),
            layout,
            policy,
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
            batch_rows: metrics::histogram!("modelpod_batch_rows", labels),
            statistics,
        });
        let workers = backends
            .into_iter()
            .enumerate()
            .map(|(instance, backend)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("{thread_name}#{instance}"))
                    .spawn(move || worker_loop(&shared, instance, backend))
                    .expect("spawning a worker thread")
            })
            .collect();
        SequenceBatcher {
            shared,
            workers: Mutex::new(workers),
        }
    }

    pub fn layout(&self) -> &SequenceLayout {
        &self.shared.layout
    }

    pub fn policy(&self) -> &SequencePolicy {
        &self.shared.policy
    }

    /// Queues one request of a sequence; its inputs are the client's, in client signature
    /// order. Without flags, or without START for a sequence not running, it is refused.
    pub fn submit(
        &self,
        inputs: Vec<Tensor>,
        flags: Option<SequenceFlags>,
    ) -> Result<JobReply, ScoringError> {
        let shared = &*self.shared;
        let Some(flags) = flags else {
            return Err(ScoringError::BadRequest(format!(
                "inference request to model '{}' must specify a non-zero or non-empty correlation ID (the sequence_id parameter)",
                shared.model
            )));
        };
        shared.layout.check_id(&flags.id)?;
        if shared.layout.batched && inputs.iter().any(|t| t.shape().is_empty() || t.rows() != 1) {
            return Err(ScoringError::InvalidInput(
                "a request of a sequence has batch size 1: dimension 0 of every input must be 1"
                    .into(),
            ));
        }
        if shared.closing.load(Ordering::Acquire) {
            return Err(ScoringError::ModelUnavailable(
                "the model is being unloaded".into(),
            ));
        }
        let now = Instant::now();
        let (reply, receiver) = oneshot::channel();
        let job = SequenceJob {
            inputs,
            flags,
            enqueued_at: now,
            reply,
        };
        let mut core = shared.core.lock();
        let id = job.flags.id.clone();
        // A sequence idle past its timeout has ended, whether or not a worker noticed yet.
        if core.sequences.get(&id).is_some_and(|s| {
            s.queue.is_empty() && !s.running && s.last_active + shared.policy.idle_timeout <= now
        }) {
            core.release(&id, &shared.model, false);
        }
        match core.sequences.get_mut(&id) {
            Some(sequence) => {
                sequence.queue.push_back(job);
                sequence.last_active = now;
            }
            None if !job.flags.start => return Err(missing_start(&id, &shared.model)),
            None => {
                core.sequences.insert(
                    id.clone(),
                    Sequence {
                        slot: None,
                        queue: VecDeque::from([job]),
                        states: shared.layout.initial_states.clone(),
                        last_active: now,
                        running: false,
                    },
                );
                if !core.assign(&id) {
                    core.backlog.push_back(id);
                }
            }
        }
        core.queued += 1;
        drop(core);
        shared.wake.notify_all();
        Ok(receiver)
    }

    /// Requests waiting to run.
    pub fn queue_len(&self) -> usize {
        self.shared.core.lock().queued
    }

    /// Sequences holding a slot or waiting for one.
    pub fn active_sequences(&self) -> usize {
        self.shared.core.lock().sequences.len()
    }

    /// Stops taking requests, runs everything queued on a slot, fails what waits for one, and
    /// joins the workers.
    pub fn shutdown(&self) {
        {
            let mut core = self.shared.core.lock();
            self.shared.closing.store(true, Ordering::Release);
            let waiting: Vec<CorrelationId> = core.backlog.drain(..).collect();
            for id in waiting {
                if let Some(sequence) = core.sequences.remove(&id) {
                    core.queued -= sequence.queue.len();
                    for job in sequence.queue {
                        let _ = job.reply.send(Err(ScoringError::ModelUnavailable(
                            "the model was unloaded before this sequence got a slot".into(),
                        )));
                    }
                }
            }
        }
        self.shared.wake.notify_all();
        for handle in self.workers.lock().drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for SequenceBatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a worker runs: per batch row, the slot's sequence and its request (`None`: padding).
type Selected = Vec<Option<(CorrelationId, SequenceJob, Vec<Tensor>)>>;

enum Next {
    Run(Selected),
    WaitUntil(Instant),
    Idle,
}

/// Picks the next batch of `instance`, or when to look again.
fn select(shared: &Shared, core: &mut Core, instance: usize, now: Instant) -> Next {
    let closing = shared.closing.load(Ordering::Acquire);
    // Sequences of this instance that are idle too long end.
    let mut idle_check: Option<Instant> = None;
    let expired: Vec<CorrelationId> = core.slots[instance]
        .iter()
        .flatten()
        .filter(|id| {
            let s = &core.sequences[*id];
            let idle_until = s.last_active + shared.policy.idle_timeout;
            let idle = s.queue.is_empty() && !s.running;
            if idle && idle_until <= now {
                return true;
            }
            if idle {
                idle_check = Some(idle_check.map_or(idle_until, |c| c.min(idle_until)));
            }
            false
        })
        .cloned()
        .collect();
    for id in &expired {
        tracing::debug!(model = %shared.model, sequence = %id, "sequence idled out");
        core.release(id, &shared.model, closing);
    }
    // (slot, sequence, when its next request arrived) of each slot with a request to run.
    let mut ready: Vec<(usize, CorrelationId, Instant)> = Vec::new();
    let mut occupied = 0;
    for (slot, id) in core.slots[instance].iter().enumerate() {
        let Some(id) = id else { continue };
        occupied += 1;
        let sequence = &core.sequences[id];
        if let (false, Some(job)) = (sequence.running, sequence.queue.front()) {
            ready.push((slot, id.clone(), job.enqueued_at));
        }
    }
    if ready.is_empty() {
        // Only this instance's worker runs its sequences: with none ready, none is running.
        return match idle_check {
            Some(at) if !closing => Next::WaitUntil(at),
            _ => Next::Idle,
        };
    }
    let max_rows = shared.policy.max_batch_rows;
    let oldest = ready.iter().map(|r| r.2).min().expect("ready");
    let waited_enough = closing || now >= oldest + shared.policy.max_queue_delay;
    let chosen: Vec<(usize, CorrelationId)> = match shared.policy.strategy {
        SequenceStrategy::Direct => {
            // Every occupied slot has its request: nothing more can join this batch.
            if !(waited_enough || ready.len() == occupied) {
                return Next::WaitUntil(oldest + shared.policy.max_queue_delay);
            }
            ready.into_iter().map(|(slot, id, _)| (slot, id)).collect()
        }
        SequenceStrategy::Oldest => {
            ready.sort_by_key(|r| r.2);
            ready.truncate(max_rows);
            let n = ready.len();
            let full = n == max_rows || shared.policy.preferred_batch_sizes.contains(&n);
            if !(waited_enough || full || n == occupied) {
                return Next::WaitUntil(oldest + shared.policy.max_queue_delay);
            }
            ready
                .into_iter()
                .enumerate()
                .map(|(row, (_, id, _))| (row, id))
                .collect()
        }
    };
    let rows = chosen.iter().map(|c| c.0).max().expect("chosen") + 1;
    let mut selected: Selected = (0..rows).map(|_| None).collect();
    for (row, id) in chosen {
        let sequence = core.sequences.get_mut(&id).expect("a live sequence");
        let job = sequence.queue.pop_front().expect("a queued request");
        sequence.running = true;
        let states = if job.flags.start {
            shared.layout.initial_states.clone()
        } else {
            sequence.states.clone()
        };
        core.queued -= 1;
        selected[row] = Some((id, job, states));
    }
    Next::Run(selected)
}

fn worker_loop(shared: &Shared, instance: usize, mut backend: Box<dyn Backend>) {
    loop {
        let selected = {
            let mut core = shared.core.lock();
            loop {
                match select(shared, &mut core, instance, Instant::now()) {
                    Next::Run(selected) => break selected,
                    Next::WaitUntil(at) => {
                        shared.wake.wait_until(&mut core, at);
                    }
                    Next::Idle if shared.closing.load(Ordering::Acquire) => return,
                    Next::Idle => shared.wake.wait(&mut core),
                }
            }
        };
        let mut finished = run(shared, backend.as_mut(), selected);
        let mut core = shared.core.lock();
        let now = Instant::now();
        for done in &mut finished {
            if let Some(sequence) = core.sequences.get_mut(&done.id) {
                sequence.running = false;
                sequence.last_active = now;
                if let Some(states) = done.states.take() {
                    sequence.states = states;
                }
                if done.end {
                    core.release(
                        &done.id,
                        &shared.model,
                        shared.closing.load(Ordering::Acquire),
                    );
                }
            }
        }
        drop(core);
        shared.wake.notify_all();
        // Answered once the sequence's state is stored (or its slot freed): a client's next
        // request, sent on this answer, finds the sequence as this one left it.
        for done in finished {
            let _ = done.reply.send(done.answer);
        }
    }
}

/// A request that ran: its sequence, whether it ended it, its new state (`None` where it
/// failed) and its answer, sent once the state is stored.
struct Finished {
    id: CorrelationId,
    end: bool,
    states: Option<Vec<Tensor>>,
    reply: oneshot::Sender<Result<JobOutput, ScoringError>>,
    answer: Result<JobOutput, ScoringError>,
}

/// Runs one batch of requests.
fn run(shared: &Shared, backend: &mut dyn Backend, selected: Selected) -> Vec<Finished> {
    let started = Instant::now();
    let layout = &shared.layout;
    let rows = selected.len();
    let requests = selected.iter().flatten().count();
    let result = layout
        .batch_inputs(&selected)
        .map_err(|e| ScoringError::Engine(format!("batch assembly: {e}")))
        .and_then(|inputs| {
            std::panic::catch_unwind(AssertUnwindSafe(|| backend.run(inputs)))
                .unwrap_or_else(|_| {
                    Err(modelpod_accel::EngineError::Run(
                        "the engine panicked".into(),
                    ))
                })
                .map_err(|e| match e {
                    modelpod_accel::EngineError::Run(reason) => ScoringError::InvalidInput(
                        format!("the model cannot run on this input: {reason}"),
                    ),
                    other => other.into(),
                })
        });
    let compute_time = started.elapsed();
    shared.batch_rows.record(rows as f64);
    let outputs = match result {
        Ok(outputs) => {
            shared.statistics.record_execution(rows, compute_time);
            outputs
        }
        // One sequence's input can fail the batch: each runs again alone, so only it fails.
        Err(_) if requests > 1 => {
            return selected
                .into_iter()
                .flatten()
                .flat_map(|one| run(shared, backend, vec![Some(one)]))
                .collect();
        }
        Err(error) => {
            return selected
                .into_iter()
                .flatten()
                .map(|(id, job, _)| Finished {
                    id,
                    end: job.flags.end,
                    states: None,
                    reply: job.reply,
                    answer: Err(error.clone()),
                })
                .collect();
        }
    };
    let mut finished = Vec::with_capacity(requests);
    for (row, entry) in selected.into_iter().enumerate() {
        let Some((id, job, _)) = entry else { continue };
        let own = |index: usize| -> Result<Tensor, ScoringError> {
            let tensor = &outputs[index];
            if !layout.batched {
                return Ok(tensor.clone());
            }
            tensor.slice_rows(row, 1).map_err(|e| {
                ScoringError::Engine(format!(
                    "output '{}' has no row {row} of the batch: {e}",
                    layout.model.outputs[index].name
                ))
            })
        };
        let client: Result<Vec<Tensor>, _> =
            layout.client_outputs.iter().map(|&i| own(i)).collect();
        let states: Result<Vec<Tensor>, _> = layout.state_outputs.iter().map(|&i| own(i)).collect();
        let end = job.flags.end;
        let answer = match (client, states) {
            (Ok(client), Ok(states)) => Ok((client, states)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let (states, answer) = match answer {
            Ok((client, states)) => (
                Some(states),
                Ok(JobOutput {
                    outputs: client,
                    queue_time: started.duration_since(job.enqueued_at),
                    compute_time,
                    batch_rows: rows,
                }),
            ),
            Err(e) => (None, Err(e)),
        };
        finished.push(Finished {
            id,
            end,
            states,
            reply: job.reply,
            answer,
        });
    }
    finished
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{SequenceControls, SequenceState};
    use modelpod_accel::EngineError;
    use proptest::prelude::*;

    fn spec(name: &str, dtype: DataType) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            dims: vec![None, Some(1)],
            map_keys: None,
        }
    }

    /// x, start, ready, acc_in -> y (the running sum), instance, acc_out.
    fn signature() -> Signature {
        Signature {
            inputs: vec![
                spec("x", DataType::Int32),
                spec("start", DataType::Int32),
                spec("ready", DataType::Bool),
                spec("acc_in", DataType::Int64),
            ],
            outputs: vec![
                spec("y", DataType::Int64),
                spec("instance", DataType::Int32),
                spec("acc_out", DataType::Int64),
            ],
        }
    }

    /// The accumulator in Rust; records the rows of every batch it runs.
    struct Accumulator {
        instance: i32,
        batches: Arc<Mutex<Vec<usize>>>,
    }

    impl Backend for Accumulator {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
            let rows = inputs[0].rows();
            self.batches.lock().push(rows);
            let [x, start, ready, acc] = [0, 1, 2, 3].map(|i| inputs[i].data().to_f64_vec());
            let out: Vec<i64> = (0..rows)
                .map(|r| match (ready[r] != 0.0, start[r] != 0.0) {
                    (false, _) => acc[r] as i64,
                    (true, true) => x[r] as i64,
                    (true, false) => (acc[r] + x[r]) as i64,
                })
                .collect();
            if x.contains(&-999.0) {
                return Err(EngineError::Run("-999 is poison".into()));
            }
            Ok(vec![
                Tensor::new(vec![rows, 1], out.clone()).unwrap(),
                Tensor::new(vec![rows, 1], vec![self.instance; rows]).unwrap(),
                Tensor::new(vec![rows, 1], out).unwrap(),
            ])
        }
    }

    fn section(strategy: SequenceStrategy) -> SequenceBatchingSection {
        SequenceBatchingSection {
            strategy,
            control: SequenceControls {
                start: Some("start".into()),
                ready: Some("ready".into()),
                ..SequenceControls::default()
            },
            state: vec![SequenceState {
                input: "acc_in".into(),
                output: "acc_out".into(),
            }],
            ..SequenceBatchingSection::default()
        }
    }

    struct Fixture {
        batcher: SequenceBatcher,
        batches: Arc<Mutex<Vec<usize>>>,
    }

    fn start(
        strategy: SequenceStrategy,
        instances: usize,
        slots: usize,
        delay_ms: u64,
        idle_ms: u64,
    ) -> Fixture {
        let (layout, client) = SequenceLayout::new(&section(strategy), &signature(), true).unwrap();
        assert_eq!(client.inputs.len(), 1, "clients send x only");
        assert_eq!(client.outputs.len(), 2, "and get y and instance");
        let batches = Arc::new(Mutex::new(Vec::new()));
        let backends = (0..instances)
            .map(|i| {
                Box::new(Accumulator {
                    instance: i as i32,
                    batches: batches.clone(),
                }) as Box<dyn Backend>
            })
            .collect();
        let policy = SequencePolicy {
            strategy,
            idle_timeout: Duration::from_millis(idle_ms),
            max_queue_delay: Duration::from_millis(delay_ms),
            slots_per_instance: slots,
            max_batch_rows: slots,
            preferred_batch_sizes: Vec::new(),
        };
        Fixture {
            batcher: SequenceBatcher::start(
                "acc",
                "acc/1",
                Vec::new(),
                layout,
                policy,
                backends,
                Arc::new(ModelStatistics::default()),
            ),
            batches,
        }
    }

    fn flags(id: u64, start: bool, end: bool) -> Option<SequenceFlags> {
        Some(SequenceFlags {
            id: CorrelationId::Number(id),
            start,
            end,
        })
    }

    fn x(value: i32) -> Vec<Tensor> {
        vec![Tensor::new(vec![1, 1], vec![value]).unwrap()]
    }

    /// (y, instance) of an answered request.
    fn answer(reply: JobReply) -> Result<(i64, i32), ScoringError> {
        let output = reply.blocking_recv().expect("answered")?;
        let y = output.outputs[0].data().to_f64_vec()[0] as i64;
        let instance = output.outputs[1].data().to_f64_vec()[0] as i32;
        Ok((y, instance))
    }

    #[test]
    fn the_layout_splits_controls_and_state_from_client_inputs() {
        let (layout, client) =
            SequenceLayout::new(&section(SequenceStrategy::Direct), &signature(), true).unwrap();
        assert_eq!(client.inputs[0].name, "x");
        assert_eq!(
            client
                .outputs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["y", "instance"]
        );
        assert_eq!(
            layout
                .controls()
                .iter()
                .map(|(k, s)| (*k, s.name.as_str()))
                .collect::<Vec<_>>(),
            [("start", "start"), ("ready", "ready")]
        );
        let mut bad = section(SequenceStrategy::Direct);
        bad.control.end = Some("finish".into());
        let error = SequenceLayout::new(&bad, &signature(), true).unwrap_err();
        assert!(
            error.contains("'finish'") && error.contains("x, start"),
            "{error}"
        );
        let mut bad = section(SequenceStrategy::Direct);
        bad.state[0].output = "instance".into();
        let error = SequenceLayout::new(&bad, &signature(), true).unwrap_err();
        assert!(
            error.contains("is INT32 but its input 'acc_in' is INT64"),
            "{error}"
        );
    }

    #[test]
    fn interleaved_sequences_keep_their_own_state_on_their_own_instance() {
        let f = start(SequenceStrategy::Direct, 2, 2, 0, 5_000);
        let values = [11, 7, 5, 3, 2, 0, 1];
        let mut sums = [0i64; 3];
        let mut instance_of = [None; 3];
        for (step, value) in values.iter().enumerate() {
            let replies: Vec<JobReply> = (0..3u64)
                .map(|s| {
                    let v = value * (s as i32 + 1);
                    let last = step == values.len() - 1;
                    f.batcher
                        .submit(x(v), flags(100 + s, step == 0, last))
                        .unwrap()
                })
                .collect();
            for (s, reply) in replies.into_iter().enumerate() {
                let (y, instance) = answer(reply).unwrap();
                sums[s] += (*value * (s as i32 + 1)) as i64;
                assert_eq!(y, sums[s], "sequence {s} at step {step}");
                assert_eq!(
                    *instance_of[s].get_or_insert(instance),
                    instance,
                    "affinity"
                );
            }
        }
        // Three sequences on two instances of two slots: both instances were used.
        assert_ne!(instance_of[0], instance_of[1]);
        assert_eq!(f.batcher.active_sequences(), 0, "every sequence ended");
    }

    #[test]
    fn requests_without_an_id_or_a_start_are_refused_as_triton_refuses_them() {
        let f = start(SequenceStrategy::Direct, 1, 2, 0, 5_000);
        match f.batcher.submit(x(1), None) {
            Err(ScoringError::BadRequest(m)) => {
                assert!(
                    m.contains("must specify a non-zero or non-empty correlation ID"),
                    "{m}"
                )
            }
            other => panic!("{:?}", other.err()),
        }
        match f.batcher.submit(x(1), flags(7, false, false)) {
            Err(ScoringError::BadRequest(m)) => assert_eq!(
                m,
                "inference request for sequence 7 to model 'acc' must specify the START flag on the first request of the sequence"
            ),
            other => panic!("{:?}", other.err()),
        }
        let rows = vec![Tensor::new(vec![2, 1], vec![1, 2]).unwrap()];
        assert!(matches!(
            f.batcher.submit(rows, flags(7, true, false)),
            Err(ScoringError::InvalidInput(_))
        ));
    }

    #[test]
    fn sequences_beyond_the_free_slots_wait_until_one_ends() {
        let f = start(SequenceStrategy::Direct, 1, 1, 0, 5_000);
        assert_eq!(
            answer(f.batcher.submit(x(5), flags(1, true, false)).unwrap())
                .unwrap()
                .0,
            5
        );
        let mut waiting = f.batcher.submit(x(40), flags(2, true, true)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(waiting.try_recv().is_err(), "no slot is free yet");
        assert_eq!(
            answer(f.batcher.submit(x(1), flags(1, false, true)).unwrap())
                .unwrap()
                .0,
            6
        );
        assert_eq!(answer(waiting).unwrap().0, 40);
    }

    #[test]
    fn an_idle_sequence_ends_and_its_next_request_needs_a_start() {
        let f = start(SequenceStrategy::Direct, 1, 1, 0, 40);
        answer(f.batcher.submit(x(5), flags(1, true, false)).unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(f.batcher.active_sequences(), 0, "the worker ended it");
        assert!(matches!(
            f.batcher.submit(x(1), flags(1, false, false)),
            Err(ScoringError::BadRequest(_))
        ));
        // Its slot went to the next sequence.
        assert_eq!(
            answer(f.batcher.submit(x(9), flags(2, true, true)).unwrap())
                .unwrap()
                .0,
            9
        );
    }

    #[test]
    fn direct_pads_empty_slots_and_oldest_batches_compactly() {
        // Direct: slots 0 and 1 hold sequences; slot 1 alone has a request, so the batch has
        // two rows, row 0 padding with READY = 0.
        let f = start(SequenceStrategy::Direct, 1, 4, 0, 5_000);
        answer(f.batcher.submit(x(1), flags(1, true, false)).unwrap()).unwrap();
        answer(f.batcher.submit(x(2), flags(2, true, false)).unwrap()).unwrap();
        f.batches.lock().clear();
        assert_eq!(
            answer(f.batcher.submit(x(3), flags(2, false, false)).unwrap())
                .unwrap()
                .0,
            5
        );
        assert_eq!(*f.batches.lock(), [2]);
        // Oldest: four sequences' first requests within the delay share one batch of four.
        let f = start(SequenceStrategy::Oldest, 1, 4, 200, 5_000);
        let replies: Vec<JobReply> = (1..=4)
            .map(|id| {
                f.batcher
                    .submit(x(id as i32), flags(id, true, false))
                    .unwrap()
            })
            .collect();
        for (i, reply) in replies.into_iter().enumerate() {
            assert_eq!(answer(reply).unwrap().0, i as i64 + 1);
        }
        assert_eq!(*f.batches.lock(), [4]);
    }

    #[test]
    fn a_failing_request_fails_alone_and_keeps_its_sequence_state() {
        let f = start(SequenceStrategy::Oldest, 1, 4, 100, 5_000);
        answer(f.batcher.submit(x(10), flags(1, true, false)).unwrap()).unwrap();
        answer(f.batcher.submit(x(20), flags(2, true, false)).unwrap()).unwrap();
        let poison = f.batcher.submit(x(-999), flags(1, false, false)).unwrap();
        let fine = f.batcher.submit(x(1), flags(2, false, false)).unwrap();
        assert!(matches!(answer(poison), Err(ScoringError::InvalidInput(_))));
        assert_eq!(answer(fine).unwrap().0, 21);
        assert_eq!(
            answer(f.batcher.submit(x(1), flags(1, false, true)).unwrap())
                .unwrap()
                .0,
            11
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the interleaving, batching and restarts, every answer is its sequence's
        /// running sum since its last start, as if each sequence ran alone.
        #[test]
        fn every_answer_is_its_own_sequences_running_sum(
            ops in proptest::collection::vec((0u64..4, -50i32..50, proptest::bool::weighted(0.2)), 1..40),
            oldest in any::<bool>(),
        ) {
            let strategy = if oldest { SequenceStrategy::Oldest } else { SequenceStrategy::Direct };
            let f = start(strategy, 2, 2, 1, 60_000);
            let mut live = [false; 4];
            let mut sums = [0i64; 4];
            let mut expected = Vec::new();
            let mut replies = Vec::new();
            for (id, value, end) in ops {
                let i = id as usize;
                let start_flag = !live[i];
                sums[i] = if start_flag { value as i64 } else { sums[i] + value as i64 };
                live[i] = !end;
                expected.push(sums[i]);
                replies.push(f.batcher.submit(x(value), flags(id + 1, start_flag, end)).unwrap());
            }
            for (reply, want) in replies.into_iter().zip(expected) {
                prop_assert_eq!(answer(reply).unwrap().0, want);
            }
        }
    }
}

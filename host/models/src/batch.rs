//! Dynamic batching, with Triton's semantics: concurrent runs of one model
//! whose inputs have the same shape are stacked along the batch dimension
//! into one run of at most `max_batch` rows, and each caller gets its own
//! rows back.
//!
//! The first caller of a batch waits up to `max_queue_delay` (zero by
//! default) for it to fill, off the pool, then queues its job; callers
//! with inputs of the same shape join it until a pool thread takes the
//! job, which runs the batch on the plan made for the smallest batch size
//! that holds it, zero rows filling the rest. The job is queued, and its
//! pool time counted, under the first caller's owner. A batch that cannot
//! run as one (a model that fails on it) runs each caller's inputs alone;
//! one that never runs hands them back to their callers to run alone.

use crate::{HostTensor, InferencePool, Model, PoolError, RunError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How a model's runs are batched, as its configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchPolicy {
    /// Most rows one run may stack; 1 turns batching off.
    pub max_batch: usize,
    /// How long a batch that is not full may wait for more callers once
    /// a pool thread has taken it.
    pub max_queue_delay: Duration,
}

/// What a model's outputs are, for one caller.
pub type Outputs = Vec<(String, HostTensor)>;

/// A batching model's plans for each batch size, and its open batches.
pub(crate) struct Batching {
    pub(crate) policy: BatchPolicy,
    /// The model optimized for batches of each of these sizes, ascending:
    /// powers of two, and `max_batch`.
    pub(crate) plans: Vec<(usize, Model)>,
    /// The batch each input shape is gathering, if any.
    open: Mutex<HashMap<ShapeKey, Arc<Batch>>>,
    batches: AtomicU64,
    batched_rows: AtomicU64,
}

/// The element type and the shape past the batch dimension of each input,
/// in the model's order: what runs that can share a batch have in common.
type ShapeKey = Vec<(crate::ElementType, Vec<usize>)>;

struct Batch {
    state: Mutex<BatchState>,
    /// Signalled when the batch is full.
    full: tokio::sync::Notify,
}

#[derive(Default)]
struct BatchState {
    closed: bool,
    members: Vec<Member>,
}

/// One caller's inputs, in the model's order, and where its rows go.
struct Member {
    inputs: Vec<HostTensor>,
    deadline: Instant,
    answer: tokio::sync::oneshot::Sender<Reply>,
}

/// What a batch tells each of its callers.
enum Reply {
    Answered(Result<Result<Outputs, RunError>, PoolError>),
    /// The batch will not run (its first caller gave up, or its deadline
    /// passed first): the caller's inputs, back, to run alone.
    RunAlone(Vec<HostTensor>),
}

/// How many batches of more than one caller a model has run, and the rows
/// they held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub batches: u64,
    pub rows: u64,
}

impl Batching {
    pub(crate) fn new(policy: BatchPolicy, plans: Vec<(usize, Model)>) -> Self {
        Batching { policy, plans, open: Mutex::default(), batches: AtomicU64::new(0), batched_rows: AtomicU64::new(0) }
    }

    pub(crate) fn stats(&self) -> BatchStats {
        BatchStats { batches: self.batches.load(Ordering::Relaxed), rows: self.batched_rows.load(Ordering::Relaxed) }
    }

    fn open(&self) -> MutexGuard<'_, HashMap<ShapeKey, Arc<Batch>>> {
        // Nothing panics while the map is held.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Batch {
    fn state(&self) -> MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `member` unless the batch has closed or is full; gives it back
    /// if not.
    fn join(&self, member: Member, max_batch: usize) -> Result<(), Member> {
        let mut state = self.state();
        if state.closed || state.members.len() >= max_batch {
            return Err(member);
        }
        state.members.push(member);
        if state.members.len() >= max_batch {
            self.full.notify_one();
        }
        Ok(())
    }

    /// Closes the batch and takes its callers.
    fn close(&self) -> Vec<Member> {
        let mut state = self.state();
        state.closed = true;
        std::mem::take(&mut state.members)
    }
}

/// Runs `model` on `inputs` for `owner` on `pool`: on the calling thread if
/// the model runs quickly, in a batch if the model batches, else as a job
/// of its own. Past `deadline` a job not yet started does not run.
pub async fn infer(
    pool: &InferencePool,
    owner: Arc<str>,
    deadline: Instant,
    model: &Arc<Model>,
    inputs: Vec<(String, HostTensor)>,
) -> Result<Result<Outputs, RunError>, PoolError> {
    if model.runs_quickly() {
        return InferencePool::run_here(|| model.run(inputs));
    }
    let Some(batching) = model.batching.as_deref().filter(|b| b.policy.max_batch > 1) else {
        let job_model = Arc::clone(model);
        return pool.run(owner, deadline, move || job_model.run(inputs)).await;
    };
    if let Err(invalid) = model.check_inputs(&inputs) {
        return Ok(Err(invalid));
    }
    let ordered = model.in_order(inputs);
    let key: ShapeKey = ordered.iter().map(|t| (t.element_type, t.shape.iter().skip(1).copied().collect())).collect();
    // The base plan's batch dimension is pinned to 1: each caller is a row.
    let (answer, answered) = tokio::sync::oneshot::channel();
    let member = Member { inputs: ordered, deadline, answer };
    let led = {
        let mut open = batching.open();
        let member = match open.get(&key) {
            Some(batch) => batch.join(member, batching.policy.max_batch).err(),
            None => Some(member),
        };
        member.map(|member| {
            let batch = Arc::new(Batch {
                state: Mutex::new(BatchState { closed: false, members: vec![member] }),
                full: tokio::sync::Notify::new(),
            });
            open.insert(key.clone(), Arc::clone(&batch));
            batch
        })
    };
    if let Some(batch) = led {
        // Made first, so that the batch is closed even if this caller goes
        // away while it waits.
        let job = BatchJob { model: Arc::clone(model), batch, key };
        let delay = batching.policy.max_queue_delay;
        if !delay.is_zero() {
            // Waiting here, not on a pool thread, leaves the threads to
            // other work meanwhile.
            let _ = tokio::time::timeout(delay, job.batch.full.notified()).await;
        }
        // An error means the job never ran or died: the callers that
        // joined run alone instead (see `BatchJob`'s drop).
        pool.run(owner.clone(), deadline, move || job.run()).await?;
    }
    match answered.await {
        Ok(Reply::Answered(outcome)) => outcome,
        Ok(Reply::RunAlone(inputs)) => {
            let (job_model, named) = (Arc::clone(model), model.named(inputs));
            pool.run(owner, deadline, move || job_model.run(named)).await
        }
        // The batch's job died with this caller's inputs: a panic.
        Err(_) => Err(PoolError::Panicked("the batch this run joined failed".to_owned())),
    }
}

/// A batch's job on the pool. However it ends (run, dropped unrun because
/// its first caller gave up or its deadline passed, or in a panic), the
/// batch is closed and forgotten when it is dropped, so that no caller
/// joins it any more, and the callers it never ran get their inputs back
/// to run alone.
struct BatchJob {
    model: Arc<Model>,
    batch: Arc<Batch>,
    key: ShapeKey,
}

impl BatchJob {
    fn run(&self) {
        run_batch(&self.model, &self.batch, &self.key);
    }
}

impl Drop for BatchJob {
    fn drop(&mut self) {
        if let Some(batching) = self.model.batching.as_deref() {
            forget(batching, &self.key, &self.batch);
        }
        for member in self.batch.close() {
            let _ = member.answer.send(Reply::RunAlone(member.inputs));
        }
    }
}

/// Removes `batch` from the open batches, if it is still the one filed
/// under `key`.
fn forget(batching: &Batching, key: &ShapeKey, batch: &Arc<Batch>) {
    let mut open = batching.open();
    if open.get(key).is_some_and(|filed| Arc::ptr_eq(filed, batch)) {
        open.remove(key);
    }
}

/// On a pool thread: closes the batch, runs it and answers each of its
/// callers.
fn run_batch(model: &Model, batch: &Arc<Batch>, key: &ShapeKey) {
    let Some(batching) = model.batching.as_deref() else { return };
    forget(batching, key, batch);
    let members = batch.close();
    let now = Instant::now();
    let (live, expired): (Vec<Member>, Vec<Member>) = members.into_iter().partition(|m| m.deadline > now);
    for member in expired {
        let _ = member.answer.send(Reply::Answered(Err(PoolError::Expired)));
    }
    // Callers that stopped waiting are not computed for.
    let live: Vec<Member> = live.into_iter().filter(|m| !m.answer.is_closed()).collect();
    match live.len() {
        0 => {}
        1 => {
            for member in live {
                let outcome = model.run(model.named(member.inputs));
                let _ = member.answer.send(Reply::Answered(Ok(outcome)));
            }
        }
        rows => match run_stacked(batching, &live) {
            Ok(split) => {
                batching.batches.fetch_add(1, Ordering::Relaxed);
                batching.batched_rows.fetch_add(rows as u64, Ordering::Relaxed);
                for (member, outputs) in live.into_iter().zip(split) {
                    let _ = member.answer.send(Reply::Answered(Ok(Ok(outputs))));
                }
            }
            Err(failure) => {
                tracing::warn!(model = %model.name(), rows, "the batch failed; running its rows alone: {failure}");
                for member in live {
                    let outcome = model.run(model.named(member.inputs));
                    let _ = member.answer.send(Reply::Answered(Ok(outcome)));
                }
            }
        },
    }
}

/// Stacks the callers' inputs, runs them on the smallest plan that holds
/// them, and splits each output into one row per caller.
fn run_stacked(batching: &Batching, members: &[Member]) -> Result<Vec<Outputs>, String> {
    let rows = members.len();
    let (size, plan) =
        batching.plans.iter().find(|(size, _)| *size >= rows).ok_or_else(|| format!("no plan holds {rows} rows"))?;
    let first = &members[0].inputs;
    let mut stacked = Vec::with_capacity(first.len());
    for (at, spec) in plan.inputs().iter().enumerate() {
        let template = &first[at];
        let row_bytes = template.data.len();
        let mut data = Vec::with_capacity(row_bytes * size);
        for member in members {
            data.extend_from_slice(&member.inputs[at].data);
        }
        data.resize(row_bytes * size, 0);
        let mut shape = template.shape.clone();
        shape[0] = *size;
        stacked.push((spec.name.clone(), HostTensor { element_type: template.element_type, shape, data }));
    }
    let outputs = plan.run(stacked).map_err(|e| e.to_string())?;
    let mut split: Vec<Outputs> = (0..rows).map(|_| Vec::with_capacity(outputs.len())).collect();
    for (name, tensor) in outputs {
        if tensor.shape.first() != Some(size) || tensor.data.len() % size != 0 {
            return Err(format!("output `{name}` of shape {:?} does not have {size} rows", tensor.shape));
        }
        let row_bytes = tensor.data.len() / size;
        let mut shape = tensor.shape.clone();
        shape[0] = 1;
        for (row, outputs) in split.iter_mut().enumerate() {
            let data = tensor.data[row * row_bytes..(row + 1) * row_bytes].to_vec();
            outputs.push((name.clone(), HostTensor { element_type: tensor.element_type, shape: shape.clone(), data }));
        }
    }
    Ok(split)
}

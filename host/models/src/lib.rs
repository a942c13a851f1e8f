//! ONNX models executed natively by tract: loaded and optimized once, shared
//! by every guest instance through `Arc`, and run on the inference pool.
//!
//! Nothing here knows about tenants, guests or HTTP: a [`Model`] takes named
//! [`HostTensor`]s and returns named [`HostTensor`]s.

mod batch;
mod convolution;
mod depthwise;
mod pool;
mod simd;
mod tensor;

pub use batch::{BatchPolicy, BatchStats, infer};
pub use pool::{InferencePool, PoolError};
pub use simd::{Level as KernelLevel, cpu_description};

/// This project's own kernels, callable at any vector level over checked
/// slices: for the tests and benchmarks that compare the levels on one
/// machine. Models always run at [`KernelLevel::chosen`].
pub mod kernels {
    pub use super::convolution::product_at;
    pub use super::depthwise::depthwise_at;
    pub use super::simd::{LEVEL_VARIABLE, Level, cpu_description, vector_features};
}
pub use tensor::{ElementType, HostTensor};

use mantle_types::untrusted::escaped;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::GenericFactoid;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read model `{name}` from {}", path.display())]
    Read { name: String, path: PathBuf, source: std::io::Error },
    /// The message is tract's, and may quote names from the model file.
    #[error("cannot load model `{name}` from {}: {}", path.display(), escaped(.message))]
    Parse { name: String, path: PathBuf, message: String },
    #[error("model `{name}`: {}", escaped(.message))]
    Unsupported { name: String, message: String },
}

impl LoadError {
    /// The same error, naming the file the model's bytes came from.
    pub fn in_file(self, path: &Path) -> LoadError {
        match self {
            LoadError::Parse { name, message, .. } => LoadError::Parse { name, path: path.to_owned(), message },
            other => other,
        }
    }
}

/// The bytes of model file `path`, to be loaded as model `name`.
pub fn read_model_file(name: &str, path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read { name: name.to_owned(), path: path.to_owned(), source })
}

/// Why a run did not produce outputs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    /// The inputs do not fit the model: names, types or shapes. The
    /// message quotes the names the caller gave.
    #[error("{}", escaped(.0))]
    InvalidInput(String),
    /// tract failed while computing.
    #[error("model `{model}` failed: {}", escaped(.message))]
    Failed { model: String, message: String },
}

/// How to prepare a model when it is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Named dimensions fixed to a size before optimizing, e.g. a batch
    /// dimension `N` = 1. tract optimizes a fully known shape much better;
    /// inputs must then have exactly that size.
    pub pinned_dims: BTreeMap<String, usize>,
    /// Batch concurrent runs along the dimension pinned to 1 (see
    /// [`infer`]); `None`, or a `max_batch` of 1, runs each alone.
    pub batching: Option<BatchPolicy>,
}

/// One dimension of a model input as the model declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A named dimension (`batch`, `sequence`) bound by the caller's tensor.
    Symbol(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => write!(f, "{s}"),
        }
    }
}

/// A model input: its name, element type and declared shape.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub element_type: ElementType,
    pub shape: Vec<Dim>,
}

/// A model output: its name, and its element type and shape as far as the
/// model declares them.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub name: String,
    /// `None` when the element type is not one a host tensor can carry.
    pub element_type: Option<ElementType>,
    pub shape: Vec<Dim>,
}

/// One matrix product in a model's optimized plan, from [`Model::matmuls`].
#[derive(Debug, Clone)]
pub struct MatMul {
    /// The plan node's name.
    pub node: String,
    /// The product's sizes, where the plan knows them: `m × k` by `k × n`.
    pub m: Option<usize>,
    pub k: Option<usize>,
    pub n: Option<usize>,
    /// The kernels tract chose for it, one per mode (a product with a
    /// dimension not known until it runs keeps a matrix-vector kernel
    /// beside the matrix one).
    pub kernels: Vec<String>,
}

/// One kind of operation's share of an inference, from [`Model::profile`].
#[derive(Debug, Clone)]
pub struct OpTime {
    /// tract's name for the operation, e.g. `Conv` or `OptMatMul`.
    pub op: String,
    /// Nodes of that kind run per inference.
    pub nodes: usize,
    /// Their time per inference.
    pub time: Duration,
}

/// A loaded, optimized model, ready to run from any thread.
pub struct Model {
    name: String,
    plan: Arc<TypedSimplePlan>,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
    /// A moving average of its inferences' durations, in nanoseconds; zero
    /// until it has run.
    typical_run_nanos: AtomicU64,
    /// Its plans for batches, when it batches.
    batching: Option<Box<batch::Batching>>,
}

/// Inferences that usually take less than this are [quick](Model::runs_quickly).
const QUICK_RUN: Duration = Duration::from_millis(1);

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Model {
    /// Loads the ONNX file at `path` and optimizes it for this machine.
    /// This takes from milliseconds to seconds; do it once per model.
    pub fn load(name: &str, path: &Path, options: &LoadOptions) -> Result<Model, LoadError> {
        let bytes = read_model_file(name, path)?;
        Self::from_bytes(name, &bytes, options).map_err(|e| e.in_file(path))
    }

    /// Loads an ONNX model from its serialized bytes.
    pub fn from_bytes(name: &str, bytes: &[u8], options: &LoadOptions) -> Result<Model, LoadError> {
        let parse = |stage: &str, e: TractError| LoadError::Parse {
            name: name.to_owned(),
            path: PathBuf::new(),
            message: format!("{stage}: {e:#}"),
        };
        let mut inference = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| parse("parsing ONNX", e))?;
        let mut pinned = options.pinned_dims.clone();
        for used in name_anonymous_dims(&mut inference, &pinned).map_err(|e| parse("naming dynamic dimensions", e))? {
            pinned.remove(&used);
        }
        let typed = match inference.clone().into_typed() {
            Ok(typed) => pin_dims(name, typed, &pinned)?,
            // Models whose shape arithmetic tract folds only once the input
            // sizes are numbers (PP-OCR's recognizer): pin before typing.
            // Not first, since `value_info` naming a pinned symbol would
            // then disagree with the number.
            Err(symbolic) if !pinned.is_empty() => {
                pin_input_facts(&mut inference, &pinned).map_err(|e| parse("pinning dimensions", e))?;
                inference.into_typed().map_err(|e| parse("analysing types", symbolic.context(format!("{e:#}"))))?
            }
            Err(e) => return Err(parse("analysing types", e)),
        };
        let inputs = describe_inputs(name, &typed)?;
        let outputs = typed
            .output_outlets()
            .map_err(|e| parse("listing outputs", e))?
            .iter()
            .map(|outlet| {
                let name = typed
                    .outlet_label(*outlet)
                    .map(str::to_owned)
                    .unwrap_or_else(|| typed.node(outlet.node).name.clone());
                let fact = typed.outlet_fact(*outlet).map_err(|e| parse("typing outputs", e))?;
                Ok(OutputSpec {
                    name,
                    element_type: ElementType::from_datum_type(fact.datum_type),
                    shape: fact.shape.iter().map(dim).collect(),
                })
            })
            .collect::<Result<_, LoadError>>()?;
        let typed = channel_last(name, typed);
        let typed = own_convolutions(name, typed);
        let optimized = typed.into_optimized().map_err(|e| parse("optimizing", e))?;
        let plan = optimized.into_runnable().map_err(|e| parse("planning", e))?;
        let mut model = Model {
            name: name.to_owned(),
            plan,
            inputs,
            outputs,
            typical_run_nanos: AtomicU64::new(0),
            batching: None,
        };
        if let Some(policy) = options.batching.filter(|policy| policy.max_batch > 1) {
            model.batching = Some(Box::new(batch_plans(name, bytes, options, policy)?));
        }
        Ok(model)
    }

    /// How many batches of more than one run it has computed, and their
    /// rows; `None` if it does not batch.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batching.as_deref().map(batch::Batching::stats)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[OutputSpec] {
        &self.outputs
    }

    /// Checks names, types and shapes of `inputs` against the model, so that
    /// a mistake is reported by input name before any work is done.
    pub fn check_inputs(&self, inputs: &[(String, HostTensor)]) -> Result<(), RunError> {
        let invalid = |message: String| Err(RunError::InvalidInput(message));
        for (name, _) in inputs {
            if !self.inputs.iter().any(|spec| &spec.name == name) {
                // No model name: a model held once for several tenants is
                // named by each as it likes, so the caller names it.
                return invalid(format!("the model has no input `{name}`; its inputs are {}", self.input_names()));
            }
        }
        let mut bound: HashMap<&str, usize> = HashMap::new();
        for spec in &self.inputs {
            let mut given = inputs.iter().filter(|(name, _)| name == &spec.name);
            let Some((_, tensor)) = given.next() else {
                return invalid(format!(
                    "input `{}` of the model is missing; its inputs are {}",
                    spec.name,
                    self.input_names()
                ));
            };
            if given.next().is_some() {
                return invalid(format!("input `{}` is given more than once", spec.name));
            }
            if tensor.element_type != spec.element_type {
                return invalid(format!(
                    "input `{}` must be {}, not {}",
                    spec.name, spec.element_type, tensor.element_type
                ));
            }
            tensor.check_data_len().map_err(|m| RunError::InvalidInput(format!("input `{}`: {m}", spec.name)))?;
            let expected = || {
                let dims: Vec<String> = spec.shape.iter().map(Dim::to_string).collect();
                format!("[{}]", dims.join(", "))
            };
            if tensor.shape.len() != spec.shape.len() {
                // A hostile caller may send thousands of dimensions: name the
                // rank rather than echo them all.
                let given = match tensor.shape.len() {
                    rank @ 0..=8 => format!("{:?} (rank {rank})", tensor.shape),
                    rank => format!("a shape of rank {rank}"),
                };
                return invalid(format!(
                    "input `{}` must have shape {} (rank {}), not {given}",
                    spec.name,
                    expected(),
                    spec.shape.len()
                ));
            }
            for (dim, &size) in spec.shape.iter().zip(&tensor.shape) {
                let fits = match dim {
                    Dim::Fixed(n) => *n == size,
                    Dim::Symbol(symbol) => *bound.entry(symbol).or_insert(size) == size,
                };
                if !fits {
                    return invalid(format!(
                        "input `{}` must have shape {}, not {:?}{}",
                        spec.name,
                        expected(),
                        tensor.shape,
                        match dim {
                            Dim::Symbol(s) => format!(" (`{s}` is {} in another input)", bound[s.as_str()]),
                            Dim::Fixed(_) => String::new(),
                        }
                    ));
                }
            }
        }
        Ok(())
    }

    /// Runs the model. Blocks for the duration of the inference: call it
    /// through [`InferencePool::run`], or on an async executor thread only
    /// when the model [runs quickly](Self::runs_quickly).
    pub fn run(&self, inputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>, RunError> {
        let ordered = self.ordered_inputs(inputs)?;
        let failed = |message: String| RunError::Failed { model: self.name.clone(), message };
        let started = Instant::now();
        let outputs = self.plan.run(ordered);
        leave_vector_registers_clean();
        self.record_run_time(started.elapsed());
        let outputs = outputs.map_err(|e| failed(format!("{e:#}")))?;
        self.outputs
            .iter()
            .zip(outputs)
            .map(|(OutputSpec { name, .. }, value)| {
                HostTensor::from_tract(&value)
                    .map(|tensor| (name.clone(), tensor))
                    .map_err(|m| failed(format!("output `{name}`: {m}")))
            })
            .collect()
    }

    /// Whether its inferences usually take well under a millisecond, so
    /// that handing one to another thread would cost more than running it
    /// (Silero VAD: 0.13 ms per frame against about 0.1 ms for the two
    /// thread wake-ups of a hand-off). False until it has run once.
    pub fn runs_quickly(&self) -> bool {
        let typical = self.typical_run_nanos.load(Ordering::Relaxed);
        typical != 0 && typical < QUICK_RUN.as_nanos() as u64
    }

    /// Folds one inference's duration into the moving average, a quarter
    /// weight to the newest: one slow run on an unusual shape is enough to
    /// stop a model counting as quick.
    fn record_run_time(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let typical = self.typical_run_nanos.load(Ordering::Relaxed);
        let average = if typical == 0 { took } else { typical / 4 * 3 + took / 4 };
        self.typical_run_nanos.store(average.max(1), Ordering::Relaxed);
    }

    /// Every matrix product in the optimized plan, with its sizes and the
    /// kernels tract chose for this CPU: which of tract's kernels a model
    /// runs on, for the benchmark report.
    pub fn matmuls(&self) -> Vec<MatMul> {
        use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
        let size = |dim: Option<TDim>| dim.and_then(|d| d.as_i64()).and_then(|d| usize::try_from(d).ok());
        self.plan
            .model()
            .nodes()
            .iter()
            .filter_map(|node| {
                let op = node.op_as::<OptMatMul>()?;
                let axis = |axis: Option<usize>| axis.map_or(Some(1), |ix| size(Some(op.c_fact.shape[ix].clone())));
                Some(MatMul {
                    node: node.name.clone(),
                    m: axis(op.c_m_axis),
                    k: size(op.guess_k()),
                    n: axis(op.c_n_axis),
                    kernels: op.mmm.iter().map(|mmm| mmm.name().to_owned()).collect(),
                })
            })
            .collect()
    }

    /// Runs the model `runs` times on `inputs` and sums the time each kind
    /// of operation took, longest first: where an inference spends its
    /// time, for the benchmark report and for operators tuning a model.
    pub fn profile(&self, inputs: Vec<(String, HostTensor)>, runs: usize) -> Result<Vec<OpTime>, RunError> {
        let ordered = self.ordered_inputs(inputs)?;
        let failed = |e: TractError| RunError::Failed { model: self.name.clone(), message: format!("{e:#}") };
        let mut state = TypedSimpleState::new(&self.plan).map_err(failed)?;
        let mut by_op: HashMap<String, OpTime> = HashMap::new();
        for _ in 0..runs {
            state
                .run_plan_with_eval(ordered.clone(), |context, op_state, node, inputs| {
                    let started = Instant::now();
                    let outputs = tract_onnx::tract_core::plan::eval(context, op_state, node, inputs);
                    let op = node.op().name();
                    let entry = by_op.entry(op.to_string()).or_insert_with(|| OpTime {
                        op: op.to_string(),
                        nodes: 0,
                        time: Duration::ZERO,
                    });
                    entry.nodes += 1;
                    entry.time += started.elapsed();
                    outputs
                })
                .map_err(failed)?;
        }
        let mut ops: Vec<OpTime> = by_op
            .into_values()
            .map(|op| OpTime { nodes: op.nodes / runs.max(1), time: op.time / runs.max(1) as u32, ..op })
            .collect();
        ops.sort_by_key(|op| std::cmp::Reverse(op.time));
        Ok(ops)
    }

    /// `inputs`, checked, in the order the plan takes them.
    fn in_order(&self, inputs: Vec<(String, HostTensor)>) -> Vec<HostTensor> {
        let mut by_name: HashMap<String, HostTensor> = inputs.into_iter().collect();
        self.inputs.iter().filter_map(|spec| by_name.remove(&spec.name)).collect()
    }

    /// Tensors in the plan's order, named as its inputs.
    fn named(&self, tensors: Vec<HostTensor>) -> Vec<(String, HostTensor)> {
        self.inputs.iter().map(|spec| spec.name.clone()).zip(tensors).collect()
    }

    /// The inputs in the order the plan takes them, as tract values.
    fn ordered_inputs(&self, inputs: Vec<(String, HostTensor)>) -> Result<TVec<TValue>, RunError> {
        self.check_inputs(&inputs)?;
        let mut by_name: HashMap<String, HostTensor> = inputs.into_iter().collect();
        let mut ordered: TVec<TValue> = TVec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            // check_inputs guarantees presence.
            let Some(tensor) = by_name.remove(&spec.name) else {
                return Err(RunError::InvalidInput(format!("input `{}` is missing", spec.name)));
            };
            ordered.push(tensor.into_tract().map_err(RunError::InvalidInput)?.into_tvalue());
        }
        Ok(ordered)
    }

    fn input_names(&self) -> String {
        let names: Vec<String> = self.inputs.iter().map(|s| format!("`{}`", s.name)).collect();
        names.join(", ")
    }
}

/// The model in `bytes` optimized for batches of 2, 4, 8... up to
/// `policy.max_batch` rows along its dimension pinned to 1, which every
/// input and output must begin with.
fn batch_plans(
    name: &str,
    bytes: &[u8],
    options: &LoadOptions,
    policy: BatchPolicy,
) -> Result<batch::Batching, LoadError> {
    let unbatchable = |message: String| LoadError::Unsupported {
        name: name.to_owned(),
        message: format!("cannot batch it (max_batch = {}): {message}", policy.max_batch),
    };
    let ones: Vec<&String> = options.pinned_dims.iter().filter(|(_, size)| **size == 1).map(|(dim, _)| dim).collect();
    let dimension = match ones.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(unbatchable("pin its batch dimension to 1, e.g. `pin = { N = 1 }`".to_owned())),
        _ => return Err(unbatchable(format!("it pins several dimensions to 1 ({ones:?}); which is the batch?"))),
    };
    let mut sizes: Vec<usize> =
        std::iter::successors(Some(2usize), |n| n.checked_mul(2)).take_while(|n| *n < policy.max_batch).collect();
    sizes.push(policy.max_batch);
    let mut plans = Vec::with_capacity(sizes.len());
    for size in sizes {
        let mut pinned_dims = options.pinned_dims.clone();
        pinned_dims.insert(dimension.clone(), size);
        let plan = Model::from_bytes(name, bytes, &LoadOptions { pinned_dims, batching: None })?;
        let leads = |shape: &[Dim]| shape.first() == Some(&Dim::Fixed(size));
        if let Some(input) = plan.inputs.iter().find(|input| !leads(&input.shape)) {
            return Err(unbatchable(format!("input `{}` does not begin with `{dimension}`", input.name)));
        }
        if let Some(output) = plan.outputs.iter().find(|output| !leads(&output.shape)) {
            return Err(unbatchable(format!("output `{}` does not begin with `{dimension}`", output.name)));
        }
        plans.push((size, plan));
    }
    tracing::info!(model = %name, along = %dimension, max_batch = policy.max_batch, "batching");
    Ok(batch::Batching::new(policy, plans))
}

/// Runs convolutions channel-last (NHWC), with tract's own `conv_nhwc`
/// rewrite. ONNX convolutions are channel-first, where tract's depthwise
/// kernel walks one channel's plane at a time and a pointwise convolution
/// needs its input repacked; channel-last, both become loops over
/// contiguous channels. On EfficientNet-Lite0 this takes an inference from
/// about 46 to 29 ms (docs/PERF-LOG.md); models without convolutions are
/// unchanged, and a model the rewrite fails on stays channel-first.
fn channel_last(name: &str, model: TypedModel) -> TypedModel {
    let rewrite = || -> TractResult<TypedModel> {
        let mut rewritten = model.clone();
        tract_onnx::tract_core::transform::get_transform("conv_nhwc")?
            .ok_or_else(|| anyhow::anyhow!("this tract has no `conv_nhwc` transform"))?
            .transform(&mut rewritten)?;
        Ok(rewritten)
    };
    // The rewrite is only a speed-up: a model it cannot take still runs.
    rewrite()
        .inspect(|_| {
            let kernel = depthwise::channel_last_kernel().unwrap_or("tract's scalar loop");
            let level = KernelLevel::chosen();
            tracing::debug!(model = name, "convolutions channel-last; depthwise kernel: {kernel} at {level}");
        })
        .unwrap_or_else(|e| {
            tracing::warn!(model = name, "running convolutions channel-first: {e:#}");
            model
        })
}

/// Hands the convolutions this project's kernel computes better than
/// tract ([`convolution`]) to it, on a decluttered copy of the model, where
/// they have become plain matrix products. Like [`channel_last`], only a
/// speed-up: a model the rewrite fails on runs as tract would run it.
fn own_convolutions(name: &str, model: TypedModel) -> TypedModel {
    let level = KernelLevel::chosen();
    let rewrite = || convolution::fuse(model.clone().into_decluttered()?, level);
    match rewrite() {
        // Either way, the decluttered copy is as good a start for the optimizer.
        Ok((rewritten, fused)) => {
            tracing::debug!(model = name, "{fused} convolutions on this project's {level} kernel");
            rewritten
        }
        Err(e) => {
            tracing::warn!(model = name, "convolutions left to tract: {e:#}");
            model
        }
    }
}

/// Clears the upper halves of the AVX registers after an inference.
///
/// Some of tract's assembly kernels return with them dirty. Until they are
/// cleared, every SSE-encoded instruction on the thread pays a false
/// dependency on them: the WebAssembly guests' code, which Cranelift emits
/// in SSE, ran image resizing 20 times slower on a thread that had just run
/// EfficientNet (docs/PERF-LOG.md). One instruction per inference.
fn leave_vector_registers_clean() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        #[target_feature(enable = "avx")]
        fn zero_upper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        // SAFETY: the CPU has AVX, checked above.
        unsafe { zero_upper() }
    }
}

/// Gives each input dimension the model leaves unnamed (`?`, as some
/// exporters write a free height or width) the name `<input>_<axis>`:
/// tract types a model only when every input dimension is a number or a
/// symbol. A pin of that name fixes the dimension here, since no
/// `value_info` can disagree with it; the others become symbols. Returns
/// the pins used.
fn name_anonymous_dims(model: &mut InferenceModel, pinned: &BTreeMap<String, usize>) -> TractResult<Vec<String>> {
    let mut used = Vec::new();
    for ix in 0..model.inputs.len() {
        let mut fact = model.input_fact(ix)?.clone();
        if fact.shape.is_open() {
            continue;
        }
        let input = model.node(model.inputs[ix].node).name.clone();
        let anonymous: Vec<usize> = fact
            .shape
            .dims()
            .enumerate()
            .filter(|(_, d)| matches!(d, GenericFactoid::Any))
            .map(|(axis, _)| axis)
            .collect();
        if anonymous.is_empty() {
            continue;
        }
        for axis in anonymous {
            let name = format!("{input}_{axis}");
            let dim = match pinned.get(&name) {
                Some(&size) => {
                    used.push(name);
                    TDim::Val(i64::try_from(size)?)
                }
                None => model.symbols.new_with_prefix(&name).into(),
            };
            fact.shape.set_dim(axis, dim);
        }
        model.set_input_fact(ix, fact)?;
    }
    Ok(used)
}

/// Fixes the pinned named dimensions in the input facts, before typing.
fn pin_input_facts(model: &mut InferenceModel, pinned: &BTreeMap<String, usize>) -> TractResult<()> {
    let mut unused: Vec<&String> = pinned.keys().collect();
    for ix in 0..model.inputs.len() {
        let mut fact = model.input_fact(ix)?.clone();
        let named: Vec<(usize, String)> = fact
            .shape
            .dims()
            .enumerate()
            .filter_map(|(axis, d)| match d {
                GenericFactoid::Only(TDim::Sym(symbol)) => Some((axis, symbol.to_string())),
                _ => None,
            })
            .filter(|(_, name)| pinned.contains_key(name))
            .collect();
        for (axis, name) in &named {
            unused.retain(|pin| *pin != name);
            fact.shape.set_dim(*axis, TDim::Val(i64::try_from(pinned[name])?));
        }
        if !named.is_empty() {
            model.set_input_fact(ix, fact)?;
        }
    }
    match unused.first() {
        Some(name) => Err(anyhow::anyhow!("no input has a dimension named `{name}`")),
        None => Ok(()),
    }
}

fn pin_dims(name: &str, model: TypedModel, pinned: &BTreeMap<String, usize>) -> Result<TypedModel, LoadError> {
    if pinned.is_empty() {
        return Ok(model);
    }
    let mut substitutions = HashMap::new();
    for (dim, &size) in pinned {
        let Some(symbol) = model.symbols.get(dim) else {
            let named: Vec<String> = model
                .input_outlets()
                .into_iter()
                .flatten()
                .filter_map(|outlet| model.outlet_fact(*outlet).ok())
                .flat_map(|fact| {
                    fact.shape.iter().filter(|d| d.to_i64().is_err()).map(|d| d.to_string()).collect::<Vec<_>>()
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            return Err(LoadError::Unsupported {
                name: name.to_owned(),
                message: format!("cannot pin dimension `{dim}`: the model's named input dimensions are {named:?}"),
            });
        };
        let size = i64::try_from(size).map_err(|_| LoadError::Unsupported {
            name: name.to_owned(),
            message: format!("dimension `{dim}` cannot be {size}"),
        })?;
        substitutions.insert(symbol, TDim::Val(size));
    }
    model.set_symbols(&substitutions).map_err(|e| LoadError::Unsupported {
        name: name.to_owned(),
        message: format!("pinning dimensions {pinned:?}: {e:#}"),
    })
}

fn describe_inputs(name: &str, model: &TypedModel) -> Result<Vec<InputSpec>, LoadError> {
    let unsupported = |message: String| LoadError::Unsupported { name: name.to_owned(), message };
    model
        .input_outlets()
        .map_err(|e| unsupported(format!("{e:#}")))?
        .iter()
        .map(|outlet| {
            let input_name = model.node(outlet.node).name.clone();
            let fact = model.outlet_fact(*outlet).map_err(|e| unsupported(format!("{e:#}")))?;
            let element_type = ElementType::from_datum_type(fact.datum_type).ok_or_else(|| {
                unsupported(format!(
                    "input `{input_name}` has element type {:?}, which wasi:nn cannot carry",
                    fact.datum_type
                ))
            })?;
            let shape = fact.shape.iter().map(dim).collect();
            Ok(InputSpec { name: input_name, element_type, shape })
        })
        .collect()
}

fn dim(dim: &TDim) -> Dim {
    match dim.to_i64().ok().and_then(|n| usize::try_from(n).ok()) {
        Some(n) => Dim::Fixed(n),
        None => Dim::Symbol(dim.to_string()),
    }
}

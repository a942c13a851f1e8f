//! The guest runtime: one wasmtime engine, modules compiled and
//! pre-instantiated once, and a fresh, limited store and instance for every
//! request, so that nothing leaks between requests or tenants.

pub(crate) mod bindings;
mod guest_log;
mod limits;
mod state;

pub use bindings::mantle::edge::types::{Error as GuestError, Request, Response};
pub use limits::ModuleLimits;

use crate::models::{HostTensor, InferencePool, Model, PoolError, RunError};
use crate::nn::{Grants, NnCtx};
use bindings::{Guest, GuestPre};
use guest_log::{GuestLog, LogTags};
use limits::GuestLimiter;
use state::GuestState;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;

/// Largest response body a guest may give: twice a tenant's default
/// request limit. The body has been copied out of the guest's memory (so
/// the guest's memory limit bounds that copy) before it can be measured;
/// past this size the node drops it and sends an error instead.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// Resources (streams, tensors, graphs, errors...) one request's guest may
/// hold at once. A Rust guest needs a handful; the cap keeps a guest that
/// makes them in a loop from growing the host's memory without bound.
const MAX_RESOURCES: usize = 10_000;

/// How often the epoch advances: how often a running guest yields to the
/// executor and checks its deadline.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Node-wide settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Guest instances that can be live at once, across all modules.
    pub max_instances: u32,
    /// Threads that run models; `None` means one per core.
    pub inference_threads: Option<usize>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { max_instances: 256, inference_threads: None }
    }
}

/// Why the runtime or a module could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("module `{module}` is not a valid WebAssembly component: {message}")]
    Compile { module: String, message: String },
    #[error("module `{module}` does not fit the mantle:edge/guest world: {message}")]
    World { module: String, message: String },
    #[error("module `{module}` has unusable limits: {message}")]
    Limits { module: String, message: String },
    #[error("module `{module}`: the compiled-code cache failed: {message}")]
    Cache { module: String, message: String },
}

/// Why a request did not produce a guest response.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The guest returned its `error` case: the request was refused or the
    /// guest failed in a way it could describe.
    #[error("{}", guest_error_message(.0))]
    Guest(GuestError),
    #[error("the guest did not answer within its deadline of {0:?}")]
    Deadline(Duration),
    #[error("the guest tried to grow its memory to {wanted} bytes, past its limit of {limit} bytes")]
    MemoryLimit { limit: usize, wanted: usize },
    /// The guest crashed. The message has the trap and guest backtrace: log
    /// it, but do not send it to clients.
    #[error("the guest trapped: {0}")]
    Trap(String),
    #[error("cannot start the guest: {0}")]
    Instantiate(String),
    #[error("the guest's response of {size} bytes is over the limit of {limit} bytes")]
    ResponseTooLarge { size: usize, limit: usize },
}

fn guest_error_message(error: &GuestError) -> &str {
    match error {
        GuestError::InvalidInput(m)
        | GuestError::UnsupportedMediaType(m)
        | GuestError::Internal(m)
        | GuestError::Forbidden(m) => m,
    }
}

impl HandleError {
    /// The HTTP status this outcome maps to.
    pub fn status(&self) -> u16 {
        match self {
            HandleError::Guest(GuestError::InvalidInput(_)) => 400,
            HandleError::Guest(GuestError::UnsupportedMediaType(_)) => 415,
            HandleError::Guest(GuestError::Internal(_)) => 500,
            HandleError::Guest(GuestError::Forbidden(_)) => 403,
            HandleError::Deadline(_) => 504,
            HandleError::MemoryLimit { .. } | HandleError::Trap(_) | HandleError::ResponseTooLarge { .. } => 500,
            HandleError::Instantiate(_) => 503,
        }
    }
}

/// Why a direct model inference did not produce outputs.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The inputs do not fit the model: names, types or shapes.
    #[error("{0}")]
    InvalidInput(String),
    #[error("the model did not answer within the deadline of {0:?}")]
    Deadline(Duration),
    /// The model failed or panicked: log it; clients get an error id.
    #[error("{0}")]
    Failed(String),
}

/// What one request used, to be charged to its tenant.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// From the start of instantiation to the guest's answer or failure.
    pub guest_time: Duration,
    /// Each model computation the guest asked for: the model and its time.
    pub inferences: Vec<(Arc<Model>, Duration)>,
}

/// What a module is and may do: set by the operator.
#[derive(Debug, Clone)]
pub struct ModuleSpec {
    /// The module's name, unique within its tenant.
    pub id: String,
    pub tenant: String,
    /// Models the module may load, by the name the guest uses.
    pub grants: BTreeMap<String, Arc<Model>>,
    pub limits: ModuleLimits,
    /// Values the guest reads through `context.config-get`.
    pub config: BTreeMap<String, String>,
}

/// A compiled, pre-instantiated module, ready to serve requests. Its parts
/// are shared, so that a request's store takes them without copying.
pub struct GuestModule {
    tenant: Arc<str>,
    id: Arc<str>,
    grants: Arc<Grants>,
    limits: ModuleLimits,
    config: Arc<BTreeMap<String, String>>,
    pre: GuestPre<GuestState>,
}

impl GuestModule {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn limits(&self) -> ModuleLimits {
        self.limits
    }
}

/// The engine, the linker and the inference pool, shared by all modules.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    pool: Arc<InferencePool>,
    ticking: Arc<AtomicBool>,
    live_instances: Arc<AtomicUsize>,
}

/// Counts a guest instance as live for as long as it is held.
struct LiveInstance(Arc<AtomicUsize>);

impl LiveInstance {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        LiveInstance(Arc::clone(count))
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(config: &RuntimeConfig) -> Result<Runtime, SetupError> {
        let engine = new_engine(config)?;
        let mut linker = Linker::new(&engine);
        let link = |e: wasmtime::Error| SetupError::Engine(format!("{e:#}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        crate::nn::add_to_linker(&mut linker, |state: &mut GuestState| {
            crate::nn::NnView::new(&mut state.nn, &mut state.table)
        })
        .map_err(link)?;
        bindings::mantle::edge::context::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;

        let ticking = Arc::new(AtomicBool::new(true));
        spawn_epoch_ticker(engine.clone(), Arc::clone(&ticking))?;
        let pool = Arc::new(InferencePool::new(config.inference_threads)?);
        Ok(Runtime { engine, linker, pool, ticking, live_instances: Arc::new(AtomicUsize::new(0)) })
    }

    /// Compiles `wasm` and checks it against the world. Compiling takes
    /// from milliseconds to seconds: do it once per module, not per request.
    pub fn load_module(&self, spec: ModuleSpec, wasm: &[u8]) -> Result<GuestModule, SetupError> {
        let component = self.compile(&spec.id, wasm)?;
        self.instantiate_pre(spec, &component)
    }

    /// As [`Runtime::load_module`], but keeps the compiled code in
    /// `cache_dir`, keyed by the component's SHA-256 and the engine's
    /// settings, and reuses it when it is there: a restart compiles
    /// nothing. Says whether the cache had it.
    pub fn load_module_cached(
        &self,
        spec: ModuleSpec,
        wasm: &[u8],
        cache_dir: &Path,
    ) -> Result<(GuestModule, bool), SetupError> {
        let path =
            cache_dir.join(format!("{}-{:016x}.cwasm", crate::bundle::manifest::Sha256::of(wasm), self.engine_hash()));
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with these settings (its name says so), into the
            // node's own data directory, which only the operator can write.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok((self.instantiate_pre(spec, &component)?, true)),
                Err(e) => tracing::warn!(path = %path.display(), "recompiling: the cached code does not load: {e:#}"),
            }
        }
        let component = self.compile(&spec.id, wasm)?;
        let code = component
            .serialize()
            .map_err(|e| SetupError::Cache { module: spec.id.clone(), message: format!("{e:#}") })?;
        // The cache only saves a restart's compiling: a module whose code
        // cannot be kept (a full disk) is served all the same.
        let partial = path.with_extension("partial");
        let kept = std::fs::create_dir_all(cache_dir)
            .and_then(|()| std::fs::write(&partial, code))
            .and_then(|()| std::fs::rename(&partial, &path));
        if let Err(e) = kept {
            let _ = std::fs::remove_file(&partial);
            tracing::warn!(module = %spec.id, path = %path.display(), "compiled code not cached; a restart compiles it again: {e}");
        }
        Ok((self.instantiate_pre(spec, &component)?, false))
    }

    /// Identifies the engine's settings: compiled code from one engine
    /// loads only into an engine with the same hash.
    fn engine_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.finish()
    }

    fn compile(&self, module: &str, wasm: &[u8]) -> Result<Component, SetupError> {
        check_component_header(wasm).map_err(|message| SetupError::Compile { module: module.to_owned(), message })?;
        Component::new(&self.engine, wasm)
            .map_err(|e| SetupError::Compile { module: module.to_owned(), message: format!("{e:#}") })
    }

    fn instantiate_pre(&self, spec: ModuleSpec, component: &Component) -> Result<GuestModule, SetupError> {
        let module = spec.id.clone();
        spec.limits.validate().map_err(|message| SetupError::Limits { module: module.clone(), message })?;
        let world = |e: wasmtime::Error| SetupError::World { module: module.clone(), message: format!("{e:#}") };
        let instance_pre = self.linker.instantiate_pre(component).map_err(world)?;
        let pre = GuestPre::new(instance_pre).map_err(world)?;
        Ok(GuestModule {
            tenant: Arc::from(spec.tenant),
            id: Arc::from(spec.id),
            grants: Arc::new(Grants::new(spec.grants)),
            limits: spec.limits,
            config: Arc::new(spec.config),
            pre,
        })
    }

    /// Guest instances running right now.
    pub fn live_instances(&self) -> usize {
        self.live_instances.load(Ordering::Relaxed)
    }

    /// Runs one request through a fresh instance of `module`.
    pub async fn handle(
        &self,
        module: &GuestModule,
        request: Request,
        request_id: &str,
    ) -> Result<Response, HandleError> {
        self.handle_metered(module, request, request_id).await.0
    }

    /// Runs one request through a fresh instance of `module`, and reports
    /// what it used whatever the outcome.
    pub async fn handle_metered(
        &self,
        module: &GuestModule,
        request: Request,
        request_id: &str,
    ) -> (Result<Response, HandleError>, Usage) {
        let _live = LiveInstance::new(&self.live_instances);
        let limits = module.limits;
        let tags = LogTags {
            tenant: Arc::clone(&module.tenant),
            module: Arc::clone(&module.id),
            request_id: Arc::from(request_id),
        };
        let mut store = self.new_store(module, tags, &limits);
        let started = Instant::now();
        let run = async {
            let guest: Guest = module
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| HandleError::Instantiate(format!("{e:#}")))?;
            let outcome = guest.mantle_edge_handler().call_handle(&mut store, &request).await;
            Ok::<_, HandleError>(outcome)
        };
        // The epoch callback stops a guest that computes; this timeout also
        // stops one that waits on the host (sleeping, or a long inference).
        let outcome = tokio::time::timeout(limits.deadline + EPOCH_TICK * 2, run).await;
        let usage =
            Usage { guest_time: started.elapsed(), inferences: std::mem::take(&mut store.data_mut().nn.inferences) };
        tracing::debug!(
            tenant = %module.tenant, module = %module.id, %request_id,
            elapsed = ?usage.guest_time, inferences = usage.inferences.len(),
            "guest finished"
        );
        let result = match outcome {
            Err(_elapsed) => Err(HandleError::Deadline(limits.deadline)),
            Ok(Err(instantiate)) => Err(instantiate),
            Ok(Ok(Ok(Ok(response)))) if response.body.len() > MAX_RESPONSE_BYTES => {
                Err(HandleError::ResponseTooLarge { size: response.body.len(), limit: MAX_RESPONSE_BYTES })
            }
            Ok(Ok(Ok(Ok(response)))) => Ok(response),
            Ok(Ok(Ok(Err(guest_error)))) => Err(HandleError::Guest(guest_error)),
            Ok(Ok(Err(trap))) => Err(classify_trap(&trap, store.data(), &limits, usage.guest_time)),
        };
        (result, usage)
    }

    /// Runs `model` on `inputs` directly, with no guest, on the inference
    /// pool. Inputs are checked before the job is queued. Past `deadline`
    /// the caller gets an error; the computation itself cannot be cut
    /// short and finishes on its pool thread.
    pub async fn infer(
        &self,
        model: &Arc<Model>,
        inputs: Vec<(String, HostTensor)>,
        deadline: Duration,
    ) -> Result<Vec<(String, HostTensor)>, InferError> {
        model.check_inputs(&inputs).map_err(|e| InferError::InvalidInput(e.to_string()))?;
        let job_model = Arc::clone(model);
        let job = self.pool.run(move || job_model.run(inputs));
        match tokio::time::timeout(deadline, job).await {
            Err(_elapsed) => Err(InferError::Deadline(deadline)),
            Ok(Ok(Ok(outputs))) => Ok(outputs),
            Ok(Ok(Err(RunError::InvalidInput(message)))) => Err(InferError::InvalidInput(message)),
            Ok(Ok(Err(failed))) => Err(InferError::Failed(failed.to_string())),
            Ok(Err(pool_error)) => Err(InferError::Failed(format!("model `{}`: {pool_error}", model.name()))),
        }
    }

    fn new_store(&self, module: &GuestModule, tags: LogTags, limits: &ModuleLimits) -> Store<GuestState> {
        // Deny by default: no preopened directories, environment, arguments
        // or network; clocks and randomness are the host's.
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestLog::new(tags.clone(), "stdout"))
            .stderr(GuestLog::new(tags.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let state = GuestState {
            wasi,
            table,
            nn: NnCtx::new(Arc::clone(&module.grants), Arc::clone(&self.pool), limits.memory_bytes),
            limiter: GuestLimiter::new(limits.memory_bytes),
            tags,
            config: Arc::clone(&module.config),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // At every epoch tick a running guest yields to the executor, so that
        // one busy guest cannot hold a thread other requests need; once its
        // wall-clock deadline has passed it is interrupted instead.
        let deadline = Instant::now() + limits.deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });
        store
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

/// Tells apart the two mistakes wasmtime reports least clearly: a file that
/// is not WebAssembly at all, and a core module instead of a component.
fn check_component_header(wasm: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE: [u8; 4] = [1, 0, 0, 0];
    match wasm.get(..8) {
        Some(header) if header.starts_with(MAGIC) && header[4..] == CORE_MODULE => {
            Err("it is a core WebAssembly module, not a component: build the guest for wasm32-wasip2".to_owned())
        }
        Some(header) if header.starts_with(MAGIC) => Ok(()),
        _ => Err("it is not a WebAssembly file (it does not start with \"\\0asm\")".to_owned()),
    }
}

/// Bytes of each used memory slot kept resident between requests, when
/// the kernel can tell which pages were dirtied (see [`engine_config`]).
const KEEP_RESIDENT_MEMORY_BYTES: usize = 4 << 20;
/// As [`KEEP_RESIDENT_MEMORY_BYTES`], for tables.
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// The engine, resetting used slots through PAGEMAP_SCAN where the kernel
/// has it (Linux 6.7 and later) and by unmapping them where it does not.
fn new_engine(config: &RuntimeConfig) -> Result<Engine, SetupError> {
    Engine::new(&engine_config(config, true))
        .or_else(|pagemap_error| {
            tracing::debug!("resetting guest memory without PAGEMAP_SCAN: {pagemap_error:#}");
            Engine::new(&engine_config(config, false))
        })
        .map_err(|e| SetupError::Engine(format!("{e:#}")))
}

fn engine_config(config: &RuntimeConfig, reset_by_pagemap: bool) -> Config {
    let instances = config.max_instances.max(1);
    let mut pooling = PoolingAllocationConfig::new();
    // A Rust wasip2 component instantiates a handful of core modules (the
    // program plus small adapter shims), with one memory and a few tables.
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(8))
        .total_stacks(instances)
        .table_elements(limits::MAX_TABLE_ELEMENTS)
        .max_memory_size(ModuleLimits::MAX_MEMORY_BYTES);
    if reset_by_pagemap {
        // A request's instance dirties the same few pages of its slot each
        // time. With PAGEMAP_SCAN the pool finds those pages and zeroes them
        // in place, rather than unmapping them (a TLB shootdown on every
        // core) and faulting them back in on the next request: this halves
        // the cost of an instance. Up to these many bytes stay resident per
        // used slot; whatever a request dirties past them is unmapped.
        pooling
            .pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY_BYTES)
            .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
    }
    let mut engine = Config::new();
    engine
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    engine
}

fn spawn_epoch_ticker(engine: Engine, ticking: Arc<AtomicBool>) -> Result<(), SetupError> {
    std::thread::Builder::new()
        .name("mantle-epoch".to_owned())
        .spawn(move || {
            while ticking.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(drop)
        .map_err(|e| SetupError::Engine(format!("cannot start the epoch thread: {e}")))
}

fn classify_trap(error: &wasmtime::Error, state: &GuestState, limits: &ModuleLimits, elapsed: Duration) -> HandleError {
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return HandleError::Deadline(limits.deadline);
    }
    if let Some(wanted) = state.limiter.refused_growth {
        return HandleError::MemoryLimit { limit: limits.memory_bytes, wanted };
    }
    HandleError::Trap(format!("{error:?} (after {elapsed:?})"))
}

//! The guest runtime: one wasmtime engine, modules compiled and
//! pre-instantiated once, and a fresh, limited store and instance for every
//! request, so that nothing leaks between requests or tenants.

pub(crate) mod bindings;
mod compiler;
mod guest_output;
mod initialize;
mod limits;
pub mod nn;
pub mod precheck;
mod proxy;
mod state;

pub use bindings::mantle::edge::types::{Error as GuestError, Request, Response};
pub use compiler::{COMPILE_COMMAND, IsolatedCompiler, compile_to_bytes};
pub use guest_output::{REQUEST_OUTPUT_BYTES, TENANT_OUTPUT_BURST_BYTES, TENANT_OUTPUT_BYTES_PER_SECOND};
pub(crate) use limits::GuestLimiter;
pub use limits::{
    MAX_CORE_INSTANCES_PER_COMPONENT, MAX_MEMORIES_PER_COMPONENT, MAX_TABLES_PER_COMPONENT, ModuleLimits,
};
pub use precheck::ShapeLimits;

use crate::nn::{Grants, NnCtx};
use bindings::{Guest, GuestPre};
use compiler::CompileFailure;
use guest_output::{GuestOutput, LogTags, OutputRate, Stream};
use mantle_models::{HostTensor, InferencePool, Model, PoolError, RunError};
use mantle_types::Sha256;
use mantle_types::untrusted::{Untrusted, escaped};
use state::GuestState;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Largest response a guest may give, headers and body together: twice a
/// tenant's default request limit. The response has been copied out of the
/// guest's memory (so the guest's memory limit bounds that copy) before it
/// can be measured; past this size the node drops it and sends an error
/// instead.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// Largest header block a guest's response may have, as the node would
/// write it (`name: value` and a line end for each). Proxies and clients
/// commonly stop reading headers at 8 to 64 KiB.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 << 10;

/// Resources (streams, tensors, graphs, `wasi:http` fields...) one
/// request's guest may hold at once. A guest needs a handful; the cap keeps
/// one that makes them in a loop from growing the host's memory without
/// bound. Tensors are charged to the guest's memory account; header maps
/// are not, and at [`proxy::FIELD_SIZE_LIMIT`] each this many of them take
/// at most 256 MiB, the default memory limit of a guest.
const MAX_RESOURCES: usize = 4096;

/// Most random bytes a guest may ask for in one call.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// How often the epoch advances: how often a running guest yields to the
/// executor and checks its deadline.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Node-wide settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Guest instances that can be live at once, across all modules.
    pub max_instances: u32,
    /// Guest instances one tenant may have live at once; `None` means
    /// `max_instances`. A node serving several tenants gives each a share,
    /// so that none can take every instance slot.
    pub instances_per_tenant: Option<u32>,
    /// Threads that run models; `None` means one per core.
    pub inference_threads: Option<usize>,
    /// Where components are compiled: `None` compiles in this process;
    /// a node compiles in a child process with bounded memory and time.
    pub compiler: Option<IsolatedCompiler>,
    /// Pre-initialize components that export an initializer: run it once
    /// as a module is made from the component, and start every instance
    /// from the snapshot taken after it.
    pub pre_initialize: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 256,
            instances_per_tenant: None,
            inference_threads: None,
            compiler: None,
            pre_initialize: true,
        }
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
    Compile { module: String, message: Untrusted },
    /// More core instances, memories or tables than one instance may
    /// have ([`MAX_CORE_INSTANCES_PER_COMPONENT`] and the others).
    #[error("module `{module}` needs more than one guest instance may have: {message}")]
    TooLarge { module: String, message: String },
    #[error("module `{module}` is too expensive to compile: {message}")]
    TooExpensive { module: String, message: String },
    #[error("module `{module}` does not fit the mantle:edge/guest world, nor wasi:http/proxy: {message}")]
    World { module: String, message: Untrusted },
    #[error("module `{module}` has unusable limits: {message}")]
    Limits { module: String, message: String },
    #[error("module `{module}` cannot start: {message}")]
    Start { module: String, message: Untrusted },
    /// The component exports an initializer, and running it or taking the
    /// snapshot after it failed.
    #[error("module `{module}` cannot be pre-initialized: {message}")]
    Initialize { module: String, message: Untrusted },
    #[error("module `{module}` could not be tried: {message}")]
    Busy { module: String, message: String },
    #[error("module `{module}`: the compiled-code cache failed: {message}")]
    Cache { module: String, message: String },
}

/// Why a request did not produce a guest response.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The guest returned its `error` case: the request was refused or the
    /// guest failed in a way it could describe.
    #[error("{}", mantle_types::untrusted::escaped(guest_error_message(.0)))]
    Guest(GuestError),
    #[error("the guest did not answer within its deadline of {0:?}")]
    Deadline(Duration),
    #[error(
        "the guest's memory (its linear memories, tables and wasi:nn tensors together) would take {wanted} \
         bytes, past its limit of {limit} bytes"
    )]
    MemoryLimit { limit: usize, wanted: usize },
    /// The guest crashed. The message has the trap and guest backtrace: log
    /// it, but do not send it to clients.
    #[error("the guest trapped: {0}")]
    Trap(Untrusted),
    /// The guest's instance could not be made for a reason of its own: a
    /// start function trapped, a data segment does not fit. Log it; the
    /// client gets an error id.
    #[error("the guest cannot start: {0}")]
    Start(Untrusted),
    /// No instance slot is free, node-wide or in the tenant's share: a
    /// moment later there may be one.
    #[error("{0}")]
    Busy(String),
    #[error("the guest's response of {size} bytes is over the limit of {limit} bytes")]
    ResponseTooLarge { size: usize, limit: usize },
    #[error("the guest's response headers take {size} bytes, over the limit of {limit} bytes")]
    HeadersTooLarge { size: usize, limit: usize },
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
    /// For the guest's own `error` case, the message it gave, as it gave
    /// it: for a body that encodes it (JSON), never for a log line.
    pub fn guest_message(&self) -> Option<&str> {
        match self {
            HandleError::Guest(error) => Some(guest_error_message(error)),
            _ => None,
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
    /// Each model computation the guest asked for: the model, by the name
    /// the guest loaded it by, and its time.
    pub inferences: Vec<(Arc<str>, Duration)>,
    /// Bytes of guest output (stdout, stderr, `context.log`) logged.
    pub output_logged: u64,
    /// Bytes of guest output dropped past its budgets.
    pub output_dropped: u64,
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

/// A component's bytes with their SHA-256, which names its compiled code
/// and tells identical components apart.
#[derive(Clone, Copy)]
pub struct ComponentBytes<'a> {
    wasm: &'a [u8],
    digest: Sha256,
}

impl<'a> ComponentBytes<'a> {
    /// `wasm`, hashed now.
    pub fn new(wasm: &'a [u8]) -> Self {
        ComponentBytes { wasm, digest: Sha256::of(wasm) }
    }

    /// `wasm` with the digest it was found to have before: a guest built
    /// into the program, hashed once rather than once per module.
    pub fn hashed(wasm: &'a [u8], digest: Sha256) -> Self {
        debug_assert!(Sha256::of(wasm) == digest, "a component's digest is not that of its bytes");
        ComponentBytes { wasm, digest }
    }
}

/// What every module made from the same component shares: its compiled
/// code, checked against the world and pre-instantiated once, and the
/// limits it has been seen to start within. A thousand tenants running
/// one guest hold it once.
struct SharedGuest {
    entry: Entry,
    started_within: Mutex<Vec<ModuleLimits>>,
}

/// How requests enter a component, by the world it was built for: the
/// node tells them apart by their exports when it loads them.
enum Entry {
    /// `mantle:edge/guest`: `handler.handle` takes the request record.
    Edge(GuestPre<GuestState>),
    /// `wasi:http/proxy`: `incoming-handler.handle` takes a `wasi:http`
    /// request and answers through its response outparam.
    Http(ProxyPre<GuestState>),
}

impl Entry {
    fn instance_pre(&self) -> &wasmtime::component::InstancePre<GuestState> {
        match self {
            Entry::Edge(pre) => pre.instance_pre(),
            Entry::Http(pre) => pre.instance_pre(),
        }
    }
}

/// A compiled, pre-instantiated module, ready to serve requests. Its parts
/// are shared, so that a request's store takes them without copying.
pub struct GuestModule {
    tenant: Arc<str>,
    id: Arc<str>,
    grants: Arc<Grants>,
    limits: ModuleLimits,
    config: Arc<BTreeMap<String, String>>,
    account: Arc<TenantAccount>,
    guest: Arc<SharedGuest>,
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

    /// The models the guest may load through `wasi:nn`, by the names it
    /// loads them by.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.grants.names()
    }
}

/// What every module of one tenant shares: its live instances, and its
/// allowance of logged output over time.
struct TenantAccount {
    live: AtomicUsize,
    output: Arc<OutputRate>,
}

/// The engine, the linker and the inference pool, shared by all modules.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    pool: Arc<InferencePool>,
    compiler: Option<IsolatedCompiler>,
    pre_initialize: bool,
    ticking: Arc<AtomicBool>,
    live_instances: Arc<AtomicUsize>,
    instances_per_tenant: usize,
    tenants: Mutex<HashMap<String, Arc<TenantAccount>>>,
    /// The compiled components that modules hold, by the component's
    /// digest: a module made from a component another module already
    /// uses takes that one, neither loading nor checking it again.
    guests: Mutex<HashMap<Sha256, std::sync::Weak<SharedGuest>>>,
}

/// Feeds what a `Hash` implementation writes into SHA-256, so that the
/// digest, unlike `DefaultHasher`'s, is the same in every build.
struct DigestHasher(sha2::Sha256);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    fn finish(&self) -> u64 {
        let digest = sha2::Digest::finalize(self.0.clone());
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }
}

/// Counts a guest instance as live, node-wide and for its tenant, for as
/// long as it is held.
struct LiveInstance {
    node: Arc<AtomicUsize>,
    tenant: Arc<TenantAccount>,
}

impl LiveInstance {
    /// Counts one more, unless the tenant already has `share` live.
    fn enter(node: &Arc<AtomicUsize>, tenant: &Arc<TenantAccount>, share: usize) -> Option<Self> {
        tenant
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| (live < share).then_some(live + 1))
            .ok()?;
        node.fetch_add(1, Ordering::Relaxed);
        Some(LiveInstance { node: Arc::clone(node), tenant: Arc::clone(tenant) })
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.node.fetch_sub(1, Ordering::Relaxed);
        self.tenant.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Runtime {
    pub fn new(config: &RuntimeConfig) -> Result<Runtime, SetupError> {
        let engine = new_engine(config)?;
        let mut linker = Linker::new(&engine);
        let link = |e: wasmtime::Error| SetupError::Engine(format!("{e:#}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        // `wasi:http` for components of the standard HTTP world; any guest
        // may import it, and none may send a request through it.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link)?;
        crate::nn::add_to_linker(&mut linker, |state: &mut GuestState| {
            crate::nn::NnView::new(&mut state.nn, &mut state.table, &mut state.limiter)
        })
        .map_err(link)?;
        bindings::mantle::edge::context::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;

        let ticking = Arc::new(AtomicBool::new(true));
        spawn_epoch_ticker(engine.clone(), Arc::clone(&ticking))?;
        let pool = Arc::new(InferencePool::new(config.inference_threads)?);
        let max_instances = config.max_instances.max(1);
        Ok(Runtime {
            engine,
            linker,
            pool,
            compiler: config.compiler.clone(),
            pre_initialize: config.pre_initialize,
            ticking,
            live_instances: Arc::new(AtomicUsize::new(0)),
            instances_per_tenant: config.instances_per_tenant.unwrap_or(max_instances).clamp(1, max_instances) as usize,
            tenants: Mutex::default(),
            guests: Mutex::default(),
        })
    }

    /// Guest instances one tenant may have live at once.
    pub fn instances_per_tenant(&self) -> usize {
        self.instances_per_tenant
    }

    /// Compiles `wasm`, checks it against the world and starts it once
    /// with its limits. Compiling takes from milliseconds to seconds: do
    /// it once per module, not per request.
    pub fn load_module(&self, spec: ModuleSpec, wasm: &[u8]) -> Result<GuestModule, SetupError> {
        self.load_component(spec, ComponentBytes::new(wasm), None).map(|(module, _)| module)
    }

    /// As [`Runtime::load_module`]; with `cache_dir`, keeps the compiled
    /// code there, keyed by the component's SHA-256 and the engine's
    /// settings, and reuses it when it is there: a restart compiles
    /// nothing. A component a module already holds is neither loaded nor
    /// checked again. Says whether the compiled code was there already, in
    /// the cache or in another module.
    pub fn load_component(
        &self,
        spec: ModuleSpec,
        component: ComponentBytes<'_>,
        cache_dir: Option<&Path>,
    ) -> Result<(GuestModule, bool), SetupError> {
        spec.limits.validate().map_err(|message| SetupError::Limits { module: spec.id.clone(), message })?;
        if let Some(guest) = self.shared_guest(&component.digest) {
            return Ok((self.prepare(spec, guest)?, true));
        }
        let initialized = self.pre_initialize && initialize::exports_initializer(component.wasm);
        let (compiled, cached) = match cache_dir {
            Some(dir) => self.compile_cached(&spec, component, initialized, dir)?,
            None => (self.load_code(&spec.id, self.build(&spec, component.wasm, initialized)?)?, false),
        };
        let guest = self.share(&spec.id, component.digest, &compiled)?;
        Ok((self.prepare(spec, guest)?, cached))
    }

    /// The component compiled from the cache in `cache_dir`, or compiled
    /// now and kept there; whether the cache had it.
    fn compile_cached(
        &self,
        spec: &ModuleSpec,
        component: ComponentBytes<'_>,
        initialized: bool,
        cache_dir: &Path,
    ) -> Result<(Component, bool), SetupError> {
        let module = spec.id.as_str();
        let key = self.compiled_code_key(&component.digest, initialized);
        let path = cache_dir.join(format!("{key}.cwasm"));
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with these settings (its name says so), into a
            // directory only its owner can write: the node's data
            // directory, or the cache directory of the user running
            // `mantle run`.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(compiled) => return Ok((compiled, true)),
                Err(e) => tracing::warn!(path = %path.display(), "recompiling: the cached code does not load: {e:#}"),
            }
        }
        let code = self.build(spec, component.wasm, initialized)?;
        let serialized = match &code {
            CompiledCode::Serialized(bytes) => std::borrow::Cow::Borrowed(bytes),
            CompiledCode::Loaded(compiled) => std::borrow::Cow::Owned(
                compiled
                    .serialize()
                    .map_err(|e| SetupError::Cache { module: module.to_owned(), message: format!("{e:#}") })?,
            ),
        };
        // The cache only saves a restart's compiling: a module whose code
        // cannot be kept (a full disk) is served all the same.
        let partial = path.with_extension("partial");
        let kept = std::fs::create_dir_all(cache_dir)
            .and_then(|()| std::fs::write(&partial, serialized.as_ref()))
            .and_then(|()| std::fs::rename(&partial, &path));
        match kept {
            // Code loaded from the file is mapped from the page cache, as on
            // a restart: pages the kernel may share and reclaim, where code
            // loaded from bytes is a private copy in the node's memory (12
            // MiB for the three examples, about four times what they touch).
            // SAFETY: as above; the file was written just now from this
            // engine's code.
            Ok(()) => match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(compiled) => return Ok((compiled, false)),
                Err(e) => tracing::warn!(path = %path.display(), "the code just cached does not load: {e:#}"),
            },
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                tracing::warn!(%module, path = %path.display(), "compiled code not cached; a restart compiles it again: {e}");
            }
        }
        drop(serialized);
        Ok((self.load_code(module, code)?, false))
    }

    /// Names the compiled code of the component with `digest` in the
    /// cache: the SHA-256 of the engine's settings, which with wasmtime's
    /// default version strategy include wasmtime's version, then of the
    /// component's digest, and for a pre-initialized component a word
    /// saying so. Compiled code loads only into an engine like the one that
    /// made it, and the name is the same from one build of mantle to the
    /// next.
    fn compiled_code_key(&self, digest: &Sha256, initialized: bool) -> Sha256 {
        use sha2::Digest;
        use std::hash::Hash;
        let mut settings = DigestHasher(sha2::Sha256::new());
        self.engine.precompile_compatibility_hash().hash(&mut settings);
        let mut key = settings.0;
        key.update(digest.0);
        if initialized {
            key.update(b"pre-initialized");
        }
        Sha256(key.finalize().into())
    }

    /// The compiled component with `digest` that a module already holds.
    fn shared_guest(&self, digest: &Sha256) -> Option<Arc<SharedGuest>> {
        self.guests.lock().unwrap_or_else(PoisonError::into_inner).get(digest)?.upgrade()
    }

    /// Checks `component` against the world and pre-instantiates it, for
    /// every module made from the component with `digest`.
    fn share(&self, module: &str, digest: Sha256, component: &Component) -> Result<Arc<SharedGuest>, SetupError> {
        let made = Arc::new(self.pre_instantiate(module, component)?);
        let mut guests = self.guests.lock().unwrap_or_else(PoisonError::into_inner);
        // Components no module holds any more are forgotten here.
        guests.retain(|_, guest| guest.strong_count() > 0);
        if let Some(first) = guests.get(&digest).and_then(std::sync::Weak::upgrade) {
            return Ok(first);
        }
        guests.insert(digest, Arc::downgrade(&made));
        Ok(made)
    }

    /// `component` checked against its world, `mantle:edge/guest` or
    /// `wasi:http/proxy`, and pre-instantiated.
    fn pre_instantiate(&self, module: &str, component: &Component) -> Result<SharedGuest, SetupError> {
        let world = |e: wasmtime::Error| SetupError::World {
            module: module.to_owned(),
            message: Untrusted::new(format!("{e:#}")),
        };
        let instance_pre = self.linker.instantiate_pre(component).map_err(world)?;
        let entry = if proxy::exports_incoming_handler(&self.engine, component) {
            Entry::Http(ProxyPre::new(instance_pre).map_err(world)?)
        } else {
            Entry::Edge(GuestPre::new(instance_pre).map_err(world)?)
        };
        Ok(SharedGuest { entry, started_within: Mutex::default() })
    }

    /// Compiles `wasm` for the module of `spec`; first pre-initializes it
    /// when `initialized`.
    fn build(&self, spec: &ModuleSpec, wasm: &[u8], initialized: bool) -> Result<CompiledCode, SetupError> {
        if !initialized {
            return self.compile_code(&spec.id, wasm);
        }
        let started = Instant::now();
        let snapshot = self.pre_initialize(spec, wasm)?;
        tracing::info!(
            tenant = %spec.tenant, module = %spec.id, elapsed = ?started.elapsed(), bytes = snapshot.len(),
            "pre-initialized"
        );
        self.compile_code(&spec.id, &snapshot)
    }

    /// Runs the initializer of `wasm` once, in an instance with the limits
    /// of `spec` but none of its grants or configuration (the snapshot is
    /// shared by every module made from the component), and returns the
    /// component snapshotted after it.
    fn pre_initialize(&self, spec: &ModuleSpec, wasm: &[u8]) -> Result<Vec<u8>, SetupError> {
        let refused =
            |message: String| SetupError::Initialize { module: spec.id.clone(), message: Untrusted::new(message) };
        // The checks compiling makes, before the bytes are rewritten.
        check_shape(&spec.id, wasm)?;
        // On a thread of its own, as the trial instance: the caller may be
        // an async task or a rayon worker; and a component the snapshot
        // tool cannot handle fails that thread, not the node.
        let outcome = std::thread::scope(|scope| scope.spawn(|| self.snapshot_initialized(spec, wasm)).join());
        outcome.unwrap_or_else(|_| Err(refused("the snapshot tool failed on this component".to_owned())))
    }

    /// The body of [`Runtime::pre_initialize`], on a thread of its own.
    fn snapshot_initialized(&self, spec: &ModuleSpec, wasm: &[u8]) -> Result<Vec<u8>, SetupError> {
        let refused =
            |message: String| SetupError::Initialize { module: spec.id.clone(), message: Untrusted::new(message) };
        let (context, instrumented) = initialize::instrument(wasm).map_err(refused)?;
        let component = self.load_code(&spec.id, self.compile_code(&spec.id, &instrumented)?)?;
        let module = GuestModule {
            tenant: Arc::from(spec.tenant.as_str()),
            id: Arc::from(spec.id.as_str()),
            grants: Arc::new(Grants::new(BTreeMap::new())),
            limits: spec.limits,
            config: Arc::default(),
            account: self.tenant_account(&spec.tenant),
            guest: Arc::new(self.pre_instantiate(&spec.id, &component)?),
        };
        let limits = module.limits;
        let executor = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| SetupError::Engine(format!("cannot start the initializer: {e}")))?;
        executor.block_on(async {
            let mut store = self.new_store(&module, LogTags::loading(&module.tenant, &module.id));
            store.data_mut().initializing = true;
            let started = Instant::now();
            let run = async {
                let instance =
                    module.guest.entry.instance_pre().instantiate_async(&mut store).await.map_err(Failed::Starting)?;
                initialize::run_initializer(&mut store, &instance).await.map_err(Failed::Running)?;
                Ok(instance)
            };
            let ran = tokio::time::timeout(limits.deadline + EPOCH_TICK * 2, run).await;
            store.data().output.finish();
            let instance = match ran {
                Err(_elapsed) => Err(HandleError::Deadline(limits.deadline)),
                Ok(Err(Failed::Starting(error))) => Err(instantiation_failure(&error, store.data(), &limits)),
                Ok(Err(Failed::Running(trap))) => Err(classify_trap(&trap, store.data(), &limits, started.elapsed())),
                Ok(Ok(instance)) => Ok(instance),
            }
            .map_err(|failure| match failure {
                HandleError::Busy(message) => SetupError::Busy { module: spec.id.clone(), message },
                other => refused(format!("its initializer failed: {other}")),
            })?;
            initialize::snapshot(&context, &mut store, instance).await.map_err(refused)
        })
    }

    /// Checks the component's shape, then compiles it here or in a child
    /// process.
    fn compile_code(&self, module: &str, wasm: &[u8]) -> Result<CompiledCode, SetupError> {
        check_shape(module, wasm)?;
        let too_expensive = |message: String| SetupError::TooExpensive { module: module.to_owned(), message };
        match &self.compiler {
            None => Component::new(&self.engine, wasm)
                .map(CompiledCode::Loaded)
                .map_err(|e| compile_failure(module, format!("{e:#}"))),
            Some(compiler) => compiler.compile(wasm).map(CompiledCode::Serialized).map_err(|failure| match failure {
                CompileFailure::Invalid(message) => compile_failure(module, message),
                CompileFailure::Spawn(message) => SetupError::Engine(message),
                crashed @ CompileFailure::Crashed(_) => compile_failure(module, crashed.to_string()),
                bounded @ (CompileFailure::Timeout(_) | CompileFailure::Memory(_)) => {
                    too_expensive(bounded.to_string())
                }
            }),
        }
    }

    /// The component of `code`, loaded into this engine.
    fn load_code(&self, module: &str, code: CompiledCode) -> Result<Component, SetupError> {
        match code {
            CompiledCode::Loaded(component) => Ok(component),
            // SAFETY: the code was written by `Component::serialize` in a
            // child process of this very program, with this engine's
            // settings, and came back over a pipe only it writes to.
            CompiledCode::Serialized(bytes) => unsafe { Component::deserialize(&self.engine, &bytes) }
                .map_err(|e| compile_failure(module, format!("{e:#}"))),
        }
    }

    /// Makes the module of `spec` around `guest`, and starts one instance
    /// of it with the module's limits, unless one already started within
    /// the same limits: a module that can never start (a start function
    /// that traps, memory or data that does not fit its limit) is refused
    /// now rather than on every request.
    fn prepare(&self, spec: ModuleSpec, guest: Arc<SharedGuest>) -> Result<GuestModule, SetupError> {
        let account = self.tenant_account(&spec.tenant);
        let module = GuestModule {
            tenant: Arc::from(spec.tenant),
            id: Arc::from(spec.id),
            grants: Arc::new(Grants::new(spec.grants)),
            limits: spec.limits,
            config: Arc::new(spec.config),
            account,
            guest,
        };
        let tried = |started: &[ModuleLimits]| started.contains(&module.limits);
        if !tried(&module.guest.started_within.lock().unwrap_or_else(PoisonError::into_inner)) {
            self.try_start(&module)?;
            let mut started = module.guest.started_within.lock().unwrap_or_else(PoisonError::into_inner);
            if !tried(&started) {
                started.push(module.limits);
            }
        }
        Ok(module)
    }

    fn tenant_account(&self, tenant: &str) -> Arc<TenantAccount> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let account = tenants.entry(tenant.to_owned()).or_insert_with(|| {
            Arc::new(TenantAccount {
                live: AtomicUsize::new(0),
                output: Arc::new(OutputRate::new(TENANT_OUTPUT_BYTES_PER_SECOND, TENANT_OUTPUT_BURST_BYTES)),
            })
        });
        Arc::clone(account)
    }

    /// Instantiates `module` once, on a thread of its own so that it can
    /// be called from anywhere (an async task, a rayon worker).
    fn try_start(&self, module: &GuestModule) -> Result<(), SetupError> {
        let name = || module.id.to_string();
        let started = std::thread::scope(|scope| {
            let trial = scope.spawn(|| -> Result<(), SetupError> {
                let executor = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| SetupError::Engine(format!("cannot start a trial instance: {e}")))?;
                let outcome = executor.block_on(async {
                    let mut store = self.new_store(module, LogTags::loading(&module.tenant, &module.id));
                    let limits = module.limits;
                    let instantiated = tokio::time::timeout(
                        limits.deadline,
                        module.guest.entry.instance_pre().instantiate_async(&mut store),
                    )
                    .await;
                    let outcome = match instantiated {
                        Err(_elapsed) => Err(HandleError::Deadline(limits.deadline)),
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(instantiation_failure(&e, store.data(), &limits)),
                    };
                    // A start function may have written: it is logged as a
                    // request's output would be.
                    store.data().output.finish();
                    outcome
                });
                match outcome {
                    Ok(()) => Ok(()),
                    Err(HandleError::Busy(message)) => Err(SetupError::Busy { module: name(), message }),
                    Err(HandleError::Start(message)) => Err(SetupError::Start { module: name(), message }),
                    Err(other) => Err(SetupError::Start { module: name(), message: Untrusted::new(other.to_string()) }),
                }
            });
            trial.join()
        });
        started.unwrap_or_else(|_| Err(SetupError::Engine("the trial instance's thread panicked".to_owned())))
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
        let Some(_live) = LiveInstance::enter(&self.live_instances, &module.account, self.instances_per_tenant) else {
            let busy = format!(
                "tenant `{}` has all of its {} guest instances running",
                module.tenant, self.instances_per_tenant
            );
            return (Err(HandleError::Busy(busy)), Usage::default());
        };
        let limits = module.limits;
        let tags = LogTags {
            tenant: Arc::clone(&module.tenant),
            module: Arc::clone(&module.id),
            request_id: Arc::from(request_id),
        };
        let mut store = self.new_store(module, tags);
        let started = Instant::now();
        let run = async {
            match &module.guest.entry {
                Entry::Edge(pre) => {
                    let guest: Guest = pre.instantiate_async(&mut store).await.map_err(Failed::Starting)?;
                    let answer = guest.mantle_edge_handler().call_handle(&mut store, &request).await;
                    Ok(answer.map_err(Failed::Running)?.map_err(HandleError::Guest))
                }
                // The request is the component's to keep: its body is moved.
                Entry::Http(pre) => proxy::serve(&mut store, pre, request).await,
            }
        };
        // The epoch callback stops a guest that computes; this timeout also
        // stops one that waits on the host (sleeping, or a long inference).
        let outcome = tokio::time::timeout(limits.deadline + EPOCH_TICK * 2, run).await;
        let (output_logged, output_dropped) = store.data().output.finish();
        let usage = Usage {
            guest_time: started.elapsed(),
            inferences: std::mem::take(&mut store.data_mut().nn.inferences),
            output_logged,
            output_dropped,
        };
        tracing::debug!(
            tenant = %module.tenant, module = %module.id, %request_id,
            elapsed = ?usage.guest_time, inferences = usage.inferences.len(),
            "guest finished"
        );
        let result = match outcome {
            Err(_elapsed) => Err(HandleError::Deadline(limits.deadline)),
            Ok(Err(Failed::Starting(error))) => Err(instantiation_failure(&error, store.data(), &limits)),
            Ok(Err(Failed::Running(trap))) => Err(classify_trap(&trap, store.data(), &limits, usage.guest_time)),
            Ok(Ok(Ok(response))) => checked_response(response),
            Ok(Ok(Err(refused))) => Err(refused),
        };
        (result, usage)
    }

    /// Runs `model` on `inputs` directly, with no guest, on the inference
    /// pool, queued fairly among `tenant`'s and other tenants' work. Inputs
    /// are checked before the job is queued. Past `deadline` the caller
    /// gets an error, and the job is dropped if it has not started; a
    /// computation that has started cannot be cut short and finishes on
    /// its pool thread.
    pub async fn infer(
        &self,
        tenant: &str,
        model: &Arc<Model>,
        inputs: Vec<(String, HostTensor)>,
        deadline: Duration,
    ) -> Result<Vec<(String, HostTensor)>, InferError> {
        model.check_inputs(&inputs).map_err(|e| InferError::InvalidInput(e.to_string()))?;
        let job = mantle_models::infer(&self.pool, Arc::from(tenant), Instant::now() + deadline, model, inputs);
        match tokio::time::timeout(deadline, job).await {
            Err(_) | Ok(Err(PoolError::Expired)) => Err(InferError::Deadline(deadline)),
            Ok(Ok(Ok(outputs))) => Ok(outputs),
            Ok(Ok(Err(RunError::InvalidInput(message)))) => Err(InferError::InvalidInput(message)),
            Ok(Ok(Err(failed))) => Err(InferError::Failed(failed.to_string())),
            Ok(Err(pool_error)) => Err(InferError::Failed(format!("model `{}`: {pool_error}", model.name()))),
        }
    }

    fn new_store(&self, module: &GuestModule, tags: LogTags) -> Store<GuestState> {
        let limits = module.limits;
        let output = GuestOutput::new(tags.clone(), Arc::clone(&module.account.output));
        // Deny by default: no preopened directories, environment, arguments
        // or network; clocks and randomness are the host's.
        let wasi = WasiCtxBuilder::new()
            .stdout(output.stream(Stream::Stdout))
            .stderr(output.stream(Stream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            // Random bytes are made in host memory before they are copied
            // into the guest's: wasmtime's default allows 64 MiB a call.
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let deadline = Instant::now() + limits.deadline;
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(proxy::FIELD_SIZE_LIMIT);
        let outgoing = proxy::OutgoingDenied::new(tags.clone());
        let state = GuestState {
            wasi,
            http,
            outgoing,
            table,
            nn: NnCtx::new(Arc::clone(&module.grants), Arc::clone(&self.pool), Arc::clone(&module.tenant), deadline),
            limiter: GuestLimiter::new(limits.memory_bytes),
            output,
            tags,
            config: Arc::clone(&module.config),
            initializing: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // At every epoch tick a running guest yields to the executor, so that
        // one busy guest cannot hold a thread other requests need; once its
        // wall-clock deadline has passed it is interrupted instead.
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

/// Where a guest instance failed: as it was made, or in its handler.
pub(crate) enum Failed {
    Starting(wasmtime::Error),
    Running(wasmtime::Error),
}

/// The guest's response if it is within the node's limits: the header
/// block alone, then headers and body together.
fn checked_response(response: Response) -> Result<Response, HandleError> {
    let headers: usize = response
        .headers
        .iter()
        .map(|(name, value)| name.len().saturating_add(value.len()).saturating_add(4))
        .fold(0, usize::saturating_add);
    if headers > MAX_RESPONSE_HEADER_BYTES {
        return Err(HandleError::HeadersTooLarge { size: headers, limit: MAX_RESPONSE_HEADER_BYTES });
    }
    let size = headers.saturating_add(response.body.len());
    if size > MAX_RESPONSE_BYTES {
        return Err(HandleError::ResponseTooLarge { size, limit: MAX_RESPONSE_BYTES });
    }
    Ok(response)
}

/// A component compiled for the node's engine: in this process, or in a
/// child process that sent back its code.
enum CompiledCode {
    Loaded(Component),
    Serialized(Vec<u8>),
}

/// The refusal of a component wasmtime would not compile or load.
fn compile_failure(module: &str, message: String) -> SetupError {
    // wasmtime checks a component against the pool's per-instance caps as
    // it makes it, and says so.
    if message.contains("in the pooling allocator") || message.contains("pooling allocator requirements") {
        return SetupError::TooLarge { module: module.to_owned(), message: escaped(&message).into_owned() };
    }
    SetupError::Compile { module: module.to_owned(), message: Untrusted::new(message) }
}

/// Refuses a component that is not one, or whose shape would be expensive
/// to compile, before any work is done on it.
fn check_shape(module: &str, wasm: &[u8]) -> Result<(), SetupError> {
    check_component_header(wasm)
        .map_err(|message| SetupError::Compile { module: module.to_owned(), message: Untrusted::new(message) })?;
    precheck::check(wasm, &ShapeLimits::default())
        .map_err(|message| SetupError::TooExpensive { module: module.to_owned(), message })
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
    // Every component is held to the same caps, checked when it is
    // loaded, and the pool has room for every instance at its caps: no
    // component's shape can take the slots other instances need.
    pooling
        .total_component_instances(instances)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .total_core_instances(instances.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
        .total_memories(instances.saturating_mul(MAX_MEMORIES_PER_COMPONENT))
        .total_tables(instances.saturating_mul(MAX_TABLES_PER_COMPONENT))
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
    let mut engine = compiling_config();
    engine.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    engine
}

/// The settings that decide what compiled code looks like. A child process
/// that only compiles uses these alone (it instantiates nothing, so it
/// needs no pool); its code then loads into the serving engine.
pub(crate) fn compiling_config() -> Config {
    let mut engine = Config::new();
    engine.wasm_component_model(true).epoch_interruption(true).memory_init_cow(true);
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
    if let Some(wanted) = state.limiter.refused {
        return HandleError::MemoryLimit { limit: limits.memory_bytes, wanted };
    }
    HandleError::Trap(Untrusted::new(format!("{error:?} (after {elapsed:?})")))
}

/// Why an instance could not be made: the node out of slots (the one case
/// where trying again later helps), or the module itself.
fn instantiation_failure(error: &wasmtime::Error, state: &GuestState, limits: &ModuleLimits) -> HandleError {
    if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        tracing::warn!("no free guest instance slot: {error:#}");
        return HandleError::Busy("the node is at its limit of guest instances".to_owned());
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return HandleError::Deadline(limits.deadline);
    }
    if let Some(wanted) = state.limiter.refused {
        return HandleError::MemoryLimit { limit: limits.memory_bytes, wanted };
    }
    HandleError::Start(Untrusted::new(format!("{error:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: usize, header_bytes: usize, body: usize) -> Response {
        let value = vec![b'v'; header_bytes];
        let headers = (0..headers).map(|i| (format!("x-{i}"), value.clone())).collect();
        Response { status: 200, headers, body: vec![b'b'; body] }
    }

    #[test]
    fn headers_count_toward_what_a_response_may_hold() {
        assert!(checked_response(response(10, 1000, MAX_RESPONSE_BYTES / 2)).is_ok());
        // A body just under the cap, and headers that take it over.
        let body = MAX_RESPONSE_BYTES - 1000;
        match checked_response(response(10, 1000, body)) {
            Err(HandleError::ResponseTooLarge { size, limit }) => {
                assert!(size > limit && limit == MAX_RESPONSE_BYTES, "{size} {limit}");
            }
            other => panic!("expected the response cap, got {other:?}"),
        }
        // Headers alone have a cap of their own.
        match checked_response(response(100, MAX_RESPONSE_HEADER_BYTES / 50, 0)) {
            Err(HandleError::HeadersTooLarge { size, limit }) => assert!(size > limit, "{size} {limit}"),
            other => panic!("expected the header cap, got {other:?}"),
        }
    }
}

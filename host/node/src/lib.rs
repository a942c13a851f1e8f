//! What a node serves: the models it holds, and its tenants with their
//! keys, grants, limits and guest modules. The configuration is resolved
//! once at start-up; deployments change what a tenant serves while the
//! node runs ([`deploy`]), kept on disk by the [`store`]. Per request there
//! is only a lookup left to do.

pub mod allocator;
pub mod code_pages;
pub mod deploy;
pub mod follow;
mod model_cache;
pub mod pull;
pub mod resolve;
pub mod store;

pub use model_cache::ModelCache;

use deploy::Active;
use ed25519_dalek::VerifyingKey;
use mantle_manifest::module::ModuleSource;
use mantle_manifest::node::{ModelConfig, NodeConfig, NodeSettings, TenantConfig, TenantLimits};
use mantle_models::{BatchPolicy, LoadError, LoadOptions, Model};
use mantle_runtime::{GuestModule, IsolatedCompiler, Runtime, RuntimeConfig, SetupError};
use mantle_types::Sha256;
use rayon::prelude::*;
use resolve::{ResolveError, Scope, resolve_module};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use store::{Store, StoreError};

/// Why a node could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the node store in {}", dir.display())]
    Store { dir: PathBuf, source: Box<StoreError> },
    #[error(transparent)]
    Model(#[from] LoadError),
    #[error("tenant `{tenant}`")]
    Module { tenant: String, source: ResolveError },
    #[error("tenant `{tenant}`")]
    Follow { tenant: String, source: follow::FollowError },
    #[error(transparent)]
    Runtime(#[from] SetupError),
}

/// One version of a model the node holds.
#[derive(Debug)]
pub struct HeldModel {
    pub name: String,
    pub version: String,
    pub model: Arc<Model>,
}

/// A tenant as the node serves it.
pub struct Tenant {
    pub id: String,
    pub limits: TenantLimits,
    key_hashes: Vec<Sha256>,
    /// The model versions the tenant was granted, in configuration order.
    models: Vec<Arc<HeldModel>>,
    /// Modules from the configuration.
    modules: BTreeMap<String, Arc<GuestModule>>,
    /// The example built into the program that each configured module
    /// runs, for the modules that run one.
    examples: BTreeMap<String, String>,
    /// What the tenant's active deployments serve, swapped whole when a
    /// deployment changes: a request holds what it started with.
    active: RwLock<Arc<Active>>,
}

impl Tenant {
    /// The SHA-256 of each API key the tenant accepts.
    pub fn key_hashes(&self) -> &[Sha256] {
        &self.key_hashes
    }

    /// The module `id`, configured or deployed.
    pub fn module(&self, id: &str) -> Option<Arc<GuestModule>> {
        if let Some(module) = self.modules.get(id) {
            return Some(Arc::clone(module));
        }
        self.active().module(id)
    }

    /// Every module the tenant serves, configured or deployed, once each
    /// and by id; a configured module hides a deployed one of its id, as
    /// it does on its route.
    pub fn modules(&self) -> Vec<Arc<GuestModule>> {
        let active = self.active();
        let mut modules: BTreeMap<&str, Arc<GuestModule>> =
            active.modules().map(|module| (module.id(), Arc::clone(module))).collect();
        modules.extend(self.modules.iter().map(|(id, module)| (id.as_str(), Arc::clone(module))));
        modules.into_values().collect()
    }

    /// The example built into the program that module `id` runs, if the
    /// configuration gives it one.
    pub fn example(&self, id: &str) -> Option<&str> {
        self.examples.get(id).map(String::as_str)
    }

    /// Every model the tenant may use through KServe, by name, with its
    /// versions in order.
    pub fn models(&self) -> BTreeMap<String, Vec<String>> {
        self.model_versions(|_| true)
    }

    /// Whether the configuration defines module `id`.
    pub fn configures_module(&self, id: &str) -> bool {
        self.modules.contains_key(id)
    }

    /// What the tenant's active deployments serve now.
    pub(crate) fn active(&self) -> Arc<Active> {
        Arc::clone(&self.active.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces what the tenant's active deployments serve, in one swap.
    fn set_active(&self, active: Active) {
        *self.active.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(active);
    }

    /// A model the tenant may use through KServe, by name and, optionally,
    /// version. Without a version it is the configured grant listed last,
    /// or else the highest deployed version.
    pub fn model(&self, name: &str, version: Option<&str>) -> Option<Arc<HeldModel>> {
        let wanted = |m: &&Arc<HeldModel>| m.name == name && version.is_none_or(|v| v == m.version);
        if let Some(model) = self.models.iter().rev().find(wanted) {
            return Some(Arc::clone(model));
        }
        let active = self.active();
        active.models().filter(wanted).max_by(|a, b| compare_versions(&a.version, &b.version)).cloned()
    }

    /// Every version of `name` the tenant may use through KServe.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.model_versions(|model| model == name).remove(name).unwrap_or_default()
    }

    /// The versions of each model named `wanted` that the tenant may use
    /// through KServe, in order.
    fn model_versions(&self, wanted: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<String>> {
        let active = self.active();
        let mut models: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for model in self.models.iter().chain(active.models()).filter(|m| wanted(&m.name)) {
            models.entry(model.name.clone()).or_default().push(model.version.clone());
        }
        for versions in models.values_mut() {
            versions.sort_by(|a, b| compare_versions(a, b));
            versions.dedup();
        }
        models
    }
}

/// Orders versions as people number them: `2` before `10`, `1.2` before
/// `1.10`; parts that are not numbers compare as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<(u64, String)> {
        v.split(['.', '-', '_']).map(|p| (p.parse().unwrap_or(u64::MAX), p.to_owned())).collect()
    };
    parts(a).cmp(&parts(b))
}

/// A guest built into the program that runs the node; `node.toml` names
/// one by `example = "name"`.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinGuest {
    pub name: &'static str,
    pub wasm: &'static [u8],
    /// The SHA-256 of `wasm`, taken once: every module that names the
    /// guest is the same component.
    pub digest: Sha256,
}

impl BuiltinGuest {
    pub fn new(name: &'static str, wasm: &'static [u8]) -> BuiltinGuest {
        BuiltinGuest { name, wasm, digest: Sha256::of(wasm) }
    }
}

/// How a node is built, besides its configuration.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions<'a> {
    /// Where the node keeps its deployments and compiled code, so that a
    /// restart compiles nothing; `None` keeps nothing, and the node then
    /// takes no deployments.
    pub data_dir: Option<&'a Path>,
    /// A program whose `compile-guest` command compiles guests in a child
    /// process, within the node's compile limits; `None` compiles here.
    pub compile_with: Option<&'a Path>,
    /// The guests `example = "..."` may name.
    pub builtin_guests: &'a [BuiltinGuest],
}

/// Everything a node serves, and the deployments that change it.
pub struct Node {
    pub runtime: Runtime,
    tenants: BTreeMap<String, Arc<Tenant>>,
    /// The tenant of requests that carry no key, only when serving the
    /// bundled examples with no configuration.
    open_tenant: Option<Arc<Tenant>>,
    pub settings: NodeSettings,
    /// Every model the node holds, configured or deployed, once each.
    models: ModelCache,
    /// Where deployments are kept, if the node takes any.
    store: Option<Store>,
    /// Where compiled code is kept, if anywhere.
    compiled_dir: Option<PathBuf>,
    /// When not empty, only bundles signed by one of these are accepted.
    trusted: Vec<VerifyingKey>,
    /// One deployment change at a time, so that the store and what is
    /// served agree.
    changing: tokio::sync::Mutex<()>,
    /// The registry tags the node keeps deployed.
    follows: Vec<Arc<follow::Follow>>,
}

impl Node {
    /// Opens the node's store, then loads every model and compiles every
    /// module of `config`. Stored deployments are not served until
    /// [`Node::restore`].
    pub fn build(config: &NodeConfig, options: &BuildOptions<'_>) -> Result<Node, NodeError> {
        let settings = config.settings();
        // The store first: it refuses a second node on the same data
        // directory before any work is done.
        let store = options
            .data_dir
            .map(|dir| {
                Store::open(dir).map_err(|source| NodeError::Store { dir: dir.to_owned(), source: Box::new(source) })
            })
            .transpose()?;
        let compiled_dir = options.data_dir.map(|dir| dir.join("compiled"));
        let compiler = options.compile_with.map(|program| IsolatedCompiler {
            program: program.to_owned(),
            memory_bytes: settings.compile_memory_mib.saturating_mul(1 << 20),
            timeout: std::time::Duration::from_millis(settings.compile_timeout_ms),
        });
        // Each tenant's share of the instance slots, so that no tenant can
        // take them all.
        let tenants = u32::try_from(config.tenants().len()).unwrap_or(u32::MAX).max(1);
        let runtime = Runtime::new(&RuntimeConfig {
            max_instances: settings.max_instances,
            instances_per_tenant: Some((settings.max_instances / tenants).max(1)),
            inference_threads: (settings.inference_threads > 0).then_some(settings.inference_threads),
            compiler,
            pre_initialize: settings.pre_initialize,
        })?;
        // Each model loads and optimizes on one core, independently of the
        // others: loading them side by side shortens a node's start.
        let models = ModelCache::default();
        let held = config.models().par_iter().map(|model| load_model(&models, model)).collect::<Result<Vec<_>, _>>()?;
        let mut tenants = BTreeMap::new();
        let mut open_tenant = None;
        let mut follows = Vec::new();
        for tenant in config.tenants() {
            for config in tenant.follows() {
                let follow = follow::Follow::new(tenant.id().as_str(), config, store.is_some())
                    .map_err(|source| NodeError::Follow { tenant: tenant.id().to_string(), source })?;
                follows.push(Arc::new(follow));
            }
            let built = Arc::new(build_tenant(&runtime, options, compiled_dir.as_deref(), tenant, &held)?);
            if tenant.is_open() {
                open_tenant = Some(Arc::clone(&built));
            }
            tenants.insert(built.id.clone(), built);
        }
        Ok(Node {
            runtime,
            tenants,
            open_tenant,
            settings: settings.clone(),
            models,
            store,
            compiled_dir,
            trusted: settings.trusted_signers.iter().map(|key| *key.verifying_key()).collect(),
            changing: tokio::sync::Mutex::new(()),
            follows,
        })
    }

    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// The tenant of requests without a key, if the node has one.
    pub fn open_tenant(&self) -> Option<&Arc<Tenant>> {
        self.open_tenant.as_ref()
    }

    /// The node's models, each held once.
    pub fn models(&self) -> &ModelCache {
        &self.models
    }

    /// How many models the node holds: each loaded model once, however
    /// many tenants, versions and deployments use it.
    pub fn models_held(&self) -> usize {
        let mut held = std::collections::HashSet::new();
        for tenant in self.tenants.values() {
            let active = tenant.active();
            held.extend(tenant.models.iter().chain(active.models()).map(|m| Arc::as_ptr(&m.model)));
        }
        held.len()
    }
}

fn load_model(models: &ModelCache, config: &ModelConfig) -> Result<Arc<HeldModel>, LoadError> {
    let options = LoadOptions {
        pinned_dims: config.pin.clone(),
        batching: (config.max_batch > 1).then(|| BatchPolicy {
            max_batch: config.max_batch,
            max_queue_delay: std::time::Duration::from_micros(config.max_queue_delay_us),
        }),
    };
    let model = models.get_or_load_file(config.name.as_str(), &config.path, &options)?;
    Ok(Arc::new(HeldModel { name: config.name.to_string(), version: config.version.to_string(), model }))
}

fn build_tenant(
    runtime: &Runtime,
    options: &BuildOptions<'_>,
    compiled_dir: Option<&Path>,
    config: &TenantConfig,
    held: &[Arc<HeldModel>],
) -> Result<Tenant, NodeError> {
    let tenant = config.id().to_string();
    let models: Vec<Arc<HeldModel>> =
        held.iter().filter(|m| config.grants().iter().any(|g| g.covers(&m.name, &m.version))).cloned().collect();
    // The operator's own modules: granted among the tenant's models, and
    // held to no ceiling but the runtime's.
    let scope = Scope {
        tenant: &tenant,
        models: &models,
        ceiling: None,
        builtin_guests: options.builtin_guests,
        bundle: None,
        compiled_dir,
    };
    let mut modules = BTreeMap::new();
    let mut examples = BTreeMap::new();
    for declaration in config.modules() {
        let resolved = resolve_module(runtime, declaration, &scope)
            .map_err(|source| NodeError::Module { tenant: tenant.clone(), source })?;
        modules.insert(declaration.id.to_string(), Arc::new(resolved.module));
        if let ModuleSource::Builtin(example) = &declaration.source {
            examples.insert(declaration.id.to_string(), example.clone());
        }
    }
    Ok(Tenant {
        id: tenant,
        limits: *config.limits(),
        key_hashes: config.key_sha256().to_vec(),
        models,
        modules,
        examples,
        active: RwLock::default(),
    })
}
